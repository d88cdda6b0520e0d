//! The personas against the real runtimes: for every recorded pod (Go shim:
//! `sim-agent/tests/data/real-lifecycle/`, runtime-rs: `real-lifecycle-rs/`), the library
//! scenario with the same container, command, annotations and mounts sends the same ordered
//! agent RPCs with the same key fields (stdio and OOM polls may differ in number, so they are
//! left out) and leaves the same host-side result (exit status, termination message).

mod common;

use std::path::Path;

use common::{line, recorded_field};

use serde_json::Value;
use sim_agent::{Method, Op};

fn is_poll(method: Method) -> bool {
    matches!(
        method,
        Method::ReadStdout | Method::ReadStderr | Method::GetOOMEvent
    )
}

/// The recorded agent calls that were answered, without polls.
fn recorded(file: &str) -> (Vec<String>, Option<i64>, Option<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sim-agent/tests/data")
        .join(file);
    let mut calls = Vec::new();
    let mut exit = None;
    let mut message = None;
    for text in std::fs::read_to_string(&path).unwrap().lines() {
        let v: Value = serde_json::from_str(text).unwrap();
        if v["kind"] != "exchange" || v["channel"] != "agent" || v["resp"].is_null() {
            continue;
        }
        let name = v["method"].as_str().unwrap();
        let method: Method = name.parse().unwrap_or_else(|e| panic!("{file}: {e}"));
        if is_poll(method) {
            continue;
        }
        let req = &v["decoded"]["request"];
        let call = line(method, |k| recorded_field(req, k));
        let resp = &v["decoded"]["response"];
        if method == Method::WaitProcess && exit.is_none() && v["resp"]["code"] == 0 {
            exit = resp["status"].as_i64();
        }
        if method == Method::GetDiagnosticData {
            // The decoded form is shortened for display: decode the raw answer.
            use base64::Engine as _;
            use protobuf::Message as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v["resp"]["payload_b64"].as_str().unwrap_or_default())
                .unwrap();
            let r = sim_agent::protocols::agent::GetDiagnosticDataResponse::parse_from_bytes(&raw)
                .unwrap();
            message = Some(r.data);
        }
        calls.push(call);
    }
    (calls, exit, message)
}

/// The scenario's agent calls in the same form, from the typed record.
fn simulated(outcome: &kata_sim::host::Outcome) -> Vec<String> {
    outcome
        .calls
        .iter()
        .filter_map(|call| {
            // The hypervisor's operations are not in the agent's recording.
            let Op::Agent(method) = call.op else {
                return None;
            };
            if is_poll(method) {
                return None;
            }
            let out = line(method, |k| call.field(k).map(str::to_string));
            Some(out)
        })
        .collect()
}

fn check(fixture: &str, scenario: &str, container: &str) {
    let (want, exit, message) = recorded(fixture);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("library")
        .join(format!("{scenario}.yaml"));
    let s = kata_sim::load::load(&path).unwrap();
    let outcome = kata_sim::host::run_blocking(&s);
    let have = simulated(&outcome);
    assert_eq!(have, want, "{scenario} against {fixture} (seed {})", s.seed);
    let p = &outcome.processes[container];
    assert_eq!(p.exit_code.map(i64::from), exit, "{scenario}: exit status");
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        assert_eq!(
            outcome.host_files[container].as_deref(),
            Some(m.as_str()),
            "{scenario}: the host file holds what GetDiagnosticData returned"
        );
    }
}

#[test]
fn go_persona_matches_the_go_shim() {
    check("real-lifecycle/echo.jsonl", "go-fixture-echo", "c1");
    check("real-lifecycle/exit3.jsonl", "go-fixture-exit3", "c2");
    check("real-lifecycle/kill.jsonl", "go-fixture-kill", "c3");
}

#[test]
fn rs_persona_matches_runtime_rs() {
    check("real-lifecycle-rs/echo.jsonl", "rs-fixture-echo", "c1");
    check(
        "real-lifecycle-rs/term-file.jsonl",
        "rs-fixture-term-file",
        "c2",
    );
    check(
        "real-lifecycle-rs/term-fallback.jsonl",
        "rs-fixture-term-fallback",
        "c3",
    );
    check(
        "real-lifecycle-rs/term-big.jsonl",
        "rs-fixture-term-big",
        "c4",
    );
    check(
        "real-lifecycle-rs/term-kill.jsonl",
        "rs-fixture-term-kill",
        "c5",
    );
    check(
        "real-lifecycle-rs/term-empty.jsonl",
        "rs-fixture-term-empty",
        "c6",
    );
    check(
        "real-lifecycle-rs/term-utf8.jsonl",
        "rs-fixture-term-utf8",
        "c7",
    );
}
