//! A corpus of misspelt scenarios (`tests/misspellings/`): each file's first line is
//! `# expect: LINE:COLUMN MESSAGE` (the line counted in the file, header included), and the
//! file must fail to load with exactly that message at exactly that place. The messages name
//! the accepted values and the nearest one (`did you mean "File"?`): every mistake that used
//! to pass `kata-sim check` and run as something else.

use std::path::Path;
use std::process::Command;

#[test]
fn every_misspelling_is_a_located_error_with_the_nearest_name() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/misspellings");
    let files = kata_sim::runner::find(&[dir]).unwrap();
    assert!(files.len() >= 40, "only {} files", files.len());
    let mut problems = Vec::new();
    let mut suggestions = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let header = text.lines().next().unwrap();
        let expect = header
            .strip_prefix("# expect: ")
            .unwrap_or_else(|| panic!("{}: no # expect: header", f.display()));
        let (loc, msg) = expect.split_once(' ').unwrap();
        let (l, c) = loc.split_once(':').unwrap();
        let want = (l.parse::<usize>().unwrap(), c.parse::<usize>().unwrap());
        let e = match kata_sim::load::load(f) {
            Ok(_) => {
                problems.push(format!("{}: loaded, but must not", f.display()));
                continue;
            }
            Err(e) => e,
        };
        if (e.line, e.column) != want || e.message != msg {
            problems.push(format!(
                "{}:\n  want {}:{} {msg}\n  got  {}:{} {}",
                f.display(),
                want.0,
                want.1,
                e.line,
                e.column,
                e.message
            ));
        }
        let rendered = e.to_string();
        let place = format!("{}:{}:{}", f.display(), want.0, want.1);
        if !rendered.contains(&place) {
            problems.push(format!(
                "{}: rendering lacks {place}\n{rendered}",
                f.display()
            ));
        }
        suggestions += usize::from(msg.contains("did you mean"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(suggestions >= 12, "only {suggestions} did-you-means");
}

#[test]
fn the_caret_points_at_the_wrong_value() {
    // The container is named like the scenario; the error is at the step, not at line 1.
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/misspellings/reference-named-like-scenario.yaml");
    let e = kata_sim::load::load(&f).unwrap_err();
    let rendered = e.to_string();
    assert!(
        rendered.ends_with("7 |   - start: web\n  |            ^"),
        "{rendered}"
    );
}

#[test]
fn fault_flags_share_the_rule_parser() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .arg("serve")
        .arg("--hypervisor-socket")
        .arg(dir.path().join("h.sock"))
        .args(["--fault", "WaitProcess{container=c2}=hang"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            r#"unknown filter key "container" for WaitProcess: did you mean "container_id"?"#
        ),
        "{err}"
    );
    assert!(err.contains("column 13"), "{err}");
}

#[test]
fn agent_version_flags_are_strict() {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("library/go-exit-status.yaml");
    for (bad, says) in [
        ("9.9", "expected a release MAJOR.MINOR.PATCH"),
        ("99.0.0", "expected 3.0.0 to 4.1.0"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
            .arg("run")
            .args(["--agent-version", bad])
            .arg(&scenario)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn duplicate_names_across_files_are_an_error_at_the_second_name() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    let c = dir.path().join("c.yaml");
    std::fs::write(&a, "name: web\nsteps: []\n").unwrap();
    std::fs::write(
        &b,
        "# the same name\ndescription: x\nname: web\nsteps: []\n",
    )
    .unwrap();
    std::fs::write(&c, "name: other\nsteps: []\n").unwrap();
    let loaded = kata_sim::load::load_all(&[a.clone(), b.clone(), c]);
    assert!(loaded[0].is_ok() && loaded[2].is_ok());
    let e = loaded[1].as_ref().unwrap_err();
    assert_eq!((e.file.as_path(), e.line, e.column), (b.as_path(), 3, 7));
    assert_eq!(
        e.message,
        format!(
            "name: \"web\" is already the name of {}:1 (scenario names are unique)",
            a.display()
        )
    );
}
