//! Slowing down password guessing.
//!
//! - **Per client address** (IPv6 by its /64): after `max_failures` failed logins within
//!   `window`, further attempts get 429 for `base_delay`, doubling with each further block up to
//!   `max_delay`. An attempt is *reserved* before its password is checked, so a burst of
//!   simultaneous guesses cannot all slip past the count: failures plus checks in flight never
//!   exceed the limit.
//! - **Per user name**, from anywhere: after `max_failures_per_user` failures the user's checks
//!   are *slowed* (each waits `base_delay`), never refused, so an attacker spreading guesses over
//!   many addresses cannot lock the real user out. A correct password from an address that is not
//!   blocked always succeeds.
//! - A success clears the address and the user. Other clients are unaffected.
//!
//! The tables are bounded: user names are kept as a SHA-256 (longer names are refused before
//! they get here, see [`MAX_USER_LEN`]), and each table holds at most `MAX_ENTRIES` keys.
//! Making room never evicts an active block; when every entry is an active block, new keys go
//! unrecorded (the global bound on password checks still applies) and a metric counts them.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Entries kept per table.
const MAX_ENTRIES: usize = 100_000;
/// Password checks one address may have in flight at once, whatever the policy.
const MAX_PENDING_PER_ADDRESS: u32 = 4;
/// The longest user name that is checked at all; longer ones are refused unread.
pub const MAX_USER_LEN: usize = 256;
/// What a client is told to wait when its address has as many checks in flight as it may.
const BUSY_WAIT: Duration = Duration::from_secs(1);

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
    pending: u32,
    first: Instant,
    blocked_until: Option<Instant>,
    blocks: u32,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            failures: 0,
            pending: 0,
            first: now,
            blocked_until: None,
            blocks: 0,
        }
    }

    fn blocked(&self, now: Instant) -> Option<Duration> {
        self.blocked_until
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }
}

struct Table<K> {
    /// The metric label: `address` or `user`.
    name: &'static str,
    entries: Mutex<HashMap<K, Entry>>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(name: &'static str) -> Self {
        Table {
            name,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn gauge(&self, m: &HashMap<K, Entry>) {
        crate::metrics::LOCKOUT_ENTRIES
            .with_label_values(&[self.name])
            .set(m.len() as i64);
    }

    /// The entry of `k`, made room for if need be; `None` when the table is full of active
    /// blocks and checks in flight.
    fn entry<'m>(
        m: &'m mut HashMap<K, Entry>,
        k: &K,
        p: &Policy,
        now: Instant,
    ) -> Option<&'m mut Entry> {
        if !m.contains_key(k) && m.len() >= MAX_ENTRIES {
            // Forget what no longer matters: failures outside the window, expired blocks.
            m.retain(|_, e| {
                e.pending > 0
                    || e.blocked(now).is_some()
                    || now.duration_since(e.first) < p.window.min(p.max_delay)
            });
            if m.len() >= MAX_ENTRIES {
                // Then counts below a block, but never an active block.
                m.retain(|_, e| e.pending > 0 || e.blocked(now).is_some());
            }
            if m.len() >= MAX_ENTRIES {
                crate::metrics::LOCKOUT_UNTRACKED.inc();
                return None;
            }
        }
        Some(m.entry(k.clone()).or_insert_with(|| Entry::new(now)))
    }

    fn blocked(&self, k: &K, now: Instant) -> Option<Duration> {
        let m = self.entries.lock().expect("lockout lock");
        m.get(k)?.blocked(now)
    }

    fn fail(&self, k: &K, limit: u32, p: &Policy, now: Instant) {
        if limit == 0 {
            return;
        }
        let mut m = self.entries.lock().expect("lockout lock");
        let Some(e) = Self::entry(&mut m, k, p, now) else {
            return;
        };

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
        self.gauge(&m);
    }

    fn clear(&self, k: &K) {
        let mut m = self.entries.lock().expect("lockout lock");
        if m.remove(k).is_some() {
            self.gauge(&m);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("lockout lock").len()
    }
}

/// The lockout key of an address: IPv4 as it is, IPv6 by its /64 (one host's usual share).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

fn user_key(user: &str) -> [u8; 32] {
    Sha256::digest(user.as_bytes()).into()
}

/// Failed-login bookkeeping by client address and by user name.
pub struct Lockout {
    policy: Policy,
    by_ip: Table<IpAddr>,
    by_user: Table<[u8; 32]>,
}

/// Why an attempt may not go ahead now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The address is blocked for this long.
    Blocked(Duration),
    /// The address has as many password checks in flight as it may; retry after this long.
    Busy(Duration),
}

/// A reserved login attempt: it counts against its address until it is resolved with
/// [`Attempt::succeeded`] or [`Attempt::failed`], or dropped unresolved (not counted).
pub struct Attempt<'a> {
    lockout: &'a Lockout,
    ip: Option<IpAddr>,
    user: [u8; 32],
    reserved: bool,
    /// How long the check should wait first because the user name is being guessed at.
    pub user_delay: Option<Duration>,
}

impl Lockout {
    pub fn new(policy: Policy) -> Lockout {
        Lockout {
            policy,
            by_ip: Table::new("address"),
            by_user: Table::new("user"),
        }
    }

    /// Reserves a password check for `user` from `ip`, or says why not.
    pub fn begin(&self, ip: Option<IpAddr>, user: &str) -> Result<Attempt<'_>, Refused> {
        let now = Instant::now();
        let ip = ip.map(ip_key);
        let mut reserved = false;
        if let Some(ip) = ip {
            let mut m = self.by_ip.entries.lock().expect("lockout lock");
            if let Some(e) = Table::entry(&mut m, &ip, &self.policy, now) {
                if let Some(wait) = e.blocked(now) {
                    return Err(Refused::Blocked(wait));
                }
                let limit = match self.policy.max_failures {
                    0 => MAX_PENDING_PER_ADDRESS,
                    n => n.min(e.failures.saturating_add(MAX_PENDING_PER_ADDRESS)),
                };
                if e.failures + e.pending >= limit {
                    return Err(Refused::Busy(BUSY_WAIT));
                }
                e.pending += 1;
                reserved = true;
            }
            self.by_ip.gauge(&m);
        }
        let user = user_key(user);
        let user_delay = self
            .by_user
            .blocked(&user, now)
            .map(|_| self.policy.base_delay);
        Ok(Attempt {
            lockout: self,
            ip,
            user,
            reserved,
            user_delay,
        })
    }

    /// How long `ip` must still wait, if blocked.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        self.by_ip.blocked(&ip_key(ip), Instant::now())
    }

    /// A failure that needs no password check (a user name too long to look at): counted
    /// against the address only.
    pub fn failure_without_check(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip.map(ip_key) {
            let p = &self.policy;
            self.by_ip.fail(&ip, p.max_failures, p, Instant::now());
        }
    }

    /// Entries in the address and user tables.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        (self.by_ip.len(), self.by_user.len())
    }
}

impl Attempt<'_> {
    fn release(&mut self) {
        if !std::mem::take(&mut self.reserved) {
            return;
        }
        if let Some(ip) = self.ip {
            let mut m = self.lockout.by_ip.entries.lock().expect("lockout lock");
            if let Some(e) = m.get_mut(&ip) {
                e.pending = e.pending.saturating_sub(1);
            }
        }
    }

    /// The password was right: the address and the user start afresh.
    pub fn succeeded(mut self) {
        self.release();
        if let Some(ip) = self.ip {
            self.lockout.by_ip.clear(&ip);
        }
        self.lockout.by_user.clear(&self.user);
    }

    /// The password was wrong: counted against the address and the user.
    pub fn failed(mut self) {
        self.release();
        let (l, now) = (self.lockout, Instant::now());
        let p = &l.policy;
        if let Some(ip) = self.ip {
            l.by_ip.fail(&ip, p.max_failures, p, now);
        }
        l.by_user.fail(&self.user, p.max_failures_per_user, p, now);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: u32, per_user: u32) -> Policy {
        Policy {
            max_failures: max,
            max_failures_per_user: per_user,
            window: Duration::from_secs(60),
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(25),
        }
    }

    fn fail(l: &Lockout, ip: IpAddr, user: &str) {
        if let Ok(a) = l.begin(Some(ip), user) {
            a.failed();
        }
    }

    #[test]
    fn blocks_after_failures_and_grows() {
        let l = Lockout::new(policy(3, 100));
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        for _ in 0..2 {
            fail(&l, a, "x");
        }
        assert!(l.blocked(a).is_none());
        fail(&l, a, "x");
        let d = l.blocked(a).unwrap();
        assert!(d > Duration::from_secs(9) && d <= Duration::from_secs(10));
        assert!(l.blocked(b).is_none(), "another client is unaffected");
        assert!(matches!(l.begin(Some(a), "x"), Err(Refused::Blocked(_))));
        l.begin(Some(b), "x").unwrap().succeeded();
        assert!(
            l.blocked(a).is_some(),
            "b's success does not lift a's block"
        );
    }

    #[test]
    fn simultaneous_attempts_are_reserved_before_the_check() {
        let l = Lockout::new(policy(5, 100));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        // 300 attempts begun at once: only as many as may still fail get to be checked.
        let attempts: Vec<_> = (0..300)
            .filter_map(|_| l.begin(Some(ip), "alice").ok())
            .collect();
        assert_eq!(attempts.len(), MAX_PENDING_PER_ADDRESS as usize);
        for a in attempts {
            a.failed();
        }
        // 4 failures: one more may be checked, then the address is blocked.
        let more: Vec<_> = (0..10)
            .filter_map(|_| l.begin(Some(ip), "alice").ok())
            .collect();
        assert_eq!(more.len(), 1);
        more.into_iter().for_each(Attempt::failed);
        assert!(matches!(
            l.begin(Some(ip), "alice"),
            Err(Refused::Blocked(_))
        ));
        // An attempt dropped unresolved (client gone, pool busy) is not a failure.
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        for _ in 0..20 {
            drop(l.begin(Some(other), "alice").unwrap());
        }
        assert!(l.blocked(other).is_none());
    }

    #[test]
    fn guessing_a_user_from_many_addresses_slows_but_never_denies_it() {
        let l = Lockout::new(policy(5, 20));
        for i in 0..40u8 {
            fail(&l, IpAddr::from([127, 1, 0, i]), "alice");
        }
        let a = l
            .begin(Some("127.0.0.1".parse().unwrap()), "alice")
            .unwrap();
        assert_eq!(a.user_delay, Some(Duration::from_secs(10)));
        a.succeeded();
        let a = l
            .begin(Some("127.0.0.1".parse().unwrap()), "alice")
            .unwrap();
        assert_eq!(a.user_delay, None, "a success clears the user");
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = Lockout::new(policy(2, 100));
        fail(&l, "2001:db8::1".parse().unwrap(), "x");
        fail(&l, "2001:db8::2".parse().unwrap(), "x");
        assert!(l.blocked("2001:db8::ffff".parse().unwrap()).is_some());
        assert!(l.blocked("2001:db8:0:1::1".parse().unwrap()).is_none());
    }

    #[test]
    fn full_tables_never_drop_an_active_block() {
        let l = Lockout::new(policy(1, 1));
        let victim: IpAddr = "10.255.255.255".parse().unwrap();
        fail(&l, victim, "v");
        assert!(l.blocked(victim).is_some());
        // Fill the address table far past its bound with one failure each (each one blocks).
        for i in 0..(MAX_ENTRIES as u32 + 100) {
            fail(
                &l,
                IpAddr::from((u32::from_be_bytes([11, 0, 0, 0]) + i).to_be_bytes()),
                "u",
            );
        }
        assert!(l.sizes().0 <= MAX_ENTRIES && l.sizes().1 <= MAX_ENTRIES);
        assert!(l.blocked(victim).is_some(), "the real block survives");
    }
}
