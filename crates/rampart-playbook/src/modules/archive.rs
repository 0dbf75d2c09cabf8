//! Argument schema of `unarchive` (its run function is the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `unarchive`: unpacks a tar or tar.gz archive into an existing directory.
pub static UNARCHIVE: ModuleSchema = ModuleSchema {
    name: "unarchive",
    args: &[
        ArgSpec::req("src", ArgKind::Str),
        ArgSpec::req("dest", ArgKind::Str),
        ArgSpec::opt("remote_src", ArgKind::Bool),
        ArgSpec::opt("creates", ArgKind::Str),
        ArgSpec::opt("mode", ArgKind::Any),
        ArgSpec::opt("list_files", ArgKind::Bool),
        ArgSpec::opt("include", ArgKind::List),
        ArgSpec::opt("exclude", ArgKind::List),
        // Accepted so that the refusal can say why (the agent refuses them when set).
        ArgSpec::opt("extra_opts", ArgKind::List),
        ArgSpec::opt("keep_newer", ArgKind::Bool),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[("include", "exclude")],
    check_mode: CheckMode::Supported,
};
