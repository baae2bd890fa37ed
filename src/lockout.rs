//! Slowing down password guessing: after `max_failures` failed logins within `window` from one
//! client address (or `max_failures_per_user` for one user name, from anywhere), further attempts
//! get 429 for `base_delay`, doubling with each further block up to `max_delay`. A success clears
//! the address and the user. Other clients are unaffected.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept per table before stale ones are dropped.
const MAX_ENTRIES: usize = 100_000;

/// The lockout settings.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_failures: u32,
    pub max_failures_per_user: u32,
    pub window: Duration,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    first: Instant,
    blocked_until: Option<Instant>,
    blocks: u32,
}

struct Table<K> {
    entries: Mutex<HashMap<K, Entry>>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new() -> Self {
        Table {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn blocked(&self, k: &K, now: Instant) -> Option<Duration> {
        let m = self.entries.lock().expect("lockout lock");
        m.get(k)?
            .blocked_until
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    fn fail(&self, k: &K, limit: u32, p: &Policy, now: Instant) {
        if limit == 0 {
            return;
        }
        let mut m = self.entries.lock().expect("lockout lock");
        if m.len() >= MAX_ENTRIES {
            let keep = p.window.max(p.max_delay);
            m.retain(|_, e| now.duration_since(e.first) < keep);
        }
        let e = m.entry(k.clone()).or_insert(Entry {
            failures: 0,
            first: now,
            blocked_until: None,
            blocks: 0,
        });
        if now.duration_since(e.first) > p.window {
            e.failures = 0;
            e.first = now;
        }
        e.failures += 1;
        if e.failures >= limit {
            let factor = 1u32.checked_shl(e.blocks.min(20)).unwrap_or(u32::MAX);
            let delay = p.base_delay.saturating_mul(factor).min(p.max_delay);
            e.blocked_until = Some(now + delay);
            e.blocks += 1;
            e.failures = 0;
            e.first = now;
        }
    }

    fn clear(&self, k: &K) {
        self.entries.lock().expect("lockout lock").remove(k);
    }
}

/// Failed-login bookkeeping by client address and by user name.
pub struct Lockout {
    policy: Policy,
    by_ip: Table<IpAddr>,
    by_user: Table<String>,
}

impl Lockout {
    pub fn new(policy: Policy) -> Lockout {
        Lockout {
            policy,
            by_ip: Table::new(),
            by_user: Table::new(),
        }
    }

    /// How long `ip` (or `user`) must still wait, if blocked.
    pub fn blocked(&self, ip: Option<IpAddr>, user: Option<&str>) -> Option<Duration> {
        let now = Instant::now();
        let a = ip.and_then(|ip| self.by_ip.blocked(&ip, now));
        let b = user.and_then(|u| self.by_user.blocked(&u.to_owned(), now));
        a.max(b)
    }

    pub fn failure(&self, ip: Option<IpAddr>, user: Option<&str>) {
        let now = Instant::now();
        if let Some(ip) = ip {
            self.by_ip
                .fail(&ip, self.policy.max_failures, &self.policy, now);
        }
        if let Some(u) = user {
            self.by_user.fail(
                &u.to_owned(),
                self.policy.max_failures_per_user,
                &self.policy,
                now,
            );
        }
    }

    pub fn success(&self, ip: Option<IpAddr>, user: &str) {
        if let Some(ip) = ip {
            self.by_ip.clear(&ip);
        }
        self.by_user.clear(&user.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_failures_and_grows() {
        let l = Lockout::new(Policy {
            max_failures: 3,
            max_failures_per_user: 100,
            window: Duration::from_secs(60),
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(25),
        });
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        for _ in 0..2 {
            l.failure(Some(a), Some("x"));
        }
        assert!(l.blocked(Some(a), None).is_none());
        l.failure(Some(a), Some("x"));
        let d = l.blocked(Some(a), None).unwrap();
        assert!(d > Duration::from_secs(9) && d <= Duration::from_secs(10));
        assert!(
            l.blocked(Some(b), None).is_none(),
            "another client is unaffected"
        );
        for _ in 0..3 {
            l.failure(Some(a), Some("x"));
        }
        assert!(l.blocked(Some(a), None).unwrap() > Duration::from_secs(19));
        for _ in 0..3 {
            l.failure(Some(a), Some("x"));
        }
        assert!(
            l.blocked(Some(a), None).unwrap() <= Duration::from_secs(25),
            "capped"
        );
        l.success(Some(a), "x");
        assert!(l.blocked(Some(a), None).is_none());
    }
}
