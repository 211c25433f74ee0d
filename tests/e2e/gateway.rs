//! Gateway plugins prove the built-in auth stages keep out what they should
//! and let through what they should, against real peers: forward auth asks a
//! real auth service (a hyper server in the test) over the stage's granted
//! upstream, and the service's decision is what the client gets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::{Backend, Portier, check, free_addr};

/// A forward-auth service: `authorization: Bearer good` is alice (200 with
/// `x-user` and `x-roles`), `Bearer slow` answers after two seconds, anything
/// else gets a 401 with its own challenge and body. Records what it was asked.
struct AuthService {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<http::request::Parts>>>,
}

impl AuthService {
    async fn start() -> AuthService {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(decide(req, &seen).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        AuthService { addr, asked }
    }

    fn asked(&self) -> Vec<http::request::Parts> {
        std::mem::take(&mut *self.asked.lock().unwrap())
    }
}

async fn decide(
    req: Request<Incoming>,
    seen: &Mutex<Vec<http::request::Parts>>,
) -> Response<Full<Bytes>> {
    let (parts, _) = req.into_parts();
    let token = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.lock().unwrap().push(parts);
    match token.as_str() {
        "Bearer good" => Response::builder()
            .header("x-user", "alice")
            .header("x-roles", "admin")
            .header("x-internal", "not for the upstream")
            .body(Full::default())
            .unwrap(),
        "Bearer slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::new(Full::default())
        }
        _ => Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", r#"Bearer realm="test""#)
            .body(Full::from("denied by the auth service\n"))
            .unwrap(),
    }
}

/// An app upstream and an `auth` upstream, with forward auth (`config`)
/// granted `auth`.
fn forward_auth(app: SocketAddr, auth: SocketAddr, config: &str, grants: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"

[[upstreams]]
name = "app"
endpoints = ["{app}"]

[[upstreams]]
name = "auth"
endpoints = ["{auth}"]

[[pipeline]]
plugin = "router"
config = {{ default = "app" }}

[[pipeline]]
plugin = "forward-auth"
{grants}
config = {config}
"#,
        listen = free_addr(),
    )
}

#[tokio::test]
async fn forward_auth_lets_through_what_the_service_allows_with_its_headers() {
    let app = Backend::new("app").start().await;
    let auth = AuthService::start().await;
    let proxy = Portier::start(&forward_auth(
        app.addr(),
        auth.addr,
        r#"{ upstream = "auth", path = "/verify", response_headers = ["x-user", "x-roles"] }"#,
        r#"grants = { upstreams = ["auth"] }"#,
    ))
    .await;
    let client = proxy.client();
    // Allowed: the service's chosen headers replace any the client sent.
    let reply = client
        .get_with(
            "/orders?page=2",
            &[("authorization", "Bearer good"), ("x-user", "mallory")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let echo = reply.echo();
    assert_eq!(echo.header_all("x-user"), ["alice"]);
    assert_eq!(echo.header("x-roles"), Some("admin"));
    assert_eq!(echo.header("x-internal"), None);
    // The service was asked with the original method, URI and credentials.
    let asked = auth.asked();
    assert_eq!(asked.len(), 1);
    let a = &asked[0];
    assert_eq!((a.method.as_str(), a.uri.path()), ("GET", "/verify"));
    assert_eq!(a.headers["x-forwarded-uri"], "/orders?page=2");
    assert_eq!(a.headers["x-forwarded-method"], "GET");
    assert_eq!(a.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(a.headers["authorization"], "Bearer good");
    // Refused: the client gets the service's own answer; the app sees nothing.
    let before = app.requests();
    let reply = client
        .get_with("/orders", &[("authorization", "Bearer bad")])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="test""#)
    );
    assert_eq!(reply.text(), "denied by the auth service\n");
    let reply = client.get("/orders").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.requests(), before);
}

#[tokio::test]
async fn forward_auth_answers_503_when_the_service_is_slow_or_gone() {
    let app = Backend::new("app").start().await;
    let auth = AuthService::start().await;
    let proxy = Portier::start(&forward_auth(
        app.addr(),
        auth.addr,
        r#"{ upstream = "auth", timeout = "300ms" }"#,
        r#"grants = { upstreams = ["auth"] }"#,
    ))
    .await;
    let client = proxy.client();
    let started = std::time::Instant::now();
    let reply = client
        .get_with("/", &[("authorization", "Bearer slow")])
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.requests(), 0);
    // Nothing listens where the service was.
    let gone = free_addr();
    let proxy = Portier::start(&forward_auth(
        app.addr(),
        gone,
        r#"{ upstream = "auth" }"#,
        r#"grants = { upstreams = ["auth"] }"#,
    ))
    .await;
    let reply = proxy
        .client()
        .get_with("/", &[("authorization", "Bearer good")])
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn a_stage_without_the_grant_cannot_reach_the_upstream() {
    let app = Backend::new("app").start().await;
    let auth = AuthService::start().await;
    let proxy = Portier::start(&forward_auth(
        app.addr(),
        auth.addr,
        r#"{ upstream = "auth" }"#,
        "",
    ))
    .await;
    let reply = proxy
        .client()
        .get_with("/", &[("authorization", "Bearer good")])
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(auth.asked().is_empty());
    assert_eq!(app.requests(), 0);
    proxy
        .wait_for_log_line("the refused request logged", |l| l.contains("not granted"))
        .await;
}

#[test]
fn a_grant_naming_no_upstream_is_rejected() {
    let manifest = forward_auth(
        "127.0.0.1:3001".parse().unwrap(),
        "127.0.0.1:3002".parse().unwrap(),
        r#"{ upstream = "auth" }"#,
        r#"grants = { upstreams = ["auht"] }"#,
    );
    let stderr = check(&manifest)
        .assert_rejected_at("pipeline[1].grants.upstreams[0]")
        .to_string();
    assert!(stderr.contains(r#"no upstream named "auht""#), "{stderr}");
}

// === jwt ===

/// A test-only RSA key (generating one per test would be slow).
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

/// Keys made in the test: ES256 and EdDSA pairs, with the RSA pair above.
struct Keys {
    ec: rcgen::KeyPair,
    ed: rcgen::KeyPair,
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rsa.pem"), RSA_PUBLIC).unwrap();
        Keys {
            ec: rcgen::KeyPair::generate().unwrap(),
            ed: rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            dir,
        }
    }

    /// A JWKS document with the EC key as `kid` and the RSA key (as `n`
    /// and `e`) as `rsa-` `kid`.
    fn write_jwks(&self, kid: &str) {
        let point = self.ec.public_key_raw();
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let mut rsa = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap(),
        )
        .unwrap();
        rsa["kid"] = json!(format!("rsa-{kid}"));
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
        }, rsa]});
        std::fs::write(self.dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    }

    fn sign(&self, alg: Algorithm, kid: Option<&str>, claims: serde_json::Value) -> String {
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(self.ec.serialize_pem().as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(self.ed.serialize_pem().as_bytes()),
            Algorithm::RS256 | Algorithm::PS256 => {
                EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes())
            }
            _ => Ok(EncodingKey::from_secret(SECRET.as_bytes())),
        }
        .unwrap();
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Upstream `app`, an admin listener, a router naming `api` and `admin`,
/// then `stages`.
fn gateway(app: SocketAddr, stages: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"

[admin]
listen = "{admin}"

[[upstreams]]
name = "app"
endpoints = ["{app}"]

[[pipeline]]
plugin = "router"
[pipeline.config]
default = "app"
routes = [
    {{ name = "api", prefix = "/api/", upstream = "app" }},
    {{ name = "admin", prefix = "/admin/", upstream = "app" }},
]

{stages}
"#,
        listen = free_addr(),
        admin = free_addr(),
    )
}

fn jwt_stage(keys: &Keys, routes: &str, extra: &str) -> String {
    format!(
        r#"
[[pipeline]]
plugin = "jwt"
name = "jwt{n}"
{routes}
grants = {{ dirs = {{ "/keys" = "{dir}" }} }}
[pipeline.config]
issuer = "https://auth.test"
audience = "api"
realm = "api"
keys = [
    {{ alg = "ES256", kid = "ec", pem = {ec} }},
    {{ alg = "EdDSA", pem = {ed} }},
    {{ alg = "RS256", pem_file = "/keys/rsa.pem" }},
    {{ alg = "PS256", pem_file = "/keys/rsa.pem" }},
    {{ alg = "HS256", secret = "{SECRET}" }},
]
forward_claims = {{ sub = "x-user", email = "x-user-email" }}
{extra}
"#,
        n = routes.len(),
        dir = keys.dir.path().display(),
        ec = toml_string(&keys.ec.public_key_pem()),
        ed = toml_string(&keys.ed.public_key_pem()),
    )
}

fn toml_string(s: &str) -> String {
    format!("\"\"\"{s}\"\"\"")
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({"iss": "https://auth.test", "aud": "api", "sub": "alice",
                       "email": "alice@example.com", "exp": now() + 600, "scope": "read"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[tokio::test]
async fn jwt_accepts_tokens_of_each_algorithm_and_passes_claims_on() {
    let app = Backend::new("app").start().await;
    let keys = Keys::new();
    let proxy = Portier::start(&gateway(app.addr(), &jwt_stage(&keys, "", ""))).await;
    let client = proxy.client();
    for (alg, kid) in [
        (Algorithm::ES256, Some("ec")),
        (Algorithm::EdDSA, None),
        (Algorithm::RS256, None),
        (Algorithm::PS256, None),
        (Algorithm::HS256, None),
    ] {
        let token = keys.sign(alg, kid, claims(json!({})));
        let reply = client
            .get_with(
                "/api/orders",
                &[
                    ("authorization", &format!("Bearer {token}")),
                    ("x-user", "mallory"),
                ],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{alg:?}: {}", reply.text());
        let echo = reply.echo();
        assert_eq!(echo.header_all("x-user"), ["alice"], "{alg:?}");
        assert_eq!(echo.header("x-user-email"), Some("alice@example.com"));
        // The token itself stays at the proxy.
        assert_eq!(echo.header("authorization"), None);
    }
}

#[tokio::test]
async fn jwt_refuses_with_rfc_6750_challenges() {
    let app = Backend::new("app").start().await;
    let keys = Keys::new();
    let proxy = Portier::start(&gateway(
        app.addr(),
        &jwt_stage(&keys, "", r#"require = { scopes = ["read"] }"#),
    ))
    .await;
    let client = proxy.client();
    let ask = |token: Option<String>| {
        let client = client.clone();
        async move {
            match token {
                Some(t) => {
                    client
                        .get_with("/api/x", &[("authorization", &format!("Bearer {t}"))])
                        .await
                }
                None => client.get("/api/x").await,
            }
        }
    };
    let reply = ask(None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="api""#)
    );
    let invalid = [
        (claims(json!({"exp": now() - 600})), "the token expired"),
        (claims(json!({"iss": "https://evil.test"})), "wrong issuer"),
        (claims(json!({"aud": "other"})), "wrong audience"),
        (
            claims(json!({"nbf": now() + 600})),
            "the token is not valid yet",
        ),
    ];
    for (c, why) in invalid {
        let reply = ask(Some(keys.sign(Algorithm::ES256, Some("ec"), c))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{why}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some(
                format!(r#"Bearer realm="api", error="invalid_token", error_description="{why}""#)
                    .as_str()
            )
        );
    }
    // Signed by a key the proxy does not have.
    let stranger = Keys::new();
    let reply = ask(Some(stranger.sign(
        Algorithm::ES256,
        Some("ec"),
        claims(json!({})),
    )))
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(
        reply
            .header("www-authenticate")
            .unwrap()
            .contains("bad signature")
    );
    // Valid, but without the scope.
    let reply = ask(Some(keys.sign(
        Algorithm::HS256,
        None,
        claims(json!({"scope": "write"})),
    )))
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="read""#)
    );
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn jwt_per_route_requirements_and_an_open_route() {
    let app = Backend::new("app").start().await;
    let keys = Keys::new();
    let stages = format!(
        "{}{}",
        jwt_stage(
            &keys,
            r#"routes = ["api"]"#,
            r#"require = { scopes = ["read"] }"#
        ),
        jwt_stage(
            &keys,
            r#"routes = ["admin"]"#,
            r#"require = { scopes = ["admin"] }"#
        ),
    );
    let proxy = Portier::start(&gateway(app.addr(), &stages)).await;
    let client = proxy.client();
    let reader = keys.sign(
        Algorithm::ES256,
        Some("ec"),
        claims(json!({"scope": "read"})),
    );
    let bearer = format!("Bearer {reader}");
    let auth = [("authorization", bearer.as_str())];
    assert_eq!(
        client.get_with("/api/x", &auth).await.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get_with("/admin/x", &auth).await.status,
        StatusCode::FORBIDDEN
    );
    // Unnamed routes are scoped by neither stage.
    assert_eq!(client.get("/public").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_jwks_file_is_read_again_on_reload() {
    let app = Backend::new("app").start().await;
    let keys = Keys::new();
    keys.write_jwks("old");
    let stage = format!(
        r#"
[[pipeline]]
plugin = "jwt"
grants = {{ dirs = {{ "/keys" = "{}" }} }}
config = {{ jwks_file = "/keys/jwks.json", audience = "api" }}
"#,
        keys.dir.path().display()
    );
    let proxy = Portier::start(&gateway(app.addr(), &stage)).await;
    let client = proxy.client();
    let token = keys.sign(Algorithm::ES256, Some("new"), claims(json!({})));
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    assert_eq!(
        client.get_with("/api/x", &auth).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The key is rotated under a new id; a reload reads the file again.
    keys.write_jwks("new");
    assert_eq!(proxy.reload().await.status, StatusCode::OK);
    assert_eq!(
        client.get_with("/api/x", &auth).await.status,
        StatusCode::OK
    );
    // An RSA key of the JWKS, given as its modulus and exponent.
    let token = keys.sign(Algorithm::RS256, Some("rsa-new"), claims(json!({})));
    let bearer = format!("Bearer {token}");
    let reply = client
        .get_with("/api/x", &[("authorization", bearer.as_str())])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

// === api-key identities ===

#[tokio::test]
async fn api_keys_name_their_client_for_the_upstream_and_the_rate_limit() {
    let app = Backend::new("app").start().await;
    // The digest of "k-billing-0001", as `printf %s KEY | sha256sum` prints it.
    let digest = crate::support::body::sha256(b"k-billing-0001");
    let stages = format!(
        r#"
[[pipeline]]
plugin = "api-key"
[pipeline.config]
identity_header = "x-api-client"
keys = [{{ sha256 = "{digest}", identity = "billing" }}, {{ key = "k-ci-000000001", identity = "ci" }}]

[[pipeline]]
plugin = "rate-limit"
config = {{ requests = 2, window = "1m", key = "identity" }}
"#
    );
    let proxy = Portier::start(&gateway(app.addr(), &stages)).await;
    let client = proxy.client();
    let billing = [("x-api-key", "k-billing-0001"), ("x-api-client", "admin")];
    let reply = client.get_with("/x", &billing).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let echo = reply.echo();
    assert_eq!(echo.header_all("x-api-client"), ["billing"]);
    assert_eq!(echo.header("x-api-key"), None);
    // Each identity has its own budget, whatever address it comes from.
    assert_eq!(client.get_with("/x", &billing).await.status, StatusCode::OK);
    assert_eq!(
        client.get_with("/x", &billing).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let ci = [("x-api-key", "k-ci-000000001")];
    assert_eq!(client.get_with("/x", &ci).await.status, StatusCode::OK);
    assert_eq!(
        client
            .get_with("/x", &[("x-api-key", "k-billing-0002")])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

// === cors ===

fn cors(app: SocketAddr, config: &str) -> String {
    gateway(
        app,
        &format!("[[pipeline]]\nplugin = \"cors\"\n[pipeline.config]\n{config}\n"),
    )
}

#[tokio::test]
async fn cors_answers_browser_preflights_at_the_proxy() {
    let app = Backend::new("app").start().await;
    let proxy = Portier::start(&cors(
        app.addr(),
        r#"origins = ["https://app.example.com", "https://*.example.org"]
methods = ["GET", "POST", "PUT", "DELETE"]
headers = ["authorization", "x-requested-with"]
expose_headers = ["x-request-id"]
credentials = true
max_age = "10m""#,
    ))
    .await;
    let client = proxy.client();
    // What Chrome sends before a credentialed PUT with JSON.
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        client
            .request(http::Method::OPTIONS, "/api/orders/7")
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .header("sec-fetch-mode", "cors")
            .header("sec-fetch-site", "cross-site")
            .header("user-agent", "Mozilla/5.0 Chrome/131.0")
            .body(crate::support::body::empty())
            .unwrap()
    };
    let reply = client
        .send(preflight(
            "https://app.example.com",
            "PUT",
            "authorization,content-type",
        ))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET, POST, PUT, DELETE")
    );
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(reply.header("access-control-max-age"), Some("600"));
    assert!(reply.header("vary").unwrap().contains("origin"));
    // A subdomain of the wildcard origin.
    let reply = client
        .send(preflight(
            "https://shop.example.org",
            "DELETE",
            "x-requested-with",
        ))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    // Refused: no CORS header at all, so the browser stops there.
    for (origin, method, headers) in [
        ("https://evil.example.net", "PUT", ""),
        ("https://app.example.com", "PATCH", ""),
        ("https://app.example.com", "PUT", "x-secret"),
    ] {
        let reply = client.send(preflight(origin, method, headers)).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{origin} {method} {headers}"
        );
        assert_eq!(reply.header("access-control-allow-origin"), None);
    }
    // No preflight ever reached the upstream.
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn cors_headers_on_responses_for_allowed_origins_only() {
    let app = Backend::new("app")
        .response_header("access-control-allow-origin", "*")
        .start()
        .await;
    let proxy = Portier::start(&cors(
        app.addr(),
        r#"origins = ["https://app.example.com"]
expose_headers = ["x-request-id"]
credentials = true"#,
    ))
    .await;
    let client = proxy.client();
    let reply = client
        .get_with("/api/x", &[("origin", "https://app.example.com")])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The upstream's own `*` is replaced by the policy's answer.
    assert_eq!(
        reply.header_all("access-control-allow-origin"),
        ["https://app.example.com"]
    );
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        reply.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert!(
        reply
            .header_all("vary")
            .iter()
            .any(|v| v.contains("origin"))
    );
    // Another origin gets the response, but no CORS header.
    let reply = client
        .get_with("/api/x", &[("origin", "https://evil.example.net")])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("access-control-allow-origin"), None);
    // A request without Origin (same-origin, curl) is untouched.
    let reply = client.get("/api/x").await;
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    // A plain OPTIONS (no preflight) goes to the upstream.
    let plain = client
        .request(http::Method::OPTIONS, "/api/x")
        .body(crate::support::body::empty())
        .unwrap();
    assert_eq!(client.send(plain).await.echo().method, "OPTIONS");
}

// === basic-auth ===

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn basic_auth_checks_htpasswd_files_as_nginx_users_keep_them() {
    let app = Backend::new("app").start().await;
    let dir = tempfile::tempdir().unwrap();
    // bcrypt at htpasswd -B's cost, MD5-crypt (htpasswd's default), {SHA}.
    let bcrypt = bcrypt::hash("alice-pass", 10)
        .unwrap()
        .replacen("$2b$", "$2y$", 1);
    std::fs::write(
        dir.path().join("htpasswd"),
        format!(
            "# made by htpasswd\nalice:{bcrypt}\nbob:$apr1$saltsalt$E5Rr3dOVSFY9DZAksLuwO/\ncarol:{{SHA}}V7KtmQRNM3GXwMOf04I1aP+B5Io=\n"
        ),
    )
    .unwrap();
    let stage = format!(
        r#"
[[pipeline]]
plugin = "basic-auth"
routes = ["admin"]
grants = {{ dirs = {{ "/auth" = "{}" }} }}
config = {{ realm = "Staff only", htpasswd_file = "/auth/htpasswd", identity_header = "x-user" }}
"#,
        dir.path().display()
    );
    let proxy = Portier::start(&gateway(app.addr(), &stage)).await;
    let client = proxy.client();
    for (user, password) in [
        ("alice", "alice-pass"),
        ("bob", "p@ssw0rd"),
        ("carol", "p@ssw0rd"),
    ] {
        let auth = basic(user, password);
        // Twice: the second is answered from the instance's cache.
        for _ in 0..2 {
            let reply = client
                .get_with("/admin/x", &[("authorization", &auth), ("x-user", "root")])
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{user}: {}", reply.text());
            let echo = reply.echo();
            assert_eq!(echo.header_all("x-user"), [user]);
            assert_eq!(echo.header("authorization"), None);
        }
    }
    // A bcrypt check (tens of milliseconds) is the host's time, not the
    // stage's 10 ms call budget: nothing above failed, nothing was quarantined.
    for (user, password) in [("alice", "wrong"), ("dave", "p@ssw0rd"), ("bob", "")] {
        let reply = client
            .get_with("/admin/x", &[("authorization", &basic(user, password))])
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{user}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some(r#"Basic realm="Staff only", charset="UTF-8""#)
        );
    }
    assert_eq!(
        client.get("/admin/x").await.status,
        StatusCode::UNAUTHORIZED
    );
    // Outside its route, no login.
    assert_eq!(client.get("/public").await.status, StatusCode::OK);
    assert_eq!(app.requests(), 7);
}

#[test]
fn a_plain_text_htpasswd_entry_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("htpasswd"),
        "alice:{SHA}V7KtmQRNM3GXwMOf04I1aP+B5Io=\nbob:secret\n",
    )
    .unwrap();
    let manifest = gateway(
        "127.0.0.1:3001".parse().unwrap(),
        &format!(
            "[[pipeline]]\nplugin = \"basic-auth\"\ngrants = {{ dirs = {{ \"/auth\" = \"{}\" }} }}\nconfig = {{ htpasswd_file = \"/auth/htpasswd\" }}\n",
            dir.path().display()
        ),
    );
    let stderr = check(&manifest)
        .assert_rejected_at("pipeline[1].config.htpasswd_file")
        .to_string();
    assert!(
        stderr.contains("line 2: user \"bob\": unsupported hash"),
        "{stderr}"
    );
}

// === waf ===

#[tokio::test]
async fn waf_blocks_attacks_in_every_part_and_lets_ordinary_requests_through() {
    let app = Backend::new("app").start().await;
    let proxy = Portier::start(&gateway(
        app.addr(),
        r#"
[[pipeline]]
plugin = "waf"
[pipeline.config]
log_only = ["913100"]
"#,
    ))
    .await;
    let client = proxy.client();
    // Attacks: in the query, the path, a header, a form and a JSON body.
    let query = client
        .get("/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--")
        .await;
    assert_eq!(query.status, StatusCode::FORBIDDEN);
    assert_eq!(query.text(), "403 Forbidden\n");
    assert_eq!(
        client.get("/.git/config").await.status,
        StatusCode::FORBIDDEN
    );
    let referer = client
        .get_with(
            "/",
            &[("referer", "https://x.test/?q=<script>alert(1)</script>")],
        )
        .await;
    assert_eq!(referer.status, StatusCode::FORBIDDEN);
    let post = |content_type: &'static str, body: &'static str| {
        client
            .request(http::Method::POST, "/api/comments")
            .header("content-type", content_type)
            .body(crate::support::body::full(body))
            .unwrap()
    };
    let form = client
        .send(post(
            "application/x-www-form-urlencoded",
            "name=x&comment=%3Cimg+src%3Dx+onerror%3Dalert(1)%3E",
        ))
        .await;
    assert_eq!(form.status, StatusCode::FORBIDDEN);
    let json = client
        .send(post(
            "application/json",
            r#"{"host": "127.0.0.1; cat /etc/passwd"}"#,
        ))
        .await;
    assert_eq!(json.status, StatusCode::FORBIDDEN);
    assert_eq!(app.requests(), 0);
    proxy
        .wait_for_log_line("the block logged with its rule", |l| {
            l.contains("blocked by rule 942100")
        })
        .await;
    // Ordinary traffic, bodies included, reaches the upstream whole.
    for path in [
        "/search?q=O%27Reilly+books",
        "/docs/select-a-plan",
        "/api/users/42",
    ] {
        assert_eq!(client.get(path).await.status, StatusCode::OK, "{path}");
    }
    let body = r#"{"name": "Alice O'Neil", "note": "ring twice; the cat food goes inside"}"#;
    let reply = client.send(post("application/json", body)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echo().body_len, body.len() as u64);
    // A log-only rule lets the scanner through and says so.
    let scanner = client
        .get_with("/", &[("user-agent", "sqlmap/1.7.2")])
        .await;
    assert_eq!(scanner.status, StatusCode::OK);
    proxy
        .wait_for_log_line("the log-only match", |l| {
            l.contains("rule 913100") && l.contains("log only")
        })
        .await;
}
