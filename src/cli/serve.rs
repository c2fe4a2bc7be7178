//! `sightline serve`: the inference endpoint Elasticsearch calls. Flags have `SIGHTLINE_*`
//! environment equivalents; SIGTERM/SIGINT stop accepting, finish what is in flight within
//! `--shutdown-grace`, exit 0, over HTTP or, with `--tls-cert`/`--tls-key`, HTTPS
//! (`http/tls.rs`). Connections are capped and timed by `http/server.rs` (`ConnArgs` below).
//! URL inputs are off unless `--allow-url-hosts` names hosts (`src/url/` holds the rules).
//! `--model-dir` repeated serves several models, one engine each (`http/models.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::engine_args::EngineArgs;
use crate::http::fdlimit::{self, FD_HEADROOM};
use crate::http::server::{HandshakeLimits, Server, ServerLimits};
use crate::http::tls;
use crate::http::{router, ApiKey, HttpConfig, Models, QueryCacheLimits};
use crate::url::{Fetcher, HostRule, UrlOptions};

#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
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
    /// Text vectors kept for queries that repeat, answered without the model (least recently
    /// used first out, keyed by the model and the exact text); 0 turns the cache off.
    #[arg(long, env = "SIGHTLINE_QUERY_CACHE", default_value_t = 10_000)]
    query_cache: usize,
    /// Most bytes the query cache holds (texts, vectors and a fixed overhead per entry); 0 turns
    /// the cache off too.
    #[arg(long, env = "SIGHTLINE_QUERY_CACHE_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    query_cache_bytes: usize,
    #[command(flatten)]
    conns: ConnArgs,
    #[command(flatten)]
    urls: UrlArgs,
}

/// Connections: how many, how long, and how they end. Every timeout is longer than anything
/// Elasticsearch does: it sends a request's headers and body in one go, keeps idle pooled
/// connections up to 60 s, and connects within 5 s (es-contract §1.5).
#[derive(Debug, clap::Args)]
struct ConnArgs {
    /// Connections open at once. At the cap a new connection closes the one idle longest (no
    /// request in progress); only when all have one is the new one closed at once (an I/O
    /// error Elasticsearch retries). Default: the open-file limit (raised to its hard limit at
    /// start) less 256 descriptors kept for model files, logs and outgoing URL fetches, at
    /// most 4096.
    #[arg(long, env = "SIGHTLINE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Longest time from the first byte of a request's headers to their end.
    #[arg(long, env = "SIGHTLINE_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Longest wait for more of a request body; the request then fails and its connection closes.
    #[arg(long, env = "SIGHTLINE_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    body_timeout: Duration,
    /// How long a connection may stay open without a request (keep-alive); longer than
    /// Elasticsearch's 60 s idle eviction, so the server does not close a pooled connection first.
    #[arg(long, env = "SIGHTLINE_IDLE_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Longest TLS handshake.
    #[arg(long, env = "SIGHTLINE_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    tls_handshake_timeout: Duration,
    /// TLS handshakes in progress at once; a new one beyond this drops the oldest.
    #[arg(long, env = "SIGHTLINE_MAX_TLS_HANDSHAKES", default_value_t = 256)]
    max_tls_handshakes: usize,
    /// After SIGTERM/SIGINT, how long requests in progress may take before their connections
    /// are closed. Keep it under the orchestrator's kill deadline (Kubernetes'
    /// `terminationGracePeriodSeconds`, `docker stop -t`).
    #[arg(long, env = "SIGHTLINE_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Request-body bytes held at once across all requests, e.g. `512MiB`; a request that
    /// would go over gets a 429 with `Retry-After`. At least `--max-body`.
    #[arg(long, env = "SIGHTLINE_MAX_BUFFERED_BODY", default_value = "512MiB", value_parser = parse_bytes)]
    max_buffered_body: usize,
    /// Close a connection after this many responses (the last carries `Connection: close`), so
    /// clients reconnect and a load balancer spreads them over new replicas. Unset: no limit.
    #[arg(long, env = "SIGHTLINE_MAX_CONNECTION_REQUESTS")]
    max_connection_requests: Option<u64>,
    /// Close a connection after its first response past this age (e.g. `5m`). Unset: no limit.
    #[arg(long, env = "SIGHTLINE_MAX_CONNECTION_AGE", value_parser = humantime::parse_duration)]
    max_connection_age: Option<Duration>,
}

impl ConnArgs {
    /// The server's limits under a soft open-file limit of `fd_soft`.
    fn limits(&self, fd_soft: u64) -> anyhow::Result<ServerLimits> {
        for (flag, d) in [
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--tls-handshake-timeout", self.tls_handshake_timeout),
        ] {
            anyhow::ensure!(!d.is_zero(), "`{flag}` must be longer than zero");
        }
        anyhow::ensure!(
            self.max_tls_handshakes > 0,
            "`--max-tls-handshakes` must be more than zero"
        );
        anyhow::ensure!(
            self.max_connection_requests != Some(0),
            "`--max-connection-requests` must be more than zero"
        );
        let max_connections = match self.max_connections {
            Some(0) => anyhow::bail!("`--max-connections` must be more than zero"),
            Some(n) => {
                if (n as u64).saturating_add(FD_HEADROOM) > fd_soft {
                    tracing::warn!(
                        max_connections = n,
                        fd_limit = fd_soft,
                        "`--max-connections` leaves fewer than {FD_HEADROOM} descriptors of the open-file limit for model files and URL fetches"
                    );
                }
                n
            }
            None => fdlimit::default_max_connections(fd_soft),
        };
        Ok(ServerLimits {
            max_connections,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            handshake: HandshakeLimits {
                max_concurrent: self.max_tls_handshakes,
                timeout: self.tls_handshake_timeout,
            },
            shutdown_grace: self.shutdown_grace,
            max_connection_requests: self.max_connection_requests,
            max_connection_age: self.max_connection_age,
        })
    }
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

pub(super) async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.max_inputs <= args.engine.queue_capacity,
        "`--max-inputs` ({}) must not exceed `--queue-capacity` ({}): a full-size request could never be admitted",
        args.max_inputs,
        args.engine.queue_capacity
    );
    anyhow::ensure!(
        args.conns.max_buffered_body >= args.max_body,
        "`--max-buffered-body` ({}) must be at least `--max-body` ({}): a full-size body could never be admitted",
        args.conns.max_buffered_body,
        args.max_body
    );
    let fd_soft = match fdlimit::raise() {
        Ok(limit) => {
            if limit.soft < limit.hard && limit.soft == limit.soft_before {
                tracing::warn!(
                    soft = limit.soft,
                    hard = limit.hard,
                    "cannot raise the open-file limit"
                );
            }
            tracing::info!(
                soft_before = limit.soft_before,
                soft = limit.soft,
                hard = limit.hard,
                "open-file limit"
            );
            limit.soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
            1024
        }
    };
    let limits = args.conns.limits(fd_soft)?;
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
    let models = Models::new(args.engine.start_each(&opts).await?)?;
    let info = models.first().info().clone();
    let names: Vec<&str> = models
        .all()
        .iter()
        .map(|e| e.info().name.as_str())
        .collect();
    let names = names.join(",");
    let app = router(
        models,
        HttpConfig {
            api_key,
            max_body: args.max_body,
            max_inputs: args.max_inputs,
            max_buffered_body: args.conns.max_buffered_body,
            query_cache: QueryCacheLimits {
                entries: args.query_cache,
                bytes: args.query_cache_bytes,
            },
        },
    );
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let shutdown = shutdown_signal();
    let max_connections = limits.max_connections;
    let server = Server::new(listener, tls, app, limits);
    // The bound address, not the flag: with port 0 the log is the only place the port shows.
    let bound = server.local_addr().unwrap_or(args.addr);
    tracing::info!(
        addr = %bound,
        scheme = if args.tls_cert.is_some() { "https" } else { "http" },
        max_connections,
        model = info.name,
        dimensions = info.dimensions,
        similarity = info.similarity.as_str(),
        models = names,
        query_cache = args.query_cache,
        "serving"
    );
    // One serve loop for both schemes, so limits and graceful shutdown behave the same.
    server.run(shutdown).await;
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
    fn connection_limits_have_defaults_longer_than_elasticsearch_waits() {
        let limits = parse(&[]).unwrap().conns.limits(20_000).unwrap();
        assert_eq!(limits.max_connections, 4096);
        assert_eq!(limits.header_timeout, Duration::from_secs(30));
        assert_eq!(limits.body_timeout, Duration::from_secs(30));
        // ES evicts idle pooled connections after 60 s: the server must not close them first.
        assert!(limits.idle_timeout > Duration::from_secs(60));
        assert_eq!(limits.handshake.timeout, Duration::from_secs(10));
        assert_eq!(limits.handshake.max_concurrent, 256);
        assert_eq!(limits.shutdown_grace, Duration::from_secs(30));
        assert_eq!(limits.max_connection_requests, None);
        assert_eq!(limits.max_connection_age, None);
        // Under the common soft limit of 1024, 256 descriptors stay free.
        assert_eq!(
            parse(&[])
                .unwrap()
                .conns
                .limits(1024)
                .unwrap()
                .max_connections,
            768
        );

        let args = parse(&[
            "--max-connections",
            "10",
            "--header-timeout",
            "1s",
            "--body-timeout",
            "2s",
            "--idle-timeout",
            "3s",
            "--tls-handshake-timeout",
            "4s",
            "--max-tls-handshakes",
            "5",
            "--shutdown-grace",
            "6s",
            "--max-connection-requests",
            "7",
            "--max-connection-age",
            "8s",
        ])
        .unwrap();
        let limits = args.conns.limits(20_000).unwrap();
        assert_eq!(limits.max_connections, 10);
        assert_eq!(limits.header_timeout, Duration::from_secs(1));
        assert_eq!(limits.body_timeout, Duration::from_secs(2));
        assert_eq!(limits.idle_timeout, Duration::from_secs(3));
        assert_eq!(limits.handshake.timeout, Duration::from_secs(4));
        assert_eq!(limits.handshake.max_concurrent, 5);
        assert_eq!(limits.shutdown_grace, Duration::from_secs(6));
        assert_eq!(limits.max_connection_requests, Some(7));
        assert_eq!(limits.max_connection_age, Some(Duration::from_secs(8)));

        for bad in [
            ["--max-connections", "0"],
            ["--body-timeout", "0s"],
            ["--max-tls-handshakes", "0"],
            ["--max-connection-requests", "0"],
        ] {
            let e = parse(&bad)
                .unwrap()
                .conns
                .limits(20_000)
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad[0]), "{e}");
        }
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
