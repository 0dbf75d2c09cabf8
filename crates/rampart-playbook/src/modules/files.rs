//! Argument schemas of the file modules (`file`, `copy`, `template`, `stat`); their run functions
//! are the agent's.

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `file`: manages a path's kind (file, directory, symlink, hard link, absent), mode, owner and
/// group, recursively for a directory.
pub static FILE: ModuleSchema = ModuleSchema {
    name: "file",
    args: &[
        ArgSpec::req("path", ArgKind::Str).aliases(&["dest", "name"]),
        ArgSpec::opt("state", ArgKind::Str).choices(&[
            "file",
            "directory",
            "absent",
            "touch",
            "link",
            "hard",
        ]),
        ArgSpec::opt("src", ArgKind::Str),
        ArgSpec::opt("mode", ArgKind::Any),
        ArgSpec::opt("owner", ArgKind::Any),
        ArgSpec::opt("group", ArgKind::Any),
        ArgSpec::opt("recurse", ArgKind::Bool),
        ArgSpec::opt("force", ArgKind::Bool),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};

/// `copy`: writes `content` or the `src` file to `dest`, atomically.
pub static COPY: ModuleSchema = ModuleSchema {
    name: "copy",
    args: &[
        ArgSpec::req("dest", ArgKind::Str),
        // Any, not Str: Ansible writes a mapping or list given as content as JSON.
        ArgSpec::opt("content", ArgKind::Any),
        ArgSpec::opt("src", ArgKind::Str),
        ArgSpec::opt("mode", ArgKind::Any),
        ArgSpec::opt("owner", ArgKind::Any),
        ArgSpec::opt("group", ArgKind::Any),
        ArgSpec::opt("force", ArgKind::Bool),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[&["content", "src"]],
    exclusive: &[("content", "src")],
    check_mode: CheckMode::Supported,
};

/// `template`: renders the Jinja2 file `src` with the task's variables and writes it to `dest`.
pub static TEMPLATE: ModuleSchema = ModuleSchema {
    name: "template",
    args: &[
        ArgSpec::req("src", ArgKind::Str),
        ArgSpec::req("dest", ArgKind::Str),
        ArgSpec::opt("mode", ArgKind::Any),
        ArgSpec::opt("owner", ArgKind::Any),
        ArgSpec::opt("group", ArgKind::Any),
        ArgSpec::opt("force", ArgKind::Bool),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};

/// `stat`: reports a path's metadata; never changes anything.
pub static STAT: ModuleSchema = ModuleSchema {
    name: "stat",
    args: &[
        ArgSpec::req("path", ArgKind::Str).aliases(&["dest", "name"]),
        ArgSpec::opt("get_checksum", ArgKind::Bool),
        ArgSpec::opt("follow", ArgKind::Bool),
        ArgSpec::opt("checksum_algorithm", ArgKind::Str)
            .aliases(&["checksum", "checksum_algo"])
            .choices(&["sha224", "sha256", "sha384", "sha512"]),
        // Accepted for compatibility and ignored (no MIME type or file attributes are reported).
        ArgSpec::opt("get_mime", ArgKind::Bool).aliases(&["mime", "mime_type", "mime-type"]),
        ArgSpec::opt("get_attributes", ArgKind::Bool).aliases(&["attr", "attributes"]),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};
