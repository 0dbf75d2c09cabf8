//! `rampart health SUITE.yml [-e KEY=VALUE]... [--json]`: runs a health suite from here, for
//! operators outside deploys (`production` names the shipped suite built into Rampart).
//!
//! Output: a table (category, check, status, attempts, time, value or message) and a summary
//! line; with `--json`, one JSON object per check as it finishes and a final summary object.
//! Exit 0 when every critical check passed, 1 when one failed, 2 on bad arguments or a bad
//! suite (nothing ran).

use crate::exit::Exit;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rampart_health::{self as health, CheckResult, Status, Suite, Summary};
use rampart_playbook::template::Templar;
use serde_json::{Map, Value, json};

/// How to run a suite from the command line.
#[derive(Debug)]
pub struct HealthOptions<'a> {
    /// The suite file.
    pub suite: &'a Path,
    /// Variables (`-e`), over the suite's own.
    pub vars: Map<String, Value>,
    /// JSON lines instead of a table.
    pub json: bool,
    /// Checks at the same time (overrides the suite).
    pub parallelism: Option<usize>,
    /// Seconds for the whole suite (overrides the suite).
    pub deadline: Option<f64>,
}

/// Runs the suite; returns the exit code.
pub fn main(opts: HealthOptions<'_>) -> Exit {
    let builtin = opts.suite == Path::new("production") && !opts.suite.exists();
    let text = match std::fs::read_to_string(opts.suite) {
        _ if builtin => rampart_health::PRODUCTION_SUITE.to_string(),
        Ok(t) => t,
        Err(e) => {
            eprintln!("rampart health: cannot read {}: {e}", opts.suite.display());
            return Exit::Usage;
        }
    };
    let mut suite = match Suite::from_yaml(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rampart health: {}: {e}", opts.suite.display());
            return Exit::Usage;
        }
    };
    if let Some(p) = opts.parallelism {
        suite.parallelism = p.clamp(1, 256);
    }
    if let Some(d) = opts.deadline {
        suite.deadline = Duration::from_secs_f64(d.clamp(0.0, 86_400.0));
    }
    let templar = Templar::new();
    let scope = health::scope(&suite, &templar, None, &opts.vars);
    let mut out = std::io::stdout().lock();
    let json_mode = opts.json;
    let (results, summary) = health::run(&suite, &templar, &scope, &mut |r: &CheckResult| {
        if json_mode {
            let line = json!({
                "type": "check", "name": r.name, "category": r.category, "severity": r.severity,
                "status": r.status, "attempts": r.attempts, "duration_ms": r.duration_ms,
                "value": r.value, "message": r.message, "diagnostics": r.diagnostics,
            });
            let _ = writeln!(out, "{line}");
        }
    });
    // A closed pipe (`| head`) is not an error worth a panic.
    let o = &mut out;
    if json_mode {
        let mut s = serde_json::to_value(&summary).unwrap_or_default();
        s["type"] = json!("summary");
        let _ = writeln!(o, "{s}");
    } else {
        let _ = write!(o, "{}", table(&results, &summary));
    }
    if summary.passed {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

fn status_text(s: Status) -> &'static str {
    match s {
        Status::Pass => "pass",
        Status::Warn => "WARN",
        Status::Fail => "FAIL",
        Status::Skipped => "skipped",
    }
}

/// The results as a table, in suite order, and the verdict.
pub fn table(results: &[CheckResult], summary: &Summary) -> String {
    let rows: Vec<[String; 6]> = results
        .iter()
        .map(|r| {
            let value = match &r.value {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let detail = if value.is_empty() || r.message.contains(&value) {
                r.message.clone()
            } else {
                format!("{value}: {}", r.message)
            };
            [
                r.category.clone(),
                r.name.clone(),
                status_text(r.status).to_string(),
                r.attempts.to_string(),
                format!("{} ms", r.duration_ms),
                detail.chars().take(100).collect(),
            ]
        })
        .collect();
    let header = [
        "CATEGORY",
        "CHECK",
        "STATUS",
        "TRIES",
        "TIME",
        "VALUE / MESSAGE",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row.iter()).take(5) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i < 5 {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            } else {
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    out.push_str(&format!(
        "\n{}: {} passed, {} warnings, {} failed, {} skipped in {} ms{}\n",
        if summary.passed {
            "HEALTHY"
        } else {
            "UNHEALTHY"
        },
        summary.pass,
        summary.warn,
        summary.fail,
        summary.skipped,
        summary.duration_ms,
        if summary.failed.is_empty() {
            String::new()
        } else {
            format!(" (critical: {})", summary.failed.join(", "))
        }
    ));
    out
}
