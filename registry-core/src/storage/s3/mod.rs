//! The S3 backend: Distribution's layout under `<root>/docker/registry/v2/` in any S3-compatible
//! bucket, through object_store (SigV4, retries with backoff, ranged reads, delimiter listing,
//! multipart uploads, copy, pre-signed URLs).
//!
//! - [`S3Settings`]: what configures it (from registry-core's file, the edge's `[storage.s3]`, or
//!   registry:2's `REGISTRY_STORAGE_S3_*` variables: see `config`). Secrets never print.
//! - [`S3Storage`]: the [`Storage`] implementation. Small objects are single requests; listing
//!   pages past 1,000 keys; deleting a prefix is one listing plus bulk deletes.
//! - [`upload`]: streamed writes as multipart uploads whose state (upload id, parts, the bytes
//!   after the last part) lives in the bucket beside the data, so any process can continue or
//!   finish them, with one part buffer in memory per writer.
//! - [`wire`]: every HTTP request counted by S3 operation, and the requests object_store has
//!   no call for (ranged UploadPartCopy, ListMultipartUploads).

mod credentials;
mod upload;
mod wire;

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::client::HttpConnector;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig,
};

use super::{ByteStream, ObjectMeta, ObjectWriter, Storage, StorageError};
use upload::UploadState;
use wire::{CountingConnector, Wire, WireError};

/// S3's smallest part (all but the last part of a multipart upload).
pub const MIN_PART: u64 = 5 * 1024 * 1024;
/// S3's largest single CopyObject; larger objects are copied part by part.
pub const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;
pub const DEFAULT_PART_SIZE: u64 = 10 * 1024 * 1024;
/// Copies above this go part by part, in parallel: a single CopyObject of a large blob answers
/// only when done (SeaweedFS took over a minute for 16 concurrent 256 MiB copies, past any
/// sensible read timeout), and parts copy faster (a 1 GiB blob: see bench/RESULTS.md).
pub const DEFAULT_COPY_THRESHOLD: u64 = 64 * 1024 * 1024;
pub const DEFAULT_COPY_PART_SIZE: u64 = 64 * 1024 * 1024;
/// Parts of one multipart copy in flight at once.
const COPY_CONCURRENCY: usize = 8;
/// How long a store request may go without a byte of answer: a part of a copy (up to
/// `copy_part_size`, up to 5 GiB) is answered when it is done.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const COPY_READ_TIMEOUT: Duration = Duration::from_secs(600);
/// Multipart uploads the purge looks at in one pass.
const PURGE_LIMIT: usize = 10_000;

/// A secret that never prints.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// How to reach the bucket. See `proxy.toml` for each setting's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// `http(s)://host[:port]` of an S3-compatible service; AWS when absent.
    pub endpoint: Option<String>,
    /// Bucket in the path (`endpoint/bucket/key`) rather than the host name. `None`: path style
    /// with an `endpoint`, virtual-hosted style on AWS.
    pub force_path_style: Option<bool>,
    /// Key prefix above `docker/registry/v2` (registry:2's `rootdirectory`), without slashes at
    /// either end; empty for the bucket's top.
    pub root: String,
    pub access_key: Option<String>,
    pub secret_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// Credentials profile in the shared credentials file (`AWS_PROFILE` otherwise).
    pub profile: Option<String>,
    pub skip_verify: bool,
    pub part_size: u64,
    /// Objects larger than this are copied with UploadPartCopy, `copy_part_size` at a time.
    pub copy_threshold: u64,
    pub copy_part_size: u64,
    /// Blob GETs answer 307 to a pre-signed URL.
    pub redirect: bool,
    /// Retries of a failed request (503 SlowDown, 5xx, timeouts, resets), with backoff.
    pub max_retries: usize,
    /// How long a request (and its retries) may take before the registry answers 503.
    pub retry_timeout: Duration,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            bucket: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            force_path_style: None,
            root: String::new(),
            access_key: None,
            secret_key: None,
            session_token: None,
            profile: None,
            skip_verify: false,
            part_size: DEFAULT_PART_SIZE,
            copy_threshold: DEFAULT_COPY_THRESHOLD,
            copy_part_size: DEFAULT_COPY_PART_SIZE,
            redirect: false,
            // A store under load answers 500/503 for seconds at a time (SeaweedFS did, under 16
            // concurrent 256 MiB pushes): backoff 0.1 s doubling to 5 s, ~25 s in all.
            max_retries: 10,
            retry_timeout: Duration::from_secs(60),
        }
    }
}

/// A start-time failure, naming the setting to look at.
#[derive(Debug, thiserror::Error)]
#[error("S3 storage: {message} (check `{setting}`)")]
pub struct S3Error {
    pub setting: &'static str,
    pub message: String,
}

impl S3Settings {
    fn path_style(&self) -> bool {
        self.force_path_style.unwrap_or(self.endpoint.is_some())
    }

    fn endpoint_url(&self) -> String {
        match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_owned(),
            None => format!("https://s3.{}.amazonaws.com", self.region),
        }
    }
}

/// Storage in an S3 bucket.
#[derive(Clone)]
pub struct S3Storage {
    inner: Arc<Inner>,
}

struct Inner {
    store: AmazonS3,
    wire: Wire,
    settings: S3Settings,
    /// `<root>/` or empty.
    prefix: String,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S3Storage(s3://{}/{})",
            self.inner.settings.bucket, self.inner.prefix
        )
    }
}

/// Installs ring as the process's rustls provider (object_store's HTTP client takes the
/// process default); a provider installed earlier stays.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl S3Storage {
    /// Builds the client. Nothing is sent: [`S3Storage::check`] tells whether the bucket answers.
    pub fn new(settings: S3Settings) -> Result<S3Storage, S3Error> {
        install_crypto();
        if settings.bucket.is_empty() {
            return Err(S3Error {
                setting: "bucket",
                message: "no bucket given".into(),
            });
        }
        let endpoint = settings.endpoint_url();
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            return Err(S3Error {
                setting: "endpoint",
                message: format!("{endpoint:?} is not an http:// or https:// URL"),
            });
        }
        let creds = credentials::resolve(&settings)?;
        let client_options = ClientOptions::new()
            .with_allow_http(endpoint.starts_with("http://"))
            .with_allow_invalid_certificates(settings.skip_verify)
            .with_connect_timeout(Duration::from_secs(5))
            // A blob streams for as long as its client reads; what must not stall is each read.
            .with_timeout_disabled()
            .with_read_timeout(READ_TIMEOUT)
            .with_pool_idle_timeout(Duration::from_secs(60));
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: settings.max_retries,
            retry_timeout: settings.retry_timeout,
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_endpoint(&endpoint)
            .with_virtual_hosted_style_request(!settings.path_style())
            .with_client_options(client_options.clone())
            .with_retry(retry)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_http_connector(CountingConnector);
        if let Some(c) = creds {
            b = b
                .with_access_key_id(c.key_id)
                .with_secret_access_key(c.secret_key);
            if let Some(t) = c.token {
                b = b.with_token(t);
            }
        }
        // The HTTP client loads the system's CA certificates even for http://: a machine or
        // image without any (no ca-certificates package) fails here.
        let no_roots = "(is a CA certificate bundle installed, e.g. Debian's ca-certificates?)";
        let store = b.build().map_err(|e| S3Error {
            setting: "endpoint",
            message: format!("cannot configure the S3 client: {e} {no_roots}"),
        })?;
        let client = CountingConnector
            .connect(&client_options.clone().with_read_timeout(COPY_READ_TIMEOUT))
            .map_err(|e| S3Error {
                setting: "endpoint",
                message: format!("cannot configure the HTTP client: {e} {no_roots}"),
            })?;
        let wire = Wire {
            client,
            credentials: store.credentials().clone(),
            region: settings.region.clone(),
            endpoint,
            bucket: settings.bucket.clone(),
            path_style: settings.path_style(),
            max_retries: settings.max_retries,
            retry_timeout: settings.retry_timeout,
        };
        let prefix = match settings.root.trim_matches('/') {
            "" => String::new(),
            r => format!("{r}/"),
        };
        Ok(S3Storage {
            inner: Arc::new(Inner {
                store,
                wire,
                settings,
                prefix,
            }),
        })
    }

    pub fn settings(&self) -> &S3Settings {
        &self.inner.settings
    }

    /// Whether the bucket answers with these credentials: one listing of the root, which an
    /// empty bucket answers as well as a full one.
    pub async fn check(&self) -> Result<(), S3Error> {
        let root = Path::from(self.inner.prefix.trim_end_matches('/'));
        let root = (!self.inner.prefix.is_empty()).then_some(&root);
        match self.inner.store.list_with_delimiter(root).await {
            Ok(_) => Ok(()),
            Err(e) => Err(describe_start_error(&self.inner.settings, e)),
        }
    }

    /// Creates the bucket if it does not exist (test and first-setup help; never done at start).
    pub async fn create_bucket(&self) -> Result<(), S3Error> {
        self.inner.wire.create_bucket().await.map_err(|e| S3Error {
            setting: "bucket",
            message: format!("cannot create bucket {:?}: {e}", self.inner.settings.bucket),
        })
    }

    /// The keys of the multipart uploads in progress under `prefix` (relative to the root), as
    /// the store lists them: what the purge would abort once they are old enough.
    pub async fn incomplete_uploads(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .pending_uploads(prefix)
            .await?
            .iter()
            .map(|u| self.relative(&u.key).to_owned())
            .collect())
    }

    /// The store's multipart uploads under `prefix` (relative to the root, any key prefix).
    async fn pending_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<wire::PendingUpload>, StorageError> {
        self.inner
            .wire
            .list_multipart_uploads(&format!("{}{prefix}", self.inner.prefix), PURGE_LIMIT)
            .await
            .map_err(|e| wire_error(prefix, e))
    }

    fn path(&self, key: &str) -> Result<Path, StorageError> {
        if !super::valid_key(key) {
            return Err(StorageError::InvalidPath(key.to_owned()));
        }
        Path::parse(format!("{}{key}", self.inner.prefix))
            .map_err(|_| StorageError::InvalidPath(key.to_owned()))
    }

    /// The key relative to the root of a full object key.
    fn relative<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(self.inner.prefix.as_str())
            .unwrap_or(full)
    }
}

/// The folder keys (`a/b/`) from `prefix/` down to the folders holding `keys`, deepest first.
fn folders_under(prefix: &str, keys: &[String]) -> Vec<String> {
    let mut folders = std::collections::BTreeSet::new();
    let top = format!("{prefix}/");
    for k in keys {
        let mut end = k.len();
        while let Some(i) = k[..end].rfind('/') {
            let folder = &k[..=i];
            if folder.len() < top.len() {
                break;
            }
            folders.insert(folder.to_owned());
            end = i;
        }
    }
    let mut v: Vec<String> = folders.into_iter().collect();
    v.sort_by_key(|f| std::cmp::Reverse(f.matches('/').count()));
    v
}

/// A start-time failure in words, naming the setting most likely wrong.
fn describe_start_error(s: &S3Settings, e: object_store::Error) -> S3Error {
    let text = e.to_string();
    let missing =
        matches!(e, object_store::Error::NotFound { .. }) || text.contains("NoSuchBucket");
    let refused = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || [
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "403",
    ]
    .iter()
    .any(|t| text.contains(t));
    if missing {
        S3Error {
            setting: "bucket",
            message: format!("bucket {:?} does not exist", s.bucket),
        }
    } else if refused {
        S3Error {
            setting: "access_key/secret_key",
            message: format!(
                "the store refused the credentials for bucket {:?}",
                s.bucket
            ),
        }
    } else {
        S3Error {
            setting: "endpoint",
            message: format!("cannot reach {}: {text}", s.endpoint_url()),
        }
    }
}

/// A run-time failure: absent objects are `NotFound`, everything else is the store being
/// unavailable (object_store has already retried what can be retried).
fn storage_error(key: &str, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_owned()),
        object_store::Error::InvalidPath { .. } => StorageError::InvalidPath(key.to_owned()),
        e => StorageError::Unavailable {
            path: key.to_owned(),
            message: e.to_string(),
        },
    }
}

fn wire_error(key: &str, e: WireError) -> StorageError {
    if e.status == Some(404) {
        return StorageError::NotFound(key.to_owned());
    }
    StorageError::Unavailable {
        path: key.to_owned(),
        message: e.to_string(),
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let p = self.path(key)?;
        let r = self
            .inner
            .store
            .get(&p)
            .await
            .map_err(|e| storage_error(key, e))?;
        r.bytes().await.map_err(|e| storage_error(key, e))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let p = self.path(key)?;
        self.inner
            .store
            .put(&p, data.into())
            .await
            .map(|_| ())
            .map_err(|e| storage_error(key, e))
    }

    async fn stat(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let p = self.path(key)?;
        let m = self
            .inner
            .store
            .head(&p)
            .await
            .map_err(|e| storage_error(key, e))?;
        Ok(ObjectMeta {
            size: m.size,
            modified: m.last_modified.into(),
        })
    }

    async fn stat_write(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        match self.stat(key).await {
            // A streamed write in progress is its state object.
            Err(e) if e.is_not_found() => {
                let (state, modified) = upload::load_header(self, key).await?;
                Ok(ObjectMeta {
                    size: state.size,
                    modified,
                })
            }
            r => r,
        }
    }

    async fn reader(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StorageError> {
        let p = self.path(key)?;
        let opts = |range: &Option<Range<u64>>| GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..Default::default()
        };
        if range.as_ref().is_some_and(|r| r.is_empty()) {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let r = match self.inner.store.get_opts(&p, opts(&range)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                // An upload read before it is finished (the digest computed from the data when
                // no hash state was saved): make it a whole object first.
                upload::seal(self, key).await?;
                self.inner
                    .store
                    .get_opts(&p, opts(&range))
                    .await
                    .map_err(|e| storage_error(key, e))?
            }
            Err(e) => return Err(storage_error(key, e)),
        };
        let key = key.to_owned();
        Ok(Box::pin(r.into_stream().map_err(move |e| {
            std::io::Error::other(format!("reading {key} from S3: {e}"))
        })))
    }

    async fn list(&self, key: &str) -> Result<Vec<String>, StorageError> {
        let p = self.path(key)?;
        let r = self
            .inner
            .store
            .list_with_delimiter(Some(&p))
            .await
            .map_err(|e| storage_error(key, e))?;
        // A store with folders may list the (empty) folder itself: it is not a child.
        let mut names: Vec<String> = r
            .common_prefixes
            .iter()
            .chain(r.objects.iter().map(|o| &o.location))
            .filter(|c| **c != p)
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err(StorageError::NotFound(key.to_owned()));
        }
        Ok(names)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let p = self.path(key)?;
        let under: Vec<Path> = self
            .inner
            .store
            .list(Some(&p))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| storage_error(key, e))?;
        // Multipart uploads of streamed writes under the prefix are aborted, not left to cost.
        for state in under.iter().filter(|p| upload::is_state_key(p.as_ref())) {
            upload::abort(self, self.relative(state.as_ref())).await?;
        }
        // The objects, then the folders they were in, deepest first: S3 has no folders, but
        // stores built on a file system (SeaweedFS) keep them, and would go on listing them.
        let mut keys: Vec<String> = under.iter().map(|o| o.to_string()).collect();
        keys.push(p.to_string());
        keys.extend(folders_under(p.as_ref(), &keys));
        for batch in keys.chunks(1000) {
            self.inner
                .wire
                .delete_keys(batch)
                .await
                .map_err(|e| wire_error(key, e))?;
        }
        Ok(())
    }

    async fn writer(&self, key: &str, append: bool) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.path(key)?;
        let state = if append {
            match upload::load(self, key).await {
                Ok(s) => s,
                Err(e) if e.is_not_found() => upload::adopt(self, key).await?,
                Err(e) => return Err(e),
            }
        } else {
            UploadState::default()
        };
        Ok(Box::new(upload::S3Writer::new(
            self.clone(),
            key,
            state,
            !append,
        )))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        upload::finish(self, from, to).await
    }

    async fn purge_incomplete(
        &self,
        prefix: &str,
        older_than: SystemTime,
    ) -> Result<usize, StorageError> {
        self.path(prefix)?;
        let pending = self.pending_uploads(&format!("{prefix}/")).await?;
        let mut aborted = 0;
        for u in pending {
            if u.initiated.is_some_and(|t| t < older_than) {
                let key = Path::from(u.key.as_str());
                match self.inner.store.abort_multipart(&key, &u.upload_id).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => aborted += 1,
                    Err(e) => {
                        tracing::warn!(key = %u.key, error = %e, "could not abort a stale multipart upload")
                    }
                }
            }
        }
        Ok(aborted)
    }

    async fn presign(&self, key: &str, expires: Duration) -> Result<Option<String>, StorageError> {
        if !self.inner.settings.redirect {
            return Ok(None);
        }
        use object_store::signer::Signer;
        let p = self.path(key)?;
        self.inner
            .store
            .signed_url(http::Method::GET, &p, expires)
            .await
            .map(|u| Some(u.to_string()))
            .map_err(|e| storage_error(key, e))
    }
}
