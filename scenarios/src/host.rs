//! The built-in host runtime: runs a [`Scenario`] in-process against a [`SimHypervisor`] and its
//! guest, as one of two personas faithful to upstream (kata-facts section 4):
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
//! repeats (the trace is [`Trace::folding`], warnings fold the same way), so memory grows
//! with what changes, not with the number of polls. A panic in a step, the host or the model
//! is that run's error, with its message.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use sim_agent::fault::{FaultEngine, FaultGuard};
use sim_agent::protocols::{agent, oci};
use sim_agent::{Agent, AgentRpc, CallOpts, RemoteAgent, SimAgent, SimConfig, Trace};
use sim_hypervisor::{Hypervisor, HypervisorConfig, Network, SimHypervisor, SimVmConfig};
use tokio::task::JoinHandle;

use crate::conn::{ClosedWords, Connection};
use crate::record::{Call, FaultFired, Level, TaskState, TaskStatus, Warning};
use crate::schema::{Persona, Scenario, SharedFs, Step, Teardown};
use crate::words;

const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
const TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
const SHARED: &str = "/run/kata-containers/shared/containers";

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

/// What one process did, as the host saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcessOutcome {
    /// Its exit status, once the host reaped it.
    pub exit_code: Option<i32>,
    /// All of its stdout.
    pub stdout: String,
    /// All of its stderr.
    pub stderr: String,
}

/// The normalized record of a run: what a snapshot holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The scenario.
    pub name: String,
    /// The persona that ran it.
    pub persona: Persona,
    /// The seed.
    pub seed: u64,
    /// Every agent RPC and VM operation, in order (identical consecutive ones folded).
    pub calls: Vec<Call>,
    /// The faults that fired, in order (identical consecutive ones folded).
    pub faults: Vec<FaultFired>,
    /// How many faults fired before the oldest one [`Outcome::faults`] keeps (a bounded
    /// engine's record); they count toward `faults_fired`.
    #[serde(skip_serializing_if = "is_zero")]
    pub faults_not_kept: u64,
    /// Processes by `container` or `container/exec`.
    pub processes: BTreeMap<String, ProcessOutcome>,
    /// The host termination-message file of each container that has one (`None`: absent).
    pub host_files: BTreeMap<String, Option<String>>,
    /// What containerd sees of each container's task at the end: the status the persona
    /// last published and when ([`TaskState`]).
    pub tasks: BTreeMap<String, TaskState>,
    /// Errors the host reported (failed steps).
    pub errors: Vec<String>,
    /// Warnings the host logged (and went on), identical consecutive ones folded.
    pub warnings: Vec<Warning>,
    /// Whether the sandbox was torn down.
    pub teardown: Teardown,
    /// Containers left in the guest at the end, sorted.
    pub guest_containers: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Outcome {
    /// How many faults fired in all: the ones kept (each standing for its count) and the
    /// ones not kept.
    pub fn faults_fired(&self) -> u64 {
        self.faults
            .iter()
            .fold(self.faults_not_kept, |n, f| n.saturating_add(f.count))
    }
}

#[derive(Debug)]
struct HostContainer {
    exec_id: String,
    host_file: Option<PathBuf>,
    /// The host-file bind mounts of the container's spec as containerd gave it: destination,
    /// host source.
    host_mounts: Vec<(String, PathBuf)>,
    term_path: Option<String>,
    policy: String,
    removed: bool,
}

type Collected = Arc<Mutex<BTreeMap<String, ProcessOutcome>>>;

/// When a persona publishes a container's exit to containerd (its task turns `STOPPED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitPublished {
    /// As soon as WaitProcess answers, before the container's stop (the Go shim at main:
    /// `containerd-shim-v2/wait.go` publishes "*before* the sandbox teardown"; 3.19.1 did so
    /// after it).
    AfterWait,
    /// After the container's stop: the termination-message copy, the kill and the removal
    /// (runtime-rs: `process.rs` `run_io_wait` sets `Stopped` after `stop_process`).
    AfterStop,
}

fn exit_published(persona: Persona) -> ExitPublished {
    match persona {
        Persona::Go => ExitPublished::AfterWait,
        Persona::Rs => ExitPublished::AfterStop,
    }
}

/// The task states containerd sees, and the exits the host learnt but has not published.
#[derive(Debug, Default)]
struct TaskBook {
    states: BTreeMap<String, TaskState>,
    exits: BTreeMap<String, u32>,
}

impl TaskBook {
    /// The shim published `status` for `cid` at `at`.
    fn publish(&mut self, cid: &str, status: TaskStatus, at: Duration) {
        let t = self.states.entry(cid.to_string()).or_insert(TaskState {
            status,
            exit_status: None,
            published_at: at,
            exited_at: None,
        });
        if t.status == TaskStatus::Stopped {
            return;
        }
        t.status = status;
        t.published_at = at;
    }

    /// The host's WaitProcess for `cid`'s init process answered `code` at `at`.
    fn exited(&mut self, cid: &str, code: u32, at: Duration) {
        self.exits.entry(cid.to_string()).or_insert(code);
        if let Some(t) = self.states.get_mut(cid)
            && t.exited_at.is_none()
        {
            t.exited_at = Some(at);
        }
    }

    /// Publishes `cid`'s exit at `at`, once the host learnt it.
    fn publish_exit(&mut self, cid: &str, at: Duration) {
        let Some(code) = self.exits.get(cid).copied() else {
            return;
        };
        if let Some(t) = self.states.get_mut(cid)
            && t.status != TaskStatus::Stopped
        {
            t.status = TaskStatus::Stopped;
            t.exit_status = Some(code);
            t.published_at = at;
        }
    }
}

type Tasks = Arc<Mutex<TaskBook>>;

/// How the host reaches the guest's agent.
pub trait Transport: Send + Sync + 'static {
    /// The agent client.
    type Agent: Agent + AgentRpc + Clone + Send + Sync + 'static;
    /// Connects to the guest of a started VM.
    fn connect(
        vm: &SimHypervisor,
        guest: &SimAgent,
    ) -> impl std::future::Future<Output = Result<Self::Agent, String>> + Send;
}

/// In-process: the host calls the guest model directly (through the fault engine).
#[derive(Debug)]
pub struct InProcess;

impl Transport for InProcess {
    type Agent = SimAgent;
    async fn connect(_vm: &SimHypervisor, guest: &SimAgent) -> Result<SimAgent, String> {
        Ok(guest.clone())
    }
}

/// Over the wire: ttrpc on the VM's real agent socket.
#[derive(Debug)]
pub struct Wire;

impl Transport for Wire {
    type Agent = RemoteAgent;
    async fn connect(vm: &SimHypervisor, _guest: &SimAgent) -> Result<RemoteAgent, String> {
        let url = vm.get_agent_socket().await.map_err(|e| e.to_string())?;
        RemoteAgent::connect(&url)
            .await
            .map_err(|e| format!("dial {url}: {e}"))
    }
}

/// The host's agent connection over a transport.
type Conn<T> = Connection<<T as Transport>::Agent>;

/// The host runtime during one run.
struct Host<T: Transport> {
    persona: Persona,
    shared_fs: SharedFs,
    vm: SimHypervisor,
    /// The one agent connection of the sandbox (never re-dialled).
    agent: Option<Conn<T>>,
    /// The guest itself, for guest-side events.
    guest: Option<SimAgent>,
    engine: FaultEngine,
    guards: Vec<(String, FaultGuard)>,
    host_dir: PathBuf,
    rng: ChaCha8Rng,
    containers: BTreeMap<String, HostContainer>,
    waiters: BTreeMap<String, JoinHandle<Result<i32, String>>>,
    processes: Collected,
    background: Vec<(&'static str, JoinHandle<()>)>,
    log: Arc<Mutex<Log>>,
    tasks: Tasks,
    /// When the run started: task states are published at virtual times from here.
    started: tokio::time::Instant,
    sandbox_up: bool,
    /// The sandbox's id (runtime-rs names it in its health-check warning).
    sandbox_id: String,
    vm_stopped: bool,
}

#[derive(Debug, Default)]
struct Log {
    errors: Vec<String>,
    /// Warnings, consecutive repeats folded.
    warnings: Vec<Warning>,
}

impl Log {
    fn warn(&mut self, w: Warning) {
        match self.warnings.last_mut() {
            Some(last) if last.same(&w) => last.count = last.count.saturating_add(w.count),
            _ => self.warnings.push(w),
        }
    }
}

/// The call the host is stuck in: the most recent call that has not answered, other than the
/// background loops' (`GetOOMEvent` always waits; the monitor's checks only if nothing else
/// does), and not one already blamed for an earlier stop.
pub fn stuck_call(trace: &Trace, blamed: &mut Vec<u64>) -> Option<Call> {
    use sim_agent::{Method, Op, VmOp};
    let events = trace.events();
    let pending = |e: &&sim_agent::TraceEvent| {
        !e.status.answered()
            && e.method != Op::Agent(Method::GetOOMEvent)
            && !blamed.contains(&e.seq)
    };
    let monitor = |e: &&sim_agent::TraceEvent| {
        matches!(e.method, Op::Agent(Method::Check) | Op::Vm(VmOp::CheckVM))
    };
    let e = events
        .iter()
        .rev()
        .filter(pending)
        .find(|e| !monitor(e))
        .or_else(|| events.iter().rev().filter(pending).find(monitor))?;
    blamed.push(e.seq);
    Some(Call::from(e))
}

/// The call a running host waits on now (as a stopped run would blame it), for a live
/// progress line.
pub fn waiting_on(trace: &Trace) -> Option<String> {
    stuck_call(trace, &mut Vec::new()).map(|c| c.short())
}

/// What the guest model noted (such as a shell word its userland did not understand) on the
/// calls about `call`'s process (its container, and its exec when both calls name one), or on
/// any call when `call` names no container: in order, each once.
fn notes(trace: &Trace, call: Option<&Call>) -> Vec<String> {
    fn named(v: Option<&str>) -> Option<&str> {
        v.filter(|v| !v.is_empty())
    }
    let container = call.and_then(|c| named(c.field("container_id")));
    let exec = call.and_then(|c| named(c.field("exec_id")));
    let mut out: Vec<String> = Vec::new();
    for e in trace.events() {
        let Some(n) = &e.note else { continue };
        let other_container = container.is_some_and(|c| named(e.field("container_id")) != Some(c));
        let other_exec = matches!(
            (exec, named(e.field("exec_id"))),
            (Some(a), Some(b)) if a != b
        );
        if other_container || other_exec || out.contains(n) {
            continue;
        }
        out.push(n.clone());
    }
    out
}

/// What a run that stopped waiting reports: where it was stuck and for how long, and what the
/// guest model noted that explains it (a program that runs until signalled).
fn stuck_message(
    what: &str,
    trace: &Trace,
    call: Option<Call>,
    waited: Duration,
    clock: &str,
) -> String {
    // Whole seconds as `3600`, shorter waits as `0.25`.
    let secs = waited.as_secs_f64();
    let notes = notes(trace, call.as_ref());
    let mut text = match call {
        Some(c) => format!(
            "{what}: stuck in {} after {secs} s of {clock} time",
            c.short()
        ),
        None => format!("{what}: did not finish within {secs} s of {clock} time"),
    };
    if !notes.is_empty() {
        text.push_str(&format!(" (the guest noted: {})", notes.join("; ")));
    }
    text
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Real time on a paused clock: a thread that fires `expired` after `limit` unless the run
/// ends first (dropping the watchdog stops the thread at once).
struct Watchdog {
    expired: tokio::sync::oneshot::Receiver<()>,
    _done: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn start(limit: Duration) -> Self {
        let (fire, expired) = tokio::sync::oneshot::channel();
        let (done, ended) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("kata-sim-watchdog".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = ended.recv_timeout(limit) {
                    let _ = fire.send(());
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no real-time watchdog for this run: {e}");
        }
        Watchdog {
            expired,
            _done: done,
        }
    }
}

fn rs_opts() -> CallOpts {
    CallOpts::with_timeout(Duration::from_secs(30))
}

fn closed(e: &sim_agent::AgentError) -> bool {
    matches!(
        e,
        sim_agent::AgentError::ConnectionClosed
            | sim_agent::AgentError::Closed(_)
            | sim_agent::AgentError::DeadAgent
            | sim_agent::AgentError::Transport(_)
    )
}

impl<T: Transport> Host<T> {
    fn warn(&self, w: Warning) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).warn(w);
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, TaskBook> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Virtual time since the run started.
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn error(&self, e: String) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .errors
            .push(e);
    }

    fn agent(&self) -> Result<&Conn<T>, String> {
        self.agent
            .as_ref()
            .ok_or_else(|| "no sandbox: create_sandbox first".to_string())
    }

    fn guest(&self) -> Result<&SimAgent, String> {
        self.guest
            .as_ref()
            .ok_or_else(|| "no sandbox: create_sandbox first".to_string())
    }

    /// Stops the background loops; one that panicked is an error of the run.
    async fn stop_background(&mut self) {
        for (name, b) in std::mem::take(&mut self.background) {
            if b.is_finished() {
                if let Err(e) = b.await
                    && e.is_panic()
                {
                    self.error(format!(
                        "{name} panicked: {}",
                        panic_message(&*e.into_panic())
                    ));
                }
            } else {
                b.abort();
            }
        }
    }

    fn exec_key(container: &str, exec: Option<&str>) -> String {
        match exec {
            Some(e) => format!("{container}/{e}"),
            None => container.to_string(),
        }
    }

    async fn create_sandbox(&mut self, id: &str, hostname: &str) -> Result<(), String> {
        let mut config = HypervisorConfig::default();
        config
            .annotations
            .insert("io.kubernetes.cri.sandbox-name".into(), id.to_string());
        self.vm
            .create_vm(id.to_string(), Network::default(), config)
            .await
            .map_err(|e| format!("CreateVM: {e}"))?;
        self.vm
            .start_vm(600)
            .await
            .map_err(|e| format!("StartVM: {e}"))?;
        let guest = self.vm.agent().ok_or("the VM has no guest")?;
        self.guest = Some(guest.clone());
        let words = match self.persona {
            Persona::Go => ClosedWords::go(),
            Persona::Rs => ClosedWords::rs(),
        };
        let agent = Connection::new(T::connect(&self.vm, &guest).await?, guest.clone(), words);
        self.agent = Some(agent.clone());
        self.sandbox_up = true;
        self.sandbox_id = id.to_string();
        let req = agent::CreateSandboxRequest {
            hostname: hostname.to_string(),
            ..sim_agent::requests::create_sandbox(id)
        };
        match self.persona {
            Persona::Go => {
                Agent::start_sandbox(&agent, req)
                    .await
                    .map_err(|e| format!("CreateSandbox: {e}"))?;
                Agent::get_guest_details(
                    &agent,
                    agent::GuestDetailsRequest {
                        mem_block_size: true,
                        mem_hotplug_probe: true,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| format!("GetGuestDetails: {e}"))?;
            }
            Persona::Rs => {
                AgentRpc::create_sandbox(&agent, req, rs_opts())
                    .await
                    .map_err(|e| format!("CreateSandbox: {e}"))?;
                AgentRpc::get_guest_details(
                    &agent,
                    agent::GuestDetailsRequest {
                        mem_block_size: true,
                        mem_hotplug_probe: true,
                        ..Default::default()
                    },
                    rs_opts(),
                )
                .await
                .map_err(|e| format!("GetGuestDetails: {e}"))?;
            }
        }
        // runtime-rs starts its OOM watcher and health check with the sandbox (sandbox.rs
        // `start`); the Go shim with the sandbox container's task Start (start.go:
        // `watchSandbox`, `watchOOMEvents`), see `Step::Start`.
        if self.persona == Persona::Rs {
            self.spawn_background(agent, id);
        }
        Ok(())
    }

    /// The OOM loop and the liveness monitor of the persona.
    fn spawn_background(&mut self, agent: Conn<T>, sandbox_id: &str) {
        let persona = self.persona;
        let sandbox_id = sandbox_id.to_string();
        let log = Arc::clone(&self.log);
        let a = agent.clone();
        self.background.push((
            "the OOM watcher",
            tokio::spawn(async move {
                loop {
                    let pause = match Agent::get_oom_event(&a).await {
                        Ok(cid) => {
                            log.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .warn(words::oom_event(persona, &cid));
                            POLL_ROUND_TRIP
                        }
                        // Go stops watching only on "ttrpc: closed" or "Dead agent"; any other
                        // error is logged at info and retried after a second (wait.go
                        // `watchOOMEvents`, 3.19.1; fault-truth/go-i-sleep5: every 1.000 s).
                        Err(e) if persona == Persona::Go && closed(&e) => return,
                        Err(_) if persona == Persona::Go => Duration::from_secs(1),
                        // runtime-rs never gives up, whatever the error (a closed connection
                        // included: fault-truth/rs-d-drop repeats "failed to get oom event"
                        // until the shim exits), and retries with no pause at all (sandbox.rs;
                        // the recordings' README: thousands per second).
                        Err(e) => {
                            log.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .warn(words::rs_oom_event_failed(&e));
                            RS_OOM_RETRY
                        }
                    };
                    // Every poll waits on virtual time: a call that answers at once (a fault
                    // on GetOOMEvent) must not spin the loop on a paused clock.
                    tokio::time::sleep(pause).await;
                }
            }),
        ));
        let log = Arc::clone(&self.log);
        let vm = self.vm.clone();
        let monitor = tokio::spawn(async move {
            let period = match persona {
                Persona::Go => Duration::from_secs(5),
                Persona::Rs => Duration::from_secs(30),
            };
            loop {
                tokio::time::sleep(period).await;
                // virtcontainers/monitor.go wraps the cause; the shim's watchSandbox logs it.
                let failed = match persona {
                    Persona::Go => match vm.check().await {
                        Err(e) => Some(format!("failed to ping hypervisor process: {e}")),
                        Ok(()) => Agent::check(&agent).await.err().map(|e| {
                            format!("failed to ping agent: {}", words::render(Persona::Go, &e))
                        }),
                    }
                    .map(|why| {
                        Warning::new(
                            Level::Warning,
                            words::SANDBOX_STOPPED_UNEXPECTEDLY,
                            Some(why),
                        )
                    }),
                    Persona::Rs => AgentRpc::check(&agent, Default::default(), rs_opts())
                        .await
                        .err()
                        .map(|_| words::rs_health_check_failed(&sandbox_id)),
                };
                if let Some(w) = failed {
                    if persona == Persona::Go {
                        agent.mark_dead();
                    }
                    log.lock().unwrap_or_else(|p| p.into_inner()).warn(w);
                    return;
                }
            }
        });
        self.background.push(("the monitor", monitor));
    }

    async fn create_container(
        &mut self,
        spec: &crate::schema::ContainerSpec,
    ) -> Result<(), String> {
        let agent = self.agent()?.clone();
        let cid = spec.id.clone();
        let exec_id = match self.persona {
            Persona::Go => cid.clone(),
            Persona::Rs => String::new(),
        };
        let rootfs = match self.persona {
            Persona::Go => format!("{SHARED}/{cid}/rootfs"),
            Persona::Rs => format!("/run/kata-containers/{cid}/rootfs"),
        };
        let mut annotations = spec.annotations.clone();
        let mut mounts = vec![oci::Mount {
            destination: "/proc".into(),
            source: "proc".into(),
            type_: "proc".into(),
            ..Default::default()
        }];
        let mut host_file = None;
        let policy = spec
            .termination_message_policy
            .unwrap_or_default()
            .as_str()
            .to_string();
        // (destination, content, mode, host source)
        let mut files: Vec<(String, Vec<u8>, u32, Option<PathBuf>)> = Vec::new();
        if let Some(path) = &spec.termination_message_path {
            annotations.insert(TERMINATION_MESSAGE_PATH.into(), path.clone());
            annotations.insert(TERMINATION_MESSAGE_POLICY.into(), policy.clone());
            let file = self.host_dir.join(format!("{cid}-termination-log"));
            std::fs::write(&file, b"").map_err(|e| format!("host file: {e}"))?;
            if spec.host_file_unwritable {
                // Even root cannot write a file where a directory is.
                std::fs::remove_file(&file).map_err(|e| e.to_string())?;
                std::fs::create_dir(&file).map_err(|e| e.to_string())?;
            }
            host_file = Some(file.clone());
            // The mount's destination may be spelt apart from the annotation.
            let dest = spec
                .termination_message_mount
                .clone()
                .unwrap_or_else(|| path.clone());
            files.push((dest, Vec::new(), 0o100644, Some(file)));
        }
        for (dest, content) in &spec.mounts {
            files.push((dest.clone(), content.clone().into_bytes(), 0o100644, None));
        }
        let mut host_mounts = Vec::new();
        for (dest, content, mode, source) in files {
            // Without sharing, the runtime copies each file in and mounts the copy; with
            // virtio-fs the guest sees the shared directory (modelled as the same copy).
            let name = dest
                .rsplit('/')
                .find(|n| !n.is_empty())
                .unwrap_or("file")
                .to_string();
            let guest = format!("{SHARED}/{cid}-{:016x}-{name}", self.rng.next_u64());
            let local = self.host_dir.join(format!("copy-{cid}-{name}"));
            std::fs::write(&local, &content).map_err(|e| e.to_string())?;
            host_mounts.push((dest.clone(), source.unwrap_or_else(|| local.clone())));
            match self.persona {
                Persona::Go => Agent::copy_file(&agent, local, guest.clone())
                    .await
                    .map_err(|e| format!("CopyFile {guest}: {e}"))?,
                Persona::Rs => {
                    AgentRpc::copy_file(
                        &agent,
                        agent::CopyFileRequest {
                            path: guest.clone(),
                            file_size: content.len() as i64,
                            file_mode: mode,
                            data: content,
                            ..Default::default()
                        },
                        rs_opts(),
                    )
                    .await
                    .map_err(|e| format!("CopyFile {guest}: {e}"))?;
                }
            }
            mounts.push(oci::Mount {
                destination: dest,
                source: guest,
                type_: "bind".into(),
                options: vec!["rbind".into(), "rw".into()],
                ..Default::default()
            });
        }
        let caps = ["CAP_CHOWN", "CAP_KILL"].map(String::from).to_vec();
        let process = oci::Process {
            Terminal: spec.terminal,
            Args: spec.args.clone(),
            Env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            Cwd: "/".into(),
            Capabilities: Some(oci::LinuxCapabilities {
                Bounding: caps.clone(),
                Effective: caps.clone(),
                Permitted: caps,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let oci = oci::Spec {
            Version: "1.1.0".into(),
            Process: Some(process).into(),
            Root: Some(oci::Root {
                Path: rootfs,
                ..Default::default()
            })
            .into(),
            Mounts: mounts,
            Annotations: annotations.clone().into_iter().collect(),
            ..Default::default()
        };
        let oci_annotations = annotations;
        let req = agent::CreateContainerRequest {
            container_id: cid.clone(),
            exec_id: exec_id.clone(),
            OCI: Some(oci).into(),
            ..Default::default()
        };
        match self.persona {
            Persona::Go => Agent::create_container(&agent, req).await,
            Persona::Rs => AgentRpc::create_container(&agent, req, rs_opts())
                .await
                .map(|_| ()),
        }
        .map_err(|e| format!("CreateContainer {cid}: {e}"))?;
        let now = self.now();
        self.tasks().publish(&cid, TaskStatus::Created, now);
        // As upstream, the copy is decided from the container's annotations.
        let term_path = oci_annotations
            .get(TERMINATION_MESSAGE_PATH)
            .filter(|p| !p.is_empty())
            .cloned();
        let policy = oci_annotations
            .get(TERMINATION_MESSAGE_POLICY)
            .cloned()
            .unwrap_or(policy);
        self.containers.insert(
            cid,
            HostContainer {
                exec_id,
                host_file,
                host_mounts,
                term_path,
                policy,
                removed: false,
            },
        );
        Ok(())
    }

    /// Reads a process's output to its end, then reaps it.
    fn spawn_io(&mut self, cid: &str, exec: Option<&str>, eid: String) {
        let Some(agent) = self.agent.clone() else {
            return;
        };
        let key = Self::exec_key(cid, exec);
        let persona = self.persona;
        let log = Arc::clone(&self.log);
        let processes = Arc::clone(&self.processes);
        // Only a container's init process is a task containerd lists.
        let task_book = exec
            .is_none()
            .then(|| (Arc::clone(&self.tasks), self.started));
        processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default();
        let cid = cid.to_string();
        let k = key.clone();
        let task = tokio::spawn(async move {
            let len = match persona {
                Persona::Go => 32 * 1024,
                Persona::Rs => 8 * 1024,
            };
            let reader = |stderr: bool| {
                let agent = agent.clone();
                let (cid, eid) = (cid.clone(), eid.clone());
                let processes = Arc::clone(&processes);
                let k = k.clone();
                async move {
                    let mut dropped = 0usize;
                    loop {
                        let r = if stderr {
                            Agent::read_process_stderr(&agent, cid.clone(), eid.clone(), len).await
                        } else {
                            Agent::read_process_stdout(&agent, cid.clone(), eid.clone(), len).await
                        };
                        // Empty data (4.x agents) and any error (older agents' "eof") end it.
                        let data = match r {
                            Ok(d) if !d.is_empty() => d,
                            _ => break,
                        };
                        let full = {
                            let mut p = processes.lock().unwrap_or_else(|p| p.into_inner());
                            let entry = p.entry(k.clone()).or_default();
                            let out = if stderr {
                                &mut entry.stderr
                            } else {
                                &mut entry.stdout
                            };
                            let room = OUTPUT_LIMIT.saturating_sub(out.len());
                            let keep = data.len().min(room);
                            out.push_str(&String::from_utf8_lossy(&data[..keep]));
                            dropped = dropped.saturating_add(data.len() - keep);
                            keep < data.len()
                        };
                        if full {
                            // An endless writer: the reads beyond what the outcome keeps each
                            // cost a round trip, so they do not spin on a paused clock.
                            tokio::time::sleep(POLL_ROUND_TRIP).await;
                        }
                    }
                    if dropped > 0 {
                        let mut p = processes.lock().unwrap_or_else(|p| p.into_inner());
                        let entry = p.entry(k.clone()).or_default();
                        let out = if stderr {
                            &mut entry.stderr
                        } else {
                            &mut entry.stdout
                        };
                        out.push_str(&format!("\n[kata-sim: {dropped} more bytes not kept]\n"));
                    }
                }
            };
            tokio::join!(reader(false), reader(true));
            let status = Agent::wait_process(&agent, cid.clone(), eid.clone()).await;
            if let Some((tasks, started)) = task_book {
                // A failed wait is exit 255 to both (wait.go's exitCode255, runtime-rs's
                // UNKNOWN_EXIT_STATUS).
                let code = status
                    .as_ref()
                    .ok()
                    .and_then(|c| u32::try_from(*c).ok())
                    .unwrap_or(255);
                let now = started.elapsed();
                let mut book = tasks.lock().unwrap_or_else(|p| p.into_inner());
                book.exited(&cid, code, now);
                if exit_published(persona) == ExitPublished::AfterWait {
                    book.publish_exit(&cid, now);
                }
            }
            let code = match (persona, status) {
                (_, Ok(code)) => Ok(code),
                // runtime-rs counts a failed wait as exit 255.
                (Persona::Rs, Err(_)) => Ok(255),
                // The Go shim logs the failure and the task ends with 255 (wait.go, `if ret
                // == 0 { ret = exitCode255 }`; fault-truth/go-h-drop-echo: ctr exit 255).
                (Persona::Go, Err(e)) => {
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .warn(words::said(
                            persona,
                            Level::Error,
                            words::GO_WAIT_FAILED,
                            &e,
                        ));
                    Ok(255)
                }
            };
            if let Ok(c) = &code {
                processes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(k)
                    .or_default()
                    .exit_code = Some(*c);
            }
            code
        });
        self.waiters.insert(key, task);
    }

    async fn wait(&mut self, key: &str) -> Result<(), String> {
        let task = self
            .waiters
            .remove(key)
            .ok_or_else(|| format!("{key} is not started"))?;
        match task.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("wait for {key}: {e}")),
        }
    }

    /// Stops a container; a persona that publishes the exit after the stop publishes it
    /// then, whether the stop failed or not (neither runtime holds the exit on a failed
    /// removal), unless the stop never ends.
    async fn stop(&mut self, cid: &str) -> Result<(), String> {
        let r = self.stop_container(cid).await;
        if exit_published(self.persona) == ExitPublished::AfterStop {
            let now = self.now();
            self.tasks().publish_exit(cid, now);
        }
        r
    }

    async fn stop_container(&mut self, cid: &str) -> Result<(), String> {
        let agent = self.agent()?.clone();
        let Some(c) = self.containers.get(cid) else {
            return Err(format!("container {cid} is not created"));
        };
        if c.removed {
            return Ok(());
        }
        let copy = self.shared_fs == SharedFs::None && c.policy == "File" && c.term_path.is_some();
        let host_mounts = c.host_mounts.clone();
        let term_path = c.term_path.clone().unwrap_or_default();
        let exec_id = c.exec_id.clone();
        match self.persona {
            Persona::Go => {
                // container.go's stop ignores the kill's error and logs nothing.
                let _ = Agent::signal_process(&agent, cid.into(), exec_id.clone(), 9, true).await;
                self.let_waiter_reap(cid).await;
                // Usually fails: the shim's waiter reaped the process already. Ignored, as
                // upstream does.
                let _ = Agent::wait_process(&agent, cid.into(), exec_id.clone()).await;
                if copy {
                    self.copy_termination_message(&agent, cid, &term_path, &host_mounts)
                        .await;
                }
                // The shim's waiter stops the container with force: a failed RemoveContainer
                // is ignored without a word and the stop goes on (container.go `stop`: `err
                // != nil && !force`; fault-truth/go-f-echo: no retry, nothing logged).
                let _ = Agent::stop_container(&agent, cid.into()).await;
                let _ = Agent::remove_stale_virtiofs_share_mounts(&agent).await;
            }
            Persona::Rs => {
                if copy {
                    self.copy_termination_message(&agent, cid, &term_path, &host_mounts)
                        .await;
                }
                let req = agent::SignalProcessRequest {
                    container_id: cid.into(),
                    exec_id: String::new(),
                    signal: 9,
                    ..Default::default()
                };
                if let Err(e) = AgentRpc::signal_process(&agent, req, rs_opts()).await
                    && !closed(&e)
                {
                    self.warn(words::said(
                        Persona::Rs,
                        Level::Warning,
                        words::RS_KILL_FAILED,
                        &e,
                    ));
                }
                self.let_waiter_reap(cid).await;
                let req = agent::RemoveContainerRequest {
                    container_id: cid.into(),
                    timeout: 10,
                    ..Default::default()
                };
                // cleanup_container with force (container_inner.rs): a failure is a warning
                // and the cleanup goes on (fault-truth/rs-d-drop).
                if let Err(e) = AgentRpc::remove_container(&agent, req, rs_opts()).await {
                    self.warn(words::said(
                        Persona::Rs,
                        Level::Warning,
                        words::RS_REMOVE_CONTAINER_FAILED,
                        &e,
                    ));
                }
            }
        }
        if self.shared_fs == SharedFs::VirtioFs {
            // The shared file is the host file: what the container wrote is there.
            self.sync_shared(cid);
        }
        if let Some(c) = self.containers.get_mut(cid) {
            c.removed = true;
        }
        Ok(())
    }

    /// After a kill, the shim's waiter (output at its end, then WaitProcess) reaps the process
    /// before the stop goes on, as on a real host where the signal wakes it first. Bounded: a
    /// process that ignores the kill does not hold the stop.
    async fn let_waiter_reap(&mut self, cid: &str) {
        if let Some(w) = self.waiters.remove(cid) {
            match tokio::time::timeout(Duration::from_secs(1), w).await {
                Ok(Ok(Err(e))) => self.error(e),
                Ok(_) => {}
                Err(_) => self.warn(Warning::once(format!(
                    "{cid} did not exit within 1 s of SIGKILL (kata-sim)"
                ))),
            }
        }
    }

    /// virtio-fs: the host file shows what the guest wrote to the shared copy.
    fn sync_shared(&self, cid: &str) {
        let (Some(agent), Some(c)) = (self.guest.as_ref(), self.containers.get(cid)) else {
            return;
        };
        let (Some(file), Some(_)) = (&c.host_file, &c.term_path) else {
            return;
        };
        let prefix = format!("{SHARED}/{cid}-");
        let root = agent.guest_root().join(SHARED.trim_start_matches('/'));
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = format!("{SHARED}/{}", e.file_name().to_string_lossy());
                if name.starts_with(&prefix)
                    && name.ends_with("-termination-log")
                    && let Ok(data) = std::fs::read(e.path())
                {
                    let _ = std::fs::write(file, data);
                }
            }
        }
    }

    /// The host file behind the mount whose destination is the termination-message path, as
    /// the persona matches them: the Go shim as strings (`m.Destination ==
    /// terminationMessagePath`, virtcontainers/container.go), runtime-rs as paths
    /// (`m.destination() == Path::new(&termination_path)`, container_manager/container.rs).
    fn term_host_file<'m>(
        &self,
        path: &str,
        mounts: &'m [(String, PathBuf)],
    ) -> Option<&'m PathBuf> {
        mounts
            .iter()
            .find(|(dest, _)| match self.persona {
                Persona::Go => dest == path,
                Persona::Rs => std::path::Path::new(dest) == std::path::Path::new(path),
            })
            .map(|(_, file)| file)
    }

    /// Copies the termination message out of the guest (shared_fs none, policy File, a
    /// path). runtime-rs looks for the host mount first and does not ask the guest without
    /// one; Go asks, then looks for the mount when the message is not empty.
    async fn copy_termination_message(
        &self,
        agent: &Conn<T>,
        cid: &str,
        path: &str,
        mounts: &[(String, PathBuf)],
    ) {
        let host = self.term_host_file(path, mounts);
        let no_mount = || Warning::new(Level::Warning, words::TERM_MESSAGE_NO_HOST_MOUNT, None);
        if self.persona == Persona::Rs && host.is_none() {
            self.warn(no_mount());
            return;
        }
        let r = match self.persona {
            Persona::Go => {
                Agent::get_diagnostic_data(agent, "termination_log".into(), cid.into()).await
            }
            Persona::Rs => AgentRpc::get_diagnostic_data(
                agent,
                agent::GetDiagnosticDataRequest {
                    log_type: "termination_log".into(),
                    container_id: cid.into(),
                    ..Default::default()
                },
                rs_opts(),
            )
            .await
            .map(|r| r.data),
        };
        match r {
            Ok(data) if data.is_empty() => {}
            Ok(data) => {
                let Some(file) = host else {
                    self.warn(no_mount());
                    return;
                };
                if let Err(e) = std::fs::write(file, data.as_bytes()) {
                    self.warn(Warning::new(
                        Level::Warning,
                        words::TERM_MESSAGE_WRITE_FAILED,
                        Some(words::io_error(self.persona, &e)),
                    ));
                }
            }
            Err(e) => self.warn(words::said(
                self.persona,
                Level::Warning,
                words::TERM_MESSAGE_GET_FAILED,
                &e,
            )),
        }
    }

    async fn destroy_sandbox(&mut self) -> Result<(), String> {
        if !self.sandbox_up {
            return Ok(());
        }
        let mut first_error = None;
        let live: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, c)| !c.removed)
            .map(|(id, _)| id.clone())
            .collect();
        for cid in live {
            // A forced sandbox stop goes on past a container that does not stop.
            if let Err(e) = self.stop(&cid).await {
                self.warn(Warning::once(format!(
                    "stopping {cid} during teardown: {e} (kata-sim)"
                )));
            }
        }
        if self.persona == Persona::Go
            && let Some(agent) = self.agent.clone()
            && let Err(e) = Agent::stop_sandbox(&agent).await
        {
            self.warn(words::said(
                Persona::Go,
                Level::Warning,
                words::AGENT_DID_NOT_STOP_SANDBOX,
                &e,
            ));
        }
        self.stop_background().await;
        if !self.vm_stopped && self.vm.state() == Some(sim_hypervisor::VmState::Stopped) {
            self.warn(Warning::once(
                "the VM was already stopped (it died) (kata-sim)",
            ));
            self.vm_stopped = true;
        }
        if !self.vm_stopped {
            match self.vm.stop_vm(false).await {
                Ok(()) => {}
                Err(e) if self.persona == Persona::Rs => self.warn(Warning::once(format!(
                    "StopVM failed (VM may already be gone): {e} (kata-sim)"
                ))),
                Err(e) => {
                    first_error.get_or_insert(format!("StopVM: {e}"));
                }
            }
            self.vm_stopped = true;
        }
        self.sandbox_up = false;
        first_error.map_or(Ok(()), Err)
    }
}

/// Runs a scenario with the built-in host. Call it on a runtime with a paused clock
/// (`tokio::test(start_paused = true)` or a current-thread runtime with `start_paused`).
pub async fn run(s: &Scenario) -> Outcome {
    run_with::<InProcess>(s).await
}

/// The guest agent a scenario asks for: its release, seed and scripted programs.
pub fn agent_config(s: &Scenario) -> SimConfig {
    let mut agent = SimConfig::for_version(s.config.agent_version.unwrap_or_default());
    agent.seed = s.seed;
    agent.scripts = s
        .guest
        .programs
        .iter()
        .map(|(cid, p)| (sim_agent::ScriptMatch::container(cid), script(p)))
        .collect();
    agent
}

/// Runs a scenario with the built-in host over a given transport, within [`Limits::default`].
pub async fn run_with<T: Transport>(s: &Scenario) -> Outcome {
    run_with_limits::<T>(s, Limits::default()).await
}

/// Runs a scenario with the built-in host over a given transport, within `limits`: it always
/// ends, and a step, the teardown or the run that hits its bound is an error naming the call
/// the host was stuck in.
pub async fn run_with_limits<T: Transport>(s: &Scenario, limits: Limits) -> Outcome {
    run_with_limits_traced::<T>(s, limits, Trace::folding()).await
}

/// [`run_with_limits`], recording every call into `trace` (a [`Trace::folding`] one): the
/// caller keeps a clone to watch the run live ([`waiting_on`]).
pub async fn run_with_limits_traced<T: Transport>(
    s: &Scenario,
    limits: Limits,
    trace: Trace,
) -> Outcome {
    let watchdog = Watchdog::start(limits.real);
    let state = match tempfile::Builder::new().prefix("kata-sim-run-").tempdir() {
        Ok(d) => d,
        Err(e) => return failed(s, format!("a temp dir for the run: {e}")),
    };
    let host_dir = state.path().join("host");
    if let Err(e) = std::fs::create_dir_all(&host_dir) {
        return failed(s, format!("the host dir: {e}"));
    }
    let engine = FaultEngine::bounded(s.seed, FAULT_RECORD_LIMIT);
    let mut agent = agent_config(s);
    agent.trace = Some(trace.clone());
    let vm = SimHypervisor::new(SimVmConfig {
        state_dir: state.path().join("vms"),
        boot_time: Duration::from_millis(10),
        agent,
        trace: Some(trace.clone()),
        faults: Some(Arc::new(engine.clone())),
        ..Default::default()
    });
    let mut host = Host::<T> {
        persona: s.config.persona,
        shared_fs: s.config.shared_fs,
        vm,
        agent: None,
        guest: None,
        engine: engine.clone(),
        guards: Vec::new(),
        host_dir,
        rng: ChaCha8Rng::seed_from_u64(s.seed),
        containers: BTreeMap::new(),
        waiters: BTreeMap::new(),
        processes: Arc::default(),
        background: Vec::new(),
        log: Arc::default(),
        tasks: Arc::default(),
        started: tokio::time::Instant::now(),
        sandbox_up: false,
        sandbox_id: String::new(),
        vm_stopped: false,
    };
    for rule in &s.faults {
        host.guards
            .push((rule.text.clone(), engine.install_rule(rule.clone())));
    }
    let mut blamed = Vec::new();
    let body = std::panic::AssertUnwindSafe(run_body(&mut host, s, limits, &trace, &mut blamed));
    let ended = tokio::select! {
        biased;
        r = futures::FutureExt::catch_unwind(body) => match r {
            Ok(teardown_ok) => Ended::Normally(teardown_ok),
            Err(p) => Ended::Panicked(panic_message(&*p)),
        },
        Ok(()) = watchdog.expired => Ended::OutOfTime,
    };
    let teardown_ok = match ended {
        Ended::Normally(ok) => ok,
        Ended::Panicked(m) => {
            host.error(format!("the run panicked: {m}"));
            false
        }
        Ended::OutOfTime => {
            let call = stuck_call(&trace, &mut blamed);
            host.error(stuck_message("the run", &trace, call, limits.real, "real"));
            false
        }
    };
    for (_, w) in std::mem::take(&mut host.waiters) {
        w.abort();
    }
    host.stop_background().await;
    outcome(s, &host, &trace, &engine, teardown_ok)
}

/// How the body of a run ended.
enum Ended {
    /// Its steps and teardown ran (whether the teardown completed).
    Normally(bool),
    /// Something in it panicked, with this message.
    Panicked(String),
    /// The real-time watchdog fired.
    OutOfTime,
}

/// The steps, then the teardown, each within its bound; returns whether the teardown
/// completed.
async fn run_body<T: Transport>(
    host: &mut Host<T>,
    s: &Scenario,
    limits: Limits,
    trace: &Trace,
    blamed: &mut Vec<u64>,
) -> bool {
    let started = tokio::time::Instant::now();
    for (i, step) in s.steps.iter().enumerate() {
        let used = started.elapsed();
        let Some(left) = limits.run.checked_sub(used).filter(|l| !l.is_zero()) else {
            host.error(format!(
                "steps[{i}]: not run: the steps used their budget of {} s of virtual time",
                limits.run.as_secs()
            ));
            break;
        };
        let limit = limits.step.min(left);
        let t0 = tokio::time::Instant::now();
        // A step that never ends (a hang without a deadline) ends the run's patience instead.
        match tokio::time::timeout(limit, run_step(host, step)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => host.error(format!("steps[{i}]: {e}")),
            Err(_) => {
                let call = stuck_call(trace, blamed);
                host.error(stuck_message(
                    &format!("steps[{i}]"),
                    trace,
                    call,
                    t0.elapsed(),
                    "virtual",
                ));
            }
        }
    }
    // Whatever the steps left running is reaped, as a shim exiting would.
    if !host.sandbox_up {
        return true;
    }
    let t0 = tokio::time::Instant::now();
    match tokio::time::timeout(limits.teardown, host.destroy_sandbox()).await {
        Ok(r) => r.is_ok(),
        Err(_) => {
            let call = stuck_call(trace, blamed);
            host.error(stuck_message(
                "teardown",
                trace,
                call,
                t0.elapsed(),
                "virtual",
            ));
            false
        }
    }
}

/// The outcome of a run that could not start or did not end (`error` says why): no call, an
/// incomplete teardown.
pub fn failed(s: &Scenario, error: String) -> Outcome {
    Outcome {
        name: s.name.clone(),
        persona: s.config.persona,
        seed: s.seed,
        calls: Vec::new(),
        faults: Vec::new(),
        faults_not_kept: 0,
        processes: BTreeMap::new(),
        host_files: BTreeMap::new(),
        tasks: BTreeMap::new(),
        errors: vec![error],
        warnings: Vec::new(),
        teardown: Teardown::Incomplete,
        guest_containers: Vec::new(),
    }
}

/// The normalized record of a run, from what the host and the guest left.
fn outcome<T: Transport>(
    s: &Scenario,
    host: &Host<T>,
    trace: &Trace,
    engine: &FaultEngine,
    teardown_ok: bool,
) -> Outcome {
    let guest_containers = host
        .guest
        .as_ref()
        .map(|a| {
            if a.is_dead() {
                Vec::new()
            } else {
                a.container_ids()
            }
        })
        .unwrap_or_default();
    // Torn down: the VM is stopped, and no container is left in a guest that still lives.
    let guest_dead = host.guest.as_ref().is_some_and(SimAgent::is_dead);
    let all_removed = host.containers.values().all(|c| c.removed) || guest_dead;
    let teardown = if teardown_ok && all_removed && host.vm_stopped == host.agent.is_some() {
        Teardown::Completed
    } else {
        Teardown::Incomplete
    };
    let host_files = host
        .containers
        .iter()
        .filter_map(|(id, c)| {
            c.host_file.as_ref().map(|f| {
                let content = std::fs::read(f)
                    .ok()
                    .map(|d| String::from_utf8_lossy(&d).into_owned());
                (id.clone(), content)
            })
        })
        .collect();
    let log = std::mem::take(&mut *host.log.lock().unwrap_or_else(|p| p.into_inner()));
    let processes = host
        .processes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Outcome {
        name: s.name.clone(),
        persona: s.config.persona,
        seed: s.seed,
        calls: trace.events().iter().map(Call::from).collect(),
        faults: FaultFired::folded(&engine.fired()),
        faults_not_kept: engine.fired_dropped(),
        processes,
        host_files,
        tasks: host.tasks().states.clone(),
        errors: log.errors,
        warnings: log.warnings,
        teardown,
        guest_containers,
    }
}

async fn run_step<T: Transport>(host: &mut Host<T>, step: &Step) -> Result<(), String> {
    match step {
        Step::CreateSandbox(spec) => {
            let id = spec.id.clone().unwrap_or_else(|| "sandbox".into());
            host.create_sandbox(&id, spec.hostname.as_deref().unwrap_or(""))
                .await
        }
        Step::CreateContainer(spec) => host.create_container(spec).await,
        Step::Start(cid) => {
            let agent = host.agent()?.clone();
            match host.persona {
                Persona::Go => Agent::start_container(&agent, cid.clone()).await,
                Persona::Rs => AgentRpc::start_container(
                    &agent,
                    agent::StartContainerRequest {
                        container_id: cid.clone(),
                        ..Default::default()
                    },
                    rs_opts(),
                )
                .await
                .map(|_| ()),
            }
            .map_err(|e| format!("StartContainer {cid}: {e}"))?;
            if host.persona == Persona::Go && host.background.is_empty() {
                // Go's monitor and OOM watcher start with the first task Start (start.go;
                // fault-truth/go-i-sleep5: GetOOMEvent after StartContainer, Check 5 s later).
                let sandbox_id = host.sandbox_id.clone();
                host.spawn_background(agent.clone(), &sandbox_id);
            }
            let now = host.now();
            host.tasks().publish(cid, TaskStatus::Running, now);
            let eid = host
                .containers
                .get(cid)
                .map(|c| c.exec_id.clone())
                .unwrap_or_default();
            host.spawn_io(cid, None, eid);
            Ok(())
        }
        Step::Exec(e) => {
            let agent = host.agent()?.clone();
            let process = oci::Process {
                Args: e.args.clone(),
                Cwd: "/".into(),
                ..Default::default()
            };
            Agent::exec(
                &agent,
                agent::ExecProcessRequest {
                    container_id: e.container.clone(),
                    exec_id: e.id.clone(),
                    process: Some(process).into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| format!("ExecProcess {}/{}: {err}", e.container, e.id))?;
            host.spawn_io(&e.container, Some(&e.id), e.id.clone());
            Ok(())
        }
        Step::WriteStdin(w) => {
            let agent = host.agent()?.clone();
            let eid = process_id(host, &w.container, w.exec.as_deref());
            Agent::write_process_stdin(
                &agent,
                w.container.clone(),
                eid,
                w.data.clone().into_bytes(),
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("WriteStdin: {e}"))
        }
        Step::CloseStdin(p) => {
            let agent = host.agent()?.clone();
            let eid = process_id(host, &p.container, p.exec.as_deref());
            Agent::close_process_stdin(&agent, p.container.clone(), eid)
                .await
                .map_err(|e| format!("CloseStdin: {e}"))
        }
        Step::Kill(k) => {
            let agent = host.agent()?.clone();
            // Both runtimes signal a container's init process with exec id "" (recorded).
            let eid = k.exec.clone().unwrap_or_default();
            Agent::signal_process(
                &agent,
                k.container.clone(),
                eid,
                k.signal.unwrap_or(15),
                false,
            )
            .await
            .map_err(|e| format!("SignalProcess: {e}"))
        }
        Step::Wait(key) => host.wait(key).await,
        Step::Stop(cid) => host.stop(cid).await,
        Step::Pause(cid) => {
            let agent = host.agent()?.clone();
            Agent::pause_container(&agent, cid.clone())
                .await
                .map_err(|e| format!("PauseContainer: {e}"))?;
            let now = host.now();
            host.tasks().publish(cid, TaskStatus::Paused, now);
            Ok(())
        }
        Step::Resume(cid) => {
            let agent = host.agent()?.clone();
            Agent::resume_container(&agent, cid.clone())
                .await
                .map_err(|e| format!("ResumeContainer: {e}"))?;
            let now = host.now();
            host.tasks().publish(cid, TaskStatus::Running, now);
            Ok(())
        }
        Step::Update(u) => {
            let agent = host.agent()?.clone();
            let resources = oci::LinuxResources {
                CPU: Some(oci::LinuxCPU {
                    Shares: u.cpu_shares.unwrap_or(0),
                    ..Default::default()
                })
                .into(),
                Memory: Some(oci::LinuxMemory {
                    Limit: u.memory_limit.unwrap_or(0),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            };
            Agent::update_container(&agent, u.container.clone(), resources)
                .await
                .map_err(|e| format!("UpdateContainer: {e}"))
        }
        Step::Stats(cid) => {
            let agent = host.agent()?.clone();
            Agent::stats_container(&agent, cid.clone())
                .await
                .map(|_| ())
                .map_err(|e| format!("StatsContainer: {e}"))
        }
        Step::DestroySandbox => host.destroy_sandbox().await,
        Step::PushOom(cid) => host
            .guest()?
            .oom_kill(cid)
            .map_err(|e| format!("push_oom {cid}: {e}")),
        Step::KillGuest => {
            host.vm.kill().await;
            Ok(())
        }
        Step::RemoveTerminationMessage(cid) => host
            .guest()?
            .remove_termination_message(cid)
            .map_err(|e| format!("remove_termination_message: {e}")),
        Step::WriteTerminationMessage(t) => host
            .guest()?
            .write_termination_message(&t.container, t.data.as_bytes())
            .map_err(|e| format!("write_termination_message: {e}")),
        Step::AdvanceTime(secs) => {
            // In 0..=STEP_LIMIT by its type.
            tokio::time::sleep(secs.duration()).await;
            Ok(())
        }
        Step::AddFault(rule) => {
            let g = host.engine.install_rule(rule.clone());
            host.guards.push((rule.text.clone(), g));
            Ok(())
        }
        Step::RemoveFault(rule) => {
            host.guards.retain(|(r, _)| *r != rule.text);
            Ok(())
        }
    }
}

fn process_id<T: Transport>(host: &Host<T>, cid: &str, exec: Option<&str>) -> String {
    match exec {
        Some(e) => e.to_string(),
        None => host
            .containers
            .get(cid)
            .map(|c| c.exec_id.clone())
            .unwrap_or_default(),
    }
}

/// A scenario's scripted program as a guest process script.
pub fn script(p: &crate::schema::Program) -> sim_agent::ProcessScript {
    let mut s = sim_agent::ProcessScript::default()
        .stdout(p.stdout.clone())
        .stderr(p.stderr.clone())
        // At most a day by its type.
        .run_time(p.run_secs.map(|secs| secs.duration()));
    s.exit_code = p.exit_code;
    s.on_signal = p.on_signal.into();
    s
}

/// Runs a scenario to its outcome on a fresh current-thread runtime with a paused clock, so
/// timeouts and delays cost no real time and the run is deterministic.
pub fn run_blocking(s: &Scenario) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    rt.block_on(run(s))
}

/// Runs a scenario over real sockets (ttrpc on the VM's unix socket) on the real clock: the
/// same data path a real runtime takes. Hangs and delays cost real time here.
pub fn run_wire_blocking(s: &Scenario) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(run_with::<Wire>(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_agent::{CallStatus, Method};

    #[test]
    fn a_stuck_run_names_the_call_and_what_the_guest_noted() {
        let trace = Trace::folding();
        let c = |id: &str| ("container_id", id.to_string());
        let s = trace.begin(Method::StartContainer, None, &[c("c1")]);
        trace.note(
            s,
            "sh -c \"echo $HOME\": \"$\": runs until signalled".into(),
        );
        trace.end(s, CallStatus::Ok, "");
        let s = trace.begin(Method::StartContainer, None, &[c("c2")]);
        trace.note(s, "c2's word".into());
        trace.end(s, CallStatus::Ok, "");
        trace.begin(Method::GetOOMEvent, None, &[]);
        let mut blamed = Vec::new();
        // Nothing is pending but the OOM watcher: the run did not finish, every note counts.
        assert_eq!(stuck_call(&trace, &mut blamed), None);
        assert_eq!(
            stuck_message("the run", &trace, None, Duration::from_secs(120), "real"),
            "the run: did not finish within 120 s of real time (the guest noted: \
             sh -c \"echo $HOME\": \"$\": runs until signalled; c2's word)"
        );
        trace.begin(
            Method::WaitProcess,
            None,
            &[c("c1"), ("exec_id", "c1".into())],
        );
        let call = stuck_call(&trace, &mut blamed);
        assert_eq!(
            stuck_message(
                "steps[3]",
                &trace,
                call,
                Duration::from_secs(3600),
                "virtual"
            ),
            "steps[3]: stuck in WaitProcess{container_id=c1, exec_id=c1} after 3600 s of \
             virtual time (the guest noted: sh -c \"echo $HOME\": \"$\": runs until signalled)"
        );
        assert_eq!(
            stuck_call(&trace, &mut blamed),
            None,
            "a call is blamed once"
        );
    }
}
