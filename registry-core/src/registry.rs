//! The registry's operations over a [`Storage`]: what the HTTP handlers call. Every input is an
//! already-validated newtype; every answer is a value or a [`RegistryError`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use serde_json::Value;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{ErrorCode, RegistryError, StorageError};
use crate::manifest::{self, Kind};
use crate::metrics;
use crate::name::{Reference, RepoName, Tag, UploadId};
use crate::storage::{layout, ByteStream, Storage};

/// How long an upload session that never received data is kept.
pub const EMPTY_UPLOAD_AGE: Duration = Duration::from_secs(3600);

/// Settings the registry's behaviour depends on.
#[derive(Debug, Clone)]
pub struct Options {
    pub delete_enabled: bool,
    /// Manifests larger than this are refused with 413.
    pub max_manifest_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            delete_enabled: true,
            max_manifest_bytes: 4 * 1024 * 1024,
        }
    }
}

/// In-memory state of an upload: a lock that serializes its requests, and the hash of the bytes
/// stored so far when this process saw them all (a fast path: without it the hash state saved in
/// storage is loaded, and without that the digest is recomputed from the data).
#[derive(Default)]
struct UploadState {
    hash: Option<(u64, Hasher)>,
}

/// How long a blob redirect's pre-signed URL stays valid (as Distribution's, 20 minutes).
const REDIRECT_VALIDITY: Duration = Duration::from_secs(20 * 60);

/// A manifest as read back from storage.
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// Where an upload stands after a request.
pub struct UploadProgress {
    pub id: UploadId,
    pub size: u64,
}

/// A chunk's place in an upload, from `Content-Range: <start>-<end>`.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRange {
    pub start: u64,
    pub end: u64,
}

/// The registry.
pub struct Registry {
    storage: Arc<dyn Storage>,
    options: Options,
    uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<UploadState>>>>,
    notifier: Option<crate::events::Notifier>,
}

fn link_target(bytes: &[u8]) -> Result<Digest, RegistryError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| RegistryError::internal("corrupt link file in storage"))
}

/// `Range` for an upload of `size` bytes, as Distribution writes it (`0-0` when empty).
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// Counts an upload body transfer in progress for as long as it lives.
struct InProgress;
impl InProgress {
    fn new() -> Self {
        metrics::uploads_in_progress(1);
        InProgress
    }
}
impl Drop for InProgress {
    fn drop(&mut self) {
        metrics::uploads_in_progress(-1);
    }
}

impl Registry {
    pub fn new(storage: Arc<dyn Storage>, options: Options) -> Registry {
        Registry {
            storage,
            options,
            uploads: Mutex::new(HashMap::new()),
            notifier: None,
        }
    }

    /// Sends this registry's events to `notifier`'s endpoints.
    pub fn with_notifier(mut self, notifier: crate::events::Notifier) -> Registry {
        self.notifier = Some(notifier);
        self
    }

    /// Where events go, when notifications are configured.
    pub fn notifier(&self) -> Option<&crate::events::Notifier> {
        self.notifier.as_ref()
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn check_delete(&self) -> Result<(), RegistryError> {
        if self.options.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::unsupported(
                "deletion is disabled on this registry",
            ))
        }
    }

    /// Whether anything is stored under `dir` (an object store has no directories to stat).
    async fn dir_exists(&self, dir: &str) -> Result<bool, RegistryError> {
        match self.storage.list(dir).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn exists(&self, path: &str) -> Result<bool, RegistryError> {
        match self.storage.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    // ---- blobs ----

    /// The size of a blob linked into `name` (as a layer, or as a manifest).
    pub async fn blob_size(&self, name: &RepoName, digest: &Digest) -> Result<u64, RegistryError> {
        let linked = self.exists(&layout::layer_link(name, digest)).await?
            || self.exists(&layout::revision_link(name, digest)).await?;
        if !linked {
            return Err(RegistryError::blob_unknown(digest));
        }
        match self.storage.stat(&layout::blob_data(digest)).await {
            Ok(m) => Ok(m.size),
            Err(e) if e.is_not_found() => Err(RegistryError::blob_unknown(digest)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn blob_stream(
        &self,
        digest: &Digest,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<ByteStream, RegistryError> {
        match self.storage.reader(&layout::blob_data(digest), range).await {
            Ok(s) => Ok(s),
            Err(e) if e.is_not_found() => Err(RegistryError::blob_unknown(digest)),
            Err(e) => Err(e.into()),
        }
    }

    /// A pre-signed URL of the blob's bytes in the store, when the store is configured to
    /// redirect blob GETs there (S3's `redirect`). The caller has checked the repository link.
    pub async fn blob_redirect(&self, digest: &Digest) -> Result<Option<String>, RegistryError> {
        Ok(self
            .storage
            .presign(&layout::blob_data(digest), REDIRECT_VALIDITY)
            .await?)
    }

    /// Unlinks a blob from a repository; the data goes at the next garbage collection.
    pub async fn delete_blob(&self, name: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
        self.check_delete()?;
        let link = layout::layer_link(name, digest);
        if !self.exists(&link).await? {
            return Err(RegistryError::blob_unknown(digest));
        }
        self.storage.delete(parent(&link)).await?;
        Ok(())
    }

    /// Links `digest` from repository `from` into `name`; its size, or `None` when `from` has
    /// no such blob.
    pub async fn mount_blob(
        &self,
        name: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let size = match self.blob_size(from, digest).await {
            Ok(s) => s,
            Err(e) if e.code == ErrorCode::BlobUnknown => return Ok(None),
            Err(e) => return Err(e),
        };
        self.link_blob(name, digest).await?;
        metrics::upload_outcome("mounted");
        Ok(Some(size))
    }

    async fn link_blob(&self, name: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
        self.storage
            .put(
                &layout::layer_link(name, digest),
                Bytes::from(digest.to_string()),
            )
            .await?;
        Ok(())
    }

    // ---- uploads ----

    fn upload_state(&self, name: &RepoName, id: &UploadId) -> Arc<tokio::sync::Mutex<UploadState>> {
        let key = format!("{name}@{id}");
        self.uploads
            .lock()
            .expect("upload map lock")
            .entry(key)
            .or_default()
            .clone()
    }

    fn forget_upload(&self, name: &RepoName, id: &UploadId) {
        self.uploads
            .lock()
            .expect("upload map lock")
            .remove(&format!("{name}@{id}"));
    }

    /// Passes `r` on; when it says the upload is unknown, drops the state made for it, so that
    /// nothing about an id the store does not have is kept in memory.
    fn forget_unknown<T>(
        &self,
        name: &RepoName,
        id: &UploadId,
        r: Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        if matches!(&r, Err(e) if e.code == ErrorCode::BlobUploadUnknown) {
            self.forget_upload(name, id);
        }
        r
    }

    /// In-memory upload states (for tests).
    pub fn upload_states(&self) -> usize {
        self.uploads.lock().expect("upload map lock").len()
    }

    /// Starts an upload session.
    pub async fn start_upload(&self, name: &RepoName) -> Result<UploadId, RegistryError> {
        let id = UploadId::new_random();
        let started = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        self.storage
            .put(&layout::upload_startedat(name, &id), Bytes::from(started))
            .await?;
        self.storage
            .writer(&layout::upload_data(name, &id), false)
            .await?
            .commit()
            .await?;
        metrics::upload_outcome("started");
        Ok(id)
    }

    /// Bytes received so far by an upload.
    pub async fn upload_size(&self, name: &RepoName, id: &UploadId) -> Result<u64, RegistryError> {
        match self
            .storage
            .stat_write(&layout::upload_data(name, id))
            .await
        {
            Ok(m) => Ok(m.size),
            Err(e) if e.is_not_found() => Err(RegistryError::upload_unknown()),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends a chunk (PATCH). With `range`, the chunk must start where the upload ends.
    pub async fn append_upload(
        &self,
        name: &RepoName,
        id: &UploadId,
        range: Option<ChunkRange>,
        body: ByteStream,
    ) -> Result<UploadProgress, RegistryError> {
        let state = self.upload_state(name, id);
        let mut state = state.lock().await;
        let size = self.write_upload(name, id, &mut state, range, body).await;
        let size = self.forget_unknown(name, id, size)?;
        Ok(UploadProgress {
            id: id.clone(),
            size,
        })
    }

    /// Streams `body` onto the end of the upload's data; returns the new size.
    async fn write_upload(
        &self,
        name: &RepoName,
        id: &UploadId,
        state: &mut UploadState,
        range: Option<ChunkRange>,
        mut body: ByteStream,
    ) -> Result<u64, RegistryError> {
        let _in_progress = InProgress::new();
        let mut writer = match self
            .storage
            .writer(&layout::upload_data(name, id), true)
            .await
        {
            Ok(w) => w,
            Err(e) if e.is_not_found() => return Err(RegistryError::upload_unknown()),
            Err(e) => return Err(e.into()),
        };
        let current = writer.size();
        if let Some(r) = range {
            if r.start != current || r.end < r.start {
                return Err(RegistryError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::BlobUploadInvalid,
                    format!(
                        "chunk {}-{} does not continue the upload, which has {current} bytes",
                        r.start, r.end
                    ),
                )
                .with_header(http::header::RANGE, upload_range(current))
                .with_header(
                    http::header::LOCATION,
                    format!("/v2/{name}/blobs/uploads/{id}"),
                ));
            }
        }
        let mut hasher = match state.hash.take() {
            Some((offset, h)) if offset == current => Some(h),
            _ if current == 0 => Some(Algorithm::Sha256.hasher()),
            _ => self.saved_hash(name, id, Algorithm::Sha256, current).await,
        };
        let mut body_error = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => {
                    if let Err(e) = writer.write(c.clone()).await {
                        return Err(e.into());
                    }
                    if let Some(h) = hasher.as_mut() {
                        h.update(&c);
                    }
                    metrics::bytes_received(c.len());
                }
                Err(e) => {
                    body_error = Some(e);
                    break;
                }
            }
        }
        // Keep what arrived, even from an aborted body: the client can resume after it.
        let size = writer.commit().await?;
        if let Some(h) = hasher {
            // Beside the data, so whichever process takes the next request has it (unless
            // nothing arrived: the state saved for this size is still there).
            if let Some(saved) = h.save().filter(|_| size != current) {
                let key = layout::upload_hashstate(name, id, h.algorithm().as_str(), size);
                if let Err(e) = self.storage.put(&key, Bytes::from(saved)).await {
                    tracing::warn!(error = %e, "upload hash state not saved; the digest will be computed from the data");
                }
            }
            state.hash = Some((size, h));
        }
        if let Some(r) = range {
            let expected = r.end - r.start + 1;
            if body_error.is_none() && size - current != expected {
                return Err(RegistryError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::BlobUploadInvalid,
                    format!(
                        "Content-Range announced {expected} bytes, the body had {}",
                        size - current
                    ),
                )
                .with_header(http::header::RANGE, upload_range(size)));
            }
        }
        if let Some(e) = body_error {
            metrics::upload_outcome("interrupted");
            return Err(RegistryError::upload_invalid(format!(
                "request body ended with an error after {} bytes: {e}",
                size - current
            )));
        }
        Ok(size)
    }

    /// Finishes an upload (PUT `?digest=`), with an optional last chunk: verifies the digest and
    /// makes the blob visible in `name`. On a mismatch the upload is discarded.
    pub async fn complete_upload(
        &self,
        name: &RepoName,
        id: &UploadId,
        digest: &Digest,
        range: Option<ChunkRange>,
        body: ByteStream,
    ) -> Result<u64, RegistryError> {
        let state_arc = self.upload_state(name, id);
        let mut state = state_arc.lock().await;
        let size = self.write_upload(name, id, &mut state, range, body).await;
        let size = self.forget_unknown(name, id, size)?;
        let data = layout::upload_data(name, id);
        let hasher = match state.hash.take() {
            Some((offset, h)) if offset == size && h.algorithm() == digest.algorithm() => Some(h),
            _ => self.saved_hash(name, id, digest.algorithm(), size).await,
        };
        let actual = match hasher {
            Some(h) => h.finish(),
            None => self.hash_object(&data, digest.algorithm()).await?,
        };
        if &actual != digest {
            self.storage.delete(&layout::upload_dir(name, id)).await?;
            self.forget_upload(name, id);
            metrics::upload_outcome("digest_mismatch");
            return Err(RegistryError::digest_invalid(format!(
                "the uploaded content has digest {actual}, not {digest}"
            ))
            .with_detail(serde_json::json!({ "digest": digest.to_string() })));
        }
        self.storage
            .rename(&data, &layout::blob_data(digest))
            .await?;
        self.link_blob(name, digest).await?;
        self.storage.delete(&layout::upload_dir(name, id)).await?;
        self.forget_upload(name, id);
        metrics::upload_outcome("completed");
        Ok(size)
    }

    /// The running hash of an upload's first `offset` bytes, as saved in storage (by this or
    /// another process, or by Distribution), if there is one.
    async fn saved_hash(
        &self,
        name: &RepoName,
        id: &UploadId,
        alg: Algorithm,
        offset: u64,
    ) -> Option<Hasher> {
        let key = layout::upload_hashstate(name, id, alg.as_str(), offset);
        let saved = self.storage.get(&key).await.ok()?;
        Hasher::restore(alg, &saved)
    }

    /// The digest of a stored object, read back from storage (counted: it is the slow path).
    async fn hash_object(&self, path: &str, alg: Algorithm) -> Result<Digest, RegistryError> {
        metrics::upload_outcome("rehashed");
        let mut h = alg.hasher();
        let mut s = self.storage.reader(path, None).await?;
        while let Some(c) = s.next().await {
            let c = c.map_err(|e| StorageError::io(path, e))?;
            h.update(&c);
        }
        Ok(h.finish())
    }

    /// Cancels an upload (DELETE).
    pub async fn cancel_upload(&self, name: &RepoName, id: &UploadId) -> Result<(), RegistryError> {
        let state = self.upload_state(name, id);
        let _guard = state.lock().await;
        let known = self.upload_size(name, id).await;
        self.forget_unknown(name, id, known)?;
        self.storage.delete(&layout::upload_dir(name, id)).await?;
        self.forget_upload(name, id);
        metrics::upload_outcome("cancelled");
        Ok(())
    }

    // ---- manifests ----

    /// The digest a reference names in `name`.
    async fn resolve(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Digest, RegistryError> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match self.storage.get(&layout::tag_current_link(name, t)).await {
                Ok(b) => link_target(&b)?,
                Err(e) if e.is_not_found() => {
                    return Err(RegistryError::manifest_unknown(reference))
                }
                Err(e) => return Err(e.into()),
            },
        };
        if !self.exists(&layout::revision_link(name, &digest)).await? {
            return Err(RegistryError::manifest_unknown(reference));
        }
        Ok(digest)
    }

    pub async fn get_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, RegistryError> {
        let digest = self.resolve(name, reference).await?;
        let bytes = match self.storage.get(&layout::blob_data(&digest)).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(RegistryError::manifest_unknown(reference)),
            Err(e) => return Err(e.into()),
        };
        Ok(StoredManifest {
            media_type: manifest::detect_media_type(&bytes),
            digest,
            bytes,
        })
    }

    /// Stores a manifest (PUT). Returns its digest and, when it has one, its subject.
    pub async fn put_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<(Digest, Option<Digest>), RegistryError> {
        if bytes.len() > self.options.max_manifest_bytes {
            return Err(manifest_too_large(self.options.max_manifest_bytes));
        }
        let parsed = manifest::parse(&bytes, content_type)?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(RegistryError::digest_invalid(format!(
                        "the manifest has digest {actual}, not {d}"
                    ))
                    .with_detail(serde_json::json!({ "digest": d.to_string() })));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        match parsed.kind {
            Kind::Image => {
                for r in parsed.blobs.iter().filter(|r| !r.foreign) {
                    let linked = self.exists(&layout::layer_link(name, &r.digest)).await?
                        && self.exists(&layout::blob_data(&r.digest)).await?;
                    if !linked {
                        return Err(manifest_blob_unknown(&r.digest));
                    }
                }
            }
            Kind::Index => {
                for d in &parsed.manifests {
                    if !self.exists(&layout::revision_link(name, d)).await? {
                        return Err(manifest_blob_unknown(d));
                    }
                }
            }
        }
        self.storage.put(&layout::blob_data(&digest), bytes).await?;
        let link = Bytes::from(digest.to_string());
        self.storage
            .put(&layout::revision_link(name, &digest), link.clone())
            .await?;
        if let Some(subject) = &parsed.subject {
            self.storage
                .put(&layout::referrer_link(name, subject, &digest), link.clone())
                .await?;
        }
        if let Reference::Tag(t) = reference {
            self.storage
                .put(&layout::tag_index_link(name, t, &digest), link.clone())
                .await?;
            self.storage
                .put(&layout::tag_current_link(name, t), link)
                .await?;
        }
        Ok((digest, parsed.subject))
    }

    /// Deletes a manifest by digest (with the tags that point at it), or a tag. Returns the
    /// tags removed with a manifest.
    pub async fn delete_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Vec<Tag>, RegistryError> {
        self.check_delete()?;
        let mut removed = Vec::new();
        match reference {
            Reference::Tag(t) => {
                if !self.exists(&layout::tag_current_link(name, t)).await? {
                    return Err(RegistryError::manifest_unknown(reference));
                }
                self.storage.delete(&layout::tag_dir(name, t)).await?;
            }
            Reference::Digest(d) => {
                let stored = self.get_manifest(name, reference).await?;
                for tag in self.list_tags(name).await.unwrap_or_default() {
                    let Ok(tag) = tag.parse::<Tag>() else {
                        continue;
                    };
                    if let Ok(b) = self
                        .storage
                        .get(&layout::tag_current_link(name, &tag))
                        .await
                    {
                        if link_target(&b).ok().as_ref() == Some(d) {
                            self.storage.delete(&layout::tag_dir(name, &tag)).await?;
                            removed.push(tag);
                        }
                    }
                }
                if let Ok(p) = manifest::parse(&stored.bytes, None) {
                    if let Some(subject) = p.subject {
                        self.storage
                            .delete(parent(&layout::referrer_link(name, &subject, d)))
                            .await?;
                    }
                }
                self.storage
                    .delete(parent(&layout::revision_link(name, d)))
                    .await?;
            }
        }
        Ok(removed)
    }

    // ---- listings ----

    /// The tags of a repository, sorted. `NAME_UNKNOWN` when there is no such repository.
    pub async fn list_tags(&self, name: &RepoName) -> Result<Vec<String>, RegistryError> {
        match self.storage.list(&layout::tags_dir(name)).await {
            Ok(mut tags) => {
                tags.retain(|t| t.parse::<Tag>().is_ok());
                tags.sort();
                Ok(tags)
            }
            Err(e) if e.is_not_found() => {
                if self.dir_exists(&layout::manifests_dir(name)).await?
                    || self.dir_exists(&layout::repo_dir(name)).await?
                {
                    Ok(Vec::new())
                } else {
                    Err(RegistryError::name_unknown(name))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every repository with manifests, sorted (the catalog).
    pub async fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .walk_repositories()
            .await?
            .into_iter()
            .filter_map(|(name, has_manifests)| has_manifests.then_some(name))
            .collect())
    }

    /// The manifests in `name` whose subject is `subject`, as an OCI image index; with
    /// `artifact_type`, only those of that type.
    pub async fn referrers(
        &self,
        name: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Value, RegistryError> {
        let mut digests = Vec::new();
        let dir = layout::referrers_dir(name, subject);
        match self.storage.list(&dir).await {
            Ok(algs) => {
                for alg in algs {
                    for hex in self
                        .storage
                        .list(&format!("{dir}/{alg}"))
                        .await
                        .unwrap_or_default()
                    {
                        if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                            digests.push(d);
                        }
                    }
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        digests.sort();
        let mut manifests = Vec::new();
        for d in digests {
            let stored = match self.get_manifest(name, &Reference::Digest(d.clone())).await {
                Ok(m) => m,
                Err(e) if e.code == ErrorCode::ManifestUnknown => continue,
                Err(e) => return Err(e),
            };
            let Ok(parsed) = manifest::parse(&stored.bytes, None) else {
                continue;
            };
            if artifact_type.is_some() && parsed.artifact_type().as_deref() != artifact_type {
                continue;
            }
            manifests.push(parsed.referrer_descriptor(&d, stored.bytes.len()));
        }
        Ok(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_INDEX,
            "manifests": manifests,
        }))
    }

    // ---- maintenance ----

    /// Deletes upload sessions started longer than `max_age` ago, and sessions that never got
    /// past their first request (no data) after [`EMPTY_UPLOAD_AGE`] or `max_age`, whichever is
    /// sooner. Returns how many went.
    pub async fn purge_uploads(&self, max_age: Duration) -> Result<usize, RegistryError> {
        let now = SystemTime::now();
        let mut purged = 0;
        for repo in self.all_repository_dirs().await? {
            let Ok(name) = repo.parse::<RepoName>() else {
                continue;
            };
            let Ok(ids) = self.storage.list(&layout::uploads_dir(&name)).await else {
                continue;
            };
            for id in ids {
                let Ok(id) = id.parse::<UploadId>() else {
                    continue;
                };
                let started = match self
                    .storage
                    .get(&layout::upload_startedat(&name, &id))
                    .await
                {
                    Ok(b) => std::str::from_utf8(&b)
                        .ok()
                        .and_then(|s| humantime::parse_rfc3339_weak(s.trim()).ok()),
                    Err(_) => None,
                };
                let data = self
                    .storage
                    .stat_write(&layout::upload_data(&name, &id))
                    .await
                    .ok();
                let started = started
                    .or(data.as_ref().map(|m| m.modified))
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let empty = data.as_ref().is_none_or(|m| m.size == 0);
                let limit = if empty {
                    max_age.min(EMPTY_UPLOAD_AGE)
                } else {
                    max_age
                };
                if now.duration_since(started).unwrap_or_default() > limit {
                    let state = self.upload_state(&name, &id);
                    let _guard = state.lock().await;
                    self.storage.delete(&layout::upload_dir(&name, &id)).await?;
                    self.forget_upload(&name, &id);
                    metrics::upload_outcome("purged");
                    purged += 1;
                }
            }
        }
        // What the store itself keeps of writes never finished (S3 multipart uploads, whether
        // this registry or Distribution started them).
        let older_than = now.checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH);
        match self
            .storage
            .purge_incomplete(&layout::repositories_root(), older_than)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(aborted = n, "aborted abandoned multipart uploads"),
            Err(e) => tracing::warn!(error = %e, "could not list abandoned multipart uploads"),
        }
        Ok(purged)
    }

    /// Discards an upload session at once (a monolithic upload that failed: its client was
    /// never given the session, so nobody can resume it).
    pub async fn discard_upload(&self, name: &RepoName, id: &UploadId) {
        let state = self.upload_state(name, id);
        let _guard = state.lock().await;
        if let Err(e) = self.storage.delete(&layout::upload_dir(name, id)).await {
            if !e.is_not_found() {
                tracing::warn!(error = %e, "could not discard a failed upload");
            }
        }
        self.forget_upload(name, id);
    }

    /// Whether the store answers (a listing of the repositories' root), for readiness checks.
    pub async fn ready(&self) -> Result<(), String> {
        match self.storage.list(&layout::repositories_root()).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(format!("the store does not answer: {e}")),
        }
    }

    /// Every repository directory (with manifests, or only uploads or layers), sorted.
    pub(crate) async fn all_repository_dirs(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .walk_repositories()
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// Walks `repositories/`: a directory holding `_`-prefixed entries is a repository (with
    /// manifests when one is `_manifests`, as Distribution decides); other children with valid
    /// names are walked further, since repositories nest. Sorted by name.
    async fn walk_repositories(&self) -> Result<Vec<(String, bool)>, RegistryError> {
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        let root = layout::repositories_root();
        while let Some(rel) = stack.pop() {
            let path = if rel.is_empty() {
                root.clone()
            } else {
                format!("{root}/{rel}")
            };
            let children = match self.storage.list(&path).await {
                Ok(c) => c,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            if !rel.is_empty() && children.iter().any(|c| c.starts_with('_')) {
                out.push((rel.clone(), children.iter().any(|c| c == "_manifests")));
            }
            for c in children.into_iter().filter(|c| !c.starts_with('_')) {
                let child = if rel.is_empty() {
                    c
                } else {
                    format!("{rel}/{c}")
                };
                if child.parse::<RepoName>().is_ok() {
                    stack.push(child);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The directory part of a storage key.
pub(crate) fn parent(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(p, _)| p)
}

fn manifest_blob_unknown(d: &Digest) -> RegistryError {
    RegistryError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::ManifestBlobUnknown,
        format!("the manifest references {d}, which this repository does not have"),
    )
    .with_detail(serde_json::json!({ "digest": d.to_string() }))
}

pub(crate) fn manifest_too_large(limit: usize) -> RegistryError {
    RegistryError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::SizeInvalid,
        format!("manifest is larger than the limit of {limit} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FsStorage, ObjectMeta, ObjectWriter};
    use std::ops::Range;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A filesystem store that counts reads of upload data.
    struct Counting {
        inner: FsStorage,
        data_reads: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Storage for Counting {
        async fn get(&self, p: &str) -> Result<Bytes, StorageError> {
            self.inner.get(p).await
        }
        async fn put(&self, p: &str, d: Bytes) -> Result<(), StorageError> {
            self.inner.put(p, d).await
        }
        async fn stat(&self, p: &str) -> Result<ObjectMeta, StorageError> {
            self.inner.stat(p).await
        }
        async fn reader(&self, p: &str, r: Option<Range<u64>>) -> Result<ByteStream, StorageError> {
            if p.contains("/_uploads/") {
                self.data_reads.fetch_add(1, Ordering::Relaxed);
            }
            self.inner.reader(p, r).await
        }
        async fn list(&self, p: &str) -> Result<Vec<String>, StorageError> {
            self.inner.list(p).await
        }
        async fn delete(&self, p: &str) -> Result<(), StorageError> {
            self.inner.delete(p).await
        }
        async fn writer(&self, p: &str, a: bool) -> Result<Box<dyn ObjectWriter>, StorageError> {
            self.inner.writer(p, a).await
        }
        async fn rename(&self, f: &str, t: &str) -> Result<(), StorageError> {
            self.inner.rename(f, t).await
        }
    }

    fn body(data: &[u8]) -> ByteStream {
        let b = Bytes::copy_from_slice(data);
        Box::pin(futures_util::stream::once(async move { Ok(b) }))
    }

    /// Two registries on one store play two processes: the chunks of one upload alternate
    /// between them, and the one that finishes verifies the digest from the saved hash state,
    /// without reading the data back.
    #[tokio::test]
    async fn an_upload_moves_between_processes_without_a_re_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Counting {
            inner: FsStorage::open(dir.path()).unwrap(),
            data_reads: AtomicUsize::new(0),
        });
        let a = Registry::new(store.clone(), Options::default());
        let b = Registry::new(store.clone(), Options::default());
        let name: RepoName = "split/upload".parse().unwrap();
        let data: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        let id = a.start_upload(&name).await.unwrap();
        let chunks: Vec<&[u8]> = data.chunks(70_000).collect();
        for (i, c) in chunks.iter().enumerate() {
            let r = if i % 2 == 0 { &a } else { &b };
            r.append_upload(&name, &id, None, body(c)).await.unwrap();
        }
        let digest = Digest::sha256_of(&data);
        // The process that did not take the last chunk finishes.
        let last = if chunks.len().is_multiple_of(2) {
            &a
        } else {
            &b
        };
        let size = last
            .complete_upload(&name, &id, &digest, None, body(b""))
            .await
            .unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(store.data_reads.load(Ordering::Relaxed), 0, "no re-read");
        assert_eq!(a.blob_size(&name, &digest).await.unwrap(), size);
        // A saved state that does not fit (here: none at all) falls back to reading the data.
        let id = a.start_upload(&name).await.unwrap();
        a.append_upload(&name, &id, None, body(&data[..1000]))
            .await
            .unwrap();
        store
            .delete(&format!("{}/hashstates", layout::upload_dir(&name, &id)))
            .await
            .unwrap();
        b.complete_upload(
            &name,
            &id,
            &Digest::sha256_of(&data[..1000]),
            None,
            body(b""),
        )
        .await
        .unwrap();
        assert_eq!(store.data_reads.load(Ordering::Relaxed), 1);
    }
}
