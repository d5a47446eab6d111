//! A plain closed-loop client of Puppet Server's `POST /puppet/v4/catalog`:
//! J workers, each sending the next request as soon as the last answered,
//! with pcq's own client code and request body, for T seconds. The
//! baseline pcq's compile throughput is compared with.
//!
//! `compile-load URL J SECONDS FACTS_JSON [CERTNAME_PREFIX]`

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scheduler::daemon::backend::puppetserver::PuppetServer;
use scheduler::daemon::backend::{Compiler, Job};
use scheduler::daemon::certname::Certname;
use scheduler::daemon::tls::PuppetSsl;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "https://localhost:8140".into());
    let j: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    // a facts file (the `values` object), or none: the agent facts alone
    let facts = match args.next().map(std::fs::read) {
        Some(Ok(bytes)) => match scheduler::daemon::backend::facts_map(&bytes) {
            Ok(facts) => facts,
            Err(e) => {
                eprintln!("compile-load: {e}");
                std::process::exit(2);
            }
        },
        Some(Err(e)) => {
            eprintln!("compile-load: the facts file: {e}");
            std::process::exit(2);
        }
        None => serde_json::Map::new(),
    };
    let prefix = args.next().unwrap_or_else(|| "e2e".into());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ssl = PuppetSsl::new(
        Path::new("/var/lib/puppet/ssl"),
        &scheduler::puppet_conf::hostname(),
    );
    let server = match PuppetServer::new(&url, &ssl, false, false) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("compile-load: {e}");
            std::process::exit(1);
        }
    };
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for w in 0..j {
        let (server, done, failed, facts, prefix) = (
            server.clone(),
            done.clone(),
            failed.clone(),
            facts.clone(),
            prefix.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut k = w;
            while Instant::now() < deadline {
                k = (k + j) % 20;
                let Ok(certname) = Certname::parse(&format!("{prefix}-{:02}.example.com", k + 1))
                else {
                    return;
                };
                let job = Job {
                    certname,
                    environment: "production".into(),
                    facts: facts.clone(),
                    timeout: Duration::from_secs(120),
                    leader_epoch: None,
                };
                match server.compile(job).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "closed loop, concurrency {j}: {n} compiles in {secs:.1} s = {:.3} compiles/s ({} failed)",
        n as f64 / secs,
        failed.load(Ordering::Relaxed)
    );
}
