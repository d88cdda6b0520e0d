//! The `rs` persona: runtime-rs (containerd-shim-kata-v2 built from `src/runtime-rs`) at
//! upstream main.

use std::path::PathBuf;
use std::time::Duration;

use sim_agent::protocols::agent;
use sim_agent::{Agent, AgentError, AgentRpc, CallOpts};
use sim_hypervisor::Hypervisor;

use super::{
    BackgroundFrom, ExecId, ExitPublished, FailureIs, PathMatch, PersonaCalls, Profile, StopPart,
    connection_gone,
};
use crate::conn::ClosedWords;
use crate::record::{Level, Warning};
use crate::schema::Persona;
use crate::words;

/// runtime-rs's row. Paths are under `src/runtime-rs/crates/` of kata-containers main
/// (mirror HEAD 7c6ba40c, VERSION 4.1.0; kata-facts section 4), unless a recording is named.
pub const RS: Profile = Profile {
    persona: Persona::Rs,
    source: "kata-containers main 7c6ba40c (4.1.0), src/runtime-rs",
    // runtimes/virt_container/src/container_manager/container.rs: CreateContainer with
    // exec_id "" (kata-facts 4.rs.4).
    exec_id: ExecId::Empty,
    // runtimes/virt_container/src/container_manager/container.rs: the guest rootfs under
    // /run/kata-containers/{cid}/rootfs.
    rootfs_parent: "/run/kata-containers",
    // fault-truth/rs-a-error: ReadStdout/ReadStderr len=8192.
    stdio_read_size: 8 * 1024,
    // runtimes/virt_container/src/sandbox.rs `start`: the OOM watcher and the health check
    // start with the sandbox.
    background_from: BackgroundFrom::SandboxStart,
    // runtimes/virt_container/src/health_check.rs: Check every 30 s.
    monitor_interval: Duration::from_secs(30),
    // health_check.rs: a failure is logged (and the shim would exit); no markDead.
    monitor_marks_dead: false,
    // sandbox.rs: retries at once (fault-truth README: thousands per second); on the
    // paused clock each retry waits the smallest timer step (super::RS_OOM_RETRY).
    oom_retry: super::super::RS_OOM_RETRY,
    // sandbox.rs: never gives up, a closed connection included (fault-truth/rs-d-drop
    // repeats "failed to get oom event" until the shim exits).
    oom_gives_up_when_closed: false,
    // sandbox.rs: "failed to get oom event error get oom event" at warn.
    oom_failure_warning: Some(words::rs_oom_event_failed),
    // agent/src/kata/agent.rs: each request with the configured 30 s request timeout
    // (fault-truth/rs-c-hang: timeout 30000000000 ns on each request).
    request_timeout: Some(Duration::from_secs(30)),
    // container_manager/container.rs stop_process: GetDiagnosticData before the kill, then
    // SignalProcess(9, ""), RemoveContainer(10) (kata-facts 4.rs.5).
    stop_order: &[
        StopPart::CopyTerminationMessage,
        StopPart::Kill,
        StopPart::Reap,
        StopPart::Remove,
    ],
    // container_manager/container.rs: `m.destination() == Path::new(&termination_path)`.
    term_path_match: PathMatch::Path,
    // container_manager/container.rs: looks for the host mount first, does not ask the
    // guest without one.
    term_mount_first: true,
    // container_manager/process.rs `run_io_wait` sets Stopped after `stop_process`.
    exit_published: ExitPublished::AfterStop,
    // ttrpc-rust: `socket err: early eof` in flight, `ttrpc err: local stream closed` later
    // (fault-truth/rs-d-drop).
    closed_words: ClosedWords::rs,
    // process.rs: a failed wait counts as UNKNOWN_EXIT_STATUS (255), logged nowhere we see.
    wait_failure_logged: None,
    // sandbox.rs stop: a failed stop_vm is logged and the stop goes on.
    stop_vm_failure: FailureIs::Warning,
    // ttrpc-rust's error Display (fault-truth/rs-a-error, rs-c-hang, rs-d-drop).
    render_error: words::rs_error,
    // std::io::Error's Display (container_manager/container.rs copy_termination_log).
    render_io_error: words::rs_io_error,
    // sandbox.rs OOM watcher: "send oom event for container {cid}" at warn.
    oom_event: words::rs_oom_event,
    no_container: words::rs_no_container,
    // container_io: an empty read is the end of the stream (kata-facts 4, real-lifecycle-rs).
    empty_read_ends_output: true,
};

fn opts() -> CallOpts {
    match RS.request_timeout {
        Some(t) => CallOpts::with_timeout(t),
        None => CallOpts::default(),
    }
}

/// runtime-rs's calls: through [`AgentRpc`] with its own deadline on each request.
#[derive(Debug, Clone, Copy)]
pub struct RsCalls;

#[async_trait::async_trait]
impl<A, H> PersonaCalls<A, H> for RsCalls
where
    A: Agent + AgentRpc + Sync,
    H: Hypervisor,
{
    async fn start_sandbox(
        &self,
        agent: &A,
        req: agent::CreateSandboxRequest,
    ) -> Result<(), String> {
        AgentRpc::create_sandbox(agent, req, opts())
            .await
            .map_err(|e| format!("CreateSandbox: {e}"))?;
        AgentRpc::get_guest_details(
            agent,
            agent::GuestDetailsRequest {
                mem_block_size: true,
                mem_hotplug_probe: true,
                ..Default::default()
            },
            opts(),
        )
        .await
        .map_err(|e| format!("GetGuestDetails: {e}"))?;
        Ok(())
    }

    async fn copy_file(
        &self,
        agent: &A,
        _local: PathBuf,
        guest: String,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), AgentError> {
        AgentRpc::copy_file(
            agent,
            agent::CopyFileRequest {
                path: guest,
                file_size: data.len() as i64,
                file_mode: mode,
                data,
                ..Default::default()
            },
            opts(),
        )
        .await
        .map(|_| ())
    }

    async fn create_container(
        &self,
        agent: &A,
        req: agent::CreateContainerRequest,
    ) -> Result<(), AgentError> {
        AgentRpc::create_container(agent, req, opts())
            .await
            .map(|_| ())
    }

    async fn start_container(&self, agent: &A, cid: &str) -> Result<(), AgentError> {
        AgentRpc::start_container(
            agent,
            agent::StartContainerRequest {
                container_id: cid.to_string(),
                ..Default::default()
            },
            opts(),
        )
        .await
        .map(|_| ())
    }

    async fn health_check(&self, agent: &A, _vm: &H, sandbox_id: &str) -> Option<Warning> {
        AgentRpc::check(agent, Default::default(), opts())
            .await
            .err()
            .map(|_| words::rs_health_check_failed(sandbox_id))
    }

    async fn kill(&self, agent: &A, cid: &str, _exec_id: &str) -> Option<Warning> {
        let req = agent::SignalProcessRequest {
            container_id: cid.into(),
            exec_id: String::new(),
            signal: 9,
            ..Default::default()
        };
        // The stop goes on whatever the kill answered; a failure is a warning. Over the
        // host's closed connection the shim's agent layer refuses the call before ttrpc and
        // says so in its own words (fault-truth/rs-d-drop: `failed to send kill signal to
        // process: agent connection closed`, SignalProcess never sent).
        match AgentRpc::signal_process(agent, req, opts()).await {
            Err(AgentError::Closed(_)) => Some(Warning::new(
                Level::Warning,
                words::RS_KILL_FAILED,
                Some(words::RS_AGENT_CONNECTION_CLOSED.into()),
            )),
            Err(e) if !connection_gone(&e) => Some(words::said(
                Persona::Rs,
                Level::Warning,
                words::RS_KILL_FAILED,
                &e,
            )),
            _ => None,
        }
    }

    async fn termination_message(&self, agent: &A, cid: &str) -> Result<String, AgentError> {
        AgentRpc::get_diagnostic_data(
            agent,
            agent::GetDiagnosticDataRequest {
                log_type: "termination_log".into(),
                container_id: cid.into(),
                ..Default::default()
            },
            opts(),
        )
        .await
        .map(|r| r.data)
    }

    async fn remove_container(&self, agent: &A, cid: &str) -> Option<Warning> {
        let req = agent::RemoveContainerRequest {
            container_id: cid.into(),
            timeout: 10,
            ..Default::default()
        };
        // cleanup_container with force (container_inner.rs): a failure is a warning and the
        // cleanup goes on (fault-truth/rs-d-drop).
        AgentRpc::remove_container(agent, req, opts())
            .await
            .err()
            .map(|e| {
                words::said(
                    Persona::Rs,
                    Level::Warning,
                    words::RS_REMOVE_CONTAINER_FAILED,
                    &e,
                )
            })
    }

    async fn stop_sandbox(&self, _agent: &A) -> Option<Warning> {
        // sandbox.rs stop: no DestroySandbox, straight to stop_vm.
        None
    }
}
