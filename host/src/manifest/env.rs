//! `${VAR}` in manifest strings: secrets and per-host values from the
//! environment, so a manifest can be committed without them.
//!
//! Substituted in string values only (never in keys or comments), after the
//! TOML is parsed, so a value cannot break the file's syntax. `$${` writes a
//! literal `${`. An unset or non-UTF-8 variable is an error naming the key.

use toml::{Table, Value};

/// Replace every `${NAME}` in `table`'s strings with the variable's value,
/// looked up with `lookup`; `Err((key, reason))` names the first that fails.
pub fn substitute(
    table: &mut Table,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    for (k, v) in table.iter_mut() {
        walk(v, k.clone(), lookup)?;
    }
    Ok(())
}

fn walk(
    v: &mut Value,
    key: String,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match v {
        Value::String(s) if s.contains('$') => {
            *s = expand(s, lookup).map_err(|reason| (key, reason))?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{key}[{i}]"), lookup)?;
            }
        }
        Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                walk(item, format!("{key}.{k}"), lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(open) = after.strip_prefix('{') {
            let Some(end) = open.find('}') else {
                return Err("`${` without its closing `}`".into());
            };
            let name = &open[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}`: a variable name is letters, digits and `_`"
                ));
            }
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    return Err(format!(
                        "environment variable {name} is not set (or not UTF-8); \
                         set it, or write `$${{` for a literal `${{`"
                    ));
                }
            }
            rest = &open[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(toml: &str) -> Result<Table, (String, String)> {
        let mut t: Table = toml::from_str(toml).unwrap();
        let env = |k: &str| match k {
            "TOKEN" => Some("s3cret".to_owned()),
            "PORT" => Some("8080".to_owned()),
            _ => None,
        };
        substitute(&mut t, &env).map(|()| t)
    }

    #[test]
    fn variables_in_strings_are_replaced_everywhere() {
        let t = run(r#"
            a = "Bearer ${TOKEN}"
            b = ["127.0.0.1:${PORT}", "x"]
            [c]
            d = { e = "${TOKEN}${PORT}" }
        "#)
        .unwrap();
        assert_eq!(t["a"].as_str(), Some("Bearer s3cret"));
        assert_eq!(t["b"][0].as_str(), Some("127.0.0.1:8080"));
        assert_eq!(t["c"]["d"]["e"].as_str(), Some("s3cret8080"));
    }

    #[test]
    fn an_unset_variable_names_its_key() {
        let (key, reason) = run("[server]\nlisten = [\"ok\", \"${NOPE}\"]").unwrap_err();
        assert_eq!(key, "server.listen[1]");
        assert!(reason.contains("NOPE is not set"), "{reason}");
    }

    #[test]
    fn dollars_that_are_not_variables_stay() {
        let t = run(r#"a = "$5 and $${TOKEN} and $""#).unwrap();
        assert_eq!(t["a"].as_str(), Some("$5 and ${TOKEN} and $"));
        assert!(run(r#"a = "${TOKEN""#).unwrap_err().1.contains("closing"));
        assert!(
            run(r#"a = "${1X}""#)
                .unwrap_err()
                .1
                .contains("variable name")
        );
    }
}
