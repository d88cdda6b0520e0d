//! Checking a run's [`Outcome`] against its scenario's `expect` section.

use crate::host::Outcome;
use crate::record::Call;
use crate::schema::{Scenario, Teardown};

/// One unmet expectation: what was expected and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The expectation (`exit_codes.c1`).
    pub what: String,
    /// Expected.
    pub expected: String,
    /// Actual.
    pub actual: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:\n  - expected: {}\n  + actual:   {}",
            self.what, self.expected, self.actual
        )
    }
}

/// Whether `call` is a call of the operation an expectation names (`order`, `absent`).
fn is_call_of(call: &Call, want: &sim_agent::Op) -> bool {
    call.op == *want
}

/// Text as a person reads it: quoted, escapes shown (`"hi\n"`).
fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// A list of texts as a person reads it: each quoted, or `none`.
fn quoted_list(texts: &[String]) -> String {
    if texts.is_empty() {
        return "none".into();
    }
    texts
        .iter()
        .map(|t| quoted(t))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A teardown as a scenario writes it.
fn teardown(t: Teardown) -> &'static str {
    match t {
        Teardown::Completed => "completed",
        Teardown::Incomplete => "incomplete",
    }
}

/// Where a call first appears: `at call 3` (from 1, as a person counts), or `never called`.
fn at(position: Option<usize>) -> String {
    position.map_or("never called".into(), |p| format!("at call {}", p + 1))
}

/// Every unmet expectation, in a stable order.
pub fn check(s: &Scenario, o: &Outcome) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut miss = |what: String, expected: String, actual: String| {
        out.push(Mismatch {
            what,
            expected,
            actual,
        })
    };
    let e = &s.expect;
    for (key, want) in &e.exit_codes {
        let got = o.processes.get(key).and_then(|p| p.exit_code);
        if got != Some(*want) {
            miss(
                format!("exit_codes.{key}"),
                want.to_string(),
                got.map_or("no exit status".into(), |c| c.to_string()),
            );
        }
    }
    for (key, want) in &e.stdout {
        let got = o.processes.get(key).map(|p| p.stdout.as_str());
        if got != Some(want.as_str()) {
            miss(
                format!("stdout.{key}"),
                quoted(want),
                got.map_or(format!("no process {key}"), quoted),
            );
        }
    }
    for (key, want) in &e.host_files {
        let got = o.host_files.get(key).and_then(Option::as_deref);
        // `null` means the file stays empty.
        let want_text = want.as_deref().unwrap_or_default();
        if got != Some(want_text) {
            miss(
                format!("host_files.{key}"),
                quoted(want_text),
                got.map_or("no file".into(), quoted),
            );
        }
    }
    for want in &e.errors {
        if !o.errors.iter().any(|x| x.contains(want.as_str())) {
            miss(
                "errors".into(),
                format!("one containing {}", quoted(want)),
                quoted_list(&o.errors),
            );
        }
    }
    if e.errors.is_empty() && !o.errors.is_empty() {
        miss("errors".into(), "none".into(), quoted_list(&o.errors));
    }
    for want in &e.warnings {
        if !o.warnings.iter().any(|x| x.line().contains(want.as_str())) {
            let warnings: Vec<String> = o.warnings.iter().map(ToString::to_string).collect();
            miss(
                "warnings".into(),
                format!("one containing {}", quoted(want)),
                quoted_list(&warnings),
            );
        }
    }
    for never in &e.never {
        let hit = o
            .errors
            .iter()
            .cloned()
            .chain(o.warnings.iter().map(|w| w.line()))
            .find(|x| x.contains(never.as_str()));
        if let Some(hit) = hit {
            miss(
                format!("never {}", quoted(never)),
                "in no error or warning".into(),
                quoted(&hit),
            );
        }
    }
    if let Some(t) = e.teardown
        && t != o.teardown
    {
        miss(
            "teardown".into(),
            teardown(t).into(),
            teardown(o.teardown).into(),
        );
    }
    for [a, b] in &e.order {
        let pa = o.calls.iter().position(|c| is_call_of(c, a));
        let pb = o.calls.iter().position(|c| is_call_of(c, b));
        match (pa, pb) {
            (Some(x), Some(y)) if x < y => {}
            _ => miss(
                format!("order {a} before {b}"),
                format!("{a} at some call before {b}"),
                format!("{a} {}, {b} {}", at(pa), at(pb)),
            ),
        }
    }
    for m in &e.absent {
        if let Some(c) = o.calls.iter().find(|c| is_call_of(c, m)) {
            miss(format!("absent {m}"), "never called".into(), c.to_string());
        }
    }
    for (key, want) in &e.tasks {
        let got = o.tasks.get(key);
        let shown = || got.map_or("no task".to_string(), ToString::to_string);
        if let Some(st) = want.status
            && got.map(|t| t.status) != Some(st)
        {
            miss(format!("tasks.{key}.status"), st.name().into(), shown());
        }
        if let Some(code) = want.exit_status
            && got.and_then(|t| t.exit_status) != Some(code)
        {
            miss(
                format!("tasks.{key}.exit_status"),
                code.to_string(),
                shown(),
            );
        }
        let at = got.map(|t| t.published_at.as_secs_f64());
        if let Some(after) = want.published_after
            && !at.is_some_and(|at| at >= after.secs())
        {
            miss(
                format!("tasks.{key}.published_after"),
                format!("published at or after {} s", after.secs()),
                shown(),
            );
        }
        if let Some(before) = want.published_before
            && !at.is_some_and(|at| at < before.secs())
        {
            miss(
                format!("tasks.{key}.published_before"),
                format!("published before {} s", before.secs()),
                shown(),
            );
        }
    }
    let fired = o.faults_fired();
    if let Some(n) = e.faults_fired
        && n as u64 != fired
    {
        let mut kept: Vec<String> = o.faults.iter().map(ToString::to_string).collect();
        if o.faults_not_kept > 0 {
            kept.insert(0, format!("{} earlier ones not kept", o.faults_not_kept));
        }
        miss(
            "faults_fired".into(),
            n.to_string(),
            if kept.is_empty() {
                fired.to_string()
            } else {
                format!("{fired} ({})", kept.join(", "))
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{ProcessOutcome, failed};
    use crate::record::{Call, FaultFired, TaskState, TaskStatus};
    use sim_agent::{CallStatus, Method, Op};

    fn scenario(expect: &str) -> Scenario {
        // The containers the expectations name must be created by some step.
        let text = format!(
            "name: t\nsteps:\n  - create_sandbox: {{}}\n  - create_container: {{ id: c1, args: [x] }}\n  - create_container: {{ id: c2, args: [x] }}\nexpect:\n{expect}"
        );
        crate::load::parse(std::path::Path::new("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn call(method: Method, count: u64) -> Call {
        Call {
            op: Op::Agent(method),
            fields: vec![("container_id".into(), "c1".into())],
            status: CallStatus::Ok,
            fault: None,
            note: None,
            count,
        }
    }

    fn shown(m: &[Mismatch]) -> Vec<String> {
        m.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn failures_read_as_a_person_writes_them() {
        let s = scenario(
            "  exit_codes: { c1: 0 }
  stdout: { c1: \"hi\\n\", c2: \"x\" }
  host_files: { c1: \"bye\\n\" }
  teardown: completed
  order: [[DestroySandbox, Check]]
  absent: [Check]
  faults_fired: 1
  tasks:
    c1: { status: stopped, exit_status: 2, published_after: 30 }
    c2: { status: running, published_before: 1 }
",
        );
        let mut o = failed(&s, "boom".into());
        o.processes.insert(
            "c1".into(),
            ProcessOutcome {
                exit_code: None,
                stdout: "ho\n".into(),
                stderr: String::new(),
            },
        );
        o.calls = vec![call(Method::Check, 3)];
        o.faults = vec![FaultFired {
            rule: 1,
            target: "Check".into(),
            action: "hang".into(),
            count: 2,
        }];
        o.faults_not_kept = 5;
        o.tasks.insert(
            "c1".into(),
            TaskState {
                status: TaskStatus::Running,
                exit_status: None,
                published_at: std::time::Duration::from_millis(40),
                exited_at: Some(std::time::Duration::from_millis(50)),
            },
        );
        let text = shown(&check(&s, &o)).join("\n");
        for want in [
            "exit_codes.c1:\n  - expected: 0\n  + actual:   no exit status",
            "stdout.c1:\n  - expected: \"hi\\n\"\n  + actual:   \"ho\\n\"",
            "stdout.c2:\n  - expected: \"x\"\n  + actual:   no process c2",
            "host_files.c1:\n  - expected: \"bye\\n\"\n  + actual:   no file",
            "errors:\n  - expected: none\n  + actual:   \"boom\"",
            "teardown:\n  - expected: completed\n  + actual:   incomplete",
            "order DestroySandbox before Check:\n  - expected: DestroySandbox at some call before Check\n  + actual:   DestroySandbox never called, Check at call 1",
            "absent Check:\n  - expected: never called\n  + actual:   Check container_id=c1 -> OK x3",
            "faults_fired:\n  - expected: 1\n  + actual:   7 (5 earlier ones not kept, #1 Check hang x2)",
            "tasks.c1.status:\n  - expected: STOPPED\n  + actual:   RUNNING published_at=0.040s exited_at=0.050s (ctr task delete: FAILED_PRECONDITION)",
            "tasks.c1.exit_status:\n  - expected: 2\n  + actual:   RUNNING",
            "tasks.c1.published_after:\n  - expected: published at or after 30 s\n  + actual:   RUNNING published_at=0.040s",
            "tasks.c2.status:\n  - expected: RUNNING\n  + actual:   no task",
            "tasks.c2.published_before:\n  - expected: published before 1 s\n  + actual:   no task",
        ] {
            assert!(text.contains(want), "{want}\nnot in:\n{text}");
        }
        assert!(!text.contains("Some(") && !text.contains("None"), "{text}");
    }

    #[test]
    fn met_expectations_compare_typed_calls() {
        let s = scenario(
            "  errors: [boom]\n  order: [[Check, DestroySandbox]]\n  absent: [StopVM]\n  faults_fired: 0\n",
        );
        let mut o = failed(&s, "boom".into());
        o.calls = vec![call(Method::Check, 1), call(Method::DestroySandbox, 1)];
        assert_eq!(check(&s, &o), []);
    }
}
