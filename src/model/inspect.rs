//! ONNX graph inspection: what a graph takes and returns ([`GraphSig`]), and which of its
//! tensors the engine will feed and read ([`image_signature`], [`text_signature`]).
//!
//! The picking rules are pure functions over [`GraphSig`], so they are unit-tested without ONNX
//! Runtime; only [`inspect`], [`GraphSig::from_session`] and [`probe_image_dimensions`] open a
//! session. Every refusal names the graph's tensors and what Sightline would need instead.

use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use ndarray::Array4;
use ort::session::Session;
use ort::value::{Outlet, Tensor, TensorElementType, ValueType};

use crate::engine::bundle::TextPooling;
use crate::engine::runtime::open_session;

/// Names the image input gets in published exports, in order of preference.
const IMAGE_INPUTS: &[&str] = &["pixel_values"];
const IMAGE_OUTPUTS: &[&str] = &["image_embeds"];
/// Pooled sentence embeddings: our own export (`text_embeds`), optimum's ST export.
const POOLED_OUTPUTS: &[&str] = &["text_embeds", "sentence_embedding"];
/// Token states: the transformers export, the sentence-transformers export.
const TOKEN_OUTPUTS: &[&str] = &["last_hidden_state", "token_embeddings"];
const INPUT_IDS: &str = "input_ids";
const ATTENTION_MASK: &str = "attention_mask";

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dim {
    Fixed(i64),
    /// Unknown until run time; the symbol the exporter gave it (may be empty).
    Dynamic(String),
}

/// A graph input or output: name, element type (`None` for non-tensor values) and shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorSig {
    pub(crate) name: String,
    pub(crate) elem: Option<TensorElementType>,
    pub(crate) dims: Vec<Dim>,
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
pub(crate) struct GraphSig {
    pub(crate) inputs: Vec<TensorSig>,
    pub(crate) outputs: Vec<TensorSig>,
}

impl GraphSig {
    pub(crate) fn from_session(session: &Session) -> GraphSig {
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
pub(crate) fn inspect(path: &Path) -> Result<GraphSig> {
    let session = open_session(path, 1)?;
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
pub(crate) struct ImageSignature {
    pub(crate) input: String,
    pub(crate) output: String,
    /// Square input size when the graph fixes it.
    pub(crate) size: Option<u32>,
    /// Vector length when the graph fixes it.
    pub(crate) dimensions: Option<usize>,
}

/// Picks the image input (the 4-D float input, `pixel_values` preferred) and output
/// (`image_embeds`, else the only 2-D float output).
pub(crate) fn image_signature(
    graph: &GraphSig,
    overrides: &TensorOverrides,
) -> Result<ImageSignature> {
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
pub(crate) struct TextSignature {
    pub(crate) input_ids: String,
    pub(crate) attention_mask: String,
    pub(crate) output: String,
    pub(crate) pooling: TextPooling,
    /// Last dimension of the output when fixed: the vector length (pooled) or the hidden size
    /// (token states).
    pub(crate) width: Option<usize>,
}

/// Checks the two int64 token inputs and picks the output: with Dense weights the 3-D token
/// states (`last_hidden_state`/`token_embeddings`, pooled by Sightline), without them the 2-D
/// sentence embedding (`text_embeds`/`sentence_embedding`).
pub(crate) fn text_signature(
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

/// What an open_clip text graph offers: one token input (int32 or int64 [N, C]) and the pooled,
/// normalised embedding [N, D]; the graph derives the attention mask from the pad id itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpenClipTextSignature {
    pub(crate) input: String,
    pub(crate) output: String,
    /// The sequence length when the graph fixes it.
    pub(crate) length: Option<usize>,
    pub(crate) width: Option<usize>,
}

pub(crate) fn open_clip_text_signature(graph: &GraphSig) -> Result<OpenClipTextSignature> {
    let [input] = graph.inputs.as_slice() else {
        bail!(
            "an open_clip text encoder takes one token input (`text`); this one takes {}",
            graph.describe_inputs()
        );
    };
    let ids = matches!(
        input.elem,
        Some(TensorElementType::Int32 | TensorElementType::Int64)
    );
    ensure!(
        ids && input.dims.len() == 2,
        "the text input `{input}` is not int32 or int64 [N, C] token ids"
    );
    let output = pick(&graph.outputs, &["embedding"], |t| t.dims.len() == 2).map_err(|why| {
        anyhow!(
            "cannot find the text embedding ({why}); the graph's outputs: {}",
            graph.describe_outputs()
        )
    })?;
    ensure!(
        output.is(TensorElementType::Float32, 2),
        "the text output `{output}` is not float32 [N, D]"
    );
    Ok(OpenClipTextSignature {
        input: input.name.clone(),
        output: output.name.clone(),
        length: match input.dims[1] {
            Dim::Fixed(n) if n > 0 => Some(n as usize),
            _ => None,
        },
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
pub(crate) fn dense_shape(path: &Path) -> Result<(usize, usize)> {
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
pub(crate) fn probe_image_dimensions(
    session: &mut Session,
    sig: &ImageSignature,
    size: u32,
) -> Result<usize> {
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
