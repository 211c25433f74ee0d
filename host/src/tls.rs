//! TLS termination: the rustls configuration a generation's HTTPS
//! listeners accept with, and the certificate each client gets by SNI.
//!
//! Certificates are read when a generation is built, so a reload (SIGHUP)
//! picks up renewed files for new connections while open ones keep theirs,
//! and a bad or mismatched file is a manifest error naming it. Only TLS 1.3
//! and 1.2 with ring's AEAD suites (AES-GCM, ChaCha20-Poly1305; ECDHE
//! only), and ALPN `h2` then `http/1.1`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;

use crate::manifest::{Certificate, Tls};

/// Why a TLS configuration could not be built; the caller names the
/// manifest key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct TlsError {
    /// The file at fault (or the setting, for a generated certificate).
    pub file: String,
    /// What is wrong with it.
    pub reason: String,
    /// The manifest key that names it.
    pub key: String,
}

/// The ALPN protocols offered, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration for `tls`, reading every certificate and key.
pub fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let certs = if tls.self_signed {
        Certs::single(self_signed(&provider)?)
    } else {
        Certs::load(&tls.certificates, &provider)?
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError {
            file: String::new(),
            reason: e.to_string(),
            key: "server.tls".into(),
        })?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let key = "server.tls.client_ca";
            let roots = load_roots(&auth.ca, key)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError {
                file: auth.ca.display().to_string(),
                reason: e.to_string(),
                key: key.into(),
            })?)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Certificates by server name.
#[derive(Debug)]
struct Certs {
    /// Names from `names` (lower case).
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example` under `example`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// Certificates without `names`, asked in order whether they are valid
    /// for a name.
    by_content: Vec<Arc<CertifiedKey>>,
    /// For a client without SNI, or a name nothing matches.
    default: Arc<CertifiedKey>,
}

impl Certs {
    fn single(key: Arc<CertifiedKey>) -> Certs {
        Certs {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            by_content: vec![key.clone()],
            default: key,
        }
    }

    fn load(list: &[Certificate], provider: &CryptoProvider) -> Result<Certs, TlsError> {
        let mut certs = Certs {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            by_content: Vec::new(),
            default: load_one(&list[0], provider)?,
        };
        for c in list {
            let key = if c.index == 0 {
                certs.default.clone()
            } else {
                load_one(c, provider)?
            };
            if c.names.is_empty() {
                certs.by_content.push(key);
                continue;
            }
            for name in &c.names {
                // The first certificate naming a name keeps it.
                let (map, name) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut certs.wildcard, parent),
                    None => (&mut certs.exact, name.as_str()),
                };
                map.entry(name.to_owned()).or_insert_with(|| key.clone());
            }
        }
        Ok(certs)
    }

    /// The certificate for `name`: an exact name, then a wildcard one, then
    /// the first certificate without `names` that is valid for it, then the
    /// default.
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return k.clone();
        }
        let Ok(server_name) = ServerName::try_from(name.as_str()) else {
            return self.default.clone();
        };
        self.by_content
            .iter()
            .find(|k| valid_for(k, &server_name))
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Whether a certificate's leaf names `name` (its SANs, wildcards included).
fn valid_for(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    key.cert.first().is_some_and(|leaf| {
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
    })
}

fn load_one(c: &Certificate, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let at = |field: &str, path: &Path, reason: String| TlsError {
        file: path.display().to_string(),
        reason,
        key: format!("server.tls.certificates[{}].{field}", c.index),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
        .map_err(|e| at("cert", &c.cert, format!("cannot read: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| at("cert", &c.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(at("cert", &c.cert, "holds no certificate".into()));
    }
    if let Err(e) = webpki::EndEntityCert::try_from(&chain[0]) {
        return Err(at(
            "cert",
            &c.cert,
            format!("the first certificate is not valid X.509: {e}"),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&c.key)
        .map_err(|e| at("key", &c.key, format!("not a PEM private key: {e}")))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        at(
            "key",
            &c.key,
            format!("does not go with {}: {e}", c.cert.display()),
        )
    })?;
    Ok(Arc::new(certified))
}

/// A certificate for localhost, 127.0.0.1 and ::1, made once per process
/// (so reloads and every listener serve the same one).
fn self_signed(provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    /// The certificate and key, DER.
    type Made = Result<(Vec<u8>, Vec<u8>), String>;
    static MADE: OnceLock<Made> = OnceLock::new();
    let made = MADE.get_or_init(|| {
        let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        let key = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
        tracing::warn!("serving HTTPS with a self-signed certificate for localhost generated at start: for development only, clients will not trust it");
        Ok((key.cert.der().to_vec(), key.signing_key.serialize_der()))
    });
    let fail = |reason: String| TlsError {
        file: "(generated)".into(),
        reason,
        key: "server.tls.self_signed".into(),
    };
    let (cert, key) = made.as_ref().map_err(|e| fail(e.clone()))?;
    let key = PrivateKeyDer::try_from(key.clone()).map_err(|e| fail(e.to_string()))?;
    CertifiedKey::from_der(vec![CertificateDer::from(cert.clone())], key, provider)
        .map(Arc::new)
        .map_err(|e| fail(e.to_string()))
}

/// The CA certificates of a PEM bundle (`key` names it in errors).
fn load_roots(path: &Path, key: &str) -> Result<rustls::RootCertStore, TlsError> {
    let at = |reason: String| TlsError {
        file: path.display().to_string(),
        reason,
        key: key.to_owned(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| at(format!("cannot read: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| at(format!("not PEM certificates: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(at("holds no usable CA certificate".into()));
    }
    Ok(roots)
}

/// A client certificate the handshake verified (mutual TLS), read once per
/// connection and handed to plugins with each of its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject, RFC 4514 style ("CN=alice, O=Example").
    pub subject: String,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs, for one).
    pub uris: Vec<String>,
    /// Email subject alternative names.
    pub emails: Vec<String>,
    /// SHA-256 of the DER, lower-case hex.
    pub sha256: String,
}

impl ClientCert {
    /// Read the verified leaf. rustls checked it already, so a certificate
    /// x509-parser cannot read is not expected; it then has a fingerprint only.
    pub fn read(der: &CertificateDer<'_>) -> ClientCert {
        use sha2::Digest;
        use x509_parser::extensions::GeneralName;
        let sha256 = sha2::Sha256::digest(der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut cert = ClientCert {
            subject: String::new(),
            dns_names: Vec::new(),
            uris: Vec::new(),
            emails: Vec::new(),
            sha256,
        };
        let Ok((_, x509)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            return cert;
        };
        cert.subject = x509.subject().to_string();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => cert.dns_names.push((*n).to_owned()),
                    GeneralName::URI(u) => cert.uris.push((*u).to_owned()),
                    GeneralName::RFC822Name(e) => cert.emails.push((*e).to_owned()),
                    _ => {}
                }
            }
        }
        cert
    }
}

/// How the host speaks TLS to one upstream's endpoints.
#[derive(Debug)]
pub struct UpstreamConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl UpstreamConnector {
    /// Build it from the upstream's `tls` table (`index`: its position,
    /// for error keys), reading the CA file or the system's roots.
    pub fn new(
        tls: &crate::manifest::UpstreamTls,
        index: usize,
        alpn: &[u8],
    ) -> Result<UpstreamConnector, TlsError> {
        let at = |field: &str, file: String, reason: String| TlsError {
            file,
            reason,
            key: format!("upstreams[{index}].tls{field}"),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| at("", String::new(), e.to_string()))?;
        let mut config = if tls.insecure_skip_verify {
            tracing::warn!(
                upstream = index,
                "TLS to this upstream accepts any certificate (insecure_skip_verify): for development only"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
                .with_no_client_auth()
        } else {
            let roots = match &tls.ca {
                Some(ca) => load_roots(ca, &format!("upstreams[{index}].tls.ca"))?,
                None => {
                    let mut roots = rustls::RootCertStore::empty();
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                    roots
                }
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(UpstreamConnector {
            config: Arc::new(config),
            server_name: tls
                .server_name
                .as_deref()
                .and_then(|n| ServerName::try_from(n.to_owned()).ok()),
        })
    }

    /// Handshake over `tcp` with an endpoint at `host` (the SNI and the name
    /// verified, unless `server_name` says another).
    pub async fn connect(
        &self,
        host: &str,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_owned())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
            }
        };
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }
}

/// A verifier that accepts every certificate (`insecure_skip_verify`);
/// signatures are still checked, so the handshake is a real one.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
