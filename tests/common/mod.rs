//! Test support for the edge: the `registry-edge` binary in its own temporary directory (the
//! one-command start: generated certificate, generated first user, embedded registry-core), on a
//! reserved loopback port, stopped on drop; TLS clients that trust its generated CA.
#![allow(dead_code)]

#[path = "../../registry-core/tests/common/mod.rs"]
pub mod core;

pub mod browserless;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use core::{
    error_code, eventually, have, make_oci_layout, random_bytes, run, sample, sha256, Distribution,
};

/// A free loopback port. pingora binds by address, so the port is reserved here and handed over.
pub fn reserve_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The edge binary running until dropped.
pub struct Edge {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub metrics_addr: String,
    pub user: String,
    pub password: String,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Serving plain HTTP.
    pub plain: bool,
}

/// How to start an edge.
#[derive(Default)]
pub struct EdgeOpts {
    /// Extra `REGISTRY_EDGE_*` variables.
    pub env: Vec<(String, String)>,
    /// Contents of `proxy.toml` in the edge's directory.
    pub config: Option<String>,
    /// The loopback address to listen on (default 127.0.0.1).
    pub listen_ip: Option<String>,
    /// Plain HTTP (`[tls] enabled = false`).
    pub plain: bool,
    /// The port to listen on (default: one reserved here).
    pub port: Option<u16>,
}

impl EdgeOpts {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
}

impl Edge {
    pub fn start() -> Edge {
        Self::start_with(EdgeOpts::default())
    }

    pub fn start_with(opts: EdgeOpts) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        if let Some(c) = &opts.config {
            std::fs::write(dir.path().join("proxy.toml"), c).unwrap();
        }
        Self::spawn_in(dir, opts)
    }

    /// Starts (or restarts) an edge in `dir`, which keeps its certs, users and data.
    pub fn spawn_in(dir: tempfile::TempDir, opts: EdgeOpts) -> Edge {
        let port = opts.port.unwrap_or_else(reserve_port);
        let metrics_port = reserve_port();
        let ip = opts.listen_ip.as_deref().unwrap_or("127.0.0.1");
        let addr = format!("{ip}:{port}");
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_registry-edge"));
        cmd.current_dir(dir.path())
            .env("REGISTRY_EDGE_SERVER_LISTEN", &addr)
            .env("REGISTRY_EDGE_METRICS_LISTEN", &metrics_addr)
            .env("REGISTRY_EDGE_SERVER_DRAIN_TIMEOUT", "5s")
            .env("REGISTRY_EDGE_AUTH_BCRYPT_COST", "5")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if opts.plain {
            cmd.env("REGISTRY_EDGE_TLS_ENABLED", "false");
        }
        // `EDGE_TESTS_AUTH_MODE=token` runs a suite's edges in token mode (tests/run
        // runs the real-client suite both ways); a test that sets the mode itself keeps it.
        if let Ok(mode) = std::env::var("EDGE_TESTS_AUTH_MODE") {
            cmd.env("REGISTRY_EDGE_AUTH_MODE", mode);
        }
        // In S3 mode (`REGCORE_TEST_STORAGE=s3`) the embedded registry stores in SeaweedFS,
        // configured as a registry:2 compose file would (REGISTRY_STORAGE_S3_*).
        let upstream = opts
            .env
            .iter()
            .any(|(k, _)| k == "REGISTRY_EDGE_UPSTREAM_URLS");
        if core::s3_mode() && !upstream {
            for (k, v) in core::shared_seaweed().registry_env(&core::s3_root_for(dir.path())) {
                cmd.env(k, v);
            }
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start registry-edge");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let stderr = child.stderr.take().unwrap();
        let (log2, tx2) = (log.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("registry-edge ready") {
                    let _ = tx2.send(Ok(()));
                }
                log2.lock().unwrap().push(line);
            }
            let _ = tx2.send(Err("registry-edge exited before it was ready".into()));
        });
        let stdout = child.stdout.take().unwrap();
        let creds = Arc::new(Mutex::new((String::new(), String::new())));
        let creds2 = creds.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let l = line.trim();
                if let Some(u) = l.strip_prefix("username: ") {
                    creds2.lock().unwrap().0 = u.to_owned();
                }
                if let Some(p) = l.strip_prefix("password: ") {
                    creds2.lock().unwrap().1 = p.to_owned();
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => {}
            other => {
                let _ = child.kill();
                panic!(
                    "registry-edge did not start ({other:?}):\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry-edge does not accept on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The first-user lines are printed before readiness; a restart keeps the earlier ones.
        let (user, password) = {
            let c = creds.lock().unwrap().clone();
            if c.1.is_empty() {
                std::fs::read_to_string(dir.path().join(".test-credentials"))
                    .ok()
                    .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
                    .unwrap_or_default()
            } else {
                std::fs::write(
                    dir.path().join(".test-credentials"),
                    format!("{}:{}", c.0, c.1),
                )
                .unwrap();
                c
            }
        };
        Edge {
            child,
            dir,
            addr,
            metrics_addr,
            user,
            password,
            log,
            plain: opts.plain,
        }
    }

    /// Stops this edge and starts another in its directory (certificates, users and data kept).
    pub fn restart_with(mut self, opts: EdgeOpts) -> Edge {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::spawn_in(dir, opts)
    }

    /// The Prometheus text of the edge's `/metrics`.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn url(&self) -> String {
        let scheme = if self.plain { "http" } else { "https" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("certs/ca.crt")).unwrap()
    }

    /// A client that trusts the edge's CA; HTTP/1.1 only, or HTTP/2 (by ALPN).
    pub fn client(&self, http2: bool) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem()).unwrap();
        let b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .pool_max_idle_per_host(4);
        let b = if http2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        };
        b.build().unwrap()
    }

    /// A directory holding the CA as `ca.crt`, for `--cert-dir` of skopeo and podman.
    pub fn cert_dir(&self) -> PathBuf {
        let d = self.path("client-certs");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ca.crt"), self.ca_pem()).unwrap();
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the edge process so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        core::peak_rss_kib(self.pid())
    }

    /// Runs `registry-edge ARGS` in the edge's directory with `stdin`; returns (exit code,
    /// stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        cli_in(self.dir.path(), args, stdin)
    }

    /// A client like `client(false)` whose connections come from `source` (another loopback
    /// address), to play a different client host.
    pub fn client_from(&self, source: std::net::IpAddr) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem()).unwrap();
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .local_address(source)
            .http1_only()
            .build()
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits for the process to end (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `registry-edge ARGS` in `dir` with `stdin`; returns (exit code, stdout, stderr).
pub fn cli_in(dir: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails early may not read its input.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the Docker engine answers. Without it the Docker tests skip, saying so, unless
/// `REGISTRY_TESTS_REQUIRE_DOCKER=1`.
pub fn docker_engine() -> bool {
    let up = Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !up {
        if std::env::var("REGISTRY_TESTS_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("docker info does not answer");
        }
        eprintln!("SKIPPED: docker info does not answer, so the Docker engine test does not run");
    }
    up
}

/// The edge's CA where the Docker engine looks for it (`/etc/docker/certs.d/<host:port>/`),
/// removed on drop with the local images named. (dockerd treats 127.0.0.0/8 as an insecure
/// registry by default, so on loopback this proves TLS is spoken, not that it is verified; the
/// skopeo and podman tests verify it.)
pub struct DockerTrust {
    dir: PathBuf,
    images: Vec<String>,
}

impl DockerTrust {
    pub fn new(edge: &Edge, images: &[&str]) -> DockerTrust {
        let dir = Path::new("/etc/docker/certs.d").join(&edge.addr);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), edge.ca_pem()).unwrap();
        DockerTrust {
            dir,
            images: images.iter().map(|i| i.to_string()).collect(),
        }
    }
}

impl Drop for DockerTrust {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

/// Whether the edges of this run are in token mode (`EDGE_TESTS_AUTH_MODE=token`).
pub fn token_mode() -> bool {
    std::env::var("EDGE_TESTS_AUTH_MODE").as_deref() == Ok("token")
}

/// A token from the edge's `/token` for `scopes`, with Basic credentials or (`None`) none.
pub async fn fetch_token(
    edge: &Edge,
    creds: Option<(&str, &str)>,
    scopes: &[&str],
) -> serde_json::Value {
    let mut url = format!("{}/token?service=registry-edge", edge.url());
    for s in scopes {
        url.push_str("&scope=");
        url.push_str(&s.replace(' ', "%20"));
    }
    let mut req = edge.client(false).get(url);
    if let Some((u, p)) = creds {
        req = req.header("authorization", basic(u, p));
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "token: {:?}", r.text().await);
    r.json().await.unwrap()
}

/// The `Authorization` value that lets the edge's user do `scopes`: Basic credentials, or in
/// token mode a Bearer token fetched with them.
pub async fn authorization(edge: &Edge, scopes: &[&str]) -> String {
    if token_mode() {
        let t = fetch_token(edge, Some((&edge.user, &edge.password)), scopes).await;
        format!("Bearer {}", t["token"].as_str().unwrap())
    } else {
        basic(&edge.user, &edge.password)
    }
}

/// The `Basic` header value for a user and password.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

pub fn assert_same_blobs(a: &Path, b: &Path) {
    core::assert_same_blobs(a, b)
}

pub async fn add_user(edge: &Edge, user: &str, password: &str) {
    // Waiting for the reload rather than trying the password, so no failed login is counted
    // against the test's address before the file is read again.
    let reloads = async || {
        let text = reqwest::get(format!("http://{}/metrics", edge.metrics_addr))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        sample(
            &text,
            "regedge_reloads_total{file=\"htpasswd\",result=\"ok\"}",
        )
    };
    let before = reloads().await;
    let (code, _, err) = edge.cli(
        &["passwd", user, "--password-stdin", "--cost", "5"],
        &format!("{password}\n"),
    );
    assert_eq!(code, 0, "{err}");
    if let Some(before) = before {
        eventually(10, "the edge reloads htpasswd", async || {
            reloads().await.is_some_and(|n| n > before)
        })
        .await;
    }
    let c = edge.client(false);
    eventually(10, "the new password works", async || {
        // Basic mode lets the user in at /v2/; token mode hands them a token.
        for path in ["/v2/", "/token?service=registry-edge"] {
            let r = c
                .get(format!("{}{path}", edge.url()))
                .header("authorization", basic(user, password))
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                return true;
            }
        }
        false
    })
    .await;
}

/// A TLS connection to the edge that trusts its CA, for requests no HTTP client library sends.
pub type RawTls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A TCP connection to `addr` from `source` (another loopback address plays another host).
pub fn tcp_from(
    addr: &str,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<std::net::TcpStream> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(ip) = source {
        sock.bind(&std::net::SocketAddr::new(ip, 0).into())?;
    }
    sock.connect(&addr.into())?;
    let s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

pub fn raw_tls(edge: &Edge) -> RawTls {
    raw_tls_from(edge, None)
}

/// A raw TLS connection from `source`.
pub fn raw_tls_from(edge: &Edge, source: Option<std::net::IpAddr>) -> RawTls {
    tls_over(edge, tcp_from(&edge.addr, source).unwrap())
}

/// A TLS client, trusting the edge's CA, over a connection already open (on which something
/// may have been sent first, such as a PROXY protocol header).
pub fn tls_over(edge: &Edge, sock: std::net::TcpStream) -> RawTls {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut edge.ca_pem().as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// Reads until the end of a response header block.
pub fn read_head(s: &mut impl std::io::Read) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => buf.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends `request` (bytes as they are) on a new TLS connection and reads the answer until the
/// server closes or `Content-Length` is satisfied; returns (status, the whole answer).
pub fn raw_exchange(
    edge: &Edge,
    source: Option<std::net::IpAddr>,
    request: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = raw_tls_from(edge, source);
    s.write_all(request).unwrap();
    s.flush().unwrap();
    let head = read_head(&mut s);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = s.read_exact(&mut body);
    (status, head + &String::from_utf8_lossy(&body))
}
