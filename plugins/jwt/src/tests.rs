//! The verification path, natively: tokens signed here with fixed test keys.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;

const EC_PRIVATE: &str = r#"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggIWu+q5ytsvWmewP
9fCPiKoL7Cil/wUyHkOd8z+NblKhRANCAAT+FWO/VZ3p+xbbcx3hk7Fo6wQPEdA1
6hjtMAdeK1Ei15wZPlAPFFVte+Tvre8FoEvOC1gtrwy8XE6i7Yry8UPw
-----END PRIVATE KEY-----"#;
const EC_PUBLIC: &str = r#"-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE/hVjv1Wd6fsW23Md4ZOxaOsEDxHQ
NeoY7TAHXitRItecGT5QDxRVbXvk763vBaBLzgtYLa8MvFxOou2K8vFD8A==
-----END PUBLIC KEY-----"#;
const ED_PRIVATE: &str = r#"-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIF2dzID755QUQgzYKFGZd+mctuM+54Xvkjt6O1kpyCwX
-----END PRIVATE KEY-----"#;
const ED_PUBLIC: &str = r#"-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAZc+I4+ufB0kkTFMzkHn+qsYXQdQIXzQTjL6sdaAk2C8=
-----END PUBLIC KEY-----"#;
const SECRET: &str = "a shared secret of at least 32 bytes!";

fn jwt(extra: &str) -> Jwt {
    let config = format!(
        r#"{{"keys": [
            {{"alg": "ES256", "kid": "ec", "pem": {ec}}},
            {{"alg": "EdDSA", "pem": {ed}}},
            {{"alg": "HS256", "secret": "{SECRET}"}}
        ]{extra}}}"#,
        ec = serde_json::to_string(EC_PUBLIC).unwrap(),
        ed = serde_json::to_string(ED_PUBLIC).unwrap(),
    );
    Jwt::init(&config).unwrap_or_else(|e| panic!("{e}"))
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        _ => EncodingKey::from_secret(SECRET.as_bytes()),
    };
    encode(&header, &claims, &key).unwrap()
}

fn in_an_hour() -> u64 {
    now() + 3600
}

#[test]
fn tokens_of_every_configured_algorithm_verify() {
    let j = jwt("");
    for (alg, kid) in [
        (Algorithm::ES256, Some("ec")),
        (Algorithm::EdDSA, None),
        (Algorithm::HS256, None),
    ] {
        let t = sign(alg, kid, json!({"sub": "alice", "exp": in_an_hour()}));
        let claims = j.verified(&t).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(claims["sub"], "alice");
    }
}

#[test]
fn bad_tokens_say_why() {
    let j = jwt(r#", "issuer": "https://auth", "audience": ["api"]"#);
    let ok = json!({"iss": "https://auth", "aud": "api", "exp": in_an_hour()});
    let with = |patch: serde_json::Value| {
        let mut c = ok.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    assert!(
        j.verified(&sign(Algorithm::HS256, None, ok.clone()))
            .is_ok()
    );
    let cases = [
        (with(json!({"exp": now() - 3600})), "the token expired"),
        (
            with(json!({"nbf": now() + 3600})),
            "the token is not valid yet",
        ),
        (
            with(json!({"iat": now() + 3600})),
            "the token was issued in the future",
        ),
        (with(json!({"iss": "https://evil"})), "wrong issuer"),
        (with(json!({"aud": "other"})), "wrong audience"),
        (
            json!({"iss": "https://auth", "aud": "api"}),
            "a required claim is missing",
        ),
    ];
    for (claims, why) in cases {
        let t = sign(Algorithm::HS256, None, claims.clone());
        assert_eq!(j.verify(&t, now()).err(), Some(why), "{claims}");
    }
    // Tampered payload, unknown kid, no key for the algorithm, garbage.
    let t = sign(Algorithm::ES256, Some("ec"), ok.clone());
    let mut parts: Vec<&str> = t.split('.').collect();
    let forged = sign(Algorithm::ES256, Some("ec"), with(json!({"sub": "root"})));
    parts[1] = forged.split('.').nth(1).unwrap();
    assert_eq!(
        j.verify(&parts.join("."), now()).err(),
        Some("bad signature")
    );
    let t = sign(Algorithm::ES256, Some("other"), ok.clone());
    assert_eq!(j.verify(&t, now()).err(), Some("unknown key id"));
    let t = sign(Algorithm::HS384, None, ok.clone());
    assert_eq!(
        j.verify(&t, now()).err(),
        Some("no key for the token's algorithm")
    );
    assert_eq!(
        j.verify("not.a.token", now()).err(),
        Some("malformed token")
    );
    // alg "none" is never a key's algorithm.
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&ok.to_string())
    );
    assert!(j.verify(&unsigned, now()).is_err());
}

#[test]
fn a_token_with_an_audience_needs_one_configured() {
    let j = jwt("");
    let t = sign(
        Algorithm::HS256,
        None,
        json!({"aud": "api", "exp": in_an_hour()}),
    );
    assert_eq!(j.verify(&t, now()).err(), Some("wrong audience"));
}

#[test]
fn verified_tokens_are_kept_until_they_expire() {
    let j = jwt(r#", "leeway": "0s""#);
    let t = sign(
        Algorithm::ES256,
        Some("ec"),
        json!({"sub": "a", "exp": now() + 1}),
    );
    assert!(j.verified(&t).is_ok());
    assert_eq!(j.cache.borrow().len(), 1);
    // A cached token still expires.
    j.cache.borrow_mut().get_mut(&t).unwrap().exp = Some(now() - 10);
    assert_eq!(j.verified(&t).err(), Some("the token expired"));
}

#[test]
fn config_errors_name_their_key() {
    let err = |json: &str| Jwt::init(json).err().unwrap().to_string();
    assert!(err(r#"{"keys": []}"#).starts_with("keys: give at least one key"));
    assert!(
        err(&format!(r#"{{"keys": [{{"alg": "HS256", "secret": "{SECRET}"}}], "required_claims": ["exp", "jti"]}}"#))
            .starts_with("required_claims[1]: one of exp")
    );
    assert!(
        err(&format!(r#"{{"keys": [{{"alg": "HS256", "secret": "{SECRET}"}}], "forward_claims": {{"sub": "x user"}}}}"#))
            .starts_with("forward_claims.sub: invalid header name")
    );
    assert!(
        err(&format!(r#"{{"keys": [{{"alg": "HS256", "secret": "{SECRET}"}}], "require": {{"scopes": ["a b"]}}}}"#))
            .starts_with("require.scopes[0]: a scope is one word")
    );
    assert!(
        err(r#"{"keys": [{"alg": "RS256", "pem_file": "/nope.pem"}]}"#)
            .starts_with("keys[0].pem_file: cannot read /nope.pem")
    );
}

fn b64(text: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
