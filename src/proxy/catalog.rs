//! The catalog as a user may see it: the whole list (the embedded registry's, or an upstream's
//! read in bounded pages) filtered to what the user may pull, then paged.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::{Ctx, Edge, Upstreams};
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
        let all = match &self.upstreams {
            Upstreams::Embedded(registry) => registry
                .catalog()
                .await
                .map_err(|e| Error::because(ErrorType::HTTPStatus(503), "listing the catalog", e)),
            Upstreams::Urls { .. } => {
                let header = session.req_header().clone();
                self.upstream_catalog(ctx, &header).await
            }
        };
        let all = match all {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "catalog listing failed");
                let msg = "the registry could not list its repositories";
                self.respond(session, ctx, 503, "UNAVAILABLE", msg, false, None)
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
        ctx.status = 200;
        self.decorate(&mut h)?;
        let head = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(h), head).await?;
        if !head {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }

    /// The whole catalog of the upstream, page by page (bounded in pages and names).
    async fn upstream_catalog(
        &self,
        ctx: &mut Ctx,
        client_req: &RequestHeader,
    ) -> Result<Vec<String>> {
        let mut all: Vec<String> = Vec::new();
        let mut last: Option<String> = None;
        let connector = &self.catalog_connector;
        for _ in 0..CATALOG_MAX_PAGES {
            let peer = self.pick(ctx)?;
            let mut q = vec![("n", CATALOG_PAGE.to_string())];
            if let Some(l) = &last {
                q.push(("last", l.clone()));
            }
            let target = request::target("/v2/_catalog", &q);
            let mut req = RequestHeader::build("GET", target.as_bytes(), Some(4))?;
            // The client's Host, as for every request forwarded (Distribution builds URLs from it).
            if let Some(h) = client_req.headers.get(http::header::HOST) {
                req.insert_header(http::header::HOST, h.clone())?;
            } else if let Some(a) = client_req.uri.authority() {
                req.insert_header(http::header::HOST, a.as_str().to_owned())?;
            }
            if let Some(a) = client_req.headers.get(http::header::AUTHORIZATION) {
                req.insert_header(http::header::AUTHORIZATION, a.clone())?;
            }
            req.insert_header("X-Forwarded-Proto", ctx.proto)?;
            let (mut s, _) = connector.get_http_session(&*peer).await?;
            s.set_read_timeout(Some(self.timeouts.upstream_read));
            s.write_request_header(Box::new(req)).await?;
            s.finish_request_body().await?;
            s.read_response_header().await?;
            let status = s.response_header().map_or(0, |h| h.status.as_u16());
            let more = s
                .response_header()
                .and_then(|h| h.headers.get(http::header::LINK))
                .is_some();
            let mut body = Vec::new();
            while let Some(chunk) = s.read_response_body().await? {
                if body.len() + chunk.len() > CATALOG_MAX_PAGE_BYTES {
                    return Err(Error::explain(
                        ErrorType::InvalidHTTPHeader,
                        "catalog page too large",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            connector
                .release_http_session(s, &*peer, Some(Duration::from_secs(60)))
                .await;
            if status != 200 {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    format!("the upstream answered the catalog with {status}"),
                ));
            }
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
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
}
