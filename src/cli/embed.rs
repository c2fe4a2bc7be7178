//! `sightline embed`: embeds files and texts from the command line, one JSON object per input
//! and line, in input order. A bad input prints an error line, the rest continue, and the exit
//! code is 1 at the end. JPEGs are decoded in full, so the output is the reference pipeline's
//! (`tools/compare.py` checks that); `serve` trades that for speed unless `--exact-jpeg`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::engine_args::EngineArgs;
use crate::engine::{EmbedError, Item};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("inputs").required(true).multiple(true).args(["image", "text"])))]
pub(super) struct EmbedArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Image files to embed (JPEG, PNG, WebP, GIF, BMP, TIFF).
    #[arg(long, num_args = 1..)]
    image: Vec<PathBuf>,
    /// Texts to embed, in any language.
    #[arg(long, num_args = 1..)]
    text: Vec<String>,
}

/// One output line; the vector is serialised as f32, so numbers print in their shortest form.
#[derive(Serialize)]
#[serde(untagged)]
enum Line<'a> {
    Ok {
        input: &'a str,
        modality: &'static str,
        embedding: Vec<f32>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    Failed {
        input: &'a str,
        error: String,
    },
}

/// Inputs sent to the engine at once: well under the default queue capacity.
const CHUNK: usize = 64;

pub(super) async fn run(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    let engine = args.engine.start().await?;
    let inputs: Vec<(String, Result<Item, EmbedError>)> = args
        .image
        .iter()
        .map(|path| {
            let item = std::fs::read(path).map(Item::Image).map_err(|e| {
                EmbedError::bad_input(format!("cannot read `{}`: {e}", path.display()))
            });
            (path.display().to_string(), item)
        })
        .chain(
            args.text
                .iter()
                .map(|t| (t.clone(), Ok(Item::Text(t.clone())))),
        )
        .collect();
    let mut failed = 0usize;
    let mut out = std::io::stdout().lock();
    for chunk in inputs.chunks(CHUNK) {
        let items: Vec<Item> = chunk
            .iter()
            .filter_map(|(_, item)| item.as_ref().ok().cloned())
            .collect();
        let mut results = engine.embed(items).await?.into_iter();
        for (input, item) in chunk {
            let result = match item {
                // The engine answers every item; a missing answer is reported, not assumed.
                Ok(_) => results
                    .next()
                    .unwrap_or_else(|| Err(EmbedError::bad_input("no result from the engine"))),
                Err(e) => Err(e.clone()),
            };
            let line = match result {
                Ok(e) => Line::Ok {
                    input,
                    modality: e.modality.label(),
                    embedding: e.vector,
                    truncated: e.truncated,
                },
                Err(e) => {
                    failed += 1;
                    Line::Failed {
                        input,
                        error: e.message,
                    }
                }
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
    }
    if failed > 0 {
        eprintln!("error: {failed} of {} inputs failed", inputs.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
