//! End-to-end, a hostile host and network: floods of idle and slow
//! connections, CRL answers that are wrong, and local users who are not
//! administrators. `pcq serve` runs as a process with a stand-in Puppet
//! Server (a CA whose answers the tests choose) and the real CA's
//! certificates. Run by `scripts/test` (`cargo test --features e2e`).

#![cfg(feature = "e2e")]

#[path = "e2e/harness.rs"]
#[allow(dead_code)] // each test binary uses part of it
mod harness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{facts_body, metric, serial, with_role, FakeServer, Pcq, PcqConfig, Via};
use reqwest::Method;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The stand-in server with nothing running by itself: no cycle, no load
/// gate, no CA listing (nodes join by uploading facts).
fn quiet(fake: &FakeServer) -> PcqConfig {
    PcqConfig::stand_in(fake)
        .cycle_off()
        .no_load_gate()
        .ca_poll_off()
}

/// pcq with `config`, and `node` (certificate made if missing) compiled.
async fn with_one_node(config: &PcqConfig, node: &str) -> Pcq {
    let names = [node.to_string()];
    harness::ensure_certs(&names);
    Pcq::start_compiled(config, &names, with_role("web"), Duration::from_secs(20))
        .await
        .0
}

/// Open files of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// CPU time process `pid` has used (user + system).
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name (which may hold spaces) in parentheses
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15: 12 and 13 after the name
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ = 100
}

/// The TLS API's address.
fn tls_addr(pcq: &Pcq) -> SocketAddr {
    let port = pcq.tls.rsplit(':').next().expect("port");
    format!("127.0.0.1:{port}").parse().expect("address")
}

/// `n` TCP connections to `addr` that never say anything.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            _ => break, // the backlog is full: enough
        }
    }
    held
}

/// `n` connections that complete TLS as `certname` and then send the
/// start of a request whose headers never end.
async fn slow_connections(
    addr: SocketAddr,
    certname: &str,
    n: usize,
) -> Vec<tokio_rustls::client::TlsStream<TcpStream>> {
    let ssl = scheduler::daemon::tls::PuppetSsl::new(std::path::Path::new(harness::SSL), certname);
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(ssl.client_config().expect("TLS client")));
    let name = rustls::pki_types::ServerName::try_from(harness::host()).expect("server name");
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut tls = connector
            .connect(name.clone(), tcp)
            .await
            .expect("TLS handshake");
        tls.write_all(
            format!("PUT /puppet/v3/facts/{certname} HTTP/1.1\r\nhost: x\r\n").as_bytes(),
        )
        .await
        .expect("partial request");
        held.push(tls);
    }
    held
}

/// A node's facts upload and catalog GET over TLS; how long each took.
async fn node_requests(pcq: &Pcq, certname: &str, uptime: u64) -> (Duration, Duration) {
    let t = Instant::now();
    let (status, body) = pcq
        .put_facts(certname, &facts_body(certname, "web", uptime))
        .await;
    let upload = t.elapsed();
    assert_eq!(status, 200, "{body}");
    let t = Instant::now();
    let (status, _) = pcq
        .request(
            Via::Tls(certname),
            Method::GET,
            &format!("/v1/nodes/{certname}/catalog"),
            b"",
        )
        .await;
    assert_eq!(status, 200);
    (upload, t.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_idle_and_slow_connections_neither_exhaust_nor_slow_the_api() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let node = "conn-flood.example.com".to_string();
    // the open-file limit systemd gives a service (soft 1,024); pcq raises
    // it to the hard limit itself
    let config = quiet(&fake)
        .set("api.client_timeout", "\"20s\"")
        .nofile(1024, 16384);
    let pcq = with_one_node(&config, &node).await;
    let pid = pcq.pid();
    let addr = tls_addr(&pcq);
    let baseline = fds(pid);

    let t = Instant::now();
    let idle = idle_connections(addr, 3000).await;
    let slow = slow_connections(addr, &node, 200).await;
    assert_eq!(idle.len(), 3000, "the daemon stopped accepting");
    let flooded = t.elapsed();
    // pcq holds them all: file descriptors bounded by the cap, not by luck
    let accepted_all = pcq
        .wait(Duration::from_secs(2), || async {
            fds(pid) >= baseline + 3000
        })
        .await;
    let holding = fds(pid);
    assert!(
        accepted_all,
        "{baseline} -> {holding} open files: pcq did not accept the connections"
    );
    assert!(
        holding >= baseline + 3000 && holding <= baseline + 8192,
        "{baseline} -> {holding} open files"
    );

    // while they are held: a node is answered within a second, and pcq
    // stays nearly idle (no accept loop spinning, no log flood)
    let cpu_before = cpu(pid);
    let watched = Instant::now();
    let (upload, get) = node_requests(&pcq, &node, 2).await;
    assert!(
        upload < Duration::from_secs(1),
        "facts upload took {upload:?}"
    );
    assert!(get < Duration::from_secs(1), "catalog GET took {get:?}");
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(watched.elapsed())).await;
    let used = cpu(pid) - cpu_before;
    assert!(
        flooded < Duration::from_secs(15),
        "the flood took {flooded:?}: the timeouts would end it before the checks"
    );
    assert!(
        used < Duration::from_millis(500),
        "pcq used {used:?} of CPU in 2 s while connections were held"
    );
    let log_lines = pcq.log_text().lines().count();
    assert!(log_lines < 2000, "{log_lines} log lines");

    // silent clients are closed after api.client_timeout, even while the
    // test still holds its ends: pcq is back to its baseline
    let closed_by = |m: &str, result: &str| {
        metric(
            m,
            &format!("pcq_api_connections_closed_total{{result=\"{result}\"}}"),
        )
    };
    let closed = pcq
        .wait(Duration::from_secs(40), || async {
            let m = pcq.metrics().await;
            closed_by(&m, "handshake_timeout") >= 3000.0
                && closed_by(&m, "client_timeout") >= 200.0
                && fds(pid) <= baseline + 20
        })
        .await;
    assert!(
        closed,
        "{} open files after the timeout (baseline {baseline})\n{}",
        fds(pid),
        pcq.metrics().await
    );
    drop((idle, slow));
    let (upload, get) = node_requests(&pcq, &node, 3).await;
    assert!(upload < Duration::from_secs(1) && get < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn at_its_file_limit_pcq_caps_connections_without_spinning_and_recovers() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let node = "conn-cap.example.com".to_string();
    // a hard limit of 1,024 open files: pcq cannot raise it, so it lowers
    // its connection cap to fit instead of failing accepts in a loop
    let config = quiet(&fake)
        .set("api.client_timeout", "\"30s\"")
        .nofile(1024, 1024);
    let pcq = with_one_node(&config, &node).await;
    let pid = pcq.pid();
    assert!(
        pcq.log_text().contains("at most 768 connections"),
        "{}",
        pcq.log_text()
    );
    let addr = tls_addr(&pcq);
    let lines_before = pcq.log_text().lines().count();
    let idle = idle_connections(addr, 1100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_before = cpu(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu(pid) - cpu_before;
    let open = fds(pid);
    assert!(open < 1024, "{open} open files");
    assert!(
        used < Duration::from_millis(500),
        "pcq used {used:?} of CPU in 3 s at its cap"
    );
    let new_lines = pcq.log_text().lines().count() - lines_before;
    assert!(
        new_lines < 50,
        "{new_lines} log lines at the cap:\n{}",
        pcq.log_text()
    );
    let m = pcq.metrics().await;
    assert!(
        metric(&m, "pcq_api_connection_cap_reached_total") >= 1.0,
        "{m}"
    );
    // the flood goes: a node is answered at once
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (upload, get) = node_requests(&pcq, &node, 2).await;
    assert!(
        upload < Duration::from_secs(1) && get < Duration::from_secs(1),
        "{upload:?} {get:?}"
    );
}

/// The real CA's CRL as Puppet Server answers it.
fn ca_crl() -> Vec<u8> {
    std::fs::read(std::path::Path::new(harness::SSL).join("ca/ca_crl.pem")).expect("the CA's CRL")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crl_refresh_never_loosens_revocation_and_a_new_one_closes_open_connections() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let stamp = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let (keep, revoked) = (
        format!("crl-keep-{stamp}.example.com"),
        format!("crl-revoked-{stamp}.example.com"),
    );
    harness::ensure_certs(&[keep.clone(), revoked.clone()]);
    let before = ca_crl();
    fake.serve_crl(Some(before.clone()));
    // the CA is not polled for nodes: the CRL is refreshed all the same
    let config = quiet(&fake).set("ca.crl_refresh_interval", "\"1s\"");
    let pcq = Pcq::start(&config).await;
    let accepted = |certname: String| {
        let url = format!("{}/v1/nodes/{certname}/status", pcq.tls);
        async move {
            harness::node_client(&certname)
                .get(url)
                .send()
                .await
                .is_ok()
        }
    };
    assert!(accepted(keep.clone()).await);
    // the node about to be revoked holds a kept-alive connection
    let held = harness::node_client(&revoked);
    let status_url = format!("{}/v1/nodes/{revoked}/status", pcq.tls);
    assert!(held.get(&status_url).send().await.is_ok());

    harness::revoke(&revoked);
    let after = ca_crl();
    assert_ne!(before, after);
    fake.serve_crl(Some(after.clone()));
    let in_force = pcq
        .wait(Duration::from_secs(10), || async {
            !accepted(revoked.clone()).await
        })
        .await;
    assert!(in_force, "revocation not in force:\n{}", pcq.log_text());
    // the connection it held was closed: its next request needs a new
    // handshake, which is refused
    let r = held.get(&status_url).send().await;
    assert!(
        r.is_err(),
        "the revoked node's open connection still answers: {r:?}"
    );
    assert!(accepted(keep.clone()).await);

    // wrong answers: garbage, nothing, an older CRL, a forged signature,
    // no answer. None of them lets the revoked node back in.
    let mut forged = after.clone();
    let text = String::from_utf8_lossy(&after).to_string();
    let end = text.find("-----END X509 CRL-----").expect("PEM");
    // a character inside the base64 of the signature, near its end
    let at = text[..end].trim_end().len() - 5;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let wrongs: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("invalid", Some(b"<html>502 Bad Gateway</html>".to_vec())),
        ("invalid", Some(Vec::new())),
        ("older", Some(before.clone())),
        ("invalid", Some(forged)),
        ("failed", None),
    ];
    for (result, answer) in wrongs {
        let label = format!("pcq_crl_refreshes_total{{result=\"{result}\"}}");
        let counted = metric(&pcq.metrics().await, &label);
        fake.serve_crl(answer);
        let seen = pcq
            .wait(Duration::from_secs(10), || async {
                metric(&pcq.metrics().await, &label) > counted
            })
            .await;
        assert!(seen, "{label} not counted:\n{}", pcq.log_text());
        assert!(
            !accepted(revoked.clone()).await,
            "a {result} CRL answer let the revoked node in"
        );
        assert!(accepted(keep.clone()).await);
    }
    // with no answer the CRL goes stale: a metric and a warning
    let stale = pcq
        .wait(Duration::from_secs(10), || async {
            metric(&pcq.metrics().await, "pcq_crl_age_seconds") >= 3.0
        })
        .await;
    assert!(stale, "{}", pcq.metrics().await);
    let warned = pcq
        .wait(Duration::from_secs(5), || async {
            pcq.log_text().contains("was last confirmed current")
        })
        .await;
    assert!(warned, "{}", pcq.log_text());
    assert!(metric(&pcq.metrics().await, "pcq_crl_expires_in_seconds") > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_channel_is_a_socket_for_its_group_and_a_token_on_loopback() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    // the socket's group: nogroup (65534), the one nobody's primary group is
    let config = quiet(&fake).set("api.admin_group", "\"65534\"");
    let mut pcq = Pcq::start(&config).await;
    let meta = std::fs::metadata(&pcq.socket).expect("the admin socket");
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534);

    // the CLI through the socket, as an unprivileged user: refused
    // without the group, served with it
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let pcq_bin = dir.path().join("pcq");
    std::fs::copy(env!("CARGO_BIN_EXE_pcq"), &pcq_bin).expect("copy pcq");
    let socket_dir = pcq.socket.parent().expect("socket dir").to_path_buf();
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let as_nobody = |groups: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534"])
            .args(groups.split_whitespace())
            .arg(&pcq_bin)
            .args(["queue", "--json", "--api"])
            .arg(&pcq.socket)
            .output()
            .expect("setpriv")
    };
    let member = as_nobody("--clear-groups");
    assert!(
        member.status.success(),
        "nogroup's member refused: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    // the same user with a primary group that is not the socket's
    let stranger = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=1", "--clear-groups"])
        .arg(&pcq_bin)
        .args(["queue", "--api"])
        .arg(&pcq.socket)
        .output()
        .expect("setpriv");
    assert!(
        !stranger.status.success(),
        "a stranger used the admin socket"
    );
    let said = String::from_utf8_lossy(&stranger.stderr);
    assert!(said.contains("ermission denied"), "{said}");

    // loopback TCP: the token and a loopback Host, or nothing but /healthz
    let plain = reqwest::Client::new();
    let queue = format!("{}/v1/queue", pcq.api);
    let r = plain.get(&queue).send().await.expect("answer");
    assert_eq!(r.status(), 401);
    let r = plain
        .get(&queue)
        .bearer_auth("not-the-token-0123456789")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401);
    let r = plain
        .get(&queue)
        .bearer_auth(harness::ADMIN_TOKEN)
        .header("host", "attacker.example:8144")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 403, "a rebound Host was served");
    let r = plain
        .get(format!("{}/v1/nodes/x.example.com/catalog", pcq.api))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401, "a catalog without the token");
    let facts = serde_json::to_vec(&facts_body("forged.example.com", "evil", 1)).expect("JSON");
    let r = plain
        .put(format!("{}/puppet/v3/facts/forged.example.com", pcq.api))
        .header("content-type", "application/json")
        .body(facts)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401, "forged facts without the token");
    assert!(pcq.status("forged.example.com").await.is_none());
    let r = plain
        .get(format!("{}/healthz", pcq.api))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    let r = plain
        .get(&queue)
        .bearer_auth(harness::ADMIN_TOKEN)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);

    // the metrics token (made in the state directory, 0600): GET /metrics
    // and nothing else, so a Prometheus given it reads no catalog
    let metrics_token_file = pcq.state_dir().join("metrics.token");
    let mode = std::fs::metadata(&metrics_token_file)
        .expect("metrics.token made at start")
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let metrics_token = std::fs::read_to_string(&metrics_token_file).expect("read");
    let metrics_token = metrics_token.trim();
    assert_ne!(metrics_token, harness::ADMIN_TOKEN);
    let r = plain
        .get(format!("{}/metrics", pcq.api))
        .bearer_auth(metrics_token)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("body").contains("pcq_nodes"));
    for (method, path) in [
        (reqwest::Method::GET, "/v1/queue"),
        (reqwest::Method::GET, "/v1/nodes/x.example.com/catalog"),
        (reqwest::Method::PUT, "/puppet/v3/facts/forged.example.com"),
        (reqwest::Method::POST, "/v1/deploys"),
    ] {
        let r = plain
            .request(method.clone(), format!("{}{path}", pcq.api))
            .bearer_auth(metrics_token)
            .body("{}")
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 403, "{method} {path} with the metrics token");
    }

    // a token file others may read stops the start, loudly
    pcq.terminate(Duration::from_secs(10));
    let loose = tempfile::tempdir().expect("tmp");
    let token = loose.path().join("admin.token");
    std::fs::write(&token, "0123456789abcdef0123456789").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = std::fs::read_to_string(pcq.config_file())
        .expect("config")
        .replace(
            &pcq.token_file.display().to_string(),
            &token.display().to_string(),
        );
    let bad_config = loose.path().join("pcq.toml");
    std::fs::write(&bad_config, text).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pcq"))
        .args(["serve", "--config"])
        .arg(&bad_config)
        .output()
        .expect("pcq");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("chmod 600"), "{said}");
}

/// The CA's CRL with its own CRL (the intermediate's, which lists node
/// certificates) replaced by one the CA key signs now, numbered above any
/// the CA has issued and due `seconds` from now.
fn crl_due_in(seconds: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = std::path::Path::new(harness::SSL).join("ca");
    let script = format!(
        "openssl x509 -in {ca}/ca_crt.pem -out inter.pem && touch index.txt && echo 7FFFFFFF > crlnumber \
         && printf '[ca]\\ndefault_ca=x\\n[x]\\ndatabase=index.txt\\ncrlnumber=crlnumber\\ndefault_md=sha256\\n' > ca.cnf \
         && openssl ca -batch -gencrl -config ca.cnf -keyfile {ca}/ca_key.pem -cert inter.pem -crlsec {seconds} -out own.pem",
        ca = ca.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir.path())
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pem = std::fs::read(dir.path().join("own.pem")).expect("CRL");
    // the root's CRL as the CA has it (the second in its file)
    let text = String::from_utf8(ca_crl()).expect("PEM");
    let second = text
        .match_indices("-----BEGIN X509 CRL-----")
        .nth(1)
        .map(|(i, _)| i)
        .expect("the root's CRL");
    pem.extend_from_slice(&text.as_bytes()[second..]);
    pem
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crl_past_its_next_update_refuses_every_client() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    let node = "crl-expiry.example.com".to_string();
    harness::ensure_certs(std::slice::from_ref(&node));
    fake.serve_crl(Some(ca_crl()));
    let config = quiet(&fake).set("ca.crl_refresh_interval", "\"1s\"");
    let pcq = Pcq::start(&config).await;
    let accepted = || {
        let url = format!("{}/v1/nodes/{node}/status", pcq.tls);
        let client = harness::node_client(&node);
        async move { client.get(url).send().await.is_ok() }
    };
    assert!(accepted().await);
    // a valid CRL, newer than the CA's, due in 3 s; after that pcq cannot
    // know who was revoked since, and refuses everyone
    let loaded = metric(
        &pcq.metrics().await,
        "pcq_crl_refreshes_total{result=\"loaded\"}",
    );
    fake.serve_crl(Some(crl_due_in(3)));
    let taken = pcq
        .wait(Duration::from_secs(10), || async {
            metric(
                &pcq.metrics().await,
                "pcq_crl_refreshes_total{result=\"loaded\"}",
            ) > loaded
        })
        .await;
    assert!(taken, "{}", pcq.log_text());
    let refused = pcq
        .wait(Duration::from_secs(15), || async { !accepted().await })
        .await;
    assert!(refused, "a client was accepted past the CRL's next update");
    let expired = pcq
        .wait(Duration::from_secs(5), || async {
            metric(&pcq.metrics().await, "pcq_crl_expires_in_seconds") < 0.0
                && pcq.log_text().contains("every client is refused")
        })
        .await;
    assert!(expired, "{}\n{}", pcq.metrics().await, pcq.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_master_whose_certificate_does_not_name_the_url_is_down_and_says_why() {
    let _serial = serial().await;
    let fake = FakeServer::start(Duration::from_millis(10)).await;
    // the stand-in presents this host's certificate, which does not name
    // "localhost": every request fails at TLS
    let port = fake.url.rsplit(':').next().expect("port").to_string();
    let config = PcqConfig::stand_in(&fake)
        .cycle_off()
        .no_load_gate()
        .set("backend.url", &format!("\"https://localhost:{port}\""))
        .ca_poll(Duration::from_secs(1));
    let pcq = Pcq::start(&config).await;
    let down = pcq
        .wait(Duration::from_secs(10), || async {
            let m = pcq.metrics().await;
            metric(&m, "pcq_master_up{master=\"local\"}") == 0.0
                && metric(&m, "pcq_ca_listings_total{result=\"failed\"}") >= 1.0
        })
        .await;
    assert!(down, "{}\n{}", pcq.metrics().await, pcq.log_text());
    let log = pcq.log_text();
    assert!(
        log.contains("not valid for name") && log.contains("localhost"),
        "the TLS cause is not in the log:\n{log}"
    );
    let queue = pcq.queue().await;
    assert_eq!(queue["masters"][0]["up"], false, "{queue}");
}
