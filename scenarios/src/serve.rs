//! `kata-sim serve`: the remote-hypervisor service on a socket, with a guest agent per VM.
//!
//! The state directory is kata-sim's own: [`StateDir::claim`] creates it if it is missing
//! (its parent must exist), locks it (`.kata-sim.lock`, an `flock` the kernel releases when the
//! process dies, so two servers never share one) and removes what a previous instance that
//! was killed left there: VM directories holding only stale agent sockets, guest roots
//! (`kata-sim-guest-*`, which every VM gets in the state directory) and their trash
//! (`kata-sim-trash-*`). Nothing else in the directory is touched. When it is released (on
//! shutdown, or when a start fails) the same sweep runs, the lock goes, and the directory is
//! removed if this instance created it and it is empty.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sim_agent::fault::FaultEngine;
use sim_agent::fault::control::ControlServer;
use sim_agent::server::transport::BindError;
use sim_agent::{AgentVersion, SimConfig};
use sim_hypervisor::{Fleet, FleetConfig, HypervisorError, RemoteHypervisorServer, SimVmConfig};

/// What `kata-sim serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The remote-hypervisor socket (`remote_hypervisor_socket` in Kata's configuration).
    pub hypervisor_socket: PathBuf,
    /// Where VM directories and agent sockets go; default: `vms/` beside the socket.
    pub state_dir: Option<PathBuf>,
    /// The agent release every guest behaves as.
    pub agent_version: AgentVersion,
    /// How long a VM takes to boot.
    pub boot_time: Duration,
    /// Fault rules installed from the start.
    pub faults: Vec<String>,
    /// The seed of every random choice.
    pub seed: u64,
    /// Serve a fault control socket here.
    pub control: Option<PathBuf>,
}

impl ServeOptions {
    /// The state directory in effect.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            self.hypervisor_socket
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join("vms")
        })
    }
}

/// Why `kata-sim serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The state directory cannot be used.
    #[error("state dir {}: {reason}", .path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another `kata-sim serve` holds the state directory.
    #[error("state dir {} is in use by another kata-sim serve ({holder}); give each its own --state-dir", .path.display())]
    StateDirInUse {
        /// The directory.
        path: PathBuf,
        /// Who holds it, as far as the lock file says.
        holder: String,
    },
    /// A `--fault` rule did not parse, or the hypervisor socket could not be served.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// The control socket could not be bound.
    #[error("control socket: {0}")]
    Control(BindError),
}

impl From<BindError> for ServeError {
    fn from(e: BindError) -> Self {
        ServeError::Control(e)
    }
}

/// The lock file that marks a state directory as held by a running `kata-sim serve`.
pub const LOCK_FILE: &str = ".kata-sim.lock";
/// The file `Fleet::new` writes to check that the state directory is writable.
const WRITE_PROBE: &str = ".kata-sim-write-test";
/// The prefixes of the temporary directories kata-sim makes in a state directory: guest
/// roots, and the trash their deleted trees wait in.
const OWN_PREFIXES: [&str; 2] = ["kata-sim-guest-", "kata-sim-trash-"];
/// The socket names a VM directory holds (`vm.rs`, by socket kind).
const VM_SOCKETS: [&str; 3] = ["agent.sock", "kata.hvsock", "mock.sock"];

/// A state directory held by this process (see the module docs).
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    created: bool,
    lock: Option<nix::fcntl::Flock<File>>,
}

fn state_err(path: &Path, reason: impl Into<String>) -> ServeError {
    ServeError::StateDir {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (m.dev(), m.ino())
}

impl StateDir {
    /// Creates `path` if it is missing (not its parents: a typo never creates directories
    /// elsewhere), locks it and removes what a previous instance left there.
    pub fn claim(path: &Path) -> Result<StateDir, ServeError> {
        let created = match std::fs::create_dir(path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !path.is_dir() {
                    return Err(state_err(path, "exists and is not a directory"));
                }
                false
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = path.parent().unwrap_or(Path::new("/"));
                return Err(state_err(
                    path,
                    format!(
                        "cannot create: the directory {} does not exist",
                        parent.display()
                    ),
                ));
            }
            Err(e) => return Err(state_err(path, format!("cannot create: {e}"))),
        };
        let canonical = std::fs::canonicalize(path);
        // From here on, a failure removes what was created (Drop).
        let mut dir = StateDir {
            path: path.to_path_buf(),
            created,
            lock: None,
        };
        dir.path = canonical.map_err(|e| state_err(path, e.to_string()))?;
        dir.lock = Some(dir.lock_it()?);
        let removed = dir.sweep();
        if !removed.is_empty() {
            tracing::info!(
                state_dir = %dir.path.display(),
                removed = removed.len(),
                "cleaned up what a previous kata-sim serve left: {}",
                removed.join(", ")
            );
        }
        Ok(dir)
    }

    /// The directory (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_it(&self) -> Result<nix::fcntl::Flock<File>, ServeError> {
        use nix::fcntl::{Flock, FlockArg};
        use std::io::{Read as _, Seek as _, Write as _};
        use std::os::unix::fs::OpenOptionsExt as _;
        let lock_path = self.path.join(LOCK_FILE);
        let err = |e: io::Error| state_err(&self.path, format!("{}: {e}", lock_path.display()));
        for _ in 0..3 {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&lock_path)
                .map_err(err)?;
            let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = match holder.trim() {
                        "" => "a process".to_string(),
                        pid => format!("pid {pid}"),
                    };
                    return Err(ServeError::StateDirInUse {
                        path: self.path.clone(),
                        holder,
                    });
                }
                Err((_, e)) => return Err(err(e.into())),
            };
            // The previous holder may have removed the file between our open and our lock:
            // then the lock is on a file nobody else will find. Lock the one at the path.
            let held = identity(&lock.metadata().map_err(err)?);
            match std::fs::symlink_metadata(&lock_path) {
                Ok(m) if identity(&m) == held => {}
                _ => continue,
            }
            lock.set_len(0).map_err(err)?;
            lock.rewind().map_err(err)?;
            write!(lock, "{}", std::process::id()).map_err(err)?;
            return Ok(lock);
        }
        Err(err(io::Error::other(
            "the lock file keeps changing; is another kata-sim serve starting?",
        )))
    }

    /// Removes the state directory's entries that are recognisably kata-sim's and left over;
    /// returns their names. Called only with the lock held.
    fn sweep(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return removed;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ours = if name == LOCK_FILE {
                false
            } else if name == WRITE_PROBE {
                meta.is_file() && meta.len() == 0
            } else if meta.is_dir() {
                OWN_PREFIXES.iter().any(|p| name.starts_with(p)) || is_stale_vm_dir(&path)
            } else {
                false
            };
            if !ours {
                if name != LOCK_FILE {
                    tracing::debug!(path = %path.display(), "not kata-sim's: left in place");
                }
                continue;
            }
            let r = if meta.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match r {
                Ok(()) => removed.push(name.into_owned()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover")
                }
            }
        }
        removed
    }
}

/// A VM directory a dead instance left: it holds agent sockets, nothing else, and nobody
/// accepts on them.
fn is_stale_vm_dir(dir: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut sockets = 0;
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let Ok(t) = entry.file_type() else {
            return false;
        };
        let name = entry.file_name();
        if !t.is_socket() || !VM_SOCKETS.iter().any(|s| name == **s) {
            return false;
        }
        if sim_agent::server::transport::is_live(&entry.path()) {
            return false;
        }
        sockets += 1;
    }
    sockets > 0
}

impl Drop for StateDir {
    /// Sweeps once more (a guest root whose deletion the shutdown cut short), removes the
    /// lock file and, if this instance created the directory, the directory when it is empty.
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            let removed = self.sweep();
            if !removed.is_empty() {
                tracing::info!(
                    removed = removed.len(),
                    "removed at exit: {}",
                    removed.join(", ")
                );
            }
            let _ = std::fs::remove_file(self.path.join(LOCK_FILE));
            drop(lock);
        }
        if self.created {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// A running `kata-sim serve`: the remote hypervisor, its control socket, its state directory.
#[derive(Debug)]
pub struct Serving {
    server: RemoteHypervisorServer,
    control: Option<ControlServer>,
    state: StateDir,
}

impl Serving {
    /// The fleet served.
    pub fn fleet(&self) -> &Arc<Fleet> {
        self.server.fleet()
    }

    /// The state directory (absolute).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Stops serving: the control socket, then the hypervisor and every VM. Returns the state
    /// directory, released when dropped: drop it once the tokio runtime is gone, so that no
    /// deletion it started is still running.
    pub async fn shutdown(self) -> StateDir {
        drop(self.control);
        self.server.shutdown().await;
        self.state
    }
}

/// Claims the state directory and binds the remote hypervisor (and control socket) described
/// by `opts`. A failure removes whatever it created.
pub async fn start(opts: &ServeOptions) -> Result<Serving, ServeError> {
    let state = StateDir::claim(&opts.state_dir())?;
    let mut config = FleetConfig::new(state.path());
    let mut agent = SimConfig::for_version(opts.agent_version);
    agent.seed = opts.seed;
    // Guest roots in the state directory: found again (and removed) after a crash.
    agent.temp_dir = Some(state.path().to_path_buf());
    config.vm = SimVmConfig {
        boot_time: opts.boot_time,
        agent,
        // A VM can live for hours (a runtime polling ReadStdout): keep its recent calls only.
        trace_limit: Some(sim_agent::trace::SERVER_TRACE_LIMIT),
        ..Default::default()
    };
    config.faults = FaultEngine::bounded(opts.seed, sim_agent::trace::SERVER_TRACE_LIMIT);
    for rule in &opts.faults {
        config
            .faults
            .add(rule)
            .map_err(|e| HypervisorError::Invalid(format!("--fault {rule:?}: {e}")))?;
    }
    let fleet = Arc::new(Fleet::new(config)?);
    let server = RemoteHypervisorServer::bind(&opts.hypervisor_socket, fleet).await?;
    let control = match &opts.control {
        None => None,
        Some(path) => match sim_agent::fault::control::serve(path, server.fleet().faults().clone())
        {
            Ok(c) => Some(c),
            Err(e) => {
                server.shutdown().await;
                return Err(e.into());
            }
        },
    };
    Ok(Serving {
        server,
        control,
        state,
    })
}
