//! The HTTP surface Elasticsearch calls: the router, API-key check, body limit, request logging,
//! and the one function every dialect uses to turn its inputs into vectors. Dialects own only
//! their wire types and body shapes (`openai.rs`, `hf.rs`); `ops.rs` serves health and metrics;
//! `status.rs` is the only place an error becomes a status code.

mod hf;
mod openai;
mod ops;
pub mod status;
pub mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::engine::{
    EmbedError, Embedding, Engine, ErrorKind, ModalityHint, Priority, RequestFailure,
};
use crate::metrics;
use status::Failure;

/// A bearer token. Its `Debug` never shows the value, so logging the config stays safe.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> Option<ApiKey> {
        let key = key.trim().to_owned();
        (!key.is_empty()).then_some(ApiKey(key))
    }

    /// Constant-time comparison: response timing must not reveal how much of a guess was right.
    fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub api_key: Option<ApiKey>,
    /// Largest request body in bytes; larger bodies get a 400 (never 413).
    pub max_body: usize,
    /// Most inputs one request may carry.
    pub max_inputs: usize,
}

#[derive(Clone)]
struct AppState {
    engine: Engine,
    cfg: Arc<HttpConfig>,
}

/// The full application. `/health` and `/ready` stay open for orchestrators; every other
/// route requires the API key when one is configured.
pub fn router(engine: Engine, cfg: HttpConfig) -> Router {
    let state = AppState {
        engine,
        cfg: Arc::new(cfg),
    };
    let protected = Router::new()
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/embed", post(hf::embed))
        .route("/hf/embed", post(hf::embed))
        .route("/info", get(ops::info))
        .route("/metrics", get(ops::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .merge(protected)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// The wire shape of an error, per dialect.
#[derive(Debug, Clone, Copy)]
enum Dialect {
    OpenAi,
    HuggingFace,
}

/// A failed request: its class and the message the client sees.
#[derive(Debug)]
struct RequestError {
    failure: Failure,
    message: String,
    dialect: Dialect,
    /// The engine's retry hint, for `status::Failure::retry_after`.
    retry_after: Option<Duration>,
}

impl RequestError {
    fn bad_request(dialect: Dialect, message: impl Into<String>) -> RequestError {
        RequestError {
            failure: Failure::Input(ErrorKind::BadInput),
            message: message.into(),
            dialect,
            retry_after: None,
        }
    }

    /// A request the engine refused or failed; a failed input is named by its index.
    fn engine(dialect: Dialect, failure: RequestFailure) -> RequestError {
        let e = failure.error();
        RequestError {
            failure: Failure::Input(e.kind),
            retry_after: e.retry_after,
            message: failure.to_string(),
            dialect,
        }
    }
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let status = self.failure.status();
        let body = match self.dialect {
            Dialect::OpenAi => openai::error_body(self.failure, &self.message),
            Dialect::HuggingFace => hf::error_body(&self.message),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.failure.retry_after(self.retry_after) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        if self.failure == Failure::Unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = &state.cfg.api_key else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|p| key.matches(p.trim())) {
        return next.run(req).await;
    }
    let dialect = if req.uri().path().starts_with("/v1/") {
        Dialect::OpenAi
    } else {
        Dialect::HuggingFace
    };
    let message = match presented {
        None => "missing API key: send `Authorization: Bearer <key>`",
        Some(_) => "invalid API key",
    };
    RequestError {
        failure: Failure::Unauthorized,
        message: message.into(),
        dialect,
        retry_after: None,
    }
    .into_response()
}

/// One info line per request, without payload or credentials.
async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::request(&route, status, elapsed);
    tracing::info!(%method, route, status, micros = elapsed.as_micros() as u64, "request");
    response
}

/// Reads and parses a JSON body within `--max-body`. An over-limit body is a 400 that names
/// the limit and the flag (es-contract §5: never 413).
async fn read_json<T: DeserializeOwned>(
    state: &AppState,
    dialect: Dialect,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, RequestError> {
    let limit = state.cfg.max_body;
    let too_large = || {
        RequestError::bad_request(
            dialect,
            format!("request body exceeds the limit of {limit} bytes (`--max-body`); send fewer or smaller inputs per request"),
        )
    };
    // Past the limit the body is still read, and dropped, up to 4× the limit: ES writes the whole
    // body before it reads the answer, and if the server stops reading, the write fails and ES
    // retries an I/O error instead of reading this 400 (issue 6, finding F6). Beyond that the
    // connection is cut: a 500 MB body is refused without reading it.
    let drain_limit = (limit as u64).saturating_mul(4);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        if n <= drain_limit {
            drain(body.into_data_stream(), n).await;
        }
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            RequestError::bad_request(dialect, format!("cannot read the request body: {e}"))
        })?;
        if bytes.len() + chunk.len() > limit {
            let read = (bytes.len() + chunk.len()) as u64;
            drain(stream, drain_limit.saturating_sub(read)).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| RequestError::bad_request(dialect, format!("invalid JSON body: {e}")))
}

/// Reads and drops up to `max` more bytes of a request body.
async fn drain(mut stream: axum::body::BodyDataStream, max: u64) {
    let mut read = 0u64;
    while read < max {
        match stream.next().await {
            Some(Ok(chunk)) => read += chunk.len() as u64,
            _ => return,
        }
    }
}

/// One input as a dialect received it, with how to read it.
struct RawInput {
    value: String,
    hint: ModalityHint,
}

/// Classifies and embeds a request's inputs in `priority`'s lane. An input that cannot be read
/// (bad base64, not an image) fails the request at once, before any decoding or inference;
/// otherwise the first input found failing is named, and the request's other work is dropped.
async fn embed_inputs(
    state: &AppState,
    dialect: Dialect,
    inputs: Vec<RawInput>,
    priority: Priority,
) -> Result<Vec<Embedding>, RequestError> {
    if inputs.is_empty() {
        return Err(RequestError::bad_request(
            dialect,
            "no inputs: send at least one",
        ));
    }
    let max = state.cfg.max_inputs;
    if inputs.len() > max {
        return Err(RequestError::bad_request(
            dialect,
            format!(
                "{} inputs in one request, over the limit of {max} (`--max-inputs`)",
                inputs.len()
            ),
        ));
    }
    let mut items = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.into_iter().enumerate() {
        let item =
            state
                .engine
                .parse_input(&input.value, input.hint)
                .map_err(|e: EmbedError| {
                    RequestError::engine(dialect, RequestFailure::Input(e.at(index)))
                })?;
        items.push(item);
    }
    let images = items
        .iter()
        .filter(|i| !matches!(i, crate::engine::Item::Text(_)))
        .count();
    metrics::inputs("image", images);
    metrics::inputs("text", items.len() - images);
    // A request-level refusal (queue full or too slow to drain, request larger than the
    // queue) names no input.
    state
        .engine
        .embed_request(items, priority)
        .await
        .map_err(|e| RequestError::engine(dialect, e))
}

/// What the query string of an embedding route says. The URL Elasticsearch calls is configured
/// verbatim per inference endpoint, so its parameters are how an endpoint marks its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueryParams {
    /// `modality=image|text|auto`: how to read the inputs.
    hint: ModalityHint,
    /// `priority=search`: the endpoint that serves queries, whose inputs overtake ingest.
    priority: Priority,
}

/// Parses the query string of `/v1/embeddings` and `/embed`: the first occurrence of each known
/// parameter counts, other parameters are ignored, a known one with an unknown value is a 400
/// naming the value.
fn query_params(query: Option<&str>, dialect: Dialect) -> Result<QueryParams, RequestError> {
    let (mut hint, mut priority) = (None, None);
    for pair in query.unwrap_or_default().split('&') {
        let bad = |e: String| RequestError::bad_request(dialect, e);
        if let Some(value) = pair.strip_prefix("modality=") {
            if hint.is_none() {
                hint = Some(value.parse().map_err(bad)?);
            }
        } else if let Some(value) = pair.strip_prefix("priority=") {
            if priority.is_none() {
                priority = Some(value.parse().map_err(bad)?);
            }
        }
    }
    Ok(QueryParams {
        hint: hint.unwrap_or(ModalityHint::Auto),
        priority: priority.unwrap_or_default(),
    })
}

fn not_ready_status(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_compares_exactly_and_hides_itself() {
        let key = ApiKey::new(" s3cret\n".into()).unwrap();
        assert!(key.matches("s3cret"));
        assert!(!key.matches("s3cre"));
        assert!(!key.matches("s3cret2"));
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
        assert!(ApiKey::new("  ".into()).is_none());
    }

    #[test]
    fn modality_and_priority_parameters_are_read_from_the_query() {
        let d = Dialect::OpenAi;
        let params = |q| query_params(q, d).map(|p| (p.hint, p.priority));
        assert_eq!(
            params(None).unwrap(),
            (ModalityHint::Auto, Priority::Ingest)
        );
        assert_eq!(
            params(Some("source=es&modality=image")).unwrap(),
            (ModalityHint::Image, Priority::Ingest)
        );
        assert_eq!(
            params(Some("modality=text")).unwrap(),
            (ModalityHint::Text, Priority::Ingest)
        );
        assert_eq!(
            params(Some("priority=search")).unwrap(),
            (ModalityHint::Auto, Priority::Search)
        );
        assert_eq!(
            params(Some("priority=search&modality=image&priority=ingest")).unwrap(),
            (ModalityHint::Image, Priority::Search),
            "the first occurrence counts"
        );
        assert!(params(Some("modality=video"))
            .unwrap_err()
            .message
            .contains("video"));
        let e = params(Some("modality=image&priority=urgent")).unwrap_err();
        assert!(e.message.contains("`urgent`"), "{}", e.message);
        assert_eq!(e.failure, Failure::Input(ErrorKind::BadInput));
    }
}
