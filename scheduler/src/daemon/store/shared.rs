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
    connect_err, db_err, ends_connection, node_row, settings, tls, Connection,
};
use super::row::{micros, NODE_COLUMNS};
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
    /// The queue of uploads to hand in (its task starts with the first).
    hand_ins: std::sync::OnceLock<tokio::sync::mpsc::Sender<HandIn>>,
}

/// Uploads that may wait to be handed in; beyond, 503 (busy).
const HAND_IN_QUEUE: usize = 8192;
/// The most uploads one statement hands in.
const HAND_IN_BATCH: usize = 2048;
/// The most facts bytes one statement carries.
const HAND_IN_BYTES: usize = 32 << 20;

/// One upload on its way to `pcq_inbox`, and who waits for its commit.
struct HandIn {
    certname: String,
    environment: Option<String>,
    values: Vec<u8>,
    at: i64,
    reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

const HAND_IN: &str = "WITH i AS (
        INSERT INTO pcq_inbox (certname, environment, values_json, received_us)
        SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[])
        RETURNING 1)
    SELECT pg_notify('pcq_inbox', '') FROM (SELECT 1 FROM i LIMIT 1) AS one";

/// Hands in the uploads queued on `rx`: whatever waits goes in one
/// statement (one commit, one notification), on a connection of its own,
/// made again after a failure; every upload of a failed statement is
/// answered with the failure (it was not written).
async fn hand_in_batches(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    mut rx: tokio::sync::mpsc::Receiver<HandIn>,
) {
    let mut connection: Option<(Client, Statement)> = None;
    while let Some(first) = rx.recv().await {
        let mut bytes = first.values.len();
        let mut batch = vec![first];
        while batch.len() < HAND_IN_BATCH && bytes < HAND_IN_BYTES {
            match rx.try_recv() {
                Ok(upload) => {
                    bytes += upload.values.len();
                    batch.push(upload);
                }
                Err(_) => break,
            }
        }
        if connection.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            connection = match connect_for_hand_ins(&config, &tls).await {
                Ok(c) => Some(c),
                Err(e) => {
                    for upload in batch {
                        let _ = upload.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            };
        }
        let Some((client, statement)) = connection.as_ref() else {
            continue;
        };
        let certnames: Vec<&str> = batch.iter().map(|u| u.certname.as_str()).collect();
        let environments: Vec<Option<&str>> =
            batch.iter().map(|u| u.environment.as_deref()).collect();
        let values: Vec<&[u8]> = batch.iter().map(|u| u.values.as_slice()).collect();
        let ats: Vec<i64> = batch.iter().map(|u| u.at).collect();
        let result = client
            .query(statement, &[&certnames, &environments, &values, &ats])
            .await
            .map(drop)
            .map_err(read_err);
        if result.is_err() {
            connection = None;
        }
        for upload in batch {
            let _ = upload.reply.send(result.clone());
        }
    }
}

async fn connect_for_hand_ins(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
) -> Result<(Client, Statement), StoreError> {
    let (client, connection) = config.connect(tls.clone()).await.map_err(connect_err)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("the hand-in connection to PostgreSQL ended: {e}");
        }
    });
    let statement = client.prepare(HAND_IN).await.map_err(read_err)?;
    Ok((client, statement))
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

const READ: &str = "SELECT hash, body FROM catalogs WHERE certname = $1";
const READ_MANY: &str = "SELECT certname, hash, body FROM catalogs WHERE certname = ANY($1)";
const HASHES: &str = "SELECT certname, hash FROM catalogs";
const INBOX: &str =
    "SELECT id, certname, environment, values_json FROM pcq_inbox ORDER BY id LIMIT 256";
const TAKEN: &str = "DELETE FROM pcq_inbox WHERE id = ANY($1)";
const REQUEST: &str = "WITH r AS (
        INSERT INTO pcq_requests (kind, target, new, received_us) VALUES ($1, $2, $3, $4)
        RETURNING id)
    SELECT id, pg_notify('pcq_inbox', '') FROM r";
const ANSWER_OF: &str = "SELECT answer FROM pcq_requests WHERE id = $1";
const FORGET: &str = "DELETE FROM pcq_requests WHERE id = $1";
const REQUESTS: &str = "SELECT id, kind, target, new FROM pcq_requests
    WHERE answer IS NULL ORDER BY id LIMIT 64";
const SWEEP: &str = "DELETE FROM pcq_requests WHERE answer IS NOT NULL AND received_us < $1";

/// The statements, prepared once per connection.
struct Prepared {
    read: Statement,
    read_many: Statement,
    hashes: Statement,
    node: Statement,
    inbox: Statement,
    taken: Statement,
    request: Statement,
    answer_of: Statement,
    forget: Statement,
    requests: Statement,
    sweep: Statement,
}

/// A bump or a deploy a standby took, for the leader to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its row.
    pub id: i64,
    /// What to do.
    pub kind: RequestKind,
    /// The node (bump) or the environment (deploy).
    pub target: String,
    /// A deploy of an environment announced as new.
    pub new: bool,
}

/// What a [`Request`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `POST /v1/nodes/NODE/bump`.
    Bump,
    /// `POST /v1/deploys`.
    Deploy,
}

impl RequestKind {
    fn name(self) -> &'static str {
        match self {
            RequestKind::Bump => "bump",
            RequestKind::Deploy => "deploy",
        }
    }
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

/// Compresses a catalog for [`super::Write::Catalog`]'s `body` (and a
/// code baseline for [`super::Write::Baseline`]).
pub fn compress(json: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::encode_all(json, 3)
}

/// A catalog row decompressed.
fn stored(certname: &str, hash: String, body: Vec<u8>) -> Result<StoredCatalog, StoreError> {
    let json = zstd::decode_all(body.as_slice()).map_err(|e| StoreError::Corrupt {
        certname: certname.to_string(),
        why: format!("the stored catalog does not decompress: {e}"),
    })?;
    Ok(StoredCatalog { hash, json })
}

impl Shared {
    /// Reads from the database `connection` names; connects on first use.
    pub fn new(connection: &Connection) -> Result<Shared, StoreError> {
        Ok(Shared {
            config: settings(connection)?,
            tls: tls(connection.ca_file.as_deref())?,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(CONNECTIONS),
            hand_ins: std::sync::OnceLock::new(),
        })
    }

    /// The node's catalog, if the database holds one.
    pub async fn read(&self, certname: &str) -> Result<Option<StoredCatalog>, StoreError> {
        let rows = self.query(|s| &s.read, &[&certname]).await?;
        rows.into_iter()
            .next()
            .map(|row| stored(certname, row.get(0), row.get(1)))
            .transpose()
    }

    /// The catalogs of `certnames` the database holds, in one round trip
    /// (certname, catalog or why it cannot be read).
    pub async fn read_many(
        &self,
        certnames: &[&str],
    ) -> Result<Vec<(String, Result<StoredCatalog, StoreError>)>, StoreError> {
        let rows = self.query(|s| &s.read_many, &[&certnames]).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let certname: String = row.get(0);
                let catalog = stored(&certname, row.get(1), row.get(2));
                (certname, catalog)
            })
            .collect())
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
        node_row(&r).decode().map(Some)
    }

    /// Hands a facts upload to the leader: committed (then it may be
    /// acknowledged), and the leader woken. Uploads arriving together
    /// share one statement and one commit ([`hand_in_batches`]).
    pub async fn hand_in(
        &self,
        certname: &str,
        environment: Option<&str>,
        values: Vec<u8>,
        at: Time,
    ) -> Result<(), StoreError> {
        let batches = self.hand_ins.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(HAND_IN_QUEUE);
            tokio::spawn(hand_in_batches(self.config.clone(), self.tls.clone(), rx));
            tx
        });
        let (reply, answer) = tokio::sync::oneshot::channel();
        let upload = HandIn {
            certname: certname.to_string(),
            environment: environment.map(String::from),
            values,
            at: micros(at),
            reply,
        };
        batches.try_send(upload).map_err(|_| StoreError::Busy)?;
        answer.await.map_err(|_| StoreError::Closed)?
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

    /// Hands a bump or a deploy to the leader (committed, the leader
    /// woken): its row's id, to wait for the answer with
    /// [`Shared::answer_of`].
    pub async fn request(
        &self,
        kind: RequestKind,
        target: &str,
        new: bool,
        at: Time,
    ) -> Result<i64, StoreError> {
        let rows = self
            .query(|s| &s.request, &[&kind.name(), &target, &new, &micros(at)])
            .await?;
        rows.first()
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::Database("a request was not recorded".into()))
    }

    /// The leader's answer to a request (JSON), once it has given one.
    pub async fn answer_of(&self, id: i64) -> Result<Option<String>, StoreError> {
        let rows = self.query(|s| &s.answer_of, &[&id]).await?;
        Ok(rows.first().and_then(|r| r.get(0)))
    }

    /// A request's answer was read: its row goes.
    pub async fn forget(&self, id: i64) -> Result<(), StoreError> {
        self.query(|s| &s.forget, &[&id]).await.map(drop)
    }

    /// The oldest requests not answered yet (at most 64).
    pub async fn requests(&self) -> Result<Vec<Request>, StoreError> {
        let rows = self.query(|s| &s.requests, &[]).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let kind = match r.get::<_, &str>(1) {
                    "bump" => RequestKind::Bump,
                    "deploy" => RequestKind::Deploy,
                    _ => return None,
                };
                Some(Request {
                    id: r.get(0),
                    kind,
                    target: r.get(2),
                    new: r.get(3),
                })
            })
            .collect())
    }

    /// Answered requests received before `before` go (their standby
    /// stopped waiting).
    pub async fn sweep(&self, before: Time) -> Result<(), StoreError> {
        self.query(|s| &s.sweep, &[&micros(before)]).await.map(drop)
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
            read_many: client.prepare(READ_MANY).await.map_err(read_err)?,
            hashes: client.prepare(HASHES).await.map_err(read_err)?,
            node: client.prepare(&node).await.map_err(read_err)?,
            inbox: client.prepare(INBOX).await.map_err(read_err)?,
            taken: client.prepare(TAKEN).await.map_err(read_err)?,
            request: client.prepare(REQUEST).await.map_err(read_err)?,
            answer_of: client.prepare(ANSWER_OF).await.map_err(read_err)?,
            forget: client.prepare(FORGET).await.map_err(read_err)?,
            requests: client.prepare(REQUESTS).await.map_err(read_err)?,
            sweep: client.prepare(SWEEP).await.map_err(read_err)?,
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
