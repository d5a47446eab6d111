//! Criterion benchmarks of the simulator's engine: events per second over
//! whole runs of the shipped scenarios, per policy.
//!
//! - `example/queue`, `example/on-demand`: the 400-node example, 12 h;
//! - `mmc/queue`: the M/M/c scenario (c = 4, lambda = 2.4, mu = 0.7,
//!   200,000 jobs through `scheduler::core`).
//!
//! Throughput is reported in engine events per second.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use simulator::policy::Policy;
use simulator::run::{run, RunSpec};
use simulator::scenario::Scenario;

fn scenario(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scenarios/{name}.toml"));
    match Scenario::load(&path) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn bench_engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulator_events");
    group.sample_size(10);
    for (name, policy) in [
        ("example", Policy::Queue),
        ("example", Policy::OnDemand),
        ("mmc", Policy::Queue),
    ] {
        let s = scenario(name);
        let spec = RunSpec::of(&s, policy);
        let events = run(&spec).map(|r| r.events).unwrap_or(1);
        group.throughput(Throughput::Elements(events));
        group.bench_function(format!("{name}/{}", policy.name()), |b| {
            b.iter(|| black_box(run(&spec).map(|r| r.events)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_engine);
criterion_main!(benches);
