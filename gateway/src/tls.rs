//! TLS with rustls: downstream server configs (optional/required client certificates),
//! upstream client configs (system roots + optional CA, SNI override, mTLS), and the
//! identities of a verified client certificate (URI SANs such as SPIFFE IDs, DNS SANs).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientAuth, ServerTlsConfig, UpstreamTlsConfig};

/// TLS set-up errors, each naming the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the material (key does not match certificate, …).
    #[error("{0}")]
    Rustls(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_err("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// Read a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    // The parser's message never contains key material.
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        reason: format!("no usable PEM private key: {e}"),
    })
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| TlsError::File {
            path: path.display().to_string(),
            reason: format!("bad CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Build the downstream server config: TLS 1.2/1.3, ALPN h2 + http/1.1.
pub fn server_config(cfg: &ServerTlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(&cfg.cert_file)?;
    let key = load_key(&cfg.key_file)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match (cfg.client_auth, &cfg.client_ca_file) {
        (ClientAuth::Off, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(ca)) => {
            let roots = Arc::new(roots_from(ca)?);
            let v = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let v = if mode == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            let verifier = v
                .build()
                .map_err(|e| TlsError::Rustls(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut sc = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", cfg.key_file.display())))?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

/// Build an upstream client config (ALPN unset). Verification is always on: system roots plus the
/// optional CA file. `https` says whether the upstream speaks TLS at all: the system roots
/// (hundreds of files, parsed one by one) are read only for one that does, so a plain-HTTP
/// upstream costs start-up and reload nothing here.
pub fn client_config(
    tls: Option<&UpstreamTlsConfig>,
    https: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    let default = UpstreamTlsConfig::default();
    let tls = tls.unwrap_or(&default);
    let mut roots = RootCertStore::empty();
    if https && !tls.no_system_roots {
        // A host without a system bundle still works with an explicit ca_file.
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
    }
    if let Some(ca) = &tls.ca_file {
        for c in load_certs(ca)? {
            roots.add(c).map_err(|e| TlsError::File {
                path: ca.display().to_string(),
                reason: format!("bad CA certificate: {e}"),
            })?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let cc = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(load_certs(c)?, load_key(k)?)
            .map_err(|e| TlsError::Rustls(format!("{}: {e}", k.display())))?,
        _ => builder.with_no_client_auth(),
    };
    // ALPN is left to the connector, which offers h2 or http/1.1 from the upstream's
    // `http2` setting.
    Ok(cc)
}

/// Identities in a verified peer certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentities {
    /// URI SANs (`spiffe://trust-domain/path`).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
}

/// Extract SAN identities from the leaf certificate.
pub fn peer_identities(leaf: &CertificateDer<'_>) -> PeerIdentities {
    use x509_parser::extensions::GeneralName;
    let mut out = PeerIdentities::default();
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return out;
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => out.uris.push((*u).to_string()),
                GeneralName::DNSName(d) => out.dns.push((*d).to_string()),
                _ => {}
            }
        }
    }
    out
}

/// The `notAfter` of the first certificate in a PEM file, as Unix seconds.
pub fn not_after(path: &Path) -> Option<i64> {
    let certs = load_certs(path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}
