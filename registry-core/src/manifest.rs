//! Manifest parsing and validation: which media type a manifest is, what it references, and its
//! referrers descriptor.

use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::error::RegistryError;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What kind of document a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image manifest (OCI or Docker schema 2): a config and layers.
    Image,
    /// An index (OCI image index or Docker manifest list): child manifests.
    Index,
}

/// A descriptor a manifest points at.
#[derive(Debug, Clone)]
pub struct Reference {
    pub digest: Digest,
    /// Foreign layers (with `urls`) need not be in the registry.
    pub foreign: bool,
}

/// A parsed, validated manifest.
#[derive(Debug)]
pub struct Parsed {
    pub media_type: String,
    pub kind: Kind,
    /// Blobs (config and layers) an image manifest references.
    pub blobs: Vec<Reference>,
    /// Child manifests an index references.
    pub manifests: Vec<Digest>,
    pub subject: Option<Digest>,
    json: Map<String, Value>,
}

fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Image),
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        _ => None,
    }
}

/// The media type of stored manifest bytes: its `mediaType`, else what its shape says.
pub fn detect_media_type(bytes: &[u8]) -> String {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(bytes) else {
        return OCI_MANIFEST.to_owned();
    };
    if let Some(Value::String(mt)) = m.get("mediaType") {
        return mt.clone();
    }
    if m.get("schemaVersion") == Some(&Value::from(1)) {
        return DOCKER_SCHEMA1_SIGNED.to_owned();
    }
    if m.contains_key("manifests") {
        OCI_INDEX.to_owned()
    } else {
        OCI_MANIFEST.to_owned()
    }
}

fn descriptor_digest(d: &Value, field: &str) -> Result<Digest, RegistryError> {
    let s = d.get("digest").and_then(Value::as_str).ok_or_else(|| {
        RegistryError::manifest_invalid(format!("{field}: descriptor without a digest"))
    })?;
    s.parse().map_err(|e| {
        RegistryError::manifest_invalid(format!("{field}: {e}"))
            .with_detail(serde_json::json!({ "digest": s }))
    })
}

fn check_descriptor(d: &Value, field: &str) -> Result<Digest, RegistryError> {
    if !d.is_object() {
        return Err(RegistryError::manifest_invalid(format!(
            "{field}: not a descriptor"
        )));
    }
    if d.get("mediaType").and_then(Value::as_str).is_none() {
        return Err(RegistryError::manifest_invalid(format!(
            "{field}: descriptor without a mediaType"
        )));
    }
    if d.get("size").and_then(Value::as_u64).is_none() {
        return Err(RegistryError::manifest_invalid(format!(
            "{field}: descriptor without a valid size"
        )));
    }
    descriptor_digest(d, field)
}

/// Parses and validates a manifest sent with `content_type` (parameters already stripped).
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, RegistryError> {
    let json = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err(RegistryError::manifest_invalid(
                "manifest is not a JSON object",
            ))
        }
        Err(e) => {
            return Err(RegistryError::manifest_invalid(format!(
                "manifest is not valid JSON: {e}"
            )))
        }
    };
    match json.get("schemaVersion").and_then(Value::as_u64) {
        Some(2) => {}
        Some(1) => {
            return Err(RegistryError::manifest_invalid(
                "schema 1 manifests are not supported",
            ))
        }
        _ => return Err(RegistryError::manifest_invalid("schemaVersion must be 2")),
    }
    let body_type = match json.get("mediaType") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(RegistryError::manifest_invalid(
                "mediaType must be a string",
            ))
        }
    };
    let media_type = match (content_type, body_type) {
        (Some(h), Some(b)) if h != b => {
            return Err(RegistryError::manifest_invalid(format!(
                "Content-Type {h} does not match the manifest's mediaType {b}"
            )))
        }
        (Some(h), _) => h.to_owned(),
        (None, Some(b)) => b.to_owned(),
        (None, None) => detect_media_type(bytes),
    };
    let kind = kind_of(&media_type).ok_or_else(|| {
        RegistryError::manifest_invalid(format!("unsupported manifest media type {media_type}"))
    })?;
    let mut parsed = Parsed {
        media_type,
        kind,
        blobs: Vec::new(),
        manifests: Vec::new(),
        subject: None,
        json: Map::new(),
    };
    match kind {
        Kind::Image => {
            let config = json.get("config").ok_or_else(|| {
                RegistryError::manifest_invalid("image manifest without a config")
            })?;
            parsed.blobs.push(Reference {
                digest: check_descriptor(config, "config")?,
                foreign: false,
            });
            let layers = match json.get("layers") {
                Some(Value::Array(l)) => l.as_slice(),
                None => &[],
                Some(_) => return Err(RegistryError::manifest_invalid("layers must be an array")),
            };
            for (i, l) in layers.iter().enumerate() {
                let digest = check_descriptor(l, &format!("layers[{i}]"))?;
                let foreign = l
                    .get("urls")
                    .and_then(Value::as_array)
                    .is_some_and(|u| !u.is_empty());
                parsed.blobs.push(Reference { digest, foreign });
            }
        }
        Kind::Index => {
            let manifests = match json.get("manifests") {
                Some(Value::Array(m)) => m.as_slice(),
                _ => {
                    return Err(RegistryError::manifest_invalid(
                        "index without a manifests array",
                    ))
                }
            };
            for (i, m) in manifests.iter().enumerate() {
                parsed
                    .manifests
                    .push(check_descriptor(m, &format!("manifests[{i}]"))?);
            }
        }
    }
    if let Some(s) = json.get("subject") {
        parsed.subject = Some(check_descriptor(s, "subject")?);
    }
    parsed.json = json;
    Ok(parsed)
}

impl Parsed {
    /// The artifact type a referrers listing reports: `artifactType`, else the config's media type.
    pub fn artifact_type(&self) -> Option<String> {
        if let Some(Value::String(t)) = self.json.get("artifactType") {
            return Some(t.clone());
        }
        if self.kind == Kind::Image {
            return self
                .json
                .get("config")
                .and_then(|c| c.get("mediaType"))
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        None
    }

    /// This manifest as a descriptor in a referrers index.
    pub fn referrer_descriptor(&self, digest: &Digest, size: usize) -> Value {
        let mut d = serde_json::json!({
            "mediaType": self.media_type,
            "digest": digest.to_string(),
            "size": size,
        });
        if let Some(t) = self.artifact_type() {
            d["artifactType"] = Value::String(t);
        }
        if let Some(a @ Value::Object(_)) = self.json.get("annotations") {
            d["annotations"] = a.clone();
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn validates() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{D}","size":0}},"layers":[]}}"#
        );
        let p = parse(m.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(p.kind, Kind::Image);
        assert_eq!(p.artifact_type().as_deref(), Some("x"));
        assert!(parse(m.as_bytes(), Some(OCI_INDEX)).is_err());
        assert!(parse(b"{", Some(OCI_MANIFEST)).is_err());
        assert!(parse(b"[]", Some(OCI_MANIFEST)).is_err());
        assert!(parse(br#"{"schemaVersion":2}"#, Some("text/plain")).is_err());
        let bad = m.replace(D, "sha256:zz");
        assert!(parse(bad.as_bytes(), Some(OCI_MANIFEST)).is_err());
        assert_eq!(detect_media_type(m.as_bytes()), OCI_MANIFEST);
    }
}
