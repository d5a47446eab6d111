//! Fills a pcq state directory with N nodes (as a running fleet leaves it:
//! cycle lane, a catalog hash, facts hash), for start-up and load
//! measurements without compiling N catalogs first.
//!
//! `cargo run --release -p benches --bin fill-store -- DIR N [PREFIX]`
//!
//! With `PCQ_STORE_URL` set (a libpq URL), the nodes go to that PostgreSQL
//! database instead (`[store] kind = "postgresql"`), and DIR is unused.

use std::path::PathBuf;

use scheduler::core::{Lane, NodeId, NodeState, NodeView, Pending, Reason, Time};
use scheduler::daemon::store::postgresql::{Connection, PostgresStore};
use scheduler::daemon::store::sqlite::SqliteStore;
use scheduler::daemon::store::{Store, StoreError, Write};

fn open(dir: &std::path::Path) -> Result<Box<dyn Store>, StoreError> {
    Ok(match std::env::var("PCQ_STORE_URL") {
        Ok(url) => Box::new(PostgresStore::open(&Connection { url, ca_file: None })?),
        Err(_) => Box::new(SqliteStore::open(dir)?),
    })
}

/// A small catalog of the node, compressed as the store keeps it.
fn body(certname: &str) -> Vec<u8> {
    let json = format!(r#"{{"name":"{certname}","version":1,"resources":[],"edges":[]}}"#);
    scheduler::daemon::store::shared::compress(json.as_bytes()).unwrap_or_default()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "pcq-state".into()));
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let prefix = args.next().unwrap_or_else(|| "node".into());
    let mut store = match open(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fill-store: {e}");
            std::process::exit(1);
        }
    };
    let now = scheduler::daemon::driver::now();
    let t = std::time::Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut batch = Vec::new();
        for &i in chunk {
            let certname = format!("{prefix}{i:06}.example.com");
            batch.push(Write::Node {
                certname: certname.clone(),
                view: NodeView {
                    id: NodeId::from_index(0),
                    state: NodeState::Queued(Lane::Cycle),
                    environment: "production".into(),
                    reason: Reason::Cycle,
                    since: Time::from_micros(now.as_micros() + i as u64 * 1_000),
                    pending: Pending::None,
                    pending_since: Time::ZERO,
                    last_compile: Some(now),
                    failures: 0,
                },
            });
            batch.push(Write::Catalog {
                certname: certname.clone(),
                hash: format!("{i:064x}"),
                changed_at: now,
                exports: Vec::new(),
                // kept by PostgreSQL (SQLite's are files, and not made here)
                body: Some(body(&certname)),
            });
            batch.push(Write::FactsHash {
                certname,
                hash: format!("{:064x}", i + 1),
            });
        }
        if let Err(e) = store.write(&batch) {
            eprintln!("fill-store: {e}");
            std::process::exit(1);
        }
    }
    println!(
        "{n} nodes written to {} in {:.2?}",
        dir.display(),
        t.elapsed()
    );
}
