//! URL inputs: fetching the image an `http(s)://` input names, for operators who turn it on with
//! `--allow-url-hosts`. It is off by default because the sidecar sits inside the cluster's
//! network, and fetching a URL is a request made from that network on a client's behalf
//! (server-side request forgery); anchors.md §10 lists fetchers with no timeout or allowlist.
//!
//! Every protection lives here, so no caller can skip one. The host must be on the allowlist.
//! Every address it resolves to must be public: loopback, private, link-local, CGNAT and
//! unique-local addresses are refused unless `--allow-url-private`; multicast, unspecified,
//! reserved and cloud-metadata addresses always. The checking resolver is the client's only
//! resolver, so the connection goes to an address that was checked (no second lookup, no DNS
//! rebinding); address literals, which skip resolvers, are checked before the request.
//! Redirects are followed here, at most [`MAX_REDIRECTS`], each hop checked like the first. The
//! whole fetch has one deadline (`--url-timeout`) and the body a size cap (`--url-max-bytes`)
//! counted while it streams. Whether the bytes are an image is decided by their signature
//! (`input.rs`), never by `Content-Type`. Decoding is left to `preprocess.rs`.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::LOCATION;
use reqwest::{StatusCode, Url};
use tokio::sync::Semaphore;

use super::error::{EmbedError, ErrorKind};
use super::input::image_bytes;

/// Redirects followed before a fetch is refused.
pub const MAX_REDIRECTS: usize = 3;

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

/// The error every URL input gets while fetching is off; it names the flag that turns it on.
pub fn disabled() -> EmbedError {
    EmbedError::bad_input(
        "URL inputs are disabled: start `sightline serve` with `--allow-url-hosts` to fetch images \
         from listed hosts, or send the image inline as a `data:image/...;base64,` URI",
    )
}

/// One entry of `--allow-url-hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// `*`: any host (its addresses must still be public).
    Any,
    /// `images.example.com`: exactly this name.
    Name(String),
    /// `*.example.com`: any name below this one, not the name itself.
    Suffix(String),
    /// `203.0.113.7`, `2001:db8::7` or `[2001:db8::7]`: this address literal.
    Ip(IpAddr),
}

impl FromStr for HostRule {
    type Err = String;

    fn from_str(s: &str) -> Result<HostRule, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty host name".into());
        }
        if s == "*" {
            return Ok(HostRule::Any);
        }
        let unbracketed = s.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        if let Ok(ip) = unbracketed.unwrap_or(s).parse::<IpAddr>() {
            return Ok(HostRule::Ip(ip));
        }
        let (wildcard, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if name.contains(['/', ':', '@', '?', '#', '*']) {
            return Err(format!(
                "`{s}` is not a host name: give the host alone, e.g. `images.example.com` or \
                 `*.example.com` (any port is allowed)"
            ));
        }
        // The URL parser normalises the name (case, IDNA), the same way it normalises the host
        // of each input URL, so the two compare equal.
        let host = Url::parse(&format!("http://{name}/"))
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_end_matches('.').to_owned()))
            .filter(|h| !h.is_empty() && h.parse::<Ipv4Addr>().is_err())
            .ok_or_else(|| format!("`{s}` is not a valid host name"))?;
        Ok(if wildcard {
            HostRule::Suffix(host)
        } else {
            HostRule::Name(host)
        })
    }
}

impl HostRule {
    fn matches(&self, host: &UrlHost) -> bool {
        match (self, host) {
            (HostRule::Any, _) => true,
            (HostRule::Name(name), UrlHost::Domain(d)) => name == d,
            (HostRule::Suffix(suffix), UrlHost::Domain(d)) => d
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (HostRule::Ip(ip), UrlHost::Ip(addr)) => ip == addr,
            _ => false,
        }
    }
}

/// The host of a parsed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlHost {
    Domain(String),
    Ip(IpAddr),
}

impl fmt::Display for UrlHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlHost::Domain(d) => f.write_str(d),
            UrlHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// What an address is, for the refusal rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    Public,
    Loopback,
    /// RFC 1918, and IPv6's deprecated site-local fec0::/10.
    Private,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
    SharedCgnat,
    /// fc00::/7 (RFC 4193).
    UniqueLocal,
    Multicast,
    Unspecified,
    Broadcast,
    /// Documentation, benchmarking, protocol-assignment, future-use and other non-global ranges.
    Reserved,
    /// Instance metadata and platform endpoints: credentials live there.
    Metadata,
}

/// Metadata endpoints by address: AWS/GCP/Azure/OpenStack/Oracle IMDS, AWS ECS task metadata,
/// Alibaba Cloud, Azure WireServer (a public address, so no range rule would catch it).
const METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
];
/// AWS IMDS over IPv6.
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)];

impl AddrClass {
    pub fn of(ip: IpAddr) -> AddrClass {
        match ip {
            IpAddr::V4(v4) => AddrClass::of_v4(v4),
            IpAddr::V6(v6) => AddrClass::of_v6(v6),
        }
    }

    fn of_v4(ip: Ipv4Addr) -> AddrClass {
        let [a, b, _, _] = ip.octets();
        if METADATA_V4.contains(&ip) {
            AddrClass::Metadata
        } else if ip.is_unspecified() {
            AddrClass::Unspecified
        } else if ip.is_broadcast() {
            AddrClass::Broadcast
        } else if ip.is_loopback() {
            AddrClass::Loopback
        } else if ip.is_private() {
            AddrClass::Private
        } else if ip.is_link_local() {
            AddrClass::LinkLocal
        } else if a == 100 && (b & 0xc0) == 64 {
            AddrClass::SharedCgnat
        } else if ip.is_multicast() {
            AddrClass::Multicast
        } else if reserved_v4(ip) {
            AddrClass::Reserved
        } else {
            AddrClass::Public
        }
    }

    fn of_v6(ip: Ipv6Addr) -> AddrClass {
        if METADATA_V6.contains(&ip) {
            return AddrClass::Metadata;
        }
        if ip.is_unspecified() {
            return AddrClass::Unspecified;
        }
        if ip.is_loopback() {
            return AddrClass::Loopback;
        }
        // An IPv6 address that carries an IPv4 one reaches that IPv4 host, so it is judged as it.
        if let Some(v4) = embedded_v4(ip) {
            return AddrClass::of_v4(v4);
        }
        let s = ip.segments();
        if s[0] & 0xff00 == 0xff00 {
            AddrClass::Multicast
        } else if s[0] & 0xfe00 == 0xfc00 {
            AddrClass::UniqueLocal
        } else if s[0] & 0xffc0 == 0xfe80 {
            AddrClass::LinkLocal
        } else if s[0] & 0xffc0 == 0xfec0 {
            AddrClass::Private
        } else if reserved_v6(ip) {
            AddrClass::Reserved
        } else {
            AddrClass::Public
        }
    }

    /// Allowed as a fetch target under the given `--allow-url-private` setting.
    pub fn allowed(self, allow_private: bool) -> bool {
        match self {
            AddrClass::Public => true,
            AddrClass::Loopback
            | AddrClass::Private
            | AddrClass::LinkLocal
            | AddrClass::SharedCgnat
            | AddrClass::UniqueLocal => allow_private,
            // Never an image host: metadata holds credentials, and 0.0.0.0 connects to this host.
            AddrClass::Multicast
            | AddrClass::Unspecified
            | AddrClass::Broadcast
            | AddrClass::Reserved
            | AddrClass::Metadata => false,
        }
    }

    fn described(self) -> &'static str {
        match self {
            AddrClass::Public => "a public address",
            AddrClass::Loopback => "a loopback address",
            AddrClass::Private => "a private address",
            AddrClass::LinkLocal => "a link-local address",
            AddrClass::SharedCgnat => "a shared (CGNAT) address",
            AddrClass::UniqueLocal => "a unique-local address",
            AddrClass::Multicast => "a multicast address",
            AddrClass::Unspecified => "the unspecified address",
            AddrClass::Broadcast => "the broadcast address",
            AddrClass::Reserved => "a reserved address",
            AddrClass::Metadata => "a cloud metadata address",
        }
    }
}

/// Non-global IPv4 ranges not covered by a named class.
fn reserved_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    // 0.0.0.0/8 "this network" (Linux routes 0.x to the host itself), 192.0.0.0/24 protocol
    // assignments, 192.88.99.0/24 6to4 relay anycast, 198.18.0.0/15 benchmarking,
    // documentation, and 240.0.0.0/4 future use.
    a == 0
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 88 && c == 99)
        || (a == 198 && (b & 0xfe) == 18)
        || ip.is_documentation()
        || a >= 240
}

/// Non-global IPv6 ranges not covered by a named class.
fn reserved_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // 2001::/23 protocol assignments (Teredo hides an IPv4 address there), documentation
    // (2001:db8::/32, 3fff::/20 of RFC 9637), and everything outside 2000::/3, the only block
    // of global unicast.
    (s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8))
        || (s[0] == 0x3fff && s[1] < 0x1000)
        || s[0] & 0xe000 != 0x2000
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let from = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0; 6] {
        Some(from(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(from(s[1], s[2]))
    } else {
        None
    }
}

/// Refuses an address the options do not allow, in words that name the host and the flag.
fn check_addr(host: &str, ip: IpAddr, allow_private: bool) -> Result<(), EmbedError> {
    let class = AddrClass::of(ip);
    if class.allowed(allow_private) {
        return Ok(());
    }
    let what = if host.trim_matches(['[', ']']) == ip.to_string() {
        format!("URL host `{host}` is {}", class.described())
    } else {
        format!("URL host `{host}` resolves to {ip}, {}", class.described())
    };
    let rule = if class.allowed(true) {
        "refused unless `--allow-url-private` is set"
    } else {
        "always refused"
    };
    Err(EmbedError::bad_input(format!("{what}, {rule}")))
}

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

    pub fn options(&self) -> &UrlOptions {
        &self.opts
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
        image_bytes(body, "the URL's response body is")
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

/// The host of a URL, with address literals parsed (the URL parser has already normalised
/// names and numeric forms such as `0x7f.1`).
fn url_host(url: &Url) -> Result<UrlHost, EmbedError> {
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| EmbedError::bad_input("the URL has no host"))?;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip = v6
            .parse::<Ipv6Addr>()
            .map_err(|_| EmbedError::bad_input(format!("invalid IPv6 host `{host}`")))?;
        return Ok(UrlHost::Ip(IpAddr::V6(ip)));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(UrlHost::Ip(IpAddr::V4(ip)));
    }
    Ok(UrlHost::Domain(host.trim_end_matches('.').to_owned()))
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

    fn class(s: &str) -> AddrClass {
        AddrClass::of(s.parse().unwrap())
    }

    #[test]
    fn ipv4_addresses_are_classified() {
        let cases = [
            ("8.8.8.8", AddrClass::Public),
            ("1.1.1.1", AddrClass::Public),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.255.254", AddrClass::Loopback),
            ("10.0.0.1", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("169.254.1.1", AddrClass::LinkLocal),
            ("169.254.169.254", AddrClass::Metadata),
            ("169.254.170.2", AddrClass::Metadata),
            ("100.100.100.200", AddrClass::Metadata),
            ("168.63.129.16", AddrClass::Metadata),
            ("100.64.0.1", AddrClass::SharedCgnat),
            ("100.127.255.255", AddrClass::SharedCgnat),
            ("100.128.0.1", AddrClass::Public),
            ("224.0.0.1", AddrClass::Multicast),
            ("239.255.255.250", AddrClass::Multicast),
            ("0.0.0.0", AddrClass::Unspecified),
            ("0.1.2.3", AddrClass::Reserved),
            ("255.255.255.255", AddrClass::Broadcast),
            ("240.0.0.1", AddrClass::Reserved),
            ("192.0.2.1", AddrClass::Reserved),
            ("198.18.0.1", AddrClass::Reserved),
            ("198.19.255.255", AddrClass::Reserved),
            ("198.20.0.1", AddrClass::Public),
            ("203.0.113.9", AddrClass::Reserved),
            ("192.0.0.8", AddrClass::Reserved),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn ipv6_addresses_are_classified_including_embedded_ipv4() {
        let cases = [
            ("2606:4700:4700::1111", AddrClass::Public),
            ("::1", AddrClass::Loopback),
            ("::", AddrClass::Unspecified),
            ("fe80::1", AddrClass::LinkLocal),
            ("fc00::1", AddrClass::UniqueLocal),
            ("fd12:3456::1", AddrClass::UniqueLocal),
            ("fd00:ec2::254", AddrClass::Metadata),
            ("fec0::1", AddrClass::Private),
            ("ff02::1", AddrClass::Multicast),
            ("2001:db8::1", AddrClass::Reserved),
            ("2001::1", AddrClass::Reserved),
            ("3fff::1", AddrClass::Reserved),
            ("100::1", AddrClass::Reserved),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:169.254.169.254", AddrClass::Metadata),
            ("::ffff:8.8.8.8", AddrClass::Public),
            ("::10.0.0.1", AddrClass::Private),
            ("64:ff9b::192.168.0.1", AddrClass::Private),
            ("64:ff9b::8.8.8.8", AddrClass::Public),
            ("2002:7f00:1::", AddrClass::Loopback),
            ("2002:0808:0808::", AddrClass::Public),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn private_flag_opens_private_networks_but_never_metadata() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.3.4",
            "100.64.1.1",
            "fd12::1",
        ] {
            assert!(!class(ip).allowed(false), "{ip}");
            assert!(class(ip).allowed(true), "{ip}");
        }
        for ip in [
            "169.254.169.254",
            "fd00:ec2::254",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
        ] {
            assert!(!class(ip).allowed(true), "{ip}");
        }
        assert!(class("8.8.8.8").allowed(false));
    }

    #[test]
    fn refusals_name_the_host_the_address_and_the_flag() {
        let e = check_addr("localhost", "127.0.0.1".parse().unwrap(), false).unwrap_err();
        assert_eq!(
            e.message,
            "URL host `localhost` resolves to 127.0.0.1, a loopback address, refused unless \
             `--allow-url-private` is set"
        );
        let e =
            check_addr("169.254.169.254", "169.254.169.254".parse().unwrap(), true).unwrap_err();
        assert_eq!(
            e.message,
            "URL host `169.254.169.254` is a cloud metadata address, always refused"
        );
        assert!(check_addr("x", "8.8.8.8".parse().unwrap(), false).is_ok());
    }

    #[test]
    fn host_rules_parse_and_match() {
        let rule = |s: &str| s.parse::<HostRule>().unwrap();
        assert_eq!(rule("*"), HostRule::Any);
        assert_eq!(
            rule("Images.Example.COM."),
            HostRule::Name("images.example.com".into())
        );
        assert_eq!(
            rule("*.example.com"),
            HostRule::Suffix("example.com".into())
        );
        assert_eq!(rule("127.0.0.1"), HostRule::Ip([127, 0, 0, 1].into()));
        assert_eq!(rule("[::1]"), HostRule::Ip("::1".parse().unwrap()));
        for bad in [
            "",
            "https://example.com",
            "example.com:8080",
            "a*.example.com",
        ] {
            assert!(bad.parse::<HostRule>().is_err(), "{bad}");
        }
        let domain = |d: &str| UrlHost::Domain(d.into());
        assert!(rule("*.example.com").matches(&domain("a.example.com")));
        assert!(rule("*.example.com").matches(&domain("a.b.example.com")));
        assert!(!rule("*.example.com").matches(&domain("example.com")));
        assert!(!rule("*.example.com").matches(&domain("badexample.com")));
        assert!(rule("example.com").matches(&domain("example.com")));
        assert!(!rule("example.com").matches(&domain("a.example.com")));
        assert!(!rule("127.0.0.1").matches(&domain("localhost")));
        assert!(rule("*").matches(&UrlHost::Ip([8, 8, 8, 8].into())));
    }

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

    #[test]
    fn disabled_error_names_the_flag() {
        assert!(disabled().message.contains("`--allow-url-hosts`"));
        assert!(!UrlOptions::default().enabled());
    }
}
