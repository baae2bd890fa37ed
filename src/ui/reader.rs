//! What the UI reads, through the registry API itself: the embedded registry-core's handler
//! called in-process (as the proxy calls it), or the upstream over HTTP. The access rules are
//! applied by the pages before anything is read, as [`crate::proxy`] applies them to API
//! requests; the catalog is filtered by the same code as `/v2/_catalog`.
//!
//! Manifests are content-addressed, so what the repository page shows of one (size, creation
//! time, platforms) is computed once per digest and kept in a bounded [`Summaries`] cache.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::text;
use crate::proxy::{Answer, Edge, Upstreams};

/// The manifest types the UI asks for.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.artifact.manifest.v1+json";
const MAX_MANIFEST: usize = 4 << 20;
const MAX_CONFIG: usize = 2 << 20;
const MAX_LIST: usize = 16 << 20;
/// Children of an index read to sum its size; more are left out of the sum.
const MAX_CHILDREN: usize = 32;
/// Summaries kept; the cache starts over when it is full.
const MAX_SUMMARIES: usize = 20_000;
/// Requests in flight for one page.
pub const CONCURRENCY: usize = 16;

/// Why something could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Unavailable(String),
    #[error("the registry answered {status}: {message}")]
    Refused { status: u16, message: String },
}

/// A manifest as stored.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub json: Value,
    pub size: usize,
}

/// What the repository page shows of a manifest.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The compressed layers, in all (of every platform, for an index).
    pub size: u64,
    /// Seconds since the epoch (the newest platform's, for an index).
    pub created: Option<i64>,
    /// `os/arch[/variant]`.
    pub platforms: Vec<String>,
}

/// Summaries by manifest digest.
#[derive(Default)]
pub struct Summaries(Mutex<HashMap<String, Summary>>);

impl Summaries {
    fn get(&self, digest: &str) -> Option<Summary> {
        self.0.lock().expect("summaries").get(digest).cloned()
    }

    fn put(&self, digest: &str, s: &Summary) {
        let mut m = self.0.lock().expect("summaries");
        if m.len() >= MAX_SUMMARIES {
            m.clear();
        }
        m.insert(digest.to_owned(), s.clone());
    }
}

/// How long the UI reuses the catalog it read: paging and filtering through 10,000
/// repositories then costs no walk of the storage per page, and a new repository shows within
/// this time.
const CATALOG_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// The whole catalog as last read (before the access rules, which are applied per user).
#[derive(Default)]
pub struct CatalogCache(Mutex<Option<(std::time::Instant, std::sync::Arc<Vec<String>>)>>);

impl CatalogCache {
    /// Forgets the catalog (after a delete made here).
    pub fn clear(&self) {
        *self.0.lock().expect("catalog") = None;
    }
}

/// Reads for one UI request.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    pub edge: &'a Edge,
    pub host: Option<&'a http::HeaderValue>,
    pub proto: &'static str,
    /// The client's address (recorded in the events of what the UI deletes).
    pub client: Option<std::net::IpAddr>,
    pub summaries: &'a Summaries,
    pub catalog: &'a CatalogCache,
}

fn unavailable(e: impl std::fmt::Display) -> ReadError {
    ReadError::Unavailable(e.to_string())
}

/// `os/arch[/variant]` of a platform object.
pub fn platform(p: &Value) -> Option<String> {
    let os = p.get("os")?.as_str()?;
    let arch = p.get("architecture")?.as_str()?;
    let mut s = format!("{os}/{arch}");
    if let Some(v) = p.get("variant").and_then(Value::as_str) {
        s.push('/');
        s.push_str(v);
    }
    Some(s)
}

/// Whether a media type (or a manifest without one) is an index.
pub fn is_index(m: &Manifest) -> bool {
    m.media_type.contains("index") || m.media_type.contains("manifest.list")
}

impl Reader<'_> {
    /// One request to the registry API: a read (no event, as it is no pull), or a change
    /// made for `actor` (an event like any other).
    async fn call(
        &self,
        method: http::Method,
        target: &str,
        accept: Option<&str>,
        limit: usize,
        actor: Option<&str>,
    ) -> Result<Answer, ReadError> {
        match &self.edge.upstreams {
            Upstreams::Embedded(registry) => {
                let mut b = http::Request::builder().method(method).uri(target);
                if let Some(a) = accept {
                    b = b.header(http::header::ACCEPT, a);
                }
                if let Some(h) = self.host {
                    b = b.header(http::header::HOST, h.clone());
                }
                let body = http_body_util::Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed();
                let mut req = b.body(body).map_err(unavailable)?;
                req.extensions_mut()
                    .insert(registry_core::server::NoRedirect);
                match actor {
                    None => {
                        req.extensions_mut().insert(registry_core::events::Silent);
                    }
                    Some(user) => {
                        let host = self.host.and_then(|h| h.to_str().ok()).unwrap_or("");
                        req.extensions_mut()
                            .insert(registry_core::events::Origin::new(
                                Some(user),
                                self.client.map(|c| c.to_string()).unwrap_or_default(),
                                host,
                                self.proto,
                                "registry-edge web UI",
                            ));
                    }
                }
                let resp = registry_core::server::handle(registry, req).await;
                let (parts, body) = resp.into_parts();
                let body = http_body_util::Limited::new(body, limit)
                    .collect()
                    .await
                    .map_err(unavailable)?
                    .to_bytes();
                Ok(Answer {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body,
                })
            }
            Upstreams::Pool(_) => {
                let mut headers = Vec::new();
                if let Some(a) = accept.and_then(|a| http::HeaderValue::from_str(a).ok()) {
                    headers.push((http::header::ACCEPT, a));
                }
                self.edge
                    .upstream_call(method, target, self.host, self.proto, headers, limit)
                    .await
                    .map_err(unavailable)
            }
        }
    }

    /// A GET that must answer 200.
    async fn get(
        &self,
        target: &str,
        accept: Option<&str>,
        limit: usize,
    ) -> Result<Bytes, ReadError> {
        let a = self
            .call(http::Method::GET, target, accept, limit, None)
            .await?;
        match a.status {
            200 => Ok(a.body),
            404 => Err(ReadError::NotFound),
            status => Err(refused(status, &a.body)),
        }
    }

    /// The catalog (before the access rules), read at most every [`CATALOG_TTL`].
    pub async fn catalog(&self) -> Result<std::sync::Arc<Vec<String>>, ReadError> {
        if let Some((at, list)) = &*self.catalog.0.lock().expect("catalog") {
            if at.elapsed() < CATALOG_TTL {
                return Ok(list.clone());
            }
        }
        let list = std::sync::Arc::new(
            self.edge
                .whole_catalog(self.host, None, self.proto)
                .await
                .map_err(unavailable)?,
        );
        *self.catalog.0.lock().expect("catalog") = Some((std::time::Instant::now(), list.clone()));
        Ok(list)
    }

    /// The tags of a repository.
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>, ReadError> {
        let body = self
            .get(&format!("/v2/{repo}/tags/list"), None, MAX_LIST)
            .await?;
        let v: Value = serde_json::from_slice(&body).map_err(unavailable)?;
        Ok(v.get("tags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A manifest by tag or digest, with the digest of its bytes.
    pub async fn manifest(&self, repo: &str, reference: &str) -> Result<Manifest, ReadError> {
        let body = self
            .get(
                &format!("/v2/{repo}/manifests/{reference}"),
                Some(ACCEPT),
                MAX_MANIFEST,
            )
            .await?;
        let json: Value = serde_json::from_slice(&body).map_err(unavailable)?;
        let media_type = json
            .get("mediaType")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                if json.get("manifests").is_some() {
                    "application/vnd.oci.image.index.v1+json".into()
                } else {
                    "application/vnd.oci.image.manifest.v1+json".into()
                }
            });
        Ok(Manifest {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&body))),
            media_type,
            json,
            size: body.len(),
        })
    }

    /// The digest a tag points at (a HEAD).
    pub async fn resolve(&self, repo: &str, tag: &str) -> Result<String, ReadError> {
        let a = self
            .call(
                http::Method::HEAD,
                &format!("/v2/{repo}/manifests/{tag}"),
                Some(ACCEPT),
                0,
                None,
            )
            .await?;
        match a.status {
            200 => match a
                .headers
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
            {
                Some(d) => Ok(d.to_owned()),
                None => Ok(self.manifest(repo, tag).await?.digest),
            },
            404 => Err(ReadError::NotFound),
            status => Err(refused(status, &a.body)),
        }
    }

    /// An image configuration (a small JSON blob).
    pub async fn config(&self, repo: &str, digest: &str) -> Result<Value, ReadError> {
        let body = self
            .get(&format!("/v2/{repo}/blobs/{digest}"), None, MAX_CONFIG)
            .await?;
        serde_json::from_slice(&body).map_err(unavailable)
    }

    /// The referrers of a manifest; none when the registry has no referrers API.
    pub async fn referrers(&self, repo: &str, digest: &str) -> Result<Vec<Value>, ReadError> {
        match self
            .get(
                &format!("/v2/{repo}/referrers/{digest}"),
                None,
                MAX_MANIFEST,
            )
            .await
        {
            Ok(body) => {
                let v: Value = serde_json::from_slice(&body).map_err(unavailable)?;
                Ok(v.get("manifests")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default())
            }
            Err(ReadError::NotFound) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Deletes a tag or a manifest, for `user`.
    pub async fn delete(&self, repo: &str, reference: &str, user: &str) -> Result<(), ReadError> {
        let a = self
            .call(
                http::Method::DELETE,
                &format!("/v2/{repo}/manifests/{reference}"),
                None,
                64 << 10,
                Some(user),
            )
            .await?;
        match a.status {
            200 | 202 | 204 => Ok(()),
            404 => Err(ReadError::NotFound),
            status => Err(refused(status, &a.body)),
        }
    }

    /// What the repository page shows of the manifest `digest` (cached by digest).
    pub async fn summary(&self, repo: &str, digest: &str) -> Result<Summary, ReadError> {
        if let Some(s) = self.summaries.get(digest) {
            return Ok(s);
        }
        let m = self.manifest(repo, digest).await?;
        let s = if is_index(&m) {
            let children: Vec<&Value> = m
                .json
                .get("manifests")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let mut s = Summary {
                platforms: children
                    .iter()
                    .filter_map(|c| c.get("platform").and_then(platform))
                    .filter(|p| p != "unknown/unknown")
                    .collect(),
                ..Summary::default()
            };
            let digests: Vec<String> = children
                .iter()
                .filter(|c| {
                    c.get("platform").and_then(platform).as_deref() != Some("unknown/unknown")
                })
                .filter_map(|c| c.get("digest").and_then(Value::as_str).map(str::to_owned))
                .take(MAX_CHILDREN)
                .collect();
            let parts: Vec<Summary> = futures_util::stream::iter(digests)
                .map(|d| async move { self.image_summary(repo, &d).await })
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
            for p in parts {
                s.size += p.size;
                s.created = s.created.max(p.created);
            }
            s
        } else {
            self.summarize_image(repo, &m).await?
        };
        self.summaries.put(digest, &s);
        Ok(s)
    }

    /// The summary of an image manifest (not an index).
    async fn image_summary(&self, repo: &str, digest: &str) -> Result<Summary, ReadError> {
        if let Some(s) = self.summaries.get(digest) {
            return Ok(s);
        }
        let m = self.manifest(repo, digest).await?;
        let s = self.summarize_image(repo, &m).await?;
        self.summaries.put(digest, &s);
        Ok(s)
    }

    async fn summarize_image(&self, repo: &str, m: &Manifest) -> Result<Summary, ReadError> {
        let size = m
            .json
            .get("layers")
            .and_then(Value::as_array)
            .map_or(0, |l| {
                l.iter()
                    .filter_map(|l| l.get("size").and_then(Value::as_u64))
                    .sum()
            });
        let mut s = Summary {
            size,
            ..Summary::default()
        };
        let config = m.json.get("config");
        let config_type = config
            .and_then(|c| c.get("mediaType"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let is_image = config_type == "application/vnd.oci.image.config.v1+json"
            || config_type == "application/vnd.docker.container.image.v1+json";
        if let (true, Some(d)) = (
            is_image,
            config.and_then(|c| c.get("digest")).and_then(Value::as_str),
        ) {
            match self.config(repo, d).await {
                Ok(c) => {
                    s.created = c
                        .get("created")
                        .and_then(Value::as_str)
                        .and_then(text::parse_rfc3339);
                    s.platforms.extend(platform(&c));
                }
                // A manifest whose config is missing still has a row.
                Err(ReadError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        if s.created.is_none() {
            s.created = m
                .json
                .pointer("/annotations/org.opencontainers.image.created")
                .and_then(Value::as_str)
                .and_then(text::parse_rfc3339);
        }
        Ok(s)
    }
}

/// The registry's error message in an answer, for the page.
fn refused(status: u16, body: &[u8]) -> ReadError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/errors/0/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("status {status}"));
    ReadError::Refused { status, message }
}
