//! Kata agent addresses and the listeners behind them.
//!
//! | URL | transport |
//! |---|---|
//! | `unix://PATH`, `remote://PATH`, `mock://PATH` | plain unix socket (`unix://@NAME`: abstract) |
//! | `hvsock://PATH` | hybrid vsock: a unix socket where each connection first sends `CONNECT <port>\n` |
//! | `vsock://CID:PORT` | AF_VSOCK |
//!
//! Socket files are bound by [`bind_unix`], the one helper of every server here: mode 0600
//! whatever the umask, a stale socket file (nothing accepts on it) replaced, and anything else
//! at the path (a live socket, a regular file, a FIFO, ...) an error that names it; the
//! directory must exist. The [`SocketFile`] it returns removes the file when dropped.

use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;

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

/// The URL schemes an agent server listens on, with what follows each.
pub const SCHEMES: [(&str, &str); 5] = [
    ("unix", "PATH"),
    ("remote", "PATH"),
    ("mock", "PATH"),
    ("hvsock", "PATH[:PORT]"),
    ("vsock", "CID:PORT"),
];

/// `accepted: unix://PATH, remote://PATH, ...`, for messages.
fn accepted() -> String {
    let forms: Vec<String> = SCHEMES.iter().map(|(s, a)| format!("{s}://{a}")).collect();
    format!("accepted: {}", forms.join(", "))
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
            .ok_or_else(|| err(&format!("expected SCHEME://ADDRESS ({})", accepted())))?;
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
            other => {
                let near = crate::op::suggest(other, SCHEMES.iter().map(|(s, _)| *s))
                    .map(|n| format!(": did you mean {n:?}?"))
                    .unwrap_or_default();
                Err(err(&format!(
                    "unknown scheme {other:?}{near} ({})",
                    accepted()
                )))
            }
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
    /// A unix socket (also hybrid vsock, whose handshake runs per connection), with the socket
    /// file it created (none for an abstract socket), removed when the listener goes.
    Unix(UnixListener, Option<SocketFile>),
    /// A vsock socket.
    Vsock(tokio_vsock::VsockListener),
}

impl Bound {
    /// Accepts one connection.
    pub async fn accept(&mut self) -> io::Result<BoxConn> {
        match self {
            Bound::Unix(l, _) => Ok(Box::new(l.accept().await?.0)),
            Bound::Vsock(l) => Ok(Box::new(l.accept().await?.0)),
        }
    }
}

/// Binds `addr`; a socket file goes through [`bind_unix`] (0600, only a stale socket
/// replaced, the directory must exist).
pub async fn bind(addr: &AgentAddr) -> io::Result<Bound> {
    match addr {
        AgentAddr::Unix { path, .. } | AgentAddr::HybridVsock { path, .. } => {
            let bytes = path.as_os_str().as_encoded_bytes();
            if let Some(name) = bytes.strip_prefix(b"@") {
                let name = String::from_utf8_lossy(name).into_owned();
                let std = bind_abstract(&name)?;
                std.set_nonblocking(true)?;
                return Ok(Bound::Unix(UnixListener::from_std(std)?, None));
            }
            let (std, file) = bind_unix(path).map_err(io::Error::from)?;
            Ok(Bound::Unix(UnixListener::from_std(std)?, Some(file)))
        }
        AgentAddr::Vsock { cid, port } => {
            let l = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(*cid, *port))?;
            Ok(Bound::Vsock(l))
        }
    }
}

/// Why a unix socket could not be bound at a path.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A server accepts connections on the socket already there.
    #[error("{} is already in use (a live socket: a server accepts connections on it)", .path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is there; it is never replaced.
    #[error("{} exists and is {kind}, not a socket; refusing to replace it", .path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
        /// What is there (`a regular file`, `a FIFO`, ...).
        kind: &'static str,
    },
    /// The directory the socket would go in does not exist (it is not created).
    #[error("cannot create the socket {}: the directory {} does not exist", .path.display(), .dir.display())]
    NoDirectory {
        /// The socket path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// Another I/O error.
    #[error("cannot bind {}: {source}", .path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl From<BindError> for io::Error {
    fn from(e: BindError) -> io::Error {
        let kind = match &e {
            BindError::InUse { .. } => io::ErrorKind::AddrInUse,
            BindError::NotASocket { .. } => io::ErrorKind::AlreadyExists,
            BindError::NoDirectory { .. } => io::ErrorKind::NotFound,
            BindError::Io { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}

/// A socket file this process created: removed when dropped, if the path still holds that
/// very file (device and inode), so a server started since on the same path keeps its socket.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if file_identity(&self.path) == Some(self.identity) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn file_identity(p: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// What a non-socket file is, for messages.
fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a socket"
    }
}

/// How many times [`bind_unix`] looks again when the path changes under it.
const BIND_ATTEMPTS: usize = 3;

/// Binds a listening unix socket at `path` for every server of this workspace (sim-agent's
/// listeners, the remote-hypervisor socket, the fault control sockets):
///
/// - nothing there: the socket is created;
/// - a stale socket (a socket file nobody accepts on): it is replaced;
/// - a live socket: [`BindError::InUse`]; anything else (a regular file, a FIFO, a directory,
///   a symlink): [`BindError::NotASocket`]. Nothing but a stale socket is ever removed, and
///   `bind(2)` itself never replaces a file, so a file that appears meanwhile is not lost;
/// - the directory must exist ([`BindError::NoDirectory`]): a typo never creates directories.
///
/// The socket file has mode 0600 whatever the umask, from the moment it exists: the socket's
/// mode is set (`fchmod`) before `bind(2)` creates the file, which takes it from there (Linux),
/// and nothing can connect before `listen(2)`, after the mode is checked. The listener is
/// non-blocking; the returned [`SocketFile`] removes the file when dropped.
pub fn bind_unix(path: &Path) -> Result<(std::os::unix::net::UnixListener, SocketFile), BindError> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    let io_err = |source: io::Error| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let no_dir = || BindError::NoDirectory {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(io_err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", dir.display()),
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_dir()),
        Err(e) => return Err(io_err(e)),
    }
    let addr = UnixAddr::new(path).map_err(|e| io_err(e.into()))?;
    for _ in 0..BIND_ATTEMPTS {
        clear_stale(path)?;
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| io_err(e.into()))?;
        // The file bind(2) creates takes the socket's mode (less the umask).
        nix::sys::stat::fchmod(
            fd.as_raw_fd(),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io_err(e.into()))?;
        match socket::bind(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            // Something appeared at the path since it was looked at: look again.
            Err(nix::errno::Errno::EADDRINUSE) => continue,
            Err(nix::errno::Errno::ENOENT) => return Err(no_dir()),
            Err(e) => return Err(io_err(e.into())),
        }
        let meta = std::fs::symlink_metadata(path).map_err(io_err)?;
        let file = SocketFile {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        };
        if meta.mode() & 0o077 != 0 {
            // A kernel that ignored the socket's mode: nobody can connect before listen(2).
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err)?;
        }
        socket::listen(&fd, Backlog::MAXCONN).map_err(|e| io_err(e.into()))?;
        return Ok((std::os::unix::net::UnixListener::from(fd), file));
    }
    Err(BindError::InUse {
        path: path.to_path_buf(),
    })
}

/// Whether a server accepts connections on the socket at `path` (a full backlog counts as
/// live); asked without blocking.
pub fn is_live(path: &Path) -> bool {
    matches!(probe(path), Ok(()) | Err(nix::errno::Errno::EAGAIN))
}

/// Connects to the socket at `path` without blocking (a full backlog is `EAGAIN`, not a wait).
fn probe(path: &Path) -> nix::Result<()> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)
}

/// Makes room at `path` if, and only if, a stale socket is there.
fn clear_stale(path: &Path) -> Result<(), BindError> {
    let io_err = |source: io::Error| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    match probe(path) {
        Ok(()) => {
            return Err(BindError::InUse {
                path: path.to_path_buf(),
            });
        }
        Err(nix::errno::Errno::ECONNREFUSED) => {}
        // Replaced or removed since: the caller looks again.
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        // A full backlog: someone serves it (slowly).
        Err(nix::errno::Errno::EAGAIN) => {
            return Err(BindError::InUse {
                path: path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(io_err(io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot tell whether the socket there is in use: {e}"),
            )));
        }
    }
    // Only the stale socket that was probed is removed.
    if file_identity(path) == Some((meta.dev(), meta.ino())) {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(e)),
            _ => tracing::info!(path = %path.display(), "replaced a stale socket"),
        }
    }
    Ok(())
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

    #[test]
    fn a_bad_scheme_names_the_accepted_ones_and_the_nearest() {
        let e = "unx:///run/a.sock".parse::<AgentAddr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid agent address \"unx:///run/a.sock\": unknown scheme \"unx\": did you mean \
             \"unix\"? (accepted: unix://PATH, remote://PATH, mock://PATH, hvsock://PATH[:PORT], \
             vsock://CID:PORT)"
        );
        let e = "ftp://x".parse::<AgentAddr>().unwrap_err().to_string();
        assert!(
            !e.contains("did you mean") && e.contains("vsock://CID:PORT"),
            "{e}"
        );
        let e = "/run/a.sock".parse::<AgentAddr>().unwrap_err().to_string();
        assert!(
            e.contains("expected SCHEME://ADDRESS") && e.contains("unix://PATH"),
            "{e}"
        );
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
