//! One transaction from request to history: validate, lock, journal, run, finish; and recovery
//! of interrupted transactions at start-up.
//!
//! Inputs: a [`TxRequest`] (playbook text, vars, check mode) and the host's [`HostConfig`].
//! Outputs: journal entries handed to the caller as they are written, and a [`TxSummary`].
//! Used in-process by `rampart run --local` and by the agent's gRPC server alike.
//!
//! A journal that cannot be written fails the run with [`TxError::Journal`] only after its
//! bounded wait for free space (see [`crate::journal`], "A full disk"); the transaction is then
//! unfinished, and the agent exits so that its restart recovers it. Recovery waits for space in
//! the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::engine::{Engine, EngineOptions, Replay, Sink};
use crate::error::{JournalError, LockError, TxError};
use crate::event::{Entry, Outcome, Recap, Record, RunFlags};
use crate::journal::{self, Durability, Journal, SpaceWait};
use crate::lock::HostLock;
use crate::recovery;
use rampart_playbook::Playbook;
use rampart_playbook::template::Templar;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rampart";
/// Default wait for the host lock.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// Lock wait during start-up recovery: a live holder would be another agent on the same state dir.
const RECOVERY_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how a host keeps its transactions.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The state directory (journal, history, lock).
    pub state_dir: PathBuf,
    /// Whether journal records are fsync'd.
    pub durability: Durability,
    /// The host's name.
    pub hostname: String,
    /// Test hook: stop this process (SIGSTOP) right after journal record number N is written (and
    /// synced, when the journal syncs it), so a crash test can SIGKILL the agent at an exact point.
    /// Never set in production.
    pub stop_after_record: Option<u64>,
    /// How long a journal write that finds no free space retries before it fails (see
    /// [`crate::journal`], "A full disk").
    pub journal_space_wait: Duration,
}

impl HostConfig {
    /// A configuration with fsync'd journals and this machine's hostname.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        HostConfig {
            state_dir: state_dir.into(),
            durability: Durability::Fsync,
            hostname: hostname(),
            stop_after_record: None,
            journal_space_wait: journal::DEFAULT_SPACE_WAIT,
        }
    }
}

pub use rampart_host::facts::hostname;

/// A request to run a playbook.
#[derive(Debug, Clone)]
pub struct TxRequest {
    /// The txid; `None` lets the host choose.
    pub txid: Option<String>,
    /// The playbook's name in messages.
    pub playbook_name: String,
    /// Its YAML text.
    pub playbook: String,
    /// Extra variables.
    pub vars: Map<String, Value>,
    /// Check mode.
    pub check: bool,
    /// Where relative `src` paths and included files are found.
    pub base_dir: Option<PathBuf>,
    /// Tags, handlers, diff, roles path.
    pub flags: RunFlags,
    /// The playbook's other files (task files, roles, vars files, templates), by path relative
    /// to the playbook's directory, when they come with the request (from a controller or
    /// `rampart run --agent`): written under the state directory before the journal begins,
    /// and that directory is the run's `base_dir`.
    pub files: Vec<(String, Vec<u8>)>,
    /// How long to wait for the host lock.
    pub lock_timeout: Duration,
}

/// Where a transaction's shipped files are kept while it runs (and for its recovery).
pub fn bundle_dir(state_dir: &Path, txid: &str) -> PathBuf {
    state_dir.join("bundles").join(txid)
}

/// Loads a playbook and the files it brings in from `base_dir` (or the current directory).
pub fn load_playbook(
    name: &str,
    text: &str,
    templar: &Templar,
    base_dir: Option<&Path>,
    flags: &RunFlags,
) -> Result<Playbook, rampart_playbook::PlaybookError> {
    let read = |p: &str| rampart_host::bundle::read_text(base_dir, p);
    let opts = rampart_playbook::LoadOptions {
        read: &read,
        roles_path: flags.roles_path.clone(),
    };
    rampart_playbook::load_tree(name, text, templar, &opts)
}

/// Refuses an inventory view that does not hold together, or a play whose literal `hosts`
/// pattern does not evaluate against it, before anything runs.
pub fn check_inventory(
    view: &crate::event::InventoryView,
    playbook: &Playbook,
) -> Result<(), String> {
    view.validate()?;
    let all = view
        .groups
        .get("all")
        .map(Vec::as_slice)
        .unwrap_or_default();
    for play in &playbook.plays {
        if play.hosts.contains("{{") {
            continue;
        }
        rampart_playbook::inventory::select(&play.hosts, all, &view.groups)
            .map_err(|e| format!("play {:?}: hosts {:?}: {e}", play.name, play.hosts))?;
    }
    Ok(())
}

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxSummary {
    /// Its id.
    pub txid: String,
    /// Its outcome.
    pub outcome: Outcome,
    /// Its counters.
    pub recap: Recap,
    /// Whether it was finished by recovery.
    pub recovered: bool,
}

/// A validated, locked, journaled transaction ready to run.
#[derive(Debug)]
pub struct Prepared {
    txid: String,
    playbook: Playbook,
    vars: Map<String, Value>,
    check: bool,
    base_dir: Option<PathBuf>,
    flags: RunFlags,
    journal: Journal,
    lock: HostLock,
    replay: Option<Replay>,
    recovered: bool,
    /// Entries written while preparing (the `Begin` record), for the caller to publish.
    pub initial: Vec<Entry>,
}

impl Prepared {
    /// The transaction id.
    pub fn txid(&self) -> &str {
        &self.txid
    }
}

struct JournalSink<'a> {
    journal: &'a mut Journal,
    on_entry: &'a mut dyn FnMut(&Entry),
    stop_after: Option<u64>,
}

impl Sink for JournalSink<'_> {
    fn record(&mut self, record: Record) -> Result<(), JournalError> {
        let entry = self.journal.append(record)?;
        (self.on_entry)(&entry);
        stop_hook(self.stop_after, entry.seq);
        Ok(())
    }
}

/// The crash tests' hook: SIGSTOP this process once record `seq` is written.
fn stop_hook(stop_after: Option<u64>, seq: u64) {
    if stop_after == Some(seq) {
        tracing::warn!(seq, "test hook: stopping after journal record");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

pub use rampart_rpc::ids::new_txid;

/// Checks a client-chosen txid: it names files, so only `[A-Za-z0-9._-]`, 1 to 64 long.
pub fn check_txid(txid: &str) -> Result<(), TxError> {
    let ok = !txid.is_empty()
        && txid.len() <= 64
        && !txid.starts_with('.')
        && txid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(TxError::Request(format!(
            "txid `{txid}` is not valid: use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with .)"
        )))
    }
}

/// Validates the request, takes the host lock and writes the `Begin` record. Nothing on the host
/// changes if this fails.
pub fn prepare(
    host: &HostConfig,
    templar: &Templar,
    mut req: TxRequest,
) -> Result<Prepared, TxError> {
    let txid = match req.txid.take() {
        Some(t) => {
            check_txid(&t)?;
            t
        }
        None => new_txid(),
    };
    if !req.files.is_empty() {
        let dir = bundle_dir(&host.state_dir, &txid);
        if journal::journal_path(&host.state_dir, &txid).exists()
            || journal::history_path(&host.state_dir, &txid).exists()
        {
            return Err(JournalError::Exists { txid }.into());
        }
        rampart_host::bundle::write(&dir, &req.files).map_err(|e| {
            TxError::Request(format!(
                "cannot store the playbook's files in {}: {e}",
                dir.display()
            ))
        })?;
        req.base_dir = Some(dir);
    }
    let playbook = load_playbook(
        &req.playbook_name,
        &req.playbook,
        templar,
        req.base_dir.as_deref(),
        &req.flags,
    )?;
    if let Some(view) = &req.flags.inventory {
        check_inventory(view, &playbook).map_err(TxError::Request)?;
    }
    std::fs::create_dir_all(&host.state_dir).map_err(|source| JournalError::Io {
        op: "create state directory",
        path: host.state_dir.clone(),
        source,
    })?;
    // A reused txid is refused before waiting for the lock (its owner may hold it); the check is
    // repeated under the lock by `Journal::create`, which is what makes it race-free.
    if journal::journal_path(&host.state_dir, &txid).exists()
        || journal::history_path(&host.state_dir, &txid).exists()
    {
        return Err(JournalError::Exists { txid }.into());
    }
    let lock = HostLock::acquire(&host.state_dir, &txid, req.lock_timeout)?;
    let mut journal = Journal::create(&host.state_dir, &txid, host.durability)?
        .with_space_wait(host.journal_space_wait);
    let begin = journal
        .append(Record::Begin {
            playbook_name: req.playbook_name.clone(),
            playbook: req.playbook,
            vars: req.vars.clone(),
            check: req.check,
            // A run against an inventory is that host's, whatever the machine is called.
            host: match &req.flags.inventory {
                Some(view) => view.host.clone(),
                None => host.hostname.clone(),
            },
            pid: std::process::id(),
            base_dir: req.base_dir.clone(),
            flags: req.flags.clone(),
        })
        .inspect_err(|_| {
            // Nothing ran: no journal is left for a recovery to find.
            let _ = std::fs::remove_file(journal::journal_path(&host.state_dir, &txid));
        })?;
    Ok(Prepared {
        txid,
        playbook,
        vars: req.vars,
        check: req.check,
        base_dir: req.base_dir,
        flags: req.flags,
        journal,
        lock,
        replay: None,
        recovered: false,
        initial: vec![begin],
    })
}

/// Runs a prepared transaction to its end, hands every entry to `on_entry`, moves the journal to
/// history and releases the lock.
pub fn execute(
    host: &HostConfig,
    templar: &Arc<Templar>,
    mut tx: Prepared,
    on_entry: &mut dyn FnMut(&Entry),
) -> Result<TxSummary, TxError> {
    let result = run_engine(host, templar, &mut tx, on_entry)?;
    let end = tx.journal.append(Record::End {
        outcome: result.outcome,
        recap: result.recap,
        recovered: tx.recovered,
    })?;
    // Stopped before a client is streamed the `end` (and may exit): a crash test then always
    // finds the agent stopped, never a finished client beside a journal left in flight.
    stop_hook(host.stop_after_record, end.seq);
    on_entry(&end);
    tx.journal.finish(&host.state_dir)?;
    // The shipped files served the run (and would have served its recovery); the journal in
    // history keeps what happened.
    let bundle = bundle_dir(&host.state_dir, &tx.txid);
    if tx.base_dir.as_deref() == Some(bundle.as_path()) {
        let _ = std::fs::remove_dir_all(&bundle);
    }
    drop(tx.lock);
    Ok(TxSummary {
        txid: tx.txid,
        outcome: result.outcome,
        recap: result.recap,
        recovered: tx.recovered,
    })
}

/// Runs the engine over a prepared transaction, journaling every record.
fn run_engine(
    host: &HostConfig,
    templar: &Arc<Templar>,
    tx: &mut Prepared,
    on_entry: &mut dyn FnMut(&Entry),
) -> Result<crate::engine::RunResult, JournalError> {
    let opts = EngineOptions {
        check: tx.check,
        host: host.hostname.clone(),
        txid: tx.txid.clone(),
        base_dir: tx.base_dir.clone(),
        state_dir: host.state_dir.clone(),
        tags: crate::engine::TagFilter {
            only: tx.flags.tags.clone(),
            skip: tx.flags.skip_tags.clone(),
        },
        force_handlers: tx.flags.force_handlers,
        diff: tx.flags.diff,
        inventory: tx.flags.inventory.clone().map(Arc::new),
    };
    let mut sink = JournalSink {
        journal: &mut tx.journal,
        on_entry,
        stop_after: host.stop_after_record,
    };
    let engine = Engine::new(
        &tx.playbook,
        templar.clone(),
        opts,
        &tx.vars,
        &mut sink,
        tx.replay.take(),
    );
    engine.run()
}

/// Prepares the recovery of one unfinished transaction: reads its journal, takes the lock,
/// journals the `Recovery` record. Returns `None` when only the move to history was left (done).
pub fn prepare_recovery(
    host: &HostConfig,
    templar: &Templar,
    txid: &str,
) -> Result<Option<Prepared>, TxError> {
    let path = journal::journal_path(&host.state_dir, txid);
    let lock = HostLock::acquire(&host.state_dir, txid, RECOVERY_LOCK_TIMEOUT)?;
    let read = journal::read(&path)?;
    let Some(first) = read.entries.first() else {
        // The crash came before the Begin record was durable: nothing ran.
        std::fs::remove_file(&path).map_err(|source| JournalError::Io {
            op: "remove empty journal",
            path: path.clone(),
            source,
        })?;
        return Ok(None);
    };
    let Record::Begin {
        playbook_name,
        playbook: text,
        vars,
        check,
        base_dir,
        flags,
        ..
    } = &first.record
    else {
        return Err(JournalError::Corrupt {
            path,
            line: 1,
            reason: "the first record is not `begin`".into(),
        }
        .into());
    };
    let plan = recovery::plan(&read.entries, read.torn_tail.clone(), std::process::id());
    let mut journal = Journal::reopen(&host.state_dir, txid, &read, host.durability)?
        .with_space_wait(host.journal_space_wait);
    if plan.already_finished {
        journal.finish(&host.state_dir)?;
        drop(lock);
        return Ok(None);
    }
    let playbook = load_playbook(playbook_name, text, templar, base_dir.as_deref(), flags)?;
    let rec = journal.append(plan.record)?;
    Ok(Some(Prepared {
        txid: txid.to_string(),
        playbook,
        vars: vars.clone(),
        check: *check,
        base_dir: base_dir.clone(),
        flags: flags.clone(),
        journal,
        lock,
        replay: Some(plan.replay),
        recovered: true,
        initial: vec![rec],
    }))
}

/// Finishes every interrupted transaction in the state dir, oldest first.
pub fn recover_all(
    host: &HostConfig,
    templar: &Arc<Templar>,
    on_entry: &mut dyn FnMut(&Entry),
) -> Result<Vec<TxSummary>, TxError> {
    let mut done = Vec::new();
    for stale in rampart_host::cas::remove_stale_uploads(&host.state_dir) {
        tracing::warn!(path = %stale.display(), "removed the partial upload of a process that is gone");
    }
    let lock_path = host.state_dir.join(crate::lock::LOCK_FILE);
    for txid in journal::unfinished(&host.state_dir)? {
        tracing::warn!(%txid, "finishing interrupted transaction");
        // Taking the host lock writes its holder record: on a full disk that waits for space
        // as a journal write does (the journal's own writes wait inside `Journal`).
        let mut wait = SpaceWait::new(&lock_path, "take the host lock in", host.journal_space_wait);
        let prepared = loop {
            match prepare_recovery(host, templar, &txid) {
                Err(TxError::Lock(LockError::Io { source, .. }))
                    if journal::is_no_space(&source) =>
                {
                    wait.pause(source)?;
                }
                other => break other?,
            }
        };
        wait.over();
        if let Some(tx) = prepared {
            for e in &tx.initial {
                on_entry(e);
            }
            let summary = execute(host, templar, tx, on_entry)?;
            tracing::warn!(%txid, outcome = summary.outcome.as_str(), "interrupted transaction finished");
            done.push(summary);
        }
    }
    Ok(done)
}

/// Reads a transaction's entries, whether it is in flight or in history. The journal may move to
/// history while this looks, so history is looked at again after the in-flight path.
pub fn read_entries(host: &HostConfig, txid: &str) -> Result<Option<Vec<Entry>>, TxError> {
    check_txid(txid)?;
    let hist = journal::history_path(&host.state_dir, txid);
    let live = journal::journal_path(&host.state_dir, txid);
    for path in [&hist, &live, &hist] {
        match journal::read(path) {
            Ok(read) => return Ok(Some(read.entries)),
            Err(JournalError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `tasks` (the task list of one play) as a transaction with an fsync'd journal; returns
    /// the journal's fdatasyncs of records, `begin` and the `end` record aside.
    fn syncs_during_run(tasks: &str) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let host = HostConfig {
            state_dir: dir.path().to_path_buf(),
            durability: Durability::Fsync,
            hostname: "h01".into(),
            stop_after_record: None,
            journal_space_wait: Duration::from_secs(1),
        };
        let templar = Arc::new(Templar::new());
        let playbook = format!("- hosts: all\n  gather_facts: false\n  tasks:\n{tasks}");
        let req = TxRequest {
            txid: Some("tx-syncs".into()),
            playbook_name: "syncs.yml".into(),
            playbook,
            vars: Map::new(),
            check: false,
            base_dir: None,
            flags: RunFlags::default(),
            files: Vec::new(),
            lock_timeout: Duration::from_secs(5),
        };
        let mut tx = prepare(&host, &templar, req).unwrap();
        assert_eq!(tx.journal.syncs(), 1, "the begin record is synced");
        let result = run_engine(&host, &templar, &mut tx, &mut |_| {}).unwrap();
        assert_ne!(result.outcome, Outcome::Failed);
        tx.journal.syncs() - 1
    }

    fn set_facts(n: usize) -> String {
        (0..n)
            .map(|i| format!("    - name: fact {i}\n      set_fact:\n        f{i}: {i}\n"))
            .collect()
    }

    #[test]
    fn a_task_costs_one_fdatasync() {
        // play_start, then the first task's start (synced: it follows play_start) and its end.
        assert_eq!(syncs_during_run(&set_facts(1)), 3);
        // Every further task: its end only.
        assert_eq!(syncs_during_run(&set_facts(11)), 3 + 10);
        // Whatever the module or the outcome: a skipped task, a command, a debug.
        let mixed = set_facts(1)
            + "    - name: skipped\n      debug:\n        msg: x\n      when: false\n"
            + "    - name: true\n      command: /bin/true\n"
            + "    - name: say\n      debug:\n        msg: hi\n";
        assert_eq!(syncs_during_run(&mixed), 3 + 3);
        // A loop reports each item (a progress record, not synced) and still ends once.
        let looped = set_facts(1)
            + "    - name: each\n      debug:\n        msg: x\n      loop: [1, 2, 3, 4]\n";
        assert_eq!(syncs_during_run(&looped), 3 + 1);
    }

    #[test]
    fn a_task_start_is_synced_where_its_loss_would_change_recovery() {
        // block: b0 b1 (fails) | rescue: r0 r1 | always: a0, then t after the block.
        // Unsynced starts: b1 (after b0), r1 (after r0). Synced: b0 (after play_start), r0, a0
        // and t (each after a task in another place).
        let tasks = "    - block:
        - name: b0
          debug: {msg: x}
        - name: b1
          fail: {msg: down}
      rescue:
        - name: r0
          debug: {msg: x}
        - name: r1
          debug: {msg: x}
      always:
        - name: a0
          debug: {msg: x}
    - name: t
      debug: {msg: x}
";
        let records = 1 + 6 * 2; // play_start, six tasks
        assert_eq!(syncs_during_run(tasks), records - 2);
    }

    #[test]
    fn start_sync_rule() {
        use crate::journal::start_needs_sync;
        assert!(start_needs_sync(None, "0.0"));
        assert!(!start_needs_sync(Some("0.0"), "0.1"));
        assert!(!start_needs_sync(
            Some("0.0.block.0.block.1"),
            "0.0.block.1"
        ));
        assert!(!start_needs_sync(
            Some("0.0.rescue.0"),
            "0.0.rescue.1.block.0"
        ));
        assert!(start_needs_sync(Some("0.0.block.1"), "0.0.rescue.0"));
        assert!(start_needs_sync(
            Some("0.0.block.0.rescue.1"),
            "0.0.block.1"
        ));
        assert!(start_needs_sync(
            Some("0.0.block.0.always.0"),
            "0.0.block.1"
        ));
        assert!(start_needs_sync(Some("0.0.rescue.1"), "0.0.always.0"));
    }
}
