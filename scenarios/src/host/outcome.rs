//! The normalized record of a run ([`Outcome`]) and the messages of a run that got stuck.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sim_agent::fault::FaultEngine;
use sim_agent::{SimAgent, Trace};

use super::world::{Host, Transport};
use crate::record::{Call, FaultFired, TaskState, Warning};
use crate::schema::{Persona, Scenario, Teardown};

/// What one process did, as the host saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcessOutcome {
    /// Its exit status, once the host reaped it.
    pub exit_code: Option<i32>,
    /// All of its stdout.
    pub stdout: String,
    /// All of its stderr.
    pub stderr: String,
}

/// The normalized record of a run: what a snapshot holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The scenario.
    pub name: String,
    /// The persona that ran it.
    pub persona: Persona,
    /// The seed.
    pub seed: u64,
    /// Every agent RPC and VM operation, in order (identical consecutive ones folded).
    pub calls: Vec<Call>,
    /// The faults that fired, in order (identical consecutive ones folded).
    pub faults: Vec<FaultFired>,
    /// How many faults fired before the oldest one [`Outcome::faults`] keeps (a bounded
    /// engine's record); they count toward `faults_fired`.
    #[serde(skip_serializing_if = "is_zero")]
    pub faults_not_kept: u64,
    /// Processes by `container` or `container/exec`.
    pub processes: BTreeMap<String, ProcessOutcome>,
    /// The host termination-message file of each container that has one (`None`: absent).
    pub host_files: BTreeMap<String, Option<String>>,
    /// What containerd sees of each container's task at the end: the status the persona
    /// last published and when ([`TaskState`]).
    pub tasks: BTreeMap<String, TaskState>,
    /// Errors the host reported (failed steps).
    pub errors: Vec<String>,
    /// Warnings the host logged (and went on), identical consecutive ones folded.
    pub warnings: Vec<Warning>,
    /// Whether the sandbox was torn down.
    pub teardown: Teardown,
    /// Containers left in the guest at the end, sorted.
    pub guest_containers: Vec<String>,
    /// Each step as a real runtime ran it (the shim driver): its real duration and the task
    /// states the shim reported after it. Empty for the built-in host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::shim::StepRecord>,
    /// Where the host was stuck each time a bound ran out (the errors say it in words; this
    /// is the same, typed, for [`crate::matrix`]'s classification). Not in snapshots.
    #[serde(skip)]
    pub stuck: Vec<Stuck>,
    /// Each fault that fired (of those the engine kept), typed, with the step it fired in
    /// (the teardown is `steps.len()`). Not in snapshots.
    #[serde(skip)]
    pub firings: Vec<Firing>,
}

/// One fault that fired, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// The rule (engine ids count from 1 in install order: the scenario's `faults`, then its
    /// `add_fault` steps as they run).
    pub rule: sim_agent::fault::RuleId,
    /// Which of the calls the rule was asked about it fired on ([`sim_agent::fault::Fired::nth`]).
    pub nth: u64,
    /// The call's target (`CreateContainer`, `StartVM`).
    pub target: String,
    /// What it did.
    pub action: sim_agent::fault::Action,
    /// The step it fired in (`steps.len()`: the teardown after the last step); `None` for
    /// a host that does not say when its steps start.
    pub step: Option<usize>,
}

/// One bound that ran out: the step (`steps[2]`) or `teardown`, and the call in flight the
/// longest that no earlier one blamed, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// `steps[I]` or `teardown`.
    pub what: String,
    /// The call it was stuck in.
    pub call: Option<Call>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Outcome {
    /// How many faults fired in all: the ones kept (each standing for its count) and the
    /// ones not kept.
    pub fn faults_fired(&self) -> u64 {
        self.faults
            .iter()
            .fold(self.faults_not_kept, |n, f| n.saturating_add(f.count))
    }
}

/// The call the host is stuck in: the most recent call that has not answered, other than the
/// background loops' (`GetOOMEvent` always waits; the monitor's checks only if nothing else
/// does), and not one already blamed for an earlier stop.
pub fn stuck_call(trace: &Trace, blamed: &mut Vec<u64>) -> Option<Call> {
    use sim_agent::{Method, Op, VmOp};
    let events = trace.events();
    let pending = |e: &&sim_agent::TraceEvent| {
        !e.status.answered()
            && e.method != Op::Agent(Method::GetOOMEvent)
            && !blamed.contains(&e.seq)
    };
    let monitor = |e: &&sim_agent::TraceEvent| {
        matches!(e.method, Op::Agent(Method::Check) | Op::Vm(VmOp::CheckVM))
    };
    let e = events
        .iter()
        .rev()
        .filter(pending)
        .find(|e| !monitor(e))
        .or_else(|| events.iter().rev().filter(pending).find(monitor))?;
    blamed.push(e.seq);
    Some(Call::from(e))
}

/// The call a running host waits on now (as a stopped run would blame it), for a live
/// progress line.
pub fn waiting_on(trace: &Trace) -> Option<String> {
    stuck_call(trace, &mut Vec::new()).map(|c| c.short())
}

/// What the guest model noted (such as a shell word its userland did not understand) on the
/// calls about `call`'s process (its container, and its exec when both calls name one), or on
/// any call when `call` names no container: in order, each once.
pub(super) fn notes(trace: &Trace, call: Option<&Call>) -> Vec<String> {
    fn named(v: Option<&str>) -> Option<&str> {
        v.filter(|v| !v.is_empty())
    }
    let container = call.and_then(|c| named(c.field("container_id")));
    let exec = call.and_then(|c| named(c.field("exec_id")));
    let mut out: Vec<String> = Vec::new();
    for e in trace.events() {
        let Some(n) = &e.note else { continue };
        let other_container = container.is_some_and(|c| named(e.field("container_id")) != Some(c));
        let other_exec = matches!(
            (exec, named(e.field("exec_id"))),
            (Some(a), Some(b)) if a != b
        );
        if other_container || other_exec || out.contains(n) {
            continue;
        }
        out.push(n.clone());
    }
    out
}

/// What a run that stopped waiting reports: where it was stuck and for how long, and what the
/// guest model noted that explains it (a program that runs until signalled).
pub(super) fn stuck_message(
    what: &str,
    trace: &Trace,
    call: Option<Call>,
    waited: Duration,
    clock: &str,
) -> String {
    // Whole seconds as `3600`, shorter waits as `0.25`.
    let secs = waited.as_secs_f64();
    let notes = notes(trace, call.as_ref());
    let mut text = match call {
        Some(c) => format!(
            "{what}: stuck in {} after {secs} s of {clock} time",
            c.short()
        ),
        None => format!("{what}: did not finish within {secs} s of {clock} time"),
    };
    if !notes.is_empty() {
        text.push_str(&format!(" (the guest noted: {})", notes.join("; ")));
    }
    text
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The outcome of a run that could not start or did not end (`error` says why): no call, an
/// incomplete teardown.
pub fn failed(s: &Scenario, error: String) -> Outcome {
    Outcome {
        name: s.name.clone(),
        persona: s.config.persona,
        seed: s.seed,
        calls: Vec::new(),
        faults: Vec::new(),
        faults_not_kept: 0,
        processes: BTreeMap::new(),
        host_files: BTreeMap::new(),
        tasks: BTreeMap::new(),
        errors: vec![error],
        warnings: Vec::new(),
        teardown: Teardown::Incomplete,
        guest_containers: Vec::new(),
        steps: Vec::new(),
        stuck: Vec::new(),
        firings: Vec::new(),
    }
}

/// The normalized record of a run, from what the host and the guest left.
pub(super) fn outcome<T: Transport>(
    s: &Scenario,
    host: &Host<T>,
    trace: &Trace,
    engine: &FaultEngine,
    teardown_ok: bool,
) -> Outcome {
    let guest_containers = host
        .guest
        .as_ref()
        .map(|a| {
            if a.is_dead() {
                Vec::new()
            } else {
                a.container_ids()
            }
        })
        .unwrap_or_default();
    // Torn down: the VM is stopped, and no container is left in a guest that still lives.
    let guest_dead = host.guest.as_ref().is_some_and(SimAgent::is_dead);
    let all_removed = host.containers.values().all(|c| c.removed) || guest_dead;
    let teardown = if teardown_ok && all_removed && host.vm_stopped == host.agent.is_some() {
        Teardown::Completed
    } else {
        Teardown::Incomplete
    };
    let host_files = host
        .containers
        .iter()
        .filter_map(|(id, c)| {
            c.host_file.as_ref().map(|f| {
                let content = std::fs::read(f)
                    .ok()
                    .map(|d| String::from_utf8_lossy(&d).into_owned());
                (id.clone(), content)
            })
        })
        .collect();
    let log = std::mem::take(&mut *host.log.lock().unwrap_or_else(|p| p.into_inner()));
    let processes = host
        .processes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Outcome {
        name: s.name.clone(),
        persona: s.config.persona,
        seed: s.seed,
        calls: trace.events().iter().map(Call::from).collect(),
        faults: FaultFired::folded(&engine.fired()),
        faults_not_kept: engine.fired_dropped(),
        processes,
        host_files,
        tasks: host.tasks().states.clone(),
        errors: log.errors,
        warnings: log.warnings,
        teardown,
        guest_containers,
        steps: Vec::new(),
        stuck: log.stuck,
        firings: firings(engine, &host.marks),
    }
}

/// The engine's kept firings, each placed in the step that was running when it fired.
pub(crate) fn firings(engine: &FaultEngine, marks: &[(usize, u64)]) -> Vec<Firing> {
    let first = engine.fired_dropped();
    engine
        .fired()
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let n = first + i as u64;
            let step = marks
                .iter()
                .take_while(|(_, fired)| *fired <= n)
                .last()
                .map(|(step, _)| *step);
            Firing {
                rule: f.rule,
                nth: f.nth,
                target: f.target,
                action: f.kind,
                step,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_agent::{CallStatus, Method};

    #[test]
    fn a_stuck_run_names_the_call_and_what_the_guest_noted() {
        let trace = Trace::folding();
        let c = |id: &str| ("container_id", id.to_string());
        let s = trace.begin(Method::StartContainer, None, &[c("c1")]);
        trace.note(
            s,
            "sh -c \"echo $HOME\": \"$\": runs until signalled".into(),
        );
        trace.end(s, CallStatus::Ok, "");
        let s = trace.begin(Method::StartContainer, None, &[c("c2")]);
        trace.note(s, "c2's word".into());
        trace.end(s, CallStatus::Ok, "");
        trace.begin(Method::GetOOMEvent, None, &[]);
        let mut blamed = Vec::new();
        // Nothing is pending but the OOM watcher: the run did not finish, every note counts.
        assert_eq!(stuck_call(&trace, &mut blamed), None);
        assert_eq!(
            stuck_message("the run", &trace, None, Duration::from_secs(120), "real"),
            "the run: did not finish within 120 s of real time (the guest noted: \
             sh -c \"echo $HOME\": \"$\": runs until signalled; c2's word)"
        );
        trace.begin(
            Method::WaitProcess,
            None,
            &[c("c1"), ("exec_id", "c1".into())],
        );
        let call = stuck_call(&trace, &mut blamed);
        assert_eq!(
            stuck_message(
                "steps[3]",
                &trace,
                call,
                Duration::from_secs(3600),
                "virtual"
            ),
            "steps[3]: stuck in WaitProcess{container_id=c1, exec_id=c1} after 3600 s of \
             virtual time (the guest noted: sh -c \"echo $HOME\": \"$\": runs until signalled)"
        );
        assert_eq!(
            stuck_call(&trace, &mut blamed),
            None,
            "a call is blamed once"
        );
    }
}
