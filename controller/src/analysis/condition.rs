//! The success and failure conditions of a team's own analysis query: Jinja expressions over
//! `result` (a number, a list of numbers, or none), evaluated by the playbooks' own template
//! engine (bounded in instructions), so `result > 100`, `result | max < 0.5` or
//! `result is none or result < 3` read as they would in a playbook's `failed_when:`.

use rampart_playbook::template::{Templar, from_json};
use serde_json::{Value, json};

/// Checks that `expr` compiles; the message names what is wrong.
pub fn compile(expr: &str) -> Result<(), String> {
    Templar::new()
        .check_expression(expr)
        .map_err(|e| format!("condition {expr:?}: {e}"))
}

/// Whether `expr` holds for `result`.
pub fn holds(expr: &str, result: &Value) -> Result<bool, String> {
    let scope = from_json(&json!({ "result": result }));
    Templar::new()
        .eval_conditions(&[Value::String(expr.to_string())], &scope)
        .map_err(|e| format!("condition {expr:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_over_numbers_and_lists() {
        assert!(holds("result > 100", &json!(101.5)).unwrap());
        assert!(!holds("result > 100", &json!(3)).unwrap());
        assert!(holds("result | max < 0.5", &json!([0.1, 0.4])).unwrap());
        assert!(holds("result is none", &Value::Null).unwrap());
        assert!(compile("result >").is_err());
        let e = holds("result.nope > 1", &json!(1)).unwrap_err();
        assert!(e.contains("result.nope"), "{e}");
    }
}
