//! The benchmark's report: what was measured, the decoding ceilings derived from it, the
//! Python peer's and infinity's lines, and the table the README shows.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::baseline::PhotoSummary;
use super::external::{Patterns, Row};
use super::load::{Latency, Throughput};
use super::server::Loaded;

#[derive(Debug)]
pub(super) struct Report {
    pub(super) photos: PhotoSummary,
    pub(super) model_only: f64,
    /// ONNX Runtime threads (the cores the model-only rate used).
    pub(super) threads: usize,
    /// Connections of patterns (a) and (c); images per request and connections of (b).
    pub(super) clients: usize,
    pub(super) batch: usize,
    pub(super) batch_clients: usize,
    /// One core's time to decode and preprocess a photo, and an ingest-sized image.
    pub(super) decode_ms: f64,
    pub(super) ingest_decode_ms: f64,
    pub(super) one_per_request: Throughput,
    pub(super) batched: Throughput,
    pub(super) ingest_sized: Throughput,
    pub(super) text_under_load: Latency,
    pub(super) text_queries: usize,
    pub(super) image_queries: ImageQueries,
    /// The server once loaded with one image lane, and with the lanes under test.
    pub(super) one_lane: Loaded,
    pub(super) loaded: Loaded,
    /// Peak RSS while the patterns ran.
    pub(super) peak_rss_mib: f64,
    pub(super) peer: Option<PeerResult>,
    pub(super) infinity: Option<InfinityResult>,
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

/// What `bench/infinity.py` prints: the patterns (`sightline bench --target-url`) and what it
/// measured itself.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct InfinityResult {
    pub(super) version: String,
    /// The same CLIP model alone in torch, batch 8, the same threads.
    pub(super) model_only_images_per_s: f64,
    pub(super) rss_mib: f64,
    pub(super) ready_s: f64,
    pub(super) patterns: Patterns,
    /// What it answers to a data URI sent without `modality`, one line per case.
    pub(super) without_modality: Vec<String>,
}

pub(super) fn read_peer(path: &Path) -> Result<PeerResult> {
    last_json_line(path, "peer.py")
}

pub(super) fn read_infinity(path: &Path) -> Result<InfinityResult> {
    last_json_line(path, "infinity.py")
}

fn last_json_line<T: DeserializeOwned>(path: &Path, script: &str) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_default();
    serde_json::from_str(line)
        .with_context(|| format!("`{}` holds no {script} result line", path.display()))
}

/// The fastest end-to-end rate `threads` cores allow when every image's decoding takes CPU
/// the model would otherwise use: per image, `threads / model_only` core-seconds of model
/// plus `decode_ms` of decoding.
fn ceiling(threads: usize, model_only: f64, decode_ms: f64) -> f64 {
    threads as f64 / (threads as f64 / model_only + decode_ms / 1e3)
}

impl Report {
    /// The ceiling of patterns (a) and (b) (full-size photos) and of (c) (ingest-sized).
    pub(super) fn ceilings(&self) -> (f64, f64) {
        (
            ceiling(self.threads, self.model_only, self.decode_ms),
            ceiling(self.threads, self.model_only, self.ingest_decode_ms),
        )
    }

    /// The table the README shows.
    pub(super) fn table(&self) -> String {
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
        let ratio = |x: f64, of: f64| format!("{:.2}", x / of);
        let (full, small) = self.ceilings();
        let p = &self.photos;
        let mut out = format!(
            "{} photos, {:.1}–{:.1} MP, {:.2} MB on average; {:.2} MB as `sightline ingest` sends them (longer side ≤ 1024, re-encoded)\n\n\
             | path | images/s | p50 ms | p99 ms | ÷ model-only | ÷ ceiling |\n|---|---|---|---|---|---|\n",
            p.count, p.megapixels.0, p.megapixels.1, p.mean_mb, p.ingest_mean_mb
        );
        // `ceiling: None` for the rows that are a ceiling or above it.
        let mut row = |name: String,
                       rate: f64,
                       latency: Option<(String, String)>,
                       note: &str,
                       ceiling: Option<f64>| {
            let (p50, p99) = latency.unwrap_or_default();
            let of_model = format!("{}{note}", ratio(rate, self.model_only));
            let of_ceiling = ceiling.map(|c| ratio(rate, c)).unwrap_or_default();
            let cells = [name, format!("{rate:.2}"), p50, p99, of_model, of_ceiling];
            // An empty cell is `| |`, as in the README's tables.
            for cell in cells {
                out += "| ";
                out += &cell;
                if !cell.is_empty() {
                    out += " ";
                }
            }
            out += "|\n";
        };
        let (a, b, c) = (
            format!("(a) {} connections × 1 photo", self.clients),
            format!(
                "(b) {} connections × {} photos",
                self.batch_clients, self.batch
            ),
            format!("(c) {} connections × 1 ingest-sized image", self.clients),
        );
        let measured = |t: &Throughput| Some((ms(t.latency.p50), ms(t.latency.p99)));
        row(
            "model only (preprocessed tensors, batch 8)".to_owned(),
            self.model_only,
            None,
            "",
            None,
        );
        for (patterns, what, decode_ms, ceiling) in [
            ("(a), (b)", "photo", self.decode_ms, full),
            ("(c)", "ingest-sized image", self.ingest_decode_ms, small),
        ] {
            row(
                format!(
                    "ceiling {patterns}: model + {decode_ms:.1} ms decoding per {what} on {} cores",
                    self.threads
                ),
                ceiling,
                None,
                "",
                None,
            );
        }
        for (name, t, ceiling) in [
            (&a, &self.one_per_request, full),
            (&b, &self.batched, full),
            (&c, &self.ingest_sized, small),
        ] {
            row(
                format!("Sightline {name}"),
                t.images_per_s,
                measured(t),
                "",
                Some(ceiling),
            );
        }
        if let Some(peer) = &self.peer {
            let note = format!(" (own model-only {:.2})", peer.model_only_images_per_s);
            row(
                "Python peer (PIL + onnxruntime, batch 8)".to_owned(),
                peer.images_per_s,
                None,
                &note,
                Some(full),
            );
        }
        if let Some(inf) = &self.infinity {
            let note = format!(
                " (own model-only {:.2}, torch)",
                inf.model_only_images_per_s
            );
            let q = &inf.patterns;
            let latency = |r: &Row| Some((format!("{:.0}", r.p50_ms), format!("{:.0}", r.p99_ms)));
            for (name, r, ceiling) in [
                (&a, &q.one_per_request, full),
                (&b, &q.batched, full),
                (&c, &q.ingest_sized, small),
            ] {
                row(
                    format!("infinity {} {name}", inf.version),
                    r.images_per_s,
                    latency(r),
                    &note,
                    Some(ceiling),
                );
            }
        }
        if let Some(peer) = &self.peer {
            out += &format!(
                "\nSightline ÷ peer: (a) {:.2}×, (b) {:.2}×\n",
                self.one_per_request.images_per_s / peer.images_per_s,
                self.batched.images_per_s / peer.images_per_s
            );
        }
        if let Some(inf) = &self.infinity {
            let q = &inf.patterns;
            out += &format!(
                "\nSightline ÷ infinity: (a) {:.2}×, (b) {:.2}×, (c) {:.2}×\n",
                self.one_per_request.images_per_s / q.one_per_request.images_per_s,
                self.batched.images_per_s / q.batched.images_per_s,
                self.ingest_sized.images_per_s / q.ingest_sized.images_per_s
            );
            out += &format!(
                "infinity server RSS: {:.0} MiB loaded, ready after {:.1} s\n",
                inf.rss_mib, inf.ready_s
            );
            for fact in &inf.without_modality {
                out += &format!("infinity, data URI without `modality`: {fact}\n");
            }
        }
        out += &format!(
            "\ntext queries during (a): {} sent, p50 {} ms, p99 {} ms\n",
            self.text_queries,
            ms(self.text_under_load.p50),
            ms(self.text_under_load.p99),
        );
        let (one, all) = (&self.one_lane, &self.loaded);
        out += &format!(
            "server RSS once loaded: {:.0} MiB with 1 image lane (ready after {:.1} s), {:.0} MiB with {} (ready after {:.1} s; {:.2}× one lane); peak {:.0} MiB under load\n",
            one.rss_mib,
            one.ready_after.as_secs_f64(),
            all.rss_mib,
            all.lanes,
            all.ready_after.as_secs_f64(),
            all.rss_mib / one.rss_mib,
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

    fn throughput(images_per_s: f64, p50_ms: u64, p99_ms: u64) -> Throughput {
        Throughput {
            images_per_s,
            latency: Latency {
                p50: Duration::from_millis(p50_ms),
                p99: Duration::from_millis(p99_ms),
            },
        }
    }

    fn report() -> Report {
        let loaded = |lanes, rss_mib, ready_ms| Loaded {
            lanes,
            rss_mib,
            ready_after: Duration::from_millis(ready_ms),
        };
        Report {
            photos: PhotoSummary {
                count: 40,
                megapixels: (1.3, 16.0),
                mean_mb: 1.6,
                ingest_mean_mb: 0.21,
            },
            model_only: 20.0,
            threads: 2,
            clients: 20,
            batch: 10,
            batch_clients: 4,
            decode_ms: 25.0,
            ingest_decode_ms: 10.0,
            one_per_request: throughput(15.5, 1400, 2100),
            batched: throughput(15.7, 2500, 4400),
            ingest_sized: throughput(17.9, 1100, 1900),
            text_under_load: throughput(0.0, 16, 45).latency,
            text_queries: 156,
            image_queries: ImageQueries {
                sent: (30, 29),
                priority: throughput(0.0, 120, 480).latency,
                plain: throughput(0.0, 2100, 5200).latency,
                ingest_images_per_s: 12.5,
            },
            one_lane: loaded(1, 900.0, 3400),
            loaded: loaded(2, 960.0, 3900),
            peak_rss_mib: 1500.0,
            peer: None,
            infinity: None,
        }
    }

    #[test]
    fn ceilings_add_decoding_cpu_to_the_model_cpu() {
        // 2 cores ÷ 20 images/s = 100 ms of model per image; + 25 ms decoding: 16 images/s;
        // + 10 ms for an ingest-sized image: 18.18 images/s.
        let (full, small) = report().ceilings();
        assert!((full - 16.0).abs() < 1e-9);
        assert!((small - 2.0 / 0.11).abs() < 1e-9);
    }

    #[test]
    fn the_table_has_every_row_and_ratio() {
        let mut r = report();
        r.peer = Some(PeerResult {
            images_per_s: 6.5,
            model_only_images_per_s: 22.0,
        });
        let row = |images_per_s, p50_ms, p99_ms| Row {
            images_per_s,
            p50_ms,
            p99_ms,
        };
        r.infinity = Some(InfinityResult {
            version: "0.0.78".to_owned(),
            model_only_images_per_s: 14.0,
            rss_mib: 2100.0,
            ready_s: 21.5,
            patterns: Patterns {
                one_per_request: row(5.0, 3900.0, 6100.0),
                batched: row(4.9, 8000.0, 9900.0),
                ingest_sized: row(7.16, 2700.0, 4000.0),
            },
            without_modality: vec![
                "a photo (2.1 MB): 422 string_too_long".to_owned(),
                "a 64×64 PNG: 200, the text vector of the string".to_owned(),
            ],
        });
        let golden = "\
40 photos, 1.3–16.0 MP, 1.60 MB on average; 0.21 MB as `sightline ingest` sends them (longer side ≤ 1024, re-encoded)

| path | images/s | p50 ms | p99 ms | ÷ model-only | ÷ ceiling |
|---|---|---|---|---|---|
| model only (preprocessed tensors, batch 8) | 20.00 | | | 1.00 | |
| ceiling (a), (b): model + 25.0 ms decoding per photo on 2 cores | 16.00 | | | 0.80 | |
| ceiling (c): model + 10.0 ms decoding per ingest-sized image on 2 cores | 18.18 | | | 0.91 | |
| Sightline (a) 20 connections × 1 photo | 15.50 | 1400 | 2100 | 0.78 | 0.97 |
| Sightline (b) 4 connections × 10 photos | 15.70 | 2500 | 4400 | 0.78 | 0.98 |
| Sightline (c) 20 connections × 1 ingest-sized image | 17.90 | 1100 | 1900 | 0.89 | 0.98 |
| Python peer (PIL + onnxruntime, batch 8) | 6.50 | | | 0.33 (own model-only 22.00) | 0.41 |
| infinity 0.0.78 (a) 20 connections × 1 photo | 5.00 | 3900 | 6100 | 0.25 (own model-only 14.00, torch) | 0.31 |
| infinity 0.0.78 (b) 4 connections × 10 photos | 4.90 | 8000 | 9900 | 0.25 (own model-only 14.00, torch) | 0.31 |
| infinity 0.0.78 (c) 20 connections × 1 ingest-sized image | 7.16 | 2700 | 4000 | 0.36 (own model-only 14.00, torch) | 0.39 |

Sightline ÷ peer: (a) 2.38×, (b) 2.42×

Sightline ÷ infinity: (a) 3.10×, (b) 3.20×, (c) 2.50×
infinity server RSS: 2100 MiB loaded, ready after 21.5 s
infinity, data URI without `modality`: a photo (2.1 MB): 422 string_too_long
infinity, data URI without `modality`: a 64×64 PNG: 200, the text vector of the string

text queries during (a): 156 sent, p50 16 ms, p99 45 ms
server RSS once loaded: 900 MiB with 1 image lane (ready after 3.4 s), 960 MiB with 2 (ready after 3.9 s; 1.07× one lane); peak 1500 MiB under load
image queries during (a) (a second run, 12.50 images/s beside them): with `?priority=search` 30 sent, p50 120 ms, p99 480 ms; without 29 sent, p50 2100 ms, p99 5200 ms
";
        let table = r.table();
        assert_eq!(table, golden, "{table}");
        // Without the peers, their rows and ratios are absent.
        let plain = report().table();
        assert!(
            !plain.contains("peer") && !plain.contains("infinity"),
            "{plain}"
        );
        assert!(plain.contains("| Sightline (c) 20 connections × 1 ingest-sized image | 17.90 | 1100 | 1900 | 0.89 | 0.98 |"));
    }

    #[test]
    fn result_lines_are_the_last_json_line() {
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
        let err = read_infinity(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("holds no infinity.py result line"),
            "{err:#}"
        );
        let line = r#"{"server": "infinity", "version": "0.0.78", "model_only_images_per_s": 14.5, "rss_mib": 2000.5, "ready_s": 20.0, "without_modality": ["x"], "patterns": {"one_per_request": {"images_per_s": 5.0, "p50_ms": 1.0, "p99_ms": 2.0}, "batched": {"images_per_s": 4.0, "p50_ms": 3.0, "p99_ms": 4.0}, "ingest_sized": {"images_per_s": 6.0, "p50_ms": 5.0, "p99_ms": 6.0}}}"#;
        std::fs::write(&path, format!("infinity: started\n{line}\n")).unwrap();
        let inf = read_infinity(&path).unwrap();
        assert_eq!(inf.model_only_images_per_s, 14.5);
        assert_eq!(inf.patterns.batched.images_per_s, 4.0);
        assert_eq!(inf.without_modality, ["x"]);
    }
}
