//! The baselines of the benchmark, measured in the same run as the server: the photos (as
//! files, and as `sightline ingest` would send them), their sizes, one core's cost of decoding
//! and preprocessing a photo, and the image encoder alone on preprocessed tensors with the
//! server's lanes and threads. These measure the engine's parts
//! on purpose, so they use its crate-internal pieces rather than [`crate::engine::Engine`].

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};

use super::BenchConfig;
use crate::engine::bundle::{Bundle, Preprocess};
use crate::engine::preprocess::{preprocess, DecodeOptions};
use crate::engine::worker::{BatchModel, ImageModel, Lanes};
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

/// Milliseconds one core spends decoding and preprocessing an image of `photos`, one pass,
/// with the server's decoding settings.
pub(super) fn decoding_ms(
    settings: &Preprocess,
    decode: &DecodeOptions,
    photos: &[Vec<u8>],
) -> Result<Vec<f64>> {
    photos
        .iter()
        .map(|photo| {
            let started = Instant::now();
            preprocess(photo, settings, decode)?;
            Ok(started.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

/// The image encoder alone on preprocessed tensors of the photos, in batches of 8, with the
/// server's lanes and session settings. It stays loaded for the whole run, so that each round
/// of a pattern measures it right before the server (`rounds.rs`); the ratio of end-to-end to
/// it is the server's overhead.
pub(super) struct ModelOnly {
    /// One per lane: run for this long and report the rate.
    lanes: Vec<Sender<Duration>>,
    rates: Mutex<Receiver<Result<f64>>>,
}

impl ModelOnly {
    pub(super) fn open(
        cfg: &BenchConfig,
        settings: &Preprocess,
        photos: &[Vec<u8>],
    ) -> Result<ModelOnly> {
        let tensors = photos
            .iter()
            .take(BATCH)
            .map(|p| preprocess(p, settings, &DecodeOptions::default()))
            .collect::<Result<Vec<_>, _>>()?;
        ensure!(!tensors.is_empty(), "no tensors to benchmark with");
        let batch: Vec<Vec<f32>> = tensors.into_iter().cycle().take(BATCH).collect();
        let lanes = Lanes::split(cfg.threads, cfg.image_lanes, cfg.per_lane_weights);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..lanes.lanes).map(|_| channel::<Duration>()).unzip();
        let receivers = Mutex::new(receivers.into_iter().map(Some).collect::<Vec<_>>());
        let (rate_tx, rates) = channel();
        lanes.open_each(&Bundle::load(&cfg.model_dir)?, move |lane, mut model| {
            let commands = receivers.lock().unwrap_or_else(PoisonError::into_inner)[lane].take();
            let inputs: Vec<&Vec<f32>> = batch.iter().collect();
            // The first batch allocates ONNX Runtime's arena: not part of any measurement.
            let warm = model.run(&inputs).map(drop).map_err(|e| format!("{e:#}"));
            for length in commands.into_iter().flatten() {
                let rate = match &warm {
                    Err(e) => Err(anyhow!("the image encoder failed: {e}")),
                    Ok(()) => rate(&mut model, &inputs, length),
                };
                if rate_tx.send(rate).is_err() {
                    return;
                }
            }
        })?;
        Ok(ModelOnly {
            lanes: senders,
            rates: Mutex::new(rates),
        })
    }

    /// All lanes side by side for `length`: the sum of their images/s.
    pub(super) fn measure(&self, length: Duration) -> Result<f64> {
        for lane in &self.lanes {
            lane.send(length)
                .map_err(|_| anyhow!("a model-only lane has stopped"))?;
        }
        let rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0.0;
        for _ in &self.lanes {
            total += rates.recv()??;
        }
        Ok(total)
    }
}

/// Images per request of the model-only run: the server's default largest batch.
const BATCH: usize = 8;

fn rate(model: &mut ImageModel, inputs: &[&Vec<f32>], length: Duration) -> Result<f64> {
    let started = Instant::now();
    let mut images = 0usize;
    while started.elapsed() < length {
        model.run(inputs)?;
        images += inputs.len();
    }
    Ok(images as f64 / started.elapsed().as_secs_f64())
}
