//! The scenario format: what a YAML scenario file may say. Unknown fields are errors.
//!
//! ```yaml
//! name: go-termination-log-copied
//! description: shared_fs=none; the stop copies the message to the host file.
//! seed: 1
//! config: { persona: go, shared_fs: none }
//! faults: ["GetDiagnosticData=1*delay(2s)->off"]
//! steps:
//!   - create_sandbox: {}
//!   - create_container:
//!       id: c1
//!       args: [sh, -c, "echo bye > /dev/termination-log; exit 2"]
//!       termination_message_path: /dev/termination-log
//!   - start: c1
//!   - wait: c1
//!   - stop: c1
//!   - destroy_sandbox
//! expect:
//!   exit_codes: { c1: 2 }
//!   host_files: { c1: "bye\n" }
//!   teardown: completed
//! ```
//!
//! See `docs/scenarios.md` for every field with an example.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One scenario file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A unique, file-name-like name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// The seed of every random choice (fault probabilities, file names, /dev/urandom).
    #[serde(default)]
    pub seed: u64,
    /// The host and guest configuration.
    #[serde(default)]
    pub config: Config,
    /// Guest-side setup.
    #[serde(default)]
    pub guest: Guest,
    /// Fault rules installed before the first step (the rule language of `docs/faults.md`).
    #[serde(default)]
    pub faults: Vec<String>,
    /// What happens, in order.
    pub steps: Vec<Step>,
    /// What must be true afterwards.
    #[serde(default)]
    pub expect: Expect,
}

/// Which host runtime the built-in driver imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Persona {
    /// The Go shim (virtcontainers).
    #[default]
    Go,
    /// runtime-rs.
    Rs,
}

/// How the sandbox shares files with the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SharedFs {
    /// No sharing: files are copied in (CopyFile), the termination message is copied out
    /// (GetDiagnosticData).
    #[default]
    None,
    /// virtio-fs: host and guest see the same files.
    VirtioFs,
}

/// The `config` section.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The host runtime persona.
    #[serde(default)]
    pub persona: Persona,
    /// File sharing.
    #[serde(default)]
    pub shared_fs: SharedFs,
    /// The agent release the guest behaves as (default: the current agent).
    #[serde(default)]
    pub agent_version: Option<String>,
}

/// The `guest` section.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guest {
    /// Scripted processes by container id (they win over the interpreted command line).
    #[serde(default)]
    pub programs: BTreeMap<String, Program>,
}

/// A scripted process.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Program {
    /// Written to stdout at start.
    #[serde(default)]
    pub stdout: String,
    /// Written to stderr at start.
    #[serde(default)]
    pub stderr: String,
    /// Its exit code.
    #[serde(default)]
    pub exit_code: i32,
    /// How long it runs, in seconds; absent: until signalled.
    #[serde(default)]
    pub run_secs: Option<f64>,
    /// `default`, `ignore`, or an exit code to exit with on a catchable signal.
    #[serde(default)]
    pub on_signal: Option<String>,
}

/// One step. Host actions go through the persona; guest events act on the guest directly.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Create and start the sandbox (VM, agent session).
    CreateSandbox(SandboxSpec),
    /// Create a container.
    CreateContainer(ContainerSpec),
    /// Start a container; its output is read until it ends.
    Start(String),
    /// Run a process in a container.
    Exec(ExecSpec),
    /// Write to a process's stdin.
    WriteStdin(StdinSpec),
    /// Close a process's stdin.
    CloseStdin(ProcessRef),
    /// Send a signal.
    Kill(KillSpec),
    /// Wait for a container's (or exec's) exit status.
    Wait(String),
    /// Stop a container (kill, reap, copy the termination message, remove).
    Stop(String),
    /// Pause a container.
    Pause(String),
    /// Resume a container.
    Resume(String),
    /// Update a container's resources.
    Update(UpdateSpec),
    /// Read a container's stats.
    Stats(String),
    /// Tear the sandbox down.
    DestroySandbox,
    /// Guest: OOM-kill a container's init process.
    PushOom(String),
    /// Guest: the VM dies.
    KillGuest,
    /// Guest: write a container's termination message directly.
    WriteTerminationMessage(TerminationMessage),
    /// Guest: delete the file behind a container's termination-message mount.
    RemoveTerminationMessage(String),
    /// Let this many seconds pass on the clock (monitors and health checks run).
    AdvanceTime(f64),
    /// Install a fault rule now.
    AddFault(String),
    /// Remove every fault rule installed so far whose text is this one.
    RemoveFault(String),
}

/// `create_sandbox`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// The sandbox id (default `sandbox`).
    #[serde(default)]
    pub id: Option<String>,
    /// Its hostname.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// `create_container`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// The container id.
    pub id: String,
    /// Its command line.
    pub args: Vec<String>,
    /// OCI annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Extra bind mounts, destination -> host file content.
    #[serde(default)]
    pub mounts: BTreeMap<String, String>,
    /// The termination-message path (sets the annotations and a bind mount from a host file).
    #[serde(default)]
    pub termination_message_path: Option<String>,
    /// `File` (default) or `FallbackToLogsOnError`.
    #[serde(default)]
    pub termination_message_policy: Option<String>,
    /// Make the host path of the termination message unwritable (a directory stands there).
    #[serde(default)]
    pub host_file_unwritable: bool,
    /// Give the process a terminal.
    #[serde(default)]
    pub terminal: bool,
}

/// `exec`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// The container.
    pub container: String,
    /// The exec id.
    pub id: String,
    /// Its command line.
    pub args: Vec<String>,
}

/// A process: a container's init (`exec` absent) or an exec.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessRef {
    /// The container.
    pub container: String,
    /// The exec id, if not the init process.
    #[serde(default)]
    pub exec: Option<String>,
}

/// `write_stdin`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinSpec {
    /// The container.
    pub container: String,
    /// The exec id, if not the init process.
    #[serde(default)]
    pub exec: Option<String>,
    /// The data.
    pub data: String,
}

/// `kill`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillSpec {
    /// The container.
    pub container: String,
    /// The exec id, if not the init process.
    #[serde(default)]
    pub exec: Option<String>,
    /// The signal number (default 15).
    #[serde(default)]
    pub signal: Option<u32>,
}

/// `update`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// The container.
    pub container: String,
    /// CPU shares.
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// Memory limit in bytes.
    #[serde(default)]
    pub memory_limit: Option<i64>,
}

/// `write_termination_message`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminationMessage {
    /// The container.
    pub container: String,
    /// The content.
    pub data: String,
}

/// The `expect` section: checked after the run.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Exit status per container (or `container/exec`).
    #[serde(default)]
    pub exit_codes: BTreeMap<String, i32>,
    /// Complete stdout per container (or `container/exec`).
    #[serde(default)]
    pub stdout: BTreeMap<String, String>,
    /// Host termination-message file content per container; `null`: the file stays empty.
    #[serde(default)]
    pub host_files: BTreeMap<String, Option<String>>,
    /// Substrings that must each appear in some error the host reported.
    #[serde(default)]
    pub errors: Vec<String>,
    /// Substrings that must each appear in some warning the host logged.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// `completed` or `incomplete`.
    #[serde(default)]
    pub teardown: Option<Teardown>,
    /// Pairs `[A, B]`: the first A precedes the first B in the call record.
    #[serde(default)]
    pub order: Vec<[String; 2]>,
    /// Calls that must never be made.
    #[serde(default)]
    pub absent: Vec<String>,
    /// How many faults fire.
    #[serde(default)]
    pub faults_fired: Option<usize>,
}

/// Whether the sandbox was torn down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Teardown {
    /// Every container removed, the VM stopped.
    Completed,
    /// Something was left.
    Incomplete,
}

/// The JSON Schema of scenario files (for editor completion), generated from these types.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Scenario);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
