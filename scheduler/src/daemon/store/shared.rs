//! The shared database as the API uses it beside the store thread: the
//! last good catalogs, nodes' rows, and the inbox of uploads a standby
//! hands the leader.
//!
//! With the PostgreSQL store, catalogs live in the database (`catalogs`,
//! compressed, committed in the same transaction as the node's recorded
//! hash), so any `pcq serve` on it can serve any node. A standby answers
//! nodes from here: their status from their rows, their catalogs, and
//! their facts uploads into `pcq_inbox` (committed, then NOTIFY), which
//! the leader drains through its own upload path. None of this may queue
//! behind the store thread's writes, nor block the runtime: it goes over a
//! few connections of its own, async, each with its statements prepared
//! once. A use that cannot reach the database is
//! [`StoreError::Unavailable`] (the API answers 503 with Retry-After),
//! never an empty answer.

use std::sync::Mutex;

use tokio::sync::Semaphore;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::interface::{StoreError, StoredNode};
use super::postgresql::{
    connect_err, db_err, ends_connection, leader_sentence, settings, tls, Connection, LEADER,
};
use super::row::{micros, NodeRow, NODE_COLUMNS};
use crate::core::Time;

/// Connections reads may hold at once.
const CONNECTIONS: usize = 4;

/// A node's catalog as the database holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredCatalog {
    /// Its canonical hash (the ETag).
    pub hash: String,
    /// The catalog JSON, decompressed.
    pub json: Vec<u8>,
}

/// Reads of the `catalogs` table over a small pool of connections.
pub struct Shared {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    idle: Mutex<Vec<(Client, Prepared)>>,
    permits: Semaphore,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

const READ: &str = "SELECT hash, body FROM catalogs WHERE certname = $1";
const HASHES: &str = "SELECT certname, hash FROM catalogs";
const HAND_IN: &str =
    "WITH i AS (INSERT INTO pcq_inbox (certname, environment, values_json, received_us)
                                  VALUES ($1, $2, $3, $4) RETURNING id)
                       SELECT pg_notify('pcq_inbox', '') FROM i";
const INBOX: &str =
    "SELECT id, certname, environment, values_json FROM pcq_inbox ORDER BY id LIMIT 256";
const TAKEN: &str = "DELETE FROM pcq_inbox WHERE id = ANY($1)";

/// The statements, prepared once per connection.
struct Prepared {
    read: Statement,
    hashes: Statement,
    node: Statement,
    hand_in: Statement,
    inbox: Statement,
    taken: Statement,
    leader: Statement,
}

/// A connection listening for `NOTIFY pcq_inbox`.
pub struct Listening {
    /// Keeps the connection open.
    _client: Client,
    /// One message per wake-up (several notifications may share one).
    pub woken: tokio::sync::mpsc::Receiver<()>,
}

/// A facts upload a standby took, waiting for the leader.
#[derive(Clone, Debug, PartialEq)]
pub struct HandedIn {
    /// Its row.
    pub id: i64,
    /// The node.
    pub certname: String,
    /// The environment the node asked for.
    pub environment: Option<String>,
    /// The upload's `values`, as JSON.
    pub values: Vec<u8>,
}

/// Compresses a catalog for [`super::Write::Catalog`]'s `body`.
pub fn compress(json: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::encode_all(json, 3)
}

impl Shared {
    /// Reads from the database `connection` names; connects on first use.
    pub fn new(connection: &Connection) -> Result<Shared, StoreError> {
        Ok(Shared {
            config: settings(connection)?,
            tls: tls(connection.ca_file.as_deref())?,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(CONNECTIONS),
        })
    }

    /// The node's catalog, if the database holds one.
    pub async fn read(&self, certname: &str) -> Result<Option<StoredCatalog>, StoreError> {
        let rows = self.query(|s| &s.read, &[&certname]).await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let body: Vec<u8> = row.get(1);
        let json = zstd::decode_all(body.as_slice()).map_err(|e| StoreError::Corrupt {
            certname: certname.to_string(),
            why: format!("the stored catalog does not decompress: {e}"),
        })?;
        Ok(Some(StoredCatalog {
            hash: row.get(0),
            json,
        }))
    }

    /// Every stored catalog's (certname, hash), for checking them against
    /// the nodes' recorded hashes.
    pub async fn hashes(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.query(|s| &s.hashes, &[]).await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The node's row, if it has one.
    pub async fn node(&self, certname: &str) -> Result<Option<StoredNode>, StoreError> {
        let rows = self.query(|s| &s.node, &[&certname]).await?;
        let Some(r) = rows.into_iter().next() else {
            return Ok(None);
        };
        NodeRow {
            certname: r.get(0),
            environment: r.get(1),
            state: r.get(2),
            reason: r.get(3),
            since_us: r.get(4),
            pending: r.get(5),
            pending_since_us: r.get(6),
            last_compile_us: r.get(7),
            failures: r.get(8),
            catalog_hash: r.get(9),
            catalog_changed_us: r.get(10),
            facts_hash: r.get(11),
            last_error: r.get(12),
        }
        .decode()
        .map(Some)
    }

    /// Hands a facts upload to the leader: committed (then it may be
    /// acknowledged), and the leader woken.
    pub async fn hand_in(
        &self,
        certname: &str,
        environment: Option<&str>,
        values: &[u8],
        at: Time,
    ) -> Result<(), StoreError> {
        self.query(
            |s| &s.hand_in,
            &[&certname, &environment, &values, &micros(at)],
        )
        .await
        .map(drop)
    }

    /// The oldest uploads handed in (at most 256).
    pub async fn inbox(&self) -> Result<Vec<HandedIn>, StoreError> {
        let rows = self.query(|s| &s.inbox, &[]).await?;
        Ok(rows
            .into_iter()
            .map(|r| HandedIn {
                id: r.get(0),
                certname: r.get(1),
                environment: r.get(2),
                values: r.get(3),
            })
            .collect())
    }

    /// Uploads handed in are acted on: their rows go.
    pub async fn taken(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.query(|s| &s.taken, &[&ids]).await.map(drop)
    }

    /// Wakes for each `NOTIFY pcq_inbox`, on a connection of its own; the
    /// wake-ups end when the connection does.
    pub async fn listen(&self) -> Result<Listening, StoreError> {
        let (client, mut connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(connect_err)?;
        let (wake, woken) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                        // one wake-up covers any number of rows
                        let _ = wake.try_send(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!("listening for handed-in uploads: {e}");
                        return;
                    }
                    None => return,
                }
            }
        });
        client
            .batch_execute("LISTEN pcq_inbox")
            .await
            .map_err(read_err)?;
        Ok(Listening {
            _client: client,
            woken,
        })
    }

    /// Who leads, as a sentence.
    pub async fn leader(&self) -> Result<String, StoreError> {
        let rows = self.query(|s| &s.leader, &[]).await?;
        Ok(rows.into_iter().next().map_or_else(
            || "nobody".to_string(),
            |r| leader_sentence(&r.get::<_, String>(0), r.get(1), &r.get::<_, String>(2)),
        ))
    }

    /// Runs one of the prepared statements on a pooled connection; the
    /// connection goes back to the pool unless it failed.
    async fn query(
        &self,
        statement: fn(&Prepared) -> &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let (client, prepared) = self.connection().await?;
        let rows = client
            .query(statement(&prepared), params)
            .await
            .map_err(read_err)?;
        self.put_back(client, prepared);
        Ok(rows)
    }

    /// An idle live connection, or a new one.
    async fn connection(&self) -> Result<(Client, Prepared), StoreError> {
        loop {
            let idle = self.idle.lock().map_or(None, |mut idle| idle.pop());
            match idle {
                Some((client, _)) if client.is_closed() => continue,
                Some(live) => return Ok(live),
                None => break,
            }
        }
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(connect_err)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("a catalog-reading connection to PostgreSQL ended: {e}");
            }
        });
        let node = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE certname = $1");
        let prepared = Prepared {
            read: client.prepare(READ).await.map_err(read_err)?,
            hashes: client.prepare(HASHES).await.map_err(read_err)?,
            node: client.prepare(&node).await.map_err(read_err)?,
            hand_in: client.prepare(HAND_IN).await.map_err(read_err)?,
            inbox: client.prepare(INBOX).await.map_err(read_err)?,
            taken: client.prepare(TAKEN).await.map_err(read_err)?,
            leader: client.prepare(LEADER).await.map_err(read_err)?,
        };
        Ok((client, prepared))
    }

    fn put_back(&self, client: Client, prepared: Prepared) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push((client, prepared));
        }
    }
}

/// A read's error: the database out of reach is an outage (retry), the
/// rest are the database's answers.
fn read_err(e: tokio_postgres::Error) -> StoreError {
    if ends_connection(&e) {
        StoreError::Unavailable(format!("PostgreSQL: {e}"))
    } else {
        db_err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogs_compress_and_come_back() {
        let json = br#"{"name":"web01","resources":[]}"#.repeat(100);
        let packed = compress(&json).expect("compress");
        assert!(packed.len() < json.len() / 10, "{} bytes", packed.len());
        assert_eq!(zstd::decode_all(packed.as_slice()).expect("decode"), json);
    }
}
