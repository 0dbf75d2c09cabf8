//! A seeded chaos run against a real fleet: six agents and one controller on SQLite, or two
//! controllers on one PostgreSQL store; each round deploys a new version while one or two
//! faults strike at moments aimed by the deployment's own events, then checks that the fleet
//! ended on one version with nothing left held, and that the next deploy succeeds.
//!
//! Inputs: a [`Plan`] (a seed and the rounds to play, each with its store), from
//! [`Plan::ci`] or the environment ([`Plan::from_env`]). Outputs: a [`Report`], one
//! [`RoundResult`] per round (printed as a table), and per failed round a directory of logs.
//!
//! # Replaying
//!
//! Everything a round does is drawn by [`draw`] from (seed, round, store) only: whether and on
//! which host the new version breaks, which faults strike, when and for how long. A round
//! played alone (`RAMPART_CHAOS_ONLY=SEED:ROUND`) starts from a fresh fleet on the base version
//! and does the same as in its run; timing is the only thing that differs (the machine's
//! load), which is why the failure message prints the schedule as it was fired.
//!
//! # The fleet
//!
//! Built with [`Fleet::start_with_dist`] (certificates, inventory, controller configuration,
//! the sample app per host), whose own processes are then replaced by supervised ones, as
//! systemd would run them (`Restart=on-failure`, 1 s): an agent or controller that exits or is
//! SIGKILLed is started again about a second later. Each agent's state dir is its own small
//! tmpfs (mounted here, unmounted on drop), so its disk can be filled; each agent is reached
//! through a relay on 127.0.0.1 ([`Link`]) that can cut its network. With PostgreSQL the two
//! controllers (`one`, `two`) share the store but not their `state_dir`, as on two machines.
//! Every process's output goes to the current round's log directory.
//!
//! Versions rise by round: round R deploys `1.(R+1).0` and then, as the "next deploy",
//! `1.(R+1).1`, so rounds chain without resetting the fleet. A version breaks on a host when
//! it is listed in that host's `broken-versions` file: its start command then listens on
//! another port, so the health suite fails there (the sample app itself is sound).
//!
//! # Faults
//!
//! SIGKILL of a controller, an agent or the CLI (the outcome is then learnt with `rampart watch
//! ID --from-seq N`); SIGSTOP of an agent for 0–15 s; the disk under an agent's state dir full
//! for 2–10 s; PostgreSQL stopped with `-m immediate` for 0.5–5 s; the network to one agent cut
//! for 1–15 s (the relay stops passing bytes both ways and accepting connections: what a
//! partition does to TCP); a controller killed during the fleet rescue; two faults at once on
//! the same host. Each fires at a trigger ([`Trigger`]): a time after the deploy started, a
//! host's staging done, a host's health suite started, a wave started, the fleet rescue started
//! (for a host's fault: that host's rescue rollback running).
//!
//! # Invariants (after each round, once every fault is over)
//!
//! 1. One final outcome, the same in the stream (the CLI's `finished` line and its exit code),
//!    `deployment show` and `history`.
//! 2. Every host serves one version over HTTP, the same on all hosts: the new one when the
//!    deployment succeeded, the old one when it rolled back; `current`, the public path, the
//!    state file (`apps/app/state.json`) and the running binary agree with it.
//! 3. No journal in flight, no deploy lock, no staging dir, no holder of the host lock.
//! 4. Each transaction of the deployment on each host (agent history files) began once and
//!    ended once.
//! 5. The next deploy succeeds (and leaves 2–4 true for it).

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::fleet::Fleet;
use crate::pg::Pg;
use crate::{CliRun, bin, run_to_end};

/// The seed of the CI budget: its rounds 0–5 draw every fault kind, two broken rounds, a
/// controller killed in the fleet rescue and two faults at once on one host (see the unit test
/// at the end).
pub const CI_SEED: u64 = 140;
/// The rounds of the CI budget (alternating stores: half on each).
pub const CI_ROUNDS: u64 = 6;
/// Hosts in the fleet.
pub const HOSTS: usize = 6;
/// The version every fresh fleet starts on.
pub const BASE_VERSION: &str = "1.0.0";
/// Share of rounds in which the new version fails on one host, in percent.
pub const BREAK_PERCENT: u64 = 40;

/// Two waves (2 hosts, then 4), any failure aborts; a host's transaction may take 40 s (one
/// takes under a second here, a failing one about 10 s: its health checks retry for 5 s).
const ENV_TOML: &str =
    "serial = [2, \"100%\"]\nmax_fail_percentage = 0\nhost_deadline_seconds = 40\n";
/// How long the fleet rescue waits for an unreachable host (the fleet's default is 60 s): longer
/// than any fault lasts.
const RESCUE_WAIT: &str = "rescue_wait_seconds = 30";
/// The size of each agent's state-dir tmpfs: room for about a dozen copies of the sample app
/// (the releases kept, those set apart as failed, the artifact cache, a staging dir), at least
/// 32 MiB. A debug build's app (8 MB with its debug info) fills a fixed 32 MiB by itself after a
/// few rounds, and every deploy then fails for want of space, fault or not.
fn tmpfs_size() -> String {
    let app = std::fs::metadata(crate::bin("rampart-sample-app")).map_or(0, |m| m.len());
    let mib = ((app * 12) >> 20) + 16;
    format!("{}m", mib.max(32))
}
/// How long a round's deployment may take to report its outcome before the round fails as
/// wedged.
const OUTCOME_DEADLINE: Duration = Duration::from_secs(90);
/// The CLI's `--reconnect-timeout` (seconds): longer than any fault.
const RECONNECT_SECS: &str = "150";
/// The CLI's `--wait-timeout` (seconds) for the queue.
const QUEUE_WAIT_SECS: &str = "30";
/// How long a supervised process stays down before it is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// How long the fleet may take to serve again once the faults are over.
const SETTLE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Plans

/// Where a fleet keeps its deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// One controller, its SQLite file.
    Sqlite,
    /// Two controllers sharing one PostgreSQL database.
    Postgres,
}

impl StoreKind {
    /// Its name in the environment and in reports.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }

    /// The store of `round` under `RAMPART_CHAOS_STORE=both`: even rounds SQLite, odd ones
    /// PostgreSQL.
    pub fn of_round(round: u64) -> StoreKind {
        if round.is_multiple_of(2) {
            StoreKind::Sqlite
        } else {
            StoreKind::Postgres
        }
    }

    fn controllers(self) -> usize {
        match self {
            StoreKind::Sqlite => 1,
            StoreKind::Postgres => 2,
        }
    }
}

/// One round to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundSpec {
    /// Its number in the run (with the seed, it decides everything the round does).
    pub round: u64,
    /// The store it runs on.
    pub store: StoreKind,
}

/// A run: a seed and its rounds, and where failed rounds keep their logs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// The rounds, in order.
    pub rounds: Vec<RoundSpec>,
    /// Where each round's logs go (`<logs>/<seed>-<round>-<store>/`).
    pub logs: PathBuf,
    /// Keep the logs of rounds that passed too.
    pub keep_logs: bool,
}

fn default_logs() -> PathBuf {
    std::env::temp_dir().join("rampart-chaos")
}

impl Plan {
    /// The CI budget: [`CI_SEED`], rounds `0..CI_ROUNDS` alternating the stores.
    pub fn ci() -> Plan {
        Plan {
            seed: CI_SEED,
            rounds: (0..CI_ROUNDS)
                .map(|round| RoundSpec {
                    round,
                    store: StoreKind::of_round(round),
                })
                .collect(),
            logs: default_logs(),
            keep_logs: false,
        }
    }

    /// The plan the environment asks for (`get` reads a variable): `RAMPART_CHAOS_ROUNDS` (default
    /// 20), `RAMPART_CHAOS_STORE` (`sqlite`, `postgres` or `both`, the default: even rounds on
    /// SQLite, odd ones on PostgreSQL), `RAMPART_CHAOS_SEED` (default: from the clock, printed),
    /// `RAMPART_CHAOS_ONLY=SEED:ROUND` (that round alone), `RAMPART_CHAOS_LOGS` (default
    /// `$TMPDIR/rampart-chaos`), `RAMPART_CHAOS_KEEP_LOGS=1` (keep passed rounds' logs too).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Plan, String> {
        let store = match get("RAMPART_CHAOS_STORE").as_deref().map(str::trim) {
            None | Some("") | Some("both") => None,
            Some("sqlite") => Some(StoreKind::Sqlite),
            Some("postgres") => Some(StoreKind::Postgres),
            Some(other) => {
                return Err(format!(
                    "RAMPART_CHAOS_STORE={other:?}: use sqlite, postgres or both"
                ));
            }
        };
        let store_of = |round| store.unwrap_or_else(|| StoreKind::of_round(round));
        let number = |name: &str, text: &str| {
            text.trim()
                .parse::<u64>()
                .map_err(|e| format!("{name}={text:?}: not a number: {e}"))
        };
        let (seed, rounds) = if let Some(only) = get("RAMPART_CHAOS_ONLY") {
            let (s, r) = only
                .split_once(':')
                .ok_or_else(|| format!("RAMPART_CHAOS_ONLY={only:?}: use SEED:ROUND"))?;
            let round = number("RAMPART_CHAOS_ONLY round", r)?;
            (
                number("RAMPART_CHAOS_ONLY seed", s)?,
                vec![RoundSpec {
                    round,
                    store: store_of(round),
                }],
            )
        } else {
            let n = match get("RAMPART_CHAOS_ROUNDS") {
                Some(t) => number("RAMPART_CHAOS_ROUNDS", &t)?,
                None => 20,
            };
            let seed = match get("RAMPART_CHAOS_SEED") {
                Some(t) => number("RAMPART_CHAOS_SEED", &t)?,
                None => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs()),
            };
            let rounds = (0..n)
                .map(|round| RoundSpec {
                    round,
                    store: store_of(round),
                })
                .collect();
            (seed, rounds)
        };
        Ok(Plan {
            seed,
            rounds,
            logs: get("RAMPART_CHAOS_LOGS").map_or_else(default_logs, PathBuf::from),
            keep_logs: get("RAMPART_CHAOS_KEEP_LOGS").is_some_and(|v| v == "1"),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Drawing a round

/// splitmix64: small, fast, and the same everywhere (no dependency whose stream may change).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn for_round(seed: u64, round: u64, store: StoreKind) -> Rng {
        let mut r = Rng(seed);
        let a = r.next();
        let mut r = Rng(a ^ round.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let b = r.next();
        Rng(b ^ (store as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// When a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// This many milliseconds after the deploy started.
    After(u64),
    /// When this host (index) finished staging the new version.
    Staged(usize),
    /// When this host's health suite started.
    Health(usize),
    /// When this wave (from 0) started.
    Wave(u32),
    /// When the fleet rescue started (a host's fault: when that host's rescue runs).
    Rescue,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::After(ms) => write!(f, "+{:.1}s", *ms as f64 / 1000.0),
            Trigger::Staged(h) => write!(f, "staged(h{})", h + 1),
            Trigger::Health(h) => write!(f, "health(h{})", h + 1),
            Trigger::Wave(w) => write!(f, "wave({})", w + 1),
            Trigger::Rescue => write!(f, "rescue"),
        }
    }
}

/// What a fault does (hosts are indexes; durations in milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL of a controller (index: `one`, `two`).
    KillController(usize),
    /// SIGKILL of a host's agent.
    KillAgent(usize),
    /// SIGKILL of the deploying CLI.
    KillCli,
    /// SIGSTOP of a host's agent, SIGCONT after the duration.
    StopAgent(usize, u64),
    /// The host's state-dir disk full for the duration.
    DiskFull(usize, u64),
    /// PostgreSQL stopped (`-m immediate`) for the duration.
    PgDown(u64),
    /// The network to the host's agent cut for the duration.
    CutNetwork(usize, u64),
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |ms: &u64| *ms as f64 / 1000.0;
        match self {
            FaultKind::KillController(c) => write!(f, "kill-controller {}", controller_name(*c)),
            FaultKind::KillAgent(h) => write!(f, "kill-agent h{}", h + 1),
            FaultKind::KillCli => write!(f, "kill-cli"),
            FaultKind::StopAgent(h, ms) => write!(f, "sigstop h{} {:.1}s", h + 1, s(ms)),
            FaultKind::DiskFull(h, ms) => write!(f, "disk-full h{} {:.1}s", h + 1, s(ms)),
            FaultKind::PgDown(ms) => write!(f, "pg-down {:.1}s", s(ms)),
            FaultKind::CutNetwork(h, ms) => write!(f, "net-cut h{} {:.1}s", h + 1, s(ms)),
        }
    }
}

/// One fault and its trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// What it does.
    pub kind: FaultKind,
    /// When.
    pub at: Trigger,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} @{}", self.kind, self.at)
    }
}

/// Everything a round does, drawn from (seed, round, store) alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// The seed.
    pub seed: u64,
    /// The round.
    pub round: u64,
    /// The store.
    pub store: StoreKind,
    /// The host (index) on which the new version fails its health checks, if any.
    pub broken: Option<usize>,
    /// The controller the CLI talks to (index).
    pub via: usize,
    /// The faults, one or two.
    pub faults: Vec<Fault>,
}

impl Round {
    /// The version the round deploys under faults.
    pub fn version(&self) -> String {
        format!("1.{}.0", self.round + 1)
    }

    /// The version of the round's "next deploy".
    pub fn next_version(&self) -> String {
        format!("1.{}.1", self.round + 1)
    }

    /// The round's deployment id.
    pub fn deployment_id(&self) -> String {
        format!("chaos-{}-{}-{}", self.seed, self.round, self.store.name())
    }

    /// The faults and the broken host, in one line.
    pub fn schedule(&self) -> String {
        let mut parts: Vec<String> = self.faults.iter().map(Fault::to_string).collect();
        if let Some(h) = self.broken {
            parts.push(format!("breaks on h{}", h + 1));
        }
        parts.join("; ")
    }
}

fn controller_name(i: usize) -> &'static str {
    ["one", "two"].get(i).copied().unwrap_or("other")
}

/// The wave of host `h` under [`ENV_TOML`]'s `serial = [2, "100%"]`.
fn wave_of(h: usize) -> u32 {
    if h < 2 { 0 } else { 1 }
}

fn draw_trigger(r: &mut Rng, host: usize, broken: bool) -> Trigger {
    match r.below(100) {
        0..=29 => Trigger::Staged(host),
        30..=54 => Trigger::Health(host),
        55..=64 => Trigger::Wave(wave_of(host)),
        65..=74 if broken => Trigger::Rescue,
        _ => Trigger::After(r.between(0, 1500)),
    }
}

fn draw_host_kind(r: &mut Rng, host: usize, not: Option<FaultKind>) -> FaultKind {
    // Bounded: four kinds, at most one excluded.
    for _ in 0..16 {
        let k = match r.below(4) {
            0 => FaultKind::KillAgent(host),
            1 => FaultKind::StopAgent(host, r.between(0, 15_000)),
            2 => FaultKind::DiskFull(host, r.between(2_000, 10_000)),
            _ => FaultKind::CutNetwork(host, r.between(1_000, 15_000)),
        };
        if not.is_none_or(|n| std::mem::discriminant(&n) != std::mem::discriminant(&k)) {
            return k;
        }
    }
    FaultKind::KillAgent(host)
}

fn draw_fault(r: &mut Rng, store: StoreKind, broken: bool, via: usize) -> Fault {
    let host = r.below(HOSTS as u64) as usize;
    let kinds = match store {
        StoreKind::Sqlite => 6,
        StoreKind::Postgres => 7,
    };
    let kind = match r.below(kinds) {
        0 => FaultKind::KillController(if store == StoreKind::Postgres && r.chance(30) {
            1 - via
        } else {
            via
        }),
        1 => FaultKind::KillCli,
        6 => FaultKind::PgDown(r.between(500, 5_000)),
        _ => draw_host_kind(r, host, None),
    };
    Fault {
        kind,
        at: draw_trigger(r, host, broken),
    }
}

/// Draws round `round` of `seed` on `store`: the same arguments always give the same round.
pub fn draw(seed: u64, round: u64, store: StoreKind) -> Round {
    let mut r = Rng::for_round(seed, round, store);
    let broken = r
        .chance(BREAK_PERCENT)
        .then(|| r.below(HOSTS as u64) as usize);
    let via = r.below(store.controllers() as u64) as usize;
    let mut faults = Vec::new();
    let two = r.chance(50);
    match r.below(100) {
        // A controller killed during the fleet rescue (only a broken round has one for sure).
        0..=19 if broken.is_some() => faults.push(Fault {
            kind: FaultKind::KillController(via),
            at: Trigger::Rescue,
        }),
        // Two faults at once on the same host.
        20..=39 => {
            let host = r.below(HOSTS as u64) as usize;
            let at = draw_trigger(&mut r, host, broken.is_some());
            let first = draw_host_kind(&mut r, host, None);
            let second = draw_host_kind(&mut r, host, Some(first));
            faults.push(Fault { kind: first, at });
            faults.push(Fault { kind: second, at });
        }
        _ => faults.push(draw_fault(&mut r, store, broken.is_some(), via)),
    }
    if two && faults.len() < 2 {
        faults.push(draw_fault(&mut r, store, broken.is_some(), via));
    }
    Round {
        seed,
        round,
        store,
        broken,
        via,
        faults,
    }
}

// ---------------------------------------------------------------------------------------------
// Logs

/// Sends every supervised process's output, and the harness's own notes, to files in the
/// current round's directory (`<name>.log`).
#[derive(Debug, Default)]
struct LogRouter {
    inner: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    dir: Option<PathBuf>,
    files: HashMap<String, File>,
}

impl LogRouter {
    fn set_dir(&self, dir: &Path) {
        let _ = std::fs::create_dir_all(dir);
        let mut st = self.inner.lock().expect("log router");
        st.files.clear();
        st.dir = Some(dir.to_path_buf());
    }

    fn line(&self, name: &str, line: &str) {
        let mut st = self.inner.lock().expect("log router");
        let Some(dir) = st.dir.clone() else { return };
        if !st.files.contains_key(name) {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{name}.log")))
            {
                Ok(f) => {
                    st.files.insert(name.to_string(), f);
                }
                Err(_) => return,
            }
        }
        if let Some(f) = st.files.get_mut(name) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// A note of the harness (`chaos.log`), stamped with the wall clock.
    fn note(&self, line: &str) {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.line(
            "chaos",
            &format!("{}.{:03} {line}", t.as_secs(), t.subsec_millis()),
        );
    }

    fn pump(self: &Arc<Self>, name: String, from: impl Read + Send + 'static) {
        let logs = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                logs.line(&name, &line);
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Supervised processes

type MakeCommand = Arc<dyn Fn() -> Command + Send + Sync>;

/// A process run as systemd runs a unit with `Restart=on-failure`: started again
/// [`RESTART_DELAY`] after it exits, whatever the reason. Its output goes to the log router.
struct Supervised {
    name: String,
    child: Arc<Mutex<Option<Child>>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Supervised {
    fn start(name: &str, logs: &Arc<LogRouter>, make: MakeCommand) -> Arc<Supervised> {
        let child: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, l, n) = (child.clone(), stop.clone(), logs.clone(), name.to_string());
        let thread = std::thread::spawn(move || supervise(&n, &c, &s, &l, &make));
        Arc::new(Supervised {
            name: name.to_string(),
            child,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.lock().expect("child").as_ref().map(Child::id)
    }

    /// Sends `sig` to the running process; its pid, if one runs.
    fn signal(&self, sig: Signal) -> Option<u32> {
        let pid = self.pid()?;
        kill(Pid::from_raw(pid as i32), sig).ok()?;
        Some(pid)
    }

    fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().expect("thread").take() {
            let _ = t.join();
        }
        if let Some(mut c) = self.child.lock().expect("child").take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl fmt::Debug for Supervised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Supervised({}, pid {:?})", self.name, self.pid())
    }
}

fn supervise(
    name: &str,
    child: &Mutex<Option<Child>>,
    stop: &AtomicBool,
    logs: &Arc<LogRouter>,
    make: &MakeCommand,
) {
    let tick = Duration::from_millis(50);
    let mut down_since = Instant::now()
        .checked_sub(RESTART_DELAY)
        .unwrap_or_else(Instant::now);
    // Bounded: a day of ticks; the fleet is dropped long before.
    for _ in 0..(24 * 3600 * 20u32) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut slot = child.lock().expect("child");
            if let Some(c) = slot.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                logs.note(&format!(
                    "{name} (pid {}) exited: {status}; starting it again in {RESTART_DELAY:?}",
                    c.id()
                ));
                *slot = None;
                down_since = Instant::now();
            }
            if slot.is_none() && down_since.elapsed() >= RESTART_DELAY {
                let mut cmd = make();
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                match cmd.spawn() {
                    Ok(mut c) => {
                        logs.note(&format!("{name} started (pid {})", c.id()));
                        if let Some(o) = c.stdout.take() {
                            logs.pump(name.to_string(), o);
                        }
                        if let Some(e) = c.stderr.take() {
                            logs.pump(name.to_string(), e);
                        }
                        *slot = Some(c);
                    }
                    Err(e) => {
                        logs.note(&format!("{name}: cannot start: {e}"));
                        down_since = Instant::now();
                    }
                }
            }
        }
        std::thread::sleep(tick);
    }
}

fn accepts(addr: &str) -> bool {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok())
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes; whether it held.
fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// The network to an agent

/// A TCP relay on 127.0.0.1 in front of one agent (the inventory names the relay). Cut, it
/// passes no byte either way and accepts no connection, as a partition does: connections stay
/// open, unanswered, until their keepalives give up or the cut heals.
#[derive(Debug)]
pub struct Link {
    /// Where the controller connects.
    pub addr: String,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Link {
    /// Starts a relay to `upstream`.
    pub fn start(upstream: &str) -> Link {
        let (listener, addr) = (0..20)
            .find_map(|_| {
                let port = crate::deploy::free_port();
                TcpListener::bind(("127.0.0.1", port))
                    .ok()
                    .map(|l| (l, format!("127.0.0.1:{port}")))
            })
            .expect("a free port on 127.0.0.1 for an agent's relay");
        listener.set_nonblocking(true).expect("non-blocking relay");
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, up) = (cut.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            // Bounded by the stop flag (set on drop); at most a day of 20 ms ticks.
            for _ in 0..(24 * 3600 * 50u32) {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                if c.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                match listener.accept() {
                    Ok((client, _)) => {
                        let (c, s, up) = (c.clone(), s.clone(), up.clone());
                        std::thread::spawn(move || relay(client, &up, &c, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Link { addr, cut, stop }
    }

    /// Cuts (`true`) or heals (`false`) the network to the agent.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn relay(client: TcpStream, upstream: &str, cut: &Arc<AtomicBool>, stop: &Arc<AtomicBool>) {
    let _ = client.set_nonblocking(false);
    let Some(server) = upstream
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
    else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (cut2, stop2) = (cut.clone(), stop.clone());
    let t = std::thread::spawn(move || pump(c2, s2, &cut2, &stop2));
    pump(server, client, cut, stop);
    let _ = t.join();
}

/// Copies `from` to `to` until either closes; while cut, reads nothing.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded by the sockets' end and the stop flag; at most a day of 50 ms reads.
    for _ in 0..(24 * 3600 * 20u32) {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if cut.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}

// ---------------------------------------------------------------------------------------------
// An agent's disk

/// A tmpfs this harness mounted (we are root) under an agent's state dir; unmounted on drop,
/// after every process still running from it (the apps the agent started) is killed.
#[derive(Debug)]
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("create {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={},mode=0755", tmpfs_size()),
            ])
            .arg("tmpfs")
            .arg(path)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount a tmpfs on {} (the chaos suite runs as root): {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    fn filler(&self) -> PathBuf {
        self.path.join(".chaos-filler")
    }

    /// Fills the disk: writes until ENOSPC (bounded by the tmpfs's size).
    fn fill(&self) -> String {
        let Ok(mut f) = File::create(self.filler()) else {
            return "cannot create the filler (disk already full)".into();
        };
        let mut written = 0u64;
        for chunk in [1usize << 20, 4096, 512] {
            let buf = vec![0u8; chunk];
            // Bounded: 64 GiB in 1 MiB chunks, far beyond any tmpfs here.
            for _ in 0..(1usize << 16) {
                if f.write_all(&buf).is_err() {
                    break;
                }
                written += chunk as u64;
            }
        }
        format!("filled {} MiB", written >> 20)
    }

    fn drain(&self) {
        let _ = std::fs::remove_file(self.filler());
    }

    /// Kills every process whose executable or working directory is on this tmpfs (the
    /// sample apps the agent started from its releases); whether there was one.
    fn kill_users(&self) -> bool {
        let mut found = false;
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return false;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let on_it = ["exe", "cwd"].iter().any(|l| {
                std::fs::read_link(e.path().join(l)).is_ok_and(|p| p.starts_with(&self.path))
            });
            if on_it {
                found = true;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        found
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Killed processes release the mount once they are gone: kill, then wait (bounded).
        for _ in 0..50 {
            if !self.kill_users() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Versions

/// Packages `version` of the sample app in `dist` (from the base tarball, with its
/// `version.txt` rewritten), unless it is there already.
fn package_version(dist: &Path, version: &str) -> Result<(), String> {
    let out = dist.join(format!("sample-app-{version}.tar.gz"));
    if out.exists() {
        return Ok(());
    }
    let stage = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let base = dist.join(format!("sample-app-{BASE_VERSION}.tar.gz"));
    let script = format!(
        "set -e; tar -xzf '{base}' -C '{stage}'; printf '%s\\n' '{version}' > '{stage}/version.txt'; \
         touch -h -d @0 '{stage}/version.txt'; \
         tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -C '{stage}' \
         -cf - bin db health start.sh version.txt | gzip -n -1 > '{out}.tmp'; mv '{out}.tmp' '{out}'",
        base = base.display(),
        stage = stage.path().display(),
        out = out.display(),
    );
    let o = Command::new("sh")
        .args(["-c", &script])
        .output()
        .map_err(|e| format!("run sh: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "package sample-app {version}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

/// Makes the host's start command listen on `other_port` when the release being started is
/// listed in `list` (one version a line), so that version fails its health checks there.
fn break_listed_versions(vars: &mut Value, list: &Path, other_port: u16) {
    let start = vars["components"][0]["service"]["start"]
        .as_str()
        .expect("the sample app's start command")
        .to_string();
    let (prefix, rest) = start
        .split_once("SAMPLE_APP_LISTEN=127.0.0.1:")
        .expect("the start command sets SAMPLE_APP_LISTEN");
    let (port, tail) = rest.split_once(' ').expect("a port, then the command");
    let app = vars["components"][0]["path"]
        .as_str()
        .expect("the app's public path")
        .to_string();
    vars["components"][0]["service"]["start"] = Value::String(format!(
        "{prefix}p={port}; grep -qxF \"$(cat {app}/version.txt)\" {list} 2>/dev/null && p={other_port}; \
         SAMPLE_APP_LISTEN=127.0.0.1:$p {tail}",
        list = list.display()
    ));
}

// ---------------------------------------------------------------------------------------------
// A CLI in the background

/// A `rampart` command whose JSON lines are read as they come (and logged).
struct LiveCli {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl LiveCli {
    fn spawn(args: &[String], name: &str, logs: &Arc<LogRouter>) -> Result<LiveCli, String> {
        let mut child = Command::new(bin("rampart"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn rampart {}: {e}", args.join(" ")))?;
        logs.note(&format!(
            "{name}: rampart {} (pid {})",
            args.join(" "),
            child.id()
        ));
        let out = child.stdout.take().expect("piped stdout");
        if let Some(e) = child.stderr.take() {
            logs.pump(format!("{name}-stderr"), e);
        }
        let (tx, rx) = mpsc::channel();
        let (l, n) = (logs.clone(), name.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.line(&n, &line);
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Ok(LiveCli { child, lines: rx })
    }

    fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Waits at most `timeout` for the exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let mut code = None;
        poll_until(timeout, || {
            code = self.exited();
            code.is_some()
        });
        code
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LiveCli {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet

/// A running chaos fleet: six supervised agents behind their links, one or two supervised
/// controllers, the store.
struct Rig {
    logs: Arc<LogRouter>,
    agents: Vec<Arc<Supervised>>,
    links: Vec<Arc<Link>>,
    controllers: Vec<Arc<Supervised>>,
    addrs: Vec<String>,
    mounts: Vec<Arc<Tmpfs>>,
    pg: Option<Arc<Pg>>,
    /// The version every host runs now.
    version: String,
    // Dropped last: the scratch dirs the processes above use.
    fleet: Fleet,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in &self.controllers {
            c.shutdown();
        }
        for a in &self.agents {
            a.shutdown();
        }
        for l in &self.links {
            l.set_cut(false);
        }
        // Unmounted before the fleet's scratch dirs go.
        self.mounts.clear();
    }
}

fn agent_command(fleet: &Fleet, i: usize) -> MakeCommand {
    let host = &fleet.hosts[i];
    let certs = fleet.certs();
    let c = |f: String| certs.join(f).display().to_string();
    let args: Vec<String> = vec![
        "--listen".into(),
        host.listen.clone(),
        "--state-dir".into(),
        host.scenario.state.display().to_string(),
        "--tls-cert".into(),
        c(format!("agent-{}.pem", host.name)),
        "--tls-key".into(),
        c(format!("agent-{}.key", host.name)),
        "--tls-ca".into(),
        c("ca.pem".into()),
        "--forensics-dir".into(),
        host.scenario.path().join("forensics").display().to_string(),
    ];
    Arc::new(move || {
        let mut cmd = Command::new(bin("rampart-agent"));
        cmd.args(&args).env("RUST_LOG", "info");
        cmd
    })
}

fn controller_command(config: PathBuf) -> MakeCommand {
    Arc::new(move || {
        let mut cmd = Command::new(bin("rampart-controller"));
        cmd.arg("--config").arg(&config).env("RUST_LOG", "info");
        cmd
    })
}

fn listen_of(config_text: &str) -> Option<String> {
    config_text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|r| r.strip_suffix('"'))
        .map(str::to_string)
}

impl Rig {
    /// Builds a fleet on `store` with tarballs in `dist`, its processes logging through `logs`,
    /// and deploys [`BASE_VERSION`].
    fn start(store: StoreKind, dist: &Path, logs: Arc<LogRouter>) -> Result<Rig, String> {
        let pg = match store {
            StoreKind::Sqlite => None,
            StoreKind::Postgres => {
                let pg = Pg::start();
                pg.create_db("rampart");
                Some(Arc::new(pg))
            }
        };
        let top = match &pg {
            None => String::new(),
            Some(pg) => format!(
                "instance = \"one\"\n[store]\nurl = \"postgresql://postgres:{}@127.0.0.1:{}/rampart\"\n",
                crate::pg::PASSWORD,
                pg.port
            ),
        };
        let links = std::cell::RefCell::new(Vec::new());
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let fleet =
            Fleet::start_with_dist(dir, dist.to_path_buf(), HOSTS, ENV_TOML, &top, |_, vars| {
                let upstream = vars["rampart_agent"].as_str().expect("agent address");
                let link = Link::start(upstream);
                vars["rampart_agent"] = Value::String(link.addr.clone());
                links.borrow_mut().push(Arc::new(link));
                let scratch = Path::new(vars["state_capture_dir"].as_str().expect("captures"))
                    .parent()
                    .expect("the host's scratch dir")
                    .to_path_buf();
                break_listed_versions(
                    vars,
                    &scratch.join("broken-versions"),
                    crate::deploy::free_port(),
                );
            });
        let links = links.into_inner();
        let mut fleet = fleet;
        fleet.edit_config("rescue_wait_seconds = 60", RESCUE_WAIT);
        // Its own processes make way for supervised ones.
        fleet.kill_controller();
        for i in 0..HOSTS {
            fleet.kill_agent(i);
        }
        let mut mounts = Vec::new();
        for h in &fleet.hosts {
            mounts.push(Arc::new(Tmpfs::mount(&h.scenario.state)?));
        }
        let agents = (0..HOSTS)
            .map(|i| {
                Supervised::start(
                    &fleet.hosts[i].name.clone(),
                    &logs,
                    agent_command(&fleet, i),
                )
            })
            .collect();
        let text = std::fs::read_to_string(&fleet.config).map_err(|e| e.to_string())?;
        let mut configs = vec![fleet.config.clone()];
        let mut addrs = vec![listen_of(&text).ok_or("no listen line in the config")?];
        if store == StoreKind::Postgres {
            // Controller two: its own address, instance name and state dir (another machine).
            let addr = format!("127.0.0.1:{}", crate::deploy::free_port());
            let state = fleet.dir.path().join("controller");
            let two = text
                .replace(&addrs[0], &addr)
                .replace("instance = \"one\"", "instance = \"two\"")
                .replace(
                    &format!("state_dir = \"{}\"", state.display()),
                    &format!("state_dir = \"{}-two\"", state.display()),
                );
            let path = fleet.dir.path().join("controller-two.toml");
            std::fs::write(&path, two).map_err(|e| e.to_string())?;
            configs.push(path);
            addrs.push(addr);
        }
        let controllers = configs
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                Supervised::start(
                    &format!("controller-{}", controller_name(i)),
                    &logs,
                    controller_command(c),
                )
            })
            .collect();
        let mut rig = Rig {
            logs,
            agents,
            links,
            controllers,
            addrs,
            mounts,
            pg,
            version: String::new(),
            fleet,
        };
        rig.settle()?;
        let id = format!("chaos-base-{}", std::process::id());
        let r = rig.deploy(BASE_VERSION, &id, 0)?;
        if r.code != 0 {
            return Err(format!(
                "the base deploy of {BASE_VERSION} failed ({}): {}\n{}",
                r.code, r.stdout, r.stderr
            ));
        }
        rig.version = BASE_VERSION.to_string();
        Ok(rig)
    }

    fn auth_args(&self, via: usize) -> Vec<String> {
        vec![
            "--controller".into(),
            format!("https://{}", self.addrs[via]),
            "--ca".into(),
            self.fleet.certs().join("ca.pem").display().to_string(),
            "--token-file".into(),
            self.fleet.dir.path().join("token").display().to_string(),
        ]
    }

    fn deploy_args(&self, version: &str, id: &str, via: usize) -> Vec<String> {
        let mut a = self.fleet.deploy_args(
            version,
            &[
                "--deployment-id",
                id,
                "--reconnect-timeout",
                RECONNECT_SECS,
                "--wait-timeout",
                QUEUE_WAIT_SECS,
            ],
        );
        a.extend(self.auth_args(via));
        a
    }

    /// Runs `rampart ARGS…` against controller `via` to its end (bounded).
    fn cli(&self, via: usize, args: &[&str]) -> CliRun {
        let mut cmd = Command::new(bin("rampart"));
        cmd.args(args).args(self.auth_args(via));
        run_to_end(cmd, Duration::from_secs(300))
    }

    /// A deploy with no fault, to its end.
    fn deploy(&self, version: &str, id: &str, via: usize) -> Result<CliRun, String> {
        package_version(&self.fleet.dist, version)?;
        let mut cmd = Command::new(bin("rampart"));
        cmd.args(self.deploy_args(version, id, via));
        let r = run_to_end(cmd, OUTCOME_DEADLINE);
        for l in r.stdout.lines() {
            self.logs.line("next-deploy", l);
        }
        for l in r.stderr.lines() {
            self.logs.line("next-deploy-stderr", l);
        }
        Ok(r)
    }

    /// Waits until every agent and controller serves again; an error names who does not.
    fn settle(&self) -> Result<(), String> {
        let mut waiting: Vec<String> = Vec::new();
        let ok = poll_until(SETTLE, || {
            waiting = self
                .fleet
                .hosts
                .iter()
                .filter(|h| !accepts(&h.listen))
                .map(|h| format!("agent {}", h.name))
                .chain(
                    self.addrs
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| !accepts(a))
                        .map(|(i, _)| format!("controller {}", controller_name(i))),
                )
                .collect();
            waiting.is_empty()
        });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "not serving {SETTLE:?} after the faults: {}",
                waiting.join(", ")
            ))
        }
    }

    /// Writes the broken-versions file of every host: `version` on `broken`, nothing elsewhere.
    fn set_broken(&self, broken: Option<usize>, version: &str) {
        for (i, h) in self.fleet.hosts.iter().enumerate() {
            let file = h.scenario.path().join("broken-versions");
            if Some(i) == broken {
                let _ = std::fs::write(&file, format!("{version}\n"));
            } else {
                let _ = std::fs::remove_file(&file);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Faults

/// One fault started: when, and what happened (the fault's thread, if it lasts).
struct Fired {
    fault: Fault,
    at: Duration,
    note: Arc<Mutex<String>>,
    thread: Option<JoinHandle<()>>,
}

impl Rig {
    /// Starts `fault` (`cli` is the deploying CLI, killed by [`FaultKind::KillCli`]); a lasting
    /// fault ends on its own thread.
    fn fire(&self, fault: Fault, at: Duration, cli: &mut LiveCli) -> Fired {
        let note = Arc::new(Mutex::new(String::new()));
        let set = |n: &Arc<Mutex<String>>, s: String| *n.lock().expect("note") = s;
        let logs = self.logs.clone();
        logs.note(&format!("fault {fault} fires at {:.1}s", at.as_secs_f64()));
        let mut thread = None;
        match fault.kind {
            FaultKind::KillController(c) => {
                let pid = self.controllers[c].signal(Signal::SIGKILL);
                set(&note, format!("SIGKILL pid {pid:?}"));
            }
            FaultKind::KillAgent(h) => {
                let pid = self.agents[h].signal(Signal::SIGKILL);
                set(&note, format!("SIGKILL pid {pid:?}"));
            }
            FaultKind::KillCli => {
                let pid = cli.child.id();
                cli.kill9();
                set(&note, format!("SIGKILL pid {pid}"));
            }
            FaultKind::StopAgent(h, ms) => {
                let agent = self.agents[h].clone();
                let n = note.clone();
                thread = Some(std::thread::spawn(move || {
                    let pid = agent.signal(Signal::SIGSTOP);
                    std::thread::sleep(Duration::from_millis(ms));
                    if let Some(p) = pid {
                        let _ = kill(Pid::from_raw(p as i32), Signal::SIGCONT);
                    }
                    set(&n, format!("SIGSTOP/SIGCONT pid {pid:?}"));
                    logs.note(&format!("fault {fault} over"));
                }));
            }
            FaultKind::DiskFull(h, ms) => {
                let disk = self.mounts[h].clone();
                let n = note.clone();
                thread = Some(std::thread::spawn(move || {
                    let what = disk.fill();
                    std::thread::sleep(Duration::from_millis(ms));
                    disk.drain();
                    set(&n, what);
                    logs.note(&format!("fault {fault} over"));
                }));
            }
            FaultKind::PgDown(ms) => match self.pg.clone() {
                Some(pg) => {
                    let n = note.clone();
                    thread = Some(std::thread::spawn(move || {
                        pg.down_for(Duration::from_millis(ms));
                        set(&n, "stopped -m immediate, started again".into());
                        logs.note(&format!("fault {fault} over"));
                    }));
                }
                None => set(&note, "no PostgreSQL in this fleet".into()),
            },
            FaultKind::CutNetwork(h, ms) => {
                let link = self.links[h].clone();
                let n = note.clone();
                thread = Some(std::thread::spawn(move || {
                    link.set_cut(true);
                    std::thread::sleep(Duration::from_millis(ms));
                    link.set_cut(false);
                    set(&n, "cut, healed".into());
                    logs.note(&format!("fault {fault} over"));
                }));
            }
        }
        Fired {
            fault,
            at,
            note,
            thread,
        }
    }
}

/// Whether `ev` (a CLI JSON line) is the moment `f` waits for (time triggers are checked
/// apart). A host's fault `@rescue` strikes while that host's fleet-rescue rollback runs (its
/// first task), or when the rescue starts if the rescue leaves that host alone; any other fault
/// `@rescue` when the rescue starts.
fn triggers(f: &Fault, ev: &Value) -> bool {
    let name = |h: usize| format!("h{}", h + 1);
    let host_task = |h: usize, kind: &str, prefix: &str| {
        ev["type"] == "host_event"
            && ev["host"] == name(h)
            && ev["fleet_rescue"] != true
            && ev["event"]["type"] == kind
            && ev["event"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(prefix))
    };
    let rescue_started = ev["type"] == "fleet_rescue_started";
    match f.at {
        Trigger::After(_) => false,
        Trigger::Staged(h) => host_task(h, "task_finished", "stage"),
        Trigger::Health(h) => host_task(h, "task_started", "health suite"),
        Trigger::Wave(w) => ev["type"] == "wave_started" && ev["index"] == w,
        Trigger::Rescue => match fault_host(f.kind) {
            Some(h) => {
                let rescued = ev["hosts"]
                    .as_array()
                    .is_some_and(|hs| hs.iter().any(|x| *x == name(h)));
                (rescue_started && !rescued)
                    || (ev["type"] == "host_event"
                        && ev["host"] == name(h)
                        && ev["fleet_rescue"] == true
                        && ev["event"]["type"] == "task_started")
            }
            None => rescue_started,
        },
    }
}

/// The host a fault strikes, if it strikes one.
fn fault_host(k: FaultKind) -> Option<usize> {
    match k {
        FaultKind::KillAgent(h)
        | FaultKind::StopAgent(h, _)
        | FaultKind::DiskFull(h, _)
        | FaultKind::CutNetwork(h, _) => Some(h),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Invariants

/// What the stream said about a deployment.
#[derive(Debug, Clone)]
struct Streamed {
    /// Its `finished` line.
    finished: Value,
    /// The exit code of the CLI that printed it.
    code: Option<i32>,
}

fn outcome_code(outcome: &str) -> Option<i32> {
    Some(match outcome {
        "succeeded" | "check_only" => 0,
        "rolled_back" | "failed" | "aborted" | "approval_timed_out" => 1,
        "rollback_failed" => 4,
        "lock_timeout" => 5,
        _ => return None,
    })
}

/// The version a deployment's outcome leaves every host on, or why there is none.
fn expected_version<'a>(outcome: &str, old: &'a str, new: &'a str) -> Result<&'a str, String> {
    match outcome {
        "succeeded" => Ok(new),
        "rolled_back" | "failed" | "aborted" => Ok(old),
        other => Err(format!(
            "outcome {other}: the environment is not left on one known version ({old} or {new})"
        )),
    }
}

/// `h1=succeeded h2=pending …` from a deployment's JSON.
fn host_states(d: &Value) -> String {
    d["hosts"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    format!(
                        "{}={}",
                        h["host"].as_str().unwrap_or("?"),
                        h["state"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn read_text(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The version a running binary was started from (`…/releases/<version>/bin/…`).
fn exe_version(pid: i32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let s = exe.to_string_lossy().into_owned();
    let rest = s.split("/releases/").nth(1)?;
    Some(rest.split('/').next()?.to_string())
}

impl Rig {
    /// Waits (bounded) until no host has a journal in flight: an agent that was frozen or cut
    /// off may still be finishing its transaction when the deployment's outcome is known.
    fn wait_journals(&self) {
        poll_until(Duration::from_secs(30), || {
            self.fleet
                .hosts
                .iter()
                .all(|h| crate::dir_names(&h.scenario.state.join("journal")).is_empty())
        });
    }

    /// Every invariant of deployment `id` (its stream said `st`), whose hosts must end on
    /// `old` or `new` as its outcome says; the violations found.
    fn check(&self, id: &str, st: &Streamed, old: &str, new: &str) -> Vec<String> {
        let mut bad = Vec::new();
        let outcome = st.finished["outcome"].as_str().unwrap_or("").to_string();
        // 1. One outcome: stream, exit code, show, history.
        match (st.code, outcome_code(&outcome)) {
            (Some(c), Some(want)) if c == want => {}
            (c, want) => bad.push(format!(
                "stream: the CLI exited {c:?} for outcome {outcome:?} (its code is {want:?})"
            )),
        }
        let live = (0..self.addrs.len())
            .find(|i| accepts(&self.addrs[*i]))
            .unwrap_or(0);
        let show = self.cli(live, &["deployment", "show", id, "--json"]);
        match serde_json::from_str::<Value>(&show.stdout) {
            Ok(d) => {
                if d["state"] != "finished" || d["outcome"] != outcome.as_str() {
                    bad.push(format!(
                        "deployment show: state {} outcome {}, the stream said {outcome}",
                        d["state"], d["outcome"]
                    ));
                }
            }
            Err(_) => bad.push(format!(
                "deployment show {id} failed ({}): {}",
                show.code,
                show.stderr.trim()
            )),
        }
        let hist = self.cli(live, &["history", "--env", "prod", "--json"]);
        match serde_json::from_str::<Value>(&hist.stdout) {
            Ok(Value::Array(list)) => match list.iter().find(|d| d["id"] == id) {
                Some(d) if d["outcome"] == outcome.as_str() => {}
                Some(d) => bad.push(format!(
                    "history: outcome {}, the stream said {outcome}",
                    d["outcome"]
                )),
                None => bad.push(format!("history has no deployment {id}")),
            },
            _ => bad.push(format!(
                "history failed ({}): {}",
                hist.code,
                hist.stderr.trim()
            )),
        }
        // 2. One version, the right one, everywhere it shows.
        let want = match expected_version(&outcome, old, new) {
            Ok(v) => Some(v.to_string()),
            Err(e) => {
                bad.push(format!(
                    "{e}; summary: {}; hosts: {}",
                    st.finished["summary"],
                    host_states(&st.finished)
                ));
                None
            }
        };
        let mut seen = Vec::new();
        for h in &self.fleet.hosts {
            let s = &h.scenario;
            let app = s.state.join("apps/app");
            let state_current = std::fs::read_to_string(app.join("state.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["current"].as_str().map(str::to_string));
            let views = [
                ("http", s.serving()),
                ("current", s.current()),
                ("state.json", state_current),
                (
                    "public path",
                    read_text(&s.public_path().join("version.txt")),
                ),
                ("running binary", s.app_pid().and_then(exe_version)),
            ];
            let served = views[0].1.clone();
            // Every view names the same version, and it is the wanted one when one is known.
            let target = want.clone().or_else(|| served.clone());
            if target.is_none() || views.iter().any(|(_, v)| *v != target) {
                let said: Vec<String> = views
                    .iter()
                    .map(|(what, v)| format!("{what} {}", v.as_deref().unwrap_or("none")))
                    .collect();
                bad.push(format!(
                    "{}: {}; want {}",
                    h.name,
                    said.join(", "),
                    want.as_deref().unwrap_or("one version in all of them")
                ));
            }
            seen.push(served);
        }
        if want.is_none() && seen.windows(2).any(|w| w[0] != w[1]) {
            bad.push(format!("hosts serve different versions: {seen:?}"));
        }
        if let Some(w) = &want
            && st.finished["environment_version"] != w.as_str()
        {
            bad.push(format!(
                "the finished event says the environment runs {}, want {w}",
                st.finished["environment_version"]
            ));
        }
        // 3. Nothing left held; 4. each transaction begun once and ended once.
        for h in &self.fleet.hosts {
            bad.extend(
                host_leftovers(&h.scenario.state)
                    .into_iter()
                    .map(|e| format!("{}: {e}", h.name)),
            );
            bad.extend(
                transactions_of(&h.scenario.state, id, &h.name)
                    .into_iter()
                    .map(|e| format!("{}: {e}", h.name)),
            );
        }
        bad
    }
}

/// Journals in flight, deploy locks, staging dirs and a held host lock under `state`.
fn host_leftovers(state: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let journals = crate::dir_names(&state.join("journal"));
    if !journals.is_empty() {
        bad.push(format!("journal left in flight: {journals:?}"));
    }
    let locks: Vec<String> = crate::dir_names(&state.join("locks"))
        .into_iter()
        .filter(|n| n.ends_with(".json"))
        .collect();
    if !locks.is_empty() {
        bad.push(format!("deploy lock left: locks/{locks:?}"));
    }
    let staging: Vec<String> = crate::dir_names(&state.join("apps/app"))
        .into_iter()
        .filter(|n| n.starts_with(".staging-"))
        .collect();
    if !staging.is_empty() {
        bad.push(format!("staging dir left: {staging:?}"));
    }
    // Taken and let go at once when free; refused while a transaction holds it.
    if let Ok(f) = OpenOptions::new()
        .read(true)
        .write(true)
        .open(state.join("lock"))
        && nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
    {
        bad.push(format!(
            "host lock held: {}",
            read_text(&state.join("lock")).unwrap_or_default()
        ));
    }
    bad
}

/// The history files of `id`'s transactions on `host` (`<id>.<host>.jsonl`, the fleet rescue's
/// `<id>.<host>.rescue…`): each must hold one `begin` and one `end`.
fn transactions_of(state: &Path, id: &str, host: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let prefix = format!("{id}.{host}.");
    for name in crate::dir_names(&state.join("history")) {
        if !name.starts_with(&prefix) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(state.join("history").join(&name)) else {
            bad.push(format!("history/{name} unreadable"));
            continue;
        };
        let (mut begins, mut ends) = (0, 0);
        for line in text.lines() {
            match serde_json::from_str::<Value>(line) {
                Ok(v) if v["type"] == "begin" => begins += 1,
                Ok(v) if v["type"] == "end" => ends += 1,
                Ok(_) => {}
                Err(e) => bad.push(format!("history/{name}: unparseable line: {e}")),
            }
        }
        if (begins, ends) != (1, 1) {
            bad.push(format!(
                "transaction {name}: {begins} begin and {ends} end records (want 1 and 1)"
            ));
        }
    }
    bad
}

// ---------------------------------------------------------------------------------------------
// Playing a round

/// How one round went.
#[derive(Debug, Clone)]
pub struct RoundResult {
    /// What was drawn.
    pub round: Round,
    /// The faults as fired (`fault @trigger at 3.2s: what happened`, or `not fired`).
    pub fired: Vec<String>,
    /// The outcome the stream reported (empty when none).
    pub outcome: String,
    /// The violated invariants (empty: the round passed).
    pub failures: Vec<String>,
    /// Wall time of the round.
    pub took: Duration,
    /// Its logs.
    pub logs: PathBuf,
}

impl RoundResult {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// The failure message: seed, round, store, schedule, violations, logs, how to replay.
    pub fn message(&self) -> String {
        let r = &self.round;
        format!(
            "chaos seed {seed} round {round} store {store}: {n} invariant(s) broken\n  schedule: {sched}\n  fired: {fired}\n  outcome: {outcome}\n{fails}\n  logs: {logs}\n  replay: RAMPART_CHAOS_ONLY={seed}:{round} RAMPART_CHAOS_STORE={store} cargo test -p rampart-tests --test e2e chaos::long_run -- --ignored --nocapture",
            seed = r.seed,
            round = r.round,
            store = r.store.name(),
            n = self.failures.len(),
            sched = r.schedule(),
            fired = self.fired.join("; "),
            outcome = if self.outcome.is_empty() {
                "none"
            } else {
                &self.outcome
            },
            fails = self
                .failures
                .iter()
                .map(|f| format!("  - {f}"))
                .collect::<Vec<_>>()
                .join("\n"),
            logs = self.logs.display(),
        )
    }
}

impl Rig {
    /// Plays `round`: the deploy under its faults, the invariants, the next deploy.
    fn play(&mut self, round: &Round, logs: &Path) -> RoundResult {
        let t0 = Instant::now();
        self.logs.set_dir(logs);
        self.logs.note(&format!(
            "round {} seed {} store {}: {} (old version {})",
            round.round,
            round.seed,
            round.store.name(),
            round.schedule(),
            self.version
        ));
        let mut result = RoundResult {
            round: round.clone(),
            fired: Vec::new(),
            outcome: String::new(),
            failures: Vec::new(),
            took: Duration::ZERO,
            logs: logs.to_path_buf(),
        };
        let (old, new, next) = (self.version.clone(), round.version(), round.next_version());
        if let Err(e) = package_version(&self.fleet.dist, &new)
            .and_then(|()| package_version(&self.fleet.dist, &next))
        {
            result.failures.push(e);
            return result;
        }
        self.set_broken(round.broken, &new);
        let id = round.deployment_id();
        let streamed = self.deploy_under_faults(round, &id, &new, &mut result);
        if let Err(e) = self.settle() {
            result.failures.push(e);
        }
        match streamed {
            Some(st) => {
                result.outcome = st.finished["outcome"].as_str().unwrap_or("").to_string();
                self.wait_journals();
                result.failures.extend(self.check(&id, &st, &old, &new));
                if result.outcome == "succeeded" {
                    self.version = new.clone();
                }
            }
            None => {
                let live = (0..self.addrs.len())
                    .find(|i| accepts(&self.addrs[*i]))
                    .unwrap_or(0);
                let show = self.cli(live, &["deployment", "show", &id, "--json"]);
                let d: Value = serde_json::from_str(&show.stdout).unwrap_or_default();
                result.failures.push(format!(
                    "no outcome: deployment {id} did not finish within {OUTCOME_DEADLINE:?} (wedged): \
                     it is {} on controller {}, hosts {}",
                    d["state"],
                    controller_name(live),
                    host_states(&d)
                ));
            }
        }
        // 5. The next deploy succeeds, with no fault.
        let before = self.version.clone();
        let next_id = format!("{id}-next");
        match self.deploy(&next, &next_id, round.via) {
            Ok(r) => {
                let fin = r.json().into_iter().rev().find(|v| v["type"] == "finished");
                match fin {
                    Some(f) if r.code == 0 && f["outcome"] == "succeeded" => {
                        self.wait_journals();
                        let st = Streamed {
                            finished: f,
                            code: Some(r.code),
                        };
                        let bad = self.check(&next_id, &st, &before, &next);
                        result
                            .failures
                            .extend(bad.into_iter().map(|b| format!("next deploy: {b}")));
                        self.version = next.clone();
                    }
                    Some(f) => result.failures.push(format!(
                        "next deploy of {next}: exit {}, outcome {}: {}",
                        r.code, f["outcome"], f["summary"]
                    )),
                    None => result.failures.push(format!(
                        "next deploy of {next}: exit {} with no outcome: {}",
                        r.code,
                        r.stderr.trim()
                    )),
                }
            }
            Err(e) => result.failures.push(format!("next deploy: {e}")),
        }
        result.took = t0.elapsed();
        self.logs.note(&format!(
            "round over in {:.1}s: {}",
            result.took.as_secs_f64(),
            if result.ok() { "ok" } else { "FAILED" }
        ));
        if !result.ok() {
            self.keep_evidence(&id, logs);
            let _ = std::fs::write(logs.join("failure.txt"), result.message());
        }
        result
    }

    /// The deploy of `version` under `round`'s faults, to its outcome (None: none came).
    fn deploy_under_faults(
        &self,
        round: &Round,
        id: &str,
        version: &str,
        result: &mut RoundResult,
    ) -> Option<Streamed> {
        let args = self.deploy_args(version, id, round.via);
        let mut cli = match LiveCli::spawn(&args, "deploy", &self.logs) {
            Ok(c) => c,
            Err(e) => {
                result.failures.push(e);
                return None;
            }
        };
        let t0 = Instant::now();
        let mut pending: Vec<Fault> = round.faults.clone();
        let mut fired: Vec<Fired> = Vec::new();
        let mut last_seq: Option<u64> = None;
        let mut finished: Option<Value> = None;
        // Whether the CLI now reading was killed by a fault (then `watch` takes over).
        let mut killed = false;
        let mut gave_up: Option<i32> = None;
        let mut watches = 0u32;
        // Bounded by OUTCOME_DEADLINE; 20 ms per empty poll.
        while finished.is_none() && t0.elapsed() < OUTCOME_DEADLINE {
            let now = t0.elapsed();
            let due: Vec<Fault> = pending
                .iter()
                .copied()
                .filter(|f| matches!(f.at, Trigger::After(ms) if now >= Duration::from_millis(ms)))
                .collect();
            let mut to_fire = due;
            match cli.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(ev) => {
                    if let Some(s) = ev["seq"].as_u64() {
                        last_seq = Some(s);
                    }
                    for f in &pending {
                        if triggers(f, &ev) && !to_fire.contains(f) {
                            to_fire.push(*f);
                        }
                    }
                    if ev["type"] == "finished" {
                        finished = Some(ev);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The CLI ended without an outcome (it gave up, or was killed): learn it
                    // with `watch` from the next event on.
                    let code = cli.wait(Duration::from_secs(5));
                    if watches == 0 && !killed {
                        gave_up = code;
                    }
                    if watches > 0 {
                        self.logs.note(&format!(
                            "watch exited {code:?} with no outcome; watching again in 1 s"
                        ));
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    watches += 1;
                    killed = false;
                    let from = last_seq.map_or(0, |s| s + 1).to_string();
                    let mut w = vec![
                        "watch".to_string(),
                        id.to_string(),
                        "--from-seq".into(),
                        from,
                        "--json".into(),
                        "--reconnect-timeout".into(),
                        RECONNECT_SECS.into(),
                    ];
                    w.extend(self.auth_args(round.via));
                    match LiveCli::spawn(&w, "watch", &self.logs) {
                        Ok(c) => cli = c,
                        Err(e) => {
                            result.failures.push(e);
                            break;
                        }
                    }
                }
            }
            if finished.is_some() {
                // Faults still waiting would strike a finished deployment: they do not fire.
                break;
            }
            for f in to_fire {
                pending.retain(|p| *p != f);
                killed |= f.kind == FaultKind::KillCli;
                fired.push(self.fire(f, t0.elapsed(), &mut cli));
            }
        }
        if let Some(code) = gave_up {
            result.failures.push(format!(
                "the deploy CLI exited {code} before the deployment finished (not killed by a fault)"
            ));
        }
        let code = if finished.is_some() {
            cli.wait(Duration::from_secs(30))
        } else {
            None
        };
        for mut f in fired {
            if let Some(t) = f.thread.take() {
                let _ = t.join();
            }
            result.fired.push(format!(
                "{} at {:.1}s: {}",
                f.fault,
                f.at.as_secs_f64(),
                f.note.lock().expect("note")
            ));
        }
        for f in pending {
            result.fired.push(format!("{f}: not fired"));
        }
        self.logs
            .note(&format!("fired: {}", result.fired.join("; ")));
        finished.map(|finished| Streamed { finished, code })
    }

    /// Copies what a failed round's reader needs beside its logs: each host's history and
    /// journals of the deployment, its app dir listing, the PostgreSQL log.
    fn keep_evidence(&self, id: &str, logs: &Path) {
        for h in &self.fleet.hosts {
            let dest = logs.join(format!("host-{}", h.name));
            let _ = std::fs::create_dir_all(&dest);
            for sub in ["journal", "history"] {
                for name in crate::dir_names(&h.scenario.state.join(sub)) {
                    if name.starts_with(id) {
                        let _ = std::fs::copy(
                            h.scenario.state.join(sub).join(&name),
                            dest.join(format!("{sub}-{name}")),
                        );
                    }
                }
            }
            let listing = Command::new("ls")
                .arg("-laR")
                .arg(h.scenario.state.join("apps"))
                .arg(h.scenario.state.join("locks"))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let _ = std::fs::write(dest.join("state-dir.txt"), listing);
            let _ = std::fs::copy(h.scenario.path().join("app.log"), dest.join("app.log"));
        }
        if let Some(pg) = &self.pg {
            let _ = std::fs::write(logs.join("postgresql.log"), pg.log());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running a plan

/// Every round's result.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// In the order played.
    pub rounds: Vec<RoundResult>,
    /// Fleets built (one per store, plus one after every failed round).
    pub fleets: u32,
    /// Wall time of the whole run, fleets included.
    pub took: Duration,
}

impl Report {
    /// A table: seed, round, store, faults, outcome, ok/FAILED, time.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<10} {:>5} {:<8} {:<70} {:<16} {:<6} {:>6}\n",
            "seed", "round", "store", "faults", "outcome", "result", "secs"
        );
        for r in &self.rounds {
            s.push_str(&format!(
                "{:<10} {:>5} {:<8} {:<70} {:<16} {:<6} {:>6.1}\n",
                r.round.seed,
                r.round.round,
                r.round.store.name(),
                r.round.schedule(),
                if r.outcome.is_empty() {
                    "-"
                } else {
                    &r.outcome
                },
                if r.ok() { "ok" } else { "FAILED" },
                r.took.as_secs_f64()
            ));
        }
        let n = self.rounds.len().max(1) as f64;
        let played: f64 = self.rounds.iter().map(|r| r.took.as_secs_f64()).sum();
        s.push_str(&format!(
            "{} round(s), {} failed; {} fleet(s) built; {:.1}s in rounds ({:.1}s a round), {:.1}s in all\n",
            self.rounds.len(),
            self.rounds.iter().filter(|r| !r.ok()).count(),
            self.fleets,
            played,
            played / n,
            self.took.as_secs_f64()
        ));
        s
    }

    /// Panics with every failed round's message.
    pub fn assert_ok(&self) {
        let failed: Vec<String> = self
            .rounds
            .iter()
            .filter(|r| !r.ok())
            .map(RoundResult::message)
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} chaos round(s) failed:\n{}",
            failed.len(),
            self.rounds.len(),
            failed.join("\n\n")
        );
    }
}

/// Plays `plan`: the rounds of each store on one fleet, in order (a failed round's fleet is
/// replaced by a fresh one, so one failure does not cascade). Prints the seed and each round.
pub fn run(plan: &Plan) -> Report {
    let t0 = Instant::now();
    println!(
        "chaos seed {} ({} round(s)); replay one with RAMPART_CHAOS_ONLY={}:ROUND",
        plan.seed,
        plan.rounds.len(),
        plan.seed
    );
    let dist_dir = tempfile::tempdir().expect("temp dir for the tarballs");
    let dist = dist_dir.path().join("dist");
    crate::deploy::package_sample_app(&dist);
    let mut report = Report::default();
    let mut results: Vec<(usize, RoundResult)> = Vec::new();
    for store in [StoreKind::Sqlite, StoreKind::Postgres] {
        let mine: Vec<(usize, &RoundSpec)> = plan
            .rounds
            .iter()
            .enumerate()
            .filter(|(_, r)| r.store == store)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let router = Arc::new(LogRouter::default());
        let mut rig: Option<Rig> = None;
        for (pos, spec) in mine {
            let round = draw(plan.seed, spec.round, store);
            let logs = plan
                .logs
                .join(format!("{}-{}-{}", plan.seed, spec.round, store.name()));
            let _ = std::fs::remove_dir_all(&logs);
            router.set_dir(&logs);
            if rig.is_none() {
                report.fleets += 1;
                match Rig::start(store, &dist, router.clone()) {
                    Ok(r) => rig = Some(r),
                    Err(e) => {
                        let result = RoundResult {
                            round,
                            fired: Vec::new(),
                            outcome: String::new(),
                            failures: vec![format!("the fleet did not start: {e}")],
                            took: Duration::ZERO,
                            logs: logs.clone(),
                        };
                        println!("{}", result.message());
                        results.push((pos, result));
                        continue;
                    }
                }
            }
            let r = rig.as_mut().expect("a fleet");
            let result = r.play(&round, &logs);
            println!(
                "chaos {} round {} {}: {} in {:.1}s — {}",
                plan.seed,
                round.round,
                store.name(),
                if result.ok() { "ok" } else { "FAILED" },
                result.took.as_secs_f64(),
                round.schedule()
            );
            if result.ok() {
                if !plan.keep_logs {
                    let _ = std::fs::remove_dir_all(&logs);
                }
            } else {
                println!("{}", result.message());
                rig = None;
            }
            results.push((pos, result));
        }
    }
    results.sort_by_key(|(pos, _)| *pos);
    report.rounds = results.into_iter().map(|(_, r)| r).collect();
    report.took = t0.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_cover_every_fault_and_break_about_forty_percent_of_rounds() {
        let n = 400u64;
        let mut kinds = std::collections::HashSet::new();
        let (mut broken, mut same_host, mut in_rescue) = (0, 0, 0);
        let mut schedules = std::collections::BTreeSet::new();
        for round in 0..n {
            let store = StoreKind::of_round(round);
            let r = draw(CI_SEED, round, store);
            assert_eq!(r, draw(CI_SEED, round, store), "round {round} replays");
            assert!((1..=2).contains(&r.faults.len()), "{r:?}");
            broken += u32::from(r.broken.is_some());
            for f in &r.faults {
                kinds.insert(std::mem::discriminant(&f.kind));
                if matches!(f.kind, FaultKind::KillController(_)) && f.at == Trigger::Rescue {
                    in_rescue += 1;
                }
                assert!(
                    store == StoreKind::Postgres || !matches!(f.kind, FaultKind::PgDown(_)),
                    "{r:?}"
                );
            }
            if let [a, b] = r.faults.as_slice()
                && a.at == b.at
                && fault_host(a.kind).is_some()
                && fault_host(a.kind) == fault_host(b.kind)
            {
                same_host += 1;
            }
            schedules.insert(r.schedule());
        }
        assert_eq!(kinds.len(), 7, "every fault kind is drawn");
        let share = f64::from(broken) / n as f64;
        assert!(
            (0.3..0.5).contains(&share),
            "broken in {share:.2} of rounds"
        );
        assert!(
            same_host > 20,
            "two faults at once on one host: {same_host}"
        );
        assert!(
            in_rescue > 10,
            "a controller killed in the rescue: {in_rescue}"
        );
        assert!(
            schedules.len() > 300,
            "rounds differ: {} schedules",
            schedules.len()
        );
    }

    #[test]
    fn the_ci_budget_tries_every_fault() {
        let plan = Plan::ci();
        let rounds: Vec<Round> = plan
            .rounds
            .iter()
            .map(|r| draw(plan.seed, r.round, r.store))
            .collect();
        let faults: Vec<Fault> = rounds.iter().flat_map(|r| r.faults.clone()).collect();
        let mut kinds = std::collections::HashSet::new();
        for f in &faults {
            kinds.insert(std::mem::discriminant(&f.kind));
        }
        assert_eq!(kinds.len(), 7, "{rounds:#?}");
        assert!(rounds.iter().filter(|r| r.broken.is_some()).count() >= 2);
        assert!(
            faults
                .iter()
                .any(|f| matches!(f.kind, FaultKind::KillController(_)) && f.at == Trigger::Rescue)
        );
        assert!(rounds.iter().any(|r| matches!(r.faults.as_slice(), [a, b] if a.at == b.at && fault_host(a.kind).is_some() && fault_host(a.kind) == fault_host(b.kind))));
        for store in [StoreKind::Sqlite, StoreKind::Postgres] {
            assert_eq!(rounds.iter().filter(|r| r.store == store).count(), 3);
        }
    }
}
