//! `sightline setup`: flags → [`SetupConfig`] → plan → print it for Kibana or apply it.
//! What the plan holds and why lives in `es/setup.rs`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::engine::{ModelInfo, Similarity};
use crate::es::body::LicenseInfo;
use crate::es::client::{cluster_info, EsConnectArgs};
use crate::es::mode::{self, choose_mode, consequences, parse_mode_flag};
use crate::es::model_info;
use crate::es::setup::{apply, console_script, plan, SetupConfig, DEFAULT_RATE_LIMIT};
use crate::es::version::{Cluster, EsVersion, Service};
use crate::es::{model_inference_id, DEFAULT_INDEX, DEFAULT_INFERENCE_ID};

#[derive(Debug, clap::Args)]
pub(crate) struct SetupArgs {
    #[command(flatten)]
    pub es: EsConnectArgs,
    /// The sidecar's base URL as Elasticsearch reaches it (e.g. http://sightline:8080 inside
    /// docker compose); the endpoint calls <URL>/v1/embeddings or <URL>/embed.
    #[arg(long, env = "SIGHTLINE_SIDECAR_URL", value_name = "URL")]
    pub sidecar_url: String,
    /// Bearer token the sidecar was started with (`serve --api-key`); stored in the endpoint.
    #[arg(long, env = "SIGHTLINE_SIDECAR_API_KEY", hide_env_values = true)]
    pub sidecar_api_key: Option<String>,
    /// Where this command reads the model's /info, when it cannot use --sidecar-url itself
    /// (default: <sidecar-url>/info).
    #[arg(long, value_name = "URL")]
    pub sidecar_info_url: Option<String>,
    /// Alias clients search; setup creates the index behind it (<alias>-<model>-<fingerprint>).
    #[arg(long, env = "SIGHTLINE_INDEX", default_value = DEFAULT_INDEX)]
    pub index: String,
    /// Id of the inference endpoint to create (default: sightline-clip, or sightline-<NAME>
    /// with --model).
    #[arg(long, env = "SIGHTLINE_INFERENCE_ID")]
    pub inference_id: Option<String>,
    /// The model the endpoints ask for by name (their `model_id`, which a sidecar serving
    /// several models routes by); the endpoints are named for it (sightline-<NAME>), so two
    /// models can be served side by side to two indices. The sidecar's /info must list it.
    #[arg(long, value_name = "NAME", conflicts_with = "model_name")]
    pub model: Option<String>,
    /// auto: `pipeline` on an active enterprise or trial licence and 8.12+ (the cluster calls
    /// the sidecar through inference endpoints), else `vectors` (index template and index only;
    /// `ingest` and `search` get vectors from the sidecar themselves).
    #[arg(long, default_value = "auto", value_parser = ["auto", "pipeline", "vectors"])]
    pub mode: String,
    /// Licence to assume with --print --es-version (no cluster to ask): basic, gold, platinum,
    /// enterprise or trial. Without it, --print assumes one that has the Inference API.
    #[arg(long, requires = "es_version", value_name = "TYPE")]
    pub license: Option<String>,
    /// Requests per minute Elasticsearch may send to the sidecar per node and endpoint
    /// (service_settings.rate_limit); the sidecar answers 429 itself when full.
    #[arg(long, default_value_t = DEFAULT_RATE_LIMIT, value_name = "N")]
    pub rate_limit: u64,
    /// Inference service: auto (custom on 8.19+/9.1+, else openai), openai, custom or
    /// hugging_face.
    #[arg(long, default_value = "auto")]
    pub service: String,
    /// Delete and recreate the endpoint even if it looks up to date (e.g. after changing the
    /// sidecar's API key, which Elasticsearch never shows back).
    #[arg(long)]
    pub recreate_endpoint: bool,
    /// Skip sending one image and one text through the endpoint at the end.
    #[arg(long)]
    pub no_verify: bool,
    /// Print the requests for Kibana's dev console instead of sending them.
    #[arg(long)]
    pub print: bool,
    /// Cluster version to print for, instead of asking the cluster (only with --print).
    #[arg(long, requires = "print", value_name = "VERSION")]
    pub es_version: Option<String>,
    /// Model name, instead of reading /info (with --dimensions and --similarity).
    #[arg(long, requires_all = ["dimensions", "similarity"])]
    pub model_name: Option<String>,
    /// Vector length, instead of reading /info.
    #[arg(long, requires = "model_name")]
    pub dimensions: Option<usize>,
    /// Vector similarity (dot_product for unit vectors, cosine otherwise), instead of reading /info.
    #[arg(long, requires = "model_name")]
    pub similarity: Option<String>,
}

pub(crate) async fn run(args: SetupArgs) -> Result<ExitCode> {
    let service = match args.service.as_str() {
        "auto" => None,
        other => Some(other.parse::<Service>()?),
    };
    let requested_mode = parse_mode_flag(&args.mode)?;
    if args.rate_limit == 0 {
        bail!("--rate-limit must be at least 1");
    }
    // (cluster, licence, whether the licence was assumed rather than read)
    let (cluster, license, assumed) = match &args.es_version {
        Some(version) => {
            let cluster = Cluster::new(
                version
                    .parse::<EsVersion>()
                    .context("invalid --es-version")?,
            );
            let (license, assumed) = match &args.license {
                Some(kind) => (kind.to_ascii_lowercase(), false),
                None => ("enterprise".to_owned(), true),
            };
            let license = LicenseInfo {
                kind: license,
                status: "active".to_owned(),
            };
            (cluster, Some(license), assumed)
        }
        None => {
            let client = args.es.connect()?;
            let cluster = cluster_info(&client).await?;
            let license = mode::read_license(&client).await?;
            (cluster, license, false)
        }
    };
    let mut choice = choose_mode(&cluster, license.as_ref(), requested_mode)?;
    if assumed && requested_mode.is_none() {
        choice
            .why
            .push_str(" (licence assumed for --print: pass --license TYPE or --mode)");
    }
    let model = match (&args.model_name, args.dimensions, &args.similarity) {
        (Some(name), Some(dimensions), Some(similarity)) => {
            let similarity = similarity
                .parse::<Similarity>()
                .map_err(anyhow::Error::msg)?;
            ModelInfo {
                name: name.clone(),
                dimensions,
                normalized: similarity == Similarity::DotProduct,
                similarity,
                modalities: Vec::new(),
                max_seq_len: 0,
                serving: None,
                fingerprint: String::new(),
            }
        }
        (None, None, None) => {
            let info_url = args
                .sidecar_info_url
                .clone()
                .unwrap_or_else(|| model_info::info_url(&args.sidecar_url));
            // With --model, that model of a sidecar serving several; else its first one.
            model_info::fetch(
                &info_url,
                args.sidecar_api_key.as_deref(),
                args.model.as_deref(),
            )
            .await?
        }
        _ => bail!("--model-name, --dimensions and --similarity go together"),
    };
    let config = SetupConfig {
        index: args.index.clone(),
        inference_id: match (&args.inference_id, &args.model) {
            (Some(id), _) => id.clone(),
            (None, Some(model)) => model_inference_id(model),
            (None, None) => DEFAULT_INFERENCE_ID.to_owned(),
        },
        sidecar_url: args.sidecar_url.trim_end_matches('/').to_owned(),
        sidecar_api_key: args.sidecar_api_key.clone(),
        service,
        recreate_endpoint: args.recreate_endpoint,
        verify: !args.no_verify,
        rate_limit: args.rate_limit,
    };
    let plan = plan(&cluster, &model, &config, &choice)?;
    if args.print {
        print!("{}", console_script(&plan, &model));
        return Ok(ExitCode::SUCCESS);
    }
    let client = args.es.connect()?;
    let service = plan.service.map_or_else(
        || "no inference endpoint".to_owned(),
        |s| format!("{s} service"),
    );
    println!(
        "Elasticsearch {} · {service} · model {} ({} dims, {}, {})",
        cluster.version,
        model.name,
        model.dimensions,
        model.similarity,
        if model.fingerprint.is_empty() {
            "no fingerprint"
        } else {
            &model.fingerprint
        }
    );
    println!("mode {}: {}", choice.mode, choice.why);
    let outcomes = apply(&client, &plan, &model, &config).await?;
    for outcome in outcomes {
        println!("  {:<48} {}", outcome.what, outcome.action);
    }
    println!("ready:");
    for line in consequences(choice.mode, &cluster, &config.index) {
        println!("  sightline {line}");
    }
    Ok(ExitCode::SUCCESS)
}
