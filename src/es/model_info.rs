//! The sidecar's `GET /info`: the model name, vector length and similarity that the inference
//! endpoint, the index mapping and the verification in `setup` must agree with. Fetched with
//! plain reqwest, since the sidecar is not Elasticsearch.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The part of `/info` the Elasticsearch side relies on. Other fields are ignored, so the
/// sidecar can grow its answer freely.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelInfo {
    pub model: String,
    pub dimensions: usize,
    pub similarity: String,
    /// Whether every vector is L2-normalised; `dot_product` is only valid if so (contract §8).
    #[serde(default)]
    pub normalized: bool,
    #[serde(default)]
    pub modalities: Vec<String>,
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// Similarities both an inference endpoint and a `dense_vector` mapping accept (contract §8:
/// endpoints cannot produce `max_inner_product`).
const SIMILARITIES: [&str; 3] = ["cosine", "dot_product", "l2_norm"];

/// `dense_vector` accepts at most 4096 dimensions.
const MAX_DIMS: usize = 4096;

impl ModelInfo {
    /// Checks the answer makes sense before it is written into a cluster.
    pub fn validate(&self) -> Result<()> {
        if self.dimensions == 0 || self.dimensions > MAX_DIMS {
            bail!(
                "the sidecar reports {} dimensions; dense_vector supports 1 to {MAX_DIMS}",
                self.dimensions
            );
        }
        if !SIMILARITIES.contains(&self.similarity.as_str()) {
            bail!(
                "the sidecar reports similarity {:?}; expected one of {}",
                self.similarity,
                SIMILARITIES.join(", ")
            );
        }
        if self.similarity == "dot_product" && !self.normalized {
            bail!("the sidecar reports dot_product similarity but unnormalised vectors; Elasticsearch rejects non-unit vectors with dot_product");
        }
        if !self.modalities.is_empty() && !self.modalities.iter().any(|m| m == "image") {
            bail!(
                "the sidecar's model does not embed images (modalities: {:?})",
                self.modalities
            );
        }
        Ok(())
    }
}

/// `<sidecar>/info`.
pub fn info_url(sidecar_url: &str) -> String {
    format!("{}/info", sidecar_url.trim_end_matches('/'))
}

/// Fetches and validates `/info`.
pub async fn fetch(url: &str, api_key: Option<&str>) -> Result<ModelInfo> {
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
    let info: ModelInfo = response.json().await.with_context(|| {
        format!("GET {url}: the answer is not the /info JSON Sightline expects")
    })?;
    info.validate().with_context(|| format!("GET {url}"))?;
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
        info().validate().unwrap();
    }

    #[test]
    fn refuses_answers_es_would_choke_on() {
        let mut unnormalised = info();
        unnormalised.normalized = false;
        assert!(unnormalised.validate().is_err());
        let mut wide = info();
        wide.dimensions = 5000;
        assert!(wide.validate().is_err());
        let mut inner = info();
        inner.similarity = "max_inner_product".to_owned();
        assert!(inner.validate().is_err());
        let mut text_only = info();
        text_only.modalities = vec!["text".to_owned()];
        assert!(text_only.validate().is_err());
    }

    #[test]
    fn info_url_drops_trailing_slash() {
        assert_eq!(info_url("http://s:8080/"), "http://s:8080/info");
    }
}
