//! Durable state: what the daemon must find again after `kill -9`.
//!
//! The store keeps, per node, what the scheduling core knows of it (its
//! [`NodeView`]: state, lane, waiting-since, pending work, last compile,
//! failures), its environment, the hash and change time of its last good
//! catalog, its exported resources, its last facts and the last compile
//! error. It holds no queue policy: order within a lane is rebuilt by the
//! core from the stored times ([`crate::core::Core::restore_node`]).
//!
//! [`Store`] is the interface a backend implements (SQLite here; a
//! PostgreSQL store shared by several masters can implement it later).
//! [`StoreHandle`] runs a store on its own thread and batches writes into
//! one transaction (group commit): a facts upload waits for its commit, and
//! thousands of them a second share a handful of commits.

pub mod sqlite;

use std::sync::mpsc;
use std::thread;

use thiserror::Error;
use tokio::sync::oneshot;

use crate::core::{NodeView, Time};

use super::catalog::Export;

/// A node as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredNode {
    /// Its certname.
    pub certname: String,
    /// What the core knew of it (`id` is meaningless after a restart).
    pub view: NodeView,
    /// Canonical hash of its last good catalog.
    pub catalog_hash: Option<String>,
    /// When that catalog last changed.
    pub catalog_changed_at: Option<Time>,
    /// Hash of its last facts without the ignored ones.
    pub facts_hash: Option<String>,
    /// The last compile error, cleared by a success.
    pub last_error: Option<String>,
}

/// One change to the stored state.
#[derive(Clone, Debug)]
pub enum Write {
    /// The node's scheduling state (inserts the node if new).
    Node {
        /// The node.
        certname: String,
        /// Its state in the core.
        view: NodeView,
    },
    /// The node is gone (revoked): its row, facts and exports.
    Remove {
        /// The node.
        certname: String,
    },
    /// New facts.
    Facts {
        /// The node.
        certname: String,
        /// The upload's `values`, as JSON.
        values: Vec<u8>,
        /// Hash of the values without ignored facts.
        hash: String,
        /// When they arrived.
        at: Time,
    },
    /// The hash of facts stored earlier (the node's row is new).
    FactsHash {
        /// The node.
        certname: String,
        /// Hash of the values without ignored facts.
        hash: String,
    },
    /// A successful compile's catalog.
    Catalog {
        /// The node.
        certname: String,
        /// Canonical hash.
        hash: String,
        /// When it last changed (now if it did).
        changed_at: Time,
        /// Its exported resources.
        exports: Vec<Export>,
    },
    /// The last compile error (`None` clears it).
    Error {
        /// The node.
        certname: String,
        /// The error text.
        error: Option<String>,
    },
}

/// A store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database said no.
    #[error("store: {0}")]
    Database(String),
    /// A stored value could not be read back.
    #[error("store: corrupt row for {certname}: {why}")]
    Corrupt {
        /// The node.
        certname: String,
        /// What is wrong.
        why: String,
    },
    /// The store thread is gone.
    #[error("store: the store thread stopped")]
    Closed,
}

/// A place to keep the state. Implementations run on one thread; they need
/// not be `Sync`.
pub trait Store: Send {
    /// Every node.
    fn load(&mut self) -> Result<Vec<StoredNode>, StoreError>;
    /// Applies the writes atomically (all or nothing).
    fn write(&mut self, batch: &[Write]) -> Result<(), StoreError>;
    /// The node's last facts (`values` JSON).
    fn facts(&mut self, certname: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every node's exports, for finding collectors.
    fn exports(&mut self) -> Result<Vec<(String, Export)>, StoreError>;
    /// Certnames that have stored facts (nodes or not).
    fn facts_owners(&mut self) -> Result<Vec<String>, StoreError>;
}

enum Request {
    Write(Vec<Write>, Option<oneshot::Sender<Result<(), String>>>),
    Facts(String, oneshot::Sender<Result<Option<Vec<u8>>, String>>),
}

/// The async front of a store running on its own thread.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    tx: mpsc::Sender<Request>,
}

impl StoreHandle {
    /// Moves `store` to a new thread.
    pub fn spawn(mut store: Box<dyn Store>) -> StoreHandle {
        let (tx, rx) = mpsc::channel::<Request>();
        let spawned = thread::Builder::new()
            .name("pcq-store".into())
            .spawn(move || run(&mut *store, rx));
        if let Err(e) = spawned {
            tracing::error!("cannot start the store thread: {e}");
        }
        StoreHandle { tx }
    }

    /// Queues writes; they commit with the next batch.
    pub fn write(&self, batch: Vec<Write>) {
        if !batch.is_empty() {
            let _ = self.tx.send(Request::Write(batch, None));
        }
    }

    /// Writes and waits until they are committed.
    pub async fn write_durably(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Write(batch, Some(tx)))
            .map_err(|_| StoreError::Closed)?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Database)
    }

    /// The node's last facts.
    pub async fn facts(&self, certname: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Facts(certname.to_owned(), tx))
            .map_err(|_| StoreError::Closed)?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Database)
    }
}

/// The store thread: waits for a request, takes every request already
/// queued behind it, commits all their writes in one transaction, answers.
fn run(store: &mut dyn Store, rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut writes = Vec::new();
        let mut waiting = Vec::new();
        let mut pending = vec![first];
        pending.extend(rx.try_iter().take(4096));
        let mut reads = Vec::new();
        for request in pending {
            match request {
                Request::Write(batch, reply) => {
                    writes.extend(batch);
                    waiting.extend(reply);
                }
                Request::Facts(certname, reply) => reads.push((certname, reply)),
            }
        }
        if !writes.is_empty() || !waiting.is_empty() {
            let result = store.write(&writes).map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!("{e}");
            }
            for reply in waiting {
                let _ = reply.send(result.clone());
            }
        }
        for (certname, reply) in reads {
            let _ = reply.send(store.facts(&certname).map_err(|e| e.to_string()));
        }
    }
}
