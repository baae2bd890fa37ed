//! Many processes on one bucket: three registry-core replicas on one SeaweedFS bucket behind one
//! edge that round-robins every request (so the requests of one upload land on different
//! replicas), one replica killed with SIGKILL in the middle of a loop of pushes and started
//! again; and two edges with embedded cores on one bucket of a real SeaweedFS cluster (one
//! master, two volume servers, replication 001), an image pushed through one pulled through the
//! other, a UI session made on one accepted by the other.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::browserless::Browserless;
use common::core::{sample, BinServer, Seaweed};
use common::{assert_same_blobs, have, make_oci_layout, reserve_port, Edge, EdgeOpts};

const SECRET: &str = "a-shared-secret-of-the-test-edges";

/// The two tests here each run a SeaweedFS store, an edge and registry processes; on a 2-core
/// machine, run side by side, they starve each other (a cluster that does not come up within its
/// minute, a kill landing at another moment than meant). One at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn core_bin() -> PathBuf {
    let b = Path::new(env!("CARGO_BIN_EXE_registry-edge")).with_file_name("registry-core");
    assert!(
        b.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        b.display()
    );
    b
}

/// A registry-core replica on `port`, storing under `root` of the store's bucket.
fn replica(store: &Seaweed, root: &str, port: u16) -> BinServer {
    let mut cmd = Command::new(core_bin());
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", "127.0.0.1:0"]);
    for (k, v) in store.registry_env(root) {
        cmd.env(k, v);
    }
    BinServer::spawn_cmd(cmd)
}

fn metrics_of(addr: &str) -> String {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Requests a replica answered on the upload routes.
fn upload_requests(r: &BinServer) -> f64 {
    let text = metrics_of(r.metrics_addr.as_ref().unwrap());
    text.lines()
        .filter(|l| l.starts_with("regcore_http_requests_total{") && l.contains("blob_upload"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn edge_gauge(edge: &Edge, series: &str) -> f64 {
    sample(&metrics_of(&edge.metrics_addr), series).unwrap_or(-1.0)
}

/// skopeo copy with its own retries (as CI pipelines run it); the exit status and stderr.
fn skopeo_copy(edge: &Edge, from: &str, to: &str) -> (bool, String) {
    let certs = edge.cert_dir();
    let creds = format!("{}:{}", edge.user, edge.password);
    let out = Command::new("skopeo")
        .args(["copy", "-q", "--retry-times", "3", "--src-cert-dir"])
        .arg(&certs)
        .arg("--dest-cert-dir")
        .arg(&certs)
        .args(["--src-creds", &creds, "--dest-creds", &creds, from, to])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Pulls `reference` through `edge` into layout `out` and checks it against layout `original`.
fn pull_same(edge: &Edge, reference: &str, original: &Path, out: &Path) {
    let (ok, err) = skopeo_copy(
        edge,
        &format!("docker://{}/{reference}", edge.addr),
        &format!("oci:{}:v1", out.display()),
    );
    assert!(ok, "{err}");
    assert_same_blobs(original, out);
}

#[test]
fn three_replicas_on_one_bucket_behind_one_edge_survive_a_kill() {
    if !have("weed") || !have("skopeo") {
        return;
    }
    let _alone = one_at_a_time();
    let store = Seaweed::start();
    let ports: Vec<u16> = (0..3).map(|_| reserve_port()).collect();
    let mut replicas: Vec<BinServer> = ports.iter().map(|p| replica(&store, "three", *p)).collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}\""))
        .collect();
    let interval = Duration::from_secs(1);
    let edge = Edge::start_with(
        EdgeOpts::default()
            .env(
                "REGISTRY_EDGE_UPSTREAM_URLS",
                &format!("[{}]", urls.join(",")),
            )
            .env("REGISTRY_EDGE_UPSTREAM_UPLOAD_AFFINITY", "false")
            .env("REGISTRY_EDGE_UPSTREAM_HEALTH_INTERVAL", "1s")
            .env("REGISTRY_HTTP_SECRET", SECRET),
    );
    let work = tempfile::tempdir().unwrap();

    // Every request in turn: one upload's POST, PATCHes and PUT go to different replicas.
    let img = work.path().join("img");
    make_oci_layout(&img, "v1", &[3 << 20, 1 << 20, 100_000]);
    let (ok, err) = skopeo_copy(
        &edge,
        &format!("oci:{}:v1", img.display()),
        &format!("docker://{}/scale/app:v1", edge.addr),
    );
    assert!(ok, "{err}");
    for r in &replicas {
        assert!(
            upload_requests(r) > 0.0,
            "a replica served no upload request"
        );
    }
    pull_same(&edge, "scale/app:v1", &img, &work.path().join("out"));
    assert_eq!(edge_gauge(&edge, "regedge_upstreams_healthy"), 3.0);

    // Ten pushes; replica 1 is killed in the middle of the fourth and started again after the
    // seventh.
    let mut failures = Vec::new();
    let mut out_after = None;
    let mut back_after = None;
    for i in 0..10 {
        let img = work.path().join(format!("img{i}"));
        make_oci_layout(&img, "v1", &[4 << 20, 200_000]);
        let to = format!("docker://{}/scale/loop:{i}", edge.addr);
        let from = format!("oci:{}:v1", img.display());
        let killer = (i == 3).then(|| {
            let pid = replicas[1].child.id();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                Instant::now()
            })
        });
        let (ok, err) = skopeo_copy(&edge, &from, &to);
        if !ok {
            // An upload request whose body was streaming to the replica when it was killed
            // cannot be replayed (the edge buffers no bodies) and is answered 502; skopeo does
            // not retry a 5xx, so the push fails once, and running it again must succeed.
            // Anything else is a failure of the failover.
            let cut_by_the_kill = i == 3 && err.contains("uploading layer") && err.contains("502");
            if cut_by_the_kill && skopeo_copy(&edge, &from, &to).0 {
                eprintln!("push {i}: an upload in flight on the killed replica failed; pushed again: {err}");
            } else {
                failures.push(format!("push {i}: {err}"));
            }
        }
        if let Some(k) = killer {
            let killed_at = k.join().unwrap();
            let _ = replicas[1].child.wait();
            let deadline = Instant::now() + Duration::from_secs(20);
            while edge_gauge(&edge, "regedge_upstreams_healthy") != 2.0 {
                assert!(Instant::now() < deadline, "the dead replica stayed in");
                std::thread::sleep(Duration::from_millis(50));
            }
            out_after = Some(killed_at.elapsed());
        }
        if i == 6 {
            replicas[1] = replica(&store, "three", ports[1]);
            let started = Instant::now();
            let deadline = started + Duration::from_secs(20);
            while edge_gauge(&edge, "regedge_upstreams_healthy") != 3.0 {
                assert!(Instant::now() < deadline, "the replica did not come back");
                std::thread::sleep(Duration::from_millis(50));
            }
            back_after = Some(started.elapsed());
        }
    }
    eprintln!(
        "health interval {interval:?}: the killed replica was out of the pool {:?} after the kill, back {:?} after its restart; client errors not absorbed by skopeo's retries: {}",
        out_after.unwrap(),
        back_after.unwrap(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        out_after.unwrap() <= interval * 2 + Duration::from_millis(500),
        "out after {:?}",
        out_after
    );
    assert!(edge.log_text().contains("upstream failed its health check"));
    assert!(edge.log_text().contains("upstream healthy again"));
    // Every pushed image reads back whole, whichever replica answers.
    for i in 0..10 {
        let out = work.path().join(format!("out{i}"));
        pull_same(
            &edge,
            &format!("scale/loop:{i}"),
            &work.path().join(format!("img{i}")),
            &out,
        );
    }
    // Readiness: the edge's /healthz, and a replica's (its store answers).
    let health = |addr: &str| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{addr}/healthz"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap()
    };
    assert_eq!(health(&edge.metrics_addr), "200");
    assert_eq!(health(replicas[0].metrics_addr.as_ref().unwrap()), "200");
}

#[tokio::test(flavor = "multi_thread")]
// The lock only orders this binary's two tests; nothing awaits it.
#[allow(clippy::await_holding_lock)]
async fn two_edges_on_one_bucket_of_a_seaweedfs_cluster() {
    if !have("weed") || !have("skopeo") {
        return;
    }
    let _alone = one_at_a_time();
    let store = Seaweed::start_cluster();
    let opts = || {
        let mut o = EdgeOpts::default().env("REGISTRY_HTTP_SECRET", SECRET);
        for (k, v) in store.registry_env("two-edges") {
            o = o.env(&k, &v);
        }
        o
    };
    let a = Edge::start_with(opts());
    // The second edge shares the first's users (one htpasswd file, as a shared volume would).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("auth")).unwrap();
    std::fs::copy(a.path("auth/htpasswd"), dir.path().join("auth/htpasswd")).unwrap();
    std::fs::copy(
        a.path(".test-credentials"),
        dir.path().join(".test-credentials"),
    )
    .unwrap();
    let b = Edge::spawn_in(dir, opts());

    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("img");
    make_oci_layout(&img, "v1", &[3 << 20, 50_000]);
    let (ok, err) = skopeo_copy(
        &a,
        &format!("oci:{}:v1", img.display()),
        &format!("docker://{}/shared/app:v1", a.addr),
    );
    assert!(ok, "{err}");
    // At once through the other edge: nothing is cached in the first.
    pull_same(&b, "shared/app:v1", &img, &work.path().join("out"));
    // The volumes holding it are replicated on both volume servers (placement 001).
    let volumes = store.volumes();
    let servers = volumes
        .pointer("/Volumes/DataCenters/dc1/r1")
        .and_then(|r| r.as_object())
        .cloned()
        .unwrap_or_default();
    assert_eq!(servers.len(), 2, "{volumes}");
    for (server, vols) in &servers {
        let vols = vols.as_array().unwrap();
        assert!(!vols.is_empty(), "{server} holds no volume: {volumes}");
        // Placement 001: one more copy on another server of the same rack.
        assert!(
            vols.iter().all(|v| v["ReplicaPlacement"]["node"] == 1),
            "{volumes}"
        );
    }

    // A UI session made on one edge is accepted by the other.
    let mut on_a = Browserless::new(&a);
    on_a.login(&a.user, &a.password).await;
    let cookie = on_a.cookie("__Host-regedge").unwrap();
    let mut on_b = Browserless::new(&b);
    on_b.set_cookie("__Host-regedge", &cookie);
    let (status, _, page) = on_b.get("/r/shared/app").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!("Signed in as {}", a.user)), "{page}");
    assert!(page.contains("href=\"/r/shared/app:v1\""), "{page}");
}
