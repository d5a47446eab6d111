//! Node intake from the certificate authority.
//!
//! A node enters the queue when its certificate is signed and leaves when
//! it is revoked. pcq polls Puppet Server's CA
//! (`GET /puppet-ca/v1/certificate_statuses/any`, allowed for a certificate
//! with the `pp_cli_auth` extension, which the CA host's own has) and hands
//! the driver the full lists; the driver works out what changed.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

use super::backend::puppetserver::{why, PuppetServer};
use super::driver::Command;
use super::metrics::Metrics;

#[derive(Debug, Deserialize)]
struct Status {
    name: String,
    state: String,
}

/// Lists signed and revoked certnames.
pub async fn list(server: &PuppetServer) -> Result<(Vec<String>, Vec<String>), String> {
    let url = format!("{}/puppet-ca/v1/certificate_statuses/any", server.url());
    let response = server
        .client()
        .get(&url)
        .header("Accept", "application/json")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("{url}: {}", why(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("{url}: {status}: {}", body.trim()));
    }
    let statuses: Vec<Status> = response
        .json()
        .await
        .map_err(|e| format!("{url}: not a certificate list: {e}"))?;
    let mut signed = Vec::new();
    let mut revoked = Vec::new();
    for s in statuses {
        match s.state.as_str() {
            "signed" => signed.push(s.name),
            "revoked" => revoked.push(s.name),
            _ => {}
        }
    }
    Ok((signed, revoked))
}

/// The CA's current CRL (PEM).
pub async fn crl(server: &PuppetServer) -> Result<Vec<u8>, String> {
    let url = format!(
        "{}/puppet-ca/v1/certificate_revocation_list/ca",
        server.url()
    );
    let response = server
        .client()
        .get(&url)
        .header("Accept", "text/plain")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("{url}: {}", why(&e)))?;
    if !response.status().is_success() {
        return Err(format!("{url}: {}", response.status()));
    }
    response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| format!("{url}: {e}"))
}

/// Polls forever: each successful listing goes to the driver (the CRL is
/// refreshed by [`super::crl::refresh`] on its own interval).
pub async fn poll(
    server: PuppetServer,
    every: Duration,
    driver: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
) {
    let mut first = true;
    loop {
        match list(&server).await {
            Ok((signed, revoked)) => {
                if std::mem::take(&mut first) {
                    tracing::info!(
                        "the CA lists {} signed and {} revoked certificates",
                        signed.len(),
                        revoked.len()
                    );
                }
                if driver.send(Command::Ca { signed, revoked }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("CA poll: {e}");
                Metrics::count(&metrics.ca_listings, "failed");
            }
        }
        tokio::time::sleep(every).await;
    }
}
