//! Extra variables from the command line, as `ansible-playbook -e` takes them: `KEY=VALUE`
//! (text), `@FILE` (a JSON or YAML mapping), or inline JSON/YAML `{...}`. Later ones win.

use std::path::Path;

use rampart_playbook::yaml::{self, Limits};
use serde_json::{Map, Value};

/// Merges every `-e` argument into one object; the error says which argument and why.
pub fn parse_extra_vars(args: &[String]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for arg in args {
        let parsed = parse_one(arg)?;
        out.extend(parsed);
    }
    Ok(out)
}

fn parse_one(arg: &str) -> Result<Map<String, Value>, String> {
    if let Some(file) = arg.strip_prefix('@') {
        let text = std::fs::read_to_string(Path::new(file))
            .map_err(|e| format!("-e @{file}: cannot read it: {e}"))?;
        return mapping(&text).map_err(|e| format!("-e @{file}: {e}"));
    }
    let trimmed = arg.trim_start();
    if trimmed.starts_with('{') {
        return mapping(arg).map_err(|e| format!("-e {arg}: {e}"));
    }
    let mut out = Map::new();
    for word in shlex::split(arg).ok_or_else(|| format!("-e {arg}: unbalanced quotes"))? {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("-e {arg}: expected KEY=VALUE, @FILE or a JSON object"))?;
        if k.is_empty() {
            return Err(format!("-e {arg}: empty variable name"));
        }
        out.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(out)
}

fn mapping(text: &str) -> Result<Map<String, Value>, String> {
    let docs = yaml::parse(text, &Limits::default()).map_err(|e| e.to_string())?;
    match docs.first().map(yaml::Yaml::to_json) {
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(format!("expected a mapping of variables, found {other}")),
        None => Ok(Map::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forms_merge_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v.json");
        std::fs::write(&f, "{\"a\": 1, \"b\": [true]}").unwrap();
        let v = parse_extra_vars(&[
            format!("@{}", f.display()),
            "a=2 c='x y'".to_string(),
            "{\"d\": {\"e\": null}}".to_string(),
        ])
        .unwrap();
        assert_eq!(
            Value::Object(v),
            json!({"a": "2", "b": [true], "c": "x y", "d": {"e": null}})
        );
        assert!(
            parse_extra_vars(&["novalue".into()])
                .unwrap_err()
                .contains("KEY=VALUE")
        );
        assert!(
            parse_extra_vars(&["@/nonexistent".into()])
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
