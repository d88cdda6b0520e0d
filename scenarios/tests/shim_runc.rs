//! The shim driver against a real shim that Debian packages: containerd's
//! `containerd-shim-runc-v2` with `runc`, on a rootfs made from `busybox-static` (`.ci/run`
//! installs all three). kata-sim plays containerd: the `start` bootstrap, the events service,
//! FIFOs, Create/Start/Wait/Exec/Kill/Delete/Shutdown, and a shim that crashes or never
//! prints its address.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_sim::host::Outcome;
use kata_sim::record::TaskStatus;
use kata_sim::schema::Teardown;
use kata_sim::shim::{ShimOptions, run_blocking};

const RUNC_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/shim")
}

fn scenario(file: &str) -> kata_sim::schema::Scenario {
    kata_sim::load::load(&dir().join(file)).unwrap_or_else(|e| panic!("{e}"))
}

fn options() -> ShimOptions {
    assert!(
        Path::new(RUNC_SHIM).is_file(),
        "{RUNC_SHIM} is missing: install Debian's containerd, runc and busybox-static"
    );
    ShimOptions::new(RUNC_SHIM).identify()
}

fn run(file: &str) -> Outcome {
    let s = scenario(file);
    let o = run_blocking(&s, &options());
    let mismatches = kata_sim::check::check(&s, &o);
    assert!(mismatches.is_empty(), "{file}: {mismatches:#?}\n{o:#?}");
    o
}

#[test]
fn the_runc_shim_is_identified() {
    let o = options();
    assert!(
        matches!(&o.flavor, Some(kata_sim::shim::launch::Flavor::Runc(v)) if v.starts_with("1.")),
        "{:?}",
        o.flavor
    );
}

#[test]
fn a_pod_runs_its_container_and_the_teardown_ends_the_shim() {
    let o = run("runc-pod.yaml");
    let p = &o.processes["c1"];
    assert_eq!(p.exit_code, Some(3));
    assert_eq!(p.stdout, "hello\n");
    assert_eq!(p.stderr, "oops\n");
    assert_eq!(o.teardown, Teardown::Completed, "{o:#?}");
    assert!(o.errors.is_empty(), "{:?}", o.errors);
    // The task states the shim reported after each step.
    let after = |step: &str| {
        o.steps
            .iter()
            .find(|r| r.step == step)
            .unwrap_or_else(|| panic!("no step {step}: {:#?}", o.steps))
            .tasks
            .get("c1")
            .cloned()
    };
    assert_eq!(
        after("create_container c1"),
        Some((TaskStatus::Created, None))
    );
    assert_eq!(after("wait c1"), Some((TaskStatus::Stopped, Some(3))));
    assert_eq!(o.tasks["c1"].status, TaskStatus::Stopped);
    assert_eq!(o.tasks["c1"].exit_status, Some(3));
}

#[test]
fn every_runc_scenario_matches_its_snapshot() {
    let opts = options();
    insta::glob!("shim/runc-*.yaml", |path| {
        let s = kata_sim::load::load(path).unwrap_or_else(|e| panic!("{e}"));
        let o = run_blocking(&s, &opts);
        let mismatches = kata_sim::check::check(&s, &o);
        assert!(mismatches.is_empty(), "{}: {mismatches:#?}\n{o:#?}", s.name);
        insta::with_settings!({ snapshot_path => "snapshots/shim", prepend_module_to_snapshot => false }, {
            insta::assert_yaml_snapshot!(s.name.as_str(), kata_sim::snapshot::redacted(&o));
        });
    });
}

#[test]
fn a_shim_that_never_prints_its_address_is_stopped_at_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let shim = dir.path().join("silent-shim");
    // It answers neither --version nor start: it waits until it is killed.
    std::fs::write(&shim, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut opts = ShimOptions::new(&shim);
    opts.flavor = Some(kata_sim::shim::launch::Flavor::Other);
    opts.start_limit = Duration::from_millis(500);
    let s = scenario("runc-pod.yaml");
    let o = run_blocking(&s, &opts);
    assert!(
        o.errors
            .iter()
            .any(|e| e.contains("start printed no address within 0.5 s (killed)")),
        "{:#?}",
        o.errors
    );
    // Nothing was created, and nothing of the shim is left running.
    assert!(o.processes.get("c1").and_then(|p| p.exit_code).is_none());
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&shim.display().to_string()))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The driver's parts on their own: a shim killed under a running task fails the next call
/// at once (no hang), its events reached the events service, and the shim binary's `delete`
/// cleans up after it as containerd's clean-up of a dead shim does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_shim_fails_the_next_call_and_its_delete_cleans_up() {
    use containerd_shim_protos::api;
    use kata_sim::shim::bundle::{self, BundleSpec, Rootfs};
    use kata_sim::shim::events::EventServer;
    use kata_sim::shim::fifo::LogPipe;
    use kata_sim::shim::launch::Launcher;
    use kata_sim::shim::task::{TaskClient, TaskError};

    assert!(Path::new(RUNC_SHIM).is_file(), "{RUNC_SHIM} is missing");
    let dir = tempfile::tempdir().unwrap();
    let events = EventServer::bind(&dir.path().join("events.sock"))
        .await
        .unwrap();
    let busybox = bundle::busybox_copy(dir.path()).unwrap();
    let b = dir.path().join("bundles/crash1");
    let spec = BundleSpec {
        args: vec!["/bin/sleep".into(), "1000".into()],
        cgroups_path: "/kata-sim-test/crash1".into(),
        ..Default::default()
    };
    bundle::write(&b, &spec, &Rootfs::Busybox(busybox)).unwrap();
    let log = LogPipe::open(&b.join("log")).unwrap();
    let launcher = Launcher {
        binary: RUNC_SHIM.into(),
        namespace: "kata-sim-test".into(),
        address: dir.path().join("containerd.sock"),
        ttrpc_address: events.path().to_path_buf(),
        env: Vec::new(),
        debug: false,
        start_limit: Duration::from_secs(10),
        capture: None,
    };
    let address = launcher.start("crash1", &b).await.unwrap();
    assert!(
        address.starts_with("unix:///run/containerd/s/"),
        "{address}"
    );
    let client = TaskClient::connect(&address).await.unwrap();
    let limit = Duration::from_secs(30);
    client
        .create(
            api::CreateTaskRequest {
                id: "crash1".into(),
                bundle: b.display().to_string(),
                ..Default::default()
            },
            limit,
        )
        .await
        .unwrap();
    let started = client
        .start(
            api::StartRequest {
                id: "crash1".into(),
                ..Default::default()
            },
            limit,
        )
        .await
        .unwrap();
    let pids = client
        .connect_task(
            api::ConnectRequest {
                id: "crash1".into(),
                ..Default::default()
            },
            limit,
        )
        .await
        .unwrap();
    assert_eq!(pids.task_pid, started.pid);
    // The shim published its task's creation and start to the events service.
    let mut seen = events.log().subscribe();
    seen.wait_for(|n| *n >= 2).await.unwrap();
    let topics: Vec<String> = events
        .log()
        .events()
        .iter()
        .map(|e| e.topic.clone())
        .collect();
    assert_eq!(topics[..2], ["/tasks/create", "/tasks/start"], "{topics:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pids.shim_pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let r = client
        .state(
            api::StateRequest {
                id: "crash1".into(),
                ..Default::default()
            },
            limit,
        )
        .await;
    assert!(matches!(r, Err(TaskError::Transport(_))), "{r:?}");
    // containerd's clean-up after a dead shim: `delete` kills and removes the task.
    let deleted = launcher.delete("crash1", &b).await.unwrap();
    assert_eq!(deleted.exit_status, 137);
    assert_eq!(deleted.pid, started.pid);
    drop(log.finish());
    events.shutdown().await;
}

#[test]
fn diff_of_two_real_runs_compares_every_field_and_finds_them_equal() {
    // Two runs of the same shim differ in their run directories, pids and times only; diff
    // redacts those on both sides, so every field (processes, host files, task states,
    // warnings, teardown) must agree.
    assert!(Path::new(RUNC_SHIM).is_file(), "{RUNC_SHIM} is missing");
    let file = dir().join("runc-single.yaml");
    let driver = format!("shim:{RUNC_SHIM}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args([
            "diff",
            "--driver",
            &driver,
            "--driver",
            &driver,
            "--timeout",
            "30",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("(the rest of the outcome)"), "{stdout}");
    assert!(
        !stdout
            .lines()
            .any(|l| l.starts_with('+') && !l.starts_with("+++")),
        "{stdout}"
    );
}

#[test]
fn trace_with_a_shim_driver_traces_the_shim_run_not_the_built_in_host() {
    // runc calls no agent and no VM: its trace is empty. The built-in host's would begin
    // with CreateVM.
    assert!(Path::new(RUNC_SHIM).is_file(), "{RUNC_SHIM} is missing");
    let driver = format!("shim:{RUNC_SHIM}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args(["trace", "--driver", &driver])
        .arg(dir().join("runc-single.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("CreateVM"), "{stdout}");
    assert!(!stdout.contains("StartContainer"), "{stdout}");
}
