//! The `pcq` command line: what each subcommand takes.
//!
//! Only definitions live here (clap derives them, and the man pages and
//! completions can be generated from them); [`super`] runs them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Where `serve`, `check-config` and the admin commands find the
/// configuration unless told.
pub const DEFAULT_CONFIG: &str = "/etc/pcq/pcq.toml";

#[derive(Parser)]
#[command(
    name = "pcq",
    version,
    about = "Puppet catalogs compiled out of a queue"
)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
    /// Log format on stderr: text (coloured only on a terminal) or json
    /// (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log pcq's own debug lines too (RUST_LOG, when set, decides instead:
    /// e.g. RUST_LOG=info,scheduler=debug).
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: compile out of the queue, serve the API.
    Serve {
        /// The configuration file (see pcq.example.toml).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a configuration file and print it with every default filled in.
    CheckConfig {
        /// The configuration file to check.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The file to check, as earlier versions took it (overrides
        /// --config).
        file: Option<PathBuf>,
    },
    /// Move a node to the front of the queue.
    Bump {
        /// The node's certname.
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Tell pcq an environment got new code: the nodes whose catalogs reach
    /// what changed since the last deploy are recompiled (every node when
    /// the change cannot be bounded). Answers once the new code is
    /// analysed, with how many nodes moved and why.
    Deploy {
        /// The environment.
        environment: String,
        /// Announce an environment pcq does not know yet (no node in it,
        /// not in the code directory); without it, an unknown environment
        /// is an error (a typo in a deploy hook).
        #[arg(long)]
        new: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show the lanes with their depths and ages, and the running compiles.
    Queue {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// On a node, from cron: upload facts if they changed, fetch the
    /// catalog if it changed, and apply it with Puppet's agent.
    Sync(SyncArgs),
    /// Show one node's status (`pcq queue` shows the daemon's).
    Status {
        /// The node's certname.
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Which facts an environment's code can read, with sources, every
    /// widening and every collector of exported resources; --verify checks
    /// that against Puppet Server.
    Analyze(AnalyzeArgs),
    /// Measure what a Puppet Server compiles (warm-up, then closed loops at
    /// 1..JRubies+1 clients, plus any --herd/--loop) for `pcq-sim fit` and
    /// `pcq-sim check`.
    Calibrate(CalibrateArgs),
    /// Write what a site was seen to do, for `pcq-sim scenario`: what this
    /// pcq saw since it started (compile times per master, facts uploads,
    /// exports, deploys), or, for a site that does not run pcq yet, what
    /// PuppetDB's reports say (--from-puppetdb).
    Site(SiteArgs),
}

#[derive(clap::Args)]
pub struct SiteArgs {
    /// Read PuppetDB at this URL instead of a running pcq:
    /// http://127.0.0.1:8080 on its host, or https://puppetdb:8081 with
    /// this host's Puppet certificate.
    #[arg(long)]
    pub from_puppetdb: Option<String>,
    /// With --from-puppetdb: the reports of this long back (PuppetDB keeps
    /// 14 days by default).
    #[arg(long, default_value = "14d", value_parser = humantime::parse_duration)]
    pub window: std::time::Duration,
    /// With --from-puppetdb: only nodes whose certname matches this
    /// regular expression (PuppetDB's `~`), e.g. one data centre's.
    #[arg(long, requires = "from_puppetdb")]
    pub certnames: Option<String>,
    /// With --from-puppetdb: a Puppet Server whose JRuby pool (its status
    /// API) sizes the master of that host name (the reports' producer);
    /// repeat for each. A producer with no server given is an error,
    /// unless there is one of each.
    #[arg(long = "puppetserver", requires = "from_puppetdb")]
    pub puppetservers: Vec<String>,
    /// With --from-puppetdb: Puppet's SSL directory (default: puppet.conf's).
    #[arg(long, requires = "from_puppetdb")]
    pub ssldir: Option<PathBuf>,
    /// With --from-puppetdb: the certificate to present (default: this
    /// host's name).
    #[arg(long = "as", requires = "from_puppetdb")]
    pub as_certname: Option<String>,
    /// Write the observation here (mode 0600) instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// The environment directory (default: `production` in puppet.conf's
    /// environmentpath: /etc/puppetlabs/code/environments with Puppet's
    /// own packages, /etc/puppet/code/environments with Debian's).
    pub envdir: Option<PathBuf>,
    /// Module directories after the environment's `modules` (Puppet's
    /// basemodulepath, default: puppet.conf's); repeat for several.
    #[arg(long)]
    pub modulepath: Vec<PathBuf>,
    /// Puppet's global hiera.yaml, read when it exists (default:
    /// puppet.conf's hiera_config).
    #[arg(long)]
    pub hiera: Option<PathBuf>,
    /// The Ruby that has Puppet (default: Puppet's own, else `ruby`).
    #[arg(long)]
    pub ruby: Option<String>,
    /// Print the analyzer's JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the facts a node with these classes can read (repeat).
    #[arg(long = "class")]
    pub classes: Vec<String>,
    /// Compile through Puppet Server: with the facts of --facts, then with
    /// every fact the analysis calls unused changed; report any catalog
    /// that moved.
    #[arg(long, requires_all = ["certnames", "facts"])]
    pub verify: bool,
    /// With --verify: change every fact alone (a compile each) and report
    /// which facts move the catalog against the ones the analysis calls
    /// used: its precision, and where the surplus comes from.
    #[arg(long, requires = "verify")]
    pub each: bool,
    /// Nodes to verify (repeat).
    #[arg(long = "certname")]
    pub certnames: Vec<String>,
    /// Their facts: `puppet facts show` or facter JSON, or an upload body
    /// (`{"values": ...}`).
    #[arg(long)]
    pub facts: Option<PathBuf>,
    #[command(flatten)]
    pub puppet: CatalogServerArgs,
}

/// What `pcq calibrate` takes.
#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// The server to measure and the certificate to present.
    #[command(flatten)]
    pub puppet: CatalogServerArgs,
    /// A typical node's facts (`puppet facts show`, facter JSON or an
    /// upload body); default: this host's, from `facter -p --json
    /// --show-legacy`.
    #[arg(long)]
    pub facts: Option<PathBuf>,
    /// The environment to compile.
    #[arg(long, default_value = "production")]
    pub environment: String,
    /// Certnames of the measured requests, `{}` replaced by a number: pick
    /// one your node definitions classify like your typical node.
    #[arg(long, default_value = "pcq-calibrate-{}")]
    pub nodes: String,
    /// The server's JRuby count (default: read from its status API,
    /// `/status/v1/services/jruby-metrics`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub jrubies: Option<u32>,
    /// Requests per client at each point of the capacity curve.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub requests_per_client: u32,
    /// Run every experiment this many times, in interleaved rounds (a
    /// machine's speed drifts from minute to minute; `pcq-sim` compares
    /// the median of the repetitions).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Give up warming up after this long (it says so on standard error).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub warmup_max: Duration,
    /// Before each experiment, wait until every JRuby is free (the status
    /// API; at most 30 s) and then this long more: what ran before (a
    /// herd's garbage to collect) must not slow the next one.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Also fire a herd of this many simultaneous requests (repeat).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub herd: Vec<u32>,
    /// Also run a closed loop at this concurrency (repeat), with
    /// --requests-per-client requests per client.
    #[arg(long = "loop", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub loops: Vec<u32>,
    /// Skip the capacity curve (only warm-up, herds and loops: to check a
    /// model fitted before).
    #[arg(long)]
    pub no_curve: bool,
    /// How long one request may take.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Write the measurement (JSON) here; default: standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A Puppet Server whose v4 catalog endpoint pcq calls, and the
/// certificate it presents (`pcq analyze --verify`, `pcq calibrate`).
#[derive(clap::Args)]
pub struct CatalogServerArgs {
    /// Puppet Server (its v4 catalog endpoint must allow --as).
    #[arg(long, default_value = "https://puppet:8140")]
    pub server: String,
    /// Puppet's SSL directory (default: puppet.conf's).
    #[arg(long)]
    pub ssldir: Option<PathBuf>,
    /// The certificate to present (default: this host's name).
    #[arg(long = "as")]
    pub as_certname: Option<String>,
}

impl CatalogServerArgs {
    /// The certificate to present, from the SSL directory given or
    /// `default_ssldir` (puppet.conf's).
    pub fn identity(&self, default_ssldir: &std::path::Path) -> crate::daemon::tls::PuppetSsl {
        identity(
            self.ssldir.as_deref(),
            self.as_certname.as_deref(),
            default_ssldir,
        )
    }
}

/// The certificate to present: `as_certname` (default: this host's name)
/// from `ssldir` (default: `default_ssldir`, puppet.conf's).
pub fn identity(
    ssldir: Option<&std::path::Path>,
    as_certname: Option<&str>,
    default_ssldir: &std::path::Path,
) -> crate::daemon::tls::PuppetSsl {
    let me = as_certname.map_or_else(crate::puppet_conf::hostname, String::from);
    crate::daemon::tls::PuppetSsl::new(ssldir.unwrap_or(default_ssldir), &me)
}

#[derive(clap::Args)]
pub struct SyncArgs {
    /// pcq's API, e.g. https://pcq.example.com:8145.
    #[arg(long, value_parser = https_url)]
    pub server: String,
    /// This node's certname (default: puppet.conf's, else the host name).
    #[arg(long)]
    pub certname: Option<String>,
    /// Puppet's SSL directory (default: puppet.conf's).
    #[arg(long)]
    pub ssldir: Option<PathBuf>,
    /// Puppet's client_datadir, where the agent caches its catalog.
    #[arg(long)]
    pub client_datadir: Option<PathBuf>,
    /// Sync's own state (default: <vardir>/pcq-sync.json).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Command printing facts as JSON (split on spaces). The default
    /// gathers what Puppet 7's agent sends: Puppet's custom facts
    /// (pluginsync) and the legacy ones.
    #[arg(long, default_value = "facter -p --json --show-legacy")]
    pub facts_command: String,
    /// Gather facts at most this often ("0s": every sync).
    #[arg(long, default_value = "30m")]
    pub facts_interval: humantime::Duration,
    /// Command applying the cached catalog (split on spaces); default:
    /// puppet agent --onetime --no-daemonize --use_cached_catalog
    /// --detailed-exitcodes --certname <certname>.
    #[arg(long)]
    pub apply_command: Option<String>,
    /// Command fetching the environment's plugins (custom types, providers,
    /// facts, functions) before a catalog is applied, when the code changed
    /// since the last apply (`--use_cached_catalog` skips pluginsync).
    /// Split on spaces, `{environment}` is the catalog's; default: puppet
    /// plugin download --certname <certname> --environment {environment}.
    #[arg(long)]
    pub plugin_command: Option<String>,
    /// Environment sent with the facts (default: puppet.conf's).
    #[arg(long)]
    pub environment: Option<String>,
    /// Apply even if the catalog did not change.
    #[arg(long)]
    pub force: bool,
    /// Sleep a random time up to this first (spreads a fleet's cron), a
    /// duration with its unit: 5m, 90s.
    #[arg(long, default_value = "0s", value_parser = duration_with_unit)]
    pub splay: humantime::Duration,
    /// Print nothing when nothing changed.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args)]
pub struct ApiArgs {
    /// The daemon's admin API: its Unix socket (you must be pcq's user or
    /// in api.admin_group), the loopback listener http://127.0.0.1:PORT
    /// (api.admin_listen, with --token-file), or https://... with this
    /// host's Puppet certificate (it must be on api.admins). Default: the
    /// api.admin_socket of --config, else /run/pcq/admin.sock.
    #[arg(long)]
    pub api: Option<String>,
    /// The configuration whose admin socket --api defaults to.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The bearer token for an http:// --api (api.admin_token_file).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

/// An `https://` URL: pcq's API speaks TLS only.
fn https_url(text: &str) -> Result<String, String> {
    if text.starts_with("https://") {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} needs https:// in front (pcq's API is TLS only), e.g. https://{}:8145",
            text.trim_start_matches("http://")
                .split(['/', ':'])
                .next()
                .filter(|h| !h.is_empty())
                .unwrap_or("pcq.example.com")
        ))
    }
}

/// A duration with its unit (`5m`, `90s`); a bare number says which unit
/// is missing rather than humantime's own message.
fn duration_with_unit(text: &str) -> Result<humantime::Duration, String> {
    if text != "0" && !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{text:?} needs a unit: {text}m for minutes, {text}s for seconds"
        ));
    }
    text.parse::<humantime::Duration>()
        .map_err(|e| format!("{text:?}: {e} (e.g. 5m or 90s)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn sync_arguments_say_what_they_want() {
        let e = https_url("vm:8145").expect_err("no scheme");
        assert!(e.contains("https://vm:8145"), "{e}");
        assert!(https_url("https://vm:8145").is_ok());
        let e = duration_with_unit("5").expect_err("no unit");
        assert!(e.contains("5m"), "{e}");
        assert!(duration_with_unit("5m").is_ok());
        assert!(duration_with_unit("0").is_ok(), "no splay");
        let parsed = Cli::try_parse_from(["pcq", "sync", "--server", "vm:8145"]);
        assert!(parsed.is_err());
    }
}
