//! `pcq`: the puppet-compile-queue command.
//!
//! Thin on purpose: it parses arguments and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use scheduler::core::{Core, CoreConfig};

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
    /// Check a scheduling-core configuration file (TOML) and print it with
    /// every default filled in.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the scheduling core's default configuration as TOML.
    DefaultConfig,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pcq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::CheckConfig { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let config: CoreConfig =
                toml::from_str(&text).with_context(|| format!("in {}", file.display()))?;
            Core::new(config.clone(), 0).with_context(|| format!("in {}", file.display()))?;
            print!("{}", toml::to_string(&config)?);
        }
        Command::DefaultConfig => print!("{}", toml::to_string(&CoreConfig::default())?),
    }
    Ok(())
}
