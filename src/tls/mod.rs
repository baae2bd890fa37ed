//! TLS: certificate and key loading (PEM; RSA, ECDSA or Ed25519; with chain), a certificate
//! resolver whose key can be swapped while serving, and the self-signed certificate generated for
//! the one-command start.
//!
//! Files are validated here, before pingora sees them: pingora's own loader panics inside its
//! service thread on a bad file.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate or key problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating a certificate failed: {0}")]
    Generate(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn invalid(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Loads a PEM certificate chain and its private key, checking that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let pem = read(cert)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(cert, "no CERTIFICATE block found"));
    }
    let pem = read(key)?;
    let der = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| invalid(key, format!("not a PEM key file: {e}")))?
        .ok_or_else(|| invalid(key, "no PRIVATE KEY block found"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| invalid(key, format!("unsupported private key: {e}")))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        invalid(
            key,
            format!("does not match the certificate in {}: {e}", cert.display()),
        )
    })?;
    Ok(ck)
}

/// Serves one certificate for every name, replaceable while running.
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertStore")
    }
}

/// The leaf certificate's expiry, in seconds since the Unix epoch.
pub fn expiry(key: &CertifiedKey) -> Option<i64> {
    let der = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

impl CertStore {
    pub fn new(key: CertifiedKey) -> CertStore {
        if let Some(t) = expiry(&key) {
            crate::metrics::CERT_EXPIRY.set(t);
        }
        CertStore {
            current: RwLock::new(Arc::new(key)),
        }
    }

    /// Replaces the certificate; handshakes from now on present the new one, connections
    /// already established keep theirs.
    pub fn replace(&self, key: CertifiedKey) {
        if let Some(t) = expiry(&key) {
            crate::metrics::CERT_EXPIRY.set(t);
        }
        *self.current.write().expect("cert lock") = Arc::new(key);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().expect("cert lock").clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        crate::metrics::TLS_HELLOS.inc();
        Some(self.current())
    }
}

/// Counts completed handshakes by protocol version.
pub struct HandshakeMetrics;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for HandshakeMetrics {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let version = tls.version().unwrap_or("unknown");
        crate::metrics::TLS_HANDSHAKES
            .with_label_values(&["ok", version])
            .inc();
        None
    }
}

/// The files a generated certificate was written to.
#[derive(Debug)]
pub struct Generated {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub names: Vec<String>,
}

/// Writes `data` to `path` (creating its directory), readable by the owner only when `secret`.
fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Generates a one-off CA and a server certificate it signs, for `hosts` (DNS names and IP
/// addresses) plus `localhost` and `127.0.0.1`. Writes the certificate, its key and the CA
/// certificate (`ca.crt`, for `/etc/docker/certs.d/<host:port>/`). The CA's key is never written,
/// so it can sign nothing else.
pub fn generate_self_signed(
    cert: &Path,
    key: &Path,
    ca: &Path,
    hosts: &[String],
) -> Result<Generated, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let g = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    // This machine's name too, when it is a valid DNS name (an odd one is skipped, not fatal).
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        let valid = rcgen::string::Ia5String::try_from(h.to_owned()).is_ok()
            && !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if valid && !names.iter().any(|n| n == h) {
            names.push(h.to_owned());
        }
    }
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let mut sans = Vec::new();
    for n in &names {
        sans.push(match n.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                n.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| TlsError::Generate(format!("{n:?}: {e}")))?,
            ),
        });
    }
    let ca_key = KeyPair::generate().map_err(g)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(g)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "registry-edge self-signed CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(g)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().map_err(g)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(g)?;
    params.subject_alt_names = sans;
    params.distinguished_name.push(
        DnType::CommonName,
        names.last().cloned().unwrap_or_default(),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Strict X.509 checks (Python 3.13's default among them) want the issuer's key named.
    params.use_authority_key_identifier_extension = true;
    let leaf = params.signed_by(&leaf_key, &issuer).map_err(g)?;

    write_file(key, leaf_key.serialize_pem().as_bytes(), true)?;
    write_file(cert, leaf.pem().as_bytes(), false)?;
    write_file(ca, ca_cert.pem().as_bytes(), false)?;
    Ok(Generated {
        cert: cert.to_owned(),
        key: key.to_owned(),
        ca: ca.to_owned(),
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load_and_reject_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, ca) = (
            dir.path().join("certs/domain.crt"),
            dir.path().join("certs/domain.key"),
            dir.path().join("certs/ca.crt"),
        );
        let g = generate_self_signed(&c, &k, &ca, &["registry.example".into(), "10.1.2.3".into()])
            .unwrap();
        assert!(g.names.contains(&"10.1.2.3".to_string()));
        let pem = std::fs::read(&c).unwrap();
        let (_, der) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = der.parse_x509().unwrap();
        assert!(
            cert.extensions()
                .iter()
                .any(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER),
            "the leaf names its issuer's key"
        );
        load_certified_key(&c, &k).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A key that belongs to another certificate.
        let (c2, k2) = (dir.path().join("2.crt"), dir.path().join("2.key"));
        generate_self_signed(&c2, &k2, &dir.path().join("2ca.crt"), &[]).unwrap();
        let e = load_certified_key(&c, &k2).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        // Garbage and missing files.
        std::fs::write(dir.path().join("bad.pem"), "hello").unwrap();
        let e = load_certified_key(&dir.path().join("bad.pem"), &k)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.pem"), "{e}");
        let e = load_certified_key(&c, &dir.path().join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.key"), "{e}");
    }
}
