//! The batching queue, one per modality: admission control, two lanes, batch assembly, and
//! triage of jobs whose caller has gone or whose deadline passed, so they never reach the model.
//!
//! - Admission: a bounded number of inputs may be pending per lane, beyond that callers get
//!   "overloaded" at once; and once batches have run, an input is admitted only if the queue
//!   ahead of it is estimated to drain before the request's timeout (`Rate`), since a 429 now is
//!   worth more to Elasticsearch than a refusal after the whole timeout (issue 16 §5).
//! - Lanes: queries (`?priority=search`) wait in a lane of their own and are served before any
//!   queued ingest input, because Elasticsearch fails a search whose query vector takes over
//!   10 s (issue 11 §4). The lane is bounded twice, see [`Queue::new`] and [`State::take`].
//! - Assembly: up to `max_batch` jobs; an ingest batch waits at most `batch_wait` for company.
//!   While searches are recent, ingest batches are smaller (`beside_search`): a search arriving
//!   then waits for the ingest batch a worker is running, which cannot be interrupted, and a
//!   small batch ends soon.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::{EmbedError, ErrorKind};

/// Which lane a request's inputs wait in. Parsed from the `priority` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Bulk work (the ingest processor, `semantic_text`, backfills): the default.
    #[default]
    Ingest,
    /// A query someone is waiting for: served before any queued ingest input.
    Search,
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "search" => Ok(Priority::Search),
            "ingest" => Ok(Priority::Ingest),
            other => Err(format!(
                "unknown `priority` value `{other}`: use `priority=search` for queries, or leave it out (`ingest`)"
            )),
        }
    }
}

/// One input waiting for the model.
pub(crate) struct Job<P> {
    pub payload: P,
    pub reply: oneshot::Sender<Result<Vec<f32>, EmbedError>>,
    pub deadline: Instant,
    pub enqueued: Instant,
}

/// How many inputs one lane may hold, and how many it holds (admitted, not yet answered).
struct Pool {
    pending: Arc<AtomicUsize>,
    capacity: usize,
    /// The flag that sets `capacity`, for the message of a request that can never fit.
    flag: &'static str,
}

/// Seconds per input of the last batches, per worker: what admission estimates drain time from.
pub(crate) struct Rate {
    /// (inputs, seconds) of the last [`Rate::WINDOW`] batches.
    recent: Mutex<VecDeque<(usize, f64)>>,
}

impl Rate {
    /// Batches remembered: enough to smooth one odd batch out, few enough to follow a change
    /// of load (small query batches vs full ingest batches) within a second or two.
    const WINDOW: usize = 8;

    fn new() -> Rate {
        Rate {
            recent: Mutex::new(VecDeque::with_capacity(Self::WINDOW)),
        }
    }

    /// Records one batch run by one worker.
    pub(crate) fn record(&self, inputs: usize, elapsed: Duration) {
        if inputs == 0 {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == Self::WINDOW {
            recent.pop_front();
        }
        recent.push_back((inputs, elapsed.as_secs_f64()));
    }

    /// One worker's seconds per input over the last batches; `None` before any batch ran.
    fn seconds_per_input(&self) -> Option<f64> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let inputs: usize = recent.iter().map(|(n, _)| n).sum();
        let seconds: f64 = recent.iter().map(|(_, s)| s).sum();
        (inputs > 0).then(|| seconds / inputs as f64)
    }
}

/// Sending side of a modality's queue, shared by all callers.
pub(crate) struct Queue<P> {
    shared: Arc<Shared<P>>,
    modality: &'static str,
    ingest: Pool,
    search: Pool,
    rate: Arc<Rate>,
    /// Workers taking batches from this queue side by side (image lanes), for the drain rate.
    workers: usize,
}

/// Holds `n` admitted slots until dropped (when the caller has its answers or gave up).
pub(crate) struct Admission {
    pending: Arc<AtomicUsize>,
    n: usize,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.pending.fetch_sub(self.n, Ordering::AcqRel);
    }
}

struct Shared<P> {
    state: Mutex<State<P>>,
    /// Signalled on every push and on close.
    ready: Condvar,
}

impl<P> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, State<P>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct State<P> {
    search: VecDeque<Job<P>>,
    ingest: VecDeque<Job<P>>,
    /// When the last priority job was queued.
    last_search: Option<Instant>,
    /// Priority batches taken in a row while ingest inputs were waiting.
    streak: usize,
    /// Ingest inputs on their way to the queue (being decoded, [`Queue::coming`]).
    coming: usize,
    /// The sending side is gone: drain what is queued, then stop.
    closed: bool,
}

/// Receiving side, shared by the workers of one modality (behind their gathering lock).
pub(crate) struct Receiver<P> {
    shared: Arc<Shared<P>>,
    rate: Arc<Rate>,
    /// Most priority batches in a row while ingest inputs wait.
    burst: usize,
    /// Largest ingest batch while searches are recent.
    beside_search: usize,
}

/// Queue settings.
pub(crate) struct QueueConfig {
    pub modality: &'static str,
    /// Ingest inputs pending at once (`--queue-capacity`).
    pub capacity: usize,
    /// Priority inputs pending at once (`--priority-capacity`).
    pub priority_capacity: usize,
    /// Most priority batches in a row while ingest waits (`EngineOptions::priority_burst`).
    pub burst: usize,
    /// Largest ingest batch while searches are recent (`EngineOptions::max_batch_beside_search`).
    pub beside_search: usize,
    /// Workers serving the queue side by side.
    pub workers: usize,
}

impl<P> Queue<P> {
    /// Priority inputs are admitted against a small capacity of their own rather than the
    /// ingest one: a full ingest queue is exactly when a search must still get in, and a flood
    /// of "search" requests can then hold at most `priority_capacity` inputs in memory.
    pub(super) fn new(cfg: QueueConfig) -> (Queue<P>, Receiver<P>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                search: VecDeque::new(),
                ingest: VecDeque::new(),
                last_search: None,
                streak: 0,
                coming: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let rate = Arc::new(Rate::new());
        let pool = |capacity, flag| Pool {
            pending: Arc::new(AtomicUsize::new(0)),
            capacity,
            flag,
        };
        let queue = Queue {
            shared: shared.clone(),
            modality: cfg.modality,
            ingest: pool(cfg.capacity, "--queue-capacity"),
            search: pool(cfg.priority_capacity, "--priority-capacity"),
            rate: rate.clone(),
            workers: cfg.workers.max(1),
        };
        let rx = Receiver {
            shared,
            rate,
            burst: cfg.burst.max(1),
            beside_search: cfg.beside_search.max(1),
        };
        (queue, rx)
    }

    fn pool(&self, priority: Priority) -> &Pool {
        match priority {
            Priority::Ingest => &self.ingest,
            Priority::Search => &self.search,
        }
    }

    /// Reserves room for `n` inputs in `priority`'s lane, all or nothing, so a request is never
    /// half-admitted. A request larger than the whole lane could never be admitted: that is the
    /// client's error (400), not overload (429, which ES would retry in vain). Once batches have
    /// run, a request whose last input would not be reached within `budget` (the request
    /// timeout) at the measured rate is refused too, with the estimate as its retry delay.
    pub(super) fn admit(
        &self,
        n: usize,
        priority: Priority,
        budget: Duration,
    ) -> Result<Admission, EmbedError> {
        let pool = self.pool(priority);
        if n > pool.capacity {
            let lane = match priority {
                Priority::Ingest => "",
                Priority::Search => " with `priority=search`",
            };
            return Err(EmbedError::bad_input(format!(
                "{n} inputs of one modality in one request{lane}, over the queue capacity of {} (`{}`); send fewer per request",
                pool.capacity, pool.flag
            )));
        }
        if n == 0 {
            return Ok(Admission {
                pending: pool.pending.clone(),
                n,
            });
        }
        let per_input = self.rate.seconds_per_input();
        // Priority inputs overtake every ingest input, so only their own lane is ahead of them.
        let overtaken = match priority {
            Priority::Ingest => self.search.pending.load(Ordering::Acquire),
            Priority::Search => 0,
        };
        let mut refusal = None;
        let admitted = pool
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                if p + n > pool.capacity {
                    refusal = Some(self.full(p, n, pool));
                    return None;
                }
                if let Some(per_input) = per_input {
                    let ahead = overtaken + p + n;
                    let drain = ahead as f64 * per_input / self.workers as f64;
                    if drain > budget.as_secs_f64() {
                        refusal = Some(self.too_slow(ahead, per_input, drain, budget));
                        return None;
                    }
                }
                Some(p + n)
            });
        match admitted {
            Ok(_) => Ok(Admission {
                pending: pool.pending.clone(),
                n,
            }),
            Err(_) => Err(refusal.expect("fetch_update fails only through a refusal")),
        }
    }

    fn full(&self, pending: usize, n: usize, pool: &Pool) -> EmbedError {
        EmbedError::new(
            ErrorKind::Overloaded,
            format!(
                "overloaded: {pending} inputs are queued and {n} more would exceed the queue capacity of {}; retry later",
                pool.capacity
            ),
        )
    }

    /// Retry once the excess over the budget has drained, at least a second from now.
    fn too_slow(&self, ahead: usize, per_input: f64, drain: f64, budget: Duration) -> EmbedError {
        let rate = self.workers as f64 / per_input;
        let excess = (drain - budget.as_secs_f64()).ceil().max(1.0);
        EmbedError::new(
            ErrorKind::Overloaded,
            format!(
                "overloaded: {ahead} {} inputs would take about {drain:.1} s to drain at the measured {rate:.1} inputs/s, longer than the request timeout of {:.1} s (`--request-timeout`); retry later",
                self.modality,
                budget.as_secs_f64()
            ),
        )
        .retry_after(Duration::from_secs_f64(excess))
    }

    /// Inputs admitted and not yet answered, both lanes.
    pub(super) fn depth(&self) -> usize {
        self.ingest.pending.load(Ordering::Acquire) + self.search.pending.load(Ordering::Acquire)
    }

    /// Feeds the rate estimator as a worker does after each batch.
    pub(super) fn record(&self, inputs: usize, elapsed: Duration) {
        self.rate.record(inputs, elapsed);
    }

    /// Marks an ingest input on its way to this queue until the mark is dropped (after its push,
    /// or when it failed). While inputs are on their way, a worker holds its ingest batch for
    /// them, up to [`FILL_WAIT`]: decoding them takes the core that worker leaves free, so the
    /// wait costs nothing, and a full batch runs faster per input than two half ones.
    pub(super) fn coming(&self) -> Coming<P> {
        self.shared.lock().coming += 1;
        Coming {
            shared: self.shared.clone(),
        }
    }

    pub(super) fn push(&self, job: Job<P>, priority: Priority) -> Result<(), EmbedError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(EmbedError::new(
                ErrorKind::NotReady,
                "the inference worker has stopped",
            ));
        }
        match priority {
            Priority::Ingest => state.ingest.push_back(job),
            Priority::Search => {
                state.last_search = Some(job.enqueued);
                state.search.push_back(job);
            }
        }
        drop(state);
        self.shared.ready.notify_all();
        Ok(())
    }
}

/// An ingest input on its way to the queue ([`Queue::coming`]).
pub(crate) struct Coming<P> {
    shared: Arc<Shared<P>>,
}

impl<P> Drop for Coming<P> {
    fn drop(&mut self) {
        self.shared.lock().coming -= 1;
        self.shared.ready.notify_all();
    }
}

impl<P> Drop for Queue<P> {
    /// The engine is gone: workers finish what is queued, then stop.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

impl<P> Receiver<P> {
    /// The estimator this queue's workers feed.
    pub(crate) fn rate(&self) -> Arc<Rate> {
        self.rate.clone()
    }
}

impl<P> State<P> {
    fn is_empty(&self) -> bool {
        self.search.is_empty() && self.ingest.is_empty()
    }

    /// The largest ingest batch now: `beside_search` within [`SEARCH_RECENT`] of a search.
    fn ingest_max(&self, max: usize, beside_search: usize, now: Instant) -> usize {
        match self.last_search {
            Some(at) if now.saturating_duration_since(at) < SEARCH_RECENT => max.min(beside_search),
            _ => max,
        }
    }

    /// The next batch, if one is due. A priority batch is due as soon as it has one input and
    /// never waits for company (a search is waiting; queries arriving meanwhile form the next
    /// batch), and it holds priority inputs only, so its run is as short as it can be. An ingest
    /// batch is due once full, once `due` (its wait is over, or the queue closed), or when it
    /// is owed its turn: after `burst` priority batches in a row while ingest inputs waited,
    /// one ingest batch runs, so a flood of searches slows ingest to at least 1/(burst + 1) of
    /// the batches but never starves it, and the searches of that flood wait at most one
    /// ingest batch in every `burst + 1`.
    fn take(
        &mut self,
        max: usize,
        ingest_max: usize,
        due: bool,
        burst: usize,
    ) -> Option<Vec<Job<P>>> {
        let ingest_waits = !self.ingest.is_empty();
        let ingest_owed = ingest_waits && self.streak >= burst;
        if !self.search.is_empty() && !ingest_owed {
            self.streak = if ingest_waits { self.streak + 1 } else { 0 };
            let n = self.search.len().min(max);
            return Some(self.search.drain(..n).collect());
        }
        if ingest_waits && (due || ingest_owed || self.ingest.len() >= ingest_max) {
            self.streak = 0;
            let n = self.ingest.len().min(ingest_max);
            return Some(self.ingest.drain(..n).collect());
        }
        None
    }
}

/// How long after a search ingest batches stay small: a user's next query usually follows
/// within seconds, and the small batches cost ingest little (README, "search during ingest").
const SEARCH_RECENT: Duration = Duration::from_secs(10);

/// The longest a worker holds an ingest batch for inputs still on their way: at most one full
/// batch's run at the measured rate, never more than a second.
const FILL_WAIT: Duration = Duration::from_secs(1);

/// Blocks for the first job, then returns the next due batch (`State::take`): an ingest batch
/// gathers up to `max` jobs or until `wait` has passed and no more inputs are on their way
/// ([`Queue::coming`]; for those it waits up to one full batch's run, at most [`FILL_WAIT`]).
/// `None` once the queue is closed and drained (shutdown).
pub(crate) fn collect<P>(rx: &Receiver<P>, max: usize, wait: Duration) -> Option<Vec<Job<P>>> {
    let max = max.max(1);
    let mut state = rx.shared.lock();
    while state.is_empty() {
        if state.closed {
            return None;
        }
        state = rx
            .shared
            .ready
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner);
    }
    let start = Instant::now();
    let until = start + wait;
    let fill = rx.rate.seconds_per_input().map_or(FILL_WAIT, |s| {
        Duration::from_secs_f64(s * max as f64).min(FILL_WAIT)
    });
    let filled_until = until.max(start + fill);
    loop {
        let now = Instant::now();
        let waited = now >= until && (state.coming == 0 || now >= filled_until);
        let due = waited || state.closed;
        let ingest_max = state.ingest_max(max, rx.beside_search, now);
        if let Some(batch) = state.take(max, ingest_max, due, rx.burst) {
            return Some(batch);
        }
        let next = if now < until { until } else { filled_until };
        state = rx
            .shared
            .ready
            .wait_timeout(state, next.saturating_duration_since(now))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// A gathered batch, sorted by what to do with each job.
pub(crate) struct Triage<P> {
    /// Worth running.
    pub live: Vec<Job<P>>,
    /// Past their deadline: answer with a timeout, do not run.
    pub expired: Vec<Job<P>>,
    /// Jobs whose caller disconnected or whose request already failed, dropped: nobody would
    /// read their vector.
    pub abandoned: usize,
}

pub(crate) fn triage<P>(jobs: Vec<Job<P>>, now: Instant) -> Triage<P> {
    // Deadline first: a caller stops waiting at its own deadline (`Engine::embed_one`), so an
    // expired job's reply is usually closed as well, and that is a timeout, not a disconnect.
    let (expired, pending): (Vec<_>, Vec<_>) =
        jobs.into_iter().partition(|job| job.deadline <= now);
    let waiting = pending.len();
    let live: Vec<_> = pending
        .into_iter()
        .filter(|job| !job.reply.is_closed())
        .collect();
    let abandoned = waiting - live.len();
    Triage {
        live,
        expired,
        abandoned,
    }
}

pub(crate) fn timeout_error() -> EmbedError {
    EmbedError::new(
        ErrorKind::Timeout,
        "the request timed out before this input reached the model (`--request-timeout`)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    type Reply = oneshot::Receiver<Result<Vec<f32>, EmbedError>>;

    const LONG: Duration = Duration::from_secs(60);

    fn job(id: u32, deadline: Instant) -> (Job<u32>, Reply) {
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        (
            Job {
                payload: id,
                reply,
                deadline,
                enqueued: now,
            },
            rx,
        )
    }

    fn queue(
        capacity: usize,
        priority_capacity: usize,
        burst: usize,
    ) -> (Queue<u32>, Receiver<u32>) {
        Queue::new(QueueConfig {
            modality: "image",
            capacity,
            priority_capacity,
            burst,
            // Larger than any batch here: only the test of `beside_search` sees it.
            beside_search: 100,
            workers: 1,
        })
    }

    /// Pushes jobs `ids` in `priority`'s lane; the replies are kept open in `keep`.
    fn push(q: &Queue<u32>, ids: std::ops::Range<u32>, priority: Priority, keep: &mut Vec<Reply>) {
        for id in ids {
            let (j, r) = job(id, Instant::now() + LONG);
            keep.push(r);
            q.push(j, priority).unwrap();
        }
    }

    fn ids(batch: Option<Vec<Job<u32>>>) -> Vec<u32> {
        batch.unwrap().iter().map(|j| j.payload).collect()
    }

    #[test]
    fn admission_is_all_or_nothing_and_released_on_drop() {
        let (q, _rx) = queue(10, 2, 4);
        assert_eq!(
            q.admit(11, Priority::Ingest, LONG).err().unwrap().kind,
            ErrorKind::BadInput
        );
        let a = q.admit(6, Priority::Ingest, LONG).unwrap();
        let e = q.admit(5, Priority::Ingest, LONG).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert!(e.message.contains("6 inputs are queued"), "{}", e.message);
        assert_eq!(e.retry_after, None, "the status table's default applies");
        assert_eq!(q.depth(), 6);
        let b = q.admit(4, Priority::Ingest, LONG).unwrap();
        assert_eq!(q.depth(), 10);
        drop(a);
        drop(b);
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn priority_inputs_have_a_small_capacity_of_their_own() {
        let (q, _rx) = queue(4, 2, 4);
        let _full = q.admit(4, Priority::Ingest, LONG).unwrap();
        // A full ingest queue does not keep a search out...
        let s = q.admit(2, Priority::Search, LONG).unwrap();
        assert_eq!(q.depth(), 6);
        // ...but the search lane is bounded too: a flood of searches holds at most 2 inputs.
        let e = q.admit(1, Priority::Search, LONG).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Overloaded);
        let e = q.admit(3, Priority::Search, LONG).err().unwrap();
        assert_eq!(e.kind, ErrorKind::BadInput);
        assert!(
            e.message.contains("priority=search") && e.message.contains("--priority-capacity"),
            "{}",
            e.message
        );
        drop(s);
        assert_eq!(q.depth(), 4);
    }

    #[test]
    fn admission_refuses_what_would_not_drain_before_the_timeout() {
        let (q, _rx) = queue(100, 10, 4);
        // No batch has run: admitted as far as capacity goes, whatever the timeout.
        let held = q
            .admit(8, Priority::Ingest, Duration::from_secs(1))
            .unwrap();
        // Measured: 0.5 s per input on the one worker (2 inputs/s).
        q.record(4, Duration::from_secs(2));
        let budget = Duration::from_secs(10);
        // 8 queued + 11 = 19 inputs: 9.5 s, within the budget.
        let more = q.admit(11, Priority::Ingest, budget).unwrap();
        // 19 queued + 4: 11.5 s, over it: refused now, retry when 1.5 s have drained (→ 2 s).
        let e = q.admit(4, Priority::Ingest, budget).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
        assert!(
            e.message.contains("23 image inputs") && e.message.contains("--request-timeout"),
            "{}",
            e.message
        );
        // A priority input overtakes the ingest backlog: only its own lane is ahead of it.
        let s = q.admit(1, Priority::Search, budget).unwrap();
        // An ingest input waits behind the priority one too: 19 + 1 + 1 = 10.5 s is refused...
        assert_eq!(
            q.admit(1, Priority::Ingest, budget).err().unwrap().kind,
            ErrorKind::Overloaded
        );
        // ...and 19 + 1 = 10 s is admitted once the priority input is answered.
        drop(s);
        let last = q.admit(1, Priority::Ingest, budget).unwrap();
        drop((held, more, last));
        // Two workers drain twice as fast: 36 inputs at 0.25 s each = 9 s.
        let (q2, _rx2) = Queue::<u32>::new(QueueConfig {
            modality: "image",
            capacity: 100,
            priority_capacity: 10,
            burst: 4,
            beside_search: 100,
            workers: 2,
        });
        q2.record(4, Duration::from_secs(2));
        assert!(q2.admit(36, Priority::Ingest, budget).is_ok());
        // Requests without inputs of this modality are never refused by it.
        assert!(q.admit(0, Priority::Ingest, Duration::ZERO).is_ok());
    }

    #[test]
    fn rate_follows_the_last_batches() {
        let rate = Rate::new();
        assert_eq!(rate.seconds_per_input(), None);
        rate.record(0, Duration::from_secs(9));
        assert_eq!(
            rate.seconds_per_input(),
            None,
            "an empty batch says nothing"
        );
        for _ in 0..Rate::WINDOW {
            rate.record(10, Duration::from_secs(10));
        }
        assert_eq!(rate.seconds_per_input(), Some(1.0));
        // A full window later, the old batches are forgotten.
        for _ in 0..Rate::WINDOW {
            rate.record(4, Duration::from_secs(1));
        }
        assert_eq!(rate.seconds_per_input(), Some(0.25));
    }

    #[test]
    fn collect_takes_what_is_queued_up_to_max_in_order() {
        let (q, rx) = queue(100, 10, 4);
        let mut keep = Vec::new();
        push(&q, 0..5, Priority::Ingest, &mut keep);
        assert_eq!(ids(collect(&rx, 3, Duration::ZERO)), [0, 1, 2]);
        assert_eq!(ids(collect(&rx, 3, Duration::ZERO)), [3, 4]);
        drop(q);
        assert!(
            collect(&rx, 3, Duration::ZERO).is_none(),
            "closed queue ends the worker"
        );
    }

    #[test]
    fn an_ingest_batch_waits_for_inputs_still_on_their_way() {
        let (q, rx) = queue(100, 10, 4);
        let mut keep = Vec::new();
        // Two queued, two being decoded: the worker waits for them, not only `wait` (zero).
        let on_their_way = (q.coming(), q.coming());
        push(&q, 0..2, Priority::Ingest, &mut keep);
        let worker = std::thread::spawn(move || {
            let full = ids(collect(&rx, 4, Duration::ZERO));
            (full, rx)
        });
        push(&q, 2..4, Priority::Ingest, &mut keep);
        drop(on_their_way);
        let (full, rx) = worker.join().unwrap();
        assert_eq!(full, [0, 1, 2, 3]);

        // One more on its way that never arrives (its decoding failed): once its mark is
        // gone, the batch holds what is there.
        let failed = q.coming();
        push(&q, 4..5, Priority::Ingest, &mut keep);
        let worker = std::thread::spawn(move || (ids(collect(&rx, 4, Duration::ZERO)), rx));
        drop(failed);
        let (partial, rx) = worker.join().unwrap();
        assert_eq!(partial, [4]);

        // The wait is one full batch at the measured rate: 4 × 1 ms here, so an input on its
        // way for longer does not hold the batch.
        q.record(1, Duration::from_millis(1));
        let _slow = q.coming();
        push(&q, 5..6, Priority::Ingest, &mut keep);
        assert_eq!(ids(collect(&rx, 4, Duration::ZERO)), [5]);
    }

    #[test]
    fn a_closed_queue_still_hands_out_what_it_holds() {
        let (q, rx) = queue(100, 10, 4);
        let mut keep = Vec::new();
        push(&q, 0..2, Priority::Ingest, &mut keep);
        drop(q);
        // Not full and the wait is long, but the queue closed: the batch is due.
        assert_eq!(ids(collect(&rx, 8, LONG)), [0, 1]);
        assert!(collect(&rx, 8, LONG).is_none());
    }

    #[test]
    fn priority_inputs_go_first_without_waiting_for_company() {
        let (q, rx) = queue(100, 10, 4);
        let mut keep = Vec::new();
        push(&q, 0..3, Priority::Ingest, &mut keep);
        push(&q, 100..102, Priority::Search, &mut keep);
        // The ingest batch would wait a minute for a fifth input; the priority one runs now,
        // alone with its own lane.
        assert_eq!(ids(collect(&rx, 5, LONG)), [100, 101]);
        push(&q, 3..5, Priority::Ingest, &mut keep);
        assert_eq!(ids(collect(&rx, 5, LONG)), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn ingest_batches_are_small_while_searches_are_recent() {
        let (q, rx) = Queue::new(QueueConfig {
            modality: "image",
            capacity: 100,
            priority_capacity: 10,
            burst: 4,
            beside_search: 2,
            workers: 1,
        });
        let mut keep = Vec::new();
        push(&q, 0..6, Priority::Ingest, &mut keep);
        assert_eq!(ids(collect(&rx, 8, Duration::ZERO)), [0, 1, 2, 3, 4, 5]);
        push(&q, 100..101, Priority::Search, &mut keep);
        assert_eq!(ids(collect(&rx, 8, LONG)), [100]);
        // Two make a full batch now: it runs at once, without its minute of waiting.
        push(&q, 6..14, Priority::Ingest, &mut keep);
        assert_eq!(ids(collect(&rx, 8, LONG)), [6, 7]);
        assert_eq!(ids(collect(&rx, 8, LONG)), [8, 9]);
        // Once the search is no longer recent, batches are full size again.
        let state = q.shared.lock();
        let searched = state.last_search.expect("the search was recorded");
        assert_eq!(state.ingest_max(8, 2, searched + SEARCH_RECENT / 2), 2);
        assert_eq!(state.ingest_max(8, 2, searched + SEARCH_RECENT), 8);
    }

    #[test]
    fn a_flood_of_priority_inputs_cannot_starve_ingest() {
        let burst = 3;
        let (q, rx) = queue(100, 100, burst);
        let mut keep = Vec::new();
        push(&q, 0..4, Priority::Ingest, &mut keep);
        push(&q, 100..120, Priority::Search, &mut keep);
        // Batches of 2: three priority batches, then the ingest one owed (not full, but it
        // runs at once, without its minute of waiting), and so on.
        let mut lanes = String::new();
        for _ in 0..10 {
            let batch = ids(collect(&rx, 2, LONG));
            lanes.push(if batch[0] >= 100 { 'S' } else { 'I' });
        }
        assert_eq!(lanes, "SSSISSSISS");
        // With ingest drained, searches run back to back and the streak does not build up.
        let tail = ids(collect(&rx, 2, LONG));
        assert!(tail.iter().all(|id| *id >= 100), "{tail:?}");
        push(&q, 4..5, Priority::Ingest, &mut keep);
        push(&q, 200..202, Priority::Search, &mut keep);
        assert!(ids(collect(&rx, 2, LONG))[0] >= 100, "the streak restarted");
    }

    #[test]
    fn triage_drops_abandoned_jobs_and_splits_expired_ones() {
        let now = Instant::now();
        let (live, _r0) = job(0, now + Duration::from_secs(1));
        let (gone, r1) = job(1, now + Duration::from_secs(1));
        drop(r1);
        let (late, _r2) = job(2, now - Duration::from_millis(1));
        let t = triage(vec![live, gone, late], now);
        assert_eq!(t.live.iter().map(|j| j.payload).collect::<Vec<_>>(), [0]);
        assert_eq!(t.expired.iter().map(|j| j.payload).collect::<Vec<_>>(), [2]);
        assert_eq!(t.abandoned, 1);
    }

    #[test]
    fn priority_parameter_values() {
        assert_eq!("search".parse::<Priority>(), Ok(Priority::Search));
        assert_eq!("ingest".parse::<Priority>(), Ok(Priority::Ingest));
        let e = "urgent".parse::<Priority>().unwrap_err();
        assert!(e.contains("`urgent`"), "{e}");
    }
}
