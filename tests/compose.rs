//! `docker-compose up` of the top-level compose file, for real: the image is built from the
//! repository's Dockerfile (its `prebuilt` target, on a runtime base made by
//! `scripts/offline-base` with `docker import` from this machine's libraries, since no image can
//! be pulled), then skopeo logs in,
//! pushes and pulls through the edge over verified TLS, and everything is taken down.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_same_blobs, have, make_oci_layout, reserve_port, run};

struct Down {
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
            .args(["rmi", "-f", &self.runtime])
            .output();
    }
}

#[test]
fn docker_compose_up_push_pull_down() {
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
    let edge_bin = PathBuf::from(env!("CARGO_BIN_EXE_registry-edge"));
    let core_bin = edge_bin.with_file_name("registry-core");
    assert!(
        core_bin.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        core_bin.display()
    );
    let work = tempfile::tempdir().unwrap();
    let id = format!("regedge{}", std::process::id());
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
    let compose_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml");
    let compose = vec![
        "-f".to_owned(),
        compose_file.display().to_string(),
        "-p".to_owned(),
        id.clone(),
    ];
    let _down = Down {
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
    dc(&["up", "-d", "--build"]);
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
    assert!(dirs[0]
        .join("docker/registry/v2/repositories/composed/app/_manifests")
        .exists());
    // registry-core publishes no port: only the edge reaches it.
    let ps = dc(&["ps"]);
    assert!(!ps.contains("5001->"), "{ps}");
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
