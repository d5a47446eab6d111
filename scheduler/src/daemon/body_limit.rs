//! Request bodies over `api.max_body_bytes`: refused with a 413 the client
//! can actually read.
//!
//! A server that answers 413 and closes while the client is still writing
//! makes the client's kernel see a reset: the client gets "broken pipe"
//! instead of the answer. Servers avoid that with a lingering close: keep
//! reading (and discarding) the rest of the body for a bounded time and
//! size, then answer with `Connection: close`. This layer does that: a
//! body whose `Content-Length` or bytes read pass the limit is drained up
//! to [`DRAIN_BYTES`] or [`DRAIN_TIME`], whichever comes first, then
//! refused. A body within the limit is buffered and handed on, so handlers
//! never see more than the limit.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use serde_json::json;

/// At most this much of an oversized body is read and thrown away.
pub const DRAIN_BYTES: usize = 64 << 20;
/// For at most this long.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);
/// A body within the limit must arrive within this (408 otherwise), so a
/// slow client cannot hold a buffer forever.
pub const READ_TIME: Duration = Duration::from_secs(30);

/// The middleware: `max` is `api.max_body_bytes`.
pub async fn limit(State(max): State<usize>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let waits_for_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = request.into_parts();
    if declared.is_some_and(|n| n > max as u64) {
        // a client waiting for "100 Continue" has sent nothing yet:
        // reading would invite the body
        if !waits_for_continue {
            drain(body, 0).await;
        }
        return too_large(max);
    }
    match tokio::time::timeout(READ_TIME, read(body, max)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(Read::TooLarge { rest, seen })) => {
            drain(rest, seen).await;
            too_large(max)
        }
        Ok(Err(Read::Broken(e))) => {
            refusal(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
        }
        Err(_) => refusal(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body took over {READ_TIME:?}"),
        ),
    }
}

/// `{"error": ...}` with `status`, and the connection closed after it.
fn refusal(status: StatusCode, message: String) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

enum Read {
    /// The limit was passed after `seen` bytes; `rest` is still unread.
    TooLarge { rest: Body, seen: usize },
    /// The client broke off.
    Broken(axum::Error),
}

/// Reads a body of at most `max` bytes.
async fn read(mut body: Body, max: usize) -> Result<Bytes, Read> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Read::Broken)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                let seen = buf.len() + data.len();
                return Err(Read::TooLarge { rest: body, seen });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Reads and discards what is left, within the bounds.
async fn drain(mut body: Body, mut seen: usize) {
    let discard = async {
        while seen < DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

fn too_large(max: usize) -> Response {
    refusal(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over {max} bytes (api.max_body_bytes)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::put;
    use axum::Router;

    fn app() -> Router {
        Router::new()
            .route(
                "/",
                put(|body: Bytes| async move { body.len().to_string() }),
            )
            .layer(axum::middleware::from_fn_with_state(1024, limit))
    }

    async fn send(body: Body, length: Option<usize>) -> (StatusCode, String, Option<String>) {
        use tower::ServiceExt as _;
        let mut request = Request::put("/");
        if let Some(n) = length {
            request = request.header(header::CONTENT_LENGTH, n);
        }
        let response = app()
            .oneshot(request.body(body).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let connection = response
            .headers()
            .get(header::CONNECTION)
            .map(|v| v.to_str().unwrap_or("").to_string());
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            String::from_utf8_lossy(&bytes).into_owned(),
            connection,
        )
    }

    #[tokio::test]
    async fn bodies_within_the_limit_reach_the_handler() {
        let (status, text, _) = send(Body::from(vec![b'x'; 1024]), Some(1024)).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "1024"));
    }

    #[tokio::test]
    async fn oversized_bodies_are_drained_then_refused_with_close() {
        let (status, text, connection) = send(Body::from(vec![b'x'; 5000]), Some(5000)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(text.contains("api.max_body_bytes"), "{text}");
        assert_eq!(connection.as_deref(), Some("close"));
        // no Content-Length (chunked): caught while reading
        let chunks = futures_util::stream::iter(
            (0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 300]))),
        );
        let (status, _, connection) = send(Body::from_stream(chunks), None).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(connection.as_deref(), Some("close"));
    }

    #[tokio::test]
    async fn a_client_waiting_for_continue_is_refused_without_reading() {
        use tower::ServiceExt as _;
        // a body that never comes: draining it would take DRAIN_TIME
        let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        let request = Request::put("/")
            .header(header::CONTENT_LENGTH, 5000)
            .header(header::EXPECT, "100-continue")
            .body(Body::from_stream(never))
            .expect("request");
        let answer = tokio::time::timeout(DRAIN_TIME / 5, app().oneshot(request))
            .await
            .expect("answered without waiting for the body")
            .expect("response");
        assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
