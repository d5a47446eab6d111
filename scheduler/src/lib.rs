//! puppet-compile-queue: Puppet catalogs compiled out of a queue.
//!
//! - [`core`]: the scheduling state machine (lanes, gate, backoff), with no
//!   I/O. The daemon and the simulator both drive it.
//! - `daemon` (feature `daemon`, on by default): everything that does I/O
//!   and the `pcq` binary.

pub mod core;
