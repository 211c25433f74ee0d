//! Reading a cookie from a request and writing the `Set-Cookie` header,
//! free of host calls.

/// The value of the first cookie called `name` in these `Cookie` header
/// values (HTTP/2 clients may send several headers). Names match exactly,
/// as browsers send them; surrounding double quotes are dropped.
pub fn find<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, value)| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
}

/// How the balancer's cookie is set: its name and attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetCookie {
    /// The cookie's name.
    pub name: String,
    /// `Max-Age` in seconds; `None` makes a session cookie, gone when the
    /// browser closes.
    pub max_age: Option<u64>,
    /// Whether to add `Secure` (sent over HTTPS only).
    pub secure: bool,
}

impl SetCookie {
    /// The `Set-Cookie` header value carrying `value`. `Path=/` so every
    /// path of the site sticks to the same endpoint; `HttpOnly` because no
    /// script has any use for it; `SameSite=Lax` so it still comes along
    /// when a user follows a link from another site.
    pub fn header(&self, value: &str) -> String {
        let mut header = format!("{}={value}; Path=/; HttpOnly; SameSite=Lax", self.name);
        if let Some(seconds) = self.max_age {
            header.push_str(&format!("; Max-Age={seconds}"));
        }
        if self.secure {
            header.push_str("; Secure");
        }
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn finds_a_cookie_among_others_and_across_headers() {
        let h = headers(&["a=1; portier-sticky=abc; b=2"]);
        assert_eq!(find(&h, "portier-sticky"), Some("abc"));
        assert_eq!(find(&h, "a"), Some("1"));
        let h = headers(&["a=1", "session=\"xyz\""]);
        assert_eq!(find(&h, "session"), Some("xyz"));
        let h = headers(&["a=1;b=2;  c = 3 "]);
        assert_eq!(find(&h, "c"), Some("3"));
        assert_eq!(find(&h, "A"), None, "names are case-sensitive");
        assert_eq!(find(&h, "d"), None);
        assert_eq!(find(&headers(&["flag; x=1"]), "flag"), None);
        assert_eq!(find(&headers(&["x=1; x=2"]), "x"), Some("1"), "first wins");
        assert_eq!(find(&[], "x"), None);
    }

    #[test]
    fn tokens() {
        assert!(portier_sdk::config::is_token("portier-sticky"));
        assert!(portier_sdk::config::is_token("X-User_1"));
        assert!(!portier_sdk::config::is_token(""));
        assert!(!portier_sdk::config::is_token("a b"));
        assert!(!portier_sdk::config::is_token("a=b"));
        assert!(!portier_sdk::config::is_token("a;b"));
    }

    #[test]
    fn set_cookie_has_the_right_attributes() {
        let mut cookie = SetCookie {
            name: "portier-sticky".to_string(),
            max_age: None,
            secure: false,
        };
        assert_eq!(
            cookie.header("v1"),
            "portier-sticky=v1; Path=/; HttpOnly; SameSite=Lax"
        );
        cookie.max_age = Some(3600);
        cookie.secure = true;
        assert_eq!(
            cookie.header("v1"),
            "portier-sticky=v1; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600; Secure"
        );
    }
}
