//! What the end-to-end tests share: the real Puppet Server that
//! `scripts/puppet-setup` started, its CA, a `pcq serve` process per test,
//! and a stand-in Puppet Server for fault injection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const SSL: &str = "/var/lib/puppet/ssl";

/// The tests share one Puppet Server (one test stops it): one at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub fn host() -> String {
    scheduler::puppet_conf::hostname()
}

pub fn server_url() -> String {
    format!("https://{}:8140", host())
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes sure the CA has signed certificates for `names`.
pub fn ensure_certs(names: &[String]) {
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !Path::new(SSL).join(format!("certs/{n}.pem")).exists())
        .collect();
    if missing.is_empty() {
        return;
    }
    let list = missing
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    run(Command::new("puppetserver").args(["ca", "generate", "--certname", &list]));
}

/// Makes sure the CA has signed a certificate for `name` carrying the
/// extensions of `csr_attributes` (YAML, as in `csr_attributes.yaml`): the
/// way a provisioned agent gets one (`puppet ssl submit_request`, then the
/// CA signs, then the agent downloads it).
pub fn ensure_cert_with_extensions(name: &str, csr_attributes: &str) {
    if Path::new(SSL).join(format!("certs/{name}.pem")).exists() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp dir");
    let attributes = dir.path().join("csr_attributes.yaml");
    std::fs::write(&attributes, csr_attributes).expect("csr attributes");
    let server = ["--server", &host(), "--certname", name];
    run(Command::new("puppet")
        .args(["ssl", "submit_request", "--csr_attributes"])
        .arg(&attributes)
        .args(server));
    run(Command::new("puppetserver").args(["ca", "sign", "--certname", name]));
    run(Command::new("puppet")
        .args(["ssl", "download_cert"])
        .args(server));
}

/// Revokes a certificate.
pub fn revoke(name: &str) {
    run(Command::new("puppetserver").args(["ca", "revoke", "--certname", name]));
}

/// Starts or stops the shared Puppet Server. It must not inherit the
/// files this process inherited: run as `flock LOCK cargo test`, the
/// tests hold the lock's descriptor, and a server started with it would
/// hold the lock for as long as it runs.
pub fn puppetserver(action: &str) {
    let close_inherited = r#"for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec "$0" "$@""#;
    run(Command::new("bash")
        .args(["-c", close_inherited])
        .arg(repo().join("scripts/puppetserver"))
        .arg(action));
}

/// Waits until Puppet Server has no JRuby borrowed (compiles a killed pcq
/// left behind have finished).
pub async fn wait_server_idle() {
    let ssl = scheduler::daemon::tls::PuppetSsl::new(Path::new(SSL), &host());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(ssl.client_config().expect("TLS"))
        .build()
        .expect("client");
    let url = format!(
        "{}/status/v1/services/jruby-metrics?level=debug",
        server_url()
    );
    for _ in 0..600 {
        let free = async {
            let v: Value = client.get(&url).send().await.ok()?.json().await.ok()?;
            let m = &v["status"]["experimental"]["metrics"];
            Some(m["num-free-jrubies"] == m["num-jrubies"])
        };
        if free.await == Some(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Puppet Server stayed busy");
}

/// How much of a request's end in the access log may overlap the next
/// request's start without counting as concurrency. The log stamps a request
/// when Jetty completes it, on another thread, after the client has read the
/// last byte; pcq may have sent its next request by then, and both stamps are
/// rounded to the millisecond. A CI run saw such an overlap count as a third
/// compile. A real third compile overlaps by most of a compile (hundreds of
/// milliseconds at least), far more than this.
pub const LOG_STAMP_SLACK_MS: i64 = 50;

/// Puppet Server's access log (`scripts/puppet-setup` makes its stamps
/// millisecond ones).
const ACCESS_LOG: &str = "/var/log/puppetserver/puppetserver-access.log";

/// Now, as the access log stamps requests.
pub fn server_log_time() -> String {
    let out = Command::new("date")
        .arg("+%Y-%m-%d %H:%M:%S.%3N")
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Now, in the access log's milliseconds since the Unix epoch.
pub fn server_now_ms() -> i64 {
    log_stamp_ms(&server_log_time()).expect("a log stamp")
}

/// One `POST /puppet/v4/catalog` in Puppet Server's access log.
#[derive(Clone, Debug)]
pub struct ServerCompile {
    /// When it arrived, milliseconds since the Unix epoch (its logged end
    /// less its logged duration).
    pub start_ms: i64,
    /// When it was logged (at its end).
    pub end_ms: i64,
    /// Its user agent: pcq's names the node and the leader's epoch.
    pub user_agent: String,
}

impl ServerCompile {
    /// The node pcq asked for: `pcq/V (node NAME; leader epoch E)`.
    pub fn node(&self) -> Option<&str> {
        let rest = self.user_agent.split_once("(node ")?.1;
        rest.split([';', ')']).next()
    }

    /// The epoch of the leader that asked.
    pub fn epoch(&self) -> Option<i64> {
        let rest = self.user_agent.split_once("leader epoch ")?.1;
        rest.split(')').next()?.parse().ok()
    }
}

/// Every v4 catalog request the access log stamped at or after `since`
/// (a [`server_log_time`]), in the log's order.
pub fn server_compiles(since: &str) -> Vec<ServerCompile> {
    let log = std::fs::read_to_string(ACCESS_LOG).unwrap_or_default();
    let mut compiles = Vec::new();
    for line in log
        .lines()
        .filter(|l| l.contains("POST /puppet/v4/catalog"))
    {
        let Some(ts) = line.split('[').nth(1).and_then(|r| r.split(']').next()) else {
            continue;
        };
        if ts < since {
            continue;
        }
        // ... "%r" %s %b "%i{Referer}" "%i{User-Agent}" %D %i{Content-Length} borrow
        let user_agent = line.split('"').nth(5).unwrap_or_default().to_string();
        let duration = line
            .split_whitespace()
            .rev()
            .nth(2)
            .and_then(|d| d.parse::<i64>().ok());
        if let (Some(end_ms), Some(duration)) = (log_stamp_ms(ts), duration) {
            compiles.push(ServerCompile {
                start_ms: end_ms - duration,
                end_ms,
                user_agent,
            });
        }
    }
    compiles
}

/// `YYYY-MM-DD HH:MM:SS.mmm` (the host's local time, UTC here) as
/// milliseconds since the Unix epoch.
fn log_stamp_ms(ts: &str) -> Option<i64> {
    let (date, time) = ts.split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split([':', '.']).map(|x| x.parse::<i64>().ok());
    let (h, min, s, ms) = (t.next()??, t.next()??, t.next()??, t.next()??);
    // days from the civil date (Howard Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((((days * 24 + h) * 60 + min) * 60 + s) * 1000 + ms)
}

/// The most v4 catalog requests Puppet Server worked on at once since
/// `since` (an end overlapping the next start by up to
/// [`LOG_STAMP_SLACK_MS`] does not count).
pub fn server_concurrency(since: &str) -> usize {
    let mut events = Vec::new();
    for c in server_compiles(since) {
        // an end sorts before a start at the same millisecond
        events.push((c.start_ms, 1i32));
        events.push(((c.end_ms - LOG_STAMP_SLACK_MS).max(c.start_ms), -1));
    }
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// This host's facts (facter), as a base for test nodes.
pub fn base_facts() -> serde_json::Map<String, Value> {
    static FACTS: OnceLock<serde_json::Map<String, Value>> = OnceLock::new();
    FACTS
        .get_or_init(|| {
            // facter may exit non-zero for a fact it cannot resolve here;
            // what it prints is still the facts
            let out = Command::new("facter")
                .arg("--json")
                .output()
                .expect("facter");
            match serde_json::from_slice(&out.stdout) {
                Ok(Value::Object(m)) => m,
                other => panic!("facter --json: {other:?}"),
            }
        })
        .clone()
}

/// A facts upload body for `certname` with the custom facts of the test
/// code (`pcq_role`, `pcq_color`) and a volatile fact.
pub fn facts_body(certname: &str, role: &str, uptime: u64) -> Value {
    let mut values = base_facts();
    values.insert("pcq_role".into(), json!(role));
    values.insert("uptime_seconds".into(), json!(uptime));
    values.insert("clientcert".into(), json!(certname));
    json!({
        "name": certname,
        "values": values,
        "timestamp": "2026-11-25T00:00:00.000000000+00:00",
        "expiration": "2026-11-26T00:00:00.000000000+00:00",
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A `pcq serve` process with its own state directory and ports: the TLS
/// API (nodes, by certificate) and the plain loopback admin API.
pub struct Pcq {
    pub dir: tempfile::TempDir,
    /// The admin API (plain HTTP on loopback).
    pub api: String,
    /// The TLS API.
    pub tls: String,
    config: PathBuf,
    state: PathBuf,
    log: PathBuf,
    nofile: Option<(u64, u64)>,
    /// The admin socket.
    pub socket: PathBuf,
    /// The admin listener's bearer token file.
    pub token_file: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
    nodes: std::sync::Mutex<std::collections::HashMap<String, reqwest::Client>>,
}

/// The admin listener's bearer token in the tests.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";

/// Runs `pcq sync` as `certname` against `server` (facts every time), its
/// state in `state`, with `extra` arguments; its exit code and output.
pub fn pcq_sync(server: &str, certname: &str, state: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pcq"))
        .args(["sync", "--server", server, "--certname", certname])
        .args(["--facts-interval", "0s", "--state-file"])
        .arg(state)
        .args(extra)
        .output()
        .expect("pcq sync");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A client presenting `certname`'s Puppet certificate.
pub fn node_client(certname: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ssl = scheduler::daemon::tls::PuppetSsl::new(Path::new(SSL), certname);
    reqwest::Client::builder()
        .tls_backend_preconfigured(
            ssl.client_config()
                .unwrap_or_else(|e| panic!("{certname}: {e}")),
        )
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A pcq configuration for a test, built by knob: the knobs the tests turn
/// by name, anything else by [`PcqConfig::set`]. [`Pcq::start`] adds the
/// state directory and the listen addresses and writes it as TOML.
#[derive(Clone, Debug)]
pub struct PcqConfig {
    /// TOML values by table (`""`: the top level) and key.
    tables: BTreeMap<String, Vec<(String, String)>>,
    /// The state directory, when not the test's own temporary one.
    state: Option<PathBuf>,
    /// The open-file limit pcq starts with (soft, hard), if not inherited.
    nofile: Option<(u64, u64)>,
}

/// `text` as a TOML string.
fn quoted(text: &str) -> String {
    // a JSON string is a TOML basic string
    Value::from(text).to_string()
}

/// `d` as pcq writes durations (`"500ms"`, `"1s"`, `"1h"`).
fn duration(d: Duration) -> String {
    quoted(&humantime::format_duration(d).to_string())
}

impl PcqConfig {
    /// The real Puppet Server, probed every second while it is down.
    pub fn puppetserver() -> PcqConfig {
        PcqConfig::puppetserver_at(&server_url(), Duration::from_secs(1))
    }

    /// The stand-in server, probed every 500 ms while it is down.
    pub fn stand_in(fake: &FakeServer) -> PcqConfig {
        PcqConfig::puppetserver_at(&fake.url, Duration::from_millis(500))
    }

    fn puppetserver_at(url: &str, probe_interval: Duration) -> PcqConfig {
        PcqConfig::backend("puppetserver")
            .set("backend.url", &quoted(url))
            .set("backend.probe_interval", &duration(probe_interval))
    }

    /// pcq starts with this open-file limit (soft, hard), as a service
    /// manager would give it.
    pub fn nofile(mut self, soft: u64, hard: u64) -> PcqConfig {
        self.nofile = Some((soft, hard));
        self
    }

    /// `puppet catalog compile` (no server).
    pub fn command() -> PcqConfig {
        PcqConfig::backend("command")
    }

    fn backend(kind: &str) -> PcqConfig {
        let config = PcqConfig {
            tables: BTreeMap::new(),
            state: None,
            nofile: None,
        };
        // tests of everything but per-node coalescing bump a node again
        // moments after its compile; the coalescing tests set their own
        config
            .set("backend.kind", &quoted(kind))
            .set("core.min_urgent_interval", &quoted("0s"))
    }

    /// Puppet Server stores facts and catalogs in PuppetDB (exported
    /// resources reach their collectors).
    pub fn persist_to_puppetdb(self) -> PcqConfig {
        self.set("backend.persist_facts", "true")
            .set("backend.persist_catalog", "true")
    }

    /// `core.min_cycle_interval`: `Duration::ZERO` cycles continuously.
    pub fn cycle_every(self, interval: Duration) -> PcqConfig {
        self.set("core.min_cycle_interval", &duration(interval))
    }

    /// No cycle: nodes compile when new, bumped, deployed or their facts
    /// change.
    pub fn cycle_off(self) -> PcqConfig {
        self.set("core.min_cycle_interval", &quoted("off"))
    }

    pub fn compile_timeout(self, limit: Duration) -> PcqConfig {
        self.set("core.compile_timeout", &duration(limit))
    }

    /// `core.backoff`: a failed node's first delay and the cap.
    pub fn backoff(self, base: Duration, max: Duration) -> PcqConfig {
        self.set("core.backoff.base", &duration(base))
            .set("core.backoff.max", &duration(max))
    }

    /// `core.gate.max_concurrency`.
    pub fn max_concurrency(self, compiles: u32) -> PcqConfig {
        self.set("core.gate.max_concurrency", &compiles.to_string())
    }

    /// The gate ignores this host's load (other work on the test machine
    /// would hold compiles back).
    pub fn no_load_gate(self) -> PcqConfig {
        self.set("core.gate.max_load_per_core", "0.0")
    }

    /// `ca.poll_interval`: how often the CA's signed certificates are
    /// listed.
    pub fn ca_poll(self, interval: Duration) -> PcqConfig {
        self.set("ca.poll_interval", &duration(interval))
    }

    /// No CA poll: nodes join by uploading facts.
    pub fn ca_poll_off(self) -> PcqConfig {
        self.set("ca.poll_interval", &quoted("off"))
    }

    fn polls_ca(&self) -> bool {
        self.get("ca.poll_interval") != Some(&quoted("off"))
    }

    /// `exports.bump_delay`.
    pub fn bump_delay(self, delay: Duration) -> PcqConfig {
        self.set("exports.bump_delay", &duration(delay))
    }

    /// `notify.command`, an argument list.
    pub fn notify_command(self, args: &[String]) -> PcqConfig {
        let list: Vec<String> = args.iter().map(|a| quoted(a)).collect();
        self.set("notify.command", &format!("[{}]", list.join(", ")))
    }

    /// `notify.webhook`.
    pub fn webhook(self, url: &str) -> PcqConfig {
        self.set("notify.webhook", &quoted(url))
    }

    /// `notify.attempts`.
    pub fn notify_attempts(self, attempts: u32) -> PcqConfig {
        self.set("notify.attempts", &attempts.to_string())
    }

    /// `shutdown.grace`.
    pub fn shutdown_grace(self, grace: Duration) -> PcqConfig {
        self.set("shutdown.grace", &duration(grace))
    }

    /// Keeps the state in `dir` (a test's own file system, say).
    pub fn state_in(mut self, dir: &Path) -> PcqConfig {
        self.state = Some(dir.to_path_buf());
        self
    }

    /// Any other key, by its dotted path, with its value written as TOML
    /// (`set("facts.ignore", "[\"uptime\"]")`); replaces an earlier value.
    pub fn set(mut self, key: &str, toml_value: &str) -> PcqConfig {
        let (table, key) = key.rsplit_once('.').unwrap_or(("", key));
        let entries = self.tables.entry(table.to_string()).or_default();
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = toml_value.to_string(),
            None => entries.push((key.to_string(), toml_value.to_string())),
        }
        self
    }

    fn get(&self, key: &str) -> Option<&String> {
        let (table, key) = key.rsplit_once('.').unwrap_or(("", key));
        self.tables
            .get(table)?
            .iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    /// The configuration file.
    pub fn toml(&self) -> String {
        let mut text = String::new();
        // the top level sorts first, before any table
        for (table, entries) in &self.tables {
            if !table.is_empty() {
                text.push_str(&format!("[{table}]\n"));
            }
            for (key, value) in entries {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text
    }
}

/// A notify command's record: a line in `<dir>/<certname>` per
/// notification.
pub struct Notes {
    dir: tempfile::TempDir,
}

impl Notes {
    pub fn in_tempdir() -> Notes {
        Notes {
            dir: tempfile::tempdir().expect("tmp dir"),
        }
    }

    /// The `notify.command` that writes them.
    pub fn command(&self) -> Vec<String> {
        let append = format!("echo changed >> {}/{{certname}}", self.dir.path().display());
        vec!["sh".into(), "-c".into(), append]
    }

    /// How often `certname` was notified.
    pub fn count(&self, certname: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join(certname))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

/// Facts for [`Pcq::start_compiled`]: [`facts_body`] with `role`.
pub fn with_role(role: &str) -> impl Fn(&str) -> Value + '_ {
    move |certname| facts_body(certname, role, 1)
}

/// Who sends a request to pcq.
#[derive(Clone, Copy, Debug)]
pub enum Via<'a> {
    /// The admin API (plain HTTP on loopback).
    Admin,
    /// The TLS API, presenting this certname's Puppet certificate.
    Tls(&'a str),
}

impl Pcq {
    /// Starts pcq with `config`, in its own state directory and on free
    /// ports.
    pub async fn start(config: &PcqConfig) -> Pcq {
        let mut pcq = Pcq::prepare(config);
        pcq.spawn().await;
        pcq
    }

    /// A pcq's directory, configuration and client; not running yet.
    fn prepare(config: &PcqConfig) -> Pcq {
        let dir = tempfile::tempdir().expect("tmp dir");
        let (port, admin) = (free_port(), free_port());
        let config_file = dir.path().join("pcq.toml");
        let token_file = dir.path().join("admin.token");
        scheduler::private_file::write(&token_file, ADMIN_TOKEN.as_bytes()).expect("token file");
        let socket = dir.path().join("admin.sock");
        let state = config
            .state
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let text = config
            .clone()
            .set("state_dir", &quoted(&state.display().to_string()))
            .set("api.listen", &quoted(&format!("127.0.0.1:{port}")))
            .set("api.admin_listen", &quoted(&format!("127.0.0.1:{admin}")))
            .set(
                "api.admin_token_file",
                &quoted(&token_file.display().to_string()),
            )
            .set("api.admin_socket", &quoted(&socket.display().to_string()))
            .toml();
        std::fs::write(&config_file, text).expect("config");
        let mut headers = reqwest::header::HeaderMap::new();
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        headers.insert(
            reqwest::header::AUTHORIZATION,
            bearer.parse().expect("header value"),
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        Pcq {
            log: dir.path().join("pcq.log"),
            dir,
            api: format!("http://127.0.0.1:{admin}"),
            tls: format!("https://{}:{port}", host()),
            config: config_file,
            state,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(headers)
                .build()
                .expect("client"),
            socket,
            token_file,
            nofile: config.nofile,
            nodes: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Starts pcq with `config` once `names` have signed certificates (made
    /// if missing), and waits up to 20 s until the CA poll has listed them
    /// all (each known and waiting for its facts); whether it did.
    pub async fn start_listed(config: &PcqConfig, names: &[String]) -> (Pcq, bool) {
        ensure_certs(names);
        let pcq = Pcq::start(config).await;
        let listed = pcq
            .wait(Duration::from_secs(20), || async {
                for n in names {
                    let status = pcq.status(n).await;
                    if status.is_none_or(|s| s["state"] != "waiting_for_facts") {
                        return false;
                    }
                }
                true
            })
            .await;
        (pcq, listed)
    }

    /// Starts pcq with `config` and gets `names` compiled, the way nodes
    /// join: the CA poll lists them (when it is on; [`Pcq::start_listed`],
    /// not checked: a node it missed joins by its upload), each uploads
    /// `facts(certname)`, and each has a catalog within `limit`. Returns
    /// pcq and the catalog hashes, in the order of `names`.
    pub async fn start_compiled(
        config: &PcqConfig,
        names: &[String],
        facts: impl Fn(&str) -> Value,
        limit: Duration,
    ) -> (Pcq, Vec<String>) {
        let pcq = if config.polls_ca() {
            Pcq::start_listed(config, names).await.0
        } else {
            Pcq::start(config).await
        };
        let hashes = pcq.compile(names, facts, limit).await;
        (pcq, hashes)
    }

    /// The process id of the running pcq.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("pcq runs")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }

    /// The node's last good catalog file, as pcq keeps it.
    pub fn catalog_file(&self, certname: &str) -> Vec<u8> {
        let path = self.state.join(format!("catalogs/{certname}.json"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Waits up to `limit` for the process to end by itself; its exit
    /// status, if it did.
    pub fn exited(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Some(status);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The configuration file this pcq runs with.
    pub fn config_file(&self) -> &Path {
        &self.config
    }

    /// The admin API's status for a GET of `path` (none: no answer).
    pub async fn http_status(&self, path: &str) -> Option<u16> {
        let r = self.http.get(format!("{}{path}", self.api)).send().await;
        r.ok().map(|r| r.status().as_u16())
    }

    /// Whether the admin API answers `/healthz` with 200.
    pub async fn healthy(&self) -> bool {
        self.http
            .get(format!("{}/healthz", self.api))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    async fn spawn(&mut self) {
        self.spawn_child();
        let ready = self
            .wait(Duration::from_secs(20), || async {
                self.http
                    .get(format!("{}/healthz", self.api))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            })
            .await;
        assert!(ready, "pcq did not become ready:\n{}", self.log_text());
    }

    fn spawn_child(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut command = match self.nofile {
            Some((soft, hard)) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:{hard}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_pcq"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_pcq")),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,scheduler=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("pcq starts");
        self.child = Some(child);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns how long it took to exit, and whether it exited 0.
    pub fn terminate(&mut self, limit: Duration) -> (Duration, bool) {
        let Some(mut c) = self.child.take() else {
            return (Duration::ZERO, false);
        };
        let t = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        while t.elapsed() < limit {
            if let Ok(Some(status)) = c.try_wait() {
                return (t.elapsed(), status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        (t.elapsed(), false)
    }

    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    pub async fn wait<F, Fut>(&self, limit: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let t = Instant::now();
        while t.elapsed() < limit {
            if check().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The TLS client of `certname` (its own Puppet certificate).
    pub fn as_node(&self, certname: &str) -> reqwest::Client {
        let mut nodes = self.nodes.lock().expect("clients");
        nodes
            .entry(certname.to_string())
            .or_insert_with(|| node_client(certname))
            .clone()
    }

    /// A node uploads its own facts over TLS.
    pub async fn put_facts(&self, certname: &str, body: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(body).expect("facts JSON");
        let path = format!("/puppet/v3/facts/{certname}");
        let (status, text) = self
            .request(Via::Tls(certname), reqwest::Method::PUT, &path, &body)
            .await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A node's facts upload over TLS: its status, text and `Retry-After`.
    pub async fn put_facts_raw(
        &self,
        certname: &str,
        body: &Value,
    ) -> (u16, String, Option<String>) {
        let r = self
            .as_node(certname)
            .put(format!("{}/puppet/v3/facts/{certname}", self.tls))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).expect("facts JSON"))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        (status, r.text().await.unwrap_or_default(), retry_after)
    }

    /// A request with a JSON `body` (may be empty); its status and text.
    pub async fn request(
        &self,
        via: Via<'_>,
        method: reqwest::Method,
        path: &str,
        body: &[u8],
    ) -> (u16, String) {
        let (client, base) = match via {
            Via::Admin => (self.http.clone(), &self.api),
            Via::Tls(certname) => (self.as_node(certname), &self.tls),
        };
        let r = client
            .request(method, format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// `certname`'s catalog from the admin API, if it has one.
    pub async fn catalog(&self, certname: &str) -> Option<Value> {
        let path = format!("/v1/nodes/{certname}/catalog");
        let (status, text) = self
            .request(Via::Admin, reqwest::Method::GET, &path, b"")
            .await;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&text).ok()
    }

    /// `certname`'s catalog from the admin API, sent `If-None-Match` when
    /// given: the status, the ETag, and the body.
    pub async fn catalog_etag(
        &self,
        certname: &str,
        if_none_match: Option<&str>,
    ) -> (u16, Option<String>, Vec<u8>) {
        let mut request = self
            .http
            .get(format!("{}/v1/nodes/{certname}/catalog", self.api));
        if let Some(tag) = if_none_match {
            request = request.header("if-none-match", tag);
        }
        let r = request.send().await.expect("catalog request");
        let status = r.status().as_u16();
        let etag = r
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        (status, etag, r.bytes().await.unwrap_or_default().to_vec())
    }

    pub async fn status(&self, certname: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/v1/nodes/{certname}/status", self.api))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    pub async fn queue(&self) -> Value {
        self.http
            .get(format!("{}/v1/queue", self.api))
            .send()
            .await
            .expect("queue")
            .json()
            .await
            .expect("queue JSON")
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Each node uploads `facts(certname)` (certificates are made if
    /// missing); they all answer 200.
    pub async fn upload_all(&self, names: &[String], facts: impl Fn(&str) -> Value) {
        ensure_certs(names);
        for n in names {
            let (status, body) = self.put_facts(n, &facts(n)).await;
            assert_eq!(status, 200, "{n}: {body}");
        }
    }

    /// Gets `names` compiled: [`Pcq::upload_all`], then
    /// [`Pcq::wait_compiled`].
    pub async fn compile(
        &self,
        names: &[String],
        facts: impl Fn(&str) -> Value,
        limit: Duration,
    ) -> Vec<String> {
        self.upload_all(names, facts).await;
        self.wait_compiled(names, limit).await
    }

    /// Waits up to `limit` until `certname`'s status lists the fact paths
    /// its catalog reads (the analysis reached it); whether it did.
    pub async fn wait_analysed(&self, certname: &str, limit: Duration) -> bool {
        self.wait(limit, || async {
            self.status(certname)
                .await
                .is_some_and(|s| s["fact_paths"].is_array())
        })
        .await
    }

    /// Waits until every node has a catalog; returns their hashes.
    pub async fn wait_compiled(&self, names: &[String], limit: Duration) -> Vec<String> {
        let ok = self
            .wait(limit, || async {
                let mut all = true;
                for n in names {
                    if self
                        .status(n)
                        .await
                        .is_none_or(|s| s["catalog_hash"].is_null())
                    {
                        all = false;
                        break;
                    }
                }
                all
            })
            .await;
        assert!(
            ok,
            "not every node compiled in {limit:?}:\n{}",
            self.log_text()
        );
        let mut hashes = Vec::new();
        for n in names {
            let s = self.status(n).await.expect("status");
            hashes.push(s["catalog_hash"].as_str().unwrap_or("").to_string());
        }
        hashes
    }
}

impl Drop for Pcq {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A metric's value in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of a metric over all its label sets.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
        })
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// What the stand-in Puppet Server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Catalog = 0,
    Error500 = 1,
    Garbage = 2,
    Hang = 3,
    Unavailable = 4,
}

/// A stand-in Puppet Server over TLS with this host's Puppet certificate:
/// answers v4 catalog requests per [`Mode`], counting concurrent requests.
/// A stand-in CA's answer: signed and revoked certnames.
type CaListing = (Vec<String>, Vec<String>);

pub struct FakeServer {
    pub url: String,
    mode: Arc<AtomicU8>,
    in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    /// What it answers as the CA's signed and revoked certificates (none:
    /// 404).
    signed: Arc<std::sync::Mutex<Option<CaListing>>>,
    /// Nodes whose certificate it answers 404 for (any other name gets
    /// this host's certificate, which has no Puppet extensions).
    withheld: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// What it answers as the CA's CRL (none: 404).
    crl: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(delay: Duration) -> FakeServer {
        use axum::routing::{get, post};
        let mode = Arc::new(AtomicU8::new(Mode::Catalog as u8));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (m, f, x, r) = (
            mode.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
            requests.clone(),
        );
        let catalog = move |body: axum::body::Bytes| {
            let (m, f, x, r) = (m.clone(), f.clone(), x.clone(), r.clone());
            async move {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                x.fetch_max(now, Ordering::SeqCst);
                r.fetch_add(1, Ordering::SeqCst);
                let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let certname = req["certname"].as_str().unwrap_or("?").to_string();
                let role = req["facts"]["values"]["pcq_role"]
                    .as_str()
                    .unwrap_or("none")
                    .to_string();
                let mode = m.load(Ordering::SeqCst);
                if mode == Mode::Hang as u8 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                tokio::time::sleep(delay).await;
                f.fetch_sub(1, Ordering::SeqCst);
                use axum::http::StatusCode;
                match mode {
                    1 => (StatusCode::INTERNAL_SERVER_ERROR, "Evaluation Error: boom".to_string()),
                    2 => (StatusCode::OK, "<html>surprise</html>".to_string()),
                    4 => (StatusCode::SERVICE_UNAVAILABLE, "busy".to_string()),
                    _ => (
                        StatusCode::OK,
                        json!({"catalog": {
                            "name": certname, "version": r.load(Ordering::SeqCst), "catalog_uuid": format!("{:?}", Instant::now()),
                            "environment": "production", "tags": [], "classes": ["main"], "edges": [],
                            "resources": [{"type": "File", "title": "/tmp/x", "exported": false, "tags": [], "parameters": {"content": role}}]
                        }})
                        .to_string(),
                    ),
                }
            }
        };
        let m2 = mode.clone();
        let signed = Arc::new(std::sync::Mutex::new(None::<CaListing>));
        let listing = signed.clone();
        let withheld = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let missing = withheld.clone();
        let pem = std::fs::read(Path::new(SSL).join(format!("certs/{}.pem", host())))
            .expect("this host's certificate");
        let crl = Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
        let crl_answer = crl.clone();
        let app = axum::Router::new()
            .route("/puppet/v4/catalog", post(catalog))
            .route(
                "/puppet-ca/v1/certificate_revocation_list/ca",
                get(move || {
                    let answer = crl_answer.lock().map(|c| c.clone()).unwrap_or(None);
                    async move {
                        match answer {
                            Some(pem) => (axum::http::StatusCode::OK, pem),
                            None => (axum::http::StatusCode::NOT_FOUND, b"no CRL".to_vec()),
                        }
                    }
                }),
            )
            .route(
                "/puppet-ca/v1/certificate/{name}",
                get(
                    move |axum::extract::Path(name): axum::extract::Path<String>| {
                        let gone = missing.lock().map(|m| m.contains(&name)).unwrap_or(true);
                        let pem = pem.clone();
                        async move {
                            match gone {
                                true => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                                false => (axum::http::StatusCode::OK, pem),
                            }
                        }
                    },
                ),
            )
            .route(
                "/puppet-ca/v1/certificate_statuses/any",
                get(move || {
                    let list = listing.lock().map(|l| l.clone()).unwrap_or(None);
                    async move {
                        match list {
                            Some((signed, revoked)) => {
                                let state = |names: Vec<String>, state: &'static str| {
                                    names
                                        .into_iter()
                                        .map(move |n| json!({"name": n, "state": state}))
                                };
                                let statuses: Vec<Value> = state(signed, "signed")
                                    .chain(state(revoked, "revoked"))
                                    .collect();
                                (
                                    axum::http::StatusCode::OK,
                                    Value::Array(statuses).to_string(),
                                )
                            }
                            None => (axum::http::StatusCode::NOT_FOUND, "no CA here".into()),
                        }
                    }
                }),
            )
            .route(
                "/status/v1/simple",
                get(move || {
                    let m = m2.clone();
                    async move {
                        if m.load(Ordering::SeqCst) == Mode::Unavailable as u8 {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down")
                        } else {
                            (axum::http::StatusCode::OK, "running")
                        }
                    }
                }),
            );
        let ssl = scheduler::daemon::tls::PuppetSsl::new(Path::new(SSL), &host());
        let config = ssl
            .server_config()
            .expect("server TLS from Puppet's host certificate");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let acceptor = scheduler::daemon::tls::Acceptor::new(config);
        let limits = scheduler::daemon::listener::Limits {
            max_connections: 1024,
            client_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
        };
        let metrics = std::sync::Arc::new(scheduler::daemon::metrics::Metrics::new());
        let task = tokio::spawn(scheduler::daemon::listener::serve(
            listener, acceptor, app, None, limits, metrics,
        ));
        FakeServer {
            url: format!("https://{}:{port}", host()),
            mode,
            in_flight,
            max_in_flight,
            requests,
            signed,
            withheld,
            crl,
            task,
        }
    }

    /// Answers `pem` as the CA's CRL (none: 404).
    pub fn serve_crl(&self, pem: Option<Vec<u8>>) {
        if let Ok(mut c) = self.crl.lock() {
            *c = pem;
        }
    }

    /// Answers 404 (or, with `false`, the certificate again) when pcq asks
    /// the stand-in CA for `certname`'s certificate.
    pub fn withhold_certificate(&self, certname: &str, withhold: bool) {
        if let Ok(mut w) = self.withheld.lock() {
            match withhold {
                true => w.insert(certname.to_string()),
                false => w.remove(certname),
            };
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Catalog requests it is answering right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Answers as a CA whose signed certificates are `names`.
    pub fn list_signed(&self, names: &[String]) {
        self.list(names, &[]);
    }

    /// Answers as a CA with these signed and revoked certificates.
    pub fn list(&self, signed: &[String], revoked: &[String]) {
        if let Ok(mut l) = self.signed.lock() {
            *l = Some((signed.to_vec(), revoked.to_vec()));
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
