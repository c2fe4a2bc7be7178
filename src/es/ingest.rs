//! `sightline ingest`: folders of images into the image index.
//!
//! The flow, batch by batch (`--bulk-size` files, `--concurrency` batches in flight):
//! 1. read each file and hash it; the SHA-256 is the document `_id`, so the same picture is one
//!    document however often or under whatever name it is ingested;
//! 2. ask `_mget` which ids the index already has, and drop those: a second run over the same
//!    folder sends no `_bulk` at all, and an interrupted run resumes where it stopped;
//! 3. decode the rest and build documents (base64 payload, metadata, thumbnail; with
//!    `--embed-locally`, the vector instead of the payload);
//! 4. `_bulk` them with `create` through the pipeline. The whole request is retried with
//!    exponential backoff on 429/502/503/504 and on connection errors, and items that come back
//!    429/502/503/504 are retried on their own. A 409 on the index means another run got there
//!    first; a document the pipeline redirected to `<index>-failed` is a failure, with the
//!    pipeline's error message read back from that index;
//! 5. every file that finally failed, at any stage, is one JSON line in the failures file, and
//!    the run exits 1 if there is any.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use elasticsearch::http::StatusCode;
use elasticsearch::indices::{IndicesCreateParts, IndicesExistsParts, IndicesRefreshParts};
use elasticsearch::ingest::IngestGetPipelineParts;
use elasticsearch::{BulkParts, Elasticsearch, MgetParts};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::assets::{self, IndexParams};
use super::client::{
    cluster_info, connection_error, describe_failure, error_reason, json_or_error,
};
use super::image::{has_image_extension, prepare, ImageOptions, PreparedImage};
use super::local::LocalEmbedder;
use super::{failed_index_name, semantic_pipeline_name, IMAGE_FIELD};
use crate::engine::format::{sniff_format, Sniffed};

/// Where vectors come from.
#[derive(Clone)]
pub enum IngestMode {
    /// The cluster embeds through this pipeline (8.12+).
    Pipeline(String),
    /// The CLI embeds and sends finished vectors (any version).
    Local(Arc<dyn LocalEmbedder>),
}

impl std::fmt::Debug for IngestMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngestMode::Pipeline(name) => write!(f, "Pipeline({name})"),
            IngestMode::Local(embedder) => write!(f, "Local({})", embedder.model().name),
        }
    }
}

/// Exponential backoff: `initial_delay × 2^(attempt-1)`, capped, with a little jitter so that
/// concurrent batches do not retry in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let base = self
            .initial_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let jitter_fraction = f64::from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
                % 250,
        ) / 1000.0;
        base.mul_f64(1.0 + jitter_fraction)
            .min(self.max_delay.max(self.initial_delay))
    }
}

/// Everything `ingest` needs.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub paths: Vec<PathBuf>,
    pub index: String,
    pub mode: IngestMode,
    pub concurrency: usize,
    pub bulk_size: usize,
    /// Upper bound of one `_bulk` body; a batch that would exceed it is split.
    pub bulk_max_bytes: usize,
    pub retry: RetryPolicy,
    pub failures_path: PathBuf,
    pub image: ImageOptions,
    pub progress: bool,
    /// `_refresh` at the end so a search right after sees the new documents.
    pub refresh: bool,
}

/// Counts at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Image files found by the walk.
    pub found: usize,
    pub indexed: usize,
    /// Already in the index (found by `_mget`, or a 409 from a concurrent run).
    pub already_present: usize,
    /// Same content as another file of this run.
    pub duplicates: usize,
    pub failed: usize,
}

impl IngestReport {
    fn add(&mut self, other: &IngestReport) {
        self.indexed += other.indexed;
        self.already_present += other.already_present;
        self.duplicates += other.duplicates;
        self.failed += other.failed;
    }
}

/// One line of the failures file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureRecord {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `walk`, `read`, `decode`, `embed`, `check`, `bulk` or `pipeline`.
    pub stage: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    pub reason: String,
    pub attempts: u32,
}

impl FailureRecord {
    fn new(path: &Path, id: Option<&str>, stage: &'static str, reason: impl Into<String>) -> Self {
        FailureRecord {
            path: path.display().to_string(),
            id: id.map(str::to_owned),
            stage,
            status: None,
            error_type: None,
            reason: reason.into(),
            attempts: 1,
        }
    }
}

/// The JSONL failures file, written as failures happen so an interrupted run keeps them.
struct FailureLog {
    writer: Mutex<BufWriter<File>>,
}

impl FailureLog {
    fn create(path: &Path) -> Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("cannot create the failures file {}", path.display()))?;
        Ok(FailureLog {
            writer: Mutex::new(BufWriter::new(file)),
        })
    }

    fn write(&self, record: &FailureRecord) -> Result<()> {
        let line = serde_json::to_string(record).context("cannot serialise a failure record")?;
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| anyhow::anyhow!("the failures file lock is poisoned"))?;
        writeln!(writer, "{line}").context("cannot write the failures file")?;
        writer.flush().context("cannot write the failures file")
    }
}

/// Files found under `roots`: regular files whose extension says image or whose first bytes do.
/// Hidden entries (`.git`, `.DS_Store`, …) below a root are skipped. A file given explicitly is
/// always taken, so that a broken image named on the command line is reported, not ignored.
pub fn walk(roots: &[PathBuf]) -> (Vec<PathBuf>, Vec<FailureRecord>) {
    let mut files = Vec::new();
    let mut failures = Vec::new();
    for root in roots {
        match std::fs::metadata(root) {
            Ok(meta) if meta.is_file() => {
                files.push(root.clone());
                continue;
            }
            Ok(_) => {}
            Err(err) => {
                failures.push(FailureRecord::new(
                    root,
                    None,
                    "walk",
                    format!("cannot open: {err}"),
                ));
                continue;
            }
        }
        let walker = walkdir::WalkDir::new(root)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|entry| {
                entry.depth() == 0 || !entry.file_name().to_string_lossy().starts_with('.')
            });
        for entry in walker {
            match entry {
                Ok(entry) if entry.file_type().is_file() => {
                    let path = entry.into_path();
                    if has_image_extension(&path) || looks_like_image(&path) {
                        files.push(path);
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    let path = err
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| root.clone());
                    failures.push(FailureRecord::new(&path, None, "walk", err.to_string()));
                }
            }
        }
    }
    (files, failures)
}

fn looks_like_image(path: &Path) -> bool {
    let mut head = [0u8; 32];
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let read = file.read(&mut head).unwrap_or(0);
    matches!(sniff_format(&head[..read]), Sniffed::Supported(_))
}

/// Hex SHA-256 of the file content: the document `_id`.
pub fn content_id(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where the vector comes from, for [`build_document`].
pub enum DocumentVector<'a> {
    /// The pipeline embeds `image_b64`.
    Pipeline,
    /// A finished vector (`--embed-locally`).
    Local {
        vector: &'a [f32],
        model: &'a str,
        ingested_at_ms: u64,
    },
}

/// The document for one image. Field names follow `es-config/index-template.json`.
pub fn build_document(
    path: &Path,
    id: &str,
    file_size: usize,
    image: &PreparedImage,
    vector: DocumentVector<'_>,
) -> Value {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut document = json!({
        "content_hash": id,
        "file_name": file_name,
        "path": path.to_string_lossy(),
        "format": image.format,
        "width": image.width,
        "height": image.height,
        "bytes": file_size,
        "thumbnail": image.thumbnail_base64(),
    });
    if let Some(object) = document.as_object_mut() {
        match vector {
            DocumentVector::Pipeline => {
                object.insert(IMAGE_FIELD.to_owned(), Value::String(image.data_uri()));
            }
            DocumentVector::Local {
                vector,
                model,
                ingested_at_ms,
            } => {
                object.insert(
                    "ml".to_owned(),
                    json!({"image_vector": vector, "model_id": model}),
                );
                object.insert("ingested_at".to_owned(), json!(ingested_at_ms));
            }
        }
    }
    document
}

/// What one bulk item's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Indexed,
    AlreadyPresent,
    /// The pipeline's `on_failure` sent the document to this index.
    Redirected {
        index: String,
    },
    Retry {
        status: u16,
        reason: String,
    },
    Failed {
        status: u16,
        error_type: Option<String>,
        reason: String,
    },
}

/// Statuses worth another attempt: overload and gateway trouble.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Classifies one element of a `_bulk` answer's `items`.
pub fn classify_item(item: &Value, index: &str) -> ItemOutcome {
    let Some(result) = item.as_object().and_then(|object| object.values().next()) else {
        return ItemOutcome::Failed {
            status: 0,
            error_type: None,
            reason: format!("unexpected bulk item {item}"),
        };
    };
    let status = result.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
    let item_index = result
        .get("_index")
        .and_then(Value::as_str)
        .unwrap_or(index);
    let redirected = item_index != index && item_index.ends_with("-failed");
    let error_type = result
        .pointer("/error/type")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let reason = result
        .get("error")
        .map(|error| error_reason(json!({"error": error}).to_string().as_bytes()))
        .unwrap_or_default();
    match status {
        200..=299 if redirected => ItemOutcome::Redirected {
            index: item_index.to_owned(),
        },
        200..=299 => ItemOutcome::Indexed,
        // The failed copy exists from an earlier run: the image failed in the pipeline again.
        409 if redirected => ItemOutcome::Redirected {
            index: item_index.to_owned(),
        },
        409 => ItemOutcome::AlreadyPresent,
        status if is_retryable_status(status) => ItemOutcome::Retry { status, reason },
        status => ItemOutcome::Failed {
            status,
            error_type,
            reason,
        },
    }
}

/// One document ready for `_bulk`.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    id: String,
    action: Bytes,
    source: Bytes,
}

impl Entry {
    fn size(&self) -> usize {
        self.action.len() + self.source.len() + 2
    }
}

/// How a whole `_bulk` request went.
enum RequestError {
    Retryable { status: Option<u16>, reason: String },
    Final { status: u16, reason: String },
}

struct RunState {
    client: Elasticsearch,
    config: IngestConfig,
    seen: Mutex<HashSet<String>>,
    failures: FailureLog,
    progress: ProgressBar,
}

impl RunState {
    fn fail(&self, record: FailureRecord, report: &mut IngestReport) -> Result<()> {
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
pub async fn run(client: Elasticsearch, config: IngestConfig) -> Result<IngestReport> {
    preflight(&client, &config).await?;
    let failures = FailureLog::create(&config.failures_path)?;
    let (files, walk_failures) = walk(&config.paths);
    let mut report = IngestReport {
        found: files.len(),
        ..IngestReport::default()
    };
    let progress = if config.progress {
        let bar =
            ProgressBar::with_draw_target(Some(files.len() as u64), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} images · {per_sec} · ETA {eta}",
        )
        .context("invalid progress template")?
        .progress_chars("=> ");
        bar.set_style(style);
        bar
    } else {
        ProgressBar::hidden()
    };
    let context = Arc::new(RunState {
        client,
        seen: Mutex::new(HashSet::new()),
        failures,
        progress,
        config,
    });
    for record in walk_failures {
        context.failures.write(&record)?;
        report.failed += 1;
    }

    let bulk_size = context.config.bulk_size.max(1);
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
        let response = context
            .client
            .indices()
            .refresh(IndicesRefreshParts::Index(&[context.config.index.as_str()]))
            .send()
            .await
            .map_err(|err| connection_error(err, &request))?;
        json_or_error(response, &request).await?;
    }
    Ok(report)
}

/// Fails early, with a fix, on what would otherwise fail every document.
async fn preflight(client: &Elasticsearch, config: &IngestConfig) -> Result<()> {
    let cluster = cluster_info(client).await?;
    match &config.mode {
        IngestMode::Pipeline(pipeline) => {
            if !cluster.has_inference_api() {
                bail!(
                    "Elasticsearch {} cannot call the sidecar (the inference API needs 8.12+); use --embed-locally --model-dir DIR",
                    cluster.version
                );
            }
            let request = format!("GET _ingest/pipeline/{pipeline}");
            let response = client
                .ingest()
                .get_pipeline(IngestGetPipelineParts::Id(pipeline))
                .send()
                .await
                .map_err(|err| connection_error(err, &request))?;
            if response.status_code() == StatusCode::NOT_FOUND {
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
            json_or_error(response, &request).await?;
        }
        IngestMode::Local(embedder) => {
            let request = format!("HEAD {}", config.index);
            let response = client
                .indices()
                .exists(IndicesExistsParts::Index(&[config.index.as_str()]))
                .send()
                .await
                .map_err(|err| connection_error(err, &request))?;
            if response.status_code() == StatusCode::NOT_FOUND {
                // No setup can run below 8.12, so the index is created here, with the same
                // mapping minus the pipeline.
                let model = embedder.model();
                let params = IndexParams {
                    index: config.index.clone(),
                    pipeline: None,
                    inference_id: String::new(),
                    model: model.name.clone(),
                    dims: model.dimensions,
                    similarity: model.similarity.clone(),
                };
                let body = assets::create_index_body(&params, &cluster)?;
                let request = format!("PUT {}", config.index);
                let response = client
                    .indices()
                    .create(IndicesCreateParts::Index(&config.index))
                    .body(body)
                    .send()
                    .await
                    .map_err(|err| connection_error(err, &request))?;
                json_or_error(response, &request).await?;
            } else if !response.status_code().is_success() {
                bail!(describe_failure(response.status_code(), b"", &request));
            }
        }
    }
    Ok(())
}

/// A file read and hashed.
struct Loaded {
    path: PathBuf,
    id: String,
    bytes: Vec<u8>,
}

async fn process_batch(context: Arc<RunState>, paths: Vec<PathBuf>) -> Result<IngestReport> {
    let mut report = IngestReport::default();

    // 1. read and hash, off the async threads
    let read_results = tokio::task::spawn_blocking(move || {
        paths
            .into_iter()
            .map(|path| match std::fs::read(&path) {
                Ok(bytes) => Ok(Loaded {
                    id: content_id(&bytes),
                    path,
                    bytes,
                }),
                Err(err) => Err(FailureRecord::new(
                    &path,
                    None,
                    "read",
                    format!("cannot read: {err}"),
                )),
            })
            .collect::<Vec<_>>()
    })
    .await
    .context("the file reading task failed")?;
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
                    build_document(path, id, *size, image, DocumentVector::Pipeline),
                )
            })
            .collect::<Result<Vec<_>>>()?,
        IngestMode::Local(embedder) => {
            let payloads = images
                .iter()
                .map(|(_, _, _, image)| image.payload.clone())
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
                                ingested_at_ms: now_ms,
                            },
                        );
                        entries.push(make_entry(&context.config.index, path, id, document)?);
                    }
                    Ok(vector) => context.fail(
                        FailureRecord::new(
                            path,
                            Some(id),
                            "embed",
                            format!(
                                "the engine returned {} dimensions, expected {}",
                                vector.len(),
                                model.dimensions
                            ),
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
    let mut request: Vec<Entry> = Vec::new();
    let mut request_bytes = 0;
    for entry in entries {
        if !request.is_empty() && request_bytes + entry.size() > context.config.bulk_max_bytes {
            send_with_retries(&context, std::mem::take(&mut request), &mut report).await?;
            request_bytes = 0;
        }
        request_bytes += entry.size();
        request.push(entry);
    }
    if !request.is_empty() {
        send_with_retries(&context, request, &mut report).await?;
    }
    Ok(report)
}

fn make_entry(index: &str, path: &Path, id: &str, document: Value) -> Result<Entry> {
    // `create` so that a document is never overwritten: an id already there is a 409.
    let action = json!({"create": {"_index": index, "_id": id}});
    Ok(Entry {
        path: path.to_path_buf(),
        id: id.to_owned(),
        action: Bytes::from(serde_json::to_vec(&action).context("cannot serialise a bulk action")?),
        source: Bytes::from(serde_json::to_vec(&document).context("cannot serialise a document")?),
    })
}

/// Ids among `ids` that the index already holds. When the check itself fails after retries,
/// nothing is skipped: `create` still prevents duplicates, the run only does more work.
async fn existing_ids(context: &RunState, ids: &[String]) -> Result<HashSet<String>> {
    let index = context.config.index.as_str();
    let request = format!("POST {index}/_mget");
    let body = json!({"docs": ids.iter().map(|id| json!({"_id": id, "_source": false})).collect::<Vec<_>>()});
    let mut attempt = 0;
    loop {
        let sent = context
            .client
            .mget(MgetParts::Index(index))
            .body(&body)
            .send()
            .await;
        let retry_reason = match sent {
            Ok(response) => {
                let status = response.status_code();
                if status.is_success() {
                    let answer = json_or_error(response, &request).await?;
                    return Ok(found_ids(&answer));
                }
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    let body = response.bytes().await.unwrap_or_default();
                    bail!(describe_failure(status, &body, &request));
                }
                if !is_retryable_status(status.as_u16()) {
                    // e.g. 404 for an index that does not exist yet: nothing is present.
                    return Ok(HashSet::new());
                }
                format!("{request}: {status}")
            }
            Err(err) => format!("{request}: {err}"),
        };
        attempt += 1;
        if attempt > context.config.retry.max_retries {
            context.progress.suspend(|| {
                tracing::warn!("{retry_reason}; sending the batch without the existence check")
            });
            return Ok(HashSet::new());
        }
        tokio::time::sleep(context.config.retry.delay(attempt)).await;
    }
}

/// Ids with `found: true` in an `_mget` answer.
pub fn found_ids(answer: &Value) -> HashSet<String> {
    answer
        .get("docs")
        .and_then(Value::as_array)
        .map(|docs| {
            docs.iter()
                .filter(|doc| doc.get("found").and_then(Value::as_bool) == Some(true))
                .filter_map(|doc| doc.get("_id").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn send_with_retries(
    context: &RunState,
    entries: Vec<Entry>,
    report: &mut IngestReport,
) -> Result<()> {
    let mut pending = entries;
    let mut attempt: u32 = 1;
    loop {
        let outcome = send_bulk(context, &pending).await?;
        let mut retry = Vec::new();
        let mut last_reason = String::new();
        let mut last_status = None;
        match outcome {
            Ok(items) => {
                let mut redirected = Vec::new();
                for (entry, item) in pending.into_iter().zip(items) {
                    match item {
                        ItemOutcome::Indexed => {
                            report.indexed += 1;
                            context.progress.inc(1);
                        }
                        ItemOutcome::AlreadyPresent => {
                            report.already_present += 1;
                            context.progress.inc(1);
                        }
                        ItemOutcome::Redirected { index } => redirected.push((entry, index)),
                        ItemOutcome::Retry { status, reason } => {
                            last_status = Some(status);
                            last_reason = reason;
                            retry.push(entry);
                        }
                        ItemOutcome::Failed {
                            status,
                            error_type,
                            reason,
                        } => {
                            let mut record =
                                FailureRecord::new(&entry.path, Some(&entry.id), "bulk", reason);
                            record.status = Some(status);
                            record.error_type = error_type;
                            record.attempts = attempt;
                            context.fail(record, report)?;
                        }
                    }
                }
                report_redirected(context, redirected, attempt, report).await?;
            }
            Err(RequestError::Retryable { status, reason }) => {
                last_status = status;
                last_reason = reason;
                retry = pending;
            }
            Err(RequestError::Final { status, reason }) => {
                for entry in pending {
                    let mut record =
                        FailureRecord::new(&entry.path, Some(&entry.id), "bulk", reason.clone());
                    record.status = Some(status);
                    record.attempts = attempt;
                    context.fail(record, report)?;
                }
                return Ok(());
            }
        }
        if retry.is_empty() {
            return Ok(());
        }
        if attempt > context.config.retry.max_retries {
            for entry in retry {
                let mut record = FailureRecord::new(
                    &entry.path,
                    Some(&entry.id),
                    "bulk",
                    format!("gave up after {attempt} attempts: {last_reason}"),
                );
                record.status = last_status;
                record.attempts = attempt;
                context.fail(record, report)?;
            }
            return Ok(());
        }
        tokio::time::sleep(context.config.retry.delay(attempt)).await;
        attempt += 1;
        pending = retry;
    }
}

/// One `_bulk` request. The outer `Err` stops the run (credentials); the inner one says
/// whether the whole request may be retried.
async fn send_bulk(
    context: &RunState,
    entries: &[Entry],
) -> Result<std::result::Result<Vec<ItemOutcome>, RequestError>> {
    let index = context.config.index.as_str();
    let request = format!("POST {index}/_bulk");
    let body: Vec<Bytes> = entries
        .iter()
        .flat_map(|entry| [entry.action.clone(), entry.source.clone()])
        .collect();
    let pipeline = match &context.config.mode {
        IngestMode::Pipeline(name) => name.as_str(),
        // The index's default pipeline would try to embed a document that has no image.
        IngestMode::Local(_) => "_none",
    };
    let sent = context
        .client
        .bulk(BulkParts::Index(index))
        .pipeline(pipeline)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) => {
            return Ok(Err(RequestError::Retryable {
                status: None,
                reason: format!("{request}: no answer from Elasticsearch: {err}"),
            }))
        }
    };
    let status = response.status_code();
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(err) => {
            return Ok(Err(RequestError::Retryable {
                status: Some(status.as_u16()),
                reason: format!("{request}: answer cut off: {err}"),
            }))
        }
    };
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        bail!(describe_failure(status, &bytes, &request));
    }
    if is_retryable_status(status.as_u16()) {
        return Ok(Err(RequestError::Retryable {
            status: Some(status.as_u16()),
            reason: describe_failure(status, &bytes, &request),
        }));
    }
    if !status.is_success() {
        let mut reason = describe_failure(status, &bytes, &request);
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            reason.push_str(" (lower --bulk-max-bytes or --bulk-size)");
        }
        return Ok(Err(RequestError::Final {
            status: status.as_u16(),
            reason,
        }));
    }
    let answer: Value = match serde_json::from_slice(&bytes) {
        Ok(answer) => answer,
        Err(err) => {
            return Ok(Err(RequestError::Retryable {
                status: Some(status.as_u16()),
                reason: format!("{request}: the answer is not JSON: {err}"),
            }))
        }
    };
    let items = answer
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if items.len() != entries.len() {
        return Ok(Err(RequestError::Final {
            status: status.as_u16(),
            reason: format!(
                "{request}: {} items answered for {} documents",
                items.len(),
                entries.len()
            ),
        }));
    }
    Ok(Ok(items
        .iter()
        .map(|item| classify_item(item, index))
        .collect()))
}

/// Records documents the pipeline sent to `<index>-failed`, with the error message the pipeline
/// stored there when it can be read back.
async fn report_redirected(
    context: &RunState,
    redirected: Vec<(Entry, String)>,
    attempt: u32,
    report: &mut IngestReport,
) -> Result<()> {
    if redirected.is_empty() {
        return Ok(());
    }
    let failed_index = failed_index_name(&context.config.index);
    let ids: Vec<&str> = redirected
        .iter()
        .map(|(entry, _)| entry.id.as_str())
        .collect();
    let reasons = pipeline_errors(context, &failed_index, &ids).await;
    for (entry, index) in redirected {
        let reason = reasons
            .get(&entry.id)
            .cloned()
            .unwrap_or_else(|| "the pipeline could not embed this image".to_owned());
        let mut record = FailureRecord::new(
            &entry.path,
            Some(&entry.id),
            "pipeline",
            format!("{reason} (document kept in {index})"),
        );
        record.attempts = attempt;
        context.fail(record, report)?;
    }
    Ok(())
}

async fn pipeline_errors(
    context: &RunState,
    failed_index: &str,
    ids: &[&str],
) -> std::collections::HashMap<String, String> {
    let body = json!({"docs": ids.iter().map(|id| json!({"_id": id, "_source": ["error"]})).collect::<Vec<_>>()});
    let Ok(response) = context
        .client
        .mget(MgetParts::Index(failed_index))
        .body(body)
        .send()
        .await
    else {
        return Default::default();
    };
    let Ok(answer) = json_or_error(response, "POST _mget").await else {
        return Default::default();
    };
    answer
        .get("docs")
        .and_then(Value::as_array)
        .map(|docs| {
            docs.iter()
                .filter_map(|doc| {
                    let id = doc.get("_id")?.as_str()?;
                    let message = doc.pointer("/_source/error/message")?.as_str()?;
                    Some((id.to_owned(), message.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn png_bytes(seed: u8) -> Vec<u8> {
        let image =
            image::RgbImage::from_fn(8, 6, |x, y| image::Rgb([x as u8 * seed, y as u8, seed]));
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn walk_finds_images_by_extension_and_content_and_skips_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub/.hidden")).unwrap();
        std::fs::write(root.join("a.png"), png_bytes(1)).unwrap();
        std::fs::write(root.join("sub/no_extension"), png_bytes(2)).unwrap();
        std::fs::write(root.join("sub/broken.jpg"), b"not really").unwrap();
        std::fs::write(root.join("notes.txt"), b"hello").unwrap();
        std::fs::write(root.join("sub/.hidden/c.png"), png_bytes(3)).unwrap();
        let (files, failures) = walk(&[root.to_path_buf(), root.join("missing")]);
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.png", "sub/broken.jpg", "sub/no_extension"]);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].stage, "walk");
    }

    #[test]
    fn content_id_is_sha256_hex() {
        assert_eq!(
            content_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn pipeline_document_carries_the_image_and_metadata() {
        let bytes = png_bytes(5);
        let image = prepare(&bytes, ImageOptions::default()).unwrap();
        let id = content_id(&bytes);
        let document = build_document(
            Path::new("photos/cat.png"),
            &id,
            bytes.len(),
            &image,
            DocumentVector::Pipeline,
        );
        assert_eq!(document["content_hash"], id.as_str());
        assert_eq!(document["file_name"], "cat.png");
        assert_eq!(document["path"], "photos/cat.png");
        assert_eq!(document["format"], "png");
        assert_eq!(document["width"], 8);
        assert_eq!(document["height"], 6);
        assert_eq!(document["bytes"], bytes.len());
        assert!(document[IMAGE_FIELD]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,"));
        assert!(document.get("ml").is_none());
        assert!(!document["thumbnail"].as_str().unwrap().is_empty());
    }

    #[test]
    fn local_document_carries_the_vector_not_the_image() {
        let bytes = png_bytes(6);
        let image = prepare(&bytes, ImageOptions::default()).unwrap();
        let vector = [0.6f32, 0.8];
        let document = build_document(
            Path::new("x.png"),
            "id",
            bytes.len(),
            &image,
            DocumentVector::Local {
                vector: &vector,
                model: "clip",
                ingested_at_ms: 42,
            },
        );
        assert!(document.get(IMAGE_FIELD).is_none());
        assert_eq!(document["ml"]["model_id"], "clip");
        assert_eq!(document["ml"]["image_vector"].as_array().unwrap().len(), 2);
        assert_eq!(document["ingested_at"], 42);
    }

    #[test]
    fn bulk_items_are_classified() {
        let created =
            json!({"create": {"_index": "photos", "_id": "a", "status": 201, "result": "created"}});
        assert_eq!(classify_item(&created, "photos"), ItemOutcome::Indexed);
        let conflict = json!({"create": {"_index": "photos", "_id": "a", "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "exists"}}});
        assert_eq!(
            classify_item(&conflict, "photos"),
            ItemOutcome::AlreadyPresent
        );
        let redirected = json!({"create": {"_index": "photos-failed", "_id": "a", "status": 201}});
        assert_eq!(
            classify_item(&redirected, "photos"),
            ItemOutcome::Redirected {
                index: "photos-failed".to_owned()
            }
        );
        let again = json!({"create": {"_index": "photos-failed", "_id": "a", "status": 409}});
        assert!(matches!(
            classify_item(&again, "photos"),
            ItemOutcome::Redirected { .. }
        ));
        let busy = json!({"create": {"_index": "photos", "_id": "a", "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}});
        assert!(matches!(
            classify_item(&busy, "photos"),
            ItemOutcome::Retry { status: 429, .. }
        ));
        let bad = json!({"create": {"_index": "photos", "_id": "a", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "dims"}}});
        assert_eq!(
            classify_item(&bad, "photos"),
            ItemOutcome::Failed {
                status: 400,
                error_type: Some("mapper_parsing_exception".to_owned()),
                reason: "mapper_parsing_exception: dims".to_owned()
            }
        );
    }

    #[test]
    fn found_ids_reads_mget() {
        let answer = json!({"docs": [
            {"_index": "p", "_id": "a", "found": true},
            {"_index": "p", "_id": "b", "found": false},
            {"_index": "p", "_id": "c", "error": {"type": "index_not_found_exception"}}
        ]});
        assert_eq!(found_ids(&answer), HashSet::from(["a".to_owned()]));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_retries: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        assert!(
            policy.delay(1) >= Duration::from_millis(100)
                && policy.delay(1) < Duration::from_millis(130)
        );
        assert!(policy.delay(3) >= Duration::from_millis(400));
        assert!(policy.delay(10) <= Duration::from_millis(1000));
    }

    #[test]
    fn failure_records_serialise_without_empty_fields() {
        let record = FailureRecord::new(Path::new("a.jpg"), None, "decode", "bad");
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"path":"a.jpg","stage":"decode","reason":"bad","attempts":1}"#
        );
    }
}
