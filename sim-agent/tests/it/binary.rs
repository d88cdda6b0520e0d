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
