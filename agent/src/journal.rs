//! The write-ahead journal: `journal/<txid>.jsonl`, one JSON [`Entry`] a line, made durable with
//! one fdatasync per task.
//!
//! Inputs: records from the engine. Outputs: durable lines, and on start-up the parsed entries of
//! every unfinished journal. A finished transaction's journal moves to `history/` (rename, then the
//! directories are fsync'd). A torn last line (the crash cut a write short) is reported to the
//! caller with its text and cut off before anything is appended, so the file stays parseable;
//! a bad line anywhere else is corruption and refuses recovery.
//!
//! # Which records are synced, and why one sync per task is enough
//!
//! Every record is written (`write(2)`: it is in the page cache, so it survives a SIGKILL of
//! the agent) before the engine goes on. Every record is also fdatasync'd before
//! [`Journal::append`] returns, except a `task_start` that directly follows the `task_end` of a
//! task in the same place (both outside any `rescue`/`always`, or both in the same outermost
//! `rescue`/`always`): that one becomes durable with the next sync, at the latest its own
//! `task_end` ([`start_needs_sync`]). A run of tasks therefore costs one fdatasync per task.
//!
//! What each record means to recovery (`recovery.rs`, which sees only what is durable):
//! - `task_end` of task X: X's result is final; a replay registers it and never runs X again.
//!   It is synced, so nothing after it (the next task's side effects) happens while it is not
//!   durable.
//! - `task_start` of task T with no `task_end`: T was running. In a `block`, T fails as
//!   "interrupted" and `rescue` then `always` run; inside a `rescue` or an `always`, that whole
//!   (outermost) section runs again.
//! - `begin`, `play_start`, `recovery`, `end`: synced.
//! - `task_retry`, `task_progress` (an `until` attempt, a health check's verdict, a loop item's):
//!   recovery skips them (they report, they decide nothing), so they are not synced; they
//!   become durable with the task's `task_end`. A loop of N items still costs one sync.
//!
//! A power loss after T's side effects began but before the next sync may keep T's unsynced
//! `task_start`, tear it (the torn tail is cut and reported) or lose it whole. Kept or torn,
//! recovery sees T running. Lost, the journal ends with the synced `task_end` of X, the task
//! before T: exactly what a crash just before T's `task_start` leaves, a state recovery already
//! handles. Because X and T are in the same place, recovery then does to T what it does when
//! T's `task_start` is there:
//! - both in a `block` (outside any `rescue`/`always`): recovery replays up to X, the replay runs
//!   out at T, and a block task reached after the replay ran out fails as "interrupted" (`the
//!   agent stopped before this task ran`) without running; `rescue` and `always` run. T is not
//!   run again, its status is the same.
//! - both in the same outermost `rescue` or `always`: that section runs again from its start,
//!   as it would have.
//!
//! When X and T are in different places the `task_start` is synced, because the two journals
//! would be recovered differently: with X in a nested `rescue`/`always` and T after it in the
//! block, recovery would rerun that section and then run T live, a second time, instead of
//! failing it. After a `play_start`, a `recovery` record or a `begin`, the first `task_start` is
//! synced too (a replay that runs out at a play boundary goes live). These are a few syncs per
//! section or play, not per task.
//!
//! What the skipped syncs cost: a watcher is streamed T's `task_start` (or a progress record)
//! before it is durable. After a power loss (never after a SIGKILL of the agent alone) the
//! journal may not have it; the `recovery` record then takes its sequence number, and a client
//! re-attaching from the number after it misses those records (it still gets every later record
//! and the outcome).
//! `tests/e2e/crash.rs` SIGKILLs the agent at every record, and also removes the unsynced
//! `task_start` before the restart, which is what a power loss can leave.
//!
//! # A full disk
//!
//! A transaction that has begun is finished now, whatever the disk does, in three layers:
//!
//! - **The reserve.** [`Journal::create`] preallocates [`JOURNAL_RESERVE`] bytes past the
//!   journal's end (`fallocate(2)` with `FALLOC_FL_KEEP_SIZE`: blocks owned by the file, its
//!   size unchanged), and every append tops it up again once less than half is left. Records
//!   written after the filesystem filled up (the failed task's `task_end`, the rescue's, the
//!   always's, `end`) land in blocks that are already the journal's, so they need no free space.
//!   A transaction whose reserve cannot be allocated is refused before it begins (nothing ran).
//!   Why preallocation of the journal itself and not a reserve file released to the journal
//!   when space runs out: the space is the journal's own from the start, so no other writer
//!   (a task, the artifact cache, another process) can take it between the release and the
//!   journal's next write; nothing has to act at the moment of failure; and there is no extra
//!   file for recovery to find, size or lose. A finished journal gives its reserve back
//!   (truncated to its length) before it moves to `history/`, which [`Journal::create`] makes
//!   beside `journal/` so the move needs no new directory. Filesystems without `fallocate`
//!   (some FUSE and network ones) run without a reserve, with a warning.
//! - **The wait.** A record that still does not fit (larger than what is left of the reserve,
//!   or no reserve) is retried in-process with a bounded backoff ([`SPACE_RETRY_FIRST`] doubling
//!   to [`SPACE_RETRY_MAX`]) for up to the journal's space wait (`--journal-wait-seconds`,
//!   [`DEFAULT_SPACE_WAIT`]). Before each retry the part of the line that got in is cut off, so
//!   the file stays parseable; an fdatasync that fails for lack of space is handled the same
//!   way (the record is cut and written again), so the journal only ever holds whole records. While it waits the agent logs a warning naming the journal and
//!   what it waits for (again every [`SPACE_LOG_EVERY`]), and sets its systemd status line
//!   (`systemctl status rampart-agent`); once the write goes through, the transaction goes on.
//!   The move to `history/` waits the same way.
//! - **The exit.** When the wait runs out the write fails with [`JournalError::NoSpace`]; the
//!   agent then exits non-zero (a transaction is never left stopped under a live agent) and
//!   systemd (`Restart=always`) starts it again, into recovery, which meets a disk still full
//!   with the same bounded wait.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{FallocateFlags, fallocate};

use crate::error::JournalError;
use crate::event::{Entry, Record};
use rampart_playbook::model::outermost_cleanup_section;

/// Subdirectory of the state dir holding in-flight journals.
pub const JOURNAL_DIR: &str = "journal";
/// Subdirectory of the state dir holding finished journals.
pub const HISTORY_DIR: &str = "history";

/// Default of how long a write that finds no free space retries (`--journal-wait-seconds`).
pub const DEFAULT_SPACE_WAIT: Duration = Duration::from_secs(60);
/// Bytes preallocated past a journal's end for the records written once the disk is full. A
/// task's records are a few hundred bytes plus its result, so this holds a rescue and an always
/// of tens of tasks with ordinary outputs.
pub const JOURNAL_RESERVE: u64 = 1 << 20;
/// The reserve is topped up once less than this is left.
const RESERVE_LOW: u64 = JOURNAL_RESERVE / 2;
/// First pause before retrying a write that found no free space.
pub const SPACE_RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest pause between two such retries.
pub const SPACE_RETRY_MAX: Duration = Duration::from_secs(1);
/// How often a wait for space is logged again.
pub const SPACE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether records are fsync'd before the engine goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync after every record but the `task_start`s [`start_needs_sync`] exempts: once
    /// per task (production).
    Fsync,
    /// No sync (benchmarks measuring the engine without the disk).
    None,
}

/// An open journal being appended to.
#[derive(Debug)]
pub struct Journal {
    txid: String,
    path: PathBuf,
    file: File,
    next_seq: u64,
    durability: Durability,
    syncs: u64,
    /// The path of the task whose `task_end` is the last record appended, if it is one.
    previous_end: Option<String>,
    /// The file's length: the end of the last complete record.
    len: u64,
    /// The end of the space preallocated for the journal (0 when none is known to be).
    reserved_to: u64,
    /// Whether the filesystem preallocates (`fallocate`); without it there is no reserve.
    can_reserve: bool,
    /// How long a write that finds no free space retries.
    space_wait: Duration,
}

/// What was read back from a journal file.
#[derive(Debug)]
pub struct ReadJournal {
    /// Every complete entry, in order.
    pub entries: Vec<Entry>,
    /// The bytes after the last complete line, if any (a torn write).
    pub torn_tail: Option<String>,
    /// The file's length up to the end of the last complete line.
    pub good_len: u64,
}

/// The path of a transaction's in-flight journal.
pub fn journal_path(state_dir: &Path, txid: &str) -> PathBuf {
    state_dir.join(JOURNAL_DIR).join(format!("{txid}.jsonl"))
}

/// The path of a transaction's finished journal.
pub fn history_path(state_dir: &Path, txid: &str) -> PathBuf {
    state_dir.join(HISTORY_DIR).join(format!("{txid}.jsonl"))
}

/// When a transaction began: the time of the first record of its journal (in flight, else in
/// history), if it can be read.
pub fn begin_time(state_dir: &Path, txid: &str) -> Option<std::time::SystemTime> {
    [journal_path(state_dir, txid), history_path(state_dir, txid)]
        .iter()
        .find_map(|p| {
            let mut first = String::new();
            BufReader::new(File::open(p).ok()?)
                .read_line(&mut first)
                .ok()?;
            let entry: Entry = serde_json::from_str(first.trim_end()).ok()?;
            let t = chrono::DateTime::parse_from_rfc3339(&entry.time).ok()?;
            Some(std::time::SystemTime::from(t))
        })
}

/// Current time as RFC 3339 with microseconds, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Whether the `task_start` of the task at `path` is fdatasync'd before [`Journal::append`]
/// returns, given the path of the task whose `task_end` is the record just before it (`None`
/// when the record before it is anything else). Unsynced only when both tasks are in the same
/// place, so that losing it is recovered as if it were there (the module docs give the argument).
pub fn start_needs_sync(previous_end: Option<&str>, path: &str) -> bool {
    match previous_end {
        Some(prev) => outermost_cleanup_section(prev) != outermost_cleanup_section(path),
        None => true,
    }
}

fn fsync_dir(dir: &Path) -> Result<(), JournalError> {
    rampart_host::durable::fsync_dir(dir).map_err(|source| JournalError::Io {
        op: "fsync directory",
        path: dir.to_path_buf(),
        source,
    })
}

impl Journal {
    /// Creates a new journal for `txid` with its reserve; fails if one exists (in flight or in
    /// history), or when the reserve finds no free space (the file is then removed).
    pub fn create(
        state_dir: &Path,
        txid: &str,
        durability: Durability,
    ) -> Result<Self, JournalError> {
        let dir = state_dir.join(JOURNAL_DIR);
        // history/ too: moving a finished journal there then needs no new directory on a full disk.
        for d in [&dir, &state_dir.join(HISTORY_DIR)] {
            fs::create_dir_all(d).map_err(|source| JournalError::Io {
                op: "create directory",
                path: d.to_path_buf(),
                source,
            })?;
        }
        if history_path(state_dir, txid).exists() {
            return Err(JournalError::Exists {
                txid: txid.to_string(),
            });
        }
        let path = journal_path(state_dir, txid);
        // The journal holds the playbook's variables (secrets included): owner-only.
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    JournalError::Exists {
                        txid: txid.to_string(),
                    }
                } else {
                    JournalError::Io {
                        op: "create journal",
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        let mut journal = Journal {
            txid: txid.to_string(),
            path,
            file,
            next_seq: 0,
            durability,
            syncs: 0,
            previous_end: None,
            len: 0,
            reserved_to: 0,
            can_reserve: true,
            space_wait: DEFAULT_SPACE_WAIT,
        };
        if let Err(source) = journal.top_up_reserve() {
            let _ = fs::remove_file(&journal.path);
            return Err(JournalError::NoReserve {
                path: journal.path,
                bytes: JOURNAL_RESERVE,
                source,
            });
        }
        if durability == Durability::Fsync {
            fsync_dir(&dir)?;
        }
        Ok(journal)
    }

    /// Sets how long a write that finds no free space retries before it fails with
    /// [`JournalError::NoSpace`] (default [`DEFAULT_SPACE_WAIT`]).
    pub fn with_space_wait(mut self, wait: Duration) -> Self {
        self.space_wait = wait;
        self
    }

    /// Preallocates [`JOURNAL_RESERVE`] bytes past the end when less than half of it is left.
    /// Space already the file's is no new space, so this succeeds on a full disk while the
    /// reserve is there. A filesystem that cannot preallocate is warned about once, then left.
    fn top_up_reserve(&mut self) -> std::io::Result<()> {
        if !self.can_reserve || self.reserved_to >= self.len + RESERVE_LOW {
            return Ok(());
        }
        let (offset, len) = (self.len as i64, JOURNAL_RESERVE as i64);
        match fallocate(&self.file, FallocateFlags::FALLOC_FL_KEEP_SIZE, offset, len) {
            Ok(()) => {
                self.reserved_to = self.len + JOURNAL_RESERVE;
                Ok(())
            }
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                tracing::warn!(
                    path = %self.path.display(),
                    "the filesystem cannot preallocate (fallocate): this journal has no reserve \
                     for its rescue on a full disk"
                );
                self.can_reserve = false;
                Ok(())
            }
            Err(errno) => Err(errno.into()),
        }
    }

    /// Tops the reserve up after a write; a failure (the disk is full) leaves what is left of
    /// it, and the next write waits for space if it needs more.
    fn keep_reserve(&mut self) {
        if let Err(e) = self.top_up_reserve() {
            tracing::debug!(path = %self.path.display(), error = %e, "cannot top up the journal's reserve");
        }
    }

    /// Reopens an unfinished journal for appending after recovery read it: cuts a torn tail off
    /// (its text is kept by the caller in the recovery record) and continues the sequence.
    pub fn reopen(
        state_dir: &Path,
        txid: &str,
        read: &ReadJournal,
        durability: Durability,
    ) -> Result<Self, JournalError> {
        let path = journal_path(state_dir, txid);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|source| JournalError::Io {
                op: "reopen journal",
                path: path.clone(),
                source,
            })?;
        if read.torn_tail.is_some() {
            file.set_len(read.good_len)
                .map_err(|source| JournalError::Io {
                    op: "truncate torn tail of",
                    path: path.clone(),
                    source,
                })?;
        }
        let next_seq = read.entries.last().map_or(0, |e| e.seq + 1);
        let mut journal = Journal {
            txid: txid.to_string(),
            path,
            file,
            next_seq,
            durability,
            syncs: 0,
            previous_end: None,
            len: read.good_len,
            reserved_to: 0,
            can_reserve: true,
            space_wait: DEFAULT_SPACE_WAIT,
        };
        // What is left of the reserve the crashed run allocated is the file's still: this
        // succeeds without free space then.
        journal.keep_reserve();
        Ok(journal)
    }

    /// The transaction id.
    pub fn txid(&self) -> &str {
        &self.txid
    }

    /// How many fdatasyncs of records this journal has done since it was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Appends one record, durably unless it is a progress or retry record, or a `task_start`
    /// [`start_needs_sync`] lets wait for the next sync; returns the entry as written.
    pub fn append(&mut self, record: Record) -> Result<Entry, JournalError> {
        let sync = self.durability == Durability::Fsync
            && match &record {
                Record::TaskStart { path, .. } => {
                    start_needs_sync(self.previous_end.as_deref(), path)
                }
                Record::TaskRetry { .. } | Record::TaskProgress { .. } => false,
                _ => true,
            };
        let previous_end = match &record {
            Record::TaskEnd { path, .. } => Some(path.clone()),
            _ => None,
        };
        let entry = Entry {
            seq: self.next_seq,
            txid: self.txid.clone(),
            time: now_rfc3339(),
            record,
        };
        let mut line = serde_json::to_vec(&entry).map_err(JournalError::Encode)?;
        line.push(b'\n');
        self.write_line(&line, sync)?;
        if sync {
            self.syncs += 1;
        }
        self.len += line.len() as u64;
        self.keep_reserve();
        self.previous_end = previous_end;
        self.next_seq += 1;
        Ok(entry)
    }

    /// Appends one line (and fdatasyncs it when `sync`), waiting for free space when there is
    /// none: the part of the line that got in is cut off before each retry.
    fn write_line(&mut self, line: &[u8], sync: bool) -> Result<(), JournalError> {
        let mut wait = SpaceWait::new(&self.path, "append a record to", self.space_wait);
        loop {
            let written = self.file.write_all(line).map_err(|e| ("append to", e));
            let attempt = written.and_then(|()| match sync {
                true => self.file.sync_data().map_err(|e| ("fsync", e)),
                false => Ok(()),
            });
            let source = match attempt {
                Ok(()) => {
                    wait.over();
                    return Ok(());
                }
                Err((op, source)) if !is_no_space(&source) => {
                    return Err(JournalError::Io {
                        op,
                        path: self.path.clone(),
                        source,
                    });
                }
                Err((_, source)) => source,
            };
            self.file
                .set_len(self.len)
                .map_err(|source| JournalError::Io {
                    op: "cut a partly written record off",
                    path: self.path.clone(),
                    source,
                })?;
            // The cut may have freed the preallocated blocks too: take them back while free.
            self.reserved_to = 0;
            self.keep_reserve();
            wait.pause(source)?;
        }
    }

    /// Moves the finished journal to `history/` (rename + directory fsyncs).
    pub fn finish(self, state_dir: &Path) -> Result<PathBuf, JournalError> {
        let hist_dir = state_dir.join(HISTORY_DIR);
        fs::create_dir_all(&hist_dir).map_err(|source| JournalError::Io {
            op: "create directory",
            path: hist_dir.clone(),
            source,
        })?;
        let dest = history_path(state_dir, &self.txid);
        // The reserve goes back: a truncate to the file's own length frees the blocks
        // preallocated past it (ext4, XFS, tmpfs). A failure only keeps them allocated.
        if let Err(e) = self.file.set_len(self.len) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot give the journal's reserve back");
        }
        drop(self.file);
        let mut wait = SpaceWait::new(&self.path, "move to history", self.space_wait);
        loop {
            match fs::rename(&self.path, &dest) {
                Ok(()) => break,
                Err(source) if is_no_space(&source) => wait.pause(source)?,
                Err(source) => {
                    return Err(JournalError::Io {
                        op: "move to history",
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
        wait.over();
        if self.durability == Durability::Fsync {
            fsync_dir(&hist_dir)?;
            fsync_dir(&state_dir.join(JOURNAL_DIR))?;
        }
        Ok(dest)
    }
}

/// Whether an I/O error means the filesystem has no room (ENOSPC, or the quota is spent).
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// The bounded wait of one write that finds no free space: backoff from
/// [`SPACE_RETRY_FIRST`] to [`SPACE_RETRY_MAX`], a warning (and the systemd status line) at the
/// start and every [`SPACE_LOG_EVERY`], [`JournalError::NoSpace`] once `bound` has passed.
#[derive(Debug)]
pub struct SpaceWait {
    path: PathBuf,
    op: &'static str,
    bound: Duration,
    started: Option<Instant>,
    logged: Option<Instant>,
    pause: Duration,
    pauses: u64,
}

impl SpaceWait {
    /// A wait for room to `op` (what is attempted) on `path`, for at most `bound`.
    pub fn new(path: &Path, op: &'static str, bound: Duration) -> Self {
        SpaceWait {
            path: path.to_path_buf(),
            op,
            bound,
            started: None,
            logged: None,
            pause: SPACE_RETRY_FIRST,
            pauses: 0,
        }
    }

    /// After an attempt failed with `source` (no space): sleeps before the next attempt, or
    /// fails once the bound has passed.
    pub fn pause(&mut self, source: std::io::Error) -> Result<(), JournalError> {
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        let waited = now - started;
        // Bounded in time, and in count (every pause but the last is at least the first one).
        let max_pauses = (self.bound.as_millis() / SPACE_RETRY_FIRST.as_millis()) as u64 + 2;
        if waited >= self.bound || self.pauses >= max_pauses {
            set_status(&format!(
                "no space to {} {} for {:.0}s: exiting, the restart recovers the transaction",
                self.op,
                self.path.display(),
                waited.as_secs_f64()
            ));
            return Err(JournalError::NoSpace {
                op: self.op,
                path: self.path.clone(),
                waited,
                source,
            });
        }
        if self.logged.is_none_or(|t| now - t >= SPACE_LOG_EVERY) {
            tracing::warn!(
                path = %self.path.display(),
                op = self.op,
                waited_secs = waited.as_secs(),
                wait_secs = self.bound.as_secs(),
                error = %source,
                "waiting for free space: the transaction goes on once there is room; after the \
                 wait the agent exits and its restart recovers the transaction"
            );
            set_status(&format!(
                "waiting for free space to {} {} (waited {}s of {}s)",
                self.op,
                self.path.display(),
                waited.as_secs(),
                self.bound.as_secs()
            ));
            self.logged = Some(now);
        }
        std::thread::sleep(self.pause.min(self.bound - waited));
        self.pause = (self.pause * 2).min(SPACE_RETRY_MAX);
        self.pauses += 1;
        Ok(())
    }

    /// After the attempt that went through: says so when it had to wait.
    pub fn over(&self) {
        if let Some(started) = self.started {
            let waited = started.elapsed().as_secs_f64();
            tracing::warn!(path = %self.path.display(), waited_secs = waited, "journal space is back: the transaction goes on");
            set_status(&format!(
                "journal space is back after {waited:.1}s; serving"
            ));
        }
    }
}

/// Sets the systemd status line (`systemctl status`); a no-op outside systemd.
fn set_status(text: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(text)]);
}

/// Reads a journal file. Lines must be complete JSON entries with consecutive sequence numbers;
/// only the last line may be torn (no newline, or not parseable).
pub fn read(path: &Path) -> Result<ReadJournal, JournalError> {
    let file = File::open(path).map_err(|source| JournalError::Io {
        op: "open journal",
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let mut entries: Vec<Entry> = Vec::new();
    let mut good_len: u64 = 0;
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut torn_tail = None;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| JournalError::Io {
                op: "read journal",
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let complete = buf.last() == Some(&b'\n');
        let parsed = if complete {
            serde_json::from_slice::<Entry>(&buf[..buf.len() - 1]).ok()
        } else {
            None
        };
        match parsed {
            Some(entry) => {
                let expected = entries.last().map_or(0, |e| e.seq + 1);
                if entry.seq != expected {
                    return Err(JournalError::Corrupt {
                        path: path.to_path_buf(),
                        line: line_no,
                        reason: format!("sequence {} where {} was expected", entry.seq, expected),
                    });
                }
                entries.push(entry);
                good_len += n as u64;
            }
            None => {
                // Only the last line may be torn: peek whether anything follows.
                let mut rest = Vec::new();
                std::io::Read::read_to_end(&mut reader, &mut rest).map_err(|source| {
                    JournalError::Io {
                        op: "read journal",
                        path: path.to_path_buf(),
                        source,
                    }
                })?;
                if !rest.is_empty() {
                    return Err(JournalError::Corrupt {
                        path: path.to_path_buf(),
                        line: line_no,
                        reason: "unparseable record followed by more records".to_string(),
                    });
                }
                torn_tail = Some(String::from_utf8_lossy(&buf).into_owned());
                break;
            }
        }
    }
    Ok(ReadJournal {
        entries,
        torn_tail,
        good_len,
    })
}

/// The txids of journals still in flight (not moved to history), oldest file name first.
pub fn unfinished(state_dir: &Path) -> Result<Vec<String>, JournalError> {
    let dir = state_dir.join(JOURNAL_DIR);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::Io {
                op: "list",
                path: dir,
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| JournalError::Io {
            op: "list",
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(txid) = name.strip_suffix(".jsonl") {
            out.push(txid.to_string());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Section;

    fn start(path: &str) -> Record {
        Record::TaskStart {
            path: path.into(),
            section: Section::Block,
            name: "t".into(),
            action: "debug".into(),
        }
    }

    #[test]
    fn appends_reads_and_moves_to_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "tx1", Durability::Fsync).unwrap();
        j.append(start("0.0")).unwrap();
        let e = j.append(start("0.1")).unwrap();
        assert_eq!(e.seq, 1);
        let read = read(&journal_path(dir.path(), "tx1")).unwrap();
        assert_eq!(read.entries.len(), 2);
        assert!(read.torn_tail.is_none());
        assert_eq!(unfinished(dir.path()).unwrap(), vec!["tx1".to_string()]);
        j.finish(dir.path()).unwrap();
        assert!(unfinished(dir.path()).unwrap().is_empty());
        let hist = history_path(dir.path(), "tx1");
        assert!(hist.exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&hist).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            Journal::create(dir.path(), "tx1", Durability::None),
            Err(JournalError::Exists { .. })
        ));
    }

    /// Bytes the filesystem holds for `path` (st_blocks).
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn the_reserve_is_allocated_at_create_kept_up_and_given_back_at_finish() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "tx-r", Durability::None).unwrap();
        let path = journal_path(dir.path(), "tx-r");
        assert_eq!(fs::metadata(&path).unwrap().len(), 0, "the size is kept");
        if !j.can_reserve {
            return; // this filesystem cannot preallocate: nothing to check
        }
        assert!(allocated(&path) >= JOURNAL_RESERVE, "{}", allocated(&path));
        assert!(
            dir.path().join(HISTORY_DIR).is_dir(),
            "history/ made at create"
        );
        // Appending past half of the reserve tops it up.
        let big = "x".repeat((JOURNAL_RESERVE as usize) * 3 / 4);
        j.append(Record::TaskProgress {
            path: "0.0".into(),
            name: "t".into(),
            data: serde_json::Value::String(big),
        })
        .unwrap();
        let len = fs::metadata(&path).unwrap().len();
        assert!(
            allocated(&path) >= len + RESERVE_LOW,
            "{} for {len}",
            allocated(&path)
        );
        let hist = j.finish(dir.path()).unwrap();
        let len = fs::metadata(&hist).unwrap().len();
        assert!(
            allocated(&hist) < len + RESERVE_LOW,
            "{} for {len}",
            allocated(&hist)
        );
    }

    #[test]
    fn a_wait_for_space_is_bounded() {
        let p = Path::new("/state/journal/tx.jsonl");
        let no_space = || std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(is_no_space(&no_space()));
        assert!(!is_no_space(&std::io::Error::from(
            std::io::ErrorKind::PermissionDenied
        )));
        let bound = Duration::from_millis(300);
        let mut wait = SpaceWait::new(p, "append a record to", bound);
        let started = Instant::now();
        let err = loop {
            if let Err(e) = wait.pause(no_space()) {
                break e;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "unbounded");
        };
        assert!(started.elapsed() >= bound);
        let msg = err.to_string();
        assert!(
            msg.contains("append a record to /state/journal/tx.jsonl"),
            "{msg}"
        );
        assert!(msg.contains("no space left"), "{msg}");
    }

    #[test]
    fn torn_last_line_is_reported_and_cut_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "tx2", Durability::None).unwrap();
        j.append(start("0.0")).unwrap();
        drop(j);
        let p = journal_path(dir.path(), "tx2");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":1,\"txid\":\"tx2\",\"ti").unwrap();
        drop(f);
        let r = read(&p).unwrap();
        assert_eq!(r.entries.len(), 1);
        assert_eq!(
            r.torn_tail.as_deref(),
            Some("{\"seq\":1,\"txid\":\"tx2\",\"ti")
        );
        let mut j = Journal::reopen(dir.path(), "tx2", &r, Durability::None).unwrap();
        let e = j.append(start("0.1")).unwrap();
        assert_eq!(e.seq, 1);
        let r2 = read(&p).unwrap();
        assert_eq!(r2.entries.len(), 2);
        assert!(r2.torn_tail.is_none());
    }

    #[test]
    fn corruption_before_the_last_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "tx3", Durability::None).unwrap();
        j.append(start("0.0")).unwrap();
        drop(j);
        let p = journal_path(dir.path(), "tx3");
        let mut text = fs::read_to_string(&p).unwrap();
        text.insert_str(0, "garbage\n");
        fs::write(&p, text).unwrap();
        let err = read(&p).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
