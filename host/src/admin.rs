//! The admin listener: what the proxy is running, and a reload button.
//!
//! - `GET /status`: the active pipeline generation, its stages (failures,
//!   quarantine) and upstream endpoints (health, in-flight, latency), as JSON.
//! - `GET /metrics`: counters, histograms and the pipeline's state in
//!   OpenMetrics or Prometheus' text format, as `Accept` asks (see
//!   `crate::metrics`).
//! - `GET /healthz`: 200 while the process serves, 503 once it drains
//!   (after SIGTERM or SIGINT).
//! - `POST /reload`: rebuild from the manifest; 200 with the new generation,
//!   or 422 with the `FILE: KEY: REASON` that kept the old one serving.
//! - `POST /rollouts/STAGE/promote`: make the stage's candidate its current
//!   version through a reload (200 with the generation; 422 if that reload
//!   is rejected, and nothing changes); `POST /rollouts/STAGE/rollback`:
//!   send the candidate no more requests; `POST /rollouts/STAGE/resume`: a
//!   rolled-back candidate gets its share again. 404 for a stage without a
//!   candidate, 409 when the candidate is not in the state the action needs.
//!
//! Who may use it, checked in this order on every request:
//! - **Host**: the listen address itself, `localhost` when it is loopback,
//!   or one of `admin.hosts`; anything else is 403, so a web page whose name
//!   an attacker re-points at 127.0.0.1 (DNS rebinding) gets nowhere.
//! - **No browsers**: a request with an `Origin` header, or a `Sec-Fetch-Site`
//!   other than `none`, is 403: a page cannot make a visitor's browser
//!   reload the proxy (CSRF), not even with a CORS-simple form post.
//! - **Token**: with `admin.token` set (required off loopback), every
//!   endpoint but `/healthz` needs `Authorization: Bearer TOKEN`, else 401.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::manifest::Admin;
use crate::reload::Reloader;

/// Serve the admin API on `listener` forever, under `access`.
pub async fn serve(listener: TcpListener, access: Admin, reloader: Arc<Reloader>) {
    let access = Arc::new(access);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (reloader, access) = (reloader.clone(), access.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (reloader, access) = (reloader.clone(), access.clone());
                async move { Ok::<_, Infallible>(handle(req, &access, &reloader).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    access: &Admin,
    reloader: &Reloader,
) -> Response<Full<Bytes>> {
    if let Err(refusal) = allowed(req.headers(), req.uri().path(), access) {
        return refusal.response();
    }
    match (req.method(), req.uri().path()) {
        // Draining: a load balancer's health check takes the instance out
        // of rotation while what is in flight finishes.
        (&Method::GET, "/healthz") if draining() => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".into(),
        ),
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/metrics") => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (content_type, body) =
                crate::metrics::scrape(reloader.current().load_full(), accept);
            reply(StatusCode::OK, content_type, body)
        }
        (&Method::GET, "/status") => {
            let body = reloader.current().load().status().to_string();
            reply(StatusCode::OK, "application/json", body)
        }
        (&Method::POST, "/reload") => match reloader.reload().await {
            Ok(g) => reply(
                StatusCode::OK,
                "application/json",
                serde_json::json!({ "generation": g }).to_string(),
            ),
            Err(e) => reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                "application/json",
                serde_json::json!({ "error": e.to_string() }).to_string(),
            ),
        },
        (&Method::POST, "/cache/purge") => purge(req, reloader).await,
        (&Method::POST, path) if path.starts_with("/rollouts/") => rollout(path, reloader).await,
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Set once the process starts its graceful shutdown.
static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The process is shutting down: `/healthz` answers 503 from now on.
pub fn set_draining() {
    DRAINING.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn draining() -> bool {
    DRAINING.load(std::sync::atomic::Ordering::Relaxed)
}

/// `POST /reload` on the admin listener `admin` describes, as `portier
/// reload` does: the new generation, or why the instance kept its pipeline.
pub async fn ask_reload(admin: &Admin) -> Result<u64, String> {
    use http_body_util::BodyExt;
    let addr = admin.listen;
    // A listener on every address is reached on loopback.
    let target = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => {
            std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => {
            std::net::SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], addr.port()))
        }
        _ => addr,
    };
    let stream = tokio::net::TcpStream::connect(target).await.map_err(|e| {
        format!("cannot reach the admin listener at {target}: {e} (is portier running?)")
    })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("admin listener at {target}: {e}"))?;
    tokio::spawn(conn);
    // The listener's own address as Host: one it always accepts, even on
    // 0.0.0.0 without `hosts` (loopback names are for loopback listeners).
    let mut req = Request::post("/reload").header(header::HOST, addr.to_string());
    if let Some(token) = &admin.token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("admin listener at {target}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("admin listener at {target}: {e}"))?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match (status, json["generation"].as_u64(), json["error"].as_str()) {
        (StatusCode::OK, Some(g), _) => Ok(g),
        (_, _, Some(why)) => Err(format!(
            "reload rejected, the running pipeline keeps serving: {why}"
        )),
        _ => Err(format!(
            "admin listener at {target} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
    }
}

/// What `POST /cache/purge` takes: one key, or every key under a prefix.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    key: Option<String>,
    prefix: Option<String>,
}

/// `POST /cache/purge` with `{"key": "..."}` or `{"prefix": "..."}`:
/// removes stored responses now; answers `{"purged": N}`.
async fn purge(req: Request<Incoming>, reloader: &Reloader) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let bad = |why: String| {
        reply(
            StatusCode::BAD_REQUEST,
            "application/json",
            serde_json::json!({ "error": why }).to_string(),
        )
    };
    let body = match http_body_util::Limited::new(req.into_body(), 64 << 10)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(format!("cannot read the body: {e}")),
    };
    let what: Purge = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return bad(format!(
                "expected {{\"key\": ...}} or {{\"prefix\": ...}}: {e}"
            ));
        }
    };
    let pipeline = reloader.current().load();
    let Some(store) = pipeline.cache() else {
        return reply(
            StatusCode::NOT_FOUND,
            "application/json",
            serde_json::json!({ "error": "no cache-policy stage in the running pipeline" })
                .to_string(),
        );
    };
    let purged = match (what.key, what.prefix) {
        (Some(key), None) => u64::from(store.purge(&key)),
        (None, Some(prefix)) => store.purge_prefix(&prefix),
        _ => return bad("give exactly one of \"key\" and \"prefix\"".into()),
    };
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::json!({ "purged": purged }).to_string(),
    )
}

/// `POST /rollouts/STAGE/ACTION`.
async fn rollout(path: &str, reloader: &Reloader) -> Response<Full<Bytes>> {
    use crate::rollout::State;
    let json =
        |status, body: serde_json::Value| reply(status, "application/json", body.to_string());
    let Some((stage, action)) = path["/rollouts/".len()..].rsplit_once('/') else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    };
    let Some(tracker) = reloader.runtime().rollouts().get(stage) else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": format!("stage {stage:?} has no candidate in the running pipeline") }),
        );
    };
    let not_now = |state: State| {
        json(
            StatusCode::CONFLICT,
            serde_json::json!({ "error": format!("the candidate of {stage:?} is {}", state.as_str()), "state": state.as_str() }),
        )
    };
    match action {
        "rollback" => {
            if tracker.roll_back("rolled back through the admin API".into()) {
                json(
                    StatusCode::OK,
                    serde_json::json!({ "state": "rolled-back" }),
                )
            } else {
                not_now(tracker.state())
            }
        }
        "resume" => {
            if tracker.resume() {
                json(StatusCode::OK, serde_json::json!({ "state": "active" }))
            } else {
                not_now(tracker.state())
            }
        }
        "promote" => {
            let was = tracker.promote();
            if was == State::Promoted {
                return not_now(was);
            }
            tracing::info!(
                stage,
                "promoting the candidate: reloading with it as the current version"
            );
            match reloader.reload().await {
                // The manifest's candidate changed meanwhile: the reload
                // made a new rollout of it instead.
                Ok(_)
                    if !reloader
                        .runtime()
                        .rollouts()
                        .get(stage)
                        .is_some_and(|t| Arc::ptr_eq(&t, &tracker)) =>
                {
                    json(
                        StatusCode::CONFLICT,
                        serde_json::json!({ "error": format!("the manifest's candidate for {stage:?} changed; reloaded without promoting") }),
                    )
                }
                Ok(generation) => json(
                    StatusCode::OK,
                    serde_json::json!({ "state": "promoted", "generation": generation }),
                ),
                Err(e) => {
                    tracker.unpromote(was);
                    json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        serde_json::json!({ "error": e.to_string() }),
                    )
                }
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 403, with the reason.
    Forbidden(&'static str),
    /// 401: no token, or the wrong one.
    Unauthorized,
}

impl Refusal {
    fn response(self) -> Response<Full<Bytes>> {
        match self {
            Refusal::Forbidden(why) => {
                reply(StatusCode::FORBIDDEN, "text/plain", format!("{why}\n"))
            }
            Refusal::Unauthorized => {
                let mut r = reply(
                    StatusCode::UNAUTHORIZED,
                    "text/plain",
                    "401 Unauthorized\n".into(),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"portier admin\""),
                );
                r
            }
        }
    }
}

/// The module docs' three checks.
fn allowed(h: &HeaderMap, path: &str, access: &Admin) -> Result<(), Refusal> {
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    if !host.is_some_and(|host| host_allowed(host, access)) {
        return Err(Refusal::Forbidden("host not allowed"));
    }
    let from_a_page = h.contains_key(header::ORIGIN)
        || h.get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() != b"none");
    if from_a_page {
        return Err(Refusal::Forbidden("the admin API is not for browsers"));
    }
    if let Some(token) = &access.token
        && path != "/healthz"
    {
        let given = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return Err(Refusal::Unauthorized);
        }
    }
    Ok(())
}

/// Whether a Host header names this listener.
fn host_allowed(host: &str, access: &Admin) -> bool {
    let listen = access.listen;
    let port = listen.port();
    let mut names = vec![listen.to_string()];
    if listen.ip().is_loopback() {
        names.extend([
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]);
    }
    names.iter().any(|n| n.eq_ignore_ascii_case(host))
        || access.hosts.iter().any(|n| {
            n.eq_ignore_ascii_case(host)
                || host
                    .rsplit_once(':')
                    .is_some_and(|(name, p)| p == port.to_string() && n.eq_ignore_ascii_case(name))
        })
}

/// Compare secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(listen: &str, token: Option<&str>, hosts: &[&str]) -> Admin {
        Admin {
            listen: listen.parse().unwrap(),
            token: token.map(str::to_owned),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn status(h: &[(&str, &str)], path: &str, a: &Admin) -> u16 {
        match allowed(&headers(h), path, a) {
            Ok(()) => 200,
            Err(r) => r.response().status().as_u16(),
        }
    }

    #[test]
    fn only_the_listeners_own_names_are_accepted_as_host() {
        let a = access("127.0.0.1:9000", None, &["admin.internal"]);
        for ok in [
            "127.0.0.1:9000",
            "localhost:9000",
            "LOCALHOST:9000",
            "admin.internal",
            "admin.internal:9000",
        ] {
            assert_eq!(status(&[("host", ok)], "/status", &a), 200, "{ok}");
        }
        for bad in [
            "evil.example:9000",
            "127.0.0.1:9001",
            "admin.internal:80",
            "",
        ] {
            assert_eq!(status(&[("host", bad)], "/status", &a), 403, "{bad}");
        }
        assert_eq!(status(&[], "/status", &a), 403);
    }

    #[test]
    fn browsers_are_turned_away() {
        let a = access("127.0.0.1:9000", None, &[]);
        let host = ("host", "127.0.0.1:9000");
        assert_eq!(
            status(&[host, ("origin", "http://evil.example")], "/reload", &a),
            403
        );
        assert_eq!(
            status(&[host, ("sec-fetch-site", "cross-site")], "/reload", &a),
            403
        );
        assert_eq!(
            status(&[host, ("sec-fetch-site", "none")], "/reload", &a),
            200
        );
    }

    #[test]
    fn a_token_is_required_except_for_healthz() {
        let a = access("10.0.0.1:9000", Some("0123456789abcdef"), &[]);
        let host = ("host", "10.0.0.1:9000");
        assert_eq!(status(&[host], "/status", &a), 401);
        assert_eq!(
            status(&[host, ("authorization", "Bearer nope")], "/status", &a),
            401
        );
        assert_eq!(
            status(
                &[host, ("authorization", "Bearer 0123456789abcdef")],
                "/status",
                &a
            ),
            200
        );
        assert_eq!(status(&[host], "/healthz", &a), 200);
    }
}
