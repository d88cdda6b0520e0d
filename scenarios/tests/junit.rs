//! `runner::junit` against the JUnit schema as Jenkins (the junit plugin) and GitLab read it:
//! the output of passing, failing, invalid, skipped and hostile-named scenarios is parsed
//! with an XML parser and checked for the allowed elements and their nesting, the required
//! attributes, the numeric and timestamp formats, and counts that add up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kata_sim::runner::{Overrides, Report, junit, run_file};

/// A library scenario that passes: its expectations are rewritten below to fail.
const LIBRARY_FILE: &str = "go-dead-guest-before-container.yaml";

/// A hostile scenario name: an escape sequence, a NUL, markup, quotes, a tab, DEL and a
/// noncharacter.
const HOSTILE: &str = "evil\u{1b}[31m\u{0} <&>\"'\ttab\u{7f}\u{fffe}";
/// How the hostile name reads once parsed back from the JUnit file.
const HOSTILE_READ: &str = "evil\\u{1b}[31m\\u{0} <&>\"'\ttab\\u{7f}\\u{fffe}";

/// What the checks found in one `<testcase>`.
#[derive(Debug)]
struct Case {
    classname: String,
    /// `failure`, `error`, `skipped` or `passed`.
    verdict: String,
    message: Option<String>,
    kind: Option<String>,
    body: String,
    system_out: Option<String>,
}

fn fail(msg: String, xml: &str) -> ! {
    panic!("{msg}\n--- the JUnit XML:\n{xml}")
}

/// The attribute `name` of `node`, which must be there.
fn required<'a>(node: roxmltree::Node<'a, '_>, name: &str, xml: &str) -> &'a str {
    node.attribute(name).unwrap_or_else(|| {
        fail(
            format!("<{}> lacks its {name:?} attribute", node.tag_name().name()),
            xml,
        )
    })
}

/// Only these attributes.
fn only_attributes(node: roxmltree::Node, allowed: &[&str], xml: &str) {
    for a in node.attributes() {
        if !allowed.contains(&a.name()) {
            fail(
                format!(
                    "<{}> has an attribute {:?} the schema does not allow",
                    node.tag_name().name(),
                    a.name()
                ),
                xml,
            );
        }
    }
}

fn count(node: roxmltree::Node, name: &str, xml: &str) -> usize {
    let v = required(node, name, xml);
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        fail(format!("{name}={v:?} is not a count"), xml);
    }
    v.parse()
        .unwrap_or_else(|_| fail(format!("{name}={v:?} is not a count"), xml))
}

/// `xs:decimal` without a sign: seconds.
fn seconds(node: roxmltree::Node, xml: &str) -> f64 {
    let v = required(node, "time", xml);
    let (int, frac) = v.split_once('.').unwrap_or((v, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        fail(format!("time={v:?} is not a number of seconds"), xml);
    }
    v.parse()
        .unwrap_or_else(|_| fail(format!("time={v:?} is not a number"), xml))
}

/// The JUnit schema's timestamp: `YYYY-MM-DDTHH:MM:SS`, no zone.
fn check_timestamp(v: &str, xml: &str) {
    let b = v.as_bytes();
    let shape = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape {
        fail(format!("timestamp={v:?} is not YYYY-MM-DDTHH:MM:SS"), xml);
    }
    let n = |r: std::ops::Range<usize>| v[r].parse::<u32>().unwrap_or(99);
    let ok = (1..=12).contains(&n(5..7))
        && (1..=31).contains(&n(8..10))
        && n(11..13) < 24
        && n(14..16) < 60
        && n(17..19) < 61;
    if !ok {
        fail(format!("timestamp={v:?} is not a date and time"), xml);
    }
}

/// Element children only: text between elements must be blank.
fn elements<'a, 'i>(node: roxmltree::Node<'a, 'i>, xml: &str) -> Vec<roxmltree::Node<'a, 'i>> {
    let mut out = Vec::new();
    for c in node.children() {
        if c.is_element() {
            out.push(c);
        } else if c.is_text() && !c.text().unwrap_or_default().trim().is_empty() {
            fail(format!("text inside <{}>", node.tag_name().name()), xml);
        } else if !c.is_text() && !c.is_comment() {
            fail(format!("unexpected node {c:?}"), xml);
        }
    }
    out
}

/// A leaf: text only.
fn leaf(node: roxmltree::Node, xml: &str) -> String {
    if node.children().any(|c| c.is_element()) {
        fail(
            format!("<{}> has child elements", node.tag_name().name()),
            xml,
        );
    }
    node.text().unwrap_or_default().to_string()
}

/// Checks `xml` against the schema's rules and returns its test cases by name.
fn validate(xml: &str) -> BTreeMap<String, Case> {
    // XML 1.0's Char production: most control characters cannot appear, not even escaped.
    for (i, c) in xml.char_indices() {
        let ok = matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
            || c >= '\u{10000}';
        if !ok {
            fail(format!("character {c:?} at byte {i} is not XML 1.0"), xml);
        }
    }
    for (i, _) in xml.match_indices("&#") {
        let rest = &xml[i + 2..];
        let end = rest.find(';').unwrap_or(rest.len());
        let code: u32 = rest[..end].parse().unwrap_or(0);
        if !matches!(code, 9 | 10 | 13) && code < 0x20 {
            fail(format!("character reference &#{code}; is not XML 1.0"), xml);
        }
    }
    let doc = roxmltree::Document::parse(xml)
        .unwrap_or_else(|e| fail(format!("not well-formed XML: {e}"), xml));
    let root = doc.root_element();
    if root.tag_name().name() != "testsuites" {
        fail(format!("the root is <{}>", root.tag_name().name()), xml);
    }
    only_attributes(
        root,
        &[
            "name", "tests", "failures", "errors", "skipped", "disabled", "time",
        ],
        xml,
    );
    let mut totals = [0usize; 4];
    let mut total_time = 0.0;
    let mut cases = BTreeMap::new();
    for suite in elements(root, xml) {
        if suite.tag_name().name() != "testsuite" {
            fail(
                format!("<testsuites> holds <{}>", suite.tag_name().name()),
                xml,
            );
        }
        only_attributes(
            suite,
            &[
                "name",
                "tests",
                "failures",
                "errors",
                "skipped",
                "disabled",
                "time",
                "timestamp",
                "hostname",
                "id",
                "package",
                "file",
            ],
            xml,
        );
        assert!(!required(suite, "name", xml).is_empty());
        assert!(!required(suite, "hostname", xml).is_empty());
        check_timestamp(required(suite, "timestamp", xml), xml);
        let declared = [
            count(suite, "tests", xml),
            count(suite, "failures", xml),
            count(suite, "errors", xml),
            count(suite, "skipped", xml),
        ];
        let suite_time = seconds(suite, xml);
        let mut found = [0usize; 4];
        let mut case_time = 0.0;
        // properties?, testcase*, system-out?, system-err?
        let order = ["properties", "testcase", "system-out", "system-err"];
        let mut at: Option<usize> = None;
        for child in elements(suite, xml) {
            let tag = child.tag_name().name();
            let Some(pos) = order.iter().position(|t| *t == tag) else {
                fail(format!("<testsuite> holds <{tag}>"), xml);
            };
            if at.is_some_and(|prev| pos < prev || (pos == prev && tag != "testcase")) {
                fail(
                    format!("<{tag}> repeated or out of order in <testsuite>"),
                    xml,
                );
            }
            at = Some(pos);
            if tag != "testcase" {
                continue;
            }
            only_attributes(
                child,
                &[
                    "name",
                    "classname",
                    "time",
                    "assertions",
                    "status",
                    "file",
                    "line",
                ],
                xml,
            );
            let name = required(child, "name", xml).to_string();
            let classname = required(child, "classname", xml).to_string();
            assert!(!name.is_empty() && !classname.is_empty(), "{xml}");
            case_time += seconds(child, xml);
            found[0] += 1;
            let mut case = Case {
                classname,
                verdict: "passed".into(),
                message: None,
                kind: None,
                body: String::new(),
                system_out: None,
            };
            // (skipped | error | failure)?, system-out?, system-err?
            let mut stage = 0;
            for inner in elements(child, xml) {
                let tag = inner.tag_name().name();
                let here = match tag {
                    "skipped" | "error" | "failure" => 1,
                    "system-out" => 2,
                    "system-err" => 3,
                    _ => fail(format!("<testcase> holds <{tag}>"), xml),
                };
                if here <= stage {
                    fail(
                        format!("<{tag}> repeated or out of order in <testcase>"),
                        xml,
                    );
                }
                stage = here;
                match tag {
                    "failure" | "error" => {
                        only_attributes(inner, &["message", "type"], xml);
                        case.message = Some(required(inner, "message", xml).to_string());
                        case.kind = Some(required(inner, "type", xml).to_string());
                        case.body = leaf(inner, xml);
                        found[if tag == "failure" { 1 } else { 2 }] += 1;
                        case.verdict = tag.into();
                    }
                    "skipped" => {
                        only_attributes(inner, &["message"], xml);
                        case.message = inner.attribute("message").map(str::to_string);
                        case.body = leaf(inner, xml);
                        found[3] += 1;
                        case.verdict = tag.into();
                    }
                    _ => case.system_out = Some(leaf(inner, xml)),
                }
            }
            if cases.insert(name.clone(), case).is_some() {
                fail(format!("two test cases are named {name:?}"), xml);
            }
        }
        assert_eq!(
            declared, found,
            "tests, failures, errors, skipped declared vs found\n{xml}"
        );
        assert!(
            (suite_time - case_time).abs() < 0.001 * (found[0] as f64 + 1.0),
            "the suite's time {suite_time} is not its cases' {case_time}\n{xml}"
        );
        for (t, f) in totals.iter_mut().zip(found) {
            *t += f;
        }
        total_time += suite_time;
    }
    assert_eq!(
        [
            count(root, "tests", xml),
            count(root, "failures", xml),
            count(root, "errors", xml),
            count(root, "skipped", xml),
        ],
        totals,
        "<testsuites> totals\n{xml}"
    );
    assert!((seconds(root, xml) - total_time).abs() < 0.001, "{xml}");
    cases
}

fn library(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("library")
            .join(file),
    )
    .unwrap()
}

/// Writes `text` to `dir/name`, making `dir` (inside the test's temp dir).
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn junit_of_every_kind_of_report_follows_the_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ci").join("suite.v1");
    let original = library(LIBRARY_FILE);
    let passing = write(&dir, "pass.yaml", &original);
    let failing_text = original
        .replace(
            "name: go-dead-guest-before-container",
            "name: junit-failing",
        )
        .replace(
            "errors: [\"CreateContainer c1\"]",
            "errors: [\"no such error\"]\n  faults_fired: 3",
        );
    assert_ne!(failing_text, original);
    let failing = write(&dir, "fail.yaml", &failing_text);
    let hostile = write(
        &dir,
        "hostile.yaml",
        &original.replace(
            "name: go-dead-guest-before-container",
            "name: to-be-renamed",
        ),
    );
    // A file that does not load, with a bell in its name.
    let invalid = write(&dir, "bad\u{7}file.yaml", "name: broken\nsteps: [\n");
    let mut reports: Vec<Report> = [&passing, &failing, &hostile, &invalid]
        .into_iter()
        .map(|f| run_file(f, &Overrides::default()))
        .collect();
    reports.push(Report::not_run(&dir.join("later.yaml"), "interrupted"));
    // Whatever the loader accepts in a name, the JUnit file must carry any string.
    if let Some(s) = reports[2].scenario.as_mut() {
        s.name = HOSTILE.into();
    }
    assert!(reports[0].passed(), "{:?}", reports[0].mismatches);
    assert!(reports[2].passed(), "{:?}", reports[2]);
    assert!(reports[3].load_error.is_some());

    let xml = junit(&reports);
    let cases = validate(&xml);
    assert_eq!(cases.len(), 5, "{xml}");

    let pass = &cases["go-dead-guest-before-container"];
    assert_eq!(pass.verdict, "passed");
    assert!(pass.classname.ends_with(".ci.suite_v1.go"), "{pass:?}");
    let calls = pass.system_out.as_deref().unwrap_or_default();
    assert!(calls.contains("CreateSandbox"), "{calls}");

    let failed = &cases["junit-failing"];
    assert_eq!(failed.verdict, "failure", "{xml}");
    let first = &reports[1].mismatches[0];
    assert_eq!(failed.kind.as_deref(), Some("errors"));
    assert_eq!(
        failed.message.as_deref(),
        Some(format!("errors: expected {}, got {}", first.expected, first.actual).as_str())
    );
    assert!(
        failed
            .message
            .as_deref()
            .is_some_and(|m| m.contains("one containing \"no such error\"")),
        "{failed:?}"
    );
    assert!(
        reports[1].mismatches.len() >= 2,
        "{:?}",
        reports[1].mismatches
    );
    for m in &reports[1].mismatches {
        assert!(failed.body.contains(&m.what), "{m:?} in {}", failed.body);
    }
    assert!(failed.body.contains("seed 8"), "{}", failed.body);
    assert!(failed.body.contains("--seed 8"), "{}", failed.body);

    let invalid_name = invalid.display().to_string().replace('\u{7}', "\\u{7}");
    let error = &cases[&invalid_name];
    assert_eq!(error.verdict, "error", "{xml}");
    let e = reports[3].load_error.as_ref().unwrap();
    assert!(
        error
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with(&format!("{invalid_name}:{}:{}: ", e.line, e.column))),
        "{error:?}"
    );
    assert!(error.classname.ends_with(".ci.suite_v1"), "{error:?}");

    let skipped = &cases[&dir.join("later.yaml").display().to_string()];
    assert_eq!(skipped.verdict, "skipped");
    assert_eq!(skipped.message.as_deref(), Some("interrupted"));

    // The text report agrees: skipped is neither a pass nor a failure.
    assert!(kata_sim::runner::summary(&reports).contains("SKIPPED"));
    assert!(!kata_sim::runner::failures(&reports).contains("later.yaml"));

    let evil = &cases[HOSTILE_READ];
    assert_eq!(evil.verdict, "passed", "{xml}");
}

#[test]
fn junit_of_no_reports_is_an_empty_suite() {
    let xml = junit(&[]);
    let cases = validate(&xml);
    assert!(cases.is_empty());
    assert!(xml.contains("tests=\"0\""), "{xml}");
}

/// A NUL in a scenario's name does not panic the runner (a thread name cannot hold one).
#[test]
fn a_nul_in_a_name_does_not_panic_the_runner() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), "s.yaml", &library(LIBRARY_FILE));
    let mut s = kata_sim::load::load(&file).unwrap();
    s.name = "nul\u{0}name".into();
    let outcome = kata_sim::runner::isolated(&s, kata_sim::host::run_blocking);
    assert!(kata_sim::check::check(&s, &outcome).is_empty());
}
