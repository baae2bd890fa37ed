//! ACME certificates against a real ACME CA: Debian's Pebble, with `pebble-challtestsrv` as the
//! DNS server that makes the test domain resolve to 127.0.0.1. Pebble validates tls-alpn-01 on
//! the edge's HTTPS port and http-01 on its port-80 listener, for real, on loopback.
//!
//! - tls-alpn-01: the first certificate at start; skopeo push and pull through it, verified
//!   against Pebble's root; a renewal (SIGHUP) while a 512 MiB download is in flight: the download
//!   completes, the next handshake presents the new certificate; a restart reuses the cached
//!   account and certificate (no order on Pebble's side); Pebble stopped: the edge stays up,
//!   says why, retries with a doubling delay, and counts the failures.
//! - http-01: the certificate through the port-80 listener, which redirects everything else to
//!   HTTPS; the domain pointed elsewhere: the challenge fails, the reason is logged, the
//!   certificate in use stays.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    basic, eventually, have, make_oci_layout, reserve_port, sample, sha256, Edge, EdgeOpts,
};

const DOMAIN: &str = "registry.test";

/// Pebble and its DNS server, stopped on drop.
struct Pebble {
    pebble: Option<Child>,
    chall: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    dns: String,
    acme_port: u16,
    mgmt_port: u16,
    chall_mgmt: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Pebble {
    /// A CA that validates on `tls_port` (tls-alpn-01) and `http_port` (http-01).
    fn start(tls_port: u16, http_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // Pebble's own HTTPS needs a certificate: one from registry-edge's `cert` command.
        let (code, _, err) = common::cli_in(
            dir.path(),
            &[
                "cert",
                "--out",
                "pebble-certs",
                "--dns",
                "localhost",
                "--ip",
                "127.0.0.1",
            ],
            "",
        );
        assert_eq!(code, 0, "{err}");
        let (acme_port, mgmt_port) = (reserve_port(), reserve_port());
        let (dns_port, chall_mgmt) = (reserve_port(), reserve_port());
        let config = dir.path().join("pebble.json");
        std::fs::write(
            &config,
            serde_json::json!({"pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
                "certificate": "pebble-certs/domain.crt",
                "privateKey": "pebble-certs/domain.key",
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }})
            .to_string(),
        )
        .unwrap();
        let dns = format!("127.0.0.1:{dns_port}");
        let chall = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &dns,
            ])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv");
        let mut p = Pebble {
            pebble: None,
            chall,
            dir,
            config,
            dns,
            acme_port,
            mgmt_port,
            chall_mgmt,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        p.run();
        p
    }

    fn run(&mut self) {
        let mut child = Command::new("pebble")
            .current_dir(self.dir.path())
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &self.dns])
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Every order validates its challenges again (no reuse of earlier authorizations).
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble");
        let out = child.stdout.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        self.pebble = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !self.log_text().contains("ACME directory available") {
            assert!(
                std::time::Instant::now() < deadline,
                "pebble did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Orders Pebble has taken.
    fn orders(&self) -> usize {
        self.log_text().matches("Added order").count()
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The CA Pebble's own HTTPS presents (for the edge's `ca_roots`).
    fn api_ca(&self) -> PathBuf {
        self.dir.path().join("pebble-certs/ca.crt")
    }

    /// Pebble's issuing root (a new one each time Pebble starts), as PEM.
    async fn root(&self) -> Vec<u8> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.api_ca()).unwrap()).unwrap();
        let c = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap();
        c.get(format!("https://127.0.0.1:{}/roots/0", self.mgmt_port))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// Makes DNS answer `ip` for the test domain.
    async fn point_domain_at(&self, ip: &str) {
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/add-a", self.chall_mgmt))
            .body(serde_json::json!({"host": format!("{DOMAIN}."), "addresses": [ip]}).to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.chall.kill();
        let _ = self.chall.wait();
    }
}

/// `proxy.toml` for an edge getting its certificate from `pebble`.
fn acme_config(pebble: &Pebble, extra: &str) -> String {
    format!(
        "[tls.acme]\ndomains = [\"{DOMAIN}\"]\nemail = \"ops@{DOMAIN}\"\ndirectory_url = \"{}\"\nca_roots = [{:?}]\n{extra}",
        pebble.directory(),
        pebble.api_ca().display().to_string()
    )
}

/// The certificate the edge at `port` presents for the test domain, verified against `root`;
/// `None` when it does not verify.
fn presented(port: u16, root: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &root[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(DOMAIN).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).ok()?;
    }
    let _ = conn.writer().flush();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
}

/// A client for the test domain at the edge's port, trusting `root`.
fn client(port: u16, root: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root).unwrap())
        .resolve(DOMAIN, ([127, 0, 0, 1], port).into())
        .http1_only()
        .build()
        .unwrap()
}

/// The test domain in /etc/hosts while it lives, for skopeo (which resolves through the system).
struct HostsEntry;

impl HostsEntry {
    const LINE: &str = "127.0.0.1 registry.test # registry-edge tests/acme.rs";

    fn add() -> HostsEntry {
        let text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !text.contains(Self::LINE) {
            std::fs::write("/etc/hosts", format!("{text}\n{}\n", Self::LINE))
                .expect("root may edit /etc/hosts");
        }
        HostsEntry
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string("/etc/hosts") {
            let kept: Vec<&str> = text.lines().filter(|l| *l != Self::LINE).collect();
            let _ = std::fs::write("/etc/hosts", kept.join("\n") + "\n");
        }
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn sighup(edge: &Edge) {
    Command::new("kill")
        .args(["-HUP", &edge.pid().to_string()])
        .status()
        .unwrap();
}

fn obtained(edge: &Edge) -> usize {
    edge.log_text()
        .matches("ACME: certificate obtained and in use")
        .count()
}

fn tools() -> bool {
    have("pebble") && have("pebble-challtestsrv") && have("skopeo")
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_issue_renew_restart_and_fail() {
    if !tools() {
        return;
    }
    let (https, http) = (reserve_port(), reserve_port());
    let mut pebble = Pebble::start(https, http);
    let opts = || EdgeOpts {
        config: Some(acme_config(&pebble, "")),
        port: Some(https),
        ..Default::default()
    };
    let edge = Edge::start_with(opts());
    // Until the CA answers, the port does handshakes (a temporary certificate), and says why.
    assert!(
        edge.log_text().contains("no certificate from the CA yet"),
        "{}",
        edge.log_text()
    );
    eventually(60, "the first certificate", async || obtained(&edge) == 1).await;
    let root = pebble.root().await;
    let first =
        presented(https, &root).expect("the issued certificate verifies against Pebble's root");
    // (Pebble refuses 5 % of nonces on purpose; an order cut off so is placed again.)
    assert!(pebble.orders() >= 1);
    for f in ["acme/certificate.pem", "acme/certificate.key"] {
        assert_eq!(mode(&edge.path(f)), 0o600, "{f}");
    }
    let account = std::fs::read_dir(edge.path("acme"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("account-")
        })
        .expect("the account is kept");
    assert_eq!(mode(&account), 0o600);

    // skopeo push and pull through the issued certificate, verified against Pebble's root.
    {
        let _hosts = HostsEntry::add();
        let work = tempfile::tempdir().unwrap();
        let certs = work.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("ca.crt"), &root).unwrap();
        let layout = work.path().join("img");
        make_oci_layout(&layout, "v1", &[100_000]);
        let creds = format!("{}:{}", edge.user, edge.password);
        let dest = format!("docker://{DOMAIN}:{https}/acme/app:v1");
        for (src, dst) in [
            (format!("oci:{}:v1", layout.display()), dest.clone()),
            (
                dest.clone(),
                format!("oci:{}:v1", work.path().join("back").display()),
            ),
        ] {
            let out = Command::new("skopeo")
                .args(["copy", "-q", "--src-cert-dir"])
                .arg(&certs)
                .arg("--dest-cert-dir")
                .arg(&certs)
                .args(["--src-creds", &creds, "--dest-creds", &creds, &src, &dst])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        common::assert_same_blobs(&layout, &work.path().join("back"));
    }

    // A renewal while a 512 MiB download is in flight.
    let c = client(https, &root);
    let auth = basic(&edge.user, &edge.password);
    let url = format!("https://{DOMAIN}:{https}");
    let size = 512usize << 20;
    let blob = common::random_bytes(size);
    let digest = sha256(&blob);
    let r = c
        .post(format!("{url}/v2/acme/big/blobs/uploads/?digest={digest}"))
        .header("authorization", &auth)
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut download = c
        .get(format!("{url}/v2/acme/big/blobs/{digest}"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut got = 0usize;
    let chunk = download.chunk().await.unwrap().unwrap();
    got += chunk.len();
    sha2::Digest::update(&mut hasher, &chunk);
    sighup(&edge);
    eventually(60, "the renewed certificate", async || obtained(&edge) == 2).await;
    while let Some(chunk) = download.chunk().await.unwrap() {
        got += chunk.len();
        sha2::Digest::update(&mut hasher, &chunk);
    }
    assert_eq!(got, size, "the download in flight completed");
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher))),
        digest
    );
    let second = presented(https, &root).expect("the renewed certificate verifies");
    assert_ne!(
        first, second,
        "the next handshake presents the new certificate"
    );
    let orders = pebble.orders();

    // A restart: the cached account and certificate, and no order.
    let edge = edge.restart_with(opts());
    assert!(
        edge.log_text().contains("serving the cached certificate"),
        "{}",
        edge.log_text()
    );
    assert_eq!(presented(https, &root), Some(second.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pebble.orders(), orders, "no new order after a restart");
    assert!(!edge.log_text().contains("account created"));

    // The CA gone: the edge stays up with its certificate, says why, and backs off.
    pebble.stop();
    sighup(&edge);
    eventually(60, "two failed attempts", async || {
        edge.log_text()
            .matches("ACME: could not obtain a certificate")
            .count()
            >= 2
    })
    .await;
    let log = edge.log_text();
    let delays: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("could not obtain a certificate"))
        .filter_map(|l| {
            l.split("retry_in_s=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        delays.len() >= 2 && delays[1] > delays[0],
        "doubling delays: {delays:?}\n{log}"
    );
    assert!(log.contains(&pebble.directory()), "the log names the CA");
    assert_eq!(
        presented(https, &root),
        Some(second),
        "the certificate in use stays"
    );
    let m = edge.metrics_text().await;
    assert!(sample(&m, "regedge_acme_orders_total{result=\"failed\"}").unwrap() >= 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_port_80_and_a_failing_challenge() {
    if !tools() {
        return;
    }
    let (https, http) = (reserve_port(), reserve_port());
    let pebble = Pebble::start(https, http);
    let edge = Edge::start_with(EdgeOpts {
        config: Some(acme_config(
            &pebble,
            &format!("challenge = \"http-01\"\nhttp_listen = \"127.0.0.1:{http}\"\n"),
        )),
        port: Some(https),
        ..Default::default()
    });
    eventually(60, "the certificate by http-01", async || {
        obtained(&edge) == 1
    })
    .await;
    let root = pebble.root().await;
    let cert = presented(https, &root).expect("the issued certificate verifies");
    let m = edge.metrics_text().await;
    assert!(
        sample(
            &m,
            "regedge_acme_challenge_requests_total{challenge=\"http-01\",result=\"answered\"}"
        )
        .unwrap()
            >= 1.0
    );

    // Port 80 sends everything else to HTTPS, and knows no other tokens.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{http}/v2/_catalog?n=1"))
        .header("host", format!("{DOMAIN}:{http}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://{DOMAIN}:{https}/v2/_catalog?n=1").as_str()
    );
    let r = plain
        .get(format!(
            "http://127.0.0.1:{http}/.well-known/acme-challenge/nope"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = plain
        .get(format!("http://127.0.0.1:{http}/"))
        .header("host", "bad host\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A client holding port-80 connections open gets no more than the cap; the edge serves on.
    let held: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", http)).unwrap())
        .collect();
    eventually(10, "connections over the cap closed", async || {
        let m = edge.metrics_text().await;
        sample(
            &m,
            "regedge_connections_refused_total{reason=\"acme_http_full\"}",
        )
        .unwrap_or(0.0)
            >= 300.0 - 256.0
    })
    .await;
    drop(held);
    eventually(10, "port 80 answers again", async || {
        plain
            .get(format!(
                "http://127.0.0.1:{http}/.well-known/acme-challenge/x"
            ))
            .send()
            .await
            .is_ok_and(|r| r.status() == 404)
    })
    .await;

    // The domain pointed elsewhere: the CA cannot validate; the reason is logged, and the
    // certificate in use stays.
    pebble.point_domain_at("127.0.0.2").await;
    sighup(&edge);
    eventually(60, "a failed order", async || {
        edge.log_text()
            .contains("ACME: could not obtain a certificate")
    })
    .await;
    let log = edge.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("could not obtain a certificate"))
        .unwrap();
    assert!(
        line.contains("127.0.0.2") || line.to_lowercase().contains("connect"),
        "{line}"
    );
    assert_eq!(presented(https, &root), Some(cert));
}
