//! `pcq`: the puppet-compile-queue command.
//!
//! Thin on purpose: it parses the arguments and hands the subcommand to
//! the library (`scheduler::cli`), which runs the daemon, a node's sync, or
//! a call to the admin API.

use std::process::ExitCode;

use clap::Parser;
use scheduler::cli::args::Cli;

fn main() -> ExitCode {
    scheduler::cli::run(Cli::parse())
}
