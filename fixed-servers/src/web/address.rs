//! Which addresses and hosts `fetch_url` may reach. A fetch is refused when its host resolves to
//! any address that is not on the public internet (loopback, private, link-local, …), unless the
//! job allows private addresses; the connection then goes to exactly the addresses checked, so a
//! second DNS answer cannot swap in another. The `notify` and `http` servers check and pin their
//! connections with the same functions ([`resolve`], [`first_non_public`], [`pinned_client`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// The kind of address `ip` is when it is not a public one (e.g. `"loopback"`), else `None`.
/// IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4) are judged by that address.
pub fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let kind = match (a, b, c) {
        (0, _, _) => "unspecified (\"this network\")",
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (192, 0, 0) => "reserved (IETF protocol assignments)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        // 255.255.255.255, the broadcast address, is the top of this block.
        (240..=255, _, _) => "reserved (or broadcast)",
        _ => return None,
    };
    Some(kind)
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    let s = ip.segments();
    let embedded_v4 = |high: u16, low: u16| {
        Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
    };
    let kind = match s {
        // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) lead to the IPv4 address they carry.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => return v4_kind(embedded_v4(high, low)),
        [0x2002, high, low, ..] => return v4_kind(embedded_v4(high, low)),
        [0, 0, 0, 0, 0, _, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => {
            "reserved (IPv4-compatible or translated)"
        }
        [0x64, 0xff9b, 1, ..] => "private (local-use NAT64)",
        [0x100, 0, 0, 0, ..] => "reserved (discard-only)",
        [0x2001, 0x0db8, ..] => "documentation",
        [0x3fff, 0..=0x0fff, ..] => "documentation",
        [0x2001, 0..=0x01ff, ..] => "reserved (IETF protocol assignments)",
        [first, ..] if first & 0xfe00 == 0xfc00 => "unique local (private)",
        [first, ..] if first & 0xffc0 == 0xfe80 => "link-local",
        [first, ..] if first & 0xffc0 == 0xfec0 => "site-local (private)",
        [first, ..] if first & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    };
    Some(kind)
}

/// Which hosts and addresses a fetch may reach, as the job's settings say.
#[derive(Clone, Debug)]
pub struct Policy {
    pub allow_private: bool,
    /// Host names (lowercase, without a trailing dot) or `*.domain`; `None`: any host.
    pub allowed_hosts: Option<Vec<String>>,
    /// Tells a non-public address (see [`non_public_kind`]); a field so that a test can count a
    /// loopback address as public, which a redirect test needs.
    pub classify: fn(IpAddr) -> Option<&'static str>,
}

impl Policy {
    /// Whether `host` (as a URL spells it) is among the allowed hosts.
    pub fn allows_host(&self, host: &str) -> bool {
        let Some(allowed) = &self.allowed_hosts else {
            return true;
        };
        let host = normal_host(host);
        allowed.iter().any(|entry| match entry.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => *entry == host,
        })
    }

    /// The addresses `url` may be fetched from: its host resolved (or its literal address), each
    /// address checked. An error says what was refused and which setting would allow it.
    pub async fn addresses(&self, url: &Url) -> Result<Vec<SocketAddr>, String> {
        let host = url.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err(format!("{url} has no host"));
        }
        if !self.allows_host(host) {
            let allowed = self.allowed_hosts.as_deref().unwrap_or_default();
            return Err(format!(
                "refused: {host} is not among the hosts this job may fetch (WEB_ALLOWED_HOSTS: \
                 {})",
                allowed.join(", ")
            ));
        }
        let addresses = resolve(url)
            .await
            .map_err(|reason| format!("cannot resolve {host}: {reason}"))?;
        if !self.allow_private {
            if let Some((ip, kind)) = first_non_public(&addresses, self.classify) {
                return Err(format!(
                    "refused: {host} is {ip}, a {kind} address; fetch_url reaches only public \
                     addresses unless the job's WEB_ALLOW_PRIVATE setting is true"
                ));
            }
        }
        Ok(addresses)
    }
}

/// The addresses `url`'s host resolves to (or its literal address), with the URL's port; no
/// policy applied. The error is the reason alone, without the host: the `notify` server's URLs
/// are secrets, so its callers say which host (or channel) themselves.
pub(crate) async fn resolve(url: &Url) -> Result<Vec<SocketAddr>, String> {
    let host = url.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err("the URL has no host".to_owned());
    }
    let port = url.port_or_known_default().unwrap_or(80);
    // The URL parser writes an IP host in its normal form (`http://0x7f.1/` has the host
    // `127.0.0.1`), so a literal address is read here rather than given to the resolver.
    let addresses: Vec<SocketAddr> = match normal_host(host).parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|err| err.to_string())?
            .collect(),
    };
    if addresses.is_empty() {
        return Err("no address".to_owned());
    }
    Ok(addresses)
}

/// The first of `addresses` that `classify` finds not public, with its kind. Any one such
/// address refuses the host: the connection could go to any of them.
pub(crate) fn first_non_public(
    addresses: &[SocketAddr],
    classify: fn(IpAddr) -> Option<&'static str>,
) -> Option<(IpAddr, &'static str)> {
    addresses
        .iter()
        .find_map(|address| classify(address.ip()).map(|kind| (address.ip(), kind)))
}

/// A client builder that connects to `addresses` for `url`'s host and nowhere else: it does
/// not ask DNS itself, follows no redirect and uses no proxy (a proxy would connect wherever
/// it resolves the name, and so unmake the check).
pub(crate) fn pinned_client(url: &Url, addresses: &[SocketAddr]) -> reqwest::ClientBuilder {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    match url.domain() {
        Some(domain) => client.resolve_to_addrs(domain, addresses),
        // A literal address is connected to as it is.
        None => client,
    }
}

/// A host name as allowed-host entries are written: lowercase, no trailing dot, no brackets.
pub fn normal_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_that_are_not_public_are_told_by_kind() {
        let table: &[(&str, Option<&str>)] = &[
            ("93.184.215.14", None),
            ("8.8.8.8", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("100.64.0.1", Some("shared (carrier-grade NAT)")),
            ("100.127.255.255", Some("shared (carrier-grade NAT)")),
            ("0.0.0.0", Some("unspecified (\"this network\")")),
            ("255.255.255.255", Some("reserved (or broadcast)")),
            ("224.0.0.1", Some("multicast")),
            ("192.0.2.7", Some("documentation")),
            ("198.18.0.1", Some("benchmarking")),
            ("2606:2800:220:1::1", None),
            ("2001:4860:4860::8888", None),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fe80::1", Some("link-local")),
            ("febf::1", Some("link-local")),
            ("fc00::1", Some("unique local (private)")),
            ("fd12:3456::1", Some("unique local (private)")),
            ("ff02::1", Some("multicast")),
            ("2001:db8::1", Some("documentation")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::a00:1", Some("private")),
            ("64:ff9b::808:808", None),
            ("2002:7f00:1::", Some("loopback")),
            (
                "::127.0.0.1",
                Some("reserved (IPv4-compatible or translated)"),
            ),
        ];
        for (text, expected) in table {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(non_public_kind(ip), *expected, "{text}");
        }
    }

    fn policy(allow_private: bool, hosts: Option<&[&str]>) -> Policy {
        Policy {
            allow_private,
            allowed_hosts: hosts.map(|hosts| hosts.iter().map(|h| h.to_string()).collect()),
            classify: non_public_kind,
        }
    }

    #[test]
    fn allowed_hosts_match_names_and_subdomains() {
        let policy = policy(
            false,
            Some(&["example.com", "*.docs.rs", "127.0.0.1", "::1"]),
        );
        assert!(policy.allows_host("example.com"));
        assert!(policy.allows_host("Example.COM."));
        assert!(!policy.allows_host("www.example.com"));
        assert!(policy.allows_host("serde.docs.rs"));
        assert!(policy.allows_host("a.b.docs.rs"));
        assert!(
            !policy.allows_host("docs.rs"),
            "`*.` is for subdomains only"
        );
        assert!(!policy.allows_host("evildocs.rs"));
        assert!(policy.allows_host("127.0.0.1"));
        assert!(policy.allows_host("[::1]"));
        assert!(super::Policy {
            allowed_hosts: None,
            ..policy
        }
        .allows_host("anything.example"));
    }

    #[tokio::test]
    async fn literal_and_resolved_addresses_are_checked_and_refusals_name_the_setting() {
        let refusing = policy(false, None);
        for url in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://0x7f.1/",
            "http://[::ffff:10.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
        ] {
            let error = refusing
                .addresses(&Url::parse(url).unwrap())
                .await
                .unwrap_err();
            assert!(error.contains("WEB_ALLOW_PRIVATE"), "{url}: {error}");
        }
        let error = refusing
            .addresses(&Url::parse("http://localhost:9/").unwrap())
            .await
            .unwrap_err();
        assert!(error.contains("loopback"), "{error}");
        let allowing = policy(true, None);
        let addresses = allowing
            .addresses(&Url::parse("http://127.0.0.1:8080/").unwrap())
            .await
            .unwrap();
        assert_eq!(addresses, vec!["127.0.0.1:8080".parse().unwrap()]);
        let listed = policy(true, Some(&["example.com"]));
        let error = listed
            .addresses(&Url::parse("https://127.0.0.1/").unwrap())
            .await
            .unwrap_err();
        assert!(error.contains("WEB_ALLOWED_HOSTS: example.com"), "{error}");
    }
}
