//! Text-editing modules: `lineinfile`, `blockinfile` and `replace`, with Ansible's arguments and
//! results (ansible-core 2.19).
//!
//! Inputs: templated, type-checked arguments (the schemas in
//! `rampart_playbook::modules::textedit`). `path` (aliases `dest`, `destfile`, `name`; `~` is
//! expanded) names a regular file of at most 64 MiB; a symlink is followed and the file it points
//! at is edited.
//!
//! - `lineinfile` makes sure `line` is in the file (`state: present`): it replaces the last line
//!   matching `regexp` (or containing `search_string`), else adds `line` after the last line
//!   matching `insertafter` (default `EOF`) or before the last matching `insertbefore` (`BOF`: at
//!   the top) — the first ones with `firstmatch`; with `backrefs`, `line` is the match expanded (`\1`,
//!   `\g<name>`) and nothing is added when nothing matches. `state: absent` removes every line
//!   matching `regexp`, containing `search_string` or equal to `line`.
//! - `blockinfile` keeps `block` between the lines `marker` with `{mark}` as `marker_begin` /
//!   `marker_end`: an existing marked block is replaced in place, a new one is put after the last
//!   line matching `insertafter` (default `EOF`) or before the last matching `insertbefore`
//!   (`BOF`); `state: absent` (or an empty block) removes the marked block.
//! - `replace` replaces every match of `regexp` (Python's `re.MULTILINE`) by `replace` (with
//!   `\1`, `\g<name>`); with `after` and/or `before` (Python's `re.DOTALL`), only in the text
//!   between the first match of `after` and the next match of `before`, after the first `after`,
//!   or before the last `before`.
//!
//! Outputs: Ansible's result keys: `changed`, `msg` (`line added`, `line replaced`,
//! `N line(s) removed`, `Block inserted`, `Block removed`, `File created`, `N replacements made`,
//! with ` and ownership, perms or SE linux context changed` when `mode` changed too), `backup`
//! (lineinfile, `""` without a backup) or `backup_file` (the others, when one was made), `found`
//! (lineinfile absent), `rc: 0` (replace), and `diff` (before/after of the content; shown with
//! `--diff`). A missing file fails with `rc: 257` (`Destination X does not exist !` for
//! lineinfile, `Path X does not exist !` for the others) unless `create` is set; a directory fails
//! with `rc: 256`.
//!
//! Idempotence: the edit is computed on the file's bytes and the file is only written when the
//! result differs, so a second identical run reports `changed: false`. Check mode computes the
//! same result and reports it (with the diff) without writing, creating directories or backing
//! up. Writes are atomic: a temporary file in the file's directory is written, fsynced, given the
//! file's mode and owner (or `mode`), checked by `validate` (`%s` is the temporary file; the
//! command runs without a shell, for at most two minutes) and renamed over the file, and the
//! directory is fsynced; a failed validation leaves the file untouched.
//!
//! Reversing it: `backup: true` keeps a copy of the previous content beside the file
//! (`<path>.<pid>.<YYYY-MM-DD@HH:MM:SS>~`, as Ansible) that a rescue can copy back; lineinfile
//! `state: absent` with the same `line` removes an added line, blockinfile `state: absent` with the
//! same marker removes a block; a replace is undone by the inverse replace when the new text does
//! not occur elsewhere.
//!
//! Deliberate differences from Ansible: regular expressions are Rust's `regex` crate with
//! Python's syntax translated (`$`, `\Z`, literal `{`, escapes); lookaround and backreferences in a
//! pattern (`(?=`, `(?<=`, `\1`, `(?P=name)`) are refused with a message rather than supported.
//! In replace's `after`/`before`, `$` matches only at the very end of the file. `owner` and
//! `group` (a name or an id) are set after the write and count as an attribute change, as
//! Ansible's; SELinux and `unsafe_writes` are not supported; replace reads only
//! `encoding: utf-8`.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid};
use rampart_host::durable::{fsync_dir, parent_dir, rename_into_place, temp_path};
use rampart_host::process::run_bounded;
use regex::bytes::{Captures, Regex, RegexBuilder};
use serde_json::{Map, Value, json};

use rampart_playbook::modules::textedit as schema;

use super::files::{Mode, Owner, current_umask, expand_user, opt_mode, opt_owner, os_msg};
use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_bool, arg_str, failed, ok};

/// The largest file these modules read.
const MAX_FILE: u64 = 64 * 1024 * 1024;
/// The longest a `validate` command may run.
const VALIDATE_DEADLINE: Duration = Duration::from_secs(120);
/// Appended to `msg` when the mode changed.
const ATTRS_CHANGED: &str = "ownership, perms or SE linux context changed";

/// `lineinfile`: makes sure one line is in a file (or is not).
pub static LINEINFILE: ModuleSpec = ModuleSpec {
    schema: &schema::LINEINFILE,
    run: run_lineinfile,
};

/// `blockinfile`: inserts, updates or removes a marked block of lines.
pub static BLOCKINFILE: ModuleSpec = ModuleSpec {
    schema: &schema::BLOCKINFILE,
    run: run_blockinfile,
};

/// `replace`: replaces every match of a regex in a file.
pub static REPLACE: ModuleSpec = ModuleSpec {
    schema: &schema::REPLACE,
    run: run_replace,
};

// ---------------------------------------------------------------------------------------------
// Python regular expressions
// ---------------------------------------------------------------------------------------------

/// What Python's `$` means where a pattern is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dollar {
    /// Searched in one line ending in `\n`: the end, or before the final newline.
    Line,
    /// `re.MULTILINE`: before any newline or at the end.
    Multi,
    /// Searched in a whole text without `re.MULTILINE`: the end (see the module doc).
    Text,
}

/// Translates a Python `re` pattern into the `regex` crate's syntax.
fn translate(pat: &str, dollar: Dollar) -> Result<String, String> {
    let unsupported = |what: &str| {
        Err(format!(
            "the regular expression {pat:?} uses {what}, which Rampart's regex engine does not \
             support; rewrite it without lookaround or backreferences"
        ))
    };
    let chars: Vec<char> = pat.chars().collect();
    let mut out = String::with_capacity(pat.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    return Err(format!(
                        "bad escape (end of pattern) in the regular expression {pat:?}"
                    ));
                };
                i += 2;
                match n {
                    'Z' => out.push_str(r"\z"),
                    '1'..='9' => return unsupported("a backreference"),
                    '0' => {
                        let mut v = 0u32;
                        let mut k = 0;
                        while k < 2 && chars.get(i).is_some_and(|d| ('0'..='7').contains(d)) {
                            v = v * 8 + chars[i].to_digit(8).unwrap_or(0);
                            i += 1;
                            k += 1;
                        }
                        out.push_str(&format!(r"\x{{{v:x}}}"));
                    }
                    c if c.is_ascii_alphanumeric() => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => push_literal(&mut out, c),
                }
                continue;
            }
            '[' => {
                i = translate_class(&chars, i, &mut out, pat)?;
                continue;
            }
            '(' if chars.get(i + 1) == Some(&'?') => {
                let rest: String = chars[i + 2..].iter().take(3).collect();
                if rest.starts_with('=') || rest.starts_with('!') {
                    return unsupported("a lookahead");
                }
                if rest.starts_with("<=") || rest.starts_with("<!") {
                    return unsupported("a lookbehind");
                }
                if rest.starts_with("P=") {
                    return unsupported("a backreference");
                }
                if rest.starts_with('#') {
                    // A comment: skip it.
                    while i < chars.len() && chars[i] != ')' {
                        i += 1;
                    }
                    i += 1;
                    continue;
                }
                out.push_str("(?");
                i += 2;
                continue;
            }
            '{' => {
                // A quantifier only when it is `{m}`, `{m,}`, `{,n}` or `{m,n}`; else literal.
                let mut j = i + 1;
                let mut lo = String::new();
                while chars.get(j).is_some_and(char::is_ascii_digit) {
                    lo.push(chars[j]);
                    j += 1;
                }
                let mut hi = None;
                if chars.get(j) == Some(&',') {
                    let mut h = String::new();
                    j += 1;
                    while chars.get(j).is_some_and(char::is_ascii_digit) {
                        h.push(chars[j]);
                        j += 1;
                    }
                    hi = Some(h);
                }
                let closed = chars.get(j) == Some(&'}');
                let valid =
                    closed && (!lo.is_empty() || hi.as_ref().is_some_and(|h| !h.is_empty()));
                if valid {
                    let lo = if lo.is_empty() { "0".to_string() } else { lo };
                    match hi {
                        None => out.push_str(&format!("{{{lo}}}")),
                        Some(h) => out.push_str(&format!("{{{lo},{h}}}")),
                    }
                    i = j + 1;
                } else {
                    out.push_str(r"\{");
                    i += 1;
                }
                continue;
            }
            '}' => out.push_str(r"\}"),
            '$' => match dollar {
                Dollar::Line => out.push_str("(?m:$)"),
                Dollar::Multi => out.push('$'),
                Dollar::Text => out.push_str(r"\z"),
            },
            c => out.push(c),
        }
        i += 1;
    }
    Ok(out)
}

/// Writes `c`, a character Python escaped, so that the `regex` crate reads it literally.
fn push_literal(out: &mut String, c: char) {
    if regex::escape(&c.to_string()).len() > c.len_utf8() {
        out.push('\\');
    }
    out.push(c);
}

/// Translates the character class starting at `chars[start]` (`[`); returns the index after it.
fn translate_class(
    chars: &[char],
    start: usize,
    out: &mut String,
    pat: &str,
) -> Result<usize, String> {
    let mut i = start + 1;
    out.push('[');
    if chars.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    if chars.get(i) == Some(&']') {
        out.push_str(r"\]");
        i += 1;
    }
    while i < chars.len() {
        match chars[i] {
            ']' => {
                out.push(']');
                return Ok(i + 1);
            }
            '\\' => {
                let Some(&n) = chars.get(i + 1) else { break };
                match n {
                    'b' => out.push_str(r"\x08"),
                    c if c.is_ascii_alphanumeric() => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => {
                        out.push('\\');
                        out.push(c);
                    }
                }
                i += 2;
            }
            c @ ('[' | '&' | '~') => {
                out.push('\\');
                out.push(c);
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err(format!(
        "unterminated character set in the regular expression {pat:?}"
    ))
}

/// Compiles a Python pattern for bytes (ASCII classes, as Python's bytes patterns) or for UTF-8
/// text (Unicode classes, as Python's str patterns).
fn compile(pat: &str, dollar: Dollar, unicode: bool, prefix: &str) -> Result<Regex, String> {
    let translated = translate(pat, dollar)?;
    RegexBuilder::new(&format!("{prefix}{translated}"))
        .unicode(unicode)
        .build()
        .map_err(|e| format!("invalid regular expression {pat:?}: {e}"))
}

/// One piece of a Python replacement template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Vec<u8>),
    Group(usize),
}

/// Parses a Python replacement template (`\1`, `\g<1>`, `\g<name>`, `\n`, `\\`) for `re`.
fn parse_template(tpl: &str, re: &Regex) -> Result<Vec<Piece>, String> {
    let bad = |what: String| Err(format!("{what} in the replacement {tpl:?}"));
    let b = tpl.as_bytes();
    let groups = re.captures_len();
    let mut pieces = Vec::new();
    let mut text = Vec::new();
    let mut i = 0;
    let push_group = |text: &mut Vec<u8>, pieces: &mut Vec<Piece>, g: usize| {
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(text)));
        }
        pieces.push(Piece::Group(g));
    };
    while i < b.len() {
        if b[i] != b'\\' {
            text.push(b[i]);
            i += 1;
            continue;
        }
        let Some(&n) = b.get(i + 1) else {
            return bad("bad escape (end of pattern)".into());
        };
        i += 2;
        match n {
            b'g' => {
                if b.get(i) != Some(&b'<') {
                    return bad("missing < after \\g".into());
                }
                let Some(end) = b[i..].iter().position(|&c| c == b'>') else {
                    return bad("missing > after \\g<".into());
                };
                let name = &tpl[i + 1..i + end];
                i += end + 1;
                let g = if !name.is_empty() && name.bytes().all(|c| c.is_ascii_digit()) {
                    name.parse::<usize>().ok().filter(|g| *g < groups)
                } else {
                    re.capture_names().position(|n| n == Some(name))
                };
                match g {
                    Some(g) => push_group(&mut text, &mut pieces, g),
                    None => return bad(format!("invalid group reference {name}")),
                }
            }
            b'0' => {
                let mut v = 0u32;
                let mut k = 0;
                while k < 2 && b.get(i).is_some_and(|d| (b'0'..=b'7').contains(d)) {
                    v = v * 8 + u32::from(b[i] - b'0');
                    i += 1;
                    k += 1;
                }
                push_char(&mut text, v);
            }
            b'1'..=b'9' => {
                let octal3 = b.get(i).is_some_and(|d| (b'0'..=b'7').contains(d))
                    && b.get(i + 1).is_some_and(|d| (b'0'..=b'7').contains(d))
                    && (b'1'..=b'7').contains(&n);
                if octal3 {
                    let v = u32::from(n - b'0') * 64
                        + u32::from(b[i] - b'0') * 8
                        + u32::from(b[i + 1] - b'0');
                    i += 2;
                    push_char(&mut text, v);
                    continue;
                }
                let mut g = usize::from(n - b'0');
                if let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
                    g = g * 10 + usize::from(d - b'0');
                    i += 1;
                }
                if g >= groups {
                    return bad(format!("invalid group reference {g}"));
                }
                push_group(&mut text, &mut pieces, g);
            }
            b'a' => text.push(0x07),
            b'b' => text.push(0x08),
            b'f' => text.push(0x0c),
            b'n' => text.push(b'\n'),
            b'r' => text.push(b'\r'),
            b't' => text.push(b'\t'),
            b'v' => text.push(0x0b),
            b'\\' => text.push(b'\\'),
            c if c.is_ascii_alphabetic() => return bad(format!("bad escape \\{}", c as char)),
            c => {
                text.push(b'\\');
                text.push(c);
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// Pushes the character with code `v` as UTF-8.
fn push_char(text: &mut Vec<u8>, v: u32) {
    let c = char::from_u32(v).unwrap_or('\u{fffd}');
    let mut buf = [0u8; 4];
    text.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Expands a parsed template with a match (an unmatched group is empty, as in Python).
fn expand(pieces: &[Piece], caps: &Captures<'_>, out: &mut Vec<u8>) {
    for p in pieces {
        match p {
            Piece::Text(t) => out.extend_from_slice(t),
            Piece::Group(g) => {
                if let Some(m) = caps.get(*g) {
                    out.extend_from_slice(m.as_bytes());
                }
            }
        }
    }
}

/// Python's `re.subn`: replaces every match in `hay`, an empty match included unless it is where
/// the previous empty match was; returns the new text and the count.
fn subn(re: &Regex, pieces: &[Piece], hay: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(hay.len());
    let mut last = 0;
    let mut pos = 0;
    let mut count = 0;
    let mut empty_at = None;
    while pos <= hay.len() {
        let Some(caps) = re.captures_at(hay, pos) else {
            break;
        };
        let Some(m) = caps.get(0) else { break };
        if m.start() == m.end() && empty_at == Some(m.start()) {
            if pos >= hay.len() {
                break;
            }
            pos += utf8_len(hay[pos]);
            continue;
        }
        out.extend_from_slice(&hay[last..m.start()]);
        expand(pieces, &caps, &mut out);
        last = m.end();
        count += 1;
        empty_at = (m.start() == m.end()).then_some(m.end());
        pos = m.end();
    }
    out.extend_from_slice(&hay[last..]);
    (out, count)
}

/// The length of the UTF-8 sequence a byte starts (1 for anything else).
fn utf8_len(b: u8) -> usize {
    match b {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// Reads the file, refusing one over [`MAX_FILE`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let meta = fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), os_msg(&e)))?;
    if meta.len() > MAX_FILE {
        return Err(format!(
            "{} is {} bytes, more than the 64 MiB these modules edit; edit it another way \
             (a template or copy of the whole file)",
            path.display(),
            meta.len()
        ));
    }
    fs::read(path).map_err(|e| format!("cannot read {}: {}", path.display(), os_msg(&e)))
}

/// Splits bytes into lines, each keeping its `\n` (Python's `readlines` of a binary file).
fn split_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// The file the edit is written to: symlinks resolved, as Ansible's `os.path.realpath`.
fn real_path(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The mode `mode` asks for, given the file's mode now (or a new file's default mode).
fn wanted_mode(mode: Option<&Mode>, current: Option<u32>) -> Result<Option<u32>, String> {
    let base = current.unwrap_or(0o666 & !current_umask());
    match mode {
        None => Ok(None),
        Some(Mode::Preserve) => Err("mode=preserve is only valid for copy and template".into()),
        Some(m) => m.resolve(base, false).map(Some),
    }
}

/// Writes `bytes` to `dest` atomically, keeping its mode and owner (or giving it `mode`), after
/// `validate` accepted the temporary file.
fn write_changes(
    dest: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    validate: Option<&str>,
) -> Result<(), String> {
    let dest = real_path(dest);
    let name = dest
        .file_name()
        .ok_or_else(|| format!("{} does not name a file", dest.display()))?;
    let dir = parent_dir(&dest);
    let existing = fs::metadata(&dest).ok().filter(fs::Metadata::is_file);
    let final_mode = mode.or_else(|| existing.as_ref().map(|m| m.mode() & 0o7777));
    let tmp = temp_path(&dir, name);
    let fail =
        |what: &str, e: &io::Error| format!("cannot {what} {}: {}", dest.display(), os_msg(e));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if final_mode.is_some() { 0o600 } else { 0o666 })
        .open(&tmp)
        .map_err(|e| fail("write a temporary file beside", &e))?;
    let written = (|| -> io::Result<()> {
        if let Some(meta) = &existing {
            // Keeping the owner needs privileges; without them the agent's own owner stays.
            let _ = nix::unistd::fchown(
                &file,
                Some(Uid::from_raw(meta.uid())),
                Some(Gid::from_raw(meta.gid())),
            );
        }
        file.write_all(bytes)?;
        if let Some(m) = final_mode {
            file.set_permissions(Permissions::from_mode(m))?;
        }
        file.sync_all()
    })();
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(fail("write", &e));
    }
    if let Some(cmd) = validate
        && let Err(e) = run_validate(cmd, &tmp)
    {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    rename_into_place(&tmp, &dest).map_err(|e| fail("replace", &e))
}

/// Runs `validate` with `%s` as `tmp`; an error says why it failed.
fn run_validate(cmd: &str, tmp: &Path) -> Result<(), String> {
    if !cmd.contains("%s") {
        return Err(format!("validate must contain %s: {cmd}"));
    }
    let Some(words) = shlex::split(cmd) else {
        return Err(format!(
            "validate is not a valid command line (unbalanced quotes): {cmd}"
        ));
    };
    let tmp = tmp.to_string_lossy();
    let argv: Vec<String> = words
        .iter()
        .map(|w| w.replace("%s", &tmp).replace("%%", "%"))
        .collect();
    let ran = run_bounded(&argv, &[], Instant::now() + VALIDATE_DEADLINE);
    if ran.success() {
        return Ok(());
    }
    match ran.rc {
        Some(rc) => Err(format!("failed to validate: rc:{rc} error:{}", ran.stderr)),
        None => Err(format!(
            "failed to validate: the command {}",
            ran.describe()
        )),
    }
}

/// Ansible's `backup_local`: copies the file to `<path>.<pid>.<YYYY-MM-DD@HH:MM:SS>~`.
fn backup_local(path: &Path) -> Result<String, String> {
    let stamp = chrono::Local::now().format("%Y-%m-%d@%H:%M:%S~");
    let backup = format!("{}.{}.{stamp}", path.display(), std::process::id());
    fs::copy(path, &backup)
        .and_then(|_| fs::File::open(&backup)?.sync_all())
        .and_then(|()| fsync_dir(&parent_dir(Path::new(&backup))))
        .map_err(|e| {
            format!(
                "cannot back {} up to {backup}: {}",
                path.display(),
                os_msg(&e)
            )
        })?;
    Ok(backup)
}

/// What an edit needs besides the new content.
#[derive(Debug)]
struct Edit<'a> {
    path: &'a Path,
    /// The file's content now; `None` when it does not exist.
    before: Option<&'a [u8]>,
    after: &'a [u8],
    changed: bool,
    mode: Option<Mode>,
    /// `owner`/`group`.
    owner: Owner,
    backup: bool,
    validate: Option<&'a str>,
    check: bool,
}

/// What [`apply`] did.
#[derive(Debug)]
struct Applied {
    /// The mode changed (or would).
    attrs: bool,
    backup: Option<String>,
}

/// Writes the edit (unless check mode) and sets the mode; reports the mode change.
fn apply(e: &Edit<'_>) -> Result<Applied, String> {
    let current = fs::metadata(e.path).ok().map(|m| m.mode() & 0o7777);
    let want = wanted_mode(e.mode.as_ref(), current)?;
    // Ansible creates the file with the default mode and then sets `mode`: a change.
    let default_mode = 0o666 & !current_umask();
    let ids = fs::metadata(e.path).ok().map(|m| (m.uid(), m.gid()));
    let (my_uid, my_gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let (uid, gid) = ids.unwrap_or((my_uid, my_gid));
    let owner_differs =
        e.owner.uid.is_some_and(|u| u != uid) || e.owner.gid.is_some_and(|g| g != gid);
    let attrs = owner_differs
        || match want {
            Some(w) => w != current.unwrap_or(default_mode),
            None => false,
        };
    let mut backup = None;
    if e.check {
        return Ok(Applied { attrs, backup });
    }
    if e.changed {
        if e.backup && e.before.is_some() {
            backup = Some(backup_local(e.path)?);
        }
        if e.before.is_none() {
            let dir = parent_dir(e.path);
            if fs::metadata(&dir).is_err() {
                fs::create_dir_all(&dir).map_err(|err| {
                    format!("Error creating {} ({})", dir.display(), os_msg(&err))
                })?;
            }
        }
        write_changes(e.path, e.after, want, e.validate)?;
    } else if attrs && let Some(w) = want {
        fs::set_permissions(real_path(e.path), Permissions::from_mode(w)).map_err(|err| {
            format!(
                "cannot set the mode of {}: {}",
                e.path.display(),
                os_msg(&err)
            )
        })?;
    }
    if owner_differs {
        std::os::unix::fs::chown(real_path(e.path), e.owner.uid, e.owner.gid)
            .map_err(|err| format!("chown failed on {}: {}", e.path.display(), os_msg(&err)))?;
    }
    Ok(Applied { attrs, backup })
}

/// Ansible's `check_file_attrs`: the message and changed flag once the mode is counted.
fn with_attrs(msg: String, changed: bool, attrs: bool) -> (String, bool) {
    if !attrs {
        return (msg, changed);
    }
    if changed {
        (format!("{msg} and {ATTRS_CHANGED}"), true)
    } else {
        (ATTRS_CHANGED.to_string(), true)
    }
}

/// The content diff (and Ansible's empty attribute diff) of `path`.
fn diff_list(path: &str, before: &[u8], after: &[u8]) -> Value {
    json!([
        {
            "before": String::from_utf8_lossy(before),
            "after": String::from_utf8_lossy(after),
            "before_header": format!("{path} (content)"),
            "after_header": format!("{path} (content)"),
        },
        {
            "before_header": format!("{path} (file attributes)"),
            "after_header": format!("{path} (file attributes)"),
        }
    ])
}

/// A failed result with `rc`.
fn failed_rc(rc: i64, msg: String) -> ModuleResult {
    let mut r = failed(msg);
    r.insert("rc".into(), json!(rc));
    r
}

/// The `path` argument, expanded, and its text as Ansible shows it.
fn path_arg(args: &Map<String, Value>) -> (PathBuf, String) {
    let path = expand_user(arg_str(args, "path").unwrap_or_default());
    let shown = path.to_string_lossy().into_owned();
    (path, shown)
}

// ---------------------------------------------------------------------------------------------
// lineinfile
// ---------------------------------------------------------------------------------------------

/// Compiles a per-line pattern (lineinfile and blockinfile search one line at a time).
fn line_regex(pat: &str) -> Result<Regex, String> {
    compile(pat, Dollar::Line, false, "")
}

fn run_lineinfile(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    match lineinfile(args, ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// The arguments every text module starts from: the path (and how to show it), `mode`, and
/// `owner`/`group`.
fn file_args(
    args: &Map<String, Value>,
) -> Result<(PathBuf, String, Option<Mode>, Owner), ModuleResult> {
    let (path, shown) = path_arg(args);
    let mode = opt_mode(args).map_err(failed)?;
    let owner = opt_owner(args).map_err(failed)?;
    Ok((path, shown, mode, owner))
}

fn lineinfile(
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
) -> Result<ModuleResult, ModuleResult> {
    let (path, shown, mode, owner) = file_args(args)?;
    if path.is_dir() {
        return Err(failed_rc(256, format!("Path {shown} is a directory !")));
    }
    let regexp = arg_str(args, "regexp");
    let search = arg_str(args, "search_string");
    let line = arg_str(args, "line");
    let backrefs = arg_bool(args, "backrefs").unwrap_or(false);
    let firstmatch = arg_bool(args, "firstmatch").unwrap_or(false);
    let create = arg_bool(args, "create").unwrap_or(false);
    let backup = arg_bool(args, "backup").unwrap_or(false);
    let validate = arg_str(args, "validate");
    let present = arg_str(args, "state") != Some("absent");
    let re = regexp.map(line_regex).transpose().map_err(failed)?;

    if !present {
        if regexp.is_none() && search.is_none() && line.is_none() {
            return Err(failed(
                "one of line, search_string, or regexp is required with state=absent",
            ));
        }
        if fs::metadata(&path).is_err() {
            let mut r = ok(false);
            r.insert("msg".into(), json!("file not present"));
            return Ok(r);
        }
        let before = read_bounded(&path).map_err(failed)?;
        let line_b = line.unwrap_or("None").as_bytes();
        let mut found = 0usize;
        let mut kept = Vec::with_capacity(before.len());
        for l in split_lines(&before) {
            let hit = match (&re, search) {
                (Some(re), _) => re.is_match(&l),
                (None, Some(s)) => contains(&l, s.as_bytes()),
                (None, None) => trim_eol(&l) == line_b,
            };
            if hit {
                found += 1;
            } else {
                kept.extend_from_slice(&l);
            }
        }
        let changed = found > 0;
        let applied = apply(&Edit {
            path: &path,
            before: Some(&before),
            after: &kept,
            changed,
            mode,
            owner,
            backup,
            validate,
            check: ctx.check,
        })
        .map_err(failed)?;
        let msg = if changed {
            format!("{found} line(s) removed")
        } else {
            String::new()
        };
        let (msg, changed) = with_attrs(msg, changed, applied.attrs);
        let mut r = ok(changed);
        r.insert("found".into(), json!(found));
        r.insert("msg".into(), json!(msg));
        r.insert("backup".into(), json!(applied.backup.unwrap_or_default()));
        r.insert("diff".into(), diff_list(&shown, &before, &kept));
        return Ok(r);
    }

    if backrefs && regexp.is_none() {
        return Err(failed("regexp is required with backrefs=true"));
    }
    let Some(line) = line else {
        return Err(failed("line is required with state=present"));
    };
    let (mut insertafter, insertbefore) =
        (arg_str(args, "insertafter"), arg_str(args, "insertbefore"));
    if insertafter.is_none() && insertbefore.is_none() {
        insertafter = Some("EOF");
    }
    let exists = fs::metadata(&path).is_ok();
    let before = if exists {
        Some(read_bounded(&path).map_err(failed)?)
    } else if create {
        None
    } else {
        return Err(failed_rc(
            257,
            format!("Destination {shown} does not exist !"),
        ));
    };
    let original: &[u8] = before.as_deref().unwrap_or_default();
    let ins_re = match (insertafter, insertbefore) {
        (Some(a), _) if a != "BOF" && a != "EOF" => Some(line_regex(a).map_err(failed)?),
        (None, Some(b)) if b != "BOF" => Some(line_regex(b).map_err(failed)?),
        _ => None,
    };
    let (lines, msg) = lineinfile_present(
        split_lines(original),
        &LinePresent {
            re: re.as_ref(),
            search,
            line: line.as_bytes(),
            insertafter,
            insertbefore,
            ins_re: ins_re.as_ref(),
            backrefs,
            firstmatch,
        },
    )
    .map_err(failed)?;
    let changed = !msg.is_empty();
    let after = lines.concat();
    let applied = apply(&Edit {
        path: &path,
        before: before.as_deref(),
        after: &after,
        changed,
        mode,
        owner,
        backup,
        validate,
        check: ctx.check,
    })
    .map_err(failed)?;
    let (msg, changed) = if ctx.check && !exists {
        (msg, changed)
    } else {
        with_attrs(msg, changed, applied.attrs)
    };
    let mut r = ok(changed);
    r.insert("msg".into(), json!(msg));
    r.insert("backup".into(), json!(applied.backup.unwrap_or_default()));
    r.insert("diff".into(), diff_list(&shown, original, &after));
    Ok(r)
}

/// What `lineinfile` with `state: present` looks for and inserts.
#[derive(Debug)]
struct LinePresent<'a> {
    re: Option<&'a Regex>,
    search: Option<&'a str>,
    line: &'a [u8],
    insertafter: Option<&'a str>,
    insertbefore: Option<&'a str>,
    ins_re: Option<&'a Regex>,
    backrefs: bool,
    firstmatch: bool,
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

fn trim_eol(l: &[u8]) -> &[u8] {
    let mut end = l.len();
    while end > 0 && matches!(l[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &l[..end]
}

fn ends_eol(l: &[u8]) -> bool {
    matches!(l.last(), Some(b'\n' | b'\r'))
}

fn with_nl(l: &[u8]) -> Vec<u8> {
    let mut v = l.to_vec();
    v.push(b'\n');
    v
}

/// Ansible's `present` of lineinfile on `lines`: the new lines and the message (empty: no change).
fn lineinfile_present(
    mut lines: Vec<Vec<u8>>,
    p: &LinePresent<'_>,
) -> Result<(Vec<Vec<u8>>, String), String> {
    let mut index: [isize; 2] = [-1, -1];
    let mut matched: Option<usize> = None;
    let mut exact = false;
    if let Some(re) = p.re {
        for (n, l) in lines.iter().enumerate() {
            if re.is_match(l) {
                index[0] = n as isize;
                matched = Some(n);
                if p.firstmatch {
                    break;
                }
            }
        }
    }
    if let Some(s) = p.search {
        for (n, l) in lines.iter().enumerate() {
            if contains(l, s.as_bytes()) {
                index[0] = n as isize;
                matched = Some(n);
                if p.firstmatch {
                    break;
                }
            }
        }
    }
    if matched.is_none() {
        for (n, l) in lines.iter().enumerate() {
            if trim_eol(l) == p.line {
                index[0] = n as isize;
                exact = true;
            } else if p.ins_re.is_some_and(|r| r.is_match(l)) {
                if p.insertafter.is_some() {
                    index[1] = n as isize + 1;
                    if p.firstmatch {
                        break;
                    }
                }
                if p.insertbefore.is_some() {
                    index[1] = n as isize;
                    if p.firstmatch {
                        break;
                    }
                }
            }
        }
    }
    let added = || "line added".to_string();
    let mut msg = String::new();
    if index[0] != -1 {
        let i0 = index[0] as usize;
        let mut new_line = match (p.backrefs, matched, p.re) {
            (true, Some(n), Some(re)) => {
                let pieces = parse_template(&String::from_utf8_lossy(p.line), re)?;
                let mut out = Vec::new();
                if let Some(caps) = re.captures(&lines[n]) {
                    expand(&pieces, &caps, &mut out);
                }
                out
            }
            _ => p.line.to_vec(),
        };
        if !new_line.ends_with(b"\n") {
            new_line.push(b'\n');
        }
        // index[0] is set only by a match or the exact line, so this replaces (or keeps) it.
        let _ = exact;
        if lines[i0] != new_line {
            lines[i0] = new_line;
            msg = "line replaced".into();
        }
        return Ok((lines, msg));
    }
    if p.backrefs {
        return Ok((lines, msg));
    }
    if p.insertbefore == Some("BOF") || p.insertafter == Some("BOF") {
        lines.insert(0, with_nl(p.line));
        return Ok((lines, added()));
    }
    if p.insertafter == Some("EOF") || index[1] == -1 {
        if lines.last().is_some_and(|l| !ends_eol(l)) {
            lines.push(b"\n".to_vec());
        }
        lines.push(with_nl(p.line));
        return Ok((lines, added()));
    }
    let i1 = index[1] as usize;
    if p.insertafter.is_some() {
        if lines.len() == i1 {
            if trim_eol(&lines[i1 - 1]) != p.line {
                lines.push(with_nl(p.line));
                msg = added();
            }
        } else if trim_eol(&lines[i1]) != p.line {
            lines.insert(i1, with_nl(p.line));
            msg = added();
        }
        return Ok((lines, msg));
    }
    lines.insert(i1, with_nl(p.line));
    Ok((lines, added()))
}

// ---------------------------------------------------------------------------------------------
// replace
// ---------------------------------------------------------------------------------------------

fn run_replace(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    match replace(args, ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn replace(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> Result<ModuleResult, ModuleResult> {
    let (path, shown, mode, owner) = file_args(args)?;
    let encoding = arg_str(args, "encoding").unwrap_or("utf-8");
    if !matches!(encoding.to_ascii_lowercase().as_str(), "utf-8" | "utf8") {
        return Err(failed(format!(
            "encoding {encoding} is not supported: Rampart's replace reads utf-8 only; convert \
             the file or edit it with template or copy"
        )));
    }
    if path.is_dir() {
        return Err(failed_rc(256, format!("Path {shown} is a directory !")));
    }
    if fs::metadata(&path).is_err() {
        return Err(failed_rc(257, format!("Path {shown} does not exist !")));
    }
    let contents = read_bounded(&path).map_err(failed)?;
    if std::str::from_utf8(&contents).is_err() {
        return Err(failed(format!(
            "{shown} is not valid utf-8; replace edits utf-8 text only"
        )));
    }
    let after = arg_str(args, "after").filter(|s| !s.is_empty());
    let before = arg_str(args, "before").filter(|s| !s.is_empty());
    let section_pat = match (after, before) {
        (Some(a), Some(b)) => Some(format!("{a}(?P<subsection>.*?){b}")),
        (Some(a), None) => Some(format!("{a}(?P<subsection>.*)")),
        (None, Some(b)) => Some(format!("(?P<subsection>.*){b}")),
        (None, None) => None,
    };
    let mut r = ok(false);
    r.insert("rc".into(), json!(0));
    let (start, end) = match &section_pat {
        Some(pat) => {
            let re = compile(pat, Dollar::Text, true, "(?s)").map_err(failed)?;
            match re.captures(&contents).and_then(|c| c.name("subsection")) {
                Some(m) => (m.start(), m.end()),
                None => {
                    r.insert(
                        "msg".into(),
                        json!(format!(
                            "Pattern for before/after params did not match the given file: {pat}"
                        )),
                    );
                    return Ok(r);
                }
            }
        }
        None => (0, contents.len()),
    };
    let regexp = arg_str(args, "regexp").unwrap_or_default();
    let re = compile(regexp, Dollar::Multi, true, "(?m)").map_err(failed)?;
    let pieces = parse_template(arg_str(args, "replace").unwrap_or_default(), &re)
        .map_err(|e| failed(format!("Unable to process replace due to error: {e}")))?;
    let section = &contents[start..end];
    let (new_section, count) = subn(&re, &pieces, section);
    let changed = count > 0 && new_section != section;
    let mut new = Vec::with_capacity(contents.len());
    new.extend_from_slice(&contents[..start]);
    new.extend_from_slice(&new_section);
    new.extend_from_slice(&contents[end..]);
    let applied = apply(&Edit {
        path: &path,
        before: Some(&contents),
        after: &new,
        changed,
        mode,
        owner,
        backup: arg_bool(args, "backup").unwrap_or(false),
        validate: arg_str(args, "validate"),
        check: ctx.check,
    })
    .map_err(failed)?;
    let msg = if changed {
        format!("{count} replacements made")
    } else {
        String::new()
    };
    if changed {
        r.insert(
            "diff".into(),
            json!({
                "before_header": shown,
                "before": String::from_utf8_lossy(&contents),
                "after_header": shown,
                "after": String::from_utf8_lossy(&new),
            }),
        );
    }
    if let Some(b) = applied.backup {
        r.insert("backup_file".into(), json!(b));
    }
    let (msg, changed) = with_attrs(msg, changed, applied.attrs);
    r.insert("changed".into(), json!(changed));
    r.insert("msg".into(), json!(msg));
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// blockinfile
// ---------------------------------------------------------------------------------------------

fn run_blockinfile(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    match blockinfile(args, ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// Whether a Python pattern turns `re.MULTILINE` on with a leading inline flag (`(?m)`).
fn has_multiline_flag(pat: &str) -> bool {
    pat.strip_prefix("(?")
        .and_then(|rest| rest.split_once(')'))
        .is_some_and(|(flags, _)| {
            flags.chars().all(|c| "aiLmsux".contains(c)) && flags.contains('m')
        })
}

fn blockinfile(
    args: &Map<String, Value>,
    ctx: &ModuleCtx<'_>,
) -> Result<ModuleResult, ModuleResult> {
    let (path, shown, mode, owner) = file_args(args)?;
    if path.is_dir() {
        return Err(failed_rc(256, format!("Path {shown} is a directory !")));
    }
    let exists = fs::metadata(&path).is_ok();
    let original = if exists {
        Some(read_bounded(&path).map_err(failed)?)
    } else if arg_bool(args, "create").unwrap_or(false) {
        None
    } else {
        return Err(failed_rc(257, format!("Path {shown} does not exist !")));
    };
    let present = arg_str(args, "state") != Some("absent");
    if !present && !exists {
        let mut r = ok(false);
        r.insert("msg".into(), json!(format!("File {shown} not present")));
        return Ok(r);
    }
    let orig: &[u8] = original.as_deref().unwrap_or_default();
    let mut lines = split_lines(orig);
    let (mut insertafter, insertbefore) =
        (arg_str(args, "insertafter"), arg_str(args, "insertbefore"));
    if insertafter.is_none() && insertbefore.is_none() {
        insertafter = Some("EOF");
    }
    let ins_pat = match (insertafter, insertbefore) {
        (Some(a), _) if a != "EOF" => Some(a),
        (None, Some(b)) if b != "BOF" => Some(b),
        _ => None,
    };
    let marker = arg_str(args, "marker").unwrap_or("# {mark} ANSIBLE MANAGED BLOCK");
    let begin = arg_str(args, "marker_begin").unwrap_or("BEGIN");
    let end = arg_str(args, "marker_end").unwrap_or("END");
    let marker0 = with_nl(marker.replace("{mark}", begin).as_bytes());
    let marker1 = with_nl(marker.replace("{mark}", end).as_bytes());
    let mut block = arg_str(args, "block")
        .unwrap_or_default()
        .as_bytes()
        .to_vec();
    let blocklines: Vec<Vec<u8>> = if present && !block.is_empty() {
        if !block.ends_with(b"\n") {
            block.push(b'\n');
        }
        let mut v = vec![marker0.clone()];
        v.extend(split_lines(&block));
        v.push(marker1.clone());
        v
    } else {
        Vec::new()
    };
    let (mut n0, mut n1) = (None, None);
    for (i, l) in lines.iter().enumerate() {
        if *l == marker0 {
            n0 = Some(i);
        }
        if *l == marker1 {
            n1 = Some(i);
        }
    }
    let mut at = match (n0, n1) {
        (Some(a), Some(b)) if a < b => {
            lines.drain(a..=b);
            a
        }
        (Some(a), Some(b)) => {
            lines.drain(b..=a);
            b
        }
        _ => match ins_pat {
            Some(pat) => {
                let mut found = None;
                if has_multiline_flag(pat) {
                    let re = compile(pat, Dollar::Multi, false, "").map_err(failed)?;
                    if let Some(m) = re.find(orig) {
                        let upto = if insertafter.is_some() {
                            m.end()
                        } else {
                            m.start()
                        };
                        found = Some(orig[..upto].iter().filter(|&&b| b == b'\n').count());
                    }
                } else {
                    let re = line_regex(pat).map_err(failed)?;
                    for (i, l) in lines.iter().enumerate() {
                        if re.is_match(l) {
                            found = Some(i);
                        }
                    }
                }
                match found {
                    None => lines.len(),
                    Some(i) if insertafter.is_some() => i + 1,
                    Some(i) => i,
                }
            }
            None if insertbefore.is_some() => 0,
            None => lines.len(),
        },
    };
    if at > 0 && !lines[at - 1].ends_with(b"\n") {
        lines[at - 1].push(b'\n');
    }
    let blank = b"\n".to_vec();
    if present
        && arg_bool(args, "prepend_newline").unwrap_or(false)
        && at != 0
        && lines[at - 1] != blank
    {
        lines.insert(at, blank.clone());
        at += 1;
    }
    let count = blocklines.len();
    lines.splice(at..at, blocklines);
    if present && arg_bool(args, "append_newline").unwrap_or(false) {
        let after_block = at + count;
        if after_block < lines.len() && lines[after_block] != blank {
            lines.insert(after_block, blank);
        }
    }
    let result = lines.concat();
    let (msg, changed) = match &original {
        Some(o) if *o == result => ("", false),
        None => ("File created", true),
        Some(_) if count == 0 => ("Block removed", true),
        Some(_) => ("Block inserted", true),
    };
    let applied = apply(&Edit {
        path: &path,
        before: original.as_deref(),
        after: &result,
        changed,
        mode,
        owner,
        backup: arg_bool(args, "backup").unwrap_or(false),
        validate: arg_str(args, "validate"),
        check: ctx.check,
    })
    .map_err(failed)?;
    let (msg, changed) = if ctx.check && !exists {
        (msg.to_string(), changed)
    } else {
        with_attrs(msg.to_string(), changed, applied.attrs)
    };
    let mut r = ok(changed);
    r.insert("msg".into(), json!(msg));
    r.insert("diff".into(), diff_list(&shown, orig, &result));
    if let Some(b) = applied.backup {
        r.insert("backup_file".into(), json!(b));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::Call;

    fn run(spec: &ModuleSpec, args: Value) -> ModuleResult {
        Call::default().run(spec, args)
    }

    fn check(spec: &ModuleSpec, args: Value) -> ModuleResult {
        Call {
            check: true,
            ..Call::default()
        }
        .run(spec, args)
    }

    fn file_with(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("conf");
        fs::write(&p, content).unwrap();
        (dir, p)
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    fn py_sub(pat: &str, repl: &str, hay: &str) -> (String, usize) {
        let re = compile(pat, Dollar::Multi, true, "(?m)").unwrap();
        let pieces = parse_template(repl, &re).unwrap();
        let (out, n) = subn(&re, &pieces, hay.as_bytes());
        (String::from_utf8(out).unwrap(), n)
    }

    #[test]
    fn substitution_follows_python_re_sub() {
        // Expected values are Python 3's.
        assert_eq!(py_sub("x*", "-", "abxd"), ("-a-b--d-".into(), 5));
        assert_eq!(
            py_sub(r"^(\w+)=(.*)$", r"\2=\g<1>\n", "a=1\nb=2\n"),
            ("1=a\n\n2=b\n\n".into(), 2)
        );
        assert_eq!(py_sub("^", "> ", "a\nb\n"), ("> a\n> b\n> ".into(), 3));
        assert_eq!(py_sub("a{,2}", "X", "aaaa"), ("XXX".into(), 3));
        assert_eq!(py_sub("{mark}", "X", "a {mark} b"), ("a X b".into(), 1));
        assert_eq!(py_sub(r"(?P<k>\w+)", r"[\g<k>]", "ab cd").0, "[ab] [cd]");
        assert_eq!(py_sub(r"a(b)?", r"<\1>", "a").0, "<>");
        assert_eq!(py_sub(r"\.", r"\\", "a.b").0, r"a\b");
    }

    #[test]
    fn python_only_syntax_is_translated_or_refused() {
        let line = line_regex(r"^port=(\d+)$").unwrap();
        assert!(line.is_match(b"port=80\n"));
        assert!(!line.is_match(b"port=80x\n"));
        assert!(!line_regex("^$").unwrap().is_match(b"abc\n"));
        assert!(line_regex(r"x\Z").unwrap().is_match(b"ax"));
        assert!(line_regex(r"[[]").unwrap().is_match(b"a[b"));
        assert!(line_regex(r"\<b\>").unwrap().is_match(b"a<b>"));
        assert!(line_regex("é").unwrap().is_match("café\n".as_bytes()));
        for bad in [r"a(?=b)", r"(?<!a)b", r"(a)\1", r"(?P<x>a)(?P=x)"] {
            let e = line_regex(bad).unwrap_err();
            assert!(e.contains("does not support"), "{bad}: {e}");
        }
        let re = line_regex("(a)").unwrap();
        assert!(parse_template(r"\2", &re).is_err());
        assert!(parse_template(r"\q", &re).is_err());
        assert!(parse_template(r"\g<nope>", &re).is_err());
    }

    #[test]
    fn lineinfile_adds_once_and_inserts_where_asked() {
        let (_d, p) = file_with("a=1\nb=2");
        let args = |line: &str, extra: Value| {
            let mut a = json!({"path": p, "line": line});
            a.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            a
        };
        let r = run(&LINEINFILE, args("c=3", json!({})));
        assert_eq!(
            (r["changed"].clone(), r["msg"].clone()),
            (json!(true), json!("line added"))
        );
        assert_eq!(read(&p), "a=1\nb=2\nc=3\n");
        let r = run(&LINEINFILE, args("c=3", json!({})));
        assert_eq!(
            (r["changed"].clone(), r["msg"].clone()),
            (json!(false), json!(""))
        );
        run(&LINEINFILE, args("a2", json!({"insertafter": "^a="})));
        run(&LINEINFILE, args("top", json!({"insertbefore": "BOF"})));
        run(&LINEINFILE, args("pre-b", json!({"insertbefore": "^b="})));
        assert_eq!(read(&p), "top\na=1\na2\npre-b\nb=2\nc=3\n");
        // An insertafter matching nothing appends.
        run(&LINEINFILE, args("z", json!({"insertafter": "^nothing"})));
        assert!(read(&p).ends_with("c=3\nz\n"));
    }

    #[test]
    fn lineinfile_replaces_the_last_or_first_match_and_expands_backrefs() {
        let (_d, p) = file_with("host=a\nhost=b\nport=80\n");
        let r = run(
            &LINEINFILE,
            json!({"path": p, "regexp": "^host=", "line": "host=c"}),
        );
        assert_eq!(r["msg"], json!("line replaced"));
        assert_eq!(read(&p), "host=a\nhost=c\nport=80\n");
        run(
            &LINEINFILE,
            json!({"path": p, "regexp": "^host=", "line": "host=0", "firstmatch": true}),
        );
        assert_eq!(read(&p), "host=0\nhost=c\nport=80\n");
        let r = run(
            &LINEINFILE,
            json!({"path": p, "regexp": r"^port=(?P<n>\d+)$", "line": r"listen=\g<n>", "backrefs": true}),
        );
        assert_eq!(r["changed"], json!(true));
        assert_eq!(read(&p), "host=0\nhost=c\nlisten=80\n");
        let r = run(
            &LINEINFILE,
            json!({"path": p, "regexp": "^none=(.*)", "line": r"x=\1", "backrefs": true}),
        );
        assert_eq!(r["changed"], json!(false));
        run(
            &LINEINFILE,
            json!({"path": p, "search_string": "=c", "line": "host=d"}),
        );
        assert_eq!(read(&p), "host=0\nhost=d\nlisten=80\n");
    }

    #[test]
    fn lineinfile_absent_counts_what_it_removes() {
        let (_d, p) = file_with("# a\nx\n# b\n");
        let r = run(
            &LINEINFILE,
            json!({"path": p, "regexp": "^#", "state": "absent"}),
        );
        assert_eq!(r["msg"], json!("2 line(s) removed"));
        assert_eq!(r["found"], json!(2));
        assert_eq!(read(&p), "x\n");
        let r = run(
            &LINEINFILE,
            json!({"path": p, "line": "x", "state": "absent"}),
        );
        assert_eq!(r["found"], json!(1));
        let r = run(
            &LINEINFILE,
            json!({"path": p, "line": "x", "state": "absent"}),
        );
        assert_eq!(r["changed"], json!(false));
        let gone = p.with_file_name("gone");
        let r = run(
            &LINEINFILE,
            json!({"path": gone, "line": "x", "state": "absent"}),
        );
        assert_eq!(r["msg"], json!("file not present"));
    }

    #[test]
    fn lineinfile_missing_file_fails_unless_create() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/new");
        let r = run(&LINEINFILE, json!({"path": p, "line": "x"}));
        assert_eq!(r["failed"], json!(true));
        assert_eq!(r["rc"], json!(257));
        assert_eq!(
            r["msg"],
            json!(format!("Destination {} does not exist !", p.display()))
        );
        let r = check(&LINEINFILE, json!({"path": p, "line": "x", "create": true}));
        assert_eq!(
            (r["changed"].clone(), r["msg"].clone()),
            (json!(true), json!("line added"))
        );
        assert!(!p.exists() && !p.parent().unwrap().exists());
        let r = run(
            &LINEINFILE,
            json!({"path": p, "line": "x", "create": true, "mode": "0600"}),
        );
        assert_eq!(
            r["msg"],
            json!("line added and ownership, perms or SE linux context changed")
        );
        assert_eq!(read(&p), "x\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        let r = run(
            &LINEINFILE,
            json!({"path": p, "line": "x", "create": true, "mode": "0600"}),
        );
        assert_eq!(r["changed"], json!(false));
        let r = run(&LINEINFILE, json!({"path": dir.path(), "line": "x"}));
        assert_eq!(r["rc"], json!(256));
    }

    #[test]
    fn owner_and_group_are_set_and_counted_as_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("conf");
        fs::write(&p, "a=1\n").unwrap();
        let r = run(
            &LINEINFILE,
            json!({"path": p, "line": "a=1", "owner": "rampart-no-such-user"}),
        );
        assert!(
            r["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("failed to look up user"),
            "{r:?}"
        );
        if nix::unistd::geteuid().is_root() {
            let nobody = nix::unistd::User::from_name("nobody")
                .unwrap()
                .unwrap()
                .uid
                .as_raw();
            let r = run(
                &LINEINFILE,
                json!({"path": p, "line": "a=1", "owner": "nobody"}),
            );
            assert_eq!(r["changed"], json!(true), "{r:?}");
            assert_eq!(r["msg"], json!(ATTRS_CHANGED));
            assert_eq!(fs::metadata(&p).unwrap().uid(), nobody);
            let r = run(
                &LINEINFILE,
                json!({"path": p, "line": "b=2", "owner": "nobody"}),
            );
            assert_eq!(r["msg"], json!("line added"), "{r:?}");
            assert_eq!(
                fs::metadata(&p).unwrap().uid(),
                nobody,
                "the write lost the owner"
            );
        }
    }

    #[test]
    fn check_mode_changes_nothing_and_reports_the_diff() {
        let (_d, p) = file_with("a\n");
        let r = check(&LINEINFILE, json!({"path": p, "line": "b", "backup": true}));
        assert_eq!(r["changed"], json!(true));
        assert_eq!(r["diff"][0]["after"], json!("a\nb\n"));
        assert_eq!(r["backup"], json!(""));
        assert_eq!(read(&p), "a\n");
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_validation_leaves_the_file() {
        let (_d, p) = file_with("a\n");
        let r = run(
            &LINEINFILE,
            json!({"path": p, "line": "b", "validate": "false %s"}),
        );
        assert_eq!(r["failed"], json!(true), "{r:?}");
        assert!(
            r["msg"]
                .as_str()
                .unwrap()
                .starts_with("failed to validate: rc:1")
        );
        let r = run(
            &LINEINFILE,
            json!({"path": p, "line": "b", "validate": "true"}),
        );
        assert!(r["msg"].as_str().unwrap().contains("%s"));
        assert_eq!(read(&p), "a\n");
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        let r = run(
            &LINEINFILE,
            json!({"path": p, "line": "b", "validate": "grep -q b %s"}),
        );
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert_eq!(read(&p), "a\nb\n");
    }

    #[test]
    fn writes_keep_the_mode_follow_links_and_back_up() {
        let (d, p) = file_with("a\n");
        fs::set_permissions(&p, Permissions::from_mode(0o640)).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let r = run(
            &LINEINFILE,
            json!({"path": link, "regexp": "a", "line": "b", "backup": true}),
        );
        assert_eq!(r["msg"], json!("line replaced"));
        assert_eq!(read(&p), "b\n");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        let backup = r["backup"].as_str().unwrap();
        assert_eq!(fs::read_to_string(backup).unwrap(), "a\n");
    }

    #[test]
    fn a_file_over_64_mib_is_refused() {
        let (_d, p) = file_with("");
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(MAX_FILE + 1)
            .unwrap();
        let r = run(&LINEINFILE, json!({"path": p, "line": "a"}));
        assert!(r["msg"].as_str().unwrap().contains("64 MiB"), "{r:?}");
    }

    #[test]
    fn replace_between_after_and_before() {
        let (_d, p) = file_with("a\n[s]\na\n[e]\na\n");
        let r = run(
            &REPLACE,
            json!({"path": p, "regexp": "^a$", "replace": "b", "after": r"\[s\]", "before": r"\[e\]"}),
        );
        assert_eq!(r["msg"], json!("1 replacements made"));
        assert_eq!(read(&p), "a\n[s]\nb\n[e]\na\n");
        let r = check(
            &REPLACE,
            json!({"path": p, "regexp": "^b$", "replace": "c"}),
        );
        assert_eq!(
            (r["msg"].clone(), r["rc"].clone()),
            (json!("1 replacements made"), json!(0))
        );
        let r = run(
            &REPLACE,
            json!({"path": p, "regexp": "^b$", "replace": "c", "backup": true}),
        );
        let backup = r["backup_file"].as_str().unwrap();
        assert_eq!(fs::read_to_string(backup).unwrap(), "a\n[s]\nb\n[e]\na\n");
        assert_eq!(read(&p), "a\n[s]\nc\n[e]\na\n");
        let r = run(
            &REPLACE,
            json!({"path": p, "regexp": "x", "after": "nomatch"}),
        );
        assert_eq!(r["changed"], json!(false));
        assert!(
            r["msg"]
                .as_str()
                .unwrap()
                .starts_with("Pattern for before/after")
        );
        let r = run(
            &REPLACE,
            json!({"path": p.with_file_name("no"), "regexp": "x"}),
        );
        assert_eq!(
            (r["rc"].clone(), r["failed"].clone()),
            (json!(257), json!(true))
        );
    }

    #[test]
    fn blockinfile_inserts_updates_and_removes_between_markers() {
        let (_d, p) = file_with("first\nlast");
        let r = check(&BLOCKINFILE, json!({"path": p, "block": "one\n"}));
        assert_eq!(
            (r["msg"].clone(), read(&p)),
            (json!("Block inserted"), "first\nlast".into())
        );
        let r = run(&BLOCKINFILE, json!({"path": p, "block": "one\n"}));
        assert_eq!(r["msg"], json!("Block inserted"));
        let block = "# BEGIN ANSIBLE MANAGED BLOCK\none\n# END ANSIBLE MANAGED BLOCK\n";
        assert_eq!(read(&p), format!("first\nlast\n{block}"));
        assert_eq!(
            run(&BLOCKINFILE, json!({"path": p, "block": "one"}))["changed"],
            json!(false)
        );
        run(
            &BLOCKINFILE,
            json!({"path": p, "block": "x", "marker": "<{mark}>", "insertbefore": "BOF",
                   "marker_begin": "b", "marker_end": "e", "append_newline": true}),
        );
        assert_eq!(read(&p), format!("<b>\nx\n<e>\n\nfirst\nlast\n{block}"));
        run(
            &BLOCKINFILE,
            json!({"path": p, "block": "y", "marker": "# {mark} y", "insertafter": "^first$",
                   "prepend_newline": true}),
        );
        assert_eq!(
            read(&p),
            format!("<b>\nx\n<e>\n\nfirst\n\n# BEGIN y\ny\n# END y\nlast\n{block}")
        );
        let r = run(
            &BLOCKINFILE,
            json!({"path": p, "state": "absent", "marker": "# {mark} y"}),
        );
        assert_eq!(r["msg"], json!("Block removed"));
        run(&BLOCKINFILE, json!({"path": p, "block": "two"}));
        assert!(
            read(&p).ends_with("# BEGIN ANSIBLE MANAGED BLOCK\ntwo\n# END ANSIBLE MANAGED BLOCK\n")
        );
        let missing = p.with_file_name("missing");
        let r = run(&BLOCKINFILE, json!({"path": missing, "block": "x"}));
        assert_eq!(r["rc"], json!(257));
        let r = run(
            &BLOCKINFILE,
            json!({"path": missing, "block": "x", "create": true}),
        );
        assert_eq!(r["msg"], json!("File created"));
        assert!(has_multiline_flag("(?m)^a") && !has_multiline_flag("^a"));
    }
}
