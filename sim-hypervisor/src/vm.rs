//! [`SimHypervisor`]: one VM, as a state machine with resources, devices and a guest.
//!
//! ```text
//!            create_vm          start_vm            pause_vm          save_vm
//!  (none) ------------> created ---------> running <--------> paused --------> saved
//!                          |                  |     resume_vm    |               |
//!                          +------------------+------------------+---------------+
//!                                     stop_vm / VMM death --> stopped
//! ```
//!
//! Every operation not drawn is an error ([`HypervisorError::InvalidTransition`]). The guest
//! ([`SimAgent`]) exists from `create_vm`, is served on its socket from `start_vm`, waits while
//! the VM is paused, and dies with the VM: its calls in flight fail, its socket is removed, and
//! new connections are refused. Resource changes follow QEMU's rules in virtcontainers
//! (`qemu.go`): vCPUs and memory are clamped to the configured maxima, memory is added in whole
//! blocks on free DIMM slots and never removed, and only hot-plugged vCPUs can be removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim_agent::fault::{CallInfo, FaultHook, Verdict};
use sim_agent::{AgentError, AgentServer, CallStatus, SimAgent, SimConfig, Trace, VmOp};
use tokio::sync::watch;

use crate::error::{HypervisorError, Result};
use crate::hypervisor::{Hypervisor, Network};
use crate::types::{
    AgentSocket, Capabilities, Device, DeviceType, HotplugResult, HypervisorConfig,
    HypervisorState, MemoryDevice, PluggedDevice, SocketKind, VcpuThreadIds, VmState,
};

/// The agent port on vsock and hybrid vsock (`vSockPort`).
pub const AGENT_PORT: u32 = 1024;

/// The guest physical address where hot-plugged memory starts (above 4 GiB).
const HOTPLUG_MEMORY_BASE: u64 = 1 << 32;

/// Hot-plugged PCI devices sit behind the PCI bridge in this root slot.
const BRIDGE_SLOT: u32 = 2;

/// Slots on a PCI bus.
const PCI_SLOTS: u32 = 32;

/// The exit code of a VMM killed by SIGKILL.
pub const KILLED_EXIT_CODE: i32 = 137;

/// How one [`SimHypervisor`] behaves.
#[derive(Debug, Clone)]
pub struct SimVmConfig {
    /// How long the guest takes to boot (on the tokio clock).
    pub boot_time: Duration,
    /// Which kind of socket the guest's agent gets.
    pub socket_kind: SocketKind,
    /// Where the VM's sockets live (absolute; one sub-directory per VM).
    pub state_dir: PathBuf,
    /// The guest agent's profile.
    pub agent: SimConfig,
    /// What `Capabilities` reports.
    pub capabilities: Capabilities,
    /// The guest's vsock context id (for [`SocketKind::Vsock`]).
    pub vsock_cid: u32,
    /// The trace that records every operation (a new one when `None`).
    pub trace: Option<Trace>,
    /// How many of the most recent operations a new trace keeps (`None`: all of them).
    pub trace_limit: Option<usize>,
    /// Fault rules for this VM's operations and its guest's RPCs (scoped by `sandbox=ID`).
    pub faults: Option<Arc<dyn FaultHook>>,
}

impl Default for SimVmConfig {
    fn default() -> Self {
        SimVmConfig {
            boot_time: Duration::from_millis(10),
            socket_kind: SocketKind::Remote,
            state_dir: std::env::temp_dir().join("kata-sim"),
            agent: SimConfig::default(),
            capabilities: Capabilities::QEMU,
            vsock_cid: 3,
            trace: None,
            trace_limit: None,
            faults: None,
        }
    }
}

#[derive(Debug)]
struct Model {
    id: Option<String>,
    state: Option<VmState>,
    config: HypervisorConfig,
    netns: String,
    hot_vcpus: u32,
    memory: Vec<MemoryDevice>,
    devices: BTreeMap<String, PluggedDevice>,
    /// Slots devices had, so that a device plugged again gets its old slot back.
    slot_history: BTreeMap<String, u32>,
    socket: Option<AgentSocket>,
    agent: Option<SimAgent>,
    server: Option<AgentServer>,
    control_connected: bool,
    restored_pid: Option<u32>,
}

/// A fake VMM running one VM. Cheap to clone; clones share the VM.
#[derive(Debug, Clone)]
pub struct SimHypervisor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: SimVmConfig,
    model: Mutex<Model>,
    exit: watch::Sender<Option<i32>>,
    trace: Trace,
}

/// A stable fake pid for a VM id (FNV-1a over the id, in 10000..60000).
fn pid_for(id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    10_000 + h % 50_000
}

fn io_err(e: std::io::Error) -> HypervisorError {
    HypervisorError::Io(e.to_string())
}

impl SimHypervisor {
    /// A VMM with no VM yet.
    pub fn new(settings: SimVmConfig) -> Self {
        let trace = settings
            .trace
            .clone()
            .unwrap_or_else(|| Trace::with_limit(settings.trace_limit));
        SimHypervisor {
            inner: Arc::new(Inner {
                settings,
                model: Mutex::new(Model {
                    id: None,
                    state: None,
                    config: HypervisorConfig::default(),
                    netns: String::new(),
                    hot_vcpus: 0,
                    memory: Vec::new(),
                    devices: BTreeMap::new(),
                    slot_history: BTreeMap::new(),
                    socket: None,
                    agent: None,
                    server: None,
                    control_connected: true,
                    restored_pid: None,
                }),
                exit: watch::channel(None).0,
                trace,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Model> {
        self.inner.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The trace of this VM's operations.
    pub fn trace(&self) -> &Trace {
        &self.inner.trace
    }

    /// The VM's state; `None` before `create_vm`.
    pub fn state(&self) -> Option<VmState> {
        self.lock().state
    }

    /// The VM id, once created.
    pub fn id(&self) -> Option<String> {
        self.lock().id.clone()
    }

    /// The guest agent, once created.
    pub fn agent(&self) -> Option<SimAgent> {
        self.lock().agent.clone()
    }

    /// The network namespace the VM was created in.
    pub fn netns(&self) -> String {
        self.lock().netns.clone()
    }

    /// The devices the VM has, by id.
    pub fn devices(&self) -> BTreeMap<String, PluggedDevice> {
        self.lock().devices.clone()
    }

    /// This VM's directory under the state directory.
    fn vm_dir(&self, id: &str) -> PathBuf {
        self.inner.settings.state_dir.join(id)
    }

    fn pid(&self, m: &Model) -> u32 {
        m.restored_pid
            .unwrap_or_else(|| pid_for(m.id.as_deref().unwrap_or("")))
    }

    /// Records one operation in the trace and returns its sequence number.
    fn begin(&self, op: VmOp, fields: &[(&'static str, String)]) -> u64 {
        self.inner.trace.begin(op, None, fields)
    }

    /// Asks the fault hook about an operation; an injected failure is returned as the
    /// operation's error. Transport-level actions (drop, corrupt) become UNAVAILABLE errors:
    /// the hypervisor service cannot cut its caller's connection.
    async fn fault(&self, seq: u64, op: VmOp, fields: &[(&'static str, String)]) -> Result<()> {
        let Some(hook) = &self.inner.settings.faults else {
            return Ok(());
        };
        // Before CreateVM the VM's id is the one it is being created with.
        let id = self.lock().id.clone().or_else(|| {
            fields
                .iter()
                .find(|(k, _)| *k == "id")
                .map(|(_, v)| v.clone())
        });
        let verdict = hook.decide(&CallInfo {
            target: op.name(),
            request: op.name(),
            fields,
            conn: None,
            sandbox: id.as_deref(),
        });
        self.fault_verdict(seq, verdict, id).await
    }

    async fn fault_verdict(&self, seq: u64, verdict: Verdict, id: Option<String>) -> Result<()> {
        if let Some(d) = verdict.describe() {
            self.inner.trace.fault(seq, d);
        }
        match verdict {
            Verdict::Fail(AgentError::Status { code, message }) => {
                Err(HypervisorError::Remote { code, message })
            }
            Verdict::Fail(other) => Err(HypervisorError::Remote {
                code: ttrpc::Code::UNAVAILABLE,
                message: other.to_string(),
            }),
            Verdict::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Verdict::Hang => std::future::pending().await,
            Verdict::KillGuest => {
                self.power_off(KILLED_EXIT_CODE).await;
                Err(HypervisorError::NotRunning(id.unwrap_or_default()))
            }
            Verdict::Drop { .. } | Verdict::Corrupt => Err(HypervisorError::Remote {
                code: ttrpc::Code::UNAVAILABLE,
                message: "connection dropped by a kata-sim fault".into(),
            }),
            Verdict::Pass | Verdict::Oom(_) | Verdict::RestartAgent | Verdict::Slow(_) => Ok(()),
        }
    }

    /// Records an operation in the trace and asks the fault hook about it; an injected
    /// failure is recorded as the operation's end and returned.
    async fn enter(&self, op: VmOp, fields: &[(&'static str, String)]) -> Result<u64> {
        let seq = self.begin(op, fields);
        match self.fault(seq, op, fields).await {
            Ok(()) => Ok(seq),
            Err(e) => {
                self.end(seq, &Err::<(), _>(e.clone()));
                Err(e)
            }
        }
    }

    /// A state change with no other effect (pause, save, resume): the guest runs only in
    /// `Running`, so it is paused in every other state.
    async fn transition(
        &self,
        op: VmOp,
        verb: &'static str,
        from: VmState,
        to: VmState,
    ) -> Result<()> {
        let seq = self.enter(op, &[]).await?;
        let r = {
            let mut m = self.lock();
            Self::require(&m, verb, &[from]).map(|_| {
                m.state = Some(to);
                if let Some(a) = &m.agent {
                    a.set_paused(to != VmState::Running);
                }
            })
        };
        self.end(seq, &r);
        r
    }

    fn end<T>(&self, seq: u64, r: &Result<T>) {
        match r {
            Ok(_) => self.inner.trace.end(seq, CallStatus::Ok, ""),
            Err(e) => self
                .inner
                .trace
                .end(seq, CallStatus::from_code(e.code()), &e.to_string()),
        }
    }

    /// Requires one of `allowed`; returns the current state.
    fn require(m: &Model, op: &'static str, allowed: &[VmState]) -> Result<VmState> {
        match m.state {
            Some(s) if allowed.contains(&s) => Ok(s),
            Some(s) => Err(HypervisorError::InvalidTransition { op, state: s }),
            None => Err(HypervisorError::NotFound(
                m.id.clone().unwrap_or_else(|| "(not created)".into()),
            )),
        }
    }

    /// The VMM dies (as `kill -9` would): the guest dies with it, every agent connection
    /// resets, new connections are refused, `check` fails and `wait_vm` returns 137.
    pub async fn kill(&self) {
        let seq = self.begin(VmOp::KillVM, &[]);
        self.power_off(KILLED_EXIT_CODE).await;
        self.inner.trace.end(seq, CallStatus::Ok, "");
    }

    /// Takes the VM down: the guest dies, its server closes and its socket goes away.
    ///
    /// Cancel safe: once the state says stopped, the rest (closing the server, removing its
    /// socket, the exit code [`Hypervisor::wait_vm`] returns) runs in a task of its own that
    /// completes even if the caller goes away.
    async fn power_off(&self, code: i32) {
        if let Some(finish) = self.begin_power_off(code) {
            // A JoinError is a panic in the server's shutdown (or the runtime going away).
            if let Err(e) = tokio::spawn(finish).await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }

    /// Marks the VM stopped and kills its guest at once; returns what is left to do (closing
    /// its server, then the exit code), or `None` when it was done at once or there was no
    /// running VM.
    fn begin_power_off(
        &self,
        code: i32,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let (agent, server) = {
            let mut m = self.lock();
            if m.state == Some(VmState::Stopped) || m.state.is_none() {
                return None;
            }
            m.state = Some(VmState::Stopped);
            (m.agent.clone(), m.server.take())
        };
        if let Some(a) = agent {
            a.kill();
        }
        let Some(server) = server else {
            self.inner.exit.send_replace(Some(code));
            return None;
        };
        let exit = self.inner.exit.clone();
        Some(async move {
            server.shutdown().await;
            exit.send_replace(Some(code));
        })
    }

    /// Whether `other` is this very VM (not a clone of its settings).
    pub fn same_vm(&self, other: &SimHypervisor) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Removes the VM's directory (its sockets' home) once it is stopped.
    pub(crate) fn remove_dir(&self) -> Result<()> {
        let id = {
            let m = self.lock();
            match m.state {
                None => return Ok(()),
                Some(VmState::Stopped) => m.id.clone().unwrap_or_default(),
                Some(s) => {
                    return Err(HypervisorError::InvalidTransition {
                        op: "clean up",
                        state: s,
                    });
                }
            }
        };
        if id.is_empty() {
            return Ok(());
        }
        match std::fs::remove_dir_all(self.vm_dir(&id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(e)),
            _ => Ok(()),
        }
    }

    /// Takes the VM down and removes its directory without consulting the fault hook or the
    /// trace: for an operation rolled back (a `CreateVM` whose caller went away) or a forced
    /// shutdown. Synchronous; a server still to close closes in a task of its own, which
    /// removes the directory after it.
    pub(crate) fn abandon(&self) {
        match self.begin_power_off(0) {
            Some(finish) => {
                let vm = self.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        finish.await;
                        if let Err(e) = vm.remove_dir() {
                            tracing::warn!(error = %e, "removing an abandoned VM's directory");
                        }
                    });
                }
            }
            None => {
                if let Err(e) = self.remove_dir() {
                    tracing::warn!(error = %e, "removing an abandoned VM's directory");
                }
            }
        }
    }

    /// [`SimHypervisor::abandon`], waiting until the VM is down and its directory gone.
    pub(crate) async fn abandon_and_wait(&self) {
        self.power_off(0).await;
        if let Err(e) = self.remove_dir() {
            tracing::warn!(error = %e, "removing a VM's directory");
        }
    }

    fn socket_for(&self, id: &str) -> AgentSocket {
        let dir = self.vm_dir(id);
        match self.inner.settings.socket_kind {
            SocketKind::Remote => AgentSocket::Remote {
                path: dir.join("agent.sock"),
            },
            SocketKind::HybridVsock => AgentSocket::HybridVsock {
                uds_path: dir.join("kata.hvsock"),
                port: AGENT_PORT,
            },
            SocketKind::Vsock => AgentSocket::Vsock {
                cid: self.inner.settings.vsock_cid,
                port: AGENT_PORT,
            },
            SocketKind::Mock => AgentSocket::Mock {
                uds_path: dir.join("mock.sock"),
            },
        }
    }

    fn validate(config: &HypervisorConfig) -> Result<()> {
        if config.num_vcpus == 0 {
            return Err(HypervisorError::Invalid(
                "default_vcpus must be at least 1".into(),
            ));
        }
        if config.num_vcpus > config.default_max_vcpus {
            return Err(HypervisorError::Invalid(format!(
                "default_vcpus {} exceeds default_maxvcpus {}",
                config.num_vcpus, config.default_max_vcpus
            )));
        }
        if config.memory_size_mb == 0 {
            return Err(HypervisorError::Invalid(
                "default_memory must not be 0".into(),
            ));
        }
        if config.memory_size_mb > config.default_max_memory_mb {
            return Err(HypervisorError::Invalid(format!(
                "default_memory {} MiB exceeds default_maxmemory {} MiB",
                config.memory_size_mb, config.default_max_memory_mb
            )));
        }
        Ok(())
    }

    fn total_memory(m: &Model) -> u32 {
        m.config.memory_size_mb + m.memory.iter().map(|d| d.size_mb as u32).sum::<u32>()
    }

    /// Plugs a named device (cold or hot); returns its PCI path if it sits on the bus.
    fn plug(
        m: &mut Model,
        id: String,
        kind: DeviceType,
        hotplugged: bool,
    ) -> Result<Option<String>> {
        if m.devices.contains_key(&id) {
            return Err(HypervisorError::Invalid(format!(
                "device {id:?} is already plugged"
            )));
        }
        let pci_path = if kind.is_pci() {
            Some(Self::pci_slot(m, &id, hotplugged)?)
        } else {
            None
        };
        m.devices.insert(
            id,
            PluggedDevice {
                kind,
                pci_path: pci_path.clone(),
                hotplugged,
            },
        );
        Ok(pci_path)
    }

    /// A free PCI slot: the device's old one if free, else the lowest free one.
    fn pci_slot(m: &mut Model, id: &str, hotplug: bool) -> Result<String> {
        let used: Vec<u32> = m
            .devices
            .values()
            .filter(|d| d.hotplugged == hotplug)
            .filter_map(|d| d.pci_path.as_deref().and_then(parse_slot))
            .collect();
        // Root-bus slots 0-4 are taken by the host bridge, the PCI bridge and the console.
        let first = if hotplug { 1 } else { 5 };
        let slot = match m.slot_history.get(id) {
            Some(s) if !used.contains(s) => *s,
            _ => (first..PCI_SLOTS)
                .find(|s| !used.contains(s))
                .ok_or_else(|| HypervisorError::Limit("no free PCI slot".into()))?,
        };
        m.slot_history.insert(id.to_string(), slot);
        Ok(if hotplug {
            format!("{BRIDGE_SLOT:02x}/{slot:02x}")
        } else {
            format!("{slot:02x}")
        })
    }

    fn hotplug_memory(m: &mut Model, mut dev: MemoryDevice) -> Result<MemoryDevice> {
        if m.memory.len() as u32 >= m.config.memory_slots {
            return Err(HypervisorError::Limit(format!(
                "cannot hotplug {} MiB: all {} memory slots are in use",
                dev.size_mb, m.config.memory_slots
            )));
        }
        let total = Self::total_memory(m);
        if total + dev.size_mb as u32 > m.config.default_max_memory_mb {
            return Err(HypervisorError::Limit(format!(
                "cannot hotplug {} MiB: {total} MiB in use of at most {} MiB",
                dev.size_mb, m.config.default_max_memory_mb
            )));
        }
        dev.slot = m.memory.iter().map(|d| d.slot).max().map_or(0, |s| s + 1);
        if dev.probe {
            let before: u64 = m.memory.iter().map(|d| d.size_mb as u64).sum();
            dev.addr = HOTPLUG_MEMORY_BASE + (before << 20);
        }
        m.memory.push(dev);
        Ok(dev)
    }
}

impl SimHypervisor {
    /// `StopVM`, then `then` (a fleet forgetting the VM) in the same step.
    ///
    /// Cancel safe: dropped while it waits (a delay fault), the VM runs on untouched; once
    /// the fault hook has let it through, the power-off and `then` run in a task of their own
    /// that completes even if the caller goes away.
    pub async fn stop_vm_then<F>(&self, wait_only: bool, then: F) -> Result<()>
    where
        F: FnOnce(&SimHypervisor) -> Result<()> + Send + 'static,
    {
        let seq = self
            .enter(VmOp::StopVM, &[("wait_only", wait_only.to_string())])
            .await?;
        let allowed = {
            let m = self.lock();
            Self::require(
                &m,
                "stop",
                &[
                    VmState::Created,
                    VmState::Running,
                    VmState::Paused,
                    VmState::Saved,
                ],
            )
            .map(drop)
        };
        if let Err(e) = allowed {
            self.end(seq, &Err::<(), _>(e.clone()));
            return Err(e);
        }
        let vm = self.clone();
        let commit = async move {
            vm.power_off(0).await;
            // Powered off by something else meanwhile (the guest died): wait until that is
            // complete too.
            let _ = vm.wait_vm().await;
            let r = then(&vm);
            vm.end(seq, &r);
            r
        };
        match tokio::spawn(commit).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(HypervisorError::Io(format!("stopping: {e}"))),
        }
    }

    /// The second half of `StartVM`, once booted: binds the guest's server and marks the VM
    /// running (or, stopped meanwhile, closes the server again).
    async fn boot(&self, id: String, agent: Option<SimAgent>) -> Result<()> {
        let socket = {
            let mut m = self.lock();
            // Stopped (or killed) while booting.
            Self::require(&m, "start", &[VmState::Created])?;
            match &m.socket {
                Some(s) => s.clone(),
                None => {
                    let s = self.socket_for(&id);
                    m.socket = Some(s.clone());
                    s
                }
            }
        };
        if let Some(file) = socket.file() {
            let dir = file.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(dir).map_err(|e| {
                HypervisorError::Io(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let agent = agent.ok_or_else(|| HypervisorError::NotRunning(id.clone()))?;
        let server = AgentServer::bind(agent, &[socket.url()])
            .await
            .map_err(|e| HypervisorError::Agent(e.to_string()))?;
        // Stopped while the server was binding: it must not outlive the VM.
        let server = {
            let mut m = self.lock();
            if m.state == Some(VmState::Created) {
                m.server = Some(server);
                m.state = Some(VmState::Running);
                None
            } else {
                Some(server)
            }
        };
        match server {
            None => {
                // A guest that dies (kill_guest) takes its VM down with it.
                if let Some(agent) = self.agent() {
                    let vm = self.clone();
                    tokio::spawn(async move {
                        agent.died().await;
                        vm.power_off(KILLED_EXIT_CODE).await;
                    });
                }
                Ok(())
            }
            Some(s) => {
                s.shutdown().await;
                Err(HypervisorError::NotRunning(id))
            }
        }
    }
}

fn parse_slot(path: &str) -> Option<u32> {
    u32::from_str_radix(path.rsplit('/').next()?, 16).ok()
}

/// Ceil `mem` to whole blocks of `block` MiB (`calcHotplugMemMiBSize`).
pub fn hotplug_size(mem: u32, block: u32) -> u32 {
    if block == 0 {
        mem
    } else {
        mem.div_ceil(block) * block
    }
}

#[async_trait::async_trait]
impl Hypervisor for SimHypervisor {
    async fn create_vm(
        &self,
        id: String,
        network: Network,
        config: HypervisorConfig,
    ) -> Result<()> {
        let mut fields = vec![("id", id.clone()), ("netns", network.netns_path.clone())];
        for (k, v) in &config.annotations {
            fields.push(("annotation", format!("{k}={v}")));
        }
        let seq = self.enter(VmOp::CreateVM, &fields).await?;
        let r = async {
            {
                let m = self.lock();
                if let Some(state) = m.state {
                    return Err(HypervisorError::InvalidTransition {
                        op: "create",
                        state,
                    });
                }
            }
            if id.is_empty() || id.contains('/') || id == "." || id == ".." {
                return Err(HypervisorError::Invalid(format!("invalid VM id {id:?}")));
            }
            Self::validate(&config)?;
            let mut agent_config = self.inner.settings.agent.clone();
            // One ordered record: the guest's RPCs go into the VM's trace.
            if agent_config.trace.is_none() {
                agent_config.trace = Some(self.inner.trace.clone());
            }
            // Each VM's guest has its own root.
            if let Some(root) = &agent_config.guest_root {
                agent_config.guest_root = Some(root.join(&id));
            }
            let agent = SimAgent::with_config(agent_config).map_err(io_err)?;
            agent.set_sandbox_label(&id);
            if let Some(hook) = &self.inner.settings.faults {
                agent.set_fault_hook(Arc::clone(hook));
            }
            let mut m = self.lock();
            m.id = Some(id.clone());
            m.state = Some(VmState::Created);
            m.config = config;
            m.netns = network.netns_path;
            m.agent = Some(agent);
            Ok(())
        }
        .await;
        self.end(seq, &r);
        r
    }

    async fn start_vm(&self, timeout_secs: u32) -> Result<()> {
        let seq = self
            .enter(VmOp::StartVM, &[("timeout", timeout_secs.to_string())])
            .await?;
        let r = async {
            let (id, agent) = {
                let m = self.lock();
                Self::require(&m, "start", &[VmState::Created])?;
                (m.id.clone().unwrap_or_default(), m.agent.clone())
            };
            let boot = self.inner.settings.boot_time;
            let limit = Duration::from_secs(u64::from(timeout_secs));
            if boot > limit {
                tokio::time::sleep(limit).await;
                self.power_off(1).await;
                return Err(HypervisorError::BootTimeout {
                    id,
                    timeout_secs: u64::from(timeout_secs),
                });
            }
            // A zero boot must not wait for the timer wheel's next tick (1 ms).
            if !boot.is_zero() {
                tokio::time::sleep(boot).await;
            }
            // Booted: binding the guest's server and marking the VM running must complete
            // together even if the caller goes away now, so they run in a task of their own.
            let vm = self.clone();
            match tokio::spawn(async move { vm.boot(id, agent).await }).await {
                Ok(r) => r,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(HypervisorError::Io(format!("booting: {e}"))),
            }
        }
        .await;
        self.end(seq, &r);
        r
    }

    async fn stop_vm(&self, wait_only: bool) -> Result<()> {
        self.stop_vm_then(wait_only, |_| Ok(())).await
    }

    async fn pause_vm(&self) -> Result<()> {
        self.transition(VmOp::PauseVM, "pause", VmState::Running, VmState::Paused)
            .await
    }

    async fn save_vm(&self) -> Result<()> {
        self.transition(VmOp::SaveVM, "save", VmState::Paused, VmState::Saved)
            .await
    }

    async fn resume_vm(&self) -> Result<()> {
        self.transition(VmOp::ResumeVM, "resume", VmState::Paused, VmState::Running)
            .await
    }

    async fn add_device(&self, device: Device, kind: DeviceType) -> Result<()> {
        let seq = self
            .enter(VmOp::AddDevice, &[("kind", format!("{kind:?}"))])
            .await?;
        let r = (|| {
            let mut m = self.lock();
            Self::require(&m, "cold-plug a device into", &[VmState::Created])?;
            let Device::Named { id } = device else {
                return Err(HypervisorError::Invalid(format!(
                    "{kind:?} devices are hot-plugged, not cold-plugged"
                )));
            };
            Self::plug(&mut m, id, kind, false).map(drop)
        })();
        self.end(seq, &r);
        r
    }

    async fn hotplug_add_device(&self, device: Device, kind: DeviceType) -> Result<HotplugResult> {
        let seq = self
            .enter(VmOp::HotplugAddDevice, &[("kind", format!("{kind:?}"))])
            .await?;
        let r = (|| {
            let mut m = self.lock();
            Self::require(&m, "hotplug a device into", &[VmState::Running])?;
            match (device, kind) {
                (Device::Vcpus(n), DeviceType::Cpu) => {
                    let current = m.config.num_vcpus + m.hot_vcpus;
                    // Kata does not fail past the maximum: it adds what fits.
                    let added = n.min(m.config.default_max_vcpus.saturating_sub(current));
                    m.hot_vcpus += added;
                    Ok(HotplugResult::Vcpus(added))
                }
                (Device::Memory(dev), DeviceType::Memory) => {
                    let dev = Self::hotplug_memory(&mut m, dev)?;
                    Ok(HotplugResult::MemoryMb(dev.size_mb))
                }
                (Device::Named { id }, kind) => Ok(Self::plug(&mut m, id, kind, true)?
                    .map_or(HotplugResult::None, |pci_path| HotplugResult::Pci {
                        pci_path,
                    })),
                (d, k) => Err(HypervisorError::Invalid(format!(
                    "device {d:?} does not match type {k:?}"
                ))),
            }
        })();
        self.end(seq, &r);
        r
    }

    async fn hotplug_remove_device(
        &self,
        device: Device,
        kind: DeviceType,
    ) -> Result<HotplugResult> {
        let seq = self
            .enter(VmOp::HotplugRemoveDevice, &[("kind", format!("{kind:?}"))])
            .await?;
        let r = (|| {
            let mut m = self.lock();
            Self::require(&m, "hot-unplug a device from", &[VmState::Running])?;
            match (device, kind) {
                (Device::Vcpus(n), DeviceType::Cpu) => {
                    if n > m.hot_vcpus {
                        return Err(HypervisorError::Limit(format!(
                            "Unable to remove {n} CPUs, currently there are only {} hotplugged CPUs",
                            m.hot_vcpus
                        )));
                    }
                    m.hot_vcpus -= n;
                    Ok(HotplugResult::Vcpus(n))
                }
                // QEMU cannot unplug memory: nothing is removed.
                (Device::Memory(_), DeviceType::Memory) => Ok(HotplugResult::MemoryMb(0)),
                (Device::Named { id }, _) => match m.devices.get(&id) {
                    Some(d) if d.hotplugged => {
                        m.devices.remove(&id);
                        Ok(HotplugResult::None)
                    }
                    Some(_) => Err(HypervisorError::Invalid(format!(
                        "device {id:?} was cold-plugged and cannot be hot-unplugged"
                    ))),
                    None => Err(HypervisorError::Invalid(format!(
                        "device {id:?} is not plugged"
                    ))),
                },
                (d, k) => Err(HypervisorError::Invalid(format!(
                    "device {d:?} does not match type {k:?}"
                ))),
            }
        })();
        self.end(seq, &r);
        r
    }

    async fn resolve_cold_plug_vfio_guest_pci_paths(
        &self,
        ids: Vec<String>,
    ) -> Result<BTreeMap<String, String>> {
        let m = self.lock();
        ids.into_iter()
            .map(|id| match m.devices.get(&id) {
                Some(PluggedDevice {
                    kind: DeviceType::Vfio,
                    pci_path: Some(p),
                    hotplugged: false,
                }) => Ok((id, p.clone())),
                _ => Err(HypervisorError::Invalid(format!(
                    "{id:?} is not a cold-plugged VFIO device"
                ))),
            })
            .collect()
    }

    async fn resize_memory(
        &self,
        mem_mb: u32,
        block_mb: u32,
        probe: bool,
    ) -> Result<(u32, MemoryDevice)> {
        let fields = [
            ("mem_mb", mem_mb.to_string()),
            ("block_mb", block_mb.to_string()),
        ];
        let seq = self.enter(VmOp::ResizeMemory, &fields).await?;
        let r = (|| {
            let mut m = self.lock();
            Self::require(&m, "resize memory of", &[VmState::Running])?;
            let current = Self::total_memory(&m);
            if current < mem_mb {
                let add = mem_mb
                    .min(m.config.default_max_memory_mb)
                    .saturating_sub(current);
                let size = hotplug_size(add, block_mb);
                if size == 0 {
                    return Ok((current, MemoryDevice::default()));
                }
                let dev = Self::hotplug_memory(
                    &mut m,
                    MemoryDevice {
                        size_mb: size as i32,
                        probe,
                        ..Default::default()
                    },
                )?;
                Ok((current + size, dev))
            } else if current > mem_mb {
                // Asked to shrink: QEMU cannot unplug memory, the size stays.
                let dev = MemoryDevice {
                    size_mb: hotplug_size(current - mem_mb, block_mb) as i32,
                    probe,
                    ..Default::default()
                };
                Ok((current, dev))
            } else {
                Ok((current, MemoryDevice::default()))
            }
        })();
        self.end(seq, &r);
        r
    }

    async fn resize_vcpus(&self, vcpus: u32) -> Result<(u32, u32)> {
        let seq = self
            .enter(VmOp::ResizeVCPUs, &[("vcpus", vcpus.to_string())])
            .await?;
        let r = (|| {
            let mut m = self.lock();
            Self::require(&m, "resize vCPUs of", &[VmState::Running])?;
            let current = m.config.num_vcpus + m.hot_vcpus;
            if current < vcpus {
                let added =
                    (vcpus - current).min(m.config.default_max_vcpus.saturating_sub(current));
                m.hot_vcpus += added;
                Ok((current, current + added))
            } else if current > vcpus {
                let remove = current - vcpus;
                if remove > m.hot_vcpus {
                    return Err(HypervisorError::Limit(format!(
                        "Unable to remove {remove} CPUs, currently there are only {} hotplugged CPUs",
                        m.hot_vcpus
                    )));
                }
                m.hot_vcpus -= remove;
                Ok((current, current - remove))
            } else {
                Ok((current, current))
            }
        })();
        self.end(seq, &r);
        r
    }

    async fn get_total_memory_mb(&self) -> u32 {
        Self::total_memory(&self.lock())
    }

    async fn get_vm_console(&self, _sandbox_id: String) -> Result<(String, String)> {
        let m = self.lock();
        let id =
            m.id.clone()
                .ok_or_else(|| HypervisorError::NotFound("(not created)".into()))?;
        Ok((
            "unix".into(),
            self.vm_dir(&id).join("console.sock").display().to_string(),
        ))
    }

    async fn disconnect(&self) {
        self.lock().control_connected = false;
        let seq = self.begin(VmOp::Disconnect, &[]);
        self.inner.trace.end(seq, CallStatus::Ok, "");
    }

    async fn capabilities(&self) -> Capabilities {
        self.inner.settings.capabilities
    }

    async fn hypervisor_config(&self) -> HypervisorConfig {
        self.lock().config.clone()
    }

    async fn get_thread_ids(&self) -> Result<VcpuThreadIds> {
        let m = self.lock();
        Self::require(
            &m,
            "list vCPU threads of",
            &[VmState::Running, VmState::Paused],
        )?;
        let pid = self.pid(&m);
        let n = m.config.num_vcpus + m.hot_vcpus;
        Ok((0..n).map(|i| (i, pid + 100 + i)).collect())
    }

    async fn cleanup(&self) -> Result<()> {
        self.remove_dir()
    }

    async fn set_config(&self, config: HypervisorConfig) -> Result<()> {
        Self::validate(&config)?;
        self.lock().config = config;
        Ok(())
    }

    async fn get_pids(&self) -> Vec<u32> {
        let m = self.lock();
        if m.state.is_none() {
            return Vec::new();
        }
        let pid = self.pid(&m);
        if m.config.virtio_fs {
            vec![pid, pid + 1]
        } else {
            vec![pid]
        }
    }

    async fn get_virtio_fs_pid(&self) -> Option<u32> {
        let m = self.lock();
        (m.config.virtio_fs && m.state.is_some()).then(|| self.pid(&m) + 1)
    }

    async fn from_grpc(&self, config: HypervisorConfig, data: Vec<u8>) -> Result<()> {
        let state: HypervisorState = serde_json::from_slice(&data)
            .map_err(|e| HypervisorError::Invalid(format!("bad factory state: {e}")))?;
        Self::validate(&config)?;
        self.lock().config = config;
        self.load(state).await;
        Ok(())
    }

    async fn to_grpc(&self) -> Result<Vec<u8>> {
        let state = self.save().await;
        serde_json::to_vec(&state).map_err(|e| HypervisorError::Io(e.to_string()))
    }

    async fn check(&self) -> Result<()> {
        if let Some(hook) = &self.inner.settings.faults {
            let id = self.lock().id.clone();
            let verdict = hook.decide(&CallInfo {
                target: VmOp::CheckVM.name(),
                request: VmOp::CheckVM.name(),
                fields: &[],
                conn: None,
                sandbox: id.as_deref(),
            });
            if verdict != Verdict::Pass {
                let seq = self.begin(VmOp::CheckVM, &[]);
                let r = self.fault_verdict(seq, verdict, id).await;
                self.end(seq, &r);
                r?;
            }
        }
        let m = self.lock();
        match m.state {
            Some(VmState::Stopped) | None => Err(HypervisorError::NotRunning(
                m.id.clone().unwrap_or_else(|| "(not created)".into()),
            )),
            Some(_) => Ok(()),
        }
    }

    async fn save(&self) -> HypervisorState {
        let m = self.lock();
        HypervisorState {
            id: m.id.clone().unwrap_or_default(),
            pid: self.pid(&m),
            state: m.state.unwrap_or(VmState::Stopped),
            hotplugged_vcpus: m.hot_vcpus,
            hotplugged_memory_mb: m.memory.iter().map(|d| d.size_mb as u32).sum(),
            memory_devices: m.memory.clone(),
            devices: m.devices.clone(),
            socket: m.socket.clone(),
        }
    }

    async fn load(&self, state: HypervisorState) {
        let mut m = self.lock();
        m.id = Some(state.id);
        m.restored_pid = Some(state.pid);
        m.state = Some(state.state);
        m.hot_vcpus = state.hotplugged_vcpus;
        m.memory = state.memory_devices;
        m.devices = state.devices;
        m.socket = state.socket;
    }

    async fn generate_socket(&self, id: String) -> Result<AgentSocket> {
        let mut m = self.lock();
        let socket = self.socket_for(&id);
        m.socket = Some(socket.clone());
        Ok(socket)
    }

    async fn is_rate_limiter_builtin(&self) -> bool {
        self.lock().config.rate_limiter_builtin
    }

    async fn wait_vm(&self) -> Result<i32> {
        let mut rx = self.inner.exit.subscribe();
        let code = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| HypervisorError::NotRunning("(dropped)".into()))?;
        Ok(code.unwrap_or(0))
    }

    async fn get_agent_socket(&self) -> Result<String> {
        let m = self.lock();
        m.socket
            .as_ref()
            .map(AgentSocket::url)
            .ok_or_else(|| HypervisorError::Invalid("no agent socket generated yet".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_added_in_whole_blocks() {
        assert_eq!(hotplug_size(100, 128), 128);
        assert_eq!(hotplug_size(128, 128), 128);
        assert_eq!(hotplug_size(129, 128), 256);
        assert_eq!(hotplug_size(100, 0), 100);
    }

    #[test]
    fn pids_are_stable_per_id() {
        assert_eq!(pid_for("sandbox-a"), pid_for("sandbox-a"));
        assert_ne!(pid_for("sandbox-a"), pid_for("sandbox-b"));
        assert!((10_000..60_000).contains(&pid_for("x")));
    }
}
