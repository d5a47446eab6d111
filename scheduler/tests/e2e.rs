//! End-to-end: `pcq serve` against a real Puppet Server (installed and
//! started by `scripts/puppet-setup`), with code using real modules
//! (puppetlabs-ntp, -concat, -stdlib), plus a stand-in server for fault
//! injection. Run by `scripts/test` (`cargo test --features e2e`).

#![cfg(feature = "e2e")]

#[path = "e2e/harness.rs"]
#[allow(dead_code)] // each test binary uses part of it
mod harness;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{
    ensure_certs, facts_body, metric, serial, server_compiles, server_concurrency, server_log_time,
    with_role, FakeServer, Mode, Notes, Pcq, PcqConfig, Via, ADMIN_TOKEN,
};
use reqwest::Method;
use serde_json::Value;

fn nodes(prefix: &str, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("{prefix}-{i:02}.example.com"))
        .collect()
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The real Puppet Server, the nodes cycling continuously, two compiles
/// at a time.
fn cycling_two_at_a_time() -> PcqConfig {
    PcqConfig::puppetserver()
        .cycle_every(Duration::ZERO)
        .max_concurrency(2)
        .no_load_gate()
        .ca_poll(Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_nodes_compile_on_puppet_server_and_keep_cycling() {
    let _serial = serial().await;
    let names = nodes("e2e", 20);
    // the CA poll lists the signed certificates; nodes wait for their facts
    let (pcq, listed) = Pcq::start_listed(&cycling_two_at_a_time(), &names).await;
    assert!(
        listed,
        "CA poll did not list the nodes: {}",
        pcq.queue().await
    );
    // (the shared CA has other tests' certificates too: at least these)
    let m = pcq.metrics().await;
    assert!(metric(&m, "pcq_nodes_waiting_for_facts") >= 20.0, "{m}");
    pcq.compile(&names, with_role("web"), Duration::from_secs(180))
        .await;

    // the catalogs come from the real modules and are private files
    let dir = pcq.state_dir().join("catalogs");
    for n in &names {
        let file = dir.join(format!("{n}.json"));
        let text = std::fs::read_to_string(&file).expect("catalog file");
        assert!(
            text.contains("\"Ntp::Config\"") || text.contains("\"Class\",\"title\":\"Ntp\""),
            "{n}: no ntp"
        );
        assert!(text.contains("Concat::Fragment"), "{n}: no concat");
        assert!(
            text.contains(&format!("/tmp/pcq-e2e/{n}.role")),
            "{n}: no role file"
        );
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{n}");
    }

    // and they keep cycling: every node compiles again
    let mut first = Vec::new();
    for n in &names {
        first.push(
            pcq.status(n).await.expect("status")["last_compile"]
                .as_f64()
                .unwrap_or(0.0),
        );
    }
    let cycled = pcq
        .wait(Duration::from_secs(180), || async {
            for (n, t0) in names.iter().zip(&first) {
                let t = pcq
                    .status(n)
                    .await
                    .and_then(|s| s["last_compile"].as_f64())
                    .unwrap_or(0.0);
                if t <= *t0 {
                    return false;
                }
            }
            true
        })
        .await;
    assert!(cycled, "not every node was recompiled by the cycle");
    let m = pcq.metrics().await;
    assert!(
        metric(&m, "pcq_compiles_started_total{reason=\"cycle\"}") >= 20.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "pcq_compile_duration_seconds_count{outcome=\"failed\"}"),
        0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_used_fact_change_recompiles_and_notifies_within_two_compile_times() {
    let _serial = serial().await;
    let names = nodes("e2e", 3);
    let notes = Notes::in_tempdir();
    let config = PcqConfig::puppetserver()
        .cycle_every(Duration::from_secs(3600))
        .no_load_gate()
        .ca_poll(Duration::from_secs(1))
        .notify_command(&notes.command());
    let (pcq, before) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(120)).await;
    let target = &names[1];
    assert!(
        pcq.wait(Duration::from_secs(10), || async {
            notes.count(target) == 1
        })
        .await,
        "first catalog notified"
    );
    let m = pcq.metrics().await;
    let compile_time = harness::metric_sum(&m, "pcq_compile_duration_seconds_sum")
        / harness::metric_sum(&m, "pcq_compile_duration_seconds_count").max(1.0);

    // a fact the catalog uses
    let t0 = Instant::now();
    let (status, body) = pcq.put_facts(target, &facts_body(target, "db", 1)).await;
    assert_eq!((status, body["result"].as_str()), (200, Some("changed")));
    let notified = pcq
        .wait(Duration::from_secs(30), || async {
            notes.count(target) == 2
        })
        .await;
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(notified, "no notification");
    let after = pcq.status(target).await.expect("status");
    assert_ne!(
        after["catalog_hash"].as_str(),
        Some(before[1].as_str()),
        "the catalog changed"
    );
    assert!(
        elapsed <= 2.0 * compile_time.max(0.25),
        "recompiled and notified after {elapsed:.2} s; a compile takes {compile_time:.2} s"
    );
    assert_eq!(notes.count(&names[0]), 1, "other nodes not notified again");

    // only volatile facts change: no compile out of turn
    let started = metric(
        &pcq.metrics().await,
        "pcq_compiles_started_total{reason=\"facts\"}",
    );
    let last = after["last_compile"].as_f64();
    let mut noisy = facts_body(target, "db", 987_654);
    noisy["values"]["memory"]["system"]["available_bytes"] = Value::from(12345);
    noisy["values"]["load_averages"] = serde_json::json!({"1m": 9.9, "5m": 1.0, "15m": 0.5});
    let (status, body) = pcq.put_facts(target, &noisy).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some("unchanged")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pcq.status(target).await.expect("status")["last_compile"].as_f64(),
        last
    );
    assert_eq!(
        metric(
            &pcq.metrics().await,
            "pcq_compiles_started_total{reason=\"facts\"}"
        ),
        started
    );
}

/// The content of `path`'s File resource in `certname`'s catalog.
async fn file_content(pcq: &Pcq, certname: &str, path: &str) -> Option<String> {
    pcq.catalog(certname).await?["resources"]
        .as_array()?
        .iter()
        .find(|r| r["type"] == "File" && r["title"] == path)
        .and_then(|r| r["parameters"]["content"].as_str().map(String::from))
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_extensions_of_the_nodes_certificate_reach_the_compile() {
    let _serial = serial().await;
    // signed like a provisioned agent's: pp_role and a private extension
    let name = "trusted-01.example.com";
    harness::ensure_cert_with_extensions(
        name,
        "extension_requests:\n  pp_role: pcq_trusted\n  1.3.6.1.4.1.34380.1.2.1: private-value\n",
    );
    let plain = "trusted-02.example.com";
    let config = PcqConfig::puppetserver()
        .no_load_gate()
        .ca_poll(Duration::from_secs(1));
    let names = [name.to_string(), plain.to_string()];
    let (pcq, _) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(120)).await;
    assert_eq!(
        file_content(&pcq, name, &format!("/tmp/pcq-e2e/{name}.trusted")).await,
        Some("role=pcq_trusted private=private-value host=trusted-01\n".to_string()),
        "{}",
        pcq.log_text()
    );
    // a certificate without extensions: none, and no failure
    assert_eq!(
        file_content(&pcq, plain, &format!("/tmp/pcq-e2e/{plain}.trusted")).await,
        Some("role= private= host=trusted-02\n".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_removes_the_node() {
    let _serial = serial().await;
    let name = format!(
        "e2e-revoked-{}-{}.example.com",
        std::process::id(),
        epoch() as u64
    );
    let node = std::slice::from_ref(&name);
    let config = PcqConfig::puppetserver()
        .cycle_every(Duration::from_secs(3600))
        .no_load_gate()
        .ca_poll(Duration::from_secs(1));
    let (pcq, listed) = Pcq::start_listed(&config, node).await;
    assert!(listed, "signed certificate not picked up");
    pcq.compile(node, with_role("web"), Duration::from_secs(60))
        .await;
    let file = pcq.state_dir().join(format!("catalogs/{name}.json"));
    assert!(file.exists());
    harness::revoke(&name);
    let gone = pcq
        .wait(Duration::from_secs(20), || async {
            pcq.status(&name).await.is_none()
        })
        .await;
    assert!(gone, "revoked node still known");
    assert!(!file.exists(), "its catalog is deleted");
    let (status, _) = pcq
        .request(
            Via::Admin,
            Method::GET,
            &format!("/v1/nodes/{name}/catalog"),
            b"",
        )
        .await;
    assert_eq!(status, 404);
}

/// pcq behind a stand-in server that is also its CA, listing `names` as
/// signed (CA poll every second, cycle off); each node compiled once.
async fn behind_stand_in_ca(fake: &FakeServer, names: &[String], limit: Duration) -> Pcq {
    ensure_certs(names);
    fake.list_signed(names);
    let config = PcqConfig::stand_in(fake)
        .cycle_off()
        .no_load_gate()
        .ca_poll(Duration::from_secs(1));
    Pcq::start_compiled(&config, names, with_role("web"), limit)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_listing_removes_nobody() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let names = nodes("calist", 10);
    let pcq = behind_stand_in_ca(&fake, &names, Duration::from_secs(30)).await;
    let implausible = |m: &str| metric(m, "pcq_ca_listings_total{result=\"implausible\"}");
    let known = || async { pcq.queue().await["nodes"].as_u64() };

    // an empty answer, then half the fleet: both ignored, loudly
    for listing in [Vec::new(), names[5..].to_vec()] {
        fake.list_signed(&listing);
        let before = implausible(&pcq.metrics().await);
        let seen = pcq
            .wait(Duration::from_secs(20), || async {
                implausible(&pcq.metrics().await) >= before + 4.0
            })
            .await;
        assert!(seen, "four implausible listings counted");
        assert_eq!(known().await, Some(10), "nobody removed");
    }
    assert!(
        pcq.catalog(&names[0]).await.is_some(),
        "the catalogs are still served"
    );
    assert!(pcq.log_text().contains("CA listing ignored"));

    // the truth without one node: it leaves after three listings in a row
    fake.list_signed(&names[1..]);
    let gone = pcq
        .wait(Duration::from_secs(20), || async {
            pcq.status(&names[0]).await.is_none()
        })
        .await;
    assert!(gone, "a node absent from plausible listings leaves");
    assert_eq!(known().await, Some(9));
    assert!(
        pcq.log_text()
            .contains(&format!("node {} removed", names[0])),
        "{}",
        pcq.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_revoked_mid_compile_gets_no_catalog_back() {
    let _serial = serial().await;
    let compile = Duration::from_secs(8);
    let fake = FakeServer::start(compile).await;
    let names = nodes("midrevoke", 1);
    let name = &names[0];
    let pcq = behind_stand_in_ca(&fake, &names, Duration::from_secs(60)).await;
    let file = pcq.state_dir().join(format!("catalogs/{name}.json"));
    assert!(file.exists());

    // a used fact changes: a compile starts that will change the catalog
    let (status, body) = pcq.put_facts(name, &facts_body(name, "db", 2)).await;
    assert_eq!(status, 200, "{body}");
    let compiling = pcq
        .wait(Duration::from_secs(10), || async {
            pcq.status(name)
                .await
                .is_some_and(|s| s["state"] == "compiling")
        })
        .await;
    assert!(compiling);
    // the CA revokes it while the compile runs
    fake.list(&[], &names);
    let gone = pcq
        .wait(Duration::from_secs(10), || async {
            pcq.status(name).await.is_none()
        })
        .await;
    assert!(gone, "revoked node still known");
    assert_eq!(
        fake.in_flight(),
        1,
        "removed while its compile still ran at the stand-in server"
    );
    assert!(!file.exists(), "its catalog is deleted");
    // the compile ends; its catalog must not come back
    tokio::time::sleep(compile).await;
    assert!(!file.exists(), "a removed node's catalog was written back");
    let leftovers: Vec<_> = std::fs::read_dir(pcq.state_dir().join("catalogs"))
        .expect("catalogs")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_compiles_loses_and_duplicates_nothing() {
    let _serial = serial().await;
    let names = nodes("e2e", 20);
    let (mut pcq, _) = Pcq::start_compiled(
        &cycling_two_at_a_time(),
        &names,
        with_role("web"),
        Duration::from_secs(180),
    )
    .await;
    for round in 0..3 {
        let busy = pcq
            .wait(Duration::from_secs(30), || async {
                !pcq.queue().await["in_flight"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
            })
            .await;
        assert!(busy, "round {round}: nothing compiling");
        pcq.kill9();
        // the database right after the crash: every node exactly once
        let db = rusqlite::Connection::open(pcq.state_dir().join("state.db")).expect("db");
        let (rows, distinct): (i64, i64) = db
            .query_row(
                "SELECT count(*), count(DISTINCT certname) FROM nodes",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("count");
        assert_eq!((rows, distinct), (20, 20), "round {round}");
        drop(db);
        pcq.restart().await;
        let q = pcq.queue().await;
        assert_eq!(q["nodes"], 20, "round {round}: {q}");
        for n in &names {
            let s = pcq.status(n).await.unwrap_or_else(|| panic!("{n} lost"));
            assert!(!s["catalog_hash"].is_null(), "{n}: last good catalog lost");
        }
        // compiles that were running start again, first
        let requeued = pcq
            .wait(Duration::from_secs(10), || async {
                metric(
                    &pcq.metrics().await,
                    "pcq_compiles_started_total{reason=\"requeued\"}",
                ) >= 1.0
            })
            .await;
        assert!(
            requeued,
            "round {round}: interrupted compiles not requeued:\n{}",
            pcq.metrics().await
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn puppet_server_stopped_for_30s_pauses_then_resumes_without_failures() {
    let _serial = serial().await;
    let names = nodes("e2e", 5);
    let (pcq, _) = Pcq::start_compiled(
        &cycling_two_at_a_time(),
        &names,
        with_role("web"),
        Duration::from_secs(120),
    )
    .await;

    harness::puppetserver("stop");
    let down_at = Instant::now();
    let mut master_down_seen = false;
    while down_at.elapsed() < Duration::from_secs(30) {
        let q = pcq.queue().await; // pcq answers all along
        if q["masters"][0]["up"] == false {
            master_down_seen = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(master_down_seen, "the master was never marked down");
    let m = pcq.metrics().await;
    let failed = metric(&m, "pcq_compile_duration_seconds_count{outcome=\"failed\"}")
        + metric(
            &m,
            "pcq_compile_duration_seconds_count{outcome=\"timed_out\"}",
        );
    assert_eq!(failed, 0.0, "no node blamed for the outage:\n{m}");
    for n in &names {
        assert_eq!(pcq.status(n).await.expect("status")["failures"], 0, "{n}");
    }
    let compiled_before = metric(&m, "pcq_catalogs_total{result=\"unchanged\"}")
        + metric(&m, "pcq_catalogs_total{result=\"changed\"}");
    let started_before = harness::metric_sum(&m, "pcq_compiles_started_total");

    harness::puppetserver("start"); // returns once the server answers
    let back_at = Instant::now();
    // pcq's part: the probe sees the master back and starts compiling
    let restarted = pcq
        .wait(Duration::from_secs(10), || async {
            pcq.queue().await["masters"][0]["up"] == true
                && harness::metric_sum(&pcq.metrics().await, "pcq_compiles_started_total")
                    > started_before
        })
        .await;
    let restarted_after = back_at.elapsed();
    assert!(
        restarted,
        "no compile started within 10 s of the server's return:\n{}",
        pcq.log_text()
    );
    // the server's part: the first compiles on fresh JRubies take a while
    let compiled = pcq
        .wait(Duration::from_secs(60), || async {
            let m = pcq.metrics().await;
            metric(&m, "pcq_catalogs_total{result=\"unchanged\"}")
                + metric(&m, "pcq_catalogs_total{result=\"changed\"}")
                > compiled_before
        })
        .await;
    assert!(
        compiled,
        "no catalog compiled after the server's return (starts resumed after {restarted_after:?}):\n{}",
        pcq.log_text()
    );
    let m = pcq.metrics().await;
    let failed = metric(&m, "pcq_compile_duration_seconds_count{outcome=\"failed\"}")
        + metric(
            &m,
            "pcq_compile_duration_seconds_count{outcome=\"timed_out\"}",
        );
    assert_eq!(failed, 0.0, "no node blamed after the return:\n{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrency_2_is_all_the_server_ever_sees() {
    let _serial = serial().await;
    // the real server (it has more JRubies than 2), counted from its access log
    let names = nodes("e2e", 20);
    ensure_certs(&names);
    harness::wait_server_idle().await;
    let since = server_log_time();
    let (pcq, _) = Pcq::start_compiled(
        &cycling_two_at_a_time(),
        &names,
        with_role("web"),
        Duration::from_secs(180),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(pcq);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = server_concurrency(&since);
    assert_eq!(
        seen, 2,
        "Puppet Server saw {seen} concurrent compiles since {since}"
    );
    // the access log names each compile's node (pcq's user agent), and no
    // leader's epoch with SQLite
    let compiles = server_compiles(&since);
    assert!(compiles.len() >= 20, "{compiles:?}");
    for c in &compiles {
        let node = c.node().unwrap_or_default();
        assert!(names.iter().any(|n| n == node), "{c:?}");
        assert_eq!(c.epoch(), None, "{c:?}");
    }

    // the stand-in server counts requests itself
    let fake = FakeServer::start(Duration::from_millis(200)).await;
    let config = PcqConfig::stand_in(&fake)
        .cycle_every(Duration::ZERO)
        .max_concurrency(2)
        .no_load_gate()
        .ca_poll_off();
    let names = nodes("fake", 10);
    let (_pcq, _) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let max = fake.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(max, 2, "stand-in server saw {max} at once");
    assert!(fake.requests.load(std::sync::atomic::Ordering::SeqCst) > 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let config = PcqConfig::stand_in(&fake).cycle_off().ca_poll_off();
    let pcq = Pcq::start(&config).await;
    // the same file: same state directory (and the same ports, which the
    // lock must refuse before they are tried)
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_pcq"))
        .args(["serve", "--config"])
        .arg(pcq.config_file())
        .output()
        .expect("pcq runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("another pcq serve runs on this state directory"),
        "{stderr}"
    );
    assert!(pcq.healthy().await, "the first daemon goes on");
    // logs for a journal: no colour codes when stderr is not a terminal,
    // the start-up line says what runs; --log-format json for shippers
    let log = pcq.log_text();
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log}");
    let starting = format!("pcq {} starting with", env!("CARGO_PKG_VERSION"));
    assert!(log.contains(&starting), "{log}");
    assert!(log.contains("master local: https://"), "{log}");
    let json = std::process::Command::new(env!("CARGO_BIN_EXE_pcq"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(pcq.config_file())
        .output()
        .expect("pcq runs");
    let stderr = String::from_utf8_lossy(&json.stderr);
    let first: Value = serde_json::from_str(stderr.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(first["level"], "INFO", "{first}");
    assert!(
        first["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&starting)),
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let config = PcqConfig::stand_in(&fake)
        .cycle_every(Duration::from_secs(3600))
        .no_load_gate()
        .ca_poll_off();
    let names = nodes("bad", 2);
    let (pcq, hashes) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(20)).await;
    let q0 = pcq.queue().await["nodes"].clone();

    // bad-01 uploads its own facts, badly
    let upload = |body: Vec<u8>| {
        let pcq = &pcq;
        async move {
            let path = "/puppet/v3/facts/bad-01.example.com";
            pcq.request(Via::Tls("bad-01.example.com"), Method::PUT, path, &body)
                .await
        }
    };
    let (s, body) = upload(b"{\"name\": \"bad-01".to_vec()).await;
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("facts body"), "{body}");
    let (s, body) = upload(b"{\"name\":\"bad-01.example.com\",\"values\":[1]}".to_vec()).await;
    assert_eq!(s, 400, "{body}");
    let big = vec![b'a'; 10 << 20];
    let (s, _) = upload(big).await;
    assert_eq!(s, 413);
    for hostile in [
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2fetc",
        ".hidden",
        "a%20b",
        "x%00y",
    ] {
        let body = serde_json::to_vec(&facts_body("x", "web", 1)).expect("json");
        let (s, text) = pcq
            .request(
                Via::Admin,
                Method::PUT,
                &format!("/puppet/v3/facts/{hostile}"),
                &body,
            )
            .await;
        assert_eq!(s, 400, "{hostile}: {text}");
        let (s, _) = pcq
            .request(
                Via::Admin,
                Method::GET,
                &format!("/v1/nodes/{hostile}/catalog"),
                b"",
            )
            .await;
        assert_eq!(s, 400, "{hostile}");
    }
    let (s, text) =
        upload(serde_json::to_vec(&facts_body("bad-02.example.com", "x", 1)).expect("json")).await;
    assert_eq!(s, 400, "name mismatch: {text}");
    // every refused upload is counted, the body limit's 413 too
    let text = pcq.metrics().await;
    assert_eq!(
        metric(&text, "pcq_facts_uploads_total{result=\"rejected\"}"),
        9.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "pcq_facts_uploads_total{result=\"unavailable\"}"),
        0.0
    );
    let (s, _) = pcq
        .request(
            Via::Admin,
            Method::POST,
            "/v1/deploys",
            b"{\"environment\": \"../prod\"}",
        )
        .await;
    assert_eq!(s, 400);
    // a deploy of an environment pcq does not know is an error (a typo in a
    // deploy hook), unless announced as new
    let deploy = |body: &'static [u8]| {
        let pcq = &pcq;
        async move {
            pcq.request(Via::Admin, Method::POST, "/v1/deploys", body)
                .await
        }
    };
    let (s, text) = deploy(b"{\"environment\": \"nosuchenv\"}").await;
    assert_eq!(s, 404, "{text}");
    assert!(text.contains("--new"), "{text}");
    let (s, text) = deploy(b"{\"environment\": \"nosuchenv\", \"new\": true}").await;
    assert_eq!(s, 202, "{text}");
    let (s, _) = pcq
        .request(
            Via::Admin,
            Method::POST,
            "/v1/nodes/nobody.example.com/bump",
            b"",
        )
        .await;
    assert_eq!(s, 404);
    assert!(!std::path::Path::new("/etc/passwd.json").exists());

    // state intact
    assert_eq!(pcq.queue().await["nodes"], q0);
    for (n, h) in names.iter().zip(&hashes) {
        assert_eq!(
            pcq.status(n).await.expect("status")["catalog_hash"].as_str(),
            Some(h.as_str())
        );
        let (s, _) = pcq
            .request(
                Via::Admin,
                Method::GET,
                &format!("/v1/nodes/{n}/catalog"),
                b"",
            )
            .await;
        assert_eq!(s, 200);
    }

    // a config with an unknown key: refused with the key and its line
    let bad = pcq.dir.path().join("bad.toml");
    std::fs::write(&bad, "state_dir = \"/tmp/x\"\n[backend]\nkind = \"command\"\n[core]\nmin_cycle_intervall = \"1m\"\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pcq"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .expect("pcq");
    assert_eq!(out.status.code(), Some(3), "a bad configuration's status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:5: core.min_cycle_intervall"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_faults_park_the_node_or_pause_the_master_and_keep_the_last_catalog() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let config = PcqConfig::stand_in(&fake)
        .cycle_off()
        .compile_timeout(Duration::from_secs(2))
        .backoff(Duration::from_secs(3600), Duration::from_secs(7200))
        .no_load_gate()
        .ca_poll_off();
    let names = nodes("fault", 4);
    let (pcq, hashes) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(20)).await;
    let catalog = |n: &str| pcq.catalog_file(n);

    // compile error (500) and garbage: the node is parked, its catalog kept
    for (i, mode, text) in [
        (0usize, Mode::Error500, "500"),
        (1, Mode::Garbage, "not JSON"),
    ] {
        let n = &names[i];
        let kept = catalog(n);
        fake.set(mode);
        let (s, _) = pcq.put_facts(n, &facts_body(n, "db", 1)).await;
        assert_eq!(s, 200);
        let parked = pcq
            .wait(Duration::from_secs(10), || async {
                pcq.status(n).await.is_some_and(|s| s["state"] == "parked")
            })
            .await;
        let st = pcq.status(n).await.expect("status");
        assert!(parked, "{n}: {st}");
        assert_eq!(st["failures"], 1);
        assert!(
            st["last_error"].as_str().is_some_and(|e| e.contains(text)),
            "{st}"
        );
        assert_eq!(st["catalog_hash"].as_str(), Some(hashes[i].as_str()));
        assert_eq!(catalog(n), kept, "last good catalog survives");
        fake.set(Mode::Catalog);
    }

    // a hanging server: the compile times out, the node is parked
    fake.set(Mode::Hang);
    let n = &names[2];
    pcq.put_facts(n, &facts_body(n, "db", 1)).await;
    let timed_out = pcq
        .wait(Duration::from_secs(10), || async {
            pcq.status(n).await.is_some_and(|s| {
                s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("timed out"))
            })
        })
        .await;
    assert!(timed_out, "{:?}", pcq.status(n).await);
    fake.set(Mode::Catalog);

    // 503: the master is paused and probed; nobody is blamed
    fake.set(Mode::Unavailable);
    let n = &names[3];
    pcq.put_facts(n, &facts_body(n, "db", 1)).await;
    let paused = pcq
        .wait(Duration::from_secs(10), || async {
            pcq.queue().await["masters"][0]["up"] == false
        })
        .await;
    assert!(paused);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pcq.status(n).await.expect("status")["failures"], 0);
    fake.set(Mode::Catalog);
    let resumed = pcq
        .wait(Duration::from_secs(10), || async {
            pcq.status(n)
                .await
                .is_some_and(|s| s["catalog_hash"].as_str() != Some(hashes[3].as_str()))
        })
        .await;
    assert!(resumed, "{:?}", pcq.status(n).await);
    assert_eq!(pcq.queue().await["masters"][0]["up"], true);
}

/// A small file system of its own (tmpfs), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tmp dir");
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "this test mounts a tmpfs (run as root)");
        SmallDisk { dir }
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&chunk[..4096]);
        while f.write_all(&chunk[..512]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_pcq_loudly_and_loses_nothing() {
    let _serial = serial().await;
    let disk = SmallDisk::mount("8m");
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let config = PcqConfig::stand_in(&fake)
        .state_in(&disk.dir.path().join("state"))
        .cycle_off()
        .no_load_gate()
        .ca_poll_off();
    let names = nodes("full", 3);
    let (mut pcq, hashes) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(20)).await;
    let catalogs: Vec<Vec<u8>> = names.iter().map(|n| pcq.catalog_file(n)).collect();

    // the disk fills; uploads of new nodes' facts (big ones) must be
    // written, and cannot be
    let filler = disk.fill();
    let mut big = facts_body("full-new-00.example.com", "web", 1);
    big["values"]["padding"] = Value::from("x".repeat(256 * 1024));
    let mut refused = None;
    let mut sick = false;
    for k in 0..40 {
        let n = format!("full-new-{k:02}.example.com");
        big["name"] = Value::from(n.clone());
        let body = serde_json::to_vec(&big).expect("JSON");
        let path = format!("/puppet/v3/facts/{n}");
        // refused: a 5xx, or no answer at all when pcq ends while the
        // answer is on its way (either way nothing was acknowledged)
        let upload = async {
            let r = reqwest::Client::new()
                .put(format!("{}{path}", pcq.api))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match r {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (599, e.to_string()),
            }
        };
        // while the store retries, /healthz says it is sick
        let health = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            pcq.http_status("/healthz").await
        };
        let ((status, body), health) = tokio::join!(upload, health);
        sick |= health == Some(503);
        if status != 200 {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("an upload the full disk cannot take is refused");
    assert!(status >= 500, "{status} {body}");
    assert!(sick, "/healthz answered 503 while the store failed");
    // the store gives up after its retries; the daemon ends, non-zero
    let exit = pcq.exited(Duration::from_secs(30)).expect("pcq ends");
    assert!(!exit.success(), "{exit:?}");
    let log = pcq.log_text();
    assert!(log.contains("the store gives up"), "{log}");

    // room again: a restart finds every node and every catalog as it was
    std::fs::remove_file(filler).expect("free the disk");
    pcq.restart().await;
    for (i, n) in names.iter().enumerate() {
        let st = pcq.status(n).await.expect("status");
        assert_eq!(
            st["catalog_hash"].as_str(),
            Some(hashes[i].as_str()),
            "{st}"
        );
        let file = pcq.catalog_file(n);
        assert_eq!(file, catalogs[i], "{n}'s last good catalog survives");
    }
    assert!(pcq.healthy().await);
    pcq.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_files_that_disagree_with_the_database_are_compiled_again() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let config = PcqConfig::stand_in(&fake)
        .cycle_off()
        .no_load_gate()
        .ca_poll_off();
    let names = nodes("torn", 4);
    let (mut pcq, hashes) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(20)).await;
    let state = pcq.state_dir();
    let file = |n: &str| state.join(format!("catalogs/{n}.json"));
    let (_, clean) = pcq.terminate(Duration::from_secs(10));
    assert!(clean);
    // what power loss leaves: a torn file, a rename lost (the file still
    // holds an older catalog), a file gone; the fourth is intact
    let whole = std::fs::read(file(&names[0])).expect("file");
    std::fs::write(file(&names[0]), &whole[..whole.len() / 2]).expect("tear");
    let older = String::from_utf8(std::fs::read(file(&names[1])).expect("file"))
        .expect("utf-8")
        .replace("\"web\"", "\"an older role\"");
    std::fs::write(file(&names[1]), older).expect("older");
    std::fs::remove_file(file(&names[2])).expect("lose");
    let intact = std::fs::read(file(&names[3])).expect("file");

    pcq.restart().await;
    let m = pcq.metrics().await;
    let repaired = pcq
        .wait(Duration::from_secs(20), || async {
            let mut all = true;
            for (i, n) in names.iter().enumerate().take(3) {
                // compiled again: the file is the catalog its ETag names
                let served = pcq
                    .request(
                        Via::Admin,
                        reqwest::Method::GET,
                        &format!("/v1/nodes/{n}/catalog"),
                        b"",
                    )
                    .await;
                all &= served.0 == 200
                    && scheduler::daemon::catalog::read(served.1.as_bytes())
                        .is_ok_and(|c| c.hash == hashes[i]);
            }
            all
        })
        .await;
    assert!(repaired, "{m}\n{}", pcq.log_text());
    for n in names.iter().take(3) {
        let text = std::fs::read(file(n)).expect("file");
        let c = scheduler::daemon::catalog::read(&text).expect("a whole catalog");
        assert!(
            String::from_utf8_lossy(&text).contains("\"web\""),
            "{n}: {}",
            c.hash
        );
    }
    assert_eq!(std::fs::read(file(&names[3])).expect("file"), intact);
    // torn and gone: forgotten; the older whole catalog: kept under its
    // own hash until the compile replaced it
    let m = pcq.metrics().await;
    assert_eq!(
        metric(&m, "pcq_catalogs_total{result=\"lost\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "pcq_catalogs_total{result=\"adopted\"}"),
        1.0,
        "{m}"
    );
    assert!(pcq
        .log_text()
        .contains("4 stored catalogs checked, 3 disagree"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_flapping_a_used_fact_compiles_once_per_interval_and_delays_nobody() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let config = PcqConfig::stand_in(&fake)
        .cycle_off()
        .no_load_gate()
        .ca_poll_off()
        .set("core.min_urgent_interval", "\"4s\"");
    let names = nodes("flap", 2);
    let (pcq, hashes) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(20)).await;
    let (flapper, other) = (&names[0], &names[1]);
    let before = fake.requests.load(std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let mut other_wait = None;
    let mut k = 0u64;
    // the flapper's role changes every 100 ms for 10 s
    while started.elapsed() < Duration::from_secs(10) {
        k += 1;
        let (s, _) = pcq
            .put_facts(flapper, &facts_body(flapper, &format!("r{k}"), 1))
            .await;
        assert_eq!(s, 200);
        if other_wait.is_none() && started.elapsed() > Duration::from_secs(5) {
            let t = Instant::now();
            pcq.put_facts(other, &facts_body(other, "db", 1)).await;
            let compiled = pcq
                .wait(Duration::from_secs(5), || async {
                    pcq.status(other)
                        .await
                        .is_some_and(|s| s["catalog_hash"].as_str() != Some(hashes[1].as_str()))
                })
                .await;
            assert!(compiled, "the other node compiles while the flapper flaps");
            other_wait = Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let compiles = fake.requests.load(std::sync::atomic::Ordering::SeqCst) - before;
    // the other node's one, and the flapper's at most once per 4 s after
    // its last compile: 2 in 10 s (3 with a tick of slack)
    assert!(compiles <= 4, "{compiles} compiles for {k} changes");
    let wait = other_wait.expect("the other node was bumped");
    assert!(
        wait < Duration::from_secs(2),
        "the other node waited {wait:?}"
    );
    // nothing is lost: the flapper's last change is compiled within the
    // interval after its last compile
    let last = format!("r{k}");
    let settled = pcq
        .wait(Duration::from_secs(8), || async {
            pcq.catalog(flapper)
                .await
                .is_some_and(|c| c.to_string().contains(&format!("\"{last}\"")))
        })
        .await;
    assert!(settled, "{:?}", pcq.status(flapper).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_classifier_decides_the_environment_not_the_node() {
    let _serial = serial().await;
    // puppet-setup's classifier pins pinned-* to production and leaves
    // free-* to their request; both ask for pcq_other
    let names = vec![
        "pinned-01.example.com".to_string(),
        "free-01.example.com".to_string(),
    ];
    let config = PcqConfig::puppetserver().cycle_off().no_load_gate();
    let (pcq, listed) = Pcq::start_listed(&config, &names).await;
    assert!(listed, "{}", pcq.log_text());
    for n in &names {
        let body = serde_json::to_vec(&facts_body(n, "web", 1)).expect("JSON");
        let path = format!("/puppet/v3/facts/{n}?environment=pcq_other");
        let (status, text) = pcq
            .request(Via::Tls(n), reqwest::Method::PUT, &path, &body)
            .await;
        assert_eq!(status, 200, "{text}");
    }
    let compiled = pcq.wait_compiled(&names, Duration::from_secs(120)).await;
    assert_eq!(compiled.len(), 2, "{}", pcq.log_text());
    let environment_of = |catalog: Option<Value>| {
        catalog.map(|c| c["environment"].as_str().unwrap_or("").to_string())
    };
    // the classifier wins: compiled in production, and pcq says so
    assert_eq!(
        environment_of(pcq.catalog(&names[0]).await).as_deref(),
        Some("production")
    );
    let pinned = pcq.status(&names[0]).await.expect("status");
    assert_eq!(pinned["environment"], "production", "{pinned}");
    // where it names none, the request counts
    let free = pcq.catalog(&names[1]).await;
    assert!(
        free.as_ref()
            .is_some_and(|c| c.to_string().contains("/tmp/pcq-e2e/environment")),
        "{free:?}"
    );
    assert_eq!(environment_of(free).as_deref(), Some("pcq_other"));
    assert_eq!(
        pcq.status(&names[1]).await.expect("status")["environment"],
        "pcq_other"
    );
    // deploys follow the classifier's environment
    for (env, node) in [("pcq_other", &names[1]), ("production", &names[0])] {
        let body = serde_json::to_vec(&serde_json::json!({ "environment": env })).expect("JSON");
        let (status, text) = pcq
            .request(Via::Admin, reqwest::Method::POST, "/v1/deploys", &body)
            .await;
        assert_eq!(status, 202, "{text}");
        let answer: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(answer["nodes"], 1, "{env}: {answer}");
        let st = pcq.status(node).await.expect("status");
        assert!(
            st["reason"] == "deploy" || st["state"] == "compiling",
            "{env}: {st}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_the_ca_does_not_have_defers_the_compile_without_blame() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let config = PcqConfig::stand_in(&fake)
        .cycle_off()
        .backoff(Duration::from_secs(2), Duration::from_secs(4))
        .no_load_gate()
        .ca_poll_off();
    let names = nodes("nocert", 2);
    let (pcq, hashes) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(20)).await;
    let n = &names[0];
    let kept = pcq.catalog_file(n);

    // the CA lists the node as signed but answers 404 for its certificate:
    // its trusted extensions are unknown, so no catalog may come of it
    fake.withhold_certificate(n, true);
    let (s, _) = pcq.put_facts(n, &facts_body(n, "db", 1)).await;
    assert_eq!(s, 200);
    let deferred = pcq
        .wait(Duration::from_secs(10), || async {
            metric(
                &pcq.metrics().await,
                "pcq_compile_duration_seconds_count{outcome=\"deferred\"}",
            ) >= 1.0
        })
        .await;
    let st = pcq.status(n).await.expect("status");
    assert!(deferred, "{st}");
    assert_eq!(st["failures"], 0, "not the node's fault: {st}");
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no certificate")),
        "{st}"
    );
    assert_eq!(st["catalog_hash"].as_str(), Some(hashes[0].as_str()));
    let file = pcq.catalog_file(n);
    assert_eq!(file, kept, "no catalog built without the certificate");
    // it retries after one backoff step, and nobody else waits for it
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = pcq.metrics().await;
    assert!(
        metric(
            &m,
            "pcq_compile_duration_seconds_count{outcome=\"deferred\"}"
        ) <= 3.0,
        "retries are paced by the backoff, not a spin:\n{m}"
    );
    let (s, _) = pcq
        .put_facts(&names[1], &facts_body(&names[1], "db", 1))
        .await;
    assert_eq!(s, 200);
    let other = pcq
        .wait(Duration::from_secs(10), || async {
            pcq.status(&names[1])
                .await
                .is_some_and(|s| s["catalog_hash"].as_str() != Some(hashes[1].as_str()))
        })
        .await;
    assert!(other, "{:?}", pcq.status(&names[1]).await);

    // the CA answers again: the node compiles with what it asked for
    fake.withhold_certificate(n, false);
    let compiled = pcq
        .wait(Duration::from_secs(15), || async {
            pcq.status(n)
                .await
                .is_some_and(|s| s["catalog_hash"].as_str() != Some(hashes[0].as_str()))
        })
        .await;
    assert!(compiled, "{:?}", pcq.status(n).await);
    assert_eq!(pcq.status(n).await.expect("status")["failures"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_api_etags_bumps_deploys_and_the_cli() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let config = PcqConfig::stand_in(&fake)
        .cycle_off()
        .no_load_gate()
        .ca_poll_off();
    let names = nodes("api", 3);
    let (pcq, hashes) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(20)).await;
    // the node fetches its own catalog over TLS with its certificate
    let http = pcq.as_node(&names[0]);
    let url = format!("{}/v1/nodes/{}/catalog", pcq.tls, names[0]);
    let r = http.get(&url).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().expect("etag").to_string();
    assert_eq!(etag, format!("\"{}\"", hashes[0]));
    let body: Value = r.json().await.expect("catalog JSON");
    assert_eq!(body["name"], names[0].as_str());
    let r = http
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 304);

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pcq"))
            .args(args)
            .arg("--api")
            .arg(&pcq.socket)
            .output()
            .expect("pcq");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = fake.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(cli(&["bump", &names[1]]).contains("queued"));
    // without --api, the admin socket of the configuration
    let from_config = std::process::Command::new(env!("CARGO_BIN_EXE_pcq"))
        .args(["queue", "--config"])
        .arg(pcq.config_file())
        .output()
        .expect("pcq");
    assert!(
        from_config.status.success(),
        "{}",
        String::from_utf8_lossy(&from_config.stderr)
    );
    assert!(String::from_utf8_lossy(&from_config.stdout).contains("lane"));
    let typo = std::process::Command::new(env!("CARGO_BIN_EXE_pcq"))
        .args(["deploy", "productoin", "--api"])
        .arg(&pcq.socket)
        .output()
        .expect("pcq");
    assert!(
        !typo.status.success(),
        "a deploy of an unknown environment passed"
    );
    assert!(String::from_utf8_lossy(&typo.stderr).contains("unknown environment productoin"));
    let deploy = cli(&["deploy", "production"]);
    assert!(deploy.contains("3 nodes"), "{deploy}");
    let queue = cli(&["queue"]);
    assert!(
        queue.contains("urgent") && queue.contains("deploy") && queue.contains("cycle"),
        "{queue}"
    );
    let status = cli(&["status", &names[2]]);
    assert!(
        status.contains(&names[2]) && status.contains("catalog_hash"),
        "{status}"
    );
    let compiled = pcq
        .wait(Duration::from_secs(10), || async {
            fake.requests.load(std::sync::atomic::Ordering::SeqCst) >= before + 3
        })
        .await;
    assert!(compiled, "bump and deploy compiled nothing");
    let m = pcq.metrics().await;
    assert!(
        metric(&m, "pcq_compiles_started_total{reason=\"manual\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "pcq_compiles_started_total{reason=\"deploy\"}") >= 2.0,
        "{m}"
    );
    assert!(m.contains("pcq_lane_oldest_age_seconds{lane=\"urgent\"}"));
    assert!(m.contains("pcq_gate_blocked{reason=\"empty\"}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pcq"))
        .args(["status", "x", "--api", "/nonexistent/admin.sock"])
        .output()
        .expect("pcq");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `pcq serve` running"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_then_queues_the_rest_at_the_front() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_secs(4)).await;
    let mut pcq = Pcq::start(
        &PcqConfig::stand_in(&fake)
            .cycle_every(Duration::ZERO)
            .max_concurrency(2)
            .no_load_gate()
            .ca_poll_off()
            .shutdown_grace(Duration::from_secs(1)),
    )
    .await;
    let names = nodes("term", 4);
    pcq.upload_all(&names, with_role("web")).await;
    let busy = pcq
        .wait(Duration::from_secs(10), || async {
            pcq.queue().await["in_flight"]
                .as_array()
                .is_some_and(|a| a.len() == 2)
                && fake.requests.load(std::sync::atomic::Ordering::SeqCst) == 2
        })
        .await;
    assert!(busy);
    let requests = fake.requests.load(std::sync::atomic::Ordering::SeqCst);
    let (took, clean) = pcq.terminate(Duration::from_secs(10));
    assert!(clean, "exit status\n{}", pcq.log_text());
    assert!(
        took < Duration::from_secs(3),
        "took {took:?} with a 1 s grace"
    );
    assert_eq!(
        fake.requests.load(std::sync::atomic::Ordering::SeqCst),
        requests,
        "no compile started while stopping"
    );
    pcq.restart().await;
    assert_eq!(pcq.queue().await["nodes"], 4);
    let requeued = pcq
        .wait(Duration::from_secs(10), || async {
            metric(
                &pcq.metrics().await,
                "pcq_compiles_started_total{reason=\"requeued\"}",
            ) >= 2.0
        })
        .await;
    assert!(requeued, "{}", pcq.metrics().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_backend_compiles_with_puppet_catalog_compile() {
    let _serial = serial().await;
    let config = PcqConfig::command()
        .cycle_off()
        .no_load_gate()
        .ca_poll_off();
    let names = nodes("cmd", 1);
    let (pcq, _) =
        Pcq::start_compiled(&config, &names, with_role("cache"), Duration::from_secs(60)).await;
    let name = &names[0];
    let text = std::fs::read_to_string(pcq.state_dir().join(format!("catalogs/{name}.json")))
        .expect("catalog");
    assert!(
        text.contains("role=cache"),
        "the stored facts reached the compile"
    );
    assert!(text.contains("Concat::Fragment"), "real modules");
    // the facts file the YAML terminus read
    let yaml = std::fs::read_to_string(
        pcq.state_dir()
            .join(format!("compile-vardir/yaml/facts/{name}.yaml")),
    )
    .expect("facts yaml");
    assert!(yaml.starts_with("--- !ruby/object:Puppet::Node::Facts\nname: cmd-01.example.com\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_notifications_are_retried_until_they_get_through() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let _serial = serial().await;
    // a webhook that fails its first two calls
    let calls = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let (c, b) = (calls.clone(), bodies.clone());
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let (c, b) = (c.clone(), b.clone());
            async move {
                if c.fetch_add(1, Ordering::SeqCst) < 2 {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                if let Ok(mut b) = b.lock() {
                    b.push(v);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, hook).await });
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let config = PcqConfig::stand_in(&fake)
        .cycle_off()
        .no_load_gate()
        .ca_poll_off()
        .webhook(&format!("http://127.0.0.1:{port}/hook"))
        .notify_attempts(4);
    let names = nodes("hook", 1);
    let (pcq, hashes) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(20)).await;
    let name = &names[0];
    let delivered = pcq
        .wait(Duration::from_secs(15), || async {
            bodies.lock().is_ok_and(|b| b.len() == 1)
        })
        .await;
    assert!(delivered, "after {} calls", calls.load(Ordering::SeqCst));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    let body = bodies.lock().expect("bodies")[0].clone();
    assert_eq!(body["certname"], name.as_str());
    assert_eq!(body["catalog_hash"], hashes[0].as_str());
    assert_eq!(body["environment"], "production");
    let m = pcq.metrics().await;
    assert_eq!(
        metric(
            &m,
            "pcq_notifications_total{channel=\"webhook\",result=\"sent\"}"
        ),
        1.0,
        "{m}"
    );
}

/// A client that trusts Puppet's CA but presents `identity` (or nothing).
fn client_with(identity: Option<(&std::path::Path, &std::path::Path)>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ssl = scheduler::daemon::tls::PuppetSsl {
        ca: std::path::Path::new(harness::SSL).join("certs/ca.pem"),
        cert: identity.map(|i| i.0.to_path_buf()).unwrap_or_default(),
        key: identity.map(|i| i.1.to_path_buf()).unwrap_or_default(),
    };
    let tls = match identity {
        Some(_) => ssl.client_config().expect("TLS"),
        None => rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS")
        .with_root_certificates(ssl.roots().expect("CA"))
        .with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_sees_only_itself_and_strangers_are_refused_at_tls() {
    let _serial = serial().await;
    let (a, b) = (
        "ident-a.example.com".to_string(),
        "ident-b.example.com".to_string(),
    );
    let revoked = format!(
        "ident-r-{}-{}.example.com",
        std::process::id(),
        epoch() as u64
    );
    ensure_certs(&[a.clone(), b.clone(), revoked.clone()]);
    let config = PcqConfig::puppetserver()
        .cycle_off()
        .no_load_gate()
        .ca_poll(Duration::from_secs(1))
        .set("ca.crl_refresh_interval", "\"1s\"");
    let (pcq, _) = Pcq::start_compiled(
        &config,
        &[a.clone(), b.clone()],
        with_role("web"),
        Duration::from_secs(60),
    )
    .await;

    // node a asks, over TLS with its own certificate
    let a_asks = |method: Method, path: String, body: Vec<u8>| {
        let (pcq, a) = (&pcq, &a);
        async move { pcq.request(Via::Tls(a), method, &path, &body).await }
    };
    // its own catalog, status and facts: yes
    let (s, _) = a_asks(Method::GET, format!("/v1/nodes/{a}/catalog"), vec![]).await;
    assert_eq!(s, 200);
    let (s, _) = a_asks(Method::GET, format!("/v1/nodes/{a}/status"), vec![]).await;
    assert_eq!(s, 200);
    // another node's: 403, and logged
    for path in [
        format!("/v1/nodes/{b}/catalog"),
        format!("/v1/nodes/{b}/status"),
    ] {
        let (s, body) = a_asks(Method::GET, path.clone(), vec![]).await;
        assert_eq!(
            s,
            403,
            "{path}: {}\n{}",
            &body[..body.len().min(100)],
            pcq.log_text()
        );
    }
    let body = serde_json::to_vec(&facts_body(&b, "evil", 1)).expect("json");
    let (s, _) = a_asks(Method::PUT, format!("/puppet/v3/facts/{b}"), body).await;
    assert_eq!(s, 403);
    assert_eq!(pcq.status(&b).await.expect("status")["failures"], 0);
    let log = pcq.log_text();
    assert!(
        log.contains(&format!("refused: node {a} asked for the catalog of {b}")),
        "{log}"
    );
    // admin endpoints: not for nodes; for the admin certificate, yes
    let (s, _) = a_asks(Method::GET, "/v1/queue".into(), vec![]).await;
    assert_eq!(s, 403);
    let (s, _) = a_asks(Method::POST, format!("/v1/nodes/{b}/bump"), vec![]).await;
    assert_eq!(s, 403);
    let (s, _) = pcq
        .request(Via::Tls(&harness::host()), Method::GET, "/v1/queue", b"")
        .await;
    assert_eq!(s, 200, "pcq's own certificate is an admin");

    // no certificate: refused at the handshake
    let r = client_with(None)
        .get(format!("{}/v1/nodes/{a}/status", pcq.tls))
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");

    // a certificate from another CA, even with a known certname: refused
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let sh = |args: &str| {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(args)
            .current_dir(d)
            .output()
            .expect("openssl");
        assert!(
            ok.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -subj '/CN=Other CA' -days 1 2>/dev/null");
    sh(&format!(
        "openssl req -newkey rsa:2048 -nodes -keyout n.key -out n.csr -subj '/CN={a}' 2>/dev/null"
    ));
    std::fs::write(d.join("ext"), "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n").expect("ext");
    sh("openssl x509 -req -in n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out n.pem -days 1 -extfile ext 2>/dev/null");
    let stranger = client_with(Some((&d.join("n.pem"), &d.join("n.key"))));
    let r = stranger
        .get(format!("{}/v1/nodes/{a}/catalog", pcq.tls))
        .send()
        .await;
    assert!(r.is_err(), "another CA's certificate was accepted: {r:?}");

    // a revoked certificate: refused once the CA's CRL says so
    let fresh = harness::node_client(&revoked);
    let r = fresh
        .get(format!("{}/v1/nodes/{revoked}/status", pcq.tls))
        .send()
        .await
        .expect("before revocation");
    assert_ne!(r.status(), 403);
    harness::revoke(&revoked);
    let refused = pcq
        .wait(Duration::from_secs(20), || async {
            harness::node_client(&revoked)
                .get(format!("{}/v1/nodes/{revoked}/status", pcq.tls))
                .send()
                .await
                .is_err()
        })
        .await;
    assert!(
        refused,
        "revoked certificate still accepted:\n{}",
        pcq.log_text()
    );
}

/// A module with a custom type and its provider (what pluginsync carries).
const PCQ_MARKER_TYPE: &str = r#"Puppet::Type.newtype(:pcq_marker) do
  @doc = 'A file written by a provider that pluginsync must bring first.'
  ensurable do
    defaultvalues
    defaultto :present
  end
  newparam(:path, namevar: true)
  newparam(:content)
end
"#;
const PCQ_MARKER_PROVIDER: &str = r#"Puppet::Type.type(:pcq_marker).provide(:ruby) do
  def exists?
    File.exist?(resource[:path])
  end

  def create
    File.write(resource[:path], resource[:content])
  end

  def destroy
    File.delete(resource[:path])
  end
end
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_deployed_custom_type_is_fetched_before_the_catalog_using_it_is_applied() {
    let _serial = serial().await;
    let env = "pcq_plugin_test";
    let envdir = std::path::PathBuf::from(format!("/etc/puppet/code/environments/{env}"));
    let _ = std::fs::remove_dir_all(&envdir);
    std::fs::create_dir_all(envdir.join("manifests")).expect("environment");
    let node = "sync-plugin.example.com".to_string();
    let marker = std::path::PathBuf::from(format!("/tmp/pcq-e2e/{node}.marker"));
    let _ = std::fs::remove_file(&marker);
    std::fs::create_dir_all("/tmp/pcq-e2e").expect("/tmp/pcq-e2e");
    // the agent must not have the type from an earlier run
    let libdir = std::process::Command::new("puppet")
        .args(["config", "print", "libdir"])
        .output()
        .expect("puppet config");
    let libdir = std::path::PathBuf::from(String::from_utf8_lossy(&libdir.stdout).trim());
    let _ = std::fs::remove_file(libdir.join("puppet/type/pcq_marker.rb"));
    let _ = std::fs::remove_dir_all(libdir.join("puppet/provider/pcq_marker"));
    std::fs::write(
        envdir.join("manifests/site.pp"),
        format!("node default {{\n  file {{ '/tmp/pcq-e2e/{node}.before': content => \"before\\n\" }}\n}}\n"),
    )
    .expect("site.pp");

    let config = PcqConfig::puppetserver()
        .cycle_off()
        .no_load_gate()
        .ca_poll(Duration::from_secs(1));
    let (pcq, listed) = Pcq::start_listed(&config, std::slice::from_ref(&node)).await;
    assert!(listed);
    let work = tempfile::tempdir().expect("tmp");
    let state = work.path().join("state.json");
    let sync = || {
        let args = ["--environment", env, "--facts-command", "facter --json"];
        harness::pcq_sync(&pcq.tls, &node, &state, &args)
    };
    // the first apply fetches the plugins first
    let mut first = None;
    for _ in 0..60 {
        let (code, text) = sync();
        assert_eq!(code, 0, "{text}");
        if text.contains("applied") {
            first = Some(text);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let first = first.unwrap_or_else(|| panic!("never applied:\n{}", pcq.log_text()));
    assert!(
        first.contains(&format!("plugins of {env} fetched")),
        "{first}"
    );
    let (code, text) = sync();
    assert_eq!(code, 0, "{text}");
    assert!(
        !text.contains("plugins"),
        "nothing changed, nothing fetched: {text}"
    );
    let before = pcq.status(&node).await.expect("status")["catalog_hash"].clone();

    // a deploy brings a module with a custom type the node's code now uses
    let module = envdir.join("modules/pcq_plugin/lib/puppet");
    std::fs::create_dir_all(module.join("type")).expect("module");
    std::fs::create_dir_all(module.join("provider/pcq_marker")).expect("module");
    std::fs::write(module.join("type/pcq_marker.rb"), PCQ_MARKER_TYPE).expect("type");
    std::fs::write(
        module.join("provider/pcq_marker/ruby.rb"),
        PCQ_MARKER_PROVIDER,
    )
    .expect("provider");
    std::fs::write(
        envdir.join("manifests/site.pp"),
        format!("node default {{\n  pcq_marker {{ '{}': content => \"made by a custom type\\n\" }}\n}}\n", marker.display()),
    )
    .expect("site.pp");
    let body = serde_json::to_vec(&serde_json::json!({ "environment": env })).expect("JSON");
    let (status, text) = pcq
        .request(Via::Admin, reqwest::Method::POST, "/v1/deploys", &body)
        .await;
    assert_eq!(status, 202, "{text}");
    let recompiled = pcq
        .wait(Duration::from_secs(60), || async {
            pcq.status(&node)
                .await
                .is_some_and(|s| s["catalog_hash"] != before && !s["catalog_hash"].is_null())
        })
        .await;
    assert!(
        recompiled,
        "{:?}\n{}",
        pcq.status(&node).await,
        pcq.log_text()
    );

    // the next sync fetches the plugins, then applies: the type works
    let (code, text) = sync();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("plugins of {env} fetched")),
        "{text}"
    );
    assert!(text.contains("applied"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&marker).expect("the custom type made the file"),
        "made by a custom type\n"
    );
    let _ = std::fs::remove_dir_all(&envdir);
}

#[tokio::test(flavor = "multi_thread")]
async fn pcq_sync_applies_with_a_real_agent_only_what_changed() {
    let _serial = serial().await;
    let node = "sync-a.example.com".to_string();
    let config = PcqConfig::puppetserver()
        .cycle_off()
        .no_load_gate()
        .ca_poll(Duration::from_secs(1));
    let (pcq, _) = Pcq::start_listed(&config, std::slice::from_ref(&node)).await;
    let work = tempfile::tempdir().expect("tmp");
    let facts_d = work.path().join("facts.d");
    std::fs::create_dir_all(&facts_d).expect("facts.d");
    let role_fact = |role: &str| {
        std::fs::write(facts_d.join("pcq.txt"), format!("pcq_role={role}\n")).expect("fact")
    };
    let target = std::path::PathBuf::from(format!("/tmp/pcq-e2e/{node}.role"));
    let _ = std::fs::remove_file(&target);
    role_fact("web");
    let state = work.path().join("state.json");
    let facts_command = format!("facter --json --external-dir {}", facts_d.display());
    let sync = |server: &str| {
        harness::pcq_sync(server, &node, &state, &["--facts-command", &facts_command])
    };

    // first sync: facts go up, the node joins; sync until the catalog is applied
    let mut applied = false;
    for _ in 0..30 {
        let (code, text) = sync(&pcq.tls);
        assert_eq!(code, 0, "{text}");
        if text.contains("applied") {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(applied, "never applied:\n{}", pcq.log_text());
    assert_eq!(
        std::fs::read_to_string(&target).expect("the agent made the file"),
        "role=web color=grey\n"
    );
    let cached =
        std::path::PathBuf::from(format!("/var/cache/puppet/client_data/catalog/{node}.json"));
    // pcq sync writes it 0600; the agent re-saves it after the run with its
    // own mode (0660): never world-readable either way
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&cached)
            .expect("cached catalog")
            .permissions(),
    );
    assert_eq!(
        mode & 0o007,
        0,
        "cached catalog is world-readable: {mode:o}"
    );

    // nothing changed: 304, no apply
    let mtime = std::fs::metadata(&target)
        .and_then(|m| m.modified())
        .expect("mtime");
    let (code, text) = sync(&pcq.tls);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("catalog unchanged") && !text.contains("applied"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&target)
            .and_then(|m| m.modified())
            .expect("mtime"),
        mtime
    );

    // a used fact changes: pcq recompiles, the next sync applies it
    role_fact("db");
    let mut applied = false;
    for _ in 0..30 {
        let (code, text) = sync(&pcq.tls);
        assert_eq!(code, 0, "{text}");
        if text.contains("applied") {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(applied);
    assert_eq!(
        std::fs::read_to_string(&target).expect("file"),
        "role=db color=grey\n"
    );

    // a fact the catalog does not read changes: sync does not even
    // upload (pcq's status lists the paths the catalog reads)
    assert!(
        pcq.wait_analysed(&node, Duration::from_secs(30)).await,
        "the analysis never reached the node's status"
    );
    let (code, text) = sync(&pcq.tls);
    assert_eq!(code, 0, "{text}");
    std::fs::write(facts_d.join("pcq.txt"), "pcq_role=db\npcq_unused=1\n").expect("fact");
    let (code, text) = sync(&pcq.tls);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("facts unchanged"), "{text}");

    // pcq unreachable: a clear message, exit 1, the last catalog stays
    let (code, text) = sync(&format!("https://{}:1", harness::host()));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("cannot reach pcq") && text.contains("the last catalog stays in place"),
        "{text}"
    );
    assert!(cached.exists());
    assert_eq!(
        std::fs::read_to_string(&target).expect("file"),
        "role=db color=grey\n"
    );

    // and a fact it reads does go up
    std::fs::write(facts_d.join("pcq.txt"), "pcq_role=db\npcq_color=red\n").expect("fact");
    let (code, text) = sync(&pcq.tls);
    assert!(code == 0 && text.contains("facts uploaded"), "{text}");
}
