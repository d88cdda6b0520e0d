//! Faults over a real socket, one test per action: the client sees exactly the status, timing
//! or closure specified. Plus determinism, rule guards, scoping and the parse-error corpus.

use std::sync::Arc;
use std::time::Duration;

use sim_agent::fault::{CallInfo, FaultEngine, FaultHook, Verdict, control};
use sim_agent::protocols::agent;
use sim_agent::{Agent, AgentError, CallOpts, RemoteAgent, SimAgent};
use tokio::io::AsyncReadExt;
use ttrpc::Code;

use crate::support::{RawClient, TestServer, bounded, create_req};

/// A server whose agent runs `rules` with `seed`.
async fn faulty(rules: &[&str], seed: u64) -> (TestServer, FaultEngine) {
    let agent = SimAgent::new().unwrap();
    let engine = FaultEngine::new(seed);
    for r in rules {
        engine.add(r).unwrap_or_else(|e| panic!("{r}: {e}"));
    }
    agent.set_fault_hook(Arc::new(engine.clone()));
    (TestServer::start(agent, "unix").await, engine)
}

fn status<T: std::fmt::Debug>(r: Result<T, AgentError>) -> (Code, String) {
    match r {
        Err(AgentError::Status { code, message }) => (code, message),
        other => panic!("expected a status, got {other:?}"),
    }
}

fn is_closed<T: std::fmt::Debug>(r: &Result<T, AgentError>) -> bool {
    matches!(
        r,
        Err(AgentError::Transport(_) | AgentError::ConnectionClosed)
    )
}

#[tokio::test]
async fn error_answers_that_status() {
    let (srv, engine) = faulty(&[r#"GetDiagnosticData=error(UNAVAILABLE,"guest busy")"#], 0).await;
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    let r = a
        .get_diagnostic_data("termination_log".into(), "c1".into())
        .await;
    assert_eq!(status(r), (Code::UNAVAILABLE, "guest busy".into()));
    // The trace and the engine both record it.
    let ev = &srv.server.agent().trace().events()[0];
    let fault = ev.fault.as_deref().expect("the trace records the fault");
    assert!(
        fault.starts_with("error(") && fault.contains("guest busy"),
        "{fault}"
    );
    assert_eq!(engine.fired().len(), 1);
    assert_eq!(engine.fired()[0].target, "GetDiagnosticData");
}

#[tokio::test(start_paused = true)]
async fn delay_answers_late() {
    let (srv, _) = faulty(&["Check=delay(2s)"], 0).await;
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    let start = tokio::time::Instant::now();
    a.check().await.unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn hang_never_answers_until_the_deadline() {
    let (srv, _) = faulty(&["WaitProcess{container_id=c1}=hang"], 0).await;
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    a.create_container(create_req("c1", &["true"]))
        .await
        .unwrap();
    a.start_container("c1".into()).await.unwrap();
    let opts = CallOpts {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let req = agent::WaitProcessRequest {
        container_id: "c1".into(),
        exec_id: "c1".into(),
        ..Default::default()
    };
    let start = tokio::time::Instant::now();
    let r = sim_agent::AgentRpc::wait_process(&a, req, opts).await;
    assert!(r.is_err(), "{r:?}");
    assert!(start.elapsed() >= Duration::from_secs(30));
    // Another container is not affected by the filter.
    a.create_container(create_req("c2", &["true"]))
        .await
        .unwrap();
    a.start_container("c2".into()).await.unwrap();
    assert_eq!(a.wait_process("c2".into(), "c2".into()).await.unwrap(), 0);
}

#[tokio::test]
async fn a_hang_whose_client_disconnects_leaves_no_task_behind() {
    let (srv, _) = faulty(&["WaitProcess=hang"], 0).await;
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    a.create_container(create_req("c1", &["true"]))
        .await
        .unwrap();
    drop(a);
    bounded(async {
        while srv.server.connection_count() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let mut raw = RawClient::connect(&srv.path).await;
    raw.send_wait_process(1, "c1", "c1").await;
    // The call is in the guest, hanging.
    let agent = srv.server.agent().clone();
    bounded(async {
        while !agent.trace().methods().iter().any(|m| m == "WaitProcess") {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(metrics.num_alive_tasks() > baseline);
    drop(raw);
    bounded(async {
        while srv.server.connection_count() > 0 || metrics.num_alive_tasks() > baseline {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        metrics.num_alive_tasks(),
        baseline,
        "a task outlived its client"
    );
}

#[tokio::test]
async fn drop_before_closes_without_doing_the_call() {
    let (srv, _) = faulty(&["CreateContainer=1*drop(before)->off"], 0).await;
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    let r = a.create_container(create_req("c1", &["true"])).await;
    assert!(is_closed(&r), "{r:?}");
    assert!(srv.server.agent().container_ids().is_empty());
    // The retry on a new connection creates it.
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    a.create_container(create_req("c1", &["true"]))
        .await
        .unwrap();
}

#[tokio::test]
async fn drop_after_does_the_call_then_closes() {
    let (srv, _) = faulty(
        &[
            "CreateContainer=1*drop(after)->off",
            "ExecProcess=1*drop(after)->off",
        ],
        0,
    )
    .await;
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    let r = a
        .create_container(create_req("c1", &["sleep", "100"]))
        .await;
    assert!(is_closed(&r), "{r:?}");
    assert_eq!(srv.server.agent().container_ids(), vec!["c1".to_string()]);
    // The retry meets the container the lost answer created (the real agent's words).
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    assert_eq!(
        status(
            a.create_container(create_req("c1", &["sleep", "100"]))
                .await
        ),
        (Code::INTERNAL, "exec fifo exists".into())
    );
    a.create_container(create_req("c2", &["sleep", "100"]))
        .await
        .unwrap();
    a.start_container("c2".into()).await.unwrap();
    let exec = agent::ExecProcessRequest {
        container_id: "c2".into(),
        exec_id: "e1".into(),
        process: create_req("c2", &["true"]).OCI.unwrap().Process,
        ..Default::default()
    };
    assert!(is_closed(&a.exec(exec.clone()).await));
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    assert_eq!(
        status(a.exec(exec).await),
        (Code::INTERNAL, "exec_id 'e1' already exists".into())
    );
}

#[tokio::test]
async fn kill_guest_fails_pending_calls_and_refuses_reconnects() {
    let (srv, _) = faulty(&["Check=kill_guest"], 0).await;
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    a.create_container(create_req("c1", &["sleep", "1000"]))
        .await
        .unwrap();
    a.start_container("c1".into()).await.unwrap();
    let waiting = tokio::spawn({
        let a = a.clone();
        async move { a.wait_process("c1".into(), "c1".into()).await }
    });
    let agent = srv.server.agent().clone();
    bounded(async {
        while !agent.trace().methods().iter().any(|m| m == "WaitProcess") {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let b = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    assert!(is_closed(&b.check().await));
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the pending WaitProcess must fail promptly")
        .unwrap();
    assert!(is_closed(&r), "{r:?}");
    assert!(agent.is_dead());
    // New connections are closed at once.
    let c = RemoteAgent::connect(&srv.url("unix")).await;
    if let Ok(c) = c {
        assert!(is_closed(&c.check().await));
    }
}

#[tokio::test]
async fn oom_reaches_a_blocked_get_oom_event_and_kills_with_137() {
    let (srv, _) = faulty(&["StatsContainer=1*oom->off"], 0).await;
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    a.create_container(create_req("c1", &["sleep", "1000"]))
        .await
        .unwrap();
    a.start_container("c1".into()).await.unwrap();
    let oom = tokio::spawn({
        let a = a.clone();
        async move { a.get_oom_event().await }
    });
    // The call's own container is the one killed.
    a.stats_container("c1".into()).await.unwrap();
    assert_eq!(bounded(oom).await.unwrap().unwrap(), "c1");
    assert_eq!(a.wait_process("c1".into(), "c1".into()).await.unwrap(), 137);
}

#[tokio::test]
async fn restart_agent_drops_connections_and_loses_state() {
    let (srv, _) = faulty(&["Check=1*restart_agent->off"], 0).await;
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    a.create_container(create_req("c1", &["sleep", "1000"]))
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let a = a.clone();
        async move { a.get_oom_event().await }
    });
    assert!(is_closed(&a.check().await));
    assert!(is_closed(&bounded(waiting).await.unwrap()));
    // It serves again, with nothing of the old state.
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    a.check().await.unwrap();
    assert_eq!(
        status(a.start_container("c1".into()).await),
        (Code::INTERNAL, "Invalid container id".into())
    );
    assert_eq!(srv.server.agent().epoch(), 1);
}

#[tokio::test(start_paused = true)]
async fn slow_limits_stdio_bytes_per_second() {
    let (srv, _) = faulty(&["ReadStdout=slow(1k)"], 0).await;
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    a.create_container(create_req(
        "c1",
        &["sh", "-c", "head -c 4096 /dev/zero | tr '\\0' x"],
    ))
    .await
    .unwrap();
    a.start_container("c1".into()).await.unwrap();
    let start = tokio::time::Instant::now();
    let mut got = 0;
    while got < 4096 {
        let chunk = a
            .read_process_stdout("c1".into(), "c1".into(), 8192)
            .await
            .unwrap();
        assert!(!chunk.is_empty());
        got += chunk.len();
    }
    // 4 KiB at 1 KiB/s: at least four seconds.
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // Other calls are not slowed.
    let start = tokio::time::Instant::now();
    a.check().await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(100));
}

#[tokio::test]
async fn corrupt_sends_a_malformed_frame() {
    let (srv, _) = faulty(&["Check=corrupt"], 0).await;
    let mut raw = RawClient::connect(&srv.path).await;
    raw.send_request(1, "grpc.Health", "Check", vec![], 0, &[])
        .await;
    let mut header = [0u8; 10];
    bounded(raw.stream.read_exact(&mut header)).await.unwrap();
    assert_eq!(u32::from_be_bytes(header[4..8].try_into().unwrap()), 1);
    assert_eq!(header[8], 2, "a response frame");
    let len = u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize;
    let mut body = vec![0; len];
    raw.stream.read_exact(&mut body).await.unwrap();
    use protobuf::Message as _;
    assert!(ttrpc::Response::parse_from_bytes(&body).is_err());
    // A ttrpc client fails the call.
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    assert!(a.check().await.is_err());
}

#[tokio::test]
async fn deny_and_unimplemented_answer_as_real_agents_do() {
    let (srv, _) = faulty(
        &["CreateContainer=deny", "GetDiagnosticData=unimplemented"],
        0,
    )
    .await;
    let mut raw = RawClient::connect(&srv.path).await;
    let r = raw.call(1, "grpc.AgentService", "CreateContainer").await;
    assert_eq!(r.code, Code::PERMISSION_DENIED as i32);
    assert!(
        r.message
            .starts_with("\"CreateContainerRequest is blocked by policy: "),
        "{}",
        r.message
    );
    let r = raw.call(3, "grpc.AgentService", "GetDiagnosticData").await;
    let unknown = raw.call(5, "grpc.AgentService", "NoSuchMethod").await;
    assert_eq!(
        r.status(),
        (Code::UNIMPLEMENTED as i32, "GetDiagnosticData method")
    );
    assert_eq!(r.code, unknown.code);
}

#[test]
fn the_same_seed_decides_the_same_over_ten_thousand_calls() {
    let run = |seed: u64| -> Vec<bool> {
        let engine = FaultEngine::new(seed);
        engine.add("Check=50%error(INTERNAL)").unwrap();
        (0..10_000)
            .map(|_| {
                engine.decide(&CallInfo {
                    target: "Check",
                    request: "CheckRequest",
                    fields: &[],
                    conn: None,
                    sandbox: None,
                }) != Verdict::Pass
            })
            .collect()
    };
    let a = run(7);
    assert_eq!(a, run(7), "seed 7 must repeat itself");
    let b = run(8);
    assert_ne!(a, b, "seed 8 must differ from seed 7");
    let fired = a.iter().filter(|f| **f).count();
    assert!(
        (4_500..5_500).contains(&fired),
        "seed 7: {fired} of 10000 fired"
    );
}

#[test]
fn counts_chain_and_guards_uninstall() {
    let engine = FaultEngine::new(1);
    let call = CallInfo {
        target: "CreateContainer",
        request: "CreateContainerRequest",
        fields: &[("container_id", "c1".to_string())],
        conn: None,
        sandbox: Some("sb1"),
    };
    let guard = engine
        .install("CreateContainer{sandbox=sb1}=2*error(INTERNAL)->1*delay(1s)->off")
        .unwrap();
    let decisions: Vec<Verdict> = (0..5).map(|_| engine.decide(&call)).collect();
    assert!(matches!(decisions[0], Verdict::Fail(_)));
    assert!(matches!(decisions[1], Verdict::Fail(_)));
    assert_eq!(decisions[2], Verdict::Delay(Duration::from_secs(1)));
    assert_eq!(decisions[3], Verdict::Pass);
    assert_eq!(decisions[4], Verdict::Pass);
    assert_eq!(engine.list().len(), 1);
    drop(guard);
    assert!(engine.list().is_empty());
    // Scoped to another sandbox: no match.
    let _g = engine.install("*{sandbox=sb2}=hang").unwrap();
    assert_eq!(engine.decide(&call), Verdict::Pass);
}

#[tokio::test]
async fn the_control_socket_changes_rules_of_a_running_server() {
    let (srv, engine) = faulty(&[], 0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let _control = control::serve(&path, engine.clone()).unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the control socket is private");
    let a = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    a.check().await.unwrap();
    let add = |rule: &str| control::Request::Add { rule: rule.into() };
    let id = control::request(&path, &add("Check=error(ABORTED)"))
        .await
        .unwrap();
    assert_eq!(id, control::Response::Added { id: 1 });
    assert_eq!(status(a.check().await).0, Code::ABORTED);
    assert_eq!(
        control::request(&path, &control::Request::List)
            .await
            .unwrap(),
        control::Response::Rules {
            rules: vec![control::RuleEntry {
                id: 1,
                rule: "Check=error(ABORTED)".into()
            }]
        }
    );
    let e = control::request(&path, &add("Check=explode"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("column 7") && e.contains("unknown action"),
        "{e}"
    );
    // A newline in a rule is refused: it never becomes a second command.
    let e = control::request(&path, &add("Check=hang\nclear"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("control character"), "{e}");
    assert_eq!(engine.list().len(), 1, "nothing was cleared");
    control::request(&path, &control::Request::Clear)
        .await
        .unwrap();
    a.check().await.unwrap();
}

/// A request line longer than the bound is answered with an error and the connection closes;
/// the server holds no more than the bound.
#[tokio::test]
async fn an_overlong_control_request_is_refused() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let engine = sim_agent::fault::FaultEngine::new(0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let _control = control::serve(&path, engine.clone()).unwrap();
    let conn = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (r, mut w) = conn.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        // 2 MiB without a newline: the server stops reading after 64 KiB.
        for _ in 0..32 {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut answer = String::new();
    bounded(tokio::io::BufReader::new(r).read_line(&mut answer))
        .await
        .unwrap();
    assert!(answer.contains("longer than 65536 bytes"), "{answer}");
    bounded(writer).await.unwrap();
    assert!(engine.list().is_empty());
}

/// Pointed at a socket that speaks another protocol (here: one that never answers), the
/// client gives up with a message instead of hanging.
#[tokio::test]
async fn the_control_client_times_out_on_a_socket_that_is_not_a_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            held.push(c);
        }
    });
    let e = bounded(control::request_within(
        &path,
        &control::Request::List,
        std::time::Duration::from_millis(200),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(e, control::ControlError::Timeout { .. })
            && e.to_string().contains("is it a fault control socket"),
        "{e}"
    );
}

/// At least 20 bad rules, each answered with the column and what was expected.
#[test]
fn bad_rules_give_located_errors() {
    let corpus: &[(&str, usize, &str)] = &[
        ("", 1, "expected a target"),
        ("=hang", 1, "expected a target"),
        ("NoSuchRpc=hang", 1, "unknown target \"NoSuchRpc\""),
        ("Check", 6, "expected '=' after the target"),
        ("Check hang", 7, "expected '=' after the target"),
        ("Check=", 7, "expected an action, found end of rule"),
        ("Check=explode", 7, "unknown action \"explode\""),
        ("Check=hang(1)", 7, "hang takes no arguments"),
        (
            "Check=delay",
            7,
            "expected arguments: delay(DURATION[, JITTER])",
        ),
        ("Check=delay(5)", 13, "expected a unit"),
        (
            "Check=delay(5h)",
            13,
            "expected a unit (us, ms, s or m) after 5, found \"h\"",
        ),
        ("Check=delay(s)", 13, "expected a duration"),
        ("Check=delay(5s", 15, "expected ')' after the delay"),
        ("Check=error()", 13, "expected a status code name"),
        ("Check=error(BROKEN)", 13, "unknown status code \"BROKEN\""),
        (
            "Check=error(INTERNAL, oops)",
            23,
            "expected a \"quoted\" message",
        ),
        ("Check=error(INTERNAL, \"oops)", 23, "unterminated string"),
        ("Check=drop(sideways)", 12, "expected before or after"),
        ("Check=drop", 7, "expected arguments: drop(before|after)"),
        (
            "Check=slow(0)",
            12,
            "expected a positive bytes-per-second rate",
        ),
        ("Check=150%hang", 7, "a probability must be 0-100%"),
        ("Check=1.5*hang", 7, "a count must be a whole number"),
        (
            "Check=3hang",
            8,
            "expected \"%\" or \"*\" after the number 3",
        ),
        ("Check=hang->", 13, "expected an action"),
        (
            "Check=hang off",
            12,
            "expected \"->\" or the end of the rule",
        ),
        ("Check{=x}=hang", 7, "expected a field name"),
        (
            "Check{service b}=hang",
            15,
            "expected '=' after the field \"service\"",
        ),
        (
            "Check{service=b=hang",
            16,
            "expected '}' or \",\" after a filter",
        ),
        ("Check{a=b}=hang", 7, "unknown filter key \"a\" for Check"),
        (
            "WaitProcess{container=c2}=hang",
            13,
            "did you mean \"container_id\"?",
        ),
        ("KillVM=hang", 1, "KillVM is recorded, cannot be faulted"),
        ("Check=oom()", 11, "expected a container id"),
    ];
    assert!(corpus.len() >= 20);
    for (rule, column, expected) in corpus {
        let e = rule
            .parse::<sim_agent::fault::Rule>()
            .expect_err(&format!("{rule:?} must not parse"));
        assert_eq!(e.column, *column, "{rule:?}: {e}");
        assert!(e.message.contains(expected), "{rule:?}: {}", e.message);
        // The rendering points at the column.
        let rendered = e.to_string();
        assert!(
            rendered.starts_with(&format!("column {column}: ")),
            "{rendered}"
        );
        assert!(rendered.ends_with('^'), "{rendered}");
    }
}
