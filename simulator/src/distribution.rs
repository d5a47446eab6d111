//! Compile-time distributions.
//!
//! Compile times drive everything: capacity is slots divided by mean compile
//! time, and the tail decides how long a herd takes to clear. Four shapes:
//! a constant (for checks against formulas), an exponential (for queueing
//! theory), a lognormal fitted to a mean and a p95 (what operators know from
//! Puppet Server's metrics), and an empirical list of measured seconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal};
use serde::{Deserialize, Serialize};

/// z of the 95th percentile of the standard normal.
const Z95: f64 = 1.644_853_626_951_472_2;

/// How long a compile takes (CPU seconds on an otherwise idle core).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "distribution", rename_all = "snake_case", deny_unknown_fields)]
pub enum CompileTime {
    /// Always `mean`.
    Constant {
        /// The compile time.
        #[serde(with = "humantime_serde")]
        mean: Duration,
    },
    /// Exponential with this mean.
    Exponential {
        /// Mean compile time.
        #[serde(with = "humantime_serde")]
        mean: Duration,
    },
    /// Lognormal with this mean and 95th percentile
    /// (`mean < p95 <= 3.87 * mean`).
    Lognormal {
        /// Mean compile time.
        #[serde(with = "humantime_serde")]
        mean: Duration,
        /// 95th percentile.
        #[serde(with = "humantime_serde")]
        p95: Duration,
    },
    /// Drawn uniformly from measured seconds: a CSV with one number per row
    /// (first column; a header row is skipped), relative to the scenario.
    Empirical {
        /// The CSV file.
        csv: PathBuf,
        /// The loaded seconds.
        #[serde(skip)]
        samples: Arc<Vec<f64>>,
    },
}

impl CompileTime {
    /// Checks parameters; the error names the key under `compile`.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((format!("compile.{k}"), m.to_string()));
        match self {
            CompileTime::Constant { mean } | CompileTime::Exponential { mean } => {
                if mean.is_zero() {
                    return err("mean", "must be above zero");
                }
            }
            CompileTime::Lognormal { mean, p95 } => {
                if mean.is_zero() {
                    return err("mean", "must be above zero");
                }
                let ratio = p95.as_secs_f64() / mean.as_secs_f64();
                if ratio <= 1.0 || lognormal_sigma(ratio).is_none() {
                    return err(
                        "p95",
                        "a lognormal needs mean < p95 <= 3.87 * mean; use the empirical distribution for heavier tails",
                    );
                }
            }
            CompileTime::Empirical { .. } => {}
        }
        Ok(())
    }

    /// Reads the CSV of an empirical distribution (no-op otherwise): the
    /// form [`csv_text`] writes.
    pub(crate) fn load_samples(&mut self, base: &Path) -> Result<(), (String, String)> {
        let CompileTime::Empirical { csv, samples } = self else {
            return Ok(());
        };
        let path = base.join(&*csv);
        let bad = |m: String| Err(("compile.csv".to_string(), m));
        let mut reader = match csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(&path)
        {
            Ok(r) => r,
            Err(e) => return bad(format!("{}: {e}", path.display())),
        };
        let mut seconds = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let record = match record {
                Ok(r) => r,
                Err(e) => return bad(format!("{}: {e}", path.display())),
            };
            let field = record.get(0).unwrap_or("").trim();
            match field.parse::<f64>() {
                Ok(v) if v > 0.0 && v.is_finite() => seconds.push(v),
                Ok(_) => {
                    return bad(format!(
                        "{}:{}: compile times must be positive seconds",
                        path.display(),
                        i + 1
                    ))
                }
                Err(_) if i == 0 => {} // a header
                Err(_) => {
                    return bad(format!(
                        "{}:{}: {field:?} is not a number of seconds",
                        path.display(),
                        i + 1
                    ))
                }
            }
        }
        if seconds.is_empty() {
            return bad(format!("{}: no compile times in it", path.display()));
        }
        *samples = Arc::new(seconds);
        Ok(())
    }

    /// The distribution's name, as written in scenarios.
    pub fn sampler_name(&self) -> &'static str {
        match self {
            CompileTime::Constant { .. } => "constant",
            CompileTime::Exponential { .. } => "exponential",
            CompileTime::Lognormal { .. } => "lognormal",
            CompileTime::Empirical { .. } => "empirical",
        }
    }

    /// Mean compile seconds.
    pub fn mean_secs(&self) -> f64 {
        match self {
            CompileTime::Constant { mean }
            | CompileTime::Exponential { mean }
            | CompileTime::Lognormal { mean, .. } => mean.as_secs_f64(),
            CompileTime::Empirical { samples, .. } => {
                samples.iter().sum::<f64>() / samples.len().max(1) as f64
            }
        }
    }

    /// A ready-to-draw sampler.
    pub fn sampler(&self) -> Sampler {
        match self {
            CompileTime::Constant { mean } => Sampler::Constant(mean.as_secs_f64()),
            CompileTime::Exponential { mean } => match Exp::new(1.0 / mean.as_secs_f64()) {
                Ok(d) => Sampler::Exponential(d),
                Err(_) => Sampler::Constant(mean.as_secs_f64()),
            },
            CompileTime::Lognormal { mean, p95 } => {
                let m = mean.as_secs_f64();
                let sigma = lognormal_sigma(p95.as_secs_f64() / m).unwrap_or(0.0);
                let mu = m.ln() - sigma * sigma / 2.0;
                match LogNormal::new(mu, sigma) {
                    Ok(d) => Sampler::Lognormal(d),
                    Err(_) => Sampler::Constant(m),
                }
            }
            CompileTime::Empirical { samples, .. } => Sampler::Empirical(samples.clone()),
        }
    }
}

/// sigma of a lognormal whose p95 / mean is `ratio`: the smaller root of
/// sigma^2/2 - z95 sigma + ln(ratio) = 0.
fn lognormal_sigma(ratio: f64) -> Option<f64> {
    let disc = Z95 * Z95 - 2.0 * ratio.ln();
    (disc >= 0.0 && ratio > 1.0).then(|| Z95 - disc.sqrt())
}

/// Draws compile times.
#[derive(Clone, Debug)]
pub enum Sampler {
    /// Fixed seconds.
    Constant(f64),
    /// Exponential.
    Exponential(Exp<f64>),
    /// Lognormal.
    Lognormal(LogNormal<f64>),
    /// Measured seconds.
    Empirical(Arc<Vec<f64>>),
}

impl Sampler {
    /// One compile time in seconds.
    pub fn draw(&self, rng: &mut ChaCha8Rng) -> f64 {
        match self {
            Sampler::Constant(s) => *s,
            Sampler::Exponential(d) => d.sample(rng),
            Sampler::Lognormal(d) => d.sample(rng),
            Sampler::Empirical(v) => v[rng.random_range(0..v.len())],
        }
    }
}

/// The CSV of an empirical distribution: a header, then one compile time
/// in seconds per row (what `pcq-sim fit` and `pcq-sim scenario` write).
pub fn csv_text(seconds: &[f64]) -> String {
    let rows: String = seconds.iter().map(|s| format!("{s}\n")).collect();
    format!("seconds\n{rows}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn moments(s: &Sampler, n: usize) -> (f64, f64) {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut v: Vec<f64> = (0..n).map(|_| s.draw(&mut rng)).collect();
        v.sort_by(f64::total_cmp);
        (v.iter().sum::<f64>() / n as f64, v[n * 95 / 100])
    }

    #[test]
    fn lognormal_matches_its_mean_and_p95() {
        let c = CompileTime::Lognormal {
            mean: Duration::from_secs(8),
            p95: Duration::from_secs(20),
        };
        c.check().expect("valid");
        let (mean, p95) = moments(&c.sampler(), 400_000);
        assert!((mean - 8.0).abs() < 0.1, "mean {mean}");
        assert!((p95 - 20.0).abs() < 0.3, "p95 {p95}");
    }

    #[test]
    fn impossible_lognormals_are_refused() {
        for p95 in [5, 8, 40] {
            let c = CompileTime::Lognormal {
                mean: Duration::from_secs(8),
                p95: Duration::from_secs(p95),
            };
            assert!(c.check().is_err(), "p95 {p95}");
        }
    }

    #[test]
    fn exponential_mean() {
        let c = CompileTime::Exponential {
            mean: Duration::from_millis(1500),
        };
        let (mean, _) = moments(&c.sampler(), 200_000);
        assert!((mean - 1.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn empirical_reads_a_csv_with_or_without_header() {
        let dir = std::env::temp_dir().join(format!("pcq-emp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        std::fs::write(dir.join("t.csv"), "seconds\n1.0\n3.0\n").expect("write");
        let mut c = CompileTime::Empirical {
            csv: "t.csv".into(),
            samples: Arc::default(),
        };
        c.load_samples(&dir).expect("loads");
        assert_eq!(c.mean_secs(), 2.0);
        let (mean, _) = moments(&c.sampler(), 10_000);
        assert!((mean - 2.0).abs() < 0.05);
        std::fs::write(dir.join("t.csv"), "1.0\nabc\n").expect("write");
        let err = c.load_samples(&dir).expect_err("bad row");
        assert!(err.1.contains(":2:"), "{}", err.1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
