//! The models `sightline model pull` knows, and [`plan`]: a model name and revisions in, the
//! hub files to fetch and the bundle settings out. Pure, so it is unit-tested without a network.

use std::path::{Component, Path};

use anyhow::{anyhow, ensure, Context, Result};

pub const DEFAULT_MODEL: &str = "clip-ViT-B-32-multilingual-v1";
pub const DEFAULT_REVISION: &str = "main";

/// What a downloaded file is for in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    ImageEncoder,
    TextEncoder,
    Dense,
    Tokenizer,
}

/// One file of one repository at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    pub role: Role,
    pub repo: String,
    pub revision: String,
    pub path: String,
}

/// The files of a known model and the bundle settings that go with them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PullPlan {
    /// Bundle name (`sightline.json` `name`, default directory `models/{name}`).
    pub(crate) name: String,
    pub(crate) dimensions: usize,
    pub(crate) max_seq_len: usize,
    pub(crate) files: Vec<HubFile>,
}

impl PullPlan {
    pub(crate) fn file(&self, role: Role) -> Option<&HubFile> {
        self.files.iter().find(|f| f.role == role)
    }
}

/// A model `pull` knows: the sentence-transformers text encoder in form (b) (the published
/// `onnx/` export outputs token states; Sightline pools and projects with `2_Dense`), and a
/// published export of the CLIP image tower it was distilled against (model.md §3.1).
struct KnownModel {
    name: &'static str,
    text_repo: &'static str,
    text_onnx: &'static str,
    text_onnx_quantized: &'static str,
    dense: &'static str,
    tokenizer: &'static str,
    image_repo: &'static str,
    image_onnx: &'static str,
    image_repo_quantized: &'static str,
    image_onnx_quantized: &'static str,
    dimensions: usize,
    max_seq_len: usize,
}

const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    name: "clip-ViT-B-32-multilingual-v1",
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
    dimensions: 512,
    max_seq_len: 128,
}];

/// The files to fetch for `model` (a known name, or its `owner/name` repo id). `revision`
/// applies to the model's own repository (text encoder, Dense weights, tokenizer);
/// `image_revision` to the image encoder's repository, a different repo with its own commits.
pub(crate) fn plan(
    model: &str,
    revision: &str,
    image_revision: &str,
    quantized: bool,
) -> Result<PullPlan> {
    let known = KNOWN_MODELS
        .iter()
        .find(|k| k.name == model || k.text_repo == model)
        .ok_or_else(|| {
            let names: Vec<&str> = KNOWN_MODELS.iter().map(|k| k.name).collect();
            anyhow!(
                "`{model}` is not a model `sightline model pull` knows (known: {}); for another \
                 model download its ONNX files and run `sightline model init`",
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
    let (image_repo, image_onnx, text_onnx) = if quantized {
        (
            known.image_repo_quantized,
            known.image_onnx_quantized,
            known.text_onnx_quantized,
        )
    } else {
        (known.image_repo, known.image_onnx, known.text_onnx)
    };
    Ok(PullPlan {
        // Quantised vectors differ slightly: a different name keeps both bundles apart.
        name: if quantized {
            format!("{}-int8", known.name)
        } else {
            known.name.to_owned()
        },
        dimensions: known.dimensions,
        max_seq_len: known.max_seq_len,
        files: vec![
            file(Role::ImageEncoder, image_repo, image_revision, image_onnx),
            file(Role::TextEncoder, known.text_repo, revision, text_onnx),
            file(Role::Dense, known.text_repo, revision, known.dense),
            file(Role::Tokenizer, known.text_repo, revision, known.tokenizer),
        ],
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
            (p.name.as_str(), p.dimensions, p.max_seq_len),
            (DEFAULT_MODEL, 512, 128)
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
