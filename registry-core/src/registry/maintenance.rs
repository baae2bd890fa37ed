//! Maintenance: purging stale uploads, and the readiness check.

use super::*;

impl Registry {
    /// Deletes upload sessions started longer than `max_age` ago, and sessions that never got
    /// past their first request (no data) after [`EMPTY_UPLOAD_AGE`] or `max_age`, whichever is
    /// sooner. Returns how many went.
    pub async fn purge_uploads(&self, max_age: Duration) -> Result<usize, RegistryError> {
        let now = SystemTime::now();
        let mut purged = 0;
        for repo in self.all_repository_dirs().await? {
            let Ok(name) = repo.parse::<RepoName>() else {
                continue;
            };
            let Ok(ids) = self.storage.list(&layout::uploads_dir(&name)).await else {
                continue;
            };
            for id in ids {
                let Ok(id) = id.parse::<UploadId>() else {
                    continue;
                };
                let started = match self
                    .storage
                    .get(&layout::upload_startedat(&name, &id))
                    .await
                {
                    Ok(b) => std::str::from_utf8(&b)
                        .ok()
                        .and_then(|s| humantime::parse_rfc3339_weak(s.trim()).ok()),
                    Err(_) => None,
                };
                let data = self
                    .storage
                    .stat_write(&layout::upload_data(&name, &id))
                    .await
                    .ok();
                let started = started
                    .or(data.as_ref().map(|m| m.modified))
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let empty = data.as_ref().is_none_or(|m| m.size == 0);
                let limit = if empty {
                    max_age.min(EMPTY_UPLOAD_AGE)
                } else {
                    max_age
                };
                if now.duration_since(started).unwrap_or_default() > limit {
                    let state = self.upload_state(&name, &id);
                    let _guard = state.lock().await;
                    self.storage.delete(&layout::upload_dir(&name, &id)).await?;
                    self.forget_upload(&name, &id);
                    metrics::upload_outcome("purged");
                    purged += 1;
                }
            }
        }
        // What the store itself keeps of writes never finished (S3 multipart uploads, whether
        // this registry or Distribution started them).
        let older_than = now.checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH);
        match self
            .storage
            .purge_incomplete(&layout::repositories_root(), older_than)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(aborted = n, "aborted abandoned multipart uploads"),
            Err(e) => tracing::warn!(error = %e, "could not list abandoned multipart uploads"),
        }
        Ok(purged)
    }

    /// Discards an upload session at once (a monolithic upload that failed: its client was
    /// never given the session, so nobody can resume it).
    pub async fn discard_upload(&self, name: &RepoName, id: &UploadId) {
        let state = self.upload_state(name, id);
        let _guard = state.lock().await;
        if let Err(e) = self.storage.delete(&layout::upload_dir(name, id)).await {
            if !e.is_not_found() {
                tracing::warn!(error = %e, "could not discard a failed upload");
            }
        }
        self.forget_upload(name, id);
    }

    /// Whether the store answers (a listing of the repositories' root), for readiness checks.
    pub async fn ready(&self) -> Result<(), String> {
        match self.storage.list(&layout::repositories_root()).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(format!("the store does not answer: {e}")),
        }
    }

    /// Every repository directory (with manifests, or only uploads or layers), sorted.
    pub(crate) async fn all_repository_dirs(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .walk_repositories()
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// Walks `repositories/`: a directory holding `_`-prefixed entries is a repository (with
    /// manifests when one is `_manifests`, as Distribution decides); other children with valid
    /// names are walked further, since repositories nest. Sorted by name.
    pub(super) async fn walk_repositories(&self) -> Result<Vec<(String, bool)>, RegistryError> {
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        let root = layout::repositories_root();
        while let Some(rel) = stack.pop() {
            let path = if rel.is_empty() {
                root.clone()
            } else {
                format!("{root}/{rel}")
            };
            let children = match self.storage.list(&path).await {
                Ok(c) => c,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            if !rel.is_empty() && children.iter().any(|c| c.starts_with('_')) {
                out.push((rel.clone(), children.iter().any(|c| c == "_manifests")));
            }
            for c in children.into_iter().filter(|c| !c.starts_with('_')) {
                let child = if rel.is_empty() {
                    c
                } else {
                    format!("{rel}/{c}")
                };
                if child.parse::<RepoName>().is_ok() {
                    stack.push(child);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}
