//! The `ProxyHttp` implementation: in `request_filter` the lockout check, authentication and the
//! access rules; upstream choice; forwarding headers; the API-version header on every `/v2/`
//! answer; the catalog filtered to what the user may pull; and the JSON error bodies of the edge's
//! own answers (401, 403, 404, 429, 502/503/504). [`embedded`] answers with the in-process
//! registry-core; [`catalog`] serves the filtered catalog; [`token`] is token mode (the `/token`
//! endpoint, the JWKS, the Bearer check and its challenges).
//!
//! Who a request is: in Basic mode the htpasswd user of its credentials, or, without
//! credentials, `anonymous` when the rules let anonymous clients do all the request needs (else
//! 401). In token mode the subject of a valid token (`anonymous` for an anonymous token), and the
//! request needs both a token that grants it and rules that allow it now.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use registry_core::Registry;

use crate::access::{self, Action, Rules, ANONYMOUS};
use crate::auth::{parse_basic, Authenticator, Busy, Denied};
use crate::lockout::{Lockout, Refused, MAX_USER_LEN};
use crate::metrics;
use crate::request::{self, ApiRequest};
use registry_core::routes::Route;

mod catalog;
mod embedded;
pub mod token;
pub mod upstream;

pub(crate) use upstream::Answer;

/// Where requests go.
pub enum Upstreams {
    /// The embedded registry-core, called in this process (see [`Edge::serve_embedded`]).
    Embedded(Arc<Registry>),
    /// Registries behind a balanced, health-checked pool ([`upstream`]).
    Pool(Arc<upstream::Pool>),
}

impl Upstreams {
    fn count(&self) -> usize {
        match self {
            Upstreams::Embedded(_) => 1,
            Upstreams::Pool(p) => p.len().max(1),
        }
    }
}

/// Timeouts applied to each request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub client_idle: Duration,
    pub connect: Duration,
    pub upstream_read: Duration,
    pub upstream_write: Duration,
}

/// The edge.
pub struct Edge {
    pub auth: Arc<Authenticator>,
    /// Token mode's token service; `None`: Basic auth.
    pub tokens: Option<Arc<crate::auth::token::Tokens>>,
    pub realm: String,
    pub upstreams: Upstreams,
    pub timeouts: Timeouts,
    pub access: Rules,
    pub lockout: Lockout,
    /// For the edge's own requests to upstreams (reading the catalog to filter it).
    pub catalog_connector: pingora::connectors::http::Connector,
    /// Proxies believed about the client's address.
    pub trusted: Arc<crate::client::Trusted>,
    /// Headers added to every answer (`[server.headers]`).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Whether clients reach the edge over TLS (`[tls] enabled`).
    pub tls: bool,
    /// The web UI at `/`, unless `[ui] enabled = false`.
    pub ui: Option<crate::ui::Ui>,
}

/// What a login check decided.
pub(crate) enum Verdict {
    /// The user, as the htpasswd file names it.
    Ok(String),
    Invalid,
    /// Too many failures from this address: how long until the next try.
    Locked(Duration),
    /// Too many checks in flight: how long to wait, and why.
    Busy(Duration, &'static str),
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    pub(crate) route: &'static str,
    pub(crate) user: Option<String>,
    /// The final status sent (recorded here: after a `100 Continue` pingora reports 100).
    pub(crate) status: u16,
    /// The upstream of the current attempt (counted in flight while held), the addresses
    /// tried, and attempts so far.
    upstream: Option<upstream::Lease>,
    tried: Vec<std::net::SocketAddr>,
    tries: usize,
    counted: bool,
    /// The client's address.
    pub(crate) client: Option<IpAddr>,
    /// The scheme the client used: `https`, or `http` when TLS is off here and no trusted
    /// proxy says otherwise.
    pub(crate) proto: &'static str,
    /// The request as parsed and authorized: only its canonical form goes on.
    api: Option<ApiRequest>,
    /// How long the answer took, when the edge answered itself (so a [`linger`] afterwards is
    /// not counted in the request's duration).
    answered_in: Option<Duration>,
}

/// The registry's JSON error body.
pub fn error_body(code: &str, message: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({ "errors": [{ "code": code, "message": message, "detail": null }] })
            .to_string(),
    )
}

/// Request headers a client could use to lie about itself to the upstream: the edge sets its
/// own values (or none).
const SPOOFABLE: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "x-real-ip",
    "x-original-uri",
    "x-original-url",
    "x-rewrite-url",
];

fn is_api(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// The client's address: the connection's peer (as the PROXY protocol of a trusted proxy gave
/// it), or, from a trusted proxy, what its `X-Forwarded-For` says.
fn client_ip(session: &Session, trusted: &crate::client::Trusted) -> Option<IpAddr> {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())?;
    let forwarded = session
        .req_header()
        .headers
        .get_all("x-forwarded-for")
        .into_iter()
        .map(|v| v.as_bytes());
    Some(trusted.forwarded_client(peer, forwarded))
}

/// The host the client addressed: its `Host` header, or the authority of an HTTP/2 request.
pub(crate) fn client_host(req: &RequestHeader) -> Option<http::HeaderValue> {
    req.headers.get(http::header::HOST).cloned().or_else(|| {
        req.uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    })
}

/// Whether the request carries a body the edge did not read.
fn has_body(req: &RequestHeader) -> bool {
    let cl = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    cl.is_some_and(|n| n > 0) || req.headers.contains_key(http::header::TRANSFER_ENCODING)
}

/// Whether the client waits for `100 Continue` before sending its body.
fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// How long in all, and how long between reads, the edge goes on reading an HTTP/1 request body
/// after answering without it (as nginx's `lingering_time` and `lingering_timeout`).
const LINGER_TOTAL: Duration = Duration::from_secs(30);
const LINGER_IDLE: Duration = Duration::from_secs(5);

/// Reads and discards what is left of a request body after the answer has gone out, for a
/// bounded time, before the connection closes. Closing a socket with unread data makes the kernel
/// reset the connection, and a client still sending its body (most HTTP/1 clients write the
/// whole body before they read) then sees a failed write instead of the answer. HTTP/2 ends the
/// stream instead, and a body already read needs nothing.
async fn linger(session: &mut Session) {
    if session.is_http2() || session.is_body_done() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TOTAL;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(LINGER_IDLE.min(left), session.read_request_body()).await {
            Ok(Ok(Some(_))) => {}
            _ => return,
        }
    }
}

impl Edge {
    /// Sets the configured headers (`[server.headers]`) on an answer, replacing an upstream's.
    pub(crate) fn decorate(&self, h: &mut ResponseHeader) -> Result<()> {
        for (name, _) in &self.headers {
            h.remove_header(name);
        }
        for (name, value) in &self.headers {
            h.append_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    /// The client's scheme, for `X-Forwarded-Proto`.
    fn client_proto(&self, session: &Session) -> &'static str {
        if self.tls {
            return "https";
        }
        let from_trusted = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|a| self.trusted.contains(a.ip()));
        let says_https = session
            .req_header()
            .headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        if from_trusted && says_https {
            "https"
        } else {
            "http"
        }
    }

    /// Answers with an error of the registry's shape.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        code: &str,
        message: &str,
        challenge: Option<&str>,
        retry_after: Option<Duration>,
    ) -> Result<()> {
        let body = error_body(code, message);
        let mut h = ResponseHeader::build(status, Some(6))?;
        h.insert_header("Content-Type", "application/json")?;
        h.insert_header("Content-Length", body.len().to_string())?;
        h.insert_header("Docker-Distribution-Api-Version", "registry/2.0")?;
        if let Some(c) = challenge {
            h.insert_header("WWW-Authenticate", c)?;
        }
        if let Some(d) = retry_after {
            h.insert_header("Retry-After", d.as_secs_f64().ceil().max(1.0).to_string())?;
        }
        if has_body(session.req_header()) {
            // The body was not read (with `Expect: 100-continue` it was never sent): the
            // connection cannot carry another request.
            session.set_keepalive(None);
        }
        self.send_own(session, ctx, h, body).await
    }

    /// Sends an answer the edge made itself (an error, the filtered catalog, `/token`, a UI
    /// page): records its status, adds the configured headers, and sends the body unless the
    /// request was a HEAD or there is none.
    pub(crate) async fn send_own(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut h: ResponseHeader,
        body: Bytes,
    ) -> Result<()> {
        ctx.status = h.status.as_u16();
        self.decorate(&mut h)?;
        let head = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(h), head || body.is_empty())
            .await?;
        if !head && !body.is_empty() {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }

    /// Checks a login (Basic credentials of an API request, or the web UI's login form) with
    /// the lockout, and counts the outcome. Cached credentials pass without bcrypt and without
    /// the lockout (they are known to be right); anything else reserves an attempt with the
    /// lockout before bcrypt runs, on its own bounded pool.
    pub(crate) async fn check_login(
        &self,
        ip: Option<IpAddr>,
        user: &str,
        password: &str,
    ) -> Verdict {
        let verdict = self.verdict(ip, user, password).await;
        let outcome = match &verdict {
            Verdict::Ok(_) => "ok",
            Verdict::Invalid => "invalid",
            Verdict::Locked(_) => "locked_out",
            Verdict::Busy(..) => "busy",
        };
        metrics::AUTH.with_label_values(&[outcome]).inc();
        verdict
    }

    async fn verdict(&self, ip: Option<IpAddr>, user: &str, password: &str) -> Verdict {
        if let Some(u) = self.auth.cached(user, password) {
            metrics::AUTH_CACHE.with_label_values(&["hit"]).inc();
            return Verdict::Ok(u.0);
        }
        if user.len() > MAX_USER_LEN {
            // Not looked at, not stored: counted against the address only.
            if let Some(wait) = ip.and_then(|ip| self.lockout.blocked(ip)) {
                return Verdict::Locked(wait);
            }
            self.lockout.failure_without_check(ip);
            return Verdict::Invalid;
        }
        let attempt = match self.lockout.begin(ip, user) {
            Ok(a) => a,
            Err(Refused::Blocked(wait)) => return Verdict::Locked(wait),
            Err(Refused::Busy(wait)) => {
                let msg = "too many logins being checked for this client; retry shortly";
                return Verdict::Busy(wait, msg);
            }
        };
        if let Some(d) = attempt.user_delay {
            // The user name is being guessed at from many places: slow the check, never refuse.
            tokio::time::sleep(d).await;
        }
        metrics::AUTH_CACHE.with_label_values(&["miss"]).inc();
        match self.auth.check(user, password).await {
            Ok(Ok(u)) => {
                attempt.succeeded();
                Verdict::Ok(u.0)
            }
            Ok(Err(_)) => {
                attempt.failed();
                Verdict::Invalid
            }
            Err(Busy) => {
                // Dropped unresolved: not counted as a failure.
                drop(attempt);
                let msg = "too many logins being checked; retry shortly";
                Verdict::Busy(Duration::from_secs(1), msg)
            }
        }
    }

    /// Authentication of an API request: the user, or `None` when the request was answered
    /// here (401, 429).
    async fn authenticate(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Option<String>> {
        let header = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION);
        let parsed = header.map_or(Err(Denied::Missing), |h| parse_basic(h.as_bytes()));
        let (user, password) = match parsed {
            Ok(c) => c,
            // A probe without credentials, or a header that is not Basic: not a guess.
            Err(Denied::Malformed) => {
                metrics::AUTH.with_label_values(&["malformed"]).inc();
                let msg = "malformed Authorization header: Basic credentials expected";
                return self.refuse(session, ctx, 401, msg, None).await;
            }
            Err(_) if self.access.names_anonymous() => {
                // Decided once the request is known: anonymous clients may do what the rules
                // name them for, and are asked to log in for anything else.
                return Ok(Some(ANONYMOUS.to_owned()));
            }
            Err(_) => {
                metrics::AUTH.with_label_values(&["missing"]).inc();
                let msg = "authentication required";
                return self.refuse(session, ctx, 401, msg, None).await;
            }
        };
        match self.check_login(ctx.client, &user, &password).await {
            Verdict::Ok(u) => Ok(Some(u)),
            Verdict::Invalid => {
                let msg = "invalid username or password";
                self.refuse(session, ctx, 401, msg, None).await
            }
            Verdict::Locked(wait) => {
                let msg = "too many failed logins; try again later";
                self.refuse(session, ctx, 429, msg, Some(wait)).await
            }
            Verdict::Busy(wait, msg) => self.refuse(session, ctx, 429, msg, Some(wait)).await,
        }
    }

    /// Refuses a login: answers 401 (with the challenge) or 429 (with `Retry-After`), and says
    /// there is no user.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        message: &str,
        retry_after: Option<Duration>,
    ) -> Result<Option<String>> {
        let basic = format!("Basic realm=\"{}\"", self.realm);
        let (code, challenge) = if status == 401 {
            ("UNAUTHORIZED", Some(basic.as_str()))
        } else {
            ("TOOMANYREQUESTS", None)
        };
        self.respond(session, ctx, status, code, message, challenge, retry_after)
            .await?;
        Ok(None)
    }

    /// Authentication, then the request parsed and validated, then the access rules: true when
    /// the request was answered here (refused), false when it may go on to the registry, in
    /// the canonical form kept in `ctx.api`.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        metrics::IN_FLIGHT.inc();
        ctx.counted = true;
        ctx.client = client_ip(session, &self.trusted);
        ctx.proto = self.client_proto(session);
        let idle = self.timeouts.client_idle;
        session.set_read_timeout(Some(idle));
        session.set_write_timeout(Some(idle));
        if crate::conn::last_request() {
            // The edge is about to exit: this is the connection's last request.
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(idle.as_secs()));
        }
        let path = session.req_header().uri.path().to_owned();
        ctx.route = metrics::route_class(&path);
        if !is_api(&path) {
            if let Some(tokens) = &self.tokens {
                if path == token::TOKEN_PATH || path == token::JWKS_PATH {
                    self.serve_token(tokens, session, ctx).await?;
                    return Ok(true);
                }
            }
            // The web UI (or the API's 404 when it is off).
            self.serve_ui(session, ctx).await?;
            return Ok(true);
        }
        // Who asks: a token's subject (token mode), or a Basic user; `anonymous` without
        // credentials in Basic mode when some rule names anonymous clients.
        let claims = match &self.tokens {
            Some(tokens) => match self.bearer(tokens, session) {
                token::Bearer::Valid(c) => Some(c),
                token::Bearer::Missing => {
                    let scope = self.scope_of_request(session);
                    let msg = "authentication required";
                    self.challenge_bearer(tokens, session, ctx, &scope, None, msg)
                        .await?;
                    return Ok(true);
                }
                token::Bearer::Invalid(e) => {
                    let scope = self.scope_of_request(session);
                    let error = Some("invalid_token");
                    self.challenge_bearer(tokens, session, ctx, &scope, error, e.message())
                        .await?;
                    return Ok(true);
                }
            },
            None => None,
        };
        let user = match &claims {
            Some(c) => c.user().to_owned(),
            None => match self.authenticate(session, ctx).await? {
                Some(u) => u,
                None => return Ok(true),
            },
        };
        ctx.user = Some(user.clone());
        let anonymous_basic = claims.is_none() && user == ANONYMOUS;
        let req = session.req_header();
        let api = match request::parse(&req.method, &path, req.uri.query()) {
            Ok(api) => api,
            Err(_) if anonymous_basic => {
                metrics::AUTH.with_label_values(&["missing"]).inc();
                let msg = "authentication required";
                self.refuse(session, ctx, 401, msg, None).await?;
                return Ok(true);
            }
            Err(r) => {
                self.respond(session, ctx, r.status, r.code, &r.message, None, None)
                    .await?;
                return Ok(true);
            }
        };
        let need = access::required(&req.method, &api.route, api.param("from"));
        let denied = need
            .iter()
            .find(|(repo, action)| !self.access.allows(&user, repo, *action));
        if anonymous_basic && (need.is_empty() || denied.is_some()) {
            // Not something anonymous clients may do: the login challenge, as before.
            metrics::AUTH.with_label_values(&["missing"]).inc();
            let msg = "authentication required";
            self.refuse(session, ctx, 401, msg, None).await?;
            return Ok(true);
        }
        if let (Some(tokens), Some(c)) = (&self.tokens, &claims) {
            let scope = token::scope_of(&api.route, &need);
            let catalog_refused = api.route == Route::Catalog && !self.access.may_list(&user);
            if (denied.is_some() || catalog_refused) && user == ANONYMOUS {
                // Anonymous clients are asked to log in rather than told no.
                let msg = "authentication required";
                let error = Some("insufficient_scope");
                self.challenge_bearer(tokens, session, ctx, &scope, error, msg)
                    .await?;
                return Ok(true);
            }
            if denied.is_none() && !catalog_refused && !Self::token_covers(c, &api.route, &need) {
                // Allowed, but not by this token: the client asks for one that covers it.
                let msg = "the token does not grant this request";
                let error = Some("insufficient_scope");
                self.challenge_bearer(tokens, session, ctx, &scope, error, msg)
                    .await?;
                return Ok(true);
            }
        }
        if let Some((repo, action)) = denied {
            let what = match action {
                Action::Pull => "pull from",
                Action::Push => "push to",
                Action::Delete => "delete in",
            };
            let msg =
                format!("requested access to the resource is denied: {user} may not {what} {repo}");
            self.respond(session, ctx, 403, "DENIED", &msg, None, None)
                .await?;
            return Ok(true);
        }
        let filtered_catalog = api.route == Route::Catalog && !self.access.is_open();
        ctx.api = Some(api);
        if filtered_catalog {
            self.serve_catalog(session, ctx, &user).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The scope a request needs, for a challenge; empty when it does not parse.
    fn scope_of_request(&self, session: &Session) -> String {
        let req = session.req_header();
        match request::parse(&req.method, req.uri.path(), req.uri.query()) {
            Ok(api) => {
                let need = access::required(&req.method, &api.route, api.param("from"));
                token::scope_of(&api.route, &need)
            }
            Err(_) => String::new(),
        }
    }

    /// The upstream for this attempt: the pool's choice (an upload's requests by its id),
    /// passing over the addresses already tried.
    fn pick(&self, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let upload = match ctx.api.as_ref().map(|a| &a.route) {
            Some(Route::Upload { id, .. }) => Some(id.as_str()),
            _ => None,
        };
        let lease = self.lease(upload, &ctx.tried)?;
        ctx.tried.push(lease.0.addr);
        let peer = lease.0.peer(&self.timeouts);
        ctx.upstream = Some(lease);
        Ok(peer)
    }

    /// A target of the pool, held (counted in flight) until the lease is dropped.
    fn lease(
        &self,
        upload: Option<&str>,
        tried: &[std::net::SocketAddr],
    ) -> Result<upstream::Lease> {
        match &self.upstreams {
            Upstreams::Embedded(_) => Err(Error::explain(
                ErrorType::InternalError,
                "the embedded registry is not proxied to",
            )),
            Upstreams::Pool(pool) => pool.choose(upload, tried),
        }
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            route: "other",
            user: None,
            status: 0,
            upstream: None,
            tried: Vec::new(),
            tries: 0,
            counted: false,
            client: None,
            proto: "https",
            api: None,
            answered_in: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        crate::conn::header_done(session.as_downstream());
        // Requests a client sends ahead are answered in order (RFC 9112 9.3.2), not dropped.
        session.as_downstream_mut().set_pipelining_enabled(true);
        let answered = if self.admit(session, ctx).await? {
            true
        } else if let Upstreams::Embedded(registry) = &self.upstreams {
            self.serve_embedded(registry, session, ctx).await?;
            true
        } else {
            false
        };
        if answered {
            ctx.answered_in = Some(ctx.start.elapsed());
            linger(session).await;
        }
        Ok(answered)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.tries += 1;
        self.pick(ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        metrics::UPSTREAM_ERRORS
            .with_label_values(&["connect"])
            .inc();
        if let Some(lease) = ctx.upstream.take() {
            lease.0.refused();
        }
        // Nothing was sent yet: another upstream may take the request.
        if ctx.tries < self.upstreams.count() {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let method = &session.req_header().method;
        let readonly = method == http::Method::GET || method == http::Method::HEAD;
        if readonly
            && e.esource() == &ErrorSource::Upstream
            && session.response_written().is_none()
            && ctx.tries < self.upstreams.count()
        {
            // A read whose upstream failed before answering: another upstream may answer it.
            if let Some(lease) = ctx.upstream.take() {
                lease.0.refused();
            }
            e.set_retry(true);
        } else if !method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // HTTP/2 requests carry an absolute URI and no Host header: forward origin-form with Host.
        if let Some(authority) = upstream.uri.authority().map(|a| a.to_string()) {
            if !upstream.headers.contains_key(http::header::HOST) {
                upstream.insert_header(http::header::HOST, authority)?;
            }
        }
        // Only the canonical form that was parsed and authorized goes upstream, never the
        // client's bytes.
        let Some(api) = ctx.api.as_ref() else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(404),
                "nothing is forwarded that was not parsed",
            ));
        };
        upstream.set_uri(
            api.target
                .parse()
                .map_err(|_| Error::explain(ErrorType::InternalError, "canonical target"))?,
        );
        // The edge is where the client's address and scheme are known: what the client says
        // about them is dropped, and the edge's own values are set.
        for h in SPOOFABLE {
            upstream.remove_header(*h);
        }
        upstream.insert_header("X-Forwarded-Proto", ctx.proto)?;
        if let Some(ip) = ctx.client {
            upstream.insert_header("X-Forwarded-For", ip.to_string())?;
            upstream.insert_header("X-Real-IP", ip.to_string())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !resp.status.is_informational() {
            ctx.status = resp.status.as_u16();
        }
        if is_api(session.req_header().uri.path()) {
            resp.insert_header("Docker-Distribution-Api-Version", "registry/2.0")?;
        }
        self.decorate(resp)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        use ErrorType::*;
        let (code, kind, message) = match (e.esource(), e.etype()) {
            (_, HTTPStatus(c)) => (*c, None, "request refused"),
            (ErrorSource::Upstream, ConnectTimedout | ReadTimedout | WriteTimedout) => {
                (504, Some("timeout"), "the registry did not answer in time")
            }
            (
                ErrorSource::Upstream,
                ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError,
            ) => (503, Some("connect"), "the registry is unavailable"),
            (ErrorSource::Upstream, _) => (502, Some("other"), "bad answer from the registry"),
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => (0, None, ""),
            (ErrorSource::Downstream, ReadTimedout | WriteTimedout) => (0, None, ""),
            (ErrorSource::Downstream, _) => (400, None, "bad request"),
            _ => (500, None, "internal error"),
        };
        if let Some(k) = kind {
            // Connect failures were counted in fail_to_connect.
            if k != "connect" {
                metrics::UPSTREAM_ERRORS.with_label_values(&[k]).inc();
            }
        }
        if code > 0 && session.response_written().is_none() {
            // pingora closes the connection after a failed proxy attempt: say so, or the client
            // reuses a dead connection.
            session.set_keepalive(None);
            let errcode = match code {
                400 => "BAD_REQUEST",
                502..=504 => "UNAVAILABLE",
                _ => "UNKNOWN",
            };
            if let Err(we) = self
                .respond(session, ctx, code, errcode, message, None, None)
                .await
            {
                tracing::debug!(error = %we, "could not send the error answer");
            }
        }
        if code > 0 && ctx.status == 0 {
            ctx.status = code;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        crate::conn::request_done(session.as_downstream());
        if !ctx.counted {
            // Never reached request_filter (e.g. a malformed request): nothing to account.
            return;
        }
        metrics::IN_FLIGHT.dec();
        let req = session.req_header();
        let method = registry_core::metrics::method_label(&req.method);
        let path = req.uri.path().to_owned();
        let status = if ctx.status != 0 {
            ctx.status
        } else {
            session.response_written().map_or(0, |r| r.status.as_u16())
        };
        let elapsed = ctx.answered_in.unwrap_or_else(|| ctx.start.elapsed());
        let (bytes_in, bytes_out) = (session.body_bytes_read(), session.body_bytes_sent());
        metrics::REQUESTS
            .with_label_values(&[ctx.route, method, &metrics::code_label(status)])
            .inc();
        metrics::DURATION
            .with_label_values(&[ctx.route, method])
            .observe(elapsed.as_secs_f64());
        metrics::REQUEST_BYTES
            .with_label_values(&[ctx.route])
            .inc_by(bytes_in as u64);
        metrics::RESPONSE_BYTES
            .with_label_values(&[ctx.route])
            .inc_by(bytes_out as u64);
        tracing::info!(
            target: "access",
            method = %req.method,
            path = %path,
            status,
            bytes_in,
            bytes_out,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            user = ctx.user.as_deref().unwrap_or("-"),
            client = %ctx.client.map_or("-".to_owned(), |ip| ip.to_string()),
            error = e.map(|e| e.to_string()),
        );
    }
}
