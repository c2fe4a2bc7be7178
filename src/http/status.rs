//! The one table from error kinds to HTTP statuses. It has no 413 row on purpose: on a 413
//! Elasticsearch cuts every input to half its length and resends (es-contract §1.4, §5), which
//! would turn every base64 image into garbage.

use axum::http::StatusCode;

use crate::engine::ErrorKind;

/// Failures of a whole request, before or around the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    Input(ErrorKind),
    /// Missing or wrong API key.
    Unauthorized,
}

impl Failure {
    pub(super) fn status(self) -> StatusCode {
        match self {
            Failure::Input(ErrorKind::BadInput | ErrorKind::Unsupported) => StatusCode::BAD_REQUEST,
            // ES retries 429 in every service (es-contract §11 item 13).
            Failure::Input(ErrorKind::Overloaded) => StatusCode::TOO_MANY_REQUESTS,
            // 503 is retried by openai and hugging_face: right for transient states.
            Failure::Input(ErrorKind::NotReady | ErrorKind::Timeout) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Failure::Input(ErrorKind::Internal) => StatusCode::INTERNAL_SERVER_ERROR,
            Failure::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// OpenAI's `error.type` vocabulary.
    pub(super) fn openai_type(self) -> &'static str {
        match self {
            Failure::Input(ErrorKind::BadInput | ErrorKind::Unsupported) => "invalid_request_error",
            Failure::Input(ErrorKind::Overloaded) => "rate_limit_error",
            Failure::Input(ErrorKind::NotReady | ErrorKind::Timeout) => "service_unavailable",
            Failure::Input(ErrorKind::Internal) => "server_error",
            Failure::Unauthorized => "authentication_error",
        }
    }

    /// Seconds a client should wait before retrying, for the retryable statuses.
    pub(super) fn retry_after(self) -> Option<u32> {
        match self {
            Failure::Input(ErrorKind::Overloaded | ErrorKind::NotReady | ErrorKind::Timeout) => {
                Some(1)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_table() {
        let rows = [
            (
                Failure::Input(ErrorKind::BadInput),
                400,
                "invalid_request_error",
                None,
            ),
            (
                Failure::Input(ErrorKind::Unsupported),
                400,
                "invalid_request_error",
                None,
            ),
            (
                Failure::Input(ErrorKind::Overloaded),
                429,
                "rate_limit_error",
                Some(1),
            ),
            (
                Failure::Input(ErrorKind::NotReady),
                503,
                "service_unavailable",
                Some(1),
            ),
            (
                Failure::Input(ErrorKind::Timeout),
                503,
                "service_unavailable",
                Some(1),
            ),
            (
                Failure::Input(ErrorKind::Internal),
                500,
                "server_error",
                None,
            ),
            (Failure::Unauthorized, 401, "authentication_error", None),
        ];
        for (failure, status, kind, retry) in rows {
            assert_eq!(failure.status().as_u16(), status, "{failure:?}");
            assert_ne!(failure.status().as_u16(), 413);
            assert_eq!(failure.openai_type(), kind);
            assert_eq!(failure.retry_after(), retry);
        }
    }
}
