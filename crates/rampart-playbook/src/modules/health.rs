//! Argument schemas of `health` (their run functions are the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `health`.
pub static HEALTH: ModuleSchema = ModuleSchema {
    name: "health",
    args: &[
        ArgSpec::opt("suite", ArgKind::Str),
        // Not templated by the engine: each check is rendered when it runs, so a check skipped
        // by its `when` may name variables that are not defined.
        ArgSpec::opt("checks", ArgKind::Expr),
        ArgSpec::opt("vars", ArgKind::Map),
        ArgSpec::opt("parallelism", ArgKind::Int),
        ArgSpec::opt("deadline", ArgKind::Num),
        // Only the suite's critical checks (an emergency rollback's verification).
        ArgSpec::opt("critical_only", ArgKind::Bool),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[&["suite", "checks"]],
    exclusive: &[("suite", "checks")],
    check_mode: CheckMode::Skip,
};
