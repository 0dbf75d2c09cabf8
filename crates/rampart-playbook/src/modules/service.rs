//! Argument schemas of `service` and its systemd names `systemd_service` and `systemd` (one
//! module; their run function is the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// The arguments of all three names.
const ARGS: &[ArgSpec] = &[
    ArgSpec::opt("name", ArgKind::Str).aliases(&["service", "unit"]),
    ArgSpec::opt("state", ArgKind::Str).choices(&["started", "stopped", "restarted", "reloaded"]),
    ArgSpec::opt("enabled", ArgKind::Bool),
    ArgSpec::opt("masked", ArgKind::Bool),
    ArgSpec::opt("daemon_reload", ArgKind::Bool).aliases(&["daemon-reload"]),
    ArgSpec::opt("scope", ArgKind::Str).choices(&["system", "user", "global"]),
    ArgSpec::opt("no_block", ArgKind::Bool),
    ArgSpec::opt("manager", ArgKind::Str).choices(&["systemd", "command"]),
    ArgSpec::opt("timeout", ArgKind::Num),
    ArgSpec::opt("start", ArgKind::Str),
    ArgSpec::opt("stop", ArgKind::Str),
    ArgSpec::opt("status", ArgKind::Str),
    ArgSpec::opt("systemctl_prefix", ArgKind::List),
];

/// `service`.
pub static SERVICE: ModuleSchema = ModuleSchema {
    name: "service",
    args: ARGS,
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[&["state", "enabled", "masked", "daemon_reload"]],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};

/// `systemd_service`: the same module under Ansible's systemd name.
pub static SYSTEMD_SERVICE: ModuleSchema = ModuleSchema {
    name: "systemd_service",
    ..SERVICE
};

/// `systemd`: the older name of `systemd_service`.
pub static SYSTEMD: ModuleSchema = ModuleSchema {
    name: "systemd",
    ..SERVICE
};
