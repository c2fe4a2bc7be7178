//! The load generator: request bodies in the dialect of the server under test (Sightline's, or
//! infinity's, which needs `modality: "image"`), connections sending them round-robin until a
//! number of images is embedded or a time is up, and the query probes (text, and images with
//! and without the priority lane) that run beside pattern (a).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
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

/// Sends `bodies` round-robin from `clients` connections and measures the steady state: it
/// begins once every connection has had an answer (the first batches find idle lanes and
/// empty decoders, the last ones a half-empty queue, neither is what a long backfill sees) and
/// lasts `length`; then no request starts, and those under way finish uncounted.
pub(super) async fn drive(
    client: &reqwest::Client,
    endpoint: &str,
    bodies: Arc<Vec<Bytes>>,
    per_request: usize,
    clients: usize,
    length: Duration,
) -> Result<Window> {
    let clients = clients.max(1);
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let end: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, endpoint, bodies, next, answered, end) = (
                client.clone(),
                endpoint.to_owned(),
                bodies.clone(),
                next.clone(),
                answered.clone(),
                end.clone(),
            );
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while end.get().is_none_or(|&end| Instant::now() < end) {
                    let body = next.fetch_add(1, Ordering::Relaxed) % bodies.len();
                    let latency =
                        post(&client, &endpoint, bodies[body].clone(), per_request).await?;
                    answers.push(Answer {
                        at: Instant::now(),
                        latency,
                        body,
                    });
                    if answers.len() == 1 && answered.fetch_add(1, Ordering::AcqRel) + 1 == clients
                    {
                        let _ = end.set(Instant::now() + length);
                    }
                }
                Ok::<_, anyhow::Error>(answers)
            })
        })
        .collect();
    let mut connections = Vec::with_capacity(clients);
    for task in tasks {
        connections.push(task.await??);
    }
    steady_state(&connections, per_request, length)
}

/// When a request was answered, how long it took, and which body it sent.
#[derive(Debug, Clone, Copy)]
struct Answer {
    at: Instant,
    latency: Duration,
    body: usize,
}

/// The rate over the steady state of `connections`' answers: from the moment the last
/// connection had its first answer, the images answered up to the last answer within `length`
/// after it, over the time between those two answers. Counting from answer to answer, a rate
/// that comes in batches is measured exactly, wherever the window falls.
fn steady_state(
    connections: &[Vec<Answer>],
    per_request: usize,
    length: Duration,
) -> Result<Window> {
    let Some(from) = connections
        .iter()
        .filter_map(|c| c.first())
        .map(|a| a.at)
        .max()
    else {
        bail!("no request was answered");
    };
    let counted: Vec<&Answer> = connections
        .iter()
        .flatten()
        .filter(|a| a.at > from && a.at <= from + length)
        .collect();
    let to = counted.iter().map(|a| a.at).max();
    let Some(to) = to.filter(|&to| to > from) else {
        bail!(
            "no answer came in the {} s after every connection had its first: measure for longer (--duration)",
            length.as_secs_f64()
        );
    };
    Ok(Window {
        images: counted.len() * per_request,
        seconds: (to - from).as_secs_f64(),
        latencies: counted.iter().map(|a| a.latency).collect(),
        bodies: counted.iter().map(|a| a.body).collect(),
    })
}

/// The images answered in a steady state, over how long, each request's latency, and which
/// body each request sent (what its images cost to decode: `rounds::Round`).
#[derive(Debug, Clone)]
pub(super) struct Window {
    pub(super) images: usize,
    pub(super) seconds: f64,
    pub(super) latencies: Vec<Duration>,
    pub(super) bodies: Vec<usize>,
}

impl Window {
    pub(super) fn rate(&self) -> f64 {
        self.images as f64 / self.seconds
    }

    /// The rate and latencies of several windows together.
    pub(super) fn throughput<'a>(windows: impl IntoIterator<Item = &'a Window>) -> Throughput {
        let (mut images, mut seconds, mut latencies) = (0, 0.0, Vec::new());
        for w in windows {
            images += w.images;
            seconds += w.seconds;
            latencies.extend_from_slice(&w.latencies);
        }
        Throughput {
            images_per_s: images as f64 / seconds,
            latency: Latency::of(latencies),
        }
    }
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

    /// Answers of `connections` connections, each answered every `period` from `first`
    /// (connection `k` first after `first + k × stagger`), `count` times.
    fn answers(
        connections: u32,
        first: Duration,
        stagger: Duration,
        period: Duration,
        count: u32,
    ) -> Vec<Vec<Answer>> {
        let t0 = Instant::now();
        (0..connections)
            .map(|k| {
                (0..count)
                    .map(|i| Answer {
                        at: t0 + first + stagger * k + period * i,
                        latency: Duration::from_millis(u64::from(k)),
                        body: k as usize,
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_steady_state_starts_when_every_connection_has_an_answer() {
        // Connection 3 is first answered after 1.3 s (a slow start); from then on each of the
        // four is answered every 100 ms: 40 images/s, wherever the window ends.
        for length_ms in [500, 550, 990] {
            let c = answers(
                4,
                Duration::from_secs(1),
                Duration::from_millis(100),
                Duration::from_millis(100),
                30,
            );
            let w = steady_state(&c, 1, Duration::from_millis(length_ms)).unwrap();
            assert!((w.rate() - 40.0).abs() < 1e-6, "{length_ms}: {}", w.rate());
        }
        // Ten images per request: ten times the rate.
        let c = answers(
            4,
            Duration::ZERO,
            Duration::from_millis(25),
            Duration::from_millis(100),
            30,
        );
        let w = steady_state(&c, 10, Duration::from_secs(1)).unwrap();
        assert_eq!((w.images, w.latencies.len()), (400, 40));
        // Each connection's ten answers counted, with the body it sent.
        let mut bodies = w.bodies.clone();
        bodies.sort_unstable();
        assert_eq!(bodies, [0, 1, 2, 3].map(|b| [b; 10]).concat());
        assert!((w.seconds - 1.0).abs() < 1e-9, "{}", w.seconds);
        // The latencies are those of the answers counted: connections 0–3 alike.
        assert_eq!(
            Window::throughput([&w]).latency.p50,
            Duration::from_millis(2)
        );
    }

    #[test]
    fn windows_together_weigh_each_by_its_length() {
        let w = |images, seconds, ms: u64| Window {
            images,
            seconds,
            latencies: vec![Duration::from_millis(ms); images],
            bodies: Vec::new(),
        };
        let t = Window::throughput([&w(10, 1.0, 100), &w(30, 4.0, 300), &w(10, 5.0, 500)]);
        assert!((t.images_per_s - 5.0).abs() < 1e-9, "{}", t.images_per_s);
        assert_eq!(t.latency.p50, Duration::from_millis(300));
        assert_eq!(t.latency.p99, Duration::from_millis(500));
    }

    #[test]
    fn a_window_without_answers_is_an_error_naming_the_flag() {
        let c = answers(2, Duration::ZERO, Duration::ZERO, Duration::from_secs(5), 2);
        let err = steady_state(&c, 1, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("--duration"), "{err}");
        assert!(steady_state(&[Vec::new()], 1, Duration::from_secs(1)).is_err());
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
