//! Distribution's storage layout (`docker/registry/v2/...`), so a `registry:2` data directory is
//! served as it is and ours can be handed back to it.

use crate::digest::Digest;
use crate::name::{RepoName, Tag, UploadId};

pub const ROOT: &str = "docker/registry/v2";

pub fn blobs_root() -> String {
    format!("{ROOT}/blobs")
}

pub fn repositories_root() -> String {
    format!("{ROOT}/repositories")
}

/// `blobs/<alg>/<first two hex>/<hex>` — the directory of one blob.
pub fn blob_dir(d: &Digest) -> String {
    format!(
        "{ROOT}/blobs/{}/{}/{}",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

pub fn blob_data(d: &Digest) -> String {
    format!("{}/data", blob_dir(d))
}

pub fn repo_dir(name: &RepoName) -> String {
    format!("{ROOT}/repositories/{name}")
}

/// The link that makes a layer (or config) blob part of a repository.
pub fn layer_link(name: &RepoName, d: &Digest) -> String {
    format!(
        "{}/_layers/{}/{}/link",
        repo_dir(name),
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn manifests_dir(name: &RepoName) -> String {
    format!("{}/_manifests", repo_dir(name))
}

pub fn revisions_dir(name: &RepoName) -> String {
    format!("{}/revisions", manifests_dir(name))
}

pub fn revision_link(name: &RepoName, d: &Digest) -> String {
    format!(
        "{}/{}/{}/link",
        revisions_dir(name),
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn tags_dir(name: &RepoName) -> String {
    format!("{}/tags", manifests_dir(name))
}

pub fn tag_dir(name: &RepoName, tag: &Tag) -> String {
    format!("{}/{tag}", tags_dir(name))
}

pub fn tag_current_link(name: &RepoName, tag: &Tag) -> String {
    format!("{}/current/link", tag_dir(name, tag))
}

pub fn tag_index_link(name: &RepoName, tag: &Tag, d: &Digest) -> String {
    format!(
        "{}/index/{}/{}/link",
        tag_dir(name, tag),
        d.algorithm().as_str(),
        d.hex()
    )
}

/// Our referrers index (Distribution 2.8 has none): one link per manifest whose `subject` is
/// `subject`. Under a `_`-prefixed directory, which Distribution skips.
pub fn referrers_dir(name: &RepoName, subject: &Digest) -> String {
    format!(
        "{}/_referrers/{}/{}",
        repo_dir(name),
        subject.algorithm().as_str(),
        subject.hex()
    )
}

pub fn referrer_link(name: &RepoName, subject: &Digest, d: &Digest) -> String {
    format!(
        "{}/{}/{}/link",
        referrers_dir(name, subject),
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn uploads_dir(name: &RepoName) -> String {
    format!("{}/_uploads", repo_dir(name))
}

pub fn upload_dir(name: &RepoName, id: &UploadId) -> String {
    format!("{}/{id}", uploads_dir(name))
}

pub fn upload_data(name: &RepoName, id: &UploadId) -> String {
    format!("{}/data", upload_dir(name, id))
}

/// The running hash of an upload's first `offset` bytes (Distribution's place for it).
pub fn upload_hashstate(name: &RepoName, id: &UploadId, alg: &str, offset: u64) -> String {
    format!("{}/hashstates/{alg}/{offset}", upload_dir(name, id))
}

pub fn upload_startedat(name: &RepoName, id: &UploadId) -> String {
    format!("{}/startedat", upload_dir(name, id))
}
