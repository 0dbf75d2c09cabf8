//! Argument schemas of the control modules (`fail`, `assert`, `debug`, `set_fact`, `pause`); their
//! run functions are the agent's.

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `fail`: fails the task with `msg`.
pub static FAIL: ModuleSchema = ModuleSchema {
    name: "fail",
    args: &[ArgSpec::opt("msg", ArgKind::Any)],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};

/// `assert`: fails unless every expression in `that` holds.
pub static ASSERT: ModuleSchema = ModuleSchema {
    name: "assert",
    args: &[
        ArgSpec::req("that", ArgKind::Expr),
        ArgSpec::opt("fail_msg", ArgKind::Any).aliases(&["msg"]),
        ArgSpec::opt("success_msg", ArgKind::Any),
        ArgSpec::opt("quiet", ArgKind::Bool),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};

/// `debug`: prints `msg`, or the value of the variable `var`.
pub static DEBUG: ModuleSchema = ModuleSchema {
    name: "debug",
    args: &[
        ArgSpec::opt("msg", ArgKind::Any),
        ArgSpec::opt("var", ArgKind::Expr),
        ArgSpec::opt("verbosity", ArgKind::Int),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[("msg", "var")],
    check_mode: CheckMode::Supported,
};

/// `set_fact`: sets host variables that later tasks see (and that survive into rescue).
pub static SET_FACT: ModuleSchema = ModuleSchema {
    name: "set_fact",
    args: &[ArgSpec::opt("cacheable", ArgKind::Bool)],
    free_form: FreeForm::KeyValue,
    any_args: true,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};

/// `pause`: waits `seconds` (or `minutes`). Prompts are not supported: nobody answers them.
pub static PAUSE: ModuleSchema = ModuleSchema {
    name: "pause",
    args: &[
        ArgSpec::opt("seconds", ArgKind::Num),
        ArgSpec::opt("minutes", ArgKind::Num),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[&["seconds", "minutes"]],
    exclusive: &[("seconds", "minutes")],
    check_mode: CheckMode::Supported,
};

/// `meta`: `flush_handlers`, `noop`, `end_play`, `end_host`. The engine runs it itself; it is
/// not journaled and not counted, as Ansible does not count it.
pub static META: ModuleSchema = ModuleSchema {
    name: "meta",
    args: &[ArgSpec::req("_raw_params", ArgKind::Str).choices(&[
        "flush_handlers",
        "noop",
        "end_play",
        "end_host",
    ])],
    free_form: FreeForm::Command,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};

/// `include_vars`: the variables of a YAML file, at include_vars precedence (above task vars,
/// below `set_fact`). The loader reads the file when the playbook is loaded (`_data`), so it is
/// validated and shipped with the playbook like every other file.
pub static INCLUDE_VARS: ModuleSchema = ModuleSchema {
    name: "include_vars",
    args: &[
        ArgSpec::opt("file", ArgKind::Str).aliases(&["_raw_params"]),
        ArgSpec::opt("name", ArgKind::Str),
        ArgSpec::opt("_data", ArgKind::Map),
    ],
    free_form: FreeForm::Command,
    any_args: false,
    one_of: &[&["file"]],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};
