//! Admin proves the admin listener answers only whom it should: with a
//! token set, nothing but `/healthz` without `Authorization: Bearer TOKEN`;
//! a Host that is not the listener's own (DNS rebinding) gets 403; a request
//! from a web page (an `Origin` header) cannot trigger a reload (CSRF); and
//! `portier check` refuses an admin listener reachable from other machines
//! without a token.

use http::{Method, StatusCode};

use crate::support::body;
use crate::support::{Backend, Client, Portier, Reply, check, endpoints, one_upstream_with_admin};

const TOKEN: &str = "s3cret-admin-token-0123";

/// `POST /reload` on the admin listener with these headers.
async fn reload_with(admin: &Client, headers: &[(&str, &str)]) -> Reply {
    let request = headers
        .iter()
        .fold(admin.request(Method::POST, "/reload"), |r, (k, v)| {
            r.header(*k, *v)
        })
        .body(body::empty())
        .unwrap();
    admin.send(request).await
}

#[tokio::test]
async fn with_a_token_every_endpoint_but_healthz_needs_it() {
    let backend = Backend::new("app").start().await;
    let manifest = one_upstream_with_admin(&endpoints(&[&backend]), "", "").replacen(
        "[admin]\n",
        &format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        1,
    );
    let proxy = Portier::start(&manifest).await;
    let admin = proxy.admin();
    let bearer = format!("Bearer {TOKEN}");

    for path in ["/status"] {
        assert_eq!(admin.get(path).await.status, StatusCode::UNAUTHORIZED);
        let wrong = admin
            .get_with(path, &[("authorization", "Bearer nope")])
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            wrong.header("www-authenticate"),
            Some("Bearer realm=\"portier admin\"")
        );
        let right = admin.get_with(path, &[("authorization", &bearer)]).await;
        assert_eq!(right.status, StatusCode::OK, "{}", right.text());
    }
    assert_eq!(
        reload_with(&admin, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let reloaded = reload_with(&admin, &[("authorization", &bearer)]).await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    assert_eq!(admin.get("/healthz").await.status, StatusCode::OK);
}

/// The generation `/status` reports.
async fn generation(admin: &Client) -> u64 {
    let reply = admin.get("/status").await;
    let status: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    status["generation"].as_u64().expect("a generation")
}

#[tokio::test]
async fn a_foreign_host_or_a_web_page_cannot_reach_it() {
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&one_upstream_with_admin(&endpoints(&[&backend]), "", "")).await;
    let admin = proxy.admin();

    // DNS rebinding: the page's own name, pointed at 127.0.0.1.
    let rebound = reload_with(&admin, &[("host", "evil.example")]).await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN);
    let rebound = admin
        .get_with("/status", &[("host", "evil.example:8080")])
        .await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN);
    // CSRF: a form on some site posting to the loopback address.
    for page in [
        &[("origin", "http://evil.example")][..],
        &[("sec-fetch-site", "cross-site")][..],
    ] {
        assert_eq!(
            reload_with(&admin, page).await.status,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(generation(&admin).await, 1, "a refused request reloaded");
    // The operator's own tools still work.
    assert_eq!(reload_with(&admin, &[]).await.status, StatusCode::OK);
    assert_eq!(generation(&admin).await, 2);
}

#[test]
fn admin_off_loopback_without_a_token_is_refused_and_short_tokens_too() {
    let manifest = one_upstream_with_admin(r#"["127.0.0.1:3001"]"#, "", "");
    let public = manifest.replacen(
        "[admin]\nlisten = \"127.0.0.1:",
        "[admin]\nlisten = \"0.0.0.0:",
        1,
    );
    assert_ne!(public, manifest);
    let checked = check(&public);
    let stderr = checked.assert_rejected_at("admin.token");
    assert!(
        stderr.contains("reachable from other machines"),
        "{checked}"
    );
    let short = manifest.replacen("[admin]\n", "[admin]\ntoken = \"short\"\n", 1);
    check(&short).assert_rejected_at("admin.token");
    let both = manifest.replacen(
        "[admin]\n",
        &format!("[admin]\ntoken = \"{TOKEN}\"\ntoken_file = \"t\"\n"),
        1,
    );
    check(&both).assert_rejected_at("admin.token_file");
}
