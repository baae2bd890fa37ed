//! Files that change while the edge serves: the certificate and the htpasswd file are reloaded
//! when they change on disk and on SIGHUP; a file that does not load is refused with an error log
//! and the one in use is kept.
//!
//! The certificate's upkeep runs here too (see [`crate::tls::self_signed`]): hourly and on SIGHUP
//! the edge makes sure its own certificate covers the wanted names and is not about to expire,
//! and re-issues it under the same CA when not. SIGHUP reads the config file again for
//! `[tls] hosts`; other settings take effect at the next start. With `[tls.acme]` the
//! certificate is not read from files: SIGHUP asks [`crate::tls::acme`] for a renewal instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::auth::{Authenticator, Htpasswd};
use crate::config::Config;
use crate::metrics;
use crate::tls::{self, self_signed, CertStore};

/// How often the certificate and htpasswd files are checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(2);
/// How often the certificate's names and expiry are checked without a SIGHUP. Renewal starts a
/// month before expiry, and interface addresses change seldom.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// What identifies a file's content without reading it: size, mtime, inode.
fn fingerprint(p: &std::path::Path) -> Option<(u64, std::time::SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// The reloading background service.
pub struct Reloader {
    files: self_signed::Files,
    /// Whether certificates may be made (`[tls] self_signed`).
    generate: bool,
    listen: String,
    hosts: std::sync::Mutex<Vec<String>>,
    source: (PathBuf, bool),
    htpasswd: PathBuf,
    /// `None` when TLS is off: only the htpasswd file is watched.
    certs: Option<Arc<CertStore>>,
    auth: Arc<Authenticator>,
    /// With ACME: SIGHUP asks for a renewal.
    acme_force: Option<Arc<tokio::sync::Notify>>,
}

impl Reloader {
    pub fn new(
        config: &Config,
        certs: Option<Arc<CertStore>>,
        auth: Arc<Authenticator>,
        acme_force: Option<Arc<tokio::sync::Notify>>,
    ) -> Reloader {
        Reloader {
            files: crate::cert_files(config),
            generate: config.self_signed,
            listen: config.listen.clone(),
            hosts: std::sync::Mutex::new(config.hosts.clone()),
            source: config.source.clone(),
            htpasswd: config.htpasswd.clone(),
            certs,
            auth,
            acme_force,
        }
    }

    fn reload_certificate(&self) {
        let Some(certs) = &self.certs else {
            return;
        };
        match tls::load_certified_key(&self.files.cert, &self.files.key) {
            Ok(k) => {
                certs.replace(k);
                metrics::RELOADS
                    .with_label_values(&["certificate", "ok"])
                    .inc();
                tracing::info!(cert = %self.files.cert.display(), "certificate reloaded");
            }
            Err(e) => {
                metrics::RELOADS
                    .with_label_values(&["certificate", "failed"])
                    .inc();
                tracing::error!(error = %e, "new certificate refused; keeping the one in use");
            }
        }
    }

    fn reload_htpasswd(&self) {
        match Htpasswd::load(&self.htpasswd) {
            Ok(users) => {
                metrics::HTPASSWD_USERS.set(users.len() as i64);
                self.auth.replace(users);
                metrics::RELOADS
                    .with_label_values(&["htpasswd", "ok"])
                    .inc();
                tracing::info!(file = %self.htpasswd.display(), "htpasswd reloaded");
            }
            Err(e) => {
                metrics::RELOADS
                    .with_label_values(&["htpasswd", "failed"])
                    .inc();
                tracing::error!(error = %e, "new htpasswd refused; keeping the users in use");
            }
        }
    }

    /// Reads `[tls] hosts` from the config file and environment again; on a bad file the hosts
    /// in use stay.
    fn reread_hosts(&self) {
        let (path, optional) = &self.source;
        match Config::load(path, *optional, std::env::vars()) {
            Ok(c) => {
                let mut hosts = self.hosts.lock().expect("hosts lock");
                if *hosts != c.hosts {
                    tracing::info!(hosts = %c.hosts.join(","), "tls.hosts changed");
                    *hosts = c.hosts;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "config not re-read; keeping the certificate names in use")
            }
        }
    }

    /// Re-issues our certificate when it needs it. Returns whether it wrote a new one.
    fn upkeep(&self) -> bool {
        if self.certs.is_none() {
            return false;
        }
        let hosts = self.hosts.lock().expect("hosts lock").clone();
        let wanted = self_signed::Wanted::for_listener(&hosts, &self.listen);
        match tls::upkeep(&self.files, &wanted, self.generate) {
            Ok(issued) => issued,
            Err(e) => {
                tracing::error!(error = %e, "certificate upkeep failed; keeping the one in use");
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; reloading on file changes only");
                None
            }
        };
        let certs_fp = || (fingerprint(&self.files.cert), fingerprint(&self.files.key));
        let (mut certs, mut users) = (certs_fp(), fingerprint(&self.htpasswd));
        let mut last_upkeep = Instant::now();
        loop {
            let forced = tokio::select! {
                _ = tokio::time::sleep(RELOAD_POLL) => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading the certificate and the htpasswd file");
                    true
                }
                _ = shutdown.changed() => return,
            };
            if forced {
                self.reread_hosts();
                if let Some(f) = &self.acme_force {
                    f.notify_one();
                }
            }
            let mut cert_changed = forced;
            if forced || last_upkeep.elapsed() >= UPKEEP_INTERVAL {
                last_upkeep = Instant::now();
                // A few file reads, and at most one key generation and signature: short enough
                // to run here.
                cert_changed |= self.upkeep();
            }
            let (c, u) = (certs_fp(), fingerprint(&self.htpasswd));
            if cert_changed || c != certs {
                certs = c;
                self.reload_certificate();
            }
            if forced || u != users {
                users = u;
                self.reload_htpasswd();
            }
        }
    }
}
