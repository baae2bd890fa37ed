//! One endpoint: a bounded channel from the requests to a writer that appends batches to the
//! [`Spool`], and a sender that POSTs the oldest segment until the endpoint takes it (a 2xx or
//! 3xx, as Distribution counts success), then the next. After `threshold` failures in a row it
//! waits `backoff` (jittered) between tries; it never gives up on a segment, so delivery is in
//! order and at least once (receivers de-duplicate by event id).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::config::{Endpoint, MAX_BATCH};
use super::spool::{Segment, Spool};
use super::{Event, Kind, ENVELOPE_MEDIA_TYPE, SIGNATURE_HEADER};
use crate::metrics;
use crate::storage::Storage;

/// Events in flight from requests to the writer; beyond this (a store that does not keep up)
/// new events are dropped and counted, rather than making requests wait.
const CHANNEL: usize = 4096;
/// The longest wait between tries to write to or read from a failing store.
const MAX_STORE_RETRY: Duration = Duration::from_secs(30);

enum Msg {
    Event(Box<Event>),
    Flush(oneshot::Sender<()>),
}

pub struct EndpointQueue {
    cfg: Endpoint,
    tx: mpsc::Sender<Msg>,
    rx: Mutex<Option<mpsc::Receiver<Msg>>>,
    spool: Spool,
    /// Events dropped before the writer (channel full), for rate-limiting the log.
    dropped: std::sync::atomic::AtomicU64,
}

impl EndpointQueue {
    pub fn new(cfg: Endpoint, storage: Arc<dyn Storage>, instance: &str) -> EndpointQueue {
        let (tx, rx) = mpsc::channel(CHANNEL);
        EndpointQueue {
            spool: Spool::new(storage, &cfg.name, instance, cfg.max_pending),
            cfg,
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: Default::default(),
        }
    }

    /// Whether this endpoint takes `event`.
    pub fn wants(&self, event: &Event, kind: Kind) -> bool {
        let blob_unwanted = self.cfg.manifests_only && kind == Kind::Blob;
        let media_ignored = event
            .target
            .media_type
            .as_ref()
            .is_some_and(|m| self.cfg.ignored_media_types.contains(m));
        !(blob_unwanted || media_ignored || self.cfg.ignored_actions.contains(&event.action))
    }

    /// Hands `event` to the writer, without waiting.
    pub fn push(&self, event: Event) {
        if let Err(e) = self.tx.try_send(Msg::Event(Box::new(event))) {
            metrics::notification_dropped(&self.cfg.name, 1);
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the store does not keep up",
                mpsc::error::TrySendError::Closed(_) => "the queue is stopped",
            };
            // One line for the first and then every 1,000th: a flood must not flood the log.
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(endpoint = %self.cfg.name, why, dropped = n + 1, "notification events dropped");
            }
        }
    }

    /// Resolves once everything pushed before is in the store.
    pub async fn flush(&self) {
        let (t, r) = oneshot::channel();
        if self.tx.send(Msg::Flush(t)).await.is_ok() {
            let _ = r.await;
        }
    }

    /// Spawns the writer and the sender on the current runtime (once).
    pub fn start(self: Arc<Self>) {
        let Some(rx) = self.rx.lock().expect("rx lock").take() else {
            return;
        };
        tokio::spawn(self.clone().write_loop(rx));
        tokio::spawn(self.send_loop());
    }

    async fn write_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Msg>) {
        let name = &self.cfg.name;
        let mut wait = Duration::from_millis(100);
        loop {
            match self.spool.recover().await {
                Ok(0) => break,
                Ok(n) => {
                    tracing::info!(endpoint = %name, pending = n, "notification events left by an earlier run will be delivered");
                    break;
                }
                Err(e) => {
                    tracing::warn!(endpoint = %name, error = %e, "cannot read the notification queue; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_STORE_RETRY);
                }
            }
        }
        let mut batch: Vec<Event> = Vec::new();
        let mut flushes = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m {
                    Msg::Event(e) => batch.push(*e),
                    Msg::Flush(f) => flushes.push(f),
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            let mut wait = Duration::from_millis(100);
            while !batch.is_empty() {
                match self.spool.append(&batch).await {
                    Ok(()) => batch.clear(),
                    Err(e) => {
                        tracing::warn!(endpoint = %name, events = batch.len(), error = %e, "writing notification events to the store failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_STORE_RETRY);
                    }
                }
            }
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
        }
    }

    async fn send_loop(self: Arc<Self>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match reqwest_tls::Client::builder()
            .timeout(self.cfg.timeout)
            .redirect(reqwest_tls::redirect::Policy::none())
            .user_agent(concat!("registry-core/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(endpoint = %self.cfg.name, error = %e, "cannot build the HTTP client for notifications; events stay queued");
                return;
            }
        };
        let name = &self.cfg.name;
        let mut failures: u32 = 0;
        // The envelope being retried and the segments in it: read from the store once, not at
        // every try while an endpoint is down (on S3, a GET per segment per try).
        let mut batch: Option<(Vec<Segment>, bytes::Bytes, usize)> = None;
        loop {
            let front = self.spool.front(MAX_BATCH).await;
            let still_queued = batch
                .as_ref()
                .is_some_and(|(segs, _, _)| front.starts_with(segs));
            if !still_queued {
                batch = match self.read_batch(&front).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(endpoint = %name, error = %e, "cannot read a notification segment; retrying");
                        tokio::time::sleep(self.cfg.backoff.max(Duration::from_millis(100))).await;
                        continue;
                    }
                };
            }
            let Some((segments, body, count)) = batch.clone() else {
                continue;
            };
            match self.post(&client, body).await {
                Ok(()) => {
                    if failures >= self.cfg.threshold.max(1) {
                        tracing::info!(endpoint = %name, failures, "notification endpoint takes events again");
                    }
                    failures = 0;
                    metrics::notification_sent(name, count);
                    batch = None;
                    for seg in &segments {
                        if let Err(e) = self.spool.remove(seg).await {
                            // It will be sent again after a restart: at least once.
                            tracing::warn!(endpoint = %name, error = %e, "removing a delivered notification segment failed");
                        }
                    }
                }
                Err(why) => {
                    failures = failures.saturating_add(1);
                    metrics::notification_failed(name);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(endpoint = %name, failures, pending = self.spool.pending(), error = %why, "notification delivery failed; retrying");
                    }
                    let wait = if failures >= self.cfg.threshold {
                        jitter(self.cfg.backoff)
                    } else {
                        // Under the threshold: again soon (Distribution retries at once).
                        Duration::from_millis(50 * u64::from(failures)).min(self.cfg.backoff)
                    };
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The envelope of the segments that are still there (one may have been dropped as the
    /// oldest meanwhile), with them and its event count; `None` when none is.
    async fn read_batch(
        &self,
        front: &[Segment],
    ) -> Result<Option<(Vec<Segment>, bytes::Bytes, usize)>, crate::error::StorageError> {
        let mut bodies = Vec::new();
        for seg in front {
            if let Some(b) = self.spool.read(seg).await? {
                bodies.push((seg, b));
            }
        }
        if bodies.is_empty() {
            return Ok(None);
        }
        let (body, count) = envelope(&bodies);
        let segments = bodies.into_iter().map(|(s, _)| s.clone()).collect();
        Ok(Some((segments, body, count)))
    }

    async fn post(&self, client: &reqwest_tls::Client, body: bytes::Bytes) -> Result<(), String> {
        let mut req = client
            .post(self.cfg.url.clone())
            .headers(self.cfg.headers.clone())
            .header(http::header::CONTENT_TYPE, ENVELOPE_MEDIA_TYPE);
        if let Some(secret) = &self.cfg.secret {
            req = req.header(SIGNATURE_HEADER, signature(&secret.0, &body));
        }
        let resp = req.body(body).send().await.map_err(|e| {
            // reqwest's Display hides the cause (connection refused, timeout).
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                s = format!("{s}: {c}");
                src = c.source();
            }
            s
        })?;
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("the endpoint answered {status}"))
        }
    }
}

/// One envelope of the segments' events, in order, and how many they are. A single segment is
/// sent as it was stored.
fn envelope(bodies: &[(&Segment, bytes::Bytes)]) -> (bytes::Bytes, usize) {
    if let [(seg, body)] = bodies {
        return (body.clone(), seg.count);
    }
    let mut events = Vec::new();
    for (_, body) in bodies {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(mut m)) => match m.remove("events") {
                Some(serde_json::Value::Array(a)) => events.extend(a),
                _ => tracing::warn!("skipping a notification segment without events"),
            },
            _ => tracing::warn!("skipping a notification segment that is not JSON"),
        }
    }
    let n = events.len();
    let body = serde_json::to_vec(&serde_json::json!({ "events": events })).expect("JSON values");
    (bytes::Bytes::from(body), n)
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

/// `d` give or take a fifth, so that processes sharing an endpoint do not retry in step.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random::<f64>() * 0.4 + 0.8)
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            super::signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
