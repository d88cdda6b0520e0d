//! containerd's task service (`containerd.task.v2.Task`) as a client: the calls containerd
//! makes of a shim.
//!
//! The messages are `containerd-shim-protos`' own. Its generated client names the service
//! `containerd.task.v3.Task` (0.12 compiles containerd 2's task API), which containerd 1.6's
//! shims, the Kata Go shim and runtime-rs do not serve (they answer UNIMPLEMENTED); the v2 and
//! v3 messages are the same on the wire, so this client sends them under the v2 name.

use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::Message;
use ttrpc::proto::{Code, RequestInit};

/// The task service's name on the wire (containerd `runtime/v2/task/shim.proto`).
pub const SERVICE: &str = "containerd.task.v2.Task";

/// A failed task call.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The shim answered with a status.
    #[error("{code:?}: {message}")]
    Status {
        /// The status code.
        code: Code,
        /// Its message.
        message: String,
    },
    /// The call did not get an answer (the connection, the encoding, the deadline).
    #[error("{0}")]
    Transport(String),
}

impl TaskError {
    /// The status code, when the shim answered with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            TaskError::Status { code, .. } => Some(*code),
            TaskError::Transport(_) => None,
        }
    }
}

impl From<ttrpc::Error> for TaskError {
    fn from(e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(s) => TaskError::Status {
                code: s.code(),
                // runtime-rs appends anyhow's backtrace to its messages: the words end before.
                message: s
                    .message
                    .split("\n\nStack backtrace:")
                    .next()
                    .and_then(|m| m.split("\\n\\nStack backtrace:").next())
                    .unwrap_or_default()
                    .to_string(),
            },
            other => TaskError::Transport(other.to_string()),
        }
    }
}

/// A connection to a shim's task service.
#[derive(Clone)]
pub struct TaskClient {
    client: ttrpc::r#async::Client,
}

impl std::fmt::Debug for TaskClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskClient")
    }
}

macro_rules! calls {
    ($($(#[$doc:meta])* $name:ident($method:literal, $req:ty) -> $resp:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self, req: $req, timeout: Duration) -> Result<$resp, TaskError> {
                self.call($method, &req, timeout).await
            }
        )*
    };
}

impl TaskClient {
    /// Connects to the address a shim printed (`unix:///run/containerd/s/...`).
    pub async fn connect(address: &str) -> Result<Self, TaskError> {
        let client = ttrpc::r#async::Client::connect(address)
            .await
            .map_err(|e| TaskError::Transport(format!("connect {address}: {e}")))?;
        Ok(TaskClient { client })
    }

    async fn call<Q: Message, R: Message>(
        &self,
        method: &str,
        req: &Q,
        timeout: Duration,
    ) -> Result<R, TaskError> {
        let nanos = i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX);
        let mut request =
            ttrpc::Request::init_request(SERVICE.into(), method.into(), nanos, vec![]);
        request.set_payload(
            req.write_to_bytes()
                .map_err(|e| TaskError::Transport(format!("encoding {method}: {e}")))?,
        );
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| {
                TaskError::Transport(format!("no answer within {} s", timeout.as_secs_f64()))
            })??;
        R::parse_from_bytes(&response.payload)
            .map_err(|e| TaskError::Transport(format!("decoding the {method} answer: {e}")))
    }

    calls! {
        /// `Connect`: the shim's and the task's pids.
        connect_task("Connect", api::ConnectRequest) -> api::ConnectResponse;
        /// `Create`: a task from a bundle.
        create("Create", api::CreateTaskRequest) -> api::CreateTaskResponse;
        /// `Start`: a created task or exec.
        start("Start", api::StartRequest) -> api::StartResponse;
        /// `State`.
        state("State", api::StateRequest) -> api::StateResponse;
        /// `Kill`: a signal.
        kill("Kill", api::KillRequest) -> api::Empty;
        /// `Wait`: until the process exits.
        wait("Wait", api::WaitRequest) -> api::WaitResponse;
        /// `Exec`: adds an exec process (started by `Start`).
        exec("Exec", api::ExecProcessRequest) -> api::Empty;
        /// `CloseIO`: closes a process's stdin.
        close_io("CloseIO", api::CloseIORequest) -> api::Empty;
        /// `Pause`.
        pause("Pause", api::PauseRequest) -> api::Empty;
        /// `Resume`.
        resume("Resume", api::ResumeRequest) -> api::Empty;
        /// `Update`: new resources.
        update("Update", api::UpdateTaskRequest) -> api::Empty;
        /// `Stats`.
        stats("Stats", api::StatsRequest) -> api::StatsResponse;
        /// `Delete`: a stopped task or exec.
        delete("Delete", api::DeleteRequest) -> api::DeleteResponse;
        /// `Shutdown`: the shim exits once it has no task left.
        shutdown("Shutdown", api::ShutdownRequest) -> api::Empty;
    }
}
