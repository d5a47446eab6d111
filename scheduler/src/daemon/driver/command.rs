//! The messages the driver takes, and the answers it gives.
//!
//! Every part of the daemon that needs the queue (the API, the CA poller,
//! the load sampler, the compile and analysis tasks, the signal handler)
//! sends one of these over the driver's channel; questions carry a
//! oneshot sender for the answer. Nothing else reaches the core.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::core::{Bumped, LoadSample, Stats, Time};
use crate::daemon::analyze::Analysis;
use crate::daemon::backend::puppetserver::GateStatus;
use crate::daemon::certname::Certname;
use crate::daemon::dependencies::{Dependencies, UsedHash};
use crate::daemon::facts::Ignore;
use crate::daemon::store::StoreError;

use super::compile::Compiled;
use super::links::Reloaded;
use super::view::{DeployReport, NodeStatus, QueueView};

/// Where the answer to a request goes.
pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// A facts upload, as the driver decides on it.
pub struct FactsUpload {
    /// The node.
    pub certname: Certname,
    /// `?environment=` of the upload, if given.
    pub environment: Option<String>,
    /// The facts' hash without ignored facts.
    pub hash: String,
    /// The hash of just the facts the node's catalog reads, if known.
    pub used: Option<UsedHash>,
}

impl FactsUpload {
    /// An upload of `values` for `certname`: the hashes of its relevant
    /// facts and of the facts its catalog uses.
    pub fn of(
        certname: Certname,
        environment: Option<String>,
        values: &serde_json::Map<String, serde_json::Value>,
        ignore: &Ignore,
        deps: &Dependencies,
    ) -> FactsUpload {
        let hash = ignore.relevant_hash(values);
        let used = deps.used_hash(&certname, values, &hash);
        FactsUpload {
            certname,
            environment,
            hash,
            used,
        }
    }
}

/// A request to the driver.
pub enum Command {
    /// A facts upload that passed the API's checks.
    Facts {
        /// The upload.
        upload: FactsUpload,
        /// The `values`, as JSON.
        values: Vec<u8>,
        /// The answer.
        reply: Reply<FactsOutcome>,
    },
    /// A facts upload a standby took: checked, not hashed (the standby
    /// hands it to the leader through the inbox as it came).
    HandIn {
        /// The node.
        certname: Certname,
        /// The environment it asked for.
        environment: Option<String>,
        /// The `values` object, as sent.
        values: Vec<u8>,
        /// The answer.
        reply: Reply<FactsOutcome>,
    },
    /// An upload's facts were committed to the store (or not).
    FactsStored {
        /// The upload.
        upload: FactsUpload,
        /// The previous facts hashed with the upload's used-facts set
        /// (when the node's set changed since its last upload).
        baseline: Option<u64>,
        /// The commit's result.
        result: Result<(), StoreError>,
        /// The answer to the upload.
        reply: Reply<FactsOutcome>,
    },
    /// An operator's bump.
    Bump {
        /// The node.
        certname: Certname,
        /// The answer.
        reply: Reply<Bumped>,
    },
    /// New code in an environment.
    Deploy {
        /// The environment.
        environment: String,
        /// Accepted even if pcq does not know the environment.
        new: bool,
        /// What the deploy moved and why, once the new code is analysed;
        /// an unknown environment without `new` is an error (a typo in a
        /// deploy hook must not pass unnoticed).
        reply: Reply<DeployReport>,
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
    /// The answer to a bump or deploy a standby handed in
    /// (`pcq_requests`), to be stored with the driver's next writes: after
    /// what the request changed, fenced like them.
    Answered {
        /// The request's row.
        id: i64,
        /// The answer, as JSON.
        answer: String,
    },
    /// Nodes' dependencies, worked out from their catalog files after an
    /// analysis; `done` names the environment whose reload this ends.
    Reloaded {
        /// The nodes.
        batch: Vec<Reloaded>,
        /// The last batch of this environment's reload.
        done: Option<String>,
    },
    /// Catalog files that disagree with their recorded hash, found by the
    /// check at start.
    CatalogsChecked(Vec<super::restore::Disagreement>),
    /// A probe found master `.0` answering again.
    MasterBack(usize),
    /// The start-time probe of a master failed: it is down until a probe
    /// finds it answering.
    MasterUnreachable {
        /// The master's index.
        m: usize,
        /// Why, with the cause (refused, TLS).
        why: String,
    },
    /// A load reading of this host.
    Load(LoadSample),
    /// A poll of a master's status API, for its gate.
    MasterStatus {
        /// The master's index.
        m: usize,
        /// What it said, or why it could not be read.
        reading: Result<GateStatus, String>,
        /// When the reading was asked for.
        asked: Time,
    },
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
    /// What this daemon saw since it started (`pcq site`).
    Site {
        /// The answer.
        reply: oneshot::Sender<crate::site::Site>,
    },
    /// The core's stats.
    Stats {
        /// The answer: the core's, and the nodes waiting for their first
        /// facts; `None` from a standby (no queue of its own).
        reply: oneshot::Sender<Option<(Stats, usize)>>,
    },
    /// Stop starting compiles; end when running ones are done or `grace`
    /// has passed.
    Shutdown {
        /// How long running compiles may take.
        grace: Duration,
    },
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

/// An API-level refusal. (Serialized when the leader answers a request
/// a standby handed in.)
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    /// The node is not known.
    #[error("unknown node {0}")]
    UnknownNode(String),
    /// A deploy of an environment pcq does not know.
    #[error("unknown environment {0}: no node is in it and the code directory has no such environment; announce a new one with `pcq deploy {0} --new` (\"new\": true)")]
    UnknownEnvironment(String),
    /// A bad request.
    #[error("{0}")]
    BadRequest(String),
    /// Something failed inside.
    #[error("{0}")]
    Internal(String),
    /// pcq is stopping.
    #[error("pcq is shutting down")]
    ShuttingDown,
    /// Too much at once (the store's queue is full): retry in a moment.
    #[error("{0}")]
    Busy(String),
}

impl ApiError {
    /// A facts upload from a certname `ca.exclude` names: refused by the
    /// leader and a standby alike, never acknowledged and then dropped.
    pub fn excluded(certname: &Certname) -> ApiError {
        ApiError::BadRequest(format!(
            "{certname} is excluded from scheduling (ca.exclude)"
        ))
    }
}
