//! `kata-sim matrix` and `kata-sim coverage`: fault coverage of a lifecycle.
//!
//! A base scenario (by default the persona's termination-log lifecycle, `go-term-copied` or
//! `rs-term-copied`) is split into lifecycle [`Phase`]s by its steps. Every agent RPC and VM
//! operation its fault-free run calls, in every phase, under every [`FAULTS`] column that
//! applies to the op, is a cell: the base with the one-shot rule
//! `Op=1*ACTION` installed as the phase starts (an `add_fault` step) and removed as it ends.
//! Each cell runs in process on the paused clock and is classified by what the host did,
//! against the base's own fault-free run ([`Class`], [`Effect`]).
//!
//! Cells run on `-j N` threads and are reported in their fixed order; `--shard I/N` runs the
//! cells whose id hashes to the shard ([`crate::shard`]). Outputs: a table on the terminal
//! ([`table`]), JSON lines, and an HTML heat map ([`write_html`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sim_agent::fault::{Action, Rule};
use sim_agent::{Method, Op};

use crate::host::Outcome;
use crate::schema::{Persona, Scenario, Step, Teardown};
use crate::shard::Shard;

/// A lifecycle phase: where in the pod's life a fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `create_sandbox`: the VM, the agent session, the sandbox.
    SandboxStart,
    /// `create_container`.
    ContainerCreate,
    /// `start`, `wait`, `exec`, stdio, signals, pause, update, stats.
    Running,
    /// `stop`: the kill, the reap, the termination message, the removal.
    Stop,
    /// `destroy_sandbox`, or the teardown after the last step.
    SandboxTeardown,
}

impl Phase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 5] = [
        Phase::SandboxStart,
        Phase::ContainerCreate,
        Phase::Running,
        Phase::Stop,
        Phase::SandboxTeardown,
    ];

    /// Its name for people (`sandbox start`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::SandboxStart => "sandbox start",
            Phase::ContainerCreate => "container create",
            Phase::Running => "running",
            Phase::Stop => "stop",
            Phase::SandboxTeardown => "sandbox teardown",
        }
    }

    /// Its name in ids and file names (`sandbox-start`).
    pub fn id(self) -> &'static str {
        match self {
            Phase::SandboxStart => "sandbox-start",
            Phase::ContainerCreate => "container-create",
            Phase::Running => "running",
            Phase::Stop => "stop",
            Phase::SandboxTeardown => "sandbox-teardown",
        }
    }

    /// The phase a host step begins; `None` for kata-sim's own steps (guest events, time,
    /// fault rules), which belong to the phase they are in.
    pub fn of(step: &Step) -> Option<Phase> {
        Some(match step {
            Step::CreateSandbox(_) => Phase::SandboxStart,
            Step::CreateContainer(_) => Phase::ContainerCreate,
            Step::Start(_)
            | Step::Exec(_)
            | Step::WriteStdin(_)
            | Step::CloseStdin(_)
            | Step::Kill(_)
            | Step::Wait(_)
            | Step::Pause(_)
            | Step::Resume(_)
            | Step::Update(_)
            | Step::Stats(_) => Phase::Running,
            Step::Stop(_) => Phase::Stop,
            Step::DestroySandbox => Phase::SandboxTeardown,
            Step::PushOom(_)
            | Step::KillGuest
            | Step::WriteTerminationMessage(_)
            | Step::RemoveTerminationMessage(_)
            | Step::AdvanceTime(_)
            | Step::AddFault(_)
            | Step::RemoveFault(_) => return None,
        })
    }
}

/// The phase of each step of `steps` (kata-sim's own steps take the phase they are in; before
/// any host step, the sandbox start), and index `steps.len()`, the teardown after the last
/// step.
pub fn step_phases(steps: &[Step]) -> Vec<Phase> {
    let mut current = Phase::SandboxStart;
    let mut out: Vec<Phase> = steps
        .iter()
        .map(|s| {
            if let Some(p) = Phase::of(s) {
                current = p;
            }
            current
        })
        .collect();
    out.push(Phase::SandboxTeardown);
    out
}

/// The steps `[start, end)` of each phase's first window: where a cell's rule is installed
/// and removed. The teardown's window runs to the end of the run.
fn windows(steps: &[Step]) -> BTreeMap<Phase, (usize, usize)> {
    let phases = step_phases(steps);
    let mut out: BTreeMap<Phase, (usize, usize)> = BTreeMap::new();
    let mut i = 0;
    while i < phases.len() {
        let p = phases[i];
        let mut j = i + 1;
        while j < phases.len() && phases[j] == p {
            j += 1;
        }
        out.entry(p).or_insert((i, j.min(steps.len())));
        i = j;
    }
    // The teardown after the last step belongs to the teardown's window.
    if let Some(w) = out.get_mut(&Phase::SandboxTeardown) {
        w.1 = steps.len();
    }
    out
}

/// Which ops a fault column applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applies {
    /// Agent RPCs and VM operations.
    Any,
    /// Agent RPCs (the agent's connection, state or policy).
    Agent,
    /// Agent RPCs about one container (`oom` kills the call's container).
    ContainerCall,
    /// Stdio streams and CopyFile (`slow`).
    Stream,
}

/// One fault column of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultColumn {
    /// Its label (the action as a rule writes it).
    pub label: &'static str,
    /// A short head for the terminal table.
    pub short: &'static str,
    applies: Applies,
}

/// The fault columns: every error code, hang, delay, drops, a corrupt frame, the guest killed,
/// the agent restarted, an RPC unimplemented and a policy denial (the real agent's statuses
/// and messages for them), an OOM kill, slow data.
pub const FAULTS: &[FaultColumn] = &[
    col("error(CANCELLED)", "CANC", Applies::Any),
    col("error(UNKNOWN)", "UNKN", Applies::Any),
    col("error(INVALID_ARGUMENT)", "INVA", Applies::Any),
    col("error(DEADLINE_EXCEEDED)", "DEAD", Applies::Any),
    col("error(NOT_FOUND)", "NOTF", Applies::Any),
    col("error(ALREADY_EXISTS)", "EXST", Applies::Any),
    col("error(PERMISSION_DENIED)", "PERM", Applies::Any),
    col("error(RESOURCE_EXHAUSTED)", "RESX", Applies::Any),
    col("error(FAILED_PRECONDITION)", "FPRE", Applies::Any),
    col("error(ABORTED)", "ABRT", Applies::Any),
    col("error(OUT_OF_RANGE)", "OOR", Applies::Any),
    col("error(UNIMPLEMENTED)", "UNIM", Applies::Any),
    col("error(INTERNAL)", "INT", Applies::Any),
    col("error(UNAVAILABLE)", "UNAV", Applies::Any),
    col("error(DATA_LOSS)", "DLOS", Applies::Any),
    col("error(UNAUTHENTICATED)", "UNAU", Applies::Any),
    col("hang", "hang", Applies::Any),
    col("delay(10s)", "dly", Applies::Any),
    col("drop(before)", "drpB", Applies::Any),
    col("drop(after)", "drpA", Applies::Agent),
    col("corrupt", "corr", Applies::Agent),
    col("kill_guest", "kill", Applies::Any),
    col("restart_agent", "rst", Applies::Agent),
    col("unimplemented", "unim", Applies::Any),
    col("deny", "deny", Applies::Agent),
    col("oom", "oom", Applies::ContainerCall),
    col("slow(1k)", "slow", Applies::Stream),
];

const fn col(label: &'static str, short: &'static str, applies: Applies) -> FaultColumn {
    FaultColumn {
        label,
        short,
        applies,
    }
}

impl FaultColumn {
    /// Whether a fault of this column can fire on `op`.
    pub fn applies_to(&self, op: Op) -> bool {
        match (self.applies, op) {
            (Applies::Any, _) => true,
            (Applies::Agent, Op::Agent(_)) => true,
            (Applies::ContainerCall, Op::Agent(m)) => m.key_fields().contains(&"container_id"),
            (Applies::Stream, Op::Agent(m)) => matches!(
                m,
                Method::ReadStdout | Method::ReadStderr | Method::CopyFile
            ),
            _ => false,
        }
    }

    /// The action, parsed from its label (a constant of this module; a test parses every
    /// one).
    fn action(&self) -> Option<Action> {
        let rule: Rule = format!("*={}", self.label).parse().ok()?;
        rule.chain.into_iter().next().map(|t| t.action)
    }

    /// The column of an action that fired (any delay is the delay column; an error code
    /// without a column of its own has none).
    pub fn of(action: &Action) -> Option<usize> {
        FAULTS.iter().position(|c| match (c.action(), action) {
            (Some(Action::Delay { .. }), Action::Delay { .. }) => true,
            (Some(Action::Slow(_)), Action::Slow(_)) => true,
            (Some(Action::Oom(_)), Action::Oom(_)) => true,
            (Some(Action::Error { code: a, .. }), Action::Error { code: b, .. }) => a == *b,
            (Some(a), b) => a == *b,
            (None, _) => false,
        })
    }
}

/// What a fault did to the host, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// A bound ran out: the host was stuck (where: [`CellResult::stuck_at`]).
    Stuck,
    /// The teardown did not complete (a container or the VM was left).
    TeardownIncomplete,
    /// A process's exit code is not the fault-free run's.
    ExitChanged,
    /// The termination message the fault-free run copied to the host is not there.
    TerminationLost,
    /// An error or a warning the fault-free run did not have.
    ErrorSurfaced,
    /// The faulted call was made more often than in the fault-free run.
    Retried,
}

/// A cell's class: its worst effect, or that nothing showed, or that the fault never fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// See [`Effect::Stuck`].
    Stuck,
    /// See [`Effect::TeardownIncomplete`].
    TeardownIncomplete,
    /// See [`Effect::ExitChanged`].
    ExitChanged,
    /// See [`Effect::TerminationLost`].
    TerminationLost,
    /// See [`Effect::ErrorSurfaced`].
    ErrorSurfaced,
    /// See [`Effect::Retried`].
    Retried,
    /// The fault fired and the teardown completed with nothing else changed.
    Completed,
    /// The fault did not fire (the call was not made once the phase began).
    NotReached,
}

impl Class {
    /// Every class, worst first.
    pub const ALL: [Class; 8] = [
        Class::Stuck,
        Class::TeardownIncomplete,
        Class::ExitChanged,
        Class::TerminationLost,
        Class::ErrorSurfaced,
        Class::Retried,
        Class::Completed,
        Class::NotReached,
    ];

    /// Its letter in the terminal table.
    pub fn letter(self) -> char {
        match self {
            Class::Stuck => 'S',
            Class::TeardownIncomplete => 'I',
            Class::ExitChanged => 'X',
            Class::TerminationLost => 'T',
            Class::ErrorSurfaced => 'E',
            Class::Retried => 'R',
            Class::Completed => '.',
            Class::NotReached => '-',
        }
    }

    /// Its name for people.
    pub fn name(self) -> &'static str {
        match self {
            Class::Stuck => "host stuck",
            Class::TeardownIncomplete => "teardown incomplete",
            Class::ExitChanged => "exit code changed",
            Class::TerminationLost => "termination message lost",
            Class::ErrorSurfaced => "an error surfaced",
            Class::Retried => "a call retried",
            Class::Completed => "teardown completed",
            Class::NotReached => "did not fire",
        }
    }

    /// Its id (CSS classes, JSON).
    pub fn id(self) -> &'static str {
        match self {
            Class::Stuck => "stuck",
            Class::TeardownIncomplete => "teardown_incomplete",
            Class::ExitChanged => "exit_changed",
            Class::TerminationLost => "termination_lost",
            Class::ErrorSurfaced => "error_surfaced",
            Class::Retried => "retried",
            Class::Completed => "completed",
            Class::NotReached => "not_reached",
        }
    }
}

/// One cell to run.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSpec {
    /// Its place among all the matrix's cells.
    pub position: usize,
    /// The phase its fault fires in.
    pub phase: Phase,
    /// The op it faults.
    pub op: Op,
    /// Its fault column (an index into [`FAULTS`]).
    pub fault: usize,
}

impl CellSpec {
    /// Its id: `phase.Op.action` (`running.WaitProcess.error-INTERNAL`), unique in a matrix
    /// and safe in a file name.
    pub fn id(&self) -> String {
        cell_id(self.phase, self.op, FAULTS[self.fault].label)
    }

    /// The rule it installs: `Op=1*ACTION`.
    pub fn rule_text(&self) -> String {
        format!("{}=1*{}", self.op.name(), FAULTS[self.fault].label)
    }
}

fn cell_id(phase: Phase, op: Op, label: &str) -> String {
    let action: String = label
        .chars()
        .filter_map(|c| match c {
            '(' | ',' | ' ' => Some('-'),
            ')' => None,
            c => Some(c),
        })
        .collect();
    format!("{}.{}.{action}", phase.id(), op.name())
}

/// One cell's result: what the host did when the fault fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// Its place among all the matrix's cells.
    pub position: usize,
    /// Its id ([`CellSpec::id`]).
    pub id: String,
    /// The phase.
    pub phase: Phase,
    /// The op faulted.
    pub op: Op,
    /// The fault column's label.
    pub fault: String,
    /// The rule installed.
    pub rule: String,
    /// Its class.
    pub class: Class,
    /// Everything that differed from the fault-free run, worst first.
    pub effects: Vec<Effect>,
    /// Where the host was stuck (`steps[4]: WaitProcess{container_id=c1, exec_id=c1}`).
    pub stuck_at: Option<String>,
    /// Whether the teardown completed.
    pub teardown_completed: bool,
    /// The run's errors.
    pub errors: Vec<String>,
    /// The run's warnings.
    pub warnings: Vec<String>,
    /// The run's calls, one a line.
    pub calls: Vec<String>,
    /// The run as a Mermaid sequence diagram.
    pub mermaid: String,
}

/// What a matrix is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The persona.
    pub persona: Persona,
    /// The base scenario's name.
    pub base: String,
    /// Its seed.
    pub seed: u64,
    /// The agent release its guest runs.
    pub agent_version: sim_agent::AgentVersion,
}

/// The default base scenario of a persona: its termination-log lifecycle from the library.
pub fn default_base(persona: Persona) -> &'static str {
    match persona {
        Persona::Rs => "rs-term-copied",
        Persona::Go | Persona::Go3191 => "go-term-copied",
    }
}

/// A matrix ready to run: the base (with the persona), its fault-free outcome and the cells.
#[derive(Debug)]
pub struct Plan {
    /// What it is of.
    pub header: Header,
    /// The base scenario.
    pub base: Scenario,
    /// Its fault-free run.
    pub baseline: Outcome,
    /// Every cell, in order.
    pub cells: Vec<CellSpec>,
}

/// Why a matrix cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The base scenario already faults calls: a matrix needs a fault-free baseline.
    #[error(
        "the base scenario {0:?} has fault rules of its own; a matrix's base must be fault-free"
    )]
    BaseHasFaults(String),
    /// The base scenario's fault-free run did not complete its teardown.
    #[error("the base scenario {name:?} does not complete without faults: {why}")]
    BaseFails {
        /// The scenario.
        name: String,
        /// What went wrong.
        why: String,
    },
}

/// One run in process on the paused clock (isolated: a panic is the run's error).
fn run_one(s: Scenario) -> Outcome {
    crate::runner::isolated(&s, crate::host::run_blocking)
}

/// `base` with the rule installed as `phase`'s window starts and removed as it ends.
fn with_rule(base: &Scenario, phase: Phase, rule: Rule) -> Option<Scenario> {
    let (start, end) = *windows(&base.steps).get(&phase)?;
    let mut s = base.clone();
    if end < s.steps.len() && phase != Phase::SandboxTeardown {
        s.steps.insert(end, Step::RemoveFault(rule.clone()));
    }
    s.steps.insert(start, Step::AddFault(rule));
    Some(s)
}

/// Plans the matrix of `base` with `persona`: the fault-free run, and a cell for every op it
/// calls x every phase x every fault column that applies to the op (a cell whose op is not
/// called once its phase began is [`Class::NotReached`]).
pub fn plan(mut base: Scenario, persona: Persona) -> Result<Plan, PlanError> {
    base.config.persona = persona;
    if persona == Persona::Go3191 && base.config.agent_version.is_none() {
        // A 3.19.1 shim ships with its own release's agent; on a 4.x agent its output reader
        // spins on empty reads and no wait ends (kata-facts 8), which is no baseline.
        base.config.agent_version = Some(sim_agent::AgentVersion(3, 19, 1));
    }
    let has_rules = !base.faults.is_empty()
        || base
            .steps
            .iter()
            .any(|s| matches!(s, Step::AddFault(_) | Step::RemoveFault(_)));
    if has_rules {
        return Err(PlanError::BaseHasFaults(base.name.clone()));
    }
    // A cell checks nothing: what the host did is classified against this run.
    base.expect = Default::default();
    let baseline = run_one(base.clone());
    if baseline.teardown != Teardown::Completed || !baseline.errors.is_empty() {
        return Err(PlanError::BaseFails {
            name: base.name.clone(),
            why: baseline
                .errors
                .first()
                .cloned()
                .unwrap_or_else(|| "its teardown is incomplete".into()),
        });
    }
    // The ops the lifecycle calls, in the order it first calls them; each in every phase.
    let mut ops: Vec<Op> = Vec::new();
    for c in &baseline.calls {
        if sim_agent::fault::Target::new(c.op).is_some() && !ops.contains(&c.op) {
            ops.push(c.op);
        }
    }
    let phases = windows(&base.steps);
    let mut cells = Vec::new();
    for phase in Phase::ALL.into_iter().filter(|p| phases.contains_key(p)) {
        for &op in &ops {
            for (fault, c) in FAULTS.iter().enumerate() {
                if c.applies_to(op) {
                    cells.push(CellSpec {
                        position: cells.len(),
                        phase,
                        op,
                        fault,
                    });
                }
            }
        }
    }
    Ok(Plan {
        header: Header {
            persona,
            base: base.name.clone(),
            seed: base.seed,
            agent_version: base.config.agent_version.unwrap_or_default(),
        },
        base,
        baseline,
        cells,
    })
}

/// How many calls of `op` a record has.
fn calls_of(o: &Outcome, op: Op) -> u64 {
    o.calls.iter().filter(|c| c.op == op).map(|c| c.count).sum()
}

/// What differs in `o` from the fault-free `base`, worst first.
pub fn effects(base: &Outcome, o: &Outcome, op: Op) -> Vec<Effect> {
    let mut out = BTreeSet::new();
    if !o.stuck.is_empty() {
        out.insert(Effect::Stuck);
    }
    if o.teardown != Teardown::Completed && base.teardown == Teardown::Completed {
        out.insert(Effect::TeardownIncomplete);
    }
    let keys: BTreeSet<&String> = base.processes.keys().chain(o.processes.keys()).collect();
    if keys.into_iter().any(|k| {
        base.processes.get(k).and_then(|p| p.exit_code)
            != o.processes.get(k).and_then(|p| p.exit_code)
    }) {
        out.insert(Effect::ExitChanged);
    }
    if base
        .host_files
        .iter()
        .any(|(k, v)| v.is_some() && o.host_files.get(k) != Some(v))
    {
        out.insert(Effect::TerminationLost);
    }
    let new_error = o.errors.iter().any(|e| !base.errors.contains(e));
    let new_warning = o
        .warnings
        .iter()
        .any(|w| !base.warnings.iter().any(|b| b.same(w)));
    if new_error || new_warning {
        out.insert(Effect::ErrorSurfaced);
    }
    if calls_of(o, op) > calls_of(base, op) {
        out.insert(Effect::Retried);
    }
    out.into_iter().collect()
}

/// The class of a cell: its worst effect, else whether the fault fired.
pub fn class(fired: bool, effects: &[Effect]) -> Class {
    match effects.first() {
        _ if !fired => Class::NotReached,
        None => Class::Completed,
        Some(Effect::Stuck) => Class::Stuck,
        Some(Effect::TeardownIncomplete) => Class::TeardownIncomplete,
        Some(Effect::ExitChanged) => Class::ExitChanged,
        Some(Effect::TerminationLost) => Class::TerminationLost,
        Some(Effect::ErrorSurfaced) => Class::ErrorSurfaced,
        Some(Effect::Retried) => Class::Retried,
    }
}

/// Runs one cell.
pub fn run_cell(plan: &Plan, cell: &CellSpec) -> CellResult {
    let rule_text = cell.rule_text();
    let outcome = match rule_text.parse::<Rule>() {
        Ok(rule) => match with_rule(&plan.base, cell.phase, rule) {
            Some(mut s) => {
                s.name = format!("{}:{}", plan.base.name, cell.id());
                run_one(s)
            }
            None => crate::host::failed(&plan.base, format!("no {} phase", cell.phase.name())),
        },
        Err(e) => crate::host::failed(&plan.base, format!("the cell's rule: {e}")),
    };
    let fired = outcome.firings.iter().any(|f| f.target == cell.op.name());
    let effects = if fired {
        effects(&plan.baseline, &outcome, cell.op)
    } else {
        Vec::new()
    };
    let stuck_at = outcome.stuck.first().map(|s| match &s.call {
        Some(c) => format!("{}: {}", s.what, c.short()),
        None => s.what.clone(),
    });
    CellResult {
        position: cell.position,
        id: cell.id(),
        phase: cell.phase,
        op: cell.op,
        fault: FAULTS[cell.fault].label.to_string(),
        rule: rule_text,
        class: class(fired, &effects),
        effects,
        stuck_at,
        teardown_completed: outcome.teardown == Teardown::Completed,
        errors: outcome.errors.clone(),
        warnings: outcome.warnings.iter().map(ToString::to_string).collect(),
        calls: outcome.calls.iter().map(ToString::to_string).collect(),
        mermaid: crate::render::mermaid(&outcome),
    }
}

/// Runs the plan's cells of `shard` on `jobs` threads; `done` hears each in order.
pub fn run(
    plan: &Plan,
    jobs: usize,
    shard: Shard,
    done: &mut dyn FnMut(&CellResult),
) -> Vec<CellResult> {
    let cells: Vec<&CellSpec> = plan
        .cells
        .iter()
        .filter(|c| shard.selects(&c.id()))
        .collect();
    let mut out = Vec::with_capacity(cells.len());
    crate::pool::ordered(
        cells,
        jobs,
        |_, cell, _note: &dyn Fn(())| run_cell(plan, cell),
        |ev| {
            if let crate::pool::Event::Done(_, r) = ev {
                done(&r);
                out.push(r);
            }
        },
    );
    out
}

/// How many cells of each class, worst first.
pub fn counts(cells: &[CellResult]) -> BTreeMap<Class, usize> {
    let mut out = BTreeMap::new();
    for c in cells {
        *out.entry(c.class).or_insert(0) += 1;
    }
    out
}

/// The terminal table: per phase, an op a row and a fault a column, each cell its class's
/// letter (blank: the fault does not apply), then the legend and the counts.
pub fn table(header: &Header, cells: &[CellResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fault matrix of {} (persona {}, agent {}, seed {}): {} cells",
        header.base,
        header.persona.name(),
        header.agent_version,
        header.seed,
        cells.len()
    );
    let by: BTreeMap<(Phase, Op, &str), &CellResult> = cells
        .iter()
        .map(|c| ((c.phase, c.op, c.fault.as_str()), c))
        .collect();
    for phase in Phase::ALL {
        let mut ops: Vec<Op> = Vec::new();
        for c in cells.iter().filter(|c| c.phase == phase) {
            if !ops.contains(&c.op) {
                ops.push(c.op);
            }
        }
        if ops.is_empty() {
            continue;
        }
        let width = ops.iter().map(|o| o.name().len()).max().unwrap_or(0).max(6);
        let _ = writeln!(out, "\n{}", phase.name());
        let _ = write!(out, "  {:<width$}", "");
        for f in FAULTS {
            let _ = write!(out, " {:>4}", f.short);
        }
        out.push('\n');
        for op in ops {
            let _ = write!(out, "  {:<width$}", op.name());
            for f in FAULTS {
                let letter = by
                    .get(&(phase, op, f.label))
                    .map_or(' ', |c| c.class.letter());
                let _ = write!(out, " {letter:>4}");
            }
            out.push('\n');
        }
    }
    out.push('\n');
    let counts = counts(cells);
    for class in Class::ALL {
        let _ = writeln!(
            out,
            "  {} {:<26} {:>5}",
            class.letter(),
            class.name(),
            counts.get(&class).copied().unwrap_or(0)
        );
    }
    let heads: Vec<String> = FAULTS
        .iter()
        .map(|f| format!("{} = {}", f.short, f.label))
        .collect();
    let _ = writeln!(out, "\n  columns: {}", heads.join(", "));
    out
}

/// A cell as a JSON line (`--format json`): every field but the calls and the diagram.
pub fn cell_json(c: &CellResult) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "phase": c.phase,
        "op": c.op,
        "fault": c.fault,
        "rule": c.rule,
        "class": c.class,
        "effects": c.effects,
        "stuck_at": c.stuck_at,
        "teardown_completed": c.teardown_completed,
        "errors": c.errors,
        "warnings": c.warnings,
    })
}

/// `</` inside a script element would end it: JSON there writes `<\/`.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string().replace("</", "<\\/")
}

/// Text in HTML: markup escaped as in an XML attribute ([`crate::junit`]'s).
fn html_text(s: &str) -> String {
    crate::junit::attr(s)
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
nav button { font: inherit; padding: .3em .8em; margin-right: .3em; border: 1px solid #999;
  background: #f4f4f4; cursor: pointer; }
nav button.active { background: #333; color: #fff; }
table.heat { border-collapse: collapse; margin-top: 1em; }
table.heat th { font-weight: normal; font-size: 12px; padding: 2px 4px; }
table.heat th.op { text-align: right; }
table.heat td { width: 2.2em; height: 1.6em; text-align: center; border: 1px solid #fff; }
table.heat td a { display: block; color: inherit; text-decoration: none; }
td.na { background: #fafafa; }
.c-stuck { background: #b2182b; color: #fff; }
.c-teardown_incomplete { background: #d6604d; color: #fff; }
.c-exit_changed { background: #f4a582; }
.c-termination_lost { background: #fddbc7; }
.c-error_surfaced { background: #fee090; }
.c-retried { background: #d1e5f0; }
.c-completed { background: #92c5de; }
.c-not_reached { background: #e0e0e0; color: #888; }
.legend span { display: inline-block; padding: 2px 8px; margin: 2px; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; }
"#;

const SCRIPT: &str = r#"
const data = JSON.parse(document.getElementById('matrix-data').textContent);
const nav = document.getElementById('tabs');
const main = document.getElementById('maps');
const phases = data.phases;
phases.forEach((phase, i) => {
  const button = document.createElement('button');
  button.textContent = phase.name;
  button.id = 'tab-' + phase.id;
  button.addEventListener('click', () => show(i));
  nav.appendChild(button);
  const section = document.createElement('section');
  section.className = 'phase';
  section.id = 'phase-' + phase.id;
  const cells = data.cells.filter(c => c.phase === phase.key);
  const ops = [...new Set(cells.map(c => c.op))];
  const table = document.createElement('table');
  table.className = 'heat';
  const head = table.insertRow();
  head.appendChild(document.createElement('th'));
  data.faults.forEach(f => {
    const th = document.createElement('th');
    th.textContent = f;
    head.appendChild(th);
  });
  ops.forEach(op => {
    const row = table.insertRow();
    const th = document.createElement('th');
    th.className = 'op';
    th.textContent = op;
    row.appendChild(th);
    data.faults.forEach(f => {
      const td = row.insertCell();
      const cell = cells.find(c => c.op === op && c.fault === f);
      if (!cell) { td.className = 'na'; return; }
      td.className = 'cell c-' + cell.class;
      td.dataset.id = cell.id;
      td.title = op + ' ' + f + ' in ' + phase.name + ': ' + data.classes[cell.class] +
        (cell.stuck_at ? ' (' + cell.stuck_at + ')' : '');
      const a = document.createElement('a');
      a.href = 'cells/' + cell.id + '.html';
      a.textContent = data.letters[cell.class];
      td.appendChild(a);
    });
  });
  section.appendChild(table);
  main.appendChild(section);
});
function show(i) {
  document.querySelectorAll('section.phase').forEach((s, j) => { s.hidden = i !== j; });
  document.querySelectorAll('#tabs button').forEach((b, j) => b.classList.toggle('active', i === j));
}
show(0);
document.body.dataset.drawn = String(document.querySelectorAll('td.cell').length);
"#;

/// Writes the HTML report into `dir`: `index.html` (the heat map: a tab per phase, an op a
/// row, a fault a column, each cell linking to its page) and `cells/ID.html` (the cell's
/// rule, class, errors, warnings, calls and Mermaid diagram). Returns the index's path.
pub fn write_html(dir: &Path, header: &Header, cells: &[CellResult]) -> std::io::Result<PathBuf> {
    let cell_dir = dir.join("cells");
    std::fs::create_dir_all(&cell_dir)?;
    let phases: Vec<serde_json::Value> = Phase::ALL
        .iter()
        .filter(|p| cells.iter().any(|c| c.phase == **p))
        .map(|p| serde_json::json!({"key": p, "id": p.id(), "name": p.name()}))
        .collect();
    let classes: serde_json::Map<String, serde_json::Value> = Class::ALL
        .iter()
        .map(|c| (c.id().to_string(), c.name().into()))
        .collect();
    let letters: serde_json::Map<String, serde_json::Value> = Class::ALL
        .iter()
        .map(|c| (c.id().to_string(), c.letter().to_string().into()))
        .collect();
    let data = serde_json::json!({
        "phases": phases,
        "faults": FAULTS.iter().map(|f| f.label).collect::<Vec<_>>(),
        "classes": classes,
        "letters": letters,
        "cells": cells.iter().map(cell_json).collect::<Vec<_>>(),
    });
    let counts = counts(cells);
    let mut legend = String::new();
    for class in Class::ALL {
        let _ = write!(
            legend,
            "<span class=\"c-{}\">{} {} ({})</span>",
            class.id(),
            class.letter(),
            class.name(),
            counts.get(&class).copied().unwrap_or(0)
        );
    }
    let title = format!(
        "kata-sim fault matrix: {} ({})",
        header.base,
        header.persona.name()
    );
    let index = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>{STYLE}</style></head>\n<body>\n<h1>{t}</h1>\n<p>{n} cells: every agent RPC \
         and VM operation the lifecycle calls, by phase, under every fault that applies \
         (seed {seed}). A cell is the host's worst reaction, against the fault-free run; it \
         links to the run's calls and diagram.</p>\n<p class=\"legend\">{legend}</p>\n\
         <nav id=\"tabs\"></nav>\n<main id=\"maps\"></main>\n\
         <script type=\"application/json\" id=\"matrix-data\">{json}</script>\n\
         <script>{SCRIPT}</script>\n</body></html>\n",
        t = html_text(&title),
        n = cells.len(),
        seed = header.seed,
        json = script_json(&data),
    );
    let index_path = dir.join("index.html");
    std::fs::write(&index_path, index)?;
    for c in cells {
        let mut body = String::new();
        let _ = write!(
            body,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{id}</title>\
             <style>{STYLE}</style></head>\n<body>\n<p><a href=\"../index.html\">back to the \
             matrix</a></p>\n<h1>{op} {fault} in {phase}</h1>\n<p>rule <code>{rule}</code>: \
             <span class=\"c-{cls}\">{clsname}</span>{stuck}</p>\n",
            id = html_text(&c.id),
            op = c.op.name(),
            fault = html_text(&c.fault),
            phase = c.phase.name(),
            rule = html_text(&c.rule),
            cls = c.class.id(),
            clsname = c.class.name(),
            stuck = c
                .stuck_at
                .as_ref()
                .map(|s| format!(", stuck in <code>{}</code>", html_text(s)))
                .unwrap_or_default(),
        );
        for (what, lines) in [("errors", &c.errors), ("warnings", &c.warnings)] {
            if !lines.is_empty() {
                let _ = write!(
                    body,
                    "<h2>{what}</h2>\n<pre>{}</pre>\n",
                    html_text(&lines.join("\n"))
                );
            }
        }
        let _ = write!(
            body,
            "<h2>trace</h2>\n<pre class=\"trace\">{}</pre>\n<h2>diagram</h2>\n\
             <pre class=\"mermaid\">{}</pre>\n</body></html>\n",
            html_text(&c.calls.join("\n")),
            html_text(&c.mermaid)
        );
        std::fs::write(cell_dir.join(format!("{}.html", c.id)), body)?;
    }
    Ok(index_path)
}

/// One cell a scenario library covers: a fault of that column fired on that op in that
/// phase.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Covered {
    /// The phase.
    pub phase: Phase,
    /// The op.
    pub op: Op,
    /// The fault column's label.
    pub fault: &'static str,
}

/// The cells a run's faults covered: each firing, placed in its step's phase, in its op's row
/// and its action's column.
pub fn covered(s: &Scenario, o: &Outcome) -> BTreeSet<Covered> {
    let phases = step_phases(&s.steps);
    o.firings
        .iter()
        .filter_map(|f| {
            let op = Op::all().find(|op| op.name() == f.target)?;
            let fault = FaultColumn::of(&f.action)?;
            let phase = *phases.get(f.step?)?;
            Some(Covered {
                phase,
                op,
                fault: FAULTS[fault].label,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_column_is_a_rule_and_maps_back_to_itself() {
        for (i, c) in FAULTS.iter().enumerate() {
            let action = c.action().unwrap_or_else(|| panic!("{} parses", c.label));
            assert_eq!(FaultColumn::of(&action), Some(i), "{}", c.label);
        }
        let ids: BTreeSet<String> = FAULTS
            .iter()
            .map(|f| cell_id(Phase::Running, Op::Agent(Method::WaitProcess), f.label))
            .collect();
        assert_eq!(ids.len(), FAULTS.len());
        assert!(
            ids.contains("running.WaitProcess.error-INTERNAL"),
            "{ids:?}"
        );
    }

    #[test]
    fn phases_follow_the_host_steps_and_own_steps_stay_in_theirs() {
        let s: Scenario = crate::load::parse(
            Path::new("t.yaml"),
            "name: t\nsteps:\n  - create_sandbox: {}\n  - advance_time: 1\n  \
             - create_container: {id: c1, args: [true]}\n  - start: c1\n  - push_oom: c1\n  \
             - stop: c1\n",
        )
        .unwrap();
        assert_eq!(
            step_phases(&s.steps),
            [
                Phase::SandboxStart,
                Phase::SandboxStart,
                Phase::ContainerCreate,
                Phase::Running,
                Phase::Running,
                Phase::Stop,
                Phase::SandboxTeardown
            ]
        );
        let w = windows(&s.steps);
        assert_eq!(w[&Phase::Running], (3, 5));
        // No destroy_sandbox step: the teardown window is the implicit teardown.
        assert_eq!(w[&Phase::SandboxTeardown], (6, 6));
    }

    #[test]
    fn the_class_is_the_worst_effect() {
        assert_eq!(class(false, &[]), Class::NotReached);
        assert_eq!(class(true, &[]), Class::Completed);
        assert_eq!(
            class(true, &[Effect::ExitChanged, Effect::Retried]),
            Class::ExitChanged
        );
    }
}
