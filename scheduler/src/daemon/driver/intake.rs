//! Node intake: who joins the queue, who leaves it, and what a facts
//! upload does.
//!
//! A node is scheduled once it has both a signed certificate and facts
//! (compiling without facts gives a wrong catalog), and removed when the
//! CA revokes its certificate or stops listing it. A facts upload bumps a
//! node only when a fact its catalog can read changed (or, until that is
//! known, any fact outside `facts.ignore`). These are the decisions, as
//! plain functions and a small state; the driver carries them out.

use std::collections::{HashMap, HashSet};

use crate::daemon::certname::Certname;
use crate::daemon::dependencies::UsedHash;

use super::nodes::Nodes;

/// Certnames on their way in, and the rules for letting them in.
pub struct Intake {
    /// Signed certificates whose node has sent no facts yet.
    waiting_for_facts: HashSet<Certname>,
    /// Certnames with stored facts but no signed certificate (yet), with
    /// the environment of their upload ("" when none was given).
    facts_only: HashMap<Certname, String>,
    /// Certnames never scheduled (`ca.exclude`).
    exclude: HashSet<String>,
    /// Nodes join when their facts arrive (no CA polling).
    join_on_facts: bool,
    /// Environment of nodes that never gave one.
    default_environment: String,
    /// When a node the CA stops listing may leave.
    absence: Absence,
    /// Known nodes missing from plausible listings: how many in a row.
    absent: HashMap<Certname, u32>,
}

/// When a node the CA stops listing (without revoking it) may leave: a CA
/// answer can be wrong for a while, and removing a node drops its catalog,
/// facts and exports, so an absence must be seen several times, in
/// listings that are plausible.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Absence {
    /// Plausible listings in a row without the node.
    pub listings: u32,
    /// A listing lacking more than this share of the known nodes (at least
    /// one node) is not plausible; nor is an empty one while nodes are
    /// known.
    pub max_share: f64,
}

/// What a CA listing changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CaPlan {
    /// Known nodes to remove (revoked, or absent from enough plausible
    /// listings in a row).
    pub remove: Vec<Certname>,
    /// Signed nodes whose facts are stored: they join, in this environment.
    pub add: Vec<(Certname, String)>,
    /// Known nodes the listing lacks (not revoked).
    pub absent: usize,
    /// The listing is not plausible: its absences were ignored.
    pub implausible: bool,
}

/// A known node's facts state, as the driver holds it.
#[derive(Clone, Copy, Debug)]
pub struct Known<'a> {
    /// Hash of its last facts without the ignored ones.
    pub facts_hash: Option<&'a str>,
    /// Its environment in the core.
    pub environment: &'a str,
    /// Fingerprint of its used-facts set and the hash of its last upload.
    pub used: Option<(u64, u64)>,
}

/// What to do with an upload before it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeforeStore {
    /// The same facts and environment as last time: answer at once.
    Unchanged,
    /// Store it; with `baseline`, hash the node's previous facts with the
    /// upload's used-facts set too (the set changed since the last upload,
    /// so the old hash cannot be compared).
    Store {
        /// Hash the previous facts with the new set.
        baseline: bool,
    },
}

/// What a stored upload of a known node does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfterStore {
    /// Bump the node (a fact that matters changed, or its environment).
    pub bump: bool,
    /// Its new environment, when the upload moved it.
    pub environment: Option<String>,
    /// The node's used-facts state from now on.
    pub used: Option<(u64, u64)>,
    /// The metric label: changed, unused (only facts no code reads
    /// changed) or unchanged.
    pub label: &'static str,
}

/// What a stored upload of an unknown certname does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Newcomer {
    /// The node joins the queue in this environment.
    Join(String),
    /// Kept until the CA signs its certificate.
    Wait,
}

/// Decides whether an upload needs storing at all.
pub fn before_store(
    known: Option<Known<'_>>,
    environment: Option<&str>,
    hash: &str,
    used: Option<&UsedHash>,
) -> BeforeStore {
    if let Some(k) = known {
        let same_facts = k.facts_hash == Some(hash);
        let same_env = environment.is_none_or(|e| e == k.environment);
        if same_facts && same_env {
            return BeforeStore::Unchanged;
        }
    }
    let known_set = known
        .and_then(|k| k.used)
        .map(|(fingerprint, _)| fingerprint);
    BeforeStore::Store {
        baseline: used.is_some_and(|u| Some(u.fingerprint) != known_set),
    }
}

/// Decides what a stored upload of a known node changes. `baseline` is the
/// node's previous facts hashed with the upload's set, when that was asked
/// for (see [`BeforeStore::Store`]).
pub fn after_store(
    known: Known<'_>,
    environment: Option<&str>,
    hash: &str,
    used: Option<&UsedHash>,
    baseline: Option<u64>,
) -> AfterStore {
    let relevant_changed = known.facts_hash != Some(hash);
    let mut changed = relevant_changed;
    if let Some(u) = used {
        let previous = match known.used {
            Some((fingerprint, h)) if fingerprint == u.fingerprint => Some(h),
            _ => baseline,
        };
        changed = previous != Some(u.hash);
    }
    let moved = environment
        .filter(|e| *e != known.environment)
        .map(String::from);
    let bump = changed || moved.is_some();
    AfterStore {
        bump,
        environment: moved,
        used: used.map(|u| (u.fingerprint, u.hash)),
        label: if bump {
            "changed"
        } else if relevant_changed {
            "unused"
        } else {
            "unchanged"
        },
    }
}

impl Intake {
    /// The rules; nothing on its way in yet.
    pub fn new(
        exclude: HashSet<String>,
        join_on_facts: bool,
        default_environment: String,
        absence: Absence,
    ) -> Intake {
        Intake {
            waiting_for_facts: HashSet::new(),
            facts_only: HashMap::new(),
            exclude,
            join_on_facts,
            default_environment,
            absence,
            absent: HashMap::new(),
        }
    }

    /// The environment of nodes that never gave one.
    pub fn default_environment(&self) -> &str {
        &self.default_environment
    }

    /// Is this certname excluded from scheduling?
    pub fn excluded(&self, certname: &Certname) -> bool {
        self.exclude.contains(certname.as_str())
    }

    /// Is this a signed node waiting for its first facts?
    pub fn is_waiting(&self, certname: &Certname) -> bool {
        self.waiting_for_facts.contains(certname)
    }

    /// How many signed nodes wait for their first facts.
    pub fn waiting(&self) -> usize {
        self.waiting_for_facts.len()
    }

    /// A certname with stored facts found at start-up but not in the queue.
    pub fn restore_facts_owner(&mut self, certname: Certname) {
        self.facts_only.insert(certname, String::new());
    }

    /// Forgets a certname (its node is removed).
    pub fn forget(&mut self, certname: &Certname) {
        self.waiting_for_facts.remove(certname);
        self.facts_only.remove(certname);
        self.absent.remove(certname);
    }

    /// An unknown certname's facts were stored.
    pub fn newcomer(&mut self, certname: Certname, environment: Option<String>) -> Newcomer {
        let env = environment.unwrap_or_else(|| self.default_environment.clone());
        if self.join_on_facts || self.waiting_for_facts.remove(&certname) {
            Newcomer::Join(env)
        } else {
            self.facts_only.insert(certname, env);
            Newcomer::Wait
        }
    }

    /// What the CA's listing of signed and revoked certnames changes.
    /// Revoked nodes go at once. A known node the listing lacks goes only
    /// once it has been absent from [`Absence::listings`] plausible
    /// listings in a row; an implausible listing (empty while nodes are
    /// known, or lacking more than [`Absence::max_share`] of them) removes
    /// nobody. Signed nodes join once they have facts, and wait for them
    /// otherwise.
    pub fn ca(&mut self, signed: &[String], revoked: &[String], nodes: &Nodes) -> CaPlan {
        let listed: HashSet<Certname> = signed
            .iter()
            .filter_map(|n| Certname::parse(n).ok())
            .collect();
        let signed: HashSet<Certname> = listed
            .iter()
            .filter(|c| !self.exclude.contains(c.as_str()))
            .cloned()
            .collect();
        let mut plan = CaPlan::default();
        let mut removed = HashSet::new();
        for name in revoked {
            if let Ok(c) = Certname::parse(name) {
                self.forget(&c);
                if nodes.contains(&c) && removed.insert(c.clone()) {
                    plan.remove.push(c);
                }
            }
        }
        // known nodes excluded since they joined (the list changed across
        // a restart) go at once: the operator said so
        let mut excluded: Vec<Certname> = nodes
            .certnames()
            .filter(|c| self.exclude.contains(c.as_str()) && !removed.contains(*c))
            .cloned()
            .collect();
        excluded.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        for c in excluded {
            self.forget(&c);
            removed.insert(c.clone());
            plan.remove.push(c);
        }
        let mut missing: Vec<Certname> = nodes
            .certnames()
            .filter(|c| !signed.contains(*c) && !removed.contains(*c))
            .cloned()
            .collect();
        missing.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        plan.absent = missing.len();
        let known = nodes.count();
        let allowed = ((known as f64 * self.absence.max_share).floor() as usize).max(1);
        plan.implausible = (listed.is_empty() && known > 0) || missing.len() > allowed;
        if plan.implausible {
            tracing::warn!(
                "CA listing ignored: it lacks {} of {known} known nodes ({} signed listed); nobody removed",
                missing.len(),
                listed.len()
            );
        }
        self.absent.retain(|c, _| !signed.contains(c));
        if !plan.implausible {
            for c in missing {
                let seen = self.absent.entry(c.clone()).or_insert(0);
                *seen += 1;
                if *seen >= self.absence.listings {
                    self.forget(&c);
                    removed.insert(c.clone());
                    plan.remove.push(c);
                }
            }
        }
        if !plan.implausible {
            self.waiting_for_facts.retain(|c| signed.contains(c));
        }
        let mut signed: Vec<Certname> = signed.into_iter().collect();
        signed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        for c in signed {
            let known = nodes.contains(&c) && !removed.contains(&c);
            if known || self.waiting_for_facts.contains(&c) {
                continue;
            }
            match self.facts_only.remove(&c) {
                Some(env) if env.is_empty() => plan.add.push((c, self.default_environment.clone())),
                Some(env) => plan.add.push((c, env)),
                None => {
                    self.waiting_for_facts.insert(c);
                }
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::NodeId;
    use crate::daemon::driver::nodes::NodeInfo;

    fn c(name: &str) -> Certname {
        Certname::parse(name).expect("certname")
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn known(names: &[&str]) -> Nodes {
        let mut nodes = Nodes::default();
        for (i, n) in names.iter().enumerate() {
            nodes.insert(NodeId::from_index(i as u32), NodeInfo::new(c(n)));
        }
        nodes
    }

    /// Intake rules: excluded certnames, join on facts, absence rule.
    fn rules(exclude: &[&str], join_on_facts: bool, listings: u32, max_share: f64) -> Intake {
        Intake::new(
            exclude.iter().map(|e| e.to_string()).collect(),
            join_on_facts,
            "production".into(),
            Absence {
                listings,
                max_share,
            },
        )
    }

    fn intake() -> Intake {
        rules(&["pcq.example.com"], false, 1, 1.0)
    }

    /// Twenty known nodes, n00 .. n19, and their names.
    fn fleet() -> (Vec<String>, Nodes) {
        let all: Vec<String> = (0..20).map(|n| format!("n{n:02}.example.com")).collect();
        let names: Vec<&str> = all.iter().map(String::as_str).collect();
        let nodes = known(&names);
        (all, nodes)
    }

    #[test]
    fn a_signed_node_waits_for_facts_and_one_with_facts_joins() {
        let mut i = intake();
        assert_eq!(
            i.newcomer(c("b.example.com"), Some("staging".into())),
            Newcomer::Wait,
            "facts without a signed certificate are kept"
        );
        let plan = i.ca(
            &names(&["a.example.com", "b.example.com", "pcq.example.com"]),
            &[],
            &known(&[]),
        );
        assert_eq!(plan.add, vec![(c("b.example.com"), "staging".to_string())]);
        assert!(plan.remove.is_empty());
        assert!(i.is_waiting(&c("a.example.com")));
        assert!(!i.is_waiting(&c("pcq.example.com")), "excluded");
        assert_eq!(i.waiting(), 1);
        assert_eq!(
            i.newcomer(c("a.example.com"), None),
            Newcomer::Join("production".into()),
            "its first facts let a waiting node in"
        );
        assert_eq!(i.waiting(), 0);
    }

    #[test]
    fn revoked_and_unlisted_nodes_go_and_stop_waiting() {
        let mut i = intake();
        let nodes = known(&["a.example.com", "b.example.com", "c.example.com"]);
        i.ca(&names(&["w.example.com"]), &[], &known(&[]));
        assert!(i.is_waiting(&c("w.example.com")));
        let plan = i.ca(
            &names(&["a.example.com", "c.example.com"]),
            &names(&["c.example.com", "w.example.com", "../bad"]),
            &nodes,
        );
        assert_eq!(plan.remove, vec![c("c.example.com"), c("b.example.com")]);
        assert!(
            !i.is_waiting(&c("w.example.com")),
            "revoked while waiting for facts"
        );
        assert!(
            i.is_waiting(&c("c.example.com")),
            "revoked and listed as signed again: it starts over"
        );
    }

    #[test]
    fn restored_facts_owners_join_in_the_default_environment() {
        let mut i = intake();
        i.restore_facts_owner(c("old.example.com"));
        let plan = i.ca(&names(&["old.example.com"]), &[], &known(&[]));
        assert_eq!(
            plan.add,
            vec![(c("old.example.com"), "production".to_string())]
        );
    }

    #[test]
    fn join_on_facts_lets_any_uploader_in() {
        let mut i = rules(&[], true, 3, 0.1);
        assert_eq!(
            i.newcomer(c("x.example.com"), Some("dev".into())),
            Newcomer::Join("dev".into())
        );
    }

    #[test]
    fn an_unlisted_node_leaves_after_enough_plausible_listings_in_a_row() {
        let mut i = rules(&[], false, 3, 0.1);
        let (all, nodes) = fleet();
        let without = |gone: usize| all[gone..].to_vec();
        // two listings without n00, then one with it: the count starts over
        assert!(i.ca(&without(1), &[], &nodes).remove.is_empty());
        assert!(i.ca(&without(1), &[], &nodes).remove.is_empty());
        assert!(i.ca(&all, &[], &nodes).remove.is_empty());
        for _ in 0..2 {
            let plan = i.ca(&without(2), &[], &nodes);
            assert!(plan.remove.is_empty() && !plan.implausible);
            assert_eq!(plan.absent, 2, "10% of 20 may go at once");
        }
        let plan = i.ca(&without(2), &[], &nodes);
        assert_eq!(
            plan.remove,
            vec![c("n00.example.com"), c("n01.example.com")]
        );
    }

    #[test]
    fn an_implausible_listing_removes_nobody() {
        let mut i = rules(&[], false, 1, 0.1);
        let (all, nodes) = fleet();
        let mut listing = all.clone();
        listing.push("new.example.com".into());
        i.ca(&listing, &[], &nodes);
        assert!(i.is_waiting(&c("new.example.com")));
        let empty = i.ca(&[], &[], &nodes);
        assert!(empty.implausible && empty.remove.is_empty(), "{empty:?}");
        assert!(
            i.is_waiting(&c("new.example.com")),
            "an implausible listing keeps the nodes waiting for facts"
        );
        let half = i.ca(&all[10..], &[], &nodes);
        assert!(half.implausible && half.remove.is_empty(), "{half:?}");
        assert_eq!(half.absent, 10);
        let revoked = i.ca(&all[10..], &all[..1], &nodes);
        assert_eq!(
            revoked.remove,
            vec![c("n00.example.com")],
            "a revocation counts even in an implausible listing"
        );
        let small = rules(&[], false, 1, 0.1).ca(
            &names(&["a.example.com"]),
            &[],
            &known(&["a.example.com", "b.example.com"]),
        );
        assert_eq!(
            small.remove,
            vec![c("b.example.com")],
            "one node may always go, however small the fleet"
        );
        assert!(
            i.ca(&[], &[], &known(&[])).remove.is_empty(),
            "an empty listing with no node known is plausible and harmless"
        );
        let mut excluding = rules(&["n00.example.com"], false, 3, 0.1);
        let plan = excluding.ca(&all, &[], &nodes);
        assert_eq!(
            plan.remove,
            vec![c("n00.example.com")],
            "a known node excluded since it joined goes at once"
        );
        assert!(!plan.implausible);
    }

    fn used(fingerprint: u64, hash: u64) -> UsedHash {
        UsedHash {
            fingerprint,
            hash,
            facts: Default::default(),
        }
    }

    #[test]
    fn an_upload_is_stored_unless_nothing_changed() {
        let k = Known {
            facts_hash: Some("h1"),
            environment: "production",
            used: Some((7, 100)),
        };
        assert_eq!(
            before_store(Some(k), None, "h1", None),
            BeforeStore::Unchanged
        );
        assert_eq!(
            before_store(Some(k), Some("production"), "h1", Some(&used(7, 100))),
            BeforeStore::Unchanged
        );
        assert_eq!(
            before_store(Some(k), Some("staging"), "h1", None),
            BeforeStore::Store { baseline: false },
            "a new environment is a change"
        );
        assert_eq!(
            before_store(Some(k), None, "h2", Some(&used(7, 100))),
            BeforeStore::Store { baseline: false }
        );
        assert_eq!(
            before_store(Some(k), None, "h2", Some(&used(8, 100))),
            BeforeStore::Store { baseline: true },
            "a new used-facts set needs the old facts hashed with it"
        );
        assert_eq!(
            before_store(None, None, "h2", Some(&used(8, 100))),
            BeforeStore::Store { baseline: true }
        );
    }

    #[test]
    fn only_a_used_fact_or_the_environment_bumps() {
        let k = Known {
            facts_hash: Some("h1"),
            environment: "production",
            used: Some((7, 100)),
        };
        let unused = after_store(k, None, "h2", Some(&used(7, 100)), None);
        assert_eq!((unused.bump, unused.label), (false, "unused"));
        let changed = after_store(k, None, "h2", Some(&used(7, 101)), None);
        assert_eq!((changed.bump, changed.label), (true, "changed"));
        assert_eq!(changed.used, Some((7, 101)));
        let new_set_same_facts = after_store(k, None, "h2", Some(&used(8, 5)), Some(5));
        assert!(
            !new_set_same_facts.bump,
            "a set change alone compares with the baseline"
        );
        let new_set_no_baseline = after_store(k, None, "h2", Some(&used(8, 5)), None);
        assert!(new_set_no_baseline.bump, "no baseline: widen, it counts");
        let unknown_set = after_store(k, None, "h2", None, None);
        assert_eq!((unknown_set.bump, unknown_set.used), (true, None));
        let moved = after_store(k, Some("staging"), "h1", None, None);
        assert_eq!(moved.environment.as_deref(), Some("staging"));
        assert!(moved.bump);
        let same = after_store(k, Some("production"), "h1", None, None);
        assert_eq!((same.bump, same.label), (false, "unchanged"));
    }
}
