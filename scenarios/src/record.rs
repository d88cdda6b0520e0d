//! The typed lines of a run's record ([`crate::host::Outcome`]): each call the host made
//! ([`Call`]), each fault that fired ([`FaultFired`]), each warning ([`Warning`], with its
//! [`Level`]) and each container's task as containerd sees it ([`TaskState`]). The code works
//! on their fields; their
//! one-line text (`Display`, also their serde form) is for people and snapshots only, and
//! nothing parses it back.

use std::fmt;

use serde::{Serialize, Serializer};
use sim_agent::fault::{Fired, RuleId};
use sim_agent::{CallStatus, Op, TraceEvent};

/// One agent RPC or VM operation (or a run of identical consecutive ones), as the record
/// keeps it. Its text: `Op key=value ... -> STATUS [fault: ...] [note: ...] xN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// What was called.
    pub op: Op,
    /// The request's key fields, in their fixed order.
    pub fields: Vec<(String, String)>,
    /// How it answered.
    pub status: CallStatus,
    /// The fault that fired on it, as the fault engine describes it (`kill_guest`).
    pub fault: Option<String>,
    /// A note from the guest model, such as the shell word the userland did not understand.
    pub note: Option<String>,
    /// How many identical consecutive calls this one stands for (at least 1).
    pub count: u64,
}

impl Call {
    /// The value of a key field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The call as `Op{key=value, ...}`, as an error message names it.
    pub fn short(&self) -> String {
        if self.fields.is_empty() {
            return self.op.name().to_string();
        }
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}{{{}}}", self.op, fields.join(", "))
    }

    /// The call as a JSON object for tools (`kata-sim trace --format json`, `run --format
    /// json`): `{"op", "fields": {key: value}, "status", "fault", "note", "count"}`, with
    /// `null` for no fault or note.
    pub fn json(&self) -> serde_json::Value {
        let fields: serde_json::Map<String, serde_json::Value> = self
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "op": self.op.name(),
            "fields": fields,
            "status": self.status.name(),
            "fault": self.fault,
            "note": self.note,
            "count": self.count,
        })
    }
}

impl Call {
    /// Whether `other` is the same call with the same answer, whatever the counts.
    pub fn same(&self, other: &Call) -> bool {
        (
            &self.op,
            &self.fields,
            &self.status,
            &self.fault,
            &self.note,
        ) == (
            &other.op,
            &other.fields,
            &other.status,
            &other.fault,
            &other.note,
        )
    }

    /// Appends `c` to `calls`, counted into the last one if it is the same call.
    pub fn push_folded(calls: &mut Vec<Call>, c: Call) {
        match calls.last_mut() {
            Some(last) if last.same(&c) => last.count = last.count.saturating_add(c.count),
            _ => calls.push(c),
        }
    }
}

impl From<&TraceEvent> for Call {
    fn from(e: &TraceEvent) -> Self {
        Call {
            op: e.method,
            fields: e.fields.clone(),
            status: e.status,
            fault: e.fault.clone(),
            note: e.note.clone(),
            count: e.count.max(1),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.op.name())?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        write!(f, " -> {}", self.status)?;
        if let Some(fault) = &self.fault {
            write!(f, " [fault: {fault}]")?;
        }
        if let Some(note) = &self.note {
            write!(f, " [note: {note}]")?;
        }
        times(f, self.count)
    }
}

impl Serialize for Call {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One fault that fired (or a run of identical consecutive ones). Its text:
/// `#rule Target action xN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultFired {
    /// The rule that fired.
    pub rule: RuleId,
    /// The call it fired on (`Check`).
    pub target: String,
    /// What it did, as the rule language writes it (`kill_guest`).
    pub action: String,
    /// How many identical consecutive firings this one stands for (at least 1).
    pub count: u64,
}

impl FaultFired {
    /// The faults that fired, identical consecutive ones folded into one with a count.
    pub fn folded<'a>(fired: impl IntoIterator<Item = &'a Fired>) -> Vec<FaultFired> {
        let mut out: Vec<FaultFired> = Vec::new();
        for f in fired {
            match out.last_mut() {
                Some(last)
                    if last.rule == f.rule
                        && last.target == f.target
                        && last.action == f.action =>
                {
                    last.count = last.count.saturating_add(1);
                }
                _ => out.push(FaultFired {
                    rule: f.rule,
                    target: f.target.clone(),
                    action: f.action.clone(),
                    count: 1,
                }),
            }
        }
        out
    }
}

impl fmt::Display for FaultFired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {} {}", self.rule, self.target, self.action)?;
        times(f, self.count)
    }
}

impl Serialize for FaultFired {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How loud a runtime logged a line: its own level names (logrus's and slog's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `info`: the Go shim's failed GetOOMEvent, for one.
    Info,
    /// `warning` (logrus) / `WARN` (slog).
    Warning,
    /// `error`.
    Error,
}

impl Level {
    /// The name a runtime's log uses (`warning`).
    pub fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A line the host logged and went on (or a run of identical consecutive ones), in the
/// runtime's own words, so a real shim's log can be grepped for it. Its text:
/// `LEVEL: MESSAGE[: ERROR] xN` (`warning: Failed to get termination message from guest:
/// rpc status: ...`): exactly runtime-rs's line; for the Go shim, logrus's `msg` and its
/// `error` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The level the runtime logs it at.
    pub level: Level,
    /// The runtime's message, as its source writes it (`crate::words`).
    pub message: String,
    /// The error it carries, as that runtime renders it (Go: the `error=` field).
    pub error: Option<String>,
    /// How many times in a row it said it (at least 1).
    pub count: u64,
}

impl Warning {
    /// A warning said once, with no error.
    pub fn once(message: impl Into<String>) -> Self {
        Warning {
            level: Level::Warning,
            message: message.into(),
            error: None,
            count: 1,
        }
    }

    /// A line said once at `level`, carrying `error`.
    pub fn new(level: Level, message: impl Into<String>, error: Option<String>) -> Self {
        Warning {
            level,
            message: message.into(),
            error,
            count: 1,
        }
    }

    /// Whether `other` says the same (level, message and error), whatever the counts.
    pub fn same(&self, other: &Warning) -> bool {
        self.level == other.level && self.message == other.message && self.error == other.error
    }

    /// Appends `w` to `warnings`, folded into the last one when it says the same.
    pub fn push_folded(warnings: &mut Vec<Warning>, w: Warning) {
        match warnings.last_mut() {
            Some(last) if last.same(&w) => last.count = last.count.saturating_add(w.count),
            _ => warnings.push(w),
        }
    }

    /// The line without its count: `LEVEL: MESSAGE[: ERROR]`.
    pub fn line(&self) -> String {
        match &self.error {
            Some(e) => format!("{}: {}: {e}", self.level, self.message),
            None => format!("{}: {}", self.level, self.message),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())?;
        times(f, self.count)
    }
}

impl Serialize for Warning {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A task's status as containerd's task API reports it (`ctr task ls`).
///
/// A scenario writes it in lower case (`expect.tasks.c1.status: running`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Created, not started.
    Created,
    /// Started, and no exit published.
    Running,
    /// Paused.
    Paused,
    /// Its exit is published (the shim answered containerd's Wait).
    Stopped,
}

impl TaskStatus {
    /// containerd's name (`RUNNING`).
    pub fn name(self) -> &'static str {
        match self {
            TaskStatus::Created => "CREATED",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Paused => "PAUSED",
            TaskStatus::Stopped => "STOPPED",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What containerd sees of a container's task at the end of a run: the status the shim last
/// published, when (virtual time from the run's start), and when the host learnt of the
/// process's exit (its WaitProcess answered), which may be long before the exit is published.
/// Its text: `STOPPED exit_status=2 published_at=30.050s exited_at=0.050s`, and for a task
/// still running or paused ` (ctr task delete: FAILED_PRECONDITION)`, as containerd's client
/// refuses to delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// The status.
    pub status: TaskStatus,
    /// The exit status containerd got (only once `STOPPED`).
    pub exit_status: Option<u32>,
    /// When the shim published this status.
    pub published_at: std::time::Duration,
    /// When the host's WaitProcess for the init process answered (or failed).
    pub exited_at: Option<std::time::Duration>,
}

impl TaskState {
    /// Whether `ctr task delete` succeeds (containerd's client refuses a running or paused
    /// task with FAILED_PRECONDITION: "task must be stopped before deletion").
    pub fn deletable(&self) -> bool {
        !matches!(self.status, TaskStatus::Running | TaskStatus::Paused)
    }
}

/// A duration of virtual time as `0.050s`.
fn secs(d: std::time::Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.status.name())?;
        if let Some(code) = self.exit_status {
            write!(f, " exit_status={code}")?;
        }
        write!(f, " published_at={}", secs(self.published_at))?;
        if let Some(at) = self.exited_at {
            write!(f, " exited_at={}", secs(at))?;
        }
        if !self.deletable() {
            f.write_str(" (ctr task delete: FAILED_PRECONDITION)")?;
        }
        Ok(())
    }
}

impl Serialize for TaskState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// ` xN` after a line that stands for `n > 1` identical ones.
fn times(f: &mut fmt::Formatter<'_>, n: u64) -> fmt::Result {
    if n > 1 {
        write!(f, " x{n}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_agent::{Method, VmOp};

    #[test]
    fn a_call_reads_as_one_line() {
        let mut c = Call {
            op: Op::Agent(Method::ReadStdout),
            fields: vec![
                ("container_id".into(), "c1".into()),
                ("len".into(), "32768".into()),
            ],
            status: CallStatus::Ok,
            fault: None,
            note: None,
            count: 3,
        };
        assert_eq!(
            c.to_string(),
            "ReadStdout container_id=c1 len=32768 -> OK x3"
        );
        assert_eq!(c.short(), "ReadStdout{container_id=c1, len=32768}");
        c.count = 1;
        c.fault = Some("hang".into());
        c.note = Some("sh: $HOME".into());
        c.status = CallStatus::Pending;
        assert_eq!(
            c.to_string(),
            "ReadStdout container_id=c1 len=32768 -> PENDING [fault: hang] [note: sh: $HOME]"
        );
        let vm = Call {
            op: Op::Vm(VmOp::PauseVM),
            fields: vec![],
            status: CallStatus::Closed,
            fault: None,
            note: None,
            count: 1,
        };
        assert_eq!(vm.short(), "PauseVM");
        assert_eq!(
            serde_json::to_string(&vm).unwrap(),
            r#""PauseVM -> CLOSED""#
        );
    }

    #[test]
    fn warnings_and_task_states_read_as_one_line() {
        let mut w = Warning::new(
            Level::Warning,
            "Failed to get termination message from guest",
            Some("ttrpc err: Receive packet timeout Elapsed(())".into()),
        );
        assert_eq!(
            w.to_string(),
            "warning: Failed to get termination message from guest: \
             ttrpc err: Receive packet timeout Elapsed(())"
        );
        w.count = 2;
        w.error = None;
        w.level = Level::Info;
        assert_eq!(
            w.to_string(),
            "info: Failed to get termination message from guest x2"
        );
        let ms = std::time::Duration::from_millis;
        let mut t = TaskState {
            status: TaskStatus::Running,
            exit_status: None,
            published_at: ms(40),
            exited_at: Some(ms(50)),
        };
        assert_eq!(
            t.to_string(),
            "RUNNING published_at=0.040s exited_at=0.050s (ctr task delete: FAILED_PRECONDITION)"
        );
        t.status = TaskStatus::Stopped;
        t.exit_status = Some(2);
        t.published_at = ms(30_050);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#""STOPPED exit_status=2 published_at=30.050s exited_at=0.050s""#
        );
    }

    #[test]
    fn identical_consecutive_faults_fold() {
        let fired = |rule, target: &str| Fired {
            rule,
            target: target.into(),
            action: "hang".into(),
            kind: sim_agent::fault::Action::Hang,
            nth: 0,
        };
        let folded = FaultFired::folded(&[
            fired(1, "Check"),
            fired(1, "Check"),
            fired(2, "Check"),
            fired(1, "Check"),
        ]);
        let text: Vec<String> = folded.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["#1 Check hang x2", "#2 Check hang", "#1 Check hang"]);
        assert_eq!(folded.iter().map(|f| f.count).sum::<u64>(), 4);
    }
}
