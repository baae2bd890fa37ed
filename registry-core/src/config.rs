//! Configuration: a TOML file (serde schema, unknown keys refused) overridden by flags, validated
//! into [`Config`]. A bad value is reported with its key and file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5001";
pub const DEFAULT_ROOT: &str = "./data";
pub const DEFAULT_UPLOAD_PURGE_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_UPLOAD_PURGE_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The file schema. Every key is optional; see [`Config`] for defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub root: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub delete_enabled: Option<bool>,
    pub max_manifest_bytes: Option<usize>,
    pub upload_purge_age: Option<String>,
    pub upload_purge_interval: Option<String>,
    pub gc_grace: Option<String>,
    pub gc_interval: Option<String>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port`, or a Unix socket (`unix:PATH`).
    pub listen: String,
    pub root: PathBuf,
    /// Where `/metrics` is served; none by default.
    pub metrics_listen: Option<String>,
    pub delete_enabled: bool,
    pub max_manifest_bytes: usize,
    pub upload_purge_age: Duration,
    pub upload_purge_interval: Duration,
    pub gc_grace: Duration,
    /// Run garbage collection in the serving process this often; `None` (the default): never.
    pub gc_interval: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.into(),
            root: DEFAULT_ROOT.into(),
            metrics_listen: None,
            delete_enabled: true,
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            upload_purge_age: DEFAULT_UPLOAD_PURGE_AGE,
            upload_purge_interval: DEFAULT_UPLOAD_PURGE_INTERVAL,
            gc_grace: DEFAULT_GC_GRACE,
            gc_interval: None,
        }
    }
}

/// A configuration error, naming the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{origin}: `{key}`: {message}")]
    Value {
        origin: String,
        key: &'static str,
        message: String,
    },
    #[error("environment: `{name}`: registry:2 setting not supported: {why}")]
    Unsupported { name: String, why: &'static str },
}

fn duration(origin: &str, key: &'static str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v).map_err(|e| ConfigError::Value {
        origin: origin.into(),
        key,
        message: format!("{v:?} is not a duration like \"24h\" or \"30m\": {e}"),
    })
}

impl Config {
    /// Reads a config file; keys it does not set keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        Self::from_toml(&text, &p)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        let mut c = Config::default();
        c.apply(file, origin)?;
        Ok(c)
    }

    /// Applies the keys set in `f` over this config.
    pub fn apply(&mut self, f: FileConfig, origin: &str) -> Result<(), ConfigError> {
        if let Some(v) = f.listen {
            if v.is_empty() {
                return Err(ConfigError::Value {
                    origin: origin.into(),
                    key: "listen",
                    message: "must not be empty".into(),
                });
            }
            self.listen = v;
        }
        if let Some(v) = f.root {
            self.root = v;
        }
        if let Some(v) = f.metrics_listen {
            self.metrics_listen = Some(v).filter(|s| !s.is_empty());
        }
        if let Some(v) = f.delete_enabled {
            self.delete_enabled = v;
        }
        if let Some(v) = f.max_manifest_bytes {
            if v < DEFAULT_MAX_MANIFEST_BYTES {
                return Err(ConfigError::Value {
                    origin: origin.into(),
                    key: "max_manifest_bytes",
                    message: format!("must be at least {DEFAULT_MAX_MANIFEST_BYTES} (4 MiB)"),
                });
            }
            self.max_manifest_bytes = v;
        }
        if let Some(v) = f.upload_purge_age {
            self.upload_purge_age = duration(origin, "upload_purge_age", &v)?;
        }
        if let Some(v) = f.upload_purge_interval {
            self.upload_purge_interval = duration(origin, "upload_purge_interval", &v)?;
            if self.upload_purge_interval.is_zero() {
                return Err(ConfigError::Value {
                    origin: origin.into(),
                    key: "upload_purge_interval",
                    message: "must be more than 0".into(),
                });
            }
        }
        if let Some(v) = f.gc_grace {
            self.gc_grace = duration(origin, "gc_grace", &v)?;
        }
        if let Some(v) = f.gc_interval {
            self.gc_interval = parse_gc_interval(&v).map_err(|message| ConfigError::Value {
                origin: origin.into(),
                key: "gc_interval",
                message,
            })?;
        }
        Ok(())
    }
}

/// `gc_interval`: empty or `"0s"` for off, else how often (a collection walks the whole store:
/// hours, usually).
pub fn parse_gc_interval(v: &str) -> Result<Option<Duration>, String> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    let d = humantime::parse_duration(v)
        .map_err(|e| format!("{v:?} is not a duration like \"24h\": {e}"))?;
    Ok((!d.is_zero()).then_some(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_keys() {
        let c = Config::from_toml(
            "listen = \"unix:/tmp/x.sock\"\ngc_grace = \"2h\"\ndelete_enabled = false",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.gc_grace, Duration::from_secs(7200));
        assert!(!c.delete_enabled);
        let e = Config::from_toml("gc_grace = \"soon\"", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gc_grace") && e.contains("t.toml"), "{e}");
        let e = Config::from_toml("bogus = 1", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::from_toml("delete_enabled = \"yes\"", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("delete_enabled"), "{e}");
    }
}

/// What to do about a `registry:2` (`REGISTRY_*`) setting this program does not honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    /// It would change where data goes or who may do what: the start stops, naming it.
    Refused { name: String, why: &'static str },
    /// Anything else: the start goes on with a warning naming it.
    Ignored { name: String },
}

/// `registry:2` settings that change where data goes or who may do what, by name prefix; a
/// start with one of them set (and not honoured) is refused rather than run as something else.
const REFUSED_PREFIXES: &[(&str, &str)] = &[
    (
        "REGISTRY_STORAGE_S3",
        "S3 storage is not supported yet; images would go to local disk",
    ),
    (
        "REGISTRY_STORAGE_AZURE",
        "Azure storage is not supported; images would go to local disk",
    ),
    (
        "REGISTRY_STORAGE_GCS",
        "GCS storage is not supported; images would go to local disk",
    ),
    (
        "REGISTRY_STORAGE_SWIFT",
        "Swift storage is not supported; images would go to local disk",
    ),
    (
        "REGISTRY_STORAGE_OSS",
        "OSS storage is not supported; images would go to local disk",
    ),
    (
        "REGISTRY_STORAGE_INMEMORY",
        "in-memory storage is not supported",
    ),
    (
        "REGISTRY_STORAGE_REDIRECT",
        "storage redirects are not supported",
    ),
    (
        "REGISTRY_PROXY",
        "pull-through caching is not supported; this would be an empty registry instead",
    ),
    (
        "REGISTRY_AUTH_TOKEN",
        "token auth is not supported yet; the access would differ",
    ),
    (
        "REGISTRY_AUTH_SILLY",
        "silly auth is not supported; the access would differ",
    ),
    (
        "REGISTRY_HTTP_TLS_CLIENTCAS",
        "client-certificate auth is not supported; the access would differ",
    ),
    (
        "REGISTRY_HTTP_TLS_LETSENCRYPT",
        "Let's Encrypt is not supported yet; give a certificate instead",
    ),
    (
        "REGISTRY_VALIDATION",
        "manifest validation rules are not supported; what is accepted would differ",
    ),
];

/// Checks the environment's `REGISTRY_*` settings against the ones this program honours
/// (`honoured`, exact names); returns what it does not honour, refused first.
pub fn check_registry_env<'a>(
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
    honoured: &[&str],
) -> Vec<Unsupported> {
    let mut out = Vec::new();
    for (name, value) in env {
        if !name.starts_with("REGISTRY_")
            || (honoured.contains(&name) && name != "REGISTRY_AUTH" && name != "REGISTRY_STORAGE")
        {
            continue;
        }
        // This program's own variables are not registry:2 settings.
        if name.starts_with("REGISTRY_EDGE_") || name.starts_with("REGISTRY_CORE_") {
            continue;
        }
        let refused = match name {
            "REGISTRY_STORAGE" if value.trim().eq_ignore_ascii_case("filesystem") => continue,
            "REGISTRY_STORAGE" => {
                Some("only filesystem storage is supported yet; images would go to local disk")
            }
            "REGISTRY_AUTH"
                if honoured.contains(&"REGISTRY_AUTH")
                    && value.trim().eq_ignore_ascii_case("htpasswd") =>
            {
                continue
            }
            "REGISTRY_AUTH" if honoured.contains(&"REGISTRY_AUTH") => {
                Some("only htpasswd auth is supported; the access would differ")
            }
            _ => REFUSED_PREFIXES
                .iter()
                .find(|(p, _)| name.starts_with(p))
                .map(|(_, why)| *why)
                .or_else(|| {
                    // registry:2's auth settings, where no auth is done (registry-core).
                    let auth = name == "REGISTRY_AUTH" || name.starts_with("REGISTRY_AUTH_HTPASSWD");
                    (auth && !honoured.contains(&"REGISTRY_AUTH")).then_some(
                        "authentication is not done here (registry-core answers everyone: put registry-edge in front of it)",
                    )
                }),
        };
        out.push(match refused {
            Some(why) => Unsupported::Refused {
                name: name.to_owned(),
                why,
            },
            None => Unsupported::Ignored {
                name: name.to_owned(),
            },
        });
    }
    out.sort_by_key(|u| !matches!(u, Unsupported::Refused { .. }));
    out
}

#[cfg(test)]
mod env_tests {
    use super::*;

    #[test]
    fn registry2_settings_are_honoured_refused_or_warned_about() {
        let env = [
            ("REGISTRY_STORAGE", "s3"),
            ("REGISTRY_STORAGE_S3_BUCKET", "b"),
            ("REGISTRY_HTTP_SECRET", "x"),
            ("REGISTRY_HTTP_ADDR", ":5000"),
            ("REGISTRY_EDGE_SERVER_LISTEN", "x"),
            ("REGISTRY_AUTH", "htpasswd"),
            ("PATH", "/bin"),
        ];
        let r = check_registry_env(env, &["REGISTRY_HTTP_ADDR", "REGISTRY_AUTH"]);
        let names: Vec<_> = r
            .iter()
            .map(|u| match u {
                Unsupported::Refused { name, .. } => format!("refused {name}"),
                Unsupported::Ignored { name } => format!("ignored {name}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "refused REGISTRY_STORAGE",
                "refused REGISTRY_STORAGE_S3_BUCKET",
                "ignored REGISTRY_HTTP_SECRET"
            ]
        );
        let ok = check_registry_env([("REGISTRY_STORAGE", "filesystem")], &[]);
        assert!(ok.is_empty());
        // The compose file's own variables are only warned about.
        let compose = check_registry_env([("REGISTRY_AUTH_DIR", "./auth")], &["REGISTRY_AUTH"]);
        assert!(
            matches!(compose[..], [Unsupported::Ignored { .. }]),
            "{compose:?}"
        );
        // registry-core does no auth: an htpasswd setting meant for it is refused, not ignored.
        let core = check_registry_env(
            [
                ("REGISTRY_AUTH", "htpasswd"),
                ("REGISTRY_AUTH_HTPASSWD_PATH", "/a"),
            ],
            &["REGISTRY_HTTP_ADDR"],
        );
        assert!(
            core.iter()
                .all(|u| matches!(u, Unsupported::Refused { .. })),
            "{core:?}"
        );
        assert_eq!(core.len(), 2);
    }
}
