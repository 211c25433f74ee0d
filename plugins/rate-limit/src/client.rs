//! Who a request's client is, as a short kv key: free of host calls, so it
//! is unit-tested natively.
//!
//! - By IP: an IPv4 address as it is; an IPv6 address grouped by its first
//!   `ipv6_prefix` bits (default 64: one customer's /64 is one client, as
//!   IPv6 hands every host a /64 to hop around in).
//! - By header: the value is hashed (SHA-256, first 128 bits), so a key
//!   costs the same few bytes whatever a client sends, and a secret such as
//!   an API key is never stored in kv; values longer than
//!   [`MAX_HEADER_VALUE`] are not keys anyone was issued, so such a request
//!   is counted by its IP.

use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// The longest header value used as a key, in bytes.
pub const MAX_HEADER_VALUE: usize = 256;

/// The kv key prefix for a client known by its IP address.
pub fn by_ip(ip: IpAddr, ipv6_prefix: u8) -> String {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let bits = u128::from(v6);
            let prefix = u32::from(ipv6_prefix.min(128));
            let masked = if prefix == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - prefix))
            };
            format!("ip:{}/{prefix}", std::net::Ipv6Addr::from(masked))
        }
        IpAddr::V6(mapped) => format!("ip:{}", mapped.to_canonical()),
        IpAddr::V4(v4) => format!("ip:{v4}"),
    }
}

/// The kv key prefix for a client known by a header's `value`, or `None`
/// when the value is too long to be one.
pub fn by_header(value: &str) -> Option<String> {
    if value.len() > MAX_HEADER_VALUE {
        return None;
    }
    let digest = Sha256::digest(value.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("h:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_clients_are_their_address() {
        assert_eq!(by_ip(ip("10.0.0.7"), 64), "ip:10.0.0.7");
        assert_eq!(by_ip(ip("::ffff:10.0.0.7"), 64), "ip:10.0.0.7");
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        let a = by_ip(ip("2001:db8:1:2:aaaa::1"), 64);
        let b = by_ip(ip("2001:db8:1:2:bbbb::9"), 64);
        assert_eq!(a, "ip:2001:db8:1:2::/64");
        assert_eq!(a, b, "one /64, one client");
        assert_ne!(a, by_ip(ip("2001:db8:1:3::1"), 64));
        assert_eq!(by_ip(ip("2001:db8::1"), 128), "ip:2001:db8::1/128");
        assert_eq!(by_ip(ip("2001:db8::1"), 48), "ip:2001:db8::/48");
    }

    #[test]
    fn header_values_are_hashed_to_a_fixed_size_and_long_ones_refused() {
        let key = by_header("k-alpha").unwrap();
        assert_eq!(key.len(), 2 + 32);
        assert!(!key.contains("alpha"), "the secret is stored: {key}");
        assert_eq!(by_header("k-alpha"), Some(key.clone()));
        assert_ne!(by_header("k-beta"), Some(key));
        assert!(by_header(&"x".repeat(MAX_HEADER_VALUE)).is_some());
        assert_eq!(by_header(&"x".repeat(MAX_HEADER_VALUE + 1)), None);
    }
}
