//! The built-in host runtime: runs a [`Scenario`](crate::schema::Scenario) in-process against a [`SimHypervisor`](sim_hypervisor::SimHypervisor) and its
//! guest, as one of the personas faithful to upstream (kata-facts section 4). `go@3.19.1` is
//! `go` at that tag: no GetDiagnosticData in its stop, the exit published after the stop, and
//! output that only a read error ends (on a 4.x agent's empty reads it reads again, forever):
//!
//! | | `go` (virtcontainers) | `rs` (runtime-rs) |
//! |---|---|---|
//! | sandbox start | CreateVM, StartVM, Check, CreateSandbox, GetGuestDetails | CreateVM, StartVM, CreateSandbox, GetGuestDetails |
//! | background | from the first task Start: GetOOMEvent loop (1 s back-off, ends on a closed or dead agent); monitor: VM check + Check every 5 s, markDead on failure | from sandbox start: GetOOMEvent loop (no back-off, never ends); Check every 30 s |
//! | lost connection | never re-dialled: later calls fail with `ttrpc: closed`; a failed wait is exit 255; the forced stop ignores RemoveContainer's error | never re-dialled: later calls fail with `ttrpc err: local stream closed`; a failed RemoveContainer is a warning |
//! | container | CopyFile (shared_fs none), CreateContainer (exec id = container id) | CopyFile, CreateContainer (exec id "") |
//! | output | ReadStdout/ReadStderr (32 KiB) to the end, then WaitProcess | the same with 8 KiB |
//! | stop | SignalProcess(9, all), WaitProcess, GetDiagnosticData*, RemoveContainer(0), RemoveStaleVirtiofsShareMounts | GetDiagnosticData*, SignalProcess(9), RemoveContainer(10) |
//! | sandbox stop | DestroySandbox, StopVM | StopVM (no DestroySandbox) |
//!
//! `*` only when shared_fs is none, the container's terminationMessagePolicy is `File` and
//! terminationMessagePath is set; non-empty data goes to the host file behind the mount whose
//! destination is that path. Every failure of that copy is a warning; teardown continues.
//! Go's deadlines come from [`sim_agent::Agent`]'s table; runtime-rs's are 30 s per request.
//! Run it on tokio's paused clock: a 60 s deadline costs nothing.
//!
//! Every run ends, whatever its faults ([`Limits`]): each step and the teardown after the last
//! step have a bound of virtual time, the steps together a budget of it, and the whole run a
//! bound of real time (a watchdog thread); a run that hits one reports the call the host was
//! stuck in (`stuck in WaitProcess{container_id=c1, exec_id=c1} after 3600 s of virtual
//! time`). No host loop spins on the paused clock: each poll of the OOM watcher waits a round
//! trip ([`POLL_ROUND_TRIP`]) of virtual time (runtime-rs's retry after an error
//! [`RS_OOM_RETRY`]), the monitor its period, and the records fold
//! repeats (the trace is [`Trace::folding`](sim_agent::Trace::folding), warnings fold the
//! same way), so memory grows with what changes, not with the number of polls. A panic in a
//! step, the host or the model is that run's error, with its message.
//!
//! The table above is data and one trait, not branches: the host reads the persona's
//! [`persona::Profile`] row and calls its [`persona::PersonaCalls`] impl, and has no `match`
//! on the persona of its own. By responsibility:
//!
//! - `world`: the run's world (the VM, its guest, the [`Transport`] to it, the host's state)
//!   and the entry points ([`run_blocking`], [`run_with_limits`], ...);
//! - `interp`: the step interpreter ([`run_body`]: each [`Step`](crate::schema::Step), within
//!   its bound, as calls of a [`Runtime`]: this host, or the shim driver's real shim);
//! - `lifecycle`: the host's sandbox, container, output, stop and teardown logic over the
//!   persona seam;
//! - [`persona`]: the profile rows and the call sequences of `go` and `rs`;
//! - `outcome`: the normalized record ([`Outcome`]) and the messages of a stuck run.

use std::time::Duration;

mod interp;
mod lifecycle;
mod outcome;
pub mod persona;
mod world;

pub use interp::{Runtime, run_body, run_step};
pub use lifecycle::{TERMINATION_MESSAGE_PATH, TERMINATION_MESSAGE_POLICY};
pub use outcome::{
    Firing, Outcome, ProcessOutcome, Stuck, failed, panic_message, stuck_call, waiting_on,
};
pub use world::{
    InProcess, Transport, Wire, agent_config, run, run_blocking, run_wire_blocking, run_with,
    run_with_limits, run_with_limits_traced, script,
};

/// How long (on the paused clock) one step may take before the run gives up on it.
pub const STEP_LIMIT: Duration = Duration::from_secs(3600);

/// How long (virtual time) the teardown after the last step may take.
pub const TEARDOWN_LIMIT: Duration = Duration::from_secs(3600);

/// How much virtual time the steps of one run may take together.
pub const RUN_LIMIT: Duration = Duration::from_secs(6 * 3600);

/// How much real time one run may take (a watchdog thread ends it).
pub const REAL_LIMIT: Duration = Duration::from_secs(120);

/// The virtual time one poll of a host loop costs at least (a round trip to the guest): a loop
/// whose calls answer at once still lets the clock move.
pub const POLL_ROUND_TRIP: Duration = Duration::from_millis(10);

/// The virtual time one retry of runtime-rs's OOM watcher costs after an error. The real
/// loop retries at once (thousands of times per second in the recordings); on the paused
/// clock a loop that never waits would never let virtual time advance, so each retry waits
/// the smallest step tokio's timer has (1 ms), about the real rate. The record stays bounded
/// because the trace and the warnings fold repeats (`GetOOMEvent -> UNAVAILABLE x18914`).
pub const RS_OOM_RETRY: Duration = Duration::from_millis(1);

/// How many fired faults a run records (the most recent ones; the rest are counted).
pub const FAULT_RECORD_LIMIT: usize = 10_000;

/// How many bytes of each stdio stream of a process the outcome keeps.
pub const OUTPUT_LIMIT: usize = 1 << 20;

/// The bounds of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Virtual time per step.
    pub step: Duration,
    /// Virtual time of the teardown after the last step.
    pub teardown: Duration,
    /// Virtual time of all steps together.
    pub run: Duration,
    /// Real time of the whole run.
    pub real: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            step: STEP_LIMIT,
            teardown: TEARDOWN_LIMIT,
            run: RUN_LIMIT,
            real: REAL_LIMIT,
        }
    }
}
