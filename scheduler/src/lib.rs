//! puppet-compile-queue: Puppet catalogs compiled out of a queue.
//!
//! - [`core`]: the scheduling state machine (lanes, gate, backoff), with no
//!   I/O. The daemon and the simulator both drive it.
//! - [`toml_file`]: TOML files whose errors name the line and key (the
//!   daemon's config, the simulator's scenarios).
//! - `daemon` (feature `daemon`, on by default): everything that does I/O:
//!   the store, the Puppet clients, the HTTP API, the real-time driver of
//!   the core, and the `pcq` binary.

pub mod core;
pub mod toml_file;

#[cfg(feature = "daemon")]
pub mod daemon;
