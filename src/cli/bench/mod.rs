//! `sightline bench`: the throughput benchmark (issue 5). In one run it measures model-only
//! images/s (the image encoder alone on preprocessed tensors, with the server's session
//! settings, `baseline.rs`), then a real `sightline serve` child process on loopback
//! (`server.rs`) under the two request patterns Elasticsearch produces (`load.rs`) — (a) many
//! connections with one image each (ingest processor), (b) requests of ten images (custom
//! service batches) — plus text-query latency while (a) saturates the machine, image-query
//! latency with and without the priority lane (`?priority=search`) during a second run of (a),
//! and the server's peak RSS. Ratios are against the model-only number of the same run, so the machine's speed
//! cancels out (`report.rs`). `make bench` prepares the random-weight models, the photos and
//! the Python peer, then calls it.

mod baseline;
mod load;
mod report;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use base64::Engine as _;
use bytes::Bytes;

use crate::engine::bundle::Bundle;
use load::{body, drive, endpoint, probe, Latency, Throughput};
use report::{read_peer, ImageQueries, Report};
use server::Server;

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

/// What to measure, and against which server settings.
#[derive(Debug, Clone)]
struct BenchConfig {
    model_dir: PathBuf,
    photos: PathBuf,
    /// Target duration of each measurement.
    duration: Duration,
    /// Pattern (a): concurrent connections, one image per request.
    clients: usize,
    /// Pattern (b): images per request, and concurrent connections.
    batch: usize,
    batch_clients: usize,
    /// ONNX Runtime threads and image lanes, for the model-only run and the server alike.
    threads: usize,
    image_lanes: usize,
    /// Extra `serve` flags (e.g. `--exact-jpeg`).
    serve_args: Vec<String>,
    /// One JSON line from `bench/peer.py`, measured in the same run.
    peer: Option<PathBuf>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let report = measure(&BenchConfig {
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

async fn measure(cfg: &BenchConfig) -> Result<Report> {
    let photos = baseline::load_photos(&cfg.photos)?;
    let megapixels = baseline::megapixel_range(&photos);
    eprintln!(
        "bench: {} photos, {:.1}–{:.1} MP",
        photos.len(),
        megapixels.0,
        megapixels.1
    );

    let settings = Bundle::load(&cfg.model_dir)?.manifest.preprocess;
    let model_only = baseline::model_only(cfg, &settings, &photos).await?;
    eprintln!("bench: model-only {model_only:.2} images/s");
    let decode_ms = baseline::decode_cost_ms(cfg, settings, &photos).await?;
    eprintln!("bench: decoding and preprocessing {decode_ms:.1} ms per photo on one core");

    let server = Server::start(cfg).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(cfg.clients.max(cfg.batch_clients) + 1)
        .build()?;
    let uris: Vec<String> = photos
        .iter()
        .map(|p| {
            format!(
                "data:image/jpeg;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(p)
            )
        })
        .collect();
    // Each pattern sends about as many images as the model-only rate finishes in `duration`.
    let target = ((model_only * cfg.duration.as_secs_f64()).ceil() as usize).max(cfg.clients);

    let singles: Vec<Bytes> = uris.iter().map(|u| body(std::slice::from_ref(u))).collect();
    let text = Bytes::from_static(br#"{"input":["eine rote Katze im Schnee"],"model":"bench"}"#);
    let stop = Arc::new(AtomicBool::new(false));
    let text_probe = tokio::spawn(probe(
        client.clone(),
        endpoint(&server.url, ""),
        text,
        Duration::from_millis(200),
        stop.clone(),
    ));
    let singles = Arc::new(singles);
    let one_per_request = drive(
        &client,
        &server.url,
        singles.clone(),
        1,
        target,
        cfg.clients,
    )
    .await?;
    stop.store(true, Ordering::Release);
    let text_samples = text_probe.await??;
    eprintln!("bench: (a) {:.2} images/s", one_per_request.images_per_s);

    let image_queries = image_queries(cfg, &client, &server.url, singles, &uris[0], target).await?;
    eprintln!(
        "bench: image query p99 during (a): {:.0} ms with ?priority=search, {:.0} ms without",
        image_queries.priority.p99.as_secs_f64() * 1e3,
        image_queries.plain.p99.as_secs_f64() * 1e3
    );

    let groups: Vec<Bytes> = (0..uris.len())
        .map(|i| {
            let group: Vec<String> = (0..cfg.batch)
                .map(|k| uris[(i + k) % uris.len()].clone())
                .collect();
            body(&group)
        })
        .collect();
    let batched = drive(
        &client,
        &server.url,
        Arc::new(groups),
        cfg.batch,
        target,
        cfg.batch_clients,
    )
    .await?;
    eprintln!("bench: (b) {:.2} images/s", batched.images_per_s);

    let (loaded_rss_mib, peak_rss_mib) = (server.loaded_rss_mib, server.memory_mib("VmHWM")?);
    server.stop().await?;
    let peer = match &cfg.peer {
        Some(path) => Some(read_peer(path)?),
        None => None,
    };
    Ok(Report {
        photos: photos.len(),
        megapixels,
        model_only,
        threads: cfg.threads,
        decode_ms,
        one_per_request,
        batched,
        text_queries: text_samples.len(),
        text_under_load: Latency::of(text_samples),
        image_queries,
        loaded_rss_mib,
        peak_rss_mib,
        peer,
    })
}

/// Pattern (a) again, this time with two image-query probes beside it: one through the priority
/// lane (`?priority=search`, what the search endpoint `setup` creates sends) and one without
/// (what every image query got before the lane existed). A run of its own, so the probes' images
/// do not lower the (a) rate reported above; both probes share it, so the comparison is fair.
async fn image_queries(
    cfg: &BenchConfig,
    client: &reqwest::Client,
    url: &str,
    singles: Arc<Vec<Bytes>>,
    query: &str,
    target: usize,
) -> Result<ImageQueries> {
    let query = body(&[query.to_owned()]);
    let stop = Arc::new(AtomicBool::new(false));
    let spawn_probe = |query_string: &str| {
        tokio::spawn(probe(
            client.clone(),
            endpoint(url, query_string),
            query.clone(),
            Duration::from_secs(1),
            stop.clone(),
        ))
    };
    let (priority, plain) = (spawn_probe("?priority=search"), spawn_probe(""));
    let during: Throughput = drive(client, url, singles, 1, target, cfg.clients).await?;
    stop.store(true, Ordering::Release);
    let (priority, plain) = (priority.await??, plain.await??);
    Ok(ImageQueries {
        sent: (priority.len(), plain.len()),
        priority: Latency::of(priority),
        plain: Latency::of(plain),
        ingest_images_per_s: during.images_per_s,
    })
}
