//! `sightline search`: a kNN search on the image index by text or by image, in either mode:
//! - `pipeline`: the cluster builds the query vector with `query_vector_builder.text_embedding`
//!   (contract §8) through the `<id>-search` endpoint, the sidecar's priority lane; an image query
//!   travels as a `data:` URI in `model_text`, which the sidecar recognises as an image;
//! - `vectors`: the CLI embeds the query through the sidecar (or `--embed-locally`) and sends the
//!   finished vector in the request form the version has ([`KnnForm`]): top-level `knn` (8.4+),
//!   `_knn_search` (8.0–8.3), or an exact `script_score` (7.6–7.17).

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::request::JsonBody;
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use serde::Serialize;
use serde_json::{json, Value};

use super::client::call;
use super::version::KnnForm;
use super::SEMANTIC_FIELD;
use crate::engine::Similarity;

/// What to search with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Query {
    Text(String),
    /// A `data:image/…;base64,…` URI.
    Image(String),
    /// A vector computed locally.
    Vector(Vec<f32>),
}

/// Where and how many.
#[derive(Debug, Clone)]
pub(crate) struct SearchConfig {
    pub(crate) index: String,
    pub(crate) field: String,
    pub(crate) inference_id: String,
    pub(crate) k: usize,
    pub(crate) num_candidates: usize,
    /// Query the `semantic_text` field with a `semantic` query instead of kNN.
    pub(crate) semantic: bool,
    /// How a finished vector is sent ([`Query::Vector`]).
    pub(crate) form: KnnForm,
    /// The index's similarity, for the 7.x `script_score` function.
    pub(crate) similarity: Similarity,
}

/// One search request: where it goes and its body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SearchRequest {
    pub(crate) method: &'static str,
    /// Without a leading slash, as Kibana's console writes it.
    pub(crate) path: String,
    pub(crate) body: Value,
}

/// Fields returned per hit; the thumbnail is left out because a terminal cannot show it.
const SOURCE_FIELDS: [&str; 6] = [
    "file_name",
    "path",
    "content_hash",
    "width",
    "height",
    "format",
];

/// ES's `num_candidates` must be ≥ k and ≤ 10 000; 10 × k (at least 100) gives HNSW room for
/// good recall at little cost on image-sized indices.
pub(crate) fn default_num_candidates(k: usize) -> usize {
    k.saturating_mul(10).clamp(100, 10_000).max(k)
}

/// The request for `query`: `_search` with `knn` (builder or vector), `_knn_search` on 8.0–8.3,
/// or `script_score` on 7.x.
pub(crate) fn search_request(config: &SearchConfig, query: &Query) -> Result<SearchRequest> {
    // GET, as Elastic's docs and Kibana write searches (the request is sent as POST).
    let search = |body| SearchRequest {
        method: "GET",
        path: format!("{}/_search", config.index),
        body,
    };
    let Query::Vector(vector) = query else {
        return Ok(search(search_body(config, query)?));
    };
    match config.form {
        KnnForm::TopLevel => Ok(search(search_body(config, query)?)),
        KnnForm::KnnSearchEndpoint => {
            let mut body = search_body(config, query)?;
            if let Some(object) = body.as_object_mut() {
                // `_knn_search` takes k inside knn and no `size`.
                object.remove("size");
            }
            Ok(SearchRequest {
                method: "GET",
                path: format!("{}/_knn_search", config.index),
                body,
            })
        }
        KnnForm::ScriptScore => {
            // The 7.x recipe: exact scoring of every document; scores must not be negative.
            let source = match config.similarity {
                Similarity::DotProduct => format!("dotProduct(params.query_vector, '{}') + 1.0", config.field),
                Similarity::Cosine => format!("cosineSimilarity(params.query_vector, '{}') + 1.0", config.field),
                Similarity::L2Norm => format!("1 / (1 + l2norm(params.query_vector, '{}'))", config.field),
            };
            Ok(search(json!({
                "size": config.k,
                "query": {"script_score": {
                    "query": {"match_all": {}},
                    "script": {"source": source, "params": {"query_vector": vector}}
                }},
                "_source": SOURCE_FIELDS,
            })))
        }
        KnnForm::Unsupported => bail!(
            "this Elasticsearch is older than 7.6, whose vector functions Sightline does not use; upgrade to 7.6+ (exact search) or 8.0+ (kNN)"
        ),
    }
}

/// The `_search` body.
pub(crate) fn search_body(config: &SearchConfig, query: &Query) -> Result<Value> {
    if config.k == 0 {
        bail!("-k must be at least 1");
    }
    if config.num_candidates < config.k || config.num_candidates > 10_000 {
        bail!(
            "--num-candidates must be between k ({}) and 10000, got {}",
            config.k,
            config.num_candidates
        );
    }
    let query_text = match query {
        Query::Text(text) | Query::Image(text) => Some(text.as_str()),
        Query::Vector(_) => None,
    };
    if config.semantic {
        let text = query_text.context(
            "--semantic searches need the cluster to embed the query; drop --embed-locally",
        )?;
        return Ok(json!({
            "size": config.k,
            "query": {"semantic": {"field": SEMANTIC_FIELD, "query": text}},
            "_source": SOURCE_FIELDS,
        }));
    }
    let mut knn = json!({
        "field": config.field,
        "k": config.k,
        "num_candidates": config.num_candidates,
    });
    let vector_source = match query {
        Query::Vector(vector) => ("query_vector", json!(vector)),
        Query::Text(text) | Query::Image(text) => (
            "query_vector_builder",
            json!({"text_embedding": {"model_id": config.inference_id, "model_text": text}}),
        ),
    };
    if let Some(object) = knn.as_object_mut() {
        object.insert(vector_source.0.to_owned(), vector_source.1);
    }
    Ok(json!({
        "size": config.k,
        "knn": knn,
        "_source": SOURCE_FIELDS,
    }))
}

/// The request in Kibana dev-console syntax, complete (a vector query has its vector filled
/// in), ready to paste.
pub(crate) fn console(config: &SearchConfig, query: &Query) -> Result<String> {
    let request = search_request(config, query)?;
    Ok(format!(
        "{} {}\n{}\n",
        request.method,
        request.path,
        serde_json::to_string_pretty(&request.body).context("cannot print the search body")?
    ))
}

/// One result line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Hit {
    pub(crate) rank: usize,
    pub(crate) score: f64,
    pub(crate) id: String,
    pub(crate) path: String,
    pub(crate) file_name: String,
}

/// Runs the search and returns the hits in rank order.
pub(crate) async fn search(
    client: &Elasticsearch,
    config: &SearchConfig,
    query: &Query,
) -> Result<Vec<Hit>> {
    let request = search_request(config, query)?;
    let name = format!("{} {}", request.method, request.path);
    let path = format!("/{}", request.path);
    let sent = client.send(
        Method::Post,
        &path,
        HeaderMap::new(),
        Option::<&()>::None,
        Some(JsonBody::new(request.body)),
        None,
    );
    let answer: Value = call(&name, sent).await?;
    Ok(parse_hits(&answer))
}

/// `hits.hits` of a search answer.
pub(crate) fn parse_hits(answer: &Value) -> Vec<Hit> {
    let hits = answer
        .pointer("/hits/hits")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    hits.iter()
        .enumerate()
        .map(|(position, hit)| {
            let text = |pointer: &str| {
                hit.pointer(pointer)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            Hit {
                rank: position + 1,
                score: hit.get("_score").and_then(Value::as_f64).unwrap_or(0.0),
                id: text("/_id"),
                path: text("/_source/path"),
                file_name: text("/_source/file_name"),
            }
        })
        .collect()
}

/// Hits as an aligned table: rank, score, id, path.
pub(crate) fn format_hits(hits: &[Hit]) -> String {
    let mut out = String::new();
    if hits.is_empty() {
        out.push_str("no hits\n");
        return out;
    }
    let _ = writeln!(out, "{:>4}  {:>8}  {:<16}  path", "rank", "score", "id");
    for hit in hits {
        // 16 hex digits of the content hash identify a picture well enough on screen.
        let short_id: String = hit.id.chars().take(16).collect();
        let _ = writeln!(
            out,
            "{:>4}  {:>8.4}  {:<16}  {}",
            hit.rank, hit.score, short_id, hit.path
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SearchConfig {
        SearchConfig {
            index: "photos".to_owned(),
            field: "ml.image_vector".to_owned(),
            inference_id: "sightline-clip".to_owned(),
            k: 5,
            num_candidates: 50,
            semantic: false,
            form: KnnForm::TopLevel,
            similarity: Similarity::DotProduct,
        }
    }

    #[test]
    fn vector_queries_take_the_form_of_the_version_line() {
        let vector = Query::Vector(vec![0.6, 0.8]);
        let top = search_request(&config(), &vector).unwrap();
        assert_eq!((top.method, top.path.as_str()), ("GET", "photos/_search"));
        assert_eq!(top.body["knn"]["query_vector"], json!([0.6f32, 0.8f32]));
        let mut old = config();
        old.form = KnnForm::KnnSearchEndpoint;
        let knn_search = search_request(&old, &vector).unwrap();
        assert_eq!(knn_search.path, "photos/_knn_search");
        assert_eq!(knn_search.body["knn"]["k"], 5);
        assert!(knn_search.body.get("size").is_none());
        old.form = KnnForm::ScriptScore;
        let exact = search_request(&old, &vector).unwrap();
        assert_eq!(exact.path, "photos/_search");
        let script = &exact.body["query"]["script_score"]["script"];
        assert_eq!(
            script["source"],
            "dotProduct(params.query_vector, 'ml.image_vector') + 1.0"
        );
        assert_eq!(script["params"]["query_vector"], json!([0.6f32, 0.8f32]));
        old.similarity = Similarity::Cosine;
        let cosine = search_request(&old, &vector).unwrap();
        assert!(cosine.body["query"]["script_score"]["script"]["source"]
            .as_str()
            .unwrap()
            .starts_with("cosineSimilarity"));
        old.form = KnnForm::Unsupported;
        assert!(search_request(&old, &vector).is_err());
        // text queries go through the builder whatever the form
        let text = search_request(&old, &Query::Text("cat".to_owned())).unwrap();
        assert_eq!(text.path, "photos/_search");
    }

    #[test]
    fn printed_vector_query_is_complete() {
        let printed = console(&config(), &Query::Vector(vec![0.5, 0.5])).unwrap();
        let (line, body) = printed.split_once('\n').unwrap();
        assert_eq!(line, "GET photos/_search");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["knn"]["query_vector"], json!([0.5, 0.5]));
    }

    #[test]
    fn text_query_uses_query_vector_builder() {
        let body = search_body(&config(), &Query::Text("a red bicycle".to_owned())).unwrap();
        assert_eq!(
            body["knn"],
            json!({"field": "ml.image_vector", "k": 5, "num_candidates": 50,
                   "query_vector_builder": {"text_embedding": {"model_id": "sightline-clip", "model_text": "a red bicycle"}}})
        );
        assert_eq!(body["size"], 5);
        assert!(body["knn"].get("query_vector").is_none());
    }

    #[test]
    fn image_query_sends_the_data_uri_and_local_vectors_go_as_query_vector() {
        let body = search_body(
            &config(),
            &Query::Image("data:image/png;base64,AAAA".to_owned()),
        )
        .unwrap();
        assert_eq!(
            body["knn"]["query_vector_builder"]["text_embedding"]["model_text"],
            "data:image/png;base64,AAAA"
        );
        let local = search_body(&config(), &Query::Vector(vec![0.6, 0.8])).unwrap();
        assert_eq!(local["knn"]["query_vector"], json!([0.6f32, 0.8f32]));
        assert!(local["knn"].get("query_vector_builder").is_none());
    }

    #[test]
    fn semantic_query_targets_the_semantic_field() {
        let mut semantic = config();
        semantic.semantic = true;
        let body = search_body(&semantic, &Query::Text("cat".to_owned())).unwrap();
        assert_eq!(body["query"]["semantic"]["field"], SEMANTIC_FIELD);
        assert!(search_body(&semantic, &Query::Vector(vec![1.0])).is_err());
    }

    #[test]
    fn candidate_bounds() {
        assert_eq!(default_num_candidates(10), 100);
        assert_eq!(default_num_candidates(50), 500);
        assert_eq!(default_num_candidates(5000), 10_000);
        let mut bad = config();
        bad.num_candidates = 2;
        assert!(search_body(&bad, &Query::Text("x".to_owned())).is_err());
        bad.k = 0;
        assert!(search_body(&bad, &Query::Text("x".to_owned())).is_err());
    }

    #[test]
    fn hits_are_parsed_and_printed() {
        let answer = json!({"hits": {"hits": [
            {"_id": "0123456789abcdef0123", "_score": 0.91, "_source": {"path": "a/b.jpg", "file_name": "b.jpg"}},
            {"_id": "ff", "_score": 0.5, "_source": {"path": "c.png"}}
        ]}});
        let hits = parse_hits(&answer);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].rank, 1);
        assert_eq!(hits[1].path, "c.png");
        let table = format_hits(&hits);
        assert!(
            table.contains("   1    0.9100  0123456789abcdef  a/b.jpg"),
            "{table}"
        );
        assert_eq!(format_hits(&[]), "no hits\n");
    }
}
