//! `sightline bench`: the throughput benchmark (issues 5 and 15). In one run it measures
//! model-only images/s (the image encoder alone on preprocessed tensors, with the server's
//! session settings, `baseline.rs`), one core's decoding cost, the memory and start-up time of a server with one image
//! lane and with the configured lanes, then a real `sightline serve` child process on loopback
//! (`server.rs`) under the request patterns Elasticsearch produces (`load.rs`) — (a) many
//! connections with one full-size photo each (the ingest processor), (b) requests of ten photos
//! (custom service batches), (c) one image per request as `sightline ingest` sends it (shrunk
//! to 1024 pixels and re-encoded by the ingest's own function), each in its steady state —
//! then text- and image-query latency (with and without the priority lane, `?priority=search`)
//! during a second run of (a), and the server's peak RSS. Each pattern runs in rounds, each
//! round after its own model-only and decoding measurements (`rounds.rs`), so the ratios to
//! them are of the same moment and the machine's speed, even as it drifts, cancels out
//! (`report.rs`). With `--target-url` it drives another server (infinity)
//! with the same photos and patterns instead and prints one JSON line (`external.rs`).
//! `make bench` prepares the random-weight models, the photos and the peers, then calls it.

mod baseline;
mod external;
mod load;
mod report;
mod rounds;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;

use crate::engine::bundle::Bundle;
use crate::engine::preprocess::DecodeOptions;
use crate::es::image::data_uri;
use load::{drive, probe, Dialect, Latency, Target};
use report::{read_infinity, read_peer, ImageQueries, Report};
use rounds::{Baselines, Measured, Pattern};
use server::Server;

#[derive(Debug, clap::Args)]
pub(super) struct BenchArgs {
    /// Model bundle to benchmark.
    #[arg(long, required_unless_present = "target_url")]
    model_dir: Option<PathBuf>,
    /// Folder of JPEG photographs.
    #[arg(long)]
    photos: PathBuf,
    /// Steady state measured per pattern, split over `--rounds` (e.g. `30s`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Rounds per pattern, each measuring the model alone and one core's decoding right
    /// before the server, so each round is compared with baselines of the same moment.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
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
    /// Steady state per pattern, and the rounds it is split over.
    duration: Duration,
    rounds: usize,
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

/// The requests of the three patterns, in the dialect of the server under test.
struct Workload {
    /// (a): one full-size photo per request.
    singles: Requests,
    /// (b): `batch` full-size photos per request.
    groups: Requests,
    /// (c): one ingest-sized image per request.
    ingest: Requests,
}

/// A pattern's request bodies, and the images each carries (indices into the pattern's images).
#[derive(Clone)]
struct Requests {
    bodies: Arc<Vec<Bytes>>,
    carries: Arc<Vec<Vec<usize>>>,
}

impl Requests {
    /// One body per entry of `carries`, of those of `uris`.
    fn new(target: &Target, uris: &[String], carries: Vec<Vec<usize>>) -> Requests {
        let body = |c: &Vec<usize>| {
            let inputs: Vec<String> = c.iter().map(|&i| uris[i].clone()).collect();
            target.body(&inputs)
        };
        Requests {
            bodies: Arc::new(carries.iter().map(body).collect()),
            carries: Arc::new(carries),
        }
    }
}

/// Pattern (b)'s groups of `batch` of `n` photos: consecutive photos, the next group going on
/// where the last ended, until a group ends on the last photo. Any few requests in a row carry
/// every photo about equally often, so a short round sees the same mix of small and large
/// photos as the whole set (groups sliding by one photo gave a 7-s round only photos 4–21).
fn groups(n: usize, batch: usize) -> Vec<Vec<usize>> {
    let (n, batch) = (n.max(1), batch.max(1));
    let count = (1..=n).find(|i| i * batch % n == 0).unwrap_or(n);
    (0..count)
        .map(|i| (0..batch).map(|k| (i * batch + k) % n).collect())
        .collect()
}

impl Workload {
    fn new(target: &Target, photos: &baseline::Photos, batch: usize) -> Workload {
        let uris: Vec<String> = photos
            .originals
            .iter()
            .map(|p| data_uri("image/jpeg", p))
            .collect();
        let ingest: Vec<String> = photos.ingest.iter().map(|p| p.data_uri()).collect();
        let one_each = |n: usize| (0..n).map(|i| vec![i]).collect();
        Workload {
            singles: Requests::new(target, &uris, one_each(uris.len())),
            groups: Requests::new(target, &uris, groups(uris.len(), batch)),
            ingest: Requests::new(target, &ingest, one_each(ingest.len())),
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
        rounds: args.rounds as usize,
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
    let model = baseline::ModelOnly::open(cfg, &settings, &photos.originals)?;

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
    let endpoint = target.endpoint("");
    let baselines = Baselines {
        model: Arc::new(model),
        settings,
        decode: DecodeOptions {
            jpeg_prescale: !cfg.serve_args.iter().any(|a| a == "--exact-jpeg"),
            ..DecodeOptions::default()
        },
        threads: cfg.threads,
        rounds: cfg.rounds,
        duration: cfg.duration,
    };
    let originals = Arc::new(photos.originals.clone());
    let ingest_payloads = Arc::new(photos.ingest.iter().map(|p| p.payload.to_vec()).collect());
    let pattern = |requests: &Requests, per_request, clients, images: &Arc<Vec<Vec<u8>>>| Pattern {
        client: &client,
        endpoint: &endpoint,
        requests: requests.clone(),
        per_request,
        clients,
        images: images.clone(),
    };
    let mut measured = Vec::new();
    for (name, p) in [
        ("a", pattern(&work.singles, 1, cfg.clients, &originals)),
        (
            "b",
            pattern(&work.groups, cfg.batch, cfg.batch_clients, &originals),
        ),
        ("c", pattern(&work.ingest, 1, cfg.clients, &ingest_payloads)),
    ] {
        let m = rounds::measure(&baselines, p).await?;
        eprintln!(
            "bench: ({name}) {:.2} images/s; model-only {:.2} and {:.1} ms decoding per image in its rounds; {:.2} of the ceiling (rounds {:.2}–{:.2})",
            m.throughput.images_per_s,
            m.model_only,
            m.decode_ms,
            m.of_ceiling,
            m.of_ceiling_range.0,
            m.of_ceiling_range.1
        );
        measured.push(m);
    }
    let [one_per_request, batched, ingest_sized] =
        <[Measured; 3]>::try_from(measured).map_err(|_| anyhow::anyhow!("three patterns"))?;

    let query = target.body(&[data_uri("image/jpeg", &photos.originals[0])]);
    let (image_queries, text_samples) =
        queries_during_ingest(cfg, &client, &target, work.singles.bodies.clone(), query).await?;
    eprintln!(
        "bench: image query p99 during (a): {:.0} ms with ?priority=search, {:.0} ms without",
        image_queries.priority.p99.as_secs_f64() * 1e3,
        image_queries.plain.p99.as_secs_f64() * 1e3
    );

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
        threads: cfg.threads,
        rounds: cfg.rounds,
        clients: cfg.clients,
        batch: cfg.batch,
        batch_clients: cfg.batch_clients,
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

/// Pattern (a) again, this time with query probes beside it: text every 200 ms, and images
/// every second through the priority lane (`?priority=search`, what the search endpoint `setup`
/// creates sends) and without it (what every image query got before the lane existed). A run
/// of its own, so the probes do not lower the (a) rate reported above; both image probes share
/// it, so their comparison is fair.
async fn queries_during_ingest(
    cfg: &BenchConfig,
    client: &reqwest::Client,
    target: &Target,
    singles: Arc<Vec<Bytes>>,
    query: Bytes,
) -> Result<(ImageQueries, Vec<Duration>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let spawn_probe = |query_string: &str, body: Bytes, every: Duration| {
        tokio::spawn(probe(
            client.clone(),
            target.endpoint(query_string),
            body,
            every,
            stop.clone(),
        ))
    };
    let text = Bytes::from_static(br#"{"input":["eine rote Katze im Schnee"],"model":"bench"}"#);
    let text = spawn_probe("", text, Duration::from_millis(200));
    let second = Duration::from_secs(1);
    let priority = spawn_probe("?priority=search", query.clone(), second);
    let plain = spawn_probe("", query, second);
    let during = drive(
        client,
        &target.endpoint(""),
        singles,
        1,
        cfg.clients,
        cfg.duration,
    )
    .await?;
    stop.store(true, Ordering::Release);
    let (priority, plain, text) = (priority.await??, plain.await??, text.await??);
    Ok((
        ImageQueries {
            sent: (priority.len(), plain.len()),
            priority: Latency::of(priority),
            plain: Latency::of(plain),
            ingest_images_per_s: during.rate(),
        },
        text,
    ))
}

#[cfg(test)]
mod tests {
    use super::groups;

    /// How often each of `n` photos is carried by `groups`.
    fn carried(groups: &[Vec<usize>], n: usize) -> Vec<usize> {
        let mut count = vec![0; n];
        groups.iter().flatten().for_each(|&i| count[i] += 1);
        count
    }

    #[test]
    fn groups_go_on_where_the_last_ended_and_carry_each_photo_equally() {
        let g = groups(40, 10);
        assert_eq!(g.len(), 4);
        assert_eq!(g[1], (10..20).collect::<Vec<_>>());
        assert_eq!(carried(&g, 40), vec![1; 40]);
        assert_eq!(
            groups(5, 2),
            [[0, 1], [2, 3], [4, 0], [1, 2], [3, 4]].map(Vec::from)
        );
        // More images per request than photos: each photo several times per group.
        let g = groups(3, 10);
        assert_eq!((g.len(), carried(&g, 3)), (3, vec![10; 3]));
        assert_eq!(groups(40, 1).len(), 40);
    }
}
