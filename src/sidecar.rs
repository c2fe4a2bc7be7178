//! The HTTP client of a running `sightline serve`: how the CLI (`ingest`, `search`) and the
//! gallery get vectors without loading the model themselves, so that index-time and query-time
//! vectors come from the one model the sidecar serves.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sightline::sidecar::{ImageBytes, Lane, SidecarClient};
//! let sidecar = SidecarClient::connect("http://127.0.0.1:8080", None).await?;
//! println!("{} ({})", sidecar.model().name, sidecar.model().fingerprint);
//! let query = sidecar.embed_texts(&["a red bicycle".to_owned()], Lane::Search).await?;
//! let jpeg = std::fs::read("cat.jpg")?;
//! let image = sidecar
//!     .embed_images(&[ImageBytes { mime: "image/jpeg", bytes: &jpeg }], Lane::Search)
//!     .await?;
//! # let _ = (query, image);
//! # Ok(())
//! # }
//! ```
//!
//! What it sends (`POST <url>/v1/embeddings`, the OpenAI dialect):
//! - `encoding_format: "base64"`: each vector comes back as base64 of packed little-endian
//!   float32 (`src/http/openai.rs`, `pack_base64`), about a third of the bytes of a JSON float
//!   array; a float array is accepted too, so another OpenAI-compatible sidecar still works;
//! - several images per request (at most `/info`'s `max_inputs` and `max_batch.image`, and under
//!   its `max_body_bytes`), each as a `data:image/…;base64,` URI so it can never be read as text;
//! - `?priority=search` for [`Lane::Search`]: the sidecar serves those inputs before queued ingest
//!   batches, so a query never waits behind a backfill;
//! - `Authorization: Bearer <key>` when the sidecar was started with `--api-key`.
//!
//! "Try again later" answers (429 and 503, both with `Retry-After`; a closed port while the model
//! loads) are retried until [`SidecarOptions::retry_deadline`], so a sidecar restart during a
//! backfill loses nothing. A 4xx is the input's fault and is returned at once, with the sidecar's
//! own message, as [`SidecarError::Refused`].

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::{ModelInfo, ServerInfo};

/// The `--sidecar-url` / `--sidecar-api-key` flags of commands that call the sidecar themselves
/// (`ingest`, `search`): where this machine reaches it, which may differ from the URL
/// Elasticsearch uses (`setup --sidecar-url`).
#[derive(Debug, Clone, clap::Args)]
pub struct SidecarArgs {
    /// Base URL of a running `sightline serve`, as this machine reaches it.
    #[arg(
        long = "sidecar-url",
        env = "SIGHTLINE_SIDECAR_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub sidecar_url: String,
    /// Bearer token the sidecar was started with (`serve --api-key`).
    #[arg(long, env = "SIGHTLINE_SIDECAR_API_KEY", hide_env_values = true)]
    pub sidecar_api_key: Option<String>,
    /// How long to keep retrying while the sidecar is unreachable, loading (503) or full (429),
    /// before the images of a batch count as failed.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub sidecar_wait: u64,
}

impl SidecarArgs {
    /// Connects, retrying for `--sidecar-wait`.
    pub async fn connect(&self) -> Result<SidecarClient, SidecarError> {
        let options = SidecarOptions {
            retry_deadline: Duration::from_secs(self.sidecar_wait),
            ..SidecarOptions::default()
        };
        SidecarClient::connect_with(&self.sidecar_url, self.sidecar_api_key.as_deref(), options)
            .await
    }
}

/// Which queue of the sidecar an input joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Bulk work: FIFO behind everything queued.
    Ingest,
    /// A query someone is waiting for: `?priority=search`, served before queued ingest inputs.
    Search,
}

impl Lane {
    /// The query string the lane adds to the sidecar URL.
    pub fn query(self) -> &'static str {
        match self {
            Lane::Ingest => "",
            Lane::Search => "?priority=search",
        }
    }
}

/// How the sidecar reads the inputs of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modality {
    Text,
    Image,
}

impl Modality {
    fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
        }
    }
}

/// One image to embed: its bytes and media type (`image/jpeg`, …), sent as a data URI.
#[derive(Debug, Clone, Copy)]
pub struct ImageBytes<'a> {
    pub mime: &'a str,
    pub bytes: &'a [u8],
}

impl<'a> From<&'a crate::es::image::PreparedImage> for ImageBytes<'a> {
    fn from(image: &'a crate::es::image::PreparedImage) -> Self {
        ImageBytes {
            mime: image.payload_mime,
            bytes: &image.payload,
        }
    }
}

/// Timeouts and retry budget.
#[derive(Debug, Clone, Copy)]
pub struct SidecarOptions {
    /// One HTTP request, answer included.
    pub request_timeout: Duration,
    /// How long "try again later" answers are retried before giving up.
    pub retry_deadline: Duration,
    /// Longest pause between two attempts (a larger `Retry-After` is capped to it).
    pub max_delay: Duration,
    /// Images per request (further capped by the sidecar's `/info` limits).
    pub images_per_request: usize,
}

impl Default for SidecarOptions {
    fn default() -> Self {
        SidecarOptions {
            request_timeout: Duration::from_secs(120),
            // A model reload takes seconds to a minute; two minutes covers a restart.
            retry_deadline: Duration::from_secs(120),
            max_delay: Duration::from_secs(5),
            images_per_request: 16,
        }
    }
}

/// Why a sidecar call did not give vectors.
#[derive(Debug, Clone, PartialEq)]
pub enum SidecarError {
    /// No answer (connection refused, reset, timeout) until the retry deadline.
    Unreachable { url: String, reason: String },
    /// 429/503 until the retry deadline.
    Busy {
        url: String,
        status: u16,
        message: String,
    },
    /// A 4xx or another 5xx: the request or one of its inputs is wrong; not retried.
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// A 2xx that is not the expected JSON (wrong count, bad base64, …).
    BadAnswer { url: String, reason: String },
}

impl SidecarError {
    /// True when the error is about the inputs (retrying them unchanged cannot help).
    pub fn is_refusal(&self) -> bool {
        matches!(self, SidecarError::Refused { status, .. } if (400..500).contains(status))
    }
}

impl std::fmt::Display for SidecarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SidecarError::Unreachable { url, reason } => write!(
                f,
                "cannot reach the sidecar at {url} ({reason}); is `sightline serve` running there? (--sidecar-url)"
            ),
            SidecarError::Busy {
                url,
                status,
                message,
            } => write!(
                f,
                "the sidecar at {url} kept answering {status} (not ready or overloaded) past the retry deadline: {message}"
            ),
            SidecarError::Refused {
                url,
                status,
                message,
            } => write!(f, "the sidecar at {url} answered {status}: {message}"),
            SidecarError::BadAnswer { url, reason } => {
                write!(f, "the sidecar at {url} gave an unexpected answer: {reason}")
            }
        }
    }
}

impl std::error::Error for SidecarError {}

/// A connected sidecar and the model it serves.
#[derive(Debug, Clone)]
pub struct SidecarClient {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
    options: SidecarOptions,
    model: ModelInfo,
}

impl SidecarClient {
    /// Reads `/info` (retrying while the sidecar starts) and keeps it: [`Self::model`].
    pub async fn connect(url: &str, api_key: Option<&str>) -> Result<Self, SidecarError> {
        Self::connect_with(url, api_key, SidecarOptions::default()).await
    }

    /// [`Self::connect`] with explicit options.
    pub async fn connect_with(
        url: &str,
        api_key: Option<&str>,
        options: SidecarOptions,
    ) -> Result<Self, SidecarError> {
        let mut client = Self::unconnected(url, api_key, options)?;
        client.model = client.info().await?;
        Ok(client)
    }

    /// A client that has not read `/info` yet and contacts nothing until it is used: for the
    /// gallery, which must start (and say "sidecar not ready") while the sidecar is down, and
    /// reads `/info` itself on every search. Its requests name no model, so the sidecar picks
    /// its first one.
    pub(crate) fn unconnected(
        url: &str,
        api_key: Option<&str>,
        options: SidecarOptions,
    ) -> Result<Self, SidecarError> {
        let base = url.trim().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            // The sidecar sits next to its clients; a system proxy would only be in the way.
            .no_proxy()
            .build()
            .map_err(|err| SidecarError::Unreachable {
                url: base.clone(),
                reason: format!("cannot build an HTTP client: {err}"),
            })?;
        Ok(SidecarClient {
            http,
            base,
            api_key: api_key
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
            options,
            model: placeholder_model(),
        })
    }

    /// Uses the model named `name` of a sidecar that serves several (`serve --model-dir A
    /// --model-dir B`): its `/info` entry becomes [`Self::model`], and every request names it.
    pub async fn select_model(mut self, name: &str) -> Result<Self, SidecarError> {
        let url = format!("{}/info", self.base);
        let body = self.send_with_retries(&url, None).await?;
        let info: ServerInfo =
            serde_json::from_slice(&body).map_err(|err| SidecarError::BadAnswer {
                url: url.clone(),
                reason: format!("not the /info JSON Sightline expects: {err}"),
            })?;
        self.model = info
            .select(Some(name))
            .map_err(|message| SidecarError::Refused {
                url,
                status: 404,
                message,
            })?;
        Ok(self)
    }

    /// The base URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The model `/info` reported at connect time.
    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    /// `GET /info` now (model name, dimensions, similarity, limits, fingerprint).
    pub async fn info(&self) -> Result<ModelInfo, SidecarError> {
        let url = format!("{}/info", self.base);
        let body = self.send_with_retries(&url, None).await?;
        serde_json::from_slice(&body).map_err(|err| SidecarError::BadAnswer {
            url,
            reason: format!("not the /info JSON Sightline expects: {err}"),
        })
    }

    /// One vector per text, in order.
    pub async fn embed_texts(
        &self,
        texts: &[String],
        lane: Lane,
    ) -> Result<Vec<Vec<f32>>, SidecarError> {
        let mut vectors = Vec::with_capacity(texts.len());
        let per_request = self.max_inputs().max(1);
        for chunk in texts.chunks(per_request) {
            let inputs: Vec<Value> = chunk.iter().map(|t| json!(t)).collect();
            vectors.extend(self.embed_request(inputs, Modality::Text, lane).await?);
        }
        Ok(vectors)
    }

    /// One vector per image, in order, several images per request. A refused request fails
    /// the whole call; [`Self::embed_images_each`] tells which image was refused.
    pub async fn embed_images(
        &self,
        images: &[ImageBytes<'_>],
        lane: Lane,
    ) -> Result<Vec<Vec<f32>>, SidecarError> {
        let mut vectors = Vec::with_capacity(images.len());
        for batch in self.image_batches(images) {
            let inputs = batch.iter().map(|image| json!(uri(image))).collect();
            vectors.extend(self.embed_request(inputs, Modality::Image, lane).await?);
        }
        Ok(vectors)
    }

    /// One result per image: batches as [`Self::embed_images`], and a batch the sidecar refuses
    /// (400: one image it cannot decode) is re-sent image by image, so only the bad images fail,
    /// each with the sidecar's reason. An error that is not about the inputs (unreachable, busy
    /// past the deadline) fails every image of the batch with that error.
    pub async fn embed_images_each(
        &self,
        images: &[ImageBytes<'_>],
        lane: Lane,
    ) -> Vec<Result<Vec<f32>, SidecarError>> {
        let mut results = Vec::with_capacity(images.len());
        for batch in self.image_batches(images) {
            let inputs: Vec<Value> = batch.iter().map(|image| json!(uri(image))).collect();
            match self
                .embed_request(inputs.clone(), Modality::Image, lane)
                .await
            {
                Ok(vectors) => results.extend(vectors.into_iter().map(Ok)),
                Err(err) if err.is_refusal() && inputs.len() > 1 => {
                    for input in inputs {
                        let one = self.embed_request(vec![input], Modality::Image, lane).await;
                        results.push(one.and_then(|mut one| {
                            one.pop().ok_or_else(|| SidecarError::BadAnswer {
                                url: self.embeddings_url(Modality::Image, lane),
                                reason: "no vector".to_owned(),
                            })
                        }));
                    }
                }
                Err(err) => results.extend(std::iter::repeat_n(Err(err), batch.len())),
            }
        }
        results
    }

    fn max_inputs(&self) -> usize {
        self.model
            .serving
            .as_ref()
            .map_or(usize::MAX, |limits| limits.max_inputs)
    }

    /// Splits `images` by count (ours, `/info`'s `max_inputs` and image batch) and by the
    /// sidecar's body limit (base64 grows 4/3; half the limit leaves room for JSON around it).
    fn image_batches<'i, 'a>(&self, images: &'i [ImageBytes<'a>]) -> Vec<&'i [ImageBytes<'a>]> {
        let mut count_cap = self
            .options
            .images_per_request
            .max(1)
            .min(self.max_inputs());
        let mut byte_cap = usize::MAX;
        if let Some(limits) = &self.model.serving {
            count_cap = count_cap.min(limits.max_batch.image.max(1));
            byte_cap = limits.max_body_bytes / 2;
        }
        let mut batches = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (position, image) in images.iter().enumerate() {
            let size = image.bytes.len() * 4 / 3 + 64;
            let count = position - start;
            if count > 0 && (count >= count_cap || bytes + size > byte_cap) {
                batches.push(&images[start..position]);
                start = position;
                bytes = 0;
            }
            bytes += size;
        }
        if start < images.len() {
            batches.push(&images[start..]);
        }
        batches
    }

    /// `modality=` is stated so a text that looks like a data URI or a URL is still a text.
    fn embeddings_url(&self, modality: Modality, lane: Lane) -> String {
        let mut url = format!("{}/v1/embeddings?modality={}", self.base, modality.as_str());
        if let Some(priority) = lane.query().strip_prefix('?') {
            url.push('&');
            url.push_str(priority);
        }
        url
    }

    async fn embed_request(
        &self,
        inputs: Vec<Value>,
        modality: Modality,
        lane: Lane,
    ) -> Result<Vec<Vec<f32>>, SidecarError> {
        let url = self.embeddings_url(modality, lane);
        let expected = inputs.len();
        let mut body = json!({"input": inputs, "encoding_format": "base64"});
        // An unconnected client names no model: the sidecar's first one answers.
        if !self.model.name.is_empty() {
            body["model"] = json!(self.model.name);
        }
        let body = serde_json::to_vec(&body).map_err(|err| SidecarError::BadAnswer {
            url: url.clone(),
            reason: format!("cannot serialise the request: {err}"),
        })?;
        let answer = self.send_with_retries(&url, Some(body)).await?;
        decode_embeddings(&answer, expected)
            .map_err(|reason| SidecarError::BadAnswer { url, reason })
    }

    /// GET (no body) or POST `url`, retrying "try again later" answers until the deadline.
    async fn send_with_retries(
        &self,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<bytes::Bytes, SidecarError> {
        let deadline = Instant::now() + self.options.retry_deadline;
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut request = match &body {
                Some(body) => self
                    .http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone()),
                None => self.http.get(url),
            };
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let (retry_error, retry_after) = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let bytes = response
                        .bytes()
                        .await
                        .map_err(|err| SidecarError::Unreachable {
                            url: url.to_owned(),
                            reason: format!("answer cut off: {err}"),
                        });
                    match (status, bytes) {
                        (200..=299, Ok(bytes)) => return Ok(bytes),
                        (429 | 503, Ok(bytes)) => (
                            SidecarError::Busy {
                                url: url.to_owned(),
                                status,
                                message: error_message(&bytes),
                            },
                            retry_after,
                        ),
                        (_, Ok(bytes)) => {
                            return Err(SidecarError::Refused {
                                url: url.to_owned(),
                                status,
                                message: error_message(&bytes),
                            })
                        }
                        (_, Err(err)) => (err, None),
                    }
                }
                Err(err) => (
                    SidecarError::Unreachable {
                        url: url.to_owned(),
                        reason: one_line(&err),
                    },
                    None,
                ),
            };
            let delay = retry_after
                .unwrap_or(backoff)
                .clamp(Duration::from_millis(20), self.options.max_delay);
            if Instant::now() + delay > deadline {
                return Err(retry_error);
            }
            tracing::debug!(%retry_error, ?delay, "sidecar not ready, retrying");
            tokio::time::sleep(delay).await;
            backoff = (backoff * 2).min(self.options.max_delay);
        }
    }
}

fn uri(image: &ImageBytes<'_>) -> String {
    crate::es::image::data_uri(image.mime, image.bytes)
}

/// The model before `/info` answered; never visible outside `connect_with`.
fn placeholder_model() -> ModelInfo {
    ModelInfo {
        name: String::new(),
        dimensions: 0,
        normalized: false,
        similarity: crate::engine::Similarity::Cosine,
        modalities: Vec::new(),
        max_seq_len: 0,
        serving: None,
        fingerprint: String::new(),
    }
}

/// The error chain of a reqwest error on one line (the top level alone says only "error
/// sending request").
fn one_line(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `error.message` of an OpenAI-style error body, `error` of a HF one, else the text.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        error: Value,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(Body {
            error: Value::String(text),
        }) => text,
        Ok(Body { error }) => error
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| error.to_string(), str::to_owned),
        Err(_) => String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(300)
            .collect(),
    }
}

/// The OpenAI answer: `data[i].embedding` as base64 (packed little-endian f32) or a float array,
/// placed by `index` when given, else by position; exactly `expected` of them.
pub(crate) fn decode_embeddings(body: &[u8], expected: usize) -> Result<Vec<Vec<f32>>, String> {
    #[derive(Deserialize)]
    struct Answer {
        data: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        index: Option<usize>,
        embedding: Embedding,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Embedding {
        Base64(String),
        Floats(Vec<f32>),
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|err| format!("not an OpenAI embeddings answer: {err}"))?;
    if answer.data.len() != expected {
        return Err(format!(
            "{} embeddings for {expected} inputs",
            answer.data.len()
        ));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (position, entry) in answer.data.into_iter().enumerate() {
        let slot = entry.index.unwrap_or(position);
        let vector = match entry.embedding {
            Embedding::Floats(values) => values,
            Embedding::Base64(text) => unpack_le_f32(&text)?,
        };
        match vectors.get_mut(slot) {
            Some(place @ None) => *place = Some(vector),
            _ => {
                return Err(format!(
                    "embedding index {slot} is out of range or repeated"
                ))
            }
        }
    }
    vectors
        .into_iter()
        .map(|v| v.ok_or_else(|| "an input got no embedding".to_owned()))
        .collect()
}

/// Base64 of packed little-endian float32, what the sidecar answers to `encoding_format: base64`.
fn unpack_le_f32(text: &str) -> Result<Vec<f32>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|err| format!("embedding is not valid base64: {err}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "embedding has {} bytes, not a whole number of float32",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_float_answers_decode_to_the_same_vectors() {
        // [1.0, 2.0, 3.0] as the contract's example (es-contract §1.3).
        let base64 = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AACAPwAAAEAAAEBA"}],"model":"m"}"#;
        assert_eq!(
            decode_embeddings(base64, 1).unwrap(),
            vec![vec![1.0, 2.0, 3.0]]
        );
        let floats = br#"{"data":[{"index":1,"embedding":[0.5]},{"index":0,"embedding":[0.25]}]}"#;
        assert_eq!(
            decode_embeddings(floats, 2).unwrap(),
            vec![vec![0.25], vec![0.5]]
        );
    }

    #[test]
    fn wrong_answers_are_errors_not_vectors() {
        let short = br#"{"data":[{"embedding":[0.5]}]}"#;
        assert!(decode_embeddings(short, 2)
            .unwrap_err()
            .contains("1 embeddings for 2"));
        let odd = br#"{"data":[{"embedding":"AAAAAAA="}]}"#;
        assert!(decode_embeddings(odd, 1).unwrap_err().contains("5 bytes"));
        let repeated = br#"{"data":[{"index":0,"embedding":[1]},{"index":0,"embedding":[2]}]}"#;
        assert!(decode_embeddings(repeated, 2).is_err());
    }

    #[test]
    fn error_messages_are_read_from_both_dialects() {
        assert_eq!(
            error_message(br#"{"error":{"message":"input[1]: bad image","type":"x"}}"#),
            "input[1]: bad image"
        );
        assert_eq!(error_message(br#"{"error":"not ready"}"#), "not ready");
        assert_eq!(error_message(b"<html>"), "<html>");
    }

    #[test]
    fn lanes_mark_search_requests() {
        assert_eq!(Lane::Search.query(), "?priority=search");
        assert_eq!(Lane::Ingest.query(), "");
        let client =
            SidecarClient::unconnected("http://127.0.0.1:9/", None, SidecarOptions::default())
                .unwrap();
        assert_eq!(
            client.embeddings_url(Modality::Text, Lane::Search),
            "http://127.0.0.1:9/v1/embeddings?modality=text&priority=search"
        );
        assert_eq!(
            client.embeddings_url(Modality::Image, Lane::Ingest),
            "http://127.0.0.1:9/v1/embeddings?modality=image"
        );
    }
}
