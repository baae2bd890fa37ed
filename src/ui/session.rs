//! UI sessions and CSRF tokens, in cookies signed with the shared secret, so that any edge
//! process with the same secret accepts them and a restart keeps them.
//!
//! - The session cookie (`__Host-regedge`, `HttpOnly; Secure; SameSite=Strict`) holds the user
//!   name, the expiry, the session's CSRF token and a fingerprint of the user's htpasswd entry
//!   (a changed password or a removed user ends every session of that user), all under a MAC.
//! - Every form that changes something carries the session's CSRF token; the login form, which
//!   has no session yet, carries a token also set in its own short-lived cookie.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// The session cookie. `__Host-` makes the browser insist on `Secure`, `Path=/` and no domain.
pub const SESSION_COOKIE: &str = "__Host-regedge";
/// The login form's CSRF cookie.
pub const LOGIN_COOKIE: &str = "__Host-regedge-login";
/// The language choice (not secret, not signed).
pub const LANG_COOKIE: &str = "regedge-lang";
/// How long a login form stays valid.
pub const LOGIN_FORM_TTL: Duration = Duration::from_secs(3600);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const PURPOSE: &str = "ui-session-v1";

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiSession {
    pub user: String,
    /// Seconds since the epoch.
    pub expires: u64,
    /// The token every state-changing form of this session carries.
    pub csrf: String,
    /// From the user's htpasswd entry when the session began.
    pub fingerprint: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random token (128 bits, URL-safe).
pub fn token() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    B64.encode(b)
}

/// Whether two tokens are equal, in constant time.
pub fn same_token(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl UiSession {
    pub fn new(user: &str, fingerprint: &str, ttl: Duration) -> UiSession {
        UiSession {
            user: user.to_owned(),
            expires: now() + ttl.as_secs(),
            csrf: token(),
            fingerprint: fingerprint.to_owned(),
        }
    }

    /// The cookie value: `user.expires.csrf.fingerprint.mac`, each part URL-safe.
    pub fn encode(&self, secret: &Secret) -> String {
        let user = B64.encode(self.user.as_bytes());
        let expires = self.expires.to_string();
        let parts: [&[u8]; 4] = [
            user.as_bytes(),
            expires.as_bytes(),
            self.csrf.as_bytes(),
            self.fingerprint.as_bytes(),
        ];
        let mac = B64.encode(secret.sign(PURPOSE, &parts));
        format!("{user}.{expires}.{}.{}.{mac}", self.csrf, self.fingerprint)
    }

    /// The session in a cookie value, when its MAC is right and it has not expired.
    pub fn decode(value: &str, secret: &Secret) -> Option<UiSession> {
        if value.len() > 1024 {
            return None;
        }
        let mut it = value.split('.');
        let (user, expires, csrf, fingerprint, mac) =
            (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        let tag = B64.decode(mac).ok()?;
        let parts: [&[u8]; 4] = [
            user.as_bytes(),
            expires.as_bytes(),
            csrf.as_bytes(),
            fingerprint.as_bytes(),
        ];
        if !secret.verify(PURPOSE, &parts, &tag) {
            return None;
        }
        let expires: u64 = expires.parse().ok()?;
        if expires <= now() {
            return None;
        }
        Some(UiSession {
            user: String::from_utf8(B64.decode(user).ok()?).ok()?,
            expires,
            csrf: csrf.to_owned(),
            fingerprint: fingerprint.to_owned(),
        })
    }

    /// The `Set-Cookie` value that starts this session in the browser.
    pub fn set_cookie(&self, secret: &Secret) -> String {
        let max_age = self.expires.saturating_sub(now());
        cookie(SESSION_COOKIE, &self.encode(secret), max_age)
    }
}

/// A `Set-Cookie` value for one of the UI's cookies (`Max-Age=0` removes it).
pub fn cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .take(64)
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_survives_encoding_and_nothing_else_does() {
        let secret = Secret::from_configured("a secret of some length");
        let s = UiSession::new("alice", "fp", Duration::from_secs(60));
        let v = s.encode(&secret);
        assert_eq!(UiSession::decode(&v, &secret), Some(s.clone()));
        // Another user's name with the same MAC, a longer expiry, another key: refused.
        let forged = v.replacen(&B64.encode("alice"), &B64.encode("admin"), 1);
        assert_eq!(UiSession::decode(&forged, &secret), None);
        let later = v.replacen(&s.expires.to_string(), &(s.expires + 9999).to_string(), 1);
        assert_eq!(UiSession::decode(&later, &secret), None);
        let other = Secret::from_configured("another secret of some length");
        assert_eq!(UiSession::decode(&v, &other), None);
        let expired = UiSession {
            expires: now() - 1,
            ..s
        };
        assert_eq!(UiSession::decode(&expired.encode(&secret), &secret), None);
        assert_eq!(UiSession::decode("a.b.c", &secret), None);
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = "a=1; __Host-regedge=xyz; regedge-lang=zh-CN";
        assert_eq!(cookie_value(h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie_value(h, LANG_COOKIE), Some("zh-CN"));
        assert_eq!(cookie_value(h, "b"), None);
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("", ""));
    }
}
