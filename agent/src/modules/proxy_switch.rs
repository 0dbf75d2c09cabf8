//! `proxy_switch`: makes one of a component's blue/green slots the live one in the proxy the
//! host already runs (nginx or HAProxy), in one step, confirmed through the proxy
//! ([`rampart_host::proxy`]). The other slots keep running; only the proxy changes.
//!
//! Inputs: `proxy` (`nginx` | `haproxy`), `upstream` (alias `backend`: the nginx upstream's or
//! HAProxy backend's name), `slots` (a map of 2 to 8 slot names to their targets: nginx
//! `IP:PORT`, HAProxy the server's name in the backend), `to` (the slot to make live).
//! nginx: `include` (the absolute path of the include file Rampart owns, e.g.
//! `/etc/nginx/rampart/app.conf`, included inside `http {}` by the proxy's own config, which is
//! never written), `nginx` (the binary, default `nginx`), `conf` (`-c`), `prefix` (`-p`),
//! `reload` (a shell command line instead of `nginx -s reload`) or `pid_file` (SIGHUP to the
//! master pid it holds), `confirm_url` (`http://` on this host, through nginx), `confirm_expect`
//! (text the answer must hold: the new release's version, a header naming the slot),
//! `confirm_passes` (answers in a row, default 3), `confirm_timeout` (seconds, default 10),
//! `timeout` (seconds for each `nginx -t` and reload, default 30). haproxy: `socket` (the admin
//! socket, `stats socket PATH level admin`), `ready_timeout` (seconds the new server may take
//! to come up, default 10), `drain_timeout` (seconds the old server's sessions are waited for,
//! default 30; 0 does not wait).
//!
//! nginx: the new include is written crash-safely beside the old one and renamed over it, then
//! `nginx -t`; a refusal puts the previous include back and fails with nginx's message before
//! anything is reloaded. Then nginx is reloaded gracefully (old workers finish their requests)
//! and the switch is confirmed through `confirm_url`; an unconfirmed switch is undone (previous
//! include, reloaded again) and fails. Without `confirm_url` the result says `confirmed: false`.
//! haproxy: `set server BACKEND/NEW state ready`, wait until it runs (else it is put back and the
//! task fails with traffic untouched), `set server BACKEND/OLD state drain`, confirm with
//! `show servers state`, wait for the old server's sessions to finish (bounded).
//!
//! Idempotent: a slot already live is `changed: false` and nothing is touched. Check mode reads
//! the proxy (the include, or `show servers state`) and predicts the switch, touching nothing.
//!
//! Output: `changed`, `before` and `after` (`{name, target}`; `before` is null when the proxy
//! showed no single live slot of ours), `confirmed`, `attempts`, `elapsed_ms`, `diff` (nginx: the
//! include's text before and after), `drained`/`sessions_left` (haproxy). On failure `msg` names
//! the file, socket or command, nginx's or HAProxy's message, and whether traffic moved.
//!
//! Reversing: run `proxy_switch` again with `to` set to the previous slot (the result's
//! `before.name`); it is one proxy operation while that slot still runs, so a rescue flips back
//! first and stops the new slot after.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value, json};

use rampart_host::proxy::haproxy::{Haproxy, HaproxyConfig};
use rampart_host::proxy::nginx::{Confirm, Nginx, NginxConfig, Reload};
use rampart_host::proxy::{Plan, Proxy, ProxyError, Slot, Slots, check_address, check_server_name};
use rampart_playbook::modules::proxy_switch as schema;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_f64, arg_i64, arg_str, failed};

/// `proxy_switch`.
pub static PROXY_SWITCH: ModuleSpec = ModuleSpec {
    schema: &schema::PROXY_SWITCH,
    run: run_proxy_switch,
};

const DEFAULT_NGINX: &str = "nginx";
const DEFAULT_CONFIRM_PASSES: i64 = 3;
const DEFAULT_CONFIRM_TIMEOUT_SECS: f64 = 10.0;
const DEFAULT_COMMAND_TIMEOUT_SECS: f64 = 30.0;
const DEFAULT_READY_TIMEOUT_SECS: f64 = 10.0;
const DEFAULT_DRAIN_TIMEOUT_SECS: f64 = 30.0;
/// Each admin socket command's timeout.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest of any of the module's timeouts.
const MAX_TIMEOUT_SECS: f64 = 600.0;
/// Arguments that only one proxy takes.
const NGINX_ONLY: &[&str] = &[
    "include",
    "nginx",
    "conf",
    "prefix",
    "reload",
    "pid_file",
    "confirm_url",
    "confirm_expect",
    "confirm_passes",
    "confirm_timeout",
    "timeout",
];
const HAPROXY_ONLY: &[&str] = &["socket", "ready_timeout", "drain_timeout"];

fn run_proxy_switch(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let (proxy, to) = match build(args) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let outcome = if ctx.check {
        proxy.plan(&to).map(|plan| (plan, None))
    } else {
        proxy.switch(&to).map(|s| {
            let extra = json!({
                "confirmed": s.confirmed,
                "attempts": s.attempts,
                "elapsed_ms": s.elapsed.as_millis() as u64,
                "drained": s.drained.map(|(d, _)| d),
                "sessions_left": s.drained.map(|(_, n)| n),
            });
            (s.plan, Some(extra))
        })
    };
    match outcome {
        Ok((plan, extra)) => result(&plan, args, extra),
        Err(e) => {
            let mut r = failed(e.to_string());
            r.insert("to".into(), json!(to.name));
            r
        }
    }
}

fn slot_json(s: &Slot) -> Value {
    json!({ "name": s.name, "target": s.target })
}

fn result(plan: &Plan, args: &Map<String, Value>, extra: Option<Value>) -> ModuleResult {
    let mut r = super::ok(plan.changed);
    r.insert(
        "before".into(),
        plan.before.as_ref().map_or(Value::Null, slot_json),
    );
    r.insert("after".into(), slot_json(&plan.after));
    if let Some((before, after)) = &plan.text {
        let header = arg_str(args, "include").unwrap_or_default();
        r.insert(
            "diff".into(),
            json!({
                "before": before.clone().unwrap_or_default(),
                "after": after,
                "before_header": header,
                "after_header": header,
            }),
        );
    }
    if let Some(Value::Object(extra)) = extra {
        r.extend(extra.into_iter().filter(|(_, v)| !v.is_null()));
    }
    let msg = match (&plan.before, plan.changed) {
        (_, false) => format!("slot {} is already live", plan.after.name),
        (Some(b), true) => format!("switched from slot {} to slot {}", b.name, plan.after.name),
        (None, true) => format!("switched to slot {}", plan.after.name),
    };
    r.insert("msg".into(), json!(msg));
    r
}

/// How one kind of slot target is checked.
type TargetCheck = fn(&str) -> Result<(), ProxyError>;

/// The adapter and the slot to make live, from the task's arguments, all checked here.
fn build(args: &Map<String, Value>) -> Result<(Box<dyn Proxy>, Slot), String> {
    let kind = arg_str(args, "proxy").unwrap_or_default();
    let (others, target_ok): (&[&str], TargetCheck) = match kind {
        "nginx" => (HAPROXY_ONLY, check_address),
        "haproxy" => (NGINX_ONLY, check_server_name),
        other => return Err(format!("unsupported proxy `{other}`: nginx or haproxy")),
    };
    if let Some(a) = others.iter().find(|a| args.contains_key(**a)) {
        return Err(format!("argument `{a}` does not apply to proxy {kind}"));
    }
    let upstream = arg_str(args, "upstream")
        .or_else(|| arg_str(args, "backend"))
        .ok_or("argument `upstream` (alias `backend`) is required")?
        .to_string();
    let mut slots = BTreeMap::new();
    let Some(Value::Object(map)) = args.get("slots") else {
        return Err("argument `slots` must map slot names to targets".into());
    };
    for (name, target) in map.iter().take(rampart_host::proxy::MAX_SLOTS + 1) {
        let target = match target {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(format!("slot {name}: target must be text, not {other}")),
        };
        slots.insert(name.clone(), target);
    }
    let slots = Slots::new(slots, target_ok).map_err(|e| e.to_string())?;
    let to = slots
        .get(arg_str(args, "to").unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let secs = |name: &str, default: f64, zero_ok: bool| -> Result<Duration, String> {
        let v = arg_f64(args, name).unwrap_or(default);
        if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) && v <= MAX_TIMEOUT_SECS {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(format!(
                "argument `{name}` must be {} seconds up to {MAX_TIMEOUT_SECS}, not {v}",
                if zero_ok { "0 or more" } else { "above 0" }
            ))
        }
    };
    let proxy: Box<dyn Proxy> = if kind == "nginx" {
        let include = arg_str(args, "include").ok_or("proxy nginx requires argument `include`")?;
        let reload = match (arg_str(args, "reload"), arg_str(args, "pid_file")) {
            (Some(line), None) if !line.trim().is_empty() && line.len() <= 4096 => {
                Reload::Command(line.to_string())
            }
            (Some(_), None) => return Err("argument `reload` must be a command line".into()),
            (None, Some(p)) => Reload::PidFile(PathBuf::from(p)),
            (None, None) => Reload::Signal,
            (Some(_), Some(_)) => return Err("`reload` and `pid_file` exclude each other".into()),
        };
        let confirm = match arg_str(args, "confirm_url") {
            Some(url) => {
                let passes = arg_i64(args, "confirm_passes").unwrap_or(DEFAULT_CONFIRM_PASSES);
                let passes = u32::try_from(passes).map_err(|_| {
                    format!("argument `confirm_passes` must be 1 to 100, not {passes}")
                })?;
                let timeout = secs("confirm_timeout", DEFAULT_CONFIRM_TIMEOUT_SECS, false)?;
                let expect = arg_str(args, "confirm_expect").map(str::to_string);
                Some(Confirm::new(url, expect, passes, timeout).map_err(|e| e.to_string())?)
            }
            None if args.contains_key("confirm_expect") || args.contains_key("confirm_passes") => {
                return Err("`confirm_expect` and `confirm_passes` need `confirm_url`".into());
            }
            None => None,
        };
        Box::new(
            Nginx::new(NginxConfig {
                include: PathBuf::from(include),
                upstream,
                slots,
                nginx: arg_str(args, "nginx").unwrap_or(DEFAULT_NGINX).to_string(),
                conf: arg_str(args, "conf").map(PathBuf::from),
                prefix: arg_str(args, "prefix").map(PathBuf::from),
                reload,
                confirm,
                command_timeout: secs("timeout", DEFAULT_COMMAND_TIMEOUT_SECS, false)?,
            })
            .map_err(|e| e.to_string())?,
        )
    } else {
        let socket = arg_str(args, "socket").ok_or("proxy haproxy requires argument `socket`")?;
        Box::new(
            Haproxy::new(HaproxyConfig {
                socket: PathBuf::from(socket),
                backend: upstream,
                slots,
                io_timeout: SOCKET_TIMEOUT,
                ready_timeout: secs("ready_timeout", DEFAULT_READY_TIMEOUT_SECS, false)?,
                drain_timeout: secs("drain_timeout", DEFAULT_DRAIN_TIMEOUT_SECS, true)?,
            })
            .map_err(|e| e.to_string())?,
        )
    };
    Ok((proxy, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::Call;

    fn nginx_args(include: &str, to: &str) -> Value {
        json!({
            "proxy": "nginx",
            "upstream": "app",
            "slots": {"blue": "127.0.0.1:18081", "green": "127.0.0.1:18082"},
            "to": to,
            "include": include,
            "nginx": "/nonexistent/nginx",
        })
    }

    #[test]
    fn bad_input_fails_before_anything_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let inc = dir.path().join("app.conf");
        let inc_s = inc.to_str().unwrap();
        let cases = [
            (json!({"to": "red"}), "unknown slot"),
            (json!({"slots": {"blue": "127.0.0.1:1"}}), "2 to 8 slots"),
            (
                json!({"slots": {"blue": "127.0.0.1:1", "green": "app.example:80"}}),
                "slot address",
            ),
            (json!({"upstream": "app; evil"}), "invalid upstream"),
            (json!({"include": "relative.conf"}), "absolute path"),
            (json!({"socket": "/run/haproxy.sock"}), "does not apply"),
            (json!({"confirm_url": "http://10.1.1.1/"}), "this host"),
            (json!({"confirm_timeout": 0}), "need `confirm_url`"),
        ];
        for (over, want) in cases {
            let mut args = nginx_args(inc_s, "green");
            for (k, v) in over.as_object().unwrap() {
                args[k] = v.clone();
            }
            if want == "need `confirm_url`" {
                args["confirm_passes"] = json!(2);
            }
            let r = Call::default().run(&PROXY_SWITCH, args);
            assert_eq!(r["failed"], json!(true), "{r:?}");
            let msg = r["msg"].as_str().unwrap();
            assert!(msg.contains(want), "{want}: {msg}");
            assert!(!inc.exists());
        }
    }

    #[test]
    fn check_mode_predicts_the_include_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let inc = dir.path().join("app.conf");
        let args = nginx_args(inc.to_str().unwrap(), "green");
        let check = Call {
            check: true,
            ..Call::default()
        };
        let r = check.run(&PROXY_SWITCH, args.clone());
        assert_eq!(r["changed"], json!(true), "{r:?}");
        assert_eq!(r["before"], Value::Null);
        assert_eq!(r["after"]["name"], json!("green"));
        assert!(
            r["diff"]["after"]
                .as_str()
                .unwrap()
                .contains("server 127.0.0.1:18082;")
        );
        assert!(!inc.exists());
        // A live run whose nginx cannot run fails at `nginx -t` and leaves no include behind.
        let r = Call::default().run(&PROXY_SWITCH, args);
        assert_eq!(r["failed"], json!(true), "{r:?}");
        assert!(
            r["msg"].as_str().unwrap().contains("traffic is unchanged"),
            "{r:?}"
        );
        assert!(!inc.exists());
    }
}
