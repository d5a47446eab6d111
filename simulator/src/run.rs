//! One simulated run: the event loop, and the result it reports.
//!
//! The loop builds the [`World`] and the policy's model, then hands each
//! event to the world first and to the model after; when the time is up it
//! summarizes what the world measured into a [`RunResult`].

use scheduler::core::{CoreError, Time};

use crate::engine::Event;
use crate::fleet::Change;
use crate::master::Work;
use crate::metrics::{Little, RunResult, Summary};
use crate::policy::{Model, Policy};
use crate::pool::Borrower;
use crate::scenario::Scenario;
use crate::world::{World, DAY};

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

/// Runs one simulation.
///
/// Fails only if the scenario's core configuration is refused by the core
/// (a scenario loaded with [`Scenario::load`] has been checked already).
pub fn run(spec: &RunSpec) -> Result<RunResult, CoreError> {
    let s = spec.scenario;
    let policy = spec.policy.description();
    let interval = (policy.node_interval)(s);
    let mut w = World::new(s, spec.masters, spec.nodes, spec.seed, interval);
    let mut model = (policy.build)(&mut w, spec.seed)?;
    w.schedule_start(model.unused_facts_matter(s), model.load_matters(s));
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
    w.censor_pending();
    Ok(finish(w, model.as_ref(), spec, little))
}

/// One event: the world's part, then the model's.
fn handle(w: &mut World, model: &mut dyn Model, event: Event) {
    let now = w.now;
    match event {
        Event::Run(n) => {
            if w.agent_run_due(n) {
                model.run(w, n);
            }
        }
        Event::Retry(n) => model.run(w, n),
        Event::UsedFact => {
            let n = w.random_node(event);
            w.count_fact(true);
            model.fact_changed(w, n, Some(Change::new(now, false)));
            w.schedule_next(event);
        }
        Event::UnusedFact => {
            let n = w.random_node(event);
            w.count_fact(false);
            model.fact_changed(w, n, None);
            w.schedule_next(event);
        }
        Event::External => w.external_change(),
        Event::NodeFact(n) => {
            if w.node_fact_due(n) {
                model.fact_changed(w, n, Some(Change::new(now, false)));
            }
        }
        Event::Export => {
            let n = w.random_exporter();
            model.fact_changed(w, n, Some(Change::new(now, true)));
            w.schedule_next(event);
        }
        Event::Deploy(i, nth) => {
            let deployed = w.deploy(i);
            model.deployed(w, &deployed);
            w.schedule_next_deploy(i, nth);
        }
        Event::NewCert => {
            if let Some(n) = w.join_new_node() {
                model.node_joined(w, n);
                w.run_now(n);
            }
        }
        Event::Cron(_) => w.synchronized_cron(),
        Event::MasterDown(m) => {
            let (running, waiting) = w.master_down(m);
            model.master_down(w, m, running, waiting);
        }
        Event::MasterUp(m) => {
            w.master_up(m);
            model.master_up(w, m);
        }
        Event::Complete(m, generation, work) => {
            if let Some(started) = w.work_done(m, generation, work) {
                match work {
                    Work::Compile(key) => {
                        model.complete(w, m, key, started);
                        release(w, model, m);
                    }
                    Work::File(node) => {
                        release(w, model, m);
                        w.file_done(node);
                    }
                }
            }
        }
        Event::Timeout(r) => model.timeout(w, r),
        Event::LoadTick => {
            w.tick_loads();
            model.load_tick(w);
            w.schedule_load_tick();
        }
        Event::Wakeup => model.wakeup(w),
        Event::Notify(n) => model.notify(w, n),
        Event::Sample => {
            let (oldest, waiting) = model.sample(w);
            w.record_sample(oldest, waiting);
        }
    }
}

/// Master `m`'s JRuby is back: whoever's turn it is gets it.
fn release(w: &mut World, model: &mut dyn Model, m: u32) {
    match w.pools[m as usize].release() {
        Some(Borrower::Catalog(key)) => model.granted(w, m, key),
        Some(Borrower::File(node)) => w.start_file(m, node),
        None => {}
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

/// The run's result: what the world measured, summarized over the
/// measured window.
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
    let alive = w.alive_count();
    let m = &mut w.metrics;
    let total_fact = m.churn.used_facts + m.churn.unused_facts;
    if !model.unused_facts_matter(s) {
        // The stream of unused-fact changes was not simulated (it changes
        // nothing under this policy): report its expected count.
        let expected = s.facts.unused_changes_per_node_day * f64::from(alive) * measured / DAY;
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
        request_latency: Summary::of(&mut m.latencies),
        file_wait: Summary::of(&mut m.file_waits),
        apply_time: Summary::of(&mut m.apply_times),
        agent_runs: m.runs,
        failed_runs: m.failures,
        utilization,
        utilization_per_master: per_master,
        compiles: m.compiles,
        node_cpu_seconds: m.node_cpu,
        node_cpu_per_node_day: m.node_cpu / f64::from(alive.max(1)) / (measured / DAY),
        oldest_age: Summary::of(&mut oldest),
        churn: m.churn,
        little,
        events: w.events.handled(),
        series: std::mem::take(&mut m.series),
    }
}
