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

pub mod interface;
pub mod sqlite;

pub use interface::{Store, StoreError, StoredNode, Write};

use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;

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
