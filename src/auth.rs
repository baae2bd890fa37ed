//! Basic authentication against an `htpasswd` file of bcrypt hashes (`htpasswd -Bbn`).
//!
//! bcrypt is slow on purpose (tens of milliseconds), and clients send credentials with every
//! request, so verified credentials are cached: the cache holds a keyed SHA-256 of user, password
//! and the stored hash (never the password itself), under a key random to this process. A changed
//! password or file changes the stored hash, so old entries simply stop matching. An unknown user
//! costs one bcrypt run against a dummy hash, like a wrong password.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest as _, Sha256};

/// Most verified credentials kept; the cache is emptied when full.
const CACHE_LIMIT: usize = 10_000;

/// A problem with the htpasswd file, naming file and line.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read htpasswd file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: no users")]
    Empty { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The users of an htpasswd file.
#[derive(Debug, Clone)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl Htpasswd {
    /// Parses htpasswd text. Only bcrypt (`$2y$`, `$2b$`, `$2a$`) is accepted.
    pub fn parse(text: &str, path: &Path) -> Result<Htpasswd, AuthError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let err = |message: String| AuthError::Line {
                path: path.to_owned(),
                line: i + 1,
                message,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected user:hash".into()))?;
            if user.is_empty() {
                return Err(err("empty user name".into()));
            }
            let kind = hash.get(..4).unwrap_or(hash);
            if !matches!(kind, "$2y$" | "$2b$" | "$2a$") {
                let what = if hash.starts_with("$apr1$") {
                    "an MD5 (apr1) hash"
                } else if hash.starts_with("{SHA}") {
                    "a SHA-1 hash"
                } else if hash.starts_with('$') {
                    "an unsupported hash"
                } else {
                    "a crypt or plain-text password"
                };
                return Err(err(format!(
                    "user {user:?} has {what}; only bcrypt is accepted (create it with `htpasswd -B` or `registry-edge passwd`)"
                )));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(err(format!("user {user:?}: malformed bcrypt hash")));
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(err(format!("user {user:?} appears twice")));
            }
        }
        if users.is_empty() {
            return Err(AuthError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Htpasswd { users })
    }

    pub fn load(path: &Path) -> Result<Htpasswd, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// One bcrypt line for `user`, as `htpasswd -B` writes it.
pub fn hash_line(user: &str, password: &str, cost: u32) -> Result<String, bcrypt::BcryptError> {
    let h = bcrypt::hash_with_result(password, cost)?;
    Ok(format!(
        "{user}:{}",
        h.format_for_version(bcrypt::Version::TwoY)
    ))
}

/// Creates `path` with `user` and a random password; returns the password.
pub fn create_first_user(path: &Path, user: &str, cost: u32) -> Result<String, AuthError> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut raw);
    let password = URL_SAFE_NO_PAD.encode(raw);
    let line = hash_line(user, &password, cost).map_err(|e| AuthError::Write {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    let err = |source| AuthError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(format!("{line}\n").as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(password)
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header.
    Missing,
    /// Not `Basic base64(user:password)`.
    Malformed,
    /// Unknown user or wrong password (indistinguishable to the client).
    Invalid,
}

/// A verified request's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User(pub String);

/// The authenticator: the current htpasswd users and the cache of verified credentials.
pub struct Authenticator {
    users: RwLock<Arc<Htpasswd>>,
    cache: Mutex<HashSet<[u8; 32]>>,
    cache_key: [u8; 32],
    /// Verified against when the user is unknown, so that costs one bcrypt run too.
    dummy_hash: String,
}

/// Whether a verification was answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Miss,
}

/// Splits `Basic base64(user:password)`.
pub fn parse_basic(header: &[u8]) -> Result<(String, String), Denied> {
    let s = std::str::from_utf8(header)
        .map_err(|_| Denied::Malformed)?
        .trim();
    let (scheme, rest) = s.split_once(' ').ok_or(Denied::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Denied::Malformed);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| Denied::Malformed)?;
    let text = String::from_utf8(raw).map_err(|_| Denied::Malformed)?;
    let (user, password) = text.split_once(':').ok_or(Denied::Malformed)?;
    if user.is_empty() {
        return Err(Denied::Malformed);
    }
    Ok((user.to_owned(), password.to_owned()))
}

impl Authenticator {
    pub fn new(users: Htpasswd) -> Authenticator {
        let mut cache_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut cache_key);
        // Same cost as the file's first hash, so an unknown user takes as long as a known one.
        let cost = users
            .users
            .values()
            .next()
            .and_then(|h| h.parse::<bcrypt::HashParts>().ok())
            .map_or(10, |p| p.get_cost());
        let dummy_hash = bcrypt::hash("not a password", cost).expect("bcrypt of a constant");
        Authenticator {
            users: RwLock::new(Arc::new(users)),
            cache: Mutex::new(HashSet::new()),
            cache_key,
            dummy_hash,
        }
    }

    /// Replaces the users (e.g. after the file changed). Cached entries of changed or removed
    /// users no longer match; the cache is cleared anyway to free them.
    pub fn replace(&self, users: Htpasswd) {
        *self.users.write().expect("users lock") = Arc::new(users);
        self.cache.lock().expect("cache lock").clear();
    }

    fn cache_entry(&self, user: &str, password: &str, hash: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        for part in [user, password, hash] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// Checks an `Authorization` header value. bcrypt runs on a blocking thread.
    pub async fn verify(&self, header: Option<&[u8]>) -> (Result<User, Denied>, CacheUse) {
        let Some(header) = header else {
            return (Err(Denied::Missing), CacheUse::Miss);
        };
        let (user, password) = match parse_basic(header) {
            Ok(c) => c,
            Err(d) => return (Err(d), CacheUse::Miss),
        };
        let users = self.users.read().expect("users lock").clone();
        let (hash, known) = match users.users.get(&user) {
            Some(h) => (h.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let entry = self.cache_entry(&user, &password, &hash);
        if known && self.cache.lock().expect("cache lock").contains(&entry) {
            return (Ok(User(user)), CacheUse::Hit);
        }
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if !(ok && known) {
            return (Err(Denied::Invalid), CacheUse::Miss);
        }
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(entry);
        (Ok(User(user)), CacheUse::Miss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn basic(u: &str, p: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))).into_bytes()
    }

    #[tokio::test]
    async fn verifies_and_caches() {
        let line = hash_line("alice", "s3cret", 4).unwrap();
        assert!(line.starts_with("alice:$2y$04$"));
        let a = Authenticator::new(Htpasswd::parse(&line, Path::new("h")).unwrap());
        let (r, c) = a.verify(Some(&basic("alice", "s3cret"))).await;
        assert_eq!((r, c), (Ok(User("alice".into())), CacheUse::Miss));
        let (r, c) = a.verify(Some(&basic("alice", "s3cret"))).await;
        assert_eq!((r, c), (Ok(User("alice".into())), CacheUse::Hit));
        assert_eq!(
            a.verify(Some(&basic("alice", "wrong"))).await.0,
            Err(Denied::Invalid)
        );
        assert_eq!(
            a.verify(Some(&basic("bob", "s3cret"))).await.0,
            Err(Denied::Invalid)
        );
        assert_eq!(a.verify(None).await.0, Err(Denied::Missing));
        for bad in [&b"Bearer x"[..], b"Basic !!!", b"Basic", b"Basic Zm9v"] {
            assert_eq!(a.verify(Some(bad)).await.0, Err(Denied::Malformed));
        }
        // A changed password invalidates the cached credential.
        a.replace(Htpasswd::parse(&hash_line("alice", "new", 4).unwrap(), Path::new("h")).unwrap());
        assert_eq!(
            a.verify(Some(&basic("alice", "s3cret"))).await.0,
            Err(Denied::Invalid)
        );
        assert!(a.verify(Some(&basic("alice", "new"))).await.0.is_ok());
    }

    #[test]
    fn rejects_other_hashes_naming_the_line() {
        let p = Path::new("auth/htpasswd");
        for (text, want) in [
            ("\nbob:$apr1$x$y\n", "auth/htpasswd:2"),
            ("bob:{SHA}abc", "SHA-1"),
            ("bob:plain", "plain-text"),
            ("nocolon", "user:hash"),
            ("bob:$2y$10$short", "malformed"),
            ("# only a comment\n", "no users"),
        ] {
            let e = Htpasswd::parse(text, p).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let ok = hash_line("a", "b", 4).unwrap().replace("$2y$", "$2b$");
        assert!(Htpasswd::parse(&ok, p).is_ok());
        let dup = format!("{ok}\n{ok}\n");
        assert!(Htpasswd::parse(&dup, p)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }
}
