//! What the simulator knows about a policy besides its model: its names,
//! the words and lines the report gives it, how often its nodes contact the
//! masters, and how its model is built. Each policy's file fills in a
//! [`Description`]; the list in `policy` registers it.

use std::time::Duration;

use scheduler::core::CoreError;

use super::model::Model;
use crate::scenario::Scenario;
use crate::world::World;

/// A policy as the run, the plan, the report and the command line see it.
pub struct Description {
    /// On the command line (`--policy`), in JSON and in CSVs: `on-demand`.
    pub name: &'static str,
    /// Its heading in the report: `Puppet on demand`.
    pub title: &'static str,
    /// The words the report's verdict uses for it.
    pub prose: Prose,
    /// Drawn with dashed lines in the plots (solid otherwise).
    pub dashed: bool,
    /// How long its runs take against the other policies' at the same
    /// fleet size (higher: longer). A plan starts the costliest runs first,
    /// so that the slowest do not finish last, alone on one core.
    pub relative_cost: u8,
    /// How often each node contacts the masters under this policy (an
    /// agent run, or a sync); `None`: never.
    pub node_interval: fn(&Scenario) -> Option<Duration>,
    /// Builds the model over a world at time zero, with the run's seed.
    pub build: BuildModel,
}

/// Builds a policy's model over a world at time zero, with the run's seed;
/// fails only if the core refuses the scenario's configuration.
pub type BuildModel = fn(&mut World<'_>, u64) -> Result<Box<dyn Model>, CoreError>;

/// The words the report's verdict uses for a policy.
pub struct Prose {
    /// As the subject of a sentence: `the queue`, `on-demand compiles`.
    pub subject: &'static str,
    /// Whether `subject` takes a plural verb (`need`, not `needs`).
    pub plural: bool,
    /// Introducing its figures after those of the first policy: `on
    /// demand` (as in "; on demand with 3 master(s): ...").
    pub short: &'static str,
}

impl Prose {
    /// The verb `stem` (`need`, `meet`) agreeing with `subject`.
    pub fn verb(&self, stem: &str) -> String {
        if self.plural {
            stem.to_string()
        } else {
            format!("{stem}s")
        }
    }
}
