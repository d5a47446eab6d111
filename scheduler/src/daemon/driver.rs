//! The real-time driver of the scheduling core.
//!
//! One task owns the [`Core`] and everything that must agree with it (which
//! certname is which node, each node's catalog hash and facts hash). Every
//! other part of the daemon talks to it through [`Command`]s: the API
//! (facts, bumps, deploys, queries), the CA poller, the load sampler, and
//! the compile tasks it spawns. After each batch of commands it polls the
//! core, starts what the core says on the masters' backends, and queues the
//! changed nodes' rows for the store; between commands it sleeps until the
//! core's next wakeup.
//!
//! It also keeps what each catalog depends on (see [`super::dependencies`]):
//! a facts upload bumps a node only when a fact its catalog can read
//! changed, and when a compile changes a node's exported resources, the
//! nodes that collect them are bumped (`exports.bump_delay` later, so
//! PuppetDB has stored the new catalog by then).
//!
//! Time is wall-clock microseconds since the Unix epoch, so stored times
//! mean something after a restart.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::core::{
    BumpReason, Bumped, Core, CoreError, Finished, Lane, LoadSample, MasterId, MasterSpec, NodeId,
    NodeState, Outcome, Poll, Start, Stats, Time,
};

use super::analyze::collect::Resource;
use super::analyze::{Analysis, NodeDeps};
use super::backend::{facts_map, Compiler, Failure, Job};
use super::catalog::{self, CatalogFiles, Export, Exported};
use super::certname::Certname;
use super::config::Exports as ExportsConfig;
use super::dependencies::{Dependencies, UsedHash};
use super::metrics::{Metrics, OutcomeLabel, ReasonLabel};
use super::notify::{Notice, Notifier};
use super::store::{StoreHandle, StoredNode, Write};

/// Now, as the core's time.
pub fn now() -> Time {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Time::from_micros(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
}

/// A request to the driver.
pub enum Command {
    /// A facts upload that passed the API's checks.
    Facts {
        /// The node.
        certname: Certname,
        /// `?environment=` of the upload, if given.
        environment: Option<String>,
        /// The `values`, as JSON.
        values: Vec<u8>,
        /// Their hash without ignored facts.
        hash: String,
        /// The hash of just the facts the node's catalog reads, if known.
        used: Option<UsedHash>,
        /// The answer.
        reply: oneshot::Sender<Result<FactsOutcome, ApiError>>,
    },
    /// Facts were committed to the store.
    FactsStored {
        /// The node.
        certname: Certname,
        /// Environment of the upload.
        environment: Option<String>,
        /// Facts hash.
        hash: String,
        /// The used-facts hash of the upload.
        used: Option<UsedHash>,
        /// The previous facts hashed with the same set (when the node's
        /// set changed since its last upload).
        baseline: Option<u64>,
        /// The commit's result.
        result: Result<(), String>,
        /// The answer to the upload.
        reply: oneshot::Sender<Result<FactsOutcome, ApiError>>,
    },
    /// An operator's bump.
    Bump {
        /// The node.
        certname: Certname,
        /// The answer.
        reply: oneshot::Sender<Result<Bumped, ApiError>>,
    },
    /// New code in an environment.
    Deploy {
        /// The environment.
        environment: String,
        /// Nodes moved or marked.
        reply: oneshot::Sender<usize>,
    },
    /// The CA's signed and revoked certnames.
    Ca {
        /// Signed.
        signed: Vec<String>,
        /// Revoked.
        revoked: Vec<String>,
    },
    /// A compile task finished.
    Compiled(Box<Compiled>),
    /// An environment's analysis finished.
    Analyzed {
        /// The environment.
        environment: String,
        /// The analysis, or why there is none.
        result: Result<Arc<Analysis>, String>,
    },
    /// Nodes' dependencies, worked out from their catalog files after an
    /// analysis; `done` names the environment whose reload this ends.
    Reloaded {
        /// The nodes.
        batch: Vec<Reloaded>,
        /// The last batch of this environment's reload.
        done: Option<String>,
    },
    /// A probe found master `.0` answering again.
    MasterBack(usize),
    /// A load reading of this host.
    Load(LoadSample),
    /// One node's status.
    Status {
        /// The node.
        certname: Certname,
        /// The answer.
        reply: oneshot::Sender<Option<NodeStatus>>,
    },
    /// The queue.
    Queue {
        /// The answer.
        reply: oneshot::Sender<QueueView>,
    },
    /// The core's stats.
    Stats {
        /// The answer.
        reply: oneshot::Sender<Stats>,
    },
    /// Stop starting compiles; end when running ones are done or `grace`
    /// has passed.
    Shutdown {
        /// How long running compiles may take.
        grace: Duration,
    },
}

/// A compile task's report.
pub struct Compiled {
    node: NodeId,
    master: usize,
    certname: Certname,
    started: Instant,
    result: Result<Catalog, Failure>,
}

/// A good catalog, already on disk if it changed.
struct Catalog {
    hash: String,
    changed: bool,
    exports: Vec<Export>,
    links: Links,
}

/// What a catalog says about its node's links to others.
#[derive(Default)]
struct Links {
    /// What it depends on (`None`: no analysis of its environment yet).
    deps: Option<Arc<NodeDeps>>,
    /// Its exported resources.
    exported: Vec<Exported>,
    /// Its other resources of types some collector collects: (lower-case
    /// type, title).
    held: Vec<(String, String)>,
}

impl Links {
    fn of(compiled: &mut catalog::Compiled, analysis: Option<&Analysis>) -> Links {
        let Some(a) = analysis else {
            return Links {
                exported: std::mem::take(&mut compiled.exported),
                ..Links::default()
            };
        };
        let collected = a.collected_types();
        Links {
            deps: Some(a.for_catalog(&compiled.classes, &compiled.types)),
            exported: std::mem::take(&mut compiled.exported),
            held: std::mem::take(&mut compiled.titles)
                .into_iter()
                .map(|(k, t)| (k.to_lowercase(), t))
                .filter(|(k, _)| collected.contains(k))
                .collect(),
        }
    }
}

/// A node's links, read back from its catalog file.
pub struct Reloaded {
    certname: Certname,
    catalog_hash: String,
    links: Links,
}

/// The answer to a facts upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FactsOutcome {
    /// A fact that matters changed: the node was bumped.
    Changed,
    /// Nothing that matters changed.
    Unchanged,
    /// Stored; the node is not scheduled yet (no signed certificate).
    Stored,
}

/// An API-level refusal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The node is not known.
    #[error("unknown node {0}")]
    UnknownNode(String),
    /// A bad request.
    #[error("{0}")]
    BadRequest(String),
    /// Something failed inside.
    #[error("{0}")]
    Internal(String),
    /// pcq is stopping.
    #[error("pcq is shutting down")]
    ShuttingDown,
}

/// One node, as `GET /v1/nodes/{certname}/status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub certname: String,
    /// Its environment.
    pub environment: String,
    /// urgent, deploy, cycle, compiling, parked, or waiting_for_facts.
    pub state: String,
    /// Why it is queued or compiling.
    pub reason: Option<String>,
    /// Queued since (cycle: due since) / compiling since / parked until,
    /// seconds since the epoch.
    pub since: Option<f64>,
    /// Canonical hash of its last good catalog (also the catalog's ETag).
    pub catalog_hash: Option<String>,
    /// When that catalog last changed, seconds since the epoch.
    pub catalog_changed_at: Option<f64>,
    /// When its last compile succeeded, seconds since the epoch.
    pub last_compile: Option<f64>,
    /// Consecutive failed compiles.
    pub failures: u16,
    /// The last compile error.
    pub last_error: Option<String>,
    /// The fact paths its catalog can read; absent when not known or when
    /// any fact may be read (then every change counts).
    pub fact_paths: Option<Vec<String>>,
}

/// The queue, as `GET /v1/queue` and `pcq queue` show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueView {
    /// Nodes known.
    pub nodes: usize,
    /// Per lane.
    pub lanes: Vec<LaneView>,
    /// Compiles running.
    pub in_flight: Vec<RunningView>,
    /// Why nothing else starts.
    pub blocked: String,
    /// Seconds to compile every node once, at the recent rate.
    pub cycle_time_seconds: Option<f64>,
    /// The masters.
    pub masters: Vec<MasterView>,
    /// Signed nodes waiting for their first facts.
    pub waiting_for_facts: usize,
}

/// One lane.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LaneView {
    /// urgent, deploy, cycle.
    pub lane: String,
    /// Nodes in it.
    pub depth: usize,
    /// How long its oldest ready job has waited.
    pub oldest_age_seconds: f64,
}

/// A running compile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunningView {
    /// The node.
    pub certname: String,
    /// The master's name.
    pub master: String,
    /// Seconds it has run.
    pub seconds: f64,
}

/// A master.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MasterView {
    /// Its name.
    pub name: String,
    /// Reachable.
    pub up: bool,
    /// Compiles running.
    pub in_flight: u32,
    /// Its concurrency limit.
    pub max_concurrency: u32,
    /// Its gate's load estimate per core.
    pub load_per_core: f64,
}

/// What the driver knows of a node besides the core's state.
#[derive(Clone, Debug)]
struct NodeInfo {
    certname: Certname,
    catalog_hash: Option<String>,
    catalog_changed_at: Option<Time>,
    facts_hash: Option<String>,
    last_error: Option<String>,
    /// Fingerprint of its used-facts set and the hash of its last upload
    /// under it.
    used: Option<(u64, u64)>,
    /// What its catalog depends on.
    deps: Option<Arc<NodeDeps>>,
    /// Its exported resources; with `exports_whole` false only type, title
    /// and parameters hash are known (restored from the store).
    exports: Vec<Exported>,
    exports_whole: bool,
    /// Its resources of collected types, (lower-case type, title).
    held: Vec<(String, String)>,
}

impl NodeInfo {
    fn new(certname: Certname) -> NodeInfo {
        NodeInfo {
            certname,
            catalog_hash: None,
            catalog_changed_at: None,
            facts_hash: None,
            last_error: None,
            used: None,
            deps: None,
            exports: Vec::new(),
            exports_whole: true,
            held: Vec::new(),
        }
    }

    /// Does this node collect `r` (or hold a resource `r` would clash
    /// with)? Without the whole resource, any collector of its type does.
    fn collects(&self, r: &Exported, whole: bool) -> bool {
        let kind = r.kind.to_lowercase();
        if self.held.iter().any(|(k, t)| *k == kind && *t == r.title) {
            return true;
        }
        let Some(deps) = &self.deps else {
            return false;
        };
        let resource = Resource {
            title: &r.title,
            tags: &r.tags,
            parameters: &r.parameters,
        };
        deps.collects
            .iter()
            .any(|(k, q)| *k == kind && (!whole || q.matches(&resource)))
    }
}

/// A master as the driver runs it.
pub struct MasterSlot {
    /// Its name.
    pub name: String,
    /// Its backend.
    pub compiler: Arc<dyn Compiler>,
    /// Its core spec.
    pub spec: MasterSpec,
    /// It is this host (load samples apply to it).
    pub local: bool,
    /// How often to probe it when it is down.
    pub probe_interval: Duration,
    id: Option<MasterId>,
    probing: bool,
}

impl MasterSlot {
    /// A master slot, added to the core when the driver starts.
    pub fn new(
        name: String,
        compiler: Arc<dyn Compiler>,
        spec: MasterSpec,
        local: bool,
        probe_interval: Duration,
    ) -> MasterSlot {
        MasterSlot {
            name,
            compiler,
            spec,
            local,
            probe_interval,
            id: None,
            probing: false,
        }
    }
}

/// What the driver needs besides the core.
pub struct Parts {
    /// The store.
    pub store: StoreHandle,
    /// The last good catalogs.
    pub catalogs: CatalogFiles,
    /// Notifications.
    pub notifier: Notifier,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Nodes join when their facts arrive (no CA polling).
    pub join_on_facts: bool,
    /// Certnames never scheduled.
    pub exclude: HashSet<String>,
    /// Environment of nodes that never gave one.
    pub default_environment: String,
    /// What catalogs depend on.
    pub deps: Arc<Dependencies>,
    /// Exported resources.
    pub exports: ExportsConfig,
}

/// The driver.
pub struct Driver {
    core: Core,
    ids: HashMap<Certname, NodeId>,
    info: Vec<Option<NodeInfo>>,
    masters: Vec<MasterSlot>,
    parts: Parts,
    tx: mpsc::Sender<Command>,
    running: HashMap<NodeId, (usize, Time)>,
    dirty: BTreeSet<NodeId>,
    pending_writes: Vec<Write>,
    /// Signed certificates whose node has sent no facts yet.
    waiting_for_facts: HashSet<Certname>,
    /// Certnames with stored facts but no signed certificate (yet).
    facts_only: HashMap<Certname, String>,
    draining: Option<Instant>,
    /// Bumps of collectors, due at their time.
    delayed: Vec<(Time, NodeId)>,
    /// Nodes whose exports changed while their environment's collectors
    /// were not known (analysis pending, or its reload running): routed
    /// once they are.
    unrouted: HashSet<NodeId>,
    /// Environments whose nodes' links are being read back.
    reloading: HashSet<String>,
}

impl Driver {
    /// Rebuilds the core from the stored nodes: every node exactly once,
    /// compiles that were running queued again at the front.
    pub fn new(
        core: Core,
        masters: Vec<MasterSlot>,
        stored: Vec<StoredNode>,
        stored_exports: Vec<(String, Export)>,
        facts_owners: Vec<String>,
        parts: Parts,
        tx: mpsc::Sender<Command>,
    ) -> Result<Driver, CoreError> {
        let mut d = Driver {
            core,
            ids: HashMap::new(),
            info: Vec::new(),
            masters,
            parts,
            tx,
            running: HashMap::new(),
            dirty: BTreeSet::new(),
            pending_writes: Vec::new(),
            waiting_for_facts: HashSet::new(),
            facts_only: HashMap::new(),
            draining: None,
            delayed: Vec::new(),
            unrouted: HashSet::new(),
            reloading: HashSet::new(),
        };
        let t = now();
        for m in &mut d.masters {
            m.id = Some(d.core.add_master(t, m.spec.clone())?);
            d.parts
                .metrics
                .master_up
                .get_or_create(&super::metrics::MasterLabel {
                    master: m.name.clone(),
                })
                .set(1);
        }
        for node in stored {
            let Ok(certname) = Certname::parse(&node.certname) else {
                tracing::warn!(
                    "store: skipping node with invalid certname {:?}",
                    node.certname
                );
                continue;
            };
            if d.ids.contains_key(&certname) {
                continue;
            }
            let id = d.core.restore_node(&node.view)?;
            d.remember(
                id,
                NodeInfo {
                    catalog_hash: node.catalog_hash,
                    catalog_changed_at: node.catalog_changed_at,
                    facts_hash: node.facts_hash,
                    last_error: node.last_error,
                    ..NodeInfo::new(certname.clone())
                },
            );
            if matches!(node.view.state, NodeState::Compiling(_)) {
                d.dirty.insert(id);
            }
        }
        for (certname, e) in stored_exports {
            let id = Certname::parse(&certname)
                .ok()
                .and_then(|c| d.ids.get(&c).copied());
            if let Some(info) = id.and_then(|id| d.info_mut(id)) {
                info.exports_whole = false;
                info.exports.push(Exported {
                    kind: e.kind,
                    title: e.title,
                    tags: Vec::new(),
                    parameters: serde_json::Map::new(),
                    parameters_hash: e.parameters_hash,
                });
            }
        }
        for owner in facts_owners {
            if let Ok(c) = Certname::parse(&owner) {
                if !d.ids.contains_key(&c) {
                    d.facts_only.insert(c, String::new());
                }
            }
        }
        if let Err(e) = d.core.audit() {
            return Err(CoreError::Config(crate::core::ConfigError {
                field: "store".into(),
                message: format!("rebuilt queue is inconsistent: {e}"),
            }));
        }
        Ok(d)
    }

    fn remember(&mut self, id: NodeId, info: NodeInfo) {
        self.ids.insert(info.certname.clone(), id);
        if self.info.len() <= id.index() {
            self.info.resize(id.index() + 1, None);
        }
        self.info[id.index()] = Some(info);
    }

    /// Nodes known to the core.
    pub fn node_count(&self) -> usize {
        self.core.node_count()
    }

    /// Runs until shut down.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut environments: BTreeSet<String> = self
            .core
            .node_ids()
            .filter_map(|id| self.core.view(id).map(|v| v.environment))
            .collect();
        environments.insert(self.parts.default_environment.clone());
        for env in environments {
            self.analyze(&env);
        }
        loop {
            self.pump();
            self.flush();
            if let Some(deadline) = self.draining {
                if self.running.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
            let wake = self.sleep_for();
            let command = tokio::select! {
                c = rx.recv() => c,
                _ = tokio::time::sleep(wake) => continue,
            };
            let Some(command) = command else { break };
            self.handle(command);
            // take whatever else is already queued before polling again
            while let Ok(c) = rx.try_recv() {
                self.handle(c);
            }
        }
        let last = self.take_writes();
        if let Err(e) = self.parts.store.write_durably(last).await {
            tracing::error!("last writes: {e}");
        }
        if !self.running.is_empty() {
            tracing::info!(
                "stopping with {} compiles running; they are queued again at the next start",
                self.running.len()
            );
        }
    }

    fn sleep_for(&mut self) -> Duration {
        let cap = Duration::from_secs(5);
        if self.draining.is_some() {
            return Duration::from_millis(100);
        }
        let t = now();
        let delayed = self.delayed.iter().map(|(due, _)| due.since(t)).min();
        let core = self.core.next_wakeup().map(|w| w.since(t));
        [Some(cap), delayed, core]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(cap)
    }

    /// Analyses `environment` in the background (unless that already runs).
    fn analyze(&mut self, environment: &str) {
        if !self.parts.deps.begin(environment) {
            return;
        }
        let deps = self.parts.deps.clone();
        let tx = self.tx.clone();
        let env = environment.to_string();
        tokio::spawn(async move {
            let run_env = env.clone();
            let result = tokio::task::spawn_blocking(move || deps.run(&run_env))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map(Arc::new).map_err(|e| e.to_string()));
            let _ = tx
                .send(Command::Analyzed {
                    environment: env,
                    result,
                })
                .await;
        });
    }

    fn analyzed(&mut self, environment: String, result: Result<Arc<Analysis>, String>) {
        let ids: Vec<NodeId> = self
            .core
            .node_ids()
            .filter(|id| {
                self.core
                    .view(*id)
                    .is_some_and(|v| v.environment == environment)
            })
            .collect();
        let analysis = match result {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(
                    "analysis of environment {environment} failed: {e}; its nodes recompile on any fact change"
                );
                self.parts.deps.finish(&environment, Err(e));
                for id in ids {
                    self.set_deps(id, None);
                }
                return;
            }
        };
        tracing::info!(
            "environment {environment} analysed: {} files, {} classes, {} collectors, {} unparsable, {:.2} s",
            analysis.raw.files,
            analysis.raw.classes.len(),
            analysis.raw.collectors.len(),
            analysis.raw.errors.len(),
            analysis.raw.seconds
        );
        self.parts.deps.finish(&environment, Ok(analysis.clone()));
        self.reloading.insert(environment.clone());
        // every node of the environment: its links, from its catalog file
        let nodes: Vec<(Certname, String)> = ids
            .iter()
            .filter_map(|id| {
                let info = self.info_of(*id)?;
                Some((info.certname.clone(), info.catalog_hash.clone()?))
            })
            .collect();
        self.reload(analysis, nodes, Some(environment));
    }

    /// Works out the links of `nodes` from their catalog files, in the
    /// background; the answers come back as [`Command::Reloaded`].
    fn reload(
        &self,
        analysis: Arc<Analysis>,
        nodes: Vec<(Certname, String)>,
        environment: Option<String>,
    ) {
        let catalogs = self.parts.catalogs.clone();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::new();
            for (certname, hash) in nodes {
                let Ok(Some(bytes)) = catalogs.read(&certname) else {
                    continue;
                };
                let Ok(mut compiled) = catalog::read(&bytes) else {
                    continue;
                };
                if compiled.hash != hash {
                    continue; // replaced meanwhile; its compile set its links
                }
                let links = Links::of(&mut compiled, Some(&analysis));
                batch.push(Reloaded {
                    certname,
                    catalog_hash: hash,
                    links,
                });
                if batch.len() >= 1000 {
                    let full = std::mem::take(&mut batch);
                    let more = Command::Reloaded {
                        batch: full,
                        done: None,
                    };
                    if tx.blocking_send(more).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.blocking_send(Command::Reloaded {
                batch,
                done: environment,
            });
        });
    }

    fn reloaded(&mut self, batch: Vec<Reloaded>, done: Option<String>) {
        let t = now();
        for r in batch {
            let Some(id) = self.ids.get(&r.certname).copied() else {
                continue;
            };
            let Some(info) = self.info_mut(id) else {
                continue;
            };
            if info.catalog_hash.as_deref() != Some(r.catalog_hash.as_str()) {
                continue;
            }
            info.exports = r.links.exported;
            info.exports_whole = true;
            info.held = r.links.held;
            self.set_deps(id, r.links.deps);
            if done.is_none()
                && self.unrouted.contains(&id)
                && !self.reloading.contains(&self.environment_of(id))
            {
                self.route_all(id, t);
            }
        }
        if let Some(env) = done {
            // every collector of the environment is known now: route the
            // export changes that happened before
            self.reloading.remove(&env);
            let waiting: Vec<NodeId> = self
                .unrouted
                .iter()
                .copied()
                .filter(|id| self.environment_of(*id) == env)
                .collect();
            for id in waiting {
                self.route_all(id, t);
            }
        }
    }

    fn environment_of(&self, id: NodeId) -> String {
        self.core
            .view(id)
            .map(|v| v.environment)
            .unwrap_or_default()
    }

    /// Routes every export of `exporter` (their changes were not routed
    /// when they happened).
    fn route_all(&mut self, exporter: NodeId, t: Time) {
        self.unrouted.remove(&exporter);
        let Some(info) = self.info_of(exporter) else {
            return;
        };
        let changed: Vec<(Exported, bool)> =
            info.exports.iter().map(|e| (e.clone(), true)).collect();
        self.route(exporter, &changed, t);
    }

    /// Records what a node's catalog depends on, for the driver and the API.
    fn set_deps(&mut self, id: NodeId, deps: Option<Arc<NodeDeps>>) {
        if let Some(info) = self.info_mut(id) {
            info.deps = deps.clone();
            let certname = info.certname.clone();
            self.parts.deps.set_node(&certname, deps);
        }
    }

    /// A compile changed a node's exports: the nodes collecting any old or
    /// new version of a changed resource are bumped after the delay.
    fn exports_changed(
        &mut self,
        exporter: NodeId,
        exported: Vec<Exported>,
        held: Vec<(String, String)>,
        t: Time,
    ) {
        let bump_collectors = self.parts.exports.bump_collectors;
        let Some(info) = self.info_mut(exporter) else {
            return;
        };
        let old = std::mem::replace(&mut info.exports, exported);
        let old_whole = std::mem::replace(&mut info.exports_whole, true);
        info.held = held;
        let key = |e: &Exported| (e.kind.clone(), e.title.clone(), e.parameters_hash.clone());
        let new = &info.exports;
        let old_keys: HashSet<_> = old.iter().map(key).collect();
        let new_keys: HashSet<_> = new.iter().map(key).collect();
        let changed: Vec<(Exported, bool)> = old
            .iter()
            .filter(|e| !new_keys.contains(&key(e)))
            .map(|e| (e.clone(), old_whole))
            .chain(
                new.iter()
                    .filter(|e| !old_keys.contains(&key(e)))
                    .map(|e| (e.clone(), true)),
            )
            .collect();
        if changed.is_empty() || !bump_collectors {
            return;
        }
        let environment = self.environment_of(exporter);
        if self.parts.deps.analysis(&environment).is_none() || self.reloading.contains(&environment)
        {
            // who collects is not known yet: once it is
            self.unrouted.insert(exporter);
            return;
        }
        self.route(exporter, &changed, t);
    }

    /// Bumps, after the delay, every node collecting one of `changed` (or
    /// holding a resource of the same type and title).
    fn route(&mut self, exporter: NodeId, changed: &[(Exported, bool)], t: Time) {
        if changed.is_empty() {
            return;
        }
        let collectors: Vec<NodeId> = self
            .ids
            .values()
            .copied()
            .filter(|id| *id != exporter)
            .filter(|id| {
                self.info_of(*id)
                    .is_some_and(|i| changed.iter().any(|(r, whole)| i.collects(r, *whole)))
            })
            .collect();
        tracing::info!(
            certname = %self.info_of(exporter).map(|i| i.certname.to_string()).unwrap_or_default(),
            "{} exported resources changed; {} collecting nodes bumped in {:?}",
            changed.len(),
            collectors.len(),
            self.parts.exports.bump_delay
        );
        let due = t.plus(self.parts.exports.bump_delay);
        for id in collectors {
            if !self.delayed.iter().any(|(_, d)| *d == id) {
                self.delayed.push((due, id));
            }
        }
    }

    /// Bumps the collectors whose delay is over.
    fn bump_collectors(&mut self, t: Time) {
        if self.delayed.iter().all(|(due, _)| *due > t) {
            return;
        }
        let (ready, later): (Vec<_>, Vec<_>) =
            self.delayed.drain(..).partition(|(due, _)| *due <= t);
        self.delayed = later;
        for (_, id) in ready {
            if self.core.bump(t, id, BumpReason::Exports).is_ok() {
                self.dirty.insert(id);
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Facts {
                certname,
                environment,
                values,
                hash,
                used,
                reply,
            } => self.facts(certname, environment, values, hash, used, reply),
            Command::FactsStored {
                certname,
                environment,
                hash,
                used,
                baseline,
                result,
                reply,
            } => {
                let answer = match result {
                    Ok(()) => Ok(self.facts_stored(certname, environment, hash, used, baseline)),
                    Err(e) => Err(ApiError::Internal(e)),
                };
                let _ = reply.send(answer);
            }
            Command::Bump { certname, reply } => {
                let answer = match self.ids.get(&certname).copied() {
                    Some(id) => self
                        .core
                        .bump(now(), id, BumpReason::Manual)
                        .map_err(|e| ApiError::Internal(e.to_string())),
                    None => Err(ApiError::UnknownNode(certname.to_string())),
                };
                if let Some(&id) = self.ids.get(&certname) {
                    self.dirty.insert(id);
                }
                let _ = reply.send(answer);
            }
            Command::Deploy { environment, reply } => {
                let n = self.core.deploy(now(), &environment);
                if n > 0 {
                    let ids: Vec<NodeId> = self.core.node_ids().collect();
                    for id in ids {
                        if self
                            .core
                            .view(id)
                            .is_some_and(|v| v.environment == environment)
                        {
                            self.dirty.insert(id);
                        }
                    }
                }
                tracing::info!("deploy to {environment}: {n} nodes to recompile");
                self.analyze(&environment);
                let _ = reply.send(n);
            }
            Command::Ca { signed, revoked } => self.ca(signed, revoked),
            Command::Compiled(c) => self.compiled(*c),
            Command::Analyzed {
                environment,
                result,
            } => self.analyzed(environment, result),
            Command::Reloaded { batch, done } => self.reloaded(batch, done),
            Command::MasterBack(m) => {
                let slot = &mut self.masters[m];
                slot.probing = false;
                if let Some(id) = slot.id {
                    let _ = self.core.set_master_up(now(), id, true);
                }
                tracing::info!("master {} answers again; starts resume", slot.name);
                self.parts
                    .metrics
                    .master_up
                    .get_or_create(&super::metrics::MasterLabel {
                        master: slot.name.clone(),
                    })
                    .set(1);
            }
            Command::Load(sample) => {
                let t = now();
                for m in self.masters.iter().filter(|m| m.local) {
                    if let Some(id) = m.id {
                        let _ = self.core.report_load(t, id, sample);
                    }
                }
            }
            Command::Status { certname, reply } => {
                let _ = reply.send(self.status(&certname));
            }
            Command::Queue { reply } => {
                let _ = reply.send(self.queue());
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.core.stats(now()));
            }
            Command::Shutdown { grace } => {
                tracing::info!(
                    "shutting down: no new compiles; waiting up to {grace:?} for {} running",
                    self.running.len()
                );
                self.draining = Some(Instant::now() + grace);
            }
        }
    }

    fn facts(
        &mut self,
        certname: Certname,
        environment: Option<String>,
        values: Vec<u8>,
        hash: String,
        used: Option<UsedHash>,
        reply: oneshot::Sender<Result<FactsOutcome, ApiError>>,
    ) {
        if self.draining.is_some() {
            let _ = reply.send(Err(ApiError::ShuttingDown));
            return;
        }
        if self.parts.exclude.contains(certname.as_str()) {
            let _ = reply.send(Err(ApiError::BadRequest(format!(
                "{certname} is excluded from scheduling (ca.exclude)"
            ))));
            return;
        }
        let known = self.ids.get(&certname).copied();
        if let Some(id) = known {
            let same_facts =
                self.info_of(id).and_then(|i| i.facts_hash.as_deref()) == Some(hash.as_str());
            let same_env = environment
                .as_ref()
                .is_none_or(|e| self.core.view(id).is_some_and(|v| &v.environment == e));
            if same_facts && same_env {
                Metrics::count(&self.parts.metrics.facts_uploads, "unchanged");
                let _ = reply.send(Ok(FactsOutcome::Unchanged));
                return;
            }
        }
        // Store first; bump once the facts are durable, so the compile the
        // bump starts reads them. When the node's used-facts set changed
        // since its last upload, its previous facts are hashed with the
        // new set first, so only a real change of a used fact counts.
        let known_set = known
            .and_then(|id| self.info_of(id))
            .and_then(|i| i.used)
            .map(|(fingerprint, _)| fingerprint);
        let needs_baseline = used
            .as_ref()
            .is_some_and(|u| Some(u.fingerprint) != known_set);
        let deps = self.parts.deps.clone();
        let store = self.parts.store.clone();
        let tx = self.tx.clone();
        let write = Write::Facts {
            certname: certname.to_string(),
            values,
            hash: hash.clone(),
            at: now(),
        };
        tokio::spawn(async move {
            let mut baseline = None;
            if let (true, Some(u)) = (needs_baseline, &used) {
                if let Ok(Some(previous)) = store.facts(certname.as_str()).await {
                    baseline = Some(deps.hash_with(&u.facts, &facts_map(Some(&previous))));
                }
            }
            let result = store
                .write_durably(vec![write])
                .await
                .map_err(|e| e.to_string());
            let _ = tx
                .send(Command::FactsStored {
                    certname,
                    environment,
                    hash,
                    used,
                    baseline,
                    result,
                    reply,
                })
                .await;
        });
    }

    fn facts_stored(
        &mut self,
        certname: Certname,
        environment: Option<String>,
        hash: String,
        used: Option<UsedHash>,
        baseline: Option<u64>,
    ) -> FactsOutcome {
        let t = now();
        if let Some(id) = self.ids.get(&certname).copied() {
            let relevant_changed =
                self.info_of(id).and_then(|i| i.facts_hash.as_deref()) != Some(hash.as_str());
            let mut changed = relevant_changed;
            if let Some(info) = self.info_mut(id) {
                info.facts_hash = Some(hash.clone());
                if let Some(u) = &used {
                    let previous = match info.used {
                        Some((fingerprint, h)) if fingerprint == u.fingerprint => Some(h),
                        _ => baseline,
                    };
                    changed = previous != Some(u.hash);
                }
                info.used = used.map(|u| (u.fingerprint, u.hash));
            }
            let mut bump = changed;
            if let Some(env) = environment {
                if self.core.view(id).is_some_and(|v| v.environment != env) {
                    let _ = self.core.set_environment(id, &env);
                    bump = true;
                }
            }
            // (the facts write already put the hash in the node's row)
            self.dirty.insert(id);
            if bump {
                let _ = self.core.bump(t, id, BumpReason::Facts);
                Metrics::count(&self.parts.metrics.facts_uploads, "changed");
                return FactsOutcome::Changed;
            }
            let label = if relevant_changed {
                "unused"
            } else {
                "unchanged"
            };
            Metrics::count(&self.parts.metrics.facts_uploads, label);
            return FactsOutcome::Unchanged;
        }
        let env = environment.unwrap_or_else(|| self.parts.default_environment.clone());
        if self.parts.join_on_facts || self.waiting_for_facts.remove(&certname) {
            self.add_node(certname, &env, Some(hash));
            Metrics::count(&self.parts.metrics.facts_uploads, "changed");
            FactsOutcome::Changed
        } else {
            self.facts_only.insert(certname, env);
            FactsOutcome::Stored
        }
    }

    fn add_node(&mut self, certname: Certname, environment: &str, facts_hash: Option<String>) {
        let t = now();
        match self.core.add_node(t, environment) {
            Ok(id) => {
                tracing::info!("node {certname} joins the queue");
                self.remember(
                    id,
                    NodeInfo {
                        facts_hash: facts_hash.clone(),
                        ..NodeInfo::new(certname)
                    },
                );
                self.dirty.insert(id);
                // its row is written at the next flush, before this
                if let (Some(hash), Some(info)) = (facts_hash, self.info_of(id)) {
                    self.pending_writes.push(Write::FactsHash {
                        certname: info.certname.to_string(),
                        hash,
                    });
                }
            }
            Err(e) => tracing::error!("cannot add {certname}: {e}"),
        }
    }

    fn remove_node(&mut self, certname: &Certname) {
        self.waiting_for_facts.remove(certname);
        self.facts_only.remove(certname);
        let Some(id) = self.ids.remove(certname) else {
            return;
        };
        let _ = self.core.remove_node(now(), id);
        self.set_deps(id, None);
        self.info[id.index()] = None;
        self.delayed.retain(|(_, d)| *d != id);
        self.unrouted.remove(&id);
        self.dirty.remove(&id);
        self.pending_writes.push(Write::Remove {
            certname: certname.to_string(),
        });
        if let Err(e) = self.parts.catalogs.remove(certname) {
            tracing::warn!("removing the catalog of {certname}: {e}");
        }
        tracing::info!("node {certname} removed (certificate revoked)");
    }

    fn ca(&mut self, signed: Vec<String>, revoked: Vec<String>) {
        let signed: HashSet<Certname> = signed
            .iter()
            .filter(|n| !self.parts.exclude.contains(n.as_str()))
            .filter_map(|n| Certname::parse(n).ok())
            .collect();
        for name in revoked {
            if let Ok(c) = Certname::parse(&name) {
                self.remove_node(&c);
            }
        }
        let gone: Vec<Certname> = self
            .ids
            .keys()
            .filter(|c| !signed.contains(*c))
            .cloned()
            .collect();
        for c in gone {
            self.remove_node(&c);
        }
        self.waiting_for_facts.retain(|c| signed.contains(c));
        for c in signed {
            if self.ids.contains_key(&c) || self.waiting_for_facts.contains(&c) {
                continue;
            }
            match self.facts_only.remove(&c) {
                Some(env) => {
                    let env = if env.is_empty() {
                        self.parts.default_environment.clone()
                    } else {
                        env
                    };
                    self.add_node(c, &env, None);
                }
                None => {
                    self.waiting_for_facts.insert(c);
                }
            }
        }
    }

    fn info_of(&self, id: NodeId) -> Option<&NodeInfo> {
        self.info.get(id.index()).and_then(Option::as_ref)
    }

    fn info_mut(&mut self, id: NodeId) -> Option<&mut NodeInfo> {
        self.info.get_mut(id.index()).and_then(Option::as_mut)
    }

    /// Starts every compile the core allows.
    fn pump(&mut self) {
        if self.draining.is_some() {
            return;
        }
        let t = now();
        self.bump_collectors(t);
        while let Poll::Start(start) = self.core.poll(t) {
            self.start(start, t);
        }
    }

    fn start(&mut self, start: Start, t: Time) {
        let Some(info) = self.info_of(start.node).cloned() else {
            // cannot happen: the core only starts nodes the driver added
            let _ = self
                .core
                .finish(t, start.node, start.master, Outcome::Interrupted);
            return;
        };
        let Some(m) = self.masters.iter().position(|m| m.id == Some(start.master)) else {
            let _ = self
                .core
                .finish(t, start.node, start.master, Outcome::Interrupted);
            return;
        };
        self.dirty.insert(start.node);
        self.running.insert(start.node, (m, t));
        self.parts
            .metrics
            .starts
            .get_or_create(&ReasonLabel {
                reason: start.reason.name().into(),
            })
            .inc();
        let environment = self
            .core
            .view(start.node)
            .map(|v| v.environment)
            .unwrap_or_else(|| self.parts.default_environment.clone());
        if !self.parts.deps.known(&environment) {
            self.analyze(&environment);
        }
        let deps = self.parts.deps.clone();
        let compiler = self.masters[m].compiler.clone();
        let store = self.parts.store.clone();
        let catalogs = self.parts.catalogs.clone();
        let tx = self.tx.clone();
        let timeout = start.deadline.since(t).max(Duration::from_secs(1));
        let node = start.node;
        tokio::spawn(async move {
            let started = Instant::now();
            let certname = info.certname.clone();
            let facts = match store.facts(certname.as_str()).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("reading facts of {certname}: {e}");
                    None
                }
            };
            let job = Job {
                certname: certname.clone(),
                environment: environment.clone(),
                facts,
                timeout,
            };
            let result = match compiler.compile(job).await {
                Ok(bytes) => {
                    let previous = info.catalog_hash.clone();
                    let c = certname.clone();
                    // the analysis as of now: one that finished during the
                    // compile applies to its catalog
                    let analysis = deps.analysis(&environment);
                    tokio::task::spawn_blocking(move || {
                        keep(&catalogs, &c, &bytes, previous, analysis.as_deref())
                    })
                    .await
                    .unwrap_or_else(|e| Err(Failure::Node(format!("catalog task: {e}"))))
                }
                Err(f) => Err(f),
            };
            let _ = tx
                .send(Command::Compiled(Box::new(Compiled {
                    node,
                    master: m,
                    certname,
                    started,
                    result,
                })))
                .await;
        });
    }

    fn compiled(&mut self, c: Compiled) {
        let t = now();
        self.running.remove(&c.node);
        let Some(master_id) = self.masters.get(c.master).and_then(|m| m.id) else {
            return;
        };
        let outcome = match &c.result {
            Ok(cat) if cat.changed => Outcome::Changed,
            Ok(_) => Outcome::Unchanged,
            Err(Failure::Node(_)) => Outcome::Failed,
            Err(Failure::Timeout(_)) => Outcome::TimedOut,
            Err(Failure::Server(_)) => Outcome::Interrupted,
        };
        self.parts
            .metrics
            .compile_seconds
            .get_or_create(&OutcomeLabel {
                outcome: outcome.name().into(),
            })
            .observe(c.started.elapsed().as_secs_f64());
        match self.core.finish(t, c.node, master_id, outcome) {
            Ok(Finished::Released) | Err(_) => return, // removed meanwhile
            Ok(Finished::Next(_)) => {}
        }
        self.dirty.insert(c.node);
        let environment = self
            .core
            .view(c.node)
            .map(|v| v.environment)
            .unwrap_or_default();
        match c.result {
            Ok(cat) => {
                let changed_at = if cat.changed {
                    t
                } else {
                    self.info_of(c.node)
                        .and_then(|i| i.catalog_changed_at)
                        .unwrap_or(t)
                };
                if let Some(info) = self.info_mut(c.node) {
                    info.catalog_hash = Some(cat.hash.clone());
                    info.catalog_changed_at = Some(changed_at);
                    info.last_error = None;
                }
                self.pending_writes.push(Write::Catalog {
                    certname: c.certname.to_string(),
                    hash: cat.hash.clone(),
                    changed_at,
                    exports: cat.exports,
                });
                if cat.links.deps.is_none() {
                    // an analysis that finished after this compile's
                    // links were worked out: read them from the file
                    if let Some(a) = self.parts.deps.analysis(&environment) {
                        self.reload(a, vec![(c.certname.clone(), cat.hash.clone())], None);
                    }
                }
                self.set_deps(c.node, cat.links.deps);
                self.exports_changed(c.node, cat.links.exported, cat.links.held, t);
                Metrics::count(
                    &self.parts.metrics.catalogs,
                    if cat.changed { "changed" } else { "unchanged" },
                );
                if cat.changed {
                    tracing::info!(certname = %c.certname, hash = %cat.hash, "catalog changed");
                    self.parts.notifier.send(Notice {
                        certname: c.certname.to_string(),
                        environment,
                        catalog_hash: cat.hash,
                    });
                }
            }
            Err(Failure::Server(e)) => {
                self.master_down(c.master, &e);
            }
            Err(failure) => {
                tracing::warn!(certname = %c.certname, "{failure}");
                let text = failure.to_string();
                if let Some(info) = self.info_mut(c.node) {
                    info.last_error = Some(text.clone());
                }
                self.pending_writes.push(Write::Error {
                    certname: c.certname.to_string(),
                    error: Some(text),
                });
            }
        }
    }

    /// Pauses starts on a master and probes it until it answers.
    fn master_down(&mut self, m: usize, why: &str) {
        let slot = &mut self.masters[m];
        if let Some(id) = slot.id {
            let _ = self.core.set_master_up(now(), id, false);
        }
        self.parts
            .metrics
            .master_up
            .get_or_create(&super::metrics::MasterLabel {
                master: slot.name.clone(),
            })
            .set(0);
        if slot.probing {
            return;
        }
        slot.probing = true;
        tracing::warn!(
            "master {} unavailable ({why}); pausing its starts and probing every {:?}",
            slot.name,
            slot.probe_interval
        );
        let compiler = slot.compiler.clone();
        let every = slot.probe_interval;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if compiler.probe().await {
                    let _ = tx.send(Command::MasterBack(m)).await;
                    return;
                }
            }
        });
    }

    /// Queues the rows of nodes that changed, and any other writes.
    fn flush(&mut self) {
        let batch = self.take_writes();
        self.parts.store.write(batch);
    }

    fn take_writes(&mut self) -> Vec<Write> {
        let mut batch = std::mem::take(&mut self.pending_writes);
        for id in std::mem::take(&mut self.dirty) {
            if let (Some(view), Some(info)) = (self.core.view(id), self.info_of(id)) {
                batch.push(Write::Node {
                    certname: info.certname.to_string(),
                    view,
                });
            }
        }
        // a node's row must exist before its facts hash or catalog update
        batch.sort_by_key(|w| !matches!(w, Write::Node { .. }));
        batch
    }

    fn status(&mut self, certname: &Certname) -> Option<NodeStatus> {
        let secs = |t: Time| t.as_secs_f64();
        let Some(&id) = self.ids.get(certname) else {
            let waiting = self.waiting_for_facts.contains(certname);
            return waiting.then(|| NodeStatus {
                certname: certname.to_string(),
                environment: self.parts.default_environment.clone(),
                state: "waiting_for_facts".into(),
                reason: None,
                since: None,
                catalog_hash: None,
                catalog_changed_at: None,
                last_compile: None,
                failures: 0,
                last_error: None,
                fact_paths: None,
            });
        };
        let view = self.core.view(id)?;
        let info = self.info_of(id)?;
        let state = match view.state {
            NodeState::Queued(lane) => lane.name(),
            NodeState::Compiling(_) => "compiling",
            NodeState::Parked(_) => "parked",
        };
        Some(NodeStatus {
            certname: certname.to_string(),
            environment: view.environment,
            state: state.into(),
            reason: Some(view.reason.name().into()),
            since: Some(secs(view.since)),
            catalog_hash: info.catalog_hash.clone(),
            catalog_changed_at: info.catalog_changed_at.map(secs),
            last_compile: view.last_compile.map(secs),
            failures: view.failures,
            last_error: info.last_error.clone(),
            fact_paths: info
                .deps
                .as_ref()
                .filter(|d| !d.facts.all)
                .map(|d| d.facts.paths()),
        })
    }

    fn queue(&mut self) -> QueueView {
        let t = now();
        let stats = self.core.stats(t);
        QueueView {
            nodes: stats.nodes,
            lanes: Lane::ALL
                .iter()
                .map(|l| LaneView {
                    lane: l.name().into(),
                    depth: stats.lane(*l).depth,
                    oldest_age_seconds: stats.lane(*l).oldest_age.as_secs_f64(),
                })
                .collect(),
            in_flight: self
                .running
                .iter()
                .filter_map(|(id, (m, started))| {
                    Some(RunningView {
                        certname: self.info_of(*id)?.certname.to_string(),
                        master: self.masters.get(*m)?.name.clone(),
                        seconds: t.since(*started).as_secs_f64(),
                    })
                })
                .collect(),
            blocked: stats.blocked.name().into(),
            cycle_time_seconds: stats.cycle_time.map(|d| d.as_secs_f64()),
            masters: self
                .masters
                .iter()
                .filter_map(|m| {
                    let s = stats.masters.iter().find(|s| Some(s.id) == m.id)?;
                    Some(MasterView {
                        name: m.name.clone(),
                        up: s.up,
                        in_flight: s.in_flight,
                        max_concurrency: s.max_concurrency,
                        load_per_core: s.load_per_core,
                    })
                })
                .collect(),
            waiting_for_facts: self.waiting_for_facts.len(),
        }
    }
}

/// Checks a compile's output, writes the catalog if it changed.
fn keep(
    catalogs: &CatalogFiles,
    certname: &Certname,
    bytes: &[u8],
    previous: Option<String>,
    analysis: Option<&Analysis>,
) -> Result<Catalog, Failure> {
    let mut compiled = catalog::read(bytes).map_err(|e| Failure::Node(e.to_string()))?;
    let changed = previous.as_deref() != Some(compiled.hash.as_str());
    if changed {
        catalogs
            .write(certname, &compiled.json)
            .map_err(|e| Failure::Node(format!("storing the catalog: {e}")))?;
    }
    let links = Links::of(&mut compiled, analysis);
    Ok(Catalog {
        hash: compiled.hash,
        changed,
        exports: compiled.exports,
        links,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::analyze::Query;

    fn export(kind: &str, title: &str, tag: &str) -> Exported {
        Exported {
            kind: kind.to_string(),
            title: title.to_string(),
            tags: vec![tag.to_string()],
            parameters: serde_json::Map::new(),
            parameters_hash: String::new(),
        }
    }

    fn node(collects: Vec<(String, Query)>, held: Vec<(String, String)>) -> NodeInfo {
        let mut n = NodeInfo::new(Certname::parse("lb-01.example.com").expect("certname"));
        n.deps = Some(Arc::new(NodeDeps {
            collects,
            ..NodeDeps::default()
        }));
        n.held = held;
        n
    }

    #[test]
    fn collectors_are_found_by_type_and_query_or_by_a_clashing_title() {
        let by_tag = node(
            vec![(
                "file".to_string(),
                Query::Compare {
                    op: "==".to_string(),
                    attr: "tag".to_string(),
                    value: "pcq_backend".to_string(),
                },
            )],
            Vec::new(),
        );
        let backend = export("File", "/etc/haproxy/web-01", "pcq_backend");
        let other = export("File", "/etc/motd", "motd");
        assert!(by_tag.collects(&backend, true));
        assert!(!by_tag.collects(&other, true), "the query is evaluated");
        assert!(
            by_tag.collects(&other, false),
            "without the whole resource (restored), any collector of its type"
        );
        assert!(!by_tag.collects(&export("Sshkey", "web-01", "pcq_backend"), true));

        let holder = node(
            Vec::new(),
            vec![("file".to_string(), "/etc/motd".to_string())],
        );
        assert!(holder.collects(&other, true), "same type and title");
        assert!(!holder.collects(&backend, true));
    }
}
