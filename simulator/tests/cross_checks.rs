//! The simulator against queueing theory and Puppet's sizing rule, where
//! they apply. Each check runs the queue policy through `scheduler::core`
//! (or the on-demand model) and compares with a closed-form answer.
//!
//! (a) M/M/c: Erlang C mean wait inside the 95% interval of replications.
//! (b) M/M/c//N: the exact finite-source mean wait.
//! (c) Little's law on the simulated queue.
//! (d) On demand in steady state: utilization = n*s/(m*j*r).

use std::path::Path;

use simulator::metrics::RunResult;
use simulator::plan::Estimate;
use simulator::policy::Policy;
use simulator::run::{run, RunSpec};
use simulator::scenario::Scenario;
use simulator::theory::{erlang_c_wait, finite_source_wait, puppet_utilization};

const REPLICATIONS: u64 = 10;

/// An M/M/c set-up: cycle off, used-fact bumps from a large fleet as one
/// Poisson stream (uploaded as they happen), exponential compiles, no gate.
fn mmc(lambda: f64, mu: f64, c: u32, jobs: f64, fleet: u32, closed: bool) -> Scenario {
    let duration = jobs / lambda;
    let per_node_day = if closed {
        lambda * 86_400.0 // lambda is per node here
    } else {
        lambda * 86_400.0 / f64::from(fleet)
    };
    let text = format!(
        r#"
name = "mmc"
duration = "{duration:.0}s"
warmup = "{warmup:.0}s"
sample_interval = "1h"

[fleet]
nodes = {fleet}

[agents]
interval = "off"

[compile]
distribution = "exponential"
mean = "{mean_ms:.0}ms"

[facts]
used_changes_per_node_day = {per_node_day}
unused_changes_per_node_day = 0.0
model = "{model}"

[masters]
count = 1
slots = {c}
cores = {c}

[queue]
fact_upload = "immediate"
notify = false

[queue.core]
min_cycle_interval = "off"
# the formulas know no per-node coalescing
min_urgent_interval = "0s"

[queue.core.gate]
max_load_per_core = 0.0
"#,
        warmup = duration * 0.05,
        mean_ms = 1000.0 / mu,
        model = if closed { "closed" } else { "open" },
    );
    match Scenario::parse(&text, Path::new("mmc.toml"), Path::new(".")) {
        Ok(s) => s,
        Err(e) => panic!("test scenario: {e}"),
    }
}

fn replicate(s: &Scenario, policy: Policy) -> Vec<RunResult> {
    (0..REPLICATIONS)
        .map(|k| {
            let mut spec = RunSpec::of(s, policy);
            spec.seed = 1000 + k;
            run(&spec).expect("scenario runs")
        })
        .collect()
}

#[test]
fn erlang_c_mean_wait_is_inside_the_confidence_interval() {
    for (lambda, mu, c) in [(2.4, 0.7, 4), (1.0, 0.5, 3), (6.0, 1.0, 8), (0.8, 1.0, 1)] {
        let s = mmc(lambda, mu, c, 40_000.0, 200_000, false);
        let runs = replicate(&s, Policy::Queue);
        let waits: Vec<f64> = runs.iter().map(|r| r.queue_wait.mean).collect();
        let est = Estimate::of(&waits);
        let theory = erlang_c_wait(lambda, mu, c).expect("stable");
        assert!(
            (est.mean - theory).abs() <= est.half_width,
            "lambda {lambda} mu {mu} c {c}: simulated {:.4} ± {:.4}, Erlang C {theory:.4}",
            est.mean,
            est.half_width
        );
        // and the interval is tight enough to mean something
        assert!(est.half_width < 0.1 * theory, "interval too wide: {est:?}");
        // every job was a bump from the urgent lane, compiled once
        let r = &runs[0];
        assert!(r.queue_wait.count > 30_000, "{} jobs", r.queue_wait.count);
        assert_eq!(r.compiles.unchanged, 0);
    }
}

#[test]
fn finite_source_mean_wait_matches_the_exact_formula() {
    // 20 nodes, each changing a used fact 1/20 s after its last compile,
    // 2 compile slots of mean 1 s
    for (lambda, mu, c, n) in [(0.05, 1.0, 2, 20u32), (0.2, 1.0, 3, 10)] {
        let s = mmc(
            lambda,
            mu,
            c,
            40_000.0 / (lambda * f64::from(n)) * lambda * f64::from(n),
            n,
            true,
        );
        let runs = replicate(&s, Policy::Queue);
        let est = Estimate::of(&runs.iter().map(|r| r.queue_wait.mean).collect::<Vec<_>>());
        let theory = finite_source_wait(lambda, mu, c, n);
        assert!(
            (est.mean - theory).abs() <= est.half_width,
            "N {n} c {c}: simulated {:.4} ± {:.4}, exact {theory:.4}",
            est.mean,
            est.half_width
        );
        // an open-model formula would be clearly off here
        let open = erlang_c_wait(lambda * f64::from(n), mu, c).expect("stable");
        assert!(
            (open - theory).abs() > 3.0 * est.half_width,
            "check cannot tell models apart"
        );
    }
}

#[test]
fn littles_law_holds_on_the_simulated_queue() {
    for policy in [Policy::Queue, Policy::OnDemand] {
        let s = if policy == Policy::Queue {
            mmc(2.4, 0.7, 4, 40_000.0, 200_000, false)
        } else {
            on_demand(900, 6.0, 2, 2, "exponential")
        };
        let mut spec = RunSpec::of(&s, policy);
        spec.seed = 7;
        let r = run(&spec).expect("runs");
        let little = r.little.expect("measured");
        let rhs = little.lambda * little.w;
        assert!(
            little.l > 0.1,
            "{policy:?}: queue too short to test: {little:?}"
        );
        assert!(
            (little.l - rhs).abs() / little.l < 0.02,
            "{policy:?}: L = {:.4}, lambda W = {rhs:.4}",
            little.l
        );
    }
}

fn on_demand(nodes: u32, s: f64, masters: u32, jrubies: u32, distribution: &str) -> Scenario {
    let text = format!(
        r#"
name = "puppet-rule"
duration = "11h"
warmup = "1h"

[fleet]
nodes = {nodes}

[agents]
interval = "30m"
splay = "30m"

[compile]
distribution = "{distribution}"
mean = "{s}s"

[facts]
used_changes_per_node_day = 1.0

[masters]
count = {masters}
slots = {jrubies}
cores = {jrubies}
"#
    );
    match Scenario::parse(&text, Path::new("rule.toml"), Path::new(".")) {
        Ok(s) => s,
        Err(e) => panic!("test scenario: {e}"),
    }
}

#[test]
fn on_demand_utilization_follows_puppets_sizing_rule() {
    for (n, s, m, j, dist) in [
        (500u32, 6.0, 2u32, 2u32, "constant"),
        (900, 6.0, 2, 2, "exponential"),
        (2000, 10.0, 3, 4, "constant"),
    ] {
        let scenario = on_demand(n, s, m, j, dist);
        let r = run(&RunSpec::of(&scenario, Policy::OnDemand)).expect("runs");
        let expected = puppet_utilization(f64::from(n), s, f64::from(m), f64::from(j), 1800.0);
        assert!(
            (r.utilization - expected).abs() / expected < 0.02,
            "n {n}: utilization {:.4}, rule {expected:.4}",
            r.utilization
        );
        assert_eq!(r.failed_runs.total, 0, "steady state has no timeouts");
        // the rule read the other way: JRubies needed = n*s/(m*r) at 100%
        let j_needed = f64::from(n) * s / (f64::from(m) * 1800.0);
        assert!((r.utilization * f64::from(j) - j_needed).abs() / j_needed < 0.02);
    }
}

/// A herd in a fleet run (`request_latency`, on demand) is the herd
/// `pcq-sim check` predicts from a calibration: the same master, the same
/// JRuby pool, the same numbers. 60 new certificates at one instant on one
/// master with 3 JRubies and 1.5 cores of 0.4 s compiles.
#[test]
fn a_fleet_herd_waits_what_the_calibration_experiment_predicts() {
    use rand::SeedableRng;
    use scheduler::calibration::Experiment;
    use simulator::calibration::{simulate, MasterModel};
    use simulator::metrics::Summary;

    let text = r#"
name = "herd"
duration = "10m"
warmup = "0s"

[fleet]
nodes = 0

[agents]
interval = "1h"

[compile]
distribution = "constant"
mean = "400ms"

[masters]
count = 1
slots = 3
cores = 1.5

[[herds]]
kind = "new_certs"
at = "1m"
count = 60
window = "1us"
"#;
    let scenario = match Scenario::parse(text, Path::new("herd.toml"), Path::new(".")) {
        Ok(s) => s,
        Err(e) => panic!("test scenario: {e}"),
    };
    let r = run(&RunSpec::of(&scenario, Policy::OnDemand)).expect("runs");
    let fleet = r.request_latency;
    assert_eq!(fleet.count, 60, "{fleet:?}");

    let model = MasterModel {
        compile: scenario.compile.clone(),
        slots: 3,
        cores: 1.5,
        background: 0.0,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut herd = simulate(&model, Experiment::Herd { requests: 60 }, &mut rng);
    let alone = Summary::of(&mut herd.latencies);
    // constant compiles: the same numbers, up to the microsecond rounding
    // of event times and the herd's spread over one microsecond
    for (a, b) in [
        (fleet.p50, alone.p50),
        (fleet.p95, alone.p95),
        (fleet.max, alone.max),
        (fleet.mean, alone.mean),
    ] {
        assert!(
            (a - b).abs() < 1e-3,
            "fleet {fleet:?}\nexperiment {alone:?}"
        );
    }
    // and the numbers are a herd's: 3 at a time, each at half speed
    assert!(
        (alone.max - 60.0 / 3.0 * 0.4 * 2.0).abs() < 1e-3,
        "{alone:?}"
    );
}
