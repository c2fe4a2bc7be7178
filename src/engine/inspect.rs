//! ONNX graph inspection, and building a bundle from model files a user already has.
//!
//! `sightline model init` and `sightline model pull` both end here: [`create_bundle`] opens each
//! graph, reads its inputs and outputs ([`GraphSig`]), picks the tensor names the engine will
//! use ([`image_signature`], [`text_signature`]), works out the vector length, stages the files
//! and `sightline.json` beside the target directory, and runs a smoke embed through the real
//! [`Engine`] before moving anything into place, so a bundle that cannot serve fails here and
//! never replaces a good one. The picking rules are pure functions over [`GraphSig`], so they
//! are unit-tested without ONNX Runtime.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ndarray::Array4;
use ort::session::Session;
use ort::value::{Outlet, Tensor, TensorElementType, ValueType};

use super::bundle::{
    Bundle, ImageEncoder, Manifest, Preprocess, TextEncoder, TextPooling, MANIFEST,
};
use super::text::TextTokenizer;
use super::{Engine, EngineOptions, Item};

/// File names inside a bundle written by Sightline; fixed so bundles look alike.
pub const IMAGE_FILE: &str = "image_encoder.onnx";
pub const TEXT_FILE: &str = "text_encoder.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const DENSE_FILE: &str = "dense.safetensors";

/// Names the image input gets in published exports, in order of preference.
const IMAGE_INPUTS: &[&str] = &["pixel_values"];
const IMAGE_OUTPUTS: &[&str] = &["image_embeds"];
/// Pooled sentence embeddings: our own export (`text_embeds`), optimum's ST export.
const POOLED_OUTPUTS: &[&str] = &["text_embeds", "sentence_embedding"];
/// Token states: the transformers export, the sentence-transformers export.
const TOKEN_OUTPUTS: &[&str] = &["last_hidden_state", "token_embeddings"];
const INPUT_IDS: &str = "input_ids";
const ATTENTION_MASK: &str = "attention_mask";
/// Preprocessing size when the graph's spatial dimensions are dynamic (CLIP ViT-B/32).
const DEFAULT_IMAGE_SIZE: u32 = 224;

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    /// Unknown until run time; the symbol the exporter gave it (may be empty).
    Dynamic(String),
}

/// A graph input or output: name, element type (`None` for non-tensor values) and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSig {
    pub name: String,
    pub elem: Option<TensorElementType>,
    pub dims: Vec<Dim>,
}

impl TensorSig {
    fn is(&self, elem: TensorElementType, rank: usize) -> bool {
        self.elem == Some(elem) && self.dims.len() == rank
    }

    /// The size of the last dimension when the graph fixes it.
    fn last_fixed(&self) -> Option<usize> {
        match self.dims.last() {
            Some(Dim::Fixed(n)) if *n > 0 => Some(*n as usize),
            _ => None,
        }
    }

    fn from_outlet(outlet: &Outlet) -> TensorSig {
        let (elem, dims) = match outlet.dtype() {
            ValueType::Tensor {
                ty,
                shape,
                dimension_symbols,
            } => {
                let dims = shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| {
                        if d >= 0 {
                            Dim::Fixed(d)
                        } else {
                            Dim::Dynamic(dimension_symbols.get(i).cloned().unwrap_or_default())
                        }
                    })
                    .collect();
                (Some(*ty), dims)
            }
            _ => (None, Vec::new()),
        };
        TensorSig {
            name: outlet.name().to_owned(),
            elem,
            dims,
        }
    }
}

impl fmt::Display for TensorSig {
    /// `pixel_values f32 [batch_size, 3, 224, 224]`, the form every error message uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(elem) = self.elem else {
            return write!(f, "{} (not a tensor)", self.name);
        };
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => n.to_string(),
                Dim::Dynamic(s) if s.is_empty() => "?".to_owned(),
                Dim::Dynamic(s) => s.clone(),
            })
            .collect();
        write!(f, "{} {elem} [{}]", self.name, dims.join(", "))
    }
}

/// The inputs and outputs of one ONNX graph.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphSig {
    pub inputs: Vec<TensorSig>,
    pub outputs: Vec<TensorSig>,
}

impl GraphSig {
    pub fn from_session(session: &Session) -> GraphSig {
        GraphSig {
            inputs: session
                .inputs()
                .iter()
                .map(TensorSig::from_outlet)
                .collect(),
            outputs: session
                .outputs()
                .iter()
                .map(TensorSig::from_outlet)
                .collect(),
        }
    }

    fn input(&self, name: &str) -> Option<&TensorSig> {
        self.inputs.iter().find(|t| t.name == name)
    }

    fn output(&self, name: &str) -> Option<&TensorSig> {
        self.outputs.iter().find(|t| t.name == name)
    }

    fn describe_inputs(&self) -> String {
        describe(&self.inputs)
    }

    fn describe_outputs(&self) -> String {
        describe(&self.outputs)
    }
}

fn describe(list: &[TensorSig]) -> String {
    if list.is_empty() {
        return "none".to_owned();
    }
    list.iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens `path` and lists its inputs and outputs.
pub fn inspect(path: &Path) -> Result<GraphSig> {
    let session = super::runtime::open_session(path, 1)?;
    Ok(GraphSig::from_session(&session))
}

/// Tensor names a user forces instead of the picking rules (`--image-input` and friends).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorOverrides {
    pub image_input: Option<String>,
    pub image_output: Option<String>,
    pub text_output: Option<String>,
}

/// What the image graph offers the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSignature {
    pub input: String,
    pub output: String,
    /// Square input size when the graph fixes it.
    pub size: Option<u32>,
    /// Vector length when the graph fixes it.
    pub dimensions: Option<usize>,
}

/// Picks the image input (the 4-D float input, `pixel_values` preferred) and output
/// (`image_embeds`, else the only 2-D float output).
pub fn image_signature(graph: &GraphSig, overrides: &TensorOverrides) -> Result<ImageSignature> {
    let input = match &overrides.image_input {
        Some(name) => graph.input(name).ok_or_else(|| {
            anyhow!(
                "the image encoder has no input `{name}`; its inputs: {}",
                graph.describe_inputs()
            )
        })?,
        None => pick(&graph.inputs, IMAGE_INPUTS, |t| {
            t.dims.len() == 4 && t.elem.is_some()
        })
        .map_err(|why| {
            anyhow!(
                "cannot find the image input ({why}): Sightline feeds one float32 tensor \
                 [N, 3, H, W] (`pixel_values` in published exports); the graph's inputs: {}",
                graph.describe_inputs()
            )
        })?,
    };
    ensure!(
        input.dims.len() == 4,
        "the image input `{input}` is not 4-D: Sightline feeds float32 [N, 3, H, W]"
    );
    if input.elem == Some(TensorElementType::Uint8) {
        bail!(
            "the image input `{input}` takes raw uint8 pixels: graphs that normalise inside are \
             unsupported; Sightline feeds normalised float32 [N, 3, H, W] (use a float export)"
        );
    }
    ensure!(
        input.elem == Some(TensorElementType::Float32),
        "the image input `{input}` is not float32: unsupported; Sightline feeds float32 [N, 3, H, W]"
    );
    if let Some(other) = graph.inputs.iter().find(|t| t.name != input.name) {
        bail!(
            "the image encoder also takes `{other}`, which Sightline does not feed: use a \
             vision-only export (e.g. `vision_model.onnx`, not a two-tower `model.onnx`); its \
             inputs: {}",
            graph.describe_inputs()
        );
    }
    let fixed = |i: usize| match input.dims[i] {
        Dim::Fixed(n) => Some(n),
        Dim::Dynamic(_) => None,
    };
    if let Some(channels) = fixed(1) {
        if channels != 3 {
            let layout = if fixed(3) == Some(3) {
                "channels-last (NHWC) graphs are unsupported"
            } else {
                "unsupported channel count"
            };
            bail!(
                "the image input `{input}` has {channels} channels in dimension 1: {layout}; \
                 Sightline feeds float32 [N, 3, H, W]"
            );
        }
    }
    let size = match (fixed(2), fixed(3)) {
        (Some(h), Some(w)) if h == w && h > 0 => Some(h as u32),
        (Some(h), Some(w)) => bail!(
            "the image input `{input}` is {h}×{w}: only square inputs are supported \
             (CLIP preprocessing center-crops a square)"
        ),
        _ => None,
    };

    let output = match &overrides.image_output {
        Some(name) => graph.output(name).ok_or_else(|| {
            anyhow!(
                "the image encoder has no output `{name}`; its outputs: {}",
                graph.describe_outputs()
            )
        })?,
        None => pick(&graph.outputs, IMAGE_OUTPUTS, |t| t.dims.len() == 2).map_err(|why| {
            anyhow!(
                "cannot find the image embedding output ({why}): expected `image_embeds` or a \
                 single 2-D float output [N, D]; the graph's outputs: {} (name one with \
                 --image-output)",
                graph.describe_outputs()
            )
        })?,
    };
    ensure!(
        output.is(TensorElementType::Float32, 2),
        "the image output `{output}` is not float32 [N, D]: unsupported"
    );
    Ok(ImageSignature {
        input: input.name.clone(),
        output: output.name.clone(),
        size,
        dimensions: output.last_fixed(),
    })
}

/// What the text graph offers the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSignature {
    pub input_ids: String,
    pub attention_mask: String,
    pub output: String,
    pub pooling: TextPooling,
    /// Last dimension of the output when fixed: the vector length (pooled) or the hidden size
    /// (token states).
    pub width: Option<usize>,
}

/// Checks the two int64 token inputs and picks the output: with Dense weights the 3-D token
/// states (`last_hidden_state`/`token_embeddings`, pooled by Sightline), without them the 2-D
/// sentence embedding (`text_embeds`/`sentence_embedding`).
pub fn text_signature(
    graph: &GraphSig,
    with_dense: bool,
    overrides: &TensorOverrides,
) -> Result<TextSignature> {
    for name in [INPUT_IDS, ATTENTION_MASK] {
        let Some(input) = graph.input(name) else {
            bail!(
                "the text encoder has no `{name}` input: Sightline feeds exactly `input_ids` and \
                 `attention_mask` (int64 [N, L]), so this graph is unsupported; its inputs: {}",
                graph.describe_inputs()
            );
        };
        if input.elem != Some(TensorElementType::Int64) || input.dims.len() != 2 {
            bail!(
                "the text input `{input}` is unsupported: Sightline feeds int64 [N, L] token \
                 tensors (re-export the model with int64 `input_ids` and `attention_mask`)"
            );
        }
    }
    if let Some(extra) = graph
        .inputs
        .iter()
        .find(|t| t.name != INPUT_IDS && t.name != ATTENTION_MASK)
    {
        bail!(
            "the text encoder also requires `{extra}`, which Sightline does not feed (it feeds only \
             `input_ids` and `attention_mask`): unsupported; re-export the model without it"
        );
    }

    let (rank, preferred, pooling) = if with_dense {
        (3, TOKEN_OUTPUTS, TextPooling::Mean)
    } else {
        (2, POOLED_OUTPUTS, TextPooling::None)
    };
    let output = match &overrides.text_output {
        Some(name) => graph.output(name).ok_or_else(|| {
            anyhow!(
                "the text encoder has no output `{name}`; its outputs: {}",
                graph.describe_outputs()
            )
        })?,
        None => pick(&graph.outputs, preferred, |t| t.dims.len() == rank)
            .map_err(|why| text_output_error(graph, with_dense, &why))?,
    };
    if !output.is(TensorElementType::Float32, rank) {
        let want = if with_dense {
            "token states float32 [N, L, H] (pooled by Sightline because --dense was given)"
        } else {
            "a sentence embedding float32 [N, D]"
        };
        bail!("the text output `{output}` is not {want}");
    }
    Ok(TextSignature {
        input_ids: INPUT_IDS.to_owned(),
        attention_mask: ATTENTION_MASK.to_owned(),
        output: output.name.clone(),
        pooling,
        width: output.last_fixed(),
    })
}

/// Explains a missing text output, pointing at `--dense` when the graph has the other form.
fn text_output_error(graph: &GraphSig, with_dense: bool, why: &str) -> anyhow::Error {
    let of_rank = |rank: usize| {
        graph
            .outputs
            .iter()
            .find(|t| t.is(TensorElementType::Float32, rank))
    };
    match (with_dense, of_rank(2), of_rank(3)) {
        (true, Some(pooled), None) => anyhow!(
            "the text encoder already outputs a pooled sentence embedding `{pooled}` and no token \
             states, so there is nothing for the --dense projection to pool: drop --dense"
        ),
        (false, None, Some(states)) => anyhow!(
            "the text encoder outputs token states `{states}` (text form b): pass the Dense \
             projection with --dense FILE (`2_Dense/model.safetensors` of the sentence-transformers \
             repo) so Sightline can mean-pool and project them"
        ),
        _ => anyhow!(
            "cannot find the text output ({why}): expected {}; the graph's outputs: {} (name one \
             with --text-output)",
            if with_dense {
                "token states `last_hidden_state` or `token_embeddings` [N, L, H]"
            } else {
                "a sentence embedding `text_embeds` or `sentence_embedding` [N, D]"
            },
            graph.describe_outputs()
        ),
    }
}

/// The preferred name if present, else the only tensor passing `fits`; `Err` says why not.
fn pick<'a>(
    list: &'a [TensorSig],
    preferred: &[&str],
    fits: impl Fn(&TensorSig) -> bool,
) -> std::result::Result<&'a TensorSig, String> {
    if let Some(found) = preferred
        .iter()
        .find_map(|name| list.iter().find(|t| t.name == *name))
    {
        return Ok(found);
    }
    let candidates: Vec<&TensorSig> = list.iter().filter(|t| fits(t)).collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err("none has the expected shape".to_owned()),
        many => Err(format!(
            "{} candidates: {}",
            many.len(),
            many.iter()
                .map(|t| format!("`{}`", t.name))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Shape `[rows, cols]` of `linear.weight` in a sentence-transformers Dense safetensors file.
pub fn dense_shape(path: &Path) -> Result<(usize, usize)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("`{}` is not a safetensors file", path.display()))?;
    let weight = tensors.tensor("linear.weight").with_context(|| {
        format!(
            "`{}` has no `linear.weight` tensor (expected `2_Dense/model.safetensors` of a \
             sentence-transformers model); its tensors: {:?}",
            path.display(),
            tensors.names()
        )
    })?;
    ensure!(
        weight.dtype() == safetensors::Dtype::F32,
        "`linear.weight` in `{}` is {:?}: only F32 Dense weights are supported",
        path.display(),
        weight.dtype()
    );
    match weight.shape() {
        [rows, cols] if *rows > 0 && *cols > 0 => Ok((*rows, *cols)),
        other => bail!(
            "`linear.weight` in `{}` has shape {other:?}, expected [dimensions, hidden]",
            path.display()
        ),
    }
}

/// Runs the image graph once on a black image to learn a vector length the graph leaves dynamic.
fn probe_image_dimensions(session: &mut Session, sig: &ImageSignature, size: u32) -> Result<usize> {
    let side = size as usize;
    let pixels = Array4::<f32>::zeros((1, 3, side, side));
    let outputs = session
        .run(ort::inputs![sig.input.as_str() => Tensor::from_array(pixels)?])
        .context("the image encoder fails on a blank image")?;
    let (shape, _) = outputs[sig.output.as_str()]
        .try_extract_tensor::<f32>()
        .with_context(|| format!("cannot read the image output `{}`", sig.output))?;
    match **shape {
        [1, d] if d > 0 => Ok(d as usize),
        ref other => bail!(
            "the image output `{}` has shape {other:?} for one image, expected [1, D]",
            sig.output
        ),
    }
}

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
    smoke_test(&staged.staging.dir, staged.manifest.dimensions)
        .await
        .context(
            "the new bundle failed its smoke test (one text, one image); nothing was written",
        )?;
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

    let mut image_session = super::runtime::open_session(&spec.image_onnx, 1)
        .context("cannot open the image encoder")?;
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
    let text = text_signature(&text_graph, spec.dense.is_some(), &spec.overrides)
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
    TextTokenizer::load(&spec.tokenizer, spec.max_seq_len)?;

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
        text: TextEncoder {
            onnx: TEXT_FILE.to_owned(),
            input_ids: text.input_ids,
            attention_mask: text.attention_mask,
            output: text.output,
            pooling: text.pooling,
            dense: spec.dense.as_ref().map(|_| DENSE_FILE.to_owned()),
        },
        preprocess: Preprocess {
            size,
            ..Preprocess::default()
        },
    })
}

/// `None`: no manifest in `out` (an error if `out` holds other files); `Some(Err)`: a manifest
/// that does not load.
fn existing_bundle(out: &Path) -> Result<Option<Result<Bundle>>> {
    let manifest = out.join(MANIFEST);
    if manifest.is_file() {
        return Ok(Some(Bundle::load(out)));
    }
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            ensure!(
                entries.next().is_none(),
                "`{}` is not empty and holds no `{MANIFEST}`: choose a new or empty directory",
                out.display()
            );
            Ok(None)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read `{}`", out.display())),
    }
}

/// Same manifest and the same bytes in every file (hard links are recognised without reading).
fn same_bundle(
    existing: &Bundle,
    manifest: &Manifest,
    sources: &[(&str, PathBuf)],
) -> Result<bool> {
    if &existing.manifest != manifest {
        return Ok(false);
    }
    for (name, source) in sources {
        if !same_bytes(&existing.path(name), source)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let meta =
        |p: &Path| std::fs::metadata(p).with_context(|| format!("cannot read `{}`", p.display()));
    let (ma, mb) = (meta(a)?, meta(b)?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if ma.dev() == mb.dev() && ma.ino() == mb.ino() {
            return Ok(true);
        }
    }
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .with_context(|| format!("cannot open `{}`", p.display()))
    };
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// A hard link costs no space and no time (the hub cache and the bundle share the bytes);
/// across file systems it falls back to a copy.
fn link_or_copy(source: &Path, target: &Path) -> Result<()> {
    if std::fs::hard_link(source, target).is_ok() {
        return Ok(());
    }
    std::fs::copy(source, target).map(|_| ()).with_context(|| {
        format!(
            "cannot copy `{}` to `{}`",
            source.display(),
            target.display()
        )
    })
}

/// A scratch directory beside the target (same file system, so the final moves are renames),
/// removed on drop whatever happened.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(out: &Path) -> Result<Staging> {
        let name = out
            .file_name()
            .ok_or_else(|| anyhow!("`{}` is not a directory name", out.display()))?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create `{}`", parent.display()))?;
        let dir = parent.join(format!(
            ".{}.staging-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        // A leftover from a killed run of this same process id is ours to discard.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
        Ok(Staging { dir })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Moves the staged files into `out`. The old manifest goes first and the new one last, so an
/// interrupted install leaves a directory that refuses to load rather than a mixed bundle.
fn install(
    staging: &Path,
    out: &Path,
    sources: &[(&str, PathBuf)],
    old: Option<&Manifest>,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create `{}`", out.display()))?;
    let manifest = out.join(MANIFEST);
    if manifest.exists() {
        std::fs::remove_file(&manifest)
            .with_context(|| format!("cannot remove the old `{}`", manifest.display()))?;
    }
    let names: Vec<&str> = sources.iter().map(|(name, _)| *name).collect();
    for name in names.iter().copied().chain([MANIFEST]) {
        let (from, to) = (staging.join(name), out.join(name));
        std::fs::rename(&from, &to)
            .with_context(|| format!("cannot move `{}` to `{}`", from.display(), to.display()))?;
    }
    // Only our own fixed names are removed (e.g. the Dense weights when form b becomes form a):
    // a hand-written manifest may have named files the user keeps for other reasons.
    if let Some(old) = old {
        let old_names = manifest_files(old);
        for stale in [IMAGE_FILE, TEXT_FILE, TOKENIZER_FILE, DENSE_FILE] {
            if !names.contains(&stale) && old_names.contains(&stale) {
                let _ = std::fs::remove_file(out.join(stale));
            }
        }
    }
    Ok(())
}

fn manifest_files(m: &Manifest) -> Vec<&str> {
    let mut names = vec![
        m.image.onnx.as_str(),
        m.text.onnx.as_str(),
        m.tokenizer.as_str(),
    ];
    names.extend(m.text.dense.as_deref());
    names
}

/// One text and one tiny image through the real engine: a bundle that passes serves.
async fn smoke_test(dir: &Path, dimensions: usize) -> Result<()> {
    let image = tiny_png()?;
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

/// An 8×8 colour gradient PNG, made here so the check needs no file.
fn tiny_png() -> Result<Vec<u8>> {
    let image =
        image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 32, y as u8 * 32, 128]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .context("cannot encode the smoke-test image")?;
    Ok(bytes.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use TensorElementType::{Float32, Int32, Int64, Uint8};

    fn t(name: &str, elem: TensorElementType, dims: &[i64]) -> TensorSig {
        TensorSig {
            name: name.to_owned(),
            elem: Some(elem),
            dims: dims
                .iter()
                .map(|&d| {
                    if d < 0 {
                        Dim::Dynamic("batch".into())
                    } else {
                        Dim::Fixed(d)
                    }
                })
                .collect(),
        }
    }

    fn graph(inputs: Vec<TensorSig>, outputs: Vec<TensorSig>) -> GraphSig {
        GraphSig { inputs, outputs }
    }

    fn none() -> TensorOverrides {
        TensorOverrides::default()
    }

    fn err_text(r: Result<impl fmt::Debug>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    fn vision() -> GraphSig {
        graph(
            vec![t("pixel_values", Float32, &[-1, 3, 224, 224])],
            vec![
                t("last_hidden_state", Float32, &[-1, 50, 768]),
                t("image_embeds", Float32, &[-1, 512]),
            ],
        )
    }

    fn token_inputs(elem: TensorElementType) -> Vec<TensorSig> {
        vec![
            t("input_ids", elem, &[-1, -1]),
            t("attention_mask", elem, &[-1, -1]),
        ]
    }

    #[test]
    fn published_vision_export_is_read_whole() {
        let sig = image_signature(&vision(), &none()).unwrap();
        assert_eq!(
            sig,
            ImageSignature {
                input: "pixel_values".into(),
                output: "image_embeds".into(),
                size: Some(224),
                dimensions: Some(512),
            }
        );
        assert_eq!(
            vision().inputs[0].to_string(),
            "pixel_values f32 [batch, 3, 224, 224]"
        );
    }

    #[test]
    fn unnamed_image_tensors_are_found_by_shape() {
        let g = graph(
            vec![t("image", Float32, &[-1, 3, -1, -1])],
            vec![t("output", Float32, &[-1, -1])],
        );
        let sig = image_signature(&g, &none()).unwrap();
        assert_eq!(
            (sig.input.as_str(), sig.output.as_str()),
            ("image", "output")
        );
        assert_eq!((sig.size, sig.dimensions), (None, None));
    }

    #[test]
    fn unsupported_image_graphs_say_why() {
        let nhwc = graph(
            vec![t("image", Uint8, &[-1, 224, 224, 3])],
            vec![t("embedding", Float32, &[-1, 512])],
        );
        assert!(err_text(image_signature(&nhwc, &none())).contains("raw uint8 pixels"));
        let nhwc_float = graph(
            vec![t("image", Float32, &[-1, 224, 224, 3])],
            vec![t("embedding", Float32, &[-1, 512])],
        );
        assert!(err_text(image_signature(&nhwc_float, &none())).contains("channels-last"));
        let two_tower = graph(
            {
                let mut v = vec![t("pixel_values", Float32, &[-1, 3, 224, 224])];
                v.extend(token_inputs(Int64));
                v
            },
            vec![t("image_embeds", Float32, &[-1, 512])],
        );
        assert!(err_text(image_signature(&two_tower, &none())).contains("vision-only export"));
        let two_outputs = graph(
            vec![t("x", Float32, &[-1, 3, 224, 224])],
            vec![t("a", Float32, &[-1, 512]), t("b", Float32, &[-1, 512])],
        );
        let err = err_text(image_signature(&two_outputs, &none()));
        assert!(
            err.contains("2 candidates: `a`, `b`") && err.contains("--image-output"),
            "{err}"
        );
        let over = TensorOverrides {
            image_output: Some("b".into()),
            ..none()
        };
        assert_eq!(image_signature(&two_outputs, &over).unwrap().output, "b");
        let wrong = TensorOverrides {
            image_input: Some("pixels".into()),
            ..none()
        };
        let err = err_text(image_signature(&two_outputs, &wrong));
        assert!(
            err.contains("no input `pixels`") && err.contains("`x f32 [batch, 3, 224, 224]`"),
            "{err}"
        );
    }

    #[test]
    fn text_forms_pick_their_outputs() {
        let st_export = graph(
            token_inputs(Int64),
            vec![t("last_hidden_state", Float32, &[-1, -1, 768])],
        );
        let b = text_signature(&st_export, true, &none()).unwrap();
        assert_eq!(
            (b.output.as_str(), b.pooling, b.width),
            ("last_hidden_state", TextPooling::Mean, Some(768))
        );
        let optimum = graph(
            token_inputs(Int64),
            vec![
                t("token_embeddings", Float32, &[-1, -1, 768]),
                t("sentence_embedding", Float32, &[-1, 512]),
            ],
        );
        let a = text_signature(&optimum, false, &none()).unwrap();
        assert_eq!(
            (a.output.as_str(), a.pooling, a.width),
            ("sentence_embedding", TextPooling::None, Some(512))
        );
        assert_eq!(
            text_signature(&optimum, true, &none()).unwrap().output,
            "token_embeddings"
        );
    }

    #[test]
    fn text_form_mismatches_point_at_dense() {
        let pooled = graph(
            token_inputs(Int64),
            vec![t("text_embeds", Float32, &[-1, 512])],
        );
        assert!(err_text(text_signature(&pooled, true, &none())).contains("drop --dense"));
        let states = graph(
            token_inputs(Int64),
            vec![t("last_hidden_state", Float32, &[-1, -1, 768])],
        );
        let err = err_text(text_signature(&states, false, &none()));
        assert!(
            err.contains("pass the Dense projection with --dense"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_text_inputs_are_named() {
        let int32 = graph(
            token_inputs(Int32),
            vec![t("text_embeds", Float32, &[-1, 512])],
        );
        let err = err_text(text_signature(&int32, false, &none()));
        assert!(
            err.contains("input_ids i32") && err.contains("int64"),
            "{err}"
        );
        let token_types = graph(
            vec![t("token_type_ids", Int64, &[-1, -1])],
            vec![t("text_embeds", Float32, &[-1, 512])],
        );
        let err = err_text(text_signature(&token_types, false, &none()));
        assert!(
            err.contains("no `input_ids` input") && err.contains("token_type_ids i64"),
            "{err}"
        );
        let bert = graph(
            {
                let mut v = token_inputs(Int64);
                v.push(t("token_type_ids", Int64, &[-1, -1]));
                v
            },
            vec![t("text_embeds", Float32, &[-1, 512])],
        );
        let err = err_text(text_signature(&bert, false, &none()));
        assert!(err.contains("also requires `token_type_ids"), "{err}");
    }
}
