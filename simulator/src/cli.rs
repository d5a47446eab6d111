//! `pcq-sim`'s command line: its clap definitions, apart from the binary
//! that runs them, so that the packaging (`packaging/`) renders the man
//! page and the shell completions from the very same definitions.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand, ValueEnum};

use crate::policy::Policy;

#[derive(Parser)]
#[command(
    name = "pcq-sim",
    version,
    about = "Simulate Puppet fleets: on-demand compiles against pcq's queue"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--policy`: a policy's name, or [`EVERY_POLICY`].
#[derive(Clone)]
pub struct Policies(pub Vec<Policy>);

/// `--policy` for every policy in the list (named when there were two).
const EVERY_POLICY: &str = "both";

/// What `--policy` accepts: the names in the list of policies, then
/// [`EVERY_POLICY`].
fn policies_arg() -> impl TypedValueParser<Value = Policies> {
    let names = Policy::ALL.iter().map(|p| p.name()).chain([EVERY_POLICY]);
    PossibleValuesParser::new(names).map(|name| {
        Policies(Policy::named(&name).map_or_else(|| Policy::ALL.to_vec(), |p| vec![p]))
    })
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// A table for people.
    Table,
    /// One RunResult per policy (an array).
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a scenario once per policy and print the results.
    Run {
        /// The scenario file (TOML); without one, the built-in example.
        scenario: Option<PathBuf>,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Which policy to simulate.
        #[arg(long, value_parser = policies_arg(), default_value = EVERY_POLICY)]
        policy: Policies,
        /// Output format; JSON is one RunResult per policy (an array).
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Masters (default: the scenario's masters.count); at least 1.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        masters: Option<u32>,
        /// Nodes (default: the scenario's fleet.nodes).
        #[arg(long)]
        nodes: Option<u32>,
        /// Leave the time series out of the JSON.
        #[arg(long)]
        no_series: bool,
    },
    /// Sweep master counts with replications and write a capacity report.
    Plan {
        /// The scenario file (TOML); without one, the built-in example
        /// (scenarios/example.toml).
        scenario: Option<PathBuf>,
        /// Folder for report.md, SVG plots and CSVs.
        #[arg(long, default_value = "pcq-sim-report")]
        out: PathBuf,
        /// Replications per point (default: the scenario's plan.replications).
        #[arg(long)]
        replications: Option<u32>,
        /// Which policies to sweep.
        #[arg(long, value_parser = policies_arg(), default_value = EVERY_POLICY)]
        policy: Policies,
        /// Exit with status 5 when the scenario's masters.count misses an SLO
        /// under the queue policy.
        #[arg(long)]
        check: bool,
        /// Worker threads (default: every core).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Build a scenario from what a site was seen to do (`pcq site`, from a
    /// running pcq or from PuppetDB): writes DIR/scenario.toml and the
    /// compile times as DIR/compile.csv beside it.
    Scenario {
        /// The observation (JSON written by `pcq site`).
        site: PathBuf,
        /// The folder to write into (made if missing).
        #[arg(long)]
        out: PathBuf,
        /// The scenario's name.
        #[arg(long, default_value = "observed")]
        name: String,
    },
    /// Fit the master model to a capacity curve measured by `pcq
    /// calibrate`: prints the `[compile]` and `[masters]` tables of a
    /// scenario, with the fit in comments.
    Fit {
        /// The measurement (JSON written by `pcq calibrate`).
        measurement: PathBuf,
        /// Write the tables here instead of printing them (and, when the
        /// compile times need an empirical distribution, its CSV beside).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Predict every run of a measurement (`pcq calibrate`, with herds and
    /// loops) with a scenario's `[compile]` and `[masters]`, and print
    /// measured, predicted and error side by side.
    Check {
        /// The scenario whose master model is checked.
        scenario: PathBuf,
        /// The measurement (JSON written by `pcq calibrate`).
        measurement: PathBuf,
        /// Exit with status 6 when a figure is further off than this share.
        #[arg(long, default_value_t = 0.15, value_parser = tolerance)]
        tolerance: f64,
    },
}

/// `--tolerance`: a share, at least 0.
fn tolerance(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{text:?} is not a share of at least 0 (0.15 is 15%)"
        )),
    }
}
