//! The fault matrix of both personas, whole: every cell runs and is classified against the
//! fault-free run; classes the recorded real runtimes show are where they belong; four shards
//! merged give the single run; `-j 2` gives `-j 1`'s cells; the HTML report, opened in
//! headless Chromium, draws every cell and links each to its trace. Shrinking and coverage
//! through the library.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kata_sim::matrix::{self, CellResult, Class, Plan};
use kata_sim::runner;
use kata_sim::schema::{Persona, Scenario};
use kata_sim::shard::{Body, Results, Shard};

fn library(name: &str) -> Scenario {
    let loaded = runner::load_all(&runner::bundled());
    loaded
        .into_iter()
        .find_map(|l| l.scenario.ok().filter(|s| s.name == name))
        .unwrap_or_else(|| panic!("{name} is in the library"))
}

fn plan(persona: Persona) -> Plan {
    matrix::plan(library(matrix::default_base(persona)), persona).expect("the base plans")
}

fn by_id(cells: &[CellResult]) -> BTreeMap<&str, &CellResult> {
    cells.iter().map(|c| (c.id.as_str(), c)).collect()
}

/// Classes of cells whose outcome the real runtimes' recordings and the library pin down.
fn assert_known_cells(persona: Persona, cells: &[CellResult]) {
    let cells = by_id(cells);
    let class = |id: &str| {
        cells
            .get(id)
            .unwrap_or_else(|| panic!("{persona}: no cell {id}"))
            .class
    };
    // A VM that never boots: both hosts wait on StartVM until the step's bound.
    assert_eq!(
        class("sandbox-start.StartVM.hang"),
        Class::Stuck,
        "{persona}"
    );
    // The copy of the termination message fails: the host file stays empty
    // (go-term-getdiag-error, rs-fault-getdiag-error).
    assert_eq!(
        class("stop.GetDiagnosticData.error-INTERNAL"),
        Class::TerminationLost,
        "{persona}"
    );
    // Nothing waits on a process before there is one.
    assert_eq!(
        class("sandbox-start.WaitProcess.error-INTERNAL"),
        Class::NotReached,
        "{persona}"
    );
    // A lost WaitProcess answer: the task's exit is not the container's (fault-truth 255).
    assert_eq!(
        class("running.WaitProcess.drop-before"),
        Class::ExitChanged,
        "{persona}"
    );
}

#[test]
fn the_matrix_of_both_personas_runs_every_cell_and_classifies_it() {
    for persona in [Persona::Go, Persona::Rs] {
        let plan = plan(persona);
        let mut heard = 0;
        let cells = matrix::run(&plan, 2, Shard::ALL, &mut |_| heard += 1);
        assert_eq!(cells.len(), plan.cells.len(), "{persona}");
        assert_eq!(heard, cells.len());
        assert!(cells.len() > 1_500, "{persona}: {} cells", cells.len());
        // In order, each once.
        assert!(cells.iter().enumerate().all(|(i, c)| c.position == i));
        for c in &cells {
            assert!(
                !c.errors.iter().any(|e| e.contains("panicked")),
                "{persona} {}: {:?}",
                c.id,
                c.errors
            );
            assert_eq!(c.class == Class::Stuck, c.stuck_at.is_some(), "{}", c.id);
            assert!(
                !c.calls.is_empty() && c.mermaid.starts_with("sequenceDiagram"),
                "{}",
                c.id
            );
        }
        let counts = matrix::counts(&cells);
        for class in [
            Class::Stuck,
            Class::ExitChanged,
            Class::TerminationLost,
            Class::ErrorSurfaced,
            Class::Completed,
            Class::NotReached,
        ] {
            assert!(
                counts.get(&class).copied().unwrap_or(0) > 0,
                "{persona}: no {class:?} cell: {counts:?}"
            );
        }
        assert_known_cells(persona, &cells);
        if persona == Persona::Go {
            four_shards_merge_into_the_single_run(&plan, &cells);
            the_html_report_draws_every_cell_in_chromium(&plan, &cells);
        }
    }
}

/// `--shard I/4` of the matrix, merged, is the single run, cell for cell.
fn four_shards_merge_into_the_single_run(plan: &Plan, whole: &[CellResult]) {
    let parts: Vec<Results> = (1..=4)
        .map(|index| {
            let shard = Shard { index, count: 4 };
            let cells = matrix::run(plan, 2, shard, &mut |_| {});
            assert!(!cells.is_empty() && cells.len() < whole.len());
            Results {
                version: kata_sim::shard::VERSION,
                shard,
                total: plan.cells.len(),
                body: Body::Matrix {
                    header: plan.header.clone(),
                    cells,
                },
            }
        })
        .collect();
    // Through the results files' JSON, as across machines.
    let parts: Vec<Results> = parts
        .iter()
        .map(|p| serde_json::from_str(&serde_json::to_string(p).unwrap()).unwrap())
        .collect();
    let merged = kata_sim::shard::merge(parts).expect("the shards merge");
    match merged.body {
        Body::Matrix { cells, header } => {
            assert_eq!(header, plan.header);
            assert_eq!(
                cells, whole,
                "merged shards differ from the single run (-j 2)"
            );
        }
        Body::Run { .. } => panic!("a matrix merges into a matrix"),
    }
}

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    panic!("no chromium: install Debian's `chromium` (.ci/run does)");
}

/// The report opened in headless Chromium: every cell is drawn, in its phase's table, and
/// links to its page, which holds its trace.
fn the_html_report_draws_every_cell_in_chromium(plan: &Plan, cells: &[CellResult]) {
    let dir = tempfile::tempdir().unwrap();
    let index = matrix::write_html(dir.path(), &plan.header, cells).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--allow-file-access-from-files",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", index.display()))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The script counts what it drew.
    assert!(
        dom.contains(&format!("data-drawn=\"{}\"", cells.len())),
        "the page says it drew another number of cells than {}",
        cells.len()
    );
    let cell = regex::Regex::new(
        r#"<td class="cell c-([a-z_]+)" data-id="([^"]+)" title="[^"]*"><a href="([^"]+)">(.)</a></td>"#,
    )
    .unwrap();
    let drawn: BTreeMap<String, (String, String, String)> = cell
        .captures_iter(&dom)
        .map(|c| {
            (
                c[2].to_string(),
                (c[1].to_string(), c[3].to_string(), c[4].to_string()),
            )
        })
        .collect();
    assert_eq!(drawn.len(), cells.len(), "cells drawn in the DOM");
    let tabs = regex::Regex::new(r#"<section class="phase" id="phase-([a-z-]+)""#).unwrap();
    assert_eq!(tabs.captures_iter(&dom).count(), 5, "a tab per phase");
    for c in cells {
        let (class, href, letter) = drawn
            .get(&c.id)
            .unwrap_or_else(|| panic!("cell {} is not drawn", c.id));
        assert_eq!(class, c.class.id(), "{}", c.id);
        assert_eq!(letter, &c.class.letter().to_string(), "{}", c.id);
        assert_eq!(href, &format!("cells/{}.html", c.id));
        let page = std::fs::read_to_string(dir.path().join(href))
            .unwrap_or_else(|e| panic!("{href}: {e}"));
        let first = c.calls[0]
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;");
        assert!(page.contains(&first), "{href} lacks the trace");
        assert!(page.contains("sequenceDiagram"), "{href} lacks the diagram");
    }
}

#[test]
fn parallel_cells_are_the_serial_cells() {
    let plan = plan(Persona::Rs);
    let shard = Shard { index: 2, count: 5 };
    let serial = matrix::run(&plan, 1, shard, &mut |_| {});
    let parallel = matrix::run(&plan, 2, shard, &mut |_| {});
    assert_eq!(serial, parallel);
}

#[test]
fn the_3_19_1_persona_plans_on_its_own_release_of_the_agent() {
    let plan = plan(Persona::Go3191);
    assert_eq!(plan.header.agent_version.to_string(), "3.19.1");
    // That agent has no GetDiagnosticData, and the 3.19.1 shim never asks for it.
    assert!(
        plan.cells
            .iter()
            .all(|c| c.op.name() != "GetDiagnosticData")
    );
    assert!(plan.cells.len() > 1_000);
}

#[test]
fn a_base_with_faults_of_its_own_is_refused() {
    let e = matrix::plan(library("go-hang-create-container"), Persona::Go).unwrap_err();
    assert!(e.to_string().contains("fault-free"), "{e}");
}

#[test]
fn coverage_places_each_firing_in_its_phase_row_and_column() {
    let s = library("go-term-getdiag-error");
    let o = kata_sim::host::run_blocking(&s);
    let covered = matrix::covered(&s, &o);
    assert!(
        covered.iter().any(|c| c.phase == matrix::Phase::Stop
            && c.op.name() == "GetDiagnosticData"
            && c.fault.starts_with("error(")),
        "{covered:?}"
    );
    // A fault-free scenario covers nothing.
    let s = library("go-happy-path");
    assert!(matrix::covered(&s, &kata_sim::host::run_blocking(&s)).is_empty());
}

#[test]
fn a_random_failure_shrinks_to_a_deterministic_regression_that_fails_alike() {
    // Half the seeds: CopyFile fails first; the expectation that the guest details come in
    // time fails for the seeds whose 30% delay fires.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("library/go-chaos-failed-create.yaml"),
    )
    .unwrap()
    .replace(
        "  teardown: completed",
        "  teardown: completed\n  faults_fired: 1",
    );
    let s = kata_sim::load::parse(Path::new("chaos.yaml"), &text).unwrap();
    // A seed it fails for: two faults fired.
    let seed = (0..64)
        .find(|&seed| {
            let mut t = s.clone();
            t.seed = seed;
            let o = kata_sim::host::run_blocking(&t);
            !kata_sim::check::check(&t, &o).is_empty()
        })
        .expect("some seed fires more than one fault");
    let shrunk = kata_sim::shrink::shrink(s.clone(), seed).expect("it shrinks");
    assert_eq!(shrunk.what, "faults_fired", "seed {seed}");
    assert!(
        shrunk.after.steps < shrunk.before.steps,
        "{:?}",
        shrunk.after
    );
    assert!(shrunk.after.firings <= 2 && shrunk.after.rules <= 2);
    // Written and read back as a user would: deterministic (no chance left in any rule) and
    // failing the same expectation under any seed.
    let file = kata_sim::shrink::render(&shrunk, "chaos.yaml", seed).unwrap();
    let back = kata_sim::load::parse(Path::new("shrunk.yaml"), &file).expect("it loads");
    assert!(
        back.faults
            .iter()
            .all(|r| r.chain.iter().all(|t| t.percent >= 100.0)),
        "{file}"
    );
    for other in [seed, seed + 1, 1000] {
        let mut t = back.clone();
        t.seed = other;
        let o = kata_sim::host::run_blocking(&t);
        let m = kata_sim::check::check(&t, &o);
        assert!(
            m.iter().any(|m| m.what == "faults_fired"),
            "seed {other}: {m:?}\n{file}"
        );
    }
    // A seed it passes for has nothing to shrink.
    let passing = (0..64)
        .find(|&seed| {
            let mut t = s.clone();
            t.seed = seed;
            kata_sim::check::check(&t, &kata_sim::host::run_blocking(&t)).is_empty()
        })
        .unwrap();
    assert!(matches!(
        kata_sim::shrink::shrink(s, passing),
        Err(kata_sim::shrink::ShrinkError::Passes { .. })
    ));
}
