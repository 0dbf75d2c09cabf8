//! The `service` module against a real systemd: `rampart run --local` drives units of a systemd
//! booted as PID 1 of fresh PID/mount/UTS/IPC namespaces, as `shared/notes/systemd-sandbox.md`
//! describes (private tmpfs on /run, /tmp and /var/tmp, a minimal `sandbox.target`), reached
//! through `systemctl_prefix: [nsenter, -t, PID, -m, -p, -u, -i]`.
//!
//! Needs root, `unshare`, `nsenter` and `/lib/systemd/systemd`; without them the test fails and
//! says what is missing. The sandbox's systemd gets SIGKILL when the test ends, also on failure.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rampart_tests::{CliRun, rampart, write_file};
use serde_json::Value;

const SYSTEMD: &str = "/lib/systemd/systemd";
const BOOT_TIMEOUT: Duration = Duration::from_secs(20);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// PID 1 of the sandbox. The host's /tmp is protected by the tmpfs mounts (and checked again).
const BOOT_SCRIPT: &str = r#"set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
for d in /run /tmp /var/tmp; do
  [ "$(stat -f -c %T "$d")" = tmpfs ] || { echo "$d is not a private tmpfs" >&2; exit 1; }
done
mkdir -p /run/systemd/system /run/systemd/journald.conf.d
# Keep the sandbox's journal in its own /run, off the host's /var/log/journal.
printf '[Journal]\nStorage=volatile\nReadKMsg=no\n' > /run/systemd/journald.conf.d/sandbox.conf
cat > /run/systemd/system/sandbox.target <<T
[Unit]
Description=test sandbox
DefaultDependencies=no
AllowIsolate=yes
T
exec /lib/systemd/systemd --system --unit=sandbox.target --log-target=console --log-level=notice
"#;

fn on_path(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// Why this machine cannot run the sandbox, if it cannot.
fn missing_requirements() -> Vec<String> {
    let mut why = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        why.push("not running as root".to_string());
    }
    for prog in ["unshare", "nsenter"] {
        if on_path(prog).is_none() {
            why.push(format!("`{prog}` is not on PATH"));
        }
    }
    if !Path::new(SYSTEMD).is_file() {
        why.push(format!("{SYSTEMD} is missing"));
    }
    why
}

/// Runs a command, killing it if it outlives `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect output")
}

/// A systemd booted in its own namespaces; SIGKILLed on drop.
struct Sandbox {
    unshare: Child,
    /// systemd's pid on the host (0 until found).
    pid: i32,
    console: PathBuf,
}

impl Sandbox {
    fn boot(dir: &Path) -> Sandbox {
        let why = missing_requirements();
        assert!(
            why.is_empty(),
            "cannot boot the systemd sandbox (shared/notes/systemd-sandbox.md): {}",
            why.join("; ")
        );
        let console = dir.join("systemd-console.log");
        let log = File::create(&console).expect("console log");
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--mount-proc",
                "--uts",
                "--ipc",
                "/bin/sh",
                "-c",
                BOOT_SCRIPT,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn unshare");
        let mut sb = Sandbox {
            unshare,
            pid: 0,
            console,
        };
        // systemd is unshare's only child; it is found once the script has exec'ed it.
        let uid = sb.unshare.id();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let children = std::fs::read_to_string(format!("/proc/{uid}/task/{uid}/children"))
                .unwrap_or_default();
            if let Some(pid) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<i32>().ok())
            {
                sb.pid = pid;
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    break;
                }
            }
            if let Ok(Some(st)) = sb.unshare.try_wait() {
                panic!("the sandbox exited early ({st}): {}", sb.console_text());
            }
            assert!(
                Instant::now() < deadline,
                "systemd did not start within {BOOT_TIMEOUT:?}: {}",
                sb.console_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Bounded: until `running` or `degraded`.
        let mut state = String::new();
        while Instant::now() < deadline {
            let out = sb.run(&["systemctl", "is-system-running"]);
            state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                return sb;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "sandbox systemd is `{state}`, not running, after {BOOT_TIMEOUT:?}: {}",
            sb.console_text()
        );
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The prefix that reaches the sandbox.
    fn prefix(&self) -> Vec<String> {
        [
            "nsenter",
            "-t",
            &self.pid.to_string(),
            "-m",
            "-p",
            "-u",
            "-i",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Runs `args` inside the sandbox.
    fn run(&self, args: &[&str]) -> Output {
        let prefix = self.prefix();
        run_bounded(
            Command::new(&prefix[0]).args(&prefix[1..]).args(args),
            CMD_TIMEOUT,
        )
    }

    /// Runs `args` inside the sandbox; it must succeed.
    fn must(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn active_state(&self, unit: &str) -> String {
        let out = self.run(&["systemctl", "show", "-p", "ActiveState", "--value", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.pid > 0 {
            // PID 1 of the namespace ignores SIGTERM; everything inside dies with it.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        // unshare reaps systemd and exits; kill it only if it lingers.
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.unshare.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn playbook(prefix: &[String], task: &str) -> String {
    let items: String = prefix
        .iter()
        .map(|w| format!("            - \"{w}\"\n"))
        .collect();
    format!(
        r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: svc
      service:
{task}
        timeout: 30
        systemctl_prefix:
{items}"#
    )
}

fn run_task(dir: &Path, state_dir: &Path, prefix: &[String], task: &str) -> (CliRun, Value) {
    run_task_with(dir, state_dir, prefix, task, &[])
}

fn run_task_with(
    dir: &Path,
    state_dir: &Path,
    prefix: &[String],
    task: &str,
    extra: &[&str],
) -> (CliRun, Value) {
    let pb = write_file(dir, "service.yml", &playbook(prefix, task));
    let mut args = vec![
        "run",
        pb.as_str(),
        "--local",
        "--json",
        "--state-dir",
        state_dir.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let run = rampart(&args);
    let lines = run.json();
    let result = lines
        .iter()
        .find(|v| v["type"] == "task" && v["name"] == "svc")
        .unwrap_or_else(|| {
            panic!(
                "no task line for `svc`\nstdout:\n{}\nstderr:\n{}",
                run.stdout, run.stderr
            )
        })
        .clone();
    (run, result)
}

fn status_of(line: &Value) -> &str {
    line["status"].as_str().unwrap_or_default()
}

#[test]
fn service_module_drives_a_real_systemd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let sb = Sandbox::boot(dir.path());

    sb.must(&[
        "sh",
        "-c",
        "printf '[Unit]\\nDescription=rampart demo\\n[Service]\\nExecStart=/bin/sleep 300\\n' \
           > /run/systemd/system/rampart-demo.service && \
         printf '[Unit]\\nDescription=rampart broken\\n[Service]\\nExecStart=/bin/false\\n' \
           > /run/systemd/system/rampart-broken.service",
    ]);
    sb.must(&["systemctl", "daemon-reload"]);
    sb.must(&[
        "systemctl",
        "start",
        "systemd-journald.socket",
        "systemd-journald.service",
    ]);
    // systemd's own messages ("Main process exited ...") go to the journal from now on.
    sb.must(&["systemd-analyze", "set-log-target", "journal"]);
    let prefix = sb.prefix();

    let demo_started = "        name: rampart-demo.service\n        state: started";
    // Check mode: would change, changes nothing.
    let (run, line) = run_task_with(dir.path(), &state_dir, &prefix, demo_started, &["--check"]);
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    assert_eq!(sb.active_state("rampart-demo.service"), "inactive");

    let (run, line) = run_task(dir.path(), &state_dir, &prefix, demo_started);
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    assert_eq!(line["result"]["active_state"], "active", "{line}");
    assert_eq!(sb.active_state("rampart-demo.service"), "active");

    let (run, line) = run_task(dir.path(), &state_dir, &prefix, demo_started);
    assert_eq!(status_of(&line), "ok", "{line}\n{}", run.stderr);
    assert_eq!(line["result"]["changed"], false, "{line}");

    let demo_stopped = "        name: rampart-demo.service\n        state: stopped";
    let (run, line) = run_task(dir.path(), &state_dir, &prefix, demo_stopped);
    assert_eq!(status_of(&line), "changed", "{line}\n{}", run.stderr);
    assert_eq!(sb.active_state("rampart-demo.service"), "inactive");

    let (run, line) = run_task(dir.path(), &state_dir, &prefix, demo_stopped);
    assert_eq!(status_of(&line), "ok", "{line}\n{}", run.stderr);

    let broken = "        name: rampart-broken.service\n        state: started";
    let (run, line) = run_task(dir.path(), &state_dir, &prefix, broken);
    assert_eq!(status_of(&line), "failed", "{line}\n{}", run.stdout);
    assert_ne!(run.code, 0, "a failed play exits non-zero");
    let r = &line["result"];
    assert_eq!(r["active_state"], "failed", "{line}");
    assert_eq!(r["sub_state"], "failed", "{line}");
    assert_eq!(r["result"], "exit-code", "{line}");
    assert!(
        !r["msg"].as_str().unwrap_or_default().is_empty(),
        "no message: {line}"
    );
    let log = r["log"].as_array().cloned().unwrap_or_default();
    assert!(
        log.iter().any(|l| l
            .as_str()
            .unwrap_or_default()
            .contains("rampart-broken.service")),
        "no journal lines for the broken unit: {line}"
    );
}
