//! `sightline bench --target-url`: another embedding server (infinity), already running, driven
//! with the same photos, patterns and load generator as Sightline, one pattern after the other,
//! each for `--duration` of steady state (`load::drive`). Prints one
//! JSON line, which `bench/infinity.py` completes with what it measured itself (the model alone
//! in torch, memory, start-up time) for the report of the Sightline run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::baseline::Photos;
use super::load::{drive, Target, Throughput, Window};
use super::{Requests, Workload};

/// What to drive, and how.
pub(super) struct ExternalConfig {
    pub(super) target: Target,
    pub(super) photos: PathBuf,
    pub(super) duration: Duration,
    pub(super) clients: usize,
    pub(super) batch: usize,
    pub(super) batch_clients: usize,
}

/// One pattern's result as the JSON line carries it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Row {
    pub(super) images_per_s: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
}

impl From<Throughput> for Row {
    fn from(t: Throughput) -> Row {
        let ms = |d: Duration| (d.as_secs_f64() * 1e3).round();
        Row {
            images_per_s: (t.images_per_s * 100.0).round() / 100.0,
            p50_ms: ms(t.latency.p50),
            p99_ms: ms(t.latency.p99),
        }
    }
}

/// Patterns (a), (b) and (c) of one server.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Patterns {
    pub(super) one_per_request: Row,
    pub(super) batched: Row,
    pub(super) ingest_sized: Row,
}

pub(super) async fn measure(cfg: &ExternalConfig) -> Result<String> {
    let photos = Photos::load(&cfg.photos)?;
    let work = Workload::new(&cfg.target, &photos, cfg.batch);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(cfg.clients.max(cfg.batch_clients) + 1)
        .build()?;
    let endpoint = cfg.target.endpoint("");
    let pattern = |name: &'static str, requests: &Requests, per_request: usize, clients: usize| {
        let (client, endpoint) = (client.clone(), endpoint.clone());
        let bodies = requests.bodies.clone();
        let (url, length) = (cfg.target.url.clone(), cfg.duration);
        async move {
            let w = drive(&client, &endpoint, bodies, per_request, clients, length).await?;
            let t = Window::throughput([&w]);
            eprintln!("bench: {url} ({name}) {:.2} images/s", t.images_per_s);
            Ok::<_, anyhow::Error>(Row::from(t))
        }
    };
    let patterns = Patterns {
        one_per_request: pattern("a", &work.singles, 1, cfg.clients).await?,
        batched: pattern("b", &work.groups, cfg.batch, cfg.batch_clients).await?,
        ingest_sized: pattern("c", &work.ingest, 1, cfg.clients).await?,
    };
    Ok(serde_json::to_string(&patterns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::load::Latency;

    #[test]
    fn rows_round_to_what_the_report_prints() {
        let row = Row::from(Throughput {
            images_per_s: 4.98765,
            latency: Latency {
                p50: Duration::from_micros(3_999_600),
                p99: Duration::from_millis(7_250),
            },
        });
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"{"images_per_s":4.99,"p50_ms":4000.0,"p99_ms":7250.0}"#
        );
    }
}
