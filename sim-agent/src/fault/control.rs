//! The fault control socket: a running server's rules, changed from outside
//! (`kata-sim fault add|list|remove|clear --control PATH`), so a test that drives a real runtime
//! can flip faults mid-run.
//!
//! The protocol is one request line, answered by lines ending with `ok` or `error MESSAGE`:
//!
//! | request | answer |
//! |---|---|
//! | `add RULE` | `ok ID` |
//! | `remove ID` | `ok` |
//! | `list` | `rule ID TEXT` per rule, then `ok` |
//! | `clear` | `ok` |
//! | `fired` | `fired RULE TARGET ACTION` per fault so far, then `ok` |

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::FaultEngine;

/// A control socket being served; removes its socket file when dropped.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answers one request line.
pub fn handle(engine: &FaultEngine, line: &str) -> Vec<String> {
    let line = line.trim();
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    match cmd {
        "add" => match engine.add(arg.trim()) {
            Ok(id) => vec![format!("ok {id}")],
            Err(e) => vec![format!(
                "error {}",
                e.to_string().lines().next().unwrap_or_default()
            )],
        },
        "remove" => match arg.trim().parse::<u64>() {
            Ok(id) if engine.remove(id) => vec!["ok".into()],
            Ok(id) => vec![format!("error no rule {id}")],
            Err(_) => vec![format!("error {arg:?} is not a rule id")],
        },
        "list" => {
            let mut out: Vec<String> = engine
                .list()
                .into_iter()
                .map(|(id, text)| format!("rule {id} {text}"))
                .collect();
            out.push("ok".into());
            out
        }
        "clear" => {
            engine.clear();
            vec!["ok".into()]
        }
        "fired" => {
            let mut out: Vec<String> = engine
                .fired()
                .into_iter()
                .map(|f| format!("fired {} {} {}", f.rule, f.target, f.action))
                .collect();
            out.push("ok".into());
            out
        }
        other => vec![format!(
            "error unknown command {other:?}: expected add, remove, list, clear or fired"
        )],
    }
}

/// Serves `engine` on a unix socket at `path` (a stale file there is replaced).
pub fn serve(path: &Path, engine: FaultEngine) -> std::io::Result<ControlServer> {
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let engine = engine.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut out = handle(&engine, &line).join("\n");
                    out.push('\n');
                    if w.write_all(out.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(ControlServer {
        path: path.to_path_buf(),
        task,
    })
}

/// Sends one request to a control socket; returns the answer lines (the last is `ok ...`),
/// or the server's error message.
pub async fn request(path: &Path, line: &str) -> Result<Vec<String>, String> {
    let conn = UnixStream::connect(path)
        .await
        .map_err(|e| format!("cannot reach the control socket {}: {e}", path.display()))?;
    let (r, mut w) = conn.into_split();
    w.write_all(format!("{}\n", line.trim()).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(r).lines();
    let mut out = Vec::new();
    while let Some(l) = lines.next_line().await.map_err(|e| e.to_string())? {
        if let Some(msg) = l.strip_prefix("error ") {
            return Err(msg.to_string());
        }
        let last = l == "ok" || l.starts_with("ok ");
        out.push(l);
        if last {
            return Ok(out);
        }
    }
    Err("the control socket closed without an answer".into())
}
