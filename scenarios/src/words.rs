//! The runtimes' own words: the log messages the built-in host's personas emit, each as the
//! upstream source writes it, and how each runtime renders an agent error, so a scenario's
//! warning can be grepped for in a real shim's log. Which runtime's words a persona speaks is
//! a field of its profile row ([`crate::host::persona::Profile`]): this module has no branch
//! on the persona.
//!
//! | message | level | upstream (Go shim / runtime-rs) |
//! |---|---|---|
//! | [`TERM_MESSAGE_GET_FAILED`] | warning | `virtcontainers/container.go` `stop` / `container_manager/container.rs` `copy_termination_log` |
//! | [`TERM_MESSAGE_NO_HOST_MOUNT`] | warning | the same two |
//! | [`TERM_MESSAGE_WRITE_FAILED`] | warning | the same two |
//! | [`AGENT_DID_NOT_STOP_SANDBOX`] | warning | `virtcontainers/sandbox.go` `Stop` |
//! | [`SANDBOX_STOPPED_UNEXPECTEDLY`] | warning | `containerd-shim-v2/wait.go` `watchSandbox` |
//! | [`RS_KILL_FAILED`] | warning | `container_manager/container_inner.rs` `stop_process` |
//! | [`RS_HEALTH_CHECK_FAILED`] | error | `virt_container/src/health_check.rs` |
//! | [`RS_OOM_EVENT_SENT`] | warning | `virt_container/src/sandbox.rs` (the OOM watcher) |
//!
//! Sources: the Go shim at kata-containers main (the `go` persona, with GetDiagnosticData;
//! 3.19.1 has no termination-message copy) and runtime-rs at main, read 2026-12; the texts of
//! the GetDiagnosticData warnings and of the errors are those of the recordings in
//! `fault-truth/` (`rs-a-error`, `rs-c-hang`, `rs-d-drop`, `go-h-drop-echo`).

use sim_agent::AgentError;
use sim_agent::error::code_name;

use crate::host::persona::profile;
use crate::record::{Level, Warning};
use crate::schema::Persona;

/// Both runtimes: GetDiagnosticData failed (runtime-rs appends `: {error}`; Go logs it as the
/// `error` field).
pub const TERM_MESSAGE_GET_FAILED: &str = "Failed to get termination message from guest";

/// Both runtimes: no host mount's destination is the termination-message path (runtime-rs
/// checks before it asks the guest, Go after a non-empty answer).
pub const TERM_MESSAGE_NO_HOST_MOUNT: &str = "No host mount found for termination message path";

/// Both runtimes: the host file could not be written.
pub const TERM_MESSAGE_WRITE_FAILED: &str = "Failed to write termination message";

/// Go: DestroySandbox failed during the sandbox stop.
pub const AGENT_DID_NOT_STOP_SANDBOX: &str = "Agent did not stop sandbox";

/// Go: the sandbox monitor saw the VM or the agent fail.
pub const SANDBOX_STOPPED_UNEXPECTEDLY: &str = "sandbox stopped unexpectedly";

/// runtime-rs: the SIGKILL of a container's stop failed (it goes on).
pub const RS_KILL_FAILED: &str = "failed to send kill signal to process";

/// runtime-rs: the error of a kill over a connection the shim has lost
/// (`fault-truth/rs-d-drop`).
pub const RS_AGENT_CONNECTION_CLOSED: &str = "agent connection closed";

/// runtime-rs: a health check (Check every 30 s) failed; `{}` is the sandbox id in upstream's
/// text (`failed to do {} agent health check`), filled by [`rs_health_check_failed`].
pub const RS_HEALTH_CHECK_FAILED: &str = "agent health check";

/// runtime-rs: an OOM event was forwarded for a container.
pub const RS_OOM_EVENT_SENT: &str = "send oom event for container";

/// A line the persona logs: `message` with `error` rendered as that runtime renders it.
pub fn said(persona: Persona, level: Level, message: &str, error: &AgentError) -> Warning {
    Warning::new(level, message, Some(render(persona, error)))
}

/// runtime-rs's health-check failure for sandbox `id` (logged at error). Upstream wraps the
/// Check error in the context `check health` and prints it with `{}`, which shows only that
/// context: the line never names the cause.
pub fn rs_health_check_failed(id: &str) -> Warning {
    Warning::new(
        Level::Error,
        format!("failed to do {id} {RS_HEALTH_CHECK_FAILED}"),
        Some("check health".into()),
    )
}

/// runtime-rs: a GetOOMEvent that failed, logged at warn and retried at once
/// (`fault-truth/rs-d-drop`: `failed to get oom event error get oom event | Caused by: socket
/// err: early eof`).
pub fn rs_oom_event_failed(e: &AgentError) -> Warning {
    Warning::new(Level::Warning, RS_OOM_EVENT_FAILED, Some(rs_error(e)))
}

/// runtime-rs: a GetOOMEvent failed (the watcher retries). Upstream prints the error's chain
/// after this (`| Caused by: | socket err: early eof`); the record puts the cause after `: `.
pub const RS_OOM_EVENT_FAILED: &str = "failed to get oom event error get oom event";

/// runtime-rs: RemoveContainer failed in the forced cleanup (logged at warn, the cleanup goes
/// on; `fault-truth/rs-d-drop`).
pub const RS_REMOVE_CONTAINER_FAILED: &str = "stop container: agent remove container failed";

/// The Go shim: WaitProcess failed (logged at error, the task ends with 255;
/// `fault-truth/go-h-drop-echo`).
pub const GO_WAIT_FAILED: &str = "Wait for process failed";

/// An OOM event the persona forwarded for container `cid`: runtime-rs warns
/// (`send oom event for container c1`); the Go shim publishes a TaskOOM and logs nothing, so
/// its line (at info) is kata-sim's.
pub fn oom_event(persona: Persona, cid: &str) -> Warning {
    (profile(persona).oom_event)(cid)
}

/// runtime-rs's line for an OOM event it forwarded ([`oom_event`]).
pub fn rs_oom_event(cid: &str) -> Warning {
    Warning::new(Level::Warning, format!("{RS_OOM_EVENT_SENT} {cid}"), None)
}

/// The Go shim's OOM event ([`oom_event`]): kata-sim's line at info.
pub fn go_oom_event(cid: &str) -> Warning {
    Warning::new(
        Level::Info,
        format!("OOM event for container {cid} (TaskOOM published)"),
        None,
    )
}

/// A host I/O error as the runtime's log prints it: runtime-rs's `io::Error` Display (`Is a
/// directory (os error 21)`); Go's `*PathError` (`open HOST_FILE: is a directory`, the host
/// path left out so records do not depend on the run's temp dir).
pub fn io_error(persona: Persona, e: &std::io::Error) -> String {
    (profile(persona).render_io_error)(e)
}

/// runtime-rs's rendering of a host I/O error ([`io_error`]).
pub fn rs_io_error(e: &std::io::Error) -> String {
    e.to_string()
}

/// The Go shim's rendering of a host I/O error ([`io_error`]).
pub fn go_io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut c = text.chars();
    let lower = match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    };
    format!("open HOST_FILE: {lower}")
}

/// An agent error as the runtime's log prints it (the persona's
/// [`Profile::render_error`](crate::host::persona::Profile::render_error)).
pub fn render(persona: Persona, e: &AgentError) -> String {
    (profile(persona).render_error)(e)
}

/// The Go shim: ttrpc's status error (`rpc error: code = Unavailable desc = guest busy`),
/// its closed client (`ttrpc: closed`), a context deadline, virtcontainers' `Dead agent`.
pub fn go_error(e: &AgentError) -> String {
    match e {
        AgentError::Status { code, message } => {
            format!(
                "rpc error: code = {} desc = {message}",
                go_code(code_name(*code))
            )
        }
        AgentError::ConnectionClosed => "ttrpc: closed".into(),
        AgentError::DeadAgent => "Dead agent".into(),
        AgentError::Timeout { .. } => "context deadline exceeded".into(),
        AgentError::Closed(w) => w.clone(),
        AgentError::Transport(t) => t.clone(),
        AgentError::Host(h) => h.clone(),
    }
}

/// gRPC-Go's name of a code (`Unavailable`, `DeadlineExceeded`).
fn go_code(name: &str) -> String {
    if name == "OK" {
        return name.into();
    }
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_string() + &c.as_str().to_lowercase(),
                None => String::new(),
            }
        })
        .collect()
}

/// runtime-rs: ttrpc-rust's error Display (`rpc status: Status { ... }`, `ttrpc err: Receive
/// packet timeout Elapsed(())`, `socket err: early eof` for the call a lost connection was
/// carrying, `ttrpc err: local stream closed` afterwards).
pub fn rs_error(e: &AgentError) -> String {
    match e {
        AgentError::Status { code, message } => format!(
            "rpc status: Status {{ code: {}, message: {message:?}, details: [], special_fields: \
             SpecialFields {{ unknown_fields: UnknownFields {{ fields: None }}, cached_size: \
             CachedSize {{ size: 0 }} }} }}",
            code_name(*code)
        ),
        AgentError::Timeout { .. } => "ttrpc err: Receive packet timeout Elapsed(())".into(),
        AgentError::ConnectionClosed => "socket err: early eof".into(),
        AgentError::DeadAgent => "ttrpc err: local stream closed".into(),
        AgentError::Closed(w) => w.clone(),
        AgentError::Transport(t) => t.clone(),
        AgentError::Host(h) => h.clone(),
    }
}

/// The Go shim's answer to a task call for a container it does not have
/// (containerd-shim-v2 `getContainer`: NotFound `container does not exist ID`).
pub fn go_no_container(cid: &str) -> String {
    format!("container does not exist {cid}: not found")
}

/// runtime-rs's answer to a task call for a container it does not have
/// (`runtimes/common/src/error.rs` `Error::ContainerNotFound`).
pub fn rs_no_container(cid: &str) -> String {
    format!("failed to find container {cid}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttrpc::Code;

    /// The lines the recordings hold, byte for byte after the level.
    #[test]
    fn errors_read_as_the_recorded_shims_printed_them() {
        let busy = AgentError::status(Code::UNAVAILABLE, "guest busy");
        // fault-truth/rs-a-error.md
        assert_eq!(
            said(Persona::Rs, Level::Warning, TERM_MESSAGE_GET_FAILED, &busy).to_string(),
            "warning: Failed to get termination message from guest: rpc status: Status { code: \
             UNAVAILABLE, message: \"guest busy\", details: [], special_fields: SpecialFields { \
             unknown_fields: UnknownFields { fields: None }, cached_size: CachedSize { size: 0 } \
             } }"
        );
        // fault-truth/rs-c-hang.md
        let timeout = AgentError::Timeout {
            method: "GetDiagnosticData".into(),
        };
        assert_eq!(
            said(
                Persona::Rs,
                Level::Warning,
                TERM_MESSAGE_GET_FAILED,
                &timeout
            )
            .to_string(),
            "warning: Failed to get termination message from guest: ttrpc err: Receive packet \
             timeout Elapsed(())"
        );
        // fault-truth/rs-d-drop.md
        assert_eq!(
            render(Persona::Rs, &AgentError::ConnectionClosed),
            "socket err: early eof"
        );
        // fault-truth/go-h-drop-echo.md: error="ttrpc: closed"
        assert_eq!(
            render(Persona::Go, &AgentError::ConnectionClosed),
            "ttrpc: closed"
        );
        assert_eq!(
            render(Persona::Go, &busy),
            "rpc error: code = Unavailable desc = guest busy"
        );
        assert_eq!(
            render(
                Persona::Go,
                &AgentError::status(Code::DEADLINE_EXCEEDED, "x")
            ),
            "rpc error: code = DeadlineExceeded desc = x"
        );
    }
}
