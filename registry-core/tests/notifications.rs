//! Notifications from the `registry-core` binary configured by its own file: events of a push
//! stay queued in the store (the data directory, or the bucket in S3 mode) while the receiver is
//! down and across a stop, and reach it after the restart, with what the request said of itself.

mod common;

use std::process::Command;

use common::receiver::Receiver;
use common::{eventually, sha256, storage_for, stored_keys, BinServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_in_the_store_across_a_stop() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let config = dir.path().join("registry-core.toml");
    std::fs::write(
        &config,
        format!(
            "[notifications]\ninstance = \"core-1\"\n[[notifications.endpoints]]\nname = \"hook\"\n\
             url = \"http://127.0.0.1:{port}/core\"\nbackoff = \"200ms\"\n"
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let mut core = BinServer::spawn(&root, &["--config", cfg]);
    let c = reqwest::Client::new();
    let url = core.url();
    // As a proxy in front would say who the client is.
    let blob = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec();
    let d = sha256(&blob);
    let r = c
        .post(format!("{url}/v2/team/app/blobs/uploads/?digest={d}"))
        .header("x-forwarded-for", "10.1.2.3")
        .header("user-agent", "events-test/1")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": blob.len()},
        "layers": [],
    })
    .to_string();
    let r = c
        .put(format!("{url}/v2/team/app/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .header("x-forwarded-for", "10.1.2.3")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Stopped (SIGTERM) with the receiver down: both events are in the store.
    run_kill(&core);
    let _ = core.child.wait();
    let storage = storage_for(&root);
    let queued = stored_keys(&*storage, "notifications/hook/core-1").await;
    assert!(!queued.is_empty(), "nothing queued in the store");

    let receiver = Receiver::start_on(port, true);
    let core = BinServer::spawn(&root, &["--config", cfg]);
    eventually(30, "the events to arrive", async || {
        receiver.events("/core").len() >= 2
    })
    .await;
    let events = receiver.events("/core");
    let blob_push = &events[0];
    assert_eq!(blob_push["action"], "push");
    assert_eq!(blob_push["target"]["digest"], d.as_str());
    assert_eq!(blob_push["target"]["mediaType"], "application/octet-stream");
    assert_eq!(blob_push["request"]["addr"], "10.1.2.3");
    assert_eq!(blob_push["request"]["useragent"], "events-test/1");
    assert_eq!(blob_push["actor"], serde_json::json!({}));
    let source = blob_push["source"]["addr"].as_str().unwrap();
    assert!(!source.ends_with(":0"), "{source}");
    let m = &events[1];
    assert_eq!(
        (m["action"].as_str(), m["target"]["tag"].as_str()),
        (Some("push"), Some("v1"))
    );
    assert_eq!(m["target"]["length"], manifest.len());
    // Built from the Host the client addressed (the first process).
    assert_eq!(
        m["target"]["url"],
        format!(
            "{url}/v2/team/app/manifests/{}",
            sha256(manifest.as_bytes())
        )
    );
    eventually(30, "the queue to be emptied", async || {
        stored_keys(&*storage, "notifications/hook/core-1")
            .await
            .is_empty()
    })
    .await;
    drop(core);
}

fn run_kill(core: &BinServer) {
    let ok = Command::new("kill")
        .args(["-TERM", &core.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}
