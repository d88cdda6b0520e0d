//! Kata agent addresses and the listeners behind them.
//!
//! | URL | transport |
//! |---|---|
//! | `unix://PATH`, `remote://PATH`, `mock://PATH` | plain unix socket (`unix://@NAME`: abstract) |
//! | `hvsock://PATH` | hybrid vsock: a unix socket where each connection first sends `CONNECT <port>\n` |
//! | `vsock://CID:PORT` | AF_VSOCK |
//!
//! Socket files are created with mode 0600. A stale socket file (nothing accepts on it) is
//! replaced; a live one is an error.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// The agent's ttrpc port on vsock and hybrid vsock (`vSockPort`).
pub const AGENT_PORT: u32 = 1024;
/// The log forwarder's port (`vSockLogsPort`); runtime-rs opens it and only reads.
pub const LOG_PORT: u32 = 1025;
/// How long a hybrid-vsock client may take to send its `CONNECT` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `CONNECT` line accepted.
const MAX_HANDSHAKE_LINE: usize = 64;

/// A parsed agent address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    /// `unix://`, `remote://` or `mock://`: a plain unix socket.
    Unix {
        /// The URL scheme, kept for messages.
        scheme: &'static str,
        /// The socket path; a leading `@` names an abstract socket.
        path: PathBuf,
    },
    /// `hvsock://PATH[:PORT]`: a unix socket with the `CONNECT` handshake.
    HybridVsock {
        /// The socket path.
        path: PathBuf,
        /// The port a client connects to (`AGENT_PORT` unless the URL says otherwise).
        port: u32,
    },
    /// `vsock://CID:PORT`.
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
}

/// An address that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agent address {url:?}: {reason}")]
pub struct AddrError {
    /// The address.
    pub url: String,
    /// Why.
    pub reason: String,
}

impl std::str::FromStr for AgentAddr {
    type Err = AddrError;

    fn from_str(url: &str) -> Result<Self, AddrError> {
        let err = |reason: &str| AddrError {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| err("expected SCHEME://..."))?;
        if rest.is_empty() {
            return Err(err("empty path"));
        }
        match scheme {
            "unix" | "remote" | "mock" => {
                let scheme = match scheme {
                    "unix" => "unix",
                    "remote" => "remote",
                    _ => "mock",
                };
                if scheme != "unix" && !rest.starts_with('/') {
                    return Err(err(
                        "the path must be absolute (the Go runtime needs an empty host part)",
                    ));
                }
                Ok(AgentAddr::Unix {
                    scheme,
                    path: PathBuf::from(rest),
                })
            }
            "hvsock" => {
                // `hvsock://PATH:PORT` (Go) or `hvsock://PATH` (runtime-rs).
                let (path, port) = match rest.rsplit_once(':') {
                    Some((p, port))
                        if !p.is_empty() && port.chars().all(|c| c.is_ascii_digit()) =>
                    {
                        (p, port.parse().map_err(|_| err("bad port"))?)
                    }
                    _ => (rest, AGENT_PORT),
                };
                Ok(AgentAddr::HybridVsock {
                    path: PathBuf::from(path),
                    port,
                })
            }
            "vsock" => {
                let (cid, port) = rest.split_once(':').unwrap_or((rest, "1024"));
                let cid = cid.parse().map_err(|_| err("bad CID"))?;
                let port = port.parse().map_err(|_| err("bad port"))?;
                Ok(AgentAddr::Vsock { cid, port })
            }
            other => Err(err(&format!(
                "unknown scheme {other:?} (use unix, remote, mock, hvsock or vsock)"
            ))),
        }
    }
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddr::Unix { scheme, path } => write!(f, "{scheme}://{}", path.display()),
            AgentAddr::HybridVsock { path, port } => {
                write!(f, "hvsock://{}:{port}", path.display())
            }
            AgentAddr::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

impl AgentAddr {
    /// The socket file this address creates, if any.
    pub fn socket_file(&self) -> Option<&Path> {
        match self {
            AgentAddr::Unix { path, .. } | AgentAddr::HybridVsock { path, .. }
                if !path.as_os_str().as_encoded_bytes().starts_with(b"@") =>
            {
                Some(path)
            }
            _ => None,
        }
    }
}

/// A byte stream a connection runs on.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for T {}

/// A boxed connection.
pub type BoxConn = Box<dyn Conn>;

/// A bound listener.
#[derive(Debug)]
pub enum Bound {
    /// A unix socket (also hybrid vsock, whose handshake runs per connection).
    Unix(UnixListener),
    /// A vsock socket.
    Vsock(tokio_vsock::VsockListener),
}

impl Bound {
    /// Accepts one connection.
    pub async fn accept(&mut self) -> io::Result<BoxConn> {
        match self {
            Bound::Unix(l) => Ok(Box::new(l.accept().await?.0)),
            Bound::Vsock(l) => Ok(Box::new(l.accept().await?.0)),
        }
    }
}

/// Binds `addr`: replaces a stale socket file, refuses a live one, sets mode 0600.
pub async fn bind(addr: &AgentAddr) -> io::Result<Bound> {
    match addr {
        AgentAddr::Unix { path, .. } | AgentAddr::HybridVsock { path, .. } => {
            let bytes = path.as_os_str().as_encoded_bytes();
            if let Some(name) = bytes.strip_prefix(b"@") {
                let name = String::from_utf8_lossy(name).into_owned();
                let std = bind_abstract(&name)?;
                std.set_nonblocking(true)?;
                return Ok(Bound::Unix(UnixListener::from_std(std)?));
            }
            if path.exists() {
                if UnixStream::connect(path).await.is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "{} is a live socket; another server listens there",
                            path.display()
                        ),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let l = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(Bound::Unix(l))
        }
        AgentAddr::Vsock { cid, port } => {
            let l = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(*cid, *port))?;
            Ok(Bound::Vsock(l))
        }
    }
}

#[cfg(target_os = "linux")]
fn bind_abstract(name: &str) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    std::os::unix::net::UnixListener::bind_addr(&addr)
}

#[cfg(not(target_os = "linux"))]
fn bind_abstract(_name: &str) -> io::Result<std::os::unix::net::UnixListener> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets need Linux",
    ))
}

/// Why a hybrid-vsock handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The line was not `CONNECT <port>`.
    #[error("malformed hybrid vsock handshake {0:?}")]
    Malformed(String),
    /// No complete line in time.
    #[error("hybrid vsock handshake timed out")]
    Timeout,
    /// I/O failed.
    #[error("hybrid vsock handshake: {0}")]
    Io(#[from] io::Error),
}

/// Server side of the hybrid-vsock handshake: reads `CONNECT <port>\n` byte by byte (so no
/// ttrpc bytes are consumed), case-insensitively, answers `OK <port>\n`, returns the port.
pub async fn accept_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<u32, HandshakeError> {
    let line = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_line(s))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    let text = String::from_utf8_lossy(&line)
        .trim_end_matches(['\r', '\n'])
        .to_string();
    let mut words = text.split_whitespace();
    let port = match (words.next(), words.next(), words.next()) {
        (Some(w), Some(p), None) if w.eq_ignore_ascii_case("connect") => p
            .parse::<u32>()
            .map_err(|_| HandshakeError::Malformed(text.clone()))?,
        _ => return Err(HandshakeError::Malformed(text)),
    };
    s.write_all(format!("OK {port}\n").as_bytes()).await?;
    Ok(port)
}

async fn read_line<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, HandshakeError> {
    let mut line = Vec::new();
    loop {
        let b = s.read_u8().await?;
        line.push(b);
        if b == b'\n' {
            return Ok(line);
        }
        if line.len() > MAX_HANDSHAKE_LINE {
            return Err(HandshakeError::Malformed(
                String::from_utf8_lossy(&line).into_owned(),
            ));
        }
    }
}

/// Client side of the handshake: sends `CONNECT <port>\n` (or lower case, as runtime-rs
/// does) and expects a line containing `OK`.
pub async fn connect_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    port: u32,
    lower_case: bool,
) -> Result<(), HandshakeError> {
    let verb = if lower_case { "connect" } else { "CONNECT" };
    s.write_all(format!("{verb} {port}\n").as_bytes()).await?;
    let line = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_line(s))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    let text = String::from_utf8_lossy(&line).into_owned();
    if text.contains("OK") {
        Ok(())
    } else {
        Err(HandshakeError::Malformed(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        let a: AgentAddr = "hvsock:///run/vc/kata.hvsock:1024".parse().unwrap();
        assert_eq!(
            a,
            AgentAddr::HybridVsock {
                path: "/run/vc/kata.hvsock".into(),
                port: 1024
            }
        );
        let a: AgentAddr = "hvsock:///tmp/x.sock".parse().unwrap();
        assert_eq!(
            a,
            AgentAddr::HybridVsock {
                path: "/tmp/x.sock".into(),
                port: AGENT_PORT
            }
        );
        let a: AgentAddr = "vsock://3:1024".parse().unwrap();
        assert_eq!(a, AgentAddr::Vsock { cid: 3, port: 1024 });
        assert!("remote://relative".parse::<AgentAddr>().is_err());
        assert!("ftp://x".parse::<AgentAddr>().is_err());
        assert!("unix://".parse::<AgentAddr>().is_err());
        assert!("vsock://x:1".parse::<AgentAddr>().is_err());
    }

    #[tokio::test]
    async fn handshake_is_case_insensitive_and_keeps_following_bytes() {
        for verb in ["CONNECT", "connect", "Connect"] {
            let (mut a, mut b) = tokio::io::duplex(256);
            a.write_all(format!("{verb} 1024\nREST").as_bytes())
                .await
                .unwrap();
            assert_eq!(accept_handshake(&mut b).await.unwrap(), 1024);
            let mut ok = [0u8; 8];
            a.read_exact(&mut ok[..8]).await.unwrap();
            assert_eq!(&ok, b"OK 1024\n");
            let mut rest = [0u8; 4];
            b.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"REST");
        }
    }

    #[tokio::test]
    async fn malformed_handshakes_are_rejected() {
        for bad in ["HELLO 1024\n", "CONNECT x\n", "CONNECT 1 2\n"] {
            let (mut a, mut b) = tokio::io::duplex(256);
            a.write_all(bad.as_bytes()).await.unwrap();
            assert!(
                matches!(
                    accept_handshake(&mut b).await,
                    Err(HandshakeError::Malformed(_))
                ),
                "{bad}"
            );
        }
        let (mut a, mut b) = tokio::io::duplex(256);
        a.write_all(&[b'A'; 100]).await.unwrap();
        assert!(matches!(
            accept_handshake(&mut b).await,
            Err(HandshakeError::Malformed(_))
        ));
    }
}
