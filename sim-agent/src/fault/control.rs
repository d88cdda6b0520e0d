//! The fault control socket: a running server's rules, changed from outside
//! (`kata-sim fault add|list|remove|clear|fired --control PATH`), so a test that drives a real
//! runtime can flip faults mid-run.
//!
//! The protocol is framed: each request is one JSON object on one line (at most
//! [`MAX_REQUEST`] bytes with its newline), and each answer is one JSON object on one line.
//! A rule travels as a JSON string, so no byte of it can start another request; control
//! characters in a rule are refused. A longer request is answered with an error and the
//! connection closes.
//!
//! | request | answer |
//! |---|---|
//! | `{"op":"add","rule":"Check=hang"}` | `{"answer":"added","id":1}` |
//! | `{"op":"remove","id":1}` | `{"answer":"removed","id":1}` |
//! | `{"op":"list"}` | `{"answer":"rules","rules":[{"id":1,"rule":"Check=hang"}]}` |
//! | `{"op":"clear"}` | `{"answer":"cleared"}` |
//! | `{"op":"fired"}` | `{"answer":"fired","fired":[{"rule":1,"target":"Check","action":"hang"}]}` |
//! | anything wrong | `{"answer":"error","message":"..."}` |
//!
//! The socket file is made by [`crate::server::transport::bind_unix`] (0600 whatever the umask;
//! only a stale socket is replaced). The client, [`request`], gives up after
//! [`REQUEST_TIMEOUT`] with a message saying the path may not be a control socket, instead of
//! waiting forever on a socket that speaks another protocol.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use super::FaultEngine;
use super::engine::RuleId;
use crate::server::transport::{BindError, SocketFile, bind_unix};

/// The longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The longest answer line [`request`] reads (a `fired` list can be long).
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// How long [`request`] waits for the whole exchange (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a control connection may stay silent before the server closes it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How many control connections are served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 16;

/// How long the accept loop pauses after a failed accept (such as no file descriptor left).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Install a rule (in the fault language of `docs/faults.md`).
    Add {
        /// The rule text.
        rule: String,
    },
    /// Remove a rule by id.
    Remove {
        /// The rule's id.
        id: RuleId,
    },
    /// List the installed rules.
    List,
    /// Remove every rule.
    Clear,
    /// List the faults that fired so far.
    Fired,
}

/// An installed rule, as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEntry {
    /// Its id.
    pub id: RuleId,
    /// Its text.
    pub rule: String,
}

/// A fault that fired, as `fired` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiredEntry {
    /// The rule that fired.
    pub rule: RuleId,
    /// The call's target.
    pub target: String,
    /// The action, as text.
    pub action: String,
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Response {
    /// `add`: the new rule's id.
    Added {
        /// The id.
        id: RuleId,
    },
    /// `remove`: the rule is gone.
    Removed {
        /// The id.
        id: RuleId,
    },
    /// `list`: the rules in the order they are consulted.
    Rules {
        /// The rules.
        rules: Vec<RuleEntry>,
    },
    /// `clear`: no rule is left.
    Cleared,
    /// `fired`: the faults so far, oldest first.
    Fired {
        /// The faults.
        fired: Vec<FiredEntry>,
        /// Older faults that fired but are no longer kept (a server keeps the most recent).
        #[serde(default, skip_serializing_if = "is_zero")]
        dropped: u64,
    },
    /// The request was refused.
    Error {
        /// Why.
        message: String,
    },
}

fn error(message: impl Into<String>) -> Response {
    Response::Error {
        message: message.into(),
    }
}

/// Answers one request.
pub fn handle(engine: &FaultEngine, request: &Request) -> Response {
    match request {
        Request::Add { rule } => {
            if let Some((column, c)) = rule.chars().enumerate().find(|(_, c)| c.is_control()) {
                return error(format!(
                    "column {}: control character {c:?} in the rule: a rule is one line of printable text",
                    column + 1
                ));
            }
            match engine.add(rule.trim()) {
                Ok(id) => Response::Added { id },
                Err(e) => error(e.to_string()),
            }
        }
        Request::Remove { id } if engine.remove(*id) => Response::Removed { id: *id },
        Request::Remove { id } => error(format!("no rule {id}")),
        Request::List => Response::Rules {
            rules: engine
                .list()
                .into_iter()
                .map(|(id, rule)| RuleEntry { id, rule })
                .collect(),
        },
        Request::Clear => {
            engine.clear();
            Response::Cleared
        }
        Request::Fired => Response::Fired {
            fired: engine
                .fired()
                .into_iter()
                .map(|f| FiredEntry {
                    rule: f.rule,
                    target: f.target,
                    action: f.action,
                })
                .collect(),
            dropped: engine.fired_dropped(),
        },
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Answers one request line (without its newline): JSON in, [`Response`] out.
pub fn handle_line(engine: &FaultEngine, line: &[u8]) -> Response {
    match serde_json::from_slice::<Request>(line) {
        Ok(request) => handle(engine, &request),
        Err(e) => error(format!(
            "not a control request ({e}): expected one JSON object per line, such as {{\"op\":\"list\"}}; ops: add, remove, list, clear, fired"
        )),
    }
}

/// A control socket being served; stops and removes its socket file when dropped.
#[derive(Debug)]
pub struct ControlServer {
    task: tokio::task::JoinHandle<()>,
    file: SocketFile,
}

impl ControlServer {
    /// The socket path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        // The connections are in the task's JoinSet: they go with it. The socket file goes
        // with `file`, if it is still the one bound here.
        self.task.abort();
    }
}

/// Serves `engine` on a unix socket at `path` (see [`bind_unix`]: 0600, only a stale socket
/// replaced). Must be called inside a tokio runtime.
pub fn serve(path: &Path, engine: FaultEngine) -> Result<ControlServer, BindError> {
    let (std, file) = bind_unix(path)?;
    let listener = UnixListener::from_std(std).map_err(|source| BindError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::info!(path = %path.display(), "fault control socket listening");
    let task = tokio::spawn(accept_loop(listener, engine));
    Ok(ControlServer { task, file })
}

async fn accept_loop(listener: UnixListener, engine: FaultEngine) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    let engine = engine.clone();
                    conns.spawn(async move {
                        serve_connection(&engine, conn).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// Reads one line of at most `limit` bytes (newline included), without it. `Ok(None)`: the
/// peer closed before sending anything; `Err(n)`: the line is longer than `limit` (`n` bytes
/// of it were read, no more).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> std::io::Result<Result<Option<Vec<u8>>, usize>> {
    let mut line = Vec::new();
    (&mut *r)
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if line.is_empty() {
        return Ok(Ok(None));
    }
    if line.len() > limit {
        return Ok(Err(line.len()));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(Ok(Some(line)))
}

async fn serve_connection(engine: &FaultEngine, conn: UnixStream) {
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    loop {
        let line = match tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut r, MAX_REQUEST)).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(Ok(None))) => return,
            Ok(Ok(Ok(Some(line)))) => line,
            Ok(Ok(Err(_))) => {
                let answer = error(format!(
                    "request longer than {MAX_REQUEST} bytes: one request is one JSON line of at most {MAX_REQUEST} bytes"
                ));
                let _ = write_answer(&mut w, &answer).await;
                // The rest of that line cannot be told from a next request: close.
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let answer = handle_line(engine, &line);
        if write_answer(&mut w, &answer).await.is_err() {
            return;
        }
    }
}

async fn write_answer<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    answer: &Response,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing to connect to.
    #[error("cannot reach the control socket {}: {source}", .path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("{} did not answer within {} s: is it a fault control socket (the --control PATH of kata-sim serve or sim-agent serve)?", .path.display(), .timeout.as_secs_f64())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The peer answered something else, or hung up.
    #[error("{} is not a fault control socket ({reason})", .path.display())]
    NotControl {
        /// The socket path.
        path: PathBuf,
        /// What it did instead.
        reason: String,
    },
    /// The server refused the request (a bad rule, an unknown id).
    #[error("{0}")]
    Refused(String),
}

/// Sends one request to the control socket at `path` and returns its answer (never
/// [`Response::Error`]: that is [`ControlError::Refused`]); gives up after
/// [`REQUEST_TIMEOUT`].
pub async fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    request_within(path, req, REQUEST_TIMEOUT).await
}

/// [`request`] with another time limit.
pub async fn request_within(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    match tokio::time::timeout(timeout, exchange(path, req)).await {
        Ok(Ok(Response::Error { message })) => Err(ControlError::Refused(message)),
        Ok(r) => r,
        Err(_) => Err(ControlError::Timeout {
            path: path.to_path_buf(),
            timeout,
        }),
    }
}

async fn exchange(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let not_control = |reason: String| ControlError::NotControl {
        path: path.to_path_buf(),
        reason,
    };
    let conn = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let (r, mut w) = conn.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Refused(e.to_string()))?;
    line.push(b'\n');
    if line.len() > MAX_REQUEST {
        return Err(ControlError::Refused(format!(
            "the request is {} bytes; a control request is at most {MAX_REQUEST}",
            line.len()
        )));
    }
    w.write_all(&line)
        .await
        .map_err(|e| not_control(format!("sending the request failed: {e}")))?;
    let mut r = BufReader::new(r);
    match read_line(&mut r, MAX_ANSWER).await {
        Err(e) => Err(not_control(format!("reading the answer failed: {e}"))),
        Ok(Ok(None)) => Err(not_control(
            "it closed the connection without an answer".into(),
        )),
        Ok(Err(n)) => Err(not_control(format!(
            "its answer is longer than {MAX_ANSWER} bytes ({n} read)"
        ))),
        Ok(Ok(Some(answer))) => serde_json::from_slice(&answer)
            .map_err(|e| not_control(format!("its answer is not a control answer: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_are_one_json_line_each() {
        let req = Request::Add {
            rule: "Check=hang\nclear".into(),
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(line, r#"{"op":"add","rule":"Check=hang\nclear"}"#);
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
        let ans = serde_json::to_string(&Response::Rules {
            rules: vec![RuleEntry {
                id: 1,
                rule: "Check=hang".into(),
            }],
        })
        .unwrap();
        assert_eq!(
            ans,
            r#"{"answer":"rules","rules":[{"id":1,"rule":"Check=hang"}]}"#
        );
    }

    #[test]
    fn fired_says_how_many_older_faults_a_bounded_engine_dropped() {
        use crate::fault::FaultHook as _;
        let engine = FaultEngine::bounded(0, 2);
        engine.add("Check=error(INTERNAL)").unwrap();
        for _ in 0..5 {
            engine.decide(&crate::fault::CallInfo {
                target: "Check",
                request: "CheckRequest",
                fields: &[],
                conn: None,
                sandbox: None,
            });
        }
        let r = handle(&engine, &Request::Fired);
        assert!(
            matches!(&r, Response::Fired { fired, dropped: 3 } if fired.len() == 2),
            "{r:?}"
        );
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains(r#""dropped":3"#), "{line}");
    }

    #[test]
    fn an_unknown_filter_key_is_refused_with_the_nearest() {
        let engine = FaultEngine::new(0);
        let r = handle(
            &engine,
            &Request::Add {
                rule: "WaitProcess{container=c2}=hang".into(),
            },
        );
        assert!(
            matches!(&r, Response::Error { message } if message.starts_with(r#"column 13: unknown filter key "container" for WaitProcess: did you mean "container_id"?"#)),
            "{r:?}"
        );
        assert!(engine.list().is_empty());
    }

    #[test]
    fn a_newline_in_a_rule_is_refused_and_runs_nothing_else() {
        let engine = FaultEngine::new(0);
        engine.add("Check=error(INTERNAL)").unwrap();
        let r = handle(
            &engine,
            &Request::Add {
                rule: "Check=hang\nclear".into(),
            },
        );
        assert!(
            matches!(&r, Response::Error { message } if message.contains("column 11") && message.contains("control character")),
            "{r:?}"
        );
        assert_eq!(engine.list().len(), 1, "the rules are untouched");
    }

    #[test]
    fn bad_lines_are_answered_with_errors() {
        let engine = FaultEngine::new(0);
        for bad in [
            &b"add Check=hang"[..],
            b"{\"op\":\"explode\"}",
            b"{\"op\":\"remove\",\"id\":\"x\"}",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(handle_line(&engine, bad), Response::Error { .. }),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            handle_line(&engine, b"{\"op\":\"remove\",\"id\":7}"),
            error("no rule 7")
        );
    }
}
