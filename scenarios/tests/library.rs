//! Runs every scenario of the bundled library (`scenarios/library/`) with the built-in host on
//! a paused clock: each must meet its own expectations, and its normalized record must match
//! its insta snapshot in `scenarios/tests/snapshots/`, where cargo-insta looks for this test's
//! snapshots (`cargo insta test -p kata-sim --review`, or `cargo insta review` after a run).

fn run(path: &std::path::Path) -> (kata_sim::schema::Scenario, kata_sim::host::Outcome) {
    let s = kata_sim::load::load(path).unwrap_or_else(|e| panic!("{e}"));
    let outcome = kata_sim::host::run_blocking(&s);
    (s, outcome)
}

#[test]
fn every_scenario_meets_its_expectations_and_snapshot() {
    let failed = std::cell::RefCell::new(Vec::new());
    insta::glob!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/library"),
        "*.yaml",
        |path| {
            let (s, outcome) = run(path);
            let failures = kata_sim::check::check(&s, &outcome);
            if !failures.is_empty() {
                failed.borrow_mut().push(format!(
                    "{} (seed {}):\n{}",
                    s.name,
                    s.seed,
                    failures
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
            }
            insta::with_settings!({
                prepend_module_to_snapshot => false,
                omit_expression => true,
            }, {
                insta::assert_yaml_snapshot!(s.name.as_str(), outcome);
            });
        }
    );
    let failed = failed.into_inner();
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
