//! RPC latency: `Health.Check` in-process against the same call over a unix socket.

use criterion::{Criterion, criterion_group, criterion_main};
use sim_agent::{Agent, AgentServer, RemoteAgent, SimAgent};

fn check(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let sim = SimAgent::new().expect("guest root");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("unix://{}", dir.path().join("agent.sock").display());
    let (server, remote) = rt.block_on(async {
        let server = AgentServer::bind(sim.clone(), std::slice::from_ref(&url))
            .await
            .expect("bind");
        let remote = RemoteAgent::connect(&url).await.expect("connect");
        (server, remote)
    });
    let mut group = c.benchmark_group("check");
    group.bench_function("in_process", |b| {
        b.to_async(&rt)
            .iter(|| async { sim.check().await.expect("check") })
    });
    group.bench_function("unix", |b| {
        b.to_async(&rt)
            .iter(|| async { remote.check().await.expect("check") })
    });
    group.finish();
    rt.block_on(server.shutdown());
}

criterion_group!(benches, check);
criterion_main!(benches);
