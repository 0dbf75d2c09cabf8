//! Argument schemas of `wait_for` (their run functions are the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `wait_for`: waits for a port or a file.
pub static WAIT_FOR: ModuleSchema = ModuleSchema {
    name: "wait_for",
    args: &[
        ArgSpec::opt("host", ArgKind::Str),
        ArgSpec::opt("port", ArgKind::Int),
        ArgSpec::opt("path", ArgKind::Str),
        ArgSpec::opt("state", ArgKind::Str).choices(&["started", "stopped", "present", "absent"]),
        ArgSpec::opt("timeout", ArgKind::Num),
        ArgSpec::opt("delay", ArgKind::Num),
        ArgSpec::opt("sleep", ArgKind::Num),
        ArgSpec::opt("connect_timeout", ArgKind::Num),
        ArgSpec::opt("search_regex", ArgKind::Str),
        ArgSpec::opt("msg", ArgKind::Str),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[&["port", "path"]],
    exclusive: &[("port", "path")],
    check_mode: CheckMode::Supported,
};
