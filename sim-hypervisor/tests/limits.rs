//! What a connection may cost, on both servers (the agent's `AgentServer` and the
//! remote-hypervisor socket), and how they behave out of file descriptors.
//!
//! A test binary of its own (`harness = false`), run as one process with nothing else in it:
//! - memory is counted by a global allocator that tracks the live heap bytes, exact and
//!   immune to what the C allocator keeps cached (RSS, from `/proc/self/status`, is printed
//!   beside it and checked too);
//! - RLIMIT_NOFILE can be lowered without starving tests that would run in parallel.
//!
//! Waits are on the paused tokio clock: `settle` returns once every task is idle (tokio moves
//! a paused clock only when nothing, I/O included, is left to run). The fd-exhaustion check
//! runs on the real clock, over a fixed measurement window.

#![allow(unsafe_code)] // The counting allocator below; it only forwards to `System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use sim_agent::server::MAX_IN_FLIGHT;
use sim_agent::{Agent, AgentServer, RemoteAgent, SimAgent, SimConfig, Trace};
use sim_hypervisor::{Fleet, FleetConfig, RemoteHypervisorServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Counts the bytes live on the heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// The resident set size, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        * 1024
}

/// The most an idle or half-sent connection may cost.
const PER_CONNECTION: isize = 64 << 10;

/// Lets every task run until all are idle (on the paused clock).
async fn settle() {
    tokio::time::sleep(Duration::from_secs(30)).await;
}

/// Warning lines logged (and their bytes), counted by the subscriber's writer.
static LOG_LINES: AtomicUsize = AtomicUsize::new(0);
static LOG_BYTES: AtomicUsize = AtomicUsize::new(0);

struct LineCounter;

impl std::io::Write for LineCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG_LINES.fetch_add(
            buf.iter().filter(|b| **b == b'\n').count(),
            Ordering::Relaxed,
        );
        LOG_BYTES.fetch_add(buf.len(), Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One server under test.
enum Server {
    Agent(AgentServer, SimAgent),
    Hypervisor(RemoteHypervisorServer),
}

impl Server {
    async fn start(kind: &str, dir: &Path) -> (Server, PathBuf) {
        match kind {
            "agent" => {
                let sim = SimAgent::with_config(SimConfig {
                    trace: Some(Trace::bounded(2 * MAX_IN_FLIGHT)),
                    ..Default::default()
                })
                .unwrap();
                let path = dir.join("agent.sock");
                let url = format!("unix://{}", path.display());
                let server = AgentServer::bind(sim.clone(), &[url]).await.unwrap();
                (Server::Agent(server, sim), path)
            }
            _ => {
                let fleet = Arc::new(Fleet::new(FleetConfig::new(dir.join("vms"))).unwrap());
                let path = dir.join("hv.sock");
                let server = RemoteHypervisorServer::bind(&path, fleet).await.unwrap();
                (Server::Hypervisor(server), path)
            }
        }
    }

    /// A request this server answers at once.
    fn ping(&self) -> Vec<u8> {
        match self {
            Server::Agent(..) => request(1, "grpc.Health", "Check", Vec::new()),
            Server::Hypervisor(_) => request(1, "hypervisor.Hypervisor", "Version", Vec::new()),
        }
    }

    async fn shutdown(self) {
        match self {
            Server::Agent(s, _) => s.shutdown().await,
            Server::Hypervisor(s) => s.shutdown().await,
        }
    }
}

fn request(stream_id: u32, service: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
    let mut req = ttrpc::Request::new();
    req.service = service.into();
    req.method = method.into();
    req.payload = payload;
    let body = req.write_to_bytes().unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&body);
    frame
}

/// Sends `frame` and returns the status code of the answer.
async fn round_trip(s: &mut UnixStream, frame: &[u8]) -> i32 {
    s.write_all(frame).await.unwrap();
    let mut h = [0u8; 10];
    s.read_exact(&mut h).await.unwrap();
    let len = u32::from_be_bytes(h[0..4].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    let resp = ttrpc::Response::parse_from_bytes(&body).unwrap();
    resp.status.code.value()
}

/// A header announcing a 4 MiB request, and `sent` bytes of its payload.
fn half_frame(sent: usize) -> Vec<u8> {
    let mut f = (4u32 << 20).to_be_bytes().to_vec();
    f.extend_from_slice(&1u32.to_be_bytes());
    f.extend_from_slice(&[1, 0]);
    f.extend(std::iter::repeat_n(0x0a, sent));
    f
}

fn runtime(paused: bool) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_all();
    if paused {
        b.start_paused(true);
    }
    b.build().unwrap()
}

fn kib(bytes: isize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// Idle and half-sent connections cost at most 64 KiB each.
async fn per_connection_cost(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (server, path) = Server::start(kind, dir.path()).await;
    let ping = server.ping();
    let mut warm = UnixStream::connect(&path).await.unwrap();
    assert_eq!(round_trip(&mut warm, &ping).await, 0);
    drop(warm);
    settle().await;
    const N: usize = 200;
    for (what, sent) in [
        ("idle", None),
        ("half-sent (10 B)", Some(0)),
        ("half-sent (4 KiB)", Some(4096)),
    ] {
        let base = live();
        let mut conns = Vec::new();
        for _ in 0..N {
            let mut s = UnixStream::connect(&path).await.unwrap();
            if let Some(n) = sent {
                s.write_all(&half_frame(n)).await.unwrap();
            }
            conns.push(s);
        }
        settle().await;
        let per = (live() - base) / N as isize;
        println!(
            "{kind}: an {what} connection costs {} (client side included)",
            kib(per)
        );
        assert!(
            per <= PER_CONNECTION,
            "{kind}: an {what} connection costs {}, over {}",
            kib(per),
            kib(PER_CONNECTION)
        );
        drop(conns);
        settle().await;
        let after = live() - base;
        assert!(
            after < (N as isize) * 1024,
            "{kind}: {} still held after {N} {what} connections closed",
            kib(after)
        );
    }
    // Still serving.
    let mut s = UnixStream::connect(&path).await.unwrap();
    assert_eq!(round_trip(&mut s, &ping).await, 0);
    drop(s);
    server.shutdown().await;
}

/// After 1,000 half-sent connections close, memory is back within 10 % of its baseline.
async fn thousand_closes(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (server, path) = Server::start(kind, dir.path()).await;
    let ping = server.ping();
    // Warm up with the same load, so that one-time growth (tokio's I/O slab, lazily built
    // tables) is in the baseline.
    for round in 0..2 {
        let (base_live, base_rss) = (live(), rss());
        let mut conns = Vec::new();
        for _ in 0..1000 {
            let mut s = UnixStream::connect(&path).await.unwrap();
            s.write_all(&half_frame(8192)).await.unwrap();
            conns.push(s);
        }
        settle().await;
        let (peak_live, peak_rss) = (live(), rss());
        drop(conns);
        settle().await;
        let (end_live, end_rss) = (live(), rss());
        let mut s = UnixStream::connect(&path).await.unwrap();
        assert_eq!(round_trip(&mut s, &ping).await, 0);
        drop(s);
        settle().await;
        if round == 0 {
            continue;
        }
        println!(
            "{kind}: 1,000 half-sent connections: heap {} -> {} -> {} KiB, RSS {} -> {} -> {} KiB",
            base_live / 1024,
            peak_live / 1024,
            end_live / 1024,
            base_rss / 1024,
            peak_rss / 1024,
            end_rss / 1024
        );
        assert!(
            end_live <= base_live + base_live / 10,
            "{kind}: heap {} KiB after the closes, baseline {} KiB",
            end_live / 1024,
            base_live / 1024
        );
        assert!(
            end_rss <= base_rss + base_rss / 10,
            "{kind}: RSS {} KiB after the closes, baseline {} KiB",
            end_rss / 1024,
            base_rss / 1024
        );
    }
    server.shutdown().await;
}

/// 100,000 pipelined WaitProcess calls, answers unread: at most MAX_IN_FLIGHT are taken (the
/// rest refused), and the memory goes when the client hangs up.
async fn pipelined_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (server, path) = Server::start("agent", dir.path()).await;
    let Server::Agent(_, sim) = &server else {
        unreachable!()
    };
    let url = format!("unix://{}", path.display());
    let a = RemoteAgent::connect(&url).await.unwrap();
    a.create_container(sim_agent::requests::create_container("c1", &["cat"]))
        .await
        .unwrap();
    a.start_container("c1".into()).await.unwrap();
    settle().await;
    let base = live();
    let wait = sim_agent::protocols::agent::WaitProcessRequest {
        container_id: "c1".into(),
        exec_id: "c1".into(),
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap();
    let mut frames = Vec::new();
    for i in 0..100_000u32 {
        frames.extend(request(
            2 * i + 1,
            "grpc.AgentService",
            "WaitProcess",
            wait.clone(),
        ));
    }
    let frames_len = frames.len() as isize;
    let stream = UnixStream::connect(&path).await.unwrap();
    let (_rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&frames).await;
        wr
    });
    settle().await;
    let taken = sim
        .trace()
        .events()
        .iter()
        .filter(|e| e.method == sim_agent::Op::Agent(sim_agent::Method::WaitProcess))
        .count();
    let grown = live() - base - frames_len;
    println!(
        "agent: 100,000 pipelined WaitProcess: {taken} taken, {} held by the server",
        kib(grown)
    );
    assert_eq!(taken, MAX_IN_FLIGHT, "calls taken off one connection");
    assert!(
        grown < (MAX_IN_FLIGHT as isize) * 16 * 1024,
        "{} held for {MAX_IN_FLIGHT} calls",
        kib(grown)
    );
    // Other connections are served meanwhile.
    a.check().await.unwrap();
    writer.abort();
    let _ = writer.await;
    drop(_rd);
    settle().await;
    let after = live() - base;
    println!("agent: after the hang-up: {} held", kib(after));
    // What stays is the trace's record of the calls taken (bounded).
    assert!(after < 1 << 20, "{} kept after the hang-up", kib(after));
    a.check().await.unwrap();
    drop(a);
    server.shutdown().await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn cpu_time() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t =
        |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
    t(u.user_time()) + t(u.system_time())
}

/// Out of file descriptors, both accept loops back off and log once, then serve again.
async fn fd_exhaustion() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let dir = tempfile::tempdir().unwrap();
    let (agent, agent_path) = Server::start("agent", dir.path()).await;
    let (hv, hv_path) = Server::start("hypervisor", dir.path()).await;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, open_fds() as u64 + 16, hard).unwrap();
    let mut filler = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => filler.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(24), "{e}");
                break;
            }
        }
    }
    // Two descriptors for the clients; none is left for the servers to accept with.
    filler.truncate(filler.len() - 2);
    // Connected without yielding, so that the servers cannot accept before both are in.
    let connect = |p: &Path| {
        let s = std::os::unix::net::UnixStream::connect(p).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    };
    let (to_agent, to_hv) = (connect(&agent_path), connect(&hv_path));
    let mut to_agent = UnixStream::from_std(to_agent).unwrap();
    let mut to_hv = UnixStream::from_std(to_hv).unwrap();
    let (lines, bytes, cpu, start) = (
        LOG_LINES.load(Ordering::Relaxed),
        LOG_BYTES.load(Ordering::Relaxed),
        cpu_time(),
        Instant::now(),
    );
    // The measurement window: a fixed stretch of real time with both listeners failing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wall = start.elapsed();
    let cpu = cpu_time() - cpu;
    let lines = LOG_LINES.load(Ordering::Relaxed) - lines;
    let bytes = LOG_BYTES.load(Ordering::Relaxed) - bytes;
    println!(
        "out of fds for {wall:?}: {lines} log lines ({bytes} B), CPU {cpu:?} ({:.1} %)",
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
    assert!(
        (2..=4).contains(&lines),
        "{lines} log lines in {wall:?}: each listener must say it once"
    );
    assert!(
        cpu < wall / 4,
        "the accept loops spin: {cpu:?} of CPU in {wall:?}"
    );
    // Descriptors free up: the connections waiting in the backlog are served.
    drop(filler);
    let limit = Duration::from_secs(5);
    let code = tokio::time::timeout(limit, round_trip(&mut to_agent, &agent.ping()))
        .await
        .expect("the agent server serves again");
    assert_eq!(code, 0);
    let code = tokio::time::timeout(limit, round_trip(&mut to_hv, &hv.ping()))
        .await
        .expect("the hypervisor server serves again");
    assert_eq!(code, 0);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    drop((to_agent, to_hv));
    agent.shutdown().await;
    hv.shutdown().await;
}

fn main() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // Two descriptors per connection (both ends live here), 1,000 connections at once.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(|| LineCounter)
        .init();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let tests: [(&str, fn()); 6] = [
        ("agent_per_connection_cost", || {
            runtime(true).block_on(per_connection_cost("agent"))
        }),
        ("hypervisor_per_connection_cost", || {
            runtime(true).block_on(per_connection_cost("hypervisor"))
        }),
        ("agent_thousand_closes", || {
            runtime(true).block_on(thousand_closes("agent"))
        }),
        ("hypervisor_thousand_closes", || {
            runtime(true).block_on(thousand_closes("hypervisor"))
        }),
        ("agent_pipelined_waits", || {
            runtime(true).block_on(pipelined_waits())
        }),
        ("fd_exhaustion", || runtime(false).block_on(fd_exhaustion())),
    ];
    let mut ran = 0;
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        println!();
        test();
        println!("test {name} ... ok");
        ran += 1;
    }
    println!("test result: ok. {ran} passed");
}
