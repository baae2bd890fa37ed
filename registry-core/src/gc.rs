//! Garbage collection: mark every blob reachable from a live manifest, sweep the rest.
//!
//! A manifest is live when a tag points at it, when it is younger than the grace period, when a
//! live index lists it, or when its subject is live (referrers stay with their subject). Blobs
//! younger than the grace period, or linked into a repository within it, are never swept, and
//! manifests written while the collection runs are marked again just before the sweep, so a push
//! in flight is safe.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::error::RegistryError;
use crate::manifest;
use crate::name::{RepoName, Tag};
use crate::registry::{parent, Registry};
use crate::storage::layout;

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Default)]
pub struct Report {
    /// Untagged, unreferenced manifests, by repository.
    pub manifests: Vec<(String, Digest)>,
    pub blobs: Vec<Digest>,
    pub bytes: u64,
    /// Untagged manifests and unreferenced blobs kept only because they are younger than the
    /// grace period: what a run after it would remove too (a delete just done shows here).
    pub young_manifests: usize,
    pub young_blobs: usize,
    pub grace: Duration,
}

impl Report {
    /// What the `gc` commands print: one line per manifest and blob, then a summary that says
    /// what the grace period kept.
    pub fn lines(&self, dry_run: bool) -> Vec<String> {
        let verb = if dry_run { "would remove" } else { "removed" };
        let mut out = Vec::new();
        for (repo, d) in &self.manifests {
            out.push(format!("{verb} manifest {repo}@{d}"));
        }
        for d in &self.blobs {
            out.push(format!("{verb} blob {d}"));
        }
        out.push(format!(
            "{verb} {} manifests and {} blobs ({} bytes)",
            self.manifests.len(),
            self.blobs.len(),
            self.bytes
        ));
        if self.young_manifests + self.young_blobs > 0 {
            out.push(format!(
                "kept {} untagged manifests and {} unreferenced blobs younger than the grace period ({}): a run after it removes them (or pass --grace 0s when no push is in flight)",
                self.young_manifests,
                self.young_blobs,
                humantime::format_duration(self.grace)
            ));
        }
        out
    }
}

struct RepoScan {
    name: RepoName,
    /// Every manifest revision and when its link was written.
    revisions: BTreeMap<Digest, SystemTime>,
    tagged: BTreeSet<Digest>,
    /// Layer links and when they were written.
    layers: HashMap<Digest, SystemTime>,
}

async fn digests_under(
    registry: &Registry,
    dir: &str,
) -> Result<Vec<(Digest, SystemTime)>, RegistryError> {
    let s = registry.storage();
    let mut out = Vec::new();
    let algs = match s.list(dir).await {
        Ok(a) => a,
        Err(e) if e.is_not_found() => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for alg in algs {
        for hex in s.list(&format!("{dir}/{alg}")).await.unwrap_or_default() {
            let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                continue;
            };
            if let Ok(m) = s.stat(&format!("{dir}/{alg}/{hex}/link")).await {
                out.push((d, m.modified));
            }
        }
    }
    Ok(out)
}

async fn scan_repo(registry: &Registry, name: RepoName) -> Result<RepoScan, RegistryError> {
    let s = registry.storage();
    let revisions = digests_under(registry, &layout::revisions_dir(&name))
        .await?
        .into_iter()
        .collect();
    let layers = digests_under(registry, &format!("{}/_layers", layout::repo_dir(&name)))
        .await?
        .into_iter()
        .collect();
    let mut tagged = BTreeSet::new();
    for tag in s.list(&layout::tags_dir(&name)).await.unwrap_or_default() {
        let Ok(tag) = tag.parse::<Tag>() else {
            continue;
        };
        if let Ok(b) = s.get(&layout::tag_current_link(&name, &tag)).await {
            if let Some(d) = std::str::from_utf8(&b)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                tagged.insert(d);
            }
        }
    }
    Ok(RepoScan {
        name,
        revisions,
        tagged,
        layers,
    })
}

/// What a stored manifest references: (blobs, child manifests, subject).
async fn references(
    registry: &Registry,
    d: &Digest,
) -> Option<(Vec<Digest>, Vec<Digest>, Option<Digest>)> {
    let bytes = registry.storage().get(&layout::blob_data(d)).await.ok()?;
    let p = manifest::parse(&bytes, None).ok()?;
    Some((
        p.blobs.into_iter().map(|r| r.digest).collect(),
        p.manifests,
        p.subject,
    ))
}

type Refs = BTreeMap<Digest, (Vec<Digest>, Vec<Digest>, Option<Digest>)>;

/// The manifests of one repository that are live when those written after `cutoff` count as
/// live for their age alone.
fn live_set(scan: &RepoScan, refs: &Refs, cutoff: SystemTime) -> BTreeSet<Digest> {
    let mut live: BTreeSet<Digest> = scan
        .revisions
        .iter()
        .filter(|(d, t)| scan.tagged.contains(*d) || **t > cutoff || !refs.contains_key(*d))
        .map(|(d, _)| d.clone())
        .collect();
    // Children of live indexes and referrers of live subjects, to a fixpoint.
    loop {
        let mut grew = false;
        for (d, (_, children, subject)) in refs {
            if live.contains(d) {
                for c in children {
                    grew |= scan.revisions.contains_key(c) && live.insert(c.clone());
                }
            } else if subject.as_ref().is_some_and(|s| live.contains(s)) {
                grew |= live.insert(d.clone());
            }
        }
        if !grew {
            break;
        }
    }
    live
}

/// Marks the live manifests of one repository and the blobs they reach. Returns the live
/// manifests, and how many are live only for their age (untagged and unreferenced, but younger
/// than the grace period).
async fn mark_repo(
    registry: &Registry,
    scan: &RepoScan,
    cutoff: SystemTime,
    started: SystemTime,
    marked: &mut BTreeSet<Digest>,
) -> (BTreeSet<Digest>, usize) {
    let mut refs = Refs::new();
    for d in scan.revisions.keys() {
        if let Some(r) = references(registry, d).await {
            refs.insert(d.clone(), r);
        }
    }
    let live = live_set(scan, &refs, cutoff);
    let without_grace = live_set(scan, &refs, started);
    for d in &live {
        marked.insert(d.clone());
        if let Some((blobs, children, _)) = refs.get(d) {
            marked.extend(blobs.iter().cloned());
            marked.extend(children.iter().cloned());
        }
    }
    let young = live.difference(&without_grace).count();
    (live, young)
}

/// Runs a collection. With `dry_run`, nothing is deleted.
pub async fn collect(
    registry: &Registry,
    grace: Duration,
    dry_run: bool,
) -> Result<Report, RegistryError> {
    let started = SystemTime::now();
    let cutoff = started.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut marked = BTreeSet::new();
    let mut report = Report {
        grace,
        ..Report::default()
    };
    let mut scans = Vec::new();
    for repo in registry.all_repository_dirs().await? {
        let Ok(name) = repo.parse::<RepoName>() else {
            continue;
        };
        let scan = scan_repo(registry, name).await?;
        let (live, young) = mark_repo(registry, &scan, cutoff, started, &mut marked).await;
        report.young_manifests += young;
        for d in scan.revisions.keys().filter(|d| !live.contains(*d)) {
            report.manifests.push((scan.name.to_string(), d.clone()));
        }
        // A blob linked within the grace period (a push or mount in flight) stays.
        for (d, t) in &scan.layers {
            if *t > cutoff {
                marked.insert(d.clone());
            }
        }
        scans.push(scan);
    }
    // Sweep candidates: every stored blob not marked and older than the grace period.
    let s = registry.storage();
    let mut candidates = Vec::new();
    let blobs = layout::blobs_root();
    for alg in s.list(&blobs).await.unwrap_or_default() {
        for prefix in s.list(&format!("{blobs}/{alg}")).await.unwrap_or_default() {
            for hex in s
                .list(&format!("{blobs}/{alg}/{prefix}"))
                .await
                .unwrap_or_default()
            {
                let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                    continue;
                };
                if marked.contains(&d) {
                    continue;
                }
                if let Ok(m) = s.stat(&layout::blob_data(&d)).await {
                    if m.modified < cutoff {
                        candidates.push((d, m.size));
                    } else {
                        report.young_blobs += 1;
                    }
                }
            }
        }
    }
    // Manifests and links written while we marked protect what they reference.
    for scan in &scans {
        for (d, t) in digests_under(registry, &layout::revisions_dir(&scan.name)).await? {
            if t >= started {
                marked.insert(d.clone());
                if let Some((b, c, _)) = references(registry, &d).await {
                    marked.extend(b);
                    marked.extend(c);
                }
            }
        }
    }
    candidates.retain(|(d, _)| !marked.contains(d));
    if !dry_run {
        for (repo, d) in &report.manifests {
            let Ok(name) = repo.parse::<RepoName>() else {
                continue;
            };
            if let Some((_, _, Some(subject))) = references(registry, d).await {
                s.delete(parent(&layout::referrer_link(&name, &subject, d)))
                    .await?;
            }
            s.delete(parent(&layout::revision_link(&name, d))).await?;
            for tag in s.list(&layout::tags_dir(&name)).await.unwrap_or_default() {
                let Ok(tag) = tag.parse::<Tag>() else {
                    continue;
                };
                s.delete(parent(&layout::tag_index_link(&name, &tag, d)))
                    .await?;
            }
        }
        for (d, _) in &candidates {
            s.delete(&layout::blob_dir(d)).await?;
            for scan in &scans {
                if scan.layers.contains_key(d) {
                    s.delete(parent(&layout::layer_link(&scan.name, d))).await?;
                }
            }
        }
    }
    report.bytes = candidates.iter().map(|(_, n)| n).sum();
    report.blobs = candidates.into_iter().map(|(d, _)| d).collect();
    Ok(report)
}

/// Runs a collection every `interval` in the serving process (`gc_interval`), reporting each
/// run to the log and the metrics. A failed run is logged and the next one comes as planned.
pub fn spawn_scheduler(
    registry: std::sync::Arc<Registry>,
    interval: Duration,
    grace: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let start = std::time::Instant::now();
            let result = collect(&registry, grace, false).await;
            let elapsed = start.elapsed();
            crate::metrics::gc_run(&result, elapsed);
            match result {
                Ok(r) => tracing::info!(
                    manifests = r.manifests.len(),
                    blobs = r.blobs.len(),
                    bytes = r.bytes,
                    kept_young = r.young_manifests + r.young_blobs,
                    duration_ms = elapsed.as_millis() as u64,
                    "scheduled garbage collection done"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    duration_ms = elapsed.as_millis() as u64,
                    "scheduled garbage collection failed; the next runs as planned"
                ),
            }
        }
    })
}

/// The storage a set of repositories uses.
#[derive(Debug, Default)]
pub struct Usage {
    /// Per repository: the bytes of the blobs (layers, configs and manifests) linked into it,
    /// and how many there are.
    pub repositories: Vec<(String, u64, usize)>,
    /// The bytes of those blobs with each counted once, however many repositories share it.
    pub total_bytes: u64,
    pub total_blobs: usize,
}

/// Measures what `repositories` use: each blob linked into a repository (as a layer, config or
/// manifest) is counted in that repository, and once in the total.
pub async fn usage(registry: &Registry, repositories: &[String]) -> Result<Usage, RegistryError> {
    let s = registry.storage();
    let mut sizes: HashMap<Digest, u64> = HashMap::new();
    let mut out = Usage::default();
    for repo in repositories {
        let Ok(name) = repo.parse::<RepoName>() else {
            continue;
        };
        let mut linked: BTreeSet<Digest> = BTreeSet::new();
        let layers = format!("{}/_layers", layout::repo_dir(&name));
        for dir in [layers, layout::revisions_dir(&name)] {
            linked.extend(
                digests_under(registry, &dir)
                    .await?
                    .into_iter()
                    .map(|(d, _)| d),
            );
        }
        let mut bytes = 0;
        let mut blobs = 0;
        for d in linked {
            let size = match sizes.get(&d) {
                Some(n) => *n,
                None => match s.stat(&layout::blob_data(&d)).await {
                    Ok(m) => {
                        sizes.insert(d, m.size);
                        m.size
                    }
                    // A link whose blob is gone (swept, or never finished) uses nothing.
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e.into()),
                },
            };
            bytes += size;
            blobs += 1;
        }
        out.repositories.push((repo.clone(), bytes, blobs));
    }
    out.total_bytes = sizes.values().sum();
    out.total_blobs = sizes.len();
    Ok(out)
}
