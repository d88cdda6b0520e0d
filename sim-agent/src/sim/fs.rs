//! The guest filesystem: a host directory that stands for the guest's `/`.
//!
//! The guest is a directory on the host, so a path that escapes it is a host bug. Every guest
//! path is therefore resolved *and opened* by the kernel inside a directory handle, atomically:
//! [`Confined`] wraps a [`pathrs::Root`] (openat2 with `RESOLVE_IN_ROOT` on this kernel), which
//! follows symlinks as the guest kernel would but never above the root, including when a
//! component is swapped for a symlink while the call runs. No guest path is ever turned back
//! into a host path string and handed to the kernel; [`Confined::host_path`] exists for
//! messages and tests only.
//!
//! Files are created with the last component opened `O_NOFOLLOW` below an already confined
//! parent; a symlink found there (a dangling one, or one planted between the look-up and the
//! create) is read and followed inside the root, as the guest kernel would follow it, never by
//! the host kernel.

use std::fs::{File, Permissions};
use std::io::{self, Read as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use pathrs::flags::OpenFlags;
use pathrs::{InodeType, Root};

/// Where the Go and Rust runtimes copy files when the filesystem is not shared.
pub const SHARED_CONTAINERS_DIR: &str = "/run/kata-containers/shared/containers/";

/// The most symlinks followed while resolving one path (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// How deep [`Confined::tree_size`] descends (a guest can nest directories without end).
const MAX_TREE_DEPTH: usize = 128;

/// Mode bits a guest write may set on the host. The guest's files are host files, so the
/// setuid and setgid bits are dropped (a documented deviation: the real agent keeps them).
pub const HOST_SAFE_MODE_MASK: u32 = 0o1777;

/// Converts an error of `pathrs` into the `io::Error` of its errno (or an `Other` error that
/// keeps the message when it has none).
fn io_err(e: pathrs::error::Error) -> io::Error {
    match e.kind() {
        pathrs::error::ErrorKind::OsError(Some(errno)) => io::Error::from_raw_os_error(errno),
        _ => io::Error::other(e),
    }
}

fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// A directory tree that paths cannot leave: every operation resolves its path inside it.
#[derive(Debug)]
pub struct Confined {
    root: Root,
    host: PathBuf,
}

/// How [`Confined::open_write`] treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Truncate it (`>`).
    Truncate,
    /// Append to it (`>>`).
    Append,
    /// Open it for reading and writing, keeping its contents (CopyFile's chunks).
    Update,
}

impl Confined {
    /// Opens the host directory `dir` as a confinement root.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Ok(Confined {
            root: Root::open(dir).map_err(io_err)?,
            host: dir.to_path_buf(),
        })
    }

    /// The host path of the root, for messages and tests; never for file operations.
    pub fn host_path(&self) -> &Path {
        &self.host
    }

    /// The directory at `path` (resolved inside this root) as a root of its own: paths below
    /// it resolve inside it, `..` and absolute symlinks clamp at it.
    pub fn subdir(&self, path: &str) -> io::Result<Confined> {
        let handle = self.root.resolve(path).map_err(io_err)?;
        let fd: OwnedFd = handle.into();
        let meta = File::from(fd.try_clone()?).metadata()?;
        if !meta.is_dir() {
            return Err(io::Error::from_raw_os_error(libc_errno::ENOTDIR));
        }
        Ok(Confined {
            root: Root::from_fd(fd),
            host: self.host.join(path.trim_start_matches('/')),
        })
    }

    /// Opens a file for reading.
    pub fn open_read(&self, path: &str) -> io::Result<File> {
        self.root
            .open_subpath(path, OpenFlags::O_RDONLY)
            .map_err(io_err)
    }

    /// Reads a whole file.
    pub fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_read(path)?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Reads at most `limit` bytes of a file.
    pub fn read_at_most(&self, path: &str, limit: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_read(path)?
            .take(limit as u64)
            .read_to_end(&mut out)?;
        Ok(out)
    }

    /// Metadata of what `path` resolves to (symlinks followed inside the root).
    pub fn metadata(&self, path: &str) -> io::Result<std::fs::Metadata> {
        let handle = self.root.resolve(path).map_err(io_err)?;
        File::from(OwnedFd::from(handle)).metadata()
    }

    /// Whether `path` resolves to something.
    pub fn exists(&self, path: &str) -> bool {
        self.root.resolve(path).is_ok()
    }

    /// Opens a file for writing, creating it with `mode` (before the umask) if it does not
    /// exist. The parent directory must exist.
    pub fn open_write(&self, path: &str, how: WriteMode, mode: u32) -> io::Result<File> {
        let access = match how {
            WriteMode::Truncate => OpenFlags::O_WRONLY | OpenFlags::O_TRUNC,
            WriteMode::Append => OpenFlags::O_WRONLY | OpenFlags::O_APPEND,
            WriteMode::Update => OpenFlags::O_RDWR,
        };
        let perm = Permissions::from_mode(mode & HOST_SAFE_MODE_MASK);
        let mut path = PathBuf::from(path);
        for _ in 0..=MAX_SYMLINKS {
            // An existing file: opened where it resolves to, inside the root.
            match self.root.open_subpath(&path, access) {
                Ok(f) => return Ok(f),
                Err(e) => {
                    let e = io_err(e);
                    if e.kind() != io::ErrorKind::NotFound {
                        return Err(e);
                    }
                }
            }
            // A new one: the last component is created below a confined parent, never
            // followed by the host kernel.
            match self
                .root
                .create_file(&path, access | OpenFlags::O_NOFOLLOW, &perm)
            {
                Ok(f) => return Ok(f),
                Err(e) => {
                    let e = io_err(e);
                    if errno(&e) != Some(libc_errno::ELOOP) {
                        return Err(e);
                    }
                }
            }
            // The last component is a symlink to nothing yet: follow it inside the root.
            let target = self.root.readlink(&path).map_err(io_err)?;
            path = if target.is_absolute() {
                target
            } else {
                path.parent().unwrap_or(Path::new("/")).join(target)
            };
        }
        Err(io::Error::from_raw_os_error(libc_errno::ELOOP))
    }

    /// Writes (creates or replaces) a file, creating its parent directories.
    pub fn write(&self, path: &str, data: &[u8]) -> io::Result<()> {
        use std::io::Write as _;
        self.mkdir_parent(path)?;
        self.open_write(path, WriteMode::Truncate, 0o644)?
            .write_all(data)
    }

    /// Appends to a file, creating it and its parent directories.
    pub fn append(&self, path: &str, data: &[u8]) -> io::Result<()> {
        use std::io::Write as _;
        self.mkdir_parent(path)?;
        self.open_write(path, WriteMode::Append, 0o644)?
            .write_all(data)
    }

    fn mkdir_parent(&self, path: &str) -> io::Result<()> {
        match Path::new(path).parent() {
            Some(parent)
                if parent
                    .components()
                    .any(|c| matches!(c, Component::Normal(_))) =>
            {
                self.mkdir_all(&parent.to_string_lossy(), 0o755).map(drop)
            }
            _ => Ok(()),
        }
    }

    /// Creates a directory and its missing parents with `mode` (before the umask); returns
    /// the directory, opened.
    pub fn mkdir_all(&self, path: &str, mode: u32) -> io::Result<File> {
        let handle = self
            .root
            .mkdir_all(path, &Permissions::from_mode(mode & 0o777))
            .map_err(io_err)?;
        // Through the directory's own handle: no procfs round trip (pathrs's `reopen` goes
        // through /proc/thread-self/fd).
        Ok(File::from(open_dir(&OwnedFd::from(handle))?))
    }

    /// Creates a directory (its parent must exist); `false` if something is there already.
    pub fn mkdir(&self, path: &str, mode: u32) -> io::Result<bool> {
        match self.root.create(
            path,
            &InodeType::Directory(Permissions::from_mode(mode & 0o777)),
        ) {
            Ok(()) => Ok(true),
            Err(e) => match io_err(e) {
                e if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                e => Err(e),
            },
        }
    }

    /// Creates a symlink at `path` pointing to `target` (any text; it is only ever followed
    /// inside a root).
    pub fn symlink(&self, path: &str, target: &str) -> io::Result<()> {
        self.root
            .create(path, &InodeType::Symlink(PathBuf::from(target)))
            .map_err(io_err)
    }

    /// Removes a file (not following a symlink at `path`: the link itself goes).
    pub fn remove_file(&self, path: &str) -> io::Result<()> {
        self.root.remove_file(path).map_err(io_err)
    }

    /// Removes a tree, if present (a symlink at `path` is removed, not followed).
    pub fn remove_all(&self, path: &str) -> io::Result<()> {
        match self.root.remove_all(path).map_err(io_err) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Renames `from` to `to`, both inside the root (neither last component is followed).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.root
            .rename(from, to, pathrs::flags::RenameFlags::empty())
            .map_err(io_err)
    }

    /// Moves the entry at `path` into the directory `dest_dir` (outside the root, one of
    /// ours) under `name`, with one `renameat`: the parent is resolved inside the root and the
    /// last component is never followed.
    fn move_out(&self, path: &str, dest_dir: &File, name: &str) -> io::Result<()> {
        let p = Path::new(path);
        let Some(Component::Normal(last)) = p.components().next_back() else {
            return Err(io::Error::from_raw_os_error(libc_errno::EINVAL));
        };
        let parent = p.parent().unwrap_or(Path::new("/"));
        let dir: OwnedFd = self.root.resolve(parent).map_err(io_err)?.into();
        rustix::fs::renameat(dir.as_fd(), last, dest_dir.as_fd(), name).map_err(io::Error::from)
    }

    /// The bytes in the tree at `path` (symlinks counted as themselves, never followed; at
    /// most 128 levels deep).
    pub fn tree_size(&self, path: &str) -> io::Result<u64> {
        let handle = self.root.resolve(path).map_err(io_err)?;
        let fd: OwnedFd = handle.into();
        let meta = File::from(fd.try_clone()?).metadata()?;
        if !meta.is_dir() {
            return Ok(meta.len());
        }
        Ok(dir_size(open_dir(&fd)?, 0))
    }
}

fn dir_size(dir: OwnedFd, depth: usize) -> u64 {
    use rustix::fs::{AtFlags, FileType, OFlags};
    if depth > MAX_TREE_DEPTH {
        return 0;
    }
    let Ok(entries) = rustix::fs::Dir::read_from(&dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let Ok(st) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if let Ok(sub) = rustix::fs::openat(
                &dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            ) {
                total += dir_size(sub, depth + 1);
            }
        } else {
            total += st.st_size as u64;
        }
    }
    total
}

/// The errno values this module names (from `rustix`, which has them for every target).
mod libc_errno {
    pub const ENOTDIR: i32 = rustix::io::Errno::NOTDIR.raw_os_error();
    pub const ELOOP: i32 = rustix::io::Errno::LOOP.raw_os_error();
    pub const EINVAL: i32 = rustix::io::Errno::INVAL.raw_os_error();
}

/// The directory behind a handle (an `O_PATH` one included), opened for reading: `.` of the
/// handle itself, so no path is resolved again.
fn open_dir(fd: &OwnedFd) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        fd,
        ".",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// A guest root directory on the host.
#[derive(Debug)]
pub struct GuestFs {
    root: Arc<Confined>,
    owned: Option<tempfile::TempDir>,
    /// Where discarded trees wait for deletion: a directory next to the root (same
    /// filesystem, so a tree moves there with one rename), made on first use.
    trash: std::sync::OnceLock<Option<(tempfile::TempDir, File)>>,
    discarded: std::sync::atomic::AtomicU64,
}

/// Runs `f` (a deletion nobody waits for) on the current tokio runtime's blocking pool, or
/// here when there is no runtime or it is a current-thread one (an in-process run on the
/// paused clock, where nothing else waits: a blocking-pool thread per run would cost more
/// than the deletion). A runtime finishes its blocking work before it shuts down.
fn later(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread => {
            drop(rt.spawn_blocking(f))
        }
        _ => f(),
    }
}

impl Drop for GuestFs {
    /// A guest root of its own is deleted when the guest goes (its VM stopped), and so is the
    /// trash. Nobody waits for that: inside a tokio runtime the files are removed on its
    /// blocking pool, so that a StopVM answers without first deleting some twenty directories.
    fn drop(&mut self) {
        let owned = self.owned.take();
        let trash = self.trash.take().flatten();
        if owned.is_some() || trash.is_some() {
            later(move || drop((owned, trash)));
        }
    }
}

impl GuestFs {
    /// A guest root in a fresh temporary directory, removed on drop.
    pub fn temp() -> io::Result<Self> {
        Self::temp_in(&std::env::temp_dir())
    }

    /// A guest root in a fresh temporary directory (`kata-sim-guest-*`) in `parent`, removed
    /// on drop.
    pub fn temp_in(parent: &Path) -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kata-sim-guest-")
            .tempdir_in(parent)?;
        Ok(GuestFs {
            root: Arc::new(Confined::open(dir.path())?),
            owned: Some(dir),
            trash: std::sync::OnceLock::new(),
            discarded: Default::default(),
        })
    }

    /// A guest root at `root` (made if missing, but never its parents: a typo must not
    /// create directories), which is left in place.
    pub fn at(root: PathBuf) -> io::Result<Self> {
        match std::fs::create_dir(&root) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "guest root {}: the directory {} does not exist",
                        root.display(),
                        root.parent().unwrap_or(Path::new("/")).display()
                    ),
                ));
            }
            other => other?,
        }
        Ok(GuestFs {
            root: Arc::new(Confined::open(&root)?),
            owned: None,
            trash: std::sync::OnceLock::new(),
            discarded: Default::default(),
        })
    }

    /// The host directory that is the guest's `/` (for messages and tests).
    pub fn root(&self) -> &Path {
        self.root.host_path()
    }

    /// The guest's `/`, for operations.
    pub fn confined(&self) -> &Arc<Confined> {
        &self.root
    }

    /// Reads a guest file.
    pub fn read(&self, guest_path: &str) -> io::Result<Vec<u8>> {
        self.root.read(guest_path)
    }

    /// Writes (creates or replaces) a guest file, creating parent directories.
    pub fn write(&self, guest_path: &str, data: &[u8]) -> io::Result<()> {
        self.root.write(guest_path, data)
    }

    /// Appends to a guest file, creating it.
    pub fn append(&self, guest_path: &str, data: &[u8]) -> io::Result<()> {
        self.root.append(guest_path, data)
    }

    /// Creates a guest directory and its parents.
    pub fn mkdir_all(&self, guest_path: &str) -> io::Result<()> {
        self.root.mkdir_all(guest_path, 0o755).map(drop)
    }

    /// Creates the guest directory `base` with the relative directories `dirs` in it, unless
    /// `base` already exists (then nothing is touched and the answer is `false`). The
    /// directories below `base` are made inside `base` itself (a root of its own), so nothing
    /// put there meanwhile can lead them elsewhere.
    pub fn create_tree(&self, base: &str, dirs: &[&str]) -> io::Result<bool> {
        if let Some(parent) = Path::new(base).parent() {
            self.root.mkdir_all(&parent.to_string_lossy(), 0o755)?;
        }
        if !self.root.mkdir(base, 0o755)? {
            return Ok(false);
        }
        let tree = self.root.subdir(base)?;
        for dir in dirs {
            debug_assert!(
                Path::new(dir)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
            );
            tree.mkdir_all(dir, 0o755)?;
        }
        Ok(true)
    }

    /// Whether a guest path exists (following symlinks inside the root).
    pub fn exists(&self, guest_path: &str) -> bool {
        self.root.exists(guest_path)
    }

    /// Takes a guest directory tree out of the guest (it is gone from the guest when this
    /// returns) and deletes its files later, off the caller's path; as [`GuestFs::remove_all`]
    /// where it cannot be moved aside. The guest's `/` itself is never discarded.
    pub fn discard(&self, guest_path: &str) -> io::Result<()> {
        let last = Path::new(guest_path).components().next_back();
        if !matches!(last, Some(Component::Normal(_))) {
            return Err(io::Error::other("the guest root cannot be discarded"));
        }
        let trash = self.trash.get_or_init(|| {
            let parent = self.root().parent()?;
            let dir = tempfile::Builder::new()
                .prefix("kata-sim-trash-")
                .tempdir_in(parent)
                .ok()?;
            let handle = File::open(dir.path()).ok()?;
            Some((dir, handle))
        });
        if let Some((dir, handle)) = trash {
            let n = self
                .discarded
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_string();
            match self.root.move_out(guest_path, handle, &n) {
                Ok(()) => {
                    // Our own directory: std's removal never follows a symlink inside it.
                    let dest = dir.path().join(n);
                    later(move || {
                        let _ = std::fs::remove_dir_all(dest);
                    });
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                // Not a directory, another filesystem: remove it in place.
                Err(_) => {}
            }
        }
        self.remove_all(guest_path)
    }

    /// Removes a guest directory tree, if present.
    pub fn remove_all(&self, guest_path: &str) -> io::Result<()> {
        self.root.remove_all(guest_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host directory outside the guest root whose contents must never change.
    struct Sentinel(tempfile::TempDir);

    impl Sentinel {
        fn new() -> Self {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join("victim"), b"host").unwrap();
            Sentinel(d)
        }
        fn path(&self, name: &str) -> String {
            self.0.path().join(name).to_string_lossy().into_owned()
        }
        fn assert_untouched(&self) {
            let mut names: Vec<_> = std::fs::read_dir(self.0.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            assert_eq!(names, ["victim"], "something was written outside the root");
            assert_eq!(
                std::fs::read(self.0.path().join("victim")).unwrap(),
                b"host"
            );
        }
    }

    #[test]
    fn dotdot_clamps_at_root() {
        let fs = GuestFs::temp().unwrap();
        fs.write("/../../etc/passwd", b"x").unwrap();
        assert_eq!(std::fs::read(fs.root().join("etc/passwd")).unwrap(), b"x");
    }

    #[test]
    fn absolute_and_climbing_symlinks_stay_in_the_root() {
        let fs = GuestFs::temp().unwrap();
        let host = Sentinel::new();
        fs.mkdir_all("/a").unwrap();
        fs.mkdir_all(&host.path("")).unwrap();
        std::os::unix::fs::symlink(host.0.path(), fs.root().join("a/link")).unwrap();
        fs.write("/a/link/victim", b"guest").unwrap();
        assert_eq!(
            std::fs::read(fs.root().join(host.path("victim").trim_start_matches('/'))).unwrap(),
            b"guest"
        );
        std::os::unix::fs::symlink("../../../../..", fs.root().join("a/up")).unwrap();
        fs.write("/a/up/x", b"y").unwrap();
        assert!(fs.root().join("x").is_file());
        host.assert_untouched();
    }

    #[test]
    fn a_dangling_symlink_is_followed_inside_the_root_chain_and_all() {
        let fs = GuestFs::temp().unwrap();
        let host = Sentinel::new();
        fs.mkdir_all("/d").unwrap();
        // d/one -> d/two -> <host>/new (absolute, dangling on the host and in the guest).
        std::os::unix::fs::symlink("two", fs.root().join("d/one")).unwrap();
        std::os::unix::fs::symlink(host.path("new"), fs.root().join("d/two")).unwrap();
        fs.mkdir_all(&host.path("")).unwrap();
        fs.write("/d/one", b"z").unwrap();
        assert_eq!(
            fs.read(&host.path("new")).unwrap(),
            b"z",
            "created in the guest"
        );
        assert_eq!(fs.read("/d/one").unwrap(), b"z");
        host.assert_untouched();
        // An absolute link to an existing host file: the guest's file of that name is written.
        std::os::unix::fs::symlink(host.path("victim"), fs.root().join("d/v")).unwrap();
        fs.append("/d/v", b"!").unwrap();
        host.assert_untouched();
    }

    #[test]
    fn a_tree_is_created_once_and_never_through_an_existing_base() {
        let fs = GuestFs::temp().unwrap();
        assert!(fs.create_tree("/r/rootfs", &["tmp", "usr/bin"]).unwrap());
        assert!(fs.root().join("r/rootfs/usr/bin").is_dir());
        // An existing base (here a symlink out of the guest) is left alone.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), fs.root().join("r/other")).unwrap();
        assert!(!fs.create_tree("/r/rootfs", &["etc"]).unwrap());
        assert!(!fs.root().join("r/rootfs/etc").exists());
        assert!(!fs.create_tree("/r/other", &["etc"]).unwrap());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_owned_root_is_deleted_with_its_guest_even_from_inside_a_runtime() {
        let fs = GuestFs::temp().unwrap();
        fs.write("/run/a/b", b"x").unwrap();
        let root = fs.root().to_path_buf();
        drop(fs);
        assert!(!root.exists(), "outside a runtime: removed in place");

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let root = rt.block_on(async {
            let fs = GuestFs::temp().unwrap();
            fs.write("/run/a/b", b"x").unwrap();
            fs.root().to_path_buf()
        });
        // Removed on the blocking pool; the runtime waits for it before it is gone.
        drop(rt);
        assert!(
            !root.exists(),
            "inside a runtime: removed before the runtime ends"
        );

        let kept = tempfile::tempdir().unwrap();
        assert!(
            GuestFs::at(kept.path().join("no/such/g")).is_err(),
            "no parent is created"
        );
        assert!(!kept.path().join("no").exists());
        drop(GuestFs::at(kept.path().join("g")).unwrap());
        assert!(
            kept.path().join("g").is_dir(),
            "a root it was given is left in place"
        );
    }

    #[test]
    fn a_discarded_tree_leaves_the_guest_at_once_and_the_disk_by_the_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (root, trash) = rt.block_on(async {
            let fs = GuestFs::temp().unwrap();
            assert!(fs.create_tree("/c/rootfs", &["tmp", "usr/bin"]).unwrap());
            fs.write("/c/rootfs/tmp/f", b"x").unwrap();
            fs.discard("/c/rootfs").unwrap();
            assert!(
                !fs.exists("/c/rootfs"),
                "gone from the guest when discard returns"
            );
            assert!(fs.exists("/c"), "only the tree itself goes");
            fs.discard("/c/rootfs").unwrap();
            assert!(fs.discard("/").is_err(), "never the guest's /");
            assert!(fs.exists("/c"));
            let trash = fs
                .trash
                .get()
                .unwrap()
                .as_ref()
                .unwrap()
                .0
                .path()
                .to_path_buf();
            assert_eq!(trash.parent(), fs.root().parent(), "next to the root");
            (fs.root().to_path_buf(), trash)
        });
        drop(rt);
        assert!(!root.exists());
        assert!(!trash.exists(), "the trash goes with its guest");
    }

    #[test]
    fn discarding_through_a_symlinked_parent_moves_nothing_of_the_host() {
        let fs = GuestFs::temp().unwrap();
        let host = Sentinel::new();
        std::fs::create_dir(host.0.path().join("tree")).unwrap();
        std::os::unix::fs::symlink(host.0.path(), fs.root().join("c")).unwrap();
        // `/c/tree` resolves in the guest (where there is no such tree), not on the host.
        fs.discard("/c/tree").unwrap();
        assert!(host.0.path().join("tree").is_dir());
        std::fs::remove_dir(host.0.path().join("tree")).unwrap();
        host.assert_untouched();
    }

    #[test]
    fn a_subdir_is_a_root_of_its_own() {
        let fs = GuestFs::temp().unwrap();
        fs.mkdir_all("/run/c/rootfs/etc").unwrap();
        let rootfs = fs.confined().subdir("/run/c/rootfs").unwrap();
        rootfs.symlink("/esc", "/../../etc").unwrap();
        rootfs.write("/esc/passwd", b"p").unwrap();
        assert!(fs.root().join("run/c/rootfs/etc/passwd").is_file());
        assert!(!fs.root().join("etc").exists());
        assert_eq!(
            fs.confined().subdir("/nothere").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn setuid_and_setgid_bits_never_reach_the_host() {
        let fs = GuestFs::temp().unwrap();
        let f = fs
            .confined()
            .open_write("/s", WriteMode::Truncate, 0o6777)
            .unwrap();
        let mode = f.metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o6000, 0, "mode {mode:o}");
    }

    #[test]
    fn tree_size_counts_files_and_does_not_follow_links() {
        let fs = GuestFs::temp().unwrap();
        fs.write("/v/a", &[0; 10]).unwrap();
        fs.write("/v/sub/b", &[0; 5]).unwrap();
        let host = Sentinel::new();
        std::fs::write(host.0.path().join("victim"), vec![0; 1000]).unwrap();
        std::os::unix::fs::symlink(host.path("victim"), fs.root().join("v/l")).unwrap();
        let link_len = host.path("victim").len() as u64;
        assert_eq!(fs.confined().tree_size("/v").unwrap(), 15 + link_len);
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let fs = GuestFs::temp().unwrap();
        std::os::unix::fs::symlink("/l2", fs.root().join("l1")).unwrap();
        std::os::unix::fs::symlink("/l1", fs.root().join("l2")).unwrap();
        assert!(fs.read("/l1/x").is_err());
        assert!(fs.write("/l1", b"x").is_err());
    }
}
