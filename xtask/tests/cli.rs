//! The `xtask` binary's command line: help is printed and nothing runs.

use std::process::Command;

fn xtask(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        // A task that ran anyway would find no cargo to start.
        .env("CARGO", "/nonexistent/cargo")
        .output()
        .expect("the xtask binary runs")
}

#[test]
fn help_succeeds_and_lists_every_task() {
    let out = xtask(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for task in ["ci", "bench-report", "fuzz", "soak"] {
        assert!(help.contains(task), "{help}");
    }
    assert!(help.contains("Usage: cargo xtask"), "{help}");
}

#[test]
fn a_tasks_help_does_not_run_the_task() {
    for (task, option) in [
        ("bench-report", "--quick"),
        ("soak", "--concurrency"),
        ("fuzz", "--target"),
        ("ci", "--help"),
    ] {
        let out = xtask(&[task, "--help"]);
        assert!(out.status.success(), "{task}: {out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains(option), "{task}: {help}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("$ cargo"), "{task} started: {err}");
    }
}

#[test]
fn an_unknown_task_fails_with_the_nearest_one() {
    let out = xtask(&["bench-reprot"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bench-report"), "{err}");
}
