//! The baselines of the benchmark, measured in the same run as the server: the photos (as
//! files, and as `sightline ingest` would send them), their sizes, one core's cost of decoding and preprocessing a photo, and the image encoder alone on
//! preprocessed tensors with the server's lanes and threads. These measure the engine's parts
//! on purpose, so they use its crate-internal pieces rather than [`crate::engine::Engine`].

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::BenchConfig;
use crate::engine::bundle::{Bundle, Preprocess};
use crate::engine::preprocess::{preprocess, DecodeOptions};
use crate::engine::worker::{BatchModel, Lanes};
use crate::es::image::{prepare, ImageOptions, PreparedImage};

/// The benchmark's images.
pub(super) struct Photos {
    /// The JPEG files as they are: patterns (a) and (b).
    pub(super) originals: Vec<Vec<u8>>,
    /// What `sightline ingest` sends for each (longer side ≤ 1024, re-encoded, by the ingest's
    /// own function): pattern (c).
    pub(super) ingest: Vec<PreparedImage>,
}

/// The photos' sizes, for the report's first line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PhotoSummary {
    pub(super) count: usize,
    pub(super) megapixels: (f64, f64),
    /// Mean file size, as they are and as ingest sends them.
    pub(super) mean_mb: f64,
    pub(super) ingest_mean_mb: f64,
}

impl Photos {
    pub(super) fn load(dir: &Path) -> Result<Photos> {
        let originals = load_photos(dir)?;
        let ingest = originals
            .iter()
            .map(|p| prepare(p, ImageOptions::default()))
            .collect::<Result<Vec<_>>>()?;
        let photos = Photos { originals, ingest };
        let s = photos.summary();
        eprintln!(
            "bench: {} photos, {:.1}–{:.1} MP, {:.2} MB on average, {:.2} MB as ingest sends them",
            s.count, s.megapixels.0, s.megapixels.1, s.mean_mb, s.ingest_mean_mb
        );
        Ok(photos)
    }

    pub(super) fn summary(&self) -> PhotoSummary {
        let mean_mb = |sizes: &mut dyn Iterator<Item = usize>| {
            sizes.sum::<usize>() as f64 / 1e6 / self.originals.len().max(1) as f64
        };
        PhotoSummary {
            count: self.originals.len(),
            megapixels: megapixel_range(&self.originals),
            mean_mb: mean_mb(&mut self.originals.iter().map(Vec::len)),
            ingest_mean_mb: mean_mb(&mut self.ingest.iter().map(|p| p.payload.len())),
        }
    }
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
pub(super) async fn decode_cost_ms(
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
pub(super) async fn model_only(
    cfg: &BenchConfig,
    settings: &Preprocess,
    photos: &[Vec<u8>],
) -> Result<f64> {
    let tensors = photos
        .iter()
        .take(8)
        .map(|p| preprocess(p, settings, &DecodeOptions::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let dir = cfg.model_dir.clone();
    let lanes = Lanes::split(cfg.threads, cfg.image_lanes, cfg.per_lane_weights);
    let duration = cfg.duration;
    tokio::task::spawn_blocking(move || image_model_throughput(&dir, lanes, 8, tensors, duration))
        .await?
}

/// Model-only throughput for the benchmark: runs the image encoder alone, with the engine's
/// lanes and session settings, on already preprocessed tensors in batches of `batch`, for
/// `duration`. Returns images per second; the ratio of end-to-end to this number is the
/// overhead.
pub(super) fn image_model_throughput(
    model_dir: &std::path::Path,
    lanes: Lanes,
    batch: usize,
    tensors: Vec<Vec<f32>>,
    duration: Duration,
) -> Result<f64> {
    ensure!(!tensors.is_empty(), "no tensors to benchmark with");
    let batch: Vec<Vec<f32>> = tensors.into_iter().cycle().take(batch.max(1)).collect();
    // Lanes start together once all have loaded; each warms up (the first run allocates ONNX
    // Runtime's arena) and then reports its own rate over `duration`.
    let (start_tx, start_rx) = std::sync::mpsc::channel::<()>();
    let start_rx = Mutex::new(start_rx);
    let (rate_tx, rate_rx) = std::sync::mpsc::channel();
    lanes.open_each(&Bundle::load(model_dir)?, move |_, mut model| {
        let inputs: Vec<&Vec<f32>> = batch.iter().collect();
        let go = start_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        let rate = go.map_err(anyhow::Error::from).and_then(|()| {
            model.run(&inputs)?;
            let started = Instant::now();
            let mut images = 0usize;
            while started.elapsed() < duration {
                model.run(&inputs)?;
                images += inputs.len();
            }
            Ok(images as f64 / started.elapsed().as_secs_f64())
        });
        let _ = rate_tx.send(rate);
    })?;
    for _ in 0..lanes.lanes {
        start_tx.send(())?;
    }
    let mut total = 0.0;
    for _ in 0..lanes.lanes {
        total += rate_rx.recv()??;
    }
    Ok(total)
}
