//! `POST /embed` (also `/hf/embed`): the Hugging Face / text-embeddings-inference dialect that
//! Elasticsearch's `hugging_face` service sends (es-contract §2). Its body names no model: where
//! several are served, the endpoint's URL chooses one with `?model=NAME`.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;

use super::{
    embed_inputs, query_params, read_json, select_model, AppState, Dialect, RawInput, RequestError,
};

/// `{"inputs": string | [string]}`; TEI's other fields (`truncate`, `normalize`) are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct HfEmbedRequest {
    inputs: HfInputs,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HfInputs {
    One(String),
    Many(Vec<String>),
}

/// `POST /embed` → `[[...], ...]`, one array per input, in order.
pub(crate) async fn embed(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<Vec<f32>>>, RequestError> {
    let dialect = Dialect::HuggingFace;
    let params = query_params(query.as_deref(), dialect)?;
    let request: HfEmbedRequest = read_json(&state, dialect, &headers, body).await?;
    let engine = select_model(&state, dialect, params.model.as_deref(), None)?;
    let values = match request.inputs {
        HfInputs::One(s) => vec![s],
        HfInputs::Many(v) => v,
    };
    let inputs = values
        .into_iter()
        .map(|value| RawInput {
            value,
            hint: params.hint,
        })
        .collect();
    let embeddings = embed_inputs(&state, dialect, engine, inputs, params.priority).await?;
    Ok(Json(embeddings.into_iter().map(|e| e.vector).collect()))
}

/// `{"error": "..."}`: a top-level string, what ES's `HuggingFaceErrorResponseEntity` reads.
pub(crate) fn error_body(message: &str) -> serde_json::Value {
    serde_json::json!({ "error": message })
}
