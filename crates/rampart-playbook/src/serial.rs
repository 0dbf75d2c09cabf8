//! Ansible's `serial` arithmetic: how a play's hosts are cut into waves
//! (`docs/notes/ansible-semantics.md` records the observed batches).
//!
//! `serial` is a number, a percentage (`"25%"`, of all hosts, rounded down, at least 1) or a
//! list of those; the list's last element repeats for the hosts left. No `serial`: one wave.

use serde_json::Value;

/// One element of `serial`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Serial {
    /// A number of hosts (0 or less: all of them).
    Count(i64),
    /// A percentage of all hosts.
    Percent(f64),
}

impl Serial {
    /// The wave size this element gives for `total` hosts.
    fn size(self, total: usize) -> usize {
        match self {
            Serial::Count(n) if n <= 0 => total,
            Serial::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            // Ansible: int(pct / 100 * hosts), and at least one host.
            Serial::Percent(p) => ((p / 100.0 * total as f64).floor() as usize).max(1),
        }
    }
}

/// Reads a play's or environment's `serial:` (a number, `"N"`, `"P%"`, or a list of those).
pub fn parse_serial(v: &Value) -> Result<Vec<Serial>, String> {
    fn one(v: &Value) -> Result<Serial, String> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .map(Serial::Count)
                .ok_or_else(|| format!("serial {n} is not a whole number of hosts")),
            Value::String(s) => {
                let t = s.trim();
                match t.strip_suffix('%') {
                    Some(p) => p
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|p| p.is_finite() && *p > 0.0 && *p <= 100.0)
                        .map(Serial::Percent)
                        .ok_or_else(|| format!("serial {s:?} is not a percentage from 0 to 100")),
                    None => t
                        .parse::<i64>()
                        .map(Serial::Count)
                        .map_err(|_| format!("serial {s:?} is not a number or a percentage")),
                }
            }
            other => Err(format!("serial {other} is not a number or a percentage")),
        }
    }
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) if items.is_empty() => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(one).collect(),
        single => Ok(vec![one(single)?]),
    }
}

/// The wave sizes for `total` hosts.
pub fn waves(total: usize, serial: &[Serial]) -> Vec<usize> {
    if total == 0 {
        return Vec::new();
    }
    if serial.is_empty() {
        return vec![total];
    }
    let mut out = Vec::new();
    let mut left = total;
    let mut i = 0;
    // Bounded: every wave takes at least one host.
    while left > 0 {
        let spec = serial[i.min(serial.len() - 1)];
        let size = spec.size(total).clamp(1, left);
        out.push(size);
        left -= size;
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cut(total: usize, serial: Value) -> Vec<usize> {
        waves(total, &parse_serial(&serial).unwrap())
    }

    #[test]
    fn waves_follow_ansibles_observed_batches() {
        // docs/notes/ansible-semantics.md: 10 hosts.
        assert_eq!(cut(10, json!(3)), [3, 3, 3, 1]);
        assert_eq!(cut(10, json!("25%")), [2, 2, 2, 2, 2]);
        assert_eq!(cut(10, json!([1, "10%", "50%"])), [1, 1, 5, 3]);
        // The rollout of 5 agents.
        assert_eq!(cut(5, json!([1, "50%", "100%"])), [1, 2, 2]);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(cut(10, Value::Null), [10]);
        assert_eq!(cut(10, json!([])), [10]);
        assert_eq!(cut(10, json!(0)), [10]);
        assert_eq!(cut(3, json!(5)), [3]);
        assert_eq!(
            cut(3, json!("1%")),
            [1, 1, 1],
            "a percentage gives at least one host"
        );
        assert_eq!(cut(0, json!(3)), Vec::<usize>::new());
        assert_eq!(cut(4, json!("2")), [2, 2]);
        for bad in [
            json!("x"),
            json!("150%"),
            json!(1.5),
            json!({"a": 1}),
            json!(["10%", true]),
        ] {
            assert!(parse_serial(&bad).is_err(), "{bad}");
        }
    }
}
