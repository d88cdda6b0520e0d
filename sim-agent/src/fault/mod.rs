//! Faults: where they enter the data path, and the seeded engine that decides them.
//!
//! Every call, in-process or from the wire, asks the installed [`FaultHook`] for a
//! [`Verdict`] before the model sees it; the default hook passes everything. [`FaultEngine`]
//! is the hook that runs the rule language of [`rule`] (`WaitProcess{container_id=c1}=hang`).
//! Verdicts that act on the transport (`drop`, `corrupt`) reach the server through a slot the
//! server puts in scope for each call; in-process they become
//! [`AgentError::ConnectionClosed`].

pub mod control;
pub mod engine;
pub mod rule;

use std::time::Duration;

use crate::error::AgentError;

pub use engine::{FaultEngine, FaultGuard, Fired, RuleId};
pub use rule::{Action, Rule, RuleError, Target, Term};

/// A call as the fault engine sees it.
#[derive(Debug, Clone)]
pub struct CallInfo<'a> {
    /// The RPC or hypervisor operation (`CreateContainer`, `StartVM`).
    pub target: &'a str,
    /// The request message name (`CreateContainerRequest`), for policy-style messages.
    pub request: &'a str,
    /// Its key fields.
    pub fields: &'a [(&'static str, String)],
    /// The server connection, `None` in-process.
    pub conn: Option<u64>,
    /// The sandbox (VM id) the call belongs to, when known.
    pub sandbox: Option<&'a str>,
}

impl CallInfo<'_> {
    /// A key field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
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
    /// The connection closes: before the call, or after its side effect.
    Drop {
        /// Whether the call runs first.
        after: bool,
    },
    /// The call runs; its answer is a malformed frame.
    Corrupt,
    /// The guest (its VM) dies.
    KillGuest,
    /// An OOM kill of this container (or the call's), then the call goes on.
    Oom(Option<String>),
    /// The agent restarts: connections drop, state is lost.
    RestartAgent,
    /// The call's data moves at this many bytes per second.
    Slow(u64),
}

impl Verdict {
    /// A short description for the trace; `None` for [`Verdict::Pass`].
    pub fn describe(&self) -> Option<String> {
        Some(match self {
            Verdict::Pass => return None,
            Verdict::Fail(e) => format!("error({e})"),
            Verdict::Delay(d) => format!("delay({d:?})"),
            Verdict::Hang => "hang".into(),
            Verdict::Drop { after: false } => "drop(before)".into(),
            Verdict::Drop { after: true } => "drop(after)".into(),
            Verdict::Corrupt => "corrupt".into(),
            Verdict::KillGuest => "kill_guest".into(),
            Verdict::Oom(None) => "oom".into(),
            Verdict::Oom(Some(c)) => format!("oom({c})"),
            Verdict::RestartAgent => "restart_agent".into(),
            Verdict::Slow(b) => format!("slow({b})"),
        })
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

/// What the transport must do with a call's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransportFault {
    /// Close the connection instead of answering.
    Drop,
    /// Send a malformed frame instead of the answer.
    Corrupt,
}

tokio::task_local! {
    /// What the transport serving the current call must do with its answer; the server puts
    /// a fresh slot in scope for each call it dispatches.
    pub(crate) static TRANSPORT: std::cell::Cell<Option<TransportFault>>;
}

/// Asks the transport serving this call (if any) to act on its answer.
/// Returns whether a server carries the call (in process, nothing does: the caller gets the
/// error its client would have made of the frame instead).
pub(crate) fn request_transport(f: TransportFault) -> bool {
    TRANSPORT.try_with(|slot| slot.set(Some(f))).is_ok()
}
