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

    /// [`LastGood::read`] from a blocking thread (`spawn_blocking`).
    pub fn read_blocking(&self, certname: &Certname) -> Result<Option<Vec<u8>>, ReadError> {
        match self {
            LastGood::Files(files) => files
                .read(certname)
                .map_err(|e| ReadError::Failed(format!("reading the catalog: {e}"))),
            LastGood::Database(_) => {
                let handle = tokio::runtime::Handle::current();
                Ok(handle.block_on(self.read(certname))?.map(|s| s.json))
            }
        }
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
