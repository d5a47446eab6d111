//! The policies, the ways of getting catalogs compiled over the same world,
//! and the list of them that the run, the plan, the report and the command
//! line go over.
//!
//! - [`queue`]: pcq: `scheduler::core`, unchanged, schedules compiles onto
//!   the masters; nodes sync cheaply and apply cached catalogs.
//! - [`on_demand`]: Puppet Server as it is: every agent run asks a master
//!   for a catalog; a JRuby pool compiles, a FIFO borrow queue waits.
//!
//! A policy is a file here holding its [`Model`] (how it reacts to the
//! world) and its [`Description`] (names, words and lines in the report,
//! how often its nodes run, how its model is built), and a line in the list
//! below. The list's order is the report's; the first policy is the one the
//! report's verdict compares the others with.

mod description;
mod model;
pub mod on_demand;
pub mod queue;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use description::{Description, Prose};
pub use model::Model;

/// Declares [`Policy`], one variant per entry of the list, with what maps a
/// variant to its description.
macro_rules! policies {
    ($($(#[$doc:meta])* $variant:ident => $description:path,)+) => {
        /// Which model of compiling a run simulates (in JSON: its name).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Policy {
            $($(#[$doc])* $variant,)+
        }

        impl Policy {
            /// Every policy, in the list's order.
            pub const ALL: &'static [Policy] = &[$(Policy::$variant),+];

            /// Every policy's name, in the list's order.
            const NAMES: &'static [&'static str] = &[$($description.name),+];

            /// What the simulator knows about this policy.
            pub fn description(self) -> &'static Description {
                match self {
                    $(Policy::$variant => &$description,)+
                }
            }
        }
    };
}

// The list of policies.
policies! {
    /// pcq: masters compile out of a queue driven by `scheduler::core`.
    Queue => queue::DESCRIPTION,
    /// Puppet Server: every agent run asks for a catalog, compiled on demand.
    OnDemand => on_demand::DESCRIPTION,
}

impl Policy {
    /// The name used on the command line, in JSON and in reports.
    pub fn name(self) -> &'static str {
        self.description().name
    }

    /// The policy of that name.
    pub fn named(name: &str) -> Option<Policy> {
        Policy::ALL.iter().copied().find(|p| p.name() == name)
    }

    /// Its position in the list (0 for the first).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Serialize for Policy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Policy, D::Error> {
        let name = String::deserialize(deserializer)?;
        Policy::named(&name).ok_or_else(|| D::Error::unknown_variant(&name, Policy::NAMES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_has_its_own_name_and_comes_back_from_json() {
        for (i, &p) in Policy::ALL.iter().enumerate() {
            assert_eq!(p.index(), i);
            assert_eq!(Policy::named(p.name()), Some(p));
            let json = serde_json::to_string(&p).expect("serializes");
            assert_eq!(json, format!("\"{}\"", p.name()));
            assert_eq!(serde_json::from_str::<Policy>(&json).ok(), Some(p));
        }
        assert_eq!(Policy::NAMES.len(), Policy::ALL.len());
        assert!(serde_json::from_str::<Policy>("\"both\"").is_err());
    }
}
