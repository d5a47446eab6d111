//! puppet-compile-queue: Puppet catalogs compiled out of a queue.
//!
//! - [`core`]: the scheduling state machine (lanes, gate, backoff), with no
//!   I/O. The daemon and the simulator both drive it.
//! - [`toml_file`]: TOML files whose errors name the line and key (the
//!   daemon's config, the simulator's scenarios); [`exit`]: the exit
//!   statuses both programs share.
//! - [`calibration`]: what `pcq calibrate` measured on a Puppet Server,
//!   the data `pcq-sim fit` and `pcq-sim check` read; [`site`]: what a
//!   site was seen to do (by pcq or in PuppetDB), the data `pcq-sim
//!   scenario` reads.
//!
//! Behind the feature `daemon` (on by default), everything that does I/O:
//!
//! - `daemon`: `pcq serve`, the real-time driver of the core with its
//!   store, Puppet clients and HTTP API;
//! - `sync`: `pcq sync`, what a node runs from cron instead of the agent;
//! - `cli`: the `pcq` command line (argument definitions, the admin API
//!   client, what `pcq queue` and `pcq status` print);
//! - `puppet_conf`: what Puppet's own configuration says (ssldir,
//!   certname, the host name), for all three; `private_file`: files that
//!   hold secrets, written 0600, atomically and durably.
//!
//! Arrows only run downward: `cli` -> `sync` -> `daemon` -> `puppet_conf`, `private_file`,
//! `toml_file`, `exit`, `calibration`, `site`, `core`; `scripts/check-module-graph` checks it.

pub mod calibration;
pub mod core;
pub mod exit;
pub mod site;
pub mod toml_file;

#[cfg(feature = "daemon")]
pub mod cli;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod private_file;
#[cfg(feature = "daemon")]
pub mod puppet_conf;
#[cfg(feature = "daemon")]
pub mod sync;
