//! Project automation. `cargo xtask ci` runs what CI runs: format check, clippy with
//! warnings denied, the tests, the docs with warnings denied, and every bench once.

use std::process::Command;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "ci" => ci(),
        _ => {
            eprintln!("usage: cargo xtask ci");
            bail!("unknown task {task:?}")
        }
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
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
    run(&["bench", "--workspace", "--", "--test"], &[])?;
    Ok(())
}
