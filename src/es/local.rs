//! Vectors computed outside the cluster (`vectors` mode): by the running sidecar over HTTP
//! ([`SidecarEmbedder`], the default), or by the engine in this process (`--embed-locally`,
//! [`EngineEmbedder`], for machines without a sidecar).
//!
//! `ingest` sees only the [`LocalEmbedder`] trait, so the Elasticsearch code does not depend on
//! where vectors come from, and the unit tests substitute a deterministic fake.

use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::engine::{Engine, EngineOptions, Item, ModelInfo};
use crate::sidecar::{ImageBytes, Lane, SidecarClient};

/// An image to embed: media type and bytes.
pub(crate) type Payload = (&'static str, Bytes);

/// Embeds outside the cluster.
pub(crate) trait LocalEmbedder: Send + Sync {
    /// The model, for the index mapping, the documents' `ml.model_id` and `model_fingerprint`.
    fn model(&self) -> &ModelInfo;
    /// One result per image, in order; an error is the reason that image failed.
    fn embed_images(&self, images: Vec<Payload>) -> BoxFuture<'_, Vec<Result<Vec<f32>, String>>>;
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

    fn embed_images(&self, images: Vec<Payload>) -> BoxFuture<'_, Vec<Result<Vec<f32>, String>>> {
        async move {
            let count = images.len();
            let items = images
                .into_iter()
                .map(|(_, bytes)| Item::Image(bytes.to_vec()))
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

/// The running sidecar behind [`LocalEmbedder`]: ingest images on the ingest lane, query texts
/// on the priority lane.
pub(crate) struct SidecarEmbedder {
    client: SidecarClient,
}

impl SidecarEmbedder {
    pub(crate) fn new(client: SidecarClient) -> Self {
        SidecarEmbedder { client }
    }
}

impl LocalEmbedder for SidecarEmbedder {
    fn model(&self) -> &ModelInfo {
        self.client.model()
    }

    fn embed_images(&self, images: Vec<Payload>) -> BoxFuture<'_, Vec<Result<Vec<f32>, String>>> {
        async move {
            let views: Vec<ImageBytes<'_>> = images
                .iter()
                .map(|(mime, bytes)| ImageBytes { mime, bytes })
                .collect();
            self.client
                .embed_images_each(&views, Lane::Ingest)
                .await
                .into_iter()
                .map(|result| result.map_err(|err| err.to_string()))
                .collect()
        }
        .boxed()
    }

    fn embed_text(&self, text: String) -> BoxFuture<'_, Result<Vec<f32>, String>> {
        async move {
            let mut vectors = self
                .client
                .embed_texts(&[text], Lane::Search)
                .await
                .map_err(|err| err.to_string())?;
            vectors
                .pop()
                .ok_or_else(|| "the sidecar returned no vector".to_owned())
        }
        .boxed()
    }
}
