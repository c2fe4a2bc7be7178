//! Operations routes and authentication: `/health`, `/ready`, `/info`, `/metrics`, and the
//! Bearer key ES sends on every call (es-contract §1.2, §2, §11 item 3).

use axum::http::{header, StatusCode};
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn health_and_ready_answer_without_a_key() {
    // Orchestrators probe these without credentials.
    let app = app();
    let health = send(&app, get("/health", None)).await;
    health.assert_status(StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
    let ready = send(&app, get("/ready", None)).await;
    ready.assert_status(StatusCode::OK);
    assert_eq!(ready.json()["status"], "ready");
}

#[tokio::test]
async fn info_tells_what_an_index_must_match() {
    let app = app();
    assert_eq!(
        send(&app, get("/info", None)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let reply = send(&app, get("/info", Some(API_KEY))).await;
    reply.assert_status(StatusCode::OK);
    let info = reply.json();
    assert_eq!(info["model"], "tiny-clip");
    assert_eq!(info["dimensions"], 512);
    assert_eq!(info["normalized"], true);
    // es-contract §8: normalised vectors are what `dot_product` needs.
    assert_eq!(info["similarity"], "dot_product");
    assert_eq!(info["max_seq_len"], 128);
    assert_eq!(info["max_inputs"], 2048);
    assert_eq!(info["max_body_bytes"], 64 << 20);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let modalities: Vec<&str> = info["modalities"]
        .as_array()
        .expect("modalities")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        modalities.contains(&"image") && modalities.contains(&"text"),
        "{modalities:?}"
    );
    let fingerprint = info["fingerprint"].as_str().expect("fingerprint");
    let hex = fingerprint
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("{fingerprint}"));
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fingerprint}"
    );

    // The fingerprint detects an index/query model mismatch: stable for one bundle across
    // restarts, different for another bundle.
    let again = start_engine(test_options());
    assert_eq!(again.info().fingerprint, fingerprint);
    let other = sightline::engine::Engine::start(&fixture("tiny-clip-tokens"), test_options())
        .expect("second bundle");
    assert_ne!(other.info().fingerprint, fingerprint);
}

/// The value of the first sample line of `name` whose labels include every pair in `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|l| line.contains(l)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = app();
    let scrape = || async {
        let reply = send(&app, get("/metrics", Some(API_KEY))).await;
        reply.assert_status(StatusCode::OK);
        let content_type = reply.headers[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        reply.text()
    };
    let ok = ["route=\"/v1/embeddings\"", "status=\"200\""];
    let bad = ["route=\"/embed\"", "status=\"400\""];
    let before = scrape().await;
    let ok_before = sample(&before, "sightline_requests_total", &ok).unwrap_or(0.0);
    let bad_before = sample(&before, "sightline_requests_total", &bad).unwrap_or(0.0);

    let inputs = [data_uri("tiny-1x1.png")];
    openai_vectors(
        &app,
        "/v1/embeddings",
        openai_body(&[&inputs[0], "how big"], None, None, false),
        2,
    )
    .await;
    send(&app, hf_request("/embed", r#"{"inputs":[]}"#))
        .await
        .assert_status(StatusCode::BAD_REQUEST);

    let after = scrape().await;
    let ok_after =
        sample(&after, "sightline_requests_total", &ok).expect("a 200 counter for /v1/embeddings");
    let bad_after =
        sample(&after, "sightline_requests_total", &bad).expect("a 400 counter for /embed");
    // Other tests run concurrently in this binary, so counters may grow by more than ours.
    assert!(ok_after >= ok_before + 1.0, "{ok_before} → {ok_after}");
    assert!(bad_after >= bad_before + 1.0, "{bad_before} → {bad_after}");
    for modality in ["image", "text"] {
        let label = format!("modality=\"{modality}\"");
        assert!(
            sample(&after, "sightline_inputs_total", &[&label]).unwrap_or(0.0) >= 1.0,
            "inputs by {modality}"
        );
    }
    for family in [
        "sightline_stage_seconds",
        "sightline_batch_items",
        "sightline_queue_depth",
        "sightline_request_seconds",
    ] {
        assert!(after.contains(family), "{family} missing from /metrics");
    }
}

#[tokio::test]
async fn bearer_key_guards_every_embedding_route() {
    // ES always sends `Authorization: Bearer <api_key>` (es-contract §1.2, §2).
    let app = app();
    let probe = recorded("openai-8.12-probe.json");
    let ok = send(&app, openai_request("/v1/embeddings", probe.clone())).await;
    ok.assert_status(StatusCode::OK);

    for key in [None, Some("wrong-key"), Some("")] {
        let reply = send(
            &app,
            es_post(
                "/v1/embeddings",
                Some(OPENAI_CONTENT_TYPE),
                key,
                probe.clone(),
            ),
        )
        .await;
        reply.assert_status(StatusCode::UNAUTHORIZED);
        let (message, kind) = reply.openai_error();
        assert_eq!(kind, "authentication_error");
        assert!(!message.contains(API_KEY), "the real key leaked: {message}");
        assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
        for path in ["/embed", "/hf/embed"] {
            let reply = send(
                &app,
                es_post(path, Some(PLAIN_JSON), key, recorded("hf-probe.json")),
            )
            .await;
            reply.assert_status(StatusCode::UNAUTHORIZED);
            reply.hf_error();
        }
        let reply = send(&app, get("/metrics", key)).await;
        reply.assert_status(StatusCode::UNAUTHORIZED);
    }

    // Another scheme carrying the right secret is still refused.
    let mut basic = openai_request("/v1/embeddings", probe.clone());
    basic.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Basic {API_KEY}").parse().expect("header"),
    );
    send(&app, basic)
        .await
        .assert_status(StatusCode::UNAUTHORIZED);
    // A key that only starts with the real one is wrong.
    let reply = send(
        &app,
        es_post(
            "/v1/embeddings",
            Some(OPENAI_CONTENT_TYPE),
            Some(&format!("{API_KEY}x")),
            probe.clone(),
        ),
    )
    .await;
    reply.assert_status(StatusCode::UNAUTHORIZED);

    // Without a configured key the sidecar serves whatever ES sends (ES must send some key).
    let open = sightline::http::router(
        engine(),
        sightline::http::HttpConfig {
            api_key: None,
            ..http_config()
        },
    );
    send(&open, openai_request("/v1/embeddings", probe.clone()))
        .await
        .assert_status(StatusCode::OK);
    send(
        &open,
        es_post("/v1/embeddings", Some(OPENAI_CONTENT_TYPE), None, probe),
    )
    .await
    .assert_status(StatusCode::OK);
}
