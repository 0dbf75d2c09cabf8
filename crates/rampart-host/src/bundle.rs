//! A playbook's files as they travel to an agent: the task files, roles, vars files and
//! templates a playbook brings in, by path relative to the playbook's directory.
//!
//! The sender (`rampart run --agent`, the controller) [`gather`]s what the loader read plus
//! every file under the `templates/` and `files/` of each role used; the agent checks every path
//! ([`check_path`]) and writes them ([`write()`]) into a directory of the transaction's own, atomically,
//! before its journal begins, so a recovery finds the same files. Sizes are bounded on both
//! sides ([`MAX_FILES`], [`MAX_BYTES`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::durable;

/// Most files one bundle holds.
pub const MAX_FILES: usize = 2000;
/// Most bytes one bundle holds, all files together (under the gRPC message limit).
pub const MAX_BYTES: usize = 48 << 20;
/// Longest path in a bundle.
pub const MAX_PATH: usize = 512;
/// Directories of a role that are read when tasks run, and so travel whole.
const RUNTIME_DIRS: &[&str] = &["templates", "files"];

/// Checks one bundle path: relative, normalized (no `.`, `..` or empty segments), printable,
/// at most [`MAX_PATH`] bytes.
pub fn check_path(rel: &str) -> Result<(), String> {
    if rel.is_empty() || rel.len() > MAX_PATH {
        return Err(format!("a bundle path must be 1 to {MAX_PATH} bytes"));
    }
    if rel.starts_with('/') {
        return Err(format!(
            "bundle path `{rel}` is absolute; paths are relative to the playbook"
        ));
    }
    if rel.chars().any(char::is_control) {
        return Err("a bundle path holds a control character".into());
    }
    if rel
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!(
            "bundle path `{rel}` is not normalized (empty, `.` or `..` segment)"
        ));
    }
    Ok(())
}

/// Checks a whole bundle: every path, no repeats, the count and size bounds.
pub fn check(files: &[(String, Vec<u8>)]) -> Result<(), String> {
    if files.len() > MAX_FILES {
        return Err(format!(
            "a bundle holds at most {MAX_FILES} files, this one {}",
            files.len()
        ));
    }
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    if total > MAX_BYTES {
        return Err(format!(
            "a bundle holds at most {} MiB, this one {total} bytes",
            MAX_BYTES >> 20
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (p, _) in files {
        check_path(p)?;
        if !seen.insert(p.as_str()) {
            return Err(format!("bundle path `{p}` appears twice"));
        }
    }
    // A file may not also be a directory of another (`a` and `a/b`).
    for p in &seen {
        let mut prefix = String::new();
        for seg in p.split('/').take(p.split('/').count() - 1) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(seg);
            if seen.contains(prefix.as_str()) {
                return Err(format!(
                    "bundle path `{prefix}` is both a file and a directory"
                ));
            }
        }
    }
    Ok(())
}

/// Writes a checked bundle to `dir` atomically (a leftover of an earlier attempt is replaced).
pub fn write(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), String> {
    check(files)?;
    let parent = dir.parent().ok_or("the bundle directory has no parent")?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the bundle directory has no name")?;
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    let files: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|(p, b)| (PathBuf::from(p), b.clone()))
        .collect();
    durable::write_dir_atomic(parent, name, &files).map_err(|e| e.to_string())
}

/// Reads one file the playbook loader asks for: `p` relative to `base` (absolute as is, for a
/// `roles_path` entry); `Ok(None)` when there is no such file, `Err` when it cannot be read or is
/// not UTF-8 text.
pub fn read_text(base: Option<&Path>, p: &str) -> Result<Option<String>, String> {
    let path = match base {
        Some(b) if !p.starts_with('/') => b.join(p),
        _ => PathBuf::from(p),
    };
    match fs::read(&path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| "not UTF-8 text".to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Collects the files to send: `files` (as the loader read them) and every regular file under
/// the runtime directories of each of `role_dirs`, read from `base` (the playbook's directory).
/// A role found through an absolute `roles_path` travels as `roles/<its name>/`, where the agent
/// looks first; any other file outside `base` is refused with what to do.
pub fn gather(
    base: &Path,
    files: &[String],
    role_dirs: &[String],
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut total = 0usize;
    let abs_roles: Vec<&String> = role_dirs.iter().filter(|d| d.starts_with('/')).collect();
    let key_of = |p: &str| -> Result<String, String> {
        if !p.starts_with('/') {
            return Ok(p.to_string());
        }
        for d in &abs_roles {
            if let Some(rest) = p.strip_prefix(d.as_str()).and_then(|r| r.strip_prefix('/')) {
                let name = Path::new(d.as_str())
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("role");
                return Ok(format!("roles/{name}/{rest}"));
            }
        }
        Err(format!(
            "{p} is outside the playbook's directory: move it there to send it to an agent"
        ))
    };
    let mut push = |key: String, bytes: Vec<u8>, out: &mut Vec<(String, Vec<u8>)>| {
        if out.iter().any(|(k, _)| *k == key) {
            return Ok(());
        }
        total += bytes.len();
        if out.len() >= MAX_FILES || total > MAX_BYTES {
            return Err(format!(
                "the playbook's files exceed {MAX_FILES} files or {} MiB",
                MAX_BYTES >> 20
            ));
        }
        check_path(&key)?;
        out.push((key, bytes));
        Ok(())
    };
    for f in files {
        let path = base.join(f);
        let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        push(key_of(f)?, bytes, &mut out)?;
    }
    for d in role_dirs {
        for sub in RUNTIME_DIRS {
            let root = base.join(d).join(sub);
            let mut stack = vec![root];
            while let Some(dir) = stack.pop() {
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| e.to_string())?;
                    let kind = entry.file_type().map_err(|e| e.to_string())?;
                    let p = entry.path();
                    if kind.is_dir() {
                        stack.push(p);
                    } else if kind.is_file() {
                        let rel = p
                            .strip_prefix(base)
                            .map(|r| r.to_string_lossy().into_owned())
                            .unwrap_or_else(|_| p.to_string_lossy().into_owned());
                        let bytes = fs::read(&p)
                            .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                        push(key_of(&rel)?, bytes, &mut out)?;
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert!(check_path("roles/web/tasks/main.yml").is_ok());
        for bad in ["", "/etc/passwd", "a/../b", "./a", "a//b", "a/\n"] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
        let two = vec![("a".to_string(), vec![]), ("a/b".to_string(), vec![])];
        assert!(
            check(&two)
                .unwrap_err()
                .contains("both a file and a directory")
        );
        let dup = vec![("a".to_string(), vec![]), ("a".to_string(), vec![])];
        assert!(check(&dup).unwrap_err().contains("twice"));
    }

    #[test]
    fn gathers_role_runtime_files_and_writes_them_back() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        fs::create_dir_all(b.join("roles/web/tasks")).unwrap();
        fs::create_dir_all(b.join("roles/web/templates/sub")).unwrap();
        fs::write(b.join("roles/web/tasks/main.yml"), "- debug: msg=hi\n").unwrap();
        fs::write(b.join("roles/web/templates/sub/a.j2"), "{{ x }}").unwrap();
        let outside = tempfile::tempdir().unwrap();
        let ext = outside.path().join("ext");
        fs::create_dir_all(ext.join("files")).unwrap();
        fs::write(ext.join("files/bin"), [0u8, 1, 2]).unwrap();
        let ext_s = ext.to_string_lossy().into_owned();
        let got = gather(
            b,
            &["roles/web/tasks/main.yml".into()],
            &["roles/web".into(), ext_s.clone()],
        )
        .unwrap();
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "roles/web/tasks/main.yml",
                "roles/web/templates/sub/a.j2",
                "roles/ext/files/bin"
            ]
        );
        let err = gather(b, &["/etc/hostname".into()], &[]).unwrap_err();
        assert!(err.contains("outside the playbook's directory"), "{err}");
        let dest = tempfile::tempdir().unwrap();
        let dir = dest.path().join("bundles/tx1");
        fs::create_dir_all(dest.path().join("bundles")).unwrap();
        write(&dir, &got).unwrap();
        assert_eq!(
            fs::read(dir.join("roles/ext/files/bin")).unwrap(),
            [0, 1, 2]
        );
        let bad = vec![("../x".to_string(), vec![])];
        assert!(write(&dest.path().join("bundles/tx2"), &bad).is_err());
        assert!(!dest.path().join("bundles/tx2").exists());
    }
}
