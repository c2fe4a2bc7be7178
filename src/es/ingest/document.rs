//! One image file as an Elasticsearch document: its `_id` (the content hash) and its fields,
//! following `es-config/index-template.json`.

use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use base64::Engine as _;

use crate::es::image::PreparedImage;
use crate::es::{FINGERPRINT_FIELD, IMAGE_FIELD};

/// Hex SHA-256 of the file content: the document `_id`.
pub(crate) fn content_id(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where the vector comes from, for [`build_document`].
pub(crate) enum DocumentVector<'a> {
    /// The pipeline embeds `image_b64`; `fingerprint` is the one the index recorded at setup.
    Pipeline { fingerprint: &'a str },
    /// A finished vector (vectors mode: from the sidecar or `--embed-locally`).
    Local {
        vector: &'a [f32],
        model: &'a str,
        fingerprint: &'a str,
        /// Send the vector as a base64 string (9.3+) instead of a float array.
        base64: bool,
        ingested_at_ms: u64,
    },
}

/// A `dense_vector` value as 9.3+ accepts it in a document: base64 of IEEE-754 float32,
/// big-endian (see `Cluster::accepts_base64_vectors`). 512 floats: 2 732 characters instead of
/// ≈ 5 700 as JSON numbers.
pub(crate) fn base64_vector(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_be_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The document for one image. Field names follow `es-config/index-template.json`.
pub(crate) fn build_document(
    path: &Path,
    id: &str,
    file_size: usize,
    image: &PreparedImage,
    vector: DocumentVector<'_>,
) -> Value {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut document = json!({
        "content_hash": id,
        "file_name": file_name,
        "path": path.to_string_lossy(),
        "format": image.format,
        "width": image.width,
        "height": image.height,
        "bytes": file_size,
        "thumbnail": image.thumbnail_base64(),
    });
    if let Some(object) = document.as_object_mut() {
        match vector {
            DocumentVector::Pipeline { fingerprint } => {
                object.insert(IMAGE_FIELD.to_owned(), Value::String(image.data_uri()));
                if !fingerprint.is_empty() {
                    object.insert(FINGERPRINT_FIELD.to_owned(), json!(fingerprint));
                }
            }
            DocumentVector::Local {
                vector,
                model,
                fingerprint,
                base64,
                ingested_at_ms,
            } => {
                let value = if base64 {
                    json!(base64_vector(vector))
                } else {
                    json!(vector)
                };
                object.insert(
                    "ml".to_owned(),
                    json!({"image_vector": value, "model_id": model}),
                );
                if !fingerprint.is_empty() {
                    object.insert(FINGERPRINT_FIELD.to_owned(), json!(fingerprint));
                }
                object.insert("ingested_at".to_owned(), json!(ingested_at_ms));
            }
        }
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::image::{prepare, ImageOptions};
    use crate::es::ingest::test_images::png_bytes;

    #[test]
    fn content_id_is_sha256_hex() {
        assert_eq!(
            content_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn pipeline_document_carries_the_image_and_metadata() {
        let bytes = png_bytes(5);
        let image = prepare(&bytes, ImageOptions::default()).unwrap();
        let id = content_id(&bytes);
        let document = build_document(
            Path::new("photos/cat.png"),
            &id,
            bytes.len(),
            &image,
            DocumentVector::Pipeline { fingerprint: "" },
        );
        assert_eq!(document["content_hash"], id.as_str());
        assert_eq!(document["file_name"], "cat.png");
        assert_eq!(document["path"], "photos/cat.png");
        assert_eq!(document["format"], "png");
        assert_eq!(document["width"], 8);
        assert_eq!(document["height"], 6);
        assert_eq!(document["bytes"], bytes.len());
        assert!(document[IMAGE_FIELD]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,"));
        assert!(document.get("ml").is_none());
        assert!(!document["thumbnail"].as_str().unwrap().is_empty());
    }

    #[test]
    fn local_document_carries_the_vector_not_the_image() {
        let bytes = png_bytes(6);
        let image = prepare(&bytes, ImageOptions::default()).unwrap();
        let vector = [0.6f32, 0.8];
        let document = build_document(
            Path::new("x.png"),
            "id",
            bytes.len(),
            &image,
            DocumentVector::Local {
                vector: &vector,
                model: "clip",
                fingerprint: "sha256:ab",
                base64: false,
                ingested_at_ms: 42,
            },
        );
        assert!(document.get(IMAGE_FIELD).is_none());
        assert_eq!(document["ml"]["model_id"], "clip");
        assert_eq!(document["ml"]["image_vector"].as_array().unwrap().len(), 2);
        assert_eq!(document["ingested_at"], 42);
        assert_eq!(document[FINGERPRINT_FIELD], "sha256:ab");
    }

    #[test]
    fn base64_vectors_are_big_endian_float32() {
        // 1.0f32 = 0x3F800000, 2.0 = 0x40000000: big-endian bytes 3F 80 00 00 40 00 00 00.
        assert_eq!(base64_vector(&[1.0, 2.0]), "P4AAAEAAAAA=");
        let bytes = png_bytes(7);
        let image = prepare(&bytes, ImageOptions::default()).unwrap();
        let document = build_document(
            Path::new("x.png"),
            "id",
            bytes.len(),
            &image,
            DocumentVector::Local {
                vector: &[1.0, 2.0],
                model: "clip",
                fingerprint: "",
                base64: true,
                ingested_at_ms: 1,
            },
        );
        assert_eq!(document["ml"]["image_vector"], "P4AAAEAAAAA=");
        assert!(document.get(FINGERPRINT_FIELD).is_none());
    }
}
