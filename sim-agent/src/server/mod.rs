//! [`AgentServer`]: serves a [`SimAgent`] over ttrpc on the Kata transports.
//!
//! Each accepted connection (after the hybrid-vsock handshake where there is one) gets a
//! reader that parses ttrpc frames and a writer fed by a channel. Every request runs as its
//! own task, so blocking calls (ReadStdout, WaitProcess, GetOOMEvent) on one connection do
//! not hold up the others. A malformed frame is answered or closes only its own connection.
//! When the client goes away its pending handlers are cancelled, so nothing leaks.

mod frame;
mod service;
pub mod transport;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use ttrpc::Code;

use std::cell::Cell;

use crate::fault::{TRANSPORT, TransportFault};
use crate::sim::SimAgent;
use frame::{FrameError, read_frame, response_frame};
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
            let addr: AgentAddr = url.as_ref().parse()?;
            let bound = bind(&addr).await.map_err(|source| ServerError::Bind {
                addr: addr.to_string(),
                source,
            })?;
            server.spawn_accept(addr, bound);
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
            services: Arc::new(service::services(&self.agent)),
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
    services: Arc<service::ServiceMap>,
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

async fn run_connection(ctx: ConnCtx, conn: BoxConn) {
    let id = ctx.shared.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    let (kill_tx, mut kill) = watch::channel(false);
    ctx.shared
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, kill_tx);
    tracing::debug!(conn = id, "connection opened");

    let (mut reader, mut writer) = tokio::io::split(conn);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });

    let mut handlers = JoinSet::new();
    let mut shutdown = ctx.shutdown.clone();
    let agent = ctx.agent.clone();
    let epoch = agent.epoch();
    let mut graceful = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = kill.changed() => break,
            // A dead guest or a restarted agent resets every connection.
            _ = agent.died() => break,
            _ = agent.restarted(epoch) => break,
            _ = agent.terminated() => { graceful = true; break; }
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            frame = read_frame(&mut reader) => match frame {
                Ok(frame) => dispatch(&ctx, id, frame, &tx, &mut handlers).await,
                Err(FrameError::Answer { stream_id, status }) => {
                    let _ = tx.send(response_frame(stream_id, &status, Vec::new())).await;
                }
                Err(FrameError::Closed(e)) => {
                    tracing::debug!(conn = id, error = %e, "connection closed by peer");
                    break;
                }
            }
        }
    }
    if graceful {
        // Let the calls in flight answer (GetOOMEvent fails, waits return) before closing.
        let _ = tokio::time::timeout(TERMINATION_GRACE, async {
            while handlers.join_next().await.is_some() {}
        })
        .await;
        // The answers are written; give the client time to take them before the close.
        // Anything it still sends meets a closing agent, as it would on a real guest.
        let _ = tokio::time::timeout(TERMINATION_LINGER, read_frame(&mut reader)).await;
    }
    handlers.shutdown().await;
    drop(tx);
    let _ = writer_task.await;
    ctx.shared
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    ctx.shared.closed.notify_waiters();
    tracing::debug!(conn = id, "connection closed");
}

async fn dispatch(
    ctx: &ConnCtx,
    conn: u64,
    frame: frame::Frame,
    tx: &mpsc::Sender<Vec<u8>>,
    handlers: &mut JoinSet<()>,
) {
    let stream_id = frame.stream_id;
    let req = match frame.request() {
        Ok(req) => req,
        Err(status) => {
            let _ = tx
                .send(response_frame(stream_id, &status, Vec::new()))
                .await;
            return;
        }
    };
    let Some(service) = ctx.services.get(&req.service) else {
        let status = ttrpc::get_status(
            Code::INVALID_ARGUMENT,
            format!("{} service does not exist", req.service),
        );
        let _ = tx
            .send(response_frame(stream_id, &status, Vec::new()))
            .await;
        return;
    };
    if !service.methods.contains_key(&req.method) {
        let status = ttrpc::get_status(Code::UNIMPLEMENTED, format!("{} method", req.method));
        let _ = tx
            .send(response_frame(stream_id, &status, Vec::new()))
            .await;
        return;
    }
    let services = Arc::clone(&ctx.services);
    let tx = tx.clone();
    let shared = Arc::clone(&ctx.shared);
    handlers.spawn(service::CONN_ID.scope(
        conn,
        TRANSPORT.scope(Cell::new(None), async move {
            let Some(method) = services
                .get(&req.service)
                .and_then(|s| s.methods.get(&req.method))
            else {
                return;
            };
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
            let fault = TRANSPORT.with(Cell::get);
            let bytes = match (fault, result) {
                (Some(TransportFault::Drop), _) => {
                    // The fault closes this connection instead of answering.
                    if let Some(kill) = shared
                        .conns
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&conn)
                    {
                        let _ = kill.send(true);
                    }
                    return;
                }
                (Some(TransportFault::Corrupt), _) => frame::corrupt_frame(stream_id),
                (None, Ok(resp)) => frame::encode_response(stream_id, &resp),
                (None, Err(e)) => {
                    response_frame(stream_id, &ttrpc::get_status(Code::UNKNOWN, e), Vec::new())
                }
            };
            let _ = tx.send(bytes).await;
        }),
    ));
}

/// Where a socket file of this server lives, for callers that print it.
pub fn socket_path(addr: &AgentAddr) -> Option<PathBuf> {
    addr.socket_file().map(PathBuf::from)
}
