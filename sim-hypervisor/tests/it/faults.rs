//! Faults at the hypervisor level: hypervisor operations, a guest killed by a rule taking its
//! VM down, and rules scoped to one sandbox.

use std::sync::Arc;
use std::time::Duration;

use sim_agent::fault::FaultEngine;
use sim_agent::{Agent, RemoteAgent};
use sim_hypervisor::{
    Fleet, FleetConfig, Hypervisor, HypervisorConfig, Network, RemoteHypervisor,
    RemoteHypervisorServer, SimHypervisor, SimVmConfig, VmState,
};
use ttrpc::Code;

async fn fleet_with(rules: &[&str]) -> (tempfile::TempDir, RemoteHypervisorServer) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = FleetConfig::new(dir.path().join("vms"));
    config.vm.boot_time = Duration::from_millis(1);
    config.faults = FaultEngine::new(3);
    config.record = true;
    for r in rules {
        config.faults.add(r).unwrap();
    }
    let fleet = Arc::new(Fleet::new(config).unwrap());
    let server = RemoteHypervisorServer::bind(&dir.path().join("hv.sock"), fleet)
        .await
        .unwrap();
    (dir, server)
}

async fn started(server: &RemoteHypervisorServer, id: &str) -> (RemoteHypervisor, String) {
    let hv = RemoteHypervisor::connect(server.socket()).await.unwrap();
    hv.create_vm(id.into(), Network::default(), HypervisorConfig::default())
        .await
        .unwrap();
    hv.start_vm(30).await.unwrap();
    let url = hv.get_agent_socket().await.unwrap();
    (hv, url)
}

#[tokio::test]
async fn a_rule_that_kills_the_guest_takes_its_vm_down() {
    let (_dir, server) = fleet_with(&["Check{sandbox=doomed}=kill_guest"]).await;
    let (_hv, url) = started(&server, "doomed").await;
    let (_hv2, url2) = started(&server, "spared").await;
    let vm = server.fleet().vm("doomed").unwrap();
    let a = RemoteAgent::connect(&url).await.unwrap();
    assert!(a.check().await.is_err());
    assert_eq!(vm.wait_vm().await.unwrap(), 137);
    assert_eq!(vm.state(), Some(VmState::Stopped));
    assert!(vm.check().await.is_err(), "the VMM is gone");
    assert!(
        RemoteAgent::connect(&url).await.is_err(),
        "its socket is gone: reconnects are refused"
    );
    // The rule was scoped: the other sandbox's guest answers.
    RemoteAgent::connect(&url2)
        .await
        .unwrap()
        .check()
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn hypervisor_operations_take_errors_and_delays() {
    let (_dir, server) = fleet_with(&[
        r#"CreateVM{sandbox=bad}=error(RESOURCE_EXHAUSTED,"no capacity")"#,
        "StartVM{sandbox=slow}=delay(200ms)",
    ])
    .await;
    let hv = RemoteHypervisor::connect(server.socket()).await.unwrap();
    let e = hv
        .create_vm(
            "bad".into(),
            Network::default(),
            HypervisorConfig::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.to_string()),
        (Code::RESOURCE_EXHAUSTED, "no capacity".into())
    );
    assert!(
        server.fleet().ids().is_empty(),
        "a failed CreateVM leaves nothing"
    );
    let (_hv, _url) = started(&server, "slow").await;
    let events = server.fleet().trace().events();
    let start = events
        .iter()
        .find(|e| e.method == sim_agent::Op::Vm(sim_agent::VmOp::StartVM))
        .unwrap();
    assert_eq!(start.fault.as_deref(), Some("delay(200ms)"));
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn in_process_operations_consult_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FaultEngine::new(0);
    let _g = engine
        .install("ResizeVCPUs=1*error(INTERNAL)->off")
        .unwrap();
    let _h = engine.install("CheckVM=1*error(UNAVAILABLE)->off").unwrap();
    let vm = SimHypervisor::new(SimVmConfig {
        state_dir: dir.path().to_path_buf(),
        faults: Some(Arc::new(engine.clone())),
        ..Default::default()
    });
    vm.create_vm("v".into(), Network::default(), HypervisorConfig::default())
        .await
        .unwrap();
    vm.start_vm(30).await.unwrap();
    assert!(vm.resize_vcpus(2).await.is_err());
    assert_eq!(vm.resize_vcpus(2).await.unwrap(), (1, 2));
    assert!(vm.check().await.is_err());
    vm.check().await.unwrap();
    assert_eq!(engine.fired().len(), 2);
    vm.stop_vm(false).await.unwrap();
}
