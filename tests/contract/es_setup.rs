//! `sightline setup` against the fake cluster and with `--print`: the requests match the contract
//! (§1.1 openai, §3 custom, §7 pipeline, §8 mapping) and the assets in `es-config/` and
//! `ingest-pipelines/`, for each version line; a second run changes nothing; what `--print` shows
//! is exactly what is sent.

use serde_json::{json, Value};

use crate::fake_es::{parse_console, rendered_asset, sightline, FakeEs, FAKE_DIMS, FAKE_MODEL};

const INDEX: &str = "photos";
/// The physical index `setup --print` names behind the alias (`--model-name` gives no
/// fingerprint); against the fake sidecar it also carries the fingerprint's start, `fake`.
const PRINTED_INDEX: &str = "photos-clip-vit-b-32-multilingual-v1";

fn print_args(version: &str) -> Vec<String> {
    [
        "setup",
        "--print",
        "--es-version",
        version,
        "--sidecar-url",
        "http://sightline:8080",
        "--sidecar-api-key",
        "side-key",
        "--index",
        INDEX,
        "--model-name",
        FAKE_MODEL,
        "--dimensions",
        "512",
        "--similarity",
        "dot_product",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

async fn print_for(version: &str) -> Vec<(String, String, Option<Value>)> {
    let args = print_args(version);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = sightline(&args).await;
    run.expect_code(0);
    parse_console(&run.stdout)
}

fn find<'a>(
    requests: &'a [(String, String, Option<Value>)],
    method: &str,
    path: &str,
) -> &'a Value {
    requests
        .iter()
        .find(|(m, p, _)| m == method && p == path)
        .and_then(|(_, _, body)| body.as_ref())
        .unwrap_or_else(|| {
            panic!(
                "no {method} {path} with a body in {:?}",
                requests
                    .iter()
                    .map(|(m, p, _)| format!("{m} {p}"))
                    .collect::<Vec<_>>()
            )
        })
}

fn expected_pipeline() -> Value {
    rendered_asset(
        "ingest-pipelines/image-embedding.json",
        &[("inference_id", json!("sightline-clip"))],
    )
}

#[tokio::test]
async fn print_for_each_version_line_matches_the_contract() {
    // (version, service, model location, chunking none, semantic pipeline, index_options type)
    let lines = [
        (
            "8.12.2",
            "openai",
            "/task_settings/model",
            false,
            false,
            "int8_hnsw",
        ),
        (
            "8.15.0",
            "openai",
            "/service_settings/model_id",
            false,
            false,
            "int8_hnsw",
        ),
        (
            "8.19.0",
            "custom",
            "/task_settings/parameters/model",
            true,
            true,
            "int8_hnsw",
        ),
        (
            "9.0.3",
            "openai",
            "/service_settings/model_id",
            false,
            false,
            "int8_hnsw",
        ),
        (
            "9.1.0",
            "custom",
            "/task_settings/parameters/model",
            true,
            true,
            "bbq_hnsw",
        ),
    ];
    for (version, service, model_pointer, chunking_none, semantic, index_type) in lines {
        let requests = print_for(version).await;
        let endpoint = find(&requests, "PUT", "_inference/text_embedding/sightline-clip");
        assert_eq!(endpoint["service"], service, "{version}");
        assert_eq!(
            endpoint["service_settings"]["url"], "http://sightline:8080/v1/embeddings",
            "{version}"
        );
        assert_eq!(
            endpoint["service_settings"]["similarity"], "dot_product",
            "{version}"
        );
        assert_eq!(
            endpoint.pointer(model_pointer),
            Some(&json!(FAKE_MODEL)),
            "{version}: model at {model_pointer}"
        );
        assert!(
            endpoint["service_settings"]
                .get("max_input_tokens")
                .is_none(),
            "{version}: contract §5.1"
        );
        assert_eq!(
            endpoint.get("chunking_settings").is_some(),
            chunking_none,
            "{version}"
        );
        if chunking_none {
            assert_eq!(
                endpoint["chunking_settings"],
                json!({"strategy": "none"}),
                "{version}"
            );
        }
        match service {
            "openai" => assert_eq!(endpoint["service_settings"]["api_key"], "side-key"),
            _ => {
                assert_eq!(
                    endpoint["service_settings"]["secret_parameters"]["api_key"],
                    "side-key"
                );
                let mut expected = rendered_asset(
                    "es-config/inference-custom.json",
                    &[
                        ("sidecar_url", json!("http://sightline:8080")),
                        ("sidecar_api_key", json!("side-key")),
                        ("model", json!(FAKE_MODEL)),
                        ("dims", json!(512)),
                        ("similarity", json!("dot_product")),
                        ("lane", json!("")),
                    ],
                );
                // setup adds the explicit rate limit (README "Rate limit")
                expected["service_settings"]["rate_limit"] =
                    json!({"requests_per_minute": 500_000});
                assert_eq!(endpoint, &expected, "{version}: custom body is the asset");
                let search = find(
                    &requests,
                    "PUT",
                    "_inference/text_embedding/sightline-clip-search",
                );
                expected["service_settings"]["url"] =
                    json!("http://sightline:8080/v1/embeddings?priority=search");
                assert_eq!(
                    search, &expected,
                    "{version}: the search twin differs only in its URL"
                );
            }
        }

        assert_eq!(
            find(&requests, "PUT", "_ingest/pipeline/sightline-photos"),
            &expected_pipeline(),
            "{version}"
        );
        let has_semantic = requests
            .iter()
            .any(|(_, p, _)| p == "_ingest/pipeline/sightline-photos-semantic");
        assert_eq!(has_semantic, semantic, "{version}");

        let template = find(&requests, "PUT", "_index_template/sightline-photos");
        // The template matches the physical index; clients name the alias `photos`.
        assert_eq!(template["index_patterns"], json!([PRINTED_INDEX]));
        let properties = &template["template"]["mappings"]["properties"];
        let vector = &properties["ml"]["properties"]["image_vector"];
        assert_eq!(vector["type"], "dense_vector");
        assert_eq!(vector["dims"], 512);
        assert_eq!(vector["similarity"], "dot_product");
        assert_eq!(vector["index_options"]["type"], index_type, "{version}");
        assert_eq!(
            properties["image_semantic"].get("type").is_some(),
            semantic,
            "{version}"
        );
        assert_eq!(
            template["template"]["settings"]["index"]["default_pipeline"],
            "sightline-photos"
        );
        let failed = find(&requests, "PUT", "_index_template/sightline-photos-failed");
        assert_eq!(failed["index_patterns"], json!(["photos-failed"]));
        assert!(
            requests.iter().any(|(m, p, b)| m == "PUT"
                && p == PRINTED_INDEX
                && b.as_ref() == Some(&json!({"aliases": {INDEX: {}}}))),
            "{version}: PUT {PRINTED_INDEX} with the alias {INDEX}"
        );

        let verifications: Vec<&Value> = requests
            .iter()
            .filter(|(m, p, _)| {
                m == "POST"
                    && (p == "_inference/text_embedding/sightline-clip"
                        || p == "_inference/text_embedding/sightline-clip-search")
            })
            .filter_map(|(_, _, b)| b.as_ref())
            .collect();
        assert_eq!(verifications.len(), 2, "{version}: one image and one text");
        assert!(verifications[0]["input"][0]
            .as_str()
            .unwrap()
            .starts_with("data:image/jpeg;base64,/9j/"));
        assert!(!verifications[1]["input"][0]
            .as_str()
            .unwrap()
            .starts_with("data:"));
    }
}

#[tokio::test]
async fn print_for_8_11_is_vectors_mode_template_and_index_only() {
    let args = print_args("8.11.4");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = sightline(&args).await;
    run.expect_code(0);
    assert!(
        run.stdout
            .contains("Mode vectors: Elasticsearch 8.11.4 has no Inference API (it needs 8.12+)"),
        "{}",
        run.stdout
    );
    let requests = parse_console(&run.stdout);
    let lines: Vec<String> = requests
        .iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        lines,
        [
            "PUT _index_template/sightline-photos",
            format!("PUT {PRINTED_INDEX}").as_str()
        ]
    );
    // a pipeline asked for on 8.11 names the version
    let mut forced = print_args("8.11.4");
    forced.extend(["--mode".to_owned(), "pipeline".to_owned()]);
    let forced: Vec<&str> = forced.iter().map(String::as_str).collect();
    let run = sightline(&forced).await;
    run.expect_code(2);
    assert!(run.stderr.contains("8.12"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "nothing printed: {}", run.stdout);
}

#[tokio::test]
async fn print_with_a_basic_licence_is_vectors_mode() {
    let mut args = print_args("9.1.0");
    args.extend(["--license".to_owned(), "basic".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = sightline(&args).await;
    run.expect_code(0);
    assert!(run.stdout.contains("Mode vectors:"), "{}", run.stdout);
    assert!(!run.stdout.contains("_inference"), "{}", run.stdout);
}

fn setup_args(fake: &FakeEs, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "setup",
        "--es",
        &fake.url,
        "--sidecar-url",
        &fake.sidecar_url(),
        "--index",
        INDEX,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

async fn setup(fake: &FakeEs, extra: &[&str]) -> crate::fake_es::Run {
    let args = setup_args(fake, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sightline(&args).await
}

#[tokio::test]
async fn setup_creates_everything_in_order_and_sends_what_print_shows() {
    let fake = FakeEs::start("8.15.0").await;
    let run = setup(&fake, &[]).await;
    run.expect_code(0);
    assert_eq!(
        fake.es_lines(),
        [
            "GET /",
            "GET /_license",
            "GET /_inference/text_embedding/sightline-clip",
            "PUT /_inference/text_embedding/sightline-clip",
            "GET /_inference/text_embedding/sightline-clip-search",
            "PUT /_inference/text_embedding/sightline-clip-search",
            "PUT /_ingest/pipeline/sightline-photos",
            "PUT /_index_template/sightline-photos",
            "PUT /_index_template/sightline-photos-failed",
            "HEAD /photos",
            "PUT /photos-clip-vit-b-32-multilingual-v1-fake",
            "HEAD /photos-failed",
            "PUT /photos-failed",
            "POST /_inference/text_embedding/sightline-clip",
            "POST /_inference/text_embedding/sightline-clip-search",
        ]
    );
    // the sidecar's /info decided dims and model
    let endpoint = fake.endpoint("sightline-clip").unwrap();
    assert_eq!(endpoint["service"], "openai");
    assert_eq!(endpoint["service_settings"]["model_id"], FAKE_MODEL);
    assert_eq!(
        endpoint["service_settings"]["url"],
        format!("{}/v1/embeddings", fake.sidecar_url())
    );
    let mappings = fake.index_mappings(INDEX).unwrap();
    assert_eq!(
        mappings["properties"]["ml"]["properties"]["image_vector"]["dims"],
        FAKE_DIMS
    );
    assert!(run.stdout.contains("ok, 8 dimensions"), "{}", run.stdout);

    // --print with the same inputs shows exactly the bodies that were sent
    let print = setup(&fake, &["--print"]).await;
    print.expect_code(0);
    let printed = parse_console(&print.stdout);
    for request in fake
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" || r.method == "POST")
    {
        let path = request.path.trim_start_matches('/');
        let body = if request.body.is_empty() {
            None
        } else {
            Some(request.json())
        };
        assert!(
            printed
                .iter()
                .any(|(m, p, b)| *m == request.method && p == path && *b == body),
            "{} {path} was sent but not printed identically",
            request.method
        );
    }
}

#[tokio::test]
async fn second_setup_changes_nothing() {
    let fake = FakeEs::start("9.1.0").await;
    setup(&fake, &[]).await.expect_code(0);
    assert_eq!(
        fake.endpoint("sightline-clip").unwrap()["service"],
        "custom"
    );
    assert!(fake.pipeline("sightline-photos-semantic").is_some());
    fake.clear_requests();

    let again = setup(&fake, &[]).await;
    again.expect_code(0);
    let lines = fake.es_lines();
    assert!(
        !lines.contains(&"PUT /_inference/text_embedding/sightline-clip".to_owned()),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("DELETE")), "{lines:?}");
    assert!(!lines.contains(&"PUT /photos".to_owned()), "{lines:?}");
    assert!(
        again.stdout.contains("already up to date"),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("exists, kept"), "{}", again.stdout);
}

#[tokio::test]
async fn changed_sidecar_url_recreates_the_endpoint_with_force() {
    let fake = FakeEs::start("8.15.0").await;
    setup(&fake, &[]).await.expect_code(0);
    fake.clear_requests();
    let moved = format!("{}/", fake.sidecar_url()); // same sidecar, but a URL that differs
    let mut args = setup_args(
        &fake,
        &[
            "--sidecar-info-url",
            &format!("{}/info", fake.sidecar_url()),
        ],
    );
    let position = args.iter().position(|a| a == "--sidecar-url").unwrap();
    args[position + 1] = format!("{moved}v2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = sightline(&args).await;
    run.expect_code(0);
    let delete = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .expect("the old endpoint is deleted");
    assert_eq!(delete.path, "/_inference/text_embedding/sightline-clip");
    assert_eq!(
        delete.param("force").as_deref(),
        Some("true"),
        "our pipeline references it"
    );
    assert_eq!(
        fake.endpoint("sightline-clip").unwrap()["service_settings"]["url"],
        format!("{moved}v2/v1/embeddings")
    );
    assert!(run.stdout.contains("recreated"), "{}", run.stdout);
}

#[tokio::test]
async fn existing_index_with_other_dims_is_refused_not_replaced() {
    let fake = FakeEs::start("8.15.0").await;
    fake.seed_index(
        INDEX,
        json!({"properties": {"ml": {"properties": {"image_vector": {"type": "dense_vector", "dims": 256, "similarity": "dot_product"}}}}}),
    );
    let run = setup(&fake, &[]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("256 dimensions"), "{}", run.stderr);
    assert!(!fake.es_lines().contains(&"PUT /photos".to_owned()));
}

#[tokio::test]
async fn verification_catches_wrong_vector_length() {
    let fake = FakeEs::start("8.15.0").await;
    fake.script(|script| script.inference_dims = Some(FAKE_DIMS * 2));
    let run = setup(&fake, &[]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("16 dimensions"), "{}", run.stderr);
}

#[tokio::test]
async fn setup_on_8_11_is_vectors_mode_template_and_index_only() {
    let fake = FakeEs::start("8.11.1").await;
    let run = setup(&fake, &[]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("mode vectors:"), "{}", run.stdout);
    assert_eq!(
        fake.es_lines(),
        [
            "GET /",
            "GET /_license",
            "PUT /_index_template/sightline-photos",
            "HEAD /photos",
            "PUT /photos-clip-vit-b-32-multilingual-v1-fake"
        ]
    );
    assert_eq!(
        fake.aliases()["photos"],
        ["photos-clip-vit-b-32-multilingual-v1-fake"]
    );
}

#[tokio::test]
async fn endpoint_creation_failure_explains_the_probe() {
    let fake = FakeEs::start("8.15.0").await;
    fake.script(|script| {
        script.overrides.push(crate::fake_es::Override {
            method: "PUT",
            path_contains: "/_inference/",
            times: 1,
            status: 400,
            body: json!({"error": {"type": "status_exception", "reason": "Could not complete inference endpoint creation as validation call to service threw an exception."}, "status": 400}),
        })
    });
    let run = setup(&fake, &[]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("validation call"), "{}", run.stderr);
    assert!(
        run.stderr.contains("reachable from the cluster"),
        "{}",
        run.stderr
    );
}
