//! sim-hypervisor: the fake VMM of kata-sim.
//!
//! A real, unmodified Kata runtime configured with `hypervisor.remote` asks a
//! `hypervisor.Hypervisor` ttrpc service to create and start its VM, then dials the guest agent
//! at the socket path `CreateVM` returned. This crate is that service, backed by a VM model
//! whose guest is a [`SimAgent`](sim_agent::SimAgent); no KVM, no VM.
//!
//! # Module map
//! - [`hypervisor`]: [`Hypervisor`], virtcontainers' 29 methods (+ runtime-rs's `wait_vm`,
//!   `get_agent_socket`), with the Go -> Rust table; [`MockHypervisor`] for expectations.
//! - [`vm`]: [`SimHypervisor`], one VM as a state machine with resources, devices and a guest.
//! - [`remote`]: the `hypervisor.Hypervisor` service over many VMs ([`Fleet`],
//!   [`RemoteHypervisorServer`]) and its client ([`RemoteHypervisor`]).
//! - [`types`]: the values that cross the surface.
//! - [`error`]: [`HypervisorError`] and its one conversion to ttrpc statuses.
//!
//! # Example
//! ```
//! use sim_hypervisor::{Hypervisor, HypervisorConfig, Network, SimHypervisor, SimVmConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let dir = tempfile::tempdir().unwrap();
//! let vm = SimHypervisor::new(SimVmConfig {
//!     state_dir: dir.path().to_path_buf(),
//!     ..Default::default()
//! });
//! vm.create_vm("sb1".into(), Network::default(), HypervisorConfig::default()).await.unwrap();
//! // Pausing a VM that never booted is an invalid transition.
//! assert!(vm.pause_vm().await.is_err());
//! # }
//! ```

pub mod error;
pub mod hypervisor;
pub mod remote;
pub mod types;
pub mod vm;

/// The remote-hypervisor wire schema (`proto/remote.proto`), generated at build time.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    non_camel_case_types,
    non_snake_case
)]
#[allow(non_upper_case_globals, unused_qualifications, unreachable_pub)]
pub mod protocols {
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}

pub use error::{HypervisorError, Result};
#[cfg(feature = "mock")]
pub use hypervisor::MockHypervisor;
pub use hypervisor::{Hypervisor, Network};
pub use remote::{
    Fleet, FleetConfig, RemoteHypervisor, RemoteHypervisorServer, SHUTDOWN_STOP_LIMIT,
};
pub use types::{
    AgentSocket, Capabilities, Device, DeviceType, HotplugResult, HypervisorConfig,
    HypervisorState, MemoryDevice, PluggedDevice, SocketKind, VcpuThreadIds, VmState,
};
pub use vm::{SimHypervisor, SimVmConfig};
