//! The playbook model: plays, tasks and blocks as Ansible writes them, validated whole before
//! anything runs.
//!
//! Input: YAML text and a name for messages. Output: a [`Playbook`] whose every task has a
//! resolved module with known arguments and whose every template compiles, or the first
//! [`PlaybookError`] with `file:line:column` and what to do. Each task gets a stable `path`
//! (`0.2.rescue.1` = play 0, task 2, its rescue's task 1) that the journal uses to find its place
//! again after a crash.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::PlaybookError;
use crate::model::{Action, Block, Play, Playbook, Task, TaskKind};
use crate::modules;
use crate::schema::{self, ArgKind, FreeForm, ModuleSchema};
use crate::template::{Templar, is_template};
use crate::yaml::{self, Limits, Mark, Node, Yaml, YamlError};

const PLAY_KEYS: &[&str] = &[
    "name",
    "hosts",
    "vars",
    "serial",
    "max_fail_percentage",
    "tasks",
    "gather_facts",
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
];
const LOOP_CONTROL_KEYS: &[&str] = &["loop_var", "index_var", "label"];

struct Loader<'a> {
    file: &'a str,
    templar: &'a Templar,
}

impl Loader<'_> {
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

    fn play(&self, index: usize, y: &Yaml) -> Result<Play, PlaybookError> {
        let pairs = self.map(y, "a play")?;
        let mut play = Play {
            index,
            name: String::new(),
            hosts: String::new(),
            vars: Arc::new(Map::new()),
            serial: None,
            max_fail_percentage: None,
            gather_facts: false,
            tasks: Vec::new(),
            mark: y.mark,
        };
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
                "tasks" => {
                    play.tasks = self.task_list(v, &index.to_string(), "a play's `tasks`")?;
                }
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
        if play.name.is_empty() {
            play.name = play.hosts.clone();
        }
        Ok(play)
    }

    fn task_list(&self, y: &Yaml, prefix: &str, what: &str) -> Result<Vec<Task>, PlaybookError> {
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
            .map(|(i, t)| self.task(t, format!("{prefix}.{i}")))
            .collect()
    }

    fn task(&self, y: &Yaml, path: String) -> Result<Task, PlaybookError> {
        let pairs = self.map(y, "a task")?;
        let is_block = pairs.iter().any(|(k, _)| k.as_str() == Some("block"));
        let mut task = Task {
            path,
            name: None,
            mark: y.mark,
            when: Vec::new(),
            vars: None,
            ignore_errors: None,
            no_log: None,
            check_mode: None,
            kind: TaskKind::Block(Block {
                block: Vec::new(),
                rescue: Vec::new(),
                always: Vec::new(),
            }),
        };
        // Keywords shared by tasks and blocks.
        for (k, v) in pairs {
            match self.key(k)? {
                "name" => task.name = Some(self.string(v, "a task's `name`")?),
                "when" => task.when = self.conditions(v, "when")?,
                "vars" => task.vars = Some(self.vars(v, "a task's `vars`")?),
                "ignore_errors" => task.ignore_errors = Some(self.flag(v, "ignore_errors")?),
                "no_log" => task.no_log = Some(self.flag(v, "no_log")?),
                "check_mode" => task.check_mode = Some(self.flag(v, "check_mode")?),
                _ => {}
            }
        }
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
                            self.task_list(v, &format!("{}.block", task.path), "`block`")?
                    }
                    "rescue" => {
                        block.rescue =
                            self.task_list(v, &format!("{}.rescue", task.path), "`rescue`")?
                    }
                    "always" => {
                        block.always =
                            self.task_list(v, &format!("{}.always", task.path), "`always`")?
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
        };
        for (k, v) in pairs {
            let key = self.key(k)?;
            match key {
                "name" | "when" | "vars" | "ignore_errors" | "no_log" | "check_mode" => {}
                "register" => {
                    let r = self.string(v, "`register`")?;
                    check_var_name(&r).map_err(|m| self.err(v.mark, m))?;
                    action.register = Some(r);
                }
                "loop" => {
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
                    action.loop_items = Some(v.to_json());
                }
                "loop_control" => {
                    for (lk, lv) in self.map(v, "`loop_control`")? {
                        match self.key(lk)? {
                            "loop_var" => {
                                action.loop_var = self.string(lv, "`loop_var`")?;
                                check_var_name(&action.loop_var)
                                    .map_err(|m| self.err(lv.mark, m))?;
                            }
                            "index_var" => action.index_var = Some(self.string(lv, "`index_var`")?),
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
                        return Err(self.err(
                            k.mark,
                            format!(
                                "unknown module or task keyword `{other}`; modules: {}; task keywords: {}",
                                modules::BUILTIN.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
                                TASK_KEYS.join(", ")
                            ),
                        ));
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
        self.check_args(spec, &action.args, y.mark)?;
        task.kind = TaskKind::Action(Box::new(action));
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

/// Parses and validates a playbook. Nothing is executed.
pub fn load(name: &str, text: &str, templar: &Templar) -> Result<Playbook, PlaybookError> {
    let loader = Loader {
        file: name,
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
    let items = doc.as_seq().ok_or_else(|| {
        loader.err(
            doc.mark,
            format!("a playbook must be a list of plays, not a {}", doc.kind()),
        )
    })?;
    if items.is_empty() {
        return Err(loader.err(doc.mark, "the playbook has no plays"));
    }
    let plays = items
        .iter()
        .enumerate()
        .map(|(i, p)| loader.play(i, p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Playbook {
        name: name.to_string(),
        plays,
    })
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
        assert!(e.message.contains("unknown play keyword `roles`"), "{e}");
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
