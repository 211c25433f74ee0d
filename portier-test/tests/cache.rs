//! The built-in cache policy, run in-process through the harness: the key
//! each request is looked up under, which requests bypass the cache, which
//! responses may be stored and for how long, and a stored one served.

use portier_test::{Harness, Request, Response, Stage};

async fn cache(config: &str) -> Harness {
    Harness::builder()
        .stage(Stage::builtin("cache").config(config))
        .start()
        .await
        .unwrap()
}

fn get(target: &str) -> Request {
    Request::get(target)
        .header("host", "shop.example:8443")
        .header("x-forwarded-proto", "https")
}

#[tokio::test]
async fn a_get_misses_under_scheme_host_path_and_query_then_its_stored_response_hits() {
    let proxy = cache("").await;
    let miss = proxy.request(get("/a?b=1")).await;
    assert!(miss.forwarded());
    assert_eq!(miss.cache().as_deref(), Some("MISS"));
    // The scheme from X-Forwarded-Proto, the host without its port.
    assert_eq!(miss.cache_key(), Some("https://shop.example/a?b=1"));
    let upstream = Response::new(200)
        .header("cache-control", "max-age=60")
        .with_body("catalogue");
    assert_eq!(proxy.store(miss, &upstream).await, Ok(Some(60)));

    let hit = proxy.request(get("/a?b=1")).await;
    assert_eq!(hit.cache().as_deref(), Some("HIT"));
    assert!(!hit.forwarded());
    assert_eq!(hit.status(), Some(200));
    // A HEAD shares the GET's key.
    let head = proxy
        .request(
            Request::new("HEAD", "/a?b=1")
                .header("host", "shop.example")
                .header("x-forwarded-proto", "https"),
        )
        .await;
    assert_eq!(head.cache().as_deref(), Some("HIT"));
    drop(head);
    // Host names are case-insensitive: another spelling is the same page.
    let shouted = proxy
        .request(
            Request::get("/a?b=1")
                .header("host", "SHOP.Example")
                .header("x-forwarded-proto", "https"),
        )
        .await;
    assert_eq!(shouted.cache().as_deref(), Some("HIT"));
    drop(shouted);
    // Another query, or plain http, is another key.
    for other in [
        get("/a?b=2"),
        Request::get("/a?b=1").header("host", "shop.example"),
    ] {
        let out = proxy.request(other).await;
        assert_eq!(
            out.cache().as_deref(),
            Some("MISS"),
            "{:?}",
            out.cache_key()
        );
    }
    // A response that varies is the variant of the request's values only.
    let lang = |l: &str| get("/welcome").header("accept-language", l);
    let miss = proxy.request(lang("fr")).await;
    let varies = Response::new(200).header("vary", "Accept-Language");
    assert_eq!(proxy.store(miss, &varies).await, Ok(Some(30)));
    assert_eq!(
        proxy.request(lang("fr")).await.cache().as_deref(),
        Some("HIT")
    );
    assert_eq!(
        proxy.request(lang("en")).await.cache().as_deref(),
        Some("MISS")
    );
}

#[tokio::test]
async fn other_methods_upgrades_and_no_cache_requests_bypass_the_cache() {
    let proxy = cache("").await;
    for request in [
        Request::post("/a")
            .header("content-type", "text/plain")
            .body("x"),
        Request::new("DELETE", "/a"),
        get("/ws").header("upgrade", "websocket"),
        get("/a").header("cache-control", "no-store"),
        get("/a").header("cache-control", "no-cache"),
        get("/a").header("cache-control", "max-age=0"),
        get("/a").header("pragma", "no-cache"),
    ] {
        let out = proxy.request(request).await;
        assert!(out.forwarded());
        assert_eq!(out.cache().as_deref(), Some("BYPASS"));
        assert_eq!(out.cache_key(), None);
    }
    // bypass_on_no_cache = false: no-cache is looked up, no-store never.
    let proxy = cache("bypass_on_no_cache = false").await;
    let out = proxy
        .request(get("/a").header("cache-control", "no-cache"))
        .await;
    assert_eq!(out.cache().as_deref(), Some("MISS"));
    drop(out);
    let out = proxy
        .request(get("/a").header("cache-control", "no-store"))
        .await;
    assert_eq!(out.cache().as_deref(), Some("BYPASS"));
}

/// How long the policy keeps `response` to the request of `out`.
async fn kept(proxy: &Harness, out: &portier_test::Outcome, response: Response) -> Option<u32> {
    proxy.storable(out, &response).await.unwrap()
}

#[tokio::test]
async fn a_response_is_kept_for_its_own_lifetime_or_its_statuss_ttl_unless_private() {
    let proxy = cache(r#"ttl = { "200" = "5m", "404" = "30s" }"#).await;
    let out = proxy.request(get("/p")).await;
    assert_eq!(kept(&proxy, &out, Response::new(200)).await, Some(300));
    assert_eq!(kept(&proxy, &out, Response::new(404)).await, Some(30));
    let max_age = Response::new(200).header("cache-control", "max-age=60");
    assert_eq!(kept(&proxy, &out, max_age).await, Some(60));
    // s-maxage is the shared cache's; Age is time already spent.
    let aged = Response::new(200)
        .header("cache-control", "max-age=60, s-maxage=120")
        .header("age", "20");
    assert_eq!(kept(&proxy, &out, aged).await, Some(100));
    // Statuses not listed, and every 5xx, are never kept.
    for status in [201, 301, 500, 503] {
        assert_eq!(
            kept(&proxy, &out, Response::new(status)).await,
            None,
            "{status}"
        );
    }
    for (name, value) in [
        ("cache-control", "no-store"),
        ("cache-control", "private, max-age=60"),
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("set-cookie", "session=abc"),
        ("vary", "accept-encoding, *"),
    ] {
        let response = Response::new(200).header(name, value);
        assert_eq!(kept(&proxy, &out, response).await, None, "{name}: {value}");
    }
    drop(out);
    // An answer to a request with credentials, only when it says public.
    let out = proxy
        .request(get("/me").header("authorization", "Bearer t"))
        .await;
    assert_eq!(out.cache().as_deref(), Some("MISS"));
    assert_eq!(kept(&proxy, &out, Response::new(200)).await, None);
    let public = Response::new(200).header("cache-control", "public, max-age=10");
    assert_eq!(kept(&proxy, &out, public).await, Some(10));
}

#[tokio::test]
async fn configured_headers_and_cookies_become_part_of_the_key() {
    let proxy = cache(r#"key = { headers = ["Accept-Language"], cookies = ["lang"] }"#).await;
    let out = proxy
        .request(
            get("/home")
                .header("accept-language", "fr")
                .header("cookie", "session=s1; lang=fr-CH"),
        )
        .await;
    assert_eq!(
        out.cache_key(),
        Some("https://shop.example/home\naccept-language: fr\ncookie lang=fr-CH")
    );
    drop(out);
    // Other cookies are not part of it.
    let out = proxy
        .request(
            get("/home")
                .header("accept-language", "fr")
                .header("cookie", "lang=fr-CH; session=s2"),
        )
        .await;
    assert_eq!(
        out.cache_key(),
        Some("https://shop.example/home\naccept-language: fr\ncookie lang=fr-CH")
    );
}

#[tokio::test]
async fn a_5xx_ttl_is_refused_at_load_with_the_key() {
    let err = Harness::builder()
        .stage(Stage::builtin("cache").config(r#"ttl = { "200" = "1m", "503" = "10s" }"#))
        .start()
        .await
        .err()
        .expect("a policy storing outages must not load");
    assert!(
        err.to_string()
            .contains("pipeline[0].config.ttl.503: a 5xx is never stored"),
        "{err}"
    );
}
