//! Test support: registries in-process and as a child process, each on 127.0.0.1:0 with its own
//! temporary root, stopped on drop; Debian's Distribution 2.8; OCI image layouts made on the fly;
//! tool lookup. The edge's tests include this file too.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use registry_core::{storage::FsStorage, Listener, Options, Registry};
use sha2::{Digest as _, Sha256};

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// The value of one series in a Prometheus text exposition (`name{labels}`), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// The OCI error code of an error answer (`errors[0].code`).
pub async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A registry served in-process until dropped.
pub struct Server {
    pub url: String,
    pub root: PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut s = Self::start_on(&root, Options::default()).await;
        s._dir = Some(dir);
        s
    }

    pub async fn start_with(options: Options) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self::start_on(dir.path(), options).await;
        s._dir = Some(dir);
        s
    }

    /// Serves an existing root (which the caller keeps).
    pub async fn start_on(root: &Path, options: Options) -> Server {
        let storage = FsStorage::open(root).unwrap();
        let registry = Arc::new(Registry::new(Arc::new(storage), options));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            registry_core::serve(Listener::Tcp(l), registry, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            url,
            root: root.to_path_buf(),
            _dir: None,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops serving and waits until the listener is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The `registry-core` binary running as a child process until dropped (SIGKILL on drop).
pub struct BinServer {
    pub child: Child,
    /// `127.0.0.1:port`
    pub addr: String,
    /// The metrics listener's address, when `--metrics-listen` was given.
    pub metrics_addr: Option<String>,
}

impl BinServer {
    /// Starts the binary on `root` with extra args; waits for its "listening" log line.
    pub fn spawn(root: &Path, extra: &[&str]) -> BinServer {
        // This file is shared with the edge's tests, where this binary is not built (nor used).
        #[allow(clippy::option_env_unwrap)]
        let bin = option_env!("CARGO_BIN_EXE_registry-core")
            .expect("the registry-core binary is built for registry-core's own tests");
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--root"])
            .arg(root)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start registry-core");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let addr_of = |line: &str| {
                line.split("addr=")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .map(str::to_owned)
            };
            let mut metrics = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("metrics listening") {
                    metrics = addr_of(&line);
                } else if line.contains("registry-core listening") {
                    let _ = tx.send((addr_of(&line).unwrap_or_default(), metrics.take()));
                }
            }
        });
        let (addr, metrics_addr) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("registry-core did not report its address");
        BinServer {
            child,
            addr,
            metrics_addr,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether an external tool is installed. When `REGISTRY_TESTS_REQUIRE_TOOLS=1` (as the test
/// command sets), a missing tool fails the test instead of skipping it.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("REGISTRY_TESTS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{tool} is required by this test but not installed");
        }
        eprintln!("SKIPPED: {tool} is not installed");
    }
    found
}

/// Runs a command, panicking with its output when it fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tar archive holding one file per entry of `files`.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes an OCI image layout at `dir` with tag `tag`: one gzip tar layer per entry of
/// `layer_sizes`, each holding a file of that many random bytes. Returns the layer digests.
/// (Gzip, because clients compress uncompressed layers on push, which would change digests.)
pub fn make_oci_layout(dir: &Path, tag: &str, layer_sizes: &[usize]) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> String {
        let d = sha256(data);
        std::fs::write(blobs.join(&d[7..]), data).unwrap();
        d
    };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, n) in layer_sizes.iter().enumerate() {
        let t = tar_of(&[(&format!("file{i}.bin"), &random_bytes(*n))]);
        diff_ids.push(sha256(&t));
        let gz = gzip(&t);
        let d = put(&gz);
        layers.push((d, gz.len()));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_d = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
        "layers": layers.iter().map(|(d, n)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n
        })).collect::<Vec<_>>(),
    })
    .to_string();
    let manifest_d = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_d, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    layers.into_iter().map(|(d, _)| d).collect()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Asserts that every blob of layout `a` is in layout `b` with the same bytes.
pub fn assert_same_blobs(a: &Path, b: &Path) {
    let mut n = 0;
    for e in std::fs::read_dir(a.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let theirs = std::fs::read(b.join("blobs/sha256").join(e.file_name()))
            .unwrap_or_else(|_| panic!("blob {:?} missing after the round trip", e.file_name()));
        assert_eq!(std::fs::read(e.path()).unwrap(), theirs);
        n += 1;
    }
    assert!(n > 0);
}

/// Debian's `docker-registry` (Distribution 2.8) serving `root` until dropped.
pub struct Distribution {
    pub child: std::process::Child,
    pub addr: String,
}

impl Distribution {
    pub fn start(root: &Path, dir: &Path) -> Distribution {
        // Distribution cannot bind port 0 and report it; reserve a port and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(root, dir, port)
    }

    pub fn start_on(root: &Path, dir: &Path, port: u16) -> Distribution {
        let addr = format!("127.0.0.1:{port}");
        let template = include_str!("../clients/registry-2.8-config.yml");
        let cfg = template
            .replace("@DATA_DIR@", &root.display().to_string())
            .replace("@REGISTRY_ADDR@", &addr)
            .replace("@RANDOM_SECRET@", &hex::encode(random_bytes(16)));
        let cfg_path = dir.join("registry-2.8.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Distribution { child, addr }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
