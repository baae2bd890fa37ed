//! The environment over the file: `REGISTRY_EDGE_<SECTION>_<KEY>` variables, and registry:2's
//! own variables (`REGISTRY_HTTP_*`, `REGISTRY_STORAGE_*`, ...) under their Distribution names.

use super::{ConfigError, ENV_PREFIX, SECTIONS};

/// `registry:2` settings the edge shares, accepted under their Distribution names so a compose
/// file written for `registry:2` moves over with its environment. `REGISTRY_EDGE_*` wins.
pub const REGISTRY_COMPAT: &[(&str, &str, &str)] = &[
    ("REGISTRY_HTTP_ADDR", "server", "listen"),
    ("REGISTRY_HTTP_SECRET", "server", "secret"),
    ("REGISTRY_HTTP_TLS_CERTIFICATE", "tls", "cert"),
    ("REGISTRY_HTTP_TLS_KEY", "tls", "key"),
    ("REGISTRY_AUTH_HTPASSWD_PATH", "auth", "htpasswd"),
    ("REGISTRY_AUTH_HTPASSWD_REALM", "auth", "realm"),
    (
        "REGISTRY_STORAGE_DELETE_ENABLED",
        "storage",
        "delete_enabled",
    ),
    (
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
        "storage",
        "root",
    ),
    ("REGISTRY_STORAGE", "storage", "driver"),
];

/// `[a, b]` (registry:2's YAML list form, as its environment takes it) as a TOML array of
/// strings; anything else as one string.
fn yaml_list(raw: &str) -> toml::Value {
    match raw
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
    {
        Some(inner) => toml::Value::Array(
            inner
                .split(',')
                .map(|p| p.trim().trim_matches('"').trim_matches('\''))
                .filter(|p| !p.is_empty())
                .map(|p| toml::Value::String(p.to_owned()))
                .collect(),
        ),
        None => toml::Value::String(raw.to_owned()),
    }
}

/// registry:2's per-header variables.
const REGISTRY_HEADERS: &str = "REGISTRY_HTTP_HEADERS_";

/// Keys whose environment value may be a comma-separated list.
const LIST_KEYS: &[(&str, &str)] = &[
    ("tls", "hosts"),
    ("upstream", "urls"),
    ("tls", "acme_domains"),
    ("tls", "acme_ca_roots"),
];

/// registry:2's Let's Encrypt settings, as keys of `[tls.acme]`.
const REGISTRY_LETSENCRYPT: &[(&str, &str)] = &[
    ("REGISTRY_HTTP_TLS_LETSENCRYPT_CACHEFILE", "cache"),
    ("REGISTRY_HTTP_TLS_LETSENCRYPT_EMAIL", "email"),
    ("REGISTRY_HTTP_TLS_LETSENCRYPT_HOSTS", "domains"),
];

/// Sets `table[section][key]`, or `table.tls.acme[key]` for the `acme_` keys of `tls`.
fn set_key(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let (entry, key) = match (section, key.strip_prefix("acme_")) {
        ("tls", Some(sub)) => match entry {
            toml::Value::Table(t) => (
                t.entry("acme")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new())),
                sub,
            ),
            other => (other, key),
        },
        _ => (entry, key),
    };
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
}

/// Parses an environment value as a TOML value (`true`, `3`, `["a"]`), else takes it as a string.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Applies the environment to the parsed file `table`: the names of the variables that set keys,
/// and the registry:2 variables that are ignored (warned about at start).
pub(super) fn apply(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Vec<String>, Vec<String>), ConfigError> {
    let mut overridden = Vec::new();
    let env: Vec<(String, String)> = env.into_iter().collect();
    // registry:2 settings the edge does not honour: refused when they would change where
    // data goes or who may do what, otherwise warned about at start.
    let mut honoured: Vec<&str> = REGISTRY_COMPAT.iter().map(|(n, _, _)| *n).collect();
    honoured.push("REGISTRY_AUTH");
    honoured.extend(
        registry_core::config::REGISTRY_S3_ENV
            .iter()
            .map(|(n, _)| *n),
    );
    honoured.push(registry_core::config::REGISTRY_REDIRECT_DISABLE);
    honoured.extend(REGISTRY_LETSENCRYPT.iter().map(|(n, _)| *n));
    let mut ignored_env = Vec::new();
    let pairs = env
        .iter()
        .filter(|(k, _)| !k.starts_with(REGISTRY_HEADERS))
        .map(|(k, v)| (k.as_str(), v.as_str()));
    for u in registry_core::config::check_registry_env(pairs, &honoured) {
        match u {
            registry_core::config::Unsupported::Refused { name, why } => {
                return Err(ConfigError::Value {
                    origin: "environment".into(),
                    key: name,
                    message: format!("registry:2 setting not supported: {why}"),
                })
            }
            registry_core::config::Unsupported::Ignored { name } => ignored_env.push(name),
        }
    }
    // registry:2's `http.headers`, one variable per header:
    // `REGISTRY_HTTP_HEADERS_X-CONTENT-TYPE-OPTIONS=[nosniff]`.
    for (name, raw) in &env {
        let Some(header) = name.strip_prefix(REGISTRY_HEADERS) else {
            continue;
        };
        if let toml::Value::Table(server) = table
            .entry("server")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            if let toml::Value::Table(h) = server
                .entry("headers")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                h.insert(header.to_owned(), yaml_list(raw));
            }
        }
        overridden.push(name.clone());
    }
    for (name, section, key) in REGISTRY_COMPAT {
        let edge_name = format!("{ENV_PREFIX}{}_{}", section, key).to_ascii_uppercase();
        let Some((_, raw)) = env.iter().find(|(k, _)| k == name) else {
            continue;
        };
        if env.iter().any(|(k, _)| *k == edge_name) {
            continue;
        }
        let value = if *key == "listen" && raw.starts_with(':') {
            // registry:2 accepts ":5000" for all interfaces.
            toml::Value::String(format!("0.0.0.0{raw}"))
        } else if *key == "delete_enabled" {
            env_value(raw)
        } else {
            toml::Value::String(raw.clone())
        };
        if let toml::Value::Table(t) = table
            .entry(*section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            t.insert((*key).to_owned(), value);
        }
        overridden.push((*name).to_owned());
    }
    // registry:2's Let's Encrypt settings. Its cache is one file; ours is a directory: the
    // file's directory.
    for (name, key) in REGISTRY_LETSENCRYPT {
        let Some((_, raw)) = env.iter().find(|(k, _)| k == name) else {
            continue;
        };
        let value = match *key {
            "domains" => match yaml_list(raw) {
                toml::Value::String(s) => toml::Value::Array(
                    s.split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(|p| toml::Value::String(p.to_owned()))
                        .collect(),
                ),
                list => list,
            },
            "cache" => toml::Value::String(
                std::path::Path::new(raw)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or(".".to_owned(), |p| p.display().to_string()),
            ),
            _ => toml::Value::String(raw.clone()),
        };
        set_key(table, "tls", &format!("acme_{key}"), value);
        overridden.push((*name).to_owned());
    }
    // registry:2's S3 variables set keys of `[storage.s3]`, mapped as registry-core maps them.
    for (name, raw) in &env {
        let Some((key, value)) = registry_core::config::registry_s3_setting(name, raw) else {
            continue;
        };
        if let toml::Value::Table(storage) = table
            .entry("storage")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            if let toml::Value::Table(s3) = storage
                .entry("s3")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                s3.insert(key.to_owned(), value);
            }
        }
        overridden.push(name.clone());
    }
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = SECTIONS
            .iter()
            .find_map(|s| rest.strip_prefix(&format!("{s}_")).map(|k| (*s, k)))
        else {
            return Err(ConfigError::Value {
                origin: "environment".into(),
                key: name,
                message: format!("unknown section; sections are {}", SECTIONS.join(", ")),
            });
        };
        let mut value = env_value(&raw);
        // Lists also come comma-separated (`REGISTRY_EDGE_TLS_HOSTS=a.example,10.0.0.5`),
        // the form compose files and shells pass most easily.
        if LIST_KEYS.contains(&(section, key)) {
            if let toml::Value::String(s) = &value {
                value = toml::Value::Array(
                    s.split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(|p| toml::Value::String(p.to_owned()))
                        .collect(),
                );
            }
        }
        set_key(table, section, key, value);
        overridden.push(name);
    }
    Ok((overridden, ignored_env))
}
