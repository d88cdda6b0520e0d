//! sim-hypervisor: the fake VMM of kata-sim (issue "sim-hypervisor"; not built yet).
//!
//! It will hold the `Hypervisor` trait, the VM state machine and the remote-hypervisor
//! service (`hypervisor.Hypervisor`, schema in `proto/remote.proto`). Until then the crate
//! only re-exports the agent it will own one of per VM.

pub use sim_agent::SimAgent;
