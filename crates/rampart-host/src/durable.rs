//! Crash-safe writes, the product's core promise, in one place.
//!
//! Purpose: every file and directory Rampart makes durable on a host (release state, the lock
//! record, captured states, restore-point records, cached artifacts, forensics bundles, the
//! `current` symlink) is written here, the same way: a temporary name in the same directory →
//! write → fsync → rename over the final name → fsync the directory. A crash leaves the old
//! content or the new, never a mix, and never a half-written file under the final name.
//!
//! Inputs: a destination and the bytes (or files) to put there. Outputs: `io::Result`; on an
//! error before the rename nothing is left under either name. An error from the directory fsync
//! *after* the rename means the new content is in place but may not survive a power loss: callers
//! treat it as a failed write (and report it), never as success.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::unistd::{Gid, Uid};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `dest` atomically: a temporary file `.<file>.rampart-tmp-<pid>-<n>` in
/// `dest`'s directory is written, fsynced, given its mode and renamed over `dest`, then the
/// directory is fsynced. A crash leaves the old or the new content, never a mix.
///
/// `mode` is the final mode; without it an existing file's mode is kept and a new file gets the
/// default mode (0666 minus the umask). Replacing an existing file keeps its owner and group when
/// the agent may set them. A symlink at `dest` is replaced by the file.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    write_atomic_with(dest, bytes, mode, &fsync_dir)
}

/// [`write_atomic`] with the directory fsync given, so a test can make it fail after the rename.
fn write_atomic_with(
    dest: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    sync_dir: &dyn Fn(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let name = dest.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", dest.display()),
        )
    })?;
    let dir = parent_dir(dest);
    let existing = fs::metadata(dest).ok().filter(fs::Metadata::is_file);
    let final_mode = mode.or_else(|| existing.as_ref().map(|m| m.mode() & 0o7777));
    // With a known final mode, start private and set the mode once the content is in place.
    let create_mode = if final_mode.is_some() { 0o600 } else { 0o666 };
    let (tmp, file) = create_temp(&dir, name, create_mode)?;
    let result = finish_temp(file, existing.as_ref(), bytes, final_mode)
        .and_then(|()| fs::rename(&tmp, dest));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir)
}

fn finish_temp(
    mut file: File,
    existing: Option<&fs::Metadata>,
    bytes: &[u8],
    mode: Option<u32>,
) -> io::Result<()> {
    if let Some(meta) = existing {
        let own = file.metadata()?;
        if own.uid() != meta.uid() || own.gid() != meta.gid() {
            // Keeping the owner needs privileges; without them the agent's own owner stays.
            let _ = nix::unistd::fchown(
                &file,
                Some(Uid::from_raw(meta.uid())),
                Some(Gid::from_raw(meta.gid())),
            );
        }
    }
    file.write_all(bytes)?;
    if let Some(m) = mode {
        file.set_permissions(Permissions::from_mode(m))?;
    }
    file.sync_all()
}

/// Creates a new temporary file next to a file named `name` in `dir`.
fn create_temp(dir: &Path, name: &std::ffi::OsStr, mode: u32) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..100 {
        let tmp = temp_path(dir, name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("could not create a temporary file")))
}

/// A fresh temporary name beside `name` in `dir`: `<dir>/.<name>.rampart-tmp-<pid>-<n>`.
pub fn temp_path(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".rampart-tmp-{}-{n}", std::process::id()));
    dir.join(tmp)
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fsyncs a directory, so the names created, renamed or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames the complete, already fsynced `tmp` over `dest` and fsyncs `dest`'s directory. On a
/// failed rename `tmp` is removed.
pub fn rename_into_place(tmp: &Path, dest: &Path) -> io::Result<()> {
    rename_into_place_with(tmp, dest, &fsync_dir)
}

fn rename_into_place_with(
    tmp: &Path,
    dest: &Path,
    sync_dir: &dyn Fn(&Path) -> io::Result<()>,
) -> io::Result<()> {
    if let Err(e) = fs::rename(tmp, dest) {
        remove_any(tmp);
        return Err(e);
    }
    sync_dir(&parent_dir(dest))
}

/// Points the symlink `link` at `target` in one step: a temporary symlink beside it is renamed
/// over it, then the directory is fsynced. Readers see the old target or the new one.
pub fn swap_symlink(link: &Path, target: &Path) -> io::Result<()> {
    let name = link.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a link", link.display()),
        )
    })?;
    let tmp = temp_path(&parent_dir(link), name);
    symlink(target, &tmp)?;
    rename_into_place(&tmp, link)
}

/// Creates `path` with `bytes` only if it does not exist yet (`AlreadyExists` otherwise), with
/// `mode`, fsynced together with its directory (created first when missing). Used for records
/// whose existence is the claim, such as a lock holder.
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(&dir)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    fsync_dir(&dir)
}

/// Writes a whole directory `<dest_dir>/<name>` of `files` (relative paths and contents): they go
/// into a temporary directory beside it, are fsynced with every directory they created, and the
/// temporary directory is renamed to `name`. On error nothing is left under either name.
pub fn write_dir_atomic(
    dest_dir: &Path,
    name: &str,
    files: &[(PathBuf, Vec<u8>)],
) -> io::Result<()> {
    fs::create_dir_all(dest_dir)?;
    let tmp = temp_path(dest_dir, std::ffi::OsStr::new(name));
    let result = (|| {
        fs::create_dir(&tmp)?;
        let mut dirs = vec![tmp.clone()];
        for (rel, bytes) in files {
            let p = tmp.join(rel);
            if let Some(parent) = p.parent().filter(|d| !d.exists()) {
                fs::create_dir_all(parent)?;
                dirs.push(parent.to_path_buf());
            }
            let mut f = File::create(&p)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        for d in dirs.iter().rev() {
            fsync_dir(d)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        remove_any(&tmp);
        return Err(e);
    }
    rename_into_place(&tmp, &dest_dir.join(name))
}

/// Removes a leftover temporary file, link or directory; best effort (it is already an error path).
fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    fn current_umask() -> u32 {
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        nix::sys::stat::umask(old);
        old.bits()
    }

    /// Nothing but the named entries: no temporary file is ever left behind.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_sets_keeps_and_defaults_modes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", Some(0o600)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(mode_of(&p), 0o600);
        // No mode: the existing file's mode is kept.
        write_atomic(&p, b"two", None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode_of(&p), 0o600);
        // A new file without a mode gets the default.
        let q = dir.path().join("g");
        write_atomic(&q, b"", None).unwrap();
        assert_eq!(mode_of(&q), 0o666 & !current_umask());
        // A symlink is replaced by the file.
        let l = dir.path().join("l");
        symlink(&p, &l).unwrap();
        write_atomic(&l, b"three", None).unwrap();
        assert!(fs::symlink_metadata(&l).unwrap().is_file());
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["f", "g", "l"]);
        let missing = dir.path().join("nope/f");
        assert!(write_atomic(&missing, b"x", None).is_err());
    }

    #[test]
    fn a_failed_directory_fsync_after_the_rename_is_reported_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"old", Some(0o644)).unwrap();
        let failing =
            |_: &Path| -> io::Result<()> { Err(io::Error::other("injected fsync failure")) };
        let err = write_atomic_with(&p, b"new", Some(0o644), &failing).unwrap_err();
        assert_eq!(err.to_string(), "injected fsync failure");
        // The rename happened (the new content is what a reader sees) but the caller was told the
        // write is not known to be durable; nothing temporary is left.
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["state.json"]);

        // The same for a renamed upload.
        let tmp = dir.path().join(".up.tmp");
        fs::write(&tmp, b"bytes").unwrap();
        let dest = dir.path().join("artifact");
        assert!(rename_into_place_with(&tmp, &dest, &failing).is_err());
        assert_eq!(fs::read(&dest).unwrap(), b"bytes");
        assert!(!tmp.exists());
    }

    #[test]
    fn a_failed_write_before_the_rename_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"old", None).unwrap();
        // A rename that cannot happen: the destination is a non-empty directory.
        let d = dir.path().join("d");
        fs::create_dir_all(d.join("inside")).unwrap();
        assert!(write_atomic(&d, b"new", None).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["d", "f"]);
        // A rename into a missing directory removes the temporary file.
        let tmp = dir.path().join(".x.tmp");
        fs::write(&tmp, b"x").unwrap();
        assert!(rename_into_place(&tmp, &dir.path().join("no/such")).is_err());
        assert!(!tmp.exists());
    }

    #[test]
    fn swap_symlink_replaces_the_target_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("current");
        swap_symlink(&link, Path::new("releases/1.0.0")).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("releases/1.0.0"));
        swap_symlink(&link, Path::new("releases/2.0.0")).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("releases/2.0.0"));
        assert_eq!(names(dir.path()), ["current"]);
    }

    #[test]
    fn create_new_claims_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("locks/deploy.json");
        create_new(&p, b"{}", 0o600).unwrap();
        assert_eq!(mode_of(&p), 0o600);
        let again = create_new(&p, b"{\"other\": 1}", 0o600).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"{}");
    }

    #[test]
    fn write_dir_atomic_publishes_a_whole_directory_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![
            (PathBuf::from("a.json"), b"1".to_vec()),
            (PathBuf::from("sub/b.txt"), b"2".to_vec()),
        ];
        write_dir_atomic(dir.path(), "bundle", &files).unwrap();
        assert_eq!(fs::read(dir.path().join("bundle/sub/b.txt")).unwrap(), b"2");
        // The name is taken (a non-empty directory): the rename fails and nothing is left over.
        let err = write_dir_atomic(dir.path(), "bundle", &files[..1]);
        assert!(err.is_err());
        assert_eq!(names(dir.path()), ["bundle"]);
        // A file where a directory must go: the write fails before the rename.
        let bad = vec![
            (PathBuf::from("a.json"), b"1".to_vec()),
            (PathBuf::from("a.json/x"), b"1".to_vec()),
        ];
        assert!(write_dir_atomic(dir.path(), "other", &bad).is_err());
        assert_eq!(names(dir.path()), ["bundle"]);
    }
}
