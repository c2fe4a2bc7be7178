//! The throughput benchmark behind `sightline bench` (issue 5). In one run it measures:
//! model-only images/s (the image encoder alone on preprocessed tensors, with the server's
//! session settings), then a real `sightline serve` child process on loopback under the two
//! request patterns Elasticsearch produces — (a) many connections with one image each (ingest
//! processor), (b) requests of ten images (custom service batches) — plus text-query latency
//! while (a) saturates the machine, and the server's peak RSS. Ratios are against the
//! model-only number of the same run, so the machine's speed cancels out.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use crate::engine::bundle::{Bundle, Preprocess};
use crate::engine::preprocess::{preprocess, DecodeOptions};

/// What to measure, and against which server settings.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model_dir: PathBuf,
    pub photos: PathBuf,
    /// Target duration of each measurement.
    pub duration: Duration,
    /// Pattern (a): concurrent connections, one image per request.
    pub clients: usize,
    /// Pattern (b): images per request, and concurrent connections.
    pub batch: usize,
    pub batch_clients: usize,
    /// ONNX Runtime threads and image lanes, for the model-only run and the server alike.
    pub threads: usize,
    pub image_lanes: usize,
    /// Extra `serve` flags (e.g. `--exact-jpeg`).
    pub serve_args: Vec<String>,
    /// One JSON line from `bench/peer.py`, measured in the same run.
    pub peer: Option<PathBuf>,
}

/// Latency summary of one series of requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        Latency {
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// One measured row.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub images_per_s: f64,
    pub latency: Latency,
}

#[derive(Debug)]
pub struct Report {
    pub photos: usize,
    pub megapixels: (f64, f64),
    pub model_only: f64,
    /// ONNX Runtime threads (the cores the model-only rate used).
    pub threads: usize,
    /// One core's time to decode and preprocess a photo.
    pub decode_ms: f64,
    pub one_per_request: Throughput,
    pub batched: Throughput,
    pub text_under_load: Latency,
    pub text_queries: usize,
    /// Server memory once loaded, and its peak while the patterns ran.
    pub loaded_rss_mib: f64,
    pub peak_rss_mib: f64,
    pub peer: Option<PeerResult>,
}

/// What `bench/peer.py` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct PeerResult {
    pub images_per_s: f64,
    pub model_only_images_per_s: f64,
}

pub async fn run(cfg: &BenchConfig) -> Result<Report> {
    let photos = load_photos(&cfg.photos)?;
    let megapixels = megapixel_range(&photos);
    eprintln!(
        "bench: {} photos, {:.1}–{:.1} MP",
        photos.len(),
        megapixels.0,
        megapixels.1
    );

    let settings = Bundle::load(&cfg.model_dir)?.manifest.preprocess;
    let model_only = model_only(cfg, &settings, &photos).await?;
    eprintln!("bench: model-only {model_only:.2} images/s");
    let decode_ms = decode_cost_ms(cfg, settings, &photos).await?;
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
    let probe = tokio::spawn(probe_text(
        client.clone(),
        server.url.clone(),
        text,
        stop.clone(),
    ));
    let one_per_request = drive(
        &client,
        &server.url,
        Arc::new(singles),
        1,
        target,
        cfg.clients,
    )
    .await?;
    stop.store(true, Ordering::Release);
    let text_samples = probe.await??;
    eprintln!("bench: (a) {:.2} images/s", one_per_request.images_per_s);

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
        loaded_rss_mib,
        peak_rss_mib,
        peer,
    })
}

fn load_photos(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "cannot read the photo folder `{}`: run bench/fetch_photos.sh",
                dir.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        })
        .collect();
    paths.sort();
    ensure!(
        !paths.is_empty(),
        "no JPEG photos in `{}`: run bench/fetch_photos.sh",
        dir.display()
    );
    paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read `{}`", p.display())))
        .collect()
}

fn megapixel_range(photos: &[Vec<u8>]) -> (f64, f64) {
    let sizes = photos.iter().filter_map(|p| {
        image::ImageReader::new(std::io::Cursor::new(p))
            .with_guessed_format()
            .ok()?
            .into_dimensions()
            .ok()
            .map(|(w, h)| f64::from(w) * f64::from(h) / 1e6)
    });
    sizes.fold((f64::MAX, 0.0), |(lo, hi), mp| (lo.min(mp), hi.max(mp)))
}

/// Milliseconds one core spends decoding and preprocessing a photo, averaged over the set, with
/// the server's decoding settings. The ceiling row of the report follows from it.
async fn decode_cost_ms(
    cfg: &BenchConfig,
    settings: Preprocess,
    photos: &[Vec<u8>],
) -> Result<f64> {
    let decode = DecodeOptions {
        jpeg_prescale: !cfg.serve_args.iter().any(|a| a == "--exact-jpeg"),
        ..DecodeOptions::default()
    };
    let photos = photos.to_vec();
    tokio::task::spawn_blocking(move || {
        // The fastest of three passes: the least disturbed by anything else on the machine.
        let mut best = f64::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            for photo in &photos {
                preprocess(photo, &settings, &decode)?;
            }
            best = best.min(started.elapsed().as_secs_f64() * 1e3 / photos.len() as f64);
        }
        Ok(best)
    })
    .await?
}

/// The image encoder alone on preprocessed tensors of the same photos.
async fn model_only(cfg: &BenchConfig, settings: &Preprocess, photos: &[Vec<u8>]) -> Result<f64> {
    let tensors = photos
        .iter()
        .take(8)
        .map(|p| preprocess(p, settings, &DecodeOptions::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let (dir, threads, lanes, duration) = (
        cfg.model_dir.clone(),
        cfg.threads,
        cfg.image_lanes,
        cfg.duration,
    );
    tokio::task::spawn_blocking(move || {
        crate::engine::image_model_throughput(&dir, threads, lanes, 8, tensors, duration)
    })
    .await?
}

fn body(inputs: &[String]) -> Bytes {
    Bytes::from(serde_json::json!({"input": inputs, "model": "bench"}).to_string())
}

/// Sends `bodies` round-robin from `clients` connections until `target` images are embedded.
async fn drive(
    client: &reqwest::Client,
    url: &str,
    bodies: Arc<Vec<Bytes>>,
    per_request: usize,
    target: usize,
    clients: usize,
) -> Result<Throughput> {
    let next = Arc::new(AtomicUsize::new(0));
    let requests = target.div_ceil(per_request);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (client, url, bodies, next) =
                (client.clone(), url.to_owned(), bodies.clone(), next.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return Ok::<_, anyhow::Error>(samples);
                    }
                    let body = bodies[i % bodies.len()].clone();
                    samples.push(post(&client, &url, body, per_request).await?);
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await??);
    }
    let wall = started.elapsed();
    Ok(Throughput {
        images_per_s: (requests * per_request) as f64 / wall.as_secs_f64(),
        latency: Latency::of(samples),
    })
}

/// One request; fails the benchmark on anything but 200 with `expected` vectors.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
    expected: usize,
) -> Result<Duration> {
    #[derive(Deserialize)]
    struct Response {
        data: Vec<serde::de::IgnoredAny>,
    }
    let started = Instant::now();
    let response = client
        .post(format!("{url}/v1/embeddings"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    let elapsed = started.elapsed();
    if !status.is_success() {
        bail!(
            "the server answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let parsed: Response = serde_json::from_slice(&bytes)?;
    ensure!(
        parsed.data.len() == expected,
        "expected {expected} vectors, got {}",
        parsed.data.len()
    );
    Ok(elapsed)
}

/// Text queries every 200 ms until `stop`: a few users searching in Kibana during a bulk
/// ingest. (A denser probe would itself be a load that steals CPU from the images.)
async fn probe_text(
    client: reqwest::Client,
    url: String,
    body: Bytes,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        samples.push(post(&client, &url, body.clone(), 1).await?);
    }
    Ok(samples)
}

fn read_peer(path: &Path) -> Result<PeerResult> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_default();
    serde_json::from_str(line)
        .with_context(|| format!("`{}` holds no peer.py result line", path.display()))
}

/// A `sightline serve` child process on a free loopback port.
struct Server {
    child: tokio::process::Child,
    url: String,
    loaded_rss_mib: f64,
}

impl Server {
    async fn start(cfg: &BenchConfig) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let exe = std::env::current_exe()?;
        let child = tokio::process::Command::new(exe)
            .args(["serve", "--model-dir"])
            .arg(&cfg.model_dir)
            .args(["--addr", &addr, "--threads", &cfg.threads.to_string()])
            .args(["--image-lanes", &cfg.image_lanes.to_string()])
            .args(&cfg.serve_args)
            .env("SIGHTLINE_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start `sightline serve`")?;
        let mut server = Server {
            child,
            url: format!("http://{addr}"),
            loaded_rss_mib: 0.0,
        };
        server.wait_ready().await?;
        server.loaded_rss_mib = server.memory_mib("VmRSS")?;
        // Loading briefly holds a model twice; reset the peak so it reports the load test.
        let pid = server.child.id().context("the server has exited")?;
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .context("cannot reset the server's peak RSS (/proc/<pid>/clear_refs)")?;
        Ok(server)
    }

    /// Polls `/ready` while the model loads (up to two minutes for the full-size model).
    async fn wait_ready(&self) -> Result<()> {
        let client = reqwest::Client::new();
        let until = Instant::now() + Duration::from_secs(120);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while Instant::now() < until {
            tick.tick().await;
            if let Ok(r) = client.get(format!("{}/ready", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
        }
        bail!("`sightline serve` did not become ready within two minutes")
    }

    /// A memory figure of the server process: `VmRSS` (now) or `VmHWM` (peak since reset).
    fn memory_mib(&self, field: &str) -> Result<f64> {
        let pid = self.child.id().context("the server has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/<pid>/status"))?;
        Ok(kib / 1024.0)
    }

    /// SIGTERM, then wait: the server must drain and exit 0.
    async fn stop(mut self) -> Result<()> {
        let pid = self.child.id().context("the server has exited")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let status = self.child.wait().await?;
        ensure!(
            status.success(),
            "`sightline serve` exited with {status} after SIGTERM"
        );
        Ok(())
    }
}

impl Report {
    /// The fastest end-to-end rate these cores allow when every photo's decoding takes CPU
    /// the model would otherwise use: per image, `threads / model_only` core-seconds of model
    /// plus `decode_ms` of decoding.
    pub fn ceiling(&self) -> f64 {
        self.threads as f64 / (self.threads as f64 / self.model_only + self.decode_ms / 1e3)
    }

    /// The table the README shows.
    pub fn table(&self) -> String {
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
        let ratio = |x: f64| format!("{:.2}", x / self.model_only);
        let mut out = format!(
            "{} photos, {:.1}–{:.1} MP\n\n| path | images/s | p50 ms | p99 ms | ÷ model-only |\n|---|---|---|---|---|\n",
            self.photos, self.megapixels.0, self.megapixels.1
        );
        out += &format!(
            "| model only (preprocessed tensors, batch 8) | {:.2} | | | 1.00 |\n",
            self.model_only
        );
        let ceiling = self.ceiling();
        out += &format!(
            "| ceiling: model + {:.1} ms decoding per photo on {} cores | {ceiling:.2} | | | {} |\n",
            self.decode_ms,
            self.threads,
            ratio(ceiling)
        );
        for (name, t) in [
            ("Sightline (a) 1 image/request", &self.one_per_request),
            ("Sightline (b) 10 images/request", &self.batched),
        ] {
            out += &format!(
                "| {name} | {:.2} | {} | {} | {} |\n",
                t.images_per_s,
                ms(t.latency.p50),
                ms(t.latency.p99),
                ratio(t.images_per_s)
            );
        }
        if let Some(peer) = &self.peer {
            out += &format!(
                "| Python peer (PIL + onnxruntime, batch 8) | {:.2} | | | {} (own model-only {:.2}) |\n",
                peer.images_per_s,
                ratio(peer.images_per_s),
                peer.model_only_images_per_s
            );
            out += &format!(
                "\nSightline ÷ peer: (a) {:.2}×, (b) {:.2}×\n",
                self.one_per_request.images_per_s / peer.images_per_s,
                self.batched.images_per_s / peer.images_per_s
            );
        }
        out += &format!(
            "\ntext queries during (a): {} sent, p50 {} ms, p99 {} ms\nserver RSS: {:.0} MiB loaded, peak {:.0} MiB under load\n",
            self.text_queries,
            ms(self.text_under_load.p50),
            ms(self.text_under_load.p99),
            self.loaded_rss_mib,
            self.peak_rss_mib
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_nearest_ranks() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(samples);
        assert_eq!(l.p50, Duration::from_millis(51));
        assert_eq!(l.p99, Duration::from_millis(99));
        assert_eq!(Latency::of(Vec::new()).p99, Duration::ZERO);
    }

    #[test]
    fn ceiling_adds_decoding_cpu_to_the_model_cpu() {
        let row = Throughput {
            images_per_s: 0.0,
            latency: Latency::default(),
        };
        let report = Report {
            photos: 1,
            megapixels: (1.0, 1.0),
            model_only: 20.0,
            threads: 2,
            decode_ms: 25.0,
            one_per_request: row,
            batched: row,
            text_under_load: Latency::default(),
            text_queries: 0,
            loaded_rss_mib: 0.0,
            peak_rss_mib: 0.0,
            peer: None,
        };
        // 2 cores ÷ 20 images/s = 100 ms of model per image, + 25 ms decoding: 16 images/s.
        assert!((report.ceiling() - 16.0).abs() < 1e-9);
        assert!(report.table().contains(
            "| ceiling: model + 25.0 ms decoding per photo on 2 cores | 16.00 | | | 0.80 |"
        ));
    }

    #[test]
    fn peer_result_is_the_last_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.json");
        std::fs::write(
            &path,
            "log line\n{\"images_per_s\": 9.5, \"model_only_images_per_s\": 18.0}\n",
        )
        .unwrap();
        let peer = read_peer(&path).unwrap();
        assert_eq!(
            (peer.images_per_s, peer.model_only_images_per_s),
            (9.5, 18.0)
        );
    }
}
