//! The guest filesystem: a host directory that stands for the guest's `/`.
//!
//! Every guest path is resolved inside that root, component by component, following symlinks
//! as the guest kernel would but never above the root (the confinement that the real agent
//! gets from `pathrs`). Nothing outside the root is ever read or written.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Where the Go and Rust runtimes copy files when the filesystem is not shared.
pub const SHARED_CONTAINERS_DIR: &str = "/run/kata-containers/shared/containers/";

/// The most symlinks followed while resolving one path (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// A guest root directory on the host.
#[derive(Debug)]
pub struct GuestFs {
    root: PathBuf,
    owned: Option<tempfile::TempDir>,
    /// Where discarded trees wait for deletion: a directory next to the root (same
    /// filesystem, so a tree moves there with one rename), made on first use.
    trash: std::sync::OnceLock<Option<tempfile::TempDir>>,
    discarded: std::sync::atomic::AtomicU64,
}

/// Runs `f` (a deletion nobody waits for) on the current tokio runtime's blocking pool, or
/// here when there is no runtime. A runtime finishes its blocking work before it shuts down.
fn later(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(f)),
        Err(_) => f(),
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

/// Why a guest path could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path tried to leave the directory it is confined to.
    #[error("path {0:?} escapes its root")]
    Escapes(String),
    /// Too many symlinks.
    #[error("too many levels of symbolic links in {0:?}")]
    Loop(String),
    /// An I/O error while resolving.
    #[error("{0}")]
    Io(#[from] io::Error),
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
            root: dir.path().to_path_buf(),
            owned: Some(dir),
            trash: std::sync::OnceLock::new(),
            discarded: Default::default(),
        })
    }

    /// A guest root in an existing directory, which is left in place.
    pub fn at(root: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        Ok(GuestFs {
            root,
            owned: None,
            trash: std::sync::OnceLock::new(),
            discarded: Default::default(),
        })
    }

    /// The host directory that is the guest's `/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a guest path to a host path inside the root. `..` and symlinks are followed
    /// but clamp at the guest `/`, as a chroot does.
    pub fn resolve(&self, guest_path: &str) -> Result<PathBuf, PathError> {
        resolve_in(&self.root, Path::new(guest_path), true)
    }

    /// Reads a guest file.
    pub fn read(&self, guest_path: &str) -> io::Result<Vec<u8>> {
        let p = self.resolve(guest_path).map_err(into_io)?;
        std::fs::read(p)
    }

    /// Writes (creates or replaces) a guest file, creating parent directories.
    pub fn write(&self, guest_path: &str, data: &[u8]) -> io::Result<()> {
        let p = self.resolve(guest_path).map_err(into_io)?;
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, data)
    }

    /// Appends to a guest file, creating it.
    pub fn append(&self, guest_path: &str, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let p = self.resolve(guest_path).map_err(into_io)?;
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?
            .write_all(data)
    }

    /// Creates a guest directory and its parents.
    pub fn mkdir_all(&self, guest_path: &str) -> io::Result<()> {
        let p = self.resolve(guest_path).map_err(into_io)?;
        std::fs::create_dir_all(p)
    }

    /// Creates the guest directory `base` with the relative directories `dirs` in it, unless
    /// `base` already exists (then nothing is touched and the answer is `false`). `base` is
    /// resolved once: the directories below it are new, so none of them can be a symlink.
    pub fn create_tree(&self, base: &str, dirs: &[&str]) -> io::Result<bool> {
        let p = self.resolve(base).map_err(into_io)?;
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::create_dir(&p) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            other => other?,
        }
        for dir in dirs {
            debug_assert!(
                Path::new(dir)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
            );
            std::fs::create_dir_all(p.join(dir))?;
        }
        Ok(true)
    }

    /// Whether a guest path exists (following symlinks inside the root).
    pub fn exists(&self, guest_path: &str) -> bool {
        self.resolve(guest_path)
            .map(|p| p.exists())
            .unwrap_or(false)
    }

    /// Takes a guest directory tree out of the guest (it is gone from the guest when this
    /// returns) and deletes its files later, off the caller's path; as [`GuestFs::remove_all`]
    /// where it cannot be moved aside. The guest's `/` itself is never discarded.
    pub fn discard(&self, guest_path: &str) -> io::Result<()> {
        let p = self.resolve(guest_path).map_err(into_io)?;
        if p == self.root {
            return Err(io::Error::other("the guest root cannot be discarded"));
        }
        let trash = self.trash.get_or_init(|| {
            let parent = self.root.parent()?;
            tempfile::Builder::new()
                .prefix("kata-sim-trash-")
                .tempdir_in(parent)
                .ok()
        });
        if let Some(trash) = trash {
            let n = self
                .discarded
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dest = trash.path().join(n.to_string());
            match std::fs::rename(&p, &dest) {
                Ok(()) => {
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
        match std::fs::remove_dir_all(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Removes a guest directory tree, if present.
    pub fn remove_all(&self, guest_path: &str) -> io::Result<()> {
        let p = self.resolve(guest_path).map_err(into_io)?;
        match std::fs::remove_dir_all(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

fn into_io(e: PathError) -> io::Error {
    match e {
        PathError::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Resolves `path` inside `root`. With `clamp`, `..` at the root stays at the root (chroot
/// semantics); without it, leaving the root is an error.
///
/// Each component is looked at once (`lstat`) for a symlink, until one does not exist: what
/// follows a missing component cannot be a symlink, so it is taken as written.
pub fn resolve_in(root: &Path, path: &Path, clamp: bool) -> Result<PathBuf, PathError> {
    let mut out = root.to_path_buf();
    // Components pushed onto `out` below the root.
    let mut depth = 0usize;
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut pending, path);
    let mut followed = 0;
    let mut missing = false;
    while let Some(c) = pending.pop() {
        if c == ".." {
            if depth == 0 {
                if !clamp {
                    return Err(PathError::Escapes(path.display().to_string()));
                }
            } else {
                out.pop();
                depth -= 1;
                // Back in a directory that may exist: look again.
                missing = false;
            }
            continue;
        }
        if c == "." || c.is_empty() {
            continue;
        }
        out.push(&c);
        if missing {
            depth += 1;
            continue;
        }
        match std::fs::symlink_metadata(&out) {
            Ok(m) if m.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(PathError::Loop(path.display().to_string()));
                }
                let target = std::fs::read_link(&out)?;
                out.pop();
                if target.is_absolute() {
                    out = root.to_path_buf();
                    depth = 0;
                }
                push_components(&mut pending, &target);
            }
            Ok(_) => depth += 1,
            Err(e) => {
                missing = e.kind() == io::ErrorKind::NotFound;
                depth += 1;
            }
        }
    }
    Ok(out)
}

/// Pushes the components of `p` onto a stack so that the first component is popped first.
fn push_components(stack: &mut Vec<std::ffi::OsString>, p: &Path) {
    let comps: Vec<std::ffi::OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    stack.extend(comps.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotdot_clamps_at_root() {
        let fs = GuestFs::temp().unwrap();
        let p = fs.resolve("/../../etc/passwd").unwrap();
        assert_eq!(p, fs.root().join("etc/passwd"));
    }

    #[test]
    fn absolute_symlink_is_rerooted() {
        let fs = GuestFs::temp().unwrap();
        fs.mkdir_all("/a").unwrap();
        std::os::unix::fs::symlink("/etc", fs.root().join("a/link")).unwrap();
        assert_eq!(
            fs.resolve("/a/link/passwd").unwrap(),
            fs.root().join("etc/passwd")
        );
        std::os::unix::fs::symlink("../../../../..", fs.root().join("a/up")).unwrap();
        assert_eq!(fs.resolve("/a/up/x").unwrap(), fs.root().join("x"));
    }

    #[test]
    fn a_symlink_after_a_missing_directory_and_dotdot_is_still_followed() {
        let fs = GuestFs::temp().unwrap();
        fs.mkdir_all("/a").unwrap();
        std::os::unix::fs::symlink("/etc", fs.root().join("a/link")).unwrap();
        // `nothere` is missing, so what follows it is not looked at, until `..` climbs back.
        assert_eq!(
            fs.resolve("/a/nothere/../link/passwd").unwrap(),
            fs.root().join("etc/passwd")
        );
        assert_eq!(
            fs.resolve("/a/nothere/link/x").unwrap(),
            fs.root().join("a/nothere/link/x")
        );
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
        fs.create_tree("/r/other", &["etc"]).unwrap();
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
    fn unclamped_resolution_rejects_escape() {
        let fs = GuestFs::temp().unwrap();
        assert!(matches!(
            resolve_in(fs.root(), Path::new("a/../../x"), false),
            Err(PathError::Escapes(_))
        ));
        assert_eq!(
            resolve_in(fs.root(), Path::new("a/../x"), false).unwrap(),
            fs.root().join("x")
        );
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let fs = GuestFs::temp().unwrap();
        std::os::unix::fs::symlink("/l2", fs.root().join("l1")).unwrap();
        std::os::unix::fs::symlink("/l1", fs.root().join("l2")).unwrap();
        assert!(matches!(fs.resolve("/l1/x"), Err(PathError::Loop(_))));
    }
}
