//! Engine error values. An input error carries the input's index and a kind, so every caller
//! builds the same "input[3]: ..." message and every transport maps the kind to its own status.

use std::fmt;
use std::time::Duration;

/// Classes of failure, each mapped to one status by `http::status` (and to one exit code by the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input itself is wrong: bad base64, undecodable image, empty text.
    BadInput,
    /// The image format is recognised but not supported (SVG, HEIC, AVIF).
    Unsupported,
    /// The queue is full, or would not drain before the request's deadline: retry later.
    Overloaded,
    /// The engine is not running (not loaded yet, shutting down, worker gone).
    NotReady,
    /// The request's deadline passed before its inputs were embedded.
    Timeout,
    /// ONNX Runtime failed or produced a non-finite vector.
    Internal,
}

impl ErrorKind {
    /// Short stable label, used for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadInput => "bad_input",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Why one input could not be embedded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedError {
    pub kind: ErrorKind,
    pub message: String,
    /// When to retry, where the engine knows better than the status table's default (the
    /// queue's estimated drain time when admission refused a request).
    pub retry_after: Option<Duration>,
}

impl EmbedError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        EmbedError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error with a retry hint.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        EmbedError::new(ErrorKind::BadInput, message)
    }

    /// Names the input the error belongs to, in the wording every dialect uses.
    pub fn at(&self, index: usize) -> InputError {
        InputError {
            index,
            error: self.clone(),
        }
    }
}

impl fmt::Display for EmbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EmbedError {}

/// An [`EmbedError`] tied to the position of its input in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub index: usize,
    pub error: EmbedError,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input[{}]: {}", self.index, self.error.message)
    }
}

impl std::error::Error for InputError {}

/// Why a request as a whole failed (`Engine::embed_request`): refused before anything ran, or
/// one of its inputs failed, which ends the request and drops its remaining work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFailure {
    /// Not admitted (queue full or too slow to drain, more inputs than the queue holds).
    Refused(EmbedError),
    /// The first input found failing, with its index.
    Input(InputError),
}

impl RequestFailure {
    /// Every input's answer in order, or an internal failure if one was left without any
    /// (a bug, never the client's fault).
    pub fn all_answered<T>(answers: Vec<Option<T>>) -> Result<Vec<T>, RequestFailure> {
        answers
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                RequestFailure::Refused(EmbedError::new(
                    ErrorKind::Internal,
                    "an input of the request was left without an answer",
                ))
            })
    }

    pub fn error(&self) -> &EmbedError {
        match self {
            RequestFailure::Refused(e) => e,
            RequestFailure::Input(e) => &e.error,
        }
    }
}

impl fmt::Display for RequestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestFailure::Refused(e) => e.fmt(f),
            RequestFailure::Input(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RequestFailure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_error_names_the_index() {
        let e = EmbedError::bad_input("invalid base64 at byte 7").at(3);
        assert_eq!(e.to_string(), "input[3]: invalid base64 at byte 7");
        assert_eq!(e.error.kind, ErrorKind::BadInput);
    }
}
