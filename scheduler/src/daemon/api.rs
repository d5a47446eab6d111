//! The HTTP API.
//!
//! | method and path | what |
//! |---|---|
//! | `PUT /puppet/v3/facts/{certname}` | facts upload in Puppet's own body shape (`puppet facts upload` can point here) |
//! | `GET /v1/nodes/{certname}/catalog` | the node's last good catalog; `ETag` is its canonical hash, `If-None-Match` gives 304 |
//! | `GET /v1/nodes/{certname}/status` | cheap status for polling: state, catalog hash, last change |
//! | `POST /v1/nodes/{certname}/bump` | move a node to the urgent lane |
//! | `POST /v1/deploys` | `{"environment": "production"}`: new code, recompile its nodes |
//! | `GET /v1/queue` | lanes, depths, ages, running compiles, masters |
//! | `GET /v1/site` | what this daemon saw since it started (compile times per master, facts uploads, exports, deploys): `pcq site`, for `pcq-sim scenario` |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the driver answers and the store commits; 503 with the reason |
//!
//! Every request carries its [`Caller`] (from the client certificate, or the
//! loopback admin listener): a node may use the first three for itself
//! only, the rest need an admin (403 otherwise, and logged).
//!
//! Bad input gets a 4xx with a JSON `{"error": ...}` that says what is wrong
//! and changes nothing: a malformed body, a certname that is not one
//! (`../../etc/passwd`), a body over `api.max_body_bytes` (413).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::certname::Certname;
use super::config::valid_environment;
use super::dependencies::Dependencies;
use super::driver::router::ANALYSIS_LIMIT;
use super::driver::{ApiError, Command, FactsUpload};
use super::facts::{check_values, Ignore, Upload};
use super::identity::Caller;
use super::last_good::{LastGood, ReadError};
use super::metrics::Metrics;
use super::store::StoreHandle;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The driver.
    pub driver: mpsc::Sender<Command>,
    /// The last good catalogs.
    pub catalogs: LastGood,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Facts that never count as a change.
    pub ignore: Arc<Ignore>,
    /// What each node's catalog depends on.
    pub deps: Arc<Dependencies>,
    /// The store (for `/healthz`), once this pcq leads (a standby has
    /// none).
    pub store: Arc<std::sync::OnceLock<StoreHandle>>,
}

impl ApiState {
    /// Does this pcq stand by (on a shared store, while another leads)?
    fn standing_by(&self) -> bool {
        matches!(self.catalogs, LastGood::Database(_)) && self.store.get().is_none()
    }
}

/// The API's routes.
pub fn router(state: ApiState, max_body: usize) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/puppet/v3/facts/{certname}", put(put_facts))
        .route("/v1/nodes/{certname}/catalog", get(get_catalog))
        .route("/v1/nodes/{certname}/status", get(get_status))
        .route("/v1/nodes/{certname}/bump", post(post_bump))
        .route("/v1/deploys", post(post_deploy))
        .route("/v1/queue", get(get_queue))
        .route("/v1/site", get(get_site))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(healthz))
        .layer(axum::middleware::from_fn_with_state(
            max_body,
            super::body_limit::limit,
        ))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            count_refused_facts,
        ))
        .with_state(state)
}

/// A refused request: status and a message for `{"error": ...}`.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // busy, stopping or sick: all of them pass; say when to retry
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        let status = match &e {
            ApiError::UnknownNode(_) | ApiError::UnknownEnvironment(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ShuttingDown | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal::new(status, e.to_string())
    }
}

type Answer = Result<Response, Refusal>;

/// How many times (100 ms apart) a catalog the driver has recorded is
/// looked for in the store before the node is told there is none.
const CATALOG_COMMIT_WAITS: usize = 30;

/// What every 503 says in `Retry-After`.
const RETRY_AFTER_SECONDS: &str = "2";

fn certname(raw: &str) -> Result<Certname, Refusal> {
    Certname::parse(raw).map_err(|e| {
        tracing::warn!("refused: {e}");
        Refusal::bad(e.to_string())
    })
}

/// The node in the path, if the caller may act for it.
fn node_for(caller: &Caller, raw: &str, what: &str) -> Result<Certname, Refusal> {
    let node = certname(raw)?;
    if !caller.may_act_for(&node) {
        tracing::warn!("refused: {caller} asked for the {what} of {node}");
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("{caller} may not access the {what} of {node}"),
        ));
    }
    Ok(node)
}

fn admin(caller: &Caller, what: &str) -> Result<(), Refusal> {
    if caller.is_admin() {
        return Ok(());
    }
    tracing::warn!("refused: {caller} asked for {what}");
    Err(Refusal::new(
        StatusCode::FORBIDDEN,
        format!("{what} needs an admin certificate (api.admins); {caller} is not one"),
    ))
}

/// Sends a command and waits for its answer.
async fn ask<T>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, Refusal> {
    ask_within(state, Duration::from_secs(30), make).await
}

/// [`ask`], with a longer wait (a deploy waits for the analysis of its
/// code).
async fn ask_within<T>(
    state: &ApiState,
    wait: Duration,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, Refusal> {
    let gone = || Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "pcq is shutting down");
    let (tx, rx) = oneshot::channel();
    state.driver.send(make(tx)).await.map_err(|_| gone())?;
    tokio::time::timeout(wait, rx)
        .await
        .map_err(|_| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the scheduler did not answer",
            )
        })?
        .map_err(|_| gone())
}

#[derive(Deserialize)]
struct FactsQuery {
    environment: Option<String>,
}

/// Counts every refused facts upload in `pcq_facts_uploads_total`:
/// `rejected` (the client's fault: 4xx, the body limit's 413 and 408
/// included) or `unavailable` (pcq's: 5xx). Outermost, so it sees the
/// refusals of every layer.
async fn count_refused_facts(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let facts = request.method() == Method::PUT && request.uri().path().starts_with(FACTS_PATH);
    let response = next.run(request).await;
    let status = response.status();
    let refused = if status.is_server_error() {
        Some("unavailable")
    } else {
        status.is_client_error().then_some("rejected")
    };
    if let (true, Some(label)) = (facts, refused) {
        Metrics::count(&metrics.facts_uploads, label);
    }
    response
}

/// Where nodes upload facts (Puppet's own path).
const FACTS_PATH: &str = "/puppet/v3/facts/";

async fn put_facts(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    Query(query): Query<FactsQuery>,
    body: Bytes,
) -> Answer {
    let certname = node_for(&caller, &raw, "facts")?;
    if let Some(env) = &query.environment {
        if !valid_environment(env) {
            return Err(Refusal::bad(format!(
                "invalid environment {env:?}: word characters only"
            )));
        }
    }
    let upload: Upload = serde_json::from_slice(&body).map_err(|e| {
        Refusal::bad(format!(
            "facts body: {e} (expected {{\"name\", \"values\", \"timestamp\", \"expiration\"}})"
        ))
    })?;
    if upload.name != certname.as_str() {
        return Err(Refusal::bad(format!(
            "facts for {:?} uploaded to the URL of {certname}",
            upload.name
        )));
    }
    let values = upload
        .object()
        .ok_or_else(|| Refusal::bad("facts body: \"values\" is not an object"))?;
    let unparsable = |e: serde_json::Error| Refusal::bad(format!("facts body: \"values\": {e}"));
    let outcome = if state.standing_by() {
        // handed to the leader as they came (it hashes them), once they
        // are known to parse as the leader will parse them
        check_values(values).map_err(unparsable)?;
        ask(&state, |reply| Command::HandIn {
            certname,
            environment: query.environment,
            values: values.to_vec(),
            reply,
        })
        .await??
    } else {
        let tree: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(values).map_err(unparsable)?;
        let upload = FactsUpload::of(
            certname,
            query.environment,
            &tree,
            &state.ignore,
            &state.deps,
        );
        ask(&state, |reply| Command::Facts {
            upload,
            values: values.to_vec(),
            reply,
        })
        .await??
    };
    Ok(Json(json!({ "result": outcome })).into_response())
}

async fn get_catalog(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let certname = node_for(&caller, &raw, "catalog")?;
    let status = ask(&state, |reply| Command::Status {
        certname: certname.clone(),
        reply,
    })
    .await?
    .ok_or_else(|| ApiError::UnknownNode(certname.to_string()))?;
    let hash = status.catalog_hash.ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no catalog compiled for {certname} yet"),
        )
    })?;
    let asked = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let matches = |hash: &str| {
        let etag = format!("\"{hash}\"");
        asked
            .split(',')
            .any(|t| t.trim() == etag || t.trim() == "*")
    };
    if matches(&hash) {
        let etag = format!("\"{hash}\"");
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    // the database gets a new catalog with the driver's next group commit,
    // a few milliseconds after the driver knows its hash: a node told of
    // its first catalog at once waits for it rather than get a 404
    let mut served = None;
    for attempt in 0..CATALOG_COMMIT_WAITS {
        served = state.catalogs.read(&certname).await.map_err(|e| match e {
            ReadError::Unavailable(e) => Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e),
            ReadError::Failed(e) => Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e),
        })?;
        if served.is_some() || attempt + 1 == CATALOG_COMMIT_WAITS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let served = served.ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no catalog stored for {certname}"),
        )
    })?;
    // the database keeps each catalog with its hash: what it holds is
    // what is served, under its own ETag (the driver's may be a commit
    // ahead)
    let hash = served.hash.unwrap_or(hash);
    let etag = format!("\"{hash}\"");
    if matches(&hash) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let bytes = served.json;
    Ok((
        StatusCode::OK,
        [
            (header::ETAG, etag),
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::CACHE_CONTROL, "private, no-cache".to_string()),
        ],
        bytes,
    )
        .into_response())
}

async fn get_status(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Answer {
    let certname = node_for(&caller, &raw, "status")?;
    let status = ask(&state, |reply| Command::Status {
        certname: certname.clone(),
        reply,
    })
    .await?
    .ok_or_else(|| ApiError::UnknownNode(certname.to_string()))?;
    Ok(Json(status).into_response())
}

async fn post_bump(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Answer {
    admin(&caller, "bumping a node")?;
    let certname = certname(&raw)?;
    let bumped = ask(&state, |reply| Command::Bump { certname, reply }).await??;
    Ok((StatusCode::ACCEPTED, Json(json!({ "result": bumped }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    environment: String,
    /// An environment pcq does not know yet (no node in it, not on disk
    /// where the analysis reads code) is announced on purpose.
    #[serde(default)]
    new: bool,
}

async fn post_deploy(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    admin(&caller, "announcing a deploy")?;
    let deploy: DeployBody = serde_json::from_slice(&body).map_err(|e| {
        Refusal::bad(format!(
            "deploy body: {e} (expected {{\"environment\": \"...\"}})"
        ))
    })?;
    if !valid_environment(&deploy.environment) {
        return Err(Refusal::bad(format!(
            "invalid environment {:?}",
            deploy.environment
        )));
    }
    let environment = deploy.environment.clone();
    let new = deploy.new;
    let wait = ANALYSIS_LIMIT + Duration::from_secs(10);
    let report = ask_within(&state, wait, |reply| Command::Deploy {
        environment,
        new,
        reply,
    })
    .await??;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

async fn get_queue(State(state): State<ApiState>, Extension(caller): Extension<Caller>) -> Answer {
    admin(&caller, "the queue")?;
    let q = ask(&state, |reply| Command::Queue { reply }).await?;
    Ok(Json(q).into_response())
}

async fn get_site(State(state): State<ApiState>, Extension(caller): Extension<Caller>) -> Answer {
    admin(&caller, "the site's record")?;
    let site = ask(&state, |reply| Command::Site { reply }).await?;
    Ok(Json(site).into_response())
}

async fn get_metrics(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Answer {
    admin(&caller, "metrics")?;
    // a standby has no queue: its queue's gauges stay unset
    if let Some((stats, waiting)) = ask(&state, |reply| Command::Stats { reply }).await? {
        state.metrics.update(&stats);
        state.metrics.set_waiting_for_facts(waiting);
    }
    state.metrics.set_analyses(&state.deps.states());
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response())
}

/// 200 `ok` while the scheduler answers and the store commits; 503 with
/// the reason otherwise.
async fn healthz(State(state): State<ApiState>) -> Answer {
    ask(&state, |reply| Command::Stats { reply }).await?;
    if let Some(store) = state.store.get() {
        store
            .health()
            .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    }
    Ok((StatusCode::OK, "ok\n").into_response())
}
