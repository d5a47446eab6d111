//! `pcq`: the puppet-compile-queue command.
//!
//! Thin on purpose: it parses arguments and hands over to the library
//! (`scheduler::daemon`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand};
use reqwest::Method;
use scheduler::daemon::config::Config;
use scheduler::daemon::sync::{self, PuppetSettings};
use scheduler::daemon::tls::PuppetSsl;
use scheduler::daemon::{client, serve};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "pcq",
    version,
    about = "Puppet catalogs compiled out of a queue"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: compile out of the queue, serve the API.
    Serve {
        /// The configuration file (see pcq.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and print it with every default filled in.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Move a node to the front of the queue.
    Bump {
        /// The node's certname.
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Tell pcq an environment got new code: its nodes are recompiled.
    Deploy {
        /// The environment.
        environment: String,
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
    /// Show one node's status, or the daemon's.
    Status {
        /// The node's certname (none: the queue summary).
        node: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Which facts an environment's code can read, with sources, every
    /// widening and every collector of exported resources; --verify checks
    /// that against Puppet Server.
    Analyze(AnalyzeArgs),
}

#[derive(clap::Args)]
struct AnalyzeArgs {
    /// The environment directory.
    #[arg(default_value = "/etc/puppet/code/environments/production")]
    envdir: PathBuf,
    /// Module directories after the environment's `modules` (Puppet's
    /// basemodulepath); repeat for several.
    #[arg(long, default_values = ["/etc/puppet/code/modules", "/usr/share/puppet/modules"])]
    modulepath: Vec<PathBuf>,
    /// Puppet's global hiera.yaml (read when it exists).
    #[arg(long, default_value = "/etc/puppet/hiera.yaml")]
    hiera: PathBuf,
    /// The Ruby that has Puppet (default: Puppet's own, else `ruby`).
    #[arg(long)]
    ruby: Option<String>,
    /// Print the analyzer's JSON.
    #[arg(long)]
    json: bool,
    /// Print the facts a node with these classes can read (repeat).
    #[arg(long = "class")]
    classes: Vec<String>,
    /// Compile through Puppet Server: with the facts of --facts, then with
    /// every fact the analysis calls unused changed; report any catalog
    /// that moved.
    #[arg(long, requires_all = ["certnames", "facts"])]
    verify: bool,
    /// Nodes to verify (repeat).
    #[arg(long = "certname")]
    certnames: Vec<String>,
    /// Their facts: `puppet facts show` or facter JSON, or an upload body
    /// (`{"values": ...}`).
    #[arg(long)]
    facts: Option<PathBuf>,
    /// Puppet Server (its v4 catalog endpoint must allow --as).
    #[arg(long, default_value = "https://puppet:8140")]
    server: String,
    /// Puppet's SSL directory.
    #[arg(long, default_value = "/var/lib/puppet/ssl")]
    ssldir: PathBuf,
    /// The certificate to present (default: this host's name).
    #[arg(long = "as")]
    as_certname: Option<String>,
}

#[derive(clap::Args)]
struct SyncArgs {
    /// pcq's API, e.g. https://pcq.example.com:8143.
    #[arg(long)]
    server: String,
    /// This node's certname (default: puppet.conf's, else the host name).
    #[arg(long)]
    certname: Option<String>,
    /// Puppet's SSL directory (default: puppet.conf's).
    #[arg(long)]
    ssldir: Option<PathBuf>,
    /// Puppet's client_datadir, where the agent caches its catalog.
    #[arg(long)]
    client_datadir: Option<PathBuf>,
    /// Sync's own state (default: <vardir>/pcq-sync.json).
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Command printing facts as JSON (split on spaces). The default
    /// gathers what Puppet 7's agent sends: Puppet's custom facts
    /// (pluginsync) and the legacy ones.
    #[arg(long, default_value = "facter -p --json --show-legacy")]
    facts_command: String,
    /// Gather facts at most this often ("0s": every sync).
    #[arg(long, default_value = "30m")]
    facts_interval: humantime::Duration,
    /// Command applying the cached catalog (split on spaces); default:
    /// puppet agent --onetime --no-daemonize --use_cached_catalog
    /// --detailed-exitcodes --certname <certname>.
    #[arg(long)]
    apply_command: Option<String>,
    /// Environment sent with the facts (default: puppet.conf's).
    #[arg(long)]
    environment: Option<String>,
    /// Apply even if the catalog did not change.
    #[arg(long)]
    force: bool,
    /// Sleep a random time up to this first (spreads a fleet's cron).
    #[arg(long, default_value = "0s")]
    splay: humantime::Duration,
    /// Print nothing when nothing changed.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
struct ApiArgs {
    /// The daemon's admin API: the plain loopback listener
    /// (api.admin_listen), or https://... with this host's Puppet
    /// certificate (it must be on api.admins).
    #[arg(long, default_value = "http://127.0.0.1:8144")]
    api: String,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Sync(args) = &cli.command {
        return run_sync(args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pcq: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for blocking work still running (an analysis of the
    // code at shutdown): the driver has committed its last writes, and
    // catalog files are replaced atomically.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pcq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            serve(config).await?;
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            print!("{}", toml::to_string(&config)?);
        }
        Command::Bump { node, api } => {
            let v = expect_ok(
                client::call(
                    &api.api,
                    Method::POST,
                    &format!("/v1/nodes/{node}/bump"),
                    None,
                )
                .await,
            )?;
            show(&api, &v, |v| {
                format!("{node}: {}\n", v["result"].as_str().unwrap_or("?"))
            });
        }
        Command::Deploy { environment, api } => {
            let v = expect_ok(
                client::call(
                    &api.api,
                    Method::POST,
                    "/v1/deploys",
                    Some(json!({ "environment": environment })),
                )
                .await,
            )?;
            show(&api, &v, |v| {
                format!("{environment}: {} nodes to recompile\n", v["nodes"])
            });
        }
        Command::Queue { api } | Command::Status { node: None, api } => {
            let v = expect_ok(client::call(&api.api, Method::GET, "/v1/queue", None).await)?;
            show(&api, &v, queue_text);
        }
        Command::Sync(_) => {} // handled in main
        Command::Analyze(args) => analyze(args).await?,
        Command::Status {
            node: Some(node),
            api,
        } => {
            let v = expect_ok(
                client::call(
                    &api.api,
                    Method::GET,
                    &format!("/v1/nodes/{node}/status"),
                    None,
                )
                .await,
            )?;
            show(&api, &v, status_text);
        }
    }
    Ok(())
}

async fn analyze(args: AnalyzeArgs) -> Result<()> {
    use scheduler::daemon::analyze::{default_ruby, verify, Analysis};
    use scheduler::daemon::backend::puppetserver::PuppetServer;
    use scheduler::daemon::certname::Certname;

    let ruby = args.ruby.clone().unwrap_or_else(default_ruby);
    let hiera: Vec<PathBuf> = Some(args.hiera.clone())
        .filter(|h| h.is_file())
        .into_iter()
        .collect();
    let analysis = Analysis::run(&ruby, &args.envdir, &args.modulepath, &hiera)?;
    let mut out = String::new();
    if args.json {
        out += &serde_json::to_string_pretty(&analysis.raw)?;
        out.push('\n');
    } else if args.classes.is_empty() && !args.verify {
        out += &analysis.report();
    }
    if !args.classes.is_empty() {
        let deps = analysis.for_catalog(&args.classes, &[]);
        if let Some(why) = &deps.widened_by {
            out += &format!("any fact, because of {why}\n");
        }
        for p in deps.facts.paths() {
            out += &format!("{p}\n");
        }
        for c in &deps.unknown_classes {
            out += &format!("unknown class: {c}\n");
        }
        for (kind, query) in &deps.collects {
            out += &format!("collects {kind} where {query}\n");
        }
    }
    emit(&out);
    if !args.verify {
        return Ok(());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let facts_file = args
        .facts
        .clone()
        .ok_or_else(|| anyhow!("--verify needs --facts"))?;
    let text = std::fs::read(&facts_file).map_err(|e| anyhow!("{}: {e}", facts_file.display()))?;
    let facts = match serde_json::from_slice::<Value>(&text)? {
        Value::Object(mut m) => match m.remove("values") {
            Some(Value::Object(v)) => v,
            Some(_) => bail!("{}: \"values\" is not an object", facts_file.display()),
            None => m,
        },
        _ => bail!("{}: not a JSON object of facts", facts_file.display()),
    };
    let me = args
        .as_certname
        .clone()
        .unwrap_or_else(scheduler::daemon::hostname);
    let server = PuppetServer::new(
        &args.server,
        &PuppetSsl::new(&args.ssldir, &me),
        false,
        false,
    )?;
    let environment = args
        .envdir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: no environment name", args.envdir.display()))?
        .to_string();
    let mut unsound = 0;
    for name in &args.certnames {
        let certname = Certname::parse(name).map_err(|e| anyhow!("{name}: {e}"))?;
        let verdict = verify::verify(&analysis, &server, &certname, &environment, &facts).await?;
        emit(&format!("{verdict}\n"));
        if !verdict.sound() {
            unsound += 1;
        }
    }
    if unsound > 0 {
        bail!(
            "{unsound} of {} nodes: the analysis missed facts the catalog reads",
            args.certnames.len()
        );
    }
    Ok(())
}

fn expect_ok(answer: Result<(u16, Value), String>) -> Result<Value> {
    let (status, body) = answer.map_err(|e| anyhow!(e))?;
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let message = body["error"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| body.to_string());
    bail!("{status}: {message}")
}

fn show(api: &ApiArgs, v: &Value, text: impl Fn(&Value) -> String) {
    if api.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print!("{}", text(v));
    }
}

fn age(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0}s")
    } else if secs < 7200.0 {
        format!("{:.1}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    }
}

fn queue_text(v: &Value) -> String {
    let mut out = format!(
        "{} nodes, {} waiting for facts; blocked: {}; cycle time: {}\n\nlane      depth  oldest\n",
        v["nodes"],
        v["waiting_for_facts"],
        v["blocked"].as_str().unwrap_or("?"),
        v["cycle_time_seconds"].as_f64().map_or("-".into(), age)
    );
    for l in v["lanes"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<8} {:>6}  {}\n",
            l["lane"].as_str().unwrap_or("?"),
            l["depth"],
            age(l["oldest_age_seconds"].as_f64().unwrap_or(0.0))
        );
    }
    out += "\nmaster    up   running  load/core\n";
    for m in v["masters"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<8} {:<4} {:>3}/{:<3}  {:.2}\n",
            m["name"].as_str().unwrap_or("?"),
            if m["up"].as_bool() == Some(true) {
                "yes"
            } else {
                "NO"
            },
            m["in_flight"],
            m["max_concurrency"],
            m["load_per_core"].as_f64().unwrap_or(0.0)
        );
    }
    let running = v["in_flight"].as_array().map_or(0, Vec::len);
    if running > 0 {
        out += "\ncompiling\n";
        for r in v["in_flight"].as_array().into_iter().flatten() {
            out += &format!(
                "  {} on {} for {}\n",
                r["certname"].as_str().unwrap_or("?"),
                r["master"].as_str().unwrap_or("?"),
                age(r["seconds"].as_f64().unwrap_or(0.0))
            );
        }
    }
    out
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

fn status_text(v: &Value) -> String {
    let mut out = String::new();
    for key in [
        "certname",
        "environment",
        "state",
        "reason",
        "catalog_hash",
        "catalog_changed_at",
        "last_compile",
        "failures",
        "last_error",
    ] {
        let value = &v[key];
        if !value.is_null() {
            let shown = value
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| value.to_string());
            out += &format!("{key:<20}{shown}\n");
        }
    }
    match v["fact_paths"].as_array() {
        Some(paths) => {
            let names: Vec<&str> = paths.iter().filter_map(Value::as_str).collect();
            out += &format!(
                "{:<20}{} read by its catalog: {}\n",
                "fact_paths",
                names.len(),
                names.join(" ")
            );
        }
        None => {
            out += &format!(
                "{:<20}any (not known yet, or the code may read any fact)\n",
                "fact_paths"
            )
        }
    }
    out
}

fn split(words: &str) -> Vec<String> {
    words.split_whitespace().map(String::from).collect()
}

/// `pcq sync`: no logging set-up, one line of output, exit status 0/1/2.
fn run_sync(args: &SyncArgs) -> ExitCode {
    let puppet = PuppetSettings::discover();
    let certname = args
        .certname
        .clone()
        .unwrap_or_else(|| puppet.certname.clone());
    let ssldir = args.ssldir.clone().unwrap_or_else(|| puppet.ssldir.clone());
    let apply = match &args.apply_command {
        Some(c) => split(c),
        None => split(&format!(
            "puppet agent --onetime --no-daemonize --use_cached_catalog --detailed-exitcodes --certname {certname}"
        )),
    };
    let options = sync::Options {
        server: args.server.clone(),
        ssl: PuppetSsl::new(&ssldir, &certname),
        certname,
        client_datadir: args
            .client_datadir
            .clone()
            .unwrap_or_else(|| puppet.client_datadir.clone()),
        state_file: args
            .state_file
            .clone()
            .unwrap_or_else(|| puppet.vardir.join("pcq-sync.json")),
        facts_command: split(&args.facts_command),
        facts_interval: *args.facts_interval,
        apply_command: apply,
        environment: args.environment.clone().or(puppet.environment),
        force: args.force,
        splay: *args.splay,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pcq sync: {e}");
            return ExitCode::from(1);
        }
    };
    let report = runtime.block_on(sync::sync(&options));
    if report.status != 0 {
        eprintln!("{}", report.line);
    } else if !(args.quiet && !report.applied && report.line.contains("unchanged")) {
        println!("{}", report.line);
    }
    ExitCode::from(report.status)
}
