//! Blobs: sizes, reads, redirects, links, mounts and deletes.

use super::*;

impl Registry {
    /// The size of a blob linked into `name` (as a layer, or as a manifest).
    pub async fn blob_size(&self, name: &RepoName, digest: &Digest) -> Result<u64, RegistryError> {
        let linked = self.exists(&layout::layer_link(name, digest)).await?
            || self.exists(&layout::revision_link(name, digest)).await?;
        if !linked {
            return Err(RegistryError::blob_unknown(digest));
        }
        match self.storage.stat(&layout::blob_data(digest)).await {
            Ok(m) => Ok(m.size),
            Err(e) if e.is_not_found() => Err(RegistryError::blob_unknown(digest)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn blob_stream(
        &self,
        digest: &Digest,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<ByteStream, RegistryError> {
        match self.storage.reader(&layout::blob_data(digest), range).await {
            Ok(s) => Ok(s),
            Err(e) if e.is_not_found() => Err(RegistryError::blob_unknown(digest)),
            Err(e) => Err(e.into()),
        }
    }

    /// A pre-signed URL of the blob's bytes in the store, when the store is configured to
    /// redirect blob GETs there (S3's `redirect`). The caller has checked the repository link.
    pub async fn blob_redirect(&self, digest: &Digest) -> Result<Option<String>, RegistryError> {
        Ok(self
            .storage
            .presign(&layout::blob_data(digest), REDIRECT_VALIDITY)
            .await?)
    }

    /// Unlinks a blob from a repository; the data goes at the next garbage collection.
    pub async fn delete_blob(&self, name: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
        self.check_delete()?;
        let link = layout::layer_link(name, digest);
        if !self.exists(&link).await? {
            return Err(RegistryError::blob_unknown(digest));
        }
        self.storage.delete(parent(&link)).await?;
        Ok(())
    }

    /// Links `digest` from repository `from` into `name`; its size, or `None` when `from` has
    /// no such blob.
    pub async fn mount_blob(
        &self,
        name: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let size = match self.blob_size(from, digest).await {
            Ok(s) => s,
            Err(e) if e.code == ErrorCode::BlobUnknown => return Ok(None),
            Err(e) => return Err(e),
        };
        self.link_blob(name, digest).await?;
        metrics::upload_outcome("mounted");
        Ok(Some(size))
    }

    pub(super) async fn link_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        self.storage
            .put(
                &layout::layer_link(name, digest),
                Bytes::from(digest.to_string()),
            )
            .await?;
        Ok(())
    }
}
