//! Real clients against the `registry-core` binary: skopeo, podman, oras (Python), Debian's
//! `docker-registry` (Distribution 2.8) on the same storage both ways, and kill -9 during a large
//! upload. Each test skips (saying so) when its tool is missing, unless
//! `REGISTRY_TESTS_REQUIRE_TOOLS=1`, as the README's test command sets.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    assert_same_blobs, have, make_oci_layout, random_bytes, run, sample, sha256, BinServer,
    Distribution,
};

fn skopeo(args: &[&str]) -> String {
    run(Command::new("skopeo").args(args))
}

fn push_layout(layout: &Path, tag: &str, dest: &str) {
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{dest}"),
    ]);
}

fn pull_layout(src: &str, layout: &Path, tag: &str) {
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{src}"),
        &format!("oci:{}:{tag}", layout.display()),
    ]);
}

#[test]
fn skopeo_push_pull_inspect_list_delete() {
    if !have("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = BinServer::spawn(&dir.path().join("data"), &[]);
    let img = dir.path().join("img");
    make_oci_layout(&img, "v1", &[3 << 20, 1 << 20, 1000]);
    let dest = format!("{}/skopeo/app:v1", s.addr);
    push_layout(&img, "v1", &dest);
    let out = dir.path().join("out");
    pull_layout(&dest, &out, "v1");
    assert_same_blobs(&img, &out);
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{dest}"),
    ]))
    .unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 3);
    push_layout(&img, "v1", &format!("{}/skopeo/app:v2", s.addr));
    let tags: serde_json::Value = serde_json::from_str(&skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/skopeo/app", s.addr),
    ]))
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1", "v2"]));
    skopeo(&["delete", "--tls-verify=false", &format!("docker://{dest}")]);
    let gone = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", &format!("docker://{dest}")])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "inspect after delete should fail");
}

#[test]
fn podman_push_and_pull() {
    if !have("podman") || !have("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = BinServer::spawn(&dir.path().join("data"), &[]);
    let img = dir.path().join("img");
    make_oci_layout(&img, "v1", &[2 << 20]);
    push_layout(&img, "v1", &format!("{}/pm/base:v1", s.addr));
    let podman = |args: &[&str]| {
        let root = dir.path().join("podman");
        run(Command::new("podman")
            .arg("--root")
            .arg(root.join("root"))
            .arg("--runroot")
            .arg(root.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .args(args))
    };
    podman(&[
        "pull",
        "-q",
        "--tls-verify=false",
        &format!("{}/pm/base:v1", s.addr),
    ]);
    podman(&[
        "tag",
        &format!("{}/pm/base:v1", s.addr),
        &format!("{}/pm/pushed:v2", s.addr),
    ]);
    podman(&[
        "push",
        "-q",
        "--tls-verify=false",
        &format!("{}/pm/pushed:v2", s.addr),
    ]);
    // What podman pushed comes back with the same layer content.
    let out = dir.path().join("out");
    pull_layout(&format!("{}/pm/pushed:v2", s.addr), &out, "v2");
    let cfg: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--config",
        "--tls-verify=false",
        &format!("docker://{}/pm/pushed:v2", s.addr),
    ]))
    .unwrap();
    let orig: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--config",
        "--tls-verify=false",
        &format!("docker://{}/pm/base:v1", s.addr),
    ]))
    .unwrap();
    assert_eq!(cfg["rootfs"], orig["rootfs"], "same layer diff ids");
}

#[test]
fn oras_artifact_with_subject_and_referrers() {
    if !have("skopeo") || !have("python3") {
        return;
    }
    let has_oras = Command::new("python3")
        .args(["-c", "import oras"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_oras {
        if std::env::var("REGISTRY_TESTS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("the oras Python package is required by this test but not installed");
        }
        eprintln!("SKIPPED: the oras Python package is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = BinServer::spawn(&dir.path().join("data"), &[]);
    let img = dir.path().join("img");
    make_oci_layout(&img, "v1", &[1000]);
    push_layout(&img, "v1", &format!("{}/oras/app:v1", s.addr));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/oras_referrers.py");
    let out = run(Command::new("python3")
        .arg(script)
        .args([&s.addr, "oras/app", "v1"]));
    assert!(out.contains("oras: pushed"), "{out}");
}

#[test]
fn distribution_2_8_layout_both_ways() {
    if common::fs_only("Distribution on a directory; tests/s3.rs has it on a bucket")
        || !have("skopeo")
        || !have("docker-registry")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    let img = dir.path().join("img");
    make_oci_layout(&img, "v1", &[2 << 20, 5000]);
    // Distribution writes, registry-core reads.
    {
        let d = Distribution::start(&root, dir.path());
        push_layout(&img, "v1", &format!("{}/by/distribution:v1", d.addr));
    }
    let core = BinServer::spawn(&root, &[]);
    let out = dir.path().join("out1");
    pull_layout(&format!("{}/by/distribution:v1", core.addr), &out, "v1");
    assert_same_blobs(&img, &out);
    // registry-core writes, Distribution reads.
    push_layout(&img, "v1", &format!("{}/by/core:v1", core.addr));
    drop(core);
    let d = Distribution::start(&root, dir.path());
    let out = dir.path().join("out2");
    pull_layout(&format!("{}/by/core:v1", d.addr), &out, "v1");
    assert_same_blobs(&img, &out);
    let tags = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/by/core", d.addr),
    ]);
    assert!(tags.contains("v1"), "{tags}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_large_upload_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // 300 MiB on S3 (parts, multipart state and all), 96 MiB on a directory.
    let total: usize = if common::s3_mode() {
        300 << 20
    } else {
        96 << 20
    };
    let data = random_bytes(total);
    let d = sha256(&data);
    let mut s = BinServer::spawn(&root, &[]);
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/v2/big/blobs/uploads/", s.url()))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    // An acknowledged first chunk.
    let first = 32 << 20;
    let r = c
        .patch(format!("{}{loc}", s.url()))
        .header("content-range", format!("0-{}", first - 1))
        .body(data[..first].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // A second chunk streams in; the registry is killed in the middle of it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let url = format!("{}{loc}", s.url());
    let c2 = c.clone();
    let pending = tokio::spawn(async move {
        c2.patch(url)
            .body(reqwest::Body::wrap_stream(tokio_stream(rx)))
            .send()
            .await
    });
    for chunk in data[first..first + (16 << 20)].chunks(1 << 20) {
        tx.send(Ok(bytes::Bytes::copy_from_slice(chunk)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.kill();
    drop(tx);
    // The interrupted request fails or not depending on timing; what matters is what follows.
    let _ = pending.await;
    // Nothing partial is visible, and the acknowledged bytes survived.
    let s = BinServer::spawn(&root, &[]);
    let r = c
        .head(format!("{}/v2/big/blobs/{d}", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(format!("{}{loc}", s.url())).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let range = r.headers()["range"].to_str().unwrap().to_owned();
    let offset: usize = range.trim_start_matches("0-").parse::<usize>().unwrap() + 1;
    assert!(
        offset >= first && offset <= first + (16 << 20),
        "offset {offset}"
    );
    // The client continues from where the registry says it is.
    let r = c
        .put(format!("{}{loc}?digest={d}", s.url()))
        .header("content-range", format!("{offset}-{}", total - 1))
        .body(data[offset..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let got = c
        .get(format!("{}/v2/big/blobs/{d}", s.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), d);
}

fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn metrics_on_their_own_listener() {
    let dir = tempfile::tempdir().unwrap();
    let s = BinServer::spawn(
        &dir.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let metrics_url = format!(
        "http://{}/metrics",
        s.metrics_addr.as_deref().expect("metrics address logged")
    );
    let c = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(
            c.get(format!("{}/v2/", s.url()))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let data = random_bytes(4096);
    let d = sha256(&data);
    let r = c
        .post(format!("{}/v2/m/blobs/uploads/?digest={d}", s.url()))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(format!("{}/v2/m/blobs/{}", s.url(), sha256(b"none")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let text = c
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(
            &text,
            r#"regcore_http_requests_total{code="200",method="GET",route="ping"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"regcore_http_requests_total{code="201",method="POST",route="blob_upload"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"regcore_http_requests_total{code="404",method="GET",route="blob"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"regcore_uploads_total{outcome="completed"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "regcore_received_bytes_total"), Some(4096.0));
    assert!(text.contains("regcore_http_request_duration_seconds_bucket"));
    assert!(text.contains("regcore_storage_errors_total 0"));
    // The metrics listener serves nothing else, and the API port serves no metrics.
    assert_eq!(
        c.get(format!("http://{}/v2/", s.metrics_addr.as_deref().unwrap()))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(format!("{}/metrics", s.url()))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// An upload Distribution 2.8 started is finished by registry-core on the same directory, from
/// the hash state Distribution saved (Go's form, which registry-core reads and writes): no byte
/// of it is read back.
#[tokio::test]
async fn an_upload_distribution_started_is_finished_here_from_its_hash_state() {
    if common::fs_only("Distribution's filesystem driver keeps upload data as one file") {
        return;
    }
    assert!(have("docker-registry"), "docker-registry is needed");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    let data = random_bytes(3 * 1024 * 1024 + 77);
    let (first, rest) = data.split_at(1024 * 1024 + 33);
    let c = reqwest::Client::new();
    let d = Distribution::start(&root, dir.path());
    let r = c
        .post(format!("http://{}/v2/handed/over/blobs/uploads/", d.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .patch(&location)
        .header("content-type", "application/octet-stream")
        .body(first.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let uuid = r.headers()["docker-upload-uuid"]
        .to_str()
        .unwrap()
        .to_owned();
    let state = root.join(format!(
        "docker/registry/v2/repositories/handed/over/_uploads/{uuid}/hashstates/sha256/{}",
        first.len()
    ));
    assert!(state.exists(), "Distribution saved its hash state");
    drop(d);
    let core = BinServer::spawn(&root, &["--metrics-listen", "127.0.0.1:0"]);
    let upload = format!("{}/v2/handed/over/blobs/uploads/{uuid}", core.url());
    let r = c
        .patch(&upload)
        .header(
            "content-range",
            format!("{}-{}", first.len(), data.len() - 1),
        )
        .body(rest.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let digest = sha256(&data);
    let r = c
        .put(format!("{upload}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(format!("{}/v2/handed/over/blobs/{digest}", core.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), digest);
    let metrics = c
        .get(format!(
            "http://{}/metrics",
            core.metrics_addr.as_ref().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&metrics, "regcore_uploads_total{outcome=\"rehashed\"}"),
        None,
        "the digest came from the saved state:\n{metrics}"
    );
    assert_eq!(
        sample(&metrics, "regcore_uploads_total{outcome=\"completed\"}"),
        Some(1.0)
    );
}

/// Storage requests per operation, from `regcore_storage_requests_total` (each is a round trip
/// on an object store): a manifest HEAD by tag, a blob HEAD, and a whole skopeo push. The
/// bounds are today's counts, so a change that adds round trips shows here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_requests_per_operation() {
    assert!(have("skopeo"), "skopeo is needed");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let core = BinServer::spawn(&root, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics_url = format!("http://{}/metrics", core.metrics_addr.as_ref().unwrap());
    let total = async || -> (f64, String) {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let per_op: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("regcore_storage_requests_total{"))
            .map(str::to_owned)
            .collect();
        let n = per_op
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (n, per_op.join("\n"))
    };
    let img = dir.path().join("img");
    let layers = make_oci_layout(&img, "v1", &[1 << 20, 3000]);
    let before = total().await.0;
    let tool = tokio::task::spawn_blocking({
        let (img, addr) = (img.clone(), core.addr.clone());
        move || push_layout(&img, "v1", &format!("{addr}/counted/app:v1"))
    });
    tool.await.unwrap();
    let (after_push, ops) = total().await;
    let push = after_push - before;
    let c = reqwest::Client::new();
    let r = c
        .head(format!("{}/v2/counted/app/manifests/v1", core.url()))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let head_manifest = total().await.0 - after_push;
    let r = c
        .head(format!("{}/v2/counted/app/blobs/{}", core.url(), layers[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let head_blob = total().await.0 - after_push - head_manifest;
    eprintln!(
        "storage requests: manifest HEAD by tag {head_manifest}, blob HEAD {head_blob}, push of 2 layers + config + manifest {push}\n{ops}"
    );
    assert!((1.0..=3.0).contains(&head_manifest), "{head_manifest}");
    assert!((1.0..=2.0).contains(&head_blob), "{head_blob}");
    assert!((10.0..=60.0).contains(&push), "{push}\n{ops}");
}
