//! Argument schema of `cron` (its run function is the agent's).

use crate::schema::{ArgKind, ArgSpec, CheckMode, FreeForm, ModuleSchema};

/// `cron`: a job or an environment variable in a user's crontab or a cron file.
pub static CRON: ModuleSchema = ModuleSchema {
    name: "cron",
    args: &[
        ArgSpec::req("name", ArgKind::Str),
        ArgSpec::opt("user", ArgKind::Str),
        ArgSpec::opt("job", ArgKind::Str).aliases(&["value"]),
        ArgSpec::opt("cron_file", ArgKind::Str),
        ArgSpec::opt("state", ArgKind::Str).choices(&["present", "absent"]),
        ArgSpec::opt("minute", ArgKind::Str),
        ArgSpec::opt("hour", ArgKind::Str),
        ArgSpec::opt("day", ArgKind::Str).aliases(&["dom"]),
        ArgSpec::opt("month", ArgKind::Str),
        ArgSpec::opt("weekday", ArgKind::Str).aliases(&["dow"]),
        ArgSpec::opt("special_time", ArgKind::Str).choices(&[
            "reboot", "yearly", "annually", "monthly", "weekly", "daily", "hourly",
        ]),
        ArgSpec::opt("disabled", ArgKind::Bool),
        ArgSpec::opt("env", ArgKind::Bool),
        ArgSpec::opt("insertafter", ArgKind::Str),
        ArgSpec::opt("insertbefore", ArgKind::Str),
    ],
    free_form: FreeForm::KeyValue,
    any_args: false,
    one_of: &[],
    exclusive: &[("insertafter", "insertbefore")],
    check_mode: CheckMode::Supported,
};
