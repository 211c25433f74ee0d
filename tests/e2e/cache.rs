//! The response cache: the built-in `cache` policy over the host's store,
//! against backends that count what reaches them. The primer's exercise (a
//! GET cached for 30 seconds: the backend answers once), variants by Vary,
//! HEAD from a GET's
//! entry, what is never stored (5xx, no-store, private, Set-Cookie, answers
//! to Authorization), what the client may bypass, the byte bounds, and the
//! store outliving a reload.

use std::time::Duration;

use http::{Method, StatusCode};

use crate::support::{Backend, Portier, RunningBackend, endpoints, one_upstream_with_admin};

/// One upstream over `backend`, the cache stage with `config`, `extra` tables.
async fn proxy(backend: &RunningBackend, config: &str, extra: &str) -> Portier {
    let pipeline = format!("[[pipeline]]\nplugin = \"cache\"\nconfig = {{ {config} }}\n");
    Portier::start(&format!(
        "{}\n{extra}\n",
        one_upstream_with_admin(&endpoints(&[backend]), "", &pipeline)
    ))
    .await
}

#[tokio::test]
async fn a_get_is_stored_and_served_again_while_the_backend_is_asked_once() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "", "").await;
    let client = proxy.client();

    let first = client.get("/page?x=1").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    for _ in 0..4 {
        let again = client.get("/page?x=1").await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.header("x-cache"), Some("HIT"));
        assert_eq!(again.body, first.body, "the stored body, byte for byte");
        let age: u64 = again.header("age").expect("Age on a hit").parse().unwrap();
        assert!(age < 30, "{age}");
    }
    assert_eq!(
        backend.requests(),
        1,
        "the primer's exercise: one upstream request"
    );

    // Another query is another key; HEAD shares GET's entry and gets no body.
    assert_eq!(
        client.get("/page?x=2").await.header("x-cache"),
        Some("MISS")
    );
    let head = client
        .send(
            client
                .request(Method::HEAD, "/page?x=1")
                .body(crate::support::body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(head.header("x-cache"), Some("HIT"));
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );
    assert_eq!(backend.requests(), 2);

    let status = proxy.status().await["cache"].clone();
    assert_eq!(status["hits"], 5, "{status}");
    assert_eq!(status["misses"], 2, "{status}");
    assert_eq!(status["entries"], 2, "{status}");
    assert!(status["bytes"].as_u64().unwrap() > first.body.len() as u64);
}

#[tokio::test]
async fn a_5xx_is_never_stored_even_when_it_says_it_may_be() {
    let backend = Backend::new("app")
        .status(503)
        .response_header("cache-control", "public, max-age=600")
        .start()
        .await;
    let proxy = proxy(&backend, "", "").await;
    for _ in 0..3 {
        let reply = proxy.client().get("/down").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.header("x-cache"), Some("MISS"));
    }
    assert_eq!(backend.requests(), 3, "every request went to the backend");
    // Listing a 5xx is a configuration error, not a silent no.
    let checked = crate::support::check(&one_upstream_with_admin(
        &endpoints(&[&backend]),
        "",
        "[[pipeline]]\nplugin = \"cache\"\nconfig.ttl = { \"500\" = \"10s\" }\n",
    ));
    let reason = checked.assert_rejected_at("pipeline[0].config.ttl.500");
    assert!(reason.contains("never stored"), "{reason}");
}

/// How many of three GETs of `path` (with `headers`) reached the backend.
async fn upstream_requests(config: &str, backend: Backend, headers: &[(&str, &str)]) -> usize {
    let backend = backend.start().await;
    let proxy = proxy(&backend, config, "").await;
    for _ in 0..3 {
        let reply = proxy.client().get_with("/r", headers).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    backend.requests()
}

#[tokio::test]
async fn no_store_private_set_cookie_and_authorization_are_not_stored_unless_allowed() {
    let app = || Backend::new("app");
    let with = |name: &str, value: &str| app().response_header(name, value);
    assert_eq!(
        upstream_requests("", with("cache-control", "no-store"), &[]).await,
        3
    );
    assert_eq!(
        upstream_requests("", with("cache-control", "private, max-age=60"), &[]).await,
        3
    );
    assert_eq!(
        upstream_requests("", with("set-cookie", "session=1"), &[]).await,
        3
    );
    assert_eq!(
        upstream_requests(
            "allow_set_cookie = true",
            with("set-cookie", "session=1"),
            &[]
        )
        .await,
        1
    );
    let auth = [("authorization", "Bearer t")];
    assert_eq!(upstream_requests("", app(), &auth).await, 3);
    assert_eq!(
        upstream_requests("allow_authorization = true", app(), &auth).await,
        1
    );
    // A response that says it is for everyone may be shared (RFC 9111 §3.5).
    assert_eq!(
        upstream_requests("", with("cache-control", "public"), &auth).await,
        1
    );
    // Vary: * can never be matched.
    assert_eq!(upstream_requests("", with("vary", "*"), &[]).await, 3);
}

#[tokio::test]
async fn the_responses_lifetime_is_honoured_and_a_client_may_bypass_the_cache() {
    let backend = Backend::new("app")
        .response_header("cache-control", "max-age=1")
        .start()
        .await;
    let proxy = proxy(&backend, "", "").await;
    let client = proxy.client();
    assert_eq!(client.get("/t").await.header("x-cache"), Some("MISS"));
    assert_eq!(client.get("/t").await.header("x-cache"), Some("HIT"));
    let bypass = client
        .get_with("/t", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(bypass.header("x-cache"), Some("BYPASS"));
    assert_eq!(backend.requests(), 2);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        client.get("/t").await.header("x-cache"),
        Some("MISS"),
        "expired"
    );
    assert_eq!(backend.requests(), 3);
    // Other methods never consult it.
    let post = client
        .send(
            client
                .request(Method::POST, "/t")
                .body(crate::support::body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(post.header("x-cache"), Some("BYPASS"));
}

#[tokio::test]
async fn an_object_over_the_size_limit_passes_through_unstored() {
    let backend = Backend::new("app").large_response(64 << 10).start().await;
    let proxy = proxy(
        &backend,
        "",
        "[cache]\nmax_size = \"1MiB\"\nmax_object_size = \"32KiB\"\nstatus_header = \"x-portier-cache\"",
    )
    .await;
    for _ in 0..2 {
        let reply = proxy.client().get("/big").await;
        assert_eq!(reply.body.len(), 64 << 10, "streamed whole to the client");
        assert_eq!(reply.header("x-portier-cache"), Some("MISS"));
        assert!(reply.header("x-cache").is_none());
    }
    assert_eq!(backend.requests(), 2);
    let status = proxy.status().await["cache"].clone();
    assert_eq!(status["too_large"], 2, "{status}");
    assert_eq!(status["entries"], 0, "{status}");
}

#[tokio::test]
async fn a_reload_keeps_stored_responses_and_a_changed_cache_table_starts_empty() {
    let backend = Backend::new("app").start().await;
    let pipeline = "[[pipeline]]\nplugin = \"cache\"\n";
    let manifest = one_upstream_with_admin(&endpoints(&[&backend]), "", pipeline);
    let proxy = Portier::start(&manifest).await;
    let client = proxy.client();
    client.get("/kept").await;
    assert_eq!(client.get("/kept").await.header("x-cache"), Some("HIT"));

    // Same [cache]: the entry survives.
    proxy.rewrite_manifest(&format!("{manifest}\n# touched\n"));
    proxy.reload().await;
    assert_eq!(client.get("/kept").await.header("x-cache"), Some("HIT"));
    assert_eq!(backend.requests(), 1);

    // A different [cache]: a new, empty store.
    proxy.rewrite_manifest(&format!("{manifest}\n[cache]\nmax_size = \"64MiB\"\n"));
    proxy.reload().await;
    assert_eq!(client.get("/kept").await.header("x-cache"), Some("MISS"));
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn a_hundred_concurrent_misses_of_one_key_make_one_upstream_request() {
    let backend = Backend::new("app")
        .delay(Duration::from_millis(300))
        .start()
        .await;
    let proxy = proxy(&backend, "", "").await;
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let client = proxy.client();
        all.spawn(async move { client.get("/popular").await });
    }
    let mut bodies = std::collections::HashSet::new();
    let mut verdicts = std::collections::HashMap::new();
    while let Some(reply) = all.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        bodies.insert(reply.body.clone());
        *verdicts
            .entry(reply.header("x-cache").unwrap_or("-").to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(backend.requests(), 1, "{verdicts:?}");
    assert_eq!(bodies.len(), 1, "every client got the one response");
    assert_eq!(verdicts.get("MISS"), Some(&1), "{verdicts:?}");
    assert_eq!(verdicts.get("HIT"), Some(&99), "{verdicts:?}");
}

#[tokio::test]
async fn misses_waiting_for_a_response_that_is_not_stored_go_upstream_themselves() {
    let backend = Backend::new("app")
        .delay(Duration::from_millis(200))
        .response_header("cache-control", "no-store")
        .start()
        .await;
    let proxy = proxy(&backend, "", "").await;
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = proxy.client();
        all.spawn(async move { client.get("/private").await });
    }
    while let Some(reply) = all.join_next().await {
        assert_eq!(reply.unwrap().status, StatusCode::OK);
    }
    assert_eq!(backend.requests(), 10);
}

#[tokio::test]
async fn a_client_whose_validators_match_the_stored_response_gets_304_from_the_cache() {
    let backend = Backend::new("app")
        .response_header("etag", "\"v7\"")
        .response_header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")
        .response_header("cache-control", "max-age=60")
        .start()
        .await;
    let proxy = proxy(&backend, "", "").await;
    let client = proxy.client();
    assert_eq!(client.get("/doc").await.status, StatusCode::OK);

    let same = client
        .get_with("/doc", &[("if-none-match", "W/\"v7\"")])
        .await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.body.is_empty());
    assert_eq!(same.header("etag"), Some("\"v7\""));
    assert_eq!(same.header("cache-control"), Some("max-age=60"));
    assert_eq!(same.header("x-cache"), Some("HIT"));

    let older = client
        .get_with(
            "/doc",
            &[("if-modified-since", "Mon, 07 Nov 1994 00:00:00 GMT")],
        )
        .await;
    assert_eq!(older.status, StatusCode::NOT_MODIFIED);

    // Another version: the whole stored response.
    let other = client
        .get_with("/doc", &[("if-none-match", "\"v6\"")])
        .await;
    assert_eq!(other.status, StatusCode::OK);
    assert!(!other.body.is_empty());
    assert_eq!(backend.requests(), 1, "all from the cache");
}

/// `POST /cache/purge` on the admin listener with `json`.
async fn purge(proxy: &Portier, json: &str) -> crate::support::Reply {
    let admin = proxy.admin();
    let request = admin
        .request(Method::POST, "/cache/purge")
        .header("content-type", "application/json")
        .body(crate::support::body::full(json.to_owned()))
        .unwrap();
    admin.send(request).await
}

#[tokio::test]
async fn the_admin_api_purges_one_key_or_a_prefix() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "", "").await;
    let client = proxy.client();
    for path in ["/static/a.css", "/static/b.js", "/page"] {
        client.get(path).await;
    }
    assert_eq!(backend.requests(), 3);
    // Keys are the policy's: scheme, host (the client's Host) and path.
    let host = proxy.addr().to_string();
    let prefix = format!("http://{}/static/", host.split(':').next().unwrap());
    let purged = purge(&proxy, &format!("{{\"prefix\": \"{prefix}\"}}")).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text());
    assert_eq!(purged.text(), "{\"purged\":2}");
    let page = format!("http://{}/page", host.split(':').next().unwrap());
    assert_eq!(
        purge(&proxy, &format!("{{\"key\": \"{page}\"}}"))
            .await
            .text(),
        "{\"purged\":1}"
    );
    for path in ["/static/a.css", "/static/b.js", "/page"] {
        assert_eq!(
            client.get(path).await.header("x-cache"),
            Some("MISS"),
            "{path}"
        );
    }
    assert_eq!(backend.requests(), 6);
    // Neither or both: 400, saying what it takes.
    let bad = purge(&proxy, "{}").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text().contains("exactly one"), "{}", bad.text());
}

/// The process's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_flood_of_distinct_urls_stays_within_the_byte_bound() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "", "[cache]\nmax_size = \"4MiB\"").await;
    // Warm up the process (pools, buffers) before the baseline.
    for i in 0..200 {
        proxy.client().get(&format!("/warm?{i}")).await;
    }
    let before = rss_kib(proxy.pid());
    let mut all = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let client = proxy.client();
        all.spawn(async move {
            for i in 0..800 {
                let reply = client.get(&format!("/flood?w={worker}&i={i}")).await;
                assert_eq!(reply.status, StatusCode::OK);
            }
        });
    }
    while let Some(done) = all.join_next().await {
        done.unwrap();
    }
    let grown = rss_kib(proxy.pid()).saturating_sub(before);
    let status = proxy.status().await["cache"].clone();
    assert_eq!(
        status["stored"], 13000,
        "every distinct response was stored: {status}"
    );
    assert!(status["bytes"].as_u64().unwrap() <= 4 << 20, "{status}");
    assert!(status["evictions"].as_u64().unwrap() > 8000, "{status}");
    // 13,000 responses stored, each costing the process ~1.6 KiB, through a
    // 4 MiB store: growth within the bound and the allocator's slack.
    // Stored clones of parsed headers once kept each response's connection
    // buffer alive (~6 KiB more per stored response: over 16 MiB here).
    assert!(
        grown < 10 << 10,
        "RSS grew {grown} KiB for a 4 MiB store: {status}"
    );
}

/// A backend with validators: `GET` answers `200 "hello"` with `ETag: "v1"`
/// and `max-age=1`, or `304` to `If-None-Match: "v1"`; once `failing` is
/// set, `503`. Counts requests and the conditional ones among them.
struct Origin {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    conditional: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    async fn start() -> Origin {
        Origin::with_cache_control("max-age=1").await
    }

    /// With this `Cache-Control` on its answers (200 and 304).
    async fn with_cache_control(cache_control: &'static str) -> Origin {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let conditional = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, c, f) = (requests.clone(), conditional.clone(), failing.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (r, c, f) = (r.clone(), c.clone(), f.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            r.fetch_add(1, SeqCst);
                            let inm = req.headers().get("if-none-match").cloned();
                            if inm.is_some() {
                                c.fetch_add(1, SeqCst);
                            }
                            let response = if f.load(SeqCst) {
                                http::Response::builder()
                                    .status(503)
                                    .body(crate::support::body::full("down"))
                            } else if inm.is_some_and(|v| v == "\"v1\"") {
                                http::Response::builder()
                                    .status(304)
                                    .header("etag", "\"v1\"")
                                    .header("cache-control", cache_control)
                                    .header("x-refreshed", "yes")
                                    .body(crate::support::body::empty())
                            } else {
                                http::Response::builder()
                                    .header("etag", "\"v1\"")
                                    .header("cache-control", cache_control)
                                    .body(crate::support::body::full("hello"))
                            };
                            std::future::ready(Ok::<_, std::convert::Infallible>(response.unwrap()))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin {
            addr,
            requests,
            conditional,
            failing,
            task,
        }
    }
}

async fn origin_proxy(origin: &Origin, cache: &str) -> Portier {
    let pipeline = "[[pipeline]]\nplugin = \"cache\"\n";
    Portier::start(&format!(
        "{}\n[cache]\n{cache}\n",
        one_upstream_with_admin(&crate::support::endpoint(origin.addr), "", pipeline)
    ))
    .await
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_with_its_etag_and_refreshed_on_304() {
    use std::sync::atomic::Ordering::SeqCst;
    let origin = Origin::start().await;
    let proxy = origin_proxy(&origin, "").await;
    let client = proxy.client();
    assert_eq!(client.get("/doc").await.header("x-cache"), Some("MISS"));
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let again = client.get("/doc").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("x-cache"), Some("REVALIDATED"));
    assert_eq!(again.text(), "hello", "the stored body");
    assert_eq!(
        again.header("x-refreshed"),
        Some("yes"),
        "the 304's headers update the entry"
    );
    assert_eq!(
        origin.conditional.load(SeqCst),
        1,
        "asked with If-None-Match"
    );
    // Fresh again for the 304's max-age.
    assert_eq!(client.get("/doc").await.header("x-cache"), Some("HIT"));
    assert_eq!(origin.requests.load(SeqCst), 2);
    let status = proxy.status().await["cache"].clone();
    assert_eq!(status["revalidated"], 1, "{status}");

    // Off: a stale entry is fetched anew.
    let origin2 = Origin::start().await;
    let proxy2 = origin_proxy(&origin2, "revalidate = false").await;
    proxy2.client().get("/doc").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        proxy2.client().get("/doc").await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(origin2.conditional.load(SeqCst), 0);
}

#[tokio::test]
async fn a_failing_upstream_is_answered_from_a_stale_entry_within_stale_if_error() {
    use std::sync::atomic::Ordering::SeqCst;
    let origin = Origin::start().await;
    let proxy = origin_proxy(&origin, "stale_if_error = \"60s\"\nrevalidate = false").await;
    let client = proxy.client();
    client.get("/doc").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // A 5xx from the upstream: the stale entry instead.
    origin.failing.store(true, SeqCst);
    let stale = client.get("/doc").await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert_eq!(stale.text(), "hello");
    let age: u64 = stale.header("age").unwrap().parse().unwrap();
    assert!(age >= 1, "{age}");

    // The upstream gone altogether: the same.
    origin.task.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gone = client.get("/doc").await;
    assert_eq!(gone.header("x-cache"), Some("STALE"), "{}", gone.text());
    let status = proxy.status().await["cache"].clone();
    assert_eq!(status["stale"], 2, "{status}");

    // Without stale_if_error the client sees the failure.
    let origin2 = Origin::start().await;
    let proxy2 = origin_proxy(&origin2, "revalidate = false").await;
    proxy2.client().get("/doc").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    origin2.failing.store(true, SeqCst);
    assert_eq!(
        proxy2.client().get("/doc").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn a_response_that_varies_is_stored_once_per_variant_and_each_client_gets_its_own() {
    let backend = Backend::new("app")
        .response_header("vary", "Accept-Language")
        .start()
        .await;
    let proxy = proxy(&backend, "", "").await;
    let client = proxy.client();
    let get = |lang: Option<&'static str>| {
        let client = client.clone();
        async move {
            match lang {
                Some(l) => client.get_with("/hello", &[("accept-language", l)]).await,
                None => client.get("/hello").await,
            }
        }
    };
    let fr = get(Some("fr")).await;
    let en = get(Some("en")).await;
    let none = get(None).await;
    assert_eq!(backend.requests(), 3, "one fetch per variant");
    for (lang, first) in [(Some("fr"), &fr), (Some("en"), &en), (None, &none)] {
        let again = get(lang).await;
        assert_eq!(again.header("x-cache"), Some("HIT"), "{lang:?}");
        assert_eq!(again.body, first.body, "{lang:?} gets its own variant");
    }
    assert_eq!(fr.echo().header("accept-language"), Some("fr"));
    assert_eq!(backend.requests(), 3);
    // Purging the key purges its variants.
    let key = "http://127.0.0.1/hello";
    let purged = purge(&proxy, &format!("{{\"key\": \"{key}\"}}")).await;
    assert_eq!(purged.text(), "{\"purged\":1}");
    assert_eq!(get(Some("fr")).await.header("x-cache"), Some("MISS"));
}

#[tokio::test]
async fn within_stale_while_revalidate_a_stale_entry_is_served_at_once_and_refreshed_behind() {
    use std::sync::atomic::Ordering::SeqCst;
    let origin = Origin::start().await;
    let proxy = origin_proxy(&origin, "stale_while_revalidate = \"30s\"").await;
    let client = proxy.client();
    client.get("/doc").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let stale = client.get("/doc").await;
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert_eq!(stale.text(), "hello");
    assert!(
        stale.header("x-refreshed").is_none(),
        "served before the refresh"
    );
    // The refresh (a conditional request, answered 304) lands behind it.
    crate::support::wait_until("the background refresh", Duration::from_secs(5), || {
        origin.conditional.load(SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = client.get("/doc").await;
    assert_eq!(fresh.header("x-cache"), Some("HIT"));
    assert_eq!(fresh.header("x-refreshed"), Some("yes"));
    assert_eq!(origin.requests.load(SeqCst), 2);
}

#[tokio::test]
async fn a_cache_policy_of_ones_own_replaces_the_built_in_one() {
    // Its rules, not the built-in's: keyed by path alone, and a 500 kept.
    let backend = Backend::new("app").status(500).start().await;
    let pipeline = format!(
        "[[pipeline]]\nplugin = \"{}\"\nrole = \"cache-policy\"\n",
        crate::support::test_plugin("own_cache").display()
    );
    let proxy = Portier::start(&one_upstream_with_admin(
        &endpoints(&[&backend]),
        "",
        &pipeline,
    ))
    .await;
    let client = proxy.client();
    assert_eq!(client.get("/x?a=1").await.header("x-cache"), Some("MISS"));
    let again = client.get("/x?a=2").await;
    assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        again.header("x-cache"),
        Some("HIT"),
        "the query is not in this key"
    );
    assert_eq!(backend.requests(), 1);
}

#[tokio::test]
async fn a_responses_own_stale_if_error_is_honoured() {
    use std::sync::atomic::Ordering::SeqCst;
    // RFC 5861: the response allows it; [cache] does not say.
    let origin = Origin::with_cache_control("max-age=1, stale-if-error=60").await;
    let proxy = origin_proxy(&origin, "revalidate = false").await;
    let client = proxy.client();
    client.get("/doc").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    origin.failing.store(true, SeqCst);
    let stale = client.get("/doc").await;
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert_eq!(stale.text(), "hello");
}
