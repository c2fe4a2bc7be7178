//! The query cache: text vectors kept in least-recently-used order, so a query that repeats (the
//! same words searched again, a dashboard refreshing) is answered without the text encoder and
//! without waiting in its queue. Bounded by entries and by bytes (`serve --query-cache`,
//! `--query-cache-bytes`), shared by every model served.
//!
//! The key is the model's fingerprint and the text exactly as received: no normalisation at all,
//! not Unicode NFC, not trimming, not case, because only the identical text is certain to give the
//! identical vector. A cached answer is bit for bit the vector the model gave that text the first
//! time (with its token count and truncation flag). Only successful answers are stored; images and
//! URLs are never cached.

use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard, PoisonError};

use lru::LruCache;

use crate::engine::{Embedding, Engine, InputError, Item, Priority, RequestFailure};
use crate::metrics;

/// How much the cache may hold; either bound at 0 turns it off. The default is off: a library
/// caller opts in, `serve` does by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryCacheLimits {
    /// Most vectors held.
    pub entries: usize,
    /// Most bytes held: texts, fingerprints and vectors, plus a fixed overhead per entry.
    pub bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    fingerprint: String,
    text: String,
}

struct State {
    lru: LruCache<Key, Embedding>,
    /// Sum of [`entry_bytes`] over the entries held.
    bytes: usize,
}

pub(crate) struct QueryCache {
    state: Mutex<State>,
    max_bytes: usize,
}

/// What one entry is counted as: its payload and what the map and the LRU list keep beside it.
fn entry_bytes(key: &Key, embedding: &Embedding) -> usize {
    const OVERHEAD: usize = std::mem::size_of::<Key>()
        + std::mem::size_of::<Embedding>()
        + 4 * std::mem::size_of::<usize>();
    key.fingerprint.len() + key.text.len() + std::mem::size_of_val(&embedding.vector[..]) + OVERHEAD
}

impl QueryCache {
    /// A cache within `limits`; `None` when a bound is 0 (the cache is off).
    pub(crate) fn new(limits: QueryCacheLimits) -> Option<QueryCache> {
        let entries = NonZeroUsize::new(limits.entries)?;
        (limits.bytes > 0).then(|| QueryCache {
            state: Mutex::new(State {
                lru: LruCache::new(entries),
                bytes: 0,
            }),
            max_bytes: limits.bytes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; should it, the entries are still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The vector of `text` under the model `fingerprint`, marked most recently used.
    fn get(&self, fingerprint: &str, text: &str) -> Option<Embedding> {
        let key = Key {
            fingerprint: fingerprint.to_owned(),
            text: text.to_owned(),
        };
        self.lock().lru.get(&key).cloned()
    }

    /// Keeps `embedding` for `text`, evicting the least recently used entries beyond the bounds.
    /// An entry larger than the byte bound alone is not kept.
    fn insert(&self, fingerprint: &str, text: String, embedding: Embedding) {
        let key = Key {
            fingerprint: fingerprint.to_owned(),
            text,
        };
        let size = entry_bytes(&key, &embedding);
        if size > self.max_bytes {
            return;
        }
        let mut state = self.lock();
        // `push` hands back the entry it replaced (same key) or evicted (entry bound reached).
        if let Some((old_key, old)) = state.lru.push(key, embedding) {
            state.bytes -= entry_bytes(&old_key, &old);
        }
        state.bytes += size;
        while state.bytes > self.max_bytes {
            let Some((old_key, old)) = state.lru.pop_lru() else {
                break;
            };
            state.bytes -= entry_bytes(&old_key, &old);
        }
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let state = self.lock();
        (state.lru.len(), state.bytes)
    }
}

/// [`Engine::embed_request`] through the cache: texts found are answered from it, the other
/// inputs go to the engine together (so they still succeed or fail as one request), and the texts
/// it embeds are stored. A failed input is named by its index in the whole request. With no cache,
/// every input goes to the engine.
pub(crate) async fn embed(
    cache: Option<&QueryCache>,
    engine: &Engine,
    items: Vec<Item>,
    priority: Priority,
) -> Result<Vec<Embedding>, RequestFailure> {
    let Some(cache) = cache else {
        return engine.embed_request(items, priority).await;
    };
    let info = engine.info();
    let mut answers: Vec<Option<Embedding>> = vec![None; items.len()];
    // The position in the request of each input sent to the engine, and its text to store.
    let mut sent: Vec<(usize, Option<String>)> = Vec::new();
    let mut to_embed = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let text = match &item {
            Item::Text(text) => {
                let hit = cache.get(&info.fingerprint, text);
                metrics::query_cache(&info.name, hit.is_some());
                if hit.is_some() {
                    answers[index] = hit;
                    continue;
                }
                Some(text.clone())
            }
            Item::Image(_) | Item::Url(_) => None,
        };
        sent.push((index, text));
        to_embed.push(item);
    }
    if !to_embed.is_empty() {
        let embedded = engine
            .embed_request(to_embed, priority)
            .await
            .map_err(|failure| match failure {
                RequestFailure::Input(e) => RequestFailure::Input(InputError {
                    index: sent.get(e.index).map_or(e.index, |(index, _)| *index),
                    error: e.error,
                }),
                refused => refused,
            })?;
        for ((index, text), embedding) in sent.into_iter().zip(embedded) {
            if let Some(text) = text {
                cache.insert(&info.fingerprint, text, embedding.clone());
            }
            answers[index] = Some(embedding);
        }
    }
    RequestFailure::all_answered(answers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Modality;

    fn vector(seed: f32, dims: usize) -> Embedding {
        Embedding {
            modality: Modality::Text,
            vector: (0..dims).map(|i| seed + i as f32 * 1e-3).collect(),
            truncated: seed > 1.0,
            tokens: dims,
        }
    }

    fn cache(entries: usize, bytes: usize) -> QueryCache {
        QueryCache::new(QueryCacheLimits { entries, bytes }).expect("a cache")
    }

    fn size(fingerprint: &str, text: &str, dims: usize) -> usize {
        let key = Key {
            fingerprint: fingerprint.to_owned(),
            text: text.to_owned(),
        };
        entry_bytes(&key, &vector(0.0, dims))
    }

    #[test]
    fn a_zero_bound_turns_the_cache_off() {
        assert!(QueryCache::new(QueryCacheLimits::default()).is_none());
        assert!(QueryCache::new(QueryCacheLimits {
            entries: 0,
            bytes: 1 << 20
        })
        .is_none());
        assert!(QueryCache::new(QueryCacheLimits {
            entries: 10,
            bytes: 0
        })
        .is_none());
    }

    #[test]
    fn the_key_is_the_fingerprint_and_the_exact_text() {
        let c = cache(10, 1 << 20);
        let stored = vector(0.5, 4);
        c.insert("sha256:a", "ein Hund".into(), stored.clone());
        let got = c.get("sha256:a", "ein Hund").expect("a hit");
        assert_eq!(got, stored);
        let bits = |e: &Embedding| e.vector.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&stored));
        // Another model, or any other text, misses: no trimming, case folding or NFC.
        for (fingerprint, text) in [
            ("sha256:b", "ein Hund"),
            ("sha256:a", "ein Hund "),
            ("sha256:a", "Ein Hund"),
            ("sha256:a", "ein hund"),
        ] {
            assert!(c.get(fingerprint, text).is_none(), "{fingerprint} {text:?}");
        }
        c.insert("sha256:a", "caf\u{e9}".into(), stored.clone());
        assert!(c.get("sha256:a", "cafe\u{301}").is_none(), "NFD is not NFC");
    }

    #[test]
    fn the_entry_bound_evicts_the_least_recently_used() {
        let c = cache(2, 1 << 20);
        c.insert("f", "a".into(), vector(0.1, 4));
        c.insert("f", "b".into(), vector(0.2, 4));
        // Reading `a` makes `b` the least recently used.
        assert!(c.get("f", "a").is_some());
        c.insert("f", "c".into(), vector(0.3, 4));
        assert!(c.get("f", "b").is_none());
        assert!(c.get("f", "a").is_some() && c.get("f", "c").is_some());
        assert_eq!(c.held(), (2, 2 * size("f", "a", 4)));
    }

    #[test]
    fn the_byte_bound_evicts_and_counts_replacements_once() {
        let one = size("f", "a", 512);
        // Room for two entries and a half.
        let c = cache(100, one * 5 / 2);
        for text in ["a", "b", "c"] {
            c.insert("f", text.into(), vector(0.1, 512));
        }
        assert_eq!(c.held(), (2, 2 * one));
        assert!(c.get("f", "a").is_none(), "the oldest went first");
        // Storing a text again replaces its entry: still two, still counted once.
        c.insert("f", "c".into(), vector(0.9, 512));
        assert_eq!(c.held(), (2, 2 * one));
        assert_eq!(c.get("f", "c").unwrap().vector[0], 0.9);
        // An entry larger than the whole bound is not kept, and evicts nothing.
        c.insert("f", "x".repeat(one * 3), vector(0.1, 512));
        assert_eq!(c.held(), (2, 2 * one));
    }
}
