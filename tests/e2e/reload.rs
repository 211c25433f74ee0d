//! Reload proves a running proxy takes a new pipeline without dropping a
//! request or a connection: twenty reloads (admin `POST /reload` and SIGHUP,
//! alternating) under concurrent keep-alive load, each client on one
//! connection it never reopens, lose nothing and every response comes from
//! one generation or the other; a bad manifest is refused with its key
//! while the old pipeline keeps serving; `--watch` picks up changes to the
//! manifest, to a plugin file it names and to an included file on its own;
//! and `include` brings shared upstreams in, with errors naming the
//! included file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::{
    Backend, Client, Launch, Portier, RunningBackend, check_file, endpoints, free_addr,
    one_upstream_with_admin, plugin_path, test_plugin, wait_until,
};

/// How long `--watch` (polling every second) may take to notice a change.
const WATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGHUP-triggered reload may take to show in `/status`.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The load run during the reloads must end within this.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The listen addresses of one proxy: they stay the same across rewrites
/// (they change only on restart).
#[derive(Clone, Copy)]
struct Addrs {
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Addrs {
    fn new() -> Self {
        Self {
            listen: free_addr(),
            admin: free_addr(),
        }
    }
}

/// Upstreams `a` and `b` over the two backends; the router sends everything
/// to `to`.
fn routed_to(addrs: Addrs, a: &RunningBackend, b: &RunningBackend, to: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"

[admin]
listen = "{admin}"
{upstreams}
[[pipeline]]
plugin = "router"
config = {{ default = "{to}" }}
"#,
        listen = addrs.listen,
        admin = addrs.admin,
        upstreams = shared_upstreams(a.addr(), b.addr()),
    )
}

/// Which backend answered a GET of `path`; fails the test on anything but a
/// backend's 200.
async fn served_by(client: &Client, path: &str) -> String {
    client.get(path).await.echo().backend
}

/// Poll `/status` until the generation is `generation` (bounded).
async fn wait_for_generation(proxy: &Portier, generation: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = proxy.generation().await;
        if now == generation {
            return;
        }
        assert!(
            now < generation,
            "generation {now} is past the expected {generation}"
        );
        assert!(
            Instant::now() < deadline,
            "still at generation {now} {timeout:?} later, expected {generation}\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET `path` until `backend` answers it, within `timeout`; returns how long it took.
async fn wait_until_served_by(
    client: &Client,
    path: &str,
    backend: &str,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = served_by(client, path).await;
        if now == backend {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{path} still served by {now} after {timeout:?}, expected {backend}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn twenty_reloads_under_keep_alive_load_lose_no_request() {
    const RELOADS: u64 = 20;
    const LOADERS: usize = 4;
    /// Load requests completed between two reloads, at least.
    const PER_GENERATION: usize = 3 * LOADERS;
    let a = Backend::new("a").start().await;
    let b = Backend::new("b").start().await;
    let addrs = Addrs::new();
    let mut proxy = Portier::start(&routed_to(addrs, &a, &b, "a")).await;

    // Clients hammering the proxy until told to stop, each on one keep-alive
    // connection that it never reopens and with no retry: a request failed
    // or a connection closed by a reload fails its task. Every answer is
    // recorded by backend.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut loaders = tokio::task::JoinSet::new();
    for l in 0..LOADERS {
        let client = proxy.client();
        let (stop, done) = (stop.clone(), done.clone());
        loaders.spawn(async move {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let reply = client.get(&format!("/load/{l}/{i}")).await;
                *seen.entry(reply.echo().backend).or_default() += 1;
                done.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            assert!(client.is_open().await, "loader {l}'s connection closed");
            assert_eq!(client.exchanges(), i, "loader {l}: all on one connection");
            (client.local_addr().await, seen)
        });
    }

    // One keep-alive connection reused across every reload: opened under
    // generation 1, it must follow each swap.
    let checker = proxy.client();
    assert_eq!(served_by(&checker, "/check").await, "a");
    for r in 0..RELOADS {
        let generation = r + 2;
        let to = if r % 2 == 0 { "b" } else { "a" };
        proxy.rewrite_manifest(&routed_to(addrs, &a, &b, to));
        if r % 2 == 0 {
            let reply = proxy.reload().await;
            assert_eq!(reply.status, StatusCode::OK, "reload {r}: {}", reply.text());
            let answer: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
            assert_eq!(answer["generation"], generation, "reload {r}: {answer}");
        } else {
            proxy.sighup();
            wait_for_generation(&proxy, generation, RELOAD_TIMEOUT).await;
        }
        assert_eq!(
            served_by(&checker, &format!("/check/{r}")).await,
            to,
            "after reload {r} (generation {generation})"
        );
        // The load runs on each generation before the next swap.
        let before = done.load(Ordering::SeqCst);
        wait_until(
            "the load goes on under the new generation",
            LOAD_TIMEOUT,
            || done.load(Ordering::SeqCst) >= before + PER_GENERATION,
        )
        .await;
    }

    stop.store(true, Ordering::Relaxed);
    let per_client = tokio::time::timeout(LOAD_TIMEOUT, loaders.join_all())
        .await
        .expect("load clients did not stop");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut load_addrs = Vec::new();
    for (addr, by_backend) in per_client {
        load_addrs.push(addr.expect("each loader connected"));
        for (backend, n) in by_backend {
            *seen.entry(backend).or_default() += n;
        }
    }

    eprintln!("responses during {RELOADS} reloads, by backend: {seen:?}");
    let keys: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(keys, ["a", "b"], "backends the load saw: {seen:?}");
    let total: usize = seen.values().sum();
    assert_eq!(total, done.load(Ordering::SeqCst));
    assert_eq!(a.requests() + b.requests(), total + RELOADS as usize + 1);
    assert_eq!(checker.exchanges(), RELOADS as usize + 1);
    assert!(checker.is_open().await, "the checker's connection closed");
    assert_eq!(proxy.generation().await, RELOADS + 1);

    // The proxy's side of it: every request arrived on one of the five
    // connections, and each connection's requests are all there. Stopping
    // the proxy first makes its log complete.
    let checker_addr = checker.local_addr().await.expect("connected");
    drop(checker);
    proxy.stop().await;
    let lines = proxy.access_lines();
    assert_eq!(
        lines.len(),
        total + RELOADS as usize + 1,
        "one access line per request"
    );
    let on = |addr| lines.iter().filter(|l| l.client == addr).count();
    assert_eq!(on(checker_addr), RELOADS as usize + 1);
    let per_loader: usize = load_addrs.iter().map(|&addr| on(addr)).sum();
    assert_eq!(per_loader, total);
}

#[tokio::test]
async fn bad_manifest_on_reload_is_refused_and_the_old_pipeline_keeps_serving() {
    let a = Backend::new("a").start().await;
    let b = Backend::new("b").start().await;
    let addrs = Addrs::new();
    let mut proxy = Portier::start(&routed_to(addrs, &a, &b, "a")).await;
    let client = proxy.client();

    // Valid TOML, but the router's init refuses it: the whole pipeline is
    // built before anything is swapped.
    proxy.rewrite_manifest(&routed_to(addrs, &a, &b, "nowhere"));
    let reply = proxy.reload().await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text()
    );
    let answer: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    let error = answer["error"].as_str().unwrap_or_default();
    let expected = format!(
        "{}: pipeline[0].config.default: ",
        proxy.manifest_path().display()
    );
    assert!(
        error.starts_with(&expected),
        "error {error:?} should start with {expected:?}"
    );
    assert_eq!(proxy.generation().await, 1);
    assert_eq!(served_by(&client, "/after-422").await, "a");

    // The same by signal: logged, nothing swapped, nothing dropped.
    proxy.sighup();
    // The admin reload logged the first rejection; wait for the second.
    let rejections = |proxy: &Portier| {
        proxy.count_log_lines(|l| {
            l.contains("reload rejected") && l.contains("pipeline[0].config.default")
        })
    };
    wait_until("the SIGHUP reload is rejected too", RELOAD_TIMEOUT, || {
        rejections(&proxy) == 2
    })
    .await;
    proxy.assert_alive();
    assert_eq!(proxy.generation().await, 1);
    assert_eq!(served_by(&client, "/after-sighup").await, "a");

    // Fixed, it goes through: the failures did not use up a generation.
    proxy.rewrite_manifest(&routed_to(addrs, &a, &b, "b"));
    let reply = proxy.reload().await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(proxy.generation().await, 2);
    assert_eq!(served_by(&client, "/fixed").await, "b");
}

#[tokio::test]
async fn watch_reloads_when_the_manifest_changes() {
    let a = Backend::new("a").start().await;
    let b = Backend::new("b").start().await;
    let addrs = Addrs::new();
    let proxy = Portier::start_with_args(&routed_to(addrs, &a, &b, "a"), &["--watch"]).await;
    let client = proxy.client();
    assert_eq!(served_by(&client, "/").await, "a");

    proxy.rewrite_manifest(&routed_to(addrs, &a, &b, "b"));

    let took = wait_until_served_by(&client, "/", "b", WATCH_TIMEOUT).await;
    eprintln!("--watch picked up the manifest change in {took:?}");
    assert_eq!(proxy.generation().await, 2);
}

#[tokio::test]
async fn watch_reloads_when_a_plugin_file_changes() {
    let backend = Backend::new("app").start().await;
    let manifest = one_upstream_with_admin(
        &endpoints(&[&backend]),
        "",
        r#"
[[pipeline]]
plugin = "filter.wasm"
role = "filter"
"#,
    );
    let headers = std::fs::read(plugin_path("headers")).expect("the built-in headers plugin");
    let probe = std::fs::read(test_plugin("probe")).expect("the probe plugin");
    let proxy = Portier::launch(&manifest)
        .file("filter.wasm", headers)
        .arg("--watch")
        .start()
        .await;
    let client = proxy.client();
    let probed = || client.get_with("/", &[("x-probe", "env:NOPE")]);
    // The headers filter lets the probe through to the backend.
    probed().await.echo();

    proxy.rewrite_file("filter.wasm", probe);

    // Now the probe plugin answers it itself.
    let deadline = Instant::now() + WATCH_TIMEOUT;
    loop {
        let reply = probed().await;
        if reply.status == StatusCode::FORBIDDEN {
            break;
        }
        reply.echo();
        assert!(
            Instant::now() < deadline,
            "plugin file change not picked up in {WATCH_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.generation().await, 2);
}

/// A shared upstreams file: `a` and `b` (also the upstreams of [`routed_to`]).
fn shared_upstreams(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"
[[upstreams]]
name = "a"
endpoints = ["{a}"]

[[upstreams]]
name = "b"
endpoints = ["{b}"]
"#
    )
}

/// A manifest that includes `shared/upstreams.toml`, adds upstream `local`,
/// and routes `/b/` to `b`, `/local/` to `local`, the rest to `a`.
fn including(local: SocketAddr) -> String {
    format!(
        r#"
include = ["shared/upstreams.toml"]

[server]
listen = "{listen}"

[admin]
listen = "{admin}"

[[upstreams]]
name = "local"
endpoints = ["{local}"]

[[pipeline]]
plugin = "router"
config = {{ default = "a", routes = [ {{ prefix = "/b/", upstream = "b" }}, {{ prefix = "/local/", upstream = "local" }} ] }}
"#,
        listen = free_addr(),
        admin = free_addr(),
    )
}

/// [`including`] over `local`, with `shared/upstreams.toml` naming `a` and
/// `b` written beside it.
fn launch_including(a: &RunningBackend, b: &RunningBackend, local: &RunningBackend) -> Launch {
    Portier::launch(&including(local.addr())).file(
        "shared/upstreams.toml",
        shared_upstreams(a.addr(), b.addr()),
    )
}

#[tokio::test]
async fn included_upstreams_are_served_and_come_first() {
    let a = Backend::new("a").start().await;
    let b = Backend::new("b").start().await;
    let local = Backend::new("local").start().await;
    let proxy = launch_including(&a, &b, &local).start().await;
    let client = proxy.client();

    assert_eq!(served_by(&client, "/x").await, "a");
    assert_eq!(served_by(&client, "/b/x").await, "b");
    assert_eq!(served_by(&client, "/local/x").await, "local");
    let status = proxy.status().await;
    let names: Vec<&str> = status["upstreams"]
        .as_array()
        .expect("/status lists upstreams")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b", "local"], "{status}");
}

#[tokio::test]
async fn watch_reloads_when_an_included_file_changes() {
    let a = Backend::new("a").start().await;
    let b = Backend::new("b").start().await;
    let local = Backend::new("local").start().await;
    let proxy = launch_including(&a, &b, &local)
        .arg("--watch")
        .start()
        .await;
    let client = proxy.client();
    assert_eq!(served_by(&client, "/x").await, "a");

    // Upstream `a` now points at backend b.
    proxy.rewrite_file(
        "shared/upstreams.toml",
        shared_upstreams(b.addr(), a.addr()),
    );

    wait_until_served_by(&client, "/x", "b", WATCH_TIMEOUT).await;
    assert_eq!(served_by(&client, "/b/x").await, "a");
    assert_eq!(proxy.generation().await, 2);
}

/// Write `manifest` and `shared/upstreams.toml` to a fresh directory and
/// `portier check` it; the rejection must be `INCLUDED_FILE: ...` and mention `what`.
fn assert_include_error_names_the_included_file(included: &str, what: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("shared")).unwrap();
    let shared = dir.path().join("shared/upstreams.toml");
    std::fs::write(&shared, included).unwrap();
    let manifest = dir.path().join("portier.toml");
    std::fs::write(&manifest, including(free_addr())).unwrap();

    let checked = check_file(&manifest);
    assert!(!checked.status.success(), "accepted:\n{checked}");
    let expected = format!("{}: ", shared.display());
    let error = checked
        .stderr
        .lines()
        .find(|l| l.contains(&expected))
        .unwrap_or_else(|| {
            panic!("stderr should name the included file with {expected:?}:\n{checked}\n--- included ---\n{included}")
        });
    assert!(error.contains(what), "{error:?} should mention {what:?}");
}

#[test]
fn check_names_the_included_file_when_an_included_upstream_is_bad() {
    assert_include_error_names_the_included_file(
        r#"
[[upstreams]]
name = "a"
endpoints = ["127.0.0.1:3001"]

[[upstreams]]
name = "b"
endpoints = ["not an address"]
"#,
        "upstreams[1].endpoints[0]",
    );
}

#[test]
fn check_names_the_included_file_when_it_holds_more_than_upstreams() {
    assert_include_error_names_the_included_file(
        &format!(
            "{}\n[server]\nlisten = \"127.0.0.1:3000\"\n",
            shared_upstreams(free_addr(), free_addr())
        ),
        "`server`",
    );
}
