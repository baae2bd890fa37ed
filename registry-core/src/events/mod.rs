//! Notifications: registry events POSTed to webhooks in Distribution's envelope
//! (`application/vnd.docker.distribution.events.v1+json`), so receivers written for
//! `registry:2` work unchanged, but from a durable queue per endpoint.
//!
//! - here: the event types (the JSON Distribution sends), [`Origin`] (who asked: the edge passes
//!   the authenticated user as the actor), and the [`Notifier`] that filters an event per
//!   endpoint and hands it to that endpoint's queue without waiting; [`Recorder`], what the
//!   server's handlers call for one request, and the targets Distribution sends per operation;
//! - [`config`]: `[notifications]` as written, validated into [`Settings`];
//! - [`spool`]: the durable queue: events are written in segments to the store beside the
//!   images (the data directory, or the bucket), bounded (the oldest go when it is full),
//!   read back after a restart;
//! - [`deliver`]: one sender per endpoint: segments in order, retries with the endpoint's
//!   threshold and backoff, at least once, an optional HMAC of each body.
//!
//! A client request never waits for either: emitting is a `try_send` on a bounded channel.

pub mod config;
mod deliver;
mod spool;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use config::{NotificationsFile, Settings};

use crate::digest::Digest;
use crate::name::{Reference, RepoName};
use crate::storage::Storage;

/// The media type of the envelope.
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
/// The header carrying `sha256=<hex HMAC-SHA256(secret, body)>` when an endpoint has a secret.
pub const SIGNATURE_HEADER: &str = "x-registry-signature-256";
/// Distribution's media type for blob targets.
const BLOB_MEDIA_TYPE: &str = "application/octet-stream";
/// Bound on client-controlled strings (host, user agent, user name) kept in an event.
const MAX_FIELD: usize = 256;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Push,
    Pull,
    Mount,
    Delete,
}

impl std::str::FromStr for Action {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "push" => Ok(Action::Push),
            "pull" => Ok(Action::Pull),
            "mount" => Ok(Action::Mount),
            "delete" => Ok(Action::Delete),
            _ => Err(()),
        }
    }
}

/// One event, as Distribution serializes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub timestamp: String,
    pub action: Action,
    pub target: Target,
    pub request: RequestRecord,
    pub actor: Actor,
    pub source: Source,
}

/// What the event is about.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Target {
    #[serde(rename = "mediaType", skip_serializing_if = "Option::is_none", default)]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub length: Option<u64>,
    pub repository: String,
    #[serde(
        rename = "fromRepository",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub from_repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub references: Option<Vec<Descriptor>>,
}

/// A descriptor a manifest references.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub size: u64,
    pub digest: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: String,
    pub addr: String,
    pub host: String,
    pub method: String,
    pub useragent: String,
}

/// The authenticated user; `{}` when there is none.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Actor {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Source {
    pub addr: String,
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

/// Who made a request, as the events record it. The edge puts one in the request's extensions
/// (it knows the user and the client's real address); otherwise it is read from the request.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub actor: Option<String>,
    /// The client's `ip:port`.
    pub addr: String,
    /// The `Host` the client addressed.
    pub host: String,
    /// `https` or `http`, for the target URLs.
    pub scheme: &'static str,
    pub user_agent: String,
}

/// Marks a request whose operations are not events (the web UI reading through the API).
#[derive(Debug, Clone, Copy)]
pub struct Silent;

/// The connection's peer, put in each request's extensions by [`crate::server::serve`].
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// `s` cut to at most [`MAX_FIELD`] bytes, on a character boundary.
fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_FIELD);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl Origin {
    /// Bounds every client-controlled field (they are stored and sent on).
    pub fn new(
        actor: Option<&str>,
        addr: String,
        host: &str,
        scheme: &'static str,
        user_agent: &str,
    ) -> Origin {
        Origin {
            actor: actor.map(bounded),
            addr: bounded(&addr),
            host: bounded(host),
            scheme,
            user_agent: bounded(user_agent),
        }
    }

    /// What a request says of itself, as Distribution reads it: the first `X-Forwarded-For`
    /// address, else `X-Real-IP`, else the peer; `X-Forwarded-Proto` for the scheme.
    pub fn of<B>(req: &http::Request<B>) -> Origin {
        let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
        let peer = req.extensions().get::<Peer>().map(|p| p.0.to_string());
        let addr = h("x-forwarded-for")
            .and_then(|v| v.split(',').next())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| h("x-real-ip").map(str::to_owned))
            .or(peer)
            .unwrap_or_default();
        let scheme = match h("x-forwarded-proto") {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        let host = h("x-forwarded-host")
            .or_else(|| h("host"))
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default();
        Origin::new(
            None,
            addr,
            host,
            scheme,
            h("user-agent").unwrap_or_default(),
        )
    }
}

/// The request an event belongs to: the origin plus an id and the method.
pub struct RequestContext {
    origin: Origin,
    id: String,
    method: String,
}

impl RequestContext {
    pub fn new<B>(req: &http::Request<B>) -> RequestContext {
        RequestContext {
            origin: req
                .extensions()
                .get::<Origin>()
                .cloned()
                .unwrap_or_else(|| Origin::of(req)),
            id: uuid::Uuid::new_v4().to_string(),
            method: req.method().as_str().to_owned(),
        }
    }

    fn url(&self, repo: &str, kind: &str, digest: &str) -> String {
        format!(
            "{}://{}/v2/{repo}/{kind}/{digest}",
            self.origin.scheme, self.origin.host
        )
    }
}

/// Whether an event is about manifests (and tags) or blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Blob,
}

/// Fans events out to the endpoints' queues.
pub struct Notifier {
    endpoints: Vec<Arc<deliver::EndpointQueue>>,
    include_references: bool,
    source: Source,
}

impl Notifier {
    /// The queues of `settings`' endpoints, in `storage`. Nothing runs until [`Notifier::start`].
    pub fn new(settings: &Settings, storage: Arc<dyn Storage>) -> Notifier {
        Notifier {
            endpoints: settings
                .endpoints
                .iter()
                // A disabled endpoint gets nothing; what it has queued stays for later.
                .filter(|e| !e.disabled)
                .map(|e| {
                    Arc::new(deliver::EndpointQueue::new(
                        e.clone(),
                        storage.clone(),
                        &settings.instance,
                    ))
                })
                .collect(),
            include_references: settings.include_references,
            source: Source {
                addr: settings.source_addr.clone(),
                instance_id: uuid::Uuid::new_v4().to_string(),
            },
        }
    }

    /// Starts each endpoint's spool writer and its sender, on the current runtime. They run until the runtime ends.
    pub fn start(&self) {
        for e in &self.endpoints {
            e.clone().start();
        }
    }

    /// Waits until every event emitted so far is in the store (or `limit` passes).
    pub async fn flush(&self, limit: std::time::Duration) {
        let all = futures_util::future::join_all(self.endpoints.iter().map(|e| e.flush()));
        let _ = tokio::time::timeout(limit, all).await;
    }

    pub fn include_references(&self) -> bool {
        self.include_references
    }

    /// Queues an event for each endpoint that wants it. Never waits.
    pub fn emit(&self, ctx: &RequestContext, action: Action, kind: Kind, target: Target) {
        let event = Event {
            id: uuid::Uuid::new_v4().to_string(),
            timestamp: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
            action,
            target,
            request: RequestRecord {
                id: ctx.id.clone(),
                addr: ctx.origin.addr.clone(),
                host: ctx.origin.host.clone(),
                method: ctx.method.clone(),
                useragent: ctx.origin.user_agent.clone(),
            },
            actor: Actor {
                name: ctx.origin.actor.clone(),
            },
            source: self.source.clone(),
        };
        for e in &self.endpoints {
            if e.wants(&event, kind) {
                e.push(event.clone());
            }
        }
    }
}

/// The events of one request, when notifications are on: what the handlers call.
pub struct Recorder<'a> {
    notifier: &'a Notifier,
    ctx: RequestContext,
}

impl<'a> Recorder<'a> {
    pub fn new<B>(notifier: &'a Notifier, req: &http::Request<B>) -> Self {
        Recorder {
            notifier,
            ctx: RequestContext::new(req),
        }
    }

    pub fn manifest(
        &self,
        action: Action,
        name: &RepoName,
        m: &crate::registry::StoredManifest,
        reference: &Reference,
    ) {
        let tag = match reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        };
        let refs = self.notifier.include_references();
        let digest = m.digest.to_string();
        let t =
            self.ctx
                .manifest_target(name.as_str(), &m.media_type, &digest, &m.bytes, tag, refs);
        self.notifier.emit(&self.ctx, action, Kind::Manifest, t);
    }

    pub fn blob(
        &self,
        action: Action,
        name: &RepoName,
        digest: &Digest,
        size: u64,
        from: Option<&RepoName>,
    ) {
        let t = self.ctx.blob_target(
            name.as_str(),
            &digest.to_string(),
            size,
            from.map(RepoName::as_str),
        );
        self.notifier.emit(&self.ctx, action, Kind::Blob, t);
    }

    pub fn deleted(&self, kind: Kind, name: &RepoName, digest: &Digest) {
        let t = self.ctx.deleted_target(name.as_str(), &digest.to_string());
        self.notifier.emit(&self.ctx, Action::Delete, kind, t);
    }

    pub fn tag_deleted(&self, name: &RepoName, tag: &str) {
        let t = self.ctx.tag_target(name.as_str(), tag);
        self.notifier
            .emit(&self.ctx, Action::Delete, Kind::Manifest, t);
    }
}

/// Builders of the targets Distribution sends, by kind of operation.
impl RequestContext {
    /// A manifest pushed or pulled.
    pub fn manifest_target(
        &self,
        repo: &str,
        media_type: &str,
        digest: &str,
        bytes: &[u8],
        tag: Option<&str>,
        references: bool,
    ) -> Target {
        let len = bytes.len() as u64;
        Target {
            media_type: Some(media_type.to_owned()),
            size: Some(len),
            digest: Some(digest.to_owned()),
            length: Some(len),
            repository: repo.to_owned(),
            url: Some(self.url(repo, "manifests", digest)),
            tag: tag.map(str::to_owned),
            references: references.then(|| references_of(bytes)),
            ..Target::default()
        }
    }

    /// A blob pushed, pulled or mounted (from `from`).
    pub fn blob_target(&self, repo: &str, digest: &str, size: u64, from: Option<&str>) -> Target {
        Target {
            media_type: Some(BLOB_MEDIA_TYPE.to_owned()),
            size: Some(size),
            digest: Some(digest.to_owned()),
            length: Some(size),
            repository: repo.to_owned(),
            from_repository: from.map(str::to_owned),
            url: Some(self.url(repo, "blobs", digest)),
            ..Target::default()
        }
    }

    /// A manifest or blob deleted (by digest).
    pub fn deleted_target(&self, repo: &str, digest: &str) -> Target {
        Target {
            digest: Some(digest.to_owned()),
            repository: repo.to_owned(),
            ..Target::default()
        }
    }

    /// A tag deleted.
    pub fn tag_target(&self, repo: &str, tag: &str) -> Target {
        Target {
            repository: repo.to_owned(),
            tag: Some(tag.to_owned()),
            ..Target::default()
        }
    }
}

/// The descriptors a manifest references, as Distribution lists them: an image's config then
/// its layers; an index's manifests.
fn references_of(bytes: &[u8]) -> Vec<Descriptor> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let one = |d: &serde_json::Value| {
        Some(Descriptor {
            media_type: d.get("mediaType")?.as_str()?.to_owned(),
            size: d.get("size")?.as_u64()?,
            digest: d.get("digest")?.as_str()?.to_owned(),
        })
    };
    let list = |k: &str| {
        v.get(k)
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter_map(one)
            .collect::<Vec<_>>()
    };
    let mut out: Vec<Descriptor> = v.get("config").and_then(one).into_iter().collect();
    out.extend(list("layers"));
    out.extend(list("manifests"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_bounds_what_clients_send() {
        let req = http::Request::builder()
            .uri("/v2/")
            .header("host", "h".repeat(5000))
            .header("user-agent", "é".repeat(5000))
            .header("x-forwarded-for", "10.0.0.1, 10.0.0.2")
            .header("x-forwarded-proto", "https")
            .body(())
            .unwrap();
        let o = Origin::of(&req);
        assert_eq!(o.addr, "10.0.0.1");
        assert_eq!(o.scheme, "https");
        assert!(o.host.len() <= MAX_FIELD && o.user_agent.len() <= MAX_FIELD);
        assert!(o.user_agent.chars().all(|c| c == 'é'));
    }

    #[test]
    fn events_serialize_as_distribution_does() {
        let req = http::Request::builder()
            .method("PUT")
            .uri("/v2/a/manifests/v1")
            .header("host", "reg.example:5000")
            .header("user-agent", "skopeo/1.9")
            .extension(Peer("127.0.0.1:4242".parse().unwrap()))
            .body(())
            .unwrap();
        let ctx = RequestContext::new(&req);
        let manifest = br#"{"schemaVersion":2,"config":{"mediaType":"c","size":3,"digest":"sha256:c"},"layers":[{"mediaType":"l","size":5,"digest":"sha256:l"}]}"#;
        let t = ctx.manifest_target("a", "m", "sha256:m", manifest, Some("v1"), true);
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["url"], "http://reg.example:5000/v2/a/manifests/sha256:m");
        assert_eq!(v["length"], manifest.len());
        assert_eq!(v["references"][0]["digest"], "sha256:c");
        assert_eq!(v["references"][1]["mediaType"], "l");
        let d = serde_json::to_value(ctx.deleted_target("a", "sha256:m")).unwrap();
        assert_eq!(
            d,
            serde_json::json!({"digest": "sha256:m", "repository": "a"})
        );
        assert_eq!(
            serde_json::to_value(Actor::default()).unwrap(),
            serde_json::json!({})
        );
        assert_eq!(ctx.origin.addr, "127.0.0.1:4242");
    }
}
