//! Configuration: `proxy.toml` (serde schema, unknown keys refused), overridden key by key by
//! `REGISTRY_EDGE_<SECTION>_<KEY>` environment variables, validated into [`Config`]. A bad value
//! stops the start with a message naming the key and where it came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod env;

pub use env::REGISTRY_COMPAT;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "REGISTRY_EDGE_";
/// The config file the default start reads.
pub const DEFAULT_CONFIG: &str = "proxy.toml";

const SECTIONS: &[&str] = &[
    "server",
    "tls",
    "auth",
    "upstream",
    "storage",
    "metrics",
    "access",
    "lockout",
    "log",
    "ui",
    "notifications",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    server: ServerSection,
    tls: TlsSection,
    auth: AuthSection,
    upstream: UpstreamSection,
    storage: StorageSection,
    metrics: MetricsSection,
    access: AccessSection,
    lockout: LockoutSection,
    log: LogSection,
    ui: UiSection,
    /// Webhooks of the embedded registry (registry-core's schema).
    notifications: Option<registry_core::events::NotificationsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct UiSection {
    enabled: bool,
    title: String,
    session_ttl: String,
}

impl Default for UiSection {
    fn default() -> Self {
        UiSection {
            enabled: true,
            title: "registry-edge".into(),
            session_ttl: "12h".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AccessSection {
    groups: std::collections::BTreeMap<String, Vec<String>>,
    rules: Vec<RuleSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RuleSection {
    repositories: Vec<String>,
    users: Vec<String>,
    groups: Vec<String>,
    actions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LockoutSection {
    max_failures: u32,
    max_failures_per_user: u32,
    window: String,
    base_delay: String,
    max_delay: String,
}

impl Default for LockoutSection {
    fn default() -> Self {
        LockoutSection {
            max_failures: 5,
            max_failures_per_user: 20,
            window: "5m".into(),
            base_delay: "2s".into(),
            max_delay: "15m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LogSection {
    format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: "text".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServerSection {
    listen: String,
    threads: usize,
    http2: bool,
    idle_timeout: String,
    drain_timeout: String,
    max_connections_per_address: u32,
    handshake_timeout: String,
    header_timeout: String,
    trusted_proxies: Vec<String>,
    proxy_protocol: bool,
    upgrade_socket: PathBuf,
    headers: std::collections::BTreeMap<String, toml::Value>,
    secret: String,
    secret_file: PathBuf,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "0.0.0.0:5000".into(),
            threads: 2,
            http2: true,
            idle_timeout: "15m".into(),
            drain_timeout: "30s".into(),
            max_connections_per_address: 256,
            handshake_timeout: "10s".into(),
            header_timeout: "30s".into(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            upgrade_socket: "upgrade.sock".into(),
            headers: Default::default(),
            secret: String::new(),
            secret_file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TlsSection {
    enabled: bool,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    self_signed: bool,
    hosts: Vec<String>,
    /// Certificates from an ACME CA (Let's Encrypt and compatible).
    acme: Option<AcmeSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AcmeSection {
    domains: Vec<String>,
    email: String,
    directory_url: String,
    ca_roots: Vec<PathBuf>,
    challenge: String,
    http_listen: String,
    cache: PathBuf,
}

impl Default for AcmeSection {
    fn default() -> Self {
        AcmeSection {
            domains: Vec::new(),
            email: String::new(),
            directory_url: crate::tls::acme::LETS_ENCRYPT.into(),
            ca_roots: Vec::new(),
            challenge: "tls-alpn-01".into(),
            http_listen: String::new(),
            cache: "acme".into(),
        }
    }
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            enabled: true,
            cert: "certs/domain.crt".into(),
            key: "certs/domain.key".into(),
            ca: "certs/ca.crt".into(),
            self_signed: true,
            hosts: Vec::new(),
            acme: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuthSection {
    htpasswd: PathBuf,
    realm: String,
    first_user: String,
    bcrypt_cost: u32,
    mode: String,
    service: String,
    issuer: String,
    token_ttl: String,
    refresh_ttl: String,
    token_key: PathBuf,
    token_realm: String,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            htpasswd: "auth/htpasswd".into(),
            realm: "Registry Realm".into(),
            first_user: "admin".into(),
            bcrypt_cost: 10,
            mode: "basic".into(),
            service: "registry-edge".into(),
            issuer: "registry-edge".into(),
            token_ttl: "5m".into(),
            refresh_ttl: "720h".into(),
            token_key: PathBuf::new(),
            token_realm: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct UpstreamSection {
    urls: Vec<String>,
    connect_timeout: String,
    read_timeout: String,
    write_timeout: String,
    balance: String,
    upload_affinity: bool,
    health_path: String,
    health_interval: String,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            urls: Vec::new(),
            connect_timeout: "10s".into(),
            read_timeout: "15m".into(),
            write_timeout: "15m".into(),
            balance: "round_robin".into(),
            upload_affinity: true,
            health_path: "/v2/".into(),
            health_interval: "5s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StorageSection {
    driver: String,
    root: PathBuf,
    delete_enabled: bool,
    upload_purge_age: String,
    gc_grace: String,
    gc_interval: String,
    s3: Option<registry_core::config::S3File>,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            driver: String::new(),
            s3: None,
            root: "data".into(),
            delete_enabled: true,
            upload_purge_age: "168h".into(),
            gc_grace: "1h".into(),
            gc_interval: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MetricsSection {
    listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: "127.0.0.1:5090".into(),
        }
    }
}

/// Where requests go.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// registry-core in this process, its handler called by the proxy directly.
    Embedded(Box<registry_core::Config>),
    /// One or more Distribution-compatible registries, used in turn.
    Urls(Vec<UpstreamUrl>),
}

/// An upstream registry's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `host:port`
    pub addr: String,
    pub tls: bool,
    /// Host name for SNI and certificate verification.
    pub host: String,
}

/// The web UI's settings (`[ui]`).
#[derive(Debug, Clone)]
pub struct UiConfig {
    pub title: String,
    pub session_ttl: Duration,
}

/// The validated configuration of the edge.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub threads: usize,
    pub http2: bool,
    /// How long a client connection may sit idle (between requests, or within a slow transfer).
    pub idle_timeout: Duration,
    /// How long transfers in flight may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Connection limits on the HTTPS port.
    pub connections: crate::conn::Limits,
    /// Proxies whose `X-Forwarded-For` or PROXY protocol header names the client.
    pub trusted: crate::client::Trusted,
    /// Headers added to every answer (registry:2's `http.headers`).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// TLS on the listener; off only behind another TLS terminator.
    pub tls: bool,
    /// The Unix socket over which a binary upgrade hands the listening sockets over.
    pub upgrade_socket: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Generate a self-signed certificate when `cert`/`key` are absent.
    pub self_signed: bool,
    /// Extra SANs (DNS names and IP addresses) for a generated certificate.
    pub hosts: Vec<String>,
    /// Certificates from an ACME CA (`[tls.acme]`), instead of files.
    pub acme: Option<crate::tls::acme::Settings>,
    pub htpasswd: PathBuf,
    pub realm: String,
    /// When no htpasswd file exists, create it with this user and a random password.
    pub first_user: Option<String>,
    pub bcrypt_cost: u32,
    /// Token mode (`[auth] mode = "token"`): the edge is its own token server and requests
    /// carry Bearer tokens. `None`: Basic auth.
    pub token: Option<crate::auth::token::Settings>,
    pub upstream: Upstream,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How the upstream URLs are balanced and health-checked.
    pub upstream_policy: crate::proxy::upstream::Policy,
    /// Where `/metrics` is served; `None` turns it off.
    pub metrics_listen: Option<String>,
    /// Who may do what; empty: every authenticated user may do everything.
    pub access: crate::access::Rules,
    pub lockout: crate::lockout::Policy,
    pub log_json: bool,
    /// The web UI at `/`; `None` when `[ui] enabled = false`.
    pub ui: Option<UiConfig>,
    /// The shared secret (`[server] secret`, or registry:2's `REGISTRY_HTTP_SECRET`); `None`:
    /// one is generated into `secret_file`.
    pub secret: Option<std::sync::Arc<crate::secret::Secret>>,
    /// Where a generated secret is kept: `[server] secret_file`, by default `secret` beside
    /// the htpasswd file.
    pub secret_file: PathBuf,
    /// `REGISTRY_*` (registry:2) settings in the environment that the edge does not honour and
    /// that change nothing it guards; named in a warning at start.
    pub ignored_env: Vec<String>,
    /// The file this was loaded from, and whether it could be absent: reloads read it again.
    pub source: (PathBuf, bool),
}

/// A configuration error, naming the key and where the value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: `{key}`: {message}")]
    Value {
        origin: String,
        key: String,
        message: String,
    },
}

/// Headers an operator may not set on every answer: they frame the message, or carry what
/// the registry protocol says per answer.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "content-range",
    "content-type",
    "docker-content-digest",
    "docker-distribution-api-version",
    "docker-upload-uuid",
    "keep-alive",
    "location",
    "oci-subject",
    "range",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "www-authenticate",
];

/// One `[server.headers]` entry: a name with a value, or with a list of values (registry:2
/// writes `X-Content-Type-Options: [nosniff]`).
fn response_header(
    name: &str,
    value: &toml::Value,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    let n = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    if RESERVED_HEADERS.contains(&n.as_str()) {
        return Err(format!("{name:?} is set by the registry itself"));
    }
    let values: Vec<&toml::Value> = match value {
        toml::Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    let mut out = Vec::new();
    for v in values {
        let text = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            _ => return Err(format!("{name}: values are strings")),
        };
        let v = http::HeaderValue::from_str(&text)
            .map_err(|_| format!("{name}: {text:?} is not a header value"))?;
        out.push((n.clone(), v));
    }
    Ok(out)
}

impl Config {
    /// Loads `path` (which may be absent only when `optional`) with overrides from `env`.
    pub fn load(
        path: &Path,
        optional: bool,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: origin,
                    source,
                })
            }
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        let (overridden, ignored_env) = env::apply(&mut table, env)?;
        let origin = if overridden.is_empty() {
            origin
        } else {
            format!("{origin} with {}", overridden.join(", "))
        };
        // Round-trip through text so serde errors name the key.
        let merged = toml::to_string(&table).map_err(|e| ConfigError::Parse {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        let file: FileConfig = toml::from_str(&merged).map_err(|e| ConfigError::Parse {
            origin: origin.clone(),
            message: e.message().to_owned()
                + &e.span()
                    .and_then(|s| key_at(&merged, s.start))
                    .map(|k| format!(" (key `{k}`)"))
                    .unwrap_or_default(),
        })?;
        let mut config = Self::validate(file, &origin)?;
        config.ignored_env = ignored_env;
        config.source = (path.to_owned(), optional);
        Ok(config)
    }

    fn validate(f: FileConfig, origin: &str) -> Result<Config, ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Value {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        let duration = |key: &str, v: &str| {
            humantime::parse_duration(v).map_err(|e| {
                bad(
                    key,
                    format!("{v:?} is not a duration like \"30s\" or \"15m\": {e}"),
                )
            })
        };
        if f.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "server.listen",
                format!(
                    "{:?} is not an address like \"0.0.0.0:5000\"",
                    f.server.listen
                ),
            ));
        }
        if f.server.threads == 0 || f.server.threads > 1024 {
            return Err(bad("server.threads", "must be between 1 and 1024".into()));
        }
        if !(4..=31).contains(&f.auth.bcrypt_cost) {
            return Err(bad("auth.bcrypt_cost", "must be between 4 and 31".into()));
        }
        if f.auth.realm.is_empty() || f.auth.realm.contains('"') {
            return Err(bad(
                "auth.realm",
                "must be non-empty and contain no '\"'".into(),
            ));
        }
        let first_user = match f.auth.first_user.as_str() {
            "" => None,
            crate::access::ANONYMOUS => {
                return Err(bad(
                    "auth.first_user",
                    "\"anonymous\" is reserved for clients that do not log in".into(),
                ))
            }
            u if u.contains(':') || u.chars().any(char::is_whitespace) => {
                return Err(bad(
                    "auth.first_user",
                    "must contain no ':' or whitespace".into(),
                ))
            }
            u => Some(u.to_owned()),
        };
        let token = match f.auth.mode.as_str() {
            "basic" => None,
            "token" => Some(token_settings(&f.auth, &bad, &duration)?),
            other => {
                return Err(bad(
                    "auth.mode",
                    format!("{other:?}: must be \"basic\" or \"token\""),
                ))
            }
        };
        for h in &f.tls.hosts {
            if h.is_empty() || h.contains(char::is_whitespace) {
                return Err(bad(
                    "tls.hosts",
                    format!("{h:?} is not a DNS name or IP address"),
                ));
            }
        }
        let acme = match &f.tls.acme {
            None => None,
            Some(_) if !f.tls.enabled => {
                return Err(bad(
                    "tls.acme",
                    "needs TLS on ([tls] enabled = true)".into(),
                ))
            }
            Some(a) => Some(acme_settings(a, &bad)?),
        };
        let metrics_listen = match f.metrics.listen.as_str() {
            "" => None,
            a if a.parse::<std::net::SocketAddr>().is_ok() => Some(a.to_owned()),
            a => {
                return Err(bad(
                    "metrics.listen",
                    format!("{a:?} is not an address like \"127.0.0.1:5090\""),
                ))
            }
        };
        let access = crate::access::Rules::new(
            f.access.groups,
            f.access
                .rules
                .into_iter()
                .map(|r| (r.repositories, r.users, r.groups, r.actions))
                .collect(),
        )
        .map_err(|(key, m)| bad(key, m))?;
        let lockout = crate::lockout::Policy {
            max_failures: f.lockout.max_failures,
            max_failures_per_user: f.lockout.max_failures_per_user,
            window: duration("lockout.window", &f.lockout.window)?,
            base_delay: duration("lockout.base_delay", &f.lockout.base_delay)?,
            max_delay: duration("lockout.max_delay", &f.lockout.max_delay)?,
        };
        let log_json = match f.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(bad(
                    "log.format",
                    format!("{other:?}: must be \"text\" or \"json\""),
                ))
            }
        };
        let secret = match f.server.secret.as_str() {
            "" => None,
            s if s.len() < crate::secret::MIN_SECRET_LEN => {
                return Err(bad(
                    "server.secret",
                    format!(
                        "is {} characters; use at least {} (e.g. `openssl rand -hex 32`)",
                        s.len(),
                        crate::secret::MIN_SECRET_LEN
                    ),
                ))
            }
            s => Some(std::sync::Arc::new(crate::secret::Secret::from_configured(
                s,
            ))),
        };
        let secret_file = if f.server.secret_file.as_os_str().is_empty() {
            f.auth
                .htpasswd
                .parent()
                .unwrap_or(Path::new(""))
                .join("secret")
        } else {
            f.server.secret_file.clone()
        };
        let ui = if f.ui.enabled {
            let title = f.ui.title.trim().to_owned();
            if title.is_empty() || title.chars().count() > 100 {
                return Err(bad("ui.title", "must be 1 to 100 characters".into()));
            }
            let session_ttl = duration("ui.session_ttl", &f.ui.session_ttl)?;
            if session_ttl < Duration::from_secs(60) {
                return Err(bad("ui.session_ttl", "must be at least 1m".into()));
            }
            Some(UiConfig { title, session_ttl })
        } else {
            None
        };
        let upstream_policy = crate::proxy::upstream::Policy {
            balance: match f.upstream.balance.as_str() {
                "round_robin" => crate::proxy::upstream::Balance::RoundRobin,
                "least_connections" => crate::proxy::upstream::Balance::LeastConnections,
                other => {
                    return Err(bad(
                        "upstream.balance",
                        format!("{other:?}: must be \"round_robin\" or \"least_connections\""),
                    ))
                }
            },
            upload_affinity: f.upstream.upload_affinity,
            health_path: match f.upstream.health_path.as_str() {
                p if p.starts_with('/') && http::uri::PathAndQuery::try_from(p).is_ok() => {
                    p.to_owned()
                }
                p => {
                    return Err(bad(
                        "upstream.health_path",
                        format!("{p:?}: must be a path like \"/v2/\""),
                    ))
                }
            },
            health_interval: duration("upstream.health_interval", &f.upstream.health_interval)?,
        };
        if upstream_policy.health_interval < Duration::from_millis(100) {
            return Err(bad(
                "upstream.health_interval",
                "must be at least 100ms".into(),
            ));
        }
        if ui.is_some() && secret.is_none() && f.upstream.urls.len() > 1 {
            return Err(bad(
                "server.secret",
                format!(
                    "[upstream] urls names {} registries: several edges usually front them, and each must accept the UI sessions the others sign. Set [server] secret (or REGISTRY_HTTP_SECRET) to the same value of at least {} characters on every edge (e.g. `openssl rand -hex 32`), or turn the UI off ([ui] enabled = false)",
                    f.upstream.urls.len(),
                    crate::secret::MIN_SECRET_LEN
                ),
            ));
        }
        let mut nets = Vec::new();
        for p in &f.server.trusted_proxies {
            nets.push(p.parse().map_err(|m| bad("server.trusted_proxies", m))?);
        }
        if f.server.proxy_protocol && nets.is_empty() {
            return Err(bad(
                "server.proxy_protocol",
                "needs server.trusted_proxies: the addresses of the proxies that send it".into(),
            ));
        }
        let trusted = crate::client::Trusted::new(nets, f.server.proxy_protocol);
        let mut headers = Vec::new();
        for (name, value) in &f.server.headers {
            headers.extend(response_header(name, value).map_err(|m| bad("server.headers", m))?);
        }
        let connections = crate::conn::Limits {
            per_address: f.server.max_connections_per_address,
            handshake_timeout: duration("server.handshake_timeout", &f.server.handshake_timeout)?,
            header_timeout: duration("server.header_timeout", &f.server.header_timeout)?,
        };
        for (key, d) in [
            ("server.handshake_timeout", connections.handshake_timeout),
            ("server.header_timeout", connections.header_timeout),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be more than zero".into()));
            }
        }
        let upstream = if f.upstream.urls.is_empty() {
            let mut core = registry_core::Config {
                root: f.storage.root.clone(),
                delete_enabled: f.storage.delete_enabled,
                // No driver named: S3 when `[storage.s3]` names a bucket, else the filesystem.
                storage: registry_core::config::storage_driver(
                    Some(f.storage.driver.as_str())
                        .filter(|d| !d.is_empty())
                        .or(f
                            .storage
                            .s3
                            .as_ref()
                            .filter(|s| s.bucket.is_some())
                            .map(|_| "s3")),
                    f.storage.s3.as_ref(),
                    origin,
                )
                .map_err(|e| match e {
                    registry_core::config::ConfigError::Value { key, message, .. } => {
                        bad(&format!("storage.{key}"), message)
                    }
                    e => bad("storage", e.to_string()),
                })?,
                ..Default::default()
            };
            core.upload_purge_age =
                duration("storage.upload_purge_age", &f.storage.upload_purge_age)?;
            core.gc_grace = duration("storage.gc_grace", &f.storage.gc_grace)?;
            core.gc_interval = registry_core::config::parse_gc_interval(&f.storage.gc_interval)
                .map_err(|m| bad("storage.gc_interval", m))?;
            if let Some(n) = &f.notifications {
                let port = f
                    .server
                    .listen
                    .parse::<std::net::SocketAddr>()
                    .ok()
                    .map(|a| a.port());
                core.notifications = n.validate(port).map_err(|m| bad("notifications", m))?;
            }
            // Served in-process by the proxy: the core listens nowhere.
            core.listen = String::new();
            core.metrics_listen = None;
            Upstream::Embedded(Box::new(core))
        } else {
            if f.notifications
                .as_ref()
                .is_some_and(|n| !n.endpoints.is_empty())
            {
                return Err(bad(
                    "notifications",
                    "the registries in [upstream] urls send their own events: configure the endpoints there (here they apply to the embedded registry only)".into(),
                ));
            }
            let mut urls = Vec::new();
            for u in &f.upstream.urls {
                urls.push(parse_url(u).map_err(|m| bad("upstream.urls", format!("{u:?}: {m}")))?);
            }
            Upstream::Urls(urls)
        };
        Ok(Config {
            listen: f.server.listen,
            threads: f.server.threads,
            http2: f.server.http2,
            idle_timeout: duration("server.idle_timeout", &f.server.idle_timeout)?,
            drain_timeout: duration("server.drain_timeout", &f.server.drain_timeout)?,
            connections,
            trusted,
            headers,
            tls: f.tls.enabled,
            upgrade_socket: f.server.upgrade_socket,
            cert: f.tls.cert,
            key: f.tls.key,
            ca: f.tls.ca,
            self_signed: f.tls.self_signed,
            acme,
            hosts: f.tls.hosts,
            htpasswd: f.auth.htpasswd,
            realm: f.auth.realm,
            first_user,
            bcrypt_cost: f.auth.bcrypt_cost,
            token,
            upstream,
            connect_timeout: duration("upstream.connect_timeout", &f.upstream.connect_timeout)?,
            read_timeout: duration("upstream.read_timeout", &f.upstream.read_timeout)?,
            write_timeout: duration("upstream.write_timeout", &f.upstream.write_timeout)?,
            upstream_policy,
            metrics_listen,
            access,
            lockout,
            log_json,
            ui,
            secret,
            secret_file,
            ignored_env: Vec::new(),
            source: (PathBuf::new(), true),
        })
    }
}

/// `[tls.acme]` validated.
fn acme_settings(
    a: &AcmeSection,
    bad: &dyn Fn(&str, String) -> ConfigError,
) -> Result<crate::tls::acme::Settings, ConfigError> {
    use crate::tls::acme::{Challenge, Settings};
    if a.domains.is_empty() {
        return Err(bad(
            "tls.acme.domains",
            "name at least one domain, e.g. [\"registry.example.com\"]".into(),
        ));
    }
    let mut domains = Vec::new();
    for d in &a.domains {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        // An IP address is not a name (its last label would be all digits).
        let numeric_tld = d
            .rsplit('.')
            .next()
            .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()));
        if d.len() > 253 || !d.contains('.') || numeric_tld || !d.split('.').all(label_ok) {
            return Err(bad(
                "tls.acme.domains",
                format!("{d:?} is not a DNS name an ACME CA can validate (no IP addresses, no wildcards)"),
            ));
        }
        if !domains.contains(&d) {
            domains.push(d);
        }
    }
    let email = a.email.trim().to_owned();
    if !email.is_empty()
        && (!email.contains('@') || email.contains(char::is_whitespace) || email.len() > 254)
    {
        return Err(bad(
            "tls.acme.email",
            format!("{email:?} is not an e-mail address"),
        ));
    }
    let url = a.directory_url.trim();
    if !url.starts_with("https://") || url.contains(char::is_whitespace) {
        return Err(bad(
            "tls.acme.directory_url",
            format!("{url:?}: an ACME directory is an https:// URL"),
        ));
    }
    let challenge = match a.challenge.as_str() {
        "tls-alpn-01" => Challenge::TlsAlpn01,
        "http-01" => Challenge::Http01,
        other => {
            return Err(bad(
                "tls.acme.challenge",
                format!("{other:?}: must be \"tls-alpn-01\" or \"http-01\""),
            ))
        }
    };
    let http_listen = match a.http_listen.as_str() {
        "" => None,
        l if l.parse::<std::net::SocketAddr>().is_ok() => Some(l.to_owned()),
        l => {
            return Err(bad(
                "tls.acme.http_listen",
                format!("{l:?} is not an address like \"0.0.0.0:80\""),
            ))
        }
    };
    if challenge == Challenge::Http01 && http_listen.is_none() {
        return Err(bad(
            "tls.acme.http_listen",
            "http-01 needs the port-80 listener, e.g. http_listen = \"0.0.0.0:80\"".into(),
        ));
    }
    if a.cache.as_os_str().is_empty() {
        return Err(bad("tls.acme.cache", "must name a directory".into()));
    }
    Ok(Settings {
        domains,
        email,
        directory_url: url.to_owned(),
        ca_roots: a.ca_roots.clone(),
        challenge,
        http_listen,
        cache: a.cache.clone(),
    })
}

/// Token mode's settings from `[auth]`.
fn token_settings(
    a: &AuthSection,
    bad: &dyn Fn(&str, String) -> ConfigError,
    duration: &dyn Fn(&str, &str) -> Result<Duration, ConfigError>,
) -> Result<crate::auth::token::Settings, ConfigError> {
    // Quoted in challenges and compared in tokens: plain printable ASCII.
    let plain = |key: &str, v: &str| {
        let ok = !v.is_empty()
            && v.len() <= 200
            && v.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if ok {
            Ok(v.to_owned())
        } else {
            Err(bad(
                key,
                format!("{v:?}: 1 to 200 printable characters, no spaces, '\"' or '\\'"),
            ))
        }
    };
    let ttl = duration("auth.token_ttl", &a.token_ttl)?;
    if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(86_400) {
        return Err(bad(
            "auth.token_ttl",
            "must be between 1m (clients treat shorter as 60 s) and 24h".into(),
        ));
    }
    let refresh_ttl = duration("auth.refresh_ttl", &a.refresh_ttl)?;
    if refresh_ttl < ttl {
        return Err(bad(
            "auth.refresh_ttl",
            "must be at least auth.token_ttl".into(),
        ));
    }
    let realm = match a.token_realm.as_str() {
        "" => None,
        r => {
            let r = plain("auth.token_realm", r)?;
            if !(r.starts_with("https://") || r.starts_with("http://")) {
                return Err(bad(
                    "auth.token_realm",
                    format!("{r:?}: must be a URL like \"https://registry.example.com/token\""),
                ));
            }
            Some(r)
        }
    };
    let key = if a.token_key.as_os_str().is_empty() {
        a.htpasswd
            .parent()
            .unwrap_or(Path::new(""))
            .join("token.key")
    } else {
        a.token_key.clone()
    };
    Ok(crate::auth::token::Settings {
        service: plain("auth.service", &a.service)?,
        issuer: plain("auth.issuer", &a.issuer)?,
        ttl,
        refresh_ttl,
        key,
        realm,
    })
}

/// The dotted key whose value starts at byte `pos` of TOML `text` written by `toml::to_string`.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let mut section = String::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').to_owned();
        }
        if pos >= offset && pos < offset + line.len() {
            let key = t.split('=').next()?.trim().to_owned();
            if key.starts_with('[') {
                return None;
            }
            return Some(if section.is_empty() {
                key
            } else {
                format!("{section}.{key}")
            });
        }
        offset += line.len();
    }
    None
}

/// Parses `http://host:port` or `https://host[:port]` (a path is not allowed).
pub fn parse_url(u: &str) -> Result<UpstreamUrl, String> {
    let (tls, rest) = if let Some(r) = u.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = u.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("must start with http:// or https://".into());
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err("must be scheme://host[:port] with no path or credentials".into());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h.to_owned(), p),
            Err(_) => return Err(format!("bad port {p:?}")),
        },
        _ => (rest.to_owned(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok(UpstreamUrl {
        addr: format!("{host}:{port}"),
        tls,
        host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
    })
}

#[cfg(test)]
mod tests;
