//! The edge's reading of a `/v2/` request: the path parsed into a route, every part of it
//! validated (repository names, references, digests, upload ids), the query decoded once, and
//! the canonical form rebuilt from what was checked. The access rules are applied to these
//! values, and the canonical form is what reaches the registry, so no encoding trick (`%2F`,
//! `%5F`, `%2e`, double encoding, encoded query keys) can make the registry act on anything the
//! rules did not see. What cannot be parsed gets a 4xx here and is never forwarded.

use http::Method;
use registry_core::digest::Digest;
use registry_core::name::{RepoName, Tag, UploadId};
use registry_core::routes::{self, decode_query_component, Route};

/// The longest request target (path and query) accepted, in bytes; longer ones get 414.
pub const MAX_URI_LEN: usize = 8 * 1024;
/// The longest value kept of an opaque query parameter (Distribution's upload `_state`).
const MAX_STATE_LEN: usize = 4 * 1024;
/// The largest page size a client may ask for.
const MAX_PAGE: u64 = 100_000;

/// A request the edge refuses, with the registry's error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_query(message: impl Into<String>) -> Refusal {
        Refusal::new(400, "UNSUPPORTED", message)
    }
}

/// A parsed and validated API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// The route, with names and references as validated (canonical) strings.
    pub route: Route,
    /// Query parameters the route knows, decoded, in the order given.
    pub query: Vec<(&'static str, String)>,
    /// The request target to forward: the canonical path and query.
    pub target: String,
}

impl ApiRequest {
    /// The decoded value of a known query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The query parameters a route may carry (with any method it allows).
fn known_params(route: &Route) -> &'static [&'static str] {
    match route {
        Route::Base | Route::Blob { .. } | Route::Manifest { .. } => &[],
        Route::Catalog | Route::Tags { .. } => &["n", "last"],
        Route::UploadStart { .. } => &["digest", "mount", "from"],
        Route::Upload { .. } => &["digest", "_state"],
        Route::Referrers { .. } => &["artifactType"],
    }
}

fn methods_allowed(route: &Route, m: &Method) -> bool {
    let read = *m == Method::GET || *m == Method::HEAD;
    match route {
        Route::Base | Route::Catalog | Route::Tags { .. } | Route::Referrers { .. } => read,
        Route::Blob { .. } => read || *m == Method::DELETE,
        Route::UploadStart { .. } => *m == Method::POST,
        Route::Upload { .. } => {
            matches!(
                *m,
                Method::GET | Method::PATCH | Method::PUT | Method::DELETE
            )
        }
        Route::Manifest { .. } => read || *m == Method::PUT || *m == Method::DELETE,
    }
}

fn name(s: &str) -> Result<String, Refusal> {
    s.parse::<RepoName>()
        .map(|n| n.as_str().to_owned())
        .map_err(|e| Refusal::new(400, "NAME_INVALID", format!("invalid repository name: {e}")))
}

fn digest(s: &str) -> Result<String, Refusal> {
    s.parse::<Digest>()
        .map(|d| d.to_string())
        .map_err(|e| Refusal::new(400, "DIGEST_INVALID", format!("invalid digest: {e}")))
}

/// Validates every part of a route and returns it with canonical strings.
fn validate(route: Route, method: &Method) -> Result<Route, Refusal> {
    Ok(match route {
        Route::Base | Route::Catalog => route,
        Route::Blob { name: n, digest: d } => Route::Blob {
            name: name(&n)?,
            digest: digest(&d)?,
        },
        Route::UploadStart { name: n } => Route::UploadStart { name: name(&n)? },
        Route::Upload { name: n, id } => Route::Upload {
            name: name(&n)?,
            id: id
                .parse::<UploadId>()
                .map(|i| i.as_str().to_owned())
                .map_err(|_| {
                    Refusal::new(
                        404,
                        "BLOB_UPLOAD_UNKNOWN",
                        "blob upload unknown to registry",
                    )
                })?,
        },
        Route::Manifest { name: n, reference } => {
            let reference = if reference.contains(':') {
                digest(&reference).map_err(|r| refuse_reference(r, method))?
            } else {
                reference
                    .parse::<Tag>()
                    .map(|t| t.as_str().to_owned())
                    .map_err(|e| {
                        refuse_reference(
                            Refusal::new(400, "MANIFEST_INVALID", format!("invalid tag: {e}")),
                            method,
                        )
                    })?
            };
            Route::Manifest {
                name: name(&n)?,
                reference,
            }
        }
        Route::Tags { name: n } => Route::Tags { name: name(&n)? },
        Route::Referrers { name: n, digest: d } => Route::Referrers {
            name: name(&n)?,
            digest: digest(&d)?,
        },
    })
}

/// A reference that is neither a tag nor a digest names nothing: reading it is a 404, writing
/// it a 400.
fn refuse_reference(r: Refusal, method: &Method) -> Refusal {
    if *method == Method::GET || *method == Method::HEAD {
        Refusal::new(
            404,
            "MANIFEST_UNKNOWN",
            format!("manifest unknown: {}", r.message),
        )
    } else {
        r
    }
}

/// Decodes one query component; a bad escape or a result that is not UTF-8 is refused.
fn decode_component(s: &str) -> Result<String, Refusal> {
    decode_query_component(s)
        .ok_or_else(|| Refusal::bad_query("malformed percent-encoding in the query"))
}

/// Percent-encodes a query component, keeping unreserved characters and `:` and `/`.
fn encode_component(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Decodes the query once, keeps the parameters the route knows (each at most once), and
/// validates their values.
fn parse_query(route: &Route, query: Option<&str>) -> Result<Vec<(&'static str, String)>, Refusal> {
    let known = known_params(route);
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode_component(k)?, decode_component(v)?);
        let Some(key) = known.iter().copied().find(|x| *x == k) else {
            // Unknown to the route: not forwarded, so it cannot matter.
            continue;
        };
        if out.iter().any(|(x, _)| *x == key) {
            return Err(Refusal::bad_query(format!(
                "query parameter {key:?} given more than once"
            )));
        }
        let v = match key {
            "digest" | "mount" => digest(&v)?,
            "from" => name(&v)?,
            "n" => {
                if !v.is_empty() {
                    match v.parse::<u64>() {
                        Ok(n) if n <= MAX_PAGE => {}
                        _ => {
                            return Err(Refusal::new(
                                400,
                                "PAGINATION_NUMBER_INVALID",
                                format!("n must be an integer from 0 to {MAX_PAGE}"),
                            ))
                        }
                    }
                }
                v
            }
            "last" => {
                if !v.is_empty() {
                    let ok = match route {
                        Route::Catalog => v.parse::<RepoName>().is_ok(),
                        _ => v.parse::<Tag>().is_ok(),
                    };
                    if !ok {
                        return Err(Refusal::bad_query("last is not a valid name"));
                    }
                }
                v
            }
            "artifactType" | "_state" => {
                if v.len() > MAX_STATE_LEN || v.chars().any(char::is_control) {
                    return Err(Refusal::bad_query(format!("{key} is malformed")));
                }
                v
            }
            _ => v,
        };
        out.push((key, v));
    }
    Ok(out)
}

/// The canonical path of a validated route.
fn canonical_path(route: &Route) -> String {
    match route {
        Route::Base => "/v2/".to_owned(),
        Route::Catalog => "/v2/_catalog".to_owned(),
        Route::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
        Route::UploadStart { name } => format!("/v2/{name}/blobs/uploads/"),
        Route::Upload { name, id } => format!("/v2/{name}/blobs/uploads/{id}"),
        Route::Manifest { name, reference } => format!("/v2/{name}/manifests/{reference}"),
        Route::Tags { name } => format!("/v2/{name}/tags/list"),
        Route::Referrers { name, digest } => format!("/v2/{name}/referrers/{digest}"),
    }
}

/// Builds a request target from a path and decoded query parameters.
pub fn target(path: &str, query: &[(&str, String)]) -> String {
    let mut t = path.to_owned();
    for (i, (k, v)) in query.iter().enumerate() {
        t.push(if i == 0 { '?' } else { '&' });
        t.push_str(k);
        t.push('=');
        encode_component(v, &mut t);
    }
    t
}

/// Parses an API request (`path` under `/v2`): the route, its validated parts, the method it
/// allows, and the known query parameters.
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<ApiRequest, Refusal> {
    if path.len() + query.map_or(0, str::len) > MAX_URI_LEN {
        return Err(Refusal::new(414, "UNSUPPORTED", "request URI too long"));
    }
    let route =
        routes::parse(path).ok_or_else(|| Refusal::new(404, "UNSUPPORTED", "no such endpoint"))?;
    if !methods_allowed(&route, method) {
        return Err(Refusal::new(
            405,
            "UNSUPPORTED",
            "method not allowed on this endpoint",
        ));
    }
    let route = validate(route, method)?;
    let query = parse_query(&route, query)?;
    let target = target(&canonical_path(&route), &query);
    Ok(ApiRequest {
        route,
        query,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn get(path: &str) -> Result<ApiRequest, Refusal> {
        let (p, q) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        parse(&Method::GET, p, q)
    }

    #[test]
    fn canonical_targets() {
        assert_eq!(get("/v2").unwrap().target, "/v2/");
        assert_eq!(
            get("/v2/a/b/tags/list?n=1&x=y").unwrap().target,
            "/v2/a/b/tags/list?n=1"
        );
        assert_eq!(
            get(&format!("/v2/a/blobs/sha256%3A{}", &D[7..]))
                .unwrap()
                .target,
            format!("/v2/a/blobs/{D}")
        );
        // An encoded slash inside the name is the same name, and is forwarded plainly.
        assert_eq!(
            get("/v2/secret%2Fapp/manifests/v1").unwrap().target,
            "/v2/secret/app/manifests/v1"
        );
        let r = parse(
            &Method::POST,
            "/v2/dst/blobs/uploads/",
            Some(&format!("mount={D}&fr%6Fm=secret%2Fapp")),
        )
        .unwrap();
        assert_eq!(r.param("from"), Some("secret/app"));
        assert_eq!(
            r.target,
            format!("/v2/dst/blobs/uploads/?mount={D}&from=secret/app")
        );
        let r = parse(
            &Method::PUT,
            "/v2/a/blobs/uploads/abc-1",
            Some("_state=x%2By%3D&digest=sha256%3A0000000000000000000000000000000000000000000000000000000000000000"),
        )
        .unwrap();
        assert_eq!(r.param("_state"), Some("x+y="));
        assert_eq!(
            r.target,
            format!("/v2/a/blobs/uploads/abc-1?_state=x%2By%3D&digest={D}")
        );
    }

    #[test]
    fn encoded_tricks_are_refused() {
        for p in [
            format!("/v2/secret/app/blobs%2F{D}"),
            "/v2/secret/app/manifests%2Fv1".to_owned(),
            "/v2/secret/app/tags%2Flist".to_owned(),
            "/v2/%5Fcatalog".to_owned(),
            "/v2/x/other/1".to_owned(),
        ] {
            assert_eq!(get(&p).unwrap_err().status, 404, "{p}");
        }
        for p in [
            "/v2/alice/%2e%2e/secret/manifests/v1",
            "/v2/alice/../secret/manifests/v1",
            "/v2/alice%252Fx/manifests/v1",
            "/v2/Alice/manifests/v1",
        ] {
            assert_eq!(get(p).unwrap_err().code, "NAME_INVALID", "{p}");
        }
        assert_eq!(get("/v2/a/manifests/v1%2Fx").unwrap_err().status, 404);
        assert_eq!(
            parse(&Method::PUT, "/v2/a/manifests/v%2F1", None)
                .unwrap_err()
                .code,
            "MANIFEST_INVALID"
        );
        assert_eq!(
            get("/v2/a/blobs/sha256:zz").unwrap_err().code,
            "DIGEST_INVALID"
        );
        assert_eq!(
            parse(&Method::PATCH, "/v2/a/blobs/uploads/..%2F..", None)
                .unwrap_err()
                .status,
            404
        );
        // Query keys are decoded before they are looked at; a repeated key is refused.
        let q = format!("mount={D}&from=a&fr%6Fm=b");
        assert_eq!(
            parse(&Method::POST, "/v2/a/blobs/uploads/", Some(&q))
                .unwrap_err()
                .status,
            400
        );
        let q = format!("mount={D}&from=..%2Fx");
        assert_eq!(
            parse(&Method::POST, "/v2/a/blobs/uploads/", Some(&q))
                .unwrap_err()
                .code,
            "NAME_INVALID"
        );
        assert_eq!(get("/v2/_catalog?n=%zz").unwrap_err().status, 400);
        assert_eq!(
            get("/v2/_catalog?n=-1").unwrap_err().code,
            "PAGINATION_NUMBER_INVALID"
        );
        // Methods a route does not have never reach the registry.
        for m in ["PROPFIND", "TRACE", "OPTIONS", "FOO"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert_eq!(
                parse(&m, "/v2/a/manifests/v1", None).unwrap_err().status,
                405
            );
        }
        assert_eq!(
            parse(&Method::DELETE, "/v2/_catalog", None)
                .unwrap_err()
                .status,
            405
        );
        let long = format!("/v2/a/manifests/{}", "x".repeat(MAX_URI_LEN));
        assert_eq!(get(&long).unwrap_err().status, 414);
    }
}
