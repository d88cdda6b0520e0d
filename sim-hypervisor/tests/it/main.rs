//! sim-hypervisor integration tests: the VM state machine and resources in-process, and the
//! remote-hypervisor service over real sockets.

mod cancel;
mod faults;
mod remote;
mod vm;

use std::time::Duration;

use sim_hypervisor::{SimHypervisor, SimVmConfig};

/// A VMM whose VM directories live in a fresh temporary directory.
pub fn vmm(dir: &tempfile::TempDir) -> SimHypervisor {
    SimHypervisor::new(SimVmConfig {
        state_dir: dir.path().to_path_buf(),
        boot_time: Duration::from_millis(5),
        ..Default::default()
    })
}

/// Bounds a future in tests that must not hang.
pub async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test step timed out")
}
