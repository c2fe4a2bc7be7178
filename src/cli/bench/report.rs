//! The benchmark's report: what was measured, the decoding ceilings derived from it, the
//! Python peer's and infinity's lines, and the table the README shows.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::baseline::PhotoSummary;
use super::external::Patterns;
use super::load::Latency;
use super::rounds::{ceiling, Measured};
use super::server::Loaded;

#[derive(Debug)]
pub(super) struct Report {
    pub(super) photos: PhotoSummary,
    /// ONNX Runtime threads (the cores the model-only rate used), and rounds per pattern.
    pub(super) threads: usize,
    pub(super) rounds: usize,
    /// Connections of patterns (a) and (c); images per request and connections of (b).
    pub(super) clients: usize,
    pub(super) batch: usize,
    pub(super) batch_clients: usize,
    /// Patterns (a), (b) and (c), each with the baselines of its rounds.
    pub(super) one_per_request: Measured,
    pub(super) batched: Measured,
    pub(super) ingest_sized: Measured,
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

impl Report {
    /// The model alone: the mean of every round.
    fn model_only(&self) -> f64 {
        let p = [&self.one_per_request, &self.batched, &self.ingest_sized];
        p.iter().map(|m| m.model_only).sum::<f64>() / 3.0
    }

    /// One core's decoding per full-size photo (the rounds of (a) and (b)) and per
    /// ingest-sized image (those of (c)).
    fn decode_ms(&self) -> (f64, f64) {
        let full = (self.one_per_request.decode_ms + self.batched.decode_ms) / 2.0;
        (full, self.ingest_sized.decode_ms)
    }

    /// The ceiling of patterns (a) and (b) (full-size photos) and of (c) (ingest-sized), from
    /// the means of the rounds.
    pub(super) fn ceilings(&self) -> (f64, f64) {
        let (full, small) = self.decode_ms();
        (
            ceiling(self.threads, self.model_only(), full),
            ceiling(self.threads, self.model_only(), small),
        )
    }

    /// The table the README shows.
    pub(super) fn table(&self) -> String {
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
        let ratio = |x: f64, of: f64| format!("{:.2}", x / of);
        let model_only = self.model_only();
        let (full, small) = self.ceilings();
        let p = &self.photos;
        let mut out = format!(
            "{} photos, {:.1}–{:.1} MP, {:.2} MB on average; {:.2} MB as `sightline ingest` sends them (longer side ≤ 1024, re-encoded)\n\n\
             | path | images/s | p50 ms | p99 ms | ÷ model-only | ÷ ceiling |\n|---|---|---|---|---|---|\n",
            p.count, p.megapixels.0, p.megapixels.1, p.mean_mb, p.ingest_mean_mb
        );
        let mut row = |cells: [String; 6]| {
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
        let none = String::new;
        let (a, b, c) = (
            format!("(a) {} connections × 1 photo", self.clients),
            format!(
                "(b) {} connections × {} photos",
                self.batch_clients, self.batch
            ),
            format!("(c) {} connections × 1 ingest-sized image", self.clients),
        );
        row([
            "model only (preprocessed tensors, batch 8)".to_owned(),
            format!("{model_only:.2}"),
            none(),
            none(),
            "1.00".to_owned(),
            none(),
        ]);
        let (full_ms, small_ms) = self.decode_ms();
        for (patterns, what, decode_ms, ceiling) in [
            ("(a), (b)", "photo", full_ms, full),
            ("(c)", "ingest-sized image", small_ms, small),
        ] {
            row([
                format!(
                    "ceiling {patterns}: model + {decode_ms:.1} ms decoding per {what} on {} cores",
                    self.threads
                ),
                format!("{ceiling:.2}"),
                none(),
                none(),
                ratio(ceiling, model_only),
                none(),
            ]);
        }
        for (name, m) in [
            (&a, &self.one_per_request),
            (&b, &self.batched),
            (&c, &self.ingest_sized),
        ] {
            let t = &m.throughput;
            let (lo, hi) = m.of_ceiling_range;
            row([
                format!("Sightline {name}"),
                format!("{:.2}", t.images_per_s),
                ms(t.latency.p50),
                ms(t.latency.p99),
                format!("{:.2}", m.of_model_only),
                format!("**{:.2}** ({lo:.2}–{hi:.2})", m.of_ceiling),
            ]);
        }
        if let Some(peer) = &self.peer {
            row([
                "Python peer (PIL + onnxruntime, batch 8)".to_owned(),
                format!("{:.2}", peer.images_per_s),
                none(),
                none(),
                format!(
                    "{} (own model-only {:.2})",
                    ratio(peer.images_per_s, model_only),
                    peer.model_only_images_per_s
                ),
                ratio(peer.images_per_s, full),
            ]);
        }
        if let Some(inf) = &self.infinity {
            let q = &inf.patterns;
            for (name, r, ceiling) in [
                (&a, &q.one_per_request, full),
                (&b, &q.batched, full),
                (&c, &q.ingest_sized, small),
            ] {
                row([
                    format!("infinity {} {name}", inf.version),
                    format!("{:.2}", r.images_per_s),
                    format!("{:.0}", r.p50_ms),
                    format!("{:.0}", r.p99_ms),
                    format!(
                        "{} (own model-only {:.2}, torch)",
                        ratio(r.images_per_s, model_only),
                        inf.model_only_images_per_s
                    ),
                    ratio(r.images_per_s, ceiling),
                ]);
            }
        }
        out += &format!(
            "\nSightline's ratios are to the model-only rate and decoding cost measured right before each of its {} rounds (in brackets: the lowest and highest round); the model-only and ceiling rows are the means of all rounds, and the other servers' ratios are to them.\n",
            self.rounds
        );
        let rate = |m: &Measured| m.throughput.images_per_s;
        if let Some(peer) = &self.peer {
            out += &format!(
                "\nSightline ÷ peer: (a) {:.2}×, (b) {:.2}×\n",
                rate(&self.one_per_request) / peer.images_per_s,
                rate(&self.batched) / peer.images_per_s
            );
        }
        if let Some(inf) = &self.infinity {
            let q = &inf.patterns;
            out += &format!(
                "\nSightline ÷ infinity: (a) {:.2}×, (b) {:.2}×, (c) {:.2}×\n",
                rate(&self.one_per_request) / q.one_per_request.images_per_s,
                rate(&self.batched) / q.batched.images_per_s,
                rate(&self.ingest_sized) / q.ingest_sized.images_per_s
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
            "\ntext queries during a second run of (a), beside the image queries: {} sent, p50 {} ms, p99 {} ms\n",
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
            "image queries during that run ({:.2} images/s beside them): with `?priority=search` {} sent, p50 {} ms, p99 {} ms; without {} sent, p50 {} ms, p99 {} ms\n",
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
    use crate::cli::bench::external::Row;
    use crate::cli::bench::load::Throughput;

    fn latency(p50_ms: u64, p99_ms: u64) -> Latency {
        Latency {
            p50: Duration::from_millis(p50_ms),
            p99: Duration::from_millis(p99_ms),
        }
    }

    /// A pattern whose rounds measured the model alone at `model_only` and decoding at
    /// `decode_ms`, with the ratios given.
    fn measured(
        images_per_s: f64,
        (p50_ms, p99_ms): (u64, u64),
        (model_only, decode_ms): (f64, f64),
        of_ceiling: (f64, f64, f64),
    ) -> Measured {
        Measured {
            throughput: Throughput {
                images_per_s,
                latency: latency(p50_ms, p99_ms),
            },
            model_only,
            decode_ms,
            of_model_only: images_per_s / model_only,
            of_ceiling: of_ceiling.0,
            of_ceiling_range: (of_ceiling.1, of_ceiling.2),
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
            threads: 2,
            rounds: 3,
            clients: 20,
            batch: 10,
            batch_clients: 4,
            // Rounds a little apart: model-only 19, 20 and 21 (mean 20); decoding 24 and 26 ms.
            one_per_request: measured(15.5, (1400, 2100), (19.0, 24.0), (0.97, 0.95, 0.99)),
            batched: measured(15.7, (2500, 4400), (21.0, 26.0), (0.96, 0.93, 0.98)),
            ingest_sized: measured(17.9, (1100, 1900), (20.0, 10.0), (0.98, 0.97, 1.0)),
            text_under_load: latency(16, 45),
            text_queries: 156,
            image_queries: ImageQueries {
                sent: (30, 29),
                priority: latency(120, 480),
                plain: latency(2100, 5200),
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
    fn the_ceiling_rows_are_of_the_rounds_means() {
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
| Sightline (a) 20 connections × 1 photo | 15.50 | 1400 | 2100 | 0.82 | **0.97** (0.95–0.99) |
| Sightline (b) 4 connections × 10 photos | 15.70 | 2500 | 4400 | 0.75 | **0.96** (0.93–0.98) |
| Sightline (c) 20 connections × 1 ingest-sized image | 17.90 | 1100 | 1900 | 0.89 | **0.98** (0.97–1.00) |
| Python peer (PIL + onnxruntime, batch 8) | 6.50 | | | 0.33 (own model-only 22.00) | 0.41 |
| infinity 0.0.78 (a) 20 connections × 1 photo | 5.00 | 3900 | 6100 | 0.25 (own model-only 14.00, torch) | 0.31 |
| infinity 0.0.78 (b) 4 connections × 10 photos | 4.90 | 8000 | 9900 | 0.25 (own model-only 14.00, torch) | 0.31 |
| infinity 0.0.78 (c) 20 connections × 1 ingest-sized image | 7.16 | 2700 | 4000 | 0.36 (own model-only 14.00, torch) | 0.39 |

Sightline's ratios are to the model-only rate and decoding cost measured right before each of its 3 rounds (in brackets: the lowest and highest round); the model-only and ceiling rows are the means of all rounds, and the other servers' ratios are to them.

Sightline ÷ peer: (a) 2.38×, (b) 2.42×

Sightline ÷ infinity: (a) 3.10×, (b) 3.20×, (c) 2.50×
infinity server RSS: 2100 MiB loaded, ready after 21.5 s
infinity, data URI without `modality`: a photo (2.1 MB): 422 string_too_long
infinity, data URI without `modality`: a 64×64 PNG: 200, the text vector of the string

text queries during a second run of (a), beside the image queries: 156 sent, p50 16 ms, p99 45 ms
server RSS once loaded: 900 MiB with 1 image lane (ready after 3.4 s), 960 MiB with 2 (ready after 3.9 s; 1.07× one lane); peak 1500 MiB under load
image queries during that run (12.50 images/s beside them): with `?priority=search` 30 sent, p50 120 ms, p99 480 ms; without 29 sent, p50 2100 ms, p99 5200 ms
";
        let table = r.table();
        assert_eq!(table, golden, "{table}");
        // Without the peers, their rows and ratios are absent.
        let plain = report().table();
        assert!(
            !plain.contains("peer") && !plain.contains("infinity"),
            "{plain}"
        );
        assert!(plain.contains("| Sightline (c) 20 connections × 1 ingest-sized image | 17.90 | 1100 | 1900 | 0.89 | **0.98** (0.97–1.00) |"));
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
