//! Connecting to Elasticsearch with the official client: URL, API key or basic credentials, an
//! optional CA certificate, and one way of turning a non-2xx answer into an error that names the
//! request and quotes ES's own `type` and `reason`.
//!
//! The connection flags are shared by `setup`, `ingest` and `search`, so they are defined once here
//! as a flattenable clap struct; each command's file only adds its own flags.

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
use serde_json::Value;

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
pub fn normalise_url(text: &str) -> Result<Url> {
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
pub async fn cluster_info(client: &Elasticsearch) -> Result<Cluster> {
    let response = client
        .info()
        .send()
        .await
        .map_err(|err| connection_error(err, "GET /"))?;
    let body = json_or_error(response, "GET /").await?;
    Cluster::from_root_response(&body)
}

/// Wraps a transport error (no HTTP answer) with the request it belongs to.
pub fn connection_error(err: elasticsearch::Error, request: &str) -> anyhow::Error {
    anyhow::Error::new(err).context(format!("{request}: no answer from Elasticsearch"))
}

/// Returns the JSON body of a 2xx answer, or an error quoting ES's reason otherwise.
pub async fn json_or_error(response: Response, request: &str) -> Result<Value> {
    let status = response.status_code();
    let bytes = response
        .bytes()
        .await
        .with_context(|| format!("{request}: cannot read the answer"))?;
    if !status.is_success() {
        bail!(describe_failure(status, &bytes, request));
    }
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{request}: the answer is not JSON"))
}

/// One line for a failed request: `PUT _x: 400 Bad Request: illegal_argument_exception: reason`,
/// plus a hint for the failures users meet first (credentials, licence).
pub fn describe_failure(status: StatusCode, body: &[u8], request: &str) -> String {
    let reason = error_reason(body);
    let mut message = format!("{request}: Elasticsearch answered {status}: {reason}");
    if status == StatusCode::UNAUTHORIZED {
        message.push_str(" (check --api-key or --user/--password)");
    } else if reason.contains("license") {
        message.push_str(
            " (the inference API needs an Enterprise or trial licence; a local cluster can start a trial with POST _license/start_trial?acknowledge=true)",
        );
    }
    message
}

/// ES error bodies are `{"error": {"type", "reason", "root_cause": [...]}, "status"}`, or
/// `{"error": "text"}` from older or proxy layers; anything else is quoted as text.
pub fn error_reason(body: &[u8]) -> String {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        return truncate(text.trim(), 500);
    };
    match json.get("error") {
        Some(Value::String(text)) => text.clone(),
        Some(error @ Value::Object(_)) => {
            let kind = error.get("type").and_then(Value::as_str).unwrap_or("error");
            let reason = error.get("reason").and_then(Value::as_str).unwrap_or("");
            let cause = error
                .get("caused_by")
                .and_then(|cause| cause.get("reason"))
                .and_then(Value::as_str);
            match cause {
                Some(cause) if cause != reason => format!("{kind}: {reason} (caused by: {cause})"),
                _ => format!("{kind}: {reason}"),
            }
        }
        _ => truncate(&json.to_string(), 500),
    }
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
    fn error_reason_reads_es_bodies() {
        let body = br#"{"error":{"root_cause":[],"type":"illegal_argument_exception","reason":"bad dims","caused_by":{"type":"x","reason":"deeper"}},"status":400}"#;
        assert_eq!(
            error_reason(body),
            "illegal_argument_exception: bad dims (caused by: deeper)"
        );
        assert_eq!(error_reason(br#"{"error":"plain"}"#), "plain");
        assert_eq!(
            error_reason(b"<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
    }

    #[test]
    fn failure_description_adds_hints() {
        let unauthorized = describe_failure(StatusCode::UNAUTHORIZED, b"{}", "GET /");
        assert!(unauthorized.contains("--api-key"), "{unauthorized}");
        let licence = describe_failure(
            StatusCode::FORBIDDEN,
            br#"{"error":{"type":"security_exception","reason":"current license is non-compliant for [inference]"}}"#,
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
