//! Capacity planning: sweep master counts (and fleet sizes), replicate,
//! put confidence intervals on the numbers, and pick the smallest count
//! that meets every SLO.
//!
//! A point is one (policy, fleet size, master count). Each runs
//! `replications` times with seeds `seed, seed + 1, ...`; runs go in
//! parallel on every core. A metric's 95% confidence interval is the
//! replications' mean plus or minus Student's t (n - 1 degrees of freedom)
//! times the standard error. A point meets an SLO when the *upper* end of the
//! interval is within the target: the recommendation errs on the side of one
//! master too many, never one too few.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

use scheduler::core::CoreError;

use crate::metrics::RunResult;
use crate::policy::Policy;
use crate::run::{run, RunSpec};
use crate::scenario::Scenario;

/// A mean with its 95% confidence interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Estimate {
    /// Mean over replications.
    pub mean: f64,
    /// Half-width of the 95% interval.
    pub half_width: f64,
}

impl Estimate {
    /// Mean and 95% interval of `values` (Student t).
    pub fn of(values: &[f64]) -> Estimate {
        let n = values.len();
        if n == 0 {
            return Estimate::default();
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        if n < 2 {
            return Estimate {
                mean,
                half_width: f64::INFINITY,
            };
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
            .map(|d| d.inverse_cdf(0.975))
            .unwrap_or(f64::INFINITY);
        Estimate {
            mean,
            half_width: t * (var / n as f64).sqrt(),
        }
    }

    /// Upper end of the interval.
    pub fn high(&self) -> f64 {
        self.mean + self.half_width
    }

    /// Lower end of the interval.
    pub fn low(&self) -> f64 {
        self.mean - self.half_width
    }
}

/// The metrics a plan reports per point, each with its interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PointStats {
    /// p95 change -> applied, seconds.
    pub staleness_applied_p95: Estimate,
    /// p99 change -> applied, seconds.
    pub staleness_applied_p99: Estimate,
    /// p50 change -> applied, seconds.
    pub staleness_applied_p50: Estimate,
    /// p95 change -> compiled, seconds.
    pub staleness_compiled_p95: Estimate,
    /// p95 queue wait, seconds.
    pub queue_wait_p95: Estimate,
    /// Share of failed agent runs.
    pub failed_runs: Estimate,
    /// Largest oldest-queued age, seconds.
    pub oldest_age_max: Estimate,
    /// Share of compile slots busy.
    pub utilization: Estimate,
    /// Compiles per hour.
    pub compiles_per_hour: Estimate,
    /// Share of compiles that were wasted.
    pub wasted: Estimate,
    /// Node CPU seconds per node per day.
    pub node_cpu_per_node_day: Estimate,
    /// Share of fact changes that touch facts a catalog reads.
    pub used_share: Estimate,
    /// p95 of a file request, request to answer, seconds.
    pub file_wait_p95: Estimate,
    /// p95 of an apply with its file requests, seconds.
    pub apply_time_p95: Estimate,
}

impl PointStats {
    fn of(runs: &[RunResult]) -> PointStats {
        let est =
            |f: &dyn Fn(&RunResult) -> f64| Estimate::of(&runs.iter().map(f).collect::<Vec<_>>());
        PointStats {
            staleness_applied_p95: est(&|r| r.staleness_applied.p95),
            staleness_applied_p99: est(&|r| r.staleness_applied.p99),
            staleness_applied_p50: est(&|r| r.staleness_applied.p50),
            staleness_compiled_p95: est(&|r| r.staleness_compiled.p95),
            queue_wait_p95: est(&|r| r.queue_wait.p95),
            failed_runs: est(&|r| r.failed_runs.ratio),
            oldest_age_max: est(&|r| r.oldest_age.max),
            utilization: est(&|r| r.utilization),
            compiles_per_hour: est(&|r| r.compiles.per_hour),
            wasted: est(&|r| r.compiles.wasted_ratio),
            node_cpu_per_node_day: est(&|r| r.node_cpu_per_node_day),
            used_share: est(&|r| r.churn.used_share),
            file_wait_p95: est(&|r| r.file_wait.p95),
            apply_time_p95: est(&|r| r.apply_time.p95),
        }
    }
}

/// One SLO checked at one point.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SloCheck {
    /// The SLO's key in the scenario.
    pub slo: &'static str,
    /// Its target.
    pub target: f64,
    /// The metric's estimate.
    pub value: Estimate,
    /// Upper end of the interval within target.
    pub met: bool,
}

/// One (policy, fleet size, master count) with its replications.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// Policy.
    pub policy: Policy,
    /// Nodes at the start.
    pub nodes: u32,
    /// Masters.
    pub masters: u32,
    /// The replications' results.
    #[serde(skip)]
    pub runs: Vec<RunResult>,
    /// Metrics with intervals.
    pub stats: PointStats,
    /// Every SLO of the scenario.
    pub slos: Vec<SloCheck>,
}

impl Point {
    /// Meets every SLO.
    pub fn meets_all(&self) -> bool {
        self.slos.iter().all(|c| c.met)
    }
}

/// The answer for one policy and fleet size.
#[derive(Clone, Debug, Serialize)]
pub struct Recommendation {
    /// Policy.
    pub policy: Policy,
    /// Nodes.
    pub nodes: u32,
    /// Smallest master count meeting every SLO, if any tried does.
    pub masters: Option<u32>,
}

/// A finished plan.
#[derive(Clone, Debug, Serialize)]
pub struct PlanResult {
    /// Scenario name.
    pub scenario: String,
    /// Replications per point.
    pub replications: u32,
    /// Every point.
    pub points: Vec<Point>,
    /// Per policy and fleet size.
    pub recommendations: Vec<Recommendation>,
    /// What fact filtering saves, per fleet size (queue with filtering on).
    pub filtering: Vec<Filtering>,
    /// What narrowed deploys save, per fleet size (queue with narrowing
    /// on, scenarios with deploys).
    pub narrowing: Vec<Narrowing>,
    /// How many JRubies pcq may compile on, per fleet size (queue, with
    /// file requests and a file-wait SLO).
    pub concurrency: Vec<Concurrency>,
}

/// The queue at each `max_concurrency` below the JRubies (the rest left
/// for file requests) at each master count: the answer is the fewest
/// masters, and at that count the largest `max_concurrency`, that meet
/// every SLO, the file wait's among them.
#[derive(Clone, Debug, Serialize)]
pub struct Concurrency {
    /// Nodes.
    pub nodes: u32,
    /// Masters recommended.
    pub masters: Option<u32>,
    /// `max_concurrency` per master recommended with them.
    pub max_concurrency: Option<u32>,
    /// Every (masters, max_concurrency) tried.
    pub tried: Vec<ConcurrencyPoint>,
}

/// One (masters, max_concurrency) of the queue.
#[derive(Clone, Debug, Serialize)]
pub struct ConcurrencyPoint {
    /// Masters.
    pub masters: u32,
    /// Compiles at once per master.
    pub max_concurrency: u32,
    /// p95 file request, seconds.
    pub file_wait_p95: Estimate,
    /// p95 change -> applied, seconds.
    pub staleness_applied_p95: Estimate,
    /// Every SLO met.
    pub met: bool,
}

/// The queue with narrowed deploys (only the nodes whose catalogs reach
/// the change recompile) and with every deploy moving every node of its
/// environment, each swept over the plan's master counts, same seeds.
#[derive(Clone, Debug, Serialize)]
pub struct Narrowing {
    /// Nodes.
    pub nodes: u32,
    /// Masters recommended with narrowed deploys.
    pub masters: Option<u32>,
    /// Masters recommended when every deploy moves every node.
    pub masters_without: Option<u32>,
    /// The master count the compile figures are for (the recommendation
    /// without narrowing, else the scenario's).
    pub at: u32,
    /// Compiles an hour with narrowed deploys, at `at`.
    pub with: Estimate,
    /// Compiles an hour without, at `at`.
    pub without: Estimate,
    /// Change -> applied p95 with narrowed deploys, at `at`, seconds.
    pub applied_p95_with: Estimate,
    /// Change -> applied p95 without, at `at`, seconds.
    pub applied_p95_without: Estimate,
}

/// The queue with and without fact filtering, at one master count (the
/// recommended one, else the scenario's), same seeds.
#[derive(Clone, Debug, Serialize)]
pub struct Filtering {
    /// Nodes.
    pub nodes: u32,
    /// Masters.
    pub masters: u32,
    /// Share of fact changes that touch facts a catalog reads.
    pub used_share: Estimate,
    /// Compiles an hour with filtering (only used facts bump).
    pub with: Estimate,
    /// Compiles an hour without (any fact change bumps).
    pub without: Estimate,
    /// Change -> applied p95 without filtering, seconds.
    pub applied_p95_without: Estimate,
}

impl PlanResult {
    /// The point for these coordinates.
    pub fn point(&self, policy: Policy, nodes: u32, masters: u32) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.policy == policy && p.nodes == nodes && p.masters == masters)
    }

    /// The recommended master count.
    pub fn recommended(&self, policy: Policy, nodes: u32) -> Option<u32> {
        self.recommendations
            .iter()
            .find(|r| r.policy == policy && r.nodes == nodes)
            .and_then(|r| r.masters)
    }

    /// The policies swept, in the list's order.
    pub fn policies(&self) -> Vec<Policy> {
        Policy::ALL
            .iter()
            .copied()
            .filter(|p| self.points.iter().any(|x| x.policy == *p))
            .collect()
    }

    /// The fleet sizes swept, smallest first.
    pub fn fleet_sizes(&self) -> Vec<u32> {
        let mut sizes: Vec<u32> = self.points.iter().map(|p| p.nodes).collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }
}

/// How to run a plan.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Policies to sweep.
    pub policies: Vec<Policy>,
    /// Replications per point (the scenario's unless set).
    pub replications: Option<u32>,
    /// Worker threads (at least 1).
    pub jobs: usize,
    /// Also run this master count (the scenario's, for `--check`).
    pub extra_masters: Option<u32>,
}

impl PlanOptions {
    /// Every policy, the scenario's replications, every core.
    pub fn new() -> PlanOptions {
        PlanOptions {
            policies: Policy::ALL.to_vec(),
            replications: None,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            extra_masters: None,
        }
    }
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions::new()
    }
}

/// Runs the sweep. `progress` is called after each finished run with
/// (done, total).
pub fn plan(
    scenario: &Scenario,
    options: &PlanOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<PlanResult, CoreError> {
    let reps = options
        .replications
        .unwrap_or(scenario.plan.replications)
        .max(2);
    let mut masters = scenario.plan.masters.clone();
    if let Some(extra) = options.extra_masters {
        masters.push(extra);
    }
    masters.sort_unstable();
    masters.dedup();
    let sizes = if scenario.plan.nodes.is_empty() {
        vec![scenario.fleet.nodes]
    } else {
        scenario.plan.nodes.clone()
    };

    let mut jobs = Vec::new();
    for &policy in &options.policies {
        for &nodes in &sizes {
            replicate(&mut jobs, scenario, policy, nodes, &masters, reps);
        }
    }
    let results = run_all(&jobs, options.jobs, progress);

    let mut points = Vec::new();
    let mut it = results.into_iter();
    for &policy in &options.policies {
        for &nodes in &sizes {
            for &m in &masters {
                let runs = next_runs(&mut it, reps)?;
                let stats = PointStats::of(&runs);
                let slos = check_slos(scenario, &stats);
                points.push(Point {
                    policy,
                    nodes,
                    masters: m,
                    runs,
                    stats,
                    slos,
                });
            }
        }
    }
    let mut recommendations = Vec::new();
    for &policy in &options.policies {
        for &nodes in &sizes {
            let masters = points
                .iter()
                .filter(|p| p.policy == policy && p.nodes == nodes && p.meets_all())
                .map(|p| p.masters)
                .min();
            recommendations.push(Recommendation {
                policy,
                nodes,
                masters,
            });
        }
    }
    let filtering = if options.policies.contains(&Policy::Queue) && scenario.queue.fact_filter {
        filtering(
            scenario,
            &sizes,
            reps,
            &points,
            &recommendations,
            options,
            progress,
        )?
    } else {
        Vec::new()
    };
    let narrowing = if options.policies.contains(&Policy::Queue)
        && scenario.queue.narrow_deploys
        && !scenario.deploys.is_empty()
    {
        narrowing(scenario, &sizes, &masters, reps, &points, options, progress)?
    } else {
        Vec::new()
    };
    let concurrency = if options.policies.contains(&Policy::Queue)
        && scenario.slo.file_wait_p95.is_some()
        && scenario.files.per_apply > 0
    {
        concurrency(scenario, &sizes, &masters, reps, &points, options, progress)?
    } else {
        Vec::new()
    };
    Ok(PlanResult {
        scenario: scenario.name.clone(),
        replications: reps,
        points,
        recommendations,
        filtering,
        narrowing,
        concurrency,
    })
}

/// The queue swept over `max_concurrency` (every value from 1 to the
/// JRubies; the scenario's own is the plan's points already).
fn concurrency(
    scenario: &Scenario,
    sizes: &[u32],
    masters: &[u32],
    reps: u32,
    points: &[Point],
    options: &PlanOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<Concurrency>, CoreError> {
    let slots = scenario.masters.slots;
    let own = slots - scenario.queue.reserve_for_files;
    let variants: Vec<(u32, Scenario)> = (1..=slots)
        .filter(|&c| c != own)
        .map(|c| {
            let mut s = scenario.clone();
            s.queue.reserve_for_files = slots - c;
            (c, s)
        })
        .collect();
    let mut jobs = Vec::new();
    for &nodes in sizes {
        for (_, s) in &variants {
            replicate(&mut jobs, s, Policy::Queue, nodes, masters, reps);
        }
    }
    let results = run_all(&jobs, options.jobs, progress);
    let mut it = results.into_iter();
    let mut out = Vec::new();
    for &nodes in sizes {
        let mut tried = Vec::new();
        for (c, _) in &variants {
            for &m in masters {
                let stats = PointStats::of(&next_runs(&mut it, reps)?);
                let met = check_slos(scenario, &stats).iter().all(|x| x.met);
                tried.push(point_at(m, *c, &stats, met));
            }
        }
        for p in points
            .iter()
            .filter(|p| p.policy == Policy::Queue && p.nodes == nodes)
        {
            tried.push(point_at(p.masters, own, &p.stats, p.meets_all()));
        }
        tried.sort_by_key(|p| (p.masters, p.max_concurrency));
        let best = masters.iter().find_map(|&m| {
            tried
                .iter()
                .filter(|p| p.masters == m && p.met)
                .map(|p| p.max_concurrency)
                .max()
                .map(|c| (m, c))
        });
        out.push(Concurrency {
            nodes,
            masters: best.map(|b| b.0),
            max_concurrency: best.map(|b| b.1),
            tried,
        });
    }
    Ok(out)
}

/// The runs of `scenario` under `policy` at `nodes` and each of `masters`:
/// `reps` replications each, with seeds `scenario.seed, + 1, ...` (every
/// variant of a scenario keeps its seed, so variants compare run for run).
fn replicate<'a>(
    jobs: &mut Vec<RunSpec<'a>>,
    scenario: &'a Scenario,
    policy: Policy,
    nodes: u32,
    masters: &[u32],
    reps: u32,
) {
    for &m in masters {
        for rep in 0..reps {
            jobs.push(RunSpec {
                scenario,
                policy,
                masters: m,
                nodes,
                seed: scenario.seed.wrapping_add(u64::from(rep)),
            });
        }
    }
}

fn point_at(masters: u32, max_concurrency: u32, stats: &PointStats, met: bool) -> ConcurrencyPoint {
    ConcurrencyPoint {
        masters,
        max_concurrency,
        file_wait_p95: stats.file_wait_p95,
        staleness_applied_p95: stats.staleness_applied_p95,
        met,
    }
}

/// Sweeps the queue with every deploy moving every node of its
/// environment (same master counts, same seeds), to state what narrowed
/// deploys save.
fn narrowing(
    scenario: &Scenario,
    sizes: &[u32],
    masters: &[u32],
    reps: u32,
    points: &[Point],
    options: &PlanOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<Narrowing>, CoreError> {
    let mut whole = scenario.clone();
    whole.queue.narrow_deploys = false;
    let mut jobs = Vec::new();
    for &nodes in sizes {
        replicate(&mut jobs, &whole, Policy::Queue, nodes, masters, reps);
    }
    let results = run_all(&jobs, options.jobs, progress);
    let mut it = results.into_iter();
    let mut out = Vec::new();
    for &nodes in sizes {
        let mut without: Vec<(u32, PointStats, bool)> = Vec::new();
        for &m in masters {
            let runs = next_runs(&mut it, reps)?;
            let stats = PointStats::of(&runs);
            let met = check_slos(scenario, &stats).iter().all(|c| c.met);
            without.push((m, stats, met));
        }
        let queue = |m: u32| {
            points
                .iter()
                .find(|p| p.policy == Policy::Queue && p.nodes == nodes && p.masters == m)
        };
        let recommended = masters
            .iter()
            .copied()
            .find(|&m| queue(m).is_some_and(|p| p.meets_all()));
        let masters_without = without.iter().find(|w| w.2).map(|w| w.0);
        let at = masters_without.unwrap_or(scenario.masters.count);
        let (Some(with), Some(w)) = (queue(at), without.iter().find(|w| w.0 == at)) else {
            continue;
        };
        out.push(Narrowing {
            nodes,
            masters: recommended,
            masters_without,
            at,
            with: with.stats.compiles_per_hour,
            without: w.1.compiles_per_hour,
            applied_p95_with: with.stats.staleness_applied_p95,
            applied_p95_without: w.1.staleness_applied_p95,
        });
    }
    Ok(out)
}

/// Runs the queue without fact filtering where the plan recommends (same
/// seeds), to state what filtering saves.
fn filtering(
    scenario: &Scenario,
    sizes: &[u32],
    reps: u32,
    points: &[Point],
    recommendations: &[Recommendation],
    options: &PlanOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<Filtering>, CoreError> {
    let mut unfiltered = scenario.clone();
    unfiltered.queue.fact_filter = false;
    let mut at = Vec::new();
    let mut jobs = Vec::new();
    for &nodes in sizes {
        let masters = recommendations
            .iter()
            .find(|r| r.policy == Policy::Queue && r.nodes == nodes)
            .and_then(|r| r.masters)
            .unwrap_or(scenario.masters.count);
        let Some(with) = points
            .iter()
            .find(|p| p.policy == Policy::Queue && p.nodes == nodes && p.masters == masters)
        else {
            continue;
        };
        at.push(with);
        replicate(
            &mut jobs,
            &unfiltered,
            Policy::Queue,
            nodes,
            &[masters],
            reps,
        );
    }
    let results = run_all(&jobs, options.jobs, progress);
    let mut it = results.into_iter();
    let mut out = Vec::new();
    for with in at {
        let runs = next_runs(&mut it, reps)?;
        let without = PointStats::of(&runs);
        out.push(Filtering {
            nodes: with.nodes,
            masters: with.masters,
            used_share: with.stats.used_share,
            with: with.stats.compiles_per_hour,
            without: without.compiles_per_hour,
            applied_p95_without: without.staleness_applied_p95,
        });
    }
    Ok(out)
}

/// The next `reps` results of a sweep (one point's replications); the
/// first error, if a run failed.
fn next_runs(
    it: &mut impl Iterator<Item = Option<Result<RunResult, CoreError>>>,
    reps: u32,
) -> Result<Vec<RunResult>, CoreError> {
    it.take(reps as usize).flatten().collect()
}

/// Runs `jobs` on `threads` threads; results by job index, so thread
/// timing never changes a report.
fn run_all(
    jobs: &[RunSpec],
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Vec<Option<Result<RunResult, CoreError>>> {
    // Largest fleets first, then the costlier policies, so the slowest
    // runs do not finish last alone.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| {
        let cost = jobs[i].policy.description().relative_cost;
        std::cmp::Reverse((jobs[i].nodes, cost))
    });
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<RunResult, CoreError>>>> =
        Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1).min(jobs.len().max(1)) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let result = run(&jobs[i]);
                if let Ok(mut slots) = results.lock() {
                    slots[i] = Some(result);
                }
                progress(done.fetch_add(1, Ordering::Relaxed) + 1, jobs.len());
            });
        }
    });
    results.into_inner().unwrap_or_default()
}

/// Checks the scenario's SLOs against a point's estimates.
pub fn check_slos(scenario: &Scenario, stats: &PointStats) -> Vec<SloCheck> {
    let slo = &scenario.slo;
    let mut checks = Vec::new();
    let mut add = |name: &'static str, target: Option<f64>, value: Estimate| {
        if let Some(target) = target {
            checks.push(SloCheck {
                slo: name,
                target,
                value,
                met: value.high() <= target,
            });
        }
    };
    add(
        "staleness_applied_p95",
        slo.staleness_applied_p95.map(|d| d.as_secs_f64()),
        stats.staleness_applied_p95,
    );
    add(
        "staleness_compiled_p95",
        slo.staleness_compiled_p95.map(|d| d.as_secs_f64()),
        stats.staleness_compiled_p95,
    );
    add("failed_runs", slo.failed_runs, stats.failed_runs);
    add(
        "oldest_age",
        slo.oldest_age.map(|d| d.as_secs_f64()),
        stats.oldest_age_max,
    );
    if scenario.files.simulated() {
        add(
            "file_wait_p95",
            slo.file_wait_p95.map(|d| d.as_secs_f64()),
            stats.file_wait_p95,
        );
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn student_t_interval() {
        // mean 2, sd 1, n = 4: t(0.975, 3) = 3.182, se = 0.5
        let e = Estimate::of(&[1.0, 2.0, 3.0, 2.0]);
        assert!((e.mean - 2.0).abs() < 1e-12);
        let sd = (2.0f64 / 3.0).sqrt();
        assert!(
            (e.half_width - 3.182_446 * sd / 2.0).abs() < 1e-4,
            "{}",
            e.half_width
        );
        assert!(Estimate::of(&[5.0]).half_width.is_infinite());
    }
}
