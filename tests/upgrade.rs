//! Zero-downtime binary upgrade: a second edge started with `run --upgrade` takes the listening
//! sockets over when the first gets SIGQUIT, while clients hammer the registry. No request
//! fails, a download in flight completes from the old process, and the old process exits once
//! its connections are done. A SIGQUIT with no new process waiting (no socket, or a stale one)
//! is refused, not obeyed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{random_bytes, sha256, Edge};

/// Starts `registry-edge run --upgrade` for `edge`'s directory and addresses; returns the child
/// and its log lines.
fn start_upgrade(edge: &Edge) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .args(["run", "--upgrade"])
        .current_dir(edge.dir.path())
        .env("REGISTRY_EDGE_SERVER_LISTEN", &edge.addr)
        .env("REGISTRY_EDGE_METRICS_LISTEN", &edge.metrics_addr)
        .env("REGISTRY_EDGE_SERVER_DRAIN_TIMEOUT", "5s")
        .env("REGISTRY_EDGE_AUTH_BCRYPT_COST", "5")
        // The same auth mode as the edge it replaces (tests/run runs this in token mode too).
        .env(
            "REGISTRY_EDGE_AUTH_MODE",
            if common::token_mode() {
                "token"
            } else {
                "basic"
            },
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(line);
        }
    });
    (child, log)
}

async fn wait_for_line(log: &Mutex<Vec<String>>, needle: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !log.lock().unwrap().iter().any(|l| l.contains(needle)) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in:\n{}",
            log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_upgrade_under_load_loses_no_request() {
    use futures_util::StreamExt;
    let mut edge = Edge::start();
    let auth = common::authorization(&edge, &["repository:up/grade:pull,push"]).await;
    let c = edge.client(false);
    // A 64 MiB blob, downloaded slowly across the switch.
    let blob = random_bytes(64 << 20);
    let digest = sha256(&blob);
    let r = c
        .post(format!(
            "{}/v2/up/grade/blobs/uploads/?digest={digest}",
            edge.url()
        ))
        .header("authorization", &auth)
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // A SIGQUIT before any new process waits is refused: the edge keeps serving.
    common::run(Command::new("kill").args(["-QUIT", &edge.pid().to_string()]));
    common::eventually(5, "the refusal is logged", async || {
        edge.log_text().contains("SIGQUIT ignored")
    })
    .await;
    // So is one when the socket left behind by a new process that gave up waiting is stale.
    let stale = edge.path("upgrade.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    common::run(
        Command::new("touch")
            .args(["-d", "2 minutes ago"])
            .arg(&stale),
    );
    common::run(Command::new("kill").args(["-QUIT", &edge.pid().to_string()]));
    common::eventually(5, "the second refusal is logged", async || {
        edge.log_text().matches("SIGQUIT ignored").count() == 2
    })
    .await;
    std::fs::remove_file(&stale).unwrap();
    let r = c
        .get(format!("{}/v2/", edge.url()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Load: four clients, each request on a new connection, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let ca = reqwest::Certificate::from_pem(&edge.ca_pem()).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let (url, blob_url, auth) = (
            format!("{}/v2/", edge.url()),
            format!("{}/v2/up/grade/blobs/{digest}", edge.url()),
            auth.clone(),
        );
        load.push(tokio::spawn(async move {
            let started = Instant::now();
            for i in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(90) {
                    break;
                }
                let req = if i % 2 == 0 {
                    client.get(&url)
                } else {
                    client.head(&blob_url)
                };
                match req.header("authorization", &auth).send().await {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(format!("{e:?}"));
                    }
                }
            }
        }));
    }
    let download = {
        let r = c
            .get(format!("{}/v2/up/grade/blobs/{digest}", edge.url()))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::spawn(async move {
            let mut s = r.bytes_stream();
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            while let Some(chunk) = s.next().await {
                let chunk = chunk.unwrap();
                sha2::Digest::update(&mut h, &chunk);
                // Paced to about 3 s in all, whatever the chunk sizes: it spans the switch
                // and ends well within the old process's drain.
                tokio::time::sleep(Duration::from_micros(
                    chunk.len() as u64 * 3_000_000 / (64 << 20),
                ))
                .await;
            }
            format!("sha256:{}", hex::encode(sha2::Digest::finalize(h)))
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The upgrade: the new process waits for the sockets, the old one gets SIGQUIT.
    let old_pid = edge.pid();
    let (new, new_log) = start_upgrade(&edge);
    let new = Killed(new);
    wait_for_line(
        &new_log,
        "waiting for the running edge's listening sockets",
        30,
    )
    .await;
    common::eventually(10, "the upgrade socket exists", async || {
        edge.path("upgrade.sock").exists()
    })
    .await;
    common::run(Command::new("kill").args(["-QUIT", &old_pid.to_string()]));
    wait_for_line(&new_log, "registry-edge ready", 30).await;
    // The old process exits once its connections are done (the download among them).
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = edge.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the old edge did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !edge.log_text().contains("drained after the upgrade") {
        assert!(
            Instant::now() < deadline,
            "the old process did not say it drained:\n{}",
            edge.log_text()
                .lines()
                .rev()
                .filter(|l| !l.contains("pingora_core::server: "))
                .take(8)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before_stop = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        download.await.unwrap(),
        digest,
        "the download in flight completed"
    );
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{:?}", errors.lock().unwrap());
    assert!(ok > before_stop && before_stop > 50, "{ok} {before_stop}");
    // The new process serves, its metrics too once the old one released the port.
    let r = c
        .get(format!("{}/v2/", edge.url()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = format!("http://{}/metrics", edge.metrics_addr);
    common::eventually(10, "the new process serves metrics", async || {
        reqwest::get(&metrics)
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    drop(new);
}
