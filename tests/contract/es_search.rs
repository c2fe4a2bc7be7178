//! `sightline search` in pipeline mode: the kNN request with `query_vector_builder` (contract §8)
//! through the `-search` endpoint for text and image queries, `--print` for Kibana, and the
//! printed hits. Vectors mode is in `es_modes.rs`.

use serde_json::json;

use crate::fake_es::{fixture_images, parse_console, sightline, FakeEs};

#[tokio::test]
async fn print_text_query_is_knn_with_query_vector_builder() {
    let run = sightline(&[
        "search",
        "--index",
        "photos",
        "--text",
        "ein rotes Fahrrad",
        "-k",
        "5",
        "--print",
    ])
    .await;
    run.expect_code(0);
    let requests = parse_console(&run.stdout);
    assert_eq!(requests.len(), 1);
    let (method, path, body) = &requests[0];
    assert_eq!((method.as_str(), path.as_str()), ("GET", "photos/_search"));
    let body = body.as_ref().unwrap();
    assert_eq!(
        body["knn"],
        json!({"field": "ml.image_vector", "k": 5, "num_candidates": 100,
               "query_vector_builder": {"text_embedding": {"model_id": "sightline-clip-search", "model_text": "ein rotes Fahrrad"}}})
    );
    assert_eq!(body["size"], 5);
}

#[tokio::test]
async fn image_query_sends_the_image_as_a_data_uri() {
    let fake = FakeEs::start("8.15.0").await;
    fake.seed_index("photos", json!({}));
    let image = fixture_images().join("landscape.jpg");
    let image_arg = image.display().to_string();
    let run = sightline(&[
        "search",
        "--es",
        &fake.url,
        "--index",
        "photos",
        "--image",
        &image_arg,
        "--num-candidates",
        "40",
    ])
    .await;
    run.expect_code(0);
    let search = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/photos/_search")
        .expect("a search");
    let body = search.json();
    let text = body["knn"]["query_vector_builder"]["text_embedding"]["model_text"]
        .as_str()
        .unwrap();
    assert!(
        text.starts_with("data:image/jpeg;base64,/9j/"),
        "{}",
        &text[..40]
    );
    assert_eq!(body["knn"]["num_candidates"], 40);
    assert_eq!(body["knn"]["k"], 10);
}

#[tokio::test]
async fn hits_are_printed_in_rank_order() {
    let fake = FakeEs::start("9.1.0").await;
    fake.script(|script| {
        script.search_hits = Some(vec![
            json!({"_id": "aaaaaaaaaaaaaaaa1111", "_score": 0.93, "_source": {"path": "trips/beach.jpg", "file_name": "beach.jpg"}}),
            json!({"_id": "bbbbbbbbbbbbbbbb2222", "_score": 0.41, "_source": {"path": "cats/tom.png", "file_name": "tom.png"}}),
        ])
    });
    let run = sightline(&[
        "search", "--es", &fake.url, "--index", "photos", "--text", "beach",
    ])
    .await;
    run.expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(
        lines[1].contains("1")
            && lines[1].contains("0.9300")
            && lines[1].contains("aaaaaaaaaaaaaaaa")
            && lines[1].ends_with("trips/beach.jpg"),
        "{}",
        lines[1]
    );
    assert!(lines[2].ends_with("cats/tom.png"), "{}", lines[2]);

    let json_run = sightline(&[
        "search", "--es", &fake.url, "--index", "photos", "--text", "beach", "--json",
    ])
    .await;
    json_run.expect_code(0);
    let first: serde_json::Value =
        serde_json::from_str(json_run.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["rank"], 1);
    assert_eq!(first["id"], "aaaaaaaaaaaaaaaa1111");
}

#[tokio::test]
async fn search_errors_quote_elasticsearch() {
    let fake = FakeEs::start("8.15.0").await;
    fake.script(|script| {
        script.overrides.push(crate::fake_es::Override {
            method: "POST",
            path_contains: "/_search",
            times: 1,
            status: 400,
            body: json!({"error": {"type": "illegal_argument_exception", "reason": "[knn] queries are only supported on [dense_vector] fields"}, "status": 400}),
        })
    });
    let run = sightline(&[
        "search", "--es", &fake.url, "--index", "photos", "--text", "x",
    ])
    .await;
    run.expect_code(2);
    assert!(
        run.stderr.contains("only supported on [dense_vector]"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn query_is_required_and_exclusive() {
    sightline(&["search", "--index", "photos", "--print"])
        .await
        .expect_code(2);
    sightline(&["search", "--text", "a", "--image", "b.jpg", "--print"])
        .await
        .expect_code(2);
}
