//! Runs a parsed [`Script`] in a container: lists, pipelines, redirections, `exec` and `exit`,
//! with file paths seen through the container's OCI mounts.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

use super::io::{Input, Output, Stdio, pipe};
use super::parse::{AndOr, Command, Connector, Pipeline, RedirectTarget, Script};
use super::programs::{Files, Program};
use crate::sim::fs::{Confined, WriteMode};
use crate::sim::process::{Proc, Stream};

/// One OCI mount as the interpreter needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountView {
    /// Where the container sees it.
    pub destination: String,
    /// The guest path it shows (for bind mounts).
    pub source: String,
    /// A bind mount shows `source`; other mounts (tmpfs, proc, ...) are modelled as
    /// directories of the rootfs.
    pub bind: bool,
}

/// A container's view of the guest filesystem.
#[derive(Debug, Clone)]
pub struct ContainerView {
    /// The guest's `/`.
    pub guest: Arc<Confined>,
    /// The container's rootfs, as a guest path.
    pub rootfs: String,
    /// Its mounts.
    pub mounts: Vec<MountView>,
    /// The process's working directory.
    pub cwd: String,
}

/// What a container path is.
#[derive(Debug)]
enum Target {
    Null,
    Zero,
    Random,
    Stdout,
    Stderr,
    /// A file: a path inside a root (the guest's `/` for a bind mount's source, the
    /// container's rootfs otherwise).
    File(Arc<Confined>, String),
}

/// Lexically normalises a container path against `cwd` (`..` stops at `/`).
fn normalize(cwd: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(cwd).join(path)
    };
    let mut parts: Vec<String> = Vec::new();
    for c in joined.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

impl ContainerView {
    /// Resolves a container path to a device or a host path inside the guest root.
    fn target(&self, path: &str) -> io::Result<Target> {
        let p = normalize(&self.cwd, path);
        match p.as_str() {
            "/dev/null" => return Ok(Target::Null),
            "/dev/zero" => return Ok(Target::Zero),
            "/dev/urandom" | "/dev/random" => return Ok(Target::Random),
            "/dev/stdout" | "/proc/self/fd/1" | "/dev/fd/1" => return Ok(Target::Stdout),
            "/dev/stderr" | "/proc/self/fd/2" | "/dev/fd/2" => return Ok(Target::Stderr),
            _ => {}
        }
        // The mount with the longest destination that contains the path wins. A destination
        // is where the kernel mounted it: normalised as the path is (`/dev//x` is `/dev/x`).
        let mount = self
            .mounts
            .iter()
            .filter(|m| m.bind)
            .map(|m| {
                let d = normalize("/", &m.destination);
                // `/` covers every path; its prefix is empty.
                let d = if d == "/" { String::new() } else { d };
                (m, d)
            })
            .filter(|(_, d)| p == *d || p.starts_with(&format!("{d}/")) || d.is_empty())
            .max_by_key(|(_, d)| d.len());
        Ok(match mount {
            Some((m, d)) => {
                let rest = &p[d.len()..];
                Target::File(Arc::clone(&self.guest), format!("{}{rest}", m.source))
            }
            None => Target::File(Arc::new(self.guest.subdir(&self.rootfs)?), p),
        })
    }
}

/// What a script runs with.
#[derive(Debug, Clone)]
pub struct Env {
    /// The process (its stdio).
    pub proc: Arc<Proc>,
    /// The container's filesystem view.
    pub view: ContainerView,
    /// The seed of `/dev/urandom`.
    pub seed: u64,
}

impl Files for Env {
    fn open_read(&self, path: &str) -> io::Result<Input> {
        Ok(match self.view.target(path)? {
            Target::Null => Input::Empty,
            Target::Zero => Input::Zero,
            Target::Random => Input::Random(Box::new(ChaCha8Rng::seed_from_u64(self.seed))),
            Target::Stdout | Target::Stderr => Input::Empty,
            Target::File(root, p) => {
                if root.metadata(&p)?.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::IsADirectory,
                        "Is a directory",
                    ));
                }
                Input::Bytes(io::Cursor::new(root.read(&p)?))
            }
        })
    }
}

impl Env {
    fn open_write(&self, path: &str, append: bool) -> io::Result<Output> {
        Ok(match self.view.target(path)? {
            Target::Null | Target::Zero | Target::Random => Output::Null,
            Target::Stdout => Output::Proc(Arc::clone(&self.proc), Stream::Stdout),
            Target::Stderr => Output::Proc(Arc::clone(&self.proc), Stream::Stderr),
            Target::File(root, p) => {
                let how = if append {
                    WriteMode::Append
                } else {
                    WriteMode::Truncate
                };
                Output::File(Arc::new(root.open_write(&p, how, 0o644)?))
            }
        })
    }

    fn shell_stdio(&self) -> Stdio {
        Stdio {
            stdin: Input::Stdin(Arc::clone(&self.proc)),
            stdout: Output::Proc(Arc::clone(&self.proc), Stream::Stdout),
            stderr: Output::Proc(Arc::clone(&self.proc), Stream::Stderr),
        }
    }
}

/// How a command ended for the shell.
enum Flow {
    /// Go on; this is `$?`.
    Status(i32),
    /// The shell exits with this status (`exit`, `exec`).
    Exit(i32),
}

/// Runs a script to the shell's exit status.
pub async fn run_script(script: &Script, env: &Env) -> i32 {
    let mut last = 0;
    for list in &script.lists {
        match run_and_or(list, env, last).await {
            Flow::Status(s) => last = s,
            Flow::Exit(s) => return s,
        }
    }
    last
}

async fn run_and_or(list: &AndOr, env: &Env, last: i32) -> Flow {
    let mut status = match run_pipeline(&list.first, env, last).await {
        Flow::Status(s) => s,
        exit => return exit,
    };
    for (conn, pipeline) in &list.rest {
        let run = match conn {
            Connector::And => status == 0,
            Connector::Or => status != 0,
        };
        if run {
            status = match run_pipeline(pipeline, env, status).await {
                Flow::Status(s) => s,
                exit => return exit,
            };
        }
    }
    Flow::Status(status)
}

async fn run_pipeline(p: &Pipeline, env: &Env, last: i32) -> Flow {
    if let [cmd] = &p.commands[..] {
        let status = run_command(cmd, env.shell_stdio(), env, last).await;
        let is_exit = cmd.program == Some(Program::Exit);
        // `exit` with a bad number prints an error and ends the shell with 2 as well.
        return if cmd.exec || is_exit {
            Flow::Exit(status)
        } else {
            Flow::Status(status)
        };
    }
    // Every stage runs concurrently, connected by pipes; the last stage's status counts.
    // A stage's descriptors are dropped when it finishes, so its neighbours see end of file
    // or a broken pipe.
    let mut stages = Vec::with_capacity(p.commands.len());
    let mut next_stdin = Input::Stdin(Arc::clone(&env.proc));
    for (i, cmd) in p.commands.iter().enumerate() {
        let last_stage = i + 1 == p.commands.len();
        let (stdout, following) = if last_stage {
            (Output::Proc(Arc::clone(&env.proc), Stream::Stdout), None)
        } else {
            let (w, r) = pipe();
            (w, Some(r))
        };
        let stdio = Stdio {
            stdin: std::mem::replace(&mut next_stdin, Input::Empty),
            stdout,
            stderr: Output::Proc(Arc::clone(&env.proc), Stream::Stderr),
        };
        if let Some(r) = following {
            next_stdin = r;
        }
        stages.push(Box::pin(run_command(cmd, stdio, env, last)));
    }
    let statuses = futures::future::join_all(stages).await;
    Flow::Status(*statuses.last().unwrap_or(&0))
}

async fn run_command(cmd: &Command, mut stdio: Stdio, env: &Env, last: i32) -> i32 {
    for r in &cmd.redirects {
        let applied = match &r.to {
            RedirectTarget::Read(path) => match env.open_read(path) {
                Ok(i) => {
                    stdio.stdin = i;
                    Ok(())
                }
                Err(_) => Err(format!("sh: can't open {path}: no such file")),
            },
            RedirectTarget::Write(path) | RedirectTarget::Append(path) => {
                let append = matches!(r.to, RedirectTarget::Append(_));
                match env.open_write(path, append) {
                    Ok(o) => {
                        if r.fd == 2 {
                            stdio.stderr = o;
                        } else {
                            stdio.stdout = o;
                        }
                        Ok(())
                    }
                    Err(e) => Err(format!("sh: can't create {path}: {}", create_error(&e))),
                }
            }
            RedirectTarget::Dup(from) => {
                let o = if *from == 2 {
                    stdio.stderr.clone()
                } else {
                    stdio.stdout.clone()
                };
                if r.fd == 2 {
                    stdio.stderr = o;
                } else {
                    stdio.stdout = o;
                }
                Ok(())
            }
        };
        if let Err(msg) = applied {
            stdio.error(msg).await;
            return 1;
        }
    }
    match cmd.program {
        None => 0,
        Some(p) => p.run(&cmd.argv, &mut stdio, env, last).await,
    }
}

/// Busybox's wording for a failed `>`: the error text, lower case where ash says so.
fn create_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "nonexistent directory".into(),
        io::ErrorKind::IsADirectory => "Is a directory".into(),
        io::ErrorKind::PermissionDenied => "Permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_against_cwd() {
        assert_eq!(normalize("/", "a/../b"), "/b");
        assert_eq!(normalize("/w", "x"), "/w/x");
        assert_eq!(normalize("/w", "../../.."), "/");
        assert_eq!(normalize("/", "/dev//null"), "/dev/null");
    }

    /// Where a file target lands on the host (lexically: these paths hold no symlinks),
    /// or the device it is.
    fn host(view: &ContainerView, path: &str) -> Result<PathBuf, String> {
        match view.target(path).unwrap() {
            Target::File(root, p) => Ok(root.host_path().join(p.trim_start_matches('/'))),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn bind_mounts_win_over_the_rootfs_by_longest_destination() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("run/c/rootfs")).unwrap();
        let view = ContainerView {
            guest: Arc::new(Confined::open(root.path()).unwrap()),
            rootfs: "/run/c/rootfs".into(),
            mounts: vec![
                MountView {
                    destination: "/dev".into(),
                    source: "tmpfs".into(),
                    bind: false,
                },
                MountView {
                    destination: "/dev/termination-log".into(),
                    source: "/run/shared/c-term".into(),
                    bind: true,
                },
                MountView {
                    destination: "/data".into(),
                    source: "/run/shared/vol".into(),
                    bind: true,
                },
            ],
            cwd: "/".into(),
        };
        assert_eq!(
            host(&view, "/dev/termination-log").unwrap(),
            root.path().join("run/shared/c-term")
        );
        assert_eq!(
            host(&view, "/data/x/y").unwrap(),
            root.path().join("run/shared/vol/x/y")
        );
        assert_eq!(
            host(&view, "/dev/shm/f").unwrap(),
            root.path().join("run/c/rootfs/dev/shm/f")
        );
        assert_eq!(
            host(&view, "/datax").unwrap(),
            root.path().join("run/c/rootfs/datax")
        );
        assert_eq!(host(&view, "/dev/null").unwrap_err(), "Null");
        // A symlink in the rootfs cannot lead out of it: the write lands in the rootfs.
        std::fs::create_dir_all(root.path().join("run/c/rootfs/etc")).unwrap();
        std::os::unix::fs::symlink("/../../etc", root.path().join("run/c/rootfs/esc")).unwrap();
        let Target::File(r, p) = view.target("/esc/passwd").unwrap() else {
            panic!("not a file");
        };
        r.write(&p, b"x").unwrap();
        assert!(root.path().join("run/c/rootfs/etc/passwd").is_file());
        assert!(!root.path().join("etc").exists());
    }

    #[test]
    fn a_mount_destination_is_seen_normalised_as_the_kernel_mounted_it() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("run/c/rootfs")).unwrap();
        let bind = |destination: &str, source: &str| MountView {
            destination: destination.into(),
            source: source.into(),
            bind: true,
        };
        let view = ContainerView {
            guest: Arc::new(Confined::open(root.path()).unwrap()),
            rootfs: "/run/c/rootfs".into(),
            mounts: vec![
                bind("/dev//termination-log", "/run/shared/c-term"),
                bind("/data/./", "/run/shared/vol"),
            ],
            cwd: "/".into(),
        };
        assert_eq!(
            host(&view, "/dev/termination-log").unwrap(),
            root.path().join("run/shared/c-term")
        );
        assert_eq!(
            host(&view, "/data/x").unwrap(),
            root.path().join("run/shared/vol/x")
        );
    }
}
