//! Text side: tokenisation (trim or open_clip's white-space clean, the bundle's `tokenizer.json`
//! of the declared kind, truncation to `max_seq_len` flagged rather than failed), padding
//! (per batch, or to a fixed length with the bundle's pad id), and for text form (b) the masked
//! mean pooling and the Dense projection that sentence-transformers applies after the
//! transformer (model.md §1.1).

use std::path::Path;

use std::borrow::Cow;

use anyhow::{bail, ensure, Context, Result};
use ndarray::{Array2, ArrayView2, ArrayView3};
use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer, TruncationParams};
use unicode_categories::UnicodeCategories;

use super::bundle::{Manifest, Padding, TextClean, TokenizerKind};
use super::error::EmbedError;

/// Token ids of one text, with [CLS] and [SEP].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<i64>,
    /// The text had more than `max_seq_len` tokens and its tail was cut.
    pub truncated: bool,
}

/// What the manifest says about tokenizing (see [`TextEncoder`](super::bundle::TextEncoder)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizerSettings {
    pub max_seq_len: usize,
    pub kind: TokenizerKind,
    pub clean: TextClean,
    pub pad_id: u32,
}

impl TokenizerSettings {
    pub fn of(m: &Manifest) -> TokenizerSettings {
        TokenizerSettings {
            max_seq_len: m.max_seq_len,
            kind: m.text.tokenizer_kind,
            clean: m.text.clean,
            pad_id: m.text.pad_id,
        }
    }

    /// The default model's settings (sentence-transformers, mBERT WordPiece) at `max_seq_len`.
    pub fn word_piece(max_seq_len: usize) -> TokenizerSettings {
        TokenizerSettings {
            max_seq_len,
            kind: TokenizerKind::WordPiece,
            clean: TextClean::Trim,
            pad_id: 0,
        }
    }
}

/// The kind of model a `tokenizer.json` holds, if it is one a bundle can declare.
fn tokenizer_kind(tokenizer: &Tokenizer) -> Option<TokenizerKind> {
    match tokenizer.get_model() {
        ModelWrapper::WordPiece(_) => Some(TokenizerKind::WordPiece),
        ModelWrapper::Unigram(_) => Some(TokenizerKind::Unigram),
        ModelWrapper::BPE(_) => Some(TokenizerKind::Bpe),
        ModelWrapper::WordLevel(_) => None,
    }
}

/// The kind of the `tokenizer.json` at `path` (what `model init` records in the manifest).
pub fn detect_kind(path: &Path) -> Result<TokenizerKind> {
    let tokenizer = Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot load the tokenizer `{}`", path.display()))?;
    tokenizer_kind(&tokenizer).with_context(|| {
        format!(
            "the tokenizer `{}` is a WordLevel model: only WordPiece, Unigram and BPE are supported",
            path.display()
        )
    })
}

/// The tokenizer configured the way the bundle's model family configures it.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    clean: TextClean,
    /// How to bound the work of a long text; `None` for a tokenizer outside the BERT family
    /// the bound is derived for, whose texts are tokenized whole.
    bound: Option<BertBound>,
}

impl TextTokenizer {
    pub fn load(path: &Path, settings: TokenizerSettings) -> Result<TextTokenizer> {
        let max_seq_len = settings.max_seq_len;
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot load the tokenizer `{}`", path.display()))?;
        let found = tokenizer_kind(&tokenizer);
        ensure!(
            found == Some(settings.kind),
            "the tokenizer `{}` is {}, but `text.tokenizer_kind` says {:?}",
            path.display(),
            found.map_or("a WordLevel model".to_owned(), |k| format!("{k:?}")),
            settings.kind
        );
        ensure!(
            tokenizer.id_to_token(settings.pad_id).is_some(),
            "`text.pad_id` {} is not an id of the tokenizer `{}` ({} ids)",
            settings.pad_id,
            path.display(),
            tokenizer.get_vocab_size(true)
        );
        // The real tokenizer.json stores no truncation block (model.md §8): always set it here.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| anyhow::anyhow!("cannot set truncation: {e}"))?;
        tokenizer.with_padding(None);
        let bound = match BertBound::new(&tokenizer, max_seq_len) {
            Ok(bound) => Some(bound),
            Err(why) => {
                tracing::warn!(
                    tokenizer = %path.display(),
                    "long texts are tokenized whole (slow for megabytes): {why}"
                );
                None
            }
        };
        Ok(TextTokenizer {
            tokenizer,
            clean: settings.clean,
            bound,
        })
    }

    /// Cleans the text as the bundle says (trim, or open_clip's white-space clean), then
    /// tokenizes; an empty text is an input error. The ids are those of the whole text, however
    /// long it is; for BERT-family tokenizers the work is bounded by [`BertBound`] (a few
    /// hundred words are tokenized, whatever the text's size).
    pub fn tokenize(&self, text: &str) -> Result<Tokens, EmbedError> {
        let text = match self.clean {
            TextClean::Trim => Cow::Borrowed(text.trim()),
            TextClean::Whitespace => Cow::Owned(collapse_whitespace(text)),
        };
        if text.is_empty() {
            return Err(EmbedError::bad_input("the text is empty"));
        }
        match &self.bound {
            Some(bound) => self.encode(&bound.equivalent_prefix(&text)),
            None => self.encode(&text),
        }
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

/// How one character behaves under a `BertNormalizer` followed by the `BertPreTokenizer`
/// (the same definitions as tokenizers 0.22's `normalizers/bert.rs` and `pre_tokenizers/bert.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CharClass {
    /// Part of a word; the number of characters it is after normalisation (lower-casing can
    /// turn one into two).
    Word(usize),
    /// Deleted by `clean_text` (NUL, U+FFFD, control and format characters): the word around
    /// it continues ("dog\u{200B}cat" is one word).
    Removed,
    /// White space: ends the word and yields no token.
    Space,
    /// A pre-token of its own: punctuation, or a CJK ideograph under `handle_chinese_chars`.
    Alone,
    /// Anything else (a character whose lower-case form holds punctuation): ends the current
    /// word, counted as yielding no token.
    Other,
}

/// The bound on tokenizing a long text, for a WordPiece tokenizer with a `BertNormalizer` and
/// the `BertPreTokenizer` (the bundle's tokenizer, and every BERT-family one).
///
/// The argument. Both stages are local: the normaliser maps each character on its own, the
/// pre-tokenizer splits at white space and isolates punctuation and CJK ideographs, and
/// WordPiece tokenizes each pre-token ("word") on its own. So a text's token sequence is the
/// concatenation of its segments' tokens, where a segment is a word or an isolated character,
/// and every segment yields at least one token. Three rewrites keep that sequence identical:
///   1. a run of white space and deleted characters becomes its first white-space character
///      (one split either way), a run of deleted characters only becomes its first one;
///   2. a word longer than `max_input_chars_per_word` normalised characters is one `[UNK]`
///      whatever its length (WordPiece checks the length first), so it is cut after its first
///      `max_input_chars_per_word + 1` characters;
///   3. a prefix ending after `needed = (max_seq_len + 1) · span` complete segments, where
///      `span` is the most segments an added token (`[CLS]`: `[`, `CLS`, `]`, so 3) covers:
///      an added token found in the text turns at most `span` segments into one token, and only
///      the last `span − 1` segments of the prefix could join the rest of the text into one.
///      The segments before them yield ≥ `max_seq_len` tokens, identical to the whole text's,
///      so both overflow and truncation keeps the same first tokens.
///
/// After rewrite 1, segments lie at most one character apart, and after rewrite 2 a word
/// spans at most `2 · (max_input_chars_per_word + 1)` characters, so the prefix holds at most
/// `needed · (2 · (max_input_chars_per_word + 1) + 1)` characters: 387 segments and
/// 78 561 characters for the bundle's tokenizer (128 tokens, 100 characters, span 3) in the
/// worst case, a few kilobytes for prose. The scan that finds the prefix reads the text once
/// and allocates only the prefix. Added tokens must start and end with a character that
/// stands alone and hold no white space, so a rewrite can neither create nor break one.
/// (`CharClass::Other` characters count as no segment and are not bounded; only a lower-casing
/// normaliser can produce them, and the bundle's does not lower-case.)
#[derive(Debug)]
struct BertBound {
    clean_text: bool,
    chinese: bool,
    lowercase: bool,
    max_word_chars: usize,
    /// Complete segments after which the prefix is cut.
    needed: usize,
}

impl BertBound {
    /// The bound for this tokenizer, or why it does not apply.
    fn new(tokenizer: &Tokenizer, max_seq_len: usize) -> Result<BertBound, String> {
        let Some(NormalizerWrapper::BertNormalizer(norm)) = tokenizer.get_normalizer() else {
            return Err("its normalizer is not a BertNormalizer".into());
        };
        if !matches!(
            tokenizer.get_pre_tokenizer(),
            Some(PreTokenizerWrapper::BertPreTokenizer(_))
        ) {
            return Err("its pre-tokenizer is not the BertPreTokenizer".into());
        }
        let ModelWrapper::WordPiece(wordpiece) = tokenizer.get_model() else {
            return Err("its model is not WordPiece".into());
        };
        if norm.strip_accents.unwrap_or(norm.lowercase) {
            // NFD + removing marks is not a per-character map this scan reproduces.
            return Err("it strips accents".into());
        }
        let mut bound = BertBound {
            clean_text: norm.clean_text,
            chinese: norm.handle_chinese_chars,
            lowercase: norm.lowercase,
            max_word_chars: wordpiece.max_input_chars_per_word,
            needed: 0,
        };
        let mut span = 1;
        for token in tokenizer.get_added_tokens_decoder().values() {
            span = span.max(bound.added_token_span(token)?);
        }
        bound.needed = max_seq_len.saturating_add(1).saturating_mul(span);
        Ok(bound)
    }

    /// Segments an added token covers, if it is one the rewrites leave alone.
    fn added_token_span(&self, token: &AddedToken) -> Result<usize, String> {
        let refuse = || {
            Err(format!(
                "the added token {:?} is not bracketed",
                token.content
            ))
        };
        let classes: Vec<CharClass> = token.content.chars().map(|c| self.class(c)).collect();
        let (Some(CharClass::Alone), Some(CharClass::Alone)) = (classes.first(), classes.last())
        else {
            return refuse();
        };
        if token.single_word {
            return refuse();
        }
        let mut segments = 0;
        let mut word = 0;
        for class in classes {
            match class {
                CharClass::Word(n) => word += n,
                CharClass::Alone => {
                    if word > 0 {
                        segments += 1;
                    }
                    if word > self.max_word_chars {
                        return refuse();
                    }
                    word = 0;
                    segments += 1;
                }
                _ => return refuse(),
            }
        }
        Ok(segments)
    }

    fn class(&self, c: char) -> CharClass {
        // ASCII: Cc are 0x00–0x1F and 0x7F (Cf and Co hold no ASCII).
        let control = !matches!(c, '\t' | '\n' | '\r')
            && if c.is_ascii() {
                c.is_ascii_control()
            } else {
                c.is_other()
            };
        if self.clean_text && (c == '\0' || c == '\u{FFFD}' || control) {
            return CharClass::Removed;
        }
        if c.is_whitespace() {
            return CharClass::Space;
        }
        if self.chinese && is_chinese_char(c) {
            return CharClass::Alone;
        }
        if !self.lowercase || c.is_ascii() {
            let c = if self.lowercase {
                c.to_ascii_lowercase()
            } else {
                c
            };
            return if is_bert_punctuation(c) {
                CharClass::Alone
            } else {
                CharClass::Word(1)
            };
        }
        let lower: Vec<char> = c.to_lowercase().collect();
        match lower[..] {
            [one] if is_bert_punctuation(one) => CharClass::Alone,
            _ if lower
                .iter()
                .any(|&l| l.is_whitespace() || is_bert_punctuation(l)) =>
            {
                CharClass::Other
            }
            _ => CharClass::Word(lower.len()),
        }
    }

    /// A text whose tokens are the same as `text`'s (see the type's argument), holding at most
    /// `needed` complete segments.
    fn equivalent_prefix<'a>(&self, text: &'a str) -> Cow<'a, str> {
        // Short texts cannot hold `needed` segments and long words: nothing to rewrite.
        if text.len() <= self.needed {
            return Cow::Borrowed(text);
        }
        let mut out = String::new();
        let mut segments = 0usize;
        // Normalised characters of the current word; 0 outside a word.
        let mut word = 0usize;
        // The current word is past `max_word_chars`: its remaining characters are dropped.
        let mut dropping = false;
        // One character standing for a run of white space or deleted characters.
        let mut filler: Option<(char, CharClass)> = None;
        // The scan may read megabytes (a 4 MiB word is read to its end): a direct-mapped cache
        // of classes keeps it to a table lookup for the few distinct characters of a text.
        let mut cache = [('\0', CharClass::Removed); 256];
        cache[0] = ('\0', self.class('\0'));
        for c in text.chars() {
            let slot = &mut cache[(u32::from(c) & 0xFF) as usize];
            if slot.0 != c {
                *slot = (c, self.class(c));
            }
            let class = slot.1;
            match class {
                CharClass::Word(n) => {
                    if dropping {
                        continue;
                    }
                    if let Some((f, _)) = filler.take() {
                        out.push(f);
                    }
                    out.push(c);
                    word += n;
                    dropping = word > self.max_word_chars;
                }
                CharClass::Removed => {
                    if !dropping && filler.is_none() {
                        filler = Some((c, class));
                    }
                }
                CharClass::Space => {
                    segments += usize::from(word > 0);
                    (word, dropping) = (0, false);
                    if !matches!(filler, Some((_, CharClass::Space))) {
                        filler = Some((c, class));
                    }
                }
                CharClass::Alone | CharClass::Other => {
                    segments += usize::from(word > 0) + usize::from(class == CharClass::Alone);
                    (word, dropping) = (0, false);
                    if let Some((f, _)) = filler.take() {
                        out.push(f);
                    }
                    out.push(c);
                }
            }
            if segments >= self.needed {
                break;
            }
        }
        Cow::Owned(out)
    }
}

/// tokenizers' `is_chinese_char`: the CJK Unified Ideographs blocks, not kana or Hangul.
fn is_chinese_char(c: char) -> bool {
    matches!(
        u32::from(c),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// tokenizers' `is_bert_punc`: ASCII punctuation or a Unicode P* category.
fn is_bert_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// open_clip's `whitespace_clean`: every run of white space one space, none at either end.
/// White space is Unicode's White_Space property (`char::is_whitespace`).
fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How [`pad_batch`] pads: the manifest's `text.padding`, `max_seq_len` and `text.pad_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PadSettings {
    pub padding: Padding,
    pub max_seq_len: usize,
    pub pad_id: i64,
}

impl PadSettings {
    pub fn of(m: &Manifest) -> PadSettings {
        PadSettings {
            padding: m.text.padding,
            max_seq_len: m.max_seq_len,
            pad_id: i64::from(m.text.pad_id),
        }
    }
}

/// Pads a batch to its longest member (or to `max_seq_len` with fixed padding) with the pad id
/// and builds the attention mask (1 for real tokens).
pub fn pad_batch<'a>(
    batch: impl ExactSizeIterator<Item = &'a [i64]> + Clone,
    pad: PadSettings,
) -> (Array2<i64>, Array2<i64>) {
    let rows = batch.len();
    let longest = batch.clone().map(<[i64]>::len).max().unwrap_or(0);
    let cols = match pad.padding {
        Padding::Longest => longest,
        Padding::Fixed => pad.max_seq_len.max(longest),
    };
    let mut ids = Array2::<i64>::from_elem((rows, cols), pad.pad_id);
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

    fn bundle_tokenizer(max_seq_len: usize) -> TextTokenizer {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/tokenizer.json");
        TextTokenizer::load(&path, TokenizerSettings::word_piece(max_seq_len)).unwrap()
    }

    /// The bundle's tokenizer with its normaliser's `lowercase` set (accents kept).
    fn lowercasing_tokenizer(max_seq_len: usize) -> TextTokenizer {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/tokenizer.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        json["normalizer"]["lowercase"] = true.into();
        json["normalizer"]["strip_accents"] = false.into();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let tokenizer =
            TextTokenizer::load(&path, TokenizerSettings::word_piece(max_seq_len)).unwrap();
        assert!(tokenizer.bound.as_ref().is_some_and(|b| b.lowercase));
        tokenizer
    }

    /// The cut must never change the ids: compare with tokenizing the whole (trimmed) text.
    fn assert_same_as_whole(tokenizer: &TextTokenizer, what: &str, text: &str) -> Tokens {
        let cut = tokenizer.tokenize(text).unwrap();
        let whole = tokenizer.encode(text.trim()).unwrap();
        assert_eq!(
            cut, whole,
            "{what}: ids of the cut and the whole text differ"
        );
        cut
    }

    /// `n` bytes (or a few more) of `unit` repeated.
    fn repeat_to(unit: &str, n: usize) -> String {
        unit.repeat(n / unit.len() + 1)
    }

    const MIB4: usize = 4 << 20;

    #[test]
    fn the_bound_is_derived_from_the_bundle_tokenizer() {
        let t = bundle_tokenizer(128);
        let bound = t
            .bound
            .as_ref()
            .expect("the bundle's tokenizer is BERT-family");
        assert_eq!(bound.max_word_chars, 100);
        // [CLS], [SEP], [PAD], [UNK], [MASK]: three segments each.
        assert_eq!(bound.needed, 129 * 3);
        assert_eq!(bound.class('a'), CharClass::Word(1));
        assert_eq!(bound.class('\u{200B}'), CharClass::Removed);
        assert_eq!(
            bound.class('\u{0085}'),
            CharClass::Removed,
            "NEL is Cc: deleted, not a space"
        );
        assert_eq!(bound.class('\u{3000}'), CharClass::Space);
        assert_eq!(bound.class('雪'), CharClass::Alone);
        assert_eq!(bound.class('、'), CharClass::Alone);
        assert_eq!(
            bound.class('ก'),
            CharClass::Word(1),
            "Thai letters form words"
        );
        assert_eq!(
            bound.class('🐶'),
            CharClass::Word(1),
            "emoji are not punctuation"
        );
    }

    #[test]
    fn texts_without_ascii_spaces_give_the_ids_of_the_whole_text() {
        // Sizes keep the whole-text tokenization (the comparison) quick in a debug build while
        // holding far more than `needed` segments or `max_input_chars_per_word` characters.
        let n = 256 << 10;
        let cases = [
            ("CJK prose", repeat_to("一只猫在雪地里睡觉，然后醒来。", n)),
            (
                "Japanese with kana",
                repeat_to("雪の中で眠る猫とカメラ。", n),
            ),
            ("Thai without spaces", repeat_to("แมวนอนหลับอยู่บนหิมะ", n)),
            (
                "Thai with a full stop per sentence",
                repeat_to("แมวนอนหลับ.", n),
            ),
            ("emoji", repeat_to("🐶🐱🐭", n)),
            ("emoji between punctuation", repeat_to("🐶,", n)),
            ("one long word", "x".repeat(n)),
            ("words split by newlines", repeat_to("dog\n", n)),
            ("words split by tabs", repeat_to("snow\t", n)),
            ("words split by U+3000", repeat_to("雪猫\u{3000}dog", n)),
            ("words split by NBSP", repeat_to("dog\u{00A0}", n)),
            (
                "words joined by zero-width spaces",
                repeat_to("dog\u{200B}", n),
            ),
            ("NEL joins words", repeat_to("dog\u{0085}cat ", n)),
            (
                "a long run of spaces first",
                format!("dog{}cat", " ".repeat(n)),
            ),
            (
                "a long run of deleted characters",
                format!("dog{}cat", "\u{200B}".repeat(n)),
            ),
            ("special tokens spelled out", repeat_to("[CLS][MASK]", n)),
            (
                "special tokens across deleted characters",
                repeat_to("[MA\u{200B}SK]", n),
            ),
            (
                "special tokens after a long word",
                repeat_to(&format!("{}[SEP]", "y".repeat(150)), n),
            ),
            (
                "combining marks",
                repeat_to("Cafe\u{0301}\u{0301}\u{0301} ", n),
            ),
        ];
        let t = bundle_tokenizer(128);
        for (what, text) in &cases {
            let tokens = assert_same_as_whole(&t, what, text);
            assert!(tokens.ids.len() <= 128, "{what}");
        }
        let lower = lowercasing_tokenizer(128);
        for (what, text) in &cases {
            assert_same_as_whole(&lower, what, &format!("İSTANBUL {text}"));
        }
    }

    #[test]
    fn word_lengths_around_the_wordpiece_limit_keep_their_ids() {
        // 100 characters is a word WordPiece splits; 101 is one [UNK]; the cut keeps 101.
        let t = bundle_tokenizer(16);
        for len in [99, 100, 101, 102, 250] {
            for unit in ["a", "é", "ก", "🐶"] {
                let word = unit.repeat(len);
                let text = format!("{word} {}", repeat_to(&format!("{word} , "), 8 << 10));
                assert_same_as_whole(&t, &format!("{len}×{unit}"), &text);
            }
        }
    }

    #[test]
    fn pseudo_random_mixtures_give_the_ids_of_the_whole_text() {
        // A small token budget makes the cut engage on small texts; a fixed-seed generator mixes
        // every character class, including the rewrites' edge cases.
        const PARTS: &[&str] = &[
            "dog", "x", "ก", "🐶", "雪", "。", ",", " ", "\n", "\u{3000}", "\u{200B}", "\u{0085}",
            "\u{0301}", "[CLS]", "[", "MASK", "]", "İ", "\u{FFFD}", "\0", "Straße",
        ];
        let t = bundle_tokenizer(8);
        let lower = lowercasing_tokenizer(8);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for case in 0..300 {
            let mut text = String::new();
            while text.len() < 3000 {
                let part = PARTS[next(PARTS.len())];
                // Now and then a long run of one part: long words, long fillers.
                let times = if next(10) == 0 { 1 + next(300) } else { 1 };
                text.push_str(&part.repeat(times));
            }
            assert_same_as_whole(&t, &format!("case {case}"), &text);
            assert_same_as_whole(&lower, &format!("case {case} (lower-case)"), &text);
        }
    }

    #[test]
    fn four_mib_without_spaces_tokenize_from_a_short_prefix() {
        // The work is bounded by what is tokenized: the prefix, never the 4 MiB.
        let t = bundle_tokenizer(128);
        let bound = t.bound.as_ref().unwrap();
        let limit = bound.needed * (2 * (bound.max_word_chars + 1) + 1);
        for (what, text) in [
            ("CJK", repeat_to("一只猫在雪地里睡觉", MIB4)),
            ("Thai", repeat_to("แมวนอนหลับอยู่บนหิมะ", MIB4)),
            ("emoji", repeat_to("🐶🐱", MIB4)),
            ("one word", "x".repeat(MIB4)),
        ] {
            let prefix = bound.equivalent_prefix(&text);
            let chars = prefix.chars().count();
            assert!(chars <= limit, "{what}: {chars} characters tokenized");
            assert!(
                prefix.len() < 64 << 10,
                "{what}: {} bytes tokenized",
                prefix.len()
            );
            t.tokenize(&text).unwrap();
        }
        // The single word: the whole text is one [UNK], and so is the cut.
        let word = "x".repeat(MIB4);
        assert_eq!(bound.equivalent_prefix(&word).len(), 101);
        assert_eq!(t.tokenize(&word).unwrap().ids, [101, 100, 102]);
    }

    /// The figures of docs/reliability.md ("Texts without spaces"): time and peak memory of
    /// one 4 MiB text, cut vs whole. A measurement, not a check (it depends on the machine):
    /// `cargo test --lib measure_four_mib_texts -- --ignored --nocapture --test-threads=1`.
    #[test]
    #[ignore]
    fn measure_four_mib_texts() {
        fn peak_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        let t = bundle_tokenizer(128);
        t.tokenize("warm up").unwrap();
        let cases = [
            ("CJK", repeat_to("一只猫在雪地里睡觉", MIB4)),
            ("Thai", repeat_to("แมวนอนหลับอยู่บนหิมะ", MIB4)),
            ("emoji", repeat_to("🐶🐱", MIB4)),
            ("one word", "x".repeat(MIB4)),
        ];
        for (what, text) in &cases {
            let before = peak_kib();
            let started = std::time::Instant::now();
            let cut = t.tokenize(text).unwrap();
            let took = started.elapsed();
            eprintln!(
                "{what}: cut {:.1} ms, peak +{} KiB, {} ids",
                took.as_secs_f64() * 1e3,
                peak_kib() - before,
                cut.ids.len()
            );
        }
        for (what, text) in &cases {
            let before = peak_kib();
            let started = std::time::Instant::now();
            let whole = t.encode(text).unwrap();
            let took = started.elapsed();
            eprintln!(
                "{what}: whole {:.1} ms, peak +{} KiB, {} ids",
                took.as_secs_f64() * 1e3,
                peak_kib() - before,
                whole.ids.len()
            );
        }
    }

    #[test]
    fn other_tokenizers_are_tokenized_whole() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/tokenizer.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        json["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let t = TextTokenizer::load(&path, TokenizerSettings::word_piece(16)).unwrap();
        assert!(t.bound.is_none());
        let text = repeat_to("dog!!! ", 4 << 10);
        assert_same_as_whole(&t, "Whitespace pre-tokenizer", &text);
    }

    #[test]
    fn padding_fills_zeros_and_masks_them() {
        let a = [101i64, 7, 102];
        let b = [101i64, 102];
        let longest = PadSettings {
            padding: Padding::Longest,
            max_seq_len: 128,
            pad_id: 0,
        };
        let (ids, mask) = pad_batch([&a[..], &b[..]].into_iter(), longest);
        assert_eq!(ids, ndarray::arr2(&[[101, 7, 102], [101, 102, 0]]));
        assert_eq!(mask, ndarray::arr2(&[[1, 1, 1], [1, 1, 0]]));
    }

    #[test]
    fn fixed_padding_fills_the_context_with_the_pad_id() {
        let a = [0i64, 7, 2];
        let fixed = PadSettings {
            padding: Padding::Fixed,
            max_seq_len: 5,
            pad_id: 1,
        };
        let (ids, mask) = pad_batch([&a[..]].into_iter(), fixed);
        assert_eq!(ids, ndarray::arr2(&[[0, 7, 2, 1, 1]]));
        assert_eq!(mask, ndarray::arr2(&[[1, 1, 1, 0, 0]]));
    }

    #[test]
    fn kind_and_pad_id_are_checked_against_the_file() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/tokenizer.json");
        let unigram = TokenizerSettings {
            kind: TokenizerKind::Unigram,
            ..TokenizerSettings::word_piece(16)
        };
        let err = TextTokenizer::load(&path, unigram)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("WordPiece") && err.contains("`text.tokenizer_kind`"),
            "{err}"
        );
        let far = TokenizerSettings {
            pad_id: 1 << 30,
            ..TokenizerSettings::word_piece(16)
        };
        let err = TextTokenizer::load(&path, far).err().unwrap().to_string();
        assert!(err.contains("`text.pad_id`"), "{err}");
    }

    #[test]
    fn whitespace_clean_collapses_runs_like_open_clip() {
        assert_eq!(collapse_whitespace("  a \t\n b\u{3000}c  "), "a b c");
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/tokenizer.json");
        let clean = TokenizerSettings {
            clean: TextClean::Whitespace,
            ..TokenizerSettings::word_piece(16)
        };
        let t = TextTokenizer::load(&path, clean).unwrap();
        assert_eq!(
            t.tokenize(" dog \n\n cat ").unwrap(),
            t.tokenize("dog cat").unwrap()
        );
        assert!(t.tokenize("\u{3000}\t").is_err());
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
