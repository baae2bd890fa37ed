//! Token mode (`[auth] mode = "token"`) and anonymous access: the token endpoint and the Bearer
//! check over HTTP (challenges, scopes, rules, forged, expired and altered tokens, the JWKS,
//! OAuth2 grants, lockout, metrics), then the real clients: the Docker engine (login, push, pull,
//! an anonymous pull of a public repository, a refused anonymous push), skopeo, podman and oras;
//! and anonymous pulls in Basic mode.

mod common;

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::{
    add_user, basic, eventually, fetch_token, have, make_oci_layout, run, sample, sha256, Edge,
    EdgeOpts,
};
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{json, Value};

/// Public pulls for anyone; the first user (admin) may do everything; alice may pull and push
/// in team-a/*.
const RULES: &str = r#"
[[access.rules]]
repositories = ["public/*"]
users = ["anonymous"]
actions = ["pull"]

[[access.rules]]
repositories = ["*"]
users = ["admin"]
actions = ["pull", "push", "delete"]

[[access.rules]]
repositories = ["team-a/*"]
users = ["alice"]
actions = ["pull", "push"]
"#;

fn token_edge() -> Edge {
    let config = format!("[auth]\nmode = \"token\"\n\n[lockout]\nmax_failures = 3\n{RULES}");
    Edge::start_with(EdgeOpts {
        config: Some(config),
        ..Default::default()
    })
}

fn bearer(token: &Value) -> String {
    format!("Bearer {}", token["token"].as_str().unwrap())
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&B64.decode(h).unwrap()).unwrap()
}

/// The edge's signing key, read from its file.
fn edge_key(edge: &Edge) -> Vec<u8> {
    let pem = std::fs::read(edge.path("auth/token.key")).unwrap();
    match rustls_pemfile::private_key(&mut pem.as_slice())
        .unwrap()
        .unwrap()
    {
        rustls_pki_types::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        other => panic!("unexpected key kind {other:?}"),
    }
}

/// A JWS of `claims` with `header`, signed by the PKCS#8 key `key`.
fn sign(key: &[u8], header: &Value, claims: &Value) -> String {
    let rng = ring::rand::SystemRandom::new();
    let pair =
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, key, &rng).unwrap();
    let msg = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = pair.sign(&rng, msg.as_bytes()).unwrap();
    format!("{msg}.{}", B64.encode(sig.as_ref()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn challenge_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Pushes a config, a layer and a manifest to `repo:tag` with `auth`.
async fn push_image(edge: &Edge, auth: &str, repo: &str, tag: &str) -> String {
    let c = edge.client(false);
    let mut digests = Vec::new();
    for data in [&b"{}"[..], &common::random_bytes(3000)] {
        let d = sha256(data);
        let r = c
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?digest={d}",
                edge.url()
            ))
            .header("authorization", auth)
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        digests.push(d);
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0], "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digests[1], "size": 3000}],
    })
    .to_string();
    let r = c
        .put(format!("{}/v2/{repo}/manifests/{tag}", edge.url()))
        .header("authorization", auth)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    sha256(manifest.as_bytes())
}

#[tokio::test]
async fn challenges_tokens_and_what_they_grant() {
    let edge = token_edge();
    let c = edge.client(false);
    let url = edge.url();
    let realm = format!("https://{}/token", edge.addr);

    // Without a token: 401 with the challenge naming the scope the request needs.
    let r = c.get(format!("{url}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        challenge_of(&r),
        format!("Bearer realm=\"{realm}\",service=\"registry-edge\"")
    );
    assert_eq!(common::error_code(r).await, "UNAUTHORIZED");
    let r = c
        .head(format!("{url}/v2/public/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert!(
        challenge_of(&r).ends_with(",scope=\"repository:public/app:pull\""),
        "{}",
        challenge_of(&r)
    );
    let r = c
        .post(format!(
            "{url}/v2/team-a/x/blobs/uploads/?mount={}&from=public/app",
            sha256(b"x")
        ))
        .send()
        .await
        .unwrap();
    assert!(
        challenge_of(&r)
            .contains("scope=\"repository:team-a/x:pull,push repository:public/app:pull\""),
        "{}",
        challenge_of(&r)
    );
    let r = c.get(format!("{url}/v2/_catalog")).send().await.unwrap();
    assert!(challenge_of(&r).contains("scope=\"registry:catalog:*\""));
    // Basic credentials are not a token.
    let r = c
        .get(format!("{url}/v2/"))
        .header("authorization", basic(&edge.user, &edge.password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The admin's token: what was asked and allowed, as Distribution's claims.
    let admin = (edge.user.as_str(), edge.password.as_str());
    let t = fetch_token(&edge, Some(admin), &["repository:public/app:pull,push"]).await;
    assert_eq!(t["token"], t["access_token"]);
    assert_eq!(t["expires_in"], 300);
    assert!(t["issued_at"].as_str().unwrap().ends_with('Z'), "{t}");
    assert!(t.get("refresh_token").is_none(), "only with offline_token");
    let token = t["token"].as_str().unwrap();
    let claims = claims_of(token);
    assert_eq!(claims["iss"], "registry-edge");
    assert_eq!(claims["aud"], "registry-edge");
    assert_eq!(claims["sub"], "admin");
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "public/app", "actions": ["pull", "push"]}])
    );
    for k in ["exp", "nbf", "iat", "jti"] {
        assert!(claims.get(k).is_some(), "{k} in {claims}");
    }
    let header = header_of(token);
    assert_eq!(header["alg"], "ES256");
    let admin_auth = bearer(&t);
    let digest = push_image(&edge, &admin_auth, "public/app", "v1").await;
    let r = c
        .get(format!("{url}/v2/"))
        .header("authorization", &admin_auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The JWKS holds the key that verifies the token, under the token's kid.
    let r = c
        .get(format!("{url}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let jwks: Value = r.json().await.unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kid"], header["kid"]);
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    let mut point = vec![4u8];
    point.extend(B64.decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(B64.decode(jwk["y"].as_str().unwrap()).unwrap());
    let (signed, sig) = token.rsplit_once('.').unwrap();
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(signed.as_bytes(), &B64.decode(sig).unwrap())
        .expect("the JWKS verifies the token");
    // The key file is the owner's alone, and the JWKS is its public half.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(edge.path("auth/token.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let rng = ring::rand::SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &edge_key(&edge),
        &rng,
    )
    .unwrap();
    assert_eq!(pair.public_key().as_ref(), point.as_slice());

    // An anonymous token: pull of public/* only, whatever was asked.
    let anon = fetch_token(
        &edge,
        None,
        &[
            "repository:public/app:pull,push,delete",
            "repository:private/x:pull",
        ],
    )
    .await;
    let anon_claims = claims_of(anon["token"].as_str().unwrap());
    assert_eq!(anon_claims["sub"], "");
    assert_eq!(
        anon_claims["access"],
        json!([{"type": "repository", "name": "public/app", "actions": ["pull"]}])
    );
    let anon_auth = bearer(&anon);
    let r = c
        .get(format!("{url}/v2/public/app/manifests/{digest}"))
        .header("authorization", &anon_auth)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An anonymous push: asked to log in, with the scope it needs.
    let r = c
        .post(format!("{url}/v2/public/app/blobs/uploads/"))
        .header("authorization", &anon_auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let ch = challenge_of(&r);
    assert!(
        ch.contains("scope=\"repository:public/app:pull,push\""),
        "{ch}"
    );
    assert!(ch.contains("error=\"insufficient_scope\""), "{ch}");

    // A token for repository A does not read repository B, though the rules would allow it:
    // the client is told to get a token that covers B.
    push_image(
        &edge,
        &bearer(&fetch_token(&edge, Some(admin), &["repository:b:pull,push"]).await),
        "b",
        "v1",
    )
    .await;
    let r = c
        .get(format!("{url}/v2/b/manifests/v1"))
        .header("authorization", &admin_auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let ch = challenge_of(&r);
    assert!(
        ch.contains("scope=\"repository:b:pull\"") && ch.contains("insufficient_scope"),
        "{ch}"
    );
    // A user the rules do not allow is told no (403), whatever the token says.
    add_user(&edge, "alice", "alice-password").await;
    let alice = fetch_token(
        &edge,
        Some(("alice", "alice-password")),
        &["repository:team-a/app:*", "repository:b:pull"],
    )
    .await;
    assert_eq!(
        claims_of(alice["token"].as_str().unwrap())["access"],
        json!([{"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}])
    );
    let r = c
        .get(format!("{url}/v2/b/manifests/v1"))
        .header("authorization", bearer(&alice))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(common::error_code(r).await, "DENIED");
    push_image(&edge, &bearer(&alice), "team-a/app", "v1").await;

    // The catalog: what each may pull, with the catalog scope.
    let cat = async |t: &Value| -> Value {
        let r = c
            .get(format!("{url}/v2/_catalog"))
            .header("authorization", bearer(t))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    };
    let anon_cat = fetch_token(&edge, None, &["registry:catalog:*"]).await;
    assert_eq!(cat(&anon_cat).await["repositories"], json!(["public/app"]));
    let admin_cat = fetch_token(&edge, Some(admin), &["registry:catalog:*"]).await;
    assert_eq!(
        cat(&admin_cat).await["repositories"],
        json!(["b", "public/app", "team-a/app"])
    );
    let r = c
        .get(format!("{url}/v2/_catalog"))
        .header("authorization", &admin_auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no catalog scope in that token");

    // Forged, altered, expired and foreign tokens: 401 with a fresh challenge.
    let key = edge_key(&edge);
    let base = |exp: u64| {
        json!({
            "iss": "registry-edge", "sub": "admin", "aud": "registry-edge",
            "exp": exp, "nbf": now() - 10, "iat": now() - 10, "jti": "x",
            "access": [{"type": "repository", "name": "b", "actions": ["pull"]}],
        })
    };
    let good = sign(&key, &header, &base(now() + 60));
    let get_b = async |auth: &str| {
        c.get(format!("{url}/v2/b/manifests/v1"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(get_b(&format!("Bearer {good}")).await.status(), 200);
    let expired = sign(&key, &header, &base(now() - 120));
    let mut other_aud = base(now() + 60);
    other_aud["aud"] = "another-service".into();
    let mut other_iss = base(now() + 60);
    other_iss["iss"] = "someone-else".into();
    let other_key = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let foreign = sign(other_key.as_ref(), &header, &base(now() + 60));
    let (h, rest) = good.split_once('.').unwrap();
    let (_, s) = rest.split_once('.').unwrap();
    let mut wider = base(now() + 60);
    wider["access"][0]["actions"] = json!(["pull", "push", "delete"]);
    let altered = format!("{h}.{}.{s}", B64.encode(wider.to_string()));
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(base(now() + 60).to_string())
    );
    for (what, token, message) in [
        ("expired", expired, "expired"),
        (
            "another audience",
            sign(&key, &header, &other_aud),
            "another service",
        ),
        (
            "another issuer",
            sign(&key, &header, &other_iss),
            "someone else",
        ),
        ("another key", foreign, "not signed by this registry"),
        ("altered claims", altered, "not signed by this registry"),
        ("alg none", none, "not signed by this registry"),
        ("garbage", "not-a-jwt".into(), "malformed"),
    ] {
        let r = get_b(&format!("Bearer {token}")).await;
        assert_eq!(r.status(), 401, "{what}");
        let ch = challenge_of(&r);
        assert!(
            ch.starts_with(&format!("Bearer realm=\"{realm}\"")) && ch.contains("invalid_token"),
            "{what}: {ch}"
        );
        let body: Value = r.json().await.unwrap();
        let msg = body["errors"][0]["message"].as_str().unwrap();
        assert!(msg.contains(message), "{what}: {msg}");
    }

    // OAuth2: the password grant with offline access gives a refresh token; the refresh
    // grant gives tokens for other scopes; a changed password ends the refresh token.
    let post = async |form: &[(&str, &str)]| {
        c.post(format!("{url}/token"))
            .form(form)
            .send()
            .await
            .unwrap()
    };
    let r = post(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "alice-password"),
        ("service", "registry-edge"),
        ("client_id", "test"),
        ("access_type", "offline"),
        ("scope", "repository:team-a/app:pull"),
    ])
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let t: Value = r.json().await.unwrap();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(t["scope"], "repository:team-a/app:pull");
    let r = get_b(&format!("Bearer {refresh}")).await;
    assert_eq!(r.status(), 401, "a refresh token is no access token");
    let r = post(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("service", "registry-edge"),
        ("client_id", "test"),
        ("scope", "repository:team-a/app:pull,push"),
    ])
    .await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(
        claims_of(t["access_token"].as_str().unwrap())["access"][0]["actions"],
        json!(["pull", "push"])
    );
    add_user(&edge, "alice", "new-password").await;
    let r = post(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    // Access tokens already handed out run their (short) course.
    let r = c
        .get(format!("{url}/v2/team-a/app/manifests/v1"))
        .header("authorization", bearer(&t))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a password change leaves access tokens");

    // Bad requests to the token endpoint.
    let bad_get = async |query: &str| {
        let r = c.get(format!("{url}/token?{query}")).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, body["error"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(
        bad_get("service=other").await,
        (400, "invalid_request".to_owned())
    );
    assert_eq!(
        bad_get("scope=repository:UPPER:pull").await,
        (400, "invalid_scope".to_owned())
    );
    let many = (0..40)
        .map(|i| format!("scope=repository:r{i}:pull"))
        .collect::<Vec<_>>()
        .join("&");
    assert_eq!(bad_get(&many).await, (400, "invalid_scope".to_owned()));
    let r = post(&[("grant_type", "client_credentials")]).await;
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{url}/token"))
        .body("{}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = c.put(format!("{url}/token")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // Wrong passwords: 401, then the address is locked out (429) like Basic logins.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = c
            .get(format!("{url}/token?service=registry-edge"))
            .header("authorization", basic("admin", "wrong"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses[0], 401, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    // Counted.
    let m = edge.metrics_text().await;
    let at_least = |series: &str, n: f64| {
        let v = sample(&m, series).unwrap_or(0.0);
        assert!(v >= n, "{series} = {v}\n{m}");
    };
    at_least("regedge_tokens_issued_total{kind=\"anonymous\"}", 2.0);
    at_least("regedge_tokens_issued_total{kind=\"get\"}", 4.0);
    at_least("regedge_tokens_issued_total{kind=\"refresh\"}", 1.0);
    at_least("regedge_tokens_issued_total{kind=\"refresh_token\"}", 1.0);
    at_least(
        "regedge_token_requests_refused_total{error=\"invalid_grant\"}",
        4.0,
    );
    at_least(
        "regedge_token_requests_refused_total{error=\"too_many_requests\"}",
        1.0,
    );
    at_least("regedge_token_verifications_total{result=\"ok\"}", 5.0);
    at_least("regedge_token_verifications_total{result=\"expired\"}", 1.0);
    at_least(
        "regedge_token_verifications_total{result=\"bad_signature\"}",
        3.0,
    );
    at_least("regedge_token_verifications_total{result=\"missing\"}", 4.0);
    at_least("regedge_auth_attempts_total{result=\"locked_out\"}", 1.0);
}

/// Two edges given one key file accept each other's tokens; a restart keeps the key.
#[tokio::test]
async fn edges_sharing_the_key_accept_each_others_tokens() {
    let a = token_edge();
    let key = a.path("auth/token.key");
    let config = format!(
        "[auth]\nmode = \"token\"\ntoken_key = {:?}\n{RULES}",
        key.display().to_string()
    );
    let b = Edge::start_with(EdgeOpts {
        config: Some(config),
        ..Default::default()
    });
    let t = fetch_token(&b, None, &["repository:public/x:pull"]).await;
    let r = a
        .client(false)
        .get(format!("{}/v2/public/x/tags/list", a.url()))
        .header("authorization", bearer(&t))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "accepted, and no such repository");
    assert_eq!(common::error_code(r).await, "NAME_UNKNOWN");
    let kid = header_of(t["token"].as_str().unwrap())["kid"].clone();
    let a = a.restart_with(EdgeOpts::default().env("REGISTRY_EDGE_AUTH_MODE", "token"));
    let jwks: Value = a
        .client(false)
        .get(format!("{}/.well-known/jwks.json", a.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], kid, "the key survives a restart");
}

/// A broken key file stops the start, naming it.
#[test]
fn a_bad_key_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("auth")).unwrap();
    std::fs::write(dir.path().join("auth/token.key"), "garbage").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .current_dir(dir.path())
        .env("REGISTRY_EDGE_AUTH_MODE", "token")
        .env("REGISTRY_EDGE_SERVER_LISTEN", "127.0.0.1:0")
        .env("REGISTRY_EDGE_METRICS_LISTEN", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth/token.key") && err.contains("PKCS#8"),
        "{err}"
    );
    for (key, value, says) in [
        ("REGISTRY_EDGE_AUTH_MODE", "jwt", "auth.mode"),
        ("REGISTRY_EDGE_AUTH_TOKEN_TTL", "10s", "auth.token_ttl"),
        ("REGISTRY_EDGE_AUTH_SERVICE", "a\"b", "auth.service"),
        (
            "REGISTRY_EDGE_AUTH_TOKEN_REALM",
            "ftp://x/token",
            "auth.token_realm",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_registry-edge"))
            .current_dir(dir.path())
            .args(["check"])
            .env("REGISTRY_EDGE_AUTH_MODE", "token")
            .env(key, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{key}={value}: {err}");
    }
}

/// The Docker engine in token mode: login (it keeps a refresh token, not the password), push,
/// pull; after logout, a pull of a public repository works and a push is refused.
#[test]
fn docker_in_token_mode_pulls_public_images_without_login() {
    if !common::docker_engine() {
        return;
    }
    let edge = token_edge();
    let image = format!("{}/public/scratch:v1", edge.addr);
    let private = format!("{}/private/scratch:v1", edge.addr);
    let _trust = common::DockerTrust::new(&edge, &[&image, &private]);
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("docker-config");
    let docker_out = |args: &[&str]| {
        Command::new("docker")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let docker = |args: &[&str]| {
        run(Command::new("docker")
            .arg("--config")
            .arg(&config)
            .args(args))
    };
    let bad = docker_out(&["login", "-u", &edge.user, "-p", "wrong", &edge.addr]);
    assert!(!bad.status.success());
    docker(&["login", "-u", &edge.user, "-p", &edge.password, &edge.addr]);
    let stored = std::fs::read_to_string(config.join("config.json")).unwrap();
    assert!(
        stored.contains("identitytoken"),
        "docker keeps the refresh token: {stored}"
    );
    let tarball = work.path().join("rootfs.tar");
    std::fs::write(
        &tarball,
        common::core::tar_of(&[("hello.txt", b"hello, token mode\n")]),
    )
    .unwrap();
    docker(&["import", &tarball.display().to_string(), &image]);
    docker(&["tag", &image, &private]);
    assert!(docker(&["push", &image]).contains("digest: sha256:"));
    assert!(docker(&["push", &private]).contains("digest: sha256:"));
    docker(&["rmi", &image, &private]);
    docker(&["pull", &image]);
    docker(&["logout", &edge.addr]);
    docker(&["rmi", &image]);
    // No login: the public image pulls, the private one and any push are refused.
    docker(&["pull", &image]);
    let denied = docker_out(&["pull", &private]);
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr).to_lowercase();
    // Docker words an insufficient scope as "denied", as it does for Docker Hub.
    assert!(
        err.contains("access denied") || err.contains("authentication required"),
        "{err}"
    );
    let push = docker_out(&["push", &image]);
    assert!(!push.status.success(), "an anonymous push is refused");
    let text = String::from_utf8_lossy(&push.stderr).to_lowercase()
        + &String::from_utf8_lossy(&push.stdout).to_lowercase();
    assert!(
        text.contains("unauthorized") || text.contains("authentication required"),
        "{text}"
    );
}

/// skopeo, podman and oras in token mode, logged in and anonymous.
#[tokio::test]
async fn skopeo_podman_and_oras_in_token_mode() {
    if !have("skopeo") || !have("podman") || !have("python3") {
        return;
    }
    let edge = token_edge();
    let work = tempfile::tempdir().unwrap();
    let authfile = work.path().join("auth.json");
    let certs = edge.cert_dir();
    let login = |tool: &str, password: &str| {
        Command::new(tool)
            .arg("login")
            .arg("--cert-dir")
            .arg(&certs)
            .arg("--authfile")
            .arg(&authfile)
            .args(["-u", &edge.user, "-p", password, &edge.addr])
            .output()
            .unwrap()
    };
    let bad = login("skopeo", "wrong");
    assert!(!bad.status.success());
    let ok = login("skopeo", &edge.password);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let layout = work.path().join("img");
    make_oci_layout(&layout, "v1", &[4000, 1 << 20]);
    let copy = |auth: &Path, src: &str, dst: &str| {
        Command::new("skopeo")
            .args(["copy", "-q", "--src-cert-dir"])
            .arg(&certs)
            .arg("--dest-cert-dir")
            .arg(&certs)
            .arg("--src-authfile")
            .arg(auth)
            .arg("--dest-authfile")
            .arg(auth)
            .args([src, dst])
            .output()
            .unwrap()
    };
    let src = format!("oci:{}:v1", layout.display());
    for repo in ["public/app", "private/app"] {
        let out = copy(
            &authfile,
            &src,
            &format!("docker://{}/{repo}:v1", edge.addr),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Anonymous: an empty authfile pulls public/app, not private/app, and cannot push.
    let anon = work.path().join("anon.json");
    std::fs::write(&anon, "{}").unwrap();
    let back = work.path().join("back");
    let out = copy(
        &anon,
        &format!("docker://{}/public/app:v1", edge.addr),
        &format!("oci:{}:v1", back.display()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::assert_same_blobs(&layout, &back);
    let out = copy(
        &anon,
        &format!("docker://{}/private/app:v1", edge.addr),
        &format!("oci:{}:v2", back.display()),
    );
    assert!(!out.status.success());
    let out = copy(
        &anon,
        &src,
        &format!("docker://{}/public/mine:v1", edge.addr),
    );
    assert!(!out.status.success(), "an anonymous push is refused");

    // podman, as root with vfs storage: pull with the login, push a copy.
    let storage = work.path().join("storage");
    let podman = |args: &[&str]| {
        Command::new("podman")
            .args(["--root"])
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let certs_s = certs.display().to_string();
    let auth_s = authfile.display().to_string();
    let pulled = podman(&[
        "pull",
        "--cert-dir",
        &certs_s,
        "--authfile",
        &auth_s,
        &format!("{}/private/app:v1", edge.addr),
    ]);
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let pushed = podman(&[
        "push",
        "--cert-dir",
        &certs_s,
        "--authfile",
        &auth_s,
        &format!("{}/private/app:v1", edge.addr),
        &format!("docker://{}/private/podman:v1", edge.addr),
    ]);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    // oras (Python): its token flow with a login, then anonymously.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/oras_token.py");
    let out = run(Command::new("python3")
        .arg(script)
        .arg(&edge.addr)
        .arg(edge.path("certs/ca.crt"))
        .args([&edge.user, &edge.password]));
    assert!(out.contains("oras: pushed"), "{out}");
}

/// Basic mode: clients that send no credentials pull what the rules give `anonymous`; anything
/// else still asks them to log in, and `/v2/` still needs a login (docker's login depends on it).
#[tokio::test]
async fn anonymous_pull_in_basic_mode() {
    let edge = Edge::start_with(EdgeOpts {
        config: Some(RULES.to_owned()),
        ..Default::default()
    });
    let c = edge.client(false);
    let url = edge.url();
    let auth = basic(&edge.user, &edge.password);
    let digest = push_image(&edge, &auth, "public/app", "v1").await;
    push_image(&edge, &auth, "private/app", "v1").await;
    let get = async |path: &str| {
        c.get(format!("{url}{path}"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap()
    };
    assert_eq!(get("/v2/public/app/manifests/v1").await.status(), 200);
    assert_eq!(
        get(&format!("/v2/public/app/manifests/{digest}"))
            .await
            .status(),
        200
    );
    assert_eq!(get("/v2/public/app/tags/list").await.status(), 200);
    for path in [
        "/v2/",
        "/v2/_catalog",
        "/v2/private/app/manifests/v1",
        "/v2/Bad_Name/tags/list",
    ] {
        let r = get(path).await;
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(challenge_of(&r), "Basic realm=\"Registry Realm\"", "{path}");
    }
    let r = c
        .post(format!("{url}/v2/public/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // skopeo with no login at all pulls the public image.
    if have("skopeo") {
        let dir = tempfile::tempdir().unwrap();
        let authfile = dir.path().join("auth.json");
        std::fs::write(&authfile, "{}").unwrap();
        let out = Command::new("skopeo")
            .args(["copy", "-q", "--src-cert-dir"])
            .arg(edge.cert_dir())
            .arg("--authfile")
            .arg(&authfile)
            .arg(format!("docker://{}/public/app:v1", edge.addr))
            .arg(format!("oci:{}:v1", dir.path().join("out").display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eventually(10, "the access log names the anonymous user", async || {
        edge.log_text()
            .lines()
            .any(|l| l.contains("/v2/public/app/tags/list") && l.contains("anonymous"))
    })
    .await;
}
