//! Operating portier: `/metrics` read by Prometheus' own tools, the access
//! log's reasons and destinations, request ids and W3C trace context, the
//! log filter's environment variables, `portier reload` and `${VAR}`s.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};

use crate::support::{
    AccessLine, Backend, Portier, RunningBackend, body, check, free_addr, run_command, wait_until,
};

/// A router with named routes, a rate limit on one of them, and the admin
/// listener.
fn observed(backend: &RunningBackend) -> String {
    format!(
        r#"
[server]
listen = "{listen}"

[admin]
listen = "{admin}"

[[upstreams]]
name = "app"
endpoints = ["{app}"]

[[pipeline]]
plugin = "router"
config = {{ routes = [
  {{ name = "api", prefix = "/api/", upstream = "app" }},
  {{ name = "limited", prefix = "/limited/", upstream = "app" }},
] }}

[[pipeline]]
plugin = "rate-limit"
routes = ["limited"]
config = {{ requests = 5, window = "1m" }}
"#,
        listen = free_addr(),
        admin = free_addr(),
        app = backend.addr(),
    )
}

/// `GET /metrics` in Prometheus' classic text format.
async fn scrape(proxy: &Portier) -> String {
    let reply = proxy.admin().get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    reply.text()
}

/// Prometheus' own parser and linter (`promtool check metrics`) must
/// accept the scrape as it is.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The scrape's samples, parsed: `name{labels}` → value (histograms by
/// their `_count` and `_sum`).
fn samples(text: &str) -> HashMap<String, f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("a Prometheus text-format scrape");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<(&String, &String)> = s.labels.iter().collect();
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let key = format!("{}{{{}}}", s.metric, labels.join(","));
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                // The +Inf bucket: every observation.
                buckets.last().map_or(0.0, |b| b.count)
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key, value);
    }
    out
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples.get(key).unwrap_or_else(|| {
        panic!("no sample {key}; the scrape has: {:#?}", {
            let mut keys: Vec<_> = samples.keys().collect();
            keys.sort();
            keys
        })
    })
}

#[tokio::test]
async fn metrics_scraped_under_load_pass_promtool_and_agree_with_the_requests_sent() {
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&observed(&backend)).await;

    // Load from several connections while the metrics are scraped.
    let load: Vec<_> = (0..TASKS)
        .map(|t| {
            let client = proxy.client();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let reply = client.get(&format!("/api/{t}/{i}")).await;
                    assert_eq!(reply.status, StatusCode::OK);
                }
            })
        })
        .collect();
    for _ in 0..5 {
        let text = scrape(&proxy).await;
        promtool_accepts(&text);
        samples(&text);
    }
    for task in load {
        task.await.unwrap();
    }
    let client = proxy.client();
    let mut limited = Vec::new();
    for i in 0..8 {
        limited.push(client.get(&format!("/limited/{i}")).await.status);
    }
    assert_eq!(
        limited.iter().filter(|s| **s == StatusCode::OK).count(),
        5,
        "{limited:?}"
    );
    for _ in 0..3 {
        assert_eq!(client.get("/nowhere").await.status, StatusCode::NOT_FOUND);
    }

    let text = scrape(&proxy).await;
    promtool_accepts(&text);
    let m = samples(&text);
    let api = (TASKS * EACH) as f64;
    let requests = |route: &str, upstream: &str, class: &str| {
        value(
            &m,
            &format!(
                "portier_requests_total{{class=\"{class}\",route=\"{route}\",upstream=\"{upstream}\"}}"
            ),
        )
    };
    assert_eq!(requests("api", "app", "2xx"), api);
    assert_eq!(requests("limited", "app", "2xx"), 5.0);
    // The rate limit answered before any upstream was asked.
    assert_eq!(requests("limited", "", "4xx"), 3.0);
    assert_eq!(requests("", "", "4xx"), 3.0);
    assert_eq!(
        value(
            &m,
            "portier_stage_answers_total{code=\"429\",stage=\"rate-limit\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "portier_stage_answers_total{code=\"404\",stage=\"router\"}"
        ),
        3.0
    );
    assert_eq!(
        value(&m, "portier_request_duration_seconds{route=\"api\"}"),
        api
    );
    assert_eq!(
        value(&m, "portier_upstream_response_seconds{upstream=\"app\"}"),
        api + 5.0
    );
    assert_eq!(
        value(&m, "portier_stage_call_seconds{stage=\"router\"}"),
        api + 8.0 + 3.0
    );
    assert_eq!(
        value(&m, "portier_stage_call_seconds{stage=\"rate-limit\"}"),
        8.0
    );
    assert!(
        value(
            &m,
            "portier_kv_operations_total{backend=\"memory\",op=\"increment\"}"
        ) >= 8.0
    );
    assert_eq!(
        value(
            &m,
            &format!(
                "portier_endpoint_healthy{{endpoint=\"{}\",upstream=\"app\"}}",
                backend.addr()
            )
        ),
        1.0
    );
    // The scrape itself is on the admin listener: no client request is in flight.
    assert_eq!(value(&m, "portier_requests_in_flight{}"), 0.0);
    assert!(value(&m, "portier_connections_total{}") >= (TASKS + 1) as f64);
    assert_eq!(value(&m, "portier_pipeline_generation{}"), 1.0);

    // A reload counts, and moves the generation; the counters stay.
    assert_eq!(proxy.reload().await.status, StatusCode::OK);
    let m = samples(&scrape(&proxy).await);
    assert_eq!(value(&m, "portier_pipeline_generation{}"), 2.0);
    assert_eq!(value(&m, "portier_reloads_total{result=\"ok\"}"), 1.0);
    assert_eq!(requests("api", "app", "2xx"), api);
    assert_eq!(backend.requests(), TASKS * EACH + 5);
}

#[tokio::test]
async fn prometheus_gets_openmetrics_when_it_asks_for_it() {
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&observed(&backend)).await;
    assert_eq!(proxy.client().get("/api/").await.status, StatusCode::OK);
    let reply = proxy
        .admin()
        .get_with(
            "/metrics",
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )],
        )
        .await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = reply.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE portier_requests counter\n"), "{text}");
}

/// A backend that records what it was sent, behind a proxy with `extra`
/// in `[server]`.
async fn traced(extra: &str) -> (RunningBackend, Portier) {
    let backend = Backend::new("app").start().await;
    let manifest = format!(
        "[server]\nlisten = \"{}\"\n{extra}\n[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n",
        free_addr(),
        backend.addr()
    );
    (backend, Portier::start(&manifest).await)
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn the_upstream_gets_the_clients_trace_with_the_proxys_span_and_the_request_id() {
    let (backend, mut proxy) = traced("").await;
    let client = proxy.client();
    let parent = format!("00-{CLIENT_TRACE}-00f067aa0ba902b7-01");
    let reply = client
        .get_with("/a", &[("traceparent", &parent), ("tracestate", "k=v")])
        .await;
    let echo = reply.echo();
    let sent = echo.header("traceparent").expect("traceparent upstream");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", CLIENT_TRACE, "01"));
    assert_ne!(parts[2], "00f067aa0ba902b7", "the proxy's own span");
    assert_eq!(echo.header("tracestate"), Some("k=v"));
    let id = echo.header("x-request-id").expect("x-request-id upstream");
    // A client's own id is kept.
    let reply = client
        .get_with("/b", &[("x-request-id", "client-id-7")])
        .await;
    assert_eq!(reply.echo().header("x-request-id"), Some("client-id-7"));
    // No traceparent: a new trace, sampled off, and its id is the request's.
    let reply = client.get("/c").await;
    let new = reply.echo().header("traceparent").unwrap().to_owned();
    assert!(new.starts_with("00-") && new.ends_with("-00"), "{new}");
    drop(client);
    proxy.stop().await;

    let lines = proxy.access_lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0].trace_id, CLIENT_TRACE);
    assert_eq!(lines[0].request_id, id);
    assert_eq!(lines[1].request_id, "client-id-7");
    assert_eq!(&new[3..35], lines[2].trace_id);
    assert_eq!(lines[2].request_id, lines[2].trace_id);
    assert_eq!(backend.requests(), 3);
}

#[tokio::test]
async fn request_ids_can_be_echoed_distrusted_or_turned_off() {
    let (_backend, proxy) =
        traced("traceparent = false\n[server.request_id]\nheader = \"x-trace\"\ntrust = false\nresponse = true\n").await;
    let client = proxy.client();
    let reply = client
        .get_with("/a", &[("x-trace", "forged"), ("traceparent", "00-x")])
        .await;
    let echo = reply.echo();
    let id = echo.header("x-trace").expect("the id upstream");
    assert_ne!(id, "forged");
    assert_eq!(reply.header("x-trace"), Some(id), "echoed to the client");
    // traceparent = false: the client's header passes untouched.
    assert_eq!(echo.header("traceparent"), Some("00-x"));

    let (_backend, proxy) = traced("[server.request_id]\nheader = \"\"\n").await;
    let reply = proxy
        .client()
        .get_with("/a", &[("x-request-id", "mine")])
        .await;
    assert_eq!(reply.echo().header("x-request-id"), Some("mine"));
    assert_eq!(reply.header("x-request-id"), None);
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_id() {
    let backend = Backend::new("app").start().await;
    // An upstream that refuses: the proxy's warning is logged inside the request.
    let manifest = format!(
        "[server]\nlisten = \"{}\"\n[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n",
        free_addr(),
        free_addr()
    );
    let mut proxy = Portier::start_with_args(&manifest, &["--log-format", "json"]).await;
    let reply = proxy
        .client()
        .get_with("/x", &[("x-request-id", "find-me-42")])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    proxy.stop().await;
    let logs = proxy.logs();
    let warning = logs
        .lines()
        .find(|l| l.contains("\"level\":\"WARN\"") && l.contains("upstream"))
        .unwrap_or_else(|| panic!("no upstream warning:\n{logs}"));
    assert!(warning.contains("find-me-42"), "{warning}");
    let access = proxy.access_lines();
    assert_eq!(access[0].request_id, "find-me-42");
    assert_eq!(access[0].flags, "UF");
    drop(backend);
}

#[tokio::test]
async fn the_access_log_file_is_reopened_on_sigusr1_for_logrotate() {
    let backend = Backend::new("app").start().await;
    let manifest = format!(
        "[server]\nlisten = \"{}\"\naccess_log = \"logs/access.log\"\n[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n",
        free_addr(),
        backend.addr()
    );
    let proxy = Portier::launch(&manifest)
        .file("logs/.keep", "")
        .start()
        .await;
    let log = proxy.dir().join("logs/access.log");
    let rotated = proxy.dir().join("logs/access.log.1");
    let client = proxy.client();
    assert_eq!(client.get("/before").await.status, StatusCode::OK);
    let lines =
        |p: &std::path::Path| AccessLine::all(&std::fs::read_to_string(p).unwrap_or_default());
    wait_until(
        "the access lines are written",
        Duration::from_secs(10),
        || lines(&log).len() == 1,
    )
    .await;
    // Access lines are in the file, not with the process log.
    assert!(proxy.access_lines().is_empty(), "{}", proxy.logs());

    // logrotate: move the file, then signal.
    std::fs::rename(&log, &rotated).unwrap();
    assert_eq!(client.get("/moved").await.status, StatusCode::OK);
    wait_until(
        "the access lines are written",
        Duration::from_secs(10),
        || lines(&rotated).len() == 2,
    )
    .await;
    let kill = Command::new("kill")
        .args(["-USR1", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    proxy
        .wait_for_log_line("saying the access log was reopened", |l| {
            l.contains("access log reopened")
        })
        .await;
    assert_eq!(client.get("/after").await.status, StatusCode::OK);
    wait_until(
        "the access lines are written",
        Duration::from_secs(10),
        || lines(&log).len() == 1,
    )
    .await;
    let paths = |p| -> Vec<String> { lines(p).into_iter().map(|l| l.path).collect() };
    assert_eq!(paths(&rotated), ["/before", "/moved"]);
    assert_eq!(paths(&log), ["/after"]);
}

#[tokio::test]
async fn the_log_filter_follows_rust_log_and_portier_log_wins() {
    let backend = Backend::new("app").start().await;
    let manifest = |_: ()| {
        format!(
            "[server]\nlisten = \"{}\"\n[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n",
            free_addr(),
            backend.addr()
        )
    };
    for (env, access_logged) in [
        (vec![("RUST_LOG", "warn")], false),
        (vec![("RUST_LOG", "warn,portier::access=info")], true),
        (vec![("RUST_LOG", "info"), ("PORTIER_LOG", "warn")], false),
        (vec![("RUST_LOG", "warn"), ("PORTIER_LOG", "info")], true),
    ] {
        let mut launch = Portier::launch(&manifest(()));
        for (k, v) in &env {
            launch = launch.env(k, v);
        }
        let mut proxy = launch.start().await;
        assert_eq!(proxy.client().get("/").await.status, StatusCode::OK);
        proxy.stop().await;
        assert_eq!(
            proxy.access_lines().len(),
            usize::from(access_logged),
            "{env:?}\n{}",
            proxy.logs()
        );
    }
}

#[tokio::test]
async fn portier_reload_tells_the_running_instance_and_reports_a_rejection() {
    let backend = Backend::new("app").start().await;
    // An admin listener on every address (a token is required then), with
    // no `hosts`: `portier reload` still gets in, through loopback.
    let manifest = format!(
        "[server]\nlisten = \"{}\"\n[admin]\nlisten = \"0.0.0.0:{}\"\ntoken = \"${{ADMIN_TOKEN}}\"\n[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n",
        free_addr(),
        free_addr().port(),
        backend.addr()
    );
    let token = [("ADMIN_TOKEN", "a-token-of-twenty-chars")];
    let proxy = Portier::launch(&manifest)
        .env("ADMIN_TOKEN", token[0].1)
        .start()
        .await;
    let path = proxy.manifest_path();

    let ok = run_command("reload", &path, &token);
    assert!(ok.status.success(), "{ok}");
    assert!(ok.stdout.contains("reloaded: generation 2"), "{ok}");

    // Without the token's variable the manifest itself is rejected.
    let unset = run_command("reload", &path, &[]);
    assert!(!unset.status.success());
    assert!(
        unset
            .stderr
            .contains("admin.token: environment variable ADMIN_TOKEN is not set"),
        "{unset}"
    );

    // A broken manifest: exit 1 with its reason, and the old one serves on.
    proxy.rewrite_manifest(
        &manifest.replace("name = \"app\"\nendpoints", "name = \"app\"\nendpoint"),
    );
    let rejected = run_command("reload", &path, &token);
    assert!(!rejected.status.success(), "{rejected}");
    assert!(
        rejected.stderr.contains("reload rejected") && rejected.stderr.contains("upstreams[0]"),
        "{rejected}"
    );
    assert_eq!(proxy.client().get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn manifest_values_come_from_the_environment_and_an_unset_one_is_named() {
    let manifest = "[server]\nlisten = \"127.0.0.1:${PORTIER_TEST_PORT_THAT_IS_UNSET}\"\n";
    check(manifest)
        .assert_rejected_at("server.listen")
        .contains("PORTIER_TEST_PORT_THAT_IS_UNSET is not set");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portier.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:${PORT}\"\n[[upstreams]]\nname = \"a\"\nendpoints = [\"127.0.0.1:${PORT}\"]\n",
    )
    .unwrap();
    let checked = run_command("check", &path, &[("PORT", "18123")]);
    assert!(checked.status.success(), "{checked}");
}

#[tokio::test]
async fn the_access_log_counts_request_body_bytes() {
    let (_backend, proxy) = traced("").await;
    let client = proxy.client();
    let request = client
        .request(Method::POST, "/upload")
        .body(body::full(vec![7u8; 1000]))
        .unwrap();
    assert_eq!(client.send(request).await.status, StatusCode::OK);
    let line = proxy
        .wait_for_log_line("for the upload", |l| {
            AccessLine::parse(l).is_some_and(|a| a.path == "/upload")
        })
        .await;
    assert_eq!(AccessLine::parse(&line).unwrap().bytes_in, 1000);
}
