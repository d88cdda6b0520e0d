//! The values that cross the [`Hypervisor`](crate::Hypervisor) surface, named after their
//! virtcontainers counterparts (`hypervisor.go`, `types/capabilities.go`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// `CreateVM` prepared it; the VMM is up, the guest has not booted.
    Created,
    /// Booted; its agent answers.
    Running,
    /// Paused (vCPUs stopped); the agent does not answer until it resumes.
    Paused,
    /// Saved for templating (after a pause); only `StopVM` is left.
    Saved,
    /// Stopped or dead; only `Cleanup` is left.
    Stopped,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Saved => "saved",
            VmState::Stopped => "stopped",
        })
    }
}

/// virtcontainers' `DeviceType`, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceType {
    /// `ImgDev`: the guest image.
    Img,
    /// `FsDev`: a shared filesystem (virtio-fs, 9p).
    Fs,
    /// `NetDev`: a network endpoint.
    Net,
    /// `BlockDev`: a block device.
    Block,
    /// `SerialPortDev`.
    SerialPort,
    /// `VSockPCIDev`.
    VsockPci,
    /// `VfioDev`: a passed-through PCI device.
    Vfio,
    /// `VhostuserDev`.
    Vhostuser,
    /// `CpuDev`: vCPUs (hotplug only; the payload is a count).
    Cpu,
    /// `MemoryDev`: memory (hotplug only; the payload is a [`MemoryDevice`]).
    Memory,
    /// `HybridVirtioVsockDev`.
    HybridVirtioVsock,
}

impl DeviceType {
    /// Whether a device of this type sits on the guest's PCI bus (and gets a PCI path).
    pub fn is_pci(self) -> bool {
        matches!(
            self,
            DeviceType::Net
                | DeviceType::Block
                | DeviceType::Vfio
                | DeviceType::Vhostuser
                | DeviceType::VsockPci
                | DeviceType::Fs
        )
    }
}

/// A device handed to `AddDevice`/`HotplugAddDevice`/`HotplugRemoveDevice`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Device {
    /// A device identified by its id (block, network, VFIO, ...).
    Named {
        /// Its id (a block device's drive id, an endpoint's name, a VFIO BDF).
        id: String,
    },
    /// A number of vCPUs.
    Vcpus(u32),
    /// Memory.
    Memory(MemoryDevice),
}

/// virtcontainers' `MemoryDevice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryDevice {
    /// The DIMM slot.
    pub slot: i32,
    /// Its size in MiB.
    pub size_mb: i32,
    /// Its guest physical address (set when `probe` is true).
    pub addr: u64,
    /// Whether the guest must probe the memory (`/sys/devices/system/memory/probe`).
    pub probe: bool,
}

/// What a hotplug returned (virtcontainers returns an `interface{}` per device type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HotplugResult {
    /// vCPUs added or removed.
    Vcpus(u32),
    /// MiB of memory added or removed.
    MemoryMb(i32),
    /// A PCI device, with its guest PCI path (`bridge/slot`, e.g. `02/01`).
    Pci {
        /// Its guest PCI path.
        pci_path: String,
    },
    /// Nothing to report.
    None,
}

/// A device the VM has, with where it sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluggedDevice {
    /// Its type.
    pub kind: DeviceType,
    /// Its guest PCI path, for PCI devices.
    pub pci_path: Option<String>,
    /// Whether it was hot-plugged (else cold-plugged before boot).
    pub hotplugged: bool,
}

/// vCPU index to host thread id (virtcontainers' `VcpuThreadIDs`).
pub type VcpuThreadIds = BTreeMap<u32, u32>;

/// virtcontainers' `types.Capabilities` bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// `blockDeviceSupport`.
    pub const BLOCK_DEVICE: u32 = 1 << 0;
    /// `blockDeviceHotplugSupport`.
    pub const BLOCK_DEVICE_HOTPLUG: u32 = 1 << 1;
    /// `multiQueueSupport`.
    pub const MULTI_QUEUE: u32 = 1 << 2;
    /// `fsSharingSupported`.
    pub const FS_SHARING: u32 = 1 << 3;
    /// `networkDeviceHotplugSupport`.
    pub const NETWORK_DEVICE_HOTPLUG: u32 = 1 << 4;

    /// What QEMU reports on x86_64: everything.
    pub const QEMU: Capabilities = Capabilities(
        Self::BLOCK_DEVICE
            | Self::BLOCK_DEVICE_HOTPLUG
            | Self::MULTI_QUEUE
            | Self::FS_SHARING
            | Self::NETWORK_DEVICE_HOTPLUG,
    );
    /// What the remote hypervisor reports: block device hotplug only (no FS sharing).
    pub const REMOTE: Capabilities = Capabilities(Self::BLOCK_DEVICE_HOTPLUG);

    /// Whether `bit` is set.
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

/// The part of virtcontainers' `HypervisorConfig` the model uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypervisorConfig {
    /// Boot vCPUs (`default_vcpus`).
    pub num_vcpus: u32,
    /// The most vCPUs (`default_maxvcpus`).
    pub default_max_vcpus: u32,
    /// Boot memory in MiB (`default_memory`).
    pub memory_size_mb: u32,
    /// The most memory in MiB (`default_maxmemory`).
    pub default_max_memory_mb: u32,
    /// DIMM slots for memory hotplug (`memory_slots`).
    pub memory_slots: u32,
    /// Whether a virtio-fs daemon runs beside the VMM (`shared_fs = "virtio-fs"`).
    pub virtio_fs: bool,
    /// Whether the VMM has a built-in rate limiter.
    pub rate_limiter_builtin: bool,
    /// The kernel and image paths (recorded, never read).
    pub kernel_path: String,
    /// The guest image path.
    pub image_path: String,
    /// Annotations the VM was created with (the remote hypervisor's `CreateVM` carries them).
    pub annotations: BTreeMap<String, String>,
}

impl Default for HypervisorConfig {
    /// Kata's defaults: 1 vCPU (max 8 here), 2048 MiB (max 8192), 10 memory slots.
    fn default() -> Self {
        HypervisorConfig {
            num_vcpus: 1,
            default_max_vcpus: 8,
            memory_size_mb: 2048,
            default_max_memory_mb: 8192,
            memory_slots: 10,
            virtio_fs: false,
            rate_limiter_builtin: false,
            kernel_path: String::new(),
            image_path: String::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// How the guest's agent is reached (virtcontainers' socket types from `GenerateSocket`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentSocket {
    /// `RemoteSock`: a plain unix socket at an absolute path (`remote://PATH`).
    Remote {
        /// The socket path.
        path: PathBuf,
    },
    /// `HybridVSock`: a unix socket with the `CONNECT <port>` handshake (`hvsock://PATH`).
    HybridVsock {
        /// The socket path.
        uds_path: PathBuf,
        /// The agent port (1024).
        port: u32,
    },
    /// `VSock`: AF_VSOCK (`vsock://CID:PORT`).
    Vsock {
        /// The guest context id.
        cid: u32,
        /// The agent port (1024).
        port: u32,
    },
    /// `MockHybridVSock`: a plain unix socket for unit tests (`mock://PATH`).
    Mock {
        /// The socket path.
        uds_path: PathBuf,
    },
}

impl AgentSocket {
    /// The agent URL a runtime dials.
    pub fn url(&self) -> String {
        match self {
            AgentSocket::Remote { path } => format!("remote://{}", path.display()),
            AgentSocket::HybridVsock { uds_path, .. } => format!("hvsock://{}", uds_path.display()),
            AgentSocket::Vsock { cid, port } => format!("vsock://{cid}:{port}"),
            AgentSocket::Mock { uds_path } => format!("mock://{}", uds_path.display()),
        }
    }

    /// The socket file on the host, if there is one.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            AgentSocket::Remote { path } => Some(path),
            AgentSocket::HybridVsock { uds_path, .. } | AgentSocket::Mock { uds_path } => {
                Some(uds_path)
            }
            AgentSocket::Vsock { .. } => None,
        }
    }
}

/// Which kind of [`AgentSocket`] a VM gives its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketKind {
    /// `remote://` (the remote hypervisor's).
    #[default]
    Remote,
    /// `hvsock://` (Cloud Hypervisor, Firecracker).
    HybridVsock,
    /// `vsock://` (QEMU).
    Vsock,
    /// `mock://`.
    Mock,
}

/// What `Save` returns and `Load` takes (virtcontainers' `hv.HypervisorState`, the model's
/// part of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypervisorState {
    /// The VM id.
    pub id: String,
    /// The VMM's pid.
    pub pid: u32,
    /// Its state.
    pub state: VmState,
    /// Hot-plugged vCPUs.
    pub hotplugged_vcpus: u32,
    /// Hot-plugged memory in MiB.
    pub hotplugged_memory_mb: u32,
    /// Memory DIMMs in use.
    pub memory_devices: Vec<MemoryDevice>,
    /// Devices by id.
    pub devices: BTreeMap<String, PluggedDevice>,
    /// The agent socket, once generated.
    pub socket: Option<AgentSocket>,
}
