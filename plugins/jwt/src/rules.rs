//! What a valid token must also carry (scopes, claim values), for every
//! request and per route, and how claims become headers. Free of host
//! calls: unit-tested natively.

use std::collections::BTreeMap;

use portier_sdk::config::Error;
use serde::Deserialize;
use serde_json::{Map, Value};

/// `scopes` and `claims`, as the config writes them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequireConfig {
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: BTreeMap<String, OneOrMany>,
}

/// A claim's required value, or any of several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Requirements of one scope of requests.
#[derive(Debug, Default)]
pub struct Require {
    scopes: Vec<String>,
    claims: Vec<(String, Vec<String>)>,
}

/// Why a valid token is not enough.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// Scopes the token lacks (RFC 6750's `insufficient_scope`).
    Scopes(Vec<String>),
    /// A claim without a required value.
    Claim(String),
}

impl Require {
    /// Checked requirements.
    pub fn new(c: RequireConfig) -> Result<Require, Error> {
        if let Some(i) = c
            .scopes
            .iter()
            .position(|s| s.is_empty() || s.contains(' '))
        {
            return Err(Error::at(format!("scopes[{i}]"), "a scope is one word"));
        }
        let mut claims = Vec::new();
        for (name, want) in c.claims {
            let values = match want {
                OneOrMany::One(v) => vec![v],
                OneOrMany::Many(v) if v.is_empty() => {
                    return Err(Error::at(
                        format!("claims.{name}"),
                        "name at least one value",
                    ));
                }
                OneOrMany::Many(v) => v,
            };
            claims.push((name, values));
        }
        Ok(Require {
            scopes: c.scopes,
            claims,
        })
    }

    /// Whether `claims` meet these requirements.
    pub fn check(&self, claims: &Map<String, Value>) -> Result<(), Denied> {
        let has = scopes(claims);
        let missing: Vec<String> = self
            .scopes
            .iter()
            .filter(|s| !has.contains(&s.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Denied::Scopes(missing));
        }
        for (name, want) in &self.claims {
            let ok = match claims.get(name) {
                Some(Value::String(s)) => want.contains(s),
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|i| i.as_str().is_some_and(|s| want.iter().any(|w| w == s))),
                Some(Value::Number(n)) => want.contains(&n.to_string()),
                Some(Value::Bool(b)) => want.contains(&b.to_string()),
                _ => false,
            };
            if !ok {
                return Err(Denied::Claim(name.clone()));
            }
        }
        Ok(())
    }
}

/// The token's scopes: OAuth's space-separated `scope` (RFC 8693), or an
/// `scp` string or list (Azure AD, Okta).
pub fn scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace()),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// A claim as a header value: text as is, numbers and booleans written
/// out, a list of texts comma-separated, anything else as JSON.
pub fn header_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    fn require(json: &str) -> Require {
        Require::new(serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        assert_eq!(
            scopes(&claims(r#"{"scope": "read write"}"#)),
            ["read", "write"]
        );
        assert_eq!(
            scopes(&claims(r#"{"scp": ["read", "admin"]}"#)),
            ["read", "admin"]
        );
        assert!(scopes(&claims(r#"{"scope": 3}"#)).is_empty());
    }

    #[test]
    fn missing_scopes_are_named_and_claims_matched() {
        let r = require(r#"{"scopes": ["read", "admin"], "claims": {"tier": ["gold", "silver"]}}"#);
        assert_eq!(
            r.check(&claims(r#"{"scope": "read", "tier": "gold"}"#)),
            Err(Denied::Scopes(vec!["admin".into()]))
        );
        assert_eq!(
            r.check(&claims(r#"{"scope": "admin read", "tier": "gold"}"#)),
            Ok(())
        );
        assert_eq!(
            r.check(&claims(
                r#"{"scope": "admin read", "tier": ["x", "silver"]}"#
            )),
            Ok(())
        );
        assert_eq!(
            r.check(&claims(r#"{"scope": "admin read", "tier": "bronze"}"#)),
            Err(Denied::Claim("tier".into()))
        );
        assert_eq!(
            r.check(&claims(r#"{"scope": "admin read"}"#)),
            Err(Denied::Claim("tier".into()))
        );
        let err =
            Require::new(serde_json::from_str(r#"{"scopes": ["a b"]}"#).unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "scopes[0]: a scope is one word");
    }

    #[test]
    fn claims_become_header_values() {
        assert_eq!(header_value(&Value::from("alice")), "alice");
        assert_eq!(header_value(&Value::from(42)), "42");
        assert_eq!(header_value(&serde_json::json!(["a", "b"])), "a,b");
        assert_eq!(header_value(&serde_json::json!({"k": 1})), r#"{"k":1}"#);
    }
}
