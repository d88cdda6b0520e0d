//! Snapshots of runs outside `cargo test`: `kata-sim run --snapshots DIR` holds each outcome
//! against `DIR/<scenario>.snap`, in insta's file format, so `cargo insta review` (run in the
//! directory's workspace) accepts or rejects a changed one as it does the library's.
//!
//! A missing snapshot is written (the first run records it); one that differs is left alone,
//! the new outcome goes to `<scenario>.snap.new` and the run fails. A real runtime's run
//! ([`Outcome::steps`] not empty) is on the real clock: its times (when a task state was
//! published, each step's duration) are left out, so that the same behaviour snapshots the
//! same.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::Outcome;

/// What became of a run's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snap {
    /// It matched the stored one.
    Matched,
    /// There was none: this one was written.
    Written(PathBuf),
    /// It differs: the new one is at this path, beside the stored one.
    Differs(PathBuf),
}

/// `-<16 hex digits>-` (a runtime's random file-name part) as `-[random]-`.
fn random_parts(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = String::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let hex = bytes.get(i + 1..i + 17).is_some_and(|h| {
            h.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        });
        if bytes[i] == b'-' && hex && bytes.get(i + 17) == Some(&b'-') {
            out.push_str("-[random]");
            i += 17;
        } else {
            let c = v[i..].chars().next().unwrap_or('?');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The shim driver's run directory (`/tmp/kata-sim-shim-AbC123`) as `[run]`.
fn run_dir(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(at) = rest.find("kata-sim-shim-") {
        // The directory's whole path: back to the `/` that starts it.
        let start = rest[..at]
            .rfind(|c: char| c.is_whitespace() || c == '"' || c == '=')
            .map_or(0, |i| i + 1);
        out.push_str(&rest[..start]);
        let after = &rest[at + "kata-sim-shim-".len()..];
        let end = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        out.push_str("[run]");
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The outcome as a snapshot holds it. A real runtime's run has its real-clock times zeroed,
/// the random parts of the file names it chose (`c7-1fec8353d6b4d56a-termination-log`) and
/// the network namespace it made left out.
pub fn redacted(o: &Outcome) -> Outcome {
    let mut o = o.clone();
    if !o.steps.is_empty() {
        redact(&mut o);
    }
    o
}

/// A run as `kata-sim diff` compares it: redacted as a real runtime's snapshot is, on both
/// sides (the built-in host's random name parts are seeded, a real runtime's are not), and
/// without the per-step task states, which only a real runtime's run has.
pub fn compared(o: &Outcome) -> Outcome {
    let mut o = o.clone();
    redact(&mut o);
    o.steps.clear();
    o
}

/// The YAML lines of a [`compared`] outcome but its calls (which are diffed call by call).
pub fn rest_lines(o: &Outcome) -> Result<Vec<String>, String> {
    let mut o = o.clone();
    o.calls.clear();
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    let text = serde_saphyr::to_string_with_options(&o, options).map_err(|e| e.to_string())?;
    Ok(text.lines().map(str::to_string).collect())
}

/// Whether a real runtime makes call `c` concurrently with its neighbours: the OOM watcher's
/// GetOOMEvent, the stream copies' reads, the file copies of a container's create.
fn concurrent(c: &crate::record::Call) -> bool {
    use sim_agent::Method;
    matches!(
        c.op,
        sim_agent::Op::Agent(
            Method::GetOOMEvent | Method::CopyFile | Method::ReadStdout | Method::ReadStderr
        )
    )
}

/// A real runtime's calls in a canonical order: each run of neighbouring concurrent calls
/// sorted by name (a stable sort: the CopyFiles keep their order), then identical neighbours
/// counted together, as the record folds them.
fn canonical_order(calls: &mut Vec<crate::record::Call>) {
    let mut i = 0;
    while i < calls.len() {
        let run = calls[i..].iter().take_while(|c| concurrent(c)).count();
        calls[i..i + run].sort_by_key(|c| c.op.name());
        i += run.max(1);
    }
    let mut out = Vec::with_capacity(calls.len());
    for c in calls.drain(..) {
        crate::record::Call::push_folded(&mut out, c);
    }
    *calls = out;
}

fn redact(o: &mut Outcome) {
    canonical_order(&mut o.calls);
    for c in &mut o.calls {
        for (k, v) in &mut c.fields {
            if k == "netns" && !v.is_empty() {
                *v = "[netns]".into();
            } else {
                *v = run_dir(&random_parts(v));
            }
        }
    }
    for w in &mut o.warnings {
        w.message = run_dir(&random_parts(&w.message));
        if let Some(e) = &mut w.error {
            *e = run_dir(&random_parts(e));
        }
    }
    for e in &mut o.errors {
        *e = run_dir(&random_parts(e));
    }
    // A real runtime logs from several threads (and walks hash maps): its warnings' order is
    // not its behaviour. Sorted, with equal ones counted together.
    let mut warnings = std::mem::take(&mut o.warnings);
    warnings.sort_by(|a, b| (a.level, &a.message, &a.error).cmp(&(b.level, &b.message, &b.error)));
    for w in warnings {
        crate::record::Warning::push_folded(&mut o.warnings, w);
    }
    for t in o.tasks.values_mut() {
        t.published_at = Duration::ZERO;
        t.exited_at = None;
    }
    for s in &mut o.steps {
        s.took = Duration::ZERO;
        if !s.settled {
            s.tasks.clear();
        }
    }
}

/// The body of a snapshot of `o`.
pub fn render(o: &Outcome) -> Result<String, String> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(&redacted(o), options)
        .map_err(|e| format!("rendering the snapshot: {e}"))
}

fn body(file: &str) -> &str {
    // insta's header: `---`, metadata lines, `---`.
    file.strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n").map(|(_, b)| b))
        .unwrap_or(file)
}

/// Holds `o` against its snapshot in `dir`.
pub fn check(dir: &Path, o: &Outcome) -> Result<Snap, String> {
    let text = render(o)?;
    let file = format!(
        "---\nsource: kata-sim run\nexpression: {}\n---\n{text}",
        o.name
    );
    let path = dir.join(format!("{}.snap", o.name));
    let new = dir.join(format!("{}.snap.new", o.name));
    match std::fs::read_to_string(&path) {
        Ok(stored) if body(&stored).trim_end() == text.trim_end() => {
            let _ = std::fs::remove_file(&new);
            Ok(Snap::Matched)
        }
        Ok(_) => {
            std::fs::write(&new, file).map_err(|e| format!("{}: {e}", new.display()))?;
            Ok(Snap::Differs(new))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::write(&path, file).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Snap::Written(path))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn outcome() -> Outcome {
        let s = crate::load::parse(Path::new("t.yaml"), "name: snap-t\nsteps: []\n")
            .unwrap_or_else(|e| panic!("{e}"));
        crate::host::failed(&s, "an error".into())
    }

    #[test]
    fn a_snapshot_is_written_then_matched_then_a_change_goes_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let o = outcome();
        assert_eq!(
            check(dir.path(), &o).unwrap(),
            Snap::Written(dir.path().join("snap-t.snap"))
        );
        assert_eq!(check(dir.path(), &o).unwrap(), Snap::Matched);
        let mut changed = o.clone();
        changed.errors = vec!["another error".into()];
        let new = dir.path().join("snap-t.snap.new");
        assert_eq!(
            check(dir.path(), &changed).unwrap(),
            Snap::Differs(new.clone())
        );
        assert!(
            std::fs::read_to_string(&new)
                .unwrap()
                .contains("another error")
        );
        let stored = std::fs::read_to_string(dir.path().join("snap-t.snap")).unwrap();
        assert!(
            stored.contains("an error") && !stored.contains("another"),
            "{stored}"
        );
        // Matching again removes the stale .snap.new.
        assert_eq!(check(dir.path(), &o).unwrap(), Snap::Matched);
        assert!(!new.exists());
    }

    #[test]
    fn diff_compares_the_fields_besides_the_calls_with_random_parts_redacted() {
        let mut a = outcome();
        a.processes.insert(
            "c1".into(),
            crate::host::ProcessOutcome {
                exit_code: Some(0),
                ..Default::default()
            },
        );
        a.host_files = BTreeMap::from([("c1".to_string(), Some("done".to_string()))]);
        let mut b = a.clone();
        a.warnings.push(crate::record::Warning::once(
            "copying /run/kata-containers/shared/containers/c1-0123456789abcdef-hosts",
        ));
        b.warnings.push(crate::record::Warning::once(
            "copying /run/kata-containers/shared/containers/c1-fedcba9876543210-hosts",
        ));
        // A built-in run (no steps) is redacted too, so seeded names compare equal to real ones.
        assert_eq!(rest_lines(&compared(&a)), rest_lines(&compared(&b)));
        b.processes.get_mut("c1").unwrap().exit_code = Some(3);
        let (la, lb) = (
            rest_lines(&compared(&a)).unwrap(),
            rest_lines(&compared(&b)).unwrap(),
        );
        assert_ne!(la, lb);
        let diff = crate::render::diff(&la, &lb);
        assert!(
            diff.iter()
                .any(|l| l.starts_with("+ ") && l.contains("exit_code: 3")),
            "{diff:?}"
        );
        assert!(
            diff.iter()
                .all(|l| !l.contains("calls: [") || l.starts_with("  "))
        );
    }

    #[test]
    fn concurrent_neighbours_take_a_canonical_order_and_fold() {
        use crate::record::Call;
        use sim_agent::{CallStatus, Method, Op};
        let call = |m: Method, field: &str| Call {
            op: Op::Agent(m),
            fields: vec![("container_id".into(), field.into())],
            status: CallStatus::Ok,
            fault: None,
            note: None,
            count: 1,
        };
        let a = vec![
            call(Method::StartContainer, "c1"),
            call(Method::ReadStdout, "c1"),
            call(Method::ReadStderr, "c1"),
            call(Method::ReadStdout, "c1"),
            call(Method::WaitProcess, "c1"),
        ];
        let b = vec![
            call(Method::StartContainer, "c1"),
            call(Method::ReadStderr, "c1"),
            call(Method::ReadStdout, "c1"),
            call(Method::ReadStdout, "c1"),
            call(Method::WaitProcess, "c1"),
        ];
        let (mut a, mut b) = (a, b);
        canonical_order(&mut a);
        canonical_order(&mut b);
        assert_eq!(a, b);
        let names: Vec<String> = a
            .iter()
            .map(|c| format!("{} x{}", c.op.name(), c.count))
            .collect();
        assert_eq!(
            names,
            [
                "StartContainer x1",
                "ReadStderr x1",
                "ReadStdout x2",
                "WaitProcess x1"
            ]
        );
        // Calls that are not concurrent keep their order, and CopyFiles keep theirs.
        let mut c = vec![
            call(Method::CopyFile, "hosts"),
            call(Method::GetOOMEvent, ""),
            call(Method::CopyFile, "resolv.conf"),
            call(Method::CreateContainer, "c1"),
        ];
        canonical_order(&mut c);
        let order: Vec<&str> = c.iter().map(|c| c.fields[0].1.as_str()).collect();
        assert_eq!(order, ["hosts", "resolv.conf", "", "c1"]);
    }

    #[test]
    fn random_name_parts_are_redacted_and_nothing_else() {
        assert_eq!(
            random_parts(
                "/run/kata-containers/shared/containers/c7-1fec8353d6b4d56a-termination-log"
            ),
            "/run/kata-containers/shared/containers/c7-[random]-termination-log"
        );
        assert_eq!(random_parts("c7-1fec8353d6b4d56-x"), "c7-1fec8353d6b4d56-x");
        assert_eq!(random_parts("é-0123456789abcdef-"), "é-[random]-");
        assert_eq!(
            run_dir("open /tmp/kata-sim-shim-Ab12cd/vms/c7/agent.sock: gone"),
            "open [run]/vms/c7/agent.sock: gone"
        );
        assert_eq!(
            run_dir("path=\"/tmp/kata-sim-shim-x1/a\""),
            "path=\"[run]/a\""
        );
    }
}
