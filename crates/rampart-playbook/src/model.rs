//! The playbook model: plays, tasks, blocks and the actions they call, as [`crate::load()`]
//! builds them; and task paths (`0.2.rescue.1` = play 0, task 2, its rescue's task 1), which the
//! journal uses to find its place again after a crash.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::schema::ModuleSchema;
use crate::yaml::Mark;

/// A whole playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    /// Its name in messages (the file's path).
    pub name: String,
    /// The plays, in order.
    pub plays: Vec<Play>,
}

/// One play.
#[derive(Debug, Clone)]
pub struct Play {
    /// Its position.
    pub index: usize,
    /// Its name (its hosts pattern when it has none).
    pub name: String,
    /// Its `hosts` pattern. The agent runs the play on its own host whatever it says; the
    /// controller uses it to pick hosts.
    pub hosts: String,
    /// `vars:`, templated when used.
    pub vars: Arc<Map<String, Value>>,
    /// `serial:` as written (number, percentage or list), for the controller.
    pub serial: Option<Value>,
    /// `max_fail_percentage:`, for the controller.
    pub max_fail_percentage: Option<f64>,
    /// `gather_facts:` (Rampart gathers facts only when this is true).
    pub gather_facts: bool,
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Where it starts.
    pub mark: Mark,
}

/// One task or block.
#[derive(Debug, Clone)]
pub struct Task {
    /// Stable position in the playbook.
    pub path: String,
    /// `name:` as written (may hold a template).
    pub name: Option<String>,
    /// Where it starts.
    pub mark: Mark,
    /// `when:` conditions, all of which must hold.
    pub when: Vec<Value>,
    /// `vars:`, templated when used.
    pub vars: Option<Arc<Map<String, Value>>>,
    /// `ignore_errors:` (a boolean or a template).
    pub ignore_errors: Option<Value>,
    /// `no_log:` (a boolean or a template).
    pub no_log: Option<Value>,
    /// `check_mode:` (a boolean or a template).
    pub check_mode: Option<Value>,
    /// A module call or a block.
    pub kind: TaskKind,
}

/// What a task does.
#[derive(Debug, Clone)]
pub enum TaskKind {
    /// Runs a module.
    Action(Box<Action>),
    /// Groups tasks with `rescue` and `always`.
    Block(Block),
}

/// A module call and the keywords that only module calls take.
#[derive(Debug, Clone)]
pub struct Action {
    /// The module.
    pub module: &'static ModuleSchema,
    /// The module's name as written (`ansible.builtin.command`).
    pub action: String,
    /// Arguments as written (canonical names; `_raw_params` for free-form text).
    pub args: Map<String, Value>,
    /// `register:`.
    pub register: Option<String>,
    /// `loop:` (a list or a template giving one).
    pub loop_items: Option<Value>,
    /// `loop_control.loop_var` (default `item`).
    pub loop_var: String,
    /// `loop_control.index_var`.
    pub index_var: Option<String>,
    /// `until:` conditions.
    pub until: Vec<Value>,
    /// `retries:` (default 3 when `until` is given).
    pub retries: Option<Value>,
    /// `delay:` seconds (default 5).
    pub delay: Option<Value>,
    /// `failed_when:` conditions, replacing the module's own failure test.
    pub failed_when: Option<Vec<Value>>,
    /// `changed_when:` conditions, replacing the module's own change test.
    pub changed_when: Option<Vec<Value>>,
}

/// `block` / `rescue` / `always`.
#[derive(Debug, Clone)]
pub struct Block {
    /// Tasks tried first.
    pub block: Vec<Task>,
    /// Tasks run when a `block` task failed.
    pub rescue: Vec<Task>,
    /// Tasks run whatever happened.
    pub always: Vec<Task>,
}

impl Task {
    /// The module's name, or `block`.
    pub fn action_name(&self) -> &str {
        match &self.kind {
            TaskKind::Action(a) => &a.action,
            TaskKind::Block(_) => "block",
        }
    }
}

/// The outermost `rescue` or `always` section containing a task path, as a path prefix
/// (`0.2.rescue`), if any. Recovery reruns that whole section.
pub fn outermost_cleanup_section(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('.').collect();
    segs.iter()
        .position(|s| *s == "rescue" || *s == "always")
        .map(|i| segs[..=i].join("."))
}

/// The section a task path runs in.
pub fn section_of(path: &str) -> Section {
    match path.split('.').rev().nth(1) {
        Some("rescue") => Section::Rescue,
        Some("always") => Section::Always,
        _ => Section::Block,
    }
}

/// Where a task sits in its enclosing block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// A play's `tasks` or a `block` list.
    Block,
    /// A `rescue` list.
    Rescue,
    /// An `always` list.
    Always,
}

impl Section {
    /// The lowercase name used in journals and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Block => "block",
            Section::Rescue => "rescue",
            Section::Always => "always",
        }
    }
}
