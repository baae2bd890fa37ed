//! Streamed writes on S3: a multipart upload whose state lives in the bucket.
//!
//! A writer for key `K` keeps one part buffer. Each full part goes to the store as a part of a
//! multipart upload of `K` (started with the first full part). `commit` uploads what is left as
//! one more part when it is at least S3's 5 MiB minimum, then writes the state object
//! `K.s3upload`: the upload id, the parts' ETags and sizes, and the bytes after the last part
//! (under 5 MiB). That single PUT is the commit point: whatever process opens `K` next continues
//! from it, and a crash before it leaves the previous state whole (parts uploaded since are
//! uploaded again under the same numbers).
//!
//! Until it is finished, `K` itself does not exist; `stat` and `writer` read its state.
//! [`finish`] moves it into place: the last bytes become the last part, the upload completes at
//! `K`, and a server-side copy (part by part above the copy threshold, so past S3's 5 GiB
//! single-copy limit) puts it at its destination. An upload that never grew past one part is
//! one PUT at the destination. Deleting `K`'s prefix aborts the multipart upload; uploads
//! abandoned without that are aborted by the purge (`purge_incomplete`).

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{storage_error, wire_error, S3Storage, COPY_CONCURRENCY, MIN_PART};
use crate::storage::{ObjectWriter, StorageError};

const STATE_SUFFIX: &str = ".s3upload";
const MAGIC: &str = "s3upload 1";
/// A state's first line is short; this much of it is read to learn an upload's size.
const HEADER_READ: u64 = 256;

/// Whether a key is the state object of a streamed write.
pub(super) fn is_state_key(key: &str) -> bool {
    key.ends_with(STATE_SUFFIX)
}

fn state_key(key: &str) -> String {
    format!("{key}{STATE_SUFFIX}")
}

/// A streamed write's state, as stored.
#[derive(Debug, Default, Clone)]
pub(super) struct UploadState {
    pub size: u64,
    pub upload_id: Option<String>,
    pub parts: Vec<Part>,
    pub tail: Bytes,
    /// The write continues a finished object `K` (copied into the first parts), which is
    /// deleted once the state is stored.
    pub replaces_object: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Part {
    pub etag: String,
    pub size: u64,
}

#[derive(Serialize, Deserialize)]
struct Listing {
    upload_id: Option<String>,
    parts: Vec<Part>,
}

impl UploadState {
    fn parts_size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// The stored form: the header lines, then the tail as it is (not copied: it may be
    /// megabytes, and a copy would be a second part buffer).
    fn encode(&self) -> PutPayload {
        let listing = serde_json::to_string(&Listing {
            upload_id: self.upload_id.clone(),
            parts: self.parts.clone(),
        })
        .expect("serializable");
        let head = format!("{MAGIC} {} {}\n{listing}\n", self.size, self.tail.len());
        [Bytes::from(head), self.tail.clone()].into_iter().collect()
    }

    /// The size from the first line.
    fn header(data: &[u8]) -> Option<(u64, u64, usize)> {
        let end = data.iter().position(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&data[..end]).ok()?;
        let rest = line.strip_prefix(MAGIC)?.trim();
        let (size, tail) = rest.split_once(' ')?;
        Some((size.parse().ok()?, tail.parse().ok()?, end + 1))
    }

    fn decode(data: Bytes) -> Option<UploadState> {
        let (size, tail_len, start) = Self::header(&data)?;
        let end = start + data[start..].iter().position(|&b| b == b'\n')?;
        let listing: Listing = serde_json::from_slice(&data[start..end]).ok()?;
        let tail = data.slice(end + 1..);
        let s = UploadState {
            size,
            upload_id: listing.upload_id,
            parts: listing.parts,
            tail,
            replaces_object: false,
        };
        (s.tail.len() as u64 == tail_len && s.parts_size() + tail_len == size).then_some(s)
    }
}

fn corrupt(key: &str) -> StorageError {
    StorageError::Io {
        path: key.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the upload's state object is not readable",
        ),
    }
}

/// The size of the write in progress at `key` and when its state was last stored.
pub(super) async fn load_header(
    s: &S3Storage,
    key: &str,
) -> Result<(UploadState, SystemTime), StorageError> {
    let sk = state_key(key);
    let p = s.path(&sk)?;
    let opts = GetOptions {
        range: Some(GetRange::Bounded(0..HEADER_READ)),
        ..Default::default()
    };
    let r = s
        .inner
        .store
        .get_opts(&p, opts)
        .await
        .map_err(|e| storage_error(key, e))?;
    let modified = r.meta.last_modified.into();
    let data = r.bytes().await.map_err(|e| storage_error(key, e))?;
    let (size, _, _) = UploadState::header(&data).ok_or_else(|| corrupt(&sk))?;
    Ok((
        UploadState {
            size,
            ..Default::default()
        },
        modified,
    ))
}

/// The whole state of the write in progress at `key`.
pub(super) async fn load(s: &S3Storage, key: &str) -> Result<UploadState, StorageError> {
    let sk = state_key(key);
    let p = s.path(&sk)?;
    let r = s
        .inner
        .store
        .get(&p)
        .await
        .map_err(|e| storage_error(key, e))?;
    let data = r.bytes().await.map_err(|e| storage_error(key, e))?;
    UploadState::decode(data).ok_or_else(|| corrupt(&sk))
}

/// A write that continues the finished object at `key` (one sealed by [`seal`]): its bytes
/// become the first parts, copied in the store, or the tail when it is small.
pub(super) async fn adopt(s: &S3Storage, key: &str) -> Result<UploadState, StorageError> {
    let p = s.path(key)?;
    let meta = s
        .inner
        .store
        .head(&p)
        .await
        .map_err(|e| storage_error(key, e))?;
    let mut state = UploadState {
        size: meta.size,
        replaces_object: true,
        ..Default::default()
    };
    if meta.size < MIN_PART {
        state.tail = crate::storage::Storage::get(s, key).await?;
        return Ok(state);
    }
    let id = s
        .inner
        .store
        .create_multipart(&p)
        .await
        .map_err(|e| storage_error(key, e))?;
    state.parts = copy_parts(s, key, &id, key, meta.size, 0).await?;
    state.upload_id = Some(id);
    Ok(state)
}

/// Copies all `size` bytes of `source` into upload `id` of `key` as parts numbered from
/// `first_idx` (0-based), `copy_part_size` at a time (evened out so none is under 5 MiB), a
/// few at once.
async fn copy_parts(
    s: &S3Storage,
    key: &str,
    id: &str,
    source: &str,
    size: u64,
    first_idx: usize,
) -> Result<Vec<Part>, StorageError> {
    // As many parts as fit whole steps (so none is under the step, nor under 5 MiB), but
    // enough that none is over S3's 5 GiB part limit.
    let step = s.inner.settings.copy_part_size.max(MIN_PART);
    let n = (size / step)
        .max(size.div_ceil(super::MAX_SINGLE_COPY))
        .max(1);
    let chunk = size.div_ceil(n);
    let target = s.path(key)?.to_string();
    let src = s.path(source)?.to_string();
    let jobs = (0..n).map(|i| {
        let range = i * chunk..((i + 1) * chunk).min(size);
        let (target, src, wire) = (target.clone(), src.clone(), &s.inner.wire);
        async move {
            let len = range.end - range.start;
            wire.upload_part_copy(&target, id, first_idx + i as usize + 1, &src, range)
                .await
                .map(|etag| Part { etag, size: len })
        }
    });
    futures_util::stream::iter(jobs)
        .buffered(COPY_CONCURRENCY)
        .try_collect()
        .await
        .map_err(|e| wire_error(key, e))
}

/// A streamed write to S3 (see the module documentation).
pub(super) struct S3Writer {
    storage: S3Storage,
    key: String,
    state: UploadState,
    /// The bytes after the last uploaded part: at most one part, in one allocation kept for
    /// the writer's life (a fresh one per part would leave the allocator holding freed ones).
    buf: BytesMut,
    dirty: bool,
    /// A share of the overlap pool: while it is held, a part may go up while the next fills.
    second_buffer: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The part going up: its index and the upload.
    in_flight: Option<(usize, InFlight)>,
    /// The buffer of the last part that went up while the next filled, for the one after.
    spare: Option<BytesMut>,
}

type InFlight = tokio::task::JoinHandle<Result<(PartId, Bytes), object_store::Error>>;

impl S3Writer {
    /// A writer continuing `state`; a `fresh` one is stored even when nothing is written.
    pub(super) fn new(
        storage: S3Storage,
        key: &str,
        mut state: UploadState,
        fresh: bool,
    ) -> S3Writer {
        let buf = BytesMut::from(&std::mem::take(&mut state.tail)[..]);
        let dirty = fresh || state.replaces_object;
        S3Writer {
            storage,
            key: key.to_owned(),
            state,
            buf,
            dirty,
            second_buffer: None,
            in_flight: None,
            spare: None,
        }
    }

    fn part_size(&self) -> usize {
        self.storage.inner.settings.part_size as usize
    }

    /// Sends the buffer as the next part, starting the multipart upload if need be. With a
    /// second buffer from the shared pool, the part goes up while the next one fills;
    /// otherwise it goes up before another byte is taken.
    async fn send_part(&mut self) -> Result<(), StorageError> {
        self.finish_in_flight().await?;
        let p = self.storage.path(&self.key)?;
        let store = &self.storage.inner.store;
        let id = match &self.state.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = store
                    .create_multipart(&p)
                    .await
                    .map_err(|e| storage_error(&self.key, e))?;
                self.state.upload_id = Some(id.clone());
                id
            }
        };
        // Taken whole (a `split` would leave `buf` sharing the allocation, which could then
        // never be taken back).
        let data = std::mem::take(&mut self.buf).freeze();
        let size = data.len() as u64;
        let idx = self.state.parts.len();
        // The ETag is filled in when the part is up.
        self.state.parts.push(Part {
            etag: String::new(),
            size,
        });
        if self.second_buffer.is_none() {
            let mib = (self.part_size() as u32).div_ceil(1 << 20);
            self.second_buffer = OVERLAP_POOL.clone().try_acquire_many_owned(mib).ok();
        }
        let storage = self.storage.clone();
        let upload = async move {
            let store = &storage.inner.store;
            let part = store
                .put_part(&p, &id, idx, PutPayload::from(data.clone()))
                .await?;
            Ok::<_, object_store::Error>((part, data))
        };
        if self.second_buffer.is_some() {
            self.in_flight = Some((idx, tokio::spawn(upload)));
            return Ok(());
        }
        let done = upload.await;
        self.part_done(idx, done)
    }

    /// Waits for the part going up, if one is.
    async fn finish_in_flight(&mut self) -> Result<(), StorageError> {
        let Some((idx, task)) = self.in_flight.take() else {
            return Ok(());
        };
        let done = task.await.map_err(|e| StorageError::Io {
            path: self.key.clone(),
            source: std::io::Error::other(e),
        })?;
        self.part_done(idx, done)
    }

    /// Records part `idx` as up, and takes its buffer back for a later part.
    fn part_done(
        &mut self,
        idx: usize,
        done: Result<(PartId, Bytes), object_store::Error>,
    ) -> Result<(), StorageError> {
        let (part, data) = done.map_err(|e| storage_error(&self.key, e))?;
        self.state.parts[idx].etag = part.content_id;
        if let Ok(mut again) = data.try_into_mut() {
            again.clear();
            if self.buf.capacity() == 0 {
                self.buf = again;
            } else {
                self.spare = Some(again);
            }
        }
        Ok(())
    }
}

/// Memory for a second part buffer, shared by all writers (MiB): the first writers to get
/// some send a part while the next fills, the rest send before reading on. So concurrent
/// uploads stay within one part buffer each plus this.
const OVERLAP_POOL_MIB: usize = 16;
static OVERLAP_POOL: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(tokio::sync::Semaphore::new(OVERLAP_POOL_MIB)));

#[async_trait]
impl ObjectWriter for S3Writer {
    fn size(&self) -> u64 {
        self.state.parts_size() + self.buf.len() as u64
    }

    async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        self.dirty = true;
        let part = self.part_size();
        let mut rest = &data[..];
        while !rest.is_empty() {
            if self.buf.is_empty() && self.buf.capacity() < part {
                if let Some(spare) = self.spare.take() {
                    self.buf = spare;
                }
            }
            if self.buf.capacity() < part {
                let mut b = BytesMut::with_capacity(part);
                b.extend_from_slice(&self.buf);
                self.buf = b;
            }
            let n = (part - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == part {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<u64, StorageError> {
        if !self.dirty {
            return Ok(self.size());
        }
        if self.buf.len() as u64 >= MIN_PART {
            self.send_part().await?;
        }
        self.finish_in_flight().await?;
        self.state.size = self.size();
        self.state.tail = std::mem::take(&mut self.buf).freeze();
        let sk = state_key(&self.key);
        let p = self.storage.path(&sk)?;
        self.storage
            .inner
            .store
            .put(&p, self.state.encode())
            .await
            .map_err(|e| storage_error(&self.key, e))?;
        if self.state.replaces_object {
            let k = self.storage.path(&self.key)?;
            self.storage
                .inner
                .store
                .delete(&k)
                .await
                .map_err(|e| storage_error(&self.key, e))?;
        }
        Ok(self.state.size)
    }
}

/// Makes the write in progress at `key` a whole object at `key`; returns its size.
async fn complete_in_place(
    s: &S3Storage,
    key: &str,
    mut state: UploadState,
) -> Result<u64, StorageError> {
    let p = s.path(key)?;
    let store = &s.inner.store;
    let Some(id) = state.upload_id.clone() else {
        store
            .put(&p, state.tail.clone().into())
            .await
            .map_err(|e| storage_error(key, e))?;
        return Ok(state.size);
    };
    let done = async {
        if !state.tail.is_empty() {
            let part = store
                .put_part(&p, &id, state.parts.len(), state.tail.clone().into())
                .await?;
            state.parts.push(Part {
                etag: part.content_id,
                size: state.tail.len() as u64,
            });
        }
        let parts = state
            .parts
            .iter()
            .map(|p| PartId {
                content_id: p.etag.clone(),
            })
            .collect();
        store.complete_multipart(&p, &id, parts).await
    }
    .await;
    if let Err(e) = done {
        // Completed by an earlier attempt that stopped before removing the state?
        match store.head(&p).await {
            Ok(m) if m.size == state.size => {}
            _ => return Err(storage_error(key, e)),
        }
    }
    Ok(state.size)
}

/// Makes the write in progress at `key` a whole object there (for reading it back).
pub(super) async fn seal(s: &S3Storage, key: &str) -> Result<(), StorageError> {
    let state = load(s, key).await?;
    complete_in_place(s, key, state).await?;
    let sp = s.path(&state_key(key))?;
    s.inner
        .store
        .delete(&sp)
        .await
        .map_err(|e| storage_error(key, e))
}

/// Moves `from` (a write in progress, or a whole object) so that it appears whole at `to`.
pub(super) async fn finish(s: &S3Storage, from: &str, to: &str) -> Result<(), StorageError> {
    let (fp, tp) = (s.path(from)?, s.path(to)?);
    let store = &s.inner.store;
    let size = match load(s, from).await {
        // Never grew past one part: its bytes are the object.
        Ok(state) if state.upload_id.is_none() => {
            store
                .put(&tp, state.tail.into())
                .await
                .map_err(|e| storage_error(to, e))?;
            None
        }
        Ok(state) => Some(complete_in_place(s, from, state).await?),
        Err(e) if e.is_not_found() => Some(
            store
                .head(&fp)
                .await
                .map_err(|e| storage_error(from, e))?
                .size,
        ),
        Err(e) => return Err(e),
    };
    if let Some(size) = size {
        copy_object(s, from, to, size).await?;
    }
    // The source and its state in one request, as `delete` removes keys.
    let gone = [fp.to_string(), s.path(&state_key(from))?.to_string()];
    s.inner
        .wire
        .delete_keys(&gone)
        .await
        .map_err(|e| wire_error(from, e))
}

/// A server-side copy: one CopyObject up to the copy threshold, part by part above it.
async fn copy_object(s: &S3Storage, from: &str, to: &str, size: u64) -> Result<(), StorageError> {
    let (fp, tp) = (s.path(from)?, s.path(to)?);
    let store = &s.inner.store;
    if size <= s.inner.settings.copy_threshold {
        return store
            .copy(&fp, &tp)
            .await
            .map_err(|e| storage_error(from, e));
    }
    let id = store
        .create_multipart(&tp)
        .await
        .map_err(|e| storage_error(to, e))?;
    let copied = async {
        let parts = copy_parts(s, to, &id, from, size, 0).await?;
        let parts = parts
            .into_iter()
            .map(|p| PartId { content_id: p.etag })
            .collect();
        store
            .complete_multipart(&tp, &id, parts)
            .await
            .map_err(|e| storage_error(to, e))
    }
    .await;
    if let Err(e) = copied {
        let _ = store.abort_multipart(&tp, &id).await;
        return Err(e);
    }
    Ok(())
}

/// Aborts the multipart upload recorded in the state object `state_key` (deleting the state is
/// the caller's).
pub(super) async fn abort(s: &S3Storage, state_key: &str) -> Result<(), StorageError> {
    let Some(key) = state_key.strip_suffix(STATE_SUFFIX) else {
        return Ok(());
    };
    let state = match load(s, key).await {
        Ok(st) => st,
        Err(e) if e.is_not_found() => return Ok(()),
        // An unreadable state cannot name its upload; the purge's listing will find it.
        Err(StorageError::Io { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if let Some(id) = state.upload_id {
        let p = s.path(key)?;
        match s.inner.store.abort_multipart(&p, &id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage_error(key, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_damage() {
        let s = UploadState {
            size: 12 + 3,
            upload_id: Some("u-1".into()),
            parts: vec![Part {
                etag: "\"e\"".into(),
                size: 12,
            }],
            tail: Bytes::from_static(b"abc"),
            replaces_object: false,
        };
        let enc: Bytes = s.encode().into();
        assert_eq!(UploadState::header(&enc).unwrap().0, 15);
        let d = UploadState::decode(enc.clone()).unwrap();
        assert_eq!(d.upload_id.as_deref(), Some("u-1"));
        assert_eq!(&d.tail[..], b"abc");
        assert_eq!(d.parts[0].etag, "\"e\"");
        // Truncated tail, wrong magic, sizes that disagree.
        assert!(UploadState::decode(enc.slice(..enc.len() - 1)).is_none());
        assert!(UploadState::decode(Bytes::from_static(b"other 1 0 0\n{}\n")).is_none());
        let lie = Bytes::from(String::from_utf8_lossy(&enc).replacen(
            "s3upload 1 15",
            "s3upload 1 16",
            1,
        ));
        assert!(UploadState::decode(lie).is_none());
        // Binary tails survive (the listing line ends at the first newline after it).
        let bin = UploadState {
            size: 3,
            tail: Bytes::from_static(b"\n\0\n"),
            ..Default::default()
        };
        assert_eq!(
            &UploadState::decode(bin.encode().into()).unwrap().tail[..],
            b"\n\0\n"
        );
    }
}
