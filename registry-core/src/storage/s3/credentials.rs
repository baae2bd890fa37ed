//! Which credentials sign requests, first found wins:
//!
//! 1. the access and secret key of the settings (file, flags, `REGISTRY_STORAGE_S3_*`);
//! 2. the standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!    `AWS_SESSION_TOKEN`);
//! 3. a profile (`profile` setting, else `AWS_PROFILE`, else `default`) of the shared
//!    credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`);
//! 4. none given: object_store's own chain (web identity, container and instance credentials).

use super::{S3Error, S3Settings};

pub(super) struct Credentials {
    pub key_id: String,
    pub secret_key: String,
    pub token: Option<String>,
}

pub(super) fn resolve(s: &S3Settings) -> Result<Option<Credentials>, S3Error> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (&s.access_key, &s.secret_key) {
        (Some(k), Some(secret)) => {
            return Ok(Some(Credentials {
                key_id: k.clone(),
                secret_key: secret.0.clone(),
                token: s.session_token.as_ref().map(|t| t.0.clone()),
            }))
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(S3Error {
                setting: "access_key/secret_key",
                message: "give both the access key and the secret key, or neither".into(),
            })
        }
        (None, None) => {}
    }
    if let (Some(k), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Some(Credentials {
            key_id: k,
            secret_key: secret,
            token: env("AWS_SESSION_TOKEN"),
        }));
    }
    let explicit = s.profile.clone().or_else(|| env("AWS_PROFILE"));
    let profile = explicit.clone().unwrap_or_else(|| "default".into());
    let file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials")));
    let text = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok());
    match text.and_then(|t| profile_in(&t, &profile)) {
        Some(c) => Ok(Some(c)),
        // A profile asked for by name must exist.
        None if explicit.is_some() => Err(S3Error {
            setting: "profile",
            message: format!(
                "profile {profile:?} has no aws_access_key_id and aws_secret_access_key in {}",
                file.map(|f| f.display().to_string())
                    .unwrap_or_else(|| "the shared credentials file".into())
            ),
        }),
        None => Ok(None),
    }
}

/// The keys of `[profile]` in an AWS shared credentials file (an INI file).
fn profile_in(text: &str, profile: &str) -> Option<Credentials> {
    let mut section = None::<String>;
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            section = Some(
                name.strip_prefix("profile ")
                    .unwrap_or(name)
                    .trim()
                    .to_owned(),
            );
            continue;
        }
        if section.as_deref() != Some(profile) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_owned();
            match k.trim() {
                "aws_access_key_id" => key_id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(Credentials {
        key_id: key_id?,
        secret_key: secret?,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_from_the_shared_file() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n\
                    [profile ci]\n# note\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=T\n";
        let d = profile_in(text, "default").unwrap();
        assert_eq!((d.key_id.as_str(), d.secret_key.as_str()), ("A", "B"));
        let ci = profile_in(text, "ci").unwrap();
        assert_eq!(ci.token.as_deref(), Some("T"));
        assert!(profile_in(text, "other").is_none());
        assert!(profile_in("[x]\naws_access_key_id=1\n", "x").is_none());
    }

    #[test]
    fn half_given_keys_are_refused() {
        let s = S3Settings {
            access_key: Some("k".into()),
            ..Default::default()
        };
        assert_eq!(resolve(&s).err().unwrap().setting, "access_key/secret_key");
    }
}
