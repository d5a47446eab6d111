//! The world every policy runs in: the clock and the event queue, the nodes
//! and their changes, the fleet's churn, deploys and herds, the masters'
//! CPUs, the random streams and the measurements.
//!
//! The world owns everything that does not depend on how catalogs get
//! compiled, the masters' JRuby pools and the agents' file requests among
//! them; a policy's model (`policy::Model`) reacts to it. The run loop
//! (`run`) gives each event to the world first (the methods under "what
//! happens by itself" below) and then to the model, which calls back the
//! methods under "what models do" to compile, deliver and apply.

use std::ops::Range;
use std::time::Duration;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use scheduler::core::Time;

use crate::distribution::Sampler;
use crate::engine::{Event, Events};
use crate::fleet::{self, Change, SimNode};
use crate::master::{Completion, SimMaster, Work, LOAD_TICK_SECS};
use crate::measure::{Metrics, Point};
use crate::pool::{Borrower, JRubyPool};
use crate::scenario::{ChurnModel, Herd, Scenario};
use crate::streams::Streams;

/// Seconds in a day: churn rates are per node (or exporter) per day.
pub const DAY: f64 = 86_400.0;

/// What a deploy changed.
pub struct Deployed {
    /// The environment's index.
    pub env: usize,
    /// The nodes whose catalog it changes.
    pub affected: Vec<u32>,
    /// The change cannot be bounded (the queue recompiles every node).
    pub unbounded: bool,
}

/// The shared state of a run.
pub struct World<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// Current virtual time.
    pub now: Time,
    /// End of the run.
    pub end: Time,
    /// Future events.
    pub events: Events,
    /// Every node, including those herds add later.
    pub nodes: Vec<SimNode>,
    /// Nodes alive at the start.
    pub initial_nodes: u32,
    /// Next node index a new certificate takes.
    next_new: u32,
    /// The masters' CPUs.
    pub masters: Vec<SimMaster>,
    /// The masters' JRuby pools, which compiles and file requests share.
    pub pools: Vec<JRubyPool>,
    /// Each node's agent in its file requests, if it is.
    files: Vec<AgentFiles>,
    /// Where the least-outstanding pick of a master starts looking.
    next_pick: usize,
    /// Random streams.
    pub rng: Streams,
    /// Compile times.
    pub compile_time: Sampler,
    /// Measurements.
    pub metrics: Metrics,
    /// The agents' run interval under this policy.
    pub interval: Option<Duration>,
    /// Closed churn: when each node's next used-fact change is due.
    fact_timer: Vec<Time>,
    /// Scratch buffer for completion events.
    completions: Vec<Completion>,
}

impl<'a> World<'a> {
    /// The world of `scenario` at time zero: `masters` masters, `nodes`
    /// nodes (and room for those herds add later), the random streams of
    /// `seed`, and nodes that run their agent (or sync) every `interval`.
    pub fn new(
        scenario: &'a Scenario,
        masters: u32,
        nodes: u32,
        seed: u64,
        interval: Option<Duration>,
    ) -> World<'a> {
        let s = scenario;
        let herd_nodes: u32 = s
            .herds
            .iter()
            .map(|h| match h {
                Herd::NewCerts { count, .. } => *count,
                _ => 0,
            })
            .sum();
        let capacity = nodes.saturating_add(herd_nodes);
        let from = Time::ZERO.plus(s.warmup);
        World {
            scenario: s,
            now: Time::ZERO,
            end: Time::ZERO.plus(s.duration),
            events: Events::default(),
            nodes: fleet::build(nodes, capacity, s.fleet.environments.len()),
            initial_nodes: nodes,
            next_new: nodes,
            masters: (0..masters)
                .map(|_| SimMaster::new(s.masters.cores, s.masters.background_load, from))
                .collect(),
            pools: vec![JRubyPool::new(s.masters.slots); masters as usize],
            files: vec![AgentFiles::default(); capacity as usize],
            next_pick: 0,
            rng: Streams::new(seed),
            compile_time: s.compile.sampler(),
            metrics: Metrics::with_capacity(from, expected_changes(s, nodes)),
            interval,
            fact_timer: vec![Time::NEVER; capacity as usize],
            completions: Vec::new(),
        }
    }

    /// Nodes that have joined so far: the initial fleet and the herds' new
    /// certificates (none ever leaves).
    pub fn alive_count(&self) -> u32 {
        self.next_new
    }

    // What models do.

    /// Nodes that collect every export: the last ones of the initial fleet.
    pub fn collectors(&self) -> Range<u32> {
        self.initial_nodes - self.scenario.exports.collectors..self.initial_nodes
    }

    /// Draws a compile's CPU seconds.
    pub fn draw_compile(&mut self) -> f64 {
        self.compile_time.draw(&mut self.rng.compile)
    }

    /// Starts a compile on master `m` for `key`, scheduling its completion
    /// (its JRuby is borrowed already).
    pub fn start_compile(&mut self, m: u32, key: u32) {
        let cpu = self.draw_compile();
        self.on_master(m, |master, now, out| {
            master.start(now, Work::Compile(key), cpu, out)
        });
    }

    /// The reachable master with the fewest outstanding requests (lent
    /// JRubies plus waiters), ties taken in rotation: a least-connections
    /// load balancer.
    pub fn pick_master(&mut self) -> Option<u32> {
        let n = self.pools.len();
        let mut best: Option<(usize, usize)> = None;
        for k in 0..n {
            let m = (self.next_pick + k) % n;
            if !self.masters[m].up {
                continue;
            }
            let load = self.pools[m].outstanding();
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((m, load));
            }
        }
        self.next_pick = (self.next_pick + 1) % n.max(1);
        best.map(|(m, _)| m as u32)
    }

    /// The node's agent applies a catalog and makes `requests` file
    /// requests for it, one after the other (`[files]` of the scenario).
    pub fn fetch_files(&mut self, node: u32, requests: u32) {
        if requests == 0 || self.files[node as usize].left > 0 {
            return; // (still busy with the apply before)
        }
        self.files[node as usize] = AgentFiles {
            left: requests,
            began: self.now,
            issued: self.now,
        };
        self.next_file(node);
    }

    /// Master `m` lent a JRuby to `node`'s file request: its Ruby work
    /// starts on the master's CPU.
    pub fn start_file(&mut self, m: u32, node: u32) {
        let cpu = self.scenario.files.jruby_time.as_secs_f64();
        self.on_master(m, |master, now, out| {
            master.start(now, Work::File(node), cpu, out)
        });
    }

    /// `node`'s file request was answered (its JRuby is back already):
    /// its wait is booked and the next one goes out, or the apply is over.
    pub fn file_done(&mut self, node: u32) {
        let now = self.now;
        let f = &mut self.files[node as usize];
        let (issued, began) = (f.issued, f.began);
        f.left = f.left.saturating_sub(1);
        let more = f.left > 0;
        if self.metrics.counts(now) {
            self.metrics
                .file_waits
                .push(now.since(issued).as_secs_f64());
        }
        if more {
            self.next_file(node);
        } else if self.metrics.counts(now) {
            let applied = now.plus(self.scenario.agents.apply_time);
            self.metrics
                .apply_times
                .push(applied.since(began).as_secs_f64());
        }
    }

    /// Books a finished compile of `node` that included `included` and was
    /// delivered: staleness, export propagation, closed churn. Returns
    /// whether the catalog changed and, if an export changed, the
    /// collectors that are now stale.
    pub fn delivered(&mut self, node: u32, included: &[Change]) -> (bool, Option<Range<u32>>) {
        let now = self.now;
        self.metrics.compiled(included, now);
        let counts = self.metrics.counts(now);
        let changed = !included.is_empty();
        if counts {
            self.metrics.compiles.total += 1;
            if changed {
                self.metrics.compiles.changed += 1;
            } else {
                self.metrics.compiles.unchanged += 1;
            }
        }
        self.schedule_node_fact(node);
        if !included.iter().any(|c| c.export()) {
            return (changed, None);
        }
        let collectors = self.collectors();
        for c in collectors.clone() {
            let n = &mut self.nodes[c as usize];
            if n.alive {
                n.visible.push(Change::new(now, false));
            }
        }
        (changed, Some(collectors))
    }

    /// A node applies the changes in `changes` (now + the apply's wall time).
    pub fn apply(&mut self, changes: &[Change], cpu: Duration) {
        let at = self.now.plus(self.scenario.agents.apply_time);
        self.metrics.applied(changes, at);
        self.metrics.cpu(self.now, cpu.as_secs_f64());
    }

    // What happens by itself.

    /// Schedules the first event of every stream, the deploys, the herds,
    /// the load ticks (if `load_matters` to the model), the samples, and
    /// the unused-fact stream only if `unused_facts_matter` to the model.
    pub fn schedule_start(&mut self, unused_facts_matter: bool, load_matters: bool) {
        let s = self.scenario;
        let nodes = self.initial_nodes;
        if self.interval.is_some() {
            let splay = s.agents.splay.as_secs_f64();
            for n in 0..nodes {
                let phase = if splay > 0.0 {
                    self.rng.agents.random::<f64>() * splay
                } else {
                    0.0
                };
                self.schedule_run(n, Time::from_secs_f64(phase));
            }
        }
        match s.facts.model {
            ChurnModel::Open => self.schedule_next(Event::UsedFact),
            ChurnModel::Closed => {
                for n in 0..nodes {
                    self.schedule_node_fact(n);
                }
            }
        }
        self.schedule_next(Event::External);
        if unused_facts_matter {
            self.schedule_next(Event::UnusedFact);
        }
        self.schedule_next(Event::Export);
        for (i, d) in s.deploys.iter().enumerate() {
            self.events
                .at(Time::ZERO.plus(d.at), Event::Deploy(i as u32, 1));
        }
        for (i, h) in s.herds.iter().enumerate() {
            let at = Time::ZERO.plus(h.at());
            match h {
                Herd::NewCerts { count, window, .. } => {
                    let mut times: Vec<f64> = (0..*count)
                        .map(|_| self.rng.herds.random::<f64>() * window.as_secs_f64())
                        .collect();
                    times.sort_by(f64::total_cmp);
                    for dt in times {
                        self.events
                            .at(at.plus(Duration::from_secs_f64(dt)), Event::NewCert);
                    }
                }
                Herd::SynchronizedCron { .. } => self.events.at(at, Event::Cron(i as u32)),
                Herd::MasterOutage {
                    master, duration, ..
                } => {
                    if (*master as usize) < self.masters.len() {
                        self.events.at(at, Event::MasterDown(*master));
                        self.events.at(at.plus(*duration), Event::MasterUp(*master));
                    }
                }
            }
        }
        if load_matters {
            self.schedule_load_tick();
        }
        self.events.at(Time::ZERO, Event::Sample);
    }

    /// `Run(n)`: is this the node's scheduled run (and not one a cron herd
    /// moved)? If so, its next run is scheduled.
    pub fn agent_run_due(&mut self, n: u32) -> bool {
        if self.nodes[n as usize].next_run != self.now {
            return false; // rescheduled (a cron herd)
        }
        if let Some(interval) = self.interval {
            self.schedule_run(n, self.now.plus(interval));
        }
        true
    }

    /// A uniformly chosen node among those alive, drawn from the stream
    /// of `event`.
    pub fn random_node(&mut self, event: Event) -> u32 {
        let alive = self.alive_count();
        self.stream(event).random_range(0..alive)
    }

    /// Counts a fact change on a node (`used` by its catalog or not).
    pub fn count_fact(&mut self, used: bool) {
        if self.metrics.counts(self.now) {
            if used {
                self.metrics.churn.used_facts += 1;
            } else {
                self.metrics.churn.unused_facts += 1;
            }
        }
    }

    /// `External`: a change on the server side already, but nothing tells
    /// pcq: the node's next compile, whatever its reason, picks it up.
    pub fn external_change(&mut self) {
        let n = self.random_node(Event::External);
        if self.metrics.counts(self.now) {
            self.metrics.churn.external += 1;
        }
        self.nodes[n as usize]
            .visible
            .push(Change::new(self.now, false));
        self.schedule_next(Event::External);
    }

    /// `NodeFact(n)` (closed churn): is this the node's current timer? If
    /// so it is used up, and the used-fact change counted.
    pub fn node_fact_due(&mut self, n: u32) -> bool {
        if self.fact_timer[n as usize] != self.now {
            return false;
        }
        self.fact_timer[n as usize] = Time::NEVER;
        self.count_fact(true);
        true
    }

    /// `Export`: the exporter whose exported resources changed, counted.
    pub fn random_exporter(&mut self) -> u32 {
        let n = self
            .rng
            .exports
            .random_range(0..self.scenario.exports.exporters.max(1));
        if self.metrics.counts(self.now) {
            self.metrics.churn.exports += 1;
        }
        n
    }

    /// Schedules the next event of the fleet-wide Poisson stream `event`
    /// (`UsedFact`, `UnusedFact`, `External` over the nodes alive, `Export`
    /// over the exporters); other events are not streams and schedule
    /// nothing.
    pub fn schedule_next(&mut self, event: Event) {
        let s = self.scenario;
        let (per_day, among) = match event {
            Event::UsedFact => (s.facts.used_changes_per_node_day, self.alive_count()),
            Event::UnusedFact => (s.facts.unused_changes_per_node_day, self.alive_count()),
            Event::External => (s.external.changes_per_node_day, self.alive_count()),
            Event::Export => (s.exports.changes_per_exporter_day, s.exports.exporters),
            _ => return,
        };
        self.schedule_stream(per_day, among, event);
    }

    /// `Deploy(i, _)`: deploy `i`'s environment gets new code and the
    /// catalogs it changes get a visible change.
    pub fn deploy(&mut self, i: u32) -> Deployed {
        let s = self.scenario;
        let d = &s.deploys[i as usize];
        let env = s
            .fleet
            .environments
            .iter()
            .position(|e| *e == d.environment)
            .unwrap_or(0);
        let now = self.now;
        let mut affected = Vec::new();
        for (n, node) in self.nodes.iter_mut().enumerate() {
            if !node.alive || usize::from(node.env) != env {
                continue;
            }
            if self.rng.deploys.random::<f64>() < d.affects {
                node.visible.push(Change::new(now, false));
                affected.push(n as u32);
            }
        }
        // (drawn only when it can hold: scenarios without it keep their
        // random streams)
        let unbounded = d.unbounded > 0.0 && self.rng.deploys.random::<f64>() < d.unbounded;
        Deployed {
            env,
            affected,
            unbounded,
        }
    }

    /// After `Deploy(i, nth)`: schedules the deploy's next repetition, if
    /// it repeats and has times left.
    pub fn schedule_next_deploy(&mut self, i: u32, nth: u32) {
        let d = &self.scenario.deploys[i as usize];
        if let Some(every) = d.every {
            if d.times == 0 || nth < d.times {
                self.events
                    .at(self.now.plus(every), Event::Deploy(i, nth + 1));
            }
        }
    }

    /// `NewCert`: the next node of the herds gets its certificate signed
    /// and a visible change (its first catalog). None once every node the
    /// herds add has joined.
    pub fn join_new_node(&mut self) -> Option<u32> {
        let n = self.next_new;
        if (n as usize) >= self.nodes.len() {
            return None;
        }
        self.next_new += 1;
        let node = &mut self.nodes[n as usize];
        node.alive = true;
        node.visible.push(Change::new(self.now, false));
        Some(n)
    }

    /// The node runs its agent (or syncs) now, if agents run at all.
    pub fn run_now(&mut self, n: u32) {
        if self.interval.is_some() {
            self.schedule_run(n, self.now);
        }
    }

    /// `Cron`: a synchronized cron; every node runs now.
    pub fn synchronized_cron(&mut self) {
        for n in 0..self.next_new {
            self.run_now(n);
        }
    }

    /// `MasterDown(m)`: the master dies. Its file requests fail (their
    /// applies end there); returns the keys of the compiles it was
    /// running and of those that waited for a JRuby.
    pub fn master_down(&mut self, m: u32) -> (Vec<u32>, Vec<u32>) {
        let master = &mut self.masters[m as usize];
        master.up = false;
        let mut running = Vec::new();
        for work in master.kill_all(self.now) {
            match work {
                Work::Compile(key) => running.push(key),
                Work::File(node) => self.files[node as usize].left = 0,
            }
        }
        let mut waiting = Vec::new();
        for who in self.pools[m as usize].drain() {
            match who {
                Borrower::Catalog(key) => waiting.push(key),
                Borrower::File(node) => self.files[node as usize].left = 0,
            }
        }
        (running, waiting)
    }

    /// `MasterUp(m)`: the master is back.
    pub fn master_up(&mut self, m: u32) {
        self.masters[m as usize].up = true;
    }

    /// `Complete(m, generation, work)`: whether `work` on master `m` is
    /// done (and not an event its master has rescheduled since).
    pub fn work_done(&mut self, m: u32, generation: u32, work: Work) -> Option<Time> {
        self.on_master(m, |master, now, out| {
            master.complete(now, generation, work, out)
        })
    }

    /// `LoadTick`: the masters' load averages move on.
    pub fn tick_loads(&mut self) {
        for m in &mut self.masters {
            m.tick_load();
        }
    }

    /// Schedules the next load tick.
    pub fn schedule_load_tick(&mut self) {
        self.events.at(
            self.now.plus(Duration::from_secs(LOAD_TICK_SECS)),
            Event::LoadTick,
        );
    }

    /// `Sample`: records a point of the time series (the model's oldest
    /// queued age and jobs waiting, the compiles running) and schedules the
    /// next sample.
    pub fn record_sample(&mut self, oldest_age: f64, waiting: u64) {
        let now = self.now;
        let running = self.masters.iter().map(|m| m.running() as u64).sum();
        self.metrics.series.push(Point {
            t: now.as_secs_f64(),
            oldest_age,
            waiting,
            running,
        });
        self.events
            .at(now.plus(self.scenario.sample_interval), Event::Sample);
    }

    /// The run is over: changes still on their way count with the age
    /// they reached (see `Metrics::censored`).
    pub fn censor_pending(&mut self) {
        let end = self.end;
        for n in &self.nodes {
            for stage in [&n.unseen, &n.visible, &n.included] {
                self.metrics.censored(stage, end, false);
            }
            self.metrics.censored(&n.compiled, end, true);
        }
    }

    // Helpers.

    /// Runs `f` on master `m` with the scratch buffer of completions, then
    /// schedules a `Complete` event for each completion it reported.
    fn on_master<T>(
        &mut self,
        m: u32,
        f: impl FnOnce(&mut SimMaster, Time, &mut Vec<Completion>) -> T,
    ) -> T {
        let mut out = std::mem::take(&mut self.completions);
        let result = f(&mut self.masters[m as usize], self.now, &mut out);
        for (at, generation, key) in out.drain(..) {
            self.events.at(at, Event::Complete(m, generation, key));
        }
        self.completions = out;
        result
    }

    /// Sends `node`'s next file request to a master's pool.
    fn next_file(&mut self, node: u32) {
        let Some(m) = self.pick_master() else {
            self.files[node as usize].left = 0; // no master: the apply fails
            return;
        };
        self.files[node as usize].issued = self.now;
        if self.pools[m as usize].borrow(self.now, Borrower::File(node)) {
            self.start_file(m, node);
        }
    }

    /// Closed churn: the node's next used-fact change, an exponential time
    /// from now.
    fn schedule_node_fact(&mut self, node: u32) {
        if self.scenario.facts.model != ChurnModel::Closed {
            return;
        }
        let rate = self.scenario.facts.used_changes_per_node_day / DAY;
        if rate <= 0.0 {
            return;
        }
        let wait = Exp::new(rate)
            .map(|d| d.sample(&mut self.rng.churn))
            .unwrap_or(f64::INFINITY);
        let at = self.now.plus(Duration::from_secs_f64(wait.min(1e12)));
        self.fact_timer[node as usize] = at;
        self.events.at(at, Event::NodeFact(node));
    }

    /// The random stream that drives `event`'s nodes.
    fn stream(&mut self, event: Event) -> &mut ChaCha8Rng {
        match event {
            Event::Export => &mut self.rng.exports,
            Event::UnusedFact => &mut self.rng.noise,
            Event::External => &mut self.rng.external,
            _ => &mut self.rng.churn,
        }
    }

    /// Schedules the next event of a fleet-wide Poisson stream of
    /// `per_node_day` events per node per day over `nodes` nodes.
    fn schedule_stream(&mut self, per_node_day: f64, nodes: u32, event: Event) {
        let rate = per_node_day * f64::from(nodes) / DAY;
        if rate <= 0.0 {
            return;
        }
        // (the times of every stream but exports come from the churn
        // stream; only the nodes come from the event's own stream)
        let rng = match event {
            Event::Export => &mut self.rng.exports,
            _ => &mut self.rng.churn,
        };
        let wait = Exp::new(rate)
            .map(|d| d.sample(rng))
            .unwrap_or(f64::INFINITY);
        if wait.is_finite() {
            self.events
                .at(self.now.plus(Duration::from_secs_f64(wait)), event);
        }
    }

    fn schedule_run(&mut self, node: u32, at: Time) {
        self.nodes[node as usize].next_run = at;
        self.events.at(at, Event::Run(node));
    }
}

/// An agent's file requests while it applies a catalog.
#[derive(Clone, Copy, Debug, Default)]
struct AgentFiles {
    /// Requests still to make (0: not applying).
    left: u32,
    /// When the apply began.
    began: Time,
    /// When the current request went out.
    issued: Time,
}

/// About how many catalog changes a run will see, to size the sample
/// buffers once instead of growing them (capped: a guess, not a limit).
fn expected_changes(s: &Scenario, nodes: u32) -> usize {
    let days = s.duration.saturating_sub(s.warmup).as_secs_f64() / DAY;
    let per_node_day = s.facts.used_changes_per_node_day + s.external.changes_per_node_day;
    let n = f64::from(nodes) * per_node_day * days * 1.1;
    (n as usize).min(4_000_000)
}
