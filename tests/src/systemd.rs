//! A real systemd for tests: booted as PID 1 of fresh PID/mount/UTS/IPC namespaces, as
//! `docs/notes/systemd-sandbox.md` describes (private tmpfs on /run, /tmp and /var/tmp so its
//! tmpfiles setup cannot empty the host's /tmp; a volatile journal off the host's
//! /var/log/journal; a minimal `sandbox.target` so none of the host's units start), reached with
//! `nsenter -t PID -m -p -u -i`. The network namespace is the host's, so 127.0.0.1 is shared; the
//! filesystem is the host's except /run, /tmp and /var/tmp.
//!
//! Needs root, `unshare`, `nsenter` and `/lib/systemd/systemd`; without them [`Sandbox::boot`]
//! panics and says what is missing. The sandbox's systemd gets SIGKILL when the [`Sandbox`] is
//! dropped, also when a test fails.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The systemd binary booted as the sandbox's PID 1.
pub const SYSTEMD: &str = "/lib/systemd/systemd";
/// How long systemd may take to reach `running`.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one command inside the sandbox may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

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
pub fn missing_requirements() -> Vec<String> {
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
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
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
#[derive(Debug)]
pub struct Sandbox {
    unshare: Child,
    /// systemd's pid on the host (0 until found).
    pub pid: i32,
    console: PathBuf,
}

impl Sandbox {
    /// Boots systemd; its console log goes to `dir/systemd-console.log`. Panics (saying what is
    /// missing) when the machine cannot run it, and when it is not `running` within
    /// [`BOOT_TIMEOUT`].
    pub fn boot(dir: &Path) -> Sandbox {
        let why = missing_requirements();
        assert!(
            why.is_empty(),
            "cannot boot the systemd sandbox (docs/notes/systemd-sandbox.md): {}",
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

    /// What systemd wrote to its console so far.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The prefix that reaches the sandbox.
    pub fn prefix(&self) -> Vec<String> {
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
    pub fn run(&self, args: &[&str]) -> Output {
        let prefix = self.prefix();
        run_bounded(
            Command::new(&prefix[0]).args(&prefix[1..]).args(args),
            CMD_TIMEOUT,
        )
    }

    /// Starts the sandbox's journald and sends systemd's own messages there, so units' logs
    /// and "Main process exited" lines can be read with journalctl.
    pub fn start_journal(&self) {
        self.must(&[
            "systemctl",
            "start",
            "systemd-journald.socket",
            "systemd-journald.service",
        ]);
        self.must(&["systemd-analyze", "set-log-target", "journal"]);
    }

    /// Runs `args` inside the sandbox; it must succeed.
    pub fn must(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The unit's `ActiveState`.
    pub fn active_state(&self, unit: &str) -> String {
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

impl Sandbox {
    /// One property of a unit (`systemctl show -p PROP --value UNIT`).
    pub fn show(&self, unit: &str, prop: &str) -> String {
        let out = self.run(&["systemctl", "show", "-p", prop, "--value", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The unit's main process as a host pid (the sandbox shares no pid numbers with the host,
    /// so this reads `/proc/<ns pid>` inside and maps it through `NSpid`); `None` when it has
    /// no main process.
    pub fn main_pid(&self, unit: &str) -> Option<u32> {
        let ns_pid: u32 = self.show(unit, "MainPID").parse().ok().filter(|p| *p > 0)?;
        host_pid_of(self.pid, ns_pid)
    }

    /// Writes each `(name, text)` unit file to /run/systemd/system inside the sandbox (which
    /// only the sandbox sees), then `systemctl daemon-reload`.
    pub fn add_units(&self, units: &[(&str, &str)]) {
        for (name, text) in units {
            let dest = format!("/run/systemd/system/{name}");
            self.must(&["sh", "-c", "printf '%s' \"$1\" > \"$2\"", "sh", text, &dest]);
        }
        self.must(&["systemctl", "daemon-reload"]);
    }

    /// Copies the host file `src` to `dest` inside the sandbox (for example a unit under
    /// /run/systemd/system, which only the sandbox sees), creating its directory.
    pub fn install_file(&self, src: &Path, dest: &str) {
        let src = src.to_str().expect("utf-8 path");
        self.must(&["install", "-D", "-m", "0644", src, dest]);
    }
}

/// The host pid of the process that is `ns_pid` in the PID namespace of `ns_init` (a host pid),
/// found through the `NSpid` lines of /proc/*/status.
pub fn host_pid_of(ns_init: i32, ns_pid: u32) -> Option<u32> {
    let ns = std::fs::read_link(format!("/proc/{ns_init}/ns/pid")).ok()?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .ok()
            .as_ref()
            != Some(&ns)
        {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let inner = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|p| p.parse::<u32>().ok());
        if inner == Some(ns_pid) {
            return Some(pid);
        }
    }
    None
}
