//! Starting and cleaning up a shim binary the way containerd 1.6 does.
//!
//! `SHIM -namespace NS -address ADDR -publish-binary BIN -id ID [-debug] start`, run in the
//! bundle with `TTRPC_ADDRESS` (the events socket) in its environment, stdin at its end,
//! prints the task service's address (`unix:///run/containerd/s/<hash>`) and exits; the shim
//! it forked serves there. For a container whose `sandbox-id` names a running sandbox it
//! prints the sandbox shim's address and starts nothing. `... -bundle DIR delete` cleans up
//! after a shim that died and prints a `DeleteResponse`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::Message;
use tokio::io::AsyncReadExt;

/// How a shim identified itself (`--version`, `-v`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavor {
    /// The Kata Go shim (virtcontainers), with its version.
    KataGo(String),
    /// runtime-rs, with its version.
    KataRs(String),
    /// containerd's runc shim (`containerd-shim-runc-v2`), with its version.
    Runc(String),
    /// Anything else: driven as a plain shim (no Kata configuration, no kata-sim service).
    Other,
}

impl Flavor {
    /// Whether it is a Kata shim (it needs kata-sim's hypervisor service and a configuration).
    pub fn is_kata(&self) -> bool {
        matches!(self, Flavor::KataGo(_) | Flavor::KataRs(_))
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flavor::KataGo(v) => write!(f, "Kata Go shim {v}"),
            Flavor::KataRs(v) => write!(f, "runtime-rs {v}"),
            Flavor::Runc(v) => write!(f, "containerd-shim-runc-v2 {v}"),
            Flavor::Other => f.write_str("a shim v2"),
        }
    }
}

/// A failure to start or clean up a shim.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The binary could not be run.
    #[error("cannot run {path}: {source}")]
    Spawn {
        /// The binary.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `start` did not finish in time.
    #[error("{path} start printed no address within {secs} s (killed)")]
    Timeout {
        /// The binary.
        path: String,
        /// The limit.
        secs: f64,
    },
    /// `start` failed.
    #[error("{path} start failed ({status}): {output}")]
    Failed {
        /// The binary.
        path: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        output: String,
    },
    /// `start` exited without an address.
    #[error("{path} start exited without printing an address{output}")]
    NoAddress {
        /// The binary.
        path: String,
        /// What it printed on stderr, if anything (`: ...`).
        output: String,
    },
}

/// How to run one shim binary for one run (the same flags for every container of the pod, so
/// that a container's `start` finds its sandbox's shim).
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The shim binary.
    pub binary: PathBuf,
    /// The containerd namespace.
    pub namespace: String,
    /// containerd's gRPC address (only hashed into the shim's socket name).
    pub address: PathBuf,
    /// The events socket (`TTRPC_ADDRESS`).
    pub ttrpc_address: PathBuf,
    /// Extra environment for the shim.
    pub env: Vec<(String, String)>,
    /// Whether to pass `-debug`.
    pub debug: bool,
    /// How long `start` may take.
    pub start_limit: Duration,
    /// Runs the shim in a namespace where its syslog and journal are kata-sim's, if set.
    pub capture: Option<std::sync::Arc<super::logs::Capture>>,
}

impl Launcher {
    fn command(&self, id: &str, bundle: &Path) -> tokio::process::Command {
        let mut cmd = match &self.capture {
            Some(c) => c.command(&self.binary),
            None => tokio::process::Command::new(&self.binary),
        };
        let publish = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("kata-sim"));
        cmd.arg("-namespace")
            .arg(&self.namespace)
            .arg("-address")
            .arg(&self.address)
            .arg("-publish-binary")
            .arg(publish)
            .arg("-id")
            .arg(id);
        if self.debug {
            cmd.arg("-debug");
        }
        cmd.current_dir(bundle)
            .env("TTRPC_ADDRESS", &self.ttrpc_address)
            .env("GOMAXPROCS", "2")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// Runs `start` for task `id` in `bundle`; returns the address it printed.
    pub async fn start(&self, id: &str, bundle: &Path) -> Result<String, LaunchError> {
        let path = self.binary.display().to_string();
        let mut cmd = self.command(id, bundle);
        cmd.arg("start");
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            path: path.clone(),
            source,
        })?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let run = async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let read_out = async {
                if let Some(s) = stdout.as_mut() {
                    let _ = s.read_to_end(&mut out).await;
                }
            };
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.read_to_end(&mut err).await;
                }
            };
            tokio::join!(read_out, read_err);
            let status = child.wait().await;
            (status, out, err)
        };
        let (status, out, err) =
            tokio::time::timeout(self.start_limit, run)
                .await
                .map_err(|_| LaunchError::Timeout {
                    path: path.clone(),
                    secs: self.start_limit.as_secs_f64(),
                })?;
        let status = status.map_err(|source| LaunchError::Spawn {
            path: path.clone(),
            source,
        })?;
        let out = String::from_utf8_lossy(&out).trim().to_string();
        let err = String::from_utf8_lossy(&err).trim().to_string();
        if !status.success() {
            return Err(LaunchError::Failed {
                path,
                status,
                output: [out, err]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        if out.is_empty() {
            return Err(LaunchError::NoAddress {
                path,
                output: if err.is_empty() {
                    String::new()
                } else {
                    format!(": {err}")
                },
            });
        }
        Ok(out)
    }

    /// Runs `delete` for task `id` (after its shim died); its `DeleteResponse`, if it printed
    /// one.
    pub async fn delete(&self, id: &str, bundle: &Path) -> Result<api::DeleteResponse, String> {
        let mut cmd = self.command(id, bundle);
        cmd.arg("-bundle").arg(bundle).arg("delete");
        let out = tokio::time::timeout(Duration::from_secs(5), cmd.output())
            .await
            .map_err(|_| "delete did not finish within 5 s".to_string())?
            .map_err(|e| format!("delete: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "delete failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        api::DeleteResponse::parse_from_bytes(&out.stdout).map_err(|e| format!("delete: {e}"))
    }
}

/// Asks `binary` what it is: Kata shims answer `--version`, containerd's shims `-v`.
pub async fn identify(binary: &Path) -> Flavor {
    async fn ask(binary: &Path, arg: &str) -> String {
        let run = tokio::process::Command::new(binary)
            .arg(arg)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(5), run).await {
            Ok(Ok(o)) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            _ => String::new(),
        }
    }
    let version = |text: &str, key: &str| -> String {
        text.split(key)
            .nth(1)
            .and_then(|rest| {
                rest.trim_start_matches([':', ' '])
                    .split([',', '\n', ' '])
                    .find(|w| !w.is_empty())
            })
            .unwrap_or("?")
            .trim_matches('"')
            .to_string()
    };
    let kata = ask(binary, "--version").await;
    if kata.contains("containerd shim (Golang)") {
        return Flavor::KataGo(version(&kata, "version"));
    }
    if kata.contains("containerd shim (Rust)") {
        return Flavor::KataRs(version(&kata, "version"));
    }
    let containerd = ask(binary, "-v").await;
    if containerd.contains("containerd-shim-runc-v2") {
        return Flavor::Runc(version(&containerd, "Version"));
    }
    Flavor::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_start_that_prints_nothing_is_an_error_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("shim");
        std::fs::write(&shim, "#!/bin/sh\necho 'no address for you' >&2\n").unwrap();
        std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let l = Launcher {
            binary: shim.clone(),
            namespace: "ns".into(),
            address: dir.path().join("c.sock"),
            ttrpc_address: dir.path().join("e.sock"),
            env: Vec::new(),
            debug: false,
            start_limit: Duration::from_secs(30),
            capture: None,
        };
        let e = l.start("c1", dir.path()).await.unwrap_err();
        assert!(matches!(e, LaunchError::NoAddress { .. }), "{e}");
        assert!(e.to_string().ends_with(": no address for you"), "{e}");
        assert_eq!(identify(&shim).await, Flavor::Other);
    }
}
