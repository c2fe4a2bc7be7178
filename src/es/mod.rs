//! Elasticsearch side of Sightline: everything the `setup`, `ingest` and `search` commands send to
//! a cluster, through the official `elasticsearch` crate.
//!
//! One concern per file:
//! - `client.rs`: connection flags, authentication, CA certificate, and [`client::call`], the one
//!   way a request is sent and its answer parsed or turned into a readable, typed error;
//! - `body.rs`: serde types for the ES bodies Sightline reads (errors, `GET /`, `_bulk`, `_mget`);
//! - `version.rs`: parsing the version from `GET /` and deciding what the cluster can do (which
//!   inference service, which `index_options`, whether `chunking_settings: none` exists);
//! - `assets.rs`: the request bodies in `es-config/` and `ingest-pipelines/`, compiled in, and
//!   their templating with the model's dimensions, similarity and the chosen ids;
//! - `model_info.rs`: fetching and checking the sidecar's `GET /info` (the engine's
//!   `ModelInfo`), which says what to put in those bodies;
//! - `mode.rs`: `GET _license` and the choice between `pipeline` (the cluster calls the sidecar)
//!   and `vectors` (the CLI sends finished vectors), per licence and version;
//! - `setup.rs`: the idempotent plan (endpoint, pipelines, templates, index, verification) that
//!   `setup` applies or prints for the Kibana console;
//! - `image.rs`: reading an image file into what Elasticsearch receives (payload, thumbnail, size);
//! - `local.rs`: `--embed-locally`, the engine behind a small trait;
//! - `ingest/`: walking folders, building documents, `_bulk` with retries and a failures file;
//! - `reindex/`: `sightline reindex`, re-embedding an index with another model into a new index
//!   and moving the alias clients name onto it;
//! - `search.rs`: the kNN request with `query_vector_builder` and the printed hits.
//!
//! The numbers in comments such as "contract §7" refer to `shared/es-contract.md`.

pub(crate) mod assets;
pub(crate) mod body;
pub mod client;
pub mod image;
pub(crate) mod ingest;
pub(crate) mod local;
pub(crate) mod mode;
pub(crate) mod model_info;
pub(crate) mod reindex;
pub(crate) mod search;
pub(crate) mod setup;
pub(crate) mod version;

/// Default id of the inference endpoint `setup` creates and `search` queries through.
pub(crate) const DEFAULT_INFERENCE_ID: &str = "sightline-clip";
/// Id of the endpoint queries go through: the same sidecar, on its priority lane.
pub(crate) fn search_inference_id(inference_id: &str) -> String {
    format!("{inference_id}-search")
}

/// Keyword field holding the sidecar's model fingerprint in every document, and the key of the
/// same value in the mapping's `_meta`.
pub(crate) const FINGERPRINT_FIELD: &str = "model_fingerprint";

/// Default name of the image index.
pub(crate) const DEFAULT_INDEX: &str = "images";
/// Field that holds the image vector; dotted so that the `model_id` the inference processor
/// writes next to it stays inside `ml` (contract §7).
pub(crate) const VECTOR_FIELD: &str = "ml.image_vector";
/// Field that carries the base64 image into the pipeline; the pipeline removes it.
pub(crate) const IMAGE_FIELD: &str = "image_b64";
/// `semantic_text` field used by the 8.19+/9.1+ variant.
pub(crate) const SEMANTIC_FIELD: &str = "image_semantic";

/// Index names and endpoint ids allow only lowercase letters, digits and `-`: `Clip ViT/B` →
/// `clip-vit-b`.
pub(crate) fn slug(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    mapped
        .split('-')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// The physical index behind the alias `alias` for `model`: `<alias>-<model>-<fingerprint, 8
/// characters>` (`images-clip-vit-b-32-multilingual-v1-3f9a1c2b`), so that one alias can move
/// between the indices of two models without a name clash, and `GET _cat/indices` says which
/// model each holds. Without a fingerprint (a model given by flags): `<alias>-<model>`.
pub(crate) fn physical_index_name(alias: &str, model: &crate::engine::ModelInfo) -> String {
    let fingerprint = model
        .fingerprint
        .rsplit(':')
        .next()
        .map(slug)
        .unwrap_or_default();
    let short: String = fingerprint.chars().take(8).collect();
    let model = slug(&model.name);
    let model = if model.is_empty() {
        "model".to_owned()
    } else {
        model
    };
    if short.is_empty() {
        format!("{alias}-{model}")
    } else {
        format!("{alias}-{model}-{short}")
    }
}

/// Id of the inference endpoint `setup --model NAME` creates: `sightline-<NAME as a slug>`, so
/// endpoints of two models (and so two indices) live side by side.
pub(crate) fn model_inference_id(model: &str) -> String {
    format!("sightline-{}", slug(model))
}

/// Name of the index that the pipelines redirect failed documents to.
pub(crate) fn failed_index_name(index: &str) -> String {
    format!("{index}-failed")
}

/// Name of the ingest pipeline that embeds with the `inference` processor.
pub(crate) fn pipeline_name(index: &str) -> String {
    format!("sightline-{index}")
}

/// Name of the ingest pipeline of the `semantic_text` variant.
pub(crate) fn semantic_pipeline_name(index: &str) -> String {
    format!("sightline-{index}-semantic")
}

/// Name of the index template of the image index.
pub(crate) fn template_name(index: &str) -> String {
    format!("sightline-{index}")
}

/// Name of the index template of the failed-documents index.
pub(crate) fn failed_template_name(index: &str) -> String {
    format!("sightline-{index}-failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ModelInfo, Similarity};

    fn model(name: &str, fingerprint: &str) -> ModelInfo {
        ModelInfo {
            name: name.to_owned(),
            dimensions: 4,
            normalized: true,
            similarity: Similarity::DotProduct,
            modalities: Vec::new(),
            max_seq_len: 0,
            serving: None,
            fingerprint: fingerprint.to_owned(),
        }
    }

    #[test]
    fn physical_names_carry_model_and_short_fingerprint() {
        assert_eq!(
            slug("clip-ViT-B-32 / multilingual_v1"),
            "clip-vit-b-32-multilingual-v1"
        );
        assert_eq!(
            physical_index_name("images", &model("clip-ViT-B-32", "sha256:3F9A1C2B77")),
            "images-clip-vit-b-32-3f9a1c2b"
        );
        assert_eq!(
            physical_index_name("photos", &model("clip", "")),
            "photos-clip"
        );
        assert_eq!(
            physical_index_name("photos", &model("", "")),
            "photos-model"
        );
        assert_eq!(
            model_inference_id("XLM-Roberta base"),
            "sightline-xlm-roberta-base"
        );
    }
}
