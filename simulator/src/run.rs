//! One simulated run: the world both policies share, and the event loop.
//!
//! The world owns everything that does not depend on how catalogs get
//! compiled: the clock, the nodes and their changes, the fleet's churn, the
//! deploys and herds, the masters' CPUs. A [`Model`] (on demand, or the queue
//! driving `scheduler::core`) reacts to it. Each source of randomness has its
//! own seeded stream, so both policies see the same fact changes, deploys
//! and herds at the same times (common random numbers: the comparison is
//! between policies, not between dice).

use std::ops::Range;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use scheduler::core::{CoreError, Time};

use crate::distribution::Sampler;
use crate::engine::{Event, Events};
use crate::fleet::{self, Change, SimNode};
use crate::master::{SimMaster, LOAD_TICK_SECS};
use crate::metrics::{Little, Metrics, Point, Policy, RunResult, Summary};
use crate::policy::{on_demand::OnDemandModel, queue::QueueModel, Model};
use crate::scenario::{ChurnModel, Herd, Scenario};

const DAY: f64 = 86_400.0;

/// What to run: a scenario at a master count and fleet size, one seed.
#[derive(Clone, Debug)]
pub struct RunSpec<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// The policy.
    pub policy: Policy,
    /// Masters (the scenario's `masters.count` unless a plan sweeps it).
    pub masters: u32,
    /// Nodes at the start (the scenario's `fleet.nodes` unless swept).
    pub nodes: u32,
    /// Seed.
    pub seed: u64,
}

impl<'a> RunSpec<'a> {
    /// The scenario as written, with its own seed.
    pub fn of(scenario: &'a Scenario, policy: Policy) -> RunSpec<'a> {
        RunSpec {
            scenario,
            policy,
            masters: scenario.masters.count,
            nodes: scenario.fleet.nodes,
            seed: scenario.seed,
        }
    }
}

/// Independent random streams, one per source.
pub struct Streams {
    /// Used-fact churn (times and nodes).
    pub churn: ChaCha8Rng,
    /// Unused-fact churn (simulated only where it matters).
    pub noise: ChaCha8Rng,
    /// External changes.
    pub external: ChaCha8Rng,
    /// Export churn.
    pub exports: ChaCha8Rng,
    /// Agent phases.
    pub agents: ChaCha8Rng,
    /// Which nodes a deploy affects.
    pub deploys: ChaCha8Rng,
    /// Herd timings.
    pub herds: ChaCha8Rng,
    /// Compile times.
    pub compile: ChaCha8Rng,
    /// Load balancer and Retry-After.
    pub lb: ChaCha8Rng,
}

impl Streams {
    fn new(seed: u64) -> Streams {
        let stream =
            |k: u64| ChaCha8Rng::seed_from_u64(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Streams {
            churn: stream(1),
            noise: stream(8),
            external: stream(9),
            exports: stream(2),
            agents: stream(3),
            deploys: stream(4),
            herds: stream(5),
            compile: stream(6),
            lb: stream(7),
        }
    }
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
    completions: Vec<crate::master::Completion>,
}

impl<'a> World<'a> {
    fn new(spec: &RunSpec<'a>) -> World<'a> {
        let s = spec.scenario;
        let herd_nodes: u32 = s
            .herds
            .iter()
            .map(|h| match h {
                Herd::NewCerts { count, .. } => *count,
                _ => 0,
            })
            .sum();
        let capacity = spec.nodes.saturating_add(herd_nodes);
        let from = Time::ZERO.plus(s.warmup);
        World {
            scenario: s,
            now: Time::ZERO,
            end: Time::ZERO.plus(s.duration),
            events: Events::default(),
            nodes: fleet::build(spec.nodes, capacity, s.fleet.environments.len()),
            initial_nodes: spec.nodes,
            next_new: spec.nodes,
            masters: (0..spec.masters)
                .map(|_| SimMaster::new(s.masters.cores, s.masters.background_load, from))
                .collect(),
            rng: Streams::new(spec.seed),
            compile_time: s.compile.sampler(),
            metrics: Metrics::with_capacity(from, expected_changes(s, spec.nodes)),
            interval: match spec.policy {
                Policy::OnDemand => s.agents.interval,
                Policy::Queue => s.sync_interval(),
            },
            fact_timer: vec![Time::NEVER; capacity as usize],
            completions: Vec::new(),
        }
    }

    /// Nodes that collect every export: the last ones of the initial fleet.
    pub fn collectors(&self) -> Range<u32> {
        self.initial_nodes - self.scenario.exports.collectors..self.initial_nodes
    }

    /// Draws a compile's CPU seconds.
    pub fn draw_compile(&mut self) -> f64 {
        self.compile_time.draw(&mut self.rng.compile)
    }

    /// Starts a compile on master `m` for `key`, scheduling its completion.
    pub fn start_compile(&mut self, m: u32, key: u32) {
        let work = self.draw_compile();
        let mut out = std::mem::take(&mut self.completions);
        self.masters[m as usize].start(self.now, key, work, &mut out);
        for (at, generation, key) in out.drain(..) {
            self.events.at(at, Event::Complete(m, generation, key));
        }
        self.completions = out;
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

    fn alive_count(&self) -> u32 {
        self.next_new
    }

    /// A uniformly chosen node among those alive, drawn from the stream
    /// of `event`.
    fn random_node(&mut self, event: Event) -> u32 {
        let alive = self.alive_count();
        self.stream(event).random_range(0..alive)
    }

    /// The random stream that drives `event`'s times and nodes.
    fn stream(&mut self, event: Event) -> &mut ChaCha8Rng {
        match event {
            Event::Export => &mut self.rng.exports,
            Event::UnusedFact => &mut self.rng.noise,
            Event::External => &mut self.rng.external,
            _ => &mut self.rng.churn,
        }
    }

    /// Schedules the next event of a fleet-wide Poisson stream.
    fn schedule_stream(&mut self, per_node_day: f64, nodes: u32, event: Event) {
        let rate = per_node_day * f64::from(nodes) / DAY;
        if rate <= 0.0 {
            return;
        }
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

/// About how many catalog changes a run will see, to size the sample
/// buffers once instead of growing them (capped: a guess, not a limit).
fn expected_changes(s: &Scenario, nodes: u32) -> usize {
    let days = s.duration.saturating_sub(s.warmup).as_secs_f64() / DAY;
    let per_node_day = s.facts.used_changes_per_node_day + s.external.changes_per_node_day;
    let n = f64::from(nodes) * per_node_day * days * 1.1;
    (n as usize).min(4_000_000)
}

/// Runs one simulation.
///
/// Fails only if the scenario's core configuration is refused by the core
/// (a scenario loaded with [`Scenario::load`] has been checked already).
pub fn run(spec: &RunSpec) -> Result<RunResult, CoreError> {
    let s = spec.scenario;
    let mut w = World::new(spec);
    let mut model: Box<dyn Model> = match spec.policy {
        Policy::OnDemand => Box::new(OnDemandModel::new(&w)),
        Policy::Queue => Box::new(QueueModel::new(&mut w, spec.seed)?),
    };
    schedule_start(&mut w, spec.policy, model.unused_facts_matter(s));
    let mut little = LittleMeter::default();

    while let Some((t, event)) = w.events.next_until(w.end) {
        little.advance(&w, model.as_ref(), t);
        w.now = t;
        handle(&mut w, model.as_mut(), event);
        model.settle(&mut w);
    }
    little.advance(&w, model.as_ref(), w.end);
    w.now = w.end;
    model.give_back(&mut w);
    let end = w.end;
    for n in &w.nodes {
        for stage in [&n.unseen, &n.visible, &n.included] {
            w.metrics.censored(stage, end, false);
        }
        w.metrics.censored(&n.compiled, end, true);
    }
    Ok(finish(w, model.as_ref(), spec, little))
}

/// Schedules the first event of every stream.
fn schedule_start(w: &mut World, policy: Policy, unused_matter: bool) {
    let s = w.scenario;
    let nodes = w.initial_nodes;
    if let Some(_interval) = w.interval {
        let splay = s.agents.splay.as_secs_f64();
        for n in 0..nodes {
            let phase = if splay > 0.0 {
                w.rng.agents.random::<f64>() * splay
            } else {
                0.0
            };
            w.schedule_run(n, Time::from_secs_f64(phase));
        }
    }
    match s.facts.model {
        ChurnModel::Open => {
            w.schedule_stream(s.facts.used_changes_per_node_day, nodes, Event::UsedFact)
        }
        ChurnModel::Closed => {
            for n in 0..nodes {
                w.schedule_node_fact(n);
            }
        }
    }
    w.schedule_stream(s.external.changes_per_node_day, nodes, Event::External);
    if unused_matter {
        w.schedule_stream(
            s.facts.unused_changes_per_node_day,
            nodes,
            Event::UnusedFact,
        );
    }
    w.schedule_stream(
        s.exports.changes_per_exporter_day,
        s.exports.exporters,
        Event::Export,
    );
    for (i, d) in s.deploys.iter().enumerate() {
        w.events
            .at(Time::ZERO.plus(d.at), Event::Deploy(i as u32, 1));
    }
    for (i, h) in s.herds.iter().enumerate() {
        let at = Time::ZERO.plus(h.at());
        match h {
            Herd::NewCerts { count, window, .. } => {
                let mut times: Vec<f64> = (0..*count)
                    .map(|_| w.rng.herds.random::<f64>() * window.as_secs_f64())
                    .collect();
                times.sort_by(f64::total_cmp);
                for dt in times {
                    w.events
                        .at(at.plus(Duration::from_secs_f64(dt)), Event::NewCert);
                }
            }
            Herd::SynchronizedCron { .. } => w.events.at(at, Event::Cron(i as u32)),
            Herd::MasterOutage {
                master, duration, ..
            } => {
                if (*master as usize) < w.masters.len() {
                    w.events.at(at, Event::MasterDown(*master));
                    w.events.at(at.plus(*duration), Event::MasterUp(*master));
                }
            }
        }
    }
    // Load averages matter only to the queue's load gate.
    if policy == Policy::Queue && s.queue.core.gate.max_load_per_core > 0.0 {
        w.events
            .at(Time::from_secs(LOAD_TICK_SECS), Event::LoadTick);
    }
    w.events.at(Time::ZERO, Event::Sample);
}

fn handle(w: &mut World, model: &mut dyn Model, event: Event) {
    let s = w.scenario;
    let now = w.now;
    match event {
        Event::Run(n) => {
            if w.nodes[n as usize].next_run != now {
                return; // rescheduled (a cron herd)
            }
            if let Some(interval) = w.interval {
                w.schedule_run(n, now.plus(interval));
            }
            model.run(w, n);
        }
        Event::Retry(n) => model.run(w, n),
        Event::UsedFact => {
            let n = w.random_node(event);
            count_fact(w, true);
            model.fact_changed(w, n, Some(Change::new(now, false)));
            w.schedule_stream(
                s.facts.used_changes_per_node_day,
                w.alive_count(),
                Event::UsedFact,
            );
        }
        Event::UnusedFact => {
            let n = w.random_node(event);
            count_fact(w, false);
            model.fact_changed(w, n, None);
            w.schedule_stream(
                s.facts.unused_changes_per_node_day,
                w.alive_count(),
                Event::UnusedFact,
            );
        }
        Event::External => {
            let n = w.random_node(event);
            if w.metrics.counts(now) {
                w.metrics.churn.external += 1;
            }
            // on the server side already, but nothing tells pcq: the next
            // compile of the node, whatever its reason, picks it up
            w.nodes[n as usize].visible.push(Change::new(now, false));
            w.schedule_stream(
                s.external.changes_per_node_day,
                w.alive_count(),
                Event::External,
            );
        }
        Event::NodeFact(n) => {
            if w.fact_timer[n as usize] != now {
                return;
            }
            w.fact_timer[n as usize] = Time::NEVER;
            count_fact(w, true);
            model.fact_changed(w, n, Some(Change::new(now, false)));
        }
        Event::Export => {
            let n = w.rng.exports.random_range(0..s.exports.exporters.max(1));
            if w.metrics.counts(now) {
                w.metrics.churn.exports += 1;
            }
            model.fact_changed(w, n, Some(Change::new(now, true)));
            w.schedule_stream(
                s.exports.changes_per_exporter_day,
                s.exports.exporters,
                Event::Export,
            );
        }
        Event::Deploy(i, nth) => {
            let d = &s.deploys[i as usize];
            let env = s
                .fleet
                .environments
                .iter()
                .position(|e| *e == d.environment)
                .unwrap_or(0);
            for node in w
                .nodes
                .iter_mut()
                .filter(|n| n.alive && usize::from(n.env) == env)
            {
                if w.rng.deploys.random::<f64>() < d.affects {
                    node.visible.push(Change::new(now, false));
                }
            }
            model.deployed(w, env);
            if let Some(every) = d.every {
                if d.times == 0 || nth < d.times {
                    w.events.at(now.plus(every), Event::Deploy(i, nth + 1));
                }
            }
        }
        Event::NewCert => {
            let n = w.next_new;
            if (n as usize) < w.nodes.len() {
                w.next_new += 1;
                let node = &mut w.nodes[n as usize];
                node.alive = true;
                node.visible.push(Change::new(now, false));
                model.node_joined(w, n);
                if w.interval.is_some() {
                    w.schedule_run(n, now);
                }
            }
        }
        Event::Cron(_) => {
            if w.interval.is_some() {
                for n in 0..w.next_new {
                    w.schedule_run(n, now);
                }
            }
        }
        Event::MasterDown(m) => {
            w.masters[m as usize].up = false;
            let keys = w.masters[m as usize].kill_all(now);
            model.master_down(w, m, keys);
        }
        Event::MasterUp(m) => {
            w.masters[m as usize].up = true;
            model.master_up(w, m);
        }
        Event::Complete(m, generation, key) => {
            let mut out = std::mem::take(&mut w.completions);
            let done = w.masters[m as usize].complete(now, generation, key, &mut out);
            for (at, g, k) in out.drain(..) {
                w.events.at(at, Event::Complete(m, g, k));
            }
            w.completions = out;
            if done {
                model.complete(w, m, key);
            }
        }
        Event::Timeout(r) => model.timeout(w, r),
        Event::LoadTick => {
            for m in &mut w.masters {
                m.tick_load();
            }
            model.load_tick(w);
            w.events.at(
                now.plus(Duration::from_secs(LOAD_TICK_SECS)),
                Event::LoadTick,
            );
        }
        Event::Wakeup => model.wakeup(w),
        Event::Notify(n) => model.notify(w, n),
        Event::Sample => {
            let (oldest, waiting) = model.sample(w);
            let running = w.masters.iter().map(|m| m.running() as u64).sum();
            w.metrics.series.push(Point {
                t: now.as_secs_f64(),
                oldest_age: oldest,
                waiting,
                running,
            });
            w.events.at(now.plus(s.sample_interval), Event::Sample);
        }
    }
}

fn count_fact(w: &mut World, used: bool) {
    if w.metrics.counts(w.now) {
        if used {
            w.metrics.churn.used_facts += 1;
        } else {
            w.metrics.churn.unused_facts += 1;
        }
    }
}

/// Time-average of the urgent lane's length, for Little's law.
#[derive(Default)]
struct LittleMeter {
    area: f64,
    last: Option<Time>,
}

impl LittleMeter {
    fn advance(&mut self, w: &World, model: &dyn Model, to: Time) {
        let from = self.last.unwrap_or(w.metrics.from).max(w.metrics.from);
        if to > from {
            self.area += model.urgent_depth() as f64 * to.since(from).as_secs_f64();
        }
        self.last = Some(to.max(self.last.unwrap_or(to)));
    }
}

fn finish(mut w: World, model: &dyn Model, spec: &RunSpec, little: LittleMeter) -> RunResult {
    let s = spec.scenario;
    let measured = w.end.since(w.metrics.from).as_secs_f64().max(1e-9);
    let slots = f64::from(s.masters.slots);
    let end = w.end;
    let per_master: Vec<f64> = w
        .masters
        .iter_mut()
        .map(|m| m.busy_seconds(end) / (slots * measured))
        .collect();
    let utilization = per_master.iter().sum::<f64>() / per_master.len().max(1) as f64;
    let m = &mut w.metrics;
    let total_fact = m.churn.used_facts + m.churn.unused_facts;
    if !model.unused_facts_matter(s) {
        // The stream of unused-fact changes was not simulated (it changes
        // nothing under this policy): report its expected count.
        let expected = s.facts.unused_changes_per_node_day * f64::from(w.next_new) * measured / DAY;
        m.churn.unused_facts = expected.round() as u64;
    }
    let total_fact = total_fact.max(m.churn.used_facts + m.churn.unused_facts);
    m.churn.used_share = if total_fact > 0 {
        m.churn.used_facts as f64 / total_fact as f64
    } else {
        0.0
    };
    m.failures.total = m.failures.timeouts + m.failures.rejected + m.failures.errors;
    m.failures.ratio = if m.runs > 0 {
        m.failures.total as f64 / m.runs as f64
    } else {
        0.0
    };
    let c = &mut m.compiles;
    c.per_hour = c.total as f64 / (measured / 3600.0);
    c.wasted_ratio = if c.total > 0 {
        (c.unchanged + c.abandoned + c.lost) as f64 / c.total as f64
    } else {
        0.0
    };
    let from_secs = m.from.as_secs_f64();
    let mut oldest: Vec<f64> = m
        .series
        .iter()
        .filter(|p| p.t >= from_secs)
        .map(|p| p.oldest_age)
        .collect();
    let little = model.urgent_waits().map(|(count, sum)| Little {
        l: little.area / measured,
        lambda: count as f64 / measured,
        w: if count > 0 { sum / count as f64 } else { 0.0 },
    });
    let m = &mut w.metrics;
    RunResult {
        scenario: s.name.clone(),
        policy: spec.policy,
        seed: spec.seed,
        masters: spec.masters,
        nodes: spec.nodes,
        measured_hours: measured / 3600.0,
        staleness_compiled: Summary::of(&mut m.compiled),
        staleness_applied: Summary::of(&mut m.applied),
        queue_wait: Summary::of(&mut m.waits),
        agent_runs: m.runs,
        failed_runs: m.failures,
        utilization,
        utilization_per_master: per_master,
        compiles: m.compiles,
        node_cpu_seconds: m.node_cpu,
        node_cpu_per_node_day: m.node_cpu / f64::from(w.next_new.max(1)) / (measured / DAY),
        oldest_age: Summary::of(&mut oldest),
        churn: m.churn,
        little,
        events: w.events.handled(),
        series: std::mem::take(&mut m.series),
    }
}
