//! One copy of a model's weights for all its sessions. Each image lane is an ONNX Runtime
//! session of the same file, and each session would deserialise every initializer into memory
//! of its own (+350 MB per extra fp32 ViT-B/32 lane). Here the initializers are read from the
//! ONNX file once, as ONNX Runtime tensors, and handed to every session with `AddInitializer`
//! (`SessionBuilder::with_initializer`): a session then uses the caller's tensor instead of
//! making one. ONNX Runtime also keeps the prepacked form of a matrix in the shared
//! prepacked-weights container only for initializers shared this way, so with both the lanes
//! share the packed copies too.
//!
//! Only the parts of the ONNX protobuf that locate initializers are read (`ModelProto.graph`,
//! `GraphProto.initializer`, a tensor's name, type, dims and `raw_data`): no protobuf crate for
//! five fields. A tensor stored any other way (typed fields, external data, segments, a type
//! not listed in [`tensor`]) is left to ONNX Runtime, which loads it per session as before.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ort::session::builder::SessionBuilder;
use ort::value::{DynValue, Tensor};

/// The shareable initializers of one ONNX file.
pub(crate) struct SharedInitializers {
    tensors: Vec<(String, Arc<DynValue>)>,
}

impl SharedInitializers {
    /// Reads `model`'s initializers. Call after `runtime::init` (they are ONNX Runtime values).
    pub(crate) fn read(model: &Path) -> Result<SharedInitializers> {
        let bytes = std::fs::read(model)
            .with_context(|| format!("cannot read the ONNX model `{}`", model.display()))?;
        let tensors = initializers(&bytes)
            .with_context(|| format!("cannot read the initializers of `{}`", model.display()))?
            .into_iter()
            .filter_map(|t| Some(tensor(&t).transpose()?.map(|v| (t.name.to_owned(), Arc::new(v)))))
            .collect::<Result<_>>()?;
        Ok(SharedInitializers { tensors })
    }

    /// Gives every shared tensor to the session `builder` will open.
    pub(crate) fn add_to(&self, mut builder: SessionBuilder) -> Result<SessionBuilder> {
        for (name, value) in &self.tensors {
            builder = builder
                .with_initializer(name, value.clone())
                .map_err(|e| anyhow::anyhow!("cannot share the initializer `{name}`: {e}"))?;
        }
        Ok(builder)
    }

    /// How many tensors are shared, and how many holders the first one has (this set plus one
    /// per open session): what the tests observe.
    #[cfg(test)]
    pub(crate) fn holders(&self) -> (usize, usize) {
        let first = self.tensors.first().map_or(0, |(_, v)| Arc::strong_count(v));
        (self.tensors.len(), first)
    }
}

/// An initializer as the file stores it.
#[derive(Debug, Default, PartialEq)]
struct RawTensor<'a> {
    name: &'a str,
    dims: Vec<i64>,
    data_type: u64,
    raw_data: Option<&'a [u8]>,
    /// Typed data fields, segments or external data: not shared.
    stored_otherwise: bool,
}

/// `ModelProto.graph` (7) → `GraphProto.initializer` (5), each a `TensorProto`.
fn initializers(model: &[u8]) -> Result<Vec<RawTensor<'_>>> {
    let mut out = Vec::new();
    for field in Fields(model) {
        if let (7, Wire::Bytes(graph)) = field? {
            for field in Fields(graph) {
                if let (5, Wire::Bytes(tensor)) = field? {
                    out.push(raw_tensor(tensor)?);
                }
            }
        }
    }
    Ok(out)
}

/// `TensorProto`: dims (1, packed or not), data_type (2), name (8), raw_data (9); segment (3),
/// the typed data fields (4–7, 10, 11) and external data (13, 14) mark it as stored otherwise.
fn raw_tensor(bytes: &[u8]) -> Result<RawTensor<'_>> {
    let mut t = RawTensor::default();
    for field in Fields(bytes) {
        match field? {
            (1, Wire::Varint(d)) => t.dims.push(d as i64),
            (1, Wire::Bytes(mut packed)) => {
                while !packed.is_empty() {
                    t.dims.push(varint(&mut packed)? as i64);
                }
            }
            (2, Wire::Varint(v)) => t.data_type = v,
            (8, Wire::Bytes(name)) => {
                t.name = std::str::from_utf8(name).context("an initializer name is not UTF-8")?
            }
            (9, Wire::Bytes(raw)) => t.raw_data = Some(raw),
            (3..=7 | 10 | 11 | 13, _) => t.stored_otherwise = true,
            (14, Wire::Varint(location)) => t.stored_otherwise |= location != 0,
            _ => {}
        }
    }
    Ok(t)
}

/// The tensor ONNX Runtime would build from `t`, or `None` when it is not shared.
fn tensor(t: &RawTensor<'_>) -> Result<Option<DynValue>> {
    let Some(raw) = t.raw_data.filter(|_| !t.stored_otherwise && !t.name.is_empty()) else {
        return Ok(None);
    };
    let elements = t.dims.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
    });
    // An empty tensor has no buffer to share.
    let Some(elements) = elements.filter(|&n| n > 0) else {
        return Ok(None);
    };
    let dims = t.dims.clone();
    // TensorProto.DataType: FLOAT 1, UINT8 2, INT8 3, INT32 6, INT64 7 (all an encoder has).
    let value = match t.data_type {
        1 => typed(t.name, dims, raw, elements, f32::from_le_bytes)?,
        2 => typed(t.name, dims, raw, elements, u8::from_le_bytes)?,
        3 => typed(t.name, dims, raw, elements, i8::from_le_bytes)?,
        6 => typed(t.name, dims, raw, elements, i32::from_le_bytes)?,
        7 => typed(t.name, dims, raw, elements, i64::from_le_bytes)?,
        _ => return Ok(None),
    };
    Ok(Some(value))
}

/// Little-endian `raw_data` (the ONNX format's byte order) as a tensor of `T`.
fn typed<T, const N: usize>(
    name: &str,
    dims: Vec<i64>,
    raw: &[u8],
    elements: usize,
    from_le: fn([u8; N]) -> T,
) -> Result<DynValue>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
{
    if raw.len() != elements * N {
        bail!(
            "the initializer `{name}` holds {} bytes, but its shape {dims:?} needs {}",
            raw.len(),
            elements * N
        );
    }
    let data: Vec<T> = raw
        .chunks_exact(N)
        .map(|c| {
            let mut bytes = [0u8; N];
            bytes.copy_from_slice(c);
            from_le(bytes)
        })
        .collect();
    Ok(Tensor::from_array((dims, data))
        .map_err(|e| anyhow::anyhow!("cannot make the initializer `{name}` a tensor: {e}"))?
        .into_dyn())
}

/// One protobuf field's payload.
#[derive(Debug, PartialEq)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// fixed32 / fixed64: no field read here uses them.
    Fixed,
}

/// The fields of one protobuf message, in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = (|| {
            let key = varint(&mut self.0)?;
            let wire = match key & 7 {
                0 => Wire::Varint(varint(&mut self.0)?),
                1 => {
                    take(&mut self.0, 8)?;
                    Wire::Fixed
                }
                2 => {
                    let len = usize::try_from(varint(&mut self.0)?)?;
                    Wire::Bytes(take(&mut self.0, len)?)
                }
                5 => {
                    take(&mut self.0, 4)?;
                    Wire::Fixed
                }
                other => bail!("unsupported protobuf wire type {other}"),
            };
            Ok((key >> 3, wire))
        })();
        if field.is_err() {
            self.0 = &[]; // stop after the first error
        }
        Some(field)
    }
}

/// Splits `n` bytes off the front of `buf`.
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if buf.len() < n {
        bail!("the ONNX file is truncated");
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn varint(buf: &mut &[u8]) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let [byte, rest @ ..] = *buf else {
            bail!("the ONNX file is truncated");
        };
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("a protobuf varint is longer than 10 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(field: u64, wire: u64) -> u8 {
        (field << 3 | wire) as u8
    }

    fn bytes_field(field: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![key(field, 2), payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn varints_decode_and_truncation_is_an_error() {
        assert_eq!(varint(&mut &[0x96, 0x01][..]).unwrap(), 150);
        assert_eq!(varint(&mut &[0x07][..]).unwrap(), 7);
        assert!(varint(&mut &[0x96][..]).is_err());
        assert!(varint(&mut &[0xff; 11][..]).is_err());
    }

    #[test]
    fn initializers_are_found_in_the_graph_with_packed_and_unpacked_dims() {
        // TensorProto { dims: [2] (unpacked), dims: [3] (packed), data_type: 1, name: "w",
        // raw_data: 24 bytes }, inside GraphProto.initializer, inside ModelProto.graph.
        let raw: Vec<u8> = (1..=6).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let mut tensor = vec![key(1, 0), 2];
        tensor.extend(bytes_field(1, &[3]));
        tensor.extend([key(2, 0), 1]);
        tensor.extend(bytes_field(8, b"w"));
        tensor.extend(bytes_field(9, &raw));
        // A graph node (field 1) and the ir_version (field 1 of the model) are skipped.
        let mut graph = bytes_field(1, b"node");
        graph.extend(bytes_field(5, &tensor));
        let mut model = vec![key(1, 0), 8];
        model.extend(bytes_field(7, &graph));
        let found = initializers(&model).unwrap();
        assert_eq!(
            found,
            vec![RawTensor {
                name: "w",
                dims: vec![2, 3],
                data_type: 1,
                raw_data: Some(&raw),
                stored_otherwise: false,
            }]
        );
        assert!(initializers(&model[..model.len() - 1]).is_err());
    }

    #[test]
    fn tensors_stored_otherwise_are_left_to_onnx_runtime() {
        let t = |data_type, stored_otherwise, raw: &'static [u8]| RawTensor {
            name: "x",
            dims: vec![2],
            data_type,
            raw_data: Some(raw),
            stored_otherwise,
        };
        // A string tensor (8), external data, an empty tensor: not shared, no error.
        assert!(tensor(&t(8, false, b"ab")).unwrap().is_none());
        assert!(tensor(&t(2, true, b"ab")).unwrap().is_none());
        let empty = RawTensor {
            dims: vec![0, 4],
            ..t(1, false, b"")
        };
        assert!(tensor(&empty).unwrap().is_none());
        // A size that does not match the shape names the initializer.
        crate::engine::runtime::init().unwrap();
        let err = tensor(&t(1, false, b"abc")).unwrap_err().to_string();
        assert!(err.contains("`x` holds 3 bytes"), "{err}");
        assert!(tensor(&t(2, false, b"ab")).unwrap().is_some());
    }
}
