//! The world of one run: the VM, its guest and the transport to it, the host's state, and
//! the entry points that set them up and run a scenario.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use sim_agent::fault::{FaultEngine, FaultGuard};
use sim_agent::{Agent, AgentRpc, RemoteAgent, SimAgent, SimConfig, Trace};
use sim_hypervisor::{Hypervisor, SimHypervisor, SimVmConfig};
use tokio::task::JoinHandle;

use super::interp::run_body;
use super::outcome::{
    Outcome, ProcessOutcome, failed, outcome, panic_message, stuck_call, stuck_message,
};
use super::{FAULT_RECORD_LIMIT, Limits};
use crate::conn::Connection;
use crate::record::{TaskState, TaskStatus, Warning};
use crate::schema::{Persona, Scenario, SharedFs};

#[derive(Debug)]
pub(super) struct HostContainer {
    pub(super) exec_id: String,
    pub(super) host_file: Option<PathBuf>,
    /// The host-file bind mounts of the container's spec as containerd gave it: destination,
    /// host source.
    pub(super) host_mounts: Vec<(String, PathBuf)>,
    pub(super) term_path: Option<String>,
    pub(super) policy: String,
    pub(super) removed: bool,
}

pub(super) type Collected = Arc<Mutex<BTreeMap<String, ProcessOutcome>>>;

/// The task states containerd sees, and the exits the host learnt but has not published.
#[derive(Debug, Default)]
pub(super) struct TaskBook {
    pub(super) states: BTreeMap<String, TaskState>,
    pub(super) exits: BTreeMap<String, u32>,
}

impl TaskBook {
    /// The shim published `status` for `cid` at `at`.
    pub(super) fn publish(&mut self, cid: &str, status: TaskStatus, at: Duration) {
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
    pub(super) fn exited(&mut self, cid: &str, code: u32, at: Duration) {
        self.exits.entry(cid.to_string()).or_insert(code);
        if let Some(t) = self.states.get_mut(cid)
            && t.exited_at.is_none()
        {
            t.exited_at = Some(at);
        }
    }

    /// Publishes `cid`'s exit at `at`, once the host learnt it.
    pub(super) fn publish_exit(&mut self, cid: &str, at: Duration) {
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

pub(super) type Tasks = Arc<Mutex<TaskBook>>;

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
pub(super) type Conn<T> = Connection<<T as Transport>::Agent>;

/// The host runtime during one run.
pub(super) struct Host<T: Transport> {
    pub(super) persona: Persona,
    pub(super) shared_fs: SharedFs,
    pub(super) vm: SimHypervisor,
    /// The one agent connection of the sandbox (never re-dialled).
    pub(super) agent: Option<Conn<T>>,
    /// The guest itself, for guest-side events.
    pub(super) guest: Option<SimAgent>,
    pub(super) engine: FaultEngine,
    pub(super) guards: Vec<(String, FaultGuard)>,
    pub(super) host_dir: PathBuf,
    pub(super) rng: ChaCha8Rng,
    pub(super) containers: BTreeMap<String, HostContainer>,
    pub(super) waiters: BTreeMap<String, JoinHandle<Result<i32, String>>>,
    pub(super) processes: Collected,
    pub(super) background: Vec<(&'static str, JoinHandle<()>)>,
    pub(super) log: Arc<Mutex<Log>>,
    pub(super) tasks: Tasks,
    /// When the run started: task states are published at virtual times from here.
    pub(super) started: tokio::time::Instant,
    pub(super) sandbox_up: bool,
    /// The sandbox's id (runtime-rs names it in its health-check warning).
    pub(super) sandbox_id: String,
    pub(super) vm_stopped: bool,
    /// The run's record of calls (the stuck messages read it).
    pub(super) trace: Trace,
    /// The calls a stuck message blamed already.
    pub(super) blamed: Vec<u64>,
    /// As each step (and the teardown) started: its index and the faults fired by then.
    pub(super) marks: Vec<(usize, u64)>,
}

#[derive(Debug, Default)]
pub(super) struct Log {
    pub(super) errors: Vec<String>,
    /// Warnings, consecutive repeats folded.
    pub(super) warnings: Vec<Warning>,
    /// Where the host was stuck, each time a bound ran out.
    pub(super) stuck: Vec<super::Stuck>,
}

impl Log {
    pub(super) fn warn(&mut self, w: Warning) {
        Warning::push_folded(&mut self.warnings, w);
    }
}

/// Real time on a paused clock: a thread that fires `expired` after `limit` unless the run
/// ends first (dropping the watchdog stops the thread at once).
pub(super) struct Watchdog {
    expired: tokio::sync::oneshot::Receiver<()>,
    /// Its entry in the alarm thread's list (removed when the run ends).
    key: (std::time::Instant, u64),
}

/// The real-time alarms of every run in the process: one thread sleeps until the earliest and
/// fires it (a run's paused clock cannot time its own real time), instead of a thread per run.
struct Alarms {
    due: std::sync::Mutex<
        std::collections::BTreeMap<(std::time::Instant, u64), tokio::sync::oneshot::Sender<()>>,
    >,
    changed: std::sync::Condvar,
    next: std::sync::atomic::AtomicU64,
}

fn alarms() -> &'static Alarms {
    static ALARMS: std::sync::OnceLock<&'static Alarms> = std::sync::OnceLock::new();
    ALARMS.get_or_init(|| {
        let a: &'static Alarms = Box::leak(Box::new(Alarms {
            due: std::sync::Mutex::default(),
            changed: std::sync::Condvar::new(),
            next: std::sync::atomic::AtomicU64::new(0),
        }));
        let spawned = std::thread::Builder::new()
            .name("kata-sim-watchdog".into())
            .spawn(move || {
                let mut due = a.due.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    let now = std::time::Instant::now();
                    while let Some(entry) = due.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        let _ = entry.remove().send(());
                    }
                    due = match due.keys().next().map(|k| k.0) {
                        Some(at) => {
                            a.changed
                                .wait_timeout(due, at.saturating_duration_since(now))
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                        None => a.changed.wait(due).unwrap_or_else(|p| p.into_inner()),
                    };
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no real-time watchdog for runs: {e}");
        }
        a
    })
}

impl Watchdog {
    pub(super) fn start(limit: Duration) -> Self {
        let (fire, expired) = tokio::sync::oneshot::channel();
        let a = alarms();
        let at = std::time::Instant::now()
            .checked_add(limit)
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(86_400 * 365));
        let key = (
            at,
            a.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        a.due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, fire);
        a.changed.notify_one();
        Watchdog { expired, key }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        alarms()
            .due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
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
/// caller keeps a clone to watch the run live ([`waiting_on`](super::waiting_on)).
pub async fn run_with_limits_traced<T: Transport>(
    s: &Scenario,
    limits: Limits,
    trace: Trace,
) -> Outcome {
    let mut watchdog = Watchdog::start(limits.real);
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
        trace: trace.clone(),
        blamed: Vec::new(),
        marks: Vec::new(),
    };
    for rule in &s.faults {
        host.guards
            .push((rule.text.clone(), engine.install_rule(rule.clone())));
    }
    let body = std::panic::AssertUnwindSafe(run_body(&mut host, s, limits));
    let ended = tokio::select! {
        biased;
        r = futures::FutureExt::catch_unwind(body) => match r {
            Ok(teardown_ok) => Ended::Normally(teardown_ok),
            Err(p) => Ended::Panicked(panic_message(&*p)),
        },
        Ok(()) = &mut watchdog.expired => Ended::OutOfTime,
    };
    let teardown_ok = match ended {
        Ended::Normally(ok) => ok,
        Ended::Panicked(m) => {
            host.error(format!("the run panicked: {m}"));
            false
        }
        Ended::OutOfTime => {
            let call = stuck_call(&trace, &mut host.blamed);
            host.log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .stuck
                .push(super::Stuck {
                    what: "the run".into(),
                    call: call.clone(),
                });
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
pub(super) enum Ended {
    /// Its steps and teardown ran (whether the teardown completed).
    Normally(bool),
    /// Something in it panicked, with this message.
    Panicked(String),
    /// The real-time watchdog fired.
    OutOfTime,
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
