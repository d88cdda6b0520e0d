//! Errors of the agent surface, and their one conversion to and from ttrpc statuses.
//!
//! The real kata-agent formats its errors in two ways (upstream `src/agent/src/rpc.rs`,
//! `ttrpc_error`): a string literal is rendered with `{:?}` and so arrives in double quotes, an
//! `anyhow` error arrives as its plain text. [`AgentError::quoted`] and [`AgentError::status`]
//! build the two forms, so every call site says which one the real agent uses.

use ttrpc::{Code, Status};

/// The result type of every agent operation.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// An error of an agent call, as the caller observes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with a non-OK ttrpc status.
    #[error("{}: {message}", code_name(*code))]
    Status {
        /// The ttrpc/gRPC status code.
        code: Code,
        /// The status message, byte for byte as it travels on the wire.
        message: String,
    },
    /// The connection to the agent closed before the answer arrived.
    #[error("ttrpc: closed")]
    ConnectionClosed,
    /// The host's connection to the agent is closed: the call failed inside the host, in the
    /// words of the runtime's client (`ttrpc err: local stream closed`), and did not reach the
    /// agent (or its answer never came back).
    #[error("{0}")]
    Closed(String),
    /// The host marked the agent dead (`mark_dead`); no call reaches it any more.
    #[error("Dead agent")]
    DeadAgent,
    /// The caller's own deadline passed before the agent answered.
    #[error("{method}Request timed out")]
    Timeout {
        /// The RPC that timed out.
        method: String,
    },
    /// The transport failed: dial, handshake or framing.
    #[error("transport: {0}")]
    Transport(String),
    /// A host-side precondition failed before any RPC was sent.
    #[error("{0}")]
    Host(String),
}

impl AgentError {
    /// A status whose message is plain text (how the agent renders `anyhow` errors).
    pub fn status(code: Code, message: impl Into<String>) -> Self {
        AgentError::Status {
            code,
            message: message.into(),
        }
    }

    /// A status whose message is a Rust string literal rendered with `{:?}` (double-quoted).
    pub fn quoted(code: Code, message: &str) -> Self {
        AgentError::Status {
            code,
            message: format!("{message:?}"),
        }
    }

    /// `INTERNAL` with plain text, the agent's most common failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::status(Code::INTERNAL, message)
    }

    /// The status code, when the agent answered one.
    pub fn code(&self) -> Option<Code> {
        match self {
            AgentError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The status message, when the agent answered one.
    pub fn message(&self) -> Option<&str> {
        match self {
            AgentError::Status { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Converts into the ttrpc status the server sends. This is the one place where agent
    /// errors become wire statuses.
    pub fn to_status(&self) -> Status {
        match self {
            AgentError::Status { code, message } => ttrpc::get_status(*code, message),
            AgentError::Timeout { .. } => ttrpc::get_status(Code::DEADLINE_EXCEEDED, "timeout"),
            other => ttrpc::get_status(Code::UNKNOWN, other.to_string()),
        }
    }

    /// Converts a ttrpc client error into the caller's view of it.
    pub fn from_ttrpc(err: ttrpc::Error) -> Self {
        match err {
            ttrpc::Error::RpcStatus(s) => AgentError::Status {
                code: s.code(),
                message: s.message.clone(),
            },
            ttrpc::Error::LocalClosed | ttrpc::Error::RemoteClosed => AgentError::ConnectionClosed,
            // A connection that ends under a call (`early eof`, a reset) fails it as Go's
            // ttrpc client does (`filterCloseErr`: EOF, EPIPE and ECONNRESET are `ttrpc:
            // closed`).
            ttrpc::Error::Socket(s) if closed_socket(&s) => AgentError::ConnectionClosed,
            // A call made after the connection ended finds the client's request channel closed;
            // Go's client answers it `ttrpc: closed` too.
            ttrpc::Error::Others(s) if s.starts_with("reserve channel capacity failed") => {
                AgentError::ConnectionClosed
            }
            other => AgentError::Transport(other.to_string()),
        }
    }
}

/// Whether a ttrpc socket error means the connection ended (the peer went away).
fn closed_socket(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["closed", "reset", "eof", "broken pipe"]
        .iter()
        .any(|w| m.contains(w))
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        ttrpc::Error::RpcStatus(e.to_status())
    }
}

/// The canonical upper-case name of a status code (`NOT_FOUND`), as traces print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::OK => "OK",
        Code::CANCELLED => "CANCELLED",
        Code::UNKNOWN => "UNKNOWN",
        Code::INVALID_ARGUMENT => "INVALID_ARGUMENT",
        Code::DEADLINE_EXCEEDED => "DEADLINE_EXCEEDED",
        Code::NOT_FOUND => "NOT_FOUND",
        Code::ALREADY_EXISTS => "ALREADY_EXISTS",
        Code::PERMISSION_DENIED => "PERMISSION_DENIED",
        Code::RESOURCE_EXHAUSTED => "RESOURCE_EXHAUSTED",
        Code::FAILED_PRECONDITION => "FAILED_PRECONDITION",
        Code::ABORTED => "ABORTED",
        Code::OUT_OF_RANGE => "OUT_OF_RANGE",
        Code::UNIMPLEMENTED => "UNIMPLEMENTED",
        Code::INTERNAL => "INTERNAL",
        Code::UNAVAILABLE => "UNAVAILABLE",
        Code::DATA_LOSS => "DATA_LOSS",
        Code::UNAUTHENTICATED => "UNAUTHENTICATED",
    }
}

/// Every status code, in numeric order.
pub const CODES: [Code; 17] = [
    Code::OK,
    Code::CANCELLED,
    Code::UNKNOWN,
    Code::INVALID_ARGUMENT,
    Code::DEADLINE_EXCEEDED,
    Code::NOT_FOUND,
    Code::ALREADY_EXISTS,
    Code::PERMISSION_DENIED,
    Code::RESOURCE_EXHAUSTED,
    Code::FAILED_PRECONDITION,
    Code::ABORTED,
    Code::OUT_OF_RANGE,
    Code::UNIMPLEMENTED,
    Code::INTERNAL,
    Code::UNAVAILABLE,
    Code::DATA_LOSS,
    Code::UNAUTHENTICATED,
];

/// Parses a code name such as `NOT_FOUND` (case-insensitive).
pub fn code_from_name(name: &str) -> Option<Code> {
    CODES
        .into_iter()
        .find(|c| code_name(*c).eq_ignore_ascii_case(name))
}

/// The process-lookup failures of the real agent (`SandboxError` in upstream `sandbox.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No container with that id.
    #[error("Invalid container id")]
    InvalidContainerId,
    /// `exec_id` was empty and the container has no live init process.
    #[error("Process not found: init process missing")]
    InitProcessNotFound,
    /// No process with that exec id.
    #[error("Process not found: invalid exec id")]
    InvalidExecId,
}

impl LookupError {
    /// As `sandbox_err_to_ttrpc` answers it: the variant name, coded by kind.
    pub fn to_rpc(self) -> AgentError {
        let code = match self {
            LookupError::InvalidContainerId => Code::INVALID_ARGUMENT,
            _ => Code::NOT_FOUND,
        };
        AgentError::status(code, format!("{self:?}"))
    }

    /// As the calls that wrap the lookup in `anyhow` answer it (WriteStdin): INTERNAL with the
    /// error's text.
    pub fn to_internal(self) -> AgentError {
        AgentError::internal(self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_ended_is_ttrpc_closed_as_go_reports_it() {
        for e in [
            ttrpc::Error::Socket("early eof".into()),
            ttrpc::Error::Socket("Connection reset by peer (os error 104)".into()),
            ttrpc::Error::Socket("Broken pipe (os error 32)".into()),
            ttrpc::Error::Others("reserve channel capacity failed: channel closed".into()),
            ttrpc::Error::RemoteClosed,
        ] {
            let text = e.to_string();
            let got = AgentError::from_ttrpc(e);
            assert_eq!(got, AgentError::ConnectionClosed, "{text}");
            assert_eq!(got.to_string(), "ttrpc: closed");
        }
        assert!(matches!(
            AgentError::from_ttrpc(ttrpc::Error::Others("Unpack response error".into())),
            AgentError::Transport(_)
        ));
    }
}
