//! The compile lifecycle outside the core: a master's backend, one
//! compile from facts to a kept catalog, and what its result means to the
//! core.
//!
//! A compile reads the node's stored facts, asks the master's backend for
//! a catalog, checks it, and only when its canonical hash changed prepares
//! it to be kept (staged on disk beside SQLite, compressed for the row
//! with PostgreSQL; [`LastGood`]), and works out its links. The driver
//! commits it only if the node is still the one the compile was for (not
//! revoked meanwhile), so the last good catalog survives any failure and a
//! removed node's catalog never comes back. Whose fault a failure is
//! decides the core's outcome: a node's
//! own failure parks it, a master's (refused, 503) interrupts the compile
//! without blame (see [`super::masters`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::{NodeId, Outcome};
use crate::daemon::analyze::Analysis;
use crate::daemon::backend::{facts_map, Compiler, Failure, Job};
use crate::daemon::catalog::{self, Export};
use crate::daemon::certname::Certname;
use crate::daemon::dependencies::Dependencies;
use crate::daemon::last_good::{Kept, LastGood};
use crate::daemon::store::{Lease, StoreHandle};

use super::links::Links;

/// Everything one compile needs, taken from the driver when it starts.
pub struct CompileJob {
    /// The core's node.
    pub node: NodeId,
    /// The master's index in the driver.
    pub master: usize,
    /// The node.
    pub certname: Certname,
    /// Its environment.
    pub environment: String,
    /// Its last good catalog's hash.
    pub previous: Option<String>,
    /// The core's deadline, from now.
    pub timeout: Duration,
    /// The master's backend.
    pub compiler: Arc<dyn Compiler>,
    /// Where its facts are.
    pub store: StoreHandle,
    /// Where its catalog goes.
    pub catalogs: LastGood,
    /// The environment's analysis (read when the compile ends).
    pub deps: Arc<Dependencies>,
    /// The epoch this daemon leads in, for the request it sends (`None`:
    /// alone on its store).
    pub leader_epoch: Option<i64>,
    /// The lead it is started under (a shared store), checked again just
    /// before the request is sent.
    pub lease: Option<Arc<Lease>>,
}

/// A compile's report to the driver.
pub struct Compiled {
    /// The core's node.
    pub node: NodeId,
    /// The master's index in the driver.
    pub master: usize,
    /// The node.
    pub certname: Certname,
    /// When the compile started.
    pub started: Instant,
    /// A good catalog, or whose fault it is that there is none.
    pub result: Result<Catalog, Failure>,
}

/// A good catalog; if it changed, ready to take the current one's place.
pub struct Catalog {
    /// Its canonical hash.
    pub hash: String,
    /// It differs from the node's last good one.
    pub changed: bool,
    /// The changed catalog, to commit once the driver knows the node is
    /// still the one this compile was for (dropped otherwise).
    pub kept: Option<Kept>,
    /// Its exported resources, for the store.
    pub exports: Vec<Export>,
    /// What it says about the node's links to others.
    pub links: Links,
    /// The environment it was compiled in (the classifier's choice).
    pub environment: Option<String>,
}

/// Runs one compile to its end.
pub async fn run(job: CompileJob) -> Compiled {
    let started = Instant::now();
    let certname = job.certname.clone();
    let facts = facts_of(job.store.facts(certname.as_str()).await);
    let result = match facts {
        Err(f) => Err(f),
        // paused (or cut off) since the start: another may lead now
        Ok(_) if job.lease.as_ref().is_some_and(|l| !l.holds()) => Err(Failure::Input(
            "this pcq's lead lapsed before the request was sent".into(),
        )),
        Ok(facts) => {
            let request = Job {
                certname: certname.clone(),
                environment: job.environment.clone(),
                facts,
                timeout: job.timeout,
                leader_epoch: job.leader_epoch,
            };
            job.compiler.compile(request).await
        }
    };
    let result = match result {
        Ok(bytes) => {
            let c = certname.clone();
            let catalogs = job.catalogs;
            let previous = job.previous;
            let deps = job.deps;
            let requested = job.environment;
            tokio::task::spawn_blocking(move || {
                // the analysis as of now (one that finished during the
                // compile applies to its catalog), of the environment the
                // classifier compiled it in
                keep(&catalogs, &c, &bytes, previous, |env| {
                    deps.analysis(env.unwrap_or(&requested))
                })
            })
            .await
            .unwrap_or_else(|e| Err(Failure::Node(format!("catalog task: {e}"))))
        }
        Err(f) => Err(f),
    };
    Compiled {
        node: job.node,
        master: job.master,
        certname,
        started,
        result,
    }
}

/// The facts a compile sends, from the store's answer: without them there
/// is no compile (a catalog built from `{}` would be another node's).
fn facts_of<E: std::fmt::Display>(
    stored: Result<Option<Vec<u8>>, E>,
) -> Result<serde_json::Map<String, serde_json::Value>, Failure> {
    match stored {
        Ok(Some(bytes)) => facts_map(&bytes).map_err(Failure::Input),
        Ok(None) => Err(Failure::Input("no facts stored".into())),
        Err(e) => Err(Failure::Input(format!("reading the stored facts: {e}"))),
    }
}

/// Checks a compile's output and stages the catalog if it changed;
/// `analysis` gives the analysis of the environment the catalog names.
pub fn keep(
    catalogs: &LastGood,
    certname: &Certname,
    bytes: &[u8],
    previous: Option<String>,
    analysis: impl FnOnce(Option<&str>) -> Option<Arc<Analysis>>,
) -> Result<Catalog, Failure> {
    let mut compiled = catalog::read(bytes).map_err(|e| Failure::Node(e.to_string()))?;
    if compiled.name != certname.as_str() {
        // never keep (or serve) another node's catalog as this one's
        return Err(Failure::Node(format!(
            "the server answered with a catalog for {:?}",
            compiled.name
        )));
    }
    let analysis = analysis(compiled.environment.as_deref());
    let changed = previous.as_deref() != Some(compiled.hash.as_str());
    let kept = match changed {
        true => Some(
            catalogs
                .keep(certname, &compiled.json)
                .map_err(|e| Failure::Node(format!("storing the catalog: {e}")))?,
        ),
        false => None,
    };
    let links = Links::of(&mut compiled, analysis.as_deref());
    Ok(Catalog {
        hash: compiled.hash,
        changed,
        kept,
        exports: compiled.exports,
        links,
        environment: compiled.environment,
    })
}

/// What a compile's result means to the core: a node's own failure is
/// its failure or timeout; a master's interrupts it without blame.
pub fn outcome_of(result: &Result<Catalog, Failure>) -> Outcome {
    match result {
        Ok(cat) if cat.changed => Outcome::Changed,
        Ok(_) => Outcome::Unchanged,
        Err(Failure::Node(_)) => Outcome::Failed,
        Err(Failure::Timeout(_)) => Outcome::TimedOut,
        Err(Failure::Server(_)) => Outcome::Interrupted,
        Err(Failure::Input(_)) => Outcome::Deferred,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_say_whose_fault_a_failure_is() {
        let ok = |changed| {
            Ok(Catalog {
                hash: "h".into(),
                changed,
                kept: None,
                exports: Vec::new(),
                links: Links::default(),
                environment: None,
            })
        };
        assert_eq!(outcome_of(&ok(true)), Outcome::Changed);
        assert_eq!(outcome_of(&ok(false)), Outcome::Unchanged);
        let failed = |f| outcome_of(&Err(f));
        assert_eq!(failed(Failure::Node("500".into())), Outcome::Failed);
        assert_eq!(
            failed(Failure::Timeout(Duration::from_secs(9))),
            Outcome::TimedOut
        );
        assert_eq!(failed(Failure::Server("503".into())), Outcome::Interrupted);
        assert_eq!(failed(Failure::Input("no facts".into())), Outcome::Deferred);
    }

    #[test]
    fn no_compile_without_the_nodes_facts() {
        let stored = |r: Result<Option<&[u8]>, &str>| facts_of(r.map(|o| o.map(<[u8]>::to_vec)));
        let facts = stored(Ok(Some(br#"{"os":{"family":"Debian"}}"#))).expect("facts");
        assert_eq!(facts["os"]["family"], "Debian");
        for missing in [
            Ok(None),
            Err("database disk image is malformed"),
            Ok(Some(&b"{truncated"[..])),
            Ok(Some(&b"[]"[..])),
        ] {
            assert!(
                matches!(stored(missing), Err(Failure::Input(_))),
                "{missing:?}"
            );
        }
    }

    #[test]
    fn only_a_changed_catalog_is_written_and_garbage_is_the_nodes_failure() {
        let dir = tempfile::tempdir().expect("tmp");
        let files =
            crate::daemon::catalog::CatalogFiles::open(&dir.path().join("catalogs")).expect("dir");
        let catalogs = LastGood::Files(files.clone());
        let certname = Certname::parse("web-01.example.com").expect("certname");
        let json =
            br#"{"name":"web-01.example.com","version":1,"resources":[],"edges":[],"classes":[]}"#;
        let mut first = keep(&catalogs, &certname, json, None, |_| None).expect("a catalog");
        assert!(first.changed);
        assert!(
            files.read(&certname).expect("read").is_none(),
            "staged, not in place"
        );
        let Some(Kept::Staged(staged)) = first.kept.take() else {
            panic!("a changed catalog is staged beside SQLite");
        };
        staged.commit().expect("commit");
        assert!(files.read(&certname).expect("read").is_some());
        files.remove(&certname).expect("remove");
        let again = keep(&catalogs, &certname, json, Some(first.hash.clone()), |_| {
            None
        })
        .expect("a catalog");
        assert!(!again.changed && again.kept.is_none());
        assert!(
            files.read(&certname).expect("read").is_none(),
            "an unchanged catalog is not rewritten"
        );
        assert!(matches!(
            keep(&catalogs, &certname, b"<html>", None, |_| None),
            Err(Failure::Node(_))
        ));
    }
}
