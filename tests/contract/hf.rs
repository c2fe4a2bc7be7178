//! `POST /embed` and `/hf/embed` as Elasticsearch's `hugging_face` service calls them
//! (es-contract §2): `{"inputs":[...]}` in, `[[...], ...]` out, errors as `{"error":"..."}`.

use axum::http::StatusCode;

use crate::common::*;

const TEXT: &str = "A dog in the snow";

#[tokio::test]
async fn probe_gets_one_unit_vector_on_both_paths_equal_to_the_openai_one() {
    // es-contract §9: the hugging_face probe is `{"inputs":["how big"]}`; the same text must give the
    // same vector whichever dialect asks, or an index built through one cannot be queried by the other.
    let app = app();
    let openai = openai_vectors(
        &app,
        "/v1/embeddings",
        recorded("openai-8.12-probe.json"),
        1,
    )
    .await;
    for path in ["/embed", "/hf/embed"] {
        let reply = send(&app, hf_request(path, recorded("hf-probe.json"))).await;
        reply.assert_status(StatusCode::OK);
        assert!(
            reply.body.starts_with(b"[["),
            "{path}: a top-level array of arrays: {}",
            reply.text()
        );
        let vectors = es_hf_parse(&reply.body).expect("ES's hugging_face parser reads it");
        assert_eq!(vectors.len(), 1, "{path}");
        assert_unit(&vectors[0], path);
        assert_same_vector(
            &vectors[0],
            &openai[0],
            &format!("{path} vs /v1/embeddings"),
        );
    }
}

#[tokio::test]
async fn ingest_image_gets_the_golden_vector() {
    let app = app();
    let vectors = hf_vectors(&app, "/hf/embed", recorded("hf-ingest-image.json"), 1).await;
    assert_golden(
        &vectors[0],
        &golden_image("tiny-1x1.png"),
        "hugging_face ingest image",
    );
}

#[tokio::test]
async fn inputs_as_a_string_is_one_input() {
    let app = app();
    let vectors = hf_vectors(&app, "/embed", format!(r#"{{"inputs":"{TEXT}"}}"#), 1).await;
    assert_golden(&vectors[0], &golden_text(TEXT), "bare string");
}

#[tokio::test]
async fn mixed_inputs_come_back_in_order_with_golden_values() {
    let app = app();
    let (jpeg, png_raw) = (data_uri("landscape.jpg"), raw_base64("palette.png"));
    let inputs = [jpeg.as_str(), TEXT, png_raw.as_str(), "Кошка спит на снегу"];
    let v = hf_vectors(&app, "/embed", hf_body(&inputs), inputs.len()).await;
    assert_golden(
        &v[0],
        &golden_image("landscape.jpg"),
        "input 0, JPEG data URI",
    );
    assert_golden(&v[1], &golden_text(TEXT), "input 1, text");
    assert_golden(
        &v[2],
        &golden_image("palette.png"),
        "input 2, raw base64 PNG",
    );
    assert_golden(
        &v[3],
        &golden_text("Кошка спит на снегу"),
        "input 3, Russian text",
    );
}

#[tokio::test]
async fn modality_parameter_works_on_hf_paths() {
    let app = app();
    let raw = raw_base64("palette.png");
    let as_image = hf_vectors(&app, "/hf/embed?modality=image", hf_body(&[&raw]), 1).await;
    assert_golden(&as_image[0], &golden_image("palette.png"), "modality=image");
    let as_text = hf_vectors(&app, "/hf/embed?modality=text", hf_body(&[&raw]), 1).await;
    assert!(
        cosine(&as_text[0], &as_image[0]) < 0.9,
        "modality=text still gave the image vector"
    );
}

#[tokio::test]
async fn errors_are_a_top_level_string() {
    // es-contract §2: `HuggingFaceErrorResponseEntity` reads `{"error": "<string>"}`.
    let app = app();
    let cases: [(&str, String, &str); 5] = [
        (
            "/embed",
            hf_body(&[TEXT, "data:image/png;base64,%%%%"]),
            "input[1]: invalid base64",
        ),
        ("/embed", hf_body(&[TEXT, "   "]), "input[1]: "),
        ("/hf/embed", r#"{"inputs":[]}"#.to_owned(), "no inputs"),
        ("/hf/embed", r#"{"inputs":["a"#.to_owned(), "invalid JSON"),
        ("/embed?modality=video", hf_body(&[TEXT]), "video"),
    ];
    for (path, body, expected) in cases {
        let reply = send(&app, hf_request(path, body.clone())).await;
        reply.assert_status(StatusCode::BAD_REQUEST);
        let message = reply.hf_error();
        assert!(
            message.contains(expected),
            "{path} {body}: {message:?} lacks {expected:?}"
        );
    }
    let reply = send(
        &app,
        es_post("/embed", Some(PLAIN_JSON), Some("wrong"), hf_body(&[TEXT])),
    )
    .await;
    reply.assert_status(StatusCode::UNAUTHORIZED);
    assert!(!reply.hf_error().is_empty());
}
