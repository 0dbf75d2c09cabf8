//! Argument schemas of the network modules (`uri`, `get_url`); their run functions are the
//! agent's.

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `uri`: makes one HTTP(S) request and returns the response's status, headers and body.
pub static URI: ModuleSchema = ModuleSchema {
    name: "uri",
    args: &[
        ArgSpec::req("url", ArgKind::Str),
        ArgSpec::opt("method", ArgKind::Str),
        ArgSpec::opt("body", ArgKind::Any),
        ArgSpec::opt("body_format", ArgKind::Str).choices(&["json", "form-urlencoded", "raw"]),
        ArgSpec::opt("headers", ArgKind::Map),
        ArgSpec::opt("status_code", ArgKind::List),
        ArgSpec::opt("return_content", ArgKind::Bool),
        ArgSpec::opt("timeout", ArgKind::Num),
        ArgSpec::opt("validate_certs", ArgKind::Bool),
        ArgSpec::opt("ca_path", ArgKind::Str),
        ArgSpec::opt("follow_redirects", ArgKind::Str)
            .choices(&["all", "safe", "none", "no", "yes", "urllib2"]),
        ArgSpec::opt("url_username", ArgKind::Str).aliases(&["user"]),
        ArgSpec::opt("url_password", ArgKind::Str).aliases(&["password"]),
        ArgSpec::opt("force_basic_auth", ArgKind::Bool),
        ArgSpec::opt("dest", ArgKind::Str),
        ArgSpec::opt("creates", ArgKind::Str),
        ArgSpec::opt("removes", ArgKind::Str),
        ArgSpec::opt("mode", ArgKind::Any),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    // Ansible's uri does not declare check-mode support, so check mode skips it.
    check_mode: CheckMode::Skip,
};

/// `get_url`: downloads an http, https or file URL to a file, verified and renamed into place.
pub static GET_URL: ModuleSchema = ModuleSchema {
    name: "get_url",
    args: &[
        ArgSpec::req("url", ArgKind::Str),
        ArgSpec::req("dest", ArgKind::Str),
        ArgSpec::opt("checksum", ArgKind::Str),
        ArgSpec::opt("mode", ArgKind::Any),
        ArgSpec::opt("force", ArgKind::Bool),
        ArgSpec::opt("timeout", ArgKind::Num),
        ArgSpec::opt("headers", ArgKind::Map),
        ArgSpec::opt("validate_certs", ArgKind::Bool),
        ArgSpec::opt("ca_path", ArgKind::Str),
        ArgSpec::opt("url_username", ArgKind::Str).aliases(&["username"]),
        ArgSpec::opt("url_password", ArgKind::Str).aliases(&["password"]),
        ArgSpec::opt("force_basic_auth", ArgKind::Bool),
        // Rampart's own: the most bytes a download may have (default 4 GiB).
        ArgSpec::opt("max_bytes", ArgKind::Int),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[],
    check_mode: CheckMode::Supported,
};
