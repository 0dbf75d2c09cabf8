//! `command` and `shell`: run a program and report its exit code and output, as Ansible does.
//!
//! Inputs: the command line (free form or `cmd`, or `argv` for `command`), `chdir`, `creates`,
//! `removes`, `stdin`. Output: `rc`, `stdout`, `stderr`, `stdout_lines`, `stderr_lines`, `start`,
//! `end`, `delta`, `cmd`, `msg`; always `changed: true` when it ran (use `changed_when` to say
//! otherwise), `failed` when `rc != 0`. Skipped in check mode unless the task says
//! `check_mode: false`. These modules cannot say how to reverse what the program did: a playbook
//! that runs one in `block` pairs it with the reversing command in `rescue`.
//!
//! The child gets SIGKILL when the agent thread that started it dies, so a crashed agent never
//! leaves a deploy command running while the restarted agent rolls back.
//!
//! `become_user` (with `become: true`): the agent runs as root, so the command runs as that user
//! directly, without sudo: the user's supplementary groups, group and uid are set in the child
//! before it executes, and its environment is the user's as `sudo -H` would give it: `HOME`,
//! `USER`, `LOGNAME`, `SHELL` from the password database, `PATH` the secure path, and only the
//! locale (`LANG`, `LC_*`), `TZ` and `TERM` kept from the agent's. A user that does not exist is
//! a failed task that says so (nothing runs); so is a `become_user` other than the agent's own
//! when the agent does not run as root. `become_user` naming the agent's own user changes nothing.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Map, Value, json};

use rampart_playbook::modules::command as schema;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_bool, arg_str, failed};

/// `command`: runs a program directly, without a shell.
pub static COMMAND: ModuleSpec = ModuleSpec {
    schema: &schema::COMMAND,
    run: run_command,
};

/// `shell`: runs a command line through `/bin/sh -c`.
pub static SHELL: ModuleSpec = ModuleSpec {
    schema: &schema::SHELL,
    run: run_shell,
};

fn run_command(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let argv: Vec<String> = if let Some(Value::Array(items)) = args.get("argv") {
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    } else {
        let line = arg_str(args, "_raw_params")
            .or_else(|| arg_str(args, "cmd"))
            .unwrap_or_default();
        match shlex::split(line) {
            Some(words) => words,
            None => {
                return failed(format!(
                    "cannot parse command line (unbalanced quotes): {line}"
                ));
            }
        }
    };
    if argv.is_empty() {
        return failed("no command given");
    }
    let cmd_value = json!(argv);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    execute(cmd, cmd_value, args, ctx.become_user)
}

fn run_shell(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let line = arg_str(args, "_raw_params")
        .or_else(|| arg_str(args, "cmd"))
        .unwrap_or_default();
    if line.trim().is_empty() {
        return failed("no command given");
    }
    let exe = arg_str(args, "executable").unwrap_or("/bin/sh");
    let mut cmd = Command::new(exe);
    cmd.arg("-c").arg(line);
    execute(cmd, json!(line), args, ctx.become_user)
}

/// `PATH` of a command run as another user (sudo's usual `secure_path`).
const SECURE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The identity a `become_user` command takes, resolved before anything runs.
#[derive(Debug)]
struct Become {
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
    groups: Vec<nix::unistd::Gid>,
    env: Vec<(String, String)>,
}

/// Resolves `become_user`: `Ok(None)` when it is the agent's own user (nothing to switch).
fn resolve_become(user: &str) -> Result<Option<Become>, String> {
    use nix::unistd::{User, geteuid, getgrouplist};
    let found = User::from_name(user)
        .map_err(|e| format!("cannot look up become_user `{user}`: {}", e.desc()))?;
    let Some(u) = found else {
        return Err(format!(
            "become_user `{user}` does not exist on this host: create it first (the `user` \
             module) or remove `become_user` from the task"
        ));
    };
    let me = geteuid();
    if u.uid == me {
        return Ok(None);
    }
    if !me.is_root() {
        return Err(format!(
            "become_user `{user}` needs the agent to run as root (it runs as uid {me}); run the \
             agent as root, as its systemd unit does, or remove `become_user`"
        ));
    }
    let cname = std::ffi::CString::new(u.name.clone())
        .map_err(|_| format!("become_user `{user}` is not a valid user name"))?;
    let groups = getgrouplist(&cname, u.gid)
        .map_err(|e| format!("cannot read the groups of `{user}`: {}", e.desc()))?;
    let mut env = vec![
        ("HOME".to_string(), u.dir.to_string_lossy().into_owned()),
        ("USER".to_string(), u.name.clone()),
        ("LOGNAME".to_string(), u.name.clone()),
        ("SHELL".to_string(), u.shell.to_string_lossy().into_owned()),
        ("PATH".to_string(), SECURE_PATH.to_string()),
    ];
    for (k, v) in std::env::vars_os() {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
            continue;
        };
        if k == "LANG" || k == "TZ" || k == "TERM" || k.starts_with("LC_") {
            env.push((k.to_string(), v.to_string()));
        }
    }
    Ok(Some(Become {
        uid: u.uid,
        gid: u.gid,
        groups,
        env,
    }))
}

/// Makes `cmd` run as `who`: its environment now, its credentials in the child before exec.
#[allow(unsafe_code)]
fn become_in_child(cmd: &mut Command, who: Become) {
    use std::os::unix::process::CommandExt;
    cmd.env_clear();
    cmd.envs(who.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let Become {
        uid, gid, groups, ..
    } = who;
    // SAFETY: the closure runs in the forked child before exec and makes only the setgroups(2),
    // setgid(2) and setuid(2) system calls on data prepared before the fork; it allocates
    // nothing and touches no lock. Groups first, then the group, then the user (after which the
    // child could no longer change its groups).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups).map_err(std::io::Error::from)?;
            nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
            nix::unistd::setuid(uid).map_err(std::io::Error::from)
        });
    }
}

/// Ansible's timestamp format: `2026-11-22 06:00:37.491541`.
fn stamp(t: chrono::DateTime<chrono::Local>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Ansible's delta format: `0:00:00.003307`.
pub fn delta(d: std::time::Duration) -> String {
    let us = d.as_micros();
    let secs = us / 1_000_000;
    format!(
        "{}:{:02}:{:02}.{:06}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        us % 1_000_000
    )
}

fn lines(s: &str) -> Value {
    Value::Array(s.lines().map(|l| Value::String(l.to_string())).collect())
}

fn execute(
    mut cmd: Command,
    cmd_value: Value,
    args: &Map<String, Value>,
    become_user: Option<&str>,
) -> ModuleResult {
    if let Some(p) = arg_str(args, "creates")
        && Path::new(p).exists()
    {
        let mut r = skipped_run(
            &cmd_value,
            &format!("Did not run command since '{p}' exists"),
        );
        r.insert("rc".into(), json!(0));
        return r;
    }
    if let Some(p) = arg_str(args, "removes")
        && !Path::new(p).exists()
    {
        let mut r = skipped_run(
            &cmd_value,
            &format!("Did not run command since '{p}' does not exist"),
        );
        r.insert("rc".into(), json!(0));
        return r;
    }
    if let Some(dir) = arg_str(args, "chdir") {
        if !Path::new(dir).is_dir() {
            return failed(format!(
                "Unable to change directory before execution: {dir}"
            ));
        }
        cmd.current_dir(dir);
    }
    let stdin_text = arg_str(args, "stdin").map(|s| format!("{s}\n"));
    cmd.stdin(if stdin_text.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(user) = become_user {
        match resolve_become(user) {
            Ok(Some(who)) => become_in_child(&mut cmd, who),
            Ok(None) => {}
            Err(msg) => {
                let mut r = failed(msg);
                r.insert("cmd".into(), cmd_value);
                return r;
            }
        }
    }
    // After the credentials change: the kernel clears the parent-death signal when they do.
    kill_with_parent(&mut cmd);

    let start_wall = chrono::Local::now();
    let started = Instant::now();
    let child = cmd.spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let mut r = failed(format!("[Errno {}] {e}", e.raw_os_error().unwrap_or(2)));
            r.insert("cmd".into(), cmd_value);
            r.insert("rc".into(), json!(2));
            return r;
        }
    };
    if let (Some(text), Some(mut stdin)) = (stdin_text, child.stdin.take()) {
        // A child that exits without reading its input is not an error of ours.
        let _ = stdin.write_all(text.as_bytes());
    }
    let output = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return failed(format!("cannot wait for the command: {e}")),
    };
    let elapsed = started.elapsed();
    let end_wall = chrono::Local::now();
    let strip = arg_bool(args, "strip_empty_ends").unwrap_or(true);
    let norm = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).into_owned();
        if strip {
            s.trim_end_matches(['\n', '\r']).to_string()
        } else {
            s
        }
    };
    let stdout = norm(&output.stdout);
    let stderr = norm(&output.stderr);
    let rc: i64 = match output.status.code() {
        Some(c) => i64::from(c),
        None => {
            use std::os::unix::process::ExitStatusExt;
            -i64::from(output.status.signal().unwrap_or(0))
        }
    };
    let mut r = Map::new();
    r.insert("changed".into(), json!(true));
    r.insert("cmd".into(), cmd_value);
    r.insert("delta".into(), json!(delta(elapsed)));
    r.insert("end".into(), json!(stamp(end_wall)));
    r.insert(
        "msg".into(),
        json!(if rc == 0 { "" } else { "non-zero return code" }),
    );
    r.insert("rc".into(), json!(rc));
    r.insert("start".into(), json!(stamp(start_wall)));
    r.insert("stderr_lines".into(), lines(&stderr));
    r.insert("stderr".into(), json!(stderr));
    r.insert("stdout_lines".into(), lines(&stdout));
    r.insert("stdout".into(), json!(stdout));
    if rc != 0 {
        r.insert("failed".into(), json!(true));
    }
    r
}

fn skipped_run(cmd_value: &Value, msg: &str) -> ModuleResult {
    let mut r = Map::new();
    r.insert("changed".into(), json!(false));
    r.insert("cmd".into(), cmd_value.clone());
    r.insert("msg".into(), json!(msg));
    r.insert("stdout".into(), json!(msg));
    r.insert("stdout_lines".into(), json!([msg]));
    r.insert("stderr".into(), json!(""));
    r.insert("stderr_lines".into(), json!([]));
    r
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it dies.
#[allow(unsafe_code)]
fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2), which is
    // async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::Call;

    fn run(spec: &ModuleSpec, args: Value) -> ModuleResult {
        Call::default().run(spec, args)
    }

    #[test]
    fn command_reports_like_ansible() {
        let r = run(&COMMAND, json!({"_raw_params": "echo hello"}));
        assert_eq!(r["rc"], json!(0));
        assert_eq!(r["stdout"], json!("hello"));
        assert_eq!(r["stdout_lines"], json!(["hello"]));
        assert_eq!(r["cmd"], json!(["echo", "hello"]));
        assert_eq!(r["changed"], json!(true));
        assert!(r.get("failed").is_none());
        let f = run(&COMMAND, json!({"_raw_params": "/bin/false"}));
        assert_eq!(f["rc"], json!(1));
        assert_eq!(f["failed"], json!(true));
        assert_eq!(f["msg"], json!("non-zero return code"));
    }

    #[test]
    fn shell_uses_sh_and_chdir() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(
            &SHELL,
            json!({"_raw_params": "pwd; echo err >&2; exit 3", "chdir": dir.path()}),
        );
        assert_eq!(r["rc"], json!(3));
        assert_eq!(r["stderr"], json!("err"));
        assert_eq!(
            r["stdout"].as_str().unwrap(),
            dir.path().canonicalize().unwrap().to_str().unwrap()
        );
    }

    #[test]
    fn creates_and_removes_skip_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("m");
        let r = run(&COMMAND, json!({"_raw_params": "false", "removes": marker}));
        assert_eq!(r["changed"], json!(false));
        std::fs::write(&marker, "").unwrap();
        let r = run(&COMMAND, json!({"_raw_params": "false", "creates": marker}));
        assert_eq!(r["changed"], json!(false));
        assert!(r["msg"].as_str().unwrap().contains("exists"));
    }

    #[test]
    fn missing_program_fails_with_rc_2() {
        let r = run(&COMMAND, json!({"_raw_params": "/nonexistent/prog"}));
        assert_eq!(r["failed"], json!(true));
        assert_eq!(r["rc"], json!(2));
    }

    #[test]
    fn delta_format() {
        assert_eq!(
            delta(std::time::Duration::from_micros(3_307)),
            "0:00:00.003307"
        );
        assert_eq!(
            delta(std::time::Duration::from_secs(3723)),
            "1:02:03.000000"
        );
    }

    fn as_user(spec: &ModuleSpec, user: &str, line: &str) -> ModuleResult {
        Call {
            become_user: Some(user),
            ..Call::default()
        }
        .run(spec, json!({ "_raw_params": line }))
    }

    #[test]
    fn become_user_that_does_not_exist_fails_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let r = as_user(
            &SHELL,
            "rampart-no-such-user",
            &format!("touch {}", marker.display()),
        );
        assert_eq!(r["failed"], json!(true), "{r:?}");
        let msg = r["msg"].as_str().unwrap();
        assert!(
            msg.contains("`rampart-no-such-user` does not exist"),
            "{msg}"
        );
        assert!(!marker.exists(), "the command ran anyway");
    }

    #[test]
    fn become_user_runs_the_command_as_that_user_with_its_environment() {
        use nix::unistd::{User, geteuid};
        let own = User::from_uid(geteuid()).unwrap().unwrap();
        // Naming the agent's own user changes nothing.
        let r = as_user(&COMMAND, &own.name, "id -un");
        assert_eq!(r["stdout"], json!(own.name), "{r:?}");
        let nobody = User::from_name("nobody").unwrap().expect("user nobody");
        if !geteuid().is_root() {
            // Not root: switching is refused with the reason, and nothing runs.
            let r = as_user(&COMMAND, "nobody", "id -un");
            assert_eq!(r["failed"], json!(true), "{r:?}");
            assert!(
                r["msg"]
                    .as_str()
                    .unwrap()
                    .contains("needs the agent to run as root")
            );
            return;
        }
        let r = as_user(&COMMAND, "nobody", "id -un");
        assert_eq!(r["rc"], json!(0), "{r:?}");
        assert_eq!(r["stdout"], json!("nobody"));
        // No group of root's is left behind, and the environment is the user's.
        let r = as_user(&COMMAND, "nobody", "id -G");
        let groups: Vec<&str> = r["stdout"].as_str().unwrap().split(' ').collect();
        assert!(!groups.contains(&"0"), "{groups:?}");
        let r = as_user(
            &SHELL,
            "nobody",
            "echo \"$HOME|$USER|$LOGNAME|$PATH|${CARGO:-}\"",
        );
        assert_eq!(
            r["stdout"],
            json!(format!(
                "{}|nobody|nobody|{SECURE_PATH}|",
                nobody.dir.display()
            )),
            "{r:?}"
        );
    }
}
