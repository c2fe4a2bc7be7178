//! What the gallery sends to Elasticsearch: the kNN `_search` with a finished `query_vector` and
//! the metadata filters as kNN `filter` (so they narrow the candidates, not the top k after the
//! fact), the lookup of one document's stored vector for "more like this", and the mapping read
//! that says whether the index exists and which model filled it. Everything goes through
//! [`call`], so failures arrive as typed [`EsError`]s the API turns into page states.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use elasticsearch::indices::IndicesGetMappingParts;
use elasticsearch::{Elasticsearch, SearchParts};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::es::client::{call, EsError};
use crate::es::search::default_num_candidates;
use crate::es::version::Cluster;
use crate::es::FINGERPRINT_FIELD;

/// Largest `k` (and `num_candidates`) Elasticsearch accepts; offset + page size must fit.
pub(crate) const MAX_WINDOW: usize = 10_000;

/// Fields returned per hit: enough for a tile and its larger view; never the vector.
const HIT_FIELDS: [&str; 9] = [
    "file_name",
    "path",
    "content_hash",
    "format",
    "width",
    "height",
    "bytes",
    "ingested_at",
    "thumbnail",
];

/// Metadata filters, all optional; each becomes one clause of the kNN `filter`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Filters {
    /// `jpeg`, `png`, … (the sniffed format `ingest` stores).
    #[serde(default)]
    pub(crate) formats: Vec<String>,
    /// File size bounds in bytes, inclusive.
    #[serde(default)]
    pub(crate) min_bytes: Option<u64>,
    #[serde(default)]
    pub(crate) max_bytes: Option<u64>,
    /// Folder or path prefix, as stored in `path`.
    #[serde(default)]
    pub(crate) path_prefix: Option<String>,
    /// Ingest time bounds in milliseconds since the epoch, inclusive.
    #[serde(default)]
    pub(crate) ingested_from_ms: Option<i64>,
    #[serde(default)]
    pub(crate) ingested_to_ms: Option<i64>,
}

impl Filters {
    /// The kNN `filter` clauses; empty when nothing is filtered.
    pub(crate) fn clauses(&self) -> Vec<Value> {
        let mut clauses = Vec::new();
        let formats: Vec<&str> = self
            .formats
            .iter()
            .map(|f| f.trim())
            .filter(|f| !f.is_empty())
            .collect();
        if !formats.is_empty() {
            clauses.push(json!({"terms": {"format": formats}}));
        }
        if self.min_bytes.is_some() || self.max_bytes.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(min) = self.min_bytes {
                range.insert("gte".to_owned(), json!(min));
            }
            if let Some(max) = self.max_bytes {
                range.insert("lte".to_owned(), json!(max));
            }
            clauses.push(json!({"range": {"bytes": range}}));
        }
        if let Some(prefix) = self.path_prefix.as_deref().map(str::trim) {
            if !prefix.is_empty() {
                clauses.push(json!({"prefix": {"path": prefix}}));
            }
        }
        if self.ingested_from_ms.is_some() || self.ingested_to_ms.is_some() {
            // epoch_millis whatever the stored form: the pipeline stamps ISO text, `ingest
            // --embed-locally` writes milliseconds; both are one `date` field.
            let mut range = serde_json::Map::new();
            range.insert("format".to_owned(), json!("epoch_millis"));
            if let Some(from) = self.ingested_from_ms {
                range.insert("gte".to_owned(), json!(from));
            }
            if let Some(to) = self.ingested_to_ms {
                range.insert("lte".to_owned(), json!(to));
            }
            clauses.push(json!({"range": {"ingested_at": range}}));
        }
        clauses
    }
}

/// One page of a ranked list: hits `offset .. offset + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) offset: usize,
    pub(crate) size: usize,
}

/// The `_search` body: top-level `knn` (8.4+) with `k = offset + size`, so `from`/`size` page
/// through one ranked list, and the filters inside `knn`.
pub(crate) fn knn_body(field: &str, vector: &[f32], page: Page, filters: &Filters) -> Value {
    let k = (page.offset + page.size).clamp(1, MAX_WINDOW);
    let mut knn = json!({
        "field": field,
        "query_vector": vector,
        "k": k,
        "num_candidates": default_num_candidates(k).min(MAX_WINDOW),
    });
    let clauses = filters.clauses();
    if !clauses.is_empty() {
        knn["filter"] = json!({"bool": {"filter": clauses}});
    }
    json!({
        "knn": knn,
        "from": page.offset,
        "size": page.size,
        "_source": HIT_FIELDS,
        "track_total_hits": false,
    })
}

/// Whether the cluster knows `_source.exclude_vectors` (elasticsearch#128735: 9.1, backported to
/// 8.19). From 9.2 new indices leave vectors out of `_source` unless a request asks for them
/// with it; older clusters reject the key, and always return the vector when it is included.
pub(crate) fn knows_exclude_vectors(cluster: &Cluster) -> bool {
    let version = cluster.version;
    cluster.serverless || version.at_least(9, 1) || (version.major == 8 && version.at_least(8, 19))
}

/// The body that reads one document's stored vector, in the form the cluster needs.
pub(crate) fn vector_lookup_body(cluster: &Cluster, field: &str, id: &str) -> Value {
    let source = if knows_exclude_vectors(cluster) {
        json!({"includes": [field], "exclude_vectors": false})
    } else {
        json!([field])
    };
    json!({"size": 1, "query": {"ids": {"values": [id]}}, "_source": source})
}

/// The vector at dotted `field` in `source`, as nested objects or as one dotted key; a float
/// array, or base64 of big-endian float32 (the 9.3+ `dense_vector` input form, which `_source`
/// keeps as sent).
pub(crate) fn vector_in_source(source: &Value, field: &str) -> Option<Vec<f32>> {
    let nested = field
        .split('.')
        .try_fold(source, |value, key| value.get(key));
    let value = nested.or_else(|| source.get(field))?;
    match value {
        Value::Array(items) => items.iter().map(|v| v.as_f64().map(|x| x as f32)).collect(),
        Value::String(text) => {
            let bytes = BASE64.decode(text).ok()?;
            if bytes.len() % 4 != 0 {
                return None;
            }
            Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// What the mapping says about the index: the vector length and the recorded fingerprint.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct IndexFacts {
    /// Concrete indices behind the name (an alias or pattern may have several).
    pub(crate) indices: Vec<String>,
    pub(crate) dims: Option<usize>,
    pub(crate) fingerprint: Option<String>,
}

/// Reads [`IndexFacts`] from a `GET <index>/_mapping` answer.
pub(crate) fn index_facts(answer: &Value, field: &str) -> IndexFacts {
    let mut facts = IndexFacts::default();
    let Some(indices) = answer.as_object() else {
        return facts;
    };
    let pointer = format!(
        "/mappings/properties/{}/dims",
        field.replace('.', "/properties/")
    );
    for (name, index) in indices {
        facts.indices.push(name.clone());
        if facts.dims.is_none() {
            facts.dims = index
                .pointer(&pointer)
                .and_then(Value::as_u64)
                .map(|d| d as usize);
        }
        if facts.fingerprint.is_none() {
            facts.fingerprint = index
                .pointer(&format!("/mappings/_meta/{FINGERPRINT_FIELD}"))
                .and_then(Value::as_str)
                .filter(|f| !f.is_empty())
                .map(str::to_owned);
        }
    }
    facts
}

/// `GET <index>/_mapping`.
pub(crate) async fn read_facts(
    client: &Elasticsearch,
    index: &str,
    field: &str,
) -> Result<IndexFacts, EsError> {
    let names = [index];
    let indices = client.indices();
    let sent = indices
        .get_mapping(IndicesGetMappingParts::Index(&names))
        .send();
    let answer: Value = call(&format!("GET {index}/_mapping"), sent).await?;
    Ok(index_facts(&answer, field))
}

/// `POST <index>/_search` with `body`.
pub(crate) async fn search(
    client: &Elasticsearch,
    index: &str,
    body: Value,
) -> Result<Value, EsError> {
    let names = [index];
    let sent = client.search(SearchParts::Index(&names)).body(body).send();
    call(&format!("POST {index}/_search"), sent).await
}

/// One tile of the grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct GalleryHit {
    pub(crate) id: String,
    pub(crate) score: f64,
    pub(crate) file_name: String,
    pub(crate) path: String,
    pub(crate) format: Option<String>,
    pub(crate) width: Option<u64>,
    pub(crate) height: Option<u64>,
    pub(crate) bytes: Option<u64>,
    /// As stored: ISO text from the pipeline, milliseconds from `--embed-locally`.
    pub(crate) ingested_at: Option<Value>,
    /// `data:image/jpeg;base64,…` of the stored thumbnail.
    pub(crate) thumbnail: Option<String>,
    pub(crate) content_hash: Option<String>,
    /// Documents with this content hash in this page (1 unless exact duplicates were indexed,
    /// e.g. across the indices of an alias).
    pub(crate) copies: usize,
    /// Paths of the other copies.
    pub(crate) other_paths: Vec<String>,
}

/// `hits.hits` as tiles, in rank order.
pub(crate) fn parse_hits(answer: &Value) -> Vec<GalleryHit> {
    let empty = Vec::new();
    let hits = answer
        .pointer("/hits/hits")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    hits.iter()
        .map(|hit| {
            let source = hit.get("_source").cloned().unwrap_or(Value::Null);
            let text = |key: &str| source.get(key).and_then(Value::as_str).map(str::to_owned);
            let number = |key: &str| source.get(key).and_then(Value::as_u64);
            GalleryHit {
                id: hit
                    .get("_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                score: hit.get("_score").and_then(Value::as_f64).unwrap_or(0.0),
                file_name: text("file_name").unwrap_or_default(),
                path: text("path").unwrap_or_default(),
                format: text("format"),
                width: number("width"),
                height: number("height"),
                bytes: number("bytes"),
                ingested_at: source.get("ingested_at").cloned(),
                thumbnail: text("thumbnail")
                    .filter(|t| !t.is_empty())
                    .map(|t| format!("data:image/jpeg;base64,{t}")),
                content_hash: text("content_hash"),
                copies: 1,
                other_paths: Vec::new(),
            }
        })
        .collect()
}

/// Folds exact duplicates (same content hash) into the best-ranked one, which keeps its place
/// and counts the others; "similar" images stay separate tiles.
pub(crate) fn group_duplicates(hits: Vec<GalleryHit>) -> Vec<GalleryHit> {
    let mut grouped: Vec<GalleryHit> = Vec::with_capacity(hits.len());
    let mut first_of: HashMap<String, usize> = HashMap::new();
    for hit in hits {
        let Some(hash) = hit.content_hash.clone() else {
            grouped.push(hit);
            continue;
        };
        match first_of.get(&hash) {
            Some(&position) => {
                let keeper = &mut grouped[position];
                keeper.copies += 1;
                if hit.path != keeper.path && !keeper.other_paths.contains(&hit.path) {
                    keeper.other_paths.push(hit.path);
                }
            }
            None => {
                first_of.insert(hash, grouped.len());
                grouped.push(hit);
            }
        }
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::version::EsVersion;

    #[test]
    fn filters_become_knn_filter_clauses() {
        let filters = Filters {
            formats: vec!["png".into(), " ".into()],
            min_bytes: Some(10),
            max_bytes: None,
            path_prefix: Some("photos/2024/".into()),
            ingested_from_ms: Some(5),
            ingested_to_ms: Some(9),
        };
        let body = knn_body(
            "ml.image_vector",
            &[0.6, 0.8],
            Page {
                offset: 24,
                size: 24,
            },
            &filters,
        );
        assert_eq!(
            body["knn"]["filter"]["bool"]["filter"],
            json!([
                {"terms": {"format": ["png"]}},
                {"range": {"bytes": {"gte": 10}}},
                {"prefix": {"path": "photos/2024/"}},
                {"range": {"ingested_at": {"format": "epoch_millis", "gte": 5, "lte": 9}}}
            ])
        );
        assert_eq!(body["knn"]["k"], 48);
        assert_eq!(body["knn"]["num_candidates"], 480);
        assert_eq!(
            (body["from"].clone(), body["size"].clone()),
            (json!(24), json!(24))
        );
        let plain = knn_body(
            "v",
            &[1.0],
            Page { offset: 0, size: 5 },
            &Filters::default(),
        );
        assert!(plain["knn"].get("filter").is_none());
        assert_eq!(plain["knn"]["num_candidates"], 100);
    }

    #[test]
    fn stored_vectors_are_read_in_the_form_each_version_needs() {
        let field = "ml.image_vector";
        let old = vector_lookup_body(&Cluster::new(EsVersion::new(8, 15, 0)), field, "a");
        assert_eq!(old["_source"], json!([field]));
        for (major, minor) in [(8, 19), (9, 1), (9, 2)] {
            let new =
                vector_lookup_body(&Cluster::new(EsVersion::new(major, minor, 0)), field, "a");
            assert_eq!(new["_source"]["exclude_vectors"], false, "{major}.{minor}");
        }
        let nine_zero = vector_lookup_body(&Cluster::new(EsVersion::new(9, 0, 3)), field, "a");
        assert_eq!(nine_zero["_source"], json!([field]));
        assert_eq!(old["query"], json!({"ids": {"values": ["a"]}}));
    }

    #[test]
    fn vectors_are_found_nested_dotted_or_as_base64() {
        let nested = json!({"ml": {"image_vector": [0.5, -1.0]}});
        assert_eq!(
            vector_in_source(&nested, "ml.image_vector"),
            Some(vec![0.5, -1.0])
        );
        let dotted = json!({"ml.image_vector": [2.0]});
        assert_eq!(
            vector_in_source(&dotted, "ml.image_vector"),
            Some(vec![2.0])
        );
        let bytes: Vec<u8> = [1.0f32, -2.5]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let b64 = json!({"ml": {"image_vector": BASE64.encode(bytes)}});
        assert_eq!(
            vector_in_source(&b64, "ml.image_vector"),
            Some(vec![1.0, -2.5])
        );
        assert_eq!(
            vector_in_source(&json!({"ml": {}}), "ml.image_vector"),
            None
        );
    }

    #[test]
    fn mapping_gives_dims_and_fingerprint() {
        let answer = json!({"photos-1": {"mappings": {"_meta": {"model_fingerprint": "sha256:ab"},
            "properties": {"ml": {"properties": {"image_vector": {"type": "dense_vector", "dims": 512}}}}}}});
        let facts = index_facts(&answer, "ml.image_vector");
        assert_eq!(facts.indices, vec!["photos-1".to_owned()]);
        assert_eq!(facts.dims, Some(512));
        assert_eq!(facts.fingerprint.as_deref(), Some("sha256:ab"));
        assert_eq!(
            index_facts(&json!({"x": {"mappings": {}}}), "ml.image_vector").dims,
            None
        );
    }

    #[test]
    fn exact_duplicates_fold_into_the_best_ranked_copy() {
        let answer = json!({"hits": {"hits": [
            {"_id": "a1", "_score": 0.9, "_source": {"content_hash": "h1", "path": "x/a.jpg", "thumbnail": "AAAA"}},
            {"_id": "b", "_score": 0.8, "_source": {"content_hash": "h2", "path": "b.jpg"}},
            {"_id": "a2", "_score": 0.9, "_source": {"content_hash": "h1", "path": "y/a.jpg"}}
        ]}});
        let hits = group_duplicates(parse_hits(&answer));
        assert_eq!(hits.len(), 2);
        assert_eq!((hits[0].id.as_str(), hits[0].copies), ("a1", 2));
        assert_eq!(hits[0].other_paths, vec!["y/a.jpg".to_owned()]);
        assert_eq!(
            hits[0].thumbnail.as_deref(),
            Some("data:image/jpeg;base64,AAAA")
        );
        assert_eq!((hits[1].id.as_str(), hits[1].copies), ("b", 1));
        assert_eq!(hits[1].thumbnail, None);
    }
}
