//! Certificates from an ACME CA (RFC 8555: Let's Encrypt, step-ca, Pebble...) with
//! `instant-acme`, as `[tls.acme]` configures it.
//!
//! - At start the cached certificate is served when it covers the domains and is in date;
//!   otherwise a temporary self-signed one (and a log line saying why) until the CA issues one,
//!   so the HTTPS port answers handshakes from the first second.
//! - [`Manager`] orders a certificate when there is none, at two thirds of its lifetime, and on
//!   SIGHUP; it answers the CA's challenge (tls-alpn-01 on the HTTPS port through the
//!   certificate resolver, RFC 8737, or http-01 on the port-80 listener of [`HttpService`]),
//!   finalizes with a new P-256 key, and swaps the certificate into the resolver: handshakes
//!   from then on present it, connections already open keep theirs.
//! - The account's credentials and the certificate with its key are kept in the cache directory
//!   with mode 0600, so a restart orders nothing. The account is per directory URL.
//! - A failure (the CA unreachable, a challenge refused, a rate limit) is logged with its reason
//!   and counted, and retried with a doubling delay (10 s to 1 h, ±10 %); the certificate in use
//!   stays.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::server::ClientHello;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{load_certified_key, write_file, CertStore, TlsError};
use crate::metrics;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, generous rate limits).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// The ALPN protocol of tls-alpn-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The first retry after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long one order may take, challenges and issuance included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// The challenge the CA is asked to validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// On the HTTPS port: a certificate for the ALPN protocol `acme-tls/1`.
    TlsAlpn01,
    /// On port 80: `/.well-known/acme-challenge/<token>`.
    Http01,
}

/// `[tls.acme]`, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub domains: Vec<String>,
    /// Contact address given to the CA (may be empty).
    pub email: String,
    pub directory_url: String,
    /// Extra roots trusted for the CA's own HTTPS (a private CA).
    pub ca_roots: Vec<PathBuf>,
    pub challenge: Challenge,
    /// The port-80 listener (http-01 answers, and redirects to HTTPS).
    pub http_listen: Option<String>,
    /// The directory of the account and certificate files.
    pub cache: PathBuf,
}

impl Settings {
    fn cert_path(&self) -> PathBuf {
        self.cache.join("certificate.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.cache.join("certificate.key")
    }

    /// One account per CA: the file is named by the directory URL.
    fn account_path(&self) -> PathBuf {
        use sha2::Digest;
        let h = sha2::Sha256::digest(self.directory_url.as_bytes());
        self.cache
            .join(format!("account-{}.json", hex::encode(&h[..6])))
    }
}

/// The answers to the challenges in flight.
#[derive(Default)]
pub struct Challenges {
    /// tls-alpn-01: the certificate to present for a domain.
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// http-01: the key authorization for a token.
    http: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges")
    }
}

impl Challenges {
    /// For a handshake offering `acme-tls/1`: the challenge certificate of its server name
    /// (`Some(None)` when there is none: the handshake fails). `None`: an ordinary handshake.
    pub fn for_hello(&self, hello: &ClientHello<'_>) -> Option<Option<Arc<CertifiedKey>>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if !acme {
            return None;
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        let found = self.alpn.read().expect("challenges").get(&name).cloned();
        metrics::ACME_CHALLENGES
            .with_label_values(&[
                "tls-alpn-01",
                if found.is_some() {
                    "answered"
                } else {
                    "unknown"
                },
            ])
            .inc();
        Some(found)
    }

    /// The key authorization for an http-01 token.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        self.http.read().expect("challenges").get(token).cloned()
    }

    fn clear(&self) {
        self.alpn.write().expect("challenges").clear();
        self.http.write().expect("challenges").clear();
    }
}

/// A certificate for `names` with a new P-256 key, self-signed, and optionally carrying the
/// acmeIdentifier extension of tls-alpn-01.
fn self_signed(names: &[String], acme_digest: Option<&[u8]>) -> Result<CertifiedKey, String> {
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    if let Some(d) = acme_digest {
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(d)];
    } else {
        let now = time_now();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(7);
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signing,
    ))
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The leaf's validity (not before, not after; Unix seconds) and whether it covers `domains`.
fn validity(key: &CertifiedKey, domains: &[String]) -> Option<(i64, i64, bool)> {
    let der = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let v = cert.validity();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let covers = domains.iter().all(|d| names.contains(d));
    Some((v.not_before.timestamp(), v.not_after.timestamp(), covers))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// When a certificate valid from `nb` to `na` is renewed: at two thirds of its lifetime.
fn renewal_at(nb: i64, na: i64) -> i64 {
    nb + (na - nb) * 2 / 3
}

/// The certificate to serve at start: the cached one when it covers the domains and is in
/// date, else a temporary self-signed one. Also returns the cached one's validity.
pub fn initial(settings: &Settings) -> Result<(CertifiedKey, Option<(i64, i64)>), TlsError> {
    let (cert, key) = (settings.cert_path(), settings.key_path());
    if cert.exists() && key.exists() {
        match load_certified_key(&cert, &key) {
            Ok(k) => match validity(&k, &settings.domains) {
                Some((nb, na, true)) if na > unix_now() => {
                    tracing::info!(cert = %cert.display(), not_after = na, "ACME: serving the cached certificate");
                    return Ok((k, Some((nb, na))));
                }
                Some((_, _, false)) => {
                    tracing::warn!(cert = %cert.display(), "ACME: the cached certificate does not cover every configured domain; ordering a new one")
                }
                _ => {
                    tracing::warn!(cert = %cert.display(), "ACME: the cached certificate has expired; ordering a new one")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "ACME: the cached certificate does not load; ordering a new one")
            }
        }
    }
    tracing::warn!(
        domains = %settings.domains.join(","),
        "ACME: no certificate from the CA yet; serving a temporary self-signed one (clients will refuse it) until the order completes"
    );
    let k = self_signed(&settings.domains, None).map_err(TlsError::Generate)?;
    Ok((k, None))
}

/// The cached certificate's validity (not before, not after; Unix seconds).
pub type Validity = (i64, i64);

/// Why an order failed.
#[derive(Debug, thiserror::Error)]
enum AcmeError {
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{0}")]
    Other(String),
}

impl From<String> for AcmeError {
    fn from(s: String) -> Self {
        AcmeError::Other(s)
    }
}

/// The background service that keeps the certificate.
pub struct Manager {
    settings: Settings,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    /// Notified on SIGHUP: order now.
    pub force: Arc<tokio::sync::Notify>,
    /// The current certificate's validity, when it is the CA's.
    issued: Mutex<Option<(i64, i64)>>,
    account: tokio::sync::Mutex<Option<Account>>,
}

impl Manager {
    pub fn new(
        settings: Settings,
        store: Arc<CertStore>,
        challenges: Arc<Challenges>,
        issued: Option<(i64, i64)>,
        force: Arc<tokio::sync::Notify>,
    ) -> Manager {
        Manager {
            settings,
            store,
            challenges,
            force,
            issued: Mutex::new(issued),
            account: tokio::sync::Mutex::new(None),
        }
    }

    /// How long until the next order.
    fn until_renewal(&self) -> Duration {
        match *self.issued.lock().expect("issued") {
            None => Duration::ZERO,
            Some((nb, na)) => {
                let at = renewal_at(nb, na);
                Duration::from_secs(at.saturating_sub(unix_now()).max(0) as u64)
            }
        }
    }

    /// An HTTP client for the CA that trusts the web PKI and the configured roots.
    fn http(&self) -> Result<Box<dyn instant_acme::HttpClient>, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for path in &self.settings.ca_roots {
            let pem = std::fs::read(path)
                .map_err(|e| format!("tls.acme.ca_roots: {}: {e}", path.display()))?;
            let mut n = 0;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c = c.map_err(|e| format!("tls.acme.ca_roots: {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("tls.acme.ca_roots: {}: {e}", path.display()))?;
                n += 1;
            }
            if n == 0 {
                return Err(format!(
                    "tls.acme.ca_roots: {}: no PEM certificate",
                    path.display()
                ));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client: hyper_util::client::legacy::Client<_, instant_acme::BodyWrapper<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(Box::new(client))
    }

    /// The account: kept in memory once had, else read from the cache, else created (and its
    /// credentials kept, 0600).
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut held = self.account.lock().await;
        if let Some(a) = held.as_ref() {
            return Ok(a.clone());
        }
        let path = self.settings.account_path();
        let builder = Account::builder_with_http(self.http()?);
        let account = match std::fs::read(&path) {
            Ok(bytes) => {
                let creds: AccountCredentials = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let a = builder.from_credentials(creds).await?;
                tracing::info!(account = a.id(), file = %path.display(), "ACME: using the cached account");
                a
            }
            Err(_) => {
                let contact = (!self.settings.email.is_empty())
                    .then(|| format!("mailto:{}", self.settings.email));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (a, creds) = builder
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory_url.clone(),
                        None,
                    )
                    .await?;
                let json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
                write_file(&path, &json, true).map_err(|e| e.to_string())?;
                tracing::info!(account = a.id(), file = %path.display(), "ACME: account created");
                a
            }
        };
        *held = Some(account.clone());
        Ok(account)
    }

    /// One order, from the account to the certificate in the resolver.
    async fn obtain(&self) -> Result<(), AcmeError> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = self
            .settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        tracing::info!(order = order.url(), domains = %self.settings.domains.join(","), "ACME: order placed");
        let kind = match self.settings.challenge {
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Http01 => ChallengeType::Http01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(format!("an authorization of the order is {other:?}").into());
                }
            }
            let domain = match authz.identifier().identifier {
                Identifier::Dns(d) => d.to_ascii_lowercase(),
                other => return Err(format!("unexpected identifier {other:?}").into()),
            };
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge for {domain}"))?;
            let key_auth = challenge.key_authorization();
            match kind {
                ChallengeType::TlsAlpn01 => {
                    let cert = self_signed(
                        std::slice::from_ref(&domain),
                        Some(key_auth.digest().as_ref()),
                    )?;
                    self.challenges
                        .alpn
                        .write()
                        .expect("challenges")
                        .insert(domain.clone(), Arc::new(cert));
                }
                _ => {
                    self.challenges
                        .http
                        .write()
                        .expect("challenges")
                        .insert(challenge.token.clone(), key_auth.as_str().to_owned());
                }
            }
            challenge.set_ready().await?;
            tracing::info!(domain = %domain, challenge = ?kind, "ACME: challenge ready");
        }
        let polling = RetryPolicy::new()
            .initial_delay(Duration::from_millis(500))
            .backoff(1.5)
            .timeout(Duration::from_secs(120));
        let status = order.poll_ready(&polling).await?;
        if status != OrderStatus::Ready {
            let mut why = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(a)) = authorizations.next().await {
                for c in &a.challenges {
                    if let Some(e) = &c.error {
                        why.push(format!("{}: {}", a.identifier(), e));
                    }
                }
            }
            return Err(format!(
                "the order is {status:?}: {}",
                if why.is_empty() {
                    "no reason given".to_owned()
                } else {
                    why.join("; ")
                }
            )
            .into());
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&polling).await?;
        self.challenges.clear();
        let (cert_path, key_path) = (self.settings.cert_path(), self.settings.key_path());
        write_file(&key_path, key_pem.as_bytes(), true).map_err(|e| e.to_string())?;
        write_file(&cert_path, chain_pem.as_bytes(), true).map_err(|e| e.to_string())?;
        let key = load_certified_key(&cert_path, &key_path).map_err(|e| e.to_string())?;
        let (nb, na, _) = validity(&key, &self.settings.domains)
            .ok_or_else(|| "the issued certificate does not parse".to_owned())?;
        self.store.replace(key);
        *self.issued.lock().expect("issued") = Some((nb, na));
        tracing::info!(
            domains = %self.settings.domains.join(","),
            not_after = na,
            renew_in_s = renewal_at(nb, na) - unix_now(),
            cert = %cert_path.display(),
            "ACME: certificate obtained and in use"
        );
        Ok(())
    }
}

impl Manager {
    /// [`Manager::obtain`], again at once when the CA refused a nonce (RFC 8555 6.5: a client
    /// retries with the fresh nonce; CAs refuse some on purpose, Pebble 5 %), up to 3 times.
    async fn obtain_retrying_nonces(&self) -> Result<(), AcmeError> {
        let mut tries = 0;
        loop {
            match self.obtain().await {
                Err(AcmeError::Acme(instant_acme::Error::Api(p)))
                    if tries < 3
                        && p.r#type.as_deref() == Some("urn:ietf:params:acme:error:badNonce") =>
                {
                    tries += 1;
                    tracing::debug!("ACME: the CA refused a nonce; trying again");
                }
                other => return other,
            }
        }
    }
}

/// The delay before the `n`th retry (n ≥ 1): 10 s doubling to an hour, ±10 %.
fn backoff(n: u32) -> Duration {
    use rand::Rng;
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    base.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
}

#[async_trait]
impl BackgroundService for Manager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut failures = 0u32;
        loop {
            let wait = if failures > 0 {
                backoff(failures)
            } else {
                self.until_renewal()
            };
            metrics::ACME_NEXT.set(unix_now() + wait.as_secs() as i64);
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.force.notified() => {
                        tracing::info!("ACME: renewal asked for (SIGHUP)");
                    }
                    _ = shutdown.changed() => return,
                }
            }
            let result = tokio::select! {
                r = tokio::time::timeout(ORDER_TIMEOUT, self.obtain_retrying_nonces()) => r,
                _ = shutdown.changed() => return,
            };
            self.challenges.clear();
            if let Ok(Err(AcmeError::Acme(instant_acme::Error::Api(p)))) = &result {
                if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist") {
                    // The CA forgot the account (a reset test CA, a deactivation): the next
                    // attempt makes a new one.
                    tracing::warn!(file = %self.settings.account_path().display(), "ACME: the CA does not know the cached account; a new one will be created");
                    let _ = std::fs::remove_file(self.settings.account_path());
                    *self.account.lock().await = None;
                }
            }
            match result {
                Ok(Ok(())) => {
                    failures = 0;
                    metrics::ACME_ORDERS.with_label_values(&["ok"]).inc();
                }
                outcome => {
                    failures += 1;
                    metrics::ACME_ORDERS.with_label_values(&["failed"]).inc();
                    let error = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no certificate within {} s", ORDER_TIMEOUT.as_secs()),
                    };
                    let next = backoff(failures);
                    tracing::warn!(
                        error = %error,
                        directory = %self.settings.directory_url,
                        failures,
                        retry_in_s = next.as_secs(),
                        "ACME: could not obtain a certificate; keeping the one in use"
                    );
                }
            }
        }
    }
}

/// The port-80 listener: http-01 answers, and a redirect to HTTPS for everything else.
pub struct HttpService {
    listener: Mutex<Option<std::net::TcpListener>>,
    shared: Arc<HttpShared>,
}

/// Connections the port-80 listener serves at once; more are closed at once. Each is also
/// bounded in time (10 s for its header, 30 s in all).
pub const HTTP_MAX_CONNECTIONS: usize = 256;

/// What the port-80 connections share.
struct HttpShared {
    challenges: Arc<Challenges>,
    /// The HTTPS port, for redirects (omitted when 443).
    https_port: u16,
}

impl HttpService {
    /// Binds `addr` now, so a taken port stops the start.
    pub fn bind(
        addr: &str,
        challenges: Arc<Challenges>,
        https_port: u16,
    ) -> std::io::Result<HttpService> {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        tracing::info!(addr = %l.local_addr()?, "ACME: port-80 listener (http-01, redirects to HTTPS)");
        Ok(HttpService {
            listener: Mutex::new(Some(l)),
            shared: Arc::new(HttpShared {
                challenges,
                https_port,
            }),
        })
    }
}

impl HttpShared {
    fn answer<B>(&self, req: &http::Request<B>) -> http::Response<String> {
        let reply = |status: u16, body: &str| {
            http::Response::builder()
                .status(status)
                .header("Content-Type", "text/plain; charset=utf-8")
                .body(body.to_owned())
                .expect("static response")
        };
        let path = req.uri().path();
        if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
            let answer = self.challenges.http_answer(token);
            let outcome = if answer.is_some() {
                "answered"
            } else {
                "unknown"
            };
            metrics::ACME_CHALLENGES
                .with_label_values(&["http-01", outcome])
                .inc();
            return match answer {
                Some(a) => reply(200, &a),
                None => reply(404, "no such challenge\n"),
            };
        }
        // Everything else goes to HTTPS, on the host the client named (checked, port dropped).
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| match h.rsplit_once(':') {
                Some((name, port))
                    if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']') =>
                {
                    name
                }
                _ => h,
            })
            .filter(|h| crate::ui::printable_host(h));
        let Some(host) = host else {
            return reply(400, "a Host header is needed\n");
        };
        let port = if self.https_port == 443 {
            String::new()
        } else {
            format!(":{}", self.https_port)
        };
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut r = reply(308, "");
        r.headers_mut().insert(
            http::header::LOCATION,
            http::HeaderValue::from_str(&format!("https://{host}{port}{target}"))
                .unwrap_or_else(|_| http::HeaderValue::from_static("/")),
        );
        r
    }
}

#[async_trait]
impl BackgroundService for HttpService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().expect("listener").take() else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "ACME: the port-80 listener cannot be used");
                return;
            }
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(HTTP_MAX_CONNECTIONS));
        loop {
            let stream = tokio::select! {
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
                _ = shutdown.changed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Full: this one is closed unread.
                metrics::CONNECTIONS_REFUSED
                    .with_label_values(&["acme_http_full"])
                    .inc();
                continue;
            };
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |req| {
                    let answer = shared.answer(&req);
                    async move { Ok::<_, std::convert::Infallible>(answer) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                // Bounded: port 80 serves a few small answers per connection.
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_at_two_thirds() {
        assert_eq!(renewal_at(0, 90), 60);
        assert_eq!(renewal_at(1000, 1000 + 90 * 86400), 1000 + 60 * 86400);
    }

    #[test]
    fn backoff_doubles_to_an_hour() {
        let s = |n| backoff(n).as_secs_f64();
        assert!((9.0..=11.0).contains(&s(1)), "{}", s(1));
        assert!((18.0..=22.0).contains(&s(2)));
        assert!((36.0..=44.0).contains(&s(3)));
        assert!(s(30) <= 3960.0);
    }

    #[test]
    fn challenge_certificates_carry_the_identifier() {
        let digest = [7u8; 32];
        let k = self_signed(&["registry.test".into()], Some(&digest)).unwrap();
        let der = k.cert[0].as_ref();
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        // id-pe-acmeIdentifier, critical, holding an OCTET STRING of the digest.
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &digest);
        let (_, _, covers) = validity(&k, &["registry.test".into()]).unwrap();
        assert!(covers);
        let temp = self_signed(&["a.example".into(), "b.example".into()], None).unwrap();
        let (nb, na, covers) = validity(&temp, &["a.example".into(), "b.example".into()]).unwrap();
        assert!(covers && na - nb <= 8 * 86400);
    }
}
