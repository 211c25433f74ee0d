//! The router's config and matching logic, free of host calls so it is
//! unit-tested natively.

use std::fmt;

use portier_sdk::config::Error;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// The stage's `config` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    routes: Vec<RouteConfig>,
    default: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    name: Option<String>,
    prefix: Option<String>,
    path: Option<String>,
    host: Option<String>,
    method: Option<Methods>,
    upstream: String,
    #[serde(default)]
    strip_prefix: bool,
    replace_prefix: Option<String>,
}

/// `method = "GET"` or `method = ["GET", "HEAD"]`.
#[derive(Debug)]
struct Methods(Vec<String>);

impl<'de> Deserialize<'de> for Methods {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MethodsVisitor;
        impl<'de> Visitor<'de> for MethodsVisitor {
            type Value = Methods;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a method name or a list of method names")
            }
            fn visit_str<E: de::Error>(self, method: &str) -> Result<Methods, E> {
                Ok(Methods(vec![method.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Methods, A::Error> {
                let mut methods = Vec::new();
                while let Some(method) = seq.next_element()? {
                    methods.push(method);
                }
                Ok(Methods(methods))
            }
        }
        deserializer.deserialize_any(MethodsVisitor)
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Forward to `upstream` under the rule's `route` name, with the path
    /// rewritten when `path` is set.
    Forward {
        upstream: &'a str,
        route: Option<&'a str>,
        path: Option<String>,
    },
    /// No rule matched and there is no default.
    NotFound,
}

#[derive(Debug)]
enum PathMatch {
    Any,
    Exact(String),
    /// The prefix without its trailing `/` ("" for "/"): it matches itself
    /// and everything below it, segment-wise.
    Prefix(String),
}

#[derive(Debug)]
enum Rewrite {
    None,
    Strip,
    /// The new prefix, as written, e.g. "/v2/".
    Replace(String),
}

#[derive(Debug)]
struct Rule {
    name: Option<String>,
    path: PathMatch,
    /// Lowercase.
    host: Option<String>,
    /// Uppercase; `None` matches every method.
    methods: Option<Vec<String>>,
    upstream: String,
    rewrite: Rewrite,
}

/// Validated, ready-to-match routing rules.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    default: Option<String>,
}

impl Rules {
    /// Validate a config against the manifest's upstream names.
    pub fn compile(config: Config, upstreams: &[String]) -> Result<Rules, Error> {
        let known = |key: &str, name: &str| {
            if upstreams.iter().any(|u| u == name) {
                Ok(())
            } else {
                Err(Error::at(key, format!("no upstream named {name:?}")))
            }
        };
        let mut rules: Vec<Rule> = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            known(&format!("{key}.upstream"), &route.upstream)?;
            let rule = Rule::compile(&key, route)?;
            if let Some(name) = &rule.name
                && rules.iter().any(|r| r.name.as_ref() == Some(name))
            {
                return Err(Error::at(
                    format!("{key}.name"),
                    format!("{name:?} names an earlier route too"),
                ));
            }
            rules.push(rule);
        }
        if let Some(default) = &config.default {
            known("default", default)?;
        }
        Ok(Rules {
            rules,
            default: config.default,
        })
    }

    /// The rules' names, in order (a stage scoped to routes names some of them).
    pub fn names(&self) -> Vec<String> {
        self.rules.iter().filter_map(|r| r.name.clone()).collect()
    }

    /// True when some rule looks at the method.
    pub fn uses_method(&self) -> bool {
        self.rules.iter().any(|r| r.methods.is_some())
    }

    /// True when some rule looks at the host.
    pub fn uses_host(&self) -> bool {
        self.rules.iter().any(|r| r.host.is_some())
    }

    /// The first matching rule's decision, else the default, else not found.
    pub fn decide(&self, path: &str, method: &str, host: Option<&str>) -> Decision<'_> {
        for rule in &self.rules {
            if let Some(rest) = rule.matches(path, method, host) {
                let path = match &rule.rewrite {
                    Rewrite::None => None,
                    Rewrite::Strip => Some(join("", rest)),
                    Rewrite::Replace(prefix) => Some(join(prefix, rest)),
                };
                return Decision::Forward {
                    upstream: &rule.upstream,
                    route: rule.name.as_deref(),
                    path,
                };
            }
        }
        match &self.default {
            Some(upstream) => Decision::Forward {
                upstream,
                route: None,
                path: None,
            },
            None => Decision::NotFound,
        }
    }
}

impl Rule {
    fn compile(key: &str, route: RouteConfig) -> Result<Rule, Error> {
        let name = match route.name {
            Some(n) if n.is_empty() || n.contains(char::is_whitespace) => {
                return Err(Error::at(
                    format!("{key}.name"),
                    format!("{n:?}: a route name is one word"),
                ));
            }
            n => n,
        };
        let path = match (route.prefix, route.path) {
            (Some(_), Some(_)) => {
                return Err(Error::at(
                    format!("{key}.path"),
                    "cannot be combined with prefix",
                ));
            }
            (Some(prefix), None) => {
                must_be_absolute(&format!("{key}.prefix"), &prefix)?;
                PathMatch::Prefix(prefix.trim_end_matches('/').to_string())
            }
            (None, Some(path)) => {
                must_be_absolute(&format!("{key}.path"), &path)?;
                PathMatch::Exact(path)
            }
            (None, None) => PathMatch::Any,
        };
        let has_prefix = matches!(path, PathMatch::Prefix(_));
        let rewrite = match (route.strip_prefix, route.replace_prefix) {
            (true, Some(_)) => {
                return Err(Error::at(
                    format!("{key}.replace_prefix"),
                    "cannot be combined with strip_prefix",
                ));
            }
            (true, None) if !has_prefix => {
                return Err(Error::at(format!("{key}.strip_prefix"), "requires prefix"));
            }
            (true, None) => Rewrite::Strip,
            (false, Some(_)) if !has_prefix => {
                return Err(Error::at(
                    format!("{key}.replace_prefix"),
                    "requires prefix",
                ));
            }
            (false, Some(replacement)) => {
                must_be_absolute(&format!("{key}.replace_prefix"), &replacement)?;
                Rewrite::Replace(replacement)
            }
            (false, None) => Rewrite::None,
        };
        let host = match route.host {
            Some(host) if host.is_empty() || host.contains(['/', ' ']) => {
                return Err(Error::at(
                    format!("{key}.host"),
                    format!("invalid host {host:?}"),
                ));
            }
            Some(host) => Some(host.to_ascii_lowercase()),
            None => None,
        };
        let methods = match route.method {
            Some(Methods(methods)) if methods.is_empty() => {
                return Err(Error::at(
                    format!("{key}.method"),
                    "must name at least one method",
                ));
            }
            Some(Methods(methods)) => {
                let mut upper = Vec::with_capacity(methods.len());
                for (j, m) in methods.iter().enumerate() {
                    if m.is_empty()
                        || !m
                            .bytes()
                            .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
                    {
                        let at = if methods.len() > 1 {
                            format!("[{j}]")
                        } else {
                            String::new()
                        };
                        return Err(Error::at(
                            format!("{key}.method{at}"),
                            format!("invalid method {m:?}"),
                        ));
                    }
                    upper.push(m.to_ascii_uppercase());
                }
                Some(upper)
            }
            None => None,
        };
        Ok(Rule {
            name,
            path,
            host,
            methods,
            upstream: route.upstream,
            rewrite,
        })
    }

    /// The part of the path after the matched prefix ("" for exact and
    /// any-path rules), when the rule matches.
    fn matches<'p>(&self, path: &'p str, method: &str, host: Option<&str>) -> Option<&'p str> {
        let rest = match &self.path {
            PathMatch::Any => "",
            PathMatch::Exact(exact) => {
                if path != exact {
                    return None;
                }
                ""
            }
            PathMatch::Prefix(prefix) => {
                let rest = path.strip_prefix(prefix.as_str())?;
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                rest
            }
        };
        let host_ok = match &self.host {
            Some(want) => host.is_some_and(|h| h.eq_ignore_ascii_case(want)),
            None => true,
        };
        let method_ok = match &self.methods {
            Some(methods) => methods.iter().any(|m| m.eq_ignore_ascii_case(method)),
            None => true,
        };
        (host_ok && method_ok).then_some(rest)
    }
}

/// `prefix` followed by `rest` ("" or "/…"), never empty and without a
/// doubled slash: ("", "") -> "/", ("/v2/", "/users") -> "/v2/users".
fn join(prefix: &str, rest: &str) -> String {
    if rest.is_empty() {
        return if prefix.is_empty() {
            "/".to_string()
        } else {
            prefix.to_string()
        };
    }
    let mut path = prefix.trim_end_matches('/').to_string();
    path.push_str(rest);
    path
}

fn must_be_absolute(key: &str, path: &str) -> Result<(), Error> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(Error::at(
            key,
            format!("must start with \"/\" (got {path:?})"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams() -> Vec<String> {
        ["api", "web", "static"].map(String::from).to_vec()
    }

    fn rules(json: &str) -> Result<Rules, String> {
        let config: Config = portier_sdk::config::parse(json).map_err(|e| e.to_string())?;
        Rules::compile(config, &upstreams()).map_err(|e| e.to_string())
    }

    fn forward(upstream: &'static str, path: Option<&str>) -> Decision<'static> {
        Decision::Forward {
            upstream,
            route: None,
            path: path.map(String::from),
        }
    }

    fn get<'r>(rules: &'r Rules, path: &str) -> Decision<'r> {
        rules.decide(path, "GET", Some("example.com"))
    }

    // === config validation ===

    #[test]
    fn empty_config_routes_nothing() {
        let r = rules("{}").unwrap();
        assert_eq!(get(&r, "/"), Decision::NotFound);
    }

    #[test]
    fn unknown_upstream_is_rejected_with_its_key() {
        let err = rules(r#"{"routes": [{"prefix": "/", "upstream": "nope"}]}"#).unwrap_err();
        assert_eq!(err, r#"routes[0].upstream: no upstream named "nope""#);
        let err = rules(r#"{"routes": [{"upstream": "api"}, {"upstream": "x"}]}"#).unwrap_err();
        assert_eq!(err, r#"routes[1].upstream: no upstream named "x""#);
        let err = rules(r#"{"default": "nope"}"#).unwrap_err();
        assert_eq!(err, r#"default: no upstream named "nope""#);
    }

    #[test]
    fn unknown_and_mistyped_keys_are_rejected() {
        let err = rules(r#"{"routes": [{"prefix": "/", "upstream": "api", "strip": true}]}"#)
            .unwrap_err();
        assert!(
            err.starts_with("routes[0].strip: unknown field `strip`"),
            "{err}"
        );
        let err = rules(r#"{"route": []}"#).unwrap_err();
        assert!(err.starts_with("route: unknown field `route`"), "{err}");
        let err = rules(r#"{"routes": [{"upstream": "api", "method": 3}]}"#).unwrap_err();
        assert_eq!(
            err,
            "routes[0].method: invalid type: integer `3`, expected a method name or a list of method names"
        );
        let err = rules(r#"{"routes": [{"prefix": "/"}]}"#).unwrap_err();
        assert_eq!(err, "routes[0]: missing field `upstream`");
    }

    #[test]
    fn conflicting_options_are_rejected() {
        let cases = [
            (
                r#"{"prefix": "/a", "path": "/b", "upstream": "api"}"#,
                "routes[0].path: cannot be combined with prefix",
            ),
            (
                r#"{"prefix": "/a", "strip_prefix": true, "replace_prefix": "/b", "upstream": "api"}"#,
                "routes[0].replace_prefix: cannot be combined with strip_prefix",
            ),
            (
                r#"{"strip_prefix": true, "upstream": "api"}"#,
                "routes[0].strip_prefix: requires prefix",
            ),
            (
                r#"{"path": "/a", "replace_prefix": "/b", "upstream": "api"}"#,
                "routes[0].replace_prefix: requires prefix",
            ),
            (
                r#"{"prefix": "api", "upstream": "api"}"#,
                r#"routes[0].prefix: must start with "/" (got "api")"#,
            ),
            (
                r#"{"path": "", "upstream": "api"}"#,
                r#"routes[0].path: must start with "/" (got "")"#,
            ),
            (
                r#"{"prefix": "/a", "replace_prefix": "v2", "upstream": "api"}"#,
                r#"routes[0].replace_prefix: must start with "/" (got "v2")"#,
            ),
            (
                r#"{"method": [], "upstream": "api"}"#,
                "routes[0].method: must name at least one method",
            ),
            (
                r#"{"method": ["GET", "G T"], "upstream": "api"}"#,
                r#"routes[0].method[1]: invalid method "G T""#,
            ),
            (
                r#"{"host": "", "upstream": "api"}"#,
                r#"routes[0].host: invalid host """#,
            ),
        ];
        for (route, want) in cases {
            let err = rules(&format!(r#"{{"routes": [{route}]}}"#)).unwrap_err();
            assert_eq!(err, want, "for {route}");
        }
        // An explicit `strip_prefix = false` is no conflict.
        rules(r#"{"routes": [{"prefix": "/a", "strip_prefix": false, "replace_prefix": "/b", "upstream": "api"}]}"#)
            .unwrap();
    }

    #[test]
    fn route_names_are_reported_unique_and_single_words() {
        let r = rules(
            r#"{"routes": [{"name": "api", "prefix": "/api/", "upstream": "api"},
                           {"prefix": "/", "upstream": "web"}], "default": "web"}"#,
        )
        .unwrap();
        assert_eq!(r.names(), ["api"]);
        let named = r.decide("/api/x", "GET", None);
        assert!(
            matches!(
                named,
                Decision::Forward {
                    route: Some("api"),
                    ..
                }
            ),
            "{named:?}"
        );
        let unnamed = r.decide("/x", "GET", None);
        assert!(
            matches!(unnamed, Decision::Forward { route: None, .. }),
            "{unnamed:?}"
        );
        let err = rules(
            r#"{"routes": [{"name": "a", "upstream": "api"}, {"name": "a", "upstream": "web"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err, r#"routes[1].name: "a" names an earlier route too"#);
        let err = rules(r#"{"routes": [{"name": "my api", "upstream": "api"}]}"#).unwrap_err();
        assert_eq!(err, r#"routes[0].name: "my api": a route name is one word"#);
    }

    // === matching ===

    #[test]
    fn first_match_wins() {
        let r = rules(
            r#"{"routes": [
                {"prefix": "/api/", "upstream": "api"},
                {"prefix": "/api/static/", "upstream": "static"},
                {"prefix": "/", "upstream": "web"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(get(&r, "/api/static/x"), forward("api", None));
        assert_eq!(get(&r, "/apiary"), forward("web", None));
        assert_eq!(get(&r, "/"), forward("web", None));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        for prefix in ["/api", "/api/"] {
            let r = rules(&format!(
                r#"{{"routes": [{{"prefix": "{prefix}", "upstream": "api"}}]}}"#
            ))
            .unwrap();
            for path in ["/api", "/api/", "/api/users", "/api/users/1"] {
                assert_eq!(get(&r, path), forward("api", None), "{prefix} vs {path}");
            }
            for path in ["/", "/apiary", "/ap", "/v1/api"] {
                assert_eq!(get(&r, path), Decision::NotFound, "{prefix} vs {path}");
            }
        }
    }

    #[test]
    fn exact_path_matches_only_itself() {
        let r = rules(r#"{"routes": [{"path": "/health", "upstream": "api"}]}"#).unwrap();
        assert_eq!(get(&r, "/health"), forward("api", None));
        assert_eq!(get(&r, "/health/"), Decision::NotFound);
        assert_eq!(get(&r, "/healthz"), Decision::NotFound);
    }

    #[test]
    fn strip_prefix_never_leaves_an_empty_path() {
        let r =
            rules(r#"{"routes": [{"prefix": "/api/", "strip_prefix": true, "upstream": "api"}]}"#)
                .unwrap();
        assert_eq!(get(&r, "/api/users"), forward("api", Some("/users")));
        assert_eq!(get(&r, "/api/users/7/"), forward("api", Some("/users/7/")));
        assert_eq!(get(&r, "/api/"), forward("api", Some("/")));
        assert_eq!(get(&r, "/api"), forward("api", Some("/")));
        let r =
            rules(r#"{"routes": [{"prefix": "/api", "strip_prefix": true, "upstream": "api"}]}"#)
                .unwrap();
        assert_eq!(get(&r, "/api"), forward("api", Some("/")));
        assert_eq!(get(&r, "/api/users"), forward("api", Some("/users")));
        let r = rules(r#"{"routes": [{"prefix": "/", "strip_prefix": true, "upstream": "api"}]}"#)
            .unwrap();
        assert_eq!(get(&r, "/"), forward("api", Some("/")));
        assert_eq!(get(&r, "/x"), forward("api", Some("/x")));
    }

    #[test]
    fn replace_prefix_substitutes() {
        let r = rules(
            r#"{"routes": [{"prefix": "/api/", "replace_prefix": "/v2/", "upstream": "api"}]}"#,
        )
        .unwrap();
        assert_eq!(get(&r, "/api/users"), forward("api", Some("/v2/users")));
        assert_eq!(get(&r, "/api/"), forward("api", Some("/v2/")));
        assert_eq!(get(&r, "/api"), forward("api", Some("/v2/")));
        let r = rules(
            r#"{"routes": [{"prefix": "/old", "replace_prefix": "/new", "upstream": "api"}]}"#,
        )
        .unwrap();
        assert_eq!(get(&r, "/old/a"), forward("api", Some("/new/a")));
        assert_eq!(get(&r, "/old"), forward("api", Some("/new")));
        let r =
            rules(r#"{"routes": [{"prefix": "/api", "replace_prefix": "/", "upstream": "api"}]}"#)
                .unwrap();
        assert_eq!(get(&r, "/api/users"), forward("api", Some("/users")));
        assert_eq!(get(&r, "/api"), forward("api", Some("/")));
    }

    #[test]
    fn host_matches_case_insensitively() {
        let r = rules(
            r#"{"routes": [{"host": "API.example.com", "upstream": "api"}], "default": "web"}"#,
        )
        .unwrap();
        assert!(r.uses_host() && !r.uses_method());
        assert_eq!(
            r.decide("/", "GET", Some("api.EXAMPLE.com")),
            forward("api", None)
        );
        assert_eq!(
            r.decide("/", "GET", Some("www.example.com")),
            forward("web", None)
        );
        assert_eq!(r.decide("/", "GET", None), forward("web", None));
    }

    #[test]
    fn method_is_one_or_a_list() {
        let r = rules(
            r#"{"routes": [
                {"method": "post", "upstream": "api"},
                {"method": ["GET", "HEAD"], "upstream": "static"}
            ]}"#,
        )
        .unwrap();
        assert!(r.uses_method() && !r.uses_host());
        assert_eq!(r.decide("/", "POST", None), forward("api", None));
        assert_eq!(r.decide("/", "HEAD", None), forward("static", None));
        assert_eq!(r.decide("/", "GET", None), forward("static", None));
        assert_eq!(r.decide("/", "DELETE", None), Decision::NotFound);
    }

    #[test]
    fn all_conditions_must_hold() {
        let r = rules(
            r#"{"routes": [{"prefix": "/api/", "host": "a.test", "method": "GET", "upstream": "api"}],
                "default": "web"}"#,
        )
        .unwrap();
        assert_eq!(
            r.decide("/api/x", "GET", Some("a.test")),
            forward("api", None)
        );
        assert_eq!(
            r.decide("/api/x", "POST", Some("a.test")),
            forward("web", None)
        );
        assert_eq!(
            r.decide("/api/x", "GET", Some("b.test")),
            forward("web", None)
        );
        assert_eq!(r.decide("/x", "GET", Some("a.test")), forward("web", None));
    }

    #[test]
    fn default_catches_the_rest() {
        let r = rules(r#"{"routes": [{"prefix": "/api/", "upstream": "api"}], "default": "web"}"#)
            .unwrap();
        assert_eq!(get(&r, "/index.html"), forward("web", None));
    }
}
