//! Masters: where compiles run.
//!
//! One shared queue feeds any number of masters; each has its own gate,
//! cores and load, and can be added, taken down (unreachable: no starts, its
//! running compiles may still finish) or removed (gone: its running compiles
//! go back to the front of the queue) while the core runs.

use super::config::MasterSpec;
use super::gate::Gate;
use super::time::Time;

/// A compile in flight on a master.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Running {
    pub node: u32,
    pub started: Time,
}

/// A master's state in the core.
#[derive(Clone, Debug)]
pub(crate) struct Master {
    pub spec: MasterSpec,
    pub gate: Gate,
    /// False while the driver reports it unreachable.
    pub up: bool,
    /// Compiles running here; at most a handful, so a Vec.
    pub running: Vec<Running>,
}

impl Master {
    pub fn new(spec: MasterSpec, now: Time) -> Master {
        Master {
            gate: Gate::new(spec.gate.clone(), spec.cores, now),
            spec,
            up: true,
            running: Vec::new(),
        }
    }

    pub fn start(&mut self, node: u32, now: Time) {
        self.running.push(Running { node, started: now });
        self.gate.on_start(now);
    }

    /// Forgets the compile of `node`; `None` if it was not running here.
    pub fn finish(&mut self, node: u32) -> Option<Running> {
        let at = self.running.iter().position(|r| r.node == node)?;
        let run = self.running.swap_remove(at);
        self.gate.on_finish(run.started);
        Some(run)
    }
}
