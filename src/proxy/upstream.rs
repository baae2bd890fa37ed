//! The upstream registries (`[upstream] urls`) as a balanced, health-checked pool.
//!
//! - Each URL is resolved to all its addresses, again at every health round, so a name that
//!   stands for several replicas (`docker-compose up --scale core=3`, a headless service) becomes
//!   several targets, and replicas that come and go are followed.
//! - Active health checks: every `health_interval` each target is asked for `health_path`
//!   (any answer below 500 is healthy, within the interval). A failing target is out after one
//!   failed round, so within two intervals, and back after one good round.
//! - Passive: a target that refuses a connection is passed over for a few seconds.
//! - Choice: round robin or least connections among the healthy targets; the requests of one
//!   upload go to the same target while it is healthy (rendezvous hashing on the upload id), a
//!   fast path only: the upload's state is in the shared store, so any target can go on with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::config::UpstreamUrl;
use crate::metrics;

/// How long a target that refused a connection is passed over.
const COOLDOWN: Duration = Duration::from_secs(5);

/// How requests are spread over the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConnections,
}

/// The pool's settings (`[upstream]`).
#[derive(Debug, Clone)]
pub struct Policy {
    pub balance: Balance,
    /// Requests of one upload to one target while it is healthy.
    pub upload_affinity: bool,
    pub health_path: String,
    pub health_interval: Duration,
}

/// One address of an upstream URL.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: bool,
    /// SNI and certificate name.
    pub host: String,
    /// The `Host` the health check sends.
    pub authority: String,
    healthy: AtomicBool,
    /// Unix millis until which it is passed over (it refused a connection).
    down_until: AtomicU64,
    /// Requests in flight to it.
    active: AtomicUsize,
}

impl Target {
    fn new(addr: SocketAddr, url: &UpstreamUrl) -> Target {
        Target {
            addr,
            tls: url.tls,
            host: url.host.clone(),
            authority: url.addr.clone(),
            healthy: AtomicBool::new(true),
            down_until: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        }
    }

    fn available(&self, now: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.down_until.load(Ordering::Relaxed) <= now
    }

    /// The peer pingora connects to, with the timeouts.
    pub fn peer(&self, t: &super::Timeouts) -> Box<HttpPeer> {
        let mut peer = HttpPeer::new(self.addr, self.tls, self.host.clone());
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.upstream_read);
        peer.options.write_timeout = Some(t.upstream_write);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Box::new(peer)
    }

    /// It refused a connection: pass it over for a while.
    pub fn refused(&self) {
        self.down_until.store(
            now_millis() + COOLDOWN.as_millis() as u64,
            Ordering::Relaxed,
        );
    }
}

/// A request's hold on a target: counted in flight until dropped.
#[derive(Debug)]
pub struct Lease(pub Arc<Target>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The pool.
pub struct Pool {
    urls: Vec<UpstreamUrl>,
    targets: RwLock<Arc<Vec<Arc<Target>>>>,
    next: AtomicUsize,
    pub policy: Policy,
}

/// The addresses a URL names now (none when its name does not resolve).
fn resolve(url: &UpstreamUrl) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    let mut v: Vec<SocketAddr> = url
        .addr
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

/// A 64-bit hash of `key` for `addr` (rendezvous hashing: each key ranks every target).
fn score(key: &str, addr: &SocketAddr) -> u64 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(key.as_bytes());
    h.update(addr.to_string().as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

impl Pool {
    /// The pool, each URL resolved now (a name that does not resolve yet is tried again at
    /// every health round).
    pub fn new(urls: Vec<UpstreamUrl>, policy: Policy) -> Pool {
        let targets = urls
            .iter()
            .flat_map(|u| {
                resolve(u)
                    .into_iter()
                    .map(move |a| Arc::new(Target::new(a, u)))
            })
            .collect();
        let pool = Pool {
            urls,
            targets: RwLock::new(Arc::new(targets)),
            next: AtomicUsize::new(0),
            policy,
        };
        pool.publish();
        pool
    }

    pub fn targets(&self) -> Arc<Vec<Arc<Target>>> {
        self.targets.read().expect("targets").clone()
    }

    /// How many targets there are.
    pub fn len(&self) -> usize {
        self.targets().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any target is healthy.
    pub fn any_healthy(&self) -> bool {
        self.targets()
            .iter()
            .any(|t| t.healthy.load(Ordering::Relaxed))
    }

    fn publish(&self) {
        let t = self.targets();
        metrics::UPSTREAMS.set(t.len() as i64);
        metrics::UPSTREAMS_HEALTHY.set(
            t.iter()
                .filter(|t| t.healthy.load(Ordering::Relaxed))
                .count() as i64,
        );
    }

    /// Chooses a target for a request (`upload`: its upload id, for affinity), skipping those in
    /// `tried`. When none is healthy, any is tried rather than none.
    pub fn choose(&self, upload: Option<&str>, tried: &[SocketAddr]) -> Result<Lease> {
        let all = self.targets();
        if all.is_empty() {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "no upstream address resolves",
            ));
        }
        let now = now_millis();
        let fresh: Vec<&Arc<Target>> = all.iter().filter(|t| !tried.contains(&t.addr)).collect();
        let pool = if fresh.is_empty() {
            all.iter().collect()
        } else {
            fresh
        };
        let healthy: Vec<&Arc<Target>> =
            pool.iter().copied().filter(|t| t.available(now)).collect();
        let candidates = if healthy.is_empty() { pool } else { healthy };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let chosen = match (upload, self.policy.balance) {
            (Some(id), _) if self.policy.upload_affinity => candidates
                .iter()
                .max_by_key(|t| score(id, &t.addr))
                .copied(),
            (_, Balance::RoundRobin) => Some(candidates[start % candidates.len()]),
            (_, Balance::LeastConnections) => (0..candidates.len())
                .map(|k| candidates[(start + k) % candidates.len()])
                .min_by_key(|t| t.active.load(Ordering::Relaxed)),
        }
        .expect("candidates are not empty");
        chosen.active.fetch_add(1, Ordering::Relaxed);
        Ok(Lease(chosen.clone()))
    }

    /// One health round: resolve every URL again (keeping what is known of addresses that stay)
    /// and ask each target for the health path.
    pub async fn check(&self, connector: &pingora::connectors::http::Connector) {
        let old = self.targets();
        let mut fresh = Vec::new();
        for u in &self.urls {
            // Name lookups block: off the serving threads.
            let url = u.clone();
            let addrs = tokio::task::spawn_blocking(move || resolve(&url))
                .await
                .unwrap_or_default();
            for a in addrs {
                if fresh.iter().any(|t: &Arc<Target>| t.addr == a) {
                    continue;
                }
                match old.iter().find(|t| t.addr == a) {
                    Some(t) => fresh.push(t.clone()),
                    None => {
                        tracing::info!(upstream = %a, url = %u.addr, "upstream address added");
                        fresh.push(Arc::new(Target::new(a, u)));
                    }
                }
            }
        }
        for t in old
            .iter()
            .filter(|t| !fresh.iter().any(|f| f.addr == t.addr))
        {
            tracing::info!(upstream = %t.addr, "upstream address gone");
        }
        *self.targets.write().expect("targets") = Arc::new(fresh.clone());
        let probes = fresh.iter().map(|t| async move {
            let ok = tokio::time::timeout(self.policy.health_interval, self.probe(connector, t))
                .await
                .unwrap_or_else(|_| Err("no answer within the interval".into()));
            let was = t.healthy.swap(ok.is_ok(), Ordering::Relaxed);
            match (was, ok) {
                (true, Err(why)) => {
                    tracing::warn!(upstream = %t.addr, why = %why, "upstream failed its health check: out of the pool")
                }
                (false, Ok(())) => {
                    t.down_until.store(0, Ordering::Relaxed);
                    tracing::info!(upstream = %t.addr, "upstream healthy again: back in the pool")
                }
                _ => {}
            }
        });
        futures_util::future::join_all(probes).await;
        self.publish();
    }

    async fn probe(
        &self,
        connector: &pingora::connectors::http::Connector,
        t: &Target,
    ) -> std::result::Result<(), String> {
        let timeouts = super::Timeouts {
            client_idle: self.policy.health_interval,
            connect: self.policy.health_interval,
            upstream_read: self.policy.health_interval,
            upstream_write: self.policy.health_interval,
        };
        let host = http::HeaderValue::from_str(&t.authority).ok();
        let answer = call(
            connector,
            &t.peer(&timeouts),
            http::Method::GET,
            &self.policy.health_path,
            host.as_ref(),
            "http",
            Vec::new(),
            64 << 10,
            self.policy.health_interval,
        )
        .await
        .map_err(|e| e.to_string())?;
        if answer.status >= 500 || answer.status == 0 {
            return Err(format!("answered {}", answer.status));
        }
        Ok(())
    }
}

/// An answer read whole.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// One request of the edge's own (no body) to `peer`, its answer read whole up to `limit`.
#[allow(clippy::too_many_arguments)]
pub async fn call(
    connector: &pingora::connectors::http::Connector,
    peer: &HttpPeer,
    method: http::Method,
    target: &str,
    host: Option<&http::HeaderValue>,
    proto: &'static str,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    limit: usize,
    read_timeout: Duration,
) -> Result<Answer> {
    let mut req = RequestHeader::build(method, target.as_bytes(), Some(4))?;
    if let Some(h) = host {
        req.insert_header(http::header::HOST, h.clone())?;
    }
    for (k, v) in headers {
        req.insert_header(k, v)?;
    }
    req.insert_header("X-Forwarded-Proto", proto)?;
    let (mut s, _) = connector.get_http_session(peer).await?;
    s.set_read_timeout(Some(read_timeout));
    s.write_request_header(Box::new(req)).await?;
    s.finish_request_body().await?;
    s.read_response_header().await?;
    let (status, headers) = s
        .response_header()
        .map_or((0, http::HeaderMap::new()), |h| {
            (h.status.as_u16(), h.headers.clone())
        });
    let mut body = Vec::new();
    while let Some(chunk) = s.read_response_body().await? {
        if body.len() + chunk.len() > limit {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                format!("the upstream's answer to {target} is over {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(s, peer, Some(Duration::from_secs(60)))
        .await;
    Ok(Answer {
        status,
        headers,
        body: Bytes::from(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16, balance: Balance, upload_affinity: bool) -> Pool {
        let urls = (0..n)
            .map(|i| crate::config::parse_url(&format!("http://127.0.0.1:{}", 7000 + i)).unwrap())
            .collect();
        Pool::new(
            urls,
            Policy {
                balance,
                upload_affinity,
                health_path: "/v2/".into(),
                health_interval: Duration::from_secs(1),
            },
        )
    }

    #[test]
    fn round_robin_visits_every_target_and_skips_unhealthy_ones() {
        let p = pool(3, Balance::RoundRobin, false);
        let seen: std::collections::BTreeSet<u16> = (0..6)
            .map(|_| p.choose(None, &[]).unwrap().0.addr.port())
            .collect();
        assert_eq!(seen.len(), 3);
        p.targets()[1].healthy.store(false, Ordering::Relaxed);
        for _ in 0..6 {
            assert_ne!(p.choose(None, &[]).unwrap().0.addr.port(), 7001);
        }
        p.targets()[0].refused();
        for _ in 0..6 {
            assert_eq!(p.choose(None, &[]).unwrap().0.addr.port(), 7002);
        }
        // None available: one is tried anyway.
        p.targets()[2].healthy.store(false, Ordering::Relaxed);
        assert!(p.choose(None, &[]).is_ok());
    }

    #[test]
    fn least_connections_prefers_the_idle_target() {
        let p = pool(2, Balance::LeastConnections, false);
        let a = p.choose(None, &[]).unwrap();
        let b = p.choose(None, &[]).unwrap();
        assert_ne!(a.0.addr, b.0.addr);
        let idle = a.0.addr;
        drop(a);
        // b is still in flight: every new request goes to the other target.
        for _ in 0..4 {
            assert_eq!(p.choose(None, &[]).unwrap().0.addr, idle);
        }
        drop(b);
    }

    #[test]
    fn an_upload_stays_on_its_target_while_it_is_healthy() {
        let p = pool(3, Balance::RoundRobin, true);
        let id = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        let first = p.choose(Some(id), &[]).unwrap().0.addr;
        for _ in 0..5 {
            assert_eq!(p.choose(Some(id), &[]).unwrap().0.addr, first);
        }
        // Its target fails: the upload moves, and other uploads mostly stay where they were.
        let t = p
            .targets()
            .iter()
            .find(|t| t.addr == first)
            .unwrap()
            .clone();
        t.healthy.store(false, Ordering::Relaxed);
        assert_ne!(p.choose(Some(id), &[]).unwrap().0.addr, first);
        // A retry skips what was tried.
        let other = p.choose(Some(id), &[]).unwrap().0.addr;
        assert_ne!(p.choose(Some(id), &[other]).unwrap().0.addr, other);
    }
}
