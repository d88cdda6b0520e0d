//! [`HypervisorError`] and its one conversion to a ttrpc status.

use ttrpc::Code;

use crate::types::VmState;

/// Why a hypervisor operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypervisorError {
    /// The operation is not valid in the VM's state.
    #[error("cannot {op} a VM that is {state}")]
    InvalidTransition {
        /// The operation.
        op: &'static str,
        /// The state the VM was in.
        state: VmState,
    },
    /// No VM with this id.
    #[error("VM {0:?} not found")]
    NotFound(String),
    /// A VM with this id exists already.
    #[error("VM {0:?} already exists")]
    AlreadyExists(String),
    /// A resource limit was hit.
    #[error("{0}")]
    Limit(String),
    /// The request itself is wrong (an unknown device, a bad config).
    #[error("{0}")]
    Invalid(String),
    /// The VM did not boot in time.
    #[error("VM {id:?} did not boot within {timeout_secs} s")]
    BootTimeout {
        /// The VM.
        id: String,
        /// The timeout it was given.
        timeout_secs: u64,
    },
    /// The VMM is gone.
    #[error("VMM of {0:?} is not running")]
    NotRunning(String),
    /// The hypervisor does not implement this (as the remote hypervisor does not).
    #[error("{0} is not implemented")]
    Unimplemented(&'static str),
    /// The guest agent could not be served.
    #[error("agent: {0}")]
    Agent(String),
    /// A file-system error in the state directory.
    #[error("{0}")]
    Io(String),
    /// The remote service answered an error, or could not be reached.
    #[error("{message}")]
    Remote {
        /// The status code.
        code: Code,
        /// Its message.
        message: String,
    },
}

impl HypervisorError {
    /// The ttrpc status code this error answers with on the wire.
    pub fn code(&self) -> Code {
        match self {
            HypervisorError::InvalidTransition { .. } => Code::FAILED_PRECONDITION,
            HypervisorError::NotFound(_) => Code::NOT_FOUND,
            HypervisorError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            HypervisorError::Limit(_) => Code::RESOURCE_EXHAUSTED,
            HypervisorError::Invalid(_) => Code::INVALID_ARGUMENT,
            HypervisorError::BootTimeout { .. } => Code::DEADLINE_EXCEEDED,
            HypervisorError::NotRunning(_) => Code::UNAVAILABLE,
            HypervisorError::Unimplemented(_) => Code::UNIMPLEMENTED,
            HypervisorError::Agent(_) | HypervisorError::Io(_) => Code::INTERNAL,
            HypervisorError::Remote { code, .. } => *code,
        }
    }

    /// The one conversion to a ttrpc status.
    pub fn to_status(&self) -> ttrpc::Status {
        ttrpc::get_status(self.code(), self.to_string())
    }
}

impl From<HypervisorError> for ttrpc::Error {
    fn from(e: HypervisorError) -> Self {
        ttrpc::Error::RpcStatus(e.to_status())
    }
}

impl From<ttrpc::Error> for HypervisorError {
    fn from(e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(s) => HypervisorError::Remote {
                code: s.code(),
                message: s.message().to_string(),
            },
            other => HypervisorError::Remote {
                code: Code::UNAVAILABLE,
                message: other.to_string(),
            },
        }
    }
}

/// Results of hypervisor operations.
pub type Result<T, E = HypervisorError> = std::result::Result<T, E>;
