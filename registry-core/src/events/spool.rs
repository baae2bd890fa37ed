//! The durable queue of one endpoint: segments of up to [`MAX_BATCH`](super::config::MAX_BATCH)
//! events, each an object `notifications/<endpoint>/<instance>/<stamp>-<nonce>-<count>.json`
//! holding the envelope exactly as it will be POSTed. The names sort in the order the
//! segments were written, and say how many events each holds, so a restart lists the
//! directory and knows the queue without reading it. The store's `put` is atomic and durable:
//! a segment is there whole or not at all.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::Event;
use crate::error::StorageError;
use crate::metrics;
use crate::storage::Storage;

/// The directory under the store's root that holds every endpoint's queues.
pub const ROOT: &str = "notifications";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub key: String,
    pub count: usize,
}

#[derive(Default)]
struct State {
    segments: VecDeque<Segment>,
    pending: usize,
    /// The stamp of the last segment written: the next is later, even if the clock is not.
    last_stamp: u64,
    /// Events dropped so far (the log says so at the first and every 1,000 more).
    dropped: u64,
}

pub struct Spool {
    storage: Arc<dyn Storage>,
    dir: String,
    endpoint: String,
    max_pending: usize,
    state: Mutex<State>,
    ready: tokio::sync::Notify,
}

/// `<stamp>-<nonce>-<count>.json` -> count. Anything else is not ours.
fn parse_name(name: &str) -> Option<usize> {
    let stem = name.strip_suffix(".json")?;
    let mut parts = stem.split('-');
    let (stamp, nonce, count) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = parts.next().is_none()
        && stamp.len() == 20
        && stamp.bytes().all(|b| b.is_ascii_digit())
        && nonce.len() == 8
        && nonce.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| count.parse().ok()).flatten().filter(|&c| c > 0)
}

impl Spool {
    pub fn new(
        storage: Arc<dyn Storage>,
        endpoint: &str,
        instance: &str,
        max_pending: usize,
    ) -> Spool {
        Spool {
            storage,
            dir: format!("{ROOT}/{endpoint}/{instance}"),
            endpoint: endpoint.to_owned(),
            max_pending,
            state: Mutex::new(State::default()),
            ready: tokio::sync::Notify::new(),
        }
    }

    fn key(&self, seg: &Segment) -> String {
        format!("{}/{}", self.dir, seg.key)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("spool lock")
    }

    /// Events waiting.
    pub fn pending(&self) -> usize {
        self.state().pending
    }

    /// Loads what a previous process left (before anything new is appended).
    pub async fn recover(&self) -> Result<usize, StorageError> {
        let names = match self.storage.list(&self.dir).await {
            Ok(n) => n,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut st = self.state();
        for name in names {
            match parse_name(&name) {
                Some(count) => {
                    if let Some(stamp) = name.get(..20).and_then(|s| s.parse().ok()) {
                        st.last_stamp = st.last_stamp.max(stamp);
                    }
                    st.pending += count;
                    st.segments.push_back(Segment { key: name, count });
                }
                None => {
                    tracing::warn!(endpoint = %self.endpoint, name = %name, "ignoring a file that is not an event segment in the notification queue")
                }
            }
        }
        let n = st.pending;
        metrics::notification_pending(&self.endpoint, n);
        drop(st);
        self.ready.notify_one();
        Ok(n)
    }

    /// Writes `events` as one segment at the back of the queue; when the queue then holds more
    /// than its bound, the oldest segments go.
    pub async fn append(&self, events: &[Event]) -> Result<(), StorageError> {
        let body =
            serde_json::to_vec(&serde_json::json!({ "events": events })).expect("events serialize");
        let stamp = {
            let mut st = self.state();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            st.last_stamp = now.max(st.last_stamp + 1);
            st.last_stamp
        };
        let seg = Segment {
            key: format!(
                "{stamp:020}-{:08x}-{}.json",
                rand::random::<u32>(),
                events.len()
            ),
            count: events.len(),
        };
        self.storage.put(&self.key(&seg), Bytes::from(body)).await?;
        let mut dropped = Vec::new();
        let mut log = None;
        {
            let mut st = self.state();
            st.pending += seg.count;
            st.segments.push_back(seg);
            while st.pending > self.max_pending && st.segments.len() > 1 {
                let old = st.segments.pop_front().expect("more than one");
                st.pending -= old.count;
                dropped.push(old);
            }
            let n: u64 = dropped.iter().map(|s| s.count as u64).sum();
            if n > 0 {
                let before = st.dropped;
                st.dropped += n;
                if before == 0 || before / 1000 != st.dropped / 1000 {
                    log = Some(st.dropped);
                }
            }
            metrics::notification_pending(&self.endpoint, st.pending);
        }
        self.ready.notify_one();
        if !dropped.is_empty() {
            let n: usize = dropped.iter().map(|s| s.count).sum();
            metrics::notification_dropped(&self.endpoint, n);
            if let Some(total) = log {
                tracing::warn!(endpoint = %self.endpoint, dropped = n, dropped_total = total, max_pending = self.max_pending, "notification queue full: the oldest events were dropped");
            }
            for s in dropped {
                if let Err(e) = self.storage.delete(&self.key(&s)).await {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, "removing a dropped event segment failed");
                }
            }
        }
        Ok(())
    }

    /// The oldest segments, once there is one: as many as hold at most `max_events` together
    /// (always at least one).
    pub async fn front(&self, max_events: usize) -> Vec<Segment> {
        loop {
            let ready = self.ready.notified();
            {
                let st = self.state();
                let mut out = Vec::new();
                let mut n = 0;
                for s in &st.segments {
                    if !out.is_empty() && n + s.count > max_events {
                        break;
                    }
                    n += s.count;
                    out.push(s.clone());
                }
                if !out.is_empty() {
                    return out;
                }
            }
            ready.await;
        }
    }

    /// The envelope of `seg`; `None` when it is gone (dropped as the oldest meanwhile).
    pub async fn read(&self, seg: &Segment) -> Result<Option<Bytes>, StorageError> {
        match self.storage.get(&self.key(seg)).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => {
                self.forget(seg);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes `seg` off the queue (delivered). True when it was still queued.
    pub async fn remove(&self, seg: &Segment) -> Result<bool, StorageError> {
        let was = self.forget(seg);
        self.storage.delete(&self.key(seg)).await?;
        Ok(was)
    }

    fn forget(&self, seg: &Segment) -> bool {
        let mut st = self.state();
        let was = st.segments.front() == Some(seg);
        if was {
            st.segments.pop_front();
            st.pending -= seg.count;
            metrics::notification_pending(&self.endpoint, st.pending);
        }
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FsStorage;

    fn event(n: usize) -> Event {
        Event {
            id: format!("e{n}"),
            timestamp: String::new(),
            action: super::super::Action::Push,
            target: Default::default(),
            request: Default::default(),
            actor: Default::default(),
            source: Default::default(),
        }
    }

    #[test]
    fn names() {
        assert_eq!(parse_name("00000000000000000001-0a0b0c0d-7.json"), Some(7));
        assert_eq!(parse_name("00000000000000000001-0a0b0c0d-0.json"), None);
        assert_eq!(parse_name("1-0a0b0c0d-7.json"), None);
        assert_eq!(parse_name("00000000000000000001-0a0b0c0d-7"), None);
        assert_eq!(parse_name("x"), None);
    }

    #[tokio::test]
    async fn survives_a_restart_in_order_and_drops_the_oldest_beyond_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path()).unwrap());
        let s = Spool::new(storage.clone(), "spool-test", "host", 4);
        assert_eq!(s.recover().await.unwrap(), 0);
        s.append(&[event(1), event(2)]).await.unwrap();
        s.append(&[event(3)]).await.unwrap();
        drop(s);
        let s = Spool::new(storage.clone(), "spool-test", "host", 4);
        assert_eq!(s.recover().await.unwrap(), 3);
        let first = s.front(1).await.remove(0);
        let body = s.read(&first).await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["events"][0]["id"], "e1");
        assert_eq!(v["events"][1]["id"], "e2");
        // Two more: five is over the bound of four, so the oldest segment (two events) goes.
        s.append(&[event(4), event(5)]).await.unwrap();
        assert_eq!(s.pending(), 3);
        let m = crate::metrics::render();
        assert!(
            m.contains("regcore_notification_events_dropped_total{endpoint=\"spool-test\"} 2"),
            "{m}"
        );
        assert_eq!(s.read(&first).await.unwrap(), None);
        let next = s.front(1).await.remove(0);
        assert!(s.remove(&next).await.unwrap());
        let last = s.front(1).await.remove(0);
        let v: serde_json::Value =
            serde_json::from_slice(&s.read(&last).await.unwrap().unwrap()).unwrap();
        assert_eq!(v["events"][0]["id"], "e4");
        assert_eq!(s.pending(), 2);
        // Several segments go in one envelope, up to the limit.
        s.append(&[event(6)]).await.unwrap();
        assert_eq!(s.front(100).await.len(), 2);
        assert_eq!(s.front(2).await.len(), 1);
    }
}
