//! What a Puppet site was seen to do: its fleet, its compiles, its churn
//! and its deploys, as the file `pcq site` writes and `pcq-sim scenario`
//! turns into a scenario.
//!
//! Two sources fill it, both in `pcq` because both need the network: a
//! running pcq (`GET /v1/site`: what its driver recorded since it started)
//! and, for a site that does not run pcq yet, PuppetDB's reports, nodes and
//! exported resources. The simulator may not do I/O, so it reads this file
//! and nothing else. Only data: no clock, no network.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::core::CoreConfig;

/// Most compile durations kept per master: the newest win.
pub const MAX_SAMPLES: usize = 10_000;
/// Most deploys kept: the newest win (a rate is then taken over their own
/// span, not the whole window).
pub const MAX_DEPLOYS: usize = 1_000;
/// The latest time a site may name: 9999-12-31, seconds since the epoch.
const LATEST: f64 = 253_402_300_799.0;
/// The longest an interval in a site may be: a year.
const YEAR: f64 = 366.0 * 86_400.0;

/// A site, observed over `[from, to]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// `pcq` or `puppetdb`, and where (a URL, a host).
    pub source: String,
    /// Start of the observation, seconds since the epoch.
    pub from: f64,
    /// End of the observation, seconds since the epoch.
    pub to: f64,
    /// Nodes per environment, as last seen.
    pub environments: Vec<EnvironmentCount>,
    /// The masters and the compile durations seen on each.
    pub masters: Vec<ObservedMaster>,
    /// How agents run, when the source knows (PuppetDB's reports do; pcq
    /// sees `pcq sync` only through its uploads).
    #[serde(default)]
    pub agents: Option<ObservedAgents>,
    /// Agent runs and their outcomes (PuppetDB).
    #[serde(default)]
    pub runs: Option<Runs>,
    /// Facts uploads and what they changed (pcq).
    #[serde(default)]
    pub facts: Option<FactUploads>,
    /// Exported resources.
    #[serde(default)]
    pub exports: ObservedExports,
    /// Deploys, in time order.
    #[serde(default)]
    pub deploys: Vec<ObservedDeploy>,
    /// The scheduling core's configuration (pcq): cycle pacing, lanes,
    /// the default gate.
    #[serde(default)]
    pub core: Option<CoreConfig>,
}

/// One environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentCount {
    /// Its name.
    pub name: String,
    /// Nodes in it.
    pub nodes: u32,
}

impl EnvironmentCount {
    /// The count of each environment among `names` (one per node), the
    /// largest first.
    pub fn tally(names: impl IntoIterator<Item = String>) -> Vec<EnvironmentCount> {
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for name in names {
            *counts.entry(name).or_default() += 1;
        }
        let mut all: Vec<EnvironmentCount> = counts
            .into_iter()
            .map(|(name, nodes)| EnvironmentCount { name, nodes })
            .collect();
        all.sort_by(|a, b| b.nodes.cmp(&a.nodes).then(a.name.cmp(&b.name)));
        all
    }
}

/// Keeps the newest `max` of a stream: pushes `item`, dropping the oldest
/// when full (compile samples, deploys).
pub fn push_newest<T>(kept: &mut VecDeque<T>, item: T, max: usize) {
    if kept.len() >= max {
        kept.pop_front();
    }
    kept.push_back(item);
}

/// One master.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservedMaster {
    /// Its name.
    pub name: String,
    /// Compile slots: pcq's `max_concurrency`, or the JRuby pool's size.
    pub slots: u32,
    /// The JRuby pool's size (its status API), when read: more than
    /// `slots` when pcq leaves some to file requests.
    #[serde(default)]
    pub jrubies: Option<u32>,
    /// CPU cores, when known.
    #[serde(default)]
    pub cores: Option<f64>,
    /// Seconds of each compile seen (pcq: compile start to catalog;
    /// PuppetDB: an agent's `config_retrieval`, which adds the wait for a
    /// JRuby), the newest [`MAX_SAMPLES`].
    pub compile_seconds: Vec<f64>,
    /// Puppet Server's own mean time a JRuby is held per request, seconds
    /// (its status API), when read.
    #[serde(default)]
    pub average_borrow_seconds: Option<f64>,
    /// Puppet Server's own mean wait for a free JRuby, seconds.
    #[serde(default)]
    pub average_wait_seconds: Option<f64>,
}

/// Agent timing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservedAgents {
    /// Median time between two runs of a node, seconds.
    pub interval_seconds: f64,
    /// Spread of the nodes' phases within an interval, seconds (the
    /// interval itself when the phases cover it, as `splay` does).
    pub splay_seconds: f64,
}

/// Agent runs in the window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runs {
    /// Runs reported.
    pub total: u64,
    /// Runs that changed something (a changed catalog, or drift put back).
    pub changed: u64,
    /// Runs that changed nothing.
    pub unchanged: u64,
    /// Runs that failed.
    pub failed: u64,
    /// Failed runs per hour of the day (UTC), 24 entries: when they fail.
    pub failed_by_hour: Vec<u64>,
}

/// Facts uploads pcq took.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactUploads {
    /// Uploads in all.
    pub uploads: u64,
    /// Uploads that changed a fact the node's catalog uses.
    pub used_changes: u64,
    /// Uploads that changed facts no catalog uses only.
    pub unused_changes: u64,
    /// First uploads of nodes joining (not a change of a known node).
    #[serde(default)]
    pub first: u64,
}

/// Exported resources.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservedExports {
    /// Nodes that export.
    pub exporters: u32,
    /// Nodes that collect.
    pub collectors: u32,
    /// Compiles whose exports changed; `None` where the source keeps no
    /// history (PuppetDB holds the current exports only).
    #[serde(default)]
    pub changes: Option<u64>,
}

/// One deploy.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservedDeploy {
    /// When, seconds since the epoch.
    pub at: f64,
    /// The environment.
    pub environment: String,
    /// Nodes it moved to the deploy lane.
    pub nodes: u32,
    /// Nodes of the environment then.
    pub members: u32,
    /// Its change could not be bounded (every node moved); None when pcq
    /// had nothing to bound it against (the first deploy it saw, an
    /// analysis that failed): not a property of the site.
    pub unbounded: Option<bool>,
}

impl Site {
    /// Nodes in all.
    pub fn nodes(&self) -> u64 {
        self.environments.iter().map(|e| u64::from(e.nodes)).sum()
    }

    /// The observation's length in days.
    pub fn days(&self) -> f64 {
        (self.to - self.from).max(0.0) / 86_400.0
    }

    /// Checks what serde cannot: a window, finite non-negative durations.
    pub fn check(&self) -> Result<(), String> {
        let time = |t: f64| (0.0..=LATEST).contains(&t);
        let span = |s: f64| (0.0..=YEAR).contains(&s);
        if !(time(self.from) && time(self.to) && self.to > self.from) {
            return Err(format!(
                "the observation window [{}, {}] is empty or not in years 1970-9999",
                self.from, self.to
            ));
        }
        if let Some(a) = &self.agents {
            if !(span(a.interval_seconds) && span(a.splay_seconds)) {
                return Err(format!(
                    "agents: interval {} s and splay {} s must be between 0 and a year",
                    a.interval_seconds, a.splay_seconds
                ));
            }
        }
        for d in &self.deploys {
            if !time(d.at) || d.nodes > d.members {
                return Err(format!(
                    "a deploy to {} at {}: {} of {} nodes is not one",
                    d.environment, d.at, d.nodes, d.members
                ));
            }
        }
        let sum = |parts: &[u64]| parts.iter().try_fold(0u64, |a, &n| a.checked_add(n));
        if let Some(r) = &self.runs {
            if sum(&[r.changed, r.unchanged, r.failed]) != Some(r.total) {
                return Err(format!(
                    "runs: {} changed, {} unchanged and {} failed do not add up to {}",
                    r.changed, r.unchanged, r.failed, r.total
                ));
            }
            if !r.failed_by_hour.is_empty() && r.failed_by_hour.len() != 24 {
                return Err("runs.failed_by_hour: 24 hours or none".into());
            }
        }
        if let Some(f) = &self.facts {
            let parts = sum(&[f.used_changes, f.unused_changes, f.first]);
            if parts.is_none_or(|n| n > f.uploads) {
                return Err(format!(
                    "facts: more changes than the {} uploads",
                    f.uploads
                ));
            }
        }
        for m in &self.masters {
            if let Some(s) = m.compile_seconds.iter().find(|s| !span(**s)) {
                return Err(format!("master {}: compile time {s} is not one", m.name));
            }
            if m.cores.is_some_and(|c| !(c > 0.0 && c <= 1e6)) || m.slots == 0 {
                return Err(format!(
                    "master {}: cores and slots must be above 0",
                    m.name
                ));
            }
            if m.compile_seconds.len() > MAX_SAMPLES {
                return Err(format!(
                    "master {}: {} compile times, at most {MAX_SAMPLES}",
                    m.name,
                    m.compile_seconds.len()
                ));
            }
        }
        Ok(())
    }
}
