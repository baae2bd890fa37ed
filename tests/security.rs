//! The edge against a hostile client, one test per class of attack: encoded paths and query keys
//! that try to slip past the access rules (with Distribution 2.8 as the upstream, which decodes
//! `%2F` before it routes), made-up methods that would grow the metrics, connection floods and
//! slow headers, login bursts, lockouts aimed at a real user, oversized user names, and catalog
//! paging that would reveal hidden repositories.

mod common;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{
    add_user, basic, have, raw_exchange, raw_tls_from, read_head, sample, sha256, tcp_from,
    Distribution, Edge, EdgeOpts,
};

const ALICE_RULES: &str = r#"
[[access.rules]]
repositories = ["*"]
users = ["admin"]
actions = ["pull", "push", "delete"]

[[access.rules]]
repositories = ["alice/*"]
users = ["alice"]
actions = ["pull", "push", "delete"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn metrics(edge: &Edge) -> String {
    edge.metrics_text().await
}

async fn get_json(c: &reqwest::Client, url: String, auth: &str) -> serde_json::Value {
    let r = c
        .get(url)
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Pushes a one-blob image as `auth`; returns (manifest digest, blob digest).
async fn push_image(edge: &Edge, auth: &str, repo: &str, tag: &str) -> (String, String) {
    let c = edge.client(false);
    let blob = format!("config of {repo}");
    let d = sha256(blob.as_bytes());
    // POST then PUT: Distribution 2.8 has no monolithic POST.
    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/", edge.url()))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{repo}");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let location = if location.starts_with('/') {
        format!("{}{location}", edge.url())
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{location}{sep}digest={d}"))
        .header("authorization", auth)
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{repo}");
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":{}}},"layers":[]}}"#,
        blob.len()
    );
    let r = c
        .put(format!("{}/v2/{repo}/manifests/{tag}", edge.url()))
        .header("authorization", auth)
        .header("content-type", MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{repo}");
    (sha256(m.as_bytes()), d)
}

/// An edge with the alice rules, in front of Distribution 2.8 (or the embedded core).
fn edge_with_rules(dist: Option<&Distribution>) -> Edge {
    let mut opts = EdgeOpts {
        config: Some(ALICE_RULES.into()),
        ..Default::default()
    };
    if let Some(d) = dist {
        opts = opts.env(
            "REGISTRY_EDGE_UPSTREAM_URLS",
            &format!("[\"http://{}\"]", d.addr),
        );
    }
    Edge::start_with(opts)
}

#[tokio::test]
async fn encoded_paths_and_query_keys_never_get_past_the_rules() {
    assert!(
        have("docker-registry"),
        "Debian's docker-registry is needed"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dist = Distribution::start(&data, dir.path());
    let edge = edge_with_rules(Some(&dist));
    let admin = basic(&edge.user, &edge.password);
    add_user(&edge, "alice", "alice-pw").await;
    let alice = basic("alice", "alice-pw");
    let (secret_manifest, secret_blob) = push_image(&edge, &admin, "secret/app", "v1").await;
    push_image(&edge, &alice, "alice/app", "v1").await;
    let manifest_there = async || {
        edge.client(false)
            .head(format!(
                "{}/v2/secret/app/manifests/{secret_manifest}",
                edge.url()
            ))
            .header("authorization", &admin)
            .header("accept", MANIFEST)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(manifest_there().await, 200);

    let host = edge.addr.clone();
    let d = &secret_blob;
    let m = &secret_manifest;
    let body = "{}";
    // (method, target, body): every route and method, with %2F, %5F, %2e, double encoding and
    // encoded query keys.
    let attacks: Vec<(&str, String, &str)> = vec![
        ("GET", format!("/v2/secret/app/blobs%2F{d}"), ""),
        ("HEAD", format!("/v2/secret/app/blobs%2F{d}"), ""),
        ("GET", "/v2/secret/app/manifests%2Fv1".into(), ""),
        ("GET", "/v2/secret/app/tags%2Flist".into(), ""),
        ("GET", "/v2/secret/app%2Ftags/list".into(), ""),
        ("GET", "/v2/%5Fcatalog".into(), ""),
        ("GET", "/v2/%5fcatalog?n=100".into(), ""),
        ("GET", "/v2/alice/%2e%2e/secret/app/manifests/v1".into(), ""),
        ("GET", "/v2/alice/%2E%2E/secret/app/manifests/v1".into(), ""),
        ("GET", "/v2/alice/../secret/app/manifests/v1".into(), ""),
        ("GET", "/v2/alice%2F..%2Fsecret/app/manifests/v1".into(), ""),
        (
            "GET",
            "/v2/alice/app%252F..%252F..%252Fsecret/app/manifests/v1".into(),
            "",
        ),
        ("GET", "/v2/secret/app/manifests%252Fv1".into(), ""),
        ("GET", format!("/v2/secret/app/referrers%2F{d}"), ""),
        ("POST", "/v2/secret/app/blobs%2Fuploads/".into(), ""),
        ("POST", "/v2/secret/app/blobs/uploads%2F".into(), ""),
        ("PUT", "/v2/secret/app/manifests%2Fpwned".into(), body),
        (
            "PUT",
            "/v2/alice/%2e%2e/secret/app/manifests/pwned".into(),
            body,
        ),
        ("DELETE", format!("/v2/secret/app/manifests%2F{m}"), ""),
        (
            "DELETE",
            format!("/v2/alice/%2e%2e/secret/app/manifests/{m}"),
            "",
        ),
        ("DELETE", format!("/v2/secret/app/blobs%2F{d}"), ""),
        // The mount source through an encoded key, twice, or encoded itself.
        (
            "POST",
            format!("/v2/alice/app/blobs/uploads/?mount={d}&fr%6Fm=secret%2Fapp"),
            "",
        ),
        (
            "POST",
            format!("/v2/alice/app/blobs/uploads/?mount={d}&from=alice/app&from=secret/app"),
            "",
        ),
        (
            "POST",
            format!("/v2/alice/app/blobs/uploads/?mount={d}&%66%72%6f%6d=secret/app"),
            "",
        ),
        (
            "POST",
            format!("/v2/alice/app/blobs/uploads/?mount={d}&from=alice%2F..%2Fsecret%2Fapp"),
            "",
        ),
        // Methods no route has.
        ("PROPFIND", "/v2/secret/app/manifests/v1".into(), ""),
        ("MOVE", "/v2/alice/app/manifests/v1".into(), ""),
    ];
    for (method, target, body) in &attacks {
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {alice}\r\nContent-Type: {MANIFEST}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, answer) = raw_exchange(&edge, None, req.as_bytes());
        assert!(
            (400..500).contains(&status) && status != 401,
            "{method} {target}: {status}\n{answer}"
        );
        assert!(
            !answer.contains("config of secret") && !answer.contains("schemaVersion"),
            "{method} {target} leaked: {answer}"
        );
    }
    // Distribution still has exactly what admin pushed, and no upload of alice's in secret/app.
    let c = edge.client(false);
    let tags = get_json(
        &c,
        format!("{}/v2/secret/app/tags/list", edge.url()),
        &admin,
    )
    .await;
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    assert_eq!(manifest_there().await, 200);
    let uploads = data.join("docker/registry/v2/repositories/secret/app/_uploads");
    let n = std::fs::read_dir(&uploads).map_or(0, |d| d.count());
    assert_eq!(n, 0, "an upload was started in secret/app");
    // alice's own repository still works, also through an encoded slash (the same name).
    let r = c
        .get(format!("{}/v2/alice%2Fapp/manifests/v1", edge.url()))
        .header("authorization", &alice)
        .header("accept", MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn catalog_paging_reveals_nothing_hidden_in_either_mode() {
    assert!(
        have("docker-registry"),
        "Debian's docker-registry is needed"
    );
    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start(&dir.path().join("data"), dir.path());
    for upstream in [None, Some(&dist)] {
        let edge = edge_with_rules(upstream);
        let admin = basic(&edge.user, &edge.password);
        add_user(&edge, "alice", "alice-pw").await;
        let alice = basic("alice", "alice-pw");
        for repo in ["aaa/hidden-project", "alice/a", "alice/b", "zzz/hidden"] {
            push_image(&edge, &admin, repo, "v1").await;
        }
        let c = edge.client(false);
        let mut next = Some("/v2/_catalog?n=1".to_owned());
        let mut seen = Vec::new();
        let mut pages = 0;
        while let Some(target) = next.take() {
            pages += 1;
            assert!(pages < 10, "paging does not end");
            let r = c
                .get(format!("{}{target}", edge.url()))
                .header("authorization", &alice)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let link = r
                .headers()
                .get("link")
                .map(|l| l.to_str().unwrap().to_owned());
            assert!(
                !link.as_deref().unwrap_or("").contains("hidden"),
                "{link:?} (upstream: {})",
                upstream.is_some()
            );
            let v: serde_json::Value = r.json().await.unwrap();
            let page: Vec<String> = serde_json::from_value(v["repositories"].clone()).unwrap();
            assert!(page.len() <= 1);
            seen.extend(page);
            next = link.map(|l| {
                l.trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned()
            });
        }
        assert_eq!(
            seen,
            ["alice/a", "alice/b"],
            "upstream: {}",
            upstream.is_some()
        );
        // Admin sees everything, paged the same way.
        let v = get_json(&c, format!("{}/v2/_catalog", edge.url()), &admin).await;
        assert_eq!(v["repositories"].as_array().unwrap().len(), 4);
    }
}

#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let edge = Edge::start();
    let host = edge.addr.clone();
    let before = metrics(&edge).await.len();
    for i in 0..200 {
        let method = format!("X{i}{}", "M".repeat(1000));
        let req = format!("{method} /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, _) = raw_exchange(&edge, None, req.as_bytes());
        assert!((400..500).contains(&status), "{status}");
    }
    let text = metrics(&edge).await;
    assert!(
        !text.contains("MMMM"),
        "a client-chosen method became a label"
    );
    assert!(
        text.len() < before + 20_000,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    assert!(text.contains("method=\"other\""));
}

/// Whether the server closed `s` within `within` (a read returns EOF or an error).
fn closed_within(s: &mut impl Read, within: Duration) -> bool {
    let start = Instant::now();
    let mut b = [0u8; 256];
    while start.elapsed() < within {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_and_slow_clients_leave_others_served() {
    let edge = Edge::start_with(
        EdgeOpts::default()
            .env("REGISTRY_EDGE_SERVER_MAX_CONNECTIONS_PER_ADDRESS", "64")
            .env("REGISTRY_EDGE_SERVER_HANDSHAKE_TIMEOUT", "2s")
            .env("REGISTRY_EDGE_SERVER_HEADER_TIMEOUT", "3s"),
    );
    // The edge raised its open-files limit to the hard limit.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", edge.pid())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<&str> = files.split_whitespace().collect();
    assert_eq!(v[3], v[4], "soft limit raised to the hard limit: {files}");
    registry_edge::conn::raise_open_files_limit();

    // 2,000 idle connections from one hostile address.
    let addr = edge.addr.clone();
    let hostile = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for _ in 0..2000 {
            if let Ok(s) = tcp_from(&addr, Some(ip("127.0.0.2"))) {
                held.push(s);
            }
        }
        held
    })
    .await
    .unwrap();
    assert!(
        hostile.len() > 1900,
        "the attacker could open {}",
        hostile.len()
    );
    // A legitimate client is served all the while.
    let c = edge.client(false);
    let auth = basic(&edge.user, &edge.password);
    for _ in 0..5 {
        let r = c
            .get(format!("{}/v2/", edge.url()))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = metrics(&edge).await;
    let refused = sample(
        &m,
        "regedge_connections_refused_total{reason=\"per_address\"}",
    )
    .unwrap_or(0.0);
    assert!(refused >= 1900.0, "refused over the cap: {refused}");
    drop(hostile);

    // A client that never starts its TLS handshake is cut off after the handshake timeout.
    let edge_ref = &edge;
    let silent = tokio::task::spawn_blocking({
        let addr = edge_ref.addr.clone();
        move || {
            let mut s = tcp_from(&addr, Some(ip("127.0.0.3"))).unwrap();
            closed_within(&mut s, Duration::from_secs(8))
        }
    });
    // A client that trickles its header a line a second is cut off after the header timeout.
    let trickle = {
        let mut s = raw_tls_from(&edge, Some(ip("127.0.0.4")));
        let host = edge.addr.clone();
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            if write!(s, "GET /v2/ HTTP/1.1\r\nHost: {host}\r\n").is_err() {
                return Some(start.elapsed());
            }
            for i in 0..20 {
                std::thread::sleep(Duration::from_secs(1));
                if write!(s, "X-Slow-{i}: x\r\n")
                    .and_then(|_| s.flush())
                    .is_err()
                {
                    return Some(start.elapsed());
                }
                s.sock.set_nonblocking(true).unwrap();
                let mut b = [0u8; 64];
                let r = s.read(&mut b);
                s.sock.set_nonblocking(false).unwrap();
                match r {
                    Ok(0) => return Some(start.elapsed()),
                    Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                        return Some(start.elapsed())
                    }
                    _ => {}
                }
            }
            None
        })
    };
    assert!(silent.await.unwrap(), "a silent connection stayed open");
    let cut = trickle
        .await
        .unwrap()
        .expect("a trickling client stayed connected");
    assert!(cut < Duration::from_secs(10), "cut after {cut:?}");
    // Plain HTTP on the HTTPS port gets a readable answer.
    let mut s = tcp_from(&edge.addr, None).unwrap();
    write!(s, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("HTTPS"), "{out}");
    let m = metrics(&edge).await;
    for reason in ["handshake_timeout", "header_timeout"] {
        let n = sample(
            &m,
            &format!("regedge_connections_refused_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(n >= 1.0, "{reason}: {n}");
    }
}

/// The latency of requests with cached credentials, sampled until `stop`.
async fn sample_latency(
    c: reqwest::Client,
    url: String,
    auth: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (usize, Duration) {
    let (mut n, mut worst) = (0, Duration::ZERO);
    while !*stop.borrow() && n < 10_000 {
        let t = Instant::now();
        let r = c
            .get(&url)
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        worst = worst.max(t.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (n, worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_guesses_is_checked_only_up_to_the_limit_and_stalls_nobody() {
    // Real bcrypt cost for the guessed user, as in production.
    let edge = Edge::start_with(EdgeOpts::default().env("REGISTRY_EDGE_AUTH_BCRYPT_COST", "10"));
    let url = format!("{}/v2/", edge.url());
    let auth = basic(&edge.user, &edge.password);
    let c = edge.client(false);
    assert_eq!(
        c.get(&url)
            .header("authorization", &auth)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let misses =
        |m: &str| sample(m, "regedge_auth_cache_lookups_total{result=\"miss\"}").unwrap_or(0.0);
    let before = misses(&metrics(&edge).await);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(sample_latency(
        c.clone(),
        url.clone(),
        auth.clone(),
        stop_rx,
    ));
    // 300 wrong passwords at once from one address, each on its own connection.
    let attacker = edge.client_from(ip("127.0.0.5"));
    let mut burst = Vec::new();
    let wrong = basic(&edge.user, "wrong");
    for _ in 0..300 {
        let (a, u, w) = (attacker.clone(), url.clone(), wrong.clone());
        burst.push(tokio::spawn(async move {
            a.get(&u)
                .header("authorization", w)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut statuses = std::collections::BTreeMap::new();
    for b in burst {
        let s = b.await.unwrap().unwrap_or(0);
        *statuses.entry(s).or_insert(0) += 1;
    }
    // Then from many addresses at once: the bcrypt pool is bounded, not the CPU.
    let mut spread = Vec::new();
    for i in 0..60u8 {
        let a = edge.client_from(IpAddr::from([127, 0, 9, i + 1]));
        for _ in 0..5 {
            let (a, u, w) = (a.clone(), url.clone(), wrong.clone());
            spread.push(tokio::spawn(async move {
                a.get(&u)
                    .header("authorization", w)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }));
        }
    }
    for s in spread {
        let s = s.await.unwrap().unwrap_or(0);
        assert!(s == 401 || s == 429, "{s}");
    }
    stop_tx.send(true).unwrap();
    let (n, worst) = watcher.await.unwrap();
    let checked = misses(&metrics(&edge).await) - before;
    println!(
        "burst: {statuses:?}; bcrypt checks {checked}; authenticated requests {n}, worst latency {worst:?}"
    );
    // 0: a connection closed over the per-address cap (256), before any request.
    assert!(
        statuses.keys().all(|s| [0, 401, 429].contains(s)),
        "{statuses:?}"
    );
    assert!(
        statuses.get(&401).copied().unwrap_or(0) <= 5,
        "more guesses checked than the lockout allows: {statuses:?}"
    );
    assert!(n > 0);
    // Requests with cached credentials never wait behind bcrypt (a stall was 4-10 s).
    assert!(worst < Duration::from_secs(3), "worst latency {worst:?}");
}

#[tokio::test]
async fn guessing_a_user_from_many_addresses_never_locks_the_user_out() {
    let edge = Edge::start();
    let url = format!("{}/v2/", edge.url());
    let wrong = basic(&edge.user, "wrong");
    for i in 0..25u8 {
        let a = edge.client_from(IpAddr::from([127, 0, 10, i + 1]));
        let s = a
            .get(&url)
            .header("authorization", &wrong)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(s, 401);
    }
    // The right password from an address that is not blocked succeeds (perhaps slowed).
    let r = edge
        .client_from(ip("127.0.0.1"))
        .get(&url)
        .header("authorization", basic(&edge.user, &edge.password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn huge_user_names_are_not_stored() {
    let edge = Edge::start();
    let host = edge.addr.clone();
    for i in 0..40 {
        let user = format!("{i}{}", "u".repeat(700 * 1024));
        let req = format!(
            "GET /v2/ HTTP/1.1\r\nHost: {host}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            basic(&user, "pw")
        );
        let (status, _) = raw_exchange(&edge, Some(ip("127.0.0.6")), req.as_bytes());
        assert!(
            status == 401 || status == 429 || status == 400 || status == 431,
            "{status}"
        );
    }
    let m = metrics(&edge).await;
    assert_eq!(
        sample(&m, "regedge_lockout_entries{table=\"user\"}"),
        Some(0.0),
        "user names were stored"
    );
    assert!(sample(&m, "regedge_lockout_entries{table=\"address\"}").unwrap() <= 1.0);
}

#[test]
fn error_answers_of_the_edge_and_the_core_are_framed() {
    let edge = Edge::start();
    let auth = basic(&edge.user, &edge.password);
    let mut s = raw_tls_from(&edge, None);
    // Three pipelined requests: a core 404 with a body, the UI's redirect to its login, then a
    // ping.
    write!(
        s,
        "GET /v2/x/manifests/nope HTTP/1.1\r\nHost: h\r\nAuthorization: {auth}\r\n\r\n\
         GET /nothing HTTP/1.1\r\nHost: h\r\nAuthorization: {auth}\r\n\r\n\
         GET /v2/ HTTP/1.1\r\nHost: h\r\nAuthorization: {auth}\r\n\r\n"
    )
    .unwrap();
    s.flush().unwrap();
    for want in ["HTTP/1.1 404", "HTTP/1.1 303", "HTTP/1.1 200"] {
        let head = read_head(&mut s);
        assert!(head.starts_with(want), "{want}: {head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no Content-Length: {head}"));
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
    }
}
