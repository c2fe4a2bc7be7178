//! `sightline gallery`: a web page to search the image index by words or by picture and look at
//! the results as pictures. Its own process, so Elasticsearch credentials never reach the sidecar
//! Elasticsearch calls; it binds to loopback unless told otherwise.
//!
//! One concern per file:
//! - `es.rs`: the kNN request with filters, the stored-vector lookup, mapping facts, hits;
//! - `api.rs`: the JSON API and its error states;
//! - `server.rs`: routes, the compiled-in page (`assets/`), `--auth`, security headers.
//!
//! Every query is embedded by the sidecar (through `crate::sidecar`, the client the CLI uses too,
//! on its search lane) and sent as `knn.query_vector`, which works on every
//! licence (no Inference API needed) and every version from 8.4.

mod api;
mod es;
mod server;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;

pub use server::GalleryAuth;

use crate::es::client::EsConnectArgs;
use crate::es::image::ImageOptions;
use crate::es::{DEFAULT_INDEX, VECTOR_FIELD};
use crate::sidecar::{Lane, SidecarClient, SidecarOptions};
use crate::url::{Fetcher, HostRule, UrlOptions};

/// `sightline gallery` flags.
#[derive(Debug, clap::Args)]
pub struct GalleryArgs {
    #[command(flatten)]
    pub es: EsConnectArgs,
    /// Image index (or alias, or pattern) to search.
    #[arg(long, env = "SIGHTLINE_INDEX", default_value = DEFAULT_INDEX)]
    pub index: String,
    /// Vector field of the index.
    #[arg(long, default_value = VECTOR_FIELD)]
    pub field: String,
    /// The sidecar that embeds the queries: the one that embedded the index.
    #[arg(long, env = "SIGHTLINE_SIDECAR_URL", value_name = "URL")]
    pub sidecar_url: String,
    /// Bearer token of the sidecar (`serve --api-key`).
    #[arg(long, env = "SIGHTLINE_SIDECAR_API_KEY", hide_env_values = true)]
    pub sidecar_api_key: Option<String>,
    /// Do not ask the sidecar for its search lane (`?priority=search`).
    #[arg(long)]
    pub no_priority: bool,
    /// Longest the sidecar may take for one query vector, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub sidecar_timeout: Duration,
    /// Address to listen on. Loopback by default; set `--auth` before exposing it.
    #[arg(long, env = "SIGHTLINE_GALLERY_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// `basic:USER:PASSWORD` (the browser asks) or `token:SECRET` (the page asks; API clients
    /// send `Authorization: Bearer SECRET`).
    #[arg(long, env = "SIGHTLINE_GALLERY_AUTH", hide_env_values = true)]
    pub auth: Option<GalleryAuth>,
    /// Largest query image, uploaded or fetched, e.g. `16MiB`.
    #[arg(long, default_value = "16MiB", value_parser = crate::cli::parse_bytes)]
    pub max_upload: usize,
    /// Longer side, in pixels, of the query image sent for embedding (as `search --max-side`).
    #[arg(long, default_value_t = ImageOptions::default().max_side)]
    pub max_side: u32,
    /// Hosts whose images may be searched by URL, comma-separated (as `serve --allow-url-hosts`).
    /// Unset: image URLs are refused.
    #[arg(
        long,
        env = "SIGHTLINE_ALLOW_URL_HOSTS",
        value_name = "HOST",
        value_delimiter = ','
    )]
    pub allow_url_hosts: Vec<HostRule>,
    /// Also fetch from loopback and private addresses.
    #[arg(long, requires = "allow_url_hosts")]
    pub allow_url_private: bool,
}

/// What the gallery needs, for tests that build it without flags.
#[derive(Debug, Clone)]
pub struct GalleryConfig {
    pub es: EsConnectArgs,
    pub index: String,
    pub field: String,
    pub sidecar_url: String,
    pub sidecar_api_key: Option<String>,
    pub priority: bool,
    pub sidecar_timeout: Duration,
    pub auth: Option<GalleryAuth>,
    pub max_upload: usize,
    pub max_side: u32,
    pub url_hosts: Vec<HostRule>,
    pub url_private: bool,
}

impl GalleryConfig {
    /// The defaults of the flags, for `index` on `es_url` with the sidecar at `sidecar_url`.
    pub fn new(es_url: &str, index: &str, sidecar_url: &str) -> GalleryConfig {
        GalleryConfig {
            es: EsConnectArgs {
                es_url: Some(es_url.to_owned()),
                api_key: None,
                user: None,
                password: None,
                ca_cert: None,
                insecure: false,
                request_timeout: 30,
            },
            index: index.to_owned(),
            field: VECTOR_FIELD.to_owned(),
            sidecar_url: sidecar_url.to_owned(),
            sidecar_api_key: None,
            priority: true,
            sidecar_timeout: Duration::from_secs(30),
            auth: None,
            max_upload: 16 << 20,
            max_side: ImageOptions::default().max_side,
            url_hosts: Vec::new(),
            url_private: false,
        }
    }
}

impl From<GalleryArgs> for GalleryConfig {
    fn from(args: GalleryArgs) -> GalleryConfig {
        GalleryConfig {
            es: args.es,
            index: args.index,
            field: args.field,
            sidecar_url: args.sidecar_url,
            sidecar_api_key: args.sidecar_api_key,
            priority: !args.no_priority,
            sidecar_timeout: args.sidecar_timeout,
            auth: args.auth,
            max_upload: args.max_upload,
            max_side: args.max_side,
            url_hosts: args.allow_url_hosts,
            url_private: args.allow_url_private,
        }
    }
}

/// The gallery as a router: nothing is contacted until the first request.
pub fn app(config: GalleryConfig) -> Result<Router> {
    anyhow::ensure!(config.max_upload > 0, "--max-upload must be more than zero");
    anyhow::ensure!(config.max_side > 0, "--max-side must be more than zero");
    let client = config.es.connect()?;
    let options = SidecarOptions {
        request_timeout: config.sidecar_timeout,
        // A person is waiting: "not ready" is shown at once, never retried here.
        retry_deadline: Duration::ZERO,
        ..SidecarOptions::default()
    };
    let sidecar = SidecarClient::unconnected(
        &config.sidecar_url,
        config.sidecar_api_key.as_deref(),
        options,
    )
    .context("cannot build the HTTP client for the sidecar")?;
    let fetcher = if config.url_hosts.is_empty() {
        None
    } else {
        Some(Fetcher::new(UrlOptions {
            allow_hosts: config.url_hosts.clone(),
            allow_private: config.url_private,
            max_bytes: config.max_upload,
            ..UrlOptions::default()
        })?)
    };
    let gallery = api::Gallery {
        client,
        index: config.index,
        field: config.field,
        sidecar,
        lane: if config.priority {
            Lane::Search
        } else {
            Lane::Ingest
        },
        fetcher,
        image: ImageOptions {
            max_side: config.max_side,
            ..ImageOptions::default()
        },
        max_upload: config.max_upload,
        cluster: tokio::sync::OnceCell::new(),
    };
    Ok(server::router(Arc::new(gallery), config.auth))
}

/// `sightline gallery`: serve until SIGTERM or Ctrl-C.
pub async fn run(args: GalleryArgs) -> Result<ExitCode> {
    let addr = args.addr;
    if args.auth.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the gallery listens beyond loopback without --auth: anyone who reaches it can search the index");
    }
    let index = args.index.clone();
    let app = app(args.into())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(url = %format!("http://{bound}/"), index, "gallery serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::cli::shutdown_signal())
        .await
        .context("gallery server error")?;
    Ok(ExitCode::SUCCESS)
}
