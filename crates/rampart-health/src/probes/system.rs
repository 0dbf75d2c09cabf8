//! The machine's own probes: `disk`, `memory` and `load`.
//!
//! Inputs: `disk`: `path` (/), `max_percent` (90); `memory`: `max_percent` (80); `load`: `max`
//! (2.0), `per_core` (false). Output: the percentage used (as df computes it for a disk), or the
//! 1-minute load average (per core when asked).

use serde_json::{Value, json};

use super::{flag, num, s};
use crate::Probe;

pub(super) fn disk(p: &Value) -> Probe {
    let path = s(p, "path").unwrap_or("/");
    let max = num(p, "max_percent").unwrap_or(90.0);
    match nix::sys::statvfs::statvfs(path) {
        Ok(st) => {
            let total = st.blocks() as f64 * st.fragment_size() as f64;
            let avail = st.blocks_available() as f64 * st.fragment_size() as f64;
            let free = st.blocks_free() as f64 * st.fragment_size() as f64;
            // As df computes it: used / (used + available to unprivileged users).
            let used = total - free;
            let pct = if used + avail > 0.0 {
                (used / (used + avail) * 1000.0).round() / 10.0
            } else {
                0.0
            };
            if pct < max {
                Probe::pass(json!(pct), format!("{path} is {pct}% used"))
            } else {
                Probe::fail(
                    json!(pct),
                    format!("{path} is {pct}% used, at or over {max}%"),
                )
            }
        }
        Err(e) => Probe::fail(Value::Null, format!("statvfs {path}: {e}")),
    }
}

pub(super) fn memory(p: &Value) -> Probe {
    let max = num(p, "max_percent").unwrap_or(80.0);
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    let (Some(total), Some(avail)) = (field("MemTotal"), field("MemAvailable")) else {
        return Probe::fail(
            Value::Null,
            "cannot read MemTotal/MemAvailable from /proc/meminfo",
        );
    };
    let pct = ((total - avail) / total * 1000.0).round() / 10.0;
    if pct <= max {
        Probe::pass(json!(pct), format!("memory {pct}% used"))
    } else {
        Probe::fail(json!(pct), format!("memory {pct}% used, over {max}%"))
    }
}

pub(super) fn load(p: &Value) -> Probe {
    let max = num(p, "max").unwrap_or(2.0);
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let Some(one) = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
    else {
        return Probe::fail(Value::Null, "cannot read /proc/loadavg");
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let (value, what) = if flag(p, "per_core", false) {
        (
            (one / cores * 100.0).round() / 100.0,
            format!("per core ({cores} cores)"),
        )
    } else {
        (one, String::new())
    };
    if value <= max {
        Probe::pass(
            json!(value),
            format!("1-minute load {value} {what}")
                .trim_end()
                .to_string(),
        )
    } else {
        Probe::fail(
            json!(value),
            format!("1-minute load {value} {what} over {max}"),
        )
    }
}
