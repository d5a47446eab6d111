//! The last good catalogs as the API reads them from PostgreSQL.
//!
//! With the PostgreSQL store, catalogs live in the database (`catalogs`,
//! compressed, committed in the same transaction as the node's recorded
//! hash), so any `pcq serve` on it can serve any node. Reads must not
//! queue behind the store thread's writes, nor block the runtime: they go
//! over a few connections of their own, async, each with its statement
//! prepared once. A read that cannot reach the database is
//! [`StoreError::Unavailable`] (the API answers 503 with Retry-After),
//! never an empty answer.

use std::sync::Mutex;

use tokio::sync::Semaphore;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::interface::StoreError;
use super::postgresql::{connect_err, db_err, ends_connection, settings, tls, Connection};

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
pub struct CatalogReads {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    idle: Mutex<Vec<(Client, Prepared)>>,
    permits: Semaphore,
}

impl std::fmt::Debug for CatalogReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogReads").finish_non_exhaustive()
    }
}

const READ: &str = "SELECT hash, body FROM catalogs WHERE certname = $1";
const HASHES: &str = "SELECT certname, hash FROM catalogs";

/// The statements, prepared once per connection.
struct Prepared {
    read: Statement,
    hashes: Statement,
}

/// Compresses a catalog for [`super::Write::Catalog`]'s `body`.
pub fn compress(json: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::encode_all(json, 3)
}

impl CatalogReads {
    /// Reads from the database `connection` names; connects on first use.
    pub fn new(connection: &Connection) -> Result<CatalogReads, StoreError> {
        Ok(CatalogReads {
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
        let prepared = Prepared {
            read: client.prepare(READ).await.map_err(read_err)?,
            hashes: client.prepare(HASHES).await.map_err(read_err)?,
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
