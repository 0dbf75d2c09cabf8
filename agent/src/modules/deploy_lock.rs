//! `deploy_lock`: the host's deploy lock made explicit in playbooks (`state: acquired` in
//! `block`, `state: released` in `always`).
//!
//! Inputs: `state`, `name` (default `deploy`), `timeout` seconds to wait for another holder.
//! Output: `holder` (txid, pid, since), and `reclaimed_from` when the previous holder's process
//! was dead. The lock is the file `<state_dir>/locks/<name>.json`, created with `O_EXCL` so two
//! transactions cannot both take it. The same transaction taking it again (a recovery rerunning
//! its block or rescue) is `ok` and records its new pid. Reversal: `state: released`, which only
//! ever removes this transaction's own lock.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use rampart_playbook::modules::deploy_lock as schema;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_f64, arg_str, failed};
use rampart_host::durable::write_atomic;

/// `deploy_lock`.
pub static DEPLOY_LOCK: ModuleSpec = ModuleSpec {
    schema: &schema::DEPLOY_LOCK,
    run: run_lock,
};

const POLL: Duration = Duration::from_millis(50);
const MAX_TIMEOUT_SECS: f64 = 3600.0;

/// Who holds a deploy lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The holding transaction.
    pub txid: String,
    /// The agent process running it.
    pub pid: u32,
    /// That process's start time (clock ticks after boot), so a reused pid is not mistaken
    /// for the holder.
    pub pid_start: Option<u64>,
    /// When it was taken, RFC 3339.
    pub since: String,
}

fn lock_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("locks").join(format!("{name}.json"))
}

/// A process's start time from `/proc/<pid>/stat` (field 22).
fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that took the lock still runs.
fn alive(h: &LockHolder) -> bool {
    match (process_start(h.pid), h.pid_start) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn read_holder(path: &Path) -> Option<LockHolder> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

fn me(txid: &str) -> LockHolder {
    let pid = std::process::id();
    LockHolder {
        txid: txid.to_string(),
        pid,
        pid_start: process_start(pid),
        since: crate::journal::now_rfc3339(),
    }
}

fn result(changed: bool, name: &str, holder: &LockHolder) -> ModuleResult {
    let mut r = super::ok(changed);
    r.insert("name".into(), json!(name));
    r.insert("holder".into(), json!(holder));
    r
}

fn run_lock(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let name = arg_str(args, "name").unwrap_or("deploy");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return failed(format!(
            "lock name `{name}` is not valid: use letters, digits, - _ ."
        ));
    }
    let path = lock_path(ctx.state_dir, name);
    match arg_str(args, "state") {
        Some("released") => release(&path, name, ctx),
        _ => {
            let timeout = arg_f64(args, "timeout")
                .unwrap_or(0.0)
                .clamp(0.0, MAX_TIMEOUT_SECS);
            acquire(&path, name, ctx, Duration::from_secs_f64(timeout))
        }
    }
}

fn acquire(path: &Path, name: &str, ctx: &ModuleCtx<'_>, timeout: Duration) -> ModuleResult {
    let deadline = Instant::now() + timeout;
    let max_polls = timeout.as_millis() / POLL.as_millis() + 1;
    for _ in 0..=max_polls {
        let current = read_holder(path);
        match current {
            Some(h) if h.txid == ctx.txid => {
                // This transaction again (a recovery rerunning its sections): keep it, with the
                // pid now running it.
                let mine = LockHolder {
                    since: h.since.clone(),
                    ..me(ctx.txid)
                };
                if !ctx.check
                    && mine != h
                    && write_atomic(path, &to_bytes(&mine), Some(0o600)).is_err()
                {
                    return failed(format!("cannot update deploy lock {}", path.display()));
                }
                return result(false, name, &mine);
            }
            Some(h) if !alive(&h) => {
                let mine = me(ctx.txid);
                if !ctx.check
                    && let Err(e) = write_atomic(path, &to_bytes(&mine), Some(0o600))
                {
                    return failed(format!(
                        "cannot reclaim deploy lock {}: {e}",
                        path.display()
                    ));
                }
                let mut r = result(true, name, &mine);
                r.insert("reclaimed_from".into(), json!(h));
                r.insert(
                    "msg".into(),
                    json!(format!(
                        "reclaimed deploy lock `{name}` from transaction {} (pid {} is gone, held since {})",
                        h.txid, h.pid, h.since
                    )),
                );
                return r;
            }
            Some(h) => {
                if Instant::now() >= deadline {
                    let mut r = failed(format!(
                        "deploy lock `{name}` is held by transaction {} (pid {}, since {}); waited {:.1}s",
                        h.txid,
                        h.pid,
                        h.since,
                        timeout.as_secs_f64()
                    ));
                    r.insert("holder".into(), json!(h));
                    return r;
                }
                std::thread::sleep(POLL);
            }
            None => {
                let mine = me(ctx.txid);
                if ctx.check {
                    return result(true, name, &mine);
                }
                match create_exclusive(path, &mine) {
                    Ok(()) => return result(true, name, &mine),
                    // Someone took it between the read and the create: look again.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return failed(format!(
                            "cannot create deploy lock {}: {e}",
                            path.display()
                        ));
                    }
                }
            }
        }
    }
    failed(format!(
        "deploy lock `{name}` could not be taken within {:.1}s",
        timeout.as_secs_f64()
    ))
}

fn release(path: &Path, name: &str, ctx: &ModuleCtx<'_>) -> ModuleResult {
    match read_holder(path) {
        None => {
            let mut r = super::ok(false);
            r.insert("name".into(), json!(name));
            r.insert(
                "msg".into(),
                json!(format!("deploy lock `{name}` was not held")),
            );
            r
        }
        Some(h) if h.txid == ctx.txid => {
            if !ctx.check
                && let Err(e) = fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return failed(format!(
                    "cannot release deploy lock {}: {e}",
                    path.display()
                ));
            }
            result(true, name, &h)
        }
        Some(h) => {
            // Never remove another transaction's lock, even from `always`.
            let mut r = result(false, name, &h);
            r.insert(
                "msg".into(),
                json!(format!(
                    "deploy lock `{name}` is held by transaction {}, not by this one; left alone",
                    h.txid
                )),
            );
            r
        }
    }
}

fn to_bytes(h: &LockHolder) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(h).unwrap_or_default();
    v.push(b'\n');
    v
}

fn create_exclusive(path: &Path, h: &LockHolder) -> std::io::Result<()> {
    rampart_host::durable::create_new(path, &to_bytes(h), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::Call;

    fn run_as(state: &Path, txid: &str, args: Value, check: bool) -> ModuleResult {
        let call = Call {
            check,
            state_dir: Some(state),
            txid: Some(txid),
            ..Call::default()
        };
        call.run(&DEPLOY_LOCK, args)
    }

    #[test]
    fn acquire_is_exclusive_idempotent_and_released_only_by_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let r = run_as(dir.path(), "tx-a", json!({"state": "acquired"}), false);
        assert_eq!(r["changed"], json!(true), "{r:?}");
        let again = run_as(dir.path(), "tx-a", json!({"state": "acquired"}), false);
        assert_eq!(again["changed"], json!(false));
        let other = run_as(
            dir.path(),
            "tx-b",
            json!({"state": "acquired", "timeout": 0.1}),
            false,
        );
        assert_eq!(other["failed"], json!(true));
        assert!(
            other["msg"]
                .as_str()
                .unwrap()
                .contains("held by transaction tx-a"),
            "{other:?}"
        );
        let not_mine = run_as(dir.path(), "tx-b", json!({"state": "released"}), false);
        assert_eq!(not_mine["changed"], json!(false));
        assert!(lock_path(dir.path(), "deploy").exists());
        let released = run_as(dir.path(), "tx-a", json!({"state": "released"}), false);
        assert_eq!(released["changed"], json!(true));
        assert!(!lock_path(dir.path(), "deploy").exists());
        let twice = run_as(dir.path(), "tx-a", json!({"state": "released"}), false);
        assert_eq!(twice["changed"], json!(false));
    }

    #[test]
    fn a_dead_holder_is_reclaimed_and_named() {
        let dir = tempfile::tempdir().unwrap();
        // A holder whose process is gone: a child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = LockHolder {
            txid: "tx-dead".into(),
            pid,
            pid_start: Some(1),
            since: "2026-01-01T00:00:00Z".into(),
        };
        create_exclusive(&lock_path(dir.path(), "deploy"), &dead).unwrap();
        let r = run_as(dir.path(), "tx-new", json!({"state": "acquired"}), false);
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert_eq!(r["reclaimed_from"]["txid"], json!("tx-dead"));
        assert!(r["msg"].as_str().unwrap().contains("reclaimed"));
        assert_eq!(
            read_holder(&lock_path(dir.path(), "deploy")).unwrap().txid,
            "tx-new"
        );
    }

    #[test]
    fn check_mode_takes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = run_as(dir.path(), "tx-a", json!({"state": "acquired"}), true);
        assert_eq!(r["changed"], json!(true));
        assert!(!lock_path(dir.path(), "deploy").exists());
    }
}
