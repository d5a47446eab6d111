//! Facts-upload load generator: C connections PUT facts (a realistic body,
//! this host's facter output if given, about 5 KB otherwise) for random
//! certnames among N for T seconds, and reports requests per second. It
//! speaks TLS with this host's Puppet certificate (pcq's admin, which may
//! upload any node's facts).
//!
//! `facts-load https://HOST:PORT N [--connections C] [--seconds T] [--prefix P] [--change] [--facts FILE] [--not-modified]`
//!
//! Without `--change` each node uploads the same facts over and over (the
//! common case: nothing that matters changed); with it every upload changes
//! a used fact (each one is stored durably and bumps the node). With
//! `--not-modified` it uploads nothing: it GETs the nodes' catalogs, each
//! with the ETag its first GET gave, and counts the 304s (what agents
//! polling an unchanged catalog cost).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use scheduler::daemon::tls::PuppetSsl;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// pcq's API, e.g. http://127.0.0.1:8145
    url: String,
    /// Nodes to spread uploads over.
    nodes: usize,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value = "node")]
    prefix: String,
    /// Every upload changes a used fact.
    #[arg(long)]
    change: bool,
    /// A facter JSON file for the values.
    #[arg(long)]
    facts: Option<String>,
    /// GET catalogs with If-None-Match instead of uploading facts.
    #[arg(long)]
    not_modified: bool,
}

fn values(file: Option<&str>) -> serde_json::Map<String, Value> {
    if let Some(f) = file {
        if let Ok(Value::Object(m)) = std::fs::read(f)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            return m;
        }
    }
    let mut m = serde_json::Map::new();
    for i in 0..120 {
        m.insert(
            format!("fact_{i}"),
            json!(format!("value number {i} of a plausible fact")),
        );
    }
    m.insert(
        "os".into(),
        json!({"family": "Debian", "name": "Debian", "release": {"major": "12", "full": "12.8"}}),
    );
    m.insert(
        "memory".into(),
        json!({"system": {"total_bytes": 8_000_000_000u64, "available_bytes": 1}}),
    );
    m
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // the facts as JSON members, each followed by a comma (uptime and the
    // role are appended per request)
    let mut facts = values(args.facts.as_deref());
    facts.remove("uptime_seconds");
    facts.remove("pcq_role");
    let base: Arc<str> = facts
        .iter()
        .map(|(k, v)| format!("{}:{v},", Value::from(k.as_str())))
        .collect::<String>()
        .into();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ssl = PuppetSsl::new(
        std::path::Path::new("/var/lib/puppet/ssl"),
        &scheduler::puppet_conf::hostname(),
    );
    let tls = match ssl.client_config() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("facts-load: {e}");
            std::process::exit(1);
        }
    };
    let client = match reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .pool_max_idle_per_host(args.connections)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("facts-load: {e}");
            std::process::exit(1);
        }
    };
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // each node's ETag, learnt from its first GET (--not-modified)
    let etags = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (client, ok, failed, base) = (client.clone(), ok.clone(), failed.clone(), base.clone());
        let etags = etags.clone();
        let (url, prefix, nodes, change, not_modified) = (
            args.url.clone(),
            args.prefix.clone(),
            args.nodes,
            args.change,
            args.not_modified,
        );
        tasks.push(tokio::spawn(async move {
            let mut i = c as u64;
            while Instant::now() < deadline {
                i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let node = (i >> 33) as usize % nodes;
                let certname = format!("{prefix}{node:06}.example.com");
                if not_modified {
                    let mut req = client.get(format!("{url}/v1/nodes/{certname}/catalog"));
                    let known = etags.lock().ok().and_then(|e| e.get(&node).cloned());
                    if let Some(etag) = known {
                        req = req.header("if-none-match", etag);
                    }
                    match req.send().await {
                        Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) if r.status().is_success() => {
                            if let (Some(etag), Ok(mut etags)) =
                                (r.headers().get("etag").cloned(), etags.lock())
                            {
                                etags.insert(node, etag);
                            }
                            let _ = r.bytes().await;
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                // the body spliced from the facts serialized once: the load
                // generator shares the machine with pcq, so it must be cheap
                let role = if change {
                    format!(",\"pcq_role\":\"r{i}\"")
                } else {
                    String::new()
                };
                let body = format!(
                    "{{\"name\":\"{certname}\",\"values\":{{{base}\"uptime_seconds\":{}{role}}},\"timestamp\":\"2026-11-25T00:00:00Z\",\"expiration\":\"2026-11-26T00:00:00Z\"}}",
                    i % 100_000
                );
                let req = client
                    .put(format!("{url}/puppet/v3/facts/{certname}"))
                    .header("content-type", "application/json")
                    .body(body);
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = ok.load(Ordering::Relaxed);
    let what = if args.not_modified {
        "catalog GETs answered 304"
    } else {
        "uploads"
    };
    println!(
        "{n} {what} in {secs:.1} s over {} connections: {:.0} requests/s ({} failed){}",
        args.connections,
        n as f64 / secs,
        failed.load(Ordering::Relaxed),
        if args.not_modified {
            ""
        } else if args.change {
            ", every upload a change"
        } else {
            ", facts unchanged"
        }
    );
}
