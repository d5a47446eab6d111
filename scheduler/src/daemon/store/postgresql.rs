//! The shared store: PostgreSQL, as PuppetDB uses it.
//!
//! It holds what the SQLite store holds (nodes, facts, exports; the same
//! columns, [`super::row`]), in a database of its own, so a site runs pcq's
//! state where it already runs PuppetDB's: backed up, replicated and
//! monitored the way it already is.
//!
//! **One scheduler per database, elected.** The daemon that opens the
//! store takes the lead: the one row of `pcq_leader`, when its lease has
//! lapsed, gets a new epoch, this daemon's name and a lease of [`LEASE`]
//! on the database's clock. Another `pcq serve` finds the lease running
//! and stands by ([`StoreError::Standby`]), trying again until it lapses.
//! **Fencing:** every transaction the leader commits first extends the
//! lease where the epoch is still its own, and is refused (rolled back,
//! [`StoreError::Deposed`]) where it is not; when idle the store thread
//! renews it every [`RENEW_EVERY`]. Each successful renewal also tells the
//! daemon, by its own monotonic clock, how long it may act ([`Lease`]):
//! a leader paused past its lease (SIGSTOP) starts nothing when it runs
//! again, and its next commit finds the epoch moved on, so it stops. A
//! daemon stopping cleanly gives the lease up at once. A connection that
//! breaks (PostgreSQL restarted) is made again; the epoch decides whether
//! this daemon still leads.
//!
//! **Migrations** are SQL files in `store/migrations/`, numbered, embedded
//! in the binary, and applied in order in one transaction under a
//! transaction-level advisory lock (two daemons starting at once migrate
//! once). A database migrated by a newer pcq is refused, never written.
//!
//! **TLS** as PuppetDB allows it: `sslmode=require` in the URL (rustls,
//! which always verifies the server's certificate and name) against the
//! system's roots or `ca_file` (Puppet's CA, for a PostgreSQL that uses
//! Puppet's certificates); `sslmode=disable` for a local socket or
//! loopback.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::interface::{Lease, Store, StoreError, StoredNode, Write};
use super::row::{micros, pending_text, state_text, NodeRow, NODE_COLUMNS};
use crate::daemon::catalog::Export;

/// How long a leader's lease runs past its last commit or renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often an idle leader renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How much sooner than the database the leader counts its own lease as
/// lapsed (hosts' clocks run at slightly different rates, and a renewal is
/// counted from before it was sent).
const MARGIN: Duration = Duration::from_secs(1);
/// The transaction advisory lock migrations take.
const MIGRATION_LOCK: i64 = 0x0070_6372;

/// The migrations, in order: (version, name, SQL).
const MIGRATIONS: [(i32, &str, &str); 6] = [
    (1, "nodes", include_str!("migrations/0001_nodes.sql")),
    (2, "catalogs", include_str!("migrations/0002_catalogs.sql")),
    (3, "leader", include_str!("migrations/0003_leader.sql")),
    (4, "inbox", include_str!("migrations/0004_inbox.sql")),
    (
        5,
        "baselines",
        include_str!("migrations/0005_baselines.sql"),
    ),
    (6, "requests", include_str!("migrations/0006_requests.sql")),
];

/// Where the database is, and how to trust it.
#[derive(Clone, Debug)]
pub struct Connection {
    /// A libpq connection string or URL
    /// (`postgresql://pcq@db.example.com/pcq?sslmode=require`).
    pub url: String,
    /// PEM roots for TLS (default: the system's).
    pub ca_file: Option<PathBuf>,
}

/// `url` with its password hidden, for printing.
pub fn redacted(url: &str) -> String {
    let password = url.parse::<postgres::Config>().ok().and_then(|c| {
        c.get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    });
    match password {
        None => url.to_string(),
        Some(p) if !p.is_empty() && url.contains(&p) => url.replace(&p, "********"),
        Some(_) => "(set; it holds a password)".to_string(),
    }
}

/// The PostgreSQL store.
pub struct PostgresStore {
    connection: Connection,
    db: Client,
    statements: Statements,
    /// The connection failed in a way that ends it (the server went away,
    /// or ended the session): connect again before the next use.
    broken: bool,
    /// This daemon's epoch as the leader.
    epoch: i64,
    /// How long the lease runs.
    lease_length: Duration,
    /// How long this daemon may act, by its own clock.
    lease: Arc<Lease>,
}

/// The writes' statements, prepared on the connection.
struct Statements {
    /// Extends the lease where the epoch is still this daemon's.
    fence: Statement,
    node: Statement,
    facts: Statement,
    /// A run of uploads' facts in one statement each (group commit hands
    /// thousands at once; a statement per row is a round trip per row).
    facts_many: Statement,
    facts_hash_many: Statement,
    facts_hash: Statement,
    catalog: Statement,
    catalog_body: Statement,
    delete_exports: Statement,
    export: Statement,
    error: Statement,
    catalog_lost: [Statement; 2],
    remove: [Statement; 4],
}

/// Why a use of the database failed.
enum Failure {
    /// PostgreSQL (or the way to it) said no.
    Database(postgres::Error),
    /// A row it returned is not one pcq writes.
    Store(StoreError),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Failure {
        Failure::Database(e)
    }
}

/// Does this error end the connection (a new one is needed)? Only when
/// the session is gone: a session still alive holds the queue's lock, and
/// a second one of this pcq's would find it taken.
pub(super) fn ends_connection(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        // I/O: the server is gone
        None => true,
        Some(db) => {
            let code = db.code().code();
            // connection exceptions; the server shutting down or ending
            // the session (57P01 admin, 57P02 crash, 57P03 starting up)
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }
    }
}

/// Is a failed connect an outage that passes (the server down, starting,
/// full), rather than a refusal that will not (a wrong password, a
/// database that is gone, pg_hba)?
fn connect_outage(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_))
}

/// A connect's error: an outage or a refusal.
pub(super) fn connect_err(e: postgres::Error) -> StoreError {
    let outage = match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || matches!(code, "57P03" | "53300")
        }
    };
    if outage {
        StoreError::Unavailable(format!("PostgreSQL: {e}"))
    } else {
        db_err(e)
    }
}

/// Text as PostgreSQL takes it: `text` refuses NUL, which SQLite keeps
/// (a compile error or an export's title may carry one from a node's
/// facts); it becomes U+FFFD rather than fail the whole batch.
fn text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

pub(super) fn db_err(e: postgres::Error) -> StoreError {
    // the server's own message (with its detail) where it sent one
    match e.as_db_error() {
        Some(db) => StoreError::Database(format!("PostgreSQL: {}", db.message())),
        None => StoreError::Database(format!("PostgreSQL: {e}")),
    }
}

pub(super) fn tls(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| StoreError::Database(format!("{}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert =
                    cert.map_err(|e| StoreError::Database(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Database(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl PostgresStore {
    /// Connects, migrates the schema, and takes the lead:
    /// [`StoreError::Standby`] while another `pcq serve`'s lease runs.
    pub fn open(connection: &Connection) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_with(connection, LEASE)
    }

    /// [`PostgresStore::open`] with a lease of `lease_length` (tests).
    pub fn open_with(
        connection: &Connection,
        lease_length: Duration,
    ) -> Result<PostgresStore, StoreError> {
        let mut db = connect(connection)?;
        // (migrations only add: one run by a standby leaves the leader's
        // tables as they were)
        migrate(&mut db)?;
        let sent = Instant::now();
        let epoch = take_lead(&mut db, lease_length)?;
        let lease = Arc::new(Lease::default());
        lease.hold_until(sent + lease_length.saturating_sub(MARGIN));
        let statements = Statements::prepare(&mut db)?;
        Ok(PostgresStore {
            connection: connection.clone(),
            db,
            statements,
            broken: false,
            epoch,
            lease_length,
            lease,
        })
    }

    /// A connection that broke is made again, with the lock, before
    /// anything is written through it.
    fn reconnect_if_closed(&mut self) -> Result<(), StoreError> {
        if !self.broken && !self.db.is_closed() {
            return Ok(());
        }
        self.broken = true;
        tracing::warn!("the connection to PostgreSQL broke; connecting again");
        let mut db = match connect(&self.connection) {
            Ok(db) => db,
            Err(e) => {
                // a server down is waited out; a refusal is not
                self.broken = connect_outage(&e);
                return Err(e);
            }
        };
        self.statements = Statements::prepare(&mut db)?;
        self.db = db;
        self.broken = false;
        // whether this daemon still leads, its next commit's fence says
        tracing::info!("connected to PostgreSQL again");
        Ok(())
    }
}

/// The connection's settings: the URL's, with pcq's name and timeouts
/// where it sets none.
pub(super) fn settings(connection: &Connection) -> Result<tokio_postgres::Config, StoreError> {
    let mut config = tokio_postgres::Config::from_str(&connection.url)
        .map_err(|e| StoreError::Database(format!("store.url: {e}")))?;
    if config.get_application_name().is_none() {
        config.application_name("pcq");
    }
    // a server that stops answering (half-open TCP) is an outage within
    // seconds, not a write blocked for the kernel's 15 minutes
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(std::time::Duration::from_secs(30));
    }
    Ok(config)
}

fn connect(connection: &Connection) -> Result<Client, StoreError> {
    postgres::Config::from(settings(connection)?)
        .connect(tls(connection.ca_file.as_deref())?)
        .map_err(connect_err)
}

/// This daemon's name in `pcq_leader`: host and process.
pub fn holder() -> String {
    format!(
        "{} pid {}",
        crate::puppet_conf::hostname(),
        std::process::id()
    )
}

/// What `pcq_leader` says, as a sentence (its query: [`LEADER`]).
fn leader_sentence(holder: &str, epoch: i64, since: &str) -> String {
    format!("{holder} (epoch {epoch}, since {since})")
}

/// Who leads: holder, epoch, since (text).
const LEADER: &str =
    "SELECT holder, epoch, to_char(since, 'YYYY-MM-DD HH24:MI:SS TZ') FROM pcq_leader";

/// Who leads, as a sentence.
fn leader_text(db: &mut Client) -> String {
    match db.query_one(LEADER, &[]) {
        Ok(row) => leader_sentence(
            &row.get::<_, String>(0),
            row.get(1),
            &row.get::<_, String>(2),
        ),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Takes the lead if the lease has lapsed: the new epoch.
fn take_lead(db: &mut Client, lease: Duration) -> Result<i64, StoreError> {
    let row = db
        .query_opt(
            "UPDATE pcq_leader SET epoch = epoch + 1, holder = $1, since = now(),
                    lease_until = now() + make_interval(secs => $2)
             WHERE id = 1 AND lease_until < now() RETURNING epoch",
            &[&holder(), &lease.as_secs_f64()],
        )
        .map_err(db_err)?;
    match row {
        Some(row) => {
            let epoch: i64 = row.get(0);
            tracing::info!("this pcq leads the queue (epoch {epoch})");
            Ok(epoch)
        }
        None => Err(StoreError::Standby(format!(
            "another pcq serve leads the queue on this database: {}; standing by",
            leader_text(db)
        ))),
    }
}

/// Applies the migrations this database lacks; refuses one migrated by a
/// newer pcq.
fn migrate(db: &mut Client) -> Result<(), StoreError> {
    let mut tx = db.transaction().map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS pcq_schema (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .map_err(db_err)?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM pcq_schema", &[])
        .map_err(db_err)?
        .get(0);
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        return Err(StoreError::Database(format!(
            "the database's schema is version {current}, newer than this pcq knows ({newest}): \
             run the newer pcq, or restore a backup"
        )));
    }
    for (version, name, sql) in MIGRATIONS {
        if version <= current {
            continue;
        }
        tx.batch_execute(sql).map_err(db_err)?;
        tx.execute(
            "INSERT INTO pcq_schema (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .map_err(db_err)?;
        tracing::info!("PostgreSQL schema migrated to version {version} ({name})");
    }
    tx.commit().map_err(db_err)
}

impl Statements {
    fn prepare(db: &mut Client) -> Result<Statements, StoreError> {
        let mut p = |sql: &str| db.prepare(sql).map_err(db_err);
        Ok(Statements {
            fence: p(
                "UPDATE pcq_leader SET lease_until = now() + make_interval(secs => $2)
                      WHERE id = 1 AND epoch = $1",
            )?,
            node: p(
                "INSERT INTO nodes (certname, environment, state, reason, since_us, pending,
                                        pending_since_us, last_compile_us, failures)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (certname) DO UPDATE SET
                        environment = excluded.environment, state = excluded.state,
                        reason = excluded.reason, since_us = excluded.since_us,
                        pending = excluded.pending, pending_since_us = excluded.pending_since_us,
                        last_compile_us = excluded.last_compile_us, failures = excluded.failures",
            )?,
            facts: p(
                "INSERT INTO facts (certname, values_json, updated_us) VALUES ($1, $2, $3)
                      ON CONFLICT (certname) DO UPDATE SET values_json = excluded.values_json,
                         updated_us = excluded.updated_us",
            )?,
            facts_hash: p("UPDATE nodes SET facts_hash = $2 WHERE certname = $1")?,
            facts_many: p("INSERT INTO facts (certname, values_json, updated_us)
                           SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[])
                           ON CONFLICT (certname) DO UPDATE SET
                              values_json = excluded.values_json,
                              updated_us = excluded.updated_us")?,
            facts_hash_many: p("UPDATE nodes SET facts_hash = v.hash
                                FROM unnest($1::text[], $2::text[]) AS v (certname, hash)
                                WHERE nodes.certname = v.certname")?,
            catalog: p(
                "UPDATE nodes SET catalog_hash = $2, catalog_changed_us = $3, last_error = NULL
                 WHERE certname = $1",
            )?,
            catalog_body: p("INSERT INTO catalogs (certname, hash, body, stored_us)
                             VALUES ($1, $2, $3, $4)
                             ON CONFLICT (certname) DO UPDATE SET hash = excluded.hash,
                                body = excluded.body, stored_us = excluded.stored_us")?,
            delete_exports: p("DELETE FROM exports WHERE certname = $1")?,
            export: p(
                "INSERT INTO exports (certname, type, title, parameters_hash)
                       VALUES ($1, $2, $3, $4)
                       ON CONFLICT (certname, type, title) DO UPDATE SET
                          parameters_hash = excluded.parameters_hash",
            )?,
            error: p("UPDATE nodes SET last_error = $2 WHERE certname = $1")?,
            catalog_lost: [
                p("UPDATE nodes SET catalog_hash = NULL WHERE certname = $1")?,
                p("DELETE FROM catalogs WHERE certname = $1")?,
            ],
            remove: [
                p("DELETE FROM nodes WHERE certname = $1")?,
                p("DELETE FROM facts WHERE certname = $1")?,
                p("DELETE FROM exports WHERE certname = $1")?,
                p("DELETE FROM catalogs WHERE certname = $1")?,
            ],
        })
    }
}

/// A node's row as [`NODE_COLUMNS`] selects it.
pub(super) fn node_row(r: &postgres::Row) -> NodeRow {
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
}

/// The most facts bytes one statement carries.
const FACTS_BYTES: usize = 64 << 20;

/// A run of `Write::Facts` as two statements: the facts, then the nodes'
/// hashes; a node's last upload in the run wins, as written one by one.
fn facts_at_once(
    tx: &mut postgres::Transaction<'_>,
    s: &Statements,
    run: &[Write],
) -> Result<(), postgres::Error> {
    let mut last = std::collections::HashMap::new();
    for (i, w) in run.iter().enumerate() {
        if let Write::Facts { certname, .. } = w {
            last.insert(certname.as_str(), i);
        }
    }
    let mut names = Vec::with_capacity(last.len());
    let mut values: Vec<&[u8]> = Vec::with_capacity(last.len());
    let mut ats = Vec::with_capacity(last.len());
    let mut hashes = Vec::with_capacity(last.len());
    for (i, w) in run.iter().enumerate() {
        if let Write::Facts {
            certname,
            values: v,
            hash,
            at,
        } = w
        {
            if last.get(certname.as_str()) == Some(&i) {
                names.push(certname.as_str());
                values.push(v);
                ats.push(micros(*at));
                hashes.push(hash.as_str());
            }
        }
    }
    // statements of at most FACTS_BYTES of facts each: PostgreSQL refuses
    // a message over 1 GB, and a retried batch must not grow into one
    let mut from = 0;
    while from < names.len() {
        let mut to = from;
        let mut bytes = 0;
        while to < names.len() && (to == from || bytes + values[to].len() <= FACTS_BYTES) {
            bytes += values[to].len();
            to += 1;
        }
        tx.execute(
            &s.facts_many,
            &[&&names[from..to], &&values[from..to], &&ats[from..to]],
        )?;
        tx.execute(&s.facts_hash_many, &[&&names[from..to], &&hashes[from..to]])?;
        from = to;
    }
    Ok(())
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Vec<StoredNode>, StoreError> {
        self.using(Self::load_now)
    }

    fn write(&mut self, batch: &[Write]) -> Result<(), StoreError> {
        self.using(|s| s.write_now(batch))
    }

    fn facts(&mut self, certname: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.using(|s| s.facts_now(certname))
    }

    fn exports(&mut self) -> Result<Vec<(String, Export)>, StoreError> {
        self.using(Self::exports_now)
    }

    fn facts_owners(&mut self) -> Result<Vec<String>, StoreError> {
        self.using(Self::facts_owners_now)
    }

    fn baselines(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.using(|s| {
            let rows = s.db.query(
                "SELECT environment, snapshot FROM baselines ORDER BY environment",
                &[],
            )?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// The connection broke or cannot be made: PostgreSQL restarting, or
    /// out of reach for a while.
    fn outage_passes(&self) -> bool {
        self.broken
    }

    fn lease(&self) -> Option<Arc<Lease>> {
        Some(self.lease.clone())
    }

    fn renew(&mut self) -> Result<(), StoreError> {
        self.using(Self::renew_now)
    }

    fn epoch(&self) -> i64 {
        self.epoch
    }
}

impl Drop for PostgresStore {
    /// A daemon stopping gives up the lead at once: a standby need not
    /// wait out the lease.
    fn drop(&mut self) {
        // the driver starts nothing more before the lead is given up
        self.lease.lapse();
        if self.broken || self.db.is_closed() {
            return;
        }
        let _ = self.db.execute(
            "UPDATE pcq_leader SET lease_until = '-infinity' WHERE id = 1 AND epoch = $1",
            &[&self.epoch],
        );
    }
}

impl PostgresStore {
    /// Runs `f` on a live connection (made again first if the last one
    /// broke), and notes a failure that ends this one.
    fn using<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        self.reconnect_if_closed()?;
        f(self).map_err(|e| match e {
            Failure::Database(e) => {
                if ends_connection(&e) {
                    self.broken = true;
                }
                db_err(e)
            }
            Failure::Store(e) => e,
        })
    }

    fn load_now(&mut self) -> Result<Vec<StoredNode>, Failure> {
        let rows = self.db.query(
            &format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY certname"),
            &[],
        )?;
        rows.into_iter()
            .map(|r| node_row(&r).decode().map_err(Failure::Store))
            .collect()
    }

    fn write_now(&mut self, batch: &[Write]) -> Result<(), Failure> {
        let s = &self.statements;
        let sent = Instant::now();
        let mut tx = self.db.transaction()?;
        // the fence: nothing is written once another leads
        let lease = self.lease_length.as_secs_f64();
        if tx.execute(&s.fence, &[&self.epoch, &lease])? == 0 {
            drop(tx);
            return Err(Failure::Store(self.deposed()));
        }
        let mut rest = batch;
        while let Some(w) = rest.first() {
            // consecutive facts uploads go in at once: they touch one
            // node each and the last of a node's wins, in any order
            let run = rest
                .iter()
                .take_while(|w| matches!(w, Write::Facts { .. }))
                .count();
            if run > 1 {
                facts_at_once(&mut tx, s, &rest[..run])?;
                rest = &rest[run..];
                continue;
            }
            rest = &rest[1..];
            match w {
                Write::Node { certname, view } => {
                    tx.execute(
                        &s.node,
                        &[
                            certname,
                            &view.environment,
                            &state_text(&view.state),
                            &view.reason.name(),
                            &micros(view.since),
                            &pending_text(view.pending),
                            &micros(view.pending_since),
                            &view.last_compile.map(micros),
                            &i64::from(view.failures),
                        ],
                    )?;
                }
                Write::Remove { certname } => {
                    for statement in &s.remove {
                        tx.execute(statement, &[certname])?;
                    }
                }
                Write::Facts {
                    certname,
                    values,
                    hash,
                    at,
                } => {
                    tx.execute(&s.facts, &[certname, values, &micros(*at)])?;
                    tx.execute(&s.facts_hash, &[certname, hash])?;
                }
                Write::FactsHash { certname, hash } => {
                    tx.execute(&s.facts_hash, &[certname, hash])?;
                }
                Write::Catalog {
                    certname,
                    hash,
                    changed_at,
                    exports,
                    body,
                } => {
                    tx.execute(&s.catalog, &[certname, hash, &micros(*changed_at)])?;
                    if let Some(body) = body {
                        let at = micros(*changed_at);
                        tx.execute(&s.catalog_body, &[certname, hash, body, &at])?;
                    }
                    tx.execute(&s.delete_exports, &[certname])?;
                    for e in exports {
                        tx.execute(
                            &s.export,
                            &[
                                certname,
                                &text(&e.kind).as_ref(),
                                &text(&e.title).as_ref(),
                                &e.parameters_hash,
                            ],
                        )?;
                    }
                }
                Write::Error { certname, error } => {
                    let error = error.as_deref().map(text);
                    let error = error.as_deref();
                    tx.execute(&s.error, &[certname, &error])?;
                }
                Write::CatalogLost { certname } => {
                    for statement in &s.catalog_lost {
                        tx.execute(statement, &[certname])?;
                    }
                }
                Write::Baseline {
                    environment,
                    snapshot: Some(snapshot),
                } => {
                    tx.execute(
                        "INSERT INTO baselines (environment, snapshot) VALUES ($1, $2)
                         ON CONFLICT (environment) DO UPDATE SET snapshot = EXCLUDED.snapshot",
                        &[&text(environment).as_ref(), snapshot],
                    )?;
                }
                Write::Answer { id, answer } => {
                    tx.execute(
                        "UPDATE pcq_requests SET answer = $2 WHERE id = $1 AND answer IS NULL",
                        &[id, &text(answer).as_ref()],
                    )?;
                }
                Write::Baseline {
                    environment,
                    snapshot: None,
                } => {
                    tx.execute(
                        "DELETE FROM baselines WHERE environment = $1",
                        &[&text(environment).as_ref()],
                    )?;
                }
            }
        }
        tx.commit()?;
        self.held_since(sent);
        Ok(())
    }

    /// The lease, extended by a commit sent at `sent`, holds locally
    /// until then plus its length, less the margin.
    fn held_since(&self, sent: Instant) {
        let until = sent + self.lease_length.saturating_sub(MARGIN);
        self.lease.hold_until(until);
    }

    fn renew_now(&mut self) -> Result<(), Failure> {
        let sent = Instant::now();
        let lease = self.lease_length.as_secs_f64();
        if self
            .db
            .execute(&self.statements.fence, &[&self.epoch, &lease])?
            == 0
        {
            return Err(Failure::Store(self.deposed()));
        }
        self.held_since(sent);
        Ok(())
    }

    /// Another leads: what to say, and no more acting.
    fn deposed(&mut self) -> StoreError {
        self.lease.lapse();
        StoreError::Deposed(format!(
            "another pcq serve leads the queue now: {}; this one (epoch {}) was paused or \
             cut off past its lease, and stops without writing",
            leader_text(&mut self.db),
            self.epoch
        ))
    }

    fn facts_now(&mut self, certname: &str) -> Result<Option<Vec<u8>>, Failure> {
        let row = self.db.query_opt(
            "SELECT values_json FROM facts WHERE certname = $1",
            &[&certname],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    fn exports_now(&mut self) -> Result<Vec<(String, Export)>, Failure> {
        let rows = self.db.query(
            "SELECT certname, type, title, parameters_hash FROM exports ORDER BY 1, 2, 3",
            &[],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.get(0),
                    Export {
                        kind: r.get(1),
                        title: r.get(2),
                        parameters_hash: r.get(3),
                    },
                )
            })
            .collect())
    }

    fn facts_owners_now(&mut self) -> Result<Vec<String>, Failure> {
        let rows = self
            .db
            .query("SELECT certname FROM facts ORDER BY certname", &[])?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_nul_is_replaced() {
        assert_eq!(
            redacted("postgresql://pcq:s3cret@db.example.com/pcq?sslmode=require"),
            "postgresql://pcq:********@db.example.com/pcq?sslmode=require"
        );
        assert_eq!(
            redacted("host=db user=pcq password=s3cret dbname=pcq"),
            "host=db user=pcq password=******** dbname=pcq"
        );
        assert_eq!(redacted("host=db user=pcq"), "host=db user=pcq");
        assert_eq!(text("a\0b"), "a\u{fffd}b");
        assert_eq!(text("plain"), "plain");
    }
}
