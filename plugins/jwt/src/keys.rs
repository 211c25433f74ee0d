//! The keys tokens are verified with: inline secrets and PEM, PEM files and
//! a JWKS file (files through the stage's `grants.dirs`), read at `init`, so
//! every reload reads them again. Free of host calls: unit-tested natively.

use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use portier_sdk::config::Error;
use serde::Deserialize;

/// One entry of `keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    alg: String,
    kid: Option<String>,
    secret: Option<String>,
    secret_base64: Option<String>,
    pem: Option<String>,
    pem_file: Option<String>,
}

/// A key, the algorithms it verifies, and its id.
pub struct Key {
    /// `kid`: a token naming one is verified with that key only.
    pub kid: Option<String>,
    /// The algorithms this key accepts: one when configured, the key
    /// type's when a JWK does not say.
    pub algs: Vec<Algorithm>,
    /// The key itself.
    pub key: DecodingKey,
}

/// Every key of the config: `keys` in order, then the JWKS file's.
pub fn load(keys: Vec<KeyConfig>, jwks_file: Option<&str>) -> Result<Vec<Key>, Error> {
    let mut out = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
        out.push(one(k).map_err(|e| e.within(&format!("keys[{i}]")))?);
    }
    if let Some(path) = jwks_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::at("jwks_file", format!("cannot read {path}: {e}")))?;
        out.extend(jwks(&text).map_err(|e| e.within("jwks_file"))?);
    }
    if out.is_empty() {
        return Err(Error::at("keys", "give at least one key (or a jwks_file)"));
    }
    Ok(out)
}

fn one(k: KeyConfig) -> Result<Key, Error> {
    let alg = Algorithm::from_str(&k.alg).map_err(|_| {
        Error::at(
            "alg",
            format!(
                "{:?}: expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA",
                k.alg
            ),
        )
    })?;
    let pem = match (k.pem, k.pem_file) {
        (Some(_), Some(_)) => return Err(Error::at("pem_file", "give pem or pem_file, not both")),
        (Some(p), None) => Some(p),
        (None, Some(path)) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| Error::at("pem_file", format!("cannot read {path}: {e}")))?,
        ),
        (None, None) => None,
    };
    let bad = |what: &str, e: jsonwebtoken::errors::Error| {
        Error::at(what, format!("not a usable key: {e}"))
    };
    let key = match (alg.family(), k.secret, k.secret_base64, pem) {
        (AlgorithmFamily::Hmac, Some(s), None, None) => {
            if s.len() < 32 {
                return Err(Error::at(
                    "secret",
                    "at least 32 bytes: a shorter HMAC secret can be guessed offline from one token",
                ));
            }
            DecodingKey::from_secret(s.as_bytes())
        }
        (AlgorithmFamily::Hmac, None, Some(b), None) => {
            DecodingKey::from_base64_secret(&b).map_err(|e| bad("secret_base64", e))?
        }
        (AlgorithmFamily::Hmac, ..) => {
            return Err(Error::at(
                "secret",
                format!("{} needs exactly one of secret or secret_base64", k.alg),
            ));
        }
        (family, None, None, Some(pem)) => match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem.as_bytes()),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem.as_bytes()),
            AlgorithmFamily::Hmac => unreachable!("matched above"),
        }
        .map_err(|e| bad("pem", e))?,
        _ => {
            return Err(Error::at(
                "pem",
                format!(
                    "{} needs a public key: pem or pem_file (and no secret)",
                    k.alg
                ),
            ));
        }
    };
    Ok(Key {
        kid: k.kid,
        algs: vec![alg],
        key,
    })
}

/// The keys of a JWKS document (RFC 7517). A key without `alg` accepts its
/// type's algorithms (an RSA key RS* and PS*; an EC key its curve's).
pub fn jwks(text: &str) -> Result<Vec<Key>, Error> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| Error::from(format!("not a JWKS document: {e}")))?;
    let mut out = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let at = |m: String| Error::at(format!("keys[{i}]"), m);
        let algs = match jwk.common.key_algorithm {
            Some(a) => vec![
                Algorithm::from_str(&a.to_string())
                    .map_err(|_| at(format!("algorithm {a} is not supported")))?,
            ],
            None => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => return Err(at("only P-256 and P-384 EC keys are supported".into())),
                },
                AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
                AlgorithmParameters::OctetKey(_) => AlgorithmFamily::Hmac.algorithms().to_vec(),
                _ => return Err(at("unsupported key type".into())),
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| at(format!("not a usable key: {e}")))?;
        out.push(Key {
            kid: jwk.common.key_id.clone(),
            algs,
            key,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Result<Vec<Key>, String> {
        let keys: Vec<KeyConfig> = serde_json::from_str(json).unwrap();
        load(keys, None).map_err(|e| e.to_string())
    }

    #[test]
    fn secrets_must_be_long_and_alone() {
        let long = "k".repeat(32);
        assert_eq!(
            config(&format!(r#"[{{"alg": "HS256", "secret": "{long}"}}]"#))
                .unwrap()
                .len(),
            1
        );
        let err = config(r#"[{"alg": "HS256", "secret": "short"}]"#)
            .err()
            .unwrap();
        assert!(
            err.starts_with("keys[0].secret: at least 32 bytes"),
            "{err}"
        );
        let err = config(r#"[{"alg": "HS256"}]"#).err().unwrap();
        assert!(
            err.starts_with("keys[0].secret: HS256 needs exactly one"),
            "{err}"
        );
        let err = config(r#"[{"alg": "ES256", "secret": "x"}]"#)
            .err()
            .unwrap();
        assert!(
            err.starts_with("keys[0].pem: ES256 needs a public key"),
            "{err}"
        );
        let err = config(r#"[{"alg": "XS256", "secret": "x"}]"#)
            .err()
            .unwrap();
        assert!(
            err.starts_with(r#"keys[0].alg: "XS256": expected"#),
            "{err}"
        );
        let err = config(r#"[{"alg": "ES256", "pem": "not a pem"}]"#)
            .err()
            .unwrap();
        assert!(err.starts_with("keys[0].pem: not a usable key"), "{err}");
        let err = config("[]").err().unwrap();
        assert!(err.starts_with("keys: give at least one key"), "{err}");
    }

    #[test]
    fn jwks_keys_take_their_type_s_algorithms_when_they_name_none() {
        let doc = r#"{"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec1",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "oct", "kid": "h1", "alg": "HS384", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}
        ]}"#;
        let keys = jwks(doc).unwrap();
        assert_eq!(keys[0].kid.as_deref(), Some("ec1"));
        assert_eq!(keys[0].algs, [Algorithm::ES256]);
        assert_eq!(keys[1].algs, [Algorithm::HS384]);
        let err = jwks("{").err().unwrap().to_string();
        assert!(err.starts_with("not a JWKS document"), "{err}");
    }
}
