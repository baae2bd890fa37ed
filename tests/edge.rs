//! The edge as users meet it: the one-command start (generated CA, first user, embedded core)
//! over verified TLS, HTTP/1.1 and HTTP/2; the login challenge; forwarding headers; upstream
//! failures; bad input; large streamed bodies; graceful shutdown.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{
    basic, error_code, random_bytes, raw_tls, read_head, reserve_port, sha256, Distribution, Edge,
    EdgeOpts, RawTls,
};
use reqwest::StatusCode;
use serde_json::Value;

async fn assert_challenge(r: reqwest::Response, message: &str) {
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"Registry Realm\""
    );
    assert_eq!(
        r.headers()
            .get_all("docker-distribution-api-version")
            .iter()
            .count(),
        1
    );
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED");
    assert_eq!(v["errors"][0]["message"], message);
}

#[tokio::test]
async fn login_challenge_over_h1_and_h2() {
    // Twelve failed logins from one address on purpose: lift the lockout, which
    // tests/operations.rs tests on its own.
    let edge =
        Edge::start_with(EdgeOpts::default().env("REGISTRY_EDGE_LOCKOUT_MAX_FAILURES", "1000"));
    assert_eq!(edge.user, "admin");
    assert!(edge.password.len() >= 16);
    for h2 in [false, true] {
        let c = edge.client(h2);
        let url = format!("{}/v2/", edge.url());
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(
            r.version(),
            if h2 {
                reqwest::Version::HTTP_2
            } else {
                reqwest::Version::HTTP_11
            }
        );
        assert_challenge(r, "authentication required").await;
        let r = c
            .get(&url)
            .header("authorization", basic(&edge.user, "wrong"))
            .send()
            .await
            .unwrap();
        assert_challenge(r, "invalid username or password").await;
        let r = c
            .get(&url)
            .header("authorization", basic("mallory", &edge.password))
            .send()
            .await
            .unwrap();
        assert_challenge(r, "invalid username or password").await;
        for garbled in ["Basic", "Basic %%%", "Bearer abc", "Basic Zm9vYmFy"] {
            let r = c
                .get(&url)
                .header("authorization", garbled)
                .send()
                .await
                .unwrap();
            assert_challenge(
                r,
                "malformed Authorization header: Basic credentials expected",
            )
            .await;
        }
        // Every /v2/ path needs auth, HEAD included (no body on HEAD).
        let r = c
            .head(format!("{}/v2/x/manifests/latest", edge.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = c
            .get(&url)
            .header("authorization", basic(&edge.user, &edge.password))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()
                .get_all("docker-distribution-api-version")
                .iter()
                .count(),
            1
        );
        // Paths outside the API are the web UI's, never proxied: without a session, the login.
        let r = c
            .get(format!("{}/metrics", edge.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.url().path().starts_with("/login"), "{}", r.url());
    }
}

#[tokio::test]
async fn push_and_pull_through_the_embedded_core() {
    let edge = Edge::start();
    let auth = basic(&edge.user, &edge.password);
    for h2 in [false, true] {
        let c = edge.client(h2);
        let data = random_bytes(3 << 20);
        let d = sha256(&data);
        let r = c
            .post(format!("{}/v2/app/blobs/uploads/", edge.url()))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let r = c
            .patch(format!("{}{loc}", edge.url()))
            .header("authorization", &auth)
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let r = c
            .put(format!("{}{loc}?digest={d}", edge.url()))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = c
            .get(format!("{}/v2/app/blobs/{d}", edge.url()))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["docker-content-digest"], d.as_str());
        assert_eq!(r.bytes().await.unwrap(), data);
        let r = c
            .get(format!("{}/v2/app/blobs/{d}", edge.url()))
            .header("authorization", &auth)
            .header("range", "bytes=5-9")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.unwrap(), data[5..10]);
    }
    // The registry's own errors pass through with their JSON and one API-version header.
    let c = edge.client(false);
    let r = c
        .get(format!("{}/v2/app/manifests/nope", edge.url()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.headers()
            .get_all("docker-distribution-api-version")
            .iter()
            .count(),
        1
    );
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

/// An upstream that answers every request with the request's headers as JSON.
async fn echo_upstream() -> (String, tokio::task::JoinHandle<()>) {
    use http_body_util::Full;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let mut m = serde_json::Map::new();
                        for (k, v) in req.headers() {
                            m.insert(
                                k.to_string(),
                                Value::String(v.to_str().unwrap_or("").to_owned()),
                            );
                        }
                        m.insert(":uri".into(), Value::String(req.uri().to_string()));
                        let resp = hyper::Response::builder()
                            .header("docker-distribution-api-version", "registry/2.0")
                            .header("content-type", "application/json")
                            .body(Full::new(bytes::Bytes::from(Value::Object(m).to_string())))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn forwarding_headers_reach_the_upstream() {
    let (up, _task) = echo_upstream().await;
    let edge = Edge::start_with(
        EdgeOpts::default().env("REGISTRY_EDGE_UPSTREAM_URLS", &format!("[\"http://{up}\"]")),
    );
    for h2 in [false, true] {
        let c = edge.client(h2);
        let r = c
            .get(format!("{}/v2/some/repo/tags/list?n=1", edge.url()))
            .header("authorization", basic(&edge.user, &edge.password))
            .header("x-forwarded-for", "192.0.2.7")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "for=192.0.2.8;proto=http")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()
                .get_all("docker-distribution-api-version")
                .iter()
                .count(),
            1
        );
        let seen: Value = r.json().await.unwrap();
        assert_eq!(seen["host"], edge.addr.as_str(), "h2={h2} {seen}");
        assert_eq!(seen["x-forwarded-proto"], "https");
        // What the client claims about itself is dropped: the edge is the first trusted hop.
        assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
        assert!(seen.get("x-forwarded-host").is_none() && seen.get("forwarded").is_none());
        assert_eq!(seen["x-real-ip"], "127.0.0.1");
        assert_eq!(seen[":uri"], "/v2/some/repo/tags/list?n=1");
    }
}

#[tokio::test]
async fn upstream_down_and_back() {
    if !common::have("docker-registry") {
        return;
    }
    let port = reserve_port();
    let edge = Edge::start_with(EdgeOpts::default().env(
        "REGISTRY_EDGE_UPSTREAM_URLS",
        &format!("[\"http://127.0.0.1:{port}\"]"),
    ));
    let c = edge.client(false);
    let auth = basic(&edge.user, &edge.password);
    let r = c
        .get(format!("{}/v2/", edge.url()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    // The registry comes up on that port: the edge recovers without a restart.
    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start_on(&dir.path().join("data"), dir.path(), port);
    let _ = &dist;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .get(format!("{}/v2/", edge.url()))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "edge did not recover: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(dist);
    let r = c
        .get(format!("{}/v2/", edge.url()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert!(r.status() == 503 || r.status() == 502, "{}", r.status());
}

/// Starts an upload in `repo` on a raw connection; returns where to continue it (`Location`).
fn start_upload(s: &mut RawTls, edge: &Edge, auth: &str, repo: &str) -> String {
    write!(s, "POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n", edge.addr).unwrap();
    s.flush().unwrap();
    let head = read_head(s);
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("location:")
                .then(|| l[9..].trim().to_owned())
        })
        .unwrap()
}

#[test]
fn expect_continue_gets_401_before_the_body() {
    let edge = Edge::start();
    let mut s = raw_tls(&edge);
    write!(
        s,
        "PUT /v2/x/blobs/uploads/abc?digest={} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n",
        sha256(b"x"),
        edge.addr,
        basic(&edge.user, "wrong")
    )
    .unwrap();
    s.flush().unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic realm="),
        "{head}"
    );
    // With good credentials the client is told to continue, and the upload goes through.
    let auth = basic(&edge.user, &edge.password);
    let mut s = raw_tls(&edge);
    let location = start_upload(&mut s, &edge, &auth, "x");
    write!(
        s,
        "PUT {location}?digest={} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        sha256(b"hello"),
        edge.addr,
    )
    .unwrap();
    s.flush().unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    s.write_all(b"hello").unwrap();
    s.flush().unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
}

/// The embedded registry may answer before it has read the body (here: an unknown upload). The
/// answer arrives while the client is still sending, the edge reads on so the client can finish
/// writing and read it, the connection is closed rather than reused with a body half read, and
/// the edge goes on serving.
#[test]
fn an_answer_before_the_body_closes_the_connection() {
    let edge = Edge::start();
    let auth = basic(&edge.user, &edge.password);
    let mut s = raw_tls(&edge);
    let upload = "/v2/x/blobs/uploads/0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    write!(
        s,
        "PUT {upload}?digest={} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Length: 67108864\r\n\r\n",
        sha256(b"x"),
        edge.addr,
    )
    .unwrap();
    // More than the kernel buffers hold: the write completes only because the edge goes on
    // reading after its answer (closing with unread data would reset the connection and fail
    // the write), and the answer is read after it, as a client that writes before it reads does.
    s.write_all(&vec![0u8; 16 << 20]).unwrap();
    s.flush().unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let mut s = raw_tls(&edge);
    write!(
        s,
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\n\r\n",
        edge.addr
    )
    .unwrap();
    s.flush().unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// A client that drops its connection halfway through a monolithic upload leaves no blob behind,
/// and the same upload then succeeds.
#[test]
fn an_upload_cut_off_midway_leaves_nothing_and_can_be_redone() {
    let edge = Edge::start();
    let auth = basic(&edge.user, &edge.password);
    let data = random_bytes(4 << 20);
    let digest = sha256(&data);
    let put = |s: &mut RawTls, location: &str| {
        let sep = if location.contains('?') { '&' } else { '?' };
        write!(
            s,
            "PUT {location}{sep}digest={digest} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
            edge.addr,
            data.len()
        )
        .unwrap();
    };
    let blob_status = || {
        let mut s = raw_tls(&edge);
        write!(
            s,
            "HEAD /v2/cut/blobs/{digest} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\n\r\n",
            edge.addr
        )
        .unwrap();
        s.flush().unwrap();
        read_head(&mut s)
    };
    {
        let mut s = raw_tls(&edge);
        let location = start_upload(&mut s, &edge, &auth, "cut");
        put(&mut s, &location);
        s.write_all(&data[..1 << 20]).unwrap();
        s.flush().unwrap();
        s.sock.shutdown(std::net::Shutdown::Both).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let head = blob_status();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let mut s = raw_tls(&edge);
    let location = start_upload(&mut s, &edge, &auth, "cut");
    put(&mut s, &location);
    s.write_all(&data).unwrap();
    s.flush().unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let head = blob_status();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("{}", data.len())), "{head}");
}

#[test]
fn oversized_header_block_and_slow_headers() {
    let edge = Edge::start();
    // A header block over the 1 MiB limit gets 431 with a body that says why, and the edge
    // keeps serving.
    let mut s = raw_tls(&edge);
    let big = "a".repeat(2 * 1024 * 1024);
    let _ = write!(s, "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = s.flush();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    assert!(body.contains("larger than 1 MiB"), "{body}");
    // Just under the limit is a request like any other.
    let mut s = raw_tls(&edge);
    let fits = "a".repeat(1000 * 1024);
    write!(
        s,
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {fits}\r\nAuthorization: {}\r\n\r\n",
        basic(&edge.user, &edge.password)
    )
    .unwrap();
    s.flush().unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // A client trickling its headers does not hold up anyone else.
    let mut slow = raw_tls(&edge);
    write!(slow, "GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.flush().unwrap();
    let mut s = raw_tls(&edge);
    write!(
        s,
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic(&edge.user, &edge.password)
    )
    .unwrap();
    s.flush().unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    write!(slow, "X-Late: 1\r\n").unwrap();
    slow.flush().unwrap();
}

fn edge_exit(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .current_dir(dir)
        .envs(env.iter().copied())
        .env(
            "REGISTRY_EDGE_SERVER_LISTEN",
            format!("127.0.0.1:{}", reserve_port()),
        )
        .env("REGISTRY_EDGE_METRICS_LISTEN", "")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_stops_the_start_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    // A registry:2 environment block asking for Azure storage, S3 encryption or a pull-through
    // cache is refused, naming the setting, rather than quietly run as something else.
    for (env, named) in [
        (
            &[
                ("REGISTRY_STORAGE", "azure"),
                ("REGISTRY_STORAGE_AZURE_ACCOUNTNAME", "images"),
                ("REGISTRY_HTTP_SECRET", "s"),
            ][..],
            "REGISTRY_STORAGE",
        ),
        (
            &[
                ("REGISTRY_STORAGE", "s3"),
                ("REGISTRY_STORAGE_S3_BUCKET", "images"),
                ("REGISTRY_STORAGE_S3_ENCRYPT", "true"),
            ][..],
            "REGISTRY_STORAGE_S3_ENCRYPT",
        ),
        (
            &[("REGISTRY_PROXY_REMOTEURL", "https://registry-1.docker.io")][..],
            "REGISTRY_PROXY_REMOTEURL",
        ),
        (&[("REGISTRY_AUTH", "token")][..], "REGISTRY_AUTH"),
    ] {
        let (code, err) = edge_exit(dir.path(), env, &["check"]);
        assert_eq!(code, 64, "{err}");
        assert!(
            err.contains(named) && err.contains("not supported"),
            "{err}"
        );
    }
    // S3 without a bucket: the key named, the secret not printed.
    let (code, err) = edge_exit(
        dir.path(),
        &[
            ("REGISTRY_STORAGE", "s3"),
            ("REGISTRY_STORAGE_S3_SECRETKEY", "never-printed"),
        ],
        &["check"],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("storage.s3.bucket"), "{err}");
    assert!(!err.contains("never-printed"), "{err}");
    // registry:2's shared secret is the edge's, and a short one is refused.
    let (code, err) = edge_exit(
        dir.path(),
        &[("REGISTRY_HTTP_SECRET", "shared")],
        &["check"],
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("server.secret") && err.contains("REGISTRY_HTTP_SECRET"),
        "{err}"
    );
    // Anything else unknown starts, with a warning naming it.
    let edge = Edge::start_with(EdgeOpts::default().env("REGISTRY_HTTP_HOST", "https://r.example"));
    assert!(
        edge.log_text().contains("REGISTRY_HTTP_HOST"),
        "{}",
        edge.log_text()
    );
    drop(edge);
    let (code, err) = edge_exit(dir.path(), &[("REGISTRY_EDGE_SERVER_THREADS", "zero")], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("threads") && err.contains("REGISTRY_EDGE_SERVER_THREADS"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("bad.toml"),
        "[auth]\nrealm = \"x\"\nbogus = true\n",
    )
    .unwrap();
    let (code, err) = edge_exit(dir.path(), &[], &["--config", "bad.toml"]);
    assert_eq!(code, 64);
    assert!(err.contains("bogus") && err.contains("bad.toml"), "{err}");
    let (code, err) = edge_exit(dir.path(), &[], &["--config", "missing.toml"]);
    assert_eq!(code, 64);
    assert!(err.contains("missing.toml"), "{err}");
    // A malformed htpasswd line stops the start naming file and line.
    std::fs::create_dir_all(dir.path().join("auth")).unwrap();
    std::fs::write(
        dir.path().join("auth/htpasswd"),
        "ok:$2y$05$abcdefghijklmnopqrstuu5Yf3C9B3EjTJa9DsDyVVWjeF9qRHqYy\nbob:$apr1$xyz$abc\n",
    )
    .unwrap();
    let (code, err) = edge_exit(dir.path(), &[], &[]);
    assert_eq!(code, 70, "{err}");
    assert!(
        err.contains("auth/htpasswd:2") && err.contains("bcrypt"),
        "{err}"
    );
    // No htpasswd and no first user to create: refused.
    std::fs::remove_file(dir.path().join("auth/htpasswd")).unwrap();
    let (code, err) = edge_exit(dir.path(), &[("REGISTRY_EDGE_AUTH_FIRST_USER", "")], &[]);
    assert_eq!(code, 70);
    assert!(err.contains("htpasswd"), "{err}");
    // A certificate whose key is another's.
    let (code, err) = edge_exit(dir.path(), &[("REGISTRY_EDGE_TLS_KEY", "nope.key")], &[]);
    assert_eq!(code, 70, "{err}");
    assert!(err.contains("nope.key"), "{err}");
}

/// A deterministic incompressible stream of `total` bytes in 1 MiB chunks, and its digest.
fn big_body(
    total: u64,
    seed: u8,
) -> (
    impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>>,
    String,
) {
    use sha2::Digest as _;
    let block = {
        let mut b = random_bytes(1 << 20);
        b[0] = seed;
        b
    };
    let chunk = move |i: u64| {
        let mut c = block.clone();
        c[1..9].copy_from_slice(&i.to_le_bytes());
        c[9] = seed;
        let n = ((total - i * (1 << 20)).min(1 << 20)) as usize;
        c.truncate(n);
        bytes::Bytes::from(c)
    };
    let chunks = total.div_ceil(1 << 20);
    let mut h = sha2::Sha256::new();
    for i in 0..chunks {
        h.update(chunk(i));
    }
    let digest = format!("sha256:{}", hex::encode(h.finalize()));
    let stream = futures_util::stream::iter((0..chunks).map(move |i| Ok(chunk(i))));
    (stream, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_bodies_stream_both_ways_over_h1_and_h2() {
    use futures_util::StreamExt;
    let edge = Edge::start();
    let auth = basic(&edge.user, &edge.password);
    const GIB: u64 = 1 << 30;
    let mut seed = 0;
    for h2 in [false, true] {
        let c = edge.client(h2);
        for with_length in [true, false] {
            seed += 1;
            let (stream, digest) = big_body(GIB, seed);
            let mut req = c
                .post(format!(
                    "{}/v2/big/blobs/uploads/?digest={digest}",
                    edge.url()
                ))
                .header("authorization", &auth)
                .body(reqwest::Body::wrap_stream(stream));
            if with_length {
                req = req.header("content-length", GIB.to_string());
            }
            let r = req.send().await.unwrap();
            assert_eq!(
                r.status(),
                201,
                "h2={h2} length={with_length}: {:?}",
                r.text().await
            );
            // Download and hash it as it arrives.
            let r = c
                .get(format!("{}/v2/big/blobs/{digest}", edge.url()))
                .header("authorization", &auth)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.content_length(), Some(GIB));
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            let mut n = 0u64;
            let mut s = r.bytes_stream();
            while let Some(c) = s.next().await {
                let c = c.unwrap();
                n += c.len() as u64;
                sha2::Digest::update(&mut h, &c);
            }
            assert_eq!(n, GIB);
            assert_eq!(
                format!("sha256:{}", hex::encode(sha2::Digest::finalize(h))),
                digest
            );
        }
    }
    // Nothing was buffered whole: 4 GiB up and down left the process small.
    let peak = edge.peak_rss_kib();
    eprintln!(
        "edge peak RSS after 4 x 1 GiB up and down: {} MiB",
        peak / 1024
    );
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB suggests buffering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transfer_in_flight_finish() {
    use futures_util::StreamExt;
    let mut edge = Edge::start();
    let auth = basic(&edge.user, &edge.password);
    let c = edge.client(false);
    let (stream, digest) = big_body(64 << 20, 9);
    let r = c
        .post(format!(
            "{}/v2/drain/blobs/uploads/?digest={digest}",
            edge.url()
        ))
        .header("authorization", &auth)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(format!("{}/v2/drain/blobs/{digest}", edge.url()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    let mut n = s.next().await.unwrap().unwrap().len();
    // Terminate while the body is still being read, slowly.
    let pid = edge.pid();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    while let Some(c) = s.next().await {
        n += c.unwrap().len();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(n, 64 << 20);
    let status = tokio::task::spawn_blocking(move || edge.terminate(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.is_some(), "the edge did not exit after draining");
}

#[tokio::test]
async fn sigterm_on_an_idle_edge_exits_at_once_and_says_so() {
    let mut edge = Edge::start();
    // An idle keep-alive connection does not hold the exit up.
    let c = edge.client(false);
    let r = c
        .get(format!("{}/v2/", edge.url()))
        .header("authorization", basic(&edge.user, &edge.password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let start = Instant::now();
    let status = edge.terminate(Duration::from_secs(30));
    let took = start.elapsed();
    assert!(status.is_some(), "the edge did not exit");
    println!("SIGTERM to exit: {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // The log reader may still be catching up with the exited process.
    let edge_ref = &edge;
    common::eventually(5, "the drain's last log line", async || {
        edge_ref.log_text().contains("drained")
    })
    .await;
    let log = edge.log_text();
    assert!(
        log.contains("draining") && log.contains("in_flight=0"),
        "{log}"
    );
    assert!(log.contains("drained: no request in flight"), "{log}");
}
