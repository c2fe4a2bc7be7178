//! `sightline gallery`'s JSON API and page, in-process, against the fake cluster holding the
//! fixture images with vectors from the tiny model, and a real sidecar (the tiny engine behind
//! the real router on a loopback port) that a test can stop. Covers text, image, URL and
//! "more like this" queries, filters, pages, duplicates, every error state, upload limits, auth
//! and the page's headers. The helpers are shared with the browser test (`gallery_ui.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tower::ServiceExt;

use sightline::es::image::{prepare, ImageOptions};
use sightline::gallery::{app, GalleryAuth, GalleryConfig};
use sightline::http::router;

use crate::common::{
    engine, get, http_config, openai_body, openai_vectors, patiently, send, API_KEY, DIMS,
};
use crate::fake_es::{fixture_images, FakeEs};

pub const INDEX: &str = "photos";

// ---------------------------------------------------------------------------------------------
// Helpers

/// The real sidecar router on 127.0.0.1, stoppable.
pub struct Sidecar {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sidecar {
    pub async fn start() -> Sidecar {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(engine(), http_config());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .expect("test sidecar failed");
        });
        Sidecar {
            url: format!("http://{address}"),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops listening and closes idle connections; returns once the server is gone.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            patiently("the test sidecar stops", task).await.unwrap();
        }
    }
}

/// One indexed fixture image.
#[derive(Debug, Clone)]
pub struct Indexed {
    pub id: String,
    pub path: String,
    pub format: String,
    pub bytes: usize,
    pub ingested_at: i64,
}

/// Milliseconds of the first fixture's ingest time; each next one is a day later.
pub const FIRST_INGEST_MS: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 86_400_000;

/// The fixture images the gallery tests index (top level of `tests/fixtures/images`), sorted.
pub fn fixture_names() -> Vec<String> {
    // A fixed set of 20 (one page of the default 24 holds them all, which the paging and
    // duplicate tests count on), not the whole folder, which grows with each decoding class.
    const NAMES: [&str; 20] = [
        "animated.gif",
        "cmyk.jpg",
        "edges-481x321.png",
        "exif-rot90.jpg",
        "gray.png",
        "gray16.png",
        "image.bmp",
        "image.tiff",
        "image.webp",
        "landscape.jpg",
        "large-2400x1600.jpg",
        "palette-transparent.png",
        "palette.png",
        "portrait.png",
        "rgb16.png",
        "rgba.png",
        "small-100x50.png",
        "tall-90x700.png",
        "tiny-1x1.png",
        "wide-1000x120.png",
    ];
    NAMES.iter().map(|name| (*name).to_owned()).collect()
}

/// The sidecar's `/info` fingerprint of the tiny model.
pub async fn sidecar_fingerprint() -> String {
    let reply = send(
        &router(engine(), http_config()),
        get("/info", Some(API_KEY)),
    )
    .await;
    reply.json()["fingerprint"].as_str().unwrap().to_owned()
}

/// A fake cluster at `version` with index `photos` holding every fixture image as `ingest
/// --embed-locally` writes it: prepared exactly as ingest prepares it, embedded by the tiny
/// model, under `photos/2023/` (odd positions) or `photos/2024/` (even), one day apart.
pub async fn indexed_cluster(version: &str) -> (FakeEs, BTreeMap<String, Indexed>) {
    let fake = FakeEs::start(version).await;
    let fingerprint = sidecar_fingerprint().await;
    fake.seed_index(
        INDEX,
        json!({"_meta": {"model_fingerprint": fingerprint},
               "properties": {"ml": {"properties": {"image_vector": {"type": "dense_vector", "dims": DIMS}}}}}),
    );
    let names = fixture_names();
    let mut prepared = Vec::new();
    for name in &names {
        let bytes = std::fs::read(fixture_images().join(name)).unwrap();
        let image = prepare(&bytes, ImageOptions::default()).unwrap();
        prepared.push((bytes, image));
    }
    let uris: Vec<String> = prepared.iter().map(|(_, image)| image.data_uri()).collect();
    let inputs: Vec<&str> = uris.iter().map(String::as_str).collect();
    let sidecar = router(engine(), http_config());
    let vectors = openai_vectors(
        &sidecar,
        "/v1/embeddings?modality=image",
        openai_body(&inputs, None, None, false),
        inputs.len(),
    )
    .await;
    let mut indexed = BTreeMap::new();
    for (position, ((name, (bytes, image)), vector)) in
        names.iter().zip(&prepared).zip(vectors).enumerate()
    {
        let id = hex(&Sha256::digest(bytes));
        let year = if position % 2 == 0 { 2024 } else { 2023 };
        let path = format!("photos/{year}/{name}");
        let ingested_at = FIRST_INGEST_MS + position as i64 * DAY_MS;
        fake.seed_doc(
            INDEX,
            &id,
            json!({"content_hash": id, "file_name": name, "path": path, "format": image.format,
                   "width": image.width, "height": image.height, "bytes": bytes.len(),
                   "thumbnail": image.thumbnail_base64(), "ingested_at": ingested_at,
                   "ml": {"image_vector": vector, "model_id": "tiny-clip"}}),
        );
        indexed.insert(
            name.clone(),
            Indexed {
                id,
                path,
                format: image.format.to_owned(),
                bytes: bytes.len(),
                ingested_at,
            },
        );
    }
    (fake, indexed)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The gallery's configuration for `fake` and `sidecar`.
pub fn config(fake: &FakeEs, sidecar: &Sidecar) -> GalleryConfig {
    let mut config = GalleryConfig::new(&fake.url, INDEX, &sidecar.url);
    config.sidecar_api_key = Some(API_KEY.to_owned());
    config
}

/// One answer of the gallery.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// `error.code`, after checking the status.
    pub fn error(&self, status: StatusCode) -> (String, String) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        (
            body["error"]["code"].as_str().unwrap().to_owned(),
            body["error"]["message"].as_str().unwrap().to_owned(),
        )
    }

    /// The hits of a successful search.
    pub fn hits(&self) -> Vec<Value> {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()["hits"].as_array().unwrap().clone()
    }
}

pub async fn request(app: &Router, request: Request<Body>) -> Answer {
    let response = patiently("the gallery answers", app.clone().oneshot(request))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes().to_vec(),
    }
}

fn post_json(body: &Value) -> Request<Body> {
    post_bytes(serde_json::to_vec(body).unwrap())
}

fn post_bytes(body: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("/api/search")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

fn get_page(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

pub async fn search(app: &Router, body: Value) -> Answer {
    request(app, post_json(&body)).await
}

pub fn image_uri(name: &str) -> String {
    let bytes = std::fs::read(fixture_images().join(name)).unwrap();
    format!(
        "data:application/octet-stream;base64,{}",
        BASE64.encode(bytes)
    )
}

fn ids(hits: &[Value]) -> Vec<String> {
    hits.iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect()
}

fn scores(hits: &[Value]) -> Vec<f64> {
    hits.iter().map(|h| h["score"].as_f64().unwrap()).collect()
}

/// The last `_search` body the fake cluster received.
fn last_search(fake: &FakeEs) -> Value {
    fake.requests()
        .into_iter()
        .rev()
        .find(|r| r.path == format!("/{INDEX}/_search"))
        .expect("a search")
        .json()
}

/// A loopback address nothing listens on.
async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

// ---------------------------------------------------------------------------------------------
// Queries

#[tokio::test]
async fn text_query_sends_the_sidecars_vector_as_query_vector() {
    let sidecar = Sidecar::start().await;
    let (fake, indexed) = indexed_cluster("8.15.0").await;
    let gallery = app(config(&fake, &sidecar)).unwrap();

    let answer = search(&gallery, json!({"text": "ein rotes Fahrrad"})).await;
    let hits = answer.hits();
    assert_eq!(
        hits.len(),
        indexed.len(),
        "every picture within the page of 24"
    );
    let ranked = scores(&hits);
    assert!(ranked.windows(2).all(|w| w[0] >= w[1]), "{ranked:?}");
    assert_eq!(answer.json()["next_offset"], Value::Null);
    assert!(hits[0]["thumbnail"]
        .as_str()
        .unwrap()
        .starts_with("data:image/jpeg;base64,/9j/"));

    let body = last_search(&fake);
    assert!(body["knn"].get("query_vector_builder").is_none());
    let sent: Vec<f32> = body["knn"]["query_vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let own = openai_vectors(
        &router(engine(), http_config()),
        "/v1/embeddings?modality=text",
        openai_body(&["ein rotes Fahrrad"], None, None, false),
        1,
    )
    .await;
    assert_eq!(sent.len(), DIMS);
    let drift = sent
        .iter()
        .zip(&own[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        drift < 1e-6,
        "the vector the sidecar makes for the text; drift {drift}"
    );
    assert_eq!(body["knn"]["k"], 24);
    assert_eq!(body["knn"]["num_candidates"], 240);
    assert_eq!(
        body["_source"].as_array().unwrap().len(),
        9,
        "no vector in the hits"
    );
}

#[tokio::test]
async fn image_query_finds_that_picture_first() {
    let sidecar = Sidecar::start().await;
    let (fake, indexed) = indexed_cluster("8.15.0").await;
    let gallery = app(config(&fake, &sidecar)).unwrap();
    // The large JPEG is shrunk before embedding, exactly as at ingest: the same vector comes out.
    for name in ["landscape.jpg", "large-2400x1600.jpg", "image.tiff"] {
        let hits = search(&gallery, json!({"image": image_uri(name)}))
            .await
            .hits();
        assert_eq!(hits[0]["id"], indexed[name].id.as_str(), "{name}");
        assert!(
            hits[0]["score"].as_f64().unwrap() > 0.9999,
            "{name}: {}",
            hits[0]["score"]
        );
        assert_eq!(hits[0]["path"], indexed[name].path.as_str());
    }
}

#[tokio::test]
async fn more_like_this_uses_the_stored_vector_in_each_versions_form() {
    for (version, source) in [
        ("8.15.0", json!(["ml.image_vector"])),
        ("9.0.3", json!(["ml.image_vector"])),
        (
            "8.19.2",
            json!({"includes": ["ml.image_vector"], "exclude_vectors": false}),
        ),
        // 9.2+ leaves vectors out of _source unless asked: the fake does the same.
        (
            "9.2.0",
            json!({"includes": ["ml.image_vector"], "exclude_vectors": false}),
        ),
    ] {
        let mut sidecar = Sidecar::start().await;
        let (fake, indexed) = indexed_cluster(version).await;
        let gallery = app(config(&fake, &sidecar)).unwrap();
        // No re-embedding: it works with the sidecar gone.
        sidecar.stop().await;
        let target = &indexed["portrait.png"];
        let hits = search(&gallery, json!({"like": target.id})).await.hits();
        assert_eq!(hits[0]["id"], target.id.as_str(), "{version}");
        assert!(hits[0]["score"].as_f64().unwrap() > 0.9999);
        assert_eq!(hits.len(), indexed.len());
        let lookup = fake
            .requests()
            .into_iter()
            .find(|r| r.path == format!("/{INDEX}/_search") && r.json().get("query").is_some())
            .expect("a lookup")
            .json();
        assert_eq!(lookup["_source"], source, "{version}");
        assert_eq!(lookup["query"], json!({"ids": {"values": [target.id]}}));

        let missing = search(&gallery, json!({"like": "0000"})).await;
        let (code, message) = missing.error(StatusCode::NOT_FOUND);
        assert_eq!(code, "not_found");
        assert!(message.contains("0000"), "{message}");
    }
}

#[tokio::test]
async fn image_urls_are_fetched_only_from_allowed_hosts() {
    let sidecar = Sidecar::start().await;
    let (fake, indexed) = indexed_cluster("8.15.0").await;
    // A picture server on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let picture = std::fs::read(fixture_images().join("rgba.png")).unwrap();
    let server = tokio::spawn(async move {
        let app = Router::new().route(
            "/rgba.png",
            axum::routing::get(move || async move { picture.clone() }),
        );
        axum::serve(listener, app).await.unwrap();
    });
    let url = format!("http://{address}/rgba.png");

    let off = app(config(&fake, &sidecar)).unwrap();
    let (code, message) = search(&off, json!({"url": url}))
        .await
        .error(StatusCode::FORBIDDEN);
    assert_eq!(code, "url_refused");
    assert!(message.contains("--allow-url-hosts"), "{message}");

    let mut allowed = config(&fake, &sidecar);
    allowed.url_hosts = vec!["127.0.0.1".parse().unwrap()];
    let loopback_refused = app(allowed.clone()).unwrap();
    let (code, _) = search(&loopback_refused, json!({"url": url}))
        .await
        .error(StatusCode::FORBIDDEN);
    assert_eq!(code, "url_refused", "loopback needs --allow-url-private");

    allowed.url_private = true;
    let on = app(allowed.clone()).unwrap();
    let hits = search(&on, json!({"url": url})).await.hits();
    assert_eq!(hits[0]["id"], indexed["rgba.png"].id.as_str());
    let (code, _) = search(&on, json!({"url": "http://example.com/x.png"}))
        .await
        .error(StatusCode::FORBIDDEN);
    assert_eq!(code, "url_refused", "a host not on the list");
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// Filters, pages, duplicates

#[tokio::test]
async fn filters_are_knn_filters_and_narrow_the_hits() {
    let sidecar = Sidecar::start().await;
    let (fake, indexed) = indexed_cluster("8.15.0").await;
    let gallery = app(config(&fake, &sidecar)).unwrap();
    let text = json!("a photo");
    let count = |keep: &dyn Fn(&Indexed) -> bool| indexed.values().filter(|i| keep(i)).count();

    let png = search(
        &gallery,
        json!({"text": text, "filters": {"formats": ["png"]}}),
    )
    .await
    .hits();
    assert_eq!(png.len(), count(&|i| i.format == "png"));
    assert!(png.len() < indexed.len() && !png.is_empty());
    assert!(png.iter().all(|h| h["format"] == "png"));
    assert_eq!(
        last_search(&fake)["knn"]["filter"],
        json!({"bool": {"filter": [{"terms": {"format": ["png"]}}]}})
    );

    let folder = search(
        &gallery,
        json!({"text": text, "filters": {"path_prefix": "photos/2024/"}}),
    )
    .await
    .hits();
    assert_eq!(folder.len(), count(&|i| i.path.starts_with("photos/2024/")));
    assert!(folder
        .iter()
        .all(|h| h["path"].as_str().unwrap().starts_with("photos/2024/")));

    let small = search(
        &gallery,
        json!({"text": text, "filters": {"max_bytes": 2000}}),
    )
    .await
    .hits();
    assert_eq!(small.len(), count(&|i| i.bytes <= 2000));
    let sizes = json!({"min_bytes": 2000, "max_bytes": 50_000});
    let middle = search(&gallery, json!({"text": text, "filters": sizes}))
        .await
        .hits();
    assert_eq!(middle.len(), count(&|i| (2000..=50_000).contains(&i.bytes)));

    let from = FIRST_INGEST_MS + 3 * 86_400_000;
    let to = FIRST_INGEST_MS + 7 * 86_400_000;
    let days = search(
        &gallery,
        json!({"text": text, "filters": {"ingested_from_ms": from, "ingested_to_ms": to}}),
    )
    .await
    .hits();
    assert_eq!(days.len(), count(&|i| (from..=to).contains(&i.ingested_at)));
    assert_eq!(days.len(), 5);
    assert_eq!(
        last_search(&fake)["knn"]["filter"]["bool"]["filter"][0]["range"]["ingested_at"]["format"],
        "epoch_millis"
    );

    let both = search(
        &gallery,
        json!({"text": text, "filters": {"formats": ["png"], "path_prefix": "photos/2023/"}}),
    )
    .await
    .hits();
    assert_eq!(
        both.len(),
        count(&|i| i.format == "png" && i.path.starts_with("photos/2023/"))
    );

    let unknown = search(
        &gallery,
        json!({"text": text, "filters": {"colour": "red"}}),
    )
    .await;
    assert_eq!(unknown.error(StatusCode::BAD_REQUEST).0, "bad_request");
}

#[tokio::test]
async fn pages_continue_the_ranking_and_min_score_cuts_it() {
    let sidecar = Sidecar::start().await;
    let (fake, indexed) = indexed_cluster("8.15.0").await;
    let gallery = app(config(&fake, &sidecar)).unwrap();
    let all = search(&gallery, json!({"text": "sky", "size": 50}))
        .await
        .hits();
    assert_eq!(all.len(), indexed.len());

    let mut seen = Vec::new();
    let mut offset = Value::from(0);
    let mut pages = 0;
    while let Some(at) = offset.as_u64() {
        let answer = search(&gallery, json!({"text": "sky", "size": 8, "offset": at})).await;
        seen.extend(ids(&answer.hits()));
        offset = answer.json()["next_offset"].clone();
        pages += 1;
        assert!(pages <= 4, "the pages must end");
    }
    assert_eq!(seen, ids(&all), "pages of 8 are the one ranked list");
    assert_eq!(pages, indexed.len().div_ceil(8));
    let body = last_search(&fake);
    assert_eq!(
        (body["from"].clone(), body["knn"]["k"].clone()),
        (json!(16), json!(24))
    );

    let cut = search(
        &gallery,
        json!({"image": image_uri("palette.png"), "min_score": 0.9999}),
    )
    .await;
    let hits = cut.hits();
    assert_eq!(ids(&hits), vec![indexed["palette.png"].id.clone()]);
    assert_eq!(cut.json()["below_min_score"], indexed.len() - 1);
    assert_eq!(cut.json()["next_offset"], Value::Null);

    for bad in [
        json!({"text": "x", "size": 0}),
        json!({"text": "x", "size": 201}),
        json!({"text": "x", "offset": 9990, "size": 24}),
        json!({"text": "x", "min_score": -1}),
    ] {
        let answer = search(&gallery, bad.clone()).await;
        assert_eq!(
            answer.error(StatusCode::BAD_REQUEST).0,
            "bad_request",
            "{bad}"
        );
    }
}

#[tokio::test]
async fn exact_duplicates_are_one_tile_with_a_count() {
    let sidecar = Sidecar::start().await;
    let (fake, indexed) = indexed_cluster("8.15.0").await;
    // The same file in a second place (an alias over two indices would give this).
    let original = &indexed["gray.png"];
    let mut copy = fake.docs(INDEX)[&original.id].clone();
    copy["path"] = json!("backup/gray.png");
    fake.seed_doc(INDEX, "copy-of-gray", copy);
    let gallery = app(config(&fake, &sidecar)).unwrap();

    let hits = search(&gallery, json!({"image": image_uri("gray.png")}))
        .await
        .hits();
    assert_eq!(hits.len(), indexed.len(), "21 documents, 20 tiles");
    assert_eq!(hits[0]["content_hash"], original.id.as_str());
    assert_eq!(hits[0]["copies"], 2);
    let other = hits[0]["other_paths"].as_array().unwrap();
    assert_eq!(other.len(), 1);
    assert!(other[0] == "backup/gray.png" || other[0] == original.path.as_str());
    assert!(
        hits[1..].iter().all(|h| h["copies"] == 1),
        "similar is not duplicate"
    );
}

// ---------------------------------------------------------------------------------------------
// Error states

#[tokio::test]
async fn cluster_unreachable_is_a_state_not_a_blank_page() {
    let sidecar = Sidecar::start().await;
    let mut config = GalleryConfig::new(&closed_port().await, INDEX, &sidecar.url);
    config.sidecar_api_key = Some(API_KEY.to_owned());
    let gallery = app(config).unwrap();
    let (code, message) = search(&gallery, json!({"text": "cat"}))
        .await
        .error(StatusCode::BAD_GATEWAY);
    assert_eq!(code, "cluster_unreachable");
    assert!(message.contains("unreachable"), "{message}");
    let status = request(&gallery, get_page("/api/status")).await;
    assert_eq!(status.status, StatusCode::OK);
    let body = status.json();
    assert_eq!(body["state"], "cluster_unreachable");
    assert_eq!(body["cluster"]["ok"], false);
    assert_eq!(body["sidecar"]["ok"], true, "the sidecar is still reported");
}

#[tokio::test]
async fn index_missing_says_to_run_setup() {
    let sidecar = Sidecar::start().await;
    let fake = FakeEs::start("9.1.0").await;
    let gallery = app(config(&fake, &sidecar)).unwrap();
    for query in [json!({"text": "cat"}), json!({"like": "abc"})] {
        let (code, message) = search(&gallery, query).await.error(StatusCode::NOT_FOUND);
        assert_eq!(code, "index_missing");
        assert!(
            message.contains("sightline setup --index photos"),
            "{message}"
        );
    }
    let body = request(&gallery, get_page("/api/status")).await.json();
    assert_eq!(body["state"], "index_missing");
    assert_eq!(body["cluster"]["version"], "9.1.0");
}

#[tokio::test]
async fn sidecar_not_ready_is_a_503_state() {
    let mut sidecar = Sidecar::start().await;
    let (fake, _) = indexed_cluster("8.15.0").await;
    let gallery = app(config(&fake, &sidecar)).unwrap();
    assert_eq!(
        search(&gallery, json!({"text": "cat"})).await.status,
        StatusCode::OK
    );
    sidecar.stop().await;
    let (code, message) = search(&gallery, json!({"text": "cat"}))
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "sidecar_not_ready");
    assert!(message.contains(&sidecar.url), "{message}");
    let body = request(&gallery, get_page("/api/status")).await.json();
    assert_eq!(body["state"], "sidecar_not_ready");
    assert_eq!(body["index"]["ok"], true);

    // A wrong key is not "not ready": the operator must fix it.
    let sidecar = Sidecar::start().await;
    let mut wrong = config(&fake, &sidecar);
    wrong.sidecar_api_key = Some("wrong".into());
    let (code, message) = search(&app(wrong).unwrap(), json!({"text": "cat"}))
        .await
        .error(StatusCode::BAD_GATEWAY);
    assert_eq!(code, "sidecar_error");
    assert!(message.contains("401"), "{message}");
}

#[tokio::test]
async fn a_different_model_than_the_index_is_refused() {
    let sidecar = Sidecar::start().await;
    let (fake, _) = indexed_cluster("8.15.0").await;
    let own = sidecar_fingerprint().await;
    fake.seed_index(
        INDEX,
        json!({"_meta": {"model_fingerprint": "sha256:another-model"},
               "properties": {"ml": {"properties": {"image_vector": {"type": "dense_vector", "dims": DIMS}}}}}),
    );
    let gallery = app(config(&fake, &sidecar)).unwrap();
    let (code, message) = search(&gallery, json!({"text": "cat"}))
        .await
        .error(StatusCode::CONFLICT);
    assert_eq!(code, "model_mismatch");
    assert!(
        message.contains("sha256:another-model") && message.contains(&own),
        "{message}"
    );
    assert_eq!(
        request(&gallery, get_page("/api/status")).await.json()["state"],
        "model_mismatch"
    );

    fake.seed_index(
        INDEX,
        json!({"properties": {"ml": {"properties": {"image_vector": {"type": "dense_vector", "dims": 768}}}}}),
    );
    let (code, message) = search(&gallery, json!({"text": "cat"}))
        .await
        .error(StatusCode::CONFLICT);
    assert_eq!(code, "model_mismatch");
    assert!(
        message.contains("768") && message.contains("512"),
        "{message}"
    );
    assert_eq!(
        fake.count("POST", "/photos/_search"),
        0,
        "nothing is searched with a vector of the wrong model"
    );
}

// ---------------------------------------------------------------------------------------------
// Uploads

#[tokio::test]
async fn uploads_are_limited_and_validated_with_clear_errors() {
    let sidecar = Sidecar::start().await;
    let (fake, _) = indexed_cluster("8.15.0").await;
    let mut small = config(&fake, &sidecar);
    small.max_upload = 4096;
    let gallery = app(small).unwrap();

    let big = search(&gallery, json!({"image": image_uri("landscape.jpg")})).await;
    let (code, message) = big.error(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code, "too_large");
    assert!(message.contains("4096"), "{message}");
    // A body past the limit is refused while it streams in.
    let huge = vec![b' '; 1 << 20];
    assert_eq!(
        request(&gallery, post_bytes(huge))
            .await
            .error(StatusCode::PAYLOAD_TOO_LARGE)
            .0,
        "too_large"
    );
    let fits = search(&gallery, json!({"image": image_uri("tiny-1x1.png")})).await;
    assert_eq!(fits.status, StatusCode::OK);

    let text_file = format!("data:image/png;base64,{}", BASE64.encode("just some text"));
    let (code, message) = search(&gallery, json!({"image": text_file}))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(code, "bad_request");
    assert!(message.contains("not a usable image"), "{message}");
    let broken = std::fs::read_dir(fixture_images().join("broken")).unwrap();
    for entry in broken.flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        if bytes.len() > 4096 {
            continue;
        }
        let uri = format!("data:image/png;base64,{}", BASE64.encode(&bytes));
        let answer = search(&gallery, json!({"image": uri})).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{}",
            entry.path().display()
        );
    }
    for (body, needle) in [
        (json!({"image": "https://example.com/x.png"}), "data URI"),
        (json!({"image": "data:image/png,plain"}), "base64"),
        (json!({"image": "data:image/png;base64,@@@"}), "base64"),
        (json!({"text": "   "}), "empty"),
        (json!({"text": "x".repeat(1001)}), "longer"),
        (json!({"text": "cat", "like": "abc"}), "exactly one"),
        (json!({}), "exactly one"),
    ] {
        let (code, message) = search(&gallery, body.clone())
            .await
            .error(StatusCode::BAD_REQUEST);
        assert_eq!(code, "bad_request");
        assert!(message.contains(needle), "{body}: {message}");
    }
    let not_json = request(&gallery, post_bytes(b"{text".to_vec())).await;
    assert_eq!(not_json.error(StatusCode::BAD_REQUEST).0, "bad_request");
}

// ---------------------------------------------------------------------------------------------
// The page, headers and auth

#[tokio::test]
async fn the_page_is_compiled_in_with_strict_headers_and_no_outside_references() {
    let sidecar = Sidecar::start().await;
    let fake = FakeEs::start("8.15.0").await;
    let gallery = app(config(&fake, &sidecar)).unwrap();
    for (path, content_type, needle) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script src=\"/app.js\" defer></script>",
        ),
        ("/app.js", "text/javascript; charset=utf-8", "/api/search"),
        ("/style.css", "text/css; charset=utf-8", ".grid"),
        ("/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let answer = request(&gallery, get_page(path)).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.headers[header::CONTENT_TYPE], content_type, "{path}");
        assert_eq!(answer.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let csp = answer.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        let text = String::from_utf8(answer.body).unwrap();
        assert!(text.contains(needle), "{path}");
        if path != "/favicon.svg" {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{path} refers outside"
            );
            assert!(
                !text.contains(" style=\""),
                "{path}: inline styles break the CSP"
            );
        }
    }
    let missing = request(&gallery, get_page("/nope")).await;
    assert_eq!(missing.error(StatusCode::NOT_FOUND).0, "not_found");
    let status = request(&gallery, get_page("/api/status")).await;
    assert_eq!(status.headers[header::CACHE_CONTROL], "no-store");
}

fn with_auth(mut request: Request<Body>, value: &str) -> Request<Body> {
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, value.parse().unwrap());
    request
}

#[tokio::test]
async fn auth_basic_guards_everything_and_token_guards_the_api() {
    let sidecar = Sidecar::start().await;
    let (fake, _) = indexed_cluster("8.15.0").await;
    let mut basic = config(&fake, &sidecar);
    basic.auth = Some("basic:ann:s3cret".parse::<GalleryAuth>().unwrap());
    let gallery = app(basic).unwrap();
    let refused = request(&gallery, get_page("/")).await;
    assert_eq!(refused.error(StatusCode::UNAUTHORIZED).0, "unauthorized");
    assert!(refused.headers[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Basic "));
    let wrong = format!("Basic {}", BASE64.encode("ann:guess"));
    assert_eq!(
        request(&gallery, with_auth(get_page("/"), &wrong))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let right = format!("Basic {}", BASE64.encode("ann:s3cret"));
    assert_eq!(
        request(&gallery, with_auth(get_page("/"), &right))
            .await
            .status,
        StatusCode::OK
    );
    let searched = request(
        &gallery,
        with_auth(post_json(&json!({"text": "cat"})), &right),
    )
    .await;
    assert_eq!(searched.status, StatusCode::OK);

    let mut token = config(&fake, &sidecar);
    token.auth = Some("token:t0ken".parse::<GalleryAuth>().unwrap());
    let gallery = app(token).unwrap();
    assert_eq!(
        request(&gallery, get_page("/")).await.status,
        StatusCode::OK,
        "the page asks for the token"
    );
    let refused = request(&gallery, post_json(&json!({"text": "cat"}))).await;
    assert_eq!(refused.error(StatusCode::UNAUTHORIZED).0, "unauthorized");
    assert!(
        refused.headers.get(header::WWW_AUTHENTICATE).is_none(),
        "no browser prompt"
    );
    assert_eq!(
        request(&gallery, with_auth(get_page("/api/status"), "Bearer nope"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let searched = request(
        &gallery,
        with_auth(post_json(&json!({"text": "cat"})), "Bearer t0ken"),
    )
    .await;
    assert_eq!(searched.status, StatusCode::OK);
}

#[tokio::test]
async fn the_subcommand_refuses_bad_flags_before_listening() {
    let run = crate::fake_es::sightline(&[
        "gallery",
        "--sidecar-url",
        "http://127.0.0.1:1",
        "--auth",
        "secret",
    ])
    .await;
    run.expect_code(2);
    assert!(run.stderr.contains("basic:USER:PASSWORD"), "{}", run.stderr);
    let run = crate::fake_es::sightline(&["gallery", "--help"]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("127.0.0.1:8090"), "{}", run.stdout);
}
