//! The HTTP surface Elasticsearch calls: the router, API-key check, body limit, request logging,
//! and the one function every dialect uses to turn its inputs into vectors. Dialects own only
//! their wire types and body shapes (`openai.rs`, `hf.rs`); `ops.rs` serves health and metrics;
//! `status.rs` is the only place an error becomes a status code; `server.rs` accepts and times
//! connections; `budget.rs` caps the request-body bytes held at once; `models.rs` holds the
//! models served and picks one per request; `query_cache.rs` answers repeated texts.

mod budget;
pub mod fdlimit;
mod hf;
mod models;
mod openai;
mod ops;
mod query_cache;
pub mod server;
mod status;
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
pub use models::Models;
use query_cache::QueryCache;
pub use query_cache::QueryCacheLimits;
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
    /// Request-body bytes held at once across all requests (`budget.rs`); beyond it, a 429.
    pub max_buffered_body: usize,
    /// Text vectors kept for repeated queries (`query_cache.rs`).
    pub query_cache: QueryCacheLimits,
}

impl Default for HttpConfig {
    /// The CLI's defaults, without a key and without the query cache.
    fn default() -> Self {
        HttpConfig {
            api_key: None,
            max_body: 64 << 20,
            max_inputs: 2048,
            max_buffered_body: 512 << 20,
            query_cache: QueryCacheLimits::default(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    models: Models,
    cfg: Arc<HttpConfig>,
    budget: Arc<budget::BodyBudget>,
    cache: Option<Arc<QueryCache>>,
}

/// The full application over one model ([`Engine`]) or several ([`Models`]). `/health` and
/// `/ready` stay open for orchestrators; every other route requires the API key when one is
/// configured.
pub fn router(models: impl Into<Models>, cfg: HttpConfig) -> Router {
    let state = AppState {
        models: models.into(),
        budget: Arc::new(budget::BodyBudget::new(cfg.max_buffered_body)),
        cache: QueryCache::new(cfg.query_cache).map(Arc::new),
        cfg: Arc::new(cfg),
    };
    let protected = Router::new()
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/embed", post(hf::embed))
        .route("/hf/embed", post(hf::embed))
        .route("/info", get(ops::info))
        .route("/metrics", get(ops::metrics))
        // Inside the key check: a client without the key cannot take the body budget.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            budget::reserve,
        ))
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

impl Dialect {
    /// The dialect a refusal made before routing answers in: OpenAI's under `/v1/`.
    fn of_path(path: &str) -> Dialect {
        if path.starts_with("/v1/") {
            Dialect::OpenAi
        } else {
            Dialect::HuggingFace
        }
    }
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
        .and_then(bearer_token);
    if presented.is_some_and(|p| key.matches(p)) {
        return next.run(req).await;
    }
    let dialect = Dialect::of_path(req.uri().path());
    let message = match presented {
        None => "missing API key: send `Authorization: Bearer <key>`",
        Some(_) => "invalid API key",
    };
    let refusal = RequestError {
        failure: Failure::Unauthorized,
        message: message.into(),
        dialect,
        retry_after: None,
    };
    refuse_after_body(req, state.cfg.max_body, refusal).await
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110 §11.1): `bearer k` and `BEARER k` carry the key `k`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Answers `refusal` once the request body has been read and dropped (up to `max` bytes), so a
/// client that writes its whole body before reading, as Elasticsearch does, reads the answer
/// instead of failing its write on a closed connection. A body larger than `max` is not read:
/// the answer then closes the connection.
async fn refuse_after_body(req: Request, max: usize, refusal: RequestError) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut response = refusal.into_response();
    if declared.is_some_and(|n| n > max as u64) {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return response;
    }
    let mut stream = req.into_body().into_data_stream();
    let mut read = 0u64;
    loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                read += chunk.len() as u64;
                if read > max as u64 {
                    response.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                    return response;
                }
            }
            Some(Err(_)) | None => return response,
        }
    }
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

/// The model a request asked for, by `?model=` or the body's own `model` field (OpenAI); a 400
/// naming the models served when none has that name, or when the two name different models.
fn select_model<'s>(
    state: &'s AppState,
    dialect: Dialect,
    query: Option<&str>,
    body: Option<&str>,
) -> Result<&'s Engine, RequestError> {
    let name = match (query, body) {
        (Some(q), Some(b)) if !q.is_empty() && !b.is_empty() && q != b => {
            return Err(RequestError::bad_request(
                dialect,
                format!("the URL's `?model={q}` and the body's `model` `{b}` name different models: send one name"),
            ))
        }
        (Some(q), _) if !q.is_empty() => Some(q),
        (_, body) => body,
    };
    state
        .models
        .select(name)
        .map_err(|m| RequestError::bad_request(dialect, m))
}

/// Classifies and embeds a request's inputs with `engine` in `priority`'s lane, texts through the
/// query cache. An input that cannot be read (bad base64, not an image) fails the request at once,
/// before any decoding or inference; otherwise the first input found failing is named, and the
/// request's other work is dropped.
async fn embed_inputs(
    state: &AppState,
    dialect: Dialect,
    engine: &Engine,
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
        let item = engine
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
    let model = &engine.info().name;
    metrics::inputs("image", model, images);
    metrics::inputs("text", model, items.len() - images);
    // A request-level refusal (queue full or too slow to drain, request larger than the
    // queue) names no input.
    query_cache::embed(state.cache.as_deref(), engine, items, priority)
        .await
        .map_err(|e| RequestError::engine(dialect, e))
}

/// What the query string of an embedding route says. The URL Elasticsearch calls is configured
/// verbatim per inference endpoint, so its parameters are how an endpoint marks its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QueryParams {
    /// `modality=image|text|auto`: how to read the inputs.
    hint: ModalityHint,
    /// `priority=search`: the endpoint that serves queries, whose inputs overtake ingest.
    priority: Priority,
    /// `model=NAME`: the model to use (`models.rs`); the only way the HF dialect can name one.
    model: Option<String>,
}

/// Parses the query string of `/v1/embeddings` and `/embed`, percent-decoded: the first
/// occurrence of each known parameter counts, other parameters are ignored, a known one with an
/// unknown value is a 400 naming the value.
fn query_params(query: Option<&str>, dialect: Dialect) -> Result<QueryParams, RequestError> {
    let (mut hint, mut priority, mut model) = (None, None, None);
    let bad = |e: String| RequestError::bad_request(dialect, e);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "modality" if hint.is_none() => hint = Some(value.parse().map_err(bad)?),
            "priority" if priority.is_none() => priority = Some(value.parse().map_err(bad)?),
            "model" if model.is_none() => model = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok(QueryParams {
        hint: hint.unwrap_or(ModalityHint::Auto),
        priority: priority.unwrap_or_default(),
        model,
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
    fn the_bearer_scheme_is_case_insensitive() {
        for (value, token) in [
            ("Bearer k", Some("k")),
            ("bearer k", Some("k")),
            ("BEARER  k ", Some("k")),
            ("bEaReR k", Some("k")),
            ("Basic k", None),
            ("Bearer", None),
            ("Bearer  ", None),
            ("Bearerk", None),
        ] {
            assert_eq!(bearer_token(value), token, "{value:?}");
        }
    }

    #[test]
    fn modality_and_priority_parameters_are_read_from_the_query() {
        let d = Dialect::OpenAi;
        let params = |q| query_params(q, d).map(|p| (p.hint, p.priority));
        assert_eq!(query_params(None, d).unwrap().model, None);
        assert_eq!(
            query_params(Some("model=a%2Fb+c&model=d"), d)
                .unwrap()
                .model,
            Some("a/b c".to_owned()),
            "percent-decoded, the first occurrence counts"
        );
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
