//! [`SimAgent`]: the stateful guest agent behind both the in-process trait and the server.
//!
//! A call enters through [`AgentRpc`] (the server calls the same methods), is recorded in the
//! [`Trace`], asks the [`FaultHook`] for a verdict, and then reaches the guest model in
//! the `guest` module. The model answers with the real agent's statuses and messages.

mod containers;
pub mod fs;
mod guest;
pub mod process;
pub mod program;
pub mod shell;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protobuf::well_known_types::empty::Empty;

use crate::agent::HostState;
use crate::error::{AgentError, Result};
use crate::fault::{CallInfo, FaultHook, NoFaults, TransportFault, Verdict, request_transport};
use crate::profile::AgentVersion;
use crate::protocols::{agent, csi, health, types};
use crate::rpc::{AgentRpc, CallOpts, KeyFields, Method};
use crate::trace::{CallStatus, Trace};

use guest::Guest;
pub use guest::{GuestDetailsProfile, SandboxInfo};
pub use program::{ProcessScript, SignalReaction};

/// How to build a [`SimAgent`].
#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    /// The agent release to behave as (see [`crate::profile`]).
    pub version: AgentVersion,
    /// The host directory used as the guest's `/`; a temporary directory when `None`.
    pub guest_root: Option<PathBuf>,
    /// Where that temporary directory is made (`kata-sim-guest-*`; default: the system's
    /// temporary directory), so that a server can find its own guests' roots after a crash.
    pub temp_dir: Option<PathBuf>,
    /// What `GetGuestDetails` and `Health.Version` report.
    pub details: GuestDetailsProfile,
    /// Whether the agent was built with `agent-policy` (then `SetPolicy` stores the policy;
    /// without it `SetPolicy` answers NOT_FOUND as the real agent does).
    pub policy_enabled: bool,
    /// RPCs a policy denies: they answer PERMISSION_DENIED as a policy-enforcing agent does.
    pub deny: Vec<Method>,
    /// The seed of every random choice the guest makes (such as `/dev/urandom`).
    pub seed: u64,
    /// Record calls into this trace (shared with a hypervisor's, for one ordered record);
    /// a new trace when `None`.
    pub trace: Option<Trace>,
    /// Scripted processes installed from the start (as [`SimAgent::script`] would).
    pub scripts: Vec<(ScriptMatch, ProcessScript)>,
    /// The size of the guest disk behind the shared directory, in bytes
    /// ([`DEFAULT_DISK_SIZE`] when `None`): a CopyFile past it fails as a full disk does.
    pub disk_size: Option<u64>,
}

/// The guest disk size when none is configured: the Kata guest's `/run` is a tmpfs of half its
/// memory, 1 GiB with the default 2048 MiB.
pub const DEFAULT_DISK_SIZE: u64 = 1 << 30;

impl SimConfig {
    /// The guest disk size in effect.
    pub fn disk_size(&self) -> u64 {
        self.disk_size.unwrap_or(DEFAULT_DISK_SIZE)
    }

    /// The profile of an agent release: its version boundaries, and the version that
    /// `GetGuestDetails` and `Health.Version` report.
    pub fn for_version(version: AgentVersion) -> Self {
        let details = GuestDetailsProfile {
            agent_version: version.to_string(),
            ..Default::default()
        };
        SimConfig {
            version,
            details,
            ..Default::default()
        }
    }
}

/// Which processes a [`ProcessScript`] applies to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScriptMatch {
    /// Only this container.
    pub container_id: Option<String>,
    /// Only this exec id (`""` or the container id for init processes).
    pub exec_id: Option<String>,
    /// Only processes whose `argv[0]` has this base name.
    pub program: Option<String>,
}

impl ScriptMatch {
    /// Every process of one container.
    pub fn container(id: &str) -> Self {
        ScriptMatch {
            container_id: Some(id.into()),
            ..Default::default()
        }
    }

    /// One exec of one container.
    pub fn exec(container_id: &str, exec_id: &str) -> Self {
        ScriptMatch {
            container_id: Some(container_id.into()),
            exec_id: Some(exec_id.into()),
            ..Default::default()
        }
    }

    /// Every process running a program of that name.
    pub fn program(name: &str) -> Self {
        ScriptMatch {
            program: Some(name.into()),
            ..Default::default()
        }
    }
}

/// A fake Kata guest agent. Cheap to clone; clones share the guest.
#[derive(Clone, Debug)]
pub struct SimAgent {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    guest: Arc<Guest>,
    trace: Trace,
    faults: std::sync::RwLock<Arc<dyn FaultHook>>,
    host: HostState,
    /// The sandbox (VM id) this guest belongs to, for fault rules scoped to it.
    label: std::sync::RwLock<Option<String>>,
}

impl SimAgent {
    /// A guest with the default profile (the current 4.1.0 agent) in a temporary root.
    pub fn new() -> std::io::Result<Self> {
        Self::with_config(SimConfig::default())
    }

    /// A guest built from `config`.
    pub fn with_config(config: SimConfig) -> std::io::Result<Self> {
        let trace = config.trace.clone().unwrap_or_default();
        let scripts = config.scripts.clone();
        let guest = Guest::new(config, trace.clone())?;
        for (m, s) in scripts {
            guest.add_script(m, s);
        }
        Ok(SimAgent {
            inner: Arc::new(Inner {
                guest: Arc::new(guest),
                trace,
                faults: std::sync::RwLock::new(Arc::new(NoFaults)),
                host: HostState::new(None),
                label: std::sync::RwLock::new(None),
            }),
        })
    }

    /// The agent release this guest behaves as.
    pub fn version(&self) -> AgentVersion {
        self.inner.guest.config.version
    }

    /// The ordered record of every call.
    pub fn trace(&self) -> &Trace {
        &self.inner.trace
    }

    /// The host directory that is the guest's `/`.
    pub fn guest_root(&self) -> PathBuf {
        self.inner.guest.fs.root().to_path_buf()
    }

    /// Installs the fault hook every later call consults.
    pub fn set_fault_hook(&self, hook: Arc<dyn FaultHook>) {
        *self.inner.faults.write().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// Scripts the processes that `matcher` selects; later scripts win over earlier ones,
    /// and every script wins over the built-in programs.
    pub fn script(&self, matcher: ScriptMatch, script: ProcessScript) {
        self.inner.guest.add_script(matcher, script);
    }

    /// Queues an OOM event for `container_id`, as the guest kernel's OOM notifier would.
    pub fn push_oom_event(&self, container_id: &str) {
        self.inner.guest.push_oom(container_id);
    }

    /// OOM-kills the init process of `container_id` (status 137) and queues its OOM event.
    pub fn oom_kill(&self, container_id: &str) -> Result<()> {
        self.inner.guest.oom_kill(container_id)
    }

    /// Writes the termination message of a container, as the container writing its
    /// termination-message path would (into the guest file behind that mount).
    pub fn write_termination_message(&self, container_id: &str, data: &[u8]) -> Result<()> {
        self.inner
            .guest
            .write_termination_message(container_id, data)
    }

    /// Deletes the guest file behind a container's termination-message mount (as if the
    /// container had removed it).
    pub fn remove_termination_message(&self, container_id: &str) -> Result<()> {
        let source = self.inner.guest.termination_log_source(container_id)?;
        self.inner
            .guest
            .fs
            .confined()
            .remove_file(&source)
            .map_err(|e| AgentError::internal(e.to_string()))
    }

    /// Writes a guest file (any guest path, confined to the guest root).
    pub fn write_guest_file(&self, guest_path: &str, data: &[u8]) -> std::io::Result<()> {
        self.inner.guest.fs.write(guest_path, data)
    }

    /// Reads a guest file.
    pub fn read_guest_file(&self, guest_path: &str) -> std::io::Result<Vec<u8>> {
        self.inner.guest.fs.read(guest_path)
    }

    /// What `CreateSandbox` recorded, if it was called.
    pub fn sandbox(&self) -> Option<SandboxInfo> {
        self.inner.guest.sandbox()
    }

    /// Container ids in the guest, sorted.
    pub fn container_ids(&self) -> Vec<String> {
        self.inner.guest.container_ids()
    }

    /// The exit status of a process (exec id `""` for the container's init) that has exited
    /// and that no WaitProcess has reaped yet; `None` while it runs or if there is no such
    /// process. Looking does not reap it.
    pub fn exit_status(&self, container_id: &str, exec_id: &str) -> Option<i32> {
        self.inner.guest.exit_status(container_id, exec_id)
    }

    /// Whether `DestroySandbox` ended the agent's service.
    pub fn is_terminated(&self) -> bool {
        self.inner.guest.is_terminated()
    }

    /// The guest dies with its VM: every call in flight fails with
    /// [`AgentError::ConnectionClosed`] at once, every process is gone, and every later call
    /// fails the same way. Servers of this agent should be shut down with it.
    pub fn kill(&self) {
        self.inner.guest.kill();
    }

    /// Pauses (`true`) or resumes the guest's vCPUs: while paused, calls wait (their
    /// deadlines still run), as nothing in the guest runs.
    pub fn set_paused(&self, paused: bool) {
        self.inner.guest.set_paused(paused);
    }

    /// Names the sandbox (VM id) this guest belongs to: fault rules with `sandbox=ID` match
    /// its calls.
    pub fn set_sandbox_label(&self, id: &str) {
        *self.inner.label.write().unwrap_or_else(|p| p.into_inner()) = Some(id.to_string());
    }

    fn sandbox_label(&self) -> Option<String> {
        self.inner
            .label
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The agent restarts: every connection drops, calls in flight fail, and its state (the
    /// sandbox, containers and their processes, queued events) is lost; then it serves again.
    pub fn restart(&self) {
        self.inner.guest.restart();
    }

    /// Resolves once the agent restarted after `epoch` ([`SimAgent::epoch`]).
    pub async fn restarted(&self, epoch: u64) {
        self.inner.guest.restarted(epoch).await
    }

    /// How many times the agent restarted.
    pub fn epoch(&self) -> u64 {
        self.inner.guest.epoch()
    }

    /// Whether the guest died ([`SimAgent::kill`]).
    pub fn is_dead(&self) -> bool {
        self.inner.guest.is_dead()
    }

    /// Resolves when the guest dies.
    pub async fn died(&self) {
        self.inner.guest.died().await
    }

    /// Resolves when the agent ends its service (after `DestroySandbox`).
    pub async fn terminated(&self) {
        self.inner.guest.terminated().await
    }

    async fn invoke<Req, Resp, F, Fut>(
        &self,
        method: Method,
        opts: CallOpts,
        req: Req,
        model: F,
    ) -> Result<Resp>
    where
        Req: KeyFields + protobuf::MessageFull + Send,
        Resp: protobuf::Message,
        F: FnOnce(Arc<Guest>, Req, u64) -> Fut + Send,
        Fut: std::future::Future<Output = Result<Resp>> + Send,
    {
        let fields = req.key_fields();
        let seq = self.inner.trace.begin(method, opts.conn, &fields);
        let guest = Arc::clone(&self.inner.guest);
        let epoch = guest.epoch();
        let result = if guest.is_terminated() || guest.is_dead() {
            Err(AgentError::ConnectionClosed)
        } else if !guest.config.version.serves(method) {
            // An agent older than the RPC answers it as ttrpc answers an unknown method.
            Err(AgentError::status(
                ttrpc::Code::UNIMPLEMENTED,
                format!("{method} method"),
            ))
        } else {
            let verdict = {
                let hook = Arc::clone(&self.inner.faults.read().unwrap_or_else(|p| p.into_inner()));
                let label = self.sandbox_label();
                hook.decide(&CallInfo {
                    target: method.wire_name(),
                    request: Req::descriptor().name(),
                    fields: &fields,
                    conn: opts.conn,
                    sandbox: label.as_deref(),
                })
            };
            if let Some(d) = verdict.describe() {
                self.inner.trace.fault(seq, d);
            }
            let container = fields
                .iter()
                .find(|(k, _)| *k == "container_id")
                .map(|(_, v)| v.clone());
            let run = async {
                // A paused VM runs no guest code: the call waits for the resume.
                guest.running().await;
                let mut drop_after = false;
                let mut corrupt = false;
                let mut slow = None;
                match verdict {
                    Verdict::Pass => {}
                    Verdict::Fail(e) => return Err(e),
                    Verdict::Delay(d) => tokio::time::sleep(d).await,
                    Verdict::Hang => std::future::pending::<()>().await,
                    Verdict::Drop { after: false } => {
                        request_transport(TransportFault::Drop);
                        return Err(AgentError::ConnectionClosed);
                    }
                    Verdict::Drop { after: true } => drop_after = true,
                    Verdict::Corrupt => corrupt = true,
                    Verdict::KillGuest => {
                        // The caller's connection dies with the guest, unanswered.
                        request_transport(TransportFault::Drop);
                        guest.kill();
                        return Err(AgentError::ConnectionClosed);
                    }
                    Verdict::Oom(c) => {
                        if let Some(cid) = c.or(container) {
                            // An unknown container gets its event; there is nothing to kill.
                            if guest.oom_kill(&cid).is_err() {
                                guest.push_oom(&cid);
                            }
                        }
                    }
                    Verdict::RestartAgent => {
                        request_transport(TransportFault::Drop);
                        guest.restart();
                        return Err(AgentError::ConnectionClosed);
                    }
                    Verdict::Slow(bps) => {
                        slow = matches!(
                            method,
                            Method::ReadStdout
                                | Method::ReadStderr
                                | Method::WriteStdin
                                | Method::CopyFile
                        )
                        .then_some(bps)
                    }
                }
                guest.check_policy(method, Req::descriptor().name())?;
                let sent = if slow.is_some() {
                    req.compute_size()
                } else {
                    0
                };
                let result = model(Arc::clone(&guest), req, seq).await;
                if let Some(bps) = slow {
                    let received = result
                        .as_ref()
                        .map(|r| r.compute_size())
                        .unwrap_or_default();
                    let bytes = sent + received;
                    tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / bps as f64)).await;
                }
                if drop_after {
                    // The side effect happened; the answer never leaves.
                    request_transport(TransportFault::Drop);
                    return Err(AgentError::ConnectionClosed);
                }
                if corrupt && !request_transport(TransportFault::Corrupt) {
                    // In process there is no frame to garble: the caller gets what a ttrpc
                    // client makes of one it cannot decode (ttrpc-rust: a transport error
                    // for the call), as over the wire.
                    return Err(AgentError::Transport(
                        "Unpack response error: a kata-sim corrupt response frame".into(),
                    ));
                }
                result
            };
            // A guest that dies or restarts fails every call in flight, before any answer
            // its death caused (a wait that sees the killed process) can get out.
            let run = async {
                tokio::select! {
                    biased;
                    _ = guest.died() => Err(AgentError::ConnectionClosed),
                    _ = guest.restarted(epoch) => Err(AgentError::ConnectionClosed),
                    r = run => r,
                }
            };
            match opts.timeout {
                Some(t) if !t.is_zero() => {
                    tokio::time::timeout(t, run).await.unwrap_or_else(|_| {
                        Err(AgentError::Timeout {
                            method: method.wire_name().into(),
                        })
                    })
                }
                _ => run.await,
            }
        };
        let trace = &self.inner.trace;
        match &result {
            Ok(_) => trace.end(seq, CallStatus::Ok, ""),
            Err(AgentError::Status { code, message }) => {
                trace.end(seq, CallStatus::from_code(*code), message)
            }
            Err(AgentError::Timeout { .. }) => trace.end(
                seq,
                CallStatus::Code(ttrpc::Code::DEADLINE_EXCEEDED),
                "timeout",
            ),
            Err(other) => trace.end(seq, CallStatus::Closed, &other.to_string()),
        }
        result
    }
}

macro_rules! impl_sim_rpc {
    ($(($snake:ident, $variant:ident, $svc:ident, $req:ty, $resp:ty)),* $(,)?) => {
        #[async_trait::async_trait]
        impl AgentRpc for SimAgent {
            fn host(&self) -> &HostState {
                &self.inner.host
            }
            $(
                async fn $snake(&self, req: $req, opts: CallOpts) -> Result<$resp> {
                    self.invoke(Method::$variant, opts, req, |g, r, seq| async move {
                        g.$snake(r, seq).await
                    })
                    .await
                }
            )*
        }
    };
}
crate::for_each_rpc!(impl_sim_rpc);

/// Unused but keeps the imports the macro expansion needs visible to readers.
#[allow(dead_code)]
fn _types(
    _: Empty,
    _: types::Interface,
    _: csi::VolumeStatsResponse,
    _: health::CheckRequest,
    _: agent::OOMEvent,
    _: Duration,
) {
}
