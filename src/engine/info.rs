//! The one description of a model that every side shares: the engine fills it in at start,
//! `GET /info` serves it (`http/ops.rs`), and `setup` / `ingest --embed-locally` read it to build
//! an index and an inference endpoint that match (`es/`). One serde type, so the field names and
//! their order are written once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What an index must match to hold this model's vectors, and what `/info` reports.
///
/// Field order is the order of the `/info` JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    #[serde(rename = "model")]
    pub name: String,
    pub dimensions: usize,
    /// Whether every vector is L2-normalised; `dot_product` is only valid if so (contract §8).
    #[serde(default)]
    pub normalized: bool,
    pub similarity: Similarity,
    /// `image`, `text`; kept as text so a sidecar may report modalities this build does not know.
    #[serde(default)]
    pub modalities: Vec<String>,
    /// Tokens a text keeps; 0 when the source did not say (a model given by flags).
    #[serde(default)]
    pub max_seq_len: usize,
    /// What the serving process adds; `None` in the engine's own copy and when a sidecar's
    /// `/info` leaves it out.
    #[serde(flatten)]
    pub serving: Option<ServingLimits>,
    /// `sha256:` over model files and preprocessing settings; empty when the source did not say.
    #[serde(default)]
    pub fingerprint: String,
}

/// The `/info` body of `sightline serve`: the first model served (the one a request naming no
/// model gets) at the top level, in [`ModelInfo`]'s shape, so a client that knows one model reads
/// it as before; then every model served, the first included, each without the serving limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    #[serde(flatten)]
    pub default: ModelInfo,
    /// Empty from a sidecar that predates serving several models.
    #[serde(default)]
    pub models: Vec<ModelInfo>,
}

impl ServerInfo {
    /// The model a client names (`None`: the first one), with the server's limits, or a message
    /// listing the names served.
    pub fn select(&self, name: Option<&str>) -> Result<ModelInfo, String> {
        let Some(name) = name.filter(|n| *n != self.default.name) else {
            return Ok(self.default.clone());
        };
        match self.models.iter().find(|m| m.name == name) {
            Some(model) => Ok(ModelInfo {
                serving: self.default.serving.clone(),
                ..model.clone()
            }),
            None => {
                let mut served: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
                if served.is_empty() {
                    served.push(&self.default.name);
                }
                Err(format!(
                    "the sidecar does not serve the model `{name}`; it serves `{}` (start `sightline serve` with `--model-dir` of {name} too)",
                    served.join("`, `")
                ))
            }
        }
    }
}

/// The limits a client of `sightline serve` must respect, as `/info` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingLimits {
    pub max_inputs: usize,
    pub max_body_bytes: usize,
    pub max_batch: MaxBatch,
    pub max_pixels: u64,
    pub jpeg_prescale: bool,
    /// Sightline's version.
    pub version: String,
}

/// Largest batch per modality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaxBatch {
    pub image: usize,
    pub text: usize,
}

/// The `dense_vector` / inference-endpoint similarity of a model's vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Similarity {
    /// For unit vectors (es-contract §11 item 11).
    DotProduct,
    Cosine,
    /// Never chosen by the engine; accepted from `setup --similarity` and from other sidecars.
    L2Norm,
}

impl Similarity {
    /// The similarity that fits the engine's vectors: `dot_product` once they are normalised.
    pub fn for_vectors(normalized: bool) -> Self {
        if normalized {
            Similarity::DotProduct
        } else {
            Similarity::Cosine
        }
    }

    /// The name Elasticsearch uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Similarity::DotProduct => "dot_product",
            Similarity::Cosine => "cosine",
            Similarity::L2Norm => "l2_norm",
        }
    }
}

impl fmt::Display for Similarity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Similarity {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [
            Similarity::DotProduct,
            Similarity::Cosine,
            Similarity::L2Norm,
        ]
        .into_iter()
        .find(|similarity| similarity.as_str() == text)
        .ok_or_else(|| {
            format!("unknown similarity {text:?}; expected one of cosine, dot_product, l2_norm")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> ModelInfo {
        ModelInfo {
            name: "tiny-clip".to_owned(),
            dimensions: 512,
            normalized: true,
            similarity: Similarity::DotProduct,
            modalities: vec!["image".to_owned(), "text".to_owned()],
            max_seq_len: 128,
            serving: Some(ServingLimits {
                max_inputs: 2048,
                max_body_bytes: 64 << 20,
                max_batch: MaxBatch { image: 8, text: 32 },
                max_pixels: 100_000_000,
                jpeg_prescale: true,
                version: "0.1.0".to_owned(),
            }),
            fingerprint: "sha256:00".to_owned(),
        }
    }

    #[test]
    fn info_json_keeps_its_field_names_and_order() {
        assert_eq!(
            serde_json::to_string(&served()).unwrap(),
            r#"{"model":"tiny-clip","dimensions":512,"normalized":true,"similarity":"dot_product","modalities":["image","text"],"max_seq_len":128,"max_inputs":2048,"max_body_bytes":67108864,"max_batch":{"image":8,"text":32},"max_pixels":100000000,"jpeg_prescale":true,"version":"0.1.0","fingerprint":"sha256:00"}"#
        );
    }

    #[test]
    fn info_json_round_trips_and_tolerates_a_short_answer() {
        let info = served();
        let text = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<ModelInfo>(&text).unwrap(), info);
        let short: ModelInfo =
            serde_json::from_str(r#"{"model":"m","dimensions":4,"similarity":"cosine","extra":1}"#)
                .unwrap();
        assert_eq!(short.serving, None);
        assert!(!short.normalized && short.modalities.is_empty() && short.fingerprint.is_empty());
        assert!(serde_json::from_str::<ModelInfo>(
            r#"{"model":"m","dimensions":4,"similarity":"max_inner_product"}"#
        )
        .is_err());
    }

    #[test]
    fn server_info_keeps_the_one_model_shape_and_lists_every_model() {
        let mut other = served();
        other.serving = None;
        other.name = "other".to_owned();
        other.fingerprint = "sha256:01".to_owned();
        let mut first = served();
        first.serving = None;
        let info = ServerInfo {
            default: served(),
            models: vec![first, other],
        };
        let text = serde_json::to_string(&info).unwrap();
        let one = serde_json::to_string(&served()).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{},"models":[{{"model":"tiny-clip","dimensions":512,"normalized":true,"similarity":"dot_product","modalities":["image","text"],"max_seq_len":128,"fingerprint":"sha256:00"}},{{"model":"other","dimensions":512,"normalized":true,"similarity":"dot_product","modalities":["image","text"],"max_seq_len":128,"fingerprint":"sha256:01"}}]}}"#,
                one.strip_suffix('}').unwrap()
            )
        );
        // A one-model client reads the first model, limits included.
        assert_eq!(serde_json::from_str::<ModelInfo>(&text).unwrap(), served());
        assert_eq!(serde_json::from_str::<ServerInfo>(&text).unwrap(), info);
        let older: ServerInfo = serde_json::from_str(&one).unwrap();
        assert!(older.models.is_empty());

        // Selecting by name: the named model, with the server's limits.
        assert_eq!(info.select(None).unwrap(), served());
        assert_eq!(info.select(Some("tiny-clip")).unwrap(), served());
        let chosen = info.select(Some("other")).unwrap();
        assert_eq!(
            (chosen.name.as_str(), chosen.fingerprint.as_str()),
            ("other", "sha256:01")
        );
        assert_eq!(chosen.serving, served().serving);
        assert_eq!(
            info.select(Some("nope")).unwrap_err(),
            "the sidecar does not serve the model `nope`; it serves `tiny-clip`, `other` (start `sightline serve` with `--model-dir` of nope too)"
        );
        assert!(older
            .select(Some("nope"))
            .unwrap_err()
            .contains("serves `tiny-clip`"));
    }

    #[test]
    fn similarity_names() {
        assert_eq!(Similarity::for_vectors(true).as_str(), "dot_product");
        assert_eq!(Similarity::for_vectors(false).to_string(), "cosine");
        assert_eq!("l2_norm".parse::<Similarity>(), Ok(Similarity::L2Norm));
        assert!("max_inner_product".parse::<Similarity>().is_err());
    }
}
