//! Fault-engine overhead: `Health.Check` in-process with 0, 10 and 1,000 installed rules that
//! cannot match it (other targets). Target: at most 5% slower at 1,000 rules than at 0.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sim_agent::fault::FaultEngine;
use sim_agent::{Agent, Method, SimAgent};

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("fault_overhead");
    for rules in [0usize, 10, 1_000] {
        let sim = SimAgent::new().expect("guest root");
        let engine = FaultEngine::new(1);
        // Rules on every other RPC that records a container id, with filters so each is
        // distinct (a filter key must be one the target records).
        let targets: Vec<&str> = Method::ALL
            .iter()
            .filter(|m| m.key_fields().contains(&"container_id"))
            .map(|m| m.wire_name())
            .filter(|n| *n != "Check")
            .collect();
        for i in 0..rules {
            let target = targets[i % targets.len()];
            engine
                .add(&format!("{target}{{container_id=c{i}}}=error(INTERNAL)"))
                .expect("rule");
        }
        sim.set_fault_hook(Arc::new(engine));
        group.bench_with_input(BenchmarkId::new("check", rules), &rules, |b, _| {
            b.to_async(&rt)
                .iter(|| async { sim.check().await.expect("check") })
        });
    }
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
