//! Docker token authentication (Docker's "token authentication specification"): the edge is its
//! own token server. Tokens are JWTs signed with ES256 by a P-256 key kept in a PEM file (PKCS#8,
//! mode 0600; several edges share the file), whose `kid` is the libtrust key id Distribution
//! computes, and which is published as a JWKS. Claims are Distribution's: `iss`, `sub`, `aud` (the
//! service), `exp`, `nbf`, `iat`, `jti` and `access` (what may be done to which resource).
//! Refresh tokens (for `offline_token` and OAuth2's `refresh_token` grant) are JWTs of the same
//! key for another audience, carrying a fingerprint of the user's htpasswd entry, so a changed
//! password or a removed user ends them.
//!
//! This module is the tokens themselves: the key, issuing, verifying (with a bounded cache of
//! verified tokens, so a request costs a hash rather than an ECDSA check), scopes and what the
//! access rules grant of them. `proxy/token.rs` serves `/token` and checks requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use rand::RngCore;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::access::{Action, Rules, ANONYMOUS};

/// Scopes one token request may ask for; more is a bad request.
pub const MAX_SCOPES: usize = 32;
/// The longest scope accepted (a resource type, a repository name of at most 255 characters and
/// its actions).
const MAX_SCOPE_LEN: usize = 512;
/// The longest token looked at.
const MAX_TOKEN_LEN: usize = 8192;
/// Clock difference tolerated for `nbf` between edges.
const LEEWAY_S: u64 = 30;
/// Verified tokens kept; the cache is emptied when full.
const CACHE_LIMIT: usize = 10_000;

/// Token mode's settings (`[auth]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `service` of challenges and the `aud` of tokens.
    pub service: String,
    /// The `iss` of tokens.
    pub issuer: String,
    /// Lifetime of an access token.
    pub ttl: Duration,
    /// Lifetime of a refresh token.
    pub refresh_ttl: Duration,
    /// The signing key's file.
    pub key: PathBuf,
    /// The realm of challenges; `None`: `<scheme>://<Host>/token` of each request.
    pub realm: Option<String>,
}

/// Why the signing key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the token signing key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the token signing key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token signing key {path} is not usable: {why}. Give a P-256 key in PKCS#8 PEM (`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`), or remove the file to have one generated")]
    Malformed { path: PathBuf, why: String },
}

/// The ES256 key tokens are signed with.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// RFC 4648 base32 without padding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The key id libtrust (and so Distribution) gives a public key: the first 240 bits of the
/// SHA-256 of its SubjectPublicKeyInfo, in base32, in groups of four joined by `:`.
fn libtrust_kid(point: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(P256_SPKI_PREFIX);
    h.update(point);
    let digest = h.finalize();
    let b32 = base32(&digest[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ASCII"))
        .collect::<Vec<_>>()
        .join(":")
}

/// PEM text of a PKCS#8 document.
fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

impl SigningKey {
    /// The key in PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not a P-256 PKCS#8 key ({e})"))?;
        let kid = libtrust_kid(pair.public_key().as_ref());
        Ok(SigningKey { pair, kid, rng })
    }

    /// The key kept in `path`, made (0600) when the file does not exist; true when made now.
    /// Two processes starting at once agree: the file is created exclusively, and the loser
    /// reads the winner's key.
    pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), KeyError> {
        let malformed = |why: String| KeyError::Malformed {
            path: path.to_owned(),
            why,
        };
        for _ in 0..2 {
            match std::fs::read(path) {
                Ok(text) => {
                    warn_if_readable(path);
                    let key = match rustls_pemfile::private_key(&mut text.as_slice()) {
                        Ok(Some(rustls_pki_types::PrivateKeyDer::Pkcs8(k))) => {
                            Self::from_pkcs8(k.secret_pkcs8_der()).map_err(malformed)?
                        }
                        Ok(Some(rustls_pki_types::PrivateKeyDer::Sec1(_))) => {
                            return Err(malformed(
                                "it is a SEC1 \"EC PRIVATE KEY\"; convert it with `openssl pkcs8 -topk8 -nocrypt`".into(),
                            ))
                        }
                        Ok(Some(_)) => return Err(malformed("it is not an EC key".into())),
                        Ok(None) | Err(_) => {
                            return Err(malformed("it holds no PEM private key".into()))
                        }
                    };
                    return Ok((key, false));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(KeyError::Read {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
            let rng = SystemRandom::new();
            let doc =
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|e| malformed(format!("cannot generate a key ({e})")))?;
            match crate::secret::create_private(path, pem(doc.as_ref()).as_bytes()) {
                Ok(()) => {
                    let key = Self::from_pkcs8(doc.as_ref()).map_err(malformed)?;
                    return Ok((key, true));
                }
                // Made by another process in the meantime: read theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(KeyError::Write {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
        Err(malformed("it keeps changing".into()))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key: the uncompressed point `04 || X || Y`.
    pub fn public(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        let p = self.public();
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
            "x": B64.encode(&p[1..33]),
            "y": B64.encode(&p[33..65]),
        })
    }

    /// A compact JWS of `claims`.
    fn sign(&self, claims: &impl Serialize) -> String {
        let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "kid": self.kid });
        let mut out = B64.encode(header.to_string());
        out.push('.');
        out.push_str(&B64.encode(serde_json::to_vec(claims).expect("claims serialize")));
        let sig = self
            .pair
            .sign(&self.rng, out.as_bytes())
            .expect("ECDSA signing does not fail");
        out.push('.');
        out.push_str(&B64.encode(sig.as_ref()));
        out
    }
}

/// A key file others can read is worth a warning: whoever reads it can sign tokens.
fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the token signing key can be read by others than its owner: chmod 600 it");
        }
    }
}

/// One entry of a token's `access`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// A token's claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user; empty for an anonymous token.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Access>,
    /// Refresh tokens: the fingerprint of the user's htpasswd entry when it was issued.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fp: String,
}

impl Claims {
    /// The user the rules know: the subject, or `anonymous`.
    pub fn user(&self) -> &str {
        if self.sub.is_empty() {
            ANONYMOUS
        } else {
            &self.sub
        }
    }

    /// Whether the token grants `action` on the resource.
    pub fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == kind && a.name == name && a.actions.iter().any(|x| x == action || x == "*")
        })
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Malformed,
    /// Not signed by our key (another key, another algorithm, altered).
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
}

impl Invalid {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::BadSignature => "bad_signature",
            Invalid::Expired => "expired",
            Invalid::NotYetValid => "not_yet_valid",
            Invalid::WrongIssuer => "wrong_issuer",
            Invalid::WrongAudience => "wrong_audience",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed bearer token",
            Invalid::BadSignature => "the bearer token was not signed by this registry",
            Invalid::Expired => "the bearer token has expired",
            Invalid::NotYetValid => "the bearer token is not valid yet",
            Invalid::WrongIssuer => "the bearer token was issued by someone else",
            Invalid::WrongAudience => "the bearer token is for another service",
        }
    }
}

/// A token handed out.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_in: u64,
    /// RFC 3339.
    pub issued_at: String,
}

/// The token service: settings, key and the cache of verified tokens.
pub struct Tokens {
    pub settings: Settings,
    key: SigningKey,
    verified: Mutex<HashMap<[u8; 32], Arc<Claims>>>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn jti() -> String {
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

/// The fingerprint of a user's htpasswd entry that a refresh token carries.
pub fn fingerprint(entry: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"registry-edge refresh\0");
    h.update(entry.as_bytes());
    hex::encode(&h.finalize()[..12])
}

impl Tokens {
    pub fn new(settings: Settings, key: SigningKey) -> Tokens {
        Tokens {
            settings,
            key,
            verified: Mutex::new(HashMap::new()),
        }
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The audience of refresh tokens, so one is never taken for an access token.
    fn refresh_audience(&self) -> String {
        format!("{}#refresh", self.settings.service)
    }

    /// An access token for `user` (`None`: anonymous) granting `access`.
    pub fn issue(&self, user: Option<&str>, access: Vec<Access>) -> Issued {
        let now = SystemTime::now();
        let iat = now_s();
        let ttl = self.settings.ttl.as_secs();
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            sub: user.unwrap_or("").to_owned(),
            aud: self.settings.service.clone(),
            exp: iat + ttl,
            nbf: iat,
            iat,
            jti: jti(),
            access,
            fp: String::new(),
        };
        Issued {
            token: self.key.sign(&claims),
            expires_in: ttl,
            issued_at: humantime::format_rfc3339_seconds(now).to_string(),
        }
    }

    /// A refresh token for `user`, whose htpasswd entry has the fingerprint `fp`.
    pub fn refresh_token(&self, user: &str, fp: String) -> String {
        let iat = now_s();
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            sub: user.to_owned(),
            aud: self.refresh_audience(),
            exp: iat + self.settings.refresh_ttl.as_secs(),
            nbf: iat,
            iat,
            jti: jti(),
            access: Vec::new(),
            fp,
        };
        self.key.sign(&claims)
    }

    /// The claims of a signed token, whatever its audience and times.
    fn decode(&self, token: &str) -> Result<Claims, Invalid> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Invalid::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Invalid::Malformed);
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(Invalid::Malformed)?;
        if header.alg != "ES256" || header.kid != self.key.kid {
            return Err(Invalid::BadSignature);
        }
        let sig = B64.decode(s).map_err(|_| Invalid::Malformed)?;
        let signed = &token[..h.len() + 1 + p.len()];
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, self.key.public())
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| Invalid::BadSignature)?;
        B64.decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(Invalid::Malformed)
    }

    fn check(&self, c: &Claims, aud: &str) -> Result<(), Invalid> {
        let now = now_s();
        if c.iss != self.settings.issuer {
            return Err(Invalid::WrongIssuer);
        }
        if c.aud != aud {
            return Err(Invalid::WrongAudience);
        }
        if now >= c.exp {
            return Err(Invalid::Expired);
        }
        if c.nbf > now + LEEWAY_S {
            return Err(Invalid::NotYetValid);
        }
        Ok(())
    }

    /// The claims of a valid access token: signed by our key, ours, for our service, in date.
    /// A token verified before is found by its hash; its times are checked again.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, Invalid> {
        let id: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.verified.lock().expect("token cache").get(&id).cloned();
        let claims = match cached {
            Some(c) => c,
            None => {
                let c = self.decode(token)?;
                self.check(&c, &self.settings.service)?;
                let c = Arc::new(c);
                let mut cache = self.verified.lock().expect("token cache");
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
                cache.insert(id, c.clone());
                c
            }
        };
        self.check(&claims, &self.settings.service)?;
        Ok(claims)
    }

    /// The claims of a valid refresh token (its fingerprint is the caller's to compare).
    pub fn verify_refresh(&self, token: &str) -> Result<Claims, Invalid> {
        let c = self.decode(token)?;
        self.check(&c, &self.refresh_audience())?;
        if c.sub.is_empty() || c.fp.is_empty() {
            return Err(Invalid::Malformed);
        }
        Ok(c)
    }

    /// The JWKS document of the signing key.
    pub fn jwks(&self) -> String {
        serde_json::json!({ "keys": [self.key.jwk()] }).to_string()
    }

    /// A `WWW-Authenticate` value: `Bearer realm=..,service=..[,scope=..][,error=..]`.
    pub fn challenge(&self, realm: &str, scope: &str, error: Option<&str>) -> String {
        let mut c = format!(
            "Bearer realm=\"{realm}\",service=\"{}\"",
            self.settings.service
        );
        if !scope.is_empty() {
            c.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(e) = error {
            c.push_str(&format!(",error=\"{e}\""));
        }
        c
    }
}

/// A requested scope: `type:name:actions` (`repository:team/app:pull,push`,
/// `registry:catalog:*`). A type may carry a class (`repository(plugin)`), which is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// Parses `scope` values (each may hold several scopes separated by spaces), bounded.
pub fn parse_scopes<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<Scope>, String> {
    let mut out = Vec::new();
    for value in values {
        for s in value.split(' ').filter(|s| !s.is_empty()) {
            if out.len() >= MAX_SCOPES {
                return Err(format!("more than {MAX_SCOPES} scopes"));
            }
            out.push(parse_scope(s)?);
        }
    }
    Ok(out)
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    if s.len() > MAX_SCOPE_LEN {
        return Err("a scope is too long".into());
    }
    let bad = || "a scope is `type:name:actions`, e.g. repository:team/app:pull,push".to_owned();
    let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
    let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
    let kind = kind.split_once('(').map_or(kind, |(k, _)| k);
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_lowercase()) || name.is_empty() {
        return Err(bad());
    }
    if kind == "repository" {
        name.parse::<registry_core::name::RepoName>()
            .map_err(|e| format!("scope {s:?}: {e}"))?;
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    {
        return Err(bad());
    }
    let actions: Vec<String> = actions
        .split(',')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if actions
        .iter()
        .any(|a| a.len() > 16 || !a.bytes().all(|b| b.is_ascii_lowercase() || b == b'*'))
    {
        return Err(bad());
    }
    Ok(Scope {
        kind: kind.to_owned(),
        name: name.to_owned(),
        actions,
    })
}

/// What the access rules grant `user` of the requested scopes, now. Resources with nothing
/// granted are left out.
pub fn grant(rules: &Rules, user: &str, scopes: &[Scope]) -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    for s in scopes {
        let granted: Vec<&str> = match s.kind.as_str() {
            "repository" => {
                let mut g = Vec::new();
                for a in &s.actions {
                    let wanted: &[(&str, Action)] = match a.as_str() {
                        "pull" => &[("pull", Action::Pull)],
                        "push" => &[("push", Action::Push)],
                        "delete" => &[("delete", Action::Delete)],
                        "*" => &[
                            ("pull", Action::Pull),
                            ("push", Action::Push),
                            ("delete", Action::Delete),
                        ],
                        _ => &[],
                    };
                    for (name, action) in wanted {
                        if !g.contains(name) && rules.allows(user, &s.name, *action) {
                            g.push(*name);
                        }
                    }
                }
                g
            }
            "registry" if s.name == "catalog" && s.actions.iter().any(|a| a == "*") => {
                if rules.may_list(user) {
                    vec!["*"]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        };
        if granted.is_empty() {
            continue;
        }
        match out
            .iter_mut()
            .find(|a| a.kind == s.kind && a.name == s.name)
        {
            Some(a) => {
                for g in granted {
                    if !a.actions.iter().any(|x| x == g) {
                        a.actions.push(g.to_owned());
                    }
                }
            }
            None => out.push(Access {
                kind: s.kind.clone(),
                name: s.name.clone(),
                actions: granted.into_iter().map(str::to_owned).collect(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(dir: &Path) -> Tokens {
        let (key, created) = SigningKey::load_or_create(&dir.join("auth/token.key")).unwrap();
        assert!(created);
        Tokens::new(
            Settings {
                service: "registry-edge".into(),
                issuer: "registry-edge".into(),
                ttl: Duration::from_secs(300),
                refresh_ttl: Duration::from_secs(3600),
                key: dir.join("auth/token.key"),
                realm: None,
            },
            key,
        )
    }

    #[test]
    fn base32_and_kid_are_libtrusts() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        let kid = libtrust_kid(&[4u8; 65]);
        assert_eq!(kid.len(), 12 * 4 + 11);
        assert!(kid.split(':').all(|g| g.len() == 4));
    }

    #[test]
    fn a_generated_key_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let path = dir.path().join("auth/token.key");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = SigningKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.kid(), t.key().kid());
        assert_eq!(again.public(), t.key().public());
        std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
        let e = SigningKey::load_or_create(&dir.path().join("bad.key"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no PEM private key"), "{e}");
    }

    #[test]
    fn tokens_verify_and_alterations_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let access = vec![Access {
            kind: "repository".into(),
            name: "a".into(),
            actions: vec!["pull".into()],
        }];
        let issued = t.issue(Some("alice"), access.clone());
        let c = t.verify(&issued.token).unwrap();
        assert_eq!(c.user(), "alice");
        assert!(c.grants("repository", "a", "pull"));
        assert!(!c.grants("repository", "b", "pull"));
        assert!(!c.grants("repository", "a", "push"));
        // Cached: the same answer.
        assert_eq!(t.verify(&issued.token).unwrap().jti, c.jti);
        // Claims changed (a wider grant) under the same signature.
        let parts: Vec<&str> = issued.token.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        claims["access"][0]["name"] = "b".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(t.verify(&forged).unwrap_err(), Invalid::BadSignature);
        // `alg: none` and garbage.
        let none = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), parts[1]);
        assert_eq!(t.verify(&none).unwrap_err(), Invalid::BadSignature);
        assert_eq!(t.verify("x.y").unwrap_err(), Invalid::Malformed);
        assert_eq!(t.verify(&"a".repeat(9000)).unwrap_err(), Invalid::Malformed);
        // Another key (another edge's, say) with the same kid claimed.
        let other = tempfile::tempdir().unwrap();
        let t2 = tokens(other.path());
        let theirs = t2.issue(Some("alice"), access);
        assert_eq!(t.verify(&theirs.token).unwrap_err(), Invalid::BadSignature);
        // A refresh token is no access token, and the reverse.
        let r = t.refresh_token("alice", "fp".into());
        assert_eq!(t.verify(&r).unwrap_err(), Invalid::WrongAudience);
        assert_eq!(t.verify_refresh(&r).unwrap().sub, "alice");
        assert_eq!(
            t.verify_refresh(&issued.token).unwrap_err(),
            Invalid::WrongAudience
        );
    }

    #[test]
    fn expired_tokens_fail_even_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let mut c = Claims {
            iss: "registry-edge".into(),
            sub: String::new(),
            aud: "registry-edge".into(),
            exp: now_s() + 1,
            nbf: now_s(),
            iat: now_s(),
            jti: jti(),
            access: Vec::new(),
            fp: String::new(),
        };
        let token = t.key.sign(&c);
        assert_eq!(t.verify(&token).unwrap().user(), ANONYMOUS);
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(t.verify(&token).unwrap_err(), Invalid::Expired);
        c.exp = now_s() + 100;
        c.nbf = now_s() + 100;
        assert_eq!(t.verify(&t.key.sign(&c)).unwrap_err(), Invalid::NotYetValid);
        c.nbf = now_s();
        c.iss = "someone".into();
        assert_eq!(t.verify(&t.key.sign(&c)).unwrap_err(), Invalid::WrongIssuer);
    }

    #[test]
    fn scopes_parse_bounded() {
        let s = parse_scopes(["repository:team/app:pull,push registry:catalog:*"]).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "team/app");
        assert_eq!(s[0].actions, vec!["pull", "push"]);
        assert_eq!(s[1].kind, "registry");
        let p = parse_scopes(["repository(plugin):x/y:pull"]).unwrap();
        assert_eq!(p[0].kind, "repository");
        for bad in [
            "repository:UPPER:pull",
            "repository::pull",
            "nocolon",
            "repository:a:pu\"ll",
            "repository:a\"b:pull",
        ] {
            assert!(parse_scopes([bad]).is_err(), "{bad}");
        }
        let many = vec!["repository:a:pull"; MAX_SCOPES + 1];
        assert!(parse_scopes(many).is_err());
        assert!(parse_scopes([&*format!("repository:{}:pull", "a".repeat(600))]).is_err());
    }

    #[test]
    fn grants_follow_the_rules() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let rules = Rules::new(
            Default::default(),
            vec![
                (s(&["public/*"]), s(&[ANONYMOUS, "*"]), vec![], s(&["pull"])),
                (s(&["*"]), s(&["ci"]), vec![], s(&["pull", "push"])),
            ],
        )
        .unwrap();
        let scopes = parse_scopes([
            "repository:public/x:pull,push repository:private:pull registry:catalog:*",
        ])
        .unwrap();
        let anon = grant(&rules, ANONYMOUS, &scopes);
        assert_eq!(
            anon,
            vec![
                Access {
                    kind: "repository".into(),
                    name: "public/x".into(),
                    actions: vec!["pull".into()]
                },
                Access {
                    kind: "registry".into(),
                    name: "catalog".into(),
                    actions: vec!["*".into()]
                }
            ]
        );
        let ci = grant(&rules, "ci", &scopes);
        assert_eq!(ci[0].actions, vec!["pull", "push"]);
        assert_eq!(ci[1].name, "private");
        let star = grant(&rules, "ci", &parse_scopes(["repository:x:*"]).unwrap());
        assert_eq!(star[0].actions, vec!["pull", "push"]);
        // With no rules, every user may do everything, and anonymous nothing.
        let open = Rules::default();
        assert!(grant(&open, ANONYMOUS, &scopes).is_empty());
        assert_eq!(grant(&open, "bob", &scopes).len(), 3);
    }
}
