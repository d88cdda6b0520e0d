//! A corpus of broken scenario files (`tests/broken/`): each must fail to load, without a
//! panic, with an error at the `line:column` and with the text its `# expect:` header names.

#[test]
fn broken_scenarios_give_located_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let files = kata_sim::runner::find(&[dir]).unwrap();
    assert!(files.len() >= 15, "only {} broken files", files.len());
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let header = text.lines().next().unwrap();
        let expect = header
            .strip_prefix("# expect: ")
            .expect("an # expect: header");
        let (loc, msg) = expect.split_once(' ').unwrap_or((expect, ""));
        let e = match std::panic::catch_unwind(|| kata_sim::load::load(f)) {
            Err(_) => {
                problems.push(format!("{}: the loader panicked", f.display()));
                continue;
            }
            Ok(Ok(_)) => {
                problems.push(format!("{}: loaded, but must not", f.display()));
                continue;
            }
            Ok(Err(e)) => e,
        };
        let rendered = e.to_string();
        // The header is line 1 of the file, so every location is one line further down.
        if let Some((l, c)) = loc.split_once(':') {
            let want = (l.parse::<usize>().unwrap() + 1, c.parse::<usize>().unwrap());
            if (e.line, e.column) != want {
                problems.push(format!(
                    "{}: at {}:{}, expected {}:{}\n{rendered}",
                    f.display(),
                    e.line,
                    e.column,
                    want.0,
                    want.1
                ));
            }
            let needle = format!("{}:{}:{}", f.display(), want.0, want.1);
            if !rendered.contains(&needle) {
                problems.push(format!(
                    "{}: rendering lacks {needle}\n{rendered}",
                    f.display()
                ));
            }
        }
        if !msg.is_empty() && !e.message.contains(msg) {
            problems.push(format!("{}: {:?} lacks {msg:?}", f.display(), e.message));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn kata_sim_check_reports_every_bad_file_and_fails() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .arg("check")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown-step.yaml:5:5"), "{err}");
    assert!(err.contains("error: steps[1].bogus"), "{err}");
    let library = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("library");
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .arg("check")
        .arg(&library)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// The committed JSON Schema is the one the types generate (regenerate with
/// `kata-sim schema > docs/scenario.schema.json`).
#[test]
fn the_committed_json_schema_is_current() {
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/scenario.schema.json"),
    )
    .unwrap();
    assert_eq!(committed, kata_sim::schema::json_schema());
}
