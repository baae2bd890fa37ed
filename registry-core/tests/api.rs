//! HTTP-level tests of every endpoint and error case, against the registry served in-process.

mod common;

use common::{error_code, random_bytes, sha256, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn client() -> Client {
    Client::new()
}

/// Pushes a blob monolithically; returns its digest.
async fn push_blob(s: &Server, repo: &str, data: &[u8]) -> String {
    let d = sha256(data);
    let r = client()
        .post(format!("{}/v2/{repo}/blobs/uploads/?digest={d}", s.url))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    d
}

/// Pushes a config and one layer and an image manifest referencing them; returns
/// (manifest bytes, manifest digest).
async fn push_image(s: &Server, repo: &str, tag: &str, extra: Value) -> (String, String) {
    let config = push_blob(s, repo, b"{}").await;
    let layer_data = random_bytes(1000);
    let layer = push_blob(s, repo, &layer_data).await;
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 1000}],
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut m, extra) {
        m.extend(e);
    }
    let body = m.to_string();
    let r = client()
        .put(format!("{}/v2/{repo}/manifests/{tag}", s.url))
        .header("content-type", OCI_MANIFEST)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let d = sha256(body.as_bytes());
    (body, d)
}

#[tokio::test]
async fn base_answers_with_api_version() {
    let s = Server::start().await;
    let r = client().get(format!("{}/v2/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let r = client()
        .get(format!("{}/v2/nope/x/y/z", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test]
async fn blob_get_head_and_ranges() {
    let s = Server::start().await;
    let data = random_bytes(100_000);
    let d = push_blob(&s, "r/one", &data).await;
    let url = format!("{}/v2/r/one/blobs/{d}", s.url);
    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), data);
    let r = client()
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(r.bytes().await.unwrap(), data[10..20]);
    let r = client()
        .get(&url)
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), data[99_995..]);
    // Well-formed but past the end: 416 with the size.
    for bad in ["bytes=100000-", "bytes=100000-100005", "bytes=-0"] {
        let r = client()
            .get(&url)
            .header("range", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416, "{bad}");
        assert_eq!(r.headers()["content-range"], "bytes */100000");
    }
    // Unparseable: ignored, the whole blob (RFC 9110 14.2).
    for junk in [
        "bytes=abc",
        "bytes=50-10",
        "bytes=x-",
        "items=0-1",
        "bytes=1-2,4-5",
    ] {
        let r = client()
            .get(&url)
            .header("range", junk)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{junk}");
        assert_eq!(r.bytes().await.unwrap().len(), 100_000, "{junk}");
    }
    // Not linked into another repository, unknown digest, malformed digest.
    let r = client()
        .get(format!("{}/v2/r/two/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = client()
        .get(format!("{}/v2/r/one/blobs/{}", s.url, sha256(b"x")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    for bad in [
        "sha256:abc",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:..%2F..%2Fetc",
    ] {
        let r = client()
            .get(format!("{}/v2/r/one/blobs/{bad}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(error_code(r).await, "DIGEST_INVALID");
    }
}

#[tokio::test]
async fn sha512_blobs() {
    use sha2::{Digest as _, Sha512};
    let s = Server::start().await;
    let data = random_bytes(5000);
    let d = format!("sha512:{}", hex::encode(Sha512::digest(&data)));
    let r = client()
        .post(format!("{}/v2/r/blobs/uploads/?digest={d}", s.url))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client()
        .get(format!("{}/v2/r/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn monolithic_put_and_digest_mismatch_leaves_nothing() {
    let s = Server::start().await;
    let c = client();
    let r = c
        .post(format!("{}/v2/r/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        loc.starts_with("/v2/r/blobs/uploads/"),
        "relative Location: {loc}"
    );
    assert_eq!(r.headers()["range"], "0-0");
    let wrong = sha256(b"something else");
    let r = c
        .put(format!("{}{loc}?digest={wrong}", s.url))
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // The upload is gone and no blob appeared.
    let r = c.get(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = c
        .head(format!("{}/v2/r/blobs/{wrong}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .head(format!("{}/v2/r/blobs/{}", s.url, sha256(b"data")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let storage = common::storage_for(&s.root);
    let stored = common::stored_keys(&*storage, "docker/registry/v2/blobs").await;
    assert!(stored.is_empty(), "{stored:?}");
    // Missing or malformed digest on the closing PUT.
    let r = c
        .post(format!("{}/v2/r/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c.put(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = c
        .put(format!("{}{loc}?digest=sha256:1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // An empty blob.
    let r = c
        .put(format!("{}{loc}?digest={}", s.url, sha256(b"")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/r/blobs/{}", sha256(b"")).as_str()
    );
}

#[tokio::test]
async fn chunked_upload_with_status_and_out_of_order_chunk() {
    let s = Server::start().await;
    let c = client();
    let data = random_bytes(300_000);
    let d = sha256(&data);
    let r = c
        .post(format!("{}/v2/r/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .patch(format!("{}{loc}", s.url))
        .header("content-range", "0-99999")
        .header("content-type", "application/octet-stream")
        .body(data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-99999");
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    // Out of order: 416 with the range the registry has.
    let r = c
        .patch(format!("{}{loc}", s.url))
        .header("content-range", "200000-299999")
        .body(data[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["range"], "0-99999");
    // Content-Range that does not match Content-Length.
    let r = c
        .patch(format!("{}{loc}", s.url))
        .header("content-range", "100000-100009")
        .body(vec![0u8; 3])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = c
        .patch(format!("{}{loc}", s.url))
        .header("content-range", "garbage")
        .body(vec![0u8; 3])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_INVALID");
    // Status.
    let r = c.get(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-99999");
    // A streamed chunk (no Content-Range, chunked transfer encoding).
    let stream = futures_util::stream::iter(
        data[100_000..200_000]
            .chunks(7_000)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let r = c
        .patch(format!("{}{loc}", s.url))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-199999");
    // Closing PUT with the last chunk.
    let r = c
        .put(format!("{}{loc}?digest={d}", s.url))
        .header("content-range", "200000-299999")
        .body(data[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    let r = c
        .get(format!("{}/v2/r/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), data);
    // The finished upload is gone.
    let r = c.get(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn upload_cancel_and_unknown_ids() {
    let s = Server::start().await;
    let c = client();
    let r = c
        .post(format!("{}/v2/r/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c.delete(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .patch(format!("{}{loc}", s.url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = c
        .get(format!("{}/v2/r/blobs/uploads/..%2F..%2Fx", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("{}/v2/r/blobs/uploads/0000-not-there", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn upload_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(200_000);
    let d = sha256(&data);
    let s = Server::start_on(dir.path(), Default::default()).await;
    let c = client();
    let r = c
        .post(format!("{}/v2/r/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    c.patch(format!("{}{loc}", s.url))
        .body(data[..120_000].to_vec())
        .send()
        .await
        .unwrap();
    s.stop().await;
    let s = Server::start_on(dir.path(), Default::default()).await;
    let r = c.get(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-119999");
    let r = c
        .put(format!("{}{loc}?digest={d}", s.url))
        .header("content-range", "120000-199999")
        .body(data[120_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(format!("{}/v2/r/blobs/{d}", s.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got, data);
}

#[tokio::test]
async fn cross_repository_mount() {
    let s = Server::start().await;
    let c = client();
    let d = push_blob(&s, "src/repo", b"shared layer").await;
    let r = c
        .post(format!(
            "{}/v2/dst/blobs/uploads/?mount={d}&from=src/repo",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/dst/blobs/{d}").as_str()
    );
    let r = c
        .get(format!("{}/v2/dst/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), &b"shared layer"[..]);
    // Nothing to mount: an upload session instead.
    let other = sha256(b"absent");
    let r = c
        .post(format!(
            "{}/v2/dst/blobs/uploads/?mount={other}&from=src/repo",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.headers().contains_key("location"));
    let r = c
        .post(format!(
            "{}/v2/dst/blobs/uploads/?mount={d}&from=Bad..Name",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_INVALID");
}

#[tokio::test]
async fn manifests_round_trip_exact_bytes() {
    let s = Server::start().await;
    let c = client();
    let (body, d) = push_image(&s, "app/web", "v1", json!({"annotations": {"k": "v"}})).await;
    for reference in ["v1", d.as_str()] {
        let r = c
            .get(format!("{}/v2/app/web/manifests/{reference}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(r.headers()["docker-content-digest"], d.as_str());
        assert_eq!(r.text().await.unwrap(), body);
        let r = c
            .head(format!("{}/v2/app/web/manifests/{reference}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"],
            body.len().to_string().as_str()
        );
    }
    // PUT by digest.
    let r = c
        .put(format!("{}/v2/app/other/manifests/{d}", s.url))
        .header("content-type", OCI_MANIFEST)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "blobs are not in app/other");
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let r = c
        .put(format!("{}/v2/app/web/manifests/{d}", s.url))
        .header("content-type", OCI_MANIFEST)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/app/web/manifests/{d}").as_str()
    );
    // A digest reference that does not match the body.
    let r = c
        .put(format!("{}/v2/app/web/manifests/{}", s.url, sha256(b"x")))
        .header("content-type", OCI_MANIFEST)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // Unknown manifests.
    let r = c
        .get(format!("{}/v2/app/web/manifests/nope", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = c
        .get(format!("{}/v2/app/web/manifests/{}", s.url, sha256(b"y")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn manifest_validation() {
    let s = Server::start().await;
    let c = client();
    let put = |body: String, ct: &'static str| {
        let c = c.clone();
        let url = format!("{}/v2/r/manifests/t", s.url);
        async move {
            c.put(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = put("{not json".into(), OCI_MANIFEST).await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = put(
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).to_string(),
        OCI_MANIFEST,
    )
    .await;
    assert_eq!(
        error_code(r).await,
        "MANIFEST_INVALID",
        "media type mismatch"
    );
    let r = put(json!({"schemaVersion": 1}).to_string(), OCI_MANIFEST).await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let missing = sha256(b"missing");
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": missing, "size": 7},
        "layers": [],
    });
    let r = put(m.to_string(), OCI_MANIFEST).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": missing, "size": 7}]});
    let r = put(idx.to_string(), OCI_INDEX).await;
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // Over the limit: 413. At the limit (4 MiB): accepted.
    let r = put("x".repeat(4 * 1024 * 1024 + 1), OCI_MANIFEST).await;
    assert_eq!(r.status(), 413);
    let config = push_blob(&s, "r", b"{}").await;
    let mut m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [], "annotations": {"pad": ""},
    });
    let len = m.to_string().len();
    m["annotations"]["pad"] = Value::String("p".repeat(4 * 1024 * 1024 - len));
    let body = m.to_string();
    assert_eq!(body.len(), 4 * 1024 * 1024);
    let r = put(body, OCI_MANIFEST).await;
    assert_eq!(r.status(), 201);
    // Bad tag, bad name.
    let r = c
        .put(format!("{}/v2/r/manifests/-bad", s.url))
        .header("content-type", OCI_MANIFEST)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    // Read with a reference that is neither a tag nor a digest: nothing can be there.
    for reference in ["-bad", "sha256:zz", "a:b:c"] {
        let url = format!("{}/v2/r/manifests/{reference}", s.url);
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 404, "{reference}");
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN", "{reference}");
        assert_eq!(c.head(&url).send().await.unwrap().status(), 404);
    }
    let r = c
        .get(format!("{}/v2/UPPER/manifests/t", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "NAME_INVALID");
}

#[tokio::test]
async fn index_and_docker_types() {
    let s = Server::start().await;
    let c = client();
    let (_, child) = push_image(&s, "multi", "amd64", json!({})).await;
    let list_type = "application/vnd.docker.distribution.manifest.list.v2+json";
    let idx = json!({"schemaVersion": 2, "mediaType": list_type,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 1, "platform": {"architecture": "amd64", "os": "linux"}}]})
    .to_string();
    let r = c
        .put(format!("{}/v2/multi/manifests/latest", s.url))
        .header("content-type", list_type)
        .body(idx.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(format!("{}/v2/multi/manifests/latest", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], list_type);
    assert_eq!(r.text().await.unwrap(), idx);
}

#[tokio::test]
async fn tags_and_catalog_paginate() {
    let s = Server::start().await;
    let c = client();
    for t in ["b", "a", "d", "c"] {
        push_image(&s, "lib/x", t, json!({})).await;
    }
    push_image(&s, "lib", "1", json!({})).await;
    push_image(&s, "zeta", "1", json!({})).await;
    let r = c
        .get(format!("{}/v2/lib/x/tags/list", s.url))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"name": "lib/x", "tags": ["a", "b", "c", "d"]}));
    let r = c
        .get(format!("{}/v2/lib/x/tags/list?n=2", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["link"],
        "</v2/lib/x/tags/list?n=2&last=b>; rel=\"next\""
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["a", "b"]));
    let r = c
        .get(format!("{}/v2/lib/x/tags/list?n=2&last=b", s.url))
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("link"));
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["c", "d"]));
    let r = c
        .get(format!("{}/v2/lib/x/tags/list?n=-1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!("{}/v2/nothere/tags/list", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    let r = c
        .get(format!("{}/v2/_catalog", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["repositories"],
        json!(["lib", "lib/x", "zeta"])
    );
    let r = c
        .get(format!("{}/v2/_catalog?n=1&last=lib", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["link"],
        "</v2/_catalog?n=1&last=lib/x>; rel=\"next\""
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["repositories"],
        json!(["lib/x"])
    );
}

#[tokio::test]
async fn referrers() {
    let s = Server::start().await;
    let c = client();
    let (subject_body, subject) = push_image(&s, "art", "base", json!({})).await;
    let subject_desc =
        json!({"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()});
    let empty = push_blob(&s, "art", b"{}").await;
    let mut referrers = Vec::new();
    for (i, at) in [
        "application/vnd.example.sbom",
        "application/vnd.example.sig",
    ]
    .iter()
    .enumerate()
    {
        let m = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": at,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [], "subject": subject_desc, "annotations": {"n": i.to_string()},
        })
        .to_string();
        let d = sha256(m.as_bytes());
        let r = c
            .put(format!("{}/v2/art/manifests/{d}", s.url))
            .header("content-type", OCI_MANIFEST)
            .body(m)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["oci-subject"], subject.as_str());
        referrers.push(d);
    }
    let r = c
        .get(format!("{}/v2/art/referrers/{subject}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["mediaType"], OCI_INDEX);
    let got: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = referrers.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(got, want);
    let r = c
        .get(format!(
            "{}/v2/art/referrers/{subject}?artifactType=application/vnd.example.sig",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["manifests"][0]["artifactType"],
        "application/vnd.example.sig"
    );
    assert_eq!(v["manifests"][0]["annotations"]["n"], "1");
    // No referrers: an empty index, never 404. A bad digest: 400.
    let r = c
        .get(format!("{}/v2/art/referrers/{}", s.url, sha256(b"q")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["manifests"], json!([]));
    let r = c
        .get(format!("{}/v2/art/referrers/sha256:zz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Deleting a referrer removes it from the listing.
    c.delete(format!("{}/v2/art/manifests/{}", s.url, referrers[0]))
        .send()
        .await
        .unwrap();
    let v: Value = c
        .get(format!("{}/v2/art/referrers/{subject}", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn deletes() {
    let s = Server::start().await;
    let c = client();
    let (_, d) = push_image(&s, "del", "t1", json!({})).await;
    // Tag it twice; deleting one tag keeps the other.
    let body = c
        .get(format!("{}/v2/del/manifests/t1", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    c.put(format!("{}/v2/del/manifests/t2", s.url))
        .header("content-type", OCI_MANIFEST)
        .body(body)
        .send()
        .await
        .unwrap();
    let r = c
        .delete(format!("{}/v2/del/manifests/t1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        c.get(format!("{}/v2/del/manifests/t1", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(format!("{}/v2/del/manifests/t2", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Deleting by digest takes the remaining tags with it.
    let r = c
        .delete(format!("{}/v2/del/manifests/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        c.get(format!("{}/v2/del/manifests/{d}", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(format!("{}/v2/del/manifests/t2", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let v: Value = c
        .get(format!("{}/v2/del/tags/list", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], json!([]));
    let r = c
        .delete(format!("{}/v2/del/manifests/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    // Blobs.
    let b = push_blob(&s, "del", b"blob").await;
    let r = c
        .delete(format!("{}/v2/del/blobs/{b}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        c.head(format!("{}/v2/del/blobs/{b}", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = c
        .delete(format!("{}/v2/del/blobs/{b}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn deletion_can_be_switched_off() {
    let s = Server::start_with(registry_core::Options {
        delete_enabled: false,
        ..Default::default()
    })
    .await;
    let c = client();
    let (_, d) = push_image(&s, "keep", "t", json!({})).await;
    for url in [
        format!("{}/v2/keep/manifests/{d}", s.url),
        format!("{}/v2/keep/manifests/t", s.url),
    ] {
        let r = c.delete(url).send().await.unwrap();
        assert_eq!(r.status(), 405);
        assert_eq!(error_code(r).await, "UNSUPPORTED");
    }
    assert_eq!(
        c.get(format!("{}/v2/keep/manifests/t", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn hostile_names_never_touch_files() {
    let s = Server::start().await;
    // Raw requests, so no client normalizes the dots away.
    for path in [
        "/v2/a/../../etc/tags/list",
        "/v2/a/%2e%2e/%2e%2e/etc/tags/list",
        "/v2/..%2f..%2fetc/manifests/latest",
        "/v2/a/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd",
        "/v2/a/manifests/..",
    ] {
        let resp = raw_request(
            &s.url,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let status: u16 = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(status == 400 || status == 404, "{path}: {resp}");
        assert!(
            resp.contains("NAME_INVALID")
                || resp.contains("DIGEST_INVALID")
                || resp.contains("MANIFEST_INVALID")
                || resp.contains("MANIFEST_UNKNOWN")
                || resp.contains("UNSUPPORTED"),
            "{path}: {resp}"
        );
    }
}

async fn raw_request(url: &str, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_of_the_same_content() {
    let s = Server::start().await;
    let data = random_bytes(2 * 1024 * 1024);
    let d = sha256(&data);
    let config = push_blob(&s, "race", b"{}").await;
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": data.len()}],
    })
    .to_string();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, data, d, manifest) = (s.url.clone(), data.clone(), d.clone(), manifest.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let r = c
                .post(format!("{url}/v2/race/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            let loc = r.headers()["location"].to_str().unwrap().to_owned();
            let r = c
                .patch(format!("{url}{loc}"))
                .body(data)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let r = c
                .put(format!("{url}{loc}?digest={d}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let r = c
                .put(format!("{url}/v2/race/manifests/latest"))
                .header("content-type", OCI_MANIFEST)
                .body(manifest)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = client();
    assert_eq!(
        c.get(format!("{}/v2/race/blobs/{d}", s.url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        data
    );
    assert_eq!(
        c.get(format!("{}/v2/race/manifests/latest", s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        manifest
    );
    // No upload sessions or temporary files left behind.
    let storage = common::storage_for(&s.root);
    let uploads = "docker/registry/v2/repositories/race/_uploads";
    assert!(common::stored_keys(&*storage, uploads).await.is_empty());
    if !common::s3_mode() {
        assert_eq!(std::fs::read_dir(s.root.join(".tmp")).unwrap().count(), 0);
    }
}

#[tokio::test]
async fn garbage_collection() {
    let s = Server::start().await;
    let c = client();
    let (_, keep) = push_image(&s, "gc", "keep", json!({})).await;
    let (_, drop_) = push_image(&s, "gc", "drop", json!({})).await;
    let drop_body = c
        .get(format!("{}/v2/gc/manifests/drop", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped_layer: String = serde_json::from_str::<Value>(&drop_body).unwrap()["layers"][0]
        ["digest"]
        .as_str()
        .unwrap()
        .into();
    c.delete(format!("{}/v2/gc/manifests/drop", s.url))
        .send()
        .await
        .unwrap();
    let registry = registry_core::Registry::new(common::storage_for(&s.root), Default::default());
    // Within the grace period nothing goes.
    let report = registry_core::gc::collect(&registry, std::time::Duration::from_secs(3600), false)
        .await
        .unwrap();
    assert!(report.blobs.is_empty() && report.manifests.is_empty());
    // A dry run reports without removing.
    let report = registry_core::gc::collect(&registry, std::time::Duration::ZERO, true)
        .await
        .unwrap();
    assert_eq!(report.manifests.len(), 1);
    assert_eq!(report.manifests[0].1.to_string(), drop_);
    assert!(report.blobs.iter().any(|b| b.to_string() == dropped_layer));
    assert_eq!(
        c.get(format!("{}/v2/gc/manifests/{drop_}", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let report = registry_core::gc::collect(&registry, std::time::Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!(report.manifests.len(), 1);
    assert_eq!(
        c.get(format!("{}/v2/gc/manifests/{drop_}", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.head(format!("{}/v2/gc/blobs/{dropped_layer}", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // The tagged image is whole.
    let body = c
        .get(format!("{}/v2/gc/manifests/keep", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sha256(body.as_bytes()), keep);
    for l in serde_json::from_str::<Value>(&body).unwrap()["layers"]
        .as_array()
        .unwrap()
    {
        let r = c
            .get(format!(
                "{}/v2/gc/blobs/{}",
                s.url,
                l["digest"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The shared config blob ({}) is still there.
    let cfg = sha256(b"{}");
    assert_eq!(
        c.head(format!("{}/v2/gc/blobs/{cfg}", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn stale_uploads_are_purged() {
    let s = Server::start().await;
    let c = client();
    let r = c
        .post(format!("{}/v2/p/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let registry = registry_core::Registry::new(common::storage_for(&s.root), Default::default());
    assert_eq!(
        registry
            .purge_uploads(std::time::Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        registry
            .purge_uploads(std::time::Duration::from_millis(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        c.get(format!("{}{loc}", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn http2_cleartext() {
    let s = Server::start().await;
    let c = Client::builder().http2_prior_knowledge().build().unwrap();
    let data = random_bytes(3 * 1024 * 1024);
    let d = push_blob(&s, "h2", &data).await;
    let r = c
        .request(Method::GET, format!("{}/v2/h2/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.bytes().await.unwrap(), data);
}
