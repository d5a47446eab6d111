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
    /// Show one node's status, or the daemon's.
    Status {
        /// The node's certname (none: the queue summary).
        node: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// The daemon's API.
    #[arg(long, default_value = "http://127.0.0.1:8143")]
    api: String,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(run(cli)) {
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
    out
}
