//! The CLI's side of the admin API: `pcq bump`, `pcq deploy`, `pcq queue`
//! and `pcq status` talk to a running daemon.
//!
//! Three ways in: the daemon's Unix socket (a path; the default), where
//! the socket's file permissions decide; the loopback listener
//! (`http://127.0.0.1:PORT`), with the bearer token of `--token-file`; or
//! `https://`, with this host's Puppet certificate, which must be on
//! `api.admins`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::daemon::backend::puppetserver::why;
use crate::daemon::tls::PuppetSsl;
use crate::puppet_conf::PuppetSettings;

/// Calls the API at `base` (a socket path, `http://127.0.0.1:8144` with
/// `token_file`, or `https://...`) and returns the JSON body of a 2xx
/// answer. Anything else is an error that says what went wrong: pcq not
/// running there, or the status with pcq's own message.
pub async fn call(
    base: &str,
    token_file: Option<&Path>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // a deploy answers once its code is analysed (up to two minutes)
    let wait = if path == "/v1/deploys" { 150 } else { 30 };
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(wait));
    let mut token = None;
    let root = if let Some(rest) = base.strip_prefix("https://") {
        let puppet = PuppetSettings::discover();
        let ssl = PuppetSsl::new(&puppet.ssldir, &puppet.certname);
        builder =
            builder.tls_backend_preconfigured(ssl.client_config().map_err(|e| e.to_string())?);
        format!("https://{rest}")
    } else if base.starts_with("http://") {
        let file = token_file.ok_or_else(|| {
            format!("{base}: the loopback listener needs --token-file (api.admin_token_file)")
        })?;
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("--token-file {}: {e}", file.display()))?;
        token = Some(text.trim().to_string());
        base.to_string()
    } else {
        let socket = base.strip_prefix("unix:").unwrap_or(base);
        builder = builder.unix_socket(socket);
        "http://localhost".to_string()
    };
    let client = builder.build().map_err(|e| e.to_string())?;
    let url = format!("{}{path}", root.trim_end_matches('/'));
    let mut request = client.request(method, &url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.map_err(|e| {
        format!(
            "{base}: {} (is `pcq serve` running there, and may you use it?)",
            why(&e)
        )
    })?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| e.to_string())?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    answer(status, value)
}

/// Where the admin API is: `--api`, else the admin socket of the
/// configuration (when this user can read it), else the default socket.
pub fn base(api: &super::args::ApiArgs) -> String {
    if let Some(base) = &api.api {
        return base.clone();
    }
    match crate::daemon::config::Config::load(&api.config) {
        Ok(config) => config.api.admin_socket.display().to_string(),
        Err(_) => crate::daemon::config::Api::default()
            .admin_socket
            .display()
            .to_string(),
    }
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
