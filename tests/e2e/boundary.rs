//! Boundary proves what a plugin cannot do however it tries (the `abuse`
//! test plugin tries everything): edit the headers that frame a message
//! (content-length, transfer-encoding, connection, upgrade, keep-alive) on
//! a request or a response; answer or rewrite with a status outside
//! 200-599 (a stage failure, logged once); send a response whose headers
//! lie about its framing; flood the proxy's log (lines are single, capped
//! in size and rate); or grow the proxy's memory through kv past its quota.

use http::{Method, StatusCode};

use crate::support::body;
use crate::support::{
    Backend, Portier, RunningBackend, endpoints, one_upstream_with_admin, test_plugin,
};

/// One upstream over `backend`, an admin listener, and the `abuse` filter
/// as stage `abuser` with `config` and `stage_extra` keys.
async fn abused(backend: &RunningBackend, config: &str, stage_extra: &str) -> Portier {
    let pipeline = format!(
        r#"
[[pipeline]]
plugin = "{plugin}"
name = "abuser"
role = "filter"
{stage_extra}
config = {config}
"#,
        plugin = test_plugin("abuse").display(),
    );
    Portier::start(&one_upstream_with_admin(
        &endpoints(&[backend]),
        "",
        &pipeline,
    ))
    .await
}

/// Every edit the plugin tried, refused.
const ALL_REFUSED: &str = "set content-length:refused, append content-length:refused, \
set transfer-encoding:refused, append transfer-encoding:refused, \
set connection:refused, append connection:refused, set upgrade:refused, \
append upgrade:refused, set keep-alive:refused, append keep-alive:refused";

#[tokio::test]
async fn plugin_cannot_edit_framing_headers_on_requests_or_responses() {
    let backend = Backend::new("app").start().await;
    let proxy = abused(&backend, r#"{ mode = "framing" }"#, "").await;
    let client = proxy.client();

    for round in 0..2 {
        let request = client
            .request(Method::POST, "/upload")
            .body(body::full("hello world"))
            .unwrap();
        let reply = client.send(request).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.header("x-edit-results"), Some(ALL_REFUSED));
        assert_eq!(
            reply.header("x-status-results"),
            Some("101:refused, 999:refused, 204:ok")
        );
        // The response is framed by its real length, whatever the plugin tried.
        assert_eq!(
            reply.header("content-length"),
            Some(reply.body.len().to_string().as_str())
        );
        let echo = reply.echo();
        assert_eq!(echo.header("x-edit-results"), Some(ALL_REFUSED));
        assert_eq!(echo.header("content-length"), Some("11"), "round {round}");
        assert_eq!(echo.body_len, 11);
        assert_eq!(echo.header("transfer-encoding"), None);
        assert_eq!(echo.header("upgrade"), None);
    }
    // Both went over one client connection and two whole upstream exchanges.
    assert_eq!(client.exchanges(), 2);
    assert_eq!(backend.completed(), 2);
}

#[tokio::test]
async fn plugin_response_that_lies_about_its_framing_is_sent_as_it_is() {
    let backend = Backend::new("app").start().await;
    let proxy = abused(&backend, r#"{ mode = "respond-framing" }"#, "").await;
    let client = proxy.client();

    for _ in 0..3 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "hello");
        assert_eq!(reply.header("content-length"), Some("5"));
        assert_eq!(reply.header("transfer-encoding"), None);
        assert_eq!(reply.header("x-ok"), Some("1"));
    }
    // `connection: close` from the plugin did not close the connection.
    assert_eq!(client.exchanges(), 3);
    assert!(client.is_open().await);
    assert_eq!(backend.requests(), 0);
}

/// `/status`'s failures of the stage `abuser`.
async fn failures(proxy: &Portier) -> u64 {
    let status = proxy.status().await;
    status["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "abuser"))
        .and_then(|s| s["failures"].as_u64())
        .unwrap_or_else(|| panic!("no stage abuser in {status}"))
}

#[tokio::test]
async fn plugin_answering_with_a_status_outside_200_599_gets_its_failure_policy_logged_once() {
    for (status, on_error) in [
        (999, "fail-closed"),
        (101, "fail-closed"),
        (999, "fail-open"),
    ] {
        let backend = Backend::new("app").start().await;
        let proxy = abused(
            &backend,
            &format!(r#"{{ mode = "status", status = {status} }}"#),
            &format!("on_error = \"{on_error}\"\nquarantine = {{ enabled = false }}"),
        )
        .await;
        let client = proxy.client();
        for _ in 0..5 {
            let reply = client.get("/").await;
            match on_error {
                "fail-closed" => {
                    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{status}")
                }
                _ => assert_eq!(reply.echo().backend, "app"),
            }
        }
        assert_eq!(failures(&proxy).await, 5);
        let expected = format!("answered with status {status}, outside 200-599");
        assert_eq!(
            proxy.count_log_lines(|l| l.contains(&expected)),
            1,
            "{}",
            proxy.logs()
        );
    }
}

#[tokio::test]
async fn plugin_log_flood_is_cut_to_single_capped_lines_at_a_bounded_rate() {
    let backend = Backend::new("app").start().await;
    // A budget long enough for 1000 host calls on a busy machine.
    let mut proxy = abused(
        &backend,
        r#"{ mode = "log-flood", lines = 1000 }"#,
        "call_timeout = \"2s\"",
    )
    .await;
    let client = proxy.client();
    for _ in 0..3 {
        client.get("/").await.echo();
    }
    drop(client);
    proxy.stop().await;

    let logs = proxy.logs();
    let plugin_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("portier::plugin") && l.contains("forged"))
        .collect();
    // 3000 asked for; the stage's budget is a burst of 200 and 100 a second.
    assert!(
        (200..=400).contains(&plugin_lines.len()),
        "{} plugin lines",
        plugin_lines.len()
    );
    for line in &plugin_lines {
        assert!(line.len() < 4096 + 256, "a line of {} bytes", line.len());
        assert!(
            line.contains("forged\\nxxx"),
            "newline not escaped: {line:.80}"
        );
        assert!(line.contains("[cut: "), "not marked as cut: {line:.80}");
    }
    // No line of the log starts with what the plugin put after its newline.
    assert!(!logs.lines().any(|l| l.starts_with("xxxx")));
    assert!(
        logs.contains("its lines are dropped until it slows down"),
        "the drop was not reported:\n{}",
        &logs[..logs.len().min(2000)]
    );
}

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test]
async fn kv_hoarding_plugin_is_held_to_its_quota_and_so_is_the_proxys_memory() {
    const MIB: u64 = 1024 * 1024;
    let quota = 16 * MIB;
    let backend = Backend::new("app").start().await;
    // 64 values of 64 KiB per request: 4 MiB of fresh keys each time.
    let proxy = abused(
        &backend,
        r#"{ mode = "kv-hoard", values = 64, size = 65536 }"#,
        "kv = { max_bytes = \"16MiB\" }\ncall_timeout = \"2s\"",
    )
    .await;
    let client = proxy.client();
    client.get("/warm").await.echo();
    let before = rss(proxy.pid());

    let mut stored = 0u64;
    let mut refused_with = None;
    for i in 0..150 {
        let echo = client.get(&format!("/hoard/{i}")).await.echo();
        stored += echo
            .header("x-kv-stored")
            .and_then(|n| n.parse::<u64>().ok())
            .expect("x-kv-stored");
        if let Some(e) = echo.header("x-kv-error").filter(|e| !e.is_empty()) {
            refused_with.get_or_insert(e.to_owned());
        }
    }
    let after = rss(proxy.pid());

    // Whatever it stored fits the quota (the warm-up stored some too).
    assert!(
        stored * 64 * 1024 <= quota,
        "{stored} values of 64 KiB stored"
    );
    let refused_with = refused_with.expect("the quota was never hit");
    assert!(refused_with.contains("quota exceeded"), "{refused_with}");
    // 600 MiB asked for. The proxy grew by the quota at most, plus slack for
    // the plugin's instances (their linear memory) and the allocator.
    let grown = after.saturating_sub(before);
    eprintln!("RSS {before} -> {after} bytes: grew {} MiB", grown / MIB);
    assert!(
        grown < quota + 24 * MIB,
        "RSS grew {} MiB against a {} MiB quota",
        grown / MIB,
        quota / MIB
    );
}
