//! The registry's operations over a [`Storage`]: what the HTTP handlers call. Every input is an
//! already-validated newtype; every answer is a value or a [`RegistryError`].
//!
//! Here: the [`Registry`] itself, its options and the shared helpers. The operations, one
//! `impl Registry` per concern: `blobs` (reads, links, mounts, deletes), `uploads` (sessions,
//! chunks, the closing digest check), `manifests` (tags, reads, validated writes, deletes),
//! `listings` (tags, catalog, referrers), `maintenance` (stale-upload purge, readiness).

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

mod blobs;
mod listings;
mod maintenance;
mod manifests;
mod uploads;

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
