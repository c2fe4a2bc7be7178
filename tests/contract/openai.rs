//! `POST /v1/embeddings` as Elasticsearch's `openai` and `custom` services call it (es-contract §1,
//! §3, §9): recorded bodies replayed byte for byte, answers read by ES's own parsing rules, vectors
//! checked against the golden files.

use axum::http::StatusCode;
use serde_json::Value;

use sightline::engine::EngineOptions;
use sightline::http::router;

use crate::common::*;

const TEXT: &str = "A dog in the snow";
const TEXT_DE: &str = "Eine Katze schläft im Schnee";
const JPEG: &str = "landscape.jpg";
const PNG: &str = "small-100x50.png";

#[tokio::test]
async fn body_builder_reproduces_recordings() {
    // The builders stand in for ES when a body carries a large fixture image; they must write
    // exactly what the recordings hold.
    let tiny = data_uri("tiny-1x1.png");
    assert_eq!(
        openai_body(&["how big"], None, None, false).as_bytes(),
        recorded("openai-8.12-probe.json")
    );
    assert_eq!(
        openai_body(&["how big"], None, Some(512), false).as_bytes(),
        recorded("openai-8.13-probe-dimensions.json")
    );
    assert_eq!(
        openai_body(&["how big"], None, None, true).as_bytes(),
        recorded("openai-9.6-probe-base64.json")
    );
    assert_eq!(
        openai_body(&[&tiny], Some("es-ingest"), None, false).as_bytes(),
        recorded("openai-8.12-ingest-image.json")
    );
    assert_eq!(
        openai_body(&[TEXT, &tiny], Some("es-ingest"), Some(512), true).as_bytes(),
        recorded("openai-9.6-all-fields.json")
    );
    assert_eq!(hf_body(&["how big"]).as_bytes(), recorded("hf-probe.json"));
    assert_eq!(
        custom_body(&["how big"], "document").as_bytes(),
        recorded("custom-probe.json")
    );
    assert_eq!(
        custom_body(&[&tiny], "document").as_bytes(),
        recorded("custom-ingest-image.json")
    );
    assert_eq!(
        custom_body(&[TEXT], "query").as_bytes(),
        recorded("custom-search-text.json")
    );
}

#[tokio::test]
async fn endpoint_creation_probe_gets_one_unit_vector_in_every_version() {
    // es-contract §9: PUT _inference fails unless `"how big"` comes back as one parseable vector;
    // ES takes `dimensions` from its length.
    let app = app();
    let old = openai_vectors(
        &app,
        "/v1/embeddings",
        recorded("openai-8.12-probe.json"),
        1,
    )
    .await;
    let with_dims = openai_vectors(
        &app,
        "/v1/embeddings",
        recorded("openai-8.13-probe-dimensions.json"),
        1,
    )
    .await;
    assert_same_vector(&old[0], &with_dims[0], "probe with `dimensions`");

    let reply = send(
        &app,
        openai_request("/v1/embeddings", recorded("openai-9.6-probe-base64.json")),
    )
    .await;
    reply.assert_status(StatusCode::OK);
    assert_openai_layout(&reply.body, 1);
    let newest = es_new_openai_parse(&reply.body).expect("the newest ES parser reads the answer");
    assert_eq!(newest.len(), 1);
    assert_unit(&newest[0], "base64 probe");
    assert_same_vector(&old[0], &newest[0], "base64 probe");
}

#[tokio::test]
async fn ingest_image_body_gets_the_golden_vector() {
    let app = app();
    let vectors = openai_vectors(
        &app,
        "/v1/embeddings",
        recorded("openai-8.12-ingest-image.json"),
        1,
    )
    .await;
    assert_golden(
        &vectors[0],
        &golden_image("tiny-1x1.png"),
        "ingest processor image",
    );
}

#[tokio::test]
async fn user_is_ignored() {
    let app = app();
    let with_user = openai_body(&[TEXT], Some("es-ingest"), None, false);
    let without = openai_body(&[TEXT], None, None, false);
    let a = openai_vectors(&app, "/v1/embeddings", with_user, 1).await;
    let b = openai_vectors(&app, "/v1/embeddings", without, 1).await;
    assert_golden(&a[0], &golden_text(TEXT), "with `user`");
    assert_same_vector(&a[0], &b[0], "with and without `user`");
}

#[tokio::test]
async fn dimensions_must_equal_the_models() {
    // es-contract §11 item 4: honour `dimensions` or reject it with 400; this model cannot shorten.
    let app = app();
    let ok = openai_vectors(
        &app,
        "/v1/embeddings",
        openai_body(&[TEXT], None, Some(512), false),
        1,
    )
    .await;
    assert_golden(&ok[0], &golden_text(TEXT), "dimensions 512");
    for wrong in [256, 768] {
        let reply = send(
            &app,
            openai_request(
                "/v1/embeddings",
                openai_body(&[TEXT], None, Some(wrong), false),
            ),
        )
        .await;
        reply.assert_status(StatusCode::BAD_REQUEST);
        let (message, kind) = reply.openai_error();
        assert_eq!(kind, "invalid_request_error");
        assert!(
            message.contains("dimensions") && message.contains(&wrong.to_string()),
            "{message}"
        );
        assert!(
            message.contains("512"),
            "the message should say what the model produces: {message}"
        );
    }
}

#[tokio::test]
async fn base64_encoding_is_strict_little_endian_f32_equal_to_floats() {
    // es-contract §1.2/§1.3: newest ES always asks for base64 and decodes it strictly.
    let app = app();
    let image = data_uri(JPEG);
    let inputs = [TEXT, image.as_str()];
    let floats = openai_vectors(
        &app,
        "/v1/embeddings",
        openai_body(&inputs, None, None, false),
        2,
    )
    .await;

    let reply = send(
        &app,
        openai_request("/v1/embeddings", openai_body(&inputs, None, None, true)),
    )
    .await;
    reply.assert_status(StatusCode::OK);
    assert_openai_layout(&reply.body, 2);
    let json = reply.json();
    for (i, entry) in json["data"].as_array().expect("data").iter().enumerate() {
        let b64 = entry["embedding"].as_str().expect("a base64 string");
        assert_eq!(
            b64.len(),
            4 * (DIMS * 4).div_ceil(3),
            "entry {i}: 512 f32 are 2048 bytes"
        );
        let decoded = decode_packed_f32(b64).unwrap_or_else(|e| panic!("entry {i}: {e}"));
        assert_same_vector(&decoded, &floats[i], &format!("entry {i} base64 vs float"));
    }
    let vectors = es_new_openai_parse(&reply.body).expect("the newest ES parser reads it");
    assert_golden(&vectors[0], &golden_text(TEXT), "base64 text");
    assert_golden(&vectors[1], &golden_image(JPEG), "base64 image");

    // `float` named explicitly is the default.
    let explicit =
        format!(r#"{{"input":["{TEXT}"],"model":"{MODEL_ID}","encoding_format":"float"}}"#);
    let v = openai_vectors(&app, "/v1/embeddings", explicit, 1).await;
    assert_same_vector(&v[0], &floats[0], "explicit float");

    let unknown =
        format!(r#"{{"input":["{TEXT}"],"model":"{MODEL_ID}","encoding_format":"int8"}}"#);
    let reply = send(&app, openai_request("/v1/embeddings", unknown)).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    assert!(reply.openai_error().0.contains("encoding_format"));
}

#[tokio::test]
async fn newest_body_with_every_field_is_answered_in_base64() {
    let app = app();
    let reply = send(
        &app,
        openai_request("/v1/embeddings", recorded("openai-9.6-all-fields.json")),
    )
    .await;
    reply.assert_status(StatusCode::OK);
    assert_openai_layout(&reply.body, 2);
    let vectors = es_new_openai_parse(&reply.body).expect("the newest ES parser reads it");
    assert_golden(&vectors[0], &golden_text(TEXT), "text");
    assert_golden(&vectors[1], &golden_image("tiny-1x1.png"), "image");
}

#[tokio::test]
async fn content_type_with_or_without_charset_is_accepted() {
    // es-contract §11 item 2: both media types ES uses; no reliance on Content-Type beyond that.
    let app = app();
    for content_type in [
        Some(OPENAI_CONTENT_TYPE),
        Some(PLAIN_JSON),
        Some("application/json;charset=utf-8"),
        None,
    ] {
        let request = es_post(
            "/v1/embeddings",
            content_type,
            Some(API_KEY),
            recorded("openai-8.12-probe.json"),
        );
        let reply = send(&app, request).await;
        reply.assert_status(StatusCode::OK);
        assert_eq!(
            es_old_openai_parse(&reply.body).expect("parses").len(),
            1,
            "{content_type:?}"
        );
    }
}

#[tokio::test]
async fn bare_string_input_is_one_input() {
    // Not what ES sends (always an array), but what OpenAI clients do (es-contract §11 item 4).
    let app = app();
    let body = format!(r#"{{"input":"{TEXT}","model":"{MODEL_ID}"}}"#);
    let vectors = openai_vectors(&app, "/v1/embeddings", body, 1).await;
    assert_golden(&vectors[0], &golden_text(TEXT), "bare string");
}

#[tokio::test]
async fn images_and_texts_mixed_come_back_one_per_input_in_order() {
    let app = app();
    let (jpeg_uri, png_raw, png_uri, jpeg_raw) = (
        data_uri(JPEG),
        raw_base64(PNG),
        data_uri(PNG),
        raw_base64(JPEG),
    );
    let inputs = [TEXT, &jpeg_uri, &png_raw, TEXT_DE, &png_uri, &jpeg_raw];
    let v = openai_vectors(
        &app,
        "/v1/embeddings",
        openai_body(&inputs, None, None, false),
        inputs.len(),
    )
    .await;
    assert_golden(&v[0], &golden_text(TEXT), "input 0, text");
    assert_golden(&v[1], &golden_image(JPEG), "input 1, JPEG data URI");
    assert_golden(&v[2], &golden_image(PNG), "input 2, raw base64 PNG");
    assert_golden(&v[3], &golden_text(TEXT_DE), "input 3, German text");
    assert_golden(&v[4], &golden_image(PNG), "input 4, PNG data URI");
    assert_golden(&v[5], &golden_image(JPEG), "input 5, raw base64 JPEG");
    assert_same_vector(&v[1], &v[5], "JPEG as data URI and as raw base64");
    assert_same_vector(&v[2], &v[4], "PNG as raw base64 and as data URI");
}

#[tokio::test]
async fn custom_service_template_bodies_work_with_the_appended_query() {
    // es-contract §3.5: the custom service posts to `…/v1/embeddings?source=elasticsearch` and
    // reads `$.data[*].embedding` from a JSON object.
    let app = app();
    let cases = [
        (recorded("custom-probe.json"), None),
        (
            recorded("custom-ingest-image.json"),
            Some(golden_image("tiny-1x1.png")),
        ),
        (recorded("custom-search-text.json"), Some(golden_text(TEXT))),
        // No `default` in the translation: ES renders `${input_type}` as "" (§3.2).
        (
            custom_body(&[TEXT], "").into_bytes(),
            Some(golden_text(TEXT)),
        ),
        (
            custom_body(&[&data_uri(JPEG), TEXT_DE], "document").into_bytes(),
            None,
        ),
    ];
    for (body, golden) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let reply = send(&app, custom_request(body)).await;
        reply.assert_status(StatusCode::OK);
        let vectors = es_custom_parse(&reply.body).unwrap_or_else(|e| panic!("{shown}: {e}"));
        for v in &vectors {
            assert_unit(v, &shown);
        }
        if let Some(golden) = golden {
            assert_eq!(vectors.len(), 1, "{shown}");
            assert_golden(&vectors[0], &golden, &shown);
        }
        if vectors.len() == 2 {
            assert_golden(&vectors[0], &golden_image(JPEG), "custom batch, image");
            assert_golden(&vectors[1], &golden_text(TEXT_DE), "custom batch, text");
        }
    }
}

#[tokio::test]
async fn modality_query_parameter_overrides_detection() {
    // es-contract §11 item 9: `…?modality=image` and `…?modality=text` endpoints, URL kept verbatim.
    let app = app();
    let png_raw = raw_base64(PNG);
    let body = openai_body(&[&png_raw], None, None, false);

    let auto = openai_vectors(&app, "/v1/embeddings?source=elasticsearch", body.clone(), 1).await;
    assert_golden(
        &auto[0],
        &golden_image(PNG),
        "raw base64 detected as an image",
    );
    let explicit_auto = openai_vectors(&app, "/v1/embeddings?modality=auto", body.clone(), 1).await;
    assert_same_vector(&explicit_auto[0], &auto[0], "modality=auto");

    // The same string read as text is a text vector: far from the image's.
    let as_text = openai_vectors(&app, "/v1/embeddings?modality=text", body.clone(), 1).await;
    let c = cosine(&as_text[0], &golden_image(PNG));
    assert!(
        c < 0.9,
        "modality=text still gave the image vector (cosine {c})"
    );
    let as_text_content = format!(
        r#"{{"input":[{{"content":{{"type":"text","format":"text","value":"{png_raw}"}}}}],"model":"{MODEL_ID}"}}"#
    );
    let from_content = openai_vectors(&app, "/v1/embeddings", as_text_content, 1).await;
    assert_same_vector(
        &as_text[0],
        &from_content[0],
        "modality=text vs a text content object",
    );
    let after_other = openai_vectors(
        &app,
        "/v1/embeddings?source=elasticsearch&modality=text",
        body,
        1,
    )
    .await;
    assert_same_vector(
        &as_text[0],
        &after_other[0],
        "modality after another query parameter",
    );

    // A text under `modality=image` is not silently embedded as text.
    let jpeg_raw = raw_base64(JPEG);
    let images = openai_vectors(
        &app,
        "/v1/embeddings?modality=image",
        openai_body(&[&jpeg_raw, &data_uri(PNG)], None, None, false),
        2,
    )
    .await;
    assert_golden(&images[0], &golden_image(JPEG), "modality=image raw JPEG");
    assert_golden(
        &images[1],
        &golden_image(PNG),
        "modality=image PNG data URI",
    );
    let reply = send(
        &app,
        openai_request(
            "/v1/embeddings?modality=image",
            openai_body(&[&jpeg_raw, "how big"], None, None, false),
        ),
    )
    .await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    let (message, kind) = reply.openai_error();
    assert!(message.starts_with("input[1]: "), "{message}");
    assert_eq!(kind, "invalid_request_error");

    let reply = send(
        &app,
        openai_request(
            "/v1/embeddings?modality=video",
            openai_body(&[TEXT], None, None, false),
        ),
    )
    .await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    assert!(reply.openai_error().0.contains("video"));
}

#[tokio::test]
async fn content_objects_of_the_embedding_task_are_inputs() {
    // es-contract §10: `{"content":{"type":"image","format":"base64","value":"data:…"}}` items,
    // mixed with plain strings.
    let app = app();
    let body = serde_json::json!({
        "input": [
            {"content": {"type": "image", "format": "base64", "value": data_uri(PNG)}},
            {"content": {"type": "text", "format": "text", "value": TEXT}},
            raw_base64(JPEG),
            {"content": {"type": "image", "format": "base64", "value": raw_base64(JPEG)}},
        ],
        "model": MODEL_ID,
    });
    let v = openai_vectors(&app, "/v1/embeddings", body.to_string(), 4).await;
    assert_golden(&v[0], &golden_image(PNG), "image content object");
    assert_golden(&v[1], &golden_text(TEXT), "text content object");
    assert_golden(
        &v[2],
        &golden_image(JPEG),
        "plain string beside content objects",
    );
    assert_golden(
        &v[3],
        &golden_image(JPEG),
        "image content object without the data: prefix",
    );

    // Content objects (the text "text" and a 28×28 black JPEG): a shape no ES release sends to a
    // configurable URL (contract §12 #8), accepted anyway.
    let probe = openai_vectors(
        &app,
        "/v1/embeddings",
        recorded("content-objects-not-sent-by-es.json"),
        2,
    )
    .await;
    assert!(
        cosine(&probe[0], &probe[1]) < 0.99,
        "the text and the image must not share a vector"
    );

    let video = r#"{"input":["a",{"content":{"type":"video","format":"base64","value":"AAAA"}}],"model":"m"}"#;
    let reply = send(&app, openai_request("/v1/embeddings", video)).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    let (message, _) = reply.openai_error();
    assert!(
        message.starts_with("input[1]: ") && message.contains("video"),
        "{message}"
    );
}

#[tokio::test]
async fn model_and_usage_follow_openai() {
    // ES never reads them (es-contract §1.3), but OpenAI clients do: `model` echoes the request,
    // `usage` is an object of integers placed after `data`.
    let app = app();
    let reply = send(
        &app,
        openai_request("/v1/embeddings", recorded("openai-8.12-probe.json")),
    )
    .await;
    reply.assert_status(StatusCode::OK);
    let json = reply.json();
    assert_eq!(json["model"], MODEL_ID);
    let usage = json["usage"].as_object().expect("`usage` object");
    assert!(usage.values().all(Value::is_u64), "{usage:?}");
}

#[tokio::test]
async fn a_full_openai_batch_of_2048_inputs_is_served_in_order() {
    // es-contract §6: semantic_text sends up to 2048 strings per request to the openai service.
    // Sized as `sightline serve` defaults (`--max-inputs` = `--queue-capacity` = 2048).
    let app = router(
        start_engine(EngineOptions {
            queue_capacity: 2048,
            max_batch_text: 64,
            ..test_options()
        }),
        http_config(),
    );
    let texts = [TEXT, TEXT_DE, "2 dogs, 3 cats!", "雪の中で眠る猫"];
    let inputs: Vec<&str> = (0..2048).map(|i| texts[i % texts.len()]).collect();
    let v = openai_vectors(
        &app,
        "/v1/embeddings",
        openai_body(&inputs, None, None, false),
        inputs.len(),
    )
    .await;
    for (i, (vector, text)) in v.iter().zip(&inputs).enumerate() {
        assert_golden(vector, &golden_text(text), &format!("input {i}"));
    }
}
