//! The handles drivers hold for nodes and masters.
//!
//! Ids live apart from the tables that hand them out so that every part of
//! the core (errors, actions, stats, the tables themselves) can name them
//! without importing one another.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's handle in the core. Ids of removed nodes are reused once nothing
/// refers to them any more (no compile of theirs is still running).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub(crate) u32);

impl NodeId {
    /// The id as an index, for drivers that keep per-node arrays.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The id for an index; only ids the core handed out mean anything.
    pub fn from_index(index: u32) -> NodeId {
        NodeId(index)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A master's handle. Ids are never reused, so a late finish from a removed
/// master cannot be mistaken for one from a new master.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MasterId(pub(crate) u16);

impl MasterId {
    /// The id as an index, for drivers that keep per-master arrays.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for MasterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}
