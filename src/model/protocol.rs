//! How the Hugging Face hub answers, as pure functions over URLs and headers.
//!
//! The hub answers `GET {endpoint}/{repo}/resolve/{revision}/{path}` for an LFS file with a
//! redirect to a CDN whose own `ETag` is not a checksum: the sha256 (`X-Linked-Etag`) and the
//! size (`X-Linked-Size`) travel on the hub's redirect response, so the client follows
//! redirects by hand and [`Remote`] keeps the metadata of the first hop that carries it. Small
//! files kept in git come back directly with `ETag` = the git blob sha1. Refusals explain
//! themselves in `X-Error-Message`; [`status_error`] turns them into what to do.

use anyhow::{anyhow, ensure, Context, Result};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, ETAG};
use reqwest::{StatusCode, Url};

use super::catalogue::HubFile;
use super::checksum::{parse_etag, Checksum};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// What every error that ends a pull without a bundle offers instead.
pub(crate) const OFFLINE_HINT: &str =
    "or build a bundle from local files with `sightline model init`";

/// `{endpoint}/{repo}/resolve/{revision}/{path}`; a `/` inside the revision is encoded
/// (`refs%2Fpr%2F3`), as the hub expects.
pub(crate) fn file_url(endpoint: &Url, file: &HubFile) -> Result<Url> {
    let mut url = endpoint.clone();
    url.path_segments_mut()
        .map_err(|()| anyhow!("the hub endpoint `{endpoint}` cannot take a path"))?
        .pop_if_empty()
        .extend(file.repo.split('/'))
        .push("resolve")
        .push(&file.revision)
        .extend(file.path.split('/'));
    Ok(url)
}

/// Parses `HF_ENDPOINT`; only http(s) URLs make sense.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<Url> {
    let url = Url::parse(endpoint).with_context(|| {
        format!("the hub endpoint `{endpoint}` is not a URL (set HF_ENDPOINT to e.g. {DEFAULT_ENDPOINT})")
    })?;
    ensure!(
        matches!(url.scheme(), "http" | "https"),
        "the hub endpoint `{endpoint}` is not an http(s) URL"
    );
    Ok(url)
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL if known).
pub(crate) fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    Some((start.parse().ok()?, total))
}

/// What the hub says about a file before its bytes arrive.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Remote {
    pub(crate) checksum: Option<Checksum>,
    pub(crate) size: Option<u64>,
    pub(crate) commit: Option<String>,
}

impl Remote {
    /// Takes what this hop offers and keeps what earlier hops said: the hub's hop comes first,
    /// and a CDN's headers further down the chain describe its object, not the repository file.
    pub(crate) fn absorb(&mut self, headers: &HeaderMap) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if self.checksum.is_none() {
            self.checksum = header("x-linked-etag")
                .and_then(parse_etag)
                .or_else(|| header(ETAG.as_str()).and_then(parse_etag));
        }
        if self.size.is_none() {
            self.size = header("x-linked-size").and_then(|v| v.trim().parse().ok());
        }
        if self.commit.is_none() {
            self.commit = header("x-repo-commit").map(str::to_owned);
        }
    }
}

pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.origin() == b.origin()
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Turns a refusal into what to do about it; the hub explains itself in `X-Error-Message`.
pub(crate) fn status_error(
    status: StatusCode,
    headers: &HeaderMap,
    file: &HubFile,
    url: &Url,
) -> anyhow::Error {
    let said = headers
        .get("x-error-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| format!(" (the hub says: {m})"))
        .unwrap_or_default();
    let (repo, rev, path) = (&file.repo, &file.revision, &file.path);
    match status {
        StatusCode::NOT_FOUND => anyhow!(
            "`{path}` was not found in `{repo}` at revision `{rev}`{said}: {url} answered 404; \
             check the model name and --revision, or HF_ENDPOINT if it points to a mirror; \
             {OFFLINE_HINT}"
        ),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => anyhow!(
            "the hub refused `{path}` of `{repo}` ({status}){said}: the repository may be gated, \
             private or renamed; set HF_TOKEN to a token that can read it"
        ),
        StatusCode::TOO_MANY_REQUESTS => anyhow!(
            "the hub is rate-limiting downloads (429){said}: wait a little and run the command \
             again (set HF_TOKEN for higher limits)"
        ),
        s if s.is_server_error() => anyhow!(
            "the hub failed on `{path}` of `{repo}` ({status}){said}: run the command again later; \
             {OFFLINE_HINT}"
        ),
        _ => anyhow!("{url} answered {status}{said} for `{path}` of `{repo}`; {OFFLINE_HINT}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::catalogue::{plan, Role, DEFAULT_MODEL};

    fn default_plan() -> crate::model::catalogue::PullPlan {
        plan(DEFAULT_MODEL, "main", "main", false).unwrap()
    }

    #[test]
    fn urls_follow_the_resolve_scheme() {
        let p = plan(DEFAULT_MODEL, "refs/pr/3", "main", false).unwrap();
        let hub = parse_endpoint(DEFAULT_ENDPOINT).unwrap();
        assert_eq!(
            file_url(&hub, p.file(Role::ImageEncoder).unwrap())
                .unwrap()
                .as_str(),
            "https://huggingface.co/Qdrant/clip-ViT-B-32-vision/resolve/main/model.onnx"
        );
        assert_eq!(
            file_url(&hub, p.file(Role::Dense).unwrap()).unwrap().as_str(),
            "https://huggingface.co/sentence-transformers/clip-ViT-B-32-multilingual-v1/resolve/refs%2Fpr%2F3/2_Dense/model.safetensors"
        );
        // A mirror under a path prefix, with or without the trailing slash.
        for endpoint in ["http://127.0.0.1:8080/hf", "http://127.0.0.1:8080/hf/"] {
            let mirror = parse_endpoint(endpoint).unwrap();
            assert_eq!(
                file_url(&mirror, p.file(Role::Tokenizer).unwrap()).unwrap().as_str(),
                "http://127.0.0.1:8080/hf/sentence-transformers/clip-ViT-B-32-multilingual-v1/resolve/refs%2Fpr%2F3/tokenizer.json"
            );
        }
        assert!(parse_endpoint("huggingface.co").is_err());
        assert!(parse_endpoint("ftp://mirror").is_err());
    }

    #[test]
    fn hub_hop_metadata_wins_over_the_cdn() {
        let mut remote = Remote::default();
        let mut hub = HeaderMap::new();
        hub.insert(
            "x-linked-etag",
            format!("\"{}\"", "1".repeat(64)).parse().unwrap(),
        );
        hub.insert(ETAG, format!("\"{}\"", "2".repeat(64)).parse().unwrap());
        hub.insert("x-linked-size", "1234".parse().unwrap());
        hub.insert("x-repo-commit", "c0ffee".parse().unwrap());
        remote.absorb(&hub);
        let mut cdn = HeaderMap::new();
        cdn.insert(ETAG, format!("\"{}\"", "3".repeat(64)).parse().unwrap());
        remote.absorb(&cdn);
        assert_eq!(
            remote,
            Remote {
                checksum: Some(Checksum::Sha256("1".repeat(64))),
                size: Some(1234),
                commit: Some("c0ffee".into()),
            }
        );
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn refusals_say_what_to_do() {
        let p = default_plan();
        let file = p.file(Role::Tokenizer).unwrap();
        let url = file_url(&parse_endpoint(DEFAULT_ENDPOINT).unwrap(), file).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-error-message", "Entry not found".parse().unwrap());
        let not_found = status_error(StatusCode::NOT_FOUND, &headers, file, &url).to_string();
        assert!(
            not_found.contains("`tokenizer.json` was not found")
                && not_found.contains("Entry not found")
                && not_found.contains("--revision"),
            "{not_found}"
        );
        let denied =
            status_error(StatusCode::UNAUTHORIZED, &HeaderMap::new(), file, &url).to_string();
        assert!(denied.contains("HF_TOKEN"), "{denied}");
    }
}
