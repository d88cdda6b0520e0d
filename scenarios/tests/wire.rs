//! The built-in host over real sockets (ttrpc on each VM's unix socket, real clock) sends the
//! same agent calls and gets the same results as in-process: one data path serves both.
//!
//! Every library scenario runs both ways (the wire runs concurrently, one thread each), except
//! the ones listed in [`DIFFER`] with the reason.

use std::time::Duration;

use kata_sim::host::{self, Limits, Outcome, Wire};
use kata_sim::schema::Scenario;

/// Library scenarios whose wire run differs from the in-process one, and why.
const DIFFER: &[(&str, &str)] = &[
    // The wire runs on the real clock: these cost their virtual time in real seconds.
    ("go-delay-start-vm", "real clock: a 30 s StartVM delay"),
    (
        "go-hang-create-container",
        "real clock: the 60 s CreateContainer deadline",
    ),
    (
        "go-hang-start-container",
        "real clock: the 60 s StartContainer deadline",
    ),
    (
        "go-hang-wait-during-stop",
        "real clock: the 3600 s step limit",
    ),
    (
        "go-shell-word-not-understood",
        "real clock: the 3600 s step limit",
    ),
    ("go-probabilistic-check", "real clock: 60 s of advance_time"),
    (
        "go-term-getdiag-hang",
        "real clock: the 60 s GetDiagnosticData deadline",
    ),
    (
        "rs-term-getdiag-hang",
        "real clock: the 30 s GetDiagnosticData deadline",
    ),
    // In-process the host still calls a guest whose connection is gone (the call reaches the
    // dead or restarted agent and is traced); over the wire it fails in the client, untraced,
    // as the real runtimes do. The in-process transport's own connection closes this gap.
    (
        "go-task-exit-published",
        "real clock: the 60 s GetDiagnosticData deadline",
    ),
    (
        "go-task-wait-hang-running",
        "real clock: the 3600 s teardown limit",
    ),
    (
        "rs-fault-getdiag-hang",
        "real clock: the 30 s GetDiagnosticData deadline",
    ),
    (
        "go-fault-oom-error",
        "real clock: how many 1 s OOM retries fit in a 5 s sleep",
    ),
    // Open: the OOM watcher's last poll races the teardown on the wire (it meets the lost
    // connection in flight or after, or polls once more).
    (
        "rs-dead-guest-running",
        "a race: the OOM watcher's last poll at teardown",
    ),
    (
        "rs-fault-getdiag-drop",
        "a race: the OOM watcher's last poll at teardown",
    ),
    // Open: over the wire the host sees the VM dead at StopVM and says so; in-process the
    // lost connection ends the teardown first.
    (
        "go-term-guest-dies-during-stop",
        "the wire host's own line about a VM that died",
    ),
    // The guest's death closes the connection and the monitor marks the agent dead at the
    // same moment; whether the waiter's WaitProcess meets the closed connection ("ttrpc:
    // closed") or the dead agent ("Dead agent") is a race on the wire (as in the Go shim).
    (
        "go-dead-guest-by-fault",
        "a race between the closed connection and markDead",
    ),
    // Open: the event's answer can still be on the socket when the teardown stops the OOM
    // watcher, so the warning is sometimes missing on the wire (1 run in 8).
    (
        "rs-oom-fault",
        "a race: the teardown may stop the OOM watcher before the answer",
    ),
    // An agent older than the RPC: the wire server answers UNIMPLEMENTED before the model
    // sees the call, so the guest's trace does not show it.
    (
        "go-term-old-agent",
        "an RPC the agent does not serve is not traced on the wire",
    ),
];

fn library() -> Vec<Scenario> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("library");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| kata_sim::load::load(p).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// A wire run bounded to 30 s of real time.
fn wire(s: &Scenario) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let limits = Limits {
        real: Duration::from_secs(30),
        ..Limits::default()
    };
    rt.block_on(host::run_with_limits::<Wire>(s, limits))
}

/// Where two outcomes of one scenario differ (empty: they agree).
fn differences(local: &Outcome, wire: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    let (a, b) = (
        kata_sim::render::agent_calls(local),
        kata_sim::render::agent_calls(wire),
    );
    if a != b {
        out.push(format!(
            "agent calls:\n{}",
            kata_sim::render::diff(&a, &b).join("\n")
        ));
    }
    let mut field = |name: &str, same: bool, l: &dyn std::fmt::Debug, w: &dyn std::fmt::Debug| {
        if !same {
            out.push(format!("{name}: in-process {l:?}, wire {w:?}"));
        }
    };
    field(
        "faults",
        local.faults == wire.faults,
        &local.faults,
        &wire.faults,
    );
    field(
        "processes",
        local.processes == wire.processes,
        &local.processes,
        &wire.processes,
    );
    field(
        "host files",
        local.host_files == wire.host_files,
        &local.host_files,
        &wire.host_files,
    );
    field(
        "errors",
        local.errors == wire.errors,
        &local.errors,
        &wire.errors,
    );
    field(
        "warnings",
        local.warnings == wire.warnings,
        &local.warnings,
        &wire.warnings,
    );
    // What containerd sees, but the times: the wire runs on the real clock.
    let seen = |o: &Outcome| -> Vec<(String, String, Option<u32>)> {
        o.tasks
            .iter()
            .map(|(id, t)| (id.clone(), t.status.name().to_string(), t.exit_status))
            .collect()
    };
    field(
        "tasks",
        seen(local) == seen(wire),
        &seen(local),
        &seen(wire),
    );
    field(
        "teardown",
        local.teardown == wire.teardown,
        &local.teardown,
        &wire.teardown,
    );
    out
}

#[test]
fn every_library_scenario_agrees_over_the_wire_but_the_listed_ones() {
    let scenarios = library();
    for (name, _) in DIFFER {
        assert!(
            scenarios.iter().any(|s| s.name == *name),
            "{name} is listed but not in the library"
        );
    }
    let runs: Vec<_> = scenarios
        .into_iter()
        .filter(|s| !DIFFER.iter().any(|(n, _)| *n == s.name))
        .map(|s| {
            std::thread::spawn(move || {
                let w = wire(&s);
                (s, w)
            })
        })
        .collect();
    let mut failed = Vec::new();
    for r in runs {
        let (s, wire) = r.join().expect("a wire run");
        let local = host::run_blocking(&s);
        let mut d = differences(&local, &wire);
        d.extend(
            kata_sim::check::check(&s, &wire)
                .iter()
                .map(|m| format!("over the wire: {m}")),
        );
        if !d.is_empty() {
            failed.push(format!("{} (seed {}):\n{}", s.name, s.seed, d.join("\n")));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// Seeded rates on calls that race each other (the stdio reads and waits of three execs at
/// once, the OOM watcher's first poll): eight wire runs and the in-process run fire the same
/// faults, make the same calls with the same answers (in an order that only the races
/// between the execs decide) and end the same.
#[test]
fn a_seeded_probabilistic_scenario_has_one_outcome_on_every_run() {
    let text = r#"
name: probabilistic-racing-calls
seed: 43
config: { persona: go }
faults:
  - "ReadStdout=40%delay(3ms)"
  - "ReadStderr=40%delay(2ms)"
  - "ExecProcess=50%error(INTERNAL)"
  - "WaitProcess=30%delay(1ms, 4ms)"
steps:
  - create_sandbox: {}
  - create_container: { id: c1, args: [sleep, "1000"] }
  - start: c1
  - exec: { container: c1, id: e1, args: [echo, one] }
  - exec: { container: c1, id: e2, args: [echo, two] }
  - exec: { container: c1, id: e3, args: [echo, three] }
  - wait: c1/e1
  - wait: c1/e2
  - wait: c1/e3
  - exec: { container: c1, id: e4, args: [echo, four] }
  - exec: { container: c1, id: e5, args: [echo, five] }
  - exec: { container: c1, id: e6, args: [echo, six] }
  - wait: c1/e4
  - wait: c1/e5
  - wait: c1/e6
  - stop: c1
  - destroy_sandbox
"#;
    let s = kata_sim::load::parse(std::path::Path::new("probabilistic.yaml"), text)
        .unwrap_or_else(|e| panic!("{e}"));
    /// What a run did, as multisets where concurrent calls make the order a race.
    fn summary(o: &Outcome) -> Vec<String> {
        let mut calls: Vec<String> = o
            .calls
            .iter()
            // The monitor's Checks follow the clock; the OOM watcher's last poll ends with
            // the sandbox (answered by the agent's shutdown over the wire, cancelled
            // in-process).
            .filter(|c| {
                !matches!(
                    c.op,
                    sim_agent::Op::Agent(sim_agent::Method::Check | sim_agent::Method::GetOOMEvent)
                )
            })
            .flat_map(|c| {
                let mut one = c.clone();
                one.count = 1;
                std::iter::repeat_n(one.to_string(), c.count as usize)
            })
            .collect();
        calls.sort();
        let mut faults: Vec<String> = o
            .faults
            .iter()
            .flat_map(|f| {
                std::iter::repeat_n(
                    format!("#{} {} {}", f.rule, f.target, f.action),
                    f.count as usize,
                )
            })
            .collect();
        faults.sort();
        let mut out = calls;
        out.push("--- faults".into());
        out.extend(faults);
        out.push(format!("--- processes {:?}", o.processes));
        out.push(format!("--- errors {:?}", o.errors));
        out.push(format!("--- warnings {:?}", o.warnings));
        out.push(format!("--- teardown {:?}", o.teardown));
        out
    }
    let local = host::run_blocking(&s);
    assert!(
        local.faults_fired() >= 4,
        "the seed fires several faults: {:?}",
        local.faults
    );
    let expected = summary(&local);
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || wire(&s))
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let got = summary(&r.join().expect("a wire run"));
        assert!(
            got == expected,
            "wire run {i} differs from in-process:\n{}",
            kata_sim::render::diff(&expected, &got).join("\n")
        );
    }
}
