//! Which network addresses are on the public internet: what Autopilot may reach when a URL
//! someone else chose (an OAuth client's metadata document, a result handler's endpoint, an
//! HTTP job's request) must not lead into the machine or its private network.

use std::net::{IpAddr, SocketAddr};

/// Public unicast addresses only: no loopback, private, link-local, shared, benchmarking,
/// documentation, reserved, multicast or unspecified ranges (IPv4-mapped IPv6 is judged as
/// IPv4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// Why a host may not be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreachable {
    /// It did not resolve, or to nothing: worth another try.
    Unresolved(String),
    /// It resolved to an address that is not public (the message names it).
    NotPublic(String),
}

/// The addresses `host` (as a URL writes it: `[…]` around IPv6) resolves to on `port` now, each
/// checked to be public unless `allow_private`. Connect to exactly these, so that a second DNS
/// answer cannot swap in another.
pub async fn checked_addresses(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Unreachable> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|err| Unreachable::Unresolved(format!("{host} did not resolve: {err}")))?
        .collect();
    if addresses.is_empty() {
        return Err(Unreachable::Unresolved(format!("{host} has no address")));
    }
    if !allow_private {
        if let Some(address) = addresses.iter().find(|address| !is_public(address.ip())) {
            return Err(Unreachable::NotPublic(format!(
                "{host} is at {}, which is not a public address",
                address.ip()
            )));
        }
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "0.0.0.0",
            "::1",
            "fc00::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                !is_public(private.parse().unwrap()),
                "{private} must be refused"
            );
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public} is public");
        }
    }
}
