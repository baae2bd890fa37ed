//! The web UI at `/` on the HTTPS port (the API stays at `/v2/`): server-rendered pages from
//! askama templates, every asset embedded in the binary, working without JavaScript.
//!
//! - here: [`Ui`] (its settings), the request as the pages see it ([`Page`]: path, query,
//!   form, cookies, language, the signed-in user), routing to the pages, and the one place
//!   answers are written, with the security headers (a CSP allowing only the UI's own assets).
//! - [`pages`]: one handler per page and its template struct.
//! - [`reader`]: what the pages read, through the registry API (the embedded core's handler,
//!   or the upstream), with a cache of per-manifest summaries.
//! - [`session`]: the signed session cookie and the CSRF tokens.
//! - [`text`]: the catalogues of English and Simplified Chinese, and number formatting.
//!
//! Login goes through the same check as Basic auth ([`Edge::check_login`]: the htpasswd file,
//! the credential cache and the lockout), and every page applies the same access rules as the
//! API before it reads anything.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::proxy::{Ctx, Edge};
use crate::secret::Secret;

mod pages;
pub mod reader;
pub mod session;
pub mod text;

use session::UiSession;
use text::Lang;

/// The largest form body read (a login or a delete of many tags).
const MAX_FORM: usize = 64 << 10;
/// Query and form fields read; more are ignored.
const MAX_FIELDS: usize = 600;
/// The longest field value kept.
const MAX_FIELD: usize = 4096;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The UI's settings and state.
pub struct Ui {
    /// Shown in the header and the page titles (`[ui] title`).
    pub title: String,
    /// Signs the session cookies.
    pub secret: std::sync::Arc<Secret>,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Whether the registry deletes at all (the embedded core's `delete_enabled`; an upstream
    /// says so itself when asked).
    pub delete_enabled: bool,
    /// The embedded registry's GC grace period, for what a collection would free now.
    pub gc_grace: Duration,
    /// What the repository pages show of each manifest, by digest.
    pub summaries: reader::Summaries,
    /// The catalog, reused for a few seconds.
    pub catalog: reader::CatalogCache,
}

impl Ui {
    pub fn new(
        title: String,
        secret: std::sync::Arc<Secret>,
        session_ttl: Duration,
        delete_enabled: bool,
        gc_grace: Duration,
    ) -> Ui {
        Ui {
            title,
            secret,
            session_ttl,
            delete_enabled,
            gc_grace,
            summaries: reader::Summaries::default(),
            catalog: reader::CatalogCache::default(),
        }
    }
}

/// An answer of the UI.
pub enum Reply {
    Html {
        status: u16,
        body: String,
        cookies: Vec<String>,
    },
    Redirect {
        location: String,
        cookies: Vec<String>,
    },
    Asset {
        content_type: &'static str,
        body: &'static [u8],
    },
}

impl Reply {
    pub fn html(status: u16, body: String) -> Reply {
        Reply::Html {
            status,
            body,
            cookies: Vec::new(),
        }
    }

    pub fn redirect(location: impl Into<String>) -> Reply {
        Reply::Redirect {
            location: location.into(),
            cookies: Vec::new(),
        }
    }
}

/// A UI request as the pages see it: bounded and parsed.
pub struct Page<'a> {
    pub ui: &'a Ui,
    pub method: http::Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
    pub cookies: String,
    pub lang: Lang,
    /// The language was chosen by `?lang=`: remember it.
    pub lang_chosen: bool,
    /// The host the browser used, for the pull commands.
    pub host: String,
    pub session: Option<UiSession>,
    pub reader: reader::Reader<'a>,
}

impl Page<'_> {
    /// The first value of a query field.
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a query field.
    pub fn query_all(&self, key: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn form(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn form_all(&self, key: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        session::cookie_value(&self.cookies, name)
    }

    pub fn text(&self) -> &'static text::Text {
        self.lang.text()
    }
}

/// `key=value&...` pairs, bounded in number and length.
pub(crate) fn fields(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw)
        .take(MAX_FIELDS)
        .filter(|(k, v)| k.len() <= 64 && v.len() <= MAX_FIELD)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A host name fit to print in a pull command (`registry.example:5000`, `[::1]:5000`).
pub(crate) fn printable_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c))
}

impl Edge {
    /// Serves a UI request (anything outside `/v2/`), or the API's 404 when the UI is off.
    pub(crate) async fn serve_ui(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let Some(ui) = &self.ui else {
            let msg = "only /v2/ is served here";
            return self
                .respond(session, ctx, 404, "NOT_FOUND", msg, None, None)
                .await;
        };
        ctx.route = "ui";
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_owned();
        let query = req
            .uri
            .query()
            .map(|q| fields(q.as_bytes()))
            .unwrap_or_default();
        let header = |name: http::HeaderName| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        // HTTP/2 clients may send each cookie in a header of its own (RFC 9113 8.2.3).
        let cookies = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .take(64)
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("; ");
        let accept_language = header(http::header::ACCEPT_LANGUAGE);
        let origin = header(http::header::ORIGIN);
        let content_type = header(http::header::CONTENT_TYPE);
        let host_value = crate::proxy::client_host(req);
        let host = host_value
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .filter(|h| printable_host(h))
            .unwrap_or("localhost")
            .to_owned();
        let chosen = query
            .iter()
            .find(|(k, _)| k == "lang")
            .and_then(|(_, v)| Lang::parse(v));
        let lang = chosen
            .or_else(|| session::cookie_value(&cookies, session::LANG_COOKIE).and_then(Lang::parse))
            .unwrap_or_else(|| Lang::from_accept(&accept_language));
        let mut form = Vec::new();
        let reply = if method == http::Method::POST {
            // Forms come from this site only: a browser says where a POST comes from.
            let same_origin = origin.is_empty()
                || origin
                    .split_once("://")
                    .is_some_and(|(_, o)| o.eq_ignore_ascii_case(&host));
            match self.read_form(session, &content_type).await {
                Ok(f) if same_origin => {
                    form = f;
                    None
                }
                Ok(_) => Some(pages::message(ui, lang, 403, &lang.text().csrf_failed)),
                Err(status) => Some(pages::message(ui, lang, status, &lang.text().csrf_failed)),
            }
        } else {
            None
        };
        let user_session = session::cookie_value(&cookies, session::SESSION_COOKIE)
            .and_then(|v| UiSession::decode(v, &ui.secret))
            .filter(|s| self.ui_fingerprint(ui, &s.user).as_deref() == Some(&s.fingerprint));
        let page = Page {
            ui,
            method: method.clone(),
            path,
            query,
            form,
            cookies,
            lang,
            lang_chosen: chosen.is_some(),
            host,
            session: user_session,
            reader: reader::Reader {
                edge: self,
                host: host_value.as_ref(),
                proto: ctx.proto,
                client: ctx.client,
                summaries: &ui.summaries,
                catalog: &ui.catalog,
            },
        };
        let reply = match reply {
            Some(r) => r,
            None => pages::route(self, &page, ctx.client).await,
        };
        let lang_cookie = page
            .lang_chosen
            .then(|| session::cookie(session::LANG_COOKIE, lang.code(), 365 * 86_400));
        drop(page);
        self.write_reply(session, ctx, reply, lang_cookie).await
    }

    /// The fingerprint of a user's htpasswd entry that a session carries: a changed password
    /// or a removed user ends the user's sessions.
    pub(crate) fn ui_fingerprint(&self, ui: &Ui, user: &str) -> Option<String> {
        let entry = self.auth.entry(user)?;
        let mac = ui.secret.sign("ui-fingerprint", &[entry.as_bytes()]);
        Some(hex::encode(&mac[..8]))
    }

    /// Reads a URL-encoded form body, bounded; the status to answer when it is not one.
    pub(crate) async fn read_form(
        &self,
        session: &mut Session,
        content_type: &str,
    ) -> std::result::Result<Vec<(String, String)>, u16> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(415);
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_FORM {
                        return Err(413);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => return Err(400),
            }
        }
        Ok(fields(&body))
    }

    /// Writes a UI answer with the security headers.
    async fn write_reply(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reply: Reply,
        lang_cookie: Option<String>,
    ) -> Result<()> {
        let (status, content_type, body, cookies, location, cache) = match reply {
            Reply::Html {
                status,
                body,
                cookies,
            } => (
                status,
                "text/html; charset=utf-8",
                Bytes::from(body),
                cookies,
                None,
                "no-store",
            ),
            Reply::Redirect { location, cookies } => (
                303,
                "text/plain; charset=utf-8",
                Bytes::new(),
                cookies,
                Some(location),
                "no-store",
            ),
            Reply::Asset { content_type, body } => (
                200,
                content_type,
                Bytes::from_static(body),
                Vec::new(),
                None,
                "public, max-age=86400",
            ),
        };
        let mut h = ResponseHeader::build(status, Some(12))?;
        h.insert_header("Content-Type", content_type)?;
        h.insert_header("Content-Length", body.len().to_string())?;
        h.insert_header("Content-Security-Policy", CSP)?;
        h.insert_header("X-Content-Type-Options", "nosniff")?;
        h.insert_header("X-Frame-Options", "DENY")?;
        h.insert_header("Referrer-Policy", "same-origin")?;
        h.insert_header("Cross-Origin-Opener-Policy", "same-origin")?;
        h.insert_header("Cache-Control", cache)?;
        h.insert_header("Vary", "Cookie, Accept-Language")?;
        if let Some(l) = location {
            h.insert_header("Location", l)?;
        }
        for c in cookies.into_iter().chain(lang_cookie) {
            h.append_header("Set-Cookie", c)?;
        }
        if status == 429 {
            h.insert_header("Retry-After", "5")?;
        }
        self.send_own(session, ctx, h, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_bounded() {
        let many = "a=1&".repeat(MAX_FIELDS + 10);
        assert_eq!(fields(many.as_bytes()).len(), MAX_FIELDS);
        let long = format!("a={}&b=2", "x".repeat(MAX_FIELD + 1));
        assert_eq!(fields(long.as_bytes()), vec![("b".into(), "2".into())]);
        assert_eq!(
            fields(b"q=a%20b&tag=v1&tag=v2").len(),
            3,
            "repeated fields are kept"
        );
    }

    #[test]
    fn only_plain_hosts_go_into_pull_commands() {
        assert!(printable_host("registry.example:5000"));
        assert!(printable_host("[::1]:5000"));
        assert!(!printable_host("evil.example/<script>"));
        assert!(!printable_host(""));
    }
}
