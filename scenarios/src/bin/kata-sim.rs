//! `kata-sim`: put a Kata runtime on a fake VMM and guest agent.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kata_sim::runner;
use kata_sim::schema::Persona;
use kata_sim::serve::{ServeOptions, start};
use sim_agent::AgentVersion;

/// kata-sim: a fake VMM and guest agent for Kata Containers runtimes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve Kata's remote-hypervisor protocol and a guest agent for every VM it creates,
    /// until Ctrl-C (or SIGTERM).
    Serve {
        /// The remote-hypervisor socket (Kata's `remote_hypervisor_socket`).
        #[arg(long = "hypervisor-socket")]
        hypervisor_socket: PathBuf,
        /// Where VM directories and agent sockets go (default: `vms/` beside the socket).
        #[arg(long = "state-dir")]
        state_dir: Option<PathBuf>,
        /// Every guest behaves as this agent release (e.g. 3.19.1); default: the current agent.
        #[arg(long = "agent-version", default_value_t = AgentVersion::CURRENT)]
        agent_version: AgentVersion,
        /// How long a VM takes to boot, in milliseconds.
        #[arg(long = "boot-time-ms", default_value_t = 10)]
        boot_time_ms: u64,
        /// A fault rule (`StartVM=delay(5s)`, `WaitProcess{sandbox=ID}=hang`). Repeatable.
        #[arg(long = "fault", value_name = "RULE")]
        faults: Vec<String>,
        /// The seed of every random choice (fault probabilities, /dev/urandom).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Serve a fault control socket here (`kata-sim fault ... --control PATH`).
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Run scenarios with the built-in host (default: the bundled library).
    Run {
        /// Scenario files or directories (default: `scenarios/library`).
        paths: Vec<PathBuf>,
        /// `builtin` (each scenario's persona), `builtin:go`, `builtin:rs`, or `exec` (then the
        /// command after `--` is the host runtime).
        #[arg(long, default_value = "builtin")]
        driver: String,
        /// Run every scenario with this seed instead of its own.
        #[arg(long)]
        seed: Option<u64>,
        /// Write JUnit XML here.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Run the built-in host over real sockets on the real clock (default: in-process on a
        /// paused clock).
        #[arg(long, value_parser = ["in-process", "wire"], default_value = "in-process")]
        transport: String,
        /// Run every scenario with this agent release (e.g. 3.19.1 to match a Go shim 3.19.1
        /// under `--driver exec`).
        #[arg(long = "agent-version")]
        agent_version: Option<AgentVersion>,
        /// With `--driver exec`: the host runtime's command, e.g. `-- ctr run ...`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run one scenario and print its calls (or a Mermaid sequence diagram of them).
    Trace {
        /// The scenario file.
        scenario: PathBuf,
        /// Print a Mermaid sequence diagram (host, hypervisor, agent; faults as notes).
        #[arg(long)]
        mermaid: bool,
        /// `builtin`, `builtin:go` or `builtin:rs`.
        #[arg(long, default_value = "builtin")]
        driver: String,
    },
    /// Where two host runtimes' agent calls for one scenario diverge.
    Diff {
        /// The two drivers (`builtin:go`, `builtin:rs`, or `exec` with a command after `--`).
        #[arg(long = "driver", num_args = 1, required = true)]
        drivers: Vec<String>,
        /// The scenario file.
        scenario: PathBuf,
        /// Run both with this agent release.
        #[arg(long = "agent-version")]
        agent_version: Option<AgentVersion>,
        /// The host runtime's command, for an `exec` driver.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print the JSON Schema of scenario files (for editor completion).
    Schema,
    /// Validate scenario files without running them.
    Check {
        /// Scenario files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Change the faults of a running `kata-sim serve` / `sim-agent serve` through its control
    /// socket.
    Fault {
        /// The control socket.
        #[arg(long, global = true)]
        control: Option<PathBuf>,
        /// Give up after this many seconds without an answer (a socket that is not a control
        /// socket never answers).
        #[arg(long, global = true, default_value_t = 5.0)]
        timeout: f64,
        #[command(subcommand)]
        op: FaultOp,
    },
}

#[derive(Subcommand, Debug)]
enum FaultOp {
    /// Install a rule; prints its id.
    Add {
        /// The rule, e.g. `GetDiagnosticData=error(UNAVAILABLE,"guest busy")`.
        rule: String,
    },
    /// Remove a rule by id.
    Remove {
        /// The rule id.
        id: u64,
    },
    /// List the installed rules.
    List,
    /// Remove every rule.
    Clear,
    /// List the faults that fired so far.
    Fired,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // Scenarios build their own paused-clock runtime per run.
        Command::Run { .. }
        | Command::Check { .. }
        | Command::Trace { .. }
        | Command::Diff { .. }
        | Command::Schema => scenario_main(cli.command),
        Command::Serve {
            hypervisor_socket,
            state_dir,
            agent_version,
            boot_time_ms,
            faults,
            seed,
            control,
        } => {
            init_logging();
            let opts = ServeOptions {
                hypervisor_socket,
                state_dir,
                agent_version,
                boot_time: Duration::from_millis(boot_time_ms),
                faults,
                seed,
                control,
            };
            let rt = runtime()?;
            let state = rt.block_on(serve(&opts));
            // Every deletion the shutdown started has finished once the runtime is gone; the
            // state directory's last sweep runs after that.
            drop(rt);
            drop(state?);
            tracing::info!("stopped; sockets removed");
            Ok(())
        }
        command => runtime()?.block_on(async_main(command)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// `kata-sim serve` until SIGINT or SIGTERM; returns the state directory to release.
async fn serve(opts: &ServeOptions) -> anyhow::Result<kata_sim::serve::StateDir> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before anything is created: a signal from now on is a clean shutdown.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let serving = start(opts).await?;
    tracing::info!(agent_version = %opts.agent_version, seed = opts.seed, rules = opts.faults.len(), "kata-sim serving; Ctrl-C or SIGTERM to stop");
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal, "shutting down");
    Ok(serving.shutdown().await)
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn async_main(command: Command) -> anyhow::Result<()> {
    init_logging();
    match command {
        Command::Fault {
            control,
            timeout,
            op,
        } => {
            use sim_agent::fault::control::{self, Request, Response};
            let control = control.context("--control PATH is required")?;
            let req = match op {
                FaultOp::Add { rule } => Request::Add { rule },
                FaultOp::Remove { id } => Request::Remove { id },
                FaultOp::List => Request::List,
                FaultOp::Clear => Request::Clear,
                FaultOp::Fired => Request::Fired,
            };
            let timeout = Duration::try_from_secs_f64(timeout)
                .ok()
                .filter(|t| !t.is_zero())
                .context("--timeout must be a positive number of seconds")?;
            match control::request_within(&control, &req, timeout).await? {
                Response::Added { id } => println!("{id}"),
                Response::Rules { rules } => {
                    for r in rules {
                        println!("rule {} {}", r.id, r.rule);
                    }
                }
                Response::Fired { fired, dropped } => {
                    if dropped > 0 {
                        println!("({dropped} older faults fired and are no longer kept)");
                    }
                    for f in fired {
                        println!("fired {} {} {}", f.rule, f.target, f.action);
                    }
                }
                Response::Removed { .. } | Response::Cleared | Response::Error { .. } => {}
            }
            Ok(())
        }
        Command::Serve { .. } => unreachable!("handled in main"),
        Command::Run { .. }
        | Command::Check { .. }
        | Command::Trace { .. }
        | Command::Diff { .. }
        | Command::Schema => unreachable!("handled without tokio"),
    }
}

fn scenario_main(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            paths,
            driver,
            seed,
            junit,
            transport,
            agent_version,
            command,
        } => {
            let (persona, exec) = if driver == "exec" {
                anyhow::ensure!(
                    !command.is_empty(),
                    "--driver exec needs a command after --"
                );
                (None, Some(command))
            } else {
                anyhow::ensure!(command.is_empty(), "a command after -- needs --driver exec");
                (persona_of(&driver)?, None)
            };
            let paths = if paths.is_empty() {
                vec![PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/library"
                ))]
            } else {
                paths
            };
            let files = runner::find(&paths).context("finding scenario files")?;
            anyhow::ensure!(!files.is_empty(), "no scenario files under {paths:?}");
            if exec.is_some() {
                // SIGTERM/SIGINT stop the run cleanly: the command, the service, its files.
                kata_sim::exec::stop_on_signals().context("installing the signal handlers")?;
            }
            let mut reports = Vec::new();
            for (i, f) in files.iter().enumerate() {
                if kata_sim::exec::interrupted().is_some() {
                    break;
                }
                let r = runner::run_file(
                    f,
                    &runner::Overrides {
                        persona,
                        seed,
                        exec: exec.clone(),
                        wire: transport == "wire",
                        agent_version,
                    },
                );
                eprintln!(
                    "[{:>3}/{}] {} {}",
                    i + 1,
                    files.len(),
                    if r.passed() { "ok    " } else { "FAILED" },
                    f.display()
                );
                reports.push(r);
            }
            print!("{}", runner::summary(&reports));
            let failures = runner::failures(&reports);
            if !failures.is_empty() {
                eprint!("\n{failures}");
            }
            if let Some(j) = junit {
                std::fs::write(&j, runner::junit(&reports))
                    .with_context(|| format!("writing {}", j.display()))?;
            }
            if let Some(sig) = kata_sim::exec::interrupted() {
                eprintln!(
                    "interrupted by {sig}: {} of {} scenarios run",
                    reports.len(),
                    files.len()
                );
                std::process::exit(128 + sig as i32)
            }
            if reports.iter().all(runner::Report::passed) {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Trace {
            scenario,
            mermaid,
            driver,
        } => {
            let r = runner::run_file(
                &scenario,
                &runner::Overrides {
                    persona: persona_of(&driver)?,
                    ..Default::default()
                },
            );
            if let Some(e) = r.load_error {
                anyhow::bail!("{e}");
            }
            let o = r.outcome.context("no outcome")?;
            if mermaid {
                print!("{}", kata_sim::render::mermaid(&o));
            } else {
                for c in &o.calls {
                    println!("{c}");
                }
            }
            Ok(())
        }
        Command::Diff {
            drivers,
            scenario,
            agent_version,
            command,
        } => {
            anyhow::ensure!(drivers.len() == 2, "give --driver twice");
            if drivers.iter().any(|d| d == "exec") {
                kata_sim::exec::stop_on_signals().context("installing the signal handlers")?;
            }
            let mut calls = Vec::new();
            for d in &drivers {
                let overrides = if d == "exec" {
                    anyhow::ensure!(
                        !command.is_empty(),
                        "--driver exec needs a command after --"
                    );
                    runner::Overrides {
                        exec: Some(command.clone()),
                        agent_version,
                        ..Default::default()
                    }
                } else {
                    runner::Overrides {
                        persona: persona_of(d)?,
                        agent_version,
                        ..Default::default()
                    }
                };
                let r = runner::run_file(&scenario, &overrides);
                if let Some(sig) = kata_sim::exec::interrupted() {
                    eprintln!("interrupted by {sig}");
                    std::process::exit(128 + sig as i32)
                }
                if let Some(e) = r.load_error {
                    anyhow::bail!("{e}");
                }
                calls.push(kata_sim::render::agent_calls(
                    &r.outcome.context("no outcome")?,
                ));
            }
            println!("--- {}\n+++ {}", drivers[0], drivers[1]);
            for line in kata_sim::render::diff(&calls[0], &calls[1]) {
                println!("{line}");
            }
            Ok(())
        }
        Command::Schema => {
            print!("{}", kata_sim::schema::json_schema());
            Ok(())
        }
        Command::Check { paths } => {
            let files = runner::find(&paths).context("finding scenario files")?;
            let mut bad = 0;
            for f in &files {
                match kata_sim::load::load(f) {
                    Ok(s) => println!("ok      {} ({})", f.display(), s.name),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{e}\n");
                    }
                }
            }
            println!("{} of {} valid", files.len() - bad, files.len());
            if bad > 0 {
                std::process::exit(1)
            }
            Ok(())
        }
        _ => unreachable!("handled by async_main"),
    }
}

fn persona_of(driver: &str) -> anyhow::Result<Option<Persona>> {
    Ok(match driver {
        "builtin" => None,
        "builtin:go" => Some(Persona::Go),
        "builtin:rs" => Some(Persona::Rs),
        other => {
            anyhow::bail!("unknown driver {other:?}: expected builtin, builtin:go or builtin:rs")
        }
    })
}
