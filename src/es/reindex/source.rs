//! Reading every document of the source index once, in `content_hash` order, through a point in
//! time (`POST <index>/_pit`, then `_search` with `pit` and `search_after`, then `DELETE _pit`).
//!
//! A point in time is a snapshot: documents ingested through the alias after it was opened are
//! not in this pass, and the caller compares counts afterwards and runs another pass for them.
//! PIT exists in every 8.x and 9.x release (7.10+ in the default distribution, not in 7.x OSS
//! builds); scroll would work there too, but ES recommends PIT over scroll for this, and a
//! search with `pit` names no index, so it reads the snapshot even while the alias moves. ES
//! adds an implicit `_shard_doc` tiebreaker to the sort of every PIT search, so each hit's `sort`
//! has two values, sent back verbatim as `search_after`.

use anyhow::{Context, Result};
use elasticsearch::{Elasticsearch, OpenPointInTimeParts, SearchParts};
use serde::de::IgnoredAny;
use serde_json::{json, Map, Value};

use crate::es::client::call;

/// How long ES keeps the snapshot between two pages; renewed by each page.
const KEEP_ALIVE: &str = "5m";

/// One document of the source index.
#[derive(Debug, Clone)]
pub(crate) struct SourceDoc {
    pub(crate) id: String,
    pub(crate) source: Map<String, Value>,
}

/// An open point in time on the source index and where the last page ended.
pub(crate) struct Snapshot {
    index: String,
    pit_id: String,
    after: Option<Value>,
    /// Documents in the snapshot (`hits.total` of the first page, counted exactly).
    pub(crate) total: Option<u64>,
}

impl Snapshot {
    /// `POST <index>/_pit?keep_alive=5m`.
    pub(crate) async fn open(client: &Elasticsearch, index: &str) -> Result<Snapshot> {
        let request = format!("POST {index}/_pit?keep_alive={KEEP_ALIVE}");
        let indices = [index];
        let open = client
            .open_point_in_time(OpenPointInTimeParts::Index(&indices))
            .keep_alive(KEEP_ALIVE);
        let answer: Value = call(&request, open.send()).await?;
        let pit_id = answer
            .get("id")
            .and_then(Value::as_str)
            .with_context(|| format!("{request}: the answer has no point-in-time id"))?
            .to_owned();
        Ok(Snapshot {
            index: index.to_owned(),
            pit_id,
            after: None,
            total: None,
        })
    }

    /// The next `size` documents; empty at the end.
    pub(crate) async fn next_page(
        &mut self,
        client: &Elasticsearch,
        size: usize,
    ) -> Result<Vec<SourceDoc>> {
        let mut body = json!({
            "size": size,
            "pit": {"id": self.pit_id, "keep_alive": KEEP_ALIVE},
            "sort": [{"content_hash": "asc"}],
            "track_total_hits": self.total.is_none(),
        });
        if let Some(after) = &self.after {
            body["search_after"] = after.clone();
        }
        let request = format!("POST _search (point in time on {})", self.index);
        // A search with `pit` must name no index: the snapshot says which.
        let search = client.search(SearchParts::None).body(body);
        let answer: Value = call(&request, search.send()).await?;
        // ES may hand back a new id; the latest one must be used.
        if let Some(id) = answer.get("pit_id").and_then(Value::as_str) {
            self.pit_id = id.to_owned();
        }
        if self.total.is_none() {
            self.total = answer.pointer("/hits/total/value").and_then(Value::as_u64);
        }
        let hits = answer
            .pointer("/hits/hits")
            .and_then(Value::as_array)
            .with_context(|| format!("{request}: the answer has no hits.hits"))?;
        if let Some(sort) = hits.last().and_then(|hit| hit.get("sort")) {
            self.after = Some(sort.clone());
        }
        Ok(hits
            .iter()
            .filter_map(|hit| {
                Some(SourceDoc {
                    id: hit.get("_id")?.as_str()?.to_owned(),
                    source: hit.get("_source")?.as_object()?.clone(),
                })
            })
            .collect())
    }

    /// `DELETE _pit`. Best effort: ES frees it after `keep_alive` anyway.
    pub(crate) async fn close(self, client: &Elasticsearch) {
        let close = client
            .close_point_in_time()
            .body(json!({"id": self.pit_id}));
        if let Err(err) = call::<IgnoredAny>("DELETE _pit", close.send()).await {
            tracing::debug!("{err}; Elasticsearch frees it after {KEEP_ALIVE}");
        }
    }
}

/// `hits.total.value` of a `size: 0` search on `index`: how many documents it holds now.
pub(crate) async fn count(client: &Elasticsearch, index: &str) -> Result<u64> {
    let request = format!("POST {index}/_search (count)");
    let indices = [index];
    let search = client
        .search(SearchParts::Index(&indices))
        .body(json!({"size": 0, "track_total_hits": true}));
    let answer: Value = call(&request, search.send()).await?;
    answer
        .pointer("/hits/total/value")
        .and_then(Value::as_u64)
        .with_context(|| format!("{request}: the answer has no hits.total.value"))
}
