//! `health`: runs a health suite ([`rampart_health`]) as a task; a failed critical check fails
//! the task, so a deploy's rescue runs with every check's result in `ansible_failed_result`.
//!
//! Inputs: `suite` (`production`, the shipped suite built into Rampart, or a suite file: an
//! absolute path, or one relative to the playbook's directory when run locally) or `checks`
//! (the same list inline), `vars` (over the task's variables, which are over the suite's own `vars`),
//! `parallelism`, `deadline` (seconds), `critical_only` (run only the critical checks: an
//! emergency rollback verifies what must hold and skips the rest). Output: `checks` (one result per check: name, category,
//! severity, type, status, attempts, duration_ms, value, message, diagnostics), `summary`
//! (`passed`, counts, `failed` names) and `msg`. In check mode it is skipped, like `command`:
//! what it would check is not deployed yet (`check_mode: false` runs it anyway).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value, json};

use rampart_playbook::modules::health as schema;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_bool, arg_f64, arg_i64, arg_str, failed};
use rampart_health::{self as health, Suite};

/// `health`.
pub static HEALTH: ModuleSpec = ModuleSpec {
    schema: &schema::HEALTH,
    run: run_health,
};

pub use rampart_health::PRODUCTION_SUITE;

fn load(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> Result<Suite, String> {
    if let Some(name) = arg_str(args, "suite") {
        if name == "production" {
            return Suite::from_yaml(PRODUCTION_SUITE)
                .map_err(|e| format!("built-in production suite: {e}"));
        }
        let path = PathBuf::from(name);
        let path = match (&ctx.base_dir, path.is_relative()) {
            (Some(base), true) => base.join(path),
            (None, true) => {
                return Err(format!(
                    "health suite {name} is a relative path, but this playbook came without its directory (run through an agent): give an absolute path, or `production` for the built-in suite"
                ));
            }
            _ => path,
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read health suite {}: {e}", path.display()))?;
        return Suite::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()));
    }
    let checks = args.get("checks").cloned().unwrap_or(Value::Null);
    Suite::from_value(&json!({ "checks": checks }))
}

fn run_health(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let mut suite = match load(args, ctx) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    if let Some(p) = arg_i64(args, "parallelism") {
        suite.parallelism = p.clamp(1, 256) as usize;
    }
    if let Some(d) = arg_f64(args, "deadline") {
        suite.deadline = Duration::from_secs_f64(d.clamp(0.0, 86_400.0));
    }
    if arg_bool(args, "critical_only") == Some(true) {
        suite
            .checks
            .retain(|c| c.severity == health::Severity::Critical);
    }
    let overrides = args
        .get("vars")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let scope = health::scope(&suite, ctx.templar, Some(ctx.scope.clone()), &overrides);
    let (results, summary) = health::run(&suite, ctx.templar, &scope, &mut |r| {
        tracing::info!(check = %r.name, status = ?r.status, attempts = r.attempts, "health check");
        if let Some(progress) = ctx.progress {
            progress.report(json!({ "check": r }));
        }
    });
    let mut r = Map::new();
    r.insert("changed".into(), json!(false));
    r.insert("failed".into(), json!(!summary.passed));
    r.insert(
        "msg".into(),
        json!(if summary.passed {
            format!(
                "{} checks: {} passed, {} warnings, {} skipped in {} ms",
                results.len(),
                summary.pass,
                summary.warn,
                summary.skipped,
                summary.duration_ms
            )
        } else {
            let why: Vec<String> = results
                .iter()
                .filter(|c| c.status == health::Status::Fail)
                .map(|c| format!("{}: {}", c.name, c.message))
                .collect();
            format!("critical health checks failed: {}", why.join("; "))
        }),
    );
    r.insert("checks".into(), json!(results));
    r.insert("summary".into(), json!(summary));
    r
}
