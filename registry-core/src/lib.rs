//! registry-core: an OCI Distribution v1.1 registry over Distribution's storage layout.
//!
//! How the modules fit, from the wire down:
//!
//! - [`server`]: hyper 1.x server (TCP or Unix socket, HTTP/1.1 + h2c); maps each request to a
//!   [`routes::Route`], validates names and digests, calls [`registry::Registry`], and turns every
//!   [`error::RegistryError`] into a status and an OCI JSON error body in one place.
//! - [`routes`]: `/v2/<name>/<kind>/<ref>` parsing from the end (names contain `/`).
//! - [`registry`]: the operations (blobs, uploads, manifests, tags, catalog, referrers, purge),
//!   a file per concern, over a [`storage::Storage`]; upload state lives in storage, the running
//!   hash included (saved by [`hash`] after each chunk), so any process can finish an upload
//!   without re-reading it.
//! - [`manifest`]: manifest validation, media types, referrer descriptors.
//! - [`events`]: notifications: Distribution's event envelope POSTed to webhooks from a
//!   durable queue per endpoint, kept in the store beside the images.
//! - [`gc`]: mark and sweep with a grace period, safe while serving.
//! - [`storage`]: the storage trait, Distribution's path [`storage::layout`], the filesystem
//!   backend with its request counter, and the S3 backend ([`storage::s3`]).
//! - [`name`], [`digest`]: validated protocol newtypes; nothing unvalidated reaches a path.
//! - [`metrics`]: `regcore_*` Prometheus metrics in the default registry (served by the binary on
//!   its own address, and by the edge when it embeds the core).
//! - [`config`]: TOML + flags into a validated [`config::Config`]; [`run`] starts it all.
#![forbid(unsafe_code)]

pub mod config;
pub mod digest;
pub mod error;
pub mod events;
pub mod gc;
pub mod hash;
pub mod manifest;
pub mod metrics;
pub mod name;
pub mod registry;
pub mod routes;
pub mod server;
pub mod storage;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use registry::{Options, Registry};
pub use server::{serve, Listener};

/// Opens the storage of `config` and builds the registry on it. Nothing goes over the network:
/// [`check`] tells whether an object store answers.
pub fn open(config: &Config) -> std::io::Result<Arc<Registry>> {
    let storage: Arc<dyn storage::Storage> = match &config.storage {
        config::StorageDriver::Filesystem => Arc::new(storage::Counted::new(Arc::new(
            storage::FsStorage::open(&config.root)?,
        ))),
        // Counted per HTTP request, by S3 operation, inside the backend.
        config::StorageDriver::S3(s) => {
            Arc::new(storage::S3Storage::new((**s).clone()).map_err(std::io::Error::other)?)
        }
    };
    let mut registry = Registry::new(
        storage.clone(),
        Options {
            delete_enabled: config.delete_enabled,
            max_manifest_bytes: config.max_manifest_bytes,
        },
    );
    if !config.notifications.is_empty() {
        registry = registry.with_notifier(events::Notifier::new(&config.notifications, storage));
    }
    Ok(Arc::new(registry))
}

/// Starts delivering the registry's events, when notifications are configured (on the current
/// runtime; the queues are read back from the store first).
pub fn start_notifications(registry: &Registry, config: &Config) {
    if let Some(n) = registry.notifier() {
        for e in &config.notifications.endpoints {
            tracing::info!(endpoint = %e.name, url = %e.url, disabled = e.disabled, manifests_only = e.manifests_only, signed = e.secret.is_some(), "notification endpoint");
        }
        n.start();
    }
}

/// Whether the storage of `config` can be used: for S3, that the endpoint answers, the bucket
/// exists and the credentials are accepted (an empty bucket is fine). The error names the
/// setting to look at.
pub async fn check(config: &Config) -> std::io::Result<()> {
    match &config.storage {
        config::StorageDriver::Filesystem => Ok(()),
        config::StorageDriver::S3(s) => storage::S3Storage::new((**s).clone())
            .map_err(std::io::Error::other)?
            .check()
            .await
            .map_err(std::io::Error::other),
    }
}

/// Where `config` stores images, for logs and messages (no secrets).
pub fn describe_storage(config: &Config) -> String {
    match &config.storage {
        config::StorageDriver::Filesystem => config.root.display().to_string(),
        config::StorageDriver::S3(s) => {
            let root = if s.root.is_empty() {
                String::new()
            } else {
                format!("/{}", s.root)
            };
            match &s.endpoint {
                Some(e) => format!("s3://{}{root} at {e}", s.bucket),
                None => format!("s3://{}{root} ({})", s.bucket, s.region),
            }
        }
    }
}

/// Purges stale uploads every `config.upload_purge_interval` until dropped.
pub fn spawn_upload_purger(
    registry: Arc<Registry>,
    config: &Config,
) -> tokio::task::JoinHandle<()> {
    let (interval, age) = (config.upload_purge_interval, config.upload_purge_age);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            match registry.purge_uploads(age).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "purged stale uploads"),
                Err(e) => tracing::warn!(error = %e, "purging stale uploads failed"),
            }
        }
    })
}

/// A readiness check: `Ok`, or why not.
pub type Health =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The readiness of a registry: its store answers.
pub fn registry_health(registry: Arc<Registry>) -> Health {
    Arc::new(move || {
        let r = registry.clone();
        Box::pin(async move { r.ready().await })
    })
}

/// Serves `/metrics` (Prometheus text format) and `/healthz` (200 `ok`, or 503 and why, from
/// `health`) on `listener` until `shutdown`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
    health: Health,
) -> std::io::Result<()> {
    use http_body_util::Full;
    tokio::pin!(shutdown);
    loop {
        let (s, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = &mut shutdown => return Ok(()),
        };
        let health = health.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let health = health.clone();
                    async move {
                        let resp = match req.uri().path() {
                            "/metrics" => http::Response::builder()
                                .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                                .body(Full::new(bytes::Bytes::from(metrics::render()))),
                            "/healthz" => {
                                let (status, text) = match health().await {
                                    Ok(()) => (200, "ok\n".to_owned()),
                                    Err(why) => (503, format!("not ready: {why}\n")),
                                };
                                http::Response::builder()
                                    .status(status)
                                    .header(http::header::CONTENT_TYPE, "text/plain")
                                    .body(Full::new(bytes::Bytes::from(text)))
                            }
                            _ => http::Response::builder()
                                .status(404)
                                .body(Full::new(bytes::Bytes::from_static(b"not found\n"))),
                        };
                        Ok::<_, std::convert::Infallible>(resp.expect("well-formed"))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
    }
}

/// Runs the registry of `config` until `shutdown`: the API listener, the metrics listener (when
/// configured), the upload purger and the scheduled garbage collection (`gc_interval`). `ready` is
/// called with the bound API address.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&str),
) -> std::io::Result<()> {
    check(&config).await?;
    let listener = Listener::bind(&config.listen).await?;
    let mut config = config;
    if let Listener::Tcp(l) = &listener {
        // `source.addr` of the events: this host and the port bound (`--listen :0` included).
        let port = l.local_addr()?.port();
        config.notifications.source_addr = format!("{}:{port}", events::config::host_name());
    }
    let registry = open(&config)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = match &config.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(addr = %l.local_addr()?, "metrics listening");
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(serve_metrics(
                l,
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
                registry_health(registry.clone()),
            )))
        }
        None => None,
    };
    start_notifications(&registry, &config);
    let purger = spawn_upload_purger(registry.clone(), &config);
    let gc = config
        .gc_interval
        .map(|every| gc::spawn_scheduler(registry.clone(), every, config.gc_grace));
    let stop_housekeeping = move || {
        purger.abort();
        if let Some(gc) = &gc {
            gc.abort();
        }
    };
    let addr = listener.describe();
    tracing::info!(addr = %addr, storage = %describe_storage(&config), delete = config.delete_enabled, "registry-core listening");
    ready(&addr);
    let mut rx = stop_rx;
    let res = serve(listener, registry.clone(), async move {
        let _ = rx.wait_for(|s| *s).await;
    });
    tokio::pin!(res);
    tokio::select! {
        r = &mut res => { stop_housekeeping(); return r; }
        _ = shutdown => {}
    }
    let _ = stop_tx.send(true);
    let r = res.await;
    stop_housekeeping();
    if let Some(n) = registry.notifier() {
        // The events of the last requests go to the store before the process ends.
        n.flush(std::time::Duration::from_secs(5)).await;
    }
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    r
}
