//! Load generator for `scripts/load.sh` (issue 6, Scope 3): N concurrent clients mix valid images
//! and texts with hostile inputs, bodies and abandoned requests against a running `sightline
//! serve`, for a bounded time and a bounded number of requests, then stop by themselves.
//!
//! It checks, and exits non-zero unless: every valid request gets a 200 whose vectors equal what
//! each input gets alone (a single-input baseline taken before the load, 1e-6 per component);
//! every hostile input gets a 400 naming its index; no request gets a 5xx or a transport error;
//! the server is still ready afterwards. It samples the server's RSS from `/proc/<pid>/status`.
//!
//! Loopback only: a URL whose host is not 127.0.0.0/8, ::1 or `localhost` is refused.
//!
//! ```text
//! cargo run --release --example load -- --url http://127.0.0.1:8080 --key KEY --server-pid PID
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use clap::Parser;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    /// Base URL of the server (loopback only).
    #[arg(long)]
    url: String,
    /// API key the server was started with.
    #[arg(long)]
    key: Option<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 12)]
    clients: usize,
    /// How long the load runs.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many requests even if time is left.
    #[arg(long, default_value_t = 200_000)]
    max_requests: u64,
    /// The server's `--max-body` in bytes (oversized bodies are sent just above it).
    #[arg(long, default_value_t = 8 << 20)]
    max_body: usize,
    /// The server's `--max-inputs`.
    #[arg(long, default_value_t = 2048)]
    max_inputs: usize,
    /// The server's process id, to sample its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Where to write the JSON report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 6)]
    seed: u64,
}

/// xorshift64*: a reproducible mix without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A valid input and the vector it gets alone.
struct Valid {
    name: String,
    value: String,
    baseline: Vec<f32>,
}

/// A hostile input that must be refused.
struct Hostile {
    name: String,
    value: String,
}

/// The request classes, with their weight in the mix (out of 100).
const CLASSES: [(&str, usize); 9] = [
    ("valid-image", 26),
    ("valid-text", 18),
    ("valid-mixed", 14),
    ("hostile-image", 12),
    ("hostile-mixed", 8),
    ("hostile-body", 6),
    ("huge-valid", 4),
    ("abandoned", 8),
    ("ops", 4),
];

#[derive(Default)]
struct ClassStats {
    sent: u64,
    inputs: u64,
    statuses: BTreeMap<String, u64>,
    latencies_ms: Vec<f64>,
}

#[derive(Default)]
struct Stats {
    classes: BTreeMap<&'static str, ClassStats>,
    failures: Vec<String>,
    max_vector_diff: f32,
    vectors_checked: u64,
}

impl Stats {
    fn record(&mut self, class: &'static str, inputs: usize, status: &str, latency: Duration) {
        let c = self.classes.entry(class).or_default();
        c.sent += 1;
        c.inputs += inputs as u64;
        *c.statuses.entry(status.to_owned()).or_default() += 1;
        c.latencies_ms.push(latency.as_secs_f64() * 1e3);
    }
    fn fail(&mut self, message: String) {
        if self.failures.len() < 50 {
            eprintln!("FAIL: {message}");
        }
        self.failures.push(message);
    }
}

struct Shared {
    args: Args,
    client: reqwest::Client,
    valid_images: Vec<Valid>,
    valid_texts: Vec<Valid>,
    hostile: Vec<Hostile>,
    stats: Mutex<Stats>,
    sent: AtomicU64,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn data_uri(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!("data:image/png;base64,{b64}"))
}

fn ensure_loopback(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url).context("--url")?;
    let host = parsed.host_str().context("--url has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    ensure!(
        ok,
        "refusing to load `{host}`: only loopback addresses are allowed"
    );
    Ok(())
}

impl Shared {
    fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .post(format!("{}{path}", self.args.url))
            .header("content-type", "application/json; charset=UTF-8")
            .body(body);
        if let Some(key) = &self.args.key {
            req = req.bearer_auth(key);
        }
        req
    }

    async fn embed(&self, inputs: &[&str]) -> Result<(u16, Value)> {
        let body = json!({"input": inputs, "model": "load"}).to_string();
        let response = self.post("/v1/embeddings", body).send().await?;
        let status = response.status().as_u16();
        let json = response.json().await.unwrap_or(Value::Null);
        Ok((status, json))
    }
}

fn vector(json: &Value, i: usize) -> Option<Vec<f32>> {
    json["data"][i]["embedding"]
        .as_array()?
        .iter()
        .map(|x| x.as_f64().map(|x| x as f32))
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Loads the inputs and takes each valid input's baseline vector, alone.
async fn prepare(args: Args) -> Result<Shared> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut shared = Shared {
        args,
        client,
        valid_images: Vec::new(),
        valid_texts: Vec::new(),
        hostile: Vec::new(),
        stats: Mutex::new(Stats::default()),
        sent: AtomicU64::new(0),
    };
    let images = fixtures().join("images");
    let hostile = fixtures().join("hostile");
    let mut valid = Vec::new();
    for entry in std::fs::read_dir(&images)? {
        let path = entry?.path();
        if path.is_file() {
            valid.push(path);
        }
    }
    for name in [
        "1x10000.png",
        "10000x1.png",
        "1x10000.jpg",
        "exif-absurd.jpg",
        "exif-absurd.png",
        "progressive.jpg",
        "jpeg-bytes.png",
    ] {
        valid.push(hostile.join(name));
    }
    valid.sort();
    let mut bad: Vec<PathBuf> = std::fs::read_dir(&hostile)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !valid.contains(p) && !is_base(p))
        .collect();
    bad.extend(std::fs::read_dir(images.join("broken"))?.filter_map(|e| e.ok().map(|e| e.path())));
    bad.sort();
    for path in &bad {
        shared.hostile.push(Hostile {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            value: data_uri(path)?,
        });
    }
    let texts = [
        "A dog in the snow",
        "a small red car near the beach at night",
        "Eine Katze schläft im Schnee",
        "Кошка спит на снегу",
        "一只猫在雪地里睡觉",
        "🐶 dog and 🐱 cat",
        "how big",
    ];
    for path in valid {
        let value = data_uri(&path)?;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let baseline = baseline(&shared, &name, &value).await?;
        shared.valid_images.push(Valid {
            name,
            value,
            baseline,
        });
    }
    for text in texts {
        let baseline = baseline(&shared, text, text).await?;
        shared.valid_texts.push(Valid {
            name: text.to_owned(),
            value: text.to_owned(),
            baseline,
        });
    }
    Ok(shared)
}

fn is_base(p: &std::path::Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("base."))
}

async fn baseline(shared: &Shared, name: &str, value: &str) -> Result<Vec<f32>> {
    let (status, json) = shared.embed(&[value]).await?;
    ensure!(status == 200, "baseline for {name}: {status} {json}");
    vector(&json, 0).with_context(|| format!("baseline for {name}: no vector"))
}

/// One client: picks a class, sends, checks, until the time or the request budget is spent.
async fn client(shared: Arc<Shared>, id: u64, until: Instant) {
    let mut rng = Rng(shared.args.seed.wrapping_mul(0x9e37_79b9) ^ ((id + 1) * 0x1234_5677));
    let total: usize = CLASSES.iter().map(|c| c.1).sum();
    while Instant::now() < until
        && shared.sent.fetch_add(1, Ordering::Relaxed) < shared.args.max_requests
    {
        let mut pick = rng.below(total);
        let class = CLASSES
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|c| c.0)
            .expect("a class");
        if let Err(e) = one(&shared, class, &mut rng).await {
            shared
                .stats
                .lock()
                .unwrap()
                .fail(format!("{class}: transport error: {e:#}"));
        }
    }
}

async fn one(shared: &Shared, class: &'static str, rng: &mut Rng) -> Result<()> {
    let started = Instant::now();
    match class {
        "valid-image" | "valid-text" | "valid-mixed" => {
            let n = 1 + rng.below(4);
            let picked: Vec<&Valid> = (0..n)
                .map(|_| {
                    let images =
                        class != "valid-text" && (class == "valid-image" || rng.below(2) == 0);
                    let pool = if images {
                        &shared.valid_images
                    } else {
                        &shared.valid_texts
                    };
                    &pool[rng.below(pool.len())]
                })
                .collect();
            let inputs: Vec<&str> = picked.iter().map(|v| v.value.as_str()).collect();
            let (status, json) = shared.embed(&inputs).await?;
            let mut stats = shared.stats.lock().unwrap();
            stats.record(class, n, &status.to_string(), started.elapsed());
            if status != 200 {
                stats.fail(format!("{class}: {status} {}", short(&json)));
                return Ok(());
            }
            for (i, v) in picked.iter().enumerate() {
                let got = vector(&json, i).unwrap_or_default();
                let diff = max_diff(&got, &v.baseline);
                stats.vectors_checked += 1;
                stats.max_vector_diff = stats.max_vector_diff.max(diff);
                if diff > 1e-6 {
                    stats.fail(format!(
                        "{class}: {} differs from its baseline by {diff}",
                        v.name
                    ));
                }
            }
        }
        "hostile-image" | "hostile-mixed" => {
            let bad = &shared.hostile[rng.below(shared.hostile.len())];
            let mut inputs: Vec<&str> = Vec::new();
            if class == "hostile-mixed" {
                for _ in 0..1 + rng.below(3) {
                    inputs.push(&shared.valid_texts[rng.below(shared.valid_texts.len())].value);
                    inputs.push(&shared.valid_images[rng.below(shared.valid_images.len())].value);
                }
            }
            let at = rng.below(inputs.len() + 1);
            inputs.insert(at, &bad.value);
            let (status, json) = shared.embed(&inputs).await?;
            let mut stats = shared.stats.lock().unwrap();
            stats.record(class, inputs.len(), &status.to_string(), started.elapsed());
            let message = json["error"]["message"].as_str().unwrap_or_default();
            if status != 400 || !message.starts_with(&format!("input[{at}]: ")) {
                stats.fail(format!("{class} {} at {at}: {status} {message}", bad.name));
            }
        }
        "hostile-body" => {
            let (what, body, needle): (&str, Vec<u8>, &str) = match rng.below(5) {
                0 => ("invalid JSON", br#"{"input":["a""#.to_vec(), "invalid JSON"),
                1 => (
                    "invalid UTF-8",
                    b"{\"input\":[\"caf\xc3\x28\"]}".to_vec(),
                    "invalid JSON",
                ),
                2 => (
                    "nested 100 000 deep",
                    format!(
                        r#"{{"input":{}"a"{}}}"#,
                        "[".repeat(100_000),
                        "]".repeat(100_000)
                    )
                    .into_bytes(),
                    "invalid JSON",
                ),
                3 => (
                    "too many inputs",
                    json!({"input": vec!["a"; shared.args.max_inputs + 1]})
                        .to_string()
                        .into_bytes(),
                    "--max-inputs",
                ),
                _ => (
                    "body over --max-body",
                    format!(
                        r#"{{"input":["a"],"pad":"{}"}}"#,
                        " ".repeat(shared.args.max_body)
                    )
                    .into_bytes(),
                    "--max-body",
                ),
            };
            let response = shared.post("/v1/embeddings", body).send().await?;
            let status = response.status().as_u16();
            let json: Value = response.json().await.unwrap_or(Value::Null);
            let mut stats = shared.stats.lock().unwrap();
            stats.record(class, 0, &status.to_string(), started.elapsed());
            let message = json["error"]["message"].as_str().unwrap_or_default();
            if status != 400 || !message.contains(needle) {
                stats.fail(format!("{class} {what}: {status} {message}"));
            }
        }
        "huge-valid" => {
            // A body just under --max-body, mostly an ignored field, or a 1 MiB text.
            let text = &shared.valid_texts[0];
            let (body, what) = if rng.below(2) == 0 {
                let pad = shared.args.max_body.saturating_sub(4096);
                (
                    format!(
                        r#"{{"input":[{}],"pad":"{}"}}"#,
                        json!(text.value),
                        " ".repeat(pad)
                    ),
                    "huge JSON",
                )
            } else {
                let long = format!(
                    "{} {}",
                    text.value,
                    "snow falls on the hills ".repeat(1 << 16)
                );
                (json!({"input": [long]}).to_string(), "1.5 MiB text")
            };
            let response = shared.post("/v1/embeddings", body).send().await?;
            let status = response.status().as_u16();
            let json: Value = response.json().await.unwrap_or(Value::Null);
            let mut stats = shared.stats.lock().unwrap();
            stats.record(class, 1, &status.to_string(), started.elapsed());
            if status != 200 {
                stats.fail(format!("{class} {what}: {status} {}", short(&json)));
            } else if what == "huge JSON" {
                let diff = max_diff(&vector(&json, 0).unwrap_or_default(), &text.baseline);
                stats.vectors_checked += 1;
                stats.max_vector_diff = stats.max_vector_diff.max(diff);
                if diff > 1e-6 {
                    stats.fail(format!("{class}: {what} vector differs by {diff}"));
                }
            }
        }
        "abandoned" => {
            // The client gives up after 0–20 ms: the server must drop the work, not crash.
            let v = &shared.valid_images[rng.below(shared.valid_images.len())];
            let t = &shared.valid_texts[rng.below(shared.valid_texts.len())];
            let patience = Duration::from_millis(rng.below(21) as u64);
            let outcome = tokio::time::timeout(patience, shared.embed(&[&v.value, &t.value])).await;
            let mut stats = shared.stats.lock().unwrap();
            match outcome {
                Err(_) => stats.record(class, 2, "abandoned", started.elapsed()),
                Ok(Ok((status, json))) => {
                    stats.record(class, 2, &status.to_string(), started.elapsed());
                    if status != 200 {
                        stats.fail(format!("{class}: {status} {}", short(&json)));
                    }
                }
                Ok(Err(e)) => return Err(e),
            }
        }
        _ => {
            let path = ["/health", "/ready", "/metrics", "/info"][rng.below(4)];
            let mut req = shared.client.get(format!("{}{path}", shared.args.url));
            if let Some(key) = &shared.args.key {
                req = req.bearer_auth(key);
            }
            let status = req.send().await?.status().as_u16();
            let mut stats = shared.stats.lock().unwrap();
            stats.record(class, 0, &status.to_string(), started.elapsed());
            if status != 200 {
                stats.fail(format!("{class} {path}: {status}"));
            }
        }
    }
    Ok(())
}

fn short(json: &Value) -> String {
    json.to_string().chars().take(300).collect()
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure_loopback(&args.url)?;
    let (clients, duration, pid) = (args.clients, args.duration, args.server_pid);
    let shared = Arc::new(prepare(args).await?);
    let rss_before = pid.and_then(memory);
    eprintln!(
        "load: {} valid images, {} texts, {} hostile inputs; {clients} clients for {duration:?}",
        shared.valid_images.len(),
        shared.valid_texts.len(),
        shared.hostile.len()
    );
    let started = Instant::now();
    let until = started + duration;
    let sampler = pid.map(|pid| {
        tokio::spawn(async move {
            let mut peak_rss = 0;
            while Instant::now() < until {
                if let Some((rss, _)) = memory(pid) {
                    peak_rss = peak_rss.max(rss);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            peak_rss
        })
    });
    let tasks: Vec<_> = (0..clients as u64)
        .map(|id| tokio::spawn(client(shared.clone(), id, until)))
        .collect();
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed();
    let peak_sampled = match sampler {
        Some(s) => Some(s.await?),
        None => None,
    };

    // The server must still be up and ready.
    let ready = shared
        .client
        .get(format!("{}/ready", shared.args.url))
        .send()
        .await
        .map(|r| r.status().as_u16());
    let rss_after = pid.and_then(memory);

    let mut stats = shared.stats.lock().unwrap();
    if ready.as_ref().ok() != Some(&200) {
        stats.fail(format!("/ready after the load: {ready:?}"));
    }
    let mut report = json!({
        "seconds": elapsed.as_secs_f64(),
        "clients": clients,
        "requests": stats.classes.values().map(|c| c.sent).sum::<u64>(),
        "inputs": stats.classes.values().map(|c| c.inputs).sum::<u64>(),
        "vectors_checked": stats.vectors_checked,
        "max_vector_diff": stats.max_vector_diff,
        "failures": stats.failures.len(),
        "ready_after": ready.ok(),
    });
    println!(
        "{:<14} {:>8} {:>8}  {:<34} {:>8} {:>8} {:>8}",
        "class", "requests", "inputs", "statuses", "p50 ms", "p99 ms", "max ms"
    );
    let mut classes = serde_json::Map::new();
    for (name, c) in stats.classes.iter_mut() {
        c.latencies_ms.sort_by(f64::total_cmp);
        let statuses: Vec<String> = c.statuses.iter().map(|(s, n)| format!("{s}:{n}")).collect();
        let (p50, p99, max) = (
            percentile(&c.latencies_ms, 0.5),
            percentile(&c.latencies_ms, 0.99),
            c.latencies_ms.last().copied().unwrap_or(0.0),
        );
        println!(
            "{name:<14} {:>8} {:>8}  {:<34} {p50:>8.1} {p99:>8.1} {max:>8.1}",
            c.sent,
            c.inputs,
            statuses.join(" ")
        );
        classes.insert(
            (*name).to_owned(),
            json!({"requests": c.sent, "inputs": c.inputs, "statuses": c.statuses,
                   "p50_ms": p50, "p99_ms": p99, "max_ms": max}),
        );
    }
    report["classes"] = classes.into();
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report["server_rss_kib"] = json!({
            "before": before.0, "after": after.0,
            "peak_sampled": peak_sampled, "vm_hwm": after.1,
        });
        println!(
            "server RSS: {} MiB before, {} MiB after, VmHWM {} MiB",
            before.0 >> 10,
            after.0 >> 10,
            after.1 >> 10
        );
    }
    println!(
        "{} requests, {} inputs in {:.0} s; {} vectors checked against their baselines (max diff {:e}); {} failures",
        report["requests"], report["inputs"], elapsed.as_secs_f64(),
        stats.vectors_checked, stats.max_vector_diff, stats.failures.len()
    );
    if let Some(path) = &shared.args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if !stats.failures.is_empty() {
        bail!(
            "{} failures (first: {})",
            stats.failures.len(),
            stats.failures[0]
        );
    }
    Ok(())
}
