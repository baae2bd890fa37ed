//! Storage: a small object-store-shaped trait and its implementations.
//!
//! Paths are `/`-separated keys relative to the storage root (`docker/registry/v2/...`, see
//! [`layout`]). The trait asks for nothing an S3-compatible store lacks: whole-object `put` that is
//! atomic, streamed writes that become visible only on `commit`, ranged reads, prefix listing,
//! deletion of a prefix, and `rename` that makes the destination appear whole (copy + delete on an
//! object store). Nothing above it relies on POSIX append or rename.
//!
//! - [`fs`]: a local directory (Distribution's `filesystem` driver layout), counted per call by
//!   [`counted`].
//! - [`s3`]: an S3-compatible bucket (Distribution's `s3` driver layout), counted per HTTP
//!   request; streamed writes are multipart uploads whose state lives in the bucket.

pub mod counted;
pub mod fs;
pub mod layout;
pub mod s3;

use std::ops::Range;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

pub use crate::error::StorageError;
pub use counted::Counted;
pub use fs::FsStorage;
pub use s3::{S3Settings, S3Storage};

/// Whether `key` is a storage key every backend can hold as it is: non-empty `/`-separated
/// components, none empty, `.` or `..`, and no backslash or NUL. Nothing it accepts can leave
/// the storage root.
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.contains(['\\', '\0'])
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A stream of an object's bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// What `stat` tells about an object.
#[derive(Debug, Clone, Copy)]
pub struct ObjectMeta {
    pub size: u64,
    pub modified: SystemTime,
}

/// A storage backend.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The whole of a small object (links, manifests, timestamps).
    async fn get(&self, path: &str) -> Result<Bytes, StorageError>;
    /// Atomically and durably replaces an object with `data`: readers see the old or the new
    /// content, never a mix, and after return it survives a crash.
    async fn put(&self, path: &str, data: Bytes) -> Result<(), StorageError>;
    async fn stat(&self, path: &str) -> Result<ObjectMeta, StorageError>;
    /// What `stat` tells, for an object that may be a streamed write in progress (whose bytes
    /// a backend may keep elsewhere until it is finished).
    async fn stat_write(&self, path: &str) -> Result<ObjectMeta, StorageError> {
        self.stat(path).await
    }
    /// A stream of the object's bytes, or of `range` of them.
    async fn reader(
        &self,
        path: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StorageError>;
    /// The names of the direct children of `prefix` (objects and "directories"), sorted.
    /// A prefix with nothing under it lists as `NotFound`.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Deletes an object or everything under a prefix. Deleting nothing is not an error.
    async fn delete(&self, path: &str) -> Result<(), StorageError>;
    /// A writer for a resumable object: with `append`, writes continue after what a previous
    /// writer committed (and the object must exist: `NotFound` otherwise). Data is durable once
    /// `commit` returns.
    async fn writer(&self, path: &str, append: bool)
        -> Result<Box<dyn ObjectWriter>, StorageError>;
    /// Moves an object so that it appears whole at `to` (replacing what was there).
    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError>;
    /// Abandons the store's own leftovers of streamed writes under `prefix` that were started
    /// before `older_than` (multipart uploads on S3); returns how many. Nothing by default.
    async fn purge_incomplete(
        &self,
        _prefix: &str,
        _older_than: SystemTime,
    ) -> Result<usize, StorageError> {
        Ok(0)
    }
    /// A URL from which a client may GET the object directly for `expires`, when the backend
    /// offers one and is configured to (S3's `redirect`).
    async fn presign(
        &self,
        _path: &str,
        _expires: Duration,
    ) -> Result<Option<String>, StorageError> {
        Ok(None)
    }
}

/// A streamed write in progress (see [`Storage::writer`]).
#[async_trait]
pub trait ObjectWriter: Send {
    /// Bytes in the object so far, committed and written.
    fn size(&self) -> u64;
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError>;
    /// Makes everything written durable and returns the object's size.
    async fn commit(self: Box<Self>) -> Result<u64, StorageError>;
}
