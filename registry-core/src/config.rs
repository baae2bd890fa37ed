//! Configuration: a TOML file (serde schema, unknown keys refused) overridden by flags, validated
//! into [`Config`]. A bad value is reported with its key and file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::storage::s3::{self, S3Settings, Secret};

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
    /// `filesystem` (the default, under `root`) or `s3` (the `[s3]` table).
    pub driver: Option<String>,
    pub s3: Option<S3File>,
    /// Webhooks: `[[notifications.endpoints]]`, see [`crate::events::config`].
    pub notifications: Option<crate::events::NotificationsFile>,
}

/// The S3 settings as written (`[s3]` here, `[storage.s3]` in the edge's file). Sizes are
/// bytes, or strings with a unit (`"16MiB"`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3File {
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    pub root: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
    pub profile: Option<String>,
    /// registry:2's `secure`: https for an endpoint given without a scheme (default true).
    pub secure: Option<bool>,
    pub skip_verify: Option<bool>,
    pub part_size: Option<Size>,
    pub copy_threshold: Option<Size>,
    pub copy_part_size: Option<Size>,
    pub redirect: Option<bool>,
    pub max_retries: Option<usize>,
    pub retry_timeout: Option<String>,
}

/// A byte count: a number, or a string with a unit (B, KiB, MiB, GiB, KB, MB, GB).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(t) => parse_size(t),
        }
    }
}

/// `"16MiB"`, `"5 GB"`, `"1048576"`.
pub fn parse_size(t: &str) -> Result<u64, String> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{t:?} is not a size like 16777216 or \"16MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        u => {
            return Err(format!(
                "{t:?}: unknown unit {u:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{t:?} is too large"))
}

/// Where images are stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StorageDriver {
    /// Distribution's filesystem layout under [`Config::root`].
    #[default]
    Filesystem,
    S3(Box<S3Settings>),
}

impl S3File {
    /// Validates the settings as written; errors name keys as `s3.<key>`.
    pub fn settings(&self, origin: &str) -> Result<S3Settings, ConfigError> {
        let bad = |key: &'static str, message: String| ConfigError::Value {
            origin: origin.into(),
            key,
            message,
        };
        let mut s = S3Settings {
            bucket: self.bucket.clone().unwrap_or_default(),
            ..Default::default()
        };
        if s.bucket.len() < 3 {
            return Err(bad(
                "s3.bucket",
                "a bucket name (3 characters or more) is required".into(),
            ));
        }
        if let Some(r) = &self.region {
            s.region = r.clone();
        }
        if let Some(e) = self.endpoint.as_ref().filter(|e| !e.is_empty()) {
            s.endpoint = Some(if e.contains("://") {
                e.clone()
            } else if self.secure.unwrap_or(true) {
                format!("https://{e}")
            } else {
                format!("http://{e}")
            });
        }
        s.force_path_style = self.force_path_style;
        s.root = self
            .root
            .clone()
            .unwrap_or_default()
            .trim_matches('/')
            .to_owned();
        s.access_key = self.access_key.clone().filter(|k| !k.is_empty());
        s.secret_key = self
            .secret_key
            .clone()
            .filter(|k| !k.is_empty())
            .map(Secret);
        s.session_token = self
            .session_token
            .clone()
            .filter(|k| !k.is_empty())
            .map(Secret);
        s.profile = self.profile.clone().filter(|k| !k.is_empty());
        s.skip_verify = self.skip_verify.unwrap_or(false);
        if let Some(p) = &self.part_size {
            s.part_size = p.bytes().map_err(|m| bad("s3.part_size", m))?;
            if s.part_size < s3::MIN_PART || s.part_size > s3::MAX_SINGLE_COPY {
                return Err(bad(
                    "s3.part_size",
                    format!(
                        "{} bytes is outside S3's part sizes (5 MiB to 5 GiB)",
                        s.part_size
                    ),
                ));
            }
        }
        if let Some(p) = &self.copy_threshold {
            s.copy_threshold = p.bytes().map_err(|m| bad("s3.copy_threshold", m))?;
            if s.copy_threshold > s3::MAX_SINGLE_COPY {
                return Err(bad(
                    "s3.copy_threshold",
                    "S3 copies at most 5 GiB in one request".into(),
                ));
            }
        }
        if let Some(p) = &self.copy_part_size {
            s.copy_part_size = p.bytes().map_err(|m| bad("s3.copy_part_size", m))?;
            if s.copy_part_size < s3::MIN_PART || s.copy_part_size > s3::MAX_SINGLE_COPY {
                return Err(bad(
                    "s3.copy_part_size",
                    "must be between 5 MiB and 5 GiB".into(),
                ));
            }
        }
        s.redirect = self.redirect.unwrap_or(false);
        if let Some(n) = self.max_retries {
            s.max_retries = n;
        }
        if let Some(t) = &self.retry_timeout {
            s.retry_timeout = duration(origin, "s3.retry_timeout", t)?;
        }
        Ok(s)
    }
}

/// The driver named by `driver` (with `s3` for an S3 one).
pub fn storage_driver(
    driver: Option<&str>,
    s3: Option<&S3File>,
    origin: &str,
) -> Result<StorageDriver, ConfigError> {
    match driver.map(|d| d.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("filesystem") => Ok(StorageDriver::Filesystem),
        Some("s3") => Ok(StorageDriver::S3(Box::new(
            s3.cloned().unwrap_or_default().settings(origin)?,
        ))),
        Some(d) => Err(ConfigError::Value {
            origin: origin.into(),
            key: "driver",
            message: format!("{d:?}: the drivers are \"filesystem\" and \"s3\""),
        }),
    }
}

/// registry:2's S3 variables and the [`S3File`] key each sets.
pub const REGISTRY_S3_ENV: &[(&str, &str)] = &[
    ("REGISTRY_STORAGE_S3_ACCESSKEY", "access_key"),
    ("REGISTRY_STORAGE_S3_SECRETKEY", "secret_key"),
    ("REGISTRY_STORAGE_S3_SESSIONTOKEN", "session_token"),
    ("REGISTRY_STORAGE_S3_BUCKET", "bucket"),
    ("REGISTRY_STORAGE_S3_REGION", "region"),
    ("REGISTRY_STORAGE_S3_REGIONENDPOINT", "endpoint"),
    ("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", "force_path_style"),
    ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", "root"),
    ("REGISTRY_STORAGE_S3_SECURE", "secure"),
    ("REGISTRY_STORAGE_S3_SKIPVERIFY", "skip_verify"),
    ("REGISTRY_STORAGE_S3_CHUNKSIZE", "part_size"),
    (
        "REGISTRY_STORAGE_S3_MULTIPARTCOPYTHRESHOLDSIZE",
        "copy_threshold",
    ),
    (
        "REGISTRY_STORAGE_S3_MULTIPARTCOPYCHUNKSIZE",
        "copy_part_size",
    ),
];

/// registry:2's redirect switch; only `false` asks for redirects (S3's `redirect = true`).
pub const REGISTRY_REDIRECT_DISABLE: &str = "REGISTRY_STORAGE_REDIRECT_DISABLE";

/// The `[s3]` key and TOML value a registry:2 variable sets, if it is one of the S3 ones (or the
/// redirect switch). One mapping for both programs.
pub fn registry_s3_setting(name: &str, raw: &str) -> Option<(&'static str, toml::Value)> {
    if name == REGISTRY_REDIRECT_DISABLE {
        let disabled = !raw.trim().eq_ignore_ascii_case("false");
        return Some(("redirect", toml::Value::Boolean(!disabled)));
    }
    let (_, key) = REGISTRY_S3_ENV.iter().find(|(n, _)| *n == name)?;
    Some((key, s3_env_value(key, raw)))
}

/// The TOML value of a registry:2 S3 variable: booleans and numbers typed, the rest strings.
fn s3_env_value(key: &str, raw: &str) -> toml::Value {
    match key {
        "force_path_style" | "secure" | "skip_verify" => match raw.trim() {
            v if v.eq_ignore_ascii_case("true") => toml::Value::Boolean(true),
            v if v.eq_ignore_ascii_case("false") => toml::Value::Boolean(false),
            v => toml::Value::String(v.to_owned()),
        },
        "part_size" | "copy_threshold" | "copy_part_size" => match raw.trim().parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => toml::Value::String(raw.trim().to_owned()),
        },
        _ => toml::Value::String(raw.to_owned()),
    }
}

impl FileConfig {
    /// Reads a config file as written (not yet validated).
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text, &p)
    }

    pub fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })
    }
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
    pub storage: StorageDriver,
    /// Where events go (none by default).
    pub notifications: crate::events::Settings,
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
            storage: StorageDriver::Filesystem,
            notifications: crate::events::Settings::default(),
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
        let mut c = Config::default();
        c.apply(FileConfig::parse(text, origin)?, origin)?;
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
        if let Some(n) = &f.notifications {
            // The port of `source.addr` is the bound one, set by `run`.
            self.notifications = n.validate(None).map_err(|message| ConfigError::Value {
                origin: origin.into(),
                key: "notifications",
                message,
            })?;
        }
        // No driver named: S3 when the `[s3]` table names a bucket.
        let s3_given = f.s3.as_ref().is_some_and(|s| s.bucket.is_some());
        if f.driver.is_some() || s3_given {
            let driver = f.driver.as_deref().or(s3_given.then_some("s3"));
            self.storage = storage_driver(driver, f.s3.as_ref(), origin)?;
        }
        Ok(())
    }

    /// Applies registry:2's storage variables (`REGISTRY_STORAGE=s3` and
    /// `REGISTRY_STORAGE_S3_*`) over the `[s3]` table of `file`; returns the names used.
    pub fn registry_storage_env<'a>(
        file: &mut FileConfig,
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Vec<String>, ConfigError> {
        let mut table = toml::Table::new();
        let mut used = Vec::new();
        for (name, raw) in env {
            if name == "REGISTRY_STORAGE" {
                file.driver = Some(raw.trim().to_owned());
                used.push(name.to_owned());
            } else if let Some((key, value)) = registry_s3_setting(name, raw) {
                table.insert(key.to_owned(), value);
                used.push(name.to_owned());
            }
        }
        if table.is_empty() {
            return Ok(used);
        }
        let from_env: S3File =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: format!("environment ({})", used.join(", ")),
                    message: e.message().to_owned(),
                })?;
        let s3 = file.s3.get_or_insert_with(S3File::default);
        s3.overlay(from_env);
        Ok(used)
    }
}

impl S3File {
    /// Takes every key `other` sets.
    pub fn overlay(&mut self, other: S3File) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            bucket,
            region,
            endpoint,
            force_path_style,
            root,
            access_key,
            secret_key,
            session_token,
            profile,
            secure,
            skip_verify,
            part_size,
            copy_threshold,
            copy_part_size,
            redirect,
            max_retries,
            retry_timeout
        );
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
        "REGISTRY_STORAGE_S3_ENCRYPT",
        "server-side encryption settings are not supported; objects would be stored unencrypted",
    ),
    (
        "REGISTRY_STORAGE_S3_KEYID",
        "server-side encryption settings are not supported; objects would be stored unencrypted",
    ),
    (
        "REGISTRY_STORAGE_S3",
        "S3 storage is not configured by this variable here; images would go elsewhere",
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
        "REGISTRY_NOTIFICATIONS",
        "configure notification endpoints in the config file's [[notifications.endpoints]]; events would not be sent",
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
            "REGISTRY_STORAGE"
                if honoured.contains(&"REGISTRY_STORAGE")
                    && value.trim().eq_ignore_ascii_case("s3") =>
            {
                continue
            }
            "REGISTRY_STORAGE" => {
                Some("only filesystem and s3 storage are supported; images would go elsewhere")
            }
            // Redirects are off unless configured: `disable=true` asks for what is done anyway.
            "REGISTRY_STORAGE_REDIRECT_DISABLE" if value.trim().eq_ignore_ascii_case("true") => {
                continue
            }
            // Tuning the S3 driver (storage class, dual stack, log level...): warned about.
            _ if name.starts_with("REGISTRY_STORAGE_S3_")
                && honoured.contains(&"REGISTRY_STORAGE")
                && !name.starts_with("REGISTRY_STORAGE_S3_ENCRYPT")
                && !name.starts_with("REGISTRY_STORAGE_S3_KEYID") =>
            {
                None
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
    fn registry2_s3_variables_configure_s3() {
        let mut f = FileConfig::default();
        let used = Config::registry_storage_env(
            &mut f,
            [
                ("REGISTRY_STORAGE", "s3"),
                ("REGISTRY_STORAGE_S3_BUCKET", "images"),
                ("REGISTRY_STORAGE_S3_REGIONENDPOINT", "minio:9000"),
                ("REGISTRY_STORAGE_S3_SECURE", "false"),
                ("REGISTRY_STORAGE_S3_ACCESSKEY", "12345"),
                ("REGISTRY_STORAGE_S3_SECRETKEY", "s"),
                ("REGISTRY_STORAGE_S3_CHUNKSIZE", "16777216"),
                ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", "/reg/"),
                ("REGISTRY_STORAGE_REDIRECT_DISABLE", "false"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(used.len(), 9);
        let mut c = Config::default();
        c.apply(f, "env").unwrap();
        let StorageDriver::S3(s) = &c.storage else {
            panic!("{:?}", c.storage)
        };
        assert_eq!(s.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(s.access_key.as_deref(), Some("12345"));
        assert_eq!(
            (s.part_size, s.root.as_str(), s.redirect),
            (16 << 20, "reg", true)
        );
        assert!(!format!("{c:?}").contains("\"s\""), "the secret prints");
        // `redirect.disable` alone (a filesystem registry's compose file) does not switch to S3.
        let mut f = FileConfig::default();
        Config::registry_storage_env(&mut f, [("REGISTRY_STORAGE_REDIRECT_DISABLE", "true")])
            .unwrap();
        let mut c = Config::default();
        c.apply(f, "env").unwrap();
        assert_eq!(c.storage, StorageDriver::Filesystem);
        // Sizes with units, and refused ones.
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("5 GB").unwrap(), 5_000_000_000);
        assert!(parse_size("ten").is_err() && parse_size("5 parsecs").is_err());
    }

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
