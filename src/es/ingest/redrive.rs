//! `sightline ingest --redrive`: the documents the pipeline parked in `<index>-failed` (a
//! sidecar restart, an outage: `custom` never retries a 5xx, contract §12 #2) sent to the index
//! again, then removed from `<index>-failed` — each one only after its `_bulk` item says it is in
//! the index, so a crash at any point loses nothing (a document still in both places is
//! harmless: its `_id` is its content hash and the next redrive sees a 409 and just deletes it).
//!
//! Pages through `<index>-failed` in `content_hash` order with `search_after` (every document
//! Sightline writes has one), `--bulk-size` documents at a time:
//! - vectors mode (default): the stored `image_b64` is embedded through the sidecar (or the local
//!   engine) and the finished vector is sent with `create`, bypassing the pipeline;
//! - `--via-pipeline`: the document goes through the pipeline again with `index`, so one that
//!   fails again replaces its copy in `<index>-failed` with the fresh reason, which is reported.
//!
//! What still fails stays in `<index>-failed` and is named in the failures file.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use elasticsearch::http::StatusCode;
use elasticsearch::indices::IndicesRefreshParts;
use elasticsearch::{BulkParts, Elasticsearch, SearchParts};
use indicatif::ProgressBar;
use serde::de::IgnoredAny;
use serde_json::{json, Value};

use super::bulk::{make_entry, make_entry_as, Entry};
use super::document::base64_vector;
use super::failures::{FailureLog, FailureRecord};
use super::{preflight, send_entries, IngestConfig, IngestMode, IngestReport, RunState};
use crate::es::body::BulkResponse;
use crate::es::client::call;
use crate::es::{failed_index_name, FINGERPRINT_FIELD, IMAGE_FIELD};

/// Fields the pipeline's `on_failure` adds; they do not belong in the image index.
const FAILURE_FIELDS: [&str; 2] = ["error", "failed_at"];

/// Upper bound on pages, so a cluster that never stops answering hits cannot loop forever
/// (10⁶ pages × `--bulk-size`).
const MAX_PAGES: usize = 1_000_000;

/// Re-sends every document of `<index>-failed`. `found` counts the documents read, `indexed` and
/// `already_present` those now in the index (and removed from the failed index), `failed` those
/// still failing.
pub(crate) async fn redrive(client: Elasticsearch, config: IngestConfig) -> Result<IngestReport> {
    let target = preflight(&client, &config).await?;
    let failed_index = failed_index_name(&config.index);
    let failures = FailureLog::create(&config.failures_path)?;
    let mut report = IngestReport::default();
    // The pipeline wrote these documents; a search sees them only after a refresh.
    if !refresh(&client, &failed_index).await? {
        return Ok(report);
    }
    let context = Arc::new(RunState {
        client,
        target,
        seen: Mutex::new(Default::default()),
        failures,
        progress: ProgressBar::hidden(),
        config,
    });
    let page_size = context.config.bulk_size.max(1);
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let hits = page(&context.client, &failed_index, after.as_deref(), page_size).await?;
        let Some(last) = hits.last() else { break };
        after = Some(last.content_hash.clone());
        report.found += hits.len();
        let entries = entries(&context, hits, &mut report).await?;
        let done = send_entries(&context, entries, &mut report).await?;
        delete(&context.client, &failed_index, &done).await?;
    }
    refresh(&context.client, &context.config.index).await?;
    refresh(&context.client, &failed_index).await?;
    Ok(report)
}

/// One document of `<index>-failed`.
struct Parked {
    id: String,
    content_hash: String,
    source: serde_json::Map<String, Value>,
}

async fn page(
    client: &Elasticsearch,
    failed_index: &str,
    after: Option<&str>,
    size: usize,
) -> Result<Vec<Parked>> {
    let mut body = json!({
        "size": size,
        "query": {"exists": {"field": "content_hash"}},
        "sort": [{"content_hash": "asc"}],
    });
    if let Some(after) = after {
        body["search_after"] = json!([after]);
    }
    let request = format!("POST {failed_index}/_search");
    let index = [failed_index];
    let search = client.search(SearchParts::Index(&index)).body(body);
    let answer: Value = call(&request, search.send()).await?;
    let hits = answer
        .pointer("/hits/hits")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(hits
        .into_iter()
        .filter_map(|hit| {
            let id = hit.get("_id")?.as_str()?.to_owned();
            let source = hit.get("_source")?.as_object()?.clone();
            let content_hash = source.get("content_hash")?.as_str()?.to_owned();
            Some(Parked {
                id,
                content_hash,
                source,
            })
        })
        .collect())
}

/// The `_bulk` entries for a page: the stored document without its failure fields, with its
/// image (pipeline) or with a vector from the sidecar (vectors). Documents that cannot be
/// rebuilt are failures and stay parked.
async fn entries(
    context: &RunState,
    parked: Vec<Parked>,
    report: &mut IngestReport,
) -> Result<Vec<Entry>> {
    let index = context.config.index.as_str();
    let mut ready = Vec::with_capacity(parked.len());
    let mut images = Vec::new();
    for mut doc in parked {
        let path = PathBuf::from(
            doc.source
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or(&doc.id),
        );
        for field in FAILURE_FIELDS {
            doc.source.remove(field);
        }
        let image = doc
            .source
            .get(IMAGE_FIELD)
            .and_then(Value::as_str)
            .and_then(parse_data_uri);
        match image {
            Some(image) => images.push((path, doc, image)),
            None => context.fail(
                FailureRecord::new(
                    &path,
                    Some(&doc.id),
                    "redrive",
                    format!("the document in {} has no {IMAGE_FIELD} data URI to embed; re-ingest the file", failed_index_name(index)),
                ),
                report,
            )?,
        }
    }
    match &context.config.mode {
        IngestMode::Pipeline(_) => {
            for (path, doc, _) in images {
                ready.push(make_entry_as(
                    "index",
                    index,
                    &path,
                    &doc.id,
                    Value::Object(doc.source),
                )?);
            }
        }
        IngestMode::Vectors(embedder) => {
            let payloads = images.iter().map(|(_, _, image)| image.clone()).collect();
            let vectors = embedder.embed_images(payloads).await;
            let model = embedder.model();
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            for ((path, mut doc, _), vector) in images.into_iter().zip(vectors) {
                match vector {
                    Ok(vector) if vector.len() == model.dimensions => {
                        doc.source.remove(IMAGE_FIELD);
                        let value = if context.target.base64_vectors {
                            json!(base64_vector(&vector))
                        } else {
                            json!(vector)
                        };
                        doc.source.insert(
                            "ml".to_owned(),
                            json!({"image_vector": value, "model_id": model.name}),
                        );
                        if !model.fingerprint.is_empty() {
                            doc.source
                                .insert(FINGERPRINT_FIELD.to_owned(), json!(model.fingerprint));
                        }
                        doc.source.insert("ingested_at".to_owned(), json!(now_ms));
                        ready.push(make_entry(
                            index,
                            &path,
                            &doc.id,
                            Value::Object(doc.source),
                        )?);
                    }
                    Ok(vector) => context.fail(
                        FailureRecord::wrong_dimensions(
                            &path,
                            &doc.id,
                            "sidecar",
                            vector.len(),
                            model.dimensions,
                        ),
                        report,
                    )?,
                    Err(reason) => context.fail(
                        FailureRecord::new(&path, Some(&doc.id), "embed", reason),
                        report,
                    )?,
                }
            }
        }
    }
    Ok(ready)
}

/// `data:<mime>;base64,<payload>` → media type and bytes; `None` for anything else.
pub(crate) fn parse_data_uri(text: &str) -> Option<(&'static str, Bytes)> {
    let rest = text.strip_prefix("data:")?;
    let (header, payload) = rest.split_once(',')?;
    let mime = header.strip_suffix(";base64")?;
    let mime = crate::es::image::IMAGE_MIMES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(mime))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .ok()?;
    Some((mime, Bytes::from(bytes)))
}

/// Deletes `ids` from the failed index; called only with ids the index now holds.
async fn delete(client: &Elasticsearch, failed_index: &str, ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let body: Vec<Bytes> = ids
        .iter()
        .map(|id| {
            serde_json::to_vec(&json!({"delete": {"_index": failed_index, "_id": id}}))
                .map(Bytes::from)
                .context("cannot serialise a delete action")
        })
        .collect::<Result<_>>()?;
    let request = format!("POST {failed_index}/_bulk (delete)");
    let bulk = client.bulk(BulkParts::Index(failed_index)).body(body);
    let answer: BulkResponse = call(&request, bulk.send()).await?;
    // 404: already gone (another redrive); anything else leaves a harmless duplicate behind.
    for item in &answer.items {
        let result = item.result();
        if !(200..300).contains(&result.status) && result.status != 404 {
            tracing::warn!(status = result.status, "{request}: a document stays in {failed_index} although it is indexed; the next --redrive removes it");
        }
    }
    Ok(())
}

/// `POST <index>/_refresh`; false when the index does not exist.
async fn refresh(client: &Elasticsearch, index: &str) -> Result<bool> {
    let request = format!("POST {index}/_refresh");
    let indices = [index];
    let namespace = client.indices();
    let refresh = namespace.refresh(IndicesRefreshParts::Index(&indices));
    match call::<IgnoredAny>(&request, refresh.send()).await {
        Ok(_) => Ok(true),
        Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_uris_of_parked_documents_parse() {
        let (mime, bytes) = parse_data_uri("data:image/png;base64,iVBORw==").unwrap();
        assert_eq!(mime, "image/png");
        assert_eq!(&bytes[..], &[0x89, b'P', b'N', b'G']);
        assert!(parse_data_uri("data:text/plain;base64,AAAA").is_none());
        assert!(parse_data_uri("data:image/png,raw").is_none());
        assert!(parse_data_uri("not a uri").is_none());
    }
}
