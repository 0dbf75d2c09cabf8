//! Modules: the actions a task can run, with Ansible's names, arguments and results.
//!
//! Each module is declared by a [`ModuleSpec`]: its arguments (checked when the playbook is
//! loaded, before anything runs), how its free-form text is read, and a `run` function that gets
//! templated, type-checked arguments and returns Ansible's result object (`changed`, `failed`,
//! `msg`, ...). Modules that change the host honour check mode by reporting what would change.

use std::path::PathBuf;

use minijinja::value::Value as MjValue;
use serde_json::{Map, Value, json};

pub use rampart_playbook::schema::{
    ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema, arg_strings, coerce, parse_bool,
};
use rampart_playbook::template::Templar;

pub mod archive;
pub mod capture_state;
pub mod command;
pub mod control;
pub mod cron;
pub mod deploy_lock;
pub mod files;
pub mod forensics;
pub mod health;
pub mod migrate;
pub mod net;
pub mod proxy_switch;
pub mod release;
pub mod release_tree;
pub mod service;
pub mod textedit;
pub mod users;
pub mod wait_for;

/// The JSON object a module returns.
pub type ModuleResult = Map<String, Value>;

/// What a module may use while it runs.
#[derive(Debug)]
pub struct ModuleCtx<'a> {
    /// Check mode: change nothing.
    pub check: bool,
    /// `become_user`: the user a command runs as (`None`: the agent's own, root).
    pub become_user: Option<&'a str>,
    /// The templating engine, for modules that evaluate expressions.
    pub templar: &'a Templar,
    /// The task's variables.
    pub scope: &'a MjValue,
    /// Where relative `src` paths are looked up (the playbook's directory, when known).
    pub base_dir: Option<PathBuf>,
    /// The host's state directory (`apps/`, `artifacts/`, `journal/`).
    pub state_dir: &'a std::path::Path,
    /// The transaction running the module.
    pub txid: &'a str,
    /// Reports progress while the module runs (journaled and streamed as `task_progress`).
    pub progress: Option<Progress<'a>>,
}

/// Where a running module reports progress.
#[derive(Clone, Copy)]
pub struct Progress<'a>(pub &'a dyn Fn(Value));

impl Progress<'_> {
    /// Reports one piece of progress.
    pub fn report(&self, data: Value) {
        (self.0)(data);
    }
}

impl std::fmt::Debug for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// A built-in module: its schema (the playbook language's half, [`ModuleSchema`]) and the
/// function that runs it.
#[derive(Debug)]
pub struct ModuleSpec {
    /// Name, arguments, free form and check-mode behaviour.
    pub schema: &'static ModuleSchema,
    /// Runs the module with templated, type-checked arguments.
    pub run: fn(&Map<String, Value>, &ModuleCtx<'_>) -> ModuleResult,
}

impl std::ops::Deref for ModuleSpec {
    type Target = ModuleSchema;
    fn deref(&self) -> &ModuleSchema {
        self.schema
    }
}

/// Every module, in the order `--help` lists them.
pub static MODULES: &[&ModuleSpec] = &[
    &command::COMMAND,
    &command::SHELL,
    &control::FAIL,
    &control::ASSERT,
    &control::DEBUG,
    &control::SET_FACT,
    &control::PAUSE,
    &control::META,
    &control::INCLUDE_VARS,
    &wait_for::WAIT_FOR,
    &files::FILE,
    &files::COPY,
    &files::TEMPLATE,
    &files::STAT,
    &net::URI,
    &net::GET_URL,
    &archive::UNARCHIVE,
    &textedit::LINEINFILE,
    &textedit::BLOCKINFILE,
    &textedit::REPLACE,
    &capture_state::CAPTURE_STATE,
    &deploy_lock::DEPLOY_LOCK,
    &release::RELEASE,
    &service::SERVICE,
    &service::SYSTEMD_SERVICE,
    &service::SYSTEMD,
    &forensics::FORENSICS,
    &migrate::MIGRATE,
    &health::HEALTH,
    &proxy_switch::PROXY_SWITCH,
    &cron::CRON,
    &users::USER,
    &users::GROUP,
];

/// The module that runs a schema the loader resolved; every built-in schema has one (a unit
/// test holds the two lists together).
pub fn for_schema(schema: &ModuleSchema) -> Option<&'static ModuleSpec> {
    MODULES
        .iter()
        .copied()
        .find(|m| std::ptr::eq(m.schema, schema))
}

/// A failed result with `msg`.
pub fn failed(msg: impl Into<String>) -> ModuleResult {
    let mut m = Map::new();
    m.insert("changed".into(), json!(false));
    m.insert("failed".into(), json!(true));
    m.insert("msg".into(), json!(msg.into()));
    m
}

/// A successful result.
pub fn ok(changed: bool) -> ModuleResult {
    let mut m = Map::new();
    m.insert("changed".into(), json!(changed));
    m
}

/// Reads a string argument (already type-checked).
pub fn arg_str<'a>(args: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    args.get(name).and_then(Value::as_str)
}

/// Reads a boolean argument (already type-checked).
pub fn arg_bool(args: &Map<String, Value>, name: &str) -> Option<bool> {
    args.get(name).and_then(Value::as_bool)
}

/// Reads a number argument (already type-checked).
pub fn arg_f64(args: &Map<String, Value>, name: &str) -> Option<f64> {
    args.get(name).and_then(Value::as_f64)
}

/// Reads an integer argument (already type-checked).
pub fn arg_i64(args: &Map<String, Value>, name: &str) -> Option<i64> {
    args.get(name).and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_schema_has_exactly_one_run_function() {
        let builtin = rampart_playbook::modules::BUILTIN;
        assert_eq!(MODULES.len(), builtin.len());
        for schema in builtin {
            let runners = MODULES
                .iter()
                .filter(|m| std::ptr::eq(m.schema, *schema))
                .count();
            assert_eq!(runners, 1, "{}", schema.name);
            assert!(for_schema(schema).is_some());
        }
    }
}

/// Runs modules in unit tests without an engine: one place builds the [`ModuleCtx`].
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    pub(crate) use rampart_host::testing::HttpsServer;

    use serde_json::Value;

    use super::{ModuleCtx, ModuleResult, ModuleSpec};
    use rampart_playbook::template::{Layer, Scope, Templar, from_json};

    /// How a test calls a module; `Call::default()` is a live (non-check) run with no variables.
    #[derive(Debug, Default)]
    pub(crate) struct Call<'a> {
        pub check: bool,
        pub state_dir: Option<&'a Path>,
        pub txid: Option<&'a str>,
        pub base_dir: Option<PathBuf>,
        /// `become_user`.
        pub become_user: Option<&'a str>,
        /// Variables visible to the module, as a JSON object.
        pub vars: Option<Value>,
    }

    impl Call<'_> {
        /// Runs `spec` with `args` (a JSON object).
        pub(crate) fn run(&self, spec: &ModuleSpec, args: Value) -> ModuleResult {
            let templar = Arc::new(Templar::new());
            let vars: BTreeMap<_, _> = self
                .vars
                .as_ref()
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect())
                .unwrap_or_default();
            let scope = Scope::value(templar.clone(), vec![Layer::Fixed(Arc::new(vars))]);
            let ctx = ModuleCtx {
                become_user: self.become_user,
                check: self.check,
                templar: &templar,
                scope: &scope,
                base_dir: self.base_dir.clone(),
                state_dir: self.state_dir.unwrap_or(Path::new("/nonexistent")),
                txid: self.txid.unwrap_or("test"),
                progress: None,
            };
            let Value::Object(args) = args else {
                panic!("module arguments must be a JSON object");
            };
            (spec.run)(&args, &ctx)
        }
    }
}
