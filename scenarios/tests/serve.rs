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
            // Logged once every socket (hypervisor and control) is bound.
            if line.contains("kata-sim serving") {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("kata-sim did not start serving");
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

fn spawn_serve(socket: &Path, extra: &[&std::ffi::OsStr]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args(["serve", "--hypervisor-socket"])
        .arg(socket)
        .args(extra)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// After a SIGKILL the next `kata-sim serve` on the same state dir removes the VM directories
/// and guest roots the dead one left (and says so), and nothing that is not its own.
#[tokio::test]
async fn a_restart_after_sigkill_cleans_what_the_dead_instance_left() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hypervisor.sock");
    let vms = dir.path().join("vms");
    let mut child = spawn_serve(&socket, &[]);
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
    // Files that are not kata-sim's, in its state dir.
    std::fs::write(vms.join("notes.txt"), b"mine").unwrap();
    std::fs::create_dir(vms.join("other")).unwrap();
    std::fs::write(vms.join("other/agent.sock"), b"a file, not a socket").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::task::spawn_blocking(move || (child.wait().unwrap(), log.join().unwrap()))
        .await
        .unwrap();
    let leftovers = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = leftovers(&vms);
    assert!(before.contains(&"pod1".to_string()), "{before:?}");
    assert!(
        before.iter().any(|n| n.starts_with("kata-sim-guest-")),
        "the guest root is in the state dir: {before:?}"
    );

    let mut child = spawn_serve(&socket, &[]);
    let log = follow_log(&mut child);
    let after = leftovers(&vms);
    assert_eq!(
        after,
        vec![".kata-sim.lock", "notes.txt", "other"],
        "only the dead instance's own files went"
    );
    // A second server on the same state dir is refused while this one runs.
    let out = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args(["serve", "--hypervisor-socket"])
        .arg(dir.path().join("hv2.sock"))
        .arg("--state-dir")
        .arg(&vms)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another kata-sim serve"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, log) = stop(child, log, nix::sys::signal::Signal::SIGTERM).await;
    assert!(status.success(), "{log}");
    assert!(
        log.contains("cleaned up what a previous kata-sim serve left"),
        "{log}"
    );
    assert_eq!(leftovers(&vms), vec!["notes.txt", "other"]);
    assert_eq!(std::fs::read(vms.join("notes.txt")).unwrap(), b"mine");
    assert!(!socket.exists());
}

/// A regular file at `--control` is never replaced; a control socket that cannot be bound
/// (its directory is missing) fails the start and leaves no hypervisor socket or state dir.
#[test]
fn a_failed_control_socket_fails_the_start_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hv.sock");
    let file = dir.path().join("control");
    std::fs::write(&file, b"precious").unwrap();
    for (control, needle) in [
        (file.clone(), "a regular file"),
        (dir.path().join("nope/control.sock"), "does not exist"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
            .args(["serve", "--hypervisor-socket"])
            .arg(&socket)
            .arg("--control")
            .arg(&control)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&control.display().to_string()) && err.contains(needle),
            "{err}"
        );
        assert!(!socket.exists(), "{err}");
        assert!(!dir.path().join("vms").exists(), "{err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    assert!(!dir.path().join("nope").exists());
}

/// `kata-sim fault` pointed at the hypervisor socket (not a control socket) ends with a
/// message instead of hanging; the control socket is 0600.
#[tokio::test]
async fn fault_commands_on_a_wrong_socket_end_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hypervisor.sock");
    let control = dir.path().join("control.sock");
    let mut child = spawn_serve(&socket, &["--control".as_ref(), control.as_os_str()]);
    let log = follow_log(&mut child);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&control).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args(["fault", "list", "--timeout", "1", "--control"])
        .arg(&socket)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("kata-sim fault hung")
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("control socket"), "{err}");
    let (status, log) = stop(child, log, nix::sys::signal::Signal::SIGINT).await;
    assert!(status.success(), "{log}");
}

/// A hypervisor socket or state dir in a directory that does not exist: the start fails
/// naming that directory, creates nothing, and removes the state dir it made.
#[test]
fn a_missing_directory_is_named_and_never_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let socket = dir.path().join("hv.sock");
    let state = dir.path().join("state");
    for (args, named) in [
        // The default state dir (`vms/` beside the socket) is the first to miss its parent.
        (vec![missing.join("hv.sock")], missing.clone()),
        (
            vec![missing.join("hv.sock"), "--state-dir".into(), state.clone()],
            missing.clone(),
        ),
        (
            vec![
                socket.clone(),
                "--state-dir".into(),
                missing.join("x/state"),
            ],
            missing.join("x"),
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
            .args(["serve", "--hypervisor-socket"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("the directory {} does not exist", named.display())),
            "{args:?}: {err}"
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
        assert!(!socket.exists(), "{args:?}: {err}");
        assert!(
            !state.exists(),
            "{args:?}: the state dir it made stays: {err}"
        );
    }
}

/// The inline code spans of `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Every command of docs/faults.md runs as written, with its `/run/kata-sim` in a temp dir:
/// the `kata-sim serve` of its shell block, each `kata-sim fault` command, every example rule,
/// and the parse error it shows.
#[tokio::test]
async fn the_commands_of_docs_faults_md_run_as_written() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/faults.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let here = |s: &str| s.replace("/run/kata-sim", &run.display().to_string());
    let words = |s: &str| shlex::split(&here(s)).unwrap_or_else(|| panic!("bad quoting: {s}"));
    let kata_sim = |args: &[String]| {
        Command::new(env!("CARGO_BIN_EXE_kata-sim"))
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };

    let (_, block) = doc.split_once("```sh\n").expect("a shell block");
    let (block, _) = block.split_once("\n```").unwrap();
    let serve = words(&block.replace("\\\n", " "));
    assert_eq!(&serve[..2], ["kata-sim", "serve"], "{block}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args(&serve[1..])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = follow_log(&mut child);

    let commands: Vec<&str> = code_spans(&doc)
        .into_iter()
        // Not the synopsis (`add|remove|...`) nor one with a placeholder (`PATH`, `RULE`).
        .filter(|c| {
            let placeholder = |w: &str| w.len() > 1 && w.bytes().all(|b| b.is_ascii_uppercase());
            c.starts_with("kata-sim fault ")
                && !c.contains('|')
                && !c.split([' ', '[', ']']).any(placeholder)
        })
        .collect();
    assert!(!commands.is_empty(), "no kata-sim fault command in the doc");
    let control = run.join("control.sock").display().to_string();
    let (_, examples) = doc.split_once("\nExamples: ").expect("the examples");
    let (examples, _) = examples.split_once("\n\n").unwrap();
    let rules = code_spans(examples);
    assert!(rules.len() >= 5, "{examples}");
    for c in commands {
        let out = kata_sim(&words(c)[1..]);
        assert!(out.status.success(), "`{c}`: {out:?}");
    }
    for rule in rules {
        let args = ["fault", "add", "--control", &control, rule].map(String::from);
        let out = kata_sim(&args);
        assert!(out.status.success(), "`{rule}`: {out:?}");
    }
    // The parse error the doc shows, for the rule it shows under it.
    let (_, error) = doc
        .split_once("```text\ncolumn ")
        .expect("the parse error block");
    let mut lines = error.lines();
    let shown = format!("column {}", lines.next().unwrap());
    let rule = lines.next().unwrap().trim();
    let args = ["fault", "add", "--control", &control, rule].map(String::from);
    let out = kata_sim(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&shown), "{shown:?} in {err}");

    let (status, log) = stop(child, log, nix::sys::signal::Signal::SIGTERM).await;
    assert!(status.success(), "{log}");
    assert!(log.contains("agent_version=3.19.1"), "{log}");
}
