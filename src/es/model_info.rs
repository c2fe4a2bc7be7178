//! The sidecar's `GET /info` ([`ModelInfo`], the engine's type): fetching it and checking that the
//! model name, vector length and similarity are ones the inference endpoint, the index mapping and
//! the verification in `setup` can agree with. Fetched with plain reqwest, since the sidecar is
//! not Elasticsearch.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use elasticsearch::http::StatusCode;
use elasticsearch::indices::IndicesGetMappingParts;
use elasticsearch::Elasticsearch;

use super::client::call;
use super::mode::Mode;
use crate::engine::{ModelInfo, ServerInfo, Similarity};

/// `dense_vector` accepts at most 4096 dimensions.
const MAX_DIMS: usize = 4096;

/// Checks that a model's info makes sense before it is written into a cluster. Every
/// [`Similarity`] is one both an inference endpoint and a `dense_vector` mapping accept
/// (contract §8: endpoints cannot produce `max_inner_product`).
pub(crate) fn validate(info: &ModelInfo) -> Result<()> {
    if info.dimensions == 0 || info.dimensions > MAX_DIMS {
        bail!(
            "the sidecar reports {} dimensions; dense_vector supports 1 to {MAX_DIMS}",
            info.dimensions
        );
    }
    if info.similarity == Similarity::DotProduct && !info.normalized {
        bail!("the sidecar reports dot_product similarity but unnormalised vectors; Elasticsearch rejects non-unit vectors with dot_product");
    }
    if !info.modalities.is_empty() && !info.modalities.iter().any(|m| m == "image") {
        bail!(
            "the sidecar's model does not embed images (modalities: {:?})",
            info.modalities
        );
    }
    Ok(())
}

/// What `setup` (or `reindex`) recorded in an index's mapping `_meta`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct IndexRecord {
    /// `_meta.model_fingerprint`: the model whose vectors the index holds.
    pub(crate) fingerprint: Option<String>,
    /// `_meta.mode`: how vectors reach the index.
    pub(crate) mode: Option<Mode>,
}

/// The [`IndexRecord`] of `index` (an index or an alias); empty when the index does not exist
/// or predates the records.
pub(crate) async fn read_index_record(client: &Elasticsearch, index: &str) -> Result<IndexRecord> {
    let request = format!("GET {index}/_mapping");
    let indices = [index];
    let namespace = client.indices();
    let get = namespace.get_mapping(IndicesGetMappingParts::Index(&indices));
    match call::<serde_json::Value>(&request, get.send()).await {
        Ok(mapping) => Ok(IndexRecord {
            fingerprint: recorded_fingerprint(&mapping),
            mode: recorded_mode(&mapping),
        }),
        Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => Ok(IndexRecord::default()),
        Err(err) => Err(err.into()),
    }
}

fn recorded_mode(mapping: &serde_json::Value) -> Option<Mode> {
    mapping.as_object()?.values().find_map(|index| {
        index
            .pointer("/mappings/_meta/mode")
            .and_then(serde_json::Value::as_str)
            .and_then(|mode| mode.parse::<Mode>().ok())
    })
}

/// `_meta.model_fingerprint` of each index in a `GET <index>/_mapping` answer that records one.
pub(crate) fn recorded_fingerprint(mapping: &serde_json::Value) -> Option<String> {
    mapping.as_object()?.values().find_map(|index| {
        index
            .pointer(&format!("/mappings/_meta/{}", crate::es::FINGERPRINT_FIELD))
            .and_then(serde_json::Value::as_str)
            .filter(|fp| !fp.is_empty())
            .map(str::to_owned)
    })
}

/// Refuses to mix vectors of two models in one index: the index recorded `recorded` at setup,
/// the sidecar (or local engine) serves `serving`. Either unknown (an index from before
/// fingerprints, a model given by flags) passes.
pub(crate) fn check_same_model(
    index: &str,
    recorded: Option<&str>,
    serving: &ModelInfo,
) -> Result<()> {
    match recorded {
        Some(recorded) if !serving.fingerprint.is_empty() && recorded != serving.fingerprint => bail!(
            "index {index} holds vectors of the model with fingerprint {recorded}, but the sidecar serves {} with fingerprint {}; vectors of two models are not comparable: serve the index's model again, or use another --index (and run setup for it)",
            serving.name,
            serving.fingerprint
        ),
        _ => Ok(()),
    }
}

/// `<sidecar>/info`.
pub(crate) fn info_url(sidecar_url: &str) -> String {
    format!("{}/info", sidecar_url.trim_end_matches('/'))
}

/// Fetches and validates `/info`.
pub(crate) async fn fetch(
    url: &str,
    api_key: Option<&str>,
    wanted: Option<&str>,
) -> Result<ModelInfo> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build an HTTP client")?;
    let mut request = client.get(url);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.with_context(|| {
        format!("cannot reach the sidecar at {url}; is `sightline serve` running there?")
    })?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("GET {url}: the sidecar answered {status}: {}", body.trim());
    }
    let info: ServerInfo = response.json().await.with_context(|| {
        format!("GET {url}: the answer is not the /info JSON Sightline expects")
    })?;
    let info = info
        .select(wanted)
        .map_err(|message| anyhow::anyhow!("GET {url}: {message}"))?;
    validate(&info).with_context(|| format!("GET {url}"))?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        serde_json::from_value(serde_json::json!({
            "model": "clip-ViT-B-32-multilingual-v1", "dimensions": 512, "normalized": true,
            "similarity": "dot_product", "modalities": ["image", "text"], "max_seq_len": 128,
            "version": "0.1.0", "fingerprint": "sha256:00"
        }))
        .unwrap()
    }

    #[test]
    fn accepts_the_documented_answer() {
        validate(&info()).unwrap();
    }

    #[test]
    fn refuses_answers_es_would_choke_on() {
        let mut unnormalised = info();
        unnormalised.normalized = false;
        assert!(validate(&unnormalised).is_err());
        let mut wide = info();
        wide.dimensions = 5000;
        assert!(validate(&wide).is_err());
        let inner = serde_json::from_value::<ModelInfo>(serde_json::json!({
            "model": "m", "dimensions": 512, "normalized": true, "similarity": "max_inner_product"
        }));
        assert!(inner.is_err());
        let mut text_only = info();
        text_only.modalities = vec!["text".to_owned()];
        assert!(validate(&text_only).is_err());
    }

    #[test]
    fn two_models_in_one_index_are_refused_naming_both() {
        let mapping = serde_json::json!({"photos": {"mappings": {"_meta": {"model_fingerprint": "sha256:old"}}}});
        let recorded = recorded_fingerprint(&mapping);
        assert_eq!(recorded.as_deref(), Some("sha256:old"));
        let mut served = info();
        served.fingerprint = "sha256:new".to_owned();
        let err = check_same_model("photos", recorded.as_deref(), &served)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sha256:old") && err.contains("sha256:new"),
            "{err}"
        );
        served.fingerprint = "sha256:old".to_owned();
        check_same_model("photos", recorded.as_deref(), &served).unwrap();
        assert_eq!(
            recorded_fingerprint(&serde_json::json!({"photos": {"mappings": {}}})),
            None
        );
    }

    #[test]
    fn info_url_drops_trailing_slash() {
        assert_eq!(info_url("http://s:8080/"), "http://s:8080/info");
    }
}
