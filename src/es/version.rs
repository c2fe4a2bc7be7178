//! Cluster version and what follows from it: which inference service `setup` uses, which
//! `index_options` the vector field gets, whether `chunking_settings: {"strategy": "none"}` and
//! `semantic_text` can be used. The version map is contract §0; every decision is a pure
//! function of [`Cluster`] so it can be unit-tested for each version line.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::body::RootResponse;

/// A release number as `GET /` reports it (`version.number`), suffix dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EsVersion {
    pub(crate) major: u32,
    pub(crate) minor: u32,
    pub(crate) patch: u32,
}

impl EsVersion {
    pub(crate) const fn new(major: u32, minor: u32, patch: u32) -> Self {
        EsVersion {
            major,
            minor,
            patch,
        }
    }

    /// True when this version is `major.minor` or later.
    pub(crate) fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl FromStr for EsVersion {
    type Err = anyhow::Error;

    /// Accepts `8.15.0`, `9.1.0-SNAPSHOT`, `8.19.1-beta1` and `9.1`: pre-release suffixes are
    /// ignored because capabilities follow the release line, not the build.
    fn from_str(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let release = trimmed.split(['-', '+']).next().unwrap_or_default();
        let mut numbers = release.split('.');
        let mut next_number = |name: &str, required: bool| -> Result<u32> {
            match numbers.next() {
                Some(part) => part.parse::<u32>().with_context(|| {
                    format!("invalid {name} number {part:?} in version {trimmed:?}")
                }),
                None if required => bail!("version {trimmed:?} has no {name} number"),
                None => Ok(0),
            }
        };
        let major = next_number("major", true)?;
        let minor = next_number("minor", true)?;
        let patch = next_number("patch", false)?;
        Ok(EsVersion::new(major, minor, patch))
    }
}

impl fmt::Display for EsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What `GET /` told us about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cluster {
    pub(crate) version: EsVersion,
    /// Elastic Cloud Serverless reports a frozen `8.11.0` but runs the newest code, so its
    /// capabilities are those of the newest release line.
    pub(crate) serverless: bool,
}

impl Cluster {
    pub(crate) fn new(version: EsVersion) -> Self {
        Cluster {
            version,
            serverless: false,
        }
    }

    /// Reads the body of `GET /`. OpenSearch answers the same route with
    /// `version.distribution: "opensearch"`; its ML APIs are different, so it is refused here
    /// instead of failing later with a confusing error.
    pub(crate) fn from_root_response(body: RootResponse) -> Result<Self> {
        let version_object = body
            .version
            .context("the answer to GET / has no \"version\" object; is this Elasticsearch?")?;
        if let Some(distribution) = &version_object.distribution {
            if distribution.eq_ignore_ascii_case("opensearch") {
                bail!("the cluster is OpenSearch, which Sightline does not support: it needs Elasticsearch's inference API");
            }
        }
        let number = version_object
            .number
            .context("the answer to GET / has no version.number")?;
        let version = number.parse::<EsVersion>()?;
        let serverless = version_object.build_flavor.as_deref() == Some("serverless");
        Ok(Cluster {
            version,
            serverless,
        })
    }

    /// The version whose capabilities apply (see [`Cluster::serverless`]).
    fn effective(&self) -> EsVersion {
        if self.serverless {
            EsVersion::new(u32::MAX, 0, 0)
        } else {
            self.version
        }
    }

    /// Inference endpoints usable from the ingest processor and kNN `query_vector_builder`
    /// (openai and hugging_face services): 8.12 (contract §0).
    pub(crate) fn has_inference_api(&self) -> bool {
        self.effective().at_least(8, 12)
    }

    /// 8.12 carried the OpenAI model name in `task_settings.model`; 8.13 moved it to
    /// `service_settings.model_id` (contract §1.1).
    pub(crate) fn openai_model_in_service_settings(&self) -> bool {
        self.effective().at_least(8, 13)
    }

    /// The `custom` service and `chunking_settings.strategy: none` arrived together in 8.19 and
    /// 9.1; 9.0 has neither (contract §0, §3).
    pub(crate) fn has_custom_service(&self) -> bool {
        let version = self.effective();
        version.at_least(9, 1) || (version.major == 8 && version.at_least(8, 19))
    }

    /// See [`Cluster::has_custom_service`]: same releases.
    pub(crate) fn has_chunking_none(&self) -> bool {
        self.has_custom_service()
    }

    /// `semantic_text` can carry whole base64 images only where chunking can be switched off
    /// (contract §5.2, §11.17), so the variant is offered exactly there.
    pub(crate) fn supports_semantic_images(&self) -> bool {
        self.has_chunking_none()
    }

    /// `force` on `DELETE _inference/...` (delete even when a pipeline references it).
    pub(crate) fn inference_delete_has_force(&self) -> bool {
        self.effective().at_least(8, 15)
    }

    /// `dense_vector` values may be sent as a base64 string from 9.3 (es#137072: Rally indexing
    /// 1 518 → 10 175 docs/s). The encoding is IEEE-754 float32, **big-endian** (Java's
    /// `ByteBuffer` default; stated by Elastic's own client tracking issue
    /// elastic/elasticsearch-js#3080) — unlike the sidecar's OpenAI answer, which is
    /// little-endian as OpenAI defines it.
    pub(crate) fn accepts_base64_vectors(&self) -> bool {
        self.effective().at_least(9, 3)
    }

    /// How a kNN search with a finished vector is sent on this line.
    pub(crate) fn knn_form(&self) -> KnnForm {
        let version = self.effective();
        if version.at_least(8, 4) {
            KnnForm::TopLevel
        } else if version.at_least(8, 0) {
            KnnForm::KnnSearchEndpoint
        } else if version.at_least(7, 6) {
            KnnForm::ScriptScore
        } else {
            KnnForm::Unsupported
        }
    }

    /// The `index_options` the vector field gets. Chosen explicitly rather than left to the
    /// default, so that an index keeps the same structure whatever version created it:
    /// - 8.0–8.11: `hnsw` (the only indexed type);
    /// - 8.12.0: `hnsw`, because `int8_hnsw` on exactly 8.12.0 fails segment merges (issue
    ///   #104617, fixed in 8.12.1; contract §12 #9);
    /// - 8.12.1–9.0: `int8_hnsw` (8.12 added it; the default from 8.14): 4× less memory with
    ///   unit-length CLIP vectors losing almost no recall;
    /// - 9.1+: `bbq_hnsw` with rescoring for dims ≥ 384, as 9.1's own default, else `int8_hnsw`.
    ///
    /// `None` on 7.x, where vectors are not indexed.
    pub(crate) fn vector_index_options(&self, dims: usize) -> Option<Value> {
        let version = self.effective();
        if !version.at_least(8, 0) {
            return None;
        }
        if !version.at_least(8, 12) || version == EsVersion::new(8, 12, 0) {
            return Some(json!({"type": "hnsw", "m": 16, "ef_construction": 100}));
        }
        if version.at_least(9, 1) && dims >= 384 {
            return Some(json!({"type": "bbq_hnsw", "rescore_vector": {"oversample": 3.0}}));
        }
        Some(json!({"type": "int8_hnsw"}))
    }

    /// Picks the inference service: `custom` where it exists (it can tell the sidecar whether a
    /// string is a document or a query, and never truncates), else `openai`. A requested service
    /// is checked against the version. Below 8.12 there is no inference API at all.
    pub(crate) fn choose_service(&self, requested: Option<Service>) -> Result<Service> {
        if !self.has_inference_api() {
            bail!(
                "Elasticsearch {} has no inference API (it needs 8.12 or later), so the cluster cannot call the sidecar; \
                 use `sightline setup --mode vectors` (what auto picks there): `ingest` and `search` then embed through the sidecar and send finished vectors",
                self.version
            );
        }
        match requested {
            None if self.has_custom_service() => Ok(Service::Custom),
            None => Ok(Service::OpenAi),
            Some(Service::Custom) if !self.has_custom_service() => bail!(
                "the custom inference service needs Elasticsearch 8.19+ or 9.1+ (this cluster is {}); use --service openai or hugging_face",
                self.version
            ),
            Some(service) => Ok(service),
        }
    }
}

/// The request that carries a finished query vector (contract §12 #13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KnnForm {
    /// `_search` with a top-level `knn` (8.4+).
    TopLevel,
    /// The `_knn_search` endpoint (8.0–8.3; removed in 9.0).
    KnnSearchEndpoint,
    /// Exact search: `script_score` with `dotProduct`/`cosineSimilarity` (7.6–7.17, where
    /// `dense_vector` is not indexed; every document is scored, fine up to ~10⁵ images).
    ScriptScore,
    /// Before 7.6 the vector functions took another form; Sightline does not search there.
    Unsupported,
}

impl KnnForm {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            KnnForm::TopLevel => "top-level knn with query_vector",
            KnnForm::KnnSearchEndpoint => "the _knn_search endpoint with query_vector",
            KnnForm::ScriptScore => "an exact script_score search (7.x)",
            KnnForm::Unsupported => "no vector search (before 7.6)",
        }
    }
}

/// Inference services that can point at the sidecar (contract §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    OpenAi,
    Custom,
    HuggingFace,
}

impl Service {
    /// The `service` value Elasticsearch expects.
    pub(crate) fn es_name(self) -> &'static str {
        match self {
            Service::OpenAi => "openai",
            Service::Custom => "custom",
            Service::HuggingFace => "hugging_face",
        }
    }
}

impl FromStr for Service {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().replace('-', "_").as_str() {
            "openai" => Ok(Service::OpenAi),
            "custom" => Ok(Service::Custom),
            "hugging_face" | "huggingface" | "hf" => Ok(Service::HuggingFace),
            other => bail!(
                "unknown inference service {other:?}: expected openai, custom or hugging_face"
            ),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.es_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(text: &str) -> Cluster {
        Cluster::new(text.parse().unwrap())
    }

    fn root(body: Value) -> RootResponse {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn parses_release_snapshot_and_short_versions() {
        assert_eq!(
            "8.15.0".parse::<EsVersion>().unwrap(),
            EsVersion::new(8, 15, 0)
        );
        assert_eq!(
            "9.1.0-SNAPSHOT".parse::<EsVersion>().unwrap(),
            EsVersion::new(9, 1, 0)
        );
        assert_eq!(
            "8.19.2-beta1".parse::<EsVersion>().unwrap(),
            EsVersion::new(8, 19, 2)
        );
        assert_eq!(
            " 9.1 ".parse::<EsVersion>().unwrap(),
            EsVersion::new(9, 1, 0)
        );
        assert!("nine".parse::<EsVersion>().is_err());
        assert!("8".parse::<EsVersion>().is_err());
        assert!("8.x.1".parse::<EsVersion>().is_err());
    }

    #[test]
    fn versions_compare_numerically_not_as_text() {
        assert!(EsVersion::new(8, 19, 0) > EsVersion::new(8, 9, 0));
        assert!(EsVersion::new(8, 12, 0).at_least(8, 12));
        assert!(!EsVersion::new(8, 11, 4).at_least(8, 12));
        assert!(EsVersion::new(9, 0, 0).at_least(8, 19));
    }

    #[test]
    fn reads_root_response_and_refuses_opensearch() {
        let es = json!({"name": "n", "version": {"number": "8.15.3", "build_flavor": "default"}, "tagline": "You Know, for Search"});
        assert_eq!(
            Cluster::from_root_response(root(es)).unwrap(),
            cluster("8.15.3")
        );
        let serverless = json!({"version": {"number": "8.11.0", "build_flavor": "serverless"}});
        let parsed = Cluster::from_root_response(root(serverless)).unwrap();
        assert!(parsed.serverless && parsed.has_custom_service());
        let opensearch = json!({"version": {"distribution": "opensearch", "number": "2.11.0"}});
        assert!(Cluster::from_root_response(root(opensearch))
            .unwrap_err()
            .to_string()
            .contains("OpenSearch"));
        assert!(Cluster::from_root_response(root(json!({"ok": true}))).is_err());
    }

    #[test]
    fn service_choice_per_version_line() {
        let below = cluster("8.11.4")
            .choose_service(None)
            .unwrap_err()
            .to_string();
        assert!(below.contains("--mode vectors"), "{below}");
        assert_eq!(
            cluster("8.12.0").choose_service(None).unwrap(),
            Service::OpenAi
        );
        assert_eq!(
            cluster("8.15.0").choose_service(None).unwrap(),
            Service::OpenAi
        );
        assert_eq!(
            cluster("8.18.3").choose_service(None).unwrap(),
            Service::OpenAi
        );
        assert_eq!(
            cluster("8.19.0").choose_service(None).unwrap(),
            Service::Custom
        );
        assert_eq!(
            cluster("9.0.4").choose_service(None).unwrap(),
            Service::OpenAi
        );
        assert_eq!(
            cluster("9.1.0").choose_service(None).unwrap(),
            Service::Custom
        );
        assert!(cluster("9.0.4")
            .choose_service(Some(Service::Custom))
            .is_err());
        assert_eq!(
            cluster("9.1.0")
                .choose_service(Some(Service::HuggingFace))
                .unwrap(),
            Service::HuggingFace
        );
    }

    #[test]
    fn capabilities_follow_the_version_map() {
        assert!(!cluster("8.12.2").openai_model_in_service_settings());
        assert!(cluster("8.13.0").openai_model_in_service_settings());
        assert!(!cluster("9.0.0").has_chunking_none());
        assert!(cluster("8.19.0").has_chunking_none());
        assert!(!cluster("8.14.0").inference_delete_has_force());
    }

    #[test]
    fn index_options_per_version() {
        assert_eq!(cluster("7.17.9").vector_index_options(512), None);
        assert_eq!(
            cluster("8.11.0").vector_index_options(512).unwrap()["type"],
            "hnsw"
        );
        // 8.12.0's int8_hnsw merge bug (#104617): hnsw on exactly that release
        assert_eq!(
            cluster("8.12.0").vector_index_options(512).unwrap()["type"],
            "hnsw"
        );
        assert_eq!(
            cluster("8.12.1").vector_index_options(512).unwrap()["type"],
            "int8_hnsw"
        );
        assert_eq!(
            cluster("9.0.0").vector_index_options(512).unwrap()["type"],
            "int8_hnsw"
        );
        assert_eq!(
            cluster("9.1.0").vector_index_options(512).unwrap()["type"],
            "bbq_hnsw"
        );
        // bbq needs dims > 64; small test models stay on int8_hnsw
        assert_eq!(
            cluster("9.1.0").vector_index_options(32).unwrap()["type"],
            "int8_hnsw"
        );
    }

    #[test]
    fn knn_form_and_base64_vectors_per_line() {
        assert_eq!(cluster("7.5.0").knn_form(), KnnForm::Unsupported);
        assert_eq!(cluster("7.17.9").knn_form(), KnnForm::ScriptScore);
        assert_eq!(cluster("8.0.0").knn_form(), KnnForm::KnnSearchEndpoint);
        assert_eq!(cluster("8.3.3").knn_form(), KnnForm::KnnSearchEndpoint);
        assert_eq!(cluster("8.4.0").knn_form(), KnnForm::TopLevel);
        assert!(!cluster("9.2.4").accepts_base64_vectors());
        assert!(cluster("9.3.0").accepts_base64_vectors());
    }

    #[test]
    fn service_names_parse() {
        assert_eq!(
            "hugging-face".parse::<Service>().unwrap(),
            Service::HuggingFace
        );
        assert_eq!("OpenAI".parse::<Service>().unwrap(), Service::OpenAi);
        assert!("cohere".parse::<Service>().is_err());
    }
}
