//! Checks done by the host in native code: signatures — ECDSA (P-256,
//! P-384), RSA (PKCS#1 v1.5 and PSS, 2048 to 8192 bits) and Ed25519, as JWS
//! signs — and password hashes as htpasswd files store them. A signature
//! check that costs wasm a millisecond or more costs the host tens of
//! microseconds, which matters when every request carries a token; a
//! password check runs on one of the host's blocking threads.
//!
//! ```no_run
//! use portier_sdk::crypto::{self, SignatureAlgorithm};
//!
//! # let (point, message, signature) = (vec![4u8; 65], b"header.payload", vec![0u8; 64]);
//! // An ES256 JWS: the key is an uncompressed SEC1 point, the signature r||s.
//! let valid = crypto::verify(SignatureAlgorithm::EcdsaP256Sha256, &point, message, &signature);
//! ```

/// What a signature was made with.
pub use crate::wit::crypto::SignatureAlgorithm;

/// Whether `signature` is a valid `algorithm` signature of `message` under
/// `public_key`: an uncompressed SEC1 point (ECDSA, fixed-size `r||s`
/// signatures), a DER `RSAPublicKey` (RSA), or 32 raw bytes (Ed25519). A
/// malformed key or signature is simply not valid.
pub fn verify(
    algorithm: SignatureAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    crate::wit::crypto::verify(algorithm, public_key, message, signature)
}

/// Whether `password` matches `hash` as password files store it: bcrypt
/// (`$2y$`…), Argon2 (`$argon2id$`…), SHA-crypt (`$5$`, `$6$`), MD5-crypt
/// (`$apr1$`, `$1$`) or `{SHA}`. Slow on purpose (bcrypt takes tens of
/// milliseconds), so the host runs it off its event loop and does not
/// charge the wait to the stage's `call_timeout`. `Err` names a scheme the
/// host does not check, or a malformed hash.
pub fn verify_password(password: &str, hash: &str) -> Result<bool, String> {
    crate::wit::crypto::verify_password(password, hash)
}
