//! Routing proves the built-in `router` plugin, running in the real proxy,
//! sends each request to the upstream its rules name: by prefix (optionally
//! stripped or replaced), exact path, host and method, first match winning,
//! the default catching the rest, and 404 when nothing matches.

use http::{Method, StatusCode};

use crate::support::body;
use crate::support::{Backend, Client, Portier, RunningBackend, assert_no_backend_leak, free_addr};

/// Three upstreams `a`, `b`, `c` with one backend each, and a router whose
/// `[pipeline.config]` (and route tables) is `router_config`.
struct Routed {
    a: RunningBackend,
    b: RunningBackend,
    c: RunningBackend,
    proxy: Portier,
}

impl Routed {
    async fn start(router_config: &str) -> Self {
        let a = Backend::new("a").start().await;
        let b = Backend::new("b").start().await;
        let c = Backend::new("c").start().await;
        let manifest = format!(
            r#"
[server]
listen = "{listen}"

[[upstreams]]
name = "a"
endpoints = ["{a}"]

[[upstreams]]
name = "b"
endpoints = ["{b}"]

[[upstreams]]
name = "c"
endpoints = ["{c}"]

[[pipeline]]
plugin = "router"
{router_config}
"#,
            listen = free_addr(),
            a = a.addr(),
            b = b.addr(),
            c = c.addr(),
        );
        let proxy = Portier::start(&manifest).await;
        Self { a, b, c, proxy }
    }

    /// Which backend served `path_and_query`, and the path and query it saw.
    async fn route(&self, client: &Client, path_and_query: &str) -> (String, String) {
        let echo = client.get(path_and_query).await.echo();
        let seen = echo.path_and_query();
        (echo.backend, seen)
    }
}

#[tokio::test]
async fn prefixes_choose_the_upstream_and_default_takes_the_rest() {
    let routed = Routed::start(
        r#"
[pipeline.config]
default = "c"

[[pipeline.config.routes]]
prefix = "/api/"
upstream = "a"

[[pipeline.config.routes]]
prefix = "/static/"
upstream = "b"
"#,
    )
    .await;
    let client = routed.proxy.client();

    assert_eq!(
        routed.route(&client, "/api/users").await,
        ("a".into(), "/api/users".into())
    );
    assert_eq!(
        routed.route(&client, "/static/app.js").await,
        ("b".into(), "/static/app.js".into())
    );
    assert_eq!(
        routed.route(&client, "/other").await,
        ("c".into(), "/other".into())
    );
    // A prefix matches whole path segments (plugins/router): "/api" is the
    // prefix's own segment, "/apiary" merely starts with the same letters.
    assert_eq!(
        routed.route(&client, "/api").await,
        ("a".into(), "/api".into())
    );
    assert_eq!(
        routed.route(&client, "/apiary").await,
        ("c".into(), "/apiary".into())
    );
    assert_eq!(
        (
            routed.a.requests(),
            routed.b.requests(),
            routed.c.requests()
        ),
        (2, 1, 2)
    );
}

#[tokio::test]
async fn strip_prefix_removes_the_prefix_and_keeps_the_query() {
    let routed = Routed::start(
        r#"
[pipeline.config]
default = "c"

[[pipeline.config.routes]]
prefix = "/api/"
upstream = "a"
strip_prefix = true
"#,
    )
    .await;
    let client = routed.proxy.client();

    assert_eq!(
        routed.route(&client, "/api/users?x=1").await,
        ("a".into(), "/users?x=1".into())
    );
    // Stripping never leaves an empty path.
    assert_eq!(
        routed.route(&client, "/api/").await,
        ("a".into(), "/".into())
    );
    assert_eq!(
        routed.route(&client, "/api?x=1").await,
        ("a".into(), "/?x=1".into())
    );
    // The default route does not strip.
    assert_eq!(
        routed.route(&client, "/users?x=1").await,
        ("c".into(), "/users?x=1".into())
    );
}

#[tokio::test]
async fn replace_prefix_swaps_the_prefix_and_keeps_the_query() {
    let routed = Routed::start(
        r#"
[[pipeline.config.routes]]
prefix = "/v1/"
upstream = "b"
replace_prefix = "/v2/"
"#,
    )
    .await;
    let client = routed.proxy.client();

    assert_eq!(
        routed.route(&client, "/v1/items?id=3").await,
        ("b".into(), "/v2/items?id=3".into())
    );
}

#[tokio::test]
async fn exact_path_matches_only_that_path() {
    let routed = Routed::start(
        r#"
[pipeline.config]
default = "c"

[[pipeline.config.routes]]
path = "/health"
upstream = "a"
"#,
    )
    .await;
    let client = routed.proxy.client();

    assert_eq!(routed.route(&client, "/health").await.0, "a");
    // The query string is not part of the path.
    assert_eq!(
        routed.route(&client, "/health?verbose=1").await,
        ("a".into(), "/health?verbose=1".into())
    );
    assert_eq!(routed.route(&client, "/health/").await.0, "c");
    assert_eq!(routed.route(&client, "/healthz").await.0, "c");
}

#[tokio::test]
async fn host_rule_matches_the_host_without_port_ignoring_case() {
    let routed = Routed::start(
        r#"
[pipeline.config]
default = "c"

[[pipeline.config.routes]]
host = "api.example.com"
upstream = "a"
"#,
    )
    .await;
    let client = routed.proxy.client();

    for (host, expected) in [
        ("api.example.com", "a"),
        ("API.Example.COM:8080", "a"),
        ("www.example.com", "c"),
        ("api.example.com.evil", "c"),
    ] {
        let echo = client.get_with("/any", &[("host", host)]).await.echo();
        assert_eq!(echo.backend, expected, "Host: {host}");
        // Routing by host does not rewrite it.
        assert_eq!(echo.header("host"), Some(host));
    }
}

#[tokio::test]
async fn method_rule_matches_only_the_listed_methods() {
    let routed = Routed::start(
        r#"
[pipeline.config]
default = "c"

[[pipeline.config.routes]]
prefix = "/items"
method = ["POST", "PUT"]
upstream = "a"

[[pipeline.config.routes]]
prefix = "/items"
method = "DELETE"
upstream = "b"
"#,
    )
    .await;
    let client = routed.proxy.client();

    for (method, expected) in [
        (Method::POST, "a"),
        (Method::PUT, "a"),
        (Method::DELETE, "b"),
        (Method::GET, "c"),
        (Method::PATCH, "c"),
    ] {
        let request = client
            .request(method.clone(), "/items/7")
            .body(body::empty())
            .unwrap();
        let echo = client.send(request).await.echo();
        assert_eq!(echo.backend, expected, "{method}");
        assert_eq!(echo.method, method.as_str());
    }
}

#[tokio::test]
async fn first_matching_rule_wins() {
    let routed = Routed::start(
        r#"
[[pipeline.config.routes]]
prefix = "/api/admin/"
upstream = "b"

[[pipeline.config.routes]]
prefix = "/api/"
upstream = "a"
"#,
    )
    .await;
    let client = routed.proxy.client();

    assert_eq!(routed.route(&client, "/api/admin/users").await.0, "b");
    assert_eq!(routed.route(&client, "/api/users").await.0, "a");
}

#[tokio::test]
async fn no_match_without_default_is_404_and_reaches_no_backend() {
    let routed = Routed::start(
        r#"
[[pipeline.config.routes]]
prefix = "/api/"
upstream = "a"
"#,
    )
    .await;
    let client = routed.proxy.client();

    let reply = client.get("/nothing/here").await;

    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    assert_no_backend_leak(&reply, routed.a.addr());
    assert_eq!(
        routed.a.requests() + routed.b.requests() + routed.c.requests(),
        0
    );
    // The route that does exist still works on the same connection.
    assert_eq!(routed.route(&client, "/api/x").await.0, "a");
}
