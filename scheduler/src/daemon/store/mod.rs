//! Durable state: what the daemon must find again after `kill -9`.
//!
//! The store keeps, per node, what the scheduling core knows of it (its
//! [`NodeView`]: state, lane, waiting-since, pending work, last compile,
//! failures), its environment, the hash and change time of its last good
//! catalog, its exported resources, its last facts and the last compile
//! error. It holds no queue policy: order within a lane is rebuilt by the
//! core from the stored times ([`crate::core::Core::restore_node`]).
//!
//! [`Store`] is the interface a backend implements: SQLite (the default,
//! one master) and PostgreSQL (shared; it keeps the catalogs too, read by
//! [`shared`]).
//! [`StoreHandle`] runs a store on its own thread and batches writes into
//! one transaction (group commit): a facts upload waits for its commit, and
//! thousands of them a second share a handful of commits.
//!
//! A store that fails is loud, never quiet: a failed commit is retried a
//! few times (a locked or briefly full disk), `/healthz` says so meanwhile,
//! and a commit that still fails ends the store thread and with it the
//! daemon (non-zero exit), so a supervisor restarts it and nothing is
//! acknowledged that was not written. The queue in front of the thread is
//! bounded: when it is full, uploads are refused (503, retry later) instead
//! of growing memory without end.

pub mod interface;
pub mod postgresql;
pub mod row;
pub mod shared;
pub mod sqlite;

pub use interface::{Lease, Store, StoreError, StoredNode, Write};

use std::sync::mpsc::{self, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::daemon::catalog::CatalogFiles;

/// Requests that may wait for the store thread; beyond it, uploads get
/// [`StoreError::Busy`] and the driver keeps its writes for the next flush.
pub const QUEUE: usize = 8192;

/// The waits before each retry of a failed commit (then the store gives up
/// and the daemon ends).
pub const RETRIES: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

enum Request {
    Write(Vec<Write>, Option<oneshot::Sender<Result<(), StoreError>>>),
    Facts(String, oneshot::Sender<Result<Option<Vec<u8>>, String>>),
}

/// The async front of a store running on its own thread.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    tx: mpsc::SyncSender<Request>,
    /// Why the store is not healthy right now (a commit failing, the
    /// thread gone), if it is not.
    trouble: Arc<Mutex<Option<String>>>,
}

/// Resolves, with the reason, when the store thread stops for any reason
/// but the daemon's own end (it gave up on a commit, or panicked).
pub type Died = oneshot::Receiver<String>;

/// Sends the store thread's last word when it ends, however it ends.
struct LastWord {
    tx: Option<oneshot::Sender<String>>,
    trouble: Arc<Mutex<Option<String>>>,
    why: Option<String>,
}

impl Drop for LastWord {
    fn drop(&mut self) {
        let why = match (&self.why, thread::panicking()) {
            (Some(why), _) => why.clone(),
            (None, true) => "the store thread panicked".to_string(),
            (None, false) => return, // every handle dropped: the daemon ended
        };
        if let Ok(mut t) = self.trouble.lock() {
            *t = Some(why.clone());
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(why);
        }
    }
}

impl StoreHandle {
    /// Moves `store` to a new thread. A batch that records a catalog is
    /// committed only after `catalogs`' directory is synced, so a recorded
    /// hash never outlives (power loss) the rename that put its file in
    /// place.
    pub fn spawn(
        store: Box<dyn Store>,
        catalogs: Option<CatalogFiles>,
    ) -> Result<(StoreHandle, Died), StoreError> {
        StoreHandle::spawn_with(store, catalogs, QUEUE, &RETRIES)
    }

    /// [`StoreHandle::spawn`] with a given queue bound and retry waits.
    pub fn spawn_with(
        mut store: Box<dyn Store>,
        catalogs: Option<CatalogFiles>,
        queue: usize,
        retries: &'static [Duration],
    ) -> Result<(StoreHandle, Died), StoreError> {
        let (tx, rx) = mpsc::sync_channel::<Request>(queue);
        let (died_tx, died) = oneshot::channel();
        let trouble = Arc::new(Mutex::new(None));
        let mut last_word = LastWord {
            tx: Some(died_tx),
            trouble: trouble.clone(),
            why: None,
        };
        let health = trouble.clone();
        thread::Builder::new()
            .name("pcq-store".into())
            .spawn(move || {
                let mut store = Synced {
                    store: &mut *store,
                    catalogs,
                };
                last_word.why = run(&mut store, rx, retries, &health).err();
                // no compile starts once the store is gone (a standby may
                // take the lead as soon as this one's is given up)
                if let Some(lease) = store.store.lease() {
                    lease.lapse();
                }
                drop(last_word);
            })
            .map_err(|e| StoreError::Database(format!("cannot start the store thread: {e}")))?;
        Ok((StoreHandle { tx, trouble }, died))
    }

    /// Is the store healthy? The reason when it is not.
    pub fn health(&self) -> Result<(), String> {
        match self.trouble.lock() {
            Ok(t) => t.clone().map_or(Ok(()), Err),
            Err(_) => Err("the store's health is unknown (a thread panicked)".into()),
        }
    }

    /// Queues writes; they commit with the next batch. A full queue hands
    /// them back, to be offered again at the next flush.
    pub fn write(&self, batch: Vec<Write>) -> Result<(), Vec<Write>> {
        if batch.is_empty() {
            return Ok(());
        }
        match self.tx.try_send(Request::Write(batch, None)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Request::Write(batch, _))) => Err(batch),
            // the store thread is gone: the daemon is ending (Died says why)
            Err(_) => Ok(()),
        }
    }

    /// Writes and waits until they are committed; [`StoreError::Busy`] at
    /// once when the store's queue is full, [`StoreError::Unavailable`]
    /// while its commits fail (they are being retried).
    pub async fn write_durably(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        if let Err(why) = self.health() {
            return Err(StoreError::Unavailable(why));
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .try_send(Request::Write(batch, Some(tx)))
            .map_err(|e| match e {
                TrySendError::Full(_) => StoreError::Busy,
                TrySendError::Disconnected(_) => StoreError::Closed,
            })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes and waits until they are committed, waiting for room in a
    /// full queue (the driver's last writes at shutdown).
    pub async fn write_finally(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send_waiting(Request::Write(batch, Some(tx))).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The node's last facts (waits for room in a full queue);
    /// [`StoreError::Unavailable`] at once while commits fail (a compile
    /// is deferred, not blamed; an upload is refused with 503).
    pub async fn facts(&self, certname: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Err(why) = self.health() {
            return Err(StoreError::Unavailable(why));
        }
        let (tx, rx) = oneshot::channel();
        self.send_waiting(Request::Facts(certname.to_owned(), tx))
            .await?;
        answer(rx).await
    }

    async fn send_waiting(&self, mut request: Request) -> Result<(), StoreError> {
        loop {
            match self.tx.try_send(request) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(r)) => {
                    request = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
            }
        }
    }
}

async fn answer<T>(rx: oneshot::Receiver<Result<T, String>>) -> Result<T, StoreError> {
    rx.await
        .map_err(|_| StoreError::Closed)?
        .map_err(StoreError::Database)
}

/// A store whose catalog rows wait for the catalog directory's sync.
struct Synced<'a> {
    store: &'a mut dyn Store,
    catalogs: Option<CatalogFiles>,
}

impl Synced<'_> {
    fn write(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let records_a_catalog = writes.iter().any(|w| matches!(w, Write::Catalog { .. }));
        if let (true, Some(catalogs)) = (records_a_catalog, &self.catalogs) {
            catalogs
                .sync()
                .map_err(|e| StoreError::Database(format!("syncing the catalog directory: {e}")))?;
        }
        self.store.write(writes)
    }
}

/// The store thread: waits for a request, takes every request already
/// queued behind it, commits all their writes in one transaction, answers.
/// Ends with the reason when a commit fails even after its retries.
/// A request's writes, and who waits for them to commit.
type Part = (Vec<Write>, Option<oneshot::Sender<Result<(), StoreError>>>);

fn run(
    store: &mut Synced<'_>,
    rx: mpsc::Receiver<Request>,
    retries: &[Duration],
    trouble: &Mutex<Option<String>>,
) -> Result<(), String> {
    // a shared store's lease is renewed whenever no commit did for a while
    let renews = store.store.lease().is_some();
    let mut renewal_failed = false;
    loop {
        let first = if renews {
            match rx.recv_timeout(postgresql::RENEW_EVERY) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    renew(store.store, &mut renewal_failed)?;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(first) => first,
                Err(_) => break,
            }
        };
        let mut parts: Vec<Part> = Vec::new();
        let mut pending = vec![first];
        pending.extend(rx.try_iter().take(4096));
        let mut reads = Vec::new();
        for request in pending {
            match request {
                Request::Write(batch, reply) => parts.push((batch, reply)),
                Request::Facts(certname, reply) => reads.push((certname, reply)),
            }
        }
        if !parts.is_empty() {
            let result = commit(store, &mut parts, retries, trouble);
            for (_, reply) in parts {
                if let Some(reply) = reply {
                    let _ = reply.send(result.clone().map_err(StoreError::Database));
                }
            }
            if let Err(e) = result {
                tracing::error!("{e}; the store gives up and pcq stops");
                for (_, reply) in reads {
                    let _ = reply.send(Err(e.clone()));
                }
                return Err(e);
            }
        }
        for (certname, reply) in reads {
            let _ = reply.send(store.store.facts(&certname).map_err(|e| e.to_string()));
        }
    }
    Ok(())
}

/// Renews the lease: another leading ends the store (and the daemon);
/// anything else (PostgreSQL out of reach) lets the lease lapse, said once.
fn renew(store: &mut dyn Store, failed: &mut bool) -> Result<(), String> {
    match store.renew() {
        Ok(()) => {
            if std::mem::take(failed) {
                tracing::info!("the leader's lease is renewed again");
            }
            Ok(())
        }
        Err(e @ StoreError::Deposed(_)) => {
            let e = e.to_string();
            tracing::error!("{e}");
            Err(e)
        }
        Err(e) => {
            if !std::mem::replace(failed, true) {
                tracing::warn!("renewing the leader's lease: {e}; no compile starts until it is");
            }
            Ok(())
        }
    }
}

/// One batch, retried after each of `retries` while it fails; the store is
/// reported unhealthy from the first failure to the next success.
/// While an outage that passes is waited out, the writes someone waits
/// for (uploads) leave the batch and are answered unavailable at once:
/// they were not written, and the node sends them again; the rest (the
/// driver's) go on being retried.
fn commit(
    store: &mut Synced<'_>,
    parts: &mut Vec<Part>,
    retries: &[Duration],
    trouble: &Mutex<Option<String>>,
) -> Result<(), String> {
    let set = |why: Option<String>| {
        if let Ok(mut t) = trouble.lock() {
            *t = why;
        }
    };
    // the writes move into one batch (facts can be large: no copies); each
    // part keeps how many of them are its own
    let mut counts: Vec<usize> = parts.iter().map(|(w, _)| w.len()).collect();
    let mut writes: Vec<Write> = parts
        .iter_mut()
        .flat_map(|(w, _)| std::mem::take(w))
        .collect();
    let mut attempt = 0;
    loop {
        match store.write(&writes) {
            Ok(()) => {
                if attempt > 0 {
                    tracing::info!("the store commits again (after {attempt} retries)");
                    set(None);
                }
                return Ok(());
            }
            Err(e) => {
                let deposed = matches!(e, StoreError::Deposed(_));
                let e = format!("committing {} writes: {e}", writes.len());
                set(Some(e.clone()));
                if deposed {
                    return Err(e);
                }
                let outage = store.store.outage_passes();
                if outage && parts.iter().any(|(_, reply)| reply.is_some()) {
                    // the uploads' writes leave the batch, the rest stay
                    let mut all = std::mem::take(&mut writes).into_iter();
                    let (mut kept, mut kept_counts) = (Vec::new(), Vec::new());
                    for ((w, reply), n) in parts.drain(..).zip(counts.drain(..)) {
                        let own = all.by_ref().take(n);
                        match reply {
                            Some(reply) => {
                                own.for_each(drop);
                                let _ = reply.send(Err(StoreError::Unavailable(e.clone())));
                            }
                            None => {
                                writes.extend(own);
                                kept.push((w, None));
                                kept_counts.push(n);
                            }
                        }
                    }
                    *parts = kept;
                    counts = kept_counts;
                }
                // an outage that passes (a database server restarting) is
                // waited out at the longest wait; anything else gives up
                let wait = match retries.get(attempt) {
                    Some(wait) => wait,
                    None if outage => match retries.last() {
                        Some(wait) => wait,
                        None => return Err(e),
                    },
                    None => return Err(e),
                };
                tracing::error!("{e}; retrying in {wait:?}");
                thread::sleep(*wait);
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::catalog::Export;
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store whose writes fail while `failing` is above zero (each failed
    /// write counts it down; `usize::MAX`: forever), and take `slow` each;
    /// or, with `panics`, one whose writes panic.
    struct Flaky {
        failing: Arc<AtomicUsize>,
        writes: Arc<AtomicUsize>,
        slow: Duration,
        panics: bool,
        /// Its failures are an outage that passes (a server restarting).
        passes: bool,
    }

    impl Store for Flaky {
        fn load(&mut self) -> Result<Vec<StoredNode>, StoreError> {
            Ok(Vec::new())
        }
        fn write(&mut self, batch: &[Write]) -> Result<(), StoreError> {
            assert!(!self.panics, "a bug in the store");
            thread::sleep(self.slow);
            let left = self.failing.load(Ordering::SeqCst);
            if left > 0 {
                if left != usize::MAX {
                    self.failing.store(left - 1, Ordering::SeqCst);
                }
                return Err(StoreError::Database("disk I/O error".into()));
            }
            self.writes.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
        fn facts(&mut self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        fn exports(&mut self) -> Result<Vec<(String, Export)>, StoreError> {
            Ok(Vec::new())
        }
        fn facts_owners(&mut self) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }
        fn baselines(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            Ok(Vec::new())
        }
        fn outage_passes(&self) -> bool {
            self.passes
        }
    }

    fn flaky(
        failing: usize,
        slow: Duration,
    ) -> (Box<dyn Store>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let failing = Arc::new(AtomicUsize::new(failing));
        let writes = Arc::new(AtomicUsize::new(0));
        let store = Flaky {
            failing: failing.clone(),
            writes: writes.clone(),
            slow,
            panics: false,
            passes: false,
        };
        (Box::new(store), failing, writes)
    }

    /// A store down for `failing` writes, an outage that passes.
    fn passing_outage(failing: usize) -> (Flaky, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let failing = Arc::new(AtomicUsize::new(failing));
        let writes = Arc::new(AtomicUsize::new(0));
        let store = Flaky {
            failing: failing.clone(),
            writes: writes.clone(),
            slow: Duration::ZERO,
            panics: false,
            passes: true,
        };
        (store, failing, writes)
    }

    fn row(n: usize) -> Write {
        Write::Error {
            certname: format!("n{n}"),
            error: None,
        }
    }

    const QUICK: [Duration; 3] = [Duration::from_millis(10); 3];

    #[tokio::test]
    async fn a_failed_commit_is_retried_and_its_waiter_told_only_the_end() {
        let (store, _, writes) = flaky(2, Duration::ZERO);
        let (handle, _died) = StoreHandle::spawn_with(store, None, 16, &QUICK).expect("spawn");
        handle
            .write_durably(vec![row(1)])
            .await
            .expect("committed on the third try");
        assert_eq!(writes.load(Ordering::SeqCst), 1);
        assert_eq!(handle.health(), Ok(()));
        // a fire-and-forget batch is retried as well, not dropped
        let (store, _, writes) = flaky(1, Duration::ZERO);
        let (handle, _died) = StoreHandle::spawn_with(store, None, 16, &QUICK).expect("spawn");
        assert!(handle.write(vec![row(1), row(2)]).is_ok());
        handle
            .write_finally(Vec::new())
            .await
            .expect("a later commit");
        assert_eq!(writes.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_store_that_keeps_failing_ends_loudly() {
        let (store, _, _) = flaky(usize::MAX, Duration::ZERO);
        let (handle, died) = StoreHandle::spawn_with(store, None, 16, &QUICK).expect("spawn");
        let e = handle.write_durably(vec![row(1)]).await;
        assert!(
            matches!(e, Err(StoreError::Database(ref m)) if m.contains("disk I/O")),
            "{e:?}"
        );
        let why = tokio::time::timeout(Duration::from_secs(5), died)
            .await
            .expect("the daemon hears of it")
            .expect("a reason");
        assert!(why.contains("disk I/O error"), "{why}");
        assert!(handle.health().is_err());
        // refused (the daemon is ending: a restarted one takes it)
        assert!(matches!(
            handle.write_durably(vec![row(2)]).await,
            Err(StoreError::Closed | StoreError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn an_outage_that_passes_is_waited_out_and_uploads_are_refused_meanwhile() {
        // ten failures: more than the retries, fewer than forever
        let (store, failing, writes) = passing_outage(10);
        let (handle, mut died) =
            StoreHandle::spawn_with(Box::new(store), None, 16, &QUICK).expect("spawn");
        // the driver's writes go in while the database is down
        assert!(handle.write(vec![row(1)]).is_ok());
        tokio::time::sleep(Duration::from_millis(20)).await;
        // meanwhile an upload is refused at once, not queued to wait
        match handle.write_durably(vec![row(2)]).await {
            Err(StoreError::Unavailable(why)) => assert!(why.contains("disk I/O"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(handle.health().is_err());
        // the outage ends; the waiting write commits; nothing died
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while writes.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "never committed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(failing.load(Ordering::SeqCst), 0);
        assert_eq!(handle.health(), Ok(()));
        // the refused upload was not written behind its back
        assert_eq!(writes.load(Ordering::SeqCst), 1);
        assert!(matches!(
            died.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        handle
            .write_durably(vec![row(3)])
            .await
            .expect("uploads are taken again");
        assert_eq!(writes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_upload_caught_in_a_failing_batch_is_refused_and_left_out() {
        // the upload is queued behind the driver's write before the first
        // failure shows: both are in the failing batch
        let (store, _, writes) = passing_outage(6);
        let mut store: Box<dyn Store> = Box::new(store);
        let mut synced = Synced {
            store: &mut *store,
            catalogs: None,
        };
        let (tx, rx) = oneshot::channel();
        let mut parts: Vec<Part> = vec![(vec![row(1)], None), (vec![row(2)], Some(tx))];
        let trouble = Mutex::new(None);
        commit(&mut synced, &mut parts, &QUICK, &trouble).expect("the outage ends");
        assert!(matches!(
            rx.blocking_recv(),
            Ok(Err(StoreError::Unavailable(_)))
        ));
        assert_eq!(parts.len(), 1, "the upload left the batch");
        assert_eq!(writes.load(Ordering::SeqCst), 1, "only the driver's row");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_uploads_and_hands_writes_back() {
        let (store, _, writes) = flaky(0, Duration::from_millis(200));
        let (handle, _died) = StoreHandle::spawn_with(store, None, 2, &QUICK).expect("spawn");
        // the first batch keeps the thread busy; two more fill the queue
        let mut refused = 0;
        let mut handed_back = Vec::new();
        for n in 0..6 {
            if let Err(batch) = handle.write(vec![row(n)]) {
                handed_back.extend(batch);
            }
            if matches!(
                handle.write_durably(vec![row(100 + n)]).now_or_never(),
                Some(Err(StoreError::Busy))
            ) {
                refused += 1;
            }
        }
        assert!(refused > 0 && !handed_back.is_empty(), "{refused}");
        // the handed-back writes go in later, and nothing is lost
        handle.write_finally(handed_back).await.expect("commit");
        assert!(writes.load(Ordering::SeqCst) >= 6);
    }

    #[tokio::test]
    async fn a_panicking_store_is_reported() {
        let panics = Flaky {
            failing: Arc::new(AtomicUsize::new(0)),
            writes: Arc::new(AtomicUsize::new(0)),
            slow: Duration::ZERO,
            panics: true,
            passes: false,
        };
        let (handle, died) =
            StoreHandle::spawn_with(Box::new(panics), None, 4, &QUICK).expect("spawn");
        assert!(handle.write(vec![row(1)]).is_ok());
        let why = tokio::time::timeout(Duration::from_secs(5), died)
            .await
            .expect("reported")
            .expect("a reason");
        assert!(why.contains("panicked"), "{why}");
        assert!(handle.health().is_err());
    }
}
