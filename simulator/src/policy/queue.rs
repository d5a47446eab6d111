//! pcq's queue model: `scheduler::core`, unchanged, in virtual time.
//!
//! This is the same code the daemon runs. The simulator is only its driver:
//! it turns the world's events into core inputs (bumps for used-fact and
//! export changes, deploys, new nodes, masters lost and added, load
//! readings), starts whatever [`Core::poll`] says on the simulated masters,
//! and reports each compile's outcome back with [`Core::finish`]. Nodes
//! `pcq sync` from cron: they upload facts that matter, and apply a cached
//! catalog only when it changed (or right away when notified).

use std::collections::HashSet;

use scheduler::core::{
    BumpReason, Core, CoreError, Lane, LoadSample, MasterId, MasterSpec, NodeId, NodeState,
    NodeView, Outcome, Pending, Poll, Reason, Time,
};

use rand::RngExt;

use super::description::{Description, Prose};
use super::model::Model;
use crate::engine::Event;
use crate::fleet::{move_changes, Change};
use crate::pool::Borrower;
use crate::scenario::{FactUpload, Scenario};
use crate::world::{Deployed, World};

/// pcq's queue in the list of policies.
pub const DESCRIPTION: Description = Description {
    name: "queue",
    title: "pcq queue",
    prose: Prose {
        subject: "the queue",
        plural: false,
        short: "the queue",
    },
    dashed: false,
    relative_cost: 0,
    node_interval: Scenario::sync_interval,
    build,
};

fn build(w: &mut World, seed: u64) -> Result<Box<dyn Model>, CoreError> {
    Ok(Box::new(QueueModel::new(w, seed)?))
}

/// The queue model's state.
pub struct QueueModel {
    core: Core,
    spec: MasterSpec,
    /// Sim node -> core node.
    core_node: Vec<Option<NodeId>>,
    /// Core node index -> sim node.
    sim_node: Vec<u32>,
    /// Sim master -> core master (None while it is away).
    core_master: Vec<Option<MasterId>>,
    /// Core master index -> sim master.
    sim_master: Vec<u32>,
    wakeup: Option<Time>,
    /// Something changed in the core since the last poll.
    dirty: bool,
    fact_filter: bool,
    narrow_deploys: bool,
    immediate: bool,
    /// Urgent-lane starts after warm-up and the sum of their waits.
    urgent_waits: (u64, f64),
}

impl QueueModel {
    /// Builds the core with the world's masters and initial nodes, every
    /// node holding a catalog already and waiting in the cycle lane (a
    /// fleet in steady state, not one being born).
    pub fn new(w: &mut World, seed: u64) -> Result<QueueModel, CoreError> {
        let s = w.scenario;
        let config = s.queue_core();
        // the gate's cores are the machine's (load counts runnable
        // processes); a measured parallelism below them rounds up
        let spec = MasterSpec::new(s.masters.cores.ceil() as u32, config.gate.clone());
        let interval = config.min_cycle_interval;
        let core = Core::new(config, seed)?;
        let mut model = QueueModel {
            core,
            spec,
            core_node: vec![None; w.nodes.len()],
            sim_node: Vec::with_capacity(w.nodes.len()),
            core_master: Vec::new(),
            sim_master: Vec::new(),
            wakeup: None,
            dirty: true,
            fact_filter: s.queue.fact_filter,
            narrow_deploys: s.queue.narrow_deploys,
            immediate: s.queue.fact_upload == FactUpload::Immediate,
            urgent_waits: (0, 0.0),
        };
        for m in 0..w.masters.len() as u32 {
            model.add_master(m);
        }
        for n in 0..w.initial_nodes {
            let due = match interval {
                None => Time::NEVER,
                Some(i) if i.is_zero() => Time::ZERO,
                Some(i) => Time::from_secs_f64(w.rng.agents.random::<f64>() * i.as_secs_f64()),
            };
            let view = NodeView {
                id: NodeId::from_index(0),
                state: NodeState::Queued(Lane::Cycle),
                environment: s.fleet.environments[usize::from(w.nodes[n as usize].env)].clone(),
                reason: Reason::Cycle,
                since: due,
                pending: Pending::None,
                pending_since: Time::ZERO,
                // (the compile before would lie before time zero; without
                // one the core keeps `since` as the due time, the phase)
                last_compile: None,
                failures: 0,
            };
            let id = model.core.restore_node(&view)?;
            model.map_node(n, id);
        }
        Ok(model)
    }

    fn map_node(&mut self, sim: u32, id: NodeId) {
        self.core_node[sim as usize] = Some(id);
        if self.sim_node.len() <= id.index() {
            self.sim_node.resize(id.index() + 1, u32::MAX);
        }
        self.sim_node[id.index()] = sim;
    }

    fn add_master(&mut self, m: u32) {
        if let Ok(id) = self.core.add_master(Time::ZERO, self.spec.clone()) {
            if self.core_master.len() <= m as usize {
                self.core_master.resize(m as usize + 1, None);
            }
            self.core_master[m as usize] = Some(id);
            if self.sim_master.len() <= id.index() {
                self.sim_master.resize(id.index() + 1, u32::MAX);
            }
            self.sim_master[id.index()] = m;
            self.dirty = true;
        }
    }

    fn bump(&mut self, w: &World, node: u32, why: BumpReason) {
        if let Some(id) = self.core_node[node as usize] {
            let _ = self.core.bump(w.now, id, why);
            self.dirty = true;
        }
    }

    /// Sends a node's facts: pending used changes become visible and bump
    /// it; a pending unused change bumps it only without fact filtering.
    fn upload(&mut self, w: &mut World, node: u32) {
        let n = &mut w.nodes[node as usize];
        let mut bump = false;
        if !n.unseen.is_empty() {
            move_changes(&mut n.visible, &mut n.unseen);
            bump = true;
        }
        if n.unused_dirty {
            n.unused_dirty = false;
            bump |= !self.fact_filter;
        }
        if bump {
            self.bump(w, node, BumpReason::Facts);
        }
    }

    fn apply_if_changed(&mut self, w: &mut World, node: u32) {
        if w.nodes[node as usize].compiled.is_empty() {
            return;
        }
        let mut compiled = std::mem::take(&mut w.nodes[node as usize].compiled);
        w.apply(&compiled, w.scenario.agents.apply_cpu);
        compiled.clear();
        w.nodes[node as usize].compiled = compiled;
        // a cached catalog's apply fetches its files (no pluginsync)
        w.fetch_files(node, w.scenario.files.per_apply);
    }
}

impl Model for QueueModel {
    fn unused_facts_matter(&self, scenario: &Scenario) -> bool {
        !scenario.queue.fact_filter
    }

    fn load_matters(&self, scenario: &Scenario) -> bool {
        scenario.queue.core.gate.max_load_per_core > 0.0 // the load gate is on
    }

    fn run(&mut self, w: &mut World, node: u32) {
        if w.metrics.counts(w.now) {
            w.metrics.runs += 1;
        }
        w.metrics
            .cpu(w.now, w.scenario.agents.sync_cpu.as_secs_f64());
        if !self.immediate {
            self.upload(w, node);
        }
        self.apply_if_changed(w, node);
    }

    fn fact_changed(&mut self, w: &mut World, node: u32, change: Option<Change>) {
        let n = &mut w.nodes[node as usize];
        match change {
            Some(c) => n.unseen.push(c),
            None => n.unused_dirty = true,
        }
        if self.immediate {
            self.upload(w, node);
        }
    }

    fn deployed(&mut self, w: &mut World, deployed: &Deployed) {
        let env = &w.scenario.fleet.environments[deployed.env];
        if self.narrow_deploys && !deployed.unbounded {
            // the nodes whose catalogs reach the change: the affected ones
            let moves: HashSet<NodeId> = deployed
                .affected
                .iter()
                .filter_map(|&n| self.core_node[n as usize])
                .collect();
            self.core.deploy_to(w.now, env, |id| moves.contains(&id));
        } else {
            self.core.deploy(w.now, env);
        }
        self.dirty = true;
    }

    fn node_joined(&mut self, w: &mut World, node: u32) {
        let env = &w.scenario.fleet.environments[usize::from(w.nodes[node as usize].env)];
        if let Ok(id) = self.core.add_node(w.now, env) {
            self.map_node(node, id);
            self.dirty = true;
        }
    }

    fn master_down(&mut self, w: &mut World, m: u32, running: Vec<u32>, waiting: Vec<u32>) {
        let counts = w.metrics.counts(w.now);
        // (a compile still waiting for a JRuby is as lost as a running one:
        // the core counts both as running on that master)
        for node in running.into_iter().chain(waiting) {
            let n = &mut w.nodes[node as usize];
            move_changes(&mut n.visible, &mut n.included);
            if counts {
                w.metrics.compiles.total += 1;
                w.metrics.compiles.lost += 1;
            }
        }
        if let Some(id) = self.core_master[m as usize].take() {
            let _ = self.core.remove_master(w.now, id);
            self.dirty = true;
        }
    }

    fn master_up(&mut self, _w: &mut World, m: u32) {
        self.add_master(m);
    }

    fn granted(&mut self, w: &mut World, m: u32, node: u32) {
        w.start_compile(m, node);
    }

    fn complete(&mut self, w: &mut World, m: u32, node: u32, started: Time) {
        // compile start to catalog ready: the node's catalog waits for no
        // agent, it is stored for the next sync
        w.metrics.latency(started, w.now);
        let mut included = std::mem::take(&mut w.nodes[node as usize].included);
        let (changed, collectors) = w.delivered(node, &included);
        if let (Some(id), Some(master)) =
            (self.core_node[node as usize], self.core_master[m as usize])
        {
            let outcome = if changed {
                Outcome::Changed
            } else {
                Outcome::Unchanged
            };
            let _ = self.core.finish(w.now, id, master, outcome);
            self.dirty = true;
        }
        move_changes(&mut w.nodes[node as usize].compiled, &mut included);
        w.nodes[node as usize].included = included;
        if changed && w.scenario.queue.notify {
            w.events.at(
                w.now.plus(w.scenario.queue.notify_delay),
                Event::Notify(node),
            );
        }
        if let Some(collectors) = collectors {
            if w.scenario.queue.bump_collectors {
                for c in collectors {
                    if w.nodes[c as usize].alive {
                        self.bump(w, c, BumpReason::Exports);
                    }
                }
            }
        }
    }

    /// The readings `pcq serve` takes of each master: its load, and its
    /// status API's free JRubies less the reserve for files (read here at
    /// the load tick; the daemon reads the status every 2 s by default).
    fn load_tick(&mut self, w: &mut World) {
        let reserve = w.scenario.queue.reserve_for_files;
        for (m, sim) in w.masters.iter().enumerate() {
            if let Some(id) = self.core_master.get(m).copied().flatten() {
                let sample = LoadSample {
                    load1: sim.load1,
                    runnable: Some(sim.runnable()),
                };
                let _ = self.core.report_load(w.now, id, sample);
                let free = w.pools[m].free().saturating_sub(reserve);
                let _ = self.core.report_pool(w.now, id, Some(free), w.now);
            }
        }
        self.dirty = true;
    }

    fn wakeup(&mut self, w: &mut World) {
        if self.wakeup.is_some_and(|t| t <= w.now) {
            self.wakeup = None;
        }
        self.dirty = true;
    }

    fn notify(&mut self, w: &mut World, node: u32) {
        self.apply_if_changed(w, node);
    }

    fn settle(&mut self, w: &mut World) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let now = w.now;
        while let Poll::Start(start) = self.core.poll(now) {
            let node = self.sim_node[start.node.index()];
            let m = self.sim_master[start.master.index()];
            let n = &mut w.nodes[node as usize];
            move_changes(&mut n.included, &mut n.visible);
            if start.lane != Lane::Cycle {
                let since = Time::from_micros(
                    now.as_micros()
                        .saturating_sub(start.waited.as_micros() as u64),
                );
                w.metrics.waited(since, now);
                if start.lane == Lane::Urgent && w.metrics.counts(now) {
                    self.urgent_waits.0 += 1;
                    self.urgent_waits.1 += start.waited.as_secs_f64();
                }
            }
            // the compile asks the master for a catalog: it borrows a
            // JRuby, and waits if file requests hold them all
            if w.pools[m as usize].borrow(now, Borrower::Catalog(node)) {
                w.start_compile(m, node);
            }
        }
        if let Some(t) = self.core.next_wakeup() {
            if self.wakeup.is_none_or(|w| t < w) {
                self.wakeup = Some(t);
                w.events.at(t, Event::Wakeup);
            }
        }
    }

    fn sample(&mut self, w: &World) -> (f64, u64) {
        let stats = self.core.stats(w.now);
        let waiting = stats.lane(Lane::Urgent).depth + stats.lane(Lane::Deploy).depth;
        (stats.oldest_age().as_secs_f64(), waiting as u64)
    }

    fn urgent_depth(&self) -> usize {
        self.core.lane_depths()[Lane::Urgent.index()]
    }

    fn urgent_waits(&self) -> Option<(u64, f64)> {
        Some(self.urgent_waits)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::scenario::Scenario;

    /// One master of 3 JRubies, one of them left to files; nodes due at
    /// once; no load gate.
    const SCENARIO: &str = r#"
name = "pool"
duration = "1h"
[fleet]
nodes = 10
[agents]
interval = "30m"
[compile]
distribution = "constant"
mean = "10s"
[masters]
count = 1
slots = 3
cores = 4
[queue]
reserve_for_files = 1
[queue.core]
min_cycle_interval = "0s"
[queue.core.gate]
max_load_per_core = 0.0
"#;

    #[test]
    fn starts_nothing_while_other_requests_hold_the_pool_and_resumes_when_it_frees() {
        let s =
            Scenario::parse(SCENARIO, Path::new("pool.toml"), Path::new(".")).expect("scenario");
        let mut w = World::new(&s, 1, 10, 7, None);
        let mut q = QueueModel::new(&mut w, 7).expect("model");
        // agents' file requests hold every JRuby when the status is read
        for n in 0..3 {
            assert!(w.pools[0].borrow(w.now, Borrower::File(n)));
        }
        q.load_tick(&mut w);
        q.settle(&mut w);
        assert_eq!(q.core.stats(w.now).in_flight, 0, "no start on a full pool");
        assert_eq!(w.pools[0].waiting(), 0, "no compile waits behind files");
        // two come back: one is free for pcq beside the reserve
        w.pools[0].release();
        w.pools[0].release();
        q.load_tick(&mut w);
        q.settle(&mut w);
        assert_eq!(q.core.stats(w.now).in_flight, 1);
        assert_eq!(w.pools[0].waiting(), 0);
        // the last one back: pcq takes its second (max_concurrency 2)
        w.pools[0].release();
        q.load_tick(&mut w);
        q.settle(&mut w);
        assert_eq!(q.core.stats(w.now).in_flight, 2);
        assert_eq!(w.pools[0].free(), 1, "the reserve stays free");
    }
}
