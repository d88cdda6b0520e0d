//! Kata's remote-hypervisor protocol (`hypervisor.Hypervisor`: CreateVM, StartVM, StopVM,
//! Version): the service over many VMs, and a client.
//!
//! A runtime with `hypervisor.remote` calls `CreateVM` (with its annotations and netns), gets
//! back an absolute socket path, calls `StartVM`, then dials the agent at `remote://PATH`. The
//! Go runtime opens a new hypervisor connection for every call; runtime-rs keeps one; both
//! work. `StopVM` tears the VM down and removes its sockets; runtime-rs sends it three times
//! and ignores the errors of the last two (the VM is gone by then: NOT_FOUND).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim_agent::Trace;
use sim_agent::fault::FaultEngine;
use sim_agent::server::TtrpcServer;
use tokio::sync::watch;
use ttrpc::r#async::TtrpcContext;

use crate::error::{HypervisorError, Result};
use crate::hypervisor::{Hypervisor, Network};
use crate::protocols::{remote, remote_ttrpc};
use crate::types::{
    AgentSocket, Capabilities, Device, DeviceType, HotplugResult, HypervisorConfig,
    HypervisorState, MemoryDevice, SocketKind, VcpuThreadIds, VmState,
};
use crate::vm::{SimHypervisor, SimVmConfig};

/// The annotation prefix of hypervisor settings the runtimes send with `CreateVM`.
const HV_ANNOTATION: &str = "io.katacontainers.config.hypervisor.";

/// The longest unix socket path (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How a [`Fleet`] builds its VMs.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Where VM directories and agent sockets go (made absolute).
    pub state_dir: PathBuf,
    /// The template of every VM (its `state_dir` and `socket_kind` are the fleet's).
    pub vm: SimVmConfig,
    /// The hypervisor configuration before a `CreateVM`'s annotations apply.
    pub hypervisor: HypervisorConfig,
    /// The fault rules every VM and guest of the fleet consults.
    pub faults: FaultEngine,
    /// Keep every VM's operations and guest calls in [`Fleet::trace`], for a driver that reads
    /// them after a run. Off by default: a long-running fleet then keeps each VM's record only
    /// until its StopVM, so its memory does not grow with every pod it has served.
    pub record: bool,
}

impl FleetConfig {
    /// A fleet in `state_dir` with the default VM and configuration.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        FleetConfig {
            state_dir: state_dir.into(),
            vm: SimVmConfig::default(),
            hypervisor: HypervisorConfig::default(),
            faults: FaultEngine::default(),
            record: false,
        }
    }
}

/// Many VMs by id: what the remote-hypervisor service manages.
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    vms: Arc<Mutex<BTreeMap<String, SimHypervisor>>>,
    trace: Trace,
}

impl Fleet {
    /// A fleet whose state directory exists and is writable (checked now, so that a bad
    /// directory is a clear error at start rather than a failed `CreateVM` later). A missing
    /// state directory is made, but never its parents: a typo must not create directories.
    pub fn new(mut config: FleetConfig) -> Result<Self> {
        let dir = &config.state_dir;
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = dir
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                return Err(HypervisorError::Io(format!(
                    "state dir {}: cannot create: the directory {} does not exist",
                    dir.display(),
                    parent.display()
                )));
            }
            Err(e) => {
                return Err(HypervisorError::Io(format!(
                    "state dir {}: cannot create: {e}",
                    dir.display()
                )));
            }
        }
        let dir = std::fs::canonicalize(dir).map_err(|e| {
            HypervisorError::Io(format!("state dir {}: {e}", config.state_dir.display()))
        })?;
        let probe = dir.join(".kata-sim-write-test");
        std::fs::write(&probe, b"").map_err(|e| {
            HypervisorError::Io(format!("state dir {} is not writable: {e}", dir.display()))
        })?;
        let _ = std::fs::remove_file(&probe);
        config.state_dir = dir.clone();
        config.vm.state_dir = dir;
        config.vm.socket_kind = SocketKind::Remote;
        config.vm.faults = Some(Arc::new(config.faults.clone()));
        Ok(Fleet {
            config,
            vms: Arc::default(),
            trace: Trace::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SimHypervisor>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of every VM operation and guest call, in order, when the fleet was
    /// configured to [record](FleetConfig::record) them (empty otherwise).
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// The fault engine of every VM and guest.
    pub fn faults(&self) -> &FaultEngine {
        &self.config.faults
    }

    /// The state directory (absolute).
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// The VM with this id.
    pub fn vm(&self, id: &str) -> Option<SimHypervisor> {
        self.lock().get(id).cloned()
    }

    /// The ids of the VMs, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// `CreateVM`: a new VM and its guest; returns the agent's socket path.
    pub async fn create_vm(
        &self,
        id: &str,
        annotations: BTreeMap<String, String>,
        netns: &str,
    ) -> Result<PathBuf> {
        let mut config = self.config.hypervisor.clone();
        let number = |key: &str| {
            annotations
                .get(&format!("{HV_ANNOTATION}{key}"))
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|n| *n > 0)
        };
        if let Some(n) = number("default_vcpus") {
            config.num_vcpus = n;
            config.default_max_vcpus = config.default_max_vcpus.max(n);
        }
        if let Some(mb) = number("default_memory") {
            config.memory_size_mb = mb;
            config.default_max_memory_mb = config.default_max_memory_mb.max(mb);
        }
        config.annotations = annotations;
        let socket_len = self.config.state_dir.join(id).join("agent.sock");
        if socket_len.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(HypervisorError::Invalid(format!(
                "the agent socket {} would be longer than {MAX_SOCKET_PATH} bytes; use a shorter --state-dir",
                socket_len.display()
            )));
        }
        let vm = {
            let mut vms = self.lock();
            if vms.contains_key(id) {
                return Err(HypervisorError::AlreadyExists(id.to_string()));
            }
            let mut settings = self.config.vm.clone();
            if self.config.record {
                settings.trace = Some(self.trace.clone());
            }
            let vm = SimHypervisor::new(settings);
            vms.insert(id.to_string(), vm.clone());
            vm
        };
        // Until it is disarmed, the id's entry and whatever the VM created are taken back
        // when this future ends, however it ends: a failure, or a caller that went away while
        // the creation waited (a delay fault).
        let reservation = Reservation {
            fleet: self,
            id,
            vm: vm.clone(),
        };
        let network = Network {
            netns_path: netns.to_string(),
        };
        let created = async {
            vm.create_vm(id.to_string(), network, config).await?;
            vm.generate_socket(id.to_string()).await
        }
        .await;
        match created {
            Ok(AgentSocket::Remote { path }) => {
                std::mem::forget(reservation);
                tracing::info!(vm = id, netns, socket = %path.display(), "VM created");
                Ok(path)
            }
            Ok(other) => Err(HypervisorError::Invalid(format!(
                "a remote VM needs a remote socket, not {other:?}"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Forgets `vm` as `id`, unless the fleet has another VM by that id by now.
    fn forget(&self, id: &str, vm: &SimHypervisor) {
        forget(&self.vms, id, vm);
    }

    /// `StartVM`: boots the VM; its agent then answers on the socket.
    pub async fn start_vm(&self, id: &str, timeout_secs: u32) -> Result<()> {
        let vm = self
            .vm(id)
            .ok_or_else(|| HypervisorError::NotFound(id.to_string()))?;
        vm.start_vm(timeout_secs).await?;
        tracing::info!(vm = id, "VM started");
        Ok(())
    }

    /// `StopVM`: powers the VM off, removes its sockets and forgets it.
    ///
    /// Cancel safe: dropped while it waits (a delay fault), the VM runs on, still in the
    /// fleet; once the fault hook lets it through, the power-off, forgetting the VM and
    /// removing its directory complete in a task of their own. A StopVM that fails leaves
    /// the VM in the fleet (a later StopVM or the shutdown stops it).
    pub async fn stop_vm(&self, id: &str) -> Result<()> {
        let vm = self
            .vm(id)
            .ok_or_else(|| HypervisorError::NotFound(id.to_string()))?;
        let vms = Arc::clone(&self.vms);
        let owned = id.to_string();
        // Forgetting the VM and removing its directory belong to the power-off: they run in
        // its task, so a caller that goes away after the fault hook let StopVM through
        // changes nothing about the outcome.
        let forget = move |vm: &SimHypervisor| {
            forget(&vms, &owned, vm);
            vm.remove_dir()
        };
        let finish_other = |vm: &SimHypervisor| {
            // Another StopVM (or a death) powered it off: forget it once that is complete.
            if self.vm(id).is_none_or(|v| !v.same_vm(vm)) {
                return Err(HypervisorError::NotFound(id.to_string()));
            }
            self.forget(id, vm);
            vm.remove_dir()
        };
        if vm.state() == Some(VmState::Stopped) {
            vm.wait_vm().await?;
            finish_other(&vm)?;
        } else {
            match vm.stop_vm_then(false, forget).await {
                Ok(()) => {}
                Err(HypervisorError::InvalidTransition {
                    state: VmState::Stopped,
                    ..
                }) => {
                    vm.wait_vm().await?;
                    finish_other(&vm)?;
                }
                Err(e) => return Err(e),
            }
        }
        if self.config.record {
            tracing::info!(vm = id, "VM stopped");
        } else {
            // The VM's own record (its operations and its guest's calls) ends here.
            let trace = vm.trace();
            tracing::info!(vm = id, events = trace.len(), "VM stopped");
            if tracing::enabled!(tracing::Level::DEBUG) {
                tracing::debug!(vm = id, "calls: {}", trace.methods().join(" "));
            }
        }
        Ok(())
    }

    /// Stops every VM (on shutdown).
    pub async fn shutdown(&self) {
        for id in self.ids() {
            // A StopVM that a fault makes fail or hang (`StopVM=hang`) does not hold the
            // shutdown: past `SHUTDOWN_STOP_LIMIT` the VM is taken down all the same (StopVM's
            // waiting phase changes nothing, so giving up on it is safe).
            let stopped = tokio::time::timeout(SHUTDOWN_STOP_LIMIT, self.stop_vm(&id))
                .await
                .unwrap_or_else(|_| {
                    Err(HypervisorError::Invalid(format!(
                        "StopVM did not finish within {SHUTDOWN_STOP_LIMIT:?}"
                    )))
                });
            if let Err(e) = stopped {
                tracing::warn!(vm = id, error = %e, "stopping VM on shutdown; forcing it");
                if let Some(vm) = self.vm(&id) {
                    self.forget(&id, &vm);
                    vm.abandon_and_wait().await;
                }
            }
        }
    }
}

/// How long a fleet's shutdown waits for one VM's StopVM before it forces the VM down.
pub const SHUTDOWN_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Removes `vm` from `vms` as `id`, unless another VM has that id by now.
fn forget(vms: &Mutex<BTreeMap<String, SimHypervisor>>, id: &str, vm: &SimHypervisor) {
    let mut vms = vms.lock().unwrap_or_else(|p| p.into_inner());
    if vms.get(id).is_some_and(|v| v.same_vm(vm)) {
        vms.remove(id);
    }
}

/// A VM entry a `CreateVM` has reserved; dropped before it is disarmed (`mem::forget`), it
/// removes the entry and tears down what the VM created.
struct Reservation<'a> {
    fleet: &'a Fleet,
    id: &'a str,
    vm: SimHypervisor,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.fleet.forget(self.id, &self.vm);
        self.vm.abandon();
    }
}

/// The ttrpc `hypervisor.Hypervisor` service over a [`Fleet`].
#[derive(Debug, Clone)]
struct Service {
    fleet: Arc<Fleet>,
}

/// The deadline a call carries, in whole seconds (at least 1), or `default`.
fn deadline_secs(ctx: &TtrpcContext, default: u32) -> u32 {
    if ctx.timeout_nano > 0 {
        (ctx.timeout_nano / 1_000_000_000).clamp(1, i64::from(u32::MAX)) as u32
    } else {
        default
    }
}

#[async_trait::async_trait]
impl remote_ttrpc::Hypervisor for Service {
    async fn create_vm(
        &self,
        _ctx: &TtrpcContext,
        req: remote::CreateVMRequest,
    ) -> ttrpc::Result<remote::CreateVMResponse> {
        let annotations: BTreeMap<String, String> = req.annotations.into_iter().collect();
        let path = self
            .fleet
            .create_vm(&req.id, annotations, &req.networkNamespacePath)
            .await?;
        Ok(remote::CreateVMResponse {
            agentSocketPath: path.display().to_string(),
            ..Default::default()
        })
    }

    async fn start_vm(
        &self,
        ctx: &TtrpcContext,
        req: remote::StartVMRequest,
    ) -> ttrpc::Result<remote::StartVMResponse> {
        self.fleet
            .start_vm(&req.id, deadline_secs(ctx, 600))
            .await?;
        Ok(remote::StartVMResponse::new())
    }

    async fn stop_vm(
        &self,
        _ctx: &TtrpcContext,
        req: remote::StopVMRequest,
    ) -> ttrpc::Result<remote::StopVMResponse> {
        self.fleet.stop_vm(&req.id).await?;
        Ok(remote::StopVMResponse::new())
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: remote::VersionRequest,
    ) -> ttrpc::Result<remote::VersionResponse> {
        Ok(remote::VersionResponse {
            version: format!("kata-sim {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }
}

/// A running remote-hypervisor service on a unix socket.
pub struct RemoteHypervisorServer {
    server: TtrpcServer,
    socket: PathBuf,
    /// The socket file: removed when the server goes (on shutdown, or a failed start), only if
    /// it is still ours.
    file: sim_agent::server::transport::SocketFile,
    fleet: Arc<Fleet>,
}

impl std::fmt::Debug for RemoteHypervisorServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteHypervisorServer")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl RemoteHypervisorServer {
    /// Serves `fleet` on the unix socket `socket` (0600). A stale socket file is replaced; a
    /// socket someone still serves, or any other file, is an error that names the path, and so
    /// is a directory that does not exist.
    pub async fn bind(socket: &Path, fleet: Arc<Fleet>) -> Result<Self> {
        // One helper binds every socket: 0600, only a stale socket replaced, no directory made.
        let (listener, file) = sim_agent::server::transport::bind_unix(socket)
            .map_err(|e| HypervisorError::Io(e.to_string()))?;
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(|e| HypervisorError::Io(e.to_string()))?;
        let service = Arc::new(Service {
            fleet: Arc::clone(&fleet),
        });
        // kata-sim's own bounded connection loop, not ttrpc-rust's server: a connection costs
        // what its peer sent, its calls in flight are bounded, and a failing accept backs off.
        let server = TtrpcServer::serve(
            socket.display().to_string(),
            listener,
            remote_ttrpc::create_hypervisor(service),
        );
        tracing::info!(socket = %socket.display(), state_dir = %fleet.state_dir().display(), "remote hypervisor listening");
        Ok(RemoteHypervisorServer {
            server,
            socket: socket.to_path_buf(),
            file,
            fleet,
        })
    }

    /// The fleet it serves.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops serving, stops every VM (removing their sockets) and removes the socket.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        self.fleet.shutdown().await;
        // A server started since on the same path owns the file now: `file` checks.
        drop(self.file);
    }
}

#[derive(Debug, Default)]
struct ClientState {
    id: Option<String>,
    agent_socket: Option<PathBuf>,
    config: HypervisorConfig,
}

/// A client of the remote-hypervisor service, implementing [`Hypervisor`] as virtcontainers'
/// `remoteHypervisor` does (`remote.go`): the lifecycle goes over the wire; pause, save,
/// resume, hotplug and the console are not implemented; resizes echo their input.
#[derive(Clone)]
pub struct RemoteHypervisor {
    client: remote_ttrpc::HypervisorClient,
    state: Arc<Mutex<ClientState>>,
    stopped: watch::Sender<Option<i32>>,
}

impl std::fmt::Debug for RemoteHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteHypervisor").finish_non_exhaustive()
    }
}

fn not_implemented(name: &'static str) -> HypervisorError {
    HypervisorError::Unimplemented(name)
}

fn ctx(timeout: Option<Duration>) -> ttrpc::context::Context {
    let mut c = ttrpc::context::with_timeout(0);
    if let Some(t) = timeout {
        c.timeout_nano = t.as_nanos().min(i64::MAX as u128) as i64;
    }
    c
}

impl RemoteHypervisor {
    /// Dials the service's unix socket.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let stream =
            tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| HypervisorError::Remote {
                    code: ttrpc::Code::UNAVAILABLE,
                    message: format!(
                        "failed to connect to remote hypervisor socket {}: {e}",
                        socket.display()
                    ),
                })?;
        let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(stream));
        Ok(RemoteHypervisor {
            client: remote_ttrpc::HypervisorClient::new(client),
            state: Arc::default(),
            stopped: watch::channel(None).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn id(&self) -> Result<String> {
        self.lock()
            .id
            .clone()
            .ok_or_else(|| HypervisorError::Invalid("CreateVM was not called".into()))
    }

    /// `Version`.
    pub async fn version(&self) -> Result<String> {
        let r = self
            .client
            .version(ctx(None), &remote::VersionRequest::new())
            .await?;
        Ok(r.version)
    }
}

#[async_trait::async_trait]
impl Hypervisor for RemoteHypervisor {
    async fn create_vm(
        &self,
        id: String,
        network: Network,
        config: HypervisorConfig,
    ) -> Result<()> {
        let req = remote::CreateVMRequest {
            id: id.clone(),
            annotations: config
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            networkNamespacePath: network.netns_path,
            ..Default::default()
        };
        let resp = self.client.create_vm(ctx(None), &req).await?;
        if resp.agentSocketPath.is_empty() {
            return Err(HypervisorError::Invalid(
                "remote hypervisor returned an empty agent socket path".into(),
            ));
        }
        let mut s = self.lock();
        s.id = Some(id);
        s.agent_socket = Some(PathBuf::from(resp.agentSocketPath));
        s.config = config;
        Ok(())
    }

    async fn start_vm(&self, timeout_secs: u32) -> Result<()> {
        let req = remote::StartVMRequest {
            id: self.id()?,
            ..Default::default()
        };
        let timeout = Duration::from_secs(u64::from(timeout_secs.max(10)));
        self.client.start_vm(ctx(Some(timeout)), &req).await?;
        Ok(())
    }

    async fn stop_vm(&self, wait_only: bool) -> Result<()> {
        if wait_only {
            return Ok(());
        }
        let req = remote::StopVMRequest {
            id: self.id()?,
            ..Default::default()
        };
        let r = self.client.stop_vm(ctx(None), &req).await;
        self.stopped.send_replace(Some(1));
        r?;
        Ok(())
    }

    async fn pause_vm(&self) -> Result<()> {
        Err(not_implemented("PauseVM"))
    }

    async fn save_vm(&self) -> Result<()> {
        Err(not_implemented("SaveVM"))
    }

    async fn resume_vm(&self) -> Result<()> {
        Err(not_implemented("ResumeVM"))
    }

    async fn add_device(&self, _device: Device, _kind: DeviceType) -> Result<()> {
        // remote.go ignores cold-plugged devices.
        Ok(())
    }

    async fn hotplug_add_device(
        &self,
        _device: Device,
        _kind: DeviceType,
    ) -> Result<HotplugResult> {
        Err(not_implemented("HotplugAddDevice"))
    }

    async fn hotplug_remove_device(
        &self,
        _device: Device,
        _kind: DeviceType,
    ) -> Result<HotplugResult> {
        Err(not_implemented("HotplugRemoveDevice"))
    }

    async fn resolve_cold_plug_vfio_guest_pci_paths(
        &self,
        _ids: Vec<String>,
    ) -> Result<BTreeMap<String, String>> {
        Ok(BTreeMap::new())
    }

    async fn resize_memory(
        &self,
        mem_mb: u32,
        _block_mb: u32,
        _probe: bool,
    ) -> Result<(u32, MemoryDevice)> {
        Ok((mem_mb, MemoryDevice::default()))
    }

    async fn resize_vcpus(&self, vcpus: u32) -> Result<(u32, u32)> {
        Ok((vcpus, vcpus))
    }

    async fn get_total_memory_mb(&self) -> u32 {
        self.lock().config.memory_size_mb
    }

    async fn get_vm_console(&self, _sandbox_id: String) -> Result<(String, String)> {
        Err(not_implemented("GetVMConsole"))
    }

    async fn disconnect(&self) {}

    async fn capabilities(&self) -> Capabilities {
        Capabilities::REMOTE
    }

    async fn hypervisor_config(&self) -> HypervisorConfig {
        self.lock().config.clone()
    }

    async fn get_thread_ids(&self) -> Result<VcpuThreadIds> {
        Ok(VcpuThreadIds::new())
    }

    async fn cleanup(&self) -> Result<()> {
        Ok(())
    }

    async fn set_config(&self, config: HypervisorConfig) -> Result<()> {
        self.lock().config = config;
        Ok(())
    }

    async fn get_pids(&self) -> Vec<u32> {
        vec![std::process::id()]
    }

    async fn get_virtio_fs_pid(&self) -> Option<u32> {
        None
    }

    async fn from_grpc(&self, _config: HypervisorConfig, _data: Vec<u8>) -> Result<()> {
        Err(not_implemented("fromGrpc"))
    }

    async fn to_grpc(&self) -> Result<Vec<u8>> {
        Err(not_implemented("toGrpc"))
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }

    async fn save(&self) -> HypervisorState {
        let s = self.lock();
        HypervisorState {
            id: s.id.clone().unwrap_or_default(),
            pid: std::process::id(),
            state: VmState::Running,
            hotplugged_vcpus: 0,
            hotplugged_memory_mb: 0,
            memory_devices: Vec::new(),
            devices: BTreeMap::new(),
            socket: s
                .agent_socket
                .clone()
                .map(|path| AgentSocket::Remote { path }),
        }
    }

    async fn load(&self, _state: HypervisorState) {}

    async fn generate_socket(&self, _id: String) -> Result<AgentSocket> {
        let path = self
            .lock()
            .agent_socket
            .clone()
            .ok_or_else(|| HypervisorError::Invalid("CreateVM was not called".into()))?;
        if !path.is_absolute() {
            return Err(HypervisorError::Invalid(format!(
                "agent socket path {} is not absolute",
                path.display()
            )));
        }
        Ok(AgentSocket::Remote { path })
    }

    async fn is_rate_limiter_builtin(&self) -> bool {
        false
    }

    async fn wait_vm(&self) -> Result<i32> {
        let mut rx = self.stopped.subscribe();
        let code = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| HypervisorError::NotRunning("(dropped)".into()))?;
        Ok(code.unwrap_or(1))
    }

    async fn get_agent_socket(&self) -> Result<String> {
        Ok(self.generate_socket(String::new()).await?.url())
    }
}
