//! Project automation.
//!
//! - `cargo xtask ci` runs what CI runs: format check, clippy with warnings denied, the tests
//!   (insta in check mode), the docs with warnings denied, and every bench once.
//! - `cargo xtask bench-report [--quick]` runs the criterion benches (briefly with `--quick`),
//!   prints one table of ratios against baselines measured in the same run, marks each target
//!   met or missed, and writes it to `docs/performance.md` with the machine and date.
//! - `cargo xtask fuzz [--time S] [--target NAME]... [--merge]` runs every cargo-fuzz target
//!   for S seconds (default 60) and reports runs, exec/s and crashes (see `xtask/src/fuzz.rs`).
//! - `cargo xtask soak [--duration D] [--seed N] [--concurrency C] [--release]` runs random pod
//!   lifecycles with faults against `kata-sim serve` and reports throughput, latency, memory,
//!   fds and leftovers (see `xtask/src/soak.rs`).

mod fuzz;
mod soak;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Project automation for kata-sim.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run what CI runs: format check, clippy (warnings denied), the tests (insta in check
    /// mode), the docs (warnings denied) and every bench once.
    Ci,
    /// Run the criterion benches, print ratios against baselines measured in the same run and
    /// write them to docs/performance.md.
    BenchReport {
        /// Brief measurements, and only the benches the report reads.
        #[arg(long)]
        quick: bool,
    },
    /// Run every cargo-fuzz target (nightly) and report runs, exec/s and crashes.
    Fuzz(fuzz::Options),
    /// Run random pod lifecycles with faults against `kata-sim serve` and report throughput,
    /// latency, memory, fds and leftovers.
    Soak(soak::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Ci => ci(),
        Task::BenchReport { quick } => bench_report(quick),
        Task::Fuzz(o) => fuzz::run(&o),
        Task::Soak(o) => soak::run(&o),
    }
}

/// `cargo` (the one running this, when there is one).
fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The workspace's target directory as cargo resolves it (`CARGO_TARGET_DIR`,
/// `build.target-dir`, or `target/`).
fn target_dir() -> anyhow::Result<PathBuf> {
    target_dir_of(cargo(), &root())
}

/// The target directory `cargo metadata` reports for the package or workspace in `dir`, run
/// as `cargo` is set up.
fn target_dir_of(mut cargo: Command, dir: &Path) -> anyhow::Result<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        target_directory: PathBuf,
    }
    let out = cargo
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(dir)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let m: Metadata =
        serde_json::from_slice(&out.stdout).context("reading cargo metadata's answer")?;
    Ok(m.target_directory)
}

fn run(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = cargo()
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn ci() -> anyhow::Result<()> {
    run(&["fmt", "--all", "--check"], &[])?;
    run(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    run(
        &["test", "--workspace"],
        &[("CI", "true"), ("INSTA_UPDATE", "no")],
    )?;
    run(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    run(&["test", "--workspace", "--benches"], &[])?;
    Ok(())
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The median of one criterion benchmark (under `criterion`, criterion's output directory),
/// in nanoseconds.
fn median_in(criterion: &Path, id: &str) -> anyhow::Result<f64> {
    let path = criterion.join(id).join("new/estimates.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no median in {}", path.display()))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024 / 1024);
    format!("{cpu}, {cores} cores, {mem} GiB")
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// One step of the lifecycle, as the lifecycle bench timed it.
#[derive(serde::Deserialize)]
struct Phase {
    step: String,
    round_trips: u32,
    wire_ns: f64,
    in_process_ns: f64,
}

struct Row {
    metric: &'static str,
    value: String,
    baseline: String,
    ratio: Option<f64>,
    target: &'static str,
    met: Option<bool>,
}

fn bench_report(quick: bool) -> anyhow::Result<()> {
    // The report needs no plots; `--quick` runs only the benches its table reads (the other
    // RPCs of `rpc/*` are for `cargo bench` and criterion's own comparisons).
    let timing: &[&str] = if quick {
        &[
            "--noplot",
            "--warm-up-time",
            "0.3",
            "--measurement-time",
            "1",
            "--sample-size",
            "10",
            "^(floor/|rpc/[a-z_]+/check$|fault_overhead/|lifecycle/|scale/|scenarios/|parallel/|matrix/)",
        ]
    } else {
        &["--noplot", "--warm-up-time", "1", "--measurement-time", "3"]
    };
    let mut args = vec![
        "bench",
        "-p",
        "benches",
        "--bench",
        "rpc",
        "--bench",
        "faults",
        "--bench",
        "lifecycle",
        "--",
    ];
    args.extend_from_slice(timing);
    // Guest roots live on tmpfs when there is one, as a real guest's files live in its memory;
    // on this kind of VM's disk one directory costs ~230 µs (see the notes).
    let tmp = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    // Criterion writes under the target directory; the lifecycle bench writes its own files
    // beside (CRITERION_HOME), wherever CARGO_TARGET_DIR or the configuration puts it.
    let criterion = target_dir()?.join("criterion");
    let home = criterion.to_string_lossy().into_owned();
    run(&args, &[("TMPDIR", tmp), ("CRITERION_HOME", &home)])?;
    let median_ns = |id: &str| median_in(&criterion, id);

    let check_unix = median_ns("rpc_unix/check")?;
    let check_hv = median_ns("rpc_hvsock/check")?;
    let check_local = median_ns("rpc_in_process/check")?;
    let ttrpc_floor = median_ns("floor/ttrpc_empty_check")?;
    let raw_floor = median_ns("floor/unix_pingpong_16b")?;
    let f0 = median_ns("fault_overhead/check/0")?;
    let f1000 = median_ns("fault_overhead/check/1000")?;
    let life_wire = median_ns("lifecycle/wire")?;
    let life_local = median_ns("lifecycle/in_process")?;
    let s1 = median_ns("scale_check/1")?;
    let s1000 = median_ns("scale_check/1000")?;
    let library = median_ns("scenarios/library")?;
    let lib_serial = median_ns("parallel/library_x20/1")?;
    let lib_parallel = median_ns("parallel/library_x20/2")?;
    let matrix_serial = median_ns("matrix/go/1")?;
    let matrix_parallel = median_ns("matrix/go/2")?;
    let matrix_cells: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        criterion.join("matrix-cells.json"),
    )?)?;
    let matrix_cells = matrix_cells["go"].as_u64().unwrap_or(0);
    let scenarios = std::fs::read_dir(root().join("scenarios/library"))?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        })
        .count();
    let rss: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(criterion.join("scale-rss.json"))?)?;
    let rss1000 = rss["1000"].as_f64().unwrap_or(f64::NAN) / 1024.0;
    let phases: Vec<Phase> = serde_json::from_str(&std::fs::read_to_string(
        criterion.join("lifecycle-phases.json"),
    )?)?;
    let trips: u32 = phases.iter().map(|p| p.round_trips).sum();
    let transport_floor = f64::from(trips) * check_unix;
    let per_second = scenarios as f64 / (library / 1e9);

    let rows = vec![
        Row {
            metric: "Check over unix vs bare ttrpc (empty handler)",
            value: fmt_ns(check_unix),
            baseline: fmt_ns(ttrpc_floor),
            ratio: Some(check_unix / ttrpc_floor),
            target: "<= 1.15x",
            met: Some(check_unix / ttrpc_floor <= 1.15),
        },
        Row {
            metric: "Check over unix vs raw 16 B ping-pong",
            value: fmt_ns(check_unix),
            baseline: fmt_ns(raw_floor),
            ratio: Some(check_unix / raw_floor),
            target: "-",
            met: None,
        },
        Row {
            metric: "Check over hybrid vsock vs unix",
            value: fmt_ns(check_hv),
            baseline: fmt_ns(check_unix),
            ratio: Some(check_hv / check_unix),
            target: "-",
            met: None,
        },
        Row {
            metric: "Check in-process vs over unix",
            value: fmt_ns(check_local),
            baseline: fmt_ns(check_unix),
            ratio: Some(check_local / check_unix),
            target: "-",
            met: None,
        },
        Row {
            metric: "Fault engine: 1,000 non-matching rules vs none",
            value: fmt_ns(f1000),
            baseline: fmt_ns(f0),
            ratio: Some(f1000 / f0),
            target: "<= 1.05x",
            met: Some(f1000 / f0 <= 1.05),
        },
        Row {
            metric: "Full pod lifecycle over the wire vs one Check",
            value: fmt_ns(life_wire),
            baseline: fmt_ns(check_unix),
            ratio: Some(life_wire / check_unix),
            target: "<= 15x",
            met: Some(life_wire / check_unix <= 15.0),
        },
        Row {
            metric: "Full pod lifecycle over the wire vs its round trips, one Check each",
            value: fmt_ns(life_wire),
            baseline: format!(
                "{} ({trips} x {})",
                fmt_ns(transport_floor),
                fmt_ns(check_unix)
            ),
            ratio: Some(life_wire / transport_floor),
            target: "-",
            met: None,
        },
        Row {
            metric: "Full pod lifecycle in-process vs over the wire",
            value: fmt_ns(life_local),
            baseline: fmt_ns(life_wire),
            ratio: Some(life_local / life_wire),
            target: "-",
            met: None,
        },
        Row {
            metric: "Check latency with 1,000 sandboxes vs 1",
            value: fmt_ns(s1000),
            baseline: fmt_ns(s1),
            ratio: Some(s1000 / s1),
            target: "<= 2x",
            met: Some(s1000 / s1 <= 2.0),
        },
        Row {
            metric: "Resident memory of 1,000 sandboxes",
            value: format!(
                "{rss1000:.1} MiB ({:.1} KiB each)",
                rss1000 * 1024.0 / 1000.0
            ),
            baseline: "-".into(),
            ratio: None,
            target: "< 150 MiB",
            met: Some(rss1000 < 150.0),
        },
        Row {
            metric: "Bundled scenarios per second, in-process",
            value: format!("{per_second:.0}/s ({scenarios} in {})", fmt_ns(library)),
            baseline: "-".into(),
            ratio: None,
            target: ">= 200/s",
            met: Some(per_second >= 200.0),
        },
        Row {
            metric: "Bundled library x 20 seeds, throughput with -j 2 vs -j 1",
            value: format!(
                "{:.0}/s ({} in {})",
                (scenarios * 20) as f64 / (lib_parallel / 1e9),
                scenarios * 20,
                fmt_ns(lib_parallel)
            ),
            baseline: format!(
                "{:.0}/s ({})",
                (scenarios * 20) as f64 / (lib_serial / 1e9),
                fmt_ns(lib_serial)
            ),
            ratio: Some(lib_serial / lib_parallel),
            target: ">= 1.8x",
            met: Some(lib_serial / lib_parallel >= 1.8),
        },
        Row {
            metric: "Full go fault matrix, in-process, -j 2 (vs -j 1)",
            value: format!("{} ({matrix_cells} cells)", fmt_ns(matrix_parallel)),
            baseline: fmt_ns(matrix_serial),
            ratio: Some(matrix_parallel / matrix_serial),
            target: "< 10 s",
            met: Some(matrix_parallel < 10e9),
        },
    ];
    let mut table = String::from(
        "| metric | value | baseline | ratio | target | |\n|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.metric,
            r.value,
            r.baseline,
            r.ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            r.target,
            match r.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            }
        ));
    }
    print!("{table}");
    let mut steps = String::from(
        "| step | round trips | over the wire | in Checks | in-process |\n|---|---|---|---|---|\n",
    );
    let (mut wire_sum, mut local_sum) = (0.0, 0.0);
    for p in &phases {
        wire_sum += p.wire_ns;
        local_sum += p.in_process_ns;
        steps.push_str(&format!(
            "| {} | {} | {} | {:.1} | {} |\n",
            p.step,
            p.round_trips,
            fmt_ns(p.wire_ns),
            p.wire_ns / check_unix,
            if p.in_process_ns > 0.0 {
                fmt_ns(p.in_process_ns)
            } else {
                "-".into()
            },
        ));
    }
    steps.push_str(&format!(
        "| all (sum of medians) | {trips} | {} | {:.1} | {} |\n",
        fmt_ns(wire_sum),
        wire_sum / check_unix,
        fmt_ns(local_sum)
    ));
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let doc = format!(
        "# Performance\n\nGenerated by `cargo xtask bench-report{}` on {date}, on {}. Every ratio \
         compares two medians measured in the same run (criterion; release build). Regenerate \
         with `cargo xtask bench-report` (about 6 minutes on 2 cores; `--quick` about 3.5 on a fresh clone, its release build included).\n\n{table}\n{}\n\
         ## Where a pod's time goes\n\nEvery step of the lifecycle bench, timed one by one (the \
         median of 300 pods of each kind, same run; `Check` = {}).\n\n{steps}\n{}",
        if quick { " --quick" } else { "" },
        machine(),
        NOTES,
        fmt_ns(check_unix),
        lifecycle_head(&phases, trips) + LIFECYCLE,
    );
    std::fs::write(root().join("docs/performance.md"), doc)?;
    eprintln!("written to docs/performance.md");
    Ok(())
}

const NOTES: &str = "## Notes\n\n\
- The baselines: `floor/unix_pingpong_16b` is a raw unix-socket round trip of 16 bytes; \
`floor/ttrpc_empty_check` is ttrpc-rust's own server answering `Health.Check` with an empty \
handler on the same transport. sim-agent's server runs its own connection loop around the same \
generated handlers (so it can close a connection after DestroySandbox, cancel a disconnected \
client's calls and inject transport faults), then the fault hook, the trace and the model. \
Both ends of the RPC benches share one thread, so no cross-thread wake-up is measured.\n\
- The lifecycle bench boots VMs in no time and hangs up the agent connection before StopVM, as \
the shims do; nothing in it sleeps.\n\
- Memory is the growth of the bench process's resident set while 1,000 sandboxes run (each \
with its own agent server, socket and guest root), measured first in a fresh process; the \
100-sandbox figure is measured after it and reuses its pages.\n\
- Guest roots (a temp directory per guest, with the container rootfs skeleton and copied \
files) are created under `TMPDIR`, which the report points at `/dev/shm`. On the disk of the \
machine this was measured on, a 7-level `mkdir -p` takes ~1.6 ms (65 µs on tmpfs), and a pod \
lifecycle creates some 25 directories: with guest roots on that disk a lifecycle costs \
milliseconds more.\n\
- `-j 2` scales when nothing per run is process-wide: a run's real-time watchdog is one \
alarm thread for the process (it was a thread per run), an in-process run deletes its guest \
root inline (it was a blocking-pool thread per run), and a guest directory made with \
`mkdir_all` is opened through its own handle instead of pathrs's procfs `reopen` (that cut \
the library's syscalls by 30%, 2.64 to 1.86 million for the library x 20). Most of a run's time \
is in the kernel, and a thread started and ended per run (stack mapped and unmapped) likely \
stalls the other core's worker; the library x 20 went from 1.78x to 2.05x of `-j 1`, the \
matrix from 1.87x to 1.91x.\n\
- These machines are noisy (2 shared cores): compare ratios, not absolute times.\n\n\
## The Check target\n\n\
Met since the connection loop was reworked. Before, sim-agent's Check cost 1.2x ttrpc-rust's \
bare server (15.7 µs against 12.8 µs): every call went through a task of its own (a spawn, two \
task-local scopes), its answer through a channel to a writer task, and each turn of the loop \
rebuilt five signal futures. Now one task per connection reads, runs and writes: a call that \
answers at once (Check, and most calls) runs inline in that task and is written directly; only \
a call that has to wait (a blocking read, a wait, a delay fault) gets a task. The reader \
buffers (one read usually takes a whole frame) and is cancel safe, which also fixed a real bug: \
a frame half read when another call's answer went out used to be lost \
(`wire::a_frame_split_around_another_answer_is_read_whole`).\n";

/// The head of the lifecycle explanation: the pod's round trips, from the step table.
fn lifecycle_head(phases: &[Phase], trips: u32) -> String {
    let steps: Vec<&str> = phases.iter().map(|p| p.step.as_str()).collect();
    format!(
        "## The lifecycle target\n\n\
The target (a whole pod over the wire in at most 15 Checks) cannot be met by this lifecycle, \
and the step table shows why: the pod (the `go` persona's lifecycle: its calls and its stop \
order) makes {trips} round trips ({}), so the wire alone is {trips} Checks (the `its round \
",
        steps.join(", ")
    )
}

/// The explanation of the lifecycle row, below the step table, after [`lifecycle_head`].
const LIFECYCLE: &str = "trips` row) and nothing would be left for the VM and its guest. The in-process column is that \
work without any wire: a guest root with the container's image skeleton (about 25 \
directories on tmpfs), an agent server bound on its own socket, the termination-log file \
copied in, read back and removed, and at RemoveContainer the container's image root moved out \
of the guest (one rename; its files are deleted on the blocking pool), as the real agent \
unmounts a container's storages. Over the wire a step costs its in-process work plus about \
one Check per round trip; the first call on a new connection also pays for the accept. \
(StartContainer and WaitProcess share the process's run: over the wire the container's shell \
runs while StartContainer answers, in-process while WaitProcess waits.) \
StopVM over the wire also pays for the close of the agent connection the runtime hung up just \
before (~25 µs measured apart: both ends of it wind down on the same thread).\n\n\
Profiled with `perf record --call-graph dwarf` on the wire lifecycle (release, guest roots on \
tmpfs, 2026-11-29), CPU samples of both ends: user space 31%, the removal of stopped guests' \
roots 25% (on tokio's blocking pool, off the StopVM path), `mkdir` 10%, `statx` 6%, socket \
reads and writes 8%, `epoll` 3%, the rest other syscalls (accept, socket, bind, open, close, \
rename, chmod). No sleep and no timer is on the path.\n\n\
What the profile found and what was fixed (2.31 ms per pod before, the table's figure now):\n\n\
- `kata-sim serve` kept every VM's trace in one fleet-wide trace forever, and StopVM copied \
it whole for a log line: a pod cost ~0.9 µs more for every pod served before it (1.2 ms \
around pod 500, 4.5 ms around pod 4,000; criterion's 2.31 ms was such an average) and memory \
grew without bound. A fleet now keeps each VM's record (its last 10,000 calls) until its \
StopVM; only the exec driver, which reads the record after its run, asks for the fleet-wide \
one.\n\
- Guest path resolution `lstat`ed every component from the root for every path, and a \
container's 11-directory image skeleton went through it directory by directory: \
CreateContainer took 263 µs, now ~100 µs. Components after a missing one are no longer \
looked up (nothing can be a symlink there), and the skeleton is made under one resolved base.\n\
- StopVM deleted the guest's root (some 25 directories, each an open, two `getdents`, a close, \
an `rmdir`, and glibc growing and trimming its heap for the 32 KiB directory buffer): 300 µs. \
The VM is off and its socket gone when StopVM answers; the files go on tokio's blocking pool \
(the runtime finishes that before it shuts down).\n\
- Every agent server built its own 45-method dispatch table (~20 µs per StartVM, and memory \
per sandbox: 1,000 sandboxes took 15.5 MiB); the table is now built once per process and the \
agent travels with each call.\n\n\
A fair target for this lifecycle is its round trips plus the in-process work; the table gives \
both, and a regression in either shows there.\n";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_is_help_for_the_tool_and_every_task() {
        for args in [
            &["--help"][..],
            &["help"],
            &["bench-report", "--help"],
            &["ci", "--help"],
            &["fuzz", "--help"],
            &["soak", "-h"],
        ] {
            let e = parse(args).expect_err("help is not a task to run");
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{args:?}: {e}");
        }
        let help = Cli::command().render_long_help().to_string();
        for task in ["ci", "bench-report", "fuzz", "soak"] {
            assert!(help.contains(task), "{help}");
        }
    }

    #[test]
    fn tasks_and_their_options_parse() {
        assert!(matches!(
            parse(&["bench-report", "--quick"]).unwrap().task,
            Task::BenchReport { quick: true }
        ));
        let Task::Fuzz(f) = parse(&["fuzz", "--time", "2m", "--target", "rule"])
            .unwrap()
            .task
        else {
            panic!("not fuzz")
        };
        assert_eq!((f.seconds, f.targets()), (120, vec!["rule".to_string()]));
        let Task::Fuzz(all) = parse(&["fuzz"]).unwrap().task else {
            panic!("not fuzz")
        };
        assert_eq!((all.seconds, all.targets().len()), (60, 6));
        let Task::Soak(s) = parse(&["soak", "--duration", "90s", "--concurrency", "3"])
            .unwrap()
            .task
        else {
            panic!("not soak")
        };
        assert_eq!(s.duration, std::time::Duration::from_secs(90));
        assert_eq!((s.concurrency.get(), s.seed, s.release), (3, None, false));
    }

    #[test]
    fn mistakes_are_errors_naming_what_is_accepted() {
        let e = parse(&["bench-reprt"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSubcommand);
        assert!(e.to_string().contains("bench-report"), "{e}");
        let e = parse(&["fuzz", "--target", "rules"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        assert!(e.to_string().contains("rule"), "{e}");
        assert_eq!(
            parse(&["soak", "--concurrency", "0"]).unwrap_err().kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            parse(&["soak", "--duration", "2 weeks"])
                .unwrap_err()
                .kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            parse(&[]).unwrap_err().kind(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
    }

    #[test]
    fn the_target_directory_follows_cargo_target_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut elsewhere = cargo();
        elsewhere.env("CARGO_TARGET_DIR", dir.path());
        assert_eq!(target_dir_of(elsewhere, &root()).unwrap(), dir.path());
        let mut default = cargo();
        default.env_remove("CARGO_TARGET_DIR");
        let default = target_dir_of(default, &root()).unwrap();
        assert!(default.ends_with("target"), "{}", default.display());
        // The fuzz package is a workspace of its own, with its own target directory.
        let mut fuzz = cargo();
        fuzz.env("CARGO_TARGET_DIR", dir.path());
        assert_eq!(
            target_dir_of(fuzz, &root().join("fuzz")).unwrap(),
            dir.path()
        );
    }
}
