//! The `exec` driver: a real host runtime drives the lifecycle; kata-sim serves it.
//!
//! The driver starts a remote-hypervisor service (as `kata-sim serve`) with the scenario's
//! faults, seed, agent version and scripted programs, runs the user's command with the socket
//! paths in its environment, and records what that runtime sent. The scenario's `steps` are
//! not executed (the command is the host); its expectations on calls (`order`, `absent`,
//! `faults_fired`), `teardown` and `errors` (the command's failure) are checked; exit codes,
//! output and host files are the runtime's business and are not.
//!
//! Environment of the command:
//!
//! | variable | value |
//! |---|---|
//! | `KATA_SIM_HYPERVISOR_SOCKET` | the remote-hypervisor socket (Kata's `remote_hypervisor_socket`) |
//! | `KATA_SIM_STATE_DIR` | where the VMs' agent sockets are |
//! | `KATA_SIM_SCENARIO` | the scenario's name |
//! | `KATA_SIM_SEED` | its seed |

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sim_agent::fault::FaultEngine;
use sim_hypervisor::{Fleet, FleetConfig, RemoteHypervisorServer, SimVmConfig};

use crate::host::{Outcome, agent_config, describe_event};
use crate::schema::{Scenario, Teardown};

/// How long the command may run.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(600);

/// Runs `command` against a kata-sim service set up for `s`.
pub async fn run(s: &Scenario, command: &[String], dir: &Path) -> Outcome {
    let mut errors = Vec::new();
    let agent = agent_config(s);
    let mut config = FleetConfig::new(dir.join("vms"));
    config.vm = SimVmConfig {
        agent,
        ..Default::default()
    };
    config.faults = FaultEngine::new(s.seed);
    config.record = true;
    for rule in &s.faults {
        if let Err(e) = config.faults.add(rule) {
            errors.push(format!("fault {rule:?}: {e}"));
        }
    }
    let engine = config.faults.clone();
    let socket = dir.join("hypervisor.sock");
    let fleet = match Fleet::new(config) {
        Ok(f) => Arc::new(f),
        Err(e) => return failed(s, format!("state dir: {e}")),
    };
    let server = match RemoteHypervisorServer::bind(&socket, Arc::clone(&fleet)).await {
        Ok(srv) => srv,
        Err(e) => return failed(s, format!("serving {}: {e}", socket.display())),
    };
    let Some((program, args)) = command.split_first() else {
        server.shutdown().await;
        return failed(s, "no command given to the exec driver".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("KATA_SIM_HYPERVISOR_SOCKET", &socket)
        .env("KATA_SIM_STATE_DIR", fleet.state_dir())
        .env("KATA_SIM_SCENARIO", &s.name)
        .env("KATA_SIM_SEED", s.seed.to_string())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(COMMAND_LIMIT, child).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => errors.push(format!("the command exited with {status}")),
        Ok(Err(e)) => errors.push(format!("cannot run {program:?}: {e}")),
        Err(_) => errors.push(format!(
            "the command did not finish within {} s",
            COMMAND_LIMIT.as_secs()
        )),
    }
    // The runtime is done: whatever VM it left is a teardown it did not complete.
    let left = fleet.ids();
    let events = fleet.trace().events();
    server.shutdown().await;
    Outcome {
        name: s.name.clone(),
        persona: s.config.persona,
        seed: s.seed,
        calls: events.iter().map(describe_event).collect(),
        faults: engine
            .fired()
            .iter()
            .map(|f| format!("#{} {} {}", f.rule, f.target, f.action))
            .collect(),
        processes: BTreeMap::new(),
        host_files: BTreeMap::new(),
        errors,
        warnings: left
            .iter()
            .map(|id| format!("the runtime left VM {id} running"))
            .collect(),
        teardown: if left.is_empty() {
            Teardown::Completed
        } else {
            Teardown::Incomplete
        },
        guest_containers: Vec::new(),
    }
}

fn failed(s: &Scenario, error: String) -> Outcome {
    Outcome {
        name: s.name.clone(),
        persona: s.config.persona,
        seed: s.seed,
        calls: Vec::new(),
        faults: Vec::new(),
        processes: BTreeMap::new(),
        host_files: BTreeMap::new(),
        errors: vec![error],
        warnings: Vec::new(),
        teardown: Teardown::Incomplete,
        guest_containers: Vec::new(),
    }
}
