//! Elasticsearch side of Sightline: everything the `setup`, `ingest` and `search` commands send to
//! a cluster, through the official `elasticsearch` crate.
//!
//! One concern per file:
//! - `client.rs`: connection flags, authentication, CA certificate, turning ES error bodies into
//!   readable errors;
//! - `version.rs`: parsing the version from `GET /` and deciding what the cluster can do (which
//!   inference service, which `index_options`, whether `chunking_settings: none` exists);
//! - `assets.rs`: the request bodies in `es-config/` and `ingest-pipelines/`, compiled in, and
//!   their templating with the model's dimensions, similarity and the chosen ids;
//! - `model_info.rs`: the sidecar's `GET /info`, which says what to put in those bodies;
//! - `setup.rs`: the idempotent plan (endpoint, pipelines, templates, index, verification) that
//!   `setup` applies or prints for the Kibana console;
//! - `image.rs`: reading an image file into what Elasticsearch receives (payload, thumbnail, size);
//! - `local.rs`: `--embed-locally`, the engine behind a small trait;
//! - `ingest.rs`: walking folders, building documents, `_bulk` with retries and a failures file;
//! - `search.rs`: the kNN request with `query_vector_builder` and the printed hits.
//!
//! The numbers in comments such as "contract §7" refer to `shared/es-contract.md`.

pub mod assets;
pub mod client;
pub mod image;
pub mod ingest;
pub mod local;
pub mod model_info;
pub mod search;
pub mod setup;
pub mod version;

/// Default id of the inference endpoint `setup` creates and `search` queries through.
pub const DEFAULT_INFERENCE_ID: &str = "sightline-clip";
/// Default name of the image index.
pub const DEFAULT_INDEX: &str = "images";
/// Field that holds the image vector; dotted so that the `model_id` the inference processor
/// writes next to it stays inside `ml` (contract §7).
pub const VECTOR_FIELD: &str = "ml.image_vector";
/// Field that carries the base64 image into the pipeline; the pipeline removes it.
pub const IMAGE_FIELD: &str = "image_b64";
/// `semantic_text` field used by the 8.19+/9.1+ variant.
pub const SEMANTIC_FIELD: &str = "image_semantic";

/// Name of the index that the pipelines redirect failed documents to.
pub fn failed_index_name(index: &str) -> String {
    format!("{index}-failed")
}

/// Name of the ingest pipeline that embeds with the `inference` processor.
pub fn pipeline_name(index: &str) -> String {
    format!("sightline-{index}")
}

/// Name of the ingest pipeline of the `semantic_text` variant.
pub fn semantic_pipeline_name(index: &str) -> String {
    format!("sightline-{index}-semantic")
}

/// Name of the index template of the image index.
pub fn template_name(index: &str) -> String {
    format!("sightline-{index}")
}

/// Name of the index template of the failed-documents index.
pub fn failed_template_name(index: &str) -> String {
    format!("sightline-{index}-failed")
}
