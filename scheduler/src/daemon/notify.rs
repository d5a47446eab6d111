//! Telling nodes their catalog changed.
//!
//! Two channels, either or both: a command template (`bolt`, `ssh`, `mco`
//! style; run without a shell, `{certname}` and `{environment}` replaced)
//! and a webhook (`POST` of `{"certname", "environment", "catalog_hash"}`).
//! Each notification is tried up to `attempts` times with exponential
//! backoff (1 s, 2 s, 4 s, ...); nodes that poll
//! `GET /v1/nodes/{certname}/status` need neither.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::process::Command;
use tokio::sync::{mpsc, Semaphore};

use super::config::Notify;
use super::metrics::{Metrics, NotifyLabel};

/// One changed catalog to announce.
#[derive(Clone, Debug, Serialize)]
pub struct Notice {
    /// The node.
    pub certname: String,
    /// Its environment.
    pub environment: String,
    /// The new catalog's canonical hash.
    pub catalog_hash: String,
}

/// Sends notices in the background.
#[derive(Clone, Debug)]
pub struct Notifier {
    tx: Option<mpsc::UnboundedSender<Notice>>,
}

impl Notifier {
    /// Starts the notifier; a configuration with neither channel gives one
    /// that drops notices.
    pub fn spawn(config: Notify, metrics: Arc<Metrics>) -> Notifier {
        if config.command.is_empty() && config.webhook.is_none() {
            return Notifier { tx: None };
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Notice>();
        let client = webhook_client();
        let config = Arc::new(config);
        let limit = Arc::new(Semaphore::new(16));
        tokio::spawn(async move {
            while let Some(notice) = rx.recv().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let (config, metrics, client) = (config.clone(), metrics.clone(), client.clone());
                tokio::spawn(async move {
                    deliver(&config, &metrics, client.as_ref(), &notice).await;
                    drop(permit);
                });
            }
        });
        Notifier { tx: Some(tx) }
    }

    /// Announces a changed catalog.
    pub fn send(&self, notice: Notice) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(notice);
        }
    }
}

fn webhook_client() -> Option<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .ok()
}

async fn deliver(
    config: &Notify,
    metrics: &Metrics,
    client: Option<&reqwest::Client>,
    notice: &Notice,
) {
    if !config.command.is_empty() {
        let ok = retry(config, || run_command(config, notice)).await;
        record(metrics, "command", ok, notice);
    }
    if let Some(url) = &config.webhook {
        let ok = match client {
            Some(c) => retry(config, || post(c, url, config.timeout, notice)).await,
            None => false,
        };
        record(metrics, "webhook", ok, notice);
    }
}

fn record(metrics: &Metrics, channel: &str, ok: bool, notice: &Notice) {
    if !ok {
        tracing::warn!(certname = %notice.certname, "{channel} notification failed after every attempt");
    }
    metrics
        .notifications
        .get_or_create(&NotifyLabel {
            channel: channel.into(),
            result: if ok { "sent" } else { "failed" }.into(),
        })
        .inc();
}

async fn retry<F, Fut>(config: &Notify, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut wait = Duration::from_secs(1);
    for n in 1..=config.attempts {
        match attempt().await {
            Ok(()) => return true,
            Err(e) => tracing::debug!("notification attempt {n}: {e}"),
        }
        if n < config.attempts {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
    false
}

async fn run_command(config: &Notify, notice: &Notice) -> Result<(), String> {
    let argv: Vec<String> = config
        .command
        .iter()
        .map(|a| {
            a.replace("{certname}", &notice.certname)
                .replace("{environment}", &notice.environment)
        })
        .collect();
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let status = tokio::time::timeout(
        config.timeout,
        Command::new(program).args(args).kill_on_drop(true).status(),
    )
    .await
    .map_err(|_| format!("{program}: timed out"))?
    .map_err(|e| format!("{program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program}: {status}"))
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    notice: &Notice,
) -> Result<(), String> {
    let response = client
        .post(url)
        .timeout(timeout)
        .json(notice)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(response.status().to_string())
    }
}
