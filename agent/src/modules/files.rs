//! File modules: `file`, `copy`, `template` and `stat`, with Ansible's arguments and results.
//!
//! Inputs: templated, type-checked arguments (see each `ModuleSpec`). Outputs: Ansible's result
//! object — `changed` always, `failed` and `msg` on failure, and the path information Ansible adds
//! (`path`/`dest`, `state`, `mode` as `"0644"`, `uid`, `gid`, `owner`, `group`, `size`).
//! Every module is idempotent as in Ansible (a second identical run reports `changed: false`,
//! except `file: state=touch`, which Ansible always reports as changed) and honours check mode by
//! reporting what would change without touching the disk.
//!
//! - `file` creates directories (`mkdir -p`, the mode applied to each directory it creates),
//!   removes paths (recursively), touches files, makes symlinks and hard links (`state: hard`,
//!   replaced atomically through a temporary link), and sets modes, owners and groups (`owner`,
//!   `group`: a name or an id), with `recurse: true` on everything below a directory too. Its
//!   `diff` is Ansible's: `before`/`after` of `path` and of the `state`, `mode`, `owner`
//!   (uid), `group` (gid) and link `src` that changed. Reversing it: a
//!   rescue undoes `directory`/`touch`/`link` with `state: absent` and restores a removed path
//!   from a copy (`absent` itself cannot be undone without one); a mode change is undone by
//!   setting the previous mode, which `stat` reports.
//! - `copy` writes `content` or the `src` file to `dest`; `template` renders a Jinja2 file and
//!   writes the result the same way. The write is atomic ([`write_atomic`]: a temporary file in
//!   the destination's directory, fsync, rename, fsync of the directory), so a crash leaves the old
//!   or the new content, never a mix. Reversing it: a rescue restores the previous content by
//!   copying it back (or removes a file that did not exist, with `file: state=absent`).
//! - `stat` reports a path's metadata and SHA-256 checksum; it never changes anything.
//!
//! `copy` and `template` also take `owner`/`group`, and return Ansible's content `diff`
//! (`before`/`after` text with `before_header`/`after_header`, or `dst_larger`/`src_larger`
//! beyond 104,448 bytes and `dst_binary`/`src_binary` for bytes that are not text) when the
//! content changes; the engine keeps it only under `--diff`.
//!
//! Deliberate differences from Ansible: `recurse` does not follow symlinks it finds below the
//! directory (Ansible, with its default `follow: yes`, changes their targets even outside the
//! tree); a symlink found there gets only its owner and group. A relative `src` of `state: hard`
//! is read from `path`'s directory, as for symlinks (Ansible reads it from its working
//! directory). Checksums are SHA-256 (`checksum_algorithm: sha256` in
//! results) where Ansible uses SHA-1; `copy` does not copy directories; `template` emulates
//! Ansible's `trim_blocks` by removing the newline after each block tag and comment before
//! rendering (so error line numbers may be lower than in the file).

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use minijinja::value::Value as MjValue;
use nix::unistd::{AccessFlags, Gid, Group, Uid, User};
use rampart_host::digest::{digest_file, sha256_hex};
use rampart_host::durable::{parent_dir, temp_path, write_atomic};
use serde_json::{Map, Value, json};

use rampart_playbook::modules::files as schema;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_bool, arg_str, failed, ok};

/// Size of the chunks files are read in when hashing or comparing them.
const CHUNK: usize = 64 * 1024;

/// `file`: manages a path's kind (file, directory, symlink, absent) and mode.
pub static FILE: ModuleSpec = ModuleSpec {
    schema: &schema::FILE,
    run: run_file,
};

/// `copy`: writes `content` or the `src` file to `dest`, atomically.
pub static COPY: ModuleSpec = ModuleSpec {
    schema: &schema::COPY,
    run: run_copy,
};

/// `template`: renders the Jinja2 file `src` with the task's variables and writes it to `dest`.
pub static TEMPLATE: ModuleSpec = ModuleSpec {
    schema: &schema::TEMPLATE,
    run: run_template,
};

/// `stat`: reports a path's metadata; never changes anything.
pub static STAT: ModuleSpec = ModuleSpec {
    schema: &schema::STAT,
    run: run_stat,
};

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Whether the regular file at `path` holds exactly `bytes` (compared in 64 KiB chunks).
fn same_content(path: &Path, bytes: &[u8]) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() != bytes.len() as u64 {
        return false;
    }
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0usize;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return offset == bytes.len(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        if offset + n > bytes.len() || buf[..n] != bytes[offset..offset + n] {
            return false;
        }
        offset += n;
    }
}

/// Expands a leading `~` or `~/` to `$HOME`, as Ansible does for path arguments.
pub(crate) fn expand_user(p: &str) -> PathBuf {
    if let Some(home) = std::env::var_os("HOME") {
        if p == "~" {
            return PathBuf::from(home);
        }
        if let Some(rest) = p.strip_prefix("~/") {
            return PathBuf::from(home).join(rest);
        }
    }
    PathBuf::from(p)
}

/// Ansible's `get_state`: absent, link, directory, hard (a file with several links) or file.
fn get_state(path: &Path) -> &'static str {
    match fs::symlink_metadata(path) {
        Err(_) => "absent",
        Ok(m) if m.file_type().is_symlink() => "link",
        Ok(m) if m.is_dir() => "directory",
        Ok(m) if m.nlink() > 1 => "hard",
        Ok(_) => "file",
    }
}

/// The path a symlink finally points at (like Python's `os.path.realpath`, which also resolves
/// dangling links as far as they go).
fn resolve_link(path: &Path) -> PathBuf {
    if let Ok(p) = fs::canonicalize(path) {
        return p;
    }
    let mut cur = path.to_path_buf();
    for _ in 0..40 {
        match fs::read_link(&cur) {
            Ok(target) => cur = parent_dir(&cur).join(target),
            Err(_) => break,
        }
    }
    match cur.file_name() {
        Some(name) => fs::canonicalize(parent_dir(&cur))
            .map(|p| p.join(name))
            .unwrap_or(cur.clone()),
        None => cur,
    }
}

/// The text of an OS error without Rust's "(os error N)" suffix, as Python shows it.
pub(crate) fn os_msg(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// Ansible's `add_path_info`: when `path` exists, adds uid, gid, owner, group, mode, state, size.
pub(crate) fn add_path_info(r: &mut ModuleResult, path: &Path) {
    if fs::metadata(path).is_err() {
        return;
    }
    let Ok(lmeta) = fs::symlink_metadata(path) else {
        return;
    };
    r.insert("uid".into(), json!(lmeta.uid()));
    r.insert("gid".into(), json!(lmeta.gid()));
    r.insert("owner".into(), json!(user_name(lmeta.uid())));
    r.insert("group".into(), json!(group_name(lmeta.gid())));
    r.insert(
        "mode".into(),
        json!(format!("0{:03o}", lmeta.mode() & 0o7777)),
    );
    let state = match get_state(path) {
        "link" => "link",
        "directory" => "directory",
        _ if fs::metadata(path).is_ok_and(|m| m.nlink() > 1) => "hard",
        _ => "file",
    };
    r.insert("state".into(), json!(state));
    r.insert("size".into(), json!(lmeta.len()));
}

pub(crate) fn path_json(p: &Path) -> Value {
    json!(p.to_string_lossy())
}

fn with(mut r: ModuleResult, key: &str, v: Value) -> ModuleResult {
    r.insert(key.into(), v);
    r
}

// ---------------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------------

/// A `mode` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Numeric permission bits (`"0644"`, `"644"`, or YAML's octal integer 420).
    Octal(u32),
    /// chmod's symbolic form (`u=rw,g=r,o=r`, `a+x`), applied to the current mode.
    Symbolic(String),
    /// `preserve` (copy, template): the source file's mode.
    Preserve,
}

impl Mode {
    /// The mode bits to set on a path whose mode is now `current`.
    pub fn resolve(&self, current: u32, is_dir: bool) -> Result<u32, String> {
        match self {
            Mode::Octal(m) => Ok(*m),
            Mode::Symbolic(s) => apply_symbolic(s, current & 0o7777, is_dir),
            Mode::Preserve => Err("mode=preserve is only valid with a source file".into()),
        }
    }
}

/// Parses a `mode` argument: an integer is the numeric mode (YAML 1.1 reads `0644` as 420); text
/// is octal digits, `preserve`, or a symbolic mode.
pub fn parse_mode(v: &Value) -> Result<Mode, String> {
    let bad = || format!("mode must be in octal or symbolic form, not {v}");
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(m) if m <= 0o7777 => Ok(Mode::Octal(m as u32)),
            _ => Err(bad()),
        },
        Value::String(s) => {
            let t = s.trim();
            if t == "preserve" {
                return Ok(Mode::Preserve);
            }
            let digits = t.strip_prefix("0o").unwrap_or(t);
            if !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return match u32::from_str_radix(digits, 8) {
                    Ok(m) if m <= 0o7777 => Ok(Mode::Octal(m)),
                    _ => Err(bad()),
                };
            }
            // Validate the symbolic form now so errors come before anything changes.
            apply_symbolic(t, 0, false).map_err(|_| bad())?;
            Ok(Mode::Symbolic(t.to_string()))
        }
        _ => Err(bad()),
    }
}

/// The `mode` argument, if given.
pub(crate) fn opt_mode(args: &Map<String, Value>) -> Result<Option<Mode>, String> {
    match args.get("mode") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_mode(v).map(Some),
    }
}

/// Applies a symbolic mode (`u+x,go-w`, `a=r`, `g=u`) to `current`.
fn apply_symbolic(spec: &str, current: u32, is_dir: bool) -> Result<u32, String> {
    const USERS: [(char, u32, u32); 3] = [('u', 6, 0o4000), ('g', 3, 0o2000), ('o', 0, 0o1000)];
    let bad = || format!("bad symbolic permission for mode: {spec}");
    let mut mode = current;
    for clause in spec.split(',') {
        let who_end = clause.find(|c: char| !"ugoa".contains(c)).ok_or_else(bad)?;
        let who = &clause[..who_end];
        let mut rest = &clause[who_end..];
        let users: Vec<&(char, u32, u32)> = USERS
            .iter()
            .filter(|(c, _, _)| who.is_empty() || who.contains('a') || who.contains(*c))
            .collect();
        if rest.is_empty() {
            return Err(bad());
        }
        while let Some(op) = rest.chars().next() {
            if !"+-=".contains(op) {
                return Err(bad());
            }
            rest = &rest[1..];
            let end = rest.find(['+', '-', '=']).unwrap_or(rest.len());
            let perms = &rest[..end];
            rest = &rest[end..];
            for &&(user, shift, special) in &users {
                let bits = if perms.len() == 1 && "ugo".contains(perms) {
                    // Copy another class's rwx bits.
                    let from = USERS
                        .iter()
                        .find(|(c, _, _)| perms.starts_with(*c))
                        .map_or(0, |u| u.1);
                    ((mode >> from) & 0o7) << shift
                } else {
                    let mut b = 0;
                    for p in perms.chars() {
                        b |= match p {
                            'r' => 0o4 << shift,
                            'w' => 0o2 << shift,
                            'x' => 0o1 << shift,
                            'X' if is_dir || mode & 0o111 != 0 => 0o1 << shift,
                            'X' => 0,
                            's' if user != 'o' => special,
                            't' if user == 'o' => special,
                            's' | 't' => 0,
                            _ => return Err(bad()),
                        };
                    }
                    b
                };
                let class = (0o7 << shift) | special;
                mode = match op {
                    '+' => mode | bits,
                    '-' => mode & !bits,
                    _ => (mode & !class) | bits,
                };
            }
        }
    }
    Ok(mode)
}

/// Sets `path`'s mode (following symlinks) when it differs; returns whether it differed.
pub(crate) fn ensure_mode(path: &Path, mode: &Mode, check: bool) -> Result<bool, String> {
    let meta = fs::metadata(path)
        .map_err(|e| format!("cannot read the mode of {}: {}", path.display(), os_msg(&e)))?;
    let current = meta.mode() & 0o7777;
    let target = mode.resolve(current, meta.is_dir())?;
    if target == current {
        return Ok(false);
    }
    if !check {
        fs::set_permissions(path, Permissions::from_mode(target))
            .map_err(|e| format!("cannot set the mode of {}: {}", path.display(), os_msg(&e)))?;
    }
    Ok(true)
}

/// The `owner` and `group` arguments, resolved to ids (a name or a number; a name that does not
/// exist is an error naming it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Owner {
    /// The uid to set.
    pub uid: Option<u32>,
    /// The gid to set.
    pub gid: Option<u32>,
}

impl Owner {
    /// Whether neither is asked for.
    pub(crate) fn is_empty(&self) -> bool {
        self.uid.is_none() && self.gid.is_none()
    }
}

/// Reads `owner`/`group` from a module's arguments.
pub(crate) fn opt_owner(args: &Map<String, Value>) -> Result<Owner, String> {
    let text = |k: &str| match args.get(k) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(v) => Some(v.to_string()),
    };
    // A number is an id; a name is looked up, and one that does not exist is an error.
    let id = |key: &str,
              lookup: &dyn Fn(&str) -> Option<u32>,
              verb: &str,
              what: &str,
              idname: &str| {
        text(key)
            .map(|n| {
                n.parse::<u32>().ok().or_else(|| lookup(&n)).ok_or_else(|| {
                    format!(
                        "{verb} failed: failed to look up {what} {n}: create the {what} first (the {what} module) or give a {idname}"
                    )
                })
            })
            .transpose()
    };
    let uid = id(
        "owner",
        &|n| User::from_name(n).ok().flatten().map(|u| u.uid.as_raw()),
        "chown",
        "user",
        "uid",
    )?;
    let gid = id(
        "group",
        &|n| Group::from_name(n).ok().flatten().map(|g| g.gid.as_raw()),
        "chgrp",
        "group",
        "gid",
    )?;
    Ok(Owner { uid, gid })
}

/// Before/after of what a task changed on a path, as Ansible's file module reports it in
/// `diff` (`path`, and `state`, `mode`, `owner`, `group` where they changed; owners as ids).
#[derive(Debug, Default)]
pub(crate) struct FileDiff {
    before: Map<String, Value>,
    after: Map<String, Value>,
}

impl FileDiff {
    /// A diff of `path`, with its state when it changes from `prev` to `state`.
    pub(crate) fn new(path: &Path, state: &str, prev: &str) -> FileDiff {
        let mut d = FileDiff::default();
        d.before.insert("path".into(), path_json(path));
        d.after.insert("path".into(), path_json(path));
        if prev != state {
            d.before.insert("state".into(), json!(prev));
            d.after.insert("state".into(), json!(state));
        }
        d
    }

    fn set(&mut self, key: &str, before: Value, after: Value) {
        self.before.insert(key.into(), before);
        self.after.insert(key.into(), after);
    }

    /// The `diff` result value.
    pub(crate) fn to_json(&self) -> Value {
        json!({"before": self.before, "after": self.after})
    }
}

/// Sets `path`'s mode, owner and group where they differ (following a symlink when `follow`;
/// a symlink itself gets only its owner and group); returns whether anything differed, and notes
/// each difference in `diff`.
pub(crate) fn ensure_attrs(
    path: &Path,
    mode: Option<&Mode>,
    owner: Owner,
    follow: bool,
    check: bool,
    diff: &mut FileDiff,
) -> Result<bool, String> {
    let read = |p: &Path| {
        if follow {
            fs::metadata(p)
        } else {
            fs::symlink_metadata(p)
        }
    };
    let meta = read(path).map_err(|e| format!("cannot read {}: {}", path.display(), os_msg(&e)))?;
    let mut changed = false;
    let uid = owner.uid.filter(|u| *u != meta.uid());
    let gid = owner.gid.filter(|g| *g != meta.gid());
    if uid.is_some() || gid.is_some() {
        if let Some(u) = uid {
            diff.set("owner", json!(meta.uid()), json!(u));
        }
        if let Some(g) = gid {
            diff.set("group", json!(meta.gid()), json!(g));
        }
        if !check {
            let done = if follow {
                std::os::unix::fs::chown(path, uid, gid)
            } else {
                std::os::unix::fs::lchown(path, uid, gid)
            };
            done.map_err(|e| format!("chown failed on {}: {}", path.display(), os_msg(&e)))?;
        }
        changed = true;
    }
    if let Some(m) = mode
        && !meta.file_type().is_symlink()
    {
        let current = meta.mode() & 0o7777;
        let target = m.resolve(current, meta.is_dir())?;
        if target != current {
            diff.set(
                "mode",
                json!(format!("0{current:03o}")),
                json!(format!("0{target:03o}")),
            );
            if !check {
                fs::set_permissions(path, Permissions::from_mode(target)).map_err(|e| {
                    format!("cannot set the mode of {}: {}", path.display(), os_msg(&e))
                })?;
            }
            changed = true;
        }
    }
    Ok(changed)
}

/// The most entries `recurse: true` visits (bounded, so a runaway tree fails instead of hanging).
const MAX_RECURSE_ENTRIES: usize = 1_000_000;

/// `recurse: true`: [`ensure_attrs`] on everything below `root` (not `root` itself). Symlinks
/// found on the way get their own owner and group and are not followed.
fn ensure_attrs_below(
    root: &Path,
    mode: Option<&Mode>,
    owner: Owner,
    check: bool,
) -> Result<bool, String> {
    let mut changed = false;
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0usize;
    // Differences below the top are counted, not listed (Ansible's diff names only the top).
    let mut scratch = FileDiff::default();
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir)
            .map_err(|e| format!("cannot list {}: {}", dir.display(), os_msg(&e)))?;
        let mut names: Vec<PathBuf> = Vec::new();
        for e in entries {
            let e = e.map_err(|e| format!("cannot list {}: {}", dir.display(), os_msg(&e)))?;
            names.push(e.path());
        }
        names.sort();
        for p in names {
            seen += 1;
            if seen > MAX_RECURSE_ENTRIES {
                return Err(format!(
                    "{} holds more than {MAX_RECURSE_ENTRIES} entries; recurse over smaller trees",
                    root.display()
                ));
            }
            let meta = fs::symlink_metadata(&p)
                .map_err(|e| format!("cannot read {}: {}", p.display(), os_msg(&e)))?;
            let is_link = meta.file_type().is_symlink();
            changed |= ensure_attrs(&p, mode, owner, !is_link, check, &mut scratch)?;
            if meta.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(changed)
}

/// The process umask (read from /proc; 022 when unknown), for modes of files not yet created.
pub(crate) fn current_umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

// ---------------------------------------------------------------------------------------------
// file
// ---------------------------------------------------------------------------------------------

fn run_file(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let path = expand_user(arg_str(args, "path").unwrap_or_default());
    let fail = |msg: String| with(failed(msg), "path", path_json(&path));
    let mode = match opt_mode(args) {
        Ok(Some(Mode::Preserve)) => {
            return fail("mode=preserve is only valid for copy and template".into());
        }
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let owner = match opt_owner(args) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let want = Want {
        mode: mode.as_ref(),
        owner,
    };
    let src = arg_str(args, "src");
    let force = arg_bool(args, "force").unwrap_or(false);
    let recurse = arg_bool(args, "recurse").unwrap_or(false);
    // As Ansible: without `state`, the path's current kind, or `directory` (with recurse) or
    // `file` when it is absent.
    let state = match arg_str(args, "state") {
        Some(s) => s,
        None => match get_state(&path) {
            "absent" if recurse => "directory",
            "absent" | "hard" => "file",
            other => other,
        },
    };
    if recurse && state != "directory" {
        return fail("recurse option requires state to be 'directory'".into());
    }
    if src.is_some() && state != "link" && state != "hard" {
        return fail("src option requires state to be 'link' or 'hard'".into());
    }
    match state {
        "absent" => file_absent(&path, ctx.check),
        "directory" => file_directory(&path, &want, recurse, ctx.check),
        "touch" => file_touch(&path, &want, ctx.check),
        "link" => file_link(&path, src, &want, force, ctx.check),
        "hard" => file_hard(&path, src, &want, force, ctx.check),
        _ => file_attributes(&path, &want, ctx.check),
    }
}

/// The attributes a `file` task asks for.
#[derive(Debug)]
struct Want<'a> {
    mode: Option<&'a Mode>,
    owner: Owner,
}

impl Want<'_> {
    /// [`ensure_attrs`] following symlinks.
    fn apply(&self, path: &Path, check: bool, diff: &mut FileDiff) -> Result<bool, String> {
        if self.mode.is_none() && self.owner.is_empty() {
            return Ok(false);
        }
        ensure_attrs(path, self.mode, self.owner, true, check, diff)
    }
}

/// Finishes a `file` result: `changed`, `path` (or `dest`), `diff` and the path's information.
fn file_result(key: &str, path: &Path, changed: bool, diff: &FileDiff) -> ModuleResult {
    let mut r = with(ok(changed), key, path_json(path));
    r.insert("diff".into(), diff.to_json());
    add_path_info(&mut r, path);
    r
}

/// `state: file`: the path must exist as a file; sets its mode, owner and group.
fn file_attributes(path: &Path, want: &Want<'_>, check: bool) -> ModuleResult {
    let mut path = path.to_path_buf();
    let mut prev = get_state(&path);
    if prev == "link" {
        path = resolve_link(&path);
        prev = get_state(&path);
    }
    if prev != "file" && prev != "hard" {
        let r = failed(format!(
            "file ({}) is {prev}, cannot continue",
            path.display()
        ));
        return with(with(r, "path", path_json(&path)), "state", json!(prev));
    }
    let mut diff = FileDiff::new(&path, "file", prev);
    match want.apply(&path, check, &mut diff) {
        Ok(changed) => file_result("path", &path, changed, &diff),
        Err(e) => with(failed(e), "path", path_json(&path)),
    }
}

/// `state: directory`: `mkdir -p`, the mode, owner and group applied to each directory created;
/// with `recurse`, to everything below too.
fn file_directory(path: &Path, want: &Want<'_>, recurse: bool, check: bool) -> ModuleResult {
    let mut path = path.to_path_buf();
    let mut prev = get_state(&path);
    if prev == "link" {
        path = resolve_link(&path);
        prev = get_state(&path);
    }
    let mut diff = FileDiff::new(&path, "directory", prev);
    let fail = |e: String, path: &Path| with(failed(e), "path", path_json(path));
    let mut changed = match prev {
        "absent" => {
            if check {
                let mut r = with(ok(true), "path", path_json(&path));
                r.insert("diff".into(), diff.to_json());
                return r;
            }
            let mut created = false;
            let mut cur = PathBuf::new();
            for comp in path.components() {
                cur.push(comp);
                if fs::metadata(&cur).is_ok() {
                    continue;
                }
                let made = match fs::create_dir(&cur) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && cur.is_dir() => Ok(()),
                    Err(e) => Err(os_msg(&e)),
                };
                let made = made.and_then(|()| {
                    want.apply(&cur, false, &mut FileDiff::default())
                        .map(|_| ())
                });
                if let Err(e) = made {
                    let msg = format!(
                        "There was an issue creating {} as requested: {e}",
                        cur.display()
                    );
                    return fail(msg, &path);
                }
                created = true;
            }
            created
        }
        "directory" => match want.apply(&path, check, &mut diff) {
            Ok(c) => c,
            Err(e) => return fail(e, &path),
        },
        other => {
            return fail(
                format!("{} already exists as a {other}", path.display()),
                &path,
            );
        }
    };
    if recurse && (want.mode.is_some() || !want.owner.is_empty()) {
        match ensure_attrs_below(&path, want.mode, want.owner, check) {
            Ok(c) => changed |= c,
            Err(e) => return fail(e, &path),
        }
    }
    file_result("path", &path, changed, &diff)
}

/// `state: absent`: removes a file, symlink or directory tree.
fn file_absent(path: &Path, check: bool) -> ModuleResult {
    let prev = get_state(path);
    let changed = prev != "absent";
    if changed && !check {
        if prev == "directory" {
            if let Err(e) = fs::remove_dir_all(path) {
                return with(
                    failed(format!("rmtree failed: {e}")),
                    "path",
                    path_json(path),
                );
            }
        } else if let Err(e) = fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            return with(
                failed(format!("unlinking failed: {e}")),
                "path",
                path_json(path),
            );
        }
    }
    let mut r = file_result("path", path, changed, &FileDiff::new(path, "absent", prev));
    r.insert("state".into(), json!("absent"));
    r
}

/// `state: touch`: creates an empty file or updates the times of an existing path; always
/// changed, as in Ansible.
fn file_touch(path: &Path, want: &Want<'_>, check: bool) -> ModuleResult {
    let prev = get_state(path);
    let mut diff = FileDiff::new(path, "touch", prev);
    let base = |r: ModuleResult| with(with(r, "dest", path_json(path)), "path", path_json(path));
    if prev == "absent" {
        if check {
            return base(ok(true));
        }
        if let Err(e) = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o666)
            .open(path)
        {
            return base(failed(format!(
                "Error, could not touch target: {}",
                os_msg(&e)
            )));
        }
    }
    if let Err(e) = want.apply(path, check, &mut diff) {
        if prev == "absent" {
            let _ = fs::remove_file(path);
        }
        return base(failed(e));
    }
    if !check {
        let now = nix::sys::time::TimeSpec::UTIME_NOW;
        if let Err(e) = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &now,
            &now,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        ) {
            return base(failed(format!(
                "Error while updating modification or access time: {}",
                e.desc()
            )));
        }
    }
    let mut r = base(file_result("path", path, true, &diff));
    r.insert("dest".into(), path_json(path));
    r
}

/// `state: link`: makes `path` a symlink to `src`, replacing a different symlink; replaces a
/// file or an empty directory only with `force`.
fn file_link(
    path: &Path,
    src: Option<&str>,
    want: &Want<'_>,
    force: bool,
    check: bool,
) -> ModuleResult {
    let prev = get_state(path);
    let mut diff = FileDiff::new(path, "link", prev);
    let fail = |msg: String| with(failed(msg), "path", path_json(path));
    let Some(src) = src.map(PathBuf::from) else {
        if prev == "link" {
            // No src: keep the link as it is.
            let mut r = with(ok(false), "path", path_json(path));
            if let Ok(t) = fs::read_link(path) {
                r.insert("src".into(), path_json(&t));
            }
            add_path_info(&mut r, path);
            return r;
        }
        return fail("src is required for creating new symlinks".into());
    };
    let absrc = parent_dir(path).join(&src);
    if !force && fs::metadata(&absrc).is_err() {
        let r = fail(format!(
            "src file does not exist, use 'force=yes' if you really want to create the link: {}",
            absrc.display()
        ));
        return with(r, "src", path_json(&src));
    }
    match prev {
        "directory" if !force => {
            return fail(format!(
                "refusing to convert from directory to symlink for {}",
                path.display()
            ));
        }
        "directory"
            if fs::read_dir(path)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true) =>
        {
            return fail(format!(
                "the directory {} is not empty, refusing to convert it",
                path.display()
            ));
        }
        "file" | "hard" if !force => {
            return fail(format!(
                "refusing to convert from {prev} to symlink for {}",
                path.display()
            ));
        }
        _ => {}
    }
    let mut changed = match prev {
        "link" => match fs::read_link(path) {
            Ok(t) if t == src => false,
            Ok(t) => {
                diff.set("src", path_json(&t), path_json(&src));
                true
            }
            Err(_) => true,
        },
        _ => true,
    };
    if changed && !check {
        if prev == "absent" {
            if let Err(e) = symlink(&src, path) {
                return fail(format!("Error while linking: {}", os_msg(&e)));
            }
        } else if let Err(e) = replace_with_symlink(path, &src, prev == "directory") {
            return fail(format!("Error while replacing: {}", os_msg(&e)));
        }
    }
    // As Ansible (follow=yes), a mode, owner or group applies to the link's target, when it
    // exists.
    if !(check && changed) && fs::metadata(path).is_ok() {
        match want.apply(path, check, &mut diff) {
            Ok(c) => changed |= c,
            Err(e) => return fail(e),
        }
    }
    let mut r = file_result("path", path, changed, &diff);
    r.insert("src".into(), path_json(&src));
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        // add_path_info skips dangling links; a link is what was asked for.
        r.insert("state".into(), json!("link"));
    }
    r
}

/// `state: hard`: makes `path` a hard link to `src` (relative to `path`'s directory, as for
/// symlinks), replacing a symlink; replaces a file or another hard link only with `force`.
fn file_hard(
    path: &Path,
    src: Option<&str>,
    want: &Want<'_>,
    force: bool,
    check: bool,
) -> ModuleResult {
    let prev = get_state(path);
    let mut diff = FileDiff::new(path, "hard", prev);
    let fail = |msg: String, src: Option<&Path>| {
        let mut r = with(failed(msg), "dest", path_json(path));
        if let Some(s) = src {
            r.insert("src".into(), path_json(s));
        }
        r
    };
    let Some(src) = src.map(PathBuf::from) else {
        if prev == "hard" {
            return match want.apply(path, check, &mut diff) {
                Ok(c) => file_result("dest", path, c, &diff),
                Err(e) => fail(e, None),
            };
        }
        return fail("src is required for creating new hardlinks".into(), None);
    };
    let absrc = parent_dir(path).join(&src);
    let Ok(src_meta) = fs::metadata(&absrc) else {
        return fail("src does not exist".into(), Some(&src));
    };
    if src_meta.is_dir() {
        return fail(
            format!(
                "src {} is a directory: a hard link needs a file",
                absrc.display()
            ),
            Some(&src),
        );
    }
    let same_inode = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.ino() == src_meta.ino() && m.dev() == src_meta.dev())
    };
    let changed = match prev {
        "absent" => true,
        "link" => {
            if let Ok(t) = fs::read_link(path) {
                diff.set("src", path_json(&t), path_json(&src));
            }
            true
        }
        "hard" | "file" if same_inode(path) => false,
        "hard" | "file" if !force => {
            let what = if prev == "hard" {
                "different hard link"
            } else {
                "file"
            };
            return fail(
                format!("Cannot link, {what} exists at destination; force=yes replaces it"),
                Some(&src),
            );
        }
        "directory" => {
            return fail(
                format!(
                    "Cannot link: {} is a directory; remove it first (state=absent)",
                    path.display()
                ),
                Some(&src),
            );
        }
        _ => true,
    };
    if changed && !check {
        let linked = if prev == "absent" {
            fs::hard_link(&absrc, path)
        } else {
            let name = path.file_name().unwrap_or(path.as_os_str());
            let tmp = temp_path(&parent_dir(path), name);
            fs::hard_link(&absrc, &tmp).and_then(|()| {
                fs::rename(&tmp, path).inspect_err(|_| {
                    let _ = fs::remove_file(&tmp);
                })
            })
        };
        if let Err(e) = linked {
            let verb = if prev == "absent" {
                "linking"
            } else {
                "replacing"
            };
            return fail(format!("Error while {verb}: {}", os_msg(&e)), Some(&src));
        }
    }
    if check && changed {
        let mut r = with(ok(true), "dest", path_json(path));
        r.insert("src".into(), path_json(&src));
        r.insert("diff".into(), diff.to_json());
        return r;
    }
    match want.apply(path, check, &mut diff) {
        Ok(c) => {
            let mut r = file_result("dest", path, changed || c, &diff);
            r.insert("src".into(), path_json(&src));
            r
        }
        Err(e) => fail(e, Some(&src)),
    }
}

/// Replaces `path` by a symlink to `src` atomically (a temporary link renamed over it).
fn replace_with_symlink(path: &Path, src: &Path, is_dir: bool) -> io::Result<()> {
    let name = path.file_name().unwrap_or(path.as_os_str());
    let tmp = temp_path(&parent_dir(path), name);
    if is_dir {
        fs::remove_dir(path)?;
    }
    symlink(src, &tmp)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// copy and template
// ---------------------------------------------------------------------------------------------

/// What copy and template write.
#[derive(Debug)]
struct Install<'a> {
    /// The `dest` argument as given.
    dest: &'a str,
    /// The content.
    bytes: &'a [u8],
    /// The `mode` argument.
    mode: Option<Mode>,
    /// When false, an existing `dest` is left alone.
    force: bool,
    /// The source file: names the file when `dest` is a directory, gives `mode: preserve`.
    src: Option<&'a Path>,
    /// The `owner` and `group` arguments.
    owner: Owner,
    /// Check mode.
    check: bool,
}

/// The largest file whose content a `diff` carries (Ansible's limit); a larger one is noted as
/// `dst_larger` / `src_larger`.
pub(crate) const MAX_DIFF_BYTES: usize = 104_448;

/// A content `diff` as Ansible's copy and template return it: `before`/`after` text with their
/// headers, or the reason the text is left out (too large, binary).
pub(crate) fn content_diff(
    before: Option<&[u8]>,
    after: &[u8],
    before_header: &str,
    after_header: &str,
) -> Value {
    let mut d = Map::new();
    d.insert("before_header".into(), json!(before_header));
    d.insert("after_header".into(), json!(after_header));
    let mut side = |key: &str, bytes: &[u8]| {
        if bytes.len() > MAX_DIFF_BYTES {
            let k = if key == "before" {
                "dst_larger"
            } else {
                "src_larger"
            };
            d.insert(k.into(), json!(MAX_DIFF_BYTES));
        } else if bytes.contains(&0) || std::str::from_utf8(bytes).is_err() {
            let k = if key == "before" {
                "dst_binary"
            } else {
                "src_binary"
            };
            d.insert(k.into(), json!(1));
        } else {
            d.insert(key.into(), json!(String::from_utf8_lossy(bytes)));
        }
    };
    side("before", before.unwrap_or_default());
    side("after", after);
    Value::Object(d)
}

/// Reads at most [`MAX_DIFF_BYTES`] + 1 bytes of `path` (enough to tell it is too large).
pub(crate) fn read_for_diff(path: &Path) -> Option<Vec<u8>> {
    let f = File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_DIFF_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

/// Writes `req.bytes` to its destination as Ansible's copy module does.
fn install(req: &Install<'_>) -> ModuleResult {
    let mut dest = expand_user(req.dest);
    let trailing_slash = req.dest.ends_with('/');
    let src_json = req.src.map(path_json);
    let fail = |msg: String, dest: &Path| {
        let mut r = with(failed(msg), "dest", path_json(dest));
        if let Some(s) = &src_json {
            r.insert("src".into(), s.clone());
        }
        r
    };
    if trailing_slash || dest.is_dir() {
        match req.src.and_then(Path::file_name) {
            Some(name) => dest = dest.join(name),
            None => return fail("can not use content with a dir as dest".into(), &dest),
        }
    }
    let dir = parent_dir(&dest);
    if fs::metadata(&dir).is_err() {
        if !trailing_slash {
            return fail(
                format!("Destination directory {} does not exist", dir.display()),
                &dest,
            );
        }
        if req.check {
            let mut r = ok(true);
            r.insert(
                "msg".into(),
                json!(format!("dest directory {} would be created", dir.display())),
            );
            if let Some(s) = &src_json {
                r.insert("src".into(), s.clone());
            }
            return r;
        }
        if let Err(e) = fs::create_dir_all(&dir) {
            return fail(
                format!("cannot create {}: {}", dir.display(), os_msg(&e)),
                &dest,
            );
        }
    }
    if fs::metadata(&dest).is_ok_and(|m| m.is_dir()) {
        return fail(
            format!("destination {} is a directory", dest.display()),
            &dest,
        );
    }
    let exists = fs::symlink_metadata(&dest).is_ok();
    if exists && !req.force {
        let mut r = with(ok(false), "dest", path_json(&dest));
        r.insert("msg".into(), json!("file already exists"));
        if let Some(s) = &src_json {
            r.insert("src".into(), s.clone());
        }
        return r;
    }
    let dest_meta = fs::metadata(&dest).ok();
    let current = dest_meta.as_ref().map(|m| m.mode() & 0o7777);
    let mode = match &req.mode {
        None => None,
        Some(Mode::Preserve) => match req.src.map(fs::metadata) {
            Some(Ok(m)) => Some(m.mode() & 0o7777),
            Some(Err(e)) => return fail(format!("cannot read the mode of the source: {e}"), &dest),
            None => return fail("mode=preserve is only valid with src".into(), &dest),
        },
        Some(m) => match m.resolve(current.unwrap_or(0o666 & !current_umask()), false) {
            Ok(m) => Some(m),
            Err(e) => return fail(e, &dest),
        },
    };
    let same = same_content(&dest, req.bytes);
    let mode_differs = matches!((mode, current), (Some(want), Some(have)) if want != have);
    let ids = dest_meta.as_ref().map(|m| (m.uid(), m.gid()));
    let owner_differs = match ids {
        Some((uid, gid)) => {
            req.owner.uid.is_some_and(|u| u != uid) || req.owner.gid.is_some_and(|g| g != gid)
        }
        None => !req.owner.is_empty(),
    };
    let changed = !same || mode_differs || owner_differs;
    let diff = (!same).then(|| {
        let before = read_for_diff(&dest);
        let after_header = req.src.map_or_else(
            || "dynamically generated".to_string(),
            |s| s.display().to_string(),
        );
        content_diff(
            before.as_deref(),
            req.bytes,
            &dest.display().to_string(),
            &after_header,
        )
    });
    if changed && !req.check {
        let written = if same {
            match mode {
                Some(m) if mode_differs => fs::set_permissions(&dest, Permissions::from_mode(m)),
                _ => Ok(()),
            }
        } else {
            write_atomic(&dest, req.bytes, mode)
        };
        let written = written.and_then(|()| {
            if req.owner.is_empty() {
                Ok(())
            } else {
                std::os::unix::fs::chown(&dest, req.owner.uid, req.owner.gid)
            }
        });
        if let Err(e) = written {
            return fail(
                format!("failed to write {}: {}", dest.display(), os_msg(&e)),
                &dest,
            );
        }
    }
    let mut r = with(ok(changed), "dest", path_json(&dest));
    if let Some(d) = diff {
        r.insert("diff".into(), d);
    }
    if let Some(s) = src_json {
        r.insert("src".into(), s);
    }
    r.insert("checksum".into(), json!(sha256_hex(req.bytes)));
    r.insert("checksum_algorithm".into(), json!("sha256"));
    if let Some(m) = mode {
        r.insert("mode".into(), json!(format!("0{m:03o}")));
    }
    add_path_info(&mut r, &dest);
    // The size of what was (or would be) written, not of what is there in check mode.
    r.insert("size".into(), json!(req.bytes.len()));
    r
}

/// Finds a relative `src` in the playbook's directory, then in its `sub` directory (`files`,
/// `templates`); an absolute one must exist.
pub(crate) fn find_source(src: &str, base: Option<&Path>, sub: &str) -> Result<PathBuf, String> {
    let p = expand_user(src);
    if p.is_absolute() {
        return if fs::metadata(&p).is_ok() {
            Ok(p)
        } else {
            Err(format!("could not find or access '{src}'"))
        };
    }
    let base = base.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let candidates = [base.join(&p), base.join(sub).join(&p)];
    for c in &candidates {
        if fs::metadata(c).is_ok() {
            return Ok(c.clone());
        }
    }
    Err(format!(
        "could not find or access '{src}' (searched {} and {})",
        candidates[0].display(),
        candidates[1].display()
    ))
}

fn run_copy(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let dest = arg_str(args, "dest").unwrap_or_default();
    let mode = match opt_mode(args) {
        Ok(m) => m,
        Err(e) => return failed(e),
    };
    let owner = match opt_owner(args) {
        Ok(o) => o,
        Err(e) => return failed(e),
    };
    let force = arg_bool(args, "force").unwrap_or(true);
    let (bytes, src) = match (args.get("content"), arg_str(args, "src")) {
        (Some(c), None) => {
            if dest.ends_with('/') {
                return failed("can not use content with a dir as dest");
            }
            (content_bytes(c), None)
        }
        (None, Some(src)) => {
            let path = match find_source(src, ctx.base_dir.as_deref(), "files") {
                Ok(p) => p,
                Err(e) => return failed(e),
            };
            if path.is_dir() {
                return failed(format!(
                    "src {} is a directory; copying directories is not supported",
                    path.display()
                ));
            }
            match fs::read(&path) {
                Ok(b) => (b, Some(path)),
                Err(e) => {
                    return failed(format!(
                        "Source {} not readable: {}",
                        path.display(),
                        os_msg(&e)
                    ));
                }
            }
        }
        (Some(_), Some(_)) => return failed("src and content are mutually exclusive"),
        (None, None) => return failed("src (or content) is required"),
    };
    install(&Install {
        dest,
        bytes: &bytes,
        mode,
        force,
        src: src.as_deref(),
        owner,
        check: ctx.check,
    })
}

/// `content` as bytes: text as is, a mapping or list as JSON (as Ansible's `json.dumps`).
pub(crate) fn content_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.clone().into_bytes(),
        Value::Null => Vec::new(),
        Value::Bool(b) => if *b { "True" } else { "False" }.as_bytes().to_vec(),
        Value::Number(n) => n.to_string().into_bytes(),
        Value::Array(_) | Value::Object(_) => {
            let mut out = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PyJson);
            match serde::Serialize::serialize(v, &mut ser) {
                Ok(()) => out,
                Err(_) => v.to_string().into_bytes(),
            }
        }
    }
}

/// Python's `json.dumps` layout: `", "` and `": "` separators, non-ASCII as `\uXXXX`.
#[derive(Debug, Clone, Copy)]
struct PyJson;

impl serde_json::ser::Formatter for PyJson {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + Write>(&mut self, w: &mut W, s: &str) -> io::Result<()> {
        for c in s.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
            }
        }
        Ok(())
    }
}

fn run_template(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let src = arg_str(args, "src").unwrap_or_default();
    let dest = arg_str(args, "dest").unwrap_or_default();
    let mode = match opt_mode(args) {
        Ok(m) => m,
        Err(e) => return failed(e),
    };
    let owner = match opt_owner(args) {
        Ok(o) => o,
        Err(e) => return failed(e),
    };
    let force = arg_bool(args, "force").unwrap_or(true);
    let path = match find_source(src, ctx.base_dir.as_deref(), "templates") {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let text = match fs::read(&path) {
        Ok(b) => match String::from_utf8(b) {
            Ok(t) => t,
            Err(_) => return failed(format!("template {} is not valid UTF-8", path.display())),
        },
        Err(e) => {
            return failed(format!(
                "cannot read template {}: {}",
                path.display(),
                os_msg(&e)
            ));
        }
    };
    let vars = template_vars(&path, dest);
    // Ansible's template variables win over the task's, except `ansible_managed`, which a
    // playbook may set (Ansible takes it from its configuration).
    let managed = minijinja::context! { ansible_managed => "Ansible managed" };
    let scope = minijinja::context! { ..vars, ..ctx.scope.clone(), ..managed };
    // The leading comment keeps a file that is one `{{ expression }}` from being evaluated to
    // a native value (which would drop the text around it, such as the final newline).
    let source = format!("{{# rampart #}}{}", trim_blocks(&text));
    let rendered = match ctx.templar.render_str(&source, &scope) {
        Ok(Value::String(s)) => s,
        Ok(other) => serde_json::to_string(&other).unwrap_or_default(),
        Err(e) => {
            return failed(format!("failed to render template {}: {e}", path.display()));
        }
    };
    install(&Install {
        dest,
        bytes: rendered.as_bytes(),
        mode,
        force,
        src: Some(&path),
        owner,
        check: ctx.check,
    })
}

/// The variables Ansible's template module adds (`template_path`, `template_host`, ...).
fn template_vars(src: &Path, dest: &str) -> MjValue {
    let full = fs::canonicalize(src).unwrap_or_else(|_| src.to_path_buf());
    let meta = fs::metadata(src).ok();
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let py_time =
        |t: chrono::DateTime<chrono::Local>| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let mtime = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .map(|t| py_time(chrono::DateTime::<chrono::Local>::from(t)))
        .unwrap_or_default();
    minijinja::context! {
        template_host => host,
        template_path => src.to_string_lossy().to_string(),
        template_fullpath => full.to_string_lossy().to_string(),
        template_destpath => dest,
        template_uid => meta.as_ref().map(|m| user_name(m.uid())).unwrap_or_default(),
        template_mtime => mtime,
        template_run_date => py_time(chrono::Local::now()),
    }
}

/// Emulates Jinja2's `trim_blocks` (on in Ansible's template module): removes the newline right
/// after each `{% block %}` tag and `{# comment #}`, leaving `{% raw %}` content alone.
pub(crate) fn trim_blocks(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut last = 0;
    let mut i = 0;
    // Every delimiter is ASCII, so slicing at their positions is on char boundaries.
    while i + 1 < b.len() {
        if b[i] != b'{' || !matches!(b[i + 1], b'%' | b'#' | b'{') {
            i += 1;
            continue;
        }
        let kind = b[i + 1];
        let open = i + 2;
        let Some(end) = tag_end(b, open, kind) else {
            break; // unterminated: the engine reports it
        };
        let mut after = end + 2;
        if kind != b'{' && b[end - 1] != b'+' {
            let newline = match (b.get(after), b.get(after + 1)) {
                (Some(b'\n'), _) => 1,
                (Some(b'\r'), Some(b'\n')) => 2,
                _ => 0,
            };
            if newline > 0 {
                out.push_str(&src[last..after]);
                after += newline;
                last = after;
            }
        }
        i = after;
        if kind == b'%' && tag_name(&src[open..end]) == "raw" {
            // Skip to the matching endraw tag, which is then handled as any tag.
            i = find_endraw(src, after).unwrap_or(b.len());
        }
    }
    out.push_str(&src[last..]);
    out
}

/// The keyword of a block tag's inside (`raw`, `if`, ...).
fn tag_name(inner: &str) -> &str {
    inner
        .trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace())
        .split_whitespace()
        .next()
        .unwrap_or_default()
}

/// Where the tag opened before `start` closes (the index of `%}`, `#}` or `}}`), skipping quoted
/// strings inside `{% %}` and `{{ }}`.
fn tag_end(b: &[u8], start: usize, kind: u8) -> Option<usize> {
    let closer = if kind == b'{' { b'}' } else { kind };
    let mut j = start;
    while j + 1 < b.len() {
        let c = b[j];
        if kind != b'#' && (c == b'"' || c == b'\'') {
            j += 1;
            while j < b.len() && b[j] != c {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            j += 1;
            continue;
        }
        if c == closer && b[j + 1] == b'}' {
            return Some(j);
        }
        j += 1;
    }
    None
}

/// The start of the `{% endraw %}` tag at or after `from`.
fn find_endraw(src: &str, from: usize) -> Option<usize> {
    let b = src.as_bytes();
    let mut i = from;
    while let Some(off) = src[i..].find("{%") {
        let start = i + off;
        let end = tag_end(b, start + 2, b'%')?;
        if tag_name(&src[start + 2..end]) == "endraw" {
            return Some(start);
        }
        i = end + 2;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// stat
// ---------------------------------------------------------------------------------------------

fn run_stat(args: &Map<String, Value>, _ctx: &ModuleCtx<'_>) -> ModuleResult {
    let given = arg_str(args, "path").unwrap_or_default();
    let path = expand_user(given);
    let follow = arg_bool(args, "follow").unwrap_or(false);
    let get_checksum = arg_bool(args, "get_checksum").unwrap_or(true);
    let algorithm = arg_str(args, "checksum_algorithm").unwrap_or("sha256");
    let meta = if follow {
        fs::metadata(&path)
    } else {
        fs::symlink_metadata(&path)
    };
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return with(ok(false), "stat", json!({"exists": false}));
        }
        Err(e) => return failed(os_msg(&e)),
    };
    let mode = meta.mode();
    let ft = meta.file_type();
    let bit = |b: u32| mode & b != 0;
    let time = |secs: i64, nsecs: i64| secs as f64 + nsecs as f64 / 1e9;
    let mut st = Map::new();
    st.insert("exists".into(), json!(true));
    st.insert("path".into(), json!(given));
    st.insert("mode".into(), json!(format!("{:04o}", mode & 0o7777)));
    st.insert("isdir".into(), json!(ft.is_dir()));
    st.insert("ischr".into(), json!(ft.is_char_device()));
    st.insert("isblk".into(), json!(ft.is_block_device()));
    st.insert("isreg".into(), json!(ft.is_file()));
    st.insert("isfifo".into(), json!(ft.is_fifo()));
    st.insert("islnk".into(), json!(ft.is_symlink()));
    st.insert("issock".into(), json!(ft.is_socket()));
    st.insert("uid".into(), json!(meta.uid()));
    st.insert("gid".into(), json!(meta.gid()));
    st.insert("size".into(), json!(meta.len()));
    st.insert("inode".into(), json!(meta.ino()));
    st.insert("dev".into(), json!(meta.dev()));
    st.insert("nlink".into(), json!(meta.nlink()));
    st.insert("atime".into(), json!(time(meta.atime(), meta.atime_nsec())));
    st.insert("mtime".into(), json!(time(meta.mtime(), meta.mtime_nsec())));
    st.insert("ctime".into(), json!(time(meta.ctime(), meta.ctime_nsec())));
    for (key, b) in [
        ("wusr", 0o200),
        ("rusr", 0o400),
        ("xusr", 0o100),
        ("wgrp", 0o020),
        ("rgrp", 0o040),
        ("xgrp", 0o010),
        ("woth", 0o002),
        ("roth", 0o004),
        ("xoth", 0o001),
        ("isuid", 0o4000),
        ("isgid", 0o2000),
    ] {
        st.insert(key.into(), json!(bit(b)));
    }
    st.insert("blocks".into(), json!(meta.blocks()));
    st.insert("block_size".into(), json!(meta.blksize()));
    st.insert("device_type".into(), json!(meta.rdev()));
    let access = |f: AccessFlags| nix::unistd::access(path.as_path(), f).is_ok();
    let readable = access(AccessFlags::R_OK);
    st.insert("readable".into(), json!(readable));
    st.insert("writeable".into(), json!(access(AccessFlags::W_OK)));
    st.insert("executable".into(), json!(access(AccessFlags::X_OK)));
    if ft.is_symlink() {
        st.insert("lnk_source".into(), path_json(&resolve_link(&path)));
        if let Ok(t) = fs::read_link(&path) {
            st.insert("lnk_target".into(), path_json(&t));
        }
    }
    if let Ok(Some(u)) = User::from_uid(Uid::from_raw(meta.uid())) {
        st.insert("pw_name".into(), json!(u.name));
    }
    if let Ok(Some(g)) = Group::from_gid(Gid::from_raw(meta.gid())) {
        st.insert("gr_name".into(), json!(g.name));
    }
    if ft.is_file() && readable && get_checksum {
        let sum = match algorithm {
            "sha224" => digest_file::<sha2::Sha224>(&path),
            "sha384" => digest_file::<sha2::Sha384>(&path),
            "sha512" => digest_file::<sha2::Sha512>(&path),
            _ => digest_file::<sha2::Sha256>(&path),
        };
        match sum {
            Ok(s) => {
                st.insert("checksum".into(), json!(s));
                st.insert("checksum_algorithm".into(), json!(algorithm));
            }
            Err(e) => {
                return failed(format!(
                    "cannot checksum {}: {}",
                    path.display(),
                    os_msg(&e)
                ));
            }
        }
    }
    with(ok(false), "stat", Value::Object(st))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::modules::testing::Call;

    fn run_with(spec: &ModuleSpec, args: Value, check: bool, base: Option<&Path>) -> ModuleResult {
        run_with_vars(spec, args, check, base, &[])
    }

    fn run_with_vars(
        spec: &ModuleSpec,
        args: Value,
        check: bool,
        base: Option<&Path>,
        extra: &[(&str, &str)],
    ) -> ModuleResult {
        let mut vars = json!({"name": "world", "items": [1, 2, 3]});
        for (k, v) in extra {
            vars[*k] = json!(v);
        }
        let call = Call {
            check,
            base_dir: base.map(Path::to_path_buf),
            vars: Some(vars),
            ..Call::default()
        };
        call.run(spec, args)
    }

    fn run(spec: &ModuleSpec, args: Value) -> ModuleResult {
        run_with(spec, args, false, None)
    }

    fn check(spec: &ModuleSpec, args: Value) -> ModuleResult {
        run_with(spec, args, true, None)
    }

    fn changed(r: &ModuleResult) -> bool {
        assert!(!is_failed(r), "unexpected failure: {r:?}");
        r["changed"].as_bool().expect("changed is a bool")
    }

    fn is_failed(r: &ModuleResult) -> bool {
        r.get("failed").and_then(Value::as_bool).unwrap_or(false)
    }

    fn fail_msg(r: &ModuleResult) -> String {
        assert!(is_failed(r), "expected a failure: {r:?}");
        assert_eq!(r["changed"], json!(false));
        r["msg"].as_str().expect("msg").to_string()
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    fn s(p: &Path) -> String {
        p.to_string_lossy().into_owned()
    }

    fn no_temp_files(dir: &Path) {
        for e in fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains("rampart-tmp"), "temporary file left: {name}");
        }
    }

    // ----- modes -----

    #[test]
    fn modes_parse_octal_int_and_symbolic() {
        assert_eq!(parse_mode(&json!("0644")).unwrap(), Mode::Octal(0o644));
        assert_eq!(parse_mode(&json!("644")).unwrap(), Mode::Octal(0o644));
        assert_eq!(parse_mode(&json!("0o755")).unwrap(), Mode::Octal(0o755));
        assert_eq!(parse_mode(&json!(420)).unwrap(), Mode::Octal(0o644));
        assert_eq!(parse_mode(&json!("preserve")).unwrap(), Mode::Preserve);
        assert!(parse_mode(&json!("999")).is_err());
        assert!(parse_mode(&json!("abc")).is_err());
        assert!(parse_mode(&json!(0o17777)).is_err());
        assert!(parse_mode(&json!(-1)).is_err());
        assert!(parse_mode(&json!(true)).is_err());
        let sym = |spec: &str, cur: u32, dir: bool| {
            parse_mode(&json!(spec)).unwrap().resolve(cur, dir).unwrap()
        };
        assert_eq!(sym("u=rw,g=r,o=r", 0, false), 0o644);
        assert_eq!(sym("a+x", 0o644, false), 0o755);
        assert_eq!(sym("+x", 0o644, false), 0o755);
        assert_eq!(sym("go-w", 0o666, false), 0o644);
        assert_eq!(sym("u+X", 0o600, false), 0o600);
        assert_eq!(sym("u+X", 0o600, true), 0o700);
        assert_eq!(sym("a+X", 0o710, false), 0o711);
        assert_eq!(sym("g=u", 0o750, false), 0o770);
        assert_eq!(sym("u+s,o+t", 0o755, false), 0o5755);
        assert_eq!(sym("u=rwx,g-rwx+r", 0o777, false), 0o747);
        assert_eq!(sym("o=", 0o777, false), 0o770);
    }

    // ----- file -----

    #[test]
    fn file_directory_creates_idempotently_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/c");
        let args = json!({"path": s(&p), "state": "directory", "mode": "0750"});
        let r = check(&FILE, args.clone());
        assert!(changed(&r));
        assert!(!dir.path().join("a").exists());
        let r = run(&FILE, args.clone());
        assert!(changed(&r));
        assert_eq!(r["state"], json!("directory"));
        assert_eq!(r["mode"], json!("0750"));
        assert_eq!(r["path"], json!(s(&p)));
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode_of(&dir.path().join(d)), 0o750, "{d}");
        }
        assert!(!changed(&run(&FILE, args.clone())));
        // A mode change: reported in check mode, made otherwise.
        let args = json!({"path": s(&p), "state": "directory", "mode": 0o700});
        assert!(changed(&check(&FILE, args.clone())));
        assert_eq!(mode_of(&p), 0o750);
        assert!(changed(&run(&FILE, args.clone())));
        assert_eq!(mode_of(&p), 0o700);
        assert!(!changed(&run(&FILE, args)));
        // No state on an existing directory means directory.
        assert!(!changed(&run(&FILE, json!({"path": s(&p)}))));
    }

    #[test]
    fn file_directory_over_a_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, "x").unwrap();
        let r = run(&FILE, json!({"path": s(&p), "state": "directory"}));
        assert_eq!(
            fail_msg(&r),
            format!("{} already exists as a file", p.display())
        );
        let r = run(
            &FILE,
            json!({"path": s(&p.join("sub")), "state": "directory"}),
        );
        assert!(fail_msg(&r).starts_with("There was an issue creating"));
    }

    #[test]
    fn file_absent_removes_trees_files_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        fs::create_dir_all(tree.join("x/y")).unwrap();
        fs::write(tree.join("x/y/f"), "data").unwrap();
        let args = json!({"path": s(&tree), "state": "absent"});
        assert!(changed(&check(&FILE, args.clone())));
        assert!(tree.join("x/y/f").exists());
        let r = run(&FILE, args.clone());
        assert!(changed(&r));
        assert_eq!(r["state"], json!("absent"));
        assert_eq!(r["path"], json!(s(&tree)));
        assert!(!tree.exists());
        let r = run(&FILE, args);
        assert!(!changed(&r));
        assert_eq!(r["state"], json!("absent"));

        let f = dir.path().join("f");
        fs::write(&f, "x").unwrap();
        let l = dir.path().join("l");
        symlink(&f, &l).unwrap();
        assert!(changed(&run(
            &FILE,
            json!({"path": s(&l), "state": "absent"})
        )));
        assert!(f.exists(), "removing a link keeps its target");
        assert!(fs::symlink_metadata(&l).is_err());
        assert!(changed(&run(
            &FILE,
            json!({"dest": s(&f), "path": s(&f), "state": "absent"})
        )));
        assert!(!f.exists());
    }

    #[test]
    fn file_touch_creates_and_updates_times() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let args = json!({"path": s(&p), "state": "touch", "mode": "0600"});
        assert!(changed(&check(&FILE, args.clone())));
        assert!(!p.exists());
        let r = run(&FILE, args.clone());
        assert!(changed(&r));
        assert_eq!(r["state"], json!("file"));
        assert_eq!(mode_of(&p), 0o600);
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        // Check mode leaves the time alone; a run updates it and, as Ansible, is always changed.
        assert!(changed(&check(&FILE, args.clone())));
        assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), old);
        assert!(changed(&run(&FILE, args)));
        assert!(fs::metadata(&p).unwrap().modified().unwrap() > old);
        let r = run(
            &FILE,
            json!({"path": s(&dir.path().join("no/such")), "state": "touch"}),
        );
        assert!(fail_msg(&r).starts_with("Error, could not touch target"));
    }

    #[test]
    fn file_hard_links_idempotently_and_refuses_what_it_would_lose() {
        let dir = tempfile::tempdir().unwrap();
        let orig = dir.path().join("orig");
        fs::write(&orig, "x").unwrap();
        let hard = dir.path().join("hard");
        let args = json!({"src": s(&orig), "path": s(&hard), "state": "hard"});
        assert!(changed(&check(&FILE, args.clone())));
        assert!(fs::symlink_metadata(&hard).is_err(), "check mode linked");
        let r = run(&FILE, args.clone());
        assert!(changed(&r), "{r:?}");
        assert_eq!(r["state"], json!("hard"));
        assert_eq!(
            fs::metadata(&hard).unwrap().ino(),
            fs::metadata(&orig).unwrap().ino()
        );
        assert!(!changed(&run(&FILE, args.clone())));
        // A relative src is read from dest's directory, as for symlinks.
        let rel = run(
            &FILE,
            json!({"src": "orig", "path": s(&hard), "state": "hard"}),
        );
        assert!(!changed(&rel) && !is_failed(&rel), "{rel:?}");
        // A missing src fails and creates nothing.
        let gone = dir.path().join("gone");
        let r = run(
            &FILE,
            json!({"src": s(&dir.path().join("nope")), "path": s(&gone), "state": "hard"}),
        );
        assert_eq!(fail_msg(&r), "src does not exist");
        assert!(fs::symlink_metadata(&gone).is_err());
        // Another file is replaced only with force, atomically.
        let other = dir.path().join("other");
        fs::write(&other, "keep").unwrap();
        let args = json!({"src": s(&orig), "path": s(&other), "state": "hard"});
        let r = run(&FILE, args);
        assert!(is_failed(&r) && fail_msg(&r).contains("force=yes"), "{r:?}");
        assert_eq!(fs::read_to_string(&other).unwrap(), "keep");
        let r = run(
            &FILE,
            json!({"src": s(&orig), "path": s(&other), "state": "hard", "force": true}),
        );
        assert!(changed(&r), "{r:?}");
        assert_eq!(fs::read_to_string(&other).unwrap(), "x");
        no_temp_files(dir.path());
    }

    #[test]
    fn file_recurse_sets_modes_below_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("a"), "a").unwrap();
        fs::write(tree.join("sub/b"), "b").unwrap();
        fs::set_permissions(tree.join("sub/b"), Permissions::from_mode(0o755)).unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "o").unwrap();
        fs::set_permissions(&outside, Permissions::from_mode(0o644)).unwrap();
        symlink(&outside, tree.join("link")).unwrap();
        let args = json!({"path": s(&tree), "state": "directory", "mode": "u=rwX,g=rX,o=", "recurse": true});
        assert!(changed(&check(&FILE, args.clone())));
        assert_eq!(mode_of(&tree.join("a")), 0o644, "check mode changed a mode");
        let r = run(&FILE, args.clone());
        assert!(changed(&r), "{r:?}");
        assert_eq!(mode_of(&tree), 0o750);
        assert_eq!(mode_of(&tree.join("sub")), 0o750);
        assert_eq!(mode_of(&tree.join("a")), 0o640);
        // X keeps the execute bit of a file that had one.
        assert_eq!(mode_of(&tree.join("sub/b")), 0o750);
        assert_eq!(
            mode_of(&outside),
            0o644,
            "a symlink's target outside the tree changed"
        );
        assert!(!changed(&run(&FILE, args)));
        // Without state, recurse on an absent path makes a directory; with another state it fails.
        let fresh = dir.path().join("fresh");
        let r = run(
            &FILE,
            json!({"path": s(&fresh), "recurse": true, "mode": "0700"}),
        );
        assert!(changed(&r) && fresh.is_dir(), "{r:?}");
        let r = run(
            &FILE,
            json!({"path": s(&tree.join("a")), "state": "file", "recurse": true}),
        );
        assert_eq!(
            fail_msg(&r),
            "recurse option requires state to be 'directory'"
        );
    }

    #[test]
    fn owner_and_group_are_set_where_they_differ() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, "x").unwrap();
        let (uid, gid) = {
            let m = fs::metadata(&p).unwrap();
            (m.uid(), m.gid())
        };
        // The owner it already has: unchanged, by name or by id.
        let me = user_name(uid);
        let r = run(&FILE, json!({"path": s(&p), "owner": me, "group": gid}));
        assert!(!changed(&r) && !is_failed(&r), "{r:?}");
        let r = run(
            &FILE,
            json!({"path": s(&p), "owner": "rampart-no-such-user"}),
        );
        assert!(
            fail_msg(&r).contains("failed to look up user rampart-no-such-user"),
            "{r:?}"
        );
        if uid == 0 {
            // As root: hand the file to nobody and back; the diff names the ids.
            let nobody = User::from_name("nobody").unwrap().unwrap().uid.as_raw();
            let args = json!({"path": s(&p), "owner": "nobody"});
            assert!(changed(&check(&FILE, args.clone())));
            assert_eq!(fs::metadata(&p).unwrap().uid(), 0, "check mode chowned");
            let r = run(&FILE, args);
            assert!(changed(&r), "{r:?}");
            assert_eq!(fs::metadata(&p).unwrap().uid(), nobody);
            assert_eq!(r["diff"]["before"]["owner"], json!(0));
            assert_eq!(r["diff"]["after"]["owner"], json!(nobody));
            assert_eq!(r["owner"], json!("nobody"));
            let r = run(&COPY, json!({"dest": s(&p), "content": "x", "owner": 0}));
            assert!(changed(&r), "{r:?}");
            assert_eq!(fs::metadata(&p).unwrap().uid(), 0);
        }
    }

    #[test]
    fn copy_reports_a_content_diff() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, "a\nb\n").unwrap();
        let r = run(&COPY, json!({"dest": s(&p), "content": "a\nc\n"}));
        assert_eq!(r["diff"]["before"], json!("a\nb\n"));
        assert_eq!(r["diff"]["after"], json!("a\nc\n"));
        assert_eq!(r["diff"]["after_header"], json!("dynamically generated"));
        assert_eq!(r["diff"]["before_header"], json!(s(&p)));
        let r = run(&COPY, json!({"dest": s(&p), "content": "a\nc\n"}));
        assert!(
            r.get("diff").is_none(),
            "an unchanged copy has no diff: {r:?}"
        );
        let big = "x".repeat(MAX_DIFF_BYTES + 1);
        let r = run(&COPY, json!({"dest": s(&p), "content": big}));
        assert_eq!(r["diff"]["src_larger"], json!(MAX_DIFF_BYTES));
        assert!(r["diff"].get("after").is_none());
    }

    #[test]
    fn file_link_creates_replaces_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let other = dir.path().join("other");
        fs::write(&target, "t").unwrap();
        fs::write(&other, "o").unwrap();
        let link = dir.path().join("link");
        let args = json!({"path": s(&link), "src": s(&target), "state": "link"});
        assert!(changed(&check(&FILE, args.clone())));
        assert!(fs::symlink_metadata(&link).is_err());
        let r = run(&FILE, args.clone());
        assert!(changed(&r));
        assert_eq!(r["state"], json!("link"));
        assert_eq!(r["src"], json!(s(&target)));
        assert_eq!(fs::read_link(&link).unwrap(), target);
        assert!(!changed(&run(&FILE, args)));
        // A different link is replaced (reported only, in check mode).
        let args = json!({"path": s(&link), "src": "other", "state": "link"});
        assert!(changed(&check(&FILE, args.clone())));
        assert_eq!(fs::read_link(&link).unwrap(), target);
        assert!(changed(&run(&FILE, args.clone())));
        assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("other"));
        assert_eq!(fs::read_to_string(&link).unwrap(), "o");
        assert!(!changed(&run(&FILE, args)));
        // No state on an existing link keeps it.
        assert!(!changed(&run(&FILE, json!({"path": s(&link)}))));
        no_temp_files(dir.path());
    }

    #[test]
    fn file_link_over_files_and_directories_needs_force() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "t").unwrap();
        let f = dir.path().join("f");
        fs::write(&f, "regular").unwrap();
        let args = json!({"path": s(&f), "src": s(&target), "state": "link"});
        let r = run(&FILE, args);
        assert_eq!(
            fail_msg(&r),
            format!(
                "refusing to convert from file to symlink for {}",
                f.display()
            )
        );
        let args = json!({"path": s(&f), "src": s(&target), "state": "link", "force": true});
        assert!(changed(&check(&FILE, args.clone())));
        assert!(fs::symlink_metadata(&f).unwrap().is_file());
        assert!(changed(&run(&FILE, args.clone())));
        assert_eq!(fs::read_link(&f).unwrap(), target);
        assert!(!changed(&run(&FILE, args)));

        let d = dir.path().join("d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("x"), "").unwrap();
        let r = run(
            &FILE,
            json!({"path": s(&d), "src": s(&target), "state": "link"}),
        );
        assert!(fail_msg(&r).starts_with("refusing to convert from directory to symlink"));
        let args = json!({"path": s(&d), "src": s(&target), "state": "link", "force": true});
        assert!(
            fail_msg(&run(&FILE, args.clone())).contains("is not empty, refusing to convert it")
        );
        fs::remove_file(d.join("x")).unwrap();
        assert!(changed(&run(&FILE, args)));
        assert_eq!(fs::read_link(&d).unwrap(), target);
    }

    #[test]
    fn file_link_to_a_missing_source_needs_force() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        let r = run(
            &FILE,
            json!({"path": s(&link), "src": "missing", "state": "link"}),
        );
        assert!(fail_msg(&r).starts_with("src file does not exist, use 'force=yes'"));
        let args = json!({"path": s(&link), "src": "missing", "state": "link", "force": true});
        let r = run(&FILE, args.clone());
        assert!(changed(&r));
        assert_eq!(r["state"], json!("link"));
        assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("missing"));
        assert!(!changed(&run(&FILE, args)));
        let r = run(
            &FILE,
            json!({"path": s(&dir.path().join("new")), "state": "link"}),
        );
        assert_eq!(fail_msg(&r), "src is required for creating new symlinks");
    }

    #[test]
    fn file_state_file_sets_modes_and_needs_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, "x").unwrap();
        fs::set_permissions(&p, Permissions::from_mode(0o600)).unwrap();
        // YAML 1.1 reads `mode: 0644` as the integer 420.
        let args = json!({"path": s(&p), "mode": 420});
        assert!(changed(&check(&FILE, args.clone())));
        assert_eq!(mode_of(&p), 0o600);
        let r = run(&FILE, args.clone());
        assert!(changed(&r));
        assert_eq!(r["mode"], json!("0644"));
        assert_eq!(r["state"], json!("file"));
        assert_eq!(r["size"], json!(1));
        assert_eq!(mode_of(&p), 0o644);
        assert!(!changed(&run(&FILE, args)));
        let args = json!({"path": s(&p), "state": "file", "mode": "u=rwx,go=rx"});
        assert!(changed(&run(&FILE, args.clone())));
        assert_eq!(mode_of(&p), 0o755);
        assert!(!changed(&run(&FILE, args)));
        // Through a symlink, the target is used.
        let l = dir.path().join("l");
        symlink(&p, &l).unwrap();
        let r = run(
            &FILE,
            json!({"path": s(&l), "state": "file", "mode": "0600"}),
        );
        assert!(changed(&r));
        assert_eq!(mode_of(&p), 0o600);

        let missing = dir.path().join("missing");
        let r = run(&FILE, json!({"path": s(&missing)}));
        assert_eq!(
            fail_msg(&r),
            format!("file ({}) is absent, cannot continue", missing.display())
        );
        assert!(!missing.exists());
        let r = run(&FILE, json!({"path": s(dir.path()), "state": "file"}));
        assert!(fail_msg(&r).ends_with("is directory, cannot continue"));
        let r = run(&FILE, json!({"path": s(&p), "src": "x", "state": "file"}));
        assert_eq!(
            fail_msg(&r),
            "src option requires state to be 'link' or 'hard'"
        );
        let r = run(&FILE, json!({"path": s(&p), "mode": "rwx"}));
        assert!(fail_msg(&r).starts_with("mode must be in octal or symbolic form"));
        let r = run(&FILE, json!({"path": s(&p), "mode": "preserve"}));
        assert!(fail_msg(&r).contains("preserve"));
    }

    // ----- copy -----

    #[test]
    fn copy_content_is_idempotent_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("conf");
        let args = json!({"dest": s(&p), "content": "hello\n", "mode": "0640"});
        let r = check(&COPY, args.clone());
        assert!(changed(&r));
        assert!(!p.exists());
        assert_eq!(r["checksum"], json!(sha256_hex(b"hello\n")));
        let r = run(&COPY, args.clone());
        assert!(changed(&r));
        assert_eq!(fs::read_to_string(&p).unwrap(), "hello\n");
        assert_eq!(mode_of(&p), 0o640);
        assert_eq!(r["dest"], json!(s(&p)));
        assert_eq!(r["checksum"], json!(sha256_hex(b"hello\n")));
        assert_eq!(r["checksum_algorithm"], json!("sha256"));
        assert_eq!(r["size"], json!(6));
        assert_eq!(r["mode"], json!("0640"));
        assert_eq!(r["state"], json!("file"));
        assert!(!changed(&run(&COPY, args)));
        // New content: reported in check mode, written otherwise, mode kept.
        let args = json!({"dest": s(&p), "content": "bye\n"});
        assert!(changed(&check(&COPY, args.clone())));
        assert_eq!(fs::read_to_string(&p).unwrap(), "hello\n");
        assert!(changed(&run(&COPY, args.clone())));
        assert_eq!(fs::read_to_string(&p).unwrap(), "bye\n");
        assert_eq!(mode_of(&p), 0o640);
        assert!(!changed(&run(&COPY, args)));
        no_temp_files(dir.path());
    }

    #[test]
    fn copy_mode_only_change_does_not_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, "same").unwrap();
        fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        let inode = fs::metadata(&p).unwrap().ino();
        let args = json!({"dest": s(&p), "content": "same", "mode": "0600"});
        assert!(changed(&check(&COPY, args.clone())));
        assert_eq!(mode_of(&p), 0o644);
        assert!(changed(&run(&COPY, args.clone())));
        assert_eq!(mode_of(&p), 0o600);
        assert_eq!(fs::metadata(&p).unwrap().ino(), inode);
        assert!(!changed(&run(&COPY, args)));
        let args = json!({"dest": s(&p), "content": "same", "mode": "g+r"});
        assert!(changed(&run(&COPY, args.clone())));
        assert_eq!(mode_of(&p), 0o640);
        assert!(!changed(&run(&COPY, args)));
    }

    #[test]
    fn copy_without_force_leaves_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let args = json!({"dest": s(&p), "content": "new", "force": false});
        assert!(changed(&run(&COPY, args.clone())));
        fs::write(&p, "old").unwrap();
        let r = run(&COPY, args);
        assert!(!changed(&r));
        assert_eq!(r["msg"], json!("file already exists"));
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
    }

    #[test]
    fn copy_src_is_found_in_base_dir_then_files() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("files")).unwrap();
        fs::write(base.path().join("files/app.conf"), "from files/").unwrap();
        fs::write(base.path().join("top.conf"), "from base").unwrap();
        fs::set_permissions(base.path().join("top.conf"), Permissions::from_mode(0o751)).unwrap();
        let out = tempfile::tempdir().unwrap();
        // dest is a directory: the file goes in under src's name.
        let args = json!({"src": "app.conf", "dest": s(out.path())});
        let r = run_with(&COPY, args.clone(), true, Some(base.path()));
        assert!(changed(&r));
        assert!(!out.path().join("app.conf").exists());
        let r = run_with(&COPY, args.clone(), false, Some(base.path()));
        assert!(changed(&r));
        assert_eq!(r["dest"], json!(s(&out.path().join("app.conf"))));
        assert_eq!(
            fs::read_to_string(out.path().join("app.conf")).unwrap(),
            "from files/"
        );
        assert!(!changed(&run_with(&COPY, args, false, Some(base.path()))));
        // mode: preserve takes the source's mode.
        let dest = out.path().join("top");
        let args = json!({"src": "top.conf", "dest": s(&dest), "mode": "preserve"});
        assert!(changed(&run_with(
            &COPY,
            args.clone(),
            false,
            Some(base.path())
        )));
        assert_eq!(fs::read_to_string(&dest).unwrap(), "from base");
        assert_eq!(mode_of(&dest), 0o751);
        assert!(!changed(&run_with(&COPY, args, false, Some(base.path()))));
        // An absolute src.
        let abs = base.path().join("top.conf");
        let args = json!({"src": s(&abs), "dest": s(&out.path().join("abs"))});
        assert!(changed(&run(&COPY, args)));
    }

    #[test]
    fn copy_into_a_new_directory_with_trailing_slash() {
        let base = tempfile::tempdir().unwrap();
        fs::write(base.path().join("a.txt"), "a").unwrap();
        let dest = format!("{}/sub/", base.path().join("out").display());
        let args = json!({"src": "a.txt", "dest": dest});
        let r = run_with(&COPY, args.clone(), true, Some(base.path()));
        assert!(changed(&r));
        assert!(r["msg"].as_str().unwrap().contains("would be created"));
        assert!(!base.path().join("out").exists());
        assert!(changed(&run_with(
            &COPY,
            args.clone(),
            false,
            Some(base.path())
        )));
        assert_eq!(
            fs::read_to_string(base.path().join("out/sub/a.txt")).unwrap(),
            "a"
        );
        assert!(!changed(&run_with(&COPY, args, false, Some(base.path()))));
    }

    #[test]
    fn copy_replaces_a_symlink_with_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "x").unwrap();
        let l = dir.path().join("l");
        symlink(&target, &l).unwrap();
        let args = json!({"dest": s(&l), "content": "y"});
        assert!(changed(&run(&COPY, args.clone())));
        assert!(fs::symlink_metadata(&l).unwrap().is_file());
        assert_eq!(fs::read_to_string(&target).unwrap(), "x");
        assert!(!changed(&run(&COPY, args)));
    }

    #[test]
    fn copy_structured_content_is_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let args = json!({"dest": s(&p), "content": {"a": [1, 2], "b": "é"}});
        assert!(changed(&run(&COPY, args.clone())));
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            r#"{"a": [1, 2], "b": "\u00e9"}"#
        );
        assert!(!changed(&run(&COPY, args)));
    }

    #[test]
    fn copy_failures() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(&COPY, json!({"dest": s(dir.path()), "content": "x"}));
        assert_eq!(fail_msg(&r), "can not use content with a dir as dest");
        let r = run(&COPY, json!({"dest": "/tmp/x/", "content": "x"}));
        assert_eq!(fail_msg(&r), "can not use content with a dir as dest");
        let missing = dir.path().join("no/such");
        let r = run(
            &COPY,
            json!({"dest": s(&missing.join("f")), "content": "x"}),
        );
        assert_eq!(
            fail_msg(&r),
            format!("Destination directory {} does not exist", missing.display())
        );
        let r = check(
            &COPY,
            json!({"dest": s(&missing.join("f")), "content": "x"}),
        );
        assert!(fail_msg(&r).starts_with("Destination directory"));
        let r = run_with(
            &COPY,
            json!({"dest": s(&dir.path().join("f")), "src": "nope.txt"}),
            false,
            Some(dir.path()),
        );
        assert!(fail_msg(&r).starts_with("could not find or access 'nope.txt'"));
        fs::create_dir(dir.path().join("sub")).unwrap();
        let r = run_with(
            &COPY,
            json!({"dest": s(&dir.path().join("f")), "src": "sub"}),
            false,
            Some(dir.path()),
        );
        assert!(fail_msg(&r).contains("is a directory"));
        let r = run(
            &COPY,
            json!({"dest": s(&dir.path().join("f")), "content": "x", "mode": "preserve"}),
        );
        assert!(fail_msg(&r).contains("preserve"));
        let r = run(
            &COPY,
            json!({"dest": s(&dir.path().join("f")), "content": "x", "src": "y"}),
        );
        assert_eq!(fail_msg(&r), "src and content are mutually exclusive");
        let r = run(&COPY, json!({"dest": s(&dir.path().join("f"))}));
        assert_eq!(fail_msg(&r), "src (or content) is required");
        assert!(!dir.path().join("f").exists());
    }

    // ----- template -----

    fn template_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let base = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = base.path().join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        base
    }

    #[test]
    fn template_renders_idempotently() {
        let base = template_dir(&[("templates/greet.j2", "Hello {{ name }}!\n")]);
        let dest = base.path().join("out.txt");
        let args = json!({"src": "greet.j2", "dest": s(&dest), "mode": "0604"});
        let r = run_with(&TEMPLATE, args.clone(), true, Some(base.path()));
        assert!(changed(&r));
        assert!(!dest.exists());
        let r = run_with(&TEMPLATE, args.clone(), false, Some(base.path()));
        assert!(changed(&r));
        assert_eq!(fs::read_to_string(&dest).unwrap(), "Hello world!\n");
        assert_eq!(mode_of(&dest), 0o604);
        assert_eq!(r["checksum"], json!(sha256_hex(b"Hello world!\n")));
        assert_eq!(r["size"], json!(13));
        assert!(!changed(&run_with(
            &TEMPLATE,
            args.clone(),
            false,
            Some(base.path())
        )));
        // A changed destination is put back.
        fs::write(&dest, "edited").unwrap();
        assert!(changed(&run_with(
            &TEMPLATE,
            args.clone(),
            true,
            Some(base.path())
        )));
        assert_eq!(fs::read_to_string(&dest).unwrap(), "edited");
        assert!(changed(&run_with(
            &TEMPLATE,
            args,
            false,
            Some(base.path())
        )));
        assert_eq!(fs::read_to_string(&dest).unwrap(), "Hello world!\n");
        no_temp_files(base.path());
    }

    #[test]
    fn template_whitespace_matches_ansible() {
        let base = template_dir(&[
            ("one.j2", "{{ name }}\n"),
            (
                "loop.j2",
                "{% for i in items %}\n{{ i }}\n{% endfor %}\nend\n",
            ),
            (
                "raw.j2",
                "{% raw %}\n{{ x }}\n{% endraw %}\n{# note #}\ndone",
            ),
            ("managed.j2", "# {{ ansible_managed }}\n"),
        ]);
        let render = |src: &str| {
            let dest = base.path().join(format!("{src}.out"));
            let r = run_with(
                &TEMPLATE,
                json!({"src": src, "dest": s(&dest)}),
                false,
                Some(base.path()),
            );
            assert!(changed(&r), "{r:?}");
            fs::read_to_string(dest).unwrap()
        };
        assert_eq!(render("one.j2"), "world\n");
        assert_eq!(render("loop.j2"), "1\n2\n3\nend\n");
        assert_eq!(render("raw.j2"), "{{ x }}\ndone");
        assert_eq!(render("managed.j2"), "# Ansible managed\n");
        let dest = base.path().join("managed.out2");
        let args = json!({"src": "managed.j2", "dest": s(&dest)});
        let r = run_with_vars(
            &TEMPLATE,
            args,
            false,
            Some(base.path()),
            &[("ansible_managed", "ours")],
        );
        assert!(changed(&r));
        assert_eq!(fs::read_to_string(dest).unwrap(), "# ours\n");
    }

    #[test]
    fn template_variables_name_the_files() {
        let base = template_dir(&[(
            "t.j2",
            "{{ template_path | basename }} -> {{ template_destpath }}",
        )]);
        let dest = base.path().join("out");
        let args = json!({"src": "t.j2", "dest": s(&dest)});
        assert!(changed(&run_with(
            &TEMPLATE,
            args,
            false,
            Some(base.path())
        )));
        assert_eq!(
            fs::read_to_string(&dest).unwrap(),
            format!("t.j2 -> {}", dest.display())
        );
    }

    #[test]
    fn trim_blocks_emulation() {
        assert_eq!(
            trim_blocks("{% if x %}\na\n{% endif %}\nb"),
            "{% if x %}a\n{% endif %}b"
        );
        assert_eq!(trim_blocks("{# c #}\r\nx"), "{# c #}x");
        assert_eq!(trim_blocks("{{ x }}\ny"), "{{ x }}\ny");
        assert_eq!(trim_blocks("{% if '%}' %}\nz"), "{% if '%}' %}z");
        assert_eq!(trim_blocks("{% if x +%}\nz"), "{% if x +%}\nz");
        assert_eq!(
            trim_blocks("{% raw %}\n{% if %}\n{% endraw %}\n"),
            "{% raw %}{% if %}\n{% endraw %}"
        );
        assert_eq!(trim_blocks("{% unterminated\n"), "{% unterminated\n");
        assert_eq!(trim_blocks("é{% x %}\né"), "é{% x %}é");
    }

    #[test]
    fn template_failures() {
        let base = template_dir(&[("bad.j2", "{{ nosuch }}\n"), ("syntax.j2", "{% if %}")]);
        let dest = base.path().join("out");
        let r = run_with(
            &TEMPLATE,
            json!({"src": "bad.j2", "dest": s(&dest)}),
            false,
            Some(base.path()),
        );
        let msg = fail_msg(&r);
        assert!(msg.starts_with("failed to render template"), "{msg}");
        assert!(msg.contains("bad.j2") && msg.contains("undefined"), "{msg}");
        let r = run_with(
            &TEMPLATE,
            json!({"src": "syntax.j2", "dest": s(&dest)}),
            false,
            Some(base.path()),
        );
        assert!(fail_msg(&r).contains("syntax.j2"));
        let r = run_with(
            &TEMPLATE,
            json!({"src": "missing.j2", "dest": s(&dest)}),
            false,
            Some(base.path()),
        );
        assert!(fail_msg(&r).starts_with("could not find or access 'missing.j2'"));
        let r = run_with(
            &TEMPLATE,
            json!({"src": "bad.j2", "dest": s(&base.path().join("no/dir/out"))}),
            false,
            Some(base.path()),
        );
        assert!(fail_msg(&r).contains("undefined"));
        assert!(!dest.exists());
    }

    // ----- stat -----

    #[test]
    fn stat_reports_files_links_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 7) as u8).collect();
        fs::write(&f, &data).unwrap();
        fs::set_permissions(&f, Permissions::from_mode(0o640)).unwrap();
        let r = check(&STAT, json!({"path": s(&f)}));
        assert!(!changed(&r));
        let st = &r["stat"];
        assert_eq!(st["exists"], json!(true));
        assert_eq!(st["isreg"], json!(true));
        assert_eq!(st["isdir"], json!(false));
        assert_eq!(st["islnk"], json!(false));
        assert_eq!(st["mode"], json!("0640"));
        assert_eq!(st["size"], json!(150_000));
        assert_eq!(st["checksum"], json!(sha256_hex(&data)));
        assert_eq!(st["checksum_algorithm"], json!("sha256"));
        assert_eq!(st["rusr"], json!(true));
        assert_eq!(st["roth"], json!(false));
        assert_eq!(st["path"], json!(s(&f)));
        let mtime = st["mtime"].as_f64().unwrap();
        let expect = fs::metadata(&f).unwrap().mtime() as f64;
        assert!((mtime - expect).abs() < 1.0);
        // Identical on a second run; nothing changed.
        let again = run(&STAT, json!({"path": s(&f)}));
        assert_eq!(again["stat"]["checksum"], st["checksum"]);
        assert!(!changed(&again));

        let r = run(&STAT, json!({"path": s(&f), "get_checksum": false}));
        assert!(r["stat"].get("checksum").is_none());
        let r = run(
            &STAT,
            json!({"path": s(&f), "checksum_algorithm": "sha512"}),
        );
        assert_eq!(r["stat"]["checksum"].as_str().unwrap().len(), 128);

        let l = dir.path().join("l");
        symlink("f", &l).unwrap();
        let r = run(&STAT, json!({"path": s(&l)}));
        let st = &r["stat"];
        assert_eq!(st["islnk"], json!(true));
        assert_eq!(st["isreg"], json!(false));
        assert_eq!(st["lnk_target"], json!("f"));
        assert_eq!(st["lnk_source"], json!(s(&fs::canonicalize(&f).unwrap())));
        assert!(st.get("checksum").is_none());
        let r = run(&STAT, json!({"path": s(&l), "follow": true}));
        assert_eq!(r["stat"]["isreg"], json!(true));
        assert_eq!(r["stat"]["islnk"], json!(false));

        let r = run(&STAT, json!({"path": s(dir.path())}));
        assert_eq!(r["stat"]["isdir"], json!(true));
        assert!(r["stat"].get("checksum").is_none());
    }

    #[test]
    fn stat_missing_and_failing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(&STAT, json!({"path": s(&dir.path().join("missing"))}));
        assert!(!changed(&r));
        assert_eq!(r["stat"], json!({"exists": false}));
        let dangling = dir.path().join("dangling");
        symlink("nowhere", &dangling).unwrap();
        let r = run(&STAT, json!({"path": s(&dangling), "follow": true}));
        assert_eq!(r["stat"], json!({"exists": false}));
        let f = dir.path().join("f");
        fs::write(&f, "").unwrap();
        let r = run(&STAT, json!({"path": s(&f.join("below"))}));
        assert_eq!(fail_msg(&r), "Not a directory");
    }
}
