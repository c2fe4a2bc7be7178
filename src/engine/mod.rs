//! The embedding engine: the one API every caller (HTTP dialects, CLI) uses.
//!
//! [`Engine::embed`] takes the items of one request and returns one result per item, in order.
//! Images are decoded and preprocessed on a bounded blocking pool, texts are tokenized inline;
//! both then wait in their modality's queue (`batcher.rs`) for a worker thread (`worker.rs`)
//! that batches them with other callers' inputs. A bad input fails only itself.

mod batcher;
pub mod bundle;
pub mod error;
pub mod format;
pub mod input;
mod jpeg;
pub mod preprocess;
pub mod runtime;
pub mod text;
pub(crate) mod worker;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::oneshot;

pub use bundle::Bundle;
pub use error::{EmbedError, ErrorKind, InputError};
pub use input::{Item, Modality, ModalityHint, UrlFetcher};
pub use preprocess::DecodeOptions;

use batcher::{Admission, Job, Queue};
use bundle::Preprocess;
use text::TextTokenizer;
use worker::{BatchModel, Health, Lanes, TextModel, WorkerConfig};

/// Engine settings; every field has a CLI flag in `sightline serve`.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// ONNX Runtime intra-op threads for text, and for images in all lanes together.
    pub threads: usize,
    /// Image encoder sessions running side by side, sharing `threads`.
    pub image_lanes: usize,
    /// Images decoded and preprocessed at once.
    pub decode_workers: usize,
    pub max_batch_image: usize,
    pub max_batch_text: usize,
    /// How long an image batch waits for more inputs once it has one.
    pub batch_wait: Duration,
    /// The same for text. Zero by default: a query is run at once, and queries arriving
    /// meanwhile form the next batch, so a lone Kibana search never waits for company.
    pub text_batch_wait: Duration,
    /// Inputs admitted per modality before callers get "overloaded".
    pub queue_capacity: usize,
    /// L2-normalise vectors (needed for Elasticsearch's `dot_product`).
    pub normalize: bool,
    pub decode: DecodeOptions,
    /// Inputs still queued after this long are answered with a timeout, never run.
    pub request_timeout: Duration,
    /// A worker busy with one batch for longer than this is reported as not ready.
    pub stall_timeout: Duration,
    /// Fetches URL inputs; `None` (the default) refuses them (`crate::url` builds one from
    /// `--allow-url-hosts`).
    pub url_fetcher: Option<Arc<dyn UrlFetcher>>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        EngineOptions {
            threads: cores,
            image_lanes: 2,
            decode_workers: cores,
            max_batch_image: 8,
            max_batch_text: 32,
            batch_wait: Duration::from_millis(2),
            text_batch_wait: Duration::ZERO,
            queue_capacity: 2048,
            normalize: true,
            decode: DecodeOptions::default(),
            request_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(30),
            url_fetcher: None,
        }
    }
}

/// What `/info` reports and what `setup` needs to create a matching index.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub dimensions: usize,
    pub normalized: bool,
    pub max_seq_len: usize,
    /// `sha256:` over model files and preprocessing settings.
    pub fingerprint: String,
}

impl ModelInfo {
    /// The `dense_vector` similarity that fits these vectors (es-contract §11 item 11).
    pub fn similarity(&self) -> &'static str {
        if self.normalized {
            "dot_product"
        } else {
            "cosine"
        }
    }
}

/// One input's vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub modality: Modality,
    pub vector: Vec<f32>,
    /// The text was longer than `max_seq_len` tokens and was cut.
    pub truncated: bool,
    /// Tokens fed to the text encoder (0 for images), for OpenAI's `usage`.
    pub tokens: usize,
}

/// Cheap to clone; all clones share the workers.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    info: ModelInfo,
    opts: EngineOptions,
    preprocess: Preprocess,
    tokenizer: TextTokenizer,
    /// `decode_workers` low-priority threads for image decoding and preprocessing.
    decoders: rayon::ThreadPool,
    images: Queue<Vec<f32>>,
    texts: Queue<Vec<i64>>,
    image_health: Vec<Arc<Health>>,
    text_health: Arc<Health>,
}

impl Engine {
    /// Loads the bundle in `model_dir`, opens both sessions and starts the workers.
    pub fn start(model_dir: &Path, opts: EngineOptions) -> Result<Engine> {
        let bundle = Bundle::load(model_dir)?;
        let m = &bundle.manifest;
        let tokenizer = TextTokenizer::load(&bundle.path(&m.tokenizer), m.max_seq_len)?;
        let mut text_model = TextModel::open(&bundle, opts.threads)?;
        // A probe through the encoder: a manifest whose `dimensions` do not match the graph
        // fails here, at start, rather than failing every batch with a 500 (issue 6, F4).
        let probe = tokenizer.tokenize("probe")?;
        text_model.run(&[&probe.ids]).context(
            "the text encoder failed its start-up probe (check `dimensions` in sightline.json)",
        )?;
        let info = ModelInfo {
            name: m.name.clone(),
            dimensions: m.dimensions,
            normalized: opts.normalize,
            max_seq_len: m.max_seq_len,
            fingerprint: bundle.fingerprint()?,
        };
        let (images, image_rx) = Queue::new(opts.queue_capacity);
        let (texts, text_rx) = Queue::new(opts.queue_capacity);
        let text_health = Health::new();
        let config = |modality, max_batch: usize, batch_wait| WorkerConfig {
            modality,
            max_batch: max_batch.max(1),
            batch_wait,
            normalize: opts.normalize,
        };
        let image_cfg = config(Modality::Image, opts.max_batch_image, opts.batch_wait);
        let text_cfg = config(Modality::Text, opts.max_batch_text, opts.text_batch_wait);
        let image_health = worker::start_image_workers(
            &bundle,
            Lanes::split(opts.threads, opts.image_lanes),
            image_rx,
            image_cfg,
        )?;
        // Decoding runs at the image worker's low priority too, on its own pool.
        let decoders = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.decode_workers.max(1))
            .thread_name(|i| format!("sightline-decode-{i}"))
            .start_handler(|_| worker::lower_priority())
            // Decoders run inside `preprocess::decode_rgb`'s `catch_unwind`; should anything else
            // panic, rayon's default would abort the process, and one image must not do that.
            .panic_handler(|_| tracing::error!("an image decoding task panicked"))
            .build()
            .context("cannot start the image decoding threads")?;
        let health = text_health.clone();
        std::thread::Builder::new()
            .name("sightline-text".into())
            .spawn(move || worker::run(text_model, &Mutex::new(text_rx), &text_cfg, &health))
            .context("cannot start the text worker thread")?;
        Ok(Engine {
            inner: Arc::new(Inner {
                info,
                preprocess: m.preprocess.clone(),
                tokenizer,
                decoders,
                opts,
                images,
                texts,
                image_health,
                text_health,
            }),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    pub fn options(&self) -> &EngineOptions {
        &self.inner.opts
    }

    /// All workers are alive and none is stuck in a run.
    pub fn is_ready(&self) -> bool {
        let stall = self.inner.opts.stall_timeout;
        self.inner.image_health.iter().all(|h| h.is_ready(stall))
            && self.inner.text_health.is_ready(stall)
    }

    /// Inputs admitted and not yet answered, per modality.
    pub fn queue_depth(&self, modality: Modality) -> usize {
        match modality {
            Modality::Image => self.inner.images.depth(),
            Modality::Text => self.inner.texts.depth(),
        }
    }

    /// Embeds one request's items: one result per item, in order, so one bad input fails only
    /// itself. `Err` means the request as a whole was not taken and nothing ran: the queue is
    /// full (overloaded), or the request alone holds more inputs than the queue can.
    pub async fn embed(
        &self,
        items: Vec<Item>,
    ) -> Result<Vec<Result<Embedding, EmbedError>>, EmbedError> {
        let deadline = Instant::now() + self.inner.opts.request_timeout;
        let n_images = items.iter().filter(|i| !matches!(i, Item::Text(_))).count();
        let admissions = self
            .inner
            .images
            .admit(n_images)
            .and_then(|a| Ok((a, self.inner.texts.admit(items.len() - n_images)?)));
        let _admissions: (Admission, Admission) = match admissions {
            Ok(a) => a,
            Err(e) => {
                crate::metrics::input_error(e.kind.label());
                return Err(e);
            }
        };
        // Only a few items per request are decoded ahead of the model, so a request with
        // hundreds of images never holds hundreds of decoded tensors at once.
        let lookahead = 2 * self
            .inner
            .opts
            .max_batch_image
            .max(self.inner.opts.decode_workers);
        let results: Vec<_> = futures::stream::iter(items)
            .map(|item| self.embed_one(item, deadline))
            .buffered(lookahead.max(1))
            .collect()
            .await;
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            crate::metrics::input_error(e.kind.label());
        }
        Ok(results)
    }

    async fn embed_one(&self, item: Item, deadline: Instant) -> Result<Embedding, EmbedError> {
        let inner = &self.inner;
        let (modality, truncated, tokens, reply) = match item {
            Item::Text(text) => {
                let started = Instant::now();
                let tokens = self.tokenize(text).await?;
                crate::metrics::stage_seconds("tokenize", "text", started.elapsed());
                let n = tokens.ids.len();
                let reply = enqueue(&inner.texts, tokens.ids, deadline)?;
                (Modality::Text, tokens.truncated, n, reply)
            }
            Item::Image(bytes) => {
                let tensor = self.preprocess(bytes).await?;
                (
                    Modality::Image,
                    false,
                    0,
                    enqueue(&inner.images, tensor, deadline)?,
                )
            }
            Item::Url(url) => {
                let bytes = self.fetch(&url, deadline).await?;
                let tensor = self.preprocess(bytes).await?;
                (
                    Modality::Image,
                    false,
                    0,
                    enqueue(&inner.images, tensor, deadline)?,
                )
            }
        };
        let vector = match tokio::time::timeout_at(deadline.into(), reply).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => {
                return Err(EmbedError::new(
                    ErrorKind::NotReady,
                    "the inference worker has stopped",
                ))
            }
            Err(_) => return Err(batcher::timeout_error()),
        };
        Ok(Embedding {
            modality,
            vector,
            truncated,
            tokens,
        })
    }

    /// Turns one raw input (a JSON string of a request, with its modality hint) into an item
    /// this engine will take, or the reason it will not: every caller's door to [`Engine::embed`].
    /// A URL input is refused here, before any work, while fetching is off or its host is not
    /// allowed; `embed` checks again when it fetches.
    pub fn parse_input(&self, input: &str, hint: ModalityHint) -> Result<Item, EmbedError> {
        let item = input::classify(input, hint)?;
        if let Item::Url(url) = &item {
            self.url_fetcher()?.check(url)?;
        }
        Ok(item)
    }

    fn url_fetcher(&self) -> Result<&dyn UrlFetcher, EmbedError> {
        self.inner
            .opts
            .url_fetcher
            .as_deref()
            .ok_or_else(input::urls_disabled)
    }

    /// Fetches a URL input's image on the async runtime, within `--url-timeout` and the
    /// request's own deadline.
    async fn fetch(&self, url: &str, deadline: Instant) -> Result<Vec<u8>, EmbedError> {
        let fetcher = self.url_fetcher()?;
        let started = Instant::now();
        let bytes = tokio::time::timeout_at(deadline.into(), fetcher.fetch(url))
            .await
            .map_err(|_| batcher::timeout_error())??;
        crate::metrics::stage_seconds("fetch", "image", started.elapsed());
        Ok(bytes)
    }

    /// Tokenizes a long text on a blocking thread: the work is bounded (`text.rs`), but a
    /// multi-megabyte text still costs a scan of its bytes, which must not stall the requests
    /// sharing this executor thread. Short texts (the common case) are tokenized inline.
    async fn tokenize(&self, text: String) -> Result<text::Tokens, EmbedError> {
        const INLINE_BYTES: usize = 16 << 10;
        if text.len() <= INLINE_BYTES {
            return self.inner.tokenizer.tokenize(&text);
        }
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.inner.tokenizer.tokenize(&text))
            .await
            .map_err(|_| EmbedError::new(ErrorKind::Internal, "the tokenizer thread failed"))?
    }

    /// Decodes and preprocesses on the decoding pool (`decode_workers` threads).
    async fn preprocess(&self, bytes: Vec<u8>) -> Result<Vec<f32>, EmbedError> {
        let (reply, tensor) = oneshot::channel();
        let engine = self.clone();
        let started = Instant::now();
        self.inner.decoders.spawn(move || {
            let inner = &engine.inner;
            let _ = reply.send(preprocess::preprocess(
                &bytes,
                &inner.preprocess,
                &inner.opts.decode,
            ));
        });
        let tensor = tensor.await.map_err(|_| {
            EmbedError::new(ErrorKind::NotReady, "the decoding threads have stopped")
        })?;
        crate::metrics::stage_seconds("preprocess", "image", started.elapsed());
        tensor
    }
}

fn enqueue<P>(
    queue: &Queue<P>,
    payload: P,
    deadline: Instant,
) -> Result<oneshot::Receiver<Result<Vec<f32>, EmbedError>>, EmbedError> {
    let (reply, rx) = oneshot::channel();
    queue.push(Job {
        payload,
        reply,
        deadline,
        enqueued: Instant::now(),
    })?;
    Ok(rx)
}
