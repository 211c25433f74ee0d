//! Sticky-session cookie values, free of host calls: making them, and
//! finding the endpoint a client's cookie was made for.
//!
//! A value is base64url (no padding) of the first 16 bytes of
//! HMAC-SHA256(secret, upstream + "\n" + endpoint address): opaque (it tells
//! the client nothing about the upstream's addresses), tamper-evident (no
//! one without the secret can make the value of another endpoint), and the
//! same from every instance and proxy that shares the secret. Hashing the
//! address rather than the index keeps cookies valid when the manifest
//! reorders or adds endpoints.

use hmac::{Hmac, Mac};
use portier_sdk::upstreams::Candidate;
use sha2::Sha256;

/// Bytes of the MAC a cookie keeps: 128 bits are far beyond guessing, and
/// the value stays short (22 characters).
const MAC_BYTES: usize = 16;

/// The cookie value that sends a client to `address` of `upstream`.
pub fn value(secret: &[u8], upstream: &str, address: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(upstream.as_bytes());
    mac.update(b"\n");
    mac.update(address.as_bytes());
    base64url(&mac.finalize().into_bytes()[..MAC_BYTES])
}

/// The cookie values of one upstream's endpoints, computed once per
/// instance: checking a cookie is then a few comparisons, not a MAC.
#[derive(Debug)]
pub struct Values {
    /// `(endpoint index, cookie value)`, one per endpoint.
    by_index: Vec<(u32, String)>,
}

impl Values {
    /// The values for `(index, address)` endpoints of `upstream`.
    pub fn new<'a>(
        secret: &[u8],
        upstream: &str,
        endpoints: impl IntoIterator<Item = (u32, &'a str)>,
    ) -> Values {
        let by_index = endpoints
            .into_iter()
            .map(|(index, address)| (index, value(secret, upstream, address)))
            .collect();
        Values { by_index }
    }

    /// The cookie value for endpoint `index`.
    pub fn of(&self, index: u32) -> Option<&str> {
        self.by_index
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, value)| value.as_str())
    }

    /// The endpoint a client's cookie `value` was made for, if that endpoint
    /// is among the `healthy` ones now. `None` for a tampered or foreign
    /// value, and for an endpoint that is down or was already tried by this
    /// request: the caller then picks anew and sets a new cookie.
    pub fn endpoint(&self, value: &str, healthy: &[Candidate]) -> Option<u32> {
        // Each comparison takes as long however much of a forged value was
        // right, so timing cannot guide a forgery byte by byte.
        let (index, _) = self
            .by_index
            .iter()
            .find(|(_, v)| same(v.as_bytes(), value.as_bytes()))?;
        let index = *index;
        healthy.iter().any(|c| c.index == index).then_some(index)
    }
}

/// Whether two byte strings are equal, in time that depends only on their
/// lengths (the lengths themselves are no secret: every value is 22 bytes).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Base64url without padding (RFC 4648 §5): safe in a cookie as it is.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        // 1, 2 or 3 bytes give 2, 3 or 4 characters.
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn healthy(indexes: &[u32]) -> Vec<Candidate> {
        indexes
            .iter()
            .map(|&index| Candidate { index, weight: 1 })
            .collect()
    }

    fn values() -> Values {
        Values::new(
            SECRET,
            "api",
            [(0, "10.0.0.1:80"), (1, "10.0.0.2:80"), (2, "10.0.0.3:80")],
        )
    }

    #[test]
    fn base64url_matches_rfc_4648() {
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, output) in cases {
            assert_eq!(base64url(input.as_bytes()), output);
        }
        // The URL-safe alphabet: `-` and `_` where base64 has `+` and `/`.
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn value_is_a_truncated_hmac_sha256() {
        // Pinned against an independent implementation (Python's hmac):
        // base64url(HMAC-SHA256("Jefe", "api\n10.0.0.1:80")[..16]). A change
        // of format would move every client off its endpoint on upgrade.
        assert_eq!(
            value(b"Jefe", "api", "10.0.0.1:80"),
            "KVcoppOow8bvg-UQofvnqg"
        );
    }

    #[test]
    fn a_cookie_for_an_endpoint_picks_it() {
        let values = values();
        let b = values.of(1).unwrap().to_string();
        assert_eq!(values.endpoint(&b, &healthy(&[0, 1, 2])), Some(1));
        let c = values.of(2).unwrap().to_string();
        assert_eq!(values.endpoint(&c, &healthy(&[0, 1, 2])), Some(2));
        assert_eq!(values.of(7), None);
    }

    #[test]
    fn a_cookie_for_an_unhealthy_endpoint_does_not() {
        let values = values();
        let b = values.of(1).unwrap().to_string();
        assert_eq!(values.endpoint(&b, &healthy(&[0, 2])), None);
        assert_eq!(values.endpoint(&b, &[]), None);
    }

    #[test]
    fn a_tampered_cookie_does_not() {
        let values = values();
        let b = values.of(1).unwrap().to_string();
        let all = healthy(&[0, 1, 2]);
        // Every single-character change is caught.
        for at in 0..b.len() {
            let mut bytes = b.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(values.endpoint(&tampered, &all), None, "{tampered}");
        }
        assert_eq!(values.endpoint(&b[..21], &all), None);
        assert_eq!(values.endpoint(&format!("{b}A"), &all), None);
        assert_eq!(values.endpoint("", &all), None);
        assert_eq!(values.endpoint("10.0.0.2:80", &all), None);
    }

    #[test]
    fn cookies_are_bound_to_the_secret_and_the_upstream() {
        let values = values();
        let all = healthy(&[0, 1, 2]);
        let other_secret = value(b"another secret, 32 bytes long!!!", "api", "10.0.0.2:80");
        assert_eq!(values.endpoint(&other_secret, &all), None);
        let other_upstream = value(SECRET, "web", "10.0.0.2:80");
        assert_eq!(values.endpoint(&other_upstream, &all), None);
    }

    #[test]
    fn cookies_follow_the_address_not_the_index() {
        // The manifest moved 10.0.0.2 to index 5: its cookie still finds it.
        let before = values().of(1).unwrap().to_string();
        let after = Values::new(SECRET, "api", [(0, "10.0.0.1:80"), (5, "10.0.0.2:80")]);
        assert_eq!(after.endpoint(&before, &healthy(&[0, 5])), Some(5));
    }

    #[test]
    fn same_compares_whole_strings() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(same(b"", b""));
    }
}
