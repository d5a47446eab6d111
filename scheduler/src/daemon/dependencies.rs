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
//! next deploy is diffed against it. Baselines are kept in the state
//! directory (`code/<environment>.json`), so that a restart does not lose
//! track of what the catalogs were built from; without one, a deploy moves
//! every node.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde_json::{Map, Value};

use super::analyze::{default_ruby, Analysis, AnalyzeError, NodeDeps, Snapshot, UsedFacts};
use super::certname::Certname;
use super::config;
use super::facts::Ignore;
use super::metrics::AnalysisState;

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
    /// Where baselines are kept (None: in memory only).
    baselines_dir: Option<PathBuf>,
    baselines: RwLock<HashMap<String, Option<Arc<Snapshot>>>>,
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
            baselines_dir: None,
            baselines: RwLock::new(HashMap::new()),
        }
    }

    /// Keeps baselines in `state_dir/code`.
    pub fn keep_baselines_in(mut self, state_dir: &Path) -> Dependencies {
        self.baselines_dir = Some(state_dir.join("code"));
        self
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
    /// (None: no deploy decided since the state directory was created, or
    /// the last one could not snapshot the code).
    pub fn baseline(&self, environment: &str) -> Option<Arc<Snapshot>> {
        if let Some(known) = self.baselines.read().ok()?.get(environment) {
            return known.clone();
        }
        let path = self.baseline_file(environment)?;
        let loaded = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Snapshot>(&bytes) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::warn!(
                        "baseline {} unreadable ({e}): the next deploy of {environment} moves every node",
                        path.display()
                    );
                    None
                }
            },
            Err(_) => None,
        };
        if let Ok(mut b) = self.baselines.write() {
            b.insert(environment.to_string(), loaded.clone());
        }
        loaded
    }

    /// Records the code `environment`'s catalogs reflect after a deploy
    /// (None: not known; the next deploy moves every node). The file is
    /// removed at once and written again by [`Dependencies::persist_baseline`]
    /// once the nodes the deploy moved are stored: a crash in between
    /// leaves no baseline, never one the stored queue does not match.
    pub fn set_baseline(&self, environment: &str, snapshot: Option<Arc<Snapshot>>) {
        if let Some(path) = self.baseline_file(environment) {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!(
                        "stale baseline {} not removed ({e}): a restart may trust it",
                        path.display()
                    );
                }
            }
        }
        if let Ok(mut b) = self.baselines.write() {
            b.insert(environment.to_string(), snapshot);
        }
    }

    /// Writes `snapshot` as `environment`'s baseline file, if it is still
    /// the baseline (a later deploy may have replaced it meanwhile).
    pub fn persist_baseline(&self, environment: &str, snapshot: &Arc<Snapshot>) {
        let current = self
            .baselines
            .read()
            .ok()
            .and_then(|b| b.get(environment).cloned().flatten());
        if !current.is_some_and(|c| Arc::ptr_eq(&c, snapshot)) {
            return;
        }
        let Some(path) = self.baseline_file(environment) else {
            return;
        };
        let written = serde_json::to_vec(snapshot.as_ref())
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                crate::private_file::write(&path, &bytes)
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            tracing::error!(
                "baseline {} not written ({e}): after a restart the next deploy of {environment} moves every node",
                path.display()
            );
        }
    }

    fn baseline_file(&self, environment: &str) -> Option<PathBuf> {
        Some(
            self.baselines_dir
                .as_ref()?
                .join(format!("{environment}.json")),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Facts;
    use serde_json::json;

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
