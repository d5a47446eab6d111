//! The `pcq` command line, run by the thin `main.rs`.
//!
//! - [`args`]: what each subcommand takes (clap definitions);
//! - [`client`]: the admin API client of `bump`, `deploy`, `queue`,
//!   `status`; [`render`]: what those print, from the API's typed views;
//! - [`analyze`]: `pcq analyze` and its `--verify`;
//! - [`calibrate`]: `pcq calibrate`, a Puppet Server's capacity measured;
//! - [`site`]: `pcq site`, what a site was seen to do (by this pcq, or in
//!   PuppetDB: [`puppetdb`]), for `pcq-sim scenario`.
//!
//! `serve` hands over to [`crate::daemon`], `sync` to [`crate::sync`].

pub mod analyze;
pub mod args;
pub mod calibrate;
pub mod client;
pub mod puppetdb;
pub mod render;
pub mod site;

use std::process::ExitCode;

use anyhow::Result;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::daemon::config::Config;
use crate::daemon::driver::{NodeStatus, QueueView};
use crate::daemon::serve;
use crate::daemon::tls::PuppetSsl;
use crate::exit;
use crate::puppet_conf::PuppetSettings;
use crate::sync;
use args::{ApiArgs, Cli, Command, LogFormat, SyncArgs};
use render::emit;

/// Runs one subcommand; the exit status says how it went.
pub fn run(cli: Cli) -> ExitCode {
    let command = cli.command;
    if let Command::Sync(args) = &command {
        return node_sync(args);
    }
    logging(cli.log_format, cli.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pcq: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(command));
    // Do not wait for blocking work still running (an analysis of the
    // code at shutdown): the driver has committed its last writes, and
    // catalog files are replaced atomically.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pcq: {e:#}");
            ExitCode::from(exit::of(e.chain()))
        }
    }
}

/// Log lines on stderr: RUST_LOG decides what, else `info` (with
/// `--verbose`, pcq's own debug lines too); colour only on a terminal
/// (under systemd stderr is a journal, not a terminal).
fn logging(format: LogFormat, verbose: bool) {
    use std::io::IsTerminal;
    let default = if verbose {
        "info,scheduler=debug"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Serve { config: path } => {
            let config = Config::load(&path)?;
            tracing::info!(
                "pcq {} starting with {}: certname {}, state in {}",
                env!("CARGO_PKG_VERSION"),
                path.display(),
                config.certname(),
                config.state_dir.display()
            );
            for w in config.warnings() {
                tracing::warn!("{}: {w}", path.display());
            }
            serve(config).await?
        }
        Command::CheckConfig { config, file } => {
            let file = file.unwrap_or(config);
            let config = Config::load(&file)?;
            for w in config.warnings() {
                eprintln!("pcq: warning: {}: {w}", file.display());
            }
            // what it holds, without the database's password
            let mut shown = config.clone();
            shown.store.url = shown
                .store
                .url
                .as_deref()
                .map(crate::daemon::store::postgresql::redacted);
            print!("{}", toml::to_string(&shown)?);
        }
        Command::Bump { node, api } => {
            let path = format!("/v1/nodes/{node}/bump");
            let v = call(&api, Method::POST, &path, None).await?;
            show(&api, &v, |v: &Value| {
                format!("{node}: {}\n", v["result"].as_str().unwrap_or("?"))
            })?;
        }
        Command::Deploy {
            environment,
            new,
            api,
        } => {
            // "new" only when asked: an older daemon refuses unknown keys
            let body = match new {
                true => json!({ "environment": environment, "new": true }),
                false => json!({ "environment": environment }),
            };
            let v = call(&api, Method::POST, "/v1/deploys", Some(body)).await?;
            show(&api, &v, render::deploy)?;
        }
        Command::Queue { api } => {
            let v = call(&api, Method::GET, "/v1/queue", None).await?;
            show(&api, &v, |q: &QueueView| render::queue(q))?;
        }
        Command::Status { node, api } => {
            let path = format!("/v1/nodes/{node}/status");
            let v = call(&api, Method::GET, &path, None).await?;
            show(&api, &v, |s: &NodeStatus| render::status(s))?;
        }
        Command::Analyze(args) => analyze::analyze(args).await?,
        Command::Calibrate(args) => calibrate::calibrate(args).await?,
        Command::Site(args) => site::site(args).await?,
        Command::Sync(_) => {} // handled in run, without a runtime for the daemon
    }
    Ok(())
}

async fn call(api: &ApiArgs, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    client::call(
        &client::base(api),
        api.token_file.as_deref(),
        method,
        path,
        body,
    )
    .await
    .map_err(anyhow::Error::msg)
}

/// Prints the raw JSON (`--json`) or the answer read as `T` and rendered.
fn show<T: DeserializeOwned>(api: &ApiArgs, v: &Value, text: impl Fn(&T) -> String) -> Result<()> {
    if api.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(v)?));
        return Ok(());
    }
    let typed: T = serde_json::from_value(v.clone())
        .map_err(|e| anyhow::anyhow!("pcq answered something this version cannot read: {e}"))?;
    emit(&text(&typed));
    Ok(())
}

fn split(words: &str) -> Vec<String> {
    words.split_whitespace().map(String::from).collect()
}

/// `pcq sync`: no logging set-up, one line of output, exit status 0/1/2.
fn node_sync(args: &SyncArgs) -> ExitCode {
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
    let plugins = match &args.plugin_command {
        Some(c) => split(c),
        None => split(&format!(
            "puppet plugin download --certname {certname} --environment {{environment}}"
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
        plugin_command: plugins,
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
            return ExitCode::from(exit::FAILED);
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
