//! The benchmark's report: what was measured, the decoding ceiling derived from it, the
//! Python peer's line, and the table the README shows.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::load::{Latency, Throughput};

#[derive(Debug)]
pub(super) struct Report {
    pub(super) photos: usize,
    pub(super) megapixels: (f64, f64),
    pub(super) model_only: f64,
    /// ONNX Runtime threads (the cores the model-only rate used).
    pub(super) threads: usize,
    /// One core's time to decode and preprocess a photo.
    pub(super) decode_ms: f64,
    pub(super) one_per_request: Throughput,
    pub(super) batched: Throughput,
    pub(super) text_under_load: Latency,
    pub(super) text_queries: usize,
    pub(super) image_queries: ImageQueries,
    /// Server memory once loaded, and its peak while the patterns ran.
    pub(super) loaded_rss_mib: f64,
    pub(super) peak_rss_mib: f64,
    pub(super) peer: Option<PeerResult>,
}

/// Image-query latency during a second run of pattern (a), with and without the priority lane.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ImageQueries {
    /// Queries sent: (with `?priority=search`, without).
    pub(super) sent: (usize, usize),
    pub(super) priority: Latency,
    pub(super) plain: Latency,
    /// Pattern (a)'s rate in that run, beside the probes.
    pub(super) ingest_images_per_s: f64,
}

/// What `bench/peer.py` prints.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct PeerResult {
    pub(super) images_per_s: f64,
    pub(super) model_only_images_per_s: f64,
}

pub(super) fn read_peer(path: &Path) -> Result<PeerResult> {
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

impl Report {
    /// The fastest end-to-end rate these cores allow when every photo's decoding takes CPU
    /// the model would otherwise use: per image, `threads / model_only` core-seconds of model
    /// plus `decode_ms` of decoding.
    pub(super) fn ceiling(&self) -> f64 {
        self.threads as f64 / (self.threads as f64 / self.model_only + self.decode_ms / 1e3)
    }

    /// The table the README shows.
    pub(super) fn table(&self) -> String {
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
        let q = &self.image_queries;
        out += &format!(
            "image queries during (a) (a second run, {:.2} images/s beside them): with `?priority=search` {} sent, p50 {} ms, p99 {} ms; without {} sent, p50 {} ms, p99 {} ms\n",
            q.ingest_images_per_s,
            q.sent.0,
            ms(q.priority.p50),
            ms(q.priority.p99),
            q.sent.1,
            ms(q.plain.p50),
            ms(q.plain.p99)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            image_queries: ImageQueries {
                sent: (30, 29),
                priority: Latency {
                    p50: Duration::from_millis(120),
                    p99: Duration::from_millis(480),
                },
                plain: Latency {
                    p50: Duration::from_millis(2100),
                    p99: Duration::from_millis(5200),
                },
                ingest_images_per_s: 12.5,
            },
            loaded_rss_mib: 0.0,
            peak_rss_mib: 0.0,
            peer: None,
        };
        // 2 cores ÷ 20 images/s = 100 ms of model per image, + 25 ms decoding: 16 images/s.
        assert!((report.ceiling() - 16.0).abs() < 1e-9);
        assert!(report.table().contains(
            "| ceiling: model + 25.0 ms decoding per photo on 2 cores | 16.00 | | | 0.80 |"
        ));
        assert!(report.table().contains(
            "image queries during (a) (a second run, 12.50 images/s beside them): with `?priority=search` 30 sent, p50 120 ms, p99 480 ms; without 29 sent, p50 2100 ms, p99 5200 ms"
        ), "{}", report.table());
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
