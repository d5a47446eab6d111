//! What a catalog depends on: the facts its code can read and the exported
//! resources it collects.
//!
//! Puppet records neither, so pcq works them out from the code, with
//! Puppet's own parser: `pcq_analyze.rb` (run with Puppet's Ruby) walks
//! every manifest, EPP and ERB template, Ruby function and Hiera file of an
//! environment and reports, per class, defined type, template and function,
//! the fact paths read (`$facts['os']['family']`, `$facts.dig(..)`,
//! `$::osfamily`, unqualified top-scope variables, `@var` and scope lookups
//! in templates, `%{facts.x}` in Hiera), every *widening* (a key computed at
//! run time, `getvar($x)`, unparsable code: "any fact"), and every
//! collector (`Type <<| query |>>`).
//!
//! This module turns that into answers per node: the catalog lists the
//! node's classes and the defined types it uses, so the node can read the
//! facts those read, plus what node-level code and Hiera read. Anything the
//! analysis cannot bound widens, never narrows: when unsure, a fact counts
//! as used.
//!
//! The same walk says what code each catalog reaches ([`reach`]), so that a
//! deploy, diffed against the code the last one left ([`snapshot`]),
//! recompiles only the nodes whose catalogs reach what it changed.

pub mod analysis;
pub mod collect;
pub mod raw;
pub mod reach;
pub mod resolve;
pub mod ruby;
pub mod snapshot;
pub mod used;
pub mod verify;

pub use analysis::{Analysis, NodeDeps};
pub use collect::Query;
pub use raw::{Collector, FactRef, ParseError, Raw, Unit, Widening};
pub use reach::Reach;
pub use ruby::{default_ruby, AnalyzeError};
pub use snapshot::{Change, Snapshot};
pub use used::UsedFacts;
