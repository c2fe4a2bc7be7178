//! `sightline ingest`: folders of images into the image index.
//!
//! The flow, batch by batch (`--bulk-size` files, `--concurrency` batches in flight):
//! 1. read each file and hash it; the SHA-256 is the document `_id`, so the same picture is one
//!    document however often or under whatever name it is ingested. With `--shard I/N` a file
//!    whose hash falls in another shard is dropped here, and a batch reads N times as many paths;
//! 2. ask `_mget` which ids the index already has, and drop those: a second run over the same
//!    folder sends no `_bulk` at all, and an interrupted run resumes where it stopped;
//! 3. decode the rest and build documents (metadata, thumbnail, and in vectors mode — the
//!    default — the vector from the sidecar or `--embed-locally`: base64 on 9.3+, floats before;
//!    with `--via-pipeline`, the base64 image the pipeline embeds);
//! 4. `_bulk` them with `create` through the pipeline. The whole request is retried with
//!    exponential backoff on 429/502/503/504 and on connection errors, and items that come back
//!    429/502/503/504 are retried on their own. A 409 on the index means another run got there
//!    first; a document the pipeline redirected to `<index>-failed` is a failure, with the
//!    pipeline's error message read back from that index;
//! 5. every file that finally failed, at any stage, is one JSON line in the failures file, and
//!    the run exits 1 if there is any.
//!
//! This file owns the configuration and that flow; each step's details live beside it:
//! `walk.rs` (finding files, `--files-from` lists), `shard.rs` (`--shard`), `document.rs` (`_id`
//! and fields), `bulk.rs` (the requests and their answers), `retry.rs` (backoff), `failures.rs`
//! (the failures file), `report.rs` (`ingest --report`: failures files merged), `redrive.rs`
//! (`ingest --redrive`: the documents the pipeline parked in `<index>-failed`, sent again).

mod bulk;
mod document;
mod failures;
mod redrive;
mod report;
mod retry;
mod shard;
mod walk;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use elasticsearch::http::StatusCode;
use elasticsearch::indices::{IndicesCreateParts, IndicesExistsParts, IndicesRefreshParts};
use elasticsearch::ingest::IngestGetPipelineParts;
use elasticsearch::Elasticsearch;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::IgnoredAny;

use super::assets::{self, IndexParams};
use super::client::{call, cluster_info};
use super::image::{prepare, ImageOptions};
use super::local::LocalEmbedder;
use super::model_info::read_index_record;
use super::semantic_pipeline_name;
use bulk::send_with_retries;
pub(crate) use bulk::{existing_ids, make_entry, Entry};
pub(crate) use document::{base64_vector, content_id};
use document::{build_document, DocumentVector};
pub(crate) use failures::{FailureLog, FailureRecord};
pub(crate) use redrive::{parse_data_uri, redrive};
pub(crate) use report::merge_failures;
pub(crate) use retry::RetryPolicy;
pub(crate) use shard::Shard;
pub(crate) use walk::read_path_list;
use walk::walk;

/// Where vectors come from.
#[derive(Clone)]
pub(crate) enum IngestMode {
    /// The cluster embeds through this pipeline (8.12+, enterprise/trial).
    Pipeline(String),
    /// The CLI gets vectors (sidecar or local engine) and sends them finished (any version or
    /// licence).
    Vectors(Arc<dyn LocalEmbedder>),
}

impl std::fmt::Debug for IngestMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngestMode::Pipeline(name) => write!(f, "Pipeline({name})"),
            IngestMode::Vectors(embedder) => write!(f, "Vectors({})", embedder.model().name),
        }
    }
}

/// Everything `ingest` needs.
#[derive(Debug, Clone)]
pub(crate) struct IngestConfig {
    pub(crate) paths: Vec<PathBuf>,
    pub(crate) index: String,
    pub(crate) mode: IngestMode,
    pub(crate) concurrency: usize,
    pub(crate) bulk_size: usize,
    /// Upper bound of one `_bulk` body; a batch that would exceed it is split.
    pub(crate) bulk_max_bytes: usize,
    pub(crate) retry: RetryPolicy,
    pub(crate) failures_path: PathBuf,
    pub(crate) image: ImageOptions,
    pub(crate) progress: bool,
    /// `_refresh` at the end so a search right after sees the new documents.
    pub(crate) refresh: bool,
    /// Only the files of this shard (`--shard I/N`).
    pub(crate) shard: Option<Shard>,
}

/// Counts at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IngestReport {
    /// Image files found by the walk.
    pub(crate) found: usize,
    pub(crate) indexed: usize,
    /// Already in the index (found by `_mget`, or a 409 from a concurrent run).
    pub(crate) already_present: usize,
    /// Same content as another file of this run.
    pub(crate) duplicates: usize,
    pub(crate) failed: usize,
    /// Read, and left to the other shards (`--shard`).
    pub(crate) other_shards: usize,
}

impl IngestReport {
    fn add(&mut self, other: &IngestReport) {
        self.indexed += other.indexed;
        self.already_present += other.already_present;
        self.duplicates += other.duplicates;
        self.failed += other.failed;
        self.other_shards += other.other_shards;
    }
}

/// One run's shared state; `reindex` builds one too, to send its documents the same way.
pub(crate) struct RunState {
    client: Elasticsearch,
    config: IngestConfig,
    /// What preflight learnt about the cluster and the index.
    target: Target,
    seen: Mutex<HashSet<String>>,
    failures: FailureLog,
    progress: ProgressBar,
}

impl RunState {
    /// For another command that writes documents with `send_entries` (`reindex`).
    pub(crate) fn new(
        client: Elasticsearch,
        config: IngestConfig,
        target: Target,
        failures: FailureLog,
        progress: ProgressBar,
    ) -> RunState {
        RunState {
            client,
            config,
            target,
            seen: Mutex::new(HashSet::new()),
            failures,
            progress,
        }
    }

    pub(crate) fn fail(&self, record: FailureRecord, report: &mut IngestReport) -> Result<()> {
        self.progress.suspend(|| {
            tracing::debug!(path = %record.path, stage = record.stage, reason = %record.reason, "image failed");
        });
        self.failures.write(&record)?;
        report.failed += 1;
        self.progress.inc(1);
        Ok(())
    }
}

/// Runs the whole ingest. `Err` only for problems that stop everything (cluster unreachable,
/// bad credentials, missing pipeline); per-file problems are counted and logged.
pub(crate) async fn run(client: Elasticsearch, config: IngestConfig) -> Result<IngestReport> {
    let target = preflight(&client, &config).await?;
    let failures = FailureLog::create(&config.failures_path)?;
    let (files, walk_failures) = walk(&config.paths);
    let mut report = IngestReport {
        found: files.len(),
        ..IngestReport::default()
    };
    let progress = if config.progress {
        let bar =
            ProgressBar::with_draw_target(Some(files.len() as u64), ProgressDrawTarget::stderr());
        let shard = config
            .shard
            .map(|shard| format!("shard {shard} · "))
            .unwrap_or_default();
        let style = ProgressStyle::with_template(&format!(
            "{{spinner}} {shard}{{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} images · {{per_sec}} · ETA {{eta}}",
        ))
        .context("invalid progress template")?
        .progress_chars("=> ");
        bar.set_style(style);
        bar
    } else {
        ProgressBar::hidden()
    };
    let context = Arc::new(RunState {
        client,
        target,
        seen: Mutex::new(HashSet::new()),
        failures,
        progress,
        config,
    });
    for record in walk_failures {
        context.failures.write(&record)?;
        report.failed += 1;
    }

    // About `bulk_size` of a batch's paths land in this shard.
    let shards = context.config.shard.map_or(1, |shard| shard.count());
    let bulk_size = context.config.bulk_size.max(1).saturating_mul(shards);
    let batches: Vec<Vec<PathBuf>> = files.chunks(bulk_size).map(<[PathBuf]>::to_vec).collect();
    let mut results = futures::stream::iter(batches)
        .map(|batch| process_batch(Arc::clone(&context), batch))
        .buffer_unordered(context.config.concurrency.max(1));
    while let Some(batch_report) = results.next().await {
        report.add(&batch_report?);
    }
    drop(results);
    context.progress.finish_and_clear();

    if context.config.refresh && report.indexed > 0 {
        let request = format!("POST {}/_refresh", context.config.index);
        let index = [context.config.index.as_str()];
        let indices = context.client.indices();
        let refresh = indices.refresh(IndicesRefreshParts::Index(&index));
        call::<IgnoredAny>(&request, refresh.send()).await?;
    }
    Ok(report)
}

/// What the documents of a run depend on.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Vectors go as base64 strings (9.3+).
    pub(crate) base64_vectors: bool,
    /// The fingerprint the index recorded at setup (`_meta`), if any.
    pub(crate) recorded_fingerprint: Option<String>,
}

/// Fails early, with a fix, on what would otherwise fail every document.
async fn preflight(client: &Elasticsearch, config: &IngestConfig) -> Result<Target> {
    let cluster = cluster_info(client).await?;
    let record = read_index_record(client, &config.index).await?;
    if let IngestMode::Vectors(embedder) = &config.mode {
        super::model_info::check_same_model(
            &config.index,
            record.fingerprint.as_deref(),
            embedder.model(),
        )?;
    }
    let target = Target {
        base64_vectors: cluster.accepts_base64_vectors(),
        recorded_fingerprint: record.fingerprint,
    };
    match &config.mode {
        IngestMode::Pipeline(pipeline) => {
            if !cluster.has_inference_api() {
                bail!(
                    "Elasticsearch {} cannot call the sidecar (the inference API needs 8.12+); drop --via-pipeline (ingest then sends vectors from the sidecar) or use --embed-locally --model-dir DIR",
                    cluster.version
                );
            }
            let license = super::mode::read_license(client).await?;
            if !cluster.serverless && !super::mode::license_allows_inference(license.as_ref()) {
                bail!(
                    "--via-pipeline needs the Inference API, which the cluster's {} does not cover (it needs an active enterprise or trial licence); drop --via-pipeline: ingest then sends vectors from the sidecar",
                    super::mode::describe_license(license.as_ref())
                );
            }
            // A vectors-mode index (e.g. one `reindex` filled with another model) may hold
            // vectors of a model the pipeline's endpoint does not serve: the pipeline cannot
            // check that, so it is not used there.
            if record.mode == Some(super::mode::Mode::Vectors) {
                bail!(
                    "index {} was set up for vectors from the sidecar (`_meta.mode: vectors`, by `setup --mode vectors` or `reindex`); its pipeline could embed with another model: drop --via-pipeline",
                    config.index
                );
            }
            let request = format!("GET _ingest/pipeline/{pipeline}");
            let ingest = client.ingest();
            let get = ingest.get_pipeline(IngestGetPipelineParts::Id(pipeline));
            match call::<IgnoredAny>(&request, get.send()).await {
                Ok(_) => {}
                Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => {
                    if *pipeline == semantic_pipeline_name(&config.index)
                        && !cluster.supports_semantic_images()
                    {
                        bail!(
                            "--semantic needs Elasticsearch 8.19+ or 9.1+ (chunking_settings strategy none); this cluster is {}",
                            cluster.version
                        );
                    }
                    bail!("ingest pipeline {pipeline} does not exist; run `sightline setup --index {}` first", config.index);
                }
                Err(err) => return Err(err.into()),
            }
        }
        IngestMode::Vectors(embedder) => {
            let request = format!("HEAD {}", config.index);
            let index = [config.index.as_str()];
            let indices = client.indices();
            let exists = indices.exists(IndicesExistsParts::Index(&index));
            match call::<()>(&request, exists.send()).await {
                Ok(()) => {}
                Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => {
                    // No setup can run below 8.12, so the index is created here, with the same
                    // mapping minus the pipeline.
                    let model = embedder.model();
                    let params = IndexParams::vectors_mode(&config.index, model);
                    let body = assets::create_index_body(&params, &cluster)?;
                    let request = format!("PUT {}", config.index);
                    let create = indices
                        .create(IndicesCreateParts::Index(&config.index))
                        .body(body);
                    call::<IgnoredAny>(&request, create.send()).await?;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(target)
}

/// A file read and hashed.
struct Loaded {
    path: PathBuf,
    id: String,
    bytes: Vec<u8>,
}

async fn process_batch(context: Arc<RunState>, paths: Vec<PathBuf>) -> Result<IngestReport> {
    let mut report = IngestReport::default();

    // 1. read and hash, off the async threads; other shards' bytes are dropped at once, so a
    //    batch holds about `--bulk-size` files' bytes whatever the shard count
    let shard = context.config.shard;
    let (read_results, other_shards) = tokio::task::spawn_blocking(move || {
        let mut other_shards = 0;
        let results = paths
            .into_iter()
            .filter_map(|path| match std::fs::read(&path) {
                Ok(bytes) => {
                    let id = content_id(&bytes);
                    if shard.is_some_and(|shard| !shard.owns(&id)) {
                        other_shards += 1;
                        return None;
                    }
                    Some(Ok(Loaded { id, path, bytes }))
                }
                // Without the content there is no shard: every shard reports the file, and
                // `ingest --report` lists it once.
                Err(err) => Some(Err(FailureRecord::new(
                    &path,
                    None,
                    "read",
                    format!("cannot read: {err}"),
                ))),
            })
            .collect::<Vec<_>>();
        (results, other_shards)
    })
    .await
    .context("the file reading task failed")?;
    report.other_shards += other_shards;
    context.progress.inc(other_shards as u64);
    let mut loaded = Vec::with_capacity(read_results.len());
    for result in read_results {
        match result {
            Ok(file) => loaded.push(file),
            Err(record) => context.fail(record, &mut report)?,
        }
    }

    // 2. drop duplicates within the run
    {
        let mut seen = context
            .seen
            .lock()
            .map_err(|_| anyhow::anyhow!("the seen-ids lock is poisoned"))?;
        loaded.retain(|file| {
            let new = seen.insert(file.id.clone());
            if !new {
                report.duplicates += 1;
                context.progress.inc(1);
            }
            new
        });
    }
    if loaded.is_empty() {
        return Ok(report);
    }

    // 3. skip what the index already holds
    let ids: Vec<String> = loaded.iter().map(|file| file.id.clone()).collect();
    let present = existing_ids(&context, &ids).await?;
    loaded.retain(|file| {
        let keep = !present.contains(&file.id);
        if !keep {
            report.already_present += 1;
            context.progress.inc(1);
        }
        keep
    });
    if loaded.is_empty() {
        return Ok(report);
    }

    // 4. decode and build documents
    let options = context.config.image;
    let prepared = tokio::task::spawn_blocking(move || {
        loaded
            .into_iter()
            .map(|file| {
                let result = prepare(&file.bytes, options);
                (file.path, file.id, file.bytes.len(), result)
            })
            .collect::<Vec<_>>()
    })
    .await
    .context("the image decoding task failed")?;
    let mut images = Vec::with_capacity(prepared.len());
    for (path, id, size, result) in prepared {
        match result {
            Ok(image) => images.push((path, id, size, image)),
            Err(err) => context.fail(
                FailureRecord::new(&path, Some(&id), "decode", format!("{err:#}")),
                &mut report,
            )?,
        }
    }

    let entries = match &context.config.mode {
        IngestMode::Pipeline(_) => images
            .iter()
            .map(|(path, id, size, image)| {
                make_entry(
                    &context.config.index,
                    path,
                    id,
                    build_document(
                        path,
                        id,
                        *size,
                        image,
                        DocumentVector::Pipeline {
                            fingerprint: context
                                .target
                                .recorded_fingerprint
                                .as_deref()
                                .unwrap_or(""),
                        },
                    ),
                )
            })
            .collect::<Result<Vec<_>>>()?,
        IngestMode::Vectors(embedder) => {
            let payloads = images
                .iter()
                .map(|(_, _, _, image)| (image.payload_mime, image.payload.clone()))
                .collect();
            let vectors = embedder.embed_images(payloads).await;
            let model = embedder.model();
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let mut entries = Vec::with_capacity(images.len());
            for ((path, id, size, image), vector) in images.iter().zip(vectors) {
                match vector {
                    Ok(vector) if vector.len() == model.dimensions => {
                        let document = build_document(
                            path,
                            id,
                            *size,
                            image,
                            DocumentVector::Local {
                                vector: &vector,
                                model: &model.name,
                                fingerprint: &model.fingerprint,
                                base64: context.target.base64_vectors,
                                ingested_at_ms: now_ms,
                            },
                        );
                        entries.push(make_entry(&context.config.index, path, id, document)?);
                    }
                    Ok(vector) => context.fail(
                        FailureRecord::wrong_dimensions(
                            path,
                            id,
                            "engine",
                            vector.len(),
                            model.dimensions,
                        ),
                        &mut report,
                    )?,
                    Err(reason) => context.fail(
                        FailureRecord::new(path, Some(id), "embed", reason),
                        &mut report,
                    )?,
                }
            }
            entries
        }
    };

    // 5. bulk, split by size
    send_entries(&context, entries, &mut report).await?;
    Ok(report)
}

/// `_bulk` in requests of at most `--bulk-max-bytes`; returns the ids now in the index.
pub(crate) async fn send_entries(
    context: &RunState,
    entries: Vec<Entry>,
    report: &mut IngestReport,
) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let mut request: Vec<Entry> = Vec::new();
    let mut request_bytes = 0;
    for entry in entries {
        if !request.is_empty() && request_bytes + entry.size() > context.config.bulk_max_bytes {
            done.extend(send_with_retries(context, std::mem::take(&mut request), report).await?);
            request_bytes = 0;
        }
        request_bytes += entry.size();
        request.push(entry);
    }
    if !request.is_empty() {
        done.extend(send_with_retries(context, request, report).await?);
    }
    Ok(done)
}

/// Small images for the unit tests of this module's files.
#[cfg(test)]
mod test_images {
    use std::io::Cursor;

    pub(super) fn png_bytes(seed: u8) -> Vec<u8> {
        let image =
            image::RgbImage::from_fn(8, 6, |x, y| image::Rgb([x as u8 * seed, y as u8, seed]));
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }
}
