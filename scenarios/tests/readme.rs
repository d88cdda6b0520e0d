//! The README's first shell block works as written: exactly two commands (the main job and the
//! tests), the test command is the one CI runs, and the main job runs verbatim from the
//! workspace root and passes every scenario.
//!
//! The main job is a `cargo run` inside `cargo test`: cargo releases the build directory's lock
//! once the test binaries are built, so the nested cargo builds in the same target directory
//! (only the crates whose features differ without the dev-dependencies) and does not wait.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the package lives in the workspace")
        .to_path_buf()
}

/// The commands of README.md's first ```sh block (comments and blank lines left out).
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut lines = readme.lines().skip_while(|l| l.trim() != "```sh");
    assert!(lines.next().is_some(), "README.md has no ```sh block");
    let block: Vec<&str> = lines.take_while(|l| l.trim() != "```").collect();
    block
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Whether `.ci/run` runs `command` as one of its shell commands.
fn ci_runs(ci: &str, command: &str) -> bool {
    ci.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(';'))
        .any(|c| c.trim() == command)
}

#[test]
fn ci_runs_only_exact_commands() {
    let ci = "echo \"== test\";   cargo test --workspace\n# cargo test -p x\n";
    assert!(ci_runs(ci, "cargo test --workspace"));
    assert!(!ci_runs(ci, "cargo test"));
    assert!(!ci_runs(ci, "cargo test -p x"));
}

#[test]
fn readme_block_is_the_main_job_and_the_ci_tests() {
    let commands = readme_commands();
    assert_eq!(
        commands.len(),
        2,
        "README.md's first ```sh block must hold the main job and the tests: {commands:?}"
    );
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    assert!(
        ci_runs(&ci, &commands[1]),
        "the README's test command {:?} is not what .ci/run runs",
        commands[1]
    );
}

/// "N of N passed" on a line of its own, every scenario passed.
fn all_passed(stdout: &str) -> Option<usize> {
    stdout.lines().find_map(|l| {
        let (passed, total) = l.trim().strip_suffix(" passed")?.split_once(" of ")?;
        let (passed, total) = (passed.parse::<usize>().ok()?, total.parse::<usize>().ok()?);
        (passed == total && total > 0).then_some(total)
    })
}

#[test]
fn summary_line_is_read_exactly() {
    assert_eq!(all_passed("x\n\n50 of 50 passed\n"), Some(50));
    assert_eq!(all_passed("49 of 50 passed\n"), None);
    assert_eq!(all_passed("0 of 0 passed\n"), None);
    assert_eq!(all_passed("all passed\n"), None);
}

#[test]
fn readme_main_job_runs_verbatim() {
    let commands = readme_commands();
    let main_job = commands.first().expect("README.md's main-job command");
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(main_job).current_dir(root());
    let out = sh.output().expect("running sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`{main_job}` failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        all_passed(&stdout).is_some(),
        "`{main_job}` printed no \"N of N passed\" summary:\n{stdout}"
    );
}
