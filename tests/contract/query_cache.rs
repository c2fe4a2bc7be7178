//! The query cache of `sightline serve` (issue 13 §4), on a process of its own so its `/metrics`
//! (`sightline_query_cache_total`, and `sightline_inferred_total`: what reached the model) count
//! only this test's requests. A cached answer is bit for bit the computed one; each model has its
//! own entries; the bounds evict; `--query-cache 0` sends every text to the model.

use axum::http::StatusCode;
use serde_json::json;

use crate::child::{sample_value, ChildServer};
use crate::common::*;
use crate::multi_model::{negated_bundle, NEGATED};

const TEXT: &str = "A dog in the snow";
const OTHER: &str = "DOG Dog dog";
/// Texts that reached a model, over every model served.
fn texts_inferred(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(r#"sightline_inferred_total{modality="text","#))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// POSTs `inputs` to `model`, OpenAI dialect, base64 (exact bits) or floats.
async fn post(server: &ChildServer, model: &str, inputs: &[&str]) -> Reply {
    let response = reqwest::Client::new()
        .post(server.url("/v1/embeddings"))
        .bearer_auth(API_KEY)
        .header("content-type", OPENAI_CONTENT_TYPE)
        .body(json!({"input": inputs, "model": model, "encoding_format": "base64"}).to_string())
        .send()
        .await
        .expect("the server answers");
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response.bytes().await.expect("the body");
    let reply = Reply {
        status,
        headers,
        body,
    };
    assert_suite_rules("POST /v1/embeddings", &reply);
    reply
}

/// The vectors of a 200, as their little-endian bytes: equal bytes are equal bits.
fn packed(reply: &Reply) -> Vec<String> {
    reply.assert_status(StatusCode::OK);
    reply.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| d["embedding"].as_str().expect("base64").to_owned())
        .collect()
}

fn vector(b64: &str) -> Vec<f32> {
    decode_packed_f32(b64).expect("packed f32")
}

fn lookups(metrics: &str, model: &str, result: &str) -> f64 {
    sample_value(
        metrics,
        &format!(r#"sightline_query_cache_total{{model="{model}",result="{result}"}}"#),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_text_is_answered_from_the_cache_bit_for_bit() {
    let dir = negated_bundle();
    let server = ChildServer::start(&["--model-dir", dir.path().to_str().unwrap()]);
    let computed = packed(&post(&server, "tiny-clip", &[TEXT]).await);
    assert_golden(&vector(&computed[0]), &golden_text(TEXT), "computed");
    let cached = packed(&post(&server, "tiny-clip", &[TEXT]).await);
    assert_eq!(cached, computed, "the cached answer is the computed one");
    let metrics = server.metrics().await;
    assert_eq!(lookups(&metrics, "tiny-clip", "miss"), 1.0, "{metrics}");
    assert_eq!(lookups(&metrics, "tiny-clip", "hit"), 1.0, "{metrics}");
    assert_eq!(texts_inferred(&metrics), 1.0, "one run only");

    // Another model's entry is its own: the same text misses there and gets that model's vector.
    let other_model = packed(&post(&server, NEGATED, &[TEXT]).await);
    let negated: Vec<f32> = vector(&computed[0]).iter().map(|x| -x).collect();
    assert_golden(&vector(&other_model[0]), &negated, NEGATED);
    assert_eq!(packed(&post(&server, NEGATED, &[TEXT]).await), other_model);

    // A request mixing cached and new inputs keeps its order; the new text is stored.
    let image = data_uri("landscape.jpg");
    let mixed = packed(&post(&server, "tiny-clip", &[OTHER, TEXT, &image]).await);
    assert_eq!(mixed[1], computed[0]);
    assert_golden(&vector(&mixed[0]), &golden_text(OTHER), "new text");
    assert_golden(&vector(&mixed[2]), &golden_image("landscape.jpg"), "image");
    assert_eq!(
        packed(&post(&server, "tiny-clip", &[OTHER]).await)[0],
        mixed[0]
    );
    let metrics = server.metrics().await;
    assert_eq!(lookups(&metrics, "tiny-clip", "hit"), 3.0, "{metrics}");
    assert_eq!(lookups(&metrics, "tiny-clip", "miss"), 2.0, "{metrics}");
    assert_eq!(lookups(&metrics, NEGATED, "hit"), 1.0, "{metrics}");
    assert_eq!(lookups(&metrics, NEGATED, "miss"), 1.0, "{metrics}");
    assert_eq!(texts_inferred(&metrics), 3.0, "{metrics}");

    // A failing input is named by its place in the whole request, not among the inputs the
    // cache could not answer.
    let reply = post(
        &server,
        "tiny-clip",
        &[TEXT, &data_uri("broken/truncated.jpg")],
    )
    .await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    let (message, _) = reply.openai_error();
    assert!(message.starts_with("input[1]: "), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_bound_evicts_and_zero_turns_the_cache_off() {
    // Room for one vector: the second text evicts the first.
    let server = ChildServer::start(&["--query-cache", "1"]);
    for text in [TEXT, OTHER, TEXT, TEXT] {
        packed(&post(&server, "tiny-clip", &[text]).await);
    }
    let metrics = server.metrics().await;
    assert_eq!(lookups(&metrics, "tiny-clip", "miss"), 3.0, "{metrics}");
    assert_eq!(lookups(&metrics, "tiny-clip", "hit"), 1.0, "{metrics}");
    assert_eq!(texts_inferred(&metrics), 3.0, "{metrics}");
    drop(server);

    // A byte bound below one entry keeps nothing.
    let server = ChildServer::start(&["--query-cache-bytes", "1KiB"]);
    for _ in 0..2 {
        packed(&post(&server, "tiny-clip", &[TEXT]).await);
    }
    let metrics = server.metrics().await;
    assert_eq!(lookups(&metrics, "tiny-clip", "miss"), 2.0, "{metrics}");
    assert_eq!(texts_inferred(&metrics), 2.0, "{metrics}");
    drop(server);

    // Off: every text reaches the model, and nothing is looked up.
    let server = ChildServer::start(&["--query-cache", "0"]);
    for _ in 0..3 {
        let v = packed(&post(&server, "tiny-clip", &[TEXT]).await);
        assert_golden(&vector(&v[0]), &golden_text(TEXT), "uncached");
    }
    let metrics = server.metrics().await;
    assert_eq!(texts_inferred(&metrics), 3.0, "{metrics}");
    assert!(
        !metrics.contains("sightline_query_cache_total{"),
        "{metrics}"
    );
}
