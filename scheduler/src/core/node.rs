//! Nodes: the one state each is in, and the table that holds them.
//!
//! A node is in exactly one state: queued in one lane, compiling, parked, or
//! gone. The table stores that as a single [`Slot`] byte per node, so "in two
//! states at once" cannot be written down. Lanes hold entries that point back
//! at the table; an entry is current only while its `ticket` matches the
//! node's, and the node's ticket moves on every time it leaves a lane. That
//! makes leaving a lane O(1) (no search inside the lane) and keeps a node from
//! ever being queued twice: a stale entry is skipped when it reaches the head.
//!
//! The table holds no names. Drivers map certnames to [`NodeId`]s; keeping
//! strings out keeps a node at a few dozen bytes and the hot paths free of
//! hashing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::id::{MasterId, NodeId};
use super::time::Time;

/// The queue lanes, in the order they are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// New nodes, used-fact changes, export changes, manual bumps, retries.
    Urgent,
    /// Nodes whose environment got new code, oldest catalog first.
    Deploy,
    /// The continuous round robin.
    Cycle,
}

impl Lane {
    /// All lanes in service order.
    pub const ALL: [Lane; 3] = [Lane::Urgent, Lane::Deploy, Lane::Cycle];

    /// Position in [`Lane::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name, for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Urgent => "urgent",
            Lane::Deploy => "deploy",
            Lane::Cycle => "cycle",
        }
    }
}

/// Why a node is queued, and so why its compile started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its certificate was just signed.
    New,
    /// A fact its catalog uses changed.
    Facts,
    /// An exported resource it collects changed.
    Exports,
    /// An operator asked.
    Manual,
    /// Its previous compile failed and the backoff is over.
    Retry,
    /// Its compile was interrupted (master lost, daemon restarted).
    Requeued,
    /// Its environment got new code.
    Deploy,
    /// Its turn in the continuous cycle.
    Cycle,
}

impl Reason {
    /// Every reason, in declaration order (index = `as usize`).
    pub const ALL: [Reason; 8] = [
        Reason::New,
        Reason::Facts,
        Reason::Exports,
        Reason::Manual,
        Reason::Retry,
        Reason::Requeued,
        Reason::Deploy,
        Reason::Cycle,
    ];

    /// Lower-case name, for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Facts => "facts",
            Reason::Exports => "exports",
            Reason::Manual => "manual",
            Reason::Retry => "retry",
            Reason::Requeued => "requeued",
            Reason::Deploy => "deploy",
            Reason::Cycle => "cycle",
        }
    }

    /// The lane a node queued for this reason waits in.
    pub fn lane(self) -> Lane {
        match self {
            Reason::Deploy => Lane::Deploy,
            Reason::Cycle => Lane::Cycle,
            _ => Lane::Urgent,
        }
    }
}

/// What a driver may bump a node for. (New nodes, retries and requeues are
/// the core's own business.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BumpReason {
    /// A fact the node's catalog uses changed.
    Facts,
    /// An exported resource the node collects changed.
    Exports,
    /// An operator asked. A manual bump also cuts a failed node's backoff
    /// short; the other reasons let the backoff run out first.
    Manual,
}

impl From<BumpReason> for Reason {
    fn from(b: BumpReason) -> Reason {
        match b {
            BumpReason::Facts => Reason::Facts,
            BumpReason::Exports => Reason::Exports,
            BumpReason::Manual => Reason::Manual,
        }
    }
}

/// What a compiling node must do when its compile ends, because something
/// happened while it ran (its compile may have read the old facts or code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pending {
    /// Nothing: back to the cycle lane.
    None,
    /// A deploy touched its environment: to the deploy lane.
    Deploy,
    /// A bump arrived: to the urgent lane.
    Urgent(BumpReason),
}

/// The state of a node as drivers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Waiting in a lane.
    Queued(Lane),
    /// A compile runs on this master.
    Compiling(MasterId),
    /// The last compile failed; waits out its backoff until this time.
    Parked(Time),
}

/// Everything the core knows of a node: what a store persists so that a new
/// core can be rebuilt with [`crate::core::Core::restore_node`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's id in this core.
    pub id: NodeId,
    /// Its one state.
    pub state: NodeState,
    /// Its environment's name.
    pub environment: String,
    /// Why it is queued or compiling.
    pub reason: Reason,
    /// Queued: since when it waits (for the cycle lane, since when it is
    /// due). Compiling: when the compile started. Parked: as `Parked`.
    pub since: Time,
    /// What it does when its running compile ends.
    pub pending: Pending,
    /// When a pending bump arrived (the earliest, if several).
    pub pending_since: Time,
    /// When its last successful compile finished.
    pub last_compile: Option<Time>,
    /// Consecutive failed compiles.
    pub failures: u16,
}

/// The one state of a table entry, in a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Slot {
    /// Unused id, on the free list.
    Free,
    /// Queued in the urgent lane.
    Urgent,
    /// Queued in the deploy lane.
    Deploy,
    /// Queued in the cycle lane.
    Cycle,
    /// Compiling on `master`.
    Compiling,
    /// Waiting out a backoff until `since`.
    Parked,
    /// Removed while compiling: gone for drivers, but the id stays taken
    /// until the compile's finish arrives, so it cannot be confused with a
    /// new node reusing the id.
    Removing,
}

impl Slot {
    pub(crate) fn lane(self) -> Option<Lane> {
        match self {
            Slot::Urgent => Some(Lane::Urgent),
            Slot::Deploy => Some(Lane::Deploy),
            Slot::Cycle => Some(Lane::Cycle),
            _ => None,
        }
    }
}

/// One node's record. Kept small: the core holds a million of them.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub slot: Slot,
    pub reason: Reason,
    pub pending: Pending,
    pub failures: u16,
    /// The master it compiles on, while `Compiling` or `Removing`.
    pub master: u16,
    /// Moves on whenever the node leaves a lane; see the module doc.
    pub ticket: u32,
    pub env: u32,
    /// Index of this node in its environment's member list.
    pub env_pos: u32,
    pub since: Time,
    pub pending_since: Time,
    pub last_compile: Option<Time>,
}

/// Environments, interned, with their member nodes (for deploys).
#[derive(Clone, Debug, Default)]
pub(crate) struct Environments {
    names: Vec<String>,
    by_name: BTreeMap<String, u32>,
    members: Vec<Vec<u32>>,
}

impl Environments {
    /// The id of `name`, interning it on first use.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.by_name.insert(name.to_owned(), id);
        self.members.push(Vec::new());
        id
    }

    pub fn lookup(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn members(&self, id: u32) -> &[u32] {
        self.members
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// The node records, indexed by id, with a free list for reuse.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeTable {
    pub nodes: Vec<Node>,
    free: Vec<u32>,
    live: usize,
    pub envs: Environments,
}

impl NodeTable {
    /// Takes an id for a node in `env`; the caller sets its slot.
    pub fn alloc(&mut self, env: &str) -> Option<u32> {
        let env = self.envs.intern(env);
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let id = u32::try_from(self.nodes.len()).ok()?;
                self.nodes.push(Node {
                    slot: Slot::Free,
                    reason: Reason::New,
                    pending: Pending::None,
                    failures: 0,
                    master: 0,
                    ticket: 0,
                    env: 0,
                    env_pos: 0,
                    since: Time::ZERO,
                    pending_since: Time::ZERO,
                    last_compile: None,
                });
                id
            }
        };
        let members = &mut self.envs.members[env as usize];
        let node = &mut self.nodes[id as usize];
        node.env = env;
        node.env_pos = members.len() as u32;
        node.pending = Pending::None;
        node.failures = 0;
        node.last_compile = None;
        members.push(id);
        self.live += 1;
        Some(id)
    }

    /// Gives the id back; it may be handed out again.
    pub fn release(&mut self, id: u32) {
        self.leave_env(id);
        let node = &mut self.nodes[id as usize];
        node.slot = Slot::Free;
        node.ticket = node.ticket.wrapping_add(1);
        self.free.push(id);
    }

    /// Takes the node out of its environment's member list and out of the
    /// live count; used on removal (even while its compile still runs).
    pub fn leave_env(&mut self, id: u32) {
        let node = &self.nodes[id as usize];
        if matches!(node.slot, Slot::Free | Slot::Removing) {
            return;
        }
        let (env, pos) = (node.env as usize, node.env_pos as usize);
        let members = &mut self.envs.members[env];
        members.swap_remove(pos);
        if let Some(&moved) = members.get(pos) {
            self.nodes[moved as usize].env_pos = pos as u32;
        }
        self.live -= 1;
    }

    /// Moves a node to another environment.
    pub fn set_env(&mut self, id: u32, env: &str) {
        let new_env = self.envs.intern(env);
        if self.nodes[id as usize].env == new_env {
            return;
        }
        self.leave_env(id);
        let members = &mut self.envs.members[new_env as usize];
        let node = &mut self.nodes[id as usize];
        node.env = new_env;
        node.env_pos = members.len() as u32;
        members.push(id);
        self.live += 1;
    }

    /// The node if the id names a live one (not free, not being removed).
    pub fn live(&self, id: NodeId) -> Option<&Node> {
        self.nodes
            .get(id.index())
            .filter(|n| !matches!(n.slot, Slot::Free | Slot::Removing))
    }

    /// Live nodes.
    pub fn count(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_record_stays_small() {
        assert!(
            std::mem::size_of::<Node>() <= 56,
            "Node grew to {} bytes",
            std::mem::size_of::<Node>()
        );
    }

    #[test]
    fn environments_track_members_through_moves_and_releases() {
        let mut t = NodeTable::default();
        let a = t.alloc("production").expect("id");
        let b = t.alloc("production").expect("id");
        let c = t.alloc("staging").expect("id");
        for id in [a, b, c] {
            t.nodes[id as usize].slot = Slot::Cycle;
        }
        let prod = t.envs.lookup("production").expect("interned");
        assert_eq!(t.envs.members(prod), &[a, b]);
        t.set_env(a, "staging");
        assert_eq!(t.envs.members(prod), &[b]);
        let staging = t.envs.lookup("staging").expect("interned");
        assert_eq!(t.envs.members(staging), &[c, a]);
        t.release(c);
        assert_eq!(t.envs.members(staging), &[a]);
        assert_eq!(t.nodes[a as usize].env_pos, 0);
        assert_eq!(t.count(), 2);
        // the freed id comes back
        assert_eq!(t.alloc("production"), Some(c));
    }
}
