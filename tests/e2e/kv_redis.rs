//! The Redis kv backend against a real `redis-server`: one rate limit
//! shared exactly by two portier processes, each stage's outage policy
//! while Redis is down, recovery without a restart, and the backend's
//! atomic operations.

use std::time::Duration;

use http::StatusCode;
use portier::kv::{Kv, KvError, Quota};
use portier::manifest::{KvBackend, KvConfig, RedisSettings};

use crate::support::{Backend, Portier, RedisServer, RunningBackend, check, free_addr};

/// A proxy whose rate limit (10 a minute per client address) counts in
/// `redis`; `outage` is the stage's `kv.outage`.
fn limited(backend: &RunningBackend, redis: &RedisServer, outage: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"

[admin]
listen = "{admin}"

[kv]
backend = "redis"
url = "{url}"
timeout = "200ms"

[[upstreams]]
name = "app"
endpoints = ["{app}"]

[[pipeline]]
plugin = "rate-limit"
kv = {{ outage = "{outage}" }}
config = {{ requests = 10, window = "1m" }}
"#,
        listen = free_addr(),
        admin = free_addr(),
        url = redis.url(),
        app = backend.addr(),
    )
}

/// Statuses of `n` requests sent alternately through `proxies`.
async fn alternate(proxies: &[&Portier], n: usize) -> Vec<StatusCode> {
    let clients: Vec<_> = proxies.iter().map(|p| p.client()).collect();
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            clients[i % clients.len()]
                .get(&format!("/r{i}"))
                .await
                .status,
        );
    }
    out
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test]
async fn two_proxies_share_one_limit_and_each_stage_keeps_its_outage_policy() {
    let backend = Backend::new("app").start().await;
    let mut redis = RedisServer::start().await;
    let closed = Portier::start(&limited(&backend, &redis, "closed")).await;
    let open = Portier::start(&limited(&backend, &redis, "open")).await;

    // One limit of 10 for the fleet: exactly 10 of 16 pass, whichever proxy.
    let statuses = alternate(&[&closed, &open], 16).await;
    assert_eq!(count(&statuses, StatusCode::OK), 10, "{statuses:?}");
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 6);
    assert_eq!(&statuses[..10], [StatusCode::OK; 10]);

    // Redis goes away: the closed stage answers 503, the open one is skipped.
    redis.stop();
    for _ in 0..3 {
        let c = closed.client().get("/down").await;
        assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE, "{}", c.text());
        assert_eq!(open.client().get("/down").await.status, StatusCode::OK);
    }
    let outage_lines = |p: &Portier| p.count_log_lines(|l| l.contains("kv backend unreachable"));
    assert_eq!(
        outage_lines(&closed),
        1,
        "logged once per outage\n{}",
        closed.logs()
    );
    assert_eq!(outage_lines(&open), 1);
    let line = closed
        .wait_for_log_line("for the 503", |l| l.contains("path=/down"))
        .await;
    assert!(
        line.contains("flags=\"KV\"") && line.contains("stage=\"rate-limit\""),
        "{line}"
    );
    // Not the plugin's failure: the stage is not quarantined.
    let status = closed.status().await;
    assert_eq!(status["stages"][0]["quarantined"], false, "{status}");

    // Redis is back (empty: no persistence); both recover by themselves.
    redis.restart().await;
    let client = closed.client();
    let mut recovered = false;
    for _ in 0..100 {
        if client.get("/probe").await.status == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "never recovered\n{}", closed.logs());
    closed
        .wait_for_log_line("saying kv is back", |l| {
            l.contains("kv backend reachable again")
        })
        .await;
    // The fleet's limit holds again: 9 more (the probe took one), then 429s.
    let statuses = alternate(&[&closed, &open], 12).await;
    assert_eq!(count(&statuses, StatusCode::OK), 9, "{statuses:?}");
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 3);

    let metrics = closed.admin().get("/metrics").await.text();
    let errors = metrics
        .lines()
        .find(|l| l.starts_with("portier_kv_errors_total{backend=\"redis\",op=\"increment\"}"))
        .unwrap_or_else(|| panic!("no redis kv errors counted:\n{metrics}"));
    assert!(!errors.ends_with(" 0"), "{errors}");
}

#[tokio::test]
async fn the_plugin_decides_by_default_and_the_rate_limit_fails_open() {
    let backend = Backend::new("app").start().await;
    let mut redis = RedisServer::start().await;
    let proxy = Portier::start(&limited(&backend, &redis, "plugin")).await;
    assert_eq!(proxy.client().get("/").await.status, StatusCode::OK);
    redis.stop();
    assert_eq!(proxy.client().get("/").await.status, StatusCode::OK);
    proxy
        .wait_for_log_line("from the plugin, about kv", |l| {
            l.contains("rate-limit") && l.contains("not limiting until kv works again")
        })
        .await;
}

fn redis_config(redis: &RedisServer, prefix: &str) -> KvConfig {
    KvConfig {
        backend: KvBackend::Redis(RedisSettings {
            url: redis.url(),
            prefix: prefix.into(),
            timeout: Duration::from_millis(500),
        }),
    }
}

#[tokio::test]
async fn redis_operations_keep_the_kv_contract() {
    let redis = RedisServer::start().await;
    let kv = Kv::default();
    let store = kv.store(&redis_config(&redis, "t1:")).unwrap();
    let a = store.namespace("a", Quota::default());
    let ab = store.namespace("ab", Quota::default());

    a.set("bk", b"1".to_vec(), None).await.unwrap();
    assert_eq!(ab.get("k").await.unwrap(), None, "namespaces are apart");
    assert_eq!(a.get("bk").await.unwrap(), Some(b"1".to_vec()));
    assert!(a.delete("bk").await.unwrap());
    assert!(!a.delete("bk").await.unwrap());

    // A counter starts with its TTL; an existing one keeps its own.
    assert_eq!(
        a.increment("n", 5, Some(Duration::from_millis(300)))
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        a.increment("n", 1, Some(Duration::from_secs(100)))
            .await
            .unwrap(),
        6
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        a.increment("n", 1, None).await.unwrap(),
        1,
        "expired, started again"
    );
    a.set("text", b"x".to_vec(), None).await.unwrap();
    assert_eq!(
        a.increment("text", 1, None).await,
        Err(KvError::NotAnInteger)
    );

    // Compare-and-swap: absent, wrong value, right value.
    assert!(
        a.compare_and_swap("c", None, b"1".to_vec(), None)
            .await
            .unwrap()
    );
    assert!(
        !a.compare_and_swap("c", None, b"2".to_vec(), None)
            .await
            .unwrap()
    );
    assert!(
        !a.compare_and_swap("c", Some(b"0"), b"2".to_vec(), None)
            .await
            .unwrap()
    );
    assert!(
        a.compare_and_swap(
            "c",
            Some(b"1"),
            b"2".to_vec(),
            Some(Duration::from_millis(200))
        )
        .await
        .unwrap()
    );
    assert_eq!(a.get("c").await.unwrap(), Some(b"2".to_vec()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.get("c").await.unwrap(), None, "the swap's TTL applies");

    // The stage's key and value limits hold on Redis too.
    let small = store.namespace(
        "s",
        Quota {
            max_key: 4,
            max_value: 4,
            ..Quota::default()
        },
    );
    assert_eq!(
        small.set("toolong", vec![], None).await,
        Err(KvError::KeyTooLong(4))
    );
    assert_eq!(
        small.set("k", vec![0; 5], None).await,
        Err(KvError::ValueTooLarge(4))
    );

    // Increments from many tasks and two clients (two "processes") are exact.
    let other = Kv::default().store(&redis_config(&redis, "t1:")).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let ns = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            }
            .namespace("a", Quota::default());
            tokio::spawn(async move {
                for _ in 0..50 {
                    ns.increment("shared", 1, None).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.increment("shared", 0, None).await.unwrap(), 400);
}

#[tokio::test]
async fn an_unreachable_redis_fails_fast_with_unavailable() {
    let mut redis = RedisServer::start().await;
    let store = Kv::default().store(&redis_config(&redis, "t2:")).unwrap();
    let ns = store.namespace("a", Quota::default());
    ns.set("k", b"v".to_vec(), None).await.unwrap();
    redis.stop();
    let started = std::time::Instant::now();
    assert!(matches!(ns.get("k").await, Err(KvError::Unavailable(_))));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    redis.restart().await;
    let mut back = false;
    for _ in 0..100 {
        if ns.get("k").await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the client never reconnected");
}

#[test]
fn kv_manifest_errors_name_the_key() {
    let base = "[server]\nlisten = \"127.0.0.1:1\"\n";
    check(&format!("{base}[kv]\nbackend = \"redis\"\n")).assert_rejected_at("kv.url");
    check(&format!("{base}[kv]\nbackend = \"memcached\"\n")).assert_rejected_at("kv.backend");
    check(&format!(
        "{base}[kv]\nbackend = \"redis\"\nurl = \"http://x\"\n"
    ))
    .assert_rejected_at("kv.url");
    check(&format!("{base}[kv]\nurl = \"redis://x\"\n")).assert_rejected_at("kv.url");
    check(&format!(
        "{base}[kv]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\ntimeout = \"0s\"\n"
    ))
    .assert_rejected_at("kv.timeout");
    check(&format!(
        "{base}[[upstreams]]\nname = \"a\"\nendpoints = [\"127.0.0.1:2\"]\n[[pipeline]]\nplugin = \"rate-limit\"\nkv = {{ outage = \"sometimes\" }}\nconfig = {{ requests = 1, window = \"1s\" }}\n"
    ))
    .assert_rejected_at("pipeline[0].kv.outage");
}
