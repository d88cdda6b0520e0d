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
//!
//! Parse, don't validate: every field the run acts on is a type that only holds what it can
//! run as written (fault [`Rule`]s, the [`AgentVersion`], [`Op`] names, [`OnSignal`], the
//! [`TerminationMessagePolicy`], [`Seconds`] in range), converted by serde when the file is
//! read, so the host never parses text. What depends on the order of steps (a container or
//! exec must be created before a step names it) is checked by [`crate::load`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sim_agent::fault::Rule;
use sim_agent::{AgentVersion, Op, SignalReaction};

pub use crate::record::TaskStatus;

/// One scenario file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A unique, file-name-like name.
    #[serde(deserialize_with = "non_empty_string")]
    #[schemars(length(min = 1))]
    pub name: String,
    /// What it shows.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The seed of every random choice (fault probabilities, file names, /dev/urandom).
    #[serde(default)]
    pub seed: u64,
    /// The host and guest configuration.
    #[serde(default)]
    pub config: Config,
    /// Guest-side setup.
    #[serde(default, skip_serializing_if = "is_default")]
    pub guest: Guest,
    /// Fault rules installed before the first step (the rule language of `docs/faults.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub faults: Vec<Rule>,
    /// What happens, in order.
    pub steps: Vec<Step>,
    /// What must be true afterwards.
    #[serde(default, skip_serializing_if = "is_default")]
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
    /// The Go shim at tag 3.19.1: no termination-message copy (no GetDiagnosticData), its
    /// exit published after the container's stop, and output that ends only on a read error
    /// (an agent's old `eof`): on a 4.x agent's empty reads it spins (kata-facts 8).
    #[serde(rename = "go@3.19.1")]
    Go3191,
}

impl Persona {
    /// Every persona, in the order the docs list them.
    pub const ALL: [Persona; 3] = [Persona::Go, Persona::Rs, Persona::Go3191];

    /// Its name as scenarios write it (`go`, `rs`, `go@3.19.1`).
    pub fn name(self) -> &'static str {
        match self {
            Persona::Go => "go",
            Persona::Rs => "rs",
            Persona::Go3191 => "go@3.19.1",
        }
    }
}

impl std::fmt::Display for Persona {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
    /// The agent release the guest behaves as, `MAJOR.MINOR.PATCH` from 3.0.0 to the current
    /// agent (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub agent_version: Option<AgentVersion>,
    /// Why the scenario is meant for the built-in host only (a behaviour a real runtime
    /// cannot be made to show, such as a fault in a call it never makes); the shim driver
    /// reports it as skipped with this reason.
    #[serde(
        default,
        deserialize_with = "non_empty_opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 1))]
    pub builtin_only: Option<String>,
}

/// The `guest` section.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guest {
    /// Scripted processes by container id (they win over the interpreted command line).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
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
    /// How long it runs, in seconds (at most a day); absent: until signalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_secs: Option<RunSecs>,
    /// What it does on a catchable signal.
    #[serde(default)]
    pub on_signal: OnSignal,
}

/// What a scripted process does on a catchable signal: `default`, `ignore`, or an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnSignal {
    /// The kernel's default (a container's pid 1 ignores signals it has no handler for).
    #[default]
    Default,
    /// Ignore every catchable signal; only SIGKILL ends it.
    Ignore,
    /// Exit with this code.
    Exit(i32),
}

impl From<OnSignal> for SignalReaction {
    fn from(o: OnSignal) -> Self {
        match o {
            OnSignal::Default => SignalReaction::Default,
            OnSignal::Ignore => SignalReaction::Ignore,
            OnSignal::Exit(code) => SignalReaction::Exit(code),
        }
    }
}

impl Serialize for OnSignal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OnSignal::Default => s.serialize_str("default"),
            OnSignal::Ignore => s.serialize_str("ignore"),
            OnSignal::Exit(code) => s.serialize_i32(*code),
        }
    }
}

impl<'de> Deserialize<'de> for OnSignal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = OnSignal;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("default, ignore or an exit code")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OnSignal, E> {
                match v {
                    "default" => Ok(OnSignal::Default),
                    "ignore" => Ok(OnSignal::Ignore),
                    _ => match v.parse::<i32>() {
                        Ok(code) => Ok(OnSignal::Exit(code)),
                        Err(_) => Err(E::custom(
                            match sim_agent::op::suggest(v, ["default", "ignore"]) {
                                Some(n) => format!(
                                    "unknown on_signal {v:?}: did you mean {n:?}? (expected default, ignore or an exit code)"
                                ),
                                None => format!(
                                    "unknown on_signal {v:?}: expected default, ignore or an exit code"
                                ),
                            },
                        )),
                    },
                }
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<OnSignal, E> {
                i32::try_from(v)
                    .map(OnSignal::Exit)
                    .map_err(|_| E::custom(format!("exit code {v} is out of range")))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<OnSignal, E> {
                i32::try_from(v)
                    .map(OnSignal::Exit)
                    .map_err(|_| E::custom(format!("exit code {v} is out of range")))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for OnSignal {
    fn schema_name() -> Cow<'static, str> {
        "OnSignal".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`default`, `ignore`, or an exit code to exit with on a catchable signal.",
            "oneOf": [
                { "type": "string", "enum": ["default", "ignore"] },
                { "type": "integer", "format": "int32" }
            ]
        })
    }
}

/// A number of seconds from 0 to `MAX`: not negative, NaN or infinite, so it always fits a
/// clock.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Seconds<const MAX: u64>(f64);

/// `advance_time`: at most a step's limit ([`crate::host::STEP_LIMIT`]).
pub type StepSecs = Seconds<{ crate::host::STEP_LIMIT.as_secs() }>;

/// `run_secs`: at most a day, as fault durations ([`sim_agent::fault::rule::MAX_DURATION`]).
pub type RunSecs = Seconds<{ sim_agent::fault::rule::MAX_DURATION.as_secs() }>;

impl<const MAX: u64> Seconds<MAX> {
    /// The seconds as written.
    pub fn secs(self) -> f64 {
        self.0
    }

    /// As a duration.
    pub fn duration(self) -> Duration {
        // In range by construction.
        Duration::from_secs_f64(self.0)
    }
}

impl<const MAX: u64> TryFrom<f64> for Seconds<MAX> {
    type Error = String;

    fn try_from(secs: f64) -> Result<Self, String> {
        if secs.is_finite() && (0.0..=MAX as f64).contains(&secs) {
            Ok(Seconds(secs))
        } else {
            Err(format!(
                "{secs:?} is out of range: expected 0 to {MAX} seconds"
            ))
        }
    }
}

impl<const MAX: u64> From<Seconds<MAX>> for f64 {
    fn from(s: Seconds<MAX>) -> f64 {
        s.0
    }
}

impl<const MAX: u64> JsonSchema for Seconds<MAX> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Seconds{MAX}").into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "number", "minimum": 0, "maximum": MAX })
    }
}

/// The `termination_message_policy` of a container, spelt as in Kubernetes (case-sensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
pub enum TerminationMessagePolicy {
    /// The message is the file's content.
    #[default]
    File,
    /// The file, or the container log's tail when the file is empty and the container failed.
    FallbackToLogsOnError,
}

impl TerminationMessagePolicy {
    /// Its name, as the annotation carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationMessagePolicy::File => "File",
            TerminationMessagePolicy::FallbackToLogsOnError => "FallbackToLogsOnError",
        }
    }
}

fn non_empty_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(s)
}

fn non_empty_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    non_empty_string(d).map(Some)
}

fn non_empty_args<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom(
            "must not be empty: a command line needs a program",
        ));
    }
    Ok(v)
}

/// The JSON Schema of an [`Op`] (one definition, `Op`): the name of an agent RPC or a
/// hypervisor operation.
struct OpName;

impl JsonSchema for OpName {
    fn schema_name() -> Cow<'static, str> {
        "Op".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = Op::all().map(Op::name).collect();
        json_schema!({
            "description": "An agent RPC or a hypervisor operation, as the trace names it.",
            "type": "string",
            "enum": names
        })
    }
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
    /// Let this many seconds pass on the clock (monitors and health checks run), at most 3600.
    AdvanceTime(StepSecs),
    /// Install a fault rule now.
    AddFault(#[schemars(with = "String")] Rule),
    /// Remove every fault rule installed so far whose text is this one.
    RemoveFault(#[schemars(with = "String")] Rule),
}

/// `create_sandbox`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// The sandbox id (default `sandbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// `create_container`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// The container id.
    pub id: String,
    /// Its command line.
    #[serde(deserialize_with = "non_empty_args")]
    #[schemars(length(min = 1))]
    pub args: Vec<String>,
    /// OCI annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra bind mounts, destination -> host file content.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mounts: BTreeMap<String, String>,
    /// The termination-message path (sets the annotations and a bind mount from a host file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<String>,
    /// The destination of the host file's bind mount, when it is spelt apart from the
    /// annotated `termination_message_path` (`/dev//termination-log`); default: that path.
    /// The Go shim matches the two as strings, runtime-rs and the agent as paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_mount: Option<String>,
    /// `File` (default) or `FallbackToLogsOnError`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_policy: Option<TerminationMessagePolicy>,
    /// Make the host path of the termination message unwritable (a directory stands there).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_file_unwritable: bool,
    /// Give the process a terminal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
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
    #[serde(deserialize_with = "non_empty_args")]
    #[schemars(length(min = 1))]
    pub args: Vec<String>,
}

/// A process: a container's init (`exec` absent) or an exec.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessRef {
    /// The container.
    pub container: String,
    /// The exec id, if not the init process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
}

/// `write_stdin`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinSpec {
    /// The container.
    pub container: String,
    /// The exec id, if not the init process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// The signal number (default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<u32>,
}

/// `update`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// The container.
    pub container: String,
    /// CPU shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exit_codes: BTreeMap<String, i32>,
    /// Complete stdout per container (or `container/exec`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stdout: BTreeMap<String, String>,
    /// Host termination-message file content per container; `null`: the file stays empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_files: BTreeMap<String, Option<String>>,
    /// Substrings that must each appear in some error the host reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Substrings that must each appear in some warning the host logged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Substrings that no error and no warning of the run may contain, whatever else
    /// happens (for chaos runs: `["Invalid container id"]`, a call the runtime would not
    /// make).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub never: Vec<String>,
    /// `completed` or `incomplete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teardown: Option<Teardown>,
    /// Pairs `[A, B]` of agent RPCs or hypervisor operations: the first A precedes the first
    /// B in the call record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<[OpName; 2]>")]
    pub order: Vec<[Op; 2]>,
    /// Agent RPCs or hypervisor operations that must never be called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<OpName>")]
    pub absent: Vec<Op>,
    /// How many faults fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults_fired: Option<usize>,
    /// What containerd sees of each container's task at the end (`ctr task ls`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, TaskExpect>,
}

/// One container's task in `expect.tasks`; each field present must hold.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskExpect {
    /// `created`, `running`, `paused` or `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// The exit status containerd got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    /// The status was published at or after this many seconds of virtual time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_after: Option<RunSecs>,
    /// The status was published before this many seconds of virtual time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_before: Option<RunSecs>,
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

/// Whether a value is its type's default (left out when a scenario is written).
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The JSON Schema of scenario files (for editor completion), generated from these types.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Scenario);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
