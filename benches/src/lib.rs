//! Shared set-up for the benchmarks: a core holding a large fleet, settled
//! so that every node has compiled once and waits in the cycle lane, as in
//! production.

use scheduler::core::{
    Core, CoreConfig, GateConfig, Lane, MasterId, MasterSpec, Outcome, Poll, Time,
};

/// Masters in the benchmark fleet.
pub const MASTERS: usize = 8;
/// Compile slots per master.
pub const SLOTS: u32 = 16;

/// A master with a live load gate (high limit, so it computes but never
/// blocks) and no rate limit.
pub fn master_spec() -> MasterSpec {
    MasterSpec::new(
        32,
        GateConfig {
            max_concurrency: SLOTS,
            max_load_per_core: 1000.0,
            ..GateConfig::default()
        },
    )
}

/// A core with `nodes` nodes spread over `envs` environments and
/// [`MASTERS`] masters, every node compiled once and back in the cycle lane.
/// Returns the core, its masters and the time reached.
pub fn settled_fleet(nodes: usize, envs: usize) -> (Core, Vec<MasterId>, Time) {
    let mut core = Core::new(CoreConfig::default(), 1).expect("default config is valid");
    let mut now = Time::ZERO;
    let masters: Vec<MasterId> = (0..MASTERS)
        .map(|_| core.add_master(now, master_spec()).expect("master"))
        .collect();
    let names: Vec<String> = (0..envs.max(1)).map(|e| format!("env{e}")).collect();
    for i in 0..nodes {
        core.add_node(now, &names[i % names.len()]).expect("node");
    }
    // compile every node once (the cycle lane takes its share meanwhile)
    while core.stats(now).lane(Lane::Urgent).depth > 0 {
        let mut batch = Vec::new();
        while let Poll::Start(s) = core.poll(now) {
            batch.push(s);
        }
        now = now.plus(std::time::Duration::from_micros(1));
        for s in batch {
            core.finish(now, s.node, s.master, Outcome::Changed)
                .expect("finish");
        }
    }
    (core, masters, now)
}
