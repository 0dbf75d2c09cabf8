//! `unarchive`: unpacks a tar or tar.gz archive into an existing directory, with Ansible's
//! arguments and results, safely.
//!
//! Inputs: `src` (the playbook's file, looked up beside the playbook then in its `files/` as
//! `copy` does; a path on the host with `remote_src: true`), `dest` (an existing directory),
//! `creates`, `mode` (applied to every member, as Ansible's file arguments), `list_files`,
//! `include` / `exclude` (shell patterns over member paths, `*` matching `/` too as Python's
//! `fnmatch`). Outputs: `changed`, `dest`, `src`, `handler` (`TgzArchive` or `TarArchive`),
//! `files` (with `list_files`: the members, directories with a trailing `/`), dest's path
//! information (`mode`, `owner`, ...).
//!
//! How: the archive is extracted by [`rampart_host::extract`] (the release module's one-pass
//! safe untar: no absolute paths, no `..`, no symlink leaving the tree, no links written through,
//! no device files, setuid/setgid/sticky bits stripped, size and entry limits) into a staging
//! directory inside dest, then compared member by member with what dest holds: a member whose
//! content, kind, link target and mode already match is left alone; any other is renamed into
//! place (files and links atomically), directories created or given their mode. A member whose
//! path on disk goes through a symlink under dest, or a directory member that is a symlink on
//! disk, is refused (GNU tar would follow or replace it), so an archive cannot write outside dest
//! through a link that was already there. The staging directory is removed at the end.
//!
//! Idempotence as Ansible: `changed: false` when every member already matches; `creates` that
//! exists skips the task (`skipped, since X exists`). Check mode, as Ansible with GNU tar: the
//! task is skipped (Ansible's tar handler does not support check mode). Reversing: remove the
//! members (`list_files` names them) or restore dest from a copy; a replaced file's old content is
//! not kept.
//!
//! Deliberate differences from Ansible: Rampart extracts without `tar`, so `extra_opts` and
//! `keep_newer: true` are refused (with the reason), zip, bzip2, xz and zstd archives are refused
//! naming the format, owners are not restored (members belong to the agent), and mtimes are not
//! compared (content and mode are); a URL `src` is refused (download it with `get_url` first).

use std::collections::BTreeSet;
use std::fs::{self, File, Permissions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rampart_host::digest::sha256_file;
use rampart_host::durable::{fsync_dir, parent_dir, temp_path};
use rampart_host::extract::{Limits, MODE_MASK, extract};
use serde_json::{Map, Value, json};

use rampart_playbook::modules::archive as schema;

use super::files::{Mode, add_path_info, expand_user, find_source, opt_mode, os_msg};
use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_bool, arg_str, arg_strings, failed};

/// `unarchive`: unpacks a tar or tar.gz archive into an existing directory.
pub static UNARCHIVE: ModuleSpec = ModuleSpec {
    schema: &schema::UNARCHIVE,
    run: run_unarchive,
};

/// The most `include` / `exclude` patterns accepted.
const MAX_PATTERNS: usize = 1000;

/// What an archive's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    TarGz,
    Tar,
}

/// Recognises an archive from its first bytes; other formats are refused by name.
fn sniff(head: &[u8]) -> Result<Format, String> {
    let refused = |name: &str| {
        Err(format!(
            "{name} archives are not supported: unarchive reads tar and tar.gz; repack the archive as .tar.gz"
        ))
    };
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Format::TarGz)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Ok(Format::Tar)
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        refused("zip")
    } else if head.starts_with(b"BZh") {
        refused("bzip2")
    } else if head.starts_with(b"\xfd7zXZ\x00") {
        refused("xz")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        refused("zstd")
    } else {
        Err("the file is not a tar or tar.gz archive".into())
    }
}

/// Python's `fnmatch` of a whole path: `*` (any run, `/` included), `?`, `[seq]`, `[!seq]`.
fn fnmatch(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&pattern[p..], name[n]) {
                        if matched {
                            p += next;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class at the start of `pat` (`[...]`); returns whether it matched
/// and the class's length, or None when the class is not closed (a literal `[`).
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = pat.get(i) == Some(&b'!');
    if negate {
        i += 1;
    }
    let start = i;
    let mut matched = false;
    while i < pat.len() && (pat[i] != b']' || i == start) {
        if i + 2 < pat.len() && pat[i + 1] == b'-' && pat[i + 2] != b']' {
            matched |= pat[i] <= c && c <= pat[i + 2];
            i += 3;
        } else {
            matched |= pat[i] == c;
            i += 1;
        }
    }
    (i < pat.len()).then_some((matched != negate, i + 1))
}

/// Whether a member is unpacked under `include` / `exclude` (tried on the path with and without
/// a trailing `/` for directories).
fn selected(rel: &str, is_dir: bool, include: &[String], exclude: &[String]) -> bool {
    let names = if is_dir {
        vec![rel.to_string(), format!("{rel}/")]
    } else {
        vec![rel.to_string()]
    };
    let hit = |pats: &[String]| {
        pats.iter().any(|p| {
            names
                .iter()
                .any(|n| fnmatch(p.trim_start_matches("./").as_bytes(), n.as_bytes()))
        })
    };
    if !include.is_empty() && !hit(include) {
        return false;
    }
    !hit(exclude)
}

/// Every path under `root`, relative, parents before children (bounded by what extraction
/// accepted).
fn walk(root: &Path) -> Result<BTreeSet<PathBuf>, String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = fs::read_dir(&dir)
            .map_err(|e| format!("cannot read {}: {}", dir.display(), os_msg(&e)))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| format!("cannot read {}: {}", dir.display(), os_msg(&e)))?;
            let child = rel.join(entry.file_name());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(child.clone());
            }
            out.insert(child);
        }
    }
    Ok(out)
}

/// Refuses a member whose path on disk goes through a symlink below `dest`.
fn no_link_on_the_way(dest: &Path, rel: &Path) -> Result<(), String> {
    let mut cur = dest.to_path_buf();
    let parents: Vec<Component<'_>> = rel.components().collect();
    for c in &parents[..parents.len().saturating_sub(1)] {
        cur.push(c);
        if fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "refusing to unpack {} : {} is a symlink on disk and the archive would write through it",
                rel.display(),
                cur.display()
            ));
        }
    }
    Ok(())
}

/// Whether two regular files hold the same bytes.
fn same_file_content(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (fs::metadata(a), fs::metadata(b)) else {
        return false;
    };
    if ma.len() != mb.len() {
        return false;
    }
    let (Ok(mut fa), Ok(mut fb)) = (File::open(a), File::open(b)) else {
        return false;
    };
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let Ok(n) = fa.read(&mut ba) else {
            return false;
        };
        if n == 0 {
            return true;
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Puts the staged member `staged` at `target` with the mode `mode` (`mode` argument) unless it
/// already matches; returns whether anything changed.
fn place(staged: &Path, target: &Path, mode: Option<&Mode>) -> Result<bool, String> {
    let smeta = fs::symlink_metadata(staged)
        .map_err(|e| format!("cannot read {}: {}", staged.display(), os_msg(&e)))?;
    let tmeta = fs::symlink_metadata(target).ok();
    let smode = match mode {
        Some(m) if !smeta.file_type().is_symlink() => {
            m.resolve(smeta.mode() & MODE_MASK, smeta.is_dir())?
        }
        _ => smeta.mode() & MODE_MASK,
    };
    if !smeta.file_type().is_symlink() {
        fs::set_permissions(staged, Permissions::from_mode(smode)).map_err(|e| {
            format!(
                "cannot set the mode of {}: {}",
                staged.display(),
                os_msg(&e)
            )
        })?;
    }
    let io = |what: &str, e: std::io::Error| {
        format!("cannot {what} {}: {}", target.display(), os_msg(&e))
    };
    if smeta.is_dir() {
        return match tmeta {
            Some(t) if t.is_dir() => {
                if t.mode() & 0o7777 == smode {
                    Ok(false)
                } else {
                    fs::set_permissions(target, Permissions::from_mode(smode))
                        .map_err(|e| io("set the mode of", e))?;
                    Ok(true)
                }
            }
            Some(t) if t.file_type().is_symlink() => Err(format!(
                "refusing to unpack the directory {}: it is a symlink on disk, which the archive's members would be written through",
                target.display()
            )),
            other => {
                if other.is_some() {
                    fs::remove_file(target).map_err(|e| io("remove", e))?;
                }
                fs::create_dir(target).map_err(|e| io("create directory", e))?;
                fs::set_permissions(target, Permissions::from_mode(smode))
                    .map_err(|e| io("set the mode of", e))?;
                Ok(true)
            }
        };
    }
    if let Some(t) = &tmeta {
        if t.is_dir() {
            return Err(format!(
                "cannot unpack {}: a directory is in the way",
                target.display()
            ));
        }
        let same = if smeta.file_type().is_symlink() {
            t.file_type().is_symlink() && fs::read_link(staged).ok() == fs::read_link(target).ok()
        } else {
            t.is_file() && t.mode() & 0o7777 == smode && same_file_content(staged, target)
        };
        if same {
            return Ok(false);
        }
        if t.is_file() && smeta.is_file() && same_file_content(staged, target) {
            fs::set_permissions(target, Permissions::from_mode(smode))
                .map_err(|e| io("set the mode of", e))?;
            return Ok(true);
        }
    }
    fs::rename(staged, target).map_err(|e| io("write", e))?;
    Ok(true)
}

fn run_unarchive(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    match unarchive(args, ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn unarchive(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> Result<ModuleResult, ModuleResult> {
    let src_arg = arg_str(args, "src").unwrap_or_default();
    let dest_arg = arg_str(args, "dest").unwrap_or_default();
    let remote_src = arg_bool(args, "remote_src").unwrap_or(false);
    if let Some(creates) = arg_str(args, "creates").filter(|c| !c.is_empty())
        && fs::symlink_metadata(expand_user(creates)).is_ok()
    {
        let mut r = super::ok(false);
        r.insert("skipped".into(), json!(true));
        r.insert(
            "msg".into(),
            json!(format!("skipped, since {creates} exists")),
        );
        return Ok(r);
    }
    if !arg_strings(args.get("extra_opts")).is_empty() {
        return Err(failed(
            "extra_opts is not supported: Rampart unpacks archives itself, without tar; remove extra_opts (include, exclude and mode cover the common uses)",
        ));
    }
    if arg_bool(args, "keep_newer") == Some(true) {
        return Err(failed(
            "keep_newer is not supported: Rampart replaces every member that differs; remove keep_newer",
        ));
    }
    let include = arg_strings(args.get("include"));
    let exclude = arg_strings(args.get("exclude"));
    if include.len() + exclude.len() > MAX_PATTERNS {
        return Err(failed(format!(
            "include and exclude hold more than {MAX_PATTERNS} patterns"
        )));
    }
    let mode = opt_mode(args).map_err(failed)?;
    if src_arg.contains("://") {
        return Err(failed(format!(
            "a URL src ({src_arg}) is not supported; download it with get_url first, then unarchive it with remote_src: true"
        )));
    }
    let dest = expand_user(dest_arg);
    if !dest.is_dir() {
        return Err(failed(format!("dest '{dest_arg}' must be an existing dir")));
    }
    let src = if remote_src {
        expand_user(src_arg)
    } else {
        find_source(src_arg, ctx.base_dir.as_deref(), "files").map_err(failed)?
    };
    let mut r = super::ok(false);
    r.insert("dest".into(), json!(dest_arg));
    r.insert("src".into(), json!(src.to_string_lossy()));
    let fail = |r: &ModuleResult, msg: String| {
        let mut f = r.clone();
        f.insert("failed".into(), json!(true));
        f.insert("msg".into(), json!(msg));
        f
    };
    let shown = src.display().to_string();
    let meta =
        fs::metadata(&src).map_err(|_| fail(&r, format!("Source '{shown}' does not exist")))?;
    if meta.len() == 0 {
        return Err(fail(
            &r,
            format!("Invalid archive '{shown}', the file is 0 bytes"),
        ));
    }
    let mut head = Vec::with_capacity(512);
    File::open(&src)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|e| fail(&r, format!("Source '{shown}' not readable, {}", os_msg(&e))))?;
    let format = sniff(&head).map_err(|e| fail(&r, format!("cannot unpack {shown}: {e}")))?;
    r.insert(
        "handler".into(),
        json!(match format {
            Format::TarGz => "TgzArchive",
            Format::Tar => "TarArchive",
        }),
    );
    if ctx.check {
        r.insert("skipped".into(), json!(true));
        r.insert(
            "msg".into(),
            json!("remote module (unarchive) does not support check mode when using gtar"),
        );
        return Ok(r);
    }
    let sha = sha256_file(&src)
        .map_err(|e| fail(&r, format!("Source '{shown}' not readable, {}", os_msg(&e))))?;
    let staging = temp_path(&dest, std::ffi::OsStr::new("unarchive"));
    let file = File::open(&src)
        .map_err(|e| fail(&r, format!("Source '{shown}' not readable, {}", os_msg(&e))))?;
    extract(file, &sha, &staging, Limits::default())
        .map_err(|e| fail(&r, format!("failed to unpack {shown} to {dest_arg}: {e}")))?;
    let outcome = install(&staging, &dest, &include, &exclude, mode.as_ref());
    let _ = fs::remove_dir_all(&staging);
    let (changed, files) = outcome.map_err(|e| fail(&r, e))?;
    r.insert("changed".into(), json!(changed));
    if arg_bool(args, "list_files") == Some(true) {
        r.insert("files".into(), json!(files));
    }
    add_path_info(&mut r, &dest);
    Ok(r)
}

/// Moves the selected members of `staging` into `dest` where they differ, applies `mode`;
/// returns whether anything changed and the members' names.
fn install(
    staging: &Path,
    dest: &Path,
    include: &[String],
    exclude: &[String],
    mode: Option<&Mode>,
) -> Result<(bool, Vec<String>), String> {
    let members = walk(staging)?;
    let mut changed = false;
    let mut names = Vec::with_capacity(members.len());
    let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
    for rel in &members {
        let staged = staging.join(rel);
        let is_dir = fs::symlink_metadata(&staged).is_ok_and(|m| m.is_dir());
        let name = rel.to_string_lossy().into_owned();
        if !selected(&name, is_dir, include, exclude) {
            continue;
        }
        no_link_on_the_way(dest, rel)?;
        let target = dest.join(rel);
        let parent = parent_dir(&target);
        if !parent.is_dir() {
            // An included member whose directory was not selected: made as mkdir -p would.
            fs::create_dir_all(&parent)
                .map_err(|e| format!("cannot create {}: {}", parent.display(), os_msg(&e)))?;
            changed = true;
        }
        if place(&staged, &target, mode)? {
            changed = true;
            touched.insert(parent);
        }
        names.push(if is_dir { format!("{name}/") } else { name });
    }
    for dir in &touched {
        fsync_dir(dir).map_err(|e| format!("cannot sync {}: {}", dir.display(), os_msg(&e)))?;
    }
    Ok((changed, names))
}

#[cfg(test)]
mod tests {
    use super::super::testing::Call;
    use super::*;
    use std::os::unix::fs::symlink;

    /// A tar.gz of `files` ((path, content); a path ending in `/` is a directory), made with the
    /// system's tar from a tree, as users make them.
    fn targz(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
        let tree = dir.join("tree");
        fs::create_dir_all(&tree).unwrap();
        for (p, c) in files {
            let path = tree.join(p);
            if p.ends_with('/') {
                fs::create_dir_all(&path).unwrap();
            } else {
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, c).unwrap();
            }
        }
        let out = dir.join("a.tgz");
        let st = std::process::Command::new("tar")
            .arg("czf")
            .arg(&out)
            .arg("-C")
            .arg(&tree)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        fs::remove_dir_all(&tree).unwrap();
        out
    }

    fn run(args: Value) -> ModuleResult {
        Call::default().run(&UNARCHIVE, args)
    }
    fn changed(r: &ModuleResult) -> bool {
        r["changed"].as_bool().unwrap()
    }
    fn is_failed(r: &ModuleResult) -> bool {
        r.get("failed").and_then(Value::as_bool).unwrap_or(false)
    }
    fn msg(r: &ModuleResult) -> String {
        r.get("msg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = walk(dir)
            .unwrap()
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn unpacks_then_is_unchanged_and_repairs_drift() {
        let dir = tempfile::tempdir().unwrap();
        let a = targz(dir.path(), &[("one", "1\n"), ("d/two", "2\n")]);
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let args = json!({"src": a, "dest": out, "remote_src": true, "list_files": true});
        let r = run(args.clone());
        assert!(changed(&r), "{r:?}");
        assert_eq!(r["handler"], json!("TgzArchive"));
        assert_eq!(r["files"], json!(["d/", "d/two", "one"]));
        assert_eq!(names(&out), ["d", "d/two", "one"]);
        assert_eq!(fs::read_to_string(out.join("d/two")).unwrap(), "2\n");
        let again = run(args.clone());
        assert!(!changed(&again), "{again:?}");
        assert_eq!(names(&out), ["d", "d/two", "one"], "staging left behind");
        // A member changed on disk is put back; files not in the archive are left alone.
        fs::write(out.join("one"), "drift").unwrap();
        fs::write(out.join("mine"), "x").unwrap();
        assert!(changed(&run(args.clone())));
        assert_eq!(fs::read_to_string(out.join("one")).unwrap(), "1\n");
        assert_eq!(fs::read_to_string(out.join("mine")).unwrap(), "x");
        // mode applies to every member; then the run is unchanged again.
        let with_mode = json!({"src": a, "dest": out, "remote_src": true, "mode": "0700"});
        assert!(changed(&run(with_mode.clone())));
        assert_eq!(fs::metadata(out.join("one")).unwrap().mode() & 0o777, 0o700);
        assert!(!changed(&run(with_mode)));
    }

    #[test]
    fn include_exclude_and_src_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = targz(
            dir.path(),
            &[("one", "1"), ("d/two", "2"), ("d/three.log", "3")],
        );
        fs::create_dir(dir.path().join("files")).unwrap();
        fs::rename(&a, dir.path().join("files/a.tgz")).unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let call = Call {
            base_dir: Some(dir.path().to_path_buf()),
            ..Call::default()
        };
        let r = call.run(
            &UNARCHIVE,
            json!({"src": "a.tgz", "dest": out, "exclude": ["*.log"]}),
        );
        assert!(changed(&r), "{r:?}");
        assert_eq!(names(&out), ["d", "d/two", "one"]);
        let out2 = dir.path().join("out2");
        fs::create_dir(&out2).unwrap();
        let r = call.run(
            &UNARCHIVE,
            json!({"src": "a.tgz", "dest": out2, "include": ["d/t*"]}),
        );
        assert!(changed(&r), "{r:?}");
        assert_eq!(names(&out2), ["d", "d/three.log", "d/two"]);
    }

    #[test]
    fn creates_check_mode_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let a = targz(dir.path(), &[("one", "1")]);
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let r = run(json!({"src": "/none.tgz", "dest": out, "remote_src": true, "creates": out}));
        assert_eq!(r["skipped"], json!(true));
        assert_eq!(msg(&r), format!("skipped, since {} exists", out.display()));
        let r = Call {
            check: true,
            ..Call::default()
        }
        .run(
            &UNARCHIVE,
            json!({"src": a, "dest": out, "remote_src": true}),
        );
        assert_eq!(r["skipped"], json!(true), "{r:?}");
        assert!(names(&out).is_empty());
        let nowhere = dir.path().join("nowhere");
        let r = run(json!({"src": a, "dest": nowhere, "remote_src": true}));
        assert_eq!(
            msg(&r),
            format!("dest '{}' must be an existing dir", nowhere.display())
        );
        let r = run(json!({"src": dir.path().join("no.tgz"), "dest": out, "remote_src": true}));
        assert!(
            msg(&r).starts_with("Source '") && msg(&r).ends_with("does not exist"),
            "{r:?}"
        );
        let zip = dir.path().join("a.zip");
        fs::write(&zip, b"PK\x03\x04rest").unwrap();
        let r = run(json!({"src": zip, "dest": out, "remote_src": true}));
        assert!(msg(&r).contains("zip archives are not supported"), "{r:?}");
        for extra in [
            json!({"extra_opts": ["--strip-components=1"]}),
            json!({"keep_newer": true}),
        ] {
            let mut args = json!({"src": a, "dest": out, "remote_src": true});
            args.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            assert!(is_failed(&run(args)));
        }
        let empty = dir.path().join("empty.tgz");
        fs::write(&empty, b"").unwrap();
        assert!(
            msg(&run(json!({"src": empty, "dest": out, "remote_src": true}))).contains("0 bytes")
        );
        assert!(names(&out).is_empty());
    }

    #[test]
    fn never_writes_outside_dest() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        // A link already in dest: the archive's d/x must not be written through it.
        symlink(&outside, out.join("d")).unwrap();
        use rampart_host::extract::test_archive::{E, targz as raw_targz};
        let through = dir.path().join("through.tgz");
        fs::write(&through, raw_targz(&[E::File("d/x", b"evil", 0o644)])).unwrap();
        let r = run(json!({"src": through, "dest": out, "remote_src": true}));
        assert!(is_failed(&r), "{r:?}");
        assert!(msg(&r).contains("symlink on disk"), "{r:?}");
        assert!(fs::read_dir(&outside).unwrap().next().is_none());
        // With a `d/` member too: refused, not replaced.
        let a = targz(dir.path(), &[("d/x", "evil")]);
        let r = run(json!({"src": a, "dest": out, "remote_src": true}));
        assert!(is_failed(&r), "{r:?}");
        assert!(msg(&r).contains("symlink on disk"), "{r:?}");
        assert!(
            fs::symlink_metadata(out.join("d"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(fs::read_dir(&outside).unwrap().next().is_none());
        // A member with `..`.
        let evil = raw_targz(&[E::File("../escape", b"x", 0o644)]);
        let p = dir.path().join("evil.tgz");
        fs::write(&p, evil).unwrap();
        let r = run(json!({"src": p, "dest": out, "remote_src": true}));
        assert!(is_failed(&r));
        assert!(!dir.path().join("escape").exists());
        assert_eq!(names(&out), ["d"], "staging left behind");
    }

    #[test]
    fn fnmatch_as_python() {
        assert!(fnmatch(b"*.log", b"d/x.log"));
        assert!(fnmatch(b"d/*", b"d/a/b"));
        assert!(fnmatch(b"?ne", b"one"));
        assert!(fnmatch(b"[a-c]x", b"bx"));
        assert!(!fnmatch(b"[!a-c]x", b"bx"));
        assert!(fnmatch(b"[x", b"[x"));
        assert!(!fnmatch(b"*.log", b"x.txt"));
        assert!(fnmatch(b"", b""));
    }
}
