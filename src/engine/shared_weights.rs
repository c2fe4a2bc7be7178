//! One copy of a model's weights for all its sessions (issue 15 §3). Each image lane is an ONNX
//! Runtime session of the same file, and each session would deserialise every initializer into
//! memory of its own (+350 MB per extra fp32 ViT-B/32 lane). Here the initializers are read
//! from the ONNX file once, as ONNX Runtime tensors, and handed to every session with
//! `AddInitializer`: a session then uses the caller's tensor instead of making one.
//!
//! Prepacking is off in such sessions. A session alone re-lays out each matrix for its kernels
//! and frees the original; a shared original belongs to the caller and stays, so the packed
//! forms (shared or not, through the prepacked-weights container) would be a second full copy.
//! Measured (README, "Memory per image lane"): 2 lanes hold 1.03× the memory of one this way,
//! against 1.4× with a prepacked copy per lane, for 2-12 % fewer images/s (README);
//! `--per-lane-weights` chooses the copies.
//!
//! Only the protobuf fields that locate an initializer are declared (prost skips the rest). A
//! tensor stored another way (external data, a type not in [`tensor`]) is left to ONNX
//! Runtime, which loads it per session as before.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use ort::session::builder::SessionBuilder;
use ort::value::{DynValue, Tensor};
use prost::Message;

/// `onnx.ModelProto`, only its graph.
#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

/// `onnx.GraphProto`, only its initializers.
#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

/// `onnx.TensorProto`: what locates and types its data.
#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "bytes", tag = "9")]
    raw_data: Bytes,
    /// `DataLocation`: 0 in the file, 1 external.
    #[prost(int32, tag = "14")]
    data_location: i32,
}

/// The initializers the sessions of one model share.
pub(crate) struct SharedWeights {
    tensors: Vec<(String, Arc<DynValue>)>,
}

impl SharedWeights {
    /// Reads `model`'s initializers. Call after `runtime::init` (they are ONNX Runtime values).
    pub(crate) fn read(model: &Path) -> Result<SharedWeights> {
        let bytes = std::fs::read(model)
            .with_context(|| format!("cannot read the ONNX model `{}`", model.display()))?;
        let proto = ModelProto::decode(Bytes::from(bytes))
            .with_context(|| format!("`{}` is not an ONNX model", model.display()))?;
        let tensors = proto
            .graph
            .map(|g| g.initializer)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| match tensor(&t) {
                Ok(Some(value)) => Some(Ok((t.name, Arc::new(value)))),
                Ok(None) => None,
                Err(e) => Some(Err(e.context(format!("initializer `{}`", t.name)))),
            })
            .collect::<Result<_>>()
            .with_context(|| format!("cannot read the weights of `{}`", model.display()))?;
        Ok(SharedWeights { tensors })
    }

    /// Gives every shared tensor to the session `builder` opens, with prepacking off.
    pub(crate) fn add_to(&self, mut builder: SessionBuilder) -> Result<SessionBuilder> {
        for (name, value) in &self.tensors {
            builder = builder
                .with_initializer(name, value.clone())
                .map_err(|e| anyhow::anyhow!("cannot share the initializer `{name}`: {e}"))?;
        }
        builder
            .with_prepacking(false)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Tensors shared, and holders of the first (this set plus one per open session).
    #[cfg(test)]
    pub(crate) fn holders(&self) -> (usize, usize) {
        let first = self
            .tensors
            .first()
            .map_or(0, |(_, v)| Arc::strong_count(v));
        (self.tensors.len(), first)
    }
}

/// `t` as an ONNX Runtime tensor, or `None` where ONNX Runtime is left to load it: external
/// data, typed data fields instead of `raw_data`, or an element type not listed.
fn tensor(t: &TensorProto) -> Result<Option<DynValue>> {
    if t.data_location != 0 || (t.raw_data.is_empty() && !t.dims.contains(&0)) {
        return Ok(None);
    }
    let dims = t.dims.clone();
    let raw = &t.raw_data[..];
    // `TensorProto.DataType`; raw data is little-endian.
    let value = match t.data_type {
        1 => Tensor::from_array((dims, elements(raw, f32::from_le_bytes)?))?.into_dyn(),
        2 => Tensor::from_array((dims, raw.to_vec()))?.into_dyn(),
        3 => Tensor::from_array((dims, elements(raw, i8::from_le_bytes)?))?.into_dyn(),
        6 => Tensor::from_array((dims, elements(raw, i32::from_le_bytes)?))?.into_dyn(),
        7 => Tensor::from_array((dims, elements(raw, i64::from_le_bytes)?))?.into_dyn(),
        _ => return Ok(None),
    };
    Ok(Some(value))
}

/// `raw` read as little-endian `N`-byte elements.
fn elements<T, const N: usize>(raw: &[u8], read: fn([u8; N]) -> T) -> Result<Vec<T>> {
    anyhow::ensure!(
        raw.len() % N == 0,
        "{} bytes of raw data are not a whole number of {N}-byte elements",
        raw.len()
    );
    Ok(raw
        .chunks_exact(N)
        .map(|c| read(c.try_into().expect("chunks of N bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(data_type: i32, dims: Vec<i64>, raw: &[u8]) -> TensorProto {
        TensorProto {
            dims,
            data_type,
            name: "w".into(),
            raw_data: Bytes::copy_from_slice(raw),
            data_location: 0,
        }
    }

    #[test]
    fn raw_little_endian_data_becomes_a_tensor_of_its_type_and_shape() {
        super::super::runtime::init().unwrap();
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let value = tensor(&proto(1, vec![1, 2], &raw))
            .unwrap()
            .expect("f32 is shared");
        let (shape, data) = value.try_extract_tensor::<f32>().unwrap();
        assert_eq!((&shape[..], data), (&[1i64, 2][..], &[1.5f32, -2.0][..]));
        let value = tensor(&proto(7, vec![1], &9i64.to_le_bytes()))
            .unwrap()
            .unwrap();
        assert_eq!(value.try_extract_tensor::<i64>().unwrap().1, [9]);
    }

    #[test]
    fn tensors_stored_otherwise_are_left_to_onnx_runtime_and_bad_sizes_are_errors() {
        super::super::runtime::init().unwrap();
        let external = TensorProto {
            data_location: 1,
            ..proto(1, vec![1], &[0; 4])
        };
        assert!(tensor(&external).unwrap().is_none(), "external data");
        assert!(
            tensor(&proto(1, vec![2], &[])).unwrap().is_none(),
            "typed fields"
        );
        assert!(
            tensor(&proto(10, vec![1], &[0; 2])).unwrap().is_none(),
            "float16"
        );
        let err = tensor(&proto(1, vec![1], &[0; 3])).unwrap_err();
        assert!(err.to_string().contains("3 bytes"), "{err}");
    }
}
