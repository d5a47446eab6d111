//! What a compile backend is: the job it gets, the [`Compiler`] trait it
//! implements, and the [`Failure`]s that say whose fault a missing catalog
//! is; plus the facts every backend sends the way an agent would.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::daemon::certname::Certname;

/// A boxed future, for object-safe async.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One compile to run.
#[derive(Clone, Debug)]
pub struct Job {
    /// The node.
    pub certname: Certname,
    /// Its environment.
    pub environment: String,
    /// Its last uploaded facts (`values` JSON), if any.
    pub facts: Option<Vec<u8>>,
    /// How long the compile may take.
    pub timeout: Duration,
}

/// Why a compile produced no catalog.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The node's compile failed (an error in the code, bad facts): the
    /// node is parked with a backoff.
    #[error("compile failed: {0}")]
    Node(String),
    /// The master is unreachable, overloaded (503) or refuses pcq: starts
    /// on it pause until a probe succeeds; the node is not blamed.
    #[error("master unavailable: {0}")]
    Server(String),
    /// The compile ran past its deadline.
    #[error("compile timed out after {0:?}")]
    Timeout(Duration),
}

/// A way to compile catalogs on one master.
pub trait Compiler: Send + Sync {
    /// Compiles; the answer is the catalog JSON (bare, or Puppet Server's
    /// `{"catalog": ...}`).
    fn compile(&self, job: Job) -> BoxFuture<Result<Vec<u8>, Failure>>;
    /// Is the master answering again?
    fn probe(&self) -> BoxFuture<bool>;
}

/// The facts Puppet's agent adds to facter's, filled in when an upload
/// lacks them (modules such as concat call `versioncmp($clientversion, ..)`
/// and fail on undef).
pub fn agent_facts(
    values: &mut serde_json::Map<String, serde_json::Value>,
    certname: &Certname,
    environment: &str,
) {
    use serde_json::Value;
    let defaults = [
        ("clientcert", Value::from(certname.as_str())),
        ("clientversion", Value::from("7.23.0")),
        ("clientnoop", Value::from(false)),
        ("agent_specified_environment", Value::from(environment)),
    ];
    for (k, v) in defaults {
        values.entry(k.to_string()).or_insert(v);
    }
}

/// Parses stored facts into a map (empty if there are none or they are
/// not an object).
pub fn facts_map(facts: Option<&[u8]>) -> serde_json::Map<String, serde_json::Value> {
    match facts.map(serde_json::from_slice::<serde_json::Value>) {
        Some(Ok(serde_json::Value::Object(m))) => m,
        _ => serde_json::Map::new(),
    }
}
