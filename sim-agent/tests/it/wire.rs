//! The server on real sockets: every RPC on each unix-based transport, the hybrid-vsock
//! handshake, bad input, and socket-file hygiene.

use std::os::unix::fs::PermissionsExt;

use protobuf::Message as _;

use sim_agent::protocols::{agent, health};
use std::time::Duration;

use sim_agent::{Agent, AgentError, AgentRpc, CallOpts, Method, RemoteAgent, SimAgent, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ttrpc::Code;

use crate::support::{RawClient, TestServer, bounded, create_req};

/// Sends every RPC once; returns the method names the server traced, in order.
async fn call_every_rpc(a: &RemoteAgent) -> Vec<(Method, Option<Code>)> {
    let o = CallOpts::default;
    let mut seen = Vec::new();
    macro_rules! call {
        ($m:ident, $f:ident, $req:expr) => {{
            let r = bounded(AgentRpc::$f(a, $req, o())).await;
            seen.push((Method::$m, r.err().and_then(|e| e.code())));
        }};
    }
    call!(Check, check, health::CheckRequest::new());
    call!(Version, version, health::CheckRequest::new());
    call!(
        CreateSandbox,
        create_sandbox,
        agent::CreateSandboxRequest {
            sandbox_id: "s".into(),
            ..Default::default()
        }
    );
    call!(GetGuestDetails, get_guest_details, Default::default());
    call!(
        CreateContainer,
        create_container,
        create_req("c1", &["/bin/sleep", "1000"])
    );
    call!(
        StartContainer,
        start_container,
        agent::StartContainerRequest {
            container_id: "c1".into(),
            ..Default::default()
        }
    );
    call!(
        ExecProcess,
        exec_process,
        agent::ExecProcessRequest {
            container_id: "c1".into(),
            exec_id: "e".into(),
            process: create_req("c1", &["cat"]).OCI.unwrap().Process,
            ..Default::default()
        }
    );
    call!(
        WriteStdin,
        write_stdin,
        agent::WriteStreamRequest {
            container_id: "c1".into(),
            exec_id: "e".into(),
            data: b"hi".to_vec(),
            ..Default::default()
        }
    );
    call!(
        ReadStdout,
        read_stdout,
        agent::ReadStreamRequest {
            container_id: "c1".into(),
            exec_id: "e".into(),
            len: 10,
            ..Default::default()
        }
    );
    call!(
        CloseStdin,
        close_stdin,
        agent::CloseStdinRequest {
            container_id: "c1".into(),
            exec_id: "e".into(),
            ..Default::default()
        }
    );
    call!(
        ReadStderr,
        read_stderr,
        agent::ReadStreamRequest {
            container_id: "c1".into(),
            exec_id: "e".into(),
            len: 10,
            ..Default::default()
        }
    );
    call!(
        WaitProcess,
        wait_process,
        agent::WaitProcessRequest {
            container_id: "c1".into(),
            exec_id: "e".into(),
            ..Default::default()
        }
    );
    call!(
        TtyWinResize,
        tty_win_resize,
        agent::TtyWinResizeRequest {
            container_id: "c1".into(),
            ..Default::default()
        }
    );
    call!(
        SignalProcess,
        signal_process,
        agent::SignalProcessRequest {
            container_id: "c1".into(),
            signal: 0,
            ..Default::default()
        }
    );
    call!(
        UpdateContainer,
        update_container,
        agent::UpdateContainerRequest {
            container_id: "c1".into(),
            ..Default::default()
        }
    );
    call!(
        StatsContainer,
        stats_container,
        agent::StatsContainerRequest {
            container_id: "c1".into(),
            ..Default::default()
        }
    );
    call!(
        PauseContainer,
        pause_container,
        agent::PauseContainerRequest {
            container_id: "c1".into(),
            ..Default::default()
        }
    );
    call!(
        ResumeContainer,
        resume_container,
        agent::ResumeContainerRequest {
            container_id: "c1".into(),
            ..Default::default()
        }
    );
    call!(
        UpdateEphemeralMounts,
        update_ephemeral_mounts,
        Default::default()
    );
    call!(
        RemoveStaleVirtiofsShareMounts,
        remove_stale_virtiofs_share_mounts,
        Default::default()
    );
    call!(
        GetDiagnosticData,
        get_diagnostic_data,
        agent::GetDiagnosticDataRequest {
            container_id: "c1".into(),
            log_type: "termination_log".into(),
            ..Default::default()
        }
    );
    call!(
        UpdateInterface,
        update_interface,
        agent::UpdateInterfaceRequest {
            interface: Some(sim_agent::protocols::types::Interface {
                name: "eth0".into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    );
    call!(
        UpdateRoutes,
        update_routes,
        agent::UpdateRoutesRequest {
            routes: Some(agent::Routes::new()).into(),
            ..Default::default()
        }
    );
    call!(ListInterfaces, list_interfaces, Default::default());
    call!(ListRoutes, list_routes, Default::default());
    call!(AddARPNeighbors, add_arp_neighbors, Default::default());
    call!(
        SetIPTables,
        set_ip_tables,
        agent::SetIPTablesRequest {
            data: b"*filter\n".to_vec(),
            ..Default::default()
        }
    );
    call!(GetIPTables, get_ip_tables, Default::default());
    call!(GetMetrics, get_metrics, Default::default());
    call!(MemAgentMemcgSet, mem_agent_memcg_set, Default::default());
    call!(
        MemAgentCompactSet,
        mem_agent_compact_set,
        Default::default()
    );
    call!(
        OnlineCPUMem,
        online_cpu_mem,
        agent::OnlineCPUMemRequest {
            nb_cpus: 1,
            ..Default::default()
        }
    );
    call!(
        ReseedRandomDev,
        reseed_random_dev,
        agent::ReseedRandomDevRequest {
            data: vec![1; 8],
            ..Default::default()
        }
    );
    call!(MemHotplugByProbe, mem_hotplug_by_probe, Default::default());
    call!(
        SetGuestDateTime,
        set_guest_date_time,
        agent::SetGuestDateTimeRequest {
            Sec: 1,
            ..Default::default()
        }
    );
    call!(
        CopyFile,
        copy_file,
        agent::CopyFileRequest {
            path: "/run/kata-containers/shared/containers/f".into(),
            file_mode: 0o100644,
            ..Default::default()
        }
    );
    call!(
        AddSwap,
        add_swap,
        agent::AddSwapRequest {
            PCIPath: vec![2],
            ..Default::default()
        }
    );
    call!(
        AddSwapPath,
        add_swap_path,
        agent::AddSwapPathRequest {
            path: "/run/kata-containers/shared/containers/f".into(),
            ..Default::default()
        }
    );
    call!(
        GetVolumeStats,
        get_volume_stats,
        agent::VolumeStatsRequest {
            volume_guest_path: "/run".into(),
            ..Default::default()
        }
    );
    call!(ResizeVolume, resize_volume, Default::default());
    call!(
        SetPolicy,
        set_policy,
        agent::SetPolicyRequest {
            policy: "package agent_policy".into(),
            ..Default::default()
        }
    );
    call!(
        RemoveContainer,
        remove_container,
        agent::RemoveContainerRequest {
            container_id: "c1".into(),
            ..Default::default()
        }
    );
    // GetOOMEvent blocks until an event or DestroySandbox; DestroySandbox is last.
    let oom = AgentRpc::get_oom_event(a, Default::default(), o());
    let destroy = async {
        tokio::task::yield_now().await;
        AgentRpc::destroy_sandbox(a, Default::default(), o()).await
    };
    let (oom, destroy) = bounded(async { tokio::join!(oom, destroy) }).await;
    seen.push((Method::GetOOMEvent, oom.err().and_then(|e| e.code())));
    seen.push((Method::DestroySandbox, destroy.err().and_then(|e| e.code())));
    seen
}

#[tokio::test]
async fn every_rpc_on_every_unix_transport() {
    for scheme in ["unix", "remote", "mock", "hvsock"] {
        let sim = SimAgent::with_config(SimConfig {
            policy_enabled: true,
            ..Default::default()
        })
        .unwrap();
        let srv = TestServer::start(sim.clone(), scheme).await;
        let client = RemoteAgent::connect(&srv.url(scheme)).await.unwrap();
        let seen = call_every_rpc(&client).await;
        let mut methods: Vec<Method> = seen.iter().map(|(m, _)| *m).collect();
        methods.sort();
        let mut all = Method::ALL.to_vec();
        all.sort();
        assert_eq!(methods, all, "{scheme}: not every RPC was called");
        let traced: std::collections::BTreeSet<sim_agent::Op> =
            sim.trace().methods().into_iter().collect();
        assert_eq!(
            traced.len(),
            Method::ALL.len(),
            "{scheme}: the server did not trace every RPC"
        );
        for (m, code) in &seen {
            let expected = match m {
                Method::TtyWinResize => Some(Code::UNAVAILABLE),
                Method::MemAgentMemcgSet | Method::MemAgentCompactSet => Some(Code::INTERNAL),
                Method::MemHotplugByProbe => Some(Code::INTERNAL),
                Method::ResizeVolume => Some(Code::UNIMPLEMENTED),
                Method::GetDiagnosticData => Some(Code::INTERNAL),
                Method::GetOOMEvent => Some(Code::INTERNAL),
                _ => None,
            };
            assert_eq!(*code, expected, "{scheme}: {m}");
        }
        srv.server.shutdown().await;
    }
}

#[tokio::test]
async fn handshake_in_both_cases_and_a_bad_one_leaves_others_working() {
    let srv = TestServer::start(SimAgent::new().unwrap(), "hvsock").await;
    let upper = RemoteAgent::connect_with(&srv.url("hvsock"), false)
        .await
        .unwrap();
    let lower = RemoteAgent::connect_with(&srv.url("hvsock"), true)
        .await
        .unwrap();
    Agent::check(&upper).await.unwrap();
    Agent::check(&lower).await.unwrap();
    // A malformed handshake is closed without an answer...
    let mut bad = tokio::net::UnixStream::connect(&srv.path).await.unwrap();
    bad.write_all(b"HELLO there\n").await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(bounded(bad.read(&mut buf)).await.unwrap(), 0);
    // ...and the established connections keep working.
    Agent::check(&upper).await.unwrap();
    Agent::check(&lower).await.unwrap();
    // runtime-rs's log connection on port 1025 is accepted and stays silent.
    let mut log = tokio::net::UnixStream::connect(&srv.path).await.unwrap();
    log.write_all(b"connect 1025\n").await.unwrap();
    let mut ok = [0u8; 8];
    log.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"OK 1025\n");
    Agent::check(&lower).await.unwrap();
    srv.server.shutdown().await;
}

#[tokio::test]
async fn bad_frames_get_ttrpc_answers_and_spare_other_connections() {
    let srv = TestServer::start(SimAgent::new().unwrap(), "unix").await;
    let good = RemoteAgent::connect(&srv.url("unix")).await.unwrap();
    let mut raw = RawClient::connect(&srv.path).await;

    let r = raw.call(1, "grpc.AgentService", "NoSuchMethod").await;
    assert_eq!(
        r.status(),
        (Code::UNIMPLEMENTED as i32, "NoSuchMethod method")
    );

    let r = raw.call(3, "grpc.NoSuchService", "Check").await;
    assert_eq!(
        r.status(),
        (
            Code::INVALID_ARGUMENT as i32,
            "grpc.NoSuchService service does not exist"
        )
    );

    raw.send_request(
        5,
        "grpc.AgentService",
        "CreateContainer",
        vec![0xff, 0xff, 0xff],
        0,
        &[],
    )
    .await;
    let r = bounded(raw.read_response()).await.unwrap();
    assert_eq!(r.code, Code::UNKNOWN as i32, "{r:?}");

    let r = raw.call(6, "grpc.Health", "Check").await;
    assert_eq!(
        r.status(),
        (Code::INVALID_ARGUMENT as i32, "stream id must be odd")
    );

    raw.send_frame(7, 1, b"\xff\xff garbage envelope").await;
    let r = bounded(raw.read_response()).await.unwrap();
    assert_eq!(r.code, Code::INVALID_ARGUMENT as i32);

    // An absurd length: the server skips the body without allocating it, then answers.
    let mut header = Vec::new();
    header.extend_from_slice(&(5u32 << 20).to_be_bytes());
    header.extend_from_slice(&9u32.to_be_bytes());
    header.extend_from_slice(&[1, 0]);
    raw.stream.write_all(&header).await.unwrap();
    raw.stream.write_all(&vec![0u8; 5 << 20]).await.unwrap();
    let r = bounded(raw.read_response()).await.unwrap();
    assert_eq!((r.stream_id, r.code), (9, Code::INVALID_ARGUMENT as i32));
    assert!(
        r.message.contains("exceed maximum message size"),
        "{}",
        r.message
    );

    // The same connection still serves, and so does the other one.
    assert_eq!(raw.call(11, "grpc.Health", "Check").await.code, 0);
    Agent::check(&good).await.unwrap();

    // A 4 GiB length with no body, then a hang-up: only that connection ends.
    let mut greedy = RawClient::connect(&srv.path).await;
    greedy
        .stream
        .write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0])
        .await
        .unwrap();
    drop(greedy);
    Agent::check(&good).await.unwrap();
    srv.server.shutdown().await;
}

#[tokio::test]
async fn concurrent_blocking_calls_share_one_connection() {
    let sim = SimAgent::new().unwrap();
    let srv = TestServer::start(sim.clone(), "unix").await;
    let a = srv.client_running("c1", &["cat"]).await;
    let read = Agent::read_process_stdout(&a, "c1".into(), "c1".into(), 100);
    let wait1 = Agent::wait_process(&a, "c1".into(), "c1".into());
    let wait2 = Agent::wait_process(&a, "c1".into(), "c1".into());
    let oom = Agent::get_oom_event(&a);
    let drive = async {
        // Every call above is blocked; these still answer on the same connection.
        Agent::check(&a).await.unwrap();
        Agent::write_process_stdin(&a, "c1".into(), "c1".into(), b"data".to_vec())
            .await
            .unwrap();
        sim.push_oom_event("c1");
        Agent::close_process_stdin(&a, "c1".into(), "c1".into())
            .await
            .unwrap();
    };
    let (read, w1, w2, oom, ()) =
        bounded(async { tokio::join!(read, wait1, wait2, oom, drive) }).await;
    assert_eq!(read.unwrap(), b"data");
    assert_eq!(
        (w1.unwrap(), w2.unwrap()),
        (0, 0),
        "every concurrent waiter gets the status"
    );
    assert_eq!(oom.unwrap(), "c1");
    srv.server.shutdown().await;
}

#[tokio::test]
async fn a_frame_split_around_another_answer_is_read_whole() {
    // The connection answers a waiting call while the next frame has only half arrived: the
    // half already read must not be lost (the frame reader is cancel safe).
    let sim = SimAgent::new().unwrap();
    let srv = TestServer::start(sim.clone(), "unix").await;
    let a = srv.client_running("c1", &["cat"]).await;
    let mut raw = RawClient::connect(&srv.path).await;
    raw.send_wait_process(1, "c1", "c1").await;
    // The server has taken WaitProcess (it is traced) before the half frame goes out.
    bounded(async {
        while !sim.trace().has(sim_agent::Method::WaitProcess) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let mut check = ttrpc::Request::new();
    check.service = "grpc.Health".into();
    check.method = "Check".into();
    check.payload = health::CheckRequest::new().write_to_bytes().unwrap();
    let body = check.write_to_bytes().unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&3u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&body);
    let (head, tail) = frame.split_at(6);
    raw.stream.write_all(head).await.unwrap();
    raw.stream.flush().await.unwrap();
    Agent::signal_process(&a, "c1".into(), String::new(), 9, false)
        .await
        .unwrap();
    let waited = bounded(raw.read_response()).await.unwrap();
    assert_eq!((waited.stream_id, waited.code), (1, 0));
    raw.stream.write_all(tail).await.unwrap();
    let checked = bounded(raw.read_response()).await.unwrap();
    assert_eq!(
        (checked.stream_id, checked.status()),
        (3, (0, "")),
        "the split frame was answered as a whole"
    );
    srv.server.shutdown().await;
}

#[tokio::test]
async fn socket_files_are_private_and_stale_ones_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.sock");
    let url = format!("unix://{}", path.display());
    // A stale socket file (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = sim_agent::AgentServer::bind(SimAgent::new().unwrap(), std::slice::from_ref(&url))
        .await
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A live one is refused, and the first server keeps serving.
    let err = sim_agent::AgentServer::bind(SimAgent::new().unwrap(), std::slice::from_ref(&url))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("live socket"), "{err}");
    let a = RemoteAgent::connect(&url).await.unwrap();
    Agent::check(&a).await.unwrap();
    server.shutdown().await;
    assert!(!path.exists(), "shutdown removes the socket file");
}

#[tokio::test]
async fn destroy_sandbox_answers_then_ends_service() {
    let sim = SimAgent::new().unwrap();
    let srv = TestServer::start(sim.clone(), "unix").await;
    let mut raw = RawClient::connect(&srv.path).await;
    raw.send_request(1, "grpc.AgentService", "GetOOMEvent", vec![], 0, &[])
        .await;
    raw.send_request(3, "grpc.AgentService", "DestroySandbox", vec![], 0, &[])
        .await;
    let mut answers = [
        bounded(raw.read_response()).await.unwrap(),
        bounded(raw.read_response()).await.unwrap(),
    ];
    answers.sort_by_key(|r| r.stream_id);
    assert_eq!(
        (answers[0].code, answers[0].message.as_str()),
        (Code::INTERNAL as i32, "\"\"")
    );
    assert_eq!(answers[1].code, 0);
    // Then the agent closes the connection, and refuses new ones.
    assert!(bounded(raw.read_response()).await.is_none());
    let mut again = RawClient::connect(&srv.path).await;
    again
        .send_request(1, "grpc.Health", "Check", vec![], 0, &[])
        .await;
    assert!(bounded(again.read_response()).await.is_none());
    srv.server.shutdown().await;
}

#[tokio::test]
async fn vsock_binds_where_the_kernel_allows() {
    match tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(u32::MAX, 0)) {
        Err(e) => {
            println!("skipping vsock test: this kernel has no vsock ({e})");
        }
        Ok(l) => {
            let port = l.local_addr().unwrap().port();
            drop(l);
            let url = format!("vsock://{}:{port}", u32::MAX);
            let server =
                sim_agent::AgentServer::bind(SimAgent::new().unwrap(), std::slice::from_ref(&url))
                    .await
                    .unwrap();
            match RemoteAgent::connect(&format!("vsock://1:{port}")).await {
                Ok(a) => Agent::check(&a).await.unwrap(),
                Err(e) => println!("skipping vsock round trip: no vsock loopback here ({e})"),
            }
            server.shutdown().await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn after_destroy_sandbox_the_connection_lingers_briefly_before_closing() {
    // Closing in the same instant as the reply loses it in ttrpc-rust 0.9's client
    // (runtime-rs); the real agent exits a little later. On the paused clock: the connection
    // is still open 10 ms after the reply, and closed once the linger has passed.
    let mut server = sim_agent::AgentServer::new(SimAgent::new().unwrap());
    let (client, conn) = tokio::io::duplex(64 * 1024);
    server.serve_connection(Box::new(conn));
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut req = ttrpc::Request::new();
    req.service = "grpc.AgentService".into();
    req.method = "DestroySandbox".into();
    let body = protobuf::Message::write_to_bytes(&req).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&body);
    wr.write_all(&frame).await.unwrap();
    let mut header = [0u8; 10];
    rd.read_exact(&mut header).await.unwrap();
    let len = u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize;
    let mut resp = vec![0u8; len];
    rd.read_exact(&mut resp).await.unwrap();
    let resp: ttrpc::Response = protobuf::Message::parse_from_bytes(&resp).unwrap();
    assert_eq!(resp.status.code.value(), 0, "DestroySandbox answers OK");
    let mut byte = [0u8; 1];
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(10), rd.read(&mut byte)).await;
    assert!(early.is_err(), "closed together with the reply: {early:?}");
    assert_eq!(
        rd.read(&mut byte).await.unwrap(),
        0,
        "closed after the linger"
    );
    server.shutdown().await;
}

/// Go's `markDead` sets `dead` and closes the ttrpc client (kata_agent.go 3.19.1; the vendored
/// ttrpc client's `Close` fails every call in flight with `ErrClosed`): a call in flight fails
/// at once with "ttrpc: closed", a later one with "Dead agent", and the agent sees the host
/// hang up.
#[tokio::test]
async fn mark_dead_fails_the_calls_in_flight_at_once_and_hangs_up() {
    let srv = TestServer::start(SimAgent::new().unwrap(), "unix").await;
    let a = srv.client_running("c1", &["sleep", "1000"]).await;
    let wait = Agent::wait_process(&a, "c1".into(), "c1".into());
    tokio::pin!(wait);
    // The wait is sent first; once the Check behind it on the same connection answers, the
    // agent has the wait, which blocks on the sleeping process.
    tokio::select! {
        biased;
        r = &mut wait => panic!("the wait answered: {r:?}"),
        r = bounded(Agent::check(&a)) => r.unwrap(),
    }
    assert_eq!(srv.server.connection_count(), 1);
    a.mark_dead();
    assert_eq!(bounded(wait).await, Err(AgentError::ConnectionClosed));
    assert_eq!(Agent::check(&a).await, Err(AgentError::DeadAgent));
    bounded(srv.server.drain(Duration::from_secs(20))).await;
    assert_eq!(
        srv.server.connection_count(),
        0,
        "the agent saw the host hang up"
    );
    let wait = srv
        .server
        .agent()
        .trace()
        .events()
        .into_iter()
        .find(|e| e.method == sim_agent::Op::Agent(Method::WaitProcess))
        .expect("the agent got the wait");
    assert!(
        !wait.status.answered(),
        "cancelled, never answered: {wait:?}"
    );
}
