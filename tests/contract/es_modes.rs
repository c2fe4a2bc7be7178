//! The two modes against the fake cluster, for licences basic / trial / enterprise and versions
//! 8.11, 8.15, 8.19, 9.1 and 9.3 (plus 8.3 and 7.17 for the older kNN forms):
//! - `setup` reads `GET _license` and picks `pipeline` (enterprise/trial, 8.12+) or `vectors`,
//!   says which and why, and creates exactly what that mode needs;
//! - `ingest` of a folder with broken images indexes every good image exactly once in either
//!   mode (vectors from the fake sidecar by default, `--via-pipeline` through the pipeline) and
//!   names every broken one; a second run sends nothing;
//! - `search` by text and by image finds the indexed image first in both modes, through the
//!   `-search` endpoint (pipeline) or the sidecar's priority lane (vectors);
//! - a sidecar answering 503 then 429 during ingest loses no document, and documents the
//!   pipeline parked in `<index>-failed` during an outage are indexed exactly once by
//!   `--redrive`, each deleted from the failed index only after it was indexed;
//! - two models never share an index.

use std::path::Path;

use serde_json::{json, Value};

use crate::es_ingest::{failure_lines, id_of, sample_folder, GOOD};
use crate::fake_es::{
    fixture_images, sightline, stored_vector, FakeEs, License, Run, FAKE_DIMS, FAKE_FINGERPRINT,
};

const INDEX: &str = "photos";
const VERSIONS: [&str; 5] = ["8.11.0", "8.15.0", "8.19.0", "9.1.0", "9.3.0"];
const LICENCES: [&str; 3] = ["basic", "trial", "enterprise"];

fn licensed(kind: &'static str) -> License {
    License::Licensed(kind, "active")
}

fn expected_mode(version: &str, licence: &str) -> &'static str {
    if version != "8.11.0" && licence != "basic" {
        "pipeline"
    } else {
        "vectors"
    }
}

/// `command` against the fake cluster and its sidecar, on `index`: the arguments every helper
/// below starts with.
fn cluster_args<'a>(
    command: &'a str,
    fake: &'a FakeEs,
    sidecar: &'a str,
    index: &'a str,
) -> Vec<&'a str> {
    vec![
        command,
        "--es",
        &fake.url,
        "--sidecar-url",
        sidecar,
        "--index",
        index,
    ]
}

async fn setup(fake: &FakeEs, index: &str, extra: &[&str]) -> Run {
    let sidecar = fake.sidecar_url();
    let mut args = cluster_args("setup", fake, &sidecar, index);
    args.extend_from_slice(extra);
    sightline(&args).await
}

async fn ingest(fake: &FakeEs, folder: &Path, failures: &Path, index: &str, extra: &[&str]) -> Run {
    let folder = folder.display().to_string();
    let failures = failures.display().to_string();
    let sidecar = fake.sidecar_url();
    let mut args = cluster_args("ingest", fake, &sidecar, index);
    args.insert(1, &folder);
    args.extend_from_slice(&[
        "--failures",
        &failures,
        "--no-progress",
        "--bulk-size",
        "4",
        "--retry-initial-delay-ms",
        "1",
        "--retry-max-delay-ms",
        "5",
    ]);
    args.extend_from_slice(extra);
    sightline(&args).await
}

async fn search(fake: &FakeEs, index: &str, query: &[&str]) -> Run {
    let sidecar = fake.sidecar_url();
    let mut args = cluster_args("search", fake, &sidecar, index);
    args.push("--json");
    args.extend_from_slice(query);
    sightline(&args).await
}

fn hit_ids(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("a JSON hit")["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn setup_picks_the_mode_from_licence_and_version_and_says_why() {
    for version in VERSIONS {
        for licence in LICENCES {
            let fake = FakeEs::start_licensed(version, licensed(licence)).await;
            let run = setup(&fake, INDEX, &[]).await;
            run.expect_code(0);
            let mode = expected_mode(version, licence);
            let line = run
                .stdout
                .lines()
                .find(|l| l.starts_with("mode "))
                .unwrap_or_else(|| panic!("{version} {licence}: no mode line\n{}", run.stdout));
            assert!(
                line.starts_with(&format!("mode {mode}:")),
                "{version} {licence}: {line}"
            );
            if version == "8.11.0" {
                assert!(line.contains("8.12"), "{line}");
            } else {
                assert!(line.contains(licence), "{line}");
            }
            assert!(
                run.stdout.contains("sightline ingest PATH"),
                "{}",
                run.stdout
            );
            assert!(run.stdout.contains("sightline search"), "{}", run.stdout);
            assert_eq!(fake.count("GET", "/_license"), 1);
            let mapping = fake.index_mappings(INDEX).expect("index created");
            assert_eq!(mapping["_meta"]["mode"], mode, "{version} {licence}");
            assert_eq!(mapping["_meta"]["model_fingerprint"], FAKE_FINGERPRINT);
            assert_eq!(
                mapping["properties"]["model_fingerprint"]["type"],
                "keyword"
            );
            let template = fake.template("sightline-photos").unwrap();
            let inference_calls = fake
                .requests()
                .iter()
                .filter(|r| r.path.starts_with("/_inference"))
                .count();
            match mode {
                "vectors" => {
                    assert_eq!(
                        inference_calls, 0,
                        "{version} {licence}: no endpoint in vectors mode"
                    );
                    assert!(fake.pipeline("sightline-photos").is_none());
                    assert!(fake.template("sightline-photos-failed").is_none());
                    assert!(template
                        .pointer("/template/settings/index/default_pipeline")
                        .is_none());
                }
                _ => {
                    let ingest = fake.endpoint("sightline-clip").expect("ingest endpoint");
                    let search = fake
                        .endpoint("sightline-clip-search")
                        .expect("search endpoint");
                    let url = search["service_settings"]["url"].as_str().unwrap();
                    assert!(url.ends_with("/v1/embeddings?priority=search"), "{url}");
                    assert!(!ingest["service_settings"]["url"]
                        .as_str()
                        .unwrap()
                        .contains("priority"));
                    assert_eq!(
                        ingest["service_settings"]["rate_limit"]["requests_per_minute"],
                        500_000
                    );
                    assert_eq!(
                        template["template"]["settings"]["index"]["default_pipeline"],
                        "sightline-photos"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn other_licences_and_forced_modes() {
    for (licence, mode) in [
        (License::Licensed("gold", "active"), "vectors"),
        (License::Licensed("platinum", "active"), "vectors"),
        (License::Licensed("enterprise", "expired"), "vectors"),
        (License::Licensed("trial", "expired"), "vectors"),
    ] {
        let fake = FakeEs::start_licensed("9.1.0", licence.clone()).await;
        let run = setup(&fake, INDEX, &[]).await;
        run.expect_code(0);
        assert!(
            run.stdout.contains(&format!("mode {mode}:")),
            "{licence:?}: {}",
            run.stdout
        );
    }
    // pipeline where the licence cannot serve it: a clear error naming the licence, nothing sent
    let fake = FakeEs::start_licensed("9.1.0", licensed("basic")).await;
    let run = setup(&fake, INDEX, &["--mode", "pipeline"]).await;
    run.expect_code(2);
    assert!(
        run.stderr.contains("basic licence (active)"),
        "{}",
        run.stderr
    );
    assert!(fake.template("sightline-photos").is_none());
    // vectors on an enterprise cluster when asked
    let fake = FakeEs::start_licensed("9.1.0", licensed("enterprise")).await;
    let run = setup(&fake, INDEX, &["--mode", "vectors"]).await;
    run.expect_code(0);
    assert!(
        run.stdout.contains("mode vectors: --mode vectors"),
        "{}",
        run.stdout
    );
    assert!(fake.endpoint("sightline-clip").is_none());
    // a 7.x OSS build has no licence API: vectors, and the index gets a plain dense_vector
    let fake = FakeEs::start_licensed("7.17.9", License::Oss).await;
    let run = setup(&fake, INDEX, &[]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("mode vectors:"), "{}", run.stdout);
    let vector =
        &fake.index_mappings(INDEX).unwrap()["properties"]["ml"]["properties"]["image_vector"];
    assert_eq!(vector, &json!({"type": "dense_vector", "dims": FAKE_DIMS}));
}

/// Every good image once under its content hash, every broken one named, vectors as the version
/// takes them; a second run sends nothing (no `_bulk`, no sidecar call).
fn check_ingest(
    fake: &FakeEs,
    index: &str,
    run: &Run,
    good: &[std::path::PathBuf],
    broken: &[std::path::PathBuf],
    failures: &Path,
    what: &str,
) {
    run.expect_code(1);
    let docs = fake.docs(index);
    let mut expected: Vec<String> = good.iter().map(|p| id_of(p)).collect();
    expected.sort();
    assert_eq!(docs.keys().cloned().collect::<Vec<_>>(), expected, "{what}");
    let created: usize = fake
        .requests()
        .iter()
        .filter(|r| r.path == format!("/{index}/_bulk"))
        .flat_map(|r| r.ndjson())
        .filter(|line| line.get("create").is_some())
        .count();
    assert_eq!(
        created,
        GOOD.len(),
        "{what}: each good image sent exactly once"
    );
    for doc in docs.values() {
        assert!(doc.get("image_b64").is_none(), "{what}");
        let vector = stored_vector(&doc["ml"]["image_vector"]).expect("a vector");
        assert_eq!(vector.len(), FAKE_DIMS, "{what}");
    }
    let mut failed: Vec<String> = failure_lines(failures)
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    failed.sort();
    let mut named: Vec<String> = broken.iter().map(|p| p.display().to_string()).collect();
    named.sort();
    assert_eq!(
        failed, named,
        "{what}: every broken image named, nothing else"
    );
}

#[tokio::test]
async fn ingest_and_search_in_either_mode_for_every_licence_and_version() {
    let (dir, good, broken) = sample_folder();
    let failures = dir.path().join("failures.jsonl");
    let landscape = fixture_images().join("landscape.jpg").display().to_string();
    for version in VERSIONS {
        for licence in LICENCES {
            let what = format!("{version} {licence}");
            let fake = FakeEs::start_licensed(version, licensed(licence)).await;
            setup(&fake, INDEX, &[]).await.expect_code(0);
            let mode = expected_mode(version, licence);

            // default: vectors from the sidecar, in every licence
            let run = ingest(&fake, dir.path(), &failures, INDEX, &[]).await;
            check_ingest(
                &fake,
                INDEX,
                &run,
                &good,
                &broken,
                &failures,
                &format!("{what} vectors"),
            );
            let doc = fake.docs(INDEX).into_values().next().unwrap();
            assert_eq!(doc["model_fingerprint"], FAKE_FINGERPRINT);
            assert_eq!(
                doc["ml"]["image_vector"].is_string(),
                version == "9.3.0",
                "{what}: base64 on 9.3+ only"
            );
            let embeds = fake.sidecar_embeddings();
            assert!(!embeds.is_empty());
            for request in &embeds {
                assert_eq!(
                    request.query, "modality=image",
                    "{what}: ingest is not on the priority lane"
                );
                let body = request.json();
                assert_eq!(body["encoding_format"], "base64");
                assert!(
                    body["input"].as_array().unwrap().len() <= 4,
                    "/info max_batch.image"
                );
            }
            assert!(
                embeds
                    .iter()
                    .any(|r| r.json()["input"].as_array().unwrap().len() > 1),
                "several images per request"
            );

            // second run: existence checks only
            let (bulks, sidecar_calls) = (fake.count("POST", "/_bulk"), embeds.len());
            let again = ingest(&fake, dir.path(), &failures, INDEX, &[]).await;
            again.expect_code(1);
            assert_eq!(
                fake.count("POST", "/_bulk"),
                bulks,
                "{what}: second run sends nothing"
            );
            assert_eq!(
                fake.sidecar_embeddings().len(),
                sidecar_calls,
                "{what}: second run embeds nothing"
            );

            // search by image: the same picture first; by text: through the priority lane
            let run = search(&fake, INDEX, &["--image", &landscape]).await;
            run.expect_code(0);
            assert_eq!(
                hit_ids(&run)[0],
                id_of(&fixture_images().join("landscape.jpg")),
                "{what}"
            );
            let run = search(&fake, INDEX, &["--text", "a red bicycle"]).await;
            run.expect_code(0);
            assert_eq!(hit_ids(&run).len(), GOOD.len(), "{what}");
            let last_search = fake
                .requests()
                .into_iter()
                .rev()
                .find(|r| r.path.ends_with("/_search"))
                .unwrap();
            let knn = &last_search.json()["knn"];
            match mode {
                "pipeline" => {
                    // the index was made by setup in pipeline mode: the cluster embeds the query
                    assert_eq!(
                        knn["query_vector_builder"]["text_embedding"]["model_id"],
                        "sightline-clip-search",
                        "{what}"
                    );
                }
                _ => {
                    assert_eq!(
                        knn["query_vector"].as_array().unwrap().len(),
                        FAKE_DIMS,
                        "{what}"
                    );
                    let query = fake.sidecar_embeddings().pop().unwrap();
                    assert_eq!(query.query, "modality=text&priority=search", "{what}");
                    assert_eq!(query.json()["input"], json!(["a red bicycle"]));
                }
            }

            if mode == "pipeline" {
                // --via-pipeline keeps today's path, into a second index
                setup(&fake, "piped", &[]).await.expect_code(0);
                let run = ingest(&fake, dir.path(), &failures, "piped", &["--via-pipeline"]).await;
                check_ingest(
                    &fake,
                    "piped",
                    &run,
                    &good,
                    &broken,
                    &failures,
                    &format!("{what} pipeline"),
                );
                let bulk = fake
                    .requests()
                    .into_iter()
                    .find(|r| r.path == "/piped/_bulk")
                    .unwrap();
                assert_eq!(bulk.param("pipeline").as_deref(), Some("sightline-piped"));
                let run = search(&fake, "piped", &["--image", &landscape]).await;
                run.expect_code(0);
                assert_eq!(
                    hit_ids(&run)[0],
                    id_of(&fixture_images().join("landscape.jpg")),
                    "{what} pipeline"
                );
                // and the vectors-mode search finds it too: same model, same vectors
                let run = search(
                    &fake,
                    "piped",
                    &["--image", &landscape, "--mode", "vectors"],
                )
                .await;
                run.expect_code(0);
                assert_eq!(
                    hit_ids(&run)[0],
                    id_of(&fixture_images().join("landscape.jpg")),
                    "{what} pipeline/vectors"
                );
            }
        }
    }
}

#[tokio::test]
async fn older_lines_get_knn_search_and_script_score() {
    let landscape = fixture_images().join("landscape.jpg").display().to_string();
    let dir = crate::es_ingest::sample_folder().0;
    for (version, path) in [
        ("8.3.3", "/photos/_knn_search"),
        ("7.17.9", "/photos/_search"),
    ] {
        let fake = FakeEs::start_licensed(version, licensed("basic")).await;
        setup(&fake, INDEX, &[]).await.expect_code(0);
        let failures = dir.path().join("f.jsonl");
        ingest(&fake, dir.path(), &failures, INDEX, &[])
            .await
            .expect_code(1);
        let run = search(&fake, INDEX, &["--image", &landscape]).await;
        run.expect_code(0);
        assert_eq!(
            hit_ids(&run)[0],
            id_of(&fixture_images().join("landscape.jpg")),
            "{version}"
        );
        let request = fake
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.path.contains("_search"))
            .unwrap();
        assert_eq!(request.path, path, "{version}");
        if version.starts_with('7') {
            assert!(request.json()["query"]["script_score"]["script"]["source"]
                .as_str()
                .unwrap()
                .starts_with("dotProduct("));
        }
    }
}

#[tokio::test]
async fn print_in_vectors_mode_fills_in_the_vector() {
    let fake = FakeEs::start_licensed("9.1.0", licensed("basic")).await;
    setup(&fake, INDEX, &[]).await.expect_code(0);
    let sidecar = fake.sidecar_url();
    let run = sightline(&[
        "search",
        "--es",
        &fake.url,
        "--sidecar-url",
        &sidecar,
        "--index",
        INDEX,
        "--text",
        "ein Hund",
        "--print",
    ])
    .await;
    run.expect_code(0);
    let requests = crate::fake_es::parse_console(&run.stdout);
    assert_eq!(requests.len(), 1);
    let (method, path, body) = &requests[0];
    assert_eq!((method.as_str(), path.as_str()), ("GET", "photos/_search"));
    let vector = body.as_ref().unwrap()["knn"]["query_vector"]
        .as_array()
        .unwrap();
    assert_eq!(vector.len(), FAKE_DIMS);
    assert_eq!(fake.count("POST", "/_search"), 0, "printed, not sent");
    // without a cluster: the form follows --es-version
    let run = sightline(&[
        "search",
        "--sidecar-url",
        &sidecar,
        "--mode",
        "vectors",
        "--es-version",
        "8.2.0",
        "--text",
        "x",
        "--print",
    ])
    .await;
    run.expect_code(0);
    assert!(
        run.stdout.starts_with("GET images/_knn_search\n"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn sidecar_not_ready_during_ingest_loses_nothing() {
    let fake = FakeEs::start_licensed("9.1.0", licensed("basic")).await;
    setup(&fake, INDEX, &[]).await.expect_code(0);
    // a restart: "not ready" (503, today's answer) then "try later" (429, the new one)
    fake.script(|script| script.sidecar_refusals = vec![503, 503, 429, 503, 429, 429]);
    let dir = tempfile::tempdir().unwrap();
    for name in GOOD {
        std::fs::copy(fixture_images().join(name), dir.path().join(name)).unwrap();
    }
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, dir.path(), &failures, INDEX, &[]).await;
    run.expect_code(0);
    assert_eq!(fake.docs(INDEX).len(), GOOD.len());
    assert!(
        fake.script(|script| script.sidecar_refusals.is_empty()),
        "every refusal was met and retried"
    );
    assert!(failure_lines(&failures).is_empty());
}

#[tokio::test]
async fn an_image_the_sidecar_refuses_fails_alone() {
    let fake = FakeEs::start_licensed("8.15.0", licensed("basic")).await;
    setup(&fake, INDEX, &[]).await.expect_code(0);
    let dir = tempfile::tempdir().unwrap();
    for name in GOOD {
        std::fs::copy(fixture_images().join(name), dir.path().join(name)).unwrap();
    }
    // a piece of the webp's base64: only that data URI is refused
    let webp = std::fs::read(fixture_images().join("image.webp")).unwrap();
    let marker = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &webp[..30]);
    fake.script(|script| script.sidecar_bad_inputs = vec![marker[..36].to_owned()]);
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, dir.path(), &failures, INDEX, &[]).await;
    run.expect_code(1);
    assert_eq!(fake.docs(INDEX).len(), GOOD.len() - 1);
    let records = failure_lines(&failures);
    assert_eq!(records.len(), 1);
    assert!(
        records[0]["path"].as_str().unwrap().ends_with("image.webp"),
        "{records:?}"
    );
    assert_eq!(records[0]["stage"], "embed");
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot decode the image"),
        "{records:?}"
    );
}

#[tokio::test]
async fn redrive_indexes_what_an_outage_parked_exactly_once() {
    for via_pipeline in [false, true] {
        let fake = FakeEs::start_licensed("8.19.0", licensed("enterprise")).await;
        setup(&fake, INDEX, &[]).await.expect_code(0);
        let dir = tempfile::tempdir().unwrap();
        for name in GOOD {
            std::fs::copy(fixture_images().join(name), dir.path().join(name)).unwrap();
        }
        let failures = dir.path().join("failures.jsonl");
        // the sidecar is down for 4 documents: custom's final 503, the pipeline parks them
        fake.script(|script| script.pipeline_outage = 4);
        let run = ingest(&fake, dir.path(), &failures, INDEX, &["--via-pipeline"]).await;
        run.expect_code(1);
        assert_eq!(fake.docs(INDEX).len(), GOOD.len() - 4);
        let parked: Vec<String> = fake.docs("photos-failed").keys().cloned().collect();
        assert_eq!(parked.len(), 4);
        assert!(failure_lines(&failures)
            .iter()
            .all(|r| r["reason"].as_str().unwrap().contains("[503]")));

        // one is still failing during the redrive when it goes through the pipeline
        if via_pipeline {
            fake.script(|script| script.pipeline_outage = 1);
        }
        fake.clear_requests();
        let sidecar = fake.sidecar_url();
        let failures_arg = failures.display().to_string();
        let mut args = vec![
            "ingest",
            "--redrive",
            "--es",
            &fake.url,
            "--sidecar-url",
            &sidecar,
            "--index",
            INDEX,
            "--failures",
            &failures_arg,
            "--no-progress",
        ];
        if via_pipeline {
            args.push("--via-pipeline");
        }
        let run = sightline(&args).await;
        let still = usize::from(via_pipeline);
        run.expect_code(if via_pipeline { 1 } else { 0 });
        assert!(
            run.stdout.contains(&format!(
                "4 documents in photos-failed: {} back in photos",
                4 - still
            )),
            "{}",
            run.stdout
        );
        assert_eq!(
            fake.docs(INDEX).len(),
            GOOD.len() - still,
            "via_pipeline={via_pipeline}"
        );
        assert_eq!(fake.docs("photos-failed").len(), still);
        if via_pipeline {
            let records = failure_lines(&failures);
            assert_eq!(records.len(), 1);
            assert!(
                records[0]["reason"].as_str().unwrap().contains("[503]"),
                "{records:?}"
            );
        }
        // exactly once, and no delete before the document was indexed
        let mut indexed_at = std::collections::HashMap::new();
        let mut sends = std::collections::HashMap::<String, usize>::new();
        for (position, request) in fake.requests().iter().enumerate() {
            let lines = request.ndjson_or_empty();
            if request.path == "/photos/_bulk" {
                for line in &lines {
                    if let Some(id) = line
                        .get("create")
                        .or(line.get("index"))
                        .and_then(|a| a["_id"].as_str())
                    {
                        *sends.entry(id.to_owned()).or_default() += 1;
                        indexed_at.entry(id.to_owned()).or_insert(position);
                    }
                }
            }
            if request.path == "/photos-failed/_bulk" {
                for line in &lines {
                    if let Some(id) = line.get("delete").and_then(|a| a["_id"].as_str()) {
                        let sent = indexed_at.get(id).copied();
                        assert!(
                            sent.is_some_and(|at| at < position),
                            "{id} deleted before it was indexed"
                        );
                    }
                }
            }
        }
        for id in &parked {
            assert_eq!(sends.get(id), Some(&1), "{id} re-sent exactly once");
        }
        // nothing left to do: a second redrive sends no document
        fake.clear_requests();
        if !via_pipeline {
            let run = sightline(&args).await;
            run.expect_code(0);
            assert_eq!(fake.count("POST", "/photos/_bulk"), 0);
        }
    }
}

#[tokio::test]
async fn two_models_never_share_an_index() {
    let fake = FakeEs::start_licensed("9.1.0", licensed("basic")).await;
    fake.seed_index(
        INDEX,
        json!({"_meta": {"model_fingerprint": "sha256:other-model"}, "properties": {}}),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_images().join("landscape.jpg"),
        dir.path().join("a.jpg"),
    )
    .unwrap();
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, dir.path(), &failures, INDEX, &[]).await;
    run.expect_code(2);
    assert!(
        run.stderr.contains("sha256:other-model") && run.stderr.contains(FAKE_FINGERPRINT),
        "{}",
        run.stderr
    );
    assert_eq!(fake.count("POST", "/_bulk"), 0);
    let run = search(&fake, INDEX, &["--text", "x", "--mode", "vectors"]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("sha256:other-model"), "{}", run.stderr);
    let run = setup(&fake, INDEX, &[]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("sha256:other-model"), "{}", run.stderr);
}

/// Photos for the measurement: `count` distinct 1024 × 768 JPEGs (quality 85, ≈ 150–250 KB, a
/// camera-like size once `ingest` shrinks larger ones to `--max-side 1024`).
fn photos(count: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..count {
        let mut seed = (n as u32).wrapping_mul(2_654_435_761).wrapping_add(1);
        let image = image::RgbImage::from_fn(1024, 768, |x, y| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (seed >> 24) as u8 / 4;
            image::Rgb([
                ((x + n as u32 * 7) % 256) as u8 ^ noise,
                ((y * 3 + n as u32) % 256) as u8,
                (((x ^ y) + n as u32 * 13) % 256) as u8 ^ noise,
            ])
        });
        let mut out = std::fs::File::create(dir.path().join(format!("photo-{n:04}.jpg"))).unwrap();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
            .encode_image(&image)
            .unwrap();
    }
    dir
}

/// The README's ingest figures: the same photos through the pipeline (the fake cluster calls a
/// real in-process sidecar, tiny-clip, one image per request as the `inference` processor does)
/// and in vectors mode (the CLI batches to the same sidecar), bytes of `_bulk` per document and
/// images/s. Run with
/// `cargo test --test contract es_modes::measure_ingest_modes -- --ignored --nocapture` (the dev
/// profile: dependencies at opt-level 2, Sightline itself unoptimised, on both sides alike).
#[tokio::test]
#[ignore = "a measurement for the README, not a check"]
async fn measure_ingest_modes() {
    let photos = photos(200);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sidecar = format!("http://{}", listener.local_addr().unwrap());
    let config = sightline::http::HttpConfig {
        api_key: None,
        ..crate::common::http_config()
    };
    let app = sightline::http::router(crate::common::engine(), config);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    println!("| mode | cluster | _bulk bytes per document | images/s |");
    println!("|---|---|---|---|");
    for (mode, version) in [
        ("pipeline (--via-pipeline)", "9.3.0"),
        ("vectors, float arrays", "9.1.0"),
        ("vectors, base64", "9.3.0"),
    ] {
        let fake = FakeEs::start_licensed(version, licensed("enterprise")).await;
        fake.script(|script| script.pipeline_sidecar = Some(sidecar.clone()));
        let run = sightline(&[
            "setup",
            "--es",
            &fake.url,
            "--sidecar-url",
            &sidecar,
            "--index",
            INDEX,
            "--no-verify",
        ])
        .await;
        run.expect_code(0);
        fake.clear_requests();
        let folder = photos.path().display().to_string();
        let failures = photos.path().join("failures.jsonl").display().to_string();
        let mut args = vec![
            "ingest",
            &folder,
            "--es",
            &fake.url,
            "--sidecar-url",
            &sidecar,
            "--index",
            INDEX,
            "--failures",
            &failures,
            "--no-progress",
            "--no-refresh",
        ];
        if mode.starts_with("pipeline") {
            args.push("--via-pipeline");
        }
        let started = std::time::Instant::now();
        sightline(&args).await.expect_code(0);
        let seconds = started.elapsed().as_secs_f64();
        let docs = fake.docs(INDEX).len();
        assert_eq!(docs, 200, "{mode}");
        let bytes: usize = fake
            .requests()
            .iter()
            .filter(|r| r.path == "/photos/_bulk")
            .map(|r| r.body.len())
            .sum();
        println!(
            "| {mode} | {version} | {} | {:.1} |",
            bytes / docs,
            docs as f64 / seconds
        );
    }
}

/// A folder holding one fixture image, and a failures path inside it.
fn one_image_folder() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_images().join("landscape.jpg"),
        dir.path().join("a.jpg"),
    )
    .unwrap();
    let failures = dir.path().join("failures.jsonl");
    (dir, failures)
}

#[tokio::test]
async fn via_pipeline_on_a_basic_licence_is_refused_naming_it() {
    let fake = FakeEs::start_licensed("9.1.0", licensed("basic")).await;
    setup(&fake, INDEX, &[]).await.expect_code(0);
    let (dir, failures) = one_image_folder();
    let run = ingest(&fake, dir.path(), &failures, INDEX, &["--via-pipeline"]).await;
    run.expect_code(2);
    assert!(
        run.stderr.contains("basic licence (active)") && run.stderr.contains("drop --via-pipeline"),
        "{}",
        run.stderr
    );
    assert_eq!(fake.count("POST", "/_bulk"), 0);
}

/// The real sidecar (tiny-clip, in process) behind vectors mode: the client reads its base64
/// answers, the index gets its 512-dim unit vectors, and a search by an indexed image finds it.
#[tokio::test]
async fn vectors_mode_against_the_real_sidecar() {
    if crate::es_ingest::ort_library("vectors_mode_against_the_real_sidecar").is_none() {
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sidecar = format!("http://{}", listener.local_addr().unwrap());
    let app = crate::common::app();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let key = crate::common::API_KEY;
    let fake = FakeEs::start_licensed("9.3.0", licensed("basic")).await;
    sightline(&[
        "setup",
        "--es",
        &fake.url,
        "--sidecar-url",
        &sidecar,
        "--sidecar-api-key",
        key,
        "--index",
        INDEX,
    ])
    .await
    .expect_code(0);
    let dir = tempfile::tempdir().unwrap();
    for name in &GOOD[..3] {
        std::fs::copy(fixture_images().join(name), dir.path().join(name)).unwrap();
    }
    let failures = dir.path().join("failures.jsonl").display().to_string();
    let folder = dir.path().display().to_string();
    let real = |extra: &[&str]| {
        let mut args = vec![
            "--es",
            fake.url.as_str(),
            "--sidecar-url",
            sidecar.as_str(),
            "--sidecar-api-key",
            key,
            "--index",
            INDEX,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let args = [
        vec!["ingest".to_owned(), folder.clone()],
        real(&["--failures", &failures, "--no-progress"]),
    ]
    .concat();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sightline(&args).await.expect_code(0);
    let docs = fake.docs(INDEX);
    assert_eq!(docs.len(), 3);
    for doc in docs.values() {
        let vector = stored_vector(&doc["ml"]["image_vector"]).expect("a base64 vector on 9.3");
        assert_eq!(vector.len(), crate::common::DIMS);
        crate::common::assert_unit(&vector, "an indexed vector");
        assert!(doc["model_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
    }
    let landscape = fixture_images().join("landscape.jpg").display().to_string();
    let args = [
        vec!["search".to_owned()],
        real(&["--json", "--image", &landscape]),
    ]
    .concat();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = sightline(&args).await;
    run.expect_code(0);
    assert_eq!(
        hit_ids(&run)[0],
        id_of(&fixture_images().join("landscape.jpg"))
    );
    // the fake sidecar serves another model: refused, naming both fingerprints
    let other = search(&fake, INDEX, &["--image", &landscape]).await;
    other.expect_code(2);
    assert!(other.stderr.contains(FAKE_FINGERPRINT), "{}", other.stderr);
}

#[tokio::test]
async fn via_pipeline_into_a_vectors_mode_index_is_refused() {
    // After `reindex` (or `setup --mode vectors`) the index may hold another model's vectors
    // than the pipeline's endpoint makes: the pipeline path must not mix them in.
    let fake = FakeEs::start_licensed("9.1.0", licensed("enterprise")).await;
    setup(&fake, INDEX, &["--mode", "vectors"])
        .await
        .expect_code(0);
    let (dir, failures) = one_image_folder();
    let run = ingest(&fake, dir.path(), &failures, INDEX, &["--via-pipeline"]).await;
    run.expect_code(2);
    assert!(
        run.stderr.contains("`_meta.mode: vectors`") && run.stderr.contains("drop --via-pipeline"),
        "{}",
        run.stderr
    );
    assert_eq!(fake.count("POST", "/_bulk"), 0);
    // Without the flag the same folder goes in as vectors.
    let run = ingest(&fake, dir.path(), &failures, INDEX, &[]).await;
    run.expect_code(0);
    assert_eq!(fake.docs(INDEX).len(), 1);
}
