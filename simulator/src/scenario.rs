//! Scenario files: the fleet, its churn, its herds and its masters.
//!
//! A scenario is TOML, documented key by key in `scenarios/README.md`.
//! Unknown keys are refused and every error names the file, the line and
//! the key, because a capacity plan built on a silently ignored typo is worse
//! than no plan.

use std::path::Path;
use std::time::Duration;

use scheduler::core::{off_or_duration, CoreConfig};
use scheduler::toml_file::{self, FileError};
use serde::{Deserialize, Serialize};

use crate::distribution::CompileTime;

/// A whole scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// What the scenario is about.
    #[serde(default)]
    pub description: String,
    /// Simulated time, warm-up included.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Leading time whose results are not counted (the system fills up).
    #[serde(default, with = "humantime_serde")]
    pub warmup: Duration,
    /// Seed of the first replication; replication k uses `seed + k`.
    #[serde(default = "one")]
    pub seed: u64,
    /// How often the time series (oldest age, depth) are sampled.
    #[serde(default = "minute", with = "humantime_serde")]
    pub sample_interval: Duration,
    /// The nodes.
    pub fleet: Fleet,
    /// How agents run.
    #[serde(default)]
    pub agents: Agents,
    /// How long a compile takes.
    pub compile: CompileTime,
    /// Fact churn.
    #[serde(default)]
    pub facts: Facts,
    /// Exported-resource churn.
    #[serde(default)]
    pub exports: Exports,
    /// Changes nobody announces.
    #[serde(default)]
    pub external: External,
    /// Code deploys.
    #[serde(default)]
    pub deploys: Vec<Deploy>,
    /// Herds: mass cert signing, synchronized cron, master outages.
    #[serde(default)]
    pub herds: Vec<Herd>,
    /// The agents' file requests, which share the masters' JRubies.
    #[serde(default)]
    pub files: Files,
    /// The masters.
    pub masters: Masters,
    /// Settings of Puppet Server's on-demand model.
    #[serde(default)]
    pub on_demand: OnDemand,
    /// Settings of the queue model (pcq).
    #[serde(default)]
    pub queue: Queue,
    /// Service-level objectives a master count must meet.
    #[serde(default)]
    pub slo: Slo,
    /// What `pcq-sim plan` sweeps.
    #[serde(default)]
    pub plan: Plan,
}

fn one() -> u64 {
    1
}
fn minute() -> Duration {
    Duration::from_secs(60)
}

/// The nodes at the start (herds may add more).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Nodes with a signed certificate at time zero.
    pub nodes: u32,
    /// Environments; nodes are spread over them round robin.
    #[serde(default = "production")]
    pub environments: Vec<String>,
}

fn production() -> Vec<String> {
    vec!["production".into()]
}

/// Agent behaviour on the nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Agents {
    /// Run interval (on-demand: `runinterval`; queue: the `pcq sync`
    /// cron, unless `queue.sync_interval` says otherwise). `"off"`: no runs.
    #[serde(with = "off_or_duration")]
    pub interval: Option<Duration>,
    /// Runs of a node are offset by a random phase in `[0, splay)`.
    #[serde(with = "humantime_serde")]
    pub splay: Duration,
    /// On-demand: node CPU of one full agent run (facts, catalog request,
    /// apply).
    #[serde(with = "humantime_serde")]
    pub run_cpu: Duration,
    /// Queue: node CPU of applying a cached catalog.
    #[serde(with = "humantime_serde")]
    pub apply_cpu: Duration,
    /// Queue: node CPU of a `pcq sync` that finds nothing new.
    #[serde(with = "humantime_serde")]
    pub sync_cpu: Duration,
    /// Wall time from catalog in hand to applied.
    #[serde(with = "humantime_serde")]
    pub apply_time: Duration,
    /// On-demand: how long an agent waits for its catalog
    /// (`http_read_timeout`) before the run fails.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Agents {
    fn default() -> Self {
        Agents {
            interval: Some(Duration::from_secs(1800)),
            splay: Duration::from_secs(1800),
            run_cpu: Duration::from_secs(4),
            apply_cpu: Duration::from_secs(2),
            sync_cpu: Duration::from_millis(50),
            apply_time: Duration::from_secs(10),
            timeout: Duration::from_secs(600),
        }
    }
}

/// Fact churn per node, used and unused facts separately.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Facts {
    /// Changes per node per day of facts the catalog reads (they change
    /// the catalog).
    pub used_changes_per_node_day: f64,
    /// Changes per node per day of facts no catalog reads (uptime, free
    /// memory): they change nothing.
    pub unused_changes_per_node_day: f64,
    /// `open`: changes arrive as one Poisson stream over the fleet.
    /// `closed`: a node's next used-fact change comes an exponential time
    /// after its last compile ended (the finite-source queue of textbooks).
    pub model: ChurnModel,
}

impl Default for Facts {
    fn default() -> Self {
        Facts {
            used_changes_per_node_day: 0.5,
            unused_changes_per_node_day: 48.0,
            model: ChurnModel::Open,
        }
    }
}

/// See [`Facts::model`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChurnModel {
    /// Poisson over the whole fleet.
    Open,
    /// Per node, after its last compile.
    Closed,
}

/// Exported resources: exporters change them, collectors collect them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exports {
    /// Nodes that export (the first nodes of the fleet).
    pub exporters: u32,
    /// Nodes that collect every export (the last nodes of the fleet).
    pub collectors: u32,
    /// Export changes per exporter per day. The exporter's catalog changes;
    /// once it is compiled, every collector's catalog is stale.
    pub changes_per_exporter_day: f64,
}

/// Changes to what a catalog depends on that neither facts, exports nor
/// deploys announce: Hiera backends outside the control repository (a
/// database, Vault), `puppetdb_query` beyond collected exports, functions
/// that read files or the clock. On demand the next agent run picks them up;
/// the queue only at the node's next compile, whatever its reason, so the
/// cycle pacing (`queue.core.min_cycle_interval`) bounds their staleness.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct External {
    /// Such changes per node per day.
    pub changes_per_node_day: f64,
}

/// A code deploy.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// When (from the start of the run).
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// Repeat every this long (`"off"`, the default, for once).
    #[serde(default, with = "off_or_duration")]
    pub every: Option<Duration>,
    /// With `every`: how many deploys in all (0, the default: no end).
    #[serde(default)]
    pub times: u32,
    /// The environment that gets new code.
    pub environment: String,
    /// Share (0..=1) of its nodes whose catalog the deploy changes.
    #[serde(default = "all")]
    pub affects: f64,
    /// Chance (0..=1) that the deploy cannot be bounded (site manifests,
    /// common Hiera, a type alias, Ruby under `lib/`...): the queue then
    /// recompiles every node of the environment, not just the affected
    /// ones (with `queue.narrow_deploys`).
    #[serde(default)]
    pub unbounded: f64,
}

fn all() -> f64 {
    1.0
}

/// A herd.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Herd {
    /// `count` new certificates signed at uniform times within `window`.
    NewCerts {
        /// Start of the window.
        #[serde(with = "humantime_serde")]
        at: Duration,
        /// New nodes.
        count: u32,
        /// Length of the window.
        #[serde(with = "humantime_serde")]
        window: Duration,
    },
    /// Every agent runs at `at` and in step from then on (a cron line
    /// without splay, a fleet rebooted at once).
    SynchronizedCron {
        /// When.
        #[serde(with = "humantime_serde")]
        at: Duration,
    },
    /// A master goes away at `at` (its compiles are lost) and comes back
    /// after `duration`.
    MasterOutage {
        /// When it fails.
        #[serde(with = "humantime_serde")]
        at: Duration,
        /// Which master (0-based).
        master: u32,
        /// How long it stays away.
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
}

impl Herd {
    /// When it starts.
    pub fn at(&self) -> Duration {
        match self {
            Herd::NewCerts { at, .. }
            | Herd::SynchronizedCron { at }
            | Herd::MasterOutage { at, .. } => *at,
        }
    }

    /// A label for reports.
    pub fn label(&self) -> String {
        match self {
            Herd::NewCerts { count, window, .. } => {
                format!(
                    "{count} new certs in {}",
                    humantime::format_duration(*window)
                )
            }
            Herd::SynchronizedCron { .. } => "synchronized cron".into(),
            Herd::MasterOutage {
                master, duration, ..
            } => format!(
                "master {master} out for {}",
                humantime::format_duration(*duration)
            ),
        }
    }
}

/// The file requests an agent makes (`file_metadata`, `file_content`;
/// every `source => 'puppet:///...'` file resource, and pluginsync), each
/// borrowing one of its master's JRubies for `jruby_time`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Files {
    /// Requests while applying a catalog, one after the other (on demand
    /// after each catalog; in the queue when a node applies a changed
    /// catalog). 0: file requests are not simulated.
    pub per_apply: u32,
    /// Further requests of a full agent run (pluginsync: `file_metadatas`
    /// of plugins, pluginfacts, locales), on demand only: `pcq sync`
    /// applies with `--use_cached_catalog`, which skips pluginsync.
    /// Simulated after the catalog, with the apply's.
    pub per_run: u32,
    /// CPU time a request holds its JRuby on an idle master. Default:
    /// between the means of `file_metadata` and `file_content` measured
    /// on Debian's Puppet Server 7 on this project's test machine, warm
    /// (10-15 ms) and just started (30 ms); the file-serving end-to-end
    /// test prints it.
    #[serde(with = "humantime_serde")]
    pub jruby_time: Duration,
}

impl Default for Files {
    fn default() -> Self {
        Files {
            per_apply: 0,
            per_run: 0,
            jruby_time: Duration::from_millis(FILE_JRUBY_MS),
        }
    }
}

impl Files {
    /// Requests of a full agent run on demand: the apply's and
    /// pluginsync's.
    pub fn per_agent_run(&self) -> u32 {
        self.per_apply.saturating_add(self.per_run)
    }

    /// Are file requests simulated at all?
    pub fn simulated(&self) -> bool {
        self.per_agent_run() > 0
    }
}

/// `files.jruby_time`'s default, in milliseconds (measured: see
/// [`Files::jruby_time`]).
pub const FILE_JRUBY_MS: u64 = 20;

/// The masters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Masters {
    /// How many (the count `plan --check` checks).
    pub count: u32,
    /// Compile slots per master: JRuby instances on demand,
    /// `max_concurrency` in the queue.
    pub slots: u32,
    /// CPU cores per master: how many compiles run at full speed at once.
    /// Compiles slow down when compiles plus background load exceed it
    /// (processor sharing). A real server reaches less than its core
    /// count; `pcq calibrate` measures this parallelism (fractional) and
    /// writes it here. The queue's load gate uses it rounded up.
    #[serde(default = "four")]
    pub cores: f64,
    /// Runnable processes besides compiles (file serving, PuppetDB).
    #[serde(default)]
    pub background_load: f64,
}

fn four() -> f64 {
    4.0
}

/// Puppet Server's own knobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnDemand {
    /// `max-queued-requests`: beyond this many waiting requests a master
    /// answers 503 with Retry-After. 0 = off (Puppet's default).
    pub max_queued_requests: u32,
    /// `max-retry-delay`: Retry-After is uniform in `[0, this]`.
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
}

impl Default for OnDemand {
    fn default() -> Self {
        OnDemand {
            max_queued_requests: 0,
            max_retry_delay: Duration::from_secs(1800),
        }
    }
}

/// The queue model's knobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// The scheduling core's configuration, as in `pcq`'s config file.
    /// `gate.max_concurrency` is `masters.slots - reserve_for_files`.
    pub core: CoreConfig,
    /// JRubies of each master pcq leaves to other requests (files); its
    /// compiles use the rest. pcq's own default is one when it can read
    /// the pool's size; here it is 0 unless the scenario says so.
    pub reserve_for_files: u32,
    /// `pcq sync` cron interval; `"off"` or absent: `agents.interval`.
    #[serde(with = "off_or_duration")]
    pub sync_interval: Option<Duration>,
    /// Nodes are told when their catalog changed and apply it then.
    pub notify: bool,
    /// From a changed catalog to the node applying it, when notified.
    #[serde(with = "humantime_serde")]
    pub notify_delay: Duration,
    /// An export change bumps its collectors.
    pub bump_collectors: bool,
    /// Only changes of facts the catalog uses count (pcq's fact analysis);
    /// off: any fact change bumps the node.
    pub fact_filter: bool,
    /// A deploy recompiles only the nodes whose catalogs reach the changed
    /// code (pcq's deploy analysis: the affected ones, unless the deploy is
    /// unbounded); off: every node of the environment.
    pub narrow_deploys: bool,
    /// `sync`: facts reach pcq at the node's next sync; `immediate`: as
    /// they change (a facts watcher, and the theory cross-checks).
    pub fact_upload: FactUpload,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            core: CoreConfig::default(),
            reserve_for_files: 0,
            sync_interval: None,
            notify: true,
            notify_delay: Duration::from_secs(5),
            bump_collectors: true,
            fact_filter: true,
            narrow_deploys: true,
            fact_upload: FactUpload::Sync,
        }
    }
}

/// See [`Queue::fact_upload`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactUpload {
    /// At the node's next sync.
    Sync,
    /// As they change.
    Immediate,
}

/// Service-level objectives; a master count meets them when the upper end
/// of each metric's 95% confidence interval is within the target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Slo {
    /// p95 of change -> catalog applied on the node.
    #[serde(with = "off_or_duration")]
    pub staleness_applied_p95: Option<Duration>,
    /// p95 of change -> catalog compiled.
    #[serde(with = "off_or_duration")]
    pub staleness_compiled_p95: Option<Duration>,
    /// Share of agent runs that fail (timeouts, 503s, errors).
    pub failed_runs: Option<f64>,
    /// The oldest queued job's age, largest sample after warm-up.
    #[serde(with = "off_or_duration")]
    pub oldest_age: Option<Duration>,
    /// p95 of a file request, request to answer (with `[files]`).
    #[serde(with = "off_or_duration")]
    pub file_wait_p95: Option<Duration>,
}

/// What `pcq-sim plan` sweeps.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plan {
    /// Master counts to try.
    pub masters: Vec<u32>,
    /// Fleet sizes to try (empty: the scenario's own).
    pub nodes: Vec<u32>,
    /// Replications per point (different seeds).
    pub replications: u32,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            masters: vec![1, 2, 3, 4],
            nodes: Vec::new(),
            replications: 5,
        }
    }
}

/// The documented example scenario: errors quote its line for the key
/// they are about.
pub const EXAMPLE: &str = include_str!("../../scenarios/example.toml");

impl Scenario {
    /// Reads and checks a scenario file. Relative paths inside it (an
    /// empirical compile-time CSV) are taken from the file's folder.
    pub fn load(path: &Path) -> Result<Scenario, FileError> {
        let base = path.parent().unwrap_or(Path::new("."));
        Scenario::parse(&toml_file::read(path)?, path, base)
    }

    /// Parses and checks scenario text; `file` names it in errors, `base`
    /// resolves relative paths.
    pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Scenario, FileError> {
        toml_file::load(text, file, EXAMPLE, |s: &mut Scenario| {
            s.check()?;
            s.compile.load_samples(base)
        })
    }

    /// Checks what serde cannot; the error names the dotted key.
    fn check(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if self.name.trim().is_empty() {
            return err("name", "must not be empty");
        }
        if self.duration.is_zero() {
            return err("duration", "must be above zero");
        }
        if self.warmup >= self.duration {
            return err("warmup", "must be shorter than duration");
        }
        if self.sample_interval.is_zero() {
            return err("sample_interval", "must be above zero");
        }
        if self.fleet.environments.is_empty() {
            return err("fleet.environments", "needs at least one environment");
        }
        if let Some(e) = self
            .fleet
            .environments
            .iter()
            .find(|e| e.is_empty() || !e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err((
                "fleet.environments".into(),
                format!("{e:?}: environment names are word characters (Puppet: \\w+)"),
            ));
        }
        if self.agents.interval.is_some_and(|i| i.is_zero()) {
            return err("agents.interval", "must be above zero, or \"off\"");
        }
        if self.agents.timeout.is_zero() {
            return err("agents.timeout", "must be above zero");
        }
        self.compile.check()?;
        for (key, v) in [
            (
                "facts.used_changes_per_node_day",
                self.facts.used_changes_per_node_day,
            ),
            (
                "facts.unused_changes_per_node_day",
                self.facts.unused_changes_per_node_day,
            ),
            (
                "exports.changes_per_exporter_day",
                self.exports.changes_per_exporter_day,
            ),
            (
                "external.changes_per_node_day",
                self.external.changes_per_node_day,
            ),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return err(key, "must be a number of at least 0");
            }
        }
        if u64::from(self.exports.exporters) + u64::from(self.exports.collectors)
            > u64::from(self.fleet.nodes)
        {
            return err(
                "exports.collectors",
                "exporters + collectors must not exceed fleet.nodes",
            );
        }
        for (i, d) in self.deploys.iter().enumerate() {
            if !self.fleet.environments.contains(&d.environment) {
                return Err((
                    format!("deploys[{i}].environment"),
                    format!("{:?} is not in fleet.environments", d.environment),
                ));
            }
            if !(0.0..=1.0).contains(&d.affects) {
                return Err((
                    format!("deploys[{i}].affects"),
                    "must be between 0 and 1".into(),
                ));
            }
            if !(0.0..=1.0).contains(&d.unbounded) {
                return Err((
                    format!("deploys[{i}].unbounded"),
                    "must be between 0 and 1".into(),
                ));
            }
            if d.every.is_some_and(|e| e.is_zero()) {
                return Err((
                    format!("deploys[{i}].every"),
                    "must be above zero, or \"off\"".into(),
                ));
            }
        }
        for (i, h) in self.herds.iter().enumerate() {
            if let Herd::MasterOutage { master, .. } = h {
                if *master >= self.masters.count {
                    return Err((
                        format!("herds[{i}].master"),
                        format!("there are only {} masters (0-based)", self.masters.count),
                    ));
                }
            }
        }
        if self.masters.count == 0 {
            return err("masters.count", "must be at least 1");
        }
        if self.masters.slots == 0 {
            return err("masters.slots", "must be at least 1");
        }
        if !(self.masters.cores >= 1.0 && self.masters.cores.is_finite()) {
            return err("masters.cores", "must be a number of at least 1");
        }
        if !(self.masters.background_load >= 0.0 && self.masters.background_load.is_finite()) {
            return err("masters.background_load", "must be a number of at least 0");
        }
        if self.queue.reserve_for_files >= self.masters.slots {
            return err(
                "queue.reserve_for_files",
                "must be below masters.slots (pcq needs one JRuby to compile)",
            );
        }
        if self.files.simulated() && self.files.jruby_time.is_zero() {
            return err("files.jruby_time", "must be above zero");
        }
        if let Err(e) = self.queue_core().validate() {
            return Err((format!("queue.core.{}", e.field), e.message));
        }
        if self
            .slo
            .failed_runs
            .is_some_and(|f| !(0.0..=1.0).contains(&f))
        {
            return err("slo.failed_runs", "must be between 0 and 1");
        }
        if self.plan.replications < 2 {
            return err(
                "plan.replications",
                "must be at least 2 (a confidence interval needs two)",
            );
        }
        if self.plan.masters.is_empty() || self.plan.masters.contains(&0) {
            return err("plan.masters", "must list master counts of at least 1");
        }
        Ok(())
    }

    /// The core configuration the queue model runs with.
    pub fn queue_core(&self) -> CoreConfig {
        let mut core = self.queue.core.clone();
        core.gate.max_concurrency = self.masters.slots - self.queue.reserve_for_files;
        core
    }

    /// The `pcq sync` interval of the queue model.
    pub fn sync_interval(&self) -> Option<Duration> {
        self.queue.sync_interval.or(self.agents.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
duration = "1h"

[fleet]
nodes = 10

[compile]
distribution = "constant"
mean = "2s"

[masters]
count = 1
slots = 2
"#;

    fn parse(text: &str) -> Result<Scenario, FileError> {
        Scenario::parse(text, Path::new("s.toml"), Path::new("."))
    }

    fn invalid(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(FileError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_scenario_gets_defaults() {
        let s = parse(MINIMAL).expect("valid");
        assert_eq!(s.fleet.environments, vec!["production"]);
        assert_eq!(s.agents.interval, Some(Duration::from_secs(1800)));
        assert_eq!(s.queue_core().gate.max_concurrency, 2);
        assert_eq!(s.sync_interval(), Some(Duration::from_secs(1800)));
    }

    #[test]
    fn unknown_keys_are_refused_with_line_and_key() {
        let text = MINIMAL.replace("slots = 2", "slots = 2\nslot = 3");
        let (line, key, message) = invalid(&text);
        assert_eq!(key, "masters.slot");
        assert_eq!(line, 15);
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn bad_values_are_refused_with_line_and_key() {
        let text = MINIMAL.replace("slots = 2", "slots = 0");
        assert_eq!(
            invalid(&text),
            (14, "masters.slots".into(), "must be at least 1".into())
        );

        let text = format!("{MINIMAL}\n[[herds]]\nkind = \"new_certs\"\nat = \"1m\"\ncount = 5\nwindow = \"1m\"\n\n[[herds]]\nkind = \"master_outage\"\nat = \"2m\"\nmaster = 3\nduration = \"1m\"\n");
        let (line, key, _) = invalid(&text);
        assert_eq!(key, "herds[1].master");
        assert_eq!(line, 25);

        let text = MINIMAL.replace("mean = \"2s\"", "mean = \"soon\"");
        let (line, _, message) = invalid(&text);
        assert_eq!(line, 10);
        assert!(
            message.contains("soon") || message.contains("invalid"),
            "{message}"
        );

        let text = MINIMAL.replace("nodes = 10", "nodes = -10");
        assert_eq!(invalid(&text).0, 6);

        let text = format!("{MINIMAL}\n[queue.core.lanes.cycle]\nmin_share = 2.0\n");
        let (line, key, _) = invalid(&text);
        assert_eq!(key, "queue.core.lanes.cycle.min_share");
        assert_eq!(line, 17);
    }
}
