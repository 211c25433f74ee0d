//! # jwt — let through requests carrying a valid JSON Web Token
//!
//! A filter that verifies a bearer token (RFC 7519) with the configured keys
//! and answers `401` when it is missing or invalid, `403` when it is valid
//! but lacks a required scope or claim. Selected claims reach the upstream
//! as headers, and the subject becomes the request's `identity`.
//!
//! ```toml
//! [[pipeline]]
//! plugin = "jwt"
//! routes = ["api"]                          # optional: a stage per route, each
//!                                           # with its own `require`
//! grants = { dirs = { "/keys" = "keys" } }  # for pem_file / jwks_file
//! [pipeline.config]
//! issuer = "https://auth.example.com"
//! audience = "api"
//! keys = [
//!     { alg = "ES256", kid = "2025-01", pem_file = "/keys/es256.pem" },
//!     { alg = "HS256", secret = "a shared secret of 32 bytes or more" },
//! ]
//! jwks_file = "/keys/jwks.json"
//! require = { scopes = ["orders:read"], claims = { tier = ["gold", "silver"] } }
//! forward_claims = { sub = "x-user", email = "x-user-email" }
//! ```
//!
//! Behaviour:
//!
//! - The token is `Authorization: Bearer <token>` (or the header named by
//!   `header`, or the cookie named by `cookie`). Without `forward_token =
//!   true` the header carrying it is removed before the request goes on.
//! - Keys: HS256/384/512 secrets (at least 32 bytes), RS*/PS*, ES256/384
//!   and EdDSA public keys as PEM (inline or a file), and the keys of a
//!   JWKS file. Files are read through the stage's `grants.dirs`, at init,
//!   which runs for every instance the host starts: reload after editing
//!   one (`--watch` does not watch it). A token naming a `kid` is verified with
//!   that key only; otherwise with each key of its algorithm. A key verifies
//!   only its own algorithm (no HS/RS confusion), and `none` never passes.
//! - Checked: the signature; `exp` (required unless `required_claims` says
//!   otherwise), `nbf` and `iat` (not in the future), each with `leeway`
//!   (default 60 s) for clock skew; `iss` against `issuer` and `aud` against
//!   `audience` (a token with an audience is refused unless `audience` is
//!   set); then `require`: scopes (from `scope` or `scp`) and claim values.
//! - Missing token: `401` with `www-authenticate: Bearer realm="…"`.
//!   Invalid: `401` with `error="invalid_token"` and a short
//!   `error_description` (`the token expired`). Valid but not allowed: `403`
//!   with `error="insufficient_scope"` and the scopes it needs (RFC 6750).
//! - Allowed: each of `forward_claims` is set as a header (a client's own
//!   header of that name removed first, present or not in the token), and
//!   `identity_claim` (default `sub`) is kept as the request's `identity`.
//! - Signatures are checked by the host in native code (the `crypto`
//!   import): an ES256 check costs tens of microseconds, not the
//!   milliseconds it would in wasm. HMAC is computed here.
//! - Verified tokens are kept per instance (`cache_size`, default 1024) until
//!   they expire, so a client's next request costs a lookup, not a signature
//!   check.

mod crypto;
mod keys;
mod rules;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use portier_sdk::{Action, Filter, HttpResponse, Request, config, log};
use serde::Deserialize;
use serde_json::{Map, Value};

use keys::{Key, KeyConfig};
use rules::{Denied, OneOrMany, Require, RequireConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    keys: Vec<KeyConfig>,
    jwks_file: Option<String>,
    issuer: Option<OneOrMany>,
    audience: Option<OneOrMany>,
    leeway: Option<String>,
    #[serde(default = "exp_only")]
    required_claims: Vec<String>,
    #[serde(default)]
    require: RequireConfig,
    header: Option<String>,
    cookie: Option<String>,
    #[serde(default)]
    forward_token: bool,
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    #[serde(default = "sub")]
    identity_claim: String,
    realm: Option<String>,
    #[serde(default = "default_cache_size")]
    cache_size: usize,
}

fn exp_only() -> Vec<String> {
    vec!["exp".into()]
}

fn sub() -> String {
    "sub".into()
}

fn default_cache_size() -> usize {
    1024
}

/// Where the token is.
enum Source {
    /// `Authorization: Bearer …`.
    Bearer,
    /// The whole value of another header.
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

/// A verified token, kept for its next use.
struct Verified {
    claims: Rc<Map<String, Value>>,
    exp: Option<u64>,
}

/// The jwt filter.
pub struct Jwt {
    keys: Vec<Key>,
    validation: Validation,
    require: Require,
    source: Source,
    forward_token: bool,
    forward_claims: Vec<(String, String)>,
    identity_claim: String,
    realm: String,
    cache: RefCell<HashMap<String, Verified>>,
    cache_size: usize,
}

/// Why a token is not accepted, as RFC 6750's `error_description`.
type Invalid = &'static str;

const SPEC_CLAIMS: [&str; 6] = ["exp", "nbf", "iat", "iss", "aud", "sub"];

impl Filter for Jwt {
    fn init(json: &str) -> Result<Self, config::Error> {
        // Natively (the unit tests) jsonwebtoken checks with RustCrypto.
        if cfg!(target_arch = "wasm32") {
            crypto::install();
        }
        let c: Config = config::parse(json)?;
        let keys = keys::load(c.keys, c.jwks_file.as_deref())?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = match &c.leeway {
            Some(l) => config::duration_ms(l)
                .map(|ms| ms / 1000)
                .or_else(|e| if l == "0s" { Ok(0) } else { Err(e) })
                .map_err(|e| config::Error::at("leeway", e))?,
            None => 60,
        };
        validation.validate_nbf = true;
        if let Some(i) = c
            .required_claims
            .iter()
            .position(|r| !SPEC_CLAIMS.contains(&r.as_str()))
        {
            return Err(config::Error::at(
                format!("required_claims[{i}]"),
                format!("one of {}", SPEC_CLAIMS.join(", ")),
            ));
        }
        validation.validate_exp = c.required_claims.iter().any(|r| r == "exp");
        validation.set_required_spec_claims(&c.required_claims);
        let list = |v: OneOrMany| match v {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        if let Some(iss) = c.issuer {
            validation.set_issuer(&list(iss));
        }
        if let Some(aud) = c.audience {
            validation.set_audience(&list(aud));
        }
        let source = match (c.header, c.cookie) {
            (Some(_), Some(_)) => {
                return Err(config::Error::at(
                    "cookie",
                    "give header or cookie, not both",
                ));
            }
            (Some(h), None) if h.eq_ignore_ascii_case("authorization") => Source::Bearer,
            (Some(h), None) => {
                Source::Header(config::header_name(&h).map_err(|e| config::Error::at("header", e))?)
            }
            (None, Some(c)) => Source::Cookie(c),
            (None, None) => Source::Bearer,
        };
        let mut forward_claims = Vec::new();
        for (claim, header) in c.forward_claims {
            let h = config::header_name(&header)
                .map_err(|e| config::Error::at(format!("forward_claims.{claim}"), e))?;
            forward_claims.push((claim, h));
        }
        let realm = c.realm.unwrap_or_else(|| "portier".into());
        if realm.contains(['"', '\\']) || realm.bytes().any(|b| b < 0x20) {
            return Err(config::Error::at(
                "realm",
                "no quotes, backslashes or control characters",
            ));
        }
        Ok(Jwt {
            keys,
            validation,
            require: Require::new(c.require).map_err(|e| e.within("require"))?,
            source,
            forward_token: c.forward_token,
            forward_claims,
            identity_claim: c.identity_claim,
            realm,
            cache: RefCell::default(),
            cache_size: c.cache_size,
        })
    }

    fn wants_response(&self) -> bool {
        false
    }

    fn on_request(&self, request: &Request) -> Action {
        let Some(token) = self.token(request) else {
            return Action::Respond(self.challenge(401, ""));
        };
        let claims = match self.verified(&token) {
            Ok(c) => c,
            Err(why) => {
                log::debug(format!("token refused: {why}"));
                return Action::Respond(self.challenge(
                    401,
                    &format!(r#", error="invalid_token", error_description="{why}""#),
                ));
            }
        };
        match self.require.check(&claims) {
            Ok(()) => {}
            Err(Denied::Scopes(missing)) => {
                return Action::Respond(self.challenge(
                    403,
                    &format!(
                        r#", error="insufficient_scope", scope="{}""#,
                        missing.join(" ")
                    ),
                ));
            }
            Err(Denied::Claim(name)) => {
                return Action::Respond(self.challenge(
                    403,
                    &format!(
                        r#", error="insufficient_scope", error_description="claim {name} not allowed""#
                    ),
                ));
            }
        }
        self.pass_on(request, &claims);
        Action::Continue
    }
}

impl Jwt {
    /// The token the request carries, if any.
    fn token(&self, request: &Request) -> Option<String> {
        match &self.source {
            Source::Bearer => {
                let value = request.header("authorization")?;
                let (scheme, token) = value.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_string())
            }
            Source::Header(h) => request.header(h),
            Source::Cookie(name) => request
                .header_all("cookie")
                .iter()
                .flat_map(|c| c.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_string()),
        }
        .filter(|t| !t.is_empty())
    }

    /// The token's claims, verified now or earlier (and not expired since).
    fn verified(&self, token: &str) -> Result<Rc<Map<String, Value>>, Invalid> {
        let now = now();
        if let Some(v) = self.cache.borrow().get(token) {
            if v.exp.is_some_and(|exp| exp + self.validation.leeway < now) {
                return Err("the token expired");
            }
            return Ok(v.claims.clone());
        }
        let claims = Rc::new(self.verify(token, now)?);
        if self.cache_size > 0 {
            let mut cache = self.cache.borrow_mut();
            if cache.len() >= self.cache_size {
                // Bounded, and simple: the clients still active refill it.
                cache.clear();
            }
            let exp = claims.get("exp").and_then(Value::as_u64);
            cache.insert(
                token.to_string(),
                Verified {
                    claims: claims.clone(),
                    exp,
                },
            );
        }
        Ok(claims)
    }

    /// Check the signature and the registered claims.
    fn verify(&self, token: &str, now: u64) -> Result<Map<String, Value>, Invalid> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        let candidates = self.keys.iter().filter(|k| {
            k.algs.contains(&header.alg)
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        });
        let mut why = if header.kid.is_some() {
            "unknown key id"
        } else {
            "no key for the token's algorithm"
        };
        for key in candidates {
            let mut validation = self.validation.clone();
            validation.algorithms = vec![header.alg];
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    let iat = data.claims.get("iat").and_then(Value::as_u64);
                    if iat.is_some_and(|iat| iat > now + self.validation.leeway) {
                        return Err("the token was issued in the future");
                    }
                    return Ok(data.claims);
                }
                Err(e) => {
                    why = describe(e.kind());
                    // Only a bad signature may be another key's token.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        return Err(why);
                    }
                }
            }
        }
        Err(why)
    }

    /// Claims to headers (replacing any the client sent), the identity into
    /// the request's context, the token out of the request.
    fn pass_on(&self, request: &Request, claims: &Map<String, Value>) {
        for (claim, header) in &self.forward_claims {
            request.remove_header(header);
            if let Some(v) = claims.get(claim)
                && let Err(e) = request.set_header(header, &rules::header_value(v))
            {
                log::warn(format!("cannot pass claim {claim} on as {header}: {e}"));
            }
        }
        if let Some(id) = claims.get(&self.identity_claim)
            && let Err(e) = request.context_set("identity", &rules::header_value(id))
        {
            log::warn(format!("cannot keep the identity: {e}"));
        }
        if !self.forward_token {
            match &self.source {
                Source::Bearer => request.remove_header("authorization"),
                Source::Header(h) => request.remove_header(h),
                // Other cookies in the header may matter to the upstream.
                Source::Cookie(_) => {}
            }
        }
    }

    /// A 401 or 403 with RFC 6750's challenge.
    fn challenge(&self, status: u16, error: &str) -> HttpResponse {
        let text = if status == 401 {
            "401 Unauthorized\n"
        } else {
            "403 Forbidden\n"
        };
        HttpResponse::text(status, text).header(
            "www-authenticate",
            format!(r#"Bearer realm="{}"{error}"#, self.realm),
        )
    }
}

/// What went wrong, in a few words a client may see.
fn describe(kind: &ErrorKind) -> Invalid {
    match kind {
        ErrorKind::ExpiredSignature => "the token expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm => "algorithm not allowed",
        _ => "malformed token",
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

portier_sdk::export_filter!(Jwt);

#[cfg(test)]
mod tests;
