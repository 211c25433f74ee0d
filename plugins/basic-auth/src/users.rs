//! The users and their password hashes: inline, and from an htpasswd file
//! as `htpasswd` writes it (and nginx's `auth_basic_user_file` reads it).
//! Free of host calls: unit-tested natively.

use std::collections::HashMap;

use portier_sdk::config::Error;

/// Hash schemes the host checks (`crypto.verify-password`).
const SCHEMES: [&str; 10] = [
    "$2a$", "$2b$", "$2x$", "$2y$", "$argon2", "$5$", "$6$", "$apr1$", "$1$", "{SHA}",
];

/// Whether the host can check this hash.
pub fn supported(hash: &str) -> bool {
    SCHEMES.iter().any(|s| hash.starts_with(s))
}

/// Add the users of an htpasswd file's `text` (`name:hash` lines; blank
/// lines and `#` comments skipped) to `users`.
pub fn parse_htpasswd(text: &str, users: &mut HashMap<String, String>) -> Result<(), String> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let (name, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("line {n}: expected name:hash"))?;
        check(name, hash).map_err(|e| format!("line {n}: {e}"))?;
        users.insert(name.to_string(), hash.to_string());
    }
    Ok(())
}

/// A user as the config or a file names it.
pub fn check(name: &str, hash: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(':') || name.bytes().any(|b| b < 0x20) {
        return Err(format!(
            "{name:?}: a user name is non-empty, without ':' or control characters"
        ));
    }
    if !supported(hash) {
        return Err(format!(
            "user {name:?}: unsupported hash (bcrypt $2y$, Argon2, SHA-crypt $5$/$6$, MD5-crypt $apr1$ or {{SHA}}; \
             not plain text or DES crypt)"
        ));
    }
    Ok(())
}

/// Users from `inline` and the file's text, checked.
pub fn load(
    inline: HashMap<String, String>,
    file: Option<(&str, String)>,
) -> Result<HashMap<String, String>, Error> {
    let mut users = HashMap::new();
    for (name, hash) in inline {
        check(&name, &hash).map_err(|e| Error::at(format!("users.{name}"), e))?;
        users.insert(name, hash);
    }
    if let Some((path, text)) = file {
        parse_htpasswd(&text, &mut users)
            .map_err(|e| Error::at("htpasswd_file", format!("{path}: {e}")))?;
    }
    if users.is_empty() {
        return Err(Error::at(
            "users",
            "give at least one user (or an htpasswd_file)",
        ));
    }
    Ok(users)
}

/// `Basic <base64(user:password)>` (RFC 7617), decoded.
pub fn credentials(authorization: &str) -> Option<(String, String)> {
    let (scheme, encoded) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64(encoded.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_files_as_htpasswd_writes_them() {
        let mut users = HashMap::new();
        let text = "# staff\nalice:$apr1$saltsalt$E5Rr3dOVSFY9DZAksLuwO/\r\n\nbob:{SHA}V7KtmQRNM3GXwMOf04I1aP+B5Io=\n";
        parse_htpasswd(text, &mut users).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users["alice"].starts_with("$apr1$"));
        let err = parse_htpasswd("alice\n", &mut users).unwrap_err();
        assert_eq!(err, "line 1: expected name:hash");
        let err = parse_htpasswd("\ncarol:plaintext\n", &mut users).unwrap_err();
        assert!(
            err.starts_with("line 2: user \"carol\": unsupported hash"),
            "{err}"
        );
    }

    #[test]
    fn basic_credentials_are_decoded() {
        // "alice:p@ss:word" — a password may contain ':'.
        assert_eq!(
            credentials("Basic YWxpY2U6cEBzczp3b3Jk"),
            Some(("alice".into(), "p@ss:word".into()))
        );
        assert_eq!(
            credentials("basic YWxpY2U6"),
            Some(("alice".into(), String::new()))
        );
        assert_eq!(credentials("Bearer YWxpY2U6"), None);
        assert_eq!(credentials("Basic !!!"), None);
        assert_eq!(credentials("Basic YWxpY2U"), None); // no ':'
    }
}
