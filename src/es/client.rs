//! Connecting to Elasticsearch with the official client (URL, API key or basic credentials, an
//! optional CA certificate) and [`call`], the one way every request is sent: it awaits the
//! answer, parses a 2xx body into a serde type from `body.rs`, and turns anything else into an
//! [`EsError`] that names the request, quotes ES's own `type` and `reason`, and lets callers
//! match on the status or the exception type rather than on text.
//!
//! The connection flags are shared by `setup`, `ingest` and `search`, so they are defined once here
//! as a flattenable clap struct; each command's file only adds its own flags.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::response::Response;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::StatusCode;
use elasticsearch::http::Url;
use elasticsearch::Elasticsearch;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::body::{ErrorBody, ErrorReply, RootResponse};
use super::version::Cluster;

/// Where the cluster is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct EsConnectArgs {
    /// Elasticsearch URL, e.g. https://localhost:9200.
    #[arg(long = "es", env = "SIGHTLINE_ES_URL", value_name = "URL")]
    pub es_url: Option<String>,
    /// API key: the base64 "encoded" form Kibana shows, or ID:SECRET.
    #[arg(long, env = "SIGHTLINE_ES_API_KEY", conflicts_with_all = ["user", "password"], hide_env_values = true)]
    pub api_key: Option<String>,
    /// User for basic authentication (with --password).
    #[arg(long, env = "SIGHTLINE_ES_USER", requires = "password")]
    pub user: Option<String>,
    /// Password for basic authentication.
    #[arg(
        long,
        env = "SIGHTLINE_ES_PASSWORD",
        requires = "user",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// PEM file with the CA certificate(s) that signed the cluster's HTTP certificate
    /// (for a docker cluster: config/certs/http_ca.crt).
    #[arg(long, env = "SIGHTLINE_ES_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Skip TLS certificate verification. For throwaway local clusters only.
    #[arg(long)]
    pub insecure: bool,
    /// Client-side timeout for one request to Elasticsearch, in seconds. Bulk requests wait for
    /// every image to be embedded by the sidecar, so keep this generous.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub request_timeout: u64,
}

impl EsConnectArgs {
    /// Builds the client. Nothing is sent yet.
    pub fn connect(&self) -> Result<Elasticsearch> {
        let Some(es_url) = &self.es_url else {
            bail!("--es URL is required (or set SIGHTLINE_ES_URL)");
        };
        let url = normalise_url(es_url)?;
        let pool = SingleNodeConnectionPool::new(url);
        let mut builder = TransportBuilder::new(pool)
            .timeout(Duration::from_secs(self.request_timeout.max(1)))
            // A system proxy would make localhost and docker-network URLs unreachable.
            .disable_proxy();
        if let Some(credentials) = self.credentials()? {
            builder = builder.auth(credentials);
        }
        if self.insecure {
            builder = builder.cert_validation(CertificateValidation::None);
        } else if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read CA certificate {}", path.display()))?;
            let certificate = Certificate::from_pem(&pem)
                .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
            builder = builder.cert_validation(CertificateValidation::Full(certificate));
        }
        let transport = builder
            .build()
            .context("cannot build the Elasticsearch client")?;
        Ok(Elasticsearch::new(transport))
    }

    fn credentials(&self) -> Result<Option<Credentials>> {
        if let Some(key) = &self.api_key {
            let key = key.trim();
            if key.is_empty() {
                bail!("--api-key is empty");
            }
            // The id:secret form is what the create-API-key response lists separately; the
            // encoded form is base64("id:secret") and never contains a colon.
            return Ok(Some(match key.split_once(':') {
                Some((id, secret)) => Credentials::ApiKey(id.to_owned(), secret.to_owned()),
                None => Credentials::EncodedApiKey(key.to_owned()),
            }));
        }
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                Ok(Some(Credentials::Basic(user.clone(), password.clone())))
            }
            _ => Ok(None),
        }
    }
}

/// The client joins API paths onto the base URL, so a base with a path prefix (a proxy at
/// `https://host/es`) must end in `/` or the prefix is replaced.
pub(crate) fn normalise_url(text: &str) -> Result<Url> {
    let mut url = Url::parse(text.trim()).with_context(|| {
        format!("invalid Elasticsearch URL {text:?} (expected e.g. http://localhost:9200)")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("Elasticsearch URL {text:?} must start with http:// or https://");
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// `GET /`: the cluster's version and flavour.
pub(crate) async fn cluster_info(client: &Elasticsearch) -> Result<Cluster> {
    let root: RootResponse = call("GET /", client.info().send()).await?;
    Cluster::from_root_response(root)
}

/// The one way Sightline talks to Elasticsearch: awaits the request sent by one of the
/// client's builders (`client.bulk(…).body(…).send()`), reads the answer and parses a 2xx body
/// as `T`. An empty 2xx body (`HEAD`) parses as JSON `null`, so `T = ()` or `Value` fits it.
/// `request` names the call in messages (`POST photos/_bulk`).
pub(crate) async fn call<T: DeserializeOwned>(
    request: &str,
    sent: impl Future<Output = Result<Response, elasticsearch::Error>>,
) -> Result<T, EsError> {
    let response = sent.await.map_err(|source| EsError::NoAnswer {
        request: request.to_owned(),
        source,
    })?;
    let status = response.status_code();
    let bytes = response.bytes().await.map_err(|source| EsError::CutOff {
        request: request.to_owned(),
        status,
        source,
    })?;
    if !status.is_success() {
        return Err(EsError::Status {
            request: request.to_owned(),
            status,
            error: error_reply(&bytes),
        });
    }
    let parsed = if bytes.is_empty() {
        T::deserialize(Value::Null)
    } else {
        serde_json::from_slice(&bytes)
    };
    parsed.map_err(|source| EsError::Unexpected {
        request: request.to_owned(),
        status,
        source,
    })
}

/// A request that did not end in the body its caller expects.
#[derive(Debug)]
pub(crate) enum EsError {
    /// No HTTP answer: connection refused, timeout, TLS failure.
    NoAnswer {
        request: String,
        source: elasticsearch::Error,
    },
    /// An answer whose body could not be read to the end.
    CutOff {
        request: String,
        status: StatusCode,
        source: elasticsearch::Error,
    },
    /// A non-2xx answer, with ES's error object.
    Status {
        request: String,
        status: StatusCode,
        error: ErrorReply,
    },
    /// A 2xx answer that is not JSON, or not the JSON expected.
    Unexpected {
        request: String,
        status: StatusCode,
        source: serde_json::Error,
    },
}

impl EsError {
    /// The HTTP status, when there was an answer.
    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            EsError::NoAnswer { .. } => None,
            EsError::CutOff { status, .. }
            | EsError::Status { status, .. }
            | EsError::Unexpected { status, .. } => Some(*status),
        }
    }

    /// ES's exception `type` of a non-2xx answer.
    pub(crate) fn es_type(&self) -> Option<&str> {
        match self {
            EsError::Status { error, .. } => error.kind(),
            _ => None,
        }
    }

    /// The error with its cause on one line, for messages that are not an `anyhow` chain.
    pub(crate) fn one_line(&self) -> String {
        match std::error::Error::source(self) {
            Some(source) => format!("{self}: {source}"),
            None => self.to_string(),
        }
    }
}

impl std::fmt::Display for EsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EsError::NoAnswer { request, .. } => {
                write!(f, "{request}: no answer from Elasticsearch")
            }
            EsError::CutOff { request, .. } => write!(f, "{request}: cannot read the answer"),
            EsError::Status {
                request,
                status,
                error,
            } => f.write_str(&describe_failure(*status, error, request)),
            EsError::Unexpected {
                request, source, ..
            } => match source.classify() {
                serde_json::error::Category::Data => {
                    write!(f, "{request}: the answer is not what Sightline expects")
                }
                _ => write!(f, "{request}: the answer is not JSON"),
            },
        }
    }
}

impl std::error::Error for EsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EsError::NoAnswer { source, .. } | EsError::CutOff { source, .. } => Some(source),
            EsError::Unexpected { source, .. } => Some(source),
            EsError::Status { .. } => None,
        }
    }
}

/// One line for a failed request: `PUT _x: 400 Bad Request: illegal_argument_exception: reason`,
/// plus a hint for the failures users meet first (credentials, licence).
fn describe_failure(status: StatusCode, error: &ErrorReply, request: &str) -> String {
    let mut message = format!(
        "{request}: Elasticsearch answered {status}: {}",
        error.describe()
    );
    if status == StatusCode::UNAUTHORIZED {
        message.push_str(" (check --api-key or --user/--password)");
    } else if error.is_licence_refusal() {
        message.push_str(
            " (the inference API needs an Enterprise or trial licence; a local cluster can start a trial with POST _license/start_trial?acknowledge=true)",
        );
    }
    message
}

/// ES's error object, or the body quoted as text when it is not one (a proxy's HTML page).
fn error_reply(body: &[u8]) -> ErrorReply {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return parsed.error;
    }
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(json) => json.to_string(),
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    };
    ErrorReply::Text(truncate(&text, 500))
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max_chars).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_gets_a_trailing_slash_so_prefixes_survive() {
        assert_eq!(
            normalise_url("http://localhost:9200").unwrap().as_str(),
            "http://localhost:9200/"
        );
        assert_eq!(
            normalise_url("https://h/es").unwrap().as_str(),
            "https://h/es/"
        );
        assert!(normalise_url("localhost:9200").is_err());
        assert!(normalise_url("ftp://h").is_err());
    }

    #[test]
    fn error_bodies_become_one_line() {
        let body = br#"{"error":{"root_cause":[],"type":"illegal_argument_exception","reason":"bad dims","caused_by":{"type":"x","reason":"deeper"}},"status":400}"#;
        assert_eq!(
            error_reply(body).describe(),
            "illegal_argument_exception: bad dims (caused by: deeper)"
        );
        assert_eq!(error_reply(br#"{"error":"plain"}"#).describe(), "plain");
        assert_eq!(
            error_reply(b"<html>bad gateway</html>").describe(),
            "<html>bad gateway</html>"
        );
    }

    #[test]
    fn failure_description_adds_hints() {
        let unauthorized = describe_failure(StatusCode::UNAUTHORIZED, &error_reply(b"{}"), "GET /");
        assert!(unauthorized.contains("--api-key"), "{unauthorized}");
        let licence = describe_failure(
            StatusCode::FORBIDDEN,
            &error_reply(br#"{"error":{"type":"security_exception","reason":"current license is non-compliant for [inference]","license.expired.feature":"inference"}}"#),
            "PUT _inference/text_embedding/x",
        );
        assert!(licence.contains("trial"), "{licence}");
    }

    #[test]
    fn api_key_forms() {
        let mut args = EsConnectArgs {
            es_url: Some("http://localhost:9200".to_owned()),
            api_key: Some("id:secret".to_owned()),
            user: None,
            password: None,
            ca_cert: None,
            insecure: false,
            request_timeout: 10,
        };
        assert!(
            matches!(args.credentials().unwrap(), Some(Credentials::ApiKey(id, _)) if id == "id")
        );
        args.api_key = Some("aWQ6c2VjcmV0".to_owned());
        assert!(matches!(
            args.credentials().unwrap(),
            Some(Credentials::EncodedApiKey(_))
        ));
        args.api_key = None;
        assert!(args.credentials().unwrap().is_none());
    }
}
