//! The driver's directory of nodes: which certname is which core node, and
//! what the driver knows of each besides the core's state.
//!
//! The core holds no names (a node is a small id and a state byte); the
//! driver keeps everything else here: the catalog and facts hashes, the
//! last error, what the node's catalog depends on and exports. One table,
//! indexed by the core's id, so the two cannot drift apart.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::{NodeId, Time};
use crate::daemon::analyze::collect::Resource;
use crate::daemon::analyze::NodeDeps;
use crate::daemon::catalog::Exported;
use crate::daemon::certname::Certname;

/// What the driver knows of a node besides the core's state.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node.
    pub certname: Certname,
    /// Canonical hash of its last good catalog.
    pub catalog_hash: Option<String>,
    /// When that catalog last changed.
    pub catalog_changed_at: Option<Time>,
    /// Hash of its last facts without the ignored ones.
    pub facts_hash: Option<String>,
    /// The last compile error.
    pub last_error: Option<String>,
    /// Fingerprint of its used-facts set and the hash of its last upload
    /// under it.
    pub used: Option<(u64, u64)>,
    /// What its catalog depends on.
    pub deps: Option<Arc<NodeDeps>>,
    /// Its exported resources; with `exports_whole` false only type, title
    /// and parameters hash are known (restored from the store).
    pub exports: Vec<Exported>,
    /// See `exports`.
    pub exports_whole: bool,
    /// Its resources of collected types, (lower-case type, title).
    pub held: Vec<(String, String)>,
    /// The environment it last asked for (`?environment=` on a facts
    /// upload), when that differs from the one it compiles in: the node
    /// classifier decides, the request counts only where it names none.
    /// Not kept in the store (after a restart the node asks again).
    pub requested_environment: Option<String>,
}

impl NodeInfo {
    /// A node nothing is known of yet.
    pub fn new(certname: Certname) -> NodeInfo {
        NodeInfo {
            certname,
            catalog_hash: None,
            catalog_changed_at: None,
            facts_hash: None,
            last_error: None,
            used: None,
            deps: None,
            exports: Vec::new(),
            exports_whole: true,
            held: Vec::new(),
            requested_environment: None,
        }
    }

    /// Does this node collect `r` (or hold a resource `r` would clash
    /// with)? Without the whole resource, any collector of its type does.
    pub fn collects(&self, r: &Exported, whole: bool) -> bool {
        let kind = r.kind.to_lowercase();
        if self.held.iter().any(|(k, t)| *k == kind && *t == r.title) {
            return true;
        }
        let Some(deps) = &self.deps else {
            return false;
        };
        let resource = Resource {
            title: &r.title,
            tags: &r.tags,
            parameters: &r.parameters,
        };
        deps.collects
            .iter()
            .any(|(k, q)| *k == kind && (!whole || q.matches(&resource)))
    }

    /// A good catalog came in: its hash, and the time the catalog last
    /// changed (now, unless it did not); the last error is over.
    pub fn record_catalog(&mut self, hash: &str, changed: bool, t: Time) -> Time {
        let changed_at = match self.catalog_changed_at {
            Some(at) if !changed => at,
            _ => t,
        };
        self.catalog_hash = Some(hash.to_string());
        self.catalog_changed_at = Some(changed_at);
        self.last_error = None;
        changed_at
    }

    /// Replaces the node's exports and held resources with a new
    /// catalog's; returns the old exports and whether they were whole.
    pub fn replace_exports(
        &mut self,
        exported: Vec<Exported>,
        held: Vec<(String, String)>,
    ) -> (Vec<Exported>, bool) {
        self.held = held;
        (
            std::mem::replace(&mut self.exports, exported),
            std::mem::replace(&mut self.exports_whole, true),
        )
    }
}

/// Every node the core knows, by certname and by id.
#[derive(Default)]
pub struct Nodes {
    ids: HashMap<Certname, NodeId>,
    info: Vec<Option<NodeInfo>>,
}

impl Nodes {
    /// Records `info` as what is known of core node `id`.
    pub fn insert(&mut self, id: NodeId, info: NodeInfo) {
        self.ids.insert(info.certname.clone(), id);
        if self.info.len() <= id.index() {
            self.info.resize(id.index() + 1, None);
        }
        self.info[id.index()] = Some(info);
    }

    /// Forgets a node; its id, if it was known.
    pub fn remove(&mut self, certname: &Certname) -> Option<NodeId> {
        let id = self.ids.remove(certname)?;
        self.info[id.index()] = None;
        Some(id)
    }

    /// The core's id of a certname.
    pub fn id(&self, certname: &Certname) -> Option<NodeId> {
        self.ids.get(certname).copied()
    }

    /// Is this certname a known node?
    pub fn contains(&self, certname: &Certname) -> bool {
        self.ids.contains_key(certname)
    }

    /// What is known of a node.
    pub fn get(&self, id: NodeId) -> Option<&NodeInfo> {
        self.info.get(id.index()).and_then(Option::as_ref)
    }

    /// What is known of a node, to change.
    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut NodeInfo> {
        self.info.get_mut(id.index()).and_then(Option::as_mut)
    }

    /// Every known node's id.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.ids.values().copied()
    }

    /// How many nodes are known.
    pub fn count(&self) -> usize {
        self.ids.len()
    }

    /// Every known certname.
    pub fn certnames(&self) -> impl Iterator<Item = &Certname> + '_ {
        self.ids.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::analyze::Query;

    fn export(kind: &str, title: &str, tag: &str) -> Exported {
        Exported {
            kind: kind.to_string(),
            title: title.to_string(),
            tags: vec![tag.to_string()],
            parameters: serde_json::Map::new(),
            parameters_hash: String::new(),
        }
    }

    fn node(collects: Vec<(String, Query)>, held: Vec<(String, String)>) -> NodeInfo {
        let mut n = NodeInfo::new(Certname::parse("lb-01.example.com").expect("certname"));
        n.deps = Some(Arc::new(NodeDeps {
            collects,
            ..NodeDeps::default()
        }));
        n.held = held;
        n
    }

    #[test]
    fn collectors_are_found_by_type_and_query_or_by_a_clashing_title() {
        let by_tag = node(
            vec![(
                "file".to_string(),
                Query::Compare {
                    op: "==".to_string(),
                    attr: "tag".to_string(),
                    value: "pcq_backend".to_string(),
                },
            )],
            Vec::new(),
        );
        let backend = export("File", "/etc/haproxy/web-01", "pcq_backend");
        let other = export("File", "/etc/motd", "motd");
        assert!(by_tag.collects(&backend, true));
        assert!(!by_tag.collects(&other, true), "the query is evaluated");
        assert!(
            by_tag.collects(&other, false),
            "without the whole resource (restored), any collector of its type"
        );
        assert!(!by_tag.collects(&export("Sshkey", "web-01", "pcq_backend"), true));

        let holder = node(
            Vec::new(),
            vec![("file".to_string(), "/etc/motd".to_string())],
        );
        assert!(holder.collects(&other, true), "same type and title");
        assert!(!holder.collects(&backend, true));
    }

    #[test]
    fn the_directory_maps_both_ways_and_forgets_whole_nodes() {
        let mut nodes = Nodes::default();
        let a = Certname::parse("a.example.com").expect("certname");
        let b = Certname::parse("b.example.com").expect("certname");
        nodes.insert(NodeId::from_index(3), NodeInfo::new(a.clone()));
        nodes.insert(NodeId::from_index(0), NodeInfo::new(b.clone()));
        assert_eq!(nodes.id(&a), Some(NodeId::from_index(3)));
        assert_eq!(
            nodes.get(NodeId::from_index(0)).map(|i| &i.certname),
            Some(&b)
        );
        assert!(nodes.get(NodeId::from_index(1)).is_none(), "a gap");
        assert_eq!(nodes.remove(&a), Some(NodeId::from_index(3)));
        assert!(nodes.get(NodeId::from_index(3)).is_none());
        assert!(!nodes.contains(&a));
        assert_eq!(nodes.remove(&a), None);
        assert_eq!(nodes.ids().collect::<Vec<_>>(), vec![NodeId::from_index(0)]);
    }
}
