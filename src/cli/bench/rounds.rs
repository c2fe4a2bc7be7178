//! Each pattern is measured in rounds. A round measures one core's decoding of the pattern's
//! images and the model alone, then the server under the pattern, so the ceiling that round's
//! rate is divided by was measured seconds before it. On a shared machine whose speed drifts by
//! a third within a minute (here, one ONNX Runtime thread on the same batch: 110 to 162 ms of
//! CPU per image from one 4-second measurement to the next), baselines measured minutes away
//! would make the drift the ratio.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::baseline::{decoding_ms, ModelOnly};
use super::load::{drive, Throughput, Window};
use super::Requests;
use crate::engine::bundle::Preprocess;
use crate::engine::preprocess::DecodeOptions;

/// What every round measures beside the server, and how long.
pub(super) struct Baselines {
    pub(super) model: Arc<ModelOnly>,
    pub(super) settings: Preprocess,
    pub(super) decode: DecodeOptions,
    /// The cores the model-only rate uses (ONNX Runtime threads).
    pub(super) threads: usize,
    pub(super) rounds: usize,
    /// A pattern's steady state in all, split over its rounds.
    pub(super) duration: Duration,
}

/// One request pattern.
pub(super) struct Pattern<'a> {
    pub(super) client: &'a reqwest::Client,
    pub(super) endpoint: &'a str,
    /// Its bodies, each with the indices into `images` of what it carries.
    pub(super) requests: Requests,
    pub(super) per_request: usize,
    pub(super) clients: usize,
    /// The images its requests carry, for the decoding cost.
    pub(super) images: Arc<Vec<Vec<u8>>>,
}

/// One round: its baselines, then the server's steady state.
#[derive(Debug, Clone)]
pub(super) struct Round {
    pub(super) model_only: f64,
    /// One core's decoding per image, over the images the window's answers carried.
    pub(super) decode_ms: f64,
    pub(super) window: Window,
}

impl Round {
    /// `each_ms`: each image's decoding, `carries`: the images of each body. Photos range
    /// from 1 to 16 MP; weighing each by how often the window's answers carried it makes the
    /// ceiling that of the images the server was measured on.
    fn new(model_only: f64, each_ms: &[f64], carries: &[Vec<usize>], window: Window) -> Round {
        let carried = window.bodies.iter().flat_map(|&b| &carries[b]);
        let (sum, n) = carried.fold((0.0, 0usize), |(sum, n), &i| (sum + each_ms[i], n + 1));
        Round {
            model_only,
            decode_ms: sum / n.max(1) as f64,
            window,
        }
    }
}

/// A pattern's rounds, summed up.
#[derive(Debug, Clone)]
pub(super) struct Measured {
    pub(super) throughput: Throughput,
    /// The rounds' means.
    pub(super) model_only: f64,
    pub(super) decode_ms: f64,
    /// The server's images over those the model alone, and the ceiling, would have finished
    /// in the same time, round by round: Σ images ÷ Σ (baseline × seconds).
    pub(super) of_model_only: f64,
    pub(super) of_ceiling: f64,
    /// The lowest and highest round's ratio to its ceiling.
    pub(super) of_ceiling_range: (f64, f64),
}

/// The fastest end-to-end rate `threads` cores allow when every image's decoding takes CPU
/// the model would otherwise use: per image, `threads / model_only` core-seconds of model
/// plus `decode_ms` of decoding.
pub(super) fn ceiling(threads: usize, model_only: f64, decode_ms: f64) -> f64 {
    threads as f64 / (threads as f64 / model_only + decode_ms / 1e3)
}

impl Measured {
    pub(super) fn of(rounds: &[Round], threads: usize) -> Measured {
        let n = rounds.len().max(1) as f64;
        let mean = |f: fn(&Round) -> f64| rounds.iter().map(f).sum::<f64>() / n;
        let images: f64 = rounds.iter().map(|r| r.window.images as f64).sum();
        let of = |baseline: &dyn Fn(&Round) -> f64| {
            images
                / rounds
                    .iter()
                    .map(|r| baseline(r) * r.window.seconds)
                    .sum::<f64>()
        };
        let round_ceiling = |r: &Round| ceiling(threads, r.model_only, r.decode_ms);
        let ratios = rounds.iter().map(|r| r.window.rate() / round_ceiling(r));
        Measured {
            throughput: Window::throughput(rounds.iter().map(|r| &r.window)),
            model_only: mean(|r| r.model_only),
            decode_ms: mean(|r| r.decode_ms),
            of_model_only: of(&|r| r.model_only),
            of_ceiling: of(&round_ceiling),
            of_ceiling_range: ratios.fold((f64::MAX, 0.0), |(lo, hi), x| (lo.min(x), hi.max(x))),
        }
    }
}

/// `pattern` in `b.rounds` rounds, each: one decoding pass over its images on one core, the
/// model alone for half a slice, the server for a slice of steady state.
pub(super) async fn measure(b: &Baselines, pattern: Pattern<'_>) -> Result<Measured> {
    let rounds = b.rounds.max(1);
    let slice = b.duration / rounds as u32;
    let mut measured = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (model, settings, decode, images) = (
            b.model.clone(),
            b.settings.clone(),
            b.decode,
            pattern.images.clone(),
        );
        let (each_ms, model_only) = tokio::task::spawn_blocking(move || {
            Ok::<_, anyhow::Error>((
                decoding_ms(&settings, &decode, &images)?,
                model.measure(slice / 2)?,
            ))
        })
        .await??;
        let window = drive(
            pattern.client,
            pattern.endpoint,
            pattern.requests.bodies.clone(),
            pattern.per_request,
            pattern.clients,
            slice,
        )
        .await?;
        if let Some(warning) = too_short(&window, pattern.clients) {
            eprintln!("bench: {warning}");
        }
        measured.push(Round::new(
            model_only,
            &each_ms,
            &pattern.requests.carries,
            window,
        ));
    }
    Ok(Measured::of(&measured, b.threads))
}

/// A round whose window counted fewer than [`MIN_ANSWERS`] answers per connection. Up to a
/// request per connection is under way at each end of a window, partly done: in a window not
/// much longer than that, it is a large part of the work and the round's rate is rough (10
/// photos × 4 connections read 0.91–0.94 of the ceiling in 5-s rounds, 0.96–0.97 in 10-s ones:
/// `bench/results/2026-12-02-run5-rounds6-infinity.log`, `…-run6-infinity.log`).
fn too_short(window: &Window, clients: usize) -> Option<String> {
    let answers = window.bodies.len();
    (answers < MIN_ANSWERS * clients).then(|| {
        format!(
            "a round counted {answers} answers from {clients} connections, fewer than {MIN_ANSWERS} each: its rate is rough; give each round longer (--duration, --rounds)"
        )
    })
}

const MIN_ANSWERS: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;

    fn round(model_only: f64, decode_ms: f64, images: usize, seconds: f64) -> Round {
        Round {
            model_only,
            decode_ms,
            window: Window {
                images,
                seconds,
                latencies: vec![Duration::from_millis(images as u64); 1],
                bodies: Vec::new(),
            },
        }
    }

    #[test]
    fn a_round_with_under_two_answers_per_connection_is_called_rough() {
        let window = |answers: usize| Window {
            images: answers * 10,
            seconds: 5.0,
            latencies: vec![Duration::ZERO; answers],
            bodies: vec![0; answers],
        };
        let warning = too_short(&window(7), 4).expect("7 answers from 4 connections");
        assert!(
            warning.contains("7 answers from 4 connections"),
            "{warning}"
        );
        assert!(warning.contains("--duration"), "{warning}");
        assert!(too_short(&window(8), 4).is_none());
    }

    #[test]
    fn a_round_decodes_what_its_answers_carried() {
        // Body 0 carries a 10-ms image, body 1 a 10-ms and a 40-ms one; the window answered
        // body 1 twice and body 0 once: 5 images, 110 ms.
        let window = Window {
            images: 5,
            seconds: 1.0,
            latencies: vec![Duration::ZERO; 3],
            bodies: vec![1, 0, 1],
        };
        let r = Round::new(20.0, &[10.0, 40.0], &[vec![0], vec![0, 1]], window);
        assert!((r.decode_ms - 22.0).abs() < 1e-9, "{}", r.decode_ms);
        assert_eq!(r.model_only, 20.0);
    }

    #[test]
    fn ceilings_add_decoding_cpu_to_the_model_cpu() {
        // 2 cores ÷ 20 images/s = 100 ms of model per image; + 25 ms decoding: 16 images/s.
        assert!((ceiling(2, 20.0, 25.0) - 16.0).abs() < 1e-9);
        assert!((ceiling(2, 20.0, 10.0) - 2.0 / 0.11).abs() < 1e-9);
    }

    #[test]
    fn each_round_is_divided_by_its_own_baselines() {
        // The machine runs at full speed in round 1 and at half speed in round 2; the server
        // delivers 0.9 of the ceiling in both. Against baselines measured once, in the fast
        // round, the slow one would seem to deliver 0.45.
        let (fast, slow) = (ceiling(2, 20.0, 25.0), ceiling(2, 10.0, 50.0));
        let rounds = [
            round(20.0, 25.0, (0.9 * fast * 10.0) as usize, 10.0),
            round(10.0, 50.0, (0.9 * slow * 10.0) as usize, 10.0),
        ];
        let m = Measured::of(&rounds, 2);
        assert!((m.of_ceiling - 0.9).abs() < 0.01, "{}", m.of_ceiling);
        let (lo, hi) = m.of_ceiling_range;
        assert!(
            (lo - 0.9).abs() < 0.01 && (hi - 0.9).abs() < 0.01,
            "{lo} {hi}"
        );
        assert!((m.model_only - 15.0).abs() < 1e-9 && (m.decode_ms - 37.5).abs() < 1e-9);
        // 144 + 72 images in 20 s, against 200 + 100 for the model alone.
        assert_eq!(rounds[0].window.images + rounds[1].window.images, 216);
        assert!((m.of_model_only - 0.72).abs() < 1e-9, "{}", m.of_model_only);
        assert!((m.throughput.images_per_s - 10.8).abs() < 1e-9);
    }

    #[test]
    fn the_range_shows_the_rounds_apart() {
        let c = ceiling(2, 20.0, 25.0);
        let rounds = [
            round(20.0, 25.0, (0.8 * c * 10.0) as usize, 10.0),
            round(20.0, 25.0, c as usize * 10, 10.0),
        ];
        let m = Measured::of(&rounds, 2);
        assert_eq!(m.of_ceiling_range, (0.8, 1.0));
        assert!((m.of_ceiling - 0.9).abs() < 1e-9);
    }
}
