//! The [`Agent`] trait: every method of virtcontainers' `agent` interface, in Rust.
//!
//! Upstream defines the interface in `src/runtime/virtcontainers/agent.go` (53 methods) and
//! implements it in `kata_agent.go`. Here it is a trait so that one test body can drive the
//! in-process [`crate::SimAgent`], a [`crate::RemoteAgent`] over the wire, or a
//! [`MockAgent`] with expectations. The host-side logic of `kata_agent.go` (which RPC each
//! method sends, with which deadline, and the host-local bookkeeping) lives in the blanket
//! implementation for every [`AgentRpc`].
//!
//! # Method map
//!
//! | `agent.go` method | Rust method | sends (deadline) |
//! |---|---|---|
//! | `init` | [`Agent::init`] | host-local: stores [`AgentConfig`] |
//! | `capabilities` | [`Agent::capabilities`] | host-local |
//! | `check` | [`Agent::check`] | `Health.Check` (30 s) |
//! | `longLiveConn` | [`Agent::long_live_conn`] | host-local |
//! | `disconnect` | [`Agent::disconnect`] | host-local |
//! | `getAgentURL` | [`Agent::get_agent_url`] | host-local |
//! | `setAgentURL` | [`Agent::set_agent_url`] | host-local |
//! | `reuseAgent` | [`Agent::reuse_agent`] | host-local |
//! | `createSandbox` | [`Agent::create_sandbox`] | host-local (`configure`) |
//! | `exec` | [`Agent::exec`] | `ExecProcess` (60 s) |
//! | `startSandbox` | [`Agent::start_sandbox`] | `Check`, `SetPolicy` if configured, `CreateSandbox` (60 s) |
//! | `stopSandbox` | [`Agent::stop_sandbox`] | `DestroySandbox` (60 s) |
//! | `createContainer` | [`Agent::create_container`] | `CreateContainer` (`create_container_timeout`) |
//! | `startContainer` | [`Agent::start_container`] | `StartContainer` (60 s) |
//! | `stopContainer` | [`Agent::stop_container`] | `RemoveContainer` with timeout 0 (60 s) |
//! | `signalProcess` | [`Agent::signal_process`] | `SignalProcess`; `all` sends exec id `""` (60 s) |
//! | `winsizeProcess` | [`Agent::winsize_process`] | `TtyWinResize` (60 s) |
//! | `writeProcessStdin` | [`Agent::write_process_stdin`] | `WriteStdin` (60 s) |
//! | `closeProcessStdin` | [`Agent::close_process_stdin`] | `CloseStdin` (60 s) |
//! | `readProcessStdout` | [`Agent::read_process_stdout`] | `ReadStdout` (none) |
//! | `readProcessStderr` | [`Agent::read_process_stderr`] | `ReadStderr` (none) |
//! | `updateContainer` | [`Agent::update_container`] | `UpdateContainer` (60 s) |
//! | `waitProcess` | [`Agent::wait_process`] | `WaitProcess` (none) |
//! | `onlineCPUMem` | [`Agent::online_cpu_mem`] | `OnlineCPUMem` with `wait=false` (60 s) |
//! | `memHotplugByProbe` | [`Agent::mem_hotplug_by_probe`] | `MemHotplugByProbe` (60 s) |
//! | `statsContainer` | [`Agent::stats_container`] | `StatsContainer` (60 s) |
//! | `pauseContainer` | [`Agent::pause_container`] | `PauseContainer` (60 s) |
//! | `resumeContainer` | [`Agent::resume_container`] | `ResumeContainer` (60 s) |
//! | `removeStaleVirtiofsShareMounts` | [`Agent::remove_stale_virtiofs_share_mounts`] | `RemoveStaleVirtiofsShareMounts` (60 s) |
//! | `configure` | [`Agent::configure`] | host-local |
//! | `configureFromGrpc` | [`Agent::configure_from_grpc`] | host-local |
//! | `reseedRNG` | [`Agent::reseed_rng`] | `ReseedRandomDev` (60 s) |
//! | `updateInterface` | [`Agent::update_interface`] | `UpdateInterface` (60 s) |
//! | `listInterfaces` | [`Agent::list_interfaces`] | `ListInterfaces` (60 s) |
//! | `updateEphemeralMounts` | [`Agent::update_ephemeral_mounts`] | `UpdateEphemeralMounts` (60 s) |
//! | `updateRoutes` | [`Agent::update_routes`] | `UpdateRoutes` (60 s) |
//! | `listRoutes` | [`Agent::list_routes`] | `ListRoutes` (60 s) |
//! | `getGuestDetails` | [`Agent::get_guest_details`] | `GetGuestDetails` (60 s) |
//! | `setGuestDateTime` | [`Agent::set_guest_date_time`] | `SetGuestDateTime` (60 s) |
//! | `copyFile` | [`Agent::copy_file`] | `CopyFile` in 1 MiB chunks (60 s each) |
//! | `addSwap` | [`Agent::add_swap`] | `AddSwap` (60 s) |
//! | `markDead` | [`Agent::mark_dead`] | host-local: calls in flight fail at once with "ttrpc: closed", every later call with "Dead agent" |
//! | `cleanup` | [`Agent::cleanup`] | host-local |
//! | `save` | [`Agent::save`] | host-local |
//! | `load` | [`Agent::load`] | host-local |
//! | `getOOMEvent` | [`Agent::get_oom_event`] | `GetOOMEvent` (none) |
//! | `getAgentMetrics` | [`Agent::get_agent_metrics`] | `GetMetrics` (60 s) |
//! | `getGuestVolumeStats` | [`Agent::get_guest_volume_stats`] | `GetVolumeStats` (60 s) |
//! | `resizeGuestVolume` | [`Agent::resize_guest_volume`] | `ResizeVolume` (60 s) |
//! | `getIPTables` | [`Agent::get_ip_tables`] | `GetIPTables` (60 s) |
//! | `setIPTables` | [`Agent::set_ip_tables`] | `SetIPTables` (60 s) |
//! | `setPolicy` | [`Agent::set_policy`] | `SetPolicy` (60 s) |
//! | `getDiagnosticData` | [`Agent::get_diagnostic_data`] | `GetDiagnosticData` (60 s) |
//!
//! RPCs that no interface method sends are still served on the wire and reachable through
//! [`AgentRpc`]: `AddARPNeighbors` (a private helper in Go), `AddSwapPath`,
//! `MemAgentMemcgSet`, `MemAgentCompactSet` and `Health.Version`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::error::{AgentError, Result};
use crate::protocols::{agent, csi, health, oci, types};
use crate::rpc::{AgentRpc, CallOpts};

/// The Go runtime's default agent request deadline (`defaultRequestTimeout`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The deadline of `Health.Check` (`checkRequestTimeout`).
pub const CHECK_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `CopyFile` chunk size of the Go runtime.
pub const COPY_FILE_CHUNK: usize = 1 << 20;
/// Go's `os.ModeDir` bit, which the Go runtime leaves in `CopyFileRequest.dir_mode`.
pub const GO_MODE_DIR: u32 = 1 << 31;

/// The host configuration of the agent (`KataAgentConfig`), given to [`Agent::init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Keep one connection for the sandbox's life (the Go runtime forces this on).
    pub long_live_conn: bool,
    /// Deadline of `CreateContainer` (`create_container_timeout`).
    pub create_container_timeout: Duration,
    /// Dial timeout in seconds (`dial_timeout`).
    pub dial_timeout_secs: u32,
    /// A policy to send with `SetPolicy` during [`Agent::start_sandbox`].
    pub policy: Option<String>,
    /// Whether the runtime disables VM shutdown on stop (returned by `init`).
    pub disable_vm_shutdown: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            long_live_conn: true,
            create_container_timeout: DEFAULT_REQUEST_TIMEOUT,
            dial_timeout_secs: 45,
            policy: None,
            disable_vm_shutdown: false,
        }
    }
}

/// What the agent lets the host do (`types.Capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentCapabilities {
    /// Block devices can back container rootfs (the kata agent always supports it).
    pub block_device_support: bool,
}

/// The persisted part of the host's agent state (`persistapi.AgentState`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentState {
    /// The agent URL.
    pub url: String,
}

/// Host-local description of a sandbox, given to [`Agent::create_sandbox`] and
/// [`Agent::configure`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxConfig {
    /// Sandbox id.
    pub id: String,
    /// Host directory shared with the guest, if any.
    pub share_path: Option<PathBuf>,
    /// The agent URL the hypervisor generated.
    pub agent_url: Option<String>,
}

#[derive(Debug, Default)]
struct HostInner {
    dead: bool,
    url: Option<String>,
    config: AgentConfig,
    sandbox: Option<SandboxConfig>,
    connected: bool,
}

/// The host's view of one agent: what Go's `kataAgent` keeps besides the connection.
#[derive(Debug)]
pub struct HostState {
    inner: Mutex<HostInner>,
    /// Becomes `true` once, at [`Agent::mark_dead`]: calls in flight wait on it.
    dead: tokio::sync::watch::Sender<bool>,
}

impl Default for HostState {
    fn default() -> Self {
        Self::new(None)
    }
}

impl HostState {
    /// A fresh state with an optional agent URL.
    pub fn new(url: Option<String>) -> Self {
        HostState {
            inner: Mutex::new(HostInner {
                url,
                ..Default::default()
            }),
            dead: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Marks the agent dead (Go's `markDead`: `dead = true`, then `disconnect`, which closes
    /// the ttrpc client): every later call fails with "Dead agent", and every call in flight
    /// fails at once with "ttrpc: closed" ([`HostState::while_alive`], [`HostState::died`]).
    pub fn mark_dead(&self) {
        {
            let mut host = self.lock();
            host.dead = true;
            host.connected = false;
        }
        self.dead.send_replace(true);
    }

    /// Resolves once the agent is marked dead (at once if it is).
    pub async fn died(&self) {
        let mut dead = self.dead.subscribe();
        // The sender lives as long as `self`: `wait_for` only returns once the value is true.
        let _ = dead.wait_for(|d| *d).await;
    }

    /// Runs one call unless the agent is marked dead first: a call in flight at
    /// [`HostState::mark_dead`] fails at once with [`AgentError::ConnectionClosed`], as an
    /// in-flight call of Go's ttrpc client does when `markDead` closes it (`ErrClosed`,
    /// `ttrpc: closed`), whatever the guest would have answered.
    pub async fn while_alive<T>(
        &self,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        // The call first: one that already ended (the guest died under it and closed the
        // connection before the host marked the agent dead) keeps its own end.
        tokio::select! {
            biased;
            r = call => r,
            () = self.died() => Err(AgentError::ConnectionClosed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HostInner> {
        // A panic elsewhere cannot leave this plain data half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether [`Agent::mark_dead`] was called.
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Fails with [`AgentError::DeadAgent`] once the agent is marked dead.
    pub fn ensure_alive(&self) -> Result<()> {
        if self.is_dead() {
            Err(AgentError::DeadAgent)
        } else {
            Ok(())
        }
    }

    /// The configuration given to `init`.
    pub fn config(&self) -> AgentConfig {
        self.lock().config.clone()
    }
}

/// Every method of virtcontainers' `agent` interface; see the [module docs](self) for the
/// RPC each one sends.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait::async_trait]
pub trait Agent: Send + Sync {
    /// Stores the host configuration; returns whether VM shutdown is disabled.
    async fn init(&self, config: AgentConfig) -> Result<bool>;
    /// What the agent supports.
    fn capabilities(&self) -> AgentCapabilities;
    /// `Health.Check`.
    async fn check(&self) -> Result<()>;
    /// Whether one connection is kept for the sandbox's life.
    fn long_live_conn(&self) -> bool;
    /// Drops the host's connection state.
    async fn disconnect(&self) -> Result<()>;
    /// The agent URL (`vsock://`, `hvsock://`, `remote://`, `mock://`).
    fn get_agent_url(&self) -> Result<String>;
    /// Sets the agent URL (Go reads it from the hypervisor's generated socket).
    fn set_agent_url(&self, url: String) -> Result<()>;
    /// Takes over another agent's state (VM factory).
    fn reuse_agent(&self, other: AgentState) -> Result<()>;
    /// Host-local sandbox setup (Go's `createSandbox`, which calls `configure`).
    async fn create_sandbox(&self, sandbox: SandboxConfig) -> Result<()>;
    /// Starts an extra process in a container (`ExecProcess`).
    async fn exec(&self, req: agent::ExecProcessRequest) -> Result<()>;
    /// Brings the guest up: `Check`, then `SetPolicy` when configured, then `CreateSandbox`.
    async fn start_sandbox(&self, req: agent::CreateSandboxRequest) -> Result<()>;
    /// `DestroySandbox`.
    async fn stop_sandbox(&self) -> Result<()>;
    /// `CreateContainer`.
    async fn create_container(&self, req: agent::CreateContainerRequest) -> Result<()>;
    /// `StartContainer`.
    async fn start_container(&self, container_id: String) -> Result<()>;
    /// `RemoveContainer` with timeout 0, as Go's `stopContainer` sends it.
    async fn stop_container(&self, container_id: String) -> Result<()>;
    /// `SignalProcess`; `all` addresses every process of the container (exec id `""`).
    async fn signal_process(
        &self,
        container_id: String,
        process_id: String,
        signal: u32,
        all: bool,
    ) -> Result<()>;
    /// `TtyWinResize`.
    async fn winsize_process(
        &self,
        container_id: String,
        process_id: String,
        height: u32,
        width: u32,
    ) -> Result<()>;
    /// `WriteStdin`; returns how many bytes the agent took. Empty data closes stdin.
    async fn write_process_stdin(
        &self,
        container_id: String,
        process_id: String,
        data: Vec<u8>,
    ) -> Result<u32>;
    /// `CloseStdin`.
    async fn close_process_stdin(&self, container_id: String, process_id: String) -> Result<()>;
    /// `ReadStdout` of up to `len` bytes; empty data means end of stream.
    async fn read_process_stdout(
        &self,
        container_id: String,
        process_id: String,
        len: u32,
    ) -> Result<Vec<u8>>;
    /// `ReadStderr` of up to `len` bytes; empty data means end of stream.
    async fn read_process_stderr(
        &self,
        container_id: String,
        process_id: String,
        len: u32,
    ) -> Result<Vec<u8>>;
    /// `UpdateContainer`.
    async fn update_container(
        &self,
        container_id: String,
        resources: oci::LinuxResources,
    ) -> Result<()>;
    /// `WaitProcess`; the exit status (exit code, or 128 + signal).
    async fn wait_process(&self, container_id: String, process_id: String) -> Result<i32>;
    /// `OnlineCPUMem` (`wait = false`).
    async fn online_cpu_mem(&self, cpus: u32, cpu_only: bool) -> Result<()>;
    /// `MemHotplugByProbe` for `size_mb` of memory at `addr`, one address per section.
    async fn mem_hotplug_by_probe(
        &self,
        addr: u64,
        size_mb: u32,
        memory_section_size_mb: u32,
    ) -> Result<()>;
    /// `StatsContainer`.
    async fn stats_container(&self, container_id: String) -> Result<agent::StatsContainerResponse>;
    /// `PauseContainer`.
    async fn pause_container(&self, container_id: String) -> Result<()>;
    /// `ResumeContainer`.
    async fn resume_container(&self, container_id: String) -> Result<()>;
    /// `RemoveStaleVirtiofsShareMounts`.
    async fn remove_stale_virtiofs_share_mounts(&self) -> Result<()>;
    /// Host-local: records the sandbox id, shared path and agent URL.
    async fn configure(&self, sandbox: SandboxConfig, config: AgentConfig) -> Result<()>;
    /// Host-local: the VM-factory variant of [`Agent::configure`].
    async fn configure_from_grpc(&self, sandbox: SandboxConfig, config: AgentConfig) -> Result<()>;
    /// `ReseedRandomDev`.
    async fn reseed_rng(&self, data: Vec<u8>) -> Result<()>;
    /// `UpdateInterface`; the interface as the guest applied it.
    async fn update_interface(&self, interface: types::Interface) -> Result<types::Interface>;
    /// `ListInterfaces`.
    async fn list_interfaces(&self) -> Result<Vec<types::Interface>>;
    /// `UpdateEphemeralMounts`.
    async fn update_ephemeral_mounts(&self, storages: Vec<agent::Storage>) -> Result<()>;
    /// `UpdateRoutes`; the routes as the guest applied them.
    async fn update_routes(&self, routes: Vec<types::Route>) -> Result<Vec<types::Route>>;
    /// `ListRoutes`.
    async fn list_routes(&self) -> Result<Vec<types::Route>>;
    /// `GetGuestDetails`.
    async fn get_guest_details(
        &self,
        req: agent::GuestDetailsRequest,
    ) -> Result<agent::GuestDetailsResponse>;
    /// `SetGuestDateTime`.
    async fn set_guest_date_time(&self, time: SystemTime) -> Result<()>;
    /// Copies a host file, directory or symlink to `dst` in the guest with `CopyFile`, in
    /// 1 MiB chunks as the Go runtime does.
    async fn copy_file(&self, src: PathBuf, dst: String) -> Result<()>;
    /// `AddSwap` for the device at PCI path `pci_path` (`"02/00"`).
    async fn add_swap(&self, pci_path: String) -> Result<()>;
    /// Marks the agent dead ([`HostState::mark_dead`]): every call in flight fails at once
    /// with "ttrpc: closed", every later call with "Dead agent".
    fn mark_dead(&self);
    /// Host-local cleanup of the sandbox's shared directory.
    async fn cleanup(&self);
    /// The state to persist.
    fn save(&self) -> AgentState;
    /// Restores persisted state.
    fn load(&self, state: AgentState);
    /// `GetOOMEvent`: blocks until a container is OOM-killed; returns its id.
    async fn get_oom_event(&self) -> Result<String>;
    /// `GetMetrics`.
    async fn get_agent_metrics(&self, req: agent::GetMetricsRequest) -> Result<agent::Metrics>;
    /// `GetVolumeStats`.
    async fn get_guest_volume_stats(
        &self,
        volume_guest_path: String,
    ) -> Result<csi::VolumeStatsResponse>;
    /// `ResizeVolume`.
    async fn resize_guest_volume(&self, volume_guest_path: String, size: u64) -> Result<()>;
    /// `GetIPTables`.
    async fn get_ip_tables(&self, is_ipv6: bool) -> Result<Vec<u8>>;
    /// `SetIPTables`.
    async fn set_ip_tables(&self, is_ipv6: bool, data: Vec<u8>) -> Result<()>;
    /// `SetPolicy`.
    async fn set_policy(&self, policy: String) -> Result<()>;
    /// `GetDiagnosticData`; today only `log_type = "termination_log"` exists.
    async fn get_diagnostic_data(&self, log_type: String, container_id: String) -> Result<String>;
}

fn d() -> CallOpts {
    CallOpts::with_timeout(DEFAULT_REQUEST_TIMEOUT)
}

fn none() -> CallOpts {
    CallOpts::default()
}

/// One RPC of the blanket [`Agent`] impl: it fails at once with "ttrpc: closed" when the
/// agent is marked dead while it waits ([`HostState::while_alive`]).
async fn alive<T>(
    host: &HostState,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    host.while_alive(call).await
}

/// Parses a Kata PCI path (`"02/00"`, hex slots) into its slot numbers.
pub fn parse_pci_path(path: &str) -> Result<Vec<u32>> {
    path.split('/')
        .map(|s| {
            u32::from_str_radix(s, 16)
                .map_err(|_| AgentError::Host(format!("invalid PCI path {path:?}")))
        })
        .collect()
}

#[async_trait::async_trait]
impl<T: AgentRpc + ?Sized> Agent for T {
    async fn init(&self, config: AgentConfig) -> Result<bool> {
        let disable = config.disable_vm_shutdown;
        self.host().lock().config = config;
        Ok(disable)
    }

    fn capabilities(&self) -> AgentCapabilities {
        AgentCapabilities {
            block_device_support: true,
        }
    }

    async fn check(&self) -> Result<()> {
        self.host().ensure_alive()?;
        let call = AgentRpc::check(
            self,
            health::CheckRequest::new(),
            CallOpts::with_timeout(CHECK_REQUEST_TIMEOUT),
        );
        alive(self.host(), call).await.map(drop)
    }

    fn long_live_conn(&self) -> bool {
        self.host().lock().config.long_live_conn
    }

    async fn disconnect(&self) -> Result<()> {
        self.host().lock().connected = false;
        Ok(())
    }

    fn get_agent_url(&self) -> Result<String> {
        self.host()
            .lock()
            .url
            .clone()
            .ok_or_else(|| AgentError::Host("agent URL not set".into()))
    }

    fn set_agent_url(&self, url: String) -> Result<()> {
        self.host().lock().url = Some(url);
        Ok(())
    }

    fn reuse_agent(&self, other: AgentState) -> Result<()> {
        self.host().lock().url = Some(other.url);
        Ok(())
    }

    async fn create_sandbox(&self, sandbox: SandboxConfig) -> Result<()> {
        let config = self.host().config();
        Agent::configure(self, sandbox, config).await
    }

    async fn exec(&self, req: agent::ExecProcessRequest) -> Result<()> {
        self.host().ensure_alive()?;
        alive(self.host(), self.exec_process(req, d()))
            .await
            .map(drop)
    }

    async fn start_sandbox(&self, req: agent::CreateSandboxRequest) -> Result<()> {
        self.host().ensure_alive()?;
        Agent::check(self).await?;
        if let Some(policy) = self.host().config().policy {
            Agent::set_policy(self, policy).await?;
        }
        alive(self.host(), AgentRpc::create_sandbox(self, req, d()))
            .await
            .map(drop)
    }

    async fn stop_sandbox(&self) -> Result<()> {
        self.host().ensure_alive()?;
        alive(
            self.host(),
            self.destroy_sandbox(agent::DestroySandboxRequest::new(), d()),
        )
        .await
        .map(drop)
    }

    async fn create_container(&self, req: agent::CreateContainerRequest) -> Result<()> {
        self.host().ensure_alive()?;
        let timeout = self.host().config().create_container_timeout;
        alive(
            self.host(),
            AgentRpc::create_container(self, req, CallOpts::with_timeout(timeout)),
        )
        .await
        .map(drop)
    }

    async fn start_container(&self, container_id: String) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::StartContainerRequest {
            container_id,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::start_container(self, req, d()))
            .await
            .map(drop)
    }

    async fn stop_container(&self, container_id: String) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::RemoveContainerRequest {
            container_id,
            timeout: 0,
            ..Default::default()
        };
        alive(self.host(), self.remove_container(req, d()))
            .await
            .map(drop)
    }

    async fn signal_process(
        &self,
        container_id: String,
        process_id: String,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        self.host().ensure_alive()?;
        let exec_id = if all { String::new() } else { process_id };
        let req = agent::SignalProcessRequest {
            container_id,
            exec_id,
            signal,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::signal_process(self, req, d()))
            .await
            .map(drop)
    }

    async fn winsize_process(
        &self,
        container_id: String,
        process_id: String,
        height: u32,
        width: u32,
    ) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::TtyWinResizeRequest {
            container_id,
            exec_id: process_id,
            row: height,
            column: width,
            ..Default::default()
        };
        alive(self.host(), self.tty_win_resize(req, d()))
            .await
            .map(drop)
    }

    async fn write_process_stdin(
        &self,
        container_id: String,
        process_id: String,
        data: Vec<u8>,
    ) -> Result<u32> {
        self.host().ensure_alive()?;
        let req = agent::WriteStreamRequest {
            container_id,
            exec_id: process_id,
            data,
            ..Default::default()
        };
        alive(self.host(), self.write_stdin(req, d()))
            .await
            .map(|r| r.len)
    }

    async fn close_process_stdin(&self, container_id: String, process_id: String) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::CloseStdinRequest {
            container_id,
            exec_id: process_id,
            ..Default::default()
        };
        alive(self.host(), self.close_stdin(req, d()))
            .await
            .map(drop)
    }

    async fn read_process_stdout(
        &self,
        container_id: String,
        process_id: String,
        len: u32,
    ) -> Result<Vec<u8>> {
        self.host().ensure_alive()?;
        let req = agent::ReadStreamRequest {
            container_id,
            exec_id: process_id,
            len,
            ..Default::default()
        };
        alive(self.host(), self.read_stdout(req, none()))
            .await
            .map(|r| r.data)
    }

    async fn read_process_stderr(
        &self,
        container_id: String,
        process_id: String,
        len: u32,
    ) -> Result<Vec<u8>> {
        self.host().ensure_alive()?;
        let req = agent::ReadStreamRequest {
            container_id,
            exec_id: process_id,
            len,
            ..Default::default()
        };
        alive(self.host(), self.read_stderr(req, none()))
            .await
            .map(|r| r.data)
    }

    async fn update_container(
        &self,
        container_id: String,
        resources: oci::LinuxResources,
    ) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::UpdateContainerRequest {
            container_id,
            resources: Some(resources).into(),
            ..Default::default()
        };
        alive(self.host(), AgentRpc::update_container(self, req, d()))
            .await
            .map(drop)
    }

    async fn wait_process(&self, container_id: String, process_id: String) -> Result<i32> {
        self.host().ensure_alive()?;
        let req = agent::WaitProcessRequest {
            container_id,
            exec_id: process_id,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::wait_process(self, req, none()))
            .await
            .map(|r| r.status)
    }

    async fn online_cpu_mem(&self, cpus: u32, cpu_only: bool) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::OnlineCPUMemRequest {
            wait: false,
            nb_cpus: cpus,
            cpu_only,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::online_cpu_mem(self, req, d()))
            .await
            .map(drop)
    }

    async fn mem_hotplug_by_probe(
        &self,
        addr: u64,
        size_mb: u32,
        memory_section_size_mb: u32,
    ) -> Result<()> {
        self.host().ensure_alive()?;
        if memory_section_size_mb == 0 {
            return Err(AgentError::Host("memory section size is 0".into()));
        }
        let sections = size_mb / memory_section_size_mb;
        let step = u64::from(memory_section_size_mb) << 20;
        let addrs = (0..u64::from(sections)).map(|i| addr + i * step).collect();
        let req = agent::MemHotplugByProbeRequest {
            memHotplugProbeAddr: addrs,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::mem_hotplug_by_probe(self, req, d()))
            .await
            .map(drop)
    }

    async fn stats_container(&self, container_id: String) -> Result<agent::StatsContainerResponse> {
        self.host().ensure_alive()?;
        let req = agent::StatsContainerRequest {
            container_id,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::stats_container(self, req, d())).await
    }

    async fn pause_container(&self, container_id: String) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::PauseContainerRequest {
            container_id,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::pause_container(self, req, d()))
            .await
            .map(drop)
    }

    async fn resume_container(&self, container_id: String) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::ResumeContainerRequest {
            container_id,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::resume_container(self, req, d()))
            .await
            .map(drop)
    }

    async fn remove_stale_virtiofs_share_mounts(&self) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::RemoveStaleVirtiofsShareMountsRequest::new();
        alive(
            self.host(),
            AgentRpc::remove_stale_virtiofs_share_mounts(self, req, d()),
        )
        .await
        .map(drop)
    }

    async fn configure(&self, sandbox: SandboxConfig, config: AgentConfig) -> Result<()> {
        let mut host = self.host().lock();
        if let Some(url) = &sandbox.agent_url {
            host.url = Some(url.clone());
        }
        host.sandbox = Some(sandbox);
        host.config = config;
        Ok(())
    }

    async fn configure_from_grpc(&self, sandbox: SandboxConfig, config: AgentConfig) -> Result<()> {
        Agent::configure(self, sandbox, config).await
    }

    async fn reseed_rng(&self, data: Vec<u8>) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::ReseedRandomDevRequest {
            data,
            ..Default::default()
        };
        alive(self.host(), self.reseed_random_dev(req, d()))
            .await
            .map(drop)
    }

    async fn update_interface(&self, interface: types::Interface) -> Result<types::Interface> {
        self.host().ensure_alive()?;
        let req = agent::UpdateInterfaceRequest {
            interface: Some(interface).into(),
            ..Default::default()
        };
        alive(self.host(), AgentRpc::update_interface(self, req, d())).await
    }

    async fn list_interfaces(&self) -> Result<Vec<types::Interface>> {
        self.host().ensure_alive()?;
        let req = agent::ListInterfacesRequest::new();
        alive(self.host(), AgentRpc::list_interfaces(self, req, d()))
            .await
            .map(|r| r.Interfaces)
    }

    async fn update_ephemeral_mounts(&self, storages: Vec<agent::Storage>) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::UpdateEphemeralMountsRequest {
            storages,
            ..Default::default()
        };
        alive(
            self.host(),
            AgentRpc::update_ephemeral_mounts(self, req, d()),
        )
        .await
        .map(drop)
    }

    async fn update_routes(&self, routes: Vec<types::Route>) -> Result<Vec<types::Route>> {
        self.host().ensure_alive()?;
        let req = agent::UpdateRoutesRequest {
            routes: Some(agent::Routes {
                Routes: routes,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        alive(self.host(), AgentRpc::update_routes(self, req, d()))
            .await
            .map(|r| r.Routes)
    }

    async fn list_routes(&self) -> Result<Vec<types::Route>> {
        self.host().ensure_alive()?;
        alive(
            self.host(),
            AgentRpc::list_routes(self, agent::ListRoutesRequest::new(), d()),
        )
        .await
        .map(|r| r.Routes)
    }

    async fn get_guest_details(
        &self,
        req: agent::GuestDetailsRequest,
    ) -> Result<agent::GuestDetailsResponse> {
        self.host().ensure_alive()?;
        alive(self.host(), AgentRpc::get_guest_details(self, req, d())).await
    }

    async fn set_guest_date_time(&self, time: SystemTime) -> Result<()> {
        self.host().ensure_alive()?;
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| AgentError::Host("time before the Unix epoch".into()))?;
        let req = agent::SetGuestDateTimeRequest {
            Sec: since.as_secs() as i64,
            Usec: i64::from(since.subsec_micros()),
            ..Default::default()
        };
        alive(self.host(), AgentRpc::set_guest_date_time(self, req, d()))
            .await
            .map(drop)
    }

    async fn copy_file(&self, src: PathBuf, dst: String) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        self.host().ensure_alive()?;
        let host_err = |e: std::io::Error| AgentError::Host(format!("{}: {e}", src.display()));
        let meta = std::fs::symlink_metadata(&src).map_err(host_err)?;
        let base = agent::CopyFileRequest {
            path: dst,
            file_mode: meta.mode(),
            dir_mode: GO_MODE_DIR | 0o750,
            uid: meta.uid() as i32,
            gid: meta.gid() as i32,
            ..Default::default()
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src).map_err(host_err)?;
            let req = agent::CopyFileRequest {
                data: target.as_os_str().as_encoded_bytes().to_vec(),
                ..base
            };
            return alive(self.host(), AgentRpc::copy_file(self, req, d()))
                .await
                .map(drop);
        }
        if meta.is_dir() {
            return alive(self.host(), AgentRpc::copy_file(self, base, d()))
                .await
                .map(drop);
        }
        let content = std::fs::read(&src).map_err(host_err)?;
        let file_size = content.len() as i64;
        if content.is_empty() {
            return alive(self.host(), AgentRpc::copy_file(self, base, d()))
                .await
                .map(drop);
        }
        for (i, chunk) in content.chunks(COPY_FILE_CHUNK).enumerate() {
            let req = agent::CopyFileRequest {
                file_size,
                offset: (i * COPY_FILE_CHUNK) as i64,
                data: chunk.to_vec(),
                ..base.clone()
            };
            alive(self.host(), AgentRpc::copy_file(self, req, d())).await?;
        }
        Ok(())
    }

    async fn add_swap(&self, pci_path: String) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::AddSwapRequest {
            PCIPath: parse_pci_path(&pci_path)?,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::add_swap(self, req, d()))
            .await
            .map(drop)
    }

    fn mark_dead(&self) {
        self.host().mark_dead();
    }

    async fn cleanup(&self) {
        self.host().lock().sandbox = None;
    }

    fn save(&self) -> AgentState {
        AgentState {
            url: self.host().lock().url.clone().unwrap_or_default(),
        }
    }

    fn load(&self, state: AgentState) {
        self.host().lock().url = Some(state.url);
    }

    async fn get_oom_event(&self) -> Result<String> {
        self.host().ensure_alive()?;
        alive(
            self.host(),
            AgentRpc::get_oom_event(self, agent::GetOOMEventRequest::new(), none()),
        )
        .await
        .map(|r| r.container_id)
    }

    async fn get_agent_metrics(&self, req: agent::GetMetricsRequest) -> Result<agent::Metrics> {
        self.host().ensure_alive()?;
        alive(self.host(), AgentRpc::get_metrics(self, req, d())).await
    }

    async fn get_guest_volume_stats(
        &self,
        volume_guest_path: String,
    ) -> Result<csi::VolumeStatsResponse> {
        self.host().ensure_alive()?;
        let req = agent::VolumeStatsRequest {
            volume_guest_path,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::get_volume_stats(self, req, d())).await
    }

    async fn resize_guest_volume(&self, volume_guest_path: String, size: u64) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::ResizeVolumeRequest {
            volume_guest_path,
            size,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::resize_volume(self, req, d()))
            .await
            .map(drop)
    }

    async fn get_ip_tables(&self, is_ipv6: bool) -> Result<Vec<u8>> {
        self.host().ensure_alive()?;
        let req = agent::GetIPTablesRequest {
            is_ipv6,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::get_ip_tables(self, req, d()))
            .await
            .map(|r| r.data)
    }

    async fn set_ip_tables(&self, is_ipv6: bool, data: Vec<u8>) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::SetIPTablesRequest {
            is_ipv6,
            data,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::set_ip_tables(self, req, d()))
            .await
            .map(drop)
    }

    async fn set_policy(&self, policy: String) -> Result<()> {
        self.host().ensure_alive()?;
        let req = agent::SetPolicyRequest {
            policy,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::set_policy(self, req, d()))
            .await
            .map(drop)
    }

    async fn get_diagnostic_data(&self, log_type: String, container_id: String) -> Result<String> {
        self.host().ensure_alive()?;
        let req = agent::GetDiagnosticDataRequest {
            log_type,
            container_id,
            ..Default::default()
        };
        alive(self.host(), AgentRpc::get_diagnostic_data(self, req, d()))
            .await
            .map(|r| r.data)
    }
}
