//! The simulator's master model set against a real one: the experiments
//! `pcq calibrate` runs on Puppet Server (a herd, closed loops), run on the
//! simulated master; the fit of `[compile]` and `masters.cores` to a
//! measured capacity curve; and the check of every measured run against
//! its prediction.
//!
//! The simulated master is the one every run uses ([`SimMaster`]:
//! processor sharing over `masters.cores`) behind the on-demand model's
//! pool: `masters.slots` JRubies and a FIFO borrow queue. A request's
//! latency is its borrow wait plus its compile, as an agent sees it.
//!
//! Why fit `cores`: a master does not reach its core count. The JVM's
//! garbage collector, Jetty and the OS take their share, so on a 2-core
//! machine three JRubies together compile about as fast as 1.6 cores
//! would. Guessing the core count made a herd's predicted latencies about
//! half the measured; the fitted value comes within a few percent.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scheduler::calibration::{Experiment, Measurement, Run};
use scheduler::core::Time;

use crate::distribution::CompileTime;
use crate::master::{Completion, SimMaster, Work};
use crate::metrics::Summary;
use crate::pool::{Borrower, JRubyPool};

/// Replications averaged per prediction.
pub const REPLICATIONS: u32 = 40;

/// Replications per trial while fitting (many trials; common random
/// numbers keep the comparison between trials fair).
const FIT_REPLICATIONS: u32 = 12;

/// What a run of an experiment gives: the figures a table compares.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    /// Catalogs per second, first request to last catalog.
    pub throughput: f64,
    /// Latency, seconds: mean, median, 95th percentile, largest.
    pub mean: f64,
    /// Median latency.
    pub p50: f64,
    /// 95th percentile latency.
    pub p95: f64,
    /// Largest latency.
    pub max: f64,
}

impl Figures {
    /// A measured run's figures.
    pub fn of(run: &Run) -> Figures {
        let latency = Summary::of(&mut run.latencies.clone());
        Figures {
            throughput: run.throughput(),
            mean: latency.mean,
            p50: latency.p50,
            p95: latency.p95,
            max: latency.max,
        }
    }

    fn each(&self) -> [f64; 5] {
        [self.throughput, self.mean, self.p50, self.p95, self.max]
    }

    /// The median of each figure over `runs` (one experiment repeated:
    /// a machine's speed drifts from one minute to the next, and the
    /// median of the repetitions says what is typical of it).
    pub fn median_of(runs: &[&Run]) -> Figures {
        let each: Vec<[f64; 5]> = runs.iter().map(|r| Figures::of(r).each()).collect();
        let median = |i: usize| {
            let mut v: Vec<f64> = each.iter().map(|e| e[i]).collect();
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => 0.0,
                n if n % 2 == 1 => v[n / 2],
                n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
            }
        };
        Figures {
            throughput: median(0),
            mean: median(1),
            p50: median(2),
            p95: median(3),
            max: median(4),
        }
    }

    /// Names of the figures, in [`Figures::each`]'s order.
    pub const NAMES: [&'static str; 5] = ["throughput/s", "mean s", "p50 s", "p95 s", "max s"];
}

/// A master as the model sees it.
#[derive(Clone, Debug)]
pub struct MasterModel {
    /// Compile time on an idle master.
    pub compile: CompileTime,
    /// JRubies.
    pub slots: u32,
    /// Parallelism reached (`masters.cores`).
    pub cores: f64,
    /// Runnable processes besides compiles (`masters.background_load`):
    /// what makes a real master's throughput rise slowly towards its
    /// ceiling rather than stop at it.
    pub background: f64,
}

/// A simulated master behind its JRuby pool, for one experiment.
struct Pool<'a> {
    master: SimMaster,
    sampler: crate::distribution::Sampler,
    jrubies: JRubyPool,
    /// When each request was sent, by key.
    issued: Vec<Time>,
    /// Completions to schedule.
    out: Vec<Completion>,
    rng: &'a mut ChaCha8Rng,
}

impl Pool<'_> {
    /// A request reaches the pool: a free JRuby compiles it, or it waits.
    fn send(&mut self, now: Time) {
        let key = self.issued.len() as u32;
        self.issued.push(now);
        if self.jrubies.borrow(now, Borrower::Catalog(key)) {
            self.start(now, key);
        }
    }

    fn start(&mut self, now: Time, key: u32) {
        let work = self.sampler.draw(self.rng);
        self.master
            .start(now, Work::Compile(key), work, &mut self.out);
    }

    /// The completion event fired: the request's latency if it was
    /// current (the JRuby then takes the next waiting request).
    fn complete(&mut self, (at, generation, work): Completion) -> Option<f64> {
        self.master.complete(at, generation, work, &mut self.out)?;
        if let Some(Borrower::Catalog(next)) = self.jrubies.release() {
            self.start(at, next);
        }
        let Work::Compile(key) = work else {
            return None;
        };
        Some(at.since(self.issued[key as usize]).as_secs_f64())
    }
}

/// Runs `experiment` once on a simulated master.
pub fn simulate(model: &MasterModel, experiment: Experiment, rng: &mut ChaCha8Rng) -> Run {
    let (clients, total, closed) = match experiment {
        Experiment::Herd { requests } => (requests, requests, false),
        Experiment::ClosedLoop {
            concurrency,
            requests,
        } => (concurrency.min(requests), requests, true),
    };
    let mut pool = Pool {
        master: SimMaster::new(model.cores, model.background, Time::ZERO),
        sampler: model.compile.sampler(),
        jrubies: JRubyPool::new(model.slots),
        issued: Vec::with_capacity(total as usize),
        out: Vec::new(),
        rng,
    };
    let mut events: BinaryHeap<Reverse<Completion>> = BinaryHeap::new();
    let mut latencies = Vec::with_capacity(total as usize);
    let mut end = Time::ZERO;
    for _ in 0..clients {
        pool.send(Time::ZERO);
    }
    events.extend(pool.out.drain(..).map(Reverse));
    while let Some(Reverse(completion)) = events.pop() {
        // a stale event (the master's speed changed since) gives nothing
        if let Some(latency) = pool.complete(completion) {
            latencies.push(latency);
            end = completion.0;
            if closed && pool.issued.len() < total as usize {
                pool.send(end);
            }
        }
        events.extend(pool.out.drain(..).map(Reverse));
    }
    Run {
        experiment,
        curve: false,
        seconds: end.as_secs_f64(),
        latencies,
    }
}

/// The median of each figure over [`REPLICATIONS`] runs of `experiment`
/// (seeded: the same inputs predict the same).
pub fn predict(model: &MasterModel, experiment: Experiment, seed: u64) -> Figures {
    predict_with(model, experiment, seed, REPLICATIONS)
}

/// The same with `replications` runs.
fn predict_with(
    model: &MasterModel,
    experiment: Experiment,
    seed: u64,
    replications: u32,
) -> Figures {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let runs: Vec<Run> = (0..replications)
        .map(|_| simulate(model, experiment, &mut rng))
        .collect();
    // the median, as of the measured repetitions: like against like
    Figures::median_of(&runs.iter().collect::<Vec<_>>())
}

/// An experiment as measured: the median figures of its repetitions.
#[derive(Clone, Debug)]
pub struct Measured {
    /// The experiment.
    pub experiment: Experiment,
    /// Part of the capacity curve.
    pub curve: bool,
    /// How many times it ran.
    pub repeats: usize,
    /// The median of each figure over the repetitions.
    pub figures: Figures,
}

/// The runs grouped by experiment (and curve or not), in the order each
/// first ran.
pub fn measured<'a>(runs: impl IntoIterator<Item = &'a Run>) -> Vec<Measured> {
    let mut groups: Vec<(Experiment, bool, Vec<&Run>)> = Vec::new();
    for run in runs {
        match groups
            .iter_mut()
            .find(|(e, c, _)| *e == run.experiment && *c == run.curve)
        {
            Some((_, _, group)) => group.push(run),
            None => groups.push((run.experiment, run.curve, vec![run])),
        }
    }
    groups
        .into_iter()
        .map(|(experiment, curve, group)| Measured {
            experiment,
            curve,
            repeats: group.len(),
            figures: Figures::median_of(&group),
        })
        .collect()
}

/// One experiment's measured figures beside its prediction.
#[derive(Clone, Debug)]
pub struct Row {
    /// The experiment.
    pub experiment: Experiment,
    /// Part of the capacity curve the model was fitted to.
    pub curve: bool,
    /// How many times it ran (the measured figures are the medians).
    pub repeats: usize,
    /// What the server did.
    pub measured: Figures,
    /// What the model says.
    pub predicted: Figures,
}

impl Row {
    /// `predicted / measured - 1` per figure, in [`Figures::NAMES`] order.
    pub fn errors(&self) -> [f64; 5] {
        let (m, p) = (self.measured.each(), self.predicted.each());
        // a figure measured as 0 cannot be predicted: it counts as off
        std::array::from_fn(|i| {
            if m[i] > 0.0 {
                p[i] / m[i] - 1.0
            } else {
                f64::INFINITY
            }
        })
    }

    /// The largest error, in absolute value.
    pub fn worst(&self) -> f64 {
        self.errors().iter().fold(0.0f64, |w, e| w.max(e.abs()))
    }
}

/// Every experiment of `measurement` predicted by `model`.
pub fn check(model: &MasterModel, measurement: &Measurement) -> Vec<Row> {
    measured(&measurement.runs)
        .into_iter()
        .enumerate()
        .map(|(i, m)| Row {
            experiment: m.experiment,
            curve: m.curve,
            repeats: m.repeats,
            measured: m.figures,
            predicted: predict(model, m.experiment, 7 + i as u64),
        })
        .collect()
}

/// The table `pcq-sim check` and `pcq-sim fit` print: one line per run
/// and figure.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<58} {:<13} {:>10} {:>10} {:>8}\n",
        "run", "figure", "measured", "predicted", "error"
    );
    for row in rows {
        let (m, p, e) = (row.measured.each(), row.predicted.each(), row.errors());
        for i in 0..5 {
            let mut label = String::new();
            if i == 0 {
                label = row.experiment.label();
                if row.repeats > 1 {
                    label += &format!(" (median of {})", row.repeats);
                }
                if row.curve {
                    label += " [fitted]";
                }
            }
            let _ = writeln!(
                out,
                "{label:<58} {:<13} {:>10.3} {:>10.3} {:>+7.1}%",
                Figures::NAMES[i],
                m[i],
                p[i],
                e[i] * 100.0
            );
        }
    }
    out
}

/// The fitted model and how well it fits the curve it was fitted to.
#[derive(Clone, Debug)]
pub struct Fit {
    /// The model.
    pub model: MasterModel,
    /// Single compiles kept (concurrency 1), for an empirical
    /// distribution's CSV.
    pub samples: Vec<f64>,
    /// The capacity curve beside the fitted model's predictions.
    pub rows: Vec<Row>,
}

/// Why a measurement cannot be fitted.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// The capacity curve's first point is missing.
    #[error("the measurement has no closed loop at concurrency 1 (single compiles): run pcq calibrate without --no-curve")]
    NoSingle,
    /// Too few compiles to say anything.
    #[error("only {0} single compiles measured: at least 5 are needed")]
    TooFew(usize),
    /// Nonsense in the file.
    #[error("the measurement says {0} JRubies: at least 1 is needed")]
    NoJrubies(u32),
}

/// Fits the master model to a measured capacity curve:
///
/// - `masters.slots`: the JRubies;
/// - `[compile]`: the mean of the single compiles (concurrency 1); their
///   shape a lognormal whose p95 is fitted to the whole curve (one at a
///   time, compiles vary more than the model's shared CPU lets them under
///   load: pauses that stall one compile then stall them all), or, when no
///   lognormal has their shape, their empirical distribution (a constant
///   when they do not vary);
/// - `masters.cores`: the parallelism that makes the simulated curve match
///   the measured one best.
///
/// "Best" is the least sum, over the curve's runs and their throughput,
/// mean, p50, p95 and max latency, of the squared log ratio predicted /
/// measured; parallelism in 0.05 steps, p95 in 2.5% of the mean.
pub fn fit(measurement: &Measurement) -> Result<Fit, FitError> {
    let single = measurement.single().ok_or(FitError::NoSingle)?;
    if single.latencies.len() < 5 {
        return Err(FitError::TooFew(single.latencies.len()));
    }
    if measurement.jrubies == 0 {
        return Err(FitError::NoJrubies(0));
    }
    // every single compile of every repetition
    let samples: Vec<f64> = measurement
        .curve()
        .filter(|r| r.experiment == single.experiment)
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    let curve = measured(measurement.curve());
    let widest = curve
        .iter()
        .filter_map(|r| match r.experiment {
            Experiment::ClosedLoop { concurrency, .. } => Some(concurrency),
            Experiment::Herd { .. } => None,
        })
        .max()
        .unwrap_or(1)
        .max(measurement.jrubies);
    let mean = Summary::of(&mut samples.clone()).mean;
    let mut model = MasterModel {
        compile: distribution_of(&samples),
        slots: measurement.jrubies,
        cores: 1.0,
        background: 0.0,
    };
    // the parallelism and the background load together (a real master's
    // throughput rises slowly towards its ceiling: much background on
    // more cores, not little on few), with the single compiles' spread;
    // then the spread (a lognormal's p95 over its mean); then both again,
    // near where they were
    let grid = |from: f64, to: f64, step: f64| -> Vec<f64> {
        let n = ((to - from) / step).round().max(0.0) as u32;
        (0..=n).map(|i| from + f64::from(i) * step).collect()
    };
    let pairs = |cores: &[f64], backgrounds: &[f64]| -> Vec<(f64, f64)> {
        cores
            .iter()
            .flat_map(|&c| backgrounds.iter().map(move |&b| (c, b)))
            .collect()
    };
    let set = |m: &mut MasterModel, (c, b): (f64, f64)| {
        m.cores = c;
        m.background = b;
    };
    let widest = f64::from(widest);
    let coarse = pairs(&grid(1.0, widest, 0.1), &grid(0.0, widest, 0.1));
    let (c, b) = best_of(&model, &curve, &coarse, set);
    set(&mut model, (c, b));
    if matches!(model.compile, CompileTime::Lognormal { .. }) {
        let spreads = grid(1.025, 2.0, 0.025);
        let spread = best_of(&model, &curve, &spreads, |m, r| {
            m.compile = lognormal(mean, r);
        });
        model.compile = lognormal(mean, spread);
        let fine = pairs(
            &grid((c - 0.3).max(1.0), (c + 0.3).min(widest), 0.05),
            &grid((b - 0.3).max(0.0), b + 0.3, 0.05),
        );
        let (c, b) = best_of(&model, &curve, &fine, set);
        set(&mut model, (c, b));
    }
    model.cores = (model.cores * 100.0).round() / 100.0;
    model.background = (model.background * 100.0).round() / 100.0;
    let curve_only = Measurement {
        runs: measurement.curve().cloned().collect(),
        ..measurement.clone()
    };
    let rows = check(&model, &curve_only);
    Ok(Fit {
        model,
        samples,
        rows,
    })
}

/// The value among `candidates` that, set into the model by `set`, makes
/// the simulated capacity curve closest to the measured one: the least sum
/// over runs and figures of the squared log ratio predicted / measured.
fn best_of<T: Copy>(
    model: &MasterModel,
    curve: &[Measured],
    candidates: &[T],
    set: impl Fn(&mut MasterModel, T),
) -> T {
    let Some(&first) = candidates.first() else {
        panic!("best_of needs candidates");
    };
    let mut best = (f64::INFINITY, first);
    let mut trial = model.clone();
    for &value in candidates {
        set(&mut trial, value);
        let mut error = 0.0;
        for (i, m) in curve.iter().enumerate() {
            let measured = m.figures.each();
            let predicted =
                predict_with(&trial, m.experiment, 7 + i as u64, FIT_REPLICATIONS).each();
            for (p, m) in predicted.iter().zip(measured) {
                if *p > 0.0 && m > 0.0 {
                    error += (p / m).ln().powi(2);
                }
            }
        }
        if error < best.0 {
            best = (error, value);
        }
    }
    best.1
}

/// A lognormal of `mean` seconds whose p95 is `spread` times the mean.
fn lognormal(mean: f64, spread: f64) -> CompileTime {
    let ms = |s: f64| Duration::from_millis((s * 1000.0).round().max(1.0) as u64);
    CompileTime::Lognormal {
        mean: ms(mean),
        p95: ms(mean * spread).max(ms(mean) + Duration::from_millis(1)),
    }
}

/// The compile-time distribution of measured single compiles.
fn distribution_of(samples: &[f64]) -> CompileTime {
    let summary = Summary::of(&mut samples.to_vec());
    let ms = |s: f64| Duration::from_millis((s * 1000.0).round().max(1.0) as u64);
    let (mean, p95) = (ms(summary.mean), ms(summary.p95));
    if p95 <= mean {
        return CompileTime::Constant { mean };
    }
    let lognormal = CompileTime::Lognormal { mean, p95 };
    match lognormal.check() {
        Ok(()) => lognormal,
        Err(_) => CompileTime::Empirical {
            csv: "compile-samples.csv".into(),
            samples: Arc::new(samples.to_vec()),
        },
    }
}

/// The `[compile]` and `[masters]` tables of a fitted model, with the fit
/// in comments: paste them into a scenario.
pub fn tables(fit: &Fit, measurement: &Measurement) -> String {
    let mut out = format!(
        "# pcq calibrate of {} at {} (environment {}), fitted by pcq-sim fit.\n",
        measurement.server, measurement.at, measurement.environment
    );
    let _ = writeln!(
        out,
        "# Warm-up: {} compiles over {:.0} s discarded (JIT).",
        measurement.warmup_requests, measurement.warmup_seconds
    );
    out += "# The capacity curve against the fitted model:\n";
    for line in table(&fit.rows).lines() {
        let _ = writeln!(out, "#   {line}");
    }
    out += "\n[compile]\n";
    match &fit.model.compile {
        CompileTime::Lognormal { mean, p95 } => {
            let _ = writeln!(
                out,
                "distribution = \"lognormal\"\nmean = \"{}\"\np95 = \"{}\"",
                humantime::format_duration(*mean),
                humantime::format_duration(*p95)
            );
        }
        CompileTime::Constant { mean } | CompileTime::Exponential { mean } => {
            let _ = writeln!(
                out,
                "distribution = \"constant\"\nmean = \"{}\"",
                humantime::format_duration(*mean)
            );
        }
        CompileTime::Empirical { csv, .. } => {
            let _ = writeln!(
                out,
                "# no lognormal has this tail: the measured compiles themselves\ndistribution = \"empirical\"\ncsv = \"{}\"",
                csv.display()
            );
        }
    }
    let _ = writeln!(
        out,
        "\n[masters]\n# how many masters the site runs: set it\ncount = 1\n# JRubies (max-active-instances)\nslots = {}\n# the parallelism this master reaches, fitted (not its core count)\ncores = {}\n# what else competes for it (GC, Jetty, TLS), fitted\nbackground_load = {}",
        fit.model.slots, fit.model.cores, fit.model.background
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constant(seconds: f64, slots: u32, cores: f64) -> MasterModel {
        MasterModel {
            compile: CompileTime::Constant {
                mean: Duration::from_secs_f64(seconds),
            },
            slots,
            cores,
            background: 0.0,
        }
    }

    #[test]
    fn a_herd_queues_behind_the_jrubies_and_shares_the_cores() {
        // 3 JRubies, 2 cores, 1 s compiles, 6 requests at once: three
        // compile together at 2/3 speed (1.5 s), then the next three
        let model = constant(1.0, 3, 2.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let run = simulate(&model, Experiment::Herd { requests: 6 }, &mut rng);
        let mut latencies = run.latencies.clone();
        latencies.sort_by(f64::total_cmp);
        assert_eq!(latencies, vec![1.5, 1.5, 1.5, 3.0, 3.0, 3.0]);
        assert_eq!(run.seconds, 3.0);
        assert_eq!(run.throughput(), 2.0);
    }

    #[test]
    fn a_closed_loop_keeps_its_clients_busy() {
        // 2 clients on 1 core: every compile at half speed, 2 s each
        let model = constant(1.0, 4, 1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let experiment = Experiment::ClosedLoop {
            concurrency: 2,
            requests: 10,
        };
        let run = simulate(&model, experiment, &mut rng);
        assert_eq!(run.latencies.len(), 10);
        assert!(run.latencies.iter().all(|&l| l == 2.0), "{run:?}");
        assert_eq!(run.seconds, 10.0);
    }

    /// A measurement a master with `cores` would give (constant 0.8 s).
    fn measured_on(cores: f64, jrubies: u32) -> Measurement {
        let truth = constant(0.8, jrubies, cores);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut runs: Vec<Run> = (1..=jrubies + 1)
            .map(|c| {
                let experiment = Experiment::ClosedLoop {
                    concurrency: c,
                    requests: 12 * c,
                };
                Run {
                    curve: true,
                    ..simulate(&truth, experiment, &mut rng)
                }
            })
            .collect();
        // the constant is a constant: give the singles some spread
        if let Some(single) = runs.first_mut() {
            for (i, l) in single.latencies.iter_mut().enumerate() {
                *l *= 1.0 + 0.01 * (i % 5) as f64;
            }
        }
        Measurement {
            server: "https://puppet:8140".into(),
            at: "now".into(),
            jrubies,
            environment: "production".into(),
            warmup_requests: 0,
            warmup_seconds: 0.0,
            runs,
        }
    }

    #[test]
    fn the_fit_finds_the_parallelism_a_server_reaches() {
        for cores in [1.6, 2.5] {
            let fit = fit(&measured_on(cores, 4)).expect("fits");
            // parallelism and background load trade off a little
            assert!(
                (fit.model.cores - cores).abs() <= 0.25 && fit.model.background <= 0.5,
                "fitted {} cores and {} background for {cores} and none",
                fit.model.cores,
                fit.model.background
            );
            assert_eq!(fit.model.slots, 4);
            assert!(matches!(fit.model.compile, CompileTime::Lognormal { .. }));
            assert!(fit.rows.iter().all(|r| r.worst() < 0.1), "{:?}", fit.rows);
            let tables = tables(&fit, &measured_on(cores, 4));
            assert!(tables.contains("slots = 4"), "{tables}");
            assert!(tables.contains(&format!("cores = {}", fit.model.cores)));
        }
    }

    #[test]
    fn a_measurement_without_single_compiles_is_refused() {
        let mut m = measured_on(2.0, 2);
        m.runs.remove(0);
        assert!(matches!(fit(&m), Err(FitError::NoSingle)));
    }

    #[test]
    fn a_wrong_model_shows_in_the_check() {
        let m = measured_on(1.5, 3);
        let right = constant(0.8, 3, 1.5);
        let wrong = constant(0.8, 3, 3.0);
        let worst = |model: &MasterModel| {
            check(model, &m)
                .iter()
                .map(Row::worst)
                .fold(0.0f64, f64::max)
        };
        assert!(worst(&right) < 0.06, "{}", worst(&right));
        assert!(worst(&wrong) > 0.3, "{}", worst(&wrong));
    }
}
