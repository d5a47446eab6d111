//! The gate in front of each master: may a compile start there now?
//!
//! Four limits, checked in order, and the reason the first one says no:
//!
//! 1. concurrency: compiles in flight < `max_concurrency`;
//! 2. pool: the master's JRuby pool has an instance free for pcq, where the
//!    driver reads the pool (Puppet Server's status API);
//! 3. load: estimated load / cores < `max_load_per_core`;
//! 4. rate: a token bucket of `start_rate` starts per second.
//!
//! The load estimate is the crux. The one-minute load average is an
//! exponential average (time constant 60 s, sampled every 5 s by Linux), so a
//! compile that started 10 s ago shows in it as only 1 - e^(-10/60) = 15% of
//! a runnable process. Gating on the raw number lets a burst of starts through
//! before the load catches up (the herd the gate is there to stop). GNU make
//! (`-l`) adds a weight per recent start; here the weight is exact for an
//! exponential average: a compile that started at `s`, seen through a sample
//! taken at `t`, is still missing `e^(-(t-s)/tau)` of a process (all of it
//! when it started after the sample). The estimate is the sample plus those
//! missing parts, kept as a running sum so a start or finish costs O(1).
//! When the driver also knows the instantaneous runnable count (the fourth
//! field of `/proc/loadavg`, what GNU parallel reads), the estimate is at
//! least that count plus the starts since it was read.
//!
//! The pool reading lags too, by the poll interval: a compile started after
//! it holds an instance the reading shows free, and one that ended after it
//! gave back an instance the reading shows busy. The gate counts both since
//! the reading, so a burst of starts cannot take the instances other
//! traffic (agents' own catalog and file requests) holds.

use serde::{Deserialize, Serialize};

use super::config::GateConfig;
use super::time::Time;

/// Why nothing starts. The order is how far a master got through its gate,
/// used to say which limit binds when several masters disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocked {
    /// No node is queued.
    Empty,
    /// Nodes are queued, but none is due yet (cycle pacing, backoffs).
    Paced,
    /// No master is up (unreachable, answering 503, or none added).
    Down,
    /// Every master has `max_concurrency` compiles in flight.
    Concurrency,
    /// The master's JRuby pool has no instance free for pcq: other traffic
    /// holds them (the reserve for file requests is not pcq's).
    Pool,
    /// The load estimate is at or above the limit.
    Load,
    /// The start-rate limit is used up for now.
    Rate,
}

impl Blocked {
    /// Every reason, in order (index = `as usize`).
    pub const ALL: [Blocked; 7] = [
        Blocked::Empty,
        Blocked::Paced,
        Blocked::Down,
        Blocked::Concurrency,
        Blocked::Pool,
        Blocked::Load,
        Blocked::Rate,
    ];

    /// Lower-case name, for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Blocked::Empty => "empty",
            Blocked::Paced => "paced",
            Blocked::Down => "down",
            Blocked::Concurrency => "concurrency",
            Blocked::Pool => "pool",
            Blocked::Load => "load",
            Blocked::Rate => "rate",
        }
    }
}

/// A load reading the driver hands to the core.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadSample {
    /// The exponential load average (Linux: first field of /proc/loadavg),
    /// including whatever else runs on the master.
    pub load1: f64,
    /// Runnable processes right now, where known (Linux: the number before
    /// the slash in the fourth field of /proc/loadavg).
    pub runnable: Option<f64>,
}

/// The master's JRuby pool as last read, and pcq's compiles since.
#[derive(Clone, Copy, Debug)]
struct PoolReading {
    /// Instances free for pcq when read.
    free: u32,
    at: Time,
    /// Compiles started since, still running: each holds an instance the
    /// reading shows free.
    taken: u32,
    /// Compiles that started before it and ended since: each gave back an
    /// instance the reading shows busy.
    returned: u32,
}

impl PoolReading {
    fn available(&self) -> u32 {
        (self.free + self.returned).saturating_sub(self.taken)
    }
}

/// A master's gate state.
#[derive(Clone, Debug)]
pub(crate) struct Gate {
    pub config: GateConfig,
    cores: f64,
    /// Compiles in flight (kept by the master, mirrored here).
    pub in_flight: u32,
    sample: LoadSample,
    sampled_at: Time,
    /// Sum over in-flight compiles of the part the sample does not show.
    hidden: f64,
    /// In-flight compiles started at or after the sample.
    fresh: u32,
    tokens: f64,
    tokens_at: Time,
    /// `None`: the pool is not read (or its last reading failed).
    pool: Option<PoolReading>,
}

impl Gate {
    pub fn new(config: GateConfig, cores: u32, now: Time) -> Gate {
        let tokens = f64::from(config.start_burst);
        Gate {
            config,
            cores: f64::from(cores.max(1)),
            in_flight: 0,
            sample: LoadSample {
                load1: 0.0,
                runnable: None,
            },
            sampled_at: now,
            hidden: 0.0,
            fresh: 0,
            tokens,
            tokens_at: now,
            pool: None,
        }
    }

    /// The part of a compile started at `started` that the current sample
    /// does not show yet.
    fn hidden_part(&self, started: Time) -> f64 {
        if started >= self.sampled_at {
            1.0
        } else {
            let lag = self.sampled_at.since(started).as_secs_f64();
            (-lag / self.config.load_time_constant.as_secs_f64()).exp()
        }
    }

    /// The load the master will show once every running compile is visible.
    pub fn load_estimate(&self) -> f64 {
        let mut estimate = self.sample.load1 + self.hidden;
        if let Some(runnable) = self.sample.runnable {
            estimate = estimate.max(runnable + f64::from(self.fresh));
        }
        estimate
    }

    /// Load estimate per core.
    pub fn load_per_core(&self) -> f64 {
        self.load_estimate() / self.cores
    }

    /// Takes a new reading; `started` lists the in-flight compiles' starts.
    pub fn sample(&mut self, at: Time, sample: LoadSample, started: impl Iterator<Item = Time>) {
        self.sample = LoadSample {
            load1: sanitize(sample.load1),
            runnable: sample.runnable.map(sanitize),
        };
        self.sampled_at = at;
        self.hidden = 0.0;
        self.fresh = 0;
        for s in started {
            self.hidden += self.hidden_part(s);
            if s >= at {
                self.fresh += 1;
            }
        }
    }

    /// Takes a new reading of the JRubies free for pcq, asked for at `at`
    /// (`None`: unknown, the pool limit is off until the next reading).
    /// Compiles running that started after `at` count as taken (one that
    /// started at `at` itself is in the reading: a simulated master's
    /// reading is taken after the instant's starts).
    pub fn pool_sample(
        &mut self,
        at: Time,
        free: Option<u32>,
        started: impl Iterator<Item = Time>,
    ) {
        self.pool = free.map(|free| PoolReading {
            free,
            at,
            taken: u32::try_from(started.filter(|s| *s > at).count()).unwrap_or(u32::MAX),
            returned: 0,
        });
    }

    /// JRubies free for pcq now, as far as the gate knows (`None`: the
    /// pool is not read).
    pub fn pool_available(&self) -> Option<u32> {
        self.pool.as_ref().map(PoolReading::available)
    }

    fn refill(&mut self, now: Time) {
        if self.config.start_rate > 0.0 && now > self.tokens_at {
            let gained = now.since(self.tokens_at).as_secs_f64() * self.config.start_rate;
            self.tokens = (self.tokens + gained).min(f64::from(self.config.start_burst));
        }
        self.tokens_at = self.tokens_at.max(now);
    }

    /// May a compile start now? `Err` names the first limit that says no.
    pub fn check(&mut self, now: Time) -> Result<(), Blocked> {
        if self.in_flight >= self.config.max_concurrency {
            return Err(Blocked::Concurrency);
        }
        if self.pool_available() == Some(0) {
            return Err(Blocked::Pool);
        }
        if self.config.max_load_per_core > 0.0
            && self.load_per_core() >= self.config.max_load_per_core
        {
            return Err(Blocked::Load);
        }
        if self.config.start_rate > 0.0 {
            self.refill(now);
            if self.tokens < 1.0 - 1e-9 {
                return Err(Blocked::Rate);
            }
        }
        Ok(())
    }

    /// When the rate limit will let the next start through.
    pub fn next_token(&self) -> Option<Time> {
        if self.config.start_rate <= 0.0 || self.tokens >= 1.0 - 1e-9 {
            return None;
        }
        let wait = (1.0 - self.tokens) / self.config.start_rate;
        Some(
            self.tokens_at
                .plus(std::time::Duration::from_secs_f64(wait)),
        )
    }

    /// A compile started here at `now` (after `check` passed).
    pub fn on_start(&mut self, now: Time) {
        self.in_flight += 1;
        self.hidden += 1.0;
        self.fresh += 1;
        if let Some(pool) = &mut self.pool {
            pool.taken += 1;
        }
        if self.config.start_rate > 0.0 {
            self.refill(now);
            self.tokens -= 1.0;
        }
    }

    /// A compile that started at `started` ended.
    pub fn on_finish(&mut self, started: Time) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.hidden = (self.hidden - self.hidden_part(started)).max(0.0);
        if started >= self.sampled_at {
            self.fresh = self.fresh.saturating_sub(1);
        }
        if let Some(pool) = &mut self.pool {
            // (either way the count gains one; this keeps both >= 0)
            if started > pool.at && pool.taken > 0 {
                pool.taken -= 1;
            } else {
                pool.returned += 1;
            }
        }
        if self.in_flight == 0 {
            // Drop accumulated rounding.
            self.hidden = 0.0;
            self.fresh = 0;
        }
    }
}

fn sanitize(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gate(cfg: GateConfig, cores: u32) -> Gate {
        Gate::new(cfg, cores, Time::ZERO)
    }

    #[test]
    fn concurrency_limit_binds_first() {
        let mut g = gate(
            GateConfig {
                max_concurrency: 2,
                max_load_per_core: 0.0,
                ..GateConfig::default()
            },
            4,
        );
        g.on_start(Time::ZERO);
        assert_eq!(g.check(Time::ZERO), Ok(()));
        g.on_start(Time::ZERO);
        assert_eq!(g.check(Time::ZERO), Err(Blocked::Concurrency));
        g.on_finish(Time::ZERO);
        assert_eq!(g.check(Time::ZERO), Ok(()));
    }

    #[test]
    fn load_estimate_counts_starts_the_average_does_not_show_yet() {
        let cfg = GateConfig {
            max_concurrency: 100,
            max_load_per_core: 1.0,
            ..GateConfig::default()
        };
        let mut g = gate(cfg, 4);
        // The OS says the box is idle; four starts later the gate must close
        // although the next sample would still read almost 0.
        for _ in 0..4 {
            assert_eq!(g.check(Time::ZERO), Ok(()));
            g.on_start(Time::ZERO);
        }
        assert_eq!(g.check(Time::ZERO), Err(Blocked::Load));
        // 10 s later the average shows 1 - e^(-1/6) of each compile:
        let t = Time::from_secs(10);
        let shown = 4.0 * (1.0 - (-10.0f64 / 60.0).exp());
        g.sample(
            t,
            LoadSample {
                load1: shown,
                runnable: None,
            },
            std::iter::repeat_n(Time::ZERO, 4),
        );
        assert!(
            (g.load_estimate() - 4.0).abs() < 1e-9,
            "{}",
            g.load_estimate()
        );
        assert_eq!(g.check(t), Err(Blocked::Load));
        // One compile ends: its hidden part goes with it.
        g.on_finish(Time::ZERO);
        let expected = shown + 3.0 * (-10.0f64 / 60.0).exp();
        assert!((g.load_estimate() - expected).abs() < 1e-9);
        assert_eq!(g.check(t), Ok(()));
    }

    #[test]
    fn runnable_count_raises_the_estimate() {
        let mut g = gate(GateConfig::default(), 2);
        g.sample(
            Time::ZERO,
            LoadSample {
                load1: 0.1,
                runnable: Some(3.0),
            },
            std::iter::empty(),
        );
        assert_eq!(g.load_estimate(), 3.0);
        assert_eq!(g.check(Time::ZERO), Err(Blocked::Load));
    }

    #[test]
    fn garbage_samples_read_as_zero() {
        let mut g = gate(GateConfig::default(), 1);
        g.sample(
            Time::ZERO,
            LoadSample {
                load1: f64::NAN,
                runnable: Some(f64::INFINITY),
            },
            std::iter::empty(),
        );
        assert_eq!(g.load_estimate(), 0.0);
    }

    #[test]
    fn pool_limit_counts_starts_and_ends_since_the_reading() {
        let cfg = GateConfig {
            max_concurrency: 10,
            max_load_per_core: 0.0,
            ..GateConfig::default()
        };
        let mut g = gate(cfg, 4);
        // not read: no limit
        assert_eq!(g.pool_available(), None);
        assert_eq!(g.check(Time::ZERO), Ok(()));
        // one compile of pcq's runs; then the pool says 2 are free for pcq
        g.on_start(Time::ZERO);
        let t = Time::from_secs(1);
        g.pool_sample(t, Some(2), [Time::ZERO].into_iter());
        g.on_start(t);
        assert_eq!(g.check(t), Ok(()));
        g.on_start(t);
        assert_eq!(g.pool_available(), Some(0));
        assert_eq!(g.check(t), Err(Blocked::Pool));
        // the compile from before the reading ends: its instance is back
        g.on_finish(Time::ZERO);
        assert_eq!(g.pool_available(), Some(1));
        assert_eq!(g.check(t), Ok(()));
        // a compile from after the reading ends: back as well
        g.on_finish(t);
        assert_eq!(g.pool_available(), Some(2));
        // other traffic holds everything: no start, whatever pcq runs
        g.pool_sample(Time::from_secs(2), Some(0), std::iter::empty());
        assert_eq!(g.check(Time::from_secs(2)), Err(Blocked::Pool));
        // concurrency still binds first
        g.config.max_concurrency = 1;
        assert_eq!(g.check(Time::from_secs(2)), Err(Blocked::Concurrency));
        g.config.max_concurrency = 10;
        // a failed reading switches the limit off until the next one
        g.pool_sample(Time::from_secs(3), None, std::iter::empty());
        assert_eq!(g.check(Time::from_secs(3)), Ok(()));
        // a reading asked for at 4 s and handled at 5 s: the compile pcq
        // started at 4.5 s counts as taken, shown in the answer or not
        g.pool_sample(
            Time::from_secs(4),
            Some(1),
            [Time::from_micros(4_500_000)].into_iter(),
        );
        assert_eq!(g.pool_available(), Some(0));
        assert_eq!(g.check(Time::from_secs(5)), Err(Blocked::Pool));
    }

    #[test]
    fn rate_limit_spaces_starts_and_says_when_the_next_is_allowed() {
        let cfg = GateConfig {
            max_concurrency: 100,
            max_load_per_core: 0.0,
            start_rate: 2.0,
            start_burst: 1,
            ..GateConfig::default()
        };
        let mut g = gate(cfg, 1);
        assert_eq!(g.check(Time::ZERO), Ok(()));
        g.on_start(Time::ZERO);
        assert_eq!(g.check(Time::ZERO), Err(Blocked::Rate));
        assert_eq!(
            g.next_token(),
            Some(Time::ZERO.plus(Duration::from_millis(500)))
        );
        assert_eq!(g.check(Time::from_micros(499_000)), Err(Blocked::Rate));
        assert_eq!(g.check(Time::from_micros(500_000)), Ok(()));
    }
}
