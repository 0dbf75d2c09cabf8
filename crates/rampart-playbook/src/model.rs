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
    /// The plays, in order (those of `import_playbook` in its place).
    pub plays: Vec<Play>,
    /// Every other file the playbook brought in (task files, roles' files, vars files,
    /// imported playbooks), as the loader's reader was asked for them.
    pub files: Vec<String>,
    /// The directories of the roles it uses (their `templates/` and `files/` are read when a
    /// task runs).
    pub role_dirs: Vec<String>,
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
    /// The variables of `vars_files:`, merged in order (above play vars).
    pub vars_files: Arc<Map<String, Value>>,
    /// `serial:` as written (number, percentage or list), for the controller.
    pub serial: Option<Value>,
    /// `max_fail_percentage:`, for the controller.
    pub max_fail_percentage: Option<f64>,
    /// `gather_facts:` (Rampart gathers facts only when this is true).
    pub gather_facts: bool,
    /// `pre_tasks:`, run before the roles; handlers are flushed after them.
    pub pre_tasks: Vec<Task>,
    /// The roles of `roles:` (each one a block of its tasks) followed by `tasks:`; handlers are
    /// flushed after them.
    pub tasks: Vec<Task>,
    /// `post_tasks:`, run last; handlers are flushed after them.
    pub post_tasks: Vec<Task>,
    /// `handlers:` of the play and of every role it uses, in the order Ansible runs them.
    pub handlers: Vec<Handler>,
    /// `force_handlers:`: a failed host still runs the handlers it notified.
    pub force_handlers: bool,
    /// Where it starts.
    pub mark: Mark,
}

/// A handler: a task that runs at a flush point when a changed task notified it.
#[derive(Debug, Clone)]
pub struct Handler {
    /// The task it runs (its path is `<play>.handlers.<i>`).
    pub task: Task,
    /// Its name, as `notify:` refers to it.
    pub name: String,
    /// `listen:` topics it also answers to.
    pub listen: Vec<String>,
}

/// A role as a task sees it: where its files are, and its variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    /// Its name.
    pub name: String,
    /// Its directory, relative to the playbook's (or absolute, from `roles_path`).
    pub dir: String,
    /// `defaults/main.yml`: the lowest precedence of all.
    pub defaults: Arc<Map<String, Value>>,
    /// `vars/main.yml`: above play vars and `vars_files`, below block and task vars.
    pub vars: Arc<Map<String, Value>>,
    /// Role parameters (`roles: [{role: x, port: 80}]`, `include_role` `vars:`): above
    /// `set_fact`, below extra vars.
    pub params: Arc<Map<String, Value>>,
}

/// One task or block.
#[derive(Debug, Clone)]
pub struct Task {
    /// Stable position in the playbook.
    pub path: String,
    /// The file it is written in (the playbook's name, or an included file's path).
    pub file: String,
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
    /// Its tags and those it inherits (from its blocks, role and static imports).
    pub tags: Vec<String>,
    /// `become_user:` (with `become: true`): the user its commands run as.
    pub become_user: Option<String>,
    /// The role it belongs to, if any (for its variables and its `templates/` and `files/`).
    pub role: Option<Arc<Role>>,
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
    /// `include_tasks` / `include_role`: tasks read when the playbook was loaded, run when the
    /// include is reached, once per `loop` item.
    Include(Box<Include>),
    /// `meta:` (`flush_handlers`, `noop`, `end_play`, `end_host`).
    Meta(Meta),
}

/// A dynamic include.
#[derive(Debug, Clone)]
pub struct Include {
    /// `include_tasks` or `include_role`, as written.
    pub action: String,
    /// The file or role it includes, for messages.
    pub target: String,
    /// The included tasks (paths `<include>.inc.<i>`).
    pub tasks: Vec<Task>,
    /// `loop:`.
    pub loop_items: Option<Value>,
    /// `loop_control.loop_var` (default `item`).
    pub loop_var: String,
    /// `loop_control.index_var`.
    pub index_var: Option<String>,
    /// `vars:` of the include: include parameters, above `set_fact`.
    pub params: Arc<Map<String, Value>>,
}

/// A `meta:` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    /// Runs the notified handlers now.
    FlushHandlers,
    /// Does nothing.
    Noop,
    /// Ends the play (on one host, the same as `end_host`).
    EndPlay,
    /// Ends the play for this host.
    EndHost,
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
    /// `notify:` handler names or `listen` topics, told when the task changed something.
    pub notify: Vec<String>,
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

impl Handler {
    /// Whether `notify: <n>` reaches this handler (its name or one of its topics).
    pub fn answers(&self, n: &str) -> bool {
        self.name == n || self.listen.iter().any(|l| l == n)
    }
}

impl Task {
    /// The module's name, or `block`.
    pub fn action_name(&self) -> &str {
        match &self.kind {
            TaskKind::Action(a) => &a.action,
            TaskKind::Block(_) => "block",
            TaskKind::Include(i) => &i.action,
            TaskKind::Meta(_) => "meta",
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

/// The section a task path runs in: that of the innermost `block`, `rescue` or `always` list
/// holding it (an included task runs in the section of its include).
pub fn section_of(path: &str) -> Section {
    let mut segs = path.split('.').rev().skip(1);
    match segs.find(|s| matches!(*s, "block" | "rescue" | "always")) {
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
