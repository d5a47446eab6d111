//! The CLI's side of the API: `pcq bump`, `pcq deploy`, `pcq queue`,
//! `pcq status` talk to a running daemon over HTTP.

use std::time::Duration;

use serde_json::Value;

/// Calls the API at `base` (`http://127.0.0.1:8143`). Returns the status
/// and JSON body; a refused connection says pcq is not running there.
pub async fn call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if base.starts_with("https://") {
        // this host's Puppet certificate, which must be on api.admins
        let puppet = super::sync::PuppetSettings::discover();
        let ssl = super::tls::PuppetSsl::new(&puppet.ssldir, &puppet.certname);
        builder =
            builder.tls_backend_preconfigured(ssl.client_config().map_err(|e| e.to_string())?);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut request = client.request(method, &url);
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{url}: {e} (is `pcq serve` running there?)"))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| e.to_string())?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}
