//! The shared secret: the key that signs what the edge hands out and must accept back from any
//! of its processes (the web UI's session cookies today). It is `[server] secret` (or
//! registry:2's `REGISTRY_HTTP_SECRET`) when set, so several edges behind one balancer accept
//! each other's cookies; otherwise a random key generated once and kept in `[server]
//! secret_file` (mode 0600), so sessions survive a restart.

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The shortest configured secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// Why the secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the secret file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret file {path} holds no key of 64 hex digits; remove it to have a new one made (every session ends)")]
    Malformed { path: PathBuf },
}

/// A signing key. Each use signs under its own purpose, so a value signed for one use is never
/// accepted as another.
pub struct Secret {
    key: [u8; 32],
    /// Where it came from, for the start log (never the key).
    pub origin: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// The configured secret (stretched to a key by SHA-256).
    pub fn from_configured(secret: &str) -> Secret {
        let mut h = Sha256::new();
        h.update(b"registry-edge shared secret\0");
        h.update(secret.as_bytes());
        Secret {
            key: h.finalize().into(),
            origin: "[server] secret".into(),
        }
    }

    /// The key kept in `path`, made (0600) when the file does not exist. Two processes starting
    /// at once agree: the file is created exclusively, and the loser reads the winner's key.
    pub fn from_file(path: &Path) -> Result<Secret, SecretError> {
        let origin = format!("{} (generated)", path.display());
        for _ in 0..2 {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let mut key = [0u8; 32];
                    hex::decode_to_slice(text.trim(), &mut key).map_err(|_| {
                        SecretError::Malformed {
                            path: path.to_owned(),
                        }
                    })?;
                    return Ok(Secret { key, origin });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SecretError::Read {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
            let mut key = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            match create_private(path, format!("{}\n", hex::encode(key)).as_bytes()) {
                Ok(()) => return Ok(Secret { key, origin }),
                // Made by another process in the meantime: read theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(SecretError::Write {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
        Err(SecretError::Malformed {
            path: path.to_owned(),
        })
    }

    /// A MAC of `parts` for `purpose` (each part length-prefixed, so parts cannot be shifted).
    pub fn sign(&self, purpose: &str, parts: &[&[u8]]) -> [u8; 32] {
        self.mac(purpose, parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `parts` for `purpose`, compared in constant time.
    pub fn verify(&self, purpose: &str, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.mac(purpose, parts).verify_slice(tag).is_ok()
    }

    fn mac(&self, purpose: &str, parts: &[&[u8]]) -> HmacSha256 {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(purpose.as_bytes());
        m.update(&[0]);
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m
    }
}

/// Creates `path` with mode 0600 and writes `data`; fails when it exists.
pub(crate) fn create_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth/secret");
        let a = Secret::from_file(&p).unwrap();
        let b = Secret::from_file(&p).unwrap();
        assert_eq!(a.key, b.key);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&p, "not hex").unwrap();
        assert!(matches!(
            Secret::from_file(&p),
            Err(SecretError::Malformed { .. })
        ));
    }

    #[test]
    fn signatures_are_bound_to_purpose_key_and_parts() {
        let a = Secret::from_configured("0123456789abcdef");
        let b = Secret::from_configured("0123456789abcdeX");
        let tag = a.sign("session", &[b"alice", b"1"]);
        assert!(a.verify("session", &[b"alice", b"1"], &tag));
        assert!(!a.verify("csrf", &[b"alice", b"1"], &tag));
        assert!(!a.verify("session", &[b"alice1", b""], &tag));
        assert!(!b.verify("session", &[b"alice", b"1"], &tag));
        assert!(!a.verify("session", &[b"alice", b"1"], &tag[..31]));
    }
}
