//! An in-process fake Elasticsearch for the `es_*` contract tests, plus a helper that runs the
//! `sightline` binary against it.
//!
//! It listens on 127.0.0.1:0, records every request (method, path, query, body), and answers the
//! way ES does for what Sightline sends: `GET /` with a chosen version, `_inference` PUT / GET /
//! DELETE / POST, ingest pipelines, index templates, index HEAD / PUT / `_mapping`, `_mget`,
//! `_bulk` (with a simulated embedding pipeline whose `on_failure` redirects to `<index>-failed`,
//! `create`/`index`/`delete`, conflicts, dims checks, base64 `dense_vector` values from 9.3),
//! `_refresh`, `_search` (kNN by `query_vector` or `query_vector_builder`, `script_score`,
//! `search_after` paging) and `_knn_search` (8.x). Aliases: an index created with `aliases`,
//! `POST _aliases` (`add`, `remove`, `remove_index`, all or nothing, as ES applies them), and
//! every index route resolving an alias of one index to that index, as ES answers (keys and
//! `_index` name the concrete index); points in time (`POST <index>/_pit`, `_search` with `pit`
//! and `search_after` over the implicit `_shard_doc` tiebreaker, `DELETE _pit`). `GET _license` answers like the licence the
//! test chose (basic, gold, platinum, trial, enterprise, expired; none for a 7.x OSS build), and
//! the Inference API refuses non-enterprise licences as ES does.
//!
//! It also plays the sidecar under `/sidecar`: `/info`, and `/v1/embeddings` with deterministic
//! vectors (SHA-256 of the input string), answered as base64 or floats, and scriptable "not
//! ready" answers (503/429 with `Retry-After`). The simulated pipeline and the query builder use
//! the same vectors, so a search by an indexed image finds that image first in either mode.
//!
//! Tests script failures through [`Script`]: whole-request statuses for the next N matching
//! requests, one-off item-level 429s, ids the pipeline fails, a pipeline outage, sidecar
//! refusals, a wrong vector length from `POST _inference`. Nothing here sleeps: a test waits only
//! on the child process it started.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} {} body is not JSON: {e}", self.method, self.path))
    }

    /// The lines of an NDJSON body.
    pub fn ndjson(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).expect("bulk line is not JSON"))
            .collect()
    }

    /// The JSON lines of a body, skipping any line that is not JSON (for scanning every request).
    pub fn ndjson_or_empty(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| value.to_owned())
        })
    }

    /// `"PUT /_ingest/pipeline/x"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A canned answer for the next `times` requests whose method matches and whose path contains
/// `path_contains`; status [`DROP_CONNECTION`] cuts the connection instead.
#[derive(Debug, Clone)]
pub struct Override {
    pub method: &'static str,
    pub path_contains: &'static str,
    pub times: usize,
    pub status: u16,
    pub body: Value,
}

/// [`Override::status`] that breaks the connection instead of answering.
pub const DROP_CONNECTION: u16 = 0;

/// Failures a test asks for.
#[derive(Debug, Default)]
pub struct Script {
    pub overrides: Vec<Override>,
    /// Bulk items with these ids answer 429 this many times before being accepted.
    pub item_429: HashMap<String, usize>,
    /// Bulk items with these ids fail with this status, type and reason.
    pub item_errors: HashMap<String, (u16, String, String)>,
    /// Documents with these ids fail in the simulated pipeline and go to `<index>-failed`.
    pub pipeline_fail_ids: HashSet<String>,
    /// Vector length `POST _inference` answers with (default: the model's).
    pub inference_dims: Option<usize>,
    /// `_search` answers these hits (default: the documents of the index, scored by the query).
    pub search_hits: Option<Vec<Value>>,
    /// The next this-many documents through the pipeline fail as if the sidecar were down
    /// (the `custom` service's final 503), and go to `<index>-failed`.
    pub pipeline_outage: usize,
    /// Statuses the fake sidecar's `/v1/embeddings` answers, in order, before it answers
    /// normally (503 and 429 with `Retry-After: 0`, or any other status with an error body).
    pub sidecar_refusals: Vec<u16>,
    /// Inputs (data URIs containing this text) the fake sidecar refuses with 400, as it would an
    /// image it cannot decode.
    pub sidecar_bad_inputs: Vec<String>,
    /// Before answering each `_bulk`, this search (target name, body) runs as if a client had
    /// sent it at that moment; the answers are in [`FakeEs::searches_during_bulk`].
    pub search_during_bulk: Option<(String, Value)>,
    /// `_bulk` answers normally this many more times, then 503 until cleared (an outage in the
    /// middle of a run).
    pub bulks_before_outage: Option<usize>,
    /// A real sidecar the simulated pipeline calls for each document, one image per request
    /// and every document of a `_bulk` at once, as the `inference` processor does (for the
    /// ingest measurement); `None`: vectors from [`fake_vector`].
    pub pipeline_sidecar: Option<String>,
}

/// What `GET _license` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum License {
    /// `type` and `status` (`active`, `expired`).
    Licensed(&'static str, &'static str),
    /// A 7.x OSS build: no licence API.
    Oss,
}

impl License {
    fn allows_inference(&self) -> bool {
        matches!(self, License::Licensed("enterprise" | "trial", "active"))
    }
}

#[derive(Debug, Default)]
struct Index {
    mappings: Value,
    settings: Value,
    docs: BTreeMap<String, Value>,
}

#[derive(Debug)]
struct EsState {
    version: String,
    license: License,
    dims: usize,
    requests: Vec<Recorded>,
    endpoints: BTreeMap<String, Value>,
    pipelines: BTreeMap<String, Value>,
    templates: BTreeMap<String, Value>,
    indices: BTreeMap<String, Index>,
    script: Script,
    /// Vectors a real sidecar computed for the `_bulk` being answered, by image data URI.
    embedded: HashMap<String, Vec<f32>>,
    /// Alias → the indices it points at.
    aliases: BTreeMap<String, BTreeSet<String>>,
    /// Open points in time by id.
    pits: BTreeMap<String, Pit>,
    opened_pits: usize,
    /// Answers of [`Script::search_during_bulk`].
    during_bulk: Vec<(u16, Value)>,
}

/// A point in time: the index's documents when it was opened, in `content_hash` order
/// (documents without one last); a document's position is its `_shard_doc`.
#[derive(Debug)]
struct Pit {
    index: String,
    docs: Vec<(String, Value)>,
}

/// Each `image_b64` of a `_bulk` embedded by the sidecar at `url`, one per request, all at once.
async fn embed_through(url: &str, request: &Recorded) -> HashMap<String, Vec<f32>> {
    let client = reqwest::Client::new();
    let images: Vec<String> = request
        .ndjson()
        .iter()
        .filter_map(|line| {
            line.get("image_b64")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    let calls = images.iter().map(|image| {
        let client = client.clone();
        async move {
            let answer: Value = client
                .post(format!("{url}/v1/embeddings"))
                .json(&json!({"input": [image], "model": FAKE_MODEL}))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let vector = stored_vector(answer.pointer("/data/0/embedding")?)?;
            Some((image.clone(), vector))
        }
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// A running fake cluster. Dropping it stops the server.
pub struct FakeEs {
    pub url: String,
    state: Arc<Mutex<EsState>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEs {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Model dimensions the fake sidecar `/info` reports.
pub const FAKE_DIMS: usize = 8;
pub const FAKE_MODEL: &str = "clip-ViT-B-32-multilingual-v1";
/// The fake sidecar's `/info` fingerprint.
pub const FAKE_FINGERPRINT: &str = "sha256:fake";

impl FakeEs {
    /// Starts a fake cluster that reports `version`, with an active enterprise licence (what
    /// the pipeline path needs).
    pub async fn start(version: &str) -> FakeEs {
        FakeEs::start_licensed(version, License::Licensed("enterprise", "active")).await
    }

    /// Starts a fake cluster that reports `version` and `license`.
    pub async fn start_licensed(version: &str, license: License) -> FakeEs {
        let state = Arc::new(Mutex::new(EsState {
            version: version.to_owned(),
            license,
            dims: FAKE_DIMS,
            requests: Vec::new(),
            endpoints: BTreeMap::new(),
            pipelines: BTreeMap::new(),
            templates: BTreeMap::new(),
            indices: BTreeMap::new(),
            script: Script::default(),
            embedded: HashMap::new(),
            aliases: BTreeMap::new(),
            pits: BTreeMap::new(),
            opened_pits: 0,
            during_bulk: Vec::new(),
        }));
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address: SocketAddr = listener.local_addr().expect("local address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake ES server failed");
        });
        FakeEs {
            url: format!("http://{address}"),
            state,
            server,
        }
    }

    /// Base URL of the fake sidecar (`/info`, `/v1/embeddings`).
    pub fn sidecar_url(&self) -> String {
        format!("{}/sidecar", self.url)
    }

    /// Requests the fake sidecar's `/v1/embeddings` received.
    pub fn sidecar_embeddings(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == "/sidecar/v1/embeddings")
            .collect()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests other than the sidecar's `/info`, as `METHOD /path` lines.
    pub fn es_lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| !r.path.starts_with("/sidecar"))
            .map(Recorded::line)
            .collect()
    }

    pub fn count(&self, method: &str, path_suffix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.ends_with(path_suffix))
            .count()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    pub fn script<R>(&self, edit: impl FnOnce(&mut Script) -> R) -> R {
        edit(&mut self.state.lock().unwrap().script)
    }

    /// The documents of `index`, or of the index behind the alias `index` (as a search sees them).
    pub fn docs(&self, index: &str) -> BTreeMap<String, Value> {
        let state = self.state.lock().unwrap();
        let index = single_index(&state, index).unwrap_or_else(|| index.to_owned());
        state
            .indices
            .get(&index)
            .map(|i| i.docs.clone())
            .unwrap_or_default()
    }

    pub fn endpoint(&self, id: &str) -> Option<Value> {
        self.state.lock().unwrap().endpoints.get(id).cloned()
    }

    pub fn pipeline(&self, id: &str) -> Option<Value> {
        self.state.lock().unwrap().pipelines.get(id).cloned()
    }

    pub fn template(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().templates.get(name).cloned()
    }

    /// The mappings of `index`, or of the index behind the alias `index`.
    pub fn index_mappings(&self, index: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        let index = single_index(&state, index).unwrap_or_else(|| index.to_owned());
        state.indices.get(&index).map(|i| i.mappings.clone())
    }

    pub fn seed_pipeline(&self, id: &str, body: Value) {
        self.state
            .lock()
            .unwrap()
            .pipelines
            .insert(id.to_owned(), body);
    }

    pub fn seed_index(&self, name: &str, mappings: Value) {
        self.state.lock().unwrap().indices.insert(
            name.to_owned(),
            Index {
                mappings,
                ..Index::default()
            },
        );
    }

    /// Alias → the indices it points at.
    pub fn aliases(&self) -> BTreeMap<String, Vec<String>> {
        self.state
            .lock()
            .unwrap()
            .aliases
            .iter()
            .map(|(alias, indices)| (alias.clone(), indices.iter().cloned().collect()))
            .collect()
    }

    /// Index names, aliases left out.
    pub fn indices(&self) -> Vec<String> {
        self.state.lock().unwrap().indices.keys().cloned().collect()
    }

    /// Points in time still open.
    pub fn open_pits(&self) -> usize {
        self.state.lock().unwrap().pits.len()
    }

    /// The answers of [`Script::search_during_bulk`], in order.
    pub fn searches_during_bulk(&self) -> Vec<(u16, Value)> {
        self.state.lock().unwrap().during_bulk.clone()
    }

    pub fn seed_doc(&self, index: &str, id: &str, source: Value) {
        let mut state = self.state.lock().unwrap();
        state
            .indices
            .entry(index.to_owned())
            .or_default()
            .docs
            .insert(id.to_owned(), source);
    }
}

fn es_error(status: u16, kind: &str, reason: &str) -> (u16, Value) {
    (
        status,
        json!({"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason}, "status": status}),
    )
}

fn unit_vector(dims: usize) -> Vec<f64> {
    let value = 1.0 / (dims as f64).sqrt();
    vec![value; dims]
}

/// The fake model: a unit vector derived from the SHA-256 of the input string. The same string
/// (a data URI, a text) always gets the same vector, different strings almost surely different
/// ones, whether the sidecar, the simulated pipeline or the query builder computes it.
pub fn fake_vector(input: &str, dims: usize) -> Vec<f32> {
    let digest = Sha256::digest(input.as_bytes());
    let raw: Vec<f32> = (0..dims)
        .map(|i| f32::from(digest[i % 32]) - 127.5 + i as f32 * 0.25)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    raw.iter().map(|x| x / norm).collect()
}

/// A stored `dense_vector` value: a float array, or (9.3+) base64 of big-endian float32.
pub fn stored_vector(value: &Value) -> Option<Vec<f32>> {
    match value {
        Value::Array(items) => items.iter().map(|v| v.as_f64().map(|f| f as f32)).collect(),
        Value::String(text) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?;
            (bytes.len() % 4 == 0).then(|| {
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            })
        }
        _ => None,
    }
}

fn at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

fn licence_refusal() -> (u16, Value) {
    let cause = json!({"type": "security_exception", "reason": "current license is non-compliant for [inference]", "license.expired.feature": "inference"});
    let mut error = cause.clone();
    error["root_cause"] = json!([cause]);
    (403, json!({"error": error, "status": 403}))
}

fn no_handler(request: &Recorded) -> (u16, Value) {
    es_error(
        400,
        "illegal_argument_exception",
        &format!(
            "no handler found for uri [{}] and method [{}]",
            request.path, request.method
        ),
    )
}

/// `GET _license` as Elasticsearch answers it for the licence and version.
fn license_answer(state: &EsState, request: &Recorded) -> (u16, Value) {
    let License::Licensed(kind, status) = state.license.clone() else {
        return no_handler(request);
    };
    let mut license = json!({
        "status": status, "uid": "893361dc-9749-4997-93cb-802e3d7fa4xx", "type": kind,
        "issue_date": "2026-01-01T00:00:00.000Z", "issue_date_in_millis": 1767225600000u64,
        "max_nodes": 1000, "issued_to": "fake", "issuer": "elasticsearch", "start_date_in_millis": -1
    });
    if kind != "basic" {
        license["expiry_date"] = json!(if status == "expired" {
            "2026-02-01T00:00:00.000Z"
        } else {
            "2027-01-01T00:00:00.000Z"
        });
        license["expiry_date_in_millis"] = json!(if status == "expired" {
            1769904000000u64
        } else {
            1798761600000u64
        });
    }
    // Enterprise licences count resource units instead of nodes (7.10+).
    if at_least(&state.version, 7, 10) {
        license["max_resource_units"] = Value::Null;
        if kind == "enterprise" {
            license["max_nodes"] = Value::Null;
            license["max_resource_units"] = json!(100);
        }
    }
    (200, json!({ "license": license }))
}

/// `POST /sidecar/v1/embeddings`: the OpenAI dialect as `sightline serve` answers it.
fn sidecar_embeddings(state: &mut EsState, request: &Recorded) -> (u16, Value) {
    if !state.script.sidecar_refusals.is_empty() {
        let status = state.script.sidecar_refusals.remove(0);
        let message = match status {
            503 => "the model is not ready yet",
            429 => "the image queue is full; retry later",
            _ => "scripted failure",
        };
        return (
            status,
            json!({"error": {"message": message, "type": "server_error"}}),
        );
    }
    let body = request.json();
    let inputs: Vec<String> = match &body["input"] {
        Value::String(one) => vec![one.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    for (position, input) in inputs.iter().enumerate() {
        if state
            .script
            .sidecar_bad_inputs
            .iter()
            .any(|bad| input.contains(bad.as_str()))
        {
            return (
                400,
                json!({"error": {"message": format!("input[{position}]: cannot decode the image"), "type": "invalid_request_error"}}),
            );
        }
    }
    let base64 = body["encoding_format"] == "base64";
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = fake_vector(input, state.dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    (
        200,
        json!({"object": "list", "data": data, "model": FAKE_MODEL, "usage": {"prompt_tokens": 0, "total_tokens": 0}}),
    )
}

async fn handle(
    State(state): State<Arc<Mutex<EsState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers,
        body: body.to_vec(),
    };
    let forward = state.lock().unwrap().script.pipeline_sidecar.clone();
    let embedded = match forward {
        Some(url)
            if recorded.path.ends_with("/_bulk")
                && recorded.param("pipeline").is_some_and(|p| p != "_none") =>
        {
            embed_through(&url, &recorded).await
        }
        _ => HashMap::new(),
    };
    let mut state = state.lock().unwrap();
    state.requests.push(recorded.clone());
    state.embedded = embedded;
    let (status, answer) = answer(&mut state, &recorded);
    drop(state);
    if status == DROP_CONNECTION {
        // Headers go out, then the body fails: the client sees the connection break mid-answer.
        let broken = futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "fake ES dropped the connection",
            ))
        });
        return (StatusCode::OK, axum::body::Body::from_stream(broken)).into_response();
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if recorded.method == "HEAD" || answer.is_null() {
        status.into_response()
    } else {
        (status, axum::Json(answer)).into_response()
    };
    if recorded.path.starts_with("/sidecar/") && matches!(status.as_u16(), 429 | 503) {
        // As `sightline serve` does; 0 so the tests do not wait.
        response
            .headers_mut()
            .insert("retry-after", "0".parse().unwrap());
    }
    response
        .headers_mut()
        .insert("x-elastic-product", "Elasticsearch".parse().unwrap());
    response
}

fn answer(state: &mut EsState, request: &Recorded) -> (u16, Value) {
    if let Some(position) = state.script.overrides.iter().position(|o| {
        o.times > 0 && o.method == request.method && request.path.contains(o.path_contains)
    }) {
        let canned = &mut state.script.overrides[position];
        canned.times -= 1;
        return (canned.status, canned.body.clone());
    }
    let segments: Vec<&str> = request
        .path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    // An alias of one index stands for that index on every route but index creation.
    let concrete = segments.first().and_then(|name| single_index(state, name));
    let mut segments = segments;
    if let Some(concrete) = concrete.as_deref() {
        if !(request.method == "PUT" && segments.len() == 1) {
            segments[0] = concrete;
        }
    }
    if segments.last() == Some(&"_bulk") {
        if let Some(refusal) = before_bulk(state) {
            return refusal;
        }
    }
    match (request.method.as_str(), segments.as_slice()) {
        ("POST", [index, "_pit"]) => open_pit(state, index, request),
        ("POST" | "GET", ["_search"]) => pit_search(state, request),
        ("DELETE", ["_pit"]) => close_pit(state, request),
        ("POST", ["_aliases"]) => update_aliases(state, request),
        ("POST" | "GET", [index, "_search"]) if is_count(request) => count(state, index),
        ("GET", []) => (
            200,
            json!({"name": "fake", "cluster_name": "fake", "version": {"number": state.version, "build_flavor": "default"}, "tagline": "You Know, for Search"}),
        ),
        ("GET", ["sidecar", "info"]) => (
            200,
            json!({"model": FAKE_MODEL, "dimensions": state.dims, "normalized": true, "similarity": "dot_product",
                   "modalities": ["image", "text"], "max_seq_len": 128,
                   "max_inputs": 2048, "max_body_bytes": 67108864, "max_batch": {"image": 4, "text": 32},
                   "max_pixels": 100000000, "jpeg_prescale": true, "version": "0.1.0", "fingerprint": FAKE_FINGERPRINT}),
        ),
        ("POST", ["sidecar", "v1", "embeddings"]) => sidecar_embeddings(state, request),
        ("GET", ["_license"]) => license_answer(state, request),
        (_, ["_inference", ..]) if !at_least(&state.version, 8, 12) => no_handler(request),
        (_, ["_inference", ..]) if !state.license.allows_inference() => licence_refusal(),
        (method, ["_inference", task, id]) => inference(state, method, task, id, request),
        ("PUT", ["_ingest", "pipeline", id]) => {
            state.pipelines.insert((*id).to_owned(), request.json());
            (200, json!({"acknowledged": true}))
        }
        ("GET", ["_ingest", "pipeline", id]) => match state.pipelines.get(*id) {
            Some(body) => (200, json!({ *id: body })),
            None => (404, json!({})),
        },
        ("PUT", ["_index_template", name]) => {
            state.templates.insert((*name).to_owned(), request.json());
            (200, json!({"acknowledged": true}))
        }
        ("HEAD", [index]) => (
            if state.indices.contains_key(*index) {
                200
            } else {
                404
            },
            Value::Null,
        ),
        ("PUT", [index]) => create_index(state, index, request),
        ("GET", [index, "_mapping"]) => match state.indices.get(*index) {
            Some(found) => (200, json!({ *index: {"mappings": found.mappings} })),
            None => es_error(
                404,
                "index_not_found_exception",
                &format!("no such index [{index}]"),
            ),
        },
        ("POST", [index, "_mget"]) | ("GET", [index, "_mget"]) => mget(state, index, request),
        ("POST", [index, "_bulk"]) | ("PUT", [index, "_bulk"]) => bulk(state, index, request),
        ("GET" | "POST", [index, "_refresh"]) => {
            if state.indices.contains_key(*index) {
                (
                    200,
                    json!({"_shards": {"total": 1, "successful": 1, "failed": 0}}),
                )
            } else {
                es_error(
                    404,
                    "index_not_found_exception",
                    &format!("no such index [{index}]"),
                )
            }
        }
        ("POST" | "GET", [index, "_search"]) => search(state, index, request, false),
        ("POST" | "GET", [_, "_knn_search"]) if at_least(&state.version, 9, 0) => {
            no_handler(request)
        }
        ("POST" | "GET", [index, "_knn_search"]) => search(state, index, request, true),
        _ => es_error(
            400,
            "illegal_argument_exception",
            &format!(
                "fake ES has no route for {} {}",
                request.method, request.path
            ),
        ),
    }
}

fn inference(
    state: &mut EsState,
    method: &str,
    task: &str,
    id: &str,
    request: &Recorded,
) -> (u16, Value) {
    let missing = || {
        es_error(
            404,
            "resource_not_found_exception",
            &format!("Inference endpoint not found [{id}]"),
        )
    };
    match method {
        "GET" => match state.endpoints.get(id) {
            Some(endpoint) => (200, json!({"endpoints": [endpoint]})),
            None => missing(),
        },
        "PUT" => {
            if state.endpoints.contains_key(id) {
                return es_error(
                    400,
                    "status_exception",
                    &format!("Inference endpoint [{id}] already exists"),
                );
            }
            // Echo as ES does: secrets dropped, probed dimensions added.
            let body = request.json();
            let mut settings = body["service_settings"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            settings.remove("api_key");
            settings.remove("secret_parameters");
            settings.entry("dimensions").or_insert(json!(state.dims));
            let mut endpoint = json!({"inference_id": id, "task_type": task, "service": body["service"], "service_settings": settings,
                                      "task_settings": body.get("task_settings").cloned().unwrap_or(json!({}))});
            if let Some(chunking) = body.get("chunking_settings") {
                endpoint["chunking_settings"] = chunking.clone();
            }
            state.endpoints.insert(id.to_owned(), endpoint.clone());
            (200, endpoint)
        }
        "DELETE" => match state.endpoints.remove(id) {
            Some(_) => (200, json!({"acknowledged": true, "pipelines": []})),
            None => missing(),
        },
        "POST" => {
            if !state.endpoints.contains_key(id) {
                return missing();
            }
            let inputs = request.json()["input"].as_array().map_or(1, Vec::len);
            let dims = state.script.inference_dims.unwrap_or(state.dims);
            let results: Vec<Value> = (0..inputs)
                .map(|_| json!({"embedding": unit_vector(dims)}))
                .collect();
            (200, json!({ task: results }))
        }
        _ => missing(),
    }
}

fn create_index(state: &mut EsState, index: &str, request: &Recorded) -> (u16, Value) {
    if state.indices.contains_key(index) {
        return es_error(
            400,
            "resource_already_exists_exception",
            &format!("index [{index}/x] already exists"),
        );
    }
    if state.aliases.contains_key(index) {
        return es_error(
            400,
            "invalid_index_name_exception",
            &format!("Invalid index name [{index}], already exists as alias"),
        );
    }
    let requested = if request.body.is_empty() {
        json!({})
    } else {
        request.json()
    };
    let new_aliases: Vec<String> = requested["aliases"]
        .as_object()
        .map(|aliases| aliases.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(clash) = new_aliases.iter().find(|a| state.indices.contains_key(*a)) {
        return es_error(
            400,
            "invalid_alias_name_exception",
            &format!("Invalid alias name [{clash}]: an index or data stream exists with the same name as the alias"),
        );
    }
    for alias in new_aliases {
        state
            .aliases
            .entry(alias)
            .or_default()
            .insert(index.to_owned());
    }
    let body = if request.body.is_empty() {
        json!({})
    } else {
        request.json()
    };
    let template = state
        .templates
        .values()
        .find(|t| {
            t["index_patterns"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p == index))
        })
        .map(|t| t["template"].clone())
        .unwrap_or(json!({}));
    let pick = |key: &str| {
        body.get(key)
            .cloned()
            .or_else(|| template.get(key).cloned())
            .unwrap_or(json!({}))
    };
    state.indices.insert(
        index.to_owned(),
        Index {
            mappings: pick("mappings"),
            settings: pick("settings"),
            docs: BTreeMap::new(),
        },
    );
    (
        200,
        json!({"acknowledged": true, "shards_acknowledged": true, "index": index}),
    )
}

fn mget(state: &mut EsState, index: &str, request: &Recorded) -> (u16, Value) {
    let body = request.json();
    let empty = Vec::new();
    let docs = body["docs"].as_array().unwrap_or(&empty);
    let answers: Vec<Value> = docs
        .iter()
        .map(|doc| {
            let id = doc["_id"].as_str().unwrap_or_default();
            match state.indices.get(index) {
                None => json!({"_index": index, "_id": id, "error": {"type": "index_not_found_exception", "reason": "no such index"}}),
                Some(found) => match found.docs.get(id) {
                    Some(_) if doc.get("_source") == Some(&json!(false)) => json!({"_index": index, "_id": id, "found": true}),
                    Some(source) => json!({"_index": index, "_id": id, "found": true, "_source": source}),
                    None => json!({"_index": index, "_id": id, "found": false}),
                },
            }
        })
        .collect();
    (200, json!({ "docs": answers }))
}

fn bulk(state: &mut EsState, index: &str, request: &Recorded) -> (u16, Value) {
    let mut lines = request.ndjson().into_iter();
    let pipeline = request.param("pipeline");
    let mut items = Vec::new();
    while let Some(action) = lines.next() {
        let (op, meta) = action
            .as_object()
            .and_then(|a| a.iter().next())
            .map(|(op, meta)| (op.clone(), meta.clone()))
            .expect("bulk action");
        let named = meta["_index"].as_str().unwrap_or(index).to_owned();
        // Writes through an alias land in its index; the pipeline's `_index` is the name given.
        let target = single_index(state, &named).unwrap_or_else(|| named.clone());
        let id = meta["_id"].as_str().unwrap_or_default().to_owned();
        let item = |index: &str, status: u16, extra: Value| {
            let mut result = json!({"_index": index, "_id": id, "status": status});
            if let (Some(result), Some(extra)) = (result.as_object_mut(), extra.as_object()) {
                result.extend(extra.clone());
            }
            json!({ op.as_str(): result })
        };
        if op == "delete" {
            let removed = state
                .indices
                .get_mut(&target)
                .and_then(|found| found.docs.remove(&id));
            items.push(match removed {
                Some(_) => item(&target, 200, json!({"result": "deleted"})),
                None => item(&target, 404, json!({"result": "not_found"})),
            });
            continue;
        }
        let Some(source) = lines.next() else {
            return es_error(
                400,
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]",
            );
        };
        if let Some(remaining) = state.script.item_429.get_mut(&id) {
            if *remaining > 0 {
                *remaining -= 1;
                items.push(item(&target, 429, json!({"error": {"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}})));
                continue;
            }
        }
        if let Some((status, kind, reason)) = state.script.item_errors.get(&id) {
            items.push(item(
                &target,
                *status,
                json!({"error": {"type": kind, "reason": reason}}),
            ));
            continue;
        }
        let mut document = source.clone();
        let mut destination = target.clone();
        match pipeline.as_deref() {
            None | Some("_none") => {}
            Some(name) => {
                if !state.pipelines.contains_key(name) {
                    items.push(item(&target, 400, json!({"error": {"type": "illegal_argument_exception", "reason": format!("pipeline with id [{name}] does not exist")}})));
                    continue;
                }
                let image = document
                    .get("image_b64")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let failure = if image.is_none() || state.script.pipeline_fail_ids.contains(&id) {
                    Some("simulated inference failure: the sidecar answered 400".to_owned())
                } else if !state.license.allows_inference() {
                    Some("current license is non-compliant for [inference]".to_owned())
                } else if state.script.pipeline_outage > 0 {
                    state.script.pipeline_outage -= 1;
                    Some("Received an unsuccessful status code for request from inference entity id [sightline-clip] status [503]".to_owned())
                } else {
                    None
                };
                match (failure, image) {
                    (failure @ Some(_), _) | (failure @ None, None) => {
                        let message = failure.unwrap_or_default();
                        // on_failure: record the error, redirect to <index>-failed
                        document["error"] = json!({"message": message, "processor_type": "inference", "original_index": named});
                        document["failed_at"] = json!("2026-12-02T00:00:00.000Z");
                        destination = format!("{named}-failed");
                    }
                    (None, Some(image)) => {
                        let object = document.as_object_mut().expect("document object");
                        object.remove("image_b64");
                        let vector = state
                            .embedded
                            .get(&image)
                            .cloned()
                            .unwrap_or_else(|| fake_vector(&image, state.dims));
                        object.insert(
                            "ml".to_owned(),
                            json!({"image_vector": vector, "model_id": "sightline-clip"}),
                        );
                    }
                }
            }
        }
        let base64_allowed = at_least(&state.version, 9, 3);
        let index_entry = state.indices.entry(destination.clone()).or_default();
        if let Some(value) = document.pointer("/ml/image_vector") {
            if value.is_string() && !base64_allowed {
                items.push(item(&destination, 400, json!({"error": {"type": "document_parsing_exception",
                    "reason": format!("[1:1] failed to parse field [ml.image_vector] of type [dense_vector] in document with id '{id}'. Preview of field's value: 'AAAA'"),
                    "caused_by": {"type": "parsing_exception", "reason": "Failed to parse object: expecting token of type [START_ARRAY] but found [VALUE_STRING]"}}})));
                continue;
            }
            let expected = index_entry
                .mappings
                .pointer("/properties/ml/properties/image_vector/dims")
                .and_then(Value::as_u64);
            let got = stored_vector(value).map(|v| v.len() as u64);
            if let Some(expected) = expected {
                if got != Some(expected) {
                    items.push(item(&destination, 400, json!({"error": {"type": "document_parsing_exception",
                        "reason": format!("The [dense_vector] field [ml.image_vector] in doc [{id}] has a different number of dimensions [{}] than defined in the mapping [{expected}]", got.unwrap_or(0))}})));
                    continue;
                }
            }
        }
        let exists = index_entry.docs.contains_key(&id);
        if op == "create" && exists {
            items.push(item(&destination, 409, json!({"error": {"type": "version_conflict_engine_exception", "reason": format!("[{id}]: version conflict, document already exists (current version [1])")}})));
            continue;
        }
        index_entry.docs.insert(id.clone(), document);
        items.push(if exists {
            item(
                &destination,
                200,
                json!({"result": "updated", "_version": 2}),
            )
        } else {
            item(
                &destination,
                201,
                json!({"result": "created", "_version": 1}),
            )
        });
    }
    let errors = items.iter().any(|item| {
        item.as_object()
            .and_then(|o| o.values().next())
            .and_then(|r| r["status"].as_u64())
            .is_some_and(|s| s >= 300)
    });
    (200, json!({"took": 1, "errors": errors, "items": items}))
}

/// The query vector of a search body, or the error ES gives for it.
fn query_vector(state: &EsState, body: &Value) -> Result<Option<Vec<f32>>, (u16, Value)> {
    if let Some(vector) = body.pointer("/knn/query_vector") {
        return Ok(stored_vector(vector));
    }
    if let Some(builder) = body.pointer("/knn/query_vector_builder/text_embedding") {
        if !state.license.allows_inference() {
            return Err(licence_refusal());
        }
        // The endpoint is not looked up: tests assert the `model_id` they expect.
        let text = builder["model_text"].as_str().unwrap_or_default();
        return Ok(Some(fake_vector(text, state.dims)));
    }
    Ok(body
        .pointer("/query/script_score/script/params/query_vector")
        .and_then(stored_vector))
}

fn search(
    state: &mut EsState,
    index: &str,
    request: &Recorded,
    knn_endpoint: bool,
) -> (u16, Value) {
    if let Some(hits) = &state.script.search_hits {
        let hits = hits.clone();
        return (
            200,
            json!({"took": 1, "timed_out": false, "hits": {"total": {"value": hits.len(), "relation": "eq"}, "max_score": 1.0, "hits": hits}}),
        );
    }
    let body = if request.body.is_empty() {
        json!({})
    } else {
        request.json()
    };
    // The gallery pages with `from` and reads stored vectors with an `ids` query: those get the
    // fuller model of ES's scoring, filters and `_source` vector rules.
    if body.get("from").is_some() || body.pointer("/query/ids").is_some() {
        return vector_search(state, index, &body);
    }
    if body.get("knn").is_some() && !knn_endpoint && !at_least(&state.version, 8, 4) {
        return es_error(
            400,
            "parsing_exception",
            "Unknown key for a START_OBJECT in [knn].",
        );
    }
    let vector = match query_vector(state, &body) {
        Ok(vector) => vector,
        Err(refusal) => return refusal,
    };
    let Some(found) = state.indices.get(index) else {
        return es_error(
            404,
            "index_not_found_exception",
            &format!("no such index [{index}]"),
        );
    };
    let mut docs: Vec<(String, Value, f64)> = found
        .docs
        .iter()
        .map(|(id, source)| (id.clone(), source.clone(), 1.0))
        .collect();
    if let Some(field) = body.pointer("/query/exists/field").and_then(Value::as_str) {
        docs.retain(|(_, source, _)| source.get(field).is_some());
    }
    let size = body
        .pointer("/knn/k")
        .or_else(|| body.get("size"))
        .and_then(Value::as_u64)
        .unwrap_or(10) as usize;
    if let Some(vector) = vector {
        docs = docs
            .into_iter()
            .filter_map(|(id, source, _)| {
                let stored = source.pointer("/ml/image_vector").and_then(stored_vector)?;
                let score: f32 = stored.iter().zip(&vector).map(|(a, b)| a * b).sum();
                Some((id, source, f64::from(score)))
            })
            .collect();
        docs.sort_by(|a, b| b.2.total_cmp(&a.2));
    } else if body.pointer("/sort/0/content_hash").is_some() {
        docs.sort_by(|a, b| {
            a.1["content_hash"]
                .as_str()
                .cmp(&b.1["content_hash"].as_str())
        });
        if let Some(after) = body.pointer("/search_after/0").and_then(Value::as_str) {
            docs.retain(|(_, source, _)| {
                source["content_hash"]
                    .as_str()
                    .is_some_and(|hash| hash > after)
            });
        }
    }
    docs.truncate(size);
    let hits: Vec<Value> = docs
        .into_iter()
        .map(|(id, source, score)| {
            let sort = source["content_hash"].clone();
            json!({"_index": index, "_id": id, "_score": score, "_source": source, "sort": [sort]})
        })
        .collect();
    (
        200,
        json!({"took": 1, "timed_out": false, "hits": {"total": {"value": hits.len(), "relation": "eq"}, "max_score": 1.0, "hits": hits}}),
    )
}

/// `_search` with `knn.query_vector` (scored by cosine against the stored vectors as ES scores
/// `cosine`/`dot_product`: `(1 + cos) / 2`, after the kNN `filter`) or with an `ids` query. Like
/// ES: a missing index is a 404; from 9.2 vectors are left out of `_source` unless the request
/// says `exclude_vectors: false`, and before 8.19/9.1 that key is a parse error.
fn vector_search(state: &EsState, index: &str, body: &Value) -> (u16, Value) {
    let Some(found) = state.indices.get(index) else {
        return es_error(
            404,
            "index_not_found_exception",
            &format!("no such index [{index}]"),
        );
    };
    let version: Vec<u32> = state
        .version
        .split(['.', '-'])
        .take(2)
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    let at_least = |major: u32, minor: u32| {
        (
            version.first().copied().unwrap_or(0),
            version.get(1).copied().unwrap_or(0),
        ) >= (major, minor)
    };
    let exclude_key = body.pointer("/_source/exclude_vectors");
    let knows_key = at_least(9, 1) || (version.first() == Some(&8) && at_least(8, 19));
    if exclude_key.is_some() && !knows_key {
        return es_error(
            400,
            "x_content_parse_exception",
            "[_source] unknown field [exclude_vectors]",
        );
    }
    let hide_vectors = at_least(9, 2) && exclude_key != Some(&json!(false));
    let mut scored: Vec<(f64, &String, &Value)> = Vec::new();
    if let Some(ids) = body.pointer("/query/ids/values").and_then(Value::as_array) {
        for id in ids.iter().filter_map(Value::as_str) {
            if let Some((id, source)) = found.docs.get_key_value(id) {
                scored.push((1.0, id, source));
            }
        }
    } else {
        let knn = &body["knn"];
        let query: Vec<f64> = knn["query_vector"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let field = knn["field"].as_str().unwrap_or("ml.image_vector");
        let filter = knn.get("filter").cloned().unwrap_or(Value::Null);
        for (id, source) in &found.docs {
            match matches_filter(source, &filter) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(reason) => return es_error(400, "parsing_exception", &reason),
            }
            let Some(stored) = dotted(source, field).and_then(Value::as_array) else {
                continue;
            };
            let stored: Vec<f64> = stored.iter().filter_map(Value::as_f64).collect();
            if stored.len() != query.len() {
                return es_error(
                    400,
                    "illegal_argument_exception",
                    &format!(
                        "the query vector has a different number of dimensions [{}] than the document vectors [{}]",
                        query.len(),
                        stored.len()
                    ),
                );
            }
            scored.push(((1.0 + cosine_f64(&query, &stored)) / 2.0, id, source));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        scored.truncate(knn["k"].as_u64().unwrap_or(10) as usize);
    }
    let from = body["from"].as_u64().unwrap_or(0) as usize;
    let size = body["size"].as_u64().unwrap_or(10) as usize;
    let hits: Vec<Value> = scored
        .iter()
        .skip(from)
        .take(size)
        .map(|(score, id, source)| {
            let mut source = (*source).clone();
            if hide_vectors {
                if let Some(ml) = source.get_mut("ml").and_then(Value::as_object_mut) {
                    ml.remove("image_vector");
                }
            }
            json!({"_index": index, "_id": id, "_score": score, "_source": source})
        })
        .collect();
    (
        200,
        json!({"took": 1, "timed_out": false, "hits": {"max_score": hits.first().map(|h| h["_score"].clone()), "hits": hits}}),
    )
}

/// The value at a dotted path of a document.
fn dotted<'a>(source: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(source, |value, key| value.get(key))
}

fn cosine_f64(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}

/// The filter clauses the gallery sends (`bool.filter` of `terms`, `range`, `prefix`); any
/// other clause is an error, so a test notices a filter the fake would silently ignore.
fn matches_filter(source: &Value, filter: &Value) -> Result<bool, String> {
    match filter {
        Value::Null => Ok(true),
        Value::Array(clauses) => {
            for clause in clauses {
                if !matches_filter(source, clause)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Value::Object(object) => {
            let (kind, spec) = object.iter().next().ok_or("empty filter clause")?;
            let (field, condition) = spec
                .as_object()
                .and_then(|o| o.iter().next())
                .ok_or_else(|| format!("[{kind}] needs a field"))?;
            match kind.as_str() {
                "bool" => {
                    let clauses = spec.get("filter").cloned().unwrap_or(Value::Null);
                    matches_filter(source, &clauses)
                }
                "terms" => {
                    let value = dotted(source, field);
                    Ok(condition
                        .as_array()
                        .is_some_and(|options| value.is_some_and(|v| options.contains(v))))
                }
                "prefix" => Ok(
                    match (
                        dotted(source, field).and_then(Value::as_str),
                        condition.as_str(),
                    ) {
                        (Some(value), Some(prefix)) => value.starts_with(prefix),
                        _ => false,
                    },
                ),
                "range" => {
                    let Some(value) = dotted(source, field).and_then(Value::as_f64) else {
                        return Ok(false);
                    };
                    let bound = |key: &str| condition.get(key).and_then(Value::as_f64);
                    Ok(bound("gte").is_none_or(|b| value >= b)
                        && bound("lte").is_none_or(|b| value <= b)
                        && bound("gt").is_none_or(|b| value > b)
                        && bound("lt").is_none_or(|b| value < b))
                }
                other => Err(format!("fake ES cannot filter with [{other}]")),
            }
        }
        other => Err(format!("fake ES cannot read the filter {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Running the binary

/// Environment variables the CLI reads; removed so a developer's shell cannot change a test.
const CLI_ENV: [&str; 12] = [
    "SIGHTLINE_ES_URL",
    "SIGHTLINE_ES_API_KEY",
    "SIGHTLINE_ES_USER",
    "SIGHTLINE_ES_PASSWORD",
    "SIGHTLINE_ES_CA_CERT",
    "SIGHTLINE_SIDECAR_URL",
    "SIGHTLINE_SIDECAR_API_KEY",
    "SIGHTLINE_INDEX",
    "SIGHTLINE_INFERENCE_ID",
    "SIGHTLINE_MODEL_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
];

/// Output of one `sightline` run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "exit code {:?}, expected {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `sightline ARGS` with extra environment `envs`, off the async threads so the fake
/// server keeps answering while the child runs.
pub async fn sightline_with_env(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut command = cli_command(&args);
        for (key, value) in envs {
            command.env(key, value);
        }
        Run::from_output(command.output().expect("cannot start the sightline binary"))
    })
    .await
    .expect("the sightline runner task panicked")
}

/// The `sightline ARGS` command, with the developer's CLI environment removed.
fn cli_command(args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sightline"));
    command
        .args(args)
        .env("SIGHTLINE_LOG", "warn")
        .env("NO_PROXY", "127.0.0.1,localhost");
    for name in CLI_ENV {
        command.env_remove(name);
    }
    command
}

/// Runs `sightline ARGS` with `input` on its standard input.
pub async fn sightline_with_stdin(args: &[&str], input: &str) -> Run {
    use std::io::Write;
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let input = input.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = cli_command(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start the sightline binary");
        let mut stdin = child.stdin.take().expect("a piped stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        drop(stdin);
        Run::from_output(child.wait_with_output().expect("the sightline child"))
    })
    .await
    .expect("the sightline runner task panicked")
}

pub async fn sightline(args: &[&str]) -> Run {
    sightline_with_env(args, &[]).await
}

/// The shared fixture images.
pub fn fixture_images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images")
}

/// Parses Kibana console text (`# comment`, `METHOD path`, pretty JSON body) into requests.
pub fn parse_console(text: &str) -> Vec<(String, String, Option<Value>)> {
    let mut requests = Vec::new();
    let mut current: Option<(String, String, String)> = None;
    let finish = |current: Option<(String, String, String)>,
                  requests: &mut Vec<(String, String, Option<Value>)>| {
        if let Some((method, path, body)) = current {
            let body =
                if body.trim().is_empty() {
                    None
                } else {
                    Some(serde_json::from_str(&body).unwrap_or_else(|e| {
                        panic!("body of {method} {path} is not JSON: {e}\n{body}")
                    }))
                };
            requests.push((method, path, body));
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let request_line = ["GET ", "PUT ", "POST ", "DELETE ", "HEAD "]
            .iter()
            .find(|m| line.starts_with(**m))
            .map(|_| line.split_once(' ').unwrap());
        match request_line {
            Some((method, path)) => {
                finish(current.take(), &mut requests);
                current = Some((method.to_owned(), path.to_owned(), String::new()));
            }
            None => {
                if let Some((_, _, body)) = current.as_mut() {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    finish(current, &mut requests);
    requests
}

/// An asset file with its `@@name@@` placeholders replaced, parsed: what the tests compare
/// request bodies against.
pub fn rendered_asset(path: &str, params: &[(&str, Value)]) -> Value {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .expect("asset file");
    let mut value: Value = serde_json::from_str(&text).expect("asset is JSON");
    fn walk(value: &mut Value, params: &[(&str, Value)]) {
        match value {
            Value::String(text) => {
                for (name, replacement) in params {
                    let placeholder = format!("@@{name}@@");
                    if *text == placeholder {
                        *value = replacement.clone();
                        return;
                    }
                    if text.contains(&placeholder) {
                        let replacement_text = match replacement {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        *text = text.replace(&placeholder, &replacement_text);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| walk(item, params)),
            Value::Object(fields) => fields.values_mut().for_each(|field| walk(field, params)),
            _ => {}
        }
    }
    walk(&mut value, params);
    value
}

/// Object fields of `value`, for messages.
pub fn keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .map(Map::keys)
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

/// The index an alias of exactly one index points at.
fn single_index(state: &EsState, name: &str) -> Option<String> {
    let indices = state.aliases.get(name)?;
    (indices.len() == 1)
        .then(|| indices.iter().next().cloned())
        .flatten()
}

/// [`Script::search_during_bulk`] and [`Script::bulks_before_outage`], before a `_bulk`.
fn before_bulk(state: &mut EsState) -> Option<(u16, Value)> {
    if let Some((name, body)) = state.script.search_during_bulk.clone() {
        let index = single_index(state, &name).unwrap_or(name);
        let search = Recorded {
            method: "POST".to_owned(),
            path: format!("/{index}/_search"),
            query: String::new(),
            headers: HeaderMap::new(),
            body: serde_json::to_vec(&body).expect("search body"),
        };
        let answer = crate::fake_es::search(state, &index, &search, false);
        state.during_bulk.push(answer);
    }
    match state.script.bulks_before_outage.as_mut() {
        Some(0) => Some(es_error(
            503,
            "unavailable_shards_exception",
            "scripted outage: primary shard is not active",
        )),
        Some(left) => {
            *left -= 1;
            None
        }
        None => None,
    }
}

/// A `size: 0` search that asks for the exact total: a count.
fn is_count(request: &Recorded) -> bool {
    let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
        return false;
    };
    body["size"] == 0 && body["track_total_hits"] == true
}

fn count(state: &EsState, index: &str) -> (u16, Value) {
    match state.indices.get(index) {
        Some(found) => (
            200,
            json!({"took": 1, "timed_out": false, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                   "hits": {"total": {"value": found.docs.len(), "relation": "eq"}, "max_score": null, "hits": []}}),
        ),
        None => es_error(
            404,
            "index_not_found_exception",
            &format!("no such index [{index}]"),
        ),
    }
}

/// `POST <index>/_pit?keep_alive=…`.
fn open_pit(state: &mut EsState, index: &str, request: &Recorded) -> (u16, Value) {
    if request.param("keep_alive").is_none() {
        return es_error(
            400,
            "action_request_validation_exception",
            "Validation Failed: 1: [keep_alive] is not set;",
        );
    }
    let Some(found) = state.indices.get(index) else {
        return es_error(
            404,
            "index_not_found_exception",
            &format!("no such index [{index}]"),
        );
    };
    let mut docs: Vec<(String, Value)> = found
        .docs
        .iter()
        .map(|(id, source)| (id.clone(), source.clone()))
        .collect();
    docs.sort_by(|a, b| {
        let key = |doc: &(String, Value)| doc.1["content_hash"].as_str().map(str::to_owned);
        match (key(a), key(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    });
    state.opened_pits += 1;
    let id = base64::engine::general_purpose::STANDARD
        .encode(format!("fake-pit-{}-{index}", state.opened_pits));
    state.pits.insert(
        id.clone(),
        Pit {
            index: index.to_owned(),
            docs,
        },
    );
    (
        200,
        json!({"id": id, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}),
    )
}

/// `_search` with `pit` (and no index in the path), sorted by `content_hash` plus the implicit
/// `_shard_doc` tiebreaker ES adds to every PIT search.
fn pit_search(state: &EsState, request: &Recorded) -> (u16, Value) {
    let body = request.json();
    let Some(id) = body.pointer("/pit/id").and_then(Value::as_str) else {
        return es_error(
            400,
            "illegal_argument_exception",
            "fake ES answers _search without an index only with a point in time",
        );
    };
    let Some(pit) = state.pits.get(id) else {
        return es_error(
            404,
            "search_context_missing_exception",
            &format!("No search context found for id [{id}]"),
        );
    };
    if body.pointer("/sort/0/content_hash").is_none() {
        return es_error(
            400,
            "illegal_argument_exception",
            "fake ES sorts points in time by content_hash only",
        );
    }
    let after = body
        .pointer("/search_after/1")
        .and_then(Value::as_i64)
        .unwrap_or(-1);
    let size = body["size"].as_u64().unwrap_or(10) as usize;
    let hits: Vec<Value> = pit
        .docs
        .iter()
        .enumerate()
        .filter(|(position, _)| *position as i64 > after)
        .take(size)
        .map(|(position, (id, source))| {
            json!({"_index": pit.index, "_id": id, "_score": null, "_source": source,
                   "sort": [source["content_hash"].clone(), position]})
        })
        .collect();
    let mut answer = json!({"pit_id": id, "took": 1, "timed_out": false,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {"max_score": null, "hits": hits}});
    if body["track_total_hits"] == true {
        answer["hits"]["total"] = json!({"value": pit.docs.len(), "relation": "eq"});
    }
    (200, answer)
}

/// `DELETE _pit` with `{"id": …}`.
fn close_pit(state: &mut EsState, request: &Recorded) -> (u16, Value) {
    let body = request.json();
    let id = body["id"].as_str().unwrap_or_default();
    match state.pits.remove(id) {
        Some(_) => (200, json!({"succeeded": true, "num_freed": 1})),
        None => (404, json!({"succeeded": true, "num_freed": 0})),
    }
}

/// `POST _aliases`: every action is checked first and then all are applied, or none.
fn update_aliases(state: &mut EsState, request: &Recorded) -> (u16, Value) {
    let body = request.json();
    let Some(actions) = body["actions"].as_array() else {
        return es_error(
            400,
            "action_request_validation_exception",
            "Validation Failed: 1: no actions;",
        );
    };
    let mut aliases = state.aliases.clone();
    let mut removed_indices = Vec::new();
    let missing_index = |index: &str| {
        es_error(
            404,
            "index_not_found_exception",
            &format!("no such index [{index}]"),
        )
    };
    for action in actions {
        let Some((kind, spec)) = action.as_object().and_then(|a| a.iter().next()) else {
            return es_error(400, "parsing_exception", "an alias action is not an object");
        };
        let index = spec["index"].as_str().unwrap_or_default();
        let alias = spec["alias"].as_str().unwrap_or_default();
        if !state.indices.contains_key(index) || removed_indices.contains(&index.to_owned()) {
            return missing_index(index);
        }
        match kind.as_str() {
            "add" => {
                if state.indices.contains_key(alias)
                    && !removed_indices.contains(&alias.to_owned())
                    && !actions
                        .iter()
                        .any(|a| a.pointer("/remove_index/index") == Some(&json!(alias)))
                {
                    return es_error(
                        400,
                        "invalid_alias_name_exception",
                        &format!("Invalid alias name [{alias}]: an index or data stream exists with the same name as the alias"),
                    );
                }
                aliases
                    .entry(alias.to_owned())
                    .or_default()
                    .insert(index.to_owned());
            }
            "remove" => {
                let removed = aliases
                    .get_mut(alias)
                    .is_some_and(|indices| indices.remove(index));
                if !removed {
                    return es_error(
                        404,
                        "aliases_not_found_exception",
                        &format!("aliases [{alias}] missing"),
                    );
                }
            }
            "remove_index" => removed_indices.push(index.to_owned()),
            other => {
                return es_error(
                    400,
                    "parsing_exception",
                    &format!("Unknown field [{other}]"),
                )
            }
        }
    }
    for index in &removed_indices {
        state.indices.remove(index);
        for indices in aliases.values_mut() {
            indices.remove(index);
        }
    }
    aliases.retain(|_, indices| !indices.is_empty());
    state.aliases = aliases;
    (200, json!({"acknowledged": true}))
}
