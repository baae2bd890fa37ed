//! Listings: tags, the catalog and referrers.

use super::*;

impl Registry {
    /// The tags of a repository, sorted. `NAME_UNKNOWN` when there is no such repository.
    pub async fn list_tags(&self, name: &RepoName) -> Result<Vec<String>, RegistryError> {
        match self.storage.list(&layout::tags_dir(name)).await {
            Ok(mut tags) => {
                tags.retain(|t| t.parse::<Tag>().is_ok());
                tags.sort();
                Ok(tags)
            }
            Err(e) if e.is_not_found() => {
                if self.dir_exists(&layout::manifests_dir(name)).await?
                    || self.dir_exists(&layout::repo_dir(name)).await?
                {
                    Ok(Vec::new())
                } else {
                    Err(RegistryError::name_unknown(name))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every repository with manifests, sorted (the catalog).
    pub async fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .walk_repositories()
            .await?
            .into_iter()
            .filter_map(|(name, has_manifests)| has_manifests.then_some(name))
            .collect())
    }

    /// The manifests in `name` whose subject is `subject`, as an OCI image index; with
    /// `artifact_type`, only those of that type.
    pub async fn referrers(
        &self,
        name: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Value, RegistryError> {
        let mut digests = Vec::new();
        let dir = layout::referrers_dir(name, subject);
        match self.storage.list(&dir).await {
            Ok(algs) => {
                for alg in algs {
                    for hex in self
                        .storage
                        .list(&format!("{dir}/{alg}"))
                        .await
                        .unwrap_or_default()
                    {
                        if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                            digests.push(d);
                        }
                    }
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        digests.sort();
        let mut manifests = Vec::new();
        for d in digests {
            let stored = match self.get_manifest(name, &Reference::Digest(d.clone())).await {
                Ok(m) => m,
                Err(e) if e.code == ErrorCode::ManifestUnknown => continue,
                Err(e) => return Err(e),
            };
            let Ok(parsed) = manifest::parse(&stored.bytes, None) else {
                continue;
            };
            if artifact_type.is_some() && parsed.artifact_type().as_deref() != artifact_type {
                continue;
            }
            manifests.push(parsed.referrer_descriptor(&d, stored.bytes.len()));
        }
        Ok(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_INDEX,
            "manifests": manifests,
        }))
    }
}
