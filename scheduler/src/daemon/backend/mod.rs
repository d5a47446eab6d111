//! Compile backends: how a catalog gets compiled.
//!
//! - [`puppetserver`]: `POST /puppet/v4/catalog` on Puppet Server over
//!   mutual TLS (production);
//! - [`command`]: `puppet catalog compile` with the node's stored facts (no
//!   server needed; development and tests).
//!
//! A failure says whose fault it is, because the answer differs: a compile
//! error parks that node with a backoff; a server that is down, answers 503
//! or refuses pcq pauses starts on that master until a probe says it is
//! back, so one outage does not burn every node's backoff.

pub mod command;
pub mod compiler;
pub mod puppetserver;

pub use compiler::{agent_facts, facts_map, BoxFuture, Compiler, Failure, Job};
