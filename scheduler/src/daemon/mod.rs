//! `pcq serve`: the scheduling core driven in real time on a Puppet master.
//!
//! What runs (one concern per module):
//!
//! - [`driver`]: the task that owns the core; everything else sends it
//!   commands;
//! - [`backend`]: compiles (Puppet Server's v4 catalog API, or `puppet
//!   catalog compile`);
//! - [`store`]: durable state (SQLite) behind an interface;
//! - [`catalog`]: canonical hashes, exports, the last good catalog on disk;
//! - [`api`]: the HTTP API ([`body_limit`]: oversized bodies refused
//!   readably); [`facts`]: facts uploads; [`certname`]:
//!   certnames from the network;
//! - [`ca`]: node intake from the CA; [`load`]: this host's load for the
//!   gate; [`notify`]: changed-catalog notifications; [`metrics`]:
//!   Prometheus; [`tls`]: Puppet's certificates; [`listener`]: accepting
//!   connections within limits; [`config`]: the file.
//!
//! [`serve`] wires them together and handles SIGTERM: stop starting
//! compiles, give running ones `shutdown.grace`, then exit; whatever still
//! ran is queued again at the front on the next start.

pub mod admin;
pub mod analyze;
pub mod api;
pub mod backend;
pub mod body_limit;
pub mod ca;
pub mod catalog;
pub mod certname;

pub mod config;
pub mod crl;
pub mod dependencies;
pub mod driver;
pub mod facts;
pub mod identity;
pub mod inbox;
pub mod last_good;
pub mod listener;
pub mod load;
pub mod master_status;
pub mod metrics;
pub mod notify;
pub mod reserve;
pub mod standby;
pub mod store;
pub mod tasks;

pub mod tls;
pub mod trusted;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::core::{Core, CoreError, MasterSpec};

use backend::command::CommandCompiler;
use backend::puppetserver::PuppetServer;
use backend::Compiler;
use catalog::CatalogFiles;
use config::{Backend, Config, StoreKind};
use dependencies::Dependencies;
use driver::{Command, Driver, MasterSlot, Parts};
use facts::Ignore;
use last_good::LastGood;
use metrics::Metrics;
use notify::Notifier;
use store::postgresql::{self, PostgresStore};
use store::shared::Shared;
use store::sqlite::SqliteStore;
use store::{Store, StoreError, StoreHandle};
use tasks::{Ends, Tasks};
use tls::{PuppetSsl, TlsError};

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Puppet's certificates.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The core refused its configuration.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The stored state does not make a queue.
    #[error(transparent)]
    Restore(#[from] driver::RestoreError),
    /// Files, sockets.
    #[error("{0}")]
    Io(String),
    /// The configuration.
    #[error("{0}")]
    Config(String),
    /// A part of the running daemon died (a panic, the store giving up, a
    /// listener ending): the process ends non-zero so a supervisor restarts
    /// it, rather than running on half-working.
    #[error("{0}")]
    Fatal(String),
}

fn io(what: &str, e: impl std::fmt::Display) -> ServeError {
    ServeError::Io(format!("{what}: {e}"))
}

/// One daemon per state directory: two would both own the queue and
/// overwrite each other's rows and catalogs. The lock is the process's
/// (released when it ends, however it ends).
fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File, ServeError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("pcq.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io(&path.display().to_string(), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServeError::Io(format!(
            "{}: another pcq serve runs on this state directory",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path.display().to_string(), e)),
    }
}

/// Builds each master's backend; a Puppet Server's concurrency leaves
/// its `reserve_for_files` (`reserve`).
/// The masters' slots for the driver, the CA's client, and each master's
/// Puppet Server client by slot index (none with the command backend).
type MasterParts = (Vec<MasterSlot>, Option<PuppetServer>, Vec<PuppetServer>);

async fn masters(config: &Config) -> Result<MasterParts, ServeError> {
    let masters = config.masters();
    // each master's Puppet Server client, once (none with the command
    // backend), and its pool read through it
    let mut servers = Vec::new();
    let mut ca_client = None;
    if let Backend::Puppetserver(p) = &config.backend {
        let ssl = PuppetSsl::new(&config.puppet.ssldir, &config.certname());
        for m in &masters {
            let url = m.url.as_deref().unwrap_or(&p.url);
            servers.push(
                PuppetServer::new(url, &ssl, p.persist_facts, p.persist_catalog)?.with_ca(&p.url),
            );
        }
        ca_client = Some(PuppetServer::new(&p.url, &ssl, false, false)?);
    }
    let pools = jruby_pools(&servers).await;
    let mut slots = Vec::new();
    for (i, m) in masters.into_iter().enumerate() {
        let cores = if m.cores == 0 { load::cores() } else { m.cores };
        let mut spec = MasterSpec::new(
            cores,
            m.gate.clone().unwrap_or_else(|| config.core.gate.clone()),
        );
        let mut jrubies = None;
        let (compiler, probe): (Arc<dyn Compiler>, Duration) = match &config.backend {
            Backend::Puppetserver(p) => {
                // (one server and one pool per master, built above)
                let (server, pool) = (&servers[i], pools[i].clone());
                let reservation = reserve::reserve(
                    &m.name,
                    spec.gate.max_concurrency,
                    pool.as_ref().copied().map_err(String::as_str),
                    m.reserve_for_files,
                );
                if let Some(w) = &reservation.warning {
                    tracing::warn!("{w}");
                }
                spec.gate.max_concurrency = reservation.max_concurrency;
                jrubies = pool.ok();
                tracing::info!(
                    "master {}: {} ({cores} cores, at most {} compiles at once)",
                    m.name,
                    server.url(),
                    spec.gate.max_concurrency
                );
                (Arc::new(server.clone()), p.probe_interval)
            }
            Backend::Command(c) => {
                tracing::info!("master {}: the command {:?}", m.name, c.command);
                let vardir = config.state_dir.join("compile-vardir");
                let compiler = CommandCompiler::new(c.command.clone(), &vardir)
                    .map_err(|e| io(&vardir.display().to_string(), e))?;
                (Arc::new(compiler), Duration::from_secs(5))
            }
        };
        let mut slot = MasterSlot::new(m.name.clone(), compiler, spec, m.local, probe);
        slot.cores_known = m.cores != 0 || m.local;
        slot.jrubies = jrubies;
        slot.reserve_for_files = m.reserve_for_files;
        slots.push(slot);
    }
    Ok((slots, ca_client, servers))
}

/// Each server's JRuby pool size, read from all at once with a short
/// wait: a master that does not answer now is probed later anyway, and
/// pcq's start must not hang on it.
async fn jruby_pools(servers: &[PuppetServer]) -> Vec<Result<u32, String>> {
    let mut reads = tokio::task::JoinSet::new();
    for (i, server) in servers.iter().enumerate() {
        let server = server.clone();
        reads.spawn(async move {
            let pool = tokio::time::timeout(Duration::from_secs(3), server.jruby_pool()).await;
            (
                i,
                pool.unwrap_or_else(|_| Err("no answer within 3 s".into())),
            )
        });
    }
    let mut pools: Vec<Result<u32, String>> = vec![Err("not read".into()); servers.len()];
    while let Some(read) = reads.join_next().await {
        if let Ok((i, pool)) = read {
            pools[i] = pool.map(|p| p.size);
        }
    }
    pools
}

/// The store the configuration names: SQLite in the state directory, or
/// PostgreSQL (migrated, the lead taken: while another `pcq serve` leads,
/// this one stands by until its lease lapses, then rebuilds the queue
/// from the store exactly as a restart does).
fn open_store(
    config: &Config,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Box<dyn Store>, ServeError> {
    Ok(match (config.store.kind, &config.store.url) {
        (StoreKind::Postgresql, Some(url)) => {
            let connection = postgresql::Connection {
                url: url.clone(),
                ca_file: config.store.ca_file.clone(),
            };
            let mut said = None;
            let store = loop {
                match PostgresStore::open(&connection) {
                    // another leads, or the database is out of reach for
                    // now: a standby waits either out
                    Err(e @ (StoreError::Standby(_) | StoreError::Unavailable(_))) => {
                        let why = e.to_string();
                        if said.as_ref() != Some(&why) {
                            tracing::info!("{why}");
                            said = Some(why);
                        }
                        std::thread::sleep(postgresql::RENEW_EVERY);
                        if stop.load(std::sync::atomic::Ordering::SeqCst) {
                            return Err(ServeError::Fatal("stopped while standing by".into()));
                        }
                    }
                    other => break other?,
                }
            };
            tracing::info!(
                "state in PostgreSQL; this pcq leads the queue (epoch {})",
                store.epoch()
            );
            Box::new(store)
        }
        _ => Box::new(SqliteStore::open_with(
            &config.state_dir,
            config.store.synchronous,
        )?),
    })
}

/// Where the last good catalogs are kept: files in the state directory
/// beside SQLite, the shared database's rows with PostgreSQL.
fn last_good(config: &Config) -> Result<LastGood, ServeError> {
    Ok(match (config.store.kind, &config.store.url) {
        (StoreKind::Postgresql, Some(url)) => {
            let connection = postgresql::Connection {
                url: url.clone(),
                ca_file: config.store.ca_file.clone(),
            };
            LastGood::Database(Arc::new(Shared::new(&connection)?))
        }
        _ => LastGood::Files(
            CatalogFiles::open(&config.state_dir.join("catalogs"))
                .map_err(|e| io("catalog directory", e))?,
        ),
    })
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(config);
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir).map_err(|e| io(&dir.display().to_string(), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io(&dir.display().to_string(), e))?;
    let _lock = lock_state_dir(dir)?;

    let catalogs = last_good(&config)?;
    let metrics = Arc::new(Metrics::new());
    let ignore = Arc::new(
        Ignore::new(&config.facts.ignore)
            .map_err(|e| ServeError::Config(format!("facts.ignore: {e}")))?,
    );
    let (slots, ca_client, servers) = masters(&config).await?;
    let deps = Arc::new(Dependencies::new(&config.analysis, ignore.clone()));
    let (tx, mut rx) = mpsc::channel::<Command>(1 << 16);
    let poll_ca = config.ca.poll_interval.filter(|_| ca_client.is_some());
    // the store's handle once this pcq leads (a standby has none)
    let store_cell = Arc::new(std::sync::OnceLock::new());
    let mut tasks = Tasks::default();

    // the API: mutual TLS with Puppet's CA (and its CRL), plus an optional
    // plain admin listener on loopback
    let ssl = PuppetSsl::new(&config.puppet.ssldir, &config.certname());
    let crl_file = config.puppet.ssldir.join("crl.pem");
    let crl = crl::initial(&crl_file, &ssl).map_err(ServeError::Config)?;
    let acceptor = tls::Acceptor::new(
        ssl.mutual_server_config(crl.as_ref().map(crl::Crl::ders).unwrap_or_default())?,
    );
    let crl_source = match &ca_client {
        Some(server) => crl::Source::Ca(server.clone()),
        None => crl::Source::File(crl_file),
    };
    tasks.spawn(
        "the CRL refresher",
        Ends::Never,
        crl::refresh(
            crl_source,
            config.ca.crl_refresh_interval,
            crl,
            acceptor.clone(),
            ssl.clone(),
            metrics.clone(),
        ),
    );
    let state = api::ApiState {
        driver: tx.clone(),
        catalogs: catalogs.clone(),
        metrics: metrics.clone(),
        ignore: ignore.clone(),
        deps: deps.clone(),
        store: store_cell.clone(),
    };
    let limits = listener::Limits {
        max_connections: config.api.max_connections,
        client_timeout: config.api.client_timeout,
        max_connection_age: config.api.max_connection_age,
    }
    .within(listener::raise_fd_limit());
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|e| io(&format!("listening on {}", config.api.listen), e))?;
    tracing::info!(
        "API on https://{} (client certificates from Puppet's CA)",
        config.api.listen
    );
    // one router per listener: the admin listener's identity layer must
    // never reach the TLS listener's routes
    let nodes_app = api::router(state.clone(), config.api.max_body_bytes);
    tasks.spawn(
        "the API listener",
        Ends::Never,
        listener::serve(
            listener,
            acceptor.clone(),
            nodes_app,
            Some(Arc::new(config.admins())),
            limits,
            metrics.clone(),
        ),
    );

    let grace = config.shutdown.grace;
    let stop = tx.clone();
    let signalled = async move {
        terminated().await;
        let _ = stop.send(Command::Shutdown { grace }).await;
    };
    tasks.spawn("the signal handler", Ends::AtShutdown, signalled);
    let socket = admin::bind_socket(&config.api.admin_socket, config.api.admin_group.as_deref())
        .map_err(|e| ServeError::Config(format!("api.admin_socket: {e}")))?;
    tracing::info!(
        "admin API on {} (a Unix socket, mode 0660)",
        config.api.admin_socket.display()
    );
    let app = api::router(state.clone(), config.api.max_body_bytes)
        .layer(axum::Extension(identity::Caller::Admin("socket".into())));
    tasks.spawn(
        "the admin socket",
        Ends::Never,
        listener::serve_plain(socket, app, limits, metrics.clone()),
    );
    if let Some(addr) = config.api.admin_listen {
        // a configured file, or the default beside the state; made if missing
        let token_in = |configured: &Option<std::path::PathBuf>, default: &str, key: &str| {
            let file = configured.clone().unwrap_or_else(|| dir.join(default));
            admin::token(&file)
                .map(|token| (file, token))
                .map_err(|e| ServeError::Config(format!("api.{key}: {e}")))
        };
        let (token_file, token) = token_in(
            &config.api.admin_token_file,
            admin::TOKEN_FILE,
            "admin_token_file",
        )?;
        let (metrics_token_file, metrics_token) = token_in(
            &config.api.metrics_token_file,
            admin::METRICS_TOKEN_FILE,
            "metrics_token_file",
        )?;
        if metrics_token == token {
            return Err(ServeError::Config(
                "api.metrics_token_file holds the admin token: give Prometheus a token of its own"
                    .into(),
            ));
        }
        let guard = admin::Guard::new(token, metrics_token);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| io(&format!("listening on {addr}"), e))?;
        tracing::info!(
            "admin API on http://{addr} (loopback; bearer token in {}, GET /metrics only with the one in {})",
            token_file.display(),
            metrics_token_file.display()
        );
        let app = api::router(state, config.api.max_body_bytes)
            .layer(axum::Extension(identity::Caller::Admin("loopback".into())))
            .layer(axum::middleware::from_fn_with_state(guard, admin::guard));
        tasks.spawn(
            "the admin listener",
            Ends::Never,
            listener::serve_plain(listener, app, limits, metrics.clone()),
        );
    }

    // the lead: at once with SQLite; with PostgreSQL once no other pcq
    // leads, answering nodes from the database meanwhile (a standby)
    let stop_standing_by = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (opening, stop) = (config.clone(), stop_standing_by.clone());
    // (the PostgreSQL client blocks: it runs off the runtime, here and on
    // the store's own thread)
    let lead = tokio::task::spawn_blocking(move || {
        let mut db = open_store(&opening, &stop)?;
        // (a shared store's lease renewed between the reads: the store
        // thread that renews it starts after them)
        let stored = db.load()?;
        db.renew()?;
        let owners = db.facts_owners()?;
        db.renew()?;
        let stored_exports = db.exports()?;
        db.renew()?;
        let baselines = db.baselines()?;
        db.renew()?;
        Ok::<_, ServeError>((db, stored, owners, stored_exports, baselines))
    });
    let opened = match &catalogs {
        LastGood::Database(shared) => {
            let exclude = Arc::new(config.ca.exclude.iter().cloned().collect());
            match standby::serve(&mut rx, shared.clone(), metrics.clone(), exclude, lead).await {
                Some(opened) => opened,
                None => {
                    stop_standing_by.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::info!("stopped while standing by");
                    return Ok(());
                }
            }
        }
        LastGood::Files(_) => lead.await,
    };
    let started = std::time::Instant::now();
    let (db, stored, owners, stored_exports, baselines) =
        opened.map_err(|e| ServeError::Config(format!("opening the store: {e}")))??;
    deps.restore_baselines(baselines);
    let (lease, epoch) = (db.lease(), db.epoch());
    let (store, store_died) = StoreHandle::spawn(db, catalogs.files().cloned())?;
    let _ = store_cell.set(store.clone());

    let leader = (epoch > 0).then(|| driver::LeaderView {
        holder: postgresql::holder(),
        epoch,
        since_unix: driver::now().as_micros() as f64 / 1e6,
    });
    metrics.leader_epoch.set(epoch);
    metrics
        .leader_since
        .set(driver::now().as_micros() as f64 / 1e6);
    let notifier = Notifier::spawn(config.notify.clone(), metrics.clone());

    let seed = driver::now().as_micros();
    let core = Core::new(config.core.clone(), seed)?;
    let parts = Parts {
        store: store.clone(),
        catalogs: catalogs.clone(),
        notifier,
        metrics: metrics.clone(),
        join_on_facts: poll_ca.is_none(),
        exclude: config.ca.exclude.iter().cloned().collect::<HashSet<_>>(),
        absence: driver::Absence {
            listings: config.ca.remove_after_listings,
            max_share: config.ca.max_removal_share,
        },
        default_environment: config.default_environment.clone(),
        deps: deps.clone(),
        exports: config.exports.clone(),
        lease,
        leader,
    };
    let driver = Driver::new(
        core,
        slots,
        stored,
        stored_exports,
        owners,
        parts,
        tx.clone(),
    )?;
    tracing::info!(
        "{} nodes restored from {} in {:.0?}",
        driver.node_count(),
        dir.display(),
        started.elapsed()
    );
    tasks.spawn("the scheduler", Ends::Cleanly, driver.run(rx));
    tasks.spawn("the store", Ends::Never, async move {
        if let Ok(why) = store_died.await {
            tracing::error!("the store stopped: {why}");
        }
    });

    let load_tx = tx.clone();
    tasks.spawn("the load sampler", Ends::Never, async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            if load_tx.send(Command::Load(load::sample())).await.is_err() {
                return;
            }
        }
    });

    if let (Backend::Puppetserver(p), false) = (&config.backend, servers.is_empty()) {
        if let Some(every) = p.status_interval {
            let status_tx = tx.clone();
            tasks.spawn(
                "the master status poller",
                Ends::Never,
                master_status::poll(servers, every, status_tx),
            );
        }
    }
    if let (Some(every), Some(server)) = (poll_ca, ca_client) {
        tasks.spawn(
            "the CA poller",
            Ends::Never,
            ca::poll(server, every, tx.clone(), metrics.clone()),
        );
    }
    if let LastGood::Database(shared) = &catalogs {
        tasks.spawn(
            "the inbox of handed-in uploads",
            Ends::Never,
            inbox::drain(shared.clone(), tx.clone(), ignore, deps),
        );
    }

    drop(tx);
    // The driver ends after a shutdown (signal) has drained the compiles
    // and its last writes are committed; anything else that ends first is
    // fatal.
    let ended = tasks.supervise().await;
    if ended.is_err() {
        // a moment for answers already on their way (the store's last
        // failure, say) before the process ends
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ended.map_err(ServeError::Fatal)
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
