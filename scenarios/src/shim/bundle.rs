//! OCI bundles as containerd and kubelet make them for a shim: `config.json` with the
//! annotations the CRI plugin sets, bind mounts of host files (the termination-message file
//! among them), and a rootfs.
//!
//! The rootfs is the host's static busybox (Debian's `busybox-static`) with a link per applet
//! and a `/pause` for the sandbox container, made once per run; `--rootfs DIR` gives another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder, Process, Root, Spec};

/// containerd CRI's container-type annotation (`sandbox` or `container`).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// containerd CRI's sandbox-id annotation.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// containerd CRI's sandbox-name annotation.
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// containerd CRI's image-name annotation.
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
/// The image a container runs (it names the guest-pull source).
pub const IMAGE: &str = "busybox:latest";
/// The sandbox container's image.
pub const PAUSE_IMAGE: &str = "pause";
/// The sandbox container's command (kubelet's pause image runs `/pause`).
pub const PAUSE: &str = "/pause";

/// What a bundle holds.
#[derive(Debug, Clone, Default)]
pub struct BundleSpec {
    /// The process's command line.
    pub args: Vec<String>,
    /// Whether it has a terminal.
    pub terminal: bool,
    /// The spec's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Bind mounts of host files: destination, host source.
    pub binds: Vec<(String, PathBuf)>,
    /// The host name (the sandbox's).
    pub hostname: Option<String>,
    /// The cgroup (`linux.cgroupsPath`, as containerd sets it: `/NAMESPACE/ID`).
    pub cgroups_path: String,
}

/// Where a bundle's rootfs comes from.
#[derive(Debug, Clone)]
pub enum Rootfs {
    /// A busybox rootfs made in the bundle (`rootfs/`), its binary hard-linked from this one.
    Busybox(PathBuf),
    /// The user's directory, named by absolute path in `config.json`.
    Dir(PathBuf),
}

/// Writes the bundle `{dir}` (its last component is the task id, as containerd and the runc
/// shim's `delete` expect): `config.json`, and the rootfs.
pub fn write(dir: &Path, spec: &BundleSpec, rootfs: &Rootfs) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut oci = Spec::default();
    let mut process = Process::default();
    process.set_args(Some(spec.args.clone()));
    process.set_terminal(Some(spec.terminal));
    process.set_cwd("/".into());
    process.set_env(Some(vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ]));
    oci.set_process(Some(process));
    let mut root = Root::default();
    // runc refuses a rootfs that is a symlink: the bundle gets a rootfs of its own.
    match rootfs {
        Rootfs::Busybox(binary) => {
            make_rootfs(&dir.join("rootfs"), binary)?;
            root.set_path(dir.join("rootfs"));
        }
        Rootfs::Dir(d) => {
            root.set_path(d.clone());
        }
    }
    root.set_readonly(Some(false));
    oci.set_root(Some(root));
    // containerd sets no host name of its own (`ctr run`); CRI the pod's.
    oci.set_hostname(spec.hostname.clone());
    if let Some(linux) = oci.linux_mut() {
        linux.set_cgroups_path(Some(PathBuf::from(&spec.cgroups_path)));
    }
    let mut mounts: Vec<Mount> = oci.mounts().clone().unwrap_or_default();
    for (dest, source) in &spec.binds {
        mounts.push(
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(source)
                .options(vec!["rbind".to_string(), "rw".to_string()])
                .build()
                .map_err(std::io::Error::other)?,
        );
    }
    oci.set_mounts(Some(mounts));
    // oci-spec's map type; config.json is written once and read by the shim, not traced.
    oci.set_annotations(Some(
        spec.annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    ));
    oci.save(dir.join("config.json"))
        .map_err(std::io::Error::other)
}

/// The applets a rootfs needs: the shell and what the library's commands run.
fn busybox() -> std::io::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/bin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("busybox"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            std::io::Error::other(
                "no busybox on PATH for the containers' rootfs: install busybox-static, or pass --rootfs DIR",
            )
        })
}

/// The host's static busybox in `dir` (the run's): a hard link, or a copy across file
/// systems, for the bundles' rootfs to hard-link.
pub fn busybox_copy(dir: &Path) -> std::io::Result<PathBuf> {
    let bin = busybox()?;
    let copy = dir.join("busybox");
    // A link where it can be: a copy is a file open for writing while it is made, and a
    // process forked meanwhile (another test's shim) holds that descriptor until it execs,
    // so running the copy can then fail with ETXTBSY.
    if std::fs::hard_link(&bin, &copy).is_err() {
        std::fs::copy(&bin, &copy)?;
    }
    Ok(copy)
}

/// Makes a rootfs in `dir` from `binary` (a static busybox): a link per applet, the usual
/// top-level directories, and `/pause` (waits until it is killed).
fn make_rootfs(dir: &Path, bin: &Path) -> std::io::Result<()> {
    for d in [
        "bin", "dev", "etc", "proc", "sys", "tmp", "run", "var", "root",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let target = dir.join("bin/busybox");
    if std::fs::hard_link(bin, &target).is_err() {
        std::fs::copy(bin, &target)?;
    }
    let list = std::process::Command::new(bin).arg("--list").output()?;
    if !list.status.success() {
        return Err(std::io::Error::other(format!(
            "{} --list failed: {}",
            bin.display(),
            String::from_utf8_lossy(&list.stderr).trim()
        )));
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = dir.join("bin").join(applet);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    let pause = dir.join("pause");
    std::fs::write(&pause, "#!/bin/sh\nexec /bin/sleep 2147483647\n")?;
    std::fs::set_permissions(&pause, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}
