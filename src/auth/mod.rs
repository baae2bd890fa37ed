//! Basic authentication against an `htpasswd` file of bcrypt hashes (`htpasswd -Bbn`).
//!
//! bcrypt is slow on purpose (tens of milliseconds), and clients send credentials with every
//! request, so verified credentials are cached: the cache holds a keyed SHA-256 of user, password
//! and the stored hash (never the password itself), under a key random to this process. A changed
//! password or file changes the stored hash, so old entries simply stop matching. An unknown user
//! costs one bcrypt run against a decoy hash at the cost most users have, like a wrong password.
//! bcrypt runs on a pool of its own threads with a bounded queue, so a burst of guesses cannot
//! take the CPU from requests whose credentials are cached.

pub mod token;

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
            if user == crate::access::ANONYMOUS {
                return Err(err(format!(
                    "the user name {user:?} is reserved for clients that do not log in; rename the user"
                )));
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
    /// No `Authorization` header, or empty credentials (what podman and skopeo send before a
    /// login): a probe, not an attempt.
    Missing,
    /// Not `Basic base64(user:password)`.
    Malformed,
    /// Unknown user or wrong password (indistinguishable to the client).
    Invalid,
}

/// A verified request's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User(pub String);

/// The password checks waiting or running exceed the pool's queue: try again shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Threads that run bcrypt, apart from the threads that serve requests, so a burst of password
/// checks never stalls requests whose credentials are cached. Half the cores, at least one.
fn bcrypt_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Password checks that may wait for a bcrypt thread; beyond that they are refused at once.
const BCRYPT_QUEUE: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

/// A small pool of threads for bcrypt with a bounded queue.
struct BcryptPool {
    tx: std::sync::mpsc::SyncSender<Job>,
}

impl BcryptPool {
    fn new(threads: usize, queue: usize) -> BcryptPool {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a bcrypt thread");
            }
        }
        BcryptPool { tx }
    }

    /// Runs `verify(password, hash)` on the pool.
    async fn verify(&self, password: String, hash: String) -> Result<bool, Busy> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(bcrypt::verify(password, &hash).unwrap_or(false));
        });
        self.tx.try_send(job).map_err(|_| Busy)?;
        crate::metrics::BCRYPT_QUEUED.inc();
        let r = rx.await.unwrap_or(false);
        crate::metrics::BCRYPT_QUEUED.dec();
        Ok(r)
    }
}

/// The authenticator: the current htpasswd users and the cache of verified credentials.
pub struct Authenticator {
    users: RwLock<Arc<Users>>,
    cache: Mutex<HashSet<[u8; 32]>>,
    cache_key: [u8; 32],
    pool: BcryptPool,
}

/// The users, and the decoy hash an unknown user is checked against.
struct Users {
    file: Htpasswd,
    /// At the cost most users have, so an unknown user takes as long as a typical known one.
    dummy_hash: String,
}

impl Users {
    fn new(file: Htpasswd) -> Users {
        let mut costs: HashMap<u32, usize> = HashMap::new();
        for h in file.users.values() {
            if let Ok(p) = h.parse::<bcrypt::HashParts>() {
                *costs.entry(p.get_cost()).or_default() += 1;
            }
        }
        let cost = costs
            .into_iter()
            .max_by_key(|(cost, n)| (*n, std::cmp::Reverse(*cost)))
            .map_or(bcrypt::DEFAULT_COST, |(c, _)| c);
        let dummy_hash = bcrypt::hash("not a password", cost).expect("bcrypt of a constant");
        Users { file, dummy_hash }
    }
}

/// Splits `Basic base64(user:password)`. Empty credentials (`Basic Og==`) are no credentials.
pub fn parse_basic(header: &[u8]) -> Result<(String, String), Denied> {
    let s = std::str::from_utf8(header)
        .map_err(|_| Denied::Malformed)?
        .trim();
    let (scheme, rest) = s.split_once(' ').ok_or(Denied::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Denied::Malformed);
    }
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(Denied::Missing);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .map_err(|_| Denied::Malformed)?;
    let text = String::from_utf8(raw).map_err(|_| Denied::Malformed)?;
    let (user, password) = text.split_once(':').ok_or(Denied::Malformed)?;
    if user.is_empty() {
        return Err(if password.is_empty() {
            Denied::Missing
        } else {
            Denied::Malformed
        });
    }
    Ok((user.to_owned(), password.to_owned()))
}

impl Authenticator {
    pub fn new(users: Htpasswd) -> Authenticator {
        Self::with_pool(users, bcrypt_threads(), BCRYPT_QUEUE)
    }

    fn with_pool(users: Htpasswd, threads: usize, queue: usize) -> Authenticator {
        let mut cache_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut cache_key);
        Authenticator {
            users: RwLock::new(Arc::new(Users::new(users))),
            cache: Mutex::new(HashSet::new()),
            cache_key,
            pool: BcryptPool::new(threads, queue),
        }
    }

    /// Replaces the users (e.g. after the file changed). Cached entries of changed or removed
    /// users no longer match; the cache is cleared anyway to free them.
    pub fn replace(&self, users: Htpasswd) {
        *self.users.write().expect("users lock") = Arc::new(Users::new(users));
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

    /// The user's htpasswd entry (its bcrypt hash), for sessions that must end when it changes.
    pub fn entry(&self, user: &str) -> Option<String> {
        let users = self.users.read().expect("users lock").clone();
        users.file.users.get(user).cloned()
    }

    /// The user, when these exact credentials were verified before (no bcrypt).
    pub fn cached(&self, user: &str, password: &str) -> Option<User> {
        let users = self.users.read().expect("users lock").clone();
        let hash = users.file.users.get(user)?;
        let entry = self.cache_entry(user, password, hash);
        self.cache
            .lock()
            .expect("cache lock")
            .contains(&entry)
            .then(|| User(user.to_owned()))
    }

    /// Checks a password with bcrypt on the pool (an unknown user against the decoy hash).
    pub async fn check(&self, user: &str, password: &str) -> Result<Result<User, Denied>, Busy> {
        let users = self.users.read().expect("users lock").clone();
        let (hash, known) = match users.file.users.get(user) {
            Some(h) => (h.clone(), true),
            None => (users.dummy_hash.clone(), false),
        };
        let ok = self.pool.verify(password.to_owned(), hash.clone()).await?;
        if !(ok && known) {
            return Ok(Err(Denied::Invalid));
        }
        let entry = self.cache_entry(user, password, &hash);
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(entry);
        Ok(Ok(User(user.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn basic(u: &str, p: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))).into_bytes()
    }

    /// Whether a verification was answered from the cache.
    #[derive(Debug, PartialEq)]
    enum CacheUse {
        Hit,
        Miss,
    }

    /// A header checked as the proxy checks it: parsed, then the cache, then bcrypt.
    async fn verify(a: &Authenticator, header: Option<&[u8]>) -> (Result<User, Denied>, CacheUse) {
        let parsed = header.map_or(Err(Denied::Missing), parse_basic);
        let (user, password) = match parsed {
            Ok(c) => c,
            Err(d) => return (Err(d), CacheUse::Miss),
        };
        if let Some(u) = a.cached(&user, &password) {
            return (Ok(u), CacheUse::Hit);
        }
        (
            a.check(&user, &password).await.expect("pool not busy"),
            CacheUse::Miss,
        )
    }

    #[tokio::test]
    async fn verifies_and_caches() {
        let line = hash_line("alice", "s3cret", 4).unwrap();
        assert!(line.starts_with("alice:$2y$04$"));
        let a = Authenticator::new(Htpasswd::parse(&line, Path::new("h")).unwrap());
        let (r, c) = verify(&a, Some(&basic("alice", "s3cret"))).await;
        assert_eq!((r, c), (Ok(User("alice".into())), CacheUse::Miss));
        let (r, c) = verify(&a, Some(&basic("alice", "s3cret"))).await;
        assert_eq!((r, c), (Ok(User("alice".into())), CacheUse::Hit));
        assert_eq!(
            verify(&a, Some(&basic("alice", "wrong"))).await.0,
            Err(Denied::Invalid)
        );
        assert_eq!(
            verify(&a, Some(&basic("bob", "s3cret"))).await.0,
            Err(Denied::Invalid)
        );
        assert_eq!(verify(&a, None).await.0, Err(Denied::Missing));
        for bad in [
            &b"Bearer x"[..],
            b"Basic !!!",
            b"Basic",
            b"Basic Zm9v",
            b"Basic OnB3",
        ] {
            assert_eq!(
                verify(&a, Some(bad)).await.0,
                Err(Denied::Malformed),
                "{bad:?}"
            );
        }
        // podman and skopeo send empty credentials before a login: that is no credentials.
        for none in [&b"Basic Og=="[..], b"basic Og=="] {
            assert_eq!(
                verify(&a, Some(none)).await.0,
                Err(Denied::Missing),
                "{none:?}"
            );
        }
        // A changed password invalidates the cached credential.
        a.replace(Htpasswd::parse(&hash_line("alice", "new", 4).unwrap(), Path::new("h")).unwrap());
        assert_eq!(
            verify(&a, Some(&basic("alice", "s3cret"))).await.0,
            Err(Denied::Invalid)
        );
        assert!(verify(&a, Some(&basic("alice", "new"))).await.0.is_ok());
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
            ("anonymous:$2y$05$abc", "reserved"),
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
