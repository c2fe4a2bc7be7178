//! `POST /v1/embeddings`: the OpenAI dialect, which Elasticsearch's `openai` and `custom`
//! services send (es-contract §1, §3). Wire types, handler and error body live here.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::status::Failure;
use super::{
    embed_inputs, query_params, read_json, select_model, AppState, Dialect, RawInput, RequestError,
};
use crate::engine::ModalityHint;

/// The request body. Unknown fields (`user`, `OpenAI-Organization` extras) are ignored, as
/// es-contract §11 item 4 asks.
#[derive(Debug, Deserialize)]
pub(crate) struct OpenAiRequest {
    input: OpenAiInput,
    /// Chooses the model when several are served (`models.rs`), and is echoed back; ES always
    /// sends it (es-contract §1.2).
    #[serde(default)]
    model: Option<String>,
    /// Sent only when the endpoint was created with `dimensions`; must equal the model's.
    #[serde(default)]
    dimensions: Option<u64>,
    #[serde(default)]
    encoding_format: Option<String>,
    /// From a custom-service template (`document`/`query`); accepted, the modality is per input.
    #[serde(default, rename = "input_type")]
    _input_type: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OpenAiInput {
    One(String),
    Many(Vec<OpenAiItem>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OpenAiItem {
    Text(String),
    /// The multimodal content-object form (es-contract §10). No Elasticsearch release sends it
    /// to a configurable URL (9.5's `openai` `embedding` task is text-only); accepted so the day
    /// one does needs no change.
    Content {
        content: ContentObject,
    },
}

#[derive(Debug, Deserialize)]
struct ContentObject {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    format: Option<String>,
    value: String,
}

/// Response in OpenAI's own field order: the oldest ES parser stops at the first nested object
/// before `data` (es-contract §1.3).
#[derive(Debug, Serialize)]
struct OpenAiResponse<'a> {
    object: &'static str,
    data: Vec<OpenAiEmbedding>,
    model: &'a str,
    usage: Usage,
}

#[derive(Debug, Serialize)]
struct OpenAiEmbedding {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Float(Vec<f32>),
    /// Packed little-endian f32, standard base64 with padding.
    Base64(String),
}

#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Float,
    Base64,
}

/// `POST /v1/embeddings`
pub(crate) async fn embeddings(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RequestError> {
    let dialect = Dialect::OpenAi;
    let params = query_params(query.as_deref(), dialect)?;
    let request: OpenAiRequest = read_json(&state, dialect, &headers, body).await?;
    let engine = select_model(
        &state,
        dialect,
        params.model.as_deref(),
        request.model.as_deref(),
    )?;
    let dims = engine.info().dimensions;
    if let Some(asked) = request.dimensions {
        if asked != dims as u64 {
            return Err(RequestError::bad_request(
                dialect,
                format!(
                    "`dimensions` is {asked} but this model produces {dims}-dimensional vectors"
                ),
            ));
        }
    }
    let encoding = match request.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(RequestError::bad_request(
                dialect,
                format!("unknown `encoding_format` `{other}`: use `float` or `base64`"),
            ))
        }
    };
    let inputs = raw_inputs(request.input, params.hint)
        .map_err(|m| RequestError::bad_request(dialect, m))?;
    let embeddings = embed_inputs(&state, dialect, engine, inputs, params.priority).await?;
    let tokens = embeddings.iter().map(|e| e.tokens).sum();
    let data = embeddings
        .into_iter()
        .enumerate()
        .map(|(index, e)| OpenAiEmbedding {
            object: "embedding",
            index,
            embedding: match encoding {
                Encoding::Float => EmbeddingValue::Float(e.vector),
                Encoding::Base64 => EmbeddingValue::Base64(pack_base64(&e.vector)),
            },
        })
        .collect();
    let model = request.model.as_deref().unwrap_or(&engine.info().name);
    Ok(Json(OpenAiResponse {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
    .into_response())
}

fn raw_inputs(input: OpenAiInput, hint: ModalityHint) -> Result<Vec<RawInput>, String> {
    let items = match input {
        OpenAiInput::One(value) => return Ok(vec![RawInput { value, hint }]),
        OpenAiInput::Many(items) => items,
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            OpenAiItem::Text(value) => Ok(RawInput { value, hint }),
            OpenAiItem::Content { content } => {
                let hint = match (content.kind.as_str(), content.format.as_deref()) {
                    ("image", None | Some("base64")) => ModalityHint::Image,
                    ("text", None | Some("text")) => ModalityHint::Text,
                    (kind, format) => {
                        return Err(format!(
                            "input[{index}]: unsupported content type `{kind}` with format `{}`: use image/base64 or text/text",
                            format.unwrap_or("none")
                        ))
                    }
                };
                Ok(RawInput {
                    value: content.value,
                    hint,
                })
            }
        })
        .collect()
}

fn pack_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `{"error": {"message": ..., "type": ...}}`, what ES's `ErrorMessageResponseEntity` reads.
pub(crate) fn error_body(failure: Failure, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"message": message, "type": failure.openai_type()}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_packing_matches_the_contract_example() {
        // es-contract §1.3: [1.0, 2.0, 3.0] → "AACAPwAAAEAAAEBA".
        assert_eq!(pack_base64(&[1.0, 2.0, 3.0]), "AACAPwAAAEAAAEBA");
    }

    #[test]
    fn content_objects_set_the_modality_per_item() {
        let req: OpenAiRequest = serde_json::from_str(
            r#"{"input":["a",{"content":{"type":"image","format":"base64","value":"x"}},
                {"content":{"type":"text","format":"text","value":"b"}}],"model":"m","user":"u"}"#,
        )
        .unwrap();
        let inputs = raw_inputs(req.input, ModalityHint::Auto).unwrap();
        let hints: Vec<_> = inputs.iter().map(|i| i.hint).collect();
        assert_eq!(
            hints,
            [ModalityHint::Auto, ModalityHint::Image, ModalityHint::Text]
        );
        let bad: OpenAiRequest =
            serde_json::from_str(r#"{"input":[{"content":{"type":"video","value":"x"}}]}"#)
                .unwrap();
        let e = raw_inputs(bad.input, ModalityHint::Auto).err().unwrap();
        assert!(
            e.starts_with("input[0]: unsupported content type `video`"),
            "{e}"
        );
    }
}
