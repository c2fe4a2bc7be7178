//! Queueing (issue 11 §4, issue 16 §5): the priority lane (`?priority=search`) serves queries
//! before queued ingest inputs, in both queues and both dialects; admission refuses at once, with
//! a 429 whose `Retry-After` comes from the estimate, what would not drain before the request
//! timeout; and a request's inputs not started by its deadline are never worked on. Batches are
//! held by a long batch wait and released by filling them; every wait is for an observable
//! state, under one deadline (`common::wait_until`, `common::patiently`). The starvation bound
//! of the priority lane is pinned where it is decided, in `engine::batcher`'s unit tests.

use std::time::Duration;

use axum::http::StatusCode;

use crate::child::ChildServer;
use crate::common::*;
use sightline::engine::{Engine, EngineOptions, Modality};
use sightline::http::router;

const TEXT: &str = "A dog in the snow";
const HOUR: Duration = Duration::from_secs(3600);

/// Waits until `n` inputs of `modality` are admitted and unanswered.
async fn depth(engine: &Engine, modality: Modality, n: usize) {
    wait_until(format!("{n} {} inputs queued", modality.label()), || {
        std::future::ready(engine.queue_depth(modality) == n)
    })
    .await;
}

/// Sends an OpenAI-dialect request on a task of its own.
fn spawn_openai(
    app: &axum::Router,
    uri: &'static str,
    inputs: Vec<String>,
) -> tokio::task::JoinHandle<Reply> {
    let app = app.clone();
    tokio::spawn(async move {
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        send(
            &app,
            openai_request(uri, openai_body(&inputs, None, None, false)),
        )
        .await
    })
}

#[tokio::test]
async fn a_priority_input_is_answered_before_queued_ingest_inputs() {
    // Batches of 4 wait an hour for company, in both queues.
    let engine = start_engine(EngineOptions {
        max_batch_image: 4,
        batch_wait: HOUR,
        max_batch_text: 4,
        text_batch_wait: HOUR,
        ..test_options()
    });
    let app = router(engine.clone(), http_config());
    let png = data_uri("tiny-1x1.png");
    let mixed = || vec![png.clone(), png.clone(), TEXT.to_owned(), TEXT.to_owned()];
    // Two ingest images and two ingest texts, held in their gathering batches.
    let ingest = spawn_openai(&app, "/v1/embeddings", mixed());
    depth(&engine, Modality::Image, 2).await;
    depth(&engine, Modality::Text, 2).await;

    // Queries through the priority lane are answered while those stay queued: an image and a
    // text, in the OpenAI dialect and in the Hugging Face one (with `modality` beside it).
    let reply = patiently(
        "an image query behind queued ingest images",
        send(
            &app,
            openai_request(
                "/v1/embeddings?priority=search",
                openai_body(&[&png], None, None, false),
            ),
        ),
    )
    .await;
    reply.assert_status(StatusCode::OK);
    let v = openai_reply_vectors(&reply, 1);
    assert_golden(&v[0], &golden_image("tiny-1x1.png"), "priority image");
    let reply = patiently(
        "a text query behind queued ingest texts",
        send(
            &app,
            hf_request("/embed?modality=text&priority=search", hf_body(&[TEXT])),
        ),
    )
    .await;
    reply.assert_status(StatusCode::OK);
    let v = es_hf_parse(&reply.body).expect("the HF parser reads it");
    assert_golden(&v[0], &golden_text(TEXT), "priority text");
    assert!(
        !ingest.is_finished(),
        "the ingest request was not overtaken"
    );
    assert_eq!(engine.queue_depth(Modality::Image), 2);
    assert_eq!(engine.queue_depth(Modality::Text), 2);

    // Two more ingest images and texts fill both batches: the held request completes.
    let filler = spawn_openai(&app, "/v1/embeddings", mixed());
    for (what, task) in [("held", ingest), ("filler", filler)] {
        let reply = patiently(what, task).await.expect("the request completes");
        reply.assert_status(StatusCode::OK);
        let v = openai_reply_vectors(&reply, 4);
        assert_golden(&v[1], &golden_image("tiny-1x1.png"), what);
        assert_golden(&v[3], &golden_text(TEXT), what);
    }
    assert_eq!(engine.queue_depth(Modality::Image), 0);
}

#[tokio::test]
async fn an_unknown_priority_is_a_400_naming_the_value() {
    let app = app();
    let reply = send(
        &app,
        openai_request(
            "/v1/embeddings?priority=urgent",
            openai_body(&[TEXT], None, None, false),
        ),
    )
    .await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    let (message, kind) = reply.openai_error();
    assert_eq!(kind, "invalid_request_error");
    assert!(
        message.contains("`priority`") && message.contains("`urgent`"),
        "{message}"
    );
    let reply = send(
        &app,
        hf_request("/embed?modality=text&priority=high", hf_body(&[TEXT])),
    )
    .await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    let message = reply.hf_error();
    assert!(message.contains("`high`"), "{message}");
    // The default lane by name is accepted.
    let reply = send(&app, hf_request("/embed?priority=ingest", hf_body(&[TEXT]))).await;
    reply.assert_status(StatusCode::OK);
}

#[tokio::test]
async fn admission_refuses_at_once_what_would_not_drain_before_the_timeout() {
    // One image lane; batches of 8 wait an hour for company; a 10 s request timeout.
    let engine = start_engine(EngineOptions {
        max_batch_image: 8,
        batch_wait: HOUR,
        request_timeout: Duration::from_secs(10),
        ..test_options()
    });
    let app = router(engine.clone(), http_config());
    let png = data_uri("tiny-1x1.png");
    let images = |n: usize| vec![png.clone(); n];
    // Before any batch has run there is no estimate: admitted as far as capacity goes.
    let held = spawn_openai(&app, "/v1/embeddings", images(4));
    depth(&engine, Modality::Image, 4).await;
    // The estimator as after batches at 0.5 s per image (2 images/s).
    engine.observe_batch(Modality::Image, 4, Duration::from_secs(2));

    // 4 queued + 20 = 24 images, 12 s of work against 10 s: refused now, in both dialects,
    // with the time until the excess has drained (2 s) as `Retry-After`.
    let twenty = images(20);
    let twenty: Vec<&str> = twenty.iter().map(String::as_str).collect();
    let (message, kind, hf_message) = try_later_in_both_dialects(&app, &twenty, 2).await;
    assert_eq!(kind, "rate_limit_error");
    assert!(
        message.contains("24 image inputs") && message.contains("--request-timeout"),
        "{message}"
    );
    assert!(hf_message.contains("--request-timeout"));
    // The refusals reserved nothing.
    assert_eq!(engine.queue_depth(Modality::Image), 4);
    // A text request is not held back by the image queue.
    let reply = send(&app, hf_request("/embed", hf_body(&[TEXT]))).await;
    reply.assert_status(StatusCode::OK);

    // 4 + 4 = 8 images, 4 s: admitted, and it fills the batch, which releases both requests.
    let fits = spawn_openai(&app, "/v1/embeddings", images(4));
    for (what, task) in [("held", held), ("fits", fits)] {
        let reply = patiently(what, task).await.expect("the request completes");
        reply.assert_status(StatusCode::OK);
        let v = openai_reply_vectors(&reply, 4);
        assert_golden(&v[3], &golden_image("tiny-1x1.png"), what);
    }
}

/// The value of the sample of `family` whose labels include every one of `labels` (0 if none).
fn sample(metrics: &str, family: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .find(|line| labels.iter().all(|l| line.contains(l)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_not_started_by_the_deadline_are_never_worked_on() {
    // A server of its own, for its `/metrics`. Text batches of 17 wait an hour for company; a
    // request works on 16 inputs at a time (twice the image batch of 8), so a request of 20
    // texts has 16 tokenized and queued, held, while the last 4 wait for room.
    let server = ChildServer::start(&[
        "--text-batch-wait",
        "1h",
        "--max-batch-text",
        "17",
        "--request-timeout",
        "2s",
    ]);
    let reply = server.embed(&[TEXT; 20]).await;
    // The deadline passes: "try again later", never a 5xx (`custom` would not retry it).
    reply.assert_status(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&reply), 1);
    let (message, _) = reply.openai_error();
    assert!(message.contains("--request-timeout"), "{message}");
    // The first timeout ended the request: its last 4 texts were never tokenized.
    let tokenized = |metrics: &str| {
        sample(
            metrics,
            "sightline_stage_seconds_count",
            &[r#"stage="tokenize""#, r#"modality="text""#],
        )
    };
    assert_eq!(tokenized(&server.metrics().await), 16.0);
    // One fresh text fills the batch (16 expired + 1): only the fresh one reaches the model.
    let fresh = server.embed(&[TEXT]).await;
    fresh.assert_status(StatusCode::OK);
    let metrics = server.metrics().await;
    assert_eq!(tokenized(&metrics), 17.0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "sightline_batch_items_sum",
            &[r#"modality="text""#]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "sightline_dropped_total",
            &[r#"modality="text""#, r#"reason="timeout""#]
        ),
        16.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn the_priority_lane_has_a_capacity_of_its_own() {
    // A flood of "search" requests can hold at most `--priority-capacity` inputs; a request
    // that could never fit in the lane is final (400), and the ingest lane is not limited by it.
    let app = router(
        start_engine(EngineOptions {
            priority_capacity: 2,
            ..test_options()
        }),
        http_config(),
    );
    let reply = send(
        &app,
        openai_request(
            "/v1/embeddings?priority=search",
            openai_body(&[TEXT; 3], None, None, false),
        ),
    )
    .await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    let (message, _) = reply.openai_error();
    assert!(
        message.contains("priority=search") && message.contains("--priority-capacity"),
        "{message}"
    );
    for uri in ["/v1/embeddings?priority=search", "/v1/embeddings"] {
        let n = if uri.contains("priority") { 2 } else { 3 };
        let body = openai_body(&vec![TEXT; n], None, None, false);
        let v = openai_vectors(&app, uri, body, n).await;
        assert_golden(&v[n - 1], &golden_text(TEXT), uri);
    }
}
