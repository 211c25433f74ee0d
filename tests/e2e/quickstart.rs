//! Quickstart proves `examples/quickstart.toml` does what its comments and the
//! README promise: the headers filter stamps responses, the router sends
//! /api/ and /static/ (stripped) to their upstreams with `api` as default, and
//! the balancer alternates between the two `api` backends. The example is run
//! as written, only with free ports in place of 3000-3003.

use std::path::Path;

use http::StatusCode;

use crate::support::{Backend, Portier, free_addr};

#[tokio::test]
async fn quickstart_manifest_routes_balances_and_stamps_as_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.toml");
    let example =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let api1 = Backend::new("api-1").start().await;
    let api2 = Backend::new("api-2").start().await;
    let static_ = Backend::new("static").start().await;
    let mut manifest = example.clone();
    for (port, addr) in [
        (3000, free_addr()),
        (3001, api1.addr()),
        (3002, api2.addr()),
        (3003, static_.addr()),
    ] {
        let documented = format!("\"127.0.0.1:{port}\"");
        // If the example stops using these ports, this test must be updated with it.
        assert!(
            example.contains(&documented),
            "quickstart.toml no longer uses {documented}"
        );
        manifest = manifest.replace(&documented, &format!("\"{addr}\""));
    }
    let proxy = Portier::start(&manifest).await;
    let client = proxy.client();

    let mut api_backends = Vec::new();
    for _ in 0..4 {
        let reply = client.get("/api/users?page=2").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-served-by"), Some("portier"));
        let echo = reply.echo();
        assert_eq!(echo.path_and_query(), "/users?page=2");
        api_backends.push(echo.backend);
    }
    // Round-robin over two endpoints: strictly alternating, both used.
    assert_ne!(api_backends[0], api_backends[1]);
    assert_eq!(api_backends[0], api_backends[2]);
    assert_eq!(api_backends[1], api_backends[3]);

    let reply = client.get("/static/logo.png").await;
    assert_eq!(reply.header("x-served-by"), Some("portier"));
    let echo = reply.echo();
    assert_eq!(
        (echo.backend.as_str(), echo.path.as_str()),
        ("static", "/logo.png")
    );

    // No route matches: the default upstream, path untouched.
    let echo = client.get("/about").await.echo();
    assert!(
        echo.backend.starts_with("api-"),
        "default went to {}",
        echo.backend
    );
    assert_eq!(echo.path, "/about");
}
