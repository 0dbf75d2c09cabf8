//! Argument schemas of the text-editing modules (`lineinfile`, `blockinfile`, `replace`); their
//! run functions are the agent's.

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `lineinfile`: makes sure one line is in a file (or is not), optionally matched by a regex.
pub static LINEINFILE: ModuleSchema = ModuleSchema {
    name: "lineinfile",
    args: &[
        ArgSpec::req("path", ArgKind::Str).aliases(&["dest", "destfile", "name"]),
        ArgSpec::opt("state", ArgKind::Str).choices(&["absent", "present"]),
        ArgSpec::opt("regexp", ArgKind::Str).aliases(&["regex"]),
        ArgSpec::opt("search_string", ArgKind::Str),
        ArgSpec::opt("line", ArgKind::Str).aliases(&["value"]),
        ArgSpec::opt("insertafter", ArgKind::Str),
        ArgSpec::opt("insertbefore", ArgKind::Str),
        ArgSpec::opt("backrefs", ArgKind::Bool),
        ArgSpec::opt("create", ArgKind::Bool),
        ArgSpec::opt("backup", ArgKind::Bool),
        ArgSpec::opt("firstmatch", ArgKind::Bool),
        ArgSpec::opt("validate", ArgKind::Str),
        ArgSpec::opt("mode", ArgKind::Any),
        ArgSpec::opt("owner", ArgKind::Any),
        ArgSpec::opt("group", ArgKind::Any),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[
        ("insertbefore", "insertafter"),
        ("regexp", "search_string"),
        ("backrefs", "search_string"),
    ],
    check_mode: CheckMode::Supported,
};

/// `blockinfile`: inserts, updates or removes a block of lines between two marker lines.
pub static BLOCKINFILE: ModuleSchema = ModuleSchema {
    name: "blockinfile",
    args: &[
        ArgSpec::req("path", ArgKind::Str).aliases(&["dest", "destfile", "name"]),
        ArgSpec::opt("state", ArgKind::Str).choices(&["absent", "present"]),
        ArgSpec::opt("marker", ArgKind::Str),
        ArgSpec::opt("block", ArgKind::Str).aliases(&["content"]),
        ArgSpec::opt("insertafter", ArgKind::Str),
        ArgSpec::opt("insertbefore", ArgKind::Str),
        ArgSpec::opt("create", ArgKind::Bool),
        ArgSpec::opt("backup", ArgKind::Bool),
        ArgSpec::opt("validate", ArgKind::Str),
        ArgSpec::opt("marker_begin", ArgKind::Str),
        ArgSpec::opt("marker_end", ArgKind::Str),
        ArgSpec::opt("append_newline", ArgKind::Bool),
        ArgSpec::opt("prepend_newline", ArgKind::Bool),
        ArgSpec::opt("mode", ArgKind::Any),
        ArgSpec::opt("owner", ArgKind::Any),
        ArgSpec::opt("group", ArgKind::Any),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[("insertbefore", "insertafter")],
    check_mode: CheckMode::Supported,
};

/// `replace`: replaces every match of a regex (Python's multiline mode) in a file.
pub static REPLACE: ModuleSchema = ModuleSchema {
    name: "replace",
    args: &[
        ArgSpec::req("path", ArgKind::Str).aliases(&["dest", "destfile", "name"]),
        ArgSpec::req("regexp", ArgKind::Str),
        ArgSpec::opt("replace", ArgKind::Str),
        ArgSpec::opt("after", ArgKind::Str),
        ArgSpec::opt("before", ArgKind::Str),
        ArgSpec::opt("backup", ArgKind::Bool),
        ArgSpec::opt("validate", ArgKind::Str),
        ArgSpec::opt("encoding", ArgKind::Str),
        ArgSpec::opt("mode", ArgKind::Any),
        ArgSpec::opt("owner", ArgKind::Any),
        ArgSpec::opt("group", ArgKind::Any),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};
