//! What a run measures, and the result it reports.
//!
//! Everything is counted only after the warm-up, so a run starting empty
//! does not flatter or punish a policy. [`RunResult`] is the JSON that
//! `pcq-sim run --format json` prints; its fields are documented here and in
//! `scenarios/README.md`.

use serde::{Deserialize, Serialize};

use scheduler::core::Time;

use crate::fleet::Change;

/// Which model of compiling a run simulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Puppet Server: every agent run asks for a catalog, compiled on demand.
    OnDemand,
    /// pcq: masters compile out of a queue driven by `scheduler::core`.
    Queue,
}

impl Policy {
    /// Both, in report order.
    pub const BOTH: [Policy; 2] = [Policy::Queue, Policy::OnDemand];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Policy::OnDemand => "on-demand",
            Policy::Queue => "queue",
        }
    }
}

/// Distribution of a sample, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Observations.
    pub count: u64,
    /// Mean (0 when there are none).
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarizes `values` (reorders them). Percentiles are the nearest
    /// rank: the smallest value with at least q of the sample at or below.
    pub fn of(values: &mut [f64]) -> Summary {
        let n = values.len();
        if n == 0 {
            return Summary::default();
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let mut pick = |q: f64| {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            *values.select_nth_unstable_by(rank, f64::total_cmp).1
        };
        Summary {
            count: n as u64,
            mean,
            p50: pick(0.50),
            p95: pick(0.95),
            p99: pick(0.99),
            max,
        }
    }
}

/// Failed agent runs, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Failures {
    /// The agent gave up waiting for its catalog (`http_read_timeout`).
    pub timeouts: u64,
    /// The master answered 503 (`max-queued-requests`).
    pub rejected: u64,
    /// No master reachable, or the master died during the request.
    pub errors: u64,
    /// All of them.
    pub total: u64,
    /// Share of agent runs that failed.
    pub ratio: f64,
}

/// Compiles, and how many of them were for nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Compiles {
    /// Compiles finished.
    pub total: u64,
    /// Per measured hour.
    pub per_hour: f64,
    /// With a catalog that differs from the node's last one.
    pub changed: u64,
    /// With the same catalog as last time.
    pub unchanged: u64,
    /// Finished for an agent that had already given up.
    pub abandoned: u64,
    /// Lost mid-way (master died).
    pub lost: u64,
    /// Unchanged + abandoned + lost, as a share of total.
    pub wasted_ratio: f64,
}

/// Changes that happened in the fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    /// Changes of facts catalogs use.
    pub used_facts: u64,
    /// Changes of facts no catalog uses.
    pub unused_facts: u64,
    /// Changes of exported resources.
    pub exports: u64,
    /// Changes pcq cannot observe (see `external` in scenarios).
    pub external: u64,
    /// Share of fact changes that touch used facts.
    pub used_share: f64,
}

/// Little's law on the urgent lane: time-average length `l` against
/// arrival rate times mean wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Little {
    /// Time-average number of jobs waiting.
    pub l: f64,
    /// Jobs leaving the lane per second.
    pub lambda: f64,
    /// Mean wait, seconds.
    pub w: f64,
}

/// One time-series sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Seconds since the start of the run.
    pub t: f64,
    /// Age of the oldest queued job, seconds (queue: over the lanes;
    /// on demand: the oldest request waiting for a JRuby).
    pub oldest_age: f64,
    /// Jobs waiting (queue: urgent + deploy lanes; on demand: requests
    /// waiting for a JRuby).
    pub waiting: u64,
    /// Compiles running on all masters.
    pub running: u64,
}

/// Everything one run reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// The policy simulated.
    pub policy: Policy,
    /// Seed of this replication.
    pub seed: u64,
    /// Masters.
    pub masters: u32,
    /// Nodes at the start.
    pub nodes: u32,
    /// Hours measured (after warm-up).
    pub measured_hours: f64,
    /// From a change to the catalog that includes it compiled (and, on
    /// demand, delivered).
    pub staleness_compiled: Summary,
    /// From a change to the node applying a catalog that includes it.
    pub staleness_applied: Summary,
    /// From a job joining the queue (a bump; on demand, a request) to its
    /// compile starting.
    pub queue_wait: Summary,
    /// Agent runs (on demand) or syncs (queue) started.
    pub agent_runs: u64,
    /// Failed agent runs.
    pub failed_runs: Failures,
    /// Share of compile slots busy, over all masters.
    pub utilization: f64,
    /// The same per master.
    pub utilization_per_master: Vec<f64>,
    /// Compiles and waste.
    pub compiles: Compiles,
    /// CPU seconds nodes spent on agent runs, syncs and applies.
    pub node_cpu_seconds: f64,
    /// The same per node per day.
    pub node_cpu_per_node_day: f64,
    /// Oldest queued age over the samples.
    pub oldest_age: Summary,
    /// Fleet churn.
    pub churn: Churn,
    /// Little's law check on the urgent lane (queue policy).
    pub little: Option<Little>,
    /// Events the engine handled.
    pub events: u64,
    /// Samples over time (whole run, warm-up included).
    pub series: Vec<Point>,
}

/// Collects measurements during a run.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Start of the measured window.
    pub from: Time,
    /// Change -> compiled, seconds.
    pub compiled: Vec<f64>,
    /// Change -> applied, seconds.
    pub applied: Vec<f64>,
    /// Queue wait, seconds.
    pub waits: Vec<f64>,
    /// Agent runs / syncs.
    pub runs: u64,
    /// Failures.
    pub failures: Failures,
    /// Compile counters.
    pub compiles: Compiles,
    /// Node CPU seconds.
    pub node_cpu: f64,
    /// Churn counters.
    pub churn: Churn,
    /// Samples.
    pub series: Vec<Point>,
}

impl Metrics {
    /// Collector for a run measured from `from`, with room for about
    /// `changes` samples.
    pub fn with_capacity(from: Time, changes: usize) -> Metrics {
        Metrics {
            from,
            compiled: Vec::with_capacity(changes),
            applied: Vec::with_capacity(changes),
            waits: Vec::with_capacity(changes),
            ..Metrics::default()
        }
    }

    /// Is `t` inside the measured window?
    pub fn counts(&self, t: Time) -> bool {
        t >= self.from
    }

    /// `changes` are in a catalog compiled at `now`.
    pub fn compiled(&mut self, changes: &[Change], now: Time) {
        for c in changes.iter().filter(|c| c.at() >= self.from) {
            self.compiled.push(now.since(c.at()).as_secs_f64());
        }
    }

    /// `changes` are applied on their node at `at`.
    pub fn applied(&mut self, changes: &[Change], at: Time) {
        for c in changes.iter().filter(|c| c.at() >= self.from) {
            self.applied.push(at.since(c.at()).as_secs_f64());
        }
    }

    /// Changes still waiting at the end of the run (`compiled`: already in
    /// a compiled catalog, not applied). They count with the age they have
    /// reached, a lower bound of their staleness: a system that never
    /// delivers must not look fresh for lack of samples.
    pub fn censored(&mut self, changes: &[Change], end: Time, compiled: bool) {
        for c in changes.iter().filter(|c| c.at() >= self.from) {
            let age = end.since(c.at()).as_secs_f64();
            if !compiled {
                self.compiled.push(age);
            }
            self.applied.push(age);
        }
    }

    /// A job waited from `since` to `now`.
    pub fn waited(&mut self, since: Time, now: Time) {
        if self.counts(now) {
            self.waits.push(now.since(since).as_secs_f64());
        }
    }

    /// CPU spent on a node at `now`.
    pub fn cpu(&mut self, now: Time, seconds: f64) {
        if self.counts(now) {
            self.node_cpu += seconds;
        }
    }
}
