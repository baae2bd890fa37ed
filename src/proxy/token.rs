//! Token mode on the wire: the token endpoint (`GET /token` with Basic credentials or none, and
//! OAuth2's `POST /token` with the password and refresh_token grants), the JWKS of the signing
//! key, and the Bearer check of API requests with its challenges. The tokens themselves are in
//! [`crate::auth::token`].

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::{Ctx, Edge, Verdict};
use crate::access::{Action, ANONYMOUS};
use crate::auth::token::{self, Claims, Tokens};
use crate::auth::{parse_basic, Denied};
use crate::metrics;

/// Where tokens are handed out.
pub const TOKEN_PATH: &str = "/token";
/// Where the signing key is published.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The scope a request needs, as a challenge names it (Distribution's: an upload asks for
/// `pull,push`).
pub(super) fn scope_of(route: &registry_core::routes::Route, need: &[(String, Action)]) -> String {
    if *route == registry_core::routes::Route::Catalog {
        return "registry:catalog:*".into();
    }
    need.iter()
        .map(|(repo, action)| {
            let actions = match action {
                Action::Pull => "pull",
                Action::Push => "pull,push",
                Action::Delete => "delete",
            };
            format!("repository:{repo}:{actions}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The action's name in a token.
fn action_name(a: Action) -> &'static str {
    match a {
        Action::Pull => "pull",
        Action::Push => "push",
        Action::Delete => "delete",
    }
}

/// What the Bearer check found.
pub(super) enum Bearer {
    /// A valid token.
    Valid(Arc<Claims>),
    /// No token (or another scheme): the label and message of the refusal.
    Missing,
    Invalid(token::Invalid),
}

/// An OAuth2-style refusal of the token endpoint; the body also carries the registry's
/// `errors`, which Docker's client reads.
struct Refusal {
    status: u16,
    error: &'static str,
    message: String,
    retry_after: Option<std::time::Duration>,
}

impl Refusal {
    fn new(status: u16, error: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            error,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl Edge {
    /// The realm of challenges: the configured one, or this host's `/token`.
    pub(super) fn realm_url(&self, tokens: &Tokens, session: &Session, ctx: &Ctx) -> String {
        if let Some(r) = &tokens.settings.realm {
            return r.clone();
        }
        let host = super::client_host(session.req_header())
            .and_then(|h| h.to_str().ok().map(str::to_owned))
            .filter(|h| crate::ui::printable_host(h))
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{}://{host}{TOKEN_PATH}", ctx.proto)
    }

    /// The Bearer token of an API request, checked.
    pub(super) fn bearer(&self, tokens: &Tokens, session: &Session) -> Bearer {
        let header = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let Some((scheme, value)) = header.and_then(|h| h.trim().split_once(' ')) else {
            metrics::TOKEN_CHECKS.with_label_values(&["missing"]).inc();
            return Bearer::Missing;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            metrics::TOKEN_CHECKS.with_label_values(&["missing"]).inc();
            return Bearer::Missing;
        }
        match tokens.verify(value.trim()) {
            Ok(c) => {
                if c.user() != ANONYMOUS && self.auth.entry(c.user()).is_none() {
                    // The user was removed since: the token ends with it.
                    metrics::TOKEN_CHECKS
                        .with_label_values(&["unknown_user"])
                        .inc();
                    return Bearer::Invalid(token::Invalid::BadSignature);
                }
                metrics::TOKEN_CHECKS.with_label_values(&["ok"]).inc();
                Bearer::Valid(c)
            }
            Err(e) => {
                metrics::TOKEN_CHECKS.with_label_values(&[e.label()]).inc();
                Bearer::Invalid(e)
            }
        }
    }

    /// Answers 401 with a fresh challenge for `scope`.
    pub(super) async fn challenge_bearer(
        &self,
        tokens: &Tokens,
        session: &mut Session,
        ctx: &mut Ctx,
        scope: &str,
        error: Option<&str>,
        message: &str,
    ) -> Result<()> {
        let realm = self.realm_url(tokens, session, ctx);
        let challenge = tokens.challenge(&realm, scope, error);
        self.respond(
            session,
            ctx,
            401,
            "UNAUTHORIZED",
            message,
            Some(&challenge),
            None,
        )
        .await
    }

    /// Whether the token grants everything the request needs (the rules were checked apart).
    pub(super) fn token_covers(
        claims: &Claims,
        route: &registry_core::routes::Route,
        need: &[(String, Action)],
    ) -> bool {
        if *route == registry_core::routes::Route::Catalog {
            return claims.grants("registry", "catalog", "*");
        }
        need.iter()
            .all(|(repo, a)| claims.grants("repository", repo, action_name(*a)))
    }

    /// Serves `/token` and the JWKS.
    pub(super) async fn serve_token(
        &self,
        tokens: &Tokens,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.route = "token";
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        if path == JWKS_PATH {
            if method != http::Method::GET && method != http::Method::HEAD {
                return self
                    .json(session, ctx, 405, Bytes::new(), &[("Allow", "GET, HEAD")])
                    .await;
            }
            let body = Bytes::from(tokens.jwks());
            return self
                .json(session, ctx, 200, body, &[("Cache-Control", "max-age=300")])
                .await;
        }
        let answer = match method {
            http::Method::GET => {
                let query = session.req_header().uri.query().unwrap_or("").to_owned();
                let params = crate::ui::fields(query.as_bytes());
                self.token_get(tokens, session, ctx, &params).await
            }
            http::Method::POST => {
                let ct = session
                    .req_header()
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                match self.read_form(session, &ct).await {
                    Ok(params) => self.token_post(tokens, ctx, &params).await,
                    Err(status) => Err(Refusal::new(
                        status,
                        "invalid_request",
                        "expected an application/x-www-form-urlencoded body of at most 64 KiB",
                    )),
                }
            }
            _ => {
                return self
                    .json(session, ctx, 405, Bytes::new(), &[("Allow", "GET, POST")])
                    .await
            }
        };
        match answer {
            Ok(body) => {
                let extra = [("Cache-Control", "no-store"), ("Pragma", "no-cache")];
                self.json(session, ctx, 200, Bytes::from(body.to_string()), &extra)
                    .await
            }
            Err(r) => {
                metrics::TOKEN_REFUSED.with_label_values(&[r.error]).inc();
                let body = serde_json::json!({
                    "error": r.error,
                    "error_description": r.message,
                    "errors": [{
                        "code": if r.status == 401 { "UNAUTHORIZED" } else if r.status == 429 { "TOOMANYREQUESTS" } else { "BAD_REQUEST" },
                        "message": r.message,
                        "detail": null,
                    }],
                });
                let retry;
                let mut extra = vec![("Cache-Control", "no-store")];
                if let Some(d) = r.retry_after {
                    retry = d.as_secs_f64().ceil().max(1.0).to_string();
                    extra.push(("Retry-After", retry.as_str()));
                }
                self.json(
                    session,
                    ctx,
                    r.status,
                    Bytes::from(body.to_string()),
                    &extra,
                )
                .await
            }
        }
    }

    /// `GET /token`: Basic credentials, or none for an anonymous token; `offline_token=true`
    /// adds a refresh token.
    async fn token_get(
        &self,
        tokens: &Tokens,
        session: &Session,
        ctx: &mut Ctx,
        params: &[(String, String)],
    ) -> std::result::Result<serde_json::Value, Refusal> {
        let header = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|h| h.as_bytes().to_vec());
        let user = match header.as_deref().map(parse_basic) {
            None | Some(Err(Denied::Missing)) => None,
            Some(Err(_)) => {
                metrics::AUTH.with_label_values(&["malformed"]).inc();
                return Err(Refusal::new(
                    401,
                    "invalid_client",
                    "malformed Authorization header: Basic credentials expected",
                ));
            }
            Some(Ok((user, password))) => Some(self.token_login(ctx, &user, &password).await?),
        };
        let offline = param(params, "offline_token") == Some("true");
        self.grant_token(tokens, ctx, params, user, offline, "get")
    }

    /// `POST /token`: OAuth2's password and refresh_token grants.
    async fn token_post(
        &self,
        tokens: &Tokens,
        ctx: &mut Ctx,
        params: &[(String, String)],
    ) -> std::result::Result<serde_json::Value, Refusal> {
        let offline = param(params, "access_type") == Some("offline");
        match param(params, "grant_type") {
            Some("password") => {
                let (Some(user), Some(password)) =
                    (param(params, "username"), param(params, "password"))
                else {
                    return Err(Refusal::new(
                        400,
                        "invalid_request",
                        "the password grant needs username and password",
                    ));
                };
                let user = self.token_login(ctx, user, password).await?;
                self.grant_token(tokens, ctx, params, Some(user), offline, "password")
            }
            Some("refresh_token") => {
                let Some(refresh) = param(params, "refresh_token") else {
                    return Err(Refusal::new(
                        400,
                        "invalid_request",
                        "the refresh_token grant needs refresh_token",
                    ));
                };
                let invalid = || {
                    Refusal::new(
                        401,
                        "invalid_grant",
                        "invalid or expired refresh token; log in again",
                    )
                };
                let claims = tokens.verify_refresh(refresh).map_err(|_| invalid())?;
                // A changed password or a removed user ends the refresh token.
                let current = self.auth.entry(&claims.sub).map(|e| token::fingerprint(&e));
                if current.as_deref() != Some(claims.fp.as_str()) {
                    return Err(invalid());
                }
                self.grant_token(
                    tokens,
                    ctx,
                    params,
                    Some(claims.sub),
                    false,
                    "refresh_token",
                )
            }
            Some(_) => Err(Refusal::new(
                400,
                "unsupported_grant_type",
                "grant_type must be password or refresh_token",
            )),
            None => Err(Refusal::new(
                400,
                "invalid_request",
                "grant_type is missing",
            )),
        }
    }

    /// A password check for the token endpoint: the same check, cache and lockout as Basic auth.
    async fn token_login(
        &self,
        ctx: &mut Ctx,
        user: &str,
        password: &str,
    ) -> std::result::Result<String, Refusal> {
        match self.check_login(ctx.client, user, password).await {
            Verdict::Ok(u) => Ok(u),
            Verdict::Invalid => Err(Refusal::new(
                401,
                "invalid_grant",
                "invalid username or password",
            )),
            Verdict::Locked(wait) => Err(Refusal {
                retry_after: Some(wait),
                ..Refusal::new(
                    429,
                    "too_many_requests",
                    "too many failed logins; try again later",
                )
            }),
            Verdict::Busy(wait, msg) => Err(Refusal {
                retry_after: Some(wait),
                ..Refusal::new(429, "too_many_requests", msg)
            }),
        }
    }

    /// The token (and refresh token) for `user` (`None`: anonymous) and the requested scopes,
    /// granted as the access rules allow.
    fn grant_token(
        &self,
        tokens: &Tokens,
        ctx: &mut Ctx,
        params: &[(String, String)],
        user: Option<String>,
        offline: bool,
        grant: &'static str,
    ) -> std::result::Result<serde_json::Value, Refusal> {
        if let Some(s) = param(params, "service") {
            if s != tokens.settings.service {
                return Err(Refusal::new(
                    400,
                    "invalid_request",
                    format!(
                        "unknown service; this registry is {:?}",
                        tokens.settings.service
                    ),
                ));
            }
        }
        let scopes = token::parse_scopes(
            params
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.as_str()),
        )
        .map_err(|m| Refusal::new(400, "invalid_scope", m))?;
        let who = user.as_deref().unwrap_or(ANONYMOUS);
        let access = token::grant(&self.access, who, &scopes);
        let scope_text = access
            .iter()
            .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
            .collect::<Vec<_>>()
            .join(" ");
        ctx.user = Some(who.to_owned());
        let issued = tokens.issue(user.as_deref(), access);
        let mut body = serde_json::json!({
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": issued.issued_at,
            "scope": scope_text,
        });
        let kind = if user.is_none() { "anonymous" } else { grant };
        metrics::TOKENS_ISSUED.with_label_values(&[kind]).inc();
        if let (true, Some(u)) = (offline, &user) {
            if let Some(entry) = self.auth.entry(u) {
                body["refresh_token"] = tokens.refresh_token(u, token::fingerprint(&entry)).into();
                metrics::TOKENS_ISSUED.with_label_values(&["refresh"]).inc();
            }
        }
        Ok(body)
    }

    /// Writes a JSON answer (or an empty one) with extra headers.
    async fn json(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        body: Bytes,
        extra: &[(&'static str, &str)],
    ) -> Result<()> {
        let mut h = ResponseHeader::build(status, Some(4 + extra.len()))?;
        if !body.is_empty() {
            h.insert_header("Content-Type", "application/json")?;
        }
        h.insert_header("Content-Length", body.len().to_string())?;
        for (k, v) in extra {
            h.insert_header(*k, *v)?;
        }
        if super::has_body(session.req_header()) && !session.is_body_done() {
            session.set_keepalive(None);
        }
        self.send_own(session, ctx, h, body).await
    }
}

/// The first value of a parameter.
fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}
