//! `cargo xtask fuzz [--time S] [--target NAME]... [--merge]`: builds the cargo-fuzz targets
//! of `fuzz/` (nightly, no sanitizer: the code is safe Rust; debug assertions on, so overflow
//! panics), runs each for S seconds (default 60) in one libFuzzer process (fork mode, one job,
//! so that a crash is recorded and the run goes on), and reports runs, exec/s, coverage and
//! the crashes, timeouts and OOMs it left in `fuzz/artifacts/<target>/`.
//!
//! New inputs go to a scratch corpus (`fuzz/target/work/<target>`); `--merge` then minimises
//! the committed corpus and the scratch one into `fuzz/corpus/<target>` (libFuzzer's
//! `-merge=1`: the smallest set with the same coverage).
//!
//! Run as root, the targets run as `nobody` (`setpriv`): until every guest path is confined,
//! a fuzzed CopyFile could otherwise write outside its guest root with root's rights.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::root;

/// Every target of `fuzz/Cargo.toml`.
const TARGETS: &[&str] = &["frame", "dispatch", "handshake", "scenario", "rule", "sh"];

/// The uid and gid the targets run as when this runs as root.
const NOBODY: &str = "65534";

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Time per target: 60, 90s, 2m or 1h.
    #[arg(long = "time", value_name = "S", default_value = "60", value_parser = seconds)]
    pub seconds: u64,
    /// A target to run (repeatable; default: every target).
    #[arg(long = "target", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
    /// Merge the new inputs into the committed corpus, minimised.
    #[arg(long)]
    pub merge: bool,
}

/// A duration (`90s`, `2m`) as whole seconds, at least one.
fn seconds(s: &str) -> anyhow::Result<u64> {
    Ok(crate::soak::parse_duration(s)?.as_secs().max(1))
}

impl Options {
    /// The targets to run: those given, or every target.
    pub fn targets(&self) -> Vec<String> {
        if self.targets.is_empty() {
            TARGETS.iter().map(|t| t.to_string()).collect()
        } else {
            self.targets.clone()
        }
    }
}

/// What one target's run found.
struct Report {
    target: String,
    runs: u64,
    exec_per_sec: u64,
    coverage: String,
    corpus: usize,
    findings: Vec<PathBuf>,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A command that runs `binary`, as `nobody` when this process is root.
fn target_command(binary: &Path, scratch: &Path) -> anyhow::Result<Command> {
    let mut cmd = if is_root() {
        let status = Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(scratch)
            .status()
            .context("chown")?;
        if !status.success() {
            bail!("chown {} failed", scratch.display());
        }
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
        ])
        .arg(binary);
        c
    } else {
        Command::new(binary)
    };
    // Guest roots go to the scratch directory (tmpfs is faster, but this one is owned right).
    cmd.env("TMPDIR", scratch.join("tmp"));
    Ok(cmd)
}

fn artifacts(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.filter(|e| e.is_ok()).count())
}

/// The last `#N ... exec/s: E` status line of libFuzzer's log (fork mode or not).
fn stats(log: &str) -> (u64, u64, String) {
    let mut runs = 0;
    let mut eps = 0;
    let mut cov = String::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(n) = words
            .next()
            .and_then(|n| n.trim_end_matches(':').parse::<u64>().ok())
        else {
            continue;
        };
        runs = n;
        let w: Vec<&str> = rest.split_whitespace().collect();
        for pair in w.windows(2) {
            match pair[0] {
                "exec/s:" => eps = pair[1].parse().unwrap_or(eps),
                "cov:" => cov = pair[1].to_string(),
                _ => {}
            }
        }
    }
    for line in log.lines() {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            runs = v.trim().parse().unwrap_or(runs);
        }
        if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            eps = v.trim().parse().unwrap_or(eps);
        }
    }
    (runs, eps, cov)
}

/// Runs `cargo xtask fuzz`.
pub fn run(o: &Options) -> anyhow::Result<()> {
    let fuzz = root().join("fuzz");
    eprintln!("$ cargo +nightly fuzz build -O -a -s none");
    let status = Command::new("cargo")
        .args(["+nightly", "fuzz", "build", "-O", "-a", "-s", "none"])
        .current_dir(root())
        .status()
        .context("running cargo +nightly fuzz (install it: cargo install cargo-fuzz)")?;
    if !status.success() {
        bail!("cargo fuzz build failed: {status}");
    }
    // cargo-fuzz builds into the fuzz package's target directory (CARGO_TARGET_DIR too).
    let bin_dir =
        crate::target_dir_of(crate::cargo(), &fuzz)?.join("x86_64-unknown-linux-gnu/release");
    let mut reports = Vec::new();
    for target in &o.targets() {
        let corpus = fuzz.join("corpus").join(target);
        let scratch = fuzz.join("target/work").join(target);
        let work = scratch.join("corpus");
        let found = scratch.join("artifacts");
        std::fs::create_dir_all(scratch.join("tmp"))?;
        std::fs::create_dir_all(&work)?;
        std::fs::create_dir_all(&found)?;
        std::fs::create_dir_all(&corpus)?;
        let binary = bin_dir.join(target);
        let before = artifacts(&found);
        let mut cmd = target_command(&binary, &scratch)?;
        cmd.args([
            "-fork=1",
            "-ignore_crashes=1",
            "-ignore_timeouts=1",
            "-ignore_ooms=1",
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-max_len=4096",
            "-print_final_stats=1",
        ])
        .arg(format!("-max_total_time={}", o.seconds))
        .arg(format!("-artifact_prefix={}/", found.display()))
        .arg(&work)
        .arg(&corpus);
        eprintln!("fuzzing {target} for {} s", o.seconds);
        let out = cmd
            .output()
            .with_context(|| format!("running {}", binary.display()))?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        std::fs::write(scratch.join("fuzz.log"), &log)?;
        let (runs, last_rate, coverage) = stats(&log);
        // The average over the run (a status line's rate is that of its last job).
        let exec_per_sec = if runs > 0 {
            runs / o.seconds
        } else {
            last_rate
        };
        let findings: Vec<PathBuf> = artifacts(&found)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        // Keep what was found where cargo-fuzz keeps it, for `cargo fuzz run TARGET FILE`.
        let keep = fuzz.join("artifacts").join(target);
        std::fs::create_dir_all(&keep)?;
        let mut kept = Vec::new();
        for f in &findings {
            let dest = keep.join(f.file_name().unwrap_or_default());
            std::fs::copy(f, &dest)?;
            kept.push(dest);
        }
        if o.merge {
            merge(&binary, &scratch, &corpus, &work)?;
        }
        reports.push(Report {
            target: target.clone(),
            runs,
            exec_per_sec,
            coverage,
            corpus: count_files(&corpus),
            findings: kept,
        });
    }
    println!("| target | runs | exec/s | coverage | corpus | crashes, timeouts, OOMs |");
    println!("|---|---|---|---|---|---|");
    let mut total = 0;
    for r in &reports {
        total += r.findings.len();
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.target,
            r.runs,
            r.exec_per_sec,
            r.coverage,
            r.corpus,
            r.findings.len()
        );
    }
    for r in &reports {
        for f in &r.findings {
            println!(
                "found: {}  (reproduce: cargo +nightly fuzz run {} {})",
                f.display(),
                r.target,
                f.display()
            );
        }
    }
    if total > 0 {
        bail!("{total} crashes, timeouts or OOMs");
    }
    Ok(())
}

/// Minimises the committed corpus and the new inputs into the committed corpus.
fn merge(binary: &Path, scratch: &Path, corpus: &Path, work: &Path) -> anyhow::Result<()> {
    let merged = scratch.join("merged");
    let _ = std::fs::remove_dir_all(&merged);
    std::fs::create_dir_all(&merged)?;
    let mut cmd = target_command(binary, scratch)?;
    let out = cmd
        .args(["-merge=1", "-timeout=10", "-rss_limit_mb=2048"])
        .arg(&merged)
        .arg(corpus)
        .arg(work)
        .output()?;
    if !out.status.success() {
        bail!(
            "merging into {} failed:\n{}",
            corpus.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kept = artifacts(&merged);
    if kept.is_empty() {
        bail!("the merge of {} kept nothing", corpus.display());
    }
    for old in artifacts(corpus) {
        std::fs::remove_file(old)?;
    }
    for f in kept {
        std::fs::copy(&f, corpus.join(f.file_name().unwrap_or_default()))?;
    }
    eprintln!(
        "merged: {} inputs in {}",
        count_files(corpus),
        corpus.display()
    );
    Ok(())
}
