//! `sightline ingest`: flags → [`IngestConfig`] → run (or `--redrive`) → summary and exit code
//! (0 all indexed or already there, 1 some files failed, 2 the run could not proceed). Vectors
//! come from the sidecar by default (`--sidecar-url`), from the ingest pipeline with
//! `--via-pipeline`, from this process with `--embed-locally`. A backfill over machines runs
//! `--shard I/N` on each, and `--report` merges their failures files (exit 1 when any file
//! failed). The work is in `es/ingest/`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::es::client::EsConnectArgs;
use crate::es::image::ImageOptions;
use crate::es::ingest::{self, IngestConfig, IngestMode, RetryPolicy, Shard};
use crate::es::local::{EngineEmbedder, SidecarEmbedder};
use crate::es::{failed_index_name, pipeline_name, semantic_pipeline_name, DEFAULT_INDEX};
use crate::sidecar::SidecarArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct IngestArgs {
    /// Files or folders (walked recursively) of images.
    #[arg(required_unless_present_any = ["redrive", "files_from", "report"], value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Also take the paths listed in FILE (`-`: standard input), one per line, taken like PATH
    /// arguments (relative to the current directory; a folder is walked); blank lines are
    /// skipped, a missing file is a failure.
    #[arg(long, value_name = "FILE", conflicts_with = "redrive")]
    pub files_from: Option<PathBuf>,
    /// Take only shard I of N (I counts from 0: 0/4 … 3/4), split by content hash, so N
    /// machines can share a backfill; the failures file defaults to
    /// sightline-failures-I-of-N.jsonl.
    #[arg(long, value_name = "I/N", conflicts_with = "redrive")]
    pub shard: Option<Shard>,
    /// Merge these failures files (e.g. one per shard) into one summary, and exit: counts by
    /// reason and every failed path once; exit code 1 when any file failed.
    #[arg(long, num_args = 1.., value_name = "FILE", conflicts_with_all = ["paths", "redrive", "files_from", "shard"])]
    pub report: Vec<PathBuf>,
    #[command(flatten)]
    pub es: EsConnectArgs,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
    /// Send each image through the index's ingest pipeline (the cluster calls the sidecar;
    /// enterprise/trial, 8.12+) instead of sending vectors from the sidecar.
    #[arg(long, conflicts_with = "embed_locally")]
    pub via_pipeline: bool,
    /// Re-send the documents the pipeline parked in <index>-failed (through the sidecar, or the
    /// pipeline with --via-pipeline), deleting each from there once it is indexed.
    #[arg(long, conflicts_with = "paths")]
    pub redrive: bool,
    /// Image index (created by `sightline setup`).
    #[arg(long, env = "SIGHTLINE_INDEX", default_value = DEFAULT_INDEX)]
    pub index: String,
    /// Ingest pipeline (implies --via-pipeline; default: the one setup created for --index).
    #[arg(long, conflicts_with = "embed_locally")]
    pub pipeline: Option<String>,
    /// Use the semantic_text variant of the pipeline (implies --via-pipeline; 8.19+/9.1+).
    #[arg(long, conflicts_with_all = ["pipeline", "embed_locally"])]
    pub semantic: bool,
    /// Bulk requests in flight at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    #[command(flatten)]
    pub bulk: BulkArgs,
    /// JSONL file listing every image that could not be indexed, and why [default:
    /// sightline-failures.jsonl, or sightline-failures-I-of-N.jsonl with --shard I/N].
    #[arg(long, value_name = "FILE")]
    pub failures: Option<PathBuf>,
    /// Longer side, in pixels, of the image sent for embedding; larger images are shrunk.
    #[arg(long, default_value_t = ImageOptions::default().max_side)]
    pub max_side: u32,
    /// Longer side, in pixels, of the stored thumbnail.
    #[arg(long, default_value_t = ImageOptions::default().thumbnail_side)]
    pub thumbnail_side: u32,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Do not refresh the index at the end.
    #[arg(long)]
    pub no_refresh: bool,
    /// Embed in this process and send finished vectors (for machines without a sidecar).
    #[arg(long, requires = "model_dir")]
    pub embed_locally: bool,
    /// Model bundle for --embed-locally.
    #[arg(long, env = "SIGHTLINE_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
}

/// How documents are written: the `_bulk` sizes and the retry policy of `ingest` and `reindex`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BulkArgs {
    /// Documents per bulk request (for `reindex`, also per page read).
    #[arg(long, default_value_t = 32)]
    pub bulk_size: usize,
    /// Largest bulk body in bytes; bigger batches are split.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub bulk_max_bytes: usize,
    /// Retries of a bulk request (or of its failed items) on 429/502/503/504 or connection errors.
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// First retry delay in milliseconds; doubles on each retry.
    #[arg(long, default_value_t = 500)]
    pub retry_initial_delay_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub retry_max_delay_ms: u64,
}

impl BulkArgs {
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            initial_delay: Duration::from_millis(self.retry_initial_delay_ms),
            max_delay: Duration::from_millis(
                self.retry_max_delay_ms.max(self.retry_initial_delay_ms),
            ),
        }
    }
}

pub(crate) async fn run(args: IngestArgs) -> Result<ExitCode> {
    if !args.report.is_empty() {
        let summary = ingest::merge_failures(&args.report)?;
        print!("{summary}");
        return Ok(if summary.paths.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    if args.concurrency == 0 || args.bulk.bulk_size == 0 {
        bail!("--concurrency and --bulk-size must be at least 1");
    }
    let failures = args
        .failures
        .clone()
        .unwrap_or_else(|| default_failures(args.shard));
    let mut paths = args.paths.clone();
    if let Some(list) = args.files_from.clone() {
        // Standard input blocks; keep it off the async threads.
        let listed = tokio::task::spawn_blocking(move || ingest::read_path_list(&list)).await??;
        paths.extend(listed);
    }
    let mode = if args.embed_locally {
        let Some(model_dir) = &args.model_dir else {
            bail!("--embed-locally needs --model-dir DIR");
        };
        IngestMode::Vectors(Arc::new(EngineEmbedder::start(model_dir)?))
    } else if args.semantic {
        IngestMode::Pipeline(semantic_pipeline_name(&args.index))
    } else if args.via_pipeline || args.pipeline.is_some() {
        IngestMode::Pipeline(
            args.pipeline
                .clone()
                .unwrap_or_else(|| pipeline_name(&args.index)),
        )
    } else {
        IngestMode::Vectors(Arc::new(SidecarEmbedder::new(
            args.sidecar.connect().await?,
        )))
    };
    let client = args.es.connect()?;
    let config = IngestConfig {
        paths,
        index: args.index.clone(),
        mode,
        concurrency: args.concurrency,
        bulk_size: args.bulk.bulk_size,
        bulk_max_bytes: args.bulk.bulk_max_bytes,
        retry: args.bulk.retry_policy(),
        failures_path: failures.clone(),
        image: ImageOptions {
            max_side: args.max_side.max(1),
            thumbnail_side: args.thumbnail_side.max(1),
        },
        progress: !args.no_progress,
        refresh: !args.no_refresh,
        shard: args.shard,
    };
    if args.redrive {
        let report = ingest::redrive(client, config).await?;
        let back = report.indexed + report.already_present;
        println!(
            "{} documents in {}: {back} back in {} and removed from there, {} still failing",
            report.found,
            failed_index_name(&args.index),
            args.index,
            report.failed
        );
        if report.failed > 0 {
            eprintln!("still failing, with the reasons: {}", failures.display());
            return Ok(ExitCode::from(1));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = ingest::run(client, config).await?;
    let shard = args
        .shard
        .map(|shard| format!(", {} in shard {shard}", report.found - report.other_shards))
        .unwrap_or_default();
    println!(
        "{} images found{shard}: {} indexed, {} already in {}, {} duplicates, {} failed",
        report.found,
        report.indexed,
        report.already_present,
        args.index,
        report.duplicates,
        report.failed
    );
    if report.failed > 0 {
        eprintln!("failures: {}", failures.display());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The failures file when `--failures` is not given: one per shard, so shards that share a
/// working directory (or a volume) do not overwrite each other's.
fn default_failures(shard: Option<Shard>) -> PathBuf {
    match shard {
        Some(shard) => PathBuf::from(format!("sightline-failures-{}.jsonl", shard.file_tag())),
        None => PathBuf::from("sightline-failures.jsonl"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_has_its_own_default_failures_file() {
        assert_eq!(
            default_failures(None),
            PathBuf::from("sightline-failures.jsonl")
        );
        assert_eq!(
            default_failures(Some("2/4".parse().unwrap())),
            PathBuf::from("sightline-failures-2-of-4.jsonl")
        );
    }
}
