//! One test (or a few) per rule of DESIGN.md "Core semantics", through the
//! core's public API only. ARCHITECTURE.md points here rule by rule.

use std::time::Duration;

use scheduler::core::{
    Blocked, BumpReason, Bumped, Core, CoreConfig, CoreError, Finished, GateConfig, Lane,
    LoadSample, MasterId, MasterSpec, NodeId, NodeState, Outcome, Poll, Reason, Start, Time,
};

fn secs(s: u64) -> Time {
    Time::from_secs(s)
}

/// A gate with only a concurrency limit.
fn slots(n: u32) -> MasterSpec {
    MasterSpec::new(
        4,
        GateConfig {
            max_concurrency: n,
            max_load_per_core: 0.0,
            ..GateConfig::default()
        },
    )
}

/// The defaults without per-node coalescing, for the rules of bumps and
/// lanes themselves (coalescing has its own tests below).
fn unheld() -> CoreConfig {
    CoreConfig {
        min_urgent_interval: Duration::ZERO,
        ..CoreConfig::default()
    }
}

fn core_with(config: CoreConfig) -> Core {
    Core::new(config, 42).expect("valid config")
}

/// Drains every start the core allows at `now`.
fn starts(core: &mut Core, now: Time) -> Vec<Start> {
    let mut out = Vec::new();
    while let Poll::Start(s) = core.poll(now) {
        out.push(s);
    }
    core.audit().expect("invariants hold");
    out
}

fn nodes_of(starts: &[Start]) -> Vec<NodeId> {
    starts.iter().map(|s| s.node).collect()
}

fn add(core: &mut Core, n: usize, env: &str, now: Time) -> Vec<NodeId> {
    (0..n)
        .map(|_| core.add_node(now, env).expect("added"))
        .collect()
}

/// Compiles every node once so they all sit in the cycle lane.
fn settle(core: &mut Core, master: MasterId, now: Time) {
    loop {
        let batch = starts(core, now);
        if batch.is_empty() || batch.iter().all(|s| s.lane == Lane::Cycle) {
            for s in batch {
                core.finish(now, s.node, master, Outcome::Unchanged)
                    .expect("finish");
            }
            if core.stats(now).lane(Lane::Urgent).depth == 0 {
                return;
            }
            continue;
        }
        for s in batch {
            core.finish(now, s.node, master, Outcome::Changed)
                .expect("finish");
        }
    }
}

// ----- node states and lanes ---------------------------------------------

#[test]
fn a_new_node_is_urgent_and_compiles_first() {
    let mut core = core_with(CoreConfig::default());
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let n = core.add_node(secs(0), "production").expect("node");
    assert_eq!(core.state(n), Some(NodeState::Queued(Lane::Urgent)));
    let s = starts(&mut core, secs(1));
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].node, s[0].master, s[0].reason, s[0].lane),
        (n, m, Reason::New, Lane::Urgent)
    );
    assert_eq!(s[0].waited, Duration::from_secs(1));
    assert_eq!(s[0].deadline, secs(1).plus(Duration::from_secs(600)));
    assert_eq!(core.state(n), Some(NodeState::Compiling(m)));
}

#[test]
fn finished_nodes_go_to_the_back_of_the_cycle_and_cycle_round_robin() {
    let mut core = core_with(CoreConfig::default());
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let ids = add(&mut core, 3, "production", secs(0));
    let mut order = Vec::new();
    for t in 1..=9 {
        let s = starts(&mut core, secs(t));
        assert_eq!(s.len(), 1, "one slot, one start at a time");
        order.push(s[0].node);
        let next = core
            .finish(secs(t), s[0].node, m, Outcome::Unchanged)
            .expect("finish");
        assert_eq!(next, Finished::Next(NodeState::Queued(Lane::Cycle)));
    }
    let expected: Vec<NodeId> = ids.iter().cycle().take(9).copied().collect();
    assert_eq!(order, expected);
}

#[test]
fn cycle_pacing_waits_min_cycle_interval_but_bumps_do_not() {
    let config = CoreConfig {
        min_cycle_interval: Some(Duration::from_secs(60)),
        ..unheld()
    };
    let mut core = core_with(config);
    let m = core.add_master(secs(0), slots(4)).expect("master");
    let [a, b] = add(&mut core, 2, "production", secs(0))[..] else {
        unreachable!()
    };
    for s in starts(&mut core, secs(0)) {
        core.finish(secs(10), s.node, m, Outcome::Changed)
            .expect("finish");
    }
    // both sit in the cycle lane, due at 70 s
    assert_eq!(core.poll(secs(30)), Poll::Idle(Blocked::Paced));
    assert_eq!(core.next_wakeup(), Some(secs(70)));
    assert_eq!(
        core.stats(secs(30)).lane(Lane::Cycle).oldest_age,
        Duration::ZERO
    );
    // a bump ignores the pacing
    assert_eq!(
        core.bump(secs(31), a, BumpReason::Facts),
        Ok(Bumped::Queued)
    );
    let s = starts(&mut core, secs(31));
    assert_eq!(nodes_of(&s), vec![a]);
    assert_eq!(s[0].reason, Reason::Facts);
    // b starts exactly when due, and says how long it waited since due
    assert!(starts(&mut core, secs(69)).is_empty());
    let s = starts(&mut core, secs(75));
    assert_eq!(nodes_of(&s), vec![b]);
    assert_eq!(s[0].waited, Duration::from_secs(5));
}

#[test]
fn with_the_cycle_off_only_bumps_compile() {
    let config = CoreConfig {
        min_cycle_interval: None,
        ..CoreConfig::default()
    };
    let mut core = core_with(config);
    let m = core.add_master(secs(0), slots(4)).expect("master");
    let ids = add(&mut core, 3, "production", secs(0));
    for s in starts(&mut core, secs(0)) {
        core.finish(secs(1), s.node, m, Outcome::Changed)
            .expect("finish");
    }
    assert_eq!(core.poll(secs(100_000)), Poll::Idle(Blocked::Empty));
    assert_eq!(core.next_wakeup(), None);
    core.bump(secs(100_001), ids[1], BumpReason::Exports)
        .expect("bump");
    assert_eq!(nodes_of(&starts(&mut core, secs(100_001))), vec![ids[1]]);
}

#[test]
fn a_bump_keeps_the_earliest_urgent_time() {
    let mut core = core_with(unheld());
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let ids = add(&mut core, 3, "production", secs(0));
    settle(&mut core, m, secs(1));
    // occupy the only slot so bumps queue up
    let running = starts(&mut core, secs(2));
    assert_eq!(running.len(), 1);
    let others: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|&n| n != running[0].node)
        .collect();
    let (x, y) = (others[0], others[1]);
    assert_eq!(core.bump(secs(3), x, BumpReason::Facts), Ok(Bumped::Queued));
    assert_eq!(core.bump(secs(4), y, BumpReason::Facts), Ok(Bumped::Queued));
    // bumping x again does not push it behind y
    assert_eq!(
        core.bump(secs(5), x, BumpReason::Manual),
        Ok(Bumped::AlreadyUrgent)
    );
    assert_eq!(
        core.stats(secs(6)).lane(Lane::Urgent).oldest_age,
        Duration::from_secs(3)
    );
    core.finish(secs(6), running[0].node, m, Outcome::Unchanged)
        .expect("finish");
    let s = starts(&mut core, secs(6));
    assert_eq!(
        (s[0].node, s[0].reason, s[0].waited),
        (x, Reason::Facts, Duration::from_secs(3))
    );
}

#[test]
fn a_bump_during_a_compile_requeues_the_node_urgently_after_it() {
    let mut core = core_with(unheld());
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let ids = add(&mut core, 2, "production", secs(0));
    settle(&mut core, m, secs(1));
    let running = starts(&mut core, secs(2))[0].node;
    let other = if running == ids[0] { ids[1] } else { ids[0] };
    assert_eq!(
        core.bump(secs(3), running, BumpReason::Facts),
        Ok(Bumped::AfterCompile)
    );
    assert_eq!(core.state(running), Some(NodeState::Compiling(m)));
    // it would otherwise go behind `other` in the cycle; dirty, it goes first
    let next = core
        .finish(secs(5), running, m, Outcome::Changed)
        .expect("finish");
    assert_eq!(next, Finished::Next(NodeState::Queued(Lane::Urgent)));
    let s = starts(&mut core, secs(5));
    assert_eq!(s[0].node, running);
    assert_eq!(s[0].reason, Reason::Facts);
    assert_eq!(s[0].waited, Duration::from_secs(2), "waits since the bump");
    assert_eq!(core.state(other), Some(NodeState::Queued(Lane::Cycle)));
}

#[test]
fn lanes_are_served_urgent_then_deploy_then_cycle() {
    let config = CoreConfig {
        lanes: scheduler::core::LanesConfig {
            deploy: scheduler::core::LaneBound::default(),
            cycle: scheduler::core::LaneBound::default(),
        },
        ..CoreConfig::default()
    };
    let mut core = core_with(config);
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let prod = add(&mut core, 2, "production", secs(0));
    let dev = add(&mut core, 2, "dev", secs(0));
    settle(&mut core, m, secs(1));
    assert_eq!(core.deploy(secs(2), "dev"), 2);
    core.bump(secs(3), prod[1], BumpReason::Manual)
        .expect("bump");
    let mut lanes = Vec::new();
    for t in 4..8 {
        let s = starts(&mut core, secs(t));
        lanes.push(s[0].lane);
        core.finish(secs(t), s[0].node, m, Outcome::Unchanged)
            .expect("finish");
    }
    assert_eq!(
        lanes,
        vec![Lane::Urgent, Lane::Deploy, Lane::Deploy, Lane::Cycle]
    );
    let _ = dev;
}

#[test]
fn a_deploy_moves_its_environment_oldest_catalog_first() {
    use scheduler::core::{NodeView, Pending};
    let mut core = core_with(CoreConfig::default());
    let m = core.add_master(secs(0), slots(1)).expect("master");
    // cycle order (due time) deliberately unlike catalog age
    let view = |env: &str, due: u64, compiled: u64| NodeView {
        id: NodeId::from_index(0),
        state: NodeState::Queued(Lane::Cycle),
        environment: env.into(),
        reason: Reason::Cycle,
        since: secs(due),
        pending: Pending::None,
        pending_since: Time::ZERO,
        last_compile: Some(secs(compiled)),
        failures: 0,
    };
    let a = core
        .restore_node(&view("production", 1, 30))
        .expect("restored");
    let b = core
        .restore_node(&view("production", 2, 10))
        .expect("restored");
    let c = core
        .restore_node(&view("production", 3, 20))
        .expect("restored");
    let s = core.restore_node(&view("staging", 0, 5)).expect("restored");
    assert_eq!(core.deploy(secs(50), "production"), 3);
    let st = core.stats(secs(50));
    assert_eq!(st.lane(Lane::Deploy).depth, 3);
    assert_eq!(st.lane(Lane::Cycle).depth, 1);
    assert_eq!(core.state(s), Some(NodeState::Queued(Lane::Cycle)));
    let mut order = Vec::new();
    for t in 51..54 {
        let st = starts(&mut core, secs(t));
        assert_eq!((st[0].lane, st[0].reason), (Lane::Deploy, Reason::Deploy));
        order.push(st[0].node);
        core.finish(secs(t), st[0].node, m, Outcome::Changed)
            .expect("finish");
    }
    assert_eq!(order, vec![b, c, a]);
    assert_eq!(core.deploy(secs(60), "no-such-env"), 0);
}

#[test]
fn a_deploy_during_a_compile_sends_the_node_to_the_deploy_lane_after_it() {
    let mut core = core_with(unheld());
    let m = core.add_master(secs(0), slots(1)).expect("master");
    add(&mut core, 2, "production", secs(0));
    settle(&mut core, m, secs(1));
    let running = starts(&mut core, secs(2))[0].node;
    assert_eq!(
        core.deploy(secs(3), "production"),
        2,
        "one moved, one marked"
    );
    let next = core
        .finish(secs(4), running, m, Outcome::Changed)
        .expect("finish");
    assert_eq!(next, Finished::Next(NodeState::Queued(Lane::Deploy)));
    // and an urgent bump beats the pending deploy
    let running = starts(&mut core, secs(5))[0].node;
    core.deploy(secs(6), "production");
    core.bump(secs(6), running, BumpReason::Exports)
        .expect("bump");
    let next = core
        .finish(secs(7), running, m, Outcome::Changed)
        .expect("finish");
    assert_eq!(next, Finished::Next(NodeState::Queued(Lane::Urgent)));
}

// ----- starvation bound ----------------------------------------------------

#[test]
fn a_bump_storm_cannot_freeze_the_cycle() {
    // cycle share 0.1: while nodes wait in the cycle, at least one start in
    // ten comes from it, however many bumps arrive
    let mut core = core_with(unheld());
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let ids = add(&mut core, 100, "production", secs(0));
    settle(&mut core, m, secs(1));
    let mut cycle_starts = 0;
    for i in 0..1000u64 {
        let t = secs(10 + i);
        // two bumps per start: the urgent lane never empties
        for k in 0..2 {
            core.bump(t, ids[((i * 2 + k) % 100) as usize], BumpReason::Facts)
                .expect("bump");
        }
        let s = starts(&mut core, t);
        assert_eq!(s.len(), 1);
        if s[0].lane == Lane::Cycle {
            cycle_starts += 1;
        }
        core.finish(t, s[0].node, m, Outcome::Unchanged)
            .expect("finish");
    }
    assert!(
        cycle_starts >= 99,
        "cycle got {cycle_starts} of 1000 starts"
    );
}

#[test]
fn a_lane_past_its_max_wait_goes_first() {
    let mut config = unheld();
    config.lanes.cycle.min_share = 0.0;
    config.lanes.cycle.max_wait = Some(Duration::from_secs(30));
    let mut core = core_with(config);
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let ids = add(&mut core, 10, "production", secs(0));
    settle(&mut core, m, secs(0));
    // bumps of the first five nodes keep the urgent lane busy every second;
    // the other five wait in the cycle, due since 0
    let mut cycle_at = None;
    for t in 1..100 {
        core.bump(secs(t), ids[(t % 5) as usize], BumpReason::Facts)
            .expect("bump");
        let s = starts(&mut core, secs(t));
        if s[0].lane == Lane::Cycle && cycle_at.is_none() {
            cycle_at = Some(t);
            assert_eq!(s[0].waited, Duration::from_secs(t));
        }
        core.finish(secs(t), s[0].node, m, Outcome::Unchanged)
            .expect("finish");
    }
    assert_eq!(cycle_at, Some(31), "served at the first start past 30 s");
}

// ----- masters -----------------------------------------------------------

#[test]
fn one_queue_feeds_several_masters_least_busy_first() {
    let mut core = core_with(CoreConfig::default());
    let a = core.add_master(secs(0), slots(2)).expect("master");
    let b = core.add_master(secs(0), slots(4)).expect("master");
    add(&mut core, 10, "production", secs(0));
    let s = starts(&mut core, secs(0));
    assert_eq!(s.len(), 6);
    let on_a = s.iter().filter(|s| s.master == a).count();
    let on_b = s.iter().filter(|s| s.master == b).count();
    assert_eq!((on_a, on_b), (2, 4));
    // spread, not filled one after the other
    assert_eq!(s[0].master, a);
    assert_eq!(s[1].master, b);
    assert_eq!(core.poll(secs(0)), Poll::Idle(Blocked::Concurrency));
    // a master added at run time takes work at once
    let c = core.add_master(secs(1), slots(1)).expect("master");
    let s = starts(&mut core, secs(1));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].master, c);
}

#[test]
fn a_removed_master_gives_its_compiles_back_to_the_front() {
    let mut core = core_with(CoreConfig::default());
    let a = core.add_master(secs(0), slots(2)).expect("master");
    let ids = add(&mut core, 5, "production", secs(0));
    let running = nodes_of(&starts(&mut core, secs(0)));
    assert_eq!(running, ids[..2].to_vec());
    let b = core.add_master(secs(1), slots(1)).expect("master");
    let third = starts(&mut core, secs(1));
    assert_eq!(nodes_of(&third), vec![ids[2]]);
    let mut requeued = core.remove_master(secs(2), a).expect("removed");
    requeued.sort();
    assert_eq!(requeued, running);
    for n in &running {
        assert_eq!(core.state(*n), Some(NodeState::Queued(Lane::Urgent)));
    }
    // a late finish from the removed master is refused, nothing changes
    assert_eq!(
        core.finish(secs(3), running[0], a, Outcome::Changed),
        Err(CoreError::NotCompiling {
            node: running[0],
            master: a
        })
    );
    core.finish(secs(3), ids[2], b, Outcome::Changed)
        .expect("finish");
    // the interrupted nodes come before ids[3], ids[4] that waited longer
    let s = starts(&mut core, secs(3));
    assert_eq!(s[0].reason, Reason::Requeued);
    assert!(running.contains(&s[0].node));
    assert_eq!(
        core.remove_master(secs(3), a),
        Err(CoreError::UnknownMaster(a))
    );
}

#[test]
fn a_master_that_is_down_starts_nothing() {
    let mut core = core_with(CoreConfig::default());
    let m = core.add_master(secs(0), slots(2)).expect("master");
    add(&mut core, 3, "production", secs(0));
    core.set_master_up(secs(0), m, false).expect("down");
    assert_eq!(core.poll(secs(0)), Poll::Idle(Blocked::Down));
    assert_eq!(core.stats(secs(0)).blocked, Blocked::Down);
    core.set_master_up(secs(1), m, true).expect("up");
    assert_eq!(starts(&mut core, secs(1)).len(), 2);
    let mut none = core_with(CoreConfig::default());
    none.add_node(secs(0), "production").expect("node");
    assert_eq!(
        none.poll(secs(0)),
        Poll::Idle(Blocked::Down),
        "no master at all"
    );
}

// ----- gate ----------------------------------------------------------------

#[test]
fn the_load_gate_counts_starts_the_load_average_does_not_show_yet() {
    let mut core = core_with(CoreConfig::default());
    let m = core
        .add_master(
            secs(0),
            MasterSpec::new(
                4,
                GateConfig {
                    max_concurrency: 16,
                    max_load_per_core: 0.5,
                    ..GateConfig::default()
                },
            ),
        )
        .expect("master");
    add(&mut core, 20, "production", secs(0));
    core.report_load(
        secs(0),
        m,
        LoadSample {
            load1: 0.0,
            runnable: None,
        },
    )
    .expect("load");
    // 4 cores x 0.5 = load 2: two starts, although the OS still reads 0
    assert_eq!(starts(&mut core, secs(0)).len(), 2);
    assert_eq!(core.poll(secs(0)), Poll::Idle(Blocked::Load));
    // 5 s later Linux shows 2 * (1 - e^(-5/60)) = 0.16: still closed
    let shown = 2.0 * (1.0 - (-5.0f64 / 60.0).exp());
    core.report_load(
        secs(5),
        m,
        LoadSample {
            load1: shown,
            runnable: None,
        },
    )
    .expect("load");
    assert_eq!(core.poll(secs(5)), Poll::Idle(Blocked::Load));
    let load = core.stats(secs(5)).masters[0].load_per_core;
    assert!((load - 0.5).abs() < 1e-9, "{load}");
    // other work on the box also counts
    let mut core2 = core.clone();
    let s = core2.stats(secs(5));
    assert_eq!(s.in_flight, 2);
    let busy = core2
        .node_ids()
        .find(|&n| matches!(core2.state(n), Some(NodeState::Compiling(_))));
    core2
        .finish(secs(6), busy.expect("one compiling"), m, Outcome::Unchanged)
        .expect("finish");
    core2
        .report_load(
            secs(6),
            m,
            LoadSample {
                load1: 3.0,
                runnable: None,
            },
        )
        .expect("load");
    assert_eq!(core2.poll(secs(6)), Poll::Idle(Blocked::Load));
}

#[test]
fn the_rate_limit_spaces_starts_and_sets_the_wakeup() {
    let mut core = core_with(CoreConfig::default());
    core.add_master(
        secs(0),
        MasterSpec::new(
            8,
            GateConfig {
                max_concurrency: 8,
                max_load_per_core: 0.0,
                start_rate: 0.5,
                start_burst: 1,
                ..GateConfig::default()
            },
        ),
    )
    .expect("master");
    add(&mut core, 4, "production", secs(0));
    assert_eq!(starts(&mut core, secs(0)).len(), 1);
    assert_eq!(core.poll(secs(0)), Poll::Idle(Blocked::Rate));
    assert_eq!(core.next_wakeup(), Some(secs(2)));
    assert!(starts(&mut core, secs(1)).is_empty());
    assert_eq!(starts(&mut core, secs(2)).len(), 1);
}

#[test]
fn the_blocked_reason_says_empty_paced_or_the_binding_limit() {
    let config = CoreConfig {
        min_cycle_interval: Some(Duration::from_secs(100)),
        ..CoreConfig::default()
    };
    let mut core = core_with(config);
    let m = core.add_master(secs(0), slots(1)).expect("master");
    assert_eq!(core.poll(secs(0)), Poll::Idle(Blocked::Empty));
    let ids = add(&mut core, 2, "production", secs(0));
    let s = starts(&mut core, secs(0));
    assert_eq!(core.poll(secs(0)), Poll::Idle(Blocked::Concurrency));
    core.finish(secs(1), s[0].node, m, Outcome::Changed)
        .expect("finish");
    let s = starts(&mut core, secs(1));
    core.finish(secs(1), s[0].node, m, Outcome::Changed)
        .expect("finish");
    assert_eq!(core.poll(secs(2)), Poll::Idle(Blocked::Paced));
    let _ = ids;
}

// ----- outcomes, backoff ---------------------------------------------------

#[test]
fn failures_park_with_capped_exponential_backoff_then_retry_urgently() {
    let mut config = CoreConfig::default();
    config.backoff.base = Duration::from_secs(10);
    config.backoff.max = Duration::from_secs(35);
    config.backoff.jitter = 0.0;
    let mut core = core_with(config);
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let n = core.add_node(secs(0), "production").expect("node");
    let mut t = secs(0);
    for (i, (outcome, wait)) in [
        (Outcome::Failed, 10),
        (Outcome::TimedOut, 20),
        (Outcome::Failed, 35),
        (Outcome::Failed, 35),
    ]
    .into_iter()
    .enumerate()
    {
        let s = starts(&mut core, t);
        assert_eq!(nodes_of(&s), vec![n], "attempt {i}");
        if i > 0 {
            assert_eq!(s[0].reason, Reason::Retry);
        }
        let next = core.finish(t, n, m, outcome).expect("finish");
        let until = t.plus(Duration::from_secs(wait));
        assert_eq!(next, Finished::Next(NodeState::Parked(until)));
        assert_eq!(core.view(n).expect("view").failures, i as u16 + 1);
        assert_eq!(core.poll(t), Poll::Idle(Blocked::Paced));
        assert_eq!(core.next_wakeup(), Some(until));
        assert_eq!(core.stats(t).parked, 1);
        t = until;
    }
    let s = starts(&mut core, t);
    core.finish(t, s[0].node, m, Outcome::Changed)
        .expect("finish");
    assert_eq!(
        core.view(n).expect("view").failures,
        0,
        "success resets the count"
    );
}

#[test]
fn jitter_spreads_the_retries_of_nodes_that_failed_together() {
    let mut core = core_with(CoreConfig::default());
    let m = core.add_master(secs(0), slots(100)).expect("master");
    add(&mut core, 50, "production", secs(0));
    let mut untils = std::collections::BTreeSet::new();
    for s in starts(&mut core, secs(0)) {
        if let Finished::Next(NodeState::Parked(until)) = core
            .finish(secs(1), s.node, m, Outcome::Failed)
            .expect("finish")
        {
            untils.insert(until);
        }
    }
    assert!(untils.len() > 45, "{} distinct retry times", untils.len());
}

#[test]
fn an_interrupted_compile_goes_back_to_the_front_without_a_failure() {
    let mut core = core_with(CoreConfig::default());
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let ids = add(&mut core, 3, "production", secs(0));
    let s = starts(&mut core, secs(1));
    assert_eq!(s[0].node, ids[0]);
    core.bump(secs(2), ids[0], BumpReason::Facts)
        .expect("bump while compiling");
    let next = core
        .finish(secs(3), ids[0], m, Outcome::Interrupted)
        .expect("finish");
    assert_eq!(next, Finished::Next(NodeState::Queued(Lane::Urgent)));
    let view = core.view(ids[0]).expect("view");
    assert_eq!((view.failures, view.last_compile), (0, None));
    // it goes before ids[1] and ids[2], which have waited since 0
    let s = starts(&mut core, secs(3));
    assert_eq!((s[0].node, s[0].reason), (ids[0], Reason::Requeued));
    assert_eq!(core.stats(secs(3)).finished(Outcome::Interrupted), 1);
}

#[test]
fn a_deferred_compile_waits_one_backoff_step_without_blame() {
    let mut config = CoreConfig::default();
    config.backoff.jitter = 0.0;
    let base = config.backoff.base;
    let mut core = core_with(config);
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let n = core.add_node(secs(0), "production").expect("node");
    for round in 0..3u64 {
        // the same input missing again and again: the wait does not grow
        let at = Time::ZERO.plus(base * round as u32);
        let s = starts(&mut core, at);
        assert_eq!(s.len(), 1, "round {round}");
        let next = core.finish(at, n, m, Outcome::Deferred).expect("finish");
        assert_eq!(next, Finished::Next(NodeState::Parked(at.plus(base))));
        assert_eq!(core.view(n).expect("view").failures, 0);
        assert!(starts(&mut core, at).is_empty(), "no spin");
    }
    assert_eq!(core.stats(secs(0)).finished(Outcome::Deferred), 3);
}

/// One minute of a fleet on one master with 2 slots and compiles of 1 s:
/// `flapper` (if any) has a used fact change every 100 ms; every 3 s one of
/// 20 other nodes is bumped. Returns the flapper's starts and the other
/// nodes' bump-to-start waits.
fn flapping_minute(config: CoreConfig, flapper: bool) -> (usize, Vec<Duration>) {
    let config = CoreConfig {
        min_cycle_interval: None,
        ..config
    };
    let mut core = core_with(config);
    let m = core.add_master(Time::ZERO, slots(2)).expect("master");
    let f = core.add_node(Time::ZERO, "production").expect("flapper");
    let others = add(&mut core, 20, "production", Time::ZERO);
    let mut running: Vec<(Time, NodeId)> = Vec::new();
    let mut bumped: std::collections::HashMap<NodeId, Time> = Default::default();
    let (mut flapper_starts, mut waits) = (0, Vec::new());
    let step = Duration::from_millis(100);
    for k in 0..=600u32 {
        let now = Time::ZERO.plus(step * k);
        running.retain(|&(end, id)| {
            if end <= now {
                core.finish(now, id, m, Outcome::Changed).expect("finish");
                false
            } else {
                true
            }
        });
        if flapper && k > 0 {
            core.bump(now, f, BumpReason::Facts).expect("bump");
        }
        if k > 30 && k % 30 == 0 {
            let n = others[(k as usize / 30) % others.len()];
            core.bump(now, n, BumpReason::Facts).expect("bump");
            bumped.entry(n).or_insert(now);
        }
        for s in starts(&mut core, now) {
            if s.node == f {
                flapper_starts += 1;
            } else if let Some(at) = bumped.remove(&s.node) {
                waits.push(now.since(at));
            }
            running.push((now.plus(Duration::from_secs(1)), s.node));
        }
    }
    (flapper_starts, waits)
}

#[test]
fn a_flapping_node_compiles_once_per_urgent_interval_and_delays_nobody() {
    let config = CoreConfig::default();
    let interval = config.min_urgent_interval;
    let (starts, waits) = flapping_minute(config.clone(), true);
    // its first compile (it is new) and at most one per interval after it
    let bound = 1 + (60.0 / interval.as_secs_f64()).ceil() as usize;
    assert!(starts <= bound, "{starts} starts, bound {bound}");
    let (_, alone) = flapping_minute(config, false);
    assert_eq!(
        waits, alone,
        "the others wait as long as without the flapper"
    );
    // without coalescing the flapper takes a slot for the whole minute
    let (unheld_starts, _) = flapping_minute(unheld(), true);
    assert!(unheld_starts > 20, "{unheld_starts}");
}

#[test]
fn a_held_bump_merges_and_compiles_for_its_reason_when_the_interval_passes() {
    let mut core = core_with(CoreConfig::default());
    let interval = core.config().min_urgent_interval;
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let n = core.add_node(secs(0), "production").expect("node");
    starts(&mut core, secs(0));
    core.finish(secs(1), n, m, Outcome::Changed)
        .expect("finish");
    let until = secs(1).plus(interval);
    assert_eq!(core.bump(secs(2), n, BumpReason::Facts), Ok(Bumped::Held));
    assert_eq!(core.state(n), Some(NodeState::Parked(until)));
    // more bumps merge; nothing starts before the interval
    assert_eq!(
        core.bump(secs(3), n, BumpReason::Exports),
        Ok(Bumped::AfterBackoff)
    );
    assert!(starts(&mut core, secs(30)).is_empty());
    let s = starts(&mut core, until);
    assert_eq!((s.len(), s[0].node, s[0].reason), (1, n, Reason::Facts));
    // bumped while compiling: held again, from the end of this compile
    core.bump(until.plus(Duration::from_secs(1)), n, BumpReason::Facts)
        .expect("bump");
    let next = core
        .finish(until.plus(Duration::from_secs(2)), n, m, Outcome::Changed)
        .expect("finish");
    let again = until.plus(Duration::from_secs(2)).plus(interval);
    assert_eq!(next, Finished::Next(NodeState::Parked(again)));
    // a manual bump is never held
    assert_eq!(
        core.bump(until.plus(Duration::from_secs(3)), n, BumpReason::Manual),
        Ok(Bumped::Queued)
    );
    let s = starts(&mut core, until.plus(Duration::from_secs(3)));
    assert_eq!(s[0].reason, Reason::Manual);
    assert_eq!(core.view(n).expect("view").failures, 0);
}

#[test]
fn only_a_manual_bump_cuts_a_backoff_short() {
    let mut core = core_with(CoreConfig::default());
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let n = core.add_node(secs(0), "production").expect("node");
    starts(&mut core, secs(0));
    core.finish(secs(1), n, m, Outcome::Failed).expect("finish");
    assert_eq!(
        core.bump(secs(2), n, BumpReason::Facts),
        Ok(Bumped::AfterBackoff)
    );
    assert!(matches!(core.state(n), Some(NodeState::Parked(_))));
    assert_eq!(
        core.bump(secs(2), n, BumpReason::Manual),
        Ok(Bumped::Queued)
    );
    let s = starts(&mut core, secs(2));
    assert_eq!((s[0].node, s[0].reason), (n, Reason::Manual));
    assert_eq!(core.view(n).expect("view").failures, 1, "the count stays");
}

// ----- removal, errors, time ---------------------------------------------

#[test]
fn removing_nodes_in_any_state() {
    let mut core = core_with(CoreConfig::default());
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let ids = add(&mut core, 3, "production", secs(0));
    let running = starts(&mut core, secs(0))[0].node;
    assert_eq!(running, ids[0]);
    assert_eq!(core.remove_node(secs(1), ids[1]), Ok(None));
    assert_eq!(core.remove_node(secs(1), running), Ok(Some(m)));
    assert_eq!(core.state(running), None);
    assert_eq!(core.node_count(), 1);
    assert_eq!(
        core.bump(secs(1), running, BumpReason::Manual),
        Err(CoreError::UnknownNode(running))
    );
    // the id is not reused while the compile still runs
    let fresh = core.add_node(secs(2), "production").expect("node");
    assert_ne!(fresh, running);
    assert_eq!(
        core.finish(secs(3), running, m, Outcome::Changed),
        Ok(Finished::Released)
    );
    core.audit().expect("invariants");
    let again = core.add_node(secs(4), "production").expect("node");
    assert_eq!(again, running, "released id is reused");
    assert_eq!(core.state(again), Some(NodeState::Queued(Lane::Urgent)));
    assert_eq!(
        core.remove_node(secs(5), NodeId::from_index(999)),
        Err(CoreError::UnknownNode(NodeId::from_index(999)))
    );
}

#[test]
fn bad_finishes_are_refused_and_change_nothing() {
    let mut core = core_with(CoreConfig::default());
    let m = core.add_master(secs(0), slots(1)).expect("master");
    let n = core.add_node(secs(0), "production").expect("node");
    let before = core.clone();
    assert!(matches!(
        core.finish(secs(1), n, m, Outcome::Changed),
        Err(CoreError::NotCompiling { .. })
    ));
    assert!(core
        .finish(secs(1), NodeId::from_index(7), m, Outcome::Changed)
        .is_err());
    assert_eq!(core.state(n), before.state(n));
    starts(&mut core, secs(1));
    let other = core.add_master(secs(1), slots(1)).expect("master");
    assert!(core.finish(secs(2), n, other, Outcome::Changed).is_err());
    core.finish(secs(2), n, m, Outcome::Changed)
        .expect("the right finish works");
    assert!(
        core.finish(secs(2), n, m, Outcome::Changed).is_err(),
        "only once"
    );
    let bad = CoreConfig {
        compile_timeout: Duration::ZERO,
        ..CoreConfig::default()
    };
    assert!(matches!(Core::new(bad, 0), Err(CoreError::Config(_))));
    assert!(core.add_master(secs(3), slots(0)).is_err());
}

#[test]
fn time_never_goes_backwards() {
    let mut core = core_with(CoreConfig::default());
    let m = core.add_master(secs(100), slots(1)).expect("master");
    let n = core.add_node(secs(50), "production").expect("node");
    assert_eq!(core.now(), secs(100));
    let s = starts(&mut core, secs(10));
    assert_eq!(s[0].waited, Duration::ZERO);
    core.finish(secs(20), n, m, Outcome::Changed)
        .expect("finish");
    assert_eq!(core.view(n).and_then(|v| v.last_compile), Some(secs(100)));
}

// ----- observability -------------------------------------------------------

#[test]
fn stats_count_depths_ages_starts_finishes_and_the_cycle_time() {
    let mut core = core_with(CoreConfig::default());
    let m = core.add_master(secs(0), slots(2)).expect("master");
    add(&mut core, 10, "production", secs(0));
    let st = core.stats(secs(4));
    assert_eq!(st.nodes, 10);
    assert_eq!(st.lane(Lane::Urgent).depth, 10);
    assert_eq!(st.lane(Lane::Urgent).oldest_age, Duration::from_secs(4));
    // 2 slots, 1 s compiles: 2 finishes/s, so a 10-node cycle takes 5 s
    let mut t = secs(4);
    for _ in 0..600 {
        let s = starts(&mut core, t);
        t = t.plus(Duration::from_secs(1));
        for s in s {
            core.finish(t, s.node, m, Outcome::Unchanged)
                .expect("finish");
        }
    }
    let st = core.stats(t);
    assert_eq!(st.started(Reason::New), 10);
    assert_eq!(st.started(Reason::Cycle), 1190);
    assert_eq!(st.finished(Outcome::Unchanged), 1200);
    assert_eq!(st.in_flight, 0);
    let cycle = st.cycle_time.expect("estimate").as_secs_f64();
    assert!((cycle - 5.0).abs() < 0.1, "cycle time {cycle}");
    assert_eq!(st.masters[0].max_concurrency, 2);
    assert_eq!(st.lane(Lane::Cycle).depth, 10);
}

// ----- rebuild -------------------------------------------------------------

#[test]
fn a_core_rebuilt_from_views_schedules_the_same_and_requeues_compiles_at_the_front() {
    let config = CoreConfig {
        min_cycle_interval: Some(Duration::from_secs(30)),
        ..CoreConfig::default()
    };
    let mut core = core_with(config.clone());
    let m = core.add_master(secs(0), slots(2)).expect("master");
    let ids = add(&mut core, 6, "production", secs(0));
    core.add_node(secs(0), "staging").expect("node");
    for (t, s) in starts(&mut core, secs(0)).into_iter().enumerate() {
        let outcome = if t == 0 {
            Outcome::Failed
        } else {
            Outcome::Changed
        };
        core.finish(secs(1), s.node, m, outcome).expect("finish");
    }
    starts(&mut core, secs(2)); // two compiling now
    core.deploy(secs(3), "staging");
    core.bump(secs(4), ids[5], BumpReason::Facts).expect("bump");

    let views: Vec<_> = core.node_ids().filter_map(|n| core.view(n)).collect();
    let mut rebuilt = core_with(config);
    let m2 = rebuilt.add_master(secs(5), slots(2)).expect("master");
    let mut map = std::collections::BTreeMap::new();
    for v in &views {
        map.insert(rebuilt.restore_node(v).expect("restored"), v.clone());
    }
    rebuilt.audit().expect("invariants after rebuild");
    assert_eq!(rebuilt.node_count(), core.node_count());
    for (new_id, old) in &map {
        let now = rebuilt.view(*new_id).expect("view");
        assert_eq!(now.environment, old.environment);
        assert_eq!(now.last_compile, old.last_compile);
        assert_eq!(now.failures, old.failures);
        match old.state {
            NodeState::Compiling(_) => {
                assert_eq!(now.state, NodeState::Queued(Lane::Urgent));
                assert_eq!(now.reason, Reason::Requeued);
            }
            state => assert_eq!(now.state, state),
        }
    }
    // the interrupted compiles start first, before the bumped node
    let s = starts(&mut rebuilt, secs(5));
    assert_eq!(s.len(), 2);
    assert!(s
        .iter()
        .all(|s| s.reason == Reason::Requeued && s.master == m2));
}

#[test]
fn a_restored_cycle_node_is_due_by_the_new_cores_pacing() {
    use scheduler::core::{NodeView, Pending};
    let view = |last: Option<u64>, since: u64| NodeView {
        id: NodeId::from_index(0),
        state: NodeState::Queued(Lane::Cycle),
        environment: "production".into(),
        reason: Reason::Cycle,
        since: secs(since),
        pending: Pending::None,
        pending_since: Time::ZERO,
        last_compile: last.map(secs),
        failures: 0,
    };
    let paced = CoreConfig {
        min_cycle_interval: Some(Duration::from_secs(100)),
        ..CoreConfig::default()
    };
    let mut core = core_with(paced);
    core.add_master(secs(0), slots(4)).expect("master");
    // stored by a core that compiled every 10 s: due at 60; this one waits 100
    let a = core.restore_node(&view(Some(50), 60)).expect("restore");
    // never compiled: its stored due time stands
    let b = core.restore_node(&view(None, 70)).expect("restore");
    assert_eq!(nodes_of(&starts(&mut core, secs(140))), vec![b]);
    assert!(
        starts(&mut core, secs(149)).is_empty(),
        "a is due at 150, not 60"
    );
    assert_eq!(nodes_of(&starts(&mut core, secs(150))), vec![a]);
    let mut off = core_with(CoreConfig {
        min_cycle_interval: None,
        ..CoreConfig::default()
    });
    off.add_master(secs(0), slots(4)).expect("master");
    off.restore_node(&view(Some(50), 60)).expect("restore");
    assert_eq!(
        off.poll(secs(100_000)),
        Poll::Idle(Blocked::Empty),
        "cycle off: never due"
    );
}
