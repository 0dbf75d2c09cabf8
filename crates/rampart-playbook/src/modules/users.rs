//! Argument schemas of `user` and `group` (their run functions are the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `user`: a local account, through useradd/usermod/userdel.
pub static USER: ModuleSchema = ModuleSchema {
    name: "user",
    args: &[
        ArgSpec::req("name", ArgKind::Str).aliases(&["user"]),
        ArgSpec::opt("state", ArgKind::Str).choices(&["present", "absent"]),
        ArgSpec::opt("uid", ArgKind::Int),
        ArgSpec::opt("non_unique", ArgKind::Bool),
        ArgSpec::opt("group", ArgKind::Str),
        ArgSpec::opt("groups", ArgKind::List),
        ArgSpec::opt("append", ArgKind::Bool),
        ArgSpec::opt("comment", ArgKind::Str),
        ArgSpec::opt("home", ArgKind::Str),
        ArgSpec::opt("shell", ArgKind::Str),
        ArgSpec::opt("password", ArgKind::Str),
        ArgSpec::opt("create_home", ArgKind::Bool).aliases(&["createhome"]),
        ArgSpec::opt("move_home", ArgKind::Bool),
        ArgSpec::opt("system", ArgKind::Bool),
        ArgSpec::opt("remove", ArgKind::Bool),
        ArgSpec::opt("force", ArgKind::Bool),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};

/// `group`: a local group, through groupadd/groupmod/groupdel.
pub static GROUP: ModuleSchema = ModuleSchema {
    name: "group",
    args: &[
        ArgSpec::req("name", ArgKind::Str),
        ArgSpec::opt("state", ArgKind::Str).choices(&["present", "absent"]),
        ArgSpec::opt("gid", ArgKind::Int),
        ArgSpec::opt("system", ArgKind::Bool),
        ArgSpec::opt("non_unique", ArgKind::Bool),
        ArgSpec::opt("force", ArgKind::Bool),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};
