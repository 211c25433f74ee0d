//! Per-route policy proves a stage scoped to routes (`routes = [...]`) runs
//! for the requests the router sent there and for no others, that every call
//! of one request shares its context (the route and upstream chosen, values
//! stages keep), that a filter which asked for the start of the body reads it
//! while the upstream still gets all of it, and that scoping mistakes are
//! manifest errors rather than checks that silently never run.

use http::{Method, StatusCode};

use crate::support::body;
use crate::support::{Backend, Portier, check, free_addr, test_plugin};

/// One upstream `app`, a router naming the routes `health` (exactly
/// `/health`), `api` (`/api/`) and `admin` (`/admin/`), anything else to
/// `app` under no name; then `stages` (scoped or not) after the router, and
/// `before` ahead of it.
fn routed(backend: std::net::SocketAddr, before: &str, stages: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"

[[upstreams]]
name = "app"
endpoints = ["{backend}"]

{before}

[[pipeline]]
plugin = "router"
[pipeline.config]
default = "app"
routes = [
    {{ name = "health", path = "/health", upstream = "app" }},
    {{ name = "api", prefix = "/api/", upstream = "app" }},
    {{ name = "admin", prefix = "/admin/", upstream = "app" }},
]

{stages}
"#,
        listen = free_addr(),
    )
}

#[tokio::test]
async fn auth_scoped_to_a_route_leaves_health_and_the_rest_alone() {
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&routed(
        backend.addr(),
        "",
        r#"
[[pipeline]]
plugin = "api-key"
routes = ["api", "admin"]
config = { keys = ["s3cret-key-0001"] }
"#,
    ))
    .await;
    let client = proxy.client();
    // The health check and unscoped paths skip the key check entirely.
    assert_eq!(client.get("/health").await.status, StatusCode::OK);
    assert_eq!(client.get("/static/app.js").await.status, StatusCode::OK);
    // Both scoped routes demand it.
    assert_eq!(
        client.get("/api/users").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(client.get("/admin/").await.status, StatusCode::UNAUTHORIZED);
    let ok = client
        .get_with("/api/users", &[("x-api-key", "s3cret-key-0001")])
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(backend.requests(), 3);
}

#[tokio::test]
async fn each_route_gets_its_own_rate_limit() {
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&routed(
        backend.addr(),
        "",
        r#"
[[pipeline]]
plugin = "rate-limit"
name = "api-limit"
routes = ["api"]
config = { requests = 2, window = "1m" }

[[pipeline]]
plugin = "rate-limit"
name = "admin-limit"
routes = ["admin"]
config = { requests = 5, window = "1m" }
"#,
    ))
    .await;
    let client = proxy.client();
    let statuses = |path: &'static str, n: usize| {
        let client = client.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(client.get(path).await.status.as_u16());
            }
            out
        }
    };
    assert_eq!(statuses("/api/a", 3).await, [200, 200, 429]);
    // The admin route counts on its own, with its own budget.
    assert_eq!(
        statuses("/admin/a", 6).await,
        [200, 200, 200, 200, 200, 429]
    );
    // Unscoped paths are limited by neither.
    assert_eq!(statuses("/other", 10).await, [200; 10]);
}

#[tokio::test]
async fn stages_share_the_request_context_and_see_the_route_chosen() {
    let backend = Backend::new("app").start().await;
    let probe = test_plugin("probe");
    let proxy = Portier::start(&routed(
        backend.addr(),
        &format!(
            r#"
[[pipeline]]
plugin = "{probe}"
role = "filter"
name = "early"
config = {{ answers = false }}
"#,
            probe = probe.display()
        ),
        &format!(
            r#"
[[pipeline]]
plugin = "{probe}"
role = "filter"
name = "late"
routes = ["api"]
"#,
            probe = probe.display()
        ),
    ))
    .await;
    let client = proxy.client();
    // A value the early stage kept is read by the later one.
    let reply = client
        .get_with(
            "/api/x",
            &[
                ("x-probe-set", "identity=alice"),
                ("x-probe", "context:identity"),
            ],
        )
        .await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "alice".into())
    );
    // The router's choice, by route and upstream name.
    let reply = client.get_with("/api/x", &[("x-probe", "route:")]).await;
    assert_eq!(reply.text(), "api|app");
    // The client's address, typed in the contract, as the proxy saw it.
    let reply = client.get_with("/api/x", &[("x-probe", "addr:")]).await;
    let local = client.local_addr().await.expect("connected");
    assert_eq!(reply.text(), local.to_string());
    // Values reach the filter's own on-response (both stages', one answer).
    let reply = client
        .get_with(
            "/api/x",
            &[("x-probe-set", "timing=42"), ("x-probe-echo", "timing")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-probe-context"), Some("42"));
    assert_eq!(reply.header("x-probe-route"), Some("api"));
    // Each request has its own context: nothing kept leaks into the next.
    let reply = client
        .get_with("/api/x", &[("x-probe", "context:identity")])
        .await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::FORBIDDEN, "none".into())
    );
    // Outside its route the late stage never runs: the request goes through.
    let reply = client.get_with("/other", &[("x-probe", "route:")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echo().backend, "app");
}

#[tokio::test]
async fn a_filter_reads_the_start_of_the_body_and_the_upstream_gets_all_of_it() {
    let backend = Backend::new("app").start().await;
    let probe = test_plugin("probe");
    let manifest = format!(
        r#"
[server]
listen = "{listen}"

[[upstreams]]
name = "app"
endpoints = ["{backend}"]

[[pipeline]]
plugin = "{probe}"
role = "filter"
name = "reads-8"
config = {{ request_body = 8 }}

[[pipeline]]
plugin = "{probe}"
role = "filter"
name = "reads-none"
config = {{ answers = false }}
"#,
        listen = free_addr(),
        backend = backend.addr(),
        probe = probe.display(),
    );
    let proxy = Portier::start(&manifest).await;
    let client = proxy.client();
    let post = |path: &str, probe: Option<&str>, payload: body::Body| {
        let mut req = client.request(Method::POST, path);
        if let Some(p) = probe {
            req = req.header("x-probe", p);
        }
        req.body(payload).unwrap()
    };
    // Longer than asked: the first 8 bytes, not the whole body.
    let reply = client
        .send(post(
            "/",
            Some("body:"),
            body::full("hello world, and more"),
        ))
        .await;
    assert_eq!(reply.text(), "false|hello wo");
    // Shorter: all of it, known to be complete.
    let reply = client
        .send(post("/", Some("body:"), body::full("hi")))
        .await;
    assert_eq!(reply.text(), "true|hi");
    // No body at all.
    let reply = client.get_with("/", &[("x-probe", "body:")]).await;
    assert_eq!(reply.text(), "true|");
    // The upstream gets the whole body, read ahead or not, chunked or not.
    for payload in [body::pattern(1 << 20), body::pattern_chunked(1 << 20)] {
        let reply = client.send(post("/upload", None, payload)).await;
        assert_eq!(reply.status, StatusCode::OK);
        let echo = reply.echo();
        assert_eq!(echo.body_len, 1 << 20);
        assert_eq!(echo.body_sha256, body::pattern_sha256(1 << 20));
    }
}

#[tokio::test]
async fn a_stage_that_did_not_ask_for_the_body_does_not_see_it() {
    let backend = Backend::new("app").start().await;
    let probe = test_plugin("probe");
    let manifest = format!(
        r#"
[server]
listen = "{listen}"

[[upstreams]]
name = "app"
endpoints = ["{backend}"]

[[pipeline]]
plugin = "{probe}"
role = "filter"
name = "asks-nothing"

[[pipeline]]
plugin = "{probe}"
role = "filter"
name = "asks-4"
config = {{ request_body = 4, answers = false }}
"#,
        listen = free_addr(),
        backend = backend.addr(),
        probe = probe.display(),
    );
    let proxy = Portier::start(&manifest).await;
    let client = proxy.client();
    let req = client
        .request(Method::POST, "/")
        .header("x-probe", "body:")
        .body(body::full("secret body"))
        .unwrap();
    let reply = client.send(req).await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::FORBIDDEN, "none".into())
    );
}

// === manifest errors ===

#[test]
fn a_scope_naming_no_route_of_the_router_is_rejected() {
    let manifest = routed(
        "127.0.0.1:3001".parse().unwrap(),
        "",
        r#"
[[pipeline]]
plugin = "api-key"
routes = ["api", "admn"]
config = { keys = ["s3cret-key-0001"] }
"#,
    );
    let stderr = check(&manifest)
        .assert_rejected_at("pipeline[1].routes[1]")
        .to_string();
    assert!(
        stderr.contains(r#"no route named "admn""#) && stderr.contains("health, api, admin"),
        "{stderr}"
    );
}

#[test]
fn a_scoped_stage_before_the_router_is_rejected() {
    let manifest = routed(
        "127.0.0.1:3001".parse().unwrap(),
        r#"
[[pipeline]]
plugin = "headers"
routes = ["api"]
"#,
        "",
    );
    let stderr = check(&manifest)
        .assert_rejected_at("pipeline[0].routes")
        .to_string();
    assert!(stderr.contains("must come after the router"), "{stderr}");
}

#[test]
fn the_router_itself_and_empty_scopes_are_rejected() {
    let manifest = format!(
        r#"
[server]
listen = "{}"

[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:3001"]

[[pipeline]]
plugin = "router"
routes = ["api"]
config = {{ default = "app" }}
"#,
        free_addr()
    );
    check(&manifest).assert_rejected_at("pipeline[0].routes");
    let manifest = routed(
        "127.0.0.1:3001".parse().unwrap(),
        "",
        "[[pipeline]]\nplugin = \"headers\"\nroutes = []\n",
    );
    check(&manifest).assert_rejected_at("pipeline[1].routes");
}

#[test]
fn balancers_and_cache_policies_per_route_must_not_overlap() {
    let two = |a: &str, b: &str| {
        routed(
            "127.0.0.1:3001".parse().unwrap(),
            "",
            &format!(
                r#"
[[pipeline]]
plugin = "cache"
name = "first"
{a}

[[pipeline]]
plugin = "cache"
name = "second"
{b}
"#
            ),
        )
    };
    // Disjoint routes: one policy per request.
    check(&two(
        r#"routes = ["api"]"#,
        r#"routes = ["admin", "health"]"#,
    ))
    .assert_ok();
    let stderr = check(&two(r#"routes = ["api"]"#, r#"routes = ["admin", "api"]"#))
        .assert_rejected_at("pipeline[2]")
        .to_string();
    assert!(stderr.contains(r#"route "api""#), "{stderr}");
    let stderr = check(&two("", r#"routes = ["admin"]"#))
        .assert_rejected_at("pipeline[2]")
        .to_string();
    assert!(stderr.contains("every request"), "{stderr}");
}
