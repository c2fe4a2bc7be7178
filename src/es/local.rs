//! `--embed-locally`: vectors computed in the CLI with the engine instead of by the cluster, for
//! clusters without the inference API (7.x, 8.0–8.11) or when the sidecar is out of reach.
//!
//! `ingest` and `search` see only the [`LocalEmbedder`] trait, so the Elasticsearch code does not
//! depend on how the engine starts, and the contract tests substitute a deterministic fake.

use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::engine::{Engine, EngineOptions, Item, ModelInfo};

/// Embeds in this process.
pub(crate) trait LocalEmbedder: Send + Sync {
    /// The model, for the index mapping and the documents' `ml.model_id`.
    fn model(&self) -> &ModelInfo;
    /// One result per image, in order; an error is the reason that image failed.
    fn embed_images(&self, images: Vec<Bytes>) -> BoxFuture<'_, Vec<Result<Vec<f32>, String>>>;
    /// The vector of one query text.
    fn embed_text(&self, text: String) -> BoxFuture<'_, Result<Vec<f32>, String>>;
}

/// The engine behind [`LocalEmbedder`].
pub(crate) struct EngineEmbedder {
    engine: Engine,
}

impl EngineEmbedder {
    /// Loads the bundle in `model_dir` (as `sightline serve --model-dir` would).
    pub(crate) fn start(model_dir: &Path) -> Result<Self> {
        let engine = Engine::start(model_dir, EngineOptions::default())
            .with_context(|| format!("cannot load the model bundle in {}", model_dir.display()))?;
        Ok(EngineEmbedder { engine })
    }
}

impl LocalEmbedder for EngineEmbedder {
    fn model(&self) -> &ModelInfo {
        self.engine.info()
    }

    fn embed_images(&self, images: Vec<Bytes>) -> BoxFuture<'_, Vec<Result<Vec<f32>, String>>> {
        async move {
            let count = images.len();
            let items = images
                .into_iter()
                .map(|bytes| Item::Image(bytes.to_vec()))
                .collect();
            let results = match self.engine.embed(items).await {
                Ok(results) => results,
                Err(err) => return vec![Err(err.to_string()); count],
            };
            results
                .into_iter()
                .map(|result| {
                    result
                        .map(|embedding| embedding.vector)
                        .map_err(|err| err.to_string())
                })
                .collect()
        }
        .boxed()
    }

    fn embed_text(&self, text: String) -> BoxFuture<'_, Result<Vec<f32>, String>> {
        async move {
            let mut results = self
                .engine
                .embed(vec![Item::Text(text)])
                .await
                .map_err(|err| err.to_string())?;
            match results.pop() {
                Some(result) => result
                    .map(|embedding| embedding.vector)
                    .map_err(|err| err.to_string()),
                None => Err("the engine returned no result".to_owned()),
            }
        }
        .boxed()
    }
}
