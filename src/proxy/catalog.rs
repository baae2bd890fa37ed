//! The catalog as a user may see it: the whole list (the embedded registry's, or an upstream's
//! read in bounded pages) filtered to what the user may pull, then paged.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::{Answer, Ctx, Edge, Upstreams};
use crate::access::Action;
use crate::request;

/// Repositories asked for per page when the edge reads an upstream's whole catalog to filter it,
/// and the bounds on that reading.
const CATALOG_PAGE: usize = 1000;
const CATALOG_MAX_PAGES: usize = 1000;
const CATALOG_MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

impl Edge {
    /// The catalog as `user` may see it: the whole list is filtered first, then paged, and the
    /// `Link` to the next page is built from what the user may see, so paging reveals nothing
    /// hidden.
    pub(super) async fn serve_catalog(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        user: &str,
    ) -> Result<()> {
        let req = session.req_header();
        let host = super::client_host(req);
        let authorization = req.headers.get(http::header::AUTHORIZATION).cloned();
        let all = self
            .whole_catalog(host.as_ref(), authorization.as_ref(), ctx.proto)
            .await;
        let all = match all {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "catalog listing failed");
                let msg = "the registry could not list its repositories";
                self.respond(session, ctx, 503, "UNAVAILABLE", msg, None, None)
                    .await?;
                return Ok(());
            }
        };
        let visible: Vec<String> = all
            .into_iter()
            .filter(|name| self.access.allows(user, name, Action::Pull))
            .collect();
        let api = ctx.api.as_ref().expect("parsed before");
        let n = api.param("n").and_then(|n| n.parse::<usize>().ok());
        let last = api.param("last").filter(|l| !l.is_empty());
        let (page, next) = registry_core::server::page(visible, n, last);
        let body = Bytes::from(serde_json::json!({ "repositories": page }).to_string());
        let mut h = ResponseHeader::build(200, Some(4))?;
        h.insert_header("Content-Type", "application/json")?;
        h.insert_header("Content-Length", body.len().to_string())?;
        h.insert_header("Docker-Distribution-Api-Version", "registry/2.0")?;
        if let Some((n, last)) = next {
            let q = [("n", n.to_string()), ("last", last)];
            let link = request::target("/v2/_catalog", &q);
            h.insert_header("Link", format!("<{link}>; rel=\"next\""))?;
        }
        self.send_own(session, ctx, h, body).await
    }

    /// The whole catalog (the embedded registry's, or the upstream's read in bounded pages),
    /// before any filtering. `host` and `authorization` are the client's, as for every request
    /// forwarded.
    pub(crate) async fn whole_catalog(
        &self,
        host: Option<&http::HeaderValue>,
        authorization: Option<&http::HeaderValue>,
        proto: &'static str,
    ) -> Result<Vec<String>> {
        if let Upstreams::Embedded(registry) = &self.upstreams {
            return registry
                .catalog()
                .await
                .map_err(|e| Error::because(ErrorType::HTTPStatus(503), "listing the catalog", e));
        }
        let mut all: Vec<String> = Vec::new();
        let mut last: Option<String> = None;
        for _ in 0..CATALOG_MAX_PAGES {
            let mut q = vec![("n", CATALOG_PAGE.to_string())];
            if let Some(l) = &last {
                q.push(("last", l.clone()));
            }
            let target = request::target("/v2/_catalog", &q);
            let mut headers = Vec::new();
            if let Some(a) = authorization {
                headers.push((http::header::AUTHORIZATION, a.clone()));
            }
            let answer = self
                .upstream_call(
                    http::Method::GET,
                    &target,
                    host,
                    proto,
                    headers,
                    CATALOG_MAX_PAGE_BYTES,
                )
                .await?;
            if answer.status != 200 {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(answer.status),
                    format!("the upstream answered the catalog with {}", answer.status),
                ));
            }
            let more = answer.headers.get(http::header::LINK).is_some();
            let v: serde_json::Value = serde_json::from_slice(&answer.body).map_err(|e| {
                Error::because(
                    ErrorType::InvalidHTTPHeader,
                    "catalog answer is not JSON",
                    e,
                )
            })?;
            let page: Vec<String> = v
                .get("repositories")
                .and_then(|r| r.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let done = !more || page.is_empty();
            last = page.last().cloned();
            all.extend(page);
            if done {
                all.sort();
                all.dedup();
                return Ok(all);
            }
        }
        Err(Error::explain(
            ErrorType::InternalError,
            "the upstream catalog has too many pages",
        ))
    }

    /// One request of the edge's own to an upstream of the pool (no body), its answer read
    /// whole up to `limit` bytes.
    pub(crate) async fn upstream_call(
        &self,
        method: http::Method,
        target: &str,
        host: Option<&http::HeaderValue>,
        proto: &'static str,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        limit: usize,
    ) -> Result<Answer> {
        let lease = self.lease(None, &[])?;
        let peer = lease.0.peer(&self.timeouts);
        super::upstream::call(
            &self.catalog_connector,
            &peer,
            method,
            target,
            host,
            proto,
            headers,
            limit,
            self.timeouts.upstream_read,
        )
        .await
    }
}
