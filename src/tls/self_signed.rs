//! The certificate the edge makes for itself: a CA of its own (`ca.crt`, kept with its key
//! `ca.key`, 0600, so that clients which trust `ca.crt` keep trusting every server certificate it
//! signs later) and a server certificate it signs for the names clients use.
//!
//! [`ensure`] runs at start, on reload and periodically. It re-issues the server certificate when
//! it is ours and no longer covers the wanted names, or expires within [`RENEW_BEFORE`]. A
//! certificate the user gave us is never replaced: [`Outcome::Kept`] names what it does not cover.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};

use super::{read, write_file, TlsError};

/// The common name of every CA the edge makes; how an older edge's certificate (whose CA key was
/// not kept) is told from a user's.
const CA_NAME: &str = "registry-edge self-signed CA";
/// How long a new CA is valid: clients copy `ca.crt` once, so it should last.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 86400);
/// How long a server certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86400);
/// A server certificate of ours is renewed when it has less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86400);
/// Certificates start a little in the past, for clients whose clocks lag.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The CA key's file: `ca.key` beside `ca.crt`.
pub fn ca_key_path(ca: &Path) -> PathBuf {
    ca.with_extension("key")
}

/// The files of the served certificate and of the CA.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Files {
    pub fn ca_key(&self) -> PathBuf {
        ca_key_path(&self.ca)
    }
}

/// The names a certificate should cover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// What the user configured (`[tls] hosts`): checked on every certificate.
    pub configured: Vec<String>,
    /// What the edge adds on its own (localhost, the machine's name, its interface addresses):
    /// put in certificates we make, never demanded of the user's.
    pub automatic: Vec<String>,
}

impl Wanted {
    /// The wanted names for an edge listening on `listen` (`host:port`): the configured ones,
    /// plus localhost, the loopback addresses and this machine's name, plus the machine's
    /// interface addresses when the listener is on every address (`0.0.0.0`, `::`).
    pub fn for_listener(configured: &[String], listen: &str) -> Wanted {
        let mut automatic: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        if let Some(h) = machine_name() {
            automatic.push(h);
        }
        let host = listen
            .rsplit_once(':')
            .map_or(listen, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) || host.is_empty() {
            automatic.extend(interface_addresses().iter().map(IpAddr::to_string));
        } else if host.parse::<IpAddr>().is_ok() {
            automatic.push(host.to_owned());
        }
        let mut w = Wanted {
            configured: Vec::new(),
            automatic: Vec::new(),
        };
        for n in configured {
            push_unique(&mut w.configured, n);
        }
        for n in automatic {
            if !w.configured.iter().any(|c| same_name(c, &n)) {
                push_unique(&mut w.automatic, &n);
            }
        }
        w
    }

    /// Every wanted name, configured first.
    pub fn all(&self) -> Vec<String> {
        self.configured
            .iter()
            .chain(&self.automatic)
            .cloned()
            .collect()
    }
}

fn push_unique(v: &mut Vec<String>, n: &str) {
    if !v.iter().any(|x| same_name(x, n)) {
        v.push(n.to_owned());
    }
}

fn same_name(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// This machine's name, when it is a valid DNS name (an odd one is skipped, not fatal).
fn machine_name() -> Option<String> {
    let h = std::fs::read_to_string("/etc/hostname").ok()?;
    let h = h.trim();
    let valid = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    valid.then(|| h.to_owned())
}

/// The machine's addresses other than loopback and IPv6 link-local (which need a zone to use).
pub fn interface_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        let ip = if let Some(v4) = sa.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if !ip.is_loopback() && !ip.is_unspecified() && !link_local && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// What a certificate on disk is and covers.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// Its DNS and IP subject alternative names.
    pub names: Vec<String>,
    /// Its expiry, in seconds since the Unix epoch.
    pub not_after: i64,
    /// Signed by an edge CA (by the common name; whether we still hold that CA's key is
    /// [`ensure`]'s question).
    pub from_edge_ca: bool,
    authority_key_id: Option<Vec<u8>>,
    issuer: Vec<u8>,
}

impl Inspected {
    /// The names of `wanted` that this certificate does not cover (`*.example.com` covers one
    /// label, as browsers and Go do; the common name is not looked at, as Go does not).
    pub fn uncovered(&self, wanted: &[String]) -> Vec<String> {
        wanted
            .iter()
            .filter(|w| !self.names.iter().any(|n| covers(n, w)))
            .cloned()
            .collect()
    }
}

fn covers(san: &str, name: &str) -> bool {
    if same_name(san, name) {
        return true;
    }
    match san.strip_prefix("*.") {
        Some(suffix) if name.parse::<IpAddr>().is_err() => name
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        _ => false,
    }
}

/// Reads the first certificate of a PEM file.
pub fn inspect(path: &Path) -> Result<Inspected, TlsError> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let pem = read(path)?;
    let invalid = |m: String| TlsError::Invalid {
        path: path.to_owned(),
        message: m,
    };
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| invalid(format!("not a PEM certificate: {e}")))?;
    let cert = p
        .parse_x509()
        .map_err(|e| invalid(format!("not a certificate: {e}")))?;
    let mut names = Vec::new();
    let mut authority_key_id = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for g in &san.general_names {
                    match g {
                        GeneralName::DNSName(d) => names.push(d.to_string()),
                        GeneralName::IPAddress(b) => {
                            if let Ok(a) = <[u8; 4]>::try_from(*b) {
                                names.push(IpAddr::from(a).to_string());
                            } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                                names.push(IpAddr::from(a).to_string());
                            }
                        }
                        _ => {}
                    }
                }
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    let from_edge_ca = cert
        .issuer()
        .iter_common_name()
        .any(|cn| cn.as_str() == Ok(CA_NAME));
    Ok(Inspected {
        names,
        not_after: cert.validity().not_after.timestamp(),
        from_edge_ca,
        authority_key_id,
        issuer: cert.issuer().as_raw().to_vec(),
    })
}

/// The edge's CA, loaded with its key.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    subject: Vec<u8>,
    key_id: Option<Vec<u8>>,
    not_after: i64,
}

impl Ca {
    /// Loads `ca.crt` and `ca.key`; `None` when either is missing. A key that does not belong to
    /// the certificate is an error: signing with it would give certificates nobody trusts.
    fn load(files: &Files) -> Result<Option<Ca>, TlsError> {
        let key_path = files.ca_key();
        if !files.ca.exists() || !key_path.exists() {
            return Ok(None);
        }
        let invalid = |path: &Path, m: String| TlsError::Invalid {
            path: path.to_owned(),
            message: m,
        };
        let key_pem = String::from_utf8(read(&key_path)?)
            .map_err(|_| invalid(&key_path, "not a PEM file".into()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| invalid(&key_path, format!("not a usable key: {e}")))?;
        let cert_pem = read(&files.ca)?;
        let (_, p) = x509_parser::pem::parse_x509_pem(&cert_pem)
            .map_err(|e| invalid(&files.ca, format!("not a PEM certificate: {e}")))?;
        let cert = p
            .parse_x509()
            .map_err(|e| invalid(&files.ca, format!("not a certificate: {e}")))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                &key_path,
                format!("does not belong to {}", files.ca.display()),
            ));
        }
        let key_id = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            });
        let subject = cert.subject().as_raw().to_vec();
        let not_after = cert.validity().not_after.timestamp();
        let pem = String::from_utf8_lossy(&cert_pem).into_owned();
        let issuer = Issuer::from_ca_cert_pem(&pem, key)
            .map_err(|e| invalid(&files.ca, format!("cannot sign with it: {e}")))?;
        Ok(Some(Ca {
            issuer,
            subject,
            key_id,
            not_after,
        }))
    }

    /// Whether this CA signed `leaf`.
    fn signed(&self, leaf: &Inspected) -> bool {
        leaf.issuer == self.subject
            && match (&self.key_id, &leaf.authority_key_id) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
    }

    /// Makes a new CA and writes `ca.key` (0600) and `ca.crt`.
    fn create(files: &Files, now: SystemTime) -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(generate_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_err)?;
        params.distinguished_name.push(DnType::CommonName, CA_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(serial());
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let cert = params.self_signed(&key).map_err(generate_err)?;
        write_file(&files.ca_key(), key.serialize_pem().as_bytes(), true)?;
        write_file(&files.ca, cert.pem().as_bytes(), false)?;
        Ca::load(files)?.ok_or_else(|| TlsError::Generate("the new CA did not load".into()))
    }
}

fn generate_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// A random positive serial number (RFC 5280: unique per CA, at most 20 octets).
fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Signs a server certificate for `names` with `ca` and writes it and its key (0600). Valid for
/// [`LEAF_VALIDITY`], never past the CA's own expiry.
fn issue_leaf(ca: &Ca, files: &Files, names: &[String], now: SystemTime) -> Result<(), TlsError> {
    let mut sans = Vec::new();
    for n in names {
        sans.push(match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                n.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| TlsError::Generate(format!("{n:?}: {e}")))?,
            ),
        });
    }
    let key = KeyPair::generate().map_err(generate_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_err)?;
    params.subject_alt_names = sans;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Strict X.509 checks (Python 3.13's default among them) want the issuer's key named.
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    let ca_end = SystemTime::UNIX_EPOCH + Duration::from_secs(ca.not_after.max(0) as u64);
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + LEAF_VALIDITY).min(ca_end).into();
    let cert = params.signed_by(&key, &ca.issuer).map_err(generate_err)?;
    write_file(&files.key, key.serialize_pem().as_bytes(), true)?;
    write_file(&files.cert, cert.pem().as_bytes(), false)
}

/// Who made the certificate in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Signed by the CA whose key we keep: re-issued when needed.
    Ours,
    /// Made by an older edge that did not keep its CA key: cannot be re-issued under the same
    /// `ca.crt`.
    OursWithoutCaKey,
    /// Given by the user: never replaced.
    User,
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The certificate on disk stays. `uncovered` lists the wanted names it does not cover
    /// (configured ones only, for a user's certificate); `renew_failed` is set when it is ours
    /// and should be renewed but its CA expires first.
    Kept {
        origin: Origin,
        uncovered: Vec<String>,
        not_after: i64,
        ca_expiring: bool,
    },
    /// A server certificate was written; `new_ca` when the CA was made too (clients must be
    /// given the new `ca.crt`).
    Issued {
        names: Vec<String>,
        reason: String,
        new_ca: bool,
    },
}

/// Makes sure the served certificate covers `wanted` and is not about to expire, re-issuing it
/// when it is ours (or absent and `generate`). See the module documentation.
pub fn ensure(
    files: &Files,
    wanted: &Wanted,
    generate: bool,
    now: SystemTime,
) -> Result<Outcome, TlsError> {
    let all = wanted.all();
    if !files.cert.exists() && !files.key.exists() {
        if !generate {
            return Err(TlsError::Read {
                path: files.cert.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let (ca, new_ca) = match Ca::load(files)? {
            Some(ca) if ca.not_after - unix(now) > RENEW_BEFORE.as_secs() as i64 => (ca, false),
            _ => (Ca::create(files, now)?, true),
        };
        issue_leaf(&ca, files, &all, now)?;
        return Ok(Outcome::Issued {
            names: all,
            reason: "no certificate yet".into(),
            new_ca,
        });
    }
    let leaf = inspect(&files.cert)?;
    // A CA key that does not load is reported, not fatal, when nothing is to be made with it.
    let ca = if leaf.from_edge_ca {
        match Ca::load(files) {
            Ok(ca) => ca.filter(|ca| ca.signed(&leaf)),
            Err(e) if generate => return Err(e),
            Err(_) => None,
        }
    } else {
        None
    };
    let origin = match (&ca, leaf.from_edge_ca) {
        (Some(_), _) => Origin::Ours,
        (None, true) => Origin::OursWithoutCaKey,
        (None, false) => Origin::User,
    };
    let (Some(ca), true) = (ca, generate) else {
        // Not ours to re-issue, or re-issuing is off (`self_signed = false`).
        return Ok(Outcome::Kept {
            origin,
            uncovered: leaf.uncovered(&wanted.configured),
            not_after: leaf.not_after,
            ca_expiring: false,
        });
    };
    let missing = leaf.uncovered(&all);
    let left = leaf.not_after - unix(now);
    // Renewing only helps when the CA outlives the certificate in use.
    let expiring = left < RENEW_BEFORE.as_secs() as i64 && ca.not_after > leaf.not_after + 86400;
    if missing.is_empty() && !expiring {
        return Ok(Outcome::Kept {
            origin: Origin::Ours,
            uncovered: Vec::new(),
            not_after: leaf.not_after,
            ca_expiring: ca.not_after - unix(now) < RENEW_BEFORE.as_secs() as i64,
        });
    }
    let reason = if missing.is_empty() {
        format!("it expires in {} days", left.max(0) / 86400)
    } else {
        format!("it does not cover {}", missing.join(", "))
    };
    // Names it covered stay covered: a client may still use one that is not wanted any more.
    let mut names = all;
    for n in &leaf.names {
        push_unique(&mut names, n);
    }
    issue_leaf(&ca, files, &names, now)?;
    Ok(Outcome::Issued {
        names,
        reason,
        new_ca: false,
    })
}

/// `registry-edge cert`: writes a server certificate for `wanted`, signed by the kept CA, or by
/// a new one when there is none or when `new_ca`.
pub fn issue(
    files: &Files,
    wanted: &Wanted,
    new_ca: bool,
    now: SystemTime,
) -> Result<Outcome, TlsError> {
    let (ca, made) = match Ca::load(files)? {
        Some(ca) if !new_ca => (ca, false),
        _ => (Ca::create(files, now)?, true),
    };
    let names = wanted.all();
    issue_leaf(&ca, files, &names, now)?;
    Ok(Outcome::Issued {
        names,
        reason: "asked for".into(),
        new_ca: made,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Files {
        Files {
            cert: dir.join("certs/domain.crt"),
            key: dir.join("certs/domain.key"),
            ca: dir.join("certs/ca.crt"),
        }
    }

    fn wanted(names: &[&str]) -> Wanted {
        Wanted {
            configured: names.iter().map(|s| s.to_string()).collect(),
            automatic: vec!["localhost".into(), "127.0.0.1".into()],
        }
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn first_start_makes_a_ca_and_a_certificate_with_sane_validity() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let now = SystemTime::now();
        let o = ensure(&f, &wanted(&["registry.example", "10.1.2.3"]), true, now).unwrap();
        assert!(matches!(o, Outcome::Issued { new_ca: true, .. }), "{o:?}");
        assert_eq!(mode(&f.key), 0o600);
        assert_eq!(mode(&f.ca_key()), 0o600);
        let leaf = inspect(&f.cert).unwrap();
        assert!(leaf
            .uncovered(&wanted(&["registry.example", "10.1.2.3"]).all())
            .is_empty());
        let days = (leaf.not_after - unix(now)) / 86400;
        assert!((364..=365).contains(&days), "{days}");
        let ca = inspect(&f.ca).unwrap();
        let days = (ca.not_after - unix(now)) / 86400;
        assert!((3649..=3650).contains(&days), "{days}");
        super::super::load_certified_key(&f.cert, &f.key).unwrap();
        // A second start changes nothing.
        let o = ensure(&f, &wanted(&["registry.example", "10.1.2.3"]), true, now).unwrap();
        assert!(
            matches!(o, Outcome::Kept { origin: Origin::Ours, ref uncovered, .. } if uncovered.is_empty()),
            "{o:?}"
        );
    }

    #[test]
    fn a_new_name_or_an_expiry_reissues_under_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let now = SystemTime::now();
        ensure(&f, &wanted(&["a.example"]), true, now).unwrap();
        let ca_before = std::fs::read(&f.ca).unwrap();
        let o = ensure(&f, &wanted(&["a.example", "b.example"]), true, now).unwrap();
        match o {
            Outcome::Issued { reason, new_ca, .. } => {
                assert!(reason.contains("b.example"), "{reason}");
                assert!(!new_ca);
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(std::fs::read(&f.ca).unwrap(), ca_before, "the CA stays");
        let leaf = inspect(&f.cert).unwrap();
        assert!(leaf
            .uncovered(&["a.example".into(), "b.example".into()])
            .is_empty());
        // Eleven months on, it is renewed.
        let later = now + LEAF_VALIDITY - RENEW_BEFORE + Duration::from_secs(86400);
        let o = ensure(&f, &wanted(&["a.example"]), true, later).unwrap();
        assert!(
            matches!(o, Outcome::Issued { ref reason, .. } if reason.contains("expires")),
            "{o:?}"
        );
        assert!(inspect(&f.cert).unwrap().not_after > leaf.not_after);
        assert_eq!(std::fs::read(&f.ca).unwrap(), ca_before);
        // `cert` without --new-ca keeps the CA too; with it, a new one.
        issue(&f, &wanted(&["c.example"]), false, now).unwrap();
        assert_eq!(std::fs::read(&f.ca).unwrap(), ca_before);
        let o = issue(&f, &wanted(&["c.example"]), true, now).unwrap();
        assert!(matches!(o, Outcome::Issued { new_ca: true, .. }));
        assert_ne!(std::fs::read(&f.ca).unwrap(), ca_before);
    }

    #[test]
    fn with_self_signed_off_our_certificate_is_named_not_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        ensure(&f, &wanted(&["a.example"]), true, SystemTime::now()).unwrap();
        let before = std::fs::read(&f.cert).unwrap();
        let o = ensure(
            &f,
            &wanted(&["a.example", "b.example"]),
            false,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(
            o,
            Outcome::Kept {
                origin: Origin::Ours,
                uncovered: vec!["b.example".into()],
                not_after: inspect(&f.cert).unwrap().not_after,
                ca_expiring: false,
            }
        );
        assert_eq!(std::fs::read(&f.cert).unwrap(), before);
        // And nothing is made when there is nothing, either.
        let empty = files(&dir.path().join("none"));
        assert!(ensure(&empty, &wanted(&[]), false, SystemTime::now()).is_err());
    }

    #[test]
    fn a_users_certificate_is_kept_and_its_gaps_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        // A certificate from elsewhere: another CA, whose key we do not have.
        let other = files(&dir.path().join("other"));
        ensure(&other, &wanted(&["a.example"]), true, SystemTime::now()).unwrap();
        std::fs::create_dir_all(f.cert.parent().unwrap()).unwrap();
        std::fs::copy(&other.cert, &f.cert).unwrap();
        std::fs::copy(&other.key, &f.key).unwrap();
        let before = std::fs::read(&f.cert).unwrap();
        let o = ensure(
            &f,
            &wanted(&["a.example", "b.example"]),
            true,
            SystemTime::now(),
        )
        .unwrap();
        match o {
            Outcome::Kept {
                origin, uncovered, ..
            } => {
                // Signed by an edge CA, but not one whose key is here.
                assert_eq!(origin, Origin::OursWithoutCaKey);
                assert_eq!(uncovered, vec!["b.example".to_string()]);
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(std::fs::read(&f.cert).unwrap(), before, "never replaced");
        assert!(!f.ca.exists());
    }

    #[test]
    fn coverage_follows_wildcards_and_address_forms() {
        let i = Inspected {
            names: vec!["*.example.com".into(), "::1".into(), "10.0.0.1".into()],
            not_after: 0,
            from_edge_ca: false,
            authority_key_id: None,
            issuer: Vec::new(),
        };
        let w: Vec<String> = [
            "a.example.com",
            "A.EXAMPLE.COM",
            "example.com",
            "a.b.example.com",
            "0:0:0:0:0:0:0:1",
            "10.0.0.1",
            "10.0.0.2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            i.uncovered(&w),
            vec!["example.com", "a.b.example.com", "10.0.0.2"]
        );
    }

    #[test]
    fn the_listener_decides_which_addresses_are_added() {
        let w = Wanted::for_listener(&["r.example".into()], "127.0.0.1:5000");
        assert_eq!(w.configured, vec!["r.example"]);
        assert!(w.automatic.contains(&"localhost".into()));
        assert!(interface_addresses()
            .iter()
            .all(|a| !w.automatic.contains(&a.to_string())));
        let w = Wanted::for_listener(&[], "0.0.0.0:5000");
        for a in interface_addresses() {
            assert!(w.automatic.contains(&a.to_string()), "{a}");
        }
        let w = Wanted::for_listener(&["10.9.9.9".into()], "[::]:5000");
        assert_eq!(w.configured, vec!["10.9.9.9"]);
    }
}
