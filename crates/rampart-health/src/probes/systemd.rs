//! The `systemd` probe: every unit named must be `active`.
//!
//! Inputs: `unit` and/or `units`, `systemctl_prefix` (words put before `systemctl` and
//! `journalctl`, to reach a service manager in another namespace). Output: {unit: ActiveState};
//! on failure the first inactive unit's ActiveState, SubState, Result and last journal lines.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use rampart_host::systemd::Systemctl;

use super::{excerpt, s};
use crate::Probe;

/// Journal lines attached to a failure.
const LOG_LINES: usize = 10;

pub(super) fn systemd(p: &Value, timeout: Duration) -> Probe {
    let mut units = rampart_playbook::schema::arg_strings(p.get("units"));
    if let Some(unit) = s(p, "unit") {
        units.insert(0, unit.to_string());
    }
    if units.is_empty() {
        return Probe::fail(Value::Null, "systemd check without a unit");
    }
    let sc = Systemctl {
        prefix: rampart_playbook::schema::arg_strings(p.get("systemctl_prefix")),
    };
    let mut states = serde_json::Map::new();
    for unit in &units {
        let st = match sc.show(unit, Instant::now() + timeout) {
            Ok(st) => st,
            Err(e) => {
                return Probe::fail(
                    Value::Null,
                    excerpt(&format!("cannot read the state of {unit}: {e}")),
                );
            }
        };
        let (active, sub, result) = (st.active_state, st.sub_state, st.result);
        if active != "active" {
            let log = sc.journal_messages(unit, LOG_LINES, Instant::now() + timeout);
            return Probe::fail(
                json!(active),
                format!("{unit} is {active} ({sub}, result {result})"),
            )
            .with(json!({
                "unit": unit, "ActiveState": active, "SubState": sub, "Result": result,
                "log": log,
            }));
        }
        states.insert(unit.clone(), json!(active));
    }
    Probe::pass(
        Value::Object(states),
        format!("{} active", units.join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters whose prefix turns `systemctl show` and `journalctl` into `script`.
    fn params(unit: &str, script: &str) -> Value {
        json!({"unit": unit, "systemctl_prefix": ["/bin/sh", "-c", script, "sh"]})
    }

    #[test]
    fn active_inactive_and_unreadable_units() {
        let t = Duration::from_secs(10);
        let ok = systemd(
            &params(
                "a.service",
                "echo SubState=running; echo ActiveState=active",
            ),
            t,
        );
        assert!(ok.passed, "{ok:?}");
        assert_eq!(ok.value, json!({"a.service": "active"}));
        let script = r#"case "$1" in
            systemctl) printf 'ActiveState=failed\nSubState=failed\nResult=exit-code\n';;
            journalctl) echo cannot open config;;
        esac"#;
        let failed = systemd(&params("b.service", script), t);
        assert!(!failed.passed);
        assert_eq!(
            failed.message,
            "b.service is failed (failed, result exit-code)"
        );
        assert_eq!(failed.diagnostics["log"], json!(["cannot open config"]));
        let unreadable = systemd(&params("c.service", "echo no bus >&2; exit 1"), t);
        assert!(!unreadable.passed);
        assert!(
            unreadable
                .message
                .starts_with("cannot read the state of c.service: ")
                && unreadable.message.ends_with("exited with 1: no bus"),
            "{unreadable:?}"
        );
    }
}
