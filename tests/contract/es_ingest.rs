//! `sightline ingest` against the fake cluster: every good image indexed exactly once under its
//! content hash, broken ones in the failures file, nothing new sent on a second run, retries on
//! 429 (whole request and single items), pipeline redirects and item errors reported (all with
//! `--via-pipeline`), and `--embed-locally` on a cluster without the inference API. Vectors mode
//! (the default, through the sidecar) and `--redrive` are in `es_modes.rs`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::fake_es::{
    fixture_images, sightline, sightline_with_env, FakeEs, Override, Run, DROP_CONNECTION,
};

const INDEX: &str = "photos";
const PIPELINE: &str = "sightline-photos";

/// Good fixture images used as the sample folder (a mix of formats and sizes).
pub(crate) const GOOD: [&str; 6] = [
    "landscape.jpg",
    "portrait.png",
    "image.webp",
    "animated.gif",
    "large-2400x1600.jpg",
    "exif-rot90.jpg",
];

pub(crate) fn id_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A folder with the good images, a duplicate of one under another name in a subfolder, every
/// broken fixture, and a text file that must be ignored.
pub(crate) fn sample_folder() -> (tempfile::TempDir, Vec<PathBuf>, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixture_images();
    let mut good = Vec::new();
    for name in GOOD {
        let target = dir.path().join(name);
        std::fs::copy(fixtures.join(name), &target).unwrap();
        good.push(target);
    }
    std::fs::create_dir_all(dir.path().join("nested/deeper")).unwrap();
    std::fs::copy(
        fixtures.join(GOOD[0]),
        dir.path().join("nested/deeper/copy-of-landscape.jpeg"),
    )
    .unwrap();
    std::fs::write(dir.path().join("nested/readme.txt"), "not an image").unwrap();
    let mut broken = Vec::new();
    std::fs::create_dir_all(dir.path().join("broken")).unwrap();
    for entry in std::fs::read_dir(fixtures.join("broken"))
        .unwrap()
        .flatten()
    {
        let target = dir.path().join("broken").join(entry.file_name());
        std::fs::copy(entry.path(), &target).unwrap();
        broken.push(target);
    }
    assert!(!broken.is_empty(), "the fixtures have broken images");
    (dir, good, broken)
}

/// A temporary folder holding the first `n` good fixture images.
fn folder_of_good(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in &GOOD[..n] {
        std::fs::copy(fixture_images().join(name), dir.path().join(name)).unwrap();
    }
    dir
}

/// `_bulk` answered with `status` (or a cut connection) for the next `times` requests.
fn bulk_fails(times: usize, status: u16, body: Value) -> Override {
    Override {
        method: "POST",
        path_contains: "/_bulk",
        times,
        status,
        body,
    }
}

/// Elasticsearch's body for a request its queues rejected.
fn rejected() -> Value {
    json!({"error": {"type": "es_rejected_execution_exception", "reason": "rejected execution"}, "status": 429})
}

async fn ingest(fake: &FakeEs, folder: &Path, failures: &Path, extra: &[&str]) -> Run {
    let folder = folder.display().to_string();
    let failures = failures.display().to_string();
    let mut args = vec![
        "ingest",
        &folder,
        "--es",
        &fake.url,
        "--index",
        INDEX,
        "--failures",
        &failures,
        "--no-progress",
        "--retry-initial-delay-ms",
        "1",
        "--retry-max-delay-ms",
        "5",
    ];
    // These tests are about the pipeline path; vectors mode has its own in es_modes.rs.
    if !extra.contains(&"--embed-locally") && !extra.contains(&"--semantic") {
        args.push("--via-pipeline");
    }
    args.extend_from_slice(extra);
    sightline(&args).await
}

pub(crate) fn failure_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("failures file holds JSON lines"))
        .collect()
}

/// A fake cluster with the pipeline `setup` would have created.
async fn cluster_with_pipeline(version: &str) -> FakeEs {
    let fake = FakeEs::start(version).await;
    fake.seed_pipeline(PIPELINE, json!({"processors": []}));
    fake
}

#[tokio::test]
async fn good_images_once_broken_reported_and_second_run_sends_nothing() {
    let fake = cluster_with_pipeline("8.15.0").await;
    let (dir, good, broken) = sample_folder();
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(
        &fake,
        dir.path(),
        &failures,
        &["--bulk-size", "4", "--concurrency", "2"],
    )
    .await;
    run.expect_code(1);

    // every good image exactly once, under its content hash; the duplicate is not a second doc
    let docs = fake.docs(INDEX);
    let mut expected_ids: Vec<String> = good.iter().map(|p| id_of(p)).collect();
    expected_ids.sort();
    assert_eq!(docs.keys().cloned().collect::<Vec<_>>(), expected_ids);
    for (id, doc) in &docs {
        assert_eq!(doc["content_hash"], id.as_str());
        assert!(
            doc.get("image_b64").is_none(),
            "the pipeline removed the full image"
        );
        assert!(!doc["thumbnail"].as_str().unwrap().is_empty());
        assert!(doc["width"].as_u64().unwrap() > 0 && doc["height"].as_u64().unwrap() > 0);
    }
    let landscape = &docs[&id_of(&good[0])];
    assert_eq!(landscape["format"], "jpeg");
    assert!(
        landscape["path"]
            .as_str()
            .unwrap()
            .ends_with("landscape.jpg")
            || landscape["path"]
                .as_str()
                .unwrap()
                .ends_with("copy-of-landscape.jpeg")
    );

    // every bulk went through the pipeline with `create`, ids = sha256, images as data URIs
    let bulks: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/photos/_bulk")
        .collect();
    assert!(!bulks.is_empty());
    for bulk in &bulks {
        assert_eq!(bulk.param("pipeline").as_deref(), Some(PIPELINE));
        for pair in bulk.ndjson().chunks(2) {
            let action = &pair[0]["create"];
            assert_eq!(action["_index"], INDEX);
            assert!(expected_ids.contains(&action["_id"].as_str().unwrap().to_owned()));
            assert!(pair[1]["image_b64"]
                .as_str()
                .unwrap()
                .starts_with("data:image/"));
        }
    }
    let large = bulks
        .iter()
        .flat_map(|b| b.ndjson())
        .find(|line| line["file_name"] == "large-2400x1600.jpg")
        .unwrap();
    assert_eq!(large["width"], 2400, "metadata keeps the original size");

    // every broken file in the failures file, nothing else
    let records = failure_lines(&failures);
    let mut failed_paths: Vec<String> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    failed_paths.sort();
    let mut broken_paths: Vec<String> = broken.iter().map(|p| p.display().to_string()).collect();
    broken_paths.sort();
    assert_eq!(failed_paths, broken_paths);
    assert!(records
        .iter()
        .all(|r| r["stage"] == "decode" && !r["reason"].as_str().unwrap().is_empty()));
    assert!(
        run.stdout.contains(&format!("{} indexed", GOOD.len())),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("1 duplicates"), "{}", run.stdout);
    assert!(run.stderr.contains("failures.jsonl"), "{}", run.stderr);

    // second run: only existence checks, no _bulk, same failures
    let bulks_before = fake.count("POST", "/_bulk");
    let again = ingest(&fake, dir.path(), &failures, &["--bulk-size", "4"]).await;
    again.expect_code(1);
    assert_eq!(
        fake.count("POST", "/_bulk"),
        bulks_before,
        "a second run sends nothing new"
    );
    assert!(fake.count("POST", "/_mget") > 0);
    assert_eq!(fake.docs(INDEX).len(), GOOD.len());
    assert_eq!(failure_lines(&failures).len(), broken.len());
    assert!(
        again
            .stdout
            .contains(&format!("0 indexed, {} already in photos", GOOD.len())),
        "{}",
        again.stdout
    );
}

#[tokio::test]
async fn clean_folder_exits_zero() {
    let fake = cluster_with_pipeline("9.1.0").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_images().join("landscape.jpg"),
        dir.path().join("a.jpg"),
    )
    .unwrap();
    let failures = dir.path().join("failures.jsonl");
    ingest(&fake, dir.path(), &failures, &[])
        .await
        .expect_code(0);
    assert_eq!(fake.docs(INDEX).len(), 1);
    assert_eq!(std::fs::read_to_string(&failures).unwrap(), "");
    let refreshes = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/photos/_refresh")
        .count();
    assert_eq!(refreshes, 1, "refreshed so a search sees the documents");
}

#[tokio::test]
async fn whole_request_429s_are_retried_then_single_items() {
    let fake = cluster_with_pipeline("8.15.0").await;
    let dir = folder_of_good(3);
    let busy_id = id_of(&dir.path().join(GOOD[1]));
    fake.script(|script| {
        script.overrides.push(bulk_fails(2, 429, rejected()));
        script.item_429.insert(busy_id.clone(), 1);
    });
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, dir.path(), &failures, &[]).await;
    run.expect_code(0);
    assert_eq!(fake.docs(INDEX).len(), 3);
    let bulks: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/photos/_bulk")
        .collect();
    assert_eq!(
        bulks.len(),
        4,
        "two 429s, one full request, one retry of the rejected item"
    );
    assert_eq!(bulks[2].ndjson().len(), 6);
    let last = bulks[3].ndjson();
    assert_eq!(last.len(), 2, "only the rejected item is resent");
    assert_eq!(last[0]["create"]["_id"], busy_id.as_str());
}

#[tokio::test]
async fn broken_connection_during_bulk_is_retried() {
    let fake = cluster_with_pipeline("8.15.0").await;
    let dir = folder_of_good(2);
    fake.script(|script| {
        script
            .overrides
            .push(bulk_fails(1, DROP_CONNECTION, json!(null)))
    });
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, dir.path(), &failures, &[]).await;
    run.expect_code(0);
    assert_eq!(
        fake.count("POST", "/_bulk"),
        2,
        "the cut request is sent again"
    );
    assert_eq!(fake.docs(INDEX).len(), 2);
}

#[tokio::test]
async fn persistent_429_gives_up_and_records_every_item() {
    let fake = cluster_with_pipeline("8.15.0").await;
    let dir = folder_of_good(2);
    fake.script(|script| script.overrides.push(bulk_fails(100, 429, rejected())));
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, dir.path(), &failures, &["--max-retries", "2"]).await;
    run.expect_code(1);
    assert_eq!(
        fake.count("POST", "/_bulk"),
        3,
        "first attempt and two retries"
    );
    let records = failure_lines(&failures);
    assert_eq!(records.len(), 2);
    for record in records {
        assert_eq!(record["stage"], "bulk");
        assert_eq!(record["status"], 429);
        assert_eq!(record["attempts"], 3);
    }
}

#[tokio::test]
async fn unreachable_cluster_is_an_error_not_a_list_of_failures() {
    // a port nothing listens on: bind, note the address, close
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_images().join("landscape.jpg"),
        dir.path().join("a.jpg"),
    )
    .unwrap();
    let folder = dir.path().display().to_string();
    let url = format!("http://{closed}");
    let run = sightline(&[
        "ingest",
        &folder,
        "--es",
        &url,
        "--no-progress",
        "--via-pipeline",
    ])
    .await;
    run.expect_code(2);
    assert!(
        run.stderr.contains("no answer from Elasticsearch"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn pipeline_redirects_and_item_errors_are_failures_with_reasons() {
    let fake = cluster_with_pipeline("8.15.0").await;
    let dir = folder_of_good(3);
    let redirected_id = id_of(&dir.path().join(GOOD[0]));
    let rejected_id = id_of(&dir.path().join(GOOD[1]));
    fake.script(|script| {
        script.pipeline_fail_ids.insert(redirected_id.clone());
        script.item_errors.insert(
            rejected_id.clone(),
            (
                400,
                "document_parsing_exception".to_owned(),
                "failed to parse field [width]".to_owned(),
            ),
        );
    });
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, dir.path(), &failures, &[]).await;
    run.expect_code(1);
    assert_eq!(fake.docs(INDEX).len(), 1);
    let kept = fake.docs("photos-failed");
    assert!(
        kept.contains_key(&redirected_id),
        "the failed document is kept, not lost"
    );
    assert!(
        kept[&redirected_id]["image_b64"].is_string(),
        "with its image, for a later retry"
    );

    let records = failure_lines(&failures);
    assert_eq!(records.len(), 2);
    let redirected = records
        .iter()
        .find(|r| r["id"] == redirected_id.as_str())
        .unwrap();
    assert_eq!(redirected["stage"], "pipeline");
    let reason = redirected["reason"].as_str().unwrap();
    assert!(
        reason.contains("simulated inference failure"),
        "the pipeline's message is read back: {reason}"
    );
    assert!(reason.contains("photos-failed"), "{reason}");
    let rejected = records
        .iter()
        .find(|r| r["id"] == rejected_id.as_str())
        .unwrap();
    assert_eq!(rejected["stage"], "bulk");
    assert_eq!(rejected["status"], 400);
    assert_eq!(rejected["error_type"], "document_parsing_exception");
    assert_eq!(
        fake.count("POST", "/_bulk"),
        1,
        "400s are final, not retried"
    );
}

#[tokio::test]
async fn concurrent_run_409_counts_as_already_present() {
    let fake = cluster_with_pipeline("8.15.0").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_images().join("landscape.jpg"),
        dir.path().join("a.jpg"),
    )
    .unwrap();
    let id = id_of(&dir.path().join("a.jpg"));
    // The document appears after the existence check (another ingest won the race).
    fake.script(|script| {
        script.overrides.push(Override {
            method: "POST",
            path_contains: "/photos/_mget",
            times: 1,
            status: 200,
            body: json!({"docs": [{"_index": INDEX, "_id": id, "found": false}]}),
        })
    });
    fake.seed_doc(INDEX, &id, json!({"content_hash": id}));
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, dir.path(), &failures, &[]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("1 already in photos"), "{}", run.stdout);
    assert_eq!(fake.count("POST", "/_bulk"), 1);
}

#[tokio::test]
async fn missing_pipeline_says_to_run_setup() {
    let fake = FakeEs::start("8.15.0").await;
    let dir = tempfile::tempdir().unwrap();
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, &fixture_images(), &failures, &[]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("sightline setup"), "{}", run.stderr);
    assert_eq!(fake.count("POST", "/_bulk"), 0);
}

#[tokio::test]
async fn bad_credentials_stop_the_run() {
    let fake = cluster_with_pipeline("8.15.0").await;
    fake.script(|script| {
        script.overrides.push(Override {
            method: "POST",
            path_contains: "/_mget",
            times: 100,
            status: 401,
            body: json!({"error": {"type": "security_exception", "reason": "unable to authenticate user [elastic]"}, "status": 401}),
        })
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_images().join("landscape.jpg"),
        dir.path().join("a.jpg"),
    )
    .unwrap();
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, dir.path(), &failures, &[]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("--api-key"), "{}", run.stderr);
}

#[tokio::test]
async fn via_pipeline_on_a_cluster_without_inference_api_says_what_works() {
    let fake = FakeEs::start("8.11.0").await;
    let dir = tempfile::tempdir().unwrap();
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, &fixture_images(), &failures, &[]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("drop --via-pipeline"), "{}", run.stderr);
    assert!(run.stderr.contains("--embed-locally"), "{}", run.stderr);
}

/// The ONNX Runtime library the `sightline` child loads, found (and loaded) exactly as the engine
/// finds it: `ORT_DYLIB_PATH`, the `onnxruntime` Python package, the system paths. Missing, it
/// fails the test under `CI`; elsewhere the test is skipped, loudly.
pub(crate) fn ort_library(test: &str) -> Option<String> {
    match sightline::engine::runtime::init() {
        Ok(path) => Some(path.display().to_string()),
        Err(err) if std::env::var_os("CI").is_some() => {
            panic!("{test} needs the ONNX Runtime library in CI: {err:#}")
        }
        Err(err) => {
            eprintln!("\n*** SKIPPED {test}: {err:#} ***\n");
            None
        }
    }
}

#[tokio::test]
async fn embed_locally_on_8_11_creates_the_index_and_sends_vectors() {
    let Some(ort) = ort_library("embed_locally_on_8_11_creates_the_index_and_sends_vectors") else {
        return;
    };
    let fake = FakeEs::start("8.11.0").await;
    let dir = folder_of_good(2);
    std::fs::write(dir.path().join("broken.png"), b"\x89PNG\r\n\x1a\nnope").unwrap();
    let model_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
    let folder = dir.path().display().to_string();
    let failures = dir.path().join("failures.jsonl").display().to_string();
    let model = model_dir.display().to_string();
    let run = sightline_with_env(
        &[
            "ingest",
            &folder,
            "--es",
            &fake.url,
            "--index",
            INDEX,
            "--failures",
            &failures,
            "--no-progress",
            "--embed-locally",
            "--model-dir",
            &model,
        ],
        &[("ORT_DYLIB_PATH", &ort)],
    )
    .await;
    run.expect_code(1);

    let create = fake
        .requests()
        .into_iter()
        .find(|r| r.line() == "PUT /photos")
        .expect("index created");
    let body = create.json();
    let vector = &body["mappings"]["properties"]["ml"]["properties"]["image_vector"];
    assert_eq!(vector["dims"], 512, "dims from the model bundle");
    assert_eq!(vector["similarity"], "dot_product");
    assert_eq!(
        vector["index_options"]["type"], "hnsw",
        "8.11 has no int8_hnsw"
    );
    assert!(body.pointer("/settings/index/default_pipeline").is_none());

    let bulk = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/photos/_bulk")
        .expect("a bulk");
    assert_eq!(bulk.param("pipeline").as_deref(), Some("_none"));
    let docs = fake.docs(INDEX);
    assert_eq!(docs.len(), 2);
    for doc in docs.values() {
        assert!(doc.get("image_b64").is_none());
        let values = doc["ml"]["image_vector"].as_array().unwrap();
        assert_eq!(values.len(), 512);
        let norm: f64 = values.iter().map(|v| v.as_f64().unwrap().powi(2)).sum();
        assert!(
            (norm - 1.0).abs() < 1e-3,
            "unit length for dot_product, got {norm}"
        );
        assert_eq!(doc["ml"]["model_id"], "tiny-clip");
    }
    let records = failure_lines(Path::new(&failures));
    assert_eq!(records.len(), 1);
    assert!(records[0]["path"].as_str().unwrap().ends_with("broken.png"));
}

#[tokio::test]
async fn semantic_variant_is_refused_before_8_19() {
    let fake = cluster_with_pipeline("8.18.2").await;
    let dir = tempfile::tempdir().unwrap();
    let failures = dir.path().join("failures.jsonl");
    let run = ingest(&fake, &fixture_images(), &failures, &["--semantic"]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("8.19+ or 9.1+"), "{}", run.stderr);
}
