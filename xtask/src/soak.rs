//! `cargo xtask soak [--duration D] [--seed N] [--concurrency C] [--release]`: starts the real
//! `kata-sim serve` on a temporary socket and state directory, with fault rules installed at
//! start, and runs random pod lifecycles against it from `concurrency` (default 64) clients
//! at once for D (default 2m), as a runtime does: RemoteHypervisor for CreateVM, StartVM and
//! StopVM, RemoteAgent for the agent calls (CreateSandbox, CopyFile, CreateContainer,
//! StartContainer, WaitProcess, GetDiagnosticData, SignalProcess, RemoveContainer,
//! DestroySandbox).
//!
//! Each pod draws (from the seed and its number) a script for its container and one fault or
//! none; the faults are keyed by the container id (or by the VM id, from a pool of faulty VM
//! names), so each pod knows exactly which error its fault must cause. Any other error, a
//! wrong exit status or termination message, or a pod that does not finish within a minute
//! is an unexpected error. It reports pods/s, latency percentiles, the server's resident
//! memory (VmRSS) and open fds after warm-up, at the end of the load and once idle, and what
//! is left in the state directory, and fails unless: no unexpected error, RSS growth after
//! warm-up under 5%, nothing left on disk after the server stops (SIGTERM).

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore as _, SeedableRng as _};
use sim_agent::{Agent, RemoteAgent, requests};
use sim_hypervisor::{Hypervisor, HypervisorConfig, Network, RemoteHypervisor};

/// Options of `cargo xtask soak`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// How long the load runs: 90, 90s, 2m, 1h or 500ms.
    #[arg(long, value_name = "D", default_value = "2m", value_parser = parse_duration)]
    pub duration: Duration,
    /// The seed of every choice (printed; default: the time).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Pods in flight at once.
    #[arg(long, value_name = "C", default_value = "64")]
    pub concurrency: std::num::NonZeroUsize,
    /// Build and run a release `kata-sim`.
    #[arg(long)]
    pub release: bool,
}

/// Parses `90`, `90s`, `2m`, `1h` or `500ms`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad duration {s:?} (e.g. 90s, 2m)"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => bail!("bad duration unit in {s:?} (ms, s, m or h)"),
    })
}

/// The fault a pod carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    None,
    /// CreateContainer answers INTERNAL.
    CreateError,
    /// StartContainer answers UNAVAILABLE.
    StartError,
    /// WaitProcess answers 20-30 ms late.
    WaitDelay,
    /// GetDiagnosticData answers NOT_FOUND.
    DiagError,
    /// SignalProcess closes the connection unanswered.
    SignalDrop,
    /// RemoveContainer kills the VM.
    KillGuest,
    /// StartVM answers UNAVAILABLE (a VM from the pool of faulty names).
    StartVmError,
}

/// The faults a pod draws from, each with its weight (of 100; `None` takes the rest).
const FAULTS: &[(Fault, u64)] = &[
    (Fault::CreateError, 6),
    (Fault::StartError, 6),
    (Fault::WaitDelay, 6),
    (Fault::DiagError, 6),
    (Fault::SignalDrop, 6),
    (Fault::KillGuest, 6),
    (Fault::StartVmError, 6),
];

/// VM names whose StartVM fails; a pod with that fault borrows one.
const FAULTY_VMS: usize = 8;

impl Fault {
    /// The container id whose calls the fault hits.
    fn container(self) -> &'static str {
        match self {
            Fault::None | Fault::StartVmError => "c1",
            Fault::CreateError => "f-create",
            Fault::StartError => "f-start",
            Fault::WaitDelay => "f-delay",
            Fault::DiagError => "f-diag",
            Fault::SignalDrop => "f-drop",
            Fault::KillGuest => "f-kill",
        }
    }
}

/// The rules `kata-sim serve` starts with.
fn rules() -> Vec<String> {
    let mut r = vec![
        r#"CreateContainer{container_id=f-create}=error(INTERNAL,"soak: create")"#.to_string(),
        r#"StartContainer{container_id=f-start}=error(UNAVAILABLE,"soak: start")"#.to_string(),
        "WaitProcess{container_id=f-delay}=delay(20ms, 10ms)".to_string(),
        r#"GetDiagnosticData{container_id=f-diag}=error(NOT_FOUND,"soak: diag")"#.to_string(),
        "SignalProcess{container_id=f-drop}=drop(before)".to_string(),
        "RemoveContainer{container_id=f-kill}=kill_guest".to_string(),
    ];
    for k in 0..FAULTY_VMS {
        r.push(format!(
            r#"StartVM{{sandbox=soak-vmfault-{k}}}=error(UNAVAILABLE,"soak: startvm")"#
        ));
    }
    r
}

/// What a pod's container runs: the script, its exit status and its termination message.
const SCRIPTS: &[(&str, i32, &str)] = &[
    ("echo done > /dev/termination-log", 0, "done\n"),
    ("seq 3 > /dev/termination-log", 0, "1\n2\n3\n"),
    ("echo bye > /dev/termination-log; exit 3", 3, "bye\n"),
    (
        "yes | head -n 2 | tr y n > /dev/termination-log; sleep 0.01",
        0,
        "n\nn\n",
    ),
    ("printf abc | wc -c > /dev/null; exit 1", 1, ""),
];

/// Where the termination message is copied in the guest.
fn term_path(cid: &str) -> String {
    format!("/run/kata-containers/shared/containers/{cid}-termination-log")
}

/// One pod's draw.
struct Plan {
    fault: Fault,
    script: (&'static str, i32, &'static str),
}

fn plan(seed: u64, pod: u64) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ pod.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut draw = rng.next_u64() % 100;
    let mut fault = Fault::None;
    for &(f, w) in FAULTS {
        if draw < w {
            fault = f;
            break;
        }
        draw -= w;
    }
    let script = SCRIPTS[(rng.next_u64() % SCRIPTS.len() as u64) as usize];
    Plan { fault, script }
}

/// Shared state of the load.
struct Load {
    socket: PathBuf,
    term_file: PathBuf,
    seed: u64,
    deadline: Instant,
    next: AtomicU64,
    faulty_vms: Mutex<Vec<usize>>,
    results: Mutex<Results>,
}

#[derive(Default)]
struct Results {
    latencies: Vec<Duration>,
    by_fault: std::collections::BTreeMap<Fault, u64>,
    unexpected: Vec<String>,
}

/// Turns a client error into text.
fn e(step: &str) -> impl Fn(&dyn std::fmt::Display) -> String + '_ {
    move |err| format!("{step}: {err}")
}

/// Requires `r` to be the error the fault causes (its message contains `marker`).
fn expect_fault<T, E: std::fmt::Display>(
    step: &str,
    r: Result<T, E>,
    marker: &str,
) -> Result<(), String> {
    match r {
        Ok(_) => Err(format!("{step}: the injected fault did not fail it")),
        Err(err) if err.to_string().contains(marker) => Ok(()),
        Err(err) => Err(format!("{step}: {err} (the fault injected {marker:?})")),
    }
}

/// Requires `r` to have failed as a connection the fault closed (or a guest it killed) fails.
fn expect_closed<T>(step: &str, r: sim_agent::Result<T>) -> Result<(), String> {
    match r {
        Ok(_) => Err(format!("{step}: the injected fault did not fail it")),
        Err(sim_agent::AgentError::ConnectionClosed | sim_agent::AgentError::Transport(_)) => {
            Ok(())
        }
        Err(err) => Err(format!("{step}: {err} (the fault closed the connection)")),
    }
}

/// One pod, start to finish. `Err` is an error that its fault did not cause.
async fn pod(load: &Load, n: u64, step: &Mutex<&'static str>) -> Result<Fault, String> {
    let set = |s: &'static str| *step.lock().unwrap_or_else(|p| p.into_inner()) = s;
    let Plan { mut fault, script } = plan(load.seed, n);
    let mut slot = None;
    if fault == Fault::StartVmError {
        slot = load
            .faulty_vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        if slot.is_none() {
            fault = Fault::None;
        }
    }
    let id = match slot {
        Some(k) => format!("soak-vmfault-{k}"),
        None => format!("soak-{n}"),
    };
    set("connect to the hypervisor");
    let hv = RemoteHypervisor::connect(&load.socket)
        .await
        .map_err(|x| e("connect")(&x))?;
    let r = pod_steps(load, &hv, &id, fault, script, &set).await;
    if r.is_err() {
        // As a runtime does after a failure: stop the VM (it may be gone already).
        let _ = hv.stop_vm(false).await;
    }
    if let Some(k) = slot {
        load.faulty_vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(k);
    }
    r.map(|()| fault)
}

async fn pod_steps(
    load: &Load,
    hv: &RemoteHypervisor,
    id: &str,
    fault: Fault,
    (script, status, message): (&'static str, i32, &'static str),
    set: &impl Fn(&'static str),
) -> Result<(), String> {
    set("CreateVM");
    hv.create_vm(id.into(), Network::default(), HypervisorConfig::default())
        .await
        .map_err(|x| e("CreateVM")(&x))?;
    set("StartVM");
    let started = hv.start_vm(30).await;
    if fault == Fault::StartVmError {
        expect_fault("StartVM", started, "soak: startvm")?;
        set("StopVM");
        // The runtime tears down a VM that failed to start.
        return hv.stop_vm(false).await.map_err(|x| e("StopVM")(&x));
    }
    started.map_err(|x| e("StartVM")(&x))?;
    set("dial the agent");
    let url = hv
        .get_agent_socket()
        .await
        .map_err(|x| e("agent socket")(&x))?;
    let mut agent = RemoteAgent::connect(&url)
        .await
        .map_err(|x| e("dial")(&x))?;
    set("CreateSandbox");
    agent
        .start_sandbox(requests::create_sandbox(id))
        .await
        .map_err(|x| e("CreateSandbox")(&x))?;
    let cid = fault.container();
    let term = term_path(cid);
    set("CopyFile");
    agent
        .copy_file(load.term_file.clone(), term.clone())
        .await
        .map_err(|x| e("CopyFile")(&x))?;
    set("CreateContainer");
    let req = requests::with_termination_log(
        requests::create_container(cid, &["sh", "-c", script]),
        &term,
    );
    let created = agent.create_container(req).await;
    let teardown = |agent: RemoteAgent| async move {
        set("DestroySandbox");
        agent
            .stop_sandbox()
            .await
            .map_err(|x| e("DestroySandbox")(&x))?;
        drop(agent);
        set("StopVM");
        hv.stop_vm(false).await.map_err(|x| e("StopVM")(&x))
    };
    if fault == Fault::CreateError {
        expect_fault("CreateContainer", created, "soak: create")?;
        return teardown(agent).await;
    }
    created.map_err(|x| e("CreateContainer")(&x))?;
    set("StartContainer");
    let start = agent.start_container(cid.into()).await;
    if fault == Fault::StartError {
        expect_fault("StartContainer", start, "soak: start")?;
        set("RemoveContainer");
        agent
            .stop_container(cid.into())
            .await
            .map_err(|x| e("RemoveContainer")(&x))?;
        return teardown(agent).await;
    }
    start.map_err(|x| e("StartContainer")(&x))?;
    set("WaitProcess");
    let got = agent
        .wait_process(cid.into(), cid.into())
        .await
        .map_err(|x| e("WaitProcess")(&x))?;
    if got != status {
        return Err(format!(
            "WaitProcess: status {got}, want {status} ({script})"
        ));
    }
    set("GetDiagnosticData");
    let diag = agent
        .get_diagnostic_data("termination_log".into(), cid.into())
        .await;
    if fault == Fault::DiagError {
        expect_fault("GetDiagnosticData", diag, "soak: diag")?;
    } else {
        let got = diag.map_err(|x| e("GetDiagnosticData")(&x))?;
        if got != message {
            return Err(format!(
                "GetDiagnosticData: {got:?}, want {message:?} ({script})"
            ));
        }
    }
    set("SignalProcess");
    let signalled = agent
        .signal_process(cid.into(), String::new(), 9, true)
        .await;
    if fault == Fault::SignalDrop {
        expect_closed("SignalProcess", signalled)?;
        // The runtime dials again.
        set("dial the agent again");
        agent = RemoteAgent::connect(&url)
            .await
            .map_err(|x| e("dial again")(&x))?;
    } else {
        signalled.map_err(|x| e("SignalProcess")(&x))?;
    }
    set("RemoveContainer");
    let removed = agent.stop_container(cid.into()).await;
    if fault == Fault::KillGuest {
        expect_closed("RemoveContainer", removed)?;
        drop(agent);
        set("StopVM");
        return hv.stop_vm(false).await.map_err(|x| e("StopVM")(&x));
    }
    removed.map_err(|x| e("RemoveContainer")(&x))?;
    teardown(agent).await
}

async fn worker(load: Arc<Load>) {
    while Instant::now() < load.deadline {
        let n = load.next.fetch_add(1, Ordering::Relaxed);
        let step = Mutex::new("start");
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(60), pod(&load, n, &step)).await;
        let took = t0.elapsed();
        let mut res = load.results.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok(Ok(fault)) => {
                res.latencies.push(took);
                *res.by_fault.entry(fault).or_default() += 1;
            }
            Ok(Err(why)) => res.unexpected.push(format!("pod {n}: {why}")),
            Err(_) => {
                let at = *step.lock().unwrap_or_else(|p| p.into_inner());
                res.unexpected
                    .push(format!("pod {n}: no answer within 60 s at {at}"));
            }
        }
    }
}

/// Resident memory (KiB) and open fds of a process.
fn probe(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// Every path under `dir`, relative.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            out.push(
                p.strip_prefix(dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned(),
            );
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Runs `cargo xtask soak`.
pub fn run(o: &Options) -> anyhow::Result<()> {
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let mut build = vec!["build", "--quiet", "-p", "kata-sim", "--bin", "kata-sim"];
    if o.release {
        build.push("--release");
    }
    crate::run(&build, &[])?;
    let binary = crate::target_dir()?
        .join(if o.release { "release" } else { "debug" })
        .join("kata-sim");
    let dir = tempfile::Builder::new()
        .prefix("kata-sim-soak-")
        .tempdir()?;
    let socket = dir.path().join("hypervisor.sock");
    let state = dir.path().join("vms");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let term_file = dir.path().join("termination-log");
    std::fs::write(&term_file, b"")?;
    println!(
        "soak: seed {}, {} pods in flight, {} s, kata-sim {} in {}",
        seed,
        o.concurrency.get(),
        o.duration.as_secs(),
        if o.release { "release" } else { "debug" },
        dir.path().display()
    );
    let mut cmd = Command::new(&binary);
    cmd.args(["serve", "--hypervisor-socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(&state)
        .args(["--seed", &seed.to_string()])
        // Guest roots and anything else the server puts in a temporary directory.
        .env("TMPDIR", &tmp)
        // Its readiness line and per-VM lines, and every warning and error.
        .env("RUST_LOG", "warn,sim_hypervisor=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for rule in rules() {
        cmd.arg("--fault").arg(rule);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id();
    // The server's log: readiness, and its warnings and errors.
    let stderr = child.stderr.take().context("no stderr")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut lines = 0u64;
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if line.contains("remote hypervisor listening") {
                let _ = ready_tx.send(());
            }
            if line.contains("WARN") || line.contains("ERROR") {
                lines += 1;
                if kept.len() < 20 {
                    kept.push(line);
                }
            }
        }
        (lines, kept)
    });
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        let (_, kept) = log.join().unwrap_or_default();
        bail!("kata-sim serve did not start:\n{}", kept.join("\n"));
    }
    let (rss_start, fds_start) = probe(pid);

    let start = Instant::now();
    let load = Arc::new(Load {
        socket: socket.clone(),
        term_file,
        seed,
        deadline: start + o.duration,
        next: AtomicU64::new(0),
        faulty_vms: Mutex::new((0..FAULTY_VMS).collect()),
        results: Mutex::default(),
    });
    let warmup = (o.duration / 5).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (warm, loaded, peak) = rt.block_on(async {
        let workers: Vec<_> = (0..o.concurrency.get())
            .map(|_| tokio::spawn(worker(Arc::clone(&load))))
            .collect();
        tokio::time::sleep(warmup).await;
        let warm = probe(pid);
        let mut peak = warm;
        // Sample once a second until just before the end of the load.
        while Instant::now() + Duration::from_secs(2) < load.deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let p = probe(pid);
            peak = (peak.0.max(p.0), peak.1.max(p.1));
        }
        let loaded = probe(pid);
        for w in workers {
            let _ = w.await;
        }
        (warm, loaded, peak)
    });
    let elapsed = start.elapsed();
    let idle = probe(pid);
    let state_idle = leftovers(&state);
    drop(rt);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = child.wait()?;
    let (log_lines, log_head) = log.join().unwrap_or_default();
    let mut left = leftovers(&state);
    left.extend(leftovers(&tmp).into_iter().map(|p| format!("$TMPDIR/{p}")));
    if socket.exists() {
        left.push("hypervisor.sock".into());
    }

    let res = load.results.lock().unwrap_or_else(|p| p.into_inner());
    let mut lat = res.latencies.clone();
    lat.sort();
    let pods = lat.len() + res.unexpected.len();
    let growth = (loaded.0 as f64 - warm.0 as f64) / warm.0.max(1) as f64 * 100.0;
    println!(
        "pods: {pods} in {:.1} s = {:.0}/s ({} unexpected errors)",
        elapsed.as_secs_f64(),
        pods as f64 / elapsed.as_secs_f64(),
        res.unexpected.len()
    );
    println!(
        "latency of a pod: p50 {}, p90 {}, p99 {}, max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default())
    );
    println!(
        "faults: {}",
        res.by_fault
            .iter()
            .map(|(f, n)| format!("{f:?} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "server RSS: {} KiB at start, {} after warm-up ({} s), {} at the end of the load, peak {}, {} idle: growth after warm-up {growth:+.1}%",
        rss_start,
        warm.0,
        warmup.as_secs(),
        loaded.0,
        peak.0,
        idle.0
    );
    println!(
        "server fds: {fds_start} at start, {} after warm-up, {} at the end of the load, peak {}, {} idle",
        warm.1, loaded.1, peak.1, idle.1
    );
    println!(
        "state dir once idle: {} entries; after SIGTERM ({status}): {} left behind{}",
        state_idle.len(),
        left.len(),
        if left.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                left.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
            )
        }
    );
    if !state_idle.is_empty() {
        println!(
            "  in the state dir once idle: {}",
            state_idle
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("server log: {log_lines} warnings and errors");
    for line in log_head.iter().take(5) {
        println!("  {line}");
    }
    let mut first = res.unexpected.clone();
    first.sort();
    first.dedup();
    for u in first.iter().take(10) {
        println!("unexpected: {u}");
    }
    let mut missed = Vec::new();
    if !res.unexpected.is_empty() {
        missed.push(format!("{} unexpected errors", res.unexpected.len()));
    }
    if growth >= 5.0 {
        missed.push(format!("RSS grew {growth:.1}% after warm-up"));
    }
    if !left.is_empty() || !state_idle.is_empty() {
        missed.push(format!(
            "{} files left behind ({} while idle)",
            left.len(),
            state_idle.len()
        ));
    }
    if !status.success() {
        missed.push(format!("kata-sim serve exited with {status}"));
    }
    if lat.is_empty() {
        missed.push("no pod completed".into());
    }
    if missed.is_empty() {
        println!("soak: every target met (seed {})", seed);
        Ok(())
    } else {
        bail!("soak (seed {}): {}", seed, missed.join("; "))
    }
}
