//! The global budget for decoded pixel memory (`--decode-memory`). `--max-pixels` bounds one
//! image; this bounds all images being decoded at once (issue 16 §2: four legal 16-bit TIFFs
//! in one request peaked at 3.1 GB). Before an image is decoded it reserves what decoding it
//! will hold at its peak (`preprocess::plan`, from the header) and waits, in arrival order,
//! until that much is free; the reservation is released when its decoded frames are freed.
//! An image larger than the whole budget could never be decoded and is refused at once.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::EmbedError;
use super::preprocess::DecodePlan;

/// Permits are KiB: one acquisition takes at most `u32::MAX` permits, and 4 TiB is enough.
const UNIT: u64 = 1024;

/// Share of the memory limit given to decoding by default: the rest holds the model, the
/// queued tensors, request bodies and the allocator's slack.
const DEFAULT_SHARE: u64 = 4;

/// The default never goes below this: a 100 MP (the default `--max-pixels`) 8-bit RGB image
/// needs 300 MB, and smaller machines should still take ordinary photos.
const DEFAULT_FLOOR: u64 = 256 << 20;

/// The budget every decoding path of one engine shares.
#[derive(Debug)]
pub(crate) struct DecodeBudget {
    limit: u64,
    permits: Arc<Semaphore>,
}

/// Memory held for one image's decode; released on drop.
#[derive(Debug)]
pub(crate) struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl DecodeBudget {
    /// A budget of `limit` bytes (rounded down to whole KiB).
    pub(crate) fn new(limit: u64) -> Self {
        let units = usize::try_from(limit / UNIT).unwrap_or(usize::MAX);
        DecodeBudget {
            limit,
            permits: Arc::new(Semaphore::new(units.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Waits until `plan`'s peak fits next to the images already decoding, at most until
    /// `deadline` (then the request's timeout). Waiters are served in arrival order, so a large
    /// image is not starved by small ones. Dropping the future (the client hung up) leaves the
    /// queue.
    pub(crate) async fn reserve(
        &self,
        plan: &DecodePlan,
        deadline: Instant,
    ) -> Result<Reservation, EmbedError> {
        let bytes = plan.peak_bytes();
        let units = bytes.div_ceil(UNIT);
        let fits = units <= self.limit / UNIT;
        let (Ok(units), true) = (u32::try_from(units), fits) else {
            let frame = plan.frame_bytes();
            let working = if bytes > frame {
                format!(", {bytes} while decoding")
            } else {
                String::new()
            };
            return Err(EmbedError::bad_input(format!(
                "{plan} = {frame} bytes decoded{working}, more than the decode memory limit of \
                 {} bytes (`--decode-memory`)",
                self.limit
            )));
        };
        let acquire = self.permits.clone().acquire_many_owned(units);
        match tokio::time::timeout_at(deadline.into(), acquire).await {
            Ok(Ok(permit)) => Ok(Reservation { _permit: permit }),
            // The semaphore is never closed; a closed one would mean nothing decodes any more.
            Ok(Err(_)) => Err(EmbedError::new(
                super::ErrorKind::NotReady,
                "the decoding budget is closed",
            )),
            Err(_) => Err(super::batcher::timeout_error()),
        }
    }
}

/// The default `--decode-memory`: a quarter of the memory this process may use (the cgroup's
/// limit in a container, else the machine's), at least 256 MiB.
pub fn default_limit() -> u64 {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let total = read("/proc/meminfo").and_then(|m| mem_total(&m));
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|s| s.trim().parse::<u64>().ok()); // "max" (unlimited) does not parse
    sized_from(cgroup, total)
}

/// [`default_limit`] from the cgroup limit and MemTotal (either unknown); an unlimited cgroup
/// reads as a huge number, so the smaller of the two is the real bound.
fn sized_from(cgroup: Option<u64>, mem_total: Option<u64>) -> u64 {
    let memory = match (cgroup, mem_total) {
        (Some(c), Some(t)) => c.min(t),
        (one, other) => one.or(other).unwrap_or(0),
    };
    (memory / DEFAULT_SHARE).max(DEFAULT_FLOOR)
}

/// `MemTotal:  24684084 kB` → bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ErrorKind;
    use std::time::Duration;

    /// An image of exactly `kib` KiB decoded.
    fn plan_of(kib: u32) -> DecodePlan {
        DecodePlan::for_test(kib, 1024, 1)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn the_default_is_a_quarter_of_the_tighter_limit_with_a_floor() {
        let gib = 1u64 << 30;
        assert_eq!(sized_from(Some(2 * gib), Some(24 * gib)), gib / 2);
        // cgroup v1's "unlimited" is a huge number: MemTotal decides.
        assert_eq!(
            sized_from(Some(9_223_372_036_854_771_712), Some(24 * gib)),
            6 * gib
        );
        assert_eq!(sized_from(None, Some(8 * gib)), 2 * gib);
        assert_eq!(sized_from(Some(512 << 20), None), 256 << 20);
        assert_eq!(sized_from(None, None), 256 << 20);
        assert_eq!(
            mem_total("MemFree: 1 kB\nMemTotal:       24684084 kB\n"),
            Some(24_684_084 * 1024)
        );
    }

    #[tokio::test]
    async fn an_image_larger_than_the_budget_is_refused_at_once() {
        let budget = DecodeBudget::new(1 << 20);
        let plan = DecodePlan::for_test(1000, 1000, 4);
        let e = budget.reserve(&plan, far()).await.unwrap_err();
        let mut rotated = plan;
        rotated.extra_bytes = 3_000_000;
        let e2 = budget.reserve(&rotated, far()).await.unwrap_err();
        assert!(
            e2.message
                .contains("= 4000000 bytes decoded, 7000000 while decoding, more than"),
            "{}",
            e2.message
        );
        assert_eq!(e.kind, ErrorKind::BadInput);
        assert_eq!(
            e.message,
            "image is 1000×1000 × 4 bytes a pixel = 4000000 bytes decoded, more than the \
             decode memory limit of 1048576 bytes (`--decode-memory`)"
        );
    }

    #[tokio::test]
    async fn a_waiter_is_admitted_when_room_frees() {
        let budget = DecodeBudget::new(1 << 20);
        let first = budget.reserve(&plan_of(700), far()).await.unwrap();
        let plan = plan_of(700);
        let second = budget.reserve(&plan, far());
        tokio::pin!(second);
        // Not admitted while the first holds its memory...
        assert!(futures::poll!(second.as_mut()).is_pending());
        drop(first);
        // ...and admitted as soon as it is freed (bounded: the deadline is a minute away).
        second.await.unwrap();
    }

    #[tokio::test]
    async fn a_waiter_whose_deadline_passes_times_out() {
        let budget = DecodeBudget::new(1 << 20);
        let _held = budget.reserve(&plan_of(700), far()).await.unwrap();
        // The memory is never freed: only the deadline ends the wait.
        let deadline = Instant::now() + Duration::from_millis(20);
        let e = budget.reserve(&plan_of(700), deadline).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue() {
        let budget = DecodeBudget::new(1 << 20);
        let first = budget.reserve(&plan_of(700), far()).await.unwrap();
        {
            let plan = plan_of(900);
            let gone = budget.reserve(&plan, far());
            tokio::pin!(gone);
            assert!(futures::poll!(gone.as_mut()).is_pending());
        }
        drop(first);
        // The abandoned 900 KiB waiter no longer stands in front of this one.
        budget.reserve(&plan_of(1000), far()).await.unwrap();
    }
}
