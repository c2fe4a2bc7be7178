//! Which URL hosts and addresses may be fetched from: the `--allow-url-hosts` rules, and the
//! classes of addresses refused unless `--allow-url-private` (loopback, private, link-local,
//! CGNAT, unique-local) or always (multicast, unspecified, reserved, cloud metadata). Pure
//! functions over parsed values; the network is `fetcher.rs`'s.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use reqwest::Url;

use crate::engine::EmbedError;

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
    pub(super) fn matches(&self, host: &UrlHost) -> bool {
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
pub(super) enum UrlHost {
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
pub(super) enum AddrClass {
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
    pub(super) fn of(ip: IpAddr) -> AddrClass {
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
    pub(super) fn allowed(self, allow_private: bool) -> bool {
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
pub(super) fn check_addr(host: &str, ip: IpAddr, allow_private: bool) -> Result<(), EmbedError> {
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

/// The host of a URL, with address literals parsed (the URL parser has already normalised
/// names and numeric forms such as `0x7f.1`).
pub(super) fn url_host(url: &Url) -> Result<UrlHost, EmbedError> {
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
}
