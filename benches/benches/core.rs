//! Criterion benchmarks of the scheduling core at production scale:
//! 1,000,000 nodes, 8 masters of 16 slots.
//!
//! - `bump_random_node`: a used fact changed on a random node in the cycle
//!   lane (it moves to the urgent lane). Measured in chunks of 100,000
//!   bumps; between chunks (untimed) the bumped nodes compile and go back to
//!   the cycle, so every timed bump is a real move, never a no-op.
//! - `start_finish_round_trip`: one compile started from the cycle lane and
//!   one finished, with every slot busy (steady state).
//! - `deploy_100k_nodes`: a code deploy to an environment of 100,000 nodes
//!   (of the million), on a fresh copy of the settled core each time.
//!
//! Memory per node is measured by `cargo run --release -p benches --bin
//! core-memory` (a counting allocator; criterion measures time only).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::settled_fleet;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scheduler::core::{BumpReason, Lane, NodeId, Outcome, Poll, Time};

const NODES: usize = 1_000_000;
const CHUNK: u64 = 100_000;

fn bench_core(c: &mut Criterion) {
    let (mut core, _masters, mut now) = settled_fleet(NODES, 10);
    let ids: Vec<NodeId> = core.node_ids().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(9);

    let mut group = c.benchmark_group("core_1m_nodes_8_masters");
    group.throughput(Throughput::Elements(1));

    group.bench_function("bump_random_node", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK);
                let picks: Vec<NodeId> = (0..n)
                    .map(|_| ids[rng.random_range(0..ids.len())])
                    .collect();
                let t0 = Instant::now();
                for &id in &picks {
                    now = now.plus(Duration::from_micros(1));
                    black_box(core.bump(now, id, BumpReason::Facts).ok());
                }
                timed += t0.elapsed();
                left -= n;
                // untimed: compile the bumped nodes so they return to the cycle
                while core.stats(now).lane(Lane::Urgent).depth > 0 {
                    let mut batch = Vec::new();
                    while let Poll::Start(s) = core.poll(now) {
                        batch.push(s);
                    }
                    for s in batch {
                        let _ = core.finish(now, s.node, s.master, Outcome::Unchanged);
                    }
                }
            }
            timed
        })
    });

    group.bench_function("start_finish_round_trip", |b| {
        // fill every slot, then each iteration finishes the oldest compile
        // and starts the next one
        let mut running = VecDeque::new();
        while let Poll::Start(s) = core.poll(now) {
            running.push_back(s);
        }
        b.iter(|| {
            now = now.plus(Duration::from_micros(1));
            if let Some(s) = running.pop_front() {
                black_box(core.finish(now, s.node, s.master, Outcome::Unchanged).ok());
            }
            if let Poll::Start(s) = core.poll(now) {
                running.push_back(s);
            }
        });
        for s in running {
            let _ = core.finish(now, s.node, s.master, Outcome::Unchanged);
        }
    });

    group.throughput(Throughput::Elements(100_000));
    group.sample_size(20);
    group.bench_function("deploy_100k_nodes", |b| {
        b.iter_batched(
            || core.clone(),
            |mut fresh| {
                let moved = fresh.deploy(now.plus(Duration::from_secs(1)), "env3");
                assert_eq!(moved, 100_000);
                fresh
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    black_box(Time::ZERO);
}

criterion_group!(benches, bench_core);
criterion_main!(benches);
