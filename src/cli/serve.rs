//! `sightline serve`: the inference endpoint Elasticsearch calls. Flags have `SIGHTLINE_*`
//! environment equivalents; SIGTERM/SIGINT stop accepting, finish what is in flight, exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::engine_args::EngineArgs;
use crate::http::{router, ApiKey, HttpConfig};

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
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
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
    let engine = args.engine.start().await?;
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
    tracing::info!(
        addr = %args.addr,
        model = info.name,
        dimensions = info.dimensions,
        similarity = info.similarity(),
        "serving"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server error")?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM (docker stop, Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops gracefully");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing requests in flight");
}

/// `67108864`, `64MiB`, `64MB`, `512KiB`, `1GiB`.
fn parse_bytes(s: &str) -> Result<usize, String> {
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

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("67108864"), Ok(67_108_864));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert!(parse_bytes("64 furlongs").unwrap_err().contains("furlongs"));
        assert!(parse_bytes("MiB").is_err());
    }
}
