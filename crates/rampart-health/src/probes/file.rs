//! The `file` probe: a file's content, trimmed, equals or contains a text.
//!
//! Inputs: `path`, `equals`, `contains`. Output: the start of the file's trimmed content.

use serde_json::{Value, json};

use super::{excerpt, s};
use crate::Probe;

pub(super) fn file(p: &Value) -> Probe {
    let Some(path) = s(p, "path") else {
        return Probe::fail(Value::Null, "file check without a path");
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Probe::fail(Value::Null, format!("cannot read {path}: {e}")),
    };
    let found = text.trim();
    if let Some(want) = p.get("equals").filter(|v| !v.is_null()) {
        let want = want
            .as_str()
            .map_or_else(|| want.to_string(), str::to_string);
        if found != want.trim() {
            return Probe::fail(
                json!(excerpt(found)),
                format!("{path} holds {:?}, expected {want:?}", excerpt(found)),
            );
        }
    }
    if let Some(want) = s(p, "contains")
        && !text.contains(want)
    {
        return Probe::fail(
            json!(excerpt(found)),
            format!("{path} does not contain {want:?}"),
        );
    }
    Probe::pass(
        json!(excerpt(found)),
        format!("{path} holds {:?}", excerpt(found)),
    )
}
