//! The embedded store: SQLite in WAL mode under the state directory.
//!
//! WAL with `synchronous = FULL` (the default, `[store] synchronous`)
//! keeps every acknowledged commit through power loss; `NORMAL` only
//! through the process being killed. A batch is one transaction, so a crash
//! leaves either all of a batch or none of it; group commit (see
//! [`super::StoreHandle`]) shares one fsync among many uploads.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::interface::{Store, StoreError, StoredNode, Write};
use super::row::{micros, pending_text, state_text, NodeRow, NODE_COLUMNS};
use crate::daemon::catalog::Export;
use crate::daemon::config::Synchronous;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    certname           TEXT PRIMARY KEY,
    environment        TEXT NOT NULL,
    state              TEXT NOT NULL,
    reason             TEXT NOT NULL,
    since_us           INTEGER NOT NULL,
    pending            TEXT NOT NULL,
    pending_since_us   INTEGER NOT NULL,
    last_compile_us    INTEGER,
    failures           INTEGER NOT NULL,
    catalog_hash       TEXT,
    catalog_changed_us INTEGER,
    facts_hash         TEXT,
    last_error         TEXT
);
CREATE TABLE IF NOT EXISTS facts (
    certname   TEXT PRIMARY KEY,
    values_json BLOB NOT NULL,
    updated_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS exports (
    certname        TEXT NOT NULL,
    type            TEXT NOT NULL,
    title           TEXT NOT NULL,
    parameters_hash TEXT NOT NULL,
    PRIMARY KEY (certname, type, title)
);
CREATE TABLE IF NOT EXISTS baselines (
    environment TEXT PRIMARY KEY,
    snapshot    BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', '1');
";

/// The SQLite store.
pub struct SqliteStore {
    db: Connection,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

impl SqliteStore {
    /// Opens (creating) `state.db` in `dir` with the durable default; the
    /// file is private (0600).
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(dir, Synchronous::Full)
    }

    /// Opens (creating) `state.db` in `dir`, committing as `synchronous`
    /// says.
    pub fn open_with(dir: &Path, synchronous: Synchronous) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Database(format!("{}: {e}", dir.display())))?;
        let path = dir.join("state.db");
        let db = Connection::open(&path).map_err(db_err)?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        let level = match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        db.pragma_update(None, "synchronous", level)
            .map_err(db_err)?;
        db.pragma_update(None, "foreign_keys", "OFF")
            .map_err(db_err)?;
        db.execute_batch(SCHEMA).map_err(db_err)?;
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.join(format!("state.db{suffix}"));
            if file.exists() {
                let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
            }
        }
        Ok(SqliteStore { db })
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Vec<StoredNode>, StoreError> {
        let mut stmt = self
            .db
            .prepare(&format!(
                "SELECT {NODE_COLUMNS} FROM nodes ORDER BY certname"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(NodeRow {
                    certname: r.get(0)?,
                    environment: r.get(1)?,
                    state: r.get(2)?,
                    reason: r.get(3)?,
                    since_us: r.get(4)?,
                    pending: r.get(5)?,
                    pending_since_us: r.get(6)?,
                    last_compile_us: r.get(7)?,
                    failures: r.get(8)?,
                    catalog_hash: r.get(9)?,
                    catalog_changed_us: r.get(10)?,
                    facts_hash: r.get(11)?,
                    last_error: r.get(12)?,
                })
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(db_err)?.decode()?);
        }
        Ok(out)
    }

    fn write(&mut self, batch: &[Write]) -> Result<(), StoreError> {
        let tx = self.db.transaction().map_err(db_err)?;
        for w in batch {
            match w {
                Write::Node { certname, view } => {
                    tx.prepare_cached(
                        "INSERT INTO nodes (certname, environment, state, reason, since_us, pending,
                                            pending_since_us, last_compile_us, failures)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                         ON CONFLICT (certname) DO UPDATE SET
                            environment = excluded.environment, state = excluded.state,
                            reason = excluded.reason, since_us = excluded.since_us,
                            pending = excluded.pending, pending_since_us = excluded.pending_since_us,
                            last_compile_us = excluded.last_compile_us, failures = excluded.failures",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            certname,
                            view.environment,
                            state_text(&view.state),
                            view.reason.name(),
                            micros(view.since),
                            pending_text(view.pending),
                            micros(view.pending_since),
                            view.last_compile.map(micros),
                            i64::from(view.failures),
                        ])
                    })
                    .map_err(db_err)?;
                }
                Write::Remove { certname } => {
                    for table in ["nodes", "facts", "exports"] {
                        tx.execute(
                            &format!("DELETE FROM {table} WHERE certname = ?1"),
                            [certname],
                        )
                        .map_err(db_err)?;
                    }
                }
                Write::Facts {
                    certname,
                    values,
                    hash,
                    at,
                } => {
                    tx.prepare_cached(
                        "INSERT INTO facts (certname, values_json, updated_us) VALUES (?1, ?2, ?3)
                         ON CONFLICT (certname) DO UPDATE SET values_json = excluded.values_json,
                            updated_us = excluded.updated_us",
                    )
                    .and_then(|mut s| s.execute(params![certname, values, micros(*at)]))
                    .map_err(db_err)?;
                    tx.prepare_cached("UPDATE nodes SET facts_hash = ?2 WHERE certname = ?1")
                        .and_then(|mut s| s.execute(params![certname, hash]))
                        .map_err(db_err)?;
                }
                Write::FactsHash { certname, hash } => {
                    tx.prepare_cached("UPDATE nodes SET facts_hash = ?2 WHERE certname = ?1")
                        .and_then(|mut s| s.execute(params![certname, hash]))
                        .map_err(db_err)?;
                }
                Write::Catalog {
                    certname,
                    hash,
                    changed_at,
                    exports,
                    // catalogs beside SQLite are files (`LastGood::Files`)
                    body: _,
                } => {
                    tx.prepare_cached(
                        "UPDATE nodes SET catalog_hash = ?2, catalog_changed_us = ?3, last_error = NULL
                         WHERE certname = ?1",
                    )
                    .and_then(|mut s| s.execute(params![certname, hash, micros(*changed_at)]))
                    .map_err(db_err)?;
                    tx.execute("DELETE FROM exports WHERE certname = ?1", [certname])
                        .map_err(db_err)?;
                    for e in exports {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO exports (certname, type, title, parameters_hash)
                             VALUES (?1, ?2, ?3, ?4)",
                        )
                        .and_then(|mut s| s.execute(params![certname, e.kind, e.title, e.parameters_hash]))
                        .map_err(db_err)?;
                    }
                }
                Write::Error { certname, error } => {
                    tx.prepare_cached("UPDATE nodes SET last_error = ?2 WHERE certname = ?1")
                        .and_then(|mut s| s.execute(params![certname, error]))
                        .map_err(db_err)?;
                }
                Write::CatalogLost { certname } => {
                    tx.prepare_cached("UPDATE nodes SET catalog_hash = NULL WHERE certname = ?1")
                        .and_then(|mut s| s.execute(params![certname]))
                        .map_err(db_err)?;
                }
                Write::Baseline {
                    environment,
                    snapshot: Some(snapshot),
                } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO baselines (environment, snapshot) VALUES (?1, ?2)",
                        params![environment, snapshot],
                    )
                    .map_err(db_err)?;
                }
                // (no standby hands requests to a pcq on SQLite)
                Write::Answer { .. } => {}
                Write::Baseline {
                    environment,
                    snapshot: None,
                } => {
                    tx.execute(
                        "DELETE FROM baselines WHERE environment = ?1",
                        [environment],
                    )
                    .map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)
    }

    fn facts(&mut self, certname: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .prepare_cached("SELECT values_json FROM facts WHERE certname = ?1")
            .and_then(|mut s| {
                s.query_row([certname], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
            })
            .map_err(db_err)
    }

    fn facts_owners(&mut self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .db
            .prepare("SELECT certname FROM facts ORDER BY certname")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    fn baselines(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .db
            .prepare("SELECT environment, snapshot FROM baselines ORDER BY environment")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    fn exports(&mut self) -> Result<Vec<(String, Export)>, StoreError> {
        let mut stmt = self
            .db
            .prepare("SELECT certname, type, title, parameters_hash FROM exports ORDER BY 1, 2, 3")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Export {
                        kind: r.get(1)?,
                        title: r.get(2)?,
                        parameters_hash: r.get(3)?,
                    },
                ))
            })
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{
        BumpReason, Lane, MasterId, NodeId, NodeState, NodeView, Pending, Reason, Time,
    };

    fn view(state: NodeState, since: u64) -> NodeView {
        NodeView {
            id: NodeId::from_index(3),
            state,
            environment: "production".into(),
            reason: Reason::Facts,
            since: Time::from_secs(since),
            pending: Pending::Urgent(BumpReason::Exports),
            pending_since: Time::from_secs(2),
            last_compile: Some(Time::from_secs(1)),
            failures: 2,
        }
    }

    #[test]
    fn round_trips_nodes_facts_catalogs_and_removals() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SqliteStore::open(dir.path()).expect("open");
        s.write(&[
            Write::Node {
                certname: "a".into(),
                view: view(NodeState::Queued(Lane::Deploy), 5),
            },
            Write::Node {
                certname: "b".into(),
                view: view(NodeState::Compiling(MasterId::default()), 6),
            },
            Write::Facts {
                certname: "a".into(),
                values: b"{\"x\":1}".to_vec(),
                hash: "h1".into(),
                at: Time::from_secs(7),
            },
            Write::Catalog {
                certname: "a".into(),
                hash: "c1".into(),
                changed_at: Time::from_secs(8),
                exports: vec![Export {
                    kind: "Host".into(),
                    title: "a".into(),
                    parameters_hash: "p".into(),
                }],
                body: None,
            },
        ])
        .expect("write");
        drop(s);
        let mut s = SqliteStore::open(dir.path()).expect("reopen");
        let nodes = s.load().expect("load");
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].view.state, NodeState::Queued(Lane::Deploy));
        assert_eq!(nodes[0].view.pending, Pending::Urgent(BumpReason::Exports));
        assert_eq!(nodes[0].catalog_hash.as_deref(), Some("c1"));
        assert_eq!(nodes[0].facts_hash.as_deref(), Some("h1"));
        assert_eq!(
            nodes[1].view.state,
            NodeState::Compiling(MasterId::default())
        );
        assert_eq!(
            s.facts("a").expect("facts").as_deref(),
            Some(&b"{\"x\":1}"[..])
        );
        assert_eq!(s.exports().expect("exports").len(), 1);
        s.write(&[Write::Remove {
            certname: "a".into(),
        }])
        .expect("remove");
        assert_eq!(s.load().expect("load").len(), 1);
        assert_eq!(s.facts("a").expect("facts"), None);
        let mode = std::fs::metadata(dir.path().join("state.db"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_batch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SqliteStore::open(dir.path()).expect("open");
        s.db.execute_batch("CREATE TRIGGER no_b BEFORE INSERT ON nodes WHEN NEW.certname = 'b' BEGIN SELECT RAISE(ABORT, 'no b'); END;")
            .expect("trigger");
        let batch = [
            Write::Node {
                certname: "a".into(),
                view: view(NodeState::Queued(Lane::Cycle), 1),
            },
            Write::Node {
                certname: "b".into(),
                view: view(NodeState::Queued(Lane::Cycle), 1),
            },
        ];
        assert!(s.write(&batch).is_err());
        assert!(s.load().expect("load").is_empty(), "all or nothing");
    }
}
