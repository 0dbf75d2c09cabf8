//! The content-addressed artifact cache: `<state_dir>/artifacts/sha256/<hex>`.
//!
//! Purpose: keep the artifacts of a host's releases under their SHA-256 digest, so a rollback
//! never downloads again and a release can always be checked against the bytes it came from.
//!
//! Inputs: bytes arriving in chunks ([`Upload`], for the agent's streaming RPCs) or a local file
//! ([`import_file`]), each with the digest the caller expects. Outputs: the cached file's digest
//! and size ([`Cached`]), or an error that names both digests on a mismatch.
//!
//! Guarantees: bytes are hashed while they are written into a temporary file under
//! `artifacts/tmp/`; only a complete, verified, fsynced file is renamed to its final name (and the
//! directory fsynced), so a partial or corrupt upload is never visible under `sha256/`. On any error,
//! and when an [`Upload`] is dropped unfinished, the temporary file is removed: nothing is left
//! behind. Digests are validated (64 lowercase hex characters) before they become file names.
//!
//! Reversing: adding an artifact is the only change; removing `artifacts/sha256/<hex>` undoes it.
//! [`prune`] is that removal for the artifacts the caller no longer needs (the agent's
//! `release state=pruned`: those no kept release references).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::digest::{hex, sha256_file};
use crate::durable;

/// Directory under the state directory that holds the cache.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// Sub-directory of verified artifacts, named by digest.
pub const SHA256_DIR: &str = "sha256";
/// Sub-directory of uploads in progress.
pub const TMP_DIR: &str = "tmp";

/// Mode of cached artifacts (read by the agent only, but harmless to read).
const ARTIFACT_MODE: u32 = 0o644;
const CHUNK: usize = 64 * 1024;

static UPLOAD_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Adding an artifact to the cache failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The digest given is not 64 lowercase hex characters.
    #[error("invalid sha256 digest `{digest}` (expected 64 lowercase hex characters)")]
    InvalidDigest {
        /// What was given.
        digest: String,
    },
    /// The bytes do not hash to the digest expected; nothing was kept.
    #[error("sha256 mismatch for artifact {source_name} (expected {expected}, got {actual})")]
    DigestMismatch {
        /// Where the bytes came from (an upload or a path).
        source_name: String,
        /// The digest the caller expected.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// A filesystem operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ArtifactError + 'p {
    move |source| ArtifactError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// An artifact in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the cache already held it (nothing was written).
    pub already_present: bool,
}

/// Whether `digest` is 64 lowercase hex characters, the only form that becomes a file name.
pub fn is_valid_hex(digest: &str) -> bool {
    digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a digest, returning the typed error for a bad one.
pub fn validate_hex(digest: &str) -> Result<(), ArtifactError> {
    if is_valid_hex(digest) {
        Ok(())
    } else {
        Err(ArtifactError::InvalidDigest {
            digest: digest.to_string(),
        })
    }
}

/// Where the artifact with this digest lives (`<state_dir>/artifacts/sha256/<hex>`).
pub fn artifact_path(state_dir: &Path, digest: &str) -> Result<PathBuf, ArtifactError> {
    validate_hex(digest)?;
    Ok(state_dir.join(ARTIFACTS_DIR).join(SHA256_DIR).join(digest))
}

/// The size of the cached artifact with this digest, when the cache holds it.
pub fn has(state_dir: &Path, digest: &str) -> Option<u64> {
    let path = artifact_path(state_dir, digest).ok()?;
    fs::symlink_metadata(path)
        .ok()
        .filter(fs::Metadata::is_file)
        .map(|m| m.len())
}

/// Removes the temporary files of uploads whose process is gone (an agent killed mid-upload or
/// mid-stage leaves its `upload-<pid>-<n>` behind: `Drop` never ran). Uploads of live processes
/// are left alone, so a `rampart run --local` beside a running agent is safe. Returns what was
/// removed; errors are logged and skipped, since this is housekeeping.
pub fn remove_stale_uploads(state_dir: &Path) -> Vec<PathBuf> {
    let dir = state_dir.join(ARTIFACTS_DIR).join(TMP_DIR);
    let Ok(rd) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("upload-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if gone {
            match fs::remove_file(e.path()) {
                Ok(()) => removed.push(e.path()),
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), %err, "cannot remove stale upload")
                }
            }
        }
    }
    removed
}

/// Marks a cached artifact as just used (its modification time set to now): [`prune`] and the
/// controller's collector spare what was used recently, so a lookup that precedes a use keeps
/// the artifact for it. The cache's owner may do this through a read-only handle.
pub fn touch(state_dir: &Path, digest: &str) -> Result<(), ArtifactError> {
    let path = artifact_path(state_dir, digest)?;
    File::open(&path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .map_err(io_err("mark as used", &path))
}

/// Removes the cached artifacts whose digest is not in `keep`, sparing any modified at or after
/// `spare_since` (an artifact that arrived since then may belong to a deploy that has not staged
/// its release yet). With `dry_run` nothing is removed. Returns what was (or would be) removed,
/// as (digest, size), sorted by digest; the directory is fsynced when anything went. Files whose
/// name is not a digest are left alone.
pub fn prune(
    state_dir: &Path,
    keep: &std::collections::BTreeSet<String>,
    spare_since: std::time::SystemTime,
    dry_run: bool,
) -> Result<Vec<(String, u64)>, ArtifactError> {
    let dir = state_dir.join(ARTIFACTS_DIR).join(SHA256_DIR);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    let mut doomed = Vec::new();
    for e in rd {
        let e = e.map_err(io_err("list", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_valid_hex(&name) || keep.contains(&name) {
            continue;
        }
        let meta = e.metadata().map_err(io_err("stat", &e.path()))?;
        if !meta.is_file() || meta.modified().is_ok_and(|t| t >= spare_since) {
            continue;
        }
        doomed.push((name, meta.len()));
    }
    doomed.sort();
    if dry_run || doomed.is_empty() {
        return Ok(doomed);
    }
    for (name, _) in &doomed {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
    }
    durable::fsync_dir(&dir).map_err(io_err("fsync", &dir))?;
    Ok(doomed)
}

/// An upload in progress: chunks are hashed and written to a temporary file under
/// `artifacts/tmp/`; [`Upload::finish`] verifies and publishes it. Dropping an unfinished upload
/// removes the temporary file.
#[derive(Debug)]
pub struct Upload {
    state_dir: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    size: u64,
}

impl Upload {
    /// Starts an upload into the cache of `state_dir` (creating the cache directories).
    pub fn new(state_dir: &Path) -> Result<Upload, ArtifactError> {
        let root = state_dir.join(ARTIFACTS_DIR);
        let tmp_dir = root.join(TMP_DIR);
        let sha_dir = root.join(SHA256_DIR);
        fs::create_dir_all(&tmp_dir).map_err(io_err("create", &tmp_dir))?;
        fs::create_dir_all(&sha_dir).map_err(io_err("create", &sha_dir))?;
        loop {
            let n = UPLOAD_COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = tmp_dir.join(format!("upload-{}-{n}", std::process::id()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(ARTIFACT_MODE)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(Upload {
                        state_dir: state_dir.to_path_buf(),
                        tmp,
                        file: Some(file),
                        hasher: Sha256::new(),
                        size: 0,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &tmp)(e)),
            }
        }
    }

    /// Appends a chunk.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        let file = self.file.as_mut().ok_or_else(|| ArtifactError::Io {
            op: "write",
            path: self.tmp.clone(),
            source: io::Error::other("upload already finished"),
        })?;
        file.write_all(chunk).map_err(io_err("write", &self.tmp))?;
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Verifies the digest, fsyncs, and renames the file to `sha256/<hex>` (fsyncing the
    /// directory). On a mismatch the temporary file is removed and the error names both digests.
    pub fn finish(mut self, expected: &str) -> Result<Cached, ArtifactError> {
        // The temporary file is removed by Drop on every error path below.
        validate_hex(expected)?;
        let file = self.file.take().ok_or_else(|| ArtifactError::Io {
            op: "finish",
            path: self.tmp.clone(),
            source: io::Error::other("upload already finished"),
        })?;
        let actual = hex(&std::mem::take(&mut self.hasher).finalize());
        if actual != expected {
            return Err(ArtifactError::DigestMismatch {
                source_name: "upload".into(),
                expected: expected.to_string(),
                actual,
            });
        }
        let dest = artifact_path(&self.state_dir, &actual)?;
        if has(&self.state_dir, &actual).is_some() {
            // Brought again: used now (best effort, as in `touch`'s other callers).
            let _ = touch(&self.state_dir, &actual);
            return Ok(Cached {
                sha256: actual,
                size: self.size,
                already_present: true,
            });
        }
        file.sync_all().map_err(io_err("fsync", &self.tmp))?;
        drop(file);
        durable::rename_into_place(&self.tmp, &dest).map_err(io_err("rename into place", &dest))?;
        Ok(Cached {
            sha256: actual,
            size: self.size,
            already_present: false,
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // After a successful rename the temporary name no longer exists; otherwise this is
        // the clean-up of an aborted or refused upload.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Copies a local file into the cache, verifying its digest while copying (same guarantees as
/// [`Upload`]). When the cache already holds the digest, the file is only hashed.
pub fn import_file(state_dir: &Path, path: &Path, expected: &str) -> Result<Cached, ArtifactError> {
    validate_hex(expected)?;
    if let Some(size) = has(state_dir, expected) {
        let actual = sha256_file(path).map_err(io_err("read", path))?;
        if actual != expected {
            return Err(ArtifactError::DigestMismatch {
                source_name: path.display().to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
        let _ = touch(state_dir, expected);
        return Ok(Cached {
            sha256: actual,
            size,
            already_present: true,
        });
    }
    let mut src = File::open(path).map_err(io_err("open", path))?;
    let mut upload = Upload::new(state_dir)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e)),
        };
        upload.write(&buf[..n])?;
    }
    upload.finish(expected).map_err(|e| match e {
        ArtifactError::DigestMismatch {
            expected, actual, ..
        } => ArtifactError::DigestMismatch {
            source_name: path.display().to_string(),
            expected,
            actual,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_hex;

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for sub in [TMP_DIR, SHA256_DIR] {
            if let Ok(rd) = fs::read_dir(dir.join(ARTIFACTS_DIR).join(sub)) {
                for e in rd.flatten() {
                    out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn stale_uploads_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(ARTIFACTS_DIR).join(TMP_DIR);
        fs::create_dir_all(&tmp).unwrap();
        // A pid that is certainly gone: a child that has been waited for.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        fs::write(tmp.join(format!("upload-{dead}-0")), b"partial").unwrap();
        let live = Upload::new(dir.path()).unwrap();
        let removed = remove_stale_uploads(dir.path());
        assert_eq!(removed, vec![tmp.join(format!("upload-{dead}-0"))]);
        assert!(live.tmp.exists(), "a live upload was removed");
    }

    #[test]
    fn hex_is_validated() {
        assert!(is_valid_hex(&"a".repeat(64)));
        assert!(!is_valid_hex(&"A".repeat(64)));
        assert!(!is_valid_hex(&"a".repeat(63)));
        assert!(!is_valid_hex(&format!("../{}", "a".repeat(61))));
        assert!(artifact_path(Path::new("/x"), "../etc/passwd").is_err());
        assert_eq!(has(Path::new("/nonexistent"), "zz"), None);
    }

    #[test]
    fn upload_publishes_only_verified_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"hello artifact".repeat(1000);
        let digest = sha256_hex(&data);
        assert_eq!(has(dir.path(), &digest), None);
        let mut up = Upload::new(dir.path()).unwrap();
        for chunk in data.chunks(777) {
            up.write(chunk).unwrap();
            // Never visible under its final name while in progress.
            assert_eq!(has(dir.path(), &digest), None);
        }
        let cached = up.finish(&digest).unwrap();
        assert_eq!(cached.size, data.len() as u64);
        assert!(!cached.already_present);
        assert_eq!(has(dir.path(), &digest), Some(data.len() as u64));
        assert_eq!(listing(dir.path()), vec![format!("sha256/{digest}")]);

        // Brought again: not rewritten, but marked as used now (what `prune` spares).
        let path = artifact_path(dir.path(), &digest).unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::open(&path).unwrap().set_modified(hour_ago).unwrap();
        let mut again = Upload::new(dir.path()).unwrap();
        again.write(&data).unwrap();
        assert!(again.finish(&digest).unwrap().already_present);
        assert_eq!(listing(dir.path()), vec![format!("sha256/{digest}")]);
        let used = fs::metadata(&path).unwrap().modified().unwrap();
        assert!(used > hour_ago + std::time::Duration::from_secs(3000));
        assert!(
            touch(dir.path(), &"0".repeat(64)).is_err(),
            "no such artifact"
        );
    }

    #[test]
    fn digest_mismatch_names_both_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let wrong = "0".repeat(64);
        let mut up = Upload::new(dir.path()).unwrap();
        up.write(b"corrupt").unwrap();
        let err = up.finish(&wrong).unwrap_err().to_string();
        assert!(err.contains(&wrong), "{err}");
        assert!(err.contains(&sha256_hex(b"corrupt")), "{err}");
        assert!(listing(dir.path()).is_empty());

        let dropped = Upload::new(dir.path()).unwrap();
        drop(dropped);
        assert!(listing(dir.path()).is_empty());

        let src = dir.path().join("a.tar.gz");
        fs::write(&src, b"local").unwrap();
        let err = import_file(dir.path(), &src, &wrong)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.tar.gz") && err.contains(&wrong), "{err}");
        assert!(listing(dir.path()).is_empty());
        let ok = import_file(dir.path(), &src, &sha256_hex(b"local")).unwrap();
        assert_eq!(ok.size, 5);
        assert!(
            import_file(dir.path(), &src, &sha256_hex(b"local"))
                .unwrap()
                .already_present
        );
    }

    #[test]
    fn prune_removes_what_is_not_kept_and_spares_new_arrivals() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let mut digests = Vec::new();
        for body in [&b"one"[..], b"two", b"three"] {
            let src = state.join("src");
            fs::write(&src, body).unwrap();
            let d = crate::digest::sha256_hex(body);
            import_file(state, &src, &d).unwrap();
            digests.push(d);
        }
        let sha_dir = state.join(ARTIFACTS_DIR).join(SHA256_DIR);
        fs::write(sha_dir.join("not-a-digest"), b"x").unwrap();
        let keep: std::collections::BTreeSet<String> = [digests[0].clone()].into();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        // Dry run: reports, removes nothing.
        let plan = prune(state, &keep, later, true).unwrap();
        let mut expected = vec![(digests[1].clone(), 3), (digests[2].clone(), 5)];
        expected.sort();
        assert_eq!(plan, expected);
        assert!(has(state, &digests[1]).is_some());
        // Everything arrived after `spare_since`: spared.
        assert!(
            prune(state, &keep, std::time::UNIX_EPOCH, false)
                .unwrap()
                .is_empty()
        );
        assert_eq!(prune(state, &keep, later, false).unwrap(), expected);
        assert!(has(state, &digests[0]).is_some());
        assert!(has(state, &digests[1]).is_none() && has(state, &digests[2]).is_none());
        assert!(sha_dir.join("not-a-digest").exists());
    }
}
