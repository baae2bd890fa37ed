//! The web UI: a real headless Chromium (Debian's `chromium` + `chromium-driver`, through
//! WebDriver) logs in, browses what skopeo pushed, filters, opens a multi-arch index and one of
//! its platforms, deletes a tag, logs out, and is locked out after wrong passwords; plain HTTP
//! tests for CSRF, escaping, sessions across restarts, the UI turned off, and a repository of
//! 500 tags. Screenshots of each page go to `target/tmp/ui-screenshots/`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::browserless::{form_body, Browserless};
use common::{add_user, basic, have, run, sha256, Edge, EdgeOpts};
use fantoccini::{Client, ClientBuilder, Locator};

const RULES: &str = r#"
[lockout]
max_failures = 3

[[access.rules]]
repositories = ["*"]
users = ["admin", "alice"]
actions = ["pull", "push", "delete"]

[[access.rules]]
repositories = ["*"]
users = ["bob"]
actions = ["pull"]
"#;

/// A label and an environment value a hostile image author might write.
const HOSTILE: &str = "<script>alert(1)</script>";

// ---- images ----

/// Writes an OCI layout at `dir` whose `tag` is a two-platform index (linux/amd64 and
/// linux/arm64), each image with a config carrying entrypoint, cmd, env, labels, ports and
/// history (and `HOSTILE` in a label and an env value).
fn make_multiarch_layout(dir: &Path, tag: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> (String, usize) {
        let d = sha256(data);
        std::fs::write(blobs.join(&d[7..]), data).unwrap();
        (d, data.len())
    };
    let mut manifests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let tar = common::core::tar_of(&[(
            &format!("hello-{arch}"),
            &common::core::random_bytes(50_000),
        )]);
        let diff_id = sha256(&tar);
        let (layer, layer_size) = put(&common::core::gzip(&tar));
        let config = serde_json::json!({
            "architecture": arch, "os": "linux", "created": "2024-05-01T12:03:04Z",
            "config": {
                "Entrypoint": ["/bin/hello"], "Cmd": ["--serve"], "WorkingDir": "/app",
                "Env": ["PATH=/bin", format!("GREETING={HOSTILE}")],
                "Labels": {"org.opencontainers.image.title": HOSTILE, "team": "platform"},
                "ExposedPorts": {"8080/tcp": {}},
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [
                {"created": "2024-05-01T12:03:04Z", "created_by": "COPY hello /bin/hello"},
                {"created": "2024-05-01T12:03:04Z", "created_by": "CMD [\"--serve\"]", "empty_layer": true},
            ],
        })
        .to_string();
        let (config_d, config_size) = put(config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}],
        })
        .to_string();
        let (d, n) = put(manifest.as_bytes());
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": n,
            "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    })
    .to_string();
    let (d, n) = put(index.as_bytes());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": n,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), top.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// skopeo pushes the layout's `v1` (all platforms) as `repo:tag`.
fn skopeo_push(edge: &Edge, layout: &Path, repo: &str, tag: &str) {
    run(Command::new("skopeo")
        .args(["copy", "-q", "--multi-arch", "all", "--dest-cert-dir"])
        .arg(edge.cert_dir())
        .args(["--dest-creds", &format!("{}:{}", edge.user, edge.password)])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{}/{repo}:{tag}", edge.addr)));
}

async fn tags(edge: &Edge, repo: &str) -> Vec<String> {
    let v: serde_json::Value = edge
        .client(false)
        .get(format!("{}/v2/{repo}/tags/list", edge.url()))
        .header("authorization", basic(&edge.user, &edge.password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

// ---- the browser ----

/// chromedriver on a port of its choosing, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let mut child = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|r| r.trim_end_matches('.').parse::<u16>().ok())
                {
                    let _ = tx.send(p);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromedriver ready");
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A headless Chromium session that trusts the edge's CA only by being told to accept the
    /// certificate (it is the edge's own test CA).
    async fn browser(&self, lang: &str) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", format!("--lang={lang}")],
                "prefs": {"intl.accept_languages": lang},
            }),
        );
        caps.insert("acceptInsecureCerts".into(), serde_json::Value::Bool(true));
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn text_of(b: &Client, css: &str) -> String {
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn click(b: &Client, what: Locator<'_>) {
    b.find(what).await.unwrap().click().await.unwrap();
}

async fn type_into(b: &Client, id: &str, text: &str) {
    b.find(Locator::Id(id))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

async fn count(b: &Client, css: &str) -> usize {
    b.find_all(Locator::Css(css)).await.unwrap().len()
}

/// Waits until `css` matches `n` elements.
async fn wait_count(b: &Client, css: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = count(b, css).await;
        if c == n {
            return;
        }
        assert!(Instant::now() < deadline, "{css}: {c} elements, not {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn login(b: &Client, edge: &Edge, user: &str, password: &str) {
    b.goto(&format!("{}/login", edge.url())).await.unwrap();
    type_into(b, "user", user).await;
    type_into(b, "password", password).await;
    click(b, Locator::Id("login-submit")).await;
    // The answer has loaded when the password typed is no longer on the page (a new login
    // page comes with an empty field; a successful login leaves the login page).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let typed = match b.find(Locator::Id("password")).await {
            Ok(e) => e.prop("value").await.ok().flatten().unwrap_or_default(),
            Err(_) => String::new(),
        };
        if typed.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the login form was not answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn logout(b: &Client) {
    click(b, Locator::Id("logout")).await;
    b.wait()
        .for_element(Locator::Id("login-info"))
        .await
        .unwrap();
}

async fn path(b: &Client) -> String {
    b.current_url().await.unwrap().path().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_logs_in_browses_deletes_and_logs_out() {
    if !have("chromedriver") || !have("skopeo") {
        return;
    }
    let edge = Edge::start_with(EdgeOpts {
        config: Some(RULES.into()),
        ..Default::default()
    });
    add_user(&edge, "alice", "alice-pw").await;
    add_user(&edge, "bob", "bob-pw").await;
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("img");
    make_multiarch_layout(&layout, "v1");
    for (repo, tag) in [
        ("apps/web", "v1"),
        ("apps/web", "v2"),
        ("apps/api", "v1"),
        ("tools/debug", "v1"),
    ] {
        skopeo_push(&edge, &layout, repo, tag);
    }
    let driver = Driver::start();
    let b = driver.browser("en-US").await;

    // Without a session: the login page.
    b.goto(&format!("{}/", edge.url())).await.unwrap();
    assert_eq!(path(&b).await, "/login");
    shot(&b, "login").await;
    login(&b, &edge, "alice", "alice-pw").await;
    wait_count(&b, "a.repo", 3).await;
    assert_eq!(path(&b).await, "/");
    shot(&b, "repositories").await;
    // Filter as you type.
    type_into(&b, "filter", "apps").await;
    wait_count(&b, "a.repo", 2).await;
    assert_eq!(text_of(&b, "#repo-count").await, "2 repositories");

    // A repository, its index, one platform, the pull command.
    click(&b, Locator::LinkText("apps/web")).await;
    wait_count(&b, "a.tag", 2).await;
    shot(&b, "repository").await;
    click(&b, Locator::LinkText("v1")).await;
    wait_count(&b, "a.platform", 2).await;
    assert_eq!(
        text_of(&b, "#pull-tag").await,
        format!("docker pull {}/apps/web:v1", edge.addr)
    );
    shot(&b, "index").await;
    click(&b, Locator::LinkText("linux/arm64")).await;
    b.wait().for_element(Locator::Id("config")).await.unwrap();
    assert_eq!(text_of(&b, "#platform").await, "linux/arm64");
    let pull = text_of(&b, "#pull-digest").await;
    assert!(
        pull.starts_with(&format!("docker pull {}/apps/web@sha256:", edge.addr)),
        "{pull}"
    );
    assert!(text_of(&b, "#labels").await.contains(HOSTILE));
    assert!(text_of(&b, "#history")
        .await
        .contains("COPY hello /bin/hello"));
    shot(&b, "image").await;

    // Delete a tag, after a confirmation that names it.
    b.goto(&format!("{}/r/apps/web:v2", edge.url()))
        .await
        .unwrap();
    click(&b, Locator::Id("delete-tag")).await;
    let going = text_of(&b, "#going").await;
    assert!(going.contains("apps/web:v2"), "{going}");
    shot(&b, "delete").await;
    click(&b, Locator::Id("confirm-delete")).await;
    let msg = text_of(&b, "#message").await;
    assert!(msg.contains("apps/web:v2"), "{msg}");
    assert_eq!(tags(&edge, "apps/web").await, ["v1"]);
    b.goto(&format!("{}/usage", edge.url())).await.unwrap();
    wait_count(&b, "#usage tbody tr", 3).await;
    shot(&b, "usage").await;
    // At phone width.
    b.set_window_size(390, 844).await.unwrap();
    b.goto(&format!("{}/r/apps/web:v1", edge.url()))
        .await
        .unwrap();
    shot(&b, "index-phone").await;
    b.set_window_size(1280, 1000).await.unwrap();
    logout(&b).await;
    // The session is gone: back to the login.
    b.goto(&format!("{}/", edge.url())).await.unwrap();
    assert_eq!(path(&b).await, "/login");

    // A user who may only pull sees no delete button anywhere.
    login(&b, &edge, "bob", "bob-pw").await;
    wait_count(&b, "a.repo", 3).await;
    b.goto(&format!("{}/r/apps/web", edge.url())).await.unwrap();
    wait_count(&b, "a.tag", 1).await;
    assert_eq!(count(&b, "#delete-selected, input[name=tag]").await, 0);
    b.goto(&format!("{}/r/apps/web:v1", edge.url()))
        .await
        .unwrap();
    wait_count(&b, "a.platform", 2).await;
    assert_eq!(count(&b, "#delete-tag, #delete-manifest").await, 0);
    // The language switch, on every page.
    click(&b, Locator::Css("a.lang")).await;
    assert_eq!(text_of(&b, "h2").await, "拉取");
    shot(&b, "index-zh").await;
    b.goto(&format!("{}/", edge.url())).await.unwrap();
    assert_eq!(text_of(&b, "h1").await, "仓库");
    click(&b, Locator::Css("a.lang")).await;
    logout(&b).await;

    // Wrong passwords: an error each time, counted toward the lockout, after which this
    // address is refused for a while (as with Basic auth, credentials verified before still
    // pass: they are not a guess).
    for _ in 0..3 {
        login(&b, &edge, "alice", "not-her-password").await;
        assert_eq!(
            text_of(&b, "#login-error").await,
            "Wrong user name or password."
        );
    }
    shot(&b, "login-error").await;
    login(&b, &edge, "alice", "another-guess").await;
    let locked = text_of(&b, "#login-error").await;
    assert!(locked.starts_with("Too many failed logins"), "{locked}");
    assert_eq!(path(&b).await, "/login");
    shot(&b, "login-locked").await;
    // The API shares the lockout: a guess over Basic auth from this address is refused too.
    let api = edge
        .client(false)
        .get(format!("{}/v2/", edge.url()))
        .header("authorization", basic("alice", "yet-another-guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 429);
    b.close().await.unwrap();
}

// ---- HTTP ----

async fn push_layout(edge: &Edge, repo: &str, tags: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("img");
    make_multiarch_layout(&layout, "v1");
    for t in tags {
        skopeo_push(edge, &layout, repo, t);
    }
}

#[tokio::test]
async fn state_changes_need_the_csrf_token_and_labels_render_inert() {
    if !have("skopeo") {
        return;
    }
    let edge = Edge::start_with(EdgeOpts {
        config: Some(RULES.into()),
        ..Default::default()
    });
    push_layout(&edge, "apps/web", &["v1", "v2"]).await;
    let mut b = Browserless::new(&edge);
    // The login form without its token (no cookie) is refused, and nobody is logged in.
    let (status, _, _) = b
        .post(
            "/login",
            &[
                ("csrf", "x"),
                ("user", &edge.user),
                ("password", &edge.password),
            ],
        )
        .await;
    assert_eq!(status, 403);
    assert!(b.cookie("__Host-regedge").is_none());
    let csrf = b.login(&edge.user, &edge.password).await;
    // Deleting without the token, or with another one, changes nothing.
    for token in ["", "AAAAAAAAAAAAAAAAAAAAAA"] {
        let (status, _, _) = b
            .post(
                "/delete",
                &[("csrf", token), ("repo", "apps/web"), ("tag", "v2")],
            )
            .await;
        assert_eq!(status, 403);
    }
    // A form posted from another site is refused even with the token.
    let r = b
        .client
        .post(format!("{}/delete", b.base))
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("csrf", &csrf),
            ("repo", "apps/web"),
            ("tag", "v2"),
        ]));
    assert_eq!(b.send(r).await.0, 403);
    // Logout needs it too.
    let (status, _, _) = b.post("/logout", &[]).await;
    assert_eq!(status, 403);
    assert_eq!(tags(&edge, "apps/web").await, ["v1", "v2"]);
    let (status, _, page) = b
        .post(
            "/delete",
            &[("csrf", &csrf), ("repo", "apps/web"), ("tag", "v2")],
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(tags(&edge, "apps/web").await, ["v1"]);

    // What an image's author wrote is shown as text, never run.
    let (_, _, index) = b.get("/r/apps/web:v1").await;
    let child = index
        .split("href=\"/r/apps/web@")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let (status, _, page) = b.get(&format!("/r/apps/web@{child}")).await;
    assert_eq!(status, 200);
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(
        page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{page}"
    );
    assert_eq!(
        page.matches("<script").count(),
        1,
        "only the UI's own script"
    );
    // Every page is served with the CSP and no inline script.
    let r = b
        .client
        .get(format!("{}/r/apps/web:v1", b.base))
        .header("cookie", b.cookie_header())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    // Logout with the token ends the session.
    let (status, location, _) = b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_str()), (303, "/login?out=1"));
    let (status, location, _) = b.get("/").await;
    assert_eq!((status, location.as_str()), (303, "/login?next=%2F"));
}

#[tokio::test]
async fn sessions_survive_a_restart_and_tampered_ones_do_not() {
    let edge = Edge::start();
    let mut b = Browserless::new(&edge);
    b.login(&edge.user, &edge.password).await;
    let cookie = b.cookie("__Host-regedge").unwrap();
    // The generated key is kept beside the htpasswd file, readable by the edge alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(edge.path("auth/secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let edge = edge.restart_with(EdgeOpts::default());
    let mut b = Browserless::new(&edge);
    b.set_cookie("__Host-regedge", &cookie);
    let (status, _, page) = b.get("/").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("Signed in as {}", edge.user)),
        "{page}"
    );
    // Any change to the cookie, or another user's name in it, ends at the login page.
    let mut parts: Vec<String> = cookie.split('.').map(str::to_owned).collect();
    let tampered = [
        {
            let mut p = parts.clone();
            p[0] = "Ym9i".into(); // "bob"
            p.join(".")
        },
        {
            let mut p = parts.clone();
            p[1] = (p[1].parse::<u64>().unwrap() + 3600).to_string();
            p.join(".")
        },
        {
            let last = parts.last_mut().unwrap();
            let flipped = if last.starts_with('A') { "B" } else { "A" };
            last.replace_range(0..1, flipped);
            parts.join(".")
        },
        "garbage".to_owned(),
    ];
    for t in tampered {
        b.set_cookie("__Host-regedge", &t);
        let (status, location, _) = b.get("/").await;
        assert_eq!((status, location.as_str()), (303, "/login?next=%2F"), "{t}");
    }
    // A changed password ends the sessions made with the old one.
    b.set_cookie("__Host-regedge", &cookie);
    assert_eq!(b.get("/").await.0, 200);
    let (code, _, err) = edge.cli(
        &["passwd", &edge.user, "--password-stdin", "--cost", "5"],
        "a-new-password\n",
    );
    assert_eq!(code, 0, "{err}");
    common::eventually(10, "the old session ends", async || {
        b.get("/").await.0 == 303
    })
    .await;
}

#[tokio::test]
async fn with_the_ui_off_only_the_api_answers() {
    let edge = Edge::start_with(EdgeOpts::default().env("REGISTRY_EDGE_UI_ENABLED", "false"));
    let r = edge
        .client(false)
        .get(format!("{}/login", edge.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NOT_FOUND");
    assert!(!edge.path("auth/secret").exists());
}

/// A repository of 500 tags, each a different image: the page's time, cold (every manifest
/// and config read) and warm (summaries cached). Printed, not asserted.
#[tokio::test]
async fn a_repository_with_500_tags_renders() {
    let edge = Edge::start();
    let auth = basic(&edge.user, &edge.password);
    let c = edge.client(false);
    let url = edge.url();
    let config = br#"{"architecture":"amd64","os":"linux","created":"2024-05-01T12:00:00Z","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_d = sha256(config);
    let r = c
        .post(format!("{url}/v2/big/blobs/uploads/?digest={config_d}"))
        .header("authorization", &auth)
        .body(config.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let started = Instant::now();
    let tags: Vec<String> = (0..500)
        .map(|i| format!("1.{}.{}", i / 10, i % 10))
        .collect();
    futures_util::future::join_all(tags.chunks(50).map(|chunk| {
        let (c, auth, url, config_d) = (c.clone(), auth.clone(), url.clone(), config_d.clone());
        async move {
            for t in chunk {
                let m = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
                    "layers": [],
                    "annotations": {"tag": t},
                });
                let r = c
                    .put(format!("{url}/v2/big/manifests/{t}"))
                    .header("authorization", &auth)
                    .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                    .body(m.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        }
    }))
    .await;
    eprintln!("pushed 500 manifests in {:?}", started.elapsed());
    let mut b = Browserless::new(&edge);
    b.login(&edge.user, &edge.password).await;
    for (what, path) in [
        ("cold", "/r/big"),
        ("warm", "/r/big"),
        ("by version", "/r/big?sort=version"),
    ] {
        let t = Instant::now();
        let (status, _, page) = b.get(path).await;
        let took = t.elapsed();
        assert_eq!(status, 200);
        assert_eq!(page.matches("class=\"tag\"").count(), 500);
        eprintln!("500-tag repository page, {what}: {took:?}");
    }
    let (_, _, page) = b.get("/r/big?sort=version").await;
    let first = page.find(">1.49.9<").unwrap();
    let later = page.find(">1.9.9<").unwrap();
    assert!(first < later, "version order: 1.49.9 before 1.9.9");
}

/// In front of Distribution 2.8 the UI reads through the upstream's API: the same pages.
#[tokio::test]
async fn the_ui_in_front_of_distribution() {
    if !have("docker-registry") || !have("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dist = common::Distribution::start(&dir.path().join("data"), dir.path());
    let edge = Edge::start_with(EdgeOpts::default().env(
        "REGISTRY_EDGE_UPSTREAM_URLS",
        &format!("http://{}", dist.addr),
    ));
    push_layout(&edge, "apps/web", &["v1"]).await;
    let mut b = Browserless::new(&edge);
    b.login(&edge.user, &edge.password).await;
    let (_, _, page) = b.get("/").await;
    assert!(page.contains("href=\"/r/apps/web\""), "{page}");
    let (_, _, page) = b.get("/r/apps/web").await;
    assert!(page.contains("linux/amd64, linux/arm64"), "{page}");
    let (status, _, index) = b.get("/r/apps/web:v1").await;
    assert_eq!(status, 200);
    let child = index
        .split("href=\"/r/apps/web@")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let (status, _, page) = b.get(&format!("/r/apps/web@{child}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("COPY hello /bin/hello"), "{page}");
    // Storage use is the embedded registry's alone.
    let (status, _, page) = b.get("/usage").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("only when the registry runs inside the edge"),
        "{page}"
    );
}

/// 10,000 repositories (written straight into the storage layout): the list pages and the
/// filter (the catalog is read once and reused for a few seconds). Times printed, not
/// asserted; the UI's requests are counted in the metrics.
#[tokio::test]
async fn ten_thousand_repositories_page_and_filter() {
    if common::core::s3_mode() {
        return;
    }
    let edge = Edge::start();
    // One image, linked into 10,000 repositories as registry:2 would have stored it.
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_d = sha256(config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
        "layers": [],
    })
    .to_string();
    let manifest_d = sha256(manifest.as_bytes());
    let v2 = edge.path("data/docker/registry/v2");
    for (d, bytes) in [(&config_d, &config[..]), (&manifest_d, manifest.as_bytes())] {
        let hex = &d[7..];
        let p = v2.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("data"), bytes).unwrap();
    }
    let started = Instant::now();
    for i in 0..10_000 {
        let repo = v2.join(format!("repositories/team{}/app{i}", i % 100));
        let m = repo.join(format!("_manifests/revisions/sha256/{}", &manifest_d[7..]));
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("link"), &manifest_d).unwrap();
        let t = repo.join("_manifests/tags/latest/current");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("link"), &manifest_d).unwrap();
        let l = repo.join(format!("_layers/sha256/{}", &config_d[7..]));
        std::fs::create_dir_all(&l).unwrap();
        std::fs::write(l.join("link"), &config_d).unwrap();
    }
    eprintln!("wrote 10,000 repositories in {:?}", started.elapsed());
    let mut b = Browserless::new(&edge);
    b.login(&edge.user, &edge.password).await;
    for (what, path, rows) in [
        ("first page (the catalog read)", "/", 50),
        ("first page again", "/", 50),
        ("page 100", "/?page=100", 50),
        ("last page", "/?page=200", 50),
        ("filter team7/", "/?q=team7%2F", 50),
        ("filter app9999", "/?q=app9999", 1),
    ] {
        let t = Instant::now();
        let (status, _, page) = b.get(path).await;
        let took = t.elapsed();
        assert_eq!(status, 200);
        assert_eq!(page.matches("class=\"repo\"").count(), rows, "{what}");
        eprintln!("10,000 repositories, {what}: {took:?}");
    }
    let (_, _, page) = b.get("/").await;
    assert!(page.contains("10000 repositories"), "{page}");
    assert!(page.contains("Page 1 of 200"));
    let metrics = edge
        .client(false)
        .get(format!("http://{}/metrics", edge.metrics_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("regedge_http_requests_total{") && l.contains("route=\"ui\"")),
        "{metrics}"
    );
}
