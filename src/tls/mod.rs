//! TLS: certificate and key loading (PEM; RSA, ECDSA or Ed25519; with chain), a certificate
//! resolver whose key can be swapped while serving, and the acceptor of the HTTPS port.
//! [`self_signed`] makes and renews the certificate of the one-command start, under a CA of its
//! own; [`acme`] gets and renews certificates from an ACME CA.
//!
//! Files are validated here, before pingora sees them: pingora's own loader panics inside its
//! service thread on a bad file.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub mod acme;
pub mod self_signed;

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

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
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

/// Serves one certificate for every name, replaceable while running; with ACME, the
/// tls-alpn-01 challenge certificates to handshakes that ask for `acme-tls/1`.
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    challenges: Option<Arc<acme::Challenges>>,
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
            challenges: None,
        }
    }

    /// A store that also answers tls-alpn-01 challenges from `challenges`.
    pub fn with_challenges(key: CertifiedKey, challenges: Arc<acme::Challenges>) -> CertStore {
        CertStore {
            challenges: Some(challenges),
            ..CertStore::new(key)
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
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        crate::metrics::TLS_HELLOS.inc();
        if let Some(answer) = self.challenges.as_ref().and_then(|c| c.for_hello(&hello)) {
            return answer;
        }
        Some(self.current())
    }
}

/// The TLS acceptor of the HTTPS port: TLS 1.2 and 1.3, the certificate from `certs`, ALPN
/// `h2` (when on) and `http/1.1`, and `acme-tls/1` when tls-alpn-01 challenges are answered.
/// (Handshakes are counted in [`crate::conn`], where the handshake runs.)
pub fn acceptor(
    certs: Arc<CertStore>,
    http2: bool,
    acme_alpn: bool,
) -> pingora::listeners::tls::Acceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .expect("ring supports TLS 1.2 and 1.3")
    .with_no_client_auth()
    .with_cert_resolver(certs);
    let mut alpn = Vec::new();
    if http2 {
        alpn.push(b"h2".to_vec());
    }
    alpn.push(b"http/1.1".to_vec());
    if acme_alpn {
        alpn.push(acme::ACME_TLS_ALPN.to_vec());
    }
    config.alpn_protocols = alpn;
    pingora::listeners::tls::Acceptor::from_server_config(Arc::new(config))
}

/// Runs [`self_signed::ensure`] and says what it did in the log: a certificate made or
/// re-issued, or the configured names a kept certificate does not cover. Returns whether a new
/// certificate was written.
pub fn upkeep(
    files: &self_signed::Files,
    wanted: &self_signed::Wanted,
    generate: bool,
) -> Result<bool, TlsError> {
    use self_signed::{Origin, Outcome};
    match self_signed::ensure(files, wanted, generate, std::time::SystemTime::now())? {
        Outcome::Issued {
            names,
            reason,
            new_ca: true,
        } => {
            tracing::warn!(
                cert = %files.cert.display(),
                ca = %files.ca.display(),
                names = %names.join(","),
                reason = %reason,
                "generated a CA and a certificate it signs; clients must trust {}: copy it to /etc/docker/certs.d/<host:port>/ca.crt (Docker) or /etc/containers/certs.d/<host:port>/ca.crt (podman, skopeo)",
                files.ca.display()
            );
            Ok(true)
        }
        Outcome::Issued { names, reason, .. } => {
            tracing::info!(
                cert = %files.cert.display(),
                names = %names.join(","),
                reason = %reason,
                "re-issued the certificate under the same CA ({}): clients that trust it need no change",
                files.ca.display()
            );
            Ok(true)
        }
        Outcome::Kept {
            origin,
            uncovered,
            ca_expiring,
            ..
        } => {
            if !uncovered.is_empty() {
                let what = match origin {
                    Origin::User => "the certificate is not replaced because it is not ours",
                    Origin::Ours => "it is not re-issued because [tls] self_signed is false",
                    Origin::OursWithoutCaKey => "the certificate was made by an older registry-edge that did not keep its CA key: `registry-edge cert --force` makes a new CA, whose ca.crt clients must then be given",
                };
                tracing::warn!(
                    cert = %files.cert.display(),
                    uncovered = %uncovered.join(","),
                    "the certificate does not cover these configured names, so clients using them will refuse it; {what}"
                );
            }
            if ca_expiring {
                tracing::warn!(
                    ca = %files.ca.display(),
                    "the CA expires within a month and cannot renew the certificate past its own end: `registry-edge cert --force --new-ca`, then give clients the new ca.crt"
                );
            }
            Ok(false)
        }
    }
}

/// Writes `data` to `path` (creating its directory) through a temporary file renamed into place,
/// so a running edge never reads half a file; readable by the owner only when `secret`.
pub(crate) fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_rejects_mismatches_and_bad_files() {
        use self_signed::{ensure, Files, Wanted};
        let dir = tempfile::tempdir().unwrap();
        let files = |d: &str| Files {
            cert: dir.path().join(d).join("domain.crt"),
            key: dir.path().join(d).join("domain.key"),
            ca: dir.path().join(d).join("ca.crt"),
        };
        let (a, b) = (files("a"), files("b"));
        let now = std::time::SystemTime::now();
        ensure(&a, &Wanted::default(), true, now).unwrap();
        ensure(&b, &Wanted::default(), true, now).unwrap();
        let (c, k) = (&a.cert, &a.key);
        load_certified_key(c, k).unwrap();
        // A key that belongs to another certificate.
        let e = load_certified_key(c, &b.key).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        // Garbage and missing files.
        std::fs::write(dir.path().join("bad.pem"), "hello").unwrap();
        let e = load_certified_key(&dir.path().join("bad.pem"), k)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.pem"), "{e}");
        let e = load_certified_key(c, &dir.path().join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.key"), "{e}");
    }
}
