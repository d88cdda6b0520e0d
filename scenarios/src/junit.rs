//! JUnit XML of a run, in the shape Jenkins (the junit plugin) and GitLab read.
//!
//! ```text
//! <testsuites name tests failures errors skipped time>
//!   <testsuite name tests failures errors skipped time timestamp hostname>
//!     <testcase classname name time>
//!       <failure message type>…</failure> | <error message type>…</error> | <skipped message/>
//!       <system-out>…</system-out>
//!     </testcase>
//!   </testsuite>
//! </testsuites>
//! ```
//!
//! - One `<testcase>` per scenario file: `name` is the scenario's name (the file, when it did
//!   not load), `classname` the file's directory and the persona (`scenarios.library.go`), so
//!   that Jenkins shows the directory as the package and the persona as the class.
//! - A scenario that ran and missed an expectation is a `<failure>` whose `message` is the
//!   first unmet expectation and whose `type` is its kind (`exit_codes`, `order`, …); its body
//!   has the seed, the command that reproduces it and every mismatch. A file that does not load
//!   is an `<error>` (located); a scenario that was not run is `<skipped/>`.
//! - `<system-out>` has the run's calls and the faults that fired.
//! - `timestamp` is the start of the first run, ISO 8601 in UTC without a zone (as the JUnit
//!   schema has it); `time` is in seconds with three decimals.
//! - XML 1.0 cannot carry most control characters, not even escaped: they are replaced by a
//!   visible `\u{1b}`; tabs, newlines and carriage returns are kept (as character references in
//!   attributes, where a parser would otherwise turn them into spaces).

use std::fmt::Write as _;
use std::path::{Component, Path};
use std::time::{Duration, SystemTime};

use crate::runner::Report;

/// What a report is, for JUnit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It met every expectation.
    Passed,
    /// It missed an expectation: `<failure>`.
    Failed,
    /// It did not load: `<error>`.
    Error,
    /// It was not run: `<skipped/>`.
    Skipped,
}

/// One scenario's `<testcase>`, rendered, with what the suite's counts need: the unit a
/// sharded run keeps and [`render_cases`] puts together (`kata-sim merge`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Case {
    /// What it is.
    pub verdict: Verdict,
    /// How long it ran.
    pub elapsed: Duration,
    /// When it started.
    pub started: SystemTime,
    /// Its `<testcase>` element, indented and ending in a newline.
    pub xml: String,
}

/// The `<testcase>` of a report.
pub fn case(r: &Report) -> Case {
    let mut xml = String::new();
    testcase(&mut xml, r);
    Case {
        verdict: verdict(r),
        elapsed: r.elapsed,
        started: r.started,
        xml,
    }
}

fn verdict(r: &Report) -> Verdict {
    if r.skipped.is_some() {
        Verdict::Skipped
    } else if r.load_error.is_some() {
        Verdict::Error
    } else if !r.mismatches.is_empty() {
        Verdict::Failed
    } else {
        Verdict::Passed
    }
}

/// The counts of a suite.
#[derive(Default)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    time: Duration,
}

impl Counts {
    fn of(cases: &[Case]) -> Counts {
        let mut c = Counts {
            tests: cases.len(),
            ..Counts::default()
        };
        for r in cases {
            match r.verdict {
                Verdict::Passed => {}
                Verdict::Failed => c.failures += 1,
                Verdict::Error => c.errors += 1,
                Verdict::Skipped => c.skipped += 1,
            }
            c.time += r.elapsed;
        }
        c
    }

    fn attrs(&self) -> String {
        format!(
            "tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\"",
            self.tests,
            self.failures,
            self.errors,
            self.skipped,
            seconds(self.time)
        )
    }
}

/// JUnit XML for `reports`, with this machine's host name.
pub fn render(reports: &[Report]) -> String {
    render_on(reports, &hostname())
}

/// This machine's host name (`localhost` when it has none).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// JUnit XML for `reports`, run on `hostname`.
pub fn render_on(reports: &[Report], hostname: &str) -> String {
    render_cases(&reports.iter().map(case).collect::<Vec<_>>(), hostname)
}

/// JUnit XML of these test cases (in this order), run on `hostname`.
pub fn render_cases(cases: &[Case], hostname: &str) -> String {
    let counts = Counts::of(cases);
    let started = cases
        .iter()
        .map(|r| r.started)
        .min()
        .unwrap_or_else(SystemTime::now);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(out, "<testsuites name=\"kata-sim\" {}>", counts.attrs());
    let _ = writeln!(
        out,
        "  <testsuite name=\"kata-sim\" {} timestamp=\"{}\" hostname=\"{}\">",
        counts.attrs(),
        timestamp(started),
        attr(hostname)
    );
    for c in cases {
        out.push_str(&c.xml);
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

fn testcase(out: &mut String, r: &Report) {
    let _ = write!(
        out,
        "    <testcase classname=\"{}\" name=\"{}\" time=\"{}\"",
        attr(&classname(r)),
        attr(&name(r)),
        seconds(r.elapsed)
    );
    let calls = system_out(r);
    if matches!(verdict(r), Verdict::Passed) && calls.is_empty() {
        out.push_str("/>\n");
        return;
    }
    out.push_str(">\n");
    match verdict(r) {
        Verdict::Passed => {}
        Verdict::Skipped => {
            let reason = r.skipped.as_deref().unwrap_or_default();
            let _ = writeln!(out, "      <skipped message=\"{}\"/>", attr(reason));
        }
        Verdict::Error => {
            if let Some(e) = &r.load_error {
                let message = format!(
                    "{}:{}:{}: {}",
                    e.file.display(),
                    e.line,
                    e.column,
                    e.message
                );
                let _ = writeln!(
                    out,
                    "      <error message=\"{}\" type=\"invalid scenario\">{}</error>",
                    attr(&message),
                    text(&e.to_string())
                );
            }
        }
        Verdict::Failed => {
            let first = &r.mismatches[0];
            let message = format!(
                "{}: expected {}, got {}",
                first.what, first.expected, first.actual
            );
            let kind = first
                .what
                .split(['.', ' '])
                .next()
                .filter(|k| !k.is_empty())
                .unwrap_or("expectation");
            let _ = writeln!(
                out,
                "      <failure message=\"{}\" type=\"{}\">{}</failure>",
                attr(&message),
                attr(kind),
                text(&failure_body(r))
            );
        }
    }
    if !calls.is_empty() {
        let _ = writeln!(out, "      <system-out>{}</system-out>", text(&calls));
    }
    out.push_str("    </testcase>\n");
}

/// The seed, how to reproduce, and every mismatch.
fn failure_body(r: &Report) -> String {
    let mut body = String::new();
    if let Some(s) = &r.scenario {
        let _ = writeln!(
            body,
            "seed {}, persona {}; reproduce with: kata-sim run {} --driver builtin:{} --seed {}\n",
            s.seed,
            persona(s),
            r.file.display(),
            persona(s),
            s.seed
        );
    }
    for m in &r.mismatches {
        let _ = writeln!(body, "{m}");
    }
    body
}

/// The calls of the run and the faults that fired, one a line.
fn system_out(r: &Report) -> String {
    let Some(o) = &r.outcome else {
        return String::new();
    };
    let mut out = String::new();
    for c in &o.calls {
        let _ = writeln!(out, "{c}");
    }
    for f in &o.faults {
        let _ = writeln!(out, "fault {f}");
    }
    out
}

fn persona(s: &crate::schema::Scenario) -> String {
    // A classname's dots separate packages: `go@3.19.1` is one name there.
    s.config.persona.name().replace('.', "_")
}

/// The scenario's name, or its file when it did not load.
fn name(r: &Report) -> String {
    r.scenario
        .as_ref()
        .map_or_else(|| r.file.display().to_string(), |s| s.name.clone())
}

/// `DIR.SUBDIR.persona`: the file's directory (dots in its parts become `_`, so that Jenkins
/// splits package and class at the persona) and the persona when the scenario loaded.
fn classname(r: &Report) -> String {
    let mut parts: Vec<String> = r
        .file
        .parent()
        .map(Path::components)
        .into_iter()
        .flatten()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().replace('.', "_")),
            _ => None,
        })
        .collect();
    if let Some(s) = &r.scenario {
        parts.push(persona(s));
    }
    if parts.is_empty() {
        "kata-sim".into()
    } else {
        parts.join(".")
    }
}

/// Seconds with three decimals.
fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// `2026-12-02T01:06:49`, UTC.
fn timestamp(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.trim_end_matches('Z').to_string()
}

/// A character XML 1.0 cannot carry (or a control character nobody would see), as
/// `\u{..}`; `None` for one that goes through.
fn visible(c: char) -> Option<String> {
    match c {
        '\t' | '\n' | '\r' => None,
        c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => {
            Some(format!("\\u{{{:x}}}", u32::from(c)))
        }
        _ => None,
    }
}

/// Element content.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => match visible(c) {
                Some(v) => out.push_str(&v),
                None => out.push(c),
            },
        }
    }
    out
}

/// An attribute value (in double quotes); also safe as HTML text (the matrix's report).
pub(crate) fn attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => match visible(c) {
                Some(v) => out.push_str(&v),
                None => out.push(c),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_and_markup_is_escaped() {
        assert_eq!(
            text("a\u{1b}[31m<b>&\u{0}"),
            "a\\u{1b}[31m&lt;b&gt;&amp;\\u{0}"
        );
        assert_eq!(
            attr("\"x\"\t\n\r\u{7f}"),
            "&quot;x&quot;&#9;&#10;&#13;\\u{7f}"
        );
        assert_eq!(text("tab\tline\n"), "tab\tline\n");
    }

    #[test]
    fn the_timestamp_is_iso_8601_without_a_zone() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        assert_eq!(timestamp(t), "2026-11-30T00:53:20");
    }
}
