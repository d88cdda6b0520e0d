//! [`Hypervisor`]: virtcontainers' `Hypervisor` interface, one async method per Go method.
//!
//! | Go (`hypervisor.go`) | Rust | notes |
//! |---|---|---|
//! | `CreateVM(ctx, id, network, config)` | [`create_vm`](Hypervisor::create_vm) | the network is its netns path; the remote hypervisor's annotations travel in [`HypervisorConfig::annotations`] |
//! | `StartVM(ctx, timeout)` | [`start_vm`](Hypervisor::start_vm) | timeout in seconds |
//! | `StopVM(ctx, waitOnly)` | [`stop_vm`](Hypervisor::stop_vm) | |
//! | `PauseVM(ctx)` | [`pause_vm`](Hypervisor::pause_vm) | |
//! | `SaveVM()` | [`save_vm`](Hypervisor::save_vm) | templating |
//! | `ResumeVM(ctx)` | [`resume_vm`](Hypervisor::resume_vm) | |
//! | `AddDevice(ctx, devInfo, devType)` | [`add_device`](Hypervisor::add_device) | cold plug, before boot |
//! | `HotplugAddDevice(ctx, devInfo, devType)` | [`hotplug_add_device`](Hypervisor::hotplug_add_device) | `interface{}` result is [`HotplugResult`] |
//! | `HotplugRemoveDevice(ctx, devInfo, devType)` | [`hotplug_remove_device`](Hypervisor::hotplug_remove_device) | |
//! | `ResolveColdPlugVFIOGuestPciPaths(ctx, devs)` | [`resolve_cold_plug_vfio_guest_pci_paths`](Hypervisor::resolve_cold_plug_vfio_guest_pci_paths) | device id -> PCI path |
//! | `ResizeMemory(ctx, memMB, blockMB, probe)` | [`resize_memory`](Hypervisor::resize_memory) | -> (MiB now, the DIMM added) |
//! | `ResizeVCPUs(ctx, vcpus)` | [`resize_vcpus`](Hypervisor::resize_vcpus) | -> (before, after) |
//! | `GetTotalMemoryMB(ctx)` | [`get_total_memory_mb`](Hypervisor::get_total_memory_mb) | |
//! | `GetVMConsole(ctx, sandboxID)` | [`get_vm_console`](Hypervisor::get_vm_console) | -> (protocol, URL) |
//! | `Disconnect(ctx)` | [`disconnect`](Hypervisor::disconnect) | VMM control channel |
//! | `Capabilities(ctx)` | [`capabilities`](Hypervisor::capabilities) | |
//! | `HypervisorConfig()` | [`hypervisor_config`](Hypervisor::hypervisor_config) | |
//! | `GetThreadIDs(ctx)` | [`get_thread_ids`](Hypervisor::get_thread_ids) | vCPU -> thread id |
//! | `Cleanup(ctx)` | [`cleanup`](Hypervisor::cleanup) | |
//! | `setConfig(config)` | [`set_config`](Hypervisor::set_config) | validates |
//! | `GetPids()` | [`get_pids`](Hypervisor::get_pids) | `[0]` is the VMM |
//! | `GetVirtioFsPid()` | [`get_virtio_fs_pid`](Hypervisor::get_virtio_fs_pid) | |
//! | `fromGrpc(ctx, config, j)` | [`from_grpc`](Hypervisor::from_grpc) | VM factory |
//! | `toGrpc(ctx)` | [`to_grpc`](Hypervisor::to_grpc) | VM factory |
//! | `Check()` | [`check`](Hypervisor::check) | VMM liveness, polled by the monitor |
//! | `Save()` | [`save`](Hypervisor::save) | |
//! | `Load(state)` | [`load`](Hypervisor::load) | |
//! | `GenerateSocket(id)` | [`generate_socket`](Hypervisor::generate_socket) | the guest's agent address |
//! | `IsRateLimiterBuiltin()` | [`is_rate_limiter_builtin`](Hypervisor::is_rate_limiter_builtin) | |
//! | runtime-rs `wait_vm()` | [`wait_vm`](Hypervisor::wait_vm) | the VMM's exit code |
//! | runtime-rs `get_agent_socket()` | [`get_agent_socket`](Hypervisor::get_agent_socket) | the agent URL |

use std::collections::BTreeMap;

use crate::error::Result;
use crate::types::{
    AgentSocket, Capabilities, Device, DeviceType, HotplugResult, HypervisorConfig,
    HypervisorState, MemoryDevice, VcpuThreadIds,
};

/// The network a VM is created in (virtcontainers' `Network`, as far as a VMM sees it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Network {
    /// The network namespace path (`NetworkID()`); empty without one.
    pub netns_path: String,
}

/// virtcontainers' `Hypervisor`: the 29 methods, plus runtime-rs's `wait_vm` and
/// `get_agent_socket`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    /// `CreateVM`: prepares the VM (the VMM process is up; nothing boots).
    async fn create_vm(&self, id: String, network: Network, config: HypervisorConfig)
    -> Result<()>;
    /// `StartVM`: boots the guest within `timeout_secs`; its agent then answers.
    async fn start_vm(&self, timeout_secs: u32) -> Result<()>;
    /// `StopVM`: powers the VM off (`wait_only`: the VMM is already going; clean up only).
    async fn stop_vm(&self, wait_only: bool) -> Result<()>;
    /// `PauseVM`.
    async fn pause_vm(&self) -> Result<()>;
    /// `SaveVM`: saves a paused VM (templating).
    async fn save_vm(&self) -> Result<()>;
    /// `ResumeVM`.
    async fn resume_vm(&self) -> Result<()>;
    /// `AddDevice`: cold-plugs a device before boot.
    async fn add_device(&self, device: Device, kind: DeviceType) -> Result<()>;
    /// `HotplugAddDevice`.
    async fn hotplug_add_device(&self, device: Device, kind: DeviceType) -> Result<HotplugResult>;
    /// `HotplugRemoveDevice`.
    async fn hotplug_remove_device(
        &self,
        device: Device,
        kind: DeviceType,
    ) -> Result<HotplugResult>;
    /// `ResolveColdPlugVFIOGuestPciPaths`: the guest PCI path of each cold-plugged VFIO
    /// device id.
    async fn resolve_cold_plug_vfio_guest_pci_paths(
        &self,
        ids: Vec<String>,
    ) -> Result<BTreeMap<String, String>>;
    /// `ResizeMemory`: grows (or asks to shrink) memory to `mem_mb`, in `block_mb` blocks.
    async fn resize_memory(
        &self,
        mem_mb: u32,
        block_mb: u32,
        probe: bool,
    ) -> Result<(u32, MemoryDevice)>;
    /// `ResizeVCPUs`: returns (vCPUs before, vCPUs after).
    async fn resize_vcpus(&self, vcpus: u32) -> Result<(u32, u32)>;
    /// `GetTotalMemoryMB`.
    async fn get_total_memory_mb(&self) -> u32;
    /// `GetVMConsole`: (protocol, URL).
    async fn get_vm_console(&self, sandbox_id: String) -> Result<(String, String)>;
    /// `Disconnect`: drops the VMM control channel.
    async fn disconnect(&self);
    /// `Capabilities`.
    async fn capabilities(&self) -> Capabilities;
    /// `HypervisorConfig`.
    async fn hypervisor_config(&self) -> HypervisorConfig;
    /// `GetThreadIDs`: vCPU index -> host thread id.
    async fn get_thread_ids(&self) -> Result<VcpuThreadIds>;
    /// `Cleanup`: removes what a stopped VM left behind.
    async fn cleanup(&self) -> Result<()>;
    /// `setConfig`: validates and stores the configuration.
    async fn set_config(&self, config: HypervisorConfig) -> Result<()>;
    /// `GetPids`: the VMM's pid first.
    async fn get_pids(&self) -> Vec<u32>;
    /// `GetVirtioFsPid`.
    async fn get_virtio_fs_pid(&self) -> Option<u32>;
    /// `fromGrpc`: restores a VM from the factory's serialized form (the Go name is kept for
    /// the mapping; it restores `self`).
    #[allow(clippy::wrong_self_convention)]
    async fn from_grpc(&self, config: HypervisorConfig, data: Vec<u8>) -> Result<()>;
    /// `toGrpc`: the factory's serialized form.
    async fn to_grpc(&self) -> Result<Vec<u8>>;
    /// `Check`: whether the VMM lives.
    async fn check(&self) -> Result<()>;
    /// `Save`.
    async fn save(&self) -> HypervisorState;
    /// `Load`.
    async fn load(&self, state: HypervisorState);
    /// `GenerateSocket`: the guest agent's address.
    async fn generate_socket(&self, id: String) -> Result<AgentSocket>;
    /// `IsRateLimiterBuiltin`.
    async fn is_rate_limiter_builtin(&self) -> bool;
    /// runtime-rs `wait_vm`: resolves with the VMM's exit code when the VM stops or dies.
    async fn wait_vm(&self) -> Result<i32>;
    /// runtime-rs `get_agent_socket`: the agent URL.
    async fn get_agent_socket(&self) -> Result<String>;
}
