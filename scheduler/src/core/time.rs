//! Time as a plain value.
//!
//! The core has no clock. Every call carries `now`, and the caller decides
//! what time means: the daemon passes wall-clock microseconds since the Unix
//! epoch, the simulator passes virtual microseconds since the start of a run.
//! Because time is just a number the core can be driven faster than real
//! time, replayed, and tested without sleeping.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time, in microseconds since an epoch the driver chooses.
///
/// Microseconds keep a simulated day of exponential service times free of
/// rounding bias while still fitting 584,000 years in a `u64`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Time(u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);
    /// A time that never comes; used for "not due".
    pub const NEVER: Time = Time(u64::MAX);

    /// A time `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Time {
        Time(micros)
    }

    /// A time `secs` seconds after the epoch (whole seconds).
    pub const fn from_secs(secs: u64) -> Time {
        Time(secs.saturating_mul(1_000_000))
    }

    /// A time `secs` seconds after the epoch; negative and NaN clamp to zero.
    pub fn from_secs_f64(secs: f64) -> Time {
        if secs.is_nan() || secs <= 0.0 {
            Time(0)
        } else {
            // `as` saturates for values past u64::MAX.
            Time((secs * 1e6).round() as u64)
        }
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Seconds since the epoch.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// `self + d`, saturating at [`Time::NEVER`].
    pub fn plus(self, d: Duration) -> Time {
        Time(self.0.saturating_add(duration_micros(d)))
    }

    /// How long after `earlier` this is; zero when `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Time::NEVER {
            f.write_str("never")
        } else {
            write!(f, "{:.6}s", self.as_secs_f64())
        }
    }
}

/// A `Duration` in whole microseconds, saturating.
pub(crate) fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Time::NEVER.plus(Duration::from_secs(1)), Time::NEVER);
        assert_eq!(Time::ZERO.since(Time::from_secs(5)), Duration::ZERO);
        assert_eq!(
            Time::from_secs(5).since(Time::from_secs(2)),
            Duration::from_secs(3)
        );
        assert_eq!(Time::from_secs_f64(-1.0), Time::ZERO);
        assert_eq!(Time::from_secs_f64(f64::NAN), Time::ZERO);
        assert_eq!(Time::from_secs_f64(1.5).as_micros(), 1_500_000);
    }
}
