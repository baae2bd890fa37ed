//! registry-core against a client that tries to make it keep things: unknown upload ids,
//! interrupted monolithic uploads, sessions that never go past their first request, made-up
//! methods in the metrics, error answers that must be framed for keep-alive, and error answers
//! before a large body that must reach a client still sending it.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use registry_core::name::RepoName;
use registry_core::storage::{layout, FsStorage, Storage};
use registry_core::Registry;

fn registry(root: &std::path::Path) -> Arc<Registry> {
    Arc::new(Registry::new(
        Arc::new(FsStorage::open(root).unwrap()),
        Default::default(),
    ))
}

fn request(
    method: &str,
    uri: &str,
    body: Vec<u8>,
) -> http::Request<registry_core::server::RequestBody> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .body(
            http_body_util::Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

#[tokio::test]
async fn nothing_is_kept_about_unknown_upload_ids() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry(dir.path());
    for i in 0..1000 {
        let id = format!("00000000-0000-0000-0000-{i:012}");
        for (m, body) in [
            ("DELETE", vec![]),
            ("PATCH", b"x".to_vec()),
            ("GET", vec![]),
        ] {
            let resp = registry_core::server::handle(
                &r,
                request(m, &format!("/v2/a/blobs/uploads/{id}"), body),
            )
            .await;
            assert_eq!(resp.status(), 404, "{m}");
        }
        let d = format!("sha256:{}", "0".repeat(64));
        let resp = registry_core::server::handle(
            &r,
            request(
                "PUT",
                &format!("/v2/a/blobs/uploads/{id}?digest={d}"),
                vec![],
            ),
        )
        .await;
        assert_eq!(resp.status(), 404);
    }
    assert_eq!(r.upload_states(), 0, "no state kept for unknown ids");
}

#[tokio::test]
async fn a_failed_monolithic_upload_leaves_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry(dir.path());
    // A wrong digest, and a body that breaks off midway.
    let d = format!("sha256:{}", "0".repeat(64));
    let resp = registry_core::server::handle(
        &r,
        request(
            "POST",
            &format!("/v2/m/blobs/uploads/?digest={d}"),
            b"data".to_vec(),
        ),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let broken = futures_util::stream::iter(vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"part"))),
        Err(std::io::Error::other("client went away")),
    ]);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("/v2/m/blobs/uploads/?digest={d}"))
        .body(http_body_util::StreamBody::new(broken).boxed())
        .unwrap();
    let resp = registry_core::server::handle(&r, req).await;
    assert_eq!(resp.status(), 400);
    let name: RepoName = "m".parse().unwrap();
    let storage = FsStorage::open(dir.path()).unwrap();
    let left = storage
        .list(&layout::uploads_dir(&name))
        .await
        .unwrap_or_default();
    assert!(left.is_empty(), "sessions left behind: {left:?}");
    assert_eq!(r.upload_states(), 0);
}

#[tokio::test]
async fn sessions_that_never_got_data_are_purged_after_an_hour() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry(dir.path());
    let name: RepoName = "p".parse().unwrap();
    let empty = r.start_upload(&name).await.unwrap();
    let used = r.start_upload(&name).await.unwrap();
    let chunk: registry_core::storage::ByteStream = Box::pin(futures_util::stream::iter(vec![Ok(
        Bytes::from_static(b"abc"),
    )]));
    r.append_upload(&name, &used, None, chunk).await.unwrap();
    let fresh = r.start_upload(&name).await.unwrap();
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    let storage = FsStorage::open(dir.path()).unwrap();
    for id in [&empty, &used] {
        let t = humantime::format_rfc3339(two_hours_ago).to_string();
        storage
            .put(&layout::upload_startedat(&name, id), Bytes::from(t))
            .await
            .unwrap();
    }
    let purged = r
        .purge_uploads(Duration::from_secs(168 * 3600))
        .await
        .unwrap();
    assert_eq!(purged, 1, "only the two-hour-old session without data");
    let left = storage.list(&layout::uploads_dir(&name)).await.unwrap();
    assert!(left.contains(&used.to_string()) && left.contains(&fresh.to_string()));
    assert!(!left.contains(&empty.to_string()));
}

#[tokio::test]
async fn made_up_methods_share_one_metric_label() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry(dir.path());
    for i in 0..50 {
        let m = format!("XMADEUP{i}");
        let resp = registry_core::server::handle(&r, request(&m, "/v2/", vec![])).await;
        assert_eq!(resp.status(), 405);
    }
    let text = registry_core::metrics::render();
    assert!(
        !text.contains("XMADEUP"),
        "a client-chosen method became a label"
    );
    assert!(text.contains("method=\"other\""));
}

#[tokio::test]
async fn error_answers_are_framed_for_keep_alive() {
    let s = common::Server::start().await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Two requests pipelined: an error with a body, then another; both are answered on one
        // connection only if the first answer says where it ends.
        write!(
            c,
            "GET /v2/x/manifests/nope HTTP/1.1\r\nHost: r\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    let first = out.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(first.starts_with("http/1.1 404"), "{out}");
    assert!(first.contains("content-length:"), "{first}");
    assert_eq!(out.matches("HTTP/1.1 ").count(), 2, "{out}");
}

/// An error answered before the body (an unknown upload here, a store that is down in
/// `s3.rs`): the rest of the body is read and dropped, so a client still sending it gets the
/// answer rather than a reset, and the connection serves the next request.
#[tokio::test]
async fn an_error_before_the_body_reaches_a_client_still_sending() {
    let s = common::Server::start().await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = vec![7u8; 16 << 20];
        let mut w = c.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let head = format!(
                "PATCH /v2/x/blobs/uploads/a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d HTTP/1.1\r\nHost: r\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            w.write_all(head.as_bytes())?;
            w.write_all(&body)?;
            w.write_all(b"GET /v2/ HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
        });
        let mut out = String::new();
        let read = c.read_to_string(&mut out);
        (read.map_err(|e| e.to_string()), writer.join().unwrap().map_err(|e| e.to_string()), out)
    })
    .await
    .unwrap();
    let (read, written, out) = out;
    assert!(
        read.is_ok() && written.is_ok(),
        "{read:?} {written:?} {out}"
    );
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(out.contains("BLOB_UPLOAD_UNKNOWN"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        2,
        "the next request is served: {out}"
    );
}

#[test]
fn registry2_settings_it_cannot_honour_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    // Azure would quietly become local disk, S3 encryption would quietly be off; an htpasswd
    // setting meant for registry-core (which does no auth) would quietly serve everyone.
    for (k, v) in [
        ("REGISTRY_STORAGE", "azure"),
        ("REGISTRY_STORAGE_S3_ENCRYPT", "true"),
        ("REGISTRY_AUTH_HTPASSWD_PATH", "/auth/htpasswd"),
        ("REGISTRY_PROXY_REMOTEURL", "https://registry-1.docker.io"),
    ] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_registry-core"))
            .current_dir(dir.path())
            .env(k, v)
            .env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{k}: {err}");
        assert!(err.contains(k) && err.contains("not supported"), "{err}");
    }
}

#[test]
fn an_s3_configuration_without_a_bucket_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // registry-core started with an S3 environment: its exit code and stderr.
    let start = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_registry-core"))
            .current_dir(dir.path())
            .env("REGISTRY_STORAGE", "s3")
            .env("REGISTRY_STORAGE_S3_CHUNKSIZE", "1MiB")
            .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = start(&[("REGISTRY_STORAGE_S3_SECRETKEY", "do-not-print-me")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("s3.bucket"), "{err}");
    assert!(!err.contains("do-not-print-me"), "{err}");
    // A part size under S3's minimum is named too.
    let (code, err) = start(&[("REGISTRY_STORAGE_S3_BUCKET", "images")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("s3.part_size") && err.contains("REGISTRY_STORAGE_S3_CHUNKSIZE"),
        "{err}"
    );
}
