//! The records of a transaction: what the journal stores, what clients are streamed, what the
//! CLI prints.
//!
//! One type serves all three so a replayed journal and a live run look the same to a client. Each
//! record is one JSON line in `journal/<txid>.jsonl`, with a sequence number that grows by one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use rampart_playbook::Section;

/// How one task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Succeeded, changed nothing.
    Ok,
    /// Succeeded, changed something.
    Changed,
    /// Failed.
    Failed,
    /// Not run (`when` false, or check mode).
    Skipped,
    /// Failed with `ignore_errors`.
    Ignored,
}

impl TaskStatus {
    /// The lowercase name used in journals and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Ok => "ok",
            TaskStatus::Changed => "changed",
            TaskStatus::Failed => "failed",
            TaskStatus::Skipped => "skipped",
            TaskStatus::Ignored => "ignored",
        }
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every task succeeded (ignored failures aside).
    Succeeded,
    /// A failure was rescued: the host is back where it was.
    RolledBack,
    /// A rescue failed: CRITICAL, a person must look.
    RollbackFailed,
    /// A failure no rescue covered.
    Failed,
    /// Check mode ran to the end without failure.
    CheckOnly,
}

impl Outcome {
    /// The lowercase name used in journals and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled_back",
            Outcome::RollbackFailed => "rollback_failed",
            Outcome::Failed => "failed",
            Outcome::CheckOnly => "check_only",
        }
    }
}

/// Ansible's PLAY RECAP counters for the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recap {
    /// Tasks that succeeded, changed or not, ignored failures included.
    pub ok: u32,
    /// Tasks that changed something.
    pub changed: u32,
    /// 1 when the host failed.
    pub failed: u32,
    /// Tasks skipped.
    pub skipped: u32,
    /// Rescue sections that ran.
    pub rescued: u32,
    /// Failures ignored.
    pub ignored: u32,
}

impl Recap {
    /// Counts one finished task as Ansible's recap does: `ok` for every success (an ignored
    /// failure included), `changed` for those whose result says so, a failure in neither (the
    /// host's `failed` and the `rescued` count are the engine's to set).
    pub fn count(&mut self, status: TaskStatus, result: &Value) {
        let changed = result.get("changed").and_then(Value::as_bool) == Some(true);
        match status {
            TaskStatus::Ok => self.ok += 1,
            TaskStatus::Changed => {
                self.ok += 1;
                self.changed += 1;
            }
            TaskStatus::Skipped => self.skipped += 1,
            TaskStatus::Ignored => {
                self.ok += 1;
                self.ignored += 1;
                self.changed += u32::from(changed);
            }
            TaskStatus::Failed => {}
        }
    }
}

/// How a run was asked to go beyond its playbook and variables: tag selection, handlers,
/// diffs and where roles are found. Journaled with the `Begin` record, so a recovery runs the
/// same selection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFlags {
    /// `--tags`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// `--skip-tags`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_tags: Vec<String>,
    /// `--force-handlers`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_handlers: bool,
    /// `--diff`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diff: bool,
    /// Directories searched for roles after `roles/` (local runs only; a bundle sent to an
    /// agent has its roles under `roles/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles_path: Vec<String>,
    /// A run against an inventory (`rampart run -i`): which host of it this is, and what
    /// `groups` and `hostvars` show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<InventoryView>,
}

pub use rampart_playbook::inventory::{InventoryView, MAX_INVENTORY_VIEW};

impl RunFlags {
    /// Whether nothing was asked beyond the defaults.
    pub fn is_default(&self) -> bool {
        *self == RunFlags::default()
    }
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// First record: everything needed to finish the transaction with no client connected.
    Begin {
        /// The playbook's name (its path on the caller's side).
        playbook_name: String,
        /// The playbook's YAML text.
        playbook: String,
        /// Extra variables.
        vars: Map<String, Value>,
        /// Check mode.
        check: bool,
        /// The host's name.
        host: String,
        /// The agent's pid.
        pid: u32,
        /// Where relative `src` paths are found (the playbook's directory, for local runs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_dir: Option<std::path::PathBuf>,
        /// Tags, handlers, diff and where roles are found, as asked.
        #[serde(default, skip_serializing_if = "RunFlags::is_default")]
        flags: RunFlags,
    },
    /// A play began.
    PlayStart {
        /// Position of the play.
        index: usize,
        /// Its name.
        name: String,
    },
    /// A task is about to run.
    TaskStart {
        /// Stable position of the task in the playbook.
        path: String,
        /// Section it runs in.
        section: Section,
        /// Its (templated) name.
        name: String,
        /// Its module.
        action: String,
    },
    /// An `until` condition failed; the task runs again.
    TaskRetry {
        /// Stable position of the task.
        path: String,
        /// Its name.
        name: String,
        /// Retries still allowed.
        retries_left: u32,
        /// The attempt's result.
        result: Value,
    },
    /// A running task's module reported progress (one health check's result, ...).
    TaskProgress {
        /// Stable position of the task.
        path: String,
        /// Its name.
        name: String,
        /// What the module reported.
        data: Value,
    },
    /// A task finished.
    TaskEnd {
        /// Stable position of the task.
        path: String,
        /// Section it ran in.
        section: Section,
        /// Its name.
        name: String,
        /// Its module.
        action: String,
        /// How it ended.
        status: TaskStatus,
        /// The module's result (censored under `no_log`).
        result: Value,
        /// How long it took.
        duration_ms: u64,
        /// Under `no_log`, the uncensored result, kept in the host's journal only so a recovery
        /// registers the same values; never sent to clients.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        private_result: Option<Value>,
    },
    /// The agent restarted and is finishing this transaction.
    Recovery {
        /// The task in flight (or last journaled) when the agent stopped.
        interrupted_path: Option<String>,
        /// The section it was in.
        interrupted_section: Option<Section>,
        /// `rescue`, `rerun_rescue`, `rerun_always` or `finish`.
        action: String,
        /// The path prefix of the section run again, for `rerun_*`.
        rerun_section: Option<String>,
        /// Text of a torn last line, if the crash cut a write short.
        torn_tail: Option<String>,
        /// The recovering agent's pid.
        pid: u32,
    },
    /// Last record.
    End {
        /// How it ended.
        outcome: Outcome,
        /// The counters.
        recap: Recap,
        /// Whether the agent finished it after a restart.
        recovered: bool,
    },
}

/// A record with its place and time in the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the transaction, from 0.
    pub seq: u64,
    /// The transaction id.
    pub txid: String,
    /// When it was journaled, RFC 3339 with microseconds.
    pub time: String,
    /// What happened.
    #[serde(flatten)]
    pub record: Record,
}
