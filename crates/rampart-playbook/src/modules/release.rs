//! Argument schemas of `release` (their run functions are the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `release`: stages, activates, restores and prunes a component's releases.
pub static RELEASE: ModuleSchema = ModuleSchema {
    name: "release",
    args: &[
        ArgSpec::req("component", ArgKind::Str),
        ArgSpec::opt("version", ArgKind::Str),
        ArgSpec::opt("artifact", ArgKind::Str),
        ArgSpec::opt("sha256", ArgKind::Str),
        ArgSpec::opt("path", ArgKind::Str),
        ArgSpec::req("state", ArgKind::Str).choices(&[
            "staged", "active", "restored", "pruned", "failed", "verified",
        ]),
        ArgSpec::opt("keep", ArgKind::Int),
        ArgSpec::opt("max_bytes", ArgKind::Int),
        ArgSpec::opt("max_entries", ArgKind::Int),
        ArgSpec::opt("timeout", ArgKind::Num),
        ArgSpec::opt("ca_file", ArgKind::Str),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};
