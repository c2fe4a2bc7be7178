//! The load generator: request bodies in the dialect of the server under test (Sightline's, or
//! infinity's, which needs `modality: "image"`), connections sending them round-robin until a
//! number of images is embedded or a time is up, and the query probes (text, and images with
//! and without the priority lane) that run beside pattern (a).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use serde::Deserialize;

/// Latency summary of one series of requests.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Latency {
    pub(super) p50: Duration,
    pub(super) p99: Duration,
}

impl Latency {
    pub(super) fn of(mut samples: Vec<Duration>) -> Latency {
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
pub(super) struct Throughput {
    pub(super) images_per_s: f64,
    pub(super) latency: Latency,
}

/// The request format of the server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Dialect {
    /// `POST /v1/embeddings {"input": [...], "model": ...}`.
    Sightline,
    /// `POST /embeddings` with `"modality": "image"`: without it infinity takes a data URI
    /// for text (what it answers then is recorded by `bench/infinity.py`).
    Infinity,
}

/// Where the load goes, and in which format.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) url: String,
    pub(super) dialect: Dialect,
    /// The `model` field of each request.
    pub(super) model: String,
}

impl Target {
    /// The embeddings endpoint, with a query string (`""` for none).
    pub(super) fn endpoint(&self, query: &str) -> String {
        match self.dialect {
            Dialect::Sightline => format!("{}/v1/embeddings{query}", self.url),
            Dialect::Infinity => format!("{}/embeddings{query}", self.url),
        }
    }

    /// A request embedding the images `inputs` (data URIs).
    pub(super) fn body(&self, inputs: &[String]) -> Bytes {
        let mut body = serde_json::json!({"input": inputs, "model": self.model});
        if self.dialect == Dialect::Infinity {
            body["modality"] = "image".into();
        }
        Bytes::from(body.to_string())
    }
}

/// When a pattern ends.
#[derive(Debug, Clone, Copy)]
pub(super) enum Budget {
    /// After this many images (rounded up to whole requests).
    Images(usize),
    /// When this time is up: no request starts after it, those under way finish.
    Time(Duration),
}

/// Sends `bodies` round-robin from `clients` connections until the `budget` is spent.
pub(super) async fn drive(
    client: &reqwest::Client,
    endpoint: &str,
    bodies: Arc<Vec<Bytes>>,
    per_request: usize,
    budget: Budget,
    clients: usize,
) -> Result<Throughput> {
    let next = Arc::new(AtomicUsize::new(0));
    let (requests, deadline) = match budget {
        Budget::Images(images) => (images.div_ceil(per_request), None),
        Budget::Time(time) => (usize::MAX, Some(time)),
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (client, endpoint, bodies, next) = (
                client.clone(),
                endpoint.to_owned(),
                bodies.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests || deadline.is_some_and(|d| started.elapsed() >= d) {
                        return Ok::<_, anyhow::Error>(samples);
                    }
                    let body = bodies[i % bodies.len()].clone();
                    samples.push(post(&client, &endpoint, body, per_request).await?);
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
        images_per_s: (samples.len() * per_request) as f64 / wall.as_secs_f64(),
        latency: Latency::of(samples),
    })
}

/// One request to `endpoint`; fails the benchmark on anything but 200 with `expected` vectors.
async fn post(
    client: &reqwest::Client,
    endpoint: &str,
    body: Bytes,
    expected: usize,
) -> Result<Duration> {
    #[derive(Deserialize)]
    struct Response {
        data: Vec<serde::de::IgnoredAny>,
    }
    let started = Instant::now();
    let response = client
        .post(endpoint)
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

/// One query of one input every `every` until `stop`, each waited for before the next: a few
/// users searching in Kibana during a bulk ingest. Text queries go every 200 ms; image queries,
/// which cost the model as much as an ingest image, every second. (A denser probe would itself
/// be a load that steals CPU from the images.) A query slower than `every` delays the next
/// instead of sending a burst to catch up.
pub(super) async fn probe(
    client: reqwest::Client,
    endpoint: String,
    body: Bytes,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        samples.push(post(&client, &endpoint, body.clone(), 1).await?);
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dialect_has_its_endpoint_and_body() {
        let target = |dialect| Target {
            url: "http://127.0.0.1:9".to_owned(),
            dialect,
            model: "m".to_owned(),
        };
        let sightline = target(Dialect::Sightline);
        assert_eq!(
            sightline.endpoint("?priority=search"),
            "http://127.0.0.1:9/v1/embeddings?priority=search"
        );
        assert_eq!(sightline.endpoint(""), "http://127.0.0.1:9/v1/embeddings");
        assert_eq!(
            sightline.body(&["data:image/jpeg;base64,AA==".to_owned()]),
            r#"{"input":["data:image/jpeg;base64,AA=="],"model":"m"}"#
        );
        let infinity = target(Dialect::Infinity);
        assert_eq!(infinity.endpoint(""), "http://127.0.0.1:9/embeddings");
        assert_eq!(
            infinity.body(&["a".to_owned(), "b".to_owned()]),
            r#"{"input":["a","b"],"model":"m","modality":"image"}"#
        );
    }

    #[test]
    fn percentiles_pick_nearest_ranks() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(samples);
        assert_eq!(l.p50, Duration::from_millis(51));
        assert_eq!(l.p99, Duration::from_millis(99));
        assert_eq!(Latency::of(Vec::new()).p99, Duration::ZERO);
    }
}
