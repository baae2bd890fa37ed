//! Real clients through the edge over verified TLS (the generated CA, never
//! `--tls-verify=false`): skopeo, podman, the Docker engine, and Debian's `docker-registry`
//! (Distribution 2.8) as the upstream instead of the embedded registry-core.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_same_blobs, have, make_oci_layout, run, Distribution, Edge, EdgeOpts};

fn skopeo(edge: &Edge, authfile: &Path, args: &[&str]) -> String {
    let certs = edge.cert_dir();
    let mut cmd = Command::new("skopeo");
    cmd.arg(args[0]);
    if args[0] == "copy" {
        cmd.arg("--src-cert-dir")
            .arg(&certs)
            .arg("--dest-cert-dir")
            .arg(&certs);
        cmd.arg("--src-authfile")
            .arg(authfile)
            .arg("--dest-authfile")
            .arg(authfile);
    } else {
        cmd.arg("--cert-dir")
            .arg(&certs)
            .arg("--authfile")
            .arg(authfile);
    }
    run(cmd.args(&args[1..]))
}

fn login(edge: &Edge, authfile: &Path, tool: &str, password: &str) -> std::process::Output {
    Command::new(tool)
        .arg("login")
        .arg("--cert-dir")
        .arg(edge.cert_dir())
        .arg("--authfile")
        .arg(authfile)
        .args(["-u", &edge.user, "-p", password, &edge.addr])
        .output()
        .unwrap()
}

/// skopeo against an edge: login (wrong, then right), push, pull, inspect, list-tags, delete.
fn skopeo_round_trip(edge: &Edge, repo: &str) {
    let work = tempfile::tempdir().unwrap();
    let authfile = work.path().join("auth.json");
    let bad = login(edge, &authfile, "skopeo", "wrong-password");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("invalid username/password"), "{err}");
    let ok = login(edge, &authfile, "skopeo", &edge.password);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let img = work.path().join("img");
    make_oci_layout(&img, "v1", &[4 << 20, 100_000]);
    let dest = format!("docker://{}/{repo}:v1", edge.addr);
    skopeo(
        edge,
        &authfile,
        &["copy", "-q", &format!("oci:{}:v1", img.display()), &dest],
    );
    let out = work.path().join("out");
    skopeo(
        edge,
        &authfile,
        &["copy", "-q", &dest, &format!("oci:{}:v1", out.display())],
    );
    assert_same_blobs(&img, &out);
    let inspect: serde_json::Value =
        serde_json::from_str(&skopeo(edge, &authfile, &["inspect", &dest])).unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
    let tags = skopeo(
        edge,
        &authfile,
        &["list-tags", &format!("docker://{}/{repo}", edge.addr)],
    );
    assert!(tags.contains("\"v1\""), "{tags}");
    skopeo(edge, &authfile, &["delete", &dest]);
    let gone = Command::new("skopeo")
        .args(["inspect", "--cert-dir"])
        .arg(edge.cert_dir())
        .arg("--authfile")
        .arg(&authfile)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(!gone.status.success());
}

#[test]
fn skopeo_through_the_edge() {
    if !have("skopeo") {
        return;
    }
    let edge = Edge::start();
    skopeo_round_trip(&edge, "team/app");
}

#[test]
fn podman_through_the_edge() {
    if !have("podman") || !have("skopeo") {
        return;
    }
    let edge = Edge::start();
    let work = tempfile::tempdir().unwrap();
    let authfile = work.path().join("auth.json");
    let bad = login(&edge, &authfile, "podman", "nope");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid username/password"));
    assert!(login(&edge, &authfile, "podman", &edge.password)
        .status
        .success());
    let img = work.path().join("img");
    make_oci_layout(&img, "v1", &[2 << 20]);
    skopeo(
        &edge,
        &authfile,
        &[
            "copy",
            "-q",
            &format!("oci:{}:v1", img.display()),
            &format!("docker://{}/pm/base:v1", edge.addr),
        ],
    );
    let podman = |args: &[&str]| {
        let root = work.path().join("podman");
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(root.join("root"))
            .arg("--runroot")
            .arg(root.join("run"));
        cmd.args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ]);
        cmd.arg(args[0]);
        if matches!(args[0], "pull" | "push") {
            cmd.arg("--cert-dir")
                .arg(edge.cert_dir())
                .arg("--authfile")
                .arg(&authfile);
        }
        run(cmd.args(&args[1..]))
    };
    podman(&["pull", "-q", &format!("{}/pm/base:v1", edge.addr)]);
    podman(&[
        "tag",
        &format!("{}/pm/base:v1", edge.addr),
        &format!("{}/pm/copy:v2", edge.addr),
    ]);
    podman(&["push", "-q", &format!("{}/pm/copy:v2", edge.addr)]);
    let a: serde_json::Value = serde_json::from_str(&skopeo(
        &edge,
        &authfile,
        &[
            "inspect",
            "--config",
            &format!("docker://{}/pm/base:v1", edge.addr),
        ],
    ))
    .unwrap();
    let b: serde_json::Value = serde_json::from_str(&skopeo(
        &edge,
        &authfile,
        &[
            "inspect",
            "--config",
            &format!("docker://{}/pm/copy:v2", edge.addr),
        ],
    ))
    .unwrap();
    assert_eq!(a["rootfs"], b["rootfs"]);
}

#[test]
fn distribution_2_8_behind_the_edge() {
    if !have("skopeo") || !have("docker-registry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start(&dir.path().join("data"), dir.path());
    let edge = Edge::start_with(EdgeOpts::default().env(
        "REGISTRY_EDGE_UPSTREAM_URLS",
        &format!("[\"http://{}\"]", dist.addr),
    ));
    skopeo_round_trip(&edge, "behind/dist");
    // Distribution builds absolute Locations from the forwarded headers: https and the edge's host.
    let auth = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::authorization(
            &edge,
            &["repository:behind/dist:pull,push"],
        ));
    let out = run(Command::new("curl")
        .args(["-sS", "-i", "-X", "POST", "--cacert"])
        .arg(edge.path("certs/ca.crt"))
        .args(["-H", &format!("Authorization: {auth}")])
        .arg(format!("{}/v2/behind/dist/blobs/uploads/", edge.url())));
    let location = out
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("location:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        location.contains(&format!(
            "https://{}/v2/behind/dist/blobs/uploads/",
            edge.addr
        )),
        "{location}"
    );
    assert_eq!(
        out.matches("Docker-Distribution-Api-Version").count()
            + out.matches("docker-distribution-api-version").count(),
        1,
        "{out}"
    );
}

#[test]
fn docker_engine_login_push_pull() {
    if !common::docker_engine() {
        return;
    }
    let edge = Edge::start();
    let image = format!("{}/docker/scratch:v1", edge.addr);
    let _trust = common::DockerTrust::new(&edge, &[&image]);
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("docker-config");
    let docker = |args: &[&str]| {
        run(Command::new("docker")
            .arg("--config")
            .arg(&config)
            .args(args))
    };
    let bad = Command::new("docker")
        .arg("--config")
        .arg(&config)
        .args(["login", "-u", &edge.user, "-p", "wrong", &edge.addr])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr).to_lowercase();
    assert!(
        err.contains("unauthorized") || err.contains("invalid username/password"),
        "{err}"
    );
    docker(&["login", "-u", &edge.user, "-p", &edge.password, &edge.addr]);
    // An image built locally: a root filesystem tarball imported as an image.
    let tarball = work.path().join("rootfs.tar");
    std::fs::write(
        &tarball,
        common::core::tar_of(&[
            ("hello.txt", b"hello from registry-edge\n"),
            ("data.bin", &common::random_bytes(1 << 20)),
        ]),
    )
    .unwrap();
    docker(&["import", &tarball.display().to_string(), &image]);
    let layers_before = docker(&["image", "inspect", "-f", "{{json .RootFS.Layers}}", &image]);
    let pushed = docker(&["push", &image]);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");
    docker(&["rmi", &image]);
    docker(&["pull", &image]);
    let layers_after = docker(&["image", "inspect", "-f", "{{json .RootFS.Layers}}", &image]);
    assert_eq!(layers_before, layers_after);
}

/// skopeo with no login sends empty Basic credentials (`Og==`): it gets 401 "authentication
/// required" rather than "malformed Authorization header", and
/// however often it tries, the address is not locked out for the real login that follows.
#[test]
fn skopeo_without_login_is_asked_to_log_in_and_never_locked_out() {
    if !have("skopeo") {
        return;
    }
    let edge = Edge::start();
    let dir = tempfile::tempdir().unwrap();
    let authfile = dir.path().join("auth.json");
    std::fs::write(&authfile, "{}").unwrap();
    for _ in 0..8 {
        let out = Command::new("skopeo")
            .args(["inspect", "--cert-dir"])
            .arg(edge.cert_dir())
            .arg("--authfile")
            .arg(&authfile)
            .arg(format!("docker://{}/anon/app:v1", edge.addr))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        // skopeo shows the registry's UNAUTHORIZED ("authentication required") as "unauthorized".
        assert!(
            err.contains("unauthorized") || err.contains("authentication required"),
            "{err}"
        );
        assert!(
            !err.contains("malformed") && !err.contains("too many"),
            "{err}"
        );
    }
    let out = login(&edge, &authfile, "skopeo", &edge.password);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
