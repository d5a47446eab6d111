//! Property tests: random input sequences against the core's invariants.
//!
//! - every node in exactly one state, never compiling twice, never more in
//!   flight on a master than its `max_concurrency` ([`Core::audit`] after
//!   every input);
//! - work conservation: when the core stops starting, either nothing is ready
//!   or no master has a free slot;
//! - the starvation bound: a lower lane past its `max_wait` is served
//!   first, and a lower lane that stays ready gets its `min_share` of starts;
//! - per-node coalescing: a node never starts for a facts or exports bump
//!   sooner than `min_urgent_interval` after its last compile ended;
//! - determinism: the same inputs give the same actions, byte for byte.

use std::time::Duration;

use proptest::prelude::*;
use scheduler::core::{
    Blocked, BumpReason, Core, CoreConfig, Finished, GateConfig, Lane, LoadSample, MasterId,
    MasterSpec, NodeId, NodeState, Outcome, Poll, Reason, Time,
};

const CASES: u32 = 256;

#[derive(Clone, Debug)]
enum Op {
    AddNode(u8),
    RemoveNode(u16),
    Bump(u16, u8),
    Deploy(u8),
    Finish(u16, u8),
    AddMaster(u8),
    RemoveMaster(u8),
    SetUp(u8, bool),
    Load(u8, u8),
    Advance(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(Op::AddNode),
        1 => any::<u16>().prop_map(Op::RemoveNode),
        4 => (any::<u16>(), any::<u8>()).prop_map(|(n, r)| Op::Bump(n, r)),
        1 => any::<u8>().prop_map(Op::Deploy),
        6 => (any::<u16>(), any::<u8>()).prop_map(|(n, o)| Op::Finish(n, o)),
        1 => any::<u8>().prop_map(Op::AddMaster),
        1 => any::<u8>().prop_map(Op::RemoveMaster),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(m, up)| Op::SetUp(m, up)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(m, l)| Op::Load(m, l)),
        3 => (0u32..120_000).prop_map(Op::Advance),
    ]
}

const ENVS: [&str; 3] = ["production", "staging", "dev"];

/// `interval_secs`: cycle pacing, `None` for the cycle switched off.
fn config(interval_secs: Option<u64>, share: f64, max_wait: Option<u64>) -> CoreConfig {
    let mut c = CoreConfig {
        min_cycle_interval: interval_secs.map(Duration::from_secs),
        ..CoreConfig::default()
    };
    c.backoff.base = Duration::from_secs(5);
    c.backoff.max = Duration::from_secs(60);
    c.lanes.cycle.min_share = share;
    c.lanes.deploy.min_share = share / 2.0;
    c.lanes.cycle.max_wait = max_wait.map(Duration::from_secs);
    c.lanes.deploy.max_wait = max_wait.map(|w| Duration::from_secs(w * 2));
    c
}

/// Drives a core with an op sequence and records everything it answers.
struct Harness {
    core: Core,
    now: Time,
    nodes: Vec<NodeId>,
    running: Vec<(NodeId, MasterId)>,
    masters: Vec<MasterId>,
    load_gate: bool,
    log: Vec<String>,
    /// The end of each node's last compile that gave a catalog (a retry of
    /// one that did not, or of one interrupted, is the same bump).
    compiled: std::collections::HashMap<NodeId, Time>,
}

impl Harness {
    fn new(config: CoreConfig, seed: u64, load_gate: bool) -> Harness {
        let core = Core::new(config, seed).expect("valid");
        let mut h = Harness {
            core,
            now: Time::ZERO,
            nodes: Vec::new(),
            running: Vec::new(),
            masters: Vec::new(),
            load_gate,
            log: Vec::new(),
            compiled: std::collections::HashMap::new(),
        };
        h.apply(&Op::AddMaster(2));
        h
    }

    fn spec(&self, slots: u8) -> MasterSpec {
        MasterSpec::new(
            1 + u32::from(slots % 4),
            GateConfig {
                max_concurrency: 1 + u32::from(slots % 4),
                max_load_per_core: if self.load_gate { 1.5 } else { 0.0 },
                start_rate: if self.load_gate { 0.5 } else { 0.0 },
                ..GateConfig::default()
            },
        )
    }

    fn pick<T: Copy>(list: &[T], i: usize) -> Option<T> {
        (!list.is_empty()).then(|| list[i % list.len()])
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        let entry = match *op {
            Op::AddNode(env) => {
                let id = self
                    .core
                    .add_node(now, ENVS[env as usize % 3])
                    .expect("add");
                self.nodes.push(id);
                self.compiled.remove(&id);
                format!("add {id}")
            }
            Op::RemoveNode(i) => match Self::pick(&self.nodes, i.into()) {
                Some(id) => {
                    let r = self.core.remove_node(now, id).expect("remove live node");
                    self.nodes.retain(|&n| n != id);
                    format!("remove {id} {r:?}")
                }
                None => "noop".into(),
            },
            Op::Bump(i, r) => match Self::pick(&self.nodes, i.into()) {
                Some(id) => {
                    let why = [BumpReason::Facts, BumpReason::Exports, BumpReason::Manual]
                        [r as usize % 3];
                    format!("bump {id} {:?}", self.core.bump(now, id, why))
                }
                None => "noop".into(),
            },
            Op::Deploy(env) => format!("deploy {}", self.core.deploy(now, ENVS[env as usize % 3])),
            Op::Finish(i, o) => match Self::pick(&self.running, i.into()) {
                Some((id, m)) => {
                    let outcome = Outcome::ALL[o as usize % Outcome::ALL.len()];
                    let r = self
                        .core
                        .finish(now, id, m, outcome)
                        .expect("finish of a running compile");
                    self.running.retain(|&(n, _)| n != id);
                    if outcome.succeeded() {
                        self.compiled.insert(id, now);
                    }
                    if r == Finished::Released {
                        assert!(!self.nodes.contains(&id));
                    }
                    format!("finish {id} {r:?}")
                }
                None => "noop".into(),
            },
            Op::AddMaster(slots) => {
                let id = self.core.add_master(now, self.spec(slots)).expect("master");
                self.masters.push(id);
                format!("master+ {id}")
            }
            Op::RemoveMaster(i) => {
                if self.masters.len() <= 1 {
                    return;
                }
                let id = self.masters.remove(i as usize % self.masters.len());
                let requeued = self.core.remove_master(now, id).expect("remove master");
                for n in &requeued {
                    assert_eq!(self.core.state(*n), Some(NodeState::Queued(Lane::Urgent)));
                }
                self.running.retain(|&(_, m)| m != id);
                format!("master- {id} {requeued:?}")
            }
            Op::SetUp(i, up) => match Self::pick(&self.masters, i.into()) {
                Some(m) => {
                    self.core.set_master_up(now, m, up).expect("up/down");
                    format!("up {m} {up}")
                }
                None => "noop".into(),
            },
            Op::Load(i, l) => match Self::pick(&self.masters, i.into()) {
                Some(m) => {
                    let sample = LoadSample {
                        load1: f64::from(l) / 40.0,
                        runnable: (l % 2 == 0).then_some(f64::from(l % 5)),
                    };
                    self.core.report_load(now, m, sample).expect("load");
                    format!("load {m} {l}")
                }
                None => "noop".into(),
            },
            Op::Advance(ms) => {
                self.now = self.now.plus(Duration::from_millis(u64::from(ms)));
                format!("t {}", self.now)
            }
        };
        self.log.push(entry);
        self.core
            .audit()
            .unwrap_or_else(|e| panic!("after {op:?}: {e}"));
        self.drain();
    }

    /// Polls until idle, checking the starvation bound on every start and
    /// work conservation at the end.
    fn drain(&mut self) {
        loop {
            let before = self.core.stats(self.now);
            let overdue = self.overdue_lanes(&before);
            match self.core.poll(self.now) {
                Poll::Start(s) => {
                    assert!(
                        self.running.iter().all(|&(n, _)| n != s.node),
                        "{} started twice",
                        s.node
                    );
                    if !overdue.is_empty() {
                        assert!(
                            overdue.contains(&s.lane),
                            "started from {:?} while {overdue:?} were past their max_wait",
                            s.lane
                        );
                    }
                    let interval = self.core.config().min_urgent_interval;
                    if let (Some(&last), Reason::Facts | Reason::Exports) =
                        (self.compiled.get(&s.node), s.reason)
                    {
                        assert!(
                            self.now >= last.plus(interval),
                            "{} started for {:?} at {:?}, {:?} after its last compile ended\n{}",
                            s.node,
                            s.reason,
                            self.now,
                            self.now.since(last),
                            self.log.join("\n")
                        );
                    }
                    self.running.push((s.node, s.master));
                    self.log.push(format!("start {s:?}"));
                }
                Poll::Idle(why) => {
                    self.log.push(format!("idle {why:?}"));
                    let st = self.core.stats(self.now);
                    let urgent_or_deploy =
                        st.lane(Lane::Urgent).depth + st.lane(Lane::Deploy).depth;
                    match why {
                        Blocked::Empty | Blocked::Paced => {
                            assert_eq!(urgent_or_deploy, 0, "idle as {why:?} with work ready")
                        }
                        Blocked::Concurrency if !self.load_gate => {
                            for m in st.masters.iter().filter(|m| m.up) {
                                assert_eq!(m.in_flight, m.max_concurrency, "a free slot idles");
                            }
                        }
                        Blocked::Down => assert!(st.masters.iter().all(|m| !m.up)),
                        _ => {}
                    }
                    break;
                }
            }
        }
        self.core
            .audit()
            .unwrap_or_else(|e| panic!("after polls: {e}"));
    }

    fn overdue_lanes(&self, st: &scheduler::core::Stats) -> Vec<Lane> {
        let cfg = self.core.config();
        [
            (Lane::Deploy, cfg.lanes.deploy.max_wait),
            (Lane::Cycle, cfg.lanes.cycle.max_wait),
        ]
        .into_iter()
        .filter(|(lane, bound)| {
            bound.is_some_and(|b| st.lane(*lane).depth > 0 && st.lane(*lane).oldest_age > b)
        })
        .map(|(lane, _)| lane)
        .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    /// Each node in exactly one state, never compiling twice, never more in
    /// flight than max_concurrency, no idling with work and free slots, and
    /// lanes past their max_wait served first.
    #[test]
    fn invariants_hold_under_random_inputs(
        ops in prop::collection::vec(op(), 1..300),
        interval in prop_oneof![Just(None), Just(Some(0u64)), (1u64..200).prop_map(Some)],
        share in 0.0f64..0.5,
        max_wait in prop::option::of(1u64..120),
        load_gate in any::<bool>(),
        seed in any::<u64>(),
        urgent_interval in prop_oneof![Just(0u64), 1u64..300],
    ) {
        let mut c = config(interval, share, max_wait);
        c.min_urgent_interval = Duration::from_secs(urgent_interval);
        let mut h = Harness::new(c, seed, load_gate);
        for op in &ops {
            h.apply(op);
        }
        prop_assert_eq!(h.core.node_count(), h.nodes.len());
    }

    /// The same inputs give the same actions, byte for byte; a different
    /// seed may only change backoff times.
    #[test]
    fn same_inputs_same_actions(
        ops in prop::collection::vec(op(), 1..200),
        interval in prop::option::of(0u64..100),
        seed in any::<u64>(),
    ) {
        let run = || {
            let mut h = Harness::new(config(interval, 0.2, Some(60)), seed, true);
            for op in &ops {
                h.apply(op);
            }
            let stats = h.core.stats(h.now);
            (h.log, format!("{stats:?}"))
        };
        prop_assert_eq!(run(), run());
    }

    /// A lower lane that stays ready gets at least its min_share of starts,
    /// however many bumps the urgent lane gets.
    #[test]
    fn min_share_holds_under_bump_storms(
        bumps in prop::collection::vec((any::<u16>(), 0u8..4), 50..400),
        share in 0.05f64..0.5,
        slots in 1u8..4,
    ) {
        let mut c = config(Some(0), share, None);
        c.lanes.deploy.min_share = 0.0;
        let mut core = Core::new(c, 1).expect("valid");
        let m = core.add_master(Time::ZERO, MasterSpec::new(4, GateConfig {
            max_concurrency: u32::from(slots),
            max_load_per_core: 0.0,
            ..GateConfig::default()
        })).expect("master");
        let ids: Vec<NodeId> = (0..64).map(|_| core.add_node(Time::ZERO, "production").expect("add")).collect();
        let mut running: Vec<NodeId> = Vec::new();
        // (starts while the cycle lane was ready, of which from the cycle)
        let (mut window, mut served) = (0u64, 0u64);
        let mut t = Time::ZERO;
        for (i, k) in bumps {
            for j in 0..k {
                let _ = core.bump(t, ids[(usize::from(i) + usize::from(j) * 7) % ids.len()], BumpReason::Facts);
            }
            if let Some(n) = running.first().copied() {
                core.finish(t, n, m, Outcome::Unchanged).expect("finish");
                running.remove(0);
            }
            loop {
                let cycle_ready = core.stats(t).lane(Lane::Cycle).depth > 0;
                match core.poll(t) {
                    Poll::Start(s) => {
                        running.push(s.node);
                        if cycle_ready {
                            window += 1;
                            served += u64::from(s.lane == Lane::Cycle);
                        } else {
                            prop_assert!(served + 1 >= (window as f64 * share).floor() as u64);
                            window = 0;
                            served = 0;
                        }
                    }
                    Poll::Idle(_) => break,
                }
            }
            t = t.plus(Duration::from_secs(1));
        }
        prop_assert!(
            served + 1 >= (window as f64 * share).floor() as u64,
            "cycle got {} of {} starts at share {}", served, window, share
        );
    }
}
