//! `sightline model pull`: plan the files of a known model, fetch each into the cache, and
//! hand the cached files to [`create_bundle`], the same code `model init` uses (an open_clip
//! preset's cached repository directory is read like `model init --from-open-clip`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::build::{create_bundle, BundleSpec, CreatedBundle, Family};
use super::catalogue::{plan, HubFile, Layout, Role};
use super::download::{Fetched, HubClient};
use super::inspect::TensorOverrides;
use super::open_clip::{read_export, CONFIG};

/// Everything `sightline model pull` needs; the CLI fills it from flags and the environment.
#[derive(Debug, Clone)]
pub struct PullRequest {
    pub model: String,
    pub revision: String,
    pub image_revision: String,
    pub quantized: bool,
    /// Bundle directory; `models/{bundle name}` when `None`.
    pub dir: Option<PathBuf>,
    /// `HF_ENDPOINT`.
    pub endpoint: String,
    /// `HF_TOKEN`.
    pub token: Option<String>,
    /// The Sightline cache root (see [`cache_root`]).
    pub cache: PathBuf,
    pub force: bool,
    pub progress: bool,
}

/// What a pull fetched and built.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub files: Vec<(HubFile, Fetched)>,
    pub bundle: CreatedBundle,
}

/// Fetches every file of the plan into the cache, then writes and checks the bundle.
pub async fn pull(request: &PullRequest) -> Result<Pulled> {
    let plan = plan(
        &request.model,
        &request.revision,
        &request.image_revision,
        request.quantized,
    )?;
    let client = HubClient::new(
        &request.endpoint,
        request.token.clone(),
        request.cache.clone(),
    )?
    .with_progress(request.progress);
    let mut files = Vec::with_capacity(plan.files.len());
    for file in &plan.files {
        let fetched = client.fetch(file).await?;
        files.push((file.clone(), fetched));
    }
    let path = |role| -> Result<PathBuf> {
        let wanted = plan
            .file(role)
            .ok_or_else(|| anyhow!("the plan has no {role:?} file"))?;
        files
            .iter()
            .find(|(f, _)| f == wanted)
            .map(|(_, fetched)| fetched.path.clone())
            .ok_or_else(|| anyhow!("the {role:?} file was not fetched"))
    };
    let out = request
        .dir
        .clone()
        .unwrap_or_else(|| Path::new("models").join(&plan.name));
    if plan.layout == Layout::OpenClip {
        // The cache keeps each repository's paths, so the export directory is where
        // `config.json` landed.
        let config = &files
            .iter()
            .find(|(f, _)| f.path == CONFIG)
            .ok_or_else(|| anyhow!("the plan has no `{CONFIG}`"))?
            .1
            .path;
        let dir = config
            .parent()
            .ok_or_else(|| anyhow!("`{}` has no directory", config.display()))?;
        let export = read_export(dir)?;
        let spec = BundleSpec::from_open_clip(&export, plan.name.clone(), out, request.force);
        let bundle = create_bundle(spec).await?;
        return Ok(Pulled { files, bundle });
    }
    let spec = BundleSpec {
        name: plan.name.clone(),
        image_onnx: path(Role::ImageEncoder)?,
        text_onnx: path(Role::TextEncoder)?,
        tokenizer: path(Role::Tokenizer)?,
        dense: Some(path(Role::Dense)?),
        max_seq_len: plan.max_seq_len,
        out,
        force: request.force,
        overrides: TensorOverrides::default(),
        expect_dimensions: Some(plan.dimensions),
        family: Family::SentenceTransformers,
    };
    let bundle = create_bundle(spec).await?;
    Ok(Pulled { files, bundle })
}
