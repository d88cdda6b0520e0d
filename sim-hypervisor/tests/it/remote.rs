//! The remote-hypervisor service over real unix sockets, driven by `RemoteHypervisor` and the
//! guest reached by `RemoteAgent` at the path CreateVM returned.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sim_agent::protocols::agent;
use sim_agent::{Agent, AgentError, RemoteAgent};
use sim_hypervisor::{
    Fleet, FleetConfig, Hypervisor, HypervisorConfig, HypervisorError, Network, RemoteHypervisor,
    RemoteHypervisorServer, VmState,
};
use ttrpc::Code;

use crate::bounded;

struct Service {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    server: RemoteHypervisorServer,
}

/// A fleet that keeps every call in its trace (as the exec driver's does).
async fn service() -> Service {
    service_with(true).await
}

async fn service_with(record: bool) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let mut config = FleetConfig::new(dir.path().join("vms"));
    config.vm.boot_time = Duration::from_millis(1);
    config.record = record;
    let fleet = Arc::new(Fleet::new(config).unwrap());
    let socket = dir.path().join("hypervisor.sock");
    let server = RemoteHypervisorServer::bind(&socket, fleet).await.unwrap();
    Service {
        _dir: dir,
        socket,
        server,
    }
}

/// The annotations the Go runtime sends with CreateVM (remote.go).
fn go_annotations() -> HypervisorConfig {
    let mut a = BTreeMap::new();
    for (k, v) in [
        ("io.kubernetes.cri.sandbox-name", "pod-a"),
        ("io.kubernetes.cri.sandbox-namespace", "default"),
        ("io.katacontainers.config.hypervisor.machine_type", ""),
        ("io.katacontainers.config.hypervisor.image", ""),
        ("io.katacontainers.config.hypervisor.default_vcpus", "0"),
        ("io.katacontainers.config.hypervisor.default_memory", "0"),
        ("io.katacontainers.config.hypervisor.cc_init_data", ""),
        ("io.katacontainers.config.hypervisor.default_gpus", "0"),
        ("io.katacontainers.config.hypervisor.default_gpu_model", ""),
    ] {
        a.insert(k.to_string(), v.to_string());
    }
    HypervisorConfig {
        annotations: a,
        ..Default::default()
    }
}

fn container(cid: &str, args: &[&str]) -> agent::CreateContainerRequest {
    sim_agent::requests::create_container(cid, args)
}

#[tokio::test]
async fn a_pod_runs_through_create_start_agent_stop() {
    let svc = service().await;
    let hv = RemoteHypervisor::connect(&svc.socket).await.unwrap();
    assert!(hv.version().await.unwrap().starts_with("kata-sim "));
    hv.create_vm(
        "sb1".into(),
        Network {
            netns_path: "/var/run/netns/cni-x".into(),
        },
        go_annotations(),
    )
    .await
    .unwrap();
    let url = hv.get_agent_socket().await.unwrap();
    let path = url.strip_prefix("remote://").unwrap().to_string();
    assert!(path.starts_with('/'), "the runtime needs an absolute path");
    // Before the boot nothing listens there.
    assert!(RemoteAgent::connect(&url).await.is_err());
    hv.start_vm(30).await.unwrap();
    let agent = RemoteAgent::connect(&url).await.unwrap();
    agent.check().await.unwrap();
    agent
        .create_container(container("c1", &["sh", "-c", "echo hi; exit 3"]))
        .await
        .unwrap();
    agent.start_container("c1".into()).await.unwrap();
    assert_eq!(
        agent
            .read_process_stdout("c1".into(), "c1".into(), 1024)
            .await
            .unwrap(),
        b"hi\n"
    );
    assert_eq!(
        agent.wait_process("c1".into(), "c1".into()).await.unwrap(),
        3
    );
    // The trace recorded what CreateVM carried.
    let fleet = svc.server.fleet();
    let create = fleet
        .trace()
        .events()
        .into_iter()
        .find(|e| e.method == "CreateVM")
        .unwrap();
    assert_eq!(create.field("netns"), Some("/var/run/netns/cni-x"));
    assert_eq!(
        create
            .fields
            .iter()
            .filter(|(k, _)| k == "annotation")
            .count(),
        9
    );
    hv.stop_vm(false).await.unwrap();
    assert!(!std::path::Path::new(&path).exists(), "socket removed");
    assert!(RemoteAgent::connect(&url).await.is_err());
    assert!(fleet.ids().is_empty());
    // runtime-rs sends StopVM again; the VM is gone.
    let e = hv.stop_vm(false).await.unwrap_err();
    assert_eq!(e.code(), Code::NOT_FOUND);
    assert_eq!(e.to_string(), "VM \"sb1\" not found");
    assert_eq!(hv.wait_vm().await.unwrap(), 1);
    svc.server.shutdown().await;
    assert!(!svc.socket.exists());
}

#[tokio::test]
async fn a_vm_that_dies_fails_pending_agent_calls_promptly() {
    let svc = service().await;
    let hv = RemoteHypervisor::connect(&svc.socket).await.unwrap();
    hv.create_vm("dying".into(), Network::default(), go_annotations())
        .await
        .unwrap();
    hv.start_vm(30).await.unwrap();
    let url = hv.get_agent_socket().await.unwrap();
    let agent = RemoteAgent::connect(&url).await.unwrap();
    agent
        .create_container(container("c1", &["sleep", "1000"]))
        .await
        .unwrap();
    agent.start_container("c1".into()).await.unwrap();
    let waiting = tokio::spawn({
        let agent = agent.clone();
        async move { agent.wait_process("c1".into(), "c1".into()).await }
    });
    let vm = svc.server.fleet().vm("dying").unwrap();
    // Wait until the WaitProcess is in the guest, then kill the VMM.
    let guest = vm.agent().unwrap();
    bounded(async {
        while !guest.trace().methods().iter().any(|m| m == "WaitProcess") {
            tokio::task::yield_now().await;
        }
    })
    .await;
    vm.kill().await;
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the pending WaitProcess must fail promptly")
        .unwrap();
    assert!(
        matches!(
            r,
            Err(AgentError::Transport(_) | AgentError::ConnectionClosed)
        ),
        "{r:?}"
    );
    assert!(
        RemoteAgent::connect(&url).await.is_err(),
        "reconnect refused"
    );
    assert!(vm.check().await.is_err());
    assert_eq!(vm.wait_vm().await.unwrap(), 137);
    assert_eq!(vm.state(), Some(VmState::Stopped));
    // The runtime then stops it: the fleet forgets it.
    hv.stop_vm(false).await.unwrap();
    svc.server.shutdown().await;
}

#[tokio::test]
async fn a_fleet_that_does_not_record_keeps_nothing_past_stop_vm() {
    // `kata-sim serve` runs for as long as CI does: what a VM recorded goes with the VM.
    let svc = service_with(false).await;
    let fleet = Arc::clone(svc.server.fleet());
    for i in 0..3 {
        let id = format!("pod-{i}");
        let hv = RemoteHypervisor::connect(&svc.socket).await.unwrap();
        hv.create_vm(id.clone(), Network::default(), go_annotations())
            .await
            .unwrap();
        hv.start_vm(10).await.unwrap();
        let agent = RemoteAgent::connect(&hv.get_agent_socket().await.unwrap())
            .await
            .unwrap();
        agent.check().await.unwrap();
        let vm = fleet.vm(&id).unwrap();
        let methods = vm.trace().methods();
        assert_eq!(
            methods,
            ["CreateVM", "StartVM", "Check"],
            "a VM's own record holds its operations and its guest's calls, and only those"
        );
        drop((agent, vm));
        hv.stop_vm(false).await.unwrap();
    }
    assert!(fleet.ids().is_empty());
    assert!(fleet.trace().is_empty(), "nothing accumulates fleet-wide");
    svc.server.shutdown().await;
}

#[tokio::test]
async fn fifty_sandboxes_run_concurrently() {
    let svc = service().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let socket = svc.socket.clone();
        tasks.spawn(async move {
            let id = format!("pod-{i:02}");
            let hv = RemoteHypervisor::connect(&socket).await.unwrap();
            hv.create_vm(id.clone(), Network::default(), go_annotations())
                .await
                .unwrap();
            hv.start_vm(30).await.unwrap();
            let agent = RemoteAgent::connect(&hv.get_agent_socket().await.unwrap())
                .await
                .unwrap();
            agent
                .create_container(container(&id, &["echo", &id]))
                .await
                .unwrap();
            agent.start_container(id.clone()).await.unwrap();
            let out = agent
                .read_process_stdout(id.clone(), id.clone(), 1024)
                .await
                .unwrap();
            assert_eq!(out, format!("{id}\n").into_bytes());
            assert_eq!(agent.wait_process(id.clone(), id.clone()).await.unwrap(), 0);
            hv.stop_vm(false).await.unwrap();
            id
        });
    }
    let mut done = Vec::new();
    while let Some(r) = bounded(tasks.join_next()).await {
        done.push(r.unwrap());
    }
    assert_eq!(done.len(), 50);
    assert!(svc.server.fleet().ids().is_empty());
    let starts = svc
        .server
        .fleet()
        .trace()
        .events()
        .into_iter()
        .filter(|e| e.method == "StartVM" && e.status == "OK")
        .count();
    assert_eq!(starts, 50);
    svc.server.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_disturbs_nothing() {
    let svc = service().await;
    let hv = RemoteHypervisor::connect(&svc.socket).await.unwrap();
    hv.create_vm("dup".into(), Network::default(), go_annotations())
        .await
        .unwrap();
    let other = RemoteHypervisor::connect(&svc.socket).await.unwrap();
    let e = other
        .create_vm("dup".into(), Network::default(), go_annotations())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.to_string()),
        (Code::ALREADY_EXISTS, "VM \"dup\" already exists".into())
    );
    for bad in ["", "a/b", ".."] {
        let e = other
            .create_vm(bad.into(), Network::default(), go_annotations())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{bad:?}: {e}");
    }
    let ghost = RemoteHypervisor::connect(&svc.socket).await.unwrap();
    ghost
        .create_vm("ghost".into(), Network::default(), go_annotations())
        .await
        .unwrap();
    ghost.stop_vm(false).await.unwrap();
    let e = ghost.start_vm(30).await.unwrap_err();
    assert_eq!(
        (e.code(), e.to_string()),
        (Code::NOT_FOUND, "VM \"ghost\" not found".into())
    );
    // The first VM is undisturbed by all of that.
    hv.start_vm(30).await.unwrap();
    RemoteAgent::connect(&hv.get_agent_socket().await.unwrap())
        .await
        .unwrap()
        .check()
        .await
        .unwrap();
    assert_eq!(svc.server.fleet().ids(), vec!["dup".to_string()]);
    // A malformed frame on the hypervisor socket does not take the service down.
    {
        use tokio::io::AsyncWriteExt as _;
        let mut raw = tokio::net::UnixStream::connect(&svc.socket).await.unwrap();
        raw.write_all(&[0xff; 64]).await.unwrap();
    }
    assert!(hv.version().await.is_ok());
    hv.stop_vm(false).await.unwrap();
    svc.server.shutdown().await;
}

#[tokio::test]
async fn a_state_dir_that_cannot_be_written_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let e = Fleet::new(FleetConfig::new(file.join("vms"))).unwrap_err();
    assert!(
        matches!(&e, HypervisorError::Io(m) if m.contains("state dir") && m.contains("cannot create")),
        "{e}"
    );
    // A state dir in a directory that does not exist: named, and nothing is created.
    let missing = dir.path().join("nope");
    let e = Fleet::new(FleetConfig::new(missing.join("deeper/vms"))).unwrap_err();
    let want = format!(
        "the directory {} does not exist",
        missing.join("deeper").display()
    );
    assert!(e.to_string().contains(&want), "{e}");
    assert!(!missing.exists());
    // A socket path someone serves is refused; the first server keeps serving.
    let svc = service().await;
    let fleet = Arc::new(Fleet::new(FleetConfig::new(dir.path().join("vms2"))).unwrap());
    let e = RemoteHypervisorServer::bind(&svc.socket, fleet)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    let hv = RemoteHypervisor::connect(&svc.socket).await.unwrap();
    assert!(hv.version().await.is_ok());
    svc.server.shutdown().await;
}
