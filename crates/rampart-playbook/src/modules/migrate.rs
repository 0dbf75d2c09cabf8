//! Argument schemas of `migrate` (their run functions are the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `migrate`.
pub static MIGRATE: ModuleSchema = ModuleSchema {
    name: "migrate",
    args: &[
        ArgSpec::opt("state", ArgKind::Str).choices(&[
            "validated",
            "applied",
            "restored",
            "released",
            "undone",
        ]),
        ArgSpec::opt("url", ArgKind::Str),
        ArgSpec::opt("user", ArgKind::Str),
        ArgSpec::opt("password", ArgKind::Str),
        ArgSpec::opt("locations", ArgKind::List),
        ArgSpec::opt("target_locations", ArgKind::List),
        ArgSpec::opt("schemas", ArgKind::List),
        ArgSpec::opt("table", ArgKind::Str),
        ArgSpec::opt("target", ArgKind::Str),
        ArgSpec::opt("placeholders", ArgKind::Map),
        ArgSpec::opt("baseline_on_migrate", ArgKind::Bool),
        ArgSpec::opt("out_of_order", ArgKind::Bool),
        ArgSpec::opt("mixed", ArgKind::Bool),
        ArgSpec::opt("config_files", ArgKind::List),
        ArgSpec::opt("restore_point", ArgKind::Str).choices(&["undo", "dump", "template", "none"]),
        ArgSpec::opt("keep_restore_point", ArgKind::Bool),
        ArgSpec::opt("maintenance_db", ArgKind::Str),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};
