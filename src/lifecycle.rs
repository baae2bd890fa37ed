//! The edge's life after start: readiness, shutdown and binary upgrade.
//!
//! - SIGTERM ([`Signals`]): the edge drains (no new connections; requests in flight finish, at
//!   most `drain_timeout` long) and exits as soon as none is left.
//! - SIGQUIT: a zero-downtime binary upgrade. A new process started with `run --upgrade` waits
//!   on the upgrade socket (`[server] upgrade_socket`); SIGQUIT makes this one hand it the
//!   listening sockets (pingora's fd transfer), so no connection is refused while binaries
//!   change. This one then stops accepting, lets its requests finish and exits as soon as its
//!   last connection closes ([`UpgradeDrain`]), at the latest after the drain timeout.
//! - SIGINT: exit at once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;

use crate::{conn, metrics};

/// The embedded registry, when it sends notifications: its last events are written to their
/// queues before the process exits (pingora's fast shutdown would cut the writer off).
pub static EVENTS: std::sync::OnceLock<std::sync::Arc<registry_core::Registry>> =
    std::sync::OnceLock::new();

/// Writes the events emitted so far to their queues (at most a few seconds).
async fn flush_events() {
    if let Some(n) = EVENTS.get().and_then(|r| r.notifier()) {
        n.flush(Duration::from_secs(5)).await;
    }
}

/// The edge's shutdown signals, as pingora's (SIGINT: exit at once; SIGQUIT: hand the listening
/// sockets to a new process, for a binary upgrade), but for SIGTERM: the edge drains first (it
/// stops taking connections and lets the requests in flight finish, at most `drain` long) and
/// exits as soon as none is left, instead of always sleeping a whole grace period.
pub struct Signals {
    pub drain: Duration,
    /// Where a new process started with `--upgrade` waits for the listening sockets.
    pub upgrade_socket: std::path::PathBuf,
}

/// How long a new process started with `--upgrade` waits for the sockets before it gives up.
pub const UPGRADE_WAIT: Duration = Duration::from_secs(60);

/// Whether a new process is waiting for the listening sockets: its socket exists (the process
/// that received them removes it) and is younger than the wait (one that gave up leaves its
/// socket behind). Connecting to look would take the new process's one accept.
fn upgrade_waiting(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| {
        m.file_type().is_socket()
            && m.modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < UPGRADE_WAIT)
    })
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; running until killed");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = quit.recv() => {
                    if upgrade_waiting(&self.upgrade_socket) {
                        tracing::info!(socket = %self.upgrade_socket.display(), "SIGQUIT: handing the listening sockets to the new process");
                        // Connections end after their current request from now on, so clients
                        // reconnect to the new process.
                        conn::HANDED_OVER.store(true, Ordering::Relaxed);
                        return ShutdownSignal::GracefulUpgrade;
                    }
                    // Without a taker the sockets would go nowhere and the edge would stop.
                    tracing::error!(
                        socket = %self.upgrade_socket.display(),
                        "SIGQUIT ignored: no new process waits for the listening sockets; start `registry-edge run --upgrade` first, then send SIGQUIT"
                    );
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = term.recv() => break,
            }
        }
        conn::DRAINING.store(true, Ordering::Relaxed);
        // Connections accepted just before are given a moment to reach their request.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = std::time::Instant::now();
        let in_flight = || metrics::IN_FLIGHT.get();
        tracing::info!(
            in_flight = in_flight(),
            drain_timeout = ?self.drain,
            "SIGTERM: draining: no new connections; requests in flight may finish"
        );
        while in_flight() > 0 && start.elapsed() < self.drain {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = in_flight();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "drain timeout reached; exiting with requests in flight"
            );
        } else {
            tracing::info!(
                duration_ms = start.elapsed().as_millis() as u64,
                "drained: no request in flight; exiting"
            );
        }
        flush_events().await;
        ShutdownSignal::FastShutdown
    }
}

/// Logs readiness once the services it depends on are up.
pub struct ReadyLog(pub String);

#[async_trait]
impl BackgroundService for ReadyLog {
    async fn start(&self, _shutdown: ShutdownWatch) {
        tracing::info!(addr = %self.0, "registry-edge ready");
    }
}

/// After a binary upgrade handed the listening sockets over: waits for this process's own
/// connections to end (pingora closes idle keep-alive ones; `Connection: close` ends the rest
/// after their request), then exits, instead of sleeping pingora's whole grace period.
pub struct UpgradeDrain {
    pub drain: Duration,
}

#[async_trait]
impl BackgroundService for UpgradeDrain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Only a graceful shutdown fires this: SIGTERM ends in a fast shutdown once drained.
        if shutdown.changed().await.is_err() {
            return;
        }
        conn::HANDED_OVER.store(true, Ordering::Relaxed);
        let start = std::time::Instant::now();
        tracing::info!(
            connections = metrics::CONNECTIONS.get(),
            in_flight = metrics::IN_FLIGHT.get(),
            "listening sockets handed to the new process; draining this one"
        );
        while metrics::CONNECTIONS.get() > 0 && start.elapsed() < self.drain {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = metrics::CONNECTIONS.get();
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain timeout reached; exiting with connections open"
            );
        } else {
            tracing::info!(
                duration_ms = start.elapsed().as_millis() as u64,
                "drained after the upgrade; exiting"
            );
        }
        flush_events().await;
        std::process::exit(0);
    }
}
