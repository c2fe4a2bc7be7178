//! The Elasticsearch response bodies Sightline reads, as serde types: the error object, `GET /`,
//! `_bulk` items and `_mget` docs. Unknown fields are ignored (every ES version adds some); only
//! what a caller reads is typed. Bodies read through JSON pointers (mappings, endpoint settings,
//! search hits) stay `serde_json::Value`.

use serde::de::IgnoredAny;
use serde::Deserialize;

/// `type` of the error ES returns when a resource (an index) already exists.
pub(crate) const RESOURCE_ALREADY_EXISTS: &str = "resource_already_exists_exception";

/// The body of a non-2xx answer: `{"error": {...}, "status": N}` from ES, `{"error": "text"}`
/// from older or proxy layers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorReply,
}

/// What an `error` field holds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum ErrorReply {
    Cause(ErrorCause),
    Text(String),
}

/// ES's error object (`ElasticsearchException` rendered as JSON).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(crate) struct ErrorCause {
    /// The exception type, e.g. `illegal_argument_exception`.
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) reason: Option<String>,
    #[serde(default)]
    pub(crate) root_cause: Vec<ErrorCause>,
    pub(crate) caused_by: Option<Box<ErrorCause>>,
    /// Set on the security exception a licence check raises (x-pack `LicenseUtils`, metadata
    /// `es.license.expired.feature`): the feature the licence does not cover.
    #[serde(rename = "license.expired.feature")]
    pub(crate) license_expired_feature: Option<String>,
}

impl ErrorReply {
    /// `type: reason (caused by: deeper reason)`, or the text of a plain-string error.
    pub(crate) fn describe(&self) -> String {
        match self {
            ErrorReply::Text(text) => text.clone(),
            ErrorReply::Cause(cause) => {
                let kind = cause.kind.as_deref().unwrap_or("error");
                let reason = cause.reason.as_deref().unwrap_or("");
                let deeper = cause
                    .caused_by
                    .as_ref()
                    .and_then(|deeper| deeper.reason.as_deref());
                match deeper {
                    Some(deeper) if deeper != reason => {
                        format!("{kind}: {reason} (caused by: {deeper})")
                    }
                    _ => format!("{kind}: {reason}"),
                }
            }
        }
    }

    /// The exception type, when ES gave one.
    pub(crate) fn kind(&self) -> Option<&str> {
        match self {
            ErrorReply::Cause(cause) => cause.kind.as_deref(),
            ErrorReply::Text(_) => None,
        }
    }

    /// The licence does not cover the feature asked for (the inference API needs Enterprise or
    /// a trial).
    pub(crate) fn is_licence_refusal(&self) -> bool {
        match self {
            ErrorReply::Cause(cause) => {
                cause.license_expired_feature.is_some()
                    || cause
                        .root_cause
                        .iter()
                        .any(|root| root.license_expired_feature.is_some())
            }
            ErrorReply::Text(_) => false,
        }
    }
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct RootResponse {
    pub(crate) version: Option<RootVersion>,
}

/// `version` of `GET /`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct RootVersion {
    /// `8.15.3`, `9.1.0-SNAPSHOT`.
    pub(crate) number: Option<String>,
    /// `opensearch` on OpenSearch; absent on Elasticsearch.
    pub(crate) distribution: Option<String>,
    /// `default`, or `serverless` on Elastic Cloud Serverless.
    pub(crate) build_flavor: Option<String>,
}

/// `GET _license` (x-pack `GetLicenseResponse`): `{"license": {"status": "active", "type":
/// "basic", "uid": …, "issue_date": …, …}}`. Only `type` and `status` decide anything.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct LicenseResponse {
    pub(crate) license: Option<LicenseInfo>,
}

/// `license` of `GET _license`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct LicenseInfo {
    /// `basic`, `trial`, `standard`, `gold`, `platinum`, `enterprise`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// `active`, `expired` or `invalid`.
    pub(crate) status: String,
}

/// A `_bulk` answer. A missing `items` reads as none, which the caller reports as a count
/// mismatch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct BulkResponse {
    #[serde(default)]
    pub(crate) items: Vec<BulkItem>,
}

/// One element of `items`: the action name wrapping its result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BulkItem {
    Create(BulkItemResult),
    Index(BulkItemResult),
    Update(BulkItemResult),
    Delete(BulkItemResult),
}

impl BulkItem {
    pub(crate) fn result(&self) -> &BulkItemResult {
        match self {
            BulkItem::Create(result)
            | BulkItem::Index(result)
            | BulkItem::Update(result)
            | BulkItem::Delete(result) => result,
        }
    }
}

/// What happened to one document of a `_bulk`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct BulkItemResult {
    /// Where the document went; a pipeline may have changed it (`<index>-failed`).
    #[serde(rename = "_index")]
    pub(crate) index: Option<String>,
    #[serde(default)]
    pub(crate) status: u16,
    pub(crate) error: Option<ErrorReply>,
}

/// An `_mget` answer; `S` is the part of `_source` asked for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct MgetResponse<S = IgnoredAny> {
    #[serde(default = "Vec::new")]
    pub(crate) docs: Vec<MgetDoc<S>>,
}

/// One doc of `_mget`. A doc that failed (`error` instead of `found`) reads as not found.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct MgetDoc<S> {
    #[serde(rename = "_id")]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) found: bool,
    #[serde(rename = "_source")]
    pub(crate) source: Option<S>,
}

/// `_source` of a document in `<index>-failed`: the pipeline's `on_failure` stored its error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct FailedSource {
    pub(crate) error: Option<FailedError>,
}

/// `error` of a failed document.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct FailedError {
    pub(crate) message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_as_es_sends_them() {
        let body: ErrorBody = serde_json::from_str(r#"{"error":{"root_cause":[],"type":"illegal_argument_exception","reason":"bad dims","caused_by":{"type":"x","reason":"deeper"}},"status":400}"#).unwrap();
        assert_eq!(body.error.kind(), Some("illegal_argument_exception"));
        assert_eq!(
            body.error.describe(),
            "illegal_argument_exception: bad dims (caused by: deeper)"
        );
        assert!(!body.error.is_licence_refusal());
        let plain: ErrorBody = serde_json::from_str(r#"{"error":"plain"}"#).unwrap();
        assert_eq!(plain.error, ErrorReply::Text("plain".to_owned()));
        assert_eq!(plain.error.kind(), None);
    }

    #[test]
    fn licence_refusal_is_read_from_its_metadata() {
        // Verbatim from a basic-licence cluster.
        let body: ErrorBody = serde_json::from_str(r#"{"error":{"root_cause":[{"type":"security_exception","reason":"current license is non-compliant for [inference]","license.expired.feature":"inference"}],"type":"security_exception","reason":"current license is non-compliant for [inference]","license.expired.feature":"inference"},"status":403}"#).unwrap();
        assert!(body.error.is_licence_refusal());
        let denied: ErrorBody = serde_json::from_str(r#"{"error":{"type":"security_exception","reason":"action [indices:data/write/bulk] is unauthorized"},"status":403}"#).unwrap();
        assert!(!denied.error.is_licence_refusal());
    }

    #[test]
    fn bulk_items_of_every_action_read_the_same() {
        let answer: BulkResponse = serde_json::from_str(r#"{"took":3,"errors":true,"items":[
            {"create":{"_index":"photos","_id":"a","status":201,"result":"created"}},
            {"index":{"_index":"photos","_id":"b","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}}]}"#).unwrap();
        assert_eq!(answer.items.len(), 2);
        assert_eq!(answer.items[0].result().status, 201);
        let busy = answer.items[1].result();
        assert_eq!(busy.index.as_deref(), Some("photos"));
        assert_eq!(
            busy.error.as_ref().and_then(ErrorReply::kind),
            Some("es_rejected_execution_exception")
        );
        let empty: BulkResponse = serde_json::from_str(r#"{"errors":false}"#).unwrap();
        assert!(empty.items.is_empty());
    }

    #[test]
    fn mget_docs_read_found_and_the_stored_error() {
        let answer: MgetResponse<FailedSource> = serde_json::from_str(r#"{"docs":[
            {"_index":"p-failed","_id":"a","found":true,"_source":{"error":{"message":"cannot decode"}}},
            {"_index":"p-failed","_id":"b","found":false},
            {"_index":"p-failed","_id":"c","error":{"type":"index_not_found_exception"}}]}"#).unwrap();
        let message = answer.docs[0]
            .source
            .as_ref()
            .and_then(|source| source.error.as_ref())
            .and_then(|error| error.message.as_deref());
        assert_eq!(message, Some("cannot decode"));
        assert!(!answer.docs[1].found && !answer.docs[2].found);
    }

    #[test]
    fn license_reads_type_and_status() {
        // Shape of a 8.15 basic cluster's answer.
        let basic: LicenseResponse = serde_json::from_str(r#"{"license":{"status":"active","uid":"u","type":"basic","issue_date":"2024-01-01T00:00:00.000Z","issue_date_in_millis":1704067200000,"max_nodes":1000,"max_resource_units":null,"issued_to":"docker-cluster","issuer":"elasticsearch","start_date_in_millis":-1}}"#).unwrap();
        let license = basic.license.unwrap();
        assert_eq!(
            (license.kind.as_str(), license.status.as_str()),
            ("basic", "active")
        );
        let none: LicenseResponse = serde_json::from_str("{}").unwrap();
        assert_eq!(none.license, None);
    }

    #[test]
    fn root_response_reads_version_and_flavour() {
        let root: RootResponse = serde_json::from_str(r#"{"name":"n","version":{"number":"8.15.3","build_flavor":"default"},"tagline":"You Know, for Search"}"#).unwrap();
        let version = root.version.unwrap();
        assert_eq!(version.number.as_deref(), Some("8.15.3"));
        assert_eq!(version.build_flavor.as_deref(), Some("default"));
        assert_eq!(version.distribution, None);
    }
}
