//! Shared helpers for the contract tests: the engine (started once per test binary from the tiny
//! fixture bundle), the in-process router, requests shaped as Elasticsearch sends them
//! (es-contract §1.2, §2, §3.2, §9), golden vectors, and response parsers that read answers the way
//! ES's own parsers do (§1.3, §2, §3.3).
//!
//! Every response goes through [`send`] (or `child::ChildServer`, for a real process), which
//! enforces the two suite-wide rules of es-contract §5: no 413, and never the phrase that makes ES
//! cut every input in half and resend it. Every wait goes through [`wait_until`] or [`patiently`]:
//! a deadline of [`PATIENCE`], never a sleep standing in for synchronisation.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use sightline::engine::{Engine, EngineOptions};
use sightline::http::{router, ApiKey, HttpConfig};

/// `service_settings.model_id` in every recorded body.
pub const MODEL_ID: &str = "clip-vit-b-32";
/// The `api_key` the test endpoints are created with.
pub const API_KEY: &str = "es-contract-test-key";
/// What the `openai` service sends: `XContentType.JSON.mediaType()` (es-contract §1.2).
pub const OPENAI_CONTENT_TYPE: &str = "application/json; charset=UTF-8";
/// What the `hugging_face` service sends (`mediaTypeWithoutParameters()`, es-contract §2) and what
/// the §3.5 custom-service example sets as its own header.
pub const PLAIN_JSON: &str = "application/json";
/// The phrase that turns a 400 into ES's "halve every input and retry" path (es-contract §1.4, §5).
pub const TRUNCATION_PHRASE: &str = "Please reduce your prompt; or completion length.";
/// The bundle's output size.
pub const DIMS: usize = 512;
/// Sightline's golden bar (style.md, Tests).
pub const GOLDEN_MIN_COSINE: f32 = 0.9999;
/// The dense_vector `dot_product` unit check: `|‖v‖² − 1| > 1e-4` fails indexing (es-contract §8).
pub const UNIT_TOLERANCE: f32 = 1e-4;

pub fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

/// Engine options for tests: one ORT thread per session, since two cores are shared by every
/// test binary running at once. Every test engine starts from these.
pub fn test_options() -> EngineOptions {
    EngineOptions {
        threads: 1,
        decode_workers: 2,
        ..EngineOptions::default()
    }
}

/// Starts a private engine, for tests that need options the shared one must not have
/// (a tiny queue, a long batch wait).
pub fn start_engine(opts: EngineOptions) -> Engine {
    Engine::start(&fixture("tiny-clip"), opts).expect("the tiny fixture bundle must load")
}

/// The engine every test shares. Its workers are plain threads and it holds no runtime handle,
/// so each `#[tokio::test]` runtime can use it.
pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| start_engine(test_options())).clone()
}

/// The HTTP settings of a production-like sidecar: a key is configured, as ES always sends one.
pub fn http_config() -> HttpConfig {
    HttpConfig {
        api_key: ApiKey::new(API_KEY.to_owned()),
        max_body: 64 << 20,
        max_inputs: 2048,
        ..HttpConfig::default()
    }
}

/// The router on the shared engine with [`http_config`].
pub fn app() -> Router {
    router(engine(), http_config())
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A recorded ES request body from `tests/fixtures/es-requests/`, as bytes.
pub fn recorded(name: &str) -> Vec<u8> {
    let path = fixture("es-requests").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A POST as ES's HTTP client sends it: the given content type, `Authorization: Bearer`, and a
/// `Content-Length` (ES sends a `ByteArrayEntity`, never chunked, es-contract §1.2).
pub fn es_post(
    uri: &str,
    content_type: Option<&str>,
    key: Option<&str>,
    body: impl Into<Bytes>,
) -> Request<Body> {
    let body: Bytes = body.into();
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_LENGTH, body.len());
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    if let Some(key) = key {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    builder.body(Body::from(body)).expect("valid request")
}

/// What the `openai` service sends to `uri`.
pub fn openai_request(uri: &str, body: impl Into<Bytes>) -> Request<Body> {
    es_post(uri, Some(OPENAI_CONTENT_TYPE), Some(API_KEY), body)
}

/// What the `hugging_face` service sends to `uri`.
pub fn hf_request(uri: &str, body: impl Into<Bytes>) -> Request<Body> {
    es_post(uri, Some(PLAIN_JSON), Some(API_KEY), body)
}

/// What the `custom` service of es-contract §3.5 sends: its user-set `Content-Type` and the
/// `query_parameters` pair appended to the configured URL.
pub fn custom_request(body: impl Into<Bytes>) -> Request<Body> {
    es_post(
        "/v1/embeddings?source=elasticsearch",
        Some(PLAIN_JSON),
        Some(API_KEY),
        body,
    )
}

/// A GET with an optional bearer key.
pub fn get(uri: &str, key: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(Method::GET).uri(uri);
    if let Some(key) = key {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    builder.body(Body::empty()).expect("valid request")
}

/// The body `OpenAiEmbeddingsRequestEntity.toXContent` writes: compact JSON, fields in the order
/// `input`, `model`, `user`, `dimensions`, `encoding_format`, each optional one only when set
/// (es-contract §1.2). Pinned to the recordings by `openai::body_builder_reproduces_recordings`.
pub fn openai_body(
    inputs: &[&str],
    user: Option<&str>,
    dimensions: Option<u64>,
    base64: bool,
) -> String {
    let mut body = format!(r#"{{"input":{},"model":"{MODEL_ID}""#, json_strings(inputs));
    if let Some(user) = user {
        body.push_str(&format!(r#","user":{}"#, Value::from(user)));
    }
    if let Some(dimensions) = dimensions {
        body.push_str(&format!(r#","dimensions":{dimensions}"#));
    }
    if base64 {
        body.push_str(r#","encoding_format":"base64""#);
    }
    body.push('}');
    body
}

/// `HuggingFaceEmbeddingsRequestEntity`: `{"inputs":[...]}` (es-contract §2).
pub fn hf_body(inputs: &[&str]) -> String {
    format!(r#"{{"inputs":{}}}"#, json_strings(inputs))
}

/// The §3.5 custom-service template rendered: the user's spacing around the substitutions, and
/// `${input}` / `${input_type}` JSON-serialised by ES (§3.2).
pub fn custom_body(inputs: &[&str], input_type: &str) -> String {
    format!(
        r#"{{"input": {}, "model": "{MODEL_ID}", "input_type": {}}}"#,
        json_strings(inputs),
        Value::from(input_type)
    )
}

/// A compact JSON array of strings, as Jackson writes a `List<String>` (UTF-8 as is, `/` unescaped).
pub fn json_strings(values: &[&str]) -> String {
    serde_json::to_string(values).expect("strings serialise")
}

// ---------------------------------------------------------------------------------------------
// Responses

/// A collected response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }

    /// Fails with the body in the message, so a wrong status explains itself.
    pub fn assert_status(&self, expected: StatusCode) -> &Reply {
        assert_eq!(
            self.status,
            expected,
            "body: {}",
            shorten(&self.text(), 600)
        );
        self
    }

    /// The OpenAI-dialect error, checked to be exactly `{"error":{"message":..,"type":..}}`, the
    /// shape ES's `ErrorMessageResponseEntity` reads. Returns `(message, type)`.
    pub fn openai_error(&self) -> (String, String) {
        let json = self.json();
        let top = json.as_object().expect("error body is an object");
        assert_eq!(top.keys().collect::<Vec<_>>(), ["error"], "{json}");
        let error = top["error"].as_object().expect("`error` is an object");
        let mut keys: Vec<_> = error.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["message", "type"], "{json}");
        let message = error["message"].as_str().expect("`message` is a string");
        let kind = error["type"].as_str().expect("`type` is a string");
        (message.to_owned(), kind.to_owned())
    }

    /// The Hugging Face-dialect error, checked to be exactly `{"error": "<string>"}`
    /// (es-contract §2: a top-level string, not an object).
    pub fn hf_error(&self) -> String {
        let json = self.json();
        let top = json.as_object().expect("error body is an object");
        assert_eq!(top.keys().collect::<Vec<_>>(), ["error"], "{json}");
        top["error"]
            .as_str()
            .expect("`error` is a string")
            .to_owned()
    }
}

fn shorten(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Runs one request through the router in-process and checks the suite-wide rules of
/// es-contract §5 on whatever comes back.
/// The `Retry-After` header of a reply, in seconds.
pub fn retry_after(reply: &Reply) -> u64 {
    reply
        .headers
        .get(header::RETRY_AFTER)
        .expect("a Retry-After header")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("delay-seconds")
}

/// Sends `inputs` in the OpenAI and the HF dialect; each must be a 429 with `Retry-After:
/// retry`. Returns the OpenAI error's message and type, and the HF error's message.
pub async fn try_later_in_both_dialects(
    app: &Router,
    inputs: &[&str],
    retry: u64,
) -> (String, String, String) {
    let reply = send(
        app,
        openai_request("/v1/embeddings", openai_body(inputs, None, None, false)),
    )
    .await;
    reply.assert_status(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&reply), retry);
    let (message, kind) = reply.openai_error();
    let reply = send(app, hf_request("/embed", hf_body(inputs))).await;
    reply.assert_status(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&reply), retry);
    (message, kind, reply.hf_error())
}

pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let what = format!("{} {}", request.method(), request.uri());
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .expect("the body can be read")
        .to_bytes();
    let reply = Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    };
    assert_suite_rules(&what, &reply);
    reply
}

/// The rules of es-contract §5 that hold for every response, whatever the route.
pub fn assert_suite_rules(what: &str, reply: &Reply) {
    assert_ne!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{what}: ES halves every input on a 413"
    );
    assert!(
        !reply.text().contains(TRUNCATION_PHRASE),
        "{what}: this phrase makes ES halve every input: {}",
        shorten(&reply.text(), 600)
    );
}

// ---------------------------------------------------------------------------------------------
// Waiting

/// The longest any test waits for anything: a safety net that turns a hang into a failure naming
/// what was awaited. Generous for a debug build on shared cores; never a performance bar.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How long [`wait_until`] sleeps between looks.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Looks at `holds` until it is true, sleeping briefly between looks; fails naming `what` once
/// [`PATIENCE`] has passed.
pub async fn wait_until<F, Fut>(what: impl std::fmt::Display, mut holds: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + PATIENCE;
    while !holds().await {
        assert!(
            Instant::now() < until,
            "waited {PATIENCE:?} in vain for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `GET /info` of a sidecar on a loopback port, with the suite's key.
pub async fn sidecar_info(url: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{url}/info"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Runs `future` to its end within [`PATIENCE`]; fails naming `what` if it hangs.
pub async fn patiently<F: Future>(what: impl std::fmt::Display, future: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no answer within {PATIENCE:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures and golden vectors

pub fn image_bytes(name: &str) -> Vec<u8> {
    let path = fixture("images").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The image file as standard padded base64, what ES carries in a document field.
pub fn raw_base64(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(image_bytes(name))
}

/// The image file as a `data:image/<type>;base64,` URI, the convention es-contract §11 item 9 recommends.
pub fn data_uri(name: &str) -> String {
    let media = match name.rsplit('.').next() {
        Some("jpg" | "jpeg") => "jpeg",
        Some("png") => "png",
        Some("gif") => "gif",
        Some("webp") => "webp",
        Some("bmp") => "bmp",
        Some("tiff") => "tiff",
        other => panic!("no media type for {other:?}"),
    };
    format!("data:image/{media};base64,{}", raw_base64(name))
}

fn golden(file: &str, key: &str) -> HashMap<String, Vec<f32>> {
    let path = fixture("golden").join(file);
    let json: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("golden file")).expect("golden JSON");
    json["cases"]
        .as_array()
        .expect("`cases` is an array")
        .iter()
        .map(|case| {
            let name = case[key].as_str().expect("case name").to_owned();
            let vector = case["embedding"]
                .as_array()
                .expect("`embedding` is an array")
                .iter()
                .map(|x| x.as_f64().expect("a number") as f32)
                .collect();
            (name, vector)
        })
        .collect()
}

/// The reference vector of `tests/fixtures/images/<name>` (tools/make_golden.py).
pub fn golden_image(name: &str) -> Vec<f32> {
    static IMAGES: OnceLock<HashMap<String, Vec<f32>>> = OnceLock::new();
    let images = IMAGES.get_or_init(|| golden("images.json", "file"));
    images
        .get(name)
        .unwrap_or_else(|| panic!("no golden vector for image {name}"))
        .clone()
}

/// The reference vector of a text in `golden/texts.json`.
pub fn golden_text(text: &str) -> Vec<f32> {
    static TEXTS: OnceLock<HashMap<String, Vec<f32>>> = OnceLock::new();
    let texts = TEXTS.get_or_init(|| golden("texts.json", "text"));
    texts
        .get(text)
        .unwrap_or_else(|| panic!("no golden vector for text {text:?}"))
        .clone()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vectors of different lengths");
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb)) as f32
}

/// The vector matches its golden reference at Sightline's bar.
pub fn assert_golden(got: &[f32], golden: &[f32], what: &str) {
    let c = cosine(got, golden);
    assert!(
        c >= GOLDEN_MIN_COSINE,
        "{what}: cosine to golden is {c}, below {GOLDEN_MIN_COSINE}"
    );
}

/// Two answers for the same input are the same vector. Batch composition may move the last bit
/// of a float, so this allows 1e-6 per component.
pub fn assert_same_vector(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-6,
            "{what}: component {i} differs: {x} vs {y}"
        );
    }
}

/// The vector passes ES's `dot_product` check and has the model's size.
pub fn assert_unit(v: &[f32], what: &str) {
    assert_eq!(v.len(), DIMS, "{what}: wrong dimension count");
    let norm2: f32 = v.iter().map(|x| x * x).sum();
    assert!(
        (norm2 - 1.0).abs() <= UNIT_TOLERANCE,
        "{what}: ‖v‖² = {norm2}, ES's dot_product check needs |‖v‖² − 1| ≤ {UNIT_TOLERANCE}"
    );
}

// ---------------------------------------------------------------------------------------------
// ES-style response parsing

/// A JSON token, as Jackson's streaming parser reports them (field names apart from string values).
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    StartObject,
    EndObject,
    StartArray,
    EndArray,
    Field(String),
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// Tokenises raw response bytes in document order. Validity is checked with serde_json first,
/// so this only has to split a well-formed document.
pub fn tokens(bytes: &[u8]) -> Result<Vec<Token>, String> {
    serde_json::from_slice::<Value>(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = Vec::new();
    // For each open container: is it an object whose next string is a key?
    let mut expecting_key: Vec<Option<bool>> = Vec::new();
    let value_done = |stack: &mut Vec<Option<bool>>| {
        if let Some(Some(expect)) = stack.last_mut() {
            *expect = true;
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' => i += 1,
            b'{' => {
                out.push(Token::StartObject);
                expecting_key.push(Some(true));
                i += 1;
            }
            b'[' => {
                out.push(Token::StartArray);
                expecting_key.push(None);
                i += 1;
            }
            b'}' | b']' => {
                out.push(if bytes[i] == b'}' {
                    Token::EndObject
                } else {
                    Token::EndArray
                });
                expecting_key.pop();
                value_done(&mut expecting_key);
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                let text: String =
                    serde_json::from_slice(&bytes[start..i]).map_err(|e| e.to_string())?;
                if let Some(Some(expect)) = expecting_key.last_mut() {
                    if *expect {
                        *expect = false;
                        out.push(Token::Field(text));
                        continue;
                    }
                }
                out.push(Token::Str(text));
                value_done(&mut expecting_key);
            }
            b't' | b'f' | b'n' => {
                let (token, len) = match bytes[i] {
                    b't' => (Token::Bool(true), 4),
                    b'f' => (Token::Bool(false), 5),
                    _ => (Token::Null, 4),
                };
                out.push(token);
                i += len;
                value_done(&mut expecting_key);
            }
            _ => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let text = std::str::from_utf8(&bytes[start..i]).map_err(|e| e.to_string())?;
                out.push(Token::Num(
                    text.parse().map_err(|e| format!("number {text:?}: {e}"))?,
                ));
                value_done(&mut expecting_key);
            }
        }
    }
    Ok(out)
}

/// Field names of every object in document order, keyed by a JSONPath-like location:
/// `$` for the top level, `$.data[*]` for each embedding entry, `$.usage`.
pub fn object_keys(tokens: &[Token]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    // (path, slot in `out` when the container is an object)
    let mut stack: Vec<(String, Option<usize>)> = Vec::new();
    let mut key: Option<String> = None;
    for token in tokens {
        match token {
            Token::StartObject | Token::StartArray => {
                let path = match stack.last() {
                    None => "$".to_owned(),
                    Some((parent, Some(_))) => {
                        format!("{parent}.{}", key.take().unwrap_or_default())
                    }
                    Some((parent, None)) => format!("{parent}[*]"),
                };
                let slot = (*token == Token::StartObject).then(|| {
                    out.push((path.clone(), Vec::new()));
                    out.len() - 1
                });
                stack.push((path, slot));
            }
            Token::EndObject | Token::EndArray => {
                stack.pop();
            }
            Token::Field(name) => {
                if let Some((_, Some(slot))) = stack.last() {
                    out[*slot].1.push(name.clone());
                }
                key = Some(name.clone());
            }
            _ => key = None,
        }
    }
    out
}

/// Checks the raw bytes of an OpenAI-dialect answer against OpenAI's own layout, which the
/// oldest ES parser depends on (es-contract §1.3): top-level keys `object, data, model, usage`,
/// each entry `object, index, embedding`, `index` counting 0..n, and `n` entries.
pub fn assert_openai_layout(body: &[u8], n: usize) {
    let tokens = tokens(body).expect("the response tokenises");
    let objects = object_keys(&tokens);
    let top = &objects.first().expect("a top-level object").1;
    assert_eq!(objects[0].0, "$");
    assert_eq!(
        top,
        &["object", "data", "model", "usage"],
        "top-level key order"
    );
    let entries: Vec<_> = objects
        .iter()
        .filter(|(path, _)| path == "$.data[*]")
        .collect();
    assert_eq!(entries.len(), n, "one `data` entry per input");
    for (_, keys) in &entries {
        assert_eq!(keys, &["object", "index", "embedding"], "entry key order");
    }
    let json: Value = serde_json::from_slice(body).expect("JSON");
    assert_eq!(json["object"], "list");
    for (i, entry) in json["data"]
        .as_array()
        .expect("`data` array")
        .iter()
        .enumerate()
    {
        assert_eq!(entry["object"], "embedding");
        assert_eq!(entry["index"], i, "entry {i} has the wrong index");
    }
}

/// A cursor over tokens, standing in for Jackson's `XContentParser`.
struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
}

impl Parser<'_> {
    fn next(&mut self) -> Option<&Token> {
        let token = self.tokens.get(self.at);
        self.at += 1;
        token
    }

    fn expect(&mut self, wanted: &Token, what: &str) -> Result<(), String> {
        match self.next() {
            Some(t) if std::mem::discriminant(t) == std::mem::discriminant(wanted) => Ok(()),
            other => Err(format!("{what}: expected {wanted:?}, found {other:?}")),
        }
    }

    /// `XContentUtils.positionParserAtTokenAfterField` @33a8f713: scan forward for the field,
    /// giving up at the first `END_OBJECT`, nested or not (es-contract §1.3). So a nested object
    /// before the field makes the search fail.
    fn position_after_field(&mut self, field: &str) -> Result<(), String> {
        while let Some(token) = self.next() {
            match token {
                Token::EndObject => break,
                Token::Field(name) if name == field => return Ok(()),
                _ => {}
            }
        }
        Err(format!(
            "Failed to find required field [{field}] in OpenAI embeddings response"
        ))
    }

    /// `consumeUntilObjectEnd`: skip the rest of the current object, nested values included.
    fn consume_until_object_end(&mut self) -> Result<(), String> {
        let mut depth = 0usize;
        loop {
            match self.next() {
                Some(Token::StartObject | Token::StartArray) => depth += 1,
                Some(Token::EndObject | Token::EndArray) if depth > 0 => depth -= 1,
                Some(Token::EndObject) => return Ok(()),
                Some(Token::EndArray) | None => return Err("unbalanced object".into()),
                Some(_) => {}
            }
        }
    }

    /// An array of `VALUE_NUMBER` only; strings, nulls and nested arrays fail (es-contract §1.3).
    fn number_array(&mut self, what: &str) -> Result<Vec<f32>, String> {
        self.expect(&Token::StartArray, what)?;
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::EndArray) => return Ok(values),
                Some(Token::Num(x)) => values.push(*x as f32),
                other => return Err(format!("{what}: expected VALUE_NUMBER, found {other:?}")),
            }
        }
    }
}

/// The old OpenAI parser (`OpenAiEmbeddingsResponseEntity`, ≈8.12–9.4, es-contract §1.3):
/// a top-level object, `data` found by the strict field scan, each entry's `embedding` an array of
/// numbers only. `index`, `object`, `model` and `usage` are never read: order is the mapping.
pub fn es_old_openai_parse(body: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    let tokens = tokens(body)?;
    let mut p = Parser {
        tokens: &tokens,
        at: 0,
    };
    p.expect(&Token::StartObject, "top level")?;
    p.position_after_field("data")?;
    p.expect(&Token::StartArray, "data")?;
    let mut vectors = Vec::new();
    loop {
        match p.next() {
            Some(Token::EndArray) => return Ok(vectors),
            Some(Token::StartObject) => {
                p.position_after_field("embedding")?;
                vectors.push(p.number_array("embedding")?);
                p.consume_until_object_end()?;
            }
            other => return Err(format!("data: expected START_OBJECT, found {other:?}")),
        }
    }
}

/// The newest OpenAI parser (@2874d3f5, es-contract §1.3): fields in any order, `data` required,
/// each `embedding` either a float array or a strict RFC 4648 base64 string of packed
/// little-endian f32 whose byte length is a multiple of 4.
pub fn es_new_openai_parse(body: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    let json: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let data = json
        .get("data")
        .and_then(Value::as_array)
        .ok_or("required field `data` (an object array) is missing")?;
    data.iter()
        .enumerate()
        .map(|(i, entry)| match entry.get("embedding") {
            Some(Value::String(b64)) => {
                decode_packed_f32(b64).map_err(|e| format!("data[{i}]: {e}"))
            }
            Some(Value::Array(values)) => values
                .iter()
                .map(|v| {
                    v.as_f64()
                        .map(|x| x as f32)
                        .ok_or(format!("data[{i}]: non-number {v}"))
                })
                .collect(),
            other => Err(format!("data[{i}]: `embedding` is {other:?}")),
        })
        .collect()
}

/// Strict RFC 4648 (standard alphabet, canonical padding, no line breaks) → little-endian f32.
pub fn decode_packed_f32(b64: &str) -> Result<Vec<f32>, String> {
    if b64.len() % 4 != 0 {
        return Err(format!(
            "base64 length {} is not a multiple of 4",
            b64.len()
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("not strict base64: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "{} bytes is not a whole number of f32",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// `HuggingFaceEmbeddingsResponseEntity` (es-contract §2): a top-level array of number arrays,
/// or an object whose `embeddings` field (found by the strict scan) holds them.
pub fn es_hf_parse(body: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    let tokens = tokens(body)?;
    let mut p = Parser {
        tokens: &tokens,
        at: 0,
    };
    match tokens.first() {
        Some(Token::StartArray) => {}
        Some(Token::StartObject) => {
            p.next();
            p.position_after_field("embeddings")?;
        }
        other => return Err(format!("top level: unexpected {other:?}")),
    }
    p.expect(&Token::StartArray, "embeddings")?;
    let mut vectors = Vec::new();
    loop {
        match p.tokens.get(p.at) {
            Some(Token::EndArray) => return Ok(vectors),
            Some(Token::StartArray) => vectors.push(p.number_array("embedding")?),
            other => return Err(format!("embeddings: expected START_ARRAY, found {other:?}")),
        }
    }
}

/// The custom service's `MapPathExtractor` with `$.data[*].embedding` (es-contract §3.3): the body
/// read as a map (a top-level array is refused), each element a list of numbers.
pub fn es_custom_parse(body: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    let json: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let map = json
        .as_object()
        .ok_or("the response is not a JSON object")?;
    let data = map
        .get("data")
        .and_then(Value::as_array)
        .ok_or("`$.data` is not a list")?;
    data.iter()
        .enumerate()
        .map(|(i, entry)| {
            let values = entry
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or(format!("Failed to parse text embedding entry [{i}]"))?;
            values
                .iter()
                .map(|v| v.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or(format!("Failed to parse text embedding entry [{i}]"))
        })
        .collect()
}

/// Sends an OpenAI-dialect request that must succeed, and returns its vectors as the old ES
/// parser reads them, after checking the byte layout, the count and unit length.
pub async fn openai_vectors(
    app: &Router,
    uri: &str,
    body: impl Into<Bytes>,
    n: usize,
) -> Vec<Vec<f32>> {
    let reply = send(app, openai_request(uri, body)).await;
    openai_reply_vectors(&reply, n)
}

/// [`openai_vectors`]' checks on a reply already received.
pub fn openai_reply_vectors(reply: &Reply, n: usize) -> Vec<Vec<f32>> {
    reply.assert_status(StatusCode::OK);
    assert_openai_layout(&reply.body, n);
    let vectors = es_old_openai_parse(&reply.body).expect("the old ES parser reads the answer");
    assert_eq!(vectors.len(), n, "one vector per input");
    assert_eq!(
        es_new_openai_parse(&reply.body).expect("the new ES parser reads it too"),
        vectors
    );
    for (i, v) in vectors.iter().enumerate() {
        assert_unit(v, &format!("vector {i}"));
    }
    vectors
}

/// Sends a Hugging Face-dialect request that must succeed; returns its vectors as ES reads them.
pub async fn hf_vectors(
    app: &Router,
    uri: &str,
    body: impl Into<Bytes>,
    n: usize,
) -> Vec<Vec<f32>> {
    let reply = send(app, hf_request(uri, body)).await;
    reply.assert_status(StatusCode::OK);
    let vectors = es_hf_parse(&reply.body).expect("ES's hugging_face parser reads the answer");
    assert_eq!(vectors.len(), n, "one vector per input");
    for (i, v) in vectors.iter().enumerate() {
        assert_unit(v, &format!("vector {i}"));
    }
    vectors
}

// ---------------------------------------------------------------------------------------------
// The parsers must themselves be able to say no, or the tests above prove nothing.

#[test]
fn the_old_parser_rejects_what_old_es_rejects() {
    let good = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.6,0.8]}],"model":"m","usage":{"prompt_tokens":0,"total_tokens":0}}"#;
    assert_eq!(es_old_openai_parse(good).unwrap(), vec![vec![0.6, 0.8]]);
    // A nested object before `data` ends the strict scan (the oldest XContentUtils).
    let usage_first =
        br#"{"usage":{"prompt_tokens":0},"object":"list","data":[{"embedding":[1.0]}]}"#;
    assert!(es_old_openai_parse(usage_first)
        .unwrap_err()
        .contains("[data]"));
    let strings = br#"{"data":[{"embedding":["0.6"]}]}"#;
    assert!(es_old_openai_parse(strings)
        .unwrap_err()
        .contains("VALUE_NUMBER"));
    let base64 = br#"{"data":[{"embedding":"AACAPw=="}]}"#;
    assert!(es_old_openai_parse(base64).is_err());
    let nested = br#"{"data":[{"embedding":[[1.0]]}]}"#;
    assert!(es_old_openai_parse(nested).is_err());
    let nulls = br#"{"data":[{"embedding":[null]}]}"#;
    assert!(es_old_openai_parse(nulls).is_err());
    assert!(es_old_openai_parse(b"[[1.0]]").is_err());
    // Extra fields after `embedding`, nested or not, are skipped.
    let extra = br#"{"data":[{"embedding":[1.0],"x":{"y":[1]}},{"embedding":[2.0]}]}"#;
    assert_eq!(
        es_old_openai_parse(extra).unwrap(),
        vec![vec![1.0], vec![2.0]]
    );
}

#[test]
fn the_new_parser_decodes_the_contract_example_and_refuses_loose_base64() {
    // es-contract §1.3: "AACAPwAAAEAAAEBA" is [1.0, 2.0, 3.0].
    let body = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AACAPwAAAEAAAEBA"}],"model":"m","usage":{"prompt_tokens":0,"total_tokens":0}}"#;
    assert_eq!(
        es_new_openai_parse(body).unwrap(),
        vec![vec![1.0, 2.0, 3.0]]
    );
    assert!(decode_packed_f32("AACAPw").is_err(), "missing padding");
    assert!(decode_packed_f32("AACA").is_err(), "3 bytes is not an f32");
    assert!(decode_packed_f32("AACA\nPw==").is_err(), "line break");
    assert!(decode_packed_f32("AAC-Pw==").is_err(), "URL-safe alphabet");
}

#[test]
fn layout_and_hf_parsers_see_key_order_and_shapes() {
    let tokens = tokens(br#"{"a":{"b":1,"c":[{"d":"e"}]},"f":null}"#).unwrap();
    let keys = object_keys(&tokens);
    assert_eq!(
        keys[0],
        ("$".to_owned(), vec!["a".to_owned(), "f".to_owned()])
    );
    assert_eq!(
        keys[1],
        ("$.a".to_owned(), vec!["b".to_owned(), "c".to_owned()])
    );
    assert_eq!(keys[2], ("$.a.c[*]".to_owned(), vec!["d".to_owned()]));
    assert_eq!(
        es_hf_parse(b"[[0.5],[1]]").unwrap(),
        vec![vec![0.5], vec![1.0]]
    );
    assert_eq!(
        es_hf_parse(br#"{"embeddings":[[2]]}"#).unwrap(),
        vec![vec![2.0]]
    );
    assert!(es_hf_parse(br#"[["x"]]"#).is_err());
    assert!(es_hf_parse(br#"{"error":"x"}"#).is_err());
    assert!(es_custom_parse(b"[[1]]").is_err());
}
