//! `service` (also `systemd_service` and `systemd`, Ansible's names of the same module): bring a
//! service to `started`, `stopped`, `restarted` or `reloaded`, enable, disable, mask or unmask it
//! and reload systemd, under systemd or through configured commands on hosts without systemd.
//!
//! Inputs: `name` (alias `service`, `unit`: the unit, e.g. `app.service`; optional when the task
//! only asks `daemon_reload`), `state` (`started | stopped | restarted | reloaded`), `enabled`
//! (bool), `masked` (bool), `daemon_reload` (alias `daemon-reload`), `no_block` (queue the job
//! and do not wait for it), `scope` (`system` only), `manager` (`systemd`, the default, or
//! `command`), `timeout` (seconds for the whole task, default 90). At least one of `state`,
//! `enabled`, `masked`, `daemon_reload`. With `manager: command` (only `state`, not `reloaded`):
//! `status` (a shell command line whose exit code 0 means "running"; always required), `start`
//! (required for `started`/`restarted`) and `stop` (required for `stopped`/`restarted`), each run
//! through `/bin/sh -c`.
//!
//! systemd, in Ansible's order: `systemctl daemon-reload` (not in check mode); `systemctl show
//! UNIT` (an unknown unit — `LoadState=not-found` — fails a task asking `enabled` or `state`
//! with "Could not find the requested service NAME: host"; a unit whose file does not load fails
//! with its `LoadError`); `masked` compares `systemctl is-enabled` with `masked` and runs
//! `systemctl mask|unmask`; `enabled` runs `systemctl enable|disable` unless `is-enabled` already
//! agrees (`enabled-runtime`, `indirect` and `alias` count as not enabled, as in Ansible); then the
//! state: `systemctl start|stop|restart|reload NAME` (which waits for the job; `reloaded` and
//! `restarted` start a stopped unit), bounded by the timeout, then `systemctl show` is polled
//! until the unit reaches the wanted state. A started unit must stay `active` for a short settle
//! time (1 s, within the timeout), so a service whose process dies right after it was forked is
//! reported as failed rather than started. A oneshot unit that ran and ended successfully counts
//! as started. With `no_block` the job is queued (`--no-block`) and not waited for.
//!
//! command: the `status` command is run first; `start`/`stop` run only when needed, then `status`
//! is polled until it agrees (exit 0 after a start, non-zero after a stop) or the timeout passes.
//!
//! Idempotent: `started` on a running service and `stopped` on a stopped (or failed) one are `ok`
//! without touching it, as are `enabled`/`masked` already as asked; `restarted` and `reloaded`
//! always change; `daemon_reload` alone reports `changed: false`, as in Ansible. Check mode asks
//! the manager for the current state, reports whether the task would change anything, and
//! changes nothing (no daemon-reload either).
//!
//! Output: `name`, `changed`, `state` (as Ansible: `started` for `restarted`/`reloaded`),
//! `enabled` (when asked: the state after the task), `status` (every `systemctl show` property
//! of the unit, read before the task changed it, as Ansible), and Rampart's `active_state`,
//! `sub_state` (after the task; the command manager reports `active` or `inactive`). On failure
//! also `msg`, `result` (systemd's `Result=`, e.g. `exit-code`), `log` (the unit's last 20
//! journal lines, `journalctl -u NAME -n 20`; empty when journalctl fails) under systemd, and
//! `rc`, `stdout`, `stderr` of the failing command under the command manager.
//!
//! Reversing: `started` is undone by `stopped` and `stopped` by `started`, so a playbook that
//! stops a service in `block` starts it again in `rescue`; `enabled`/`masked` by the opposite
//! value (the result's `enabled` and `status.UnitFileState` tell what it was). A restart or
//! reload cannot be undone; rescue restarts the service on the restored release.
//!
//! Deliberate differences from Ansible: `scope: user|global` and `force` are refused (Rampart
//! manages the system's units); `daemon_reexec` is not offered; SysV init scripts are not looked
//! for; a started unit must settle (see above); a host where `systemctl show` cannot run (no
//! systemd as PID 1) fails with systemctl's message rather than Ansible's fallbacks.
//!
//! `systemctl_prefix` (a list, for tests and containers): a command prefix to reach the service
//! manager, prepended to every `systemctl`/`journalctl` call (e.g. `nsenter -t PID -m -p`).

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use rampart_host::process::{Ran, run_bounded};
use rampart_host::systemd::{self, UnitState};
use rampart_playbook::modules::service as schema;

/// How the module reaches systemd (also used by `forensics` for the service's log).
pub use rampart_host::systemd::Systemctl;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_bool, arg_f64, arg_str, failed, ok};

/// `service`.
pub static SERVICE: ModuleSpec = ModuleSpec {
    schema: &schema::SERVICE,
    run: run_service,
};

/// `systemd_service`: the same module under Ansible's systemd name.
pub static SYSTEMD_SERVICE: ModuleSpec = ModuleSpec {
    schema: &schema::SYSTEMD_SERVICE,
    run: run_service,
};

/// `systemd`: the older name of `systemd_service`.
pub static SYSTEMD: ModuleSpec = ModuleSpec {
    schema: &schema::SYSTEMD,
    run: run_service,
};

const DEFAULT_TIMEOUT_SECS: f64 = 90.0;
const MAX_TIMEOUT_SECS: f64 = 86_400.0;
/// How long a started unit must stay active before it counts as started.
const SETTLE: Duration = Duration::from_secs(1);
/// Between two state queries.
const POLL: Duration = Duration::from_millis(100);
/// Time allowed for gathering diagnostics after a failure (beyond the task's timeout).
const DIAG_TIMEOUT: Duration = Duration::from_secs(5);
/// Journal lines attached to a failure.
const LOG_LINES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Started,
    Stopped,
    Restarted,
    Reloaded,
}

/// What a task asks of a systemd unit.
#[derive(Debug, Clone, Copy)]
struct Request<'a> {
    unit: Option<&'a str>,
    state: Option<Want>,
    enabled: Option<bool>,
    masked: Option<bool>,
    daemon_reload: bool,
    no_block: bool,
    check: bool,
    deadline: Instant,
    secs: f64,
}

fn run_service(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let name = arg_str(args, "name").map(str::trim);
    if name == Some("") {
        return failed("argument `name` must not be empty");
    }
    let state_arg = arg_str(args, "state");
    let want = match state_arg {
        None => None,
        Some("started") => Some(Want::Started),
        Some("stopped") => Some(Want::Stopped),
        Some("restarted") => Some(Want::Restarted),
        Some("reloaded") => Some(Want::Reloaded),
        Some(other) => return failed(format!("unsupported state `{other}`")),
    };
    let enabled = arg_bool(args, "enabled");
    let masked = arg_bool(args, "masked");
    let daemon_reload = arg_bool(args, "daemon_reload").unwrap_or(false);
    if want.is_none() && enabled.is_none() && masked.is_none() && !daemon_reload {
        return failed("one of the following is required: state, enabled, masked, daemon_reload");
    }
    if name.is_none() && (want.is_some() || enabled.is_some() || masked.is_some()) {
        return failed(
            "argument `name` is required with state, enabled or masked (only daemon_reload works without a unit)",
        );
    }
    if let Some(n) = name
        && let Some(c) = n.chars().find(|c| matches!(c, '*' | '?' | '['))
    {
        return failed(format!(
            "This module does not currently support using glob patterns, found '{c}' in service name: {n}"
        ));
    }
    if let Some(scope) = arg_str(args, "scope").filter(|s| *s != "system") {
        return failed(format!(
            "scope `{scope}` is not supported: Rampart manages the system's units only (drop `scope` or use `scope: system`)"
        ));
    }
    let secs = arg_f64(args, "timeout").unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !secs.is_finite() || secs <= 0.0 {
        return failed(format!(
            "argument `timeout` must be a positive number of seconds, not {secs}"
        ));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs.min(MAX_TIMEOUT_SECS));
    let mut r = match arg_str(args, "manager").unwrap_or("systemd") {
        "command" => {
            if enabled.is_some() || masked.is_some() || daemon_reload {
                return failed(
                    "manager=command supports only `state`; enabled, masked and daemon_reload need systemd",
                );
            }
            let (Some(name), Some(want)) = (name, want) else {
                return failed("manager=command needs `name` and `state`");
            };
            if want == Want::Reloaded {
                return failed(
                    "manager=command has no reload command; use state=restarted, or systemd",
                );
            }
            let mut r = run_command_manager(args, name, want, ctx.check, deadline);
            r.insert("state".into(), json!(state_arg));
            r
        }
        _ => {
            let sc = Systemctl {
                prefix: super::arg_strings(args.get("systemctl_prefix")),
            };
            let req = Request {
                unit: name,
                state: want,
                enabled,
                masked,
                daemon_reload,
                no_block: arg_bool(args, "no_block").unwrap_or(false),
                check: ctx.check,
                deadline,
                secs,
            };
            run_systemd(&sc, &req)
        }
    };
    r.insert("name".into(), json!(name));
    r
}

// ---------------------------------------------------------------------------------------------
// systemd.

/// Parses `systemctl show` output into its properties, as Ansible does: `Key=Value` lines,
/// values trimmed; an `Exec*` value that opens `{` without closing it continues until a line
/// ending in `}`. Other lines are ignored.
fn parse_show_map(stdout: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let mut multi: Option<(String, Vec<String>)> = None;
    for line in stdout.lines() {
        if let Some((k, mut parts)) = multi.take() {
            parts.push(line.to_string());
            if line.trim_end().ends_with('}') {
                out.insert(k, json!(parts.join("\n").trim()));
            } else {
                multi = Some((k, parts));
            }
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.starts_with("Exec") && v.trim_start().starts_with('{') && !v.trim_end().ends_with('}')
        {
            multi = Some((k.to_string(), vec![v.to_string()]));
            continue;
        }
        out.insert(k.to_string(), json!(v.trim()));
    }
    out
}

fn unit_state(status: &Map<String, Value>) -> UnitState {
    let get = |k: &str| {
        status
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    UnitState {
        load_state: get("LoadState"),
        active_state: get("ActiveState"),
        sub_state: get("SubState"),
        result: get("Result"),
    }
}

/// Every property of the unit (`systemctl show UNIT`).
fn show_all(sc: &Systemctl, unit: &str, deadline: Instant) -> Result<Map<String, Value>, String> {
    let argv = sc.argv("systemctl", &["show", "--no-pager", "--", unit]);
    let ran = run_bounded(&argv, systemd::ENV, deadline);
    if !ran.success() {
        return Err(format!("`{}` {}", argv.join(" "), ran.describe()));
    }
    let status = parse_show_map(&ran.stdout);
    if !status.contains_key("ActiveState") {
        return Err(format!(
            "`{}` did not report ActiveState: {}",
            argv.join(" "),
            ran.stdout.trim_end_matches(['\n', '\r'])
        ));
    }
    Ok(status)
}

/// `systemctl ARGS...`: the command line and what it did.
fn systemctl(sc: &Systemctl, args: &[&str], deadline: Instant) -> (Vec<String>, Ran) {
    let argv = sc.argv("systemctl", args);
    let ran = run_bounded(&argv, systemd::ENV, deadline);
    (argv, ran)
}

/// `systemctl is-enabled UNIT`'s answer (`enabled`, `disabled`, `masked`, `static`, ...) and
/// whether it exited 0.
fn is_enabled(sc: &Systemctl, unit: &str, deadline: Instant) -> (bool, String) {
    let (_, ran) = systemctl(sc, &["is-enabled", "--", unit], deadline);
    (ran.success(), ran.stdout.trim().to_string())
}

/// Whether `is-enabled` means "enabled" for `enabled: true`: exit 0 and not a state systemd
/// counts as enabled that Ansible still enables (runtime-only, indirect, alias).
fn counts_as_enabled(success: bool, answer: &str) -> bool {
    success && !matches!(answer, "enabled-runtime" | "indirect" | "alias")
}

fn not_found(unit: &str) -> ModuleResult {
    failed(format!("Could not find the requested service {unit}: host"))
}

fn put_state(r: &mut ModuleResult, st: &UnitState) {
    r.insert("active_state".into(), json!(st.active_state));
    r.insert("sub_state".into(), json!(st.sub_state));
}

/// A failed result with the unit's state and last log lines.
fn systemd_failure(sc: &Systemctl, unit: &str, msg: String, changed: bool) -> ModuleResult {
    let diag_deadline = Instant::now() + DIAG_TIMEOUT;
    let mut r = failed(msg);
    r.insert("changed".into(), json!(changed));
    let st = sc.show(unit, diag_deadline).unwrap_or_default();
    put_state(&mut r, &st);
    r.insert("result".into(), json!(st.result));
    r.insert(
        "log".into(),
        json!(sc.journal(unit, LOG_LINES, diag_deadline)),
    );
    r
}

/// The state action a unit needs (`None`: it is as asked) and the state Ansible reports.
fn state_action(want: Want, st: &UnitState) -> (Option<&'static str>, &'static str) {
    match want {
        Want::Started => ((!st.is_running()).then_some("start"), "started"),
        Want::Stopped => ((!st.is_stopped()).then_some("stop"), "stopped"),
        Want::Restarted if st.is_running() => (Some("restart"), "started"),
        Want::Reloaded if st.is_running() => (Some("reload"), "started"),
        Want::Restarted | Want::Reloaded => (Some("start"), "started"),
    }
}

fn run_systemd(sc: &Systemctl, req: &Request<'_>) -> ModuleResult {
    let mut r = ok(false);
    r.insert("status".into(), json!({}));
    if req.daemon_reload && !req.check {
        let (_, ran) = systemctl(sc, &["daemon-reload"], req.deadline);
        if !ran.success() {
            return failed(format!(
                "failure {} during daemon-reload: {}",
                ran.rc.map_or("-".to_string(), |c| c.to_string()),
                ran.describe()
            ));
        }
    }
    let Some(unit) = req.unit else {
        return r;
    };
    let status = match show_all(sc, unit, req.deadline) {
        Ok(s) => s,
        Err(e) => {
            return failed(format!(
                "cannot read the state of {unit}: {e} (is systemd running as PID 1? on a host without it, use manager: command)"
            ));
        }
    };
    let before = unit_state(&status);
    let found = !before.load_state.is_empty() && before.load_state != "not-found";
    if found
        && before.load_state != "masked"
        && let Some(err) = status.get("LoadError").and_then(Value::as_str)
        && !err.is_empty()
    {
        return failed(format!("Error loading unit file '{unit}': {err}"));
    }
    r.insert("status".into(), Value::Object(status));
    let mut changed = false;

    if let Some(want_masked) = req.masked {
        let (_, answer) = is_enabled(sc, unit, req.deadline);
        if (answer == "masked") != want_masked {
            changed = true;
            let action = if want_masked { "mask" } else { "unmask" };
            if !req.check {
                let (_, ran) = systemctl(sc, &[action, "--", unit], req.deadline);
                if !ran.success() {
                    if !found {
                        return not_found(unit);
                    }
                    return failed(format!(
                        "Failed to {action} the service ({unit}): {}",
                        ran.stderr.trim()
                    ));
                }
            }
        }
    }

    if let Some(want_enabled) = req.enabled {
        if !found {
            return not_found(unit);
        }
        let (success, answer) = is_enabled(sc, unit, req.deadline);
        let now = counts_as_enabled(success, &answer);
        r.insert("enabled".into(), json!(now));
        if now != want_enabled {
            changed = true;
            let action = if want_enabled { "enable" } else { "disable" };
            if !req.check {
                let (_, ran) = systemctl(sc, &[action, "--", unit], req.deadline);
                if !ran.success() {
                    return failed(format!(
                        "Unable to {action} service {unit}: {}{}",
                        ran.stdout, ran.stderr
                    ));
                }
            }
            r.insert("enabled".into(), json!(want_enabled));
        }
    }

    let mut after = before.clone();
    if let Some(want) = req.state {
        if !found {
            let mut f = not_found(unit);
            put_state(&mut f, &before);
            return f;
        }
        let (action, shown) = state_action(want, &before);
        r.insert("state".into(), json!(shown));
        if let Some(verb) = action {
            changed = true;
            if !req.check {
                let mut args = vec![verb, "--no-ask-password"];
                if req.no_block {
                    args.push("--no-block");
                }
                args.extend(["--", unit]);
                let (argv, ran) = systemctl(sc, &args, req.deadline);
                if !ran.success() {
                    let how = if ran.timed_out {
                        format!(
                            "did not finish within {} s and was killed (the job may still be queued in systemd)",
                            req.secs
                        )
                    } else {
                        ran.describe()
                    };
                    return systemd_failure(sc, unit, format!("`{}` {how}", argv.join(" ")), true);
                }
                if req.no_block {
                    after = sc.show(unit, req.deadline).unwrap_or(after);
                } else {
                    let wait = if want == Want::Stopped {
                        Want::Stopped
                    } else {
                        Want::Started
                    };
                    match wait_for_unit(sc, unit, wait, req.deadline) {
                        Ok(st) => after = st,
                        Err(msg) => return systemd_failure(sc, unit, msg, true),
                    }
                }
            }
        }
    }
    r.insert("changed".into(), json!(changed));
    put_state(&mut r, &after);
    r
}

/// Polls the unit until it is in the wanted state (for a start: active for [`SETTLE`]).
fn wait_for_unit(
    sc: &Systemctl,
    unit: &str,
    want: Want,
    deadline: Instant,
) -> Result<UnitState, String> {
    let mut active_since: Option<Instant> = None;
    let mut last = UnitState::default();
    loop {
        let now = Instant::now();
        match sc.show(unit, deadline) {
            Ok(st) => {
                match want {
                    Want::Stopped => {
                        if st.is_stopped() {
                            return Ok(st);
                        }
                    }
                    Want::Started | Want::Restarted | Want::Reloaded => {
                        if st.is_running() {
                            let since = *active_since.get_or_insert(now);
                            if now.duration_since(since) >= SETTLE {
                                return Ok(st);
                            }
                        } else if st.active_state == "failed" {
                            return Err(format!(
                                "{unit} failed after it was started (result: {})",
                                st.result
                            ));
                        } else if st.active_state == "inactive" {
                            if st.result == "success" {
                                // A oneshot unit that ran and ended.
                                return Ok(st);
                            }
                            return Err(format!(
                                "{unit} stopped after it was started (result: {})",
                                st.result
                            ));
                        } else {
                            active_since = None;
                        }
                    }
                }
                last = st;
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            // Active all along but the settle time did not fit in the timeout: accept.
            if active_since.is_some() && last.is_running() {
                return Ok(last);
            }
            return Err(format!(
                "{unit} did not reach the wanted state in time (ActiveState={}, SubState={})",
                last.active_state, last.sub_state
            ));
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

// ---------------------------------------------------------------------------------------------
// command.

fn sh(line: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), line.into()]
}

/// Runs a start, stop or status command line through `/bin/sh -c` (with systemd's pager and
/// colours off, as for systemctl).
fn run_sh(line: &str, deadline: Instant) -> Ran {
    run_bounded(&sh(line), systemd::ENV, deadline)
}

/// Runs the status command: `Ok(true)` when it exits 0.
fn status_running(status: &str, deadline: Instant) -> Result<bool, Ran> {
    let ran = run_sh(status, deadline);
    if ran.timed_out || ran.spawn_error.is_some() || ran.rc.is_none() {
        return Err(ran);
    }
    Ok(ran.success())
}

fn command_state(running: bool) -> (&'static str, &'static str) {
    if running {
        ("active", "running")
    } else {
        ("inactive", "dead")
    }
}

fn command_result(changed: bool, running: bool) -> ModuleResult {
    let mut r = ok(changed);
    let (a, s) = command_state(running);
    r.insert("active_state".into(), json!(a));
    r.insert("sub_state".into(), json!(s));
    r
}

fn command_failure(msg: String, changed: bool, running: Option<bool>, ran: &Ran) -> ModuleResult {
    let mut r = failed(msg);
    r.insert("changed".into(), json!(changed));
    if let Some(running) = running {
        let (a, s) = command_state(running);
        r.insert("active_state".into(), json!(a));
        r.insert("sub_state".into(), json!(s));
    }
    r.insert("rc".into(), json!(ran.rc));
    r.insert(
        "stdout".into(),
        json!(ran.stdout.trim_end_matches(['\n', '\r'])),
    );
    r.insert(
        "stderr".into(),
        json!(ran.stderr.trim_end_matches(['\n', '\r'])),
    );
    r
}

fn run_command_manager(
    args: &Map<String, Value>,
    name: &str,
    want: Want,
    check: bool,
    deadline: Instant,
) -> ModuleResult {
    let get = |k: &str| arg_str(args, k).filter(|s| !s.trim().is_empty());
    let Some(status) = get("status") else {
        return failed("manager=command needs a `status` command");
    };
    let start = get("start");
    let stop = get("stop");
    if matches!(want, Want::Started | Want::Restarted) && start.is_none() {
        return failed("manager=command needs a `start` command for this state");
    }
    if matches!(want, Want::Stopped | Want::Restarted) && stop.is_none() {
        return failed("manager=command needs a `stop` command for this state");
    }
    let running = match status_running(status, deadline) {
        Ok(b) => b,
        Err(ran) => {
            return command_failure(
                format!("the status command of {name} {}", ran.describe()),
                false,
                None,
                &ran,
            );
        }
    };
    let needed = match want {
        Want::Started => !running,
        Want::Stopped => running,
        Want::Restarted | Want::Reloaded => true,
    };
    if !needed || check {
        return command_result(needed, running);
    }
    if running && let Some(stop) = stop {
        if let Err(r) = command_step(name, "stop", stop, status, false, deadline) {
            return r;
        }
        if want == Want::Stopped {
            return command_result(true, false);
        }
    }
    if let Some(start) = start
        && want != Want::Stopped
    {
        if let Err(r) = command_step(name, "start", start, status, true, deadline) {
            return r;
        }
        return command_result(true, true);
    }
    command_result(true, !running)
}

/// Runs the start or stop command, then polls `status` until it says `running == want_running`.
fn command_step(
    name: &str,
    what: &str,
    line: &str,
    status: &str,
    want_running: bool,
    deadline: Instant,
) -> Result<(), ModuleResult> {
    let ran = run_sh(line, deadline);
    if !ran.success() {
        let now_running = status_running(status, Instant::now() + DIAG_TIMEOUT).ok();
        return Err(command_failure(
            format!("the {what} command of {name} {}", ran.describe()),
            true,
            now_running,
            &ran,
        ));
    }
    let mut last: Option<Ran> = None;
    loop {
        match status_running(status, deadline) {
            Ok(r) if r == want_running => return Ok(()),
            Ok(_) => {}
            Err(ran) => last = Some(ran),
        }
        let now = Instant::now();
        if now >= deadline {
            let detail = last.unwrap_or_default();
            return Err(command_failure(
                format!(
                    "the {what} command of {name} succeeded but the status command did not report it {} in time",
                    if want_running { "running" } else { "stopped" }
                ),
                true,
                Some(!want_running),
                &detail,
            ));
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_playbook::template::{Layer, Scope, Templar};
    use std::path::Path;
    use std::sync::Arc;

    fn run(args: Value, check: bool) -> ModuleResult {
        let t = Arc::new(Templar::new());
        let scope = Scope::value(t.clone(), vec![Layer::Fixed(Arc::default())]);
        let ctx = ModuleCtx {
            become_user: None,
            check,
            templar: &t,
            scope: &scope,
            base_dir: None,
            state_dir: Path::new("/nonexistent"),
            txid: "test",
            progress: None,
        };
        (SERVICE.run)(args.as_object().unwrap(), &ctx)
    }

    /// start/stop/status commands managing a `sleep` whose pid is kept in `dir/pid`.
    fn commands(dir: &Path) -> Value {
        let pid = dir.join("pid");
        let pid = pid.display();
        json!({
            "name": "demo",
            "manager": "command",
            "timeout": 10,
            "start": format!("sleep 300 >/dev/null 2>&1 & echo $! > {pid}"),
            "stop": format!("kill $(cat {pid}) && rm -f {pid}"),
            "status": format!("test -f {pid} && kill -0 $(cat {pid})"),
        })
    }

    fn with(mut base: Value, extra: Value) -> Value {
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    fn pid_alive(dir: &Path) -> bool {
        std::fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .is_some_and(|p| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
                    && std::fs::read_to_string(format!("/proc/{p}/stat"))
                        .is_ok_and(|s| !s.contains(") Z "))
            })
    }

    #[test]
    fn service_command_start_stop_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let base = commands(dir.path());

        // Check mode on a stopped service: would change, changes nothing.
        let r = run(with(base.clone(), json!({"state": "started"})), true);
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert!(!dir.path().join("pid").exists());

        let r = run(with(base.clone(), json!({"state": "started"})), false);
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert!(r.get("failed").is_none(), "{r:?}");
        assert_eq!(r["active_state"], json!("active"));
        assert!(pid_alive(dir.path()));
        let first_pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();

        let r = run(with(base.clone(), json!({"state": "started"})), false);
        assert_eq!(r["changed"], json!(false), "{r:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pid")).unwrap(),
            first_pid
        );

        let r = run(with(base.clone(), json!({"state": "restarted"})), false);
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert!(r.get("failed").is_none(), "{r:?}");
        assert_ne!(
            std::fs::read_to_string(dir.path().join("pid")).unwrap(),
            first_pid
        );

        let r = run(with(base.clone(), json!({"state": "stopped"})), true);
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert!(pid_alive(dir.path()), "check mode stopped the service");

        let r = run(with(base.clone(), json!({"state": "stopped"})), false);
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert_eq!(r["active_state"], json!("inactive"));
        assert!(!pid_alive(dir.path()));

        let r = run(with(base, json!({"state": "stopped"})), false);
        assert_eq!(r["changed"], json!(false), "{r:?}");
        assert!(r.get("failed").is_none(), "{r:?}");
    }

    #[test]
    fn service_command_failing_start_reports_failure() {
        let dir = tempfile::tempdir().unwrap();
        let base = commands(dir.path());
        let r = run(
            with(
                base.clone(),
                json!({"state": "started", "start": "echo cannot bind port >&2; exit 3"}),
            ),
            false,
        );
        assert_eq!(r["failed"], json!(true), "{r:?}");
        assert_eq!(r["rc"], json!(3));
        assert_eq!(r["stderr"], json!("cannot bind port"));
        assert_eq!(r["active_state"], json!("inactive"));
        assert!(r["msg"].as_str().unwrap().contains("cannot bind port"));

        // Start "succeeds" but the service never comes up: bounded by the timeout.
        let t0 = Instant::now();
        let r = run(
            with(
                base,
                json!({"state": "started", "start": "true", "timeout": 0.5}),
            ),
            false,
        );
        assert_eq!(r["failed"], json!(true), "{r:?}");
        assert!(
            r["msg"]
                .as_str()
                .unwrap()
                .contains("did not report it running")
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn service_command_needs_its_commands() {
        let r = run(
            json!({"name": "x", "state": "started", "manager": "command", "status": "true"}),
            false,
        );
        assert_eq!(r["failed"], json!(true));
        assert!(r["msg"].as_str().unwrap().contains("`start`"));
        let r = run(
            json!({"name": "x", "state": "stopped", "manager": "command"}),
            false,
        );
        assert!(r["msg"].as_str().unwrap().contains("`status`"));
    }

    #[test]
    fn show_output_parses_as_ansible() {
        let m = parse_show_map(
            "Id=a.service\nDescription={ odd\nExecStart={ path=/bin/x ; argv[]=/bin/x\n  more }\nActiveState=active \nnoise\nMainPID=42\n",
        );
        assert_eq!(m["Description"], json!("{ odd"));
        assert_eq!(
            m["ExecStart"],
            json!("{ path=/bin/x ; argv[]=/bin/x\n  more }")
        );
        assert_eq!(m["ActiveState"], json!("active"));
        assert_eq!(m["MainPID"], json!("42"));
        let st = unit_state(&m);
        assert!(st.is_running());
    }

    #[test]
    fn state_actions_follow_ansible() {
        let running = UnitState {
            active_state: "active".into(),
            ..UnitState::default()
        };
        let stopped = UnitState {
            active_state: "inactive".into(),
            ..UnitState::default()
        };
        assert_eq!(state_action(Want::Started, &running), (None, "started"));
        assert_eq!(
            state_action(Want::Started, &stopped),
            (Some("start"), "started")
        );
        assert_eq!(state_action(Want::Stopped, &stopped), (None, "stopped"));
        assert_eq!(
            state_action(Want::Reloaded, &running),
            (Some("reload"), "started")
        );
        assert_eq!(
            state_action(Want::Reloaded, &stopped),
            (Some("start"), "started")
        );
        assert_eq!(
            state_action(Want::Restarted, &running),
            (Some("restart"), "started")
        );
        assert!(counts_as_enabled(true, "enabled"));
        assert!(counts_as_enabled(true, "static"));
        assert!(!counts_as_enabled(true, "enabled-runtime"));
        assert!(!counts_as_enabled(false, "disabled"));
    }

    /// A `systemctl` stand-in: a shell script behind the prefix, keeping its state in `dir`
    /// (`enabled`, `masked` files) and logging every call to `dir/calls`.
    fn fake_systemctl(dir: &Path, load_state: &str) -> Value {
        let d = dir.display();
        let script = format!(
            r#"shift; echo "$*" >> {d}/calls
case "$1" in
  show) printf 'Id=x.service\nLoadState={load_state}\nActiveState=inactive\nSubState=dead\nResult=success\nUnitFileState=disabled\nMainPID=0\n' ;;
  is-enabled) if [ -f {d}/masked ]; then echo masked; exit 1; elif [ -f {d}/enabled ]; then echo enabled; else echo disabled; exit 1; fi ;;
  enable) touch {d}/enabled ;;
  disable) rm -f {d}/enabled ;;
  mask) touch {d}/masked ;;
  unmask) rm -f {d}/masked ;;
  daemon-reload) : ;;
  *) exit 3 ;;
esac"#
        );
        json!(["/bin/sh", "-c", script, "sh"])
    }

    fn calls(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("calls")).unwrap_or_default()
    }

    #[test]
    fn systemd_enable_mask_and_daemon_reload_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = fake_systemctl(dir.path(), "loaded");
        let task = |extra: Value| {
            let mut v = json!({"name": "x.service", "systemctl_prefix": prefix.clone()});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        let r = run(task(json!({"enabled": true})), true);
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert_eq!(r["enabled"], json!(true));
        assert_eq!(r["status"]["UnitFileState"], json!("disabled"));
        assert!(
            !dir.path().join("enabled").exists(),
            "check mode enabled it"
        );
        let r = run(task(json!({"enabled": true})), false);
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert!(dir.path().join("enabled").exists());
        let r = run(task(json!({"enabled": true})), false);
        assert_eq!(r["changed"], json!(false), "{r:?}");
        assert_eq!(r["enabled"], json!(true));

        let r = run(task(json!({"masked": true})), false);
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert!(dir.path().join("masked").exists());
        let r = run(task(json!({"masked": true})), false);
        assert_eq!(r["changed"], json!(false), "{r:?}");

        // daemon_reload alone needs no name, reports no change, and is skipped in check mode.
        let r = run(
            json!({"daemon_reload": true, "systemctl_prefix": prefix.clone()}),
            true,
        );
        assert_eq!(r["changed"], json!(false), "{r:?}");
        assert!(!calls(dir.path()).contains("daemon-reload"));
        let r = run(
            json!({"daemon_reload": true, "systemctl_prefix": prefix.clone()}),
            false,
        );
        assert!(r.get("failed").is_none(), "{r:?}");
        assert_eq!(r["changed"], json!(false), "{r:?}");
        assert!(calls(dir.path()).contains("daemon-reload"));
    }

    #[test]
    fn systemd_unknown_unit_fails_as_ansible() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = fake_systemctl(dir.path(), "not-found");
        let r = run(
            json!({"name": "nope.service", "state": "started", "systemctl_prefix": prefix}),
            false,
        );
        assert_eq!(r["failed"], json!(true), "{r:?}");
        assert_eq!(
            r["msg"],
            json!("Could not find the requested service nope.service: host")
        );
        assert!(
            !calls(dir.path()).contains("start"),
            "{}",
            calls(dir.path())
        );
    }

    #[test]
    fn systemd_arguments_are_checked() {
        let r = run(json!({"state": "started"}), false);
        assert!(
            r["msg"].as_str().unwrap().contains("`name` is required"),
            "{r:?}"
        );
        let r = run(
            json!({"name": "x", "state": "started", "scope": "user"}),
            false,
        );
        assert!(r["msg"].as_str().unwrap().contains("scope `user`"), "{r:?}");
        let r = run(json!({"name": "a*.service", "state": "started"}), false);
        assert!(r["msg"].as_str().unwrap().contains("glob"), "{r:?}");
        let r = run(json!({"name": "x"}), false);
        assert!(r["msg"].as_str().unwrap().contains("one of"), "{r:?}");
        let r = run(
            json!({"name": "x", "state": "reloaded", "manager": "command", "status": "true"}),
            false,
        );
        assert!(r["msg"].as_str().unwrap().contains("reload"), "{r:?}");
    }

    #[test]
    fn service_systemctl_prefix_is_a_list_of_words() {
        assert_eq!(
            crate::modules::arg_strings(Some(&json!(["a", 1]))),
            vec!["a".to_string(), "1".to_string()]
        );
    }
}
