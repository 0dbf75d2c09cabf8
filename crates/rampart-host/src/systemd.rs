//! The one way to ask systemd: `systemctl show`, `systemctl start|stop|restart` and
//! `journalctl -u`, each a bounded child process ([`crate::process`]).
//!
//! Inputs: a [`Systemctl`] (a command prefix, empty on a normal host; `nsenter -t PID -m -p ...`
//! to reach a service manager in another namespace), a unit name and a deadline per call.
//! Outputs: a unit's [`UnitState`] (or a message saying why it could not be read), what an action
//! did ([`Ran`]), a unit's last journal lines (empty when journalctl fails).
//!
//! Every call runs with [`ENV`] (no pager, no colours).

use std::time::Instant;

use crate::process::{Ran, run_bounded};

/// The environment every `systemctl` / `journalctl` call gets: no pager, no colours.
pub const ENV: &[(&str, &str)] = &[("SYSTEMD_PAGER", ""), ("SYSTEMD_COLORS", "0")];

/// How to reach systemd: `systemctl` and `journalctl`, each prefixed by `prefix`.
#[derive(Debug, Clone, Default)]
pub struct Systemctl {
    /// Words put before every `systemctl` / `journalctl` command line.
    pub prefix: Vec<String>,
}

/// A unit's state as `systemctl show` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    /// `loaded`, `not-found`, ...
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, ...
    pub active_state: String,
    /// `running`, `dead`, `failed`, ...
    pub sub_state: String,
    /// `success`, `exit-code`, `signal`, `timeout`, ...
    pub result: String,
}

impl UnitState {
    /// `active` or `reloading`.
    pub fn is_running(&self) -> bool {
        matches!(self.active_state.as_str(), "active" | "reloading")
    }

    /// `inactive` or `failed`.
    pub fn is_stopped(&self) -> bool {
        matches!(self.active_state.as_str(), "inactive" | "failed")
    }
}

/// Parses `systemctl show -p ...` output: `Key=Value` lines, in systemctl's own order (not the
/// asked one); unknown keys and other lines are ignored, values are trimmed.
pub fn parse_show(stdout: &str) -> UnitState {
    let mut st = UnitState::default();
    for line in stdout.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let slot = match k {
                "LoadState" => &mut st.load_state,
                "ActiveState" => &mut st.active_state,
                "SubState" => &mut st.sub_state,
                "Result" => &mut st.result,
                _ => continue,
            };
            *slot = v.trim().to_string();
        }
    }
    st
}

impl Systemctl {
    /// `program args...` behind the prefix, as a command line.
    pub fn argv(&self, program: &str, args: &[&str]) -> Vec<String> {
        self.prefix
            .iter()
            .cloned()
            .chain(std::iter::once(program.to_string()))
            .chain(args.iter().map(|s| s.to_string()))
            .collect()
    }

    /// The unit's current state; an error (naming the command) when systemctl fails, times out
    /// or reports no `ActiveState`.
    pub fn show(&self, unit: &str, deadline: Instant) -> Result<UnitState, String> {
        let argv = self.argv(
            "systemctl",
            &[
                "show",
                "--no-pager",
                "-p",
                "LoadState,ActiveState,SubState,Result",
                "--",
                unit,
            ],
        );
        let ran = run_bounded(&argv, ENV, deadline);
        if !ran.success() {
            return Err(format!("`{}` {}", argv.join(" "), ran.describe()));
        }
        let st = parse_show(&ran.stdout);
        if st.active_state.is_empty() {
            return Err(format!(
                "`{}` did not report ActiveState: {}",
                argv.join(" "),
                ran.stdout.trim_end_matches(['\n', '\r'])
            ));
        }
        Ok(st)
    }

    /// `systemctl VERB UNIT` (start, stop, restart), which waits for the job: the command line
    /// run and what it did.
    pub fn action(&self, verb: &str, unit: &str, deadline: Instant) -> (Vec<String>, Ran) {
        let argv = self.argv("systemctl", &[verb, "--no-ask-password", "--", unit]);
        let ran = run_bounded(&argv, ENV, deadline);
        (argv, ran)
    }

    /// The unit's last `lines` journal entries in journalctl's default format (with timestamps,
    /// `-- ` marker lines left out); empty when journalctl fails.
    pub fn journal(&self, unit: &str, lines: usize, deadline: Instant) -> Vec<String> {
        let n = lines.to_string();
        let argv = self.argv("journalctl", &["-u", unit, "--no-pager", "-q", "-n", &n]);
        let ran = run_bounded(&argv, ENV, deadline);
        if !ran.success() {
            return Vec::new();
        }
        ran.stdout
            .trim_end_matches(['\n', '\r'])
            .lines()
            .filter(|l| !l.starts_with("-- "))
            .map(str::to_string)
            .collect()
    }

    /// The unit's last `lines` journal messages alone (`-o cat`: no timestamps); whatever
    /// journalctl printed even when it exits non-zero, empty when it cannot run or times out.
    pub fn journal_messages(&self, unit: &str, lines: usize, deadline: Instant) -> Vec<String> {
        let n = lines.to_string();
        let argv = self.argv(
            "journalctl",
            &["-u", unit, "-n", &n, "--no-pager", "-o", "cat"],
        );
        let ran = run_bounded(&argv, ENV, deadline);
        if ran.timed_out || ran.spawn_error.is_some() {
            return Vec::new();
        }
        ran.stdout.lines().map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn show_output_in_any_order() {
        let st = parse_show(
            "Result=exit-code\nSubState=failed\nNoise\nActiveState=failed \nLoadState=loaded\n\
             MainPID=0\n",
        );
        assert_eq!(
            st,
            UnitState {
                load_state: "loaded".into(),
                active_state: "failed".into(),
                sub_state: "failed".into(),
                result: "exit-code".into(),
            }
        );
        assert!(st.is_stopped() && !st.is_running());
        let st = parse_show("ActiveState=reloading\n");
        assert!(st.is_running() && !st.is_stopped());
        assert_eq!(st.load_state, "");
        assert_eq!(parse_show(""), UnitState::default());
    }

    #[test]
    fn the_prefix_is_prepended() {
        let sc = Systemctl {
            prefix: vec!["nsenter".into(), "-t".into(), "1".into()],
        };
        assert_eq!(
            sc.argv("systemctl", &["is-active", "x"]),
            ["nsenter", "-t", "1", "systemctl", "is-active", "x"]
        );
        assert_eq!(Systemctl::default().argv("journalctl", &[]), ["journalctl"]);
    }

    /// A prefix that turns every call into a shell script printing canned output.
    fn fake(script: &str) -> Systemctl {
        Systemctl {
            prefix: vec!["/bin/sh".into(), "-c".into(), script.into(), "sh".into()],
        }
    }

    #[test]
    fn show_through_a_prefix() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let sc = fake("printf 'ActiveState=active\\nSubState=running\\nLoadState=loaded\\n'");
        let st = sc.show("x.service", deadline).unwrap();
        assert!(st.is_running());
        assert_eq!(st.sub_state, "running");
        let e = fake("echo no bus >&2; exit 1")
            .show("x.service", deadline)
            .unwrap_err();
        assert!(
            e.contains("systemctl show") && e.ends_with("exited with 1: no bus"),
            "{e}"
        );
        let e = fake("echo Hello").show("x.service", deadline).unwrap_err();
        assert!(e.ends_with("did not report ActiveState: Hello"), "{e}");
        let e = fake("sleep 30")
            .show("x.service", Instant::now() + Duration::from_millis(200))
            .unwrap_err();
        assert!(e.ends_with("timed out and was killed"), "{e}");
    }

    #[test]
    fn journals_through_a_prefix() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let sc = fake("printf -- '-- Boot 1 --\\nline one\\nline two\\n'");
        assert_eq!(sc.journal("x", 20, deadline), ["line one", "line two"]);
        assert_eq!(
            sc.journal_messages("x", 10, deadline),
            ["-- Boot 1 --", "line one", "line two"]
        );
        let failing = fake("echo partial; exit 1");
        assert!(failing.journal("x", 20, deadline).is_empty());
        assert_eq!(failing.journal_messages("x", 10, deadline), ["partial"]);
    }
}
