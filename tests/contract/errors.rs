//! Error paths and the status codes that keep Elasticsearch safe (es-contract §1.4, §3.4, §5,
//! §11 item 13): bad input is a final 400 naming the input; overload, not ready and timeouts a
//! 429 with `Retry-After` (the one status the `custom` service retries); nothing is ever a 413
//! (checked on every response by `common::send`); and one bad input never fails another request.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};

use crate::child::ChildServer;
use crate::common::*;
use sightline::engine::{EngineOptions, Modality};
use sightline::http::{router, HttpConfig};

const TEXT: &str = "A dog in the snow";

/// Sends an OpenAI-dialect request that must fail with a 400 `invalid_request_error`; returns the message.
async fn openai_400(app: &axum::Router, uri: &str, body: impl Into<Bytes>) -> String {
    let reply = send(app, openai_request(uri, body)).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    let (message, kind) = reply.openai_error();
    assert_eq!(kind, "invalid_request_error", "{message}");
    message
}

#[tokio::test]
async fn bad_base64_names_its_input() {
    let app = app();
    let png = data_uri("small-100x50.png");
    let cases = [
        (
            vec![TEXT, &png, "data:image/jpeg;base64,!!!not base64!!!"],
            "input[2]: invalid base64",
        ),
        (
            vec!["data:image/png;base64,iVBORw0KGgo*AAAA"],
            "input[0]: invalid base64",
        ),
        // Looks like a PNG (signature) but is cut mid-quantum: the client's error, not a text.
        (
            vec![TEXT, "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeA"],
            "input[1]: ",
        ),
    ];
    for (inputs, expected) in cases {
        let message = openai_400(
            &app,
            "/v1/embeddings",
            openai_body(&inputs, None, None, false),
        )
        .await;
        assert!(
            message.starts_with(expected),
            "{message:?} should start with {expected:?}"
        );
    }
    // The URL-safe alphabet is refused with a message that says so.
    let url_safe = format!(
        "data:image/jpeg;base64,{}",
        raw_base64("landscape.jpg").replace('/', "_")
    );
    let message = openai_400(
        &app,
        "/v1/embeddings",
        openai_body(&[TEXT, TEXT, &url_safe], None, None, false),
    )
    .await;
    assert!(
        message.starts_with("input[2]: ") && message.contains("URL-safe"),
        "{message}"
    );
    // Under `modality=image` every input must be base64.
    let message = openai_400(
        &app,
        "/v1/embeddings?modality=image",
        openai_body(&[&png, "not base64!"], None, None, false),
    )
    .await;
    assert!(message.starts_with("input[1]: invalid base64"), "{message}");
}

#[tokio::test]
async fn every_broken_image_is_a_400_naming_its_input() {
    let app = app();
    // tools/make_images.py: truncated JPEG, empty file, text with a .png name, bad zlib data,
    // and a 50000×50000 decompression bomb.
    for name in [
        "truncated.jpg",
        "zero-bytes.png",
        "wrong-magic.png",
        "corrupt.png",
        "bomb.png",
    ] {
        let uri = data_uri(&format!("broken/{name}"));
        let body = openai_body(&[TEXT, &uri, TEXT], None, None, false);
        let message = openai_400(&app, "/v1/embeddings", body).await;
        assert!(message.starts_with("input[1]: "), "{name}: {message}");
        // The same file sent raw under `modality=image` (the explicit image endpoint).
        let raw = raw_base64(&format!("broken/{name}"));
        let body = openai_body(&[&raw], None, None, false);
        let message = openai_400(&app, "/v1/embeddings?modality=image", body).await;
        assert!(message.starts_with("input[0]: "), "{name} raw: {message}");
    }
    // Recognised but unsupported formats and non-image data URIs are 400s too (never retried).
    let svg = format!("data:image/svg+xml;base64,{}", "PHN2Zz48L3N2Zz4=");
    let message = openai_400(
        &app,
        "/v1/embeddings",
        openai_body(&[&svg], None, None, false),
    )
    .await;
    assert!(
        message.starts_with("input[0]: unsupported image format"),
        "{message}"
    );
    let text_uri = "data:text/plain;base64,aGVsbG8=";
    let message = openai_400(
        &app,
        "/v1/embeddings",
        openai_body(&[TEXT, text_uri], None, None, false),
    )
    .await;
    assert!(
        message.starts_with("input[1]: ") && message.contains("not an image"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreadable_input_is_named_before_any_image_is_decoded() {
    // Input 1 is a truncated JPEG (found only when decoded), input 2 is not base64 at all (found
    // while classifying, before anything is decoded or queued). The request fails fast on input 2;
    // once input 2 is fixed, input 1 is named.
    let app = app();
    let truncated = data_uri("broken/truncated.jpg");
    let body = openai_body(
        &[TEXT, &truncated, "data:image/png;base64,@@@@"],
        None,
        None,
        false,
    );
    let message = openai_400(&app, "/v1/embeddings", body).await;
    assert!(message.starts_with("input[2]: invalid base64"), "{message}");
    let body = openai_body(&[TEXT, &truncated, TEXT], None, None, false);
    let message = openai_400(&app, "/v1/embeddings", body).await;
    assert!(message.starts_with("input[1]: "), "{message}");
}

#[tokio::test]
async fn empty_inputs_are_400() {
    let app = app();
    let model = MODEL_ID;
    let message = openai_400(
        &app,
        "/v1/embeddings",
        format!(r#"{{"input":[],"model":"{model}"}}"#),
    )
    .await;
    assert!(message.contains("no inputs"), "{message}");
    let message = openai_400(
        &app,
        "/v1/embeddings",
        format!(r#"{{"input":"","model":"{model}"}}"#),
    )
    .await;
    assert!(message.starts_with("input[0]: "), "{message}");
    // golden/texts.json `rejected_texts`: empty and white-space-only texts.
    for blank in ["", " \t\n "] {
        let message = openai_400(
            &app,
            "/v1/embeddings",
            openai_body(&[TEXT, "how big", blank], None, None, false),
        )
        .await;
        assert!(message.starts_with("input[2]: "), "{blank:?}: {message}");
    }
    let message = openai_400(
        &app,
        "/v1/embeddings",
        openai_body(&[TEXT, "data:image/png;base64,"], None, None, false),
    )
    .await;
    assert!(message.starts_with("input[1]: "), "{message}");
}

#[tokio::test]
async fn malformed_bodies_are_400_in_the_dialects_shape() {
    // axum's stock extractor would answer 415/422; ES treats every 4xx as final, but a body it
    // can read (`error.message`) makes the failure explain itself.
    let app = app();
    for body in [
        r#"{"input":["a""#,
        "",
        r#"{"model":"m"}"#,
        r#"{"input":[1,2]}"#,
        r#"{"input":null}"#,
        "[]",
    ] {
        let message = openai_400(&app, "/v1/embeddings", body).await;
        assert!(!message.is_empty(), "{body}");
    }
    let reply = send(&app, hf_request("/embed", r#"{"input":["a"]}"#)).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    reply.hf_error();
}

/// A router on the shared engine with a small body limit.
fn small_body_app(max_body: usize) -> axum::Router {
    router(
        engine(),
        HttpConfig {
            max_body,
            ..http_config()
        },
    )
}

#[tokio::test]
async fn bodies_over_max_body_are_400_naming_the_limit_and_flag() {
    // es-contract §5: a 413 would make ES halve every base64 image and resend it.
    let limit = 4096;
    let app = small_body_app(limit);
    let big = openai_body(&[&data_uri("small-100x50.png")], None, None, false);
    assert!(big.len() > limit);
    let check = |message: &str| {
        assert!(
            message.contains(&limit.to_string()),
            "the limit is not named: {message}"
        );
        assert!(
            message.contains("--max-body"),
            "the flag is not named: {message}"
        );
    };

    // With Content-Length, as ES sends it.
    let reply = send(&app, openai_request("/v1/embeddings", big.clone())).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    let (message, kind) = reply.openai_error();
    assert_eq!(kind, "invalid_request_error");
    check(&message);

    // Chunked, without Content-Length: the limit must hold while reading.
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let chunked = Request::builder()
        .method(Method::POST)
        .uri("/v1/embeddings")
        .header(header::CONTENT_TYPE, OPENAI_CONTENT_TYPE)
        .header(header::AUTHORIZATION, format!("Bearer {API_KEY}"))
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .expect("request");
    let reply = send(&app, chunked).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    check(&reply.openai_error().0);

    // The Hugging Face dialect, in its own shape.
    let reply = send(
        &app,
        hf_request("/embed", hf_body(&[&data_uri("small-100x50.png")])),
    )
    .await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    check(&reply.hf_error());

    // A body within the limit still works, so the limit is the limit and not an off-by-a-lot.
    let small = openai_body(&[&data_uri("tiny-1x1.png")], None, None, false);
    assert!(small.len() <= limit);
    let v = openai_vectors(&app, "/v1/embeddings", small, 1).await;
    assert_golden(&v[0], &golden_image("tiny-1x1.png"), "within the limit");
    // Exactly at the limit is allowed.
    let mut exact = openai_body(&[TEXT], None, None, false);
    exact.insert_str(exact.len() - 1, &" ".repeat(limit - exact.len()));
    let reply = send(&app, openai_request("/v1/embeddings", exact)).await;
    reply.assert_status(StatusCode::OK);
}

#[tokio::test]
async fn bodies_far_above_axum_defaults_are_accepted_within_max_body() {
    // es-contract §11 item 2: accept at least ~64 MB. A framework default (axum's is 2 MB) must not
    // cut in first, least of all with its 413. White space keeps this cheap: 8 MB of it around the probe.
    let app = app();
    let probe = String::from_utf8(recorded("openai-8.12-probe.json")).expect("UTF-8");
    let padded = format!("{}{}", " ".repeat(8 << 20), probe);
    let v = openai_vectors(&app, "/v1/embeddings", padded, 1).await;
    let plain = openai_vectors(&app, "/v1/embeddings", probe, 1).await;
    assert_same_vector(&v[0], &plain[0], "padded probe");
}

#[tokio::test]
async fn a_request_past_its_deadline_is_429_with_retry_after_in_both_dialects() {
    // `--request-timeout` passed: "try again later". A 503 would be final under the `custom`
    // service (es-contract §3.4, `CustomResponseHandler` retries 429 only), so it is a 429, which
    // every service retries; never a 413 or a 400, which would be final.
    let app = router(
        start_engine(EngineOptions {
            request_timeout: Duration::ZERO,
            ..test_options()
        }),
        http_config(),
    );
    let png = data_uri("tiny-1x1.png");
    for inputs in [vec![TEXT], vec![png.as_str()]] {
        let (message, kind, hf_message) = try_later_in_both_dialects(&app, &inputs, 1).await;
        assert_eq!(kind, "service_unavailable");
        for message in [message, hf_message] {
            assert!(
                message.starts_with("input[0]: ") && message.contains("--request-timeout"),
                "{message}"
            );
        }
    }
}

#[tokio::test]
async fn more_inputs_than_max_inputs_is_400() {
    let app = router(
        engine(),
        HttpConfig {
            max_inputs: 3,
            ..http_config()
        },
    );
    let message = openai_400(
        &app,
        "/v1/embeddings",
        openai_body(&[TEXT; 4], None, None, false),
    )
    .await;
    assert!(
        message.contains("--max-inputs") && message.contains('3'),
        "{message}"
    );
    openai_vectors(
        &app,
        "/v1/embeddings",
        openai_body(&[TEXT; 3], None, None, false),
        3,
    )
    .await;
    let reply = send(&app, hf_request("/embed", hf_body(&[TEXT; 4]))).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    assert!(reply.hf_error().contains("--max-inputs"));
}

#[tokio::test]
async fn a_lone_text_query_does_not_wait_for_a_batch() {
    // Image batches wait an hour for company here; a text query must still run at once (its
    // own batch wait is zero by default), so a Kibana search is never held for company.
    let engine = start_engine(EngineOptions {
        batch_wait: Duration::from_secs(3600),
        ..test_options()
    });
    let answered = patiently(
        "a lone text query waited for a batch",
        engine.embed(vec![sightline::engine::Item::Text(TEXT.to_owned())]),
    )
    .await;
    assert_eq!(answered.unwrap()[0].as_ref().unwrap().vector.len(), 512);
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    // ES retries 429 in every service (es-contract §11 item 13). A batch of 4 that waits an hour
    // for company holds what is queued: a first request's two texts and one holder text fill a
    // queue of three while the refused requests arrive; then the holder hangs up and a last text
    // fills the batch, which releases it.
    let engine = start_engine(EngineOptions {
        queue_capacity: 3,
        max_batch_text: 4,
        text_batch_wait: Duration::from_secs(3600),
        ..test_options()
    });
    let app = router(engine.clone(), http_config());
    let spawn_request = |inputs: &'static [&'static str]| {
        let app = app.clone();
        tokio::spawn(async move {
            send(
                &app,
                openai_request("/v1/embeddings", openai_body(inputs, None, None, false)),
            )
            .await
        })
    };
    let depth = |n: usize| {
        let engine = &engine;
        wait_until(format!("{n} texts queued"), move || {
            std::future::ready(engine.queue_depth(Modality::Text) == n)
        })
    };
    let first = spawn_request(&[TEXT; 2]);
    depth(2).await;
    let holder = spawn_request(&[TEXT]);
    depth(3).await;

    let reply = send(
        &app,
        openai_request("/v1/embeddings", openai_body(&[TEXT], None, None, false)),
    )
    .await;
    reply.assert_status(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&reply), 1, "no batch has run: no estimate");
    let (message, kind) = reply.openai_error();
    assert_eq!(kind, "rate_limit_error");
    assert!(message.contains("capacity"), "{message}");

    let reply = send(&app, hf_request("/embed", hf_body(&[TEXT]))).await;
    reply.assert_status(StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
    assert!(!reply.hf_error().is_empty());

    // The holder hangs up, releasing its slot; its text stays in the gathering batch, and one
    // more fills it: the batch runs.
    holder.abort();
    depth(2).await;
    let last = send(
        &app,
        openai_request("/v1/embeddings", openai_body(&[TEXT], None, None, false)),
    )
    .await;
    last.assert_status(StatusCode::OK);

    // The queued request is unharmed, and the refusals reserved nothing.
    let first = patiently("the request that filled the queue", first)
        .await
        .expect("the first request completes");
    first.assert_status(StatusCode::OK);
    let v = es_old_openai_parse(&first.body).expect("parses");
    assert_golden(
        &v[1],
        &golden_text(TEXT),
        "the request that filled the queue",
    );
    assert_eq!(engine.queue_depth(Modality::Text), 0);
}

#[tokio::test]
async fn more_inputs_than_the_queue_holds_is_400_not_429() {
    // A 429 would make ES retry a request that can never fit; a 400 is final and names the flag.
    let app = router(
        start_engine(EngineOptions {
            queue_capacity: 2,
            ..test_options()
        }),
        http_config(),
    );
    let message = openai_400(
        &app,
        "/v1/embeddings",
        openai_body(&[TEXT; 3], None, None, false),
    )
    .await;
    assert!(message.contains("--queue-capacity"), "{message}");
    // Two of each modality fit: the capacity is per modality.
    let png = data_uri("tiny-1x1.png");
    let v = openai_vectors(
        &app,
        "/v1/embeddings",
        openai_body(&[TEXT, &png, TEXT, &png], None, None, false),
        4,
    )
    .await;
    assert_golden(&v[3], &golden_image("tiny-1x1.png"), "image beside texts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_input_fails_only_its_own_request_and_drops_the_rest_of_it() {
    // A server process of its own (one decoding thread) shows in its `/metrics` what reached the
    // model. Batches (3 images, 2 texts) wait an hour for company: nothing runs until one is full.
    let server = ChildServer::start(&[
        "--batch-wait",
        "1h",
        "--max-batch",
        "3",
        "--text-batch-wait",
        "1h",
        "--max-batch-text",
        "2",
    ]);
    let (jpeg, png) = (data_uri("landscape.jpg"), data_uri("small-100x50.png"));
    let truncated = data_uri("broken/truncated.jpg");
    // The bad request's text is queued at once (held by its batch), then its truncated JPEG, the
    // first image decoded, fails: the request is answered at once, without waiting for the
    // batch its text sits in; its two other images are never decoded (the decoding thread sees
    // the failure first, or they never reach it: both are counted once as dropped), and its
    // text never reaches the model.
    let bad = server
        .embed(&[TEXT, truncated.as_str(), png.as_str(), jpeg.as_str()])
        .await;
    bad.assert_status(StatusCode::BAD_REQUEST);
    let (message, _) = bad.openai_error();
    assert!(message.starts_with("input[1]: "), "{message}");
    assert_eq!(server.batches("text").await, (0.0, 0.0), "nothing ran yet");
    let dropped = |modality: &str| {
        format!(
            r#"sightline_dropped_total{{modality="{modality}",model="tiny-clip",reason="disconnected"}}"#
        )
    };
    // The decoding thread may reach the two skipped images after the answer has gone out.
    let (image_dropped, srv) = (dropped("image"), &server);
    wait_until(
        "the bad request's last two images skipped, not decoded",
        || {
            let sample = &image_dropped;
            async move { srv.metric(sample).await == 2.0 }
        },
    )
    .await;
    // The good request fills both batches: three images, and one text beside the abandoned one,
    // which is dropped from its batch.
    let good = server
        .embed(&[jpeg.as_str(), TEXT, png.as_str(), jpeg.as_str()])
        .await;
    good.assert_status(StatusCode::OK);
    let v = es_old_openai_parse(&good.body).expect("the old ES parser reads it");
    assert_eq!(v.len(), 4);
    assert_golden(&v[0], &golden_image("landscape.jpg"), "good request, JPEG");
    assert_golden(&v[1], &golden_text(TEXT), "good request, text");
    assert_golden(
        &v[2],
        &golden_image("small-100x50.png"),
        "good request, PNG",
    );
    assert_eq!(server.batches("image").await, (1.0, 3.0), "(count, sum)");
    assert_eq!(
        server.batches("text").await,
        (1.0, 1.0),
        "the bad request's text reached the model"
    );
    assert_eq!(server.metric(&dropped("text")).await, 1.0);
}
