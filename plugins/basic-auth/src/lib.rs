//! # basic-auth — user names and passwords (RFC 7617)
//!
//! A filter that lets through requests whose `Authorization: Basic`
//! credentials match a user's password hash, from the config or from an
//! htpasswd file as nginx users keep them, and answers the rest with `401`
//! and a challenge the browser shows as a login box.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "basic-auth"
//! routes = ["admin"]
//! grants = { dirs = { "/auth" = "auth" } }     # where the htpasswd file is
//! [pipeline.config]
//! realm = "Staff only"
//! htpasswd_file = "/auth/htpasswd"             # htpasswd -B -c auth/htpasswd alice
//! users = { ci = "$2y$10$…" }                  # and/or inline
//! identity_header = "x-user"                   # the user's name, for the upstream
//! ```
//!
//! Behaviour:
//!
//! - Hashes: bcrypt (`htpasswd -B`), Argon2, SHA-crypt (`$5$`, `$6$`),
//!   MD5-crypt (`$apr1$`, htpasswd's default, and `$1$`) and `{SHA}`,
//!   checked by the host in native code off its event loop. Plain-text
//!   and DES-crypt entries are refused at init.
//! - The file is read (through the stage's `grants.dirs`) by `init`, which
//!   runs for every instance the host starts: adding a user is an edit and
//!   a reload (`--watch` does not watch the file; until the reload, only
//!   instances started after the edit see it).
//! - Missing or wrong credentials, or an unknown user: `401` with
//!   `www-authenticate: Basic realm="…", charset="UTF-8"`.
//! - Valid: the user is the request context's `identity` (a later
//!   `rate-limit` with `key = "identity"` limits each user) and, with
//!   `identity_header`, a header for the upstream (a client's copy always
//!   removed); `Authorization` is removed unless `forward_authorization`.
//! - A check costs what its hash costs (bcrypt at cost 10: tens of
//!   milliseconds), so successful ones are kept per instance (`cache_size`,
//!   default 1024, as SHA-256 digests of the credentials); put a rate limit
//!   by client IP before this stage against guessing.

mod users;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use portier_sdk::{Action, Filter, HttpResponse, Request, config, crypto, log};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    realm: Option<String>,
    #[serde(default)]
    users: HashMap<String, String>,
    htpasswd_file: Option<String>,
    identity_header: Option<String>,
    #[serde(default)]
    forward_authorization: bool,
    #[serde(default = "default_cache_size")]
    cache_size: usize,
}

fn default_cache_size() -> usize {
    1024
}

/// The basic-auth filter.
pub struct BasicAuth {
    users: HashMap<String, String>,
    challenge: String,
    identity_header: Option<String>,
    forward_authorization: bool,
    /// Digests of credentials checked good since this instance started.
    good: RefCell<HashSet<[u8; 32]>>,
    cache_size: usize,
}

impl Filter for BasicAuth {
    fn init(json: &str) -> Result<Self, config::Error> {
        let c: Config = config::parse(json)?;
        let file = match &c.htpasswd_file {
            Some(path) => Some((
                path.as_str(),
                std::fs::read_to_string(path).map_err(|e| {
                    config::Error::at("htpasswd_file", format!("cannot read {path}: {e}"))
                })?,
            )),
            None => None,
        };
        let users = users::load(c.users, file)?;
        let realm = c.realm.unwrap_or_else(|| "portier".into());
        if realm.contains(['"', '\\']) || realm.bytes().any(|b| b < 0x20) {
            return Err(config::Error::at(
                "realm",
                "no quotes, backslashes or control characters",
            ));
        }
        let identity_header = match c.identity_header {
            Some(h)
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                return Err(config::Error::at(
                    "identity_header",
                    format!("invalid header name {h:?}"),
                ));
            }
            h => h.map(|h| h.to_ascii_lowercase()),
        };
        Ok(BasicAuth {
            users,
            challenge: format!(r#"Basic realm="{realm}", charset="UTF-8""#),
            identity_header,
            forward_authorization: c.forward_authorization,
            good: RefCell::default(),
            cache_size: c.cache_size,
        })
    }

    fn wants_response(&self) -> bool {
        false
    }

    fn on_request(&self, request: &Request) -> Action {
        let user = request
            .header("authorization")
            .and_then(|a| users::credentials(&a))
            .and_then(|(user, password)| self.check(&user, &password).then_some(user));
        let Some(user) = user else {
            return Action::Respond(
                HttpResponse::text(401, "401 Unauthorized\n")
                    .header("www-authenticate", &self.challenge),
            );
        };
        if !self.forward_authorization {
            request.remove_header("authorization");
        }
        if let Some(h) = &self.identity_header {
            request.remove_header(h);
            if let Err(e) = request.set_header(h, &user) {
                log::warn(format!("cannot pass the user on as {h}: {e}"));
            }
        }
        if let Err(e) = request.context_set("identity", &user) {
            log::warn(format!("cannot keep the identity: {e}"));
        }
        Action::Continue
    }
}

impl BasicAuth {
    /// Whether `password` is `user`'s, from the cache or the host's check.
    fn check(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let mut key = Sha256::new();
        key.update(user.as_bytes());
        key.update([0]);
        key.update(password.as_bytes());
        let key: [u8; 32] = key.finalize().into();
        if self.good.borrow().contains(&key) {
            return true;
        }
        match crypto::verify_password(password, hash) {
            Ok(true) => {
                if self.cache_size > 0 {
                    let mut good = self.good.borrow_mut();
                    if good.len() >= self.cache_size {
                        good.clear();
                    }
                    good.insert(key);
                }
                true
            }
            Ok(false) => false,
            Err(e) => {
                log::error(format!("user {user:?}: {e}"));
                false
            }
        }
    }
}

portier_sdk::export_filter!(BasicAuth);
