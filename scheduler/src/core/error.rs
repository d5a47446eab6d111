//! Errors of the core.
//!
//! The core never panics on input: a call naming a node or master that does
//! not exist, or a finish that does not match a running compile, is refused
//! with an error and changes nothing. Drivers log these; they are bugs or
//! races on the driver's side (a late finish after a master was removed), not
//! reasons to stop.

use thiserror::Error;

use super::id::{MasterId, NodeId};

/// A call the core refused. The core's state is unchanged.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// No live node has this id.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// No master has this id (never added, or removed).
    #[error("unknown master {0}")]
    UnknownMaster(MasterId),
    /// A finish for a node that is not compiling on that master; typically a
    /// late answer from a master that was removed meanwhile.
    #[error("node {node} is not compiling on master {master}")]
    NotCompiling {
        /// The node named in the finish.
        node: NodeId,
        /// The master named in the finish.
        master: MasterId,
    },
    /// The id space is used up (2^32 nodes or 2^16 masters).
    #[error("no free {0} id left")]
    Exhausted(&'static str),
    /// A configuration the core cannot run with.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A configuration value out of range; `field` is its dotted path.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `lanes.cycle.min_share`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}
