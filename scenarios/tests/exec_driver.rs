//! The `exec` driver with a host program written in this repo (`kata-sim-demo-host`, which
//! uses `RemoteHypervisor` and `RemoteAgent` like a real runtime).

use std::process::Command;

fn run(scenario: &str) -> (bool, String, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(scenario);
    let out = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args(["run", "--driver", "exec"])
        .arg(&path)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_kata-sim-demo-host"))
        .args(["sh", "-c", "echo from the demo host"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_real_host_program_meets_the_scenario() {
    let (ok, out, err) = run("tests/exec/demo-ok.yaml");
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("exec-demo-ok") && out.contains("1 of 1 passed"),
        "{out}"
    );
    // The program's own output went through the guest's stdout.
    assert!(out.contains("from the demo host"), "{out}");
}

#[test]
fn a_failing_host_program_is_reported_with_its_seed() {
    let (ok, out, err) = run("tests/exec/demo-fails.yaml");
    // Expected to fail the command, and the scenario expects exactly that.
    assert!(ok, "{out}\n{err}");
    let wrong = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exec/demo-ok.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_kata-sim"))
        .args(["run", "--driver", "exec"])
        .arg(&wrong)
        .arg("--")
        .arg("false")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FAILED exec-demo-ok") && err.contains("seed 3"),
        "{err}"
    );
    assert!(err.contains("the command exited"), "{err}");
}
