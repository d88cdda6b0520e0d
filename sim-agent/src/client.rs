//! [`RemoteAgent`]: the [`AgentRpc`] surface over ttrpc, so one test body runs in-process
//! and over the wire.
//!
//! It dials the Kata URL schemes as the runtimes do: `unix://`, `remote://` and `mock://` are
//! plain unix sockets; `hvsock://PATH[:PORT]` adds the `CONNECT <port>` handshake;
//! `vsock://CID:PORT` is AF_VSOCK.
//!
//! Marking it dead ([`crate::Agent::mark_dead`]) closes its connection, as Go's `markDead`
//! closes the ttrpc client: calls in flight fail at once, the agent sees the host hang up.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use protobuf::well_known_types::empty::Empty;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use ttrpc::r#async::transport::Socket;

use crate::agent::HostState;
use crate::error::{AgentError, Result};
use crate::protocols::{agent, agent_ttrpc, csi, health, health_ttrpc, types};
use crate::rpc::{AgentRpc, CallOpts, Method};
use crate::server::transport::{AgentAddr, connect_handshake};

/// The generated clients, one field per service so the RPC table can pick by service name.
#[allow(non_snake_case)]
#[derive(Clone)]
struct Clients {
    AgentService: agent_ttrpc::AgentServiceClient,
    Health: health_ttrpc::HealthClient,
}

/// A Kata agent reached over ttrpc.
#[derive(Clone)]
pub struct RemoteAgent {
    clients: Clients,
    host: Arc<HostState>,
    metadata: BTreeMap<String, Vec<String>>,
}

impl std::fmt::Debug for RemoteAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAgent").finish_non_exhaustive()
    }
}

impl RemoteAgent {
    /// Dials `url` (with the hybrid-vsock handshake where the scheme needs one).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, false).await
    }

    /// Like [`RemoteAgent::connect`]; `lower_case_handshake` sends `connect <port>` as
    /// runtime-rs does instead of the Go runtime's `CONNECT <port>`.
    pub async fn connect_with(url: &str, lower_case_handshake: bool) -> Result<Self> {
        let addr: AgentAddr = url
            .parse()
            .map_err(|e: crate::server::transport::AddrError| {
                AgentError::Transport(e.to_string())
            })?;
        let io = |e: std::io::Error| AgentError::Transport(format!("dial {url}: {e}"));
        let host = Arc::new(HostState::new(Some(url.to_string())));
        let socket = match &addr {
            AgentAddr::Unix { path, .. } => {
                let s = connect_unix(path).await.map_err(io)?;
                Socket::new(Severable::new(s, &host))
            }
            AgentAddr::HybridVsock { path, port } => {
                let mut s = connect_unix(path).await.map_err(io)?;
                connect_handshake(&mut s, *port, lower_case_handshake)
                    .await
                    .map_err(|e| AgentError::Transport(e.to_string()))?;
                Socket::new(Severable::new(s, &host))
            }
            AgentAddr::Vsock { cid, port } => {
                let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await
                    .map_err(io)?;
                Socket::new(Severable::new(s, &host))
            }
        };
        let client = ttrpc::r#async::Client::new(socket);
        Ok(RemoteAgent {
            clients: Clients {
                AgentService: agent_ttrpc::AgentServiceClient::new(client.clone()),
                Health: health_ttrpc::HealthClient::new(client),
            },
            host,
            metadata: BTreeMap::new(),
        })
    }

    /// Sends this ttrpc metadata with every call (the Go shim sends
    /// `containerd-namespace-ttrpc`).
    pub fn with_metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata
            .entry(key.to_string())
            .or_default()
            .push(value.to_string());
        self
    }

    fn ctx(&self, opts: &CallOpts) -> ttrpc::context::Context {
        let mut ctx = ttrpc::context::with_timeout(
            opts.timeout
                .map(|t| t.as_nanos().min(i64::MAX as u128) as i64)
                .unwrap_or(0),
        );
        for (k, v) in self.metadata.iter().chain(&opts.metadata) {
            ctx.metadata
                .entry(k.clone())
                .or_default()
                .extend(v.iter().cloned());
        }
        ctx
    }
}

/// The client's end of the connection, closed when the host marks the agent dead (Go's
/// `markDead` closes the ttrpc client, and so the socket): from then on reads see the end of
/// the stream, so the client's connection task ends and drops the socket, and the agent sees
/// the host hang up (and cancels the calls it was still running). Writes fail.
struct Severable<S> {
    inner: S,
    /// Resolves when the agent is marked dead; polled by reads only (a read is always
    /// pending on a live connection, so it is the one woken).
    dead: std::sync::Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>,
    severed: std::sync::atomic::AtomicBool,
}

impl<S> Severable<S> {
    fn new(inner: S, host: &Arc<HostState>) -> Self {
        let host = Arc::clone(host);
        Severable {
            inner,
            dead: std::sync::Mutex::new(Box::pin(async move { host.died().await })),
            severed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn is_severed(&self) -> bool {
        self.severed.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Severable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.is_severed() {
            let dead = this.dead.get_mut().unwrap_or_else(|p| p.into_inner());
            if dead.as_mut().poll(cx).is_ready() {
                this.severed
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        if this.is_severed() {
            // The end of the stream.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Severable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_severed() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

async fn connect_unix(path: &std::path::Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            s.set_nonblocking(true)?;
            return UnixStream::from_std(s);
        }
    }
    UnixStream::connect(path).await
}

fn map_err(method: Method, e: ttrpc::Error) -> AgentError {
    match AgentError::from_ttrpc(e) {
        AgentError::Status {
            code: ttrpc::Code::DEADLINE_EXCEEDED,
            message,
        } if message == "timeout" => AgentError::Timeout {
            method: method.wire_name().into(),
        },
        AgentError::Transport(m) if m.contains("timeout") || m.contains("deadline") => {
            AgentError::Timeout {
                method: method.wire_name().into(),
            }
        }
        other => other,
    }
}

macro_rules! impl_remote_rpc {
    ($(($snake:ident, $variant:ident, $svc:ident, $req:ty, $resp:ty)),* $(,)?) => {
        #[async_trait::async_trait]
        impl AgentRpc for RemoteAgent {
            fn host(&self) -> &HostState {
                &self.host
            }
            $(
                async fn $snake(&self, req: $req, opts: CallOpts) -> Result<$resp> {
                    let ctx = self.ctx(&opts);
                    let call = self.clients.$svc.$snake(ctx, &req);
                    match opts.timeout {
                        // The server answers DEADLINE_EXCEEDED at the deadline; this bound
                        // only covers a server that never answers at all.
                        Some(t) if !t.is_zero() => {
                            match tokio::time::timeout(t + std::time::Duration::from_millis(500), call).await {
                                Ok(r) => r.map_err(|e| map_err(Method::$variant, e)),
                                Err(_) => Err(AgentError::Timeout { method: stringify!($variant).into() }),
                            }
                        }
                        _ => call.await.map_err(|e| map_err(Method::$variant, e)),
                    }
                }
            )*
        }
    };
}
crate::for_each_rpc!(impl_remote_rpc);

#[allow(dead_code)]
fn _types(
    _: Empty,
    _: types::Interface,
    _: csi::VolumeStatsResponse,
    _: health::CheckRequest,
    _: agent::OOMEvent,
) {
}
