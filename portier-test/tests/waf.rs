//! The built-in waf filter, run in-process through the harness: attacks in
//! each part of a request refused with 403 (the rule kept in the request's
//! context), ordinary requests forwarded, and rules that only log.

use portier_test::{Harness, Outcome, Request, Stage};

async fn waf(config: &str) -> Harness {
    Harness::builder()
        .stage(Stage::builtin("waf").config(config))
        .start()
        .await
        .unwrap()
}

fn post(content_type: &str, body: &'static str) -> Request {
    Request::post("/api/comments")
        .header("content-type", content_type)
        .body(body)
}

/// The rule that blocked `out`, after checking the 403.
fn blocked_by(out: &Outcome) -> Option<&str> {
    assert!(!out.forwarded(), "not blocked");
    assert_eq!(out.stopped_at(), Some("waf"));
    let answer = out.response().expect("the filter answers itself");
    assert_eq!(answer.status, 403);
    // The rule is logged, never told to the client.
    assert_eq!(answer.text(), "403 Forbidden\n");
    out.context("waf.blocked")
}

#[tokio::test]
async fn attacks_in_the_query_path_header_and_body_are_refused_with_403() {
    let proxy = waf("").await;
    let attacks = [
        (
            Request::get("/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--"),
            "942100",
        ),
        // Double percent-encoded: decoded as a server would.
        (
            Request::get("/search?q=%253Cscript%253Ealert(1)%253C%2Fscript%253E"),
            "941100",
        ),
        (Request::get("/.git/config"), "930130"),
        (
            Request::get("/").header("referer", "https://x.test/?q=<script>alert(1)</script>"),
            "941100",
        ),
        (
            post(
                "application/x-www-form-urlencoded",
                "name=x&comment=%3Cimg+src%3Dx+onerror%3Dalert(1)%3E",
            ),
            "941110",
        ),
        (
            post("application/json", r#"{"host": "127.0.0.1; ls -la"}"#),
            "932100",
        ),
    ];
    for (request, rule) in attacks {
        let out = proxy.request(request).await;
        assert_eq!(blocked_by(&out), Some(rule));
    }
}

#[tokio::test]
async fn ordinary_requests_and_bodies_are_forwarded() {
    let proxy = waf("").await;
    let ordinary = [
        Request::get("/search?q=O%27Reilly+books"),
        Request::get("/docs/select-a-plan?from=pricing"),
        Request::get("/api/users/42").header("user-agent", "curl/8.5.0"),
        post(
            "application/json",
            r#"{"name": "Alice O'Neil", "note": "ring twice; the cat food goes inside"}"#,
        ),
        post(
            "application/x-www-form-urlencoded",
            "q=rock+%26+roll&discount=50%25+off",
        ),
    ];
    for request in ordinary {
        let out = proxy.request(request).await;
        assert!(out.forwarded(), "{:?}", out.context("waf.blocked"));
        assert_eq!(out.context("waf.blocked"), None);
        assert_eq!(out.context("waf.matched"), None);
    }
}

#[tokio::test]
async fn log_only_rules_and_log_mode_let_matches_through_and_say_so() {
    let proxy = waf(r#"log_only = ["913100"]"#).await;
    let scanner = proxy
        .request(Request::get("/").header("user-agent", "sqlmap/1.7.2"))
        .await;
    assert!(scanner.forwarded());
    assert_eq!(scanner.context("waf.matched"), Some("913100"));
    // Other rules still block, the log-only one beside them.
    let both = proxy
        .request(
            Request::get("/search?q=1%27%20UNION%20SELECT%201--")
                .header("user-agent", "sqlmap/1.7.2"),
        )
        .await;
    assert_eq!(blocked_by(&both), Some("942100"));
    assert_eq!(both.context("waf.matched"), Some("913100"));

    // `mode = "log"`: nothing blocks.
    let proxy = waf(r#"mode = "log""#).await;
    let attack = proxy
        .request(Request::get("/search?q=1%27%20UNION%20SELECT%201--"))
        .await;
    assert!(attack.forwarded());
    assert_eq!(attack.context("waf.matched"), Some("942100"));
    assert_eq!(attack.context("waf.blocked"), None);
}

#[tokio::test]
async fn custom_rules_read_their_parts_only_and_the_body_only_so_far() {
    let proxy = waf(r#"
        request_body = 32
        [[rules]]
        id = "100001"
        description = "internal paths"
        parts = ["path"]
        pattern = "^/internal/"
        "#)
    .await;
    let out = proxy.request(Request::get("/internal/metrics")).await;
    assert_eq!(blocked_by(&out), Some("100001"));
    // The same text in the query is not the path.
    let out = proxy.request(Request::get("/search?q=/internal/x")).await;
    assert!(out.forwarded());
    // Past the first 32 bytes the body is not read.
    let late = "padding padding padding padding padding <script>alert(1)</script>";
    let out = proxy.request(post("text/plain", late)).await;
    assert!(out.forwarded());
    let early = "<script>alert(1)</script>";
    let out = proxy.request(post("text/plain", early)).await;
    assert_eq!(blocked_by(&out), Some("941100"));
}

#[tokio::test]
async fn an_unknown_rule_id_is_refused_at_load_with_the_key() {
    let err = Harness::builder()
        .stage(Stage::builtin("waf").config(r#"log_only = ["913100", "999999"]"#))
        .start()
        .await
        .err()
        .expect("a log_only naming no rule must not load");
    assert!(
        err.to_string()
            .contains(r#"pipeline[0].config.log_only[1]: no rule "999999""#),
        "{err}"
    );
}
