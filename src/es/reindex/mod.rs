//! `sightline reindex --from photos --model NAME`: the documents of one index, embedded again by
//! another model (the sidecar at `--sidecar-url` serves it), into a new index; then the alias
//! clients name moves onto it in one atomic `POST _aliases`.
//!
//! The steps:
//! 1. resolve `--from` (`alias.rs`): an alias, or an old-layout index of that name; read the
//!    fingerprint it recorded, and refuse when the sidecar does not serve `--model`;
//! 2. create the target (`<alias>-<model>-<fingerprint>` unless `--to`): the index template
//!    `sightline-<alias>` now matches the target and maps the new model's dims, similarity and
//!    fingerprint (vectors mode: the CLI sends finished vectors); an existing target must record
//!    the same model, or nothing is written (vectors of two models never share an index);
//! 3. read the source through a point in time, page by page (`source.rs`), skip ids the target
//!    already holds (`_mget`, so a rerun after an interruption sends nothing twice), re-read each
//!    document's image — the stored `image_b64` payload when the document has one, else the
//!    original file at its recorded `path`, which must still hash to the document's
//!    `content_hash` (the thumbnail is too small to embed) — embed it, and `_bulk` `create` the
//!    document with its metadata as stored and the new `ml` vector and fingerprint. `_bulk`,
//!    retries, the progress bar and the failures file are `ingest`'s (`es/ingest/`);
//! 4. when every document of the source is in the target (counted after a refresh; documents
//!    ingested meanwhile get another pass), move the alias. Until then it points at the old index,
//!    so searches keep working during the whole copy. With any failure the alias stays where it
//!    is: fix the files named in the failures file (or delete those documents) and run again.

mod alias;
mod source;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use elasticsearch::http::StatusCode;
use elasticsearch::indices::{
    IndicesCreateParts, IndicesExistsParts, IndicesPutIndexTemplateParts, IndicesRefreshParts,
};
use elasticsearch::Elasticsearch;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::IgnoredAny;
use serde_json::{json, Map, Value};

use super::assets::{self, IndexParams};
use super::client::{call, cluster_info};
use super::image::{prepare, ImageOptions};
use super::ingest::{
    base64_vector, content_id, existing_ids, make_entry, parse_data_uri, send_entries, FailureLog,
    FailureRecord, IngestConfig, IngestMode, IngestReport, RetryPolicy, RunState, Target,
};
use super::local::{LocalEmbedder, Payload};
use super::model_info::{check_same_model, read_index_record};
use super::{physical_index_name, template_name, FINGERPRINT_FIELD, IMAGE_FIELD, SEMANTIC_FIELD};
use crate::engine::ModelInfo;
pub(crate) use alias::Layout;

/// Passes over the source before giving up on documents that keep arriving.
const MAX_PASSES: usize = 3;
/// Upper bound on pages per pass, so a cluster that never stops answering hits cannot loop
/// forever (10⁶ pages × `--bulk-size`).
const MAX_PAGES: usize = 1_000_000;

/// Everything `reindex` needs.
#[derive(Clone)]
pub(crate) struct ReindexConfig {
    /// The alias (or old-layout index) clients name.
    pub(crate) from: String,
    /// The new physical index; `None`: [`physical_index_name`].
    pub(crate) to: Option<String>,
    /// The model asked for; the embedder must serve it.
    pub(crate) model: String,
    pub(crate) embedder: Arc<dyn LocalEmbedder>,
    pub(crate) bulk_size: usize,
    pub(crate) bulk_max_bytes: usize,
    pub(crate) retry: RetryPolicy,
    pub(crate) failures_path: PathBuf,
    pub(crate) image: ImageOptions,
    pub(crate) progress: bool,
    /// For an old-layout `--from` index: delete it and put the alias on the target in one step.
    pub(crate) replace_index: bool,
}

/// Where the alias is at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Switch {
    /// The alias now points at the target.
    Moved,
    /// It already pointed at an index of this model: nothing was done.
    AlreadyThere,
    /// Some documents failed: the alias still points at the old index.
    KeptFailures,
    /// Documents kept arriving in the old index: the alias still points at it.
    KeptStillArriving { source: u64, target: u64 },
    /// `--from` is an index, not an alias; moving needs `--replace-index`.
    KeptNeedsReplace,
}

/// What a run did.
#[derive(Debug, Clone)]
pub(crate) struct ReindexReport {
    pub(crate) layout: Layout,
    pub(crate) target: String,
    /// Documents read from the source, over all passes.
    pub(crate) read: usize,
    /// `indexed`: copied now; `already_present`: in the target from an earlier run; `failed`.
    pub(crate) counts: IngestReport,
    pub(crate) switch: Switch,
}

/// Runs the reindex. `Err` for what stops everything (cluster, source, model mismatch); a
/// document that cannot be copied is counted and written to the failures file.
pub(crate) async fn run(client: Elasticsearch, config: ReindexConfig) -> Result<ReindexReport> {
    let cluster = cluster_info(&client).await?;
    let (layout, source_fingerprint) = alias::resolve(&client, &config.from).await?;
    let model = config.embedder.model().clone();
    if model.name != config.model {
        bail!(
            "--model {} but the sidecar serves {} ({}); point --sidecar-url at a `sightline serve` of {}",
            config.model,
            model.name,
            model.fingerprint,
            config.model
        );
    }
    let target = config
        .to
        .clone()
        .unwrap_or_else(|| physical_index_name(layout.name(), &model));
    let mut report = ReindexReport {
        layout: layout.clone(),
        target: target.clone(),
        read: 0,
        counts: IngestReport::default(),
        switch: Switch::AlreadyThere,
    };
    if !model.fingerprint.is_empty() && source_fingerprint.as_deref() == Some(&model.fingerprint) {
        report.target = layout.index().to_owned();
        return Ok(report);
    }
    if target == layout.index() {
        // Writing model B's vectors into the index the alias reads is mixing: the fingerprints
        // say why; the same model there was handled above.
        check_same_model(&target, source_fingerprint.as_deref(), &model)?;
        bail!(
            "--to {target} is the index {} already points at",
            layout.name()
        );
    }
    ensure_target(&client, &cluster, layout.name(), &target, &model).await?;

    let failures = FailureLog::create(&config.failures_path)?;
    let progress = progress_bar(config.progress)?;
    let state = RunState::new(
        client.clone(),
        IngestConfig {
            paths: Vec::new(),
            index: target.clone(),
            mode: IngestMode::Vectors(Arc::clone(&config.embedder)),
            concurrency: 1,
            bulk_size: config.bulk_size,
            bulk_max_bytes: config.bulk_max_bytes,
            retry: config.retry,
            failures_path: config.failures_path.clone(),
            image: config.image,
            progress: config.progress,
            refresh: false,
            shard: None,
        },
        Target {
            base64_vectors: cluster.accepts_base64_vectors(),
            recorded_fingerprint: Some(model.fingerprint.clone()),
        },
        failures,
        progress.clone(),
    );
    let copy = Copy {
        state: &state,
        progress: &progress,
        target: &target,
        client: &client,
        source_index: layout.index(),
        model: &model,
        config: &config,
        base64: cluster.accepts_base64_vectors(),
    };
    report.switch = Switch::KeptFailures;
    for _ in 0..MAX_PASSES {
        report.read += copy.pass(&mut report.counts).await?;
        if report.counts.failed > 0 {
            break;
        }
        refresh(&client, &target).await?;
        refresh(&client, layout.index()).await?;
        let have = source::count(&client, &target).await?;
        let want = source::count(&client, layout.index()).await?;
        if have >= want {
            report.switch = match alias::move_actions(&layout, &target, config.replace_index) {
                Some(actions) => {
                    alias::apply(&client, &actions).await?;
                    Switch::Moved
                }
                None => Switch::KeptNeedsReplace,
            };
            break;
        }
        report.switch = Switch::KeptStillArriving {
            source: want,
            target: have,
        };
    }
    progress.finish_and_clear();
    Ok(report)
}

fn progress_bar(shown: bool) -> Result<ProgressBar> {
    if !shown {
        return Ok(ProgressBar::hidden());
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} documents · {per_sec} · ETA {eta}",
    )
    .context("invalid progress template")?
    .progress_chars("=> ");
    bar.set_style(style);
    Ok(bar)
}

/// The target exists with this model, or is created: the alias's template now matches it and
/// maps the new model (no pipeline: documents arrive with their vector).
async fn ensure_target(
    client: &Elasticsearch,
    cluster: &super::version::Cluster,
    alias: &str,
    target: &str,
    model: &ModelInfo,
) -> Result<()> {
    let indices = client.indices();
    let names = [target];
    match call::<()>(
        &format!("HEAD {target}"),
        indices.exists(IndicesExistsParts::Index(&names)).send(),
    )
    .await
    {
        Ok(()) => {
            // An earlier, interrupted run, or an index of another model: only the first may be
            // continued.
            let recorded = read_index_record(client, target).await?.fingerprint;
            return check_same_model(target, recorded.as_deref(), model);
        }
        Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => {}
        Err(err) => return Err(err.into()),
    }
    let params = IndexParams::vectors_mode(target, model);
    let template = template_name(alias);
    let body = assets::index_template_body(&params, cluster)?;
    call::<IgnoredAny>(
        &format!("PUT _index_template/{template}"),
        indices
            .put_index_template(IndicesPutIndexTemplateParts::Name(&template))
            .body(body)
            .send(),
    )
    .await?;
    call::<IgnoredAny>(
        &format!("PUT {target}"),
        indices.create(IndicesCreateParts::Index(target)).send(),
    )
    .await?;
    Ok(())
}

async fn refresh(client: &Elasticsearch, index: &str) -> Result<()> {
    let names = [index];
    call::<IgnoredAny>(
        &format!("POST {index}/_refresh"),
        client
            .indices()
            .refresh(IndicesRefreshParts::Index(&names))
            .send(),
    )
    .await?;
    Ok(())
}

/// One copy of the source into the target.
struct Copy<'a> {
    state: &'a RunState,
    progress: &'a ProgressBar,
    target: &'a str,
    client: &'a Elasticsearch,
    source_index: &'a str,
    model: &'a ModelInfo,
    config: &'a ReindexConfig,
    base64: bool,
}

impl Copy<'_> {
    /// Reads the source once; returns how many documents it read.
    async fn pass(&self, counts: &mut IngestReport) -> Result<usize> {
        let mut snapshot = source::Snapshot::open(self.client, self.source_index).await?;
        let outcome = self.pages(&mut snapshot, counts).await;
        snapshot.close(self.client).await;
        outcome
    }

    async fn pages(
        &self,
        snapshot: &mut source::Snapshot,
        counts: &mut IngestReport,
    ) -> Result<usize> {
        let mut read = 0;
        for _ in 0..MAX_PAGES {
            let docs = snapshot
                .next_page(self.client, self.config.bulk_size.max(1))
                .await?;
            if let Some(total) = snapshot.total {
                self.progress.set_length(total);
            }
            if docs.is_empty() {
                break;
            }
            read += docs.len();
            self.page(docs, counts).await?;
        }
        Ok(read)
    }

    async fn page(&self, docs: Vec<source::SourceDoc>, counts: &mut IngestReport) -> Result<()> {
        let ids: Vec<String> = docs.iter().map(|doc| doc.id.clone()).collect();
        let present = existing_ids(self.state, &ids).await?;
        let mut todo = Vec::with_capacity(docs.len());
        for doc in docs {
            if present.contains(&doc.id) {
                counts.already_present += 1;
                self.progress.inc(1);
            } else {
                todo.push(doc);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let options = self.config.image;
        let loaded = tokio::task::spawn_blocking(move || {
            todo.into_iter()
                .map(|doc| {
                    let payload = load_image(&doc, options);
                    (doc, payload)
                })
                .collect::<Vec<_>>()
        })
        .await
        .context("the file reading task failed")?;
        let mut ready = Vec::with_capacity(loaded.len());
        for (doc, payload) in loaded {
            match payload {
                Ok(payload) => ready.push((doc, payload)),
                Err(record) => self.state.fail(record, counts)?,
            }
        }
        let payloads = ready.iter().map(|(_, payload)| payload.clone()).collect();
        let vectors = self.config.embedder.embed_images(payloads).await;
        let mut entries = Vec::with_capacity(ready.len());
        for ((doc, _), vector) in ready.into_iter().zip(vectors) {
            let path = recorded_path(&doc);
            match vector {
                Ok(vector) if vector.len() == self.model.dimensions => {
                    let document = reembedded(doc.source, &vector, self.model, self.base64);
                    entries.push(make_entry(self.target, &path, &doc.id, document)?);
                }
                Ok(vector) => self.state.fail(
                    FailureRecord::wrong_dimensions(
                        &path,
                        &doc.id,
                        "sidecar",
                        vector.len(),
                        self.model.dimensions,
                    ),
                    counts,
                )?,
                Err(reason) => self.state.fail(
                    FailureRecord::new(&path, Some(&doc.id), "embed", reason),
                    counts,
                )?,
            }
        }
        send_entries(self.state, entries, counts).await?;
        Ok(())
    }
}

/// The document's recorded `path`, or its id when it has none (for the failures file).
fn recorded_path(doc: &source::SourceDoc) -> PathBuf {
    PathBuf::from(
        doc.source
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or(&doc.id),
    )
}

/// The image to embed again: the stored `image_b64` payload when the document has one, else the
/// original file at its recorded path, which must still be the picture the document was made
/// from (its SHA-256 is the `content_hash`).
fn load_image(doc: &source::SourceDoc, options: ImageOptions) -> Result<Payload, FailureRecord> {
    let path = recorded_path(doc);
    let fail = |stage, reason: String| FailureRecord::new(&path, Some(&doc.id), stage, reason);
    if let Some(payload) = doc
        .source
        .get(IMAGE_FIELD)
        .and_then(Value::as_str)
        .and_then(parse_data_uri)
    {
        return Ok(payload);
    }
    if doc.source.get("path").and_then(Value::as_str).is_none() {
        return Err(fail(
            "source",
            "the document records no path and no image payload, so there is nothing to embed again (the thumbnail is too small)".to_owned(),
        ));
    }
    let bytes = std::fs::read(&path).map_err(|err| {
        fail(
            "source",
            format!(
                "the original file is gone ({err}); the thumbnail is too small to embed: restore the file at this path, or delete the document, and run reindex again"
            ),
        )
    })?;
    let expected = doc
        .source
        .get("content_hash")
        .and_then(Value::as_str)
        .unwrap_or(&doc.id);
    let found = content_id(&bytes);
    if found != expected {
        return Err(fail(
            "source",
            format!("the file changed since it was ingested (its SHA-256 is {found}, the document's content_hash {expected}); ingest it again as a new document"),
        ));
    }
    let image = prepare(&bytes, options).map_err(|err| fail("decode", format!("{err:#}")))?;
    Ok((image.payload_mime, image.payload))
}

/// The stored document with the old model's fields replaced: the new vector and model id in
/// `ml`, the new fingerprint; the rest of the metadata (path, sizes, thumbnail, `ingested_at`,
/// fields added by users) as stored.
fn reembedded(
    mut source: Map<String, Value>,
    vector: &[f32],
    model: &ModelInfo,
    base64: bool,
) -> Value {
    for field in [IMAGE_FIELD, SEMANTIC_FIELD, "ml", FINGERPRINT_FIELD] {
        source.remove(field);
    }
    let value = if base64 {
        json!(base64_vector(vector))
    } else {
        json!(vector)
    };
    source.insert(
        "ml".to_owned(),
        json!({"image_vector": value, "model_id": model.name}),
    );
    if !model.fingerprint.is_empty() {
        source.insert(FINGERPRINT_FIELD.to_owned(), json!(model.fingerprint));
    }
    Value::Object(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Similarity;

    fn model() -> ModelInfo {
        ModelInfo {
            name: "b".to_owned(),
            dimensions: 2,
            normalized: true,
            similarity: Similarity::DotProduct,
            modalities: Vec::new(),
            max_seq_len: 0,
            serving: None,
            fingerprint: "sha256:bb".to_owned(),
        }
    }

    fn doc(source: Value) -> source::SourceDoc {
        source::SourceDoc {
            id: "abc".to_owned(),
            source: source.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn the_new_document_keeps_metadata_and_replaces_the_model_fields() {
        let stored = json!({"path": "a.jpg", "ingested_at": 7, "tags": ["x"], "image_semantic": "s",
            "ml": {"image_vector": [1.0, 0.0, 0.0], "model_id": "a"}, "model_fingerprint": "sha256:aa"});
        let document = reembedded(
            stored.as_object().unwrap().clone(),
            &[0.6, 0.8],
            &model(),
            false,
        );
        assert_eq!(
            document,
            json!({"path": "a.jpg", "ingested_at": 7, "tags": ["x"],
                "ml": {"image_vector": [0.6f32, 0.8f32], "model_id": "b"}, "model_fingerprint": "sha256:bb"})
        );
    }

    #[test]
    fn a_gone_or_changed_file_is_a_failure_naming_why() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone.png");
        let record = load_image(
            &doc(json!({"path": gone.to_str().unwrap(), "content_hash": "abc"})),
            ImageOptions::default(),
        )
        .unwrap_err();
        assert_eq!(record.stage, "source");
        assert!(
            record.reason.contains("original file is gone"),
            "{}",
            record.reason
        );
        let changed = dir.path().join("changed.png");
        std::fs::write(&changed, b"other bytes").unwrap();
        let record = load_image(
            &doc(json!({"path": changed.to_str().unwrap(), "content_hash": "abc"})),
            ImageOptions::default(),
        )
        .unwrap_err();
        assert!(
            record.reason.contains("changed since it was ingested"),
            "{}",
            record.reason
        );
        let record = load_image(
            &doc(json!({"content_hash": "abc"})),
            ImageOptions::default(),
        )
        .unwrap_err();
        assert!(record.reason.contains("no path"), "{}", record.reason);
    }

    #[test]
    fn a_stored_payload_is_used_before_the_file() {
        let payload = load_image(
            &doc(json!({"path": "/nowhere.png", "image_b64": "data:image/png;base64,iVBORw=="})),
            ImageOptions::default(),
        )
        .unwrap();
        assert_eq!(payload.0, "image/png");
    }
}
