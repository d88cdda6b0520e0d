//! What the recording tests (`fidelity.rs`, `fault_truth.rs`) share: one agent call as a
//! comparable line, `Method key=value ...`, built the same way from a recorded request and
//! from a simulated call.

use serde_json::Value;
use sim_agent::Method;

/// The key fields compared, in this order.
pub const KEYS: &[&str] = &[
    "container_id",
    "exec_id",
    "signal",
    "timeout",
    "log_type",
    "path",
    "sandbox_id",
];

/// A copied file's random part, `<cid>-<16 hex>-<name>`, as `<cid>-*-<name>`.
pub fn normalize_path(p: &str) -> String {
    let (dir, file) = p.rsplit_once('/').unwrap_or(("", p));
    let parts: Vec<&str> = file.splitn(3, '-').collect();
    if parts.len() == 3 && parts[1].len() == 16 && parts[1].chars().all(|c| c.is_ascii_hexdigit()) {
        format!("{dir}/{}-*-{}", parts[0], parts[2])
    } else {
        p.to_string()
    }
}

/// `method` with the key fields `field` gives, as `Method key=value ...`.
pub fn line(method: Method, field: impl Fn(&str) -> Option<String>) -> String {
    let mut out = method.wire_name().to_string();
    for k in KEYS {
        if let Some(v) = field(k) {
            let v = if *k == "path" { normalize_path(&v) } else { v };
            out.push_str(&format!(" {k}={v}"));
        }
    }
    out
}

/// The key fields of a recorded request (`decoded.request`), as text.
pub fn recorded_field(req: &Value, k: &str) -> Option<String> {
    req.get(k).map(|val| match val {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}
