//! [`AgentServer`]: serves a [`SimAgent`] over ttrpc on the Kata transports.
//!
//! Each accepted connection (after the hybrid-vsock handshake where there is one) is one task
//! that reads ttrpc frames, runs each call and writes its answer. A call that answers without
//! waiting (most do) runs right in that task; one that has to wait (ReadStdout, WaitProcess,
//! GetOOMEvent, a delay fault) moves to a task of its own and sends its answer back, so
//! blocking calls on one connection do not hold up the others. A malformed frame is answered
//! or closes only its own connection. When the client goes away its pending calls are
//! cancelled, so nothing leaks.

mod frame;
mod service;
pub mod transport;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use ttrpc::Code;

use std::cell::Cell;

use crate::fault::{TRANSPORT, TransportFault};
use crate::sim::SimAgent;
use frame::{Frame, FrameError, FrameReader, response_frame};
use transport::{AGENT_PORT, Bound, LOG_PORT, accept_handshake, bind};
pub use transport::{AgentAddr, BoxConn};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address did not parse.
    #[error(transparent)]
    Addr(#[from] transport::AddrError),
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// How long a connection waits for its in-flight calls to answer once the agent ended its
/// service (DestroySandbox), before it closes anyway.
const TERMINATION_GRACE: Duration = Duration::from_secs(1);

/// How long a connection stays open after its last answer once the agent ended its service,
/// unless the peer hangs up first. The real agent exits a fraction of a millisecond after its
/// DestroySandbox reply; closing in the same instant instead loses that reply in ttrpc-rust
/// 0.9's client (runtime-rs), whose reader fails every pending call on EOF before a task it
/// spawned has delivered the answer that arrived just before.
const TERMINATION_LINGER: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct Shared {
    next_conn: AtomicU64,
    conns: Mutex<BTreeMap<u64, watch::Sender<bool>>>,
    /// Signalled whenever a connection closes.
    closed: tokio::sync::Notify,
}

/// A running sim-agent server.
#[derive(Debug)]
pub struct AgentServer {
    agent: SimAgent,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    addrs: Vec<AgentAddr>,
    /// Socket files this server created, with their (device, inode): on shutdown a file is
    /// removed only if it is still the one it bound (a newer server may own the path now).
    files: Vec<(PathBuf, (u64, u64))>,
}

fn file_identity(p: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl AgentServer {
    /// Binds every URL and starts serving `agent` on them.
    pub async fn bind(agent: SimAgent, urls: &[impl AsRef<str>]) -> Result<Self, ServerError> {
        let mut server = AgentServer::new(agent);
        for url in urls {
            let bound = match url.as_ref().parse::<AgentAddr>() {
                Err(e) => Err(ServerError::from(e)),
                Ok(addr) => match bind(&addr).await {
                    Ok(bound) => Ok((addr, bound)),
                    Err(source) => Err(ServerError::Bind {
                        addr: addr.to_string(),
                        source,
                    }),
                },
            };
            match bound {
                Ok((addr, bound)) => server.spawn_accept(addr, bound),
                Err(e) => {
                    // A failed start leaves nothing bound: the listeners bound so far close and
                    // their socket files go.
                    server.shutdown().await;
                    return Err(e);
                }
            }
        }
        Ok(server)
    }

    /// A server with no listener yet; feed it with [`AgentServer::serve_connection`].
    pub fn new(agent: SimAgent) -> Self {
        AgentServer {
            agent,
            shared: Arc::default(),
            shutdown: watch::channel(false).0,
            tasks: JoinSet::new(),
            addrs: Vec::new(),
            files: Vec::new(),
        }
    }

    /// The agent being served.
    pub fn agent(&self) -> &SimAgent {
        &self.agent
    }

    /// The addresses it listens on.
    pub fn addrs(&self) -> &[AgentAddr] {
        &self.addrs
    }

    /// Serves one already-connected stream (for example one end of `tokio::io::duplex`).
    pub fn serve_connection(&mut self, conn: BoxConn) {
        let ctx = self.conn_ctx();
        self.tasks.spawn(run_connection(ctx, conn));
    }

    /// Closes every open connection (new ones are still accepted).
    pub fn close_connections(&self) {
        for tx in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = tx.send(true);
        }
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Waits until every connection has closed by itself (after `DestroySandbox` each one
    /// answers its calls in flight, then closes), or until `limit` passes.
    pub async fn drain(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let closed = self.shared.closed.notified();
                tokio::pin!(closed);
                closed.as_mut().enable();
                if self.connection_count() == 0 {
                    return;
                }
                closed.await;
            }
        })
        .await;
    }

    /// Stops accepting, closes every connection, waits for their tasks and removes the
    /// socket files.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        for (path, identity) in &self.files {
            if file_identity(path) == Some(*identity) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn conn_ctx(&self) -> ConnCtx {
        ConnCtx {
            agent: self.agent.clone(),
            shared: Arc::clone(&self.shared),
            shutdown: self.shutdown.subscribe(),
        }
    }

    fn spawn_accept(&mut self, addr: AgentAddr, mut bound: Bound) {
        let hybrid = matches!(addr, AgentAddr::HybridVsock { .. });
        let ctx = self.conn_ctx();
        let mut shutdown = self.shutdown.subscribe();
        tracing::info!(%addr, "listening");
        if let Some(p) = addr.socket_file()
            && let Some(id) = file_identity(p)
        {
            self.files.push((p.to_path_buf(), id));
        }
        self.addrs.push(addr.clone());
        self.tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    accepted = bound.accept() => match accepted {
                        Ok(conn) if ctx.agent.is_terminated() || ctx.agent.is_dead() => {
                            // The agent process has exited (or its VM died): nothing serves
                            // this connection.
                            drop(conn);
                        }
                        Ok(conn) if hybrid => { conns.spawn(hybrid_connection(ctx.clone(), conn)); }
                        Ok(conn) => { conns.spawn(run_connection(ctx.clone(), conn)); }
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, "accept failed");
                            tokio::task::yield_now().await;
                        }
                    }
                }
            }
            conns.shutdown().await;
        });
    }
}

#[derive(Clone)]
struct ConnCtx {
    agent: SimAgent,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
}

async fn hybrid_connection(ctx: ConnCtx, mut conn: BoxConn) {
    match accept_handshake(&mut conn).await {
        Ok(AGENT_PORT) => run_connection(ctx, conn).await,
        Ok(LOG_PORT) => {
            tracing::debug!("log forwarder connected on port {LOG_PORT}");
            // runtime-rs's log forwarder only reads; keep it open, silent, until it closes.
            let mut shutdown = ctx.shutdown.clone();
            let mut sink = [0u8; 512];
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    n = tokio::io::AsyncReadExt::read(&mut conn, &mut sink) => {
                        if !matches!(n, Ok(n) if n > 0) { break; }
                    }
                }
            }
        }
        Ok(port) => tracing::warn!(port, "hybrid vsock connection to a port nobody serves"),
        Err(e) => tracing::warn!(error = %e, "hybrid vsock handshake rejected"),
    }
}

/// What one call produced for its stream.
enum Outcome {
    /// Write this frame.
    Frame(Vec<u8>),
    /// The `drop` fault: close the connection instead of answering.
    Drop,
}

/// Why a connection stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The server shuts down, the connection was closed on purpose, or the guest died or
    /// restarted: close now, abandoning calls in flight.
    Reset,
    /// The agent ended its service (DestroySandbox): answer the calls in flight, then close.
    Graceful,
}

/// Resolves with the first reason for `conn` to stop.
async fn stop_signal(
    mut shutdown: watch::Receiver<bool>,
    mut kill: watch::Receiver<bool>,
    agent: SimAgent,
) -> Stop {
    let epoch = agent.epoch();
    tokio::select! {
        _ = shutdown.changed() => Stop::Reset,
        _ = kill.changed() => Stop::Reset,
        _ = agent.died() => Stop::Reset,
        _ = agent.restarted(epoch) => Stop::Reset,
        _ = agent.terminated() => Stop::Graceful,
    }
}

/// Writes one frame unless a reset comes first; a graceful stop lets it finish. Returns
/// whether the connection can go on.
async fn write_frame(
    conn: &mut BoxConn,
    bytes: &[u8],
    stop: &mut Pin<&mut futures::future::Fuse<impl Future<Output = Stop>>>,
    why: &mut Option<Stop>,
) -> bool {
    let write = conn.write_all(bytes);
    tokio::pin!(write);
    loop {
        tokio::select! {
            biased;
            r = &mut write => return r.is_ok() && why.is_none(),
            w = stop.as_mut() => {
                *why = Some(w);
                if w == Stop::Reset {
                    return false;
                }
            }
        }
    }
}

async fn run_connection(ctx: ConnCtx, mut conn: BoxConn) {
    let id = ctx.shared.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    let (kill_tx, kill) = watch::channel(false);
    ctx.shared
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, kill_tx);
    tracing::debug!(conn = id, "connection opened");

    // Calls that had to wait run as their own tasks and send their outcome back here; the
    // connection's task does every read and every write.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();
    let mut handlers = JoinSet::new();
    let mut reader = FrameReader::default();
    let stop = stop_signal(ctx.shutdown.clone(), kill, ctx.agent.clone()).fuse();
    tokio::pin!(stop);
    let mut why = None;
    loop {
        let outcome = tokio::select! {
            biased;
            w = &mut stop => { why = Some(w); break; }
            Some(o) = done_rx.recv() => o,
            Some(_) = handlers.join_next(), if !handlers.is_empty() => continue,
            // Cancel safe: a frame half read when another branch wins stays in the reader.
            frame = reader.next(&mut conn) => match frame {
                Ok(frame) => match dispatch(&ctx, id, frame, &done_tx, &mut handlers).await {
                    Some(o) => o,
                    None => continue,
                },
                Err(FrameError::Answer { stream_id, status }) => {
                    Outcome::Frame(response_frame(stream_id, &status, Vec::new()))
                }
                Err(FrameError::Closed(e)) => {
                    tracing::debug!(conn = id, error = %e, "connection closed by peer");
                    break;
                }
            }
        };
        match outcome {
            Outcome::Frame(bytes) => {
                if !write_frame(&mut conn, &bytes, &mut stop, &mut why).await {
                    break;
                }
            }
            Outcome::Drop => break,
        }
    }
    if why == Some(Stop::Graceful) {
        // Let the calls in flight answer (GetOOMEvent fails, waits return) before closing.
        drop(done_tx);
        let _ = tokio::time::timeout(TERMINATION_GRACE, async {
            while let Some(Outcome::Frame(bytes)) = done_rx.recv().await {
                if conn.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        })
        .await;
        // The answers are written; give the client time to take them before the close.
        // Anything it still sends meets a closing agent, as it would on a real guest.
        let _ = tokio::time::timeout(TERMINATION_LINGER, reader.next(&mut conn)).await;
    }
    handlers.shutdown().await;
    let _ = conn.shutdown().await;
    ctx.shared
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    ctx.shared.closed.notify_waiters();
    tracing::debug!(conn = id, "connection closed");
}

/// Starts one call. Most calls answer without waiting: they run to completion right here, in
/// the connection's task, and their outcome is returned. A call that has to wait (a blocking
/// read, a wait, a delay fault) moves to a task of its own and answers through `done`.
async fn dispatch(
    ctx: &ConnCtx,
    conn: u64,
    frame: Frame,
    done: &mpsc::UnboundedSender<Outcome>,
    handlers: &mut JoinSet<()>,
) -> Option<Outcome> {
    let stream_id = frame.stream_id;
    let answer = |status: ttrpc::Status| {
        Some(Outcome::Frame(response_frame(
            stream_id,
            &status,
            Vec::new(),
        )))
    };
    let req = match frame.request {
        Ok(req) => req,
        Err(status) => return answer(status),
    };
    let Some(service) = service::services().get(&req.service) else {
        return answer(ttrpc::get_status(
            Code::INVALID_ARGUMENT,
            format!("{} service does not exist", req.service),
        ));
    };
    let method = match service.get(&req.method) {
        Some((rpc, method)) if rpc.is_none_or(|m| ctx.agent.version().serves(m)) => {
            Arc::clone(method)
        }
        // Unknown, or not in this agent's version: an older agent does not have it.
        _ => {
            return answer(ttrpc::get_status(
                Code::UNIMPLEMENTED,
                format!("{} method", req.method),
            ));
        }
    };
    let call = service::Call {
        agent: ctx.agent.clone(),
        conn,
    };
    let mut call = Box::pin(service::CALL.scope(
        call,
        TRANSPORT.scope(Cell::new(None), async move {
            let tctx = ttrpc::r#async::TtrpcContext {
                mh: ttrpc::MessageHeader {
                    length: 0,
                    stream_id,
                    type_: 1,
                    flags: 0,
                },
                metadata: ttrpc::context::from_pb(&req.metadata),
                timeout_nano: req.timeout_nano,
                connection_data: Default::default(),
            };
            let result = method.handler(tctx, req).await;
            match (TRANSPORT.with(Cell::get), result) {
                (Some(TransportFault::Drop), _) => Outcome::Drop,
                (Some(TransportFault::Corrupt), _) => {
                    Outcome::Frame(frame::corrupt_frame(stream_id))
                }
                (None, Ok(resp)) => Outcome::Frame(frame::encode_response(stream_id, &resp)),
                (None, Err(e)) => Outcome::Frame(response_frame(
                    stream_id,
                    &ttrpc::get_status(Code::UNKNOWN, e),
                    Vec::new(),
                )),
            }
        }),
    ));
    if let Poll::Ready(outcome) =
        std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await
    {
        return Some(outcome);
    }
    let done = done.clone();
    handlers.spawn(async move {
        let _ = done.send(call.await);
    });
    None
}

/// Where a socket file of this server lives, for callers that print it.
pub fn socket_path(addr: &AgentAddr) -> Option<PathBuf> {
    addr.socket_file().map(PathBuf::from)
}
