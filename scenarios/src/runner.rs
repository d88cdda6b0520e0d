//! `kata-sim run` and `kata-sim check`: finding scenario files, running them, and reporting
//! (a summary table, failures with their seed and a diff, JUnit XML).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::check::{Mismatch, check};
use crate::host::{Outcome, run_blocking};
use crate::load::{LoadError, load};
use crate::schema::{Persona, Scenario};

/// The scenario files under `paths` (files as given, directories searched for `*.yaml`),
/// sorted.
pub fn find(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            for e in std::fs::read_dir(p)? {
                let path = e?.path();
                if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                    out.push(path);
                }
            }
        } else {
            out.push(p.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// How a run may override a scenario.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Run every scenario with this persona.
    pub persona: Option<Persona>,
    /// Run every scenario with this seed.
    pub seed: Option<u64>,
    /// Run with the `exec` driver: this command is the host runtime.
    pub exec: Option<Vec<String>>,
    /// Run the built-in host over real sockets (real clock) instead of in-process.
    pub wire: bool,
    /// Run every scenario with this agent release.
    pub agent_version: Option<sim_agent::AgentVersion>,
}

/// One scenario's result.
#[derive(Debug)]
pub struct Report {
    /// The file.
    pub file: PathBuf,
    /// The scenario, when it loaded.
    pub scenario: Option<Scenario>,
    /// Why it did not load.
    pub load_error: Option<LoadError>,
    /// The run's record.
    pub outcome: Option<Outcome>,
    /// Unmet expectations.
    pub mismatches: Vec<Mismatch>,
    /// Wall time of the run.
    pub elapsed: std::time::Duration,
    /// When the run started (the JUnit `timestamp`).
    pub started: std::time::SystemTime,
    /// Why the scenario was not run (interrupted, filtered out): JUnit `<skipped/>`.
    pub skipped: Option<String>,
}

impl Report {
    /// Whether it loaded, ran and met every expectation.
    pub fn passed(&self) -> bool {
        self.skipped.is_none() && self.load_error.is_none() && self.mismatches.is_empty()
    }

    /// The report of a scenario file that was not run, and why (`interrupted`).
    pub fn not_run(file: &Path, reason: impl Into<String>) -> Report {
        Report {
            file: file.to_path_buf(),
            scenario: None,
            load_error: None,
            outcome: None,
            mismatches: Vec::new(),
            elapsed: std::time::Duration::ZERO,
            started: std::time::SystemTime::now(),
            skipped: Some(reason.into()),
        }
    }
}

/// Loads and runs one file.
pub fn run_file(file: &Path, o: &Overrides) -> Report {
    let start = std::time::Instant::now();
    let started = std::time::SystemTime::now();
    match load(file) {
        Err(e) => Report {
            file: file.to_path_buf(),
            scenario: None,
            load_error: Some(e),
            outcome: None,
            mismatches: Vec::new(),
            elapsed: start.elapsed(),
            started,
            skipped: None,
        },
        Ok(mut s) => {
            if let Some(p) = o.persona {
                s.config.persona = p;
            }
            if let Some(seed) = o.seed {
                s.seed = seed;
            }
            if let Some(v) = o.agent_version {
                s.config.agent_version = Some(v);
            }
            let (outcome, mismatches) = match &o.exec {
                None => {
                    let wire = o.wire;
                    let outcome = isolated(&s, move |s| {
                        if wire {
                            crate::host::run_wire_blocking(s)
                        } else {
                            run_blocking(s)
                        }
                    });
                    let mismatches = check(&s, &outcome);
                    (outcome, mismatches)
                }
                Some(command) => {
                    let command = command.clone();
                    let outcome = isolated(&s, move |s| run_exec_blocking(s, &command));
                    // The runtime's own results are its business: only calls, faults,
                    // teardown and errors are checked.
                    let mut only = s.clone();
                    only.expect.exit_codes.clear();
                    only.expect.stdout.clear();
                    only.expect.host_files.clear();
                    let mismatches = check(&only, &outcome);
                    (outcome, mismatches)
                }
            };
            Report {
                file: file.to_path_buf(),
                scenario: Some(s),
                load_error: None,
                outcome: Some(outcome),
                mismatches,
                elapsed: start.elapsed(),
                started,
                skipped: None,
            }
        }
    }
}

/// How much longer than its own real-time limit ([`crate::host::REAL_LIMIT`]) a run may
/// take before the runner stops waiting for it (a run that never yields to its watchdog).
pub const REAL_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `run` on a thread of its own: whatever it does (panic, never end), the caller gets an
/// outcome and goes on to the next scenario. A panic is the run's error, with its message; a
/// run that outlives its real-time limit by [`REAL_GRACE`] is left behind and reported.
pub fn isolated<F>(s: &Scenario, run: F) -> Outcome
where
    F: FnOnce(&Scenario) -> Outcome + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let scenario = s.clone();
    let spawned = std::thread::Builder::new()
        // A thread name cannot hold a NUL (spawning would panic).
        .name(format!("scenario {}", s.name.replace('\0', "\\0")))
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&scenario)));
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return crate::host::failed(s, format!("cannot start the run: {e}"));
    }
    let wait = crate::host::REAL_LIMIT + REAL_GRACE;
    match rx.recv_timeout(wait) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => crate::host::failed(
            s,
            format!("the run panicked: {}", crate::host::panic_message(&*panic)),
        ),
        Err(_) => crate::host::failed(
            s,
            format!(
                "the run did not end within {} s of real time; left behind",
                wait.as_secs()
            ),
        ),
    }
}

/// The summary table.
pub fn summary(reports: &[Report]) -> String {
    let mut out = String::new();
    let width = reports
        .iter()
        .map(|r| name(r).len())
        .max()
        .unwrap_or(8)
        .max(8);
    let _ = writeln!(out, "{:<width$}  persona  seed  result   calls", "scenario");
    for r in reports {
        let (persona, seed) = r
            .scenario
            .as_ref()
            .map(|s| {
                (
                    format!("{:?}", s.config.persona).to_lowercase(),
                    s.seed.to_string(),
                )
            })
            .unwrap_or_else(|| ("-".into(), "-".into()));
        let result = if r.skipped.is_some() {
            "SKIPPED"
        } else if r.load_error.is_some() {
            "INVALID"
        } else if r.passed() {
            "ok"
        } else {
            "FAILED"
        };
        let calls = r.outcome.as_ref().map_or(0, |o| o.calls.len());
        let _ = writeln!(
            out,
            "{:<width$}  {persona:<7}  {seed:>4}  {result:<7}  {calls:>5}",
            name(r)
        );
    }
    let passed = reports.iter().filter(|r| r.passed()).count();
    let _ = writeln!(out, "\n{passed} of {} passed", reports.len());
    out
}

fn name(r: &Report) -> String {
    r.scenario
        .as_ref()
        .map_or_else(|| r.file.display().to_string(), |s| s.name.clone())
}

/// Every failure, with its seed and what differed.
pub fn failures(reports: &[Report]) -> String {
    let mut out = String::new();
    for r in reports
        .iter()
        .filter(|r| !r.passed() && r.skipped.is_none())
    {
        if let Some(e) = &r.load_error {
            let _ = writeln!(out, "{e}\n");
            continue;
        }
        let seed = r.scenario.as_ref().map_or(0, |s| s.seed);
        let _ = writeln!(
            out,
            "FAILED {} ({}), seed {seed}:",
            name(r),
            r.file.display()
        );
        for m in &r.mismatches {
            let _ = writeln!(out, "{m}");
        }
        out.push('\n');
    }
    out
}

/// JUnit XML for CI systems (see [`crate::junit`]).
pub fn junit(reports: &[Report]) -> String {
    crate::junit::render(reports)
}

/// Runs a scenario with the `exec` driver on a real clock.
pub fn run_exec_blocking(s: &Scenario, command: &[String]) -> Outcome {
    let dir = match tempfile::Builder::new().prefix("kata-sim-exec-").tempdir() {
        Ok(d) => d,
        Err(e) => return crate::host::failed(s, format!("temp dir: {e}")),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(crate::exec::run(s, command, dir.path()))
}
