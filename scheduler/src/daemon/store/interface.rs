//! What a store is: the rows it holds ([`StoredNode`]), the changes it
//! takes ([`Write`]), and the [`Store`] trait a backend implements.

use thiserror::Error;

use crate::core::{NodeView, Time};
use crate::daemon::catalog::Export;

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
        /// The catalog itself, compressed (zstd), when the store keeps
        /// catalogs (PostgreSQL) and it changed; `None` leaves the stored
        /// one (unchanged, or kept in a file beside SQLite).
        body: Option<Vec<u8>>,
    },
    /// The last compile error (`None` clears it).
    Error {
        /// The node.
        certname: String,
        /// The error text.
        error: Option<String>,
    },
    /// The node's stored catalog is not the catalog its recorded hash
    /// names (a file torn, lost or replaced; no catalog in the database):
    /// the hash is forgotten, so the next compile stores the catalog again.
    CatalogLost {
        /// The node.
        certname: String,
    },
    /// The leader's answer to a request a standby handed in
    /// (`pcq_requests`, PostgreSQL only), committed with (or after) what
    /// the request changed, so that an answered request was carried out
    /// by a leader that still led. A request answered already keeps its
    /// answer.
    Answer {
        /// The request's row.
        id: i64,
        /// The answer, as JSON.
        answer: String,
    },
    /// An environment's code baseline: the snapshot its last deploy was
    /// decided on, which the next deploy is diffed against. Written in
    /// the same batch as the nodes that deploy moved.
    Baseline {
        /// The environment.
        environment: String,
        /// The snapshot (`dependencies::encode_baseline`); `None`: no
        /// baseline, the next deploy moves every node.
        snapshot: Option<Vec<u8>>,
    },
}

/// A store failed.
#[derive(Clone, Debug, Error)]
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
    /// The store's queue is full: try again in a moment.
    #[error("store: busy, the write queue is full")]
    Busy,
    /// The database cannot be reached right now (its commits are being
    /// retried): try again in a moment.
    #[error("store: the database is unavailable ({0}); try again shortly")]
    Unavailable(String),
    /// Another daemon leads now (this one's lease lapsed and the epoch
    /// moved on): this one must not write again.
    #[error("store: {0}")]
    Deposed(String),
    /// Another daemon leads and its lease runs: this one stands by.
    #[error("store: {0}")]
    Standby(String),
}

/// How long this daemon may still act as the leader, by its own clock:
/// renewed by each commit that extended the lease in the database, counted
/// from before that commit was sent, less a margin. A leader paused past
/// it (SIGSTOP, a stalled VM) finds it lapsed when it runs again and
/// starts nothing until a commit proves it still leads, which it cannot
/// once another took over.
///
/// Both the monotonic clock and the wall clock must say it holds: the
/// monotonic one runs on through SIGSTOP but may stop while a machine is
/// suspended or its VM paused, when the wall clock (and the database's)
/// runs on.
#[derive(Debug, Default)]
pub struct Lease {
    until: std::sync::Mutex<Option<(std::time::Instant, std::time::SystemTime)>>,
}

impl Lease {
    /// The lease holds until `until` (the wall clock's deadline as far
    /// from now).
    pub fn hold_until(&self, until: std::time::Instant) {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if let Ok(mut u) = self.until.lock() {
            *u = Some((until, std::time::SystemTime::now() + left));
        }
    }

    /// The lease no longer holds (deposed, or the store gone).
    pub fn lapse(&self) {
        if let Ok(mut u) = self.until.lock() {
            *u = None;
        }
    }

    /// Does the lease hold now?
    pub fn holds(&self) -> bool {
        self.until
            .lock()
            .ok()
            .and_then(|u| *u)
            .is_some_and(|(i, s)| std::time::Instant::now() < i && std::time::SystemTime::now() < s)
    }
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
    /// Every environment's code baseline (environment, snapshot bytes).
    fn baselines(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Is the last failure an outage that ends by itself (a database
    /// server restarting, unreachable for a while)? The store thread then
    /// retries without end, saying so, instead of ending the daemon. A
    /// local disk that fails is not: the default is no.
    fn outage_passes(&self) -> bool {
        false
    }
    /// The leader's lease, for a store shared by several daemons (`None`:
    /// this daemon alone writes it, and always leads).
    fn lease(&self) -> Option<std::sync::Arc<Lease>> {
        None
    }
    /// Extends the lease (the store thread calls it when no commit did
    /// for a while); [`StoreError::Deposed`] when another leads now.
    fn renew(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The epoch this daemon leads in (0: alone on its store).
    fn epoch(&self) -> i64 {
        0
    }
}
