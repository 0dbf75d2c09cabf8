//! The `command` probe: a shell command line that must exit 0, and optionally print something.
//!
//! Inputs: `cmd` (run with `sh -c`, in its own process group, all of it killed at the timeout;
//! the last 64 KiB of each output stream kept), `stdout_contains`, `stdout_regex`. Output: the
//! start of its stdout; diagnostics with its exit code, stdout and stderr.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use rampart_host::process::run_bounded;

use super::{excerpt, s};
use crate::Probe;

pub(super) fn command(p: &Value, timeout: Duration) -> Probe {
    let Some(cmd) = s(p, "cmd") else {
        return Probe::fail(Value::Null, "command check without cmd");
    };
    let argv = ["sh".to_string(), "-c".to_string(), cmd.to_string()];
    let ran = run_bounded(&argv, &[], Instant::now() + timeout);
    let outcome = if ran.timed_out {
        Err(format!("timed out after {} ms", timeout.as_millis()))
    } else if let Some(e) = ran.spawn_error {
        Err(e)
    } else {
        Ok((ran.rc, ran.stdout, ran.stderr))
    };
    match outcome {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_output_and_timeout() {
        let t = Duration::from_secs(10);
        let ok = command(&json!({"cmd": "echo ready", "stdout_contains": "ready"}), t);
        assert!(ok.passed, "{ok:?}");
        assert_eq!(ok.value, json!("ready"));
        let bad = command(&json!({"cmd": "echo no db >&2; exit 3"}), t);
        assert!(!bad.passed);
        assert_eq!(bad.message, "`echo no db >&2; exit 3` exited 3");
        assert_eq!(bad.diagnostics["stderr"], json!("no db\n"));
        let started = Instant::now();
        // The background sleep holds no pipe open: the probe ends at its timeout.
        let slow = command(
            &json!({"cmd": "sleep 30 & sleep 30"}),
            Duration::from_millis(300),
        );
        assert_eq!(
            slow.message,
            "`sleep 30 & sleep 30`: timed out after 300 ms"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
