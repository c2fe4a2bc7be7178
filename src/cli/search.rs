//! `sightline search`: flags → mode → query (embedded through the sidecar in vectors mode) →
//! kNN request (printed for Kibana with `--print`) → hits. The request is built in
//! `es/search.rs`, the mode decided in `es/mode.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::engine::Similarity;
use crate::es::client::{cluster_info, EsConnectArgs};
use crate::es::image::{prepare, ImageOptions, PreparedImage};
use crate::es::local::{EngineEmbedder, LocalEmbedder};
use crate::es::mode::{self, choose_mode, parse_mode_flag, Mode};
use crate::es::model_info;
use crate::es::search::{
    console, default_num_candidates, format_hits, search, Query, SearchConfig,
};
use crate::es::version::{Cluster, EsVersion, KnnForm};
use crate::es::{search_inference_id, DEFAULT_INDEX, DEFAULT_INFERENCE_ID, VECTOR_FIELD};
use crate::sidecar::{ImageBytes, Lane, SidecarArgs};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("query").required(true).args(["image", "text"])))]
pub(crate) struct SearchArgs {
    #[command(flatten)]
    pub es: EsConnectArgs,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
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
    /// auto: the mode `setup` recorded in the index (else the licence decides); pipeline: the
    /// cluster embeds the query (query_vector_builder); vectors: this command embeds it through
    /// the sidecar and sends the vector. Without --es, --print uses pipeline unless told.
    #[arg(long, default_value = "auto", value_parser = ["auto", "pipeline", "vectors"])]
    pub mode: String,
    /// Cluster version to print for with --print and no --es (decides the kNN request form).
    #[arg(long, requires = "print", value_name = "VERSION")]
    pub es_version: Option<String>,
    /// Inference endpoint id given to `setup`; queries go through its `-search` twin.
    #[arg(long, env = "SIGHTLINE_INFERENCE_ID", default_value = DEFAULT_INFERENCE_ID)]
    pub inference_id: String,
    /// Vector field to search.
    #[arg(long, default_value = VECTOR_FIELD)]
    pub field: String,
    /// Search the semantic_text field instead (documents ingested with `ingest --semantic`).
    #[arg(long, conflicts_with = "embed_locally")]
    pub semantic: bool,
    /// Print the complete request for Kibana's dev console instead of sending it (in vectors
    /// mode with the query vector filled in).
    #[arg(long)]
    pub print: bool,
    /// One JSON object per hit instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Longer side, in pixels, of the query image (as `ingest --max-side`).
    #[arg(long, default_value_t = ImageOptions::default().max_side)]
    pub max_side: u32,
    /// Embed the query in this process (vectors mode without a sidecar).
    #[arg(long, requires = "model_dir")]
    pub embed_locally: bool,
    /// Model bundle for --embed-locally.
    #[arg(long, env = "SIGHTLINE_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
}

pub(crate) async fn run(args: SearchArgs) -> Result<ExitCode> {
    let client = match (&args.es.es_url, args.print) {
        (None, true) => None,
        _ => Some(args.es.connect()?),
    };
    let cluster = match (&client, &args.es_version) {
        (Some(client), _) => Some(cluster_info(client).await?),
        (None, Some(version)) => Some(Cluster::new(
            version
                .parse::<EsVersion>()
                .context("invalid --es-version")?,
        )),
        (None, None) => None,
    };
    let mode = match (parse_mode_flag(&args.mode)?, args.embed_locally) {
        (_, true) => Mode::Vectors,
        (Some(mode), false) => mode,
        (None, false) => match (&client, &cluster) {
            (Some(client), Some(cluster)) => recorded_mode(client, cluster, &args.index).await?,
            _ => Mode::Pipeline,
        },
    };
    let image = match &args.image {
        Some(path) => Some(read_query_image(path, args.max_side)?),
        None => None,
    };
    let query = match mode {
        Mode::Pipeline => match &image {
            Some((_, image)) => Query::Image(image.data_uri()),
            None => Query::Text(
                args.text
                    .clone()
                    .context("give --image FILE or --text TEXT")?,
            ),
        },
        Mode::Vectors => Query::Vector(embed_query(&args, client.as_ref(), image.as_ref()).await?),
    };
    let form = cluster
        .as_ref()
        .map_or(KnnForm::TopLevel, Cluster::knn_form);
    let config = SearchConfig {
        index: args.index.clone(),
        field: args.field.clone(),
        inference_id: search_inference_id(&args.inference_id),
        k: args.k,
        num_candidates: args
            .num_candidates
            .unwrap_or_else(|| default_num_candidates(args.k)),
        semantic: args.semantic,
        form,
        similarity: Similarity::DotProduct,
    };
    if args.print {
        print!("{}", console(&config, &query)?);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(client) = client else {
        anyhow::bail!("--es URL is required (or set SIGHTLINE_ES_URL)");
    };
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

/// The mode `setup` recorded in the index's `_meta`; for an index without it (made before modes
/// existed), what the licence allows.
async fn recorded_mode(
    client: &elasticsearch::Elasticsearch,
    cluster: &Cluster,
    index: &str,
) -> Result<Mode> {
    // An unreadable mapping is not fatal here: the licence still tells the mode.
    let recorded = model_info::read_index_record(client, index)
        .await
        .ok()
        .and_then(|record| record.mode);
    if let Some(mode) = recorded {
        return Ok(mode);
    }
    let license = mode::read_license(client).await?;
    Ok(choose_mode(cluster, license.as_ref(), None)?.mode)
}

fn read_query_image(path: &PathBuf, max_side: u32) -> Result<(PathBuf, PreparedImage)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    // The same preparation as ingest, so an indexed file searched for is embedded identically.
    let options = ImageOptions {
        max_side: max_side.max(1),
        ..ImageOptions::default()
    };
    let image = prepare(&bytes, options)
        .with_context(|| format!("{} is not a usable image", path.display()))?;
    Ok((path.clone(), image))
}

/// The query vector: from the local engine with --embed-locally, else from the sidecar on its
/// priority lane, after checking that the sidecar serves the model the index was made with.
async fn embed_query(
    args: &SearchArgs,
    client: Option<&elasticsearch::Elasticsearch>,
    image: Option<&(PathBuf, PreparedImage)>,
) -> Result<Vec<f32>> {
    if args.embed_locally {
        let dir = args
            .model_dir
            .as_ref()
            .context("--embed-locally needs --model-dir DIR")?;
        let embedder = EngineEmbedder::start(dir)?;
        if let Some(client) = client {
            let recorded = model_info::read_index_record(client, &args.index)
                .await?
                .fingerprint;
            model_info::check_same_model(&args.index, recorded.as_deref(), embedder.model())?;
        }
        return match image {
            Some((path, image)) => embedder
                .embed_images(vec![(image.payload_mime, image.payload.clone())])
                .await
                .pop()
                .context("the engine returned no vector")?
                .map_err(|reason| anyhow::anyhow!("cannot embed {}: {reason}", path.display())),
            None => embedder
                .embed_text(
                    args.text
                        .clone()
                        .context("give --image FILE or --text TEXT")?,
                )
                .await
                .map_err(|reason| anyhow::anyhow!("cannot embed the query text: {reason}")),
        };
    }
    let sidecar = args.sidecar.connect().await?;
    if let Some(client) = client {
        let recorded = model_info::read_index_record(client, &args.index)
            .await?
            .fingerprint;
        model_info::check_same_model(&args.index, recorded.as_deref(), sidecar.model())?;
    }
    let mut vectors = match image {
        Some((path, image)) => sidecar
            .embed_images(&[ImageBytes::from(image)], Lane::Search)
            .await
            .with_context(|| format!("cannot embed {}", path.display()))?,
        None => sidecar
            .embed_texts(
                &[args
                    .text
                    .clone()
                    .context("give --image FILE or --text TEXT")?],
                Lane::Search,
            )
            .await
            .context("cannot embed the query text")?,
    };
    vectors.pop().context("the sidecar returned no vector")
}
