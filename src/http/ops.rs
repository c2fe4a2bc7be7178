//! Operations routes: `/health` (process alive), `/ready` (model loaded and workers answering),
//! `/info` (what an index needs to match this model), `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::{not_ready_status, AppState};
use crate::engine::{MaxBatch, Modality, ModelInfo, ServingLimits};
use crate::metrics;

/// `GET /health`
pub(crate) async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: 503 while a worker is stopped or stuck in one batch.
pub(crate) async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let ready = state.engine.is_ready();
    let body = if ready {
        json!({"status": "ready"})
    } else {
        json!({"status": "not ready", "reason": "an inference worker stopped or has been busy with one batch for too long"})
    };
    (not_ready_status(ready), Json(body))
}

/// `GET /info`: the engine's [`ModelInfo`] with the limits of this server.
pub(crate) async fn info(State(state): State<AppState>) -> Json<ModelInfo> {
    let opts = state.engine.options();
    Json(ModelInfo {
        serving: Some(ServingLimits {
            max_inputs: state.cfg.max_inputs,
            max_body_bytes: state.cfg.max_body,
            max_batch: MaxBatch {
                image: opts.max_batch_image,
                text: opts.max_batch_text,
            },
            max_pixels: opts.decode.max_pixels,
            jpeg_prescale: opts.decode.jpeg_prescale,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }),
        ..state.engine.info().clone()
    })
}

/// `GET /metrics`
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    for modality in [Modality::Image, Modality::Text] {
        metrics::queue_depth(modality.label(), state.engine.queue_depth(modality));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(),
    )
}
