//! The stores against real databases: the same writes give the same state
//! in SQLite and in the machine's PostgreSQL; the PostgreSQL store's
//! migrations, its one-scheduler lock, and a connection that breaks
//! (feature `e2e`: PostgreSQL on 127.0.0.1:5432, trust auth for `postgres`);
//! and `pcq serve` on PostgreSQL against the real Puppet Server: kill -9
//! during compiles, and a second daemon on the same database.

#![cfg(feature = "e2e")]

#[path = "e2e/harness.rs"]
#[allow(dead_code)] // each test binary uses part of it
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use harness::{metric, metric_sum, with_role, Pcq, PcqConfig};
use serde_json::Value;

use scheduler::core::{
    BumpReason, Lane, MasterId, NodeId, NodeState, NodeView, Pending, Reason, Time,
};
use scheduler::daemon::catalog::Export;
use scheduler::daemon::store::postgresql::{Connection, PostgresStore};
use scheduler::daemon::store::shared::{compress, Shared, StoredCatalog};
use scheduler::daemon::store::sqlite::SqliteStore;
use scheduler::daemon::store::{Store, StoreError, Write};

const ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

/// Runs `f` on a thread of its own: the synchronous PostgreSQL client
/// runs a runtime of its own, which tokio refuses inside a test's.
fn apart<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("no panic"))
}

/// Runs a synchronous test body one test at a time (another test stops
/// the whole PostgreSQL cluster), off the runtime.
async fn alone(body: fn()) {
    let _serial = harness::serial().await;
    apart(body);
}

/// A database of its own for one test, dropped at the end.
struct Database {
    name: String,
}

impl Database {
    fn new() -> Database {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pcq_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        apart(|| {
            let mut admin = postgres::Client::connect(ADMIN, postgres::NoTls).expect("PostgreSQL");
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .expect("no old test database");
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("a test database");
        });
        Database { name }
    }

    fn connection(&self) -> Connection {
        Connection {
            url: format!(
                "host=127.0.0.1 port=5432 user=postgres dbname={} sslmode=disable",
                self.name
            ),
            ca_file: None,
        }
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.connection().url, postgres::NoTls).expect("a client")
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let name = &self.name;
        apart(|| {
            if let Ok(mut admin) = postgres::Client::connect(ADMIN, postgres::NoTls) {
                let _ =
                    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        });
    }
}

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

fn export(title: &str, hash: &str) -> Export {
    Export {
        kind: "Host".into(),
        title: title.into(),
        parameters_hash: hash.into(),
    }
}

/// A node's catalog JSON, version `v`.
fn catalog_json(certname: &str, v: u32) -> Vec<u8> {
    format!(r#"{{"name":"{certname}","version":{v},"resources":[],"edges":[]}}"#).into_bytes()
}

/// The same, compressed as the store keeps it.
fn body(certname: &str, v: u32) -> Vec<u8> {
    compress(&catalog_json(certname, v)).expect("compress")
}

/// Every kind of write, in an order that overwrites and removes.
fn history() -> Vec<Vec<Write>> {
    vec![
        vec![
            Write::Node {
                certname: "a".into(),
                view: view(NodeState::Queued(Lane::Deploy), 5),
            },
            Write::Node {
                certname: "b".into(),
                view: view(NodeState::Compiling(MasterId::default()), 6),
            },
            Write::Node {
                certname: "c".into(),
                view: view(NodeState::Parked(Time::from_secs(9)), 9),
            },
            Write::Facts {
                certname: "a".into(),
                values: b"{\"x\":1}".to_vec(),
                hash: "h1".into(),
                at: Time::from_secs(7),
            },
            Write::Facts {
                certname: "stranger".into(),
                values: b"{}".to_vec(),
                hash: "h0".into(),
                at: Time::from_secs(7),
            },
            Write::Catalog {
                certname: "a".into(),
                hash: "c1".into(),
                changed_at: Time::from_secs(8),
                exports: vec![export("a", "p1"), export("a2", "p2")],
                body: Some(body("a", 1)),
            },
            Write::Catalog {
                certname: "c".into(),
                hash: "c3".into(),
                changed_at: Time::from_secs(8),
                exports: vec![export("c", "p3")],
                body: Some(body("c", 3)),
            },
            Write::Error {
                certname: "b".into(),
                error: Some("Evaluation Error: boom".into()),
            },
            Write::Baseline {
                environment: "production".into(),
                snapshot: Some(b"p1".to_vec()),
            },
            Write::Baseline {
                environment: "staging".into(),
                snapshot: Some(b"s1".to_vec()),
            },
        ],
        vec![
            // the node moves on, its catalog changes, its exports shrink
            Write::Node {
                certname: "a".into(),
                view: view(NodeState::Queued(Lane::Cycle), 20),
            },
            Write::Catalog {
                certname: "a".into(),
                hash: "c2".into(),
                changed_at: Time::from_secs(21),
                exports: vec![export("a", "p9")],
                body: Some(body("a", 2)),
            },
            // a run of uploads, one node twice: its last one wins
            Write::Facts {
                certname: "a".into(),
                values: b"{\"x\":2}".to_vec(),
                hash: "h2".into(),
                at: Time::from_secs(22),
            },
            Write::Facts {
                certname: "b".into(),
                values: b"{\"y\":1}".to_vec(),
                hash: "hb0".into(),
                at: Time::from_secs(22),
            },
            Write::Facts {
                certname: "a".into(),
                values: b"{\"x\":3}".to_vec(),
                hash: "h3".into(),
                at: Time::from_secs(23),
            },
            Write::FactsHash {
                certname: "b".into(),
                hash: "hb".into(),
            },
            Write::CatalogLost {
                certname: "c".into(),
            },
            Write::Remove {
                certname: "stranger".into(),
            },
            // a deploy replaces one baseline; code changed without one
            // forgets the other
            Write::Baseline {
                environment: "production".into(),
                snapshot: Some(b"p2".to_vec()),
            },
            Write::Baseline {
                environment: "staging".into(),
                snapshot: None,
            },
        ],
    ]
}

/// What a store holds, as the daemon reads it at start.
fn snapshot(s: &mut dyn Store) -> String {
    let nodes = s.load().expect("load");
    let exports = s.exports().expect("exports");
    let owners = s.facts_owners().expect("owners");
    let facts: Vec<Option<Vec<u8>>> = ["a", "b", "stranger"]
        .iter()
        .map(|n| s.facts(n).expect("facts"))
        .collect();
    let baselines = s.baselines().expect("baselines");
    format!("{nodes:#?}\n{exports:#?}\n{owners:?}\n{facts:?}\n{baselines:?}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_writes_give_the_same_state_in_sqlite_and_postgresql() {
    alone(the_same_writes_give_the_same_state_in_sqlite_and_postgresql_body).await;
}

fn the_same_writes_give_the_same_state_in_sqlite_and_postgresql_body() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = Database::new();
    let mut sqlite = SqliteStore::open(dir.path()).expect("SQLite");
    let mut pg = PostgresStore::open(&db.connection()).expect("PostgreSQL");
    for batch in history() {
        sqlite.write(&batch).expect("SQLite write");
        pg.write(&batch).expect("PostgreSQL write");
    }
    let (a, b) = (snapshot(&mut sqlite), snapshot(&mut pg));
    assert_eq!(a, b);
    // and what they hold is what was written
    let nodes = pg.load().expect("load");
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0].catalog_hash.as_deref(), Some("c2"));
    assert_eq!(nodes[0].view.state, NodeState::Queued(Lane::Cycle));
    assert_eq!(nodes[1].facts_hash.as_deref(), Some("hb"));
    assert_eq!(
        nodes[1].last_error.as_deref(),
        Some("Evaluation Error: boom")
    );
    assert_eq!(nodes[2].catalog_hash, None, "the lost catalog is forgotten");
    assert_eq!(pg.exports().expect("exports").len(), 2);
    assert_eq!(pg.facts("stranger").expect("facts"), None);
    assert_eq!(
        pg.facts("a").expect("facts").as_deref(),
        Some(&b"{\"x\":3}"[..]),
        "the last upload of a run wins"
    );
    assert_eq!(nodes[0].facts_hash.as_deref(), Some("h3"));
    assert_eq!(
        pg.baselines().expect("baselines"),
        [("production".to_string(), b"p2".to_vec())],
        "the last deploy's baseline; none where code changed without one"
    );
    // a store opened again reads the same (the state survives the process)
    drop(pg);
    let mut pg = PostgresStore::open(&db.connection()).expect("reopened");
    assert_eq!(snapshot(&mut pg), a);
    // the catalogs: the last one of a, none of c (lost) or b (never had one)
    let reads = Shared::new(&db.connection()).expect("reads");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let read = |n: &str| runtime.block_on(reads.read(n)).expect("read");
    assert_eq!(
        read("a"),
        Some(StoredCatalog {
            hash: "c2".into(),
            json: catalog_json("a", 2)
        })
    );
    assert_eq!(read("c"), None, "a lost catalog is not served");
    assert_eq!(read("b"), None);
    assert_eq!(
        runtime.block_on(reads.hashes()).expect("hashes"),
        vec![("a".to_string(), "c2".to_string())]
    );
    // many at once (a start's link reload): the same, in one round trip
    let many = runtime
        .block_on(reads.read_many(&["a", "b", "c", "nobody"]))
        .expect("read many");
    assert_eq!(many.len(), 1, "only a has a catalog");
    assert_eq!(many[0].0, "a");
    assert_eq!(many[0].1.as_ref().ok(), read("a").as_ref());
    // a removed node's catalog goes with it
    pg.write(&[Write::Remove {
        certname: "a".into(),
    }])
    .expect("remove");
    assert_eq!(read("a"), None, "a removed node's catalog is gone");
    drop(reads);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_batch_leaves_nothing_behind() {
    alone(a_failed_batch_leaves_nothing_behind_body).await;
}

fn a_failed_batch_leaves_nothing_behind_body() {
    let db = Database::new();
    let mut pg = PostgresStore::open(&db.connection()).expect("PostgreSQL");
    db.client()
        .batch_execute(
            "CREATE FUNCTION no_b() RETURNS trigger AS $$ BEGIN
                 IF NEW.certname = 'b' THEN RAISE EXCEPTION 'no b'; END IF; RETURN NEW;
             END $$ LANGUAGE plpgsql;
             CREATE TRIGGER no_b BEFORE INSERT ON nodes FOR EACH ROW EXECUTE FUNCTION no_b();",
        )
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
    let e = pg.write(&batch).expect_err("the trigger refuses b");
    assert!(e.to_string().contains("no b"), "{e}");
    assert!(pg.load().expect("load").is_empty(), "all or nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_scheduler_per_database() {
    alone(one_scheduler_per_database_body).await;
}

fn one_scheduler_per_database_body() {
    let db = Database::new();
    let first = PostgresStore::open(&db.connection()).expect("the first");
    assert_eq!(first.epoch(), 1);
    match PostgresStore::open(&db.connection()) {
        Err(StoreError::Standby(why)) => {
            assert!(why.contains("another pcq serve leads"), "{why}");
            assert!(why.contains("epoch 1"), "{why}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second leader on one database"),
    }
    // a leader stopping gives the lead up at once
    drop(first);
    let mut second = PostgresStore::open(&db.connection()).expect("the lead is free again");
    assert_eq!(second.epoch(), 2, "each leader a new epoch");
    second.write(&history()[0]).expect("and it writes");
}

/// The leader's row: (epoch, holder).
fn leader(db: &Database) -> (i64, String) {
    let row = db
        .client()
        .query_one("SELECT epoch, holder FROM pcq_leader", &[])
        .expect("leader");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_past_its_lease_is_fenced_out() {
    alone(a_leader_paused_past_its_lease_is_fenced_out_body).await;
}

fn a_leader_paused_past_its_lease_is_fenced_out_body() {
    let db = Database::new();
    let lease = Duration::from_millis(1500);
    let mut old = PostgresStore::open_with(&db.connection(), lease).expect("the first");
    old.write(&history()[0]).expect("the leader writes");
    let held = old.lease().expect("a shared store has a lease");
    assert!(held.holds());
    // a commit renews the lease: the standby waits
    std::thread::sleep(lease / 2);
    old.renew().expect("renewed");
    std::thread::sleep(lease / 2);
    assert!(matches!(
        PostgresStore::open_with(&db.connection(), lease),
        Err(StoreError::Standby(_))
    ));
    let before = snapshot(&mut old);
    // the leader is "paused": no commit, no renewal, past its lease
    std::thread::sleep(lease + Duration::from_millis(300));
    assert!(
        !held.holds(),
        "the paused leader's own clock says it lapsed"
    );
    let mut new = PostgresStore::open_with(&db.connection(), lease).expect("a new leader");
    assert_eq!(new.epoch(), old.epoch() + 1);
    // the old one wakes: neither a commit nor a renewal gets through
    match old.write(&history()[1]) {
        Err(StoreError::Deposed(why)) => {
            assert!(
                why.contains("another pcq serve leads the queue now"),
                "{why}"
            )
        }
        other => panic!("a deposed leader wrote: {other:?}"),
    }
    assert!(matches!(old.renew(), Err(StoreError::Deposed(_))));
    assert!(!held.holds());
    assert_eq!(snapshot(&mut new), before, "nothing of the old leader's");
    // and its end does not give away the new one's lead
    drop(old);
    assert_eq!(leader(&db).0, new.epoch());
    let running: bool = db
        .client()
        .query_one("SELECT lease_until > now() FROM pcq_leader", &[])
        .expect("lease")
        .get(0);
    assert!(
        running,
        "the deposed leader's end released the new one's lease"
    );
    new.write(&history()[1]).expect("the new leader writes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_connection_comes_back_leading_or_not_at_all() {
    alone(a_broken_connection_comes_back_leading_or_not_at_all_body).await;
}

fn a_broken_connection_comes_back_leading_or_not_at_all_body() {
    let db = Database::new();
    let lease = Duration::from_secs(1);
    let mut pg = PostgresStore::open_with(&db.connection(), lease).expect("PostgreSQL");
    pg.write(&history()[0]).expect("write");
    // PostgreSQL drops the store's connection (as a restart does)
    let mut admin = db.client();
    let kill = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    );
    admin.batch_execute(&kill).expect("terminate");
    // the first use after it may fail (the break shows then); the store's
    // thread retries, and the retry connects again; its epoch says it
    // still leads
    let mut wrote = pg.write(&history()[1]);
    if wrote.is_err() {
        wrote = pg.write(&history()[1]);
    }
    wrote.expect("written after connecting again");
    assert_eq!(pg.load().expect("load").len(), 3);
    assert_eq!(leader(&db).0, pg.epoch(), "it still leads");

    // broken again, and paused past its lease while another takes the
    // lead: this one must not write
    admin.batch_execute(&kill).expect("terminate");
    std::thread::sleep(Duration::from_millis(1500));
    let mut other = PostgresStore::open(&db.connection()).expect("the other takes over");
    let mut refused = pg.write(&history()[0]);
    if !matches!(&refused, Err(StoreError::Deposed(_))) {
        refused = pg.write(&history()[0]);
    }
    match refused {
        Err(StoreError::Deposed(why)) => assert!(why.contains("leads the queue now"), "{why}"),
        other => panic!("a deposed store wrote: {other:?}"),
    }
    other.write(&history()[1]).expect("the new leader writes");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_run_once_and_a_newer_schema_is_refused() {
    alone(migrations_run_once_and_a_newer_schema_is_refused_body).await;
}

fn migrations_run_once_and_a_newer_schema_is_refused_body() {
    let db = Database::new();
    drop(PostgresStore::open(&db.connection()).expect("migrates"));
    drop(PostgresStore::open(&db.connection()).expect("already migrated"));
    let mut client = db.client();
    let versions: i64 = client
        .query_one("SELECT count(*) FROM pcq_schema", &[])
        .expect("schema")
        .get(0);
    assert_eq!(
        versions, 6,
        "nodes, catalogs, leader, inbox, baselines, requests"
    );
    client
        .batch_execute("INSERT INTO pcq_schema (version, name) VALUES (999, 'future')")
        .expect("a newer pcq's");
    match PostgresStore::open(&db.connection()) {
        Err(StoreError::Database(why)) => assert!(why.contains("newer"), "{why}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

/// `count` certnames `prefix-01.example.com`, ...
fn certnames(prefix: &str, count: usize) -> Vec<String> {
    (1..=count)
        .map(|i| format!("{prefix}-{i:02}.example.com"))
        .collect()
}

/// `pcq serve` on `db`, cycling as fast as 2 compiles at a time allow.
fn cycling_on_postgresql(db: &Database) -> PcqConfig {
    on_postgresql(
        PcqConfig::puppetserver()
            .cycle_every(Duration::ZERO)
            .max_concurrency(2),
        db,
    )
}

/// `pcq serve` keeps its state in `db`.
fn on_postgresql(config: PcqConfig, db: &Database) -> PcqConfig {
    config
        .set("store.kind", "\"postgresql\"")
        .set("store.url", &format!("\"{}\"", db.connection().url))
}

/// Waits up to `limit` for the database's leader to move past `epoch`:
/// how long it took, and the new epoch.
async fn new_leader(db: &Database, epoch: i64, limit: Duration) -> Option<(Duration, i64)> {
    let t = std::time::Instant::now();
    while t.elapsed() < limit {
        let now = apart(|| leader(db).0);
        if now > epoch {
            return Some((t.elapsed(), now));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Every node once in the database: (rows, distinct certnames, compiling).
fn rows_once(db: &Database) -> (i64, i64, i64) {
    apart(|| {
        let row = db
            .client()
            .query_one(
                "SELECT count(*), count(DISTINCT certname),
                        count(*) FILTER (WHERE state = 'compiling') FROM nodes",
                &[],
            )
            .expect("count");
        (row.get(0), row.get(1), row.get(2))
    })
}

/// The epoch a pcq says it leads in (0: it stands by).
async fn leads(pcq: &Pcq) -> i64 {
    metric(&pcq.metrics().await, "pcq_leader_epoch") as i64
}

/// Lines of a pcq's log that say a compile started.
fn starts_logged(pcq: &Pcq) -> usize {
    pcq.log_text().matches("compile started").count()
}

/// The compiles pcq's logs say they started, by node.
fn starts_by_node(logs: &[String]) -> BTreeMap<String, usize> {
    let mut by_node = BTreeMap::new();
    for line in logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("compile started"))
    {
        let node = line
            .split_once("certname=")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no certname in {line:?}"));
        *by_node.entry(node.to_string()).or_insert(0) += 1;
    }
    by_node
}

/// The nodes the database holds as compiling.
fn compiling(db: &Database) -> BTreeSet<String> {
    apart(|| {
        db.client()
            .query("SELECT certname FROM nodes WHERE state = 'compiling'", &[])
            .expect("compiling")
            .iter()
            .map(|r| r.get(0))
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_killed_during_compiles_fails_over_to_a_standby() {
    let _serial = harness::serial().await;
    let db = Database::new();
    let names = certnames("pg", 12);
    let config = cycling_on_postgresql(&db);
    harness::wait_server_idle().await;
    let since = harness::server_log_time();
    let (first, _) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(180)).await;
    assert!(
        !first.state_dir().join("state.db").exists(),
        "no SQLite beside PostgreSQL"
    );
    // a second daemon (its own state directory and ports) on the same
    // database stands by while the first leads
    let second = Pcq::start(&config).await;
    assert_eq!(leads(&second).await, 0, "a standby leads");
    let said = second
        .wait(Duration::from_secs(10), || async {
            second
                .log_text()
                .contains("another pcq serve leads the queue")
        })
        .await;
    assert!(said, "{}", second.log_text());
    assert_eq!(leads(&first).await, 1);

    let mut daemons = [first, second];
    let mut failovers = Vec::new();
    // each killed leader's epoch and the nodes it was compiling
    let mut interrupted = Vec::new();
    for round in 0..2 {
        let (leading, standing) = (round % 2, (round + 1) % 2);
        let epoch = apart(|| leader(&db).0);
        let busy = daemons[leading]
            .wait(Duration::from_secs(30), || async {
                !daemons[leading].queue().await["in_flight"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
            })
            .await;
        assert!(busy, "round {round}: nothing compiling");
        daemons[leading].kill9();
        // the database right after the crash: every node exactly once
        let (rows, distinct, running) = rows_once(&db);
        assert_eq!((rows, distinct), (12, 12), "round {round}");
        assert!(
            running >= 1,
            "round {round}: the running compiles are recorded"
        );
        interrupted.push((epoch, compiling(&db)));
        // the standby takes the lead once the dead one's lease lapses
        let Some((took, now)) = new_leader(&db, epoch, Duration::from_secs(10)).await else {
            panic!(
                "round {round}: no new leader within 10 s:\n{}",
                daemons[standing].log_text()
            );
        };
        assert_eq!(now, epoch + 1, "round {round}");
        let next = &daemons[standing];
        let up = next
            .wait(Duration::from_secs(20), || async {
                leads(next).await == now
            })
            .await;
        assert!(
            up,
            "round {round}: the new leader never led:\n{}",
            next.log_text()
        );
        failovers.push(took);
        let q = next.queue().await;
        assert_eq!(q["nodes"], 12, "round {round}: {q}");
        for n in &names {
            let s = next.status(n).await.unwrap_or_else(|| panic!("{n} lost"));
            assert!(!s["catalog_hash"].is_null(), "{n}: last good catalog lost");
        }
        let requeued = next
            .wait(Duration::from_secs(10), || async {
                metric(
                    &next.metrics().await,
                    "pcq_compiles_started_total{reason=\"requeued\"}",
                ) >= 1.0
            })
            .await;
        assert!(
            requeued,
            "round {round}: interrupted compiles not requeued first:\n{}",
            next.metrics().await
        );
        assert_eq!(
            metric(&next.metrics().await, "pcq_leader_epoch"),
            now as f64,
            "round {round}"
        );
        // the dead one comes back as the standby
        daemons[leading].restart().await;
    }
    eprintln!("failover after kill -9 (the new leader's epoch taken): {failovers:?}");
    // a node's facts reach the database: a catalog it can fetch
    let catalog = daemons[0].catalog(&names[0]).await.expect("a catalog");
    assert_eq!(catalog["name"], names[0].as_str());

    // Puppet Server's access log and pcq's records agree
    // the standby first: stopped first, the leader would hand it the lead
    assert_eq!(leads(&daemons[1]).await, 0, "the second stands by");
    daemons[1].terminate(Duration::from_secs(30));
    daemons[0].terminate(Duration::from_secs(30));
    harness::wait_server_idle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs: Vec<String> = daemons.iter().map(Pcq::log_text).collect();
    let served: Vec<_> = harness::server_compiles(&since)
        .into_iter()
        .filter(|c| c.node().is_some_and(|n| names.iter().any(|x| x == n)))
        .collect();
    agree_with_the_access_log(&served, &starts_by_node(&logs), &interrupted);
}

/// The compiles Puppet Server logged for a cluster's nodes (`served`) and
/// those pcq logged as started agree, across leaders killed in turn
/// (`interrupted`: each killed leader's epoch and the nodes it was
/// compiling):
/// - no two leaders compiled at once: every compile of an epoch started
///   before the first of the next;
/// - a killed leader's interrupted compiles were the next leader's first;
/// - the server compiled nothing pcq did not start; of what pcq started,
///   only a compile whose request had not left when its leader was killed
///   (at most `max_concurrency`, 2, per kill) never reached the server.
fn agree_with_the_access_log(
    served: &[harness::ServerCompile],
    started: &BTreeMap<String, usize>,
    interrupted: &[(i64, BTreeSet<String>)],
) {
    let mut by_epoch: BTreeMap<i64, Vec<&harness::ServerCompile>> = BTreeMap::new();
    for c in served {
        let epoch = c
            .epoch()
            .unwrap_or_else(|| panic!("no leader epoch: {c:?}"));
        by_epoch.entry(epoch).or_default().push(c);
    }
    for list in by_epoch.values_mut() {
        list.sort_by_key(|c| c.start_ms);
    }
    let epochs: Vec<i64> = by_epoch.keys().copied().collect();
    assert_eq!(epochs, [1, 2, 3], "the leaders that compiled");
    for pair in epochs.windows(2) {
        let last = by_epoch[&pair[0]].iter().map(|c| c.start_ms).max();
        let next = by_epoch[&pair[1]].first().map(|c| c.start_ms);
        assert!(
            last < next,
            "epoch {} started a compile at {last:?} ms, after epoch {} started one at {next:?}",
            pair[0],
            pair[1]
        );
    }
    for (epoch, nodes) in interrupted {
        let first: BTreeSet<&str> = by_epoch[&(epoch + 1)]
            .iter()
            .take(2)
            .filter_map(|c| c.node())
            .collect();
        for n in nodes {
            assert!(
                first.contains(n.as_str()),
                "{n}, interrupted in epoch {epoch}, was not among epoch {}'s first compiles {first:?}",
                epoch + 1
            );
        }
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for c in served {
        *seen.entry(c.node().unwrap_or_default()).or_insert(0) += 1;
    }
    let mut missing = 0;
    for (node, n) in &seen {
        let s = started.get(*node).copied().unwrap_or(0);
        assert!(
            *n <= s,
            "Puppet Server compiled {node} {n} times, pcq started it {s} times"
        );
    }
    for (node, s) in started {
        missing += s - seen.get(node.as_str()).copied().unwrap_or(0).min(*s);
    }
    assert!(
        missing <= 2 * interrupted.len(),
        "{missing} compiles pcq started never reached Puppet Server: started {started:?}, served {seen:?}"
    );
    eprintln!(
        "access log: {} compiles in epochs {epochs:?}; pcq logged {}; {missing} never sent",
        served.len(),
        started.values().sum::<usize>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_past_its_lease_starts_nothing_and_steps_down() {
    let _serial = harness::serial().await;
    let db = Database::new();
    let names = certnames("pgstop", 6);
    let config = cycling_on_postgresql(&db);
    let since = harness::server_log_time();
    let (mut first, _) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(180)).await;
    let second = Pcq::start(&config).await;
    let epoch = apart(|| leader(&db).0);
    let pid = first.pid().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started_before = starts_logged(&first);
    let Some((took, now)) = new_leader(&db, epoch, Duration::from_secs(15)).await else {
        signal("-CONT");
        panic!(
            "no new leader while the first was stopped:\n{}",
            second.log_text()
        );
    };
    let up = second
        .wait(Duration::from_secs(20), || async {
            leads(&second).await == now
        })
        .await;
    assert!(up, "the new leader never led:\n{}", second.log_text());
    // the paused leader wakes past its lease: it starts nothing, writes
    // nothing, and stops
    let woke_ms = harness::server_now_ms();
    signal("-CONT");
    let Some(status) = first.exited(Duration::from_secs(15)) else {
        panic!("the deposed leader ran on:\n{}", first.log_text());
    };
    assert!(!status.success(), "the deposed leader exited 0");
    let said = first.log_text();
    assert!(
        said.contains("another pcq serve leads the queue now"),
        "{said}"
    );
    assert_eq!(
        starts_logged(&first),
        started_before,
        "the deposed leader started a compile after it woke:\n{said}"
    );
    assert_eq!(apart(|| leader(&db).0), now, "the new leader still leads");
    let (rows, distinct, _) = rows_once(&db);
    assert_eq!((rows, distinct), (6, 6));
    // and Puppet Server agrees: no compile of the old epoch arrived after
    // it woke
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late: Vec<_> = harness::server_compiles(&since)
        .into_iter()
        .filter(|c| c.epoch() == Some(epoch) && c.start_ms >= woke_ms)
        .collect();
    assert!(
        // (at most the compiles it had started before it was stopped,
        // whose request had not left yet: max_concurrency)
        late.len() <= 2,
        "the deposed leader compiled after it woke: {late:?}"
    );
    eprintln!("a new leader {took:?} after the first was stopped");
}

/// A POST to `pcq`'s admin API: status and text.
async fn admin_post(pcq: &Pcq, path: &str, body: &[u8]) -> (u16, String) {
    pcq.request(harness::Via::Admin, reqwest::Method::POST, path, body)
        .await
}

/// A deploy of `production` through `pcq`'s admin API: its report.
async fn deploy_production(pcq: &Pcq) -> Value {
    let (status, text) = admin_post(pcq, "/v1/deploys", br#"{"environment": "production"}"#).await;
    assert_eq!(status, 202, "{text}");
    serde_json::from_str(&text).expect("a deploy report")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_leader_diffs_a_deploy_against_the_baseline_the_last_one_stored() {
    let _serial = harness::serial().await;
    let db = Database::new();
    let names = certnames("pgbase", 3);
    let config = on_postgresql(
        PcqConfig::puppetserver()
            .cycle_every(Duration::from_secs(3600))
            .no_load_gate(),
        &db,
    );
    let (mut first, _) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(180)).await;
    let second = Pcq::start(&config).await;
    // the first deploy has nothing to diff against: every node
    let report = deploy_production(&first).await;
    assert_eq!(report["narrowed"], false, "{report}");
    assert_eq!(report["affected"], 3, "{report}");
    // its baseline reaches the database with the nodes it moved
    let stored = first
        .wait(Duration::from_secs(10), || async {
            apart(|| {
                db.client()
                    .query_one(
                        "SELECT count(*) FROM baselines WHERE environment = 'production'",
                        &[],
                    )
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(0)
            }) == 1
        })
        .await;
    assert!(stored, "no baseline stored:\n{}", first.log_text());
    // the first stops; the second leads, with the first's baseline: the
    // same code again moves nobody
    let (_, clean) = first.terminate(Duration::from_secs(30));
    assert!(clean, "{}", first.log_text());
    let up = second
        .wait(Duration::from_secs(20), || async {
            leads(&second).await > 0
        })
        .await;
    assert!(up, "the second never led:\n{}", second.log_text());
    // (once it has read each node's links back from its stored catalog: a
    // node without them would move as not analysed)
    for n in &names {
        assert!(
            second.wait_analysed(n, Duration::from_secs(60)).await,
            "{n} not analysed:\n{}",
            second.log_text()
        );
    }
    let report = deploy_production(&second).await;
    assert_eq!(
        (
            report["narrowed"].clone(),
            report["affected"].clone(),
            report["changed_files"].clone()
        ),
        (
            serde_json::json!(true),
            serde_json::json!(0),
            serde_json::json!(0)
        ),
        "the new leader did not diff against the stored baseline: {report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_serves_nodes_and_hands_their_uploads_to_the_leader() {
    let _serial = harness::serial().await;
    let db = Database::new();
    let names: Vec<String> = (1..=3)
        .map(|i| format!("pgsb-{i:02}.example.com"))
        .collect();
    let excluded = "pgsb-excluded.example.com";
    harness::ensure_certs(&[excluded.to_string()]);
    let config = on_postgresql(PcqConfig::puppetserver().cycle_off(), &db)
        .set("ca.exclude", &format!("[\"{excluded}\"]"));
    let (leader_pcq, _) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(180)).await;
    let standby = Pcq::start(&config).await;
    assert_eq!(leads(&standby).await, 0);

    // status and catalogs from the standby: the leader's, same ETags, 304s
    for n in &names {
        let (a, b) = (
            leader_pcq.status(n).await.expect("status"),
            standby.status(n).await.expect("the standby's status"),
        );
        assert_eq!(a["catalog_hash"], b["catalog_hash"], "{n}");
        assert_eq!(a["state"], b["state"], "{n}");
        let (status, etag, json) = leader_pcq.catalog_etag(n, None).await;
        assert_eq!(status, 200);
        let (status, tag, body) = standby.catalog_etag(n, None).await;
        assert_eq!((status, &tag, &body), (200, &etag, &json), "{n}");
        let (status, _, _) = standby.catalog_etag(n, etag.as_deref()).await;
        assert_eq!(status, 304, "{n}");
    }
    assert!(standby.status("nobody.example.com").await.is_none());
    // the queue is the leader's alone
    assert_eq!(standby.http_status("/v1/queue").await, Some(503));
    // an excluded certname's upload is refused by both, as the leader
    // alone would refuse it: never acknowledged, then dropped
    let body = harness::facts_body(excluded, "db", 1);
    for pcq in [&standby, &leader_pcq] {
        let (status, text, _) = pcq.put_facts_raw(excluded, &body).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("ca.exclude"), "{text}");
    }
    let handed_in: i64 = apart(|| {
        db.client()
            .query_one(
                "SELECT count(*) FROM pcq_inbox WHERE certname = $1",
                &[&excluded],
            )
            .expect("inbox")
            .get(0)
    });
    assert_eq!(handed_in, 0, "an excluded upload was handed in");
    // values the leader could not parse are refused by the standby too
    let bad = format!(r#"{{"name": "{}", "values": {{"x": 1e400}}}}"#, names[2]);
    let path = format!("/puppet/v3/facts/{}", names[2]);
    let (status, text) = standby
        .request(
            harness::Via::Tls(&names[2]),
            reqwest::Method::PUT,
            &path,
            bad.as_bytes(),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("values"), "{text}");

    // a used fact's change uploaded to the standby reaches a compile as
    // fast as one uploaded to the leader
    let role_db =
        |c: Option<Value>| c.is_some_and(|c| c.to_string().contains("This node's role: db"));
    let (db0, db1) = (
        harness::facts_body(&names[0], "db", 1),
        harness::facts_body(&names[1], "db", 1),
    );
    let t = std::time::Instant::now();
    let (via_standby, via_leader) = tokio::join!(
        standby.put_facts(&names[0], &db0),
        leader_pcq.put_facts(&names[1], &db1),
    );
    assert_eq!(via_standby.0, 200, "{:?}", via_standby.1);
    assert_eq!(via_leader.0, 200, "{:?}", via_leader.1);
    let (mut standby_took, mut leader_took) = (None, None);
    while t.elapsed() < Duration::from_secs(90) && (standby_took.is_none() || leader_took.is_none())
    {
        if standby_took.is_none() && role_db(leader_pcq.catalog(&names[0]).await) {
            standby_took = Some(t.elapsed());
        }
        if leader_took.is_none() && role_db(leader_pcq.catalog(&names[1]).await) {
            leader_took = Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (Some(standby_took), Some(leader_took)) = (standby_took, leader_took) else {
        panic!(
            "not compiled: via the standby {standby_took:?}, via the leader {leader_took:?}\n{}",
            leader_pcq.log_text()
        );
    };
    let metrics = leader_pcq.metrics().await;
    let compile = metric_sum(&metrics, "pcq_compile_duration_seconds_sum")
        / metric_sum(&metrics, "pcq_compile_duration_seconds_count").max(1.0);
    eprintln!(
        "a used fact's change to a catalog: via the standby {standby_took:?}, via the leader \
         {leader_took:?} (a compile: {compile:.2} s)"
    );
    assert!(
        standby_took.as_secs_f64() <= leader_took.as_secs_f64() + compile.max(0.5) + 0.5,
        "via the standby {standby_took:?}, via the leader {leader_took:?}, a compile {compile:.2} s"
    );
    // the standby's copy of the new catalog: the same ETag as the leader's
    let (_, etag, _) = leader_pcq.catalog_etag(&names[0], None).await;
    let (_, tag, _) = standby.catalog_etag(&names[0], None).await;
    assert_eq!(tag, etag);
    // the handed-in upload is gone from the inbox once acted on
    let left: i64 = apart(|| {
        db.client()
            .query_one("SELECT count(*) FROM pcq_inbox", &[])
            .expect("inbox")
            .get(0)
    });
    assert_eq!(left, 0, "the inbox keeps an upload acted on");
    assert!(
        metric(
            &standby.metrics().await,
            "pcq_facts_uploads_total{result=\"handed_in\"}"
        ) >= 1.0
    );
    // (after the timing above: a deploy's compiles would skew it)
    // bumps and deploys through the standby get the leader's own answers
    let compiled_before = leader_pcq.status(&names[2]).await.expect("status")["last_compile"]
        .as_f64()
        .unwrap_or(0.0);
    let bump = format!("/v1/nodes/{}/bump", names[2]);
    let (status, text) = admin_post(&standby, &bump, b"").await;
    assert_eq!(status, 202, "{text}");
    assert!(text.contains("\"result\""), "{text}");
    let recompiled = leader_pcq
        .wait(Duration::from_secs(60), || async {
            leader_pcq.status(&names[2]).await.expect("status")["last_compile"]
                .as_f64()
                .is_some_and(|t| t > compiled_before)
        })
        .await;
    assert!(recompiled, "the bump through the standby compiled nothing");
    let (status, text) = admin_post(&standby, "/v1/nodes/nobody.example.com/bump", b"").await;
    assert_eq!(status, 404, "the leader's refusal: {text}");
    let report = deploy_production(&standby).await;
    assert_eq!(report["environment"], "production", "{report}");
    assert_eq!(report["members"], 3, "{report}");
    let (status, text) = admin_post(
        &standby,
        "/v1/deploys",
        br#"{"environment": "no_such_environment"}"#,
    )
    .await;
    assert_eq!(status, 404, "the leader's refusal: {text}");
    assert!(text.contains("unknown environment"), "{text}");
    let answered: i64 = apart(|| {
        db.client()
            .query_one("SELECT count(*) FROM pcq_requests", &[])
            .expect("requests")
            .get(0)
    });
    assert_eq!(answered, 0, "answered requests are forgotten");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_catalog_kept_in_postgresql_is_served_by_a_daemon_that_never_compiled_it() {
    let _serial = harness::serial().await;
    let db = Database::new();
    let names: Vec<String> = (1..=3)
        .map(|i| format!("pgcat-{i:02}.example.com"))
        .collect();
    let config = on_postgresql(PcqConfig::puppetserver().cycle_off(), &db);
    let (mut first, _) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(180)).await;
    assert!(
        !first.state_dir().join("catalogs").exists(),
        "no catalog files beside PostgreSQL"
    );
    let mut served = Vec::new();
    for n in &names {
        let (status, etag, json) = first.catalog_etag(n, None).await;
        assert_eq!(status, 200, "{n}");
        let hash = first.status(n).await.expect("status")["catalog_hash"].clone();
        assert_eq!(
            etag,
            Some(format!("\"{}\"", hash.as_str().expect("a hash")))
        );
        served.push((etag.expect("an ETag"), json));
    }
    // stored compressed, a fraction of the JSON
    let (stored, plain): (i64, usize) = (
        apart(|| {
            db.client()
                .query_one("SELECT sum(octet_length(body))::bigint FROM catalogs", &[])
                .expect("sizes")
                .get(0)
        }),
        served.iter().map(|(_, json)| json.len()).sum(),
    );
    assert!(
        stored > 0 && (stored as usize) < plain / 2,
        "{stored} of {plain} bytes"
    );

    // the first daemon stops; another, with a state directory of its own,
    // serves the same catalogs under the same ETags without compiling
    let (_, clean) = first.terminate(Duration::from_secs(30));
    assert!(clean, "the first pcq did not stop:\n{}", first.log_text());
    let second = Pcq::start(&config).await;
    assert_ne!(second.state_dir(), first.state_dir());
    for (n, (etag, json)) in names.iter().zip(&served) {
        let (status, tag, body) = second.catalog_etag(n, None).await;
        assert_eq!((status, tag.as_ref()), (200, Some(etag)), "{n}");
        assert_eq!(&body, json, "{n}: another body");
        let (status, tag, _) = second.catalog_etag(n, Some(etag)).await;
        assert_eq!((status, tag.as_ref()), (304, Some(etag)), "{n}");
    }
    // what each catalog depends on comes from the stored catalogs too
    // (read back many per round trip once the code is analysed)
    for n in &names {
        assert!(
            second.wait_analysed(n, Duration::from_secs(60)).await,
            "{n}: no dependencies read back from its stored catalog:\n{}",
            second.log_text()
        );
    }
    let started = metric_sum(&second.metrics().await, "pcq_compiles_started_total");
    assert_eq!(started, 0.0, "the second pcq compiled to serve");
}

/// The machine's PostgreSQL cluster, stopped and started as its service
/// would be (`pg_ctlcluster`, run as root).
fn cluster(action: &str) {
    let list = std::process::Command::new("pg_lsclusters")
        .arg("--no-header")
        .output()
        .expect("pg_lsclusters");
    let text = String::from_utf8_lossy(&list.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("5432"))
        .unwrap_or_else(|| panic!("no cluster on 5432: {text}"));
    let mut fields = line.split_whitespace();
    let (version, name) = (
        fields.next().expect("version"),
        fields.next().expect("name"),
    );
    let mut args = vec![version, name, action];
    if action == "stop" {
        args.extend(["-m", "fast"]);
    }
    let status = std::process::Command::new("pg_ctlcluster")
        .args(&args)
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {args:?}: {status}");
}

/// Starts the cluster again if a test stopped it and then failed.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("bash")
                .args(["-c", "pg_lsclusters --no-header | awk '$3 == 5432 {print $1, $2}' | xargs -r -n2 sh -c 'pg_ctlcluster $0 $1 start'"])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_restarted_for_30_s_refuses_uploads_meanwhile_and_resumes() {
    let _serial = harness::serial().await;
    let db = Database::new();
    let names = certnames("pgdown", 4);
    let config = cycling_on_postgresql(&db);
    let (mut pcq, _) =
        Pcq::start_compiled(&config, &names, with_role("web"), Duration::from_secs(180)).await;
    let _start_again = StartAgain;

    cluster("stop");
    let down = std::time::Instant::now();
    let mut refused = 0;
    let mut unhealthy = false;
    while down.elapsed() < Duration::from_secs(30) {
        let body = harness::facts_body(&names[0], "db", 1);
        let upload = pcq.put_facts_raw(&names[0], &body);
        let Ok((status, _, retry_after)) =
            tokio::time::timeout(Duration::from_secs(10), upload).await
        else {
            panic!("an upload hung during the outage:\n{}", pcq.log_text());
        };
        match status {
            503 => {
                refused += 1;
                assert_eq!(retry_after.as_deref(), Some("2"), "503 says when to retry");
            }
            200 => {} // taken before pcq's next commit found the database gone
            other => panic!("an upload during the outage answered {other}"),
        }
        unhealthy |= pcq.http_status("/healthz").await == Some(503);
        assert!(
            pcq.exited(Duration::from_millis(1)).is_none(),
            "pcq ended:\n{}",
            pcq.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        refused > 0,
        "no upload was refused while PostgreSQL was down"
    );
    assert!(unhealthy, "/healthz never said the store was down");
    cluster("start");

    // everything resumes: healthy, uploads taken, a used fact's change
    // compiled, nobody blamed
    let back = pcq
        .wait(Duration::from_secs(60), || async { pcq.healthy().await })
        .await;
    assert!(back, "not healthy again:\n{}", pcq.log_text());
    let (status, _, _) = pcq
        .put_facts_raw(&names[1], &harness::facts_body(&names[1], "db", 1))
        .await;
    assert_eq!(status, 200);
    let recompiled = pcq
        .wait(Duration::from_secs(120), || async {
            pcq.catalog(&names[1])
                .await
                .is_some_and(|c| c.to_string().contains("This node's role: db"))
        })
        .await;
    assert!(
        recompiled,
        "the new facts were not compiled:\n{}",
        pcq.log_text()
    );
    // compiles that found the store down were deferred, not failed: no
    // failure counted (one backoff step's wait, as for any deferral), and
    // the next compile clears the note
    for n in &names {
        let s = pcq.status(n).await.expect("status");
        assert_eq!(s["failures"], 0, "{n} blamed: {s}");
    }
    let cleared = pcq
        .wait(Duration::from_secs(90), || async {
            let mut all = true;
            for n in &names {
                all &= pcq
                    .status(n)
                    .await
                    .is_some_and(|s| s["last_error"].is_null());
            }
            all
        })
        .await;
    assert!(cleared, "a deferral's note stayed after a good compile");
    assert!(pcq.exited(Duration::from_millis(1)).is_none());
    pcq.kill9();
}
