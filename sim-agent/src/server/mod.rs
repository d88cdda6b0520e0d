//! [`AgentServer`]: serves a [`SimAgent`] over ttrpc on the Kata transports.
//!
//! Each accepted connection (after the hybrid-vsock handshake where there is one) is one task
//! that reads ttrpc frames, runs each call and writes its answer. A call that answers without
//! waiting (most do) runs right in that task; one that has to wait (ReadStdout, WaitProcess,
//! GetOOMEvent, a delay fault) moves to a task of its own and sends its answer back, so
//! blocking calls on one connection do not hold up the others. A malformed frame is answered
//! or closes only its own connection. When the client goes away its pending calls are
//! cancelled, so nothing leaks.

pub mod conn;
mod frame;
mod service;
pub mod transport;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use ttrpc::Code;

use crate::fault::{TRANSPORT, TransportFault};
use crate::sim::SimAgent;
use conn::{AcceptBackoff, Dispatch, Outcome, Stop};
pub use conn::{MAX_IN_FLIGHT, TtrpcServer};
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
            let mut backoff = AcceptBackoff::default();
            let mut pause = None;
            loop {
                if let Some(delay) = pause.take() {
                    if !conn::wait_out(delay, &mut shutdown, &mut conns).await {
                        break;
                    }
                    continue;
                }
                tokio::select! {
                    _ = shutdown.changed() => break,
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    accepted = bound.accept() => match accepted {
                        Ok(conn) if ctx.agent.is_terminated() || ctx.agent.is_dead() => {
                            // The agent process has exited (or its VM died): nothing serves
                            // this connection.
                            backoff.succeeded();
                            drop(conn);
                        }
                        Ok(conn) if hybrid => {
                            backoff.succeeded();
                            conns.spawn(hybrid_connection(ctx.clone(), conn));
                        }
                        Ok(conn) => {
                            backoff.succeeded();
                            conns.spawn(run_connection(ctx.clone(), conn));
                        }
                        Err(e) => pause = Some(backoff.failed(&addr, &e)),
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

/// Resolves with the first reason for a connection to stop.
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

async fn run_connection(ctx: ConnCtx, conn: BoxConn) {
    let id = ctx.shared.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    let (kill_tx, kill) = watch::channel(false);
    ctx.shared
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, kill_tx);
    tracing::debug!(conn = id, "connection opened");
    let stop = stop_signal(ctx.shutdown.clone(), kill, ctx.agent.clone());
    let dispatch = AgentDispatch {
        agent: ctx.agent.clone(),
    };
    conn::serve_calls(&dispatch, id, conn, stop).await;
    ctx.shared
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    ctx.shared.closed.notify_waiters();
    tracing::debug!(conn = id, "connection closed");
}

/// Starts agent calls: the method table of [`service`], gated by the agent's version, with
/// the agent and the transport-fault slot in the call's task-locals.
struct AgentDispatch {
    agent: SimAgent,
}

impl Dispatch for AgentDispatch {
    fn start(
        &self,
        conn: u64,
        stream_id: u32,
        req: ttrpc::Request,
    ) -> Result<conn::CallFuture, ttrpc::Status> {
        let service = service::services().get(&req.service).ok_or_else(|| {
            ttrpc::get_status(
                Code::INVALID_ARGUMENT,
                format!("{} service does not exist", req.service),
            )
        })?;
        let method = match service.get(&req.method) {
            Some((rpc, method)) if rpc.is_none_or(|m| self.agent.version().serves(m)) => {
                Arc::clone(method)
            }
            // Unknown, or not in this agent's version: an older agent does not have it.
            _ => {
                return Err(ttrpc::get_status(
                    Code::UNIMPLEMENTED,
                    format!("{} method", req.method),
                ));
            }
        };
        let call = service::Call {
            agent: self.agent.clone(),
            conn,
        };
        Ok(Box::pin(service::CALL.scope(
            call,
            TRANSPORT.scope(Cell::new(None), async move {
                let tctx = conn::ttrpc_context(stream_id, &req);
                let result = method.handler(tctx, req).await;
                match TRANSPORT.with(Cell::get) {
                    Some(TransportFault::Drop) => Outcome::Drop,
                    Some(TransportFault::Corrupt) => {
                        Outcome::Frame(frame::corrupt_frame(stream_id))
                    }
                    None => conn::handler_outcome(stream_id, result),
                }
            }),
        )))
    }
}

/// Where a socket file of this server lives, for callers that print it.
pub fn socket_path(addr: &AgentAddr) -> Option<PathBuf> {
    addr.socket_file().map(PathBuf::from)
}
