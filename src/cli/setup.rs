//! `sightline setup`: flags → [`SetupConfig`] → plan → print it for Kibana or apply it.
//! What the plan holds and why lives in `es/setup.rs`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::engine::{ModelInfo, Similarity};
use crate::es::client::{cluster_info, EsConnectArgs};
use crate::es::model_info;
use crate::es::setup::{apply, console_script, plan, SetupConfig};
use crate::es::version::{Cluster, EsVersion, Service};
use crate::es::{DEFAULT_INDEX, DEFAULT_INFERENCE_ID};

#[derive(Debug, clap::Args)]
pub(super) struct SetupArgs {
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
    /// Image index to create.
    #[arg(long, env = "SIGHTLINE_INDEX", default_value = DEFAULT_INDEX)]
    pub index: String,
    /// Id of the inference endpoint to create.
    #[arg(long, env = "SIGHTLINE_INFERENCE_ID", default_value = DEFAULT_INFERENCE_ID)]
    pub inference_id: String,
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

pub(super) async fn run(args: SetupArgs) -> Result<ExitCode> {
    let service = match args.service.as_str() {
        "auto" => None,
        other => Some(other.parse::<Service>()?),
    };
    let cluster = match &args.es_version {
        Some(version) => Cluster::new(
            version
                .parse::<EsVersion>()
                .context("invalid --es-version")?,
        ),
        None => {
            let client = args.es.connect()?;
            cluster_info(&client).await?
        }
    };
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
            model_info::fetch(&info_url, args.sidecar_api_key.as_deref()).await?
        }
        _ => bail!("--model-name, --dimensions and --similarity go together"),
    };
    let config = SetupConfig {
        index: args.index.clone(),
        inference_id: args.inference_id.clone(),
        sidecar_url: args.sidecar_url.trim_end_matches('/').to_owned(),
        sidecar_api_key: args.sidecar_api_key.clone(),
        service,
        recreate_endpoint: args.recreate_endpoint,
        verify: !args.no_verify,
    };
    let plan = plan(&cluster, &model, &config)?;
    if args.print {
        print!("{}", console_script(&plan, &model));
        return Ok(ExitCode::SUCCESS);
    }
    let client = args.es.connect()?;
    println!(
        "Elasticsearch {} · {} service · model {} ({} dims, {})",
        cluster.version, plan.service, model.name, model.dimensions, model.similarity
    );
    let outcomes = apply(&client, &plan, &model, &config).await?;
    for outcome in outcomes {
        println!("  {:<48} {}", outcome.what, outcome.action);
    }
    println!(
        "ready: sightline ingest PATH --index {} · sightline search --index {} --text \"...\"",
        config.index, config.index
    );
    Ok(ExitCode::SUCCESS)
}
