//! Modules that steer a playbook rather than change the host: `fail`, `assert`, `debug`,
//! `set_fact`, `pause`. None of them changes anything, so none needs reversing.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use rampart_playbook::modules::control as schema;

use super::{ModuleCtx, ModuleResult, ModuleSpec, arg_bool, arg_f64, arg_str, failed, ok};

/// `fail`: fails the task with `msg`.
pub static FAIL: ModuleSpec = ModuleSpec {
    schema: &schema::FAIL,
    run: run_fail,
};

fn run_fail(args: &Map<String, Value>, _ctx: &ModuleCtx<'_>) -> ModuleResult {
    let mut r = ok(false);
    r.insert("failed".into(), json!(true));
    r.insert(
        "msg".into(),
        args.get("msg")
            .cloned()
            .unwrap_or_else(|| json!("Failed as requested from task")),
    );
    r
}

/// `assert`: fails unless every expression in `that` holds.
pub static ASSERT: ModuleSpec = ModuleSpec {
    schema: &schema::ASSERT,
    run: run_assert,
};

fn run_assert(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let conds: Vec<Value> = match args.get("that") {
        Some(Value::Array(items)) => items.clone(),
        Some(other) => vec![other.clone()],
        None => Vec::new(),
    };
    for cond in &conds {
        let holds = ctx
            .templar
            .eval_conditions(std::slice::from_ref(cond), ctx.scope);
        match holds {
            Ok(true) => {}
            Ok(false) => {
                let mut r = ok(false);
                r.insert("failed".into(), json!(true));
                r.insert("assertion".into(), cond.clone());
                r.insert("evaluated_to".into(), json!(false));
                r.insert(
                    "msg".into(),
                    args.get("fail_msg")
                        .cloned()
                        .unwrap_or_else(|| json!("Assertion failed")),
                );
                return r;
            }
            Err(e) => {
                return failed(format!(
                    "the conditional check '{}' failed: {e}",
                    cond.as_str().unwrap_or_default()
                ));
            }
        }
    }
    let mut r = ok(false);
    r.insert(
        "msg".into(),
        args.get("success_msg")
            .cloned()
            .unwrap_or_else(|| json!("All assertions passed")),
    );
    r
}

/// `debug`: prints `msg`, or the value of the variable `var`.
pub static DEBUG: ModuleSpec = ModuleSpec {
    schema: &schema::DEBUG,
    run: run_debug,
};

fn run_debug(args: &Map<String, Value>, ctx: &ModuleCtx<'_>) -> ModuleResult {
    let mut r = ok(false);
    if let Some(var) = arg_str(args, "var") {
        let value = ctx
            .templar
            .eval(var, ctx.scope)
            .unwrap_or_else(|_| json!("VARIABLE IS NOT DEFINED!"));
        r.insert(var.to_string(), value);
    } else {
        r.insert(
            "msg".into(),
            args.get("msg")
                .cloned()
                .unwrap_or_else(|| json!("Hello world!")),
        );
    }
    r
}

/// `set_fact`: sets host variables that later tasks see (and that survive into rescue).
pub static SET_FACT: ModuleSpec = ModuleSpec {
    schema: &schema::SET_FACT,
    run: run_set_fact,
};

fn run_set_fact(args: &Map<String, Value>, _ctx: &ModuleCtx<'_>) -> ModuleResult {
    let facts: Map<String, Value> = args
        .iter()
        .filter(|(k, _)| k.as_str() != "cacheable")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if facts.is_empty() {
        return failed(
            "No key/value pairs provided, at least one is required for this action to succeed",
        );
    }
    let mut r = ok(false);
    r.insert("ansible_facts".into(), Value::Object(facts));
    if let Some(c) = arg_bool(args, "cacheable") {
        r.insert("cacheable".into(), json!(c));
    }
    r
}

/// `pause`: waits `seconds` (or `minutes`). Prompts are not supported: nobody answers them.
pub static PAUSE: ModuleSpec = ModuleSpec {
    schema: &schema::PAUSE,
    run: run_pause,
};

fn run_pause(args: &Map<String, Value>, _ctx: &ModuleCtx<'_>) -> ModuleResult {
    let secs = arg_f64(args, "seconds")
        .or_else(|| arg_f64(args, "minutes").map(|m| m * 60.0))
        .unwrap_or(0.0);
    if !(0.0..=86_400.0).contains(&secs) {
        return failed(format!(
            "pause of {secs} seconds is out of range (0 to 86400)"
        ));
    }
    let start = chrono::Local::now();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let mut r = ok(false);
    r.insert("delta".into(), json!(t0.elapsed().as_secs()));
    r.insert("echo".into(), json!(true));
    r.insert("rc".into(), json!(0));
    r.insert(
        "start".into(),
        json!(start.format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
    );
    r.insert(
        "stop".into(),
        json!(
            chrono::Local::now()
                .format("%Y-%m-%d %H:%M:%S%.6f")
                .to_string()
        ),
    );
    r.insert("stdout".into(), json!(format!("Paused for {secs} seconds")));
    r.insert("user_input".into(), json!(""));
    r
}

/// `meta`: run by the engine itself (flush points, ends); never called.
pub static META: ModuleSpec = ModuleSpec {
    schema: &schema::META,
    run: |_, _| ok(false),
};

/// `include_vars`: the variables the loader read from the file (`_data`), at include_vars
/// precedence (the engine keeps them apart from `set_fact`), under `name` when given.
pub static INCLUDE_VARS: ModuleSpec = ModuleSpec {
    schema: &schema::INCLUDE_VARS,
    run: run_include_vars,
};

fn run_include_vars(args: &Map<String, Value>, _ctx: &ModuleCtx<'_>) -> ModuleResult {
    let data = args.get("_data").cloned().unwrap_or_else(|| json!({}));
    let facts = match args.get("name").and_then(Value::as_str) {
        Some(n) => {
            let mut m = Map::new();
            m.insert(n.to_string(), data);
            Value::Object(m)
        }
        None => data,
    };
    let mut r = ok(false);
    r.insert("ansible_facts".into(), facts);
    let file = args.get("file").cloned().unwrap_or(Value::Null);
    r.insert("ansible_included_var_files".into(), json!([file]));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::Call;

    fn run(spec: &ModuleSpec, args: Value, vars: Value) -> ModuleResult {
        Call {
            vars: Some(vars),
            ..Call::default()
        }
        .run(spec, args)
    }

    #[test]
    fn assert_reports_the_failing_expression() {
        let r = run(
            &ASSERT,
            json!({"that": ["x == 1", "x > 5"], "fail_msg": "too small"}),
            json!({"x": 1}),
        );
        assert_eq!(r["failed"], json!(true));
        assert_eq!(r["assertion"], json!("x > 5"));
        assert_eq!(r["msg"], json!("too small"));
        let r = run(&ASSERT, json!({"that": "x == 1"}), json!({"x": 1}));
        assert!(r.get("failed").is_none());
        assert_eq!(r["msg"], json!("All assertions passed"));
    }

    #[test]
    fn debug_var_and_msg() {
        let r = run(&DEBUG, json!({"var": "a.b"}), json!({"a": {"b": 2}}));
        assert_eq!(r["a.b"], json!(2));
        let r = run(&DEBUG, json!({"var": "nope"}), json!({}));
        assert_eq!(r["nope"], json!("VARIABLE IS NOT DEFINED!"));
        let r = run(&DEBUG, json!({}), json!({}));
        assert_eq!(r["msg"], json!("Hello world!"));
    }

    #[test]
    fn set_fact_and_fail() {
        let r = run(&SET_FACT, json!({"a": 1, "cacheable": false}), json!({}));
        assert_eq!(r["ansible_facts"], json!({"a": 1}));
        let r = run(&FAIL, json!({}), json!({}));
        assert_eq!(r["msg"], json!("Failed as requested from task"));
        assert_eq!(r["failed"], json!(true));
    }

    #[test]
    fn pause_waits() {
        let t0 = Instant::now();
        let r = run(&PAUSE, json!({"seconds": 0.05}), json!({}));
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert!(r.get("failed").is_none());
        let r = run(&PAUSE, json!({"seconds": -1}), json!({}));
        assert_eq!(r["failed"], json!(true));
    }
}
