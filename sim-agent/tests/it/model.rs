//! Version profiles, scripted processes, the trace, and MockAgent.

use mockall::predicate::eq;
use sim_agent::{
    Agent, AgentError, AgentVersion, MockAgent, ProcessScript, RemoteAgent, ScriptMatch,
    SignalReaction, SimAgent, SimConfig,
};
use ttrpc::Code;

use crate::support::{RawClient, TestServer, bounded, create_req};

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
        .find(|e| e.method == "StartContainer" && e.field("container_id") == Some("s2"))
        .unwrap();
    assert_eq!(
        pause.note.as_deref(),
        Some("program \"pause\" is not understood: runs until signalled")
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
