//! TLS termination proves HTTPS works as a production proxy's does, with
//! certificates made in the test and a real rustls client: requests are
//! forwarded as plain HTTP with `X-Forwarded-Proto: https`; SNI picks the
//! exact, then the wildcard, then the default certificate; ALPN gives
//! HTTP/2; a reload serves renewed files to new connections while open ones
//! go on; a key that does not match its certificate is a `check` error
//! naming the file; a plain listener redirects to HTTPS; a self-signed
//! certificate serves localhost for development; and failed handshakes are
//! counted, not logged at info.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use crate::support::raw::RawConn;
use crate::support::tls::{self, Ca, Leaf};
use crate::support::{Backend, Portier, RunningBackend, endpoints, free_addr};

/// A manifest with a plain listener (the harness waits on it), an admin
/// listener, `[server.tls]` on `https` with `tls_extra` keys, and one
/// upstream over `backend`.
fn manifest(https: SocketAddr, tls_extra: &str, backend: &RunningBackend) -> String {
    format!(
        r#"
[server]
listen = "{listen}"

[server.tls]
listen = "{https}"
{tls_extra}

[admin]
listen = "{admin}"

[[upstreams]]
name = "app"
endpoints = {endpoints}
"#,
        listen = free_addr(),
        admin = free_addr(),
        endpoints = endpoints(&[backend]),
    )
}

/// `certificates = [...]` over `certs/<name>.pem` and `.key`, with names.
fn certificates(list: &[(&str, &[&str])]) -> String {
    let entries: Vec<String> = list
        .iter()
        .map(|(file, names)| {
            let names = if names.is_empty() {
                String::new()
            } else {
                let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
                format!(", names = [{}]", quoted.join(", "))
            };
            format!(r#"{{ cert = "certs/{file}.pem", key = "certs/{file}.key"{names} }}"#)
        })
        .collect();
    format!("certificates = [{}]", entries.join(", "))
}

/// Start a proxy with these certificate files written beside the manifest.
async fn start(manifest: &str, files: &[(&str, &Leaf)]) -> Portier {
    let mut launch = Portier::launch(manifest);
    for (name, leaf) in files {
        launch = launch
            .file(format!("certs/{name}.pem"), &leaf.cert_pem)
            .file(format!("certs/{name}.key"), &leaf.key_pem);
    }
    launch.start().await
}

/// A proxy serving one certificate for `site.test` (signed by `ca`) on a
/// TLS listener, in front of `backend`: its address, the certificate, the proxy.
async fn site_proxy(ca: &Ca, backend: &RunningBackend) -> (SocketAddr, Leaf, Portier) {
    let site = ca.leaf(&["site.test"]);
    let https = free_addr();
    let proxy = start(
        &manifest(https, &certificates(&[("site", &[])]), backend),
        &[("site", &site)],
    )
    .await;
    (https, site, proxy)
}

#[tokio::test]
async fn an_https_request_is_forwarded_as_plain_http_saying_it_came_over_https() {
    let ca = Ca::new();
    let backend = Backend::new("app").start().await;
    let (https, site, proxy) = site_proxy(&ca, &backend).await;

    let reply = tls::get(
        https,
        "site.test",
        ca.client_config(&["http/1.1"]),
        "/a?b=1",
    )
    .await;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.peer_cert, site.der);
    let echo = reply.echo();
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    assert_eq!(echo.header("host"), Some("site.test"));
    assert_eq!(echo.path, "/a");
    drop(proxy);
}

#[tokio::test]
async fn sni_picks_the_exact_name_then_the_wildcard_then_the_default() {
    let ca = Ca::new();
    let default = ca.leaf(&["default.test"]);
    let exact = ca.leaf(&["a.example.test"]);
    let wildcard = ca.leaf(&["*.example.test"]);
    let by_content = ca.leaf(&["other.test"]);
    let backend = Backend::new("app").start().await;
    let https = free_addr();
    let list = certificates(&[
        ("default", &[]),
        ("wildcard", &["*.example.test"]),
        ("exact", &["a.example.test"]),
        ("other", &[]),
    ]);
    let _proxy = start(
        &manifest(https, &list, &backend),
        &[
            ("default", &default),
            ("wildcard", &wildcard),
            ("exact", &exact),
            ("other", &by_content),
        ],
    )
    .await;
    let config = || ca.client_config(&["http/1.1"]);

    // Exact beats the wildcard listed before it.
    assert_eq!(
        tls::get(https, "a.example.test", config(), "/")
            .await
            .peer_cert,
        exact.der
    );
    assert_eq!(
        tls::get(https, "b.example.test", config(), "/")
            .await
            .peer_cert,
        wildcard.der
    );
    // No `names`: chosen because the certificate itself is valid for the name.
    assert_eq!(
        tls::get(https, "other.test", config(), "/").await.peer_cert,
        by_content.der
    );
    // Nothing matches: the first certificate, which is not valid for the
    // name, so this client refuses it.
    let unknown = tls::connect(https, "nobody.test", config()).await;
    assert!(
        unknown.is_err(),
        "the default certificate is not valid for nobody.test"
    );
    let defaulted = tls::get(https, "default.test", config(), "/").await;
    assert_eq!(defaulted.peer_cert, default.der);
}

#[tokio::test]
async fn alpn_h2_serves_http2_over_tls_and_http1_clients_still_get_http1() {
    let ca = Ca::new();
    let backend = Backend::new("app").start().await;
    let (https, _site, _proxy) = site_proxy(&ca, &backend).await;

    let h2 = tls::get(
        https,
        "site.test",
        ca.client_config(&["h2", "http/1.1"]),
        "/two",
    )
    .await;
    assert_eq!(h2.alpn.as_deref(), Some("h2"));
    assert_eq!(h2.version, http::Version::HTTP_2);
    assert_eq!(h2.status, StatusCode::OK, "{}", h2.text());
    assert_eq!(
        h2.headers["via"], "1.1 portier",
        "the upstream leg is HTTP/1.1"
    );

    let h1 = tls::get(https, "site.test", ca.client_config(&["http/1.1"]), "/one").await;
    assert_eq!(h1.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(h1.version, http::Version::HTTP_11);
    assert_eq!(h1.status, StatusCode::OK);
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn a_reload_serves_renewed_certificates_to_new_connections_and_open_ones_go_on() {
    let ca = Ca::new();
    let old = ca.leaf(&["site.test"]);
    let renewed = ca.leaf(&["site.test"]);
    let backend = Backend::new("app").start().await;
    let https = free_addr();
    let proxy = start(
        &manifest(https, &certificates(&[("site", &[])]), &backend),
        &[("site", &old)],
    )
    .await;

    // A connection opened before the renewal, kept open across it.
    let open = tls::connect(https, "site.test", ca.client_config(&["http/1.1"]))
        .await
        .expect("TLS");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(open))
            .await
            .expect("handshake");
    tokio::spawn(conn);

    proxy.rewrite_file("certs/site.pem", &renewed.cert_pem);
    proxy.rewrite_file("certs/site.key", &renewed.key_pem);
    assert_eq!(proxy.reload().await.status, StatusCode::OK);

    let fresh = tls::get(https, "site.test", ca.client_config(&["http/1.1"]), "/").await;
    assert_eq!(
        fresh.peer_cert, renewed.der,
        "new connections get the renewed certificate"
    );
    let request = http::Request::get("/still")
        .header("host", "site.test")
        .body(crate::support::body::empty())
        .unwrap();
    let response = send
        .send_request(request)
        .await
        .expect("the open connection still serves");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_is_a_check_error_naming_the_file() {
    let ca = Ca::new();
    let one = ca.leaf(&["site.test"]);
    let other = ca.leaf(&["site.test"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("certs/site.pem"), &one.cert_pem).unwrap();
    std::fs::write(dir.path().join("certs/site.key"), &other.key_pem).unwrap();
    let backend = Backend::new("app").start().await;
    let text = manifest(free_addr(), &certificates(&[("site", &[])]), &backend);
    let path = dir.path().join("portier.toml");
    std::fs::write(&path, text).unwrap();

    let checked = crate::support::check_file(&path);

    let reason = checked.assert_rejected_at("server.tls.certificates[0].key");
    assert!(reason.contains("site.key"), "{reason}");
    assert!(reason.contains("site.pem"), "{reason}");

    // A missing file is named too.
    std::fs::remove_file(dir.path().join("certs/site.pem")).unwrap();
    let checked = crate::support::check_file(&path);
    let reason = checked.assert_rejected_at("server.tls.certificates[0].cert");
    assert!(reason.contains("site.pem"), "{reason}");
}

#[tokio::test]
async fn a_plain_redirect_listener_answers_308_to_https_keeping_path_and_query() {
    let backend = Backend::new("app").start().await;
    let (https, redirect) = (free_addr(), free_addr());
    let extra = format!("self_signed = true\nredirect = \"{redirect}\"");
    let _proxy = Portier::start(&manifest(https, &extra, &backend)).await;

    let mut conn = RawConn::open(redirect).await;
    conn.send(b"GET /shop/cart?item=7 HTTP/1.1\r\nHost: shop.test:8080\r\n\r\n")
        .await;
    let response = conn.response().await;

    assert_eq!(response.status, 308);
    assert_eq!(
        response.header("location"),
        Some(format!("https://shop.test:{}/shop/cart?item=7", https.port()).as_str())
    );
    assert_eq!(backend.requests(), 0);
}

#[tokio::test]
async fn self_signed_serves_https_on_localhost_and_says_so() {
    let backend = Backend::new("app").start().await;
    let https = free_addr();
    let proxy = Portier::start(&manifest(https, "self_signed = true", &backend)).await;

    // The generated certificate, looked at by a client that trusts anything.
    let probe = tls::connect(https, "localhost", ca_less_config())
        .await
        .expect("a handshake");
    let served = probe.get_ref().1.peer_certificates().unwrap()[0].clone();
    let cert = webpki::EndEntityCert::try_from(&served).expect("X.509");
    for name in ["localhost", "127.0.0.1"] {
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(name).unwrap();
        assert!(cert.verify_is_valid_for_subject_name(&name).is_ok());
    }
    assert!(
        proxy.logs().contains("self-signed certificate"),
        "the log says it is self-signed:\n{}",
        proxy.logs()
    );
}

/// A client that accepts any certificate (to look at a self-signed one).
fn ca_less_config() -> tokio_rustls::rustls::ClientConfig {
    use tokio_rustls::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::{DigitallySignedStruct, Error, SignatureScheme};

    #[derive(Debug)]
    struct TrustAnything;
    impl ServerCertVerifier for TrustAnything {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            tokio_rustls::rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(TrustAnything))
    .with_no_client_auth()
}

#[tokio::test]
async fn failed_handshakes_are_counted_and_not_logged_at_info() {
    let ca = Ca::new();
    let stranger = Ca::new();
    let backend = Backend::new("app").start().await;
    let (https, _site, proxy) = site_proxy(&ca, &backend).await;

    // A client that trusts another CA gives up on the certificate; a
    // scanner sends plain HTTP to the TLS port.
    for _ in 0..3 {
        let refused = tls::connect(https, "site.test", stranger.client_config(&[])).await;
        assert!(refused.is_err());
    }
    let mut plain = RawConn::open(https).await;
    plain.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    drop(plain);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = proxy.status().await;
        let counted = status["tls_handshake_failures"].as_u64().unwrap_or(0);
        if counted == 4 {
            break;
        }
        assert!(counted < 4, "{status}");
        assert!(
            std::time::Instant::now() < deadline,
            "counted {counted} of 4: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        proxy.count_log_lines(|l| l.contains("TLS") && (l.contains("INFO") || l.contains("WARN"))),
        0,
        "{}",
        proxy.logs()
    );
    assert_eq!(backend.requests(), 0);
}

#[tokio::test]
async fn the_tls_example_runs_as_is_with_free_ports() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tls.toml");
    let example =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let api1 = Backend::new("api-1").start().await;
    let api2 = Backend::new("api-2").start().await;
    let (plain, https, redirect) = (free_addr(), free_addr(), free_addr());
    let mut manifest = example.clone();
    for (documented, addr) in [
        ("127.0.0.1:3000", plain),
        ("127.0.0.1:3443", https),
        ("127.0.0.1:3080", redirect),
        ("127.0.0.1:3001", api1.addr()),
        ("127.0.0.1:3002", api2.addr()),
    ] {
        let quoted = format!("\"{documented}\"");
        assert!(
            example.contains(&quoted),
            "tls.toml no longer uses {quoted}"
        );
        manifest = manifest.replace(&quoted, &format!("\"{addr}\""));
    }
    let _proxy = Portier::start(&manifest).await;

    let reply = tls::get(https, "localhost", ca_less_config(), "/api/users").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let mut conn = RawConn::open(redirect).await;
    conn.send(b"GET /api/users HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let response = conn.response().await;
    assert_eq!(response.status, 308);
    assert_eq!(
        response.header("location"),
        Some(format!("https://127.0.0.1:{}/api/users", https.port()).as_str())
    );
}

// === TLS to upstreams ===

/// A proxy whose one upstream is `backend` with these extra keys, the CA
/// file written as certs/ca.pem.
async fn proxy_to_tls_backend(backend: &RunningBackend, extra: &str, ca: &Ca) -> Portier {
    let manifest = crate::support::one_upstream(&endpoints(&[backend]), extra, "");
    Portier::launch(&manifest)
        .file("certs/ca.pem", ca.cert_pem())
        .start()
        .await
}

#[tokio::test]
async fn an_upstream_over_tls_is_verified_against_the_configured_ca() {
    let ca = Ca::new();
    let backend = Backend::new("secure")
        .tls(&ca.leaf(&["127.0.0.1"]), &["http/1.1"])
        .start()
        .await;
    let proxy = proxy_to_tls_backend(&backend, r#"tls = { ca = "certs/ca.pem" }"#, &ca).await;

    let reply = proxy.client().get("/over-tls").await;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.echo().path, "/over-tls");
    assert_eq!(backend.requests(), 1);
}

#[tokio::test]
async fn an_upstream_certificate_no_trusted_root_signed_is_refused_unless_verification_is_skipped()
{
    let ca = Ca::new();
    let backend = Backend::new("secure")
        .tls(&ca.leaf(&["127.0.0.1"]), &["http/1.1"])
        .start()
        .await;

    // The system's roots do not know the test CA: 502, and the request never left.
    let strict = proxy_to_tls_backend(&backend, "tls = {}", &ca).await;
    let reply = strict.client().get("/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(backend.requests(), 0);

    let lax = proxy_to_tls_backend(&backend, "tls = { insecure_skip_verify = true }", &ca).await;
    let reply = lax.client().get("/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(
        lax.logs().contains("insecure_skip_verify"),
        "the risk is logged"
    );
}

#[tokio::test]
async fn an_upstream_server_name_is_sent_as_sni_and_verified() {
    let ca = Ca::new();
    let backend = Backend::new("named")
        .tls(&ca.leaf(&["api.internal"]), &["http/1.1"])
        .start()
        .await;

    // Verified against the address (127.0.0.1) the certificate does not name: refused.
    let by_address = proxy_to_tls_backend(&backend, r#"tls = { ca = "certs/ca.pem" }"#, &ca).await;
    assert_eq!(
        by_address.client().get("/").await.status,
        StatusCode::BAD_GATEWAY
    );

    let named = proxy_to_tls_backend(
        &backend,
        r#"tls = { ca = "certs/ca.pem", server_name = "api.internal" }"#,
        &ca,
    )
    .await;
    assert_eq!(named.client().get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_h2_upstream_over_tls_gets_http2_and_health_checks_speak_it_too() {
    let ca = Ca::new();
    let backend = Backend::new("h2")
        .tls(&ca.leaf(&["127.0.0.1"]), &["h2"])
        .health("/health")
        .start()
        .await;
    let extra = r#"protocol = "h2"
tls = { ca = "certs/ca.pem" }
health = { path = "/health", interval = "100ms", timeout = "100ms" }"#;
    let proxy = proxy_to_tls_backend(&backend, extra, &ca).await;

    // Healthy from the first probe (over TLS, HTTP/2) before serving.
    assert!(backend.probes() >= 1);
    let reply = proxy.client().get("/two").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.echo().version, "HTTP/2.0");
}

#[tokio::test]
async fn an_unreadable_upstream_ca_is_a_check_error_naming_the_file() {
    let backend = Backend::new("app").start().await;
    let manifest = crate::support::one_upstream(
        &endpoints(&[&backend]),
        r#"tls = { ca = "certs/missing-ca.pem" }"#,
        "",
    );
    let checked = crate::support::check(&manifest);
    let reason = checked.assert_rejected_at("upstreams[0].tls.ca");
    assert!(reason.contains("missing-ca.pem"), "{reason}");
}

/// A proxy on `site.test` asking clients for certificates from `clients`
/// (`client_auth` keys as given), with the `probe` plugin reporting what it
/// sees: its address and the proxy.
async fn mtls_proxy(ca: &Ca, clients: &Ca, client_auth: &str) -> (SocketAddr, Portier) {
    let site = ca.leaf(&["site.test"]);
    let https = free_addr();
    let backend = Backend::new("app").start().await;
    let manifest = format!(
        r#"
[server]
listen = "{listen}"

[server.tls]
listen = "{https}"
{certificates}
client_ca = "certs/clients-ca.pem"
{client_auth}

[admin]
listen = "{admin}"

[[upstreams]]
name = "app"
endpoints = {endpoints}

[[pipeline]]
plugin = "{probe}"
role = "filter"
"#,
        listen = free_addr(),
        admin = free_addr(),
        certificates = certificates(&[("site", &[])]),
        endpoints = endpoints(&[&backend]),
        probe = crate::support::test_plugin("probe").display(),
    );
    let proxy = Portier::launch(&manifest)
        .file("certs/site.pem", &site.cert_pem)
        .file("certs/site.key", &site.key_pem)
        .file("certs/clients-ca.pem", clients.cert_pem())
        .start()
        .await;
    (https, proxy)
}

/// What the probe plugin saw of the client certificate: 200 with
/// `subject|dns|uris|emails|sha256`, or 403 `none`.
async fn seen_certificate(
    https: SocketAddr,
    config: tokio_rustls::rustls::ClientConfig,
) -> tls::TlsReply {
    tls::get_with(
        https,
        "site.test",
        config,
        "/",
        &[("x-probe", "client-cert:")],
    )
    .await
}

#[tokio::test]
async fn mutual_tls_admits_certificates_of_the_client_ca_and_shows_plugins_who_it_is() {
    let ca = Ca::new();
    let clients = Ca::new();
    let (https, proxy) = mtls_proxy(&ca, &clients, "").await;
    let alice = clients.client_leaf(
        "alice",
        &[
            "alice.clients.test",
            "uri:spiffe://portier.test/alice",
            "email:alice@portier.test",
        ],
    );

    for alpn in [&["http/1.1"][..], &["h2"]] {
        let reply = seen_certificate(https, ca.client_config_as(alpn, Some(&alice))).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let fields: Vec<String> = reply.text().split('|').map(String::from).collect();
        assert!(fields[0].contains("CN=alice"), "subject {:?}", fields[0]);
        assert!(
            fields[0].contains("O=Portier Tests"),
            "subject {:?}",
            fields[0]
        );
        assert_eq!(fields[1], "alice.clients.test");
        assert_eq!(fields[2], "spiffe://portier.test/alice");
        assert_eq!(fields[3], "alice@portier.test");
        use sha2::Digest;
        let pin: String = sha2::Sha256::digest(&alice.der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(fields[4], pin);
    }

    // No certificate, or one from another CA: the handshake fails, counted.
    let before = proxy.status().await["tls_handshake_failures"]
        .as_u64()
        .unwrap();
    let stranger = Ca::new().client_leaf("mallory", &[]);
    for config in [
        ca.client_config(&["http/1.1"]),
        ca.client_config_as(&["http/1.1"], Some(&stranger)),
    ] {
        // TLS 1.3 finishes the client's side before the server reads its
        // certificate: the refusal shows on the first read.
        let refused = match tls::connect(https, "site.test", config).await {
            Err(_) => true,
            Ok(mut stream) => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
                    .await;
                let mut buf = [0u8; 64];
                !matches!(stream.read(&mut buf).await, Ok(n) if n > 0)
            }
        };
        assert!(refused, "a client without a valid certificate was served");
    }
    let after = proxy.status().await["tls_handshake_failures"]
        .as_u64()
        .unwrap();
    assert_eq!(after - before, 2);
}

#[tokio::test]
async fn optional_client_auth_lets_clients_without_a_certificate_in_and_plugins_see_none() {
    let ca = Ca::new();
    let clients = Ca::new();
    let (https, _proxy) = mtls_proxy(&ca, &clients, "client_auth = \"optional\"").await;

    let anonymous = seen_certificate(https, ca.client_config(&["h2"])).await;
    assert_eq!(anonymous.status, StatusCode::FORBIDDEN);
    assert_eq!(anonymous.text(), "none");

    let bob = clients.client_leaf("bob", &[]);
    let known = seen_certificate(https, ca.client_config_as(&["h2"], Some(&bob))).await;
    assert_eq!(known.status, StatusCode::OK);
    assert!(known.text().starts_with("CN=bob"), "{}", known.text());
}

#[tokio::test]
async fn a_missing_client_ca_or_client_auth_without_one_is_a_check_error() {
    let backend = Backend::new("app").start().await;
    let checked = crate::support::check(&manifest(
        free_addr(),
        "self_signed = true\nclient_ca = \"certs/missing-clients.pem\"",
        &backend,
    ));
    let reason = checked.assert_rejected_at("server.tls.client_ca");
    assert!(reason.contains("missing-clients.pem"), "{reason}");

    let checked = crate::support::check(&manifest(
        free_addr(),
        "self_signed = true\nclient_auth = \"optional\"",
        &backend,
    ));
    checked.assert_rejected_at("server.tls.client_auth");
}
