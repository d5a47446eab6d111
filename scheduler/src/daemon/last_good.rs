//! Where the last good catalogs are kept, and the one way to keep, read
//! and check them whichever it is.
//!
//! Beside SQLite (one master) each catalog is a file in the state
//! directory ([`CatalogFiles`]): staged by the compile, renamed into place
//! by the driver, its hash committed after the directory's sync. With the
//! PostgreSQL store it is a row ([`Shared`]): compressed by the
//! compile, committed with the node's hash in one transaction, and read
//! by any daemon on the database. The driver, the API and the start-up
//! check go through [`LastGood`] and need not know which.

use std::io;
use std::sync::Arc;

use super::catalog::CatalogFiles;
use super::certname::Certname;
use super::store::shared::{self, Shared};
use super::store::StoreError;
use crate::private_file::Staged;

/// The last good catalogs: files, or rows of the shared database.
#[derive(Clone, Debug)]
pub enum LastGood {
    /// One file per node in the state directory.
    Files(CatalogFiles),
    /// The `catalogs` table of the PostgreSQL store.
    Database(Arc<Shared>),
}

/// A changed catalog on its way to being kept: it takes the current one's
/// place only when the driver commits it (dropped otherwise).
pub enum Kept {
    /// Written beside the node's file; the rename puts it in place.
    Staged(Staged),
    /// Compressed, for the node's row ([`super::store::Write::Catalog`]).
    Compressed(Vec<u8>),
}

/// A catalog read to be served.
pub struct Served {
    /// The hash it is stored under, where the store records it with the
    /// catalog (the database); a file's is the driver's.
    pub hash: Option<String>,
    /// The catalog JSON.
    pub json: Vec<u8>,
}

/// How a read failed: out of reach for now (retry), or broken.
#[derive(Debug)]
pub enum ReadError {
    /// The database cannot be reached.
    Unavailable(String),
    /// Anything else.
    Failed(String),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> ReadError {
        match e {
            StoreError::Unavailable(_) => ReadError::Unavailable(e.to_string()),
            other => ReadError::Failed(other.to_string()),
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Unavailable(e) | ReadError::Failed(e) => f.write_str(e),
        }
    }
}

/// Catalog rows read per round trip by [`LastGood::read_many_blocking`].
const READ_MANY: usize = 500;

impl LastGood {
    /// Prepares a changed catalog to be kept (off the driver: compressing
    /// and writing take time).
    pub fn keep(&self, certname: &Certname, json: &[u8]) -> io::Result<Kept> {
        match self {
            LastGood::Files(files) => files.stage(certname, json).map(Kept::Staged),
            LastGood::Database(_) => shared::compress(json).map(Kept::Compressed),
        }
    }

    /// The node's catalog, if one is kept.
    pub async fn read(&self, certname: &Certname) -> Result<Option<Served>, ReadError> {
        match self {
            LastGood::Files(files) => {
                let (files, c) = (files.clone(), certname.clone());
                let json = tokio::task::spawn_blocking(move || files.read(&c))
                    .await
                    .map_err(|e| ReadError::Failed(e.to_string()))?
                    .map_err(|e| ReadError::Failed(format!("reading the catalog: {e}")))?;
                Ok(json.map(|json| Served { hash: None, json }))
            }
            LastGood::Database(rows) => Ok(rows.read(certname.as_str()).await?.map(|c| Served {
                hash: Some(c.hash),
                json: c.json,
            })),
        }
    }

    /// The catalogs of `certnames` that are kept and readable, from a
    /// blocking thread: files one by one, rows [`READ_MANY`] at a time (one
    /// round trip each). What cannot be read is left out, said once.
    pub fn read_many_blocking(&self, certnames: &[Certname]) -> Vec<(Certname, Vec<u8>)> {
        let mut read = Vec::with_capacity(certnames.len());
        match self {
            LastGood::Files(files) => {
                for c in certnames {
                    if let Ok(Some(json)) = files.read(c) {
                        read.push((c.clone(), json));
                    }
                }
            }
            LastGood::Database(rows) => {
                let handle = tokio::runtime::Handle::current();
                for chunk in certnames.chunks(READ_MANY) {
                    let names: Vec<&str> = chunk.iter().map(Certname::as_str).collect();
                    let found = match handle.block_on(rows.read_many(&names)) {
                        Ok(found) => found,
                        Err(e) => {
                            tracing::warn!("reading {} catalogs: {e}", chunk.len());
                            continue;
                        }
                    };
                    let by_name: std::collections::HashMap<&str, &Certname> =
                        chunk.iter().map(|c| (c.as_str(), c)).collect();
                    for (name, catalog) in found {
                        match (by_name.get(name.as_str()), catalog) {
                            (Some(c), Ok(catalog)) => read.push(((*c).clone(), catalog.json)),
                            (_, Err(e)) => tracing::warn!("{e}"),
                            (None, Ok(_)) => {}
                        }
                    }
                }
            }
        }
        read
    }

    /// The node is gone: its file goes (its row goes with the node's).
    pub fn remove(&self, certname: &Certname) -> io::Result<()> {
        match self {
            LastGood::Files(files) => files.remove(certname),
            LastGood::Database(_) => Ok(()),
        }
    }

    /// The files, when catalogs are files (the store syncs their folder
    /// before it records a hash).
    pub fn files(&self) -> Option<&CatalogFiles> {
        match self {
            LastGood::Files(files) => Some(files),
            LastGood::Database(_) => None,
        }
    }
}
