//! The scheduling core: one deterministic state machine, no I/O.
//!
//! Both programs of the project drive this very code: the daemon `pcq` in
//! real time on tokio, the simulator `pcq-sim` in virtual time. It follows
//! the sans-IO style of `quinn-proto`:
//!
//! - there is no clock: every call carries `now` as a [`Time`] value (a
//!   `now` earlier than one already seen is taken as the latest seen);
//! - there is no I/O, no thread and no async: inputs are method calls
//!   ([`Core::add_node`], [`Core::bump`], [`Core::deploy`], [`Core::finish`],
//!   [`Core::report_load`], ...), the one action is a compile to start,
//!   drained with [`Core::poll`], and [`Core::next_wakeup`] says when to
//!   poll again if no input arrives;
//! - randomness (backoff jitter) comes from a ChaCha RNG seeded by the
//!   caller, so the same seed and inputs give the same actions, byte for
//!   byte.
//!
//! # What it keeps true
//!
//! Every node is in exactly one state: queued in one lane, compiling on one
//! master, or parked after a failure (or gone). Lanes are served urgent, then
//! deploy, then cycle, with the starvation bounds of [`starvation`]; a
//! master starts a compile only when its [`gate`] allows. [`Core::audit`]
//! checks all of this on a live core; ARCHITECTURE.md lists where each rule
//! is tested.

mod action;
mod backoff;
mod config;
mod error;
mod gate;
mod id;
mod lane;
mod master;
mod node;
mod starvation;
mod stats;
mod time;

use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use action::{Bumped, Finished, Outcome, Poll, Start};
pub use config::{
    off_or_duration, BackoffConfig, CoreConfig, GateConfig, LaneBound, LanesConfig, MasterSpec,
};
pub use error::{ConfigError, CoreError};
pub use gate::{Blocked, LoadSample};
pub use id::{MasterId, NodeId};
pub use node::{BumpReason, Lane, NodeState, NodeView, Pending, Reason};
pub use stats::{LaneStats, MasterStats, Stats};
pub use time::Time;

use lane::{keys, CycleLane, Entry, KeyedLane};
use master::Master;
use node::{NodeTable, Slot};
use starvation::Chooser;
use stats::Throughput;

/// Rank in the urgent lane of compiles that were interrupted: before all.
const RANK_FRONT: u8 = 0;
/// Rank in the urgent lane of everything else.
const RANK_NORMAL: u8 = 1;

/// The scheduling state machine. See the module documentation.
#[derive(Clone, Debug)]
pub struct Core {
    config: CoreConfig,
    nodes: NodeTable,
    urgent: KeyedLane<keys::Urgent>,
    deploy: KeyedLane<keys::Deploy>,
    cycle: CycleLane,
    parked: KeyedLane<keys::Parked>,
    masters: Vec<Option<Master>>,
    chooser: Chooser,
    /// Orders entries that share a time: first come, first served.
    seq: u64,
    now: Time,
    rng: ChaCha8Rng,
    starts: [u64; 8],
    finishes: [u64; Outcome::ALL.len()],
    throughput: Throughput,
    blocked: Blocked,
}

impl Core {
    /// A core with no nodes and no masters. Fails if the configuration does
    /// not validate. `seed` seeds the backoff jitter.
    pub fn new(config: CoreConfig, seed: u64) -> Result<Core, CoreError> {
        config.validate()?;
        Ok(Core {
            config,
            nodes: NodeTable::default(),
            urgent: KeyedLane::default(),
            deploy: KeyedLane::default(),
            cycle: CycleLane::default(),
            parked: KeyedLane::default(),
            masters: Vec::new(),
            chooser: Chooser::default(),
            seq: 0,
            now: Time::ZERO,
            rng: ChaCha8Rng::seed_from_u64(seed),
            starts: [0; 8],
            finishes: [0; Outcome::ALL.len()],
            throughput: Throughput::new(),
            blocked: Blocked::Empty,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The latest time the core has seen.
    pub fn now(&self) -> Time {
        self.now
    }

    // ----- masters -------------------------------------------------------

    /// Adds a master; it can take compiles at once.
    pub fn add_master(&mut self, now: Time, spec: MasterSpec) -> Result<MasterId, CoreError> {
        spec.validate()?;
        let now = self.advance(now);
        let id = u16::try_from(self.masters.len()).map_err(|_| CoreError::Exhausted("master"))?;
        self.masters.push(Some(Master::new(spec, now)));
        Ok(MasterId(id))
    }

    /// Removes a master. Its running compiles are given up and their nodes
    /// go back to the very front of the urgent lane; the returned list names
    /// them so the driver can cancel what still runs.
    pub fn remove_master(&mut self, now: Time, id: MasterId) -> Result<Vec<NodeId>, CoreError> {
        let now = self.advance(now);
        let master = self
            .masters
            .get_mut(id.index())
            .and_then(Option::take)
            .ok_or(CoreError::UnknownMaster(id))?;
        let mut requeued = Vec::new();
        for run in master.running {
            let node = &mut self.nodes.nodes[run.node as usize];
            if node.slot == Slot::Removing {
                self.nodes.release(run.node);
                continue;
            }
            node.pending = Pending::None;
            node.reason = Reason::Requeued;
            self.seq += 1;
            let key = (RANK_FRONT, run.started.min(now), self.seq);
            self.enqueue_urgent(run.node, key);
            requeued.push(NodeId(run.node));
        }
        Ok(requeued)
    }

    /// Marks a master reachable or not. A master that is down starts
    /// nothing; compiles already running there may still finish.
    pub fn set_master_up(&mut self, now: Time, id: MasterId, up: bool) -> Result<(), CoreError> {
        self.advance(now);
        self.master_mut(id)?.up = up;
        Ok(())
    }

    /// Feeds a master's load reading to its gate.
    pub fn report_load(
        &mut self,
        now: Time,
        id: MasterId,
        sample: LoadSample,
    ) -> Result<(), CoreError> {
        let now = self.advance(now);
        let master = self.master_mut(id)?;
        let started: Vec<Time> = master.running.iter().map(|r| r.started).collect();
        master.gate.sample(now, sample, started.into_iter());
        Ok(())
    }

    /// Feeds a reading of a master's JRuby pool to its gate: the instances
    /// free for pcq (free minus those kept for file requests), or `None`
    /// when it could not be read (the pool limit is off until it can).
    /// `asked` is when the reading was requested: compiles started since
    /// count as taken, whether or not the answer already shows them.
    pub fn report_pool(
        &mut self,
        now: Time,
        id: MasterId,
        free: Option<u32>,
        asked: Time,
    ) -> Result<(), CoreError> {
        let now = self.advance(now);
        let master = self.master_mut(id)?;
        let started: Vec<Time> = master.running.iter().map(|r| r.started).collect();
        master
            .gate
            .pool_sample(asked.min(now), free, started.into_iter());
        Ok(())
    }

    /// Ids of the masters present, in order.
    pub fn masters(&self) -> impl Iterator<Item = MasterId> + '_ {
        self.masters
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_some())
            .map(|(i, _)| MasterId(i as u16))
    }

    fn master_mut(&mut self, id: MasterId) -> Result<&mut Master, CoreError> {
        self.masters
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .ok_or(CoreError::UnknownMaster(id))
    }

    // ----- nodes ---------------------------------------------------------

    /// Adds a node in `environment`; it goes to the urgent lane (reason
    /// [`Reason::New`]) to get its first catalog.
    pub fn add_node(&mut self, now: Time, environment: &str) -> Result<NodeId, CoreError> {
        let now = self.advance(now);
        let id = self
            .nodes
            .alloc(environment)
            .ok_or(CoreError::Exhausted("node"))?;
        self.nodes.nodes[id as usize].reason = Reason::New;
        self.seq += 1;
        self.enqueue_urgent(id, (RANK_NORMAL, now, self.seq));
        Ok(NodeId(id))
    }

    /// Adds a node from a stored [`NodeView`] (the view's `id` is ignored; the
    /// new id is returned). Used to rebuild a core after a restart or a
    /// change of leader: a node that was compiling is queued again at the
    /// very front, since its compile died with the old process.
    pub fn restore_node(&mut self, view: &NodeView) -> Result<NodeId, CoreError> {
        let id = self
            .nodes
            .alloc(&view.environment)
            .ok_or(CoreError::Exhausted("node"))?;
        let node = &mut self.nodes.nodes[id as usize];
        node.reason = view.reason;
        node.failures = view.failures;
        node.last_compile = view.last_compile;
        self.seq += 1;
        match view.state {
            NodeState::Queued(Lane::Urgent) => {
                self.enqueue_urgent(id, (RANK_NORMAL, view.since, self.seq))
            }
            NodeState::Queued(Lane::Deploy) => {
                let last = view.last_compile.unwrap_or(Time::ZERO);
                self.enqueue_deploy(id, (view.since, last, self.seq))
            }
            NodeState::Queued(Lane::Cycle) => {
                // due by this core's pacing (it may differ from the one
                // that stored the view)
                let due = match (self.config.min_cycle_interval, view.last_compile) {
                    (None, _) => Time::NEVER,
                    (Some(interval), Some(last)) => last.plus(interval),
                    (Some(_), None) => view.since,
                };
                self.enqueue_cycle(id, due)
            }
            NodeState::Compiling(_) => {
                self.nodes.nodes[id as usize].reason = Reason::Requeued;
                self.enqueue_urgent(id, (RANK_FRONT, view.since, self.seq))
            }
            NodeState::Parked(until) => self.enqueue_parked(id, until),
        }
        Ok(NodeId(id))
    }

    /// Removes a node. If it is compiling, the compile's finish is still
    /// expected (and then ignored); the master it runs on is returned so the
    /// driver can cancel it.
    pub fn remove_node(&mut self, now: Time, id: NodeId) -> Result<Option<MasterId>, CoreError> {
        self.advance(now);
        let slot = self.nodes.live(id).ok_or(CoreError::UnknownNode(id))?.slot;
        if slot == Slot::Compiling {
            self.nodes.leave_env(id.0);
            let node = &mut self.nodes.nodes[id.index()];
            node.slot = Slot::Removing;
            return Ok(Some(MasterId(node.master)));
        }
        self.leave_queue(id.0);
        self.nodes.release(id.0);
        Ok(None)
    }

    /// Moves a node to another environment (its next deploy counts).
    pub fn set_environment(&mut self, id: NodeId, environment: &str) -> Result<(), CoreError> {
        self.nodes.live(id).ok_or(CoreError::UnknownNode(id))?;
        self.nodes.set_env(id.0, environment);
        Ok(())
    }

    /// Moves a node to the urgent lane. It keeps its place if it is already
    /// there; a compiling node goes there when its compile ends (the compile
    /// may have read the old facts); a parked node when its backoff ends,
    /// unless the bump is manual, which cuts the backoff short.
    pub fn bump(&mut self, now: Time, id: NodeId, why: BumpReason) -> Result<Bumped, CoreError> {
        let now = self.advance(now);
        let node = self.nodes.live(id).ok_or(CoreError::UnknownNode(id))?;
        match node.slot {
            Slot::Urgent => Ok(Bumped::AlreadyUrgent),
            Slot::Compiling => {
                let node = &mut self.nodes.nodes[id.index()];
                if !matches!(node.pending, Pending::Urgent(_)) {
                    node.pending = Pending::Urgent(why);
                    node.pending_since = now;
                }
                Ok(Bumped::AfterCompile)
            }
            Slot::Parked if why != BumpReason::Manual => Ok(Bumped::AfterBackoff),
            Slot::Deploy | Slot::Cycle if why != BumpReason::Manual => {
                match self.held_until(id.0, now) {
                    Some(until) => {
                        self.leave_queue(id.0);
                        self.hold(id.0, why, now, until);
                        Ok(Bumped::Held)
                    }
                    None => {
                        self.leave_queue(id.0);
                        self.nodes.nodes[id.index()].reason = why.into();
                        self.seq += 1;
                        self.enqueue_urgent(id.0, (RANK_NORMAL, now, self.seq));
                        Ok(Bumped::Queued)
                    }
                }
            }
            Slot::Deploy | Slot::Cycle | Slot::Parked => {
                self.leave_queue(id.0);
                self.nodes.nodes[id.index()].reason = why.into();
                self.seq += 1;
                self.enqueue_urgent(id.0, (RANK_NORMAL, now, self.seq));
                Ok(Bumped::Queued)
            }
            Slot::Free | Slot::Removing => Err(CoreError::UnknownNode(id)),
        }
    }

    /// New code in `environment`: its nodes in the cycle lane move to the
    /// deploy lane, oldest catalog first; its compiling nodes go there when
    /// their compile ends. Nodes already urgent, deploying or parked stay.
    /// Returns how many nodes were moved or marked.
    pub fn deploy(&mut self, now: Time, environment: &str) -> usize {
        self.deploy_to(now, environment, |_| true)
    }

    /// A deploy that moves only the nodes of `environment` for which
    /// `moves` holds (the others' catalogs cannot change with the new
    /// code). Returns how many nodes were moved or marked.
    pub fn deploy_to(
        &mut self,
        now: Time,
        environment: &str,
        moves: impl Fn(NodeId) -> bool,
    ) -> usize {
        let now = self.advance(now);
        let Some(env) = self.nodes.envs.lookup(environment) else {
            return 0;
        };
        let mut moved = Vec::new();
        let mut left_cycle = Vec::new();
        let mut marked = 0;
        let table = &mut self.nodes.nodes;
        for &id in self.nodes.envs.members(env) {
            if !moves(NodeId(id)) {
                continue;
            }
            let node = &mut table[id as usize];
            match node.slot {
                Slot::Cycle => {
                    left_cycle.push(node.since);
                    node.ticket = node.ticket.wrapping_add(1);
                    node.slot = Slot::Deploy;
                    node.reason = Reason::Deploy;
                    node.since = now;
                    self.seq += 1;
                    moved.push(Entry {
                        key: (now, node.last_compile.unwrap_or(Time::ZERO), self.seq),
                        node: id,
                        ticket: node.ticket,
                    });
                }
                Slot::Compiling if node.pending == Pending::None => {
                    node.pending = Pending::Deploy;
                    node.pending_since = now;
                    marked += 1;
                }
                _ => {}
            }
        }
        for &due in &left_cycle {
            self.cycle.forget(due);
        }
        self.cycle.compact_if_sparse(&self.nodes.nodes);
        let count = moved.len() + marked;
        self.deploy.extend(moved);
        count
    }

    /// Reports how a compile ended. A finish that does not match a running
    /// compile (wrong master, already finished, master removed meanwhile) is
    /// refused and changes nothing.
    pub fn finish(
        &mut self,
        now: Time,
        id: NodeId,
        master: MasterId,
        outcome: Outcome,
    ) -> Result<Finished, CoreError> {
        let now = self.advance(now);
        let not_compiling = CoreError::NotCompiling { node: id, master };
        let node = self
            .nodes
            .nodes
            .get(id.index())
            .ok_or(not_compiling.clone())?;
        if !matches!(node.slot, Slot::Compiling | Slot::Removing) || node.master != master.0 {
            return Err(not_compiling);
        }
        let removing = node.slot == Slot::Removing;
        let m = self.master_mut(master).map_err(|_| not_compiling.clone())?;
        m.finish(id.0).ok_or(not_compiling)?;
        self.finishes[outcome as usize] += 1;
        self.throughput.record(now);
        if removing {
            self.nodes.release(id.0);
            return Ok(Finished::Released);
        }

        let node = &mut self.nodes.nodes[id.index()];
        if outcome == Outcome::Interrupted {
            // Not the node's doing: back to the very front, keeping what
            // it had pending and its failure count.
            node.reason = Reason::Requeued;
            let started = node.since;
            self.seq += 1;
            self.enqueue_urgent(id.0, (RANK_FRONT, started, self.seq));
            return Ok(Finished::Next(NodeState::Queued(Lane::Urgent)));
        }
        if outcome == Outcome::Deferred {
            // Not the node's doing either, but retrying at once would spin:
            // one backoff step, its failure count untouched. A bump that
            // came meanwhile merges into the retry (it reads the newest
            // input), which starts as a retry, not as a fresh bump.
            node.pending = Pending::None;
            let wait = backoff::delay(&self.config.backoff, 1, &mut self.rng);
            let until = now.plus(wait);
            self.enqueue_parked(id.0, until);
            return Ok(Finished::Next(NodeState::Parked(until)));
        }
        let pending = std::mem::replace(&mut node.pending, Pending::None);
        if !outcome.succeeded() {
            node.failures = node.failures.saturating_add(1);
            let failures = node.failures;
            let wait = backoff::delay(&self.config.backoff, failures, &mut self.rng);
            let until = now.plus(wait);
            self.enqueue_parked(id.0, until);
            return Ok(Finished::Next(NodeState::Parked(until)));
        }
        node.failures = 0;
        node.last_compile = Some(now);
        let since = node.pending_since;
        if let Pending::Urgent(why) = pending {
            if let Some(until) = self.held_until(id.0, now) {
                // bumped while compiling: it has just compiled
                self.hold(id.0, why, since, until);
                return Ok(Finished::Next(NodeState::Parked(until)));
            }
        }
        let node = &mut self.nodes.nodes[id.index()];
        self.seq += 1;
        let lane = match pending {
            Pending::Urgent(why) => {
                node.reason = why.into();
                self.enqueue_urgent(id.0, (RANK_NORMAL, since, self.seq));
                Lane::Urgent
            }
            Pending::Deploy => {
                node.reason = Reason::Deploy;
                self.enqueue_deploy(id.0, (since, now, self.seq));
                Lane::Deploy
            }
            Pending::None => {
                node.reason = Reason::Cycle;
                let due = self.due_after(now);
                self.enqueue_cycle(id.0, due);
                Lane::Cycle
            }
        };
        Ok(Finished::Next(NodeState::Queued(lane)))
    }

    // ----- scheduling ----------------------------------------------------

    /// The next compile to start, or why none may start now. Call it until
    /// it answers [`Poll::Idle`].
    pub fn poll(&mut self, now: Time) -> Poll {
        let now = self.advance(now);
        let ready = self.ready(now);
        if ready.iter().all(Option::is_none) {
            let cycling = if self.config.min_cycle_interval.is_some() {
                self.cycle.len()
            } else {
                0 // with the cycle off, the cycle lane holds idle nodes
            };
            let queued = self.urgent.len() + self.deploy.len() + cycling + self.parked.len();
            self.blocked = if queued == 0 {
                Blocked::Empty
            } else {
                Blocked::Paced
            };
            return Poll::Idle(self.blocked);
        }
        let master = match self.choose_master(now) {
            Ok(m) => m,
            Err(blocked) => {
                self.blocked = blocked;
                return Poll::Idle(blocked);
            }
        };
        let Some(lane) = self.chooser.choose(&self.config.lanes, ready, now) else {
            self.blocked = Blocked::Paced;
            return Poll::Idle(Blocked::Paced);
        };
        let popped = match lane {
            Lane::Urgent => self.urgent.pop(&self.nodes.nodes).map(|e| e.node),
            Lane::Deploy => self.deploy.pop(&self.nodes.nodes).map(|e| e.node),
            Lane::Cycle => self.cycle.pop(&self.nodes.nodes).map(|e| e.node),
        };
        let (Some(id), Some(since)) = (popped, ready[lane.index()]) else {
            // `ready` said the lane had a live head; nothing ran in between.
            self.blocked = Blocked::Paced;
            return Poll::Idle(Blocked::Paced);
        };
        let node = &mut self.nodes.nodes[id as usize];
        node.ticket = node.ticket.wrapping_add(1);
        node.slot = Slot::Compiling;
        node.master = master;
        node.since = now;
        node.pending = Pending::None;
        let reason = node.reason;
        self.starts[reason as usize] += 1;
        if let Some(Some(m)) = self.masters.get_mut(usize::from(master)) {
            m.start(id, now);
        }
        Poll::Start(Start {
            node: NodeId(id),
            master: MasterId(master),
            reason,
            lane,
            waited: now.since(since),
            deadline: now.plus(self.config.compile_timeout),
        })
    }

    /// When to poll again if no input arrives: the next backoff end, the
    /// next cycle node falling due, or the next rate-limit token. `None`
    /// when only an input (a finish, a load reading, a bump) can change
    /// anything.
    pub fn next_wakeup(&mut self) -> Option<Time> {
        let now = self.now;
        let mut next: Option<Time> = None;
        let mut consider = |t: Time| next = Some(next.map_or(t, |n: Time| n.min(t)));
        if let Some(e) = self.parked.peek(&self.nodes.nodes) {
            consider(e.key.0.max(now));
        }
        let cycle_head = self.cycle.peek(&self.nodes.nodes).map(|e| e.key);
        if let Some(due) = cycle_head.filter(|&d| d > now && d != Time::NEVER) {
            consider(due);
        }
        let work_ready =
            self.urgent.len() + self.deploy.len() > 0 || cycle_head.is_some_and(|d| d <= now);
        if work_ready {
            for m in self.masters.iter().flatten().filter(|m| m.up) {
                if let Some(t) = m.gate.next_token() {
                    consider(t.max(now));
                }
            }
        }
        next
    }

    // ----- views -----------------------------------------------------------

    /// Nodes queued per lane, in [`Lane::ALL`] order (cheap; `stats` has
    /// ages too).
    pub fn lane_depths(&self) -> [usize; 3] {
        [self.urgent.len(), self.deploy.len(), self.cycle.len()]
    }

    /// Live nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.count()
    }

    /// A node's state, or `None` if the id names no live node.
    pub fn state(&self, id: NodeId) -> Option<NodeState> {
        let node = self.nodes.live(id)?;
        Some(match node.slot {
            Slot::Compiling => NodeState::Compiling(MasterId(node.master)),
            Slot::Parked => NodeState::Parked(node.since),
            slot => NodeState::Queued(slot.lane()?),
        })
    }

    /// Everything the core knows of a node (what a store persists).
    pub fn view(&self, id: NodeId) -> Option<NodeView> {
        let state = self.state(id)?;
        let node = &self.nodes.nodes[id.index()];
        Some(NodeView {
            id,
            state,
            environment: self.nodes.envs.name(node.env).to_owned(),
            reason: node.reason,
            since: node.since,
            pending: node.pending,
            pending_since: node.pending_since,
            last_compile: node.last_compile,
            failures: node.failures,
        })
    }

    /// Ids of all live nodes, in id order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !matches!(n.slot, Slot::Free | Slot::Removing))
            .map(|(i, _)| NodeId(i as u32))
    }

    /// A snapshot of depths, ages, counters and masters.
    pub fn stats(&mut self, now: Time) -> Stats {
        let now = self.advance(now);
        let nodes = &self.nodes.nodes;
        let age = |since: Option<Time>| since.map(|s| now.since(s)).unwrap_or_default();
        let urgent = self.urgent.peek(nodes).map(|e| e.key.1);
        let deploy = self.deploy.peek(nodes).map(|e| e.key.0);
        let cycle = self.cycle.peek(nodes).map(|e| e.key).filter(|&d| d <= now);
        let lanes = [
            (self.urgent.len(), urgent),
            (self.deploy.len(), deploy),
            (self.cycle.len(), cycle),
        ]
        .map(|(depth, since)| LaneStats {
            depth,
            oldest_age: age(since),
        });
        let masters: Vec<MasterStats> = self
            .masters
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                m.as_ref().map(|m| MasterStats {
                    id: MasterId(i as u16),
                    up: m.up,
                    in_flight: m.gate.in_flight,
                    max_concurrency: m.gate.config.max_concurrency,
                    cores: m.spec.cores,
                    load_per_core: m.gate.load_per_core(),
                    pool_free: m.gate.pool_available(),
                })
            })
            .collect();
        let in_flight = masters.iter().map(|m| m.in_flight as usize).sum();
        let node_count = self.nodes.count();
        let cycle_time = self
            .throughput
            .rate(now)
            .map(|rate| Duration::from_secs_f64((node_count as f64 / rate).min(1e12)));
        Stats {
            at: now,
            nodes: node_count,
            lanes,
            in_flight,
            parked: self.parked.len(),
            starts: self.starts,
            finishes: self.finishes,
            cycle_time,
            blocked: self.blocked,
            masters,
        }
    }

    /// Checks every invariant on the whole state, in O(nodes). For tests and
    /// for drivers after a rebuild; `Err` says what is broken.
    pub fn audit(&self) -> Result<(), String> {
        let nodes = &self.nodes.nodes;
        let mut seen = vec![0u8; nodes.len()];
        let mut mark = |node: u32, ticket: u32, slot: Slot, what: &str| -> Result<(), String> {
            let Some(n) = nodes.get(node as usize) else {
                return Err(format!("{what}: entry for unknown node {node}"));
            };
            if n.ticket != ticket {
                return Ok(()); // stale, skipped when it reaches the head
            }
            if n.slot != slot {
                return Err(format!(
                    "{what}: live entry for node {node} in slot {:?}",
                    n.slot
                ));
            }
            seen[node as usize] += 1;
            Ok(())
        };
        let mut live = [0usize; 4];
        for e in self.urgent.raw() {
            mark(e.node, e.ticket, Slot::Urgent, "urgent")?;
            live[0] += usize::from(nodes[e.node as usize].ticket == e.ticket);
        }
        for e in self.deploy.raw() {
            mark(e.node, e.ticket, Slot::Deploy, "deploy")?;
            live[1] += usize::from(nodes[e.node as usize].ticket == e.ticket);
        }
        let mut last_due = Time::ZERO;
        for e in self.cycle.raw() {
            mark(e.node, e.ticket, Slot::Cycle, "cycle")?;
            live[2] += usize::from(nodes[e.node as usize].ticket == e.ticket);
            if e.key < last_due {
                return Err("cycle lane out of due order".into());
            }
            last_due = e.key;
        }
        for e in self.parked.raw() {
            mark(e.node, e.ticket, Slot::Parked, "parked")?;
            live[3] += usize::from(nodes[e.node as usize].ticket == e.ticket);
        }
        // nodes never due hold no cycle entry, only a count
        let mut idle = 0;
        for (i, n) in nodes.iter().enumerate() {
            if n.slot == Slot::Cycle && n.since == Time::NEVER {
                idle += 1;
                seen[i] += 1;
            }
        }
        if idle != self.cycle.idle() {
            return Err(format!(
                "{idle} idle cycle nodes, counted {}",
                self.cycle.idle()
            ));
        }
        live[2] += idle;
        let counted = [
            self.urgent.len(),
            self.deploy.len(),
            self.cycle.len(),
            self.parked.len(),
        ];
        if live != counted {
            return Err(format!("lane counts {counted:?} but live entries {live:?}"));
        }
        for m in self.masters.iter().flatten() {
            if m.running.len() as u32 != m.gate.in_flight {
                return Err("master's gate count differs from its running list".into());
            }
            if m.running.len() as u32 > m.gate.config.max_concurrency {
                return Err("master runs more than max_concurrency".into());
            }
            for r in &m.running {
                let slot = nodes.get(r.node as usize).map(|n| n.slot);
                if !matches!(slot, Some(Slot::Compiling | Slot::Removing)) {
                    return Err(format!("running node {} is in slot {slot:?}", r.node));
                }
                seen[r.node as usize] += 1;
            }
        }
        let mut count = 0;
        for (i, n) in nodes.iter().enumerate() {
            let expected = u8::from(n.slot != Slot::Free);
            if seen[i] != expected {
                return Err(format!(
                    "node {i} in slot {:?} is held {} times (expected {expected})",
                    n.slot, seen[i]
                ));
            }
            if !matches!(n.slot, Slot::Free | Slot::Removing) {
                count += 1;
                let members = self.nodes.envs.members(n.env);
                if members.get(n.env_pos as usize) != Some(&(i as u32)) {
                    return Err(format!("node {i} missing from its environment"));
                }
            }
        }
        if count != self.nodes.count() {
            return Err(format!(
                "{count} live nodes, counted {}",
                self.nodes.count()
            ));
        }
        Ok(())
    }

    // ----- internals -------------------------------------------------------

    /// Moves time forward (never back) and releases expired backoffs.
    fn advance(&mut self, now: Time) -> Time {
        self.now = self.now.max(now);
        let now = self.now;
        while let Some(e) = self.parked.peek(&self.nodes.nodes) {
            if e.key.0 > now {
                break;
            }
            self.parked.pop(&self.nodes.nodes);
            let node = &mut self.nodes.nodes[e.node as usize];
            node.ticket = node.ticket.wrapping_add(1);
            // a held bump compiles for its own reason; a backoff retries
            node.reason = match node.pending {
                Pending::Urgent(why) => why.into(),
                _ => Reason::Retry,
            };
            node.pending = Pending::None;
            self.seq += 1;
            self.enqueue_urgent(e.node, (RANK_NORMAL, e.key.0, self.seq));
        }
        now
    }

    /// Until when a bump of `id` at `now` is held: the end of its last
    /// compile that gave a catalog plus `min_urgent_interval`, if that is
    /// still ahead.
    fn held_until(&self, id: u32, now: Time) -> Option<Time> {
        let interval = self.config.min_urgent_interval;
        let last = self.nodes.nodes.get(id as usize)?.last_compile?;
        let until = last.plus(interval);
        (!interval.is_zero() && until > now).then_some(until)
    }

    /// Holds `id` (out of any lane) until `until`, with the bump `why`
    /// pending since `since`: it is parked, and goes to the urgent lane for
    /// that reason when the time comes.
    fn hold(&mut self, id: u32, why: BumpReason, since: Time, until: Time) {
        let node = &mut self.nodes.nodes[id as usize];
        node.pending = Pending::Urgent(why);
        node.pending_since = since;
        node.reason = why.into();
        self.enqueue_parked(id, until);
    }

    /// When a node that finished at `now` is due in the cycle lane.
    fn due_after(&self, now: Time) -> Time {
        match self.config.min_cycle_interval {
            Some(interval) => now.plus(interval),
            None => Time::NEVER,
        }
    }

    /// For each lane, when its head has been waiting since, if it is ready.
    fn ready(&mut self, now: Time) -> starvation::Ready {
        let nodes = &self.nodes.nodes;
        [
            self.urgent.peek(nodes).map(|e| e.key.1),
            self.deploy.peek(nodes).map(|e| e.key.0),
            self.cycle
                .peek(nodes)
                .map(|e| e.key)
                .filter(|&due| due <= now),
        ]
    }

    /// The master to start on: the least busy (running / slots) whose gate
    /// is open, then the least loaded, then the lowest id. `Err` says which
    /// limit binds: the one that got furthest through its gate.
    fn choose_master(&mut self, now: Time) -> Result<u16, Blocked> {
        let mut best: Option<(u16, u32, u32, f64)> = None;
        let mut blocked = Blocked::Down;
        for (i, m) in self.masters.iter_mut().enumerate() {
            let Some(m) = m.as_mut().filter(|m| m.up) else {
                continue;
            };
            match m.gate.check(now) {
                Ok(()) => {
                    let (busy, slots, load) = (
                        m.gate.in_flight,
                        m.gate.config.max_concurrency,
                        m.gate.load_per_core(),
                    );
                    let better = match best {
                        None => true,
                        Some((_, b_busy, b_slots, b_load)) => {
                            let (lhs, rhs) = (
                                u64::from(busy) * u64::from(b_slots),
                                u64::from(b_busy) * u64::from(slots),
                            );
                            lhs < rhs || (lhs == rhs && load < b_load)
                        }
                    };
                    if better {
                        best = Some((i as u16, busy, slots, load));
                    }
                }
                Err(reason) => blocked = blocked.max(reason),
            }
        }
        best.map(|(i, ..)| i).ok_or(blocked)
    }

    /// Takes a queued or parked node out of its lane (lazily: its ticket
    /// moves on, the entry is skipped later).
    fn leave_queue(&mut self, id: u32) {
        let node = &mut self.nodes.nodes[id as usize];
        let (slot, due) = (node.slot, node.since);
        node.ticket = node.ticket.wrapping_add(1);
        let nodes = &self.nodes.nodes;
        match slot {
            Slot::Urgent => {
                self.urgent.forget_one();
                self.urgent.compact_if_sparse(nodes);
            }
            Slot::Deploy => {
                self.deploy.forget_one();
                self.deploy.compact_if_sparse(nodes);
            }
            Slot::Cycle => {
                self.cycle.forget(due);
                self.cycle.compact_if_sparse(nodes);
            }
            Slot::Parked => {
                self.parked.forget_one();
                self.parked.compact_if_sparse(nodes);
            }
            Slot::Free | Slot::Compiling | Slot::Removing => {}
        }
    }

    fn enqueue_urgent(&mut self, id: u32, key: keys::Urgent) {
        let node = &mut self.nodes.nodes[id as usize];
        node.slot = Slot::Urgent;
        node.since = key.1;
        self.urgent.push(key, id, node.ticket);
    }

    fn enqueue_deploy(&mut self, id: u32, key: keys::Deploy) {
        let node = &mut self.nodes.nodes[id as usize];
        node.slot = Slot::Deploy;
        node.since = key.0;
        self.deploy.push(key, id, node.ticket);
    }

    fn enqueue_cycle(&mut self, id: u32, due: Time) {
        let node = &mut self.nodes.nodes[id as usize];
        node.slot = Slot::Cycle;
        node.since = due;
        self.cycle.push(due, id, node.ticket);
    }

    fn enqueue_parked(&mut self, id: u32, until: Time) {
        let node = &mut self.nodes.nodes[id as usize];
        node.slot = Slot::Parked;
        node.since = until;
        self.seq += 1;
        self.parked.push((until, self.seq), id, node.ticket);
    }
}
