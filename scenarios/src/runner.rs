//! `kata-sim run`, `list` and `check`: finding scenarios (files, directories searched
//! recursively, the bundled library embedded in the binary), loading them (names unique across
//! one run), running each on a thread of its own with live progress, and reporting (a summary
//! table, failures with their seed and a diff, JSON lines, JUnit XML).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sim_agent::{AgentVersion, Trace};

use crate::check::{Mismatch, check};
use crate::host::{Limits, Outcome};
use crate::load::{LoadError, load, parse};
use crate::record::Call;
use crate::schema::{Persona, Scenario};

/// The bundled library, embedded by `build.rs`: (path under `scenarios/library/`, text).
const BUNDLED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/library.rs"));

/// Where the bundled scenarios say they come from (their directory in the source tree).
pub const BUNDLED_DIR: &str = "scenarios/library";

/// A scenario file to load: on disk, or embedded in the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its path (for an embedded one, its path in the source tree, under [`BUNDLED_DIR`]).
    pub file: PathBuf,
    /// The embedded text, if it is embedded.
    embedded: Option<&'static str>,
}

impl Source {
    /// A file on disk.
    pub fn file(path: impl Into<PathBuf>) -> Source {
        Source {
            file: path.into(),
            embedded: None,
        }
    }

    /// Whether it ships inside the binary.
    pub fn is_bundled(&self) -> bool {
        self.embedded.is_some()
    }

    /// Its text (an unreadable file is an error located at the file).
    pub fn text(&self) -> Result<Cow<'static, str>, LoadError> {
        match self.embedded {
            Some(t) => Ok(Cow::Borrowed(t)),
            None => std::fs::read_to_string(&self.file)
                .map(Cow::Owned)
                .map_err(|e| LoadError {
                    file: self.file.clone(),
                    line: 0,
                    column: 0,
                    message: format!("cannot read: {e}"),
                    source_line: String::new(),
                }),
        }
    }

    /// Loads and parses it.
    pub fn load(&self) -> Result<Scenario, LoadError> {
        match self.embedded {
            Some(t) => parse(&self.file, t),
            None => load(&self.file),
        }
    }
}

/// The scenarios shipped in the binary, in path order.
pub fn bundled() -> Vec<Source> {
    BUNDLED
        .iter()
        .map(|(rel, text)| Source {
            file: Path::new(BUNDLED_DIR).join(rel),
            embedded: Some(text),
        })
        .collect()
}

/// A path that could not be searched for scenarios.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FindError {
    /// The path.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Whether `path` names a scenario file: `.yaml` or `.yml`, in any case.
pub fn is_scenario_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("yaml") || x.eq_ignore_ascii_case("yml"))
}

/// The scenario files under `paths`: a file as given, a directory searched recursively for
/// [`is_scenario_file`]s in sorted order (each directory's entries by name). A path given
/// twice counts once.
pub fn find(paths: &[PathBuf]) -> Result<Vec<PathBuf>, FindError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| FindError {
            path: p.clone(),
            source,
        })?;
        if !meta.is_dir() {
            if !out.contains(p) {
                out.push(p.clone());
            }
            continue;
        }
        for e in walkdir::WalkDir::new(p).sort_by_file_name() {
            let e = e.map_err(|e| FindError {
                path: e.path().unwrap_or(p).to_path_buf(),
                source: e.into(),
            })?;
            let path = e.path();
            if !e.file_type().is_dir()
                && is_scenario_file(path)
                && path.is_file()
                && !out.iter().any(|o| o == path)
            {
                out.push(path.to_path_buf());
            }
        }
    }
    Ok(out)
}

/// A source and what loading it gave.
#[derive(Debug)]
pub struct Loaded {
    /// The source.
    pub source: Source,
    /// The scenario, or why it does not load.
    pub scenario: Result<Scenario, LoadError>,
}

/// Loads every source; a scenario whose `name` an earlier one already has is an error located
/// at its `name:` line, naming the earlier file.
pub fn load_all(sources: &[Source]) -> Vec<Loaded> {
    let mut seen: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
    sources
        .iter()
        .map(|source| {
            let scenario = source.text().and_then(|text| {
                let s = parse(&source.file, &text)?;
                let (line, column, source_line) = name_line(&text);
                if let Some((first, first_line)) = seen.get(&s.name) {
                    return Err(LoadError {
                        file: source.file.clone(),
                        line,
                        column,
                        message: format!(
                            "name: {:?} is already the name of {}:{first_line} (scenario names are unique)",
                            s.name,
                            first.display()
                        ),
                        source_line,
                    });
                }
                seen.insert(s.name.clone(), (source.file.clone(), line));
                Ok(s)
            });
            Loaded {
                source: source.clone(),
                scenario,
            }
        })
        .collect()
}

/// Where the top-level `name:` key's value is: (line, column, the line).
fn name_line(text: &str) -> (usize, usize, String) {
    crate::load::yaml_lines(text)
        .enumerate()
        .find_map(|(i, l)| {
            let rest = l.strip_prefix("name:")?;
            let value = rest.len() - rest.trim_start().len();
            let column = "name:".len() + rest[..value].chars().count() + 1;
            Some((i + 1, column, l.to_string()))
        })
        .unwrap_or((1, 1, String::new()))
}

/// The scenarios of `library` (default: the bundled one) whose `name` is `name`, or the nearest
/// names when none is.
pub fn by_name(library: &[Loaded], name: &str) -> Result<Source, Vec<String>> {
    if let Some(l) = library
        .iter()
        .find(|l| l.scenario.as_ref().is_ok_and(|s| s.name == name))
    {
        return Ok(l.source.clone());
    }
    let names: Vec<&str> = library
        .iter()
        .filter_map(|l| l.scenario.as_ref().ok().map(|s| s.name.as_str()))
        .collect();
    Err(nearest(name, &names))
}

/// Up to three of `names` nearest to `word` (substring matches first, then by edit distance
/// within a third of the word's length).
pub fn nearest(word: &str, names: &[&str]) -> Vec<String> {
    let lower = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    let mut scored: Vec<(usize, &str)> = names
        .iter()
        .filter_map(|n| {
            let d = strsim::damerau_levenshtein(&lower, &n.to_ascii_lowercase());
            if d <= limit {
                Some((d, *n))
            } else if n.to_ascii_lowercase().contains(&lower) && lower.len() >= 3 {
                Some((limit + 1, *n))
            } else {
                None
            }
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(3)
        .map(|(_, n)| n.to_owned())
        .collect()
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
    /// Run with the shim driver: kata-sim plays containerd to this shim.
    pub shim: Option<crate::shim::ShimOptions>,
    /// Hold each outcome against its snapshot in this directory ([`crate::snapshot`]).
    pub snapshots: Option<PathBuf>,
    /// Run the built-in host over real sockets (real clock) instead of in-process.
    pub wire: bool,
    /// Run every scenario with this agent release.
    pub agent_version: Option<AgentVersion>,
    /// The real time one scenario may take (built-in host; over the wire it also caps each
    /// step and the teardown).
    pub timeout: Option<Duration>,
}

impl Overrides {
    /// The bounds of one built-in run.
    pub fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        if let Some(t) = self.timeout {
            limits.real = t;
            if self.wire {
                limits.step = limits.step.min(t);
                limits.teardown = limits.teardown.min(t);
            }
        }
        limits
    }
}

/// What became of one scenario.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It met every expectation.
    Ok,
    /// It ran and an expectation was not met.
    Failed,
    /// Its file did not load.
    Invalid,
    /// It was not run (the run was interrupted): JUnit `<skipped/>`.
    Skipped,
}

impl Verdict {
    /// The word in JSON output: `ok`, `failed`, `invalid`, `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Failed => "failed",
            Verdict::Invalid => "invalid",
            Verdict::Skipped => "skipped",
        }
    }
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
    pub elapsed: Duration,
    /// When the run started (the JUnit `timestamp`).
    pub started: std::time::SystemTime,
    /// Why the scenario was not run (or not to its end: interrupted): JUnit `<skipped/>`.
    pub skipped: Option<String>,
}

impl Report {
    /// Whether it loaded, ran and met every expectation.
    pub fn passed(&self) -> bool {
        self.verdict() == Verdict::Ok
    }

    /// What became of it.
    pub fn verdict(&self) -> Verdict {
        if self.load_error.is_some() {
            Verdict::Invalid
        } else if self.skipped.is_some() {
            Verdict::Skipped
        } else if self.mismatches.is_empty() {
            Verdict::Ok
        } else {
            Verdict::Failed
        }
    }

    /// The report of a scenario file that was not run, and why (`interrupted`).
    pub fn not_run(file: &Path, reason: impl Into<String>) -> Report {
        Report {
            file: file.to_path_buf(),
            scenario: None,
            load_error: None,
            outcome: None,
            mismatches: Vec::new(),
            elapsed: Duration::ZERO,
            started: std::time::SystemTime::now(),
            skipped: Some(reason.into()),
        }
    }

    /// [`Report::not_run`] for a scenario that loaded.
    pub fn scenario_not_run(file: &Path, scenario: Scenario, reason: impl Into<String>) -> Report {
        Report {
            scenario: Some(scenario),
            ..Report::not_run(file, reason)
        }
    }

    /// The scenario's name, or the file's when it did not load.
    pub fn name(&self) -> String {
        name(self)
    }
}

/// What the runner says while a scenario runs, for a live progress line.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A scenario starts (`index` from 0 of `total`).
    Started {
        /// Its place in the run.
        index: usize,
        /// How many the run has.
        total: usize,
        /// The scenario.
        name: &'a str,
    },
    /// A scenario is still running (about once a second).
    Running {
        /// Its place in the run.
        index: usize,
        /// How many the run has.
        total: usize,
        /// The scenario.
        name: &'a str,
        /// Real time since it started.
        elapsed: Duration,
        /// The call it waits on, if it waits on one.
        waiting_on: Option<String>,
    },
    /// A scenario ended (or did not load, or was not run).
    Finished {
        /// Its place in the run.
        index: usize,
        /// How many the run has.
        total: usize,
        /// What became of it.
        report: &'a Report,
    },
}

/// How often a running scenario is reported, and an interruption noticed.
pub const TICK: Duration = Duration::from_secs(1);

/// Runs every loaded scenario on up to `jobs` threads, telling `progress` about each in the
/// order of `loaded` (with one job, in turn): what it hears, the reports and their order are
/// those of a serial run. Once `stop` says why (a signal), the scenarios running are
/// abandoned (the `exec` driver's run is waited for: it stops its command itself) and the
/// rest are reported as not run.
pub fn run_all(
    loaded: Vec<Loaded>,
    o: &Overrides,
    jobs: usize,
    stop: &(dyn Fn() -> Option<String> + Sync),
    progress: &mut dyn FnMut(Progress<'_>),
) -> Vec<Report> {
    /// What a scenario's run says while it runs.
    enum Note {
        Started(String),
        Running(Duration, Option<String>),
    }
    let total = loaded.len();
    let mut reports = Vec::with_capacity(total);
    // Progress of the first unfinished scenario only: a parallel run reads like a serial one.
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    let mut announced = None;
    crate::pool::ordered(
        loaded,
        jobs,
        |_, l: Loaded, note| match l.scenario {
            Err(e) => Report {
                file: l.source.file,
                scenario: None,
                load_error: Some(e),
                outcome: None,
                mismatches: Vec::new(),
                elapsed: Duration::ZERO,
                started: std::time::SystemTime::now(),
                skipped: None,
            },
            Ok(s) => match stop() {
                Some(why) => Report::scenario_not_run(&l.source.file, s, why),
                None => {
                    note(Note::Started(s.name.clone()));
                    run_scenario(&l.source.file, s, o, stop, &mut |elapsed, waiting_on| {
                        note(Note::Running(elapsed, waiting_on));
                    })
                }
            },
        },
        |ev| match ev {
            crate::pool::Event::Note(index, Note::Started(name)) => {
                if index == reports.len() {
                    progress(Progress::Started {
                        index,
                        total,
                        name: &name,
                    });
                    announced = Some(index);
                }
                names.insert(index, name);
            }
            crate::pool::Event::Note(index, Note::Running(elapsed, waiting_on)) => {
                if index == reports.len()
                    && let Some(name) = names.get(&index)
                {
                    progress(Progress::Running {
                        index,
                        total,
                        name,
                        elapsed,
                        waiting_on,
                    });
                }
            }
            crate::pool::Event::Done(index, report) => {
                if announced != Some(index)
                    && let Some(name) = names.get(&index)
                {
                    progress(Progress::Started { index, total, name });
                }
                names.remove(&index);
                progress(Progress::Finished {
                    index,
                    total,
                    report: &report,
                });
                reports.push(report);
                let next = reports.len();
                if let Some(name) = names.get(&next) {
                    progress(Progress::Started {
                        index: next,
                        total,
                        name,
                    });
                    announced = Some(next);
                }
            }
        },
    );
    reports
}

/// Loads and runs one file.
pub fn run_file(file: &Path, o: &Overrides) -> Report {
    match load(file) {
        Err(e) => Report {
            file: file.to_path_buf(),
            scenario: None,
            load_error: Some(e),
            outcome: None,
            mismatches: Vec::new(),
            elapsed: Duration::ZERO,
            started: std::time::SystemTime::now(),
            skipped: None,
        },
        Ok(s) => run_scenario(file, s, o, &|| None, &mut |_, _| {}),
    }
}

/// Runs one loaded scenario with the overrides applied; `tick` hears about it about once a
/// [`TICK`] (real time so far, the call it waits on).
pub fn run_scenario(
    file: &Path,
    mut s: Scenario,
    o: &Overrides,
    stop: &(dyn Fn() -> Option<String> + Sync),
    tick: &mut dyn FnMut(Duration, Option<String>),
) -> Report {
    let start = Instant::now();
    let started = std::time::SystemTime::now();
    if let Some(p) = o.persona {
        s.config.persona = p;
    }
    if let Some(seed) = o.seed {
        s.seed = seed;
    }
    if let Some(v) = o.agent_version {
        s.config.agent_version = Some(v);
    }
    let trace = Trace::folding();
    let limits = o.limits();
    if let Some(opts) = &o.shim {
        let flavor = opts
            .flavor
            .clone()
            .unwrap_or(crate::shim::launch::Flavor::Other);
        if let Some(why) = crate::shim::skip_reason(&s, &flavor) {
            let mut r = Report::scenario_not_run(file, s, why);
            r.elapsed = start.elapsed();
            return r;
        }
    }
    let run = match (&o.exec, &o.shim) {
        (None, Some(opts)) => {
            let opts = opts.clone();
            isolated_with(
                &s,
                opts.limits.real + REAL_GRACE,
                move |s| crate::shim::run_blocking(s, &opts),
                &mut |elapsed| {
                    tick(elapsed, None);
                    stop()
                },
            )
        }
        (None, None) => {
            let wire = o.wire;
            let t = trace.clone();
            isolated_with(
                &s,
                limits.real + REAL_GRACE,
                move |s| {
                    if wire {
                        run_wire_traced(s, limits, t)
                    } else {
                        run_traced(s, limits, t)
                    }
                },
                &mut |elapsed| {
                    tick(elapsed, crate::host::waiting_on(&trace));
                    stop()
                },
            )
        }
        (Some(command), _) => {
            let command = command.clone();
            // The exec driver stops its command on a signal itself: wait for it.
            isolated_with(
                &s,
                crate::exec::COMMAND_LIMIT + REAL_GRACE,
                move |s| run_exec_blocking(s, &command),
                &mut |elapsed| {
                    tick(elapsed, None);
                    None
                },
            )
        }
    };
    let outcome = match run {
        Isolated::Ended(outcome) => *outcome,
        Isolated::Stopped(why) => {
            let mut r = Report::scenario_not_run(file, s, why);
            r.elapsed = start.elapsed();
            return r;
        }
    };
    let mismatches = if o.exec.is_some() {
        // The runtime's own results are its business: only calls, faults, teardown and
        // errors are checked.
        let mut only = s.clone();
        only.expect.exit_codes.clear();
        only.expect.stdout.clear();
        only.expect.host_files.clear();
        check(&only, &outcome)
    } else {
        check(&s, &outcome)
    };
    let mut mismatches = mismatches;
    if let Some(dir) = &o.snapshots {
        let what = "snapshot".to_string();
        match crate::snapshot::check(dir, &outcome) {
            Ok(crate::snapshot::Snap::Matched | crate::snapshot::Snap::Written(_)) => {}
            Ok(crate::snapshot::Snap::Differs(new)) => mismatches.push(crate::check::Mismatch {
                what,
                expected: format!("{}", dir.join(format!("{}.snap", s.name)).display()),
                actual: format!("differs: {} (cargo insta review)", new.display()),
            }),
            Err(e) => mismatches.push(crate::check::Mismatch {
                what,
                expected: "a readable snapshot".into(),
                actual: e,
            }),
        }
    }
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

/// A built-in run in process on a paused clock, recording into `trace`.
fn run_traced(s: &Scenario, limits: Limits, trace: Trace) -> Outcome {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt.block_on(
            crate::host::run_with_limits_traced::<crate::host::InProcess>(s, limits, trace),
        ),
        Err(e) => crate::host::failed(s, format!("cannot start a tokio runtime: {e}")),
    }
}

/// A built-in run over real sockets on the real clock, recording into `trace`.
fn run_wire_traced(s: &Scenario, limits: Limits, trace: Trace) -> Outcome {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(crate::host::run_with_limits_traced::<crate::host::Wire>(
            s, limits, trace,
        )),
        Err(e) => crate::host::failed(s, format!("cannot start a tokio runtime: {e}")),
    }
}

/// How much longer than its own real-time limit ([`crate::host::REAL_LIMIT`]) a run may
/// take before the runner stops waiting for it (a run that never yields to its watchdog).
pub const REAL_GRACE: Duration = Duration::from_secs(30);

/// How an isolated run ended.
#[derive(Debug)]
pub enum Isolated {
    /// With an outcome (perhaps a failed one).
    Ended(Box<Outcome>),
    /// The caller stopped waiting for it, for this reason.
    Stopped(String),
}

/// Runs `run` on a thread of its own: whatever it does (panic, never end), the caller gets an
/// outcome and goes on to the next scenario. A panic is the run's error, with its message; a
/// run that outlives its real-time limit by [`REAL_GRACE`] is left behind and reported.
pub fn isolated<F>(s: &Scenario, run: F) -> Outcome
where
    F: FnOnce(&Scenario) -> Outcome + Send + 'static,
{
    match isolated_with(s, crate::host::REAL_LIMIT + REAL_GRACE, run, &mut |_| None) {
        Isolated::Ended(o) => *o,
        Isolated::Stopped(why) => crate::host::failed(s, why),
    }
}

/// [`isolated`], waiting at most `wait`; every [`TICK`] `tick` hears the time so far and may
/// say why to stop waiting (the run is then left behind).
pub fn isolated_with<F>(
    s: &Scenario,
    wait: Duration,
    run: F,
    tick: &mut dyn FnMut(Duration) -> Option<String>,
) -> Isolated
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
        return Isolated::Ended(Box::new(crate::host::failed(
            s,
            format!("cannot start the run: {e}"),
        )));
    }
    let start = Instant::now();
    loop {
        let left = wait.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.min(TICK)) {
            Ok(Ok(outcome)) => return Isolated::Ended(Box::new(outcome)),
            Ok(Err(panic)) => {
                return Isolated::Ended(Box::new(crate::host::failed(
                    s,
                    format!("the run panicked: {}", crate::host::panic_message(&*panic)),
                )));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Isolated::Ended(Box::new(crate::host::failed(
                    s,
                    "the run ended without an outcome".into(),
                )));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if left <= TICK => {
                return Isolated::Ended(Box::new(crate::host::failed(
                    s,
                    format!(
                        "the run did not end within {} s of real time; left behind",
                        wait.as_secs()
                    ),
                )));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some(why) = tick(start.elapsed()) {
                    return Isolated::Stopped(why);
                }
            }
        }
    }
}

/// The summary table of `reports` (no colour), as `kata-sim run` prints it.
pub fn summary(reports: &[Report]) -> String {
    let rows: Vec<crate::shard::Row> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| crate::shard::Row::of(i, r))
        .collect();
    summary_of_rows(&rows, false)
}

/// The summary table of these rows (a run's, or shards' merged).
pub fn summary_of_rows(rows: &[crate::shard::Row], color: bool) -> String {
    use anstyle::{AnsiColor, Style};
    let paint = |text: String, style: Style| {
        if color {
            format!("{style}{text}{style:#}")
        } else {
            text
        }
    };
    let mut out = String::new();
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(8).max(8);
    let _ = writeln!(out, "{:<width$}  persona  seed  result   calls", "scenario");
    for r in rows {
        let persona = r.persona.clone().unwrap_or_else(|| "-".into());
        let seed = r.seed.map_or_else(|| "-".into(), |s| s.to_string());
        let (result, style) = match r.verdict {
            Verdict::Ok => ("ok", AnsiColor::Green.on_default()),
            Verdict::Failed => ("FAILED", AnsiColor::Red.on_default().bold()),
            Verdict::Invalid => ("INVALID", AnsiColor::Red.on_default().bold()),
            Verdict::Skipped => ("SKIPPED", AnsiColor::Yellow.on_default()),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {persona:<7}  {seed:>4}  {}  {:>5}",
            r.name,
            paint(format!("{result:<7}"), style),
            r.calls
        );
    }
    let passed = rows.iter().filter(|r| r.verdict == Verdict::Ok).count();
    let line = format!("{passed} of {} passed", rows.len());
    let style = if passed == rows.len() {
        AnsiColor::Green.on_default().bold()
    } else {
        AnsiColor::Red.on_default().bold()
    };
    let _ = writeln!(out, "\n{}", paint(line, style));
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
    for r in reports {
        match r.verdict() {
            Verdict::Ok | Verdict::Skipped => {}
            Verdict::Invalid => {
                if let Some(e) = &r.load_error {
                    let _ = writeln!(out, "{e}\n");
                }
            }
            Verdict::Failed => {
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
        }
    }
    out
}

/// One scenario's result as a JSON object (`kata-sim run --format json`; the shape is in
/// docs/cli.md).
pub fn json(r: &Report) -> serde_json::Value {
    let mut obj = serde_json::json!({
        "name": name(r),
        "file": r.file.display().to_string(),
        "persona": r.scenario.as_ref().map(|s| s.config.persona),
        "seed": r.scenario.as_ref().map(|s| s.seed),
        "result": r.verdict().as_str(),
        "mismatches": r.mismatches.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "elapsed_ms": u64::try_from(r.elapsed.as_millis()).unwrap_or(u64::MAX),
        "calls": r
            .outcome
            .as_ref()
            .map_or(serde_json::Value::Array(Vec::new()), |o| {
                o.calls.iter().map(Call::json).collect()
            }),
    });
    if let Some(e) = &r.load_error {
        obj["error"] = load_error_json(e);
    }
    if let Some(why) = &r.skipped {
        obj["skipped"] = why.clone().into();
    }
    if let Some(o) = &r.outcome {
        obj["errors"] = serde_json::to_value(&o.errors).unwrap_or_default();
    }
    obj
}

/// A load error as a JSON object: `{"line", "column", "message"}`.
pub fn load_error_json(e: &LoadError) -> serde_json::Value {
    serde_json::json!({ "line": e.line, "column": e.column, "message": e.message })
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
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(crate::exec::run(s, command, dir.path())),
        Err(e) => crate::host::failed(s, format!("cannot start a tokio runtime: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_names_are_close_typos_or_substrings_best_first() {
        let names = ["go-happy-path", "rs-happy-path", "go-oom", "rs-exec"];
        assert_eq!(
            nearest("go-hapy-path", &names),
            ["go-happy-path", "rs-happy-path"]
        );
        assert_eq!(nearest("oom", &names), ["go-oom"]);
        assert!(nearest("zzzzzz", &names).is_empty());
    }

    #[test]
    fn a_timeout_sets_the_real_limit_and_caps_wire_steps() {
        let t = Duration::from_secs(5);
        let in_process = Overrides {
            timeout: Some(t),
            ..Default::default()
        }
        .limits();
        assert_eq!(in_process.real, t);
        assert_eq!(in_process.step, crate::host::STEP_LIMIT);
        let wire = Overrides {
            timeout: Some(t),
            wire: true,
            ..Default::default()
        }
        .limits();
        assert_eq!((wire.real, wire.step, wire.teardown), (t, t, t));
        assert_eq!(Overrides::default().limits(), Limits::default());
    }

    #[test]
    fn the_bundled_library_is_embedded_sorted_and_loads() {
        let sources = bundled();
        assert!(!sources.is_empty());
        assert!(sources.windows(2).all(|w| w[0].file < w[1].file));
        assert!(sources.iter().all(|s| s.is_bundled()));
        let loaded = load_all(&sources);
        assert!(loaded.iter().all(|l| l.scenario.is_ok()));
    }

    #[test]
    fn a_duplicate_points_at_the_value_of_the_top_level_name() {
        let a = Source {
            file: "a.yaml".into(),
            embedded: Some("name: x\nsteps: []\n"),
        };
        let b = Source {
            file: "b.yaml".into(),
            embedded: Some("# x\nname:   x\nsteps: []\n"),
        };
        let loaded = load_all(&[a, b]);
        assert!(loaded[0].scenario.is_ok());
        let e = loaded[1].scenario.as_ref().unwrap_err();
        assert_eq!((e.line, e.column), (2, 9));
        assert!(e.message.contains("a.yaml"), "{}", e.message);
    }
}
