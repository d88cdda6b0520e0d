//! `kata-sim-demo-host`: a small host runtime for the `exec` driver's tests and docs. It runs
//! one container the way the Go shim does (the built-in host's `go` persona: its profile row
//! and its calls, `kata_sim::host::persona`), over the wire: `RemoteHypervisor` (CreateVM,
//! StartVM, StopVM) at `$KATA_SIM_HYPERVISOR_SOCKET` and `RemoteAgent` at the socket CreateVM
//! returned. Usage: `kata-sim-demo-host [ARGS...]` (default `echo hello`); prints the
//! container's output and exits with its exit code (or 100 when a call fails).

use anyhow::Context as _;
use kata_sim::host::persona::{self, StopPart};
use kata_sim::schema::Persona;
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
    // The Go persona's own row and calls: the demo host runs the lifecycle the built-in host's
    // `go` persona runs, in a process of its own.
    let profile = persona::profile(Persona::Go);
    let calls = persona::calls::<RemoteAgent, RemoteHypervisor>(Persona::Go);
    let result = async {
        calls
            .start_sandbox(
                &agent,
                agent::CreateSandboxRequest {
                    sandbox_id: id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(anyhow::Error::msg)?;
        let cid = "c1".to_string();
        let eid = profile.exec_id.of(&cid);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        calls
            .create_container(&agent, sim_agent::requests::create_container(&cid, &args))
            .await?;
        calls.start_container(&agent, &cid).await?;
        loop {
            match agent
                .read_process_stdout(cid.clone(), eid.clone(), profile.stdio_read_size)
                .await
            {
                Ok(d) if !d.is_empty() => print!("{}", String::from_utf8_lossy(&d)),
                _ => break,
            }
        }
        let code = agent.wait_process(cid.clone(), eid.clone()).await?;
        // The persona's stop, in its order (no termination message here; the waiter above
        // reaped the process already).
        for part in profile.stop_order {
            let warning = match part {
                StopPart::Kill => calls.kill(&agent, &cid, &eid).await,
                StopPart::WaitAgain => {
                    calls.wait_again(&agent, &cid, &eid).await;
                    None
                }
                StopPart::Remove => calls.remove_container(&agent, &cid).await,
                StopPart::RemoveStaleMounts => {
                    calls.remove_stale_mounts(&agent).await;
                    None
                }
                StopPart::Reap | StopPart::CopyTerminationMessage => None,
            };
            if let Some(w) = warning {
                eprintln!("kata-sim-demo-host: {w}");
            }
        }
        anyhow::Ok(code)
    }
    .await;
    if let Some(w) = calls.stop_sandbox(&agent).await {
        eprintln!("kata-sim-demo-host: {w}");
    }
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
