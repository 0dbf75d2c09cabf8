//! Safe, one-pass extraction of a release archive (`.tar.gz`, or a plain `.tar`).
//!
//! Purpose: turn an untrusted artifact into a release directory, verifying its SHA-256 in the same
//! pass that decompresses and unpacks it (no second read of the artifact).
//!
//! Inputs: a reader of the compressed bytes, the expected digest, a staging directory that must not
//! exist yet (its parent must), and [`Limits`]. Output: [`Extracted`] (digest, entry count,
//! uncompressed bytes), with every file and directory durable (one `syncfs` of the staging dir's
//! filesystem at the end, rather than an fsync per entry); or an [`ExtractError`] naming the
//! offending entry, in which case the staging directory has been removed entirely.
//!
//! Refused (the error names the entry): absolute paths, `..` components, symlinks whose target is
//! absolute or leaves the release root, symlink targets with `..` after a name (`a/../b`, whose
//! meaning depends on whether `a` is itself a link), hardlinks whose target is outside the release
//! or not a regular file already extracted, entries whose parent is a symlink, device, fifo and
//! sparse entries; more entries than `max_entries`, or more than `max_bytes` of entry data (the
//! uncompressed stream is capped too, so padding after the archive cannot be a bomb). Setuid,
//! setgid and sticky bits are stripped; owners are not restored (files belong to the agent).
//! A digest mismatch is found after the archive (the rest of the input is drained and hashed), and
//! also removes the staging directory.
//!
//! Reversing: extraction only creates the staging directory; removing it undoes everything.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::digest::hex;

/// Default limit on the uncompressed bytes of all entries: 2 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Default limit on the number of entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// Bits kept from an entry's mode: permissions only, never setuid, setgid or sticky.
pub const MODE_MASK: u32 = 0o777;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Limits an archive must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total uncompressed bytes of entry data.
    pub max_bytes: u64,
    /// Number of entries (files, directories, links).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// What an extraction produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// SHA-256 of the compressed input, lowercase hex (equal to the expected one).
    pub sha256: String,
    /// Entries written.
    pub entries: u64,
    /// Uncompressed bytes of entry data.
    pub bytes: u64,
}

/// Extraction failed; the staging directory is gone.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry is refused for safety.
    #[error("refused archive entry `{entry}`: {reason}")]
    Unsafe {
        /// The entry's path as written in the archive.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The archive expands past `max_bytes`.
    #[error("archive entry `{entry}` takes the archive past its size limit of {limit} bytes")]
    TooLarge {
        /// The entry that crossed the limit.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// The archive has more than `max_entries` entries.
    #[error("archive entry `{entry}` takes the archive past its limit of {limit} entries")]
    TooManyEntries {
        /// The first entry past the limit.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// The input does not hash to the expected digest.
    #[error("sha256 mismatch for artifact (expected {expected}, got {actual})")]
    DigestMismatch {
        /// Expected digest.
        expected: String,
        /// Digest of the bytes read.
        actual: String,
    },
    /// The archive cannot be read (corrupt gzip or tar).
    #[error("cannot read archive{}: {source}", .entry.as_deref().map(|e| format!(" at entry `{e}`")).unwrap_or_default())]
    Read {
        /// The entry being read, when known.
        entry: Option<String>,
        /// Why.
        source: io::Error,
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

impl ExtractError {
    /// The archive entry the error is about, when there is one.
    pub fn entry(&self) -> Option<&str> {
        match self {
            ExtractError::Unsafe { entry, .. }
            | ExtractError::TooLarge { entry, .. }
            | ExtractError::TooManyEntries { entry, .. } => Some(entry),
            ExtractError::Read { entry, .. } => entry.as_deref(),
            _ => None,
        }
    }
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ExtractError + 'p {
    move |source| ExtractError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A reader that hashes and counts every byte read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The SHA-256 of everything read, lowercase hex.
    pub fn finish(self) -> String {
        hex(&self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A file being written that keeps its own write error apart from the archive's read errors.
struct Sink<'f> {
    file: &'f mut File,
    error: Option<io::Error>,
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf).map_err(|e| {
            let kind = e.kind();
            self.error = Some(e);
            io::Error::from(kind)
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Caps the decompressed stream, so data after the tar end marker cannot be a bomb either.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "decompressed stream exceeds the archive size limit",
            )
        })?;
        Ok(n)
    }
}

/// Extracts the archive read from `reader` into `staging` (created here; must not exist),
/// verifying that the input's SHA-256 is `expected_sha256`. On error `staging` is removed.
pub fn extract<R: Read>(
    reader: R,
    expected_sha256: &str,
    staging: &Path,
    limits: Limits,
) -> Result<Extracted, ExtractError> {
    fs::create_dir(staging).map_err(io_err("create staging directory", staging))?;
    let result = extract_into(reader, expected_sha256, staging, limits);
    if result.is_err() {
        let _ = fs::remove_dir_all(staging);
        if let Some(parent) = staging.parent() {
            let _ = File::open(parent).and_then(|d| d.sync_all());
        }
    }
    result
}

fn extract_into<R: Read>(
    reader: R,
    expected: &str,
    root: &Path,
    limits: Limits,
) -> Result<Extracted, ExtractError> {
    let read_err = |source| ExtractError::Read {
        entry: None,
        source,
    };
    let mut src = BufReader::with_capacity(64 * 1024, HashingReader::new(reader));
    let is_gzip = src.fill_buf().map_err(read_err)?.starts_with(&GZIP_MAGIC);
    // Headers, padding and PAX records on top of the entry data.
    let cap = limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_add(16).saturating_mul(8192));
    let mut unpacker = Unpacker::new(root, limits);
    let mut unpack = || -> Result<(), ExtractError> {
        if is_gzip {
            let decoder = flate2::bufread::GzDecoder::new(&mut src);
            let mut rest = unpacker.run(Capped {
                inner: decoder,
                left: cap,
            })?;
            io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
        } else {
            let mut rest = unpacker.run(Capped {
                inner: &mut src,
                left: cap,
            })?;
            io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
        }
        Ok(())
    };
    let unpacked = unpack();
    // The rest of the input is hashed even when unpacking stopped early (it needs no
    // decompression): a corrupt artifact is reported as what it is, a digest mismatch.
    let drained = io::copy(&mut src, &mut io::sink());
    let actual = src.into_inner().finish();
    let mismatch = || ExtractError::DigestMismatch {
        expected: expected.to_string(),
        actual: actual.clone(),
    };
    match unpacked {
        Err(e) if drained.is_ok() && actual != expected => {
            tracing::debug!(error = %e, "unpacking failed on an artifact whose digest is wrong");
            return Err(mismatch());
        }
        Err(e) => return Err(e),
        Ok(()) => {
            drained.map_err(read_err)?;
            if actual != expected {
                return Err(mismatch());
            }
        }
    }
    unpacker.finish()?;
    Ok(Extracted {
        sha256: actual,
        entries: unpacker.entries,
        bytes: unpacker.bytes,
    })
}

/// Writes entries one by one under `root`, refusing unsafe ones.
struct Unpacker<'a> {
    root: &'a Path,
    limits: Limits,
    entries: u64,
    bytes: u64,
    /// Directories created (relative), given their modes at the end.
    dirs: Vec<(PathBuf, u32)>,
    dir_set: HashSet<PathBuf>,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, limits: Limits) -> Self {
        Unpacker {
            root,
            limits,
            entries: 0,
            bytes: 0,
            dirs: Vec::new(),
            dir_set: HashSet::new(),
        }
    }

    /// Unpacks every entry and returns the reader positioned after the archive's end marker.
    fn run<R: Read>(&mut self, reader: R) -> Result<R, ExtractError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|source| ExtractError::Read {
            entry: None,
            source,
        })?;
        let mut last: Option<String> = None;
        for entry in entries {
            let mut entry = entry.map_err(|source| ExtractError::Read {
                entry: last.clone(),
                source,
            })?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            last = Some(name.clone());
            self.unpack(&mut entry, &name)?;
        }
        Ok(archive.into_inner())
    }

    fn unpack<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), ExtractError> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ExtractError::TooManyEntries {
                entry: name.to_string(),
                limit: self.limits.max_entries,
            });
        }
        let size = entry.size();
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_bytes {
            return Err(ExtractError::TooLarge {
                entry: name.to_string(),
                limit: self.limits.max_bytes,
            });
        }
        let refuse = |reason: &str| ExtractError::Unsafe {
            entry: name.to_string(),
            reason: reason.to_string(),
        };
        let rel = safe_relative(&entry.path_bytes()).map_err(|r| refuse(&r))?;
        let mode = entry.header().mode().unwrap_or(0o644) & MODE_MASK;
        if rel.as_os_str().is_empty() {
            // `./`: the release root itself.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(refuse("the release root must be a directory"))
            };
        }
        self.check_parents(&rel).map_err(|r| refuse(&r))?;
        let dest = self.root.join(&rel);
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => remove_path(&dest)?,
                    Err(_) => {}
                }
                if !dest.is_dir() {
                    fs::create_dir(&dest).map_err(io_err("create directory", &dest))?;
                }
                self.remember_dir(rel, mode);
            }
            EntryType::Regular | EntryType::Continuous => {
                replace_existing(&dest)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)
                    .map_err(io_err("create", &dest))?;
                let mut sink = Sink {
                    file: &mut file,
                    error: None,
                };
                let copied = match io::copy(entry, &mut sink) {
                    Ok(n) => n,
                    // A full disk is a write error on the destination, not a bad archive.
                    Err(_) if sink.error.is_some() => {
                        return Err(io_err("write", &dest)(
                            sink.error
                                .take()
                                .unwrap_or_else(|| io::Error::other("write failed")),
                        ));
                    }
                    Err(source) => {
                        return Err(ExtractError::Read {
                            entry: Some(name.to_string()),
                            source,
                        });
                    }
                };
                if copied != size {
                    return Err(refuse("entry data is shorter than its header says"));
                }
                file.set_permissions(Permissions::from_mode(mode))
                    .map_err(io_err("set mode of", &dest))?;
                if let Ok(mtime) = entry.header().mtime() {
                    let _ = file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime));
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("symlink without a target"))?
                    .into_owned();
                let depth = rel.components().count() - 1;
                safe_symlink_target(&target, depth).map_err(|r| refuse(&r))?;
                replace_existing(&dest)?;
                let target: &Path = std::ffi::OsStr::from_bytes(&target).as_ref();
                std::os::unix::fs::symlink(target, &dest)
                    .map_err(io_err("create symlink", &dest))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("hardlink without a target"))?
                    .into_owned();
                let target_rel = safe_relative(&target)
                    .map_err(|r| refuse(&format!("hardlink target escapes the release: {r}")))?;
                self.check_parents(&target_rel)
                    .map_err(|r| refuse(&format!("hardlink target: {r}")))?;
                let source = self.root.join(&target_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(refuse(
                            "hardlink target is not a regular file extracted earlier",
                        ));
                    }
                }
                replace_existing(&dest)?;
                fs::hard_link(&source, &dest).map_err(io_err("create hardlink", &dest))?;
            }
            EntryType::Char => return Err(refuse("character device entries are not allowed")),
            EntryType::Block => return Err(refuse("block device entries are not allowed")),
            EntryType::Fifo => return Err(refuse("fifo entries are not allowed")),
            EntryType::GNUSparse => return Err(refuse("sparse entries are not supported")),
            other => return Err(refuse(&format!("unsupported entry type {other:?}"))),
        }
        Ok(())
    }

    /// Every ancestor of `rel` must be a real directory inside the root (created when missing):
    /// writing through a symlinked directory could leave the release.
    fn check_parents(&mut self, rel: &Path) -> Result<(), String> {
        let mut cur = PathBuf::new();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for comp in parent.components() {
            cur.push(comp);
            if self.dir_set.contains(&cur) {
                continue;
            }
            let abs = self.root.join(&cur);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!("its parent `{}` is a symlink", cur.display()));
                }
                Ok(_) => return Err(format!("its parent `{}` is not a directory", cur.display())),
                Err(_) => {
                    fs::create_dir(&abs)
                        .map_err(|e| format!("cannot create `{}`: {e}", cur.display()))?;
                    self.remember_dir(cur.clone(), 0o755);
                }
            }
        }
        Ok(())
    }

    fn remember_dir(&mut self, rel: PathBuf, mode: u32) {
        if let Some(slot) = self.dirs.iter_mut().find(|(p, _)| *p == rel) {
            slot.1 = mode;
        } else {
            self.dir_set.insert(rel.clone());
            self.dirs.push((rel, mode));
        }
    }

    /// Gives directories their modes (kept writable by the agent until now), deepest first, then
    /// makes the whole tree durable.
    fn finish(&mut self) -> Result<(), ExtractError> {
        self.dirs
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, mode) in &self.dirs {
            let abs = self.root.join(rel);
            // The owner keeps rwx, so the agent can always prune the release.
            fs::set_permissions(&abs, Permissions::from_mode(mode | 0o700))
                .map_err(io_err("set mode of", &abs))?;
        }
        // One syncfs for the whole tree instead of an fsync per file and directory (thousands
        // of them in a real release): every file's data and every entry are durable before the
        // caller renames the staging dir into place.
        let root = File::open(self.root).map_err(io_err("open", self.root))?;
        nix::unistd::syncfs(&root)
            .map_err(|e| io_err("sync the filesystem of", self.root)(io::Error::from(e)))
    }
}

/// Removes whatever is at `dest` (a file or link; a directory is refused) so an entry replaces
/// it, as `tar` does for repeated names.
fn replace_existing(dest: &Path) -> Result<(), ExtractError> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err(ExtractError::Unsafe {
            entry: dest.display().to_string(),
            reason: "would replace a directory extracted earlier".into(),
        }),
        Ok(_) => remove_path(dest),
        Err(_) => Ok(()),
    }
}

fn remove_path(path: &Path) -> Result<(), ExtractError> {
    fs::remove_file(path).map_err(io_err("remove", path))
}

/// An entry path as a clean relative path: no root, no `..`, `.` dropped.
fn safe_relative(raw: &[u8]) -> Result<PathBuf, String> {
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let path: &Path = std::ffi::OsStr::from_bytes(raw).as_ref();
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
            Component::ParentDir => return Err("path contains `..`".into()),
        }
    }
    Ok(out)
}

/// A symlink target must be relative, and may climb with `..` only at its start and no higher
/// than the link's own directory depth (`depth` directories below the root).
fn safe_symlink_target(raw: &[u8], depth: usize) -> Result<(), String> {
    if raw.is_empty() {
        return Err("symlink with an empty target".into());
    }
    if raw.contains(&0) {
        return Err("symlink target contains a NUL byte".into());
    }
    let target: &Path = std::ffi::OsStr::from_bytes(raw).as_ref();
    let mut up = 0usize;
    let mut seen_name = false;
    for comp in Path::new(target).components() {
        match comp {
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "symlink to absolute path `{}` escapes the release",
                    target.display()
                ));
            }
            Component::CurDir => {}
            Component::ParentDir if seen_name => {
                return Err(format!(
                    "symlink target `{}` has `..` after a name",
                    target.display()
                ));
            }
            Component::ParentDir => {
                up += 1;
                if up > depth {
                    return Err(format!(
                        "symlink target `{}` escapes the release",
                        target.display()
                    ));
                }
            }
            Component::Normal(_) => seen_name = true,
        }
    }
    Ok(())
}

/// Test archives with raw headers, for this crate's tests and its users' (feature `test-util`).
#[cfg(any(test, feature = "test-util"))]
pub mod test_archive {
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use tar::{Builder, EntryType, Header};

    /// An entry of a test archive.
    #[derive(Debug)]
    #[allow(missing_docs)]
    pub enum E<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Special(&'a str, EntryType),
    }

    /// Builds a `.tar.gz` with raw headers (names written literally, no checks).
    pub fn targz(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        for e in entries {
            let mut h = Header::new_gnu();
            let (name, mut data, mode, kind, link): (&str, &[u8], u32, EntryType, Option<&str>) =
                match e {
                    E::File(n, d, m) => (n, d, *m, EntryType::Regular, None),
                    E::Dir(n) => (n, b"", 0o755, EntryType::Directory, None),
                    E::Symlink(n, t) => (n, b"", 0o777, EntryType::Symlink, Some(t)),
                    E::Hardlink(n, t) => (n, b"", 0o644, EntryType::Link, Some(t)),
                    E::Special(n, k) => (n, b"", 0o644, *k, None),
                };
            set_raw_name(&mut h, name);
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            if let Some(t) = link {
                h.set_link_name_literal(t).unwrap();
            }
            h.set_cksum();
            b.append(&h, &mut data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn set_raw_name(h: &mut Header, name: &str) {
        let bytes = name.as_bytes();
        let field = &mut h.as_old_mut().name;
        field.fill(0);
        field[..bytes.len()].copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::test_archive::{E, targz};
    use super::*;
    use crate::digest::sha256_hex;
    use tar::{Builder, Header};

    fn run(data: &[u8], limits: Limits) -> (tempfile::TempDir, Result<Extracted, ExtractError>) {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("stage");
        let r = extract(data, &sha256_hex(data), &staging, limits);
        (dir, r)
    }

    fn assert_refused(entries: &[E<'_>], entry: &str, reason: &str) {
        assert_refused_with(&targz(entries), Limits::default(), entry, reason);
    }

    fn assert_refused_with(data: &[u8], limits: Limits, entry: &str, reason: &str) {
        let (dir, r) = run(data, limits);
        let err = r.expect_err("archive must be refused");
        let msg = err.to_string();
        assert_eq!(err.entry(), Some(entry), "{msg}");
        assert!(msg.contains(entry) && msg.contains(reason), "{msg}");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "staging left behind: {left:?}");
    }

    #[test]
    fn extracts_files_dirs_and_inner_links() {
        let data = targz(&[
            E::Dir("./"),
            E::Dir("bin"),
            E::File("bin/app", b"#!/bin/sh\necho hi\n", 0o4755),
            E::File("conf/app.toml", b"x = 1\n", 0o640),
            E::Symlink("conf/link", "../bin/app"),
            E::Symlink("top", "bin"),
            E::Hardlink("bin/app2", "bin/app"),
        ]);
        let (dir, r) = run(&data, Limits::default());
        let got = r.unwrap();
        assert_eq!(got.sha256, sha256_hex(&data));
        assert_eq!(got.entries, 7);
        let root = dir.path().join("stage");
        let meta = fs::metadata(root.join("bin/app")).unwrap();
        // setuid is stripped, not refused.
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read_link(root.join("conf/link")).unwrap(),
            Path::new("../bin/app")
        );
        assert_eq!(
            fs::read(root.join("bin/app2")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::metadata(root.join("conf/app.toml"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
    }

    #[test]
    fn plain_tar_is_accepted() {
        let mut b = Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_path("a.txt").unwrap();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"hi"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let (dir, r) = run(&data, Limits::default());
        r.unwrap();
        assert_eq!(fs::read(dir.path().join("stage/a.txt")).unwrap(), b"hi");
    }

    #[test]
    fn refuses_absolute_path() {
        assert_refused(
            &[E::File("/etc/evil", b"x", 0o644)],
            "/etc/evil",
            "absolute path",
        );
    }

    #[test]
    fn refuses_parent_components() {
        assert_refused(&[E::File("../x", b"x", 0o644)], "../x", "`..`");
        assert_refused(&[E::File("a/../../x", b"x", 0o644)], "a/../../x", "`..`");
    }

    #[test]
    fn refuses_symlink_to_absolute_target() {
        assert_refused(&[E::Symlink("etc", "/etc")], "etc", "escapes the release");
    }

    #[test]
    fn refuses_symlink_climbing_out() {
        assert_refused(&[E::Symlink("a", "../../x")], "a", "escapes the release");
        assert_refused(
            &[E::Dir("d"), E::Symlink("d/a", "../../x")],
            "d/a",
            "escapes the release",
        );
        // `l -> .` is harmless alone, but `l/../x` would climb out through it.
        assert_refused(
            &[E::Symlink("l", "."), E::Symlink("m", "l/../../x")],
            "m",
            "after a name",
        );
    }

    #[test]
    fn refuses_writing_through_a_symlinked_directory() {
        assert_refused(
            &[E::Symlink("d", "."), E::File("d/x", b"x", 0o644)],
            "d/x",
            "is a symlink",
        );
    }

    #[test]
    fn refuses_hardlink_escaping() {
        assert_refused(
            &[E::Hardlink("h", "/etc/passwd")],
            "h",
            "escapes the release",
        );
        assert_refused(&[E::Hardlink("h", "../x")], "h", "escapes the release");
        assert_refused(&[E::Hardlink("h", "missing")], "h", "not a regular file");
    }

    #[test]
    fn refuses_fifo_and_devices() {
        assert_refused(&[E::Special("p", EntryType::Fifo)], "p", "fifo");
        assert_refused(&[E::Special("c", EntryType::Char)], "c", "character device");
        assert_refused(&[E::Special("b", EntryType::Block)], "b", "block device");
    }

    #[test]
    fn refuses_archive_expanding_past_byte_limit() {
        let zeros = vec![0u8; 4 * 1024 * 1024];
        let data = targz(&[
            E::File("ok", b"small", 0o644),
            E::File("bomb", &zeros, 0o644),
        ]);
        assert!(data.len() < 64 * 1024, "compressed size {}", data.len());
        let limits = Limits {
            max_bytes: 1024 * 1024,
            max_entries: 10,
        };
        assert_refused_with(&data, limits, "bomb", "size limit");
    }

    #[test]
    fn refuses_too_many_entries() {
        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, b"", 0o644)).collect();
        let limits = Limits {
            max_bytes: 1024,
            max_entries: 5,
        };
        assert_refused_with(&targz(&entries), limits, "f5", "limit of 5 entries");
    }

    #[test]
    fn digest_mismatch_removes_staging() {
        let data = targz(&[E::File("a", b"a", 0o644)]);
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("stage");
        let wrong = "1".repeat(64);
        let err = extract(&data[..], &wrong, &staging, Limits::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&wrong) && err.contains(&sha256_hex(&data)),
            "{err}"
        );
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn corrupt_artifact_is_a_digest_mismatch_not_an_archive_error() {
        // Incompressible content, so a flipped byte lands in deflate data or a header.
        let noise: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let good = targz(&[E::File("a", &noise, 0o644), E::File("b", b"b", 0o644)]);
        let expected = sha256_hex(&good);
        for offset in [good.len() / 3, good.len() / 2, good.len() - 12] {
            let mut bad = good.clone();
            bad[offset] ^= 0x10;
            let dir = tempfile::tempdir().unwrap();
            let err = extract(
                &bad[..],
                &expected,
                &dir.path().join("s"),
                Limits::default(),
            )
            .unwrap_err();
            assert!(
                matches!(err, ExtractError::DigestMismatch { .. }),
                "offset {offset}: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&expected) && msg.contains(&sha256_hex(&bad)),
                "{msg}"
            );
            assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
        }
    }

    #[test]
    fn trailing_bytes_are_hashed() {
        let mut data = targz(&[E::File("a", b"a", 0o644)]);
        let before = sha256_hex(&data);
        data.extend_from_slice(b"garbage after the gzip stream");
        let dir = tempfile::tempdir().unwrap();
        let err = extract(&data[..], &before, &dir.path().join("s"), Limits::default());
        assert!(matches!(err, Err(ExtractError::DigestMismatch { .. })));
    }

    #[test]
    fn existing_staging_is_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("stage");
        fs::create_dir(&staging).unwrap();
        fs::write(staging.join("keep"), b"k").unwrap();
        let data = targz(&[E::File("a", b"a", 0o644)]);
        assert!(extract(&data[..], &sha256_hex(&data), &staging, Limits::default()).is_err());
        assert!(staging.join("keep").exists());
    }
}

/// Property tests: whatever an archive holds — `..`, absolute paths, symlinks and hardlinks
/// pointing anywhere, repeated names, corrupt bytes — extraction never panics, never writes or
/// links outside the staging directory, and never exceeds its limits.
#[cfg(test)]
mod fuzz {
    use super::test_archive::{E, targz};
    use super::*;
    use crate::digest::sha256_hex;
    use proptest::prelude::*;
    use std::ffi::OsString;
    use std::os::unix::fs::MetadataExt;

    /// Path pieces: names shared with the directory outside, and the dangerous ones.
    const PIECES: &[&str] = &["a", "b", "outside", "secret", "..", ".", "", "/"];

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 1..5).prop_map(|p| p.join("/"))
    }

    #[derive(Debug, Clone)]
    enum Kind {
        File(Vec<u8>, u32),
        Dir,
        Symlink(String),
        Hardlink(String),
    }

    fn entry() -> impl Strategy<Value = (String, Kind)> {
        let kind = prop_oneof![
            (prop::collection::vec(any::<u8>(), 0..300), any::<u32>())
                .prop_map(|(d, m)| Kind::File(d, m)),
            Just(Kind::Dir),
            path().prop_map(Kind::Symlink),
            path().prop_map(Kind::Hardlink),
        ];
        (path(), kind)
    }

    fn archive(entries: &[(String, Kind)]) -> Vec<u8> {
        let list: Vec<E<'_>> = entries
            .iter()
            .map(|(name, kind)| match kind {
                Kind::File(data, mode) => E::File(name, data, *mode),
                Kind::Dir => E::Dir(name),
                Kind::Symlink(t) => E::Symlink(name, t),
                Kind::Hardlink(t) => E::Hardlink(name, t),
            })
            .collect();
        targz(&list)
    }

    /// One step of a path walk.
    enum Step {
        Up,
        Name(OsString),
    }

    fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
        path.components().filter_map(|c| match c {
            Component::ParentDir => Some(Step::Up),
            Component::Normal(n) => Some(Step::Name(n.to_owned())),
            _ => None,
        })
    }

    /// Whether `rel` (below `root`) climbs out of `root` once symlinks are followed. A missing
    /// component ends the walk inside (the kernel stops there too), as do 40 links (ELOOP).
    fn escapes(root: &Path, rel: &Path) -> bool {
        let mut at = root.to_path_buf();
        let mut depth = 0usize;
        let mut hops = 0;
        let mut todo: Vec<Step> = steps(rel).rev().collect();
        while let Some(step) = todo.pop() {
            match step {
                Step::Up if depth == 0 => return true,
                Step::Up => {
                    at.pop();
                    depth -= 1;
                }
                Step::Name(name) => {
                    let here = at.join(&name);
                    match fs::symlink_metadata(&here) {
                        Ok(m) if m.file_type().is_symlink() => {
                            hops += 1;
                            let target = fs::read_link(&here).unwrap();
                            if target.is_absolute() {
                                return true;
                            }
                            if hops > 40 {
                                return false;
                            }
                            todo.extend(steps(&target).collect::<Vec<_>>().into_iter().rev());
                        }
                        Ok(_) => {
                            at = here;
                            depth += 1;
                        }
                        Err(_) => return false,
                    }
                }
            }
        }
        false
    }

    /// Checks the tree below `root`: every link stays inside, nothing is special or setuid, and
    /// the files' data (each inode once) is within the byte limit.
    fn check_tree(root: &Path, limits: Limits, outside_inode: u64) -> Result<(), TestCaseError> {
        let mut todo = vec![PathBuf::new()];
        let mut names = 0u64;
        let mut inodes = HashSet::new();
        let mut bytes = 0u64;
        while let Some(rel) = todo.pop() {
            for item in fs::read_dir(root.join(&rel)).unwrap() {
                let rel = rel.join(item.unwrap().file_name());
                let meta = fs::symlink_metadata(root.join(&rel)).unwrap();
                names += 1;
                prop_assert!(
                    meta.mode() & 0o7000 == 0,
                    "{} keeps setuid, setgid or sticky",
                    rel.display()
                );
                if meta.is_dir() {
                    todo.push(rel);
                } else if meta.file_type().is_symlink() {
                    prop_assert!(
                        !escapes(root, &rel),
                        "symlink {} leads outside the release",
                        rel.display()
                    );
                } else {
                    prop_assert!(
                        meta.is_file(),
                        "{} is not a file, directory or link",
                        rel.display()
                    );
                    prop_assert!(
                        meta.ino() != outside_inode,
                        "{} is a hardlink to a file outside",
                        rel.display()
                    );
                    if inodes.insert(meta.ino()) {
                        bytes += meta.len();
                    }
                }
            }
        }
        // Each entry's path has at most four names, so it creates at most four.
        prop_assert!(
            names <= 4 * limits.max_entries,
            "{names} names from {} entries at most",
            limits.max_entries
        );
        prop_assert!(
            bytes <= limits.max_bytes,
            "{bytes} bytes over {}",
            limits.max_bytes
        );
        Ok(())
    }

    /// Runs an extraction beside a directory `outside/` holding `secret`, and checks that the
    /// outside is untouched and the release (if any) stays inside.
    fn extract_and_check(data: &[u8], limits: Limits) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"keep").unwrap();
        let outside_inode = fs::metadata(outside.join("secret")).unwrap().ino();
        let staging = dir.path().join("stage");
        let result = extract(data, &sha256_hex(data), &staging, limits);
        let mut names: Vec<OsString> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        let secret = fs::metadata(outside.join("secret")).unwrap();
        prop_assert_eq!(fs::read(outside.join("secret")).unwrap(), b"keep");
        prop_assert_eq!(secret.nlink(), 1, "a hardlink to the outside file was made");
        prop_assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            1,
            "something was written outside"
        );
        match result {
            Ok(got) => {
                prop_assert_eq!(
                    names,
                    vec![OsString::from("outside"), OsString::from("stage")]
                );
                prop_assert!(
                    got.entries <= limits.max_entries && got.bytes <= limits.max_bytes,
                    "{got:?}"
                );
                check_tree(&staging, limits, outside_inode)?;
            }
            Err(_) => prop_assert_eq!(
                names,
                vec![OsString::from("outside")],
                "staging left behind"
            ),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(rampart_fuzz::config(400))]

        #[test]
        fn fuzz_extract_never_escapes_the_release(entries in prop::collection::vec(entry(), 0..8), max_bytes in 0u64..1200, max_entries in 0u64..10) {
            extract_and_check(&archive(&entries), Limits { max_bytes, max_entries })?;
        }

        #[test]
        fn fuzz_extract_corrupt_archives(entries in prop::collection::vec(entry(), 1..4), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), cut in any::<prop::sample::Index>(), gzip in any::<bool>()) {
            let mut data = archive(&entries);
            if !gzip {
                // The plain tar inside, so corruption reaches the headers themselves.
                let mut tar = Vec::new();
                flate2::read::GzDecoder::new(&data[..]).read_to_end(&mut tar).unwrap();
                data = tar;
            }
            for (at, byte) in flips {
                let i = at.index(data.len());
                data[i] = byte;
            }
            data.truncate(cut.index(data.len() + 1).max(1));
            extract_and_check(&data, Limits { max_bytes: 4096, max_entries: 16 })?;
        }
    }
}
