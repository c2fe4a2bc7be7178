//! A cap on request-body bytes held at once across all requests (`--max-buffered-body`).
//!
//! `--max-body` bounds one body; without this, 40 clients each sending a body just under it
//! and pausing took RSS from 46 MiB to 2.5 GB (issue 16 §5). Before its body is read, a request
//! reserves what it will hold: its declared `Content-Length` (a body over `--max-body` is drained
//! without being kept, so it reserves nothing), or `--max-body` when the length is unknown
//! (chunked; Elasticsearch never sends that). The reservation lasts until the response is ready.
//! A request that does not fit gets a 429 with `Retry-After` at once — every Elasticsearch
//! service retries 429 — after its body has been read and dropped, so the client reads the answer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

use super::{refuse_after_body, AppState, Dialect, RequestError};
use crate::engine::ErrorKind;
use crate::http::status::Failure;

/// Reservations are counted in KiB: a semaphore counts in `u32` per acquisition.
const UNIT: u64 = 1024;

pub(crate) struct BodyBudget {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl BodyBudget {
    pub(crate) fn new(limit: usize) -> BodyBudget {
        let units = (limit as u64 / UNIT).clamp(1, Semaphore::MAX_PERMITS as u64);
        BodyBudget {
            permits: Arc::new(Semaphore::new(units as usize)),
            limit,
        }
    }
}

/// What a request will hold of the budget, in bytes.
fn reservation(req: &Request, max_body: usize) -> u64 {
    let headers = req.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n <= max_body as u64 => n,
        // Drained and dropped by `read_json`, never held.
        Some(_) => 0,
        None if headers.contains_key(header::TRANSFER_ENCODING) => max_body as u64,
        None => 0,
    }
}

pub(crate) async fn reserve(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let bytes = reservation(&req, state.cfg.max_body);
    if bytes == 0 {
        return next.run(req).await;
    }
    let units = bytes.div_ceil(UNIT).min(u32::MAX as u64) as u32;
    match state.budget.permits.clone().try_acquire_many_owned(units) {
        Ok(permit) => {
            let response = next.run(req).await;
            drop(permit);
            response
        }
        Err(_) => {
            let dialect = Dialect::of_path(req.uri().path());
            let refusal = RequestError {
                failure: Failure::Input(ErrorKind::Overloaded),
                message: format!(
                    "request bodies in progress hold the server's limit of {} bytes \
                     (`--max-buffered-body`); retry shortly",
                    state.budget.limit
                ),
                dialect,
                retry_after: None,
            };
            refuse_after_body(req, state.cfg.max_body, refusal).await
        }
    }
}
