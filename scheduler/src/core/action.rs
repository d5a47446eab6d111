//! What passes between the core and its driver.
//!
//! Inputs are method calls on [`crate::core::Core`] carrying `now`; the core
//! answers with these values. The one action the core takes on its own is
//! starting a compile ([`Poll::Start`]); the driver runs it and reports its
//! [`Outcome`] back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::gate::Blocked;
use super::id::{MasterId, NodeId};
use super::node::{Lane, NodeState, Reason};
use super::time::Time;

/// The answer to [`crate::core::Core::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Poll {
    /// Start this compile now.
    Start(Start),
    /// Nothing may start now, for this reason. Poll again after the next
    /// input or at [`crate::core::Core::next_wakeup`].
    Idle(Blocked),
}

/// A compile to run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// The node to compile.
    pub node: NodeId,
    /// The master to compile it on.
    pub master: MasterId,
    /// Why it was queued.
    pub reason: Reason,
    /// The lane it came from.
    pub lane: Lane,
    /// How long it waited in that lane (for the cycle lane: since it was due).
    pub waited: Duration,
    /// When the driver must give up on it and report [`Outcome::TimedOut`].
    pub deadline: Time,
}

/// How a compile ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A catalog differing from the last good one.
    Changed,
    /// The same catalog as last time (a compile the node did not need).
    Unchanged,
    /// The compile failed (an error in the code, a failing function).
    Failed,
    /// The compile passed its deadline.
    TimedOut,
    /// The compile did not happen through no fault of the node (its master
    /// was unreachable or answered 503): the node goes back to the front of
    /// the queue, without a failure or a backoff.
    Interrupted,
    /// The compile could not get its input (the node's facts unreadable,
    /// its certificate missing at the CA): no catalog, and not the node's
    /// fault; it waits one backoff step (without counting a failure) and
    /// retries, so a broken input does not spin a slot.
    Deferred,
}

impl Outcome {
    /// Every outcome, in order (index = `as usize`).
    pub const ALL: [Outcome; 6] = [
        Outcome::Changed,
        Outcome::Unchanged,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::Interrupted,
        Outcome::Deferred,
    ];

    /// Lower-case name, for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Changed => "changed",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Interrupted => "interrupted",
            Outcome::Deferred => "deferred",
        }
    }

    /// Did it produce a catalog?
    pub fn succeeded(self) -> bool {
        matches!(self, Outcome::Changed | Outcome::Unchanged)
    }
}

/// What a bump did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bumped {
    /// Moved to the urgent lane.
    Queued,
    /// Already in the urgent lane; it keeps its place.
    AlreadyUrgent,
    /// Compiling: it goes to the urgent lane when the compile ends.
    AfterCompile,
    /// Waiting out a backoff; it goes to the urgent lane when that ends.
    AfterBackoff,
    /// Compiled less than `min_urgent_interval` ago: held (shown as parked)
    /// until the interval has passed, then it goes to the urgent lane;
    /// further bumps meanwhile merge into that one compile.
    Held,
}

/// What a finish did with the node.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Finished {
    /// The node's state after the compile.
    Next(NodeState),
    /// The node had been removed during the compile; its id is free now.
    Released,
}
