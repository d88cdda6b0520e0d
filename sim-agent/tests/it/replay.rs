//! Replays the recorded real pods (`tests/data/`, copied from the shared fixtures) against
//! sim-agent over a real socket: every agent request is sent in recorded order with its
//! recorded stream id, timeout and metadata, and every answer the real agent gave must come
//! back the same (status code, message, payload).

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use serde_json::Value;
use sim_agent::{SimAgent, SimConfig};

use crate::support::{RawClient, RawResponse, TestServer, bounded};

struct Exchange {
    stream_id: u32,
    method: String,
    service: String,
    timeout_nano: i64,
    metadata: Vec<(String, String)>,
    payload: Vec<u8>,
    t_req: f64,
    /// `None`: the real agent never answered (a long poll open at the end).
    answer: Option<(f64, RawResponse)>,
}

fn load(path: &Path) -> Vec<Exchange> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["kind"] != "exchange" || v["channel"] != "agent" {
            continue;
        }
        let answer = (!v["t_resp"].is_null() && v["resp"].is_object()).then(|| {
            let r = &v["resp"];
            (
                v["t_resp"].as_f64().unwrap(),
                RawResponse {
                    stream_id: v["stream_id"].as_u64().unwrap() as u32,
                    code: r["code"].as_i64().unwrap() as i32,
                    message: r["message"].as_str().unwrap_or_default().to_string(),
                    payload: b64
                        .decode(r["payload_b64"].as_str().unwrap_or_default())
                        .unwrap(),
                },
            )
        });
        let metadata = v["metadata"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| {
                        (
                            kv[0].as_str().unwrap().to_string(),
                            kv[1].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Exchange {
            stream_id: v["stream_id"].as_u64().unwrap() as u32,
            method: v["method"].as_str().unwrap().into(),
            service: v["service"].as_str().unwrap().into(),
            timeout_nano: v["timeout_nano"].as_i64().unwrap_or(0),
            metadata,
            payload: b64.decode(v["req_payload_b64"].as_str().unwrap()).unwrap(),
            t_req: v["t_req"].as_f64().unwrap(),
            answer,
        });
    }
    out
}

/// The real agent lists its storage handlers from a HashMap, in no stable order; compare
/// GetGuestDetails with the list sorted. Everything else is compared byte for byte.
fn normalize(method: &str, mut r: RawResponse) -> RawResponse {
    use protobuf::Message;
    if method == "GetGuestDetails" && r.code == 0 {
        let mut d = sim_agent::protocols::agent::GuestDetailsResponse::parse_from_bytes(&r.payload)
            .unwrap();
        if let Some(details) = d.agent_details.as_mut() {
            details.storage_handlers.sort();
        }
        r.payload = d.write_to_bytes().unwrap();
    }
    r
}

/// Replays one recording and returns the mismatches (empty when all agree).
async fn replay(file: &str, config: SimConfig) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file);
    let exchanges = load(&path);
    let answered = exchanges.iter().filter(|e| e.answer.is_some()).count();
    assert!(
        answered >= 10,
        "{file}: only {answered} answered agent exchanges"
    );
    let srv = TestServer::start(SimAgent::with_config(config).unwrap(), "unix").await;
    let mut client = RawClient::connect(&srv.path).await;
    let mut got: BTreeMap<u32, RawResponse> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for (i, ex) in exchanges.iter().enumerate() {
        // Every answer the real agent gave before this request was sent must arrive first.
        let due: Vec<u32> = exchanges[..i]
            .iter()
            .filter(|e| matches!(e.answer, Some((t, _)) if t < ex.t_req))
            .map(|e| e.stream_id)
            .collect();
        for sid in due {
            while !got.contains_key(&sid) {
                let r = bounded(client.read_response())
                    .await
                    .unwrap_or_else(|| panic!("{file}: closed waiting for {sid}"));
                got.insert(r.stream_id, r);
            }
        }
        client
            .send_request(
                ex.stream_id,
                &ex.service,
                &ex.method,
                ex.payload.clone(),
                ex.timeout_nano,
                &ex.metadata,
            )
            .await;
    }
    for ex in &exchanges {
        let Some((_, want)) = &ex.answer else {
            continue;
        };
        while !got.contains_key(&ex.stream_id) {
            let r = bounded(client.read_response())
                .await
                .unwrap_or_else(|| panic!("{file}: closed waiting for {}", ex.method));
            got.insert(r.stream_id, r);
        }
        let have = normalize(&ex.method, got[&ex.stream_id].clone());
        let want = &normalize(&ex.method, want.clone());
        if have != *want {
            mismatches.push(format!(
                "{} (stream {}): real {want:?}, sim {have:?}",
                ex.method, ex.stream_id
            ));
        }
    }
    srv.server.shutdown().await;
    mismatches
}

#[tokio::test]
async fn go_shim_echo_replays_exactly() {
    assert_eq!(
        replay("real-lifecycle/echo.jsonl", SimConfig::default()).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn go_shim_exit3_replays_exactly() {
    assert_eq!(
        replay("real-lifecycle/exit3.jsonl", SimConfig::default()).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn go_shim_kill_replays_exactly() {
    assert_eq!(
        replay("real-lifecycle/kill.jsonl", SimConfig::default()).await,
        Vec::<String>::new()
    );
}

/// The unmodified 3.19.1 shim on the 4.1.0 agent: the first 300 of its ~174k reads after the
/// output's end, each answered with an empty OK (the spin that hangs `ctr run`).
#[tokio::test]
async fn unmodified_3_19_1_shim_spin_replays_exactly() {
    assert_eq!(
        replay(
            "real-lifecycle/echo-unmodified-shim.jsonl",
            SimConfig::default()
        )
        .await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn runtime_rs_echo_replays_exactly() {
    assert_eq!(
        replay("real-lifecycle-rs/echo.jsonl", SimConfig::default()).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn old_agent_profile_differs_exactly_where_the_release_did() {
    let v: sim_agent::AgentVersion = "3.19.1".parse().unwrap();
    let mismatches = replay("real-lifecycle/echo.jsonl", SimConfig::for_version(v)).await;
    // GetGuestDetails reports 3.19.1 instead of 4.1.0, and the reads that hit end of stream
    // answer INTERNAL "eof" instead of an empty OK: nothing else differs.
    assert_eq!(mismatches.len(), 3, "{mismatches:#?}");
    assert!(
        mismatches[0].starts_with("GetGuestDetails"),
        "{}",
        mismatches[0]
    );
    for m in &mismatches[1..] {
        assert!(
            m.starts_with("ReadStd") && m.contains("code: 13, message: \"eof\""),
            "{m}"
        );
    }
}

/// runtime-rs pods whose containers are shell one-liners writing their termination message
/// (`tests/data/real-lifecycle-rs/term-*.jsonl`): every answer, including GetDiagnosticData's
/// data, must be the real agent's.
#[rstest::rstest]
#[case::big("term-big")]
#[case::empty("term-empty")]
#[case::fallback("term-fallback")]
#[case::file("term-file")]
#[case::kill("term-kill")]
#[case::utf8("term-utf8")]
#[tokio::test]
async fn runtime_rs_termination_log_pods_replay_exactly(#[case] name: &str) {
    assert_eq!(
        replay(
            &format!("real-lifecycle-rs/{name}.jsonl"),
            SimConfig::default()
        )
        .await,
        Vec::<String>::new()
    );
}
