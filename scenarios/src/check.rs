//! Checking a run's [`Outcome`] against its scenario's `expect` section.

use crate::host::Outcome;
use crate::schema::Scenario;

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

/// The method name of a call line (`CreateContainer container_id=c1 -> OK`).
fn method(call: &str) -> &str {
    call.split_whitespace().next().unwrap_or_default()
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
                format!("{want:?}"),
                format!("{got:?}"),
            );
        }
    }
    for (key, want) in &e.host_files {
        let got = o.host_files.get(key).cloned().flatten();
        // `null` means the file stays empty.
        let want_text = want.clone().unwrap_or_default();
        if got.as_deref() != Some(want_text.as_str()) {
            miss(
                format!("host_files.{key}"),
                format!("{want_text:?}"),
                format!("{got:?}"),
            );
        }
    }
    for want in &e.errors {
        if !o.errors.iter().any(|x| x.contains(want.as_str())) {
            miss(
                "errors".into(),
                format!("one containing {want:?}"),
                format!("{:?}", o.errors),
            );
        }
    }
    if e.errors.is_empty() && !o.errors.is_empty() {
        miss("errors".into(), "none".into(), format!("{:?}", o.errors));
    }
    for want in &e.warnings {
        if !o.warnings.iter().any(|x| x.contains(want.as_str())) {
            miss(
                "warnings".into(),
                format!("one containing {want:?}"),
                format!("{:?}", o.warnings),
            );
        }
    }
    if let Some(t) = e.teardown
        && t != o.teardown
    {
        miss(
            "teardown".into(),
            format!("{t:?}"),
            format!("{:?}", o.teardown),
        );
    }
    for [a, b] in &e.order {
        let pa = o.calls.iter().position(|c| method(c) == a.name());
        let pb = o.calls.iter().position(|c| method(c) == b.name());
        match (pa, pb) {
            (Some(x), Some(y)) if x < y => {}
            _ => miss(
                format!("order {a} before {b}"),
                format!("{a} at some call before {b}"),
                format!("{a} at {pa:?}, {b} at {pb:?}"),
            ),
        }
    }
    for m in &e.absent {
        if let Some(c) = o.calls.iter().find(|c| method(c) == m.name()) {
            miss(format!("absent {m}"), "never called".into(), c.clone());
        }
    }
    // Folded lines (`... x3`) stand for several faults.
    let fired: u64 = o.faults.iter().map(|l| crate::host::line_count(l)).sum();
    if let Some(n) = e.faults_fired
        && n as u64 != fired
    {
        miss(
            "faults_fired".into(),
            n.to_string(),
            format!("{fired} {:?}", o.faults),
        );
    }
    out
}
