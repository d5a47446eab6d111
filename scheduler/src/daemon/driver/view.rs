//! What the API shows of the queue, of a node and of a deploy: the views
//! of `GET /v1/queue` (`pcq queue`), `GET /v1/nodes/{certname}/status`
//! (`pcq status NODE`) and `POST /v1/deploys` (`pcq deploy`), and how the
//! first two are put together from the core's state and the driver's.
//!
//! The CLI reads these same types back, so the wire format has one
//! definition.

use serde::{Deserialize, Serialize};

use crate::core::{Lane, NodeState, NodeView, Stats, Time};
use crate::daemon::certname::Certname;

use std::collections::HashMap;

use crate::core::{Core, NodeId};

use super::intake::Intake;
use super::masters::{MasterSlot, Masters};
use super::nodes::{NodeInfo, Nodes};

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
    /// The version of its environment's code as pcq knows it (changes with
    /// each deploy, and when pcq restarts): `pcq sync` fetches plugins
    /// (`puppet plugin download`) before applying a catalog when this
    /// moved since its last apply.
    #[serde(default)]
    pub code_version: Option<String>,
}

/// What a deploy did, as `pcq deploy` prints it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeployReport {
    /// The environment.
    pub environment: String,
    /// Nodes moved to the deploy lane or marked to recompile after their
    /// running compile (nodes already queued are not counted).
    pub nodes: usize,
    /// Nodes whose catalog the new code may change.
    pub affected: usize,
    /// Nodes of the environment.
    pub members: usize,
    /// Only the affected nodes move (false: the deploy could not be
    /// bounded and every node moves).
    pub narrowed: bool,
    /// Why nodes move, with how many for each reason, most first.
    pub reasons: Vec<(String, usize)>,
    /// Files changed since the last deploy.
    pub changed_files: usize,
    /// The first of them: `changed path`, `added path`, `removed path`.
    pub changed: Vec<String>,
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
    /// Who leads, on a shared (PostgreSQL) store: this pcq (a standby
    /// answers no queue).
    #[serde(default)]
    pub leader: Option<LeaderView>,
}

/// The leader of a shared store's queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaderView {
    /// Host and process.
    pub holder: String,
    /// Its epoch (raised by each new leader).
    pub epoch: i64,
    /// When it took the lead (Unix seconds).
    pub since_unix: f64,
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
    /// JRubies free for pcq by its gate's count, where its pool is read.
    #[serde(default)]
    pub jrubies_free: Option<u32>,
}

fn secs(t: Time) -> f64 {
    t.as_secs_f64()
}

/// A node's status: in the queue, or signed and waiting for facts.
pub fn status(
    core: &Core,
    nodes: &Nodes,
    intake: &Intake,
    certname: &Certname,
) -> Option<NodeStatus> {
    let Some(id) = nodes.id(certname) else {
        return intake
            .is_waiting(certname)
            .then(|| waiting_status(certname, intake.default_environment()));
    };
    Some(node_status(core.view(id)?, nodes.get(id)?))
}

/// The running compiles (node, master index, start) as the API shows them.
pub fn running(
    running: &HashMap<NodeId, (usize, Time)>,
    nodes: &Nodes,
    masters: &Masters,
    t: Time,
) -> Vec<RunningView> {
    running
        .iter()
        .filter_map(|(id, (m, started))| {
            Some(RunningView {
                certname: nodes.get(*id)?.certname.to_string(),
                master: masters.get(*m)?.name.clone(),
                seconds: t.since(*started).as_secs_f64(),
            })
        })
        .collect()
}

/// A node in the queue (or compiling, or parked).
pub fn node_status(view: NodeView, info: &NodeInfo) -> NodeStatus {
    let state = match view.state {
        NodeState::Queued(lane) => lane.name(),
        NodeState::Compiling(_) => "compiling",
        NodeState::Parked(_) => "parked",
    };
    NodeStatus {
        certname: info.certname.to_string(),
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
        code_version: None,
    }
}

/// A signed node that has sent no facts yet.
pub fn waiting_status(certname: &Certname, environment: &str) -> NodeStatus {
    NodeStatus {
        certname: certname.to_string(),
        environment: environment.to_string(),
        state: "waiting_for_facts".into(),
        reason: None,
        since: None,
        catalog_hash: None,
        catalog_changed_at: None,
        last_compile: None,
        failures: 0,
        last_error: None,
        fact_paths: None,
        code_version: None,
    }
}

/// The queue: the core's stats per lane and master, what runs.
pub fn queue_view(
    stats: &Stats,
    in_flight: Vec<RunningView>,
    masters: &[MasterSlot],
    waiting_for_facts: usize,
) -> QueueView {
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
        in_flight,
        blocked: stats.blocked.name().into(),
        cycle_time_seconds: stats.cycle_time.map(|d| d.as_secs_f64()),
        masters: masters
            .iter()
            .filter_map(|m| {
                let s = stats.masters.iter().find(|s| Some(s.id) == m.id())?;
                Some(MasterView {
                    name: m.name.clone(),
                    up: s.up,
                    in_flight: s.in_flight,
                    max_concurrency: s.max_concurrency,
                    load_per_core: s.load_per_core,
                    jrubies_free: s.pool_free,
                })
            })
            .collect(),
        waiting_for_facts,
        leader: None,
    }
}
