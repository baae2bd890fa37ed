//! Garbage collection from the edge: `registry-edge gc` on its own configured storage (a dry run
//! right after a delete shows what the grace period keeps; a run without it frees the space),
//! and the scheduled collection in the serving process with its log line and metrics. Images go
//! in and are deleted with skopeo.

mod common;

use std::path::Path;
use std::process::Command;

use common::{eventually, have, make_oci_layout, run, sample, Edge, EdgeOpts};

/// Pushes a one-layer image with skopeo and deletes it again; returns the layer's digest.
fn push_and_delete(edge: &Edge, repo: &str) -> String {
    assert!(have("skopeo"), "skopeo is needed");
    let img = edge.path(&format!("img-{}", repo.replace('/', "-")));
    let digests = make_oci_layout(&img, "v1", &[3 << 20]);
    let creds = format!("{}:{}", edge.user, edge.password);
    let dest = format!("docker://{}/{repo}:v1", edge.addr);
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-cert-dir"])
        .arg(edge.cert_dir())
        .args(["--dest-creds", &creds])
        .arg(format!("oci:{}:v1", img.display()))
        .arg(&dest));
    run(Command::new("skopeo")
        .args(["delete", "--cert-dir"])
        .arg(edge.cert_dir())
        .args(["--creds", &creds, &dest]));
    let layer = digests.into_iter().next().unwrap();
    assert!(exists(&blob_file(edge, &layer)), "the layer is stored");
    layer
}

fn blob_file(edge: &Edge, digest: &str) -> std::path::PathBuf {
    let hex = &digest["sha256:".len()..];
    edge.path("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

fn exists(p: &Path) -> bool {
    p.exists()
}

#[test]
fn gc_command_frees_a_deleted_image_after_the_grace_period() {
    let edge = Edge::start();
    let layer = push_and_delete(&edge, "gc/one");
    // Right after the delete, a dry run says the grace period keeps it.
    let (code, out, err) = edge.cli(&["gc", "--dry-run"], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("would remove 0 manifests and 0 blobs"),
        "{out}"
    );
    assert!(out.contains("younger than the grace period (1h)"), "{out}");
    assert!(exists(&blob_file(&edge, &layer)));
    // Without the grace period (no push is in flight), it goes, and the space with it.
    let (code, out, err) = edge.cli(&["gc", "--grace", "0s"], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("removed blob {layer}")), "{out}");
    assert!(!exists(&blob_file(&edge, &layer)), "{out}");
    let bytes: u64 = out
        .lines()
        .find_map(|l| {
            l.split_once(" blobs (")?
                .1
                .strip_suffix(" bytes)")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{out}"));
    assert!(bytes >= 3 << 20, "{out}");
    // In front of another registry there is no storage here to collect.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("proxy.toml"),
        "[upstream]\nurls = [\"http://127.0.0.1:1\"]\n",
    )
    .unwrap();
    let (code, _, err) = common::cli_in(dir.path(), &["gc"], "");
    assert_ne!(code, 0);
    assert!(err.contains("registry-core gc"), "{err}");
    let (code, _, err) = edge.cli(&["gc", "--grace", "soon"], "");
    assert_ne!(code, 0);
    assert!(err.contains("--grace"), "{err}");
}

#[tokio::test]
async fn scheduled_gc_runs_in_the_serving_process() {
    let edge = Edge::start_with(EdgeOpts {
        config: Some("[storage]\ngc_interval = \"1s\"\ngc_grace = \"10s\"\n".into()),
        ..Default::default()
    });
    eventually(10, "the scheduler starts", async || {
        edge.log_text().contains("scheduled garbage collection on")
    })
    .await;
    let layer = push_and_delete(&edge, "gc/scheduled");
    let file = blob_file(&edge, &layer);
    eventually(
        30,
        "the scheduled collection removes the layer",
        async || !exists(&file),
    )
    .await;
    // The run is counted once it has finished deleting.
    let url = format!("http://{}/metrics", edge.metrics_addr);
    eventually(
        10,
        "the run is counted, with the bytes it freed",
        async || {
            let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
            sample(&text, "regcore_gc_runs_total{result=\"ok\"}").unwrap_or(0.0) >= 1.0
                && sample(&text, "regcore_gc_freed_bytes_total").unwrap_or(0.0) >= (3 << 20) as f64
                && sample(&text, "regcore_gc_last_duration_seconds").is_some()
        },
    )
    .await;
    eventually(5, "the run is logged", async || {
        edge.log_text()
            .contains("scheduled garbage collection done")
    })
    .await;
}
