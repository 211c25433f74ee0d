//! The quickstart's demo backends: one tiny HTTP server per port given on the
//! command line, each saying which port served which request.
//!
//! ```text
//! cargo run -p portier --example demo-backend -- 3001 3002 3003
//! curl http://127.0.0.1:3001/users
//! hello from demo backend :3001 — you asked for GET /users
//! ```
//!
//! Runs until Ctrl-C. With no ports it serves 3001, 3002 and 3003.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ports: Vec<u16> = if args.is_empty() {
        vec![3001, 3002, 3003]
    } else {
        args.iter()
            .map(|arg| {
                arg.parse().unwrap_or_else(|_| {
                    eprintln!("usage: demo-backend [PORT...]   ({arg:?} is not a port)");
                    std::process::exit(2)
                })
            })
            .collect()
    };

    for port in ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| {
            eprintln!("demo backend: cannot listen on {addr}: {e}");
            std::process::exit(1)
        });
        println!("demo backend listening on http://{addr}");
        tokio::spawn(serve(listener, port));
    }

    tokio::signal::ctrl_c().await.expect("listen for Ctrl-C");
    println!("demo backends stopped");
}

/// Accept connections forever, one task per connection.
async fn serve(listener: TcpListener, port: u16) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(port, request));
            // A client that goes away mid-request is not worth reporting.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Say who answered, and what was asked: what the quickstart shows off.
async fn answer(
    port: u16,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut text = format!(
        "hello from demo backend :{port} — you asked for {} {target}\n",
        request.method()
    );
    // Show what the proxy added, so the quickstart can point at it.
    for name in ["x-forwarded-for", "via"] {
        if let Some(value) = request.headers().get(name).and_then(|v| v.to_str().ok()) {
            text.push_str(&format!("  {name}: {value}\n"));
        }
    }
    let response = Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-demo-backend", port.to_string())
        .body(Full::new(Bytes::from(text)))
        .expect("valid response");
    Ok(response)
}
