//! `kata-sim`: put a Kata runtime on a fake VMM and guest agent.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
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
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            hypervisor_socket,
            state_dir,
            agent_version,
            boot_time_ms,
        } => {
            let opts = ServeOptions {
                hypervisor_socket,
                state_dir,
                agent_version,
                boot_time: Duration::from_millis(boot_time_ms),
            };
            let server = start(&opts)
                .await
                .with_context(|| format!("serving {}", opts.hypervisor_socket.display()))?;
            tracing::info!(agent_version = %agent_version, "kata-sim serving; Ctrl-C to stop");
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            server.shutdown().await;
            tracing::info!("stopped; sockets removed");
            Ok(())
        }
    }
}
