//! Argument schemas of `capture_state` (their run functions are the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `capture_state`.
pub static CAPTURE_STATE: ModuleSchema = ModuleSchema {
    name: "capture_state",
    args: &[
        ArgSpec::opt("components", ArgKind::List),
        ArgSpec::opt("services", ArgKind::List),
        ArgSpec::opt("dest_dir", ArgKind::Str),
        ArgSpec::opt("database", ArgKind::Any),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};
