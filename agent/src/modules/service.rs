//! `service`: bring a service to `started`, `stopped` or `restarted`, under systemd or through
//! configured commands on hosts without systemd.
//!
//! Inputs: `name` (the unit, e.g. `app.service`), `state` (`started | stopped | restarted`),
//! `manager` (`systemd`, the default, or `command`), `timeout` (seconds for the whole task,
//! default 90). With `manager: command`: `status` (a shell command line whose exit code 0 means
//! "running"; always required), `start` (required for `started`/`restarted`) and `stop` (required
//! for `stopped`/`restarted`), each run through `/bin/sh -c`.
//!
//! systemd: `systemctl start|stop|restart NAME` (which waits for the job), bounded by the
//! timeout, then `systemctl show` is polled until the unit reaches the wanted state. A started
//! unit must stay `active` for a short settle time (1 s, within the timeout), so a service whose
//! process dies right after it was forked is reported as failed rather than started. A oneshot
//! unit that ran and ended successfully counts as started.
//!
//! command: the `status` command is run first; `start`/`stop` run only when needed, then `status`
//! is polled until it agrees (exit 0 after a start, non-zero after a stop) or the timeout passes.
//!
//! Idempotent: `started` on a running service and `stopped` on a stopped (or failed) one are `ok`
//! without touching it; `restarted` always changes. Check mode asks the manager for the current
//! state, reports whether the task would change anything, and changes nothing.
//!
//! Output: `name`, `state`, `active_state`, `sub_state` (the command manager reports `active` or
//! `inactive`). On failure also `msg`, `result` (systemd's `Result=`, e.g. `exit-code`), `log` (the
//! unit's last 20 journal lines, `journalctl -u NAME -n 20`; empty when journalctl fails) under
//! systemd, and `rc`, `stdout`, `stderr` of the failing command under the command manager.
//!
//! Reversing: `started` is undone by `stopped` and `stopped` by `started`, so a playbook that
//! stops a service in `block` starts it again in `rescue`. A restart cannot be undone; rescue
//! restarts the service on the restored release.
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

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_f64, arg_str, failed, ok};

/// `service`.
pub static SERVICE: ModuleSpec = ModuleSpec {
    schema: &schema::SERVICE,
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
}

fn run_service(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let name = arg_str(args, "name").unwrap_or_default();
    if name.trim().is_empty() {
        return failed("argument `name` must not be empty");
    }
    let want = match arg_str(args, "state").unwrap_or_default() {
        "started" => Want::Started,
        "stopped" => Want::Stopped,
        "restarted" => Want::Restarted,
        other => return failed(format!("unsupported state `{other}`")),
    };
    let secs = arg_f64(args, "timeout").unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !secs.is_finite() || secs <= 0.0 {
        return failed(format!(
            "argument `timeout` must be a positive number of seconds, not {secs}"
        ));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs.min(MAX_TIMEOUT_SECS));
    let mut r = match arg_str(args, "manager").unwrap_or("systemd") {
        "command" => run_command_manager(args, name, want, ctx.check, deadline),
        _ => {
            let sc = Systemctl {
                prefix: super::arg_strings(args.get("systemctl_prefix")),
            };
            run_systemd(&sc, name, want, ctx.check, deadline, secs)
        }
    };
    r.insert("name".into(), json!(name));
    r.insert(
        "state".into(),
        json!(arg_str(args, "state").unwrap_or_default()),
    );
    r
}

// ---------------------------------------------------------------------------------------------
// systemd.

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

fn run_systemd(
    sc: &Systemctl,
    unit: &str,
    want: Want,
    check: bool,
    deadline: Instant,
    secs: f64,
) -> ModuleResult {
    let before = match sc.show(unit, deadline) {
        Ok(st) => st,
        Err(e) => return failed(format!("cannot read the state of {unit}: {e}")),
    };
    if before.load_state == "not-found" {
        let mut r = failed(format!("Could not find the requested service {unit}"));
        put_state(&mut r, &before);
        return r;
    }
    let needed = match want {
        Want::Started => !before.is_running(),
        Want::Stopped => !before.is_stopped(),
        Want::Restarted => true,
    };
    if !needed || check {
        let mut r = ok(needed);
        put_state(&mut r, &before);
        return r;
    }
    let verb = match want {
        Want::Started => "start",
        Want::Stopped => "stop",
        Want::Restarted => "restart",
    };
    let (argv, ran) = sc.action(verb, unit, deadline);
    if !ran.success() {
        let how = if ran.timed_out {
            format!(
                "did not finish within {secs} s and was killed (the job may still be queued in systemd)"
            )
        } else {
            ran.describe()
        };
        return systemd_failure(sc, unit, format!("`{}` {how}", argv.join(" ")), true);
    }
    match wait_for_unit(sc, unit, want, deadline) {
        Ok(st) => {
            let mut r = ok(true);
            put_state(&mut r, &st);
            r
        }
        Err(msg) => systemd_failure(sc, unit, msg, true),
    }
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
                    Want::Started | Want::Restarted => {
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
        Want::Restarted => true,
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
    fn service_systemctl_prefix_is_a_list_of_words() {
        assert_eq!(
            crate::modules::arg_strings(Some(&json!(["a", 1]))),
            vec!["a".to_string(), "1".to_string()]
        );
    }
}
