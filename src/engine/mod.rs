//! The embedding engine: the one API every caller (HTTP dialects, CLI) uses.
//!
//! [`Engine::embed`] takes the items of one batch of files and returns one result per item, in
//! order (a bad file fails only itself); [`Engine::embed_request`] takes an HTTP request's
//! items, which succeed or fail together, so the first failure ends the request and drops its
//! remaining work. Images are decoded and preprocessed on a bounded blocking pool, texts are
//! tokenized inline; both then wait in their modality's queue (`batcher.rs`, in the ingest or
//! the priority lane) for a worker thread (`worker.rs`) that batches them with other callers'
//! inputs. The request's deadline is checked between inputs and between stages, so work that
//! can no longer be answered in time is not started.

mod batcher;
pub mod bundle;
mod claim;
mod cores;
mod decode_budget;
mod error;
pub mod format;
mod info;
mod input;
mod jpeg;
pub mod preprocess;
pub mod runtime;
mod shared_weights;
pub mod text;
pub(crate) mod worker;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::oneshot;

pub use batcher::Priority;
pub use bundle::Bundle;
pub use decode_budget::default_limit as default_decode_memory;
pub use error::{EmbedError, ErrorKind, InputError, RequestFailure};
pub use info::{MaxBatch, ModelInfo, ServerInfo, ServingLimits, Similarity};
pub use input::{Item, Modality, ModalityHint, UrlFetcher};
pub use preprocess::DecodeOptions;

use batcher::{Admission, Job, Queue, QueueConfig};
use bundle::Preprocess;
use claim::Claim;
use cores::Cores;
use decode_budget::DecodeBudget;
use text::{TextTokenizer, TokenizerSettings};
use worker::{BatchModel, Health, Lanes, TextModel, WorkerConfig};

/// Engine settings; every field has a CLI flag in `sightline serve`.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// ONNX Runtime intra-op threads for text, and for images in all lanes together.
    pub threads: usize,
    /// Image encoder sessions running side by side, sharing `threads`.
    pub image_lanes: usize,
    /// Each image lane holds its own prepacked copy of the weights instead of all sharing one
    /// (`shared_weights.rs`): faster model runs, +1 copy of the image weights per extra lane.
    pub per_lane_weights: bool,
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
    /// Priority (`?priority=search`) inputs admitted per modality, apart from `queue_capacity`.
    pub priority_capacity: usize,
    /// Most priority batches run in a row while ingest inputs wait; then one ingest batch runs.
    pub priority_burst: usize,
    /// Largest image batch of ingest inputs for a few seconds after a search: a search waits
    /// for the batch a lane is running, so this bounds its wait (`batcher.rs`).
    pub max_batch_beside_search: usize,
    /// L2-normalise vectors (needed for Elasticsearch's `dot_product`).
    pub normalize: bool,
    pub decode: DecodeOptions,
    /// Bytes of decoded pixels held at once across all images (`decode_budget.rs`).
    pub decode_memory: u64,
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
            per_lane_weights: false,
            decode_workers: cores,
            max_batch_image: 8,
            max_batch_text: 32,
            batch_wait: Duration::from_millis(2),
            text_batch_wait: Duration::ZERO,
            queue_capacity: 2048,
            // Queries come one input at a time (`query_vector_builder`, `search`): 64 is many
            // users searching at once, and bounds the lane's memory (64 image tensors, 38 MB).
            priority_capacity: 64,
            // Searches are rare beside a bulk ingest; under a flood of them ingest still gets
            // one batch in five.
            priority_burst: 4,
            // A batch of 2 runs in a quarter of the time of 8 at nearly the same images/s on a
            // CPU (README, "search during ingest").
            max_batch_beside_search: 2,
            normalize: true,
            decode: DecodeOptions::default(),
            decode_memory: decode_budget::default_limit(),
            request_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(30),
            url_fetcher: None,
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
    /// `info.name`, shared by every input's [`Claim`].
    model_name: Arc<str>,
    opts: EngineOptions,
    preprocess: Preprocess,
    tokenizer: TextTokenizer,
    /// `decode_workers` low-priority threads for image decoding and preprocessing.
    decoders: rayon::ThreadPool,
    /// One thread at normal priority for images on the search lane, so a query's image is never
    /// decoded after the ingest images queued before it (issue 11 §4); the search lane's own
    /// admission bounds what it holds.
    search_decoders: rayon::ThreadPool,
    decode_budget: DecodeBudget,
    /// One token per ONNX Runtime thread, for ingest decoding and image batches (`cores.rs`).
    cores: Arc<Cores>,
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
        let tokenizer = TextTokenizer::load(&bundle.path(&m.tokenizer), TokenizerSettings::of(m))?;
        let mut text_model = TextModel::open(&bundle, opts.threads)?;
        // A probe through the encoder: a manifest whose `dimensions` do not match the graph
        // fails here, at start, rather than failing every batch with a 500 (issue 6, F4).
        let probe = tokenizer.tokenize("probe")?;
        let probed = text_model.run(&[&probe.ids]).context(
            "the text encoder failed its start-up probe (check `dimensions` in sightline.json)",
        )?;
        if m.outputs_normalized {
            let norm = probed[0]
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            anyhow::ensure!(
                (norm - 1.0).abs() < 1e-3,
                "`outputs_normalized` is true in sightline.json, but the text encoder's probe \
                 vector has length {norm:.4}"
            );
        }
        // Unit-length either way: the workers normalise, or the graphs already did.
        let normalized = opts.normalize || m.outputs_normalized;
        let info = ModelInfo {
            name: m.name.clone(),
            dimensions: m.dimensions,
            normalized,
            similarity: Similarity::for_vectors(normalized),
            modalities: [Modality::Image, Modality::Text]
                .map(|modality| modality.label().to_owned())
                .to_vec(),
            max_seq_len: m.max_seq_len,
            serving: None,
            fingerprint: bundle.fingerprint()?,
        };
        let lanes = Lanes::split(opts.threads, opts.image_lanes, opts.per_lane_weights);
        let queue = |modality: Modality, workers, beside_search| QueueConfig {
            modality: modality.label(),
            capacity: opts.queue_capacity,
            priority_capacity: opts.priority_capacity,
            burst: opts.priority_burst,
            beside_search,
            workers,
        };
        let (images, image_rx) = Queue::new(queue(
            Modality::Image,
            lanes.lanes,
            opts.max_batch_beside_search,
        ));
        // Text batches run in milliseconds: a search never waits long behind one.
        let (texts, text_rx) = Queue::new(queue(Modality::Text, 1, opts.max_batch_text));
        let text_health = Health::new();
        let config = |modality, max_batch: usize, batch_wait| WorkerConfig {
            modality,
            model: m.name.clone(),
            max_batch: max_batch.max(1),
            batch_wait,
            normalize: opts.normalize,
            cores: None,
        };
        let cores = Cores::new(opts.threads);
        let image_cfg = WorkerConfig {
            cores: Some((cores.clone(), lanes.threads)),
            ..config(Modality::Image, opts.max_batch_image, opts.batch_wait)
        };
        let text_cfg = config(Modality::Text, opts.max_batch_text, opts.text_batch_wait);
        let image_health = worker::start_image_workers(&bundle, lanes, image_rx, image_cfg)?;
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
        let search_decoders = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "sightline-decode-search".to_owned())
            .panic_handler(|_| tracing::error!("an image decoding task panicked"))
            .build()
            .context("cannot start the search image decoding thread")?;
        let health = text_health.clone();
        std::thread::Builder::new()
            .name("sightline-text".into())
            .spawn(move || worker::run(text_model, &Mutex::new(text_rx), &text_cfg, &health))
            .context("cannot start the text worker thread")?;
        Ok(Engine {
            inner: Arc::new(Inner {
                model_name: Arc::from(info.name.as_str()),
                info,
                preprocess: m.preprocess.clone(),
                tokenizer,
                decoders,
                search_decoders,
                decode_budget: DecodeBudget::new(opts.decode_memory),
                cores,
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

    /// Feeds `modality`'s rate estimator as if a batch of `inputs` had just run in `elapsed`:
    /// puts admission (`batcher::Queue::admit`) in a known state without timing real batches.
    #[doc(hidden)]
    pub fn observe_batch(&self, modality: Modality, inputs: usize, elapsed: Duration) {
        match modality {
            Modality::Image => self.inner.images.record(inputs, elapsed),
            Modality::Text => self.inner.texts.record(inputs, elapsed),
        }
    }

    /// Embeds a batch of separate items (files of `sightline embed`, `ingest --embed-locally`):
    /// one result per item, in order, so one bad input fails only itself. `Err` means the items
    /// as a whole were not taken and nothing ran: the queue is full (overloaded), or they alone
    /// hold more inputs than the queue can.
    pub async fn embed(
        &self,
        items: Vec<Item>,
    ) -> Result<Vec<Result<Embedding, EmbedError>>, EmbedError> {
        let ticket = Ticket {
            deadline: Instant::now() + self.inner.opts.request_timeout,
            priority: Priority::Ingest,
            failed: None,
        };
        let _admissions = self.admit(&items, Priority::Ingest)?;
        let results: Vec<_> = futures::stream::iter(self.claimed(items))
            .map(|(item, claim)| self.embed_one(item, claim, &ticket))
            .buffered(self.lookahead())
            .collect()
            .await;
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            crate::metrics::input_error(e.kind.label(), &self.inner.info.name);
        }
        Ok(results)
    }

    /// Embeds one HTTP request's items in `priority`'s lane: all vectors, in order, or the
    /// failure that ended the request. A request fails whole (every dialect answers one status),
    /// so the first input found failing ends it at once: its other inputs still being decoded
    /// or queued are dropped, and any not yet started never start. Dropping the returned
    /// future (the client hung up) drops the same work.
    pub async fn embed_request(
        &self,
        items: Vec<Item>,
        priority: Priority,
    ) -> Result<Vec<Embedding>, RequestFailure> {
        let failed = Arc::new(AtomicBool::new(false));
        let ticket = Ticket {
            deadline: Instant::now() + self.inner.opts.request_timeout,
            priority,
            failed: Some(failed.clone()),
        };
        let _admissions = self
            .admit(&items, priority)
            .map_err(RequestFailure::Refused)?;
        let mut slots: Vec<Option<Embedding>> = vec![None; items.len()];
        // Unordered, so a failure is seen as soon as it happens, not after every input before it.
        let mut results = futures::stream::iter(self.claimed(items).enumerate())
            .map(|(index, (item, claim))| {
                let ticket = &ticket;
                async move { (index, self.embed_one(item, claim, ticket).await) }
            })
            .buffer_unordered(self.lookahead());
        while let Some((index, result)) = results.next().await {
            match result {
                Ok(embedding) => slots[index] = Some(embedding),
                Err(e) => {
                    failed.store(true, Ordering::Release);
                    crate::metrics::input_error(e.kind.label(), &self.inner.info.name);
                    return Err(RequestFailure::Input(e.at(index)));
                }
            }
        }
        RequestFailure::all_answered(slots)
    }

    /// Admits `items` to both modalities' queues in `priority`'s lane, or says why not.
    fn admit(
        &self,
        items: &[Item],
        priority: Priority,
    ) -> Result<(Admission, Admission), EmbedError> {
        let budget = self.inner.opts.request_timeout;
        let n_images = items.iter().filter(|i| !matches!(i, Item::Text(_))).count();
        let admitted = self
            .inner
            .images
            .admit(n_images, priority, budget)
            .and_then(|a| {
                let texts = self
                    .inner
                    .texts
                    .admit(items.len() - n_images, priority, budget)?;
                Ok((a, texts))
            });
        if let Err(e) = &admitted {
            crate::metrics::input_error(e.kind.label(), &self.inner.info.name);
        }
        admitted
    }

    /// Items of one request in flight at once. Only a few are decoded ahead of the model, so a
    /// request with hundreds of images never holds hundreds of decoded tensors at once.
    fn lookahead(&self) -> usize {
        let opts = &self.inner.opts;
        (2 * opts.max_batch_image.max(opts.decode_workers)).max(1)
    }

    /// Each item with its [`Claim`], made before any work, so an input never started is
    /// counted as dropped too.
    fn claimed(&self, items: Vec<Item>) -> impl Iterator<Item = (Item, Claim)> + use<> {
        let name = self.inner.model_name.clone();
        items.into_iter().map(move |item| {
            let modality = match item {
                Item::Text(_) => Modality::Text,
                Item::Image(_) | Item::Url(_) => Modality::Image,
            };
            (item, Claim::new(modality, name.clone()))
        })
    }

    async fn embed_one(
        &self,
        item: Item,
        claim: Claim,
        ticket: &Ticket,
    ) -> Result<Embedding, EmbedError> {
        let result = self.embed_claimed(item, &claim, ticket).await;
        // Answered, with its vector or its own error: not a dropped input.
        claim.take();
        result
    }

    async fn embed_claimed(
        &self,
        item: Item,
        claim: &Claim,
        ticket: &Ticket,
    ) -> Result<Embedding, EmbedError> {
        let inner = &self.inner;
        let (deadline, priority) = (ticket.deadline, ticket.priority);
        // Between inputs: one that starts after the deadline is not worked on at all.
        check_deadline(deadline)?;
        let (modality, truncated, tokens, reply) = match item {
            Item::Text(text) => {
                let started = Instant::now();
                let tokens = self.tokenize(text).await?;
                crate::metrics::stage_seconds(
                    "tokenize",
                    "text",
                    &inner.info.name,
                    started.elapsed(),
                );
                let n = tokens.ids.len();
                let reply = enqueue(&inner.texts, tokens.ids, deadline, priority)?;
                // Queued: the batcher counts it if it is dropped from there.
                claim.take();
                (Modality::Text, tokens.truncated, n, reply)
            }
            Item::Image(bytes) => (
                Modality::Image,
                false,
                0,
                self.image(bytes, claim, ticket).await?,
            ),
            Item::Url(url) => {
                let bytes = self.fetch(&url, deadline).await?;
                (
                    Modality::Image,
                    false,
                    0,
                    self.image(bytes, claim, ticket).await?,
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
        crate::metrics::stage_seconds("fetch", "image", &self.inner.info.name, started.elapsed());
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

    /// Decodes and queues one image. An ingest image is marked on its way to the queue
    /// meanwhile, so a lane that would run a part batch waits for it (`Queue::coming`).
    async fn image(
        &self,
        bytes: Vec<u8>,
        claim: &Claim,
        ticket: &Ticket,
    ) -> Result<oneshot::Receiver<Result<Vec<f32>, EmbedError>>, EmbedError> {
        let images = &self.inner.images;
        let _coming = (ticket.priority == Priority::Ingest).then(|| images.coming());
        let tensor = self.preprocess(bytes, claim, ticket).await?;
        enqueue(images, tensor, ticket.deadline, ticket.priority)
    }

    /// Decodes and preprocesses on the decoding pool (`decode_workers` threads; search-lane
    /// images on their own thread), within the request's deadline.
    async fn preprocess(
        &self,
        bytes: Vec<u8>,
        claim: &Claim,
        ticket: &Ticket,
    ) -> Result<Vec<f32>, EmbedError> {
        let inner = &self.inner;
        // The header is read here, its decoded size reserved (waiting for room within the
        // deadline), and the reservation freed on the decoding thread once the frame is gone.
        let plan = preprocess::plan(&bytes, &inner.opts.decode, inner.preprocess.size)?;
        let reservation = inner.decode_budget.reserve(&plan, ticket.deadline).await?;
        let (reply, tensor) = oneshot::channel();
        let engine = self.clone();
        let started = Instant::now();
        let (deadline, failed, claim) = (ticket.deadline, ticket.failed.clone(), claim.clone());
        let priority = ticket.priority;
        let has_failed =
            |f: &Option<Arc<AtomicBool>>| f.as_ref().is_some_and(|f| f.load(Ordering::Acquire));
        let pool = match priority {
            Priority::Search => &inner.search_decoders,
            Priority::Ingest => &inner.decoders,
        };
        pool.spawn(move || {
            // A decoding thread may take the image long after it was submitted: by then its
            // request may have failed, lost its client or run out of time. Then it is skipped,
            // and dropping `claim` counts it unless the call already did.
            if reply.is_closed() || has_failed(&failed) || !claim.take() {
                return;
            }
            // Past the deadline, or (ingest) still without a core at it (`cores.rs`).
            let inner = &engine.inner;
            let core = match priority {
                Priority::Search => (Instant::now() < deadline).then_some(None),
                Priority::Ingest => inner.cores.for_decoding(deadline).map(Some),
            };
            let Some(token) = core else {
                crate::metrics::dropped("image", "timeout", &inner.info.name, 1);
                let _ = reply.send(Err(batcher::timeout_error()));
                return;
            };
            let tensor = preprocess::preprocess(&bytes, &inner.preprocess, &inner.opts.decode);
            drop(token);
            drop(reservation);
            // Marked here, on the decoding thread, so the request's next image is skipped even
            // if this thread takes it before the request has seen this failure.
            if let (Err(_), Some(failed)) = (&tensor, &failed) {
                failed.store(true, Ordering::Release);
            }
            let _ = reply.send(tensor);
        });
        let tensor = tokio::time::timeout_at(deadline.into(), tensor)
            .await
            .map_err(|_| batcher::timeout_error())?
            .map_err(|_| {
                EmbedError::new(ErrorKind::NotReady, "the decoding threads have stopped")
            })?;
        crate::metrics::stage_seconds(
            "preprocess",
            "image",
            &self.inner.info.name,
            started.elapsed(),
        );
        tensor
    }
}

/// What the inputs of one call share.
struct Ticket {
    deadline: Instant,
    priority: Priority,
    /// Set by the first input that fails, where the inputs succeed or fail together
    /// (`embed_request`); `None` where each input stands alone (`embed`).
    failed: Option<Arc<AtomicBool>>,
}

/// A timeout once `deadline` has passed.
fn check_deadline(deadline: Instant) -> Result<(), EmbedError> {
    if Instant::now() >= deadline {
        return Err(batcher::timeout_error());
    }
    Ok(())
}

/// Queues one prepared input, unless its deadline passed while it was being prepared.
fn enqueue<P>(
    queue: &Queue<P>,
    payload: P,
    deadline: Instant,
    priority: Priority,
) -> Result<oneshot::Receiver<Result<Vec<f32>, EmbedError>>, EmbedError> {
    check_deadline(deadline)?;
    let (reply, rx) = oneshot::channel();
    queue.push(
        Job {
            payload,
            reply,
            deadline,
            enqueued: Instant::now(),
        },
        priority,
    )?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip")
    }

    #[tokio::test]
    async fn a_search_image_is_decoded_while_the_ingest_decoders_are_busy() {
        let options = EngineOptions {
            threads: 1,
            decode_workers: 1,
            ..EngineOptions::default()
        };
        let engine = Engine::start(&fixture(), options).expect("the tiny fixture");
        // The one ingest decoding thread is held until the end of the test (or 60 s).
        let (release, held) = mpsc::channel::<()>();
        engine.inner.decoders.spawn(move || {
            let _ = held.recv_timeout(Duration::from_secs(60));
        });
        let image = std::fs::read(fixture().join("../images/landscape.jpg")).unwrap();
        let search = engine.embed_request(vec![Item::Image(image.clone())], Priority::Search);
        let vectors = tokio::time::timeout(Duration::from_secs(30), search)
            .await
            .expect("the search image waited for the ingest decoders")
            .expect("a vector");
        assert_eq!(vectors.len(), 1);
        // An ingest image does wait for its pool: still pending while the thread is held.
        let ingest = engine.embed_request(vec![Item::Image(image)], Priority::Ingest);
        tokio::pin!(ingest);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut ingest)
                .await
                .is_err(),
            "the ingest image skipped its queue"
        );
        release.send(()).unwrap();
        let done = tokio::time::timeout(Duration::from_secs(30), ingest)
            .await
            .expect("the ingest image after the release")
            .expect("a vector");
        assert_eq!(done[0].vector, vectors[0].vector);
    }
}
