//! `sightline model`: create a model bundle from ONNX files a user already has (`init`), or
//! download the default one from the Hugging Face hub (`pull`). Both turn their flags into a
//! spec for `model::create_bundle`, which inspects, writes and smoke-tests the bundle;
//! this file only reads flags and the environment and prints what was done.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::engine::bundle::TextPooling;
use crate::model::{
    self, create_bundle, BundleSpec, Checksum, CreatedBundle, Family, Outcome, PullRequest,
    TensorOverrides, DEFAULT_ENDPOINT, DEFAULT_MODEL, DEFAULT_REVISION,
};

#[derive(Debug, clap::Subcommand)]
pub(super) enum ModelCommand {
    /// Write a bundle from ONNX files you already have; the graphs are inspected for tensor
    /// names and shapes, and the bundle is smoke-tested before it is moved into place.
    Init(InitArgs),
    /// Download a known model from the Hugging Face hub (cached, resumable, checksummed).
    Pull(PullArgs),
    /// The models `pull` knows: dimensions, languages, weights licence, size, reported recall.
    List,
}

#[derive(Debug, clap::Args)]
pub(super) struct InitArgs {
    /// An open_clip export in Immich's layout (`config.json`, `visual/model.onnx`,
    /// `visual/preprocess_cfg.json`, `textual/model.onnx`, `textual/tokenizer.json`,
    /// `textual/tokenizer_config.json`): every setting comes from its files.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["image_onnx", "text_onnx", "tokenizer", "dense", "max_seq_len"])]
    from_open_clip: Option<PathBuf>,
    /// Image encoder: float32 [N, 3, H, W] in (`pixel_values`), [N, D] out (`image_embeds`).
    #[arg(long, value_name = "FILE", required_unless_present = "from_open_clip")]
    image_onnx: Option<PathBuf>,
    /// Text encoder taking int64 `input_ids` and `attention_mask`: either the pooled sentence
    /// embedding [N, D] out, or token states [N, L, H] out together with --dense.
    #[arg(long, value_name = "FILE", required_unless_present = "from_open_clip")]
    text_onnx: Option<PathBuf>,
    /// The text model's `tokenizer.json`.
    #[arg(long, value_name = "FILE", required_unless_present = "from_open_clip")]
    tokenizer: Option<PathBuf>,
    /// sentence-transformers Dense weights (`2_Dense/model.safetensors`, `linear.weight`
    /// [D, H]); Sightline mean-pools the token states and projects them with it.
    #[arg(long, value_name = "FILE")]
    dense: Option<PathBuf>,
    /// Bundle directory to write.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Model name reported by `/info` and in responses [default: the directory's name].
    #[arg(long)]
    name: Option<String>,
    /// Token limit including [CLS] and [SEP]; longer texts are truncated and flagged.
    #[arg(long, default_value_t = 128)]
    max_seq_len: usize,
    /// Image input tensor, when the graph's cannot be told apart.
    #[arg(long, value_name = "TENSOR")]
    image_input: Option<String>,
    /// Image output tensor, when the graph has several 2-D outputs.
    #[arg(long, value_name = "TENSOR")]
    image_output: Option<String>,
    /// Text output tensor, when the graph has several candidates.
    #[arg(long, value_name = "TENSOR")]
    text_output: Option<String>,
    /// Replace a different bundle already in --out.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct PullArgs {
    /// Model to download: a name `sightline model list` shows, or its repo id.
    #[arg(default_value = DEFAULT_MODEL)]
    name: String,
    /// Bundle directory [default: models/NAME, models/NAME-int8 with --quantized].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Branch, tag or commit of the model's repository (text encoder, Dense, tokenizer).
    #[arg(long, default_value = DEFAULT_REVISION)]
    revision: String,
    /// Branch, tag or commit of the image encoder's repository.
    #[arg(long, default_value = DEFAULT_REVISION)]
    image_revision: String,
    /// Download the int8 encoders (about 4× smaller and 2–3× faster on CPUs; slightly
    /// different vectors, so the bundle gets its own name).
    #[arg(long)]
    quantized: bool,
    /// Replace a different bundle already in the directory.
    #[arg(long)]
    force: bool,
    /// Hugging Face hub or mirror to download from. A token in HF_TOKEN is sent to it.
    #[arg(long, env = "HF_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    /// Download cache [default: $XDG_CACHE_HOME/sightline, else ~/.cache/sightline].
    #[arg(long, env = "SIGHTLINE_CACHE", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

pub(super) async fn run(cmd: ModelCommand) -> Result<ExitCode> {
    match cmd {
        ModelCommand::Init(args) => init(args).await,
        ModelCommand::Pull(args) => pull(args).await,
        ModelCommand::List => {
            print!("{}", model::preset_table());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn init(args: InitArgs) -> Result<ExitCode> {
    let name = match args.name {
        Some(name) => name,
        None => args
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("--out names no directory; pass --name")?,
    };
    if let Some(dir) = &args.from_open_clip {
        let export = model::read_export(dir)?;
        let spec = BundleSpec::from_open_clip(&export, name, args.out, args.force);
        let created = create_bundle(spec).await?;
        print_bundle(&created);
        return Ok(ExitCode::SUCCESS);
    }
    // clap requires all three without --from-open-clip.
    let required =
        |file: Option<PathBuf>, flag: &str| file.with_context(|| format!("{flag} is required"));
    let spec = BundleSpec {
        name,
        image_onnx: required(args.image_onnx, "--image-onnx")?,
        text_onnx: required(args.text_onnx, "--text-onnx")?,
        tokenizer: required(args.tokenizer, "--tokenizer")?,
        dense: args.dense,
        max_seq_len: args.max_seq_len,
        out: args.out,
        force: args.force,
        overrides: TensorOverrides {
            image_input: args.image_input,
            image_output: args.image_output,
            text_output: args.text_output,
        },
        expect_dimensions: None,
        family: Family::SentenceTransformers,
    };
    let created = create_bundle(spec).await?;
    print_bundle(&created);
    Ok(ExitCode::SUCCESS)
}

async fn pull(args: PullArgs) -> Result<ExitCode> {
    let cache = match args.cache_dir {
        Some(dir) => dir,
        None => model::cache_root(|name| std::env::var_os(name))?,
    };
    let token = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|t| !t.is_empty()));
    let request = PullRequest {
        model: args.name,
        revision: args.revision,
        image_revision: args.image_revision,
        quantized: args.quantized,
        dir: args.dir,
        endpoint: args.endpoint,
        token,
        cache,
        force: args.force,
        progress: true,
    };
    let pulled = model::pull(&request).await?;
    for (file, fetched) in &pulled.files {
        let check = match &fetched.published {
            Some(Checksum::Sha256(_)) => "sha256 verified".to_owned(),
            Some(Checksum::GitSha1(_)) => "git blob id verified".to_owned(),
            None => format!(
                "no checksum published; size checked, sha256 {} recorded",
                fetched.sha256
            ),
        };
        let source = if fetched.cached {
            ", from the cache"
        } else {
            ""
        };
        println!(
            "{}/{} @ {}: {} bytes, {check}{source}",
            file.repo, file.path, file.revision, fetched.size
        );
    }
    print_bundle(&pulled.bundle);
    Ok(ExitCode::SUCCESS)
}

fn print_bundle(created: &CreatedBundle) {
    let m = &created.manifest;
    let verb = match created.outcome {
        Outcome::Created => "wrote bundle",
        Outcome::Replaced => "replaced bundle",
        Outcome::Unchanged => "bundle already up to date:",
    };
    println!(
        "{verb} `{}`: `{}`, {} dimensions, max_seq_len {}",
        created.dir.display(),
        m.name,
        m.dimensions,
        m.max_seq_len
    );
    println!(
        "  image: {} `{}` [N, 3, {s}, {s}] -> `{}`",
        m.image.onnx,
        m.image.input,
        m.image.output,
        s = m.preprocess.size
    );
    let pooling = match (m.text.pooling, &m.text.dense) {
        (TextPooling::Mean, Some(dense)) => format!("mean pooling + {dense}"),
        _ => "pooled by the graph".to_owned(),
    };
    let inputs = match &m.text.attention_mask {
        Some(mask) => format!("`{}`, `{mask}`", m.text.input_ids),
        None => format!("`{}` (mask derived by the graph)", m.text.input_ids),
    };
    println!(
        "  text:  {} {inputs} -> `{}` ({pooling})",
        m.text.onnx, m.text.output
    );
    println!("  fingerprint: {}", created.fingerprint);
}
