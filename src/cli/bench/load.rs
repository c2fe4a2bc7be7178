//! The load generator: request bodies, connections sending them round-robin until a target of
//! images is embedded, and the query probes (text, and images with and without the priority
//! lane) that run beside pattern (a).

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

pub(super) fn body(inputs: &[String]) -> Bytes {
    Bytes::from(serde_json::json!({"input": inputs, "model": "bench"}).to_string())
}

/// Sends `bodies` round-robin from `clients` connections until `target` images are embedded.
pub(super) async fn drive(
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
                    samples.push(post(&client, &endpoint(&url, ""), body, per_request).await?);
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

/// The OpenAI-dialect endpoint of the server at `url`, with a query string (`""` for none).
pub(super) fn endpoint(url: &str, query: &str) -> String {
    format!("{url}/v1/embeddings{query}")
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
    fn endpoints_carry_the_query_string() {
        assert_eq!(
            endpoint("http://127.0.0.1:9", "?priority=search"),
            "http://127.0.0.1:9/v1/embeddings?priority=search"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:9", ""),
            "http://127.0.0.1:9/v1/embeddings"
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
