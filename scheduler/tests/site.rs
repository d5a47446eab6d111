//! A scenario from what a site was seen to do, end to end:
//!
//! - PuppetDB fed by real `puppet agent -t` runs (their reports reach
//!   PuppetDB through the real Puppet Server) and, for more nodes, by
//!   PuppetDB's own commands (facts, catalogs with exported resources,
//!   reports): `pcq site --from-puppetdb` must give back the node count,
//!   environments, compile times and change share that went in, and
//!   `pcq-sim scenario` a scenario that says the same;
//! - a running pcq compiling on the real Puppet Server: `pcq site` must
//!   agree with `pcq queue` and `/metrics`.
//!
//! Run by `scripts/test` (`cargo test --features e2e`).

#![cfg(feature = "e2e")]

#[path = "e2e/harness.rs"]
#[allow(dead_code)] // each test binary uses part of it
mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{facts_body, metric, metric_sum, serial, with_role, Pcq, PcqConfig};
use scheduler::site::Site;
use serde_json::{json, Value};
use simulator::plan::PlanOptions;
use simulator::scenario::Scenario;

/// PuppetDB's cleartext port, open on loopback only.
const PUPPETDB: &str = "http://127.0.0.1:8080";

/// A tag no earlier run of the tests used: PuppetDB keeps their nodes.
fn nonce() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    format!("{:x}", ms % 0xff_ffff_ffff)
}

fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// One PuppetDB command, waited for until it is stored.
async fn command(http: &reqwest::Client, name: &str, version: u32, certname: &str, body: Value) {
    let url = format!(
        "{PUPPETDB}/pdb/cmd/v1?command={name}&version={version}&certname={certname}&secondsToWaitForCompletion=30"
    );
    let r = http.post(&url).json(&body).send().await.expect("command");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "{name} for {certname}: {status} {text}"
    );
    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(
        answer["processed"], true,
        "{name} for {certname} was not stored: {text}"
    );
}

/// `puppet agent -t` as `certname`: whether it changed something.
fn agent_run(certname: &str) -> bool {
    let out = Command::new("puppet")
        .args(["agent", "-t", "--certname", certname, "--server"])
        .arg(harness::host())
        .output()
        .expect("puppet agent");
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 2,
        "puppet agent -t for {certname} exited {code}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    code == 2
}

fn pcq_cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pcq"))
        .args(args)
        .output()
        .expect("pcq");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pcq {args:?}: {said}");
    println!("{said}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_site(path: &Path) -> Site {
    let text = std::fs::read(path).expect("the site file");
    serde_json::from_slice(&text).expect("a site")
}

/// The scenario `pcq-sim scenario` builds from `site`, loaded as `pcq-sim`
/// loads it (the CSV written beside it).
fn scenario_of(site: &Site, dir: &Path) -> (Scenario, Vec<f64>) {
    let built = simulator::site::scenario(site, "observed").expect("a scenario");
    println!("{}", built.toml);
    for (file, rows) in &built.csvs {
        std::fs::write(dir.join(file), simulator::distribution::csv_text(rows)).expect("csv");
    }
    let path = dir.join("scenario.toml");
    std::fs::write(&path, &built.toml).expect("scenario");
    let s = Scenario::load(&path).expect("the scenario loads");
    (s, built.csvs[0].1.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn puppetdb_fed_by_agent_runs_gives_back_the_site_that_went_in() {
    let _serial = serial().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tag = nonce();
    let host = harness::host();
    let began = SystemTime::now();
    // real agents: `sync-*` nodes get files under /tmp only
    let agents: Vec<String> = (1..=2)
        .map(|i| format!("sync-site{tag}-a{i}.example.com"))
        .collect();
    harness::ensure_certs(&agents);
    let http = reqwest::Client::new();
    let mut changed = 0;
    for _ in 0..2 {
        for a in &agents {
            changed += u64::from(agent_run(a));
        }
    }
    // Puppet Server hands the reports to PuppetDB's queue: wait for them
    let agent_reports = json!(["~", "certname", format!("^sync-site{tag}-")]);
    let mut stored = 0;
    for _ in 0..120 {
        let url = reqwest::Url::parse_with_params(
            &format!("{PUPPETDB}/pdb/query/v4/reports"),
            [("query", agent_reports.to_string())],
        )
        .expect("url");
        if let Ok(r) = http.get(url).send().await {
            stored = r.json::<Vec<Value>>().await.map_or(0, |v| v.len());
        }
        if stored == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(stored, 4, "the agents' reports did not reach PuppetDB");
    // more nodes through PuppetDB's commands: 3 in staging, 3 in
    // production; two export a host entry, one collects it; four runs
    // each, 30 minutes apart, 2 s to get the catalog; each node's first
    // run changed something, one later run failed
    let now = SystemTime::now();
    let others: Vec<String> = (0..6)
        .map(|i| format!("site{tag}-s{i}.example.com"))
        .collect();
    for (i, c) in others.iter().enumerate() {
        let env = if i < 3 { "staging" } else { "production" };
        let at = iso(now);
        command(
            &http,
            "replace facts",
            5,
            c,
            json!({
                "certname": c, "environment": env, "producer_timestamp": at, "producer": host,
                "values": {"pcq_role": "web", "uptime_seconds": 1},
            }),
        )
        .await;
        let mut resources = vec![json!({
            "type": "Class", "title": "Main", "exported": false, "tags": ["class"], "parameters": {},
        })];
        if i < 2 {
            resources.push(json!({
                "type": "Host", "title": format!("site{tag}-s{i}"), "exported": true,
                "tags": ["host"], "parameters": {"ip": format!("10.0.0.{i}")},
            }));
        }
        if i == 5 {
            resources.push(json!({
                "type": "Host", "title": format!("site{tag}-s0"), "exported": false,
                "tags": ["host"], "parameters": {"ip": "10.0.0.0"},
            }));
        }
        command(
            &http,
            "replace catalog",
            9,
            c,
            json!({
                "certname": c, "version": "1", "environment": env,
                "transaction_uuid": format!("00000000-0000-4000-8000-00000000000{i}"),
                "catalog_uuid": format!("00000000-0000-4000-9000-00000000000{i}"),
                "producer_timestamp": at, "producer": host, "code_id": null, "job_id": null,
                "edges": [], "resources": resources,
            }),
        )
        .await;
        for k in 0..4u64 {
            let start = now - Duration::from_secs(7200 - 1800 * k);
            let status = match (i, k) {
                (_, 0) => "changed",
                (2, 3) => "failed",
                _ => "unchanged",
            };
            command(
                &http,
                "store report",
                8,
                c,
                json!({
                    "certname": c, "environment": env, "puppet_version": "7.23.0",
                    "report_format": 12, "configuration_version": "1",
                    "start_time": iso(start), "end_time": iso(start + Duration::from_secs(20)),
                    "producer_timestamp": iso(start + Duration::from_secs(21)), "producer": host,
                    "resources": [], "logs": [],
                    "metrics": [
                        {"category": "time", "name": "config_retrieval", "value": 2.0},
                        {"category": "time", "name": "total", "value": 20.0},
                    ],
                    "transaction_uuid": format!("00000000-0000-4000-a000-0000000{i}{k}000"),
                    "catalog_uuid": format!("00000000-0000-4000-9000-00000000000{i}"),
                    "code_id": null, "job_id": null, "cached_catalog_status": "not_used",
                    "status": status, "noop": false, "corrective_change": false,
                    "noop_pending": false, "type": "agent",
                }),
            )
            .await;
        }
    }

    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("site.json");
    let certnames = format!("^(sync-)?site{tag}-");
    pcq_cli(&[
        "site",
        "--from-puppetdb",
        PUPPETDB,
        "--certnames",
        &certnames,
        "--puppetserver",
        &harness::server_url(),
        "--as",
        &host,
        "--out",
        file.to_str().expect("utf-8"),
    ]);
    let site = read_site(&file);
    assert_eq!(site.nodes(), 8, "{site:?}");
    let envs: Vec<(&str, u32)> = site
        .environments
        .iter()
        .map(|e| (e.name.as_str(), e.nodes))
        .collect();
    assert_eq!(envs, [("production", 5), ("staging", 3)]);
    let runs = site.runs.clone().expect("runs");
    assert_eq!(
        (runs.total, runs.changed, runs.failed),
        (28, 6 + changed, 1)
    );
    assert_eq!(
        changed, 2,
        "each agent's first run creates its file, the second changes nothing"
    );
    assert_eq!(runs.unchanged, 28 - runs.changed - 1);
    let agents_seen = site.agents.clone().expect("agent timing");
    assert_eq!(agents_seen.interval_seconds, 1800.0);
    // one master, the pool its status API reports
    assert_eq!(site.masters.len(), 1);
    assert_eq!(site.masters[0].name, host);
    let samples = &site.masters[0].compile_seconds;
    assert_eq!(samples.len(), 28);
    assert_eq!(samples.iter().filter(|s| **s == 2.0).count(), 24);
    assert!(
        samples.iter().all(|s| *s > 0.0 && *s < 120.0),
        "{samples:?}"
    );
    assert_eq!((site.exports.exporters, site.exports.collectors), (2, 1));

    let (s, csv) = scenario_of(&site, dir.path());
    assert_eq!(s.fleet.nodes, 8);
    assert_eq!(s.fleet.environments, ["production", "staging"]);
    assert_eq!(csv.len(), 28);
    // 8 changed and 1 failed run of 8 nodes, over the window from the
    // first synthetic run (2 h before the commands) to an interval (30
    // min) after the last agent run (before the commands, after `began`)
    let spent = SystemTime::now()
        .duration_since(began)
        .expect("clock")
        .as_secs_f64();
    let rate = |hours: f64| 9.0 / 8.0 / (hours / 24.0);
    let (low, high) = (rate(2.5), rate(2.5 - spent / 3600.0));
    assert!(
        (low..=high).contains(&s.facts.used_changes_per_node_day),
        "{} not within [{low}, {high}]",
        s.facts.used_changes_per_node_day
    );
    assert_eq!(s.agents.interval, Some(Duration::from_secs(1800)));
    assert_eq!((s.exports.exporters, s.exports.collectors), (2, 1));
    let pool = scheduler::daemon::backend::puppetserver::PuppetServer::agent_like(
        &harness::server_url(),
        &scheduler::daemon::tls::PuppetSsl::new(Path::new(harness::SSL), &host),
    )
    .expect("client")
    .jruby_pool()
    .await
    .expect("the JRuby pool");
    assert_eq!(s.masters.slots, pool.size);
    // and it plans: what pcq would save here, and how many masters
    let options = PlanOptions {
        replications: Some(2),
        jobs: 2,
        ..PlanOptions::new()
    };
    let planned = simulator::plan::plan(&s, &options, &|_, _| {}).expect("plan");
    assert_eq!(
        planned.recommendations.len(),
        2,
        "{:?}",
        planned.recommendations
    );
    assert!(
        planned.recommendations.iter().all(|r| r.masters == Some(1)),
        "8 nodes need one master: {:?}",
        planned.recommendations
    );
    for c in agents.iter().chain(&others) {
        let at = iso(SystemTime::now());
        let body = json!({"certname": c, "producer_timestamp": at});
        command(&http, "deactivate node", 3, c, body).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_pcq_gives_the_counts_of_its_queue_and_metrics() {
    let _serial = serial().await;
    let tag = nonce();
    let names: Vec<String> = (1..=4)
        .map(|i| format!("site{tag}-p{i}.example.com"))
        .collect();
    harness::ensure_certs(&names);
    let config = PcqConfig::puppetserver()
        .cycle_off()
        .no_load_gate()
        .ca_poll_off();
    let (pcq, _) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(180)).await;
    assert!(pcq.wait_analysed(&names[1], Duration::from_secs(60)).await);
    // a used fact changes, an unused one changes (uptime would not count:
    // it is ignored), the same facts again
    assert_eq!(
        pcq.put_facts(&names[0], &facts_body(&names[0], "db", 1))
            .await
            .0,
        200
    );
    let mut unused = facts_body(&names[1], "web", 1);
    unused["values"]["pcq_site_test_unused"] = json!("read by no catalog");
    assert_eq!(pcq.put_facts(&names[1], &unused).await.0, 200);
    assert_eq!(
        pcq.put_facts(&names[2], &facts_body(&names[2], "web", 1))
            .await
            .0,
        200
    );
    let socket = pcq.socket.to_str().expect("utf-8").to_string();
    pcq_cli(&["deploy", "production", "--api", &socket]);
    let settled = pcq
        .wait(Duration::from_secs(120), || async {
            let q = pcq.queue().await;
            // (the cycle is off: nodes rest in its lane)
            let queued: u64 = q["lanes"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter(|l| l["lane"] != "cycle")
                        .filter_map(|l| l["depth"].as_u64())
                        .sum()
                })
                .unwrap_or(1);
            queued == 0 && q["in_flight"].as_array().is_some_and(|r| r.is_empty())
        })
        .await;
    assert!(settled, "{}", pcq.queue().await);

    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("site.json");
    pcq_cli(&[
        "site",
        "--api",
        &socket,
        "--out",
        file.to_str().expect("utf-8"),
    ]);
    let queue: Value =
        serde_json::from_str(&pcq_cli(&["queue", "--json", "--api", &socket])).expect("queue JSON");
    let m = pcq.metrics().await;
    let site = read_site(&file);

    assert_eq!(site.nodes(), queue["nodes"].as_u64().expect("nodes"));
    assert_eq!(site.nodes(), 4);
    let compiles: usize = site.masters.iter().map(|m| m.compile_seconds.len()).sum();
    let counted = ["changed", "unchanged", "failed", "timed_out"]
        .iter()
        .map(|o| {
            metric(
                &m,
                &format!("pcq_compile_duration_seconds_count{{outcome=\"{o}\"}}"),
            )
        })
        .sum::<f64>();
    assert_eq!(compiles as f64, counted, "{m}");
    assert!(
        compiles >= 5,
        "4 first compiles and the used fact's: {compiles}"
    );
    let facts = site.facts.clone().expect("facts uploads");
    assert_eq!(
        facts.uploads as f64,
        metric_sum(&m, "pcq_facts_uploads_total")
    );
    // the metric counts a node's first facts as a change; the site apart
    assert_eq!(
        (facts.used_changes + facts.first) as f64,
        metric(&m, "pcq_facts_uploads_total{result=\"changed\"}")
    );
    assert_eq!(
        facts.unused_changes as f64,
        metric(&m, "pcq_facts_uploads_total{result=\"unused\"}")
    );
    assert_eq!(
        (
            facts.uploads,
            facts.used_changes,
            facts.unused_changes,
            facts.first
        ),
        (7, 1, 1, 4)
    );
    assert_eq!(
        site.deploys.len() as f64,
        metric_sum(&m, "pcq_deploys_total")
    );
    assert_eq!(site.deploys.len(), 1);
    assert_eq!(site.deploys[0].members, 4);
    let masters = queue["masters"].as_array().expect("masters");
    assert_eq!(site.masters.len(), masters.len());
    assert_eq!(
        u64::from(site.masters[0].slots),
        masters[0]["max_concurrency"].as_u64().expect("slots")
    );
    // the pool pcq read at start, of which it compiles on `slots`
    let jrubies = site.masters[0].jrubies.expect("the pool's size");
    assert!(jrubies > site.masters[0].slots, "{jrubies}");
    // pcq's own settings: the cycle is off here
    assert_eq!(site.core.as_ref().expect("core").min_cycle_interval, None);
    // only an admin reads it
    let url = format!("{}/v1/site", pcq.tls);
    let r = pcq.as_node(&names[0]).get(&url).send().await.expect("get");
    assert_eq!(r.status(), 403);

    let (s, csv) = scenario_of(&site, dir.path());
    assert_eq!(u64::from(s.fleet.nodes), site.nodes());
    assert_eq!(csv.len(), compiles);
    assert_eq!(s.masters.count as usize, masters.len());
    // the simulator's masters have the whole pool; pcq leaves the rest
    assert_eq!(
        (s.masters.slots, s.queue.reserve_for_files),
        (jrubies, jrubies - site.masters[0].slots)
    );
    assert_eq!(s.deploys.len(), 1);
}
