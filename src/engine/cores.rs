//! Image work — decoding an ingest image, running a lane's batch — holds a token per core it
//! uses, and there are as many tokens as ONNX Runtime threads: no more image work runs at once
//! than there are cores. Otherwise a decoder and a lane time-share a core, each switch evicting
//! the other's working set from the core's caches. A lane waiting for a batch holds no token,
//! so the decoders fill its batch on the core it left (`batcher::Queue::coming`); a lane whose
//! batch is ready goes before decoders waiting, as its run is what answers requests.
//! Search images decode on their own thread without a token: they must not queue behind a
//! bulk ingest's decoding.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

pub(crate) struct Cores {
    total: usize,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    free: usize,
    /// Lanes waiting for tokens: decoders wait until none do.
    lanes_waiting: usize,
}

/// Tokens held until dropped.
pub(crate) struct Tokens {
    cores: Arc<Cores>,
    n: usize,
}

impl Cores {
    pub(crate) fn new(total: usize) -> Arc<Cores> {
        let total = total.max(1);
        Arc::new(Cores {
            total,
            state: Mutex::new(State {
                free: total,
                lanes_waiting: 0,
            }),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// For a lane's batch: `threads` tokens (at most all of them), ahead of waiting decoders.
    pub(crate) fn for_batch(self: &Arc<Self>, threads: usize) -> Tokens {
        let n = threads.clamp(1, self.total);
        let mut state = self.lock();
        state.lanes_waiting += 1;
        while state.free < n {
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.lanes_waiting -= 1;
        state.free -= n;
        self.tokens(n)
    }

    /// For decoding one image: a token once no lane waits for one, or `None` once `deadline`
    /// has passed.
    pub(crate) fn for_decoding(self: &Arc<Self>, deadline: Instant) -> Option<Tokens> {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            if state.free > 0 && state.lanes_waiting == 0 {
                state.free -= 1;
                return Some(self.tokens(1));
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn tokens(self: &Arc<Self>, n: usize) -> Tokens {
        Tokens {
            cores: self.clone(),
            n,
        }
    }
}

impl Drop for Tokens {
    fn drop(&mut self) {
        self.cores.lock().free += self.n;
        self.cores.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn free(cores: &Cores) -> usize {
        cores.lock().free
    }

    #[test]
    fn tokens_are_bounded_and_returned_on_drop() {
        let cores = Cores::new(2);
        let soon = || Instant::now() + Duration::from_millis(20);
        let a = cores.for_decoding(soon()).expect("a free token");
        let lane = cores.for_batch(1);
        assert_eq!(free(&cores), 0);
        // No token left: a decoder gives up at its deadline.
        assert!(cores.for_decoding(soon()).is_none());
        drop(a);
        assert_eq!(free(&cores), 1);
        // A lane asking for more than there are gets all of them, not a deadlock.
        drop(lane);
        let all = cores.for_batch(8);
        assert_eq!((all.n, free(&cores)), (2, 0));
        drop(all);
        assert_eq!(free(&cores), 2);
    }

    #[test]
    fn a_waiting_lane_goes_before_waiting_decoders() {
        let cores = Cores::new(2);
        let decoding = cores.for_decoding(Instant::now() + Duration::from_secs(60));
        // A two-thread lane waits for the token the decoder holds.
        let lane = {
            let cores = cores.clone();
            std::thread::spawn(move || cores.for_batch(2).n)
        };
        let until = Instant::now() + Duration::from_secs(10);
        while cores.lock().lanes_waiting == 0 {
            assert!(
                Instant::now() < until,
                "the lane never asked for its tokens"
            );
            std::thread::yield_now();
        }
        // One token is free, but a lane waits: a decoder does not take it.
        assert_eq!(free(&cores), 1);
        assert!(cores
            .for_decoding(Instant::now() + Duration::from_millis(20))
            .is_none());
        drop(decoding);
        assert_eq!(lane.join().unwrap(), 2);
        assert_eq!(free(&cores), 2);
    }
}
