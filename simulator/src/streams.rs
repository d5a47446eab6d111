//! The run's random numbers: one seeded stream per source of randomness.
//!
//! Each source (used facts, unused facts, external changes, exports, agent
//! phases, deploys, herds, compile times, load balancer) draws from its own
//! ChaCha stream, seeded from the run's seed. Whatever one policy draws from
//! one stream leaves the others alone, so every policy sees the same fact
//! changes, deploys and herds at the same times (common random numbers: the
//! comparison is between policies, not between dice).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Independent random streams, one per source.
pub struct Streams {
    /// Used-fact churn (times and nodes).
    pub churn: ChaCha8Rng,
    /// Unused-fact churn (simulated only where it matters).
    pub noise: ChaCha8Rng,
    /// External changes.
    pub external: ChaCha8Rng,
    /// Export churn.
    pub exports: ChaCha8Rng,
    /// Agent phases.
    pub agents: ChaCha8Rng,
    /// Which nodes a deploy affects.
    pub deploys: ChaCha8Rng,
    /// Herd timings.
    pub herds: ChaCha8Rng,
    /// Compile times.
    pub compile: ChaCha8Rng,
    /// Load balancer and Retry-After.
    pub lb: ChaCha8Rng,
}

impl Streams {
    /// The streams of the run seeded with `seed`.
    pub fn new(seed: u64) -> Streams {
        let stream =
            |k: u64| ChaCha8Rng::seed_from_u64(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Streams {
            churn: stream(1),
            noise: stream(8),
            external: stream(9),
            exports: stream(2),
            agents: stream(3),
            deploys: stream(4),
            herds: stream(5),
            compile: stream(6),
            lb: stream(7),
        }
    }
}
