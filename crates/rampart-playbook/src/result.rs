//! What a module's result says, read the same way by everyone who shows it (the CLI, the
//! controller's host failure line): its message, and for a loop the message of the item that
//! failed rather than the aggregate's `One or more items failed`.

use serde_json::Value;

/// The message a result gives for why it failed: for a loop whose items failed, the first
/// failed item's `msg` (the real reason); else the result's own `msg`. `None` when there is none
/// (or it is empty). Not shortened: callers cut it to what they can show.
pub fn failure_message(result: &Value) -> Option<String> {
    let item_msg = result
        .get("results")
        .and_then(Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .find(|r| r.get("failed").and_then(Value::as_bool) == Some(true))
        })
        .and_then(|r| message(r.get("msg")?));
    item_msg.or_else(|| message(result.get("msg")?))
}

fn message(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Null => return None,
        other => other.to_string(),
    };
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_loop_gives_its_failed_items_reason() {
        let r = json!({"failed": true, "msg": "One or more items failed", "results": [
            {"changed": false, "msg": "fine"},
            {"failed": true, "msg": "sha256 mismatch: want ab, got cd"},
            {"failed": true, "msg": "second failure"},
        ]});
        assert_eq!(
            failure_message(&r).as_deref(),
            Some("sha256 mismatch: want ab, got cd")
        );
    }

    #[test]
    fn a_plain_result_gives_its_msg_and_nothing_when_there_is_none() {
        assert_eq!(
            failure_message(&json!({"failed": true, "msg": " boom \n"})).as_deref(),
            Some("boom")
        );
        assert_eq!(failure_message(&json!({"failed": true, "rc": 1})), None);
        assert_eq!(failure_message(&json!({"msg": ""})), None);
        assert_eq!(
            failure_message(&json!({"msg": {"k": 1}})).as_deref(),
            Some(r#"{"k":1}"#)
        );
        // A loop whose failed item has no message falls back to the aggregate's.
        let r = json!({"msg": "One or more items failed", "results": [{"failed": true}]});
        assert_eq!(
            failure_message(&r).as_deref(),
            Some("One or more items failed")
        );
    }
}
