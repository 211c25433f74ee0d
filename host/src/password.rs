//! Password hashes as htpasswd files and user databases hold them, checked
//! in native code for plugins (the `crypto` import's `verify-password`):
//! bcrypt, Argon2, SHA-crypt (`$5$`, `$6$`), MD5-crypt (`$apr1$`, `$1$`)
//! and `{SHA}`. Checks are slow on purpose (bcrypt at cost 10 takes tens of
//! milliseconds), so callers run them off the event loop.

use base64::Engine as _;
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Why a hash could not be checked (as opposed to "wrong password").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// A scheme this host does not check.
    #[error(
        "unsupported hash {0:?}: expected bcrypt ($2y$), Argon2 ($argon2id$), SHA-crypt ($5$, $6$), MD5-crypt ($apr1$, $1$) or {{SHA}}"
    )]
    Unsupported(String),
    /// A known scheme, malformed.
    #[error("malformed {0} hash")]
    Malformed(&'static str),
}

/// Whether `password` matches `hash`.
pub fn verify(password: &str, hash: &str) -> Result<bool, HashError> {
    let scheme = |prefix: &str| hash.starts_with(prefix);
    if ["$2a$", "$2b$", "$2x$", "$2y$"].iter().any(|p| scheme(p)) {
        return bcrypt::verify(password, hash).map_err(|_| HashError::Malformed("bcrypt"));
    }
    if scheme("$argon2") {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let parsed = PasswordHash::new(hash).map_err(|_| HashError::Malformed("Argon2"))?;
        return Ok(argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok());
    }
    if scheme("$6$") {
        return Ok(sha_crypt::sha512_check(password, hash).is_ok());
    }
    if scheme("$5$") {
        return Ok(sha_crypt::sha256_check(password, hash).is_ok());
    }
    for magic in ["$apr1$", "$1$"] {
        if let Some(rest) = hash.strip_prefix(magic) {
            let (salt, _) = rest
                .split_once('$')
                .ok_or(HashError::Malformed("MD5-crypt"))?;
            let expected = md5_crypt(password.as_bytes(), salt.as_bytes(), magic.as_bytes());
            return Ok(bool::from(expected.as_bytes().ct_eq(hash.as_bytes())));
        }
    }
    if let Some(b64) = hash.strip_prefix("{SHA}") {
        let digest = sha1::Sha1::digest(password.as_bytes());
        let expected = base64::engine::general_purpose::STANDARD.encode(digest);
        return Ok(bool::from(expected.as_bytes().ct_eq(b64.as_bytes())));
    }
    let shown: String = hash.chars().take(8).collect();
    Err(HashError::Unsupported(format!("{shown}…")))
}

/// MD5-crypt (Poul-Henning Kamp's, and Apache's `$apr1$` variant, which
/// differs only in its magic): the whole hash string it gives.
fn md5_crypt(password: &[u8], salt: &[u8], magic: &[u8]) -> String {
    let salt = &salt[..salt.len().min(8)];
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(magic);
    ctx.update(salt);
    for chunk in password.chunks(16) {
        ctx.update(&alt[..chunk.len()]);
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut sum = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(sum);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(sum);
        } else {
            c.update(password);
        }
        sum = c.finalize();
    }
    let mut out = String::from_utf8_lossy(magic).into_owned();
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let b = |i: usize| u32::from(sum[i]);
    for (v, n) in [
        ((b(0) << 16) | (b(6) << 8) | b(12), 4),
        ((b(1) << 16) | (b(7) << 8) | b(13), 4),
        ((b(2) << 16) | (b(8) << 8) | b(14), 4),
        ((b(3) << 16) | (b(9) << 8) | b(15), 4),
        ((b(4) << 16) | (b(10) << 8) | b(5), 4),
        (b(11), 2),
    ] {
        to64(&mut out, v, n);
    }
    out
}

fn to64(out: &mut String, mut v: u32, n: usize) {
    const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for _ in 0..n {
        out.push(ITOA64[(v & 0x3f) as usize] as char);
        v >>= 6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes of "p@ssw0rd" made by `openssl passwd` and `htpasswd -B`.
    #[test]
    fn every_scheme_checks_its_password_and_refuses_others() {
        let bcrypt = bcrypt::hash("p@ssw0rd", 4).unwrap();
        let argon = {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
            argon2::Argon2::default()
                .hash_password(b"p@ssw0rd", &salt)
                .unwrap()
                .to_string()
        };
        for hash in [
            bcrypt.as_str(),
            bcrypt.replacen("$2b$", "$2y$", 1).as_str(),
            argon.as_str(),
            "$apr1$saltsalt$E5Rr3dOVSFY9DZAksLuwO/",
            "$1$abcdefgh$g.se1elaz3jWmm5VFGqjg/",
            "$5$saltsaltsalt$KJ1FHB0YN1ryz.vAiNMjR6yxRQscVu7zkf3GuGktVVC",
            "$6$saltsaltsalt$vkys6EnR86EM36lrDALUGsCHVs/1o66kM2qZo1CykooqisCR9QdVXAZNA1dOxWR3Q8VJUKrHlAodqaoKSsezu.",
            "{SHA}V7KtmQRNM3GXwMOf04I1aP+B5Io=",
        ] {
            assert_eq!(verify("p@ssw0rd", hash), Ok(true), "{hash}");
            assert_eq!(verify("p@ssw0rD", hash), Ok(false), "{hash}");
            assert_eq!(verify("", hash), Ok(false), "{hash}");
        }
        assert!(matches!(
            verify("x", "abXYZdes"),
            Err(HashError::Unsupported(_))
        ));
        assert!(matches!(
            verify("x", "$apr1$nosalt"),
            Err(HashError::Malformed(_))
        ));
    }
}
