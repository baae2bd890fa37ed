//! Uploads: sessions whose data and running hash live in storage, so any process can take
//! the next chunk; chunks in order, the closing digest check, cancel.

use super::*;

impl Registry {
    pub(super) fn upload_state(
        &self,
        name: &RepoName,
        id: &UploadId,
    ) -> Arc<tokio::sync::Mutex<UploadState>> {
        let key = format!("{name}@{id}");
        self.uploads
            .lock()
            .expect("upload map lock")
            .entry(key)
            .or_default()
            .clone()
    }

    pub(super) fn forget_upload(&self, name: &RepoName, id: &UploadId) {
        self.uploads
            .lock()
            .expect("upload map lock")
            .remove(&format!("{name}@{id}"));
    }

    /// Passes `r` on; when it says the upload is unknown, drops the state made for it, so that
    /// nothing about an id the store does not have is kept in memory.
    pub(super) fn forget_unknown<T>(
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
    pub(super) async fn write_upload(
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
    pub(super) async fn saved_hash(
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
    pub(super) async fn hash_object(
        &self,
        path: &str,
        alg: Algorithm,
    ) -> Result<Digest, RegistryError> {
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
}
