//! `sim-agent`: serve a fake Kata guest agent on one or more addresses.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sim_agent::fault::FaultEngine;
use sim_agent::server::transport::AgentAddr;
use sim_agent::trace::SERVER_TRACE_LIMIT;
use sim_agent::{AgentServer, AgentVersion, SimAgent, SimConfig};

/// A stateful fake of the Kata Containers guest agent.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the agent protocol until SIGINT (Ctrl-C), SIGTERM or DestroySandbox.
    Serve {
        /// Address to listen on: unix://PATH (unix://@NAME: abstract), remote://PATH,
        /// mock://PATH, hvsock://PATH[:PORT] or vsock://CID:PORT. Repeatable. A socket's
        /// directory must exist.
        #[arg(long = "listen", value_name = "URL", required = true)]
        listen: Vec<AgentAddr>,
        /// Behave as this agent release (e.g. 3.19.1); default: the current agent.
        #[arg(long = "agent-version", default_value_t = AgentVersion::CURRENT)]
        agent_version: AgentVersion,
        /// Host directory to use as the guest's `/` (default: a temporary directory); made if
        /// missing, but its parent must exist.
        #[arg(long, value_name = "DIR")]
        guest_root: Option<std::path::PathBuf>,
        /// Build with agent-policy: SetPolicy stores the policy instead of answering NOT_FOUND.
        #[arg(long)]
        policy: bool,
        /// A fault rule (`WaitProcess{container_id=c1}=hang`). Repeatable.
        #[arg(long = "fault", value_name = "RULE")]
        faults: Vec<String>,
        /// The seed of every random choice (fault probabilities, /dev/urandom).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Serve a fault control socket here (`kata-sim fault add --control PATH RULE`); its
        /// directory must exist.
        #[arg(long, value_name = "PATH")]
        control: Option<std::path::PathBuf>,
    },
}

/// Runs the command; an error is printed as one message (with the causes it does not already
/// say), without a backtrace, and the exit status is 1.
fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `e` and each cause that its message does not already contain, joined by `: `.
fn message(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

fn real_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // The agent outlives the runtime: once the runtime is gone (and every task with its clone
    // of the agent), dropping the last clone deletes a temporary guest root right here,
    // rather than as a blocking task that the runtime's shutdown could cancel.
    let mut agent = None;
    let r = rt.block_on(run(cli.command, &mut agent));
    drop(rt);
    drop(agent);
    if r.is_ok() {
        tracing::info!("stopped");
    }
    r
}

async fn run(command: Command, keep: &mut Option<SimAgent>) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            listen,
            agent_version,
            guest_root,
            policy,
            faults,
            seed,
            control,
        } => {
            use tokio::signal::unix::{SignalKind, signal};
            // Before anything is created: a signal from now on is a clean shutdown.
            let mut term =
                signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
            let mut int =
                signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
            let mut config = SimConfig::for_version(agent_version);
            config.guest_root = guest_root;
            config.policy_enabled = policy;
            config.seed = seed;
            // The agent serves until it is stopped: its trace keeps the most recent calls only.
            config.trace = Some(sim_agent::Trace::bounded(SERVER_TRACE_LIMIT));
            let agent = SimAgent::with_config(config).context("creating the guest root")?;
            *keep = Some(agent.clone());
            let engine = FaultEngine::bounded(seed, SERVER_TRACE_LIMIT);
            for rule in &faults {
                engine
                    .add(rule)
                    .map_err(|e| anyhow::anyhow!("--fault {rule:?}: {e}"))?;
            }
            agent.set_fault_hook(std::sync::Arc::new(engine.clone()));
            tracing::info!(seed, rules = faults.len(), "faults installed");
            // Removed when dropped, on every way out of here.
            let _control = match &control {
                Some(path) => Some(sim_agent::fault::control::serve(path, engine.clone())?),
                None => None,
            };
            tracing::info!(root = %agent.guest_root().display(), version = %agent_version, "guest ready");
            // A listener that fails to bind leaves none of the others bound.
            let urls: Vec<String> = listen.iter().map(ToString::to_string).collect();
            let server = AgentServer::bind(agent.clone(), &urls).await?;
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
                _ = agent.terminated() => {
                    tracing::info!("DestroySandbox: the agent ends its service");
                    // Every connection answers its calls in flight, then closes by itself.
                    server.drain(std::time::Duration::from_secs(5)).await;
                    tracing::debug!("connections drained");
                }
            }
            server.shutdown().await;
            Ok(())
        }
    }
}
