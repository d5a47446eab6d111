//! The real-time driver of the scheduling core.
//!
//! One task owns the [`Core`] and everything that must agree with it (which
//! certname is which node, each node's catalog hash and facts hash). Every
//! other part of the daemon talks to it through [`Command`]s. After each
//! batch of commands it polls the core, starts what the core says on the
//! masters' backends, and queues the changed nodes' rows for the store;
//! between commands it sleeps until the core's next wakeup.
//!
//! This file is the loop, the restore at start-up and the glue; the
//! decisions live beside it, each testable without tokio:
//!
//! - [`command`]: the messages and their answers; [`parts`]: what the
//!   driver is given;
//! - [`nodes`]: what the driver knows of each node;
//! - [`restore`]: the queue rebuilt from the store at start-up;
//! - [`intake`]: who joins and leaves, what a facts upload does;
//!   [`upload`]: its way to the store;
//! - [`deploys`]: which nodes a deploy moves;
//! - [`compile`]: one compile from facts to a kept catalog, and whose
//!   fault a failure is; [`masters`]: where compiles run, down or up;
//! - [`links`]: what catalogs depend on, and who collects a changed export;
//!   [`router`] keeps that current in the background and routes changes;
//! - [`view`]: what `pcq queue` and `pcq status` show; [`observed`]: what
//!   this daemon saw, for `pcq site`.
//!
//! Time is wall-clock microseconds since the Unix epoch, so stored times
//! mean something after a restart.

pub mod command;
pub mod compile;
pub mod deploys;
pub mod intake;
pub mod links;
pub mod masters;
pub mod nodes;
pub mod observed;
pub mod parts;
pub mod restore;
pub mod router;
pub mod upload;
pub mod view;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::core::{BumpReason, Core, Finished, NodeId, Outcome, Poll, Start, Time};
use crate::daemon::analyze::Snapshot;
use crate::daemon::backend::Failure;
use crate::daemon::catalog::Export;
use crate::daemon::certname::Certname;
use crate::daemon::dependencies::encode_baseline;
use crate::daemon::last_good::Kept;
use crate::daemon::metrics::Metrics;
use crate::daemon::notify::Notice;
use crate::daemon::store::{StoreError, StoredNode, Write};
use crate::site::{EnvironmentCount, ObservedDeploy, ObservedExports, ObservedMaster, Site};

pub use command::{ApiError, Command, FactsOutcome, FactsUpload, Reply};
pub use masters::MasterSlot;
pub use parts::Parts;
pub use restore::RestoreError;
pub use view::{
    DeployReport, LaneView, LeaderView, MasterView, NodeStatus, QueueView, RunningView,
};

use compile::{CompileJob, Compiled};
use deploys::Deploys;
pub use intake::Absence;
use intake::{BeforeStore, Intake, Known, Newcomer};
use masters::Masters;
use nodes::{NodeInfo, Nodes};
use observed::Observed;
use router::{environment_of, Router};

/// Now, as the core's time.
pub fn now() -> Time {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Time::from_micros(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
}

/// The driver.
pub struct Driver {
    core: Core,
    nodes: Nodes,
    intake: Intake,
    router: Router,
    masters: Masters,
    parts: Parts,
    tx: mpsc::Sender<Command>,
    running: HashMap<NodeId, (usize, Time)>,
    dirty: BTreeSet<NodeId>,
    pending_writes: Vec<Write>,
    /// Deploys announced per environment since start, and when this daemon
    /// started (seconds since the epoch): a node's code version.
    deploys: HashMap<String, u64>,
    /// Deploys waiting for the analysis of their code.
    waiting_deploys: Deploys,
    started_at: u64,
    draining: Option<Instant>,
    observed: Observed,
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
    ) -> Result<Driver, RestoreError> {
        let mut core = core;
        let masters = Masters::add(masters, &mut core, parts.metrics.clone(), now())?;
        let restored = restore::restore(&mut core, stored, stored_exports, facts_owners)?;
        core.audit().map_err(RestoreError::Inconsistent)?;
        let mut intake = Intake::new(
            parts.exclude.clone(),
            parts.join_on_facts,
            parts.default_environment.clone(),
            parts.absence,
        );
        for c in restored.facts_only {
            intake.restore_facts_owner(c);
        }
        Ok(Driver {
            core,
            nodes: restored.nodes,
            intake,
            router: Router::new(
                parts.deps.clone(),
                parts.exports.clone(),
                parts.catalogs.clone(),
                tx.clone(),
            ),
            masters,
            parts,
            tx,
            running: HashMap::new(),
            dirty: restored.requeued.into_iter().collect(),
            pending_writes: Vec::new(),
            deploys: HashMap::new(),
            waiting_deploys: Deploys::default(),
            started_at: now().as_micros() / 1_000_000,
            draining: None,
            observed: Observed::new(now()),
        })
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
            self.router.analyze(&env);
        }
        self.check_catalogs();
        self.probe_masters();
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
        if let Err(e) = self.parts.store.write_finally(last).await {
            tracing::error!("last writes: {e}");
        }
        if !self.running.is_empty() {
            tracing::info!(
                "stopping with {} compiles running; they are queued again at the next start",
                self.running.len()
            );
        }
    }

    /// Does this daemon lead (its lease holds by its own clock)? A leader
    /// paused past its lease starts nothing until a commit proves it still
    /// leads.
    fn leads(&self) -> bool {
        self.parts.lease.as_ref().is_none_or(|lease| lease.holds())
    }

    fn sleep_for(&mut self) -> Duration {
        let cap = Duration::from_secs(5);
        if self.draining.is_some() {
            return Duration::from_millis(100);
        }
        let t = now();
        let delayed = self.router.next_due().map(|due| due.since(t));
        let core = self.core.next_wakeup().map(|w| w.since(t));
        // writes the store's full queue handed back are offered again soon
        let unwritten = (!self.pending_writes.is_empty()).then(|| Duration::from_millis(20));
        // a lapsed lease is looked at again soon (a renewal brings it back)
        let lapsed = (!self.leads()).then(|| Duration::from_millis(250));
        [Some(cap), delayed, core, unwritten, lapsed]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(cap)
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Facts {
                upload,
                values,
                reply,
            } => self.facts(upload, values, reply),
            Command::HandIn { reply, .. } => {
                // taken by the API a moment before this pcq took the lead,
                // unhashed: the node uploads again (503, Retry-After)
                let _ = reply.send(Err(ApiError::Busy(
                    "this pcq took the lead just now: upload again".into(),
                )));
            }
            Command::FactsStored {
                upload,
                baseline,
                result,
                reply,
            } => {
                let answer = match result {
                    Ok(()) => Ok(self.facts_stored(upload, baseline)),
                    Err(e @ (StoreError::Busy | StoreError::Unavailable(_))) => {
                        Err(ApiError::Busy(e.to_string()))
                    }
                    Err(e) => Err(ApiError::Internal(e.to_string())),
                };
                let _ = reply.send(answer);
            }
            Command::Bump { certname, reply } => {
                let answer = match self.nodes.id(&certname) {
                    Some(id) => {
                        self.dirty.insert(id);
                        self.core
                            .bump(now(), id, BumpReason::Manual)
                            .map_err(|e| ApiError::Internal(e.to_string()))
                    }
                    None => Err(ApiError::UnknownNode(certname.to_string())),
                };
                let _ = reply.send(answer);
            }
            Command::Deploy {
                environment,
                new,
                reply,
            } => {
                let members = self
                    .core
                    .node_ids()
                    .filter(|&id| self.environment_of(id) == environment)
                    .count();
                if members == 0 && !new && !self.parts.deps.on_disk(&environment) {
                    tracing::warn!("deploy to {environment} refused: an unknown environment");
                    let _ = reply.send(Err(ApiError::UnknownEnvironment(environment)));
                    return;
                }
                *self.deploys.entry(environment.clone()).or_default() += 1;
                if !self.parts.deps.enabled() {
                    let report = self.deploy(&environment, Err("analysis is off"));
                    let _ = reply.send(Ok(report));
                    return;
                }
                // decided when an analysis that started after it ends
                let started = self.router.analyze(&environment);
                self.waiting_deploys.wait(&environment, reply, started);
            }
            Command::Ca { signed, revoked } => {
                let plan = self.intake.ca(&signed, &revoked, &self.nodes);
                let label = if plan.implausible {
                    "implausible"
                } else {
                    "plausible"
                };
                Metrics::count(&self.parts.metrics.ca_listings, label);
                for c in plan.remove {
                    self.remove_node(&c);
                }
                for (c, env) in plan.add {
                    self.add_node(c, &env, None);
                }
            }
            Command::Compiled(c) => self.compiled(*c),
            Command::Analyzed {
                environment,
                result,
            } => {
                let label = if result.is_ok() { "ok" } else { "failed" };
                Metrics::count(&self.parts.metrics.analyses, label);
                let (replies, more) = self.waiting_deploys.ended(&environment);
                if replies.is_empty() && !more {
                    self.code_changed_without_deploy(&environment, &result);
                }
                if !replies.is_empty() {
                    // before the router reads the nodes' links anew: the
                    // decision is on what their catalogs reached
                    let analysis = result.as_deref().map_err(String::as_str);
                    let report = self.deploy(&environment, analysis);
                    for reply in replies {
                        let _ = reply.send(Ok(report.clone()));
                    }
                }
                self.router
                    .analyzed(&self.core, &mut self.nodes, environment.clone(), result);
                if more {
                    self.router.analyze(&environment);
                    self.waiting_deploys.covered(&environment);
                }
            }
            Command::Answered { id, answer } => {
                self.pending_writes.push(Write::Answer { id, answer });
            }
            Command::Reloaded { batch, done } => {
                self.router
                    .reloaded(&self.core, &mut self.nodes, batch, done, now());
            }
            Command::CatalogsChecked(lost) => self.catalogs_lost(lost),
            Command::MasterBack(m) => self.masters.back(&mut self.core, now(), m),
            Command::MasterUnreachable { m, why } => self.master_down(m, &why),
            Command::Load(sample) => self.masters.report_load(&mut self.core, now(), sample),
            Command::MasterStatus { m, reading, asked } => {
                self.masters
                    .report_status(&mut self.core, now(), m, reading, asked);
            }
            Command::Status { certname, reply } => {
                let _ = reply.send(self.status(&certname));
            }
            Command::Queue { reply } => {
                let _ = reply.send(self.queue());
            }
            Command::Site { reply } => {
                let _ = reply.send(self.site());
            }
            Command::Stats { reply } => {
                let _ = reply.send(Some((self.core.stats(now()), self.intake.waiting())));
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

    /// An analysis no deploy asked for (at start, for a new environment)
    /// found code the baseline does not have: it changed without a deploy
    /// (while pcq was down, or a deploy hook failed), and some catalogs
    /// may have been compiled from code no snapshot saw. The baseline is
    /// dropped: the next deploy moves every node.
    fn code_changed_without_deploy(
        &mut self,
        environment: &str,
        result: &Result<Arc<crate::daemon::analyze::Analysis>, String>,
    ) {
        let Some(baseline) = self.parts.deps.baseline(environment) else {
            return;
        };
        let change = match result.as_ref().map(|a| a.snapshot.as_ref()) {
            Ok(Some(snapshot)) => baseline.diff(snapshot),
            _ => return,
        };
        if !change.touches_code() {
            return;
        }
        tracing::warn!(
            "the code of {environment} changed since its last deploy without a deploy ({} files, first: {}); the next deploy moves every node",
            change.files.len(),
            change.files.first().map(|f| f.path.as_str()).unwrap_or("?")
        );
        self.parts.metrics.set_code_unannounced(environment, true);
        self.set_baseline(environment, None);
    }

    /// Records `environment`'s baseline, and stores it with the next batch
    /// (with the nodes a deploy moved: the same commit). A baseline that
    /// cannot be encoded is stored as none: the next deploy moves every
    /// node.
    fn set_baseline(&mut self, environment: &str, snapshot: Option<Arc<Snapshot>>) {
        let bytes = snapshot.as_deref().and_then(|s| {
            encode_baseline(s)
                .map_err(|e| {
                    tracing::error!(
                        "the baseline of {environment} not stored ({e}): its next deploy moves every node"
                    )
                })
                .ok()
        });
        self.parts.deps.set_baseline(environment, snapshot);
        self.pending_writes.push(Write::Baseline {
            environment: environment.to_string(),
            snapshot: bytes,
        });
    }

    /// Moves the nodes of `environment` the new code (analysed as
    /// `analysis`) may change to the deploy lane; the deploy's report.
    fn deploy(
        &mut self,
        environment: &str,
        analysis: Result<&crate::daemon::analyze::Analysis, &str>,
    ) -> DeployReport {
        let members: Vec<_> = self
            .core
            .node_ids()
            .filter(|&id| self.environment_of(id) == environment)
            .map(|id| deploys::Member {
                id,
                deps: self
                    .nodes
                    .get(id)
                    .and_then(|info| self.parts.deps.node(&info.certname)),
                compiling: self.running.contains_key(&id),
            })
            .collect();
        let baseline = self.parts.deps.baseline(environment);
        let decision = deploys::decide(environment, baseline.as_deref(), analysis, &members);
        let moves = &decision.moves;
        let n = self
            .core
            .deploy_to(now(), environment, |id| moves.contains(&id));
        self.dirty.extend(moves.iter().copied());
        self.set_baseline(environment, decision.baseline.clone());
        self.parts.metrics.set_code_unannounced(environment, false);
        let mut report = decision.report;
        report.nodes = n;
        let metrics = &self.parts.metrics;
        let result = if report.narrowed {
            "narrowed"
        } else {
            "every_node"
        };
        Metrics::count(&metrics.deploys, result);
        self.observed.deploy(ObservedDeploy {
            at: now().as_secs_f64(),
            environment: environment.to_string(),
            nodes: u32::try_from(report.affected).unwrap_or(u32::MAX),
            members: u32::try_from(report.members).unwrap_or(u32::MAX),
            unbounded: decision.unbounded,
        });
        Metrics::count_by(&metrics.deploy_nodes, "moved", report.affected as u64);
        let spared = report.members - report.affected;
        Metrics::count_by(&metrics.deploy_nodes, "spared", spared as u64);
        let why: Vec<String> = report
            .reasons
            .iter()
            .take(3)
            .map(|(r, c)| format!("{c}: {r}"))
            .collect();
        tracing::info!(
            "deploy to {environment}: {} of {} nodes affected ({}), {n} to recompile; {} files changed; {}",
            report.affected,
            report.members,
            if report.narrowed { "narrowed" } else { "every node" },
            report.changed_files,
            why.join("; ")
        );
        report
    }

    fn environment_of(&self, id: NodeId) -> String {
        environment_of(&self.core, id)
    }

    // --- intake ---------------------------------------------------------

    fn facts(&mut self, upload: FactsUpload, values: Vec<u8>, reply: Reply<FactsOutcome>) {
        if self.draining.is_some() {
            let _ = reply.send(Err(ApiError::ShuttingDown));
            return;
        }
        if self.intake.excluded(&upload.certname) {
            let _ = reply.send(Err(ApiError::excluded(&upload.certname)));
            return;
        }
        let id = self.nodes.id(&upload.certname);
        let env = id.map(|id| self.requested_of(id)).unwrap_or_default();
        let known = id.and_then(|id| self.nodes.get(id)).map(|i| Known {
            facts_hash: i.facts_hash.as_deref(),
            environment: &env,
            used: i.used,
        });
        let (environment, used) = (upload.environment.as_deref(), upload.used.as_ref());
        let baseline = match intake::before_store(known, environment, &upload.hash, used) {
            BeforeStore::Unchanged => {
                self.count_upload("unchanged");
                let _ = reply.send(Ok(FactsOutcome::Unchanged));
                return;
            }
            BeforeStore::Store { baseline } => baseline,
        };
        // store first; bump once the facts are durable (see `upload`)
        let (deps, store, tx) = (
            self.parts.deps.clone(),
            self.parts.store.clone(),
            self.tx.clone(),
        );
        let write = Write::Facts {
            certname: upload.certname.to_string(),
            values,
            hash: upload.hash.clone(),
            at: now(),
        };
        let set = used.filter(|_| baseline).map(|u| u.facts.clone());
        tokio::spawn(async move {
            let (baseline, result) =
                upload::store(&store, &deps, &upload.certname, write, set).await;
            let stored = Command::FactsStored {
                upload,
                baseline,
                result,
                reply,
            };
            let _ = tx.send(stored).await;
        });
    }

    fn facts_stored(&mut self, upload: FactsUpload, baseline: Option<u64>) -> FactsOutcome {
        let FactsUpload {
            certname,
            environment,
            hash,
            used,
        } = upload;
        let Some(id) = self.nodes.id(&certname) else {
            return match self.intake.newcomer(certname.clone(), environment) {
                Newcomer::Join(env) => {
                    self.add_node(certname, &env, Some(hash));
                    Metrics::count(&self.parts.metrics.facts_uploads, "changed");
                    self.observed.upload("first");
                    FactsOutcome::Changed
                }
                Newcomer::Wait => FactsOutcome::Stored,
            };
        };
        let env = self.requested_of(id);
        let Some(info) = self.nodes.get(id) else {
            return FactsOutcome::Stored;
        };
        let known = Known {
            facts_hash: info.facts_hash.as_deref(),
            environment: &env,
            used: info.used,
        };
        let after = intake::after_store(
            known,
            environment.as_deref(),
            &hash,
            used.as_ref(),
            baseline,
        );
        let compiled_in = self.environment_of(id);
        if let Some(info) = self.nodes.get_mut(id) {
            info.facts_hash = Some(hash);
            info.used = after.used;
            if let Some(env) = after.environment {
                // a request: the next compile asks for it, and the catalog
                // says where the classifier put the node
                info.requested_environment = (env != compiled_in).then_some(env);
            }
        }
        // (the facts write already put the hash in the node's row)
        self.dirty.insert(id);
        self.count_upload(after.label);
        if after.bump {
            let _ = self.core.bump(now(), id, BumpReason::Facts);
            FactsOutcome::Changed
        } else {
            FactsOutcome::Unchanged
        }
    }

    fn add_node(&mut self, certname: Certname, environment: &str, facts_hash: Option<String>) {
        match self.core.add_node(now(), environment) {
            Ok(id) => {
                tracing::info!("node {certname} joins the queue");
                // its row is written at the next flush, before this
                if let Some(hash) = &facts_hash {
                    self.pending_writes.push(Write::FactsHash {
                        certname: certname.to_string(),
                        hash: hash.clone(),
                    });
                }
                self.nodes.insert(
                    id,
                    NodeInfo {
                        facts_hash,
                        ..NodeInfo::new(certname)
                    },
                );
                self.dirty.insert(id);
            }
            Err(e) => tracing::error!("cannot add {certname}: {e}"),
        }
    }

    fn remove_node(&mut self, certname: &Certname) {
        self.intake.forget(certname);
        let Some(id) = self.nodes.id(certname) else {
            return;
        };
        let _ = self.core.remove_node(now(), id);
        self.router.forget(&mut self.nodes, id);
        self.nodes.remove(certname);
        self.dirty.remove(&id);
        self.pending_writes.push(Write::Remove {
            certname: certname.to_string(),
        });
        if let Err(e) = self.parts.catalogs.remove(certname) {
            tracing::warn!("removing the catalog of {certname}: {e}");
        }
        tracing::info!("node {certname} removed (revoked, or no longer listed by the CA)");
    }

    // --- compiles -------------------------------------------------------

    /// Starts every compile the core allows.
    fn pump(&mut self) {
        if self.draining.is_some() || !self.leads() {
            return;
        }
        let t = now();
        for id in self.router.due(t) {
            if self.core.bump(t, id, BumpReason::Exports).is_ok() {
                self.dirty.insert(id);
            }
        }
        while let Poll::Start(start) = self.core.poll(t) {
            self.start(start, t);
        }
    }

    fn start(&mut self, start: Start, t: Time) {
        let master = self.masters.index_of(start.master);
        let (Some(info), Some(m)) = (self.nodes.get(start.node), master) else {
            // cannot happen: the core only starts nodes and masters the
            // driver added
            let _ = self
                .core
                .finish(t, start.node, start.master, Outcome::Interrupted);
            return;
        };
        let environment = self.requested_of(start.node);
        let job = CompileJob {
            node: start.node,
            master: m,
            certname: info.certname.clone(),
            environment: environment.clone(),
            previous: info.catalog_hash.clone(),
            timeout: start.deadline.since(t).max(Duration::from_secs(1)),
            compiler: self.masters.all()[m].compiler.clone(),
            store: self.parts.store.clone(),
            catalogs: self.parts.catalogs.clone(),
            deps: self.parts.deps.clone(),
            leader_epoch: self.parts.leader.as_ref().map(|l| l.epoch),
            lease: self.parts.lease.clone(),
        };
        self.dirty.insert(start.node);
        self.running.insert(start.node, (m, t));
        self.parts.metrics.started(start.reason.name());
        tracing::debug!(certname = %info.certname, reason = start.reason.name(), "compile started");
        self.router.ensure_analysed(&environment);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let done = compile::run(job).await;
            let _ = tx.send(Command::Compiled(Box::new(done))).await;
        });
    }

    fn compiled(&mut self, c: Compiled) {
        let t = now();
        self.running.remove(&c.node);
        let Some(master_id) = self.masters.get(c.master).and_then(|m| m.id()) else {
            return;
        };
        let outcome = compile::outcome_of(&c.result);
        let seconds = c.started.elapsed().as_secs_f64();
        self.parts.metrics.compiled(outcome.name(), seconds);
        if !matches!(outcome, Outcome::Interrupted | Outcome::Deferred) {
            // failed and timed-out compiles held a JRuby as long too
            self.observed.compiled(c.master, seconds);
        }
        match self.core.finish(t, c.node, master_id, outcome) {
            Ok(Finished::Released) | Err(_) => return, // removed meanwhile
            Ok(Finished::Next(_)) => {}
        }
        self.dirty.insert(c.node);
        let environment = self.environment_of(c.node);
        let mut cat = match c.result {
            Ok(cat) => cat,
            Err(Failure::Server(e)) => return self.master_down(c.master, &e),
            Err(failure) => {
                tracing::warn!(certname = %c.certname, "{failure}");
                return self.record_error(c.node, &c.certname, failure.to_string());
            }
        };
        if self.nodes.get(c.node).is_none() {
            return; // cannot happen: the core still has the node
        }
        let body = match cat.kept.take() {
            Some(Kept::Staged(staged)) => {
                if let Err(e) = staged.commit() {
                    // the store keeps the old hash, so the node's next
                    // compile writes the file again
                    tracing::error!(certname = %c.certname, "storing the catalog: {e}");
                    Metrics::count(&self.parts.metrics.catalogs, "unstored");
                    let text = format!("storing the catalog: {e}");
                    return self.record_error(c.node, &c.certname, text);
                }
                // the store syncs the directory before it records the hash
                None
            }
            // committed with the hash, in one transaction
            Some(Kept::Compressed(body)) => Some(body),
            None => None,
        };
        if let Some(env) = cat.environment.as_deref() {
            self.classified(c.node, &c.certname, env);
        }
        let Some(info) = self.nodes.get_mut(c.node) else {
            return;
        };
        let changed_at = info.record_catalog(&cat.hash, cat.changed, t);
        self.pending_writes.push(Write::Catalog {
            certname: c.certname.to_string(),
            hash: cat.hash.clone(),
            changed_at,
            exports: cat.exports,
            body,
        });
        self.router.compiled(
            &self.core,
            &mut self.nodes,
            c.node,
            &c.certname,
            &cat.hash,
            cat.links,
            t,
        );
        let label = if cat.changed { "changed" } else { "unchanged" };
        Metrics::count(&self.parts.metrics.catalogs, label);
        if cat.changed {
            tracing::info!(certname = %c.certname, hash = %cat.hash, "catalog changed");
            self.parts.notifier.send(Notice {
                certname: c.certname.to_string(),
                environment,
                catalog_hash: cat.hash,
            });
        }
    }

    /// Checks, in the background, every catalog file against the hash its
    /// row records.
    fn check_catalogs(&self) {
        let recorded: Vec<(Certname, String)> = self
            .core
            .node_ids()
            .filter_map(|id| self.nodes.get(id))
            .filter_map(|i| Some((i.certname.clone(), i.catalog_hash.clone()?)))
            .collect();
        let (catalogs, tx) = (self.parts.catalogs.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let count = recorded.len();
            let lost = match restore::disagreeing(&catalogs, recorded) {
                Ok(lost) => lost,
                Err(e) => {
                    // nothing is proven lost: every hash stays
                    tracing::error!("the stored catalogs could not be checked: {e}");
                    return;
                }
            };
            tracing::info!("{count} stored catalogs checked, {} disagree", lost.len());
            if !lost.is_empty() {
                let _ = tx.blocking_send(Command::CatalogsChecked(lost));
            }
        });
    }

    /// Nodes whose catalog file is not the catalog their hash names: a
    /// file holding another whole catalog of the node is recorded under
    /// its own hash (the node keeps the catalog Puppet Server compiled for
    /// it); otherwise the hash is forgotten (no catalog is served under
    /// it). Either way the node compiles again, which writes file and row
    /// together.
    fn catalogs_lost(&mut self, lost: Vec<restore::Disagreement>) {
        let t = now();
        for d in lost {
            let certname = d.certname;
            let Some(id) = self.nodes.id(&certname) else {
                continue;
            };
            let Some(info) = self.nodes.get_mut(id) else {
                continue;
            };
            if info.catalog_hash.as_deref() != Some(d.recorded.as_str()) {
                continue; // compiled since: the file is new
            }
            match d.found {
                restore::Found::Another { hash, exports } => {
                    tracing::warn!(%certname, "catalog file holds catalog {hash}, not the recorded {} (a crash between the file and the store): kept under its own hash, compiling it again", d.recorded);
                    let changed_at = info.record_catalog(&hash, true, t);
                    Metrics::count(&self.parts.metrics.catalogs, "adopted");
                    self.pending_writes.push(Write::Catalog {
                        certname: certname.to_string(),
                        hash,
                        changed_at,
                        exports,
                        body: None,
                    });
                }
                restore::Found::Unusable(why) => {
                    tracing::error!(%certname, "catalog file disagrees with its recorded hash {}: {why}; compiling it again", d.recorded);
                    info.catalog_hash = None;
                    Metrics::count(&self.parts.metrics.catalogs, "lost");
                    self.pending_writes.push(Write::CatalogLost {
                        certname: certname.to_string(),
                    });
                }
            }
            let _ = self.core.bump(t, id, BumpReason::Manual);
            self.dirty.insert(id);
        }
    }

    /// The environment a node's next compile asks for: what it requested,
    /// or else the one it compiled in last.
    fn requested_of(&self, id: NodeId) -> String {
        self.nodes
            .get(id)
            .and_then(|i| i.requested_environment.clone())
            .unwrap_or_else(|| self.environment_of(id))
    }

    /// The catalog says which environment the node classifier compiled the
    /// node in: that is its environment for deploys and the views.
    fn classified(&mut self, id: NodeId, certname: &Certname, env: &str) {
        let was = self.environment_of(id);
        if env == was || !crate::daemon::config::valid_environment(env) {
            return;
        }
        let asked = self.requested_of(id);
        if self.core.set_environment(id, env).is_ok() {
            if env != asked {
                tracing::info!(%certname, "asked for environment {asked}; the node classifier put it in {env}");
            }
            self.dirty.insert(id);
            self.router.ensure_analysed(env);
        }
    }

    /// A compile that gave no catalog: the node's last error, in its row.
    fn record_error(&mut self, node: NodeId, certname: &Certname, text: String) {
        if let Some(info) = self.nodes.get_mut(node) {
            info.last_error = Some(text.clone());
        }
        self.pending_writes.push(Write::Error {
            certname: certname.to_string(),
            error: Some(text),
        });
    }

    /// Asks every master once at start: one that does not answer (a URL
    /// whose name is not in the server's certificate, say) is down, with
    /// the reason logged, rather than shown up while every request fails.
    fn probe_masters(&self) {
        for (m, slot) in self.masters.all().iter().enumerate() {
            let (compiler, tx) = (slot.compiler.clone(), self.tx.clone());
            tokio::spawn(async move {
                if let Err(why) = compiler.probe().await {
                    let _ = tx.send(Command::MasterUnreachable { m, why }).await;
                }
            });
        }
    }

    /// Pauses starts on a master and probes it until it answers.
    fn master_down(&mut self, m: usize, why: &str) {
        if let Some(probe) = self.masters.down(&mut self.core, now(), m, why) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                probe.await;
                let _ = tx.send(Command::MasterBack(m)).await;
            });
        }
    }

    // --- the store and the views ----------------------------------------

    /// Queues the rows of nodes that changed, and any other writes.
    fn flush(&mut self) {
        let batch = self.take_writes();
        if let Err(back) = self.parts.store.write(batch) {
            // the store's queue is full: kept, in order, for the next flush
            self.pending_writes = back;
        }
    }

    fn take_writes(&mut self) -> Vec<Write> {
        let mut batch = std::mem::take(&mut self.pending_writes);
        for id in std::mem::take(&mut self.dirty) {
            if let (Some(view), Some(info)) = (self.core.view(id), self.nodes.get(id)) {
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

    fn status(&self, certname: &Certname) -> Option<NodeStatus> {
        let mut status = view::status(&self.core, &self.nodes, &self.intake, certname)?;
        let deploys = self.deploys.get(&status.environment).copied().unwrap_or(0);
        status.code_version = Some(format!("{}.{deploys}", self.started_at));
        Some(status)
    }

    fn count_upload(&mut self, label: &str) {
        Metrics::count(&self.parts.metrics.facts_uploads, label);
        self.observed.upload(label);
    }

    fn site(&self) -> Site {
        let environments =
            EnvironmentCount::tally(self.core.node_ids().map(|id| self.environment_of(id)));
        let (mut exporters, mut collectors) = (0, 0);
        for id in self.core.node_ids() {
            if let Some(info) = self.nodes.get(id) {
                exporters += u32::from(!info.exports.is_empty());
                collectors += u32::from(info.deps.as_ref().is_some_and(|d| !d.collects.is_empty()));
            }
        }
        let masters = self
            .masters
            .all()
            .iter()
            .enumerate()
            .map(|(m, slot)| ObservedMaster {
                name: slot.name.clone(),
                slots: slot.spec.gate.max_concurrency,
                jrubies: slot.jrubies,
                cores: slot.cores_known.then(|| f64::from(slot.spec.cores)),
                compile_seconds: self.observed.compile_seconds(m),
                average_borrow_seconds: None,
                average_wait_seconds: None,
            })
            .collect();
        Site {
            source: format!("pcq serve (pid {})", std::process::id()),
            from: self.observed.since.as_secs_f64(),
            to: now().as_secs_f64(),
            environments,
            masters,
            agents: None,
            runs: None,
            facts: Some(self.observed.facts.clone()),
            exports: ObservedExports {
                exporters,
                collectors,
                changes: Some(self.router.export_changes),
            },
            deploys: self.observed.deploys(),
            core: Some(self.core.config().clone()),
        }
    }

    fn queue(&mut self) -> QueueView {
        let t = now();
        let stats = self.core.stats(t);
        let running = view::running(&self.running, &self.nodes, &self.masters, t);
        let mut view = view::queue_view(&stats, running, self.masters.all(), self.intake.waiting());
        view.leader = self.parts.leader.clone();
        view
    }
}
