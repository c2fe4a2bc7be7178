//! `sightline reindex`: flags → [`ReindexConfig`] → run → summary and exit code (0 the alias
//! points at an index of `--model`, 1 it does not — failures, documents still arriving, or an
//! old-layout index without `--replace-index` — 2 the run could not proceed). The work is in
//! `es/reindex/`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Result};

use super::ingest::BulkArgs;
use crate::es::client::EsConnectArgs;
use crate::es::image::ImageOptions;
use crate::es::local::SidecarEmbedder;
use crate::es::reindex::{self, ReindexConfig, Switch};
use crate::sidecar::SidecarArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct ReindexArgs {
    /// The alias clients search (what `setup --index` created), or an index of the layout
    /// before aliases.
    #[arg(long, value_name = "INDEX")]
    pub from: String,
    /// The model to embed with; the sidecar at --sidecar-url must serve it (its /info `model`).
    #[arg(long, value_name = "NAME")]
    pub model: String,
    /// The new physical index (default: <alias>-<model>-<fingerprint>).
    #[arg(long, value_name = "INDEX")]
    pub to: Option<String>,
    /// When --from is an index rather than an alias: delete it and put an alias of that name on
    /// the new index, in one atomic request, once the copy is complete.
    #[arg(long)]
    pub replace_index: bool,
    #[command(flatten)]
    pub es: EsConnectArgs,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
    #[command(flatten)]
    pub bulk: BulkArgs,
    /// JSONL file listing every document that could not be copied, and why.
    #[arg(
        long,
        default_value = "sightline-reindex-failures.jsonl",
        value_name = "FILE"
    )]
    pub failures: PathBuf,
    /// Longer side, in pixels, of the image sent for embedding; larger images are shrunk.
    #[arg(long, default_value_t = ImageOptions::default().max_side)]
    pub max_side: u32,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

pub(crate) async fn run(args: ReindexArgs) -> Result<ExitCode> {
    if args.bulk.bulk_size == 0 {
        bail!("--bulk-size must be at least 1");
    }
    // The sidecar may serve several models: --model picks the one every request names.
    let sidecar = args
        .sidecar
        .connect()
        .await?
        .select_model(&args.model)
        .await?;
    let embedder = Arc::new(SidecarEmbedder::new(sidecar));
    let client = args.es.connect()?;
    let config = ReindexConfig {
        from: args.from.clone(),
        to: args.to.clone(),
        model: args.model.clone(),
        embedder,
        bulk_size: args.bulk.bulk_size,
        bulk_max_bytes: args.bulk.bulk_max_bytes,
        retry: args.bulk.retry_policy(),
        failures_path: args.failures.clone(),
        image: ImageOptions {
            max_side: args.max_side.max(1),
            ..ImageOptions::default()
        },
        progress: !args.no_progress,
        replace_index: args.replace_index,
    };
    let report = reindex::run(client, config).await?;
    let name = report.layout.name();
    let old = report.layout.index();
    let target = &report.target;
    let counts = &report.counts;
    if report.switch != Switch::AlreadyThere {
        println!(
            "{} documents read from {old}: {} copied to {target}, {} already there, {} failed",
            report.read, counts.indexed, counts.already_present, counts.failed
        );
    }
    match report.switch {
        Switch::Moved => {
            println!("alias {name} moved from {old} to {target}");
            if old != name {
                println!(
                    "the old index {old} is kept; delete it when you no longer need to switch back"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Switch::AlreadyThere => {
            println!(
                "{name} already holds vectors of {} (index {target}); nothing to do",
                args.model
            );
            Ok(ExitCode::SUCCESS)
        }
        Switch::KeptFailures => {
            eprintln!(
                "alias {name} NOT moved (it still points at {old}): {} documents failed, listed with the reason in {}; restore their files (or delete those documents) and run the same command again",
                counts.failed,
                args.failures.display()
            );
            Ok(ExitCode::from(1))
        }
        Switch::KeptStillArriving {
            source,
            target: have,
        } => {
            eprintln!(
                "alias {name} NOT moved: {old} holds {source} documents, {target} {have}; documents are still being ingested — pause ingest and run the same command again"
            );
            Ok(ExitCode::from(1))
        }
        Switch::KeptNeedsReplace => {
            eprintln!(
                "{name} is an index, not an alias, so no alias can move: every document is in {target} now; run the same command with --replace-index to delete {name} and make it an alias of {target} in one atomic step"
            );
            Ok(ExitCode::from(1))
        }
    }
}
