//! Configuration of the scheduling core.
//!
//! Plain serde structs so that the daemon's config file and the simulator's
//! scenario files embed the same table. Unknown keys are rejected (a typo in
//! a key would otherwise silently fall back to a default), and
//! [`CoreConfig::validate`] checks what serde cannot: ranges and relations
//! between fields. Durations are written the humantime way: `"90s"`,
//! `"30m"`, `"1h 30m"`; where a duration can be switched off, `"off"`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// How the core schedules: pacing, timeouts, backoff, lane shares and the
/// default gate for masters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreConfig {
    /// Cycle pacing: a node in the cycle lane is not started before this
    /// long after its last compile. `"0s"` compiles continuously (every
    /// catalog at most one cycle old); `"off"` switches the continuous cycle
    /// off, so nodes compile only when bumped, deployed or new.
    /// Default `"0s"`.
    #[serde(with = "off_or_duration")]
    pub min_cycle_interval: Option<Duration>,

    /// How long a compile may run before the driver must report it as timed
    /// out. Puppet agents give up after `http_read_timeout` (10 min); a
    /// queued compile has nobody waiting, so the bound only protects the
    /// masters from compiles that never end. Default `"10m"`.
    #[serde(with = "humantime_serde")]
    pub compile_timeout: Duration,

    /// Per-node coalescing: a node is not started for a facts or exports
    /// bump sooner than this after its last compile (that gave a catalog)
    /// ended; bumps in between merge
    /// into one compile when the interval has passed. One node whose used
    /// facts flap (or whose collected export moves on every compile) cannot
    /// hold a compile slot for good. Manual bumps, deploys and the cycle
    /// are not held. `"0s"` switches it off. Default `"1m"`.
    #[serde(with = "humantime_serde")]
    pub min_urgent_interval: Duration,

    /// Backoff of nodes whose compile failed or timed out.
    pub backoff: BackoffConfig,

    /// Starvation bounds of the lanes below urgent.
    pub lanes: LanesConfig,

    /// The gate a master gets when it is added without one of its own.
    pub gate: GateConfig,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            min_cycle_interval: Some(Duration::ZERO),
            compile_timeout: Duration::from_secs(600),
            min_urgent_interval: Duration::from_secs(60),
            backoff: BackoffConfig::default(),
            lanes: LanesConfig::default(),
            gate: GateConfig::default(),
        }
    }
}

/// Exponential backoff with jitter: the n-th consecutive failure parks the
/// node for `min(max, base * factor^(n-1))`, shortened by a random fraction
/// of up to `jitter` so that nodes failing together do not retry together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// First delay. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// Cap. Default `"30m"`.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Growth per consecutive failure, at least 1. Default 2.
    pub factor: f64,
    /// Fraction (0..=1) of the delay that is randomized away. Default 0.2.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_secs(30),
            max: Duration::from_secs(30 * 60),
            factor: 2.0,
            jitter: 0.2,
        }
    }
}

/// Starvation bounds for the deploy and cycle lanes. The urgent lane is
/// always served first otherwise, so a storm of bumps could freeze the
/// lower lanes without these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanesConfig {
    /// Bound of the deploy lane. Default: share 0.2, no age bound.
    pub deploy: LaneBound,
    /// Bound of the cycle lane. Default: share 0.1, no age bound.
    pub cycle: LaneBound,
}

impl Default for LanesConfig {
    fn default() -> Self {
        LanesConfig {
            deploy: LaneBound {
                min_share: 0.2,
                max_wait: None,
            },
            cycle: LaneBound {
                min_share: 0.1,
                max_wait: None,
            },
        }
    }
}

/// A lower lane's guarantee against starvation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LaneBound {
    /// The lane gets at least this fraction (0..=1) of starts while it has
    /// a job ready, whatever waits in the lanes above it.
    pub min_share: f64,
    /// When the lane's oldest ready job has waited longer than this, it is
    /// started before anything else. `"off"` (the default) for no bound.
    #[serde(with = "off_or_duration")]
    pub max_wait: Option<Duration>,
}

impl Default for LaneBound {
    fn default() -> Self {
        LaneBound {
            min_share: 0.0,
            max_wait: None,
        }
    }
}

/// A master's gate: a compile starts only while all of these allow it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Compiles in flight at most. Default 2.
    pub max_concurrency: u32,
    /// Start only while the load estimate divided by the master's cores is
    /// below this. 0 switches the load gate off. Default 1.0.
    pub max_load_per_core: f64,
    /// Time constant of the load average the driver reports; 60 s for the
    /// kernel's one-minute average. The gate uses it to estimate how much
    /// of a recent start the reported load does not show yet.
    #[serde(with = "humantime_serde")]
    pub load_time_constant: Duration,
    /// Starts per second at most (token bucket); 0 for no limit. Default 0.
    pub start_rate: f64,
    /// Starts the token bucket allows back to back. Default 2.
    pub start_burst: u32,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            max_concurrency: 2,
            max_load_per_core: 1.0,
            load_time_constant: Duration::from_secs(60),
            start_rate: 0.0,
            start_burst: 2,
        }
    }
}

/// A master as the core sees it: how many cores it has and its gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterSpec {
    /// CPU cores, for the per-core load limit. At least 1.
    pub cores: u32,
    /// The gate of this master.
    #[serde(default)]
    pub gate: GateConfig,
}

impl MasterSpec {
    /// A master with `cores` cores and the given gate.
    pub fn new(cores: u32, gate: GateConfig) -> Self {
        MasterSpec { cores, gate }
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cores == 0 {
            return Err(ConfigError::new("cores", "must be at least 1"));
        }
        self.gate.validate("gate")
    }
}

impl CoreConfig {
    /// Checks ranges and relations serde cannot; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.compile_timeout.is_zero() {
            return Err(ConfigError::new("compile_timeout", "must be above zero"));
        }
        self.backoff.validate()?;
        self.lanes.validate()?;
        self.gate.validate("gate")
    }
}

impl BackoffConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.base.is_zero() {
            return Err(ConfigError::new("backoff.base", "must be above zero"));
        }
        if self.max < self.base {
            return Err(ConfigError::new(
                "backoff.max",
                "must be at least backoff.base",
            ));
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err(ConfigError::new(
                "backoff.factor",
                "must be a number of at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::new(
                "backoff.jitter",
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }
}

impl LanesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, bound) in [
            ("lanes.deploy.min_share", &self.deploy),
            ("lanes.cycle.min_share", &self.cycle),
        ] {
            if !(0.0..=1.0).contains(&bound.min_share) {
                return Err(ConfigError::new(name, "must be between 0 and 1"));
            }
        }
        if self.deploy.min_share + self.cycle.min_share > 1.0 {
            return Err(ConfigError::new(
                "lanes.cycle.min_share",
                "lanes.deploy.min_share + lanes.cycle.min_share must not exceed 1",
            ));
        }
        Ok(())
    }
}

impl GateConfig {
    /// Checks ranges; `at` is the table's path, for the message.
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.max_concurrency == 0 {
            return Err(ConfigError::new(
                format!("{at}.max_concurrency"),
                "must be at least 1",
            ));
        }
        if !(self.max_load_per_core >= 0.0 && self.max_load_per_core.is_finite()) {
            return Err(ConfigError::new(
                format!("{at}.max_load_per_core"),
                "must be 0 (off) or a positive number",
            ));
        }
        if self.load_time_constant.is_zero() {
            return Err(ConfigError::new(
                format!("{at}.load_time_constant"),
                "must be above zero",
            ));
        }
        if !(self.start_rate >= 0.0 && self.start_rate.is_finite()) {
            return Err(ConfigError::new(
                format!("{at}.start_rate"),
                "must be 0 (no limit) or a positive number",
            ));
        }
        if self.start_rate > 0.0 && self.start_burst == 0 {
            return Err(ConfigError::new(
                format!("{at}.start_burst"),
                "must be at least 1 when start_rate is set",
            ));
        }
        Ok(())
    }
}

/// serde for `Option<Duration>` written as a humantime string or `"off"`.
pub mod off_or_duration {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Writes `"off"` for `None`, a humantime string otherwise.
    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_str("off"),
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        }
    }

    /// Reads `"off"` as `None` and a humantime string as a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "off" {
            return Ok(None);
        }
        humantime::parse_duration(text.trim())
            .map(Some)
            .map_err(|e| {
                de::Error::custom(format!(
                    "{e}: expected a duration like \"90s\" or \"30m\", or \"off\""
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        CoreConfig::default().validate().expect("defaults validate");
    }

    #[test]
    fn parses_durations_and_off() {
        let cfg: CoreConfig = toml::from_str(
            r#"
            min_cycle_interval = "off"
            compile_timeout = "2m"
            [lanes.deploy]
            min_share = 0.3
            max_wait = "15m"
            "#,
        )
        .expect("parses");
        assert_eq!(cfg.min_cycle_interval, None);
        assert_eq!(cfg.compile_timeout, Duration::from_secs(120));
        assert_eq!(cfg.lanes.deploy.max_wait, Some(Duration::from_secs(900)));
        assert_eq!(cfg.lanes.cycle, LanesConfig::default().cycle);
    }

    #[test]
    fn rejects_unknown_keys_with_their_name() {
        let err = toml::from_str::<CoreConfig>("min_cycle_intervall = \"1m\"")
            .expect_err("typo must fail");
        assert!(err.to_string().contains("min_cycle_intervall"), "{err}");
        let err =
            toml::from_str::<CoreConfig>("[gate]\nmax_concurency = 3").expect_err("typo must fail");
        assert!(err.to_string().contains("max_concurency"), "{err}");
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        let err = toml::from_str::<CoreConfig>("min_cycle_interval = \"soon\"")
            .expect_err("bad duration");
        assert!(err.to_string().contains("min_cycle_interval"), "{err}");

        let mut cfg = CoreConfig::default();
        cfg.lanes.deploy.min_share = 0.7;
        cfg.lanes.cycle.min_share = 0.5;
        assert_eq!(
            cfg.validate().expect_err("shares over 1").field,
            "lanes.cycle.min_share"
        );

        let mut cfg = CoreConfig::default();
        cfg.gate.max_concurrency = 0;
        assert_eq!(
            cfg.validate().expect_err("zero slots").field,
            "gate.max_concurrency"
        );

        let mut cfg = CoreConfig::default();
        cfg.backoff.jitter = 1.5;
        assert_eq!(cfg.validate().expect_err("jitter").field, "backoff.jitter");
        let spec = MasterSpec::new(0, GateConfig::default());
        assert_eq!(spec.validate().expect_err("cores").field, "cores");
    }
}
