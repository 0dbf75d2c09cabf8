//! The `command` probe: a shell command line that must exit 0, and optionally print something.
//!
//! Inputs: `cmd` (run with `sh -c`), `stdout_contains`, `stdout_regex`. Output: the start of its
//! stdout; diagnostics with its exit code, stdout and stderr.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::{excerpt, run_bounded, s};
use crate::Probe;

pub(super) fn command(p: &Value, timeout: Duration) -> Probe {
    let Some(cmd) = s(p, "cmd") else {
        return Probe::fail(Value::Null, "command check without cmd");
    };
    let mut c = Command::new("sh");
    c.args(["-c", cmd]);
    match run_bounded(c, timeout) {
        Ok((code, out, err)) => {
            let diag = json!({"rc": code, "stdout": excerpt(&out), "stderr": excerpt(&err)});
            if code != Some(0) {
                return Probe::fail(
                    json!(code),
                    format!(
                        "`{cmd}` exited {}",
                        code.map_or("by a signal".into(), |c| c.to_string())
                    ),
                )
                .with(diag);
            }
            if let Some(text) = s(p, "stdout_contains")
                && !out.contains(text)
            {
                return Probe::fail(json!(out.trim()), format!("`{cmd}` printed no {text:?}"))
                    .with(diag);
            }
            if let Some(pattern) = s(p, "stdout_regex") {
                match regex::Regex::new(pattern) {
                    Ok(re) if re.is_match(&out) => {}
                    Ok(_) => {
                        return Probe::fail(
                            json!(out.trim()),
                            format!("`{cmd}` output does not match /{pattern}/"),
                        )
                        .with(diag);
                    }
                    Err(e) => {
                        return Probe::fail(Value::Null, format!("bad regex {pattern:?}: {e}"));
                    }
                }
            }
            Probe::pass(json!(excerpt(out.trim())), format!("`{cmd}` exited 0"))
        }
        Err(e) => Probe::fail(Value::Null, format!("`{cmd}`: {e}")),
    }
}
