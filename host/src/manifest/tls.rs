//! `[server.tls]`: HTTPS listeners, their certificates, and plain-HTTP
//! listeners that send clients to HTTPS. The files are read when a
//! generation is built (`crate::tls`), so `portier check` and a reload
//! report a bad certificate or key by its key here.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::raw::RawTls;
use super::{ManifestError, Validator};

/// HTTPS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Addresses served over TLS.
    pub listen: Vec<SocketAddr>,
    /// Certificates, the first one the default (no SNI, or no match).
    pub certificates: Vec<Certificate>,
    /// Serve a self-signed certificate for localhost, made at start
    /// (development only; browsers warn).
    pub self_signed: bool,
    /// Plain-HTTP addresses that answer every request with a 308 to HTTPS.
    pub redirect: Vec<SocketAddr>,
    /// Client certificates (mutual TLS), if asked for.
    pub client_auth: Option<ClientAuth>,
}

/// `client_ca` and `client_auth`: clients prove who they are with a
/// certificate a CA in this bundle issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The CA certificates (PEM) client certificates must chain to.
    pub ca: PathBuf,
    /// Whether a client without a certificate is refused (`"required"`,
    /// the default) or let in without one (`"optional"`).
    pub required: bool,
}

/// One certificate chain and its key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Server names it is chosen for: exact (`a.example`) or one wildcard
    /// label (`*.example`). Empty: the names the certificate itself is valid for.
    pub names: Vec<String>,
    /// Its position in `certificates` (error keys).
    pub index: usize,
}

impl Validator<'_> {
    pub(super) fn tls(&self, raw: RawTls) -> Result<Tls, ManifestError> {
        let listen = self.addresses("server.tls.listen", raw.listen.into_vec())?;
        if listen.is_empty() {
            return Err(self.err("server.tls.listen", "at least one address is required"));
        }
        let self_signed = raw.self_signed.unwrap_or(false);
        match (self_signed, raw.certificates.is_empty()) {
            (false, true) => {
                return Err(self.err(
                    "server.tls.certificates",
                    "at least one certificate is required (or self_signed = true for development)",
                ));
            }
            (true, false) => {
                return Err(self.err(
                    "server.tls.self_signed",
                    "a self-signed certificate replaces `certificates`; use one or the other",
                ));
            }
            _ => {}
        }
        let mut certificates = Vec::with_capacity(raw.certificates.len());
        for (i, c) in raw.certificates.into_iter().enumerate() {
            let mut names = Vec::new();
            for (j, n) in c.names.unwrap_or_default().into_iter().enumerate() {
                let name = n.to_ascii_lowercase();
                let bare = name.strip_prefix("*.").unwrap_or(&name);
                if bare.is_empty()
                    || bare.contains('*')
                    || bare.parse::<http::uri::Authority>().is_err()
                {
                    return Err(self.err(
                        format!("server.tls.certificates[{i}].names[{j}]"),
                        format!("{n:?} is not a server name (\"a.example\" or \"*.example\")"),
                    ));
                }
                names.push(name);
            }
            certificates.push(Certificate {
                cert: self.base.join(c.cert),
                key: self.base.join(c.key),
                names,
                index: i,
            });
        }
        let redirect = match raw.redirect {
            Some(r) => self.addresses("server.tls.redirect", r.into_vec())?,
            None => Vec::new(),
        };
        let required = match raw.client_auth.as_deref() {
            None | Some("required") => true,
            Some("optional") => false,
            Some(other) => {
                return Err(self.err(
                    "server.tls.client_auth",
                    format!("{other:?} is not \"required\" or \"optional\""),
                ));
            }
        };
        let client_auth = match raw.client_ca {
            Some(ca) => Some(ClientAuth {
                ca: self.base.join(ca),
                required,
            }),
            None if raw.client_auth.is_some() => {
                return Err(self.err(
                    "server.tls.client_auth",
                    "needs client_ca, the CA bundle client certificates are verified against",
                ));
            }
            None => None,
        };
        Ok(Tls {
            listen,
            certificates,
            self_signed,
            redirect,
            client_auth,
        })
    }

    /// `ip:port` strings, keyed `KEY` for one and `KEY[i]` for several.
    pub(super) fn addresses(
        &self,
        key: &str,
        raw: Vec<String>,
    ) -> Result<Vec<SocketAddr>, ManifestError> {
        let one = raw.len() == 1;
        raw.iter()
            .enumerate()
            .map(|(i, a)| {
                let k = if one {
                    key.to_string()
                } else {
                    format!("{key}[{i}]")
                };
                self.address(k, a)
            })
            .collect()
    }
}
