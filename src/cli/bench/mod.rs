//! `sightline bench`: the throughput benchmark (issues 5 and 15). In one run it measures
//! model-only images/s (the image encoder alone on preprocessed tensors, with the server's
//! session settings, `baseline.rs`), the memory and start-up time of a server with one image
//! lane and with the configured lanes, then a real `sightline serve` child process on loopback
//! (`server.rs`) under the request patterns Elasticsearch produces (`load.rs`) — (a) many
//! connections with one full-size photo each (the ingest processor), (b) requests of ten photos
//! (custom service batches), (c) one image per request as `sightline ingest` sends it (shrunk
//! to 1024 pixels and re-encoded by the ingest's own function) — plus text-query latency while
//! (a) saturates the machine, image-query latency with and without the priority lane
//! (`?priority=search`) during a second run of (a), and the server's peak RSS. Ratios are
//! against the model-only number and the decoding ceiling of the same run, so the machine's
//! speed cancels out (`report.rs`). With `--target-url` it drives another server (infinity)
//! with the same photos and patterns instead and prints one JSON line (`external.rs`).
//! `make bench` prepares the random-weight models, the photos and the peers, then calls it.

mod baseline;
mod external;
mod load;
mod report;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;

use crate::engine::bundle::Bundle;
use crate::es::image::data_uri;
use load::{drive, probe, Budget, Dialect, Latency, Target, Throughput};
use report::{read_infinity, read_peer, ImageQueries, Report};
use server::Server;

#[derive(Debug, clap::Args)]
pub(super) struct BenchArgs {
    /// Model bundle to benchmark.
    #[arg(long, required_unless_present = "target_url")]
    model_dir: Option<PathBuf>,
    /// Folder of JPEG photographs.
    #[arg(long)]
    photos: PathBuf,
    /// Length of each measurement (e.g. `30s`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Patterns (a) and (c): concurrent connections, one image per request (the ingest processor).
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
    /// Each image lane with its own prepacked copy of the weights, for model-only and the
    /// server alike (`serve --per-lane-weights`).
    #[arg(long)]
    per_lane_weights: bool,
    /// Result line of `bench/peer.py` from the same run, for the Sightline ÷ peer ratio.
    #[arg(long)]
    peer: Option<PathBuf>,
    /// Result line of `bench/infinity.py` from the same run, for the infinity rows.
    #[arg(long)]
    infinity: Option<PathBuf>,
    /// Drive the server already running at this URL with patterns (a), (b) and (c) for
    /// `--duration` each, instead of starting `sightline serve`; prints one JSON line.
    #[arg(long, conflicts_with_all = ["model_dir", "peer", "infinity"])]
    target_url: Option<String>,
    /// Request format of `--target-url`.
    #[arg(long, value_enum, default_value = "sightline", requires = "target_url")]
    target_dialect: Dialect,
    /// `model` field of the requests to `--target-url` (infinity: its served model name).
    #[arg(long, default_value = "bench", requires = "target_url")]
    target_model: String,
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
    /// Patterns (a) and (c): concurrent connections, one image per request.
    clients: usize,
    /// Pattern (b): images per request, and concurrent connections.
    batch: usize,
    batch_clients: usize,
    /// ONNX Runtime threads and image lanes, for the model-only run and the server alike.
    threads: usize,
    image_lanes: usize,
    per_lane_weights: bool,
    /// Extra `serve` flags (e.g. `--exact-jpeg`).
    serve_args: Vec<String>,
    /// One JSON line from `bench/peer.py`, measured in the same run.
    peer: Option<PathBuf>,
    /// One JSON line from `bench/infinity.py`, measured in the same run.
    infinity: Option<PathBuf>,
}

/// The request bodies of the three patterns, in the dialect of the server under test.
struct Workload {
    /// (a): one full-size photo per request.
    singles: Arc<Vec<Bytes>>,
    /// (b): `batch` full-size photos per request.
    groups: Arc<Vec<Bytes>>,
    /// (c): one ingest-sized image per request.
    ingest: Arc<Vec<Bytes>>,
}

impl Workload {
    fn new(target: &Target, photos: &baseline::Photos, batch: usize) -> Workload {
        let uris: Vec<String> = photos
            .originals
            .iter()
            .map(|p| data_uri("image/jpeg", p))
            .collect();
        let groups = (0..uris.len())
            .map(|i| {
                let group: Vec<String> = (0..batch)
                    .map(|k| uris[(i + k) % uris.len()].clone())
                    .collect();
                target.body(&group)
            })
            .collect();
        let singles = uris.iter().map(|u| target.body(std::slice::from_ref(u)));
        let ingest = photos.ingest.iter().map(|p| target.body(&[p.data_uri()]));
        Workload {
            singles: Arc::new(singles.collect()),
            groups: Arc::new(groups),
            ingest: Arc::new(ingest.collect()),
        }
    }
}

pub(super) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if let Some(url) = args.target_url {
        let target = Target {
            url,
            dialect: args.target_dialect,
            model: args.target_model,
        };
        let line = external::measure(&external::ExternalConfig {
            target,
            photos: args.photos,
            duration: args.duration,
            clients: args.clients,
            batch: args.batch,
            batch_clients: args.batch_clients,
        })
        .await?;
        println!("{line}");
        return Ok(ExitCode::SUCCESS);
    }
    let report = measure(&BenchConfig {
        model_dir: args.model_dir.unwrap_or_default(),
        photos: args.photos,
        duration: args.duration,
        clients: args.clients,
        batch: args.batch,
        batch_clients: args.batch_clients,
        threads,
        image_lanes: args.image_lanes,
        per_lane_weights: args.per_lane_weights,
        serve_args: args.serve_args,
        peer: args.peer,
        infinity: args.infinity,
    })
    .await?;
    println!("{}", report.table());
    Ok(ExitCode::SUCCESS)
}

async fn measure(cfg: &BenchConfig) -> Result<Report> {
    let photos = baseline::Photos::load(&cfg.photos)?;
    let settings = Bundle::load(&cfg.model_dir)?.manifest.preprocess;
    let model_only = baseline::model_only(cfg, &settings, &photos.originals).await?;
    eprintln!("bench: model-only {model_only:.2} images/s");
    let decode_ms = baseline::decode_cost_ms(cfg, settings.clone(), &photos.originals).await?;
    let ingest_payloads: Vec<Vec<u8>> = photos.ingest.iter().map(|p| p.payload.to_vec()).collect();
    let ingest_decode_ms = baseline::decode_cost_ms(cfg, settings, &ingest_payloads).await?;
    eprintln!(
        "bench: decoding and preprocessing {decode_ms:.1} ms per photo, {ingest_decode_ms:.1} ms per ingest-sized image, on one core"
    );

    // One lane first, alone: what the second lane adds to the resident memory.
    let one_lane = Server::start(cfg, 1).await?;
    let one_lane_loaded = one_lane.loaded;
    one_lane.stop().await?;
    let server = Server::start(cfg, cfg.image_lanes).await?;
    eprintln!(
        "bench: loaded RSS {:.0} MiB with 1 image lane (ready after {:.1} s), {:.0} MiB with {} (ready after {:.1} s)",
        one_lane_loaded.rss_mib,
        one_lane_loaded.ready_after.as_secs_f64(),
        server.loaded.rss_mib,
        server.loaded.lanes,
        server.loaded.ready_after.as_secs_f64()
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(cfg.clients.max(cfg.batch_clients) + 1)
        .build()?;
    let target = Target {
        url: server.url.clone(),
        dialect: Dialect::Sightline,
        model: "bench".to_owned(),
    };
    let work = Workload::new(&target, &photos, cfg.batch);
    // Each pattern sends about as many images as the model-only rate finishes in `duration`.
    let images = ((model_only * cfg.duration.as_secs_f64()).ceil() as usize).max(cfg.clients);
    let endpoint = target.endpoint("");

    let text = Bytes::from_static(br#"{"input":["eine rote Katze im Schnee"],"model":"bench"}"#);
    let stop = Arc::new(AtomicBool::new(false));
    let text_probe = tokio::spawn(probe(
        client.clone(),
        endpoint.clone(),
        text,
        Duration::from_millis(200),
        stop.clone(),
    ));
    let budget = Budget::Images(images);
    let one_per_request = drive(
        &client,
        &endpoint,
        work.singles.clone(),
        1,
        budget,
        cfg.clients,
    )
    .await?;
    stop.store(true, Ordering::Release);
    let text_samples = text_probe.await??;
    eprintln!("bench: (a) {:.2} images/s", one_per_request.images_per_s);

    let query = target.body(&[data_uri("image/jpeg", &photos.originals[0])]);
    let image_queries =
        image_queries(cfg, &client, &target, work.singles.clone(), query, budget).await?;
    eprintln!(
        "bench: image query p99 during (a): {:.0} ms with ?priority=search, {:.0} ms without",
        image_queries.priority.p99.as_secs_f64() * 1e3,
        image_queries.plain.p99.as_secs_f64() * 1e3
    );

    let batched = drive(
        &client,
        &endpoint,
        work.groups.clone(),
        cfg.batch,
        budget,
        cfg.batch_clients,
    )
    .await?;
    eprintln!("bench: (b) {:.2} images/s", batched.images_per_s);
    let ingest_sized = drive(&client, &endpoint, work.ingest, 1, budget, cfg.clients).await?;
    eprintln!("bench: (c) {:.2} images/s", ingest_sized.images_per_s);

    let (loaded, peak_rss_mib) = (server.loaded, server.memory_mib("VmHWM")?);
    server.stop().await?;
    let peer = match &cfg.peer {
        Some(path) => Some(read_peer(path)?),
        None => None,
    };
    let infinity = match &cfg.infinity {
        Some(path) => Some(read_infinity(path)?),
        None => None,
    };
    Ok(Report {
        photos: photos.summary(),
        model_only,
        threads: cfg.threads,
        clients: cfg.clients,
        batch: cfg.batch,
        batch_clients: cfg.batch_clients,
        decode_ms,
        ingest_decode_ms,
        one_per_request,
        batched,
        ingest_sized,
        text_queries: text_samples.len(),
        text_under_load: Latency::of(text_samples),
        image_queries,
        one_lane: one_lane_loaded,
        loaded,
        peak_rss_mib,
        peer,
        infinity,
    })
}

/// Pattern (a) again, this time with two image-query probes beside it: one through the priority
/// lane (`?priority=search`, what the search endpoint `setup` creates sends) and one without
/// (what every image query got before the lane existed). A run of its own, so the probes' images
/// do not lower the (a) rate reported above; both probes share it, so the comparison is fair.
async fn image_queries(
    cfg: &BenchConfig,
    client: &reqwest::Client,
    target: &Target,
    singles: Arc<Vec<Bytes>>,
    query: Bytes,
    budget: Budget,
) -> Result<ImageQueries> {
    let stop = Arc::new(AtomicBool::new(false));
    let spawn_probe = |query_string: &str| {
        tokio::spawn(probe(
            client.clone(),
            target.endpoint(query_string),
            query.clone(),
            Duration::from_secs(1),
            stop.clone(),
        ))
    };
    let (priority, plain) = (spawn_probe("?priority=search"), spawn_probe(""));
    let during: Throughput = drive(
        client,
        &target.endpoint(""),
        singles,
        1,
        budget,
        cfg.clients,
    )
    .await?;
    stop.store(true, Ordering::Release);
    let (priority, plain) = (priority.await??, plain.await??);
    Ok(ImageQueries {
        sent: (priority.len(), plain.len()),
        priority: Latency::of(priority),
        plain: Latency::of(plain),
        ingest_images_per_s: during.images_per_s,
    })
}
