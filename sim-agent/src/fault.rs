//! The hook where faults enter the data path, between dispatch and the guest model.
//!
//! Every call, in-process or from the wire, asks the installed [`FaultHook`] for a
//! [`Verdict`] before the model sees it. The default hook passes everything.

use std::time::Duration;

use crate::error::AgentError;
use crate::rpc::Method;

/// A call as the fault engine sees it.
#[derive(Debug, Clone)]
pub struct CallInfo<'a> {
    /// The RPC.
    pub method: Method,
    /// Its key fields.
    pub fields: &'a [(&'static str, String)],
    /// The server connection, `None` in-process.
    pub conn: Option<u64>,
}

/// What happens to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The call goes on to the model.
    Pass,
    /// The call is answered with this error instead.
    Fail(AgentError),
    /// The call waits this long, then goes on.
    Delay(Duration),
    /// The call never answers.
    Hang,
}

impl Verdict {
    /// A short description for the trace.
    pub fn describe(&self) -> Option<String> {
        match self {
            Verdict::Pass => None,
            Verdict::Fail(e) => Some(format!("error({e})")),
            Verdict::Delay(d) => Some(format!("delay({d:?})")),
            Verdict::Hang => Some("hang".into()),
        }
    }
}

/// Decides the fate of calls. Implementations must be deterministic given their seed.
pub trait FaultHook: Send + Sync + std::fmt::Debug {
    /// The verdict for one call.
    fn decide(&self, call: &CallInfo<'_>) -> Verdict;
}

/// The hook that lets every call through.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFaults;

impl FaultHook for NoFaults {
    fn decide(&self, _call: &CallInfo<'_>) -> Verdict {
        Verdict::Pass
    }
}
