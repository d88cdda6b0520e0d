//! The `sim-agent` binary: serves, answers DestroySandbox, then exits cleanly and removes
//! its socket files.

use std::process::Stdio;

use sim_agent::{Agent, RemoteAgent};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::bounded;

#[tokio::test]
async fn serve_answers_destroy_sandbox_then_exits_and_cleans_up() {
    for scheme in ["unix", "hvsock", "remote"] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let url = format!("{scheme}://{}", sock.display());
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sim-agent"))
            .args(["serve", "--listen", &url])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Wait for the "listening" log line rather than polling the socket.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        bounded(async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("listening") {
                    return;
                }
            }
            panic!("sim-agent exited before listening");
        })
        .await;
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&sock).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let a = RemoteAgent::connect_with(&url, true).await.unwrap();
        a.check().await.unwrap();
        // The reply must not be lost to the shutdown that follows it.
        a.stop_sandbox()
            .await
            .unwrap_or_else(|e| panic!("{scheme}: DestroySandbox reply lost: {e}"));
        let status = bounded(child.wait()).await.unwrap();
        assert!(status.success(), "{scheme}: {status}");
        assert!(!sock.exists(), "{scheme}: the socket file is removed");
        drain.await.unwrap();
    }
}

/// Starts `sim-agent serve` with `args`; returns the child, once it logged `ready_line`, with
/// the log lines read so far and a reader for the rest.
async fn spawn_agent(
    args: &[String],
) -> (
    tokio::process::Child,
    Vec<String>,
    tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sim-agent"))
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    bounded(async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // The agent's listeners come last (after the control socket).
            let done = line.contains("listening") && line.contains("addr=");
            seen.push(line);
            if done {
                return;
            }
        }
    })
    .await;
    (child, seen, lines)
}

fn guest_root(log: &[String]) -> std::path::PathBuf {
    let line = log.iter().find(|l| l.contains("guest ready")).unwrap();
    let root = line
        .split("root=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    std::path::PathBuf::from(root)
}

/// SIGTERM (what systemd and CI send) and SIGINT both shut down cleanly: the process exits 0,
/// its sockets, control socket and temporary guest root are gone.
#[tokio::test]
async fn sigterm_and_sigint_remove_sockets_and_the_guest_root() {
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let control = dir.path().join("control.sock");
        let args = vec![
            "--listen".to_string(),
            format!("unix://{}", sock.display()),
            "--control".into(),
            control.display().to_string(),
        ];
        let (mut child, log, mut lines) = spawn_agent(&args).await;
        let root = guest_root(&log);
        assert!(root.is_dir());
        // Serving: the socket accepts.
        let a = RemoteAgent::connect(&format!("unix://{}", sock.display()))
            .await
            .unwrap();
        a.check().await.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
            signal,
        )
        .unwrap();
        let status = bounded(child.wait()).await.unwrap();
        while let Ok(Some(_)) = lines.next_line().await {}
        assert!(status.success(), "{signal}: {status}");
        assert!(!sock.exists(), "{signal}: the socket is removed");
        assert!(!control.exists(), "{signal}: the control socket is removed");
        assert!(!root.exists(), "{signal}: the guest root is removed");
    }
}

/// A regular file or a FIFO at a `--listen` path is never replaced: the start fails naming
/// the path, the file is intact, and the listener bound before it is gone with its file.
#[tokio::test]
async fn a_file_at_a_listen_path_is_an_error_and_nothing_stays_bound() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.sock");
    let file = dir.path().join("data");
    std::fs::write(&file, b"precious").unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for (victim, kind) in [(&file, "a regular file"), (&fifo, "a FIFO")] {
        let out = bounded(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_sim-agent"))
                .args(["serve", "--listen"])
                .arg(format!("unix://{}", first.display()))
                .arg("--listen")
                .arg(format!("unix://{}", victim.display()))
                .env("NO_COLOR", "1")
                .output(),
        )
        .await
        .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&victim.display().to_string()) && err.contains(kind),
            "{err}"
        );
        assert!(
            !first.exists(),
            "the first socket is not left behind: {err}"
        );
        assert!(guest_root_gone(&err), "{err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &std::fs::symlink_metadata(&fifo).unwrap().file_type()
    ));
    // A socket in a directory that does not exist: an error naming it, nothing created.
    let missing = dir.path().join("nope/agent.sock");
    let out = bounded(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sim-agent"))
            .args(["serve", "--listen"])
            .arg(format!("unix://{}", missing.display()))
            .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not exist") && err.contains("nope"),
        "{err}"
    );
    assert!(!dir.path().join("nope").exists());
}

fn guest_root_gone(log: &str) -> bool {
    let lines: Vec<String> = log.lines().map(str::to_string).collect();
    !guest_root(&lines).exists()
}

#[tokio::test]
async fn version_prints_the_release() {
    let out = bounded(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sim-agent"))
            .arg("--version")
            .output(),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sim-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

/// A bad `--listen` is refused by the argument parser (exit 2) before anything is created,
/// with the accepted schemes and the nearest one.
#[tokio::test]
async fn a_bad_listen_url_names_the_accepted_schemes() {
    for (url, needle) in [
        ("unx:///tmp/a.sock", "did you mean \"unix\"?"),
        ("/tmp/a.sock", "expected SCHEME://ADDRESS"),
        ("vsock://x:1", "bad CID"),
    ] {
        let out = bounded(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_sim-agent"))
                .args(["serve", "--listen", url])
                .env("NO_COLOR", "1")
                .output(),
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--listen"), "{url}: {err}");
        assert!(err.contains(needle), "{url}: {err}");
        if url.starts_with("unx") || url.starts_with('/') {
            assert!(err.contains("vsock://CID:PORT"), "{url}: {err}");
        }
        assert!(!err.contains("guest ready"), "nothing started: {err}");
    }
}

/// A guest root or control socket under a directory that does not exist: one message naming
/// that directory (no backtrace, even with RUST_BACKTRACE), and nothing created.
#[tokio::test]
async fn a_missing_directory_is_named_and_never_created() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("unix://{}", dir.path().join("agent.sock").display());
    let missing = dir.path().join("nope");
    for (option, path) in [
        ("--guest-root", missing.join("deeper/root")),
        ("--control", missing.join("control.sock")),
    ] {
        let out = bounded(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_sim-agent"))
                .args(["serve", "--listen", &listen, option])
                .arg(&path)
                .env("RUST_BACKTRACE", "1")
                .env("NO_COLOR", "1")
                .output(),
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(1), "{option}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let parent = path.parent().unwrap().display().to_string();
        assert!(
            err.contains(&format!("the directory {parent} does not exist")),
            "{option}: {err}"
        );
        assert!(!err.contains("backtrace"), "{option}: {err}");
        assert!(!missing.exists(), "{option} created {}", missing.display());
        assert!(!dir.path().join("agent.sock").exists(), "{option}: {err}");
    }
}
