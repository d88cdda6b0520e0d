//! RPC latency against the transport floor.
//!
//! - `floor`: a raw unix-socket ping-pong of 16 bytes, and a bare ttrpc server (ttrpc-rust's
//!   own) whose `Health.Check` handler does nothing, on the same transport;
//! - `check`: sim-agent's `Health.Check` in-process, over unix and over hybrid vsock;
//! - `rpc/{in_process,unix,hvsock}`: the agent calls runtimes make, with realistic payloads:
//!   Check, GetGuestDetails, CreateContainer (an OCI spec as the Go shim sends it),
//!   StartContainer, ExecProcess, WaitProcess of an exited process, ReadStdout and WriteStdin
//!   of 32 KiB, GetDiagnosticData of a 4 KiB message, CopyFile of a 1 MiB chunk. Only the named
//!   call is timed; what it needs (a created container to start, an exited process to wait
//!   for) is made before and cleaned up after, so every sample measures the same work.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sim_agent::protocols::{agent, health, health_ttrpc};
use sim_agent::requests;
use sim_agent::{Agent, AgentRpc, AgentServer, CallOpts, RemoteAgent, SimAgent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Client and server share one thread: a round trip is then two socket syscalls and two task
/// switches, with no cross-thread wake-ups whose scheduling noise would drown the comparison
/// (the floor and sim-agent are measured the same way).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A ttrpc `Health` service that answers without doing anything: the floor of a ttrpc call.
struct Empty;

#[async_trait::async_trait]
impl health_ttrpc::Health for Empty {
    async fn check(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        Ok(health::HealthCheckResponse::default())
    }
}

fn floor(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("floor");

    // Raw unix ping-pong: the client writes 16 bytes, the server echoes them.
    let path = dir.path().join("raw.sock");
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(&path).expect("bind") });
    rt.spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let client = rt.block_on(async {
        tokio::sync::Mutex::new(
            tokio::net::UnixStream::connect(&path)
                .await
                .expect("connect"),
        )
    });
    group.bench_function("unix_pingpong_16b", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = client.lock().await;
            s.write_all(&[7u8; 16]).await.expect("write");
            let mut buf = [0u8; 16];
            s.read_exact(&mut buf).await.expect("read");
        })
    });

    // A bare ttrpc server with an empty handler.
    let path = dir.path().join("ttrpc.sock");
    let (mut server, health) = rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let mut server = ttrpc::r#async::Server::new()
            .add_listener(listener.into())
            .register_service(health_ttrpc::create_health(Arc::new(Empty)));
        server.start().await.expect("start");
        let stream = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(stream));
        (server, health_ttrpc::HealthClient::new(client))
    });
    group.bench_function("ttrpc_empty_check", |b| {
        b.to_async(&rt).iter(|| async {
            health
                .check(
                    ttrpc::context::with_timeout(0),
                    &health::CheckRequest::new(),
                )
                .await
                .expect("check")
        })
    });
    group.finish();
    rt.block_on(async {
        let _ = server.shutdown().await;
    });
}

/// A guest prepared for the repeatable calls, and its clients.
struct Setup {
    _dir: tempfile::TempDir,
    server: AgentServer,
    sim: SimAgent,
    unix: RemoteAgent,
    hvsock: RemoteAgent,
    source: std::path::PathBuf,
}

/// The Go shim's CreateContainer for `args`, with a termination-log mount from `term`.
fn spec(cid: &str, args: &[&str], term: Option<&str>) -> agent::CreateContainerRequest {
    let req = requests::create_container(cid, args);
    match term {
        Some(t) => requests::with_termination_log(req, t),
        None => req,
    }
}

fn setup(rt: &tokio::runtime::Runtime) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = SimAgent::new().expect("guest");
    let unix = format!("unix://{}", dir.path().join("agent.sock").display());
    let hv = format!("hvsock://{}", dir.path().join("agent.hvsock").display());
    let source = dir.path().join("chunk");
    std::fs::write(&source, vec![b'y'; 1 << 20]).expect("source file");
    rt.block_on(async {
        let server = AgentServer::bind(sim.clone(), &[unix.clone(), hv.clone()])
            .await
            .expect("bind");
        let unix = RemoteAgent::connect(&unix).await.expect("unix");
        let hvsock = RemoteAgent::connect(&hv).await.expect("hvsock");
        // A producer of endless output, a consumer of endless input, and a container whose
        // termination message is 4 KiB.
        let term = "/run/kata-containers/shared/containers/msg-termination-log";
        sim.write_guest_file(term, &[b'm'; 4096]).expect("message");
        for (cid, args, t) in [
            ("yes", &["yes"][..], None),
            ("sink", &["sh", "-c", "cat > /dev/null"][..], None),
            ("msg", &["sleep", "100000"][..], Some(term)),
            ("box", &["sleep", "100000"][..], None),
        ] {
            Agent::create_container(&sim, spec(cid, args, t))
                .await
                .expect("create");
            Agent::start_container(&sim, cid.into())
                .await
                .expect("start");
        }
        Setup {
            _dir: dir,
            server,
            sim,
            unix,
            hvsock,
            source,
        }
    })
}

/// Yields until the guest's process has exited (without reaping it).
async fn exited(sim: &SimAgent, cid: &str, eid: &str) {
    while sim.exit_status(cid, eid).is_none() {
        tokio::task::yield_now().await;
    }
}

fn exec_req(eid: &str) -> agent::ExecProcessRequest {
    agent::ExecProcessRequest {
        container_id: "box".into(),
        exec_id: eid.into(),
        process: spec("box", &["true"], None).OCI.unwrap().Process,
        ..Default::default()
    }
}

/// One iteration of the call `name` on any client; returns the time of that call alone
/// (what it needs before and after, such as a container to start, is not counted).
async fn call<A: Agent + AgentRpc>(
    a: &A,
    sim: &SimAgent,
    name: &str,
    n: u64,
    source: &std::path::Path,
) -> Duration {
    let id = format!("b{n}");
    // Untimed preparation.
    match name {
        "start_container" => Agent::create_container(a, spec(&id, &["true"], None))
            .await
            .expect("create"),
        "wait_process_exited" => {
            Agent::exec(a, exec_req(&id)).await.expect("exec");
            exited(sim, "box", &id).await;
        }
        _ => {}
    }
    let t = Instant::now();
    match name {
        "check" => Agent::check(a).await.expect("check"),
        "get_guest_details" => {
            Agent::get_guest_details(
                a,
                agent::GuestDetailsRequest {
                    mem_block_size: true,
                    mem_hotplug_probe: true,
                    ..Default::default()
                },
            )
            .await
            .expect("details");
        }
        "create_container" => Agent::create_container(a, spec(&id, &["true"], None))
            .await
            .expect("create"),
        "start_container" => Agent::start_container(a, id.clone()).await.expect("start"),
        "exec_process" => Agent::exec(a, exec_req(&id)).await.expect("exec"),
        "wait_process_exited" => {
            let status = AgentRpc::wait_process(
                a,
                agent::WaitProcessRequest {
                    container_id: "box".into(),
                    exec_id: id.clone(),
                    ..Default::default()
                },
                CallOpts::default(),
            )
            .await
            .expect("wait");
            assert_eq!(status.status, 0);
        }
        "read_stdout_32k" => {
            let d = Agent::read_process_stdout(a, "yes".into(), "yes".into(), 32 * 1024)
                .await
                .expect("read");
            assert!(!d.is_empty());
        }
        "write_stdin_32k" => {
            Agent::write_process_stdin(a, "sink".into(), "sink".into(), vec![b'z'; 32 * 1024])
                .await
                .expect("write");
        }
        "get_diagnostic_data_4k" => {
            let d = Agent::get_diagnostic_data(a, "termination_log".into(), "msg".into())
                .await
                .expect("diag");
            assert_eq!(d.len(), 4096);
        }
        "copy_file_1m" => Agent::copy_file(
            a,
            source.to_path_buf(),
            "/run/kata-containers/shared/containers/bench-chunk".into(),
        )
        .await
        .expect("copy"),
        other => panic!("no call {other}"),
    }
    let took = t.elapsed();
    // Untimed cleanup: nothing accumulates from one iteration to the next.
    match name {
        "create_container" => Agent::stop_container(a, id).await.expect("remove"),
        "start_container" => {
            exited(sim, &id, &id).await;
            Agent::stop_container(a, id).await.expect("remove");
        }
        "exec_process" => {
            Agent::wait_process(a, "box".into(), id)
                .await
                .expect("wait");
        }
        _ => {}
    }
    took
}

/// The agent calls benched on every transport.
const CALLS: &[&str] = &[
    "check",
    "get_guest_details",
    "create_container",
    "start_container",
    "exec_process",
    "wait_process_exited",
    "read_stdout_32k",
    "write_stdin_32k",
    "get_diagnostic_data_4k",
    "copy_file_1m",
];

fn rpcs(c: &mut Criterion) {
    let rt = runtime();
    let s = setup(&rt);
    let counter = AtomicU64::new(0);
    for (transport, client) in [
        ("in_process", None),
        ("unix", Some(&s.unix)),
        ("hvsock", Some(&s.hvsock)),
    ] {
        let mut group = c.benchmark_group(format!("rpc/{transport}"));
        for name in CALLS {
            group.bench_with_input(BenchmarkId::from_parameter(name), name, |b, name| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (s, counter) = (&s, &counter);
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let n = counter.fetch_add(1, Ordering::Relaxed);
                            total += match client {
                                None => call(&s.sim, &s.sim, name, n, &s.source).await,
                                Some(remote) => call(remote, &s.sim, name, n, &s.source).await,
                            };
                        }
                        total
                    }
                })
            });
        }
        group.finish();
    }
    rt.block_on(s.server.shutdown());
}

criterion_group!(benches, floor, rpcs);
criterion_main!(benches);
