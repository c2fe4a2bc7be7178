//! The HTTP client for URL inputs: a resolver that hands the client only checked addresses (no
//! second lookup, no DNS rebinding), redirects followed by hand with each hop checked like the
//! first, one deadline for the whole fetch (`--url-timeout`) and a body cap counted while it
//! streams (`--url-max-bytes`).

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::LOCATION;
use reqwest::{StatusCode, Url};
use tokio::sync::Semaphore;

use super::policy::{check_addr, url_host, UrlHost};
use super::{UrlOptions, MAX_CONCURRENT_FETCHES, MAX_REDIRECTS};
use crate::engine::{format, EmbedError, ErrorKind};

/// A refusal raised inside the resolver; found again in reqwest's error chain to keep its words.
#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Refused {}

/// The HTTP client's only resolver: it resolves once and hands the client only addresses that
/// passed [`check_addr`], so what is connected to is what was checked.
struct CheckedResolver {
    allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Refused(format!("cannot resolve URL host `{host}`: {e}")))?
                .collect();
            if addrs.is_empty() {
                return Err(Refused(format!("URL host `{host}` has no addresses")).into());
            }
            // All addresses must pass, not just one: a name that mixes public and internal
            // addresses is either misconfigured or an attack.
            for addr in &addrs {
                check_addr(&host, addr.ip(), allow_private).map_err(|e| Refused(e.message))?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Fetches URL inputs under [`UrlOptions`]. Cheap to share; holds no connections between
/// fetches.
pub struct Fetcher {
    client: reqwest::Client,
    opts: UrlOptions,
    permits: Semaphore,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher").field("opts", &self.opts).finish()
    }
}

impl Fetcher {
    pub fn new(opts: UrlOptions) -> anyhow::Result<Fetcher> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver {
                allow_private: opts.allow_private,
            }))
            // A proxy from the environment would resolve and connect on its own, past every check.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            // The size cap counts the bytes that arrive; decompression would multiply them.
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            .referer(false)
            // No pooled connections: every fetch resolves and checks again, and a connection
            // never outlives the runtime that opened it.
            .pool_max_idle_per_host(0)
            .connect_timeout(opts.connect_timeout.min(opts.timeout))
            .user_agent(concat!("sightline/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client for URL inputs")?;
        Ok(Fetcher {
            client,
            opts,
            permits: Semaphore::new(MAX_CONCURRENT_FETCHES),
        })
    }

    /// The checks that need no network: URL syntax, scheme, credentials, the allowlist, and the
    /// class of an address literal. Used to refuse a request before any of its work starts.
    pub fn check(&self, input: &str) -> Result<Url, EmbedError> {
        let url = Url::parse(input.trim())
            .map_err(|e| EmbedError::bad_input(format!("invalid URL: {e}")))?;
        self.check_url(url)
    }

    fn check_url(&self, url: Url) -> Result<Url, EmbedError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EmbedError::bad_input(format!(
                "URL scheme `{}` is not supported: use http or https",
                url.scheme()
            )));
        }
        // Credentials in a URL would be sent on and could be echoed in errors.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EmbedError::bad_input(
                "URLs with a user name or password are refused",
            ));
        }
        let host = url_host(&url)?;
        if !self.opts.allow_hosts.iter().any(|rule| rule.matches(&host)) {
            return Err(EmbedError::bad_input(format!(
                "URL host `{host}` is not in `--allow-url-hosts`"
            )));
        }
        // An address literal never reaches the resolver, so it is checked here.
        if let UrlHost::Ip(ip) = host {
            check_addr(&ip.to_string(), ip, self.opts.allow_private)?;
        }
        Ok(url)
    }

    /// Fetches the URL and returns its body if it is an image Sightline decodes. Every failure
    /// is the client's input (400), timeouts included: the URL came from the client.
    pub async fn fetch(&self, input: &str) -> Result<Vec<u8>, EmbedError> {
        let url = self.check(input)?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| EmbedError::new(ErrorKind::NotReady, "the engine is shutting down"))?;
        let limit = self.opts.timeout;
        let body = tokio::time::timeout(limit, self.follow(url))
            .await
            .map_err(|_| {
                EmbedError::bad_input(format!(
                    "fetching the URL took longer than {} (`--url-timeout`)",
                    humantime::format_duration(limit)
                ))
            })??;
        format::image_bytes(body, "the URL's response body is")
    }

    /// Requests `url`, following redirects by hand so each hop passes [`Fetcher::check_url`].
    async fn follow(&self, mut url: Url) -> Result<Vec<u8>, EmbedError> {
        let mut redirects = 0;
        loop {
            let host = url.host_str().unwrap_or_default().to_owned();
            let response = self
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| request_error(&host, &e))?;
            let status = response.status();
            if is_redirect(status) {
                if redirects == MAX_REDIRECTS {
                    return Err(EmbedError::bad_input(format!(
                        "the URL redirects more than {MAX_REDIRECTS} times"
                    )));
                }
                redirects += 1;
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        EmbedError::bad_input(format!(
                            "URL host `{host}` answered HTTP {status} without a `Location`"
                        ))
                    })?;
                let next = url.join(location).map_err(|e| {
                    EmbedError::bad_input(format!("redirect to an invalid URL: {e}"))
                })?;
                url = self.check_url(next).map_err(|e| {
                    EmbedError::bad_input(format!("redirect refused: {}", e.message))
                })?;
                continue;
            }
            if !status.is_success() {
                return Err(EmbedError::bad_input(format!(
                    "URL host `{host}` answered HTTP {status}"
                )));
            }
            return self.read_body(response, &host).await;
        }
    }

    /// Reads the body, refusing it as soon as it is known to exceed `--url-max-bytes`.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        host: &str,
    ) -> Result<Vec<u8>, EmbedError> {
        let max = self.opts.max_bytes;
        let too_large = || {
            EmbedError::bad_input(format!(
                "the URL's response body exceeds {max} bytes (`--url-max-bytes`)"
            ))
        };
        let declared = response.content_length();
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| request_error(host, &e))?
        {
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Words for a failed request: the resolver's refusal as it was raised, else the innermost cause.
fn request_error(host: &str, e: &reqwest::Error) -> EmbedError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    let mut innermost: &(dyn StdError + 'static) = e;
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<Refused>() {
            return EmbedError::bad_input(refused.0.clone());
        }
        innermost = s;
        source = s.source();
    }
    let message = if e.is_connect() {
        format!("cannot connect to URL host `{host}`: {innermost}")
    } else {
        format!("fetching from URL host `{host}` failed: {innermost}")
    };
    EmbedError::bad_input(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetcher(hosts: &[&str], allow_private: bool) -> Fetcher {
        Fetcher::new(UrlOptions {
            allow_hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(),
            allow_private,
            ..UrlOptions::default()
        })
        .unwrap()
    }

    #[test]
    fn static_checks_refuse_before_any_network() {
        let f = fetcher(&["images.example.com", "127.0.0.1"], false);
        let msg = |url: &str| f.check(url).unwrap_err().message;
        assert_eq!(
            msg("https://evil.example/cat.jpg"),
            "URL host `evil.example` is not in `--allow-url-hosts`"
        );
        assert!(msg("ftp://images.example.com/x").contains("scheme `ftp`"));
        assert!(msg("https://user:pw@images.example.com/x").contains("user name or password"));
        assert!(msg("http://127.0.0.1/x").contains("loopback"));
        // Numeric host spellings are normalised by the URL parser before matching.
        assert!(msg("http://0x7f.1/x").contains("loopback"));
        assert!(msg("http://[::1]/x").contains("not in `--allow-url-hosts`"));
        assert!(msg("http://").starts_with("invalid URL"));
        assert!(f.check("https://IMAGES.example.com./cat.jpg").is_ok());

        let any = fetcher(&["*"], false);
        assert!(any.check("https://anything.example/x.png").is_ok());
        let e = any
            .check("http://169.254.169.254/latest/meta-data/")
            .unwrap_err();
        assert!(e.message.contains("cloud metadata"), "{}", e.message);
        let e = any.check("http://[fd00:ec2::254]/").unwrap_err();
        assert!(e.message.contains("cloud metadata"), "{}", e.message);
        let e = any.check("http://[::ffff:10.0.0.1]/").unwrap_err();
        assert!(e.message.contains("private"), "{}", e.message);
    }
}
