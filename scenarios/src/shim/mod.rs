//! The shim driver: kata-sim plays containerd (and kubelet) to an unmodified shim binary
//! through containerd's shim v2 protocol, and replays every scenario step as task-API calls.
//!
//! Per run (`kata-sim run --driver shim:PATH`):
//!
//! 1. It asks the binary what it is ([`launch::identify`]: a Kata Go shim, runtime-rs,
//!    containerd's runc shim, or another shim v2).
//! 2. For a Kata shim it serves Kata's remote-hypervisor protocol with the scenario's guest,
//!    faults and seed (as `kata-sim serve`), and writes the runtime's configuration (the Go and
//!    the runtime-rs key names differ: [`config`]), or takes the user's (`--runtime-config`).
//! 3. It serves the events service ([`events`]) at the shim's `TTRPC_ADDRESS`, and starts the
//!    shim as containerd 1.6 does ([`launch`]): `-namespace -address -publish-binary -id
//!    start` in the bundle, the address read back, a drained `log` FIFO in every bundle.
//! 4. Each step is a [`Runtime`](crate::host::Runtime) call (the `driver` module): a pod is a sandbox container (`/pause`,
//!    container type `sandbox`) plus containers (type `container`, the sandbox's id), as
//!    kubelet runs it through containerd's CRI plugin; a scenario whose container has the
//!    sandbox's id runs it as the sandbox's own container (`ctr run`, as the recorded pods
//!    were). Bundles are real OCI bundles ([`bundle`]) with the CRI annotations, a bind mount
//!    of a host file at the termination-message path, and stdio FIFOs ([`fifo`]). The rootfs
//!    is a host directory for the Go shim and runc, and the guest-pull mount nydus-snapshotter
//!    sends (`image_guest_pull`) for runtime-rs. Guest-side steps act on kata-sim's guest.
//! 5. The outcome is the built-in host's record: the agent and VM calls kata-sim served, the
//!    faults fired, each process's exit status and output (from its FIFOs), the host
//!    termination files, the task states the shim reports (`State` after each step, with the
//!    step's real duration in [`Outcome::steps`]), warnings (the shim log's warning lines),
//!    errors and the teardown (Shutdown answered, the shim exited, no VM left).
//!
//! It runs on the real clock: a hang costs the runtime's real timeout. A scenario meant for the
//! built-in host only (`config.builtin_only`), or one that needs a guest where the shim has
//! none (faults and guest-side steps on runc), is skipped with the reason ([`skip_reason`]).

pub mod bundle;
pub mod config;
mod driver;
pub mod events;
pub mod fifo;
pub mod launch;
pub mod logs;
pub mod task;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sim_agent::fault::FaultEngine;
use sim_hypervisor::{Fleet, FleetConfig, RemoteHypervisorServer, SimVmConfig};

use crate::host::{Limits, Outcome, agent_config, failed, run_body};
use crate::record::{Call, FaultFired, Level, TaskStatus, Warning};
use crate::schema::{Scenario, Step, Teardown};
use driver::ShimHost;
use launch::{Flavor, Launcher};

/// How a shim run is set up.
#[derive(Debug, Clone)]
pub struct ShimOptions {
    /// The shim binary.
    pub binary: PathBuf,
    /// A drop-in merged over the configuration written from the scenario (installed as
    /// `config.d/50-user.toml` beside it, which both Kata runtimes read).
    pub runtime_config: Option<PathBuf>,
    /// The containers' rootfs instead of the busybox one made per run.
    pub rootfs: Option<PathBuf>,
    /// Pass `-debug` to the shim.
    pub debug: bool,
    /// How long the shim's `start` may take.
    pub start_limit: Duration,
    /// The bounds of the run (on the real clock).
    pub limits: Limits,
    /// What the binary is, once asked ([`ShimOptions::identify`]); asked per run if not.
    pub flavor: Option<Flavor>,
}

impl ShimOptions {
    /// The defaults for `binary`: a 10 s `start`, 300 s per step and per run, 120 s teardown.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        ShimOptions {
            binary: binary.into(),
            runtime_config: None,
            rootfs: None,
            debug: false,
            start_limit: Duration::from_secs(10),
            limits: Limits {
                step: Duration::from_secs(300),
                teardown: Duration::from_secs(120),
                run: Duration::from_secs(600),
                real: Duration::from_secs(600),
            },
            flavor: None,
        }
    }

    /// Asks the binary what it is, once for all the runs of these options.
    pub fn identify(mut self) -> Self {
        if self.flavor.is_none()
            && let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        {
            self.flavor = Some(rt.block_on(launch::identify(&self.binary)));
        }
        self
    }
}

/// How the sandbox's containers map onto tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A pause sandbox container, then the containers in it.
    Pod,
    /// The sandbox is its own container (a container has the sandbox's id).
    Single,
}

fn mode(s: &Scenario) -> Mode {
    let sandbox = s.steps.iter().find_map(|st| match st {
        Step::CreateSandbox(sb) => Some(sb.id.clone().unwrap_or_else(|| "sandbox".into())),
        _ => None,
    });
    let single = s
        .steps
        .iter()
        .any(|st| matches!(st, Step::CreateContainer(c) if Some(&c.id) == sandbox.as_ref()));
    if single { Mode::Single } else { Mode::Pod }
}

/// One step as the shim driver ran it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// The step (`start c1`).
    pub step: String,
    /// Its real duration.
    pub took: Duration,
    /// The task states the shim reported after it: status and, once stopped, exit status.
    pub tasks: BTreeMap<String, (TaskStatus, Option<u32>)>,
    /// Whether those states are settled when the step returns. After a start, an exec, a
    /// signal or stdin the process may or may not have exited yet: a real race, so snapshots
    /// leave those states out ([`crate::snapshot::redacted`]).
    pub settled: bool,
}

/// Whether the task states after `step` do not depend on how fast a process runs.
pub fn settles(step: &Step) -> bool {
    !matches!(
        step,
        Step::Start(_) | Step::Exec(_) | Step::Kill(_) | Step::WriteStdin(_) | Step::CloseStdin(_)
    )
}

impl Serialize for StepRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let tasks: BTreeMap<&str, String> = self
            .tasks
            .iter()
            .map(|(id, (st, code))| {
                let text = match code {
                    Some(c) => format!("{} exit_status={c}", st.name()),
                    None => st.name().to_string(),
                };
                (id.as_str(), text)
            })
            .collect();
        let timed = !self.took.is_zero();
        let mut r = s.serialize_struct("StepRecord", 2 + usize::from(timed))?;
        r.serialize_field("step", &self.step)?;
        if timed {
            r.serialize_field("took_s", &self.took.as_secs_f64())?;
        }
        r.serialize_field("tasks", &tasks)?;
        r.end()
    }
}

/// A step as the step records name it (`start c1`, `wait c1/e1`).
pub fn step_name(step: &Step) -> String {
    match step {
        Step::CreateSandbox(s) => {
            format!("create_sandbox {}", s.id.as_deref().unwrap_or("sandbox"))
        }
        Step::CreateContainer(c) => format!("create_container {}", c.id),
        Step::Start(c) => format!("start {c}"),
        Step::Exec(e) => format!("exec {}/{}", e.container, e.id),
        Step::WriteStdin(w) => format!("write_stdin {}", w.container),
        Step::CloseStdin(p) => format!("close_stdin {}", p.container),
        Step::Kill(k) => format!("kill {} {}", k.container, k.signal.unwrap_or(15)),
        Step::Wait(k) => format!("wait {k}"),
        Step::Stop(c) => format!("stop {c}"),
        Step::Pause(c) => format!("pause {c}"),
        Step::Resume(c) => format!("resume {c}"),
        Step::Update(u) => format!("update {}", u.container),
        Step::Stats(c) => format!("stats {c}"),
        Step::DestroySandbox => "destroy_sandbox".into(),
        Step::PushOom(c) => format!("push_oom {c}"),
        Step::KillGuest => "kill_guest".into(),
        Step::WriteTerminationMessage(t) => format!("write_termination_message {}", t.container),
        Step::RemoveTerminationMessage(c) => format!("remove_termination_message {c}"),
        Step::AdvanceTime(s) => format!("advance_time {}", s.duration().as_secs()),
        Step::AddFault(r) => format!("add_fault {}", r.text),
        Step::RemoveFault(r) => format!("remove_fault {}", r.text),
    }
}

/// Why the shim driver does not run `s` on a shim of `flavor`, if it does not.
pub fn skip_reason(s: &Scenario, flavor: &Flavor) -> Option<String> {
    if let Some(why) = &s.config.builtin_only {
        return Some(format!("for the built-in host only: {why}"));
    }
    if flavor.is_kata() {
        return None;
    }
    let guest_step = s.steps.iter().find_map(|st| match st {
        Step::PushOom(_) => Some("push_oom"),
        Step::KillGuest => Some("kill_guest"),
        Step::WriteTerminationMessage(_) => Some("write_termination_message"),
        Step::RemoveTerminationMessage(_) => Some("remove_termination_message"),
        Step::AddFault(_) | Step::RemoveFault(_) => Some("add_fault/remove_fault"),
        _ => None,
    });
    let needs = if !s.faults.is_empty() {
        Some("faults".to_string())
    } else if let Some(step) = guest_step {
        Some(format!("the guest-side step {step}"))
    } else if !s.guest.programs.is_empty() {
        Some("scripted guest programs".to_string())
    } else if !s.expect.order.is_empty() || !s.expect.absent.is_empty() {
        Some("expectations on agent calls".to_string())
    } else {
        None
    };
    needs.map(|n| format!("{n} need a Kata shim on kata-sim; {flavor} has no guest agent"))
}

/// A logrus or slog text line at warning level or worse, as a warning.
fn log_warning(line: &str) -> Option<Warning> {
    let level = if line.contains("level=warning") {
        Level::Warning
    } else if line.contains("level=error") || line.contains("level=fatal") {
        Level::Error
    } else {
        return None;
    };
    let msg = line
        .split_once("msg=")
        .map(|(_, rest)| {
            if let Some(quoted) = rest.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = quoted.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                out.push(n);
                            }
                        }
                        '"' => break,
                        c => out.push(c),
                    }
                }
                out
            } else {
                rest.split(' ').next().unwrap_or_default().to_string()
            }
        })
        .unwrap_or_else(|| line.to_string());
    Some(Warning::new(level, msg, None))
}

/// The kata-sim service a real runtime runs on (the shim driver's Kata shims, the exec
/// driver's command): the fleet and its remote-hypervisor socket.
pub(crate) struct Service {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) server: RemoteHypervisorServer,
    pub(crate) socket: PathBuf,
}

impl Service {
    /// The calls the fleet served, and the VMs the runtime left running.
    pub(crate) fn record(&self) -> (Vec<Call>, Vec<String>) {
        (
            self.fleet.trace().events().iter().map(Call::from).collect(),
            self.fleet.ids(),
        )
    }
}

/// Serves `s`'s guest, faults and seed in `dir` (`hypervisor.sock`, `vms/`), recording every
/// call.
pub(crate) async fn serve(s: &Scenario, dir: &std::path::Path) -> Result<Service, String> {
    let mut agent = agent_config(s);
    if agent.guest_root.is_none() {
        agent.temp_dir = Some(dir.to_path_buf());
    }
    let mut config = FleetConfig::new(dir.join("vms"));
    config.vm = SimVmConfig {
        agent,
        ..Default::default()
    };
    config.faults = FaultEngine::new(s.seed);
    config.record = true;
    for rule in &s.faults {
        config.faults.add_rule(rule.clone());
    }
    let socket = dir.join("hypervisor.sock");
    let fleet = Arc::new(Fleet::new(config).map_err(|e| format!("state dir: {e}"))?);
    let server = RemoteHypervisorServer::bind(&socket, Arc::clone(&fleet))
        .await
        .map_err(|e| format!("serving {}: {e}", socket.display()))?;
    Ok(Service {
        fleet,
        server,
        socket,
    })
}

/// Runs `s` on the shim `opts.binary`. Call it on a tokio runtime with the real clock.
pub async fn run(s: &Scenario, opts: &ShimOptions) -> Outcome {
    let flavor = match &opts.flavor {
        Some(f) => f.clone(),
        None => launch::identify(&opts.binary).await,
    };
    if let Some(why) = skip_reason(s, &flavor) {
        return failed(s, format!("skipped: {why}"));
    }
    let dir = match tempfile::Builder::new().prefix("kata-sim-shim-").tempdir() {
        Ok(d) => d,
        Err(e) => return failed(s, format!("a temp dir for the run: {e}")),
    };
    for sub in ["bundles", "fifo", "host"] {
        if let Err(e) = std::fs::create_dir_all(dir.path().join(sub)) {
            return failed(s, format!("the run dir: {e}"));
        }
    }
    let rootfs = match &opts.rootfs {
        Some(r) => bundle::Rootfs::Dir(r.clone()),
        None => match bundle::busybox_copy(dir.path()) {
            Ok(b) => bundle::Rootfs::Busybox(b),
            Err(e) => return failed(s, format!("the containers' rootfs: {e}")),
        },
    };
    let service = if flavor.is_kata() {
        match serve(s, dir.path()).await {
            Ok(sv) => Some(sv),
            Err(e) => return failed(s, e),
        }
    } else {
        None
    };
    let options = match &service {
        Some(sv) => {
            let path = dir.path().join("configuration.toml");
            let text = config::render(&flavor, &sv.socket, s);
            if let Err(e) = std::fs::write(&path, text) {
                return failed(s, format!("the runtime configuration: {e}"));
            }
            if let Some(user) = &opts.runtime_config {
                // Both runtimes merge `config.d/*.toml` beside their configuration over it.
                let drop_in = dir.path().join("config.d");
                let copied = std::fs::create_dir_all(&drop_in)
                    .and_then(|()| std::fs::copy(user, drop_in.join("50-user.toml")));
                if let Err(e) = copied {
                    return failed(s, format!("--runtime-config {}: {e}", user.display()));
                }
            }
            Some(config::create_options(&path))
        }
        None => None,
    };

    let events = match events::EventServer::bind(&dir.path().join("events.sock")).await {
        Ok(e) => e,
        Err(e) => return failed(s, format!("the events service: {e}")),
    };
    // The Kata shims log to syslog and journald: kata-sim's, in a namespace of the shim's.
    let capture = if flavor.is_kata() && Path::new(logs::UNSHARE).is_file() {
        match logs::Capture::bind(&dir.path().join("logs")) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => return failed(s, format!("the log sockets: {e}")),
        }
    } else {
        None
    };
    let launcher = Launcher {
        binary: opts.binary.clone(),
        namespace: "kata-sim".into(),
        address: dir.path().join("containerd.sock"),
        ttrpc_address: events.path().to_path_buf(),
        env: Vec::new(),
        debug: opts.debug,
        start_limit: opts.start_limit,
        capture: capture.clone(),
    };
    let engine = service
        .as_ref()
        .map(|sv| sv.fleet.faults().clone())
        .unwrap_or_else(|| FaultEngine::new(s.seed));
    let mut host = ShimHost::new(
        flavor.clone(),
        mode(s),
        launcher,
        dir.path().to_path_buf(),
        rootfs,
        options,
        service.as_ref().map(|sv| Arc::clone(&sv.fleet)),
        engine.clone(),
    );
    let body = run_body(&mut host, s, opts.limits);
    let teardown_ok = match tokio::time::timeout(opts.limits.real, body).await {
        Ok(ok) => ok,
        Err(_) => {
            let m = crate::host::Runtime::stuck(&mut host, "the run", opts.limits.real);
            host.errors.push(m);
            false
        }
    };
    host.cleanup().await;
    host.collect_logs(capture.is_none());
    if let Some(c) = &capture {
        host.warnings.extend(c.finish());
    }
    let (calls, left) = service.as_ref().map(Service::record).unwrap_or_default();
    for id in &left {
        host.warnings.push(Warning::once(format!(
            "the runtime left VM {id} running (kata-sim)"
        )));
    }
    if let Some(sv) = service {
        sv.server.shutdown().await;
    }
    events.shutdown().await;
    Outcome {
        name: s.name.clone(),
        persona: s.config.persona,
        seed: s.seed,
        calls,
        faults: FaultFired::folded(&engine.fired()),
        faults_not_kept: engine.fired_dropped(),
        processes: std::mem::take(&mut host.processes),
        host_files: std::mem::take(&mut host.host_files),
        tasks: std::mem::take(&mut host.tasks),
        errors: std::mem::take(&mut host.errors),
        warnings: std::mem::take(&mut host.warnings)
            .into_iter()
            .fold(Vec::new(), |mut out, w| {
                Warning::push_folded(&mut out, w);
                out
            }),
        teardown: if teardown_ok && host.torn_down && left.is_empty() {
            Teardown::Completed
        } else {
            Teardown::Incomplete
        },
        guest_containers: Vec::new(),
        steps: std::mem::take(&mut host.steps),
        stuck: Vec::new(),
        firings: Vec::new(),
    }
}

/// [`run`] on a fresh tokio runtime (real clock).
pub fn run_blocking(s: &Scenario, opts: &ShimOptions) -> Outcome {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(s, opts)),
        Err(e) => failed(s, format!("a tokio runtime: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logrus_warning_lines_become_warnings() {
        let w = log_warning(
            r#"time="2026-12-02T07:00:00Z" level=warning msg="failed to \"copy\"" pid=3"#,
        )
        .unwrap();
        assert_eq!(w.level, Level::Warning);
        assert_eq!(w.message, r#"failed to "copy""#);
        assert!(log_warning(r#"time="t" level=info msg="starting signal loop""#).is_none());
        assert_eq!(log_warning("level=error msg=boom").unwrap().message, "boom");
    }
}
