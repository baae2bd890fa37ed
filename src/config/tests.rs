//! Tests of the configuration: the file, the environment and registry:2's variables.

mod parsing {
    use super::super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("proxy.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(
            &p,
            false,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn acme_settings() {
        use crate::tls::acme::Challenge;
        assert!(load("", &[]).unwrap().acme.is_none());
        let a = load(
            "[tls.acme]\ndomains = [\"Registry.Example.com.\"]\nemail = \"ops@example.com\"\n",
            &[],
        )
        .unwrap()
        .acme
        .unwrap();
        assert_eq!(a.domains, vec!["registry.example.com"]);
        assert_eq!(a.directory_url, crate::tls::acme::LETS_ENCRYPT);
        assert_eq!(a.challenge, Challenge::TlsAlpn01);
        assert_eq!(a.cache, Path::new("acme"));
        // The environment, ours and registry:2's.
        let a = load(
            "",
            &[
                ("REGISTRY_EDGE_TLS_ACME_DOMAINS", "a.example,b.example"),
                ("REGISTRY_EDGE_TLS_ACME_CHALLENGE", "http-01"),
                ("REGISTRY_EDGE_TLS_ACME_HTTP_LISTEN", "0.0.0.0:80"),
            ],
        )
        .unwrap()
        .acme
        .unwrap();
        assert_eq!(a.domains, vec!["a.example", "b.example"]);
        assert_eq!(a.challenge, Challenge::Http01);
        assert_eq!(a.http_listen.as_deref(), Some("0.0.0.0:80"));
        let a = load(
            "",
            &[
                (
                    "REGISTRY_HTTP_TLS_LETSENCRYPT_CACHEFILE",
                    "/var/lib/le/cache.json",
                ),
                ("REGISTRY_HTTP_TLS_LETSENCRYPT_EMAIL", "ops@example.com"),
                ("REGISTRY_HTTP_TLS_LETSENCRYPT_HOSTS", "[r.example.com]"),
            ],
        )
        .unwrap()
        .acme
        .unwrap();
        assert_eq!(a.domains, vec!["r.example.com"]);
        assert_eq!(a.email, "ops@example.com");
        assert_eq!(a.cache, Path::new("/var/lib/le"));
        for (text, key) in [
            ("domains = []", "tls.acme.domains"),
            ("domains = [\"*.example.com\"]", "tls.acme.domains"),
            ("domains = [\"10.0.0.1\"]", "tls.acme.domains"),
            ("domains = [\"localhost\"]", "tls.acme.domains"),
            (
                "domains = [\"a.example\"]\nemail = \"nope\"",
                "tls.acme.email",
            ),
            (
                "domains = [\"a.example\"]\ndirectory_url = \"http://ca/dir\"",
                "tls.acme.directory_url",
            ),
            (
                "domains = [\"a.example\"]\nchallenge = \"dns-01\"",
                "tls.acme.challenge",
            ),
            (
                "domains = [\"a.example\"]\nchallenge = \"http-01\"",
                "tls.acme.http_listen",
            ),
            ("domains = [\"a.example\"]\nttl = 1", "ttl"),
        ] {
            let e = load(&format!("[tls.acme]\n{text}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = load(
            "[tls]\nenabled = false\n[tls.acme]\ndomains = [\"a.example\"]\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls.acme"), "{e}");
    }

    #[test]
    fn token_mode_settings() {
        assert!(load("", &[]).unwrap().token.is_none(), "basic by default");
        let t = load("[auth]\nhtpasswd = \"conf/users\"\nmode = \"token\"\n", &[])
            .unwrap()
            .token
            .unwrap();
        assert_eq!(
            t.key,
            Path::new("conf/token.key"),
            "beside the htpasswd file"
        );
        assert_eq!(t.ttl, Duration::from_secs(300));
        assert_eq!((t.service.as_str(), t.realm), ("registry-edge", None));
        let t = load(
            "[auth]\nmode = \"token\"\ntoken_realm = \"https://r.example/token\"\nservice = \"r.example\"\n",
            &[("REGISTRY_EDGE_AUTH_TOKEN_TTL", "15m")],
        )
        .unwrap()
        .token
        .unwrap();
        assert_eq!(t.realm.as_deref(), Some("https://r.example/token"));
        assert_eq!(t.ttl, Duration::from_secs(900));
        for (text, key) in [
            ("mode = \"jwt\"", "auth.mode"),
            ("mode = \"token\"\ntoken_ttl = \"30s\"", "auth.token_ttl"),
            ("mode = \"token\"\nrefresh_ttl = \"1m\"", "auth.refresh_ttl"),
            ("mode = \"token\"\nissuer = \"a b\"", "auth.issuer"),
            (
                "mode = \"token\"\ntoken_realm = \"/token\"",
                "auth.token_realm",
            ),
            ("first_user = \"anonymous\"", "auth.first_user"),
        ] {
            let e = load(&format!("[auth]\n{text}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn several_upstreams_need_the_shared_secret() {
        let urls = ("REGISTRY_EDGE_UPSTREAM_URLS", "http://a:5001,http://b:5001");
        let e = load("", &[urls]).unwrap_err().to_string();
        assert!(
            e.contains("server.secret") && e.contains("names 2 registries"),
            "{e}"
        );
        let c = load("", &[urls, ("REGISTRY_HTTP_SECRET", "0123456789abcdef")]).unwrap();
        assert!(c.secret.is_some());
        // Without the UI nothing is signed.
        assert!(load("", &[urls, ("REGISTRY_EDGE_UI_ENABLED", "false")]).is_ok());
        // One upstream: one edge, its own generated key is enough.
        assert!(load("", &[("REGISTRY_EDGE_UPSTREAM_URLS", "http://a:5001")]).is_ok());
        let e = load("[upstream]\nbalance = \"random\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.balance"), "{e}");
        let e = load("[upstream]\nhealth_path = \"v2\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.health_path"), "{e}");
    }

    #[test]
    fn defaults_and_overrides() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:5000");
        assert!(matches!(c.upstream, Upstream::Embedded(_)));
        let c = load(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("REGISTRY_EDGE_SERVER_LISTEN", "127.0.0.1:2"),
                ("REGISTRY_EDGE_STORAGE_DELETE_ENABLED", "false"),
                ("REGISTRY_EDGE_UPSTREAM_URLS", "[\"http://127.0.0.1:5000\"]"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(
            match c.upstream {
                Upstream::Urls(u) => u,
                _ => panic!(),
            },
            vec![UpstreamUrl {
                addr: "127.0.0.1:5000".into(),
                tls: false,
                host: "127.0.0.1".into()
            }]
        );
    }

    #[test]
    fn trusted_proxies_headers_and_tls_off() {
        let c = load(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nproxy_protocol = true\n[server.headers]\nStrict-Transport-Security = \"max-age=60\"\n[tls]\nenabled = false\n",
            &[
                ("REGISTRY_HTTP_HEADERS_X-CONTENT-TYPE-OPTIONS", "[nosniff]"),
                ("REGISTRY_EDGE_TLS_HOSTS", "a.example, 10.0.0.5"),
            ],
        )
        .unwrap();
        assert!(c.trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(c.trusted.proxy_protocol);
        assert!(!c.tls);
        assert_eq!(c.hosts, vec!["a.example", "10.0.0.5"]);
        let h: Vec<(String, String)> = c
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert!(h.contains(&("strict-transport-security".into(), "max-age=60".into())));
        assert!(h.contains(&("x-content-type-options".into(), "nosniff".into())));
        for (text, key) in [
            (
                "[server]\ntrusted_proxies = [\"10.0.0.0/40\"]\n",
                "server.trusted_proxies",
            ),
            ("[server]\nproxy_protocol = true\n", "server.proxy_protocol"),
            (
                "[server.headers]\nContent-Type = \"text/html\"\n",
                "server.headers",
            ),
            ("[server.headers]\n\"Bad Name\" = \"x\"\n", "server.headers"),
            (
                "[server.headers]\nX-A = \"line\\nbreak\"\n",
                "server.headers",
            ),
        ] {
            let e = load(text, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn registry_2_environment_names() {
        let c = load(
            "",
            &[
                ("REGISTRY_HTTP_ADDR", ":5443"),
                ("REGISTRY_HTTP_TLS_CERTIFICATE", "/certs/domain.crt"),
                ("REGISTRY_HTTP_TLS_KEY", "/certs/domain.key"),
                ("REGISTRY_AUTH_HTPASSWD_PATH", "/auth/htpasswd"),
                ("REGISTRY_AUTH_HTPASSWD_REALM", "Registry Realm"),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "false"),
                (
                    "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
                    "/var/lib/registry",
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:5443");
        assert_eq!(c.cert, Path::new("/certs/domain.crt"));
        assert_eq!(c.htpasswd, Path::new("/auth/htpasswd"));
        let Upstream::Embedded(core) = &c.upstream else {
            panic!()
        };
        assert!(!core.delete_enabled);
        assert_eq!(core.root, Path::new("/var/lib/registry"));
        // The S3 guide's environment block, over a [storage.s3] table in the file.
        let c = load(
            "[storage.s3]\nbucket = \"from-file\"\nregion = \"eu-west-1\"\n",
            &[
                ("REGISTRY_STORAGE", "s3"),
                ("REGISTRY_STORAGE_S3_BUCKET", "images"),
                ("REGISTRY_STORAGE_S3_REGIONENDPOINT", "http://minio:9000"),
                ("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", "true"),
                ("REGISTRY_STORAGE_S3_ACCESSKEY", "12345"),
                ("REGISTRY_STORAGE_S3_SECRETKEY", "very-secret"),
                ("REGISTRY_STORAGE_S3_CHUNKSIZE", "16777216"),
                ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true"),
            ],
        )
        .unwrap();
        let Upstream::Embedded(core) = &c.upstream else {
            panic!()
        };
        let registry_core::config::StorageDriver::S3(s3) = &core.storage else {
            panic!("{:?}", core.storage)
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str()),
            ("images", "eu-west-1")
        );
        assert_eq!(s3.access_key.as_deref(), Some("12345"));
        assert_eq!(
            (s3.force_path_style, s3.part_size, s3.redirect),
            (Some(true), 16 << 20, false)
        );
        assert!(!format!("{c:?}").contains("very-secret"));
        let e = load(
            "",
            &[
                ("REGISTRY_STORAGE", "s3"),
                ("REGISTRY_STORAGE_S3_CHUNKSIZE", "1024"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("storage.s3.part_size") || e.contains("storage.s3.bucket"),
            "{e}"
        );
        // A filesystem registry's `redirect.disable` does not make it an S3 one.
        let c = load("", &[("REGISTRY_STORAGE_REDIRECT_DISABLE", "true")]).unwrap();
        let Upstream::Embedded(core) = &c.upstream else {
            panic!()
        };
        assert_eq!(
            core.storage,
            registry_core::config::StorageDriver::Filesystem
        );
        // The edge's own name wins.
        let c = load(
            "",
            &[
                ("REGISTRY_HTTP_ADDR", ":1"),
                ("REGISTRY_EDGE_SERVER_LISTEN", "127.0.0.1:2"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        let e = load("", &[("REGISTRY_STORAGE_DELETE_ENABLED", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("delete_enabled") && e.contains("REGISTRY_STORAGE_DELETE_ENABLED"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("[server]\nthreads = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("threads"), "{e}");
        let e = load("[server]\nlisten = \"nowhere\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.listen"), "{e}");
        let e = load("[tls]\nbogus = 1\n", &[]).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = load("", &[("REGISTRY_EDGE_SERVER_IDLE_TIMEOUT", "forever")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.idle_timeout") && e.contains("REGISTRY_EDGE_SERVER_IDLE_TIMEOUT"),
            "{e}"
        );
        let e = load("", &[("REGISTRY_EDGE_STORAGE_DELETE_ENABLED", "yes")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("delete_enabled"), "{e}");
        let e = load("", &[("REGISTRY_EDGE_NOPE_X", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("REGISTRY_EDGE_NOPE_X"), "{e}");
        let e = load("[upstream]\nurls = [\"ftp://x\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.urls"), "{e}");
        let e = load("[server\n", &[]).unwrap_err().to_string();
        assert!(e.contains("proxy.toml"), "{e}");
    }

    #[test]
    fn notifications() {
        let hook =
            "[[notifications.endpoints]]\nname = \"ci\"\nurl = \"https://ci.example/hook\"\n";
        let c = load(&format!("[server]\nlisten = \"0.0.0.0:5443\"\n{hook}"), &[]).unwrap();
        let Upstream::Embedded(core) = &c.upstream else {
            panic!("embedded")
        };
        let n = &core.notifications;
        assert_eq!(n.endpoints[0].name, "ci");
        assert!(n.source_addr.ends_with(":5443"), "{}", n.source_addr);
        // The registries behind [upstream] send their own.
        let e = load(hook, &[("REGISTRY_EDGE_UPSTREAM_URLS", "http://a:5001")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("notifications") && e.contains("their own events"),
            "{e}"
        );
        let e = load(&format!("{hook}backoff = \"often\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("notifications") && e.contains("\"ci\": backoff"),
            "{e}"
        );
        // registry:2's variables cannot express a list of endpoints: refused, not ignored.
        let e = load("", &[("REGISTRY_NOTIFICATIONS_ENDPOINTS", "- name: x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("REGISTRY_NOTIFICATIONS_ENDPOINTS"), "{e}");
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://reg.example.com").unwrap().addr,
            "reg.example.com:443"
        );
        assert!(parse_url("http://h:99999").is_err());
        assert!(parse_url("http://h/path").is_err());
        assert!(parse_url("http://u:p@h").is_err());
    }
}

mod shipped_config {
    use super::super::*;

    /// The top-level proxy.toml parses and says exactly what the built-in defaults say.
    #[test]
    fn proxy_toml_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
        let mut shipped = Config::load(&path, false, std::iter::empty()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut defaults =
            Config::load(&dir.path().join("absent.toml"), true, std::iter::empty()).unwrap();
        // Where each came from is the one difference allowed.
        shipped.source = Default::default();
        defaults.source = Default::default();
        assert_eq!(format!("{shipped:?}"), format!("{defaults:?}"));
    }
}
