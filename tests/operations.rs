//! Day-two operations: Prometheus scraping the metrics, access rules, the login lockout,
//! certificate and htpasswd reloads, the `passwd` / `cert` / `check` commands, the access log.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use common::{
    add_user, basic, error_code, eventually, have, reserve_port, run, sample, Edge, EdgeOpts,
};
use serde_json::Value;

#[tokio::test]
async fn prometheus_scrapes_the_metrics() {
    if !have("prometheus") || !have("promtool") {
        return;
    }
    let edge = Edge::start();
    let c = edge.client(false);
    for _ in 0..3 {
        let r = c
            .get(format!("{}/v2/", edge.url()))
            .header("authorization", basic(&edge.user, &edge.password))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c.get(format!("{}/v2/", edge.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let text = edge.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            r#"regedge_http_requests_total{code="200",method="GET",route="ping"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"regedge_http_requests_total{code="401",method="GET",route="ping"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"regedge_auth_cache_lookups_total{result="hit"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"regedge_auth_cache_lookups_total{result="miss"}"#),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            r#"regedge_tls_handshakes_total{result="ok",version="TLSv1_3"}"#
        )
        .is_some_and(|v| v >= 1.0)
            || text.contains("regedge_tls_handshakes_total{result=\"ok\""),
        "{text}"
    );
    assert!(
        sample(&text, "regedge_tls_certificate_expiry_timestamp_seconds")
            .is_some_and(|v| v > 1.7e9)
    );
    assert_eq!(
        sample(
            &text,
            r#"regcore_http_requests_total{code="200",method="GET",route="ping"}"#
        ),
        Some(3.0),
        "the embedded core's metrics are served too"
    );
    // promtool's lint is clean.
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A real Prometheus scrapes it: the target is up and the counter has the value we caused.
    let dir = tempfile::tempdir().unwrap();
    let web = format!("127.0.0.1:{}", reserve_port());
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: edge\n    static_configs:\n      - targets: ['{}']\n", edge.metrics_addr),
    )
    .unwrap();
    let prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(prom);
    let query = |q: &str| {
        let url = format!("http://{web}/api/v1/query?query={q}");
        async move {
            let v: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
            v["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
        }
    };
    eventually(60, "prometheus scraped the edge", async || {
        query("up").await == Some(1.0)
    })
    .await;
    let q = "regedge_http_requests_total%7Bcode%3D%22200%22%2Croute%3D%22ping%22%7D";
    eventually(30, "prometheus has the counter", async || {
        query(q).await == Some(3.0)
    })
    .await;
}

const APACHE_RECIPE: &str = r#"
[access.groups]
pushers = ["alice"]

# GET/HEAD for everyone...
[[access.rules]]
repositories = ["public/*"]
users = ["*"]
actions = ["pull"]

# ...POST/PUT/PATCH/DELETE for the pushers group.
[[access.rules]]
repositories = ["*"]
groups = ["pushers"]
actions = ["pull", "push", "delete"]
"#;

#[tokio::test]
async fn access_rules_over_http_and_skopeo() {
    let edge = Edge::start_with(EdgeOpts {
        config: Some(APACHE_RECIPE.into()),
        ..Default::default()
    });
    add_user(&edge, "alice", "alice-pw").await;
    add_user(&edge, "bob", "bob-pw").await;
    let c = edge.client(false);
    let (alice, bob) = (basic("alice", "alice-pw"), basic("bob", "bob-pw"));
    // alice pushes to public/app and private/app.
    for repo in ["public/app", "private/app"] {
        let r = c
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?digest={}",
                edge.url(),
                common::sha256(b"layer")
            ))
            .header("authorization", &alice)
            .body("layer")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{repo}");
    }
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":5}},"layers":[]}}"#,
        common::sha256(b"layer")
    );
    for repo in ["public/app", "private/app"] {
        let r = c
            .put(format!("{}/v2/{repo}/manifests/v1", edge.url()))
            .header("authorization", &alice)
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(m.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // bob may pull public/*, nothing else, and may not push or delete.
    let r = c
        .get(format!("{}/v2/public/app/manifests/v1", edge.url()))
        .header("authorization", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/v2/private/app/manifests/v1", edge.url()))
        .header("authorization", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(error_code(r).await, "DENIED");
    let r = c
        .post(format!("{}/v2/public/app/blobs/uploads/", edge.url()))
        .header("authorization", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .delete(format!("{}/v2/public/app/manifests/v1", edge.url()))
        .header("authorization", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Mounting from a repository bob may not pull is denied, even into one he could push to.
    let r = c
        .post(format!(
            "{}/v2/public/x/blobs/uploads/?mount={}&from=private/app",
            edge.url(),
            common::sha256(b"layer")
        ))
        .header("authorization", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "alice may mount");
    // The catalog shows each user what they may pull.
    let cat = |auth: String| {
        let c = c.clone();
        let url = format!("{}/v2/_catalog", edge.url());
        async move {
            c.get(url)
                .header("authorization", auth)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["repositories"]
                .clone()
        }
    };
    // (public/x has a mounted layer but no manifest, so it is not in the catalog at all.)
    assert_eq!(cat(bob.clone()).await, serde_json::json!(["public/app"]));
    assert_eq!(
        cat(alice.clone()).await,
        serde_json::json!(["private/app", "public/app"])
    );
    // skopeo: bob's push is denied with a clear error, his pull works.
    if have("skopeo") {
        let work = tempfile::tempdir().unwrap();
        let img = work.path().join("img");
        common::make_oci_layout(&img, "v1", &[1000]);
        let out = Command::new("skopeo")
            .args(["copy", "-q", "--dest-cert-dir"])
            .arg(edge.cert_dir())
            .args(["--dest-creds", "bob:bob-pw"])
            .arg(format!("oci:{}:v1", img.display()))
            .arg(format!("docker://{}/public/new:v1", edge.addr))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("denied"), "{err}");
        run(Command::new("skopeo")
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(edge.cert_dir())
            .args(["--creds", "bob:bob-pw"])
            .arg(format!("docker://{}/public/app:v1", edge.addr)));
    }
}

#[tokio::test]
async fn lockout_blocks_the_attacker_not_others() {
    let edge = Edge::start();
    let attacker = edge.client_from("127.0.0.2".parse::<IpAddr>().unwrap());
    let other = edge.client_from("127.0.0.3".parse::<IpAddr>().unwrap());
    let url = format!("{}/v2/", edge.url());
    // One login attempt: the status, and Retry-After when blocked.
    let attempt = async |client: &reqwest::Client, password: &str| {
        let r = client
            .get(&url)
            .header("authorization", basic(&edge.user, password))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        if status == 429 {
            assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
        }
        (status, retry_after)
    };
    for _ in 0..5 {
        assert_eq!(attempt(&attacker, "guess").await.0, 401);
    }
    let (status, wait) = attempt(&attacker, "guess").await;
    assert_eq!(status, 429);
    let wait = wait.expect("Retry-After on 429");
    assert!((1..=2).contains(&wait), "{wait}");
    // Even the right password waits while blocked; another client is served.
    assert_eq!(attempt(&attacker, &edge.password).await.0, 429);
    assert_eq!(attempt(&other, &edge.password).await.0, 200);
    // After the delay the attacker may try again; five more failures block for longer.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    for _ in 0..5 {
        assert_eq!(attempt(&attacker, "guess").await.0, 401);
    }
    let (status, longer) = attempt(&attacker, "guess").await;
    assert_eq!(status, 429);
    let longer = longer.unwrap();
    assert!(longer > wait, "{longer} > {wait}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_replaced_during_a_512_mib_download() {
    use futures_util::StreamExt;
    let edge = Edge::start();
    let auth = basic(&edge.user, &edge.password);
    let c = edge.client(false);
    let size = 512usize << 20;
    let block = common::random_bytes(1 << 20);
    let body = futures_util::stream::iter(
        (0..512).map(move |_| Ok::<_, std::io::Error>(bytes::Bytes::from(block.clone()))),
    );
    // Upload without knowing the digest up front: POST, streamed PATCH, then PUT with the digest.
    let r = c
        .post(format!("{}/v2/big/blobs/uploads/", edge.url()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .patch(format!("{}{loc}", edge.url()))
        .header("authorization", &auth)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let stored: String = {
        // The digest of what the registry holds, read from its upload data.
        let data_path = edge.path("data/docker/registry/v2/repositories/big/_uploads");
        let id = std::fs::read_dir(&data_path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let bytes = std::fs::read(id.join("data")).unwrap();
        assert_eq!(bytes.len(), size);
        common::sha256(&bytes)
    };
    let r = c
        .put(format!("{}{loc}?digest={stored}", edge.url()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Start the download and read it slowly.
    let r = c
        .get(format!("{}/v2/big/blobs/{stored}", edge.url()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    let mut n = 0usize;
    let first = s.next().await.unwrap().unwrap();
    n += first.len();
    sha2::Digest::update(&mut h, &first);
    // Replace the certificate, with a new CA, while the download is in flight.
    let old_ca = edge.ca_pem();
    let (code, out, err) = edge.cli(
        &["cert", "--force", "--new-ca", "--dns", "renewed.example"],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    let new_ca = edge.ca_pem();
    assert_ne!(old_ca, new_ca);
    while let Some(chunk) = s.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len();
        sha2::Digest::update(&mut h, &chunk);
        if n < 64 << 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(n, size);
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Digest::finalize(h))),
        stored
    );
    // The next handshake presents the new certificate: a client trusting only the new CA gets
    // in, one trusting only the old CA does not.
    let fresh = |ca: &[u8]| {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
            .build()
            .unwrap()
    };
    let url = format!("{}/v2/", edge.url());
    eventually(10, "the new certificate is served", async || {
        fresh(&new_ca)
            .get(&url)
            .header("authorization", &auth)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(fresh(&old_ca).get(&url).send().await.is_err());
    assert!(edge.log_text().contains("certificate reloaded"));
}

#[tokio::test]
async fn broken_htpasswd_is_refused_and_the_old_users_kept() {
    let edge = Edge::start();
    let c = edge.client(false);
    let url = format!("{}/v2/", edge.url());
    let good = basic(&edge.user, &edge.password);
    std::fs::write(
        edge.path("auth/htpasswd"),
        "admin:$apr1$notbcrypt$xxxxxxxxxxxxxxxxxxxxxx\n",
    )
    .unwrap();
    let edge_ref = &edge;
    eventually(10, "the broken file is refused", async || {
        edge_ref.log_text().contains("new htpasswd refused")
    })
    .await;
    assert!(
        edge.log_text().contains("auth/htpasswd:1"),
        "{}",
        edge.log_text()
    );
    let r = c
        .get(&url)
        .header("authorization", &good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the users in use are kept");
    // A good file replaces them; SIGHUP also reloads.
    let (code, _, err) = edge.cli(
        &[
            "passwd",
            "carol",
            "--password-stdin",
            "--file",
            "new-htpasswd",
            "--cost",
            "5",
        ],
        "carol-pw\n",
    );
    assert_eq!(code, 0, "{err}");
    std::fs::rename(edge.path("new-htpasswd"), edge.path("auth/htpasswd")).unwrap();
    run(Command::new("kill").args(["-HUP", &edge.pid().to_string()]));
    eventually(10, "carol can log in", async || {
        c.get(&url)
            .header("authorization", basic("carol", "carol-pw"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    let r = c
        .get(&url)
        .header("authorization", &good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "admin is no longer in the file");
}

#[tokio::test]
async fn passwd_output_is_accepted_by_the_edge_and_apache() {
    let edge = Edge::start();
    add_user(&edge, "dave", "dave pw with spaces").await;
    let text = std::fs::read_to_string(edge.path("auth/htpasswd")).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("dave:$2y$05$")),
        "{text}"
    );
    if have("htpasswd") {
        run(Command::new("htpasswd")
            .args(["-vb"])
            .arg(edge.path("auth/htpasswd"))
            .args(["dave", "dave pw with spaces"]));
        let bad = Command::new("htpasswd")
            .args(["-vb"])
            .arg(edge.path("auth/htpasswd"))
            .args(["dave", "nope"])
            .output()
            .unwrap();
        assert!(!bad.status.success());
    }
    // Replacing a password keeps one line per user.
    add_user(&edge, "dave", "second").await;
    let text = std::fs::read_to_string(edge.path("auth/htpasswd")).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("dave:")).count(), 1);
    // A piped password without --password-stdin is refused with the flag named.
    let (code, _, err) = edge.cli(&["passwd", "erin"], "piped\n");
    assert_ne!(code, 0);
    assert!(err.contains("--password-stdin"), "{err}");
    // The start log names the storage, the users and the access rules.
    let log = edge.log_text();
    let start = log
        .lines()
        .find(|l| l.contains("registry-edge starting"))
        .unwrap();
    for want in ["embedded registry-core", "users=1", "access_rules=0"] {
        assert!(start.contains(want), "{want}: {start}");
    }
    let (code, _, err) = edge.cli(&["passwd", "bad:name", "--password-stdin"], "x\n");
    assert_ne!(code, 0);
    assert!(err.contains("bad:name"), "{err}");
}

#[test]
fn cert_output_is_trusted_by_skopeo_and_check_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = common::cli_in(
        dir.path(),
        &["cert", "--dns", "registry.test", "--ip", "127.0.0.1"],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("registry.test"), "{out}");
    let (code, _, err) = common::cli_in(dir.path(), &["cert", "--dns", "x"], "");
    assert_ne!(code, 0, "refuses to overwrite");
    assert!(err.contains("--force"), "{err}");
    // check: files usable (htpasswd to be created), then a bad key in a config file.
    let (code, out, _) = common::cli_in(dir.path(), &["check"], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid for"), "{out}");
    std::fs::write(
        dir.path().join("bad.toml"),
        "[server]\nlisten = \"127.0.0.1:5000\"\nthreads = -1\n",
    )
    .unwrap();
    let (code, _, err) = common::cli_in(dir.path(), &["check", "--config", "bad.toml"], "");
    assert_eq!(code, 64);
    assert!(err.contains("threads") && err.contains("bad.toml"), "{err}");
    std::fs::write(
        dir.path().join("bad2.toml"),
        "[tls]\ncert = \"certs/ca.crt\"\n",
    )
    .unwrap();
    let (code, out, _) = common::cli_in(dir.path(), &["check", "--config", "bad2.toml"], "");
    assert_eq!(code, 70);
    assert!(out.contains("does not match"), "{out}");
    // The edge serves that certificate and skopeo trusts it through ca.crt.
    if have("skopeo") {
        let edge = Edge::spawn_in(dir, EdgeOpts::default());
        let authfile = edge.path("auth.json");
        run(Command::new("skopeo")
            .args(["login", "--cert-dir"])
            .arg(edge.cert_dir())
            .arg("--authfile")
            .arg(&authfile)
            .args(["-u", &edge.user, "-p", &edge.password, &edge.addr]));
    }
}

#[tokio::test]
async fn json_access_log() {
    let edge = Edge::start_with(EdgeOpts::default().env("REGISTRY_EDGE_LOG_FORMAT", "json"));
    let c = edge.client(false);
    let r = c
        .get(format!("{}/v2/_catalog", edge.url()))
        .header("authorization", basic(&edge.user, &edge.password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let edge_ref = &edge;
    let is_access = |l: &&str| l.contains("\"target\":\"access\"") && l.contains("/v2/_catalog");
    eventually(5, "an access line", async || {
        edge_ref.log_text().lines().any(|l| is_access(&l))
    })
    .await;
    let line = edge.log_text().lines().find(is_access).unwrap().to_owned();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["fields"]["method"], "GET");
    assert_eq!(v["fields"]["status"], 200);
    assert_eq!(v["fields"]["user"], "admin");
    assert_eq!(v["fields"]["client"], "127.0.0.1");
    assert_eq!(v["target"], "access");
}
