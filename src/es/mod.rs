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
