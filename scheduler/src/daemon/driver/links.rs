//! Links between nodes' catalogs: what a catalog depends on, and which
//! nodes collect the resources another exports.
//!
//! When a compile changes a node's exported resources, the nodes whose
//! collectors match an old or new version of a changed resource (or that
//! hold a resource of the same type and title, which the collected one
//! would clash with) are bumped `exports.bump_delay` later, once PuppetDB
//! has stored the new catalog. Who collects is known only once the
//! environment's code is analysed and every node's links are read back
//! from its catalog file; a change that happens before waits here,
//! unrouted, until then. The decisions are plain functions over
//! [`Nodes`]; the driver carries them out.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::core::{NodeId, Time};
use crate::daemon::analyze::{Analysis, NodeDeps};
use crate::daemon::catalog::{self, Exported};
use crate::daemon::certname::Certname;
use crate::daemon::last_good::LastGood;

use super::nodes::Nodes;

/// What a catalog says about its node's links to others.
#[derive(Default)]
pub struct Links {
    /// What it depends on (`None`: no analysis of its environment yet).
    pub deps: Option<Arc<NodeDeps>>,
    /// Its exported resources.
    pub exported: Vec<Exported>,
    /// Its other resources of types some collector collects: (lower-case
    /// type, title).
    pub held: Vec<(String, String)>,
}

impl Links {
    /// Takes a compiled catalog's links (its exports and titles are moved
    /// out); without an analysis only the exports are known.
    pub fn of(compiled: &mut catalog::Compiled, analysis: Option<&Analysis>) -> Links {
        let Some(a) = analysis else {
            return Links {
                exported: std::mem::take(&mut compiled.exported),
                ..Links::default()
            };
        };
        let collected = a.collected_types();
        Links {
            deps: Some(a.for_compiled(compiled)),
            exported: std::mem::take(&mut compiled.exported),
            held: std::mem::take(&mut compiled.titles)
                .into_iter()
                .map(|(k, t)| (k.to_lowercase(), t))
                .filter(|(k, _)| collected.contains(k))
                .collect(),
        }
    }
}

/// A node's links, read back from its catalog file.
pub struct Reloaded {
    /// The node.
    pub certname: Certname,
    /// The catalog they were read from (stale if the node's differs now).
    pub catalog_hash: String,
    /// Its links.
    pub links: Links,
}

/// Reads the links of `nodes` (certname, catalog hash) back from their
/// catalog files, handing them to `emit` in batches of up to 1,000; stops
/// when `emit` says no more. Returns what is left for the last batch.
/// Blocking: file reads and JSON parsing.
pub fn reload(
    catalogs: &LastGood,
    analysis: &Analysis,
    nodes: Vec<(Certname, String)>,
    mut emit: impl FnMut(Vec<Reloaded>) -> bool,
) -> Option<Vec<Reloaded>> {
    let mut batch = Vec::new();
    for chunk in nodes.chunks(1000) {
        let names: Vec<Certname> = chunk.iter().map(|(c, _)| c.clone()).collect();
        let hashes: HashMap<&Certname, &String> = chunk.iter().map(|(c, h)| (c, h)).collect();
        for (certname, bytes) in catalogs.read_many_blocking(&names) {
            let Ok(mut compiled) = catalog::read(&bytes) else {
                continue;
            };
            let Some(&hash) = hashes.get(&certname) else {
                continue;
            };
            if &compiled.hash != hash {
                continue; // replaced meanwhile; its compile set its links
            }
            let links = Links::of(&mut compiled, Some(analysis));
            batch.push(Reloaded {
                certname,
                catalog_hash: hash.clone(),
                links,
            });
        }
        if batch.len() >= 1000 && !emit(std::mem::take(&mut batch)) {
            return None;
        }
    }
    Some(batch)
}

/// The exports that differ between a node's old and new catalog, each with
/// whether the whole resource is known (an old export restored from the
/// store has only its type, title and parameters hash).
pub fn changed_exports(
    old: &[Exported],
    old_whole: bool,
    new: &[Exported],
) -> Vec<(Exported, bool)> {
    let key = |e: &Exported| (e.kind.clone(), e.title.clone(), e.parameters_hash.clone());
    let old_keys: HashSet<_> = old.iter().map(key).collect();
    let new_keys: HashSet<_> = new.iter().map(key).collect();
    old.iter()
        .filter(|e| !new_keys.contains(&key(e)))
        .map(|e| (e.clone(), old_whole))
        .chain(
            new.iter()
                .filter(|e| !old_keys.contains(&key(e)))
                .map(|e| (e.clone(), true)),
        )
        .collect()
}

/// The nodes, other than `exporter`, that collect one of `changed` (or
/// hold a resource of the same type and title).
pub fn collectors(nodes: &Nodes, exporter: NodeId, changed: &[(Exported, bool)]) -> Vec<NodeId> {
    nodes
        .ids()
        .filter(|id| *id != exporter)
        .filter(|id| {
            nodes
                .get(*id)
                .is_some_and(|i| changed.iter().any(|(r, whole)| i.collects(r, *whole)))
        })
        .collect()
}

/// Export changes on their way to the collectors.
#[derive(Default)]
pub struct Routing {
    /// Bumps of collectors, due at their time, in time order...
    delayed: BTreeSet<(Time, NodeId)>,
    /// ...and each waiting collector's time: a fan-out to thousands of
    /// collectors stays linear, however many are already waiting.
    due_at: HashMap<NodeId, Time>,
    /// Nodes whose exports changed while their environment's collectors
    /// were not known (analysis pending, or its reload running).
    pub unrouted: HashSet<NodeId>,
    /// Environments whose nodes' links are being read back.
    pub reloading: HashSet<String>,
}

impl Routing {
    /// Bumps `collectors` at `t + delay`; a node already waiting keeps its
    /// earlier time.
    pub fn schedule(&mut self, collectors: Vec<NodeId>, t: Time, delay: Duration) {
        let due = t.plus(delay);
        for id in collectors {
            if let std::collections::hash_map::Entry::Vacant(e) = self.due_at.entry(id) {
                e.insert(due);
                self.delayed.insert((due, id));
            }
        }
    }

    /// The collectors whose delay is over at `t`, taken out.
    pub fn due(&mut self, t: Time) -> Vec<NodeId> {
        let mut ready = Vec::new();
        while let Some(&(due, id)) = self.delayed.first() {
            if due > t {
                break;
            }
            self.delayed.pop_first();
            self.due_at.remove(&id);
            ready.push(id);
        }
        ready
    }

    /// When the next delayed bump is due.
    pub fn next_due(&self) -> Option<Time> {
        self.delayed.first().map(|(due, _)| *due)
    }

    /// Forgets a removed node.
    pub fn forget(&mut self, id: NodeId) {
        if let Some(due) = self.due_at.remove(&id) {
            self.delayed.remove(&(due, id));
        }
        self.unrouted.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::analyze::Query;
    use crate::daemon::driver::nodes::NodeInfo;

    fn export(kind: &str, title: &str, parameters_hash: &str) -> Exported {
        Exported {
            kind: kind.to_string(),
            title: title.to_string(),
            tags: vec!["pcq_backend".to_string()],
            parameters: serde_json::Map::new(),
            parameters_hash: parameters_hash.to_string(),
        }
    }

    fn id(i: u32) -> NodeId {
        NodeId::from_index(i)
    }

    #[test]
    fn changed_exports_are_the_old_and_new_versions_of_what_differs() {
        let old = vec![export("File", "/a", "1"), export("File", "/b", "1")];
        let new = vec![export("File", "/a", "1"), export("File", "/b", "2")];
        let changed = changed_exports(&old, false, &new);
        let seen: Vec<(&str, &str, bool)> = changed
            .iter()
            .map(|(e, whole)| (e.title.as_str(), e.parameters_hash.as_str(), *whole))
            .collect();
        assert_eq!(seen, vec![("/b", "1", false), ("/b", "2", true)]);
        assert!(changed_exports(&new, true, &new).is_empty());
        let gone = changed_exports(&old, true, &[]);
        assert_eq!(gone.len(), 2, "removed exports are changes too");
    }

    #[test]
    fn collectors_are_the_other_nodes_that_match() {
        let mut nodes = Nodes::default();
        let query = Query::Compare {
            op: "==".to_string(),
            attr: "tag".to_string(),
            value: "pcq_backend".to_string(),
        };
        for (i, name, collects) in [
            (0, "web-01.example.com", true),
            (1, "lb-01.example.com", true),
            (2, "db-01.example.com", false),
        ] {
            let mut info = NodeInfo::new(Certname::parse(name).expect("certname"));
            if collects {
                info.deps = Some(Arc::new(NodeDeps {
                    collects: vec![("file".to_string(), query.clone())],
                    ..NodeDeps::default()
                }));
            }
            nodes.insert(id(i), info);
        }
        let changed = vec![(export("File", "/etc/haproxy/web-01", "1"), true)];
        assert_eq!(
            collectors(&nodes, id(0), &changed),
            vec![id(1)],
            "not the exporter itself, not a node without a matching collector"
        );
    }

    #[test]
    fn delayed_bumps_come_due_once_and_keep_the_earliest_time() {
        let mut r = Routing::default();
        let t = Time::from_micros(1_000_000);
        let delay = Duration::from_secs(2);
        r.schedule(vec![id(1), id(2)], t, delay);
        r.schedule(vec![id(2)], t.plus(Duration::from_secs(10)), delay);
        assert_eq!(r.next_due(), Some(t.plus(delay)));
        assert!(r.due(t.plus(Duration::from_secs(1))).is_empty());
        r.forget(id(1));
        assert_eq!(r.due(t.plus(delay)), vec![id(2)]);
        assert!(r.due(t.plus(Duration::from_secs(60))).is_empty());
        assert_eq!(r.next_due(), None);
    }
}
