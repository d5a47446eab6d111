//! Compiles through Puppet Server's `POST /puppet/v4/catalog`.
//!
//! The request carries the node's certname, environment, facts and trusted
//! facts; `persistence` decides whether Puppet Server stores facts and
//! catalog in PuppetDB. The endpoint is denied to everyone by default:
//! auth.conf must allow pcq's certificate (README, "Run it on a Puppet
//! master").

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::compiler::{agent_facts, BoxFuture, Compiler, Failure, Job};
use crate::daemon::tls::{PuppetSsl, TlsError};
use crate::daemon::trusted::trusted_facts;

/// A client for one Puppet Server.
#[derive(Clone, Debug)]
pub struct PuppetServer {
    client: reqwest::Client,
    url: String,
    /// Where nodes' certificates are read (their trusted extensions): the
    /// CA's base URL.
    ca_url: String,
    persist_facts: bool,
    persist_catalog: bool,
    /// A node the CA has no certificate for compiles without extensions
    /// (what-if compiles of `pcq analyze --verify`) instead of being
    /// deferred (the daemon, whose nodes the CA listed as signed).
    allow_missing_certificates: bool,
}

impl PuppetServer {
    /// A client for the server at `url` (`https://host:8140`) presenting
    /// `ssl`'s certificate.
    pub fn new(
        url: &str,
        ssl: &PuppetSsl,
        persist_facts: bool,
        persist_catalog: bool,
    ) -> Result<PuppetServer, TlsError> {
        let client = client(ssl, 64, Duration::from_secs(5))?;
        let url = url.trim_end_matches('/').to_string();
        Ok(PuppetServer {
            client,
            ca_url: url.clone(),
            url,
            persist_facts,
            persist_catalog,
            allow_missing_certificates: false,
        })
    }

    /// A client that opens a new connection (a TLS handshake) for every
    /// request, as each agent run does: `pcq calibrate` measures what an
    /// agent waits for, handshake included. Nothing is stored in PuppetDB,
    /// and nodes need no certificate.
    pub fn agent_like(url: &str, ssl: &PuppetSsl) -> Result<PuppetServer, TlsError> {
        Ok(PuppetServer {
            // a herd's handshakes queue at the server: connecting may
            // take as long as the request may
            client: client(ssl, 0, Duration::from_secs(600))?,
            ..PuppetServer::new(url, ssl, false, false)?.allow_missing_certificates()
        })
    }

    /// Compiles nodes the CA has no certificate for, without extensions:
    /// for what-if compiles of nodes that need not exist.
    pub fn allow_missing_certificates(mut self) -> PuppetServer {
        self.allow_missing_certificates = true;
        self
    }

    /// Reads nodes' certificates from the CA at `url` rather than this
    /// server (a compile master whose CA service is off).
    pub fn with_ca(mut self, url: &str) -> PuppetServer {
        self.ca_url = url.trim_end_matches('/').to_string();
        self
    }

    /// The raw HTTP client (mutual TLS), for the CA and status endpoints.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its JRuby pool, from the status API
    /// (`/status/v1/services/jruby-metrics?level=debug`; the default
    /// auth.conf lets any client read it, certificate or not).
    pub async fn jruby_pool(&self) -> Result<JrubyPool, String> {
        let url = format!("{}/status/v1/services/jruby-metrics?level=debug", self.url);
        let answer = self.get_json(&url, Duration::from_secs(10)).await?;
        JrubyPool::from_status(&answer["status"]).map_err(|e| format!("{url}: {e}"))
    }

    /// What its gate reads: the JRuby pool and the JVM's CPU use, in one
    /// request (`/status/v1/services?level=debug`), given up after
    /// `limit`.
    pub async fn gate_status(&self, limit: Duration) -> Result<GateStatus, String> {
        let url = format!("{}/status/v1/services?level=debug", self.url);
        let answer = self.get_json(&url, limit).await?;
        let pool = JrubyPool::from_status(&answer["jruby-metrics"]["status"])
            .map_err(|e| format!("{url}: {e}"))?;
        let free = pool
            .free
            .ok_or_else(|| format!("{url}: no num-free-jrubies in the answer"))?;
        let cpu_percent = answer["status-service"]["status"]["experimental"]["jvm-metrics"]
            ["cpu-usage"]
            .as_f64()
            .filter(|c| c.is_finite() && *c >= 0.0);
        Ok(GateStatus {
            size: pool.size,
            free,
            cpu_percent,
        })
    }

    async fn get_json(&self, url: &str, limit: Duration) -> Result<Value, String> {
        async {
            self.client
                .get(url)
                .timeout(limit)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|e| format!("{url}: {e}"))
    }

    fn body(&self, job: &Job, trusted: Value) -> Value {
        let mut values = job.facts.clone();
        agent_facts(&mut values, &job.certname, &job.environment);
        json!({
            "certname": job.certname.as_str(),
            "environment": job.environment,
            "persistence": {"facts": self.persist_facts, "catalog": self.persist_catalog},
            "facts": {"values": values},
            "trusted_facts": {"values": trusted},
            // as for an agent's request: the node classifier's environment
            // wins, the requested one counts only where it names none
            "options": {"prefer_requested_environment": false, "capture_logs": false},
        })
    }
}

impl PuppetServer {
    /// One `POST /puppet/v4/catalog` for `job` with these trusted facts:
    /// the catalog JSON, or why there is none. `compile` fetches the
    /// certificate first; `pcq calibrate` times this alone.
    pub async fn catalog(
        &self,
        job: &Job,
        trusted: Value,
        timeout: Duration,
    ) -> Result<Vec<u8>, Failure> {
        let response = self
            .client
            .post(format!("{}/puppet/v4/catalog", self.url))
            .header(reqwest::header::USER_AGENT, user_agent(job))
            .timeout(timeout)
            .json(&self.body(job, trusted))
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    Failure::Timeout(timeout)
                } else {
                    Failure::Server(format!("cannot reach Puppet Server: {}", why(&e)))
                }
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                Failure::Timeout(timeout)
            } else {
                Failure::Server(format!("reading the answer: {e}"))
            }
        })?;
        if status.is_success() {
            Ok(body.to_vec())
        } else {
            Err(classify(status, &String::from_utf8_lossy(&body)))
        }
    }
}

/// The user agent of a compile request: `pcq/VERSION (node CERTNAME;
/// leader epoch E)`. The v4 endpoint carries the certname in the body, so
/// without it Puppet Server's access log could not say whose catalog pcq
/// asked for, nor which leader asked (a certname holds no space, quote or
/// parenthesis).
fn user_agent(job: &Job) -> String {
    let version = env!("CARGO_PKG_VERSION");
    match job.leader_epoch {
        Some(epoch) => format!(
            "pcq/{version} (node {}; leader epoch {epoch})",
            job.certname
        ),
        None => format!("pcq/{version} (node {})", job.certname),
    }
}

/// An HTTP client presenting `ssl`'s certificate, keeping at most
/// `idle_per_host` connections open between requests.
fn client(
    ssl: &PuppetSsl,
    idle_per_host: usize,
    connect_timeout: Duration,
) -> Result<reqwest::Client, TlsError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(ssl.client_config()?)
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(idle_per_host)
        .build()
        .map_err(|e| TlsError::from_client(e.to_string()))
}

/// The node's certificate from the CA (PEM). pcq compiles only nodes the
/// CA listed as signed, so a 404 is a CA that contradicts itself (or a node
/// revoked and cleaned a moment ago): compiling without the certificate's
/// extensions could build another node's catalog, so the compile is
/// deferred instead.
async fn certificate(
    client: &reqwest::Client,
    ca_url: &str,
    certname: &str,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, Failure> {
    let url = format!("{ca_url}/puppet-ca/v1/certificate/{certname}");
    let response = client
        .get(&url)
        .header("Accept", "text/plain")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                Failure::Timeout(timeout)
            } else {
                Failure::Server(format!(
                    "cannot reach the CA for {certname}'s certificate: {}",
                    why(&e)
                ))
            }
        })?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        return Err(Failure::Input(format!(
            "{url}: 404, the CA has no certificate for {certname} (its trusted extensions are unknown)"
        )));
    }
    if !status.is_success() {
        return Err(Failure::Server(format!(
            "{url}: {status} (the node's trusted extensions are unknown)"
        )));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| Failure::Server(format!("{url}: {e}")))?;
    Ok(Some(body.to_vec()))
}

/// What an HTTP status means for the compile.
fn classify(status: StatusCode, body: &str) -> Failure {
    let text = body.trim();
    let text: String = text.chars().take(2000).collect();
    match status.as_u16() {
        400 | 500 => Failure::Node(format!("{status}: {text}")),
        401 | 403 => Failure::Server(format!(
            "{status}: Puppet Server refuses pcq's certificate on /puppet/v4/catalog (auth.conf): {text}"
        )),
        _ => Failure::Server(format!("{status}: {text}")),
    }
}

impl Compiler for PuppetServer {
    fn compile(&self, job: Job) -> BoxFuture<Result<Vec<u8>, Failure>> {
        let server = self.clone();
        let deadline = job.timeout;
        Box::pin(async move {
            // The certificate first: compiling without its extensions would
            // give a node whose code reads `$trusted['extensions']` another
            // node's catalog.
            let started = std::time::Instant::now();
            let pem = match certificate(
                &server.client,
                &server.ca_url,
                job.certname.as_str(),
                deadline.min(Duration::from_secs(30)),
            )
            .await
            {
                Err(Failure::Input(_)) if server.allow_missing_certificates => None,
                other => other?,
            };
            let timeout = deadline.saturating_sub(started.elapsed());
            let trusted = trusted_facts(&job.certname, pem.as_deref())
                .map_err(|e| Failure::Node(format!("{}'s certificate: {e}", job.certname)))?;
            // a timeout is the compile's whole deadline, certificate included
            server
                .catalog(&job, trusted, timeout)
                .await
                .map_err(|f| match f {
                    Failure::Timeout(_) => Failure::Timeout(deadline),
                    other => other,
                })
        })
    }

    fn probe(&self) -> BoxFuture<Result<(), String>> {
        let url = format!("{}/status/v1/simple", self.url);
        let request = self.client.get(&url).timeout(Duration::from_secs(5));
        Box::pin(async move {
            match request.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("{url}: {}", r.status())),
                Err(e) => Err(format!("{url}: {}", why(&e))),
            }
        })
    }
}

impl TlsError {
    fn from_client(why: String) -> TlsError {
        TlsError::new("http client", why)
    }
}

/// An HTTP client error with its causes: reqwest's own text leaves out
/// why ("error sending request"), and the cause is what an operator needs
/// (connection refused, a certificate not valid for the name, an unknown
/// CA).
pub fn why(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::certname::Certname;

    #[test]
    fn the_user_agent_names_the_node_and_the_leader() {
        let mut job = Job {
            certname: Certname::parse("web-01.example.com").expect("a certname"),
            environment: "production".into(),
            facts: serde_json::Map::new(),
            timeout: Duration::from_secs(1),
            leader_epoch: Some(7),
        };
        let v = env!("CARGO_PKG_VERSION");
        assert_eq!(
            user_agent(&job),
            format!("pcq/{v} (node web-01.example.com; leader epoch 7)")
        );
        job.leader_epoch = None;
        assert_eq!(
            user_agent(&job),
            format!("pcq/{v} (node web-01.example.com)")
        );
    }

    #[test]
    fn statuses_blame_the_node_or_the_server() {
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, "Evaluation Error"),
            Failure::Node(_)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, "bad env"),
            Failure::Node(_)
        ));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, ""),
            Failure::Server(_)
        ));
        assert!(
            matches!(classify(StatusCode::FORBIDDEN, "Forbidden"), Failure::Server(m) if m.contains("auth.conf"))
        );
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, ""),
            Failure::Server(_)
        ));
    }
}

/// A Puppet Server's JRuby pool, as its status API reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct JrubyPool {
    /// JRuby instances (`max-active-instances`).
    pub size: u32,
    /// Of them, free now.
    pub free: Option<u32>,
    /// Mean time a JRuby is held per request, seconds.
    pub average_borrow_seconds: Option<f64>,
    /// Mean wait for a free JRuby, seconds.
    pub average_wait_seconds: Option<f64>,
}

impl JrubyPool {
    /// From the jruby-metrics service's `status` object.
    fn from_status(status: &Value) -> Result<JrubyPool, String> {
        let metrics = &status["experimental"]["metrics"];
        let size = metrics["num-jrubies"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n >= 1)
            .ok_or("no num-jrubies in the answer")?;
        let seconds = |key: &str| metrics[key].as_f64().map(|ms| ms / 1000.0);
        Ok(JrubyPool {
            size,
            free: metrics["num-free-jrubies"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(|free| free.min(size)),
            average_borrow_seconds: seconds("average-borrow-time"),
            average_wait_seconds: seconds("average-wait-time"),
        })
    }
}

/// What a master's gate reads from its status API.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateStatus {
    /// JRuby instances.
    pub size: u32,
    /// Of them, free now (nobody borrowed them).
    pub free: u32,
    /// The JVM's CPU use over Puppet Server's last few seconds, in percent
    /// of all the host's cores (`jvm-metrics.cpu-usage`), when reported.
    pub cpu_percent: Option<f64>,
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn reads_the_pool_and_the_cpu_and_refuses_garbage() {
        let status = json!({"experimental": {"metrics": {
            "num-jrubies": 3, "num-free-jrubies": 1,
            "average-borrow-time": 1500.0, "average-wait-time": 20
        }}});
        let pool = JrubyPool::from_status(&status).expect("a pool");
        assert_eq!(pool.size, 3);
        assert_eq!(pool.free, Some(1));
        assert_eq!(pool.average_borrow_seconds, Some(1.5));
        for garbage in [
            json!({}),
            json!({"experimental": {"metrics": {"num-jrubies": 0}}}),
            json!({"experimental": {"metrics": {"num-jrubies": "3"}}}),
            json!("html"),
        ] {
            assert!(JrubyPool::from_status(&garbage).is_err(), "{garbage}");
        }
        // more free than the pool holds is clamped
        let status = json!({"experimental": {"metrics": {
            "num-jrubies": 2, "num-free-jrubies": 9
        }}});
        assert_eq!(
            JrubyPool::from_status(&status).expect("a pool").free,
            Some(2)
        );
    }
}
