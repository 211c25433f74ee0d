//! The built-in basic-auth filter, run in-process through the harness:
//! users from an htpasswd file (read through a grant) and from the config,
//! what a valid login leaves the upstream, and the 401 everyone else gets.

use base64::Engine as _;
use portier_test::{Harness, Request, Stage};

/// MD5-crypt (htpasswd's default) and `{SHA}` hashes of "p@ssw0rd".
const APR1: &str = "$apr1$saltsalt$E5Rr3dOVSFY9DZAksLuwO/";
const SHA: &str = "{SHA}V7KtmQRNM3GXwMOf04I1aP+B5Io=";

/// A directory holding `htpasswd` with `text`, for a `/auth` grant.
fn htpasswd(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("htpasswd"), text).unwrap();
    dir
}

fn granted(dir: &tempfile::TempDir) -> Stage {
    Stage::builtin("basic-auth").set(&format!(
        "grants = {{ dirs = {{ \"/auth\" = \"{}\" }} }}",
        dir.path().display()
    ))
}

/// bob in the file, carol inline.
async fn staff(dir: &tempfile::TempDir, extra: &str) -> Harness {
    Harness::builder()
        .stage(granted(dir).config(&format!(
            r#"
            realm = "Staff only"
            htpasswd_file = "/auth/htpasswd"
            users = {{ carol = "{SHA}" }}
            identity_header = "x-user"
            {extra}
            "#
        )))
        .start()
        .await
        .unwrap()
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn login(user: &str, password: &str) -> Request {
    Request::get("/admin/").header("authorization", &basic(user, password))
}

#[tokio::test]
async fn a_valid_login_passes_as_its_user_without_the_credentials() {
    let dir = htpasswd(&format!("# made by htpasswd\nbob:{APR1}\n"));
    let proxy = staff(&dir, "").await;
    for user in ["bob", "carol"] {
        // Twice: the second is answered from the instance's cache.
        for _ in 0..2 {
            let out = proxy
                .request(login(user, "p@ssw0rd").header("x-user", "root"))
                .await;
            assert!(out.forwarded(), "{user}: {:?}", out.response());
            assert_eq!(out.headers("x-user"), [user]);
            assert_eq!(out.context("identity"), Some(user));
            assert_eq!(out.header("authorization"), None);
        }
    }
}

#[tokio::test]
async fn wrong_missing_or_unknown_credentials_get_401_with_the_challenge() {
    let dir = htpasswd(&format!("bob:{APR1}\n"));
    let proxy = staff(&dir, "").await;
    let bearer = Request::get("/admin/").header("authorization", "Bearer p@ssw0rd");
    for request in [
        login("bob", "wrong"),
        login("bob", ""),
        login("dave", "p@ssw0rd"),
        // The user name is case-sensitive.
        login("Bob", "p@ssw0rd"),
        Request::get("/admin/"),
        bearer,
    ] {
        let out = proxy.request(request).await;
        assert_eq!(out.stopped_at(), Some("basic-auth"));
        let answer = out.response().expect("the filter answers itself");
        assert_eq!(answer.status, 401);
        assert_eq!(
            answer.get("www-authenticate"),
            Some(r#"Basic realm="Staff only", charset="UTF-8""#)
        );
    }
}

#[tokio::test]
async fn forward_authorization_keeps_the_credentials_for_the_upstream() {
    let dir = htpasswd(&format!("bob:{APR1}\n"));
    let proxy = staff(&dir, "forward_authorization = true").await;
    let out = proxy.request(login("bob", "p@ssw0rd")).await;
    assert!(out.forwarded());
    assert_eq!(
        out.header("authorization"),
        Some(basic("bob", "p@ssw0rd").as_str())
    );
}

#[tokio::test]
async fn a_plain_text_htpasswd_entry_is_refused_at_load_with_its_line() {
    let dir = htpasswd(&format!("bob:{APR1}\ncarol:secret\n"));
    let err = Harness::builder()
        .stage(granted(&dir).config(r#"htpasswd_file = "/auth/htpasswd""#))
        .start()
        .await
        .err()
        .expect("a plain-text password must not load");
    let err = err.to_string();
    assert!(err.contains("pipeline[0].config.htpasswd_file"), "{err}");
    assert!(
        err.contains(r#"line 2: user "carol": unsupported hash"#),
        "{err}"
    );
}
