//! Cancellation: every fleet operation whose caller goes away, at any point it waits, either
//! completes or rolls back. Nothing is left on disk, the fleet never forgets a VM it has not
//! cleaned up, and a later StopVM and the shutdown still work.
//!
//! In-process, each operation is dropped after 1, 2, 3, ... steps (a poll, then 0.5 ms of the
//! paused clock) until it completes on its own, so every await point is hit; over the wire, a
//! client sends the request and hangs up.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use sim_agent::fault::FaultEngine;
use sim_hypervisor::protocols::remote;
use sim_hypervisor::{Fleet, FleetConfig, HypervisorError, RemoteHypervisorServer, VmState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Drives `op` for `steps` steps, then drops it; its result if it finished first.
async fn run_for<T>(steps: usize, op: impl Future<Output = T>) -> Option<T> {
    tokio::pin!(op);
    for _ in 0..steps {
        tokio::select! {
            biased;
            r = &mut op => return Some(r),
            () = tokio::time::sleep(Duration::from_micros(500)) => {}
        }
    }
    None
}

/// Lets every task finish what it can: on the paused clock this returns once nothing is left
/// to run (tokio advances the clock only when the runtime is idle, I/O included).
async fn settle() {
    tokio::time::sleep(Duration::from_secs(5)).await;
}

fn fleet(dir: &Path, rules: &[&str]) -> Arc<Fleet> {
    let mut config = FleetConfig::new(dir.join("vms"));
    config.vm.boot_time = Duration::from_millis(2);
    config.faults = FaultEngine::new(1);
    for r in rules {
        config.faults.add(r).unwrap();
    }
    Arc::new(Fleet::new(config).unwrap())
}

fn vm_dir(fleet: &Fleet, id: &str) -> PathBuf {
    fleet.state_dir().join(id)
}

/// What must hold of VM `id` once an operation on it was cancelled and everything settled:
/// a VM the fleet knows is in a stable state whose files match it, one it does not know has
/// nothing on disk; a StopVM then succeeds (or finds nothing) and leaves nothing behind.
async fn check_consistent(fleet: &Fleet, id: &str, what: &str) {
    let dir = vm_dir(fleet, id);
    let socket = dir.join("agent.sock");
    match fleet.vm(id).map(|vm| vm.state()) {
        None => assert!(!dir.exists(), "{what}: forgotten but {dir:?} is left"),
        Some(None) => panic!("{what}: the fleet holds a VM that was never created"),
        Some(Some(VmState::Running)) => {
            assert!(socket.exists(), "{what}: running without its socket");
            tokio::net::UnixStream::connect(&socket)
                .await
                .unwrap_or_else(|e| panic!("{what}: running, but its agent is dead: {e}"));
        }
        Some(Some(VmState::Created)) => {
            assert!(!socket.exists(), "{what}: a socket before the boot")
        }
        Some(Some(other)) => panic!("{what}: left in state {other:?}"),
    }
    match fleet.stop_vm(id).await {
        Ok(()) | Err(HypervisorError::NotFound(_)) => {}
        Err(e) => panic!("{what}: a later StopVM failed: {e}"),
    }
    assert!(fleet.vm(id).is_none(), "{what}: still known after StopVM");
    assert!(!dir.exists(), "{what}: {dir:?} left after StopVM");
}

async fn assert_nothing_left(fleet: &Fleet, what: &str) {
    fleet.shutdown().await;
    let left: Vec<_> = std::fs::read_dir(fleet.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{what}: the shutdown left {left:?}");
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Start,
    Stop,
}

/// Cancels `op` at every point it can wait, with and without a delay fault on it.
async fn cancel_everywhere(op: Op) {
    for fault in [None, Some("delay(3ms)")] {
        let mut completed_at = None;
        for steps in 1..200 {
            let dir = tempfile::tempdir().unwrap();
            let name = format!("{op:?}");
            let rule = fault.map(|f| format!("{name}VM={f}"));
            let fleet = fleet(dir.path(), rule.as_deref().as_slice());
            let id = "vm";
            if !matches!(op, Op::Create) {
                fleet.create_vm(id, Default::default(), "").await.unwrap();
            }
            if matches!(op, Op::Stop) {
                fleet.start_vm(id, 10).await.unwrap();
            }
            let what = format!("{name}VM (fault {fault:?}) dropped after {steps} steps");
            let done = match op {
                Op::Create => run_for(steps, fleet.create_vm(id, Default::default(), ""))
                    .await
                    .map(|r| r.map(drop)),
                Op::Start => run_for(steps, fleet.start_vm(id, 10)).await,
                Op::Stop => run_for(steps, fleet.stop_vm(id)).await,
            };
            settle().await;
            let finished = done.is_some();
            if let Some(r) = done {
                r.unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            if matches!(op, Op::Create) && fleet.vm(id).is_none() {
                // Rolled back: the id is free again.
                fleet
                    .create_vm(id, Default::default(), "")
                    .await
                    .unwrap_or_else(|e| panic!("{what}: the id stayed taken: {e}"));
            }
            check_consistent(&fleet, id, &what).await;
            assert_nothing_left(&fleet, &what).await;
            if finished {
                completed_at = Some(steps);
                break;
            }
        }
        assert!(
            completed_at.is_some(),
            "{op:?} ({fault:?}) never completed: the loop did not reach its end"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn create_vm_cancelled_anywhere_completes_or_rolls_back() {
    cancel_everywhere(Op::Create).await;
}

#[tokio::test(start_paused = true)]
async fn start_vm_cancelled_anywhere_completes_or_rolls_back() {
    cancel_everywhere(Op::Start).await;
}

#[tokio::test(start_paused = true)]
async fn stop_vm_cancelled_anywhere_completes_or_rolls_back() {
    cancel_everywhere(Op::Stop).await;
}

/// Sends one request on a fresh connection and hangs up at once; returns when the server has
/// closed the connection (it has seen the hang-up and cancelled what was pending).
async fn send_and_hang_up(socket: &Path, method: &str, payload: Vec<u8>) {
    let mut req = ttrpc::Request::new();
    req.service = "hypervisor.Hypervisor".into();
    req.method = method.into();
    req.payload = payload;
    let body = req.write_to_bytes().unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&body);
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    s.write_all(&frame).await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_hangs_up_right_after_sending_leaves_a_consistent_fleet() {
    for fault in [None, Some("delay(3ms)")] {
        for method in ["CreateVM", "StartVM", "StopVM"] {
            let dir = tempfile::tempdir().unwrap();
            let rule = fault.map(|f| format!("{method}={f}"));
            let fleet = fleet(dir.path(), rule.as_deref().as_slice());
            let socket = dir.path().join("hv.sock");
            let server = RemoteHypervisorServer::bind(&socket, Arc::clone(&fleet))
                .await
                .unwrap();
            let id = "vm";
            if method != "CreateVM" {
                fleet.create_vm(id, Default::default(), "").await.unwrap();
            }
            if method == "StopVM" {
                fleet.start_vm(id, 10).await.unwrap();
            }
            let payload = match method {
                "CreateVM" => remote::CreateVMRequest {
                    id: id.into(),
                    ..Default::default()
                }
                .write_to_bytes(),
                "StartVM" => remote::StartVMRequest {
                    id: id.into(),
                    ..Default::default()
                }
                .write_to_bytes(),
                _ => remote::StopVMRequest {
                    id: id.into(),
                    ..Default::default()
                }
                .write_to_bytes(),
            }
            .unwrap();
            send_and_hang_up(&socket, method, payload).await;
            settle().await;
            let what = format!("{method} (fault {fault:?}) whose caller hung up");
            check_consistent(&fleet, id, &what).await;
            server.shutdown().await;
            let left: Vec<_> = std::fs::read_dir(fleet.state_dir())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(left.is_empty(), "{what}: the shutdown left {left:?}");
        }
    }
}

/// A StopVM that a fault hangs does not hold a fleet's shutdown (`kata-sim serve` with
/// `StopVM=hang` used to idle forever on SIGTERM): the VM is forced down and leaves nothing.
#[tokio::test(start_paused = true)]
async fn a_hung_stop_vm_does_not_hold_the_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), &["StopVM=hang"]);
    fleet.create_vm("h", Default::default(), "").await.unwrap();
    fleet.start_vm("h", 10).await.unwrap();
    assert!(vm_dir(&fleet, "h").exists());
    let started = tokio::time::Instant::now();
    fleet.shutdown().await;
    assert!(started.elapsed() <= sim_hypervisor::SHUTDOWN_STOP_LIMIT + Duration::from_secs(1));
    assert!(fleet.ids().is_empty());
    settle().await;
    assert!(!vm_dir(&fleet, "h").exists(), "the VM directory is left");
}
