//! `[notifications]`: the endpoints events go to, named the way Distribution names them
//! (`name`, `url`, `headers`, `timeout`, `threshold`, `backoff`, `ignoredmediatypes`,
//! `ignore.mediatypes`, `ignore.actions`, `disabled`), plus what Distribution lacks:
//! `manifests_only`, an HMAC `secret`, and the bound of the durable queue, `max_pending`.
//! The same schema serves registry-core's file (`[notifications]`) and the edge's
//! `proxy.toml` (`[notifications]`).

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::{Action, SIGNATURE_HEADER};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_THRESHOLD: u32 = 5;
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// Events kept per endpoint while it cannot take them; the oldest go beyond this.
pub const DEFAULT_MAX_PENDING: usize = 100_000;
/// Events per envelope, and so per spooled segment.
pub const MAX_BATCH: usize = 100;
/// A secret shorter than this is refused: it would be guessable.
pub const MIN_SECRET_LEN: usize = 16;
const MAX_ENDPOINTS: usize = 32;

/// The `[notifications]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsFile {
    #[serde(default)]
    pub endpoints: Vec<EndpointFile>,
    pub events: Option<EventsFile>,
    /// The name of this process's queues in the store (default: the host name). Processes
    /// that share a store need distinct, stable names; a process restarted under the same
    /// name delivers what the previous one left.
    pub instance: Option<String>,
}

/// `[notifications.events]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsFile {
    /// Manifest events list the descriptors the manifest references (Distribution's
    /// `includereferences`; off by default, as there).
    pub includereferences: Option<bool>,
}

/// One `[[notifications.endpoints]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointFile {
    pub name: String,
    pub url: String,
    /// Headers sent with every POST: a value, or a list of values (Distribution's form).
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValues>,
    pub timeout: Option<String>,
    pub threshold: Option<u32>,
    pub backoff: Option<String>,
    #[serde(default)]
    pub ignoredmediatypes: Vec<String>,
    pub ignore: Option<IgnoreFile>,
    #[serde(default)]
    pub disabled: bool,
    /// Only manifest and tag events (push, pull, delete), no blob events.
    #[serde(default)]
    pub manifests_only: bool,
    /// Signs each body: `X-Registry-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
    pub secret: Option<String>,
    pub max_pending: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IgnoreFile {
    #[serde(default)]
    pub mediatypes: Vec<String>,
    #[serde(default)]
    pub actions: Vec<String>,
}

/// Validated notification settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The endpoints, disabled ones included (their queues are kept, not sent).
    pub endpoints: Vec<Endpoint>,
    pub include_references: bool,
    /// Names this process's queues in the store.
    pub instance: String,
    /// `source.addr` of the events: this host's name and the port clients use.
    pub source_addr: String,
}

/// A validated endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: url::Url,
    pub headers: HeaderMap,
    pub timeout: Duration,
    pub threshold: u32,
    pub backoff: Duration,
    pub ignored_media_types: Vec<String>,
    pub ignored_actions: Vec<Action>,
    pub disabled: bool,
    pub manifests_only: bool,
    pub secret: Option<crate::storage::s3::Secret>,
    pub max_pending: usize,
}

impl Settings {
    /// Whether any endpoint is configured (disabled ones keep their queues).
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// A name usable as a metric label and a storage key component.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// This host's name, made usable as a queue name.
pub fn host_name() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let h: String = h
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if valid_name(&h) {
        h
    } else {
        "localhost".into()
    }
}

fn duration(
    endpoint: &str,
    key: &str,
    v: Option<&str>,
    default: Duration,
) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v).map_err(|e| {
            format!("endpoint {endpoint:?}: {key}: {v:?} is not a duration like \"5s\": {e}")
        }),
    }
}

impl NotificationsFile {
    /// Validates the table; the error names the endpoint and the key. `port` is the one
    /// clients reach this process on (for `source.addr`).
    pub fn validate(&self, port: Option<u16>) -> Result<Settings, String> {
        let instance = match &self.instance {
            Some(i) if valid_name(i) => i.clone(),
            Some(i) => {
                return Err(format!(
                    "instance: {i:?} must be 1 to 64 letters, digits, '.', '_' or '-'"
                ))
            }
            None => host_name(),
        };
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(format!("endpoints: at most {MAX_ENDPOINTS}"));
        }
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for e in &self.endpoints {
            let n = &e.name;
            if !valid_name(n) {
                return Err(format!(
                    "endpoint {n:?}: name must be 1 to 64 letters, digits, '.', '_' or '-'"
                ));
            }
            if endpoints.iter().any(|x| &x.name == n) {
                return Err(format!("endpoint {n:?}: name used twice"));
            }
            let url = url::Url::parse(&e.url)
                .map_err(|err| format!("endpoint {n:?}: url: {:?}: {err}", e.url))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!(
                    "endpoint {n:?}: url: {:?} must be an http:// or https:// URL",
                    e.url
                ));
            }
            let mut headers = HeaderMap::new();
            for (k, v) in &e.headers {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("endpoint {n:?}: headers: {k:?} is not a header name"))?;
                if [
                    http::header::CONTENT_TYPE,
                    http::header::CONTENT_LENGTH,
                    http::header::HOST,
                    http::header::TRANSFER_ENCODING,
                    HeaderName::from_static(SIGNATURE_HEADER),
                ]
                .contains(&name)
                {
                    return Err(format!("endpoint {n:?}: headers: {k} is set by the sender"));
                }
                let values = match v {
                    HeaderValues::One(s) => std::slice::from_ref(s),
                    HeaderValues::Many(l) => l.as_slice(),
                };
                for s in values {
                    let value = HeaderValue::from_str(s).map_err(|_| {
                        format!(
                            "endpoint {n:?}: headers: {k}: the value is not a valid header value"
                        )
                    })?;
                    headers.append(name.clone(), value);
                }
            }
            let timeout = duration(n, "timeout", e.timeout.as_deref(), DEFAULT_TIMEOUT)?;
            if timeout.is_zero() {
                return Err(format!("endpoint {n:?}: timeout must be more than 0"));
            }
            let backoff = duration(n, "backoff", e.backoff.as_deref(), DEFAULT_BACKOFF)?;
            let ignore = e.ignore.clone().unwrap_or_default();
            let mut ignored_actions = Vec::new();
            for a in &ignore.actions {
                ignored_actions.push(a.parse::<Action>().map_err(|()| {
                    format!(
                        "endpoint {n:?}: ignore.actions: {a:?} is not one of push, pull, mount, delete"
                    )
                })?);
            }
            let secret = match &e.secret {
                None => None,
                Some(s) if s.len() >= MIN_SECRET_LEN => Some(crate::storage::s3::Secret(s.clone())),
                Some(_) => {
                    return Err(format!(
                        "endpoint {n:?}: secret must be at least {MIN_SECRET_LEN} characters (e.g. `openssl rand -hex 32`)"
                    ))
                }
            };
            let max_pending = e.max_pending.unwrap_or(DEFAULT_MAX_PENDING);
            if max_pending < MAX_BATCH {
                return Err(format!(
                    "endpoint {n:?}: max_pending must be at least {MAX_BATCH}"
                ));
            }
            endpoints.push(Endpoint {
                name: n.clone(),
                url,
                headers,
                timeout,
                threshold: e.threshold.unwrap_or(DEFAULT_THRESHOLD),
                backoff,
                ignored_media_types: e
                    .ignoredmediatypes
                    .iter()
                    .chain(&ignore.mediatypes)
                    .cloned()
                    .collect(),
                ignored_actions,
                disabled: e.disabled,
                manifests_only: e.manifests_only,
                secret,
                max_pending,
            });
        }
        let host = host_name();
        Ok(Settings {
            endpoints,
            include_references: self
                .events
                .as_ref()
                .and_then(|e| e.includereferences)
                .unwrap_or(false),
            instance,
            source_addr: match port {
                Some(p) => format!("{host}:{p}"),
                None => host,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, String> {
        #[derive(Deserialize)]
        struct F {
            notifications: NotificationsFile,
        }
        toml::from_str::<F>(text)
            .map_err(|e| e.to_string())?
            .notifications
            .validate(Some(5000))
    }

    #[test]
    fn distribution_names_and_ours() {
        let s = parse(
            r#"
            [notifications]
            instance = "node-1"
            events = { includereferences = true }
            [[notifications.endpoints]]
            name = "ci"
            url = "https://ci.example/hook"
            headers = { Authorization = ["Bearer t"], X-Team = "infra" }
            timeout = "2s"
            threshold = 3
            backoff = "10s"
            ignoredmediatypes = ["application/octet-stream"]
            ignore = { actions = ["pull"] }
            secret = "0123456789abcdef"
            max_pending = 500
            [[notifications.endpoints]]
            name = "audit"
            url = "http://127.0.0.1:9/x"
            manifests_only = true
            disabled = true
            "#,
        )
        .unwrap();
        assert!(s.include_references);
        assert_eq!(s.instance, "node-1");
        assert!(s.source_addr.ends_with(":5000"));
        let ci = &s.endpoints[0];
        assert_eq!(ci.headers["authorization"], "Bearer t");
        assert_eq!(ci.headers["x-team"], "infra");
        assert_eq!(ci.timeout, Duration::from_secs(2));
        assert_eq!(ci.threshold, 3);
        assert_eq!(ci.backoff, Duration::from_secs(10));
        assert_eq!(ci.ignored_actions, vec![Action::Pull]);
        assert_eq!(ci.ignored_media_types, vec!["application/octet-stream"]);
        assert_eq!(ci.max_pending, 500);
        assert!(ci.secret.is_some());
        let audit = &s.endpoints[1];
        assert!(audit.manifests_only && audit.disabled);
        assert_eq!(audit.timeout, DEFAULT_TIMEOUT);
        assert_eq!(audit.max_pending, DEFAULT_MAX_PENDING);
    }

    #[test]
    fn bad_values_name_the_endpoint_and_key() {
        let one = |extra: &str| {
            parse(&format!(
                "[[notifications.endpoints]]\nname = \"hook\"\nurl = \"http://127.0.0.1:1/\"\n{extra}"
            ))
            .unwrap_err()
        };
        assert!(one("timeout = \"soon\"").contains("endpoint \"hook\": timeout"));
        assert!(one("timeout = \"0s\"").contains("timeout must be more than 0"));
        assert!(one("ignore = { actions = [\"push\", \"fetch\"] }").contains("\"fetch\""));
        assert!(one("secret = \"short\"").contains("at least 16"));
        assert!(one("max_pending = 3").contains("max_pending"));
        assert!(one("headers = { Content-Type = \"text/plain\" }").contains("set by the sender"));
        assert!(one("headers = { X-A = \"bad\\nvalue\" }").contains("not a valid header value"));
        assert!(one("colour = \"red\"").contains("unknown field"));
        let url = |u: &str| {
            parse(&format!(
                "[[notifications.endpoints]]\nname = \"h\"\nurl = \"{u}\""
            ))
            .unwrap_err()
        };
        assert!(url("ftp://127.0.0.1/").contains("http:// or https://"));
        assert!(url("not a url").contains("url"));
        assert!(
            parse("[[notifications.endpoints]]\nname = \"a b\"\nurl = \"http://127.0.0.1/\"")
                .unwrap_err()
                .contains("name must be")
        );
        assert!(parse(
            "[[notifications.endpoints]]\nname = \"a\"\nurl = \"http://127.0.0.1/\"\n[[notifications.endpoints]]\nname = \"a\"\nurl = \"http://127.0.0.1/\""
        )
        .unwrap_err()
        .contains("used twice"));
        assert!(parse("[notifications]\ninstance = \"../x\"")
            .unwrap_err()
            .contains("instance"));
    }
}
