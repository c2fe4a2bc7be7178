//! The requests `ingest` sends per batch, and what their answers mean: the `_mget` existence
//! check, `_bulk` with `create` and retries (whole request and single items), item
//! classification, and the `_mget` that reads back why the pipeline redirected a document.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use elasticsearch::http::StatusCode;
use elasticsearch::{BulkParts, MgetParts};
use serde_json::{json, Value};

use super::failures::FailureRecord;
use super::{IngestMode, IngestReport, RunState};
use crate::es::body::{BulkItem, BulkResponse, FailedSource, MgetResponse};
use crate::es::client::{call, EsError};
use crate::es::failed_index_name;

/// What one bulk item's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ItemOutcome {
    Indexed,
    AlreadyPresent,
    /// The pipeline's `on_failure` sent the document to this index.
    Redirected {
        index: String,
    },
    Retry {
        status: u16,
        reason: String,
    },
    Failed {
        status: u16,
        error_type: Option<String>,
        reason: String,
    },
}

/// Statuses worth another attempt: overload and gateway trouble.
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Classifies one element of a `_bulk` answer's `items`.
pub(crate) fn classify_item(item: &BulkItem, index: &str) -> ItemOutcome {
    let result = item.result();
    let status = result.status;
    let item_index = result.index.as_deref().unwrap_or(index);
    let redirected = item_index != index && item_index.ends_with("-failed");
    let error_type = result
        .error
        .as_ref()
        .and_then(|error| error.kind())
        .map(str::to_owned);
    let reason = result
        .error
        .as_ref()
        .map(|error| error.describe())
        .unwrap_or_default();
    match status {
        200..=299 if redirected => ItemOutcome::Redirected {
            index: item_index.to_owned(),
        },
        200..=299 => ItemOutcome::Indexed,
        // The failed copy exists from an earlier run: the image failed in the pipeline again.
        409 if redirected => ItemOutcome::Redirected {
            index: item_index.to_owned(),
        },
        409 => ItemOutcome::AlreadyPresent,
        status if is_retryable_status(status) => ItemOutcome::Retry { status, reason },
        status => ItemOutcome::Failed {
            status,
            error_type,
            reason,
        },
    }
}

/// One document ready for `_bulk`.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    path: PathBuf,
    id: String,
    action: Bytes,
    source: Bytes,
}

impl Entry {
    pub(super) fn size(&self) -> usize {
        self.action.len() + self.source.len() + 2
    }
}

/// How a whole `_bulk` request went.
enum RequestError {
    Retryable { status: Option<u16>, reason: String },
    Final { status: u16, reason: String },
}

pub(crate) fn make_entry(index: &str, path: &Path, id: &str, document: Value) -> Result<Entry> {
    // `create` so that a document is never overwritten: an id already there is a 409.
    make_entry_as("create", index, path, id, document)
}

/// [`make_entry`] with another bulk action (`index` for a redrive through the pipeline, so a
/// document that fails again replaces its copy in `<index>-failed` with the fresh reason).
pub(super) fn make_entry_as(
    op: &str,
    index: &str,
    path: &Path,
    id: &str,
    document: Value,
) -> Result<Entry> {
    let action = json!({ op: {"_index": index, "_id": id} });
    Ok(Entry {
        path: path.to_path_buf(),
        id: id.to_owned(),
        action: Bytes::from(serde_json::to_vec(&action).context("cannot serialise a bulk action")?),
        source: Bytes::from(serde_json::to_vec(&document).context("cannot serialise a document")?),
    })
}

/// Ids among `ids` that the index already holds. When the check itself fails after retries,
/// nothing is skipped: `create` still prevents duplicates, the run only does more work.
pub(crate) async fn existing_ids(context: &RunState, ids: &[String]) -> Result<HashSet<String>> {
    let index = context.config.index.as_str();
    let request = format!("POST {index}/_mget");
    let body = json!({"docs": ids.iter().map(|id| json!({"_id": id, "_source": false})).collect::<Vec<_>>()});
    let mut attempt = 0;
    loop {
        let mget = context.client.mget(MgetParts::Index(index)).body(&body);
        let retry_reason = match call::<MgetResponse>(&request, mget.send()).await {
            Ok(answer) => return Ok(found_ids(&answer)),
            Err(EsError::Status { status, .. }) if is_retryable_status(status.as_u16()) => {
                format!("{request}: {status}")
            }
            // e.g. 404 for an index that does not exist yet: nothing is present.
            Err(EsError::Status { status, .. })
                if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN =>
            {
                return Ok(HashSet::new());
            }
            Err(err @ (EsError::NoAnswer { .. } | EsError::CutOff { .. })) => err.one_line(),
            // Refused credentials, or a 2xx that is not an `_mget` answer.
            Err(err) => return Err(err.into()),
        };
        attempt += 1;
        if attempt > context.config.retry.max_retries {
            context.progress.suspend(|| {
                tracing::warn!("{retry_reason}; sending the batch without the existence check")
            });
            return Ok(HashSet::new());
        }
        tokio::time::sleep(context.config.retry.delay(attempt)).await;
    }
}

/// Ids with `found: true` in an `_mget` answer.
pub(crate) fn found_ids(answer: &MgetResponse) -> HashSet<String> {
    answer
        .docs
        .iter()
        .filter(|doc| doc.found)
        .map(|doc| doc.id.clone())
        .collect()
}

/// Sends `entries` with retries; every entry ends counted in `report` or in the failures file.
/// Returns the ids now in the index (indexed, or already there).
pub(super) async fn send_with_retries(
    context: &RunState,
    entries: Vec<Entry>,
    report: &mut IngestReport,
) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let mut pending = entries;
    let mut attempt: u32 = 1;
    loop {
        let outcome = send_bulk(context, &pending).await?;
        let mut retry = Vec::new();
        let mut last_reason = String::new();
        let mut last_status = None;
        match outcome {
            Ok(items) => {
                let mut redirected = Vec::new();
                for (entry, item) in pending.into_iter().zip(items) {
                    match item {
                        ItemOutcome::Indexed => {
                            report.indexed += 1;
                            context.progress.inc(1);
                            done.push(entry.id);
                        }
                        ItemOutcome::AlreadyPresent => {
                            report.already_present += 1;
                            context.progress.inc(1);
                            done.push(entry.id);
                        }
                        ItemOutcome::Redirected { index } => redirected.push((entry, index)),
                        ItemOutcome::Retry { status, reason } => {
                            last_status = Some(status);
                            last_reason = reason;
                            retry.push(entry);
                        }
                        ItemOutcome::Failed {
                            status,
                            error_type,
                            reason,
                        } => {
                            let mut record =
                                FailureRecord::new(&entry.path, Some(&entry.id), "bulk", reason);
                            record.status = Some(status);
                            record.error_type = error_type;
                            record.attempts = attempt;
                            context.fail(record, report)?;
                        }
                    }
                }
                report_redirected(context, redirected, attempt, report).await?;
            }
            Err(RequestError::Retryable { status, reason }) => {
                last_status = status;
                last_reason = reason;
                retry = pending;
            }
            Err(RequestError::Final { status, reason }) => {
                for entry in pending {
                    let mut record =
                        FailureRecord::new(&entry.path, Some(&entry.id), "bulk", reason.clone());
                    record.status = Some(status);
                    record.attempts = attempt;
                    context.fail(record, report)?;
                }
                return Ok(done);
            }
        }
        if retry.is_empty() {
            return Ok(done);
        }
        if attempt > context.config.retry.max_retries {
            for entry in retry {
                let mut record = FailureRecord::new(
                    &entry.path,
                    Some(&entry.id),
                    "bulk",
                    format!("gave up after {attempt} attempts: {last_reason}"),
                );
                record.status = last_status;
                record.attempts = attempt;
                context.fail(record, report)?;
            }
            return Ok(done);
        }
        tokio::time::sleep(context.config.retry.delay(attempt)).await;
        attempt += 1;
        pending = retry;
    }
}

/// One `_bulk` request. The outer `Err` stops the run (credentials); the inner one says
/// whether the whole request may be retried.
async fn send_bulk(
    context: &RunState,
    entries: &[Entry],
) -> Result<std::result::Result<Vec<ItemOutcome>, RequestError>> {
    let index = context.config.index.as_str();
    let request = format!("POST {index}/_bulk");
    let body: Vec<Bytes> = entries
        .iter()
        .flat_map(|entry| [entry.action.clone(), entry.source.clone()])
        .collect();
    let pipeline = match &context.config.mode {
        IngestMode::Pipeline(name) => name.as_str(),
        // The index's default pipeline would try to embed a document that has no image.
        IngestMode::Vectors(_) => "_none",
    };
    let bulk = context
        .client
        .bulk(BulkParts::Index(index))
        .pipeline(pipeline)
        .body(body);
    let items = match call::<BulkResponse>(&request, bulk.send()).await {
        Ok(answer) => answer.items,
        Err(err) => return request_error(err).map(Err),
    };
    if items.len() != entries.len() {
        return Ok(Err(RequestError::Final {
            // A `_bulk` that answers at all answers 200.
            status: StatusCode::OK.as_u16(),
            reason: format!(
                "{request}: {} items answered for {} documents",
                items.len(),
                entries.len()
            ),
        }));
    }
    Ok(Ok(items
        .iter()
        .map(|item| classify_item(item, index))
        .collect()))
}

/// Whether a `_bulk` that got no usable answer may be sent again. Refused credentials are an
/// `Err`: they would fail every later request too.
fn request_error(err: EsError) -> Result<RequestError> {
    let status = match &err {
        EsError::Status { status, .. } => *status,
        // No answer, a cut-off one or a 2xx that is not a bulk answer: worth another attempt.
        _ => {
            return Ok(RequestError::Retryable {
                status: err.status().map(|status| status.as_u16()),
                reason: err.one_line(),
            })
        }
    };
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(err.into());
    }
    if is_retryable_status(status.as_u16()) {
        return Ok(RequestError::Retryable {
            status: Some(status.as_u16()),
            reason: err.to_string(),
        });
    }
    let mut reason = err.to_string();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        reason.push_str(" (lower --bulk-max-bytes or --bulk-size)");
    }
    Ok(RequestError::Final {
        status: status.as_u16(),
        reason,
    })
}

/// Records documents the pipeline sent to `<index>-failed`, with the error message the pipeline
/// stored there when it can be read back.
async fn report_redirected(
    context: &RunState,
    redirected: Vec<(Entry, String)>,
    attempt: u32,
    report: &mut IngestReport,
) -> Result<()> {
    if redirected.is_empty() {
        return Ok(());
    }
    let failed_index = failed_index_name(&context.config.index);
    let ids: Vec<&str> = redirected
        .iter()
        .map(|(entry, _)| entry.id.as_str())
        .collect();
    let reasons = pipeline_errors(context, &failed_index, &ids).await;
    for (entry, index) in redirected {
        let reason = reasons
            .get(&entry.id)
            .cloned()
            .unwrap_or_else(|| "the pipeline could not embed this image".to_owned());
        let mut record = FailureRecord::new(
            &entry.path,
            Some(&entry.id),
            "pipeline",
            format!("{reason} (document kept in {index})"),
        );
        record.attempts = attempt;
        context.fail(record, report)?;
    }
    Ok(())
}

async fn pipeline_errors(
    context: &RunState,
    failed_index: &str,
    ids: &[&str],
) -> HashMap<String, String> {
    let body = json!({"docs": ids.iter().map(|id| json!({"_id": id, "_source": ["error"]})).collect::<Vec<_>>()});
    let mget = context
        .client
        .mget(MgetParts::Index(failed_index))
        .body(body);
    // Best effort: without the stored message the failure is still reported, only vaguer.
    let Ok(answer) = call::<MgetResponse<FailedSource>>("POST _mget", mget.send()).await else {
        return HashMap::new();
    };
    answer
        .docs
        .into_iter()
        .filter_map(|doc| {
            let message = doc.source?.error?.message?;
            Some((doc.id, message))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: Value) -> BulkItem {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn bulk_items_are_classified() {
        let created =
            json!({"create": {"_index": "photos", "_id": "a", "status": 201, "result": "created"}});
        assert_eq!(
            classify_item(&item(created), "photos"),
            ItemOutcome::Indexed
        );
        let conflict = json!({"create": {"_index": "photos", "_id": "a", "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "exists"}}});
        assert_eq!(
            classify_item(&item(conflict), "photos"),
            ItemOutcome::AlreadyPresent
        );
        let redirected = json!({"create": {"_index": "photos-failed", "_id": "a", "status": 201}});
        assert_eq!(
            classify_item(&item(redirected), "photos"),
            ItemOutcome::Redirected {
                index: "photos-failed".to_owned()
            }
        );
        let again = json!({"create": {"_index": "photos-failed", "_id": "a", "status": 409}});
        assert!(matches!(
            classify_item(&item(again), "photos"),
            ItemOutcome::Redirected { .. }
        ));
        let busy = json!({"create": {"_index": "photos", "_id": "a", "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}});
        assert!(matches!(
            classify_item(&item(busy), "photos"),
            ItemOutcome::Retry { status: 429, .. }
        ));
        let bad = json!({"create": {"_index": "photos", "_id": "a", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "dims"}}});
        assert_eq!(
            classify_item(&item(bad), "photos"),
            ItemOutcome::Failed {
                status: 400,
                error_type: Some("mapper_parsing_exception".to_owned()),
                reason: "mapper_parsing_exception: dims".to_owned()
            }
        );
    }

    #[test]
    fn found_ids_reads_mget() {
        let answer = json!({"docs": [
            {"_index": "p", "_id": "a", "found": true},
            {"_index": "p", "_id": "b", "found": false},
            {"_index": "p", "_id": "c", "error": {"type": "index_not_found_exception"}}
        ]});
        let answer: MgetResponse = serde_json::from_value(answer).unwrap();
        assert_eq!(found_ids(&answer), HashSet::from(["a".to_owned()]));
    }
}
