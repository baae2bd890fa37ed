//! Notifications through the edge: the events of real clients (skopeo) reach a receiver in
//! Distribution's envelope, field by field as Debian's `docker-registry` (Distribution 2.8) sends
//! them for the same pushes, pulls and deletes, signed with the endpoint's secret; nothing is
//! lost while the receiver is down or when the edge is killed with events pending; and a
//! receiver that does not answer holds up no push.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::core::receiver::Receiver;
use common::{
    eventually, have, make_oci_layout, reserve_port, run, sample, Distribution, Edge, EdgeOpts,
};
use serde_json::Value;

const SECRET: &str = "test-secret-0123456789";

/// `proxy.toml` with one endpoint per `(name, url, extra lines)`.
fn config(endpoints: &[(&str, String, &str)]) -> String {
    let mut s = String::from("[notifications]\nevents = { includereferences = true }\n");
    for (name, url, extra) in endpoints {
        s.push_str(&format!(
            "[[notifications.endpoints]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n"
        ));
    }
    s
}

/// skopeo `args`, trusting the edge's CA (for docker:// references to it) and with `creds`.
fn skopeo(cert_dir: Option<&Path>, creds: &str, args: &[&str]) -> String {
    let mut cmd = Command::new("skopeo");
    cmd.arg(args[0]);
    let copy = args[0] == "copy";
    match cert_dir {
        Some(d) if copy => {
            cmd.arg("--src-cert-dir")
                .arg(d)
                .arg("--dest-cert-dir")
                .arg(d);
        }
        Some(d) => {
            cmd.arg("--cert-dir").arg(d);
        }
        None if copy => {
            cmd.args(["--src-tls-verify=false", "--dest-tls-verify=false"]);
        }
        None => {
            cmd.arg("--tls-verify=false");
        }
    }
    if copy {
        cmd.args(["--src-creds", creds, "--dest-creds", creds]);
    } else {
        cmd.args(["--creds", creds]);
    }
    run(cmd.args(&args[1..]))
}

/// Push, pull back, delete the manifest, mount a layer into another repository and delete it
/// there: the same for any registry at `addr`.
fn round_trip(
    img: &Path,
    out: &Path,
    addr: &str,
    cert_dir: Option<&Path>,
    creds: &str,
    authorization: &str,
    layer: &str,
) {
    let dest = format!("docker://{addr}/team/app:v1");
    skopeo(
        cert_dir,
        creds,
        &["copy", "-q", &format!("oci:{}:v1", img.display()), &dest],
    );
    skopeo(
        cert_dir,
        creds,
        &["copy", "-q", &dest, &format!("oci:{}:v1", out.display())],
    );
    skopeo(cert_dir, creds, &["delete", &dest]);
    let base = match cert_dir {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    };
    let curl = |method: &str, url: String| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: {authorization}"),
            "-X",
            method,
        ]);
        if let Some(d) = cert_dir {
            cmd.arg("--cacert").arg(d.join("ca.crt"));
        }
        run(cmd.arg(url))
    };
    let mount = format!("{base}/v2/other/blobs/uploads/?mount={layer}&from=team/app");
    assert_eq!(curl("POST", mount), "201");
    assert_eq!(
        curl("DELETE", format!("{base}/v2/other/blobs/{layer}")),
        "202"
    );
}

/// An event with what differs between two registries by nature taken out (ids, times, the
/// client's port, the registry's own address), after checking that it is there.
fn comparable(e: &Value) -> Value {
    let mut e = e.clone();
    for k in ["id", "timestamp"] {
        assert!(e[k].as_str().is_some_and(|s| !s.is_empty()), "{k} in {e}");
    }
    for k in ["id", "addr", "host", "method", "useragent"] {
        assert!(e["request"][k].is_string(), "request.{k} in {e}");
    }
    assert!(e["source"]["addr"].is_string() && e["source"]["instanceID"].is_string());
    let o = e.as_object_mut().unwrap();
    o.remove("id");
    o.remove("timestamp");
    o.insert("source".into(), Value::Null);
    let r = o["request"].as_object_mut().unwrap();
    r.remove("id");
    r.remove("host");
    let addr = r["addr"].as_str().unwrap();
    let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip).to_owned();
    r.insert("addr".into(), ip.into());
    if let Some(url) = o["target"]["url"].as_str() {
        let path = &url[url.find("/v2/").expect("a registry URL")..];
        let path = path.to_owned();
        o["target"]["url"] = path.into();
    }
    e
}

fn sorted(events: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string_pretty(&comparable(e)).unwrap())
        .collect();
    v.sort();
    v
}

fn verify_signature(secret: &str, body: &[u8], header: &str) -> bool {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(body);
    header == format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_match_distribution_field_by_field() {
    if !have("skopeo") || !have("docker-registry") || !have("htpasswd") {
        eprintln!("skipped: needs skopeo, docker-registry and htpasswd");
        return;
    }
    let receiver = Receiver::start();
    let edge = Edge::start_with(EdgeOpts {
        config: Some(config(&[(
            "hook",
            receiver.url("/edge"),
            &format!("secret = \"{SECRET}\"\nheaders = {{ X-Test = [\"edge\"] }}"),
        )])),
        ..Default::default()
    });
    let creds = format!("{}:{}", edge.user, edge.password);

    // Distribution 2.8 with the same user (htpasswd auth) and the same receiver.
    let work = tempfile::tempdir().unwrap();
    let htpasswd = work.path().join("htpasswd");
    let line = run(Command::new("htpasswd").args(["-Bbn", &edge.user, &edge.password]));
    std::fs::write(&htpasswd, line.trim()).unwrap();
    let data = work.path().join("data");
    let dist = Distribution::start_config(
        &format!(
            "version: 0.1\nlog: {{level: warn}}\n\
             storage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n\
             http: {{addr: \"@REGISTRY_ADDR@\", secret: \"@RANDOM_SECRET@\"}}\n\
             auth:\n  htpasswd: {{realm: test, path: {}}}\n\
             notifications:\n  events: {{includereferences: true}}\n  endpoints:\n    \
               - {{name: hook, url: \"{}\", timeout: 2s, threshold: 3, backoff: 1s}}\n",
            data.display(),
            htpasswd.display(),
            receiver.url("/dist"),
        ),
        work.path(),
        reserve_port(),
    );

    let img = work.path().join("img");
    let layers = make_oci_layout(&img, "v1", &[3 << 20, 50_000]);
    let (dist_out, edge_out) = (work.path().join("out-dist"), work.path().join("out-edge"));
    let dist_auth = common::basic(&edge.user, &edge.password);
    round_trip(
        &img, &dist_out, &dist.addr, None, &creds, &dist_auth, &layers[1],
    );
    let certs = edge.cert_dir();
    let edge_auth = common::authorization(
        &edge,
        &[
            "repository:other:pull,push,delete",
            "repository:team/app:pull",
        ],
    )
    .await;
    round_trip(
        &img,
        &edge_out,
        &edge.addr,
        Some(&certs),
        &creds,
        &edge_auth,
        &layers[1],
    );

    // Distribution: 3 blob pushes (2 layers, config), 1 manifest push, 4 pulls, 2 deletes (the
    // manifest and its tag), a mount and a blob delete at least; wait for both to agree.
    eventually(
        60,
        "the edge's events to match Distribution's",
        async || {
            let d = receiver.events("/dist");
            d.len() >= 12 && sorted(&d) == sorted(&receiver.events("/edge"))
        },
    )
    .await;
    let ours = receiver.events("/edge");
    let theirs = receiver.events("/dist");
    assert_eq!(sorted(&ours), sorted(&theirs));
    eprintln!(
        "{} events the same as Distribution's, e.g.\n{}",
        ours.len(),
        serde_json::to_string_pretty(&ours[ours.len() - 3]).unwrap()
    );
    // The same shape to the last key, ids and times included.
    for (a, b) in ours.iter().zip(&theirs) {
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(a), keys(b));
        assert_eq!(keys(&a["request"]), keys(&b["request"]));
        assert_eq!(keys(&a["source"]), keys(&b["source"]));
    }
    let actions: Vec<&str> = ours.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["push", "pull", "delete", "mount"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    assert!(ours
        .iter()
        .all(|e| e["actor"]["name"] == edge.user.as_str()));
    let manifest_push = ours
        .iter()
        .find(|e| e["action"] == "push" && e["target"]["tag"] == "v1")
        .expect("the manifest push");
    assert_eq!(
        manifest_push["target"]["url"],
        format!(
            "https://{}/v2/team/app/manifests/{}",
            edge.addr,
            manifest_push["target"]["digest"].as_str().unwrap()
        )
    );
    assert_eq!(
        manifest_push["target"]["references"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Every POST of the edge carries the configured header and a valid signature.
    let posts: Vec<_> = receiver
        .posts()
        .into_iter()
        .filter(|p| p.path == "/edge")
        .collect();
    for p in &posts {
        assert_eq!(
            p.headers["content-type"],
            "application/vnd.docker.distribution.events.v1+json"
        );
        assert_eq!(p.headers["x-test"], "edge");
        let sig = p.headers["x-registry-signature-256"].to_str().unwrap();
        assert!(
            verify_signature(SECRET, &p.body, sig),
            "bad signature {sig}"
        );
        assert!(!verify_signature("another-secret-0123", &p.body, sig));
    }
    let m = edge.metrics_text().await;
    assert_eq!(
        sample(
            &m,
            "regcore_notification_events_sent_total{endpoint=\"hook\"}"
        ),
        Some(ours.len() as f64)
    );
    assert_eq!(
        sample(&m, "regcore_notification_events_pending{endpoint=\"hook\"}"),
        Some(0.0)
    );
}

async fn metric(edge: &Edge, series: &str) -> f64 {
    sample(&edge.metrics_text().await, series).unwrap_or(0.0)
}

/// `(action, digest or tag)` of each event.
fn what(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            let t = &e["target"];
            let key = t["tag"]
                .as_str()
                .or(t["digest"].as_str())
                .unwrap_or("")
                .to_owned();
            (e["action"].as_str().unwrap().to_owned(), key)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_the_receiver_is_down_or_the_edge_restarts() {
    if !have("skopeo") {
        eprintln!("skipped: needs skopeo");
        return;
    }
    let port = reserve_port();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let opts = || EdgeOpts {
        config: Some(config(&[
            (
                "all",
                url("/all"),
                "threshold = 2\nbackoff = \"1s\"\ntimeout = \"2s\"",
            ),
            (
                "releases",
                url("/releases"),
                "manifests_only = true\nignore = { actions = [\"pull\"] }\nbackoff = \"1s\"",
            ),
        ])),
        ..Default::default()
    };
    let down_since = Instant::now();
    let edge = Edge::start_with(opts());
    let creds = format!("{}:{}", edge.user, edge.password);
    let work = tempfile::tempdir().unwrap();
    let push = |edge: &Edge, tag: &str, sizes: &[usize]| {
        let img = work.path().join(tag);
        let blobs = make_oci_layout(&img, tag, sizes);
        skopeo(
            Some(&edge.cert_dir()),
            &creds,
            &[
                "copy",
                "-q",
                &format!("oci:{}:{tag}", img.display()),
                &format!("docker://{}/team/app:{tag}", edge.addr),
            ],
        );
        blobs
    };
    let first = push(&edge, "v1", &[1 << 20, 1000]);
    let pending = "regcore_notification_events_pending{endpoint=\"all\"}";
    // 2 layers + config + the manifest, in the store.
    eventually(30, "the first push's events to be queued", async || {
        metric(&edge, pending).await >= 4.0
    })
    .await;
    assert!(
        metric(
            &edge,
            "regcore_notification_deliveries_failed_total{endpoint=\"all\"}"
        )
        .await
            >= 1.0
    );

    // Killed (SIGKILL) with the events pending, and started again.
    let edge = edge.restart_with(opts());
    eventually(30, "the queue to be read back", async || {
        metric(&edge, pending).await >= 4.0
    })
    .await;
    let second = push(&edge, "v2", &[2 << 20]);
    eventually(30, "the second push's events to be queued", async || {
        metric(&edge, pending).await >= 7.0
    })
    .await;

    // The receiver was down 30 s; now it is up.
    let left = Duration::from_secs(30).saturating_sub(down_since.elapsed());
    tokio::time::sleep(left).await;
    let receiver = Receiver::start_on(port, true);
    eventually(60, "every event to be delivered", async || {
        metric(&edge, pending).await == 0.0
            && metric(
                &edge,
                "regcore_notification_events_pending{endpoint=\"releases\"}",
            )
            .await
                == 0.0
    })
    .await;
    let all = what(&receiver.events("/all"));
    for d in first.iter().chain(&second) {
        assert!(
            all.contains(&("push".into(), d.clone())),
            "{d} missing from {all:?}"
        );
    }
    for tag in ["v1", "v2"] {
        assert!(
            all.contains(&("push".into(), tag.into())),
            "{tag} missing from {all:?}"
        );
    }
    // In order: v1's manifest before v2's.
    let pos = |tag: &str| {
        all.iter()
            .position(|(a, k)| a == "push" && k == tag)
            .unwrap()
    };
    assert!(pos("v1") < pos("v2"));
    // The manifests-only endpoint got the two manifest pushes and nothing else.
    let releases = what(&receiver.events("/releases"));
    let mut tags: Vec<&str> = releases.iter().map(|(_, k)| k.as_str()).collect();
    tags.dedup();
    assert_eq!(tags, ["v1", "v2"], "{releases:?}");
    assert!(releases.iter().all(|(a, _)| a == "push"));
    assert!(
        metric(
            &edge,
            "regcore_notification_events_sent_total{endpoint=\"all\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_does_not_answer_holds_up_no_request() {
    if !have("skopeo") {
        eprintln!("skipped: needs skopeo");
        return;
    }
    // Holds every POST until opened: a push that waited for delivery would never finish.
    let receiver = Receiver::start_on(0, false);
    let edge = Edge::start_with(EdgeOpts {
        config: Some(config(&[(
            "slow",
            receiver.url("/slow"),
            "timeout = \"120s\"",
        )])),
        ..Default::default()
    });
    let creds = format!("{}:{}", edge.user, edge.password);
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("img");
    let blobs = make_oci_layout(&img, "v1", &[1 << 20]);
    let dest = format!("docker://{}/team/app:v1", edge.addr);
    skopeo(
        Some(&edge.cert_dir()),
        &creds,
        &["copy", "-q", &format!("oci:{}:v1", img.display()), &dest],
    );
    skopeo(
        Some(&edge.cert_dir()),
        &creds,
        &[
            "copy",
            "-q",
            &dest,
            &format!("oci:{}:v1", work.path().join("out").display()),
        ],
    );
    eventually(30, "a POST to be waiting at the receiver", async || {
        !receiver.posts().is_empty()
    })
    .await;
    assert_eq!(
        receiver.answered(),
        0,
        "the push and pull finished while no POST was answered"
    );

    // A hostile client's values are bounded before they are stored and sent on.
    let c = edge.client(false);
    let auth = common::authorization(&edge, &["repository:team/app:pull"]).await;
    let r = c
        .get(format!("{}/v2/team/app/blobs/{}", edge.url(), blobs[0]))
        .header("authorization", auth)
        .header("user-agent", "x".repeat(6000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    receiver.open();
    eventually(60, "everything to arrive", async || {
        metric(
            &edge,
            "regcore_notification_events_pending{endpoint=\"slow\"}",
        )
        .await
            == 0.0
    })
    .await;
    let events = receiver.events("/slow");
    assert!(what(&events).contains(&("push".into(), "v1".into())));
    let long = events
        .iter()
        .find(|e| {
            e["request"]["useragent"]
                .as_str()
                .is_some_and(|u| u.starts_with("xxx"))
        })
        .expect("the hostile pull's event");
    assert_eq!(long["request"]["useragent"].as_str().unwrap().len(), 256);
}
