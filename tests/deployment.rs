//! The edge as deployed behind other things: trusted proxies whose `X-Forwarded-For` or PROXY
//! protocol header (from a real HAProxy) names the client for the lockout and the logs, and
//! nobody else's; TLS off behind a terminator, with skopeo pushing over plain HTTP; and the
//! configured response headers (`[server.headers]`, `REGISTRY_HTTP_HEADERS_*`).

mod common;

use std::io::Write;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{basic, have, make_oci_layout, reserve_port, run, tcp_from, Edge, EdgeOpts};

const LOCKOUT: &str = "[lockout]\nmax_failures = 3\nbase_delay = \"30s\"\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One login attempt through `client` to `url`: the status.
async fn attempt(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
    forwarded: Option<&str>,
) -> u16 {
    let mut r = client
        .get(url)
        .header("authorization", basic(user, password));
    if let Some(f) = forwarded {
        r = r.header("x-forwarded-for", f);
    }
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn forwarded_for_counts_per_client_only_from_trusted_proxies() {
    let edge = Edge::start_with(EdgeOpts {
        config: Some(format!(
            "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n{LOCKOUT}"
        )),
        ..Default::default()
    });
    let url = format!("{}/v2/", edge.url());
    let (u, p) = (edge.user.clone(), edge.password.clone());
    // Through the trusted proxy (127.0.0.1): one forwarded client guesses and is blocked...
    let proxy = edge.client(false);
    for _ in 0..3 {
        let s = attempt(&proxy, &url, &u, "guess", Some("192.0.2.1")).await;
        assert_eq!(s, 401);
    }
    assert_eq!(attempt(&proxy, &url, &u, &p, Some("192.0.2.1")).await, 429);
    // ...while another client behind the same proxy, and the proxy itself, are served. The
    // client's own spoof on the left of the chain is not what counts.
    let s = attempt(&proxy, &url, &u, &p, Some("192.0.2.1, 192.0.2.2")).await;
    assert_eq!(s, 200);
    assert_eq!(attempt(&proxy, &url, &u, &p, None).await, 200);
    common::eventually(5, "the access log names the forwarded client", async || {
        edge.log_text().contains("client=192.0.2.1")
    })
    .await;
    // An untrusted peer's X-Forwarded-For is ignored: its guesses count against itself.
    let direct = edge.client_from(ip("127.0.0.2"));
    for n in 0..3 {
        let s = attempt(&direct, &url, &u, "guess", Some(&format!("198.51.100.{n}"))).await;
        assert_eq!(s, 401);
    }
    // (A wrong password: the right one, known from the requests above, is let through from
    // the verified-credentials cache without the lockout.)
    let s = attempt(&direct, &url, &u, "guess", Some("198.51.100.99")).await;
    assert_eq!(s, 429);
}

/// HAProxy in TCP mode in front of the edge, sending the PROXY protocol v2 header; stopped on
/// drop.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(backend: &str) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = reserve_port();
        let conf = dir.path().join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
                 backend b\n  server edge {backend} send-proxy-v2\n"
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn proxy_protocol_from_haproxy_names_each_client() {
    assert!(have("haproxy"), "haproxy is needed");
    let edge = Edge::start_with(EdgeOpts {
        config: Some(format!(
            "[server]\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = true\n{LOCKOUT}"
        )),
        ..Default::default()
    });
    let hap = Haproxy::start(&edge.addr);
    let url = format!("https://127.0.0.1:{}/v2/", hap.port);
    let (u, p) = (edge.user.clone(), edge.password.clone());
    // Two hosts behind HAProxy: one guesses and is blocked, the other is served.
    let attacker = edge.client_from(ip("127.0.0.2"));
    let other = edge.client_from(ip("127.0.0.3"));
    for _ in 0..3 {
        assert_eq!(attempt(&attacker, &url, &u, "guess", None).await, 401);
    }
    assert_eq!(attempt(&attacker, &url, &u, &p, None).await, 429);
    assert_eq!(attempt(&other, &url, &u, &p, None).await, 200);
    // (The access log line is written after the answer has gone out.)
    common::eventually(5, "both clients are in the access log", async || {
        let log = edge.log_text();
        log.contains("client=127.0.0.2") && log.contains("client=127.0.0.3")
    })
    .await;
    // A version 1 header works too (sent by hand: HAProxy speaks one version per server line).
    let mut s = tcp_from(&edge.addr, None).unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.77 127.0.0.1 4242 5000\r\n")
        .unwrap();
    let mut tls = common::tls_over(&edge, s);
    write!(
        tls,
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic(&u, &p)
    )
    .unwrap();
    tls.flush().unwrap();
    let head = common::read_head(&mut tls);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    common::eventually(5, "the v1 client is logged", async || {
        edge.log_text().contains("client=192.0.2.77")
    })
    .await;
    // The trusted proxy must send the header: a direct TLS connection from it is dropped...
    let direct = edge.client(false);
    assert!(direct
        .get(format!("{}/v2/", edge.url()))
        .send()
        .await
        .is_err());
    // ...while an untrusted host connects directly, without one.
    let host = edge.client_from(ip("127.0.0.4"));
    assert_eq!(
        attempt(&host, &format!("{}/v2/", edge.url()), &u, &p, None).await,
        200
    );
}

#[tokio::test]
async fn tls_off_serves_plain_http_to_skopeo() {
    let edge = Edge::start_with(EdgeOpts {
        plain: true,
        ..Default::default()
    });
    assert!(
        edge.log_text().contains("TLS is off"),
        "{}",
        edge.log_text()
    );
    assert!(
        !edge.path("certs/domain.crt").exists(),
        "no certificate is made"
    );
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{}/v2/", edge.url()))
        .header("authorization", basic(&edge.user, &edge.password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{}/v2/", edge.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(have("skopeo"), "skopeo is needed");
    let img = edge.path("img");
    make_oci_layout(&img, "v1", &[100_000]);
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false", "--dest-creds"])
        .arg(format!("{}:{}", edge.user, edge.password))
        .arg(format!("oci:{}:v1", img.display()))
        .arg(format!("docker://{}/plain/img:v1", edge.addr)));
    std::fs::write(edge.path("proxy.toml"), "[tls]\nenabled = false\n").unwrap();
    let (code, out, _) = edge.cli(&["check"], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("TLS is off"), "{out}");
}

#[tokio::test]
async fn configured_headers_are_on_every_answer() {
    let edge = Edge::start_with(
        EdgeOpts {
            config: Some(
                "[server.headers]\nStrict-Transport-Security = \"max-age=63072000\"\n".into(),
            ),
            ..Default::default()
        }
        .env("REGISTRY_HTTP_HEADERS_X-CONTENT-TYPE-OPTIONS", "[nosniff]"),
    );
    let c = edge.client(false);
    let auth = basic(&edge.user, &edge.password);
    for (path, auth, status) in [
        ("/v2/", Some(&auth), 200),
        ("/v2/", None, 401),
        ("/v2/nothing/here/manifests/v1", Some(&auth), 404),
        ("/v2/_catalog", Some(&auth), 200),
    ] {
        let mut r = c.get(format!("{}{path}", edge.url()));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let h = r.headers();
        assert_eq!(h["strict-transport-security"], "max-age=63072000", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    // A header the protocol owns is refused at start, with its name.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("proxy.toml"),
        "[server.headers]\nLocation = \"/elsewhere\"\n",
    )
    .unwrap();
    let (code, _, err) = common::cli_in(dir.path(), &["check"], "");
    assert_eq!(code, 64);
    assert!(
        err.contains("server.headers") && err.contains("Location"),
        "{err}"
    );
}

#[test]
fn curl_over_plain_http_to_the_tls_port_reads_why() {
    let edge = Edge::start();
    // What Docker's loopback fallback to http:// shows the user, too.
    let out = run(Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .arg(format!("http://{}/v2/", edge.addr)));
    assert!(
        out.contains("Client sent an HTTP request to an HTTPS server.") && out.ends_with("400"),
        "{out}"
    );
}
