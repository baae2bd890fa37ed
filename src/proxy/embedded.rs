//! Answers from the embedded registry-core, in this process: the canonical request goes to the
//! core's handler, the body streams in through a one-chunk channel, and the answer streams back,
//! framed for HTTP/1.1 keep-alive.

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body::Body as _;
use http_body_util::BodyExt;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use registry_core::Registry;

use super::{expects_continue, Ctx, Edge};

/// Makes an HTTP/1.1 answer of the embedded registry self-delimiting: a body of known size gets
/// its `Content-Length`, any other body is sent chunked, so the connection can carry the next
/// request. (HTTP/2 frames its own bodies.)
fn frame(header: &mut ResponseHeader, body: &registry_core::server::Body, h2: bool) -> Result<()> {
    let status = header.status;
    if h2 || status.is_informational() || status == 204 || status == 304 {
        return Ok(());
    }
    let h = &header.headers;
    if h.contains_key(http::header::CONTENT_LENGTH)
        || h.contains_key(http::header::TRANSFER_ENCODING)
    {
        return Ok(());
    }
    match body.size_hint().exact() {
        Some(n) => header.insert_header(http::header::CONTENT_LENGTH, n.to_string()),
        None => header.insert_header(http::header::TRANSFER_ENCODING, "chunked"),
    }
}

/// The request as registry-core's handler takes it: the canonical target that was authorized,
/// and the client's headers but for `Expect`, which the edge has answered.
fn core_request(req: &RequestHeader, target: &str) -> Result<http::Request<()>> {
    let mut parts = req.as_owned_parts();
    parts.headers.remove(http::header::EXPECT);
    parts.uri = target
        .parse()
        .map_err(|_| Error::explain(ErrorType::InternalError, "canonical target"))?;
    Ok(http::Request::from_parts(parts, ()))
}

/// Who asked, for the core's events: the user the edge authenticated and the client's real
/// address (from a trusted proxy's PROXY header or `X-Forwarded-For`, else the peer's).
fn origin(session: &Session, ctx: &Ctx) -> registry_core::events::Origin {
    let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
    let addr = match (ctx.client, peer) {
        (Some(ip), Some(p)) if p.ip() == ip => p.to_string(),
        (Some(ip), _) => ip.to_string(),
        (None, p) => p.map(|p| p.to_string()).unwrap_or_default(),
    };
    let req = session.req_header();
    let host = super::client_host(req);
    fn text(v: Option<&http::HeaderValue>) -> &str {
        v.and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    registry_core::events::Origin::new(
        // Distribution names no actor for an anonymous request.
        ctx.user
            .as_deref()
            .filter(|u| *u != crate::access::ANONYMOUS),
        addr,
        text(host.as_ref()),
        ctx.proto,
        text(req.headers.get(http::header::USER_AGENT)),
    )
}

impl Edge {
    /// Answers the request with the embedded registry-core, in this process: the request body
    /// streams from pingora's session into the core's handler through a one-chunk channel, and
    /// the answer streams back. Compared with proxying to the core over a Unix socket this
    /// saves, per byte, the socket's two copies, pingora's body copy and a second HTTP stack.
    pub(super) async fn serve_embedded(
        &self,
        registry: &Registry,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let target = ctx.api.as_ref().map_or("/v2/", |a| a.target.as_str());
        let mut request = core_request(session.req_header(), target)?;
        if registry.notifier().is_some() {
            request.extensions_mut().insert(origin(session, ctx));
        }
        if expects_continue(session.req_header()) {
            session.write_continue_response().await?;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map_ok(http_body::Frame::data);
        let request = request.map(|()| http_body_util::StreamBody::new(body).boxed());
        let handler = registry_core::server::handle(registry, request);
        tokio::pin!(handler);
        // Pump the request body while the handler runs: a chunk is read only once the channel has
        // room for it, and the handler is polled all the while. The pump owns the sender: when it
        // ends, so does the body.
        let downstream = &mut *session;
        let pump = async move {
            // An error means the handler dropped the body: it has its answer.
            while let Ok(permit) = tx.reserve().await {
                match downstream.read_request_body().await {
                    Ok(Some(chunk)) => permit.send(Ok(chunk)),
                    Ok(None) => break,
                    Err(e) => {
                        permit.send(Err(std::io::Error::other(e.to_string())));
                        break;
                    }
                }
            }
            drop(tx);
        };
        let response = tokio::select! {
            biased;
            response = &mut handler => response,
            () = pump => handler.await,
        };
        if !session.is_body_done() {
            // The answer came before the whole body: the connection cannot carry another request.
            session.set_keepalive(None);
        }
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        ctx.status = status.as_u16();
        let mut header = ResponseHeader::from(parts);
        let head = session.req_header().method == http::Method::HEAD;
        frame(&mut header, &body, session.is_http2())?;
        self.decorate(&mut header)?;
        let end = head || body.is_end_stream();
        session.write_response_header(Box::new(header), end).await?;
        if end {
            return Ok(());
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                // Mid-answer: the client must see a broken transfer, never a short success.
                session.set_keepalive(None);
                Error::because(ErrorType::InternalError, "reading from storage", e)
            })?;
            if let Ok(data) = frame.into_data() {
                let end = body.is_end_stream();
                session.write_response_body(Some(data), end).await?;
                if end {
                    return Ok(());
                }
            }
        }
        session.write_response_body(None, true).await
    }
}
