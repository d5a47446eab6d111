//! The CLI's side of the admin API: `pcq bump`, `pcq deploy`, `pcq queue`
//! and `pcq status` talk to a running daemon over HTTP.
//!
//! The plain loopback listener (`api.admin_listen`) needs nothing; an
//! `https://` address is called with this host's Puppet certificate, which
//! must be on `api.admins`.

use std::time::Duration;

use serde_json::Value;

use crate::daemon::tls::PuppetSsl;
use crate::puppet_conf::PuppetSettings;

/// Calls the API at `base` (`http://127.0.0.1:8144`) and returns the JSON
/// body of a 2xx answer. Anything else is an error that says what went
/// wrong: pcq not running there, or the status with pcq's own message.
pub async fn call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if base.starts_with("https://") {
        let puppet = PuppetSettings::discover();
        let ssl = PuppetSsl::new(&puppet.ssldir, &puppet.certname);
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
    answer(status, value)
}

/// A 2xx body, or the error pcq gave (`{"error": ...}`) with the status.
fn answer(status: u16, body: Value) -> Result<Value, String> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let message = body["error"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| body.to_string());
    Err(format!("{status}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_carry_the_status_and_pcqs_message() {
        assert_eq!(answer(200, json!({"a": 1})), Ok(json!({"a": 1})));
        assert_eq!(
            answer(404, json!({"error": "unknown node x"})),
            Err("404: unknown node x".to_string())
        );
        assert_eq!(
            answer(502, Value::String("bad gateway".into())),
            Err("502: \"bad gateway\"".to_string())
        );
    }
}
