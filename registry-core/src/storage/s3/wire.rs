//! What goes over the wire to the store, below object_store: every HTTP request counted by S3
//! operation (`regcore_storage_requests_total{op}`), and the few requests object_store has no
//! call for, signed with its own SigV4 signer and retried as its own are: UploadPartCopy with a byte range (multipart copy
//! of objects past the single-copy limit), ListMultipartUploads (the purge of abandoned uploads),
//! DeleteObjects with folder keys (stores that keep folders) and CreateBucket (test setup).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request};
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpRequest, HttpRequestBody,
    HttpResponse, HttpService, ReqwestConnector,
};
use object_store::CredentialProvider;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::metrics::storage_request;

/// Characters S3 keys keep unencoded in a URL path (RFC 3986 unreserved, plus `/`).
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// The S3 operation a request is, from its method, query and headers: a fixed set of labels.
fn operation(req: &HttpRequest) -> &'static str {
    let query = req.uri().query().unwrap_or("");
    let has = |k: &str| {
        query
            .split('&')
            .any(|p| p == k || p.strip_prefix(k).is_some_and(|r| r.starts_with('=')))
    };
    let copy = req.headers().contains_key("x-amz-copy-source");
    match *req.method() {
        Method::HEAD => "head",
        Method::GET if has("uploads") => "list_multipart",
        Method::GET if has("list-type") || has("prefix") || has("delimiter") => "list",
        Method::GET => "get",
        Method::PUT if has("partNumber") && copy => "upload_part_copy",
        Method::PUT if has("partNumber") => "upload_part",
        Method::PUT if copy => "copy",
        Method::PUT => "put",
        Method::POST if has("uploads") => "create_multipart",
        Method::POST if has("uploadId") => "complete_multipart",
        Method::POST if has("delete") => "delete_many",
        Method::DELETE if has("uploadId") => "abort_multipart",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// reqwest, with each request counted before it is sent (retries included: each is a request
/// the store answers, and pays for).
#[derive(Debug, Default)]
pub(crate) struct CountingConnector;

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Counting { inner }))
    }
}

#[derive(Debug)]
struct Counting {
    inner: HttpClient,
}

#[async_trait]
impl HttpService for Counting {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        storage_request(operation(&req));
        self.inner.execute(req).await
    }
}

/// Where requests go and how they are signed, for the requests object_store does not make.
pub(crate) struct Wire {
    pub client: HttpClient,
    pub credentials: Arc<dyn CredentialProvider<Credential = AwsCredential>>,
    pub region: String,
    /// `scheme://host[:port]`
    pub endpoint: String,
    pub bucket: String,
    pub path_style: bool,
    /// As object_store's retry settings (the store's `max_retries`, `retry_timeout`).
    pub max_retries: usize,
    pub retry_timeout: std::time::Duration,
}

/// A failure of a raw request: the status (when the store answered) and what it said.
#[derive(Debug)]
pub(crate) struct WireError {
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "store answered {s}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// One upload in a ListMultipartUploads answer.
#[derive(Debug, Clone)]
pub(crate) struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<std::time::SystemTime>,
}

impl Wire {
    fn url(&self, key: &str, query: &str) -> String {
        let key = utf8_percent_encode(key, KEY_ENCODE);
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        if self.path_style {
            format!("{}/{}/{key}{q}", self.endpoint, self.bucket)
        } else {
            let (scheme, host) = self
                .endpoint
                .split_once("://")
                .unwrap_or(("https", &self.endpoint));
            format!("{scheme}://{}.{host}/{key}{q}", self.bucket)
        }
    }

    /// Sends a request, retrying what may succeed later (no answer, 5xx, 429) with the same
    /// backoff and limits as object_store's requests: 0.1 s doubling to 5 s, at most
    /// `max_retries` times within `retry_timeout`.
    async fn send(
        &self,
        method: Method,
        key: &str,
        query: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Bytes, WireError> {
        let started = std::time::Instant::now();
        let mut backoff = std::time::Duration::from_millis(100);
        let mut retries = 0;
        loop {
            match self
                .send_once(method.clone(), key, query, headers, body.clone())
                .await
            {
                Err((e, true))
                    if retries < self.max_retries
                        && started.elapsed() + backoff < self.retry_timeout =>
                {
                    tracing::debug!(error = %e, retries, "store request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    retries += 1;
                }
                r => return r.map_err(|(e, _)| e),
            }
        }
    }

    /// One attempt; a failure says whether trying again may help.
    async fn send_once(
        &self,
        method: Method,
        key: &str,
        query: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Bytes, (WireError, bool)> {
        let fatal = |e: WireError| (e, false);
        let mut b = Request::builder().method(method).uri(self.url(key, query));
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let mut req: HttpRequest = b.body(HttpRequestBody::from(body)).map_err(|e| {
            fatal(WireError {
                status: None,
                message: format!("cannot build the request: {e}"),
            })
        })?;
        let cred = self.credentials.get_credential().await.map_err(|e| {
            fatal(WireError {
                status: None,
                message: format!("no credentials: {e}"),
            })
        })?;
        AwsAuthorizer::new(&cred, "s3", &self.region)
            .try_authorize(&mut req, None)
            .map_err(|e| {
                fatal(WireError {
                    status: None,
                    message: format!("cannot sign the request: {e}"),
                })
            })?;
        // No answer, or one cut off: the request may succeed if sent again.
        let resp = self.client.execute(req).await.map_err(|e| {
            let e = WireError {
                status: None,
                message: e.to_string(),
            };
            (e, true)
        })?;
        let status = resp.status();
        let body = resp.into_body().bytes().await.map_err(|e| {
            let e = WireError {
                status: Some(status.as_u16()),
                message: e.to_string(),
            };
            (e, true)
        })?;
        // S3 may answer a copy with 200 and an error document.
        if !status.is_success() || body.starts_with(b"<?xml") && contains(&body, b"<Error>") {
            let code = quick_xml::de::from_reader::<_, ErrorDoc>(&body[..])
                .map(|d| format!("{}: {}", d.code, d.message))
                .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into());
            let transient = status.is_server_error() || status.as_u16() == 429;
            let e = WireError {
                status: Some(status.as_u16()),
                message: code,
            };
            return Err((e, transient));
        }
        Ok(body)
    }

    /// Copies `range` (inclusive-exclusive) of `source` as part `part_number` (1-based) of the
    /// multipart upload `upload_id` of `key`; returns the part's ETag.
    pub async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: usize,
        source: &str,
        range: std::ops::Range<u64>,
    ) -> Result<String, WireError> {
        let query = format!(
            "partNumber={part_number}&uploadId={}",
            utf8_percent_encode(upload_id, NON_ALPHANUMERIC)
        );
        let source = format!(
            "/{}/{}",
            self.bucket,
            utf8_percent_encode(source, KEY_ENCODE)
        );
        let headers = [
            ("x-amz-copy-source", source),
            (
                "x-amz-copy-source-range",
                format!("bytes={}-{}", range.start, range.end - 1),
            ),
        ];
        let body = self
            .send(Method::PUT, key, &query, &headers, Bytes::new())
            .await?;
        let r: CopyPartResult = quick_xml::de::from_reader(&body[..]).map_err(|e| WireError {
            status: None,
            message: format!("unreadable UploadPartCopy answer: {e}"),
        })?;
        Ok(r.etag)
    }

    /// The multipart uploads in progress under `prefix` (all pages, at most `limit` uploads).
    pub async fn list_multipart_uploads(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<PendingUpload>, WireError> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = format!(
                "uploads&prefix={}",
                utf8_percent_encode(prefix, NON_ALPHANUMERIC)
            );
            if let Some((k, u)) = &markers {
                query.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    utf8_percent_encode(k, NON_ALPHANUMERIC),
                    utf8_percent_encode(u, NON_ALPHANUMERIC)
                ));
            }
            let body = self
                .send(Method::GET, "", &query, &[], Bytes::new())
                .await?;
            let page: ListUploads =
                quick_xml::de::from_reader(&body[..]).map_err(|e| WireError {
                    status: None,
                    message: format!("unreadable ListMultipartUploads answer: {e}"),
                })?;
            for u in page.uploads {
                out.push(PendingUpload {
                    initiated: u
                        .initiated
                        .as_deref()
                        .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok()),
                    key: u.key,
                    upload_id: u.upload_id,
                });
            }
            let next = page.next_key_marker.zip(page.next_upload_id_marker);
            match next {
                Some(n)
                    if page.is_truncated && out.len() < limit && markers.as_ref() != Some(&n) =>
                {
                    markers = Some(n)
                }
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Deletes up to 1,000 keys in one request, in the order given (so a store with folders,
    /// like SeaweedFS, can be given a folder after what was in it). Keys that do not exist are
    /// not errors; nor is a folder that is not empty.
    pub async fn delete_keys(&self, keys: &[String]) -> Result<(), WireError> {
        use base64::Engine as _;
        use md5::Digest as _;
        let mut body = String::from("<Delete><Quiet>true</Quiet>");
        for k in keys {
            body.push_str("<Object><Key>");
            body.push_str(&quick_xml::escape::escape(k.as_str()));
            body.push_str("</Key></Object>");
        }
        body.push_str("</Delete>");
        let md5 =
            base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body.as_bytes()));
        let headers = [
            ("content-md5", md5),
            ("content-type", "application/xml".to_owned()),
        ];
        let answer = self
            .send(Method::POST, "", "delete", &headers, Bytes::from(body))
            .await?;
        let result: DeleteResult = quick_xml::de::from_reader(&answer[..]).unwrap_or_default();
        let failed: Vec<String> = result
            .errors
            .into_iter()
            .filter(|e| e.code != "NoSuchKey" && !e.key.ends_with('/'))
            .map(|e| format!("{}: {}", e.key, e.code))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(WireError {
                status: None,
                message: format!("not deleted: {}", failed.join(", ")),
            })
        }
    }

    /// Creates the bucket (for tests and first setups; the registry never creates it itself).
    pub async fn create_bucket(&self) -> Result<(), WireError> {
        match self.send(Method::PUT, "", "", &[], Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(e) if e.message.contains("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[derive(Deserialize)]
struct ErrorDoc {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

#[derive(Deserialize, Default)]
struct DeleteResult {
    #[serde(rename = "Error", default)]
    errors: Vec<DeleteError>,
}

#[derive(Deserialize)]
struct DeleteError {
    #[serde(rename = "Key", default)]
    key: String,
    #[serde(rename = "Code", default)]
    code: String,
}

#[derive(Deserialize)]
struct CopyPartResult {
    #[serde(rename = "ETag")]
    etag: String,
}

#[derive(Deserialize)]
struct ListUploads {
    #[serde(rename = "Upload", default)]
    uploads: Vec<UploadEntry>,
    #[serde(rename = "IsTruncated", default)]
    is_truncated: bool,
    #[serde(rename = "NextKeyMarker", default)]
    next_key_marker: Option<String>,
    #[serde(rename = "NextUploadIdMarker", default)]
    next_upload_id_marker: Option<String>,
}

#[derive(Deserialize)]
struct UploadEntry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "UploadId")]
    upload_id: String,
    #[serde(rename = "Initiated", default)]
    initiated: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str, copy: bool) -> HttpRequest {
        let mut b = Request::builder().method(method).uri(uri);
        if copy {
            b = b.header("x-amz-copy-source", "/b/k");
        }
        b.body(HttpRequestBody::empty()).unwrap()
    }

    #[test]
    fn requests_are_named_by_operation() {
        let cases = [
            (Method::HEAD, "http://h/b/k", false, "head"),
            (Method::GET, "http://h/b/k", false, "get"),
            (
                Method::GET,
                "http://h/b?list-type=2&prefix=a/",
                false,
                "list",
            ),
            (
                Method::GET,
                "http://h/b?uploads&prefix=a",
                false,
                "list_multipart",
            ),
            (Method::PUT, "http://h/b/k", false, "put"),
            (Method::PUT, "http://h/b/k", true, "copy"),
            (
                Method::PUT,
                "http://h/b/k?partNumber=2&uploadId=x",
                false,
                "upload_part",
            ),
            (
                Method::PUT,
                "http://h/b/k?partNumber=2&uploadId=x",
                true,
                "upload_part_copy",
            ),
            (
                Method::POST,
                "http://h/b/k?uploads",
                false,
                "create_multipart",
            ),
            (
                Method::POST,
                "http://h/b/k?uploadId=x",
                false,
                "complete_multipart",
            ),
            (Method::POST, "http://h/b?delete", false, "delete_many"),
            (
                Method::DELETE,
                "http://h/b/k?uploadId=x",
                false,
                "abort_multipart",
            ),
            (Method::DELETE, "http://h/b/k", false, "delete"),
            (Method::PATCH, "http://h/b/k", false, "other"),
        ];
        for (m, uri, copy, op) in cases {
            assert_eq!(operation(&req(m.clone(), uri, copy)), op, "{m} {uri}");
        }
    }

    #[test]
    fn list_answers_parse() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>false</IsTruncated>
<Upload><Key>r/_uploads/1/data</Key><UploadId>abc</UploadId><Initiated>2026-01-02T03:04:05.000Z</Initiated></Upload>
<Upload><Key>r/_uploads/2/data</Key><UploadId>def</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let l: ListUploads = quick_xml::de::from_reader(xml.as_bytes()).unwrap();
        assert_eq!(l.uploads.len(), 2);
        assert_eq!(l.uploads[0].upload_id, "abc");
        assert!(!l.is_truncated);
        let c: CopyPartResult = quick_xml::de::from_reader(
            r#"<CopyPartResult><LastModified>x</LastModified><ETag>"e1"</ETag></CopyPartResult>"#
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.etag, "\"e1\"");
    }
}
