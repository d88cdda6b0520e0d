//! The shims' own logs, captured: the Go shim logs to syslog (`/dev/log`, and will not load
//! its configuration without a listener there), runtime-rs to journald
//! (`/run/systemd/journal/socket`). The driver serves both as datagram sockets of its own and
//! runs the shim in a private mount namespace (util-linux `unshare`) where those paths are
//! kata-sim's: nothing on the host changes, and the host's syslog and journal get none of it.
//!
//! In that namespace `/dev/log` is a bind mount of kata-sim's socket when the host has one,
//! and otherwise a link to it in an overlay of `/dev` (one per shim process started) (its mounts, `pts`, `shm`, `mqueue`,
//! bound back); the journal socket is bound over the host's, or, on a host without a journal,
//! linked in a private tmpfs on `/run/systemd` (a host without `/run/systemd` at all loses
//! runtime-rs's log: runtime-rs does not mind).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::UnixDatagram;
use tokio::task::JoinHandle;

use crate::record::{Level, Warning};

/// The namespace set-up, run by `sh` under `unshare --mount --propagation private`: `$1` is
/// the run's log directory, the rest the shim's command line.
const SETUP: &str = r#"set -e
d="$1"; shift
if [ -e /dev/log ] || [ -L /dev/log ]; then
  mount --bind "$d/syslog.sock" /dev/log
else
  o=$(mktemp -d "$d/dev.XXXXXX")
  mkdir "$o/lower" "$o/upper" "$o/work"
  mount --rbind /dev "$o/lower"
  mount -t overlay overlay -o "lowerdir=$o/lower,upperdir=$o/upper,workdir=$o/work" /dev
  for m in pts shm mqueue hugepages; do
    if [ -d "$o/lower/$m" ]; then mount --rbind "$o/lower/$m" "/dev/$m"; fi
  done
  ln -s "$d/syslog.sock" /dev/log
fi
if [ -S /run/systemd/journal/socket ]; then
  mount --bind "$d/journal.sock" /run/systemd/journal/socket
elif [ -d /run/systemd ]; then
  mount -t tmpfs -o mode=0755 tmpfs /run/systemd
  mkdir /run/systemd/journal
  ln -s "$d/journal.sock" /run/systemd/journal/socket
fi
exec "$@"
"#;

/// The `unshare` that makes the namespace.
pub const UNSHARE: &str = "/usr/bin/unshare";

/// One datagram socket and what it received.
struct Sink {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
    socket: Arc<UnixDatagram>,
}

impl Sink {
    fn bind(path: &Path) -> std::io::Result<Self> {
        let socket = Arc::new(UnixDatagram::bind(path)?);
        let got = Arc::<Mutex<Vec<Vec<u8>>>>::default();
        let (s, g) = (socket.clone(), got.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = s.recv(&mut buf).await {
                let mut g = g.lock().unwrap_or_else(|p| p.into_inner());
                // Bounded: the shims log little at their default levels.
                if g.len() < 100_000 {
                    g.push(buf[..n].to_vec());
                }
            }
        });
        Ok(Sink { got, task, socket })
    }

    fn finish(&self) -> Vec<Vec<u8>> {
        self.task.abort();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = std::mem::take(&mut *self.got.lock().unwrap_or_else(|p| p.into_inner()));
        while let Ok(n) = self.socket.try_recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }
}

/// kata-sim's syslog and journald sockets for one run.
pub struct Capture {
    dir: PathBuf,
    syslog: Sink,
    journal: Sink,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("dir", &self.dir).finish()
    }
}

impl Capture {
    /// Binds both sockets in `dir` (made if missing). Call it on a tokio runtime.
    pub fn bind(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Capture {
            dir: dir.to_path_buf(),
            syslog: Sink::bind(&dir.join("syslog.sock"))?,
            journal: Sink::bind(&dir.join("journal.sock"))?,
        })
    }

    /// The command that runs `binary` in the capturing namespace, its arguments to follow.
    pub fn command(&self, binary: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(UNSHARE);
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            SETUP,
            "sh",
        ])
        .arg(&self.dir)
        .arg(binary);
        cmd
    }

    /// What the shims logged, as warnings (warning level or worse), in order of arrival:
    /// syslog's first, then the journal's.
    pub fn finish(&self) -> Vec<Warning> {
        let mut out = Vec::new();
        for d in self.syslog.finish() {
            let line = String::from_utf8_lossy(&d);
            if let Some(w) = super::log_warning(line.trim_end()) {
                out.push(w);
            }
        }
        for d in self.journal.finish() {
            if let Some(w) = journal_warning(&d) {
                out.push(w);
            }
        }
        out
    }
}

/// A journald native-protocol datagram (`KEY=value` lines; a value with a newline as `KEY`,
/// a 64-bit little-endian length and the bytes) at warning priority or worse, as a warning.
pub fn journal_warning(d: &[u8]) -> Option<Warning> {
    let mut priority = None;
    let mut message = None;
    let mut rest = d;
    while !rest.is_empty() {
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let line = &rest[..end];
        let (key, value, next) = match line.iter().position(|b| *b == b'=') {
            Some(eq) => (
                &line[..eq],
                line[eq + 1..].to_vec(),
                (end + 1).min(rest.len()),
            ),
            None => {
                let after = rest.get(end + 1..end + 9)?;
                let len = usize::try_from(u64::from_le_bytes(after.try_into().ok()?)).ok()?;
                let start = end + 9;
                let value = rest.get(start..start + len)?.to_vec();
                (line, value, (start + len + 1).min(rest.len()))
            }
        };
        match key {
            b"PRIORITY" => priority = String::from_utf8_lossy(&value).trim().parse::<u8>().ok(),
            b"MESSAGE" => message = Some(String::from_utf8_lossy(&value).into_owned()),
            _ => {}
        }
        rest = &rest[next..];
    }
    let level = match priority? {
        0..=3 => Level::Error,
        4 => Level::Warning,
        _ => return None,
    };
    Some(Warning::new(level, message?, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_records_at_warning_or_worse_are_warnings() {
        let w = journal_warning(b"PRIORITY=4\nMESSAGE=StopVM RPC failed\nCODE_LINE=9\n").unwrap();
        assert_eq!(
            (w.level, w.message.as_str()),
            (Level::Warning, "StopVM RPC failed")
        );
        assert!(journal_warning(b"PRIORITY=6\nMESSAGE=start wait process\n").is_none());
        let mut binary = b"PRIORITY=3\nMESSAGE\n".to_vec();
        binary.extend_from_slice(&7u64.to_le_bytes());
        binary.extend_from_slice(b"two\nrow\n");
        let w = journal_warning(&binary).unwrap();
        assert_eq!((w.level, w.message.as_str()), (Level::Error, "two\nrow"));
        assert!(journal_warning(b"MESSAGE\n\x05").is_none());
    }
}
