//! registry-edge: an HTTPS + basic-auth edge for container registries, built on pingora, that runs
//! registry-core in-process by default or fronts any Distribution-compatible registry.
//!
//! How the modules fit:
//!
//! - [`config`]: `proxy.toml` + `REGISTRY_EDGE_*` overrides into a validated [`config::Config`].
//! - [`tls`]: certificate loading and validation, the swappable certificate resolver, the
//!   HTTPS acceptor, the certificate of the one-command start, signed by a CA of the edge's own
//!   (`ca.crt`, kept with its key so that renewed certificates stay trusted), and
//!   [`tls::acme`]: certificates from an ACME CA (orders, challenges, renewal, port 80).
//! - [`client`]: who the client is behind trusted proxies (`X-Forwarded-For`, PROXY protocol).
//! - [`conn`]: client connections before HTTP: the per-address cap, the TLS handshake under a
//!   deadline (a readable 400 for plain HTTP), and the deadline on each request's header block.
//! - [`auth`]: htpasswd (bcrypt) parsing, first-user creation, the cached verifier and the
//!   bounded pool of bcrypt threads; [`auth::token`]: token mode's ES256 JWTs (the signing key,
//!   issuing, verifying, scopes and what the rules grant of them).
//! - [`lockout`]: failed logins per client address (reserved before bcrypt runs) and per user
//!   name (slowed, never refused); 429 with a growing delay.
//! - [`request`]: a `/v2/` request parsed and validated into its canonical form, the only form
//!   that is authorized and forwarded.
//! - [`access`]: access rules (users, groups, repository patterns, pull/push/delete).
//! - [`proxy`]: the pingora `ProxyHttp` implementation: auth (Basic, or Bearer tokens and the
//!   `/token` endpoint in `proxy/token.rs`), parsing, access rules, then either
//!   the embedded registry-core's handler called in-process (`proxy/embedded.rs`), or the
//!   upstream pool ([`proxy::upstream`]: every address of every URL, health-checked, round robin
//!   or least connections, upload affinity) and forwarding headers; the filtered catalog
//!   (`proxy/catalog.rs`), the API-version and configured headers, and the JSON error answers.
//! - [`ui`]: the web UI at `/` (askama pages, embedded assets, English and Chinese), reading
//!   through the registry API with the same access rules; logins through the same check and
//!   lockout as Basic auth.
//! - [`secret`]: the shared secret that signs UI sessions (configured, or generated once).
//! - [`lifecycle`]: readiness, the SIGTERM drain and the SIGQUIT binary upgrade.
//! - [`reload`]: the certificate and htpasswd files reloaded on change and on SIGHUP, and the
//!   certificate's upkeep (re-issued for new names, renewed before it expires).
//! - [`metrics`]: `regedge_*` Prometheus metrics, served with the core's `regcore_*` ones.
//! - [`run`] (here): checks every file first, then starts pingora with the TLS listener, the
//!   embedded registry-core's housekeeping (its requests are answered in-process by [`proxy`],
//!   with no socket between the two) or the upstream health checks, and the metrics listener
//!   (`/metrics`, and `/healthz` for balancers).
#![forbid(unsafe_code)]

pub mod access;
pub mod auth;
pub mod client;
pub mod config;
pub mod conn;
pub mod lifecycle;
pub mod lockout;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod request;
pub mod secret;
pub mod tls;
pub mod ui;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::auth::{Authenticator, Htpasswd};
use crate::config::{Config, Upstream};
use crate::proxy::{Edge, Timeouts, Upstreams};
use crate::tls::CertStore;

pub use crate::lifecycle::Signals;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Secret(#[from] secret::SecretError),
    #[error(transparent)]
    TokenKey(#[from] auth::token::KeyError),
    #[error("{0}")]
    Ui(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use storage {what}: {source}")]
    Storage {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether the embedded registry's storage can be used (for S3: the endpoint answers, the
/// bucket exists, the credentials are accepted), before anything listens. On a runtime of its
/// own: the serving runtimes do not exist yet.
pub fn check_storage(core: &registry_core::Config) -> Result<(), StartError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| StartError::Storage {
            what: registry_core::describe_storage(core),
            source,
        })?;
    rt.block_on(registry_core::check(core))
        .map_err(|source| StartError::Storage {
            what: registry_core::describe_storage(core),
            source,
        })
}

/// What `prepare` made ready: the certificate and the users.
pub struct Prepared {
    /// `None` when TLS is off (`[tls] enabled = false`).
    pub certs: Option<Arc<CertStore>>,
    pub auth: Arc<Authenticator>,
    /// The shared secret (configured, or generated and kept), when the UI is on.
    pub secret: Option<Arc<secret::Secret>>,
    /// The token service, in token mode.
    pub tokens: Option<Arc<auth::token::Tokens>>,
    /// With `[tls.acme]`: the challenges answered, and the cached certificate's validity.
    pub acme: Option<(Arc<tls::acme::Challenges>, Option<tls::acme::Validity>)>,
}

/// The certificate files of `config`.
pub fn cert_files(config: &Config) -> tls::self_signed::Files {
    tls::self_signed::Files {
        cert: config.cert.clone(),
        key: config.key.clone(),
        ca: config.ca.clone(),
    }
}

/// The names the certificate should cover for `config`.
pub fn wanted_names(config: &Config) -> tls::self_signed::Wanted {
    tls::self_signed::Wanted::for_listener(&config.hosts, &config.listen)
}

/// Loads the certificate (making it for the one-command start, or re-issuing our own when it no
/// longer covers the configured names) and the htpasswd file (creating it with a first user).
pub fn prepare(config: &Config) -> Result<Prepared, StartError> {
    let mut acme = None;
    let certs = if let (true, Some(settings)) = (config.tls, &config.acme) {
        // The CA's certificate (cached) or a temporary one until it comes; never the files.
        let challenges = Arc::new(tls::acme::Challenges::default());
        let (key, issued) = tls::acme::initial(settings)?;
        acme = Some((challenges.clone(), issued));
        Some(Arc::new(CertStore::with_challenges(key, challenges)))
    } else if config.tls {
        tls::upkeep(
            &cert_files(config),
            &wanted_names(config),
            config.self_signed,
        )?;
        Some(Arc::new(CertStore::new(tls::load_certified_key(
            &config.cert,
            &config.key,
        )?)))
    } else {
        None
    };
    if !config.htpasswd.exists() {
        if let Some(user) = &config.first_user {
            let password = auth::create_first_user(&config.htpasswd, user, config.bcrypt_cost)?;
            tracing::warn!(file = %config.htpasswd.display(), user = %user, "created the htpasswd file with a first user");
            // Printed once, on stdout, so it can be captured; it is stored only as a bcrypt hash.
            println!(
                "registry-edge: first user created in {}",
                config.htpasswd.display()
            );
            println!("  username: {user}");
            println!("  password: {password}");
        }
    }
    let users = Htpasswd::load(&config.htpasswd)?;
    metrics::HTPASSWD_USERS.set(users.len() as i64);
    let secret = match (&config.ui, &config.secret) {
        (None, _) => None,
        (Some(_), Some(s)) => Some(s.clone()),
        (Some(_), None) => Some(Arc::new(secret::Secret::from_file(&config.secret_file)?)),
    };
    let tokens = match &config.token {
        None => None,
        Some(settings) => {
            let (key, created) = auth::token::SigningKey::load_or_create(&settings.key)?;
            if created {
                tracing::warn!(file = %settings.key.display(), kid = key.kid(), "created the token signing key; edges that share the work must share this file");
            }
            Some(Arc::new(auth::token::Tokens::new(settings.clone(), key)))
        }
    };
    ui::text::check().map_err(StartError::Ui)?;
    Ok(Prepared {
        certs,
        auth: Arc::new(Authenticator::new(users)),
        secret,
        tokens,
        acme,
    })
}

/// The embedded registry-core's housekeeping: purging stale uploads, and the scheduled garbage
/// collection when `[storage] gc_interval` is set. (Its requests are served
/// in-process by the proxy, see `proxy::Edge::serve_embedded`.)
struct CoreService {
    config: registry_core::Config,
    registry: Arc<registry_core::Registry>,
}

#[async_trait]
impl BackgroundService for CoreService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        registry_core::start_notifications(&self.registry, &self.config);
        let purger = registry_core::spawn_upload_purger(self.registry.clone(), &self.config);
        let gc = self.config.gc_interval.map(|every| {
            tracing::info!(every = %humantime::format_duration(every), grace = %humantime::format_duration(self.config.gc_grace), "scheduled garbage collection on");
            registry_core::gc::spawn_scheduler(self.registry.clone(), every, self.config.gc_grace)
        });
        let _ = shutdown.changed().await;
        purger.abort();
        if let Some(gc) = gc {
            gc.abort();
        }
    }
}

/// The upstream pool's active health checks, every `[upstream] health_interval`.
struct HealthService {
    pool: Arc<proxy::upstream::Pool>,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let connector = pingora::connectors::http::Connector::new(None);
        let every = self.pool.policy.health_interval;
        loop {
            let started = tokio::time::Instant::now();
            self.pool.check(&connector).await;
            tokio::select! {
                _ = tokio::time::sleep_until(started + every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// `/metrics` on its own listener: bound before start, or (after a binary upgrade, while the
/// old process still holds the port) bound here as soon as the port is free.
struct MetricsService {
    addr: String,
    /// What `/healthz` answers.
    health: registry_core::Health,
    listener: Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for MetricsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let bound = self.listener.lock().expect("listener lock").take();
        let l = match bound {
            Some(l) => tokio::net::TcpListener::from_std(l),
            None => loop {
                match tokio::net::TcpListener::bind(&self.addr).await {
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                            _ = shutdown.changed() => return,
                        }
                    }
                    r => {
                        tracing::info!(addr = %self.addr, "metrics listening");
                        break r;
                    }
                }
            },
        };
        let l = match l {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "metrics listener failed");
                return;
            }
        };
        let _ = registry_core::serve_metrics(
            l,
            async move {
                let _ = shutdown.changed().await;
            },
            self.health.clone(),
        )
        .await;
    }
}

/// Runs the edge until `args.shutdown_signal` fires (SIGTERM by default): every file is checked
/// before anything listens, then pingora serves until shutdown. On a graceful terminate the
/// requests in flight drain when `args` is [`Signals`], as the binary runs it. With `upgrade`,
/// the listening sockets come from a running edge (see [`lifecycle`]) instead of being bound.
pub fn run(config: Config, args: RunArgs, upgrade: bool) -> Result<(), StartError> {
    metrics::init();
    let files = conn::raise_open_files_limit();
    tracing::info!(
        limit = files.map_or("unlimited".to_owned(), |n| n.to_string()),
        per_address = config.connections.per_address,
        "open-files limit"
    );
    let prepared = prepare(&config)?;
    if let Upstream::Embedded(core) = &config.upstream {
        check_storage(core)?;
    }
    let listen_err = |addr: &str| {
        let addr = addr.to_owned();
        move |source| StartError::Listen { addr, source }
    };
    if !upgrade {
        // Fail early and clearly if the port is taken (pingora would exit with a terse log line).
        drop(std::net::TcpListener::bind(&config.listen).map_err(listen_err(&config.listen))?);
    }

    let drain = config.drain_timeout;
    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(drain.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: config.upgrade_socket.to_string_lossy().into_owned(),
        // A second per try: the operator has this long to send SIGQUIT to the old process.
        upgrade_sock_connect_accept_max_retries: Some(lifecycle::UPGRADE_WAIT.as_secs() as usize),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    if upgrade {
        tracing::info!(
            socket = %config.upgrade_socket.display(),
            wait_s = lifecycle::UPGRADE_WAIT.as_secs(),
            "upgrade: waiting for the running edge's listening sockets; send it SIGQUIT"
        );
    }
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    if upgrade {
        // Its presence tells a later SIGQUIT that a new process waits (see `lifecycle`).
        let _ = std::fs::remove_file(&config.upgrade_socket);
        tracing::info!("upgrade: listening sockets received");
    }
    server.add_service(background_service(
        "upgrade-drain",
        lifecycle::UpgradeDrain { drain },
    ));

    let upstreams = match &config.upstream {
        Upstream::Embedded(core_config) => {
            let what = registry_core::describe_storage(core_config);
            let registry =
                registry_core::open(core_config).map_err(|source| StartError::Storage {
                    what: what.clone(),
                    source,
                })?;
            tracing::info!(storage = %what, delete = core_config.delete_enabled, "embedded registry-core");
            if registry.notifier().is_some() {
                let _ = lifecycle::EVENTS.set(registry.clone());
            }
            let core = CoreService {
                config: (**core_config).clone(),
                registry: registry.clone(),
            };
            server.add_service(background_service("registry-core", core));
            Upstreams::Embedded(registry)
        }
        Upstream::Urls(urls) => {
            let pool = Arc::new(proxy::upstream::Pool::new(
                urls.clone(),
                config.upstream_policy.clone(),
            ));
            server.add_service(background_service(
                "upstream-health",
                HealthService { pool: pool.clone() },
            ));
            Upstreams::Pool(pool)
        }
    };
    if let Some(addr) = &config.metrics_listen {
        // After an upgrade the old process holds the port until it exits.
        let listener = if upgrade {
            None
        } else {
            let l = std::net::TcpListener::bind(addr).map_err(listen_err(addr))?;
            l.set_nonblocking(true).map_err(listen_err(addr))?;
            tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics listening");
            Some(l)
        };
        server.add_service(background_service(
            "metrics",
            MetricsService {
                addr: addr.clone(),
                health: match &upstreams {
                    Upstreams::Embedded(r) => registry_core::registry_health(r.clone()),
                    Upstreams::Pool(pool) => {
                        let pool = pool.clone();
                        Arc::new(move || {
                            let ok = pool.any_healthy();
                            Box::pin(async move {
                                if ok {
                                    Ok(())
                                } else {
                                    Err("no upstream passed its last health check".to_owned())
                                }
                            })
                        })
                    }
                },
                listener: Mutex::new(listener),
            },
        ));
    }

    let edge = Edge {
        catalog_connector: pingora::connectors::http::Connector::new(None),
        auth: prepared.auth.clone(),
        tokens: prepared.tokens.clone(),
        realm: config.realm.clone(),
        upstreams,
        access: config.access.clone(),
        lockout: crate::lockout::Lockout::new(config.lockout.clone()),
        timeouts: Timeouts {
            client_idle: config.idle_timeout,
            connect: config.connect_timeout,
            upstream_read: config.read_timeout,
            upstream_write: config.write_timeout,
        },
        trusted: Arc::new(config.trusted.clone()),
        headers: config.headers.clone(),
        tls: config.tls,
        ui: config.ui.as_ref().map(|u| {
            let (delete_enabled, gc_grace) = match &config.upstream {
                Upstream::Embedded(core) => (core.delete_enabled, core.gc_grace),
                // An upstream answers a delete it does not allow itself.
                Upstream::Urls(_) => (true, Duration::ZERO),
            };
            let secret = prepared.secret.clone().expect("prepared with the UI");
            ui::Ui::new(
                u.title.clone(),
                secret,
                u.session_ttl,
                delete_enabled,
                gc_grace,
            )
        }),
    };
    let conf = server.configuration.clone();
    let mut proxy = pingora::proxy::http_proxy(&conf, edge);
    // pingora's bounded defaults (header-list size, concurrent streams), with larger windows:
    // the default 64 KiB h2 windows make uploads over HTTP/2 several times slower.
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.initial_window_size(8 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .max_frame_size(1024 * 1024);
    proxy.h2_options = Some(h2);
    let acme_alpn = config
        .acme
        .as_ref()
        .is_some_and(|a| a.challenge == tls::acme::Challenge::TlsAlpn01);
    let acceptor = match &prepared.certs {
        Some(certs) => Some(tls::acceptor(certs.clone(), config.http2, acme_alpn)),
        None => {
            let loopback = config
                .listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback());
            if loopback {
                tracing::warn!("TLS is off ([tls] enabled = false): plain HTTP on loopback");
            } else {
                tracing::warn!(
                    listen = %config.listen,
                    "TLS IS OFF ([tls] enabled = false) on a listener other machines can reach: passwords and images cross the network in the clear unless a TLS terminator in front of this edge is the only way in"
                );
            }
            None
        }
    };
    // The client port is a TCP listener whose connections `conn::Guard` counts, hands through
    // the TLS handshake under a deadline, and passes to the proxy.
    let guard = conn::Guard {
        app: Arc::new(proxy),
        acceptor,
        limits: config.connections,
        counts: Arc::new(conn::Counts::default()),
        trusted: Arc::new(config.trusted.clone()),
    };
    let mut service = Service::new("registry-edge".to_owned(), guard);
    service.add_tcp(&config.listen);
    let proxy_handle = server.add_service(service);
    let acme_force = match (&config.acme, &prepared.acme, &prepared.certs) {
        (Some(settings), Some((challenges, issued)), Some(certs)) => {
            if let Some(addr) = &settings.http_listen {
                let https_port = config
                    .listen
                    .parse::<std::net::SocketAddr>()
                    .map_or(443, |a| a.port());
                let http = tls::acme::HttpService::bind(addr, challenges.clone(), https_port)
                    .map_err(listen_err(addr))?;
                server.add_service(background_service("acme-http", http));
            }
            let force = Arc::new(tokio::sync::Notify::new());
            let manager = tls::acme::Manager::new(
                settings.clone(),
                certs.clone(),
                challenges.clone(),
                *issued,
                force.clone(),
            );
            server.add_service(background_service("acme", manager));
            Some(force)
        }
        _ => None,
    };
    // With ACME the certificate is the CA's, not the files': only the htpasswd is watched.
    let watched_certs = if acme_force.is_some() {
        None
    } else {
        prepared.certs.clone()
    };
    server.add_service(background_service(
        "reloader",
        reload::Reloader::new(&config, watched_certs, prepared.auth.clone(), acme_force),
    ));
    let ready = server.add_service(background_service(
        "ready",
        lifecycle::ReadyLog(config.listen.clone()),
    ));
    ready.add_dependency(&proxy_handle);

    for name in &config.ignored_env {
        tracing::warn!(setting = %name, "registry:2 setting not supported by registry-edge: ignored");
    }
    let upstream = match &config.upstream {
        Upstream::Embedded(c) => format!(
            "embedded registry-core, storage {}",
            registry_core::describe_storage(c)
        ),
        Upstream::Urls(urls) => urls
            .iter()
            .map(|u| format!("{}://{}", if u.tls { "https" } else { "http" }, u.addr))
            .collect::<Vec<_>>()
            .join(", "),
    };
    tracing::info!(
        listen = %config.listen,
        upstream = %upstream,
        tls = config.tls,
        users = metrics::HTPASSWD_USERS.get(),
        access_rules = config.access.count(),
        trusted_proxies = config.trusted.len(),
        proxy_protocol = config.trusted.proxy_protocol,
        "registry-edge starting"
    );
    let shared_store = matches!(&config.upstream, Upstream::Embedded(c)
        if matches!(c.storage, registry_core::config::StorageDriver::S3(_)));
    if shared_store && config.ui.is_some() && config.secret.is_none() {
        tracing::warn!(
            secret_file = %config.secret_file.display(),
            "the storage is an S3 bucket, which several edges may share: give every edge the same [server] secret (REGISTRY_HTTP_SECRET), or a UI login on one is refused by the others"
        );
    }
    server.run(args);
    Ok(())
}
