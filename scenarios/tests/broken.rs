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

/// A 200 KB line is shown as a window around the column, with the caret under the value.
#[test]
fn a_long_line_is_cut_to_a_window_around_the_column() {
    let padding = "x".repeat(200_000);
    let text = format!(
        "name: long\ndescription: {padding}\nsteps:\n  - create_sandbox: {{}}\n  - create_container: {{ id: c1, args: [true], annotations: {{ a: {padding} }}, bogus: 1 }} # {padding}\n"
    );
    let e = kata_sim::load::parse(std::path::Path::new("long.yaml"), &text).unwrap_err();
    let line5 = text.lines().nth(4).unwrap();
    let bogus = line5.find("bogus").unwrap() + 1;
    assert_eq!((e.line, e.column), (5, bogus), "{}", e.message);
    let rendered = e.to_string();
    assert!(rendered.len() < 1_000, "{} bytes", rendered.len());
    let lines: Vec<&str> = rendered.lines().collect();
    let snippet = lines[lines.len() - 2];
    let caret = lines[lines.len() - 1];
    assert!(
        snippet.starts_with("5 | ...") && snippet.ends_with("..."),
        "{snippet}"
    );
    let at = caret.find('^').unwrap();
    assert_eq!(&snippet[at..at + 5], "bogus", "{snippet}\n{caret}");
}

/// A file that cannot be read is located at the file alone (no `:0:0`).
#[test]
fn an_unreadable_file_is_located_at_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let e = kata_sim::load::load(&missing).unwrap_err();
    assert_eq!((e.line, e.column), (0, 0));
    let rendered = e.to_string();
    assert!(
        rendered.ends_with(&format!("  --> {}", missing.display())),
        "{rendered}"
    );
    assert!(!rendered.contains(":0:0"), "{rendered}");
}

/// Duplicate keys name the key and both lines, not the YAML library's options.
#[test]
fn duplicate_keys_name_both_lines() {
    let text = "name: a\nsteps:\n  - create_sandbox: { id: s1, id: s2 }\n";
    let e = kata_sim::load::parse(std::path::Path::new("dup.yaml"), text).unwrap_err();
    assert!(
        e.message
            .ends_with(r#"duplicate key "id": first on line 3, again on line 3"#),
        "{}",
        e.message
    );
    assert!(!e.to_string().contains("DuplicateKeyPolicy"), "{e}");
}
