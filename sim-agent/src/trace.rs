//! The ordered record of every call an agent received, for tests and snapshots.
//!
//! Entries are appended when a call arrives and completed when it answers, so the order is
//! the order of arrival (as the recorded fixtures list them), whatever order answers leave in.

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One call as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// Arrival order, from 0.
    pub seq: u64,
    /// The server connection it arrived on; `None` in-process.
    pub conn: Option<u64>,
    /// The RPC name on the wire (`CreateContainer`).
    pub method: String,
    /// The request's key fields, in a fixed order.
    pub fields: Vec<(String, String)>,
    /// `OK`, a status code name, or `PENDING` while the call has not answered.
    pub status: String,
    /// The status message, empty for OK.
    pub message: String,
    /// The fault that fired on this call, if any.
    pub fault: Option<String>,
    /// A note from the model, such as a word the userland did not understand.
    pub note: Option<String>,
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

/// A shared, append-only trace.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    events: Arc<Mutex<Vec<TraceEvent>>>,
}

impl Trace {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TraceEvent>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the arrival of a call; returns its sequence number.
    pub fn begin(&self, method: &str, conn: Option<u64>, fields: &[(&'static str, String)]) -> u64 {
        let mut events = self.lock();
        let seq = events.len() as u64;
        events.push(TraceEvent {
            seq,
            conn,
            method: method.to_string(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            status: "PENDING".into(),
            message: String::new(),
            fault: None,
            note: None,
        });
        seq
    }

    /// Records how call `seq` answered.
    pub fn end(&self, seq: u64, status: &str, message: &str) {
        if let Some(e) = self.lock().get_mut(seq as usize) {
            e.status = status.to_string();
            e.message = message.to_string();
        }
    }

    /// Records that a fault fired on call `seq`.
    pub fn fault(&self, seq: u64, fault: String) {
        if let Some(e) = self.lock().get_mut(seq as usize) {
            e.fault = Some(fault);
        }
    }

    /// Attaches a note to call `seq`.
    pub fn note(&self, seq: u64, note: String) {
        if let Some(e) = self.lock().get_mut(seq as usize) {
            e.note = Some(note);
        }
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<TraceEvent> {
        self.lock().clone()
    }

    /// How many calls were recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The method names so far, in arrival order.
    pub fn methods(&self) -> Vec<String> {
        self.lock().iter().map(|e| e.method.clone()).collect()
    }

    /// Forgets every event.
    pub fn clear(&self) {
        self.lock().clear();
    }
}
