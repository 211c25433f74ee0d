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
