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
    /// Its last uploaded facts (the `values` object). A compile never runs
    /// without them: the driver defers a node whose facts it cannot read.
    pub facts: serde_json::Map<String, serde_json::Value>,
    /// How long the compile may take.
    pub timeout: Duration,
    /// The epoch of the leader that sends it (`None`: pcq alone on its
    /// store, or no daemon at all). Puppet Server's access log shows it
    /// in the user agent, beside the certname the v4 endpoint hides.
    pub leader_epoch: Option<i64>,
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
    /// The compile's input could not be had (the node's stored facts are
    /// unreadable or missing, the CA has no certificate for a node it
    /// listed as signed): no catalog may be built from what is left, the
    /// node retries later and is not blamed.
    #[error("input missing: {0}")]
    Input(String),
}

/// A way to compile catalogs on one master.
pub trait Compiler: Send + Sync {
    /// Compiles; the answer is the catalog JSON (bare, or Puppet Server's
    /// `{"catalog": ...}`).
    fn compile(&self, job: Job) -> BoxFuture<Result<Vec<u8>, Failure>>;
    /// Is the master answering again?
    fn probe(&self) -> BoxFuture<Result<(), String>>;
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

/// Parses stored facts (a JSON object) into a map.
pub fn facts_map(facts: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_slice::<serde_json::Value>(facts) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("the stored facts are not a JSON object".into()),
        Err(e) => Err(format!("the stored facts do not parse: {e}")),
    }
}
