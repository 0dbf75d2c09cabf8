//! Argument schemas of `service` (their run functions are the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `service`.
pub static SERVICE: ModuleSchema = ModuleSchema {
    name: "service",
    args: &[
        ArgSpec::req("name", ArgKind::Str),
        ArgSpec::req("state", ArgKind::Str).choices(&["started", "stopped", "restarted"]),
        ArgSpec::opt("manager", ArgKind::Str).choices(&["systemd", "command"]),
        ArgSpec::opt("timeout", ArgKind::Num),
        ArgSpec::opt("start", ArgKind::Str),
        ArgSpec::opt("stop", ArgKind::Str),
        ArgSpec::opt("status", ArgKind::Str),
        ArgSpec::opt("systemctl_prefix", ArgKind::List),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};
