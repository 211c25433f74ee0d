//! The admin listener: what the proxy is running, and a reload button.
//!
//! - `GET /status`: the active pipeline generation, its stages (failures,
//!   quarantine) and upstream endpoints (health, in-flight, latency), as JSON.
//! - `GET /healthz`: 200 while the process serves.
//! - `POST /reload`: rebuild from the manifest; 200 with the new generation,
//!   or 422 with the `FILE: KEY: REASON` that kept the old one serving.
//!
//! Bind it to loopback or a management network: it can trigger reloads.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::reload::Reloader;

/// Serve the admin API on `listener` forever.
pub async fn serve(listener: TcpListener, reloader: Arc<Reloader>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let reloader = reloader.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let reloader = reloader.clone();
                async move { Ok::<_, Infallible>(handle(req, &reloader).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, reloader: &Reloader) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
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
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
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
