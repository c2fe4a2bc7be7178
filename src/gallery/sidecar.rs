//! The gallery's one dependency on the sidecar: embed a query (text or `data:` URI) and read
//! `/info`. Queries are always embedded here and sent as `knn.query_vector`, so the gallery works
//! on every licence, with or without the Inference API (issue 11's `vectors` mode).
//! [`QueryEmbedder`] is the seam: tests and a shared sidecar client can stand in for
//! [`HttpSidecar`].

use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::engine::ModelInfo;

/// Why the sidecar gave no vector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SidecarError {
    /// Not reachable, loading, overloaded (429/503): try again later.
    NotReady(String),
    /// A 4xx about the input itself (an image the model cannot decode, a text too long).
    Rejected(String),
    /// Any other answer: a wrong URL, a wrong key, not a Sightline sidecar.
    Broken(String),
}

/// What a query vector is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Modality {
    Text,
    /// The input is a `data:image/…;base64,…` URI.
    Image,
}

impl Modality {
    fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
        }
    }
}

/// Embeds queries and describes the model; `Send + Sync` so one instance serves every request.
pub(crate) trait QueryEmbedder: Send + Sync {
    /// One query vector for `input`. The modality is stated, so a typed text that happens to
    /// look like a URL or a data URI is still embedded as text.
    fn embed<'a>(
        &'a self,
        modality: Modality,
        input: &'a str,
    ) -> BoxFuture<'a, Result<Vec<f32>, SidecarError>>;
    /// The sidecar's `GET /info`.
    fn info(&self) -> BoxFuture<'_, Result<ModelInfo, SidecarError>>;
}

/// `sightline serve` over HTTP.
#[derive(Debug, Clone)]
pub(crate) struct HttpSidecar {
    base: String,
    api_key: Option<String>,
    /// Ask for the search lane (`?priority=search`, issue 11 §4); sidecars that predate it
    /// ignore unknown query parameters.
    priority: bool,
    client: reqwest::Client,
}

impl HttpSidecar {
    pub(crate) fn new(
        base: &str,
        api_key: Option<String>,
        priority: bool,
        timeout: Duration,
    ) -> anyhow::Result<HttpSidecar> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // The sidecar sits next to the gallery; a system proxy would only be in the way.
            .no_proxy()
            .build()?;
        Ok(HttpSidecar {
            base: base.trim_end_matches('/').to_owned(),
            api_key,
            priority,
            client,
        })
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends `request` and returns the body of a 2xx answer, classifying everything else.
    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<String, SidecarError> {
        let response = self.authorised(request).send().await.map_err(|err| {
            SidecarError::NotReady(format!(
                "cannot reach the sidecar at {} ({what}): {err}",
                self.base
            ))
        })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(body);
        }
        let message = error_message(&body);
        let text = format!("{what}: the sidecar answered {status}: {message}");
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                SidecarError::NotReady(text)
            }
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
                SidecarError::Rejected(message)
            }
            _ => SidecarError::Broken(text),
        })
    }
}

#[derive(Deserialize)]
struct EmbeddingsReply {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
}

impl QueryEmbedder for HttpSidecar {
    fn embed<'a>(
        &'a self,
        modality: Modality,
        input: &'a str,
    ) -> BoxFuture<'a, Result<Vec<f32>, SidecarError>> {
        Box::pin(async move {
            let mut url = format!("{}/v1/embeddings?modality={}", self.base, modality.as_str());
            if self.priority {
                url.push_str("&priority=search");
            }
            let request = self
                .client
                .post(&url)
                .json(&json!({"input": [input], "model": "sightline"}));
            let body = self.send("POST /v1/embeddings", request).await?;
            let reply: EmbeddingsReply = serde_json::from_str(&body).map_err(|err| {
                SidecarError::Broken(format!(
                    "POST {url}: the answer is not OpenAI embeddings JSON: {err}"
                ))
            })?;
            reply
                .data
                .into_iter()
                .next()
                .map(|item| item.embedding)
                .ok_or_else(|| {
                    SidecarError::Broken(format!("POST {url}: no embedding in the answer"))
                })
        })
    }

    fn info(&self) -> BoxFuture<'_, Result<ModelInfo, SidecarError>> {
        Box::pin(async move {
            let url = format!("{}/info", self.base);
            let body = self.send("GET /info", self.client.get(&url)).await?;
            serde_json::from_str(&body).map_err(|err| {
                SidecarError::Broken(format!(
                    "GET {url}: the answer is not Sightline's /info JSON: {err}"
                ))
            })
        })
    }
}

/// `error.message` of an OpenAI-style error body, or the body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.trim().chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_the_openai_body_or_the_text() {
        assert_eq!(
            error_message(
                r#"{"error":{"message":"input 0: not an image","type":"invalid_request_error"}}"#
            ),
            "input 0: not an image"
        );
        assert_eq!(error_message(" upstream down \n"), "upstream down");
    }
}
