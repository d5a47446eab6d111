//! A node's row as both stores keep it: the core's view spelled out in
//! plain columns (text for states and reasons, microseconds for times), so
//! that SQLite and PostgreSQL hold the same thing and a row is read back
//! the same way from either.

use crate::core::{BumpReason, Lane, MasterId, NodeId, NodeState, NodeView, Pending, Reason, Time};

use super::interface::{StoreError, StoredNode};

/// The columns of a node's row, as read.
pub struct NodeRow {
    pub certname: String,
    pub environment: String,
    pub state: String,
    pub reason: String,
    pub since_us: i64,
    pub pending: String,
    pub pending_since_us: i64,
    pub last_compile_us: Option<i64>,
    pub failures: i64,
    pub catalog_hash: Option<String>,
    pub catalog_changed_us: Option<i64>,
    pub facts_hash: Option<String>,
    pub last_error: Option<String>,
}

/// The columns every query of nodes selects, in [`NodeRow`]'s order.
pub const NODE_COLUMNS: &str = "certname, environment, state, reason, since_us, pending, \
     pending_since_us, last_compile_us, failures, catalog_hash, catalog_changed_us, facts_hash, \
     last_error";

/// A state's column text.
pub fn state_text(state: &NodeState) -> &'static str {
    match state {
        NodeState::Queued(Lane::Urgent) => "urgent",
        NodeState::Queued(Lane::Deploy) => "deploy",
        NodeState::Queued(Lane::Cycle) => "cycle",
        NodeState::Compiling(_) => "compiling",
        NodeState::Parked(_) => "parked",
    }
}

/// Pending work's column text.
pub fn pending_text(p: Pending) -> &'static str {
    match p {
        Pending::None => "none",
        Pending::Deploy => "deploy",
        Pending::Urgent(BumpReason::Facts) => "urgent:facts",
        Pending::Urgent(BumpReason::Exports) => "urgent:exports",
        Pending::Urgent(BumpReason::Manual) => "urgent:manual",
    }
}

fn pending_of(s: &str) -> Option<Pending> {
    Some(match s {
        "none" => Pending::None,
        "deploy" => Pending::Deploy,
        "urgent:facts" => Pending::Urgent(BumpReason::Facts),
        "urgent:exports" => Pending::Urgent(BumpReason::Exports),
        "urgent:manual" => Pending::Urgent(BumpReason::Manual),
        _ => return None,
    })
}

fn reason_of(s: &str) -> Option<Reason> {
    Reason::ALL.into_iter().find(|r| r.name() == s)
}

/// A time as a column.
pub fn micros(t: Time) -> i64 {
    i64::try_from(t.as_micros()).unwrap_or(i64::MAX)
}

/// A column as a time.
pub fn time(us: i64) -> Time {
    Time::from_micros(u64::try_from(us).unwrap_or(0))
}

impl NodeRow {
    /// The stored node this row holds; [`StoreError::Corrupt`] for a value
    /// no version of pcq writes.
    pub fn decode(self) -> Result<StoredNode, StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt {
            certname: self.certname.clone(),
            why: why.to_string(),
        };
        let since = time(self.since_us);
        let state = match self.state.as_str() {
            "urgent" => NodeState::Queued(Lane::Urgent),
            "deploy" => NodeState::Queued(Lane::Deploy),
            "cycle" => NodeState::Queued(Lane::Cycle),
            // the master id is meaningless after a restart: the core
            // requeues compiling nodes at the front
            "compiling" => NodeState::Compiling(MasterId::default()),
            "parked" => NodeState::Parked(since),
            _ => return Err(corrupt("unknown state")),
        };
        let view = NodeView {
            id: NodeId::from_index(0),
            state,
            environment: self.environment,
            reason: reason_of(&self.reason).ok_or_else(|| corrupt("unknown reason"))?,
            since,
            pending: pending_of(&self.pending).ok_or_else(|| corrupt("unknown pending"))?,
            pending_since: time(self.pending_since_us),
            last_compile: self.last_compile_us.map(time),
            failures: u16::try_from(self.failures).unwrap_or(u16::MAX),
        };
        Ok(StoredNode {
            certname: self.certname,
            view,
            catalog_hash: self.catalog_hash,
            catalog_changed_at: self.catalog_changed_us.map(time),
            facts_hash: self.facts_hash,
            last_error: self.last_error,
        })
    }
}
