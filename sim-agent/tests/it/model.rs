//! Version profiles, scripted processes, the trace, and MockAgent.

use mockall::predicate::eq;
use sim_agent::{
    Agent, AgentError, AgentVersion, MockAgent, ProcessScript, RemoteAgent, ScriptMatch,
    SignalReaction, SimAgent, SimConfig,
};
use ttrpc::Code;

use crate::support::{RawClient, TestServer, bounded, create_req, with_termination_log};

fn old(v: &str) -> SimConfig {
    SimConfig::for_version(v.parse::<AgentVersion>().unwrap())
}

#[tokio::test]
async fn pre_3_29_agents_answer_get_diagnostic_data_as_an_unknown_method() {
    // In-process.
    let sim = SimAgent::with_config(old("3.28.0")).unwrap();
    let err = sim
        .get_diagnostic_data("termination_log".into(), "c1".into())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AgentError::status(Code::UNIMPLEMENTED, "GetDiagnosticData method")
    );
    // On the wire, exactly as ttrpc answers a method it does not have.
    let srv = TestServer::start(SimAgent::with_config(old("3.28.0")).unwrap(), "unix").await;
    let mut raw = RawClient::connect(&srv.path).await;
    let r = raw.call(1, "grpc.AgentService", "GetDiagnosticData").await;
    assert_eq!(
        r.status(),
        (Code::UNIMPLEMENTED as i32, "GetDiagnosticData method")
    );
    let unknown = raw.call(3, "grpc.AgentService", "NoSuchMethod").await;
    assert_eq!(unknown.code, r.code);
    // The current agent has it.
    let cur = SimAgent::new().unwrap();
    let err = cur
        .get_diagnostic_data("termination_log".into(), "c1".into())
        .await
        .unwrap_err();
    assert_eq!(err.message(), Some("Invalid container id: c1"));
    srv.server.shutdown().await;
}

#[tokio::test]
async fn a_3_19_1_client_that_treats_errors_as_eof_completes_the_lifecycle() {
    let sim = SimAgent::with_config(old("3.19.1")).unwrap();
    let srv = TestServer::start(sim, "unix").await;
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    let details = a.get_guest_details(Default::default()).await.unwrap();
    assert_eq!(details.agent_details.version, "3.19.1");
    a.create_container(create_req("c1", &["/bin/echo", "hello"]))
        .await
        .unwrap();
    a.start_container("c1".into()).await.unwrap();
    // The 3.19.1 shim's copy loop: read until an error, which it takes as EOF.
    let mut out = Vec::new();
    loop {
        match bounded(a.read_process_stdout("c1".into(), "c1".into(), 32768)).await {
            Ok(chunk) => {
                assert!(!chunk.is_empty(), "an old agent never answers an empty OK");
                out.extend(chunk);
            }
            Err(e) => {
                assert_eq!(e, AgentError::status(Code::INTERNAL, "eof"));
                break;
            }
        }
    }
    assert_eq!(out, b"hello\n");
    assert_eq!(a.wait_process("c1".into(), "c1".into()).await.unwrap(), 0);
    srv.server.shutdown().await;
}

#[tokio::test]
async fn scripts_win_over_builtins_and_unknown_programs_are_noted() {
    let sim = SimAgent::new().unwrap();
    sim.script(
        ScriptMatch::container("s1"),
        ProcessScript::exits(7)
            .stdout("scripted\n")
            .stderr("warn\n"),
    );
    sim.script(
        ScriptMatch::program("stubborn"),
        ProcessScript::default().on_signal(SignalReaction::Exit(0)),
    );
    sim.create_container(create_req("s1", &["/bin/echo", "builtin"]))
        .await
        .unwrap();
    sim.start_container("s1".into()).await.unwrap();
    assert_eq!(
        sim.read_process_stdout("s1".into(), "".into(), 100)
            .await
            .unwrap(),
        b"scripted\n"
    );
    assert_eq!(
        sim.read_process_stderr("s1".into(), "".into(), 100)
            .await
            .unwrap(),
        b"warn\n"
    );
    assert_eq!(sim.wait_process("s1".into(), "".into()).await.unwrap(), 7);

    // A handler for SIGTERM: an exec (not pid 1) exits 0 on SIGTERM.
    sim.create_container(create_req("s2", &["/pause"]))
        .await
        .unwrap();
    sim.start_container("s2".into()).await.unwrap();
    let exec = sim_agent::protocols::agent::ExecProcessRequest {
        container_id: "s2".into(),
        exec_id: "e".into(),
        process: create_req("s2", &["/usr/bin/stubborn"])
            .OCI
            .unwrap()
            .Process,
        ..Default::default()
    };
    sim.exec(exec).await.unwrap();
    sim.signal_process("s2".into(), "e".into(), 15, false)
        .await
        .unwrap();
    assert_eq!(sim.wait_process("s2".into(), "e".into()).await.unwrap(), 0);

    // The trace names the program the built-ins did not understand.
    let pause = sim
        .trace()
        .events()
        .into_iter()
        .find(|e| {
            e.method == sim_agent::Op::Agent(sim_agent::Method::StartContainer)
                && e.field("container_id") == Some("s2")
        })
        .unwrap();
    assert_eq!(
        pause.note.as_deref(),
        Some("program \"/pause\" is not one kata-sim interprets: runs until signalled")
    );
    // And an OOM kill ends the process with 137 and reaches GetOOMEvent.
    sim.oom_kill("s2").unwrap();
    assert_eq!(sim.wait_process("s2".into(), "".into()).await.unwrap(), 137);
    assert_eq!(sim.get_oom_event().await.unwrap(), "s2");
}

#[tokio::test(start_paused = true)]
async fn deadlines_answer_deadline_exceeded_on_the_paused_clock() {
    let sim = SimAgent::new().unwrap();
    sim.create_container(create_req("c1", &["/bin/sleep", "120"]))
        .await
        .unwrap();
    sim.start_container("c1".into()).await.unwrap();
    let opts = sim_agent::CallOpts::with_timeout(std::time::Duration::from_secs(60));
    let req = sim_agent::protocols::agent::WaitProcessRequest {
        container_id: "c1".into(),
        ..Default::default()
    };
    let err = sim_agent::AgentRpc::wait_process(&sim, req.clone(), opts)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AgentError::Timeout {
            method: "WaitProcess".into()
        }
    );
    // sleep 120 finishes on the paused clock without a real wait.
    let status = sim_agent::AgentRpc::wait_process(&sim, req, Default::default())
        .await
        .unwrap();
    assert_eq!(status.status, 0);
}

#[tokio::test]
async fn mark_dead_fails_every_later_call_at_once() {
    let sim = SimAgent::new().unwrap();
    sim.check().await.unwrap();
    sim.mark_dead();
    assert_eq!(sim.check().await.unwrap_err(), AgentError::DeadAgent);
    assert_eq!(
        sim.get_oom_event().await.unwrap_err(),
        AgentError::DeadAgent
    );
}

#[tokio::test(start_paused = true)]
async fn mark_dead_fails_the_calls_in_flight_at_once() {
    let sim = SimAgent::new().unwrap();
    Agent::create_container(
        &sim,
        sim_agent::requests::create_container("c1", &["sleep", "1000"]),
    )
    .await
    .unwrap();
    Agent::start_container(&sim, "c1".into()).await.unwrap();
    let wait = Agent::wait_process(&sim, "c1".into(), "c1".into());
    let oom = Agent::get_oom_event(&sim);
    tokio::pin!(wait, oom);
    tokio::select! {
        biased;
        r = &mut wait => panic!("the wait answered: {r:?}"),
        r = &mut oom => panic!("an OOM event: {r:?}"),
        () = std::future::ready(()) => {}
    }
    sim.mark_dead();
    // At once: no virtual time passes.
    let t0 = tokio::time::Instant::now();
    assert_eq!(wait.await, Err(AgentError::ConnectionClosed));
    assert_eq!(oom.await, Err(AgentError::ConnectionClosed));
    assert_eq!(t0.elapsed(), std::time::Duration::ZERO);
    assert_eq!(sim.check().await, Err(AgentError::DeadAgent));
}

#[tokio::test]
async fn mock_agent_checks_expectations() {
    let mut mock = MockAgent::new();
    mock.expect_get_diagnostic_data()
        .with(eq("termination_log".to_string()), eq("c1".to_string()))
        .times(1)
        .returning(|_, _| Ok("bye\n".into()));
    mock.expect_stop_container()
        .with(eq("c1".to_string()))
        .times(1)
        .returning(|_| Ok(()));
    // A host routine written against the trait.
    async fn stop(a: &dyn Agent, cid: &str) -> String {
        let msg = a
            .get_diagnostic_data("termination_log".into(), cid.into())
            .await
            .unwrap();
        a.stop_container(cid.into()).await.unwrap();
        msg
    }
    assert_eq!(stop(&mock, "c1").await, "bye\n");
}

/// A one-liner run through CreateContainer/StartContainer: its stdout and stderr reach the
/// streams, its termination message reaches the guest file behind the bind mount (what
/// GetDiagnosticData reads), and a SIGKILL keeps what it wrote before.
#[tokio::test]
async fn shell_one_liners_write_through_the_containers_mounts() {
    let sim = SimAgent::new().unwrap();
    let term = "/run/kata-containers/shared/containers/k1-0123456789abcdef-termination-log";
    // The host copies the (empty) termination-log file in, as runtime-rs does.
    let host = tempfile::NamedTempFile::new().unwrap();
    sim.copy_file(host.path().to_path_buf(), term.into())
        .await
        .unwrap();
    let req = with_termination_log(
        create_req(
            "k1",
            &[
                "/bin/sh",
                "-c",
                "printf 'killed %s\\n' k1 > /dev/termination-log; echo kept > /tmp/f; \
                 echo out; echo err >&2; exec sleep 1000",
            ],
        ),
        term,
    );
    sim.create_container(req).await.unwrap();
    sim.start_container("k1".into()).await.unwrap();
    let out = sim
        .read_process_stdout("k1".into(), "k1".into(), 100)
        .await
        .unwrap();
    assert_eq!(out, b"out\n");
    let err = sim
        .read_process_stderr("k1".into(), "k1".into(), 100)
        .await
        .unwrap();
    assert_eq!(err, b"err\n");
    sim.signal_process("k1".into(), "".into(), 9, true)
        .await
        .unwrap();
    assert_eq!(
        sim.wait_process("k1".into(), "k1".into()).await.unwrap(),
        137
    );
    let msg = sim
        .get_diagnostic_data("termination_log".into(), "k1".into())
        .await
        .unwrap();
    assert_eq!(msg, "killed k1\n");
    // Paths outside the mounts land in the container's rootfs in the guest root.
    let rootfs_file = sim
        .guest_root()
        .join("run/kata-containers/shared/containers/k1/rootfs/tmp/f");
    assert_eq!(std::fs::read(rootfs_file).unwrap(), b"kept\n");
}

/// Outside the subset, the process runs until signalled and the trace says which word.
#[tokio::test]
async fn one_liners_outside_the_subset_are_noted_and_run_until_killed() {
    let sim = SimAgent::new().unwrap();
    sim.create_container(create_req(
        "u1",
        &["sh", "-c", "for i in 1 2; do echo x; done"],
    ))
    .await
    .unwrap();
    sim.start_container("u1".into()).await.unwrap();
    let note = sim
        .trace()
        .events()
        .into_iter()
        .find(|e| e.method == sim_agent::Op::Agent(sim_agent::Method::StartContainer))
        .and_then(|e| e.note)
        .unwrap();
    assert!(note.contains("\"for\" (compound commands)"), "{note}");
    sim.signal_process("u1".into(), "".into(), 9, true)
        .await
        .unwrap();
    assert_eq!(
        sim.wait_process("u1".into(), "u1".into()).await.unwrap(),
        137
    );
}

/// A dead guest fails every call in flight at once (a blocked WaitProcess does not see the
/// killed process's status), and every later call; a paused guest holds calls until resumed.
#[tokio::test]
async fn a_killed_guest_fails_pending_calls_and_a_paused_one_holds_them() {
    let sim = SimAgent::new().unwrap();
    sim.create_container(create_req("p1", &["sleep", "1000"]))
        .await
        .unwrap();
    sim.start_container("p1".into()).await.unwrap();
    sim.set_paused(true);
    let held = tokio::spawn({
        let sim = sim.clone();
        async move { sim.stats_container("p1".into()).await }
    });
    bounded(async {
        while !sim.trace().has(sim_agent::Method::StatsContainer) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(!held.is_finished(), "a paused guest answers nothing");
    sim.set_paused(false);
    assert!(bounded(held).await.unwrap().is_ok());

    let waiting = tokio::spawn({
        let sim = sim.clone();
        async move { sim.wait_process("p1".into(), "p1".into()).await }
    });
    bounded(async {
        while !sim.trace().has(sim_agent::Method::WaitProcess) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    sim.kill();
    assert_eq!(
        bounded(waiting).await.unwrap(),
        Err(AgentError::ConnectionClosed)
    );
    assert_eq!(sim.check().await, Err(AgentError::ConnectionClosed));
    assert!(sim.is_dead());
}

#[tokio::test]
async fn exit_status_shows_an_exited_process_without_reaping_it() {
    let sim = SimAgent::new().unwrap();
    Agent::create_container(&sim, create_req("c1", &["sh", "-c", "exit 3"]))
        .await
        .unwrap();
    assert_eq!(sim.exit_status("c1", "c1"), None, "created, not started");
    Agent::start_container(&sim, "c1".into()).await.unwrap();
    bounded(async {
        while sim.exit_status("c1", "c1").is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        sim.exit_status("c1", ""),
        Some(3),
        "the init process, by \"\""
    );
    assert_eq!(
        Agent::wait_process(&sim, "c1".into(), "c1".into())
            .await
            .unwrap(),
        3,
        "looking did not reap it"
    );
    assert_eq!(sim.exit_status("nope", "c1"), None);
}

#[tokio::test]
async fn a_containers_made_up_image_root_goes_with_it_and_a_real_one_stays() {
    let sim = SimAgent::new().unwrap();
    let made = "/run/kata-containers/shared/containers/c1/rootfs";
    let given = "/run/kata-containers/shared/containers/c2/rootfs";
    // The host put c2's rootfs there (as a copy or a mount would); c1 has none.
    sim.write_guest_file(&format!("{given}/etc/hostname"), b"c2\n")
        .unwrap();
    for cid in ["c1", "c2"] {
        Agent::create_container(&sim, create_req(cid, &["true"]))
            .await
            .unwrap();
    }
    assert!(
        sim.guest_root()
            .join(made.trim_start_matches('/'))
            .join("tmp")
            .is_dir()
    );
    assert!(
        !sim.guest_root()
            .join(given.trim_start_matches('/'))
            .join("tmp")
            .exists()
    );
    for cid in ["c1", "c2"] {
        Agent::stop_container(&sim, cid.into()).await.unwrap();
    }
    assert!(
        !sim.guest_root().join(made.trim_start_matches('/')).exists(),
        "the image the model made for c1 is unmounted with it"
    );
    assert_eq!(
        sim.read_guest_file(&format!("{given}/etc/hostname"))
            .unwrap(),
        b"c2\n",
        "what the host put there stays"
    );
}

/// GetDiagnosticData finds the termination-message mount as the agent does: the annotation and
/// the mount destination compared as paths (`/dev//termination-log` is `/dev/termination-log`;
/// `..` is not resolved), and the container's own writes go through that mount.
#[tokio::test]
async fn the_termination_message_mount_is_matched_as_a_path() {
    async fn message(destination: &str) -> Result<String, AgentError> {
        let sim = SimAgent::new().unwrap();
        let term = "/run/kata-containers/shared/containers/p1-0123456789abcdef-termination-log";
        let host = tempfile::NamedTempFile::new().unwrap();
        sim.copy_file(host.path().to_path_buf(), term.into())
            .await
            .unwrap();
        let mut req = with_termination_log(
            create_req("p1", &["/bin/sh", "-c", "echo bye > /dev/termination-log"]),
            term,
        );
        let spec = req.OCI.mut_or_insert_default();
        let m = spec.Mounts.iter_mut().find(|m| m.source == term).unwrap();
        m.destination = destination.into();
        sim.create_container(req).await.unwrap();
        sim.start_container("p1".into()).await.unwrap();
        bounded(sim.wait_process("p1".into(), "p1".into()))
            .await
            .unwrap();
        sim.get_diagnostic_data("termination_log".into(), "p1".into())
            .await
    }
    for same in [
        "/dev/termination-log",
        "/dev//termination-log",
        "/dev/./termination-log/",
    ] {
        assert_eq!(message(same).await.unwrap(), "bye\n", "{same}");
    }
    let err = message("/dev/../dev/termination-log").await.unwrap_err();
    assert_eq!(
        err.message(),
        Some("termination message mount not found for /dev/termination-log")
    );
}
