//! `sightline serve`: the inference endpoint Elasticsearch calls. Flags have `SIGHTLINE_*`
//! environment equivalents; SIGTERM/SIGINT stop accepting, finish what is in flight, exit 0,
//! over HTTP or, with `--tls-cert`/`--tls-key`, HTTPS (`http/tls.rs`). URL inputs are off
//! unless `--allow-url-hosts` names hosts (`src/url/` holds the rules).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::engine_args::EngineArgs;
use crate::http::tls::{self, TlsListener};
use crate::http::{router, ApiKey, HttpConfig};
use crate::url::{Fetcher, HostRule, UrlOptions};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to listen on.
    #[arg(long, env = "SIGHTLINE_ADDR", default_value = "0.0.0.0:8080")]
    addr: SocketAddr,
    /// API key clients must send as `Authorization: Bearer <key>`.
    #[arg(
        long,
        env = "SIGHTLINE_API_KEY",
        hide_env_values = true,
        conflicts_with = "api_key_file"
    )]
    api_key: Option<String>,
    /// File holding the API key (first line), e.g. a mounted secret.
    #[arg(long, env = "SIGHTLINE_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Largest request body, e.g. `64MiB` (bigger bodies get a 400 naming this flag, never 413).
    #[arg(long, env = "SIGHTLINE_MAX_BODY", default_value = "64MiB", value_parser = parse_bytes)]
    max_body: usize,
    /// Most inputs in one request.
    #[arg(long, env = "SIGHTLINE_MAX_INPUTS", default_value_t = 2048)]
    max_inputs: usize,
    /// Decode every JPEG pixel, like the Python reference, instead of decoding large JPEGs at a
    /// reduced DCT scale (1/2, 1/4 or 1/8, keeping ≥ 3× the model's input on the short side;
    /// cosine ≥ 0.9998 to the exact path on 40 test photos, several times faster).
    #[arg(long, env = "SIGHTLINE_EXACT_JPEG")]
    exact_jpeg: bool,
    /// PEM certificate chain to serve HTTPS with (leaf first); needs `--tls-key`.
    #[arg(
        long,
        env = "SIGHTLINE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1); needs `--tls-cert`.
    #[arg(
        long,
        env = "SIGHTLINE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    urls: UrlArgs,
}

/// URL inputs (`http(s)://...` strings): off unless `--allow-url-hosts` is given.
#[derive(Debug, clap::Args)]
struct UrlArgs {
    /// Hosts whose images may be fetched when an input is an `http(s)://` URL, comma-separated:
    /// `images.example.com`, `*.cdn.example.com` (subdomains), an IP, or `*` (any public host).
    /// Unset: URL inputs get a 400.
    #[arg(
        long,
        env = "SIGHTLINE_ALLOW_URL_HOSTS",
        value_name = "HOST",
        value_delimiter = ','
    )]
    allow_url_hosts: Vec<HostRule>,
    /// Also fetch from loopback, private (RFC 1918, fc00::/7), link-local and CGNAT addresses.
    /// Cloud metadata, multicast and unspecified addresses stay refused.
    #[arg(
        long,
        env = "SIGHTLINE_ALLOW_URL_PRIVATE",
        requires = "allow_url_hosts"
    )]
    allow_url_private: bool,
    /// Longest one URL fetch may take, redirects and body included (e.g. `10s`).
    #[arg(long, env = "SIGHTLINE_URL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    url_timeout: Duration,
    /// Largest image body fetched from a URL, e.g. `32MiB`; counted while it streams.
    #[arg(long, env = "SIGHTLINE_URL_MAX_BYTES", default_value = "32MiB", value_parser = parse_bytes)]
    url_max_bytes: usize,
}

impl UrlArgs {
    fn options(&self) -> anyhow::Result<UrlOptions> {
        anyhow::ensure!(
            !self.url_timeout.is_zero(),
            "`--url-timeout` must be longer than zero"
        );
        anyhow::ensure!(
            self.url_max_bytes > 0,
            "`--url-max-bytes` must be more than zero"
        );
        Ok(UrlOptions {
            allow_hosts: self.allow_url_hosts.clone(),
            allow_private: self.allow_url_private,
            timeout: self.url_timeout,
            max_bytes: self.url_max_bytes,
            ..UrlOptions::default()
        })
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.max_inputs <= args.engine.queue_capacity,
        "`--max-inputs` ({}) must not exceed `--queue-capacity` ({}): a full-size request could never be admitted",
        args.max_inputs,
        args.engine.queue_capacity
    );
    let api_key = match (&args.api_key, &args.api_key_file) {
        (Some(key), _) => ApiKey::new(key.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read `--api-key-file` `{}`", path.display()))?;
            let key = ApiKey::new(text.lines().next().unwrap_or_default().to_owned());
            Some(key.with_context(|| format!("`--api-key-file` `{}` is empty", path.display()))?)
        }
        (None, None) => None,
    };
    if api_key.is_none() {
        tracing::warn!(
            "no API key set (`--api-key`): every client that can reach this port can use it"
        );
    }
    // Read the certificate before the model: a typo in a path should fail in milliseconds.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::load_config(cert, key)?),
        (None, None) => None,
        // clap's `requires` already refuses this; kept so the rule holds however args are built.
        _ => anyhow::bail!("`--tls-cert` and `--tls-key` go together: give both or neither"),
    };
    let mut opts = args.engine.options();
    let urls = args.urls.options()?;
    opts.decode.jpeg_prescale = !args.exact_jpeg;
    if urls.enabled() {
        tracing::warn!(
            hosts = ?args.urls.allow_url_hosts,
            private = urls.allow_private,
            "URL inputs enabled: images are fetched from the allowed hosts"
        );
        opts.url_fetcher = Some(Arc::new(Fetcher::new(urls)?));
    }
    let engine = args.engine.start_with(opts).await?;
    let info = engine.info().clone();
    let app = router(
        engine,
        HttpConfig {
            api_key,
            max_body: args.max_body,
            max_inputs: args.max_inputs,
        },
    );
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let shutdown = shutdown_signal();
    // The bound address, not the flag: with port 0 the log is the only place the port shows.
    let bound = listener.local_addr().unwrap_or(args.addr);
    tracing::info!(
        addr = %bound,
        scheme = if tls.is_some() { "https" } else { "http" },
        model = info.name,
        dimensions = info.dimensions,
        similarity = info.similarity.as_str(),
        "serving"
    );
    // One serve loop for both schemes, so graceful shutdown behaves the same.
    let served = match tls {
        Some(config) => {
            axum::serve(TlsListener::new(listener, config), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    served.context("server error")?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM (docker stop, Kubernetes) or SIGINT (Ctrl-C). The handlers are installed
/// when this is called, not when the future is first polled: a signal that arrives right after
/// "serving" is logged must still shut down gracefully instead of killing the process.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate())
            .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
    };
    async move {
        #[cfg(unix)]
        match signals {
            Ok((mut term, mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = interrupt.recv() => {},
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops gracefully");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing requests in flight");
    }
}

/// `67108864`, `64MiB`, `64MB`, `512KiB`, `1GiB`.
pub(crate) fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like `64MiB`"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}`: use B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `serve`'s flags alone, parsed as the command line would be.
    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(argv: &[&str]) -> Result<ServeArgs, String> {
        Serve::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .map(|s| s.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tls_flags_come_in_pairs() {
        let e = parse(&["--tls-cert", "cert.pem"]).unwrap_err();
        assert!(e.contains("--tls-key"), "{e}");
        let e = parse(&["--tls-key", "key.pem"]).unwrap_err();
        assert!(e.contains("--tls-cert"), "{e}");
        let args = parse(&["--tls-cert", "cert.pem", "--tls-key", "key.pem"]).unwrap();
        assert_eq!(args.tls_cert, Some(PathBuf::from("cert.pem")));
        assert!(parse(&[]).unwrap().tls_cert.is_none());
    }

    #[test]
    fn url_inputs_are_off_by_default_and_configured_by_flags() {
        let opts = parse(&[]).unwrap().urls.options().unwrap();
        assert!(!opts.enabled());
        assert_eq!(opts.timeout, Duration::from_secs(10));
        assert_eq!(opts.max_bytes, 32 << 20);

        let args = parse(&[
            "--allow-url-hosts",
            "images.example.com,*.cdn.example.com",
            "--allow-url-hosts",
            "127.0.0.1",
            "--allow-url-private",
            "--url-timeout",
            "250ms",
            "--url-max-bytes",
            "1MiB",
        ])
        .unwrap();
        let opts = args.urls.options().unwrap();
        assert_eq!(
            opts.allow_hosts,
            [
                HostRule::Name("images.example.com".into()),
                HostRule::Suffix("cdn.example.com".into()),
                HostRule::Ip([127, 0, 0, 1].into()),
            ]
        );
        assert!(opts.enabled() && opts.allow_private);
        assert_eq!(opts.timeout, Duration::from_millis(250));
        assert_eq!(opts.max_bytes, 1 << 20);

        let e = parse(&["--allow-url-hosts", "https://images.example.com/"]).unwrap_err();
        assert!(e.contains("not a host name"), "{e}");
        let e = parse(&["--allow-url-private"]).unwrap_err();
        assert!(e.contains("--allow-url-hosts"), "{e}");
        let zero = parse(&["--allow-url-hosts", "*", "--url-timeout", "0s"]).unwrap();
        let e = zero.urls.options().unwrap_err().to_string();
        assert!(e.contains("`--url-timeout`"), "{e}");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("67108864"), Ok(67_108_864));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert!(parse_bytes("64 furlongs").unwrap_err().contains("furlongs"));
        assert!(parse_bytes("MiB").is_err());
    }
}
