//! The models `sightline model pull` knows ([`PRESETS`]), and [`plan`]: a model name and
//! revisions in, the hub files to fetch and the bundle settings out. Pure, so it is unit-tested
//! without a network. Checksums are not pinned here: the download checks every file against
//! the sha256 (LFS) or git blob id the hub publishes for it (`checksum.rs`), and where the hub
//! publishes none it checks the size and records the sha256 it computed.

use std::fmt::Write as _;
use std::path::{Component, Path};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::open_clip;

pub const DEFAULT_MODEL: &str = "clip-ViT-B-32-multilingual-v1";
pub const DEFAULT_REVISION: &str = "main";

/// What a downloaded file is for in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    ImageEncoder,
    TextEncoder,
    Dense,
    Tokenizer,
    /// open_clip exports: `config.json`, `visual/preprocess_cfg.json`,
    /// `textual/tokenizer_config.json`, read by `open_clip.rs`.
    OpenClipConfig,
}

/// One file of one repository at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    pub role: Role,
    pub repo: String,
    pub revision: String,
    pub path: String,
}

/// How the fetched files become a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// sentence-transformers text form (b) and a separate CLIP image tower (model.md §3.1).
    SentenceTransformers,
    /// One open_clip export repository in Immich's layout: the cached repository directory is
    /// read by `open_clip::read_export`.
    OpenClip,
}

/// The files of a known model and the bundle settings that go with them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PullPlan {
    /// Bundle name (`sightline.json` `name`, default directory `models/{name}`).
    pub(crate) name: String,
    pub(crate) dimensions: usize,
    pub(crate) max_seq_len: usize,
    pub(crate) layout: Layout,
    pub(crate) files: Vec<HubFile>,
}

impl PullPlan {
    pub(crate) fn file(&self, role: Role) -> Option<&HubFile> {
        self.files.iter().find(|f| f.role == role)
    }
}

/// Where a preset's files are published.
#[derive(Debug)]
enum Source {
    /// The sentence-transformers text encoder in form (b) (the published `onnx/` export outputs
    /// token states; Sightline pools and projects with `2_Dense`), and a published export of the
    /// CLIP image tower it was distilled against (model.md §3.1).
    SentenceTransformers {
        text_repo: &'static str,
        text_onnx: &'static str,
        text_onnx_quantized: &'static str,
        dense: &'static str,
        tokenizer: &'static str,
        image_repo: &'static str,
        image_onnx: &'static str,
        image_repo_quantized: &'static str,
        image_onnx_quantized: &'static str,
    },
    /// One Immich export repository (`open_clip.rs` describes the layout). Immich publishes
    /// no int8 ONNX files for these.
    OpenClip { repo: &'static str },
}

/// A model `pull` knows, with what `model list` says about it.
#[derive(Debug)]
pub(crate) struct Preset {
    pub(crate) name: &'static str,
    source: Source,
    pub(crate) dimensions: usize,
    pub(crate) max_seq_len: usize,
    pub(crate) languages: &'static str,
    pub(crate) licence: &'static str,
    /// FP32 size.
    pub(crate) size: &'static str,
    /// The reported retrieval quality, with its source.
    pub(crate) recall: &'static str,
}

/// The presets, the default first. Figures are cited, not measured here (no hub is reachable
/// from the development machine): recall from Immich's published multilingual table
/// (Crossmodal-3600, mean of recall@1/5/10, as quoted in issue 13) where it lists the model,
/// else from Babel-ImageNet (model.md §5); sizes from model.md §3 (measured) or parameter counts.
pub(crate) const PRESETS: &[Preset] = &[
    Preset {
        name: DEFAULT_MODEL,
        source: Source::SentenceTransformers {
            text_repo: "sentence-transformers/clip-ViT-B-32-multilingual-v1",
            text_onnx: "onnx/model.onnx",
            text_onnx_quantized: "onnx/model_qint8_avx512_vnni.onnx",
            dense: "2_Dense/model.safetensors",
            tokenizer: "tokenizer.json",
            image_repo: "Qdrant/clip-ViT-B-32-vision",
            image_onnx: "model.onnx",
            // Qdrant publishes no int8 vision tower; Xenova's is the same ViT-B/32 weights.
            image_repo_quantized: "Xenova/clip-vit-base-patch32",
            image_onnx_quantized: "onnx/vision_model_quantized.onnx",
        },
        dimensions: 512,
        max_seq_len: 128,
        languages: "50+ (multilingual DistilBERT, distilled from English CLIP)",
        licence: "Apache-2.0 (text), MIT (OpenAI CLIP image tower)",
        size: "0.9 GB (int8: 0.22 GB)",
        recall: "XM3600 text->image R@1 25.6 EN / 13.0 avg of 35 other languages (Babel-ImageNet)",
    },
    Preset {
        name: "xlm-roberta-base-vit-b-32",
        source: Source::OpenClip {
            repo: "immich-app/XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k",
        },
        dimensions: 512,
        max_seq_len: 77,
        languages: "~100 (XLM-RoBERTa base), open_clip laion5b_s13b_b90k",
        licence: "MIT (LAION open_clip weights; check the model card)",
        size: "~1.5 GB (88 M image + 278 M text parameters, fp32)",
        recall: "XM3600 mean recall 68.3 EN / 72.5 ZH (Immich's table)",
    },
    Preset {
        name: "nllb-clip-base-siglip",
        source: Source::OpenClip {
            repo: "immich-app/nllb-clip-base-siglip__v1",
        },
        dimensions: 768,
        max_seq_len: 77,
        languages: "201 (NLLB-200 encoder), SigLIP ViT-B/16 384 px",
        licence: "CC-BY-NC-4.0 (NLLB-200 weights: non-commercial; check the model card)",
        size: "~2.0 GB (93 M image + 414 M text parameters, fp32)",
        recall: "XM3600 mean recall 69.7 EN / 72.9 ZH (Immich's table)",
    },
];

/// `sightline model list`: one block per preset.
pub fn preset_table() -> String {
    let mut out = String::new();
    for p in PRESETS {
        let source = match &p.source {
            Source::SentenceTransformers {
                text_repo,
                image_repo,
                ..
            } => format!("{text_repo} + {image_repo}"),
            Source::OpenClip { repo } => (*repo).to_owned(),
        };
        let default = if p.name == DEFAULT_MODEL {
            " (default)"
        } else {
            ""
        };
        let _ = writeln!(out, "{}{default}", p.name);
        for (label, value) in [
            ("dimensions", p.dimensions.to_string()),
            ("context", format!("{} tokens", p.max_seq_len)),
            ("languages", p.languages.to_owned()),
            ("licence", p.licence.to_owned()),
            ("size", p.size.to_owned()),
            ("recall", p.recall.to_owned()),
            ("source", source),
        ] {
            let _ = writeln!(out, "  {label:<11}{value}");
        }
    }
    out.push_str(
        "Recall and size are reported figures, not measured by Sightline; after `model pull`, \
         check the vectors with tools/compare.py against the model's own reference.\n",
    );
    out
}

/// The files to fetch for `model` (a preset's name, or its repository id). `revision` applies
/// to the model's own repository (text encoder, Dense weights, tokenizer; for open_clip
/// presets every file); `image_revision` to a separate image encoder repository.
pub(crate) fn plan(
    model: &str,
    revision: &str,
    image_revision: &str,
    quantized: bool,
) -> Result<PullPlan> {
    let preset = PRESETS
        .iter()
        .find(|p| {
            p.name == model
                || match &p.source {
                    Source::SentenceTransformers { text_repo, .. } => *text_repo == model,
                    Source::OpenClip { repo } => *repo == model,
                }
        })
        .ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            anyhow!(
                "`{model}` is not a model `sightline model pull` knows (known: {}; see `sightline \
                 model list`); for another model download its ONNX files and run `sightline model \
                 init` (open_clip exports: `--from-open-clip DIR`)",
                names.join(", ")
            )
        })?;
    check_revision(revision).context("--revision")?;
    check_revision(image_revision).context("--image-revision")?;
    let file = |role, repo: &str, rev: &str, path: &str| HubFile {
        role,
        repo: repo.to_owned(),
        revision: rev.to_owned(),
        path: path.to_owned(),
    };
    let (layout, files) = match &preset.source {
        Source::SentenceTransformers {
            text_repo,
            text_onnx,
            text_onnx_quantized,
            dense,
            tokenizer,
            image_repo,
            image_onnx,
            image_repo_quantized,
            image_onnx_quantized,
        } => {
            let (image_repo, image_onnx, text_onnx) = if quantized {
                (
                    image_repo_quantized,
                    image_onnx_quantized,
                    text_onnx_quantized,
                )
            } else {
                (image_repo, image_onnx, text_onnx)
            };
            let files = vec![
                file(Role::ImageEncoder, image_repo, image_revision, image_onnx),
                file(Role::TextEncoder, text_repo, revision, text_onnx),
                file(Role::Dense, text_repo, revision, dense),
                file(Role::Tokenizer, text_repo, revision, tokenizer),
            ];
            (Layout::SentenceTransformers, files)
        }
        Source::OpenClip { repo } => {
            if quantized {
                bail!(
                    "`{}` has no int8 export: Immich publishes FP32 ONNX files only; pull it \
                     without --quantized",
                    preset.name
                );
            }
            let files = vec![
                file(Role::OpenClipConfig, repo, revision, open_clip::CONFIG),
                file(Role::ImageEncoder, repo, revision, open_clip::VISUAL),
                file(Role::OpenClipConfig, repo, revision, open_clip::PREPROCESS),
                file(Role::TextEncoder, repo, revision, open_clip::TEXTUAL),
                file(Role::Tokenizer, repo, revision, open_clip::TOKENIZER),
                file(
                    Role::OpenClipConfig,
                    repo,
                    revision,
                    open_clip::TOKENIZER_CONFIG,
                ),
            ];
            (Layout::OpenClip, files)
        }
    };
    Ok(PullPlan {
        // Quantised vectors differ slightly: a different name keeps both bundles apart.
        name: if quantized {
            format!("{}-int8", preset.name)
        } else {
            preset.name.to_owned()
        },
        dimensions: preset.dimensions,
        max_seq_len: preset.max_seq_len,
        layout,
        files,
    })
}

/// A revision is a branch, tag, `refs/pr/N` or commit; it becomes cache directories, so
/// nothing that could climb out of the cache is accepted.
fn check_revision(revision: &str) -> Result<()> {
    let safe = !revision.is_empty()
        && !revision.contains('\\')
        && !revision.chars().any(char::is_control)
        && Path::new(revision)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    ensure!(
        safe,
        "`{revision}` is not a valid revision (a branch, tag or commit)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_plan() -> PullPlan {
        plan(DEFAULT_MODEL, "main", "main", false).unwrap()
    }

    #[test]
    fn default_plan_is_form_b_text_and_the_qdrant_vision_tower() {
        let p = default_plan();
        assert_eq!(
            (p.name.as_str(), p.dimensions, p.max_seq_len, p.layout),
            (DEFAULT_MODEL, 512, 128, Layout::SentenceTransformers)
        );
        let listed: Vec<(Role, &str, &str)> = p
            .files
            .iter()
            .map(|f| (f.role, f.repo.as_str(), f.path.as_str()))
            .collect();
        let st = "sentence-transformers/clip-ViT-B-32-multilingual-v1";
        assert_eq!(
            listed,
            vec![
                (
                    Role::ImageEncoder,
                    "Qdrant/clip-ViT-B-32-vision",
                    "model.onnx"
                ),
                (Role::TextEncoder, st, "onnx/model.onnx"),
                (Role::Dense, st, "2_Dense/model.safetensors"),
                (Role::Tokenizer, st, "tokenizer.json"),
            ]
        );
        assert!(p.files.iter().all(|f| f.revision == "main"));
        // The repo id works as a name too.
        assert_eq!(plan(st, "main", "main", false).unwrap(), p);
    }

    #[test]
    fn quantized_plan_swaps_both_encoders_and_the_name() {
        let p = plan(DEFAULT_MODEL, "main", "main", true).unwrap();
        assert_eq!(p.name, "clip-ViT-B-32-multilingual-v1-int8");
        let image = p.file(Role::ImageEncoder).unwrap();
        assert_eq!(
            (image.repo.as_str(), image.path.as_str()),
            (
                "Xenova/clip-vit-base-patch32",
                "onnx/vision_model_quantized.onnx"
            )
        );
        assert_eq!(
            p.file(Role::TextEncoder).unwrap().path,
            "onnx/model_qint8_avx512_vnni.onnx"
        );
        assert_eq!(
            p.file(Role::Dense).unwrap(),
            default_plan().file(Role::Dense).unwrap()
        );
    }

    #[test]
    fn revisions_apply_to_their_own_repositories() {
        let p = plan(DEFAULT_MODEL, "refs/pr/3", "abc123", false).unwrap();
        assert_eq!(p.file(Role::ImageEncoder).unwrap().revision, "abc123");
        for role in [Role::TextEncoder, Role::Dense, Role::Tokenizer] {
            assert_eq!(p.file(role).unwrap().revision, "refs/pr/3");
        }
        for bad in ["", "../x", "/abs", "a/../../b", "a\\b", "a\nb"] {
            let err = format!("{:#}", plan(DEFAULT_MODEL, bad, "main", false).unwrap_err());
            assert!(err.contains("not a valid revision"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn open_clip_presets_fetch_one_immich_repository_in_its_layout() {
        let p = plan("xlm-roberta-base-vit-b-32", "main", "ignored", false).unwrap();
        assert_eq!(
            (p.layout, p.dimensions, p.max_seq_len),
            (Layout::OpenClip, 512, 77)
        );
        let repo = "immich-app/XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k";
        let paths: Vec<&str> = p.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "config.json",
                "visual/model.onnx",
                "visual/preprocess_cfg.json",
                "textual/model.onnx",
                "textual/tokenizer.json",
                "textual/tokenizer_config.json"
            ]
        );
        assert!(p
            .files
            .iter()
            .all(|f| f.repo == repo && f.revision == "main"));
        assert_eq!(plan(repo, "main", "main", false).unwrap(), p);
        let nllb = plan("nllb-clip-base-siglip", "main", "main", false).unwrap();
        assert_eq!(nllb.dimensions, 768);
        assert_eq!(nllb.files[0].repo, "immich-app/nllb-clip-base-siglip__v1");
        let err = plan("nllb-clip-base-siglip", "main", "main", true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no int8 export"), "{err}");
    }

    #[test]
    fn the_list_shows_every_preset_with_its_figures() {
        let table = preset_table();
        for p in PRESETS {
            assert!(
                table.contains(p.name) && table.contains(p.recall) && table.contains(p.licence)
            );
        }
        assert!(table.contains("clip-ViT-B-32-multilingual-v1 (default)"));
        assert!(table.contains("dimensions 768") && table.contains("context    77 tokens"));
        assert_eq!(PRESETS[0].name, DEFAULT_MODEL);
    }

    #[test]
    fn unknown_models_point_at_init() {
        let err = plan("openai/clip-vit-large", "main", "main", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("clip-ViT-B-32-multilingual-v1") && err.contains("sightline model init"),
            "{err}"
        );
    }
}
