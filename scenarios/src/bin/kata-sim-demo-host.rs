//! `kata-sim-demo-host`: a small host runtime for the `exec` driver's tests and docs. It runs
//! one container the way the Go shim does, over the wire: `RemoteHypervisor` (CreateVM,
//! StartVM, StopVM) at `$KATA_SIM_HYPERVISOR_SOCKET` and `RemoteAgent` at the socket CreateVM
//! returned. Usage: `kata-sim-demo-host [ARGS...]` (default `echo hello`); prints the
//! container's output and exits with its exit code (or 100 when a call fails).

use anyhow::Context as _;
use sim_agent::protocols::agent;
use sim_agent::{Agent, RemoteAgent};
use sim_hypervisor::{Hypervisor, HypervisorConfig, Network, RemoteHypervisor};

async fn run() -> anyhow::Result<i32> {
    let socket = std::env::var("KATA_SIM_HYPERVISOR_SOCKET")
        .context("KATA_SIM_HYPERVISOR_SOCKET is not set")?;
    let id = std::env::var("KATA_SIM_SCENARIO").unwrap_or_else(|_| "demo".into());
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        args = vec!["echo".into(), "hello".into()];
    }
    let hv = RemoteHypervisor::connect(std::path::Path::new(&socket)).await?;
    hv.create_vm(id.clone(), Network::default(), HypervisorConfig::default())
        .await?;
    hv.start_vm(600).await?;
    let agent = RemoteAgent::connect(&hv.get_agent_socket().await?).await?;
    let result = async {
        agent
            .start_sandbox(agent::CreateSandboxRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await?;
        agent
            .get_guest_details(agent::GuestDetailsRequest {
                mem_block_size: true,
                mem_hotplug_probe: true,
                ..Default::default()
            })
            .await?;
        let cid = "c1".to_string();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agent
            .create_container(sim_agent::requests::create_container(&cid, &args))
            .await?;
        agent.start_container(cid.clone()).await?;
        loop {
            match agent
                .read_process_stdout(cid.clone(), cid.clone(), 32 * 1024)
                .await
            {
                Ok(d) if !d.is_empty() => print!("{}", String::from_utf8_lossy(&d)),
                _ => break,
            }
        }
        let code = agent.wait_process(cid.clone(), cid.clone()).await?;
        agent
            .signal_process(cid.clone(), String::new(), 9, true)
            .await?;
        agent.stop_container(cid.clone()).await?;
        anyhow::Ok(code)
    }
    .await;
    let _ = agent.stop_sandbox().await;
    hv.stop_vm(false).await?;
    result
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    match run().await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("kata-sim-demo-host: {e:#}");
            std::process::exit(100)
        }
    }
}
