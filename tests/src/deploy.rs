//! Deploy scenarios of the shipped playbooks on this host: the sample application packaged into
//! versioned tarballs, the vars the playbooks need for it (command manager, a pid file, a log
//! file), and a guard that stops the app a scenario started.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::{CliRun, bin, rampart, sha256_hex};

/// The shipped transactional deploy playbook.
pub fn deploy_playbook() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks/production-deploy-transactional.yml")
}

/// The shipped rollback playbook.
pub fn rollback_playbook() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks/rollback-production-safe.yml")
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for one test's app).
///
/// Taken below the kernel's ephemeral range (32768–60999 here): a port the kernel hands out
/// with `bind(0)` may be given again to any outgoing connection (an agent's gRPC client, curl)
/// before the app that was meant to listen on it binds it. That is the likeliest cause of one
/// CI-like run where a deploy's first start never came up (its log was gone to confirm). Ports come from a counter per test process, so the tests of
/// one binary (threads; all of `tests/e2e` is one) never pick the same one, and each is checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOW} and {}", LOW + SPAN)
}

/// GET with curl (bounded by 5 s); the body when the answer is 2xx.
pub fn get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Packages the sample app into `dist`: the healthy v1.0.0 and v2.0.0, the bad-but-healthy
/// v2.1.0 (5 % of pages answer 500) and v2.2.0 (pages 200 ms late), and the broken v3.0.0.
pub fn package_sample_app(dist: &Path) {
    let pkg = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks/sample-app/package.sh"))
        .arg(dist)
        .env("SAMPLE_APP_BIN", bin("rampart-sample-app"))
        .output()
        .unwrap();
    assert!(
        pkg.status.success(),
        "package.sh: {}",
        String::from_utf8_lossy(&pkg.stderr)
    );
}

/// The sha256 that `package.sh` wrote beside a tarball.
pub fn sha256_of(dist: &Path, version: &str) -> String {
    let line =
        std::fs::read_to_string(dist.join(format!("sample-app-{version}.tar.gz.sha256"))).unwrap();
    line.split_whitespace().next().unwrap().to_string()
}

/// One scenario's host: a scratch dir holding the state dir, the public path, captures,
/// forensics, the app's pid and log files, and the packaged tarballs.
#[derive(Debug)]
pub struct Scenario {
    /// Scratch dir (removed on drop).
    pub dir: tempfile::TempDir,
    /// Where `package.sh` put the tarballs.
    pub dist: PathBuf,
    /// The port the app listens on.
    pub port: u16,
    /// The agent's state dir.
    pub state: PathBuf,
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario {
    /// A fresh host with the sample app packaged.
    pub fn new() -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let dist = dir.path().join("dist");
        package_sample_app(&dist);
        Self::with_dist_in(dir, dist)
    }

    /// A fresh host with the sample app packaged, its scratch dir under `parent` (e.g. a dir
    /// a systemd sandbox can see, which hides /tmp).
    pub fn new_in(parent: &Path) -> Scenario {
        std::fs::create_dir_all(parent).unwrap();
        let dir = tempfile::tempdir_in(parent).unwrap();
        let dist = dir.path().join("dist");
        package_sample_app(&dist);
        Self::with_dist_in(dir, dist)
    }

    /// A fresh host using tarballs packaged once elsewhere ([`package_sample_app`]).
    pub fn with_dist(dist: &Path) -> Scenario {
        Self::with_dist_in(tempfile::tempdir().unwrap(), dist.to_path_buf())
    }

    fn with_dist_in(dir: tempfile::TempDir, dist: PathBuf) -> Scenario {
        let state = dir.path().join("state");
        Scenario {
            dist,
            port: free_port(),
            state,
            dir,
        }
    }

    /// The scratch dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The app's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.path().join("app.pid")
    }

    /// The pid of the running app, if its pid file names a live process.
    pub fn app_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .is_ok()
            .then_some(pid)
    }

    /// The version `/actuator/info` reports (`{"app":{"version":…}}`), if the app answers.
    pub fn serving(&self) -> Option<String> {
        let body = get(&format!("http://127.0.0.1:{}/actuator/info", self.port))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["app"]["version"].as_str().map(str::to_string)
    }

    /// The version `apps/app/current` points at.
    pub fn current(&self) -> Option<String> {
        let t = std::fs::read_link(self.state.join("apps/app/current")).ok()?;
        Some(t.file_name()?.to_string_lossy().into_owned())
    }

    /// The public path of the app.
    pub fn public_path(&self) -> PathBuf {
        self.path().join("opt/app")
    }

    /// The deploy playbook's vars for `version` of the packaged tarball.
    pub fn vars(&self, version: &str) -> Value {
        let artifact = self.dist.join(format!("sample-app-{version}.tar.gz"));
        self.vars_with(
            version,
            artifact.to_str().unwrap(),
            &sha256_of(&self.dist, version),
        )
    }

    /// The deploy playbook's vars with any artifact and digest.
    pub fn vars_with(&self, version: &str, artifact: &str, sha256: &str) -> Value {
        let dir = self.path();
        let pid = self.pid_file();
        let app = self.public_path();
        let log = dir.join("app.log");
        json!({
            "target_version": version,
            "backend_url": format!("http://127.0.0.1:{}", self.port),
            // The suite's one critical system check: a nearly full CI disk must not fail deploys.
            "disk_max_percent": 99.5,
            // The sample app's schema has two tables (orders and the history).
            "min_tables": 1,
            "health_retries": 25,
            "health_delay": 0.2,
            "state_capture_dir": dir.join("captures"),
            "forensics_dir": dir.join("forensics"),
            "components": [{
                "name": "app",
                "artifact": artifact,
                "sha256": sha256,
                "path": app,
                "service": {
                    "name": "sample-app",
                    "log_file": log,
                    "start": format!(
                        "SAMPLE_APP_LISTEN=127.0.0.1:{port} nohup {app}/start.sh > {log} 2>&1 & echo $! > {pid}",
                        port = self.port, app = app.display(), log = log.display(), pid = pid.display()
                    ),
                    // Stopped when every thread is gone or a zombie (a task releases its
                    // files before it turns zombie; the leader alone turning zombie is not
                    // enough: its other threads may still hold the listening socket); after
                    // 10 s, SIGKILL and wait again. A zombie counts as stopped: the app is
                    // reparented when its start command's shell exits, and PID 1 may reap it
                    // only later.
                    "stop": format!(
                        "if [ -f {pid} ]; then p=$(cat {pid}); kill $p 2>/dev/null; \
                         for sig in TERM KILL; do [ $sig = KILL ] && kill -9 $p 2>/dev/null; \
                         for i in $(seq 100); do live=0; for s in /proc/$p/task/*/status; do \
                         [ -e \"$s\" ] && ! grep -qs '^State:.*Z' \"$s\" && live=1; done; \
                         [ $live = 0 ] && break; sleep 0.1; done; [ $live = 0 ] && break; done; rm -f {pid}; fi",
                        pid = pid.display()
                    ),
                    "status": format!(
                        "test -f {pid} && p=$(cat {pid}) && kill -0 $p 2>/dev/null && ! grep -qs '^State:.*Z' /proc/$p/status",
                        pid = pid.display()
                    ),
                }
            }]
        })
    }

    /// Writes `vars` to a file and returns the `-e @file` argument.
    pub fn vars_arg(&self, name: &str, vars: &Value) -> String {
        let file = self.path().join(format!("vars-{name}.json"));
        std::fs::write(&file, vars.to_string()).unwrap();
        format!("@{}", file.display())
    }

    /// `rampart run PLAYBOOK --local --json --state-dir STATE -e @vars [extra...]`.
    pub fn run(&self, playbook: &Path, vars: &Value, extra: &[&str]) -> CliRun {
        let arg = self.vars_arg("run", vars);
        let mut args = vec![
            "run",
            playbook.to_str().unwrap(),
            "--local",
            "--json",
            "--state-dir",
            self.state.to_str().unwrap(),
            "-e",
            &arg,
        ];
        args.extend_from_slice(extra);
        rampart(&args)
    }

    /// Deploys a packaged version with the shipped playbook.
    pub fn deploy(&self, version: &str, extra: &[&str]) -> CliRun {
        self.run(&deploy_playbook(), &self.vars(version), extra)
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // Stops the app this scenario started (by the pid file its start command wrote).
        if let Some(pid) = self.app_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Every path under `root` with its kind and content digest (files), target (symlinks) and
/// mode: a byte-for-byte picture of a tree to compare before and after.
pub fn tree_snapshot(root: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut budget = 200_000usize;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            budget = budget.checked_sub(1).expect("tree too large to snapshot");
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.push(format!(
                    "L {rel} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!("D {rel} {mode:o}"));
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push(format!("F {rel} {mode:o} {}", sha256_hex(&bytes)));
            }
        }
    }
    out.sort();
    out
}
