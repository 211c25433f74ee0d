//! The built-in jwt filter, run in-process through the harness, with
//! tokens signed here: what passes (and what the upstream then sees), the
//! RFC 6750 answers to what does not, and keys read through a grant.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portier_test::{Harness, Outcome, Request, Stage};
use serde_json::{Value, json};

/// A test-only RSA key pair (tests/e2e/gateway.rs's).
const RSA_PRIVATE: &str = r#"-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDI+7DZkgmHhg/w
MJw0Egb0kcVt1Vy+bXaSdXYs9c3sniP71G5PfVJ4DddzVd4Se4/aaShoQppW0zf1
NHwVv35G2JngxaahdTeoTvppzqcPmBOz+VJ8lLGqmDaL/JxOx34h6uAMcH8rRMRr
2ubeyIJza2uBcwPPdu3Qhk+nubnA0GRJAQbO86zUmQ/t17WvoZKzjApjq8hlPJIR
P20w1iOWaNt7Z4Dls1wTqe0qbVBo72S8Morhq5I5mQl3lPi+uLJosU0GKOXLF/S8
hlR8pk+0us2dKwor++YZjohlKoe5Dketg4ENjYcz+vHjGCIqE5GS6J+3My7pevM3
AC/+FpQ7AgMBAAECggEAS7q6mmBygsQ7AS/vy5b3U/QRRh9dAMvSH8Fus+Yyn3O+
70bOAdmg12evxN+X+7LfM1boSNC/wvN3ZEdQcgljlWJMKOuQq8m1HRAVPwUE4dVV
pzzMnfCROUx9USXv56c3maQco9NHt5ADyvgCgfNfZAoXygECcIvJdAcHwJU0rrer
ws0yYVYbZRdDjWX7CgEadjKfLL4ePhHAdyskYC3TchDr8fIy1H+XlZOWsuqESkXS
gww/SQaIHIgDwV/jKOHqqWrfQZpqBg3gDAyBe+uMfy7MvSK4L8Q7eL6TFkHOgqtD
UUrC3fiWNt4ZioLq36MR4iwyHFNeIK2Tj8JQBL0mMQKBgQDvTeclzH8mQYTziKyp
vi7m81qzM/souqj/pyAVfWWh5ByGqO9Cx/wsi/rX57kobnEVBArVq3pRpDSLlvTX
ofh38LrbZ8FP2qZtDdRdTMuKpYZsT9ZfFRRDi4pdgVKjyqJagjZdWRuQk68Ddwzd
Syljf8oavhDbGx0ncaM7r2wY5wKBgQDXAVpOqj+lnw5MfZ49L6CHeVA9i5GTNA/t
d7+j4kZmdBKBNET7DkkGtrzJBGgng6AevLVreBtjGCNyZbLYrmUBJYetTnAXJbWp
AJvOVkN4letV9hv9O08avQTvuliDyKrvwU82EUFXOwJCjathtKjvjKjqG27kfGio
co2+Q5+bjQKBgQCSa0UJ8KS/oIkbhT24IkCKWM3fJef/1K4Atp4/59jehDccAZNb
dgeKrh9OKV82KNUR+cYzVFdkSqdH3ZZztYvUvztlcYdrN6pqwXJ1n75OV9b2wKa2
yKv8ZA3GBpGs3BgYbuGaniHqhSIpaZc6c3mggpkDYdXoah+deb9Zjo0CcwKBgQCu
ROpt2JC+La3pUehwr6nuJOZk/DuClTBTyjwLGdz2Lh7RmwxOccW/K17ZkDjbzlR6
lXp3IWMRbv9MOiI8fx5fT4wpbOpt2KLl2RhwpnsJwnp9sn39Q5ValtrpdKFKL9xd
eNI7gMD1c17hkvLWvxgvElPXbWT0zeIGptM85JL6AQKBgE8SfcLzyOGHCEKq5F02
Hl/wOWItnaxkOapMMoSD6dy2T8e+LDGl++C66tuCsCtXo2kAiQRoZmUD1wMhVWDB
DFhHtAofgWNbVaHlH6BSwIMTkjAp1TMZcJ1W3PBic74hfpdtemmYqpWvQtAWwsJM
XY0kRXYxfnPMbA3ZG5UB9M5s
-----END PRIVATE KEY-----"#;
const RSA_PUBLIC: &str = r#"-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyPuw2ZIJh4YP8DCcNBIG
9JHFbdVcvm12knV2LPXN7J4j+9RuT31SeA3Xc1XeEnuP2mkoaEKaVtM39TR8Fb9+
RtiZ4MWmoXU3qE76ac6nD5gTs/lSfJSxqpg2i/ycTsd+IergDHB/K0TEa9rm3siC
c2trgXMDz3bt0IZPp7m5wNBkSQEGzvOs1JkP7de1r6GSs4wKY6vIZTySET9tMNYj
lmjbe2eA5bNcE6ntKm1QaO9kvDKK4auSOZkJd5T4vriyaLFNBijlyxf0vIZUfKZP
tLrNnSsKK/vmGY6IZSqHuQ5HrYOBDY2HM/rx4xgiKhORkuiftzMu6XrzNwAv/haU
OwIDAQAB
-----END PUBLIC KEY-----"#;
const SECRET: &str = "a shared secret of at least 32 bytes!";

/// The public key in a directory the stage is granted as `/keys`.
fn key_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rsa.pem"), RSA_PUBLIC).unwrap();
    dir
}

/// A jwt stage checking HS256 (inline secret) and RS256 (the granted
/// file) tokens for issuer and audience, passing `sub` and `email` on.
async fn jwt(dir: &tempfile::TempDir, require: &str) -> Harness {
    Harness::builder()
        .stage(
            Stage::builtin("jwt")
                .set(&format!(
                    "grants = {{ dirs = {{ \"/keys\" = \"{}\" }} }}",
                    dir.path().display()
                ))
                .config(&format!(
                    r#"
                    issuer = "https://auth.test"
                    audience = "api"
                    realm = "api"
                    keys = [
                        {{ alg = "HS256", secret = "{SECRET}" }},
                        {{ alg = "RS256", pem_file = "/keys/rsa.pem" }},
                    ]
                    forward_claims = {{ sub = "x-user", email = "x-user-email" }}
                    {require}
                    "#
                )),
        )
        .start()
        .await
        .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Alice's claims, valid for ten minutes, with `extra` over them.
fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": "https://auth.test", "aud": "api", "sub": "alice",
                       "email": "alice@example.com", "exp": now() + 600, "scope": "read"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn sign(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        _ => EncodingKey::from_secret(SECRET.as_bytes()),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

fn bearer(token: &str) -> Request {
    Request::get("/api/orders").header("authorization", &format!("Bearer {token}"))
}

/// The challenge of a refused request, after checking its status.
fn challenge(out: &Outcome, status: u16) -> String {
    let answer = out.response().expect("the filter answers itself");
    assert_eq!(answer.status, status, "{}", answer.text());
    answer
        .get("www-authenticate")
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_valid_token_passes_its_claims_on_and_stays_at_the_proxy() {
    let dir = key_dir();
    let proxy = jwt(&dir, "").await;
    // Signed with the inline secret, and with the key read from the grant.
    for alg in [Algorithm::HS256, Algorithm::RS256] {
        let token = sign(alg, &claims(json!({})));
        let out = proxy
            .request(bearer(&token).header("x-user", "mallory"))
            .await;
        assert!(out.forwarded(), "{alg:?}: {:?}", out.response());
        // x-user comes only from the token, never from the client.
        assert_eq!(out.headers("x-user"), ["alice"], "{alg:?}");
        assert_eq!(out.header("x-user-email"), Some("alice@example.com"));
        assert_eq!(out.context("identity"), Some("alice"));
        assert_eq!(out.header("authorization"), None);
    }
}

#[tokio::test]
async fn missing_and_invalid_tokens_get_401_with_the_reason() {
    let dir = key_dir();
    let proxy = jwt(&dir, "").await;
    let out = proxy.request(Request::get("/api/orders")).await;
    assert_eq!(out.stopped_at(), Some("jwt"));
    assert_eq!(challenge(&out, 401), r#"Bearer realm="api""#);
    let invalid = [
        (
            sign(Algorithm::HS256, &claims(json!({"exp": now() - 600}))),
            "the token expired",
        ),
        (
            sign(
                Algorithm::RS256,
                &claims(json!({"iss": "https://evil.test"})),
            ),
            "wrong issuer",
        ),
        (
            sign(Algorithm::HS256, &claims(json!({"aud": "other"}))),
            "wrong audience",
        ),
        (
            sign(Algorithm::HS256, &claims(json!({"nbf": now() + 600}))),
            "the token is not valid yet",
        ),
        (
            // Signed with a secret the proxy does not have.
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims(json!({})),
                &EncodingKey::from_secret(b"another secret, also 32 bytes long"),
            )
            .unwrap(),
            "bad signature",
        ),
        (
            sign(Algorithm::HS384, &claims(json!({}))),
            "no key for the token's algorithm",
        ),
        ("not.a.token".to_owned(), "malformed token"),
    ];
    for (token, why) in invalid {
        let out = proxy.request(bearer(&token)).await;
        assert!(!out.forwarded(), "{why}");
        assert_eq!(
            challenge(&out, 401),
            format!(r#"Bearer realm="api", error="invalid_token", error_description="{why}""#),
        );
    }
}

#[tokio::test]
async fn a_valid_token_without_the_required_scope_or_claim_gets_403() {
    let dir = key_dir();
    let proxy = jwt(
        &dir,
        r#"require = { scopes = ["read", "admin"], claims = { tier = ["gold", "staff"] } }"#,
    )
    .await;
    let reader = sign(Algorithm::HS256, &claims(json!({"tier": "gold"})));
    let out = proxy.request(bearer(&reader)).await;
    assert_eq!(
        challenge(&out, 403),
        r#"Bearer realm="api", error="insufficient_scope", scope="admin""#
    );
    let silver = sign(
        Algorithm::HS256,
        &claims(json!({"scope": "read admin", "tier": "silver"})),
    );
    let out = proxy.request(bearer(&silver)).await;
    assert_eq!(
        challenge(&out, 403),
        r#"Bearer realm="api", error="insufficient_scope", error_description="claim tier not allowed""#
    );
    // Both scopes (here as `scp`) and an allowed tier: through.
    let admin = sign(
        Algorithm::HS256,
        &claims(json!({"scope": null, "scp": ["read", "admin"], "tier": "staff"})),
    );
    assert!(proxy.request(bearer(&admin)).await.forwarded());
}

#[tokio::test]
async fn a_short_hmac_secret_is_refused_at_load_with_the_key() {
    let err = Harness::builder()
        .stage(Stage::builtin("jwt").config(r#"keys = [{ alg = "HS256", secret = "too short" }]"#))
        .start()
        .await
        .err()
        .expect("a guessable secret must not load");
    assert!(
        err.to_string()
            .contains("pipeline[0].config.keys[0].secret: at least 32 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn a_key_file_outside_the_grants_is_refused_at_load() {
    let dir = key_dir();
    // The file exists on the host, but the stage was granted no directory.
    let err = Harness::builder()
        .stage(Stage::builtin("jwt").config(&format!(
            r#"keys = [{{ alg = "RS256", pem_file = "{}" }}]"#,
            dir.path().join("rsa.pem").display()
        )))
        .start()
        .await
        .err()
        .expect("a stage must not read files it was not granted");
    assert!(
        err.to_string()
            .contains("pipeline[0].config.keys[0].pem_file: cannot read"),
        "{err}"
    );
}
