//! The shim driver against a real shim that Debian packages: containerd's
//! `containerd-shim-runc-v2` with `runc`, on a rootfs made from `busybox-static` (`.ci/run`
//! installs all three). kata-sim plays containerd: the `start` bootstrap, the events service,
//! FIFOs, Create/Start/Wait/Exec/Kill/Delete/Shutdown, and a shim that crashes or never
//! prints its address.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_sim::host::Outcome;
use kata_sim::record::TaskStatus;
use kata_sim::schema::Teardown;
use kata_sim::shim::{ShimOptions, run_blocking};

const RUNC_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/shim")
}

fn scenario(file: &str) -> kata_sim::schema::Scenario {
    kata_sim::load::load(&dir().join(file)).unwrap_or_else(|e| panic!("{e}"))
}

fn options() -> ShimOptions {
    assert!(
        Path::new(RUNC_SHIM).is_file(),
        "{RUNC_SHIM} is missing: install Debian's containerd, runc and busybox-static"
    );
    ShimOptions::new(RUNC_SHIM).identify()
}

fn run(file: &str) -> Outcome {
    let s = scenario(file);
    let o = run_blocking(&s, &options());
    let mismatches = kata_sim::check::check(&s, &o);
    assert!(mismatches.is_empty(), "{file}: {mismatches:#?}\n{o:#?}");
    o
}

#[test]
fn the_runc_shim_is_identified() {
    let o = options();
    assert!(
        matches!(&o.flavor, Some(kata_sim::shim::launch::Flavor::Runc(v)) if v.starts_with("1.")),
        "{:?}",
        o.flavor
    );
}

#[test]
fn a_pod_runs_its_container_and_the_teardown_ends_the_shim() {
    let o = run("runc-pod.yaml");
    let p = &o.processes["c1"];
    assert_eq!(p.exit_code, Some(3));
    assert_eq!(p.stdout, "hello\n");
    assert_eq!(p.stderr, "oops\n");
    assert_eq!(o.teardown, Teardown::Completed, "{o:#?}");
    assert!(o.errors.is_empty(), "{:?}", o.errors);
    // The task states the shim reported after each step.
    let after = |step: &str| {
        o.steps
            .iter()
            .find(|r| r.step == step)
            .unwrap_or_else(|| panic!("no step {step}: {:#?}", o.steps))
            .tasks
            .get("c1")
            .cloned()
    };
    assert_eq!(
        after("create_container c1"),
        Some((TaskStatus::Created, None))
    );
    assert_eq!(after("wait c1"), Some((TaskStatus::Stopped, Some(3))));
    assert_eq!(o.tasks["c1"].status, TaskStatus::Stopped);
    assert_eq!(o.tasks["c1"].exit_status, Some(3));
}
