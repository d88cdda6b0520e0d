//! The `exec` driver: a real host runtime drives the lifecycle; kata-sim serves it.
//!
//! A thin variant of the shim driver ([`crate::shim`]): the same kata-sim service
//! (`shim::serve`: the scenario's guest, faults and seed, every call recorded) and the same
//! record of calls and VMs left, but the user's command plays containerd (a `ctr` script, a
//! CRI client) instead of kata-sim. Prefer `--driver shim:PATH`, which also replays the steps
//! and checks the whole outcome.
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
//!
//! After [`stop_on_signals`], SIGTERM or SIGINT stops a run cleanly: the command gets the
//! same signal (and SIGKILL if it is still there [`STOP_GRACE`] later), the service shuts
//! down (its socket and VM directories go), and [`interrupted`] tells the caller to run
//! nothing more.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::host::Outcome;
use crate::record::{FaultFired, Warning};
use crate::schema::{Scenario, Teardown};

/// How long the command may run.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(600);

/// How long a signalled command has to exit before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The first SIGTERM or SIGINT received since [`stop_on_signals`].
static STOP: LazyLock<watch::Sender<Option<nix::sys::signal::Signal>>> =
    LazyLock::new(|| watch::channel(None).0);

/// Makes SIGTERM and SIGINT stop exec runs cleanly instead of killing the process (which
/// would leave the service's socket and state behind). The handlers are in place when this
/// returns; they stay for the life of the process. A thread of its own waits for the signals,
/// so that they are caught between runs too.
pub fn stop_on_signals() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("kata-sim-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let (mut term, mut int) = match (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) {
                    (Ok(t), Ok(i)) => (t, i),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let sig = tokio::select! {
                    _ = term.recv() => nix::sys::signal::Signal::SIGTERM,
                    _ = int.recv() => nix::sys::signal::Signal::SIGINT,
                };
                tracing::info!(signal = %sig, "stopping the exec run");
                STOP.send_replace(Some(sig));
                // Later signals change nothing: the run is already stopping.
                loop {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
            });
        })?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the signal thread ended")))
}

/// The signal that stopped the exec runs, if one did (see [`stop_on_signals`]).
pub fn interrupted() -> Option<nix::sys::signal::Signal> {
    *STOP.borrow()
}

/// Runs `command` against a kata-sim service set up for `s`.
pub async fn run(s: &Scenario, command: &[String], dir: &Path) -> Outcome {
    if let Some(sig) = interrupted() {
        return crate::host::failed(s, format!("not run: interrupted by {sig}"));
    }
    let mut errors = Vec::new();
    // The shim driver's service: the same guest, faults, seed and record.
    let service = match crate::shim::serve(s, dir).await {
        Ok(sv) => sv,
        Err(e) => return crate::host::failed(s, e),
    };
    let (fleet, socket) = (Arc::clone(&service.fleet), service.socket.clone());
    let engine = fleet.faults().clone();
    let Some((program, args)) = command.split_first() else {
        service.server.shutdown().await;
        return crate::host::failed(s, "no command given to the exec driver".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("KATA_SIM_HYPERVISOR_SOCKET", &socket)
        .env("KATA_SIM_STATE_DIR", fleet.state_dir())
        .env("KATA_SIM_SCENARIO", &s.name)
        .env("KATA_SIM_SEED", s.seed.to_string())
        .kill_on_drop(true)
        .spawn();
    match child {
        Err(e) => errors.push(format!("cannot run {program:?}: {e}")),
        Ok(mut child) => {
            let mut stop = STOP.subscribe();
            tokio::select! {
                r = tokio::time::timeout(COMMAND_LIMIT, child.wait()) => match r {
                    Ok(Ok(status)) if status.success() => {}
                    Ok(Ok(status)) => errors.push(format!("the command exited with {status}")),
                    Ok(Err(e)) => errors.push(format!("waiting for {program:?}: {e}")),
                    Err(_) => errors.push(format!(
                        "the command did not finish within {} s",
                        COMMAND_LIMIT.as_secs()
                    )),
                },
                Ok(sig) = stop.wait_for(Option::is_some) => {
                    let sig = sig.unwrap_or(nix::sys::signal::Signal::SIGTERM);
                    errors.push(format!("interrupted by {sig}: the command was stopped"));
                    stop_child(&mut child, sig).await;
                }
            }
        }
    }
    // The runtime is done: whatever VM it left is a teardown it did not complete.
    let (calls, left) = service.record();
    service.server.shutdown().await;
    Outcome {
        name: s.name.clone(),
        persona: s.config.persona,
        seed: s.seed,
        calls,
        faults: FaultFired::folded(&engine.fired()),
        faults_not_kept: engine.fired_dropped(),
        processes: BTreeMap::new(),
        host_files: BTreeMap::new(),
        // containerd's view is the real runtime's; the exec driver does not see it.
        tasks: BTreeMap::new(),
        errors,
        warnings: left
            .iter()
            .map(|id| Warning::once(format!("the runtime left VM {id} running (kata-sim)")))
            .collect(),
        teardown: if left.is_empty() {
            Teardown::Completed
        } else {
            Teardown::Incomplete
        },
        guest_containers: Vec::new(),
        steps: Vec::new(),
        stuck: Vec::new(),
        firings: Vec::new(),
    }
}

/// Passes `sig` on to the command, then kills it if it is still there after [`STOP_GRACE`].
async fn stop_child(child: &mut tokio::process::Child, sig: nix::sys::signal::Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
