//! The batching queue, one per modality: admission control (a bounded number of items may be
//! pending, beyond that callers get "overloaded" at once), batch assembly (up to `max_batch`
//! items, waiting at most `batch_wait` for more), and triage of jobs whose caller has gone or
//! whose deadline passed, so they never reach the model.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::{EmbedError, ErrorKind};

/// One input waiting for the model.
pub(crate) struct Job<P> {
    pub payload: P,
    pub reply: oneshot::Sender<Result<Vec<f32>, EmbedError>>,
    pub deadline: Instant,
    pub enqueued: Instant,
}

/// Sending side of a modality's queue, shared by all callers.
pub(crate) struct Queue<P> {
    tx: Sender<Job<P>>,
    pending: Arc<AtomicUsize>,
    capacity: usize,
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

impl<P> Queue<P> {
    pub(super) fn new(capacity: usize) -> (Queue<P>, Receiver<Job<P>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let queue = Queue {
            tx,
            pending: Arc::new(AtomicUsize::new(0)),
            capacity,
        };
        (queue, rx)
    }

    /// Reserves room for `n` items, all or nothing, so a request is never half-admitted.
    /// A request larger than the whole queue could never be admitted: that is the client's
    /// error (400), not overload (429, which ES would retry in vain).
    pub(super) fn admit(&self, n: usize) -> Result<Admission, EmbedError> {
        if n > self.capacity {
            return Err(EmbedError::bad_input(format!(
                "{n} inputs of one modality in one request, over the queue capacity of {} (`--queue-capacity`); send fewer per request",
                self.capacity
            )));
        }
        let admitted = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p + n <= self.capacity).then_some(p + n)
            });
        match admitted {
            Ok(_) => Ok(Admission {
                pending: self.pending.clone(),
                n,
            }),
            Err(pending) => Err(EmbedError::new(
                ErrorKind::Overloaded,
                format!(
                    "overloaded: {pending} inputs are queued and {n} more would exceed the queue capacity of {}; retry later",
                    self.capacity
                ),
            )),
        }
    }

    /// Items admitted and not yet answered.
    pub(super) fn depth(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    pub(super) fn push(&self, job: Job<P>) -> Result<(), EmbedError> {
        self.tx
            .send(job)
            .map_err(|_| EmbedError::new(ErrorKind::NotReady, "the inference worker has stopped"))
    }
}

/// Blocks for the first job, then gathers more until `max` jobs or `wait` has passed.
/// `None` once every sender is gone (shutdown).
pub(crate) fn collect<P>(rx: &Receiver<Job<P>>, max: usize, wait: Duration) -> Option<Vec<Job<P>>> {
    let first = rx.recv().ok()?;
    let until = Instant::now() + wait;
    let mut batch = vec![first];
    while batch.len() < max {
        // Whatever is already queued joins without waiting.
        match rx.try_recv() {
            Ok(job) => {
                batch.push(job);
                continue;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(batch)
}

/// A gathered batch, sorted by what to do with each job.
pub(crate) struct Triage<P> {
    /// Worth running.
    pub live: Vec<Job<P>>,
    /// Past their deadline: answer with a timeout, do not run.
    pub expired: Vec<Job<P>>,
    /// Jobs whose caller disconnected, dropped: nobody would read their vector.
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

    fn job(
        id: u32,
        deadline: Instant,
    ) -> (Job<u32>, oneshot::Receiver<Result<Vec<f32>, EmbedError>>) {
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

    #[test]
    fn admission_is_all_or_nothing_and_released_on_drop() {
        let (q, _rx) = Queue::<u32>::new(10);
        assert_eq!(q.admit(11).err().unwrap().kind, ErrorKind::BadInput);
        let a = q.admit(6).unwrap();
        let e = q.admit(5).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert!(e.message.contains("6 inputs are queued"), "{}", e.message);
        assert_eq!(q.depth(), 6);
        let b = q.admit(4).unwrap();
        assert_eq!(q.depth(), 10);
        drop(a);
        drop(b);
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn collect_takes_what_is_queued_up_to_max_in_order() {
        let (q, rx) = Queue::<u32>::new(100);
        let far = Instant::now() + Duration::from_secs(60);
        let mut keep = Vec::new();
        for id in 0..5 {
            let (j, r) = job(id, far);
            keep.push(r);
            q.push(j).unwrap();
        }
        let batch = collect(&rx, 3, Duration::ZERO).unwrap();
        assert_eq!(
            batch.iter().map(|j| j.payload).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let batch = collect(&rx, 3, Duration::ZERO).unwrap();
        assert_eq!(batch.iter().map(|j| j.payload).collect::<Vec<_>>(), [3, 4]);
        drop(q);
        assert!(
            collect(&rx, 3, Duration::ZERO).is_none(),
            "closed queue ends the worker"
        );
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
}
