//! `pcq-sim`: a discrete-event simulator of Puppet fleets, comparing Puppet
//! Server's on-demand compiles with pcq's queue, and a capacity planner.
//!
//! The queue policy drives `scheduler::core` unchanged (this crate depends
//! on it without the `daemon` feature: no tokio, no I/O), so what the
//! simulator says about the queue is what the daemon does.
//!
//! - [`scenario`]: the TOML scenario format;
//! - [`engine`]: virtual time and the event queue;
//! - [`world`]: the world every policy shares, and [`streams`], its seeded
//!   random numbers;
//! - [`policy`]: the list of policies, the on-demand model and the queue
//!   model;
//! - [`run`]: the event loop of one run;
//! - [`master`], [`pool`], [`fleet`], [`distribution`]: masters' CPUs,
//!   their JRuby pools (compiles and file requests), nodes and their
//!   changes, compile times;
//! - [`measure`], [`metrics`]: what a run records while it runs, and what
//!   it reports ([`metrics::RunResult`]);
//! - [`plan`], [`report`], [`plot`]: sweeps, confidence intervals, SLOs
//!   and the written report;
//! - [`theory`]: the formulas the simulator is checked against;
//! - [`file_serving`]: the end-to-end suite's file-serving experiment (a
//!   client fetching files beside catalog clients) on a simulated master;
//! - [`calibration`]: the master model fitted to, and checked against, what
//!   `pcq calibrate` measured on a real Puppet Server; [`site`]: a
//!   scenario from what a site was seen to do (`pcq site`);
//! - [`cli`]: `pcq-sim`'s command line (the binary runs it; the packaging
//!   renders its man page and completions).

pub mod calibration;
pub mod cli;
pub mod distribution;
pub mod engine;
pub mod file_serving;
pub mod fleet;
pub mod master;
pub mod measure;
pub mod metrics;
pub mod plan;
pub mod plot;
pub mod policy;
pub mod pool;
pub mod report;
pub mod run;
pub mod scenario;
pub mod site;
pub mod streams;
pub mod theory;
pub mod world;
