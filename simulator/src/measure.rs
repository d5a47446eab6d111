//! What a run records while it runs: samples of staleness and of queue
//! waits, counters of runs, failures, compiles and churn, and the time
//! series.
//!
//! The world and the models write to one [`Metrics`]; at the end the run
//! summarizes it into the result it reports (`metrics::RunResult`).
//! Everything is counted only after the warm-up, so a run starting empty
//! does not flatter or punish a policy.

use serde::{Deserialize, Serialize};

use scheduler::core::Time;

use crate::fleet::Change;

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
    /// Per catalog request (on demand: issued to received) or compile
    /// (queue: started to stored), seconds.
    pub latencies: Vec<f64>,
    /// File requests, from the agent's request to the answer, seconds.
    pub file_waits: Vec<f64>,
    /// Applies that made file requests: from the catalog in hand to the
    /// apply over (its `apply_time` plus its file requests), seconds.
    pub apply_times: Vec<f64>,
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

    /// A catalog asked for (or a compile started) at `since` was ready at
    /// `now`.
    pub fn latency(&mut self, since: Time, now: Time) {
        if self.counts(now) {
            self.latencies.push(now.since(since).as_secs_f64());
        }
    }

    /// CPU spent on a node at `now`.
    pub fn cpu(&mut self, now: Time, seconds: f64) {
        if self.counts(now) {
            self.node_cpu += seconds;
        }
    }
}
