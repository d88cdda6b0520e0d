//! kata-sim: the project's main command and, later, its YAML scenarios.
//!
//! - [`serve`]: `kata-sim serve`, the remote hypervisor and every guest agent it creates, for
//!   real Kata runtimes configured with `hypervisor.remote`.

pub mod serve;
