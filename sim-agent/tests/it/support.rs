//! Helpers shared by the integration tests: servers on temp sockets, a raw ttrpc client,
//! and realistic requests.

use std::path::PathBuf;
use std::time::Duration;

use protobuf::Message;
use sim_agent::protocols::agent;
use sim_agent::{Agent, AgentServer, RemoteAgent, SimAgent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A server on a fresh temp directory, listening on `scheme://DIR/agent.sock`.
pub struct TestServer {
    pub _dir: tempfile::TempDir,
    pub server: AgentServer,
    pub path: PathBuf,
}

impl TestServer {
    pub async fn start(agent: SimAgent, scheme: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let url = format!("{scheme}://{}", path.display());
        let server = AgentServer::bind(agent, &[url]).await.unwrap();
        TestServer {
            _dir: dir,
            server,
            path,
        }
    }

    /// A client on the unix socket, with container `cid` created and started running `args`.
    pub async fn client_running(&self, cid: &str, args: &[&str]) -> RemoteAgent {
        let a = RemoteAgent::connect(&self.url("unix")).await.unwrap();
        Agent::create_container(&a, create_req(cid, args))
            .await
            .unwrap();
        Agent::start_container(&a, cid.into()).await.unwrap();
        a
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.path.display())
    }
}

/// A ttrpc client that writes frames by hand, for replay and malformed-input tests.
pub struct RawClient {
    pub stream: UnixStream,
}

/// A decoded response frame.
#[derive(Debug, Clone, PartialEq)]
pub struct RawResponse {
    pub stream_id: u32,
    pub code: i32,
    pub message: String,
    pub payload: Vec<u8>,
}

impl RawResponse {
    /// `(code, message)`, for one-line assertions.
    pub fn status(&self) -> (i32, &str) {
        (self.code, self.message.as_str())
    }
}

impl RawClient {
    pub async fn connect(path: &std::path::Path) -> RawClient {
        RawClient {
            stream: UnixStream::connect(path).await.unwrap(),
        }
    }

    pub async fn send_frame(&mut self, stream_id: u32, kind: u8, payload: &[u8]) {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(&stream_id.to_be_bytes());
        f.push(kind);
        f.push(0);
        f.extend_from_slice(payload);
        self.stream.write_all(&f).await.unwrap();
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn send_request(
        &mut self,
        stream_id: u32,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout_nano: i64,
        metadata: &[(String, String)],
    ) {
        let mut req = ttrpc::Request::new();
        req.service = service.into();
        req.method = method.into();
        req.payload = payload;
        req.timeout_nano = timeout_nano;
        for (k, v) in metadata {
            let mut kv = ttrpc::proto::KeyValue::new();
            kv.key = k.clone();
            kv.value = v.clone();
            req.metadata.push(kv);
        }
        self.send_frame(stream_id, 1, &req.write_to_bytes().unwrap())
            .await;
    }

    /// Sends a WaitProcess for `cid`/`eid` with no deadline (its answer is read later).
    pub async fn send_wait_process(&mut self, stream_id: u32, cid: &str, eid: &str) {
        let req = agent::WaitProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            ..Default::default()
        };
        self.send_request(
            stream_id,
            "grpc.AgentService",
            "WaitProcess",
            req.write_to_bytes().unwrap(),
            0,
            &[],
        )
        .await;
    }

    /// Sends an empty request with no deadline and reads the next answer, which must come
    /// (within the test bound) and must be for that stream.
    pub async fn call(&mut self, stream_id: u32, service: &str, method: &str) -> RawResponse {
        self.send_request(stream_id, service, method, vec![], 0, &[])
            .await;
        let r = bounded(self.read_response())
            .await
            .expect("the server closed the connection");
        assert_eq!(r.stream_id, stream_id, "an answer for another stream");
        r
    }

    /// Reads one response frame; `None` when the server closed the connection.
    pub async fn read_response(&mut self) -> Option<RawResponse> {
        let mut h = [0u8; 10];
        self.stream.read_exact(&mut h).await.ok()?;
        let len = u32::from_be_bytes(h[0..4].try_into().unwrap()) as usize;
        let stream_id = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await.ok()?;
        let resp = ttrpc::Response::parse_from_bytes(&body).unwrap();
        let status = resp.status.clone().unwrap_or_default();
        Some(RawResponse {
            stream_id,
            code: status.code.value(),
            message: status.message.clone(),
            payload: resp.payload,
        })
    }
}

pub use sim_agent::requests::{create_container as create_req, with_termination_log};

/// Bounds a future in tests that must not hang.
pub async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test step timed out")
}
