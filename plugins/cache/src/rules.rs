//! RFC 9111's shared-cache rules over plain values, free of host calls so
//! they are unit-tested natively.

/// The `Cache-Control` directives a shared cache acts on (RFC 9111 §5.2).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl Directives {
    /// Every `Cache-Control` value of a message, in order. Unknown
    /// directives are ignored; a malformed number makes the message count
    /// as already stale (`max-age=0`), as §4.2.1 advises.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Directives {
        let mut d = Directives::default();
        for value in values {
            for item in value.split(',') {
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (item.trim(), None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok()).or(Some(0));
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    // `no-cache="set-cookie"` too: we do not store a part only.
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    "max-age" => d.max_age = seconds(),
                    "s-maxage" => d.s_maxage = seconds(),
                    _ => {}
                }
            }
        }
        d
    }
}

/// How long a response is fresh by its own headers (RFC 9111 §4.2.1):
/// `s-maxage`, then `max-age`, then `Expires` minus `Date` (or minus `now`,
/// Unix seconds, without a `Date`); `None` when it says nothing. An
/// `Expires` that is not a date means already expired.
pub fn explicit_lifetime(
    d: &Directives,
    expires: Option<&str>,
    date: Option<&str>,
    now: u64,
) -> Option<u64> {
    if let Some(s) = d.s_maxage.or(d.max_age) {
        return Some(s);
    }
    let expires = expires?;
    let Ok(expires) = httpdate::parse_http_date(expires) else {
        return Some(0);
    };
    let base = date
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .and_then(|d| d.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now, |d| d.as_secs());
    let expires = expires
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Some(expires.saturating_sub(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_read_from_every_value_case_insensitively() {
        let d = Directives::parse(["Public, MAX-AGE=60", "s-maxage=\"120\", foo=bar"]);
        assert!(d.public);
        assert_eq!((d.max_age, d.s_maxage), (Some(60), Some(120)));
        let d = Directives::parse(["no-store", "private"]);
        assert!(d.no_store && d.private && !d.no_cache);
        assert_eq!(Directives::parse(["max-age=soon"]).max_age, Some(0));
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires() {
        let d = Directives::parse(["max-age=60, s-maxage=10"]);
        assert_eq!(explicit_lifetime(&d, None, None, 0), Some(10));
        let d = Directives::parse(["max-age=60"]);
        assert_eq!(
            explicit_lifetime(&d, Some("Thu, 01 Jan 2099 00:00:00 GMT"), None, 0),
            Some(60)
        );
        let none = Directives::default();
        assert_eq!(explicit_lifetime(&none, None, None, 0), None);
        assert_eq!(
            explicit_lifetime(
                &none,
                Some("Sun, 06 Nov 1994 08:49:37 GMT"),
                Some("Sun, 06 Nov 1994 08:48:37 GMT"),
                0
            ),
            Some(60)
        );
        assert_eq!(explicit_lifetime(&none, Some("0"), None, 0), Some(0));
        // Without Date, against now: long past.
        assert_eq!(
            explicit_lifetime(
                &none,
                Some("Sun, 06 Nov 1994 08:49:37 GMT"),
                None,
                2_000_000_000
            ),
            Some(0)
        );
    }
}
