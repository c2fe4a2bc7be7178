//! The request parsers of each dialect, through the real router (`sightline::http::router`) on an
//! in-process engine with the tiny test bundle: any body gives a 200 or a 400 (never a 413, never
//! a 5xx), and every answer is JSON in its dialect's shape. The first byte picks the route.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use sightline::engine::{Engine, EngineOptions};
use sightline::http::{router, HttpConfig};
use tower::ServiceExt;

const ROUTES: [&str; 4] = [
    "/v1/embeddings",
    "/embed",
    "/v1/embeddings?modality=image",
    "/hf/embed?modality=text",
];

fn app() -> &'static (tokio::runtime::Runtime, Router) {
    static APP: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    APP.get_or_init(|| {
        let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-clip");
        let opts = EngineOptions {
            threads: 1,
            decode_workers: 1,
            batch_wait: std::time::Duration::ZERO,
            decode: sightline::engine::DecodeOptions {
                max_pixels: 16_000_000,
                ..Default::default()
            },
            ..EngineOptions::default()
        };
        let engine = Engine::start(std::path::Path::new(bundle), opts)
            .expect("the tiny bundle loads (set ORT_DYLIB_PATH if ONNX Runtime is not found)");
        let cfg = HttpConfig {
            api_key: None,
            max_body: 1 << 20,
            max_inputs: 64,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (rt, router(engine, cfg))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let uri = ROUTES[usize::from(selector) % ROUTES.len()];
    let openai = uri.starts_with("/v1/");
    let (rt, app) = app();
    let request = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.to_vec()))
        .expect("request");
    let (status, bytes) = rt.block_on(async {
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, bytes)
    });
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
        "{uri}: {status} {text}"
    );
    let json: serde_json::Value = serde_json::from_slice(&bytes).expect("every answer is JSON");
    if status == StatusCode::BAD_REQUEST {
        let message = if openai {
            json["error"]["message"].as_str()
        } else {
            json["error"].as_str()
        };
        assert!(message.is_some_and(|m| !m.is_empty()), "{uri}: {text}");
        return;
    }
    let vectors: Vec<&serde_json::Value> = if openai {
        json["data"]
            .as_array()
            .expect("`data`")
            .iter()
            .map(|d| &d["embedding"])
            .collect()
    } else {
        json.as_array()
            .expect("an array of vectors")
            .iter()
            .collect()
    };
    assert!(!vectors.is_empty(), "{uri}: 200 without vectors");
    for v in vectors {
        let floats: Vec<f32> = match v {
            // `encoding_format: base64`: packed little-endian f32.
            serde_json::Value::String(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("strict base64")
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            other => other
                .as_array()
                .expect("a float array")
                .iter()
                .map(|x| x.as_f64().expect("a number") as f32)
                .collect(),
        };
        assert_eq!(floats.len(), 512, "{uri}");
        assert!(floats.iter().all(|x| x.is_finite()), "{uri}");
    }
});
