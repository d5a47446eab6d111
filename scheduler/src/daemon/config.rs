//! The daemon's configuration file.
//!
//! One TOML file, every key documented in `pcq.example.toml` at the root of
//! the repository. Unknown keys are refused, and every error names the key
//! and its line: a typo must not silently fall back to a default on a
//! production master.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::{off_or_duration, CoreConfig, GateConfig};
use crate::toml_file::{self, FileError};

/// The whole file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where pcq keeps its database and the last good catalogs.
    pub state_dir: PathBuf,
    /// How the database keeps what it acknowledged.
    #[serde(default)]
    pub store: StoreSettings,
    /// Environment of nodes that never said theirs.
    #[serde(default = "production")]
    pub default_environment: String,
    /// The certificate pcq uses, from Puppet's SSL directory.
    #[serde(default)]
    pub puppet: Puppet,
    /// The HTTP API.
    #[serde(default)]
    pub api: Api,
    /// The scheduling core.
    #[serde(default)]
    pub core: CoreConfig,
    /// How catalogs are compiled.
    pub backend: Backend,
    /// The masters compiles run on; empty: one, this host.
    #[serde(default)]
    pub masters: Vec<Master>,
    /// Certificate authority polling (node intake).
    #[serde(default)]
    pub ca: Ca,
    /// Facts uploads.
    #[serde(default)]
    pub facts: Facts,
    /// What each catalog depends on (the facts its code reads).
    #[serde(default)]
    pub analysis: Analysis,
    /// Exported resources reaching their collectors.
    #[serde(default)]
    pub exports: Exports,
    /// Telling nodes their catalog changed.
    #[serde(default)]
    pub notify: Notify,
    /// Stopping.
    #[serde(default)]
    pub shutdown: Shutdown,
}

fn production() -> String {
    "production".into()
}

/// The certificate pcq presents, to Puppet Server as a client and to nodes
/// as the API's server certificate.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Puppet {
    /// Puppet's SSL directory (`puppet config print ssldir`): pcq uses
    /// `certs/<certname>.pem`, `private_keys/<certname>.pem`, trusts
    /// `certs/ca.pem` and reads `crl.pem` until the CA gives a fresher CRL.
    pub ssldir: PathBuf,
    /// The certname; default: this host's name.
    pub certname: Option<String>,
}

impl Default for Puppet {
    fn default() -> Self {
        Puppet {
            ssldir: ssldir(),
            certname: None,
        }
    }
}

/// The HTTP API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Address of the API: TLS, and every client must present a
    /// certificate from Puppet's CA (a node acts only for itself).
    pub listen: SocketAddr,
    /// Certnames allowed the admin endpoints (bumps, deploys, the queue,
    /// metrics, any node's catalog). Default: pcq's own certname.
    pub admins: Vec<String>,
    /// The local admin channel: a Unix socket, mode 0660, for the user
    /// pcq runs as and `admin_group`. The `pcq` CLI's default.
    pub admin_socket: PathBuf,
    /// The group (name or number) the admin socket belongs to: its members
    /// are administrators. Default: pcq's own group.
    pub admin_group: Option<String>,
    /// An extra plain-HTTP address for the admin endpoints (Prometheus, a
    /// CLI given `--token-file`). Loopback only; off unless set. Every
    /// request but `/healthz` needs the bearer token of `admin_token_file`
    /// and a loopback Host header.
    pub admin_listen: Option<SocketAddr>,
    /// The bearer token of `admin_listen` (mode 0600; made with a random
    /// token if missing). Default: `admin.token` in the state directory.
    pub admin_token_file: Option<PathBuf>,
    /// A second token for `admin_listen` that opens `GET /metrics` only:
    /// the one to give Prometheus (mode 0600; made with a random token if
    /// missing). Default: `metrics.token` in the state directory.
    pub metrics_token_file: Option<PathBuf>,
    /// Largest request body accepted (facts uploads), bytes.
    pub max_body_bytes: usize,
    /// API connections open at once; more wait in the kernel's backlog.
    /// Lowered at start to what the process's open-file limit allows.
    pub max_connections: usize,
    /// The longest a client may take for its TLS handshake or request
    /// headers, or stay silent on an open connection.
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// The longest an API connection lives (its certificate is checked
    /// again when the client reconnects).
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: SocketAddr::from(([0, 0, 0, 0], 8145)),
            admins: Vec::new(),
            admin_socket: PathBuf::from("/run/pcq/admin.sock"),
            admin_group: None,
            admin_listen: None,
            admin_token_file: None,
            metrics_token_file: None,
            max_body_bytes: 4 << 20,
            max_connections: 8192,
            client_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
        }
    }
}

/// How catalogs are compiled.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backend {
    /// `POST /puppet/v4/catalog` on Puppet Server, over mutual TLS with
    /// Puppet's own certificates (the production path).
    Puppetserver(Puppetserver),
    /// `puppet catalog compile` with the node's stored facts (no server;
    /// development and tests).
    Command(CommandBackend),
}

/// The Puppet Server backend.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Puppetserver {
    /// Base URL of the server, e.g. `https://puppet.example.com:8140`. Use
    /// the name in its certificate, not an IP address. pcq presents the
    /// `[puppet]` certificate.
    pub url: String,
    /// Let Puppet Server store the node's facts in PuppetDB.
    #[serde(default)]
    pub persist_facts: bool,
    /// Let Puppet Server store the catalog in PuppetDB (needed for exported
    /// resources to reach collectors).
    #[serde(default)]
    pub persist_catalog: bool,
    /// How often a master that stopped answering is probed.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub probe_interval: Duration,
    /// How often each master's status API is read for its gate (JRubies
    /// free, the JVM's CPU use); `"off"`: the gate counts concurrency and
    /// this host's load only.
    #[serde(default = "two_seconds", with = "off_or_duration")]
    pub status_interval: Option<Duration>,
}

fn two_seconds() -> Option<Duration> {
    Some(Duration::from_secs(2))
}

fn ssldir() -> PathBuf {
    crate::puppet_conf::PuppetSettings::discover().ssldir
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

/// The `puppet catalog compile` backend.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBackend {
    /// The command, as an argument list. `{certname}`, `{environment}` and
    /// `{vardir}` are replaced; facts are written to
    /// `{vardir}/yaml/facts/{certname}.yaml` before each compile.
    #[serde(default = "compile_command")]
    pub command: Vec<String>,
}

fn compile_command() -> Vec<String> {
    [
        "puppet",
        "catalog",
        "compile",
        "{certname}",
        "--environment",
        "{environment}",
        "--vardir",
        "{vardir}",
        "--facts_terminus",
        "yaml",
        "--render-as",
        "json",
    ]
    .map(String::from)
    .to_vec()
}

/// A master compiles run on.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Master {
    /// A name for logs and metrics.
    pub name: String,
    /// Its Puppet Server URL (puppetserver backend); default: the backend's.
    #[serde(default)]
    pub url: Option<String>,
    /// CPU cores; 0: this host's.
    #[serde(default)]
    pub cores: u32,
    /// Read the load of this host for its gate (the master is this host).
    #[serde(default = "yes")]
    pub local: bool,
    /// Its gate; default: `core.gate`.
    #[serde(default)]
    pub gate: Option<GateConfig>,
    /// JRubies of its pool pcq leaves to file requests: at start pcq reads
    /// the pool's size (status API) and compiles on at most `size -
    /// reserve_for_files` of them.
    #[serde(default = "one")]
    pub reserve_for_files: u32,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// The database.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Which database: SQLite in the state directory (the default, one
    /// master), or PostgreSQL.
    pub kind: StoreKind,
    /// SQLite's `synchronous` level.
    pub synchronous: Synchronous,
    /// PostgreSQL: a libpq connection string or URL
    /// (`postgresql://pcq@db.example.com/pcq?sslmode=require`).
    pub url: Option<String>,
    /// PostgreSQL over TLS: PEM roots to trust (default: the system's).
    pub ca_file: Option<PathBuf>,
}

/// The database kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `state.db` in the state directory.
    #[default]
    Sqlite,
    /// A PostgreSQL database of its own (`store.url`).
    Postgresql,
}

/// How far an acknowledged write survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged: survives power
    /// loss (the default).
    #[default]
    Full,
    /// Commits reach the disk at checkpoints: survives the process being
    /// killed, not power loss (the last commits may be lost).
    Normal,
}

/// Certificate authority polling.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ca {
    /// How often to list the CA's certificates; `"off"`: nodes join by
    /// uploading facts instead.
    #[serde(with = "off_or_duration")]
    pub poll_interval: Option<Duration>,
    /// Certnames never scheduled (the CA's own, service certificates).
    pub exclude: Vec<String>,
    /// A node the CA stops listing (without revoking it) leaves only after
    /// this many plausible listings in a row without it.
    pub remove_after_listings: u32,
    /// A listing without more than this share of the known nodes (at least
    /// one node) is not plausible: its absences are ignored, logged and
    /// counted. So is an empty listing while nodes are known.
    pub max_removal_share: f64,
    /// How often the CRL is refreshed (from the CA with the `puppetserver`
    /// backend, from `crl.pem` in Puppet's SSL directory with `command`).
    #[serde(with = "humantime_serde")]
    pub crl_refresh_interval: Duration,
}

impl Default for Ca {
    fn default() -> Self {
        Ca {
            poll_interval: Some(Duration::from_secs(30)),
            exclude: Vec::new(),
            remove_after_listings: 3,
            max_removal_share: 0.1,
            crl_refresh_interval: Duration::from_secs(300),
        }
    }
}

/// Facts uploads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Facts {
    /// Fact paths whose changes never cause a compile: volatile facts no
    /// catalog should read. Glob patterns on dotted paths (`memory.*`).
    pub ignore: Vec<String>,
}

impl Default for Facts {
    fn default() -> Self {
        let ignore = [
            "uptime",
            "uptime_seconds",
            "uptime_hours",
            "uptime_days",
            "system_uptime",
            "system_uptime.*",
            "load_averages",
            "load_averages.*",
            "memoryfree",
            "memoryfree_mb",
            "swapfree",
            "swapfree_mb",
            "memory.*.available",
            "memory.*.available_bytes",
            "memory.*.used",
            "memory.*.used_bytes",
            "memory.*.capacity",
            "timestamp",
            "_timestamp",
            "last_run",
            "puppet_agent_pid",
            "processors.speed",
        ];
        Facts {
            ignore: ignore.map(String::from).to_vec(),
        }
    }
}

/// The static analysis of environments: which facts each catalog can
/// read, which exported resources it collects.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Analysis {
    /// Analyse the code; off: every fact change (but `facts.ignore`)
    /// recompiles, and exports never bump collectors.
    pub enabled: bool,
    /// The Ruby that has Puppet (`require 'puppet'`); default:
    /// `/opt/puppetlabs/puppet/bin/ruby` if present, else `ruby`.
    pub ruby: Option<String>,
    /// Puppet's `environmentpath`: environment `E` is `<dir>/E`.
    pub environments_dir: PathBuf,
    /// Puppet's `basemodulepath`, after each environment's `modules`.
    pub modulepath: Vec<PathBuf>,
    /// Puppet's global `hiera.yaml` (its hierarchy and data are read for
    /// every node).
    pub hiera_config: PathBuf,
}

impl Default for Analysis {
    fn default() -> Self {
        // this host's layout, as puppet.conf says (Puppet's own packages
        // or Debian's)
        let puppet = crate::puppet_conf::PuppetSettings::discover();
        Analysis {
            enabled: true,
            ruby: None,
            environments_dir: puppet.environments_dir,
            modulepath: puppet.basemodulepath,
            hiera_config: puppet.hiera_config,
        }
    }
}

/// Exported resources.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exports {
    /// When a node's exported resources change, bump the nodes that
    /// collect them (needs `analysis`, and `backend.persist_catalog` so
    /// PuppetDB holds the new exports).
    pub bump_collectors: bool,
    /// How long after the exporter's compile the collectors are bumped:
    /// time for PuppetDB to store the new catalog, and to gather the
    /// changes of several exporters into one compile.
    #[serde(with = "humantime_serde")]
    pub bump_delay: Duration,
}

impl Default for Exports {
    fn default() -> Self {
        Exports {
            bump_collectors: true,
            bump_delay: Duration::from_secs(5),
        }
    }
}

/// Telling nodes their catalog changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notify {
    /// A command to run, as an argument list; `{certname}` and
    /// `{environment}` are replaced (no shell is involved).
    pub command: Vec<String>,
    /// A URL to POST `{"certname", "environment", "catalog_hash"}` to.
    pub webhook: Option<String>,
    /// Attempts per notification.
    pub attempts: u32,
    /// Time limit of one attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            command: Vec::new(),
            webhook: None,
            attempts: 4,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Stopping on SIGTERM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// How long running compiles may finish before they are queued again.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            grace: Duration::from_secs(30),
        }
    }
}

/// The documented example configuration: errors quote its line for the
/// key they are about.
pub const EXAMPLE: &str = include_str!("../../../pcq.example.toml");

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, FileError> {
        Config::parse(&toml_file::read(path)?, path)
    }

    /// Parses and checks configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, FileError> {
        toml_file::load(text, file, EXAMPLE, |c: &mut Config| c.check())
    }

    fn check(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if let Err(e) = self.core.validate() {
            return Err((format!("core.{}", e.field), e.message));
        }
        if !valid_environment(&self.default_environment) {
            return err(
                "default_environment",
                "must be word characters (Puppet: \\w+)",
            );
        }
        if self.ca.remove_after_listings == 0 {
            return err("ca.remove_after_listings", "must be at least 1");
        }
        if !(self.ca.max_removal_share > 0.0 && self.ca.max_removal_share <= 1.0) {
            return err("ca.max_removal_share", "must be above 0 and at most 1");
        }
        if self.api.max_body_bytes < 1024 {
            return err("api.max_body_bytes", "must be at least 1024");
        }
        let day = Duration::from_secs(86_400);
        if !(Duration::from_secs(1)..=day).contains(&self.ca.crl_refresh_interval) {
            return err("ca.crl_refresh_interval", "must be from 1s to 1d");
        }
        if self.api.max_connections == 0 {
            return err("api.max_connections", "must be at least 1");
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&self.api.client_timeout)
        {
            return err("api.client_timeout", "must be from 100ms to 1h");
        }
        if !(Duration::from_secs(1)..=day).contains(&self.api.max_connection_age) {
            return err("api.max_connection_age", "must be from 1s to 1d");
        }
        if self.api.admin_listen.is_some_and(|a| !a.ip().is_loopback()) {
            return err(
                "api.admin_listen",
                "plain HTTP is allowed on loopback only (127.0.0.1 or ::1); remote admins use the TLS API with a certificate on api.admins",
            );
        }
        match &self.backend {
            Backend::Puppetserver(p) => {
                if !(p.url.starts_with("https://")) {
                    return err("backend.url", "must be an https:// URL of Puppet Server");
                }
                if let Some(why) = self.named_by_address(&p.url) {
                    return err("backend.url", &why);
                }
                if p.probe_interval.is_zero() {
                    return err("backend.probe_interval", "must be above zero");
                }
                if p.status_interval.is_some_and(|i| i.is_zero()) {
                    return err("backend.status_interval", "must be above zero, or \"off\"");
                }
            }
            Backend::Command(c) => {
                if c.command.is_empty() {
                    return err("backend.command", "must name a program");
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in self.masters.iter().enumerate() {
            if !names.insert(&m.name) {
                return Err((
                    format!("masters[{i}].name"),
                    format!("{:?} is used twice", m.name),
                ));
            }
            if let Some(g) = &m.gate {
                if let Err(e) = g.validate("gate") {
                    return Err((format!("masters[{i}].{}", e.field), e.message));
                }
            }
            if m.url.as_ref().is_some_and(|u| !u.starts_with("https://")) {
                return Err((
                    format!("masters[{i}].url"),
                    "must be an https:// URL".into(),
                ));
            }
            if let Some(why) = m.url.as_deref().and_then(|u| self.named_by_address(u)) {
                return Err((format!("masters[{i}].url"), why));
            }
        }
        for (i, p) in self.facts.ignore.iter().enumerate() {
            if let Err(e) = globset::Glob::new(p) {
                return Err((format!("facts.ignore[{i}]"), e.to_string()));
            }
        }
        match (self.store.kind, &self.store.url) {
            (StoreKind::Postgresql, None) => {
                return err(
                    "store.url",
                    "kind = \"postgresql\" needs the database's URL, e.g. \
                     \"postgresql://pcq@db.example.com/pcq?sslmode=require\"",
                );
            }
            (StoreKind::Postgresql, Some(url)) => {
                let parsed = match url.parse::<postgres::Config>() {
                    Ok(parsed) => parsed,
                    Err(e) => return err("store.url", &e.to_string()),
                };
                // libpq's default, sslmode=prefer, falls back to plain
                // text: say what is meant, except on this host
                let local = parsed.get_hosts().iter().all(|h| match h {
                    postgres::config::Host::Tcp(name) => {
                        matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
                    }
                    postgres::config::Host::Unix(_) => true,
                });
                if !local && !url.contains("sslmode") {
                    return err(
                        "store.url",
                        "say sslmode=require (TLS, the server's certificate checked) or \
                         sslmode=disable (a network you trust); the default would fall back \
                         to plain text silently",
                    );
                }
            }
            (StoreKind::Sqlite, Some(_)) => {
                return err("store.url", "only with kind = \"postgresql\"");
            }
            (StoreKind::Sqlite, None) if self.store.ca_file.is_some() => {
                return err("store.ca_file", "only with kind = \"postgresql\"");
            }
            (StoreKind::Sqlite, None) => {}
        }
        if self.notify.attempts == 0 {
            return err("notify.attempts", "must be at least 1");
        }
        if let Some(w) = &self.notify.webhook {
            if !(w.starts_with("http://") || w.starts_with("https://")) {
                return err("notify.webhook", "must be an http(s):// URL");
            }
        }
        Ok(())
    }

    /// Why `url` cannot work if it names the server by IP address: TLS
    /// checks the name in the URL against Puppet Server's certificate
    /// (its certname and dns_alt_names), which holds names, and every
    /// request would fail. Says which names this host's certificate has.
    fn named_by_address(&self, url: &str) -> Option<String> {
        let rest = url.strip_prefix("https://")?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        };
        let ip = host.parse::<std::net::IpAddr>().ok()?;
        let cert = self
            .puppet
            .ssldir
            .join(format!("certs/{}.pem", self.certname()));
        let names = certificate_names(&cert);
        // only what can be told: a certificate here that lacks the address
        // (an IP in dns_alt_names works; no certificate here, no verdict)
        if names.is_empty() || names.contains(&ip.to_string()) {
            return None;
        }
        let known = format!(
            " (this host's certificate {} names: {})",
            cert.display(),
            names.join(", ")
        );
        Some(format!(
            "{url} names Puppet Server by IP address, but TLS checks the name in the URL against the server's certificate (its certname and dns_alt_names): use one of those names{known}"
        ))
    }

    /// What is configured but not there: directories and files pcq will
    /// need (`check-config` prints them, `serve` logs them). Not errors:
    /// a host may be set up in that order.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut missing = |key: &str, path: &Path, what: &str| {
            if !path.exists() {
                out.push(format!("{key}: {} does not exist ({what})", path.display()));
            }
        };
        missing(
            "puppet.ssldir",
            &self.puppet.ssldir.join("certs/ca.pem"),
            "pcq needs Puppet's CA and its own certificate there",
        );
        if self.analysis.enabled {
            missing(
                "analysis.environments_dir",
                &self.analysis.environments_dir,
                "without the code, every fact change recompiles",
            );
            for (i, m) in self.analysis.modulepath.iter().enumerate() {
                missing(
                    &format!("analysis.modulepath[{i}]"),
                    m,
                    "modules there are not read",
                );
            }
        }
        out
    }

    /// The certname pcq presents.
    pub fn certname(&self) -> String {
        self.puppet
            .certname
            .clone()
            .unwrap_or_else(crate::puppet_conf::hostname)
    }

    /// Certnames with admin rights.
    pub fn admins(&self) -> Vec<String> {
        if self.api.admins.is_empty() {
            vec![self.certname()]
        } else {
            self.api.admins.clone()
        }
    }

    /// The masters, with the default single local master filled in.
    pub fn masters(&self) -> Vec<Master> {
        if self.masters.is_empty() {
            vec![Master {
                name: "local".into(),
                url: None,
                cores: 0,
                local: true,
                gate: None,
                reserve_for_files: 1,
            }]
        } else {
            self.masters.clone()
        }
    }
}

/// Puppet environment names are word characters.
pub fn valid_environment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The DNS names a PEM certificate holds (subject alternative names, else
/// its common name); none if it cannot be read.
fn certificate_names(path: &Path) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(pem) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&pem) else {
        return Vec::new();
    };
    let Ok(cert) = pem.parse_x509() else {
        return Vec::new();
    };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => <[u8; 4]>::try_from(*b)
                        .ok()
                        .map(|a| std::net::IpAddr::from(a).to_string()),
                    16 => <[u8; 16]>::try_from(*b)
                        .ok()
                        .map(|a| std::net::IpAddr::from(a).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(super::identity::common_name(&pem.contents));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "state_dir = \"/tmp/pcq\"\n[backend]\nkind = \"puppetserver\"\nurl = \"https://puppet:8140\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, Path::new("pcq.toml")).expect("valid");
        assert_eq!(c.api.listen.to_string(), "0.0.0.0:8145");
        assert_eq!(c.admins(), vec![c.certname()]);
        assert_eq!(c.masters().len(), 1);
        assert!(c.facts.ignore.iter().any(|p| p == "uptime_seconds"));
    }

    #[test]
    fn the_example_file_is_valid() {
        if let Err(e) = Config::parse(EXAMPLE, Path::new("pcq.example.toml")) {
            panic!("{e}");
        }
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let text = format!("{MINIMAL}[ca]\npoll_intervall = \"10s\"\n");
        let e = Config::parse(&text, Path::new("pcq.toml")).expect_err("typo");
        let msg = e.to_string();
        assert!(msg.starts_with("pcq.toml:6: ca.poll_intervall:"), "{msg}");
    }

    #[test]
    fn type_errors_and_bad_durations_name_the_full_key_and_show_an_example() {
        // a number where the URL goes: the key, not the value, and the
        // example file's line
        let text = "state_dir = \"/tmp/pcq\"\n[backend]\nkind = \"puppetserver\"\nurl = 8140\n";
        let msg = Config::parse(text, Path::new("pcq.toml"))
            .expect_err("type")
            .to_string();
        assert!(
            msg.starts_with("pcq.toml:4: backend.url: invalid type"),
            "{msg}"
        );
        assert!(
            msg.contains("for example: url = \"https://puppet.example.com:8140\""),
            "{msg}"
        );
        let text = format!("{MINIMAL}[core]\nmin_cycle_interval = \"30 parsecs\"\n");
        let msg = Config::parse(&text, Path::new("pcq.toml"))
            .expect_err("duration")
            .to_string();
        assert!(
            msg.starts_with("pcq.toml:6: core.min_cycle_interval:"),
            "{msg}"
        );
        assert!(msg.contains("for example: min_cycle_interval = "), "{msg}");
    }

    #[test]
    fn a_server_named_by_ip_address_is_refused_with_the_names_to_use() {
        let text = MINIMAL.replace("https://puppet:8140", "https://127.0.0.1:8140");
        let msg = Config::parse(&text, Path::new("pcq.toml"))
            .expect_err("an address")
            .to_string();
        assert!(msg.starts_with("pcq.toml:4: backend.url:"), "{msg}");
        assert!(msg.contains("by IP address"), "{msg}");
        let text = format!("{MINIMAL}[[masters]]\nname = \"b\"\nurl = \"https://[::1]:8140\"\n");
        let msg = Config::parse(&text, Path::new("pcq.toml"))
            .expect_err("an address")
            .to_string();
        assert!(msg.contains("masters[0].url"), "{msg}");
        // names are fine
        assert!(Config::parse(MINIMAL, Path::new("pcq.toml")).is_ok());
    }

    #[test]
    fn directories_that_do_not_exist_are_warned_about() {
        let text = format!(
            "{MINIMAL}[puppet]\nssldir = \"/nonexistent/ssl\"\n[analysis]\nenvironments_dir = \"/nonexistent/envs\"\nmodulepath = [\"/nonexistent/modules\"]\n"
        );
        let c = Config::parse(&text, Path::new("pcq.toml")).expect("valid");
        let w = c.warnings().join("\n");
        assert!(
            w.contains("puppet.ssldir: /nonexistent/ssl/certs/ca.pem does not exist"),
            "{w}"
        );
        assert!(
            w.contains("analysis.environments_dir: /nonexistent/envs"),
            "{w}"
        );
        assert!(
            w.contains("analysis.modulepath[0]: /nonexistent/modules"),
            "{w}"
        );
    }

    #[test]
    fn a_missing_file_is_said_once() {
        let e = Config::load(Path::new("/nonexistent/pcq.toml")).expect_err("missing");
        let chain = anyhow::Error::from(e);
        let text = format!("{chain:#}");
        assert_eq!(text.matches("No such file").count(), 1, "{text}");
        assert_eq!(crate::exit::of(chain.chain()), crate::exit::CONFIG);
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let text = format!("{MINIMAL}[api]\nadmin_listen = \"0.0.0.0:8144\"\n");
        let msg = Config::parse(&text, Path::new("pcq.toml"))
            .expect_err("public")
            .to_string();
        assert!(msg.starts_with("pcq.toml:6: api.admin_listen:"), "{msg}");
        let text = format!("{MINIMAL}[api]\nadmin_listen = \"127.0.0.1:8144\"\n");
        assert!(Config::parse(&text, Path::new("pcq.toml")).is_ok());
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let text = MINIMAL.replace("https://puppet", "http://puppet");
        let msg = Config::parse(&text, Path::new("pcq.toml"))
            .expect_err("http")
            .to_string();
        assert!(msg.starts_with("pcq.toml:4: backend.url:"), "{msg}");
        let text = format!("{MINIMAL}[core.gate]\nmax_concurrency = 0\n");
        let msg = Config::parse(&text, Path::new("pcq.toml"))
            .expect_err("zero")
            .to_string();
        assert!(
            msg.starts_with("pcq.toml:6: core.gate.max_concurrency:"),
            "{msg}"
        );
        for (key, value) in [("max_removal_share", "0.0"), ("remove_after_listings", "0")] {
            let text = format!("{MINIMAL}[ca]\n{key} = {value}\n");
            let msg = Config::parse(&text, Path::new("pcq.toml"))
                .expect_err(key)
                .to_string();
            assert!(msg.starts_with(&format!("pcq.toml:6: ca.{key}:")), "{msg}");
        }
    }
}
