//! Argument schemas of `deploy_lock` (their run functions are the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `deploy_lock`.
pub static DEPLOY_LOCK: ModuleSchema = ModuleSchema {
    name: "deploy_lock",
    args: &[
        ArgSpec::req("state", ArgKind::Str).choices(&["acquired", "released"]),
        ArgSpec::opt("name", ArgKind::Str),
        ArgSpec::opt("timeout", ArgKind::Num),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};
