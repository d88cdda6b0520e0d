//! `kata-sim serve`: the remote-hypervisor service on a socket, with a guest agent per VM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sim_agent::fault::FaultEngine;
use sim_agent::{AgentVersion, SimConfig};
use sim_hypervisor::{Fleet, FleetConfig, HypervisorError, RemoteHypervisorServer, SimVmConfig};

/// What `kata-sim serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The remote-hypervisor socket (`remote_hypervisor_socket` in Kata's configuration).
    pub hypervisor_socket: PathBuf,
    /// Where VM directories and agent sockets go; default: `vms/` beside the socket.
    pub state_dir: Option<PathBuf>,
    /// The agent release every guest behaves as.
    pub agent_version: AgentVersion,
    /// How long a VM takes to boot.
    pub boot_time: Duration,
    /// Fault rules installed from the start.
    pub faults: Vec<String>,
    /// The seed of every random choice.
    pub seed: u64,
}

impl ServeOptions {
    /// The state directory in effect.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            self.hypervisor_socket
                .parent()
                .unwrap_or(Path::new("."))
                .join("vms")
        })
    }
}

/// Binds the remote hypervisor described by `opts`.
pub async fn start(opts: &ServeOptions) -> sim_hypervisor::Result<RemoteHypervisorServer> {
    let mut config = FleetConfig::new(opts.state_dir());
    let mut agent = SimConfig::for_version(opts.agent_version);
    agent.seed = opts.seed;
    config.vm = SimVmConfig {
        boot_time: opts.boot_time,
        agent,
        // A VM can live for hours (a runtime polling ReadStdout): keep its recent calls only.
        trace_limit: Some(sim_agent::trace::SERVER_TRACE_LIMIT),
        ..Default::default()
    };
    config.faults = FaultEngine::bounded(opts.seed, sim_agent::trace::SERVER_TRACE_LIMIT);
    for rule in &opts.faults {
        config
            .faults
            .add(rule)
            .map_err(|e| HypervisorError::Invalid(format!("--fault {rule:?}: {e}")))?;
    }
    let fleet = Arc::new(Fleet::new(config)?);
    RemoteHypervisorServer::bind(&opts.hypervisor_socket, fleet).await
}
