//! The S3 backend against a real S3 server (SeaweedFS): the storage contract, multipart writes
//! that move between processes, server-side copies past the copy threshold, cleanup of
//! multipart uploads, start-time checks, store outages, and Distribution 2.8 on the same bucket.
//! (The API and real-client suites also run whole on S3: `REGCORE_TEST_STORAGE=s3`.)

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{
    have, random_bytes, run, sha256, shared_seaweed, BinServer, Distribution, Seaweed, Server,
};
use futures_util::{StreamExt, TryStreamExt};
use registry_core::storage::{S3Settings, S3Storage, Storage};

const MIB: usize = 1 << 20;

fn unique_root(tag: &str) -> String {
    format!("s3test/{tag}-{}", uuid::Uuid::new_v4().simple())
}

fn storage(settings: S3Settings) -> Arc<S3Storage> {
    Arc::new(S3Storage::new(settings).unwrap())
}

/// The `registry-core` binary with `args`, in `dir`, on `sw`'s bucket under `root` as
/// registry:2's variables give it, plus `env`.
fn core_command(
    sw: &Seaweed,
    dir: &std::path::Path,
    root: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Command {
    let mut cmd = BinServer::command(&[&["--listen", "127.0.0.1:0"][..], args].concat());
    cmd.current_dir(dir);
    cmd.envs(sw.registry_env(root));
    cmd.envs(env.iter().copied());
    cmd
}

async fn read_all(s: &dyn Storage, key: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let parts: Vec<Bytes> = s
        .reader(key, range)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    parts.concat()
}

#[tokio::test]
async fn objects_listing_past_a_thousand_keys_and_prefix_deletes() {
    let sw = shared_seaweed();
    let s = storage(sw.settings(&unique_root("basics")));
    s.check().await.unwrap();
    s.put("a/b/c", Bytes::from_static(b"hello world"))
        .await
        .unwrap();
    assert_eq!(&s.get("a/b/c").await.unwrap()[..], b"hello world");
    assert_eq!(s.stat("a/b/c").await.unwrap().size, 11);
    assert_eq!(read_all(&*s, "a/b/c", Some(6..11)).await, b"world");
    assert_eq!(read_all(&*s, "a/b/c", Some(3..3)).await, b"");
    assert_eq!(s.list("a").await.unwrap(), ["b"]);
    assert!(s.get("a/none").await.unwrap_err().is_not_found());
    assert!(s.stat("a/none").await.unwrap_err().is_not_found());
    assert!(s.list("nothing").await.unwrap_err().is_not_found());
    for bad in ["../x", "a//b", ""] {
        assert!(s.get(bad).await.is_err(), "{bad}");
    }
    // 1,100 entries: the listing pages through S3's 1,000-key pages.
    futures_util::stream::iter(0..1100)
        .map(|i| {
            let s = s.clone();
            async move {
                s.put(&format!("many/{i:05}/link"), Bytes::from_static(b"x"))
                    .await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let names = s.list("many").await.unwrap();
    assert_eq!(names.len(), 1100);
    assert_eq!(names[0], "00000");
    s.delete("many").await.unwrap();
    assert!(s.list("many").await.unwrap_err().is_not_found());
    s.delete("many").await.unwrap();
    // Deleting an object deletes only it, not its siblings.
    s.put("a/b/d", Bytes::from_static(b"d")).await.unwrap();
    s.delete("a/b/c").await.unwrap();
    assert_eq!(s.list("a/b").await.unwrap(), ["d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_writes_continue_in_another_process_and_copy_part_by_part() {
    let sw = shared_seaweed();
    let root = unique_root("writer");
    let settings = S3Settings {
        part_size: 5 * MIB as u64,
        // Copies above 6 MiB go part by part, as 5 GiB+ layers do with the defaults.
        copy_threshold: 6 * MIB as u64,
        copy_part_size: 5 * MIB as u64,
        ..sw.settings(&root)
    };
    let a = storage(settings.clone());
    let data = random_bytes(13 * MIB + 777);
    // A fresh write exists before any byte (an upload just started).
    a.writer("up/data", false)
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    assert_eq!(a.stat_write("up/data").await.unwrap().size, 0);
    // Odd chunk sizes: parts are cut at the part size whatever the chunks.
    let mut w = a.writer("up/data", true).await.unwrap();
    let first = 7 * MIB + 5;
    for c in data[..first].chunks(300_001) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    assert_eq!(w.commit().await.unwrap(), first as u64);
    assert_eq!(a.stat_write("up/data").await.unwrap().size, first as u64);
    // Another process (another client) continues it.
    let b = storage(settings.clone());
    let mut w = b.writer("up/data", true).await.unwrap();
    assert_eq!(w.size(), first as u64);
    w.write(Bytes::copy_from_slice(&data[first..]))
        .await
        .unwrap();
    assert_eq!(w.commit().await.unwrap(), data.len() as u64);
    // Nothing is visible at the destination until the move.
    assert!(a.stat("blob/data").await.unwrap_err().is_not_found());
    a.rename("up/data", "blob/data").await.unwrap();
    assert_eq!(a.stat("blob/data").await.unwrap().size, data.len() as u64);
    assert_eq!(
        sha256(&read_all(&*a, "blob/data", None).await),
        sha256(&data)
    );
    let r = (5 * MIB - 3) as u64..(10 * MIB + 9) as u64;
    assert_eq!(
        read_all(&*a, "blob/data", Some(r.clone())).await,
        &data[r.start as usize..r.end as usize]
    );
    // The upload left nothing behind: no state object, no multipart upload.
    assert!(a.stat_write("up/data").await.unwrap_err().is_not_found());
    assert!(a.incomplete_uploads("").await.unwrap().is_empty());

    // A small write is one object at the destination.
    let mut w = a.writer("small/data", false).await.unwrap();
    w.write(Bytes::from_static(b"tiny")).await.unwrap();
    w.commit().await.unwrap();
    a.rename("small/data", "small-blob").await.unwrap();
    assert_eq!(&a.get("small-blob").await.unwrap()[..], b"tiny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_read_back_before_it_is_finished_can_still_grow() {
    let sw = shared_seaweed();
    let s = storage(S3Settings {
        part_size: 5 * MIB as u64,
        ..sw.settings(&unique_root("seal"))
    });
    let data = random_bytes(6 * MIB + 1);
    let mut w = s.writer("u/data", false).await.unwrap();
    w.write(Bytes::copy_from_slice(&data)).await.unwrap();
    w.commit().await.unwrap();
    // Reading it (the digest computed from the data when no hash state was saved) seals it.
    assert_eq!(read_all(&*s, "u/data", None).await, data);
    let mut w = s.writer("u/data", true).await.unwrap();
    assert_eq!(w.size(), data.len() as u64);
    w.write(Bytes::from_static(b"more")).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(
        s.stat_write("u/data").await.unwrap().size,
        data.len() as u64 + 4
    );
    s.rename("u/data", "done").await.unwrap();
    let mut expect = data.clone();
    expect.extend_from_slice(b"more");
    assert_eq!(read_all(&*s, "done", None).await, expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_and_purging_abort_multipart_uploads() {
    let sw = shared_seaweed();
    let s = storage(S3Settings {
        part_size: 5 * MIB as u64,
        ..sw.settings(&unique_root("abort"))
    });
    let part = Bytes::from(random_bytes(5 * MIB));
    for key in ["r/_uploads/1/data", "r/_uploads/2/data"] {
        let mut w = s.writer(key, false).await.unwrap();
        w.write(part.clone()).await.unwrap();
        w.commit().await.unwrap();
    }
    assert_eq!(s.incomplete_uploads("").await.unwrap().len(), 2);
    // Deleting an upload's directory aborts its multipart upload.
    s.delete("r/_uploads/1").await.unwrap();
    assert_eq!(s.incomplete_uploads("").await.unwrap().len(), 1);
    // One abandoned without its state (a crash before the first commit): the purge finds it by
    // listing the store's multipart uploads.
    s.delete("r/_uploads/2/data.s3upload").await.unwrap();
    let young = s.purge_incomplete("r", SystemTime::now() - Duration::from_secs(3600));
    assert_eq!(young.await.unwrap(), 0, "a young upload is left alone");
    let n = s
        .purge_incomplete("r", SystemTime::now() + Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(s.incomplete_uploads("").await.unwrap().is_empty());
}

#[tokio::test]
async fn start_checks_name_the_setting_and_an_empty_bucket_is_healthy() {
    let sw = shared_seaweed();
    // Empty (a prefix nothing was ever written under): healthy.
    storage(sw.settings(&unique_root("empty")))
        .check()
        .await
        .unwrap();
    let missing = S3Settings {
        bucket: "no-such-bucket-here".into(),
        ..sw.settings("")
    };
    let e = storage(missing).check().await.unwrap_err();
    assert_eq!(e.setting, "bucket", "{e}");
    let wrong = S3Settings {
        secret_key: Some(registry_core::storage::s3::Secret("wrong-secret".into())),
        ..sw.settings("")
    };
    let e = storage(wrong).check().await.unwrap_err();
    assert!(e.setting.contains("secret_key"), "{e}");
    assert!(!e.to_string().contains("wrong-secret"), "{e}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = S3Settings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        max_retries: 0,
        ..sw.settings("")
    };
    let e = storage(unreachable).check().await.unwrap_err();
    assert_eq!(e.setting, "endpoint", "{e}");
    // The binary stops with the same message, secrets never printed.
    let dir = tempfile::tempdir().unwrap();
    let out = core_command(
        sw,
        dir.path(),
        "x",
        &[],
        &[("REGISTRY_STORAGE_S3_BUCKET", "no-such-bucket-here")],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not exist") && err.contains("bucket"),
        "{err}"
    );
    assert!(!err.contains("test-secret-key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_503_and_the_registry_recovers() {
    let mut sw = tokio::task::spawn_blocking(Seaweed::start).await.unwrap();
    let storage = storage(sw.settings("outage"));
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_storage(dir.path(), storage, Default::default()).await;
    let c = reqwest::Client::new();
    let data = random_bytes(3 * MIB);
    let d = sha256(&data);
    let r = c
        .post(format!("{}/v2/app/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .patch(format!("{}{loc}", s.url))
        .body(data[..MIB].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let sw = tokio::task::spawn_blocking(move || {
        sw.stop();
        sw
    })
    .await
    .unwrap();
    // Every request the store is needed for: 503 with the registry's JSON error.
    for (method, url) in [
        (reqwest::Method::PATCH, format!("{}{loc}", s.url)),
        (reqwest::Method::HEAD, format!("{}/v2/app/blobs/{d}", s.url)),
        (reqwest::Method::GET, format!("{}/v2/app/tags/list", s.url)),
    ] {
        let r = c
            .request(method.clone(), &url)
            .body(data[MIB..2 * MIB].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{method} {url}");
        if method != reqwest::Method::HEAD {
            assert_eq!(common::error_code(r).await, "UNAVAILABLE");
        }
    }
    let mut sw = sw;
    let mut sw = tokio::task::spawn_blocking(move || {
        sw.restart();
        sw
    })
    .await
    .unwrap();
    // The upload continues from what was acknowledged; nothing partial became visible.
    let r = c.get(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], format!("0-{}", MIB - 1).as_str());
    let r = c
        .head(format!("{}/v2/app/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .put(format!("{}{loc}?digest={d}", s.url))
        .body(data[MIB..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let got = c
        .get(format!("{}/v2/app/blobs/{d}", s.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), d);
    sw.stop();
}

/// The metric's total for `prefix` series from a registry-core's metrics listener.
async fn metric_sum(url: &str, prefix: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_split_across_two_processes_is_not_re_read() {
    let sw = shared_seaweed();
    let dir = tempfile::tempdir().unwrap();
    let root = unique_root("split");
    let spawn = || {
        let args = ["--metrics-listen", "127.0.0.1:0"];
        let chunk = [("REGISTRY_STORAGE_S3_CHUNKSIZE", "5MiB")];
        BinServer::spawn_cmd(core_command(sw, dir.path(), &root, &args, &chunk))
    };
    let (p1, p2) = (spawn(), spawn());
    let data = random_bytes(23 * MIB + 11);
    let d = sha256(&data);
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/v2/split/blobs/uploads/", p1.url()))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let chunks: Vec<&[u8]> = data.chunks(3 * MIB + 17).collect();
    let mut offset = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let p = if i % 2 == 0 { &p1 } else { &p2 };
        let r = c
            .patch(format!("{}{loc}", p.url()))
            .header(
                "content-range",
                format!("{offset}-{}", offset + chunk.len() - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "chunk {i}: {:?}", r.text().await);
        offset += chunk.len();
    }
    let finisher = if chunks.len().is_multiple_of(2) {
        &p1
    } else {
        &p2
    };
    let r = c
        .put(format!("{}{loc}?digest={d}", finisher.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    for p in [&p1, &p2] {
        let m = format!("http://{}/metrics", p.metrics_addr.as_ref().unwrap());
        let rehashed = metric_sum(&m, "regcore_uploads_total{outcome=\"rehashed\"}").await;
        assert_eq!(rehashed, 0.0, "the finishing process read the upload back");
    }
    let got = c
        .get(format!("{}/v2/split/blobs/{d}", p2.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), d);
}

/// Distribution 2.8's s3 driver and registry-core on one bucket prefix: what either pushes, the
/// other serves byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_2_8_on_the_same_bucket_both_ways() {
    if !have("docker-registry") || !have("skopeo") {
        return;
    }
    let sw = shared_seaweed();
    let dir = tempfile::tempdir().unwrap();
    let root = unique_root("interop");
    let dist = Distribution::start_s3(&root, dir.path(), sw);
    let core = BinServer::spawn_cmd(core_command(sw, dir.path(), &root, &[], &[]));
    let skopeo = |args: &[&str]| {
        run(std::process::Command::new("skopeo")
            .args(["--insecure-policy"])
            .args(args))
    };
    for (from, to, repo) in [
        (&dist.addr, &core.addr, "by/dist"),
        (&core.addr, &dist.addr, "by/core"),
    ] {
        let img = dir.path().join(format!("img-{}", repo.replace('/', "-")));
        common::make_oci_layout(&img, "v1", &[2 * MIB, 40_000]);
        let src = format!("oci:{}:v1", img.display());
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{from}/{repo}:v1"),
        ]);
        let back = dir.path().join(format!("back-{}", repo.replace('/', "-")));
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{to}/{repo}:v1"),
            &format!("oci:{}:v1", back.display()),
        ]);
        common::assert_same_blobs(&img, &back);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_sends_blob_gets_to_a_pre_signed_url() {
    let sw = shared_seaweed();
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(S3Settings {
        redirect: true,
        ..sw.settings(&unique_root("redirect"))
    });
    let s = Server::start_with_storage(dir.path(), storage, Default::default()).await;
    let data = random_bytes(100_000);
    let d = sha256(&data);
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = c
        .post(format!("{}/v2/app/blobs/uploads/?digest={d}", s.url))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // HEAD answers here; GET points at the store.
    let r = c
        .head(format!("{}/v2/app/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/v2/app/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        to.starts_with(&sw.endpoint) && to.contains("X-Amz-Signature"),
        "{to}"
    );
    let got = reqwest::get(&to).await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256(&got), d);
    // A blob not in the repository is still 404 here, never a URL.
    let r = c
        .get(format!("{}/v2/other/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// 16 pushes at once, each several parts long: the registry's peak memory stays under one part
/// buffer per upload plus 64 MiB (Distribution holds pending parts and grows with the pushes).
/// The benchmark measures the same with 256 MiB blobs, beside Distribution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_pushes_stay_within_a_part_buffer_each() {
    let sw = shared_seaweed();
    let dir = tempfile::tempdir().unwrap();
    let root = unique_root("memory");
    let chunk = [("REGISTRY_STORAGE_S3_CHUNKSIZE", "5MiB")];
    let core = BinServer::spawn_cmd(core_command(sw, dir.path(), &root, &[], &chunk));
    let c = reqwest::Client::new();
    let pushes = (0..16).map(|i| {
        let (c, url) = (c.clone(), core.url());
        async move {
            // Distinct content, generated in 1 MiB pieces as it is sent.
            let seed = random_bytes(MIB);
            let total = 24;
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            let pieces: Vec<Bytes> = (0..total)
                .map(|j| {
                    let mut p = seed.clone();
                    p[0] = j as u8;
                    p[1] = i as u8;
                    sha2::Digest::update(&mut h, &p);
                    Bytes::from(p)
                })
                .collect();
            let d = format!("sha256:{}", hex::encode(sha2::Digest::finalize(h)));
            let r = c
                .post(format!("{url}/v2/mem/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            let loc = r.headers()["location"].to_str().unwrap().to_owned();
            let body = futures_util::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
            let r = c
                .put(format!("{url}{loc}?digest={d}"))
                .header("content-length", (total * MIB).to_string())
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "{:?}", r.text().await);
        }
    });
    futures_util::future::join_all(pushes).await;
    let peak_kib = common::peak_rss_kib(core.child.id());
    let bound_mib = 16 * 5 + 64;
    eprintln!(
        "peak RSS of registry-core over 16 concurrent 24 MiB pushes: {} MiB (bound {bound_mib})",
        peak_kib / 1024
    );
    assert!(
        peak_kib / 1024 < bound_mib,
        "peak RSS {} MiB",
        peak_kib / 1024
    );
}

/// The store's own count of S3 requests (SeaweedFS's metrics) for a whole skopeo push of a
/// two-layer image, a manifest HEAD by tag and a blob HEAD: registry-core beside Distribution 2.8
/// on the same store, each alone on it. registry-core's are bounded (today's counts, so a change
/// that adds round trips shows); Distribution's are printed beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_requests_per_operation_beside_distribution() {
    if !have("docker-registry") || !have("skopeo") {
        return;
    }
    let sw = tokio::task::spawn_blocking(Seaweed::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let layers = common::make_oci_layout(&img, "v1", &[12 * MIB, 3000]);
    let c = reqwest::Client::new();
    let mut rows = Vec::new();
    for who in ["registry-core", "Distribution 2.8"] {
        let root = unique_root(&who.replace([' ', '.'], "-"));
        let (_core, _dist, addr) = if who == "registry-core" {
            let core = BinServer::spawn_cmd(core_command(&sw, dir.path(), &root, &[], &[]));
            let addr = core.addr.clone();
            (Some(core), None, addr)
        } else {
            let d = Distribution::start_s3(&root, dir.path(), &sw);
            let addr = d.addr.clone();
            (None, Some(d), addr)
        };
        // Settle (a start-time listing or purge is not the push's).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let total = || sw.metric_sum("SeaweedFS_s3_request_total{");
        let before = total();
        let (img2, dest) = (img.clone(), format!("docker://{addr}/counted/app:v1"));
        tokio::task::spawn_blocking(move || {
            run(std::process::Command::new("skopeo").args([
                "copy",
                "-q",
                "--dest-tls-verify=false",
                &format!("oci:{}:v1", img2.display()),
                &dest,
            ]))
        })
        .await
        .unwrap();
        let push = total() - before;
        let before = total();
        let r = c
            .head(format!("http://{addr}/v2/counted/app/manifests/v1"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let head_manifest = total() - before;
        let before = total();
        let r = c
            .head(format!("http://{addr}/v2/counted/app/blobs/{}", layers[0]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let head_blob = total() - before;
        rows.push((who, head_manifest, head_blob, push));
    }
    for (who, m, b, p) in &rows {
        eprintln!("store requests, {who}: manifest HEAD by tag {m}, blob HEAD {b}, push of a 12 MiB + 3 KB image {p}");
    }
    let (_, m, b, p) = rows[0];
    assert!((1.0..=3.0).contains(&m), "{m}");
    assert!((1.0..=2.0).contains(&b), "{b}");
    assert!((20.0..=70.0).contains(&p), "{p}");
}

/// A store that answers every third request with 503 SlowDown (as S3 does under load): pushes
/// and pulls still succeed, the failed requests having been retried with backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_down_answers_are_retried() {
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sw = shared_seaweed();
    let upstream = sw.endpoint.trim_start_matches("http://").to_owned();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let (seen2, refused2) = (seen.clone(), refused.clone());
    tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<hyper::body::Incoming>();
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (client, upstream) = (client.clone(), upstream.clone());
            let (seen, refused) = (seen2.clone(), refused2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |mut req: http::Request<hyper::body::Incoming>| {
                        let (client, upstream) = (client.clone(), upstream.clone());
                        let (seen, refused) = (seen.clone(), refused.clone());
                        async move {
                            if seen.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
                                refused.fetch_add(1, Ordering::SeqCst);
                                let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                                return Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(503)
                                        .body(
                                            Full::new(Bytes::from(body))
                                                .map_err(|e| match e {})
                                                .boxed(),
                                        )
                                        .unwrap(),
                                );
                            }
                            // Forwarded as signed: the Host header stays the proxy's.
                            let pq = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            *req.uri_mut() = format!("http://{upstream}{pq}").parse().unwrap();
                            let resp = client.request(req).await.unwrap();
                            Ok(resp.map(|b| {
                                b.map_err(|e| -> std::convert::Infallible { panic!("{e}") })
                                    .boxed()
                            }))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(S3Settings {
        endpoint: Some(proxy),
        max_retries: 5,
        retry_timeout: Duration::from_secs(30),
        part_size: 5 * MIB as u64,
        ..sw.settings(&unique_root("slowdown"))
    });
    let s = Server::start_with_storage(dir.path(), storage, Default::default()).await;
    let c = reqwest::Client::new();
    let data = random_bytes(12 * MIB);
    let d = sha256(&data);
    let r = c
        .post(format!("{}/v2/app/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .put(format!("{}{loc}?digest={d}", s.url))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let got = c
        .get(format!("{}/v2/app/blobs/{d}", s.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), d);
    let (n, refused) = (seen.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
    eprintln!("{n} store requests, {refused} answered 503 SlowDown and retried");
    assert!(refused >= 3, "{refused} of {n}");
}
