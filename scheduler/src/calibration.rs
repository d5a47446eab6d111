//! What `pcq calibrate` measured on a real Puppet Server, as the file it
//! writes and `pcq-sim fit` / `pcq-sim check` read.
//!
//! It lives here, outside the daemon, because both binaries need the same
//! types: `pcq` (which does the I/O) writes them and `pcq-sim` (which may
//! not do I/O) fits its master model to them and predicts each run. Only
//! data: no clock, no network.

use serde::{Deserialize, Serialize};

/// One experiment on a master, measured or simulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Experiment {
    /// `requests` catalog requests sent at the same instant (distinct
    /// nodes), as a herd of agents does.
    Herd {
        /// Requests sent.
        requests: u32,
    },
    /// `concurrency` clients, each asking again as soon as it has its
    /// catalog, until `requests` were sent.
    ClosedLoop {
        /// Clients.
        concurrency: u32,
        /// Requests sent in all.
        requests: u32,
    },
}

impl Experiment {
    /// `herd 30`, `loop c=2 x40`: for tables.
    pub fn label(&self) -> String {
        match self {
            Experiment::Herd { requests } => format!("herd of {requests}"),
            Experiment::ClosedLoop {
                concurrency,
                requests,
            } => format!("closed loop c={concurrency}, {requests} requests"),
        }
    }

    /// Requests sent.
    pub fn requests(&self) -> u32 {
        match self {
            Experiment::Herd { requests } | Experiment::ClosedLoop { requests, .. } => *requests,
        }
    }
}

/// One experiment as it ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// What was run.
    pub experiment: Experiment,
    /// Part of the capacity curve (what `pcq-sim fit` fits to); the other
    /// runs are there to check the fitted model against.
    #[serde(default)]
    pub curve: bool,
    /// Seconds from the first request sent to the last catalog received.
    pub seconds: f64,
    /// Each request's latency as its client saw it: sent to catalog
    /// received (JRuby borrow wait plus compile), seconds.
    pub latencies: Vec<f64>,
}

impl Run {
    /// Catalogs per second over the run.
    pub fn throughput(&self) -> f64 {
        if self.seconds > 0.0 {
            self.latencies.len() as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Everything one `pcq calibrate` measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    /// The server measured (`https://host:8140`).
    pub server: String,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Its JRuby pool size (`max-active-instances`).
    pub jrubies: u32,
    /// The environment compiled.
    pub environment: String,
    /// Compiles run to warm the server up (JIT) and discarded.
    pub warmup_requests: u32,
    /// How long the warm-up took, seconds.
    pub warmup_seconds: f64,
    /// The runs kept: the capacity curve (closed loops at 1, 2, ...
    /// JRubies + 1) and any herds or loops asked for.
    pub runs: Vec<Run>,
}

/// Most JRubies (and clients) a measurement may say: a bound that keeps a
/// hand-edited file from asking the simulator for the impossible.
pub const MAX_JRUBIES: u32 = 1000;

/// Most requests one experiment may say.
pub const MAX_REQUESTS: u32 = 100_000;

impl Measurement {
    /// Refuses what no `pcq calibrate` writes: no runs, a run without
    /// latencies, a latency or duration that is not a positive number, a
    /// size beyond [`MAX_JRUBIES`] / [`MAX_REQUESTS`].
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_JRUBIES).contains(&self.jrubies) {
            return Err(format!(
                "jrubies {} is not in 1..={MAX_JRUBIES}",
                self.jrubies
            ));
        }
        if self.runs.is_empty() {
            return Err("no runs".into());
        }
        for (i, run) in self.runs.iter().enumerate() {
            let what = format!("runs[{i}] ({})", run.experiment.label());
            let (requests, clients) = match run.experiment {
                Experiment::Herd { requests } => (requests, 1),
                Experiment::ClosedLoop {
                    concurrency,
                    requests,
                } => (requests, concurrency),
            };
            if !(1..=MAX_REQUESTS).contains(&requests) || !(1..=MAX_JRUBIES).contains(&clients) {
                return Err(format!("{what}: sizes out of bounds"));
            }
            if run.latencies.is_empty() || run.latencies.len() > requests as usize {
                return Err(format!(
                    "{what}: {} latencies for {requests} requests",
                    run.latencies.len()
                ));
            }
            let positive = |v: f64| v.is_finite() && v > 0.0;
            if !positive(run.seconds) || !run.latencies.iter().all(|&l| positive(l)) {
                return Err(format!("{what}: durations must be positive seconds"));
            }
        }
        Ok(())
    }

    /// The capacity curve's closed loop at concurrency 1: single
    /// compiles, one at a time.
    pub fn single(&self) -> Option<&Run> {
        self.curve()
            .find(|r| matches!(r.experiment, Experiment::ClosedLoop { concurrency: 1, .. }))
    }

    /// The runs of the capacity curve.
    pub fn curve(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(|r| r.curve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measurement_reads_back_and_refuses_unknown_keys() {
        let m = Measurement {
            server: "https://puppet:8140".into(),
            at: "2026-12-03T15:00:00Z".into(),
            jrubies: 3,
            environment: "production".into(),
            warmup_requests: 12,
            warmup_seconds: 40.5,
            runs: vec![
                Run {
                    experiment: Experiment::ClosedLoop {
                        concurrency: 1,
                        requests: 2,
                    },
                    curve: true,
                    seconds: 2.0,
                    latencies: vec![1.0, 1.0],
                },
                Run {
                    experiment: Experiment::Herd { requests: 1 },
                    curve: false,
                    seconds: 0.5,
                    latencies: vec![0.5],
                },
            ],
        };
        let text = serde_json::to_string(&m).expect("serializes");
        let back: Measurement = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, m);
        assert_eq!(back.single().map(Run::throughput), Some(1.0));
        let bad = text.replacen("\"jrubies\"", "\"jruby\"", 1);
        assert!(serde_json::from_str::<Measurement>(&bad).is_err());
        assert_eq!(back.check(), Ok(()));
        let mut empty = back.clone();
        empty.runs[1].latencies.clear();
        assert!(empty.check().is_err());
        let mut huge = back.clone();
        huge.jrubies = 1_000_000;
        assert!(huge.check().is_err());
        let mut zero = back;
        zero.runs[0].seconds = 0.0;
        assert!(zero.check().is_err());
    }
}
