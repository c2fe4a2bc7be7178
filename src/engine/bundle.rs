//! The model bundle: a directory holding `sightline.json` and the files it names.
//!
//! This file owns parsing, validation and the fingerprint of a bundle. It never runs a model:
//! `worker.rs` opens the sessions, `preprocess.rs` and `text.rs` apply the settings.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Name of the manifest inside a bundle directory.
pub const MANIFEST: &str = "sightline.json";

/// CLIP's published normalisation constants (model.md §1.2).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// `sightline.json`. Unknown fields are refused: a typo must not silently change the vectors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Model name reported by `/info` and in OpenAI responses.
    pub name: String,
    /// Length of every vector the bundle produces.
    pub dimensions: usize,
    /// Token limit including [CLS] and [SEP]; longer texts are truncated and flagged.
    pub max_seq_len: usize,
    /// WordPiece `tokenizer.json`, relative to the bundle directory.
    pub tokenizer: String,
    pub image: ImageEncoder,
    pub text: TextEncoder,
    #[serde(default)]
    pub preprocess: Preprocess,
    /// The graphs return unit-length vectors already (open_clip exports normalise inside);
    /// checked by the engine's start-up probe.
    #[serde(default, skip_serializing_if = "is_default")]
    pub outputs_normalized: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageEncoder {
    pub onnx: String,
    #[serde(default = "default_pixel_values")]
    pub input: String,
    #[serde(default = "default_image_embeds")]
    pub output: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextEncoder {
    pub onnx: String,
    #[serde(default = "default_input_ids")]
    pub input_ids: String,
    /// `null`: the graph takes no mask (open_clip exports derive it from `pad_id` inside).
    #[serde(default = "default_attention_mask")]
    pub attention_mask: Option<String>,
    pub output: String,
    /// What the graph's output is: the sentence embedding itself (form a), or token states
    /// that Sightline mean-pools and projects with `dense` (form b).
    pub pooling: TextPooling,
    /// `2_Dense/model.safetensors` (`linear.weight` [dimensions, hidden], no bias); form b only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<String>,
    /// The model of `tokenizer.json` (checked against the file when the tokenizer loads).
    #[serde(default, skip_serializing_if = "is_default")]
    pub tokenizer_kind: TokenizerKind,
    /// What happens to a text before it is tokenized.
    #[serde(default, skip_serializing_if = "is_default")]
    pub clean: TextClean,
    /// How a batch of token sequences is padded.
    #[serde(default, skip_serializing_if = "is_default")]
    pub padding: Padding,
    /// The id padded positions get (0 = `[PAD]` of BERT vocabularies; 1 = `<pad>` of XLM-R and NLLB).
    #[serde(default, skip_serializing_if = "is_default")]
    pub pad_id: u32,
}

/// New settings are left out of `sightline.json` when they hold today's behaviour, so an existing
/// bundle serialises, and so fingerprints, exactly as before.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// BERT-family WordPiece (the default model's mBERT vocabulary).
    #[default]
    WordPiece,
    /// SentencePiece Unigram (XLM-RoBERTa).
    Unigram,
    /// Byte-pair encoding, SentencePiece or byte-level (NLLB, CLIP's own tokenizer).
    Bpe,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TextClean {
    /// Leading and trailing white space removed (sentence-transformers' `str.strip()`).
    #[default]
    Trim,
    /// Also every run of white space inside made one space (open_clip's `whitespace_clean`).
    Whitespace,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Each batch padded to its longest sequence (sentence-transformers).
    #[default]
    Longest,
    /// Every sequence padded to `max_seq_len` (open_clip's `padding="max_length"`).
    Fixed,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TextPooling {
    /// Output `[N, dimensions]`: the graph already pools and projects.
    None,
    /// Output `[N, L, hidden]`: masked mean over tokens, then the Dense projection.
    Mean,
}

/// Image preprocessing settings (model.md §2.1 for the default; open_clip's `PreprocessCfg` for
/// the open_clip families). A value outside the enums is refused at load, naming the field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: ResizeRule,
    pub crop: CropRule,
    pub interpolation: Interpolation,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResizeRule {
    /// Shorter side to `size`, longer side `int(size * long / short)` in f64 (transformers'
    /// `get_resize_output_image_size`, torchvision's `Resize(int)`); a crop follows.
    ShortestEdge,
    /// Straight to `size`×`size`, aspect ratio not kept (open_clip `resize_mode: squash`, the
    /// SigLIP default); no crop.
    Squash,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CropRule {
    /// `size`×`size` at `((w - size) / 2, (h - size) / 2)`, floored (transformers' `center_crop`).
    Center,
    /// `size`×`size` at `round((w - size) / 2)`, halves to even (torchvision's `CenterCrop`,
    /// which open_clip uses: Python's `int(round(x / 2.0))`).
    CenterRound,
    /// No crop: only with `resize: squash`.
    None,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// PIL BICUBIC (Keys a = −0.5, i.e. Catmull-Rom) with antialiasing.
    Bicubic,
    /// PIL BILINEAR (triangle filter) with antialiasing.
    Bilinear,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            size: 224,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            resize: ResizeRule::ShortestEdge,
            crop: CropRule::Center,
            interpolation: Interpolation::Bicubic,
        }
    }
}

fn default_pixel_values() -> String {
    "pixel_values".into()
}
fn default_image_embeds() -> String {
    "image_embeds".into()
}
fn default_input_ids() -> String {
    "input_ids".into()
}
fn default_attention_mask() -> Option<String> {
    Some("attention_mask".into())
}

/// A validated bundle: the manifest plus absolute paths of the files it names.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    /// Reads and validates `DIR/sightline.json`; every named file must exist.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the model manifest `{}`: create a bundle with `sightline model pull` or `sightline model init`",
                path.display()
            )
        })?;
        // The path in the error names the field (`preprocess.resize: unknown variant …`).
        let manifest: Manifest =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
                .map_err(|e| anyhow!("`{}`: {}", e.path(), e.inner()))
                .with_context(|| format!("invalid model manifest `{}`", path.display()))?;
        let bundle = Bundle {
            dir: dir.to_path_buf(),
            manifest,
        };
        bundle.validate()?;
        Ok(bundle)
    }

    fn validate(&self) -> Result<()> {
        let m = &self.manifest;
        ensure!(m.dimensions > 0, "`dimensions` must be positive");
        ensure!(
            m.max_seq_len >= 2,
            "`max_seq_len` must leave room for [CLS] and [SEP]"
        );
        ensure!(m.preprocess.size > 0, "`preprocess.size` must be positive");
        ensure!(
            m.preprocess.std.iter().all(|s| *s > 0.0),
            "`preprocess.std` must be positive"
        );
        match (m.preprocess.resize, m.preprocess.crop) {
            (ResizeRule::Squash, CropRule::Center | CropRule::CenterRound) => bail!(
                "`preprocess.crop` must be `none` with `preprocess.resize: squash` (the squashed \
                 image is already `size`×`size`)"
            ),
            (ResizeRule::ShortestEdge, CropRule::None) => bail!(
                "`preprocess.crop` must be `center` or `center_round` with \
                 `preprocess.resize: shortest_edge` (the longer side is wider than `size`)"
            ),
            _ => {}
        }
        ensure!(
            m.preprocess.mean.iter().all(|v| v.is_finite()),
            "`preprocess.mean` must be finite"
        );
        if let Some(mask) = &m.text.attention_mask {
            ensure!(
                !mask.is_empty() && *mask != m.text.input_ids,
                "`text.attention_mask` must name a second input (or be null)"
            );
        }
        match (m.text.pooling, &m.text.dense) {
            (TextPooling::Mean, None) => {
                bail!("`text.pooling` is `mean` but `text.dense` names no projection weights")
            }
            (TextPooling::None, Some(_)) => {
                bail!("`text.dense` is only used with `text.pooling: mean`")
            }
            _ => {}
        }
        for file in self.files() {
            ensure!(
                file.is_file(),
                "the model file `{}` named in `{}` does not exist",
                file.display(),
                self.dir.join(MANIFEST).display()
            );
        }
        Ok(())
    }

    /// Absolute path of a file named in the manifest.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every file the manifest names, in a fixed order.
    pub fn files(&self) -> Vec<PathBuf> {
        let m = &self.manifest;
        let mut names = vec![&m.image.onnx, &m.text.onnx, &m.tokenizer];
        names.extend(m.text.dense.as_ref());
        names.into_iter().map(|n| self.path(n)).collect()
    }

    /// SHA-256 over the manifest's settings and the bytes of every model file, so that an
    /// index built with one model and queried with another can be detected.
    pub fn fingerprint(&self) -> Result<String> {
        let mut hasher = Sha256::new();
        hasher.update(serde_json::to_vec(&self.manifest)?);
        for file in self.files() {
            let mut f = std::fs::File::open(&file)
                .with_context(|| format!("cannot open `{}`", file.display()))?;
            std::io::copy(&mut f, &mut hasher)
                .with_context(|| format!("cannot read `{}`", file.display()))?;
        }
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_json(pooling: &str, dense: Option<&str>) -> String {
        let dense = dense
            .map(|d| format!(r#","dense":"{d}""#))
            .unwrap_or_default();
        format!(
            r#"{{"name":"t","dimensions":512,"max_seq_len":128,"tokenizer":"tok.json",
            "image":{{"onnx":"img.onnx"}},
            "text":{{"onnx":"txt.onnx","output":"out","pooling":"{pooling}"{dense}}}}}"#
        )
    }

    /// `json` with a full `preprocess` block using `resize` and `crop`.
    fn with_preprocess(json: &str, resize: &str, crop: &str) -> String {
        let pre = format!(
            r#","preprocess":{{"size":224,"mean":[0.5,0.5,0.5],"std":[0.5,0.5,0.5],"resize":"{resize}","crop":"{crop}","interpolation":"bicubic"}}}}"#
        );
        let end = json.rfind('}').unwrap();
        format!("{}{pre}", &json[..end])
    }

    fn bundle_dir(json: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in ["tok.json", "img.onnx", "txt.onnx", "dense.safetensors"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        std::fs::write(dir.path().join(MANIFEST), json).unwrap();
        dir
    }

    #[test]
    fn defaults_fill_tensor_names_and_clip_preprocessing() {
        let dir = bundle_dir(&manifest_json("none", None));
        let b = Bundle::load(dir.path()).unwrap();
        assert_eq!(b.manifest.image.input, "pixel_values");
        assert_eq!(b.manifest.image.output, "image_embeds");
        assert_eq!(b.manifest.text.input_ids, "input_ids");
        assert_eq!(b.manifest.preprocess, Preprocess::default());
        assert_eq!(b.files().len(), 3);
    }

    #[test]
    fn mean_pooling_requires_dense_weights() {
        let dir = bundle_dir(&manifest_json("mean", None));
        let err = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("text.dense"), "{err}");
        let dir = bundle_dir(&manifest_json("mean", Some("dense.safetensors")));
        assert_eq!(Bundle::load(dir.path()).unwrap().files().len(), 4);
    }

    #[test]
    fn unknown_fields_and_missing_files_are_refused() {
        let json = manifest_json("none", None).replacen('{', r#"{"normalise":true,"#, 1);
        let dir = bundle_dir(&json);
        let err = format!("{:#}", Bundle::load(dir.path()).unwrap_err());
        assert!(err.contains("unknown field `normalise`"), "{err}");

        let dir = bundle_dir(&manifest_json("none", None));
        std::fs::remove_file(dir.path().join("txt.onnx")).unwrap();
        let err = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("txt.onnx") && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn existing_bundles_serialise_exactly_as_written() {
        // New settings default to today's behaviour and are left out when they do, so the
        // fingerprint of a bundle written before them does not change.
        for name in ["tiny-clip", "tiny-clip-tokens"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name);
            let bundle = Bundle::load(&dir).unwrap();
            let written: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
            // f32 settings come back as their f64 widening: compare the fields, not the digits.
            fn shape(v: serde_json::Value) -> serde_json::Value {
                match v {
                    serde_json::Value::Number(_) => serde_json::Value::Null,
                    serde_json::Value::Array(a) => a.into_iter().map(shape).collect(),
                    serde_json::Value::Object(o) => {
                        o.into_iter().map(|(k, v)| (k, shape(v))).collect()
                    }
                    other => other,
                }
            }
            let ours = serde_json::to_value(&bundle.manifest).unwrap();
            assert_eq!(shape(ours), shape(written), "{name}");
            let text = &bundle.manifest.text;
            assert_eq!(
                (text.tokenizer_kind, text.clean, text.padding, text.pad_id),
                (
                    TokenizerKind::WordPiece,
                    TextClean::Trim,
                    Padding::Longest,
                    0
                )
            );
            assert_eq!(text.attention_mask.as_deref(), Some("attention_mask"));
            assert!(!bundle.manifest.outputs_normalized);
        }
    }

    #[test]
    fn unknown_values_are_refused_naming_the_field() {
        for (from, to, field) in [
            (
                r#""resize":"shortest_edge""#,
                r#""resize":"longest""#,
                "preprocess.resize",
            ),
            (
                r#""interpolation":"bicubic""#,
                r#""interpolation":"lanczos""#,
                "preprocess.interpolation",
            ),
            (
                r#""pooling":"none""#,
                r#""pooling":"none","padding":"max""#,
                "text.padding",
            ),
            (
                r#""pooling":"none""#,
                r#""pooling":"none","tokenizer_kind":"spm""#,
                "text.tokenizer_kind",
            ),
        ] {
            let json = with_preprocess(&manifest_json("none", None), "shortest_edge", "center");
            let json = json.replacen(from, to, 1);
            let dir = bundle_dir(&json);
            let err = format!("{:#}", Bundle::load(dir.path()).unwrap_err());
            assert!(
                err.contains(&format!("`{field}`")) && err.contains("unknown variant"),
                "{err}"
            );
        }
    }

    #[test]
    fn contradictory_resize_and_crop_are_refused() {
        for (resize, crop) in [
            ("squash", "center"),
            ("squash", "center_round"),
            ("shortest_edge", "none"),
        ] {
            let dir = bundle_dir(&with_preprocess(&manifest_json("none", None), resize, crop));
            let err = Bundle::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains("`preprocess.crop`"), "{resize}+{crop}: {err}");
        }
        for (resize, crop) in [("squash", "none"), ("shortest_edge", "center_round")] {
            let dir = bundle_dir(&with_preprocess(&manifest_json("none", None), resize, crop));
            assert!(Bundle::load(dir.path()).is_ok(), "{resize}+{crop}");
        }
        let json = manifest_json("none", None).replacen(
            r#""output":"out""#,
            r#""output":"out","input_ids":"text","attention_mask":"text""#,
            1,
        );
        let err = Bundle::load(bundle_dir(&json).path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`text.attention_mask`"), "{err}");
        let json = manifest_json("none", None).replacen(
            r#""output":"out""#,
            r#""output":"out","attention_mask":null"#,
            1,
        );
        let b = Bundle::load(bundle_dir(&json).path()).unwrap();
        assert_eq!(b.manifest.text.attention_mask, None);
    }

    #[test]
    fn fingerprint_changes_with_file_bytes_and_settings() {
        let dir = bundle_dir(&manifest_json("none", None));
        let a = Bundle::load(dir.path()).unwrap().fingerprint().unwrap();
        std::fs::write(dir.path().join("img.onnx"), "other").unwrap();
        let b = Bundle::load(dir.path()).unwrap().fingerprint().unwrap();
        assert_ne!(a, b);
        let mut bundle = Bundle::load(dir.path()).unwrap();
        bundle.manifest.preprocess.size = 336;
        assert_ne!(bundle.fingerprint().unwrap(), b);
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64);
    }
}
