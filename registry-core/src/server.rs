//! The HTTP server: hyper 1.x (HTTP/1.1 and h2c) over TCP or a Unix socket, dispatching routes to
//! [`Registry`] operations. Errors become responses here and only here (`error_response`).

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{
    combinators::{BoxBody, UnsyncBoxBody},
    BodyExt, BodyStream, Empty, Full, StreamBody,
};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tracing::Instrument;

use crate::digest::Digest;
use crate::error::{ErrorCode, RegistryError};
use crate::events::{self, Action, Kind, Recorder};
use crate::name::{Reference, RepoName, UploadId};
use crate::registry::{upload_range, ChunkRange, Registry};
use crate::routes::{self, query_param, Route};
use crate::storage::ByteStream;
use crate::{manifest, metrics};

/// A response body.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
/// A request body: hyper's, or whatever the embedding server reads (`Sync`, as requests are held
/// across awaits).
pub type RequestBody = BoxBody<Bytes, std::io::Error>;

/// A request extension that asks for blob bytes themselves, never a redirect to the store: set by
/// an embedding server reading blobs for itself (the edge's web UI). Clients cannot set it.
#[derive(Debug, Clone, Copy)]
pub struct NoRedirect;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_FILTERS: HeaderName = HeaderName::from_static("oci-filters-applied");

/// A bound listener: TCP or a Unix socket.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`: `host:port`, or a Unix socket as `unix:PATH` or a path containing `/`.
    pub async fn bind(addr: &str) -> std::io::Result<Listener> {
        if let Some(path) = unix_path(addr) {
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)?;
            Ok(Listener::Unix(l, path))
        } else {
            Ok(Listener::Tcp(tokio::net::TcpListener::bind(addr).await?))
        }
    }

    /// Where it listens, for logs and clients.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

/// The socket path of a Unix listen address, if it is one.
pub fn unix_path(addr: &str) -> Option<PathBuf> {
    if let Some(p) = addr.strip_prefix("unix:") {
        return Some(PathBuf::from(p));
    }
    addr.contains('/').then(|| PathBuf::from(addr))
}

/// Serves the registry on `listener` until `shutdown` completes, then lets requests in flight
/// finish.
pub async fn serve(
    listener: Listener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    metrics::init();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .initial_stream_window_size(8 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        macro_rules! conn {
            ($io:expr, $peer:expr) => {{
                let registry = registry.clone();
                let peer: Option<std::net::SocketAddr> = $peer;
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let registry = registry.clone();
                    let http1 = req.version() <= http::Version::HTTP_11;
                    let incoming = Arc::new(std::sync::Mutex::new(None));
                    let mut req = req.map(|b| {
                        *incoming.lock().expect("body") = Some(b);
                        SharedBody(incoming.clone())
                            .map_err(std::io::Error::other)
                            .boxed()
                    });
                    if let Some(p) = peer {
                        req.extensions_mut().insert(events::Peer(p));
                    }
                    async move {
                        let response = handle(&registry, req).await;
                        if http1 {
                            linger(incoming);
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new($io), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }};
        }
        match &listener {
            Listener::Tcp(l) => tokio::select! {
                r = l.accept() => match r {
                    Ok((s, peer)) => { let _ = s.set_nodelay(true); conn!(s, Some(peer)) }
                    Err(e) => accept_error(e).await,
                },
                _ = &mut shutdown => break,
            },
            Listener::Unix(l, _) => tokio::select! {
                r = l.accept() => match r {
                    Ok((s, _)) => conn!(s, None),
                    Err(e) => accept_error(e).await,
                },
                _ = &mut shutdown => break,
            },
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A request body the handler reads, and `serve` still holds afterwards (see [`linger`]).
struct SharedBody(Arc<std::sync::Mutex<Option<hyper::body::Incoming>>>);

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut guard = self.0.lock().expect("body");
        match guard.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .expect("body")
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }
}

/// How long in all, and between reads, what is left of an HTTP/1 request body is read after
/// the answer (as nginx's `lingering_time` and `lingering_timeout`).
const LINGER_TOTAL: std::time::Duration = std::time::Duration::from_secs(30);
const LINGER_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and discards, for a bounded time, what the handler left of an HTTP/1 request body (an
/// error answered before the body, such as a 503 with the store down). Closing a connection with
/// unread data makes the kernel reset it, and a client still sending (or about to read) then
/// gets a reset instead of the answer.
fn linger(body: Arc<std::sync::Mutex<Option<hyper::body::Incoming>>>) {
    let done = body
        .lock()
        .expect("body")
        .as_ref()
        .is_none_or(http_body::Body::is_end_stream);
    if done {
        return;
    }
    tokio::spawn(async move {
        let mut body = SharedBody(body);
        let deadline = tokio::time::Instant::now() + LINGER_TOTAL;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(LINGER_IDLE.min(left), body.frame()).await {
                Ok(Some(Ok(_))) => {}
                _ => return,
            }
        }
    });
}

async fn accept_error(e: std::io::Error) {
    // Out of file descriptors and the like: back off instead of spinning.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// Answers one request. Any HTTP server can call it: `serve` here, and the edge, which serves its
/// embedded registry in-process.
pub async fn handle(registry: &Registry, req: Request<RequestBody>) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = routes::parse(&path);
    let class = route.as_ref().map_or("other", Route::class);
    let span = tracing::info_span!("request", %method, path = %path, route = class);
    let events = match registry.notifier() {
        Some(n) if req.extensions().get::<events::Silent>().is_none() => {
            Some(Recorder::new(n, &req))
        }
        _ => None,
    };
    let result = async {
        match route {
            Some(r) => dispatch(registry, r, req, events.as_ref()).await,
            None => Err(RegistryError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::Unsupported,
                "no such endpoint",
            )),
        }
    }
    .instrument(span.clone())
    .await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => error_response(&e, &span),
    };
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    metrics::request(class, &method, status, elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        );
    });
    resp
}

/// The one place errors become responses (and are logged).
fn error_response(e: &RegistryError, span: &tracing::Span) -> Response<Body> {
    span.in_scope(|| {
        if e.status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        } else {
            tracing::debug!(error = %e, "request refused");
        }
    });
    let mut b = Response::builder()
        .status(e.status)
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in &e.headers {
        b = b.header(k, v);
    }
    let body = e.body();
    b.header(header::CONTENT_LENGTH, body.len())
        .body(full(body))
        .expect("error response is well-formed")
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn parse_name(s: &str) -> Result<RepoName, RegistryError> {
    s.parse().map_err(|e: crate::name::InvalidName| {
        RegistryError::name_invalid(e.0).with_detail(serde_json::json!({ "name": s }))
    })
}

fn parse_digest(s: &str) -> Result<Digest, RegistryError> {
    s.parse().map_err(|e: crate::digest::InvalidDigest| {
        RegistryError::digest_invalid(e.to_string()).with_detail(serde_json::json!({ "digest": s }))
    })
}

fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    if s.contains(':') {
        return parse_digest(s).map(Reference::Digest);
    }
    s.parse()
        .map(Reference::Tag)
        .map_err(|e: crate::name::InvalidName| {
            RegistryError::manifest_invalid(e.0).with_detail(serde_json::json!({ "reference": s }))
        })
}

fn parse_upload_id(s: &str) -> Result<UploadId, RegistryError> {
    s.parse().map_err(|_| RegistryError::upload_unknown())
}

fn header_str(req: &Request<RequestBody>, name: HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The request body as a stream of data chunks.
fn body_stream(body: RequestBody) -> ByteStream {
    Box::pin(
        BodyStream::new(body)
            .try_filter_map(|f: Frame<Bytes>| async move { Ok(f.into_data().ok()) }),
    )
}

/// Reads a whole (small) body, refusing more than `limit` bytes.
async fn read_limited(body: RequestBody, limit: usize) -> Result<Bytes, RegistryError> {
    let mut s = body_stream(body);
    let mut buf = bytes::BytesMut::new();
    while let Some(c) = s.next().await {
        let c = c.map_err(|e| {
            RegistryError::manifest_invalid(format!("reading the body failed: {e}"))
        })?;
        if buf.len() + c.len() > limit {
            return Err(crate::registry::manifest_too_large(limit));
        }
        buf.extend_from_slice(&c);
    }
    Ok(buf.freeze())
}

/// `Content-Range: <start>-<end>` of an upload chunk (also accepts a `bytes ` prefix).
fn chunk_range(req: &Request<RequestBody>) -> Result<Option<ChunkRange>, RegistryError> {
    let Some(v) = req.headers().get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || RegistryError::upload_invalid("Content-Range must be <start>-<end>");
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s.strip_prefix("bytes ").unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    if let Some(len) = content_length(req) {
        if len != end - start + 1 {
            return Err(RegistryError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUploadInvalid,
                format!("Content-Range {start}-{end} does not match Content-Length {len}"),
            ));
        }
    }
    Ok(Some(ChunkRange { start, end }))
}

fn content_length(req: &Request<RequestBody>) -> Option<u64> {
    header_str(req, header::CONTENT_LENGTH).and_then(|v| v.parse().ok())
}

fn upload_location(name: &RepoName, id: &UploadId) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

fn upload_accepted(
    status: StatusCode,
    name: &RepoName,
    id: &UploadId,
    size: u64,
) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::LOCATION, upload_location(name, id))
        .header(header::RANGE, upload_range(size))
        .header(UPLOAD_UUID, id.as_str())
        .header(header::CONTENT_LENGTH, "0")
        .body(empty())
        .expect("well-formed")
}

fn blob_created(name: &RepoName, digest: &Digest) -> Response<Body> {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .header(CONTENT_DIGEST, digest.to_string())
        .header(header::CONTENT_LENGTH, "0")
        .body(empty())
        .expect("well-formed")
}

fn method_not_allowed() -> RegistryError {
    RegistryError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        "method not allowed on this endpoint",
    )
}

fn json_response(value: &serde_json::Value, content_type: &str) -> Response<Body> {
    let body = value.to_string();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(full(body))
        .expect("well-formed")
}

async fn dispatch(
    registry: &Registry,
    route: Route,
    req: Request<RequestBody>,
    events: Option<&Recorder<'_>>,
) -> Result<Response<Body>, RegistryError> {
    let method = req.method().clone();
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => {
            Ok(json_response(&serde_json::json!({}), "application/json"))
        }
        (Route::Catalog, Method::GET) => {
            let repos = registry.catalog().await?;
            let (page, next) = paginate(repos, req.uri().query())?;
            let mut resp = json_response(
                &serde_json::json!({ "repositories": page }),
                "application/json",
            );
            if let Some((n, last)) = next {
                set_link(&mut resp, format!("/v2/_catalog?n={n}&last={last}"));
            }
            Ok(resp)
        }
        (Route::Tags { name }, Method::GET) => {
            let name = parse_name(&name)?;
            let tags = registry.list_tags(&name).await?;
            let (page, next) = paginate(tags, req.uri().query())?;
            let mut resp = json_response(
                &serde_json::json!({ "name": name.as_str(), "tags": page }),
                "application/json",
            );
            if let Some((n, last)) = next {
                set_link(&mut resp, format!("/v2/{name}/tags/list?n={n}&last={last}"));
            }
            Ok(resp)
        }
        (Route::Blob { name, digest }, m @ (Method::GET | Method::HEAD)) => {
            let name = parse_name(&name)?;
            let digest = parse_digest(&digest)?;
            let (resp, size) = get_blob(registry, &name, &digest, &req, m == Method::HEAD).await?;
            if let Some(ev) = events {
                ev.blob(Action::Pull, &name, &digest, size, None);
            }
            Ok(resp)
        }
        (Route::Blob { name, digest }, Method::DELETE) => {
            let name = parse_name(&name)?;
            let digest = parse_digest(&digest)?;
            registry.delete_blob(&name, &digest).await?;
            if let Some(ev) = events {
                ev.deleted(Kind::Blob, &name, &digest);
            }
            Ok(accepted())
        }
        (Route::UploadStart { name }, Method::POST) => {
            let name = parse_name(&name)?;
            start_upload(registry, &name, req, events).await
        }
        (Route::Upload { name, id }, Method::GET) => {
            let name = parse_name(&name)?;
            let id = parse_upload_id(&id)?;
            let size = registry.upload_size(&name, &id).await?;
            Ok(upload_accepted(StatusCode::NO_CONTENT, &name, &id, size))
        }
        (Route::Upload { name, id }, Method::PATCH) => {
            let name = parse_name(&name)?;
            let id = parse_upload_id(&id)?;
            let range = chunk_range(&req)?;
            let p = registry
                .append_upload(&name, &id, range, body_stream(req.into_body()))
                .await?;
            Ok(upload_accepted(StatusCode::ACCEPTED, &name, &p.id, p.size))
        }
        (Route::Upload { name, id }, Method::PUT) => {
            let name = parse_name(&name)?;
            let id = parse_upload_id(&id)?;
            let digest = query_param(req.uri().query(), "digest")
                .ok_or_else(|| RegistryError::digest_invalid("the closing PUT needs ?digest="))?;
            let digest = parse_digest(&digest)?;
            let range = chunk_range(&req)?;
            let size = registry
                .complete_upload(&name, &id, &digest, range, body_stream(req.into_body()))
                .await?;
            if let Some(ev) = events {
                ev.blob(Action::Push, &name, &digest, size, None);
            }
            Ok(blob_created(&name, &digest))
        }
        (Route::Upload { name, id }, Method::DELETE) => {
            let name = parse_name(&name)?;
            let id = parse_upload_id(&id)?;
            registry.cancel_upload(&name, &id).await?;
            Ok(Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(empty())
                .expect("well-formed"))
        }
        (Route::Manifest { name, reference }, m @ (Method::GET | Method::HEAD)) => {
            let name = parse_name(&name)?;
            // Nothing can exist under a reference that is neither a tag nor a digest: unknown,
            // as for any other absent manifest (a PUT with it stays invalid).
            let reference = parse_reference(&reference)
                .map_err(|_| RegistryError::manifest_unknown(&reference))?;
            let m_ = registry.get_manifest(&name, &reference).await?;
            if let Some(ev) = events {
                ev.manifest(Action::Pull, &name, &m_, &reference);
            }
            let len = m_.bytes.len();
            let body = if m == Method::HEAD {
                empty()
            } else {
                metrics::bytes_sent("manifest", len);
                full(m_.bytes)
            };
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, m_.media_type)
                .header(header::CONTENT_LENGTH, len)
                .header(CONTENT_DIGEST, m_.digest.to_string())
                .header(header::ETAG, format!("\"{}\"", m_.digest))
                .body(body)
                .expect("well-formed"))
        }
        (Route::Manifest { name, reference }, Method::PUT) => {
            let name = parse_name(&name)?;
            let reference = parse_reference(&reference)?;
            let limit = registry.options().max_manifest_bytes;
            if content_length(&req).is_some_and(|l| l > limit as u64) {
                return Err(crate::registry::manifest_too_large(limit));
            }
            let content_type = header_str(&req, header::CONTENT_TYPE)
                .map(|c| c.split(';').next().unwrap_or(c).trim().to_owned())
                .filter(|c| !c.is_empty());
            let bytes = read_limited(req.into_body(), limit).await?;
            let (digest, subject) = registry
                .put_manifest(&name, &reference, content_type.as_deref(), bytes.clone())
                .await?;
            if let Some(ev) = events {
                let stored = crate::registry::StoredManifest {
                    media_type: manifest::detect_media_type(&bytes),
                    digest: digest.clone(),
                    bytes,
                };
                ev.manifest(Action::Push, &name, &stored, &reference);
            }
            let mut b = Response::builder()
                .status(StatusCode::CREATED)
                .header(header::LOCATION, format!("/v2/{name}/manifests/{digest}"))
                .header(CONTENT_DIGEST, digest.to_string())
                .header(header::CONTENT_LENGTH, "0");
            if let Some(s) = subject {
                b = b.header(OCI_SUBJECT, s.to_string());
            }
            Ok(b.body(empty()).expect("well-formed"))
        }
        (Route::Manifest { name, reference }, Method::DELETE) => {
            let name = parse_name(&name)?;
            let reference = parse_reference(&reference)?;
            let tags = registry.delete_manifest(&name, &reference).await?;
            if let Some(ev) = events {
                match &reference {
                    Reference::Digest(d) => ev.deleted(Kind::Manifest, &name, d),
                    Reference::Tag(t) => ev.tag_deleted(&name, t.as_str()),
                }
                for t in &tags {
                    ev.tag_deleted(&name, t.as_str());
                }
            }
            Ok(accepted())
        }
        (Route::Referrers { name, digest }, Method::GET) => {
            let name = parse_name(&name)?;
            let digest = parse_digest(&digest)?;
            let artifact_type =
                query_param(req.uri().query(), "artifactType").filter(|s| !s.is_empty());
            let index = registry
                .referrers(&name, &digest, artifact_type.as_deref())
                .await?;
            let mut resp = json_response(&index, manifest::OCI_INDEX);
            if artifact_type.is_some() {
                resp.headers_mut()
                    .insert(OCI_FILTERS, HeaderValue::from_static("artifactType"));
            }
            Ok(resp)
        }
        _ => Err(method_not_allowed()),
    }
}

fn accepted() -> Response<Body> {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_LENGTH, "0")
        .body(empty())
        .expect("well-formed")
}

fn set_link(resp: &mut Response<Body>, url: String) {
    if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
        resp.headers_mut().insert(header::LINK, v);
    }
}

/// One page of a listing, and the `(n, last)` of the next page when more follow.
pub type Page = (Vec<String>, Option<(usize, String)>);

/// Applies `n` and `last` to a sorted list.
fn paginate(items: Vec<String>, query: Option<&str>) -> Result<Page, RegistryError> {
    let n = match query_param(query, "n") {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s.parse::<usize>().map_err(|_| {
            RegistryError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::PaginationNumberInvalid,
                "n must be a non-negative integer",
            )
        })?),
    };
    let last = query_param(query, "last").filter(|s| !s.is_empty());
    Ok(page(items, n, last.as_deref()))
}

/// One page of a sorted listing: the items after `last`, at most `n` of them, and the `(n,
/// last)` of the next page when more follow. (The edge pages the catalog it filtered with it.)
pub fn page(items: Vec<String>, n: Option<usize>, last: Option<&str>) -> Page {
    let mut rest: Vec<String> = match last {
        Some(l) => items.into_iter().filter(|i| i.as_str() > l).collect(),
        None => items,
    };
    match n {
        Some(n) if rest.len() > n => {
            rest.truncate(n);
            let next = rest.last().cloned().map(|l| (n, l));
            (rest, next)
        }
        _ => (rest, None),
    }
}

/// What a `Range` request header asks of a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// RFC 9110 14.2: a `Range` the server cannot parse (another unit, bad syntax, a last position
/// before the first) is ignored and the whole blob sent; only a well-formed range that lies past
/// the end (or a zero-length suffix) is unsatisfiable (416).
fn parse_range(value: Option<&str>, size: u64) -> RangeAsk {
    let Some(v) = value else {
        return RangeAsk::Whole;
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        // Multiple ranges: we answer with the whole blob, which the RFC allows.
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        // Suffix: the last b bytes.
        if !digits(b) {
            return RangeAsk::Whole;
        }
        match b.parse::<u64>() {
            // A suffix longer than u64 is the whole blob.
            Ok(n) if n > 0 && size > 0 => RangeAsk::Part(size.saturating_sub(n), size - 1),
            Err(_) if size > 0 => RangeAsk::Part(0, size - 1),
            _ => RangeAsk::Unsatisfiable,
        }
    } else {
        if !digits(a) || !(b.is_empty() || digits(b)) {
            return RangeAsk::Whole;
        }
        let start = a.parse::<u64>().unwrap_or(u64::MAX);
        let end = if b.is_empty() {
            u64::MAX
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e,
                Ok(_) => return RangeAsk::Whole,
                Err(_) => u64::MAX,
            }
        };
        if start >= size {
            RangeAsk::Unsatisfiable
        } else {
            RangeAsk::Part(start, end.min(size - 1))
        }
    }
}

async fn get_blob(
    registry: &Registry,
    name: &RepoName,
    digest: &Digest,
    req: &Request<RequestBody>,
    head: bool,
) -> Result<(Response<Body>, u64), RegistryError> {
    let size = registry.blob_size(name, digest).await?;
    if !head && req.extensions().get::<NoRedirect>().is_none() {
        // With the store's redirect on, the bytes flow from the store (the client follows).
        if let Some(url) = registry.blob_redirect(digest).await? {
            let resp = Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, url)
                .header(CONTENT_DIGEST, digest.to_string())
                .header(header::CONTENT_LENGTH, 0)
                .body(empty())
                .expect("well-formed");
            return Ok((resp, size));
        }
    }
    let b = Response::builder()
        .header(CONTENT_DIGEST, digest.to_string())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::CACHE_CONTROL, "max-age=31536000")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let (b, range) = match parse_range(header_str(req, header::RANGE), size) {
        RangeAsk::Whole => (
            b.status(StatusCode::OK)
                .header(header::CONTENT_LENGTH, size),
            None,
        ),
        RangeAsk::Part(s, e) => (
            b.status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_LENGTH, e - s + 1)
                .header(header::CONTENT_RANGE, format!("bytes {s}-{e}/{size}")),
            Some(s..e + 1),
        ),
        RangeAsk::Unsatisfiable => {
            return Err(RegistryError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeInvalid,
                format!("the range cannot be satisfied for a blob of {size} bytes"),
            )
            .with_header(header::CONTENT_RANGE, format!("bytes */{size}")))
        }
    };
    if head {
        return Ok((b.body(empty()).expect("well-formed"), size));
    }
    let stream = registry.blob_stream(digest, range).await?;
    let counted = stream
        .inspect_ok(|c| metrics::bytes_sent("blob", c.len()))
        .map_ok(Frame::data);
    let resp = b
        .body(BodyExt::boxed_unsync(StreamBody::new(counted)))
        .expect("well-formed");
    Ok((resp, size))
}

async fn start_upload(
    registry: &Registry,
    name: &RepoName,
    req: Request<RequestBody>,
    events: Option<&Recorder<'_>>,
) -> Result<Response<Body>, RegistryError> {
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    if let Some(mount) = query_param(query, "mount") {
        let digest = parse_digest(&mount)?;
        if let Some(from) = query_param(query, "from") {
            let from = parse_name(&from)?;
            if let Some(size) = registry.mount_blob(name, &from, &digest).await? {
                if let Some(ev) = events {
                    ev.blob(Action::Mount, name, &digest, size, Some(&from));
                }
                return Ok(blob_created(name, &digest));
            }
        }
        // Nothing to mount: an ordinary upload session.
        let id = registry.start_upload(name).await?;
        return Ok(upload_accepted(StatusCode::ACCEPTED, name, &id, 0));
    }
    if let Some(d) = query_param(query, "digest") {
        // Monolithic upload in the POST itself.
        let digest = parse_digest(&d)?;
        let range = chunk_range(&req)?;
        let id = registry.start_upload(name).await?;
        let done = registry
            .complete_upload(name, &id, &digest, range, body_stream(req.into_body()))
            .await;
        if done.is_err() {
            // Nobody was given this session, so nobody can resume it.
            registry.discard_upload(name, &id).await;
        }
        let size = done?;
        if let Some(ev) = events {
            ev.blob(Action::Push, name, &digest, size, None);
        }
        return Ok(blob_created(name, &digest));
    }
    let id = registry.start_upload(name).await?;
    Ok(upload_accepted(StatusCode::ACCEPTED, name, &id, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), RangeAsk::Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), RangeAsk::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), RangeAsk::Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), RangeAsk::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), RangeAsk::Part(8, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeAsk::Unsatisfiable);
        // Unparseable ranges are ignored (RFC 9110 14.2).
        assert_eq!(parse_range(Some("bytes=5-2"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=x-2"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=abc"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=-x"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=+1-2"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=-0"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), RangeAsk::Whole);
    }

    #[test]
    fn pagination() {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let (p, next) = paginate(items.clone(), Some("n=2")).unwrap();
        assert_eq!(p, ["a", "b"]);
        assert_eq!(next, Some((2, "b".to_string())));
        let (p, next) = paginate(items.clone(), Some("n=2&last=b")).unwrap();
        assert_eq!(p, ["c", "d"]);
        assert_eq!(next, None);
        assert!(paginate(items, Some("n=x")).is_err());
    }
}
