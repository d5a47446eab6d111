//! End-to-end: each master's gate reads that master. Other traffic (here
//! compiles of the `pcq_hold` environment, which hold their JRuby for a
//! while, as agents' own catalog requests do) takes the real Puppet
//! Server's pool; pcq, reading the status API, starts nothing while no
//! JRuby is free for it, and starts again when the pool frees (feature
//! `e2e`).

#![cfg(feature = "e2e")]

#[path = "e2e/harness.rs"]
#[allow(dead_code)] // each test binary uses part of it
mod harness;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{ensure_certs, metric, with_role, Pcq, PcqConfig};
use scheduler::daemon::backend::puppetserver::PuppetServer;
use scheduler::daemon::backend::{Compiler, Job};
use scheduler::daemon::certname::Certname;
use scheduler::daemon::tls::PuppetSsl;
use serde_json::Value;

/// How long each stand-in request holds its JRuby.
const HOLD: Duration = Duration::from_secs(45);
/// How long pcq must start nothing while the pool is held.
const WATCH: Duration = Duration::from_secs(10);

/// A compile that holds a JRuby for `HOLD` (the `pcq_hold` environment's
/// `hold::seconds`); resolves with how long it took.
fn hold_one(server: &Arc<PuppetServer>, i: usize) -> tokio::task::JoinHandle<Duration> {
    let server = server.clone();
    tokio::spawn(async move {
        let mut facts = harness::base_facts();
        facts.insert("hold_seconds".into(), Value::from(HOLD.as_secs()));
        let job = Job {
            certname: Certname::parse(&format!("hold-{i}.example.com")).expect("a certname"),
            environment: "pcq_hold".into(),
            facts,
            timeout: Duration::from_secs(600),
            leader_epoch: None,
        };
        let t = Instant::now();
        server.compile(job).await.expect("the held compile");
        t.elapsed()
    })
}

/// What became of the holders that ended (for a failure's message).
async fn futures_ended(holders: Vec<tokio::task::JoinHandle<Duration>>) -> Vec<String> {
    let mut ended = Vec::new();
    for h in holders {
        if h.is_finished() {
            ended.push(match h.await {
                Ok(took) => format!("done in {took:?}"),
                Err(e) => format!("failed: {e}"),
            });
        } else {
            h.abort();
        }
    }
    ended
}

/// Puppet Server's free JRubies and pool size now.
async fn pool(server: &PuppetServer) -> (u32, u32) {
    let p = server.jruby_pool().await.expect("the pool");
    (p.free.expect("num-free-jrubies"), p.size)
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_wait_while_other_traffic_holds_the_pool_and_resume_when_it_frees() {
    let _one_at_a_time = harness::serial().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ssl = PuppetSsl::new(Path::new(harness::SSL), &harness::host());
    let server = Arc::new(
        PuppetServer::new(&harness::server_url(), &ssl, false, false)
            .expect("a client")
            .allow_missing_certificates(),
    );
    harness::wait_server_idle().await;
    let (_, size) = pool(&server).await;
    assert!(size >= 2, "a pool of {size} leaves nothing to hold");

    // pcq keeps one JRuby for files (reserve_for_files = 1), compiles on
    // the rest, reads the status every 500 ms; no load gate, so only the
    // pool can hold it back on this small machine
    let config = PcqConfig::puppetserver()
        .cycle_off()
        .no_load_gate()
        .set("backend.status_interval", "\"500ms\"");
    let names: Vec<String> = (1..=3).map(|i| format!("pool-{i}.example.com")).collect();
    let warm = vec!["pool-warm.example.com".to_string()];
    // their certificates before pcq starts: its first CA listing has them,
    // so their uploads join them at once (a certificate signed later
    // waits for the next listing, ca.poll_interval away)
    ensure_certs(&names);
    let (pcq, _) =
        Pcq::start_compiled(&config, &warm, with_role("web"), Duration::from_secs(120)).await;
    let text = pcq.metrics().await;
    assert_eq!(
        metric(&text, "pcq_master_status_read{master=\"local\"}"),
        1.0,
        "pcq reads the status API:\n{text}"
    );

    // other traffic takes every JRuby but the reserve: none is free for pcq
    let held = size - 1;
    let holders: Vec<_> = (0..held as usize).map(|i| hold_one(&server, i)).collect();
    let held_at = Instant::now();
    let taken = pcq
        .wait(Duration::from_secs(20), || async {
            pool(&server).await.0 <= 1
        })
        .await;
    if !taken {
        let ended: Vec<String> = futures_ended(holders).await;
        panic!(
            "the stand-in requests never took the pool (now {:?}); ended: {ended:?}",
            pool(&server).await
        );
    }
    let seen = pcq
        .wait(Duration::from_secs(10), || async {
            let text = pcq.metrics().await;
            metric(&text, "pcq_master_jrubies_free{master=\"local\"}") == 0.0
        })
        .await;
    assert!(
        seen,
        "pcq never saw the pool taken:\n{}",
        pcq.metrics().await
    );

    // nodes arrive: they wait, and nothing starts
    let before = harness::metric_sum(&pcq.metrics().await, "pcq_compiles_started_total");
    pcq.upload_all(&names, with_role("web")).await;
    let watch_from = Instant::now();
    while watch_from.elapsed() < WATCH {
        let queue = pcq.queue().await;
        let text = pcq.metrics().await;
        let started = harness::metric_sum(&text, "pcq_compiles_started_total");
        assert_eq!(
            started, before,
            "pcq started a compile while the pool was held: {queue}"
        );
        assert_eq!(
            queue["in_flight"].as_array().map_or(0, Vec::len),
            0,
            "{queue}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let queue = pcq.queue().await;
    assert_eq!(queue["blocked"], "pool", "{queue}");
    let text = pcq.metrics().await;
    assert_eq!(
        metric(&text, "pcq_gate_blocked{reason=\"pool\"}"),
        1.0,
        "{text}"
    );
    // the premise held: the stand-ins still had the pool all along
    assert!(
        held_at.elapsed() < HOLD,
        "the watch outlasted the hold ({:?}): this test proved nothing",
        held_at.elapsed()
    );
    assert!(holders.iter().all(|h| !h.is_finished()));

    // the pool frees: pcq compiles every waiting node
    for h in holders {
        let took = h.await.expect("a holder");
        assert!(took >= HOLD, "a held compile took only {took:?}");
    }
    let freed = Instant::now();
    pcq.wait_compiled(&names, Duration::from_secs(120)).await;
    println!(
        "held {held} of {size} JRubies for {HOLD:?}: pcq started nothing for {WATCH:?}; \
         the {} waiting nodes compiled within {:.1?} of the pool freeing",
        names.len(),
        freed.elapsed()
    );
    let text = pcq.metrics().await;
    let started = harness::metric_sum(&text, "pcq_compiles_started_total");
    assert_eq!(started, before + names.len() as f64, "{text}");
}
