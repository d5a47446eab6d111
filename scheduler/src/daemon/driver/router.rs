//! Keeps every node's links current and routes export changes to their
//! collectors: the driver's side of [`super::links`].
//!
//! It analyses an environment's code in the background at start, after a
//! deploy and when a compile meets an environment not analysed yet; once
//! an analysis is in, it reads every node's links back from its catalog
//! file (also in the background) and only then routes the export changes
//! that waited for it. After each compile it records the catalog's links
//! and schedules the bumps of the nodes that collect what changed. The
//! background work answers through the driver's channel.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::core::{Core, NodeId, Time};
use crate::daemon::analyze::{Analysis, NodeDeps};
use crate::daemon::catalog::Exported;
use crate::daemon::certname::Certname;
use crate::daemon::config::Exports as ExportsConfig;
use crate::daemon::dependencies::Dependencies;
use crate::daemon::last_good::LastGood;

use super::command::Command;
use super::links::{self, Links, Reloaded, Routing};
use super::nodes::Nodes;

/// An analysis that takes longer fails (Debian's modules take about 2 s;
/// a deploy waits for its analysis, and `pcq deploy` for the deploy).
pub const ANALYSIS_LIMIT: Duration = Duration::from_secs(120);

/// The environment of a core node ("" when the core does not know it).
pub fn environment_of(core: &Core, id: NodeId) -> String {
    core.view(id).map(|v| v.environment).unwrap_or_default()
}

/// Links and export routing, with what they need to run in the background.
pub struct Router {
    routing: Routing,
    deps: Arc<Dependencies>,
    exports: ExportsConfig,
    catalogs: LastGood,
    tx: mpsc::Sender<Command>,
    /// Compiles whose exported resources changed, since start (`pcq site`).
    pub export_changes: u64,
}

impl Router {
    /// A router; nothing analysed or routed yet.
    pub fn new(
        deps: Arc<Dependencies>,
        exports: ExportsConfig,
        catalogs: LastGood,
        tx: mpsc::Sender<Command>,
    ) -> Router {
        Router {
            routing: Routing::default(),
            deps,
            exports,
            catalogs,
            tx,
            export_changes: 0,
        }
    }

    /// Analyses `environment` in the background (unless that already runs:
    /// then false); the result comes back as [`Command::Analyzed`].
    pub fn analyze(&self, environment: &str) -> bool {
        if !self.deps.begin(environment) {
            return false;
        }
        let deps = self.deps.clone();
        let tx = self.tx.clone();
        let env = environment.to_string();
        tokio::spawn(async move {
            let run_env = env.clone();
            let run = tokio::task::spawn_blocking(move || deps.run(&run_env));
            let result = match tokio::time::timeout(ANALYSIS_LIMIT, run).await {
                Err(_) => Err(format!(
                    "the analysis took over {} s",
                    ANALYSIS_LIMIT.as_secs()
                )),
                Ok(joined) => joined
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map(Arc::new).map_err(|e| e.to_string())),
            };
            let _ = tx
                .send(Command::Analyzed {
                    environment: env,
                    result,
                })
                .await;
        });
        true
    }

    /// Analyses `environment` unless it is known or under way.
    pub fn ensure_analysed(&self, environment: &str) {
        if !self.deps.known(environment) {
            self.analyze(environment);
        }
    }

    /// An analysis ended: on success every node of the environment gets
    /// its links read back; on failure its nodes lose theirs (any fact
    /// change counts again).
    pub fn analyzed(
        &mut self,
        core: &Core,
        nodes: &mut Nodes,
        environment: String,
        result: Result<Arc<Analysis>, String>,
    ) {
        let ids: Vec<NodeId> = core
            .node_ids()
            .filter(|id| environment_of(core, *id) == environment)
            .collect();
        let analysis = match result {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(
                    "analysis of environment {environment} failed: {e}; its nodes recompile on any fact change"
                );
                self.deps.finish(&environment, Err(e));
                for id in ids {
                    self.set_deps(nodes, id, None);
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
        self.deps.finish(&environment, Ok(analysis.clone()));
        self.routing.reloading.insert(environment.clone());
        // every node of the environment: its links, from its catalog file
        let list: Vec<(Certname, String)> = ids
            .iter()
            .filter_map(|id| {
                let info = nodes.get(*id)?;
                Some((info.certname.clone(), info.catalog_hash.clone()?))
            })
            .collect();
        self.reload(analysis, list, Some(environment));
    }

    /// Works out the links of `list` from their catalog files, in the
    /// background; the answers come back as [`Command::Reloaded`].
    fn reload(
        &self,
        analysis: Arc<Analysis>,
        list: Vec<(Certname, String)>,
        environment: Option<String>,
    ) {
        let catalogs = self.catalogs.clone();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let more = |batch| {
                tx.blocking_send(Command::Reloaded { batch, done: None })
                    .is_ok()
            };
            if let Some(batch) = links::reload(&catalogs, &analysis, list, more) {
                let _ = tx.blocking_send(Command::Reloaded {
                    batch,
                    done: environment,
                });
            }
        });
    }

    /// Links read back from catalog files; `done` ends an environment's
    /// reload, after which the export changes that waited are routed.
    pub fn reloaded(
        &mut self,
        core: &Core,
        nodes: &mut Nodes,
        batch: Vec<Reloaded>,
        done: Option<String>,
        t: Time,
    ) {
        for r in batch {
            let Some(id) = nodes.id(&r.certname) else {
                continue;
            };
            let Some(info) = nodes.get_mut(id) else {
                continue;
            };
            if info.catalog_hash.as_deref() != Some(r.catalog_hash.as_str()) {
                continue;
            }
            info.exports = r.links.exported;
            info.exports_whole = true;
            info.held = r.links.held;
            self.set_deps(nodes, id, r.links.deps);
            if done.is_none()
                && self.routing.unrouted.contains(&id)
                && !self.routing.reloading.contains(&environment_of(core, id))
            {
                self.route_all(nodes, id, t);
            }
        }
        if let Some(env) = done {
            // every collector of the environment is known now
            self.routing.reloading.remove(&env);
            let waiting: Vec<NodeId> = self
                .routing
                .unrouted
                .iter()
                .copied()
                .filter(|id| environment_of(core, *id) == env)
                .collect();
            for id in waiting {
                self.route_all(nodes, id, t);
            }
        }
    }

    /// A compile's catalog: records its links and routes its changed
    /// exports. Links worked out before the environment's analysis was in
    /// are read again from the file.
    #[allow(clippy::too_many_arguments)]
    pub fn compiled(
        &mut self,
        core: &Core,
        nodes: &mut Nodes,
        id: NodeId,
        certname: &Certname,
        catalog_hash: &str,
        links: Links,
        t: Time,
    ) {
        let environment = environment_of(core, id);
        if links.deps.is_none() {
            if let Some(a) = self.deps.analysis(&environment) {
                self.reload(a, vec![(certname.clone(), catalog_hash.into())], None);
            }
        }
        self.set_deps(nodes, id, links.deps);
        let Some(info) = nodes.get_mut(id) else {
            return;
        };
        let (old, old_whole) = info.replace_exports(links.exported, links.held);
        let changed = links::changed_exports(&old, old_whole, &info.exports);
        if !changed.is_empty() {
            self.export_changes += 1;
        }
        if changed.is_empty() || !self.exports.bump_collectors {
            return;
        }
        if self.deps.analysis(&environment).is_none()
            || self.routing.reloading.contains(&environment)
        {
            // who collects is not known yet: once it is
            self.routing.unrouted.insert(id);
            return;
        }
        self.route(nodes, id, &changed, t);
    }

    /// Forgets a removed node (before it leaves `nodes`).
    pub fn forget(&mut self, nodes: &mut Nodes, id: NodeId) {
        self.set_deps(nodes, id, None);
        self.routing.forget(id);
    }

    /// The collectors whose bump is due at `t`.
    pub fn due(&mut self, t: Time) -> Vec<NodeId> {
        self.routing.due(t)
    }

    /// When the next collector's bump is due.
    pub fn next_due(&self) -> Option<Time> {
        self.routing.next_due()
    }

    /// Records what a node's catalog depends on, for the driver and the API.
    fn set_deps(&self, nodes: &mut Nodes, id: NodeId, deps: Option<Arc<NodeDeps>>) {
        if let Some(info) = nodes.get_mut(id) {
            info.deps = deps.clone();
            self.deps.set_node(&info.certname, deps);
        }
    }

    /// Routes every export of `exporter` (their changes were not routed
    /// when they happened).
    fn route_all(&mut self, nodes: &Nodes, exporter: NodeId, t: Time) {
        self.routing.unrouted.remove(&exporter);
        let Some(info) = nodes.get(exporter) else {
            return;
        };
        let changed: Vec<(Exported, bool)> =
            info.exports.iter().map(|e| (e.clone(), true)).collect();
        self.route(nodes, exporter, &changed, t);
    }

    /// Bumps, after the delay, every node collecting one of `changed`.
    fn route(&mut self, nodes: &Nodes, exporter: NodeId, changed: &[(Exported, bool)], t: Time) {
        if changed.is_empty() {
            return;
        }
        let collectors = links::collectors(nodes, exporter, changed);
        tracing::info!(
            certname = %nodes.get(exporter).map(|i| i.certname.to_string()).unwrap_or_default(),
            "{} exported resources changed; {} collecting nodes bumped in {:?}",
            changed.len(),
            collectors.len(),
            self.exports.bump_delay
        );
        self.routing
            .schedule(collectors, t, self.exports.bump_delay);
    }
}
