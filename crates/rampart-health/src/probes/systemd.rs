//! The `systemd` probe: every unit named must be `active`.
//!
//! Inputs: `unit` and/or `units`, `systemctl_prefix` (words put before `systemctl` and
//! `journalctl`, to reach a service manager in another namespace). Output: {unit: ActiveState};
//! on failure the first inactive unit's ActiveState, SubState, Result and last journal lines.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::{excerpt, run_bounded, s};
use crate::Probe;

pub(super) fn systemd(p: &Value, timeout: Duration) -> Probe {
    let mut units = rampart_playbook::schema::arg_strings(p.get("units"));
    if let Some(unit) = s(p, "unit") {
        units.insert(0, unit.to_string());
    }
    if units.is_empty() {
        return Probe::fail(Value::Null, "systemd check without a unit");
    }
    let prefix: Vec<String> = rampart_playbook::schema::arg_strings(p.get("systemctl_prefix"));
    let build = |program: &str, args: &[&str]| {
        let mut argv: Vec<String> = prefix.clone();
        argv.push(program.to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    let mut states = serde_json::Map::new();
    for unit in &units {
        // `Key=Value` lines: systemctl prints properties in its own order, not the asked one.
        let shown = run_bounded(
            build(
                "systemctl",
                &["show", "-p", "ActiveState,SubState,Result", unit],
            ),
            timeout,
        );
        let (active, sub, result) = match shown {
            Ok((Some(0), out, _)) => {
                let prop = |key: &str| {
                    out.lines()
                        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                        .unwrap_or("")
                        .trim()
                        .to_string()
                };
                (prop("ActiveState"), prop("SubState"), prop("Result"))
            }
            Ok((_, out, err)) => {
                return Probe::fail(
                    Value::Null,
                    format!("systemctl show {unit} failed: {}", excerpt(&(err + &out))),
                );
            }
            Err(e) => return Probe::fail(Value::Null, format!("systemctl show {unit}: {e}")),
        };
        if active != "active" {
            let log = run_bounded(
                build(
                    "journalctl",
                    &["-u", unit, "-n", "10", "--no-pager", "-o", "cat"],
                ),
                timeout,
            )
            .map(|(_, o, _)| o)
            .unwrap_or_default();
            return Probe::fail(
                json!(active),
                format!("{unit} is {active} ({sub}, result {result})"),
            )
            .with(json!({
                "unit": unit, "ActiveState": active, "SubState": sub, "Result": result,
                "log": log.lines().collect::<Vec<_>>(),
            }));
        }
        states.insert(unit.clone(), json!(active));
    }
    Probe::pass(
        Value::Object(states),
        format!("{} active", units.join(", ")),
    )
}
