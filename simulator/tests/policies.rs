//! How each policy behaves under the situations scenarios describe: herds,
//! 503s, outages, fact noise, notification, the load gate.

use std::path::Path;

use simulator::metrics::RunResult;
use simulator::plan::{plan, PlanOptions};
use simulator::policy::Policy;
use simulator::run::{run, RunSpec};
use simulator::scenario::Scenario;

/// A small fleet: `extra` TOML is appended (tables that the base leaves out).
fn scenario(base: &str, extra: &str) -> Scenario {
    let text = format!("{base}\n{extra}");
    match Scenario::parse(&text, Path::new("test.toml"), Path::new(".")) {
        Ok(s) => s,
        Err(e) => panic!("test scenario: {e}"),
    }
}

const FLEET: &str = r#"
name = "t"
duration = "6h"
warmup = "30m"

[fleet]
nodes = 600

[agents]
interval = "30m"
splay = "30m"
timeout = "10m"

[compile]
distribution = "lognormal"
mean = "6s"
p95 = "15s"

[facts]
used_changes_per_node_day = 2.0
unused_changes_per_node_day = 48.0
"#;

const MASTERS: &str = r#"
[masters]
count = 2
slots = 2
cores = 4
"#;

fn go(s: &Scenario, policy: Policy) -> RunResult {
    run(&RunSpec::of(s, policy)).expect("runs")
}

#[test]
fn on_demand_herd_past_capacity_times_out_and_still_compiles_the_abandoned() {
    let s = scenario(
        FLEET,
        &format!("{MASTERS}\n[[herds]]\nkind = \"new_certs\"\nat = \"2h\"\ncount = 600\nwindow = \"1m\"\n"),
    );
    let od = go(&s, Policy::OnDemand);
    assert!(od.failed_runs.timeouts > 100, "{:?}", od.failed_runs);
    assert!(od.compiles.abandoned > 100, "{:?}", od.compiles);
    let q = go(&s, Policy::Queue);
    assert_eq!(
        q.failed_runs.total, 0,
        "the queue has no agents waiting on compiles"
    );
    assert!(q.staleness_applied.max < od.staleness_applied.max);
}

#[test]
fn max_queued_requests_answers_503_instead_of_timing_out() {
    let herd = "[[herds]]\nkind = \"new_certs\"\nat = \"2h\"\ncount = 600\nwindow = \"1m\"\n";
    let plain = scenario(FLEET, &format!("{MASTERS}\n{herd}"));
    let limited = scenario(
        FLEET,
        &format!(
            "{MASTERS}\n{herd}\n[on_demand]\nmax_queued_requests = 10\nmax_retry_delay = \"5m\"\n"
        ),
    );
    let a = go(&plain, Policy::OnDemand);
    let b = go(&limited, Policy::OnDemand);
    assert!(b.failed_runs.rejected > 100, "{:?}", b.failed_runs);
    assert!(
        b.failed_runs.timeouts < a.failed_runs.timeouts / 2,
        "{:?} vs {:?}",
        b.failed_runs,
        a.failed_runs
    );
    assert_eq!(a.failed_runs.rejected, 0);
}

#[test]
fn a_master_outage_loses_its_compiles_and_nothing_else() {
    // 60 new nodes a minute before make sure the dying master holds work
    let s = scenario(
        FLEET,
        &format!("{MASTERS}\n[[herds]]\nkind = \"new_certs\"\nat = \"119m\"\ncount = 60\nwindow = \"10s\"\n[[herds]]\nkind = \"master_outage\"\nat = \"2h\"\nmaster = 0\nduration = \"20m\"\n[queue.core]\nmin_cycle_interval = \"0s\"\n"),
    );
    for policy in [Policy::Queue, Policy::OnDemand] {
        let r = go(&s, policy);
        assert!(r.compiles.lost >= 1, "{policy:?}: {:?}", r.compiles);
        // every change still reaches its node: nothing is stuck for hours
        assert!(
            r.staleness_applied.max < 2.0 * 3600.0,
            "{policy:?}: {:?}",
            r.staleness_applied
        );
        if policy == Policy::OnDemand {
            // the requests on the dead master fail
            assert!(
                r.failed_runs.errors >= r.compiles.lost,
                "{:?}",
                r.failed_runs
            );
        }
    }
}

#[test]
fn a_synchronized_cron_is_a_herd_on_demand_and_nothing_for_the_queue() {
    let s = scenario(
        FLEET,
        &format!("{MASTERS}\n[[herds]]\nkind = \"synchronized_cron\"\nat = \"2h\"\n[queue.core]\nmin_cycle_interval = \"1h\"\n"),
    );
    let od = go(&s, Policy::OnDemand);
    let q = go(&s, Policy::Queue);
    // 600 requests at once on 4 JRubies of 6 s: 15 minutes of backlog
    assert!(od.oldest_age.max > 600.0, "{:?}", od.oldest_age);
    assert!(q.oldest_age.max < 300.0, "{:?}", q.oldest_age);
}

#[test]
fn fact_filtering_saves_the_compiles_noise_would_cause() {
    let sync = "[queue]\nfact_filter = true\n[queue.core]\nmin_cycle_interval = \"off\"\n";
    let filtered = scenario(FLEET, &format!("{MASTERS}\n{sync}"));
    let noisy = scenario(
        FLEET,
        &format!("{MASTERS}\n{}", sync.replace("true", "false")),
    );
    let a = go(&filtered, Policy::Queue);
    let b = go(&noisy, Policy::Queue);
    // with the cycle off, every compile of `a` is for a used fact
    assert_eq!(a.compiles.unchanged, 0, "{:?}", a.compiles);
    assert!(
        b.compiles.total > 5 * a.compiles.total,
        "{:?} vs {:?}",
        b.compiles,
        a.compiles
    );
    assert!(b.compiles.unchanged > 0);
    assert!(
        (a.churn.used_share - 2.0 / 50.0).abs() < 0.01,
        "{}",
        a.churn.used_share
    );
}

#[test]
fn a_plan_states_the_compiles_fact_filtering_saves() {
    let s = scenario(
        FLEET,
        &format!(
            "{MASTERS}\n[queue]\nfact_filter = true\n[queue.core]\nmin_cycle_interval = \"off\"\n[plan]\nmasters = [2]\nreplications = 2\n"
        ),
    );
    let options = PlanOptions {
        policies: vec![Policy::Queue],
        jobs: 2,
        ..PlanOptions::new()
    };
    let result = plan(&s, &options, &|_, _| {}).expect("plan");
    let f = &result.filtering[0];
    assert_eq!((f.nodes, f.masters), (600, 2));
    assert!(
        (f.used_share.mean - 2.0 / 50.0).abs() < 0.01,
        "{}",
        f.used_share.mean
    );
    // the same runs without filtering compile for every noisy upload
    assert!(
        f.without.mean > 5.0 * f.with.mean,
        "{} vs {}",
        f.without.mean,
        f.with.mean
    );
    assert_eq!(f.with.mean, result.points[0].stats.compiles_per_hour.mean);
}

/// Hourly deploys to a 600-node environment changing a fifth of its
/// catalogs, with the cycle off: deploys and used facts are all that
/// compile.
fn deploys(extra: &str) -> Scenario {
    scenario(
        FLEET,
        &format!(
            "{MASTERS}\n[[deploys]]\nat = \"1h\"\nevery = \"1h\"\nenvironment = \"production\"\naffects = 0.2\n{extra}\n[queue.core]\nmin_cycle_interval = \"off\"\n"
        ),
    )
}

#[test]
fn narrowed_deploys_recompile_the_affected_nodes_and_unbounded_ones_all() {
    let narrowed = go(&deploys(""), Policy::Queue);
    let whole = go(&deploys("[queue]\nnarrow_deploys = false"), Policy::Queue);
    let unbounded = go(&deploys("unbounded = 1.0"), Policy::Queue);
    // five deploys after warm-up: 600 nodes each without narrowing, about
    // 120 with
    let per_hour = |r: &RunResult| r.compiles.per_hour;
    assert!(
        per_hour(&whole) > 3.0 * per_hour(&narrowed),
        "{} vs {}",
        per_hour(&whole),
        per_hour(&narrowed)
    );
    assert_eq!(
        unbounded.compiles.total, whole.compiles.total,
        "an unbounded deploy moves every node, as without narrowing"
    );
    // narrowing spares only catalogs the deploy does not change: staleness
    // does not suffer
    assert!(
        narrowed.staleness_applied.p95 <= whole.staleness_applied.p95 * 1.05,
        "{} vs {}",
        narrowed.staleness_applied.p95,
        whole.staleness_applied.p95
    );
}

#[test]
fn a_plan_states_the_masters_narrowed_deploys_save() {
    let s = deploys("[plan]\nmasters = [1, 2]\nreplications = 2");
    let options = PlanOptions {
        policies: vec![Policy::Queue],
        jobs: 2,
        ..PlanOptions::new()
    };
    let result = plan(&s, &options, &|_, _| {}).expect("plan");
    let n = &result.narrowing[0];
    assert_eq!(n.nodes, 600);
    assert!(n.without.mean > 2.0 * n.with.mean, "{n:?}");
    assert_eq!(n.masters, result.recommended(Policy::Queue, 600));
    let off = deploys("[queue]\nnarrow_deploys = false\n[plan]\nmasters = [2]\nreplications = 2");
    let result = plan(&off, &options, &|_, _| {}).expect("plan");
    assert!(
        result.narrowing.is_empty(),
        "nothing to compare without narrowing"
    );
}

#[test]
fn notification_applies_changed_catalogs_at_once() {
    let base = "[queue]\nnotify = NOTIFY\nnotify_delay = \"5s\"\nfact_upload = \"immediate\"\nsync_interval = \"2h\"\n[queue.core]\nmin_cycle_interval = \"off\"\n";
    let on = scenario(
        FLEET,
        &format!("{MASTERS}\n{}", base.replace("NOTIFY", "true")),
    );
    let off = scenario(
        FLEET,
        &format!("{MASTERS}\n{}", base.replace("NOTIFY", "false")),
    );
    let a = go(&on, Policy::Queue);
    let b = go(&off, Policy::Queue);
    // notified: applied = compiled + 5 s delay + 10 s apply
    assert!(
        a.staleness_applied.p95 - a.staleness_compiled.p95 < 20.0,
        "{:?} {:?}",
        a.staleness_applied,
        a.staleness_compiled
    );
    // not notified: the next sync, up to two hours later
    assert!(
        b.staleness_applied.p50 > 1800.0,
        "{:?}",
        b.staleness_applied
    );
}

#[test]
fn the_load_gate_holds_compiles_back_when_the_master_is_busy() {
    // 4 cores with a background load of 3: the gate (1.0 per core) admits
    // about one compile at a time although 4 slots are free
    let masters = "[masters]\ncount = 1\nslots = 4\ncores = 4\nbackground_load = 3.0\n";
    let gated = scenario(
        FLEET,
        &format!("{masters}\n[queue.core.gate]\nmax_load_per_core = 1.0\n"),
    );
    let open = scenario(
        FLEET,
        &format!("{masters}\n[queue.core.gate]\nmax_load_per_core = 0.0\n"),
    );
    let g = go(&gated, Policy::Queue);
    let o = go(&open, Policy::Queue);
    let peak = |r: &RunResult| r.series.iter().map(|p| p.running).max().unwrap_or(0);
    assert!(peak(&o) >= 3, "ungated runs up to the slots: {}", peak(&o));
    assert!(peak(&g) <= 2, "gated peak {}", peak(&g));
    assert!(g.utilization < o.utilization);
}

/// A fleet whose agents fetch files, on masters of three JRubies.
fn with_files(extra: &str) -> Scenario {
    scenario(
        FLEET,
        &format!(
            "[masters]\ncount = 1\nslots = 3\ncores = 4\n[files]\nper_apply = 10\nper_run = 3\njruby_time = \"20ms\"\n{extra}"
        ),
    )
}

#[test]
fn file_requests_wait_behind_an_on_demand_herd_but_not_behind_a_reserve() {
    let herd = "[[herds]]\nkind = \"synchronized_cron\"\nat = \"2h\"\n";
    // the queue compiles without a pause (no load gate): every JRuby it
    // may use is busy
    let busy =
        "[queue.core]\nmin_cycle_interval = \"0s\"\n[queue.core.gate]\nmax_load_per_core = 0.0\n";
    let od = go(&with_files(herd), Policy::OnDemand);
    let all = go(&with_files(&format!("{herd}{busy}")), Policy::Queue);
    let reserved = go(
        &with_files(&format!("{herd}{busy}[queue]\nreserve_for_files = 1\n")),
        Policy::Queue,
    );
    for r in [&od, &all, &reserved] {
        assert!(r.file_wait.count > 1000, "{:?}", r.file_wait);
        assert!(
            r.file_wait.p50 >= 0.02,
            "a request takes its JRuby time at least"
        );
        assert!(r.apply_time.count > 0);
    }
    // on demand the herd's catalog requests take the pool: files wait
    // behind hundreds of compiles
    assert!(od.file_wait.max > 60.0, "{:?}", od.file_wait);
    // compiling on every JRuby, files wait for a compile to end
    assert!(
        all.file_wait.p95 > 1.0,
        "{:?} {:?} {}",
        all.file_wait,
        all.compiles,
        all.utilization
    );
    // with one JRuby left, a file request waits only for other files
    assert!(reserved.file_wait.p99 < 0.5, "{:?}", reserved.file_wait);
    assert!(reserved.apply_time.p95 < all.apply_time.p95);
    // and the reserve costs compiles: two JRubies compile, not three
    assert!(reserved.compiles.per_hour < all.compiles.per_hour);
}

#[test]
fn without_files_no_file_request_is_simulated() {
    let s = scenario(FLEET, MASTERS);
    for policy in [Policy::OnDemand, Policy::Queue] {
        let r = go(&s, policy);
        assert_eq!(r.file_wait.count, 0, "{policy:?}");
        assert_eq!(r.apply_time.count, 0, "{policy:?}");
    }
}

#[test]
fn a_reserve_must_leave_pcq_a_jruby() {
    let text = format!("{FLEET}\n{MASTERS}\n[queue]\nreserve_for_files = 2\n");
    let e = Scenario::parse(&text, Path::new("t.toml"), Path::new("."))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("queue.reserve_for_files"), "{e}");
}

#[test]
fn a_plan_says_how_many_jrubies_to_leave_for_files() {
    // a herd every agent joins at once: on demand, files wait behind it;
    // the queue compiles without a pause (no load gate), so at
    // max_concurrency 3 its compiles hold every JRuby too
    let s = with_files(
        "[[herds]]\nkind = \"synchronized_cron\"\nat = \"2h\"\n[queue.core]\nmin_cycle_interval = \"0s\"\n[queue.core.gate]\nmax_load_per_core = 0.0\n[slo]\nfile_wait_p95 = \"1s\"\n[plan]\nmasters = [1, 2]\nreplications = 2\n",
    );
    let options = PlanOptions {
        jobs: 2,
        ..PlanOptions::new()
    };
    let result = plan(&s, &options, &|_, _| {}).expect("plan");
    let c = &result.concurrency[0];
    // every (masters, max_concurrency) of 1..=3 at 1 and 2 masters
    assert_eq!(c.tried.len(), 6, "{:?}", c.tried);
    let at = |m: u32, k: u32| {
        c.tried
            .iter()
            .find(|p| p.masters == m && p.max_concurrency == k)
            .expect("tried")
    };
    // all three JRubies compiling: files wait for compiles
    assert!(!at(1, 3).met, "{:?}", at(1, 3));
    assert!(at(1, 3).file_wait_p95.mean > at(1, 2).file_wait_p95.mean);
    // the answer: one master, compiling on two of its three JRubies
    assert_eq!((c.masters, c.max_concurrency), (Some(1), Some(2)), "{c:?}");
    // on demand the herd breaks the file-wait SLO
    let od = result.point(Policy::OnDemand, 600, 1).expect("point");
    assert!(
        od.slos.iter().any(|x| x.slo == "file_wait_p95" && !x.met),
        "{:?}",
        od.slos
    );
}
