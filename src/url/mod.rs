//! URL inputs: fetching the image an `http(s)://` input names, for operators who turn it on with
//! `--allow-url-hosts`. It is off by default because the sidecar sits inside the cluster's
//! network, and fetching a URL is a request made from that network on a client's behalf
//! (server-side request forgery); anchors.md §10 lists fetchers with no timeout or allowlist.
//!
//! Every protection lives in this folder, so no caller can skip one: `policy.rs` says which hosts
//! and addresses may be reached, `fetcher.rs` resolves, connects, follows redirects and reads the
//! body under those rules. The engine receives a [`Fetcher`] as its
//! [`UrlFetcher`](crate::engine::UrlFetcher) and knows nothing else of URLs; whether the bytes are
//! an image is decided by their signature (`engine::format`), never by `Content-Type`.

mod fetcher;
mod policy;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::engine::{EmbedError, UrlFetcher};

pub use fetcher::Fetcher;
pub use policy::HostRule;

/// Redirects followed before a fetch is refused.
const MAX_REDIRECTS: usize = 3;

/// Fetches running at once, whatever the number of requests: with `--url-max-bytes` this bounds
/// the memory URL bodies can hold. Waiting fetches are bounded by the request deadline.
const MAX_CONCURRENT_FETCHES: usize = 16;

/// How URL inputs are handled; every field has a `sightline serve` flag.
#[derive(Debug, Clone)]
pub struct UrlOptions {
    /// Hosts images may be fetched from (`--allow-url-hosts`). Empty: URL inputs are refused.
    pub allow_hosts: Vec<HostRule>,
    /// Also allow loopback, private, link-local, CGNAT and unique-local addresses
    /// (`--allow-url-private`).
    pub allow_private: bool,
    /// Whole fetch, redirects and body included (`--url-timeout`).
    pub timeout: Duration,
    /// Resolving and connecting to one host; capped by `timeout`.
    pub connect_timeout: Duration,
    /// Largest response body (`--url-max-bytes`).
    pub max_bytes: usize,
}

impl Default for UrlOptions {
    fn default() -> Self {
        UrlOptions {
            allow_hosts: Vec::new(),
            allow_private: false,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_bytes: 32 << 20,
        }
    }
}

impl UrlOptions {
    /// URL inputs are fetched only when at least one host is allowed.
    pub fn enabled(&self) -> bool {
        !self.allow_hosts.is_empty()
    }
}

impl UrlFetcher for Fetcher {
    fn check(&self, url: &str) -> Result<(), EmbedError> {
        Fetcher::check(self, url).map(drop)
    }

    fn fetch<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, EmbedError>> {
        Box::pin(Fetcher::fetch(self, url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_until_a_host_is_allowed() {
        assert!(!UrlOptions::default().enabled());
        let one = UrlOptions {
            allow_hosts: vec![HostRule::Any],
            ..UrlOptions::default()
        };
        assert!(one.enabled());
    }
}
