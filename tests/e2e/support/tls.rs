//! Certificates made in the test (rcgen: a CA and leaves it signs) and a
//! real TLS client (rustls) that reports what the handshake settled: the
//! certificate the proxy presented and the ALPN protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::body;

/// A test CA.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM, and the certificate's DER (to
/// compare with what a handshake presented).
#[derive(Clone)]
pub struct Leaf {
    /// The certificate chain (the leaf only), PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The leaf, DER.
    pub der: Vec<u8>,
}

impl Ca {
    /// A fresh CA.
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// A leaf for these DNS names (or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().expect("leaf key");
        let cert = CertificateParams::new(names)
            .expect("leaf params")
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// The CA's certificate, PEM (for a manifest's `tls.ca`).
    pub fn cert_pem(&self) -> String {
        self.issuer.as_ref().pem()
    }

    /// A client certificate signed by this CA: subject `CN=<cn>`, these
    /// subject alternative names (DNS names, or `uri:`/`email:` prefixed),
    /// extended key usage clientAuth.
    pub fn client_leaf(&self, cn: &str, names: &[&str]) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Portier Tests");
        for name in names {
            params
                .subject_alt_names
                .push(if let Some(uri) = name.strip_prefix("uri:") {
                    SanType::URI(uri.try_into().expect("a URI"))
                } else if let Some(email) = name.strip_prefix("email:") {
                    SanType::Rfc822Name(email.try_into().expect("an email"))
                } else {
                    SanType::DnsName((*name).try_into().expect("a DNS name"))
                });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("client key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A client configuration that trusts this CA only.
    pub fn client_config(&self, alpn: &[&str]) -> ClientConfig {
        self.client_config_as(alpn, None)
    }

    /// [`Ca::client_config`], presenting `client` as its certificate (mutual TLS).
    pub fn client_config_as(&self, alpn: &[&str], client: Option<&Leaf>) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.issuer.as_ref().der().clone())
            .expect("the CA certificate");
        let builder = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some(leaf) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(leaf.der.clone())],
                    PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("client key"),
                )
                .expect("a client certificate"),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }
}

/// What one HTTPS exchange settled.
#[derive(Debug)]
pub struct TlsReply {
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: bytes::Bytes,
    /// The HTTP version of the response.
    pub version: http::Version,
    /// The leaf certificate the proxy presented, DER.
    pub peer_cert: Vec<u8>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<String>,
}

impl TlsReply {
    /// The backend's echo in the body.
    pub fn echo(&self) -> super::Echo {
        super::Echo::parse(&self.body)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A TLS connection to `addr` with SNI `name` under `config`.
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    config: ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_owned()).expect("a server name");
    tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// GET `path` over a new TLS connection (HTTP/2 when ALPN chose h2).
pub async fn get(addr: SocketAddr, name: &str, config: ClientConfig, path: &str) -> TlsReply {
    get_with(addr, name, config, path, &[]).await
}

/// [`get`] with these request headers.
pub async fn get_with(
    addr: SocketAddr,
    name: &str,
    config: ClientConfig,
    path: &str,
    headers: &[(&str, &str)],
) -> TlsReply {
    let tls = connect(addr, name, config)
        .await
        .unwrap_or_else(|e| panic!("TLS to {addr} as {name}: {e}"));
    let (_, session) = tls.get_ref();
    let peer_cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c: &CertificateDer<'_>| c.to_vec())
        .unwrap_or_default();
    let alpn = session
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let mut request = Request::get(path).header("host", name);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(body::empty()).expect("request");
    let io = TokioIo::new(tls);
    let response = if alpn.as_deref() == Some("h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let mut request = request;
        *request.uri_mut() = format!("https://{name}{path}").parse().expect("uri");
        send.send_request(request).await.expect("h2 response")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("http1 handshake");
        tokio::spawn(conn);
        send.send_request(request).await.expect("http1 response")
    };
    let version = response.version();
    let (parts, incoming) = response.into_parts();
    let body = incoming.collect().await.expect("body").to_bytes();
    TlsReply {
        status: parts.status,
        headers: parts.headers,
        body,
        version,
        peer_cert,
        alpn,
    }
}
