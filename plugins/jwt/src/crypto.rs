//! jsonwebtoken's signature checks, done by the host: asymmetric ones in its
//! native code (`portier_sdk::crypto`), where an ES256 check costs tens of
//! microseconds instead of the milliseconds it costs in wasm; HMAC here,
//! where it is cheap. The plugin only verifies: it never signs.

use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{Error as SignatureError, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use portier_sdk::crypto::{self, SignatureAlgorithm as Host};
use sha2::{Sha256, Sha384, Sha512};

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signing,
    verifier_factory: verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Make the host's checks jsonwebtoken's (once per instance).
pub fn install() {
    // Already installed by an earlier `init` of this instance: fine.
    let _ = PROVIDER.install_default();
}

fn no_signing(_: &Algorithm, _: &jsonwebtoken::EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Err(ErrorKind::UnsupportedAlgorithm.into())
}

/// One check: the algorithm and the key's bytes as the host takes them.
struct Check {
    alg: Algorithm,
    key: Vec<u8>,
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let key = match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => bytes.clone(),
        // From a JWK's n and e: the DER RSAPublicKey the host reads.
        DecodingKeyKind::RsaModulusExponent { n, e } => rsa_public_key_der(n, e),
    };
    Ok(Box::new(Check { alg: *alg, key }))
}

impl Verifier<Vec<u8>> for Check {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), SignatureError> {
        let host = match self.alg {
            Algorithm::HS256 => return hmac::<Hmac<Sha256>>(&self.key, message, signature),
            Algorithm::HS384 => return hmac::<Hmac<Sha384>>(&self.key, message, signature),
            Algorithm::HS512 => return hmac::<Hmac<Sha512>>(&self.key, message, signature),
            Algorithm::ES256 => Host::EcdsaP256Sha256,
            Algorithm::ES384 => Host::EcdsaP384Sha384,
            Algorithm::RS256 => Host::RsaPkcs1Sha256,
            Algorithm::RS384 => Host::RsaPkcs1Sha384,
            Algorithm::RS512 => Host::RsaPkcs1Sha512,
            Algorithm::PS256 => Host::RsaPssSha256,
            Algorithm::PS384 => Host::RsaPssSha384,
            Algorithm::PS512 => Host::RsaPssSha512,
            Algorithm::EdDSA => Host::Ed25519,
            _ => return Err(SignatureError::new()),
        };
        if crypto::verify(host, &self.key, message, signature) {
            Ok(())
        } else {
            Err(SignatureError::new())
        }
    }
}

impl JwtVerifier for Check {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// A constant-time HMAC comparison.
fn hmac<M: Mac + hmac::digest::KeyInit>(
    key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> std::result::Result<(), SignatureError> {
    let mut mac = <M as Mac>::new_from_slice(key).map_err(|_| SignatureError::new())?;
    mac.update(message);
    mac.verify_slice(signature)
        .map_err(|_| SignatureError::new())
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = integer(n);
    body.extend(integer(e));
    let mut out = vec![0x30];
    out.extend(length(body.len()));
    out.extend(body);
    out
}

fn integer(unsigned: &[u8]) -> Vec<u8> {
    let digits: Vec<u8> = unsigned.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::with_capacity(digits.len() + 1);
    // A leading 1 bit would make it negative.
    if digits.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(digits);
    let mut out = vec![0x02];
    out.extend(length(content.len()));
    out.extend(content);
    out
}

fn length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes: Vec<u8> = len
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_components_become_der() {
        // n = 0x80 0x01 (high bit set: a 0 is prepended), e = 65537.
        assert_eq!(
            rsa_public_key_der(&[0x80, 0x01], &[0x01, 0x00, 0x01]),
            [
                0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01
            ]
        );
        assert_eq!(length(300), [0x82, 0x01, 0x2c]);
        assert_eq!(integer(&[0, 0, 5]), [0x02, 0x01, 0x05]);
    }
}
