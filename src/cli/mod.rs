//! Command line: one subcommand per file; each turns its arguments into a config and runs it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod embed;
mod engine_args;
mod ingest;
mod model;
mod reindex;
mod search;
mod serve;
mod setup;

/// Shared with `sightline gallery` (`src/gallery/`).
pub(crate) use serve::{parse_bytes, shutdown_signal};

#[derive(Debug, Parser)]
#[command(
    name = "sightline",
    version,
    about = "CLIP image and multilingual text embeddings for Elasticsearch"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the inference endpoint Elasticsearch calls.
    Serve(serve::ServeArgs),
    /// Embed images or texts and print one JSON line per input.
    Embed(embed::EmbedArgs),
    /// Create or download a model bundle.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Create the inference endpoint, pipelines, template and index in a cluster.
    Setup(setup::SetupArgs),
    /// Bulk-index folders of images through the embedding pipeline.
    Ingest(ingest::IngestArgs),
    /// Re-embed an index with another model into a new index, then move the alias onto it.
    Reindex(reindex::ReindexArgs),
    /// Search an image index by image or by text.
    Search(search::SearchArgs),
    /// Measure end-to-end throughput against model-only (see `make bench`).
    Bench(bench::BenchArgs),
    /// Serve a web page to search the image index by words or by picture.
    Gallery(crate::gallery::GalleryArgs),
}

/// Exit codes: 0 success, 1 some inputs failed, 2 the command itself failed.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Embed(args) => embed::run(args).await,
            Command::Model(cmd) => model::run(cmd).await,
            Command::Setup(args) => setup::run(args).await,
            Command::Ingest(args) => ingest::run(args).await,
            Command::Reindex(args) => reindex::run(args).await,
            Command::Search(args) => search::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Gallery(args) => crate::gallery::run(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        // `sightline embed … | head`: the reader has all it wanted (ripgrep's rule).
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// A broken pipe anywhere in the error chain: whoever reads our output has closed it, which is
/// their choice, not our failure, so it ends the command quietly with 0.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Logs go to stderr (stdout carries `embed`'s JSON lines). `SIGHTLINE_LOG` sets the filter
/// (default `info`); `SIGHTLINE_LOG_FORMAT=json` gives one JSON object per line for collectors.
fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIGHTLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("SIGHTLINE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_anywhere_in_the_chain_is_quiet_success() {
        use std::io::{Error, ErrorKind};
        let pipe = || Error::from(ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&anyhow::Error::from(pipe())));
        // Under context added on the way up: the cause is still found.
        let wrapped = anyhow::Error::from(pipe())
            .context("cannot write a JSON line")
            .context("embed");
        assert!(is_broken_pipe(&wrapped));
        assert!(!is_broken_pipe(&anyhow::Error::from(Error::from(
            ErrorKind::PermissionDenied
        ))));
        assert!(!is_broken_pipe(&anyhow::anyhow!(
            "broken pipe, in words only"
        )));
    }
}
