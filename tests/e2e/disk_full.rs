//! A full disk under the agent's state dir mid-transaction (issue 14, item 2): the transaction is
//! finished now, never left stopped under a live agent.
//!
//! The state dir is a small tmpfs the test mounts (root only; unmounted by a guard). A playbook
//! takes `deploy_lock`, waits for the test to fill the tmpfs, then fails writing into the state
//! dir; its rescue reports an output larger than the journal's reserve, so that record cannot be
//! journaled until space returns; its always releases the lock.
//! - `space_returns_and_the_transaction_finishes`: the filler goes ~3 s after the rescue began;
//!   the agent waited (its log names the journal), the transaction ended in history with an `end`
//!   record, nothing is held, and the next transaction succeeds.
//! - `the_disk_stays_full_and_a_restart_recovers`: the disk stays full past a 2 s
//!   `--journal-wait-seconds`: the agent exits with status 3; started again at once (as systemd
//!   would), its recovery meets the full disk, waits as long and exits 3 too; started once space
//!   is back, its recovery finishes the transaction and nothing is left held.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rampart_tests::{
    AGENT_START_TIMEOUT, CliRun, KillOnDrop, bin, finished_journal, read_journals, wait_listening,
    write_file,
};
use serde_json::Value;

/// Larger than the journal's reserve (`rampart_agent::journal::JOURNAL_RESERVE`), so the rescue's
/// record of this output must wait for space.
const BIG_OUTPUT: u64 = 3 * 1024 * 1024;
/// The tmpfs under the state dir.
const TMPFS_SIZE: &str = "24m";

const PLAYBOOK: &str = r#"# Meets a full disk in its block; its rescue's output does not fit the journal's reserve.
- name: a deploy that meets a full disk
  hosts: all
  tasks:
    - name: deploy
      block:
        - name: take the deploy lock
          deploy_lock:
            state: acquired
        - name: mark started
          shell: touch {{ dir }}/started
        - name: wait for the disk to fill
          shell: for i in $(seq 1 1200); do [ -e {{ dir }}/filled ] && exit 0; sleep 0.05; done; exit 1
        - name: write a release into the state dir
          shell: head -c 4000000 /dev/zero > {{ state }}/release.bin
      rescue:
        - name: mark rescued
          shell: touch {{ dir }}/rescued
        - name: report a large output
          shell: head -c {{ big }} /dev/zero | tr '\0' x
      always:
        - name: release the deploy lock
          deploy_lock:
            state: released
        - name: remove the partial release
          file:
            path: "{{ state }}/release.bin"
            state: absent
        - name: mark always
          shell: touch {{ dir }}/always_done
"#;

const NEXT: &str = r#"- name: the next deploy
  hosts: all
  tasks:
    - name: take the deploy lock
      deploy_lock:
        state: acquired
    - name: write a release into the state dir
      shell: head -c 100000 /dev/zero > {{ state }}/release.bin
    - name: release the deploy lock
      deploy_lock:
        state: released
"#;

/// A tmpfs this test mounted; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {} (these tests need root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily when still busy (a process of a failed test not yet reaped).
        let unmounted = Command::new("umount").arg(&self.0).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills the filesystem of `dir` with `dir/filler` until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let big = vec![0u8; 1 << 20];
    let small = vec![0u8; 4096];
    let mut full = false;
    for _ in 0..4096 {
        let chunk: &[u8] = if full { &small } else { &big };
        match f.write(chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => {
                if full {
                    break;
                }
                full = true;
            }
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
    assert!(full, "{} never filled up", dir.display());
    path
}

/// An agent this test started with its own flags and its warnings logged to a file.
struct Agent {
    child: Option<Child>,
    addr: String,
}

/// `rampart-agent` on a free loopback port over `state`, its logs appended to `log`.
fn agent_command(state: &Path, log: &Path, extra: &[&str]) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(bin("rampart-agent"));
    cmd.args(["--listen", "127.0.0.1:0", "--insecure-dev", "--state-dir"])
        .arg(state)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::from(log));
    cmd
}

impl Agent {
    fn start(state: &Path, log: &Path, extra: &[&str]) -> Agent {
        let mut child = agent_command(state, log, extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn rampart-agent");
        let addr = wait_listening(&mut child, "rampart-agent", AGENT_START_TIMEOUT);
        Agent {
            child: Some(child),
            addr,
        }
    }

    /// Starts an agent that is not expected to serve (its start-up recovery meets a full disk).
    fn spawn(state: &Path, log: &Path, extra: &[&str]) -> Agent {
        let child = agent_command(state, log, extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn rampart-agent");
        Agent {
            child: Some(child),
            addr: String::new(),
        }
    }

    /// Waits up to `timeout` for the agent to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("wait agent") {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            drop(KillOnDrop::new(c));
        }
    }
}

struct Host {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    state: PathBuf,
    log: PathBuf,
    playbook: String,
}

fn host() -> Host {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    std::fs::create_dir_all(&dir).unwrap();
    Host {
        state: tmp.path().join("state"),
        log: tmp.path().join("agent.log"),
        playbook: write_file(tmp.path(), "deploy.yml", PLAYBOOK),
        dir,
        tmp,
    }
}

/// `rampart run PLAYBOOK --agent ADDR --json` with the test's variables, spawned.
fn client(h: &Host, playbook: &str, addr: &str) -> KillOnDrop {
    let child = Command::new(bin("rampart"))
        .args(["run", playbook, "--agent", addr, "--json"])
        .args(["--reconnect-timeout", "5"])
        .arg("-e")
        .arg(format!("dir={}", h.dir.display()))
        .arg("-e")
        .arg(format!("state={}", h.state.display()))
        .arg("-e")
        .arg(format!("big={BIG_OUTPUT}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rampart run");
    KillOnDrop::new(child)
}

/// Polls `cond` up to `timeout`; panics naming `what`, with the agent's log.
fn wait_for(h: &Host, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&h.log).unwrap_or_default();
    panic!("{what}: not within {timeout:?}; the agent's log:\n{log}");
}

/// Waits until the playbook waits for the disk to fill, fills it and lets the playbook go on;
/// returns the filler.
fn fill_mid_transaction(h: &Host) -> PathBuf {
    wait_for(h, "the block started", Duration::from_secs(60), || {
        h.dir.join("started").exists()
    });
    let filler = fill(&h.state);
    std::fs::write(h.dir.join("filled"), "").unwrap();
    wait_for(h, "the rescue began", Duration::from_secs(60), || {
        h.dir.join("rescued").exists()
    });
    filler
}

/// The host after the transaction: its journal is in history and ends with `end`, the rescue and
/// the always ran, nothing is held. Returns the `end` record.
fn assert_finished(h: &Host, what: &str) -> Value {
    let journals = read_journals(&h.state);
    let (_, entries) = finished_journal(&h.state, &format!("{what}; journals {journals:?}"));
    let end = entries.last().expect("a record").clone();
    assert_eq!(end["type"], "end", "[{what}] last record: {end}");
    assert!(
        !h.state.join("locks").join("deploy.json").exists(),
        "[{what}] locks/deploy.json left held"
    );
    assert!(
        h.dir.join("always_done").exists(),
        "[{what}] always did not run"
    );
    assert!(
        !h.state.join("release.bin").exists(),
        "[{what}] partial release left"
    );
    end
}

/// A second transaction through `addr` succeeds.
fn assert_next_succeeds(h: &Host, addr: &str, what: &str) {
    let next = write_file(h.tmp.path(), "next.yml", NEXT);
    let mut cmd = Command::new(bin("rampart"));
    cmd.args(["run", &next, "--agent", addr, "--json"])
        .arg("-e")
        .arg(format!("state={}", h.state.display()));
    let run: CliRun = rampart_tests::run_to_end(cmd, Duration::from_secs(120));
    assert_eq!(
        run.code, 0,
        "[{what}] next deploy\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(!h.state.join("locks").join("deploy.json").exists());
}

#[test]
fn space_returns_and_the_transaction_finishes() {
    let h = host();
    let _tmpfs = Tmpfs::mount(&h.state, TMPFS_SIZE);
    let mut agent = Agent::start(&h.state, &h.log, &[]);
    let mut run = client(&h, &h.playbook, &agent.addr);
    let filler = fill_mid_transaction(&h);
    // The disk stays full for ~3 s while the rescue's big record waits.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::remove_file(&filler).unwrap();
    wait_for(
        &h,
        "the transaction ended (in history)",
        Duration::from_secs(60),
        || {
            std::fs::read_dir(h.state.join("history"))
                .map(|rd| rd.count() == 1)
                .unwrap_or(false)
                && std::fs::read_dir(h.state.join("journal"))
                    .map(|rd| rd.count() == 0)
                    .unwrap_or(false)
        },
    );
    run.kill9();
    let log = std::fs::read_to_string(&h.log).unwrap_or_default();
    let end = assert_finished(&h, "space returned");
    assert_eq!(end["outcome"], "rolled_back", "{end}");
    println!("agent log:\n{log}");
    assert!(
        log.contains("waiting for free space") && log.contains("/journal/"),
        "the agent's log does not say it waited for space for its journal:\n{log}"
    );
    assert!(
        log.contains("journal space is back"),
        "the agent's log does not say the wait ended:\n{log}"
    );
    assert!(agent.alive(), "the agent exited; log:\n{log}");
    assert_next_succeeds(&h, &agent.addr.clone(), "space returned");
}

#[test]
fn the_disk_stays_full_and_a_restart_recovers() {
    let h = host();
    let _tmpfs = Tmpfs::mount(&h.state, TMPFS_SIZE);
    let mut agent = Agent::start(&h.state, &h.log, &["--journal-wait-seconds", "2"]);
    let _run = client(&h, &h.playbook, &agent.addr);
    let filler = fill_mid_transaction(&h);
    let status = agent.wait_exit(Duration::from_secs(30));
    let log = std::fs::read_to_string(&h.log).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("the agent did not exit 30 s into a full disk (journal wait 2 s); log:\n{log}")
    });
    println!("agent log:\n{log}");
    assert_eq!(
        status.code(),
        Some(3),
        "the agent exited {status}; log:\n{log}"
    );
    assert!(
        read_journals(&h.state)
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("/journal/")),
        "the exit left no journal for recovery"
    );
    // As systemd would, started again at once: the disk is still full, and recovery waits for
    // space the same bounded time, then exits the same way (it never serves).
    let log_len = log.len();
    let mut early = Agent::spawn(&h.state, &h.log, &["--journal-wait-seconds", "2"]);
    let status = early.wait_exit(Duration::from_secs(30));
    let log = std::fs::read_to_string(&h.log).unwrap_or_default();
    let during_recovery = &log[log_len..];
    println!("agent log, recovery on a full disk:\n{during_recovery}");
    let status = status.unwrap_or_else(|| {
        panic!("the restarted agent did not exit 30 s into a full disk; log:\n{during_recovery}")
    });
    assert_eq!(status.code(), Some(3), "recovery on a full disk: {status}");
    assert!(
        during_recovery.contains("finishing interrupted transaction")
            && during_recovery.contains("waiting for free space"),
        "recovery did not wait for space:\n{during_recovery}"
    );
    // Once space is back: it recovers before it serves.
    std::fs::remove_file(&filler).unwrap();
    let again = Agent::start(&h.state, &h.log, &["--journal-wait-seconds", "2"]);
    let end = assert_finished(&h, "restarted");
    assert_eq!(end["recovered"], true, "{end}");
    assert_next_succeeds(&h, &again.addr, "restarted");
}
