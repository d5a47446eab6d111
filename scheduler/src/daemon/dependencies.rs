//! What each node's catalog depends on, shared by the driver and the API.
//!
//! The driver owns the answers: after each compile it asks the
//! environment's [`Analysis`] what the new catalog can read and collect,
//! and records it here. The facts API reads it on every upload to hash
//! just the facts the node's catalog can read ([`Dependencies::used_hash`]),
//! so an upload that changes only unread facts does not recompile.
//!
//! Analyses run per environment, in the background (Puppet's parser over
//! the whole module path takes about a second), at start and after each
//! deploy. While an environment's analysis is pending or failed, its nodes
//! have no answer and every fact change counts, as it would without pcq.
//!
//! Each analysis carries a [`Snapshot`] of the code it read. The snapshot a
//! deploy was decided on is the environment's *baseline*: the code every
//! catalog reflects once the nodes that deploy moved have recompiled. The
//! next deploy is diffed against it. Baselines are kept in the store
//! (written in the same commit as the nodes the deploy moved, as
//! [`encode_baseline`] gives them), so that a restart, or another pcq
//! taking the lead, does not lose track of what the catalogs were built
//! from; without one, a deploy moves every node.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde_json::{Map, Value};

use super::analyze::{default_ruby, Analysis, AnalyzeError, NodeDeps, Snapshot, UsedFacts};
use super::certname::Certname;
use super::config;
use super::facts::Ignore;
use super::metrics::AnalysisState;
use super::store::shared::compress;

/// An environment's analysis.
#[derive(Clone, Debug)]
pub enum EnvAnalysis {
    /// Running.
    Pending {
        /// Since when.
        since: Instant,
        /// Whether the last analysis that ended failed.
        failed_before: bool,
    },
    /// Done.
    Ready(Arc<Analysis>),
    /// Failed; nodes of the environment count every fact until the next
    /// deploy analyses it again.
    Failed(String),
}

/// The hash of the facts a node's catalog can read, with the set it used.
#[derive(Clone, Debug)]
pub struct UsedHash {
    /// The set's fingerprint: hashes of different sets do not compare.
    pub fingerprint: u64,
    /// The hash.
    pub hash: u64,
    /// The set (to hash the previous facts with, when the set changed).
    pub facts: Arc<UsedFacts>,
}

/// Every environment's analysis and every node's dependencies.
#[derive(Debug)]
pub struct Dependencies {
    settings: Option<Settings>,
    /// Puppet's environmentpath, known with analysis off too.
    environments_dir: PathBuf,
    ignore: Arc<Ignore>,
    environments: RwLock<HashMap<String, EnvAnalysis>>,
    nodes: RwLock<HashMap<Certname, Arc<NodeDeps>>>,
    baselines: RwLock<HashMap<String, Arc<Snapshot>>>,
}

#[derive(Clone, Debug)]
struct Settings {
    ruby: String,
    environments_dir: PathBuf,
    modulepath: Vec<PathBuf>,
    hiera_config: PathBuf,
}

impl Dependencies {
    /// From the `[analysis]` section (`enabled = false`: nothing is
    /// analysed and every fact change counts).
    pub fn new(config: &config::Analysis, ignore: Arc<Ignore>) -> Dependencies {
        let settings = config.enabled.then(|| Settings {
            ruby: config.ruby.clone().unwrap_or_else(default_ruby),
            environments_dir: config.environments_dir.clone(),
            modulepath: config.modulepath.clone(),
            hiera_config: config.hiera_config.clone(),
        });
        Dependencies {
            settings,
            environments_dir: config.environments_dir.clone(),
            ignore,
            environments: RwLock::new(HashMap::new()),
            nodes: RwLock::new(HashMap::new()),
            baselines: RwLock::new(HashMap::new()),
        }
    }

    /// Analysis is on.
    pub fn enabled(&self) -> bool {
        self.settings.is_some()
    }

    /// Marks `environment` as being analysed; false if it already is, or
    /// analysis is off.
    pub fn begin(&self, environment: &str) -> bool {
        if self.settings.is_none() {
            return false;
        }
        let Ok(mut envs) = self.environments.write() else {
            return false;
        };
        let failed_before = match envs.get(environment) {
            Some(EnvAnalysis::Pending { .. }) => return false,
            Some(EnvAnalysis::Failed(_)) => true,
            _ => false,
        };
        envs.insert(
            environment.to_string(),
            EnvAnalysis::Pending {
                since: Instant::now(),
                failed_before,
            },
        );
        true
    }

    /// Where each environment's analysis stands, for the metrics.
    pub fn states(&self) -> Vec<(String, AnalysisState)> {
        let Ok(envs) = self.environments.read() else {
            return Vec::new();
        };
        envs.iter()
            .map(|(name, state)| {
                let state = match state {
                    EnvAnalysis::Pending {
                        since,
                        failed_before,
                    } => AnalysisState {
                        failed: *failed_before,
                        running: Some(since.elapsed()),
                    },
                    EnvAnalysis::Ready(_) => AnalysisState {
                        failed: false,
                        running: None,
                    },
                    EnvAnalysis::Failed(_) => AnalysisState {
                        failed: true,
                        running: None,
                    },
                };
                (name.clone(), state)
            })
            .collect()
    }

    /// Whether Puppet's environmentpath (`analysis.environments_dir`, with
    /// analysis on or off) has `environment`.
    pub fn on_disk(&self, environment: &str) -> bool {
        self.environments_dir.join(environment).is_dir()
    }

    /// Whether `environment` was ever analysed (or is being).
    pub fn known(&self, environment: &str) -> bool {
        self.environments
            .read()
            .map(|e| e.contains_key(environment))
            .unwrap_or(false)
    }

    /// Analyses `environment` (blocking: seconds of Ruby).
    pub fn run(&self, environment: &str) -> Result<Analysis, AnalyzeError> {
        let Some(s) = &self.settings else {
            return Err(AnalyzeError::Output("analysis is off".into()));
        };
        let dir = s.environments_dir.join(environment);
        if !dir.is_dir() {
            return Err(AnalyzeError::Output(format!(
                "{} is not a directory (analysis.environments_dir)",
                dir.display()
            )));
        }
        let mut hiera = Vec::new();
        if s.hiera_config.is_file() {
            hiera.push(s.hiera_config.clone());
        }
        let earlier = self.baseline(environment);
        Analysis::run_with_snapshot(&s.ruby, &dir, &s.modulepath, &hiera, earlier.as_deref())
            .map(|a| a.with_ignore(self.ignore.clone()))
    }

    /// The code `environment`'s catalogs reflect, as of its last deploy
    /// (None: no deploy decided on it is stored, or the last one could
    /// not snapshot the code).
    pub fn baseline(&self, environment: &str) -> Option<Arc<Snapshot>> {
        self.baselines.read().ok()?.get(environment).cloned()
    }

    /// Records the code `environment`'s catalogs reflect after a deploy
    /// (None: not known; the next deploy moves every node). The driver
    /// stores it with the nodes the deploy moved.
    pub fn set_baseline(&self, environment: &str, snapshot: Option<Arc<Snapshot>>) {
        if let Ok(mut b) = self.baselines.write() {
            match snapshot {
                Some(s) => b.insert(environment.to_string(), s),
                None => b.remove(environment),
            };
        }
    }

    /// The baselines the store holds (environment, [`encode_baseline`]'s
    /// bytes), at start. One that cannot be read is left out, said once:
    /// the next deploy of its environment moves every node.
    pub fn restore_baselines(&self, stored: Vec<(String, Vec<u8>)>) {
        for (environment, bytes) in stored {
            match decode_baseline(&bytes) {
                Ok(snapshot) => self.set_baseline(&environment, Some(Arc::new(snapshot))),
                Err(e) => tracing::warn!(
                    "the stored baseline of {environment} is unreadable ({e}): its next deploy moves every node"
                ),
            }
        }
    }

    /// Records the outcome of an analysis.
    pub fn finish(&self, environment: &str, result: Result<Arc<Analysis>, String>) {
        if let Ok(mut envs) = self.environments.write() {
            let state = match result {
                Ok(a) => EnvAnalysis::Ready(a),
                Err(e) => EnvAnalysis::Failed(e),
            };
            envs.insert(environment.to_string(), state);
        }
    }

    /// The analysis of `environment`, when it is ready.
    pub fn analysis(&self, environment: &str) -> Option<Arc<Analysis>> {
        match self.environments.read().ok()?.get(environment)? {
            EnvAnalysis::Ready(a) => Some(a.clone()),
            _ => None,
        }
    }

    /// What `certname`'s catalog depends on, if known.
    pub fn node(&self, certname: &Certname) -> Option<Arc<NodeDeps>> {
        self.nodes.read().ok()?.get(certname).cloned()
    }

    /// Records (or with `None` forgets) what a node's catalog depends on.
    pub fn set_node(&self, certname: &Certname, deps: Option<Arc<NodeDeps>>) {
        if let Ok(mut nodes) = self.nodes.write() {
            match deps {
                Some(d) => nodes.insert(certname.clone(), d),
                None => nodes.remove(certname),
            };
        }
    }

    /// The hash of the facts `certname`'s catalog can read; `None` when
    /// that is not known (every fact counts). `relevant` is the upload's
    /// ignore-list hash, reused when the catalog can read every fact.
    pub fn used_hash(
        &self,
        certname: &Certname,
        facts: &Map<String, Value>,
        relevant: &str,
    ) -> Option<UsedHash> {
        let deps = self.node(certname)?;
        let hash = if deps.facts.all {
            UsedFacts::hash_relevant(relevant)
        } else {
            deps.facts.hash(facts, &self.ignore)
        };
        Some(UsedHash {
            fingerprint: deps.fingerprint,
            hash,
            facts: deps.facts.clone(),
        })
    }

    /// The facts hash under `set` (for the previous facts of a node whose
    /// set changed).
    pub fn hash_with(&self, set: &UsedFacts, facts: &Map<String, Value>) -> u64 {
        set.hash(facts, &self.ignore)
    }
}

/// A baseline as the store keeps it: the snapshot's JSON, compressed
/// (zstd).
pub fn encode_baseline(snapshot: &Snapshot) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    compress(&json)
}

/// A baseline the store kept.
pub fn decode_baseline(bytes: &[u8]) -> std::io::Result<Snapshot> {
    let json = zstd::decode_all(bytes)?;
    serde_json::from_slice(&json).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::analyze::snapshot::FileEntry;
    use crate::daemon::config::Facts;
    use serde_json::json;

    #[test]
    fn baselines_come_back_from_the_store_as_they_went_in() {
        let ignore = Arc::new(Ignore::new(&Facts::default().ignore).expect("globs"));
        let d = Dependencies::new(&config::Analysis::default(), ignore);
        let mut snapshot = Snapshot::default();
        snapshot.files.insert(
            "modules/ntp/manifests/init.pp".into(),
            FileEntry {
                sha256: "ab".repeat(32),
                gives: vec!["class:ntp".into()],
            },
        );
        snapshot
            .modules
            .insert("ntp".into(), "/etc/puppet/code/modules/ntp".into());
        let bytes = encode_baseline(&snapshot).expect("encoded");
        d.restore_baselines(vec![
            ("production".into(), bytes),
            ("broken".into(), b"not zstd".to_vec()),
        ]);
        assert_eq!(d.baseline("production").as_deref(), Some(&snapshot));
        // unreadable: none, so the next deploy moves every node
        assert!(d.baseline("broken").is_none());
        d.set_baseline("production", None);
        assert!(d.baseline("production").is_none());
    }

    #[test]
    fn uploads_hash_only_what_the_shared() {
        let ignore = Arc::new(Ignore::new(&Facts::default().ignore).expect("globs"));
        let d = Dependencies::new(&config::Analysis::default(), ignore);
        let n = Certname::parse("web01.example.com").expect("certname");
        let facts = |role: &str, kernel: &str| match json!({"pcq_role": role, "kernel": kernel}) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        assert!(
            d.used_hash(&n, &facts("web", "Linux"), "").is_none(),
            "unknown: every fact counts"
        );
        let set = UsedFacts::from_paths(&["pcq_role"]);
        let deps = Arc::new(NodeDeps {
            fingerprint: set.fingerprint(),
            facts: Arc::new(set),
            ..NodeDeps::default()
        });
        d.set_node(&n, Some(deps));
        let a = d.used_hash(&n, &facts("web", "Linux"), "").expect("known");
        let b = d.used_hash(&n, &facts("web", "SunOS"), "").expect("known");
        let c = d.used_hash(&n, &facts("db", "Linux"), "").expect("known");
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
        assert_eq!(a.fingerprint, c.fingerprint);
        d.set_node(&n, None);
        assert!(d.node(&n).is_none());
    }

    #[test]
    fn one_analysis_per_environment_at_a_time() {
        let ignore = Arc::new(Ignore::new(&[]).expect("globs"));
        let d = Dependencies::new(&config::Analysis::default(), ignore.clone());
        assert!(d.begin("production"));
        assert!(!d.begin("production"), "already pending");
        assert!(matches!(
            d.states().as_slice(),
            [(e, AnalysisState { failed: false, running: Some(_) })] if e == "production"
        ));
        assert!(d.analysis("production").is_none());
        d.finish("production", Err("no ruby".into()));
        let failed = AnalysisState {
            failed: true,
            running: None,
        };
        assert_eq!(d.states(), vec![("production".to_string(), failed)]);
        assert!(d.analysis("production").is_none());
        assert!(d.begin("production"), "a failed analysis may run again");
        assert!(
            matches!(
                d.states().as_slice(),
                [(
                    _,
                    AnalysisState {
                        failed: true,
                        running: Some(_)
                    }
                )]
            ),
            "a retry under way does not clear the failure"
        );
        let off = Dependencies::new(
            &config::Analysis {
                enabled: false,
                ..config::Analysis::default()
            },
            ignore,
        );
        assert!(!off.begin("production"));
    }

    #[test]
    fn a_catalog_that_reads_everything_reuses_the_uploads_hash() {
        let ignore = Arc::new(Ignore::new(&Facts::default().ignore).expect("globs"));
        let d = Dependencies::new(&config::Analysis::default(), ignore.clone());
        let n = Certname::parse("web01.example.com").expect("certname");
        let everything = Arc::new(UsedFacts::everything());
        d.set_node(
            &n,
            Some(Arc::new(NodeDeps {
                fingerprint: everything.fingerprint(),
                facts: everything.clone(),
                ..NodeDeps::default()
            })),
        );
        let facts = match json!({"pcq_role": "web", "uptime_seconds": 5}) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let relevant = ignore.relevant_hash(&facts);
        let used = d.used_hash(&n, &facts, &relevant).expect("known");
        assert_eq!(used.hash, d.hash_with(&everything, &facts));
    }
}
