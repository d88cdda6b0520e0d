//! `kata-sim run --driver exec` stopped by SIGTERM: the command is stopped, the service's
//! socket and the run's directory are removed, and the exit status says which signal.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn sigterm_stops_an_exec_run_and_removes_its_socket() {
    let scenario = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exec/demo-ok.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args(["run", "--driver", "exec"])
        .arg(&scenario)
        .args([
            "--",
            "sh",
            "-c",
            "echo \"$KATA_SIM_HYPERVISOR_SOCKET\"; exec sleep 1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        lines.map_while(Result::ok).collect::<Vec<_>>()
    });
    let socket = std::path::PathBuf::from(
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the command did not start"),
    );
    // The service accepts before the signal.
    tokio::net::UnixStream::connect(&socket).await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .expect("kata-sim did not stop")
    .unwrap();
    reader.join().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{status}");
    assert!(!socket.exists(), "the hypervisor socket is removed");
    assert!(
        !socket.parent().unwrap().exists(),
        "the run's directory is removed"
    );
}
