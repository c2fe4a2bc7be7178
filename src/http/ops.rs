//! Operations routes: `/health` (process alive), `/ready` (every model loaded and its workers
//! answering), `/info` (what an index needs to match each model served), `/metrics` (Prometheus
//! text).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::{not_ready_status, AppState};
use crate::engine::{MaxBatch, Modality, ModelInfo, ServerInfo, ServingLimits};
use crate::metrics;

/// `GET /health`
pub(crate) async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: 503 while a worker of any model is stopped or stuck in one batch; the body then
/// names the models that are not ready.
pub(crate) async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let not_ready: Vec<&str> = state
        .models
        .all()
        .iter()
        .filter(|engine| !engine.is_ready())
        .map(|engine| engine.info().name.as_str())
        .collect();
    let ready = not_ready.is_empty();
    let body = if ready {
        json!({"status": "ready"})
    } else {
        json!({"status": "not ready", "reason": "an inference worker stopped or has been busy with one batch for too long", "models": not_ready})
    };
    (not_ready_status(ready), Json(body))
}

/// `GET /info`: the first model's [`ModelInfo`] with the limits of this server, and every model
/// served ([`ServerInfo`]).
pub(crate) async fn info(State(state): State<AppState>) -> Json<ServerInfo> {
    let first = state.models.first();
    let opts = first.options();
    let default = ModelInfo {
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
        ..first.info().clone()
    };
    let models = state
        .models
        .all()
        .iter()
        .map(|engine| engine.info().clone())
        .collect();
    Json(ServerInfo { default, models })
}

/// `GET /metrics`
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    for engine in state.models.all() {
        for modality in [Modality::Image, Modality::Text] {
            let depth = engine.queue_depth(modality);
            metrics::queue_depth(modality.label(), &engine.info().name, depth);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(),
    )
}
