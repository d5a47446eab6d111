//! Rebuilding the queue from the store at start-up.
//!
//! The store holds state, not policy: each node's row is the core's
//! [`crate::core::NodeView`] plus the driver's hashes. The core rebuilds
//! lane order from the stored times; a node that was compiling when the
//! daemon stopped (or was killed) comes back at the front of the queue,
//! and its row is written again at once. Rows that cannot be trusted (an
//! invalid certname, a second row for a name) are skipped with a log line,
//! and the rebuilt core must pass its own audit.
//!
//! The disk and the database must agree too: each catalog file is checked
//! against the hash its row records ([`disagreeing`], in the background
//! after start). A file is never served under a hash that is not its own.
//! One that holds another whole catalog of the node (a crash between the
//! file's rename and the row's commit leaves the newer one; a rename lost
//! with the power, the older) is a catalog Puppet Server compiled for it:
//! the driver records its hash, so the node keeps a catalog, and compiles
//! the node again. One that is missing, torn or another node's is
//! forgotten, and the node compiles again. With the PostgreSQL store a
//! catalog and its hash are committed together, so only a row missing or
//! under another hash (a database migrated from before catalogs were kept
//! in it) disagrees: its hash is forgotten.

use crate::core::{Core, CoreError, NodeId, NodeState};
use crate::daemon::catalog::{self, CatalogFiles, Export, Exported};
use crate::daemon::certname::Certname;
use crate::daemon::last_good::{LastGood, ReadError};
use crate::daemon::store::StoredNode;

use super::nodes::{NodeInfo, Nodes};

/// What a catalog file holds when it is not the catalog its row names.
#[derive(Debug)]
pub enum Found {
    /// Another whole catalog of the node: its hash and exports.
    Another {
        /// Its canonical hash.
        hash: String,
        /// Its exported resources.
        exports: Vec<Export>,
    },
    /// Nothing usable, and why.
    Unusable(String),
}

/// A node whose catalog file disagrees with its row.
#[derive(Debug)]
pub struct Disagreement {
    /// The node.
    pub certname: Certname,
    /// The hash its row records.
    pub recorded: String,
    /// What the file holds instead.
    pub found: Found,
}

/// The nodes of `recorded` (certname, recorded catalog hash) whose stored
/// catalog is not that catalog, and what is stored instead. Blocking.
pub fn disagreeing(
    catalogs: &LastGood,
    recorded: Vec<(Certname, String)>,
) -> Result<Vec<Disagreement>, ReadError> {
    match catalogs {
        LastGood::Files(files) => Ok(disagreeing_files(files, recorded)),
        LastGood::Database(rows) => {
            let stored = tokio::runtime::Handle::current().block_on(rows.hashes())?;
            let stored: std::collections::HashMap<String, String> = stored.into_iter().collect();
            Ok(recorded
                .into_iter()
                .filter(|(certname, hash)| stored.get(certname.as_str()) != Some(hash))
                .map(|(certname, hash)| Disagreement {
                    found: Found::Unusable(match stored.get(certname.as_str()) {
                        Some(other) => format!("the database holds catalog {other} for it"),
                        None => "the database holds no catalog for it".to_string(),
                    }),
                    certname,
                    recorded: hash,
                })
                .collect())
        }
    }
}

/// [`disagreeing`] over catalog files: each read and hashed.
fn disagreeing_files(
    catalogs: &CatalogFiles,
    recorded: Vec<(Certname, String)>,
) -> Vec<Disagreement> {
    let mut out = Vec::new();
    for (certname, hash) in recorded {
        let found = match catalogs.read(&certname) {
            Ok(Some(bytes)) => match catalog::read(&bytes) {
                Ok(c) if c.hash == hash => continue,
                Ok(c) if c.name != certname.as_str() => {
                    Found::Unusable(format!("the file holds the catalog of {:?}", c.name))
                }
                Ok(c) => Found::Another {
                    hash: c.hash,
                    exports: c.exports,
                },
                Err(e) => Found::Unusable(format!("the file is not a catalog ({e})")),
            },
            Ok(None) => Found::Unusable("the file is missing".to_string()),
            Err(e) => Found::Unusable(format!("the file cannot be read ({e})")),
        };
        out.push(Disagreement {
            certname,
            recorded: hash,
            found,
        });
    }
    out
}

/// Why the queue could not be rebuilt from the store.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The core refused a master or a stored node.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The stored nodes do not make a consistent queue.
    #[error("the queue rebuilt from the store is inconsistent: {0}")]
    Inconsistent(String),
}

/// The rebuilt directory, the nodes whose rows must be written again, and
/// the certnames whose stored facts belong to no node yet.
pub struct Restored {
    /// Every node, with what the store knew of it.
    pub nodes: Nodes,
    /// Compiles that were running: their rows change now.
    pub requeued: Vec<NodeId>,
    /// Certnames with facts but no node.
    pub facts_only: Vec<Certname>,
}

/// Adds every stored node to `core` exactly once, with its exports, and
/// finds the facts that belong to no node.
pub fn restore(
    core: &mut Core,
    stored: Vec<StoredNode>,
    stored_exports: Vec<(String, Export)>,
    facts_owners: Vec<String>,
) -> Result<Restored, CoreError> {
    let mut nodes = Nodes::default();
    let mut requeued = Vec::new();
    for node in stored {
        let Ok(certname) = Certname::parse(&node.certname) else {
            tracing::warn!(
                "store: skipping node with invalid certname {:?}",
                node.certname
            );
            continue;
        };
        if nodes.contains(&certname) {
            continue;
        }
        let id = core.restore_node(&node.view)?;
        nodes.insert(
            id,
            NodeInfo {
                catalog_hash: node.catalog_hash,
                catalog_changed_at: node.catalog_changed_at,
                facts_hash: node.facts_hash,
                last_error: node.last_error,
                ..NodeInfo::new(certname)
            },
        );
        if matches!(node.view.state, NodeState::Compiling(_)) {
            requeued.push(id);
        }
    }
    for (certname, e) in stored_exports {
        let id = Certname::parse(&certname).ok().and_then(|c| nodes.id(&c));
        if let Some(info) = id.and_then(|id| nodes.get_mut(id)) {
            info.exports_whole = false;
            info.exports.push(Exported {
                kind: e.kind,
                title: e.title,
                tags: Vec::new(),
                parameters: serde_json::Map::new(),
                parameters_hash: e.parameters_hash,
            });
        }
    }
    let facts_only = facts_owners
        .iter()
        .filter_map(|owner| Certname::parse(owner).ok())
        .filter(|c| !nodes.contains(c))
        .collect();
    Ok(Restored {
        nodes,
        requeued,
        facts_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CoreConfig, Lane, NodeView, Pending, Reason, Time};

    fn row(certname: &str, state: NodeState) -> StoredNode {
        StoredNode {
            certname: certname.into(),
            view: NodeView {
                id: NodeId::from_index(0),
                state,
                environment: "production".into(),
                reason: Reason::New,
                since: Time::from_micros(5),
                pending: Pending::None,
                pending_since: Time::from_micros(5),
                last_compile: None,
                failures: 0,
            },
            catalog_hash: Some("h".into()),
            catalog_changed_at: None,
            facts_hash: None,
            last_error: None,
        }
    }

    #[test]
    fn catalog_files_that_disagree_with_their_hash_are_found() {
        let dir = tempfile::tempdir().expect("tmp");
        let catalogs = CatalogFiles::open(&dir.path().join("catalogs")).expect("dir");
        let name = |n: &str| Certname::parse(n).expect("certname");
        let json = |n: &str, content: &str| {
            format!(
                r#"{{"name":"{n}","version":1,"classes":[],"edges":[],"resources":[{{"type":"File","title":"/x","exported":false,"tags":[],"parameters":{{"content":"{content}"}}}}]}}"#
            )
        };
        let hash_of = |text: &str| catalog::read(text.as_bytes()).expect("catalog").hash;
        let mut recorded = Vec::new();
        for (n, content) in [("good", "a"), ("torn", "b"), ("older", "c"), ("lost", "d")] {
            let text = json(n, content);
            recorded.push((name(n), hash_of(&text)));
            if n != "lost" {
                let written = match n {
                    "torn" => text[..text.len() / 2].to_string(),
                    "older" => json(n, "an older content"),
                    _ => text,
                };
                catalogs
                    .stage(&name(n), written.as_bytes())
                    .expect("stage")
                    .commit()
                    .expect("commit");
            }
        }
        let found: Vec<String> = disagreeing_files(&catalogs, recorded)
            .into_iter()
            .map(|d| match d.found {
                Found::Another { hash, .. } => {
                    assert_eq!(hash, hash_of(&json("older", "an older content")));
                    format!("{}: another catalog", d.certname)
                }
                Found::Unusable(why) => format!("{}: {why}", d.certname),
            })
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].starts_with("torn: the file is not a catalog"),
            "{found:?}"
        );
        assert_eq!(found[1], "older: another catalog");
        assert_eq!(found[2], "lost: the file is missing");
    }

    #[test]
    fn every_node_once_bad_rows_skipped_running_compiles_requeued() {
        let mut core = Core::new(CoreConfig::default(), 1).expect("core");
        let master = core
            .add_master(
                Time::from_micros(1),
                crate::core::MasterSpec::new(2, crate::core::GateConfig::default()),
            )
            .expect("master");
        let stored = vec![
            row("a.example.com", NodeState::Queued(Lane::Cycle)),
            row("a.example.com", NodeState::Queued(Lane::Urgent)),
            row("../etc/passwd", NodeState::Queued(Lane::Cycle)),
            row("b.example.com", NodeState::Compiling(master)),
        ];
        let exports = vec![(
            "b.example.com".to_string(),
            Export {
                kind: "File".into(),
                title: "/x".into(),
                parameters_hash: "p".into(),
            },
        )];
        let owners = vec!["a.example.com".into(), "new.example.com".into()];
        let r = restore(&mut core, stored, exports, owners).expect("restored");
        assert_eq!(core.node_count(), 2);
        assert_eq!(r.requeued.len(), 1);
        let b = r
            .nodes
            .id(&Certname::parse("b.example.com").expect("certname"))
            .expect("b");
        assert_eq!(r.requeued, vec![b]);
        let info = r.nodes.get(b).expect("info");
        assert_eq!(info.exports.len(), 1);
        assert!(!info.exports_whole, "restored exports are not whole");
        assert_eq!(
            r.facts_only,
            vec![Certname::parse("new.example.com").expect("certname")]
        );
        core.audit().expect("consistent");
    }
}
