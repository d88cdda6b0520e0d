//! The `kata-sim` command as a user meets it: discovery, names, the bundled library, typed
//! values, exit codes, error text, JSON output, colour, progress, timeouts and signals. Each
//! test runs the binary on small scenario files in a temp dir (no sleeps: they wait on the
//! child's exit or its pipes).

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const OK: &str = "name: NAME\nsteps:\n  - create_sandbox: {}\n";
const FAILS: &str =
    "name: NAME\nsteps:\n  - create_sandbox: {}\nexpect:\n  errors: [\"never happens\"]\n";
const HANGS: &str = "name: NAME\nseed: 1\nfaults: [\"StartContainer=hang\"]\nsteps:\n  - create_sandbox: {}\n  - create_container: { id: c1, args: [\"true\"] }\n  - start: c1\n";
const INVALID: &str = "name: NAME\nseed: -1\nsteps: []\n";

fn write(dir: &Path, rel: &str, template: &str, name: &str) -> PathBuf {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, template.replace("NAME", name)).unwrap();
    path
}

fn kata_sim() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kata-sim"));
    c.env_remove("NO_COLOR").env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    kata_sim().args(args).output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn version_and_help_document_the_exit_codes() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out).0.trim(),
        format!("kata-sim {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(&["--help"]);
    let (stdout, _) = text(&out);
    for code in ["0 ", "1 ", "2 ", "4 ", "101", "128+N"] {
        assert!(
            stdout.contains(&format!("\n  {code}")),
            "{code} missing:\n{stdout}"
        );
    }
}

#[test]
fn directories_are_searched_recursively_in_sorted_order_with_any_case_extension() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "z.yml", OK, "z");
    write(dir.path(), "b/deep/x.YAML", OK, "x");
    write(dir.path(), "a.yaml", OK, "a");
    write(dir.path(), "notes.txt", "not a scenario", "-");
    let out = run(&["check", s(dir.path())]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let names: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ok      "))
        .collect();
    let root = dir.path().display();
    assert_eq!(
        names,
        [
            format!("{root}/a.yaml (a)"),
            format!("{root}/b/deep/x.YAML (x)"),
            format!("{root}/z.yml (z)"),
        ]
    );
    let out = run(&["run", "-q", s(dir.path())]);
    assert!(out.status.success());
    assert!(text(&out).0.contains("3 of 3 passed"), "{}", text(&out).0);
}

#[test]
fn an_empty_directory_has_no_scenarios_for_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["check", "run"] {
        let out = run(&[cmd, s(dir.path())]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(4), "{cmd}: {stderr}");
        assert!(stderr.starts_with("error: no scenarios"), "{cmd}: {stderr}");
    }
}

#[test]
fn a_duplicate_name_is_located_at_the_second_files_name_line() {
    let dir = tempfile::tempdir().unwrap();
    let first = write(dir.path(), "a.yaml", OK, "same");
    let second = write(dir.path(), "b.yaml", &format!("# comment\n{OK}"), "same");
    let out = run(&["check", s(dir.path())]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--> {}:2:7", second.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("already the name of {}", first.display())),
        "{stderr}"
    );
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
}

#[test]
fn scenarios_run_by_name_from_a_library_and_unknown_names_suggest() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "one.yaml", OK, "alpha-ok");
    write(dir.path(), "two.yaml", FAILS, "beta-fails");
    let lib = s(dir.path());
    let out = kata_sim()
        .args(["run", "alpha-ok", "--library", lib])
        .current_dir(dir.path().parent().unwrap())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("1 of 1 passed"), "{stdout}");
    // In the order given, names and paths alike.
    let out = run(&[
        "run",
        "-q",
        "--format",
        "json",
        "beta-fails",
        s(&dir.path().join("one.yaml")),
        "--library",
        lib,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let names: Vec<String> = text(&out)
        .0
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["name"].to_string())
        .collect();
    assert_eq!(names, ["\"beta-fails\"", "\"alpha-ok\""]);
    let out = run(&["run", "alpah-ok", "--library", lib]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("did you mean \"alpha-ok\"?"), "{stderr}");
}

#[test]
fn list_shows_name_persona_and_description_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "name: listed\ndescription: \"What it does.\"\nconfig: { persona: rs }\nsteps: []\n",
    )
    .unwrap();
    let out = run(&["list", "--library", s(dir.path())]);
    assert!(out.status.success());
    let (stdout, _) = text(&out);
    assert_eq!(stdout.trim(), "listed  rs  What it does.");
    let out = run(&["list", "--library", s(dir.path()), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(text(&out).0.trim()).unwrap();
    assert_eq!(v["name"], "listed");
    assert_eq!(v["persona"], "rs");
    assert_eq!(v["description"], "What it does.");
}

#[test]
fn the_bundled_library_ships_inside_a_copied_binary() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("kata-sim");
    std::fs::copy(env!("CARGO_BIN_EXE_kata-sim"), &copy).unwrap();
    let out = Command::new(&copy)
        .arg("list")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let library = Path::new(env!("CARGO_MANIFEST_DIR")).join("library");
    let files = std::fs::read_dir(&library).unwrap().count();
    assert_eq!(stdout.lines().count(), files, "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("go-happy-path ")),
        "{stdout}"
    );
    let out = Command::new(&copy)
        .args(["run", "-q", "go-happy-path"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("1 of 1 passed"), "{stdout}");
}

#[test]
fn typed_values_list_the_accepted_ones_and_the_nearest() {
    let out = run(&["run", "--driver", "builtn"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains(
            "[possible values: builtin, builtin:go, builtin:rs, builtin:go@3.19.1, exec]"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("'builtin'"), "{stderr}");
    let out = run(&["run", "--transport", "wires"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("in-process, wire"), "{stderr}");
    let out = run(&[
        "serve",
        "--hypervisor-socket",
        "/nonexistent/hv.sock",
        "--fault",
        "StartVM=hnag",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'StartVM=hnag' for '--fault <RULE>'")
            && stderr.contains("column"),
        "{stderr}"
    );
    let out = run(&["trace", "x.yaml", "--agent-version", "three"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    let out = run(&["run", "--timeout", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
}

#[test]
fn exit_codes_tell_failed_from_invalid_and_user_errors_have_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let fails = write(dir.path(), "f.yaml", FAILS, "fails");
    let invalid = write(dir.path(), "i.yaml", INVALID, "invalid");
    let out = run(&["run", "-q", s(&fails)]);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    for args in [
        vec!["run", "-q", s(&invalid)],
        vec!["check", s(&invalid)],
        vec!["trace", s(&invalid)],
        vec!["run", "no-such-scenario"],
        vec!["run", "/nonexistent/dir"],
    ] {
        let out = kata_sim()
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("Error: error:"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Error:"), "{args:?}: {stderr}");
        assert!(!stderr.contains("backtrace"), "{args:?}: {stderr}");
    }
}

#[test]
fn diff_exits_1_when_the_sides_differ_and_shows_a_failed_exec_command() {
    let out = run(&[
        "diff",
        "--driver",
        "builtin:go",
        "--driver",
        "builtin:rs",
        "go-happy-path",
    ]);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert!(text(&out).0.lines().any(|l| l.starts_with('+')));
    let out = run(&[
        "diff",
        "--driver",
        "builtin:go",
        "--driver",
        "builtin:go",
        "go-happy-path",
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exec/demo-ok.yaml");
    let out = run(&[
        "diff",
        "--driver",
        "builtin:go",
        "--driver",
        "exec",
        s(&demo),
        "--",
        "false",
    ]);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("error: --driver exec: the command exited"),
        "{stderr}"
    );
    let out = run(&["diff", "--driver", "builtin:go", "go-happy-path"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
}

#[test]
fn json_output_is_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", OK, "a-ok");
    write(dir.path(), "b.yaml", FAILS, "b-fails");
    write(dir.path(), "c.yaml", INVALID, "c-invalid");
    let out = run(&["run", "-q", "--format", "json", s(dir.path())]);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<serde_json::Value> = text(&out)
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["name"], "a-ok");
    assert_eq!(lines[0]["result"], "ok");
    assert_eq!(lines[0]["persona"], "go");
    assert_eq!(lines[0]["seed"], 0);
    assert!(lines[0]["elapsed_ms"].is_u64());
    assert!(!lines[0]["calls"].as_array().unwrap().is_empty());
    assert!(
        lines[0]["file"].as_str().unwrap().ends_with("a.yaml"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1]["result"], "failed");
    assert_eq!(lines[1]["mismatches"].as_array().unwrap().len(), 1);
    assert_eq!(lines[2]["result"], "invalid");
    assert_eq!(lines[2]["error"]["line"], 2);

    let out = run(&["check", "--format", "json", s(dir.path())]);
    let lines: Vec<serde_json::Value> = text(&out)
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["name"], "a-ok");
    assert_eq!(lines[2]["error"]["line"], 2);
    assert!(lines[2]["error"]["column"].as_u64().unwrap() > 0);
    assert!(
        lines[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("seed")
    );

    let out = run(&["trace", "--format", "json", s(&dir.path().join("a.yaml"))]);
    assert!(out.status.success());
    let calls: Vec<serde_json::Value> = text(&out)
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), lines_of_trace(&dir.path().join("a.yaml")));
    // Each call is an object of typed parts, not a line of text to parse.
    let create = calls
        .iter()
        .find(|c| c["op"] == "CreateSandbox")
        .expect("a CreateSandbox call");
    assert_eq!(create["status"], "OK", "{create}");
    assert!(create["fields"]["sandbox_id"].is_string(), "{create}");
    assert!(create["fault"].is_null(), "{create}");
    assert!(create["count"].as_u64().unwrap() >= 1, "{create}");
    assert_eq!(lines_of_run_calls(&dir), calls);
}

/// The calls `run --format json` reports for `a.yaml`.
fn lines_of_run_calls(dir: &tempfile::TempDir) -> Vec<serde_json::Value> {
    let out = run(&[
        "run",
        "-q",
        "--format",
        "json",
        s(&dir.path().join("a.yaml")),
    ]);
    let line: serde_json::Value = serde_json::from_str(text(&out).0.trim()).unwrap();
    line["calls"].as_array().unwrap().clone()
}

fn lines_of_trace(file: &Path) -> usize {
    text(&run(&["trace", s(file)])).0.lines().count()
}

#[test]
fn trace_takes_a_seed_and_an_agent_version() {
    let plain = text(&run(&["trace", "go-term-copied"])).0;
    let old = text(&run(&[
        "trace",
        "go-term-copied",
        "--agent-version",
        "3.19.1",
    ]))
    .0;
    assert_ne!(plain, old, "3.19.1 answers a finished stream differently");
    let seeded = |seed: &str| text(&run(&["trace", "go-probabilistic-check", "--seed", seed])).0;
    assert_eq!(seeded("5"), seeded("5"));
    assert_ne!(
        text(&run(&["trace", "go-probabilistic-check"])).0,
        seeded("12345")
    );
}

#[test]
fn color_follows_the_flag_and_quiet_drops_progress_lines() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(dir.path(), "a.yaml", OK, "a");
    let out = run(&["run", "--color", "always", s(&ok)]);
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("\x1b["), "{stdout}");
    assert!(stderr.contains("[  1/1]"), "{stderr}");
    let out = run(&["run", "--color", "never", s(&ok)]);
    assert!(!text(&out).0.contains('\x1b'));
    let out = kata_sim()
        .args(["run", s(&ok)])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!text(&out).0.contains('\x1b'));
    let out = run(&["run", "-q", s(&ok)]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success());
    assert!(stdout.contains("1 of 1 passed"));
    assert_eq!(stderr, "", "-q prints no progress");
    let out = run(&["run", "--color", "never", s(&ok)]);
    assert!(!text(&out).1.contains(" INFO "), "{}", text(&out).1);
    let out = run(&["run", "-v", "--color", "never", s(&ok)]);
    assert!(
        text(&out).1.contains(" INFO "),
        "-v logs more: {}",
        text(&out).1
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let (stdout, _) = text(&out);
        assert!(
            stdout.contains("kata-sim") && stdout.contains("library"),
            "{shell}"
        );
    }
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn an_unwritable_junit_path_is_an_error_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(dir.path(), "a.yaml", OK, "a");
    let junit = dir.path().join("missing-dir/out.xml");
    let out = run(&["run", s(&ok), "--junit", s(&junit)]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error: --junit"), "{stderr}");
    assert!(
        !stderr.contains("[  1/1]") && stdout.is_empty(),
        "nothing ran"
    );
}

#[test]
fn a_timeout_ends_a_hung_wire_run_and_progress_names_the_call_it_waits_on() {
    let dir = tempfile::tempdir().unwrap();
    let hang = write(dir.path(), "h.yaml", HANGS, "hangs");
    let out = run(&["run", "--transport", "wire", "--timeout", "2", s(&hang)]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("hangs: running for 1 s, waiting on StartContainer{container_id=c1}"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stuck in StartContainer{container_id=c1} after 2 s"),
        "{stderr}"
    );
}

#[test]
fn sigterm_during_a_builtin_run_reports_what_finished_and_writes_junit() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", OK, "a-first");
    write(dir.path(), "b.yaml", HANGS, "b-hangs");
    write(dir.path(), "c.yaml", OK, "c-last");
    let junit = dir.path().join("out.xml");
    let mut child = kata_sim()
        // One at a time: with two, c-last would finish beside the hung one.
        .args([
            "run",
            "-j",
            "1",
            "--transport",
            "wire",
            "--timeout",
            "600",
            "--junit",
        ])
        .arg(&junit)
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    // The hung scenario's first progress line: it is running.
    while !seen.contains("b-hangs: running for") {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(128 + 15), "{stdout}{seen}{rest}");
    assert!(stdout.contains("1 of 3 passed"), "{stdout}");
    assert_eq!(stdout.matches("SKIPPED").count(), 2, "{stdout}");
    assert!(
        rest.contains("interrupted by SIGTERM: 1 of 3 scenarios run"),
        "{rest}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("tests=\"3\""), "{xml}");
    assert_eq!(xml.matches("<skipped").count(), 2, "{xml}");
}

#[test]
fn fault_list_prints_json_and_a_bad_rule_is_refused_before_any_request() {
    let out = run(&["fault", "add", "StartVM=hnag", "--control", "/nonexistent"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid value 'StartVM=hnag'"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let mut child = kata_sim()
        .args(["serve", "--hypervisor-socket"])
        .arg(dir.path().join("hv.sock"))
        .arg("--control")
        .arg(&control)
        .args(["--fault", "StartVM=delay(1s)", "--color", "never"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    // Logged once every socket is bound.
    while !seen.contains("kata-sim serving") {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
    }
    let out = run(&[
        "fault",
        "list",
        "--format",
        "json",
        "--control",
        s(&control),
    ]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{err}");
    let rule: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(rule["id"], 1);
    assert_eq!(rule["rule"], "StartVM=delay(1s)");
    assert!(status.success());
}

/// `--color auto` on a terminal: colour, unless NO_COLOR is set. The terminal is a pty from
/// util-linux's `script` (Debian's essential bsdutils).
#[test]
fn auto_colours_a_terminal_unless_no_color_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(dir.path(), "a.yaml", OK, "a");
    let on_a_terminal = |no_color: Option<&str>| {
        let line = format!("'{}' run -q '{}'", env!("CARGO_BIN_EXE_kata-sim"), s(&ok));
        let mut c = Command::new("script");
        c.args(["-qec", &line, "/dev/null"])
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = c.output().expect("util-linux script");
        assert!(out.status.success(), "{:?}", text(&out));
        let (stdout, _) = text(&out);
        assert!(stdout.contains("1 of 1 passed"), "{stdout}");
        stdout.contains('\x1b')
    };
    assert!(on_a_terminal(None), "auto colours a terminal");
    assert!(!on_a_terminal(Some("1")), "NO_COLOR turns it off");
    assert!(on_a_terminal(Some("")), "an empty NO_COLOR does not");
}

#[test]
fn a_closed_stdout_ends_trace_and_list_quietly() {
    // `kata-sim trace ... | head -1`: the reader is gone before the first line.
    for args in [
        &["trace", "go-happy-path"][..],
        &["list"][..],
        &["schema"][..],
    ] {
        let mut child = kata_sim()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A JSON line without what differs between two runs of the same scenarios (the wall time).
fn timeless_json(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("elapsed_ms");
            v
        })
        .collect()
}

/// JUnit without its times, timestamp and host.
fn timeless_junit(xml: &str) -> String {
    let times = regex::Regex::new(r#" (time|timestamp|hostname)="[^"]*""#).unwrap();
    times.replace_all(xml, "").into_owned()
}

#[test]
fn parallel_runs_report_exactly_what_a_serial_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let serial_junit = dir.path().join("serial.xml");
    let parallel_junit = dir.path().join("parallel.xml");
    let serial = run(&[
        "run",
        "-j",
        "1",
        "--format",
        "json",
        "--junit",
        s(&serial_junit),
    ]);
    let parallel = run(&[
        "run",
        "-j",
        "2",
        "--format",
        "json",
        "--junit",
        s(&parallel_junit),
    ]);
    assert!(serial.status.success() && parallel.status.success());
    let (a, b) = (text(&serial).0, text(&parallel).0);
    assert!(a.lines().count() > 60, "{a}");
    assert_eq!(timeless_json(&a), timeless_json(&b));
    assert_eq!(
        timeless_junit(&std::fs::read_to_string(&serial_junit).unwrap()),
        timeless_junit(&std::fs::read_to_string(&parallel_junit).unwrap())
    );
    // The summary too, line for line.
    let serial = text(&run(&["run", "-j", "1"])).0;
    let parallel = text(&run(&["run", "-j", "2"])).0;
    assert_eq!(serial, parallel);
    let out = run(&["run", "-j", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn four_shards_merged_are_the_single_run() {
    let dir = tempfile::tempdir().unwrap();
    // The library and one file that does not load and one that fails: every kind of row.
    let extra = dir.path().join("extra");
    write(&extra, "bad.yaml", INVALID, "bad");
    write(&extra, "fails.yaml", FAILS, "fails-here");
    let whole_junit = dir.path().join("whole.xml");
    let whole_results = dir.path().join("whole.json");
    let lib = "scenarios/library";
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let library = manifest.join(lib);
    let args = |more: &[&str]| -> Vec<String> {
        let mut v = vec!["run".to_string(), s(&library).into(), s(&extra).into()];
        v.extend(more.iter().map(|m| m.to_string()));
        v
    };
    let whole = kata_sim()
        .args(args(&[
            "--junit",
            s(&whole_junit),
            "--results",
            s(&whole_results),
        ]))
        .output()
        .unwrap();
    assert_eq!(whole.status.code(), Some(2), "{}", text(&whole).1);
    let whole_json = kata_sim()
        .args(args(&["--format", "json"]))
        .output()
        .unwrap();
    let mut shards = Vec::new();
    let mut sizes = Vec::new();
    for i in 1..=4 {
        let results = dir.path().join(format!("shard-{i}.json"));
        let junit = dir.path().join(format!("shard-{i}.xml"));
        let shard = format!("{i}/4");
        let out = kata_sim()
            .args(args(&[
                "--shard",
                &shard,
                "--results",
                s(&results),
                "--junit",
                s(&junit),
            ]))
            .output()
            .unwrap();
        let (stdout, _) = text(&out);
        sizes.push(
            stdout
                .lines()
                .filter(|l| l.contains(" ok ") || l.contains("FAILED") || l.contains("INVALID"))
                .count(),
        );
        assert!(
            std::fs::read_to_string(&junit)
                .unwrap()
                .contains("<testsuite")
        );
        shards.push(results);
    }
    assert!(
        sizes.iter().all(|&n| n > 0),
        "every shard has scenarios: {sizes:?}"
    );
    // Given in any order.
    shards.reverse();
    let merged_junit = dir.path().join("merged.xml");
    let merged_results = dir.path().join("merged.json");
    let mut merge = vec!["merge".to_string()];
    merge.extend(shards.iter().map(|p| s(p).to_string()));
    let merged = kata_sim()
        .args(&merge)
        .args(["--junit", s(&merged_junit), "--results", s(&merged_results)])
        .output()
        .unwrap();
    // The same exit code, summary and failures as the single run.
    assert_eq!(merged.status.code(), whole.status.code());
    assert_eq!(text(&merged).0, text(&whole).0);
    assert!(text(&whole).0.contains("fails-here"));
    let failures = |e: &str| e[e.find("FAILED fails-here").unwrap()..].to_string();
    assert_eq!(failures(&text(&merged).1), failures(&text(&whole).1));
    assert_eq!(
        timeless_junit(&std::fs::read_to_string(&merged_junit).unwrap()),
        timeless_junit(&std::fs::read_to_string(&whole_junit).unwrap())
    );
    let merged_json = kata_sim()
        .args(&merge)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        timeless_json(&text(&merged_json).0),
        timeless_json(&text(&whole_json).0)
    );
    // The merged results are the single run's but for the times.
    let rows = |p: &Path| -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r["json"].as_object_mut().unwrap().remove("elapsed_ms");
                r["junit"].as_object_mut().unwrap().remove("elapsed");
                r["junit"].as_object_mut().unwrap().remove("started");
                let xml = timeless_junit(r["junit"]["xml"].as_str().unwrap());
                r["junit"]["xml"] = xml.into();
                r
            })
            .collect()
    };
    assert_eq!(rows(&merged_results), rows(&whole_results));
    // A missing shard is an error, not a smaller report.
    let out = run(&["merge", s(&shards[0]), s(&shards[1]), s(&shards[2])]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("is missing"), "{}", text(&out).1);
    let out = run(&["run", "--shard", "5/4"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn shrink_writes_a_regression_file_that_fails_alike() {
    let dir = tempfile::tempdir().unwrap();
    // Fails for the seeds whose 50% drop of the WaitProcess answer fires (exit 255).
    let file = write(
        dir.path(),
        "flaky.yaml",
        "name: NAME\nfaults: [\"WaitProcess=50%drop(before)\", \"Check=30%delay(1s)\"]\nsteps:\n  - create_sandbox: {}\n  - create_container: { id: c1, args: [echo, hi] }\n  - start: c1\n  - wait: c1\n  - stop: c1\n  - destroy_sandbox\nexpect:\n  exit_codes: { c1: 0 }\n",
        "flaky",
    );
    let failing = (0..64)
        .find(|seed| {
            !run(&["run", s(&file), "--seed", &seed.to_string(), "-q"])
                .status
                .success()
        })
        .expect("a failing seed");
    let out_file = dir.path().join("regression.yaml");
    let seed = failing.to_string();
    let out = run(&["shrink", s(&file), "--seed", &seed, "-o", s(&out_file)]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("fails `exit_codes.c1`"), "{stdout}");
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert!(written.contains("WaitProcess=1*drop(before)"), "{written}");
    assert!(!written.contains('%'), "{written}");
    assert!(
        !written.contains("Check="),
        "the delay is not needed: {written}"
    );
    // It loads and fails the same way with its own seed.
    let out = run(&["run", s(&out_file), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(text(&out).0.trim()).unwrap();
    assert!(
        v["mismatches"][0]
            .as_str()
            .unwrap()
            .starts_with("exit_codes.c1")
    );
    // A seed it passes for: nothing to shrink, and no file left behind.
    let passing = (0..64)
        .find(|seed| {
            run(&["run", s(&file), "--seed", &seed.to_string(), "-q"])
                .status
                .success()
        })
        .unwrap();
    let none = dir.path().join("none.yaml");
    let out = run(&[
        "shrink",
        s(&file),
        "--seed",
        &passing.to_string(),
        "-o",
        s(&none),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("nothing to shrink"),
        "{}",
        text(&out).1
    );
    assert!(!none.exists());
}

#[test]
fn matrix_and_coverage_report_the_cells() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("m.json");
    let out = run(&[
        "matrix",
        "--persona",
        "rs",
        "--shard",
        "1/8",
        "--format",
        "json",
        "--results",
        s(&results),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let lines = text(&out).0.lines().count();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(v["cells"].as_array().unwrap().len(), lines);
    assert!(v["total"].as_u64().unwrap() as usize > 4 * lines);
    assert_eq!(v["header"]["persona"], "rs");
    let out = run(&["matrix", "--persona", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["matrix", "--base", "go-hang-create-container"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("fault-free"), "{}", text(&out).1);
    // The bundled go scenarios cover the GetDiagnosticData error cell in the stop phase.
    let out = run(&["coverage"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("covered  stop.GetDiagnosticData.error-")
                && l.contains("go-term-getdiag-error")),
        "{stdout}"
    );
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.contains(" cells of the go matrix covered ("),
        "{summary}"
    );
}
