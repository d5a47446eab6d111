//! `pcq calibrate`: measures what one Puppet Server can compile, for the
//! simulator's master model (`pcq-sim fit`) and to check its predictions
//! (`pcq-sim check`).
//!
//! It sends real catalog requests (`POST /puppet/v4/catalog`, the facts of
//! one node given a distinct certname and host name per request, nothing
//! stored in PuppetDB), each on a new connection as every agent run opens
//! one (a herd's TLS handshakes load the master too), and times each from
//! sent to catalog received, as an agent would see it:
//!
//! 1. warm-up: closed loops that keep every JRuby busy, until the median
//!    latency stops falling (a fresh JVM compiles several times slower for
//!    its first minute); those compiles are discarded;
//! 2. the capacity curve: closed loops at concurrency 1, 2, ... up to the
//!    JRuby count and one past it;
//! 3. any herds (`--herd N`: N requests at the same instant) and closed
//!    loops (`--loop C`) asked for, to check a fitted model against;
//!
//! 2 and 3 in `--repeat` interleaved rounds, each in its own (seeded)
//! order, so that neither a slow minute of the machine nor the run before
//! it makes one point; and each from an idle server: every JRuby free,
//! then `--settle` more (a herd leaves garbage for the JVM to collect).
//!
//! Any failed compile stops it: a measurement with failures in it would
//! fit a master that does not exist.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use super::args::CalibrateArgs;
use super::render::emit;
use crate::calibration::{Experiment, Measurement, Run, MAX_JRUBIES};
use crate::daemon::analyze::verify;
use crate::daemon::backend::puppetserver::PuppetServer;
use crate::daemon::backend::Job;
use crate::daemon::certname::Certname;
use crate::daemon::trusted::trusted_facts;
use crate::private_file;
use crate::puppet_conf::PuppetSettings;

/// Runs the measurement and writes it.
pub async fn calibrate(args: CalibrateArgs) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !args.nodes.contains("{}") {
        bail!("--nodes {:?} has no {{}} for the number", args.nodes);
    }
    let puppet = PuppetSettings::discover();
    let facts = match &args.facts {
        Some(file) => {
            let text =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            verify::facts_of(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?
        }
        None => this_hosts_facts().await?,
    };
    let url = &args.puppet.server;
    let server = PuppetServer::agent_like(url, &args.puppet.identity(&puppet.ssldir))?;
    let jrubies = match args.jrubies {
        Some(j) => j,
        None => jrubies_of(&server).await?,
    };
    let load = Arc::new(Load {
        server,
        facts,
        environment: args.environment.clone(),
        nodes: args.nodes.clone(),
        timeout: args.timeout,
        next: AtomicU32::new(0),
    });
    say(&format!(
        "pcq calibrate: {} ({jrubies} JRubies), environment {}, nodes {}",
        url, args.environment, args.nodes
    ));

    let warm_started = Instant::now();
    let (warmup_requests, settled) = warm_up(&load, jrubies, args.warmup_max).await?;
    let warmup_seconds = warm_started.elapsed().as_secs_f64();
    say(&format!(
        "warm-up: {warmup_requests} compiles in {warmup_seconds:.0} s{}",
        if settled {
            ""
        } else {
            " (latency still falling at --warmup-max: measure again later)"
        }
    ));

    // (experiment, part of the curve)
    let mut experiments = Vec::new();
    if !args.no_curve {
        experiments.extend((1..=jrubies + 1).map(|c| {
            let requests = c * args.requests_per_client;
            (
                Experiment::ClosedLoop {
                    concurrency: c,
                    requests,
                },
                true,
            )
        }));
    }
    experiments.extend(args.loops.iter().map(|&c| {
        let c = c.max(1);
        let requests = c * args.requests_per_client;
        (
            Experiment::ClosedLoop {
                concurrency: c,
                requests,
            },
            false,
        )
    }));
    experiments.extend(
        args.herd
            .iter()
            .map(|&n| (Experiment::Herd { requests: n.max(1) }, false)),
    );
    // each round in its own order: what runs before an experiment moves
    // its figures (which JRubies are hot, what the JVM just did), and
    // shuffled rounds spread that over every experiment instead of
    // always biasing the same one
    let mut order = ChaCha8Rng::seed_from_u64(0x9e37_79b9);
    let rounds: Vec<(Experiment, bool)> = (0..args.repeat)
        .flat_map(|_| {
            let mut round = experiments.clone();
            round.shuffle(&mut order);
            round
        })
        .collect();
    let mut runs = Vec::new();
    for (experiment, curve) in rounds {
        settle(&load.server, args.settle).await;
        let run = Run {
            curve,
            ..load.run(experiment).await?
        };
        say(&format!(
            "{}: {:.2} catalogs/s, latency mean {:.2} s, max {:.2} s",
            experiment.label(),
            run.throughput(),
            run.latencies.iter().sum::<f64>() / run.latencies.len().max(1) as f64,
            run.latencies.iter().copied().fold(0.0, f64::max)
        ));
        runs.push(run);
    }
    let measurement = Measurement {
        server: url.clone(),
        at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        jrubies,
        environment: args.environment,
        warmup_requests,
        warmup_seconds,
        runs,
    };
    let json = serde_json::to_string_pretty(&measurement)? + "\n";
    match &args.out {
        Some(path) => {
            private_file::write(path, json.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            say(&format!(
                "wrote {}; next: pcq-sim fit {}",
                path.display(),
                path.display()
            ));
        }
        None => emit(&json),
    }
    Ok(())
}

/// Progress, on standard error (standard output may be the measurement).
fn say(line: &str) {
    eprintln!("{line}");
}

/// The catalog requests' source: one node's facts, a new certname each.
struct Load {
    server: PuppetServer,
    facts: Map<String, Value>,
    environment: String,
    nodes: String,
    timeout: Duration,
    next: AtomicU32,
}

impl Load {
    /// The next distinct node's compile.
    fn job(&self) -> Result<Job> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = self.nodes.replace("{}", &format!("{n:04}"));
        let certname = Certname::parse(&name).map_err(|e| anyhow!("--nodes gives {name}: {e}"))?;
        let mut facts = self.facts.clone();
        let host = name.split('.').next().unwrap_or(&name).to_string();
        for (k, v) in [("clientcert", &name), ("fqdn", &name), ("hostname", &host)] {
            facts.insert(k.into(), Value::from(v.as_str()));
        }
        if let Some(Value::Object(net)) = facts.get_mut("networking") {
            net.insert("fqdn".into(), Value::from(name.as_str()));
            net.insert("hostname".into(), Value::from(host.as_str()));
        }
        Ok(Job {
            certname,
            environment: self.environment.clone(),
            facts,
            timeout: self.timeout,
            leader_epoch: None,
        })
    }

    /// One request, timed from sent to catalog received.
    async fn one(self: Arc<Self>, job: Job, since: Instant) -> Result<f64> {
        let trusted = trusted_facts(&job.certname, None).map_err(|e| anyhow!(e))?;
        self.server
            .catalog(&job, trusted, self.timeout)
            .await
            .map_err(|e| anyhow!("{}: {e}", job.certname))?;
        Ok(since.elapsed().as_secs_f64())
    }

    /// Runs an experiment against the server.
    async fn run(self: &Arc<Self>, experiment: Experiment) -> Result<Run> {
        match experiment {
            Experiment::Herd { requests } => {
                // every job built first, so they leave together (each
                // body is serialized in its own task)
                let jobs: Vec<Job> = (0..requests).map(|_| self.job()).collect::<Result<_>>()?;
                let started = Instant::now();
                let mut tasks = JoinSet::new();
                for job in jobs {
                    tasks.spawn(Arc::clone(self).one(job, started));
                }
                let latencies = collect(&mut tasks).await?;
                let seconds = latencies.iter().copied().fold(0.0, f64::max);
                Ok(Run {
                    experiment,
                    curve: false,
                    seconds,
                    latencies,
                })
            }
            Experiment::ClosedLoop {
                concurrency,
                requests,
            } => {
                let started = Instant::now();
                let mut tasks = JoinSet::new();
                let left = Arc::new(AtomicU32::new(requests));
                for _ in 0..concurrency.min(requests) {
                    let (load, left) = (Arc::clone(self), Arc::clone(&left));
                    tasks.spawn(async move {
                        let mut latencies = Vec::new();
                        while left
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            })
                            .is_ok()
                        {
                            let job = load.job()?;
                            latencies.push(Arc::clone(&load).one(job, Instant::now()).await?);
                        }
                        Ok::<_, anyhow::Error>(latencies)
                    });
                }
                let mut latencies = Vec::new();
                while let Some(done) = tasks.join_next().await {
                    latencies.extend(done.map_err(|e| anyhow!("a client task: {e}"))??);
                }
                Ok(Run {
                    experiment,
                    curve: false,
                    seconds: started.elapsed().as_secs_f64(),
                    latencies,
                })
            }
        }
    }
}

/// Every task's latency; the first failure stops the measurement.
async fn collect(tasks: &mut JoinSet<Result<f64>>) -> Result<Vec<f64>> {
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.push(done.map_err(|e| anyhow!("a request task: {e}"))??);
    }
    Ok(latencies)
}

/// Warm-up lasts at least this long: a fresh server's first minute of
/// compiles is several times slower (JIT).
const MIN_WARMUP: Duration = Duration::from_secs(60);

/// Closed loops keeping every JRuby busy, in windows of two requests per
/// JRuby, for at least [`MIN_WARMUP`] and until the latency stops
/// falling: a window's median no more than 5% below the median of the
/// window two before (the JIT keeps improving slowly, so neighbours alone
/// say too little), or until `max` passed. Returns the compiles spent and
/// whether the latency settled.
async fn warm_up(load: &Arc<Load>, jrubies: u32, max: Duration) -> Result<(u32, bool)> {
    let started = Instant::now();
    let window = Experiment::ClosedLoop {
        concurrency: jrubies,
        requests: 2 * jrubies,
    };
    let mut spent = 0;
    let mut medians: Vec<f64> = Vec::new();
    loop {
        let mut run = load.run(window).await?;
        spent += window.requests();
        run.latencies.sort_by(f64::total_cmp);
        let median = run.latencies[run.latencies.len() / 2];
        let flat = medians.len() >= 2 && median >= 0.95 * medians[medians.len() - 2];
        medians.push(median);
        if flat && started.elapsed() >= MIN_WARMUP {
            return Ok((spent, true));
        }
        if started.elapsed() >= max {
            return Ok((spent, false));
        }
    }
}

/// Waits until the server has every JRuby free (at most 30 s; not at all
/// when its status API does not answer), then `pause` more.
async fn settle(server: &PuppetServer, pause: Duration) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        match server.jruby_pool().await {
            Ok(pool) if pool.free.is_some_and(|f| f < pool.size) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => break,
        }
    }
    tokio::time::sleep(pause).await;
}

/// The JRuby count from the server's status API.
async fn jrubies_of(server: &PuppetServer) -> Result<u32> {
    let pool = server
        .jruby_pool()
        .await
        .map_err(|e| anyhow!("{e}; give --jrubies instead"))?;
    if pool.size > MAX_JRUBIES {
        bail!(
            "{} JRubies: at most {MAX_JRUBIES}; give --jrubies",
            pool.size
        );
    }
    Ok(pool.size)
}

/// This host's facts, as `pcq sync` uploads them.
async fn this_hosts_facts() -> Result<Map<String, Value>> {
    let out = tokio::process::Command::new("facter")
        .args(["-p", "--json", "--show-legacy"])
        .output()
        .await
        .context("running facter (give --facts instead)")?;
    if !out.status.success() {
        bail!(
            "facter failed (give --facts instead): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    verify::facts_of(&out.stdout).map_err(|e| anyhow!("facter's output: {e}"))
}
