//! Argument schemas of `forensics` (their run functions are the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `forensics`.
pub static FORENSICS: ModuleSchema = ModuleSchema {
    name: "forensics",
    args: &[
        ArgSpec::req("failed_version", ArgKind::Str),
        ArgSpec::opt("restored_version", ArgKind::Str),
        ArgSpec::opt("components", ArgKind::List),
        ArgSpec::opt("services", ArgKind::List),
        ArgSpec::opt("dest_dir", ArgKind::Str),
        ArgSpec::opt("failed_task", ArgKind::Any),
        ArgSpec::opt("failed_result", ArgKind::Any),
        ArgSpec::opt("state", ArgKind::Any),
        ArgSpec::opt("health", ArgKind::Any),
        ArgSpec::opt("keep", ArgKind::Int),
        ArgSpec::opt("max_age_days", ArgKind::Int),
        ArgSpec::opt("phase", ArgKind::Str).choices(&["all", "capture", "complete"]),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};
