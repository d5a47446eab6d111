//! `pcq sync`: what a node runs from cron instead of the agent daemon.
//!
//! One cheap round trip when nothing changed: a `GET` of the node's catalog
//! with `If-None-Match` that answers 304. When the catalog changed (or with
//! `--force`) the new one is written atomically where Puppet's agent caches
//! its catalog (`$client_datadir/catalog/<certname>.json`) and applied with
//! `puppet agent --onetime --no-daemonize --use_cached_catalog`, which asks
//! the server for nothing but sends its report. That skips pluginsync, so
//! before an apply sync fetches the environment's plugins (`puppet plugin
//! download`) whenever the code pcq compiled with moved since the last
//! apply (a deploy, a pcq restart, a failed apply) or was never fetched:
//! a catalog using a new custom type is never applied without it. A
//! catalog whose `name` is not this node's certname is refused (newer
//! agents refuse it too). Facts are gathered at most
//! every `--facts-interval` (running facter is the expensive part) and
//! uploaded only when a fact the node's catalog can read changed: pcq's
//! status endpoint lists those paths (from its analysis of the code); when
//! it does not know them, any change but volatile facts like uptime counts.
//! A daily upload is the safety net. Identity is the node's own Puppet certificate; pcq
//! checks it and serves the node nothing but its own catalog.
//!
//! Exit status ([`crate::exit`]): 0 (nothing to do, or applied), 1 (pcq
//! unreachable or refusing; the last catalog stays in place), 4 (the apply,
//! or the plugin fetch before it, failed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::daemon::backend::puppetserver::why;
use crate::exit;
use serde_json::{json, Value};

use crate::daemon::analyze::UsedFacts;
use crate::daemon::config::Facts as FactsConfig;
use crate::daemon::facts::Ignore;
use crate::daemon::tls::PuppetSsl;

/// Where things are and what to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// pcq's API, `https://pcq.example.com:8145`.
    pub server: String,
    /// This node's certname.
    pub certname: String,
    /// Its certificate, key and the CA chain.
    pub ssl: PuppetSsl,
    /// Puppet's `client_datadir` (the cached catalog goes to `catalog/`).
    pub client_datadir: PathBuf,
    /// Where sync keeps its own state (the last ETag and facts hash).
    pub state_file: PathBuf,
    /// Command printing the facts as JSON.
    pub facts_command: Vec<String>,
    /// Upload facts at most this often (0: every sync).
    pub facts_interval: Duration,
    /// Command applying the cached catalog.
    pub apply_command: Vec<String>,
    /// Command fetching plugins (`{environment}`: the catalog's); empty:
    /// never.
    pub plugin_command: Vec<String>,
    /// Environment to send with facts.
    pub environment: Option<String>,
    /// Apply even if the catalog did not change.
    pub force: bool,
    /// Wait a random time up to this first.
    pub splay: Duration,
}

/// What sync remembers between runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    /// ETag of the last catalog applied successfully.
    etag: Option<String>,
    /// Hash of the last facts uploaded: of the facts the catalog reads
    /// (`used:<set>:<hash>`), or of all but volatile facts.
    facts_hash: Option<String>,
    /// When facts were last gathered (seconds since the epoch).
    facts_at: f64,
    /// When facts were last uploaded (seconds since the epoch).
    uploaded_at: f64,
    /// The code version (pcq's status) whose plugins the last successful
    /// apply had.
    #[serde(default)]
    code_version: Option<String>,
}

/// How a sync ended.
#[derive(Debug)]
pub struct Report {
    /// Process exit status.
    pub status: u8,
    /// One line for cron mail.
    pub line: String,
    /// The catalog changed and was applied.
    pub applied: bool,
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn load_state(path: &Path) -> State {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes `bytes` to `path` atomically, mode 0600, creating its folder.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::private_file::write(path, bytes)
}

fn save_state(path: &Path, state: &State) {
    match serde_json::to_vec(state) {
        Ok(bytes) => {
            if let Err(e) = write_private(path, &bytes) {
                eprintln!("pcq sync: cannot save {}: {e}", path.display());
            }
        }
        Err(e) => eprintln!("pcq sync: {e}"),
    }
}

fn short(etag: &str) -> String {
    etag.trim_matches('"').chars().take(12).collect()
}

/// Runs one sync.
pub async fn sync(o: &Options) -> Report {
    if !o.splay.is_zero() {
        let wait = o.splay.mul_f64(rand_fraction());
        tokio::time::sleep(wait).await;
    }
    let fail = |line: String| Report {
        status: exit::FAILED,
        line: format!("pcq sync: {line}; the last catalog stays in place"),
        applied: false,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = match o.ssl.client_config() {
        Ok(t) => t,
        Err(e) => return fail(format!("this node's certificate: {e}")),
    };
    let client = match reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .build()
    {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let base = o.server.trim_end_matches('/');
    let mut state = load_state(&o.state_file);
    let mut notes = Vec::new();

    // facts, when due
    let now = epoch();
    if o.facts_interval.is_zero() || now - state.facts_at >= o.facts_interval.as_secs_f64() {
        match upload_facts(o, &client, base, &mut state).await {
            Ok(note) => notes.push(note),
            Err(e) => return fail(e),
        }
        save_state(&o.state_file, &state);
    }

    // the catalog, if it changed
    let url = format!("{base}/v1/nodes/{}/catalog", o.certname);
    let mut request = client.get(&url);
    if let (Some(etag), false) = (&state.etag, o.force) {
        request = request.header("If-None-Match", etag.as_str());
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot reach pcq at {base}: {}", why(&e))),
    };
    let status = response.status();
    if status.as_u16() == 304 {
        notes.push(format!(
            "catalog unchanged ({})",
            short(state.etag.as_deref().unwrap_or(""))
        ));
        return Report {
            status: exit::OK,
            line: format!("pcq sync: {}", notes.join("; ")),
            applied: false,
        };
    }
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or(body);
        if status.as_u16() == 404 && message.contains("no catalog") {
            notes.push("no catalog compiled yet".into());
            return Report {
                status: exit::OK,
                line: format!("pcq sync: {}", notes.join("; ")),
                applied: false,
            };
        }
        return fail(format!("pcq answered {status}: {}", message.trim()));
    }
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let catalog = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return fail(format!("reading the catalog: {e}")),
    };
    let parsed = serde_json::from_slice::<Value>(&catalog).unwrap_or(Value::Null);
    if parsed["name"].as_str() != Some(o.certname.as_str()) {
        return fail("the catalog pcq sent is not this node's".into());
    }
    // its plugins first, when the code moved since the last apply
    let version = code_version(o, &client, base).await;
    if !o.plugin_command.is_empty() && (version.is_none() || version != state.code_version) {
        let environment = parsed["environment"].as_str().unwrap_or("production");
        let argv: Vec<String> = o
            .plugin_command
            .iter()
            .map(|a| a.replace("{environment}", environment))
            .collect();
        if let Err(e) = run(&argv, Stdio::null()).await {
            return Report {
                status: exit::APPLY,
                line: format!(
                    "pcq sync: fetching the plugins of {environment} failed ({e}); not applied, the last catalog stays in place"
                ),
                applied: false,
            };
        }
        notes.push(format!("plugins of {environment} fetched"));
    }
    let cached = o
        .client_datadir
        .join(format!("catalog/{}.json", o.certname));
    if let Err(e) = write_private(&cached, &catalog) {
        return fail(format!("writing {}: {e}", cached.display()));
    }
    let t = Instant::now();
    let outcome = run(&o.apply_command, Stdio::inherit()).await;
    match outcome {
        Ok(()) => {
            state.etag = etag.clone();
            state.code_version = version;
            save_state(&o.state_file, &state);
            notes.push(format!(
                "catalog {} applied in {:.1} s",
                short(etag.as_deref().unwrap_or("")),
                t.elapsed().as_secs_f64()
            ));
            Report {
                status: exit::OK,
                line: format!("pcq sync: {}", notes.join("; ")),
                applied: true,
            }
        }
        Err(e) => {
            // fetch the plugins again next time: they may be what failed
            state.code_version = None;
            save_state(&o.state_file, &state);
            Report {
                status: exit::APPLY,
                line: format!(
                    "pcq sync: catalog {} written to {} but the apply failed: {e}",
                    short(etag.as_deref().unwrap_or("")),
                    cached.display()
                ),
                applied: false,
            }
        }
    }
}

/// Gathers facts; uploads them if what matters changed (or once a day).
async fn upload_facts(
    o: &Options,
    client: &reqwest::Client,
    base: &str,
    state: &mut State,
) -> Result<String, String> {
    let output = tokio::process::Command::new(o.facts_command.first().ok_or("no facts command")?)
        .args(o.facts_command.get(1..).unwrap_or_default())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("{}: {e}", o.facts_command.join(" ")))?;
    let values: serde_json::Map<String, Value> = match serde_json::from_slice(&output.stdout) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(format!(
                "{} printed no JSON facts",
                o.facts_command.join(" ")
            ))
        }
    };
    state.facts_at = epoch();
    let ignore = Ignore::new(&FactsConfig::default().ignore).map_err(|e| e.to_string())?;
    let hash = match fact_paths(o, client, base).await {
        Some(paths) => {
            let used = UsedFacts::from_paths(&paths);
            format!(
                "used:{:016x}:{:016x}",
                used.fingerprint(),
                used.hash(&values, &ignore)
            )
        }
        None => ignore.relevant_hash(&values),
    };
    let day_old = epoch() - state.uploaded_at >= 86_400.0;
    if state.facts_hash.as_deref() == Some(hash.as_str()) && !day_old {
        return Ok("facts unchanged".into());
    }
    let mut url = format!("{base}/puppet/v3/facts/{}", o.certname);
    if let Some(env) = &o.environment {
        url.push_str(&format!("?environment={env}"));
    }
    let body = json!({
        "name": o.certname,
        "values": values,
        "timestamp": humantime::format_rfc3339(SystemTime::now()).to_string(),
        "expiration": humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(86_400)).to_string(),
    });
    let response = client
        .put(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("cannot reach pcq at {base}: {}", why(&e)))?;
    if !response.status().is_success() {
        return Err(format!("facts upload: pcq answered {}", response.status()));
    }
    state.facts_hash = Some(hash);
    state.uploaded_at = epoch();
    Ok("facts uploaded".into())
}

/// The fact paths this node's catalog can read, as pcq's status says
/// (`None`: not known, or any fact may be read).
async fn fact_paths(o: &Options, client: &reqwest::Client, base: &str) -> Option<Vec<String>> {
    let status = node_status(o, client, base).await?;
    let paths = status.get("fact_paths")?.as_array()?;
    paths.iter().map(|p| p.as_str().map(String::from)).collect()
}

/// The version of the node's environment's code, as pcq's status says.
async fn code_version(o: &Options, client: &reqwest::Client, base: &str) -> Option<String> {
    let status = node_status(o, client, base).await?;
    status.get("code_version")?.as_str().map(String::from)
}

async fn node_status(o: &Options, client: &reqwest::Client, base: &str) -> Option<Value> {
    let url = format!("{base}/v1/nodes/{}/status", o.certname);
    let response = client.get(&url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// Runs `argv`; its standard output goes to `stdout` (errors always show).
async fn run(argv: &[String], stdout: Stdio) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("no command")?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .status()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    // `puppet agent --detailed-exitcodes` says 2 for "changes applied"
    match status.code() {
        Some(0) | Some(2) => Ok(()),
        _ => Err(format!("{} exited with {status}", argv.join(" "))),
    }
}

fn rand_fraction() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed =
        (u64::from(nanos) ^ u64::from(std::process::id())).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_are_private_and_atomic() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub/state.json");
        let s = State {
            etag: Some("\"abc\"".into()),
            ..State::default()
        };
        save_state(&path, &s);
        assert_eq!(load_state(&path).etag.as_deref(), Some("\"abc\""));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(load_state(&dir.path().join("missing")).etag.is_none());
    }
}
