//! `systemd/rampart-agent.service` under a real systemd (the sandbox of `rampart_tests::systemd`):
//! - `systemctl start` returns only once the agent serves (`Type=notify`, READY after recovery
//!   and bind), the unit's hardening is in force, and the watchdog is fed;
//! - an agent SIGKILLed in the middle of a transaction is restarted by systemd (`Restart=always`)
//!   and the restart finishes the interrupted transaction before the unit is `active` again.
//!
//! The test copy of the unit (`rampart-agent-test.service`) is the shipped file with these
//! changes, made line by line so everything else (Type=notify, Restart=always, WatchdogSec,
//! the hardening) is exercised as shipped:
//! - `ExecStart=` runs target/debug/rampart-agent on 127.0.0.1:PORT with a state dir in the
//!   test's temp dir and `--insecure-dev`;
//! - `ReadWritePaths=` names the test's temp dir instead of /var/lib/rampart, /opt, ...: with
//!   `ProtectSystem=strict` the temp dir would otherwise be read-only to the agent and its tasks;
//! - `ExecStartPre=` (which creates those production paths) is dropped: the sandbox's filesystem
//!   is the host's, and the test must not create /var/lib/rampart on the host.
//!
//! Test files live in a temp dir under /var/lib/rampart-tests, not /tmp: /tmp is a private tmpfs
//! inside the sandbox (and PrivateTmp= gives the unit yet another one).

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rampart_tests::deploy::free_port;
use rampart_tests::systemd::Sandbox;
use rampart_tests::{
    CliRun, bin, finished_journal, process_state, reconnecting_client, write_file,
};

const UNIT: &str = "rampart-agent-test.service";
const UNIT_PATH: &str = "/run/systemd/system/rampart-agent-test.service";
const DROPIN_PATH: &str = "/run/systemd/system/rampart-agent-test.service.d/test.conf";
const WAIT: Duration = Duration::from_secs(60);
/// A directory on the host's own filesystem, visible inside the sandbox.
const SHARED_ROOT: &str = "/var/lib/rampart-tests";

/// The crash playbook of the `crash` module: a failing block, a rescue that restores, an always.
const PLAYBOOK: &str = include_str!("../fixtures/ok/crash-deploy.yml");

/// The shipped unit, adapted for the test as the module docs say.
fn test_unit(exec_start: &str, tmp: &Path) -> String {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/rampart-agent.service");
    let text = std::fs::read_to_string(&shipped)
        .unwrap_or_else(|e| panic!("read {}: {e}", shipped.display()));
    let mut seen = (false, false);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("ExecStartPre="))
        .map(|l| {
            if l.starts_with("ExecStart=") {
                seen.0 = true;
                format!("ExecStart={exec_start}")
            } else if l.starts_with("ReadWritePaths=") {
                seen.1 = true;
                format!("ReadWritePaths={}", tmp.display())
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(
        seen,
        (true, true),
        "the shipped unit changed shape:\n{text}"
    );
    for must in [
        "Type=notify",
        "Restart=always",
        "WatchdogSec=30",
        "ProtectSystem=strict",
    ] {
        assert!(lines.iter().any(|l| l == must), "shipped unit lacks {must}");
    }
    lines.join("\n") + "\n"
}

/// Polls `f` every 50 ms until it returns `Some`, at most `timeout`.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The unit's journal, for failure messages.
fn journal(sb: &Sandbox) -> String {
    let out = sb.run(&["journalctl", "--no-pager", "-o", "cat", "-u", UNIT]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `rampart run --agent` client in the background, its output in files; killed on drop.
struct Client {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Client {
    fn start(dir: &Path, playbook: &str, addr: &str, host_dir: &Path) -> Client {
        let out = dir.join("client.out");
        let err = dir.join("client.err");
        let child = reconnecting_client(playbook, addr, host_dir)
            .stdout(File::create(&out).expect("client.out"))
            .stderr(File::create(&err).expect("client.err"))
            .spawn()
            .expect("spawn rampart run");
        Client {
            child: Some(child),
            out,
            err,
        }
    }

    /// Waits (bounded) for the client to finish.
    fn finish(mut self, timeout: Duration) -> CliRun {
        let mut child = self.child.take().expect("client");
        let status = wait_for(timeout, || child.try_wait().expect("try_wait"));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let run = CliRun {
            code: status.and_then(|s| s.code()).unwrap_or(-1),
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        };
        assert!(
            status.is_some(),
            "the client did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            run.stdout,
            run.stderr
        );
        run
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn agent_unit_under_real_systemd() {
    // Everything the sandboxed systemd must see (the unit's binary, the state dir) lives outside
    // /tmp, /var/tmp and /run, which are private tmpfs inside the sandbox; the checkout itself
    // may be under one of them, so the agent binary is copied here too. Removed on drop.
    std::fs::create_dir_all(SHARED_ROOT).expect("create the sandbox-visible test root");
    let tmp = tempfile::Builder::new()
        .prefix("systemd-agent-")
        .tempdir_in(SHARED_ROOT)
        .expect("tempdir under the sandbox-visible test root");
    let dir = tmp.path();
    let state = dir.join("state");
    let host_dir = dir.join("host");
    std::fs::create_dir_all(&host_dir).expect("host dir");
    std::fs::write(host_dir.join("release"), "v1").expect("release");
    std::fs::write(host_dir.join("locked"), "").expect("locked");
    let playbook = write_file(dir, "deploy.yml", PLAYBOOK);

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let agent = dir.join("rampart-agent");
    std::fs::copy(bin("rampart-agent"), &agent)
        .expect("copy rampart-agent where the sandbox sees it");
    let exec = format!(
        "{} --listen {addr} --state-dir {} --insecure-dev",
        agent.display(),
        state.display()
    );
    let unit_file = dir.join(UNIT);
    std::fs::write(&unit_file, test_unit(&exec, dir)).expect("write unit");

    let sb = Sandbox::boot(dir);
    sb.must(&[
        "systemctl",
        "start",
        "systemd-journald.socket",
        "systemd-journald.service",
    ]);
    sb.install_file(&unit_file, UNIT_PATH);
    sb.must(&["systemctl", "daemon-reload"]);

    // (a) `systemctl start` returns once the agent serves: the port answers right away.
    sb.must(&["systemctl", "start", UNIT]);
    assert!(
        TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(2)).is_ok(),
        "{addr} does not answer right after `systemctl start` returned\n{}",
        journal(&sb)
    );
    assert_eq!(sb.active_state(UNIT), "active", "{}", journal(&sb));
    assert_eq!(sb.show(UNIT, "StatusText"), format!("serving on {addr}"));
    assert_eq!(sb.show(UNIT, "WatchdogUSec"), "30s");
    // The hardening is in force on the agent itself.
    let pid = sb.main_pid(UNIT).expect("main pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");

    // The watchdog is fed: with WatchdogSec=2 the agent keeps running past several intervals.
    let write_dropin = |text: &str| {
        let f = dir.join("dropin.conf");
        std::fs::write(&f, text).expect("drop-in");
        sb.install_file(&f, DROPIN_PATH);
        sb.must(&["systemctl", "daemon-reload"]);
    };
    write_dropin("[Service]\nWatchdogSec=2\n");
    sb.must(&["systemctl", "restart", UNIT]);
    let pid = sb.main_pid(UNIT).expect("main pid");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(sb.active_state(UNIT), "active", "{}", journal(&sb));
    assert_eq!(sb.main_pid(UNIT), Some(pid), "restarted: {}", journal(&sb));
    assert_eq!(sb.show(UNIT, "NRestarts"), "0", "{}", journal(&sb));

    // (b) A run that stops the agent after journal record 4 (SIGSTOP, its test hook) ...
    write_dropin(&format!(
        "[Service]\nExecStart=\nExecStart={exec} --debug-stop-after-record 4\n"
    ));
    sb.must(&["systemctl", "restart", UNIT]);
    let client = Client::start(dir, &playbook, &addr, &host_dir);
    let stopped = wait_for(Duration::from_secs(30), || {
        sb.main_pid(UNIT).filter(|p| process_state(*p) == Some('T'))
    });
    let Some(stopped) = stopped else {
        drop(client);
        panic!("the agent never stopped after record 4\n{}", journal(&sb));
    };
    // ... the restart must run without the hook (the drop-in goes first, so no race with
    // RestartSec=1) ...
    sb.must(&["rm", "-f", DROPIN_PATH]);
    sb.must(&["systemctl", "daemon-reload"]);
    // ... SIGKILL the agent: systemd restarts it, and it is `active` only after recovery.
    kill(Pid::from_raw(stopped as i32), Signal::SIGKILL).expect("kill -9 the agent");
    let restarted = wait_for(WAIT, || {
        let pid = sb.main_pid(UNIT)?;
        (pid != stopped && sb.active_state(UNIT) == "active").then_some(pid)
    });
    assert!(
        restarted.is_some(),
        "systemd did not restart the agent within {WAIT:?}: {} ({})\n{}",
        sb.active_state(UNIT),
        sb.show(UNIT, "SubState"),
        journal(&sb)
    );
    assert_eq!(sb.show(UNIT, "NRestarts"), "1", "{}", journal(&sb));
    // READY came after recovery: the transaction is already finished and in history.
    let (_, entries) = finished_journal(&state, "unit active again after SIGKILL");
    assert!(
        entries.iter().any(|e| e["type"] == "recovery"),
        "no recovery record: {entries:?}"
    );
    let end = entries.last().expect("entries");
    assert_eq!(end["type"], "end", "{end}");
    assert_eq!(end["outcome"], "rolled_back", "{end}");
    assert!(
        TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(2)).is_ok(),
        "{addr} does not answer after the restart"
    );

    // The host is back where it was, and the client re-attached and saw the outcome.
    assert_eq!(
        std::fs::read_to_string(host_dir.join("release")).expect("release"),
        "v1"
    );
    for gone in ["state_b1", "state_b3", "locked", "release.tmp"] {
        assert!(!host_dir.join(gone).exists(), "{gone} left behind");
    }
    assert!(host_dir.join("always_done").exists(), "always did not run");
    let run = client.finish(WAIT);
    assert_eq!(
        run.code, 1,
        "client exit code\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.summary()["outcome"], "rolled_back");

    // SIGTERM ends the agent cleanly.
    sb.must(&["systemctl", "stop", UNIT]);
    assert_eq!(sb.active_state(UNIT), "inactive", "{}", journal(&sb));
    assert_eq!(sb.show(UNIT, "Result"), "success", "{}", journal(&sb));
}
