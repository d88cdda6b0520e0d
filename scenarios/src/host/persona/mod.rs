//! The personas: what makes the built-in host behave as one runtime or the other.
//!
//! A persona is two things, and only these two:
//!
//! - a [`Profile`] row: its constants and policies (exec ids, read sizes, intervals, retry
//!   delays, deadlines, the stop order, matching rules, when the exit is published, the
//!   words of a closed connection), each with where upstream (or a recording) says so;
//! - a [`PersonaCalls`] impl: the agent calls of each lifecycle step whose sequence differs
//!   between runtimes (sandbox start, create, start, the parts of a stop, the health check,
//!   the sandbox's stop), generic only over the agent client and the hypervisor, so that a
//!   driver of a real runtime could sit behind the same step interpreter.
//!
//! The host ([`super`]) reads the profile and calls the trait; it has no other persona
//! branch. Adding a persona (or a version of one) is one row plus, where its sequence
//! differs, one impl, and one arm in [`profile`] and [`calls`].

use std::path::PathBuf;
use std::time::Duration;

use sim_agent::protocols::agent;
use sim_agent::{Agent, AgentError, AgentRpc};
use sim_hypervisor::Hypervisor;

use crate::conn::ClosedWords;
use crate::record::{Level, Warning};
use crate::schema::Persona;

mod go;
mod rs;

pub use go::{GO, GO_3_19_1, GoCalls};
pub use rs::{RS, RsCalls};

/// The exec id a persona gives a container's init process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecId {
    /// The container's id.
    ContainerId,
    /// The empty string.
    Empty,
}

impl ExecId {
    /// The exec id of container `cid`'s init process.
    pub fn of(self, cid: &str) -> String {
        match self {
            ExecId::ContainerId => cid.to_string(),
            ExecId::Empty => String::new(),
        }
    }
}

/// When a persona starts its background loops (the OOM watcher and the liveness monitor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackgroundFrom {
    /// With the sandbox's start.
    SandboxStart,
    /// With the first task Start.
    FirstTaskStart,
}

/// When a persona publishes a container's exit to containerd (its task turns `STOPPED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitPublished {
    /// As soon as WaitProcess answers, before the container's stop.
    AfterWait,
    /// After the container's stop: the termination-message copy, the kill and the removal.
    AfterStop,
}

/// How a persona matches a mount's destination against the termination-message path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMatch {
    /// As strings: `/dev/termination-log/` is not `/dev/termination-log`.
    String,
    /// As paths (component-wise): a trailing `/` or a `//` does not matter.
    Path,
}

impl PathMatch {
    /// Whether a mount at `dest` is the one for `path`.
    pub fn matches(self, dest: &str, path: &str) -> bool {
        match self {
            PathMatch::String => dest == path,
            PathMatch::Path => std::path::Path::new(dest) == std::path::Path::new(path),
        }
    }
}

/// One part of a container's stop; a persona's [`Profile::stop_order`] lists its parts in
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPart {
    /// SIGKILL to the process ([`PersonaCalls::kill`]).
    Kill,
    /// Let the host's waiter reap the killed process (bounded; no agent call of its own).
    Reap,
    /// A second WaitProcess after the kill ([`PersonaCalls::wait_again`]).
    WaitAgain,
    /// Copy the termination message out (only when shared_fs is none, the policy is `File`
    /// and a path is set; [`PersonaCalls::termination_message`]).
    CopyTerminationMessage,
    /// RemoveContainer ([`PersonaCalls::remove_container`]).
    Remove,
    /// RemoveStaleVirtiofsShareMounts ([`PersonaCalls::remove_stale_mounts`]).
    RemoveStaleMounts,
}

/// What a failure of some host operation is to a persona.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureIs {
    /// An error of the step (or teardown) it happened in.
    Error,
    /// A warning; the operation goes on.
    Warning,
}

/// A persona's constants and policies: one row per persona ([`GO`], [`RS`], [`GO_3_19_1`]). Each row says,
/// per field, where upstream (file and tag) or a fault-truth recording shows the value.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// The persona this row is.
    pub persona: Persona,
    /// The upstream tree the row was read from.
    pub source: &'static str,
    /// The exec id of a container's init process (CreateContainer, WaitProcess, reads).
    pub exec_id: ExecId,
    /// Where the guest rootfs of a container lives: `{rootfs_parent}/{cid}/rootfs`.
    pub rootfs_parent: &'static str,
    /// The `len` of each ReadStdout/ReadStderr.
    pub stdio_read_size: u32,
    /// When the OOM watcher and the monitor start.
    pub background_from: BackgroundFrom,
    /// The period of the liveness monitor (health check).
    pub monitor_interval: Duration,
    /// Whether a failed health check marks the agent dead (every later call fails at once).
    pub monitor_marks_dead: bool,
    /// The pause of the OOM watcher after a failed GetOOMEvent.
    pub oom_retry: Duration,
    /// Whether the OOM watcher ends when the connection is gone (closed or dead agent).
    pub oom_gives_up_when_closed: bool,
    /// The warning the OOM watcher logs for a failed GetOOMEvent, if any.
    pub oom_failure_warning: Option<fn(&AgentError) -> Warning>,
    /// The deadline of each request the persona sets itself; `None`: the per-method table of
    /// [`sim_agent::Agent`].
    pub request_timeout: Option<Duration>,
    /// The parts of a container's stop, in order.
    pub stop_order: &'static [StopPart],
    /// How the termination-message path is matched to a mount's destination.
    pub term_path_match: PathMatch,
    /// Whether the host mount for the termination message is looked up before the guest is
    /// asked (and the guest not asked without one); otherwise the guest is asked first and
    /// the mount looked up for a non-empty message.
    pub term_mount_first: bool,
    /// When the exit of a container's init process is published.
    pub exit_published: ExitPublished,
    /// What the agent client answers once the connection is gone.
    pub closed_words: fn() -> ClosedWords,
    /// The level and message the host logs when a container's WaitProcess fails, if any (both
    /// runtimes count the failure as exit 255).
    pub wait_failure_logged: Option<(Level, &'static str)>,
    /// What a failed StopVM at the sandbox's stop is.
    pub stop_vm_failure: FailureIs,
    /// How the runtime's log prints an agent error ([`crate::words`]).
    pub render_error: fn(&AgentError) -> String,
    /// How the runtime's log prints a host I/O error.
    pub render_io_error: fn(&std::io::Error) -> String,
    /// The line logged for an OOM event forwarded for a container.
    pub oom_event: fn(&str) -> Warning,
    /// What the shim answers a task call about a container it did not create (a failed
    /// create leaves none): no agent call is made.
    pub no_container: fn(&str) -> String,
    /// Whether an empty read (a 4.x agent's end of output) ends the output; if not, only a
    /// read error does (an older agent's `eof`) and the reader reads again.
    pub empty_read_ends_output: bool,
}

/// The profile row of `persona`.
pub fn profile(persona: Persona) -> &'static Profile {
    match persona {
        Persona::Go => &GO,
        Persona::Rs => &RS,
        Persona::Go3191 => &GO_3_19_1,
    }
}

/// The lifecycle calls of `persona`, over agent client `A` and hypervisor `H`.
pub fn calls<A, H>(persona: Persona) -> &'static dyn PersonaCalls<A, H>
where
    A: Agent + AgentRpc + Sync + 'static,
    H: Hypervisor + 'static,
{
    match persona {
        Persona::Go => &GoCalls,
        Persona::Rs => &RsCalls,
        Persona::Go3191 => &GoCalls,
    }
}

/// Whether `e` says the agent connection is gone (closed, dead, or a broken transport).
pub fn connection_gone(e: &AgentError) -> bool {
    matches!(
        e,
        AgentError::ConnectionClosed
            | AgentError::Closed(_)
            | AgentError::DeadAgent
            | AgentError::Transport(_)
    )
}

/// The agent calls of the lifecycle steps whose sequence differs between personas. Generic
/// only over the agent client `A` and the hypervisor `H`: nothing of the host's own state
/// crosses it, so a driver of a real runtime could implement the same steps. A method
/// returns the agent's error for the host to word (or a [`Warning`] the persona logs and
/// goes on).
#[async_trait::async_trait]
pub trait PersonaCalls<A, H>: Send + Sync
where
    A: Agent + AgentRpc + Sync,
    H: Hypervisor,
{
    /// CreateSandbox and the calls of the sandbox's start after it (GetGuestDetails); the
    /// error is the step's, worded.
    async fn start_sandbox(
        &self,
        agent: &A,
        req: agent::CreateSandboxRequest,
    ) -> Result<(), String>;

    /// Copies a file into the guest (shared_fs none): `local` on the host, holding `data`,
    /// to `guest` with `mode`.
    async fn copy_file(
        &self,
        agent: &A,
        local: PathBuf,
        guest: String,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), AgentError>;

    /// CreateContainer.
    async fn create_container(
        &self,
        agent: &A,
        req: agent::CreateContainerRequest,
    ) -> Result<(), AgentError>;

    /// StartContainer (a task Start).
    async fn start_container(&self, agent: &A, cid: &str) -> Result<(), AgentError>;

    /// One round of the liveness monitor: the warning it logs when the sandbox is found
    /// dead (the monitor then ends).
    async fn health_check(&self, agent: &A, vm: &H, sandbox_id: &str) -> Option<Warning>;

    /// [`StopPart::Kill`]: SIGKILL to the container's process; a warning if logged.
    async fn kill(&self, agent: &A, cid: &str, exec_id: &str) -> Option<Warning>;

    /// [`StopPart::WaitAgain`]: a second WaitProcess after the kill (its error ignored).
    async fn wait_again(&self, _agent: &A, _cid: &str, _exec_id: &str) {}

    /// The termination message of container `cid` (GetDiagnosticData `termination_log`).
    async fn termination_message(&self, agent: &A, cid: &str) -> Result<String, AgentError>;

    /// [`StopPart::Remove`]: RemoveContainer; a warning if logged.
    async fn remove_container(&self, agent: &A, cid: &str) -> Option<Warning>;

    /// [`StopPart::RemoveStaleMounts`]: RemoveStaleVirtiofsShareMounts (its error ignored).
    async fn remove_stale_mounts(&self, _agent: &A) {}

    /// The agent calls of the sandbox's stop before StopVM (DestroySandbox); a warning if
    /// logged.
    async fn stop_sandbox(&self, agent: &A) -> Option<Warning>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Persona; 3] = Persona::ALL;

    #[test]
    fn each_row_is_its_persona_and_stops_with_a_kill_a_reap_and_a_removal() {
        for p in ALL {
            let row = profile(p);
            assert_eq!(row.persona, p);
            for part in [StopPart::Kill, StopPart::Reap, StopPart::Remove] {
                let n = row.stop_order.iter().filter(|s| **s == part).count();
                assert_eq!(n, 1, "{p:?} stops with {part:?} {n} times");
            }
            let kill = row.stop_order.iter().position(|s| *s == StopPart::Kill);
            let reap = row.stop_order.iter().position(|s| *s == StopPart::Reap);
            assert!(kill < reap, "{p:?} reaps before its kill");
        }
    }

    #[test]
    fn the_termination_path_matches_as_the_runtime_matches_it() {
        assert!(PathMatch::String.matches("/dev/termination-log", "/dev/termination-log"));
        assert!(!PathMatch::String.matches("/dev/termination-log/", "/dev/termination-log"));
        assert!(PathMatch::Path.matches("/dev/termination-log/", "/dev/termination-log"));
        assert!(PathMatch::Path.matches("/dev//termination-log", "/dev/termination-log"));
        assert_eq!(ExecId::ContainerId.of("c1"), "c1");
        assert_eq!(ExecId::Empty.of("c1"), "");
    }
}
