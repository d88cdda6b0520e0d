//! `kata-sim serve` as a process: it serves the remote hypervisor and the guests it creates,
//! refuses a state directory it cannot write, and removes its sockets on Ctrl-C.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sim_agent::{Agent, RemoteAgent};
use sim_hypervisor::{Hypervisor, HypervisorConfig, Network, RemoteHypervisor};

/// Follows the child's log: returns once it says it listens, and a handle that yields the
/// whole log after it exits. Readiness comes from the log line, not from a sleep.
fn follow_log(child: &mut std::process::Child) -> std::thread::JoinHandle<String> {
    use std::io::BufRead as _;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if line.contains("remote hypervisor listening") {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("kata-sim did not start listening");
    reader
}

/// Sends `signal` to the child and waits for it to exit; returns its status and whole log.
async fn stop(
    mut child: std::process::Child,
    log: std::thread::JoinHandle<String>,
    signal: nix::sys::signal::Signal,
) -> (std::process::ExitStatus, String) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    tokio::task::spawn_blocking(move || (child.wait().unwrap(), log.join().unwrap()))
        .await
        .unwrap()
}

#[tokio::test]
async fn serve_runs_pods_and_cleans_up_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hypervisor.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args(["serve", "--hypervisor-socket"])
        .arg(&socket)
        .args(["--agent-version", "3.19.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = follow_log(&mut child);

    let hv = RemoteHypervisor::connect(&socket).await.unwrap();
    hv.create_vm(
        "pod1".into(),
        Network::default(),
        HypervisorConfig::default(),
    )
    .await
    .unwrap();
    hv.start_vm(30).await.unwrap();
    let url = hv.get_agent_socket().await.unwrap();
    let agent_path = url.strip_prefix("remote://").unwrap().to_string();
    assert!(agent_path.starts_with(&dir.path().join("vms").display().to_string()));
    let agent = RemoteAgent::connect(&url).await.unwrap();
    let details = agent.get_guest_details(Default::default()).await.unwrap();
    assert_eq!(details.agent_details.version, "3.19.1");
    // A second VM stays up until Ctrl-C.
    let hv2 = RemoteHypervisor::connect(&socket).await.unwrap();
    hv2.create_vm(
        "pod2".into(),
        Network::default(),
        HypervisorConfig::default(),
    )
    .await
    .unwrap();
    hv2.start_vm(30).await.unwrap();
    hv.stop_vm(false).await.unwrap();
    assert!(!Path::new(&agent_path).exists());

    let (status, log) = stop(child, log, nix::sys::signal::Signal::SIGINT).await;
    assert!(status.success(), "{log}");
    assert!(
        log.contains("VM created") && log.contains("VM stopped"),
        "{log}"
    );
    assert!(!socket.exists(), "hypervisor socket removed");
    assert!(
        !dir.path().join("vms/pod2").exists(),
        "every VM's directory removed"
    );
}

#[test]
fn an_unwritable_state_dir_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args(["serve", "--hypervisor-socket"])
        .arg(dir.path().join("hv.sock"))
        .arg("--state-dir")
        .arg(file.join("vms"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state dir") && err.contains("cannot create"),
        "{err}"
    );
    assert!(!dir.path().join("hv.sock").exists());
}

/// `--fault` and `--seed` at start, and `kata-sim fault ... --control` while it runs.
#[tokio::test]
async fn faults_are_installed_at_start_and_flipped_through_the_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hypervisor.sock");
    let control = dir.path().join("control.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args(["serve", "--hypervisor-socket"])
        .arg(&socket)
        .arg("--control")
        .arg(&control)
        .args([
            "--seed",
            "5",
            "--fault",
            "StartVM{sandbox=nope}=error(ABORTED,\"no\")",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = follow_log(&mut child);
    let fault = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
            .arg("fault")
            .args(args)
            .arg("--control")
            .arg(&control)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let hv = RemoteHypervisor::connect(&socket).await.unwrap();
    hv.create_vm(
        "nope".into(),
        Network::default(),
        HypervisorConfig::default(),
    )
    .await
    .unwrap();
    let e = hv.start_vm(30).await.unwrap_err();
    assert_eq!(e.to_string(), "no");

    let (ok, out, _) = fault(&["add", "Check=error(INTERNAL)"]);
    assert!(ok);
    assert_eq!(out.trim(), "2");
    let (ok, out, _) = fault(&["list"]);
    assert!(ok);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            "rule 1 StartVM{sandbox=nope}=error(ABORTED,\"no\")",
            "rule 2 Check=error(INTERNAL)"
        ]
    );
    let hv2 = RemoteHypervisor::connect(&socket).await.unwrap();
    hv2.create_vm(
        "yes".into(),
        Network::default(),
        HypervisorConfig::default(),
    )
    .await
    .unwrap();
    hv2.start_vm(30).await.unwrap();
    let agent = RemoteAgent::connect(&hv2.get_agent_socket().await.unwrap())
        .await
        .unwrap();
    assert!(agent.check().await.is_err());
    let (ok, _, err) = fault(&["add", "Check=explode"]);
    assert!(!ok);
    assert!(
        err.contains("column 7") && err.contains("unknown action"),
        "{err}"
    );
    assert!(fault(&["clear"]).0);
    agent.check().await.unwrap();
    let (_, fired, _) = fault(&["fired"]);
    assert_eq!(fired.lines().count(), 2, "{fired}");

    let (status, log) = stop(child, log, nix::sys::signal::Signal::SIGTERM).await;
    assert!(status.success(), "{log}");
    assert!(log.contains("seed=5"), "{log}");
    assert!(!control.exists() && !socket.exists());
}
