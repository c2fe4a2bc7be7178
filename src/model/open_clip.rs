//! open_clip exports in Immich's layout (one directory or hub repository per model):
//!
//! ```text
//! config.json                     open_clip model config: embed_dim, text_cfg.context_length (default 77)
//! visual/model.onnx               `image` f32 [1, 3, S, S] → `embedding` [1, D], L2-normalised
//! visual/preprocess_cfg.json      size, mode, mean, std, interpolation, resize_mode, fill_color
//! textual/model.onnx              `text` int32 [1, C] → `embedding` [1, D], L2-normalised, mask derived
//! textual/tokenizer.json          the Hugging Face tokenizer
//! textual/tokenizer_config.json   `pad_token`: padding to C uses its id
//! ```
//!
//! (immich-app/immich `machine-learning/export/immich_model_exporter/exporters/onnx/models/openclip.py`
//! writes it; `machine-learning/immich_ml/models/clip/{visual,textual}.py` reads it.) This file turns
//! the directory into the settings open_clip applies — [`read_export`] — which `build.rs` writes
//! into the manifest. Any setting open_clip has that Sightline does not implement is refused,
//! naming the file and the field.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use crate::engine::bundle::{CropRule, Interpolation, Preprocess, ResizeRule};

/// The files of an export, relative to its directory (also the hub paths of a preset).
pub(crate) const CONFIG: &str = "config.json";
pub(crate) const VISUAL: &str = "visual/model.onnx";
pub(crate) const PREPROCESS: &str = "visual/preprocess_cfg.json";
pub(crate) const TEXTUAL: &str = "textual/model.onnx";
pub(crate) const TOKENIZER: &str = "textual/tokenizer.json";
pub(crate) const TOKENIZER_CONFIG: &str = "textual/tokenizer_config.json";

/// open_clip's `CLIPTextCfg.context_length` when `config.json` sets none.
const DEFAULT_CONTEXT: usize = 77;

/// What an export says beyond its graphs.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenClipExport {
    pub visual: PathBuf,
    pub textual: PathBuf,
    pub tokenizer: PathBuf,
    /// `embed_dim`: the length of every vector.
    pub dimensions: usize,
    pub context_length: usize,
    pub preprocess: Preprocess,
    /// The tokenizer's id of `pad_token`.
    pub pad_id: u32,
}

#[derive(Deserialize)]
struct ModelConfig {
    embed_dim: usize,
    #[serde(default)]
    text_cfg: TextCfg,
}

#[derive(Deserialize, Default)]
struct TextCfg {
    context_length: Option<usize>,
    /// Options of open_clip's tokenizer (`clean: canonicalize`, `lower_case`, ...): Sightline
    /// implements the default white-space clean only.
    #[serde(default)]
    tokenizer_kwargs: serde_json::Map<String, serde_json::Value>,
}

/// open_clip's `PreprocessCfg` as `get_model_preprocess_cfg` saves it.
#[derive(Deserialize)]
struct PreprocessCfg {
    size: Size,
    #[serde(default = "rgb")]
    mode: String,
    mean: Triple,
    std: Triple,
    #[serde(default = "bicubic")]
    interpolation: String,
    /// Older configs have none: open_clip's default is `shortest`.
    #[serde(default = "shortest")]
    resize_mode: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    One(u32),
    Pair([u32; 2]),
}

/// A mean or std: one value for all channels, or three.
#[derive(Deserialize)]
#[serde(untagged)]
enum Triple {
    One(f32),
    Three([f32; 3]),
}

impl Triple {
    fn channels(&self) -> [f32; 3] {
        match self {
            Triple::One(v) => [*v; 3],
            Triple::Three(v) => *v,
        }
    }
}

fn rgb() -> String {
    "RGB".into()
}
fn bicubic() -> String {
    "bicubic".into()
}
fn shortest() -> String {
    "shortest".into()
}

#[derive(Deserialize)]
struct TokenizerConfig {
    pad_token: PadToken,
}

/// `pad_token` is a string, or an `AddedToken` object with `content` in older saves.
#[derive(Deserialize)]
#[serde(untagged)]
enum PadToken {
    Plain(String),
    Added { content: String },
}

fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Result<T> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read `{}` (an open_clip export has it)",
            path.display()
        )
    })?;
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
        .map_err(|e| anyhow::anyhow!("`{}`: {}", e.path(), e.inner()))
        .with_context(|| format!("invalid `{}`", path.display()))
}

/// Reads the export in `dir` (see the module docs).
pub fn read_export(dir: &Path) -> Result<OpenClipExport> {
    let config: ModelConfig = read_json(dir, CONFIG)?;
    for (key, value) in &config.text_cfg.tokenizer_kwargs {
        ensure!(
            key == "clean" && value == "whitespace",
            "`text_cfg.tokenizer_kwargs.{key}` is {value} in `{}`: Sightline implements only \
             open_clip's default text cleaning (white space), not this tokenizer option",
            dir.join(CONFIG).display()
        );
    }
    let cfg: PreprocessCfg = read_json(dir, PREPROCESS)?;
    let pre = |field: &str| format!("`{field}` in `{}`", dir.join(PREPROCESS).display());
    let size = match cfg.size {
        Size::One(s) => s,
        Size::Pair([h, w]) if h == w => h,
        Size::Pair([h, w]) => bail!(
            "{} is {h}×{w}: only square inputs are supported",
            pre("size")
        ),
    };
    ensure!(size > 0, "{} must be positive", pre("size"));
    ensure!(
        cfg.mode == "RGB",
        "{} is `{}`: only RGB is supported",
        pre("mode"),
        cfg.mode
    );
    let interpolation = match cfg.interpolation.as_str() {
        "bicubic" => Interpolation::Bicubic,
        "bilinear" => Interpolation::Bilinear,
        other => bail!(
            "{} is `{other}`: Sightline implements bicubic and bilinear",
            pre("interpolation")
        ),
    };
    let (resize, crop) = match cfg.resize_mode.as_str() {
        "shortest" => (ResizeRule::ShortestEdge, CropRule::CenterRound),
        "squash" => (ResizeRule::Squash, CropRule::None),
        other => bail!(
            "{} is `{other}`: Sightline implements `shortest` (resize + centre crop) and `squash`",
            pre("resize_mode")
        ),
    };
    let tokenizer = dir.join(TOKENIZER);
    let pad_token = match read_json::<TokenizerConfig>(dir, TOKENIZER_CONFIG)?.pad_token {
        PadToken::Plain(t) | PadToken::Added { content: t } => t,
    };
    let vocab = tokenizers::Tokenizer::from_file(&tokenizer)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot load the tokenizer `{}`", tokenizer.display()))?;
    let pad_id = vocab.token_to_id(&pad_token).with_context(|| {
        format!(
            "`pad_token` `{pad_token}` of `{}` is not in `{}`",
            dir.join(TOKENIZER_CONFIG).display(),
            tokenizer.display()
        )
    })?;
    Ok(OpenClipExport {
        visual: dir.join(VISUAL),
        textual: dir.join(TEXTUAL),
        tokenizer,
        dimensions: config.embed_dim,
        context_length: config.text_cfg.context_length.unwrap_or(DEFAULT_CONTEXT),
        preprocess: Preprocess {
            size,
            mean: cfg.mean.channels(),
            std: cfg.std.channels(),
            resize,
            crop,
            interpolation,
        },
        pad_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn the_family_fixtures_read_as_open_clip_configures_them() {
        let xlmr = read_export(&fixture("tiny-xlmr-openclip")).unwrap();
        assert_eq!(
            (xlmr.dimensions, xlmr.context_length, xlmr.pad_id),
            (512, 77, 1)
        );
        assert_eq!(
            (
                xlmr.preprocess.size,
                xlmr.preprocess.resize,
                xlmr.preprocess.crop
            ),
            (224, ResizeRule::ShortestEdge, CropRule::CenterRound)
        );
        let nllb = read_export(&fixture("tiny-nllb-siglip")).unwrap();
        assert_eq!((nllb.dimensions, nllb.preprocess.size), (768, 384));
        assert_eq!(
            (
                nllb.preprocess.resize,
                nllb.preprocess.crop,
                nllb.preprocess.mean
            ),
            (ResizeRule::Squash, CropRule::None, [0.5; 3])
        );
    }

    #[test]
    fn unsupported_settings_are_refused_naming_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let src = fixture("tiny-xlmr-openclip");
        for name in [CONFIG, PREPROCESS, TOKENIZER, TOKENIZER_CONFIG] {
            let to = dir.path().join(name);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(src.join(name), to).unwrap();
        }
        let cfg = dir.path().join(PREPROCESS);
        let original = std::fs::read_to_string(&cfg).unwrap();
        for (from, to, field) in [
            (
                r#""resize_mode": "shortest""#,
                r#""resize_mode": "longest""#,
                "resize_mode",
            ),
            (
                r#""interpolation": "bicubic""#,
                r#""interpolation": "random""#,
                "interpolation",
            ),
            (r#""size": 224"#, r#""size": [224, 256]"#, "size"),
        ] {
            assert!(original.contains(from), "{from}");
            std::fs::write(&cfg, original.replacen(from, to, 1)).unwrap();
            let err = format!("{:#}", read_export(dir.path()).unwrap_err());
            assert!(
                err.contains(&format!("`{field}`")) && err.contains("preprocess_cfg.json"),
                "{err}"
            );
        }
        std::fs::write(&cfg, original).unwrap();
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG),
            r#"{"pad_token": "<nope>"}"#,
        )
        .unwrap();
        let err = format!("{:#}", read_export(dir.path()).unwrap_err());
        assert!(err.contains("`pad_token` `<nope>`"), "{err}");
    }
}
