//! How long a node waits after a failed compile.
//!
//! Exponential, capped, with jitter: when a broken commit fails a thousand
//! nodes in one minute, their retries must not return as one herd.

use std::time::Duration;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::config::BackoffConfig;

/// The wait after the `failures`-th consecutive failure (1 = first).
pub(crate) fn delay(cfg: &BackoffConfig, failures: u16, rng: &mut ChaCha8Rng) -> Duration {
    let steps = i32::from(failures.saturating_sub(1));
    let full = (cfg.base.as_secs_f64() * cfg.factor.powi(steps)).min(cfg.max.as_secs_f64());
    let cut: f64 = rng.random::<f64>() * cfg.jitter;
    Duration::from_secs_f64(full * (1.0 - cut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_exponentially_within_jitter_and_stops_at_the_cap() {
        let cfg = BackoffConfig {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            factor: 2.0,
            jitter: 0.25,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (failures, full) in [
            (1u16, 10.0),
            (2, 20.0),
            (3, 40.0),
            (5, 160.0),
            (6, 300.0),
            (60000, 300.0),
        ] {
            for _ in 0..50 {
                let d = delay(&cfg, failures, &mut rng).as_secs_f64();
                assert!(
                    d <= full + 1e-9 && d >= full * 0.75 - 1e-9,
                    "failures {failures}: {d}"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_retries() {
        let cfg = BackoffConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<u128> = (0..100)
            .map(|_| delay(&cfg, 1, &mut rng).as_millis())
            .collect();
        assert!(delays.len() > 90, "only {} distinct delays", delays.len());
    }
}
