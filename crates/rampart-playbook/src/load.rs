//! The playbook model: plays, tasks and blocks as Ansible writes them, validated whole before
//! anything runs.
//!
//! Input: YAML text and a name for messages. Output: a [`Playbook`] whose every task has a
//! resolved module with known arguments and whose every template compiles, or the first
//! [`PlaybookError`] with `file:line:column` and what to do. Each task gets a stable `path`
//! (`0.2.rescue.1` = play 0, task 2, its rescue's task 1) that the journal uses to find its place
//! again after a crash.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::PlaybookError;
use crate::model::{Action, Block, Handler, Include, Meta, Play, Playbook, Role, Task, TaskKind};
use crate::modules;
use crate::schema::{self, ArgKind, FreeForm, ModuleSchema};
use crate::template::{Templar, is_template};
use crate::yaml::{self, Limits, Mark, Node, Yaml, YamlError};

const PLAY_KEYS: &[&str] = &[
    "name",
    "hosts",
    "vars",
    "vars_files",
    "serial",
    "max_fail_percentage",
    "gather_facts",
    "pre_tasks",
    "roles",
    "tasks",
    "post_tasks",
    "handlers",
    "force_handlers",
    "tags",
    "become",
    "become_user",
];
const TASK_KEYS: &[&str] = &[
    "name",
    "when",
    "register",
    "loop",
    "loop_control",
    "until",
    "retries",
    "delay",
    "failed_when",
    "changed_when",
    "ignore_errors",
    "check_mode",
    "vars",
    "no_log",
    "args",
    "tags",
    "notify",
    "become",
    "become_user",
    "delegate_to",
    "run_once",
];
const BLOCK_KEYS: &[&str] = &[
    "name",
    "block",
    "rescue",
    "always",
    "when",
    "vars",
    "ignore_errors",
    "check_mode",
    "no_log",
    "tags",
    "become",
    "become_user",
];
const LOOP_CONTROL_KEYS: &[&str] = &["loop_var", "index_var", "label"];
/// Keywords that bring in other files.
const INCLUDE_KEYS: &[&str] = &[
    "include_tasks",
    "import_tasks",
    "include_role",
    "import_role",
];
/// Most files one playbook may bring in (task files, roles' files, vars files).
pub const MAX_FILES: usize = 2000;
/// Most bytes of YAML one playbook may bring in, all files together.
pub const MAX_TOTAL_BYTES: usize = 32 << 20;
/// Deepest nesting of includes and role dependencies (a cycle ends here with an error).
const MAX_INCLUDE_DEPTH: usize = 24;

/// Reads a file a playbook refers to, by the path the loader resolved (relative to the
/// playbook's directory, or absolute for a `roles_path` entry): `Ok(None)` when it does not
/// exist, `Err` when it cannot be read.
pub type ReadFile<'r> = dyn Fn(&str) -> Result<Option<String>, String> + 'r;

/// What the loader needs beyond the playbook's own text: a way to read the files it includes,
/// and where roles are found.
pub struct LoadOptions<'r> {
    /// Reads included files; the loader itself does no I/O.
    pub read: &'r ReadFile<'r>,
    /// Directories searched for roles after the playbook's own `roles/` (Ansible's
    /// `roles_path`), absolute or relative to the playbook's directory.
    pub roles_path: Vec<String>,
}

impl std::fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("roles_path", &self.roles_path)
            .finish_non_exhaustive()
    }
}

/// What the whole load shares: the templar, the file reader and what has been read.
struct Ctx<'a> {
    opts: Option<&'a LoadOptions<'a>>,
    /// Every file read, in order, without repeats.
    files: RefCell<Vec<String>>,
    /// Every role directory used.
    role_dirs: RefCell<Vec<String>>,
    bytes: Cell<usize>,
    /// The play being loaded: its index, its handlers so far, the roles it already ran.
    play: Cell<usize>,
    handlers: RefCell<Vec<Handler>>,
    roles_applied: RefCell<Vec<(String, Value)>>,
}

/// What a task inherits from the blocks, roles and imports around it.
#[derive(Debug, Clone, Default)]
struct Inherit {
    tags: Vec<String>,
    become_user: Option<String>,
    role: Option<Arc<Role>>,
    depth: usize,
}

struct Loader<'a> {
    ctx: &'a Ctx<'a>,
    /// The file being read, for messages.
    file: String,
    /// Its directory, where relative includes are looked up first.
    dir: String,
    inh: Inherit,
    templar: &'a Templar,
}

/// Joins `rel` to `dir` and removes `.` and `..`; `None` when it climbs out of the playbook's
/// directory.
fn join_path(dir: &str, rel: &str) -> Option<String> {
    let joined = if rel.starts_with('/') || dir.is_empty() {
        rel.to_string()
    } else {
        format!("{dir}/{rel}")
    };
    let abs = joined.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    let body = out.join("/");
    Some(if abs { format!("/{body}") } else { body })
}

fn dir_of(path: &str) -> String {
    match path.rfind('/') {
        Some(0) => "/".to_string(),
        Some(i) => path[..i].to_string(),
        None => String::new(),
    }
}

impl<'a> Loader<'a> {
    fn sub(&self, file: String, inh: Inherit) -> Loader<'a> {
        Loader {
            ctx: self.ctx,
            dir: dir_of(&file),
            file,
            inh,
            templar: self.templar,
        }
    }

    /// Reads a file through the caller's reader, within the bounds; `Ok(None)` when absent.
    fn read(&self, path: &str, mark: Mark, what: &str) -> Result<Option<String>, PlaybookError> {
        let Some(opts) = self.ctx.opts else {
            return Err(self.err(
                mark,
                format!(
                    "{what} needs the playbook's other files: give the playbook as a file (`rampart run FILE`), not as text"
                ),
            ));
        };
        let text =
            (opts.read)(path).map_err(|e| self.err(mark, format!("cannot read {path}: {e}")))?;
        if let Some(t) = &text {
            let mut files = self.ctx.files.borrow_mut();
            if !files.iter().any(|f| f == path) {
                if files.len() >= MAX_FILES {
                    return Err(self.err(
                        mark,
                        format!("the playbook brings in more than {MAX_FILES} files"),
                    ));
                }
                files.push(path.to_string());
            }
            let total = self.ctx.bytes.get() + t.len();
            if total > MAX_TOTAL_BYTES {
                return Err(self.err(
                    mark,
                    format!(
                        "the playbook's files hold more than {} MiB of YAML",
                        MAX_TOTAL_BYTES >> 20
                    ),
                ));
            }
            self.ctx.bytes.set(total);
        }
        Ok(text)
    }

    /// Finds an included file: beside the including file first, then in the playbook's
    /// directory; the path found, with its text.
    fn find(&self, rel: &str, mark: Mark, what: &str) -> Result<(String, String), PlaybookError> {
        let mut tried = Vec::new();
        let mut dirs = vec![self.dir.clone()];
        if !self.dir.is_empty() {
            dirs.push(String::new());
        }
        for dir in dirs {
            let Some(path) = join_path(&dir, rel) else {
                return Err(self.err(
                    mark,
                    format!("{what} `{rel}` is outside the playbook's directory"),
                ));
            };
            if let Some(text) = self.read(&path, mark, what)? {
                return Ok((path, text));
            }
            tried.push(path);
        }
        Err(self.err(
            mark,
            format!("{what}: no file `{rel}` (looked for {})", tried.join(", ")),
        ))
    }

    /// Parses one YAML file into its single document.
    fn parse_file(&self, path: &str, text: &str) -> Result<Option<Yaml>, PlaybookError> {
        let mut docs = yaml::parse(text, &Limits::default()).map_err(|e| yaml_error(path, &e))?;
        if docs.len() > 1 {
            return Err(PlaybookError {
                file: path.to_string(),
                line: docs[1].mark.line,
                col: docs[1].mark.col,
                message: "a file is one YAML document; found more than one".into(),
            });
        }
        Ok(docs.pop())
    }

    fn literal_name(&self, y: &Yaml, what: &str) -> Result<String, PlaybookError> {
        let mut s = self.string(y, what)?;
        // `{{ playbook_dir }}` and `{{ role_path }}` are known when the playbook loads.
        for (var, value) in [
            ("playbook_dir", Some(String::new())),
            ("role_path", self.inh.role.as_ref().map(|r| r.dir.clone())),
        ] {
            let Some(value) = value else { continue };
            for spelled in [format!("{{{{ {var} }}}}"), format!("{{{{{var}}}}}")] {
                if let Some(rest) = s.strip_prefix(&spelled) {
                    let rest = rest.trim_start_matches('/');
                    s = if value.is_empty() {
                        rest.to_string()
                    } else {
                        format!("{value}/{rest}")
                    };
                }
            }
        }
        if is_template(&s) {
            return Err(self.err(
                y.mark,
                format!(
                    "{what} `{s}` is a template: Rampart reads every file before the transaction starts, so name the file literally (use `when:` to choose between includes)"
                ),
            ));
        }
        Ok(s)
    }

    fn tags(&self, y: &Yaml) -> Result<Vec<String>, PlaybookError> {
        let items: Vec<&Yaml> = match &y.node {
            Node::Seq(items) => items.iter().collect(),
            Node::Null => Vec::new(),
            _ => vec![y],
        };
        let mut out = Vec::new();
        for item in items {
            let s = self.literal_name(item, "a tag")?;
            for t in s.split(',') {
                let t = t.trim();
                if !t.is_empty() && !out.iter().any(|o: &String| o == t) {
                    out.push(t.to_string());
                }
            }
        }
        Ok(out)
    }

    fn names(&self, y: &Yaml, what: &str) -> Result<Vec<String>, PlaybookError> {
        let items: Vec<&Yaml> = match &y.node {
            Node::Seq(items) => items.iter().collect(),
            Node::Null => Vec::new(),
            _ => vec![y],
        };
        items
            .into_iter()
            .map(|i| self.literal_name(i, what))
            .collect()
    }

    fn err(&self, mark: Mark, message: impl Into<String>) -> PlaybookError {
        PlaybookError {
            file: self.file.to_string(),
            line: mark.line,
            col: mark.col,
            message: message.into(),
        }
    }

    fn map<'y>(&self, y: &'y Yaml, what: &str) -> Result<&'y [(Yaml, Yaml)], PlaybookError> {
        y.as_map().ok_or_else(|| {
            self.err(
                y.mark,
                format!("{what} must be a mapping, not a {}", y.kind()),
            )
        })
    }

    fn key<'y>(&self, k: &'y Yaml) -> Result<&'y str, PlaybookError> {
        k.as_str()
            .ok_or_else(|| self.err(k.mark, format!("keys must be text, not a {}", k.kind())))
    }

    fn string(&self, y: &Yaml, what: &str) -> Result<String, PlaybookError> {
        match &y.node {
            Node::Str(s) => {
                self.check_template(y, s)?;
                Ok(s.clone())
            }
            Node::Int(i) => Ok(i.to_string()),
            Node::Float(f) => Ok(f.to_string()),
            Node::Bool(b) => Ok(b.to_string()),
            _ => Err(self.err(y.mark, format!("{what} must be text, not a {}", y.kind()))),
        }
    }

    fn check_template(&self, y: &Yaml, s: &str) -> Result<(), PlaybookError> {
        self.templar
            .check_template(s)
            .map_err(|e| self.err(y.mark, format!("{e} in `{s}`")))
    }

    fn check_expression(&self, y: &Yaml, s: &str) -> Result<(), PlaybookError> {
        self.templar
            .check_expression(s)
            .map_err(|e| self.err(y.mark, format!("{e} in expression `{s}`")))
    }

    /// Every string inside a value must be a well-formed template.
    fn check_deep(&self, y: &Yaml) -> Result<(), PlaybookError> {
        let mut stack = vec![y];
        while let Some(n) = stack.pop() {
            match &n.node {
                Node::Str(s) => self.check_template(n, s)?,
                Node::Seq(items) => stack.extend(items.iter()),
                Node::Map(pairs) => {
                    for (k, v) in pairs {
                        stack.push(k);
                        stack.push(v);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A boolean keyword: a YAML boolean, Ansible's spelled booleans, or a template.
    fn flag(&self, y: &Yaml, what: &str) -> Result<Value, PlaybookError> {
        match &y.node {
            Node::Bool(b) => Ok(Value::Bool(*b)),
            Node::Str(s) if is_template(s) => {
                self.check_template(y, s)?;
                Ok(Value::String(s.clone()))
            }
            _ => schema::parse_bool(&y.to_json())
                .map(Value::Bool)
                .ok_or_else(|| {
                    self.err(
                        y.mark,
                        format!(
                            "`{what}` must be a boolean (yes/no/true/false), not {}",
                            y.to_json()
                        ),
                    )
                }),
        }
    }

    /// Conditions: one expression, a list of them, or a boolean.
    fn conditions(&self, y: &Yaml, what: &str) -> Result<Vec<Value>, PlaybookError> {
        let items: Vec<&Yaml> = match &y.node {
            Node::Seq(items) => items.iter().collect(),
            _ => vec![y],
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match &item.node {
                Node::Str(s) => {
                    self.check_expression(item, s)?;
                    out.push(Value::String(s.clone()));
                }
                Node::Bool(b) => out.push(Value::Bool(*b)),
                Node::Int(i) => out.push(Value::Bool(*i != 0)),
                Node::Null => out.push(Value::Bool(false)),
                _ => {
                    return Err(self.err(
                        item.mark,
                        format!(
                            "`{what}` must be an expression or a list of them, not a {}",
                            item.kind()
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }

    fn vars(&self, y: &Yaml, what: &str) -> Result<Arc<Map<String, Value>>, PlaybookError> {
        if matches!(y.node, Node::Null) {
            return Ok(Arc::new(Map::new()));
        }
        let pairs = self.map(y, what)?;
        let mut out = Map::new();
        for (k, v) in pairs {
            let name = self.key(k)?;
            check_var_name(name).map_err(|m| self.err(k.mark, m))?;
            self.check_deep(v)?;
            out.insert(name.to_string(), v.to_json());
        }
        Ok(Arc::new(out))
    }

    fn number_or_template(&self, y: &Yaml, what: &str) -> Result<Value, PlaybookError> {
        match &y.node {
            Node::Int(_) | Node::Float(_) => Ok(y.to_json()),
            Node::Str(s) if is_template(s) => {
                self.check_template(y, s)?;
                Ok(Value::String(s.clone()))
            }
            Node::Str(s) if s.trim().parse::<f64>().is_ok() => Ok(Value::String(s.clone())),
            _ => Err(self.err(
                y.mark,
                format!("`{what}` must be a number, not {}", y.to_json()),
            )),
        }
    }

    fn become_keywords(
        &self,
        pairs: &[(Yaml, Yaml)],
        inh: &mut Inherit,
    ) -> Result<(), PlaybookError> {
        let mut become_on: Option<bool> = None;
        let mut user: Option<String> = None;
        for (k, v) in pairs {
            match k.as_str() {
                Some("become") => {
                    let f = self.flag(v, "become")?;
                    become_on = Some(f.as_bool().ok_or_else(|| {
                        self.err(v.mark, "`become` must be a literal boolean here")
                    })?);
                }
                Some("become_user") => user = Some(self.literal_name(v, "`become_user`")?),
                _ => {}
            }
        }
        match (become_on, user) {
            (Some(false), _) => inh.become_user = None,
            (Some(true), u) => {
                inh.become_user = Some(
                    u.or_else(|| inh.become_user.clone())
                        .unwrap_or_else(|| "root".into()),
                )
            }
            (None, Some(u)) if inh.become_user.is_some() => inh.become_user = Some(u),
            (None, _) => {}
        }
        Ok(())
    }

    /// The plays of one playbook file, `import_playbook` expanded in place.
    fn plays(&self, y: &Yaml, out: &mut Vec<Play>, depth: usize) -> Result<(), PlaybookError> {
        let items = y.as_seq().ok_or_else(|| {
            self.err(
                y.mark,
                format!("a playbook must be a list of plays, not a {}", y.kind()),
            )
        })?;
        for p in items {
            let import = p.as_map().and_then(|pairs| {
                pairs.iter().find(|(k, _)| {
                    matches!(
                        k.as_str(),
                        Some("import_playbook" | "ansible.builtin.import_playbook")
                    )
                })
            });
            if let Some((_, v)) = import {
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(self.err(v.mark, "import_playbook nests too deep (a cycle?)"));
                }
                for (k, _) in p.as_map().unwrap_or_default() {
                    if !matches!(
                        k.as_str(),
                        Some("import_playbook" | "ansible.builtin.import_playbook" | "name")
                    ) {
                        return Err(self.err(
                            k.mark,
                            format!("`{}` is not supported beside `import_playbook` (it takes only a file name)", k.as_str().unwrap_or("?")),
                        ));
                    }
                }
                let rel = self.literal_name(v, "import_playbook")?;
                let (path, text) = self.find(&rel, v.mark, "import_playbook")?;
                let sub = self.sub(path.clone(), Inherit::default());
                let Some(doc) = sub.parse_file(&path, &text)? else {
                    return Err(sub.err(Mark { line: 1, col: 1 }, "the imported playbook is empty"));
                };
                sub.plays(&doc, out, depth + 1)?;
                continue;
            }
            let play = self.play(out.len(), p)?;
            out.push(play);
        }
        Ok(())
    }

    fn play(&self, index: usize, y: &Yaml) -> Result<Play, PlaybookError> {
        let pairs = self.map(y, "a play")?;
        let mut play = Play {
            index,
            name: String::new(),
            hosts: String::new(),
            vars: Arc::new(Map::new()),
            vars_files: Arc::new(Map::new()),
            serial: None,
            max_fail_percentage: None,
            gather_facts: false,
            pre_tasks: Vec::new(),
            tasks: Vec::new(),
            post_tasks: Vec::new(),
            handlers: Vec::new(),
            force_handlers: false,
            mark: y.mark,
        };
        self.ctx.play.set(index);
        self.ctx.handlers.borrow_mut().clear();
        self.ctx.roles_applied.borrow_mut().clear();
        let mut inh = self.inh.clone();
        self.become_keywords(pairs, &mut inh)?;
        let mut has_hosts = false;
        for (k, v) in pairs {
            let key = self.key(k)?;
            match key {
                "name" => play.name = self.string(v, "a play's `name`")?,
                "hosts" => {
                    has_hosts = true;
                    play.hosts = match &v.node {
                        Node::Seq(items) => items
                            .iter()
                            .map(|i| self.string(i, "a host pattern"))
                            .collect::<Result<Vec<_>, _>>()?
                            .join(","),
                        _ => self.string(v, "`hosts`")?,
                    };
                }
                "vars" => play.vars = self.vars(v, "a play's `vars`")?,
                "vars_files" => {
                    let mut merged = Map::new();
                    for rel in self.names(v, "a `vars_files` entry")? {
                        let (path, text) = self.find(&rel, v.mark, "vars_files")?;
                        merged.extend(self.vars_file(&path, &text)?);
                    }
                    play.vars_files = Arc::new(merged);
                }
                "serial" => {
                    self.check_deep(v)?;
                    play.serial = Some(v.to_json());
                }
                "max_fail_percentage" => {
                    let n = self.number_or_template(v, "max_fail_percentage")?;
                    play.max_fail_percentage =
                        n.as_f64().or_else(|| n.as_str()?.trim().parse().ok());
                }
                "gather_facts" => {
                    play.gather_facts = self.flag(v, "gather_facts")?.as_bool().unwrap_or(false);
                }
                "force_handlers" => {
                    play.force_handlers =
                        self.flag(v, "force_handlers")?.as_bool().unwrap_or(false);
                }
                "tags" => inh.tags = self.tags(v)?,
                "become" | "become_user" | "tasks" | "pre_tasks" | "post_tasks" | "roles"
                | "handlers" => {}
                other => {
                    return Err(self.err(
                        k.mark,
                        format!(
                            "unknown play keyword `{other}`; a Rampart play takes: {}",
                            PLAY_KEYS.join(", ")
                        ),
                    ));
                }
            }
        }
        if !has_hosts {
            return Err(self.err(
                y.mark,
                "the field 'hosts' is required but was not set: add `hosts: all` (the agent runs every play on its own host)",
            ));
        }
        let scoped = Loader {
            ctx: self.ctx,
            file: self.file.clone(),
            dir: self.dir.clone(),
            inh,
            templar: self.templar,
        };
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(name))
                .map(|(_, v)| v)
        };
        if let Some(v) = get("pre_tasks") {
            play.pre_tasks =
                scoped.task_list(v, &format!("{index}.pre"), "a play's `pre_tasks`")?;
        }
        if let Some(v) = get("roles") {
            let Some(items) = v.as_seq() else {
                return Err(self.err(v.mark, "`roles` must be a list of roles"));
            };
            for (i, entry) in items.iter().enumerate() {
                if let Some(t) = scoped.role_entry(entry, format!("{index}.{i}"))? {
                    play.tasks.push(t);
                }
            }
        }
        if let Some(v) = get("tasks") {
            let offset = play.tasks.len();
            let tasks = scoped.task_list(v, &index.to_string(), "a play's `tasks`")?;
            if offset == 0 {
                play.tasks = tasks;
            } else {
                // Roles come first: the play's own tasks keep paths of their own (`0.t.3`).
                play.tasks.extend(scoped.task_list(
                    v,
                    &format!("{index}.t"),
                    "a play's `tasks`",
                )?);
            }
        }
        if let Some(v) = get("post_tasks") {
            play.post_tasks =
                scoped.task_list(v, &format!("{index}.post"), "a play's `post_tasks`")?;
        }
        if let Some(v) = get("handlers") {
            let Some(items) = v.as_seq() else {
                return Err(self.err(v.mark, "`handlers` must be a list of tasks"));
            };
            for h in items {
                scoped.handler(h)?;
            }
        }
        play.handlers = std::mem::take(&mut *self.ctx.handlers.borrow_mut());
        self.check_notify(&play)?;
        if play.name.is_empty() {
            play.name = play.hosts.clone();
        }
        Ok(play)
    }

    /// Every `notify:` of a play must name one of its handlers or `listen` topics.
    fn check_notify(&self, play: &Play) -> Result<(), PlaybookError> {
        let mut stack: Vec<&Task> = play
            .pre_tasks
            .iter()
            .chain(&play.tasks)
            .chain(&play.post_tasks)
            .chain(play.handlers.iter().map(|h| &h.task))
            .collect();
        while let Some(t) = stack.pop() {
            match &t.kind {
                TaskKind::Action(a) => {
                    for n in &a.notify {
                        if !play.handlers.iter().any(|h| h.answers(n)) {
                            let known: Vec<&str> =
                                play.handlers.iter().map(|h| h.name.as_str()).collect();
                            return Err(PlaybookError {
                                file: t.file.clone(),
                                line: t.mark.line,
                                col: t.mark.col,
                                message: format!(
                                    "notify: no handler or `listen` topic named `{n}` in this play; its handlers: {}",
                                    if known.is_empty() {
                                        "none".to_string()
                                    } else {
                                        known.join(", ")
                                    }
                                ),
                            });
                        }
                    }
                }
                TaskKind::Block(b) => {
                    stack.extend(b.block.iter().chain(&b.rescue).chain(&b.always))
                }
                TaskKind::Include(i) => stack.extend(i.tasks.iter()),
                TaskKind::Meta(_) => {}
            }
        }
        Ok(())
    }

    fn vars_file(&self, path: &str, text: &str) -> Result<Map<String, Value>, PlaybookError> {
        let sub = self.sub(path.to_string(), self.inh.clone());
        match sub.parse_file(path, text)? {
            None => Ok(Map::new()),
            Some(doc) => Ok((*sub.vars(&doc, "a vars file")?).clone()),
        }
    }

    fn handler(&self, y: &Yaml) -> Result<(), PlaybookError> {
        let n = self.ctx.handlers.borrow().len();
        let path = format!("{}.handlers.{n}", self.ctx.play.get());
        let mut listen = Vec::new();
        if let Some(pairs) = y.as_map()
            && let Some((_, v)) = pairs.iter().find(|(k, _)| k.as_str() == Some("listen"))
        {
            listen = self.names(v, "a `listen` topic")?;
        }
        let task = self.task_with(y, path, true)?;
        let name = task.name.clone().unwrap_or_default();
        if name.is_empty() && listen.is_empty() {
            return Err(self.err(
                y.mark,
                "a handler needs a `name` (or `listen` topics) for `notify` to find it",
            ));
        }
        self.ctx
            .handlers
            .borrow_mut()
            .push(Handler { task, name, listen });
        Ok(())
    }

    /// Finds a role's directory: a path as given, `roles/<name>` beside the playbook, each
    /// `roles_path` entry, then `<name>` beside the playbook.
    fn find_role(&self, name: &str, mark: Mark) -> Result<String, PlaybookError> {
        let mut candidates = Vec::new();
        if name.contains('/') {
            candidates.push(name.to_string());
        } else {
            candidates.push(format!("roles/{name}"));
            if let Some(opts) = self.ctx.opts {
                for rp in &opts.roles_path {
                    candidates.push(format!("{}/{name}", rp.trim_end_matches('/')));
                }
            }
            candidates.push(name.to_string());
        }
        for c in &candidates {
            let Some(dir) = join_path("", c) else {
                continue;
            };
            for probe in [
                "tasks/main.yml",
                "tasks/main.yaml",
                "meta/main.yml",
                "handlers/main.yml",
                "defaults/main.yml",
                "vars/main.yml",
            ] {
                if self
                    .read(&format!("{dir}/{probe}"), mark, "a role")?
                    .is_some()
                {
                    return Ok(dir);
                }
            }
        }
        Err(self.err(
            mark,
            format!(
                "the role `{name}` was not found (looked in {}); put it in `roles/{name}/` beside the playbook or add its directory to --roles-path",
                candidates.join(", ")
            ),
        ))
    }

    /// Reads `<role>/<sub>/<name>` (`main` tries `main.yml`, `main.yaml`, `main`).
    fn role_file(
        &self,
        dir: &str,
        sub: &str,
        name: &str,
        mark: Mark,
    ) -> Result<Option<(String, String)>, PlaybookError> {
        let names: Vec<String> = if name.ends_with(".yml") || name.ends_with(".yaml") {
            vec![name.to_string()]
        } else {
            vec![
                format!("{name}.yml"),
                format!("{name}.yaml"),
                name.to_string(),
            ]
        };
        for n in names {
            let Some(path) = join_path(dir, &format!("{sub}/{n}")) else {
                return Err(self.err(mark, format!("`{n}` is outside the role's directory")));
            };
            if let Some(text) = self.read(&path, mark, "a role")? {
                return Ok(Some((path, text)));
            }
        }
        Ok(None)
    }

    /// One `roles:` entry: a name, or a mapping with `role`/`name`, keywords and parameters.
    fn role_entry(&self, y: &Yaml, path: String) -> Result<Option<Task>, PlaybookError> {
        let mut name = None;
        let mut params = Map::new();
        let mut when = Vec::new();
        let mut inh = self.inh.clone();
        match &y.node {
            Node::Str(_) => name = Some(self.literal_name(y, "a role")?),
            Node::Map(pairs) => {
                self.become_keywords(pairs, &mut inh)?;
                for (k, v) in pairs {
                    match self.key(k)? {
                        "role" | "name" => name = Some(self.literal_name(v, "a role")?),
                        "when" => when = self.conditions(v, "when")?,
                        "tags" => inh.tags.extend(self.tags(v)?),
                        "become" | "become_user" => {}
                        "vars" => params.extend((*self.vars(v, "a role's `vars`")?).clone()),
                        other => {
                            check_var_name(other).map_err(|m| self.err(k.mark, m))?;
                            self.check_deep(v)?;
                            params.insert(other.to_string(), v.to_json());
                        }
                    }
                }
            }
            _ => return Err(self.err(y.mark, "a role is a name or a mapping with `role:`")),
        }
        let Some(name) = name else {
            return Err(self.err(y.mark, "a role entry needs `role: <name>`"));
        };
        let mut task = self.apply_role(
            &name,
            params,
            y.mark,
            path,
            RoleFiles::default(),
            &inh,
            true,
        )?;
        if let Some(t) = &mut task {
            t.when = when;
        }
        Ok(task)
    }

    /// A role's tasks (after its dependencies') as one block; `None` when `dedupe` and the play
    /// already ran it with the same parameters.
    #[allow(clippy::too_many_arguments)]
    fn apply_role(
        &self,
        name: &str,
        params: Map<String, Value>,
        mark: Mark,
        path: String,
        from: RoleFiles,
        inh: &Inherit,
        dedupe: bool,
    ) -> Result<Option<Task>, PlaybookError> {
        if inh.depth >= MAX_INCLUDE_DEPTH {
            return Err(self.err(
                mark,
                format!("role `{name}`: roles and includes nest too deep (a dependency cycle?)"),
            ));
        }
        let dir = self.find_role(name, mark)?;
        let key = (
            format!("{dir}:{}", from.tasks),
            Value::Object(params.clone()),
        );
        if dedupe {
            let mut applied = self.ctx.roles_applied.borrow_mut();
            if applied.contains(&key) {
                return Ok(None);
            }
            applied.push(key);
        }
        {
            let mut dirs = self.ctx.role_dirs.borrow_mut();
            if !dirs.contains(&dir) {
                dirs.push(dir.clone());
            }
        }
        let map_of = |sub: &str, file: &str| -> Result<Map<String, Value>, PlaybookError> {
            match self.role_file(&dir, sub, file, mark)? {
                Some((p, t)) => self.vars_file(&p, &t),
                None if file != "main" => {
                    Err(self.err(mark, format!("role `{name}` has no {sub}/{file}")))
                }
                None => Ok(Map::new()),
            }
        };
        let role = Arc::new(Role {
            name: name.rsplit('/').next().unwrap_or(name).to_string(),
            dir: dir.clone(),
            defaults: Arc::new(map_of("defaults", &from.defaults)?),
            vars: Arc::new(map_of("vars", &from.vars)?),
            params: Arc::new(params),
        });
        let mut rinh = inh.clone();
        rinh.role = Some(role.clone());
        rinh.depth += 1;
        let mut children = Vec::new();
        // Dependencies from meta/main.yml run first.
        if let Some((mpath, mtext)) = self.role_file(&dir, "meta", "main", mark)? {
            let sub = self.sub(mpath.clone(), rinh.clone());
            if let Some(doc) = sub.parse_file(&mpath, &mtext)?
                && let Some(pairs) = doc.as_map()
                && let Some((_, deps)) = pairs
                    .iter()
                    .find(|(k, _)| k.as_str() == Some("dependencies"))
                && let Some(items) = deps.as_seq()
            {
                for (i, d) in items.iter().enumerate() {
                    let mut dinh = inh.clone();
                    dinh.depth += 1;
                    let dl = Loader {
                        ctx: self.ctx,
                        file: mpath.clone(),
                        dir: dir_of(&mpath),
                        inh: dinh,
                        templar: self.templar,
                    };
                    let _ = i;
                    if let Some(t) = dl.role_entry(d, format!("{path}.block.{}", children.len()))? {
                        children.push(t);
                    }
                }
            }
        }
        if let Some((hpath, htext)) = self.role_file(&dir, "handlers", &from.handlers, mark)? {
            let hkey = (format!("handlers:{hpath}"), Value::Null);
            let fresh = {
                let mut applied = self.ctx.roles_applied.borrow_mut();
                let fresh = !applied.contains(&hkey);
                if fresh {
                    applied.push(hkey);
                }
                fresh
            };
            if fresh {
                let sub = self.sub(hpath.clone(), rinh.clone());
                if let Some(doc) = sub.parse_file(&hpath, &htext)? {
                    let Some(items) = doc.as_seq() else {
                        return Err(sub.err(doc.mark, "a handlers file must be a list of tasks"));
                    };
                    for h in items {
                        sub.handler(h)?;
                        // `notify: "role : handler"` reaches a role's handler too.
                        if let Some(last) = sub.ctx.handlers.borrow_mut().last_mut() {
                            let qualified = format!("{} : {}", role.name, last.name);
                            last.listen.push(qualified);
                        }
                    }
                }
            }
        }
        match self.role_file(&dir, "tasks", &from.tasks, mark)? {
            Some((tpath, ttext)) => {
                let sub = self.sub(tpath.clone(), rinh.clone());
                if let Some(doc) = sub.parse_file(&tpath, &ttext)? {
                    // Paths continue after the dependencies' blocks.
                    let tasks = sub.task_list_from(
                        &doc,
                        &format!("{path}.block"),
                        "a role's tasks",
                        children.len(),
                    )?;
                    children.extend(tasks);
                }
            }
            None if from.tasks != "main" => {
                return Err(self.err(mark, format!("role `{name}` has no tasks/{}", from.tasks)));
            }
            None => {}
        }
        let fixed = children;
        Ok(Some(Task {
            path,
            file: self.file.clone(),
            name: None,
            mark,
            when: Vec::new(),
            vars: None,
            ignore_errors: None,
            no_log: None,
            check_mode: None,
            tags: inh.tags.clone(),
            become_user: inh.become_user.clone(),
            role: Some(role),
            kind: TaskKind::Block(Block {
                block: fixed,
                rescue: Vec::new(),
                always: Vec::new(),
            }),
        }))
    }

    fn task_list(&self, y: &Yaml, prefix: &str, what: &str) -> Result<Vec<Task>, PlaybookError> {
        self.task_list_from(y, prefix, what, 0)
    }

    fn task_list_from(
        &self,
        y: &Yaml,
        prefix: &str,
        what: &str,
        offset: usize,
    ) -> Result<Vec<Task>, PlaybookError> {
        if matches!(y.node, Node::Null) {
            return Ok(Vec::new());
        }
        let items = y.as_seq().ok_or_else(|| {
            self.err(
                y.mark,
                format!("{what} must be a list of tasks, not a {}", y.kind()),
            )
        })?;
        items
            .iter()
            .enumerate()
            .map(|(i, t)| self.task(t, format!("{prefix}.{}", i + offset)))
            .collect()
    }

    fn task(&self, y: &Yaml, path: String) -> Result<Task, PlaybookError> {
        self.task_with(y, path, false)
    }

    fn task_with(&self, y: &Yaml, path: String, is_handler: bool) -> Result<Task, PlaybookError> {
        let pairs = self.map(y, "a task")?;
        let is_block = pairs.iter().any(|(k, _)| k.as_str() == Some("block"));
        let mut inh = self.inh.clone();
        self.become_keywords(pairs, &mut inh)?;
        let mut task = Task {
            path,
            file: self.file.clone(),
            name: None,
            mark: y.mark,
            when: Vec::new(),
            vars: None,
            ignore_errors: None,
            no_log: None,
            check_mode: None,
            tags: inh.tags.clone(),
            become_user: inh.become_user.clone(),
            role: inh.role.clone(),
            kind: TaskKind::Block(Block {
                block: Vec::new(),
                rescue: Vec::new(),
                always: Vec::new(),
            }),
        };
        let mut own_tags = Vec::new();
        // Keywords shared by tasks and blocks.
        for (k, v) in pairs {
            match self.key(k)? {
                "name" => task.name = Some(self.string(v, "a task's `name`")?),
                "when" => task.when = self.conditions(v, "when")?,
                "vars" => task.vars = Some(self.vars(v, "a task's `vars`")?),
                "ignore_errors" => task.ignore_errors = Some(self.flag(v, "ignore_errors")?),
                "no_log" => task.no_log = Some(self.flag(v, "no_log")?),
                "check_mode" => task.check_mode = Some(self.flag(v, "check_mode")?),
                "tags" => own_tags = self.tags(v)?,
                "listen" if !is_handler => {
                    return Err(self.err(k.mark, "`listen` is only valid on a handler"));
                }
                "delegate_to" => {
                    let d = self.string(v, "`delegate_to`")?;
                    let here = matches!(d.as_str(), "localhost" | "127.0.0.1" | "::1")
                        || d.replace(' ', "") == "{{inventory_hostname}}";
                    if !here {
                        return Err(self.err(
                            v.mark,
                            format!(
                                "delegate_to `{d}`: an agent runs tasks only on its own host; `delegate_to: localhost` (that host) is accepted, another host is not — run that task in a play for that host"
                            ),
                        ));
                    }
                }
                "run_once" => {
                    self.flag(v, "run_once")?;
                }
                _ => {}
            }
        }
        for t in &own_tags {
            if !task.tags.contains(t) {
                task.tags.push(t.clone());
            }
        }
        let child_inh = Inherit {
            tags: task.tags.clone(),
            ..inh.clone()
        };
        let child = Loader {
            ctx: self.ctx,
            file: self.file.clone(),
            dir: self.dir.clone(),
            inh: child_inh.clone(),
            templar: self.templar,
        };
        if is_block {
            let mut block = Block {
                block: Vec::new(),
                rescue: Vec::new(),
                always: Vec::new(),
            };
            for (k, v) in pairs {
                let key = self.key(k)?;
                match key {
                    "block" => {
                        block.block =
                            child.task_list(v, &format!("{}.block", task.path), "`block`")?
                    }
                    "rescue" => {
                        block.rescue =
                            child.task_list(v, &format!("{}.rescue", task.path), "`rescue`")?
                    }
                    "always" => {
                        block.always =
                            child.task_list(v, &format!("{}.always", task.path), "`always`")?
                    }
                    k2 if BLOCK_KEYS.contains(&k2) => {}
                    other if TASK_KEYS.contains(&other) || modules::lookup(other).is_some() => {
                        return Err(self.err(
                            k.mark,
                            format!(
                                "`{other}` is not valid on a block; a block takes: {}",
                                BLOCK_KEYS.join(", ")
                            ),
                        ));
                    }
                    other => {
                        return Err(self.err(
                            k.mark,
                            format!(
                                "unknown block keyword `{other}`; a block takes: {}",
                                BLOCK_KEYS.join(", ")
                            ),
                        ));
                    }
                }
            }
            task.kind = TaskKind::Block(block);
            return Ok(task);
        }
        if let Some((k, v)) = pairs.iter().find(|(k, _)| {
            k.as_str()
                .map(|s| s.strip_prefix("ansible.builtin.").unwrap_or(s))
                .is_some_and(|s| INCLUDE_KEYS.contains(&s))
        }) {
            return self.include(task, pairs, k, v, &inh);
        }
        // A module call: exactly one key names a module.
        let mut module: Option<(&'static ModuleSchema, &str, &Yaml, &Yaml)> = None;
        let mut extra_args: Option<&Yaml> = None;
        let mut action = Action {
            module: &modules::control::DEBUG,
            action: String::new(),
            args: Map::new(),
            register: None,
            loop_items: None,
            loop_var: "item".to_string(),
            index_var: None,
            until: Vec::new(),
            retries: None,
            delay: None,
            failed_when: None,
            changed_when: None,
            notify: Vec::new(),
        };
        for (k, v) in pairs {
            let key = self.key(k)?;
            match key {
                "name" | "when" | "vars" | "ignore_errors" | "no_log" | "check_mode" | "tags"
                | "become" | "become_user" | "delegate_to" | "run_once" => {}
                "listen" => {}
                "notify" => action.notify = self.names(v, "a `notify` entry")?,
                "register" => {
                    let r = self.string(v, "`register`")?;
                    check_var_name(&r).map_err(|m| self.err(v.mark, m))?;
                    action.register = Some(r);
                }
                "loop" | "with_items" | "with_list" => {
                    action.loop_items = Some(self.loop_value(v)?);
                }
                "loop_control" => {
                    self.loop_control(v, &mut action.loop_var, &mut action.index_var)?
                }
                "until" => action.until = self.conditions(v, "until")?,
                "retries" => action.retries = Some(self.number_or_template(v, "retries")?),
                "delay" => action.delay = Some(self.number_or_template(v, "delay")?),
                "failed_when" => action.failed_when = Some(self.conditions(v, "failed_when")?),
                "changed_when" => action.changed_when = Some(self.conditions(v, "changed_when")?),
                "args" => extra_args = Some(v),
                "rescue" | "always" => {
                    return Err(
                        self.err(k.mark, format!("`{key}` needs a `block` in the same task"))
                    );
                }
                other => match modules::lookup(other) {
                    Some(spec) => {
                        if let Some((_, first, first_k, _)) = module {
                            return Err(self.err(
                                k.mark,
                                format!(
                                    "conflicting action statements: `{first}` (at {}) and `{other}`; a task runs one module",
                                    first_k.mark
                                ),
                            ));
                        }
                        module = Some((spec, other, k, v));
                    }
                    None => {
                        return Err(self.err(k.mark, unknown_module_message(other)));
                    }
                },
            }
        }
        let Some((spec, written, _key, value)) = module else {
            return Err(self.err(
                y.mark,
                "no module in this task: give one module (e.g. `command: /bin/true`) or a `block`",
            ));
        };
        action.module = spec;
        action.action = written.to_string();
        action.args = self.args(spec, value, y.mark)?;
        if let Some(extra) = extra_args {
            for (k, v) in self.map(extra, "`args`")? {
                let name = self.key(k)?;
                let canonical = self.arg_name(spec, name, k.mark)?;
                self.check_arg_value(spec, &canonical, v)?;
                action.args.insert(canonical, v.to_json());
            }
        }
        if spec.name == "include_vars" {
            if let Some(raw) = action.args.remove("_raw_params") {
                action.args.insert("file".into(), raw);
            }
            let literal = match pairs.iter().find(|(k, _)| k.as_str() == Some(written)) {
                Some((
                    _,
                    Yaml {
                        node: Node::Str(_), ..
                    },
                )) => Some(value),
                Some((
                    _,
                    Yaml {
                        node: Node::Map(args),
                        ..
                    },
                )) => args
                    .iter()
                    .find(|(k, _)| matches!(k.as_str(), Some("file" | "_raw_params")))
                    .map(|(_, v)| v),
                _ => None,
            };
            let rel = match literal.map(|v| self.literal_name(v, "include_vars")) {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(self.err(
                        y.mark,
                        "include_vars needs a literal file name: Rampart reads every file before the transaction starts",
                    ));
                }
            };
            // In a role, `vars/<file>` of the role first.
            let found = match &inh.role {
                Some(r) => match self.role_file(&r.dir, "vars", &rel, y.mark)? {
                    Some(f) => f,
                    None => self.find(&rel, y.mark, "include_vars")?,
                },
                None => self.find(&rel, y.mark, "include_vars")?,
            };
            let data = self.vars_file(&found.0, &found.1)?;
            action.args.insert("file".into(), Value::String(found.0));
            action.args.insert("_data".into(), Value::Object(data));
        }
        self.check_args(spec, &action.args, y.mark)?;
        if spec.name == "meta" {
            let what = action
                .args
                .get("_raw_params")
                .and_then(Value::as_str)
                .unwrap_or("");
            task.kind = TaskKind::Meta(match what {
                "flush_handlers" => Meta::FlushHandlers,
                "end_play" => Meta::EndPlay,
                "end_host" => Meta::EndHost,
                _ => Meta::Noop,
            });
            return Ok(task);
        }
        task.kind = TaskKind::Action(Box::new(action));
        Ok(task)
    }

    fn loop_value(&self, v: &Yaml) -> Result<Value, PlaybookError> {
        match &v.node {
            Node::Seq(_) => self.check_deep(v)?,
            Node::Str(s) if is_template(s) => self.check_template(v, s)?,
            _ => {
                return Err(self.err(
                    v.mark,
                    format!(
                        "`loop` must be a list or a template giving one, not {}",
                        v.to_json()
                    ),
                ));
            }
        }
        Ok(v.to_json())
    }

    fn loop_control(
        &self,
        v: &Yaml,
        loop_var: &mut String,
        index_var: &mut Option<String>,
    ) -> Result<(), PlaybookError> {
        for (lk, lv) in self.map(v, "`loop_control`")? {
            match self.key(lk)? {
                "loop_var" => {
                    *loop_var = self.string(lv, "`loop_var`")?;
                    check_var_name(loop_var).map_err(|m| self.err(lv.mark, m))?;
                }
                "index_var" => *index_var = Some(self.string(lv, "`index_var`")?),
                "label" => self.check_deep(lv)?,
                other => {
                    return Err(self.err(
                        lk.mark,
                        format!(
                            "unknown loop_control keyword `{other}`; it takes: {}",
                            LOOP_CONTROL_KEYS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `include_tasks` / `import_tasks` / `include_role` / `import_role`.
    fn include(
        &self,
        mut task: Task,
        pairs: &[(Yaml, Yaml)],
        k: &Yaml,
        v: &Yaml,
        inh: &Inherit,
    ) -> Result<Task, PlaybookError> {
        let written = k.as_str().unwrap_or_default().to_string();
        let what = written
            .strip_prefix("ansible.builtin.")
            .unwrap_or(&written)
            .to_string();
        let is_static = what.starts_with("import_");
        let is_role = what.ends_with("_role");
        if inh.depth >= MAX_INCLUDE_DEPTH {
            return Err(self.err(k.mark, format!("{what} nests too deep (an include cycle?)")));
        }
        let mut loop_items = None;
        let mut loop_var = "item".to_string();
        let mut index_var = None;
        for (kk, vv) in pairs {
            let key = self.key(kk)?;
            match key {
                "name" | "when" | "vars" | "tags" | "become" | "become_user" | "ignore_errors"
                | "no_log" | "check_mode" => {}
                "loop" | "with_items" | "with_list" if !is_static => {
                    loop_items = Some(self.loop_value(vv)?)
                }
                "loop_control" if !is_static => {
                    self.loop_control(vv, &mut loop_var, &mut index_var)?
                }
                _ if kk.as_str() == Some(written.as_str()) => {}
                other => {
                    return Err(self.err(
                        kk.mark,
                        format!(
                            "`{other}` is not valid on `{what}`{}",
                            if is_static && matches!(other, "loop" | "with_items" | "loop_control")
                            {
                                format!(
                                    " (a static import cannot loop; use `{}`)",
                                    what.replace("import_", "include_")
                                )
                            } else {
                                String::new()
                            }
                        ),
                    ));
                }
            }
        }
        // The include's own tags select the include; a static import passes them on.
        let mut child_inh = inh.clone();
        child_inh.depth += 1;
        if is_static {
            child_inh.tags = task.tags.clone();
        }
        let child_prefix = format!("{}.inc", task.path);
        let tasks = if is_role {
            let mut from = RoleFiles::default();
            let mut name = None;
            match &v.node {
                Node::Str(_) => name = Some(self.literal_name(v, &what)?),
                Node::Map(args) => {
                    for (ak, av) in args {
                        match self.key(ak)? {
                            "name" => name = Some(self.literal_name(av, "a role")?),
                            "tasks_from" => from.tasks = self.literal_name(av, "`tasks_from`")?,
                            "vars_from" => from.vars = self.literal_name(av, "`vars_from`")?,
                            "defaults_from" => {
                                from.defaults = self.literal_name(av, "`defaults_from`")?
                            }
                            "handlers_from" => {
                                from.handlers = self.literal_name(av, "`handlers_from`")?
                            }
                            "public" | "allow_duplicates" | "rolespec_validate" => {
                                self.flag(av, "a flag")?;
                            }
                            other => {
                                return Err(self.err(
                                    ak.mark,
                                    format!("`{what}` takes name, tasks_from, vars_from, defaults_from, handlers_from, public, allow_duplicates; not `{other}`"),
                                ));
                            }
                        }
                    }
                }
                _ => {
                    return Err(self.err(
                        v.mark,
                        format!("`{what}` takes a role name or a mapping with `name:`"),
                    ));
                }
            }
            let Some(name) = name else {
                return Err(self.err(v.mark, format!("`{what}` needs `name: <role>`")));
            };
            let params = task.vars.as_deref().cloned().unwrap_or_default();
            let role_block = self
                .apply_role(
                    &name,
                    params,
                    v.mark,
                    format!("{child_prefix}.0"),
                    from,
                    &child_inh,
                    false,
                )?
                .expect("not deduplicated");
            vec![role_block]
        } else {
            let rel = match &v.node {
                Node::Map(args) => {
                    let mut file = None;
                    for (ak, av) in args {
                        match self.key(ak)? {
                            "file" | "_raw_params" => file = Some(self.literal_name(av, &what)?),
                            "apply" if !is_static => {
                                for (pk, pv) in self.map(av, "`apply`")? {
                                    match self.key(pk)? {
                                        "tags" => {
                                            for t in self.tags(pv)? {
                                                if !child_inh.tags.contains(&t) {
                                                    child_inh.tags.push(t);
                                                }
                                            }
                                        }
                                        other => {
                                            return Err(self.err(
                                                pk.mark,
                                                format!("`apply: {other}` is not supported; `apply` takes `tags` (put other keywords on a block inside the included file)"),
                                            ));
                                        }
                                    }
                                }
                            }
                            other => {
                                return Err(self.err(
                                    ak.mark,
                                    format!("`{what}` takes `file`; not `{other}`"),
                                ));
                            }
                        }
                    }
                    file.ok_or_else(|| self.err(v.mark, format!("`{what}` needs `file:`")))?
                }
                _ => self.literal_name(v, &what)?,
            };
            let (path, text) = self.find(&rel, v.mark, &what)?;
            let sub = self.sub(path.clone(), child_inh.clone());
            match sub.parse_file(&path, &text)? {
                None => Vec::new(),
                Some(doc) => sub.task_list(&doc, &child_prefix, "an included file")?,
            }
        };
        let target = match &v.node {
            Node::Str(s) => s.clone(),
            _ => v.to_json().to_string(),
        };
        if is_static {
            // Static: the tasks take the import's place, with its `when`, `vars` and tags.
            task.kind = TaskKind::Block(Block {
                block: tasks,
                rescue: Vec::new(),
                always: Vec::new(),
            });
            return Ok(task);
        }
        let params = if is_role {
            Arc::new(Map::new())
        } else {
            task.vars.take().unwrap_or_default()
        };
        if is_role {
            task.vars = None;
        }
        task.kind = TaskKind::Include(Box::new(Include {
            action: written,
            target,
            tasks,
            loop_items,
            loop_var,
            index_var,
            params,
        }));
        Ok(task)
    }

    fn arg_name(
        &self,
        spec: &ModuleSchema,
        name: &str,
        mark: Mark,
    ) -> Result<String, PlaybookError> {
        if let Some(a) = spec.arg(name) {
            return Ok(a.name.to_string());
        }
        if spec.any_args {
            check_var_name(name).map_err(|m| self.err(mark, m))?;
            return Ok(name.to_string());
        }
        let known: Vec<&str> = spec
            .args
            .iter()
            .map(|a| a.name)
            .filter(|n| !n.starts_with('_'))
            .collect();
        Err(self.err(
            mark,
            format!(
                "unsupported argument `{name}` for module `{}`; it takes: {}",
                spec.name,
                known.join(", ")
            ),
        ))
    }

    fn check_arg_value(
        &self,
        spec: &ModuleSchema,
        name: &str,
        v: &Yaml,
    ) -> Result<(), PlaybookError> {
        let kind = spec.arg(name).map_or(ArgKind::Any, |a| a.kind);
        if kind == ArgKind::Expr {
            let items: Vec<&Yaml> = match &v.node {
                Node::Seq(items) => items.iter().collect(),
                _ => vec![v],
            };
            for item in items {
                if let Node::Str(s) = &item.node {
                    self.check_expression(item, s)?;
                }
            }
            return Ok(());
        }
        self.check_deep(v)?;
        // Literal values are type-checked now; templated ones when they are rendered.
        if let Some(arg) = spec.arg(name)
            && !contains_template(v)
        {
            schema::coerce(arg, v.to_json())
                .map_err(|m| self.err(v.mark, format!("{}: {m}", spec.name)))?;
        }
        Ok(())
    }

    fn args(
        &self,
        spec: &ModuleSchema,
        y: &Yaml,
        task_mark: Mark,
    ) -> Result<Map<String, Value>, PlaybookError> {
        let mut out = Map::new();
        match &y.node {
            Node::Null => {}
            Node::Map(pairs) => {
                for (k, v) in pairs {
                    let name = self.key(k)?;
                    let canonical = self.arg_name(spec, name, k.mark)?;
                    self.check_arg_value(spec, &canonical, v)?;
                    out.insert(canonical, v.to_json());
                }
            }
            Node::Str(text) => {
                self.check_template(y, text)?;
                match spec.free_form {
                    FreeForm::Command => {
                        let (pairs, rest) = schema::split_key_values(text, |k| {
                            spec.arg(k)
                                .is_some_and(|a| !matches!(a.name, "_raw_params" | "cmd" | "argv"))
                        });
                        for (k, v) in pairs {
                            let canonical = self.arg_name(spec, &k, y.mark)?;
                            out.insert(canonical, Value::String(v));
                        }
                        if !rest.is_empty() {
                            out.insert("_raw_params".into(), Value::String(rest));
                        }
                    }
                    FreeForm::KeyValue => {
                        let (pairs, rest) = schema::split_key_values(text, |_| true);
                        if !rest.is_empty() {
                            return Err(self.err(
                                y.mark,
                                format!(
                                    "module `{}` takes key=value pairs in its free form, found `{rest}`",
                                    spec.name
                                ),
                            ));
                        }
                        for (k, v) in pairs {
                            let canonical = self.arg_name(spec, &k, y.mark)?;
                            if let Some(arg) = spec.arg(&canonical)
                                && arg.kind == ArgKind::Expr
                            {
                                self.check_expression(y, &v)?;
                            } else if !is_template(&v)
                                && let Some(arg) = spec.arg(&canonical)
                            {
                                schema::coerce(arg, Value::String(v.clone()))
                                    .map_err(|m| self.err(y.mark, format!("{}: {m}", spec.name)))?;
                            }
                            out.insert(canonical, Value::String(v));
                        }
                    }
                }
            }
            _ => {
                return Err(self.err(
                    task_mark,
                    format!(
                        "arguments of module `{}` must be a mapping or key=value text, not a {}",
                        spec.name,
                        y.kind()
                    ),
                ));
            }
        }
        Ok(out)
    }

    fn check_args(
        &self,
        spec: &ModuleSchema,
        args: &Map<String, Value>,
        mark: Mark,
    ) -> Result<(), PlaybookError> {
        for a in spec.args {
            if a.required && !args.contains_key(a.name) {
                return Err(self.err(
                    mark,
                    format!("module `{}` requires argument `{}`", spec.name, a.name),
                ));
            }
        }
        for group in spec.one_of {
            if !group.iter().any(|g| args.contains_key(*g)) {
                let shown: Vec<&str> = group
                    .iter()
                    .map(|g| {
                        if *g == "_raw_params" {
                            "a free-form command"
                        } else {
                            g
                        }
                    })
                    .collect();
                return Err(self.err(
                    mark,
                    format!("module `{}` needs one of: {}", spec.name, shown.join(", ")),
                ));
            }
        }
        for (a, b) in spec.exclusive {
            if args.contains_key(*a) && args.contains_key(*b) {
                return Err(self.err(
                    mark,
                    format!(
                        "module `{}`: arguments `{a}` and `{b}` exclude each other",
                        spec.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn contains_template(y: &Yaml) -> bool {
    let mut stack = vec![y];
    while let Some(n) = stack.pop() {
        match &n.node {
            Node::Str(s) if is_template(s) => return true,
            Node::Seq(items) => stack.extend(items.iter()),
            Node::Map(pairs) => stack.extend(pairs.iter().map(|(_, v)| v)),
            _ => {}
        }
    }
    false
}

fn check_var_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid variable name (letters, digits and _, not starting with a digit)"
        ))
    }
}

/// Parses and validates a playbook given as text alone: one that refers to other files
/// (includes, roles, `vars_files`) is refused with what to do. Nothing is executed.
pub fn load(name: &str, text: &str, templar: &Templar) -> Result<Playbook, PlaybookError> {
    load_inner(name, text, templar, None)
}

/// Parses and validates a playbook and every file it brings in, read through `opts.read` (the
/// loader does no I/O of its own). Nothing is executed.
pub fn load_tree(
    name: &str,
    text: &str,
    templar: &Templar,
    opts: &LoadOptions<'_>,
) -> Result<Playbook, PlaybookError> {
    load_inner(name, text, templar, Some(opts))
}

fn load_inner(
    name: &str,
    text: &str,
    templar: &Templar,
    opts: Option<&LoadOptions<'_>>,
) -> Result<Playbook, PlaybookError> {
    let ctx = Ctx {
        opts,
        files: RefCell::new(Vec::new()),
        role_dirs: RefCell::new(Vec::new()),
        bytes: Cell::new(text.len()),
        play: Cell::new(0),
        handlers: RefCell::new(Vec::new()),
        roles_applied: RefCell::new(Vec::new()),
    };
    let loader = Loader {
        ctx: &ctx,
        file: name.to_string(),
        dir: String::new(),
        inh: Inherit::default(),
        templar,
    };
    let docs = yaml::parse(text, &Limits::default()).map_err(|e| yaml_error(name, &e))?;
    let Some(doc) = docs.first() else {
        return Err(loader.err(
            Mark { line: 1, col: 1 },
            "the playbook is empty: it must be a list of plays",
        ));
    };
    if docs.len() > 1 {
        return Err(loader.err(
            docs[1].mark,
            "a playbook is one YAML document; found more than one",
        ));
    }
    if doc.as_seq().is_some_and(|s| s.is_empty()) {
        return Err(loader.err(doc.mark, "the playbook has no plays"));
    }
    let mut plays = Vec::new();
    loader.plays(doc, &mut plays, 0)?;
    Ok(Playbook {
        name: name.to_string(),
        plays,
        files: ctx.files.into_inner(),
        role_dirs: ctx.role_dirs.into_inner(),
    })
}

/// Which files of a role an `include_role` reads (`main` by default).
#[derive(Debug, Clone)]
struct RoleFiles {
    tasks: String,
    vars: String,
    defaults: String,
    handlers: String,
}

impl Default for RoleFiles {
    fn default() -> Self {
        RoleFiles {
            tasks: "main".into(),
            vars: "main".into(),
            defaults: "main".into(),
            handlers: "main".into(),
        }
    }
}

/// Ansible modules a deploy playbook may use that Rampart does not have, and what to use instead.
const EQUIVALENTS: &[(&str, &str)] = &[
    (
        "apt",
        "install packages before the deploy (Rampart deploys releases, it does not manage packages)",
    ),
    ("yum", "install packages before the deploy"),
    ("dnf", "install packages before the deploy"),
    ("package", "install packages before the deploy"),
    (
        "pip",
        "ship dependencies inside the release artifact (`release`)",
    ),
    (
        "git",
        "`release` with a versioned, sha256-verified artifact",
    ),
    ("synchronize", "`release` (an artifact) or `copy`"),
    ("docker_container", "a systemd unit and `service`"),
    ("postgresql_db", "`migrate` (Flyway-compatible migrations)"),
    ("postgresql_query", "`migrate` or `command: psql ...`"),
    ("wait_for_connection", "`wait_for`"),
    ("script", "`command` or `shell`"),
    ("raw", "`command` or `shell`"),
    ("slurp", "`stat` or `command: cat FILE` with `register`"),
    (
        "fetch",
        "`forensics` (collects files into a bundle the controller serves)",
    ),
    ("archive", "`command: tar ...`"),
    (
        "sysctl",
        "`lineinfile` on /etc/sysctl.d or `command: sysctl`",
    ),
    ("mount", "`command: mount ...`"),
    (
        "import_playbook",
        "`import_playbook` at the top level of a playbook, not inside a play",
    ),
    (
        "include",
        "`include_tasks` (dynamic) or `import_tasks` (static)",
    ),
    ("with_dict", "`loop: \"{{ d | dict2items }}\"`"),
];

fn unknown_module_message(name: &str) -> String {
    let short = name
        .strip_prefix("ansible.builtin.")
        .or_else(|| name.strip_prefix("ansible.legacy."))
        .unwrap_or(name);
    let hint = EQUIVALENTS
        .iter()
        .find(|(m, _)| *m == short)
        .map(|(_, h)| format!(" Rampart has no `{short}`; use {h}."))
        .unwrap_or_default();
    format!(
        "unknown module or task keyword `{name}`.{hint} Modules: {}; task keywords: {}",
        modules::BUILTIN
            .iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
            .join(", "),
        TASK_KEYS.join(", ")
    )
}

fn yaml_error(file: &str, e: &YamlError) -> PlaybookError {
    let mark = match e {
        YamlError::Syntax { mark, .. }
        | YamlError::TooDeep { mark, .. }
        | YamlError::TooManyNodes { mark, .. }
        | YamlError::DuplicateKey { mark, .. }
        | YamlError::UnknownAnchor { mark }
        | YamlError::Unsupported { mark, .. } => *mark,
        YamlError::TooLarge { .. } => Mark { line: 1, col: 1 },
    };
    let full = e.to_string();
    // The YAML error's own text starts with its position; keep only the message.
    let prefix = format!("{mark}: ");
    let message = full.strip_prefix(&prefix).unwrap_or(&full).to_string();
    PlaybookError {
        file: file.to_string(),
        line: mark.line,
        col: mark.col,
        message: format!("YAML: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_err(text: &str) -> PlaybookError {
        load("pb.yml", text, &Templar::new()).unwrap_err()
    }

    #[test]
    fn loads_blocks_free_form_and_paths() {
        let text = "- hosts: all\n  tasks:\n    - name: outer\n      block:\n        - command: /bin/true\n        - debug: msg=hi\n      rescue:\n        - file: path=/x state=absent\n";
        let pb = load("pb.yml", text, &Templar::new()).unwrap();
        let TaskKind::Block(b) = &pb.plays[0].tasks[0].kind else {
            panic!()
        };
        assert_eq!(b.block[1].path, "0.0.block.1");
        assert_eq!(b.rescue[0].path, "0.0.rescue.0");
        let TaskKind::Action(a) = &b.block[0].kind else {
            panic!()
        };
        assert_eq!(a.args["_raw_params"], "/bin/true");
        let TaskKind::Action(a) = &b.rescue[0].kind else {
            panic!()
        };
        assert_eq!(a.args["state"], "absent");
        assert_eq!(
            crate::model::outermost_cleanup_section("0.0.rescue.0"),
            Some("0.0.rescue".into())
        );
        assert_eq!(crate::model::outermost_cleanup_section("0.0.block.1"), None);
        assert_eq!(
            crate::model::section_of("0.0.rescue.0"),
            crate::model::Section::Rescue
        );
        assert_eq!(
            crate::model::section_of("0.3"),
            crate::model::Section::Block
        );
    }

    #[test]
    fn errors_carry_file_line_column() {
        let e = load_err("- hosts: all\n  tasks:\n    - name: x\n      bogus: 1\n");
        assert_eq!((e.line, e.col), (4, 7), "{e}");
        assert!(
            e.message.contains("unknown module or task keyword `bogus`"),
            "{e}"
        );

        let e =
            load_err("- hosts: all\n  tasks:\n    - copy:\n        content: x\n        nope: 1\n");
        assert_eq!((e.line, e.col), (5, 9), "{e}");
        assert!(e.message.contains("unsupported argument `nope`"), "{e}");

        let e = load_err("- hosts: all\n  tasks:\n    - copy:\n        content: x\n");
        assert!(e.message.contains("requires argument `dest`"), "{e}");

        let e = load_err("- hosts: all\n  tasks:\n    - debug:\n        msg: \"{{ x \"\n");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("syntax"), "{e}");

        let e = load_err("- hosts: all\n  tasks:\n    - debug: msg=x\n      when: x ==\n");
        assert_eq!(e.line, 4, "{e}");

        let e = load_err("- hosts: all\n  tasks:\n  - debug: msg=x\n   bad: [\n");
        assert!(e.message.starts_with("YAML"), "{e}");

        let e = load_err(
            "- hosts: all\n  tasks:\n    - ansible.builtin.shell: x\n      ignore_errors: maybe\n",
        );
        assert!(e.message.contains("ignore_errors"), "{e}");

        let e = load_err("- tasks: []\n");
        assert!(e.message.contains("hosts"), "{e}");

        let e = load_err("- hosts: all\n  roles: [x]\n");
        assert!(
            e.message.contains("needs the playbook's other files"),
            "{e}"
        );
        let e = load_err("- hosts: all\n  nosuch: 1\n");
        assert!(e.message.contains("unknown play keyword `nosuch`"), "{e}");
    }

    /// Loads `site.yml` from an in-memory tree.
    fn load_files(files: &[(&str, &str)]) -> Result<Playbook, PlaybookError> {
        let map: std::collections::BTreeMap<String, String> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let read = |p: &str| Ok(map.get(p).cloned());
        let opts = LoadOptions {
            read: &read,
            roles_path: vec!["/shared/roles".into()],
        };
        load_tree("site.yml", &map["site.yml"], &Templar::new(), &opts)
    }

    fn flat(tasks: &[Task], out: &mut Vec<(String, String)>) {
        for t in tasks {
            match &t.kind {
                TaskKind::Action(a) => out.push((t.path.clone(), a.action.clone())),
                TaskKind::Block(b) => {
                    flat(&b.block, out);
                    flat(&b.rescue, out);
                    flat(&b.always, out);
                }
                TaskKind::Include(i) => {
                    out.push((t.path.clone(), i.action.clone()));
                    flat(&i.tasks, out);
                }
                TaskKind::Meta(_) => out.push((t.path.clone(), "meta".into())),
            }
        }
    }

    #[test]
    fn roles_includes_and_imports_load_with_their_files() {
        let pb = load_files(&[
            (
                "site.yml",
                "- import_playbook: first.yml\n- hosts: all\n  vars_files: [vars/common.yml]\n  roles:\n    - {role: web, port: 81, tags: [web]}\n    - shared\n  tasks:\n    - import_tasks: tasks/a.yml\n      tags: imp\n    - include_tasks: tasks/a.yml\n      loop: [1, 2]\n      tags: inc\n  handlers:\n    - name: restart web\n      command: /bin/true\n",
            ),
            ("first.yml", "- hosts: all\n  tasks:\n    - debug: msg=first\n"),
            ("vars/common.yml", "answer: 42\n"),
            ("tasks/a.yml", "- name: a1\n  command: /bin/true\n  notify: restart web\n  tags: own\n"),
            ("roles/web/tasks/main.yml", "- include_tasks: health.yml\n- command: /bin/echo web\n  notify: reload web\n"),
            ("roles/web/tasks/health.yml", "- debug: msg=healthy\n"),
            ("roles/web/handlers/main.yml", "- name: reload web\n  listen: web changed\n  command: /bin/true\n"),
            ("roles/web/defaults/main.yml", "port: 80\nname: web\n"),
            ("roles/web/meta/main.yml", "dependencies:\n  - role: shared\n"),
            ("/shared/roles/shared/tasks/main.yml", "- debug: msg=shared\n"),
        ])
        .unwrap();
        assert_eq!(pb.plays.len(), 2, "import_playbook's play comes first");
        let play = &pb.plays[1];
        assert_eq!(play.index, 1);
        assert_eq!(play.vars_files["answer"], 42);
        let mut got = Vec::new();
        flat(&play.tasks, &mut got);
        let got: Vec<(&str, &str)> = got.iter().map(|(p, a)| (p.as_str(), a.as_str())).collect();
        assert_eq!(
            got,
            [
                // web: its dependency `shared` first, then its tasks.
                ("1.0.block.0.block.0", "debug"),
                ("1.0.block.1", "include_tasks"),
                ("1.0.block.1.inc.0", "debug"),
                ("1.0.block.2", "command"),
                // `shared` again with the same parameters: already ran in this play. The
                // play's own tasks follow the roles with paths of their own.
                ("1.t.0.inc.0", "command"),
                ("1.t.1", "include_tasks"),
                ("1.t.1.inc.0", "command"),
            ]
        );
        // Tags: a role's pass to its tasks; a static import's too; a dynamic include's do not.
        let TaskKind::Block(web) = &play.tasks[0].kind else {
            panic!()
        };
        assert_eq!(web.block[2].tags, ["web"]);
        let TaskKind::Block(imp) = &play.tasks[1].kind else {
            panic!()
        };
        assert_eq!(imp.block[0].tags, ["imp", "own"]);
        let TaskKind::Include(inc) = &play.tasks[2].kind else {
            panic!()
        };
        assert_eq!(play.tasks[2].tags, ["inc"]);
        assert_eq!(play.tasks.len(), 3);
        assert_eq!(inc.tasks[0].tags, ["own"]);
        assert!(inc.loop_items.is_some());
        // Handlers: the role's first, then the play's; a role's answers `role : name` too.
        let names: Vec<&str> = play.handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["reload web", "restart web"]);
        assert!(play.handlers[0].answers("web changed"));
        assert!(play.handlers[0].answers("web : reload web"));
        assert_eq!(play.handlers[0].task.path, "1.handlers.0");
        let role = play.tasks[0].role.as_ref().unwrap();
        assert_eq!(role.defaults["port"], 80);
        assert_eq!(role.params["port"], 81);
        assert!(
            pb.files
                .contains(&"/shared/roles/shared/tasks/main.yml".to_string())
        );
        assert_eq!(pb.role_dirs, ["roles/web", "/shared/roles/shared"]);
    }

    #[test]
    fn include_errors_name_the_file_and_what_to_do() {
        let err = |files: &[(&str, &str)]| load_files(files).unwrap_err().to_string();
        let e = err(&[(
            "site.yml",
            "- hosts: all\n  tasks:\n    - include_tasks: nope.yml\n",
        )]);
        assert!(e.contains("no file `nope.yml`"), "{e}");
        let e = err(&[(
            "site.yml",
            "- hosts: all\n  tasks:\n    - import_tasks: ../../etc/x.yml\n",
        )]);
        assert!(e.contains("outside the playbook's directory"), "{e}");
        let e = err(&[(
            "site.yml",
            "- hosts: all\n  tasks:\n    - include_tasks: \"{{ f }}.yml\"\n",
        )]);
        assert!(e.contains("name the file literally"), "{e}");
        let e = err(&[(
            "site.yml",
            "- hosts: all\n  tasks:\n    - command: /bin/true\n      notify: nobody\n",
        )]);
        assert!(e.starts_with("site.yml:3:7: notify: no handler"), "{e}");
        let e = err(&[
            (
                "site.yml",
                "- hosts: all\n  tasks:\n    - import_tasks: a.yml\n",
            ),
            ("a.yml", "- import_tasks: a.yml\n"),
        ]);
        assert!(e.contains("too deep"), "{e}");
        let e = err(&[("site.yml", "- hosts: all\n  roles: [ghost]\n")]);
        assert!(
            e.contains("role `ghost` was not found") && e.contains("/shared/roles/ghost"),
            "{e}"
        );
        let e = err(&[
            (
                "site.yml",
                "- hosts: all\n  tasks:\n    - import_tasks: t.yml\n",
            ),
            ("t.yml", "- name: x\n  apt: name=nginx\n"),
        ]);
        assert!(
            e.starts_with("t.yml:2:3:") && e.contains("Rampart has no `apt`"),
            "{e}"
        );
        let e = err(&[(
            "site.yml",
            "- hosts: all\n  tasks:\n    - command: /bin/true\n      delegate_to: db1\n",
        )]);
        assert!(e.contains("only on its own host"), "{e}");
    }

    #[test]
    fn yaml_11_booleans_in_keywords() {
        let pb = load(
            "pb.yml",
            "- hosts: all\n  gather_facts: no\n  tasks:\n    - command: /bin/false\n      ignore_errors: yes\n",
            &Templar::new(),
        )
        .unwrap();
        assert_eq!(pb.plays[0].tasks[0].ignore_errors, Some(Value::Bool(true)));
    }
}

/// Property tests: the loader validates any text, and the shipped playbooks mutated at random,
/// without a panic; a playbook that loads has at least one play.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const SHIPPED: &[&str] = &[
        include_str!("../../../playbooks/production-deploy-transactional.yml"),
        include_str!("../../../playbooks/rollback-production-safe.yml"),
        include_str!("../../../playbooks/demo-rescue.yml"),
    ];
    const TOKENS: &[&str] = &[
        "- hosts: all\n",
        "  tasks:\n",
        "    - name: t\n",
        "      command: echo hi\n",
        "  ",
        "      when: x is defined\n",
        "block:",
        "rescue:",
        "always:",
        "loop: [1, 2]",
        "{{ x }}",
        "{% if x %}",
        "serial: [1, \"50%\"]",
        "vars:",
        "handlers:",
        "notify: h",
        "register: r",
        "until: r.rc == 0",
        "retries: 3",
        "delay: 0",
        "import_tasks: x.yml",
        "\n",
        "- ",
        ": ",
        "debug: msg=hi",
        "set_fact:",
        "failed_when: false",
        "check_mode: true",
        "ignore_errors: yes",
        "max_fail_percentage: 30",
        "tags: [a]",
        "args:",
        "environment:",
        "é",
    ];

    /// Deletes, duplicates or inserts a token at byte fractions of a shipped playbook.
    fn mutated() -> impl Strategy<Value = String> {
        let edit = (
            0.0..1.0f64,
            0usize..40,
            prop::sample::select(TOKENS),
            0u8..3,
        );
        (
            prop::sample::select(SHIPPED),
            prop::collection::vec(edit, 1..4),
        )
            .prop_map(|(text, edits)| {
                let mut text = text.to_string();
                for (at, len, token, kind) in edits {
                    let floor = |mut i: usize, t: &str| {
                        while !t.is_char_boundary(i) {
                            i -= 1
                        }
                        i
                    };
                    let start = floor((at * text.len() as f64) as usize, &text);
                    let end = floor((start + len).min(text.len()), &text);
                    match kind {
                        0 => text.replace_range(start..end, ""),
                        1 => {
                            let copy = text[start..end].to_string();
                            text.insert_str(start, &copy)
                        }
                        _ => text.insert_str(start, token),
                    }
                }
                text
            })
    }

    proptest! {
        #![proptest_config(rampart_fuzz::config(150))]

        #[test]
        fn fuzz_load_never_panics(text in prop_oneof![rampart_fuzz::text(TOKENS, 40), mutated()]) {
            let templar = Templar::new();
            if let Ok(book) = load("fuzz.yml", &text, &templar) {
                prop_assert!(!book.plays.is_empty());
            }
        }
    }
}
