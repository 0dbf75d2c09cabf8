//! One bounded child process: run a program, and kill it (and everything it started) at a
//! deadline.
//!
//! Inputs: the command line (`argv`, run directly, no shell), extra environment variables and a
//! deadline. Output: a [`Ran`] — the exit code, stdout and stderr (each at most [`MAX_OUTPUT`]
//! bytes, the last ones kept, as written: nothing trimmed), whether it was killed at the deadline,
//! or why it could not be started.
//!
//! The child runs in its own process group with stdin on `/dev/null`; at the deadline the whole
//! group gets SIGKILL, so a shell's background children die with it. Its output goes to unlinked
//! scratch files rather than pipes: a command that leaves a daemon behind (a service's start
//! command) would hold a pipe open forever, and a reader waiting for end-of-file with it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The most output kept from one stream of one command (its last bytes).
pub const MAX_OUTPUT: usize = 64 * 1024;

/// What a bounded command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ran {
    /// Exit code; `None` when it timed out, was killed by a signal or could not start.
    pub rc: Option<i32>,
    /// Its standard output, as written (the last [`MAX_OUTPUT`] bytes).
    pub stdout: String,
    /// Its standard error, as written (the last [`MAX_OUTPUT`] bytes).
    pub stderr: String,
    /// It was still running at the deadline and was killed.
    pub timed_out: bool,
    /// It could not be started (or waited for): why.
    pub spawn_error: Option<String>,
}

impl Ran {
    /// Whether it exited with 0.
    pub fn success(&self) -> bool {
        self.rc == Some(0)
    }

    /// A one-line description of how it ended, for messages: `exited with 3: <stderr or
    /// stdout>`, `timed out and was killed`, `could not run: ...`, `was killed by a signal`.
    pub fn describe(&self) -> String {
        if let Some(e) = &self.spawn_error {
            return format!("could not run: {e}");
        }
        if self.timed_out {
            return "timed out and was killed".into();
        }
        let detail = if self.stderr.trim().is_empty() {
            self.stdout.trim()
        } else {
            self.stderr.trim()
        };
        match self.rc {
            Some(rc) if detail.is_empty() => format!("exited with {rc}"),
            Some(rc) => format!("exited with {rc}: {detail}"),
            None => "was killed by a signal".into(),
        }
    }

    fn not_started(why: String) -> Ran {
        Ran {
            spawn_error: Some(why),
            ..Ran::default()
        }
    }
}

/// An unlinked scratch file in the temp directory for a child's output.
fn scratch_file() -> std::io::Result<File> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    let mut last = None;
    for _ in 0..16 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = dir.join(format!(
            ".rampart-run-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no scratch file")))
}

/// The last [`MAX_OUTPUT`] bytes written to `f`, as text (invalid UTF-8 replaced).
fn read_back(mut f: File) -> String {
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(0)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let start = buf.len().saturating_sub(MAX_OUTPUT);
    String::from_utf8_lossy(&buf[start..]).into_owned()
}

/// Runs `argv` (program first) with `env` added to the inherited environment, in its own
/// process group; at `deadline` the whole group gets SIGKILL. Never fails: a command that
/// cannot start comes back with [`Ran::spawn_error`].
pub fn run_bounded(argv: &[String], env: &[(&str, &str)], deadline: Instant) -> Ran {
    let Some((prog, rest)) = argv.split_first() else {
        return Ran::not_started("empty command".into());
    };
    let files = scratch_file().and_then(|o| Ok((o, scratch_file()?)));
    let (out, err) = match files {
        Ok(f) => f,
        Err(e) => return Ran::not_started(format!("cannot create a file for its output: {e}")),
    };
    let (out2, err2) = match (out.try_clone(), err.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return Ran::not_started(format!("cannot share its output file: {e}"));
        }
    };
    let mut cmd = Command::new(prog);
    cmd.args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out2))
        .stderr(Stdio::from(err2))
        .envs(env.iter().copied())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ran::not_started(format!("{prog}: {e}")),
    };
    let mut ran = Ran::default();
    let mut pause = Duration::from_millis(2);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                ran.rc = status.code();
                break;
            }
            Ok(None) => {}
            Err(e) => {
                ran.spawn_error = Some(format!("cannot wait for {prog}: {e}"));
                break;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill();
            let _ = child.wait();
            ran.timed_out = true;
            break;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    ran.stdout = read_back(out);
    ran.stderr = read_back(err);
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(line: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), line.into()]
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn exit_codes_and_output() {
        let ran = run_bounded(&["true".to_string()], &[], soon());
        assert!(ran.success(), "{ran:?}");
        assert!(!ran.timed_out);
        let ran = run_bounded(&["false".to_string()], &[], soon());
        assert_eq!(ran.rc, Some(1));
        assert!(!ran.success());
        assert_eq!(ran.describe(), "exited with 1");
        let ran = run_bounded(&sh("echo out; echo err >&2; exit 4"), &[], soon());
        assert_eq!(
            (ran.rc, ran.stdout.as_str(), ran.stderr.as_str()),
            (Some(4), "out\n", "err\n")
        );
        assert_eq!(ran.describe(), "exited with 4: err");
    }

    #[test]
    fn env_is_added() {
        let ran = run_bounded(
            &sh("printf %s \"$RAMPART_PROCESS_TEST\""),
            &[("RAMPART_PROCESS_TEST", "yes")],
            soon(),
        );
        assert_eq!(ran.stdout, "yes", "{ran:?}");
    }

    #[test]
    fn the_group_is_killed_at_the_deadline() {
        let marker =
            std::env::temp_dir().join(format!("rampart-process-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let t0 = Instant::now();
        // A background child that would outlive its shell: killed with the group.
        let line = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let ran = run_bounded(&sh(&line), &[], Instant::now() + Duration::from_millis(300));
        assert!(ran.timed_out, "{ran:?}");
        assert_eq!(ran.rc, None);
        assert_eq!(ran.describe(), "timed out and was killed");
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !marker.exists(),
            "the background child survived the deadline"
        );
    }

    #[test]
    fn a_leftover_daemon_does_not_hold_it() {
        // Pipes would stay open while the background sleep lives; files do not.
        let t0 = Instant::now();
        let ran = run_bounded(&sh("sleep 5 >/dev/null 2>&1 & echo started"), &[], soon());
        assert!(ran.success(), "{ran:?}");
        assert_eq!(ran.stdout, "started\n");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn output_is_capped_to_its_tail() {
        let ran = run_bounded(
            &sh("head -c 100000 /dev/zero | tr '\\0' a; printf END"),
            &[],
            soon(),
        );
        assert!(ran.success(), "{ran:?}");
        assert_eq!(ran.stdout.len(), MAX_OUTPUT);
        assert!(ran.stdout.ends_with("aaaEND"));
    }

    #[test]
    fn spawn_errors() {
        let ran = run_bounded(
            &["/nonexistent/rampart-no-such-program".to_string()],
            &[],
            soon(),
        );
        assert_eq!(ran.rc, None);
        assert!(!ran.timed_out);
        let e = ran.spawn_error.clone().unwrap();
        assert!(
            e.starts_with("/nonexistent/rampart-no-such-program: "),
            "{e}"
        );
        assert!(ran.describe().starts_with("could not run: "));
        let ran = run_bounded(&[], &[], soon());
        assert_eq!(ran.spawn_error.as_deref(), Some("empty command"));
    }
}
