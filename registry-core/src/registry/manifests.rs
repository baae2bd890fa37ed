//! Manifests: resolving tags, reads, validated writes (with their referrer links) and deletes.

use super::*;

impl Registry {
    /// The digest a reference names in `name`.
    pub(super) async fn resolve(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Digest, RegistryError> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match self.storage.get(&layout::tag_current_link(name, t)).await {
                Ok(b) => link_target(&b)?,
                Err(e) if e.is_not_found() => {
                    return Err(RegistryError::manifest_unknown(reference))
                }
                Err(e) => return Err(e.into()),
            },
        };
        if !self.exists(&layout::revision_link(name, &digest)).await? {
            return Err(RegistryError::manifest_unknown(reference));
        }
        Ok(digest)
    }

    pub async fn get_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, RegistryError> {
        let digest = self.resolve(name, reference).await?;
        let bytes = match self.storage.get(&layout::blob_data(&digest)).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(RegistryError::manifest_unknown(reference)),
            Err(e) => return Err(e.into()),
        };
        Ok(StoredManifest {
            media_type: manifest::detect_media_type(&bytes),
            digest,
            bytes,
        })
    }

    /// Stores a manifest (PUT). Returns its digest and, when it has one, its subject.
    pub async fn put_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<(Digest, Option<Digest>), RegistryError> {
        if bytes.len() > self.options.max_manifest_bytes {
            return Err(manifest_too_large(self.options.max_manifest_bytes));
        }
        let parsed = manifest::parse(&bytes, content_type)?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(RegistryError::digest_invalid(format!(
                        "the manifest has digest {actual}, not {d}"
                    ))
                    .with_detail(serde_json::json!({ "digest": d.to_string() })));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        match parsed.kind {
            Kind::Image => {
                for r in parsed.blobs.iter().filter(|r| !r.foreign) {
                    let linked = self.exists(&layout::layer_link(name, &r.digest)).await?
                        && self.exists(&layout::blob_data(&r.digest)).await?;
                    if !linked {
                        return Err(manifest_blob_unknown(&r.digest));
                    }
                }
            }
            Kind::Index => {
                for d in &parsed.manifests {
                    if !self.exists(&layout::revision_link(name, d)).await? {
                        return Err(manifest_blob_unknown(d));
                    }
                }
            }
        }
        self.storage.put(&layout::blob_data(&digest), bytes).await?;
        let link = Bytes::from(digest.to_string());
        self.storage
            .put(&layout::revision_link(name, &digest), link.clone())
            .await?;
        if let Some(subject) = &parsed.subject {
            self.storage
                .put(&layout::referrer_link(name, subject, &digest), link.clone())
                .await?;
        }
        if let Reference::Tag(t) = reference {
            self.storage
                .put(&layout::tag_index_link(name, t, &digest), link.clone())
                .await?;
            self.storage
                .put(&layout::tag_current_link(name, t), link)
                .await?;
        }
        Ok((digest, parsed.subject))
    }

    /// Deletes a manifest by digest (with the tags that point at it), or a tag. Returns the
    /// tags removed with a manifest.
    pub async fn delete_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Vec<Tag>, RegistryError> {
        self.check_delete()?;
        let mut removed = Vec::new();
        match reference {
            Reference::Tag(t) => {
                if !self.exists(&layout::tag_current_link(name, t)).await? {
                    return Err(RegistryError::manifest_unknown(reference));
                }
                self.storage.delete(&layout::tag_dir(name, t)).await?;
            }
            Reference::Digest(d) => {
                let stored = self.get_manifest(name, reference).await?;
                for tag in self.list_tags(name).await.unwrap_or_default() {
                    let Ok(tag) = tag.parse::<Tag>() else {
                        continue;
                    };
                    if let Ok(b) = self
                        .storage
                        .get(&layout::tag_current_link(name, &tag))
                        .await
                    {
                        if link_target(&b).ok().as_ref() == Some(d) {
                            self.storage.delete(&layout::tag_dir(name, &tag)).await?;
                            removed.push(tag);
                        }
                    }
                }
                if let Ok(p) = manifest::parse(&stored.bytes, None) {
                    if let Some(subject) = p.subject {
                        self.storage
                            .delete(parent(&layout::referrer_link(name, &subject, d)))
                            .await?;
                    }
                }
                self.storage
                    .delete(parent(&layout::revision_link(name, d)))
                    .await?;
            }
        }
        Ok(removed)
    }
}
