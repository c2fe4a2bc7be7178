//! The request bodies Sightline sends to Elasticsearch, kept as JSON files in `es-config/` and
//! `ingest-pipelines/` so they can be read, diffed and pasted by hand, and compiled in here.
//!
//! The files use `@@name@@` placeholders (`{{…}}` is taken by ES's own mustache templates and
//! `${…}` by the custom service). A string that is exactly one placeholder is replaced by the
//! parameter's JSON value, so `"dims": "@@dims@@"` becomes a number; a placeholder inside a longer
//! string is replaced by the parameter's text. An unknown placeholder is an error, so a typo in an
//! asset cannot reach a cluster. Version-specific changes (contract §0) are applied to the parsed
//! body afterwards, in the functions below, each a pure function with tests.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use super::mode::Mode;
use super::version::{Cluster, Service};
use super::{SEMANTIC_FIELD, VECTOR_FIELD};
use crate::engine::{ModelInfo, Similarity};
use crate::sidecar::Lane;

/// One compiled-in asset: its path (for messages) and its text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asset {
    pub(crate) path: &'static str,
    pub(crate) text: &'static str,
}

macro_rules! asset {
    ($path:literal) => {
        Asset {
            path: $path,
            text: include_str!(concat!("../../", $path)),
        }
    };
}

pub(crate) const OPENAI_ENDPOINT: Asset = asset!("es-config/inference-openai.json");
pub(crate) const CUSTOM_ENDPOINT: Asset = asset!("es-config/inference-custom.json");
pub(crate) const HUGGING_FACE_ENDPOINT: Asset = asset!("es-config/inference-hugging_face.json");
pub(crate) const INDEX_TEMPLATE: Asset = asset!("es-config/index-template.json");
pub(crate) const FAILED_INDEX_TEMPLATE: Asset = asset!("es-config/failed-index-template.json");
pub(crate) const EMBEDDING_PIPELINE: Asset = asset!("ingest-pipelines/image-embedding.json");
pub(crate) const SEMANTIC_PIPELINE: Asset = asset!("ingest-pipelines/image-semantic.json");

/// Placeholder values by name.
pub(crate) type Params = BTreeMap<&'static str, Value>;

/// Parses `asset` and replaces its placeholders from `params`.
pub(crate) fn render(asset: Asset, params: &Params) -> Result<Value> {
    let parsed: Value = serde_json::from_str(asset.text)
        .with_context(|| format!("{} is not valid JSON", asset.path))?;
    substitute(parsed, params).with_context(|| format!("cannot render {}", asset.path))
}

fn substitute(value: Value, params: &Params) -> Result<Value> {
    Ok(match value {
        Value::String(text) => substitute_string(&text, params)?,
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| substitute(item, params))
                .collect::<Result<_>>()?,
        ),
        Value::Object(fields) => {
            let mut out = Map::with_capacity(fields.len());
            for (key, field) in fields {
                out.insert(key, substitute(field, params)?);
            }
            Value::Object(out)
        }
        other => other,
    })
}

fn substitute_string(text: &str, params: &Params) -> Result<Value> {
    if !text.contains("@@") {
        return Ok(Value::String(text.to_owned()));
    }
    // Whole-string placeholder: keep the parameter's JSON type (numbers stay numbers).
    if let Some(name) = whole_placeholder(text) {
        return lookup(name, params).cloned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("@@") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("@@")
            .with_context(|| format!("unterminated placeholder in {text:?}"))?;
        let name = &after[..end];
        match lookup(name, params)? {
            Value::String(s) => out.push_str(s),
            Value::Number(n) => out.push_str(&n.to_string()),
            other => bail!("placeholder @@{name}@@ inside {text:?} needs text, got {other}"),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn whole_placeholder(text: &str) -> Option<&str> {
    let name = text.strip_prefix("@@")?.strip_suffix("@@")?;
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    valid.then_some(name)
}

fn lookup<'p>(name: &str, params: &'p Params) -> Result<&'p Value> {
    params
        .get(name)
        .with_context(|| format!("unknown placeholder @@{name}@@"))
}

/// What an inference endpoint body needs.
#[derive(Debug, Clone)]
pub(crate) struct EndpointParams {
    /// Base URL of the sidecar as Elasticsearch reaches it, without a trailing slash.
    pub(crate) sidecar_url: String,
    /// Bearer token the sidecar expects. ES requires some `api_key` even when the sidecar has
    /// none (contract §11.3), so callers pass a placeholder then.
    pub(crate) sidecar_api_key: String,
    pub(crate) model: String,
    pub(crate) dims: usize,
    pub(crate) similarity: Similarity,
    /// Which sidecar queue the endpoint's requests join (`?priority=search` for the search
    /// endpoint; the URL is sent verbatim, query string included, contract §1.2).
    pub(crate) lane: Lane,
    /// `service_settings.rate_limit.requests_per_minute`; `None` leaves ES's default (3 000
    /// for openai/hugging_face, 10 000 for custom, contract §12 #6).
    pub(crate) rate_limit: Option<u64>,
}

/// The `PUT _inference/text_embedding/<id>` body for `service` on `cluster`.
pub(crate) fn endpoint_body(
    service: Service,
    params: &EndpointParams,
    cluster: &Cluster,
) -> Result<Value> {
    let asset = match service {
        Service::OpenAi => OPENAI_ENDPOINT,
        Service::Custom => CUSTOM_ENDPOINT,
        Service::HuggingFace => HUGGING_FACE_ENDPOINT,
    };
    let values: Params = [
        (
            "sidecar_url",
            json!(params.sidecar_url.trim_end_matches('/')),
        ),
        ("sidecar_api_key", json!(params.sidecar_api_key)),
        ("model", json!(params.model)),
        ("dims", json!(params.dims)),
        ("similarity", json!(params.similarity)),
        ("lane", json!(params.lane.query())),
    ]
    .into_iter()
    .collect();
    let mut body = render(asset, &values)?;
    if let Some(requests_per_minute) = params.rate_limit {
        body.get_mut("service_settings")
            .and_then(Value::as_object_mut)
            .context("endpoint body has no service_settings")?
            .insert(
                "rate_limit".to_owned(),
                json!({ "requests_per_minute": requests_per_minute }),
            );
    }
    if service == Service::OpenAi && !cluster.openai_model_in_service_settings() {
        move_openai_model_to_task_settings(&mut body)?;
    }
    // Only semantic_text chunks, but an endpoint created with `none` is ready for the semantic
    // variant; where `none` does not exist, leaving the key out keeps older clusters happy.
    if cluster.has_chunking_none() {
        if let Some(object) = body.as_object_mut() {
            object
                .entry("chunking_settings")
                .or_insert_with(|| json!({"strategy": "none"}));
        }
    } else if let Some(object) = body.as_object_mut() {
        object.remove("chunking_settings");
    }
    Ok(body)
}

/// 8.12 read the OpenAI model from `task_settings.model` (contract §1.1).
fn move_openai_model_to_task_settings(body: &mut Value) -> Result<()> {
    let model = body
        .get_mut("service_settings")
        .and_then(Value::as_object_mut)
        .and_then(|settings| settings.remove("model_id"))
        .context("openai endpoint body has no service_settings.model_id")?;
    let object = body
        .as_object_mut()
        .context("endpoint body is not an object")?;
    let task_settings = object
        .entry("task_settings")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .context("task_settings is not an object")?;
    task_settings.insert("model".to_owned(), model);
    Ok(())
}

/// What the index template bodies need.
#[derive(Debug, Clone)]
pub(crate) struct IndexParams {
    pub(crate) index: String,
    /// Default pipeline of the index; `None` for `--embed-locally` indices, whose documents
    /// arrive with their vector.
    pub(crate) pipeline: Option<String>,
    pub(crate) inference_id: String,
    /// The endpoint queries go through (the priority lane); the `semantic_text` field's
    /// `search_inference_id`.
    pub(crate) search_inference_id: String,
    pub(crate) model: String,
    /// The sidecar's `/info` fingerprint, recorded in the mapping's `_meta` so vectors of two
    /// models are never mixed in one index.
    pub(crate) fingerprint: String,
    pub(crate) mode: Mode,
    pub(crate) dims: usize,
    pub(crate) similarity: Similarity,
}

impl IndexParams {
    /// An index whose documents arrive with their vector (`vectors` mode): no pipeline, no
    /// endpoints, the model's dimensions, similarity and fingerprint.
    pub(crate) fn vectors_mode(index: &str, model: &ModelInfo) -> IndexParams {
        IndexParams {
            index: index.to_owned(),
            pipeline: None,
            inference_id: String::new(),
            search_inference_id: String::new(),
            model: model.name.clone(),
            fingerprint: model.fingerprint.clone(),
            mode: Mode::Vectors,
            dims: model.dimensions,
            similarity: model.similarity,
        }
    }

    fn values(&self) -> Params {
        [
            ("index", json!(self.index)),
            ("pipeline", json!(self.pipeline.clone().unwrap_or_default())),
            ("inference_id", json!(self.inference_id)),
            ("model", json!(self.model)),
            ("fingerprint", json!(self.fingerprint)),
            ("mode", json!(self.mode.as_str())),
            ("dims", json!(self.dims)),
            ("similarity", json!(self.similarity)),
            ("index_options", Value::Null),
        ]
        .into_iter()
        .collect()
    }
}

/// The `PUT _index_template/<name>` body of the image index on `cluster`.
pub(crate) fn index_template_body(params: &IndexParams, cluster: &Cluster) -> Result<Value> {
    let mut body = render(INDEX_TEMPLATE, &params.values())?;
    let template = body
        .get_mut("template")
        .context("index template has no \"template\"")?;
    adjust_index_body(template, params, cluster)?;
    Ok(body)
}

/// The `PUT <index>` body with the same settings and mappings as the template, for clusters
/// where `ingest --embed-locally` creates the index itself (no template API before 7.8).
pub(crate) fn create_index_body(params: &IndexParams, cluster: &Cluster) -> Result<Value> {
    let mut body = index_template_body(params, cluster)?;
    body.get_mut("template")
        .map(Value::take)
        .context("index template has no \"template\"")
}

fn adjust_index_body(template: &mut Value, params: &IndexParams, cluster: &Cluster) -> Result<()> {
    if params.pipeline.is_none() {
        if let Some(index_settings) = template
            .pointer_mut("/settings/index")
            .and_then(Value::as_object_mut)
        {
            index_settings.remove("default_pipeline");
        }
    }
    let vector_pointer = format!(
        "/mappings/properties/{}",
        VECTOR_FIELD.replace('.', "/properties/")
    );
    let vector = template
        .pointer_mut(&vector_pointer)
        .and_then(Value::as_object_mut)
        .with_context(|| format!("index template has no mapping for {VECTOR_FIELD}"))?;
    match cluster.vector_index_options(params.dims) {
        Some(options) => {
            vector.insert("index_options".to_owned(), options);
        }
        None => {
            // 7.x dense_vector takes only `dims`: it is not indexed and has no similarity.
            vector.remove("index_options");
            vector.remove("index");
            vector.remove("similarity");
        }
    }
    if cluster.supports_semantic_images() && params.pipeline.is_some() {
        let properties = template
            .pointer_mut("/mappings/properties")
            .and_then(Value::as_object_mut)
            .context("index template has no mappings.properties")?;
        properties.insert(
            SEMANTIC_FIELD.to_owned(),
            json!({"type": "semantic_text", "inference_id": params.inference_id,
                   "search_inference_id": params.search_inference_id}),
        );
    }
    Ok(())
}

/// The `PUT _index_template/<name>` body of `<index>-failed`.
pub(crate) fn failed_template_body(params: &IndexParams) -> Result<Value> {
    render(FAILED_INDEX_TEMPLATE, &params.values())
}

/// Which pipeline asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PipelineKind {
    /// `inference` processor into a `dense_vector` (8.12+).
    Embedding,
    /// `semantic_text` field with an endpoint that does not chunk (8.19+/9.1+).
    Semantic,
}

/// The `PUT _ingest/pipeline/<id>` body.
pub(crate) fn pipeline_body(kind: PipelineKind, inference_id: &str) -> Result<Value> {
    let asset = match kind {
        PipelineKind::Embedding => EMBEDDING_PIPELINE,
        PipelineKind::Semantic => SEMANTIC_PIPELINE,
    };
    let values: Params = [("inference_id", json!(inference_id))]
        .into_iter()
        .collect();
    render(asset, &values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::version::EsVersion;

    fn cluster(text: &str) -> Cluster {
        Cluster::new(text.parse::<EsVersion>().unwrap())
    }

    fn endpoint_params() -> EndpointParams {
        EndpointParams {
            sidecar_url: "http://sidecar:8080/".to_owned(),
            sidecar_api_key: "key".to_owned(),
            model: "clip-ViT-B-32-multilingual-v1".to_owned(),
            dims: 512,
            similarity: Similarity::DotProduct,
            lane: Lane::Ingest,
            rate_limit: None,
        }
    }

    fn index_params(pipeline: Option<&str>, dims: usize) -> IndexParams {
        IndexParams {
            index: "photos".to_owned(),
            pipeline: pipeline.map(str::to_owned),
            inference_id: "sightline-clip".to_owned(),
            search_inference_id: "sightline-clip-search".to_owned(),
            model: "clip".to_owned(),
            fingerprint: "sha256:ab".to_owned(),
            mode: if pipeline.is_some() {
                Mode::Pipeline
            } else {
                Mode::Vectors
            },
            dims,
            similarity: Similarity::DotProduct,
        }
    }

    fn all_params() -> Params {
        [
            "index",
            "pipeline",
            "inference_id",
            "model",
            "dims",
            "similarity",
            "index_options",
            "sidecar_url",
            "sidecar_api_key",
            "lane",
            "fingerprint",
            "mode",
        ]
        .into_iter()
        .map(|name| (name, json!(1)))
        .collect()
    }

    /// Every asset.
    const ALL: [Asset; 7] = [
        OPENAI_ENDPOINT,
        CUSTOM_ENDPOINT,
        HUGGING_FACE_ENDPOINT,
        INDEX_TEMPLATE,
        FAILED_INDEX_TEMPLATE,
        EMBEDDING_PIPELINE,
        SEMANTIC_PIPELINE,
    ];

    #[test]
    fn every_asset_renders_without_leftover_placeholders() {
        for asset in ALL {
            let rendered = render(asset, &all_params()).unwrap();
            assert!(
                !rendered.to_string().contains("@@"),
                "{} kept a placeholder",
                asset.path
            );
        }
    }

    #[test]
    fn whole_placeholders_keep_type_and_inner_ones_become_text() {
        let params: Params = [("dims", json!(512)), ("url", json!("http://x"))]
            .into_iter()
            .collect();
        assert_eq!(substitute_string("@@dims@@", &params).unwrap(), json!(512));
        assert_eq!(
            substitute_string("@@url@@/embed", &params).unwrap(),
            json!("http://x/embed")
        );
        assert_eq!(
            substitute_string("n=@@dims@@", &params).unwrap(),
            json!("n=512")
        );
        assert_eq!(
            substitute_string("{{_index}}", &params).unwrap(),
            json!("{{_index}}")
        );
        assert!(substitute_string("@@nope@@", &params)
            .unwrap_err()
            .to_string()
            .contains("@@nope@@"));
        assert!(substitute_string("a @@dims", &params).is_err());
    }

    #[test]
    fn openai_endpoint_matches_contract_1_1() {
        let body = endpoint_body(Service::OpenAi, &endpoint_params(), &cluster("8.15.0")).unwrap();
        assert_eq!(body["service"], "openai");
        let settings = &body["service_settings"];
        assert_eq!(settings["url"], "http://sidecar:8080/v1/embeddings");
        assert_eq!(settings["model_id"], "clip-ViT-B-32-multilingual-v1");
        assert_eq!(settings["similarity"], "dot_product");
        assert_eq!(settings["api_key"], "key");
        // never max_input_tokens (contract §5.1) and no dimensions, which openai would then send
        assert!(settings.get("max_input_tokens").is_none());
        assert!(settings.get("dimensions").is_none());
        // 8.15 has no strategy "none"
        assert!(body.get("chunking_settings").is_none());
    }

    #[test]
    fn openai_on_8_12_carries_the_model_in_task_settings() {
        let body = endpoint_body(Service::OpenAi, &endpoint_params(), &cluster("8.12.2")).unwrap();
        assert!(body["service_settings"].get("model_id").is_none());
        assert_eq!(
            body["task_settings"]["model"],
            "clip-ViT-B-32-multilingual-v1"
        );
    }

    #[test]
    fn custom_endpoint_matches_contract_3() {
        let body = endpoint_body(Service::Custom, &endpoint_params(), &cluster("9.1.0")).unwrap();
        let settings = &body["service_settings"];
        assert_eq!(settings["url"], "http://sidecar:8080/v1/embeddings");
        // the body template is a plain string whose ${input} is not quoted (contract §3.2)
        let request = settings["request"].as_str().unwrap();
        assert!(request.contains("\"input\": ${input}") && !request.contains("\"${input}\""));
        assert_eq!(settings["secret_parameters"]["api_key"], "key");
        assert_eq!(settings["headers"]["Authorization"], "Bearer ${api_key}");
        assert_eq!(
            settings["response"]["json_parser"]["text_embeddings"],
            "$.data[*].embedding"
        );
        assert!(settings["response"].get("error_parser").is_none());
        assert_eq!(settings["dimensions"], 512);
        assert_eq!(settings["input_type"]["default"], "document");
        assert_eq!(
            body["task_settings"]["parameters"]["model"],
            "clip-ViT-B-32-multilingual-v1"
        );
        assert_eq!(body["chunking_settings"], json!({"strategy": "none"}));
    }

    #[test]
    fn search_endpoint_carries_the_priority_lane_and_rate_limit_is_explicit() {
        let mut params = endpoint_params();
        params.lane = Lane::Search;
        params.rate_limit = Some(500_000);
        for service in [Service::OpenAi, Service::Custom, Service::HuggingFace] {
            let body = endpoint_body(service, &params, &cluster("9.1.0")).unwrap();
            let url = body["service_settings"]["url"].as_str().unwrap();
            assert!(url.ends_with("?priority=search"), "{service}: {url}");
            assert_eq!(
                body["service_settings"]["rate_limit"]["requests_per_minute"],
                500_000
            );
        }
        let ingest = endpoint_body(Service::OpenAi, &endpoint_params(), &cluster("9.1.0")).unwrap();
        assert_eq!(
            ingest["service_settings"]["url"],
            "http://sidecar:8080/v1/embeddings"
        );
        assert!(ingest["service_settings"].get("rate_limit").is_none());
    }

    #[test]
    fn index_mapping_records_mode_model_and_fingerprint() {
        let body = index_template_body(&index_params(None, 512), &cluster("8.11.0")).unwrap();
        let meta = &body["template"]["mappings"]["_meta"];
        assert_eq!(meta["mode"], "vectors");
        assert_eq!(meta["model_fingerprint"], "sha256:ab");
        assert_eq!(meta["dims"], 512);
        assert_eq!(
            body["template"]["mappings"]["properties"]["model_fingerprint"]["type"],
            "keyword"
        );
    }

    #[test]
    fn hugging_face_endpoint_points_at_embed_and_chunks_none_on_9_1() {
        let body =
            endpoint_body(Service::HuggingFace, &endpoint_params(), &cluster("9.1.0")).unwrap();
        assert_eq!(body["service_settings"]["url"], "http://sidecar:8080/embed");
        assert!(body["service_settings"].get("model_id").is_none());
        assert_eq!(body["chunking_settings"]["strategy"], "none");
    }

    #[test]
    fn index_template_maps_the_vector_from_info() {
        let body = index_template_body(
            &index_params(Some("sightline-photos"), 512),
            &cluster("8.15.0"),
        )
        .unwrap();
        assert_eq!(body["index_patterns"], json!(["photos"]));
        let template = &body["template"];
        assert_eq!(
            template["settings"]["index"]["default_pipeline"],
            "sightline-photos"
        );
        let vector = &template["mappings"]["properties"]["ml"]["properties"]["image_vector"];
        assert_eq!(vector["type"], "dense_vector");
        assert_eq!(vector["dims"], 512);
        assert_eq!(vector["similarity"], "dot_product");
        assert_eq!(vector["index_options"]["type"], "int8_hnsw");
        let properties = &template["mappings"]["properties"];
        assert_eq!(properties["thumbnail"]["type"], "binary");
        assert_eq!(properties["ingested_at"]["type"], "date");
        assert_eq!(properties["content_hash"]["type"], "keyword");
        assert!(
            properties.get(SEMANTIC_FIELD).is_none(),
            "8.15 cannot chunk none"
        );
    }

    #[test]
    fn index_template_on_9_1_adds_semantic_field_and_bbq() {
        let body = index_template_body(&index_params(Some("p"), 512), &cluster("9.1.0")).unwrap();
        let properties = &body["template"]["mappings"]["properties"];
        assert_eq!(properties[SEMANTIC_FIELD]["type"], "semantic_text");
        assert_eq!(properties[SEMANTIC_FIELD]["inference_id"], "sightline-clip");
        assert_eq!(
            properties[SEMANTIC_FIELD]["search_inference_id"],
            "sightline-clip-search"
        );
        assert_eq!(
            properties["ml"]["properties"]["image_vector"]["index_options"]["type"],
            "bbq_hnsw"
        );
    }

    #[test]
    fn local_index_on_7_x_has_no_pipeline_and_plain_vector() {
        let body = create_index_body(&index_params(None, 512), &cluster("7.17.0")).unwrap();
        assert!(body.pointer("/settings/index/default_pipeline").is_none());
        let vector = &body["mappings"]["properties"]["ml"]["properties"]["image_vector"];
        assert_eq!(vector, &json!({"type": "dense_vector", "dims": 512}));
    }

    #[test]
    fn pipeline_embeds_removes_and_redirects_failures() {
        let body = pipeline_body(PipelineKind::Embedding, "sightline-clip").unwrap();
        let inference = &body["processors"][0]["inference"];
        assert_eq!(inference["model_id"], "sightline-clip");
        assert_eq!(inference["input_output"][0]["input_field"], "image_b64");
        let output = inference["input_output"][0]["output_field"]
            .as_str()
            .unwrap();
        assert_eq!(output, VECTOR_FIELD);
        assert!(
            output.contains('.'),
            "model_id must land beside the vector, not at the root"
        );
        assert_eq!(body["processors"][1]["remove"]["field"], "image_b64");
        let on_failure = body["on_failure"].as_array().unwrap();
        let redirect = on_failure.last().unwrap();
        assert_eq!(redirect["set"]["field"], "_index");
        assert_eq!(redirect["set"]["value"], "{{{_index}}}-failed");
        assert!(on_failure
            .iter()
            .any(|p| p["set"]["field"] == "error.message"));
    }

    #[test]
    fn semantic_pipeline_moves_the_image_into_the_semantic_field() {
        let body = pipeline_body(PipelineKind::Semantic, "x").unwrap();
        assert_eq!(
            body["processors"][0]["rename"]["target_field"],
            SEMANTIC_FIELD
        );
        assert_eq!(
            body["on_failure"].as_array().unwrap().last().unwrap()["set"]["field"],
            "_index"
        );
    }
}
