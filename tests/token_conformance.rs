//! The distribution-spec's endpoints through an edge in token mode, with a client that does what
//! Docker's does: it sends a request, and on a 401 Bearer challenge gets a token for exactly the
//! challenged scope and sends the request again. Every endpoint is reached this way, so each
//! challenge names a scope that lets the request through (a wrong scope would fail here as it
//! would fail a real client), and the answers are the registry's, as without the edge.

mod common;

use common::{basic, random_bytes, sha256, Edge, EdgeOpts};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A client that follows Bearer challenges with the edge's first user's credentials.
struct TokenClient<'a> {
    edge: &'a Edge,
    c: reqwest::Client,
    token: std::sync::Mutex<Option<String>>,
    /// Scopes it was challenged for, in order.
    challenged: std::sync::Mutex<Vec<String>>,
}

/// A `key="value"` parameter of a challenge.
fn challenge_param(challenge: &str, key: &str) -> Option<String> {
    let start = challenge.find(&format!("{key}=\""))? + key.len() + 2;
    let end = challenge[start..].find('"')? + start;
    Some(challenge[start..end].to_owned())
}

impl<'a> TokenClient<'a> {
    fn new(edge: &'a Edge) -> TokenClient<'a> {
        TokenClient {
            edge,
            c: edge.client(false),
            token: Default::default(),
            challenged: Default::default(),
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> reqwest::Response {
        let mut req = self
            .c
            .request(method.clone(), format!("{}{path}", self.edge.url()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = self.token.lock().unwrap().clone() {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if !body.is_empty() || *method == Method::PUT || *method == Method::PATCH {
            req = req.body(body.to_vec());
        }
        req.send().await.unwrap()
    }

    /// Sends; on a Bearer challenge, fetches a token for its scope and sends again.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> reqwest::Response {
        let r = self.send_once(&method, path, headers, body).await;
        if r.status() != StatusCode::UNAUTHORIZED {
            return r;
        }
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        let realm = challenge_param(&challenge, "realm").unwrap();
        let service = challenge_param(&challenge, "service").unwrap();
        let scope = challenge_param(&challenge, "scope").unwrap_or_default();
        let mut url = format!("{realm}?service={service}");
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            url.push_str(&format!("&scope={s}"));
        }
        let t: Value = self
            .c
            .get(url)
            .header("authorization", basic(&self.edge.user, &self.edge.password))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        *self.token.lock().unwrap() = Some(t["token"].as_str().unwrap().to_owned());
        self.challenged.lock().unwrap().push(scope);
        let again = self.send_once(&method, path, headers, body).await;
        assert_ne!(
            again.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}: the token for the challenged scope did not let it through"
        );
        again
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.send(Method::GET, path, &[], b"").await
    }
}

async fn code(r: reqwest::Response) -> String {
    common::error_code(r).await
}

#[tokio::test]
async fn every_endpoint_through_token_mode() {
    let edge = Edge::start_with(EdgeOpts::default().env("REGISTRY_EDGE_AUTH_MODE", "token"));
    let c = TokenClient::new(&edge);

    let r = c.get("/v2/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    // Monolithic upload, then HEAD, GET and a range.
    let data = random_bytes(10_000);
    let d = sha256(&data);
    let r = c
        .send(
            Method::POST,
            &format!("/v2/conf/app/blobs/uploads/?digest={d}"),
            &[("content-type", "application/octet-stream")],
            &data,
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    let r = c
        .send(Method::HEAD, &format!("/v2/conf/app/blobs/{d}"), &[], b"")
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "10000");
    let r = c
        .send(
            Method::GET,
            &format!("/v2/conf/app/blobs/{d}"),
            &[("range", "bytes=100-199")],
            b"",
        )
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &data[100..200]);

    // Chunked upload: POST, PATCH with Content-Range, status, PUT.
    let chunked = random_bytes(20_000);
    let cd = sha256(&chunked);
    let r = c
        .send(Method::POST, "/v2/conf/app/blobs/uploads/", &[], b"")
        .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .send(
            Method::PATCH,
            &location,
            &[
                ("content-type", "application/octet-stream"),
                ("content-range", "0-9999"),
            ],
            &chunked[..10_000],
        )
        .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c.get(&location).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-9999");
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = c
        .send(
            Method::PUT,
            &format!("{location}{sep}digest={cd}"),
            &[("content-type", "application/octet-stream")],
            &chunked[10_000..],
        )
        .await;
    assert_eq!(r.status(), 201);
    // An upload cancelled, and an unknown one.
    let r = c
        .send(Method::POST, "/v2/conf/app/blobs/uploads/", &[], b"")
        .await;
    let cancel = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c.send(Method::DELETE, &cancel, &[], b"").await;
    assert_eq!(r.status(), 204);
    assert_eq!(code(c.get(&cancel).await).await, "BLOB_UPLOAD_UNKNOWN");

    // A cross-repository mount needs push on one and pull on the other.
    let r = c
        .send(
            Method::POST,
            &format!("/v2/conf/other/blobs/uploads/?mount={d}&from=conf/app"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status(), 201);

    // Manifests: PUT by tag, GET and HEAD by tag and digest, a subject and its referrers.
    let config = sha256(b"{}");
    c.send(
        Method::POST,
        &format!("/v2/conf/app/blobs/uploads/?digest={config}"),
        &[],
        b"{}",
    )
    .await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 10000},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": cd, "size": 20000},
        ],
    })
    .to_string();
    let md = sha256(manifest.as_bytes());
    let r = c
        .send(
            Method::PUT,
            "/v2/conf/app/manifests/v1",
            &[("content-type", OCI_MANIFEST)],
            manifest.as_bytes(),
        )
        .await;
    assert_eq!(r.status(), 201);
    for reference in ["v1", md.as_str()] {
        let path = format!("/v2/conf/app/manifests/{reference}");
        let r = c
            .send(Method::GET, &path, &[("accept", OCI_MANIFEST)], b"")
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-content-digest"], md.as_str());
        assert_eq!(r.text().await.unwrap(), manifest);
        let r = c
            .send(Method::HEAD, &path, &[("accept", OCI_MANIFEST)], b"")
            .await;
        assert_eq!(r.status(), 200);
    }
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 10000}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": md, "size": manifest.len()},
    })
    .to_string();
    let ad = sha256(artifact.as_bytes());
    let r = c
        .send(
            Method::PUT,
            &format!("/v2/conf/app/manifests/{ad}"),
            &[("content-type", OCI_MANIFEST)],
            artifact.as_bytes(),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["oci-subject"], md.as_str());
    let r = c.get(&format!("/v2/conf/app/referrers/{md}")).await;
    assert_eq!(r.status(), 200);
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"][0]["digest"], ad.as_str());

    // Tags and the catalog, paged.
    for t in ["v2", "v3"] {
        c.send(
            Method::PUT,
            &format!("/v2/conf/app/manifests/{t}"),
            &[("content-type", OCI_MANIFEST)],
            manifest.as_bytes(),
        )
        .await;
    }
    let r = c.get("/v2/conf/app/tags/list?n=2").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("link"));
    let tags: Value = r.json().await.unwrap();
    assert_eq!(tags["tags"], json!(["v1", "v2"]));
    let r = c.get("/v2/_catalog?n=1").await;
    assert_eq!(r.status(), 200);
    let cat: Value = r.json().await.unwrap();
    assert_eq!(cat["repositories"], json!(["conf/app"]));

    // Errors are the registry's.
    assert_eq!(
        code(c.get("/v2/conf/app/manifests/nope").await).await,
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        code(
            c.get(&format!("/v2/conf/app/blobs/{}", sha256(b"none")))
                .await
        )
        .await,
        "BLOB_UNKNOWN"
    );
    assert_eq!(
        code(c.get("/v2/conf/app/blobs/sha256:short").await).await,
        "DIGEST_INVALID"
    );
    let r = c
        .send(
            Method::PUT,
            "/v2/conf/app/manifests/bad",
            &[("content-type", OCI_MANIFEST)],
            b"{not json",
        )
        .await;
    assert_eq!(code(r).await, "MANIFEST_INVALID");

    // Deletes: a manifest by digest, a blob.
    let r = c
        .send(
            Method::DELETE,
            &format!("/v2/conf/app/manifests/{ad}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status(), 202);
    let r = c
        .send(
            Method::DELETE,
            &format!("/v2/conf/other/blobs/{d}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status(), 202);

    // The scopes it was challenged for: what each request needs, nothing broader.
    let scopes = c.challenged.lock().unwrap().clone();
    for want in [
        "",
        "repository:conf/app:pull,push",
        "repository:conf/app:pull",
        "repository:conf/other:pull,push repository:conf/app:pull",
        "registry:catalog:*",
        "repository:conf/app:delete",
        "repository:conf/other:delete",
    ] {
        assert!(scopes.iter().any(|s| s == want), "{want:?} in {scopes:?}");
    }
}
