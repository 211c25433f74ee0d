//! The stage's configuration: the manifest's `config` table, as JSON text,
//! handed to the role's `init` once per instance.
//!
//! [`parse`] turns it into a typed struct with errors that name the failing
//! key; an [`Error`] from `init` makes the manifest error name
//! `pipeline[N].config.<key>`, which is what `portier check` shows.
//!
//! ```
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     limits: Vec<Limit>,
//! }
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Limit {
//!     per_ip: u32,
//! }
//!
//! let err = portier_sdk::config::parse::<Config>(r#"{"limits": [{"per_ip": -1}]}"#).err().unwrap();
//! assert_eq!(err.key.as_deref(), Some("limits[0].per_ip"));
//! assert_eq!(err.to_string(), "limits[0].per_ip: invalid value: integer `-1`, expected u32");
//! ```

use std::fmt;

use serde::de::DeserializeOwned;

/// Why `init` refused its config: the key inside the stage's `config` (as
/// the manifest writes it, `routes[0].upstream`) and what is wrong there.
///
/// ```
/// use portier_sdk::config::Error;
///
/// let e = Error::at("routes[0].upstream", "no upstream named \"api\"");
/// assert_eq!(e.to_string(), "routes[0].upstream: no upstream named \"api\"");
/// // A plain message is about the config as a whole.
/// let whole: Error = "give at least one route".into();
/// assert_eq!(whole.key, None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The dotted key inside the stage's config; `None` for the whole config.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Error {
    /// An error about one key of the config.
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// This error, one level down: `inner.key` under `outer`
    /// (`Error::at("window", …).within("limits[2]")` names `limits[2].window`).
    pub fn within(self, outer: &str) -> Error {
        let key = match self.key {
            Some(k) if k.starts_with('[') => format!("{outer}{k}"),
            Some(k) => format!("{outer}.{k}"),
            None => outer.to_string(),
        };
        Error {
            key: Some(key),
            message: self.message,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error { key: None, message }
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error::from(message.to_string())
    }
}

impl From<Error> for crate::wit::types::ConfigError {
    fn from(e: Error) -> Self {
        crate::wit::types::ConfigError {
            key: e.key,
            message: e.message,
        }
    }
}

/// Deserialize a config from JSON; the error names the key that failed.
///
/// Use `#[serde(deny_unknown_fields)]` on config structs so a misspelled key
/// is an error rather than silently ignored.
pub fn parse<T: DeserializeOwned>(json: &str) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = reason(e.inner());
        if path == "." {
            Error::from(message)
        } else {
            Error::at(path, message)
        }
    })?;
    de.end().map_err(|e| Error::from(reason(&e)))?;
    Ok(value)
}

/// Whether `name` is an HTTP token (RFC 9110 §5.6.2): what header names,
/// methods and cookie names are made of.
pub fn is_token(name: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty() && name.bytes().all(tchar)
}

/// A header name from a config, lower-cased (header names are
/// case-insensitive), or why it is not one.
///
/// ```
/// assert_eq!(portier_sdk::config::header_name("X-User"), Ok("x-user".to_string()));
/// assert_eq!(portier_sdk::config::header_name("x user"), Err(r#"invalid header name "x user""#.to_string()));
/// ```
pub fn header_name(name: &str) -> Result<String, String> {
    if !is_token(name) {
        return Err(format!("invalid header name {name:?}"));
    }
    Ok(name.to_ascii_lowercase())
}

/// A duration written in a config, `"500ms"`, `"60s"`, `"1m"`, `"1h"` or
/// `"1d"`, in milliseconds (never 0), as the manifest writes durations.
pub fn duration_ms(text: &str) -> Result<u64, String> {
    let expected =
        || format!(r#"expected a duration like "500ms", "60s", "1m" or "1h" (got {text:?})"#);
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(expected()),
    };
    let ms = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(expected)?;
    if ms == 0 {
        return Err("must be longer than 0".to_string());
    }
    Ok(ms)
}

/// The error without serde_json's position: the host wrote the JSON from the
/// manifest, so "line 1 column 57" would point into text the user never saw.
/// Syntax errors keep it, as there the position is all there is to say.
fn reason(e: &serde_json::Error) -> String {
    let mut message = e.to_string();
    if e.is_data()
        && e.line() != 0
        && let Some(at) = message.rfind(" at line ")
    {
        message.truncate(at);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        routes: Vec<Route>,
        #[allow(dead_code)]
        default: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Route {
        upstream: String,
    }

    #[test]
    fn parses_valid_config() {
        let config: Config = parse(r#"{"routes": [{"upstream": "api"}]}"#).unwrap();
        assert_eq!(config.routes[0].upstream, "api");
        let empty: Config = parse("{}").unwrap();
        assert!(empty.routes.is_empty());
    }

    #[test]
    fn type_error_names_the_key_path() {
        let err =
            parse::<Config>(r#"{"routes": [{"upstream": "a"}, {"upstream": 7}]}"#).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("routes[1].upstream"));
        assert_eq!(err.message, "invalid type: integer `7`, expected a string");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let err =
            parse::<Config>(r#"{"routes": [{"upstream": "a", "upstrem": "b"}]}"#).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("routes[0].upstrem"));
        assert_eq!(err.message, "unknown field `upstrem`, expected `upstream`");
    }

    #[test]
    fn missing_key_names_its_parent() {
        let err = parse::<Config>(r#"{"routes": [{}]}"#).unwrap_err();
        assert_eq!(err.to_string(), "routes[0]: missing field `upstream`");
    }

    #[test]
    fn top_level_errors_have_no_path() {
        let err = parse::<Config>("3").unwrap_err();
        assert_eq!(
            err,
            Error::from("invalid type: integer `3`, expected struct Config")
        );
    }

    #[test]
    fn syntax_errors_keep_their_position() {
        let err = parse::<Config>("{").unwrap_err().message;
        assert!(err.contains("line 1 column 1"), "{err}");
        let err = parse::<Config>("{} x").unwrap_err().message;
        assert!(err.starts_with("trailing characters"), "{err}");
    }

    #[test]
    fn header_names_are_tokens_lower_cased() {
        assert_eq!(header_name("X-User"), Ok("x-user".to_string()));
        assert!(header_name("x user").is_err());
        assert!(header_name("").is_err());
        assert!(is_token("PUT") && !is_token("G T") && !is_token(""));
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert_eq!(duration_ms("60s"), Ok(60_000));
        assert_eq!(duration_ms("1m"), Ok(60_000));
        assert_eq!(duration_ms("2h"), Ok(7_200_000));
        assert_eq!(duration_ms("1d"), Ok(86_400_000));
        assert_eq!(duration_ms("0s"), Err("must be longer than 0".to_string()));
        for bad in [
            "",
            "60",
            "s",
            "1.5s",
            "-1s",
            "60 s",
            "1sec",
            "99999999999999999999d",
        ] {
            let err = duration_ms(bad).unwrap_err();
            assert!(
                err.starts_with("expected a duration like"),
                "{bad:?}: {err}"
            );
        }
    }
}
