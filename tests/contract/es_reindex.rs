//! `sightline reindex` against the fake cluster, from model A (the fake cluster's own sidecar:
//! 8 dimensions, fingerprint `sha256:fake`) to model B (the real engine on the tiny fixture
//! bundle, served in-process: other dimensions, its own fingerprint): the alias moves only once
//! every document is in the new index; searches through the alias issued between the bulk
//! requests (the fake cluster runs them at that moment) answer from the old index; a rerun after
//! an outage sends no document twice; a document whose file is gone is in the failures file and
//! the alias stays; commands that would mix the two models in one index are refused, naming both
//! fingerprints.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};

use crate::common::{sidecar_info, API_KEY};
use crate::es_ingest::GOOD;
use crate::fake_es::{
    fake_vector, fixture_images, sightline, stored_vector, FakeEs, License, Run, FAKE_DIMS,
    FAKE_FINGERPRINT, FAKE_MODEL,
};

const ALIAS: &str = "photos";
/// The index `setup` puts behind the alias for model A.
const OLD: &str = "photos-clip-vit-b-32-multilingual-v1-fake";

/// Model B: the engine on the tiny fixture bundle, on a loopback port.
struct ModelB {
    url: String,
    name: String,
    fingerprint: String,
    dims: usize,
}

async fn model_b() -> ModelB {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = crate::common::app();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let info = sidecar_info(&url).await;
    let b = ModelB {
        url,
        name: info["model"].as_str().unwrap().to_owned(),
        fingerprint: info["fingerprint"].as_str().unwrap().to_owned(),
        dims: info["dimensions"].as_u64().unwrap() as usize,
    };
    assert_ne!(b.fingerprint, FAKE_FINGERPRINT);
    assert_ne!(b.dims, FAKE_DIMS);
    b
}

/// A cluster (basic licence: vectors mode) whose alias `photos` holds the first `n` good images,
/// embedded by model A; the folder the files stay in.
async fn indexed_with_model_a(n: usize) -> (FakeEs, tempfile::TempDir) {
    let fake = FakeEs::start_licensed("9.1.0", License::Licensed("basic", "active")).await;
    let sidecar = fake.sidecar_url();
    sightline(&[
        "setup",
        "--es",
        &fake.url,
        "--sidecar-url",
        &sidecar,
        "--index",
        ALIAS,
    ])
    .await
    .expect_code(0);
    assert_eq!(fake.aliases()[ALIAS], [OLD]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("images")).unwrap();
    for name in &GOOD[..n] {
        std::fs::copy(
            fixture_images().join(name),
            dir.path().join("images").join(name),
        )
        .unwrap();
    }
    let folder = dir.path().join("images").display().to_string();
    let failures = dir
        .path()
        .join("ingest-failures.jsonl")
        .display()
        .to_string();
    sightline(&[
        "ingest",
        &folder,
        "--es",
        &fake.url,
        "--sidecar-url",
        &sidecar,
        "--index",
        ALIAS,
        "--failures",
        &failures,
        "--no-progress",
    ])
    .await
    .expect_code(0);
    assert_eq!(fake.docs(OLD).len(), n);
    (fake, dir)
}

async fn reindex(fake: &FakeEs, b: &ModelB, failures: &Path, extra: &[&str]) -> Run {
    let failures = failures.display().to_string();
    let mut args = vec![
        "reindex",
        "--from",
        ALIAS,
        "--model",
        &b.name,
        "--es",
        &fake.url,
        "--sidecar-url",
        &b.url,
        "--sidecar-api-key",
        API_KEY,
        "--failures",
        &failures,
        "--no-progress",
        "--bulk-size",
        "2",
        "--retry-initial-delay-ms",
        "1",
    ];
    args.extend_from_slice(extra);
    sightline(&args).await
}

/// The one index the alias points at.
fn behind_alias(fake: &FakeEs) -> String {
    let aliases = fake.aliases();
    assert_eq!(aliases[ALIAS].len(), 1, "{aliases:?}");
    aliases[ALIAS][0].clone()
}

/// Ids in the `create` actions of the `_bulk` requests to `index`.
fn created_ids(fake: &FakeEs, index: &str) -> Vec<String> {
    fake.requests()
        .iter()
        .filter(|r| r.path == format!("/{index}/_bulk"))
        .flat_map(|r| r.ndjson())
        .filter_map(|line| {
            line.pointer("/create/_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

fn ready() -> bool {
    crate::es_ingest::ort_library("es_reindex").is_some()
}

#[tokio::test]
async fn reindex_moves_the_alias_to_model_b_and_no_search_fails_meanwhile() {
    if !ready() {
        return;
    }
    let (fake, dir) = indexed_with_model_a(4).await;
    let b = model_b().await;
    // A client of model A searches through the alias before every bulk request of the copy.
    let query = fake_vector("a dog on a beach", FAKE_DIMS);
    let search = json!({"knn": {"field": "ml.image_vector", "query_vector": query, "k": 10, "num_candidates": 10},
                        "from": 0, "size": 10});
    fake.script(|script| script.search_during_bulk = Some((ALIAS.to_owned(), search)));
    let failures = dir.path().join("reindex-failures.jsonl");
    let run = reindex(&fake, &b, &failures, &[]).await;
    run.expect_code(0);
    let new = behind_alias(&fake);
    assert!(new.starts_with("photos-") && new != OLD, "{new}");
    assert!(
        run.stdout.contains(&format!(
            "4 documents read from {OLD}: 4 copied to {new}, 0 already there, 0 failed"
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("alias photos moved from {OLD} to {new}")),
        "{}",
        run.stdout
    );
    // 4 documents, 2 per bulk: 2 bulk requests, each preceded by a search answered by the old index
    let during = fake.searches_during_bulk();
    assert_eq!(during.len(), 2);
    for (status, answer) in &during {
        assert_eq!(*status, 200, "{answer}");
        let hits = answer["hits"]["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 4, "{answer}");
        assert!(hits.iter().all(|hit| hit["_index"] == OLD), "{answer}");
    }
    // the new index maps model B and holds every document with B's vector and the old metadata
    let mapping = fake.index_mappings(&new).unwrap();
    assert_eq!(
        mapping["_meta"]["model_fingerprint"],
        b.fingerprint.as_str()
    );
    assert_eq!(
        mapping["properties"]["ml"]["properties"]["image_vector"]["dims"],
        b.dims
    );
    let old_docs = fake.docs(OLD);
    let new_docs = fake.docs(&new);
    assert_eq!(
        old_docs.keys().collect::<Vec<_>>(),
        new_docs.keys().collect::<Vec<_>>()
    );
    for (id, doc) in &new_docs {
        let vector = stored_vector(&doc["ml"]["image_vector"]).unwrap();
        assert_eq!(vector.len(), b.dims, "{id}");
        let norm: f32 = vector.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{id}: {norm}");
        assert_eq!(doc["model_fingerprint"], b.fingerprint.as_str());
        assert_eq!(doc["ml"]["model_id"], b.name.as_str());
        for field in [
            "path",
            "file_name",
            "content_hash",
            "thumbnail",
            "width",
            "height",
            "bytes",
            "ingested_at",
        ] {
            assert_eq!(doc[field], old_docs[id][field], "{id} {field}");
        }
    }
    assert_eq!(created_ids(&fake, &new).len(), 4);
    assert_eq!(fake.open_pits(), 0, "every point in time is closed");
    assert_eq!(fake.count("POST", "/_aliases"), 1);
    // a second run finds the alias on B's index and sends nothing
    fake.clear_requests();
    let again = reindex(&fake, &b, &failures, &[]).await;
    again.expect_code(0);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    assert_eq!(fake.count("POST", "/_bulk"), 0);
    assert_eq!(fake.count("POST", "/_aliases"), 0);
}

#[tokio::test]
async fn a_rerun_after_an_interruption_sends_nothing_twice() {
    if !ready() {
        return;
    }
    let (fake, dir) = indexed_with_model_a(6).await;
    let b = model_b().await;
    // the first bulk goes through, then the cluster answers 503 to every bulk
    fake.script(|script| script.bulks_before_outage = Some(1));
    let failures = dir.path().join("reindex-failures.jsonl");
    let run = reindex(&fake, &b, &failures, &["--max-retries", "0"]).await;
    run.expect_code(1);
    assert!(
        run.stderr.contains("alias photos NOT moved"),
        "{}",
        run.stderr
    );
    assert_eq!(behind_alias(&fake), OLD);
    let target = fake
        .indices()
        .into_iter()
        .find(|i| i.starts_with("photos-") && i != OLD && !i.ends_with("-failed"))
        .expect("the new index exists");
    let first: BTreeSet<String> = fake.docs(&target).keys().cloned().collect();
    assert_eq!(first.len(), 2);
    assert_eq!(
        std::fs::read_to_string(&failures).unwrap().lines().count(),
        4
    );
    fake.script(|script| script.bulks_before_outage = None);
    fake.clear_requests();
    let rerun = reindex(&fake, &b, &failures, &[]).await;
    rerun.expect_code(0);
    assert!(rerun.stdout.contains("4 copied"), "{}", rerun.stdout);
    assert!(rerun.stdout.contains("2 already there"), "{}", rerun.stdout);
    let sent = created_ids(&fake, &target);
    let sent_set: BTreeSet<String> = sent.iter().cloned().collect();
    assert_eq!(sent.len(), 4, "each remaining document sent once: {sent:?}");
    assert!(
        sent_set.is_disjoint(&first),
        "documents already copied were sent again"
    );
    assert_eq!(fake.docs(&target).len(), 6);
    assert_eq!(behind_alias(&fake), target);
}

#[tokio::test]
async fn a_document_whose_file_is_gone_keeps_the_alias_on_the_old_index() {
    if !ready() {
        return;
    }
    let (fake, dir) = indexed_with_model_a(3).await;
    let b = model_b().await;
    let gone = dir.path().join("images").join(GOOD[1]);
    let kept = dir.path().join("kept");
    std::fs::rename(&gone, &kept).unwrap();
    let failures = dir.path().join("reindex-failures.jsonl");
    let run = reindex(&fake, &b, &failures, &[]).await;
    run.expect_code(1);
    assert!(run.stderr.contains("1 documents failed"), "{}", run.stderr);
    assert_eq!(behind_alias(&fake), OLD);
    let lines: Vec<Value> = std::fs::read_to_string(&failures)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["path"], gone.display().to_string());
    assert_eq!(lines[0]["stage"], "source");
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("original file is gone"),
        "{}",
        lines[0]
    );
    // the file is back: the rerun copies only it and moves the alias
    std::fs::rename(&kept, &gone).unwrap();
    let rerun = reindex(&fake, &b, &failures, &[]).await;
    rerun.expect_code(0);
    assert!(rerun.stdout.contains("1 copied to"), "{}", rerun.stdout);
    assert_ne!(behind_alias(&fake), OLD);
}

#[tokio::test]
async fn commands_that_would_mix_models_are_refused_naming_both_fingerprints() {
    if !ready() {
        return;
    }
    let (fake, dir) = indexed_with_model_a(2).await;
    let b = model_b().await;
    let failures = dir.path().join("reindex-failures.jsonl");
    reindex(&fake, &b, &failures, &[]).await.expect_code(0);
    let new = behind_alias(&fake);
    let sidecar_a = fake.sidecar_url();
    let both = |run: &Run| {
        assert!(
            run.stderr.contains(FAKE_FINGERPRINT) && run.stderr.contains(&b.fingerprint),
            "{}",
            run.stderr
        );
    };
    // ingest with model A into the alias, which now holds model B
    let folder = dir.path().join("images").display().to_string();
    let ingest_failures = dir.path().join("f.jsonl").display().to_string();
    let run = sightline(&[
        "ingest",
        &folder,
        "--es",
        &fake.url,
        "--sidecar-url",
        &sidecar_a,
        "--index",
        ALIAS,
        "--failures",
        &ingest_failures,
        "--no-progress",
    ])
    .await;
    run.expect_code(2);
    both(&run);
    // setup with model A on the alias
    let run = sightline(&[
        "setup",
        "--es",
        &fake.url,
        "--sidecar-url",
        &sidecar_a,
        "--index",
        ALIAS,
    ])
    .await;
    run.expect_code(2);
    both(&run);
    // a reindex back to A into B's index
    let run = sightline(&[
        "reindex",
        "--from",
        ALIAS,
        "--model",
        FAKE_MODEL,
        "--to",
        &new,
        "--es",
        &fake.url,
        "--sidecar-url",
        &sidecar_a,
        "--failures",
        &ingest_failures,
        "--no-progress",
    ])
    .await;
    run.expect_code(2);
    both(&run);
    // a model the sidecar does not serve
    let run = sightline(&[
        "reindex",
        "--from",
        ALIAS,
        "--model",
        "another-model",
        "--es",
        &fake.url,
        "--sidecar-url",
        &sidecar_a,
        "--failures",
        &ingest_failures,
        "--no-progress",
    ])
    .await;
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("the sidecar does not serve the model `another-model`; it serves"),
        "{}",
        run.stderr
    );
    assert_eq!(behind_alias(&fake), new);
}

#[tokio::test]
async fn an_index_from_before_aliases_becomes_an_alias_only_with_replace_index() {
    if !ready() {
        return;
    }
    // The layout of older setups: a concrete index named `photos`.
    let (fake, dir) = indexed_with_model_a(2).await;
    let mappings = fake.index_mappings(OLD).unwrap();
    let docs = fake.docs(OLD);
    let dropped = reqwest::Client::new()
        .post(format!("{}/_aliases", fake.url))
        .json(&json!({"actions": [{"remove_index": {"index": OLD}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(dropped.status(), 200);
    assert!(fake.aliases().is_empty());
    fake.seed_index(ALIAS, mappings);
    for (id, doc) in docs {
        fake.seed_doc(ALIAS, &id, doc);
    }
    let b = model_b().await;
    let failures = dir.path().join("reindex-failures.jsonl");
    let run = reindex(&fake, &b, &failures, &[]).await;
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("run the same command with --replace-index"),
        "{}",
        run.stderr
    );
    assert!(fake.indices().contains(&ALIAS.to_owned()));
    let run = reindex(&fake, &b, &failures, &["--replace-index"]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("2 already there"), "{}", run.stdout);
    let new = behind_alias(&fake);
    assert!(
        !fake.indices().contains(&ALIAS.to_owned()),
        "the old index is replaced by the alias"
    );
    assert_eq!(fake.docs(ALIAS).len(), 2);
    assert_eq!(fake.docs(&new).len(), 2);
}

#[tokio::test]
async fn setup_with_model_names_the_endpoints_for_it() {
    let fake = FakeEs::start("9.1.0").await;
    let sidecar = fake.sidecar_url();
    let run = sightline(&[
        "setup",
        "--es",
        &fake.url,
        "--sidecar-url",
        &sidecar,
        "--index",
        "photos-a",
        "--model",
        FAKE_MODEL,
    ])
    .await;
    run.expect_code(0);
    let id = "sightline-clip-vit-b-32-multilingual-v1";
    let endpoint = fake.endpoint(id).expect("endpoint named for the model");
    assert_eq!(endpoint["task_settings"]["parameters"]["model"], FAKE_MODEL);
    assert!(fake.endpoint(&format!("{id}-search")).is_some());
    assert!(fake.endpoint("sightline-clip").is_none());
    let pipeline = fake.pipeline("sightline-photos-a").unwrap();
    assert_eq!(pipeline["processors"][0]["inference"]["model_id"], id);
    let run = sightline(&[
        "setup",
        "--es",
        &fake.url,
        "--sidecar-url",
        &sidecar,
        "--index",
        "photos-b",
        "--model",
        "xlm-roberta-base-vit-b-32",
    ])
    .await;
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("the sidecar does not serve the model `xlm-roberta-base-vit-b-32`")
            && run.stderr.contains(&format!("it serves `{FAKE_MODEL}`")),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn one_sidecar_serving_both_models_reindexes_by_name() {
    // `serve --model-dir A --model-dir B`: the index made with A (the first model) moves to B,
    // named by --model, through the same sidecar.
    if !ready() {
        return;
    }
    let fake = FakeEs::start_licensed("9.1.0", License::Licensed("basic", "active")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = crate::multi_model::two_models();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let info = sidecar_info(&url).await;
    let negated = info["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == crate::multi_model::NEGATED)
        .expect("the second model in /info")
        .clone();
    let sidecar = ["--sidecar-url", url.as_str(), "--sidecar-api-key", API_KEY];
    let mut setup = vec!["setup", "--es", &fake.url, "--index", ALIAS];
    setup.extend_from_slice(&sidecar);
    sightline(&setup).await.expect_code(0);
    let first = behind_alias(&fake);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("images")).unwrap();
    for name in &GOOD[..2] {
        std::fs::copy(
            fixture_images().join(name),
            dir.path().join("images").join(name),
        )
        .unwrap();
    }
    let folder = dir.path().join("images").display().to_string();
    let failures = dir.path().join("failures.jsonl").display().to_string();
    let mut ingest = vec![
        "ingest",
        folder.as_str(),
        "--es",
        &fake.url,
        "--index",
        ALIAS,
        "--failures",
        &failures,
        "--no-progress",
    ];
    ingest.extend_from_slice(&sidecar);
    sightline(&ingest).await.expect_code(0);
    assert_eq!(fake.docs(&first).len(), 2);
    assert_eq!(
        fake.docs(&first).values().next().unwrap()["model_fingerprint"],
        info["fingerprint"]
    );

    let mut reindex = vec![
        "reindex",
        "--from",
        ALIAS,
        "--model",
        crate::multi_model::NEGATED,
        "--es",
        &fake.url,
        "--failures",
        &failures,
        "--no-progress",
    ];
    reindex.extend_from_slice(&sidecar);
    let run = sightline(&reindex).await;
    run.expect_code(0);
    let new = behind_alias(&fake);
    assert_ne!(new, first);
    let docs = fake.docs(&new);
    assert_eq!(docs.len(), 2);
    for doc in docs.values() {
        assert_eq!(doc["model_fingerprint"], negated["fingerprint"], "{doc}");
    }
    // A name the sidecar does not serve is refused before anything is read.
    let mut unknown = reindex.clone();
    unknown[4] = "no-such-model";
    let run = sightline(&unknown).await;
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("it serves `tiny-clip`, `tiny-clip-negated`"),
        "{}",
        run.stderr
    );
}
