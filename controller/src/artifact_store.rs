//! The controller's artifact store: the content-addressed cache `<state_dir>/artifacts`
//! ([`rampart_host::cas`]) bounded by the `[artifacts]` limits, and its garbage collection; with
//! the PostgreSQL store, the artifacts themselves are kept in PostgreSQL, shared by every
//! controller, and the directory is each controller's cache of them.
//!
//! Inputs: uploads asking to be admitted ([`ArtifactStore::admit`], then
//! [`Reservation::grow`] as bytes arrive, then [`ArtifactStore::publish`]), requests naming
//! artifacts ([`ArtifactStore::claim`]), deliveries ([`ArtifactStore::local_copy`]) and the
//! store's deployments (what is referenced). Outputs: a [`Refusal`] naming the limit and the
//! setting that raises it, a verified file to deliver, and a [`GcReport`] of what was removed.
//!
//! Where artifacts live: with SQLite (one controller) under `sha256/` of the state directory,
//! as always. With PostgreSQL ([`Store::holds_artifacts`]) a controller that takes over a
//! deployment must deliver what another controller received, so an upload is first verified
//! into the local cache, then [published](ArtifactStore::publish) into PostgreSQL: rows of 1 MiB
//! ([`crate::store::ARTIFACT_CHUNK`]) keyed by digest and index, written in one transaction
//! whose commit marks the artifact complete, hashed as they are written (a digest or size other
//! than announced is refused and nothing stays). A delivery reads the chunks one at a time into
//! the local cache, hashing them, before anything goes to an agent; a missing, short or
//! tampered chunk is refused and nothing is cached. PostgreSQL rather than an S3-compatible
//! bucket: no second service, endpoint or credential to run and secure; the artifacts are
//! backed up, replicated and restored with the deployments that name them; and they are
//! transactional with it (an artifact is complete or absent, a collection and a claim exclude
//! each other on its row). The cost is database size, which the quota and the collection bound.
//!
//! Limits, checked when an upload starts (against its announced size) and again as its bytes
//! arrive (so an upload that announced nothing, or less than it sends, is stopped as soon as it
//! crosses one): `max_artifact_bytes` per artifact; `quota_bytes` for what is stored (in the
//! shared store with PostgreSQL, uploads other controllers have begun included) plus every
//! upload in progress in this process; `min_free_bytes` left free on the filesystem of the state
//! directory (where the upload, or the cached copy, is written). A refused upload is dropped,
//! which removes its temporary file.
//!
//! Collection: an artifact is referenced by every unfinished deployment, by the newest
//! `keep_deployments` deployments of each configured environment, and by each environment's
//! current release (its last successful deploy; after a successful rollback, the last
//! successful deploy of the version it returned to). Everything else under `sha256/` whose last
//! use (its modification time: set by the upload, and again by [`ArtifactStore::claim`]
//! whenever a request names it) is older than `gc_grace_seconds` is removed, and the temporary
//! files of dead processes with it; with PostgreSQL, the same rule removes rows from PostgreSQL
//! (their last use recorded there, by the database's clock), except a row an upload holds: an
//! artifact another controller is uploading is never collected, and what an unfinished
//! deployment of any controller references is never either. It runs at start-up, after each
//! deployment ends, before an upload is refused for the quota, and as `rampart-controller gc`;
//! with PostgreSQL it also stores there what a deployment references and only this
//! controller's cache holds (received before the store held artifacts, or while it was down).
//! When the current release of an environment cannot be told from the newest
//! [`CURRENT_SEARCH`] deployments, nothing is removed.
//!
//! A claim and a collection exclude each other with `flock` on `artifacts/gc.lock` (shared for
//! a claim, exclusive for the removal), across processes too, and in PostgreSQL on the
//! artifact's row: a request that named an artifact either refreshed it before the collection
//! looked at it, or finds it gone and is refused (FAILED_PRECONDITION: upload it again).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rampart_host::cas;
use rampart_proto::v1 as pb;

use crate::config::{ArtifactConfig, ControllerConfig};
use crate::deployment::Controller;
use crate::store::{ArtifactRow, Store, StoreError};

/// How many of an environment's newest finished deployments are searched for its current
/// release.
pub const CURRENT_SEARCH: u32 = 500;

/// How often the free space is checked again while an upload streams.
const SPACE_CHECK_EVERY: u64 = 16 << 20;

/// How long a claim or a collection waits for the other to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// At most this many entries of `sha256/` are looked at in one collection.
const MAX_ENTRIES: usize = 1_000_000;

/// Why an upload is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Over `max_artifact_bytes` (announced, or received so far).
    #[error(
        "artifact of {size} bytes{} is over the controller's max_artifact_bytes ({limit}); raise [artifacts] max_artifact_bytes in the controller's configuration to accept it",
        if *.announced { "" } else { " (received so far)" }
    )]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
        /// Whether `size` is what the upload announced (or what arrived).
        announced: bool,
    },
    /// The store would go over `quota_bytes`.
    #[error(
        "storing {size} more bytes would take the artifact store to {total} bytes, over its quota_bytes ({quota}: {stored} stored, {in_progress} being uploaded, after collecting what no deployment references); raise [artifacts] quota_bytes, or lower keep_deployments so older artifacts are collected"
    )]
    OverQuota {
        /// The bytes this upload adds.
        size: u64,
        /// Stored, in progress and this upload together.
        total: u64,
        /// The quota.
        quota: u64,
        /// Stored when the upload started.
        stored: u64,
        /// Reserved by other uploads in progress.
        in_progress: u64,
    },
    /// The filesystem would keep less than `min_free_bytes` free.
    #[error(
        "storing {size} more bytes would leave {left} bytes free on the filesystem of {}, under the controller's min_free_bytes ({min_free}); free space there, or lower [artifacts] min_free_bytes",
        .dir.display()
    )]
    LowSpace {
        /// The bytes this upload still adds.
        size: u64,
        /// What would be left.
        left: u64,
        /// The floor.
        min_free: u64,
        /// The artifact directory.
        dir: PathBuf,
    },
    /// The shared store could not say what it holds.
    #[error(
        "cannot read the artifacts stored in {store}: {reason}; try again once the store is reachable"
    )]
    StoreUnavailable {
        /// The store.
        store: String,
        /// Why.
        reason: String,
    },
    /// The free space could not be read.
    #[error("cannot read the free space of {}: {errno}", .dir.display())]
    Statvfs {
        /// The artifact directory.
        dir: PathBuf,
        /// Why.
        errno: Errno,
    },
}

/// A collection failed before removing anything.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The store could not say what is referenced.
    #[error("reading the deployments: {0}")]
    Store(#[from] StoreError),
    /// An environment's current release is not among its newest deployments: removing
    /// anything could remove it.
    #[error(
        "environment {environment}: no successful deploy of its current release among its newest {CURRENT_SEARCH} deployments; nothing removed"
    )]
    CurrentReleaseUnknown {
        /// The environment.
        environment: String,
    },
    /// The artifact directory could not be read or locked.
    #[error("{0}")]
    Io(String),
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Removed artifacts: (sha256, size), in name order (from the shared store, with
    /// PostgreSQL).
    pub removed: Vec<(String, u64)>,
    /// With PostgreSQL: the copies removed from this controller's cache, (sha256, size).
    pub uncached: Vec<(String, u64)>,
    /// With PostgreSQL: referenced artifacts this controller's cache held and the shared store
    /// did not (received before the store held artifacts, or while it was unreachable), now
    /// stored there.
    pub published: Vec<String>,
    /// Artifacts kept (referenced, or used within the grace period).
    pub kept: usize,
    /// Temporary files of dead processes removed.
    pub stale_uploads: usize,
}

impl GcReport {
    /// The bytes freed.
    pub fn freed_bytes(&self) -> u64 {
        self.removed.iter().map(|(_, n)| n).sum()
    }
}

/// The artifact store of one controller process.
#[derive(Debug)]
pub struct ArtifactStore {
    state_dir: PathBuf,
    limits: ArtifactConfig,
    /// Bytes reserved by the uploads in progress in this process.
    reserved: Arc<Mutex<u64>>,
    /// The store holding the artifacts of every controller, and this controller's instance
    /// name; `None`: `state_dir` holds them (SQLite).
    shared: Option<(Arc<dyn Store>, String)>,
    /// Held while a copy is read from the shared store, so that hosts waiting for the same
    /// artifact read it once.
    fetching: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The room an upload holds in the quota while it streams; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    reserved: Arc<Mutex<u64>>,
    limits: ArtifactConfig,
    dir: PathBuf,
    /// Stored when the upload started.
    stored: u64,
    /// Bytes this upload holds.
    held: u64,
    /// Bytes received when the free space was last checked.
    space_checked_at: u64,
}

impl Reservation {
    /// Accounts for `received` bytes having arrived: refused when they cross the per-artifact
    /// limit, the quota, or (checked every 16 MiB) the free-space floor.
    pub fn grow(&mut self, received: u64) -> Result<(), Refusal> {
        if received > self.limits.max_artifact_bytes {
            return Err(Refusal::TooLarge {
                size: received,
                limit: self.limits.max_artifact_bytes,
                announced: false,
            });
        }
        if received > self.held {
            let extra = received - self.held;
            let mut r = lock(&self.reserved);
            let in_progress = *r - self.held;
            let total = self.stored + *r + extra;
            if total > self.limits.quota_bytes {
                return Err(Refusal::OverQuota {
                    size: received,
                    total,
                    quota: self.limits.quota_bytes,
                    stored: self.stored,
                    in_progress,
                });
            }
            *r += extra;
            self.held = received;
        }
        if received - self.space_checked_at >= SPACE_CHECK_EVERY {
            self.space_checked_at = received;
            check_space(&self.dir, 0, self.limits.min_free_bytes)?;
        }
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = lock(&self.reserved);
        *r = r.saturating_sub(self.held);
    }
}

/// Refused when writing `size` more bytes into `dir` would leave less than `min_free` free.
fn check_space(dir: &Path, size: u64, min_free: u64) -> Result<(), Refusal> {
    if min_free == 0 {
        return Ok(());
    }
    let st = nix::sys::statvfs::statvfs(dir).map_err(|errno| Refusal::Statvfs {
        dir: dir.to_path_buf(),
        errno,
    })?;
    // Blocks available to an unprivileged user: what is left before the disk is full for the
    // services beside the controller.
    let available = st.blocks_available().saturating_mul(st.fragment_size());
    let left = available.saturating_sub(size);
    if left < min_free {
        return Err(Refusal::LowSpace {
            size,
            left,
            min_free,
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// One artifact under `sha256/`: its digest, size and last use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredArtifact {
    /// Its sha256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// When it was last used (its modification time).
    pub used: SystemTime,
}

/// A shared store's artifact as the collection plans with it: last used `unused_for` before
/// `now`.
fn shared_use(r: &ArtifactRow, now: SystemTime) -> StoredArtifact {
    StoredArtifact {
        sha256: r.sha256.clone(),
        size: r.size,
        used: now
            .checked_sub(r.unused_for)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    }
}

/// The artifacts a collection removes: unreferenced, and last used at least `grace` before
/// `now`. Pure: the plan a collection then carries out.
pub fn doomed<'a>(
    stored: &'a [StoredArtifact],
    referenced: &BTreeSet<String>,
    now: SystemTime,
    grace: Duration,
) -> Vec<&'a StoredArtifact> {
    stored
        .iter()
        .filter(|a| !referenced.contains(&a.sha256))
        .filter(|a| now.duration_since(a.used).unwrap_or_default() >= grace)
        .collect()
}

/// The artifacts the deployments in `store` reference, for the environments `environments`
/// (see the module docs).
pub fn referenced(
    store: &dyn Store,
    environments: &[String],
    keep: u32,
) -> Result<BTreeSet<String>, GcError> {
    use pb::DeploymentState as DS;
    let mut refs = BTreeSet::new();
    let mut add = |d: &pb::Deployment| refs.extend(d.artifacts.values().cloned());
    for d in store.list_deployments(
        None,
        &[DS::Queued, DS::AwaitingApproval, DS::Running, DS::Rescuing],
        0,
    )? {
        add(&d);
    }
    for env in environments {
        if keep > 0 {
            for d in store.list_deployments(Some(env), &[], keep)? {
                add(&d);
            }
        }
        // Most environments' current release is among their last few deployments: look there
        // first, then further.
        let mut found = false;
        for limit in [50, CURRENT_SEARCH] {
            let finished = store.list_deployments(Some(env), &[DS::Finished], limit)?;
            if let Some(d) = current_release(&finished) {
                add(d);
                found = true;
                break;
            }
            // The whole history was searched: no release to keep.
            if finished.len() < limit as usize {
                found = true;
                break;
            }
        }
        if !found {
            return Err(GcError::CurrentReleaseUnknown {
                environment: env.clone(),
            });
        }
    }
    Ok(refs)
}

/// The deploy whose artifacts an environment runs, from its finished deployments newest first:
/// the last successful deploy, or, when the last success is a rollback, the last successful
/// deploy of the version it returned to. `None` when the list holds no such deploy.
fn current_release(finished: &[pb::Deployment]) -> Option<&pb::Deployment> {
    use pb::DeploymentKind as K;
    let ok = |d: &&pb::Deployment| d.outcome() == pb::DeploymentOutcome::Succeeded;
    let last = finished.iter().find(ok)?;
    if last.kind() != K::Rollback {
        return Some(last);
    }
    finished
        .iter()
        .filter(ok)
        .find(|d| d.kind() == K::Deploy && d.version == last.version)
}

impl ArtifactStore {
    /// The store under `state_dir` with `limits`.
    pub fn new(state_dir: &Path, limits: ArtifactConfig) -> ArtifactStore {
        ArtifactStore {
            state_dir: state_dir.to_path_buf(),
            limits,
            reserved: Arc::new(Mutex::new(0)),
            shared: None,
            fetching: Mutex::new(()),
        }
    }

    /// This store, keeping the artifacts in `store` when it holds artifacts (PostgreSQL), for
    /// controller `instance`; unchanged otherwise (SQLite: `state_dir` only).
    pub fn with_store(mut self, store: Arc<dyn Store>, instance: &str) -> ArtifactStore {
        if store.holds_artifacts() {
            self.shared = Some((store, instance.to_owned()));
        }
        self
    }

    /// Whether the artifacts are kept in the shared store (the directory is a cache).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn root(&self) -> PathBuf {
        self.state_dir.join(cas::ARTIFACTS_DIR)
    }

    /// The bytes stored: under `sha256/`, or in the shared store (uploads begun included).
    pub fn stored_bytes(&self) -> Result<u64, Refusal> {
        match &self.shared {
            None => Ok(self.list().iter().map(|a| a.size).sum()),
            Some((store, _)) => Ok(store
                .list_artifacts()
                .map_err(|e| Refusal::StoreUnavailable {
                    store: store.describe(),
                    reason: e.to_string(),
                })?
                .iter()
                .map(|a| a.size)
                .sum()),
        }
    }

    /// Every artifact under `sha256/` (at most [`MAX_ENTRIES`]); files whose name is not a
    /// digest are left out, and so never removed.
    fn list(&self) -> Vec<StoredArtifact> {
        let Ok(rd) = fs::read_dir(self.root().join(cas::SHA256_DIR)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten().take(MAX_ENTRIES) {
            let name = e.file_name().to_string_lossy().into_owned();
            if !cas::is_valid_hex(&name) {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_file() {
                out.push(StoredArtifact {
                    sha256: name,
                    size: m.len(),
                    used: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        out.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        out
    }

    /// Admits an upload that announced `announced` bytes (0: unknown), reserving them.
    pub fn admit(&self, announced: u64) -> Result<Reservation, Refusal> {
        let l = &self.limits;
        if announced > l.max_artifact_bytes {
            return Err(Refusal::TooLarge {
                size: announced,
                limit: l.max_artifact_bytes,
                announced: true,
            });
        }
        let root = self.root();
        // The directory the upload goes to: the filesystem whose space counts.
        let _ = fs::create_dir_all(&root);
        check_space(&root, announced, l.min_free_bytes)?;
        let stored = self.stored_bytes()?;
        let mut r = lock(&self.reserved);
        let total = stored + *r + announced;
        if total > l.quota_bytes {
            return Err(Refusal::OverQuota {
                size: announced,
                total,
                quota: l.quota_bytes,
                stored,
                in_progress: *r,
            });
        }
        *r += announced;
        Ok(Reservation {
            reserved: self.reserved.clone(),
            limits: l.clone(),
            dir: root,
            stored,
            held: announced,
            space_checked_at: 0,
        })
    }

    /// The size of a stored artifact, when stored, marking it used now so that a collection
    /// keeps it for its grace period (a request naming it is about to be stored).
    /// With PostgreSQL, the shared store says (and records the use); a store that cannot be
    /// read answers `None`, logged.
    pub fn claim(&self, sha256: &str) -> Option<u64> {
        if let Some((store, _)) = &self.shared {
            return match store.claim_artifact(sha256) {
                Ok(size) => size,
                Err(e) => {
                    tracing::warn!(
                        sha256,
                        "cannot look the artifact up in the shared store: {e}"
                    );
                    None
                }
            };
        }
        cas::has(&self.state_dir, sha256)?;
        let lock = self.gc_lock(FlockArg::LockSharedNonblock);
        if let Err(e) = &lock {
            tracing::warn!(
                sha256,
                "claiming an artifact without the collection lock: {e}"
            );
        }
        // Gone while waiting for a collection: not stored any more.
        let size = cas::has(&self.state_dir, sha256)?;
        if let Err(e) = cas::touch(&self.state_dir, sha256) {
            tracing::warn!(sha256, "{e}");
        }
        Some(size)
    }

    /// Takes `artifacts/gc.lock` (shared or exclusive, non-blocking flavour), retrying for up
    /// to [`LOCK_WAIT`].
    fn gc_lock(&self, how: FlockArg) -> Result<Flock<File>, String> {
        let root = self.root();
        fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let path = root.join("gc.lock");
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            match Flock::lock(file, how) {
                Ok(l) => return Ok(l),
                Err((_, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((_, errno)) => {
                    return Err(format!("cannot lock {}: {errno}", path.display()));
                }
            }
        }
    }

    /// Removes what [`doomed`] names among the stored artifacts, given what is referenced, and
    /// the temporary files of dead processes; logs each removal. With PostgreSQL, from the
    /// shared store (except what an upload holds) and from this controller's cache.
    pub fn sweep(&self, referenced: &BTreeSet<String>) -> Result<GcReport, GcError> {
        let _lock = self
            .gc_lock(FlockArg::LockExclusiveNonblock)
            .map_err(GcError::Io)?;
        let mut report = GcReport {
            stale_uploads: cas::remove_stale_uploads(&self.state_dir).len(),
            ..Default::default()
        };
        if let Some((store, _)) = &self.shared {
            let rows = store.list_artifacts()?;
            let now = SystemTime::now();
            let listed: Vec<StoredArtifact> = rows.iter().map(|r| shared_use(r, now)).collect();
            let names: Vec<String> = doomed(&listed, referenced, now, self.limits.gc_grace)
                .into_iter()
                .map(|a| a.sha256.clone())
                .collect();
            report.removed = store.remove_artifacts(&names, self.limits.gc_grace)?;
            report.published = self.publish_missing(&rows, referenced);
            for (sha256, size) in &report.removed {
                tracing::info!(%sha256, size, store = %store.describe(), "collected an unreferenced artifact");
            }
            report.kept = rows.len() - report.removed.len();
        }
        let (removed, kept) = self.sweep_dir(referenced);
        if self.shared.is_some() {
            report.uncached = removed;
        } else {
            report.removed = removed;
            report.kept = kept;
        }
        Ok(report)
    }

    /// Stores in the shared store the referenced artifacts only this controller's cache holds
    /// (`rows`: what the shared store holds), so that any controller can deliver them: what was
    /// stored. Failures are logged; the next collection tries again.
    fn publish_missing(&self, rows: &[ArtifactRow], referenced: &BTreeSet<String>) -> Vec<String> {
        // An incomplete row is being uploaded (or is left by a dead upload, collected later).
        let held: BTreeSet<&str> = rows.iter().map(|r| r.sha256.as_str()).collect();
        let mut published = Vec::new();
        for a in self.list() {
            if !referenced.contains(&a.sha256) || held.contains(a.sha256.as_str()) {
                continue;
            }
            match self.publish(&a.sha256) {
                Ok(_) => published.push(a.sha256),
                Err(e) => {
                    tracing::warn!(sha256 = %a.sha256, "cannot store a cached artifact in the shared store: {e}")
                }
            }
        }
        published
    }

    /// Removes what [`doomed`] names under `sha256/`: what was removed, and how many stay.
    fn sweep_dir(&self, referenced: &BTreeSet<String>) -> (Vec<(String, u64)>, usize) {
        let stored = self.list();
        let doomed = doomed(&stored, referenced, SystemTime::now(), self.limits.gc_grace);
        let mut kept = stored.len() - doomed.len();
        let mut removed = Vec::new();
        for a in doomed {
            let Ok(path) = cas::artifact_path(&self.state_dir, &a.sha256) else {
                continue;
            };
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(sha256 = %a.sha256, size = a.size, path = %path.display(), "removed an unreferenced artifact file");
                    removed.push((a.sha256.clone(), a.size));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot remove an unreferenced artifact: {e}");
                    kept += 1;
                }
            }
        }
        (removed, kept)
    }

    /// With PostgreSQL, stores an upload verified into the local cache in the shared store as
    /// well (reading the cached file, hashing it again): `true` when the shared store had it
    /// already. Without, a no-op (`true`: the cache is the store). Blocking.
    pub fn publish(&self, sha256: &str) -> Result<bool, StoreError> {
        let Some((store, instance)) = &self.shared else {
            return Ok(true);
        };
        let path = cas::artifact_path(&self.state_dir, sha256)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let open = |e: std::io::Error| {
            StoreError::Unavailable(format!(
                "cannot read the uploaded artifact {}: {e}",
                path.display()
            ))
        };
        let mut file = File::open(&path).map_err(open)?;
        let size = file.metadata().map_err(open)?.len();
        let stored = store.put_artifact(sha256, size, instance, &mut file)?;
        if stored {
            tracing::info!(sha256, size, store = %store.describe(), "artifact stored in the shared store");
        }
        Ok(!stored)
    }

    /// A verified file of artifact `sha256` to deliver: the cached one, or (with PostgreSQL)
    /// one read from the shared store into the cache first, every chunk hashed, nothing cached
    /// unless the whole artifact hashes to its digest. The error says what is missing or wrong.
    /// Blocking.
    pub fn local_copy(&self, sha256: &str) -> Result<PathBuf, String> {
        let path = cas::artifact_path(&self.state_dir, sha256).map_err(|e| e.to_string())?;
        if cas::has(&self.state_dir, sha256).is_some() {
            return Ok(path);
        }
        let Some((store, _)) = &self.shared else {
            return Err(format!(
                "artifact {sha256} is not in the controller's store ({}): it was collected or never uploaded; upload it again",
                path.display()
            ));
        };
        let _one = lock(&self.fetching);
        // Brought by another host's delivery while this one waited.
        if cas::has(&self.state_dir, sha256).is_some() {
            return Ok(path);
        }
        let shown = store.describe();
        let missing = || {
            format!(
                "artifact {sha256} is neither in this controller's cache nor in the shared store {shown}: it was collected or never uploaded; upload it again"
            )
        };
        let size = store
            .claim_artifact(sha256)
            .map_err(|e| format!("looking up artifact {sha256} in {shown}: {e}"))?
            .ok_or_else(missing)?;
        let root = self.root();
        fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        check_space(&root, size, self.limits.min_free_bytes).map_err(|e| e.to_string())?;
        // Dropped unfinished on any error: nothing of it stays.
        let mut upload = cas::Upload::new(&self.state_dir).map_err(|e| e.to_string())?;
        let read = store.read_artifact(sha256, &mut |chunk| {
            upload.write(chunk).map_err(|e| e.to_string())
        });
        match read {
            Ok(Some(_)) => {}
            Ok(None) => return Err(missing()),
            Err(e) => return Err(format!("reading artifact {sha256} from {shown}: {e}")),
        }
        let cached = upload
            .finish(sha256)
            .map_err(|e| format!("caching artifact {sha256} read from {shown}: {e}"))?;
        tracing::info!(sha256, size = cached.size, store = %shown, "cached an artifact from the shared store");
        Ok(path)
    }

    /// One collection with `store`'s deployments for `cfg`'s environments (blocking).
    pub fn collect_with(
        &self,
        store: &dyn Store,
        cfg: &ControllerConfig,
    ) -> Result<GcReport, GcError> {
        let envs: Vec<String> = cfg.environments.keys().cloned().collect();
        let refs = referenced(store, &envs, self.limits.keep_deployments)?;
        self.sweep(&refs)
    }
}

/// One collection by a running controller, off the async threads; logs what it freed.
pub async fn collect(ctl: &Arc<Controller>) -> Result<GcReport, GcError> {
    let c = ctl.clone();
    let report = tokio::task::spawn_blocking(move || c.artifacts.collect_with(&*c.store, &c.cfg))
        .await
        .map_err(|e| GcError::Io(format!("collection task failed: {e}")))??;
    if !report.removed.is_empty() || report.stale_uploads > 0 {
        tracing::info!(
            removed = report.removed.len(),
            freed_bytes = report.freed_bytes(),
            kept = report.kept,
            stale_uploads = report.stale_uploads,
            "artifact store collected"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u64, quota: u64) -> ArtifactConfig {
        ArtifactConfig {
            max_artifact_bytes: max,
            quota_bytes: quota,
            min_free_bytes: 0,
            ..ArtifactConfig::default()
        }
    }

    fn put(dir: &Path, data: &[u8]) -> String {
        let sha = rampart_host::digest::sha256_hex(data);
        let mut up = cas::Upload::new(dir).unwrap();
        up.write(data).unwrap();
        up.finish(&sha).unwrap();
        sha
    }

    #[test]
    fn uploads_are_admitted_within_the_limits_and_give_their_room_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = ArtifactStore::new(dir.path(), limits(100, 250));
        assert!(matches!(
            s.admit(101),
            Err(Refusal::TooLarge {
                size: 101,
                limit: 100,
                announced: true
            })
        ));
        let mut a = s.admit(100).unwrap();
        let mut b = s.admit(0).unwrap();
        // Unknown size: room is taken as bytes arrive.
        b.grow(100).unwrap();
        let e = s.admit(60).unwrap_err();
        assert_eq!(
            e,
            Refusal::OverQuota {
                size: 60,
                total: 260,
                quota: 250,
                stored: 0,
                in_progress: 200
            }
        );
        assert!(e.to_string().contains("quota_bytes (250"), "{e}");
        assert!(matches!(
            b.grow(101),
            Err(Refusal::TooLarge {
                announced: false,
                ..
            })
        ));
        // Within what was announced, growing takes nothing more.
        a.grow(100).unwrap();
        drop(b);
        assert_eq!(*lock(&s.reserved), 100);
        drop(a);
        assert_eq!(*lock(&s.reserved), 0);
        // What is stored counts.
        put(dir.path(), &[7u8; 200]);
        assert_eq!(s.stored_bytes().unwrap(), 200);
        assert!(matches!(
            s.admit(51),
            Err(Refusal::OverQuota { stored: 200, .. })
        ));
        let mut c = s.admit(0).unwrap();
        c.grow(50).unwrap();
        assert!(matches!(c.grow(51), Err(Refusal::OverQuota { .. })));
    }

    #[test]
    fn the_free_space_floor_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = limits(100, 1000);
        l.min_free_bytes = u64::MAX;
        let e = ArtifactStore::new(dir.path(), l).admit(10).unwrap_err();
        assert!(matches!(e, Refusal::LowSpace { .. }), "{e:?}");
        assert!(e.to_string().contains("min_free_bytes"), "{e}");
        let mut l = limits(100, 1000);
        l.min_free_bytes = 1;
        ArtifactStore::new(dir.path(), l).admit(10).unwrap();
    }

    #[test]
    fn doomed_are_unreferenced_and_past_their_grace() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a = |sha: &str, age: u64| StoredArtifact {
            sha256: sha.into(),
            size: 1,
            used: now - Duration::from_secs(age),
        };
        let stored = [
            a("old", 7200),
            a("fresh", 10),
            a("kept", 7200),
            a("edge", 3600),
        ];
        let refs: BTreeSet<String> = ["kept".to_string()].into();
        let names: Vec<&str> = doomed(&stored, &refs, now, Duration::from_secs(3600))
            .into_iter()
            .map(|a| a.sha256.as_str())
            .collect();
        assert_eq!(names, ["old", "edge"]);
        assert!(doomed(&stored, &refs, now, Duration::from_secs(10_000)).is_empty());
    }

    /// What the store's deployments reference: unfinished ones, each configured environment's
    /// newest `keep`, and its current release; other environments' finished ones do not count.
    #[test]
    fn referenced_follows_the_window_the_unfinished_and_the_current_release() {
        use crate::store::sqlite::SqliteStore;
        use pb::DeploymentKind::{Deploy, Rollback};
        use pb::DeploymentOutcome::{RolledBack, Succeeded, Unspecified};
        use pb::DeploymentState::{Finished, Queued};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db")).unwrap();
        let mut n = 0;
        let mut insert = |env: &str, mut d: pb::Deployment, state: pb::DeploymentState| {
            n += 1;
            d.id = format!("d{n}");
            d.environment = env.into();
            d.state = state as i32;
            store.insert_deployment(&d, "i").unwrap();
        };
        // Oldest first.
        insert("prod", dep(Deploy, "1", Succeeded), Finished);
        insert("prod", dep(Deploy, "2", Succeeded), Finished);
        insert("prod", dep(Deploy, "3", RolledBack), Finished);
        insert("prod", dep(Rollback, "1", Succeeded), Finished);
        insert("prod", dep(Deploy, "4", RolledBack), Finished);
        insert("prod", dep(Deploy, "5", Unspecified), Queued);
        insert("gone", dep(Deploy, "6", Succeeded), Finished);
        insert("gone", dep(Deploy, "7", Unspecified), Queued);
        let envs = ["prod".to_string()];
        let names = |keep| -> Vec<String> {
            referenced(&store, &envs, keep)
                .unwrap()
                .into_iter()
                .collect()
        };
        // Queued 5 and 7; the rollback returned prod to 1.
        assert_eq!(names(0), ["sha-1", "sha-5", "sha-7"]);
        // The two newest of prod: 5 (queued) and 4.
        assert_eq!(names(2), ["sha-1", "sha-4", "sha-5", "sha-7"]);
        assert_eq!(
            names(10),
            ["sha-1", "sha-2", "sha-3", "sha-4", "sha-5", "sha-7"]
        );
    }

    fn dep(
        kind: pb::DeploymentKind,
        version: &str,
        outcome: pb::DeploymentOutcome,
    ) -> pb::Deployment {
        pb::Deployment {
            kind: kind as i32,
            version: version.into(),
            outcome: outcome as i32,
            artifacts: [("app".to_string(), format!("sha-{version}"))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_current_release_is_the_last_successful_deploy_or_what_a_rollback_returned_to() {
        use pb::DeploymentKind::{Deploy, Rollback};
        use pb::DeploymentOutcome::{RolledBack, Succeeded};
        let v = |r: Option<&pb::Deployment>| r.map(|d| d.artifacts["app"].clone());
        // Newest first.
        let h = [
            dep(Deploy, "3", RolledBack),
            dep(Deploy, "2", Succeeded),
            dep(Deploy, "1", Succeeded),
        ];
        assert_eq!(v(current_release(&h)), Some("sha-2".into()));
        let h = [
            dep(Rollback, "1", Succeeded),
            dep(Deploy, "2", Succeeded),
            dep(Deploy, "1", Succeeded),
        ];
        assert_eq!(v(current_release(&h)), Some("sha-1".into()));
        // The deploy of the version rolled back to is older than the list.
        assert_eq!(v(current_release(&h[..2])), None);
        // Nothing succeeded in the list.
        assert_eq!(v(current_release(&[])), None);
        assert_eq!(v(current_release(&[dep(Deploy, "3", RolledBack)])), None);
    }
}
