//! Text side: tokenisation (trim, WordPiece, truncation to `max_seq_len` flagged rather than
//! failed), per-batch padding, and for text form (b) the masked mean pooling and the Dense
//! projection that sentence-transformers applies after the transformer (model.md §1.1).

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use ndarray::{Array2, ArrayView2, ArrayView3};
use tokenizers::{Tokenizer, TruncationParams};

use super::error::EmbedError;

/// Token ids of one text, with [CLS] and [SEP].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<i64>,
    /// The text had more than `max_seq_len` tokens and its tail was cut.
    pub truncated: bool,
}

/// The tokenizer configured the way sentence-transformers configures it.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
}

impl TextTokenizer {
    pub fn load(path: &Path, max_seq_len: usize) -> Result<TextTokenizer> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot load the tokenizer `{}`", path.display()))?;
        // The real tokenizer.json stores no truncation block (model.md §8): always set it here.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| anyhow::anyhow!("cannot set truncation: {e}"))?;
        tokenizer.with_padding(None);
        Ok(TextTokenizer { tokenizer })
    }

    /// Trims like sentence-transformers, then tokenizes; an empty text is an input error.
    pub fn tokenize(&self, text: &str) -> Result<Tokens, EmbedError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(EmbedError::bad_input("the text is empty"));
        }
        // Only the first 128 tokens count, but the tokenizer would walk a multi-megabyte text
        // to the end. BERT pre-tokenization splits on white space, so a prefix cut at white
        // space yields the same leading tokens: if it already overflows, its result is the
        // text's result. (A prefix that does not overflow proves nothing; then the whole text.)
        // The prefix grows 4× until it overflows, so that neither a first word longer than one
        // prefix nor 126 long words spread past it can force a tokenization of the whole text.
        let mut limit = PREFIX_BYTES;
        while limit < text.len() {
            if let Some(prefix) = whitespace_prefix(text, limit) {
                let tokens = self.encode(prefix)?;
                if tokens.truncated {
                    return Ok(tokens);
                }
            }
            limit = limit.saturating_mul(4);
        }
        self.encode(text)
    }

    fn encode(&self, text: &str) -> Result<Tokens, EmbedError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EmbedError::bad_input(format!("cannot tokenize the text: {e}")))?;
        Ok(Tokens {
            ids: encoding.get_ids().iter().map(|&id| i64::from(id)).collect(),
            truncated: !encoding.get_overflowing().is_empty(),
        })
    }
}

/// Bytes of text tokenized first: 512 bytes per token at 128 tokens, far more than any
/// real text needs.
const PREFIX_BYTES: usize = 64 * 1024;

/// The text up to the last white space before `limit` bytes, when the text is longer.
fn whitespace_prefix(text: &str, limit: usize) -> Option<&str> {
    if text.len() <= limit {
        return None;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // ASCII space only: `char::is_whitespace` also matches U+000B, U+000C and U+0085, which
    // BERT's normaliser deletes as control characters, joining the words around them.
    let cut = text[..end].rfind(' ')?;
    Some(&text[..cut])
}

/// Pads a batch to its longest member with id 0 and builds the attention mask.
pub fn pad_batch<'a>(
    batch: impl ExactSizeIterator<Item = &'a [i64]> + Clone,
) -> (Array2<i64>, Array2<i64>) {
    let rows = batch.len();
    let cols = batch.clone().map(<[i64]>::len).max().unwrap_or(0);
    let mut ids = Array2::<i64>::zeros((rows, cols));
    let mut mask = Array2::<i64>::zeros((rows, cols));
    for (r, seq) in batch.enumerate() {
        for (c, &id) in seq.iter().enumerate() {
            ids[[r, c]] = id;
            mask[[r, c]] = 1;
        }
    }
    (ids, mask)
}

/// The Dense 768→512 projection of form (b): `y = x · Wᵀ`, no bias, identity activation.
pub struct Dense {
    /// `[dimensions, hidden]`, nn.Linear layout.
    weight: Array2<f32>,
}

impl Dense {
    pub fn load(path: &Path, dimensions: usize) -> Result<Dense> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("`{}` is not a safetensors file", path.display()))?;
        let view = tensors
            .tensor("linear.weight")
            .with_context(|| format!("`{}` has no `linear.weight` tensor", path.display()))?;
        if view.dtype() != safetensors::Dtype::F32 {
            bail!(
                "`linear.weight` in `{}` is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        let shape = view.shape();
        ensure!(
            shape.len() == 2 && shape[0] == dimensions,
            "`linear.weight` in `{}` has shape {shape:?}, expected [{dimensions}, hidden]",
            path.display()
        );
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Dense {
            weight: Array2::from_shape_vec((shape[0], shape[1]), values)?,
        })
    }

    pub fn hidden(&self) -> usize {
        self.weight.ncols()
    }

    /// Token states `[N, L, hidden]` + mask `[N, L]` → sentence embeddings `[N, dimensions]`.
    pub fn pool_and_project(&self, states: ArrayView3<f32>, mask: ArrayView2<i64>) -> Array2<f32> {
        mean_pool(states, mask).dot(&self.weight.t())
    }
}

/// `sum(h · m) / max(sum(m), 1e-9)` over tokens, [CLS] and [SEP] included (sentence-transformers' Pooling).
fn mean_pool(states: ArrayView3<f32>, mask: ArrayView2<i64>) -> Array2<f32> {
    let (n, l, h) = states.dim();
    let mut pooled = Array2::<f32>::zeros((n, h));
    for r in 0..n {
        let mut count = 0f32;
        for t in 0..l {
            if mask[[r, t]] != 0 {
                count += 1.0;
                pooled
                    .row_mut(r)
                    .scaled_add(1.0, &states.slice(ndarray::s![r, t, ..]));
            }
        }
        pooled.row_mut(r).mapv_inplace(|v| v / count.max(1e-9));
    }
    pooled
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn long_texts_are_cut_at_white_space_before_tokenizing() {
        assert_eq!(whitespace_prefix("short", 10), None);
        assert_eq!(whitespace_prefix("aaa bbb ccc", 9), Some("aaa bbb"));
        assert_eq!(
            whitespace_prefix("ééé ééé", 8),
            Some("ééé"),
            "cut on a char boundary"
        );
        assert_eq!(
            whitespace_prefix("aaaaaaaaaaaa", 5),
            None,
            "no white space: no cut"
        );
    }

    #[test]
    fn padding_fills_zeros_and_masks_them() {
        let a = [101i64, 7, 102];
        let b = [101i64, 102];
        let (ids, mask) = pad_batch([&a[..], &b[..]].into_iter());
        assert_eq!(ids, ndarray::arr2(&[[101, 7, 102], [101, 102, 0]]));
        assert_eq!(mask, ndarray::arr2(&[[1, 1, 1], [1, 1, 0]]));
    }

    #[test]
    fn mean_pool_ignores_padded_positions() {
        let states =
            Array3::from_shape_vec((1, 3, 2), vec![1.0, 2.0, 3.0, 4.0, 100.0, 100.0]).unwrap();
        let mask = ndarray::arr2(&[[1i64, 1, 0]]);
        assert_eq!(
            mean_pool(states.view(), mask.view()),
            ndarray::arr2(&[[2.0, 3.0]])
        );
    }

    #[test]
    fn projection_uses_linear_layout() {
        // W = [[1, 0], [0, 2], [1, 1]]: y = [x0, 2·x1, x0 + x1].
        let dense = Dense {
            weight: ndarray::arr2(&[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]),
        };
        let states = Array3::from_shape_vec((1, 1, 2), vec![3.0, 5.0]).unwrap();
        let y = dense.pool_and_project(states.view(), ndarray::arr2(&[[1i64]]).view());
        assert_eq!(y, ndarray::arr2(&[[3.0, 10.0, 8.0]]));
        assert_eq!(dense.hidden(), 2);
    }
}
