//! `sightline setup`: the inference endpoint, the ingest pipelines, the index templates and the
//! indices, then a check that one image and one text come back from the endpoint with the model's
//! dimensions.
//!
//! The work is first laid out as a [`Plan`], a list of requests built from the assets for the
//! cluster's version. `--print` writes that plan in Kibana dev-console syntax; otherwise
//! [`apply`] sends the same requests, adding the reads that make it idempotent: an endpoint that
//! already exists with the same settings is left alone (ES refuses to PUT over one), and an
//! existing index is checked, never recreated, so re-running `setup` cannot lose documents.
//! Pipelines and templates are create-or-update by nature.
//!
//! The image index is created behind an alias: `--index photos` makes the physical index
//! `photos-<model>-<fingerprint>` (see [`super::physical_index_name`]) with the alias `photos`,
//! so clients name only `photos` and `sightline reindex` can later move it to an index of another
//! model in one atomic step. An index made before aliases (a concrete index named `photos`) is
//! kept and used as it is; `reindex --replace-index` turns it into an alias.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use elasticsearch::http::StatusCode;
use elasticsearch::indices::{
    IndicesCreateParts, IndicesExistsParts, IndicesGetMappingParts, IndicesPutIndexTemplateParts,
};
use elasticsearch::inference::{
    InferenceDeleteParts, InferenceGetParts, InferenceInferenceParts, InferencePutParts,
};
use elasticsearch::ingest::IngestPutPipelineParts;
use elasticsearch::Elasticsearch;
use serde::de::IgnoredAny;
use serde_json::{json, Value};

use crate::engine::{ModelInfo, Similarity};

use super::assets::{self, EndpointParams, IndexParams, PipelineKind};
use super::body::RESOURCE_ALREADY_EXISTS;
use super::client::call;
use super::image::data_uri;
use super::mode::{Mode, ModeChoice};
use super::model_info;
use super::version::{Cluster, Service};
use super::{
    failed_index_name, failed_template_name, physical_index_name, pipeline_name,
    search_inference_id, semantic_pipeline_name, template_name, VECTOR_FIELD,
};
use crate::engine::format::sample_jpeg;
use crate::sidecar::Lane;

/// The only task type Sightline's endpoints use (contract §10: `embedding` is not available to
/// the services that can point at a self-hosted URL).
pub(crate) const TASK_TYPE: &str = "text_embedding";

/// Placeholder `api_key` for sidecars run without one: every service requires the field
/// (contract §11.3) and a sidecar without a key ignores the header.
pub(crate) const NO_SIDECAR_KEY: &str = "sightline-no-key";

/// Text used to verify the endpoint.
pub(crate) const VERIFY_TEXT: &str = "a photo of a dog on a beach";

/// What `setup` is asked to create.
#[derive(Debug, Clone)]
pub(crate) struct SetupConfig {
    pub(crate) index: String,
    pub(crate) inference_id: String,
    /// The sidecar's base URL as Elasticsearch reaches it.
    pub(crate) sidecar_url: String,
    pub(crate) sidecar_api_key: Option<String>,
    /// `None`: choose from the version.
    pub(crate) service: Option<Service>,
    /// Delete and recreate the endpoint even when its visible settings match (ES never returns
    /// the `api_key`, so a changed key cannot be detected).
    pub(crate) recreate_endpoint: bool,
    /// Send one image and one text through the endpoint at the end.
    pub(crate) verify: bool,
    /// `service_settings.rate_limit.requests_per_minute` of both endpoints.
    pub(crate) rate_limit: u64,
}

/// Default of `setup --rate-limit`: far above what one sidecar answers (≈ 8 300 requests/s per
/// node and endpoint), so Elasticsearch's client-side limiter never throttles a big machine;
/// the sidecar itself answers 429 when it is full, which ES retries (README "Rate limit").
pub(crate) const DEFAULT_RATE_LIMIT: u64 = 500_000;

/// The vector field an existing index must have, and the model it must have been made with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VectorSpec {
    pub(crate) dims: usize,
    pub(crate) similarity: Similarity,
    pub(crate) model: ModelInfo,
}

/// One request of the plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    PutEndpoint {
        id: String,
        service: Service,
        body: Value,
    },
    PutPipeline {
        id: String,
        body: Value,
    },
    PutIndexTemplate {
        name: String,
        body: Value,
    },
    /// Create the index if missing; with `vector`, an existing index must map the vector field
    /// with those dimensions and record the same model. With `alias`, the index is created
    /// with that alias (`body`), and an existing alias (or old-layout index) of that name counts
    /// as the index being there.
    CreateIndex {
        name: String,
        alias: Option<String>,
        body: Option<Value>,
        vector: Option<Box<VectorSpec>>,
    },
    Verify {
        id: String,
        what: &'static str,
        body: Value,
    },
}

impl Step {
    pub(crate) fn method(&self) -> &'static str {
        match self {
            Step::Verify { .. } => "POST",
            _ => "PUT",
        }
    }

    /// Path without a leading slash, as Kibana's console writes it.
    pub(crate) fn path(&self) -> String {
        match self {
            Step::PutEndpoint { id, .. } => format!("_inference/{TASK_TYPE}/{id}"),
            Step::PutPipeline { id, .. } => format!("_ingest/pipeline/{id}"),
            Step::PutIndexTemplate { name, .. } => format!("_index_template/{name}"),
            Step::CreateIndex { name, .. } => name.clone(),
            Step::Verify { id, .. } => format!("_inference/{TASK_TYPE}/{id}"),
        }
    }

    pub(crate) fn body(&self) -> Option<&Value> {
        match self {
            Step::PutEndpoint { body, .. }
            | Step::PutPipeline { body, .. }
            | Step::PutIndexTemplate { body, .. }
            | Step::Verify { body, .. } => Some(body),
            Step::CreateIndex { body, .. } => body.as_ref(),
        }
    }

    fn comment(&self) -> String {
        match self {
            Step::PutEndpoint { id, service, .. } => format!(
                "Inference endpoint ({service} service) pointing at the sidecar. If it already exists, first run: DELETE _inference/{TASK_TYPE}/{id}"
            ),
            Step::PutPipeline { id, .. } => format!("Ingest pipeline {id}"),
            Step::PutIndexTemplate { name, .. } => format!("Index template {name}"),
            Step::CreateIndex { name, alias: Some(alias), .. } => format!("Index {name} behind the alias {alias}, which clients name (its mappings come from the template); skip it if {alias} already exists"),
            Step::CreateIndex { name, .. } => format!("Index {name} (its mappings come from the template)"),
            Step::Verify { what, .. } => format!("Check: one {what} through the endpoint returns a vector"),
        }
    }

    /// The request in Kibana dev-console syntax: `METHOD path` then the pretty JSON body.
    pub(crate) fn console(&self) -> String {
        let mut out = format!("{} {}\n", self.method(), self.path());
        if let Some(body) = self.body() {
            // serde_json cannot fail on a Value
            out.push_str(&serde_json::to_string_pretty(body).unwrap_or_default());
            out.push('\n');
        }
        out
    }
}

/// The ordered requests of a setup.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) cluster: Cluster,
    pub(crate) mode: ModeChoice,
    /// `None` in vectors mode (no endpoint).
    pub(crate) service: Option<Service>,
    pub(crate) steps: Vec<Step>,
}

/// Lays out every request for `cluster`, `model` and `config` in the chosen mode.
pub(crate) fn plan(
    cluster: &Cluster,
    model: &ModelInfo,
    config: &SetupConfig,
    mode: &ModeChoice,
) -> Result<Plan> {
    model_info::validate(model)?;
    let physical = physical_index_name(&config.index, model);
    let image_index = |vector| Step::CreateIndex {
        name: physical.clone(),
        alias: Some(config.index.clone()),
        body: Some(json!({"aliases": {config.index.as_str(): {}}})),
        vector,
    };
    let index_vector = Some(Box::new(VectorSpec {
        dims: model.dimensions,
        similarity: model.similarity,
        model: model.clone(),
    }));
    if mode.mode == Mode::Vectors {
        // Composable index templates exist from 7.8.
        if !cluster.version.at_least(7, 8) && !cluster.serverless {
            bail!(
                "Elasticsearch {} has no composable index templates (7.8+); `sightline ingest` creates the index itself there",
                cluster.version
            );
        }
        let index_params = IndexParams::vectors_mode(&physical, model);
        return Ok(Plan {
            cluster: cluster.clone(),
            mode: mode.clone(),
            service: None,
            steps: vec![
                Step::PutIndexTemplate {
                    name: template_name(&config.index),
                    body: assets::index_template_body(&index_params, cluster)?,
                },
                image_index(index_vector),
            ],
        });
    }
    let service = cluster.choose_service(config.service)?;
    let search_id = search_inference_id(&config.inference_id);
    let endpoint_params = |lane| EndpointParams {
        sidecar_url: config.sidecar_url.clone(),
        sidecar_api_key: config
            .sidecar_api_key
            .clone()
            .unwrap_or_else(|| NO_SIDECAR_KEY.to_owned()),
        model: model.name.clone(),
        dims: model.dimensions,
        similarity: model.similarity,
        lane,
        rate_limit: Some(config.rate_limit),
    };
    let endpoint = assets::endpoint_body(service, &endpoint_params(Lane::Ingest), cluster)?;
    let search_endpoint = assets::endpoint_body(service, &endpoint_params(Lane::Search), cluster)?;
    let pipeline = pipeline_name(&config.index);
    let index_params = IndexParams {
        index: physical.clone(),
        pipeline: Some(pipeline.clone()),
        inference_id: config.inference_id.clone(),
        search_inference_id: search_id.clone(),
        model: model.name.clone(),
        fingerprint: model.fingerprint.clone(),
        mode: Mode::Pipeline,
        dims: model.dimensions,
        similarity: model.similarity,
    };

    let mut steps = vec![
        Step::PutEndpoint {
            id: config.inference_id.clone(),
            service,
            body: endpoint,
        },
        Step::PutEndpoint {
            id: search_id.clone(),
            service,
            body: search_endpoint,
        },
        Step::PutPipeline {
            id: pipeline,
            body: assets::pipeline_body(PipelineKind::Embedding, &config.inference_id)?,
        },
    ];
    if cluster.supports_semantic_images() {
        steps.push(Step::PutPipeline {
            id: semantic_pipeline_name(&config.index),
            body: assets::pipeline_body(PipelineKind::Semantic, &config.inference_id)?,
        });
    }
    steps.extend([
        Step::PutIndexTemplate {
            name: template_name(&config.index),
            body: assets::index_template_body(&index_params, cluster)?,
        },
        Step::PutIndexTemplate {
            name: failed_template_name(&config.index),
            // The pipeline redirects to `{{_index}}-failed`, and `_index` there is the name the
            // request gave: the alias.
            body: assets::failed_template_body(&IndexParams {
                index: config.index.clone(),
                ..index_params.clone()
            })?,
        },
        image_index(index_vector),
        Step::CreateIndex {
            name: failed_index_name(&config.index),
            alias: None,
            body: None,
            vector: None,
        },
    ]);
    if config.verify {
        let image = data_uri("image/jpeg", &sample_jpeg()?);
        steps.push(Step::Verify {
            id: config.inference_id.clone(),
            what: "image",
            body: json!({ "input": [image] }),
        });
        steps.push(Step::Verify {
            id: search_id,
            what: "text",
            body: json!({ "input": [VERIFY_TEXT] }),
        });
    }
    Ok(Plan {
        cluster: cluster.clone(),
        mode: mode.clone(),
        service: Some(service),
        steps,
    })
}

/// The whole plan for Kibana's dev console, with `#` comments the console accepts.
pub(crate) fn console_script(plan: &Plan, model: &ModelInfo) -> String {
    let mut out = String::new();
    let service = plan.service.map_or_else(
        || "no inference endpoint".to_owned(),
        |s| format!("{s} service"),
    );
    // One comment line: the console (and `parse_console`) takes a request after each.
    let _ = writeln!(
        out,
        "# Sightline setup for Elasticsearch {} ({service}), model {} ({} dims, {}). Mode {}: {}",
        plan.cluster.version,
        model.name,
        model.dimensions,
        model.similarity,
        plan.mode.mode,
        plan.mode.why
    );
    for (number, step) in plan.steps.iter().enumerate() {
        let _ = writeln!(out, "\n# {}. {}", number + 1, step.comment());
        out.push_str(&step.console());
    }
    out
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) what: String,
    pub(crate) action: String,
}

/// Sends the plan. Returns one line per step; the first failure stops and is returned.
pub(crate) async fn apply(
    client: &Elasticsearch,
    plan: &Plan,
    model: &ModelInfo,
    config: &SetupConfig,
) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        let request = format!("{} {}", step.method(), step.path());
        let action = match step {
            Step::PutEndpoint { id, body, .. } => {
                ensure_endpoint(client, &plan.cluster, id, body, config.recreate_endpoint).await?
            }
            Step::PutPipeline { id, body } => {
                let ingest = client.ingest();
                let put = ingest
                    .put_pipeline(IngestPutPipelineParts::Id(id))
                    .body(body);
                call::<IgnoredAny>(&request, put.send()).await?;
                "created or updated".to_owned()
            }
            Step::PutIndexTemplate { name, body } => {
                let indices = client.indices();
                let put = indices
                    .put_index_template(IndicesPutIndexTemplateParts::Name(name))
                    .body(body);
                call::<IgnoredAny>(&request, put.send()).await?;
                "created or updated".to_owned()
            }
            Step::CreateIndex {
                name,
                alias,
                body,
                vector,
            } => {
                ensure_index(
                    client,
                    name,
                    alias.as_deref(),
                    body.as_ref(),
                    vector.as_deref(),
                )
                .await?
            }
            Step::Verify { id, what, body } => verify(client, id, what, body, model).await?,
        };
        outcomes.push(Outcome {
            what: step_label(step),
            action,
        });
    }
    Ok(outcomes)
}

fn step_label(step: &Step) -> String {
    match step {
        Step::PutEndpoint { id, service, .. } => format!("inference endpoint {id} ({service})"),
        Step::PutPipeline { id, .. } => format!("ingest pipeline {id}"),
        Step::PutIndexTemplate { name, .. } => format!("index template {name}"),
        Step::CreateIndex {
            alias: Some(alias), ..
        } => format!("index {alias}"),
        Step::CreateIndex { name, .. } => format!("index {name}"),
        Step::Verify { id, what, .. } => format!("{what} through {id}"),
    }
}

async fn ensure_endpoint(
    client: &Elasticsearch,
    cluster: &Cluster,
    id: &str,
    body: &Value,
    recreate: bool,
) -> Result<String> {
    let get_request = format!("GET _inference/{TASK_TYPE}/{id}");
    let inference = client.inference();
    let get = inference.get(InferenceGetParts::TaskTypeInferenceId(TASK_TYPE, id));
    let existing = match call::<Value>(&get_request, get.send()).await {
        Ok(existing) => Some(existing),
        Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => None,
        Err(err) => return Err(err.into()),
    };
    // `None`: no endpoint; `Some(why)`: one exists and is replaced because of `why`.
    let replaced: Option<String> = match &existing {
        None => None,
        Some(existing) => match existing_endpoint(existing) {
            Some(current) => {
                let why = match endpoint_difference(current, body) {
                    None if !recreate => return Ok("already up to date".to_owned()),
                    None => "--recreate-endpoint".to_owned(),
                    Some(difference) => difference,
                };
                delete_endpoint(client, cluster, id).await?;
                Some(why)
            }
            None => None,
        },
    };
    let put_request = format!("PUT _inference/{TASK_TYPE}/{id}");
    let put = inference
        .put(InferencePutParts::TaskTypeInferenceId(TASK_TYPE, id))
        .body(body);
    call::<IgnoredAny>(&put_request, put.send())
        .await
        .context("Elasticsearch calls the sidecar once (input \"how big\") while creating the endpoint: it must be running and reachable from the cluster at the --sidecar-url given")?;
    Ok(match replaced {
        Some(why) => format!("recreated ({why})"),
        None => "created".to_owned(),
    })
}

async fn delete_endpoint(client: &Elasticsearch, cluster: &Cluster, id: &str) -> Result<()> {
    let request = format!("DELETE _inference/{TASK_TYPE}/{id}");
    let inference = client.inference();
    let delete = inference.delete(InferenceDeleteParts::TaskTypeInferenceId(TASK_TYPE, id));
    // Our own pipeline references the endpoint; without force newer versions refuse.
    let delete = if cluster.inference_delete_has_force() {
        delete.force(true)
    } else {
        delete
    };
    call::<IgnoredAny>(&request, delete.send()).await?;
    Ok(())
}

/// The endpoint object in a GET answer: `endpoints` from 8.13, `models` in 8.12.
pub(crate) fn existing_endpoint(answer: &Value) -> Option<&Value> {
    ["endpoints", "models"]
        .iter()
        .find_map(|key| answer.get(*key).and_then(Value::as_array))
        .and_then(|list| list.first())
}

/// `None` when `existing` (from GET) has the settings `desired` (a PUT body) asks for, else a
/// description of the first difference. Only fields ES echoes back as sent are compared: secrets
/// never come back, ES adds defaults (rate limits, discovered dimensions) the PUT body leaves
/// out, and the custom `request` template may come back reshaped (contract §3.1), so comparing it
/// would recreate the endpoint on every run.
pub(crate) fn endpoint_difference(existing: &Value, desired: &Value) -> Option<String> {
    let compare = [
        "/service",
        "/service_settings/url",
        "/service_settings/similarity",
        "/service_settings/model_id",
        "/service_settings/dimensions",
        "/task_settings/model",
        "/chunking_settings/strategy",
    ];
    compare.iter().find_map(|pointer| {
        let want = desired.pointer(pointer)?;
        let have = existing.pointer(pointer);
        (have != Some(want)).then(|| {
            format!(
                "{pointer} is {} (want {want})",
                have.map_or_else(|| "missing".to_owned(), Value::to_string)
            )
        })
    })
}

/// Creates `name` unless it, or the alias that names it, exists. An existing one is checked
/// (model, then vector mapping) and kept: re-running setup never loses documents. With `alias`:
/// `alias` may be an alias (the layout from now on) or an index of that name (the layout before
/// aliases), and either is kept and used as it is.
async fn ensure_index(
    client: &Elasticsearch,
    name: &str,
    alias: Option<&str>,
    body: Option<&Value>,
    vector: Option<&VectorSpec>,
) -> Result<String> {
    let probe = alias.unwrap_or(name);
    let exists_request = format!("HEAD {probe}");
    let index = [probe];
    let indices = client.indices();
    let exists = indices.exists(IndicesExistsParts::Index(&index));
    match call::<()>(&exists_request, exists.send()).await {
        Ok(()) => {
            let mut kept = "exists, kept".to_owned();
            if let Some(spec) = vector {
                let mapping_request = format!("GET {probe}/_mapping");
                let get = indices.get_mapping(IndicesGetMappingParts::Index(&index));
                let mapping: Value = call(&mapping_request, get.send()).await?;
                // The model first: the more specific reason when both differ.
                model_info::check_same_model(
                    probe,
                    model_info::recorded_fingerprint(&mapping).as_deref(),
                    &spec.model,
                )?;
                check_vector_mapping(&mapping, probe, spec.dims, spec.similarity)?;
                if let Some(concrete) = mapping.as_object().and_then(|m| m.keys().next()) {
                    kept = if concrete == probe {
                        format!("exists, kept (an index, not an alias: `sightline reindex --replace-index` makes {probe} an alias)")
                    } else {
                        format!("exists, kept (alias of {concrete})")
                    };
                }
            }
            return Ok(kept);
        }
        Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => {}
        Err(err) => return Err(err.into()),
    }
    let create_request = format!("PUT {name}");
    let create = indices.create(IndicesCreateParts::Index(name));
    let sent = match body {
        Some(body) => call::<IgnoredAny>(&create_request, create.body(body).send()).await,
        None => call::<IgnoredAny>(&create_request, create.send()).await,
    };
    match sent {
        Ok(_) => Ok(match alias {
            Some(alias) => format!("created {name} behind the alias {alias}"),
            None => "created".to_owned(),
        }),
        // The physical index exists but no alias names it (someone deleted the alias, or
        // created the index by hand): it is this model's index, so the alias is put back.
        Err(err) if err.es_type() == Some(RESOURCE_ALREADY_EXISTS) => match alias {
            Some(alias) => {
                let actions = json!({"actions": [{"add": {"index": name, "alias": alias}}]});
                call::<IgnoredAny>(
                    "POST _aliases",
                    indices.update_aliases().body(actions).send(),
                )
                .await?;
                Ok(format!("exists, alias {alias} added"))
            }
            None => Ok("exists, kept".to_owned()),
        },
        Err(err) => Err(err.into()),
    }
}

/// An existing index must map the vector field with the model's dims and similarity; otherwise
/// every document would be rejected, and setup must not drop an index that holds data.
pub(crate) fn check_vector_mapping(
    answer: &Value,
    index: &str,
    dims: usize,
    similarity: Similarity,
) -> Result<()> {
    let indices = answer
        .as_object()
        .context("GET _mapping did not answer with an object")?;
    let pointer = format!(
        "/mappings/properties/{}",
        VECTOR_FIELD.replace('.', "/properties/")
    );
    for (concrete, mapping) in indices {
        let Some(field) = mapping.pointer(&pointer) else {
            bail!(
                "index {concrete} exists but has no {VECTOR_FIELD} mapping (it was not created by sightline setup); choose another --index or delete it"
            );
        };
        let have_dims = field.get("dims").and_then(Value::as_u64);
        if have_dims != Some(dims as u64) {
            bail!(
                "index {concrete} maps {VECTOR_FIELD} with {} dimensions but the sidecar's model has {dims}; use another --index (or delete {index} and run setup again)",
                have_dims.map_or_else(|| "no".to_owned(), |d| d.to_string())
            );
        }
        if let Some(have_similarity) = field.get("similarity").and_then(Value::as_str) {
            if have_similarity != similarity.as_str() {
                bail!(
                    "index {concrete} maps {VECTOR_FIELD} with similarity {have_similarity} but the model needs {similarity}; use another --index"
                );
            }
        }
    }
    Ok(())
}

async fn verify(
    client: &Elasticsearch,
    id: &str,
    what: &str,
    body: &Value,
    model: &ModelInfo,
) -> Result<String> {
    let request = format!("POST _inference/{TASK_TYPE}/{id} ({what})");
    let inference = client.inference();
    let post = inference
        .inference(InferenceInferenceParts::TaskTypeInferenceId(TASK_TYPE, id))
        .body(body);
    let answer: Value = call(&request, post.send()).await?;
    let vector = first_embedding(&answer)
        .with_context(|| format!("{request}: no text_embedding[0].embedding in the answer"))?;
    check_vector(&vector, model).with_context(|| request.clone())?;
    Ok(format!("ok, {} dimensions", vector.len()))
}

/// `text_embedding[0].embedding` of a `POST _inference` answer.
pub(crate) fn first_embedding(answer: &Value) -> Option<Vec<f64>> {
    answer
        .pointer("/text_embedding/0/embedding")?
        .as_array()?
        .iter()
        .map(Value::as_f64)
        .collect()
}

/// The vector has the model's length and, for `dot_product`, unit length (ES's own tolerance
/// is 1e-4 on the squared norm; allow a little more for float32 rounding through JSON).
pub(crate) fn check_vector(vector: &[f64], model: &ModelInfo) -> Result<()> {
    if vector.len() != model.dimensions {
        bail!(
            "the endpoint returned {} dimensions but the model has {}",
            vector.len(),
            model.dimensions
        );
    }
    if model.similarity == Similarity::DotProduct {
        let squared_norm: f64 = vector.iter().map(|x| x * x).sum();
        if (squared_norm - 1.0).abs() > 1e-3 {
            bail!("the endpoint returned a vector of squared length {squared_norm:.4}; dot_product needs unit vectors");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::version::EsVersion;

    fn model() -> ModelInfo {
        ModelInfo {
            name: "clip".to_owned(),
            dimensions: 4,
            normalized: true,
            similarity: Similarity::DotProduct,
            modalities: vec!["image".to_owned(), "text".to_owned()],
            max_seq_len: 0,
            serving: None,
            fingerprint: String::new(),
        }
    }

    fn config() -> SetupConfig {
        SetupConfig {
            index: "photos".to_owned(),
            inference_id: "sightline-clip".to_owned(),
            sidecar_url: "http://sidecar:8080".to_owned(),
            sidecar_api_key: None,
            service: None,
            recreate_endpoint: false,
            verify: true,
            rate_limit: DEFAULT_RATE_LIMIT,
        }
    }

    fn pipeline_mode() -> ModeChoice {
        ModeChoice {
            mode: Mode::Pipeline,
            why: "test".to_owned(),
        }
    }

    fn cluster(text: &str) -> Cluster {
        Cluster::new(text.parse::<EsVersion>().unwrap())
    }

    /// `METHOD path` of each step, in order.
    fn step_paths(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|s| format!("{} {}", s.method(), s.path()))
            .collect()
    }

    #[test]
    fn plan_orders_endpoint_before_users_of_it() {
        let plan = plan(&cluster("9.1.0"), &model(), &config(), &pipeline_mode()).unwrap();
        let paths = step_paths(&plan);
        assert_eq!(
            paths,
            [
                "PUT _inference/text_embedding/sightline-clip",
                "PUT _inference/text_embedding/sightline-clip-search",
                "PUT _ingest/pipeline/sightline-photos",
                "PUT _ingest/pipeline/sightline-photos-semantic",
                "PUT _index_template/sightline-photos",
                "PUT _index_template/sightline-photos-failed",
                "PUT photos-clip",
                "PUT photos-failed",
                "POST _inference/text_embedding/sightline-clip",
                "POST _inference/text_embedding/sightline-clip-search",
            ]
        );
        assert_eq!(plan.service, Some(Service::Custom));
        // The image index is created behind the alias clients name; its template matches the
        // physical index, the failed index's the alias (the pipeline's `_index`).
        assert_eq!(
            plan.steps[6].body().unwrap(),
            &json!({"aliases": {"photos": {}}})
        );
        assert_eq!(
            plan.steps[4].body().unwrap()["index_patterns"],
            json!(["photos-clip"])
        );
        assert_eq!(
            plan.steps[5].body().unwrap()["index_patterns"],
            json!(["photos-failed"])
        );
        assert_eq!(plan.steps[7].body(), None);
        let search_url = plan.steps[1].body().unwrap()["service_settings"]["url"].clone();
        assert_eq!(
            search_url,
            "http://sidecar:8080/v1/embeddings?priority=search"
        );
    }

    #[test]
    fn plan_without_semantic_variant_before_8_19() {
        let plan = plan(&cluster("8.15.0"), &model(), &config(), &pipeline_mode()).unwrap();
        assert!(!plan.steps.iter().any(|s| s.path().ends_with("-semantic")));
        assert_eq!(plan.service, Some(Service::OpenAi));
        assert_eq!(
            plan.steps[0].body().unwrap()["service_settings"]["api_key"],
            NO_SIDECAR_KEY
        );
    }

    #[test]
    fn plan_refuses_8_11() {
        let err = plan(&cluster("8.11.0"), &model(), &config(), &pipeline_mode())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--mode vectors"), "{err}");
    }

    #[test]
    fn vectors_mode_plans_template_and_index_only() {
        let vectors = ModeChoice {
            mode: Mode::Vectors,
            why: "basic licence (active)".to_owned(),
        };
        for version in ["8.11.0", "8.15.0", "9.3.0", "7.17.0"] {
            let plan = plan(&cluster(version), &model(), &config(), &vectors).unwrap();
            let paths = step_paths(&plan);
            assert_eq!(
                paths,
                ["PUT _index_template/sightline-photos", "PUT photos-clip"],
                "{version}"
            );
            let template = plan.steps[0].body().unwrap();
            assert!(template
                .pointer("/template/settings/index/default_pipeline")
                .is_none());
            assert_eq!(template["template"]["mappings"]["_meta"]["mode"], "vectors");
            assert_eq!(plan.service, None);
        }
        assert!(plan(&cluster("7.7.0"), &model(), &config(), &vectors).is_err());
    }

    #[test]
    fn console_script_is_pasteable() {
        let plan = plan(&cluster("8.15.0"), &model(), &config(), &pipeline_mode()).unwrap();
        let script = console_script(&plan, &model());
        assert!(script.contains("\nPUT _inference/text_embedding/sightline-clip\n{\n"));
        assert!(script.contains("\nPUT photos-clip\n{\n  \"aliases\""));
        // every non-comment block parses: method line then JSON
        for block in script.split("\n# ").skip(1) {
            let mut lines = block.lines().skip(1);
            let request_line = lines.next().unwrap();
            assert!(
                request_line.starts_with("PUT ") || request_line.starts_with("POST "),
                "{request_line}"
            );
            let body: String = lines.collect::<Vec<_>>().join("\n");
            if !body.trim().is_empty() {
                serde_json::from_str::<Value>(&body).unwrap();
            }
        }
    }

    #[test]
    fn endpoint_difference_ignores_secrets_and_es_defaults() {
        let desired = json!({"service": "openai", "service_settings": {"api_key": "k", "url": "http://s/v1/embeddings", "model_id": "m", "similarity": "dot_product"}});
        let same = json!({"inference_id": "x", "task_type": "text_embedding", "service": "openai",
            "service_settings": {"url": "http://s/v1/embeddings", "model_id": "m", "similarity": "dot_product", "dimensions": 512, "rate_limit": {"requests_per_minute": 3000}}});
        assert_eq!(endpoint_difference(&same, &desired), None);
        let moved = json!({"service": "openai", "service_settings": {"url": "http://old/v1/embeddings", "model_id": "m", "similarity": "dot_product"}});
        assert!(endpoint_difference(&moved, &desired)
            .unwrap()
            .contains("url"));
    }

    #[test]
    fn existing_endpoint_reads_both_answer_shapes() {
        let new = json!({"endpoints": [{"inference_id": "a"}]});
        let old = json!({"models": [{"model_id": "a"}]});
        assert_eq!(existing_endpoint(&new).unwrap()["inference_id"], "a");
        assert_eq!(existing_endpoint(&old).unwrap()["model_id"], "a");
        assert!(existing_endpoint(&json!({})).is_none());
    }

    #[test]
    fn vector_mapping_check() {
        let mapping = |dims: u64| json!({"photos": {"mappings": {"properties": {"ml": {"properties": {"image_vector": {"type": "dense_vector", "dims": dims, "similarity": "dot_product"}}}}}}});
        check_vector_mapping(&mapping(4), "photos", 4, Similarity::DotProduct).unwrap();
        assert!(
            check_vector_mapping(&mapping(8), "photos", 4, Similarity::DotProduct)
                .unwrap_err()
                .to_string()
                .contains("8 dimensions")
        );
        assert!(check_vector_mapping(&mapping(4), "photos", 4, Similarity::Cosine).is_err());
        let foreign = json!({"photos": {"mappings": {"properties": {"title": {"type": "text"}}}}});
        assert!(check_vector_mapping(&foreign, "photos", 4, Similarity::DotProduct).is_err());
    }

    #[test]
    fn verification_checks_length_and_norm() {
        let answer = json!({"text_embedding": [{"embedding": [0.5, 0.5, 0.5, 0.5]}]});
        let vector = first_embedding(&answer).unwrap();
        check_vector(&vector, &model()).unwrap();
        assert!(check_vector(&[1.0, 0.0], &model()).is_err());
        assert!(check_vector(&[1.0, 1.0, 0.0, 0.0], &model()).is_err());
    }
}
