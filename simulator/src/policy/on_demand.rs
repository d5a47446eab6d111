//! Puppet Server's on-demand model.
//!
//! Every agent run sends its facts and asks a master (chosen by a
//! least-connections load balancer) for a catalog. Each master has a pool of
//! `masters.slots` JRubies and a FIFO borrow queue (`pool`), which the
//! agents' file requests after their catalog wait in too. An agent waits at most
//! `agents.timeout` (`http_read_timeout`); past that its run fails, it tries
//! again at its next interval, and the master still compiles the abandoned
//! request when its turn comes. With `on_demand.max_queued_requests` a master
//! answers 503 once that many requests wait, and the agent retries after a
//! Retry-After drawn from `[0, max_retry_delay]`. A master that dies fails
//! every request it holds.

use std::time::Duration;

use rand::RngExt;
use scheduler::core::{CoreError, Time};

use super::description::{Description, Prose};
use super::model::Model;
use crate::engine::Event;
use crate::fleet::{move_changes, Change, Changes};
use crate::pool::Borrower;
use crate::scenario::Scenario;
use crate::world::{Deployed, World};

/// Puppet Server's on-demand compiles in the list of policies.
pub const DESCRIPTION: Description = Description {
    name: "on-demand",
    title: "Puppet on demand",
    prose: Prose {
        subject: "on-demand compiles",
        plural: true,
        short: "on demand",
    },
    dashed: true,
    // every agent run is a compile: the longer runs at a fleet size
    relative_cost: 1,
    node_interval: agent_interval,
    build,
};

fn agent_interval(scenario: &Scenario) -> Option<Duration> {
    scenario.agents.interval
}

fn build(_w: &mut World, _seed: u64) -> Result<Box<dyn Model>, CoreError> {
    // (the masters' pools are the world's)
    Ok(Box::new(OnDemandModel::default()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    Compiling,
    Done,
}

#[derive(Clone, Debug)]
struct Request {
    node: u32,
    issued: Time,
    included: Changes,
    phase: Phase,
    /// The agent gave up (timeout) or the request failed.
    abandoned: bool,
    /// Its timeout event has not fired yet (the id must not be reused).
    timer: bool,
}

/// The on-demand model's state.
#[derive(Default)]
pub struct OnDemandModel {
    requests: Vec<Request>,
    free: Vec<u32>,
    /// Catalog requests waiting for a JRuby, over all masters.
    queued: usize,
    waits: (u64, f64),
}

impl OnDemandModel {
    fn new_request(&mut self, node: u32, now: Time) -> u32 {
        let req = Request {
            node,
            issued: now,
            included: Changes::new(),
            phase: Phase::Waiting,
            abandoned: false,
            timer: true,
        };
        match self.free.pop() {
            Some(id) => {
                let r = &mut self.requests[id as usize];
                let mut buffer = std::mem::take(&mut r.included);
                buffer.clear();
                *r = Request {
                    included: buffer,
                    ..req
                };
                id
            }
            None => {
                self.requests.push(req);
                (self.requests.len() - 1) as u32
            }
        }
    }

    fn release_if_unused(&mut self, id: u32) {
        let r = &self.requests[id as usize];
        if r.phase == Phase::Done && !r.timer {
            self.free.push(id);
        }
    }

    /// Request `id` holds a JRuby of master `m`: its compile starts.
    fn start(&mut self, w: &mut World, m: u32, id: u32) {
        let r = &mut self.requests[id as usize];
        r.phase = Phase::Compiling;
        move_changes(&mut r.included, &mut w.nodes[r.node as usize].visible);
        let issued = r.issued;
        if w.metrics.counts(w.now) {
            self.waits.0 += 1;
            self.waits.1 += w.now.since(issued).as_secs_f64();
        }
        w.metrics.waited(issued, w.now);
        w.start_compile(m, id);
    }

    /// The agent's run is over without a catalog.
    fn fail(&mut self, w: &mut World, id: u32) {
        let r = &mut self.requests[id as usize];
        if !r.abandoned {
            r.abandoned = true;
            w.nodes[r.node as usize].busy = false;
        }
    }
}

impl Model for OnDemandModel {
    fn unused_facts_matter(&self, _scenario: &Scenario) -> bool {
        false // every run compiles anyway
    }

    fn run(&mut self, w: &mut World, node: u32) {
        let now = w.now;
        if w.nodes[node as usize].busy {
            return; // the previous run still waits for its catalog
        }
        if w.metrics.counts(now) {
            w.metrics.runs += 1;
        }
        w.metrics.cpu(now, w.scenario.agents.run_cpu.as_secs_f64());
        let n = &mut w.nodes[node as usize];
        move_changes(&mut n.visible, &mut n.unseen);

        let Some(m) = w.pick_master() else {
            if w.metrics.counts(now) {
                w.metrics.failures.errors += 1;
            }
            return;
        };
        let limit = w.scenario.on_demand.max_queued_requests;
        if limit > 0 && w.pools[m as usize].waiting() >= limit as usize {
            if w.metrics.counts(now) {
                w.metrics.failures.rejected += 1;
            }
            let delay =
                w.rng.lb.random::<f64>() * w.scenario.on_demand.max_retry_delay.as_secs_f64();
            let retry = now.plus(Duration::from_secs_f64(delay));
            if retry < w.nodes[node as usize].next_run {
                w.events.at(retry, Event::Retry(node));
            }
            return;
        }
        w.nodes[node as usize].busy = true;
        let id = self.new_request(node, now);
        w.events
            .at(now.plus(w.scenario.agents.timeout), Event::Timeout(id));
        if w.pools[m as usize].borrow(now, Borrower::Catalog(id)) {
            self.start(w, m, id);
        } else {
            self.queued += 1;
        }
    }

    fn fact_changed(&mut self, w: &mut World, node: u32, change: Option<Change>) {
        if let Some(c) = change {
            w.nodes[node as usize].unseen.push(c); // sent with the next run
        }
    }

    fn deployed(&mut self, _w: &mut World, _deployed: &Deployed) {}

    fn node_joined(&mut self, _w: &mut World, _node: u32) {}

    fn master_down(&mut self, w: &mut World, _m: u32, running: Vec<u32>, waiting: Vec<u32>) {
        let counts = w.metrics.counts(w.now);
        self.queued = self.queued.saturating_sub(waiting.len());
        for id in running {
            let r = &mut self.requests[id as usize];
            r.phase = Phase::Done;
            move_changes(&mut w.nodes[r.node as usize].visible, &mut r.included);
            if counts {
                w.metrics.compiles.total += 1;
                w.metrics.compiles.lost += 1;
                if !r.abandoned {
                    w.metrics.failures.errors += 1;
                }
            }
            self.fail(w, id);
            self.release_if_unused(id);
        }
        for id in waiting {
            let r = &mut self.requests[id as usize];
            r.phase = Phase::Done;
            if counts && !r.abandoned {
                w.metrics.failures.errors += 1;
            }
            self.fail(w, id);
            self.release_if_unused(id);
        }
    }

    fn master_up(&mut self, _w: &mut World, _m: u32) {}

    fn granted(&mut self, w: &mut World, m: u32, id: u32) {
        self.queued = self.queued.saturating_sub(1);
        self.start(w, m, id);
    }

    fn complete(&mut self, w: &mut World, _m: u32, id: u32, _started: Time) {
        let r = &mut self.requests[id as usize];
        r.phase = Phase::Done;
        let node = r.node;
        if r.abandoned {
            if w.metrics.counts(w.now) {
                w.metrics.compiles.total += 1;
                w.metrics.compiles.abandoned += 1;
            }
            move_changes(&mut w.nodes[node as usize].visible, &mut r.included);
        } else {
            let mut included = std::mem::take(&mut r.included);
            // what the agent waited: borrow queue plus compile
            w.metrics.latency(r.issued, w.now);
            w.nodes[node as usize].busy = false;
            w.delivered(node, &included);
            // the agent applies what it just received (its CPU is in run_cpu)
            w.apply(&included, Duration::ZERO);
            included.clear();
            self.requests[id as usize].included = included;
            w.fetch_files(node, w.scenario.files.per_agent_run());
        }
        self.release_if_unused(id);
    }

    fn timeout(&mut self, w: &mut World, id: u32) {
        let r = &mut self.requests[id as usize];
        r.timer = false;
        if r.phase != Phase::Done && !r.abandoned {
            if w.metrics.counts(w.now) {
                w.metrics.failures.timeouts += 1;
            }
            self.fail(w, id);
        }
        self.release_if_unused(id);
    }

    fn give_back(&mut self, w: &mut World) {
        for r in self.requests.iter_mut().filter(|r| r.phase != Phase::Done) {
            move_changes(&mut w.nodes[r.node as usize].visible, &mut r.included);
        }
    }

    fn sample(&mut self, w: &World) -> (f64, u64) {
        let mut oldest = 0.0f64;
        let mut waiting = 0;
        for pool in &w.pools {
            waiting += pool.waiting() as u64;
            if let Some(since) = pool.oldest() {
                oldest = oldest.max(w.now.since(since).as_secs_f64());
            }
        }
        (oldest, waiting)
    }

    fn urgent_depth(&self) -> usize {
        self.queued
    }

    fn urgent_waits(&self) -> Option<(u64, f64)> {
        Some(self.waits)
    }
}
