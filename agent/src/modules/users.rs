//! `user` and `group`: local accounts and groups, through the shadow tools (`useradd`,
//! `usermod`, `userdel`, `groupadd`, `groupmod`, `groupdel`), with Ansible's arguments and results.
//!
//! Inputs, `group`: `name`, `state` (`present`, the default, or `absent`), `gid`, `system`
//! (`groupadd -r`), `non_unique` (`-o`, needs `gid`), `force` (`groupdel -f`). `user`: `name`,
//! `state`, `uid`, `non_unique`, `group` (primary, must exist), `groups` (supplementary; with
//! `append: true` added to the current ones, else exactly these), `comment`, `home`, `shell`,
//! `password` (an already encrypted hash, as in /etc/shadow), `create_home` (default true),
//! `move_home`, `system`, `remove` (`userdel -r`), `force` (`userdel -f`).
//!
//! Deciding: /etc/passwd, /etc/group and /etc/shadow are read (each at most 64 MiB) and compared
//! with the arguments; a tool runs only when something differs, with only the options that
//! differ. A present user whose home directory is missing gets it (mode 0755, owned by the user).
//!
//! Outputs, as Ansible: `group`: `name`, `state`, `changed`, and when the group exists `gid` and
//! `system`. `user`: `name`, `state`, `changed`; for a present user `uid`, `group` (the primary
//! gid), `comment`, `home`, `shell`, `groups` (when given, comma-separated), plus `system` and
//! `create_home` after a creation, `append` and `move_home` after a modification; `force` and
//! `remove` after a removal; `password` is `NOT_LOGGING_PASSWORD` when given. A failing tool
//! fails the task with its stderr as `msg` and its `rc`.
//!
//! Idempotent: a second run finds everything as asked and changes nothing. Check mode reads the
//! files, reports `changed` when a tool would run, and runs none.
//!
//! Reversing: `state: absent` removes a user or group that `present` created (`remove: true` also
//! removes the home directory); a modification is undone by running the task again with the
//! previous values (the result of a `present` task run before records them).
//!
//! Deliberate differences from Ansible: only Linux's shadow tools (no `local`, SELinux user, ssh
//! keys, expiry or password aging options); a home directory re-created for an existing user is
//! not filled from /etc/skel; a `password` that is not a hash (no leading `$`, `!` or `*`) is
//! refused, where Ansible warns and stores it as given.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, chown};
use std::path::Path;
use std::time::{Duration, Instant};

use rampart_host::process::run_bounded;
use serde_json::{Map, Value, json};

use rampart_playbook::modules::users as schema;

use super::cron::find_program;
use super::files::os_msg;
use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_bool, arg_i64, arg_str, failed};

/// `user`.
pub static USER: ModuleSpec = ModuleSpec {
    schema: &schema::USER,
    run: run_user,
};

/// `group`.
pub static GROUP: ModuleSpec = ModuleSpec {
    schema: &schema::GROUP,
    run: run_group,
};

const PASSWD: &str = "/etc/passwd";
const GROUP_FILE: &str = "/etc/group";
const SHADOW: &str = "/etc/shadow";
const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Time allowed for one shadow tool.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub comment: String,
    pub home: String,
    pub shell: String,
}

/// One line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

fn read_small(path: &str) -> Result<String, String> {
    let f = fs::File::open(path).map_err(|e| format!("cannot read {path}: {}", os_msg(&e)))?;
    let mut buf = Vec::new();
    f.take(MAX_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {path}: {}", os_msg(&e)))?;
    if buf.len() as u64 > MAX_BYTES {
        return Err(format!("{path} is larger than 64 MiB; refusing to read it"));
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The entries of a passwd file's text (malformed lines skipped).
pub(crate) fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].into(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                comment: f[4].into(),
                home: f[5].into(),
                shell: f[6].into(),
            })
        })
        .collect()
}

/// The entries of a group file's text (malformed lines skipped).
pub(crate) fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].into(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

fn users() -> Result<Vec<PasswdEntry>, String> {
    Ok(parse_passwd(&read_small(PASSWD)?))
}

fn groups() -> Result<Vec<GroupEntry>, String> {
    Ok(parse_group(&read_small(GROUP_FILE)?))
}

/// The password hash of `name` in /etc/shadow (empty when unreadable or absent).
fn shadow_hash(name: &str) -> String {
    read_small(SHADOW)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut f = l.split(':');
                (f.next() == Some(name)).then(|| f.next().unwrap_or_default().to_string())
            })
        })
        .unwrap_or_default()
}

/// A group by name or, for a number, by gid first (as Ansible).
fn find_group<'a>(all: &'a [GroupEntry], g: &str) -> Option<&'a GroupEntry> {
    g.parse::<u32>()
        .ok()
        .and_then(|gid| all.iter().find(|e| e.gid == gid))
        .or_else(|| all.iter().find(|e| e.name == g))
}

fn valid_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.starts_with('-')
        || name
            .chars()
            .any(|c| c == ':' || c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "invalid {kind} name `{name}`: give a name without ':', ',', whitespace or a leading '-'"
        ));
    }
    Ok(())
}

/// Runs a shadow tool; `Err` is the failed result (msg = its stderr, rc).
fn tool(program: &str, args: Vec<String>, name: &str) -> Result<(String, String), ModuleResult> {
    let Some(path) = find_program(program) else {
        return Err(failed(format!(
            "Failed to find required executable \"{program}\": install the shadow tools (the `passwd` or `shadow-utils` package)"
        )));
    };
    let mut argv = vec![path.display().to_string()];
    argv.extend(args);
    let ran = run_bounded(&argv, &[], Instant::now() + TOOL_TIMEOUT);
    if ran.success() {
        return Ok((ran.stdout, ran.stderr));
    }
    let msg = if ran.stderr.trim().is_empty() {
        format!("`{}` {}", argv.join(" "), ran.describe())
    } else {
        ran.stderr.clone()
    };
    let mut r = failed(msg);
    r.insert("name".into(), json!(name));
    r.insert("rc".into(), json!(ran.rc));
    Err(r)
}

fn put_output(r: &mut ModuleResult, out: &str, err: &str) {
    if !out.is_empty() {
        r.insert("stdout".into(), json!(out));
    }
    if !err.is_empty() {
        r.insert("stderr".into(), json!(err));
    }
}

// ---------------------------------------------------------------------------------------------
// group.

fn run_group(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let name = arg_str(args, "name").unwrap_or_default();
    if let Err(e) = valid_name("group", name) {
        return failed(e);
    }
    let present = arg_str(args, "state").unwrap_or("present") == "present";
    let gid = arg_i64(args, "gid");
    let system = arg_bool(args, "system").unwrap_or(false);
    let non_unique = arg_bool(args, "non_unique").unwrap_or(false);
    let force = arg_bool(args, "force").unwrap_or(false);
    if non_unique && gid.is_none() {
        return failed("non_unique is True but all of the following are missing: gid");
    }
    if let Some(g) = gid
        && !(0..=i64::from(u32::MAX - 1)).contains(&g)
    {
        return failed(format!("gid {g} is out of range"));
    }
    let all = match groups() {
        Ok(g) => g,
        Err(e) => return failed(e),
    };
    let current = all.iter().find(|g| g.name == name);
    let mut r = super::ok(false);
    r.insert("name".into(), json!(name));
    r.insert(
        "state".into(),
        json!(if present { "present" } else { "absent" }),
    );

    let mut cmd: Option<(&str, Vec<String>)> = None;
    if !present {
        if current.is_some() {
            let mut a = Vec::new();
            if force {
                a.push("-f".into());
            }
            a.push(name.into());
            cmd = Some(("groupdel", a));
        }
    } else if current.is_none() {
        let mut a = Vec::new();
        if let Some(g) = gid {
            a.extend(["-g".into(), g.to_string()]);
            if non_unique {
                a.push("-o".into());
            }
        }
        if system {
            a.push("-r".into());
        }
        a.push(name.into());
        cmd = Some(("groupadd", a));
    } else if let (Some(g), Some(cur)) = (gid, current)
        && i64::from(cur.gid) != g
    {
        let mut a = vec!["-g".into(), g.to_string()];
        if non_unique {
            a.push("-o".into());
        }
        a.push(name.into());
        cmd = Some(("groupmod", a));
    }
    if let Some((program, a)) = cmd {
        r.insert("changed".into(), json!(true));
        if ctx.check {
            if current.is_some() && present {
                r.insert("system".into(), json!(system));
                r.insert("gid".into(), json!(current.map(|c| c.gid)));
            }
            return r;
        }
        match tool(program, a, name) {
            Ok((out, err)) => put_output(&mut r, &out, &err),
            Err(f) => return f,
        }
    }
    let after = if ctx.check || r["changed"] == json!(false) {
        current.cloned()
    } else {
        match groups() {
            Ok(g) => g.into_iter().find(|g| g.name == name),
            Err(e) => return failed(e),
        }
    };
    if let Some(g) = after {
        r.insert("system".into(), json!(system));
        r.insert("gid".into(), json!(g.gid));
    }
    r
}

// ---------------------------------------------------------------------------------------------
// user.

/// What `user: state=present` asks for.
#[derive(Debug, Default)]
struct Wanted<'a> {
    uid: Option<i64>,
    non_unique: bool,
    group: Option<&'a str>,
    /// `None`: not given; `Some(empty)`: no supplementary groups.
    groups: Option<Vec<String>>,
    append: bool,
    comment: Option<&'a str>,
    home: Option<String>,
    shell: Option<&'a str>,
    password: Option<&'a str>,
    create_home: bool,
    move_home: bool,
    system: bool,
}

/// `useradd`'s options for a new user.
fn useradd_args(
    name: &str,
    w: &Wanted<'_>,
    all_groups: &[GroupEntry],
) -> Result<Vec<String>, String> {
    let mut a: Vec<String> = Vec::new();
    if let Some(uid) = w.uid {
        a.extend(["-u".into(), uid.to_string()]);
        if w.non_unique {
            a.push("-o".into());
        }
    }
    if let Some(g) = w.group {
        if find_group(all_groups, g).is_none() {
            return Err(format!("Group {g} does not exist"));
        }
        a.extend(["-g".into(), g.into()]);
    } else if all_groups.iter().any(|g| g.name == name) {
        // A group of the user's name exists: useradd would fail creating it.
        a.push("-N".into());
    }
    if let Some(gs) = w.groups.as_ref().filter(|g| !g.is_empty()) {
        for g in gs {
            if find_group(all_groups, g).is_none() {
                return Err(format!("Group {g} does not exist"));
            }
        }
        a.extend(["-G".into(), gs.join(",")]);
    }
    if let Some(c) = w.comment {
        a.extend(["-c".into(), c.into()]);
    }
    if let Some(h) = &w.home {
        a.extend(["-d".into(), h.clone()]);
    }
    if let Some(s) = w.shell {
        a.extend(["-s".into(), s.into()]);
    }
    if let Some(p) = w.password {
        a.extend(["-p".into(), p.into()]);
    }
    a.push(if w.create_home { "-m" } else { "-M" }.into());
    if w.system {
        a.push("-r".into());
    }
    a.push(name.into());
    Ok(a)
}

/// `usermod`'s options for an existing user (empty: nothing differs).
fn usermod_args(
    cur: &PasswdEntry,
    hash: &str,
    w: &Wanted<'_>,
    all_groups: &[GroupEntry],
) -> Result<Vec<String>, String> {
    let mut a: Vec<String> = Vec::new();
    if let Some(uid) = w.uid
        && i64::from(cur.uid) != uid
    {
        a.extend(["-u".into(), uid.to_string()]);
        if w.non_unique {
            a.push("-o".into());
        }
    }
    if let Some(g) = w.group {
        let Some(ge) = find_group(all_groups, g) else {
            return Err(format!("Group {g} does not exist"));
        };
        if ge.gid != cur.gid {
            a.extend(["-g".into(), ge.gid.to_string()]);
        }
    }
    if let Some(want) = &w.groups {
        let current: Vec<&str> = all_groups
            .iter()
            .filter(|g| g.members.contains(&cur.name))
            .map(|g| g.name.as_str())
            .collect();
        let mut names: Vec<&str> = Vec::new();
        for g in want {
            let Some(ge) = find_group(all_groups, g) else {
                return Err(format!("Group {g} does not exist"));
            };
            if !names.contains(&ge.name.as_str()) {
                names.push(&ge.name);
            }
        }
        let missing = names.iter().any(|n| !current.contains(n));
        let extra = current.iter().any(|c| !names.contains(c));
        let need = if w.append { missing } else { missing || extra };
        if need {
            if w.append {
                a.push("-a".into());
            }
            a.extend(["-G".into(), names.join(",")]);
        }
    }
    if let Some(c) = w.comment
        && cur.comment != c
    {
        a.extend(["-c".into(), c.into()]);
    }
    if let Some(h) = &w.home
        && cur.home != *h
    {
        a.extend(["-d".into(), h.clone()]);
        if w.move_home {
            a.push("-m".into());
        }
    }
    if let Some(s) = w.shell
        && cur.shell != s
    {
        a.extend(["-s".into(), s.into()]);
    }
    if let Some(p) = w.password
        && hash.trim_start_matches('!') != p.trim_start_matches('!')
    {
        a.extend(["-p".into(), p.into()]);
    }
    if !a.is_empty() {
        a.push(cur.name.clone());
    }
    Ok(a)
}

fn make_home(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {}", parent.display(), os_msg(&e)))?;
    }
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .and_then(|()| chown(path, Some(uid), Some(gid)))
        .map_err(|e| {
            format!(
                "cannot create the home directory {}: {}",
                path.display(),
                os_msg(&e)
            )
        })
}

fn run_user(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let name = arg_str(args, "name").unwrap_or_default();
    if let Err(e) = valid_name("user", name) {
        return failed(e);
    }
    let present = arg_str(args, "state").unwrap_or("present") == "present";
    let groups_arg = args.get("groups").map(|v| {
        super::arg_strings(Some(v))
            .iter()
            .flat_map(|s| s.split(',').map(|g| g.trim().to_string()))
            .filter(|g| !g.is_empty())
            .collect::<Vec<_>>()
    });
    let w = Wanted {
        uid: arg_i64(args, "uid"),
        non_unique: arg_bool(args, "non_unique").unwrap_or(false),
        group: arg_str(args, "group"),
        groups: groups_arg,
        append: arg_bool(args, "append").unwrap_or(false),
        comment: arg_str(args, "comment"),
        home: arg_str(args, "home").map(|h| super::files::expand_user(h).display().to_string()),
        shell: arg_str(args, "shell"),
        password: arg_str(args, "password"),
        create_home: arg_bool(args, "create_home").unwrap_or(true),
        move_home: arg_bool(args, "move_home").unwrap_or(false),
        system: arg_bool(args, "system").unwrap_or(false),
    };
    if let Some(uid) = w.uid
        && !(0..=i64::from(u32::MAX - 1)).contains(&uid)
    {
        return failed(format!("uid {uid} is out of range"));
    }
    if let Some(p) = w.password
        && !p.is_empty()
        && !p.starts_with(['$', '!', '*'])
    {
        return failed(
            "password must be an encrypted hash as in /etc/shadow (for example from `openssl passwd -6` or the password_hash filter), not the password itself",
        );
    }
    let (all_users, all_groups) = match (users(), groups()) {
        (Ok(u), Ok(g)) => (u, g),
        (Err(e), _) | (_, Err(e)) => return failed(e),
    };
    let current = all_users.into_iter().find(|u| u.name == name);
    let mut r = super::ok(false);
    r.insert("name".into(), json!(name));
    r.insert(
        "state".into(),
        json!(if present { "present" } else { "absent" }),
    );

    if !present {
        if current.is_some() {
            if ctx.check {
                r.insert("changed".into(), json!(true));
                return r;
            }
            let force = arg_bool(args, "force").unwrap_or(false);
            let remove = arg_bool(args, "remove").unwrap_or(false);
            let mut a = Vec::new();
            if force {
                a.push("-f".into());
            }
            if remove {
                a.push("-r".into());
            }
            a.push(name.to_string());
            match tool("userdel", a, name) {
                Ok((out, err)) => put_output(&mut r, &out, &err),
                Err(f) => return f,
            }
            r.insert("changed".into(), json!(true));
            r.insert("force".into(), json!(force));
            r.insert("remove".into(), json!(remove));
        }
        return r;
    }

    match &current {
        None => {
            let a = match useradd_args(name, &w, &all_groups) {
                Ok(a) => a,
                Err(e) => return failed(e),
            };
            r.insert("changed".into(), json!(true));
            if ctx.check {
                return r;
            }
            if let Some(h) = &w.home
                && w.create_home
                && let Some(parent) = Path::new(h).parent()
                && let Err(e) = fs::create_dir_all(parent)
            {
                return failed(format!(
                    "cannot create {}: {}",
                    parent.display(),
                    os_msg(&e)
                ));
            }
            match tool("useradd", a, name) {
                Ok((out, err)) => put_output(&mut r, &out, &err),
                Err(f) => return f,
            }
            r.insert("system".into(), json!(w.system));
            r.insert("create_home".into(), json!(w.create_home));
        }
        Some(cur) => {
            let hash = if w.password.is_some() {
                shadow_hash(name)
            } else {
                String::new()
            };
            let a = match usermod_args(cur, &hash, &w, &all_groups) {
                Ok(a) => a,
                Err(e) => return failed(e),
            };
            if !a.is_empty() {
                r.insert("changed".into(), json!(true));
                if !ctx.check {
                    match tool("usermod", a, name) {
                        Ok((out, err)) => put_output(&mut r, &out, &err),
                        Err(f) => return f,
                    }
                }
            }
            r.insert("append".into(), json!(w.append));
            r.insert("move_home".into(), json!(w.move_home));
        }
    }
    if w.password.is_some() {
        r.insert("password".into(), json!("NOT_LOGGING_PASSWORD"));
    }

    let after = if ctx.check {
        current
    } else {
        match users() {
            Ok(u) => u.into_iter().find(|u| u.name == name),
            Err(e) => return failed(e),
        }
    };
    let Some(info) = after else {
        if ctx.check {
            return r;
        }
        let mut f = failed(format!("failed to look up user name: {name}"));
        f.insert("name".into(), json!(name));
        return f;
    };
    r.insert("uid".into(), json!(info.uid));
    r.insert("group".into(), json!(info.gid));
    r.insert("comment".into(), json!(info.comment));
    r.insert("home".into(), json!(info.home));
    r.insert("shell".into(), json!(info.shell));
    if let Some(g) = &w.groups {
        r.insert("groups".into(), json!(g.join(",")));
    }
    let home = w.home.clone().unwrap_or_else(|| info.home.clone());
    if w.create_home && !home.is_empty() && !Path::new(&home).exists() {
        if !ctx.check
            && let Err(e) = make_home(Path::new(&home), info.uid, info.gid)
        {
            return failed(e);
        }
        r.insert("changed".into(), json!(true));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::Call;

    const TEST_USER: &str = "rampart-test-sysu";
    const TEST_GROUP: &str = "rampart-test-sysg";
    const TEST_GROUP2: &str = "rampart-test-sysg2";

    /// Deletes the test's user and groups when dropped (also when the test panics).
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let run = |argv: &[&str]| {
                let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
                run_bounded(&argv, &[], Instant::now() + Duration::from_secs(30))
            };
            run(&["userdel", "-r", TEST_USER]);
            run(&["groupdel", TEST_GROUP]);
            run(&["groupdel", TEST_GROUP2]);
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root() && find_program("useradd").is_some()
    }

    #[test]
    fn passwd_and_group_lines_parse() {
        let p = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbad line\n\nu:x:1000:1000::/home/u:/bin/sh\n",
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].home, "/home/u");
        assert_eq!(p[1].comment, "");
        let g = parse_group("sudo:x:27:a,b\nempty:x:5:\n");
        assert_eq!(g[0].members, ["a", "b"]);
        assert!(g[1].members.is_empty());
        assert_eq!(find_group(&g, "27").unwrap().name, "sudo");
        assert_eq!(find_group(&g, "empty").unwrap().gid, 5);
    }

    #[test]
    fn usermod_only_what_differs() {
        let cur = PasswdEntry {
            name: "u".into(),
            uid: 1000,
            gid: 1000,
            comment: "".into(),
            home: "/home/u".into(),
            shell: "/bin/sh".into(),
        };
        let groups = parse_group("u:x:1000:\nadm:x:4:u\nweb:x:33:\n");
        let w = Wanted {
            shell: Some("/bin/sh"),
            groups: Some(vec!["adm".into()]),
            ..Wanted::default()
        };
        assert!(usermod_args(&cur, "", &w, &groups).unwrap().is_empty());
        let w = Wanted {
            groups: Some(vec!["web".into()]),
            append: true,
            shell: Some("/bin/bash"),
            ..Wanted::default()
        };
        assert_eq!(
            usermod_args(&cur, "", &w, &groups).unwrap(),
            ["-a", "-G", "web", "-s", "/bin/bash", "u"]
        );
        let w = Wanted {
            groups: Some(vec![]),
            ..Wanted::default()
        };
        assert_eq!(
            usermod_args(&cur, "", &w, &groups).unwrap(),
            ["-G", "", "u"]
        );
        let w = Wanted {
            group: Some("nosuch"),
            ..Wanted::default()
        };
        assert!(usermod_args(&cur, "", &w, &groups).is_err());
    }

    #[test]
    fn group_and_user_lifecycle() {
        if !is_root() {
            eprintln!("skipped: needs root and useradd");
            return;
        }
        let _cleanup = Cleanup;
        let check = Call {
            check: true,
            ..Call::default()
        };
        let live = Call::default();

        let r = check.run(&GROUP, json!({"name": TEST_GROUP, "gid": 64991}));
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert!(find_group(&groups().unwrap(), TEST_GROUP).is_none());
        let r = live.run(&GROUP, json!({"name": TEST_GROUP, "gid": 64991}));
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert_eq!(r["gid"], json!(64991));
        let r = live.run(&GROUP, json!({"name": TEST_GROUP, "gid": 64991}));
        assert_eq!(r["changed"], json!(false), "{r:?}");
        let r = live.run(&GROUP, json!({"name": TEST_GROUP, "gid": 64992}));
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert_eq!(r["gid"], json!(64992));
        let r = live.run(&GROUP, json!({"name": TEST_GROUP2, "system": true}));
        assert_eq!(r["changed"], json!(true), "{r:?}");

        let home = tempfile::tempdir().unwrap();
        let home = home.path().join("h");
        let args = json!({
            "name": TEST_USER, "group": TEST_GROUP, "groups": [TEST_GROUP2],
            "shell": "/bin/false", "home": home.display().to_string(), "comment": "rampart test",
            "password": "$6$salt$abc",
        });
        let r = check.run(&USER, args.clone());
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert!(!users().unwrap().iter().any(|u| u.name == TEST_USER));
        let r = live.run(&USER, args.clone());
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert_eq!(r["group"], json!(64992));
        assert_eq!(r["shell"], json!("/bin/false"));
        assert_eq!(r["groups"], json!(TEST_GROUP2));
        assert!(home.is_dir());
        assert_eq!(shadow_hash(TEST_USER), "$6$salt$abc");
        let r = live.run(&USER, args.clone());
        assert_eq!(r["changed"], json!(false), "{r:?}");

        let mut changed = args.clone();
        changed["shell"] = json!("/bin/sh");
        let r = check.run(&USER, changed.clone());
        assert_eq!(r["changed"], json!(true), "{r:?}");
        let r = live.run(&USER, json!({"name": TEST_USER}));
        assert_eq!(
            r["shell"],
            json!("/bin/false"),
            "check mode changed it: {r:?}"
        );
        let r = live.run(&USER, changed);
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert_eq!(r["shell"], json!("/bin/sh"));

        let r = live.run(
            &USER,
            json!({"name": TEST_USER, "state": "absent", "remove": true}),
        );
        assert_eq!(r["changed"], json!(true), "{r:?}");
        let r = live.run(&USER, json!({"name": TEST_USER, "state": "absent"}));
        assert_eq!(r["changed"], json!(false), "{r:?}");
        for g in [TEST_GROUP, TEST_GROUP2] {
            let r = live.run(&GROUP, json!({"name": g, "state": "absent"}));
            assert_eq!(r["changed"], json!(true), "{r:?}");
        }
        let r = live.run(&GROUP, json!({"name": TEST_GROUP, "state": "absent"}));
        assert_eq!(r["changed"], json!(false), "{r:?}");
    }

    #[test]
    fn user_refuses_clear_text_password_and_missing_group() {
        let r = Call::default().run(
            &USER,
            json!({"name": "rampart-test-x", "password": "secret"}),
        );
        assert!(r["msg"].as_str().unwrap().contains("hash"), "{r:?}");
        let r = Call {
            check: true,
            ..Call::default()
        }
        .run(
            &USER,
            json!({"name": "rampart-test-x", "group": "rampart-no-such-group"}),
        );
        assert_eq!(
            r["msg"],
            json!("Group rampart-no-such-group does not exist")
        );
    }
}
