//! Who counts an input that is dropped before anyone worked on it.
//!
//! An input belongs to its call until something takes charge of it: a decoding thread, a queue
//! (whose batcher counts what it drops), or its own answer. If the call lets go first (another
//! input failed the request, or the client hung up), the input was dropped unworked and is
//! counted once in `sightline_dropped_total` as "disconnected" — by whichever holder of its
//! [`Claim`] lets go first. Without this, a count would depend on how far the decoding thread
//! had got when the request ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::Modality;

/// One input's claim; clones share it (the call's copy, the decoding thread's copy).
#[derive(Clone)]
pub(super) struct Claim {
    settled: Arc<AtomicBool>,
    modality: Modality,
    model: Arc<str>,
}

impl Claim {
    pub(super) fn new(modality: Modality, model: Arc<str>) -> Claim {
        Claim {
            settled: Arc::new(AtomicBool::new(false)),
            modality,
            model,
        }
    }

    /// Takes charge of the input: from now on nobody counts it as dropped. `false` when it was
    /// already settled, i.e. taken by someone else or counted as dropped.
    pub(super) fn take(&self) -> bool {
        !self.settled.swap(true, Ordering::AcqRel)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.take() {
            crate::metrics::dropped(self.modality.label(), "disconnected", &self.model, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped_count(model: &str) -> f64 {
        let sample = format!(
            r#"sightline_dropped_total{{modality="image",model="{model}",reason="disconnected"}} "#
        );
        crate::metrics::render()
            .lines()
            .find_map(|l| l.strip_prefix(sample.as_str()))
            .map_or(0.0, |v| v.parse().expect("a number"))
    }

    #[test]
    fn an_input_let_go_untaken_counts_once_whoever_lets_go() {
        let model: Arc<str> = Arc::from("claim-test-untaken");
        let claim = Claim::new(Modality::Image, model.clone());
        let decoders_copy = claim.clone();
        drop(decoders_copy);
        assert_eq!(dropped_count(&model), 1.0);
        drop(claim);
        assert_eq!(
            dropped_count(&model),
            1.0,
            "the second holder counts nothing"
        );
    }

    #[test]
    fn a_taken_input_is_never_counted_and_cannot_be_taken_twice() {
        let model: Arc<str> = Arc::from("claim-test-taken");
        let claim = Claim::new(Modality::Image, model.clone());
        let decoders_copy = claim.clone();
        assert!(decoders_copy.take());
        assert!(!claim.take(), "already taken by the decoding thread");
        drop((claim, decoders_copy));
        assert_eq!(dropped_count(&model), 0.0);
    }
}
