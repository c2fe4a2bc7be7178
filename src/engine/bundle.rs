//! The model bundle: a directory holding `sightline.json` and the files it names.
//!
//! This file owns parsing, validation and the fingerprint of a bundle. It never runs a model:
//! `worker.rs` opens the sessions, `preprocess.rs` and `text.rs` apply the settings.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
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
    #[serde(default = "default_attention_mask")]
    pub attention_mask: String,
    pub output: String,
    /// What the graph's output is: the sentence embedding itself (form a), or token states
    /// that Sightline mean-pools and projects with `dense` (form b).
    pub pooling: TextPooling,
    /// `2_Dense/model.safetensors` (`linear.weight` [dimensions, hidden], no bias); form b only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TextPooling {
    /// Output `[N, dimensions]`: the graph already pools and projects.
    None,
    /// Output `[N, L, hidden]`: masked mean over tokens, then the Dense projection.
    Mean,
}

/// Image preprocessing settings (model.md §2.1). Only the rule the reference uses is supported,
/// so the enums have one variant each: a bundle asking for anything else is refused at load.
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
    /// Shorter side to `size`, longer side `int(size * long / short)` in f64.
    ShortestEdge,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CropRule {
    /// `size`×`size` at `((w - size) / 2, (h - size) / 2)`, floored.
    Center,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// PIL BICUBIC (Keys a = −0.5, i.e. Catmull-Rom) with antialiasing.
    Bicubic,
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
fn default_attention_mask() -> String {
    "attention_mask".into()
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
        let manifest: Manifest = serde_json::from_str(&text)
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
