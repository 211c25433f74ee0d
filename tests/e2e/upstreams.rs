//! Upstreams prove what the host does for endpoints on its own, with real
//! backends that misbehave as real ones do (one that answers 500, one that
//! hangs, one that resets every connection, one that is slow):
//!
//! - active health checks keep a failing endpoint out and bring it back,
//!   and `/status` shows what they saw;
//! - passive outlier detection ejects an endpoint that keeps failing (5xx,
//!   timeouts), for longer each time, and never more than
//!   `max_ejected_percent` of an upstream;
//! - retries go to another endpoint, never resend a POST that was sent, and
//!   stay within the retry budget during an outage;
//! - the pool caps connections per endpoint, and h2c upstreams work;
//! - reloads keep pooled connections, health and ejections.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::support::{
    Backend, Client, Portier, RunningBackend, body, endpoints, one_upstream,
    one_upstream_with_admin, wait_until,
};

/// Sequential GETs; the statuses in order.
async fn statuses(client: &Client, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(client.get(&format!("/r/{i}")).await.status);
    }
    out
}

/// The endpoint entries of upstream `app` in `/status`.
async fn endpoint_status(proxy: &Portier) -> Vec<serde_json::Value> {
    let status = proxy.status().await;
    status["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints in /status: {status}"))
        .clone()
}

/// The `/status` entry of the endpoint at `backend`'s address.
async fn status_of(proxy: &Portier, backend: &RunningBackend) -> serde_json::Value {
    let address = backend.addr().to_string();
    endpoint_status(proxy)
        .await
        .into_iter()
        .find(|e| e["address"] == address.as_str())
        .unwrap_or_else(|| panic!("{address} is not in /status"))
}

/// Wait until `/status` says `backend`'s `key` is `value`.
async fn wait_for_status(
    proxy: &Portier,
    backend: &RunningBackend,
    key: &str,
    value: serde_json::Value,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = status_of(proxy, backend).await;
        if now[key] == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never became {value}: {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const HEALTH: &str = r#"health = { path = "/health", interval = "100ms", timeout = "100ms", healthy_threshold = 2, unhealthy_threshold = 2 }"#;

// === active health checks ===

#[tokio::test]
async fn health_checks_keep_a_failing_endpoint_out_and_bring_it_back() {
    let a = Backend::new("a").health("/health").start().await;
    let b = Backend::new("b").health("/health").start().await;
    let proxy = Portier::start(&one_upstream_with_admin(&endpoints(&[&a, &b]), HEALTH, "")).await;
    let client = proxy.client();

    // Both pass their first check before the proxy serves.
    assert!(a.probes() >= 1 && b.probes() >= 1, "checked before serving");
    statuses(&client, 10).await;
    assert_eq!((a.requests(), b.requests()), (5, 5));

    b.set_healthy(false);
    wait_for_status(&proxy, &b, "active_health", "unhealthy".into()).await;
    let now = status_of(&proxy, &b).await;
    assert_eq!(now["healthy"], false);
    assert_eq!(now["last_check"], "503");
    let before = b.requests();
    let got = statuses(&client, 20).await;
    assert!(got.iter().all(|s| *s == StatusCode::OK), "{got:?}");
    assert_eq!(b.requests(), before, "no traffic to an unhealthy endpoint");

    b.set_healthy(true);
    wait_for_status(&proxy, &b, "active_health", "healthy".into()).await;
    statuses(&client, 10).await;
    assert!(b.requests() > before, "back in rotation");
}

#[tokio::test]
async fn an_upstream_whose_every_endpoint_fails_its_checks_answers_503() {
    let a = Backend::new("a").health("/health").start().await;
    a.set_healthy(false);
    let proxy = Portier::start(&one_upstream_with_admin(&endpoints(&[&a]), HEALTH, "")).await;

    // The first check answered before serving: unhealthy from the start.
    assert_eq!(status_of(&proxy, &a).await["active_health"], "unhealthy");
    let reply = proxy.client().get("/").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn health_checks_send_the_configured_path_and_host() {
    let a = Backend::new("a").health("/ready").start().await;
    let extra = r#"health = { path = "/ready", interval = "100ms", timeout = "100ms", host = "svc.internal", expect = ["200-204"] }"#;
    let proxy = Portier::start(&one_upstream_with_admin(&endpoints(&[&a]), extra, "")).await;
    let probes = a.probes();
    assert!(probes >= 1);
    assert_eq!(status_of(&proxy, &a).await["last_check"], "200");
    // Requests to other paths are traffic, not probes.
    assert_eq!(a.requests(), 0);
}

// === passive outlier detection ===

#[tokio::test]
async fn an_endpoint_answering_500_is_ejected_after_consecutive_failures_and_returns() {
    let good = Backend::new("good").start().await;
    let bad = Backend::new("bad").status(500).start().await;
    let extra = r#"outlier = { consecutive_failures = 3, base_ejection = "1s" }"#;
    let proxy = Portier::start(&one_upstream_with_admin(
        &endpoints(&[&good, &bad]),
        extra,
        "",
    ))
    .await;
    let client = proxy.client();

    // Round-robin: bad gets every other request until its third 500 in a row.
    let got = statuses(&client, 6).await;
    assert_eq!(bad.requests(), 3, "{got:?}");
    assert_eq!(
        got.iter()
            .filter(|s| **s == StatusCode::INTERNAL_SERVER_ERROR)
            .count(),
        3,
        "the 500s reach the client (no retry on 500 unless configured)"
    );
    let ejected_at = Instant::now();
    let entry = status_of(&proxy, &bad).await;
    assert_eq!(entry["ejected"], true, "{entry}");
    assert_eq!(entry["ejections"], 1);

    let got = statuses(&client, 10).await;
    assert!(got.iter().all(|s| *s == StatusCode::OK), "{got:?}");
    assert_eq!(bad.requests(), 3, "ejected: no traffic");

    // After base_ejection it is tried again.
    wait_until("the ejection ends", Duration::from_secs(10), || {
        ejected_at.elapsed() >= Duration::from_millis(1000)
    })
    .await;
    statuses(&client, 4).await;
    assert!(bad.requests() > 3, "tried again after the ejection");
}

#[tokio::test]
async fn a_hanging_endpoint_is_ejected_after_timeouts() {
    let good = Backend::new("good").start().await;
    let hung = Backend::new("hung")
        .delay(Duration::from_secs(30))
        .start()
        .await;
    let extra = r#"timeout = "200ms"
outlier = { consecutive_failures = 2, base_ejection = "60s" }"#;
    let proxy = Portier::start(&one_upstream_with_admin(
        &endpoints(&[&good, &hung]),
        extra,
        "",
    ))
    .await;
    let client = proxy.client();

    let got = statuses(&client, 4).await;
    assert_eq!(
        got,
        [
            StatusCode::OK,
            StatusCode::GATEWAY_TIMEOUT,
            StatusCode::OK,
            StatusCode::GATEWAY_TIMEOUT
        ]
    );
    assert_eq!(status_of(&proxy, &hung).await["ejected"], true);
    let got = statuses(&client, 6).await;
    assert!(got.iter().all(|s| *s == StatusCode::OK), "{got:?}");
    assert_eq!(hung.requests(), 2);
}

#[tokio::test]
async fn no_more_than_max_ejected_percent_of_an_upstream_is_ejected() {
    let backends = [
        Backend::new("a").status(503).start().await,
        Backend::new("b").status(503).start().await,
        Backend::new("c").status(503).start().await,
        Backend::new("d").status(503).start().await,
    ];
    let [a, b, c, d] = &backends;
    let extra = r#"outlier = { consecutive_failures = 1, base_ejection = "60s", max_ejected_percent = 50 }"#;
    let proxy = Portier::start(&one_upstream_with_admin(
        &endpoints(&[a, b, c, d]),
        extra,
        "",
    ))
    .await;

    let got = statuses(&proxy.client(), 20).await;
    // Half of four may be ejected; the other two keep serving (their 503s
    // reach the client) rather than the upstream going dark.
    assert!(
        got.iter().all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{got:?}"
    );
    let ejected = endpoint_status(&proxy)
        .await
        .iter()
        .filter(|e| e["ejected"] == true)
        .count();
    assert_eq!(ejected, 2);
    let served: usize = backends.iter().map(RunningBackend::requests).sum();
    assert_eq!(served, 20, "every request reached some backend");
}

// === retries ===

#[tokio::test]
async fn a_get_that_met_a_reset_is_retried_on_another_endpoint() {
    let resetting = Backend::new("resetting").reset().start().await;
    let good = Backend::new("good").start().await;
    let extra = r#"retry = { attempts = 2, on = ["reset"] }
outlier = { consecutive_failures = 0 }"#;
    let proxy = Portier::start(&one_upstream(&endpoints(&[&resetting, &good]), extra, "")).await;

    let got = statuses(&proxy.client(), 10).await;

    assert!(got.iter().all(|s| *s == StatusCode::OK), "{got:?}");
    // Round-robin: a retry's pick takes the next turn, so every first try
    // lands on the resetting endpoint and every retry on the good one.
    assert_eq!(resetting.requests(), 10);
    assert_eq!(good.requests(), 10);
}

#[tokio::test]
async fn a_post_that_was_sent_is_never_sent_to_a_second_backend() {
    let resetting = Backend::new("resetting").reset().start().await;
    let good = Backend::new("good").start().await;
    let extra = r#"retry = { attempts = 3, on = ["reset", "timeout", 502, 503] }
outlier = { consecutive_failures = 0 }"#;
    let proxy = Portier::start(&one_upstream(&endpoints(&[&resetting, &good]), extra, "")).await;
    let client = proxy.client();

    let mut got = Vec::new();
    for i in 0..10 {
        let request = client
            .request(Method::POST, &format!("/order/{i}"))
            .body(body::full("one order"))
            .unwrap();
        got.push(client.send(request).await.status);
    }

    // Each POST went to exactly one backend: those that met the reset fail.
    assert_eq!(resetting.requests() + good.requests(), 10, "{got:?}");
    assert_eq!(
        got.iter()
            .filter(|s| **s == StatusCode::BAD_GATEWAY)
            .count(),
        resetting.requests()
    );
    assert_eq!(resetting.requests(), 5);
}

#[tokio::test]
async fn a_get_answered_with_a_listed_status_is_retried_but_a_post_is_not() {
    let failing = Backend::new("failing").status(503).start().await;
    let good = Backend::new("good").start().await;
    let extra = r#"retry = { attempts = 2, on = [503] }
outlier = { consecutive_failures = 0 }"#;
    let proxy = Portier::start(&one_upstream(&endpoints(&[&failing, &good]), extra, "")).await;
    let client = proxy.client();

    let got = statuses(&client, 4).await;
    assert!(got.iter().all(|s| *s == StatusCode::OK), "{got:?}");
    // Each GET: the failing endpoint first, then the retry on the good one.
    assert_eq!((failing.requests(), good.requests()), (4, 4));

    let mut posts = Vec::new();
    for _ in 0..2 {
        let request = client
            .request(Method::POST, "/p")
            .body(body::full("x"))
            .unwrap();
        posts.push(client.send(request).await.status);
    }
    posts.sort();
    assert_eq!(posts, [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE]);
    assert_eq!((failing.requests(), good.requests()), (5, 5));
}

#[tokio::test]
async fn retries_stay_within_the_budget_during_an_outage() {
    let a = Backend::new("a").reset().start().await;
    let b = Backend::new("b").reset().start().await;
    let c = Backend::new("c").reset().start().await;
    // Every endpoint fails; nothing is ejected; up to 3 tries a request,
    // but retries may add only 20 % of the requests.
    let extra = r#"retry = { attempts = 3, on = ["reset"], budget = 0.2, min_per_second = 0 }
outlier = { consecutive_failures = 0 }"#;
    let proxy = Portier::start(&one_upstream(&endpoints(&[&a, &b, &c]), extra, "")).await;

    let got = statuses(&proxy.client(), 100).await;

    assert!(got.iter().all(|s| *s == StatusCode::BAD_GATEWAY), "{got:?}");
    let sent = a.requests() + b.requests() + c.requests();
    assert!(
        (100..=120).contains(&sent),
        "100 requests became {sent} attempts: more than the 20 % budget"
    );
    assert!(sent > 100, "the budget allowed some retries");
}

// === the pool ===

#[tokio::test]
async fn max_connections_makes_excess_requests_wait_then_503() {
    let slow = Backend::new("slow")
        .delay(Duration::from_millis(800))
        .start()
        .await;
    let extra = r#"pool = { max_connections = 1, queue_timeout = "100ms" }
retry = { attempts = 1 }"#;
    let proxy = Portier::start(&one_upstream(&endpoints(&[&slow]), extra, "")).await;
    let (first, second) = (proxy.client(), proxy.client());

    let one = tokio::spawn(async move { first.get("/one").await.status });
    wait_until(
        "the first request reaches the backend",
        Duration::from_secs(10),
        || slow.requests() == 1,
    )
    .await;
    let two = second.get("/two").await;

    assert_eq!(
        two.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        two.text()
    );
    assert_eq!(one.await.unwrap(), StatusCode::OK);
    assert_eq!(slow.requests(), 1, "the second never reached the backend");
}

#[tokio::test]
async fn an_h2c_upstream_gets_requests_and_bodies_over_http2() {
    let h2 = Backend::new("h2").h2c().start().await;
    let proxy = Portier::start(&one_upstream(&endpoints(&[&h2]), r#"protocol = "h2c""#, "")).await;
    let client = proxy.client();

    let get = client.get_with("/g?q=1", &[("host", "svc.example")]).await;
    assert_eq!(get.status, StatusCode::OK, "{}", get.text());
    let echo = get.echo();
    assert_eq!(echo.version, "HTTP/2.0");
    assert_eq!(echo.path, "/g");
    assert_eq!(echo.query.as_deref(), Some("q=1"));

    let request = client
        .request(Method::POST, "/p")
        .body(body::full(vec![7u8; 100_000]))
        .unwrap();
    let post = client.send(request).await;
    assert_eq!(post.status, StatusCode::OK, "{}", post.text());
    assert_eq!(post.echo().body_len, 100_000);
    assert_eq!(
        h2.connections(),
        1,
        "both requests on one HTTP/2 connection"
    );
}

// === reloads ===

#[tokio::test]
async fn twenty_reloads_keep_the_pooled_upstream_connection() {
    let backend = Backend::new("app").start().await;
    let manifest = one_upstream_with_admin(&endpoints(&[&backend]), "", "").replacen(
        "[server]\n",
        "[server]\nworkers = 1\n",
        1,
    );
    let proxy = Portier::start(&manifest).await;
    let client = proxy.client();

    client.get("/warm").await;
    for i in 0..20 {
        assert_eq!(proxy.reload().await.status, StatusCode::OK);
        let reply = client.get(&format!("/after/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    assert_eq!(proxy.generation().await, 21);
    assert_eq!(backend.requests(), 21);
    assert_eq!(
        backend.connections(),
        1,
        "one upstream connection across 20 reloads"
    );
    assert_eq!(status_of(&proxy, &backend).await["pool"]["connects"], 1);
}

#[tokio::test]
async fn a_reload_keeps_an_ejection_and_forgets_a_removed_endpoint() {
    let good = Backend::new("good").start().await;
    let bad = Backend::new("bad").status(500).start().await;
    let extra = r#"outlier = { consecutive_failures = 1, base_ejection = "60s" }"#;
    let proxy = Portier::start(&one_upstream_with_admin(
        &endpoints(&[&good, &bad]),
        extra,
        "",
    ))
    .await;
    let client = proxy.client();
    statuses(&client, 2).await;
    assert_eq!(status_of(&proxy, &bad).await["ejected"], true);

    assert_eq!(proxy.reload().await.status, StatusCode::OK);
    assert_eq!(
        status_of(&proxy, &bad).await["ejected"],
        true,
        "kept across the reload"
    );
    statuses(&client, 6).await;
    assert_eq!(bad.requests(), 1);

    // A manifest without `bad`: gone from /status, no traffic.
    let only_good = one_upstream_with_admin(&endpoints(&[&good]), extra, "");
    proxy.rewrite_manifest(&with_same_addresses(&proxy, &only_good));
    assert_eq!(proxy.reload().await.status, StatusCode::OK);
    assert_eq!(endpoint_status(&proxy).await.len(), 1);
    statuses(&client, 4).await;
    assert_eq!(bad.requests(), 1);
}

/// `manifest` with the running proxy's listen and admin addresses (they
/// change only on restart): its `listen = ` lines, in order, become the
/// running manifest's.
fn with_same_addresses(proxy: &Portier, manifest: &str) -> String {
    let running = std::fs::read_to_string(proxy.manifest_path()).expect("the running manifest");
    let is_listen = |l: &&str| l.starts_with("listen = ");
    let mut out = manifest.to_owned();
    for (theirs, ours) in manifest
        .lines()
        .filter(is_listen)
        .zip(running.lines().filter(is_listen))
    {
        out = out.replacen(theirs, ours, 1);
    }
    out
}

#[tokio::test]
async fn a_put_whose_body_fits_body_buffer_is_retried_whole_and_a_larger_one_is_not() {
    let resetting = Backend::new("resetting").reset().start().await;
    let good = Backend::new("good").start().await;
    let extra = r#"retry = { attempts = 2, on = ["reset"], body_buffer = "1KiB" }
outlier = { consecutive_failures = 0 }"#;
    let proxy = Portier::start(&one_upstream(&endpoints(&[&resetting, &good]), extra, "")).await;
    let client = proxy.client();

    // Round-robin sends the first try of each to the resetting endpoint.
    let small = client
        .request(Method::PUT, "/small")
        .body(body::full(vec![b's'; 1000]))
        .unwrap();
    let reply = client.send(small).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let echo = reply.echo();
    assert_eq!(echo.backend, "good");
    assert_eq!(echo.body_len, 1000, "the retry carried the whole body");

    let large = client
        .request(Method::PUT, "/large")
        .body(body::full(vec![b'l'; 2000]))
        .unwrap();
    let reply = client.send(large).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!((resetting.requests(), good.requests()), (2, 1));
}
