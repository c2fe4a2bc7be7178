//! The one table from error kinds to HTTP statuses, and which of them carry `Retry-After`. It
//! has no 413 row on purpose: on a 413 Elasticsearch cuts every input to half its length and
//! resends (es-contract §1.4, §5), which would turn every base64 image into garbage. And no
//! retryable failure is a 5xx: the `custom` service retries 429 only and treats every 5xx as
//! final (es-contract §3.4, `CustomResponseHandler`), so a 503 there sends the document to
//! `<index>-failed`, and for `semantic_text` it becomes a final 400 on the bulk item.

use std::time::Duration;

use axum::http::StatusCode;

use crate::engine::ErrorKind;

/// Failures of a whole request, before or around the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Input(ErrorKind),
    /// Missing or wrong API key.
    Unauthorized,
}

impl Failure {
    pub fn status(self) -> StatusCode {
        match self {
            Failure::Input(ErrorKind::BadInput | ErrorKind::Unsupported) => StatusCode::BAD_REQUEST,
            // "Try again later", in all three cases: the queue is full or would not drain in
            // time, a worker is not ready, or the input waited past `--request-timeout`. 429 is
            // the one status every service retries (es-contract §11 item 13); `custom` retries
            // nothing else (§3.4, `CustomResponseHandler`), so these are never a 503.
            Failure::Input(ErrorKind::Overloaded | ErrorKind::NotReady | ErrorKind::Timeout) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Failure::Input(ErrorKind::Internal) => StatusCode::INTERNAL_SERVER_ERROR,
            Failure::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// OpenAI's `error.type` vocabulary.
    pub fn openai_type(self) -> &'static str {
        match self {
            Failure::Input(ErrorKind::BadInput | ErrorKind::Unsupported) => "invalid_request_error",
            Failure::Input(ErrorKind::Overloaded) => "rate_limit_error",
            Failure::Input(ErrorKind::NotReady | ErrorKind::Timeout) => "service_unavailable",
            Failure::Input(ErrorKind::Internal) => "server_error",
            Failure::Unauthorized => "authentication_error",
        }
    }

    /// Seconds a client should wait before retrying, for the retryable statuses: the engine's
    /// `hint` where it has one (admission's drain estimate), rounded up, else 1; never under 1.
    pub fn retry_after(self, hint: Option<Duration>) -> Option<u64> {
        match self {
            Failure::Input(ErrorKind::Overloaded | ErrorKind::NotReady | ErrorKind::Timeout) => {
                let secs = hint.map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
                Some(secs.max(1))
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
                429,
                "service_unavailable",
                Some(1),
            ),
            (
                Failure::Input(ErrorKind::Timeout),
                429,
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
            assert_eq!(failure.retry_after(None), retry);
            // Whatever is retried is a 429: `custom` would take any 5xx as final.
            assert_eq!(
                retry.is_some(),
                failure.status().as_u16() == 429,
                "{failure:?}"
            );
        }
    }

    #[test]
    fn retry_after_follows_the_engines_hint_rounded_up() {
        let overloaded = Failure::Input(ErrorKind::Overloaded);
        let hint = |ms| Some(Duration::from_millis(ms));
        assert_eq!(overloaded.retry_after(hint(12_000)), Some(12));
        assert_eq!(overloaded.retry_after(hint(12_001)), Some(13));
        assert_eq!(overloaded.retry_after(hint(10)), Some(1), "at least 1 s");
        assert_eq!(
            Failure::Input(ErrorKind::BadInput).retry_after(hint(5_000)),
            None,
            "a final status never invites a retry"
        );
    }
}
