//! The simulated nodes and what each one's catalog is missing.
//!
//! Staleness is the product's promise, so the simulator follows every change
//! that affects a node's catalog (a used fact, an export it collects, a
//! deploy, its first catalog) through three stages:
//!
//! 1. **unseen**: it happened on the node, the compiler cannot see it yet
//!    (facts not uploaded);
//! 2. **visible**: a compile starting now would include it;
//! 3. **compiled**: a compiled catalog includes it, the node has not
//!    applied that catalog yet (queue model; on demand the agent applies
//!    right after its compile).
//!
//! A compile takes every visible change when it starts; a compile that is
//! lost (agent gave up, master died) gives them back.

use scheduler::core::Time;
use smallvec::SmallVec;

/// The changes of one stage. Almost always zero or one, so they live inline
/// in the node: moving a change between stages allocates nothing.
pub type Changes = SmallVec<[Change; 2]>;

/// A change that affects a node's catalog: when it happened, and whether it
/// changes the node's exported resources (then the collectors' catalogs
/// change once this node's catalog is compiled). Packed in 8 bytes, the
/// top bit for the export flag, so two fit inline in a node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change(u64);

impl Change {
    const EXPORT: u64 = 1 << 63;

    /// A change at `at`.
    pub fn new(at: Time, export: bool) -> Change {
        let at = at.as_micros().min(Change::EXPORT - 1);
        Change(if export { at | Change::EXPORT } else { at })
    }

    /// When it happened.
    pub fn at(self) -> Time {
        Time::from_micros(self.0 & !Change::EXPORT)
    }

    /// Does it change the node's exports?
    pub fn export(self) -> bool {
        self.0 & Change::EXPORT != 0
    }
}

/// Moves every change of `from` to the end of `to` (cheaper than
/// `SmallVec::append` for the usual zero or one).
pub fn move_changes(to: &mut Changes, from: &mut Changes) {
    if from.is_empty() {
        return;
    }
    for c in from.drain(..) {
        to.push(c);
    }
}

/// One node.
#[derive(Clone, Debug, Default)]
pub struct SimNode {
    /// Index into the scenario's environments.
    pub env: u16,
    /// Its certificate is signed (herd nodes join later).
    pub alive: bool,
    /// Stage 1.
    pub unseen: Changes,
    /// Stage 2.
    pub visible: Changes,
    /// Stage 3.
    pub compiled: Changes,
    /// Queue model: the changes its running compile includes (stage 2
    /// taken at the compile's start). Buffers keep their capacity: the
    /// simulator moves changes between them instead of allocating.
    pub included: Changes,
    /// An unused fact changed since the last upload (matters only when the
    /// queue model runs without fact filtering).
    pub unused_dirty: bool,
    /// When its next agent run or sync is due; an event for another time
    /// is stale (the run was rescheduled).
    pub next_run: Time,
    /// On demand: a run is waiting for its catalog.
    pub busy: bool,
}

/// The fleet: initial nodes, then room for every node herds will add.
pub fn build(initial: u32, capacity: u32, environments: usize) -> Vec<SimNode> {
    let envs = environments.max(1);
    (0..capacity)
        .map(|i| SimNode {
            env: (i as usize % envs) as u16,
            alive: i < initial,
            ..SimNode::default()
        })
        .collect()
}
