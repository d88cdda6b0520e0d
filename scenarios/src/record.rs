//! The typed lines of a run's record ([`crate::host::Outcome`]): each call the host made
//! ([`Call`]), each fault that fired ([`FaultFired`]) and each warning ([`Warning`]). The code works on their fields; their
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

/// A warning the host logged (or a run of identical consecutive ones). Its text: the warning,
/// then ` xN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// What the host said.
    pub text: String,
    /// How many times in a row it said it (at least 1).
    pub count: u64,
}

impl Warning {
    /// A warning said once.
    pub fn once(text: String) -> Self {
        Warning { text, count: 1 }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        times(f, self.count)
    }
}

impl Serialize for Warning {
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
    fn identical_consecutive_faults_fold() {
        let fired = |rule, target: &str| Fired {
            rule,
            target: target.into(),
            action: "hang".into(),
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
