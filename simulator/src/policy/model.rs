//! How a policy reacts to the world: the [`Model`] trait each policy
//! implements, called by the run loop after the world's part of each event.

use scheduler::core::Time;

use crate::fleet::Change;
use crate::scenario::Scenario;
use crate::world::{Deployed, World};

/// How a policy reacts to what happens in the world. Every method gets the
/// world with its clock at the event's time.
pub trait Model {
    /// Does the stream of unused-fact changes change anything under this
    /// policy? (If not, the world does not simulate it, only counts it.)
    fn unused_facts_matter(&self, scenario: &Scenario) -> bool;
    /// Does this policy read the masters' load averages? (If not, the
    /// world does not tick them.)
    fn load_matters(&self, _scenario: &Scenario) -> bool {
        false
    }
    /// A node's agent run (on demand) or sync (queue), or a retry.
    fn run(&mut self, w: &mut World, node: u32);
    /// A fact changed on `node`: `Some` if the catalog uses it (possibly an
    /// export), `None` if not.
    fn fact_changed(&mut self, w: &mut World, node: u32, change: Option<Change>);
    /// New code; the affected nodes already got a visible change.
    fn deployed(&mut self, w: &mut World, deployed: &Deployed);
    /// A node's certificate was signed; it has a visible change (its first
    /// catalog).
    fn node_joined(&mut self, w: &mut World, node: u32);
    /// Master `m` died; `running` are the compiles that were running on
    /// it, `waiting` those that waited for one of its JRubies.
    fn master_down(&mut self, w: &mut World, m: u32, running: Vec<u32>, waiting: Vec<u32>);
    /// The compile `key` waited for a JRuby of master `m` and got one.
    fn granted(&mut self, w: &mut World, m: u32, key: u32);
    /// Master `m` is back.
    fn master_up(&mut self, w: &mut World, m: u32);
    /// The compile `key` on master `m`, started at `started`, completed.
    fn complete(&mut self, w: &mut World, m: u32, key: u32, started: Time);
    /// On demand: request `key`'s agent reached its timeout.
    fn timeout(&mut self, _w: &mut World, _key: u32) {}
    /// The masters' load averages were updated.
    fn load_tick(&mut self, _w: &mut World) {}
    /// Queue: the core's wakeup time came.
    fn wakeup(&mut self, _w: &mut World) {}
    /// Queue: a node was notified of its changed catalog.
    fn notify(&mut self, _w: &mut World, _node: u32) {}
    /// After each event: start what may start.
    fn settle(&mut self, _w: &mut World) {}
    /// The run is over: give the changes held by compiles still in flight
    /// back to their nodes (stage 2), so they count as not yet compiled.
    fn give_back(&mut self, _w: &mut World) {}
    /// (oldest queued age in seconds, jobs waiting) now.
    fn sample(&mut self, w: &World) -> (f64, u64);
    /// Jobs waiting in the queue Little's law is checked on.
    fn urgent_depth(&self) -> usize;
    /// (jobs that left that queue after warm-up, sum of their waits).
    fn urgent_waits(&self) -> Option<(u64, f64)>;
}
