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
use super::master::MasterId;
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
    pub finishes: [u64; 4],
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

/// Finishes per second over a sliding exponential window.
#[derive(Clone, Debug)]
pub(crate) struct Throughput {
    window: f64,
    weight: f64,
    last: Option<Time>,
    first: Option<Time>,
}

impl Throughput {
    /// A window of five minutes: long enough to smooth a master's compile
    /// times, short enough to follow an added master.
    const WINDOW_SECS: f64 = 300.0;

    pub fn new() -> Throughput {
        Throughput {
            window: Self::WINDOW_SECS,
            weight: 0.0,
            last: None,
            first: None,
        }
    }

    fn decayed(&self, now: Time) -> f64 {
        match self.last {
            Some(last) => self.weight * (-now.since(last).as_secs_f64() / self.window).exp(),
            None => 0.0,
        }
    }

    pub fn record(&mut self, now: Time) {
        self.weight = self.decayed(now) + 1.0;
        self.last = Some(now.max(self.last.unwrap_or(now)));
        self.first.get_or_insert(now);
    }

    /// Finishes per second; `None` before there is anything to go on.
    pub fn rate(&self, now: Time) -> Option<f64> {
        let first = self.first?;
        let elapsed = now.since(first).as_secs_f64();
        if elapsed <= 0.0 {
            return None;
        }
        // Correct for the window not being full yet.
        let coverage = 1.0 - (-elapsed / self.window).exp();
        let rate = self.decayed(now) / self.window / coverage;
        (rate > 0.0).then_some(rate)
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
        // already right after one minute, thanks to the coverage correction
        let mut t = Throughput::new();
        for i in 0..120u64 {
            t.record(Time::from_micros(i * 500_000));
        }
        let rate = t.rate(Time::from_secs(60)).expect("rate");
        assert!((rate - 2.0).abs() < 0.1, "{rate}");
    }
}
