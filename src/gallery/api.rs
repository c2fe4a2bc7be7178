//! The gallery's JSON API: `GET /api/status` (what the page shows before the first search) and
//! `POST /api/search` (text, uploaded image, image URL or "more like this"). Every failure is an
//! [`ApiError`] with a stable `code` the page turns into a state — cluster unreachable, index
//! missing, sidecar not ready, model mismatch, bad upload — and the status that fits it; no
//! handler answers 500 for anything a user or an operator can cause.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use elasticsearch::Elasticsearch;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use super::es::{self, Filters, GalleryHit, IndexFacts, Page, MAX_WINDOW};
use crate::engine::ModelInfo;
use crate::es::client::{cluster_info, EsError};
use crate::es::image::{prepare, ImageOptions, PreparedImage};
use crate::es::version::Cluster;
use crate::sidecar::{ImageBytes, Lane, SidecarClient, SidecarError};
use crate::url::Fetcher;

/// Tiles per page when the request does not say.
pub(crate) const DEFAULT_PAGE: usize = 24;
/// Most tiles one page may ask for.
pub(crate) const MAX_PAGE: usize = 200;
/// Longest text query, in characters; the model keeps far fewer tokens anyway.
const MAX_TEXT_CHARS: usize = 1000;

/// Everything a request needs; shared by all of them.
pub(crate) struct Gallery {
    pub(crate) client: Elasticsearch,
    pub(crate) index: String,
    pub(crate) field: String,
    /// Reads `/info` on every search and never retries: a person is waiting.
    pub(crate) sidecar: SidecarClient,
    /// [`Lane::Search`] unless `--no-priority`.
    pub(crate) lane: Lane,
    /// `None`: image URLs are refused (no `--allow-url-hosts`).
    pub(crate) fetcher: Option<Fetcher>,
    /// The shrinking `search --image` applies (`--max-side`).
    pub(crate) image: ImageOptions,
    /// Largest uploaded or fetched image, in bytes.
    pub(crate) max_upload: usize,
    /// `GET /`, asked once the cluster first answers.
    pub(crate) cluster: OnceCell<Cluster>,
}

impl Gallery {
    /// Largest `POST /api/search` body: the upload as base64 plus room for the other fields.
    pub(crate) fn max_body(&self) -> usize {
        self.max_upload.div_ceil(3) * 4 + (64 << 10)
    }

    async fn cluster(&self) -> Result<&Cluster, ApiError> {
        self.cluster
            .get_or_try_init(|| async {
                cluster_info(&self.client).await.map_err(|err| {
                    match err.downcast_ref::<EsError>() {
                        Some(es_error) => ApiError::from_es(es_error, &self.index),
                        None => ApiError::new(ErrorCode::Elasticsearch, format!("{err:#}")),
                    }
                })
            })
            .await
    }
}

/// The page states; `code` in every error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorCode {
    BadRequest,
    TooLarge,
    UrlRefused,
    NotFound,
    Unauthorized,
    ClusterUnreachable,
    IndexMissing,
    SidecarNotReady,
    SidecarError,
    ModelMismatch,
    Elasticsearch,
}

impl ErrorCode {
    fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UrlRefused => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::IndexMissing => StatusCode::NOT_FOUND,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::ClusterUnreachable | ErrorCode::SidecarError | ErrorCode::Elasticsearch => {
                StatusCode::BAD_GATEWAY
            }
            ErrorCode::SidecarNotReady => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ModelMismatch => StatusCode::CONFLICT,
        }
    }
}

/// A failed request: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    fn from_es(err: &EsError, index: &str) -> ApiError {
        match err {
            EsError::NoAnswer { .. } | EsError::CutOff { .. } => ApiError::new(
                ErrorCode::ClusterUnreachable,
                format!("Elasticsearch is unreachable: {}", err.one_line()),
            ),
            _ if err.es_type() == Some("index_not_found_exception") => ApiError::new(
                ErrorCode::IndexMissing,
                format!(
                    "the index `{index}` does not exist: create it with `sightline setup --index {index}`, then fill it with `sightline ingest`"
                ),
            ),
            _ => ApiError::new(ErrorCode::Elasticsearch, err.one_line()),
        }
    }

    fn from_sidecar(err: SidecarError) -> ApiError {
        match err {
            // Not reachable, loading or full: try again later.
            SidecarError::Unreachable { .. } | SidecarError::Busy { .. } => ApiError::new(
                ErrorCode::SidecarNotReady,
                format!("the sidecar is not ready: {err}"),
            ),
            // About the query itself: an image the model cannot decode, a text too long.
            SidecarError::Refused {
                status: 400 | 413,
                message,
                ..
            } => ApiError::bad(message),
            // A wrong URL, a wrong key, not a Sightline sidecar.
            SidecarError::Refused { .. } | SidecarError::BadAnswer { .. } => {
                ApiError::new(ErrorCode::SidecarError, err.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.code.status(), Json(body)).into_response()
    }
}

/// The body of `POST /api/search`: exactly one of `text`, `image`, `url`, `like`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    #[serde(default)]
    text: Option<String>,
    /// `data:image/…;base64,…` of an uploaded, dropped or pasted picture.
    #[serde(default)]
    image: Option<String>,
    /// An `http(s)://` image URL, fetched by the gallery under `--allow-url-hosts`.
    #[serde(default)]
    url: Option<String>,
    /// Document `_id` whose stored vector is the query.
    #[serde(default)]
    like: Option<String>,
    #[serde(default)]
    offset: usize,
    #[serde(default)]
    size: Option<usize>,
    /// Hits scoring below this are left out.
    #[serde(default)]
    min_score: Option<f64>,
    #[serde(default)]
    filters: Filters,
}

/// The answer of `POST /api/search`.
#[derive(Debug, Serialize)]
struct SearchReply {
    hits: Vec<GalleryHit>,
    offset: usize,
    /// Where "load more" continues; `null` when the list is exhausted.
    next_offset: Option<usize>,
    /// Hits of this page left out by `min_score`.
    below_min_score: usize,
    took_ms: Option<u64>,
}

/// `POST /api/search`.
pub(crate) async fn search(State(gallery): State<Arc<Gallery>>, body: Body) -> Response {
    match run_search(&gallery, body).await {
        Ok(reply) => Json(reply).into_response(),
        Err(err) => {
            tracing::debug!(code = ?err.code, message = %err.message, "search failed");
            err.into_response()
        }
    }
}

async fn run_search(gallery: &Gallery, body: Body) -> Result<SearchReply, ApiError> {
    let limit = gallery.max_body();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "the request is larger than {limit} bytes: images may be at most {} bytes",
                gallery.max_upload
            ),
        )
    })?;
    let request: SearchRequest = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::bad(format!("the search request is not valid JSON: {err}")))?;
    let page = Page {
        offset: request.offset,
        size: request.size.unwrap_or(DEFAULT_PAGE),
    };
    if page.size == 0 || page.size > MAX_PAGE {
        return Err(ApiError::bad(format!(
            "`size` must be between 1 and {MAX_PAGE}"
        )));
    }
    if page.offset + page.size > MAX_WINDOW {
        return Err(ApiError::bad(format!(
            "Elasticsearch ranks at most {MAX_WINDOW} hits: `offset` + `size` must not exceed it"
        )));
    }
    if let Some(min) = request.min_score {
        if !min.is_finite() || min < 0.0 {
            return Err(ApiError::bad("`min_score` must be a number ≥ 0"));
        }
    }
    let vector = query_vector(gallery, &request).await?;
    let body = es::knn_body(&gallery.field, &vector, page, &request.filters);
    let answer = es::search(&gallery.client, &gallery.index, body)
        .await
        .map_err(|err| ApiError::from_es(&err, &gallery.index))?;
    let hits = es::parse_hits(&answer);
    let returned = hits.len();
    let min_score = request.min_score.unwrap_or(0.0);
    let kept: Vec<GalleryHit> = hits.into_iter().filter(|h| h.score >= min_score).collect();
    let below_min_score = returned - kept.len();
    let next = page.offset + page.size;
    Ok(SearchReply {
        hits: es::group_duplicates(kept),
        offset: page.offset,
        // Scores only fall down the list, so once one is cut the rest would be too.
        next_offset: (returned == page.size && below_min_score == 0 && next < MAX_WINDOW)
            .then_some(next),
        below_min_score,
        took_ms: answer.get("took").and_then(Value::as_u64),
    })
}

/// What the sidecar embeds for a search.
enum Query {
    Text(String),
    /// Upright and shrunk as `search --image` sends it.
    Image(PreparedImage),
}

/// The query vector: embedded by the sidecar, or read from the index for "more like this".
async fn query_vector(gallery: &Gallery, request: &SearchRequest) -> Result<Vec<f32>, ApiError> {
    let given = [
        request.text.is_some(),
        request.image.is_some(),
        request.url.is_some(),
        request.like.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::bad(
            "give exactly one of `text`, `image`, `url` or `like`",
        ));
    }
    if let Some(id) = &request.like {
        let cluster = knn_cluster(gallery).await?;
        return stored_vector(gallery, cluster, id).await;
    }
    // Validate the input before asking anyone else, so a bad upload is a 400 whatever the
    // state of the cluster.
    let query = match (&request.text, &request.image, &request.url) {
        (Some(text), _, _) => Query::Text(checked_text(text)?),
        (_, Some(uri), _) => Query::Image(prepared_upload(gallery, uri)?),
        (_, _, Some(url)) => Query::Image(fetched_image(gallery, url).await?),
        _ => return Err(ApiError::bad("nothing to search with")),
    };
    knn_cluster(gallery).await?;
    let (facts, info) = tokio::join!(
        es::read_facts(&gallery.client, &gallery.index, &gallery.field),
        gallery.sidecar.info()
    );
    let facts = facts.map_err(|err| ApiError::from_es(&err, &gallery.index))?;
    let info = info.map_err(ApiError::from_sidecar)?;
    check_same_model(&gallery.index, &facts, &info)?;
    let vectors = match &query {
        Query::Text(text) => {
            let texts = std::slice::from_ref(text);
            gallery.sidecar.embed_texts(texts, gallery.lane).await
        }
        Query::Image(image) => {
            let images = [ImageBytes::from(image)];
            gallery.sidecar.embed_images(&images, gallery.lane).await
        }
    };
    vectors
        .map_err(ApiError::from_sidecar)?
        .pop()
        .ok_or_else(|| ApiError::new(ErrorCode::SidecarError, "the sidecar answered no vector"))
}

/// The cluster, refused when it is too old for the one request form the gallery sends.
async fn knn_cluster(gallery: &Gallery) -> Result<&Cluster, ApiError> {
    let cluster = gallery.cluster().await?;
    if !cluster.serverless && !cluster.version.at_least(8, 4) {
        return Err(ApiError::new(
            ErrorCode::Elasticsearch,
            format!(
                "Elasticsearch {} has no top-level kNN search; the gallery needs 8.4 or newer",
                cluster.version
            ),
        ));
    }
    Ok(cluster)
}

fn checked_text(text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ApiError::bad("the text query is empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::bad(format!(
            "the text query is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    Ok(text.to_owned())
}

/// A `data:…;base64,…` upload, size-checked and prepared exactly as `search --image` prepares a
/// file; returns the data URI the sidecar embeds.
fn prepared_upload(gallery: &Gallery, uri: &str) -> Result<PreparedImage, ApiError> {
    let (header, payload) = uri
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        .ok_or_else(|| ApiError::bad("`image` must be a data URI (data:image/…;base64,…)"))?;
    if !header.ends_with(";base64") {
        return Err(ApiError::bad("`image` must be a base64 data URI"));
    }
    // Checked on the encoded length first, so an oversized upload is never decoded.
    if payload.len() / 4 * 3 > gallery.max_upload + 2 {
        return Err(too_large(gallery, payload.len() / 4 * 3));
    }
    let bytes = BASE64
        .decode(payload.trim())
        .map_err(|err| ApiError::bad(format!("the uploaded image is not valid base64: {err}")))?;
    prepare_bytes(gallery, &bytes, "the uploaded file")
}

fn too_large(gallery: &Gallery, size: usize) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!(
            "the image is {size} bytes; the gallery accepts images up to {} bytes",
            gallery.max_upload
        ),
    )
}

fn prepare_bytes(gallery: &Gallery, bytes: &[u8], what: &str) -> Result<PreparedImage, ApiError> {
    if bytes.len() > gallery.max_upload {
        return Err(too_large(gallery, bytes.len()));
    }
    prepare(bytes, gallery.image)
        .map_err(|err| ApiError::bad(format!("{what} is not a usable image: {err:#}")))
}

/// An image URL, fetched by the gallery under the operator's host rules.
async fn fetched_image(gallery: &Gallery, url: &str) -> Result<PreparedImage, ApiError> {
    let fetcher = gallery.fetcher.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::UrlRefused,
            "image URLs are off: start the gallery with --allow-url-hosts to allow hosts",
        )
    })?;
    fetcher
        .check(url)
        .map_err(|err| ApiError::new(ErrorCode::UrlRefused, err.message))?;
    let bytes = fetcher
        .fetch(url)
        .await
        .map_err(|err| ApiError::bad(format!("cannot fetch {url}: {}", err.message)))?;
    prepare_bytes(gallery, &bytes, &format!("the image at {url}"))
}

/// The vector stored with document `id`, read the way the cluster's version needs.
async fn stored_vector(
    gallery: &Gallery,
    cluster: &Cluster,
    id: &str,
) -> Result<Vec<f32>, ApiError> {
    let body = es::vector_lookup_body(cluster, &gallery.field, id);
    let answer = es::search(&gallery.client, &gallery.index, body)
        .await
        .map_err(|err| ApiError::from_es(&err, &gallery.index))?;
    let source = answer.pointer("/hits/hits/0/_source").ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no document `{id}` in `{}`", gallery.index),
        )
    })?;
    es::vector_in_source(source, &gallery.field).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!(
                "document `{id}` has no stored vector in `{}`",
                gallery.field
            ),
        )
    })
}

/// Vectors from two models cannot be compared: refuse before searching.
fn check_same_model(index: &str, facts: &IndexFacts, info: &ModelInfo) -> Result<(), ApiError> {
    if let Some(dims) = facts.dims {
        if dims != info.dimensions {
            return Err(ApiError::new(
                ErrorCode::ModelMismatch,
                format!(
                    "the index `{index}` holds {dims}-dimensional vectors but the sidecar's model {} makes {}-dimensional ones: point --sidecar-url at the model that filled the index",
                    info.name, info.dimensions
                ),
            ));
        }
    }
    if let Some(recorded) = &facts.fingerprint {
        if !info.fingerprint.is_empty() && *recorded != info.fingerprint {
            return Err(ApiError::new(
                ErrorCode::ModelMismatch,
                format!(
                    "the index `{index}` was filled by the model with fingerprint {recorded}, but the sidecar serves {} ({}): queries from it would be compared with vectors of another model",
                    info.fingerprint, info.name
                ),
            ));
        }
    }
    Ok(())
}

/// `GET /api/status`: each dependency's state, and the first problem as the page's state. Always
/// 200: the body is the report.
pub(crate) async fn status(State(gallery): State<Arc<Gallery>>) -> Json<Value> {
    let (cluster, facts, info) = tokio::join!(
        gallery.cluster(),
        es::read_facts(&gallery.client, &gallery.index, &gallery.field),
        gallery.sidecar.info()
    );
    let facts = facts.map_err(|err| ApiError::from_es(&err, &gallery.index));
    let info = info.map_err(ApiError::from_sidecar);
    let problem = match (&cluster, &facts, &info) {
        (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => Some(err.clone()),
        (Ok(_), Ok(facts), Ok(info)) => check_same_model(&gallery.index, facts, info).err(),
    };
    let cluster_json = match &cluster {
        Ok(cluster) => {
            json!({"ok": true, "version": cluster.version.to_string(), "serverless": cluster.serverless})
        }
        Err(err) => json!({"ok": false, "message": err.message}),
    };
    let index_json = match &facts {
        Ok(facts) => {
            json!({"ok": true, "name": gallery.index, "indices": facts.indices, "dims": facts.dims, "fingerprint": facts.fingerprint})
        }
        Err(err) => json!({"ok": false, "name": gallery.index, "message": err.message}),
    };
    let sidecar_json = match &info {
        Ok(info) => {
            json!({"ok": true, "model": info.name, "dimensions": info.dimensions, "fingerprint": info.fingerprint})
        }
        Err(err) => json!({"ok": false, "message": err.message}),
    };
    Json(json!({
        "state": problem.as_ref().map_or(json!("ready"), |p| json!(p.code)),
        "message": problem.map(|p| p.message),
        "cluster": cluster_json,
        "index": index_json,
        "sidecar": sidecar_json,
        "url_queries": gallery.fetcher.is_some(),
        "max_upload_bytes": gallery.max_upload,
        "page_size": DEFAULT_PAGE,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Similarity;

    fn info(dims: usize, fingerprint: &str) -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            dimensions: dims,
            normalized: true,
            similarity: Similarity::DotProduct,
            modalities: vec![],
            max_seq_len: 0,
            serving: None,
            fingerprint: fingerprint.into(),
        }
    }

    #[test]
    fn model_checks_compare_dims_and_recorded_fingerprints() {
        let facts = IndexFacts {
            indices: vec!["i".into()],
            dims: Some(512),
            fingerprint: Some("sha256:a".into()),
        };
        assert!(check_same_model("i", &facts, &info(512, "sha256:a")).is_ok());
        let dims = check_same_model("i", &facts, &info(768, "sha256:a")).unwrap_err();
        assert_eq!(dims.code, ErrorCode::ModelMismatch);
        assert!(
            dims.message.contains("512") && dims.message.contains("768"),
            "{}",
            dims.message
        );
        let other = check_same_model("i", &facts, &info(512, "sha256:b")).unwrap_err();
        assert!(other.message.contains("sha256:a") && other.message.contains("sha256:b"));
        // An index from before fingerprints were recorded is checked by length only.
        let old = IndexFacts {
            fingerprint: None,
            ..facts
        };
        assert!(check_same_model("i", &old, &info(512, "sha256:b")).is_ok());
    }

    #[test]
    fn every_code_has_the_status_the_page_expects() {
        assert_eq!(
            ErrorCode::SidecarNotReady.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(ErrorCode::IndexMissing.status(), StatusCode::NOT_FOUND);
        assert_eq!(ErrorCode::TooLarge.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(ErrorCode::ModelMismatch.status(), StatusCode::CONFLICT);
        assert_eq!(
            serde_json::to_value(ErrorCode::ClusterUnreachable).unwrap(),
            "cluster_unreachable"
        );
    }
}
