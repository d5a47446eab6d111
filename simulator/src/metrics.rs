//! What a run reports: [`RunResult`], the JSON that `pcq-sim run --format
//! json` prints; its fields are documented here and in
//! `scenarios/README.md`.
//!
//! The counters and samples behind it are recorded during the run by
//! `measure::Metrics`; only the measured window (after the warm-up) counts.

use serde::{Deserialize, Serialize};

use crate::measure::{Churn, Compiles, Failures, Point};
// The policy a result names. It lives, with the list of policies, in
// `policy`; re-exported here, where callers (the benchmarks among them)
// have always found it next to `RunResult`.
use crate::policy::Policy;

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
    /// What a catalog took, as its client sees it. On demand: from the
    /// agent's request to its catalog (JRuby borrow wait plus compile),
    /// for requests the agent still waited for; queue: from a compile's
    /// start to the catalog stored. Compare a herd's prediction with what
    /// clients measured (`pcq calibrate --herd`).
    pub request_latency: Summary,
    /// What an agent's file request (`file_metadata`, `file_content`)
    /// took, from request to answer: the wait for a JRuby behind compiles
    /// and other requests, plus its own JRuby time (`[files]`; empty
    /// without file requests).
    #[serde(default)]
    pub file_wait: Summary,
    /// An apply with file requests, from the catalog in hand to the apply
    /// over: `agents.apply_time` plus the file requests one after another.
    #[serde(default)]
    pub apply_time: Summary,
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
