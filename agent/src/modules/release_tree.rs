//! What a release holds, as entries comparable between its artifact and its directory on disk
//! (type, size, SHA-256 or link target, mode). `release`'s `verified` state and `forensics`'
//! `files.json` both read releases this way; neither changes anything.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use sha2::Digest;

/// One file of a release or of its artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileEntry {
    /// `file`, `symlink` or `other`.
    pub kind: &'static str,
    /// Bytes of a regular file.
    pub size: u64,
    /// SHA-256 of a regular file, target of a symlink.
    pub digest: String,
    /// Permission bits of a regular file as extraction leaves them (0 for others).
    pub mode: u32,
}

fn sha256_reader(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((rampart_host::digest::hex(&h.finalize()), size));
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
}

/// The regular files and symlinks of an artifact (gzip or plain tar), by normalized path, and
/// the artifact's sha256, both from one read of the file.
pub(crate) fn tar_entries(artifact: &Path) -> io::Result<(BTreeMap<String, FileEntry>, String)> {
    let mut src = io::BufReader::new(rampart_host::extract::HashingReader::new(File::open(
        artifact,
    )?));
    let gz = io::BufRead::fill_buf(&mut src)?.starts_with(&[0x1f, 0x8b]);
    let entries = if gz {
        entries_of(flate2::bufread::GzDecoder::new(&mut src))?
    } else {
        entries_of(&mut src)?
    };
    io::copy(&mut src, &mut io::sink())?;
    Ok((entries, src.into_inner().finish()))
}

fn entries_of(reader: impl Read) -> io::Result<BTreeMap<String, FileEntry>> {
    let mut archive = tar::Archive::new(reader);
    let mut out = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path: PathBuf = entry
            .path()?
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let name = path.to_string_lossy().into_owned();
        if name.is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        let fe = if kind.is_symlink() {
            let target = entry.link_name()?.unwrap_or_default();
            FileEntry {
                kind: "symlink",
                size: 0,
                digest: target.to_string_lossy().into_owned(),
                mode: 0,
            }
        } else if kind.is_file() || kind.is_contiguous() {
            let mode = entry.header().mode().unwrap_or(0o644) & rampart_host::extract::MODE_MASK;
            let (digest, size) = sha256_reader(&mut entry)?;
            FileEntry {
                kind: "file",
                size,
                digest,
                mode,
            }
        } else {
            continue;
        };
        out.insert(name, fe);
    }
    Ok(out)
}

/// The regular files and symlinks under `root`, by relative path; symlinks are not followed.
pub(crate) fn disk_entries(root: &Path) -> io::Result<BTreeMap<String, FileEntry>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let p = e.path();
            let meta = fs::symlink_metadata(&p)?;
            let rel = p
                .strip_prefix(root)
                .map_err(io::Error::other)?
                .to_string_lossy()
                .into_owned();
            let fe = if meta.is_dir() {
                stack.push(p);
                continue;
            } else if meta.file_type().is_symlink() {
                FileEntry {
                    kind: "symlink",
                    size: 0,
                    digest: fs::read_link(&p)?.to_string_lossy().into_owned(),
                    mode: 0,
                }
            } else if meta.is_file() {
                let (digest, size) = sha256_reader(File::open(&p)?)?;
                FileEntry {
                    kind: "file",
                    size,
                    digest,
                    mode: meta.permissions().mode() & 0o7777,
                }
            } else {
                FileEntry {
                    kind: "other",
                    size: 0,
                    digest: String::new(),
                    mode: 0,
                }
            };
            out.insert(rel, fe);
        }
    }
    Ok(out)
}
