//! Building a bundle from model files: `sightline model init` and `sightline model pull` both
//! end in [`create_bundle`].
//!
//! It inspects each graph (`inspect.rs`), works out the manifest and the vector length, stages
//! the files and `sightline.json` beside the target directory (`install.rs`), and runs a smoke
//! embed through the real [`Engine`] before moving anything into place, so a bundle that cannot
//! serve fails here and never replaces a good one.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::inspect::{
    dense_shape, image_signature, inspect, open_clip_text_signature, probe_image_dimensions,
    text_signature, GraphSig, TensorOverrides,
};
use super::install::{
    existing_bundle, install, link_or_copy, same_bundle, Staging, DENSE_FILE, IMAGE_FILE,
    TEXT_FILE, TOKENIZER_FILE,
};
use super::open_clip::OpenClipExport;
use crate::engine::bundle::{
    Bundle, ImageEncoder, Manifest, Padding, Preprocess, TextClean, TextEncoder, TextPooling,
    TokenizerKind, MANIFEST,
};
use crate::engine::format::sample_jpeg;
use crate::engine::runtime::open_session;
use crate::engine::text::{detect_kind, TextTokenizer, TokenizerSettings};
use crate::engine::{Engine, EngineOptions, Item};

/// Preprocessing size when the graph's spatial dimensions are dynamic (CLIP ViT-B/32).
const DEFAULT_IMAGE_SIZE: u32 = 224;

/// Everything `init` and `pull` say about the bundle to write.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub name: String,
    pub image_onnx: PathBuf,
    pub text_onnx: PathBuf,
    pub tokenizer: PathBuf,
    /// Dense projection weights: present for text form (b).
    pub dense: Option<PathBuf>,
    pub max_seq_len: usize,
    pub out: PathBuf,
    /// Replace a different bundle already in `out`.
    pub force: bool,
    pub overrides: TensorOverrides,
    /// Refuse files whose vectors have another length (a known model's `pull`).
    pub expect_dimensions: Option<usize>,
    pub family: Family,
}

/// Where the settings the graphs do not show come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Family {
    /// sentence-transformers text (form a or b) beside a CLIP image tower: model.md's settings.
    SentenceTransformers,
    /// An open_clip export (`open_clip.rs`): its preprocessing and its tokenizer's pad id.
    OpenClip { preprocess: Preprocess, pad_id: u32 },
}

impl BundleSpec {
    /// The spec for an open_clip export directory (`model init --from-open-clip`, and `pull`
    /// of an open_clip preset once its files are in the cache).
    pub fn from_open_clip(
        export: &OpenClipExport,
        name: String,
        out: PathBuf,
        force: bool,
    ) -> BundleSpec {
        BundleSpec {
            name,
            image_onnx: export.visual.clone(),
            text_onnx: export.textual.clone(),
            tokenizer: export.tokenizer.clone(),
            dense: None,
            max_seq_len: export.context_length,
            out,
            force,
            overrides: TensorOverrides::default(),
            expect_dimensions: Some(export.dimensions),
            family: Family::OpenClip {
                preprocess: export.preprocess.clone(),
                pad_id: export.pad_id,
            },
        }
    }
}

/// What [`create_bundle`] did to the target directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// A different bundle was there and `force` replaced it.
    Replaced,
    /// The same manifest and the same file bytes were already there; nothing was written.
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct CreatedBundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub fingerprint: String,
    pub outcome: Outcome,
}

/// Inspects the files, writes the bundle into `spec.out` and proves it embeds. The file work
/// runs on the blocking pool: hashing and comparing encoders reads hundreds of megabytes.
pub async fn create_bundle(spec: BundleSpec) -> Result<CreatedBundle> {
    let preparing = spec.clone();
    let staged = match blocking(move || prepare(&preparing)).await? {
        Prepared::Unchanged(created) => return Ok(*created),
        Prepared::Staged(staged) => staged,
    };
    if let Err(err) = smoke_test(&staged.staging.dir, staged.manifest.dimensions).await {
        // Dropping the staging directory deletes its files: file work, so off the runtime too.
        blocking(move || {
            drop(staged);
            Ok(())
        })
        .await?;
        return Err(err.context(
            "the new bundle failed its smoke test (one text, one image); nothing was written",
        ));
    }
    blocking(move || finish(staged, &spec)).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("bundle creation crashed")?
}

/// What [`prepare`] left for the async side; boxed because both outcomes are large.
enum Prepared {
    /// The same bundle is already in place.
    Unchanged(Box<CreatedBundle>),
    Staged(Box<Staged>),
}

/// A validated bundle in its staging directory, waiting for the smoke test.
struct Staged {
    staging: Staging,
    manifest: Manifest,
    /// The manifest of the bundle being replaced, when it loaded.
    old: Option<Manifest>,
    replacing: bool,
}

/// Plans the manifest, compares it with what `out` holds, and stages the new bundle.
fn prepare(spec: &BundleSpec) -> Result<Prepared> {
    let manifest = plan_manifest(spec)?;
    let sources = sources(spec);
    let existing = existing_bundle(&spec.out)?;
    if let Some(Ok(bundle)) = &existing {
        if same_bundle(bundle, &manifest, &sources)? {
            return Ok(Prepared::Unchanged(Box::new(CreatedBundle {
                fingerprint: bundle.fingerprint()?,
                dir: spec.out.clone(),
                manifest,
                outcome: Outcome::Unchanged,
            })));
        }
    }
    if let (Some(existing), false) = (&existing, spec.force) {
        let what = match existing {
            Ok(bundle) => format!("a different bundle (`{}`)", bundle.manifest.name),
            Err(err) => format!("a bundle that does not load ({err:#})"),
        };
        bail!(
            "`{}` already holds {what}: pass --force to replace it, or choose another directory",
            spec.out.display()
        );
    }

    let staging = Staging::create(&spec.out)?;
    for (name, source) in &sources {
        link_or_copy(source, &staging.dir.join(name))?;
    }
    let json = serde_json::to_string_pretty(&manifest)? + "\n";
    let manifest_path = staging.dir.join(MANIFEST);
    std::fs::write(&manifest_path, json)
        .with_context(|| format!("cannot write `{}`", manifest_path.display()))?;
    Bundle::load(&staging.dir).context("the new bundle does not validate")?;
    Ok(Prepared::Staged(Box::new(Staged {
        staging,
        manifest,
        replacing: existing.is_some(),
        old: existing.and_then(Result::ok).map(|b| b.manifest),
    })))
}

/// Moves a smoke-tested bundle into place.
fn finish(staged: Box<Staged>, spec: &BundleSpec) -> Result<CreatedBundle> {
    install(
        &staged.staging.dir,
        &spec.out,
        &sources(spec),
        staged.old.as_ref(),
    )?;
    drop(staged.staging);
    Ok(CreatedBundle {
        fingerprint: Bundle::load(&spec.out)?.fingerprint()?,
        dir: spec.out.clone(),
        manifest: staged.manifest,
        outcome: if staged.replacing {
            Outcome::Replaced
        } else {
            Outcome::Created
        },
    })
}

/// Bundle file name → source path, in the order the manifest names them.
fn sources(spec: &BundleSpec) -> Vec<(&'static str, PathBuf)> {
    let mut sources = vec![
        (IMAGE_FILE, spec.image_onnx.clone()),
        (TEXT_FILE, spec.text_onnx.clone()),
        (TOKENIZER_FILE, spec.tokenizer.clone()),
    ];
    if let Some(dense) = &spec.dense {
        sources.push((DENSE_FILE, dense.clone()));
    }
    sources
}

/// Reads the graphs, the Dense weights and the tokenizer into the manifest to write.
/// Blocking: opens ONNX Runtime sessions.
fn plan_manifest(spec: &BundleSpec) -> Result<Manifest> {
    let mut files = vec![
        ("--image-onnx", &spec.image_onnx),
        ("--text-onnx", &spec.text_onnx),
        ("--tokenizer", &spec.tokenizer),
    ];
    files.extend(spec.dense.as_ref().map(|d| ("--dense", d)));
    for (flag, path) in files {
        ensure!(path.is_file(), "{flag} `{}`: no such file", path.display());
    }
    ensure!(
        spec.max_seq_len >= 2,
        "--max-seq-len must leave room for [CLS] and [SEP]"
    );

    let mut image_session =
        open_session(&spec.image_onnx, 1).context("cannot open the image encoder")?;
    let image_graph = GraphSig::from_session(&image_session);
    let image = image_signature(&image_graph, &spec.overrides)
        .with_context(|| format!("--image-onnx `{}`", spec.image_onnx.display()))?;
    let size = image.size.unwrap_or(DEFAULT_IMAGE_SIZE);
    let image_dims = match image.dimensions {
        Some(d) => d,
        None => probe_image_dimensions(&mut image_session, &image, size)
            .with_context(|| format!("--image-onnx `{}`", spec.image_onnx.display()))?,
    };
    drop(image_session);

    let text_graph = inspect(&spec.text_onnx).context("cannot open the text encoder")?;
    let tokenizer_kind = detect_kind(&spec.tokenizer)?;
    let (text, text_dims) = match &spec.family {
        Family::SentenceTransformers => {
            sentence_transformers_text(spec, &text_graph, tokenizer_kind)?
        }
        Family::OpenClip { pad_id, .. } => {
            open_clip_text(spec, &text_graph, tokenizer_kind, *pad_id)?
        }
    };
    if let Some(text_dims) = text_dims {
        ensure!(
            text_dims == image_dims,
            "text vectors would have {text_dims} dimensions but image vectors {image_dims}: \
             the encoders do not share one embedding space"
        );
    }
    if let Some(expected) = spec.expect_dimensions {
        ensure!(
            image_dims == expected,
            "the encoders produce {image_dims}-dimensional vectors, expected {expected} for `{}`",
            spec.name
        );
    }
    TextTokenizer::load(
        &spec.tokenizer,
        TokenizerSettings {
            max_seq_len: spec.max_seq_len,
            kind: text.tokenizer_kind,
            clean: text.clean,
            pad_id: text.pad_id,
        },
    )?;
    let (preprocess, outputs_normalized) = match &spec.family {
        Family::SentenceTransformers => (
            Preprocess {
                size,
                ..Preprocess::default()
            },
            false,
        ),
        Family::OpenClip { preprocess, .. } => {
            ensure!(
                image.size.is_none_or(|s| s == preprocess.size),
                "the image encoder takes {size}×{size} images but `preprocess_cfg.json` says `size` {}",
                preprocess.size
            );
            // Immich's exports call `encode_image(normalize=True)`, `encode_text(normalize=True)`.
            (preprocess.clone(), true)
        }
    };

    Ok(Manifest {
        name: spec.name.clone(),
        dimensions: image_dims,
        max_seq_len: spec.max_seq_len,
        tokenizer: TOKENIZER_FILE.to_owned(),
        image: ImageEncoder {
            onnx: IMAGE_FILE.to_owned(),
            input: image.input,
            output: image.output,
        },
        text,
        preprocess,
        outputs_normalized,
    })
}

/// The text encoder of a sentence-transformers model, form (a) or (b) (model.md §3).
fn sentence_transformers_text(
    spec: &BundleSpec,
    graph: &GraphSig,
    tokenizer_kind: TokenizerKind,
) -> Result<(TextEncoder, Option<usize>)> {
    let text = text_signature(graph, spec.dense.is_some(), &spec.overrides)
        .with_context(|| format!("--text-onnx `{}`", spec.text_onnx.display()))?;
    let text_dims = match &spec.dense {
        Some(dense) => {
            let (rows, hidden) = dense_shape(dense)?;
            if let Some(width) = text.width {
                ensure!(
                    width == hidden,
                    "the text encoder's `{}` has {width} features but `linear.weight` in `{}` \
                     expects {hidden}: the Dense weights belong to another model",
                    text.output,
                    dense.display()
                );
            }
            Some(rows)
        }
        None => text.width,
    };
    let encoder = TextEncoder {
        onnx: TEXT_FILE.to_owned(),
        input_ids: text.input_ids,
        attention_mask: Some(text.attention_mask),
        output: text.output,
        pooling: text.pooling,
        dense: spec.dense.as_ref().map(|_| DENSE_FILE.to_owned()),
        tokenizer_kind,
        clean: TextClean::Trim,
        padding: Padding::Longest,
        pad_id: 0,
    };
    Ok((encoder, text_dims))
}

/// The text encoder of an open_clip export: open_clip's tokenizer call (white-space clean,
/// fixed-length padding with the pad id, truncation to the context length), no mask input.
fn open_clip_text(
    spec: &BundleSpec,
    graph: &GraphSig,
    tokenizer_kind: TokenizerKind,
    pad_id: u32,
) -> Result<(TextEncoder, Option<usize>)> {
    let text = open_clip_text_signature(graph)
        .with_context(|| format!("`{}`", spec.text_onnx.display()))?;
    if let Some(length) = text.length {
        ensure!(
            length == spec.max_seq_len,
            "the text encoder `{}` takes {length} tokens but the context length is {} \
             (`text_cfg.context_length` in config.json, 77 when absent)",
            spec.text_onnx.display(),
            spec.max_seq_len
        );
    }
    let encoder = TextEncoder {
        onnx: TEXT_FILE.to_owned(),
        input_ids: text.input,
        attention_mask: None,
        output: text.output,
        pooling: TextPooling::None,
        dense: None,
        tokenizer_kind,
        clean: TextClean::Whitespace,
        padding: Padding::Fixed,
        pad_id,
    };
    Ok((encoder, text.width))
}

/// One text and one tiny image through the real engine: a bundle that passes serves.
async fn smoke_test(dir: &Path, dimensions: usize) -> Result<()> {
    let image = sample_jpeg().context("cannot encode the smoke-test image")?;
    let dir = dir.to_path_buf();
    let options = EngineOptions {
        threads: 1,
        decode_workers: 1,
        ..EngineOptions::default()
    };
    let engine = tokio::task::spawn_blocking(move || Engine::start(&dir, options))
        .await
        .context("the engine crashed while starting")??;
    let results = engine
        .embed(vec![
            Item::Text("sightline smoke test".to_owned()),
            Item::Image(image),
        ])
        .await
        .map_err(|e| anyhow!("{e}"))?;
    for (what, result) in ["text", "image"].iter().zip(results) {
        let embedding = result.map_err(|e| anyhow!("{what}: {e}"))?;
        ensure!(
            embedding.vector.len() == dimensions,
            "{what}: the vector has {} dimensions, expected {dimensions}",
            embedding.vector.len()
        );
    }
    Ok(())
}
