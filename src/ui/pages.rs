//! One handler per page, each with its template struct (`templates/*.html`); errors become a
//! message page in one place ([`message`]).

use std::net::IpAddr;
use std::sync::OnceLock;

use askama::Template;
use futures_util::StreamExt;
use registry_core::digest::Digest;
use registry_core::name::{RepoName, Tag};
use serde_json::Value;

use super::reader::{self, ReadError};
use super::session::{self, UiSession};
use super::text::{self, fill, Lang, Text};
use super::{Page, Reply, Ui};
use crate::access::Action;
use crate::proxy::{Edge, Upstreams, Verdict};

/// Repositories per page of the list.
const PER_PAGE: usize = 50;
/// Tags deleted by one form.
const MAX_DELETE: usize = 500;
/// The longest filter kept.
const MAX_FILTER: usize = 200;

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");
const ICON: &str = include_str!("assets/icon.svg");

/// A short hash of the assets, in their URLs, so browsers may cache them for a day and still
/// see a new version at once.
fn asset_version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(CSS);
        h.update(JS);
        h.update(ICON);
        hex::encode(&h.finalize()[..6])
    })
}

/// What every page has: the header, the language switch, the logout form.
pub struct Layout {
    pub t: &'static Text,
    pub title: String,
    pub page_title: String,
    pub signed_in: bool,
    pub signed_in_as: String,
    pub csrf: String,
    pub switch_href: String,
    pub switch_lang: &'static str,
    pub nav: &'static str,
    pub assets: &'static str,
}

fn layout(ui: &Ui, lang: Lang, page: Option<&Page>, page_title: &str, nav: &'static str) -> Layout {
    let t = lang.text();
    let session = page.and_then(|p| p.session.as_ref());
    let other = lang.other();
    // The switch links to this page in the other language.
    let switch_href = match page {
        Some(p) if p.method == http::Method::GET => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in p.query.iter().filter(|(k, _)| k != "lang") {
                q.append_pair(k, v);
            }
            q.append_pair("lang", other.code());
            format!("{}?{}", p.path, q.finish())
        }
        _ => format!("/?lang={}", other.code()),
    };
    Layout {
        t,
        title: ui.title.clone(),
        page_title: page_title.to_owned(),
        signed_in: session.is_some(),
        signed_in_as: session.map_or(String::new(), |s| {
            fill(&t.signed_in_as, &[("user", &s.user)])
        }),
        csrf: session.map_or(String::new(), |s| s.csrf.clone()),
        switch_href,
        switch_lang: other.code(),
        nav,
        assets: asset_version(),
    }
}

fn render(status: u16, t: impl Template) -> Reply {
    match t.render() {
        Ok(body) => Reply::html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "UI template failed");
            Reply::html(500, "internal error".into())
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    layout: Layout,
    message: String,
    back: String,
    back_label: String,
}

/// A page saying `message` (an error, or what was done).
pub fn message(ui: &Ui, lang: Lang, status: u16, message: &str) -> Reply {
    let t = lang.text();
    render(
        status,
        MessagePage {
            layout: layout(ui, lang, None, &t.error_title, ""),
            message: message.to_owned(),
            back: "/".into(),
            back_label: t.nav_repositories.clone(),
        },
    )
}

fn page_message(page: &Page, status: u16, msg: &str, back: &str) -> Reply {
    let t = page.text();
    let title = if status < 400 {
        &t.delete_title
    } else {
        &t.error_title
    };
    render(
        status,
        MessagePage {
            layout: layout(page.ui, page.lang, Some(page), title, ""),
            message: msg.to_owned(),
            back: back.to_owned(),
            back_label: t.nav_repositories.clone(),
        },
    )
}

fn read_failed(page: &Page, e: &ReadError) -> Reply {
    let t = page.text();
    match e {
        ReadError::NotFound => page_message(page, 404, &t.not_found, "/"),
        e => {
            tracing::warn!(error = %e, "UI read failed");
            page_message(
                page,
                503,
                &fill(&t.unavailable, &[("why", &e.to_string())]),
                "/",
            )
        }
    }
}

/// Routes a UI request to its page.
pub async fn route(edge: &Edge, page: &Page<'_>, client: Option<IpAddr>) -> Reply {
    use http::Method;
    let get = page.method == Method::GET || page.method == Method::HEAD;
    let post = page.method == Method::POST;
    match page.path.as_str() {
        "/assets/ui.css" if get => {
            return Reply::Asset {
                content_type: "text/css; charset=utf-8",
                body: CSS.as_bytes(),
            }
        }
        "/assets/ui.js" if get => {
            return Reply::Asset {
                content_type: "text/javascript; charset=utf-8",
                body: JS.as_bytes(),
            }
        }
        "/assets/icon.svg" | "/favicon.ico" if get => {
            return Reply::Asset {
                content_type: "image/svg+xml",
                body: ICON.as_bytes(),
            }
        }
        "/login" if get => return login_form(page, None, 200),
        "/login" if post => return login(edge, page, client).await,
        _ => {}
    }
    let Some(s) = &page.session else {
        if get && !page.path.starts_with("/assets/") {
            let mut next = page.path.clone();
            let q: Vec<_> = page.query.iter().filter(|(k, _)| k != "lang").collect();
            if !q.is_empty() {
                next.push('?');
                next.push_str(
                    &form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(q)
                        .finish(),
                );
            }
            let to = form_urlencoded::Serializer::new(String::new())
                .append_pair("next", &next)
                .finish();
            return Reply::redirect(format!("/login?{to}"));
        }
        return page_message(page, 403, &page.text().login_expired, "/login");
    };
    if post
        && !page
            .form("csrf")
            .is_some_and(|c| session::same_token(c, &s.csrf))
    {
        return page_message(page, 403, &page.text().csrf_failed, "/");
    }
    let user = s.user.as_str();
    match page.path.as_str() {
        "/logout" if post => Reply::Redirect {
            location: "/login?out=1".into(),
            cookies: vec![session::cookie(session::SESSION_COOKIE, "", 0)],
        },
        "/" if get => repositories(edge, page, user).await,
        "/usage" if get => usage(edge, page, user).await,
        "/delete" if get => confirm_delete(edge, page, user).await,
        "/delete" if post => delete(edge, page, user).await,
        p if get && p.starts_with("/r/") => match parse_target(&p[3..]) {
            Some((repo, None)) => repository(edge, page, user, &repo).await,
            Some((repo, Some(reference))) => image(edge, page, user, &repo, &reference).await,
            None => page_message(page, 404, &page.text().not_found, "/"),
        },
        _ => page_message(page, 404, &page.text().not_found, "/"),
    }
}

/// `name`, `name:tag` or `name@digest` (as `docker pull` writes them), validated.
fn parse_target(s: &str) -> Option<(RepoName, Option<String>)> {
    if let Some((name, digest)) = s.split_once('@') {
        let d: Digest = digest.parse().ok()?;
        return Some((name.parse().ok()?, Some(d.to_string())));
    }
    let (dir, last) = s.rsplit_once('/').map_or(("", s), |(d, l)| (d, l));
    match last.split_once(':') {
        Some((base, tag)) => {
            let name = if dir.is_empty() {
                base.to_owned()
            } else {
                format!("{dir}/{base}")
            };
            let tag: Tag = tag.parse().ok()?;
            Some((name.parse().ok()?, Some(tag.to_string())))
        }
        None => Some((s.parse().ok()?, None)),
    }
}

/// Where a login may send the browser: a path of this site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.len() <= 2048
                && !n.bytes().any(|c| c.is_ascii_control()) =>
        {
            n.to_owned()
        }
        _ => "/".into(),
    }
}

// ---- login ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    error: String,
    info: String,
    token: String,
    next: String,
}

fn login_form(page: &Page, error: Option<String>, status: u16) -> Reply {
    let t = page.text();
    if error.is_none() && page.session.is_some() {
        return Reply::redirect(safe_next(page.query("next")));
    }
    // The form's token is also in a cookie of its own; a retry keeps it.
    let existing = page.cookie(session::LOGIN_COOKIE).filter(|v| {
        v.len() == 22
            && v.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    });
    let token = existing.map_or_else(session::token, str::to_owned);
    let next = safe_next(page.form("next").or(page.query("next")));
    let info = if page.query("out").is_some() {
        t.logged_out.clone()
    } else {
        String::new()
    };
    let reply = render(
        status,
        LoginPage {
            layout: layout(page.ui, page.lang, Some(page), &t.login_title, ""),
            error: error.unwrap_or_default(),
            info,
            token: token.clone(),
            next,
        },
    );
    match reply {
        Reply::Html { status, body, .. } => Reply::Html {
            status,
            body,
            cookies: vec![session::cookie(
                session::LOGIN_COOKIE,
                &token,
                session::LOGIN_FORM_TTL.as_secs(),
            )],
        },
        r => r,
    }
}

async fn login(edge: &Edge, page: &Page<'_>, client: Option<IpAddr>) -> Reply {
    let t = page.text();
    let token_ok = page
        .cookie(session::LOGIN_COOKIE)
        .zip(page.form("csrf"))
        .is_some_and(|(a, b)| session::same_token(a, b));
    if !token_ok {
        return login_form(page, Some(t.login_expired.clone()), 403);
    }
    let user = page.form("user").unwrap_or("");
    let password = page.form("password").unwrap_or("");
    if user.is_empty() {
        return login_form(page, Some(t.login_invalid.clone()), 401);
    }
    match edge.check_login(client, user, password).await {
        Verdict::Ok(user) => {
            let Some(fp) = edge.ui_fingerprint(page.ui, &user) else {
                return login_form(page, Some(t.login_invalid.clone()), 401);
            };
            let s = UiSession::new(&user, &fp, page.ui.session_ttl);
            tracing::info!(target: "access", user = %user, "UI login");
            Reply::Redirect {
                location: safe_next(page.form("next")),
                cookies: vec![
                    s.set_cookie(&page.ui.secret),
                    session::cookie(session::LOGIN_COOKIE, "", 0),
                ],
            }
        }
        Verdict::Invalid => login_form(page, Some(t.login_invalid.clone()), 401),
        Verdict::Locked(wait) => {
            let secs = wait.as_secs().max(1).to_string();
            login_form(
                page,
                Some(fill(&t.login_locked, &[("seconds", &secs)])),
                429,
            )
        }
        Verdict::Busy(..) => login_form(page, Some(t.login_busy.clone()), 429),
    }
}

// ---- repositories ----

struct RepoRow {
    name: String,
    tags: String,
}

#[derive(Template)]
#[template(path = "repositories.html")]
struct RepositoriesPage {
    layout: Layout,
    q: String,
    count: String,
    rows: Vec<RepoRow>,
    page_of: String,
    prev: String,
    next: String,
}

fn list_href(q: &str, page: usize) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    if !q.is_empty() {
        s.append_pair("q", q);
    }
    s.append_pair("page", &page.to_string());
    format!("/?{}", s.finish())
}

async fn repositories(edge: &Edge, page: &Page<'_>, user: &str) -> Reply {
    let t = page.text();
    let all = match page.reader.catalog().await {
        Ok(a) => a,
        Err(e) => return read_failed(page, &e),
    };
    let q: String = page
        .query("q")
        .unwrap_or("")
        .trim()
        .chars()
        .take(MAX_FILTER)
        .collect::<String>()
        .to_lowercase();
    let matched: Vec<&String> = all
        .iter()
        .filter(|n| n.contains(&q) && edge.access.allows(user, n, Action::Pull))
        .collect();
    let pages = matched.len().div_ceil(PER_PAGE).max(1);
    let n = page
        .query("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let shown: Vec<String> = matched
        .iter()
        .skip((n - 1) * PER_PAGE)
        .take(PER_PAGE)
        .map(|n| (*n).clone())
        .collect();
    let reader = page.reader;
    let rows: Vec<RepoRow> = futures_util::stream::iter(shown)
        .map(|name| async move {
            let tags = match reader.tags(&name).await {
                Ok(t) => t.len().to_string(),
                Err(_) => "?".into(),
            };
            RepoRow { name, tags }
        })
        .buffered(reader::CONCURRENCY)
        .collect()
        .await;
    render(
        200,
        RepositoriesPage {
            layout: layout(page.ui, page.lang, Some(page), &t.repos_title, "repos"),
            count: fill(&t.repos_count, &[("n", &matched.len().to_string())]),
            page_of: fill(
                &t.page_of,
                &[("page", &n.to_string()), ("pages", &pages.to_string())],
            ),
            prev: if n > 1 {
                list_href(&q, n - 1)
            } else {
                String::new()
            },
            next: if n < pages {
                list_href(&q, n + 1)
            } else {
                String::new()
            },
            q,
            rows,
        },
    )
}

// ---- repository ----

struct TagRow {
    tag: String,
    href: String,
    digest: String,
    short: String,
    size: String,
    created: String,
    platforms: String,
    created_at: Option<i64>,
}

#[derive(Template)]
#[template(path = "repository.html")]
struct RepositoryPage {
    layout: Layout,
    repo: String,
    count: String,
    version_sort: bool,
    newest_href: String,
    version_href: String,
    can_delete: bool,
    rows: Vec<TagRow>,
}

fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}

fn may_delete(edge: &Edge, ui: &Ui, user: &str, repo: &str) -> bool {
    ui.delete_enabled && edge.access.allows(user, repo, Action::Delete)
}

async fn repository(edge: &Edge, page: &Page<'_>, user: &str, repo: &RepoName) -> Reply {
    let t = page.text();
    let repo = repo.as_str();
    if !edge.access.allows(user, repo, Action::Pull) {
        return page_message(page, 404, &t.not_found, "/");
    }
    let tags = match page.reader.tags(repo).await {
        Ok(tags) => tags,
        Err(e) => return read_failed(page, &e),
    };
    let reader = page.reader;
    let unknown = t.unknown.clone();
    let mut rows: Vec<TagRow> =
        futures_util::stream::iter(tags.into_iter().filter(|tag| tag.parse::<Tag>().is_ok()))
            .map(|tag| {
                let unknown = unknown.clone();
                async move {
                    let href = format!("/r/{repo}:{tag}");
                    let summary = match reader.resolve(repo, &tag).await {
                        Ok(d) => reader.summary(repo, &d).await.map(|s| (d, s)),
                        Err(e) => Err(e),
                    };
                    match summary {
                        Ok((digest, s)) => TagRow {
                            tag,
                            href,
                            short: short(&digest),
                            digest,
                            size: text::size(s.size),
                            created: s.created.map_or(unknown.clone(), text::time),
                            platforms: s.platforms.join(", "),
                            created_at: s.created,
                        },
                        // A tag whose manifest cannot be read still shows, without details.
                        Err(_) => TagRow {
                            tag,
                            href,
                            digest: String::new(),
                            short: unknown.clone(),
                            size: unknown.clone(),
                            created: unknown,
                            platforms: String::new(),
                            created_at: None,
                        },
                    }
                }
            })
            .buffered(reader::CONCURRENCY)
            .collect()
            .await;
    let version_sort = page.query("sort") == Some("version");
    if version_sort {
        rows.sort_by(|a, b| text::version_cmp(&b.tag, &a.tag));
    } else {
        rows.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| text::version_cmp(&b.tag, &a.tag))
        });
    }
    render(
        200,
        RepositoryPage {
            layout: layout(page.ui, page.lang, Some(page), repo, "repos"),
            repo: repo.to_owned(),
            count: fill(&t.tags_count, &[("n", &rows.len().to_string())]),
            version_sort,
            newest_href: format!("/r/{repo}"),
            version_href: format!("/r/{repo}?sort=version"),
            can_delete: may_delete(edge, page.ui, user, repo),
            rows,
        },
    )
}

// ---- image ----

struct PlatformRow {
    platform: String,
    href: String,
    digest: String,
    size: String,
}

struct LayerRow {
    media_type: String,
    size: String,
    digest: String,
}

struct HistoryRow {
    created: String,
    step: String,
    empty: bool,
}

struct ReferrerRow {
    artifact_type: String,
    href: String,
    digest: String,
    size: String,
}

#[derive(Default)]
struct ConfigView {
    platform: String,
    entrypoint: String,
    cmd: String,
    workdir: String,
    user: String,
    env: Vec<String>,
    labels: Vec<(String, String)>,
    ports: Vec<String>,
    history: Vec<HistoryRow>,
}

#[derive(Template)]
#[template(path = "image.html")]
struct ImagePage {
    layout: Layout,
    repo: String,
    repo_href: String,
    reference: String,
    kind: String,
    digest: String,
    media_type: String,
    size: String,
    created: String,
    platforms: Vec<PlatformRow>,
    layers: Vec<LayerRow>,
    has_config: bool,
    config: ConfigView,
    referrers: Vec<ReferrerRow>,
    pull_tag: String,
    pull_digest: String,
    delete_tag_href: String,
    delete_manifest_href: String,
}

/// A JSON array of strings as a shell would show it.
fn words(v: Option<&Value>) -> String {
    match v.and_then(Value::as_array) {
        Some(a) => serde_json::to_string(a).unwrap_or_default(),
        None => String::new(),
    }
}

fn config_view(c: &Value) -> ConfigView {
    let cfg = c.get("config").cloned().unwrap_or(Value::Null);
    let str_of = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
    let mut labels: Vec<(String, String)> = cfg
        .get("Labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default();
    labels.sort();
    let mut ports: Vec<String> = cfg
        .get("ExposedPorts")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    ports.sort();
    ConfigView {
        platform: reader::platform(c).unwrap_or_default(),
        entrypoint: words(cfg.get("Entrypoint")),
        cmd: words(cfg.get("Cmd")),
        workdir: str_of(cfg.get("WorkingDir")),
        user: str_of(cfg.get("User")),
        env: cfg
            .get("Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        labels,
        ports,
        history: c
            .get("history")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|h| HistoryRow {
                        created: h
                            .get("created")
                            .and_then(Value::as_str)
                            .and_then(text::parse_rfc3339)
                            .map_or(String::new(), text::time),
                        step: str_of(h.get("created_by").or(h.get("comment"))),
                        empty: h.get("empty_layer").and_then(Value::as_bool) == Some(true),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

async fn image(
    edge: &Edge,
    page: &Page<'_>,
    user: &str,
    repo: &RepoName,
    reference: &str,
) -> Reply {
    let t = page.text();
    let repo = repo.as_str();
    if !edge.access.allows(user, repo, Action::Pull) {
        return page_message(page, 404, &t.not_found, "/");
    }
    let reader = page.reader;
    let m = match reader.manifest(repo, reference).await {
        Ok(m) => m,
        Err(e) => return read_failed(page, &e),
    };
    let summary = reader.summary(repo, &m.digest).await.unwrap_or_default();
    let is_tag = !reference.contains(':');
    let mut view = ImagePage {
        layout: layout(page.ui, page.lang, Some(page), repo, "repos"),
        repo: repo.to_owned(),
        repo_href: format!("/r/{repo}"),
        reference: if is_tag {
            format!("{repo}:{reference}")
        } else {
            format!("{repo}@{reference}")
        },
        kind: t.kind_manifest.clone(),
        digest: m.digest.clone(),
        media_type: m.media_type.clone(),
        size: text::size(summary.size),
        created: summary.created.map_or(t.unknown.clone(), text::time),
        platforms: Vec::new(),
        layers: Vec::new(),
        has_config: false,
        config: ConfigView::default(),
        referrers: Vec::new(),
        pull_tag: if is_tag {
            format!("docker pull {}/{repo}:{reference}", page.host)
        } else {
            String::new()
        },
        pull_digest: format!("docker pull {}/{repo}@{}", page.host, m.digest),
        delete_tag_href: String::new(),
        delete_manifest_href: String::new(),
    };
    if reader::is_index(&m) {
        view.kind = t.kind_index.clone();
        let children: Vec<Value> = m
            .json
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        view.platforms = futures_util::stream::iter(children)
            .filter_map(|c| async move {
                let digest: Digest = c.get("digest")?.as_str()?.parse().ok()?;
                let digest = digest.to_string();
                let platform = c
                    .get("platform")
                    .and_then(reader::platform)
                    .unwrap_or_else(|| "unknown/unknown".into());
                Some((platform, digest))
            })
            .map(|(platform, digest)| async move {
                let size = reader
                    .summary(repo, &digest)
                    .await
                    .map_or(String::new(), |s| text::size(s.size));
                PlatformRow {
                    platform,
                    href: format!("/r/{repo}@{digest}"),
                    digest,
                    size,
                }
            })
            .buffered(reader::CONCURRENCY)
            .collect()
            .await;
    } else {
        let config = m.json.get("config");
        let config_type = config
            .and_then(|c| c.get("mediaType"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if m.json.get("artifactType").is_some()
            || !(config_type.contains("image.config") || config_type.contains("container.image"))
        {
            view.kind = t.kind_artifact.clone();
        }
        view.layers = m
            .json
            .get("layers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|l| LayerRow {
                        media_type: l
                            .get("mediaType")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        size: text::size(l.get("size").and_then(Value::as_u64).unwrap_or(0)),
                        digest: l
                            .get("digest")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let config_digest = config
            .and_then(|c| c.get("digest"))
            .and_then(Value::as_str)
            .and_then(|d| d.parse::<Digest>().ok());
        if let (Some(d), true) = (config_digest, view.kind == t.kind_manifest) {
            if let Ok(c) = reader.config(repo, &d.to_string()).await {
                view.config = config_view(&c);
                view.has_config = true;
            }
        }
    }
    match reader.referrers(repo, &m.digest).await {
        Ok(list) => {
            view.referrers = list
                .iter()
                .filter_map(|r| {
                    let digest: Digest = r.get("digest")?.as_str()?.parse().ok()?;
                    Some(ReferrerRow {
                        artifact_type: r
                            .get("artifactType")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        href: format!("/r/{repo}@{digest}"),
                        digest: digest.to_string(),
                        size: text::size(r.get("size").and_then(Value::as_u64).unwrap_or(0)),
                    })
                })
                .collect();
        }
        Err(e) => tracing::debug!(error = %e, "referrers not read"),
    }
    if may_delete(edge, page.ui, user, repo) {
        let q = |k: &str, v: &str| {
            form_urlencoded::Serializer::new(String::new())
                .append_pair("repo", repo)
                .append_pair(k, v)
                .finish()
        };
        if is_tag {
            view.delete_tag_href = format!("/delete?{}", q("tag", reference));
        }
        view.delete_manifest_href = format!("/delete?{}", q("digest", &m.digest));
    }
    render(200, view)
}

// ---- delete ----

#[derive(Template)]
#[template(path = "delete.html")]
struct DeletePage {
    layout: Layout,
    intro: String,
    repo: String,
    tags: Vec<String>,
    digest: String,
    /// For a manifest: the tags that go with it.
    going: Vec<String>,
    none_going: bool,
    back: String,
}

/// What a delete form names: the repository, and tags or one digest; validated.
struct DeleteAsk {
    repo: String,
    tags: Vec<String>,
    digest: Option<String>,
}

fn delete_ask(repo: Option<&str>, tags: Vec<&str>, digest: Option<&str>) -> Option<DeleteAsk> {
    let repo: RepoName = repo?.parse().ok()?;
    if tags.len() > MAX_DELETE {
        return None;
    }
    let tags: Vec<String> = tags
        .into_iter()
        .map(|t| t.parse::<Tag>().ok().map(|t| t.to_string()))
        .collect::<Option<_>>()?;
    let digest = match digest {
        Some(d) => Some(d.parse::<Digest>().ok()?.to_string()),
        None => None,
    };
    if tags.is_empty() == digest.is_none() {
        return None;
    }
    Some(DeleteAsk {
        repo: repo.to_string(),
        tags,
        digest,
    })
}

/// Checks that `user` may delete in the repository, or the page saying why not.
fn delete_allowed(edge: &Edge, page: &Page, user: &str, repo: &str) -> Option<Reply> {
    let t = page.text();
    if !page.ui.delete_enabled {
        return Some(page_message(page, 405, &t.delete_disabled, "/"));
    }
    if !edge.access.allows(user, repo, Action::Delete) {
        let msg = fill(&t.delete_denied, &[("repo", repo)]);
        return Some(page_message(page, 403, &msg, &format!("/r/{repo}")));
    }
    None
}

async fn confirm_delete(edge: &Edge, page: &Page<'_>, user: &str) -> Reply {
    let t = page.text();
    let Some(ask) = delete_ask(
        page.query("repo"),
        page.query_all("tag"),
        page.query("digest"),
    ) else {
        return page_message(page, 400, &t.not_found, "/");
    };
    if let Some(r) = delete_allowed(edge, page, user, &ask.repo) {
        return r;
    }
    let repo = ask.repo.as_str();
    let mut going = Vec::new();
    if let Some(d) = &ask.digest {
        let tags = match page.reader.tags(repo).await {
            Ok(t) => t,
            Err(e) => return read_failed(page, &e),
        };
        let reader = page.reader;
        going = futures_util::stream::iter(tags)
            .map(|tag| async move {
                let at = reader.resolve(repo, &tag).await.ok();
                (at.as_deref() == Some(d.as_str())).then_some(tag)
            })
            .buffered(reader::CONCURRENCY)
            .filter_map(|t| async move { t })
            .collect()
            .await;
    }
    let intro = if ask.digest.is_some() {
        fill(&t.delete_manifest_intro, &[("repo", repo)])
    } else {
        fill(&t.delete_tags_intro, &[("repo", repo)])
    };
    render(
        200,
        DeletePage {
            layout: layout(page.ui, page.lang, Some(page), &t.delete_title, "repos"),
            intro,
            repo: repo.to_owned(),
            none_going: ask.digest.is_some() && going.is_empty(),
            tags: ask.tags,
            digest: ask.digest.unwrap_or_default(),
            going,
            back: format!("/r/{repo}"),
        },
    )
}

async fn delete(edge: &Edge, page: &Page<'_>, user: &str) -> Reply {
    let t = page.text();
    let Some(ask) = delete_ask(page.form("repo"), page.form_all("tag"), page.form("digest")) else {
        return page_message(page, 400, &t.not_found, "/");
    };
    if let Some(r) = delete_allowed(edge, page, user, &ask.repo) {
        return r;
    }
    let repo = ask.repo.as_str();
    let refs: Vec<String> = match &ask.digest {
        Some(d) => vec![d.clone()],
        None => ask.tags.clone(),
    };
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for r in &refs {
        let sep = if r.contains(':') { '@' } else { ':' };
        let what = format!("{repo}{sep}{r}");
        match page.reader.delete(repo, r, user).await {
            Ok(()) => done.push(what),
            Err(e) => failed.push(fill(
                &t.delete_failed,
                &[("what", &what), ("why", &e.to_string())],
            )),
        }
    }
    tracing::info!(target: "access", user = %user, repo = %repo, deleted = ?done, "UI delete");
    page.ui.catalog.clear();
    let mut msg = Vec::new();
    if !done.is_empty() {
        msg.push(fill(&t.deleted, &[("what", &done.join(", "))]));
    }
    msg.extend(failed.iter().cloned());
    let status = if failed.is_empty() { 200 } else { 409 };
    page_message(page, status, &msg.join(" "), &format!("/r/{repo}"))
}

// ---- storage ----

struct UsageRow {
    repo: String,
    size: String,
    blobs: usize,
}

#[derive(Template)]
#[template(path = "usage.html")]
struct UsagePage {
    layout: Layout,
    available: bool,
    rows: Vec<UsageRow>,
    total: String,
    total_blobs: usize,
    gc: String,
    gc_young: String,
}

async fn usage(edge: &Edge, page: &Page<'_>, user: &str) -> Reply {
    let t = page.text();
    let mut view = UsagePage {
        layout: layout(page.ui, page.lang, Some(page), &t.usage_title, "usage"),
        available: false,
        rows: Vec::new(),
        total: String::new(),
        total_blobs: 0,
        gc: String::new(),
        gc_young: String::new(),
    };
    let Upstreams::Embedded(registry) = &edge.upstreams else {
        return render(200, view);
    };
    let all = match page.reader.catalog().await {
        Ok(a) => a,
        Err(e) => return read_failed(page, &e),
    };
    let visible: Vec<String> = all
        .iter()
        .filter(|n| edge.access.allows(user, n, Action::Pull))
        .cloned()
        .collect();
    let u = match registry_core::gc::usage(registry, &visible).await {
        Ok(u) => u,
        Err(e) => return read_failed(page, &ReadError::Unavailable(e.to_string())),
    };
    let mut rows = u.repositories;
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    view.available = true;
    view.rows = rows
        .into_iter()
        .map(|(repo, bytes, blobs)| UsageRow {
            repo,
            size: text::size(bytes),
            blobs,
        })
        .collect();
    view.total = text::size(u.total_bytes);
    view.total_blobs = u.total_blobs;
    // What a collection would free concerns every repository: shown to those who may delete
    // in all of them.
    let admin = page.ui.delete_enabled
        && all
            .iter()
            .all(|n| edge.access.allows(user, n, Action::Delete));
    if admin {
        match registry_core::gc::collect(registry, page.ui.gc_grace, true).await {
            Ok(r) => {
                view.gc = fill(
                    &t.gc_would_free,
                    &[
                        ("bytes", &text::size(r.bytes)),
                        ("blobs", &r.blobs.len().to_string()),
                        ("manifests", &r.manifests.len().to_string()),
                    ],
                );
                let young = r.young_manifests + r.young_blobs;
                if young > 0 {
                    view.gc_young = fill(
                        &t.gc_young,
                        &[
                            ("n", &young.to_string()),
                            ("grace", &humantime::format_duration(r.grace).to_string()),
                        ],
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "GC dry run for the UI failed"),
        }
    }
    render(200, view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_docker_references() {
        let (r, x) = parse_target("library/alpine").unwrap();
        assert_eq!((r.as_str(), x), ("library/alpine", None));
        let (r, x) = parse_target("library/alpine:3.19").unwrap();
        assert_eq!((r.as_str(), x.as_deref()), ("library/alpine", Some("3.19")));
        let d = format!("sha256:{}", "a".repeat(64));
        let (r, x) = parse_target(&format!("a/b@{d}")).unwrap();
        assert_eq!((r.as_str(), x), ("a/b", Some(d)));
        assert!(parse_target("a/b@sha256:short").is_none());
        assert!(parse_target("UPPER").is_none());
        assert!(parse_target("a:b/c").is_none());
        assert!(parse_target("a/b:<script>").is_none());
    }

    #[test]
    fn logins_only_send_the_browser_within_the_site() {
        assert_eq!(safe_next(Some("/r/a?sort=version")), "/r/a?sort=version");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn delete_forms_are_validated() {
        assert!(delete_ask(Some("a/b"), vec!["v1", "v2"], None).is_some());
        assert!(delete_ask(Some("a/b"), vec![], None).is_none());
        assert!(delete_ask(Some("a/b"), vec!["v1"], Some("sha256:x")).is_none());
        assert!(delete_ask(Some("A"), vec!["v1"], None).is_none());
        assert!(delete_ask(Some("a"), vec!["bad tag"], None).is_none());
        let many = vec!["t"; MAX_DELETE + 1];
        assert!(delete_ask(Some("a"), many, None).is_none());
    }
}
