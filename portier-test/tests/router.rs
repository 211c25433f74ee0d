//! The built-in router, run in-process through the harness.

use portier_test::{Harness, Request, Stage};

const ROUTES: &str = r#"
[[routes]]
name = "api"
prefix = "/api/"
upstream = "api"
strip_prefix = true

[[routes]]
name = "admin"
prefix = "/admin/"
host = "admin.example.com"
method = ["GET"]
upstream = "admin"

[[routes]]
prefix = "/old/"
upstream = "api"
replace_prefix = "/v2/"
"#;

async fn router(default: Option<&str>) -> Harness {
    let config = match default {
        Some(d) => format!("default = \"{d}\"\n{ROUTES}"),
        None => ROUTES.to_owned(),
    };
    Harness::builder()
        .upstream("api", ["10.0.0.1:8080"])
        .upstream("admin", ["10.0.0.2:8080"])
        .upstream("web", ["10.0.0.3:8080"])
        .stage(Stage::builtin("router").config(&config))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_prefix_rule_picks_its_upstream_names_the_route_and_strips_the_prefix() {
    let proxy = router(None).await;
    let out = proxy.request(Request::get("/api/users?id=7")).await;
    assert_eq!(out.upstream(), Some("api"));
    assert_eq!(out.route(), Some("api"));
    assert_eq!(out.endpoint().as_deref(), Some("10.0.0.1:8080"));
    assert_eq!(out.path(), "/users");
    assert_eq!(out.query(), Some("id=7"));
}

#[tokio::test]
async fn prefixes_match_whole_segments_only() {
    let proxy = router(Some("web")).await;
    assert_eq!(
        proxy.request(Request::get("/apis")).await.upstream(),
        Some("web")
    );
    assert_eq!(
        proxy.request(Request::get("/api")).await.upstream(),
        Some("api")
    );
}

#[tokio::test]
async fn host_and_method_conditions_must_all_hold() {
    let proxy = router(Some("web")).await;
    let admin = |method: &str, host: &str| Request::new(method, "/admin/x").header("host", host);
    let hit = proxy.request(admin("GET", "Admin.Example.com:8443")).await;
    assert_eq!(hit.upstream(), Some("admin"));
    assert_eq!(
        proxy
            .request(admin("POST", "admin.example.com"))
            .await
            .upstream(),
        Some("web")
    );
    assert_eq!(
        proxy
            .request(admin("GET", "other.example.com"))
            .await
            .upstream(),
        Some("web")
    );
}

#[tokio::test]
async fn replace_prefix_rewrites_the_path() {
    let proxy = router(None).await;
    let out = proxy.request(Request::get("/old/users")).await;
    assert_eq!(out.upstream(), Some("api"));
    assert_eq!(out.path(), "/v2/users");
}

#[tokio::test]
async fn no_match_without_a_default_is_answered_404_by_the_router() {
    let proxy = router(None).await;
    let out = proxy.request(Request::get("/nowhere")).await;
    assert!(!out.forwarded());
    assert_eq!(out.status(), Some(404));
    assert_eq!(out.stopped_at(), Some("router"));
}

#[tokio::test]
async fn an_unknown_upstream_is_refused_at_load_with_the_key() {
    let err = Harness::builder()
        .upstream("api", ["10.0.0.1:8080"])
        .stage(Stage::builtin("router").config("default = \"nope\""))
        .start()
        .await
        .err()
        .expect("a router naming an unknown upstream must not load");
    assert!(err.to_string().contains("nope"), "{err}");
}
