//! Inference workers: OS threads that own an ONNX Runtime session each, take batches from their
//! modality's queue, run them off the async runtime, and answer each job with its own vector.
//! Images get several workers ("lanes") sharing one queue; text gets one. A failed or panicking
//! run fails only that batch; `Health` lets `/ready` see a wedged or stopped worker.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use ndarray::{Array2, Array4, Ix2, Ix3};
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};

use super::batcher::{collect, timeout_error, triage, Receiver, Triage};
use super::bundle::Bundle;
use super::cores::Cores;
use super::error::{EmbedError, ErrorKind};
use super::input::Modality;
use super::shared_weights::SharedWeights;
use super::text::{pad_batch, Dense, PadSettings};
use crate::metrics;

/// A model that turns a batch of prepared inputs into one raw vector per input.
pub(crate) trait BatchModel: Send + 'static {
    type Input: Send + 'static;
    fn run(&mut self, inputs: &[&Self::Input]) -> Result<Vec<Vec<f32>>>;
}

/// The image encoder: `[N, 3, S, S]` → `[N, D]`.
pub(crate) struct ImageModel {
    session: Session,
    input: String,
    output: String,
    size: usize,
    dimensions: usize,
    /// Inputs per run: 1 when the graph fixes its batch dimension to 1 (Immich's exports).
    rows_per_run: usize,
}

/// Element type and shape (−1 for dynamic) of the graph input `name`, if it is a tensor.
fn input_sig(session: &Session, name: &str) -> Option<(TensorElementType, Vec<i64>)> {
    let outlet = session.inputs().iter().find(|o| o.name() == name)?;
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

/// 1 when the input's batch dimension is fixed to 1, else unbounded.
fn rows_per_run(shape: &[i64]) -> usize {
    if shape.first() == Some(&1) {
        1
    } else {
        usize::MAX
    }
}

/// Runs `inputs` in slices of at most `rows` and concatenates the answers.
fn in_slices<T>(
    inputs: &[&T],
    rows: usize,
    mut run: impl FnMut(&[&T]) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(inputs.len());
    for slice in inputs.chunks(rows) {
        out.extend(run(slice)?);
    }
    Ok(out)
}

impl ImageModel {
    fn open(bundle: &Bundle, threads: usize, shared: Option<&SharedWeights>) -> Result<ImageModel> {
        let m = &bundle.manifest;
        let session =
            super::runtime::open_shared_session(&bundle.path(&m.image.onnx), threads, shared)?;
        check_names(&session, &[&m.image.input], &m.image.output, "image")?;
        let shape = input_sig(&session, &m.image.input).map_or_else(Vec::new, |(_, s)| s);
        Ok(ImageModel {
            rows_per_run: rows_per_run(&shape),
            session,
            input: m.image.input.clone(),
            output: m.image.output.clone(),
            size: m.preprocess.size as usize,
            dimensions: m.dimensions,
        })
    }
}

impl BatchModel for ImageModel {
    /// A preprocessed `3 × S × S` tensor.
    type Input = Vec<f32>;

    fn run(&mut self, inputs: &[&Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        in_slices(inputs, self.rows_per_run, |slice| self.run_slice(slice))
    }
}

impl ImageModel {
    fn run_slice(&mut self, inputs: &[&Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let plane = 3 * self.size * self.size;
        let mut data = Vec::with_capacity(inputs.len() * plane);
        for t in inputs {
            data.extend_from_slice(t);
        }
        let pixels = Array4::from_shape_vec((inputs.len(), 3, self.size, self.size), data)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => Tensor::from_array(pixels)?])?;
        let out = outputs[self.output.as_str()]
            .try_extract_array::<f32>()?
            .into_dimensionality::<Ix2>()
            .context("image encoder output is not 2-D")?;
        rows(out.to_owned(), inputs.len(), self.dimensions)
    }
}

/// The text encoder, form (a) pooled output or form (b) token states + `Dense`.
pub(crate) struct TextModel {
    session: Session,
    input_ids: String,
    /// `None`: the graph derives the mask itself (open_clip exports).
    attention_mask: Option<String>,
    /// The token inputs are int32 (Immich's open_clip exports), not int64.
    int32: bool,
    output: String,
    dense: Option<Dense>,
    dimensions: usize,
    pad: PadSettings,
    rows_per_run: usize,
}

impl TextModel {
    pub(crate) fn open(bundle: &Bundle, threads: usize) -> Result<TextModel> {
        let m = &bundle.manifest;
        let session = super::runtime::open_session(&bundle.path(&m.text.onnx), threads)?;
        let mut inputs = vec![m.text.input_ids.as_str()];
        inputs.extend(m.text.attention_mask.as_deref());
        check_names(&session, &inputs, &m.text.output, "text")?;
        let (elem, shape) = input_sig(&session, &m.text.input_ids)
            .with_context(|| format!("the text input `{}` is not a tensor", m.text.input_ids))?;
        let int32 = match elem {
            TensorElementType::Int64 => false,
            TensorElementType::Int32 => true,
            other => {
                return Err(anyhow!(
                    "the text input `{}` is {other}: Sightline feeds int64 or int32 token ids",
                    m.text.input_ids
                ))
            }
        };
        let pad = PadSettings::of(m);
        // A graph with a fixed sequence length takes exactly that many tokens per row.
        if let Some(&len) = shape.get(1).filter(|&&l| l > 0) {
            ensure!(
                pad.padding == super::bundle::Padding::Fixed && len as usize == m.max_seq_len,
                "the text input `{}` has a fixed length of {len} tokens: set `text.padding` to \
                 `fixed` and `max_seq_len` to {len} in sightline.json",
                m.text.input_ids
            );
        }
        let dense = match &m.text.dense {
            Some(file) => Some(Dense::load(&bundle.path(file), m.dimensions)?),
            None => None,
        };
        Ok(TextModel {
            rows_per_run: rows_per_run(&shape),
            session,
            input_ids: m.text.input_ids.clone(),
            attention_mask: m.text.attention_mask.clone(),
            int32,
            output: m.text.output.clone(),
            dense,
            dimensions: m.dimensions,
            pad,
        })
    }
}

impl BatchModel for TextModel {
    /// Token ids with [CLS] and [SEP].
    type Input = Vec<i64>;

    fn run(&mut self, inputs: &[&Vec<i64>]) -> Result<Vec<Vec<f32>>> {
        in_slices(inputs, self.rows_per_run, |slice| self.run_slice(slice))
    }
}

impl TextModel {
    /// A token tensor in the element type the graph takes (ids fit in i32: vocabularies are
    /// far below 2³¹).
    fn token_tensor(&self, values: &Array2<i64>) -> Result<ort::value::DynValue> {
        Ok(if self.int32 {
            Tensor::from_array(values.mapv(|v| v as i32))?.into_dyn()
        } else {
            Tensor::from_array(values.clone())?.into_dyn()
        })
    }

    fn run_slice(&mut self, inputs: &[&Vec<i64>]) -> Result<Vec<Vec<f32>>> {
        let (ids, mask) = pad_batch(inputs.iter().map(|v| v.as_slice()), self.pad);
        let mut feeds = vec![(self.input_ids.clone(), self.token_tensor(&ids)?)];
        if let Some(name) = &self.attention_mask {
            feeds.push((name.clone(), self.token_tensor(&mask)?));
        }
        let outputs = self.session.run(feeds)?;
        let out = outputs[self.output.as_str()].try_extract_array::<f32>()?;
        let vectors = match &self.dense {
            None => out
                .into_dimensionality::<Ix2>()
                .context("text encoder output is not [N, D]")?
                .to_owned(),
            Some(dense) => {
                let states = out
                    .into_dimensionality::<Ix3>()
                    .context("text encoder output is not token states [N, L, H]")?;
                ensure!(
                    states.dim().2 == dense.hidden(),
                    "token states have {} features but the Dense weights expect {}",
                    states.dim().2,
                    dense.hidden()
                );
                dense.pool_and_project(states, mask.view())
            }
        };
        rows(vectors, inputs.len(), self.dimensions)
    }
}

fn rows(out: Array2<f32>, n: usize, dimensions: usize) -> Result<Vec<Vec<f32>>> {
    ensure!(
        out.dim() == (n, dimensions),
        "model output has shape {:?}, expected [{n}, {dimensions}]",
        out.dim()
    );
    Ok(out.outer_iter().map(|r| r.to_vec()).collect())
}

/// Fails at start, with the names the graph does have, when the manifest names other tensors.
fn check_names(session: &Session, inputs: &[&str], output: &str, what: &str) -> Result<()> {
    let have_in: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let have_out: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    for name in inputs {
        if !have_in.contains(name) {
            return Err(anyhow!(
                "the {what} encoder has no input `{name}` (its inputs: {have_in:?}); fix `sightline.json`"
            ));
        }
    }
    if !have_out.contains(&output) {
        return Err(anyhow!(
            "the {what} encoder has no output `{output}` (its outputs: {have_out:?}); fix `sightline.json`"
        ));
    }
    Ok(())
}

/// What `/ready` reads: is the worker alive, and is it stuck in one run?
pub(crate) struct Health {
    origin: Instant,
    /// Milliseconds since `origin` when the current run started; `u64::MAX` while idle.
    busy_since: AtomicU64,
    alive: AtomicBool,
}

impl Health {
    pub(crate) fn new() -> Arc<Health> {
        Arc::new(Health {
            origin: Instant::now(),
            busy_since: AtomicU64::new(u64::MAX),
            alive: AtomicBool::new(true),
        })
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Alive and not stuck in one run for longer than `stall`.
    pub(crate) fn is_ready(&self, stall: Duration) -> bool {
        let busy = self.busy_since.load(Ordering::Acquire);
        self.alive.load(Ordering::Acquire)
            && (busy == u64::MAX || self.now_ms().saturating_sub(busy) < stall.as_millis() as u64)
    }
}

/// Niceness of image work (decoding and inference): text queries, which a user in Kibana is
/// waiting on, then preempt it instead of queueing behind a bulk ingest for the cores.
#[cfg(target_os = "linux")]
const IMAGE_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority. Linux niceness is per thread and inherited by the
/// threads it creates afterwards; a failure only loses the preference.
#[cfg(target_os = "linux")]
pub(crate) fn lower_priority() {
    // SAFETY: setpriority reads only its integer arguments; `who = 0` is the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, IMAGE_NICE);
    }
}

/// Elsewhere `who = 0` would mean the whole process, text included: no preference then.
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_priority() {}

/// How the image encoder's share of the cores is split: `lanes` sessions side by side, each
/// with `threads` intra-op threads. Lanes need no barrier between them, so while image
/// decoding holds one core the other lane keeps computing; one session spanning both cores
/// would wait at every operator for the thread that lost its core.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lanes {
    pub lanes: usize,
    pub threads: usize,
    /// Each lane holds its own, prepacked copy of the weights (`--per-lane-weights`) instead
    /// of all sharing one ([`SharedWeights`]).
    pub per_lane_weights: bool,
}

impl Lanes {
    /// `threads` split over `lanes`, rounding up so no core is left out; never more lanes
    /// than threads.
    pub(crate) fn split(threads: usize, lanes: usize, per_lane_weights: bool) -> Lanes {
        let threads = threads.max(1);
        let lanes = lanes.clamp(1, threads);
        Lanes {
            lanes,
            threads: threads.div_ceil(lanes),
            per_lane_weights,
        }
    }

    /// Opens every lane's session, several sharing one copy of the weights ([`SharedWeights`]),
    /// each on its own thread, one after the other. Returns once all have loaded and passed a
    /// probe run (a manifest whose `dimensions` do not match the graph fails here, not in every
    /// batch: issue 6, F4); each lane's thread then goes on with `work`.
    pub(crate) fn open_each(
        self,
        bundle: &Bundle,
        work: impl Fn(usize, ImageModel) + Send + Sync + 'static,
    ) -> Result<()> {
        super::runtime::init()?; // before any ONNX Runtime object, the shared weights included
        let shared = if self.lanes > 1 && !self.per_lane_weights {
            let model = bundle.path(&bundle.manifest.image.onnx);
            Some(Arc::new(SharedWeights::read(&model)?))
        } else {
            None
        };
        let work = Arc::new(work);
        for lane in 0..self.lanes {
            // One channel per lane: if the thread dies, its sender goes and `recv` fails.
            let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(1);
            let (bundle, shared, work) = (bundle.clone(), shared.clone(), work.clone());
            let threads = self.threads;
            std::thread::Builder::new()
                .name(format!("sightline-image-{lane}"))
                .spawn(move || {
                    // Created on this thread so ONNX Runtime's intra-op threads inherit the
                    // low priority.
                    lower_priority();
                    let size = bundle.manifest.preprocess.size as usize;
                    let opened = ImageModel::open(&bundle, threads, shared.as_deref()).and_then(
                        |mut model| {
                            model.run(&[&vec![0f32; 3 * size * size]]).context(
                                "the image encoder failed its start-up probe (check `dimensions` and `preprocess.size` in sightline.json)",
                            )?;
                            Ok(model)
                        },
                    );
                    match opened {
                        Ok(model) => {
                            let _ = opened_tx.send(Ok(()));
                            work(lane, model);
                        }
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                        }
                    }
                })
                .context("cannot start an image worker thread")?;
            opened_rx
                .recv()
                .context("an image worker thread ended while loading the model")??;
        }
        Ok(())
    }
}

/// Starts the image lanes, all taking batches from one queue. Returns each lane's health.
pub(crate) fn start_image_workers(
    bundle: &Bundle,
    lanes: Lanes,
    rx: Receiver<Vec<f32>>,
    cfg: WorkerConfig,
) -> Result<Vec<Arc<Health>>> {
    let healths: Vec<Arc<Health>> = (0..lanes.lanes).map(|_| Health::new()).collect();
    // The lanes share this closure (and so the queue and settings it owns).
    let (rx, lane_health) = (Mutex::new(rx), healths.clone());
    lanes.open_each(bundle, move |lane, model| {
        run(model, &rx, &cfg, &lane_health[lane]);
    })?;
    Ok(healths)
}

/// Worker settings.
pub(crate) struct WorkerConfig {
    pub modality: Modality,
    /// The bundle's name: the `model` label of the metrics.
    pub model: String,
    pub max_batch: usize,
    pub batch_wait: Duration,
    pub normalize: bool,
    /// Image lanes: the core tokens, and how many a batch holds (its intra-op threads).
    pub cores: Option<(Arc<Cores>, usize)>,
}

/// Runs until the queue is closed and drained. Workers sharing a queue take turns assembling
/// batches (the lock is held while one gathers), so batches stay full. Each successful run's
/// duration feeds the queue's rate estimator, which admission reads (`batcher::Queue::admit`).
pub(crate) fn run<M: BatchModel>(
    mut model: M,
    rx: &Mutex<Receiver<M::Input>>,
    cfg: &WorkerConfig,
    health: &Health,
) {
    let (label, model_name) = (cfg.modality.label(), cfg.model.as_str());
    let rate = rx.lock().unwrap_or_else(PoisonError::into_inner).rate();
    loop {
        let jobs = {
            let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
            collect(&rx, cfg.max_batch, cfg.batch_wait)
        };
        let Some(jobs) = jobs else { break };
        let Triage {
            live,
            expired,
            abandoned,
        } = triage(jobs, Instant::now());
        metrics::dropped(label, "disconnected", model_name, abandoned);
        metrics::dropped(label, "timeout", model_name, expired.len());
        for job in expired {
            let _ = job.reply.send(Err(timeout_error()));
        }
        if live.is_empty() {
            continue;
        }
        let started = Instant::now();
        for job in &live {
            metrics::stage_seconds("queue", label, model_name, started - job.enqueued);
        }
        metrics::batch_items(label, model_name, live.len());
        health.busy_since.store(health.now_ms(), Ordering::Release);
        let inputs: Vec<&M::Input> = live.iter().map(|j| &j.payload).collect();
        let tokens = cfg.cores.as_ref().map(|(c, threads)| c.for_batch(*threads));
        let outcome = catch_unwind(AssertUnwindSafe(|| model.run(&inputs)));
        drop(tokens);
        health.busy_since.store(u64::MAX, Ordering::Release);
        let elapsed = started.elapsed();
        metrics::stage_seconds("inference", label, model_name, elapsed);
        let outcome = match outcome {
            Ok(result) => result.map_err(|e| format!("{e:#}")),
            Err(_) => Err("ONNX Runtime panicked".to_owned()),
        };
        match outcome {
            Ok(vectors) => {
                rate.record(live.len(), elapsed);
                for (job, vector) in live.into_iter().zip(vectors) {
                    let _ = job.reply.send(finish(vector, cfg.normalize));
                }
            }
            Err(message) => {
                tracing::error!(modality = label, batch = live.len(), error = %message, "inference failed");
                for job in live {
                    let _ = job.reply.send(Err(EmbedError::new(
                        ErrorKind::Internal,
                        format!("inference failed: {message}"),
                    )));
                }
            }
        }
    }
    health.alive.store(false, Ordering::Release);
}

/// NaN/Inf is an error, never a vector; L2-normalises when asked.
fn finish(mut vector: Vec<f32>, normalize: bool) -> Result<Vec<f32>, EmbedError> {
    if !vector.iter().all(|v| v.is_finite()) {
        return Err(EmbedError::new(
            ErrorKind::Internal,
            "the model produced a non-finite value (NaN or Inf)",
        ));
    }
    if normalize {
        let norm = vector
            .iter()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 {
            return Err(EmbedError::new(
                ErrorKind::Internal,
                "the model produced a zero vector, which cannot be normalised",
            ));
        }
        for v in &mut vector {
            *v = (f64::from(*v) / norm) as f32;
        }
    }
    Ok(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_normalises_and_refuses_non_finite() {
        let v = finish(vec![3.0, 4.0], true).unwrap();
        assert_eq!(v, vec![0.6, 0.8]);
        assert_eq!(finish(vec![3.0, 4.0], false).unwrap(), vec![3.0, 4.0]);
        assert_eq!(
            finish(vec![f32::NAN, 1.0], true).unwrap_err().kind,
            ErrorKind::Internal
        );
        assert_eq!(
            finish(vec![f32::INFINITY], false).unwrap_err().kind,
            ErrorKind::Internal
        );
        assert_eq!(
            finish(vec![0.0, 0.0], true).unwrap_err().kind,
            ErrorKind::Internal
        );
    }

    #[test]
    fn image_sessions_share_one_copy_of_the_initializers_and_agree() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
        let bundle = Bundle::load(&dir).unwrap();
        super::super::runtime::init().unwrap();
        let shared = SharedWeights::read(&bundle.path(&bundle.manifest.image.onnx)).unwrap();
        let (count, holders) = shared.holders();
        assert_eq!(count, 4, "patch_w, patch_b, proj_w, proj_b");
        assert_eq!(holders, 1);
        let mut lanes: Vec<ImageModel> = (0..2)
            .map(|_| ImageModel::open(&bundle, 1, Some(&shared)).unwrap())
            .collect();
        // Each session holds the very tensors of the set (no copy of its own).
        assert_eq!(shared.holders(), (count, 3));
        let mut alone = ImageModel::open(&bundle, 1, None).unwrap();
        let size = bundle.manifest.preprocess.size as usize;
        let pixels: Vec<f32> = (0..3 * size * size)
            .map(|i| (i % 17) as f32 / 17.0)
            .collect();
        let expected = alone.run(&[&pixels]).unwrap();
        let first = lanes[0].run(&[&pixels]).unwrap();
        assert_eq!(
            lanes[1].run(&[&pixels]).unwrap(),
            first,
            "the lanes agree exactly"
        );
        // Without prepacking the matrix kernels sum in another order: rounding differs.
        let worst = first[0]
            .iter()
            .zip(&expected[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "largest difference to an unshared session: {worst}"
        );
        drop(lanes);
        assert_eq!(shared.holders(), (count, 1));
    }

    #[test]
    fn lanes_split_the_threads() {
        let split = |threads, lanes| {
            let l = Lanes::split(threads, lanes, false);
            (l.lanes, l.threads)
        };
        assert_eq!(split(2, 2), (2, 1));
        assert_eq!(split(16, 2), (2, 8));
        assert_eq!(split(3, 2), (2, 2), "rounded up: no core idle");
        assert_eq!(split(1, 2), (1, 1), "never more lanes than threads");
        assert_eq!(split(4, 0), (1, 4));
        assert_eq!(split(0, 0), (1, 1));
    }

    #[test]
    fn health_turns_unready_when_a_run_stalls_or_the_worker_stops() {
        let h = Health::new();
        assert!(h.is_ready(Duration::from_secs(1)));
        h.busy_since.store(h.now_ms(), Ordering::Release);
        assert!(h.is_ready(Duration::from_secs(60)));
        assert!(
            !h.is_ready(Duration::ZERO),
            "a run older than the stall limit is wedged"
        );
        h.busy_since.store(u64::MAX, Ordering::Release);
        h.alive.store(false, Ordering::Release);
        assert!(!h.is_ready(Duration::from_secs(60)));
    }
}
