//! The local admin channel: who on this host may act as administrator.
//!
//! An administrator reads any node's catalog (every secret in the fleet)
//! and can bump, deploy and upload facts for anyone, so "any local user" is
//! not good enough. The default channel is a Unix socket
//! (`api.admin_socket`) whose file permissions decide: mode 0660, owned by
//! the user pcq runs as and `api.admin_group`. The `pcq` CLI uses it by
//! default.
//!
//! A loopback TCP listener (`api.admin_listen`, for a Prometheus that
//! cannot read a socket, say) is still possible, but every request on it
//! but `/healthz` must carry `Authorization: Bearer <token>`, the token
//! read from `api.admin_token_file` (mode 0600, made with a random token if
//! missing), and a `Host` header naming loopback, so a web page on the
//! host cannot reach it by DNS rebinding. A second token
//! (`api.metrics_token_file`) opens `GET /metrics` and nothing else: the
//! one a Prometheus gets, so that what scrapes pcq reads no catalog.

use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Binds the admin socket at `path`, mode 0660 and, with `group`, owned by
/// that group (a name or a number). A socket left there by a pcq that is
/// gone is replaced; one that answers belongs to a running pcq and is an
/// error.
pub fn bind_socket(path: &Path, group: Option<&str>) -> Result<tokio::net::UnixListener, String> {
    let shown = path.display();
    let gid = group.map(gid_of).transpose()?;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    clear_stale(path)?;
    // bound in a private directory of its own, given its mode and group,
    // then moved in place: never reachable with the umask's mode
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let private = path.with_file_name(format!(".{name}.{}.d", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| format!("{}: {e}", private.display()))?;
    let staged = private.join("admin.sock");
    let bound = tokio::net::UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))?;
        if gid.is_some() {
            // no call at all without a group: a service sandbox may forbid
            // chown (pcq.service allows it, but not every unit does)
            std::os::unix::fs::chown(&staged, None, gid)?;
        }
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound.map_err(|e| format!("{shown}: {e}"))
}

/// Removes what a pcq that is gone left at `path`: only a socket, and only
/// one that refuses connections. Anything else is an error.
fn clear_stale(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{shown}: there is something else than a socket there; pcq removes nothing it did not make"
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(format!("{shown}: another pcq serve answers on this socket")),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|e| format!("{shown}: {e}"))
        }
        Err(e) => Err(format!(
            "{shown}: {e}; it may belong to a running pcq serve, so it stays"
        )),
    }
}

/// The group id of `group` (a name or a number).
fn gid_of(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group)
        .map_err(|_| format!("api.admin_group: {group:?} is not a group name"))?;
    let mut entry = std::mem::MaybeUninit::<libc::group>::uninit();
    let mut buf = vec![0 as libc::c_char; 1 << 16];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to memory of the size given, alive for the
    // call; the entry is read only when getgrnam_r says it filled it.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            entry.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(format!("api.admin_group: no group {group:?} on this host"));
    }
    // SAFETY: filled by getgrnam_r (found is not null)
    Ok(unsafe { entry.assume_init() }.gr_gid)
}

/// The bearer token in `path`, made (32 random bytes, hex, mode 0600) if
/// the file does not exist. A file others may read is refused: the token
/// is an admin's key.
pub fn token(path: &Path) -> Result<String, String> {
    let shown = path.display();
    if !path.exists() {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| format!("/dev/urandom: {e}"))?;
        let text = format!("{}\n", hex::encode(bytes));
        crate::private_file::write(path, text.as_bytes()).map_err(|e| format!("{shown}: {e}"))?;
        tracing::info!("token written to {shown}");
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{shown}: mode {:o}; a token must be readable by its owner only (chmod 600)",
            meta.mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let token = text.trim().to_string();
    if token.len() < 16 {
        return Err(format!("{shown}: a token must be at least 16 characters"));
    }
    Ok(token)
}

/// The token file in the state directory when `api.admin_token_file` is
/// not set.
pub const TOKEN_FILE: &str = "admin.token";

/// The metrics token file in the state directory when
/// `api.metrics_token_file` is not set.
pub const METRICS_TOKEN_FILE: &str = "metrics.token";

/// What the loopback TCP listener checks on each request.
pub struct Guard {
    token: String,
    /// Opens `GET /metrics` and nothing else: the token a Prometheus is
    /// given, which must not read catalogs or upload facts.
    metrics_token: String,
}

impl Guard {
    /// A guard requiring `token` (everything) or `metrics_token` (only
    /// `GET /metrics`).
    pub fn new(token: String, metrics_token: String) -> Arc<Guard> {
        Arc::new(Guard {
            token,
            metrics_token,
        })
    }

    /// Why a request with these `host` and `authorization` headers is
    /// refused, if it is; `metrics` says it is `GET /metrics`.
    fn refuse(
        &self,
        host: Option<&str>,
        authorization: Option<&str>,
        metrics: bool,
    ) -> Option<Refused> {
        if !host.is_some_and(names_loopback) {
            return Some(Refused::Host);
        }
        let given = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), self.token.as_bytes()) => None,
            Some(t) if constant_time_eq(t.as_bytes(), self.metrics_token.as_bytes()) => {
                (!metrics).then_some(Refused::MetricsOnly)
            }
            _ => Some(Refused::Token),
        }
    }
}

enum Refused {
    Host,
    Token,
    MetricsOnly,
}

/// Is `host` (a Host header) loopback: `127.0.0.1`, `[::1]` or `localhost`,
/// with or without a port?
fn names_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    matches!(name, "127.0.0.1" | "::1" | "localhost")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware of the loopback TCP admin listener (`/healthz` needs
/// the loopback Host but no token).
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let metrics = request.method() == axum::http::Method::GET && request.uri().path() == "/metrics";
    let mut refused = guard.refuse(text(header::HOST), text(header::AUTHORIZATION), metrics);
    if request.uri().path() == "/healthz" && matches!(refused, Some(Refused::Token)) {
        // health checks need no token, but a loopback Host all the same
        refused = None;
    }
    match refused {
        None => next.run(request).await,
        Some(Refused::Host) => {
            tracing::warn!(
                "admin listener: a request with Host {:?} refused (not loopback)",
                text(header::HOST)
            );
            (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "the Host header must name loopback (127.0.0.1, [::1] or localhost)"})),
            )
                .into_response()
        }
        Some(Refused::MetricsOnly) => {
            tracing::warn!(
                "admin listener: the metrics token used for {} refused (it opens GET /metrics only)",
                request.uri().path()
            );
            (
                StatusCode::FORBIDDEN,
                Json(
                    json!({"error": "the token of api.metrics_token_file opens GET /metrics only"}),
                ),
            )
                .into_response()
        }
        Some(Refused::Token) => {
            tracing::warn!("admin listener: a request without the admin token refused");
            let mut response = (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "Authorization: Bearer <the token in api.admin_token_file> is required"})),
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_and_the_token_pass() {
        let g = Guard {
            token: "0123456789abcdef0123".into(),
            metrics_token: "fedcba9876543210fedc".into(),
        };
        let ok = Some("Bearer 0123456789abcdef0123");
        let refuse = |host, auth| g.refuse(host, auth, false);
        assert!(refuse(Some("127.0.0.1:8144"), ok).is_none());
        assert!(refuse(Some("localhost:8144"), ok).is_none());
        assert!(refuse(Some("[::1]:8144"), ok).is_none());
        assert!(refuse(Some("localhost"), ok).is_none());
        assert!(matches!(
            refuse(Some("evil.example:8144"), ok),
            Some(Refused::Host)
        ));
        assert!(matches!(
            refuse(Some("127.0.0.1.evil.example"), ok),
            Some(Refused::Host)
        ));
        assert!(matches!(refuse(None, ok), Some(Refused::Host)));
        assert!(matches!(
            refuse(Some("127.0.0.1"), None),
            Some(Refused::Token)
        ));
        assert!(matches!(
            refuse(Some("127.0.0.1"), Some("Bearer 0123456789abcdef0124")),
            Some(Refused::Token)
        ));
        assert!(matches!(
            refuse(Some("127.0.0.1"), Some("Bearer 0123")),
            Some(Refused::Token)
        ));
        // the metrics token opens GET /metrics and nothing else
        let metrics = Some("Bearer fedcba9876543210fedc");
        assert!(g.refuse(Some("127.0.0.1"), metrics, true).is_none());
        assert!(g.refuse(Some("127.0.0.1"), ok, true).is_none());
        assert!(matches!(
            g.refuse(Some("127.0.0.1"), metrics, false),
            Some(Refused::MetricsOnly)
        ));
        assert!(matches!(
            g.refuse(Some("evil.example"), metrics, true),
            Some(Refused::Host)
        ));
    }

    #[test]
    fn a_token_file_is_made_private_and_a_readable_one_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("admin.token");
        let made = token(&path).expect("made");
        assert_eq!(made.len(), 64);
        let mode = std::fs::metadata(&path).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(token(&path).expect("read again"), made);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = token(&path).expect_err("world-readable");
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[tokio::test]
    async fn the_socket_is_0660_in_its_group_and_a_live_one_is_not_taken() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("run/admin.sock");
        let gid = std::fs::metadata(dir.path()).expect("meta").gid();
        let listener = bind_socket(&path, Some(&gid.to_string())).expect("bound");
        let meta = std::fs::metadata(&path).expect("socket");
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid);
        let e = bind_socket(&path, None).expect_err("in use");
        assert!(e.contains("another pcq"), "{e}");
        drop(listener);
        // a stale socket (nobody listening) is replaced
        bind_socket(&path, None).expect("stale socket replaced");
        // anything else at the path is left alone
        let file = dir.path().join("run/not-a-socket");
        std::fs::write(&file, "keep me").expect("file");
        let e = bind_socket(&file, None).expect_err("a file");
        assert!(e.contains("something else than a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).expect("kept"), "keep me");
        assert!(gid_of("no-such-group-pcq").is_err());
    }
}
