//! The CORS decisions (Fetch standard, "CORS protocol"), free of host calls
//! so they are unit-tested natively: which origins, methods and headers a
//! config allows, and the headers a preflight or a response gets.

use portier_sdk::config::{self, Error};
use serde::Deserialize;

/// The stage's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    origins: Vec<String>,
    #[serde(default = "default_methods")]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    credentials: bool,
    max_age: Option<String>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

/// One allowed origin.
#[derive(Debug, PartialEq, Eq)]
enum Origin {
    /// Any origin (`*`).
    Any,
    /// Exactly this one, e.g. `https://app.example.com`.
    Exact(String),
    /// `https://*.example.com`: this scheme, and a host under this suffix
    /// (`.example.com`), any port the pattern does not name.
    Subdomains { scheme: String, suffix: String },
}

/// A checked config.
#[derive(Debug)]
pub struct Policy {
    origins: Vec<Origin>,
    /// Upper-case.
    methods: Vec<String>,
    /// Lower-case; `*` allows any.
    headers: Vec<String>,
    expose_headers: Vec<String>,
    credentials: bool,
    max_age: Option<u64>,
}

/// What a preflight gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Preflight {
    /// 204 with these headers.
    Allowed(Vec<(String, String)>),
    /// 403 without CORS headers: the browser refuses the request.
    Refused(&'static str),
}

impl Policy {
    /// Check a config.
    pub fn new(c: Config) -> Result<Policy, Error> {
        if c.origins.is_empty() {
            return Err(Error::at("origins", "list at least one origin (or \"*\")"));
        }
        let mut origins = Vec::new();
        for (i, o) in c.origins.iter().enumerate() {
            origins.push(origin(o).map_err(|e| Error::at(format!("origins[{i}]"), e))?);
        }
        if c.credentials && origins.contains(&Origin::Any) {
            return Err(Error::at(
                "credentials",
                "browsers refuse credentials with origin \"*\": list the origins",
            ));
        }
        let token = |key: &str, names: &[String]| -> Result<(), Error> {
            match names.iter().position(|n| !config::is_token(n)) {
                Some(i) => Err(Error::at(
                    format!("{key}[{i}]"),
                    format!("{:?} is not a valid name", names[i]),
                )),
                None => Ok(()),
            }
        };
        token("methods", &c.methods)?;
        let headers_any = c.headers.iter().any(|h| h == "*");
        if !headers_any {
            token("headers", &c.headers)?;
        }
        token("expose_headers", &c.expose_headers)?;
        let max_age = c
            .max_age
            .map(|m| config::duration_ms(&m).map_err(|e| Error::at("max_age", e)))
            .transpose()?
            .map(|ms| ms / 1000);
        Ok(Policy {
            origins,
            methods: c.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            headers: c.headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            expose_headers: c.expose_headers,
            credentials: c.credentials,
            max_age,
        })
    }

    /// The `access-control-allow-origin` value for a request from `origin`,
    /// if that origin is allowed.
    pub fn allow_origin(&self, origin: &str) -> Option<String> {
        let allowed = self.origins.iter().any(|o| match o {
            Origin::Any => true,
            Origin::Exact(e) => e.eq_ignore_ascii_case(origin),
            Origin::Subdomains { scheme, suffix } => {
                origin.split_once("://").is_some_and(|(s, authority)| {
                    let host = match authority.rsplit_once(':') {
                        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                        _ => authority,
                    };
                    s.eq_ignore_ascii_case(scheme)
                        && host.len() > suffix.len()
                        && host.to_ascii_lowercase().ends_with(suffix.as_str())
                        && !host[..host.len() - suffix.len()].contains(['/', ':'])
                })
            }
        });
        if !allowed {
            return None;
        }
        // `*` only while nothing varies by origin; with credentials the
        // browser requires the origin itself.
        Some(if self.origins == [Origin::Any] && !self.credentials {
            "*".to_string()
        } else {
            origin.to_string()
        })
    }

    /// Whether responses vary by `Origin` (anything but a bare `*`).
    pub fn varies(&self) -> bool {
        self.origins != [Origin::Any] || self.credentials
    }

    /// The answer to a preflight from `origin` asking for `method` and
    /// `request_headers` (`access-control-request-headers`, comma-separated).
    pub fn preflight(&self, origin: &str, method: &str, request_headers: &str) -> Preflight {
        let Some(allow_origin) = self.allow_origin(origin) else {
            return Preflight::Refused("origin not allowed");
        };
        let method = method.trim();
        // Simple methods are always allowed (Fetch: CORS-safelisted methods).
        if !["GET", "HEAD", "POST"].contains(&method) && !self.methods.iter().any(|m| m == method) {
            return Preflight::Refused("method not allowed");
        }
        let asked: Vec<String> = request_headers
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let any = self.headers.iter().any(|h| h == "*") && !self.credentials;
        if !any
            && asked
                .iter()
                .any(|h| !self.headers.contains(h) && !safelisted(h))
        {
            return Preflight::Refused("header not allowed");
        }
        let mut out = vec![("access-control-allow-origin".into(), allow_origin)];
        out.push((
            "access-control-allow-methods".into(),
            self.methods.join(", "),
        ));
        if !asked.is_empty() {
            // Echo what was asked: every one of them is allowed.
            out.push(("access-control-allow-headers".into(), asked.join(", ")));
        }
        if self.credentials {
            out.push(("access-control-allow-credentials".into(), "true".into()));
        }
        if let Some(age) = self.max_age {
            out.push(("access-control-max-age".into(), age.to_string()));
        }
        if self.varies() {
            out.push((
                "vary".into(),
                "origin, access-control-request-method, access-control-request-headers".into(),
            ));
        }
        Preflight::Allowed(out)
    }

    /// The headers an actual (non-preflight) response gets for a request
    /// from an allowed `origin`.
    pub fn response_headers(&self, allow_origin: String) -> Vec<(String, String)> {
        let mut out = vec![("access-control-allow-origin".into(), allow_origin)];
        if self.credentials {
            out.push(("access-control-allow-credentials".into(), "true".into()));
        }
        if !self.expose_headers.is_empty() {
            out.push((
                "access-control-expose-headers".into(),
                self.expose_headers.join(", "),
            ));
        }
        out
    }
}

fn origin(o: &str) -> Result<Origin, String> {
    if o == "*" {
        return Ok(Origin::Any);
    }
    let (scheme, host) = o.split_once("://").ok_or_else(|| {
        format!("{o:?}: an origin is scheme://host[:port], e.g. \"https://app.example.com\"")
    })?;
    if scheme.is_empty() || host.is_empty() || host.contains('/') {
        return Err(format!(
            "{o:?}: an origin is scheme://host[:port], with no path"
        ));
    }
    match host.strip_prefix("*.") {
        Some(rest) if !rest.is_empty() && !rest.contains('*') => Ok(Origin::Subdomains {
            scheme: scheme.to_ascii_lowercase(),
            suffix: format!(".{}", rest.to_ascii_lowercase()),
        }),
        _ if host.contains('*') => Err(format!(
            "{o:?}: a wildcard only as the first label, \"https://*.example.com\""
        )),
        _ => Ok(Origin::Exact(o.to_string())),
    }
}

/// Headers a browser sends without asking (Fetch: CORS-safelisted request
/// headers; their values' own limits are the browser's to enforce).
fn safelisted(h: &str) -> bool {
    [
        "accept",
        "accept-language",
        "content-language",
        "content-type",
        "range",
    ]
    .contains(&h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Policy {
        Policy::new(portier_sdk::config::parse(json).unwrap()).unwrap()
    }

    #[test]
    fn origins_exact_wildcard_and_subdomains() {
        let p = policy(r#"{"origins": ["https://app.example.com", "https://*.example.org"]}"#);
        assert_eq!(
            p.allow_origin("https://app.example.com").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            p.allow_origin("https://a.b.example.org").as_deref(),
            Some("https://a.b.example.org")
        );
        assert_eq!(
            p.allow_origin("https://a.example.org:8443").as_deref(),
            Some("https://a.example.org:8443")
        );
        for refused in [
            "https://evil.com",
            "http://app.example.com",
            "https://example.org",
            "https://evilexample.org",
            "http://a.example.org",
            "null",
        ] {
            assert_eq!(p.allow_origin(refused), None, "{refused}");
        }
        assert!(p.varies());
        let any = policy(r#"{"origins": ["*"]}"#);
        assert_eq!(any.allow_origin("https://x.test").as_deref(), Some("*"));
        assert!(!any.varies());
    }

    #[test]
    fn preflights_allow_what_is_configured_and_nothing_else() {
        let p = policy(
            r#"{"origins": ["https://app.test"], "methods": ["GET", "PUT"], "headers": ["authorization", "x-requested-with"],
                "credentials": true, "max_age": "10m"}"#,
        );
        let Preflight::Allowed(h) =
            p.preflight("https://app.test", "PUT", "Content-Type, Authorization")
        else {
            panic!("refused")
        };
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("access-control-allow-origin"), Some("https://app.test"));
        assert_eq!(get("access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(
            get("access-control-allow-headers"),
            Some("content-type, authorization")
        );
        assert_eq!(get("access-control-allow-credentials"), Some("true"));
        assert_eq!(get("access-control-max-age"), Some("600"));
        assert_eq!(
            p.preflight("https://evil.test", "PUT", ""),
            Preflight::Refused("origin not allowed")
        );
        assert_eq!(
            p.preflight("https://app.test", "DELETE", ""),
            Preflight::Refused("method not allowed")
        );
        assert_eq!(
            p.preflight("https://app.test", "PUT", "x-secret"),
            Preflight::Refused("header not allowed")
        );
        // POST is always a simple method.
        assert!(matches!(
            p.preflight("https://app.test", "POST", ""),
            Preflight::Allowed(_)
        ));
    }

    #[test]
    fn bad_configs_name_their_key() {
        let err = |json: &str| {
            Policy::new(portier_sdk::config::parse(json).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"origins": []}"#).starts_with("origins: list at least one"));
        assert!(
            err(r#"{"origins": ["app.test"]}"#)
                .starts_with("origins[0]: \"app.test\": an origin is")
        );
        assert!(err(r#"{"origins": ["https://a.*.test"]}"#).starts_with("origins[0]:"));
        assert!(
            err(r#"{"origins": ["*"], "credentials": true}"#)
                .starts_with("credentials: browsers refuse")
        );
        assert!(err(r#"{"origins": ["*"], "methods": ["G T"]}"#).starts_with("methods[0]:"));
        assert!(err(r#"{"origins": ["*"], "max_age": "soon"}"#).starts_with("max_age:"));
    }
}
