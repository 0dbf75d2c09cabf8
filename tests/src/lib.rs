//! Helpers shared by the end-to-end tests: the built binaries, real `rampart-agent` processes on
//! 127.0.0.1, and `rampart run` invocations with their JSON output.
//!
//! The binaries come from the workspace's target directory; the README's test command builds them
//! (`cargo build --bins`) before `cargo test`.

pub mod chaos;
pub mod deploy;
pub mod fake_apis;
pub mod fleet;
pub mod load;
pub mod pg;
pub mod prometheus;
pub mod proxy;
pub mod pushgateway;
pub mod redis;
pub mod systemd;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// How long an agent may take to start serving (recovery included).
pub const AGENT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// The path of a workspace binary; panics with the command to run when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first with `cargo build --bins` (the README's test command does)",
        p.display()
    );
    p
}

/// A child process that is SIGKILLed and reaped when dropped, or earlier by [`KillOnDrop::kill9`].
#[derive(Debug)]
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    /// Takes charge of `child`.
    pub fn new(child: Child) -> KillOnDrop {
        KillOnDrop(Some(child))
    }

    /// Its pid (0 once killed).
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// SIGKILLs it and reaps it (nothing when already done).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `rampart-agent` process serving on 127.0.0.1; SIGKILLed when dropped.
#[derive(Debug)]
pub struct AgentProc {
    child: KillOnDrop,
    /// The address it serves on.
    pub addr: String,
    /// Its state directory.
    pub state_dir: PathBuf,
}

impl AgentProc {
    /// Starts an agent on a free port.
    pub fn start(state_dir: &Path) -> AgentProc {
        Self::start_with(state_dir, "127.0.0.1:0", &[])
    }

    /// Starts an agent on `listen` with extra flags; waits until it serves (after recovery).
    pub fn start_with(state_dir: &Path, listen: &str, extra: &[&str]) -> AgentProc {
        Self::launch(state_dir, listen, &[&["--insecure-dev"], extra].concat())
    }

    /// Starts an agent on a free port serving mutual TLS with `tls_args`
    /// (`--tls-cert F --tls-key F --tls-ca F...`; no `--insecure-dev`); waits until it serves.
    pub fn start_tls(state_dir: &Path, tls_args: &[&str]) -> AgentProc {
        Self::launch(state_dir, "127.0.0.1:0", tls_args)
    }

    /// Starts an agent with TLS flags (no `--insecure-dev`) on a given address, e.g. to
    /// restart it where an inventory expects it.
    pub fn start_tls_on(state_dir: &Path, listen: &str, tls_args: &[&str]) -> AgentProc {
        Self::launch(state_dir, listen, tls_args)
    }

    /// As [`AgentProc::start_tls`], logging warnings and errors to the file `log`.
    pub fn start_tls_logging(state_dir: &Path, tls_args: &[&str], log: &Path) -> AgentProc {
        Self::launch_logging(state_dir, "127.0.0.1:0", tls_args, Some(log))
    }

    fn launch(state_dir: &Path, listen: &str, args: &[&str]) -> AgentProc {
        Self::launch_logging(state_dir, listen, args, None)
    }

    fn launch_logging(
        state_dir: &Path,
        listen: &str,
        args: &[&str],
        log: Option<&Path>,
    ) -> AgentProc {
        let (level, stderr) = match log {
            Some(p) => (
                "warn",
                Stdio::from(std::fs::File::create(p).expect("agent log")),
            ),
            None => ("error", Stdio::inherit()),
        };
        let mut child = Command::new(bin("rampart-agent"))
            .arg("--listen")
            .arg(listen)
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn rampart-agent");
        let addr = wait_listening(&mut child, "rampart-agent", AGENT_START_TIMEOUT);
        AgentProc {
            child: KillOnDrop::new(child),
            addr,
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// SIGKILLs the agent and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// Waits until the agent has stopped itself (SIGSTOP through its test hook).
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if process_state(self.pid()) == Some('T') {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

/// Waits for the `listening on ADDR` line a server started with a piped stdout prints once it
/// serves, and returns ADDR; kills it and panics naming `what` after `timeout`. The rest of its
/// stdout is drained by a thread.
pub fn wait_listening(child: &mut Child, what: &str, timeout: Duration) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!("{what} did not start serving within {timeout:?} (exit: {status:?})");
        }
    }
}

/// A process's state letter from /proc (R, S, T, Z, ...).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

/// The result of one `rampart` invocation.
#[derive(Debug)]
pub struct CliRun {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliRun {
    /// From a finished process.
    pub fn from_output(o: Output) -> CliRun {
        CliRun {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The JSON lines of `--json` output.
    pub fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// The `task` lines as (name, section, status).
    pub fn tasks(&self) -> Vec<(String, String, String)> {
        self.json()
            .iter()
            .filter(|v| v["type"] == "task")
            .map(|v| {
                (
                    v["name"].as_str().unwrap_or_default().to_string(),
                    v["section"].as_str().unwrap_or_default().to_string(),
                    v["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// The final summary line.
    pub fn summary(&self) -> Value {
        self.json()
            .into_iter()
            .rev()
            .find(|v| v["type"] == "summary")
            .unwrap_or_else(|| {
                panic!(
                    "no summary line in output:\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            })
    }
}

/// The longest any one `rampart` command of a test may run before it is killed (a hung CLI
/// would otherwise stall the whole e2e binary).
pub const CLI_DEADLINE: Duration = Duration::from_secs(600);

/// Runs `cmd` (its stdin, stdout and stderr are set here) to completion and returns what it did;
/// at `deadline` it is killed and the test panics, naming it.
pub fn run_to_end(mut cmd: Command, deadline: Duration) -> CliRun {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let until = Instant::now() + deadline;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {deadline:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CliRun {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `rampart` with `args` (bounded by [`CLI_DEADLINE`]) and returns what it did.
pub fn rampart(args: &[&str]) -> CliRun {
    let mut cmd = Command::new(bin("rampart"));
    cmd.args(args);
    run_to_end(cmd, CLI_DEADLINE)
}

/// Runs `rampart run PLAYBOOK --local --json --state-dir STATE_DIR EXTRA...` and returns what
/// it did.
pub fn run_local_json(playbook: impl AsRef<Path>, state_dir: &Path, extra: &[&str]) -> CliRun {
    let playbook = playbook.as_ref().to_str().expect("utf-8 playbook path");
    let state_dir = state_dir.to_str().expect("utf-8 state dir");
    let mut args = vec![
        "run",
        playbook,
        "--local",
        "--json",
        "--state-dir",
        state_dir,
    ];
    args.extend_from_slice(extra);
    rampart(&args)
}

/// `rampart run PLAYBOOK --agent ADDR --json --reconnect-timeout 60 -e dir=HOST_DIR` with no
/// stdin, not yet spawned (the caller says where its output goes): the client of the crash
/// playbook (`fixtures/ok/crash-deploy.yml`), which rides out an agent's restart.
pub fn reconnecting_client(playbook: &str, addr: &str, host_dir: &Path) -> Command {
    let mut cmd = Command::new(bin("rampart"));
    cmd.args([
        "run",
        playbook,
        "--agent",
        addr,
        "--json",
        "--reconnect-timeout",
        "60",
    ])
    .arg("-e")
    .arg(format!("dir={}", host_dir.display()))
    .stdin(Stdio::null());
    cmd
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write fixture");
    p.to_string_lossy().into_owned()
}

/// Parses every journal line under `state_dir/{journal,history}`; returns the entries per file.
pub fn read_journals(state_dir: &Path) -> Vec<(PathBuf, Vec<Value>)> {
    let mut out = Vec::new();
    for sub in ["journal", "history"] {
        let Ok(rd) = std::fs::read_dir(state_dir.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let text = std::fs::read_to_string(e.path()).expect("read journal");
            let entries = text
                .lines()
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|err| {
                        panic!("{}: unparseable line {l:?}: {err}", e.path().display())
                    })
                })
                .collect();
            out.push((e.path(), entries));
        }
    }
    out
}

/// The one journal a finished transaction leaves: every line parses, it is in `history/` (none
/// is left in flight), and its sequence numbers have no gap. Panics naming `what` otherwise.
pub fn finished_journal(state_dir: &Path, what: &str) -> (PathBuf, Vec<Value>) {
    let mut journals = read_journals(state_dir);
    assert_eq!(
        journals.len(),
        1,
        "[{what}] journals: {:?}",
        journals.iter().map(|j| &j.0).collect::<Vec<_>>()
    );
    let (path, entries) = journals.remove(0);
    assert!(
        path.to_string_lossy().contains("/history/"),
        "[{what}] {} is not in history",
        path.display()
    );
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64(),
            Some(i as u64),
            "[{what}] seq gap at line {}",
            i + 1
        );
    }
    (path, entries)
}

/// Runs `fut` to completion on a fresh single-threaded tokio runtime (I/O and timers enabled),
/// for a test's gRPC calls.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(fut)
}

/// The names in `dir`, sorted (none when it is missing).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The port of a `host:port` address.
pub fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(_, p)| p)
}

/// A small deterministic generator for crash tests, so a failing seed can be replayed.
#[derive(Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    /// Seeded from `RAMPART_CRASH_SEED` when set, else from the clock; the seed is printed with
    /// the line that replays it.
    pub fn from_env() -> (u64, XorShift) {
        let seed = std::env::var("RAMPART_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        println!("crash seed: {seed} (rerun with RAMPART_CRASH_SEED={seed})");
        (seed, XorShift(seed))
    }

    /// The next number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The longest a venv's creation and `pip install` may take.
const VENV_INSTALL_DEADLINE: Duration = Duration::from_secs(900);

/// A Python venv `target/NAME` with `requirement` installed (e.g. `scipy>=1.17,<1.18`), made on
/// first use while holding `target/NAME.lock` (test processes may race); `ready(venv)` says
/// whether an existing one is usable (else it is made again, e.g. after an interrupted install).
/// Returns the venv's directory.
pub fn python_venv(name: &str, requirement: &str, ready: impl Fn(&Path) -> bool) -> PathBuf {
    let target = bin_dir().parent().expect("target dir").to_path_buf();
    let venv = target.join(name);
    let lock = std::fs::File::create(target.join(format!("{name}.lock"))).expect("venv lock file");
    lock.lock().expect("lock the venv");
    if !ready(&venv) {
        let _ = std::fs::remove_dir_all(&venv);
        let mut mk = Command::new("python3");
        mk.args(["-m", "venv"]).arg(&venv);
        let run = run_to_end(mk, VENV_INSTALL_DEADLINE);
        assert_eq!(
            run.code,
            0,
            "python3 -m venv {} (Debian: apt-get install python3-venv): {}",
            venv.display(),
            run.stderr
        );
        let mut pip = Command::new(venv.join("bin/pip"));
        pip.args(["install", "--quiet", requirement]);
        let run = run_to_end(pip, VENV_INSTALL_DEADLINE);
        assert_eq!(run.code, 0, "pip install {requirement}: {}", run.stderr);
    }
    let _ = lock.unlock();
    venv
}
