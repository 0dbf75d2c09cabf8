//! Argument schema of `proxy_switch` (its run function is the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `proxy_switch`: make one of a component's blue/green slots live in the host's nginx or
/// HAProxy.
pub static PROXY_SWITCH: ModuleSchema = ModuleSchema {
    name: "proxy_switch",
    args: &[
        ArgSpec::req("proxy", ArgKind::Str).choices(&["nginx", "haproxy"]),
        ArgSpec::req("upstream", ArgKind::Str).aliases(&["backend"]),
        ArgSpec::req("slots", ArgKind::Map),
        ArgSpec::req("to", ArgKind::Str),
        // nginx
        ArgSpec::opt("include", ArgKind::Str),
        ArgSpec::opt("nginx", ArgKind::Str),
        ArgSpec::opt("conf", ArgKind::Str),
        ArgSpec::opt("prefix", ArgKind::Str),
        ArgSpec::opt("reload", ArgKind::Str),
        ArgSpec::opt("pid_file", ArgKind::Str),
        ArgSpec::opt("confirm_url", ArgKind::Str),
        ArgSpec::opt("confirm_expect", ArgKind::Str),
        ArgSpec::opt("confirm_passes", ArgKind::Int),
        ArgSpec::opt("confirm_timeout", ArgKind::Num),
        ArgSpec::opt("timeout", ArgKind::Num),
        // haproxy
        ArgSpec::opt("socket", ArgKind::Str),
        ArgSpec::opt("ready_timeout", ArgKind::Num),
        ArgSpec::opt("drain_timeout", ArgKind::Num),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[("reload", "pid_file")],
    check_mode: CheckMode::Supported,
};
