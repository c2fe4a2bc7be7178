//! `sightline search`: flags → query → kNN request (printed for Kibana with `--print`) → hits.
//! The request is built in `es/search.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::es::client::EsConnectArgs;
use crate::es::image::{prepare, ImageOptions};
use crate::es::local::{EngineEmbedder, LocalEmbedder};
use crate::es::search::{
    console, default_num_candidates, format_hits, search, Query, SearchConfig,
};
use crate::es::{DEFAULT_INDEX, DEFAULT_INFERENCE_ID, VECTOR_FIELD};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("query").required(true).args(["image", "text"])))]
pub(super) struct SearchArgs {
    #[command(flatten)]
    pub es: EsConnectArgs,
    /// Image index to search.
    #[arg(long, env = "SIGHTLINE_INDEX", default_value = DEFAULT_INDEX)]
    pub index: String,
    /// Find images like this image file.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Find images matching this text (any language the model knows).
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// Number of hits.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Candidates per shard for the approximate search (default: 10 × k, at least 100).
    #[arg(long)]
    pub num_candidates: Option<usize>,
    /// Inference endpoint that embeds the query (the one `setup` created).
    #[arg(long, env = "SIGHTLINE_INFERENCE_ID", default_value = DEFAULT_INFERENCE_ID)]
    pub inference_id: String,
    /// Vector field to search.
    #[arg(long, default_value = VECTOR_FIELD)]
    pub field: String,
    /// Search the semantic_text field instead (documents ingested with `ingest --semantic`).
    #[arg(long, conflicts_with = "embed_locally")]
    pub semantic: bool,
    /// Print the request for Kibana's dev console instead of sending it.
    #[arg(long)]
    pub print: bool,
    /// One JSON object per hit instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Longer side, in pixels, of the query image (as `ingest --max-side`).
    #[arg(long, default_value_t = ImageOptions::default().max_side)]
    pub max_side: u32,
    /// Embed the query in this process and send the vector (clusters without the inference API).
    #[arg(long, requires = "model_dir")]
    pub embed_locally: bool,
    /// Model bundle for --embed-locally.
    #[arg(long, env = "SIGHTLINE_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
}

pub(super) async fn run(args: SearchArgs) -> Result<ExitCode> {
    let query = build_query(&args).await?;
    let config = SearchConfig {
        index: args.index.clone(),
        field: args.field.clone(),
        inference_id: args.inference_id.clone(),
        k: args.k,
        num_candidates: args
            .num_candidates
            .unwrap_or_else(|| default_num_candidates(args.k)),
        semantic: args.semantic,
    };
    if args.print {
        print!("{}", console(&config, &query)?);
        return Ok(ExitCode::SUCCESS);
    }
    let client = args.es.connect()?;
    let hits = search(&client, &config, &query).await?;
    if args.json {
        for hit in &hits {
            println!(
                "{}",
                serde_json::to_string(hit).context("cannot print a hit")?
            );
        }
    } else {
        print!("{}", format_hits(&hits));
    }
    Ok(ExitCode::SUCCESS)
}

async fn build_query(args: &SearchArgs) -> Result<Query> {
    let embedder = match (&args.model_dir, args.embed_locally) {
        (Some(dir), true) => Some(EngineEmbedder::start(dir)?),
        _ => None,
    };
    if let Some(path) = &args.image {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        // The same preparation as ingest, so an indexed file searched for is embedded identically.
        let options = ImageOptions {
            max_side: args.max_side.max(1),
            ..ImageOptions::default()
        };
        let image = prepare(&bytes, options)
            .with_context(|| format!("{} is not a usable image", path.display()))?;
        return match &embedder {
            Some(embedder) => {
                let mut vectors = embedder.embed_images(vec![image.payload.clone()]).await;
                let vector = vectors
                    .pop()
                    .context("the engine returned no vector")?
                    .map_err(|reason| {
                        anyhow::anyhow!("cannot embed {}: {reason}", path.display())
                    })?;
                Ok(Query::Vector(vector))
            }
            None => Ok(Query::Image(image.data_uri())),
        };
    }
    let text = args
        .text
        .clone()
        .context("give --image FILE or --text TEXT")?;
    match &embedder {
        Some(embedder) => {
            let vector = embedder
                .embed_text(text)
                .await
                .map_err(|reason| anyhow::anyhow!("cannot embed the query text: {reason}"))?;
            Ok(Query::Vector(vector))
        }
        None => Ok(Query::Text(text)),
    }
}
