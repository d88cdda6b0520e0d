//! Whole-system benches.
//!
//! - `lifecycle/{in_process,wire}`: one pod from CreateVM to StopVM with a container through
//!   its stop and the termination-log copy, as the built-in host's `go` persona runs it (its
//!   calls and its profile row's stop order: CreateVM, StartVM, Check, CreateSandbox,
//!   GetGuestDetails, CopyFile, CreateContainer, StartContainer, WaitProcess, SignalProcess,
//!   WaitProcess, GetDiagnosticData, RemoveContainer, RemoveStaleVirtiofsShareMounts,
//!   DestroySandbox, StopVM). VMs boot in no time here: no hidden sleeps.
//! - `scale/check/{1000,100,1}`: Check on one guest while 1,000, 100 or 1 sandboxes run in one
//!   fleet (each with its own agent socket). The growth of the resident set is written to
//!   `target/criterion/scale-rss.json` for `cargo xtask bench-report`; this group runs first,
//!   largest fleet first, so that the figure starts from a clean process.
//! - `scenarios/library`: the bundled scenario library in-process (throughput).
//! - `parallel/library_x20/{1,2}`: the library x 20 seeds on one thread and on two;
//!   `matrix/go/{1,2}`: the go persona's whole fault matrix, the same two ways.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kata_sim::host::persona::{self, StopPart};
use kata_sim::schema::Persona;
use sim_agent::protocols::agent;
use sim_agent::requests;
use sim_agent::{Agent, RemoteAgent, SimConfig};
use sim_hypervisor::{
    Fleet, FleetConfig, Hypervisor, HypervisorConfig, Network, RemoteHypervisor,
    RemoteHypervisorServer, SimHypervisor, SimVmConfig,
};

/// One thread for client and server, as in the RPC benches, so that the lifecycle and the
/// single Check it is compared with are measured alike.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

const TERM: &str = "/run/kata-containers/shared/containers/c1-termination-log";

fn container() -> agent::CreateContainerRequest {
    requests::with_termination_log(
        requests::create_container("c1", &["sh", "-c", "echo done > /dev/termination-log"]),
        TERM,
    )
}

/// The agent half of a pod, on any client, as the built-in host's `go` persona runs it: its
/// [`persona::PersonaCalls`] for each call and its profile row's exec id and stop order, so
/// the bench measures the lifecycle the scenarios replay. `lap` is called after each step
/// with its name and the round trips it made.
async fn pod<A, H>(
    a: &A,
    sandbox: &str,
    term: &std::path::Path,
    lap: &mut impl FnMut(&'static str, u32),
) where
    A: Agent + sim_agent::AgentRpc + Sync + 'static,
    H: Hypervisor + 'static,
{
    let profile = persona::profile(Persona::Go);
    let calls = persona::calls::<A, H>(Persona::Go);
    calls
        .start_sandbox(
            a,
            agent::CreateSandboxRequest {
                sandbox_id: sandbox.into(),
                ..Default::default()
            },
        )
        .await
        .expect("sandbox");
    lap("Check, CreateSandbox, GetGuestDetails", 3);
    calls
        .copy_file(a, term.to_path_buf(), TERM.into(), Vec::new(), 0o644)
        .await
        .expect("copy");
    lap("CopyFile", 1);
    calls
        .create_container(a, container())
        .await
        .expect("create");
    lap("CreateContainer", 1);
    calls.start_container(a, "c1").await.expect("start");
    lap("StartContainer", 1);
    let eid = profile.exec_id.of("c1");
    assert_eq!(
        Agent::wait_process(a, "c1".into(), eid.clone())
            .await
            .expect("wait"),
        0
    );
    lap("WaitProcess", 1);
    for part in profile.stop_order {
        match part {
            StopPart::Kill => {
                assert!(calls.kill(a, "c1", &eid).await.is_none(), "kill");
                lap("SignalProcess", 1);
            }
            // The wait above reaped the process already.
            StopPart::Reap => {}
            StopPart::WaitAgain => {
                calls.wait_again(a, "c1", &eid).await;
                lap("WaitProcess again", 1);
            }
            StopPart::CopyTerminationMessage => {
                let msg = calls.termination_message(a, "c1").await.expect("diag");
                assert_eq!(msg, "done\n");
                lap("GetDiagnosticData", 1);
            }
            StopPart::Remove => {
                assert!(calls.remove_container(a, "c1").await.is_none(), "remove");
                lap("RemoveContainer", 1);
            }
            StopPart::RemoveStaleMounts => {
                calls.remove_stale_mounts(a).await;
                lap("RemoveStaleVirtiofsShareMounts", 1);
            }
        }
    }
    assert!(calls.stop_sandbox(a).await.is_none(), "destroy");
    lap("DestroySandbox", 1);
}

/// A whole pod on a [`SimHypervisor`] of this process, with no wire anywhere.
async fn in_process_pod(
    settings: &SimVmConfig,
    id: String,
    term: &std::path::Path,
    lap: &mut impl FnMut(&'static str, u32),
) {
    let vm = SimHypervisor::new(settings.clone());
    vm.create_vm(id.clone(), Network::default(), HypervisorConfig::default())
        .await
        .expect("create vm");
    lap("CreateVM", 1);
    vm.start_vm(60).await.expect("start vm");
    lap("StartVM", 1);
    let guest = vm.agent().expect("guest");
    pod::<_, SimHypervisor>(&guest, &id, term, lap).await;
    vm.stop_vm(false).await.expect("stop vm");
    vm.cleanup().await.expect("cleanup");
    lap("StopVM", 1);
}

/// A whole pod through `kata-sim`'s remote-hypervisor service and the guest's own socket.
async fn wire_pod(
    socket: &std::path::Path,
    id: String,
    term: &std::path::Path,
    lap: &mut impl FnMut(&'static str, u32),
) {
    let hv = RemoteHypervisor::connect(socket).await.expect("hv");
    lap("connect to the hypervisor", 1);
    hv.create_vm(id.clone(), Network::default(), HypervisorConfig::default())
        .await
        .expect("create vm");
    lap("CreateVM", 1);
    hv.start_vm(60).await.expect("start vm");
    lap("StartVM", 1);
    let url = hv.get_agent_socket().await.expect("socket");
    let agent = RemoteAgent::connect(&url).await.expect("agent");
    lap("dial the agent", 1);
    pod::<_, RemoteHypervisor>(&agent, &id, term, lap).await;
    // The runtime hangs up before it stops the VM, as the shims do.
    drop(agent);
    hv.stop_vm(false).await.expect("stop vm");
    lap("StopVM", 1);
}

fn lifecycle(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let term = dir.path().join("term");
    std::fs::write(&term, b"").expect("term file");
    let mut group = c.benchmark_group("lifecycle");
    let mut n = 0u64;
    let settings = SimVmConfig {
        state_dir: dir.path().join("local"),
        boot_time: Duration::ZERO,
        ..Default::default()
    };
    group.bench_function("in_process", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let id = format!("p{n}");
            let (settings, term) = (&settings, &term);
            async move { in_process_pod(settings, id, term, &mut |_, _| {}).await }
        })
    });
    let mut config = FleetConfig::new(dir.path().join("vms"));
    config.vm.boot_time = Duration::ZERO;
    let fleet = Arc::new(Fleet::new(config).expect("fleet"));
    let socket = dir.path().join("hv.sock");
    let server = rt
        .block_on(RemoteHypervisorServer::bind(&socket, fleet))
        .expect("serve");
    group.bench_function("wire", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let id = format!("w{n}");
            let (socket, term) = (&socket, &term);
            async move { wire_pod(socket, id, term, &mut |_, _| {}).await }
        })
    });
    group.finish();
    phases(&rt, &settings, &socket, &term);
    rt.block_on(server.shutdown());
}

/// Times every step of the lifecycle, in-process and over the wire (the profile behind the
/// lifecycle row of `cargo xtask bench-report`), and writes the medians to
/// `target/criterion/lifecycle-phases.json`. Under `--test` it runs each kind once.
fn phases(
    rt: &tokio::runtime::Runtime,
    settings: &SimVmConfig,
    socket: &std::path::Path,
    term: &std::path::Path,
) {
    let pods = if std::env::args().any(|a| a == "--test") {
        1
    } else {
        300
    };
    let mut samples: BTreeMap<(&str, &str), Vec<Duration>> = BTreeMap::new();
    // The steps in the order the wire pod made them, with their round trips (the persona's
    // stop order decides it; the in-process pod has no connection steps).
    let mut steps: Vec<(&'static str, u32)> = Vec::new();
    for i in 0..pods {
        for kind in ["in_process", "wire"] {
            let id = format!("phase-{kind}-{i}");
            let mut last = Instant::now();
            let mut lap = |step: &'static str, trips: u32| {
                let now = Instant::now();
                samples.entry((kind, step)).or_default().push(now - last);
                last = now;
                if kind == "wire" && i == 0 {
                    steps.push((step, trips));
                }
            };
            rt.block_on(async {
                match kind {
                    "wire" => wire_pod(socket, id, term, &mut lap).await,
                    _ => in_process_pod(settings, id, term, &mut lap).await,
                }
            });
        }
    }
    let median = |kind: &str, step: &str| {
        let mut v = samples.get(&(kind, step)).cloned().unwrap_or_default();
        v.sort();
        v.get(v.len() / 2).map_or(0, |d| d.as_nanos())
    };
    let rows: Vec<String> = steps
        .iter()
        .map(|(step, trips)| {
            format!(
                "  {{\"step\": \"{step}\", \"round_trips\": {trips}, \"wire_ns\": {}, \"in_process_ns\": {}}}",
                median("wire", step),
                median("in_process", step)
            )
        })
        .collect();
    let json = format!("[\n{}\n]\n", rows.join(",\n"));
    let out = criterion_home();
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("lifecycle-phases.json"), json);
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn scale(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("scale/check");
    let mut rss = Vec::new();
    // Largest first: the process's resident set only grows, so each later (smaller) fleet
    // reuses pages the first one touched; the 1,000 figure is measured from a clean start.
    for n in [1_000usize, 100, 1] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = FleetConfig::new(dir.path().join("vms"));
        config.vm.boot_time = Duration::ZERO;
        config.vm.agent = SimConfig::default();
        let fleet = Arc::new(Fleet::new(config).expect("fleet"));
        let socket = dir.path().join("hv.sock");
        let before = rss_kib();
        let (server, agent) = rt.block_on(async {
            let server = RemoteHypervisorServer::bind(&socket, fleet)
                .await
                .expect("serve");
            let hv = RemoteHypervisor::connect(&socket).await.expect("hv");
            let mut first = None;
            for i in 0..n {
                let h = RemoteHypervisor::connect(&socket).await.expect("hv");
                h.create_vm(
                    format!("s{i}"),
                    Network::default(),
                    HypervisorConfig::default(),
                )
                .await
                .expect("create");
                h.start_vm(60).await.expect("start");
                if first.is_none() {
                    first = Some(h.get_agent_socket().await.expect("socket"));
                }
            }
            drop(hv);
            let agent = RemoteAgent::connect(&first.expect("one VM"))
                .await
                .expect("agent");
            (server, agent)
        });
        let after = rss_kib();
        rss.push((n, after.saturating_sub(before)));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.to_async(&rt)
                .iter(|| async { agent.check().await.expect("check") })
        });
        drop(agent);
        rt.block_on(server.shutdown());
    }
    group.finish();
    let json = format!(
        "{{{}}}\n",
        rss.iter()
            .map(|(n, kib)| format!("\"{n}\": {kib}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let out = criterion_home();
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("scale-rss.json"), json);
}

/// Where criterion writes (`CRITERION_HOME`, which `cargo xtask bench-report` sets to the
/// target directory's `criterion/`), so the report finds these files beside its estimates.
fn criterion_home() -> std::path::PathBuf {
    std::env::var_os("CRITERION_HOME").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion"),
        std::path::PathBuf::from,
    )
}

fn scenarios(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/library");
    let files = kata_sim::runner::find(&[dir]).expect("library");
    let library: Vec<_> = files
        .iter()
        .map(|f| kata_sim::load::load(f).expect("scenario"))
        .collect();
    let mut group = c.benchmark_group("scenarios");
    group.throughput(criterion::Throughput::Elements(library.len() as u64));
    group.sample_size(10);
    group.bench_function("library", |b| {
        b.iter(|| {
            for s in &library {
                let o = kata_sim::host::run_blocking(s);
                assert!(kata_sim::check::check(s, &o).is_empty(), "{}", s.name);
            }
        })
    });
    group.finish();
}

/// The bundled library x 20 seeds on one thread and on two (`kata-sim run -j`), and the go
/// persona's whole fault matrix the same two ways: the report's parallel speed-ups, measured
/// in one run.
fn parallel(c: &mut Criterion) {
    let library: Vec<kata_sim::runner::Loaded> = (1..=20u64)
        .flat_map(|seed| {
            kata_sim::runner::load_all(&kata_sim::runner::bundled())
                .into_iter()
                .map(move |mut l| {
                    if let Ok(s) = &mut l.scenario {
                        s.seed = seed;
                        s.name = format!("{}@{seed}", s.name);
                    }
                    l
                })
        })
        .collect();
    let count = library.len();
    let o = kata_sim::runner::Overrides::default();
    let mut group = c.benchmark_group("parallel");
    group.throughput(criterion::Throughput::Elements(count as u64));
    group.sample_size(10);
    for jobs in [1usize, 2] {
        group.bench_function(BenchmarkId::new("library_x20", jobs), |b| {
            b.iter_batched(
                || {
                    library
                        .iter()
                        .map(|l| kata_sim::runner::Loaded {
                            source: l.source.clone(),
                            scenario: l.scenario.clone(),
                        })
                        .collect::<Vec<_>>()
                },
                |loaded| {
                    let reports =
                        kata_sim::runner::run_all(loaded, &o, jobs, &|| None, &mut |_| {});
                    assert_eq!(reports.len(), count);
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
    let base = kata_sim::runner::load_all(&kata_sim::runner::bundled())
        .into_iter()
        .find_map(|l| l.scenario.ok().filter(|s| s.name == "go-term-copied"))
        .expect("go-term-copied");
    let plan = kata_sim::matrix::plan(base, kata_sim::schema::Persona::Go).expect("the plan");
    let cells = plan.cells.len();
    let _ = std::fs::write(
        criterion_home().join("matrix-cells.json"),
        format!("{{\"go\": {cells}}}"),
    );
    let mut group = c.benchmark_group("matrix");
    group.throughput(criterion::Throughput::Elements(cells as u64));
    group.sample_size(10);
    for jobs in [1usize, 2] {
        group.bench_function(BenchmarkId::new("go", jobs), |b| {
            b.iter(|| {
                let done =
                    kata_sim::matrix::run(&plan, jobs, kata_sim::shard::Shard::ALL, &mut |_| {});
                assert_eq!(done.len(), cells);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, scale, lifecycle, scenarios, parallel);
criterion_main!(benches);
