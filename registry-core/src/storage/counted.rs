//! Every storage request counted by kind (`regcore_storage_requests_total{op}`), around any
//! backend. On an object store each is a round trip of 10-100 ms, so how many an operation
//! takes is what its latency is made of; on the filesystem the same counts show the shape.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteStream, ObjectMeta, ObjectWriter, Storage, StorageError};
use crate::metrics::storage_request;

/// A backend whose requests are counted.
pub struct Counted {
    inner: Arc<dyn Storage>,
}

impl Counted {
    pub fn new(inner: Arc<dyn Storage>) -> Counted {
        Counted { inner }
    }
}

#[async_trait]
impl Storage for Counted {
    async fn get(&self, path: &str) -> Result<Bytes, StorageError> {
        storage_request("get");
        self.inner.get(path).await
    }

    async fn put(&self, path: &str, data: Bytes) -> Result<(), StorageError> {
        storage_request("put");
        self.inner.put(path, data).await
    }

    async fn stat(&self, path: &str) -> Result<ObjectMeta, StorageError> {
        storage_request("stat");
        self.inner.stat(path).await
    }

    async fn reader(
        &self,
        path: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StorageError> {
        storage_request("read");
        self.inner.reader(path, range).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        storage_request("list");
        self.inner.list(prefix).await
    }

    async fn delete(&self, path: &str) -> Result<(), StorageError> {
        storage_request("delete");
        self.inner.delete(path).await
    }

    async fn writer(
        &self,
        path: &str,
        append: bool,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        storage_request("write");
        self.inner.writer(path, append).await
    }

    async fn stat_write(&self, path: &str) -> Result<ObjectMeta, StorageError> {
        storage_request("stat");
        self.inner.stat_write(path).await
    }

    async fn purge_incomplete(
        &self,
        prefix: &str,
        older_than: std::time::SystemTime,
    ) -> Result<usize, StorageError> {
        self.inner.purge_incomplete(prefix, older_than).await
    }

    async fn presign(
        &self,
        path: &str,
        expires: std::time::Duration,
    ) -> Result<Option<String>, StorageError> {
        self.inner.presign(path, expires).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        storage_request("rename");
        self.inner.rename(from, to).await
    }
}
