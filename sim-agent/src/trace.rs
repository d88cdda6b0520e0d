//! The ordered record of every call an agent received, for tests and snapshots.
//!
//! Entries are appended when a call arrives and completed when it answers, so the order is
//! the order of arrival (as the recorded fixtures list them), whatever order answers leave in.

use std::fmt;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::op::Op;

/// How a call answered, as the trace records it. Written as today's names (`PENDING`, `OK`,
/// a ttrpc code name such as `NOT_FOUND`, `CLOSED`) wherever a trace is shown or serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// The call has not answered yet.
    Pending,
    /// It answered OK.
    Ok,
    /// It answered with an error status (never `OK`: see [`CallStatus::from_code`]).
    Code(ttrpc::Code),
    /// It never answered: the connection, the guest or the agent went away.
    Closed,
}

impl CallStatus {
    /// The status for a ttrpc code: [`CallStatus::Ok`] for `OK`, else [`CallStatus::Code`].
    pub fn from_code(code: ttrpc::Code) -> Self {
        if code == ttrpc::Code::OK {
            CallStatus::Ok
        } else {
            CallStatus::Code(code)
        }
    }

    /// Its name: `PENDING`, `OK`, the code's upper-case name, or `CLOSED`.
    pub fn name(self) -> &'static str {
        match self {
            CallStatus::Pending => "PENDING",
            CallStatus::Ok => "OK",
            CallStatus::Code(c) => crate::error::code_name(c),
            CallStatus::Closed => "CLOSED",
        }
    }

    /// Whether the call has answered (with anything).
    pub fn answered(self) -> bool {
        self != CallStatus::Pending
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for CallStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One call as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// Arrival order, from 0.
    pub seq: u64,
    /// The server connection it arrived on; `None` in-process.
    pub conn: Option<u64>,
    /// The agent RPC or hypervisor operation (serialized by its name, `CreateContainer`).
    pub method: Op,
    /// The request's key fields, in a fixed order.
    pub fields: Vec<(String, String)>,
    /// How it answered ([`CallStatus::Pending`] until it does).
    pub status: CallStatus,
    /// The status message, empty for OK.
    pub message: String,
    /// The fault that fired on this call, if any.
    pub fault: Option<String>,
    /// A note from the model, such as a word the userland did not understand.
    pub note: Option<String>,
    /// How many consecutive identical calls this event stands for: 1, unless the trace folds
    /// repeats ([`Trace::folding`]); their sequence numbers are `seq..seq + count`.
    #[serde(skip_serializing_if = "is_one")]
    pub count: u64,
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

impl TraceEvent {
    /// The value of a key field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How many of the most recent calls the long-running servers (`sim-agent serve`, each VM of
/// `kata-sim serve`) keep in a trace: one that serves for hours does not grow with it.
pub const SERVER_TRACE_LIMIT: usize = 10_000;

/// A shared, append-only trace. A bounded one ([`Trace::bounded`]) keeps only the most recent
/// calls, so that a server that runs for hours does not grow with every call it answers.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    log: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
struct Log {
    /// The sequence number of the next call.
    next: u64,
    events: std::collections::VecDeque<TraceEvent>,
    limit: Option<usize>,
    fold: bool,
}

impl Log {
    /// The event of call `seq` (the one that stands for it, when repeats fold).
    fn get_mut(&mut self, seq: u64) -> Option<&mut TraceEvent> {
        let i = self
            .events
            .partition_point(|e| e.seq <= seq)
            .checked_sub(1)?;
        let e = self.events.get_mut(i)?;
        (seq < e.seq.saturating_add(e.count)).then_some(e)
    }

    /// Folds the last event into the one before it when they are the same call with the same
    /// answer (a host polling in a loop): the record grows with what changes, not with time.
    fn fold_last(&mut self) {
        let n = self.events.len();
        if !self.fold || n < 2 {
            return;
        }
        let (a, b) = (&self.events[n - 2], &self.events[n - 1]);
        let same = a.method == b.method
            && a.conn == b.conn
            && a.fields == b.fields
            && a.status == b.status
            && a.message == b.message
            && a.fault == b.fault
            && a.note == b.note
            && a.seq.saturating_add(a.count) == b.seq;
        if same && b.status.answered() {
            let extra = b.count;
            self.events.pop_back();
            if let Some(a) = self.events.back_mut() {
                a.count = a.count.saturating_add(extra);
            }
        }
    }
}

impl Trace {
    /// A trace that keeps the most recent `limit` calls (at least one).
    pub fn bounded(limit: usize) -> Self {
        Trace {
            log: Arc::new(Mutex::new(Log {
                limit: Some(limit.max(1)),
                ..Log::default()
            })),
        }
    }

    /// A trace that keeps every call but folds consecutive identical ones (same method,
    /// fields, answer and fault) into one event with a [`TraceEvent::count`]: a host that
    /// polls in a loop adds one event, not one per poll.
    pub fn folding() -> Self {
        Trace {
            log: Arc::new(Mutex::new(Log {
                fold: true,
                ..Log::default()
            })),
        }
    }

    /// A trace that keeps everything (`None`) or the most recent `limit` calls.
    pub fn with_limit(limit: Option<usize>) -> Self {
        limit.map_or_else(Trace::default, Trace::bounded)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the arrival of a call; returns its sequence number.
    pub fn begin(
        &self,
        method: impl Into<Op>,
        conn: Option<u64>,
        fields: &[(&'static str, String)],
    ) -> u64 {
        let mut log = self.lock();
        let seq = log.next;
        log.next += 1;
        if log.limit.is_some_and(|l| log.events.len() >= l) {
            log.events.pop_front();
        }
        log.events.push_back(TraceEvent {
            seq,
            conn,
            method: method.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            status: CallStatus::Pending,
            message: String::new(),
            fault: None,
            note: None,
            count: 1,
        });
        seq
    }

    /// Records how call `seq` answered.
    pub fn end(&self, seq: u64, status: CallStatus, message: &str) {
        let mut log = self.lock();
        if let Some(e) = log.get_mut(seq) {
            e.status = status;
            e.message = message.to_string();
            if e.seq == seq && log.events.back().is_some_and(|b| b.seq == seq) {
                log.fold_last();
            }
        }
    }

    /// Records that a fault fired on call `seq`.
    pub fn fault(&self, seq: u64, fault: String) {
        if let Some(e) = self.lock().get_mut(seq) {
            e.fault = Some(fault);
        }
    }

    /// Attaches a note to call `seq`.
    pub fn note(&self, seq: u64, note: String) {
        if let Some(e) = self.lock().get_mut(seq) {
            e.note = Some(note);
        }
    }

    /// A copy of every event kept.
    pub fn events(&self) -> Vec<TraceEvent> {
        self.lock().events.iter().cloned().collect()
    }

    /// How many calls are kept.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.lock().events.is_empty()
    }

    /// The operations kept, in arrival order.
    pub fn methods(&self) -> Vec<Op> {
        self.lock().events.iter().map(|e| e.method).collect()
    }

    /// Whether a call of `op` is kept.
    pub fn has(&self, op: impl Into<Op>) -> bool {
        let op = op.into();
        self.lock().events.iter().any(|e| e.method == op)
    }

    /// Forgets every event (sequence numbers go on).
    pub fn clear(&self) {
        self.lock().events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::Method;
    use ttrpc::Code;

    const A: Method = Method::Check;
    const B: Method = Method::CreateSandbox;
    const C: Method = Method::CreateContainer;
    const D: Method = Method::StartContainer;
    const E: Method = Method::WaitProcess;

    #[test]
    fn a_bounded_trace_keeps_the_most_recent_calls_and_their_numbers() {
        let t = Trace::bounded(3);
        for m in [A, B, C, D, E] {
            t.begin(m, None, &[]);
        }
        assert_eq!(t.methods(), [Op::Agent(C), Op::Agent(D), Op::Agent(E)]);
        assert!(t.has(D) && !t.has(A));
        assert_eq!(
            t.events().iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3, 4],
            "sequence numbers keep counting every call"
        );
        t.end(0, CallStatus::Ok, ""); // dropped already: nothing to update
        t.end(4, CallStatus::from_code(Code::NOT_FOUND), "gone");
        let last = t.events().pop().unwrap();
        assert_eq!(
            (last.status, last.message.as_str()),
            (CallStatus::Code(Code::NOT_FOUND), "gone")
        );
        assert_eq!(last.status.to_string(), "NOT_FOUND");
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.begin(A, None, &[]), 5);
        assert_eq!(Trace::default().begin(A, None, &[]), 0);
        let unbounded = Trace::with_limit(None);
        for _ in 0..100 {
            unbounded.begin(A, None, &[]);
        }
        assert_eq!(unbounded.len(), 100);
    }

    #[test]
    fn a_folding_trace_folds_consecutive_identical_calls_only() {
        let t = Trace::folding();
        let call = |m: Method, status: CallStatus| {
            let seq = t.begin(m, None, &[("container_id", "c1".into())]);
            t.end(seq, status, "");
            seq
        };
        let unavailable = CallStatus::Code(Code::UNAVAILABLE);
        call(Method::Check, CallStatus::Ok);
        let pending = t.begin(Method::WaitProcess, None, &[]);
        for _ in 0..1000 {
            call(Method::GetOOMEvent, unavailable);
        }
        call(Method::GetOOMEvent, CallStatus::Ok);
        for _ in 0..3 {
            call(Method::Check, CallStatus::Ok);
        }
        let last = call(Method::Check, CallStatus::Ok);
        assert_eq!(last, 1006, "sequence numbers count every call");
        let kept: Vec<_> = t
            .events()
            .iter()
            .map(|e| (e.method.name(), e.status, e.count))
            .collect();
        assert_eq!(
            kept,
            [
                ("Check", CallStatus::Ok, 1),
                ("WaitProcess", CallStatus::Pending, 1),
                ("GetOOMEvent", unavailable, 1000),
                ("GetOOMEvent", CallStatus::Ok, 1),
                ("Check", CallStatus::Ok, 4),
            ]
        );
        // A call that was folded still finds its event; the pending one answers in place.
        t.note(1001, "late".into());
        t.end(pending, CallStatus::Ok, "");
        assert_eq!(t.events()[2].note.as_deref(), Some("late"));
        assert_eq!(t.events()[1].status, CallStatus::Ok);
        // Without folding nothing changes.
        let plain = Trace::default();
        for _ in 0..3 {
            let s = plain.begin(Method::Check, None, &[]);
            plain.end(s, CallStatus::Ok, "");
        }
        assert_eq!(plain.len(), 3);
    }

    #[test]
    fn events_serialize_with_todays_names() {
        let t = Trace::default();
        let s = t.begin(crate::op::VmOp::StartVM, None, &[("timeout", "600".into())]);
        t.end(s, CallStatus::Ok, "");
        t.begin(Method::WaitProcess, Some(3), &[]);
        let s = t.begin(Method::Check, None, &[]);
        t.end(s, CallStatus::Closed, "ttrpc: closed");
        let json: Vec<String> = t
            .events()
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        assert!(json[0].contains(r#""method":"StartVM""#), "{}", json[0]);
        assert!(json[0].contains(r#""status":"OK""#), "{}", json[0]);
        assert!(json[1].contains(r#""status":"PENDING""#), "{}", json[1]);
        assert!(json[2].contains(r#""status":"CLOSED""#), "{}", json[2]);
        assert_eq!(CallStatus::from_code(Code::OK), CallStatus::Ok);
        assert_eq!(CallStatus::from_code(Code::INTERNAL).name(), "INTERNAL");
    }
}
