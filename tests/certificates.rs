//! The edge's own certificate over its life: names added after the first start (by restart and
//! by SIGHUP) get a certificate that clients holding the first `ca.crt` still trust, with skopeo
//! as the client; a certificate the user gave is never replaced, and `check` and the start log
//! name what it does not cover.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{basic, eventually, have, run, Edge, EdgeOpts};

/// skopeo logs in to `addr`, trusting only the CA certificate `ca`.
fn skopeo_login(edge: &Edge, addr: &str, ca: &[u8]) {
    let certs = edge.path("old-ca");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), ca).unwrap();
    run(Command::new("skopeo")
        .args(["login", "--cert-dir"])
        .arg(&certs)
        .arg("--authfile")
        .arg(edge.path("auth.json"))
        .args(["-u", &edge.user, "-p", &edge.password, addr]));
}

#[test]
fn a_name_added_later_is_covered_under_the_same_ca() {
    assert!(have("skopeo"), "skopeo is needed");
    let edge = Edge::start();
    let first_ca = edge.ca_pem();
    let ca_key = edge.path("certs/ca.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&ca_key).unwrap().permissions().mode() & 0o777,
        0o600,
        "the CA key is kept, for the owner only"
    );
    // The registry moves to an address the certificate does not cover, named in tls.hosts.
    let edge = edge.restart_with(
        EdgeOpts {
            listen_ip: Some("127.0.0.9".into()),
            ..Default::default()
        }
        .env("REGISTRY_EDGE_TLS_HOSTS", "127.0.0.9,registry.test"),
    );
    let log = edge.log_text();
    assert!(
        log.contains("re-issued the certificate under the same CA") && log.contains("127.0.0.9"),
        "{log}"
    );
    assert_eq!(edge.ca_pem(), first_ca, "ca.crt is unchanged");
    // A client that was given the first ca.crt verifies the new certificate for the new name.
    skopeo_login(&edge, &edge.addr, &first_ca);
    // A third start finds nothing to do.
    let edge = edge.restart_with(
        EdgeOpts {
            listen_ip: Some("127.0.0.9".into()),
            ..Default::default()
        }
        .env("REGISTRY_EDGE_TLS_HOSTS", "127.0.0.9,registry.test"),
    );
    assert!(!edge.log_text().contains("re-issued"));
}

#[tokio::test]
async fn sighup_reads_new_hosts_and_reissues() {
    let edge = Edge::start();
    let first_ca = edge.ca_pem();
    let port: u16 = edge.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let by_name = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&first_ca).unwrap())
        .resolve("registry.test", edge.addr.parse().unwrap())
        .build()
        .unwrap();
    let url = format!("https://registry.test:{port}/v2/");
    let auth = basic(&edge.user, &edge.password);
    let e = by_name.get(&url).send().await.unwrap_err();
    assert!(format!("{e:?}").contains("Certificate"), "{e:?}");
    std::fs::write(
        edge.path("proxy.toml"),
        "[tls]\nhosts = [\"registry.test\"]\n",
    )
    .unwrap();
    run(Command::new("kill").args(["-HUP", &edge.pid().to_string()]));
    eventually(10, "the certificate covers registry.test", async || {
        by_name
            .get(&url)
            .header("authorization", &auth)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert_eq!(edge.ca_pem(), first_ca);
    eventually(5, "the new hosts are logged", async || {
        edge.log_text().contains("tls.hosts changed")
    })
    .await;
}

#[test]
fn a_users_certificate_is_never_replaced_and_its_gaps_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("mine");
    std::fs::create_dir_all(&certs).unwrap();
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "30", "-subj", "/CN=a.example"])
        .args(["-addext", "subjectAltName=DNS:a.example,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(certs.join("key.pem"))
        .arg("-out")
        .arg(certs.join("cert.pem")));
    let config = "[tls]\ncert = \"mine/cert.pem\"\nkey = \"mine/key.pem\"\nhosts = [\"a.example\", \"b.example\"]\n";
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let before = std::fs::read(certs.join("cert.pem")).unwrap();
    let (code, out, _) = common::cli_in(dir.path(), &["check"], "");
    assert_eq!(code, 70, "{out}");
    assert!(
        out.contains("does not cover") && out.contains("b.example"),
        "{out}"
    );
    let edge = Edge::spawn_in(dir, EdgeOpts::default());
    let log = edge.log_text();
    assert!(
        log.contains("does not cover") && log.contains("b.example"),
        "{log}"
    );
    assert_eq!(std::fs::read(edge.path("mine/cert.pem")).unwrap(), before);
    assert!(!edge.path("certs/ca.key").exists(), "no CA was made");
    std::thread::sleep(Duration::from_millis(100));
}
