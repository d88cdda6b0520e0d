//! The `go` persona: the Go shim (containerd-shim-kata-v2, virtcontainers) at upstream main.

use std::path::PathBuf;
use std::time::Duration;

use sim_agent::protocols::agent;
use sim_agent::{Agent, AgentError, AgentRpc};
use sim_hypervisor::Hypervisor;

use super::{
    BackgroundFrom, ExecId, ExitPublished, FailureIs, PathMatch, PersonaCalls, Profile, StopPart,
};
use crate::conn::ClosedWords;
use crate::record::{Level, Warning};
use crate::schema::Persona;
use crate::words;

/// The Go shim's row. Paths are under `src/runtime/` of kata-containers main (mirror HEAD
/// 7c6ba40c, VERSION 4.1.0; kata-facts section 4), unless a tag or a recording is named.
pub const GO: Profile = Profile {
    persona: Persona::Go,
    source: "kata-containers main 7c6ba40c (4.1.0), src/runtime",
    // virtcontainers/kata_agent.go createContainer: exec_id = container id (kata-facts 4.4).
    exec_id: ExecId::ContainerId,
    // virtcontainers/kata_agent.go: the guest rootfs under kataGuestSharedDir().
    rootfs_parent: "/run/kata-containers/shared/containers",
    // kata-facts 4.6: Read* len = 32 KiB (fault-truth/go-f-echo: ReadStdout len=32768).
    stdio_read_size: 32 * 1024,
    // containerd-shim-v2/start.go: watchSandbox and watchOOMEvents with the sandbox
    // container's task Start (fault-truth/go-i-sleep5: GetOOMEvent right after
    // StartContainer).
    background_from: BackgroundFrom::FirstTaskStart,
    // virtcontainers/monitor.go defaultCheckInterval 5 s (fault-truth/go-i-sleep5: Check 5 s
    // after the start).
    monitor_interval: Duration::from_secs(5),
    // virtcontainers/monitor.go: a failed check calls markDead (kata-facts 4.10).
    monitor_marks_dead: true,
    // containerd-shim-v2/wait.go watchOOMEvents: sleeps 1 s after any other error (3.19.1;
    // fault-truth/go-i-sleep5: every 1.000 s).
    oom_retry: Duration::from_secs(1),
    // wait.go watchOOMEvents: returns on "ttrpc: closed" or "Dead agent" (kata-facts 4.9).
    oom_gives_up_when_closed: true,
    // wait.go watchOOMEvents logs other errors at info only: not a warning.
    oom_failure_warning: None,
    // pkg/agent/protocols/client: the per-method deadline table of sim_agent::Agent.
    request_timeout: None,
    // virtcontainers/container.go stop(): SignalProcess(9, all), WaitProcess (error
    // ignored), GetDiagnosticData, RemoveContainer(0), RemoveStaleVirtiofsShareMounts
    // (kata-facts 4.7); the shim's waiter reaps first.
    stop_order: &[
        StopPart::Kill,
        StopPart::Reap,
        StopPart::WaitAgain,
        StopPart::CopyTerminationMessage,
        StopPart::Remove,
        StopPart::RemoveStaleMounts,
    ],
    // virtcontainers/container.go: `m.Destination == terminationMessagePath`.
    term_path_match: PathMatch::String,
    // virtcontainers/container.go: asks the guest, then looks for the mount when the
    // message is not empty.
    term_mount_first: false,
    // containerd-shim-v2/wait.go at main publishes the exit "*before* the sandbox
    // teardown" (3.19.1 did so after it).
    exit_published: ExitPublished::AfterWait,
    // containerd/ttrpc ErrClosed for in-flight and later calls (fault-truth/go-h-drop-echo).
    closed_words: ClosedWords::go,
    // wait.go: "Wait for process failed" at error, then exitCode255
    // (fault-truth/go-h-drop-echo: ctr exit 255).
    wait_failure_logged: Some((Level::Error, words::GO_WAIT_FAILED)),
    // virtcontainers/sandbox.go Stop: a failed StopVM fails the stop.
    stop_vm_failure: FailureIs::Error,
    // containerd/ttrpc and gRPC-Go status errors, virtcontainers' "Dead agent"
    // (fault-truth/go-h-drop-echo: "ttrpc: closed").
    render_error: words::go_error,
    // os.PathError from the termination-message write (virtcontainers/container.go).
    render_io_error: words::go_io_error,
    // containerd-shim-v2/wait.go watchOOMEvents publishes a TaskOOM and logs nothing of its
    // own: kata-sim's line at info.
    oom_event: words::go_oom_event,
    no_container: words::go_no_container,
    // containerd-shim-v2 stream copy since 41e8acbc5e: an empty ReadStdout/ReadStderr reply
    // is the end (kata-facts 8, fixtures real-lifecycle: the backport on 3.19.1).
    empty_read_ends_output: true,
};

/// The Go shim's calls: through [`Agent`], virtcontainers' interface, with its deadlines.
#[derive(Debug, Clone, Copy)]
pub struct GoCalls;

#[async_trait::async_trait]
impl<A, H> PersonaCalls<A, H> for GoCalls
where
    A: Agent + AgentRpc + Sync,
    H: Hypervisor,
{
    async fn start_sandbox(
        &self,
        agent: &A,
        req: agent::CreateSandboxRequest,
    ) -> Result<(), String> {
        Agent::start_sandbox(agent, req)
            .await
            .map_err(|e| format!("CreateSandbox: {e}"))?;
        Agent::get_guest_details(
            agent,
            agent::GuestDetailsRequest {
                mem_block_size: true,
                mem_hotplug_probe: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("GetGuestDetails: {e}"))?;
        Ok(())
    }

    async fn copy_file(
        &self,
        agent: &A,
        local: PathBuf,
        guest: String,
        _data: Vec<u8>,
        _mode: u32,
    ) -> Result<(), AgentError> {
        Agent::copy_file(agent, local, guest).await
    }

    async fn create_container(
        &self,
        agent: &A,
        req: agent::CreateContainerRequest,
    ) -> Result<(), AgentError> {
        Agent::create_container(agent, req).await
    }

    async fn start_container(&self, agent: &A, cid: &str) -> Result<(), AgentError> {
        Agent::start_container(agent, cid.to_string()).await
    }

    async fn health_check(&self, agent: &A, vm: &H, _sandbox_id: &str) -> Option<Warning> {
        // virtcontainers/monitor.go wraps the cause; the shim's watchSandbox logs it.
        match vm.check().await {
            Err(e) => Some(format!("failed to ping hypervisor process: {e}")),
            Ok(()) => Agent::check(agent)
                .await
                .err()
                .map(|e| format!("failed to ping agent: {}", words::render(Persona::Go, &e))),
        }
        .map(|why| {
            Warning::new(
                Level::Warning,
                words::SANDBOX_STOPPED_UNEXPECTEDLY,
                Some(why),
            )
        })
    }

    async fn kill(&self, agent: &A, cid: &str, exec_id: &str) -> Option<Warning> {
        // container.go's stop ignores the kill's error and logs nothing.
        let _ = Agent::signal_process(agent, cid.into(), exec_id.into(), 9, true).await;
        None
    }

    async fn wait_again(&self, agent: &A, cid: &str, exec_id: &str) {
        // Usually fails: the shim's waiter reaped the process already. Ignored, as upstream
        // does.
        let _ = Agent::wait_process(agent, cid.into(), exec_id.into()).await;
    }

    async fn termination_message(&self, agent: &A, cid: &str) -> Result<String, AgentError> {
        Agent::get_diagnostic_data(agent, "termination_log".into(), cid.into()).await
    }

    async fn remove_container(&self, agent: &A, cid: &str) -> Option<Warning> {
        // The shim's waiter stops the container with force: a failed RemoveContainer is
        // ignored without a word and the stop goes on (container.go `stop`: `err != nil &&
        // !force`; fault-truth/go-f-echo: no retry, nothing logged).
        let _ = Agent::stop_container(agent, cid.into()).await;
        None
    }

    async fn remove_stale_mounts(&self, agent: &A) {
        let _ = Agent::remove_stale_virtiofs_share_mounts(agent).await;
    }

    async fn stop_sandbox(&self, agent: &A) -> Option<Warning> {
        Agent::stop_sandbox(agent).await.err().map(|e| {
            words::said(
                Persona::Go,
                Level::Warning,
                words::AGENT_DID_NOT_STOP_SANDBOX,
                &e,
            )
        })
    }
}

/// The Go shim at tag 3.19.1 (kata-facts 8): the row of [`GO`] but where 3.19.1 differs.
pub const GO_3_19_1: Profile = Profile {
    persona: Persona::Go3191,
    source: "kata-containers 3.19.1, src/runtime",
    // virtcontainers/container.go stop() at 3.19.1 has no termination-message copy: no
    // GetDiagnosticData (the RPC came after it).
    stop_order: &[
        StopPart::Kill,
        StopPart::Reap,
        StopPart::WaitAgain,
        StopPart::Remove,
        StopPart::RemoveStaleMounts,
    ],
    // containerd-shim-v2/wait.go at 3.19.1 publishes the exit after the container's stop.
    exit_published: ExitPublished::AfterStop,
    // Before 41e8acbc5e the stream copy ends only on a read error (an agent before
    // 1080f6d87e answers "eof"); a 4.x agent's empty OK is read again, forever (kata-facts 8).
    empty_read_ends_output: false,
    ..GO
};
