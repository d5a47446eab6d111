//! What the core reports about itself: queue depths and ages, compiles in
//! flight, counters by reason and outcome, and the cycle time.
//!
//! The oldest age is the product's scaling signal: when the oldest job in
//! the queue keeps getting older, the masters cannot keep up and another
//! one is needed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::action::Outcome;
use super::gate::Blocked;
use super::id::MasterId;
use super::node::{Lane, Reason};
use super::time::Time;

/// A lane's depth and how long its oldest ready job has waited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LaneStats {
    /// Nodes queued in the lane (for the cycle lane, due or not).
    pub depth: usize,
    /// How long the head has waited: since it was queued (urgent), since
    /// the deploy (deploy), or since it fell due (cycle). Zero when empty or
    /// nothing is due.
    #[serde(with = "humantime_serde")]
    pub oldest_age: Duration,
}

/// One master's view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MasterStats {
    /// Its id.
    pub id: MasterId,
    /// Whether the driver reports it reachable.
    pub up: bool,
    /// Compiles running there.
    pub in_flight: u32,
    /// Its concurrency limit.
    pub max_concurrency: u32,
    /// Its cores.
    pub cores: u32,
    /// The gate's load estimate per core.
    pub load_per_core: f64,
    /// JRubies free for pcq by the gate's count (its last pool reading and
    /// pcq's starts and ends since), where the pool is read.
    pub pool_free: Option<u32>,
}

/// A snapshot of the core.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// When it was taken.
    pub at: Time,
    /// Known nodes.
    pub nodes: usize,
    /// Per lane, in [`Lane::ALL`] order.
    pub lanes: [LaneStats; 3],
    /// Compiles running.
    pub in_flight: usize,
    /// Nodes waiting out a backoff.
    pub parked: usize,
    /// Compiles started, by [`Reason`] (index = `Reason as usize`).
    pub starts: [u64; 8],
    /// Compiles finished, by [`Outcome`] (index = `Outcome as usize`).
    pub finishes: [u64; Outcome::ALL.len()],
    /// How long compiling every node once takes at the recent finish rate
    /// (nodes / finishes per second over the last few minutes).
    #[serde(with = "humantime_serde")]
    pub cycle_time: Option<Duration>,
    /// Why the last poll started nothing.
    pub blocked: Blocked,
    /// Per master.
    pub masters: Vec<MasterStats>,
}

impl Stats {
    /// The lane's numbers.
    pub fn lane(&self, lane: Lane) -> LaneStats {
        self.lanes[lane.index()]
    }

    /// Starts for this reason so far.
    pub fn started(&self, reason: Reason) -> u64 {
        self.starts[reason as usize]
    }

    /// Finishes with this outcome so far.
    pub fn finished(&self, outcome: Outcome) -> u64 {
        self.finishes[outcome as usize]
    }

    /// The oldest age over all lanes: the signal to add a master.
    pub fn oldest_age(&self) -> Duration {
        self.lanes
            .iter()
            .map(|l| l.oldest_age)
            .max()
            .unwrap_or_default()
    }
}

/// Width of one bucket of the finish counter, in microseconds (10 s).
const BUCKET: u64 = 10_000_000;
/// Buckets kept: 30 x 10 s = the last five minutes, long enough to smooth
/// compile times, short enough to follow an added master.
const BUCKETS: usize = 30;

/// Finishes per second over a sliding window of the last five minutes,
/// counted in 10-second buckets (no floating point on the hot path).
#[derive(Clone, Debug)]
pub(crate) struct Throughput {
    counts: [u32; BUCKETS],
    /// Index (time / BUCKET) of the newest bucket.
    newest: u64,
    first: Option<Time>,
}

impl Throughput {
    pub fn new() -> Throughput {
        Throughput {
            counts: [0; BUCKETS],
            newest: 0,
            first: None,
        }
    }

    pub fn record(&mut self, now: Time) {
        let b = now.as_micros() / BUCKET;
        if self.first.is_none() {
            self.first = Some(now);
            self.newest = b;
        }
        if b > self.newest {
            let stale = (b - self.newest).min(BUCKETS as u64);
            for k in 0..stale {
                self.counts[((b - k) % BUCKETS as u64) as usize] = 0;
            }
            self.newest = b;
        }
        if b + (BUCKETS as u64) > self.newest {
            let slot = &mut self.counts[(b % BUCKETS as u64) as usize];
            *slot = slot.saturating_add(1);
        }
    }

    /// Finishes per second; `None` before there is anything to go on.
    pub fn rate(&self, now: Time) -> Option<f64> {
        let first = self.first?;
        let b = now.as_micros() / BUCKET;
        let oldest = (b + 1).saturating_sub(BUCKETS as u64);
        let window_start = Time::from_micros(oldest * BUCKET).max(first);
        let covered = now.since(window_start).as_secs_f64();
        if covered <= 0.0 {
            return None;
        }
        let lowest_valid = (self.newest + 1).saturating_sub(BUCKETS as u64);
        let count: u64 = (oldest.max(lowest_valid)..=b.min(self.newest))
            .map(|i| u64::from(self.counts[(i % BUCKETS as u64) as usize]))
            .sum();
        (count > 0).then(|| count as f64 / covered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_converges_to_the_finish_rate() {
        let mut t = Throughput::new();
        // 2 finishes per second for 20 minutes
        for i in 0..2400u64 {
            t.record(Time::from_micros(i * 500_000));
        }
        let rate = t.rate(Time::from_secs(1200)).expect("rate");
        assert!((rate - 2.0).abs() < 0.05, "{rate}");
        // already right after one minute
        let mut t = Throughput::new();
        for i in 0..120u64 {
            t.record(Time::from_micros(i * 500_000));
        }
        let rate = t.rate(Time::from_secs(60)).expect("rate");
        assert!((rate - 2.0).abs() < 0.1, "{rate}");
        // and it forgets: nothing for ten minutes, then one per second
        for i in 0..60u64 {
            t.record(Time::from_secs(660 + i));
        }
        let rate = t.rate(Time::from_secs(720)).expect("rate");
        assert!((rate - 0.2).abs() < 0.01, "{rate}");
    }
}
