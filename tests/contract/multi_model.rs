//! Several models in one server (issue 13 §2): each request's `model` (the OpenAI body's field,
//! or `?model=` in the URL, the only way for the HF dialect) chooses the bundle; no name gets the
//! first; an unknown name is a 400 listing the names served; `/info` lists every model with its
//! fingerprint; `/ready` and `/metrics` cover each.
//!
//! The second model is the tiny fixture's token-state form renamed, with its dense projection
//! negated: its text vectors are exactly the first model's negated, so a vector shows which model
//! answered, and its fingerprint is its own.

use std::path::Path;
use std::sync::OnceLock;

use axum::http::StatusCode;
use serde_json::{json, Value};

use sightline::engine::Engine;
use sightline::http::{router, Models};

use crate::child::ChildServer;
use crate::common::*;

const TEXT: &str = "A dog in the snow";
const FIRST: &str = "tiny-clip";
pub(crate) const NEGATED: &str = "tiny-clip-negated";

/// A copy of `tiny-clip-tokens` named [`NEGATED`] whose `dense.safetensors` weights have their
/// sign flipped (every tensor is F32: one bit per value, after the 8-byte length and the header).
pub(crate) fn negated_bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    let source = fixture("tiny-clip-tokens");
    for entry in std::fs::read_dir(&source).expect("the fixture") {
        let path = entry.expect("an entry").path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).expect("copy");
    }
    let manifest_path = dir.path().join("sightline.json");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["name"] = NEGATED.into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let dense_path = dir.path().join("dense.safetensors");
    let mut dense = std::fs::read(&dense_path).unwrap();
    let header_len = u64::from_le_bytes(dense[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&dense[8..8 + header_len]).unwrap();
    assert!(
        header
            .as_object()
            .unwrap()
            .values()
            .all(|t| t.get("dtype").is_none_or(|d| d == "F32")),
        "{header}"
    );
    for value in dense[8 + header_len..].chunks_exact_mut(4) {
        value[3] ^= 0x80;
    }
    std::fs::write(&dense_path, dense).unwrap();
    dir
}

/// The negated model's engine, shared by this binary's in-process tests.
fn negated_engine() -> Engine {
    static ENGINE: OnceLock<(tempfile::TempDir, Engine)> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let dir = negated_bundle();
            let engine = Engine::start(dir.path(), test_options()).expect("the negated bundle");
            (dir, engine)
        })
        .1
        .clone()
}

/// The router serving the tiny fixture first and the negated model second.
pub(crate) fn two_models() -> axum::Router {
    let models = Models::new(vec![engine(), negated_engine()]).expect("two distinct names");
    router(models, http_config())
}

fn openai_named(inputs: &[&str], model: Option<&str>) -> String {
    let mut body = json!({ "input": inputs });
    if let Some(model) = model {
        body["model"] = model.into();
    }
    body.to_string()
}

fn negated(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| -x).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[tokio::test]
async fn the_model_field_chooses_the_bundle_in_every_dialect() {
    let app = two_models();
    let golden = golden_text(TEXT);
    // The negated model alone, as a one-model server answers.
    let alone = openai_vectors(
        &router(negated_engine(), http_config()),
        "/v1/embeddings",
        openai_named(&[TEXT], None),
        1,
    )
    .await
    .remove(0);
    assert!(cosine(&alone, &golden) <= -GOLDEN_MIN_COSINE, "negated");

    let first = openai_vectors(
        &app,
        "/v1/embeddings",
        openai_named(&[TEXT], Some(FIRST)),
        1,
    )
    .await;
    assert_golden(&first[0], &golden, "model tiny-clip");
    let reply = send(
        &app,
        openai_request("/v1/embeddings", openai_named(&[TEXT], Some(NEGATED))),
    )
    .await;
    assert_eq!(
        bits(&openai_reply_vectors(&reply, 1)[0]),
        bits(&alone),
        "model {NEGATED}"
    );
    assert_eq!(reply.json()["model"], NEGATED, "the name is echoed");
    // No name: the first model.
    let v = openai_vectors(&app, "/v1/embeddings", openai_named(&[TEXT], None), 1).await;
    assert_golden(&v[0], &golden, "no model");
    // The custom service's body carries the endpoint's model too.
    let body = format!(r#"{{"input": ["{TEXT}"], "model": "{NEGATED}", "input_type": "query"}}"#);
    let reply = send(&app, custom_request(body)).await;
    assert_eq!(
        bits(&es_custom_parse(&reply.body).unwrap()[0]),
        bits(&alone)
    );

    // The HF dialect names its model in the URL.
    for (uri, want) in [
        (format!("/embed?model={NEGATED}"), alone.clone()),
        (
            format!("/hf/embed?modality=text&model={NEGATED}"),
            alone.clone(),
        ),
        ("/embed".to_owned(), negated(&alone)),
        (format!("/embed?model={FIRST}"), negated(&alone)),
    ] {
        let v = hf_vectors(&app, &uri, hf_body(&[TEXT]), 1).await;
        assert_golden(&v[0], &want, &uri);
    }
    // The URL may name it for the OpenAI dialect as well; the same name twice is fine.
    let uri = format!("/v1/embeddings?model={NEGATED}");
    for model in [None, Some(NEGATED)] {
        let v = openai_vectors(&app, &uri, openai_named(&[TEXT], model), 1).await;
        assert_eq!(bits(&v[0]), bits(&alone), "{uri} with {model:?}");
    }
}

#[tokio::test]
async fn an_unknown_model_is_a_400_listing_the_names_served() {
    let app = two_models();
    let listing = format!("this server serves `{FIRST}`, `{NEGATED}`");
    // What every other test sends: a name no fixture has.
    let reply = send(
        &app,
        openai_request("/v1/embeddings", openai_body(&[TEXT], None, None, false)),
    )
    .await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    let (message, kind) = reply.openai_error();
    assert_eq!(message, format!("unknown model `{MODEL_ID}`: {listing}"));
    assert_eq!(kind, "invalid_request_error");
    let reply = send(&app, hf_request("/embed?model=other", hf_body(&[TEXT]))).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.hf_error(),
        format!("unknown model `other`: {listing}")
    );
    // The URL and the body must not disagree.
    let reply = send(
        &app,
        openai_request(
            &format!("/v1/embeddings?model={FIRST}"),
            openai_named(&[TEXT], Some(NEGATED)),
        ),
    )
    .await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    let (message, _) = reply.openai_error();
    assert!(
        message.contains(&format!("`?model={FIRST}`")) && message.contains(NEGATED),
        "{message}"
    );

    // With one model, every name is answered by it, as before several could be served.
    let v = openai_vectors(
        &router(negated_engine(), http_config()),
        "/v1/embeddings",
        openai_body(&[TEXT], None, None, false),
        1,
    )
    .await;
    assert_golden(&v[0], &negated(&golden_text(TEXT)), "one model, any name");
}

#[tokio::test]
async fn info_keeps_the_first_models_shape_and_lists_every_model() {
    let app = two_models();
    let one = send(
        &router(engine(), http_config()),
        get("/info", Some(API_KEY)),
    )
    .await;
    let info = send(&app, get("/info", Some(API_KEY))).await;
    info.assert_status(StatusCode::OK);
    let (one, info) = (one.json(), info.json());
    // The top level is what a one-model server answers, then `models`.
    let mut top = info.as_object().unwrap().clone();
    let models = top.remove("models").expect("a models list");
    let mut one = one.as_object().unwrap().clone();
    let only = one
        .remove("models")
        .expect("a one-model server lists its model");
    assert_eq!(only.as_array().map(Vec::len), Some(1));
    assert_eq!(only[0], models[0]);
    assert_eq!(top, one, "the top level is the first model's");
    assert_eq!(
        top.keys().next_back().map(String::as_str),
        Some("fingerprint")
    );
    let want: Vec<Value> = [engine(), negated_engine()]
        .iter()
        .map(|e| {
            let i = e.info();
            json!({"model": i.name, "dimensions": 512, "normalized": true,
                   "similarity": "dot_product", "modalities": ["image", "text"],
                   "max_seq_len": 128, "fingerprint": i.fingerprint})
        })
        .collect();
    assert_eq!(models, Value::Array(want));
    assert_ne!(
        models[0]["fingerprint"], models[1]["fingerprint"],
        "each model its own fingerprint"
    );
    // The sidecar client reads the first model, as from any one-model server.
    let first: sightline::engine::ModelInfo = serde_json::from_value(info.clone()).unwrap();
    assert_eq!(first.name, FIRST);
    let all: sightline::engine::ServerInfo = serde_json::from_value(info).unwrap();
    assert_eq!(all.models[1].name, NEGATED);
}

#[tokio::test]
async fn ready_and_metrics_cover_every_model() {
    let app = two_models();
    let ready = send(&app, get("/ready", None)).await;
    ready.assert_status(StatusCode::OK);
    assert_eq!(ready.json(), json!({"status": "ready"}));
    openai_vectors(
        &app,
        "/v1/embeddings",
        openai_named(&[TEXT, &data_uri("landscape.jpg")], Some(NEGATED)),
        2,
    )
    .await;
    let metrics = send(&app, get("/metrics", Some(API_KEY))).await.text();
    for modality in ["image", "text"] {
        let inputs =
            format!(r#"sightline_inputs_total{{modality="{modality}",model="{NEGATED}"}}"#);
        assert!(
            crate::child::sample_value(&metrics, &inputs) >= 1.0,
            "{inputs} in:\n{metrics}"
        );
        // The engine's own metrics name the model too: the negated model ran these inputs.
        for name in ["sightline_inferred_total", "sightline_batch_items_count"] {
            let series = format!(r#"{name}{{modality="{modality}",model="{NEGATED}"}}"#);
            assert!(
                crate::child::sample_value(&metrics, &series) >= 1.0,
                "{series} in:\n{metrics}"
            );
        }
        let inference = format!(
            r#"sightline_stage_seconds_count{{modality="{modality}",model="{NEGATED}",stage="inference"}}"#
        );
        assert!(
            crate::child::sample_value(&metrics, &inference) >= 1.0,
            "{inference} in:\n{metrics}"
        );
        for model in [FIRST, NEGATED] {
            let depth =
                format!(r#"sightline_queue_depth{{modality="{modality}",model="{model}"}}"#);
            assert!(metrics.contains(&depth), "{depth} in:\n{metrics}");
        }
    }
}

#[test]
fn models_need_distinct_names() {
    let e = Models::new(vec![engine(), negated_engine(), engine()])
        .err()
        .expect("a name twice is refused")
        .to_string();
    assert!(e.contains("two model bundles are named `tiny-clip`"), "{e}");
    assert!(Models::new(Vec::new()).is_err());
}

/// The binary: `--model-dir` twice serves both; `embed`, which runs one model, refuses two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_model_dir_more_than_once() {
    let dir = negated_bundle();
    let second = dir.path().to_str().expect("a UTF-8 path");
    let server = ChildServer::start(&["--model-dir", second]);
    assert!(
        server
            .log()
            .contains(&format!("models=\"{FIRST},{NEGATED}\"")),
        "{}",
        server.log()
    );
    let client = reqwest::Client::new();
    let post = |model: &'static str| {
        client
            .post(server.url("/v1/embeddings"))
            .bearer_auth(API_KEY)
            .header("content-type", OPENAI_CONTENT_TYPE)
            .body(openai_named(&[TEXT], Some(model)))
            .send()
    };
    for (model, want) in [
        (FIRST, golden_text(TEXT)),
        (NEGATED, negated(&golden_text(TEXT))),
    ] {
        let response = post(model).await.expect("an answer");
        assert_eq!(response.status(), StatusCode::OK, "{model}");
        let body = response.bytes().await.unwrap();
        assert_golden(&es_new_openai_parse(&body).unwrap()[0], &want, model);
    }
    let response = post("clip").await.expect("an answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let info = sidecar_info(&server.url("")).await;
    let names: Vec<&str> = info["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, [FIRST, NEGATED]);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sightline"))
        .arg("embed")
        .args([Path::new("--model-dir"), &fixture("tiny-clip")])
        .args([Path::new("--model-dir"), dir.path()])
        .args(["--text", TEXT])
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`--model-dir` is given 2 times: only `serve` serves several models"),
        "{stderr}"
    );
}
