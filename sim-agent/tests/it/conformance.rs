//! One test body, two arms: the in-process [`SimAgent`] and `sim-agent`'s server reached
//! through [`RemoteAgent`]. Each arm records every outcome; the records must be equal, and
//! the body asserts the real agent's answers as it goes.

use sim_agent::protocols::agent;
use sim_agent::{Agent, AgentError, AgentRpc, CallOpts, RemoteAgent, SimAgent};
use ttrpc::Code;

use crate::support::{TestServer, bounded, create_req, with_termination_log};

const SHARED: &str = "/run/kata-containers/shared/containers";

fn outcome<T: std::fmt::Debug>(r: &Result<T, AgentError>) -> String {
    match r {
        Ok(v) => format!("OK {v:?}"),
        Err(AgentError::Status { code, message }) => format!("{code:?} {message}"),
        Err(e) => format!("ERR {e}"),
    }
}

fn assert_status<T: std::fmt::Debug>(r: &Result<T, AgentError>, code: Code, message: &str) {
    match r {
        Err(AgentError::Status {
            code: c,
            message: m,
        }) => {
            assert_eq!((*c, m.as_str()), (code, message), "unexpected status");
        }
        other => panic!("expected {code:?} {message:?}, got {other:?}"),
    }
}

/// The lifecycle and error-code suite. `agent` must be a fresh guest.
async fn suite<A: AgentRpc + ?Sized>(a: &A) -> Vec<String> {
    let mut rec = Vec::new();
    macro_rules! step {
        ($e:expr) => {{
            let r = bounded($e).await;
            rec.push(outcome(&r));
            r
        }};
    }

    Agent::check(a).await.unwrap();
    let v = step!(AgentRpc::version(
        a,
        Default::default(),
        CallOpts::default()
    ))
    .unwrap();
    assert_eq!(
        (v.agent_version.as_str(), v.grpc_version.as_str()),
        ("4.1.0", "0.0.1")
    );
    let sandbox = sim_agent::requests::create_sandbox("c1");
    step!(Agent::start_sandbox(a, sandbox)).unwrap();
    let details = step!(Agent::get_guest_details(
        a,
        agent::GuestDetailsRequest {
            mem_block_size: true,
            mem_hotplug_probe: true,
            ..Default::default()
        }
    ))
    .unwrap();
    assert_eq!(details.mem_block_size_bytes, 128 << 20);
    assert!(!details.support_mem_hotplug_probe);
    assert_eq!(details.agent_details.storage_handlers.len(), 11);

    // Unknown ids, each with the real agent's code and message.
    assert_status(
        &step!(Agent::start_container(a, "nope".into())),
        Code::INTERNAL,
        "Invalid container id",
    );
    assert_status(
        &step!(Agent::stop_container(a, "nope".into())),
        Code::INTERNAL,
        "Invalid container id",
    );
    assert_status(
        &step!(Agent::wait_process(a, "nope".into(), "".into())),
        Code::INVALID_ARGUMENT,
        "InvalidContainerId",
    );
    assert_status(
        &step!(Agent::pause_container(a, "nope".into())),
        Code::INVALID_ARGUMENT,
        "\"invalid container id\"",
    );
    assert_status(
        &step!(Agent::stats_container(a, "nope".into())),
        Code::INVALID_ARGUMENT,
        "\"invalid container id\"",
    );
    assert_status(
        &step!(Agent::write_process_stdin(
            a,
            "nope".into(),
            "".into(),
            b"x".to_vec()
        )),
        Code::INTERNAL,
        "Invalid container id",
    );
    let bad = create_req("-bad", &["/bin/true"]);
    assert_status(
        &step!(Agent::create_container(a, bad)),
        Code::INTERNAL,
        "invalid container ID -bad",
    );
    let mut nocaps = create_req("nocaps", &["/bin/true"]);
    nocaps
        .OCI
        .as_mut()
        .unwrap()
        .Process
        .as_mut()
        .unwrap()
        .Capabilities
        .clear();
    assert_status(
        &step!(Agent::create_container(a, nocaps)),
        Code::INTERNAL,
        "missing process capabilities",
    );
    let mut nospec = create_req("nospec", &["/bin/true"]);
    nospec.OCI.clear();
    assert_status(
        &step!(Agent::create_container(a, nospec)),
        Code::INTERNAL,
        "EINVAL: Invalid argument",
    );
    let missing_bind = with_termination_log(
        create_req("nobind", &["/bin/true"]),
        &format!("{SHARED}/absent"),
    );
    assert_status(
        &step!(Agent::create_container(a, missing_bind)),
        Code::INTERNAL,
        "No such file or directory (os error 2)",
    );

    // echo: output, exit status, reaping.
    step!(Agent::create_container(
        a,
        create_req("c1", &["/bin/echo", "hello"])
    ))
    .unwrap();
    step!(Agent::start_container(a, "c1".into())).unwrap();
    let out = step!(Agent::read_process_stdout(
        a,
        "c1".into(),
        "c1".into(),
        32768
    ))
    .unwrap();
    assert_eq!(out, b"hello\n");
    let eof = step!(Agent::read_process_stdout(
        a,
        "c1".into(),
        "c1".into(),
        32768
    ))
    .unwrap();
    assert!(eof.is_empty(), "empty data means end of stream");
    assert_eq!(
        step!(Agent::wait_process(a, "c1".into(), "c1".into())).unwrap(),
        0
    );
    step!(Agent::signal_process(a, "c1".into(), "".into(), 9, true)).unwrap();
    assert_status(
        &step!(Agent::wait_process(a, "c1".into(), "c1".into())),
        Code::NOT_FOUND,
        "InvalidExecId",
    );
    assert_status(
        &step!(Agent::wait_process(a, "c1".into(), "".into())),
        Code::NOT_FOUND,
        "InitProcessNotFound",
    );
    assert_status(
        &step!(Agent::signal_process(a, "c1".into(), "".into(), 15, false)),
        Code::NOT_FOUND,
        "InitProcessNotFound",
    );
    assert_status(
        &step!(Agent::start_container(a, "c1".into())),
        Code::INTERNAL,
        "container c1 was already started (the real agent would block here)",
    );

    // Duplicate id: the real agent's rollback destroys the original too.
    step!(Agent::create_container(
        a,
        create_req("dup", &["/bin/sleep", "1000"])
    ))
    .unwrap();
    assert_status(
        &step!(Agent::create_container(
            a,
            create_req("dup", &["/bin/true"])
        )),
        Code::INTERNAL,
        "exec fifo exists",
    );
    assert_status(
        &step!(Agent::start_container(a, "dup".into())),
        Code::INTERNAL,
        "Invalid container id",
    );

    // sh -c "exit 3", and a sleeping container killed by SIGKILL (137).
    step!(Agent::create_container(
        a,
        create_req("c2", &["/bin/sh", "-c", "exit 3"])
    ))
    .unwrap();
    step!(Agent::start_container(a, "c2".into())).unwrap();
    assert_eq!(
        step!(Agent::wait_process(a, "c2".into(), "".into())).unwrap(),
        3
    );
    step!(Agent::create_container(
        a,
        create_req("c3", &["/bin/sleep", "1000"])
    ))
    .unwrap();
    step!(Agent::start_container(a, "c3".into())).unwrap();
    // SIGINT to a container's pid 1 without a handler is ignored; SIGTERM becomes SIGKILL.
    step!(Agent::signal_process(a, "c3".into(), "c3".into(), 2, false)).unwrap();
    step!(Agent::signal_process(
        a,
        "c3".into(),
        "c3".into(),
        15,
        false
    ))
    .unwrap();
    assert_eq!(
        step!(Agent::wait_process(a, "c3".into(), "c3".into())).unwrap(),
        137
    );

    // Pause and resume with the real agent's state checks.
    step!(Agent::create_container(a, create_req("p1", &["/pause"]))).unwrap();
    step!(Agent::start_container(a, "p1".into())).unwrap();
    step!(Agent::pause_container(a, "p1".into())).unwrap();
    assert_status(
        &step!(Agent::pause_container(a, "p1".into())),
        Code::INTERNAL,
        "failed to pause container: current status is: Paused",
    );
    step!(Agent::resume_container(a, "p1".into())).unwrap();
    assert_status(
        &step!(Agent::resume_container(a, "p1".into())),
        Code::INTERNAL,
        "container status is: Running, not paused",
    );

    // Exec with stdin echo (cat), a duplicate exec id, and TtyWinResize without a tty.
    let exec = agent::ExecProcessRequest {
        container_id: "p1".into(),
        exec_id: "e1".into(),
        process: create_req("p1", &["cat"]).OCI.unwrap().Process,
        ..Default::default()
    };
    step!(Agent::exec(a, exec.clone())).unwrap();
    assert_status(
        &step!(Agent::exec(a, exec)),
        Code::INTERNAL,
        "exec_id 'e1' already exists",
    );
    assert_eq!(
        step!(Agent::write_process_stdin(
            a,
            "p1".into(),
            "e1".into(),
            b"ping".to_vec()
        ))
        .unwrap(),
        4
    );
    assert_eq!(
        step!(Agent::read_process_stdout(a, "p1".into(), "e1".into(), 2)).unwrap(),
        b"pi"
    );
    assert_eq!(
        step!(Agent::read_process_stdout(a, "p1".into(), "e1".into(), 100)).unwrap(),
        b"ng"
    );
    assert_status(
        &step!(Agent::winsize_process(a, "p1".into(), "e1".into(), 24, 80)),
        Code::UNAVAILABLE,
        "\"no tty\"",
    );
    assert_eq!(
        step!(Agent::write_process_stdin(
            a,
            "p1".into(),
            "e1".into(),
            Vec::new()
        ))
        .unwrap(),
        0
    );
    assert_eq!(
        step!(Agent::wait_process(a, "p1".into(), "e1".into())).unwrap(),
        0
    );
    step!(Agent::stop_container(a, "p1".into())).unwrap();

    // GetDiagnosticData: the termination-log family.
    let log = format!("{SHARED}/t1-0123456789abcdef-termination-log");
    step!(AgentRpc::copy_file(
        a,
        agent::CopyFileRequest {
            path: log.clone(),
            file_mode: 0o100644,
            ..Default::default()
        },
        CallOpts::default()
    ))
    .unwrap();
    step!(Agent::create_container(
        a,
        with_termination_log(create_req("t1", &["/pause"]), &log)
    ))
    .unwrap();
    let diag = |c: &str| Agent::get_diagnostic_data(a, "termination_log".into(), c.into());
    assert_eq!(step!(diag("t1")).unwrap(), "", "an empty file");
    step!(AgentRpc::copy_file(
        a,
        agent::CopyFileRequest {
            path: log.clone(),
            file_size: 4,
            file_mode: 0o100644,
            data: b"bye\n".to_vec(),
            ..Default::default()
        },
        CallOpts::default()
    ))
    .unwrap();
    assert_eq!(step!(diag("t1")).unwrap(), "bye\n");
    let big = vec![b'x'; 5000];
    step!(AgentRpc::copy_file(
        a,
        agent::CopyFileRequest {
            path: log.clone(),
            file_size: 5000,
            file_mode: 0o100644,
            data: big,
            ..Default::default()
        },
        CallOpts::default()
    ))
    .unwrap();
    assert_eq!(step!(diag("t1")).unwrap().len(), 4096, "cut at 4096 bytes");
    let mut utf8 = vec![b'x'; 4095];
    utf8.extend_from_slice("étail".as_bytes());
    step!(AgentRpc::copy_file(
        a,
        agent::CopyFileRequest {
            path: log.clone(),
            file_size: utf8.len() as i64,
            file_mode: 0o100644,
            data: utf8,
            ..Default::default()
        },
        CallOpts::default()
    ))
    .unwrap();
    let cut = step!(diag("t1")).unwrap();
    assert_eq!(
        cut.len(),
        4098,
        "a character cut at 4096 bytes becomes U+FFFD"
    );
    assert!(cut.ends_with('\u{FFFD}'));
    step!(AgentRpc::copy_file(
        a,
        agent::CopyFileRequest {
            path: log.clone(),
            file_size: 2,
            file_mode: 0o100644,
            data: vec![0xff, 0xfe],
            ..Default::default()
        },
        CallOpts::default()
    ))
    .unwrap();
    assert_eq!(
        step!(diag("t1")).unwrap(),
        "\u{FFFD}\u{FFFD}",
        "non-UTF-8 is decoded lossily"
    );
    assert_status(
        &step!(Agent::get_diagnostic_data(
            a,
            "kernel_log".into(),
            "t1".into()
        )),
        Code::INVALID_ARGUMENT,
        "\"unsupported diagnostic log_type: kernel_log\"",
    );
    assert_status(
        &step!(diag("ghost")),
        Code::INTERNAL,
        "Invalid container id: ghost",
    );
    step!(Agent::create_container(a, create_req("t2", &["/pause"]))).unwrap();
    assert_status(
        &step!(diag("t2")),
        Code::INTERNAL,
        "No terminationMessagePath annotation",
    );
    let mut nomount = create_req("t3", &["/pause"]);
    nomount.OCI.as_mut().unwrap().Annotations.insert(
        "io.kubernetes.container.terminationMessagePath".into(),
        "/dev/termination-log".into(),
    );
    step!(Agent::create_container(a, nomount)).unwrap();
    assert_status(
        &step!(diag("t3")),
        Code::INTERNAL,
        "termination message mount not found for /dev/termination-log",
    );
    // No file behind the mount in the guest: the agent answers OK with "".
    let mut gone = with_termination_log(
        create_req("t4", &["/pause"]),
        &format!("{SHARED}/t4-never-written"),
    );
    gone.OCI.as_mut().unwrap().Mounts.last_mut().unwrap().type_ = "tmpfs".into();
    gone.OCI
        .as_mut()
        .unwrap()
        .Mounts
        .last_mut()
        .unwrap()
        .options
        .clear();
    step!(Agent::create_container(a, gone)).unwrap();
    assert_eq!(step!(diag("t4")).unwrap(), "");

    // CopyFile confinement.
    let outside = step!(AgentRpc::copy_file(
        a,
        agent::CopyFileRequest {
            path: "/etc/passwd".into(),
            file_size: 1,
            data: b"x".to_vec(),
            file_mode: 0o100644,
            ..Default::default()
        },
        CallOpts::default()
    ));
    assert_status(
        &outside,
        Code::INTERNAL,
        "removing \"/run/kata-containers/shared/containers\" prefix from /etc/passwd\n\nCaused by:\n    prefix not found",
    );
    let escape = step!(AgentRpc::copy_file(
        a,
        agent::CopyFileRequest {
            path: format!("{SHARED}/../../../../etc/evil"),
            file_size: 1,
            data: b"x".to_vec(),
            file_mode: 0o100644,
            ..Default::default()
        },
        CallOpts::default()
    ));
    assert_eq!(escape.unwrap_err().code(), Some(Code::INTERNAL));

    // OOM events and DestroySandbox.
    step!(Agent::create_container(a, create_req("o1", &["/pause"]))).unwrap();
    step!(Agent::start_container(a, "o1".into())).unwrap();
    step!(Agent::stop_sandbox(a)).unwrap();
    rec
}

#[tokio::test]
async fn in_process_and_wire_agree() {
    let sim = SimAgent::new().unwrap();
    let in_process = suite(&sim).await;
    assert!(sim.is_terminated());

    let remote_sim = SimAgent::new().unwrap();
    let srv = TestServer::start(remote_sim.clone(), "unix").await;
    let remote = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    let wire = suite(&remote).await;
    assert_eq!(in_process, wire, "the two arms disagree");
    // Nothing escaped either guest root.
    for root in [sim.guest_root(), remote_sim.guest_root()] {
        assert!(!root.join("etc/evil").exists());
        assert!(!root.join("run/etc/evil").exists());
    }
    srv.server.shutdown().await;
}

#[tokio::test]
async fn escape_attempts_write_nothing_anywhere() {
    let sim = SimAgent::new().unwrap();
    let before = walk(&sim.guest_root());
    for path in [
        "/etc/passwd".to_string(),
        format!("{SHARED}/../../../../tmp/kata-sim-escape"),
        format!("{SHARED}/a/../../../x"),
        "relative/path".to_string(),
    ] {
        let r = AgentRpc::copy_file(
            &sim,
            agent::CopyFileRequest {
                path: path.clone(),
                file_size: 1,
                data: b"x".to_vec(),
                file_mode: 0o100644,
                ..Default::default()
            },
            CallOpts::default(),
        )
        .await;
        assert_eq!(r.unwrap_err().code(), Some(Code::INTERNAL), "{path}");
    }
    let after = walk(&sim.guest_root());
    // At most the shared directory itself (and its parents) may have been created.
    let allowed: std::collections::BTreeSet<String> = [
        "run",
        "run/kata-containers",
        "run/kata-containers/shared",
        "run/kata-containers/shared/containers",
    ]
    .map(String::from)
    .into();
    let new: std::collections::BTreeSet<String> = after.difference(&before).cloned().collect();
    assert!(
        new.is_subset(&allowed),
        "written by refused CopyFiles: {new:?}"
    );
    assert!(!std::path::Path::new("/tmp/kata-sim-escape").exists());
    // A symlink planted by CopyFile cannot be used to write outside either.
    AgentRpc::copy_file(
        &sim,
        agent::CopyFileRequest {
            path: format!("{SHARED}/link"),
            file_mode: 0o120777,
            data: b"/".to_vec(),
            ..Default::default()
        },
        CallOpts::default(),
    )
    .await
    .unwrap();
    let r = AgentRpc::copy_file(
        &sim,
        agent::CopyFileRequest {
            path: format!("{SHARED}/link/../../x"),
            file_size: 1,
            data: b"x".to_vec(),
            file_mode: 0o100644,
            ..Default::default()
        },
        CallOpts::default(),
    )
    .await;
    assert!(r.is_err());
}

fn walk(root: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out
}
