//! Engine flags shared by every command that embeds (`serve`, `embed`, `ingest --embed-locally`).
//! Defaults come from [`EngineOptions::default`], so the flags and the library cannot disagree.

use std::path::{Path, PathBuf};

use crate::engine::{DecodeOptions, EngineOptions};

#[derive(Debug, Clone, clap::Args)]
pub(super) struct EngineArgs {
    /// Model bundle directory (holds `sightline.json`). `serve` takes the flag more than once to
    /// serve several models, chosen per request by name; the first answers requests naming none.
    #[arg(
        long,
        env = "SIGHTLINE_MODEL_DIR",
        default_value = "models/clip-ViT-B-32-multilingual-v1"
    )]
    pub model_dir: Vec<PathBuf>,
    /// ONNX Runtime threads per encoder [default: number of cores].
    #[arg(long, env = "SIGHTLINE_THREADS")]
    pub threads: Option<usize>,
    /// Image encoder sessions running side by side, splitting `--threads` between them.
    #[arg(long, env = "SIGHTLINE_IMAGE_LANES", default_value_t = EngineOptions::default().image_lanes)]
    pub image_lanes: usize,
    /// Each image lane keeps its own copy of the image weights, prepacked for its matrix
    /// kernels: 2-12 % more images/s, +350 MB (fp32 ViT-B/32) per lane beyond the first.
    /// By default the lanes share one copy.
    #[arg(long, env = "SIGHTLINE_PER_LANE_WEIGHTS")]
    pub per_lane_weights: bool,
    /// Images decoded and preprocessed at once [default: number of cores].
    #[arg(long, env = "SIGHTLINE_DECODE_WORKERS")]
    pub decode_workers: Option<usize>,
    /// Largest image batch sent to the model.
    #[arg(long, env = "SIGHTLINE_MAX_BATCH", default_value_t = EngineOptions::default().max_batch_image)]
    pub max_batch: usize,
    /// Largest image batch of ingest inputs for 10 s after a search (`?priority=search`): a
    /// search waits for the batch running, so smaller batches answer it sooner.
    #[arg(long, env = "SIGHTLINE_MAX_BATCH_BESIDE_SEARCH", default_value_t = EngineOptions::default().max_batch_beside_search)]
    pub max_batch_beside_search: usize,
    /// Largest text batch sent to the model.
    #[arg(long, env = "SIGHTLINE_MAX_BATCH_TEXT", default_value_t = EngineOptions::default().max_batch_text)]
    pub max_batch_text: usize,
    /// How long an image batch waits for more inputs once it has one (e.g. `2ms`).
    #[arg(long, env = "SIGHTLINE_BATCH_WAIT", default_value_t = EngineOptions::default().batch_wait.into())]
    pub batch_wait: humantime::Duration,
    /// The same for text; by default a query runs at once (queries arriving meanwhile batch).
    #[arg(long, env = "SIGHTLINE_TEXT_BATCH_WAIT", default_value_t = EngineOptions::default().text_batch_wait.into())]
    pub text_batch_wait: humantime::Duration,
    /// Inputs per modality admitted at once; beyond it requests get 429.
    #[arg(long, env = "SIGHTLINE_QUEUE_CAPACITY", default_value_t = EngineOptions::default().queue_capacity)]
    pub queue_capacity: usize,
    /// Inputs per modality admitted at once to the priority lane (`?priority=search`), apart
    /// from `--queue-capacity`; beyond it those requests get 429.
    #[arg(long, env = "SIGHTLINE_PRIORITY_CAPACITY", default_value_t = EngineOptions::default().priority_capacity)]
    pub priority_capacity: usize,
    /// Largest image accepted, in pixels (width × height), checked before decoding.
    #[arg(long, env = "SIGHTLINE_MAX_PIXELS", default_value_t = DecodeOptions::default().max_pixels)]
    pub max_pixels: u64,
    /// Decoded pixel memory held at once across all images (e.g. `1GiB`); an image waits for
    /// room, one larger than all of it is refused with 400 [default: a quarter of the cgroup's
    /// memory limit, else of the machine's memory, at least 256 MiB].
    #[arg(long, env = "SIGHTLINE_DECODE_MEMORY", value_parser = super::parse_bytes)]
    pub decode_memory: Option<usize>,
    /// Inputs not embedded within this time are answered with 429 (e.g. `60s`); requests
    /// that would not drain within it are refused with 429 at once.
    #[arg(long, env = "SIGHTLINE_REQUEST_TIMEOUT", default_value_t = EngineOptions::default().request_timeout.into())]
    pub request_timeout: humantime::Duration,
    /// Return raw model vectors instead of L2-normalised ones (then map `similarity: cosine`).
    #[arg(long, env = "SIGHTLINE_NO_NORMALIZE")]
    pub no_normalize: bool,
}

impl EngineArgs {
    pub(super) fn options(&self) -> EngineOptions {
        let defaults = EngineOptions::default();
        EngineOptions {
            threads: self.threads.unwrap_or(defaults.threads),
            image_lanes: self.image_lanes,
            per_lane_weights: self.per_lane_weights,
            decode_workers: self.decode_workers.unwrap_or(defaults.decode_workers),
            max_batch_image: self.max_batch,
            max_batch_text: self.max_batch_text,
            batch_wait: self.batch_wait.into(),
            text_batch_wait: self.text_batch_wait.into(),
            queue_capacity: self.queue_capacity,
            priority_capacity: self.priority_capacity,
            priority_burst: defaults.priority_burst,
            max_batch_beside_search: self.max_batch_beside_search,
            normalize: !self.no_normalize,
            // Exact decoding unless a command opts into the fast path (`serve` does).
            decode: DecodeOptions {
                max_pixels: self.max_pixels,
                jpeg_prescale: false,
                ..defaults.decode
            },
            decode_memory: self
                .decode_memory
                .map_or(defaults.decode_memory, |b| b as u64),
            request_timeout: self.request_timeout.into(),
            stall_timeout: defaults.stall_timeout.max(self.request_timeout.into()),
            // URL inputs are a `serve` concern (its `--allow-url-hosts`); off everywhere else.
            url_fetcher: None,
        }
    }

    /// Starts the engine of the one `--model-dir`.
    pub(super) async fn start(&self) -> anyhow::Result<crate::engine::Engine> {
        let [dir] = self.model_dir.as_slice() else {
            anyhow::bail!(
                "`--model-dir` is given {} times: only `serve` serves several models",
                self.model_dir.len()
            );
        };
        start(dir, self.options()).await
    }

    /// One engine per `--model-dir`, in order, each with `opts` (`serve` adjusts them), loaded one
    /// after the other.
    pub(super) async fn start_each(
        &self,
        opts: &EngineOptions,
    ) -> anyhow::Result<Vec<crate::engine::Engine>> {
        let mut engines = Vec::with_capacity(self.model_dir.len());
        for dir in &self.model_dir {
            engines.push(start(dir, opts.clone()).await?);
        }
        Ok(engines)
    }
}

/// Starts an engine off the async runtime: loading sessions blocks for seconds.
async fn start(dir: &Path, opts: EngineOptions) -> anyhow::Result<crate::engine::Engine> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || crate::engine::Engine::start(&dir, opts)).await?
}
