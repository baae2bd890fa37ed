//! Request paths to routes. Repository names contain `/`, so `/v2/<name>/<kind>/<ref>` is parsed
//! from the end. Names and references stay strings here; handlers validate them.

/// What a `/v2/` path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Blob { name: String, digest: String },
    UploadStart { name: String },
    Upload { name: String, id: String },
    Manifest { name: String, reference: String },
    Tags { name: String },
    Referrers { name: String, digest: String },
}

impl Route {
    /// The route class used as a metric label.
    pub fn class(&self) -> &'static str {
        match self {
            Route::Base => "ping",
            Route::Catalog => "catalog",
            Route::Blob { .. } => "blob",
            Route::UploadStart { .. } | Route::Upload { .. } => "blob_upload",
            Route::Manifest { .. } => "manifest",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
        }
    }
}

/// Parses a raw request path. Segments are split before they are percent-decoded, so an encoded
/// `/` stays inside its segment (and fails validation there). `None` for paths outside the API.
pub fn parse(path: &str) -> Option<Route> {
    let rest = match path {
        "/v2" | "/v2/" => return Some(Route::Base),
        p => p.strip_prefix("/v2/")?,
    };
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    let decoded = rest
        .split('/')
        .map(percent_decode)
        .collect::<Option<Vec<String>>>()?;
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let n = segs.len();
    let name = |k: usize| -> Option<String> { (n > k).then(|| segs[..n - k].join("/")) };
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let name = name(3)?;
        return Some(if segs[n - 1].is_empty() {
            Route::UploadStart { name }
        } else {
            Route::Upload {
                name,
                id: segs[n - 1].to_owned(),
            }
        });
    }
    if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Some(Route::UploadStart { name: name(2)? });
    }
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Some(Route::Tags { name: name(2)? });
    }
    if n >= 3 {
        let last = segs[n - 1].to_owned();
        let name = name(2)?;
        return match segs[n - 2] {
            "blobs" => Some(Route::Blob { name, digest: last }),
            "manifests" => Some(Route::Manifest {
                name,
                reference: last,
            }),
            "referrers" => Some(Route::Referrers { name, digest: last }),
            _ => None,
        };
    }
    None
}

/// Decodes `%XX` escapes. `None` for a bad escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Decodes one query key or value: `+` is a space, `%XX` a byte. `None` as [`percent_decode`].
pub fn decode_query_component(s: &str) -> Option<String> {
    percent_decode(&s.replace('+', " "))
}

/// The value of query parameter `key`, decoded. Keys are decoded before they are compared, so
/// `fr%6Fm` is `from`; the first occurrence counts.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode_query_component(k)? == key).then(|| decode_query_component(v).unwrap_or_default())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/"), Some(Route::Base));
        assert_eq!(parse("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(
            parse("/v2/a/b/blobs/sha256:x"),
            Some(Route::Blob {
                name: "a/b".into(),
                digest: "sha256:x".into()
            })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/"),
            Some(Route::UploadStart { name: "a".into() })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads"),
            Some(Route::UploadStart { name: "a".into() })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/123"),
            Some(Route::Upload {
                name: "a".into(),
                id: "123".into()
            })
        );
        assert_eq!(
            parse("/v2/blobs/manifests/manifests/latest"),
            Some(Route::Manifest {
                name: "blobs/manifests".into(),
                reference: "latest".into()
            })
        );
        assert_eq!(
            parse("/v2/x/tags/list"),
            Some(Route::Tags { name: "x".into() })
        );
        assert_eq!(
            parse("/v2/x/referrers/sha256:1"),
            Some(Route::Referrers {
                name: "x".into(),
                digest: "sha256:1".into()
            })
        );
        assert_eq!(parse("/v2/x/other/1"), None);
        assert_eq!(parse("/v2/manifests/latest"), None);
        assert_eq!(parse("/v3/"), None);
        assert_eq!(percent_decode("sha256%3Aab").as_deref(), Some("sha256:ab"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(
            query_param(Some("a=1&n=5&last=x%2Fy"), "last").as_deref(),
            Some("x/y")
        );
        assert_eq!(
            query_param(Some("mount=d&fr%6Fm=a%2Fb"), "from").as_deref(),
            Some("a/b")
        );
    }
}
