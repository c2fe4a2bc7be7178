//! `sightline bench`: the throughput benchmark (see `src/bench.rs`); `make bench` prepares the
//! random-weight models, the photos and the Python peer, then calls it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::bench::{run as run_bench, BenchConfig};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Model bundle to benchmark.
    #[arg(long)]
    model_dir: PathBuf,
    /// Folder of JPEG photographs.
    #[arg(long)]
    photos: PathBuf,
    /// Length of each measurement (e.g. `30s`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Pattern (a): concurrent connections, one image per request (the ingest processor).
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Pattern (b): images per request (the custom service's default batch).
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Pattern (b): concurrent connections.
    #[arg(long, default_value_t = 4)]
    batch_clients: usize,
    /// ONNX Runtime threads [default: number of cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Image encoder sessions sharing the threads, for model-only and the server alike.
    #[arg(long, default_value_t = 2)]
    image_lanes: usize,
    /// Result line of `bench/peer.py` from the same run, for the Sightline ÷ peer ratio.
    #[arg(long)]
    peer: Option<PathBuf>,
    /// Extra flags for the `sightline serve` under test, after `--`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let report = run_bench(&BenchConfig {
        model_dir: args.model_dir,
        photos: args.photos,
        duration: args.duration,
        clients: args.clients,
        batch: args.batch,
        batch_clients: args.batch_clients,
        threads,
        image_lanes: args.image_lanes,
        serve_args: args.serve_args,
        peer: args.peer,
    })
    .await?;
    println!("{}", report.table());
    Ok(ExitCode::SUCCESS)
}
