//! The VM model in-process: every transition, resources and devices, liveness, save/load.

use sim_hypervisor::{
    Capabilities, Device, DeviceType, HotplugResult, Hypervisor, HypervisorConfig, HypervisorError,
    MemoryDevice, Network, SimHypervisor, VmState,
};

use crate::{bounded, vmm};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Start,
    Stop,
    Pause,
    Save,
    Resume,
}

const OPS: [Op; 6] = [
    Op::Create,
    Op::Start,
    Op::Stop,
    Op::Pause,
    Op::Save,
    Op::Resume,
];

async fn apply(vm: &SimHypervisor, op: Op) -> Result<(), HypervisorError> {
    match op {
        Op::Create => {
            vm.create_vm(
                "vm1".into(),
                Network::default(),
                HypervisorConfig::default(),
            )
            .await
        }
        Op::Start => vm.start_vm(30).await,
        Op::Stop => vm.stop_vm(false).await,
        Op::Pause => vm.pause_vm().await,
        Op::Save => vm.save_vm().await,
        Op::Resume => vm.resume_vm().await,
    }
}

/// A VM brought to `state` by the shortest path.
async fn vm_in(dir: &tempfile::TempDir, state: Option<VmState>) -> SimHypervisor {
    let vm = vmm(dir);
    let path: &[Op] = match state {
        None => &[],
        Some(VmState::Created) => &[Op::Create],
        Some(VmState::Running) => &[Op::Create, Op::Start],
        Some(VmState::Paused) => &[Op::Create, Op::Start, Op::Pause],
        Some(VmState::Saved) => &[Op::Create, Op::Start, Op::Pause, Op::Save],
        Some(VmState::Stopped) => &[Op::Create, Op::Start, Op::Stop],
    };
    for op in path {
        apply(&vm, *op).await.unwrap();
    }
    assert_eq!(vm.state(), state);
    vm
}

/// The transition table: where each operation leads from each state, `None` = an error.
fn expected(state: Option<VmState>, op: Op) -> Option<VmState> {
    use VmState::*;
    match (state, op) {
        (None, Op::Create) => Some(Created),
        (Some(Created), Op::Start) => Some(Running),
        (Some(Created | Running | Paused | Saved), Op::Stop) => Some(Stopped),
        (Some(Running), Op::Pause) => Some(Paused),
        (Some(Paused), Op::Save) => Some(Saved),
        (Some(Paused), Op::Resume) => Some(Running),
        _ => None,
    }
}

#[tokio::test]
async fn every_transition_follows_the_table_and_invalid_ones_error() {
    let states = [
        None,
        Some(VmState::Created),
        Some(VmState::Running),
        Some(VmState::Paused),
        Some(VmState::Saved),
        Some(VmState::Stopped),
    ];
    let mut checked = 0;
    for state in states {
        for op in OPS {
            let dir = tempfile::tempdir().unwrap();
            let vm = vm_in(&dir, state).await;
            let r = bounded(apply(&vm, op)).await;
            match expected(state, op) {
                Some(next) => {
                    assert!(r.is_ok(), "{state:?} --{op:?}--> {r:?}");
                    assert_eq!(vm.state(), Some(next), "{state:?} --{op:?}");
                }
                None => {
                    let e = r.expect_err(&format!("{state:?} --{op:?} must fail"));
                    assert!(
                        matches!(
                            e,
                            HypervisorError::InvalidTransition { .. }
                                | HypervisorError::NotFound(_)
                        ),
                        "{state:?} --{op:?}: {e}"
                    );
                    assert_eq!(vm.state(), state, "a failed {op:?} changed the state");
                }
            }
            checked += 1;
            if vm.state() == Some(VmState::Running) {
                vm.stop_vm(false).await.unwrap();
            }
        }
    }
    assert_eq!(checked, 36);
}

#[tokio::test]
async fn error_messages_name_the_operation_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm_in(&dir, Some(VmState::Created)).await;
    assert_eq!(
        vm.pause_vm().await.unwrap_err().to_string(),
        "cannot pause a VM that is created"
    );
    assert_eq!(
        vm.create_vm(
            "vm1".into(),
            Network::default(),
            HypervisorConfig::default()
        )
        .await
        .unwrap_err()
        .to_string(),
        "cannot create a VM that is created"
    );
}

#[tokio::test]
async fn vcpus_resize_within_limits_and_only_hotplugged_ones_go() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vmm(&dir);
    let config = HypervisorConfig {
        num_vcpus: 2,
        default_max_vcpus: 4,
        ..Default::default()
    };
    vm.create_vm("v".into(), Network::default(), config)
        .await
        .unwrap();
    // Not before boot.
    assert!(vm.resize_vcpus(3).await.is_err());
    vm.start_vm(30).await.unwrap();
    assert_eq!(vm.resize_vcpus(3).await.unwrap(), (2, 3));
    // Past the maximum, Kata adds what fits and does not fail.
    assert_eq!(vm.resize_vcpus(16).await.unwrap(), (3, 4));
    assert_eq!(
        vm.hotplug_add_device(Device::Vcpus(1), DeviceType::Cpu)
            .await
            .unwrap(),
        HotplugResult::Vcpus(0)
    );
    assert_eq!(vm.get_thread_ids().await.unwrap().len(), 4);
    assert_eq!(vm.resize_vcpus(2).await.unwrap(), (4, 2));
    // Boot vCPUs cannot be removed.
    let e = vm.resize_vcpus(1).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "Unable to remove 1 CPUs, currently there are only 0 hotplugged CPUs"
    );
    assert_eq!(vm.resize_vcpus(2).await.unwrap(), (2, 2));
}

#[tokio::test]
async fn memory_grows_in_blocks_on_free_slots_and_never_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vmm(&dir);
    let config = HypervisorConfig {
        memory_size_mb: 2048,
        default_max_memory_mb: 4096,
        memory_slots: 2,
        ..Default::default()
    };
    vm.create_vm("m".into(), Network::default(), config)
        .await
        .unwrap();
    vm.start_vm(30).await.unwrap();
    // 2100 MiB in 128 MiB blocks: 52 MiB more rounds up to 128.
    let (now, dev) = vm.resize_memory(2100, 128, true).await.unwrap();
    assert_eq!(now, 2176);
    assert_eq!(
        dev,
        MemoryDevice {
            slot: 0,
            size_mb: 128,
            addr: 1 << 32,
            probe: true
        }
    );
    // Past the maximum it is clamped to the maximum.
    let (now, dev) = vm.resize_memory(8192, 128, true).await.unwrap();
    assert_eq!(now, 4096);
    assert_eq!(dev.slot, 1);
    assert_eq!(dev.addr, (1 << 32) + (128 << 20));
    assert_eq!(vm.get_total_memory_mb().await, 4096);
    // Shrinking is asked for but nothing is removed (QEMU cannot unplug memory).
    let (now, dev) = vm.resize_memory(3000, 128, false).await.unwrap();
    assert_eq!((now, dev.size_mb), (4096, 1152));
    assert_eq!(
        vm.hotplug_remove_device(Device::Memory(dev), DeviceType::Memory)
            .await
            .unwrap(),
        HotplugResult::MemoryMb(0)
    );
    // Both slots are used: one more DIMM is refused.
    let e = vm
        .hotplug_add_device(
            Device::Memory(MemoryDevice {
                size_mb: 1,
                ..Default::default()
            }),
            DeviceType::Memory,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("all 2 memory slots"), "{e}");
}

#[tokio::test]
async fn devices_get_stable_pci_paths() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vmm(&dir);
    vm.create_vm("d".into(), Network::default(), HypervisorConfig::default())
        .await
        .unwrap();
    let named = |id: &str| Device::Named { id: id.into() };
    // Cold plug before boot; hotplug is refused then.
    vm.add_device(named("0000:3b:00.0"), DeviceType::Vfio)
        .await
        .unwrap();
    assert!(
        vm.hotplug_add_device(named("blk0"), DeviceType::Block)
            .await
            .is_err()
    );
    vm.start_vm(30).await.unwrap();
    assert!(
        vm.add_device(named("late"), DeviceType::Vfio)
            .await
            .is_err(),
        "cold plug after boot"
    );
    let paths = vm
        .resolve_cold_plug_vfio_guest_pci_paths(vec!["0000:3b:00.0".into()])
        .await
        .unwrap();
    assert_eq!(paths["0000:3b:00.0"], "05");
    let plug = |id: &'static str| {
        let vm = vm.clone();
        async move {
            match vm.hotplug_add_device(named(id), DeviceType::Block).await {
                Ok(HotplugResult::Pci { pci_path }) => pci_path,
                other => panic!("{id}: {other:?}"),
            }
        }
    };
    assert_eq!(plug("blk0").await, "02/01");
    assert_eq!(plug("blk1").await, "02/02");
    assert!(
        vm.hotplug_add_device(named("blk1"), DeviceType::Block)
            .await
            .is_err(),
        "plugged twice"
    );
    vm.hotplug_remove_device(named("blk0"), DeviceType::Block)
        .await
        .unwrap();
    assert!(
        vm.hotplug_remove_device(named("blk0"), DeviceType::Block)
            .await
            .is_err(),
        "removed twice"
    );
    assert!(
        vm.hotplug_remove_device(named("0000:3b:00.0"), DeviceType::Vfio)
            .await
            .is_err(),
        "cold-plugged devices stay"
    );
    // A new device takes the free slot; blk0 plugged again gets its old slot back when free.
    assert_eq!(plug("blk2").await, "02/01");
    vm.hotplug_remove_device(named("blk2"), DeviceType::Block)
        .await
        .unwrap();
    assert_eq!(plug("blk0").await, "02/01");
    // Non-PCI devices get no path.
    assert_eq!(
        vm.hotplug_add_device(named("vsock"), DeviceType::HybridVirtioVsock)
            .await
            .unwrap(),
        HotplugResult::None
    );
    assert_eq!(vm.devices().len(), 4);
}

#[tokio::test]
async fn liveness_pids_console_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vmm(&dir);
    assert!(vm.check().await.is_err(), "no VMM before create");
    assert!(vm.get_pids().await.is_empty());
    let bad = HypervisorConfig {
        num_vcpus: 9,
        default_max_vcpus: 8,
        ..Default::default()
    };
    let e = vm
        .create_vm("c".into(), Network::default(), bad)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "default_vcpus 9 exceeds default_maxvcpus 8");
    let config = HypervisorConfig {
        virtio_fs: true,
        ..Default::default()
    };
    vm.create_vm(
        "c".into(),
        Network {
            netns_path: "/var/run/netns/cni-1".into(),
        },
        config.clone(),
    )
    .await
    .unwrap();
    assert_eq!(vm.netns(), "/var/run/netns/cni-1");
    vm.check().await.unwrap();
    let pids = vm.get_pids().await;
    assert_eq!(pids.len(), 2);
    assert_eq!(vm.get_virtio_fs_pid().await, Some(pids[1]));
    assert_eq!(vm.hypervisor_config().await, config);
    assert_eq!(vm.capabilities().await, Capabilities::QEMU);
    let (proto, url) = vm.get_vm_console("c".into()).await.unwrap();
    assert_eq!(proto, "unix");
    assert_eq!(url, dir.path().join("c/console.sock").display().to_string());
    vm.start_vm(30).await.unwrap();
    let tids = vm.get_thread_ids().await.unwrap();
    assert_eq!(
        tids,
        vm.get_thread_ids().await.unwrap(),
        "stable thread ids"
    );
    vm.stop_vm(false).await.unwrap();
    assert!(vm.check().await.is_err());
    assert_eq!(vm.wait_vm().await.unwrap(), 0);
    vm.cleanup().await.unwrap();
    assert!(!dir.path().join("c").exists());
}

#[tokio::test]
async fn save_and_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vmm(&dir);
    vm.create_vm("s".into(), Network::default(), HypervisorConfig::default())
        .await
        .unwrap();
    vm.generate_socket("s".into()).await.unwrap();
    vm.start_vm(30).await.unwrap();
    vm.resize_vcpus(3).await.unwrap();
    vm.hotplug_add_device(Device::Named { id: "b".into() }, DeviceType::Block)
        .await
        .unwrap();
    let state = vm.save().await;
    let bytes = vm.to_grpc().await.unwrap();
    let other = vmm(&dir);
    other.load(state.clone()).await;
    assert_eq!(other.save().await, state);
    let third = vmm(&dir);
    third
        .from_grpc(HypervisorConfig::default(), bytes)
        .await
        .unwrap();
    assert_eq!(third.save().await, state);
    assert!(
        third
            .from_grpc(HypervisorConfig::default(), b"{".to_vec())
            .await
            .is_err()
    );
    vm.stop_vm(false).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn boot_time_runs_on_the_clock_and_a_short_timeout_fails_the_boot() {
    let dir = tempfile::tempdir().unwrap();
    let vm = SimHypervisor::new(sim_hypervisor::SimVmConfig {
        state_dir: dir.path().to_path_buf(),
        boot_time: std::time::Duration::from_secs(20),
        ..Default::default()
    });
    vm.create_vm("b".into(), Network::default(), HypervisorConfig::default())
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let e = vm.start_vm(10).await.unwrap_err();
    assert_eq!(e.to_string(), "VM \"b\" did not boot within 10 s");
    assert_eq!(start.elapsed(), std::time::Duration::from_secs(10));
    assert_eq!(vm.state(), Some(VmState::Stopped));
    assert_eq!(vm.wait_vm().await.unwrap(), 1);
}

#[tokio::test]
async fn mock_hypervisor_checks_expectations() {
    let mut mock = sim_hypervisor::MockHypervisor::new();
    mock.expect_resize_vcpus()
        .withf(|n| *n == 4)
        .times(1)
        .returning(|n| Ok((2, n)));
    mock.expect_check()
        .returning(|| Err(HypervisorError::NotRunning("m".into())));
    let hv: &dyn Hypervisor = &mock;
    assert_eq!(hv.resize_vcpus(4).await.unwrap(), (2, 4));
    assert!(hv.check().await.is_err());
}
