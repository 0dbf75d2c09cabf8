//! Argument schemas of `command` and `shell` (their run functions are the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

const COMMON_ARGS: [ArgSpec; 7] = [
    ArgSpec::opt("_raw_params", ArgKind::Str),
    ArgSpec::opt("cmd", ArgKind::Str),
    ArgSpec::opt("chdir", ArgKind::Str),
    ArgSpec::opt("creates", ArgKind::Str),
    ArgSpec::opt("removes", ArgKind::Str),
    ArgSpec::opt("stdin", ArgKind::Str),
    ArgSpec::opt("strip_empty_ends", ArgKind::Bool),
];

static COMMAND_ARGS: [ArgSpec; 8] = [
    COMMON_ARGS[0],
    COMMON_ARGS[1],
    COMMON_ARGS[2],
    COMMON_ARGS[3],
    COMMON_ARGS[4],
    COMMON_ARGS[5],
    COMMON_ARGS[6],
    ArgSpec::opt("argv", ArgKind::List),
];

static SHELL_ARGS: [ArgSpec; 8] = [
    COMMON_ARGS[0],
    COMMON_ARGS[1],
    COMMON_ARGS[2],
    COMMON_ARGS[3],
    COMMON_ARGS[4],
    COMMON_ARGS[5],
    COMMON_ARGS[6],
    ArgSpec::opt("executable", ArgKind::Str),
];

/// `command`: runs a program directly, without a shell.
pub static COMMAND: ModuleSchema = ModuleSchema {
    name: "command",
    args: &COMMAND_ARGS,
    free_form: FreeForm::Command,
    any_args: false,
    one_of: &[&["_raw_params", "cmd", "argv"]],
    exclusive: &[
        ("_raw_params", "argv"),
        ("cmd", "argv"),
        ("_raw_params", "cmd"),
    ],
    check_mode: CheckMode::Skip,
};

/// `shell`: runs a command line through `/bin/sh -c`.
pub static SHELL: ModuleSchema = ModuleSchema {
    name: "shell",
    args: &SHELL_ARGS,
    free_form: FreeForm::Command,
    any_args: false,
    one_of: &[&["_raw_params", "cmd"]],
    exclusive: &[("_raw_params", "cmd")],
    check_mode: CheckMode::Skip,
};
