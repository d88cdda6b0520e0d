//! The bodies of kata-sim's fuzz targets.
//!
//! Each function takes the fuzzer's bytes, feeds them to one input surface of kata-sim through
//! its public API, and panics if the result breaks a property (beyond "no panic": answers
//! that decode, bounded output, nothing left on disk). The cargo-fuzz targets in `fuzz/`
//! call them, and so does this crate's corpus-replay test (`tests/replay.rs`), which CI runs
//! on the stable toolchain over every file in `fuzz/corpus/<target>/`.
//!
//! | target      | surface |
//! |-------------|---------|
//! | `frame`     | raw bytes on an agent connection: ttrpc framing, envelopes, dispatch |
//! | `dispatch`  | a fault rule, then a sequence of well-formed calls built from the bytes |
//! | `handshake` | the hybrid-vsock `CONNECT <port>` handshake |
//! | `scenario`  | the scenario loader (`kata_sim::load::parse`) and its error rendering |
//! | `rule`      | the fault-rule grammar and the engine's decisions |
//! | `sh`        | the guest userland's `sh -c` parser |

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use sim_agent::fault::{CallInfo, FaultEngine, FaultHook as _, Rule, Verdict};
use sim_agent::protocols::agent;
use sim_agent::server::transport::accept_handshake;
use sim_agent::{AgentServer, Method, SimAgent, requests};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fuzz body.
pub type Body = fn(&[u8]);

/// Every target: its name (the directory under `fuzz/corpus/`) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("frame", frame),
    ("dispatch", dispatch),
    ("handshake", handshake),
    ("scenario", scenario),
    ("rule", rule),
    ("sh", sh),
];

/// Largest ttrpc payload (as `sim_agent`'s frame reader enforces).
const MAX_PAYLOAD: usize = 4 << 20;

/// How long (virtual) a connection is left to settle after its input is written.
const SETTLE: Duration = Duration::from_secs(600);

/// The most a bounded wait may take (virtual time: the clock is paused).
const LIMIT: Duration = Duration::from_secs(3600);

/// A current-thread runtime on a paused clock: sleeps, delays and timeouts pass at once
/// when nothing else can run, so an input that waits costs no real time.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime")
}

/// One response frame read back from the server.
#[derive(Debug)]
struct Answer {
    stream_id: u32,
    kind: u8,
    body: Vec<u8>,
}

/// Splits the server's output into frames; panics on a malformed one.
fn answers(out: &[u8]) -> Vec<Answer> {
    let mut rest = out;
    let mut found = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 10, "a truncated response header: {rest:?}");
        let len = u32::from_be_bytes(rest[0..4].try_into().unwrap()) as usize;
        assert!(len <= MAX_PAYLOAD, "a response of {len} bytes");
        assert!(rest.len() >= 10 + len, "a truncated response body");
        found.push(Answer {
            stream_id: u32::from_be_bytes(rest[4..8].try_into().unwrap()),
            kind: rest[8],
            body: rest[10..10 + len].to_vec(),
        });
        rest = &rest[10 + len..];
    }
    found
}

/// The stream ids of the frames in `input`, as the server's reader would delimit them
/// (partial frames included): each can be answered at most once.
fn frame_ids(input: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut at = 0usize;
    while let Some(h) = input.get(at..at + 10) {
        let len = u32::from_be_bytes(h[0..4].try_into().unwrap()) as usize;
        ids.push(u32::from_be_bytes(h[4..8].try_into().unwrap()));
        at = at.saturating_add(10).saturating_add(len);
    }
    ids
}

/// Serves `agent` on one in-memory connection, writes `input`, lets the calls settle, hangs
/// up and returns every byte the server wrote. Panics if the server writes without bound,
/// keeps the connection open after the hang-up, does not shut down, or leaves the guest's
/// root behind.
fn serve(agent: SimAgent, input: &[u8]) -> Vec<u8> {
    let root = agent.guest_root();
    let rt = runtime();
    let out = rt.block_on(async move {
        let mut server = AgentServer::new(agent);
        let (client, conn) = tokio::io::duplex(64 << 10);
        server.serve_connection(Box::new(conn));
        let (mut rd, mut wr) = tokio::io::split(client);
        let read = async {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return out,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
                // Each frame gets at most one answer of at most 4 MiB.
                let bound = (frame_ids(input).len() + 1) * (MAX_PAYLOAD + 10);
                assert!(out.len() <= bound, "the server wrote {} bytes", out.len());
            }
        };
        let write = async {
            // A server that stops reading (a bound on calls in flight) may leave this blocked.
            let _ = tokio::time::timeout(LIMIT, wr.write_all(input)).await;
            tokio::time::sleep(SETTLE).await;
            let _ = wr.shutdown().await;
            drop(wr);
        };
        let (out, ()) = tokio::join!(
            async {
                tokio::time::timeout(LIMIT, read)
                    .await
                    .expect("the connection stayed open after the client hung up")
            },
            write
        );
        tokio::time::timeout(LIMIT, server.shutdown())
            .await
            .expect("the server did not shut down");
        out
    });
    drop(rt);
    assert!(!root.exists(), "the guest root {root:?} was left behind");
    out
}

/// Checks the server's answers to `input`: whole frames, responses only, each on a stream
/// the input opened and at most once per frame; every body a ttrpc `Response` unless a
/// fault may have corrupted it.
fn check_answers(input: &[u8], out: &[u8], may_corrupt: bool) {
    let mut ids = frame_ids(input);
    for a in answers(out) {
        assert_eq!(a.kind, 2, "an answer that is not a response: {a:?}");
        let Some(i) = ids.iter().position(|&id| id == a.stream_id) else {
            panic!("an answer on stream {} that no frame opened", a.stream_id);
        };
        ids.remove(i);
        if !may_corrupt {
            ttrpc::Response::parse_from_bytes(&a.body).expect("an answer that does not decode");
        }
    }
}

/// `frame`: the bytes go to an agent connection as they are (after the handshake, where
/// there is one): framing, the ttrpc envelope, service and method lookup, each RPC's
/// request decoding and the model behind it.
pub fn frame(data: &[u8]) {
    let agent = SimAgent::new().expect("guest root");
    let out = serve(agent, data);
    check_answers(data, &out, false);
}

/// Reads the structured input of [`dispatch`].
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8().unwrap_or(0)) << 8 | u16::from(self.u8().unwrap_or(0))
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) << 16 | u32::from(self.u16())
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b.to_vec()
    }
    /// A string of up to 255 bytes (length first).
    fn string(&mut self) -> String {
        let n = usize::from(self.u8().unwrap_or(0));
        String::from_utf8_lossy(&self.bytes(n)).into_owned()
    }
    /// One of four container ids.
    fn container(&mut self) -> String {
        format!("c{}", self.u8().unwrap_or(0) % 4)
    }
}

/// One request frame.
fn request_frame(stream_id: u32, service: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
    let mut req = ttrpc::Request::new();
    req.service = service.into();
    req.method = method.into();
    req.payload = payload;
    let body = req.write_to_bytes().expect("encode");
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&stream_id.to_be_bytes());
    f.extend_from_slice(&[1, 0]);
    f.extend_from_slice(&body);
    f
}

/// One call of [`dispatch`]'s input: `(method, payload)`.
fn next_call(b: &mut Bytes<'_>) -> Option<(Method, Vec<u8>)> {
    let op = b.u8()?;
    let enc = |m: &dyn protobuf::MessageDyn| m.write_to_bytes_dyn().expect("encode");
    Some(match op % 14 {
        0 => {
            let m = Method::ALL[usize::from(b.u8().unwrap_or(0)) % Method::ALL.len()];
            let n = usize::from(b.u16());
            (m, b.bytes(n))
        }
        1 => (
            Method::CreateSandbox,
            enc(&requests::create_sandbox(&b.string())),
        ),
        2 => {
            let cid = b.container();
            let script = b.string();
            let req = requests::create_container(&cid, &["sh", "-c", &script]);
            (Method::CreateContainer, enc(&req))
        }
        3 => (
            Method::StartContainer,
            enc(&agent::StartContainerRequest {
                container_id: b.container(),
                ..Default::default()
            }),
        ),
        4 => {
            let cid = b.container();
            (
                Method::WaitProcess,
                enc(&agent::WaitProcessRequest {
                    exec_id: cid.clone(),
                    container_id: cid,
                    ..Default::default()
                }),
            )
        }
        5 => {
            let cid = b.container();
            (
                Method::WriteStdin,
                enc(&agent::WriteStreamRequest {
                    exec_id: cid.clone(),
                    container_id: cid,
                    data: b.string().into_bytes(),
                    ..Default::default()
                }),
            )
        }
        6 => {
            let cid = b.container();
            let stderr = b.u8().unwrap_or(0) % 2 == 1;
            (
                if stderr {
                    Method::ReadStderr
                } else {
                    Method::ReadStdout
                },
                enc(&agent::ReadStreamRequest {
                    exec_id: cid.clone(),
                    container_id: cid,
                    len: u32::from(b.u16()),
                    ..Default::default()
                }),
            )
        }
        7 => (
            Method::SignalProcess,
            enc(&agent::SignalProcessRequest {
                container_id: b.container(),
                signal: u32::from(b.u8().unwrap_or(9)),
                ..Default::default()
            }),
        ),
        8 => (
            Method::CopyFile,
            enc(&agent::CopyFileRequest {
                path: b.string(),
                file_mode: b.u32(),
                dir_mode: 0o755,
                offset: i64::from(b.u16()),
                file_size: i64::from(b.u16()),
                data: b.string().into_bytes(),
                ..Default::default()
            }),
        ),
        9 => (
            Method::RemoveContainer,
            enc(&agent::RemoveContainerRequest {
                container_id: b.container(),
                ..Default::default()
            }),
        ),
        10 => (
            Method::DestroySandbox,
            enc(&agent::DestroySandboxRequest::new()),
        ),
        11 => {
            let cid = b.container();
            (
                Method::CloseStdin,
                enc(&agent::CloseStdinRequest {
                    exec_id: cid.clone(),
                    container_id: cid,
                    ..Default::default()
                }),
            )
        }
        12 => {
            let cid = b.container();
            let exec_id = b.string();
            let script = b.string();
            let process = requests::create_container(&cid, &["sh", "-c", &script])
                .OCI
                .unwrap_or_default()
                .Process;
            (
                Method::ExecProcess,
                enc(&agent::ExecProcessRequest {
                    container_id: cid,
                    exec_id,
                    process,
                    ..Default::default()
                }),
            )
        }
        _ => (
            Method::GetDiagnosticData,
            enc(&agent::GetDiagnosticDataRequest {
                container_id: b.container(),
                log_type: "termination_log".into(),
                ..Default::default()
            }),
        ),
    })
}

/// `dispatch`: a fault rule (a length byte, then its text; installed if it parses), then
/// calls built from the bytes, each a well-formed frame on its own odd stream: raw payloads
/// for any RPC, and the pod lifecycle's calls (CreateContainer running `sh -c` with a fuzzed
/// script, stdio, signals, CopyFile with fuzzed paths and modes, removal, DestroySandbox).
/// Reaches the model and the userland far more often than raw bytes do.
pub fn dispatch(data: &[u8]) {
    let mut b = Bytes(data);
    let rule_len = usize::from(b.u8().unwrap_or(0));
    let rule = String::from_utf8_lossy(&b.bytes(rule_len)).into_owned();
    let agent = SimAgent::new().expect("guest root");
    let mut faulted = false;
    if !rule.is_empty() {
        let engine = FaultEngine::new(0);
        if engine.add(&rule).is_ok() {
            agent.set_fault_hook(Arc::new(engine));
            faulted = true;
        }
    }
    let mut input = Vec::new();
    let mut stream_id = 1u32;
    while let Some((method, payload)) = next_call(&mut b) {
        input.extend(request_frame(
            stream_id,
            method.service().wire_name(),
            method.wire_name(),
            payload,
        ));
        stream_id += 2;
    }
    let out = serve(agent, &input);
    check_answers(&input, &out, faulted);
}

/// `handshake`: the server side of the hybrid-vsock handshake. It accepts exactly a first
/// line `CONNECT <u32>` (any case, surrounding blanks), answers `OK <port>\n`, and consumes
/// nothing after that line (the ttrpc bytes that follow stay for the connection).
pub fn handshake(data: &[u8]) {
    let rt = runtime();
    rt.block_on(async {
        // The whole input fits in the pipe; the hang-up ends a line that never comes.
        let (client, mut server) = tokio::io::duplex(data.len() + 64);
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(data)
            .await
            .expect("the input fits in the pipe");
        let _ = wr.shutdown().await;
        drop(wr);
        let result = tokio::time::timeout(LIMIT, accept_handshake(&mut server))
            .await
            .expect("the handshake did not end");
        let line_end = data.iter().position(|&b| b == b'\n');
        match result {
            Ok(port) => {
                let end = line_end.expect("accepted without a complete line");
                let line = String::from_utf8_lossy(&data[..end]);
                let words: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(words.len(), 2, "accepted {line:?}");
                assert!(
                    words[0].eq_ignore_ascii_case("connect"),
                    "accepted {line:?}"
                );
                assert_eq!(
                    words[1].parse::<u32>().ok(),
                    Some(port),
                    "accepted {line:?}"
                );
                // What follows the line is still unread.
                let mut rest = Vec::new();
                let _ = server.read_to_end(&mut rest).await;
                assert_eq!(rest, &data[end + 1..], "the handshake read past its line");
                let _ = server.shutdown().await;
                let mut reply = Vec::new();
                let _ = rd.read_to_end(&mut reply).await;
                assert_eq!(reply, format!("OK {port}\n").as_bytes());
            }
            Err(_) => {
                if let Some(end) = line_end.filter(|&end| end < 64) {
                    let line = String::from_utf8_lossy(&data[..end]);
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let valid = words.len() == 2
                        && words[0].eq_ignore_ascii_case("connect")
                        && words[1].parse::<u32>().is_ok();
                    assert!(!valid, "refused a valid handshake {line:?}");
                }
            }
        }
    });
}

/// `scenario`: the scenario loader on the bytes as a YAML file: it loads or fails with a
/// located error that renders (line and column inside the text).
pub fn scenario(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = kata_sim::load::parse(Path::new("fuzz.yaml"), &text) {
        let rendered = e.to_string();
        assert!(!rendered.is_empty());
        assert!(
            e.line <= kata_sim::load::yaml_lines(&text).count().max(1) + 1,
            "error line {} beyond the text",
            e.line
        );
    }
}

/// The key fields calls carry (`sim_agent`'s `KeyFields`), for the calls `rule` makes up.
const KEY_FIELDS: &[&str] = &[
    "container_id",
    "exec_id",
    "timeout",
    "signal",
    "log_type",
    "len",
    "row",
    "column",
    "is_ipv6",
    "sandbox_id",
    "hostname",
    "wait",
    "nb_cpus",
    "cpu_only",
    "mem_block_size",
    "mem_hotplug_probe",
    "Sec",
    "Usec",
    "path",
    "volume_guest_path",
    "size",
    "service",
    "offset",
    "file_size",
];

/// `rule`: the fault-rule grammar. A rule that parses keeps its text, has chances within
/// 0..=100, and the engine decides calls that match it (three times, through its counts)
/// without panicking; an error names a column inside the rule.
pub fn rule(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match text.parse::<Rule>() {
        Ok(rule) => {
            assert_eq!(
                rule.to_string(),
                text.trim(),
                "a rule's text is what was parsed"
            );
            for t in &rule.chain {
                assert!(
                    (0.0..=100.0).contains(&t.percent),
                    "chance {} out of range",
                    t.percent
                );
            }
            let engine = FaultEngine::new(7);
            engine.add(&text).expect("a parsed rule installs");
            let target = match rule.target {
                sim_agent::fault::rule::Target::Any => "Check",
                t => t.name(),
            };
            // The call carries the fields the filters name, so the rule matches it.
            let fields: Vec<(&'static str, String)> = rule
                .filters
                .iter()
                .filter_map(|(k, v)| Some((*KEY_FIELDS.iter().find(|f| *f == k)?, v.clone())))
                .collect();
            let sandbox = rule
                .filters
                .iter()
                .find(|(k, _)| k == "sandbox")
                .map(|(_, v)| v.as_str());
            let rt = runtime();
            for _ in 0..3 {
                let verdict = engine.decide(&CallInfo {
                    target,
                    request: "FuzzRequest",
                    fields: &fields,
                    conn: Some(1),
                    sandbox,
                });
                if let Verdict::Delay(d) = verdict {
                    // Waiting it out on the paused clock must not overflow.
                    rt.block_on(async { tokio::time::sleep(d).await });
                }
                let _ = verdict.describe();
            }
        }
        Err(e) => {
            assert!(
                e.column >= 1 && e.column <= text.chars().count() + 1,
                "column {} outside the rule",
                e.column
            );
            let _ = e.to_string();
        }
    }
}

/// `sh`: the userland's `sh -c` parser: a script parses, or fails with an error, and the
/// program decision made from a process's argv agrees.
pub fn sh(data: &[u8]) {
    let src = String::from_utf8_lossy(data);
    let _ = sim_agent::sim::shell::parse(&src);
    let words: Vec<String> = src.split_whitespace().map(String::from).collect();
    if !words.is_empty() {
        let _ = sim_agent::sim::shell::direct(&words);
    }
    let argv = ["sh".to_string(), "-c".to_string(), src.into_owned()];
    let _ = sim_agent::sim::program::Builtin::parse(&argv);
}
