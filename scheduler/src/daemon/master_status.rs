//! Each master's status API, polled for its gate.
//!
//! Puppet Server lends one JRuby pool to pcq's compiles and to every other
//! request (agents' own catalogs, files, pluginsync, reports). pcq's
//! `max_concurrency` bounds its own share only: when other traffic holds
//! the pool, a compile pcq starts waits in Puppet Server's borrow queue in
//! front of the agents'. So every `status_interval` pcq reads each master's
//! `/status/v1/services?level=debug` (the JRuby pool's free instances and
//! the JVM's CPU use, in one request) and hands it to the driver, whose
//! gate starts nothing there while no instance is free for pcq
//! ([`crate::core::Blocked::Pool`]).
//!
//! A reading says what the pool held when Puppet Server answered, and
//! the gate counts every compile pcq started since the request was sent
//! as taken on top of it (a start the answer already shows is counted
//! twice: the gate errs towards fewer starts until the next reading). A
//! start sent just before the request whose JRuby Puppet Server had not
//! yet borrowed can show as free: one start too many may go through until
//! the next reading, and waits for a JRuby in Puppet Server's queue (a
//! wait, not a failure).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::daemon::backend::puppetserver::PuppetServer;
use crate::daemon::driver::{self, Command};

/// How long one read may take: a master too busy to answer its status
/// within this is read as unknown, not as idle.
pub const READ_LIMIT: Duration = Duration::from_secs(10);

/// Polls every master (`servers` by the driver's master index) every
/// `every` until the driver is gone.
pub async fn poll(servers: Vec<PuppetServer>, every: Duration, tx: mpsc::Sender<Command>) {
    let mut polls = JoinSet::new();
    for (m, server) in servers.into_iter().enumerate() {
        let tx = tx.clone();
        polls.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let asked = driver::now();
                let reading = server.gate_status(READ_LIMIT).await;
                let status = Command::MasterStatus { m, reading, asked };
                if tx.send(status).await.is_err() {
                    return;
                }
            }
        });
    }
    while polls.join_next().await.is_some() {}
}
