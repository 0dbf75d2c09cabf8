//! Renders a transaction's entries for people (Ansible's layout) or machines (JSON lines).
//!
//! Input: journal entries, live or replayed. Output: lines on a writer. Human output follows
//! `ansible-playbook`: `PLAY [..]`, `TASK [..]`, `ok:` / `changed:` / `fatal:` / `skipping:`,
//! `...ignoring`, `FAILED - RETRYING`, and `PLAY RECAP`. JSON output is one object per line:
//! `{"type":"task",...}` per task and a final `{"type":"summary",...}`.

use std::io::Write;

use rampart_agent::event::{Entry, Record, TaskStatus};
use serde_json::{Value, json};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Ansible-like text.
    Human,
    /// One JSON object per line.
    Json,
}

/// Renders entries as they arrive.
#[derive(Debug)]
pub struct Renderer<W: Write> {
    out: W,
    format: Format,
    host: String,
}

fn banner(title: &str) -> String {
    let stars = 79usize.saturating_sub(title.len()).max(3);
    format!("{title} {}", "*".repeat(stars))
}

/// JSON the way Python's `json.dumps` prints it: `{"a": 1, "b": [1, 2]}`.
pub fn python_json(v: &Value) -> String {
    let mut s = String::new();
    write_py(v, &mut s);
    s
}

fn write_py(v: &Value, s: &mut String) {
    match v {
        Value::Array(items) => {
            s.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                write_py(item, s);
            }
            s.push(']');
        }
        Value::Object(map) => {
            s.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                s.push_str(&Value::String(k.clone()).to_string());
                s.push_str(": ");
                write_py(item, s);
            }
            s.push('}');
        }
        other => s.push_str(&other.to_string()),
    }
}

/// A task's `diff` result as `ansible-playbook --diff` shows it: a unified diff (3 lines of
/// context) of each `before`/`after` pair (mappings as sorted, indented JSON), or the reason the
/// text was left out; nothing when before and after are the same.
pub fn render_diff(d: &Value) -> String {
    let mut out = String::new();
    let items: Vec<&Value> = match d {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    for item in items {
        let Value::Object(m) = item else { continue };
        let skipped = [
            (
                "dst_binary",
                "diff skipped: destination file appears to be binary",
            ),
            (
                "src_binary",
                "diff skipped: source file appears to be binary",
            ),
            (
                "dst_larger",
                "diff skipped: destination file size is greater than",
            ),
            (
                "src_larger",
                "diff skipped: source file size is greater than",
            ),
        ];
        for (key, text) in skipped {
            if let Some(v) = m.get(key) {
                if key.ends_with("larger") {
                    out.push_str(&format!("{text} {v}\n"));
                } else {
                    out.push_str(&format!("{text}\n"));
                }
            }
        }
        if let (Some(b), Some(a)) = (m.get("before"), m.get("after")) {
            let side = |v: &Value| match v {
                Value::String(s) => s.clone(),
                other => {
                    // Python's json.dumps(indent=4, sort_keys=True), as Ansible's callback.
                    let mut buf = Vec::new();
                    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
                    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
                    let _ = serde::Serialize::serialize(other, &mut ser);
                    let mut t = String::from_utf8(buf).unwrap_or_default();
                    t.push('\n');
                    t
                }
            };
            let (before, after) = (side(b), side(a));
            if before != after {
                let header = |key: &str, word: &str| match m.get(key).and_then(Value::as_str) {
                    Some(h) => format!("{word}: {h}"),
                    None => word.to_string(),
                };
                let diff = similar::TextDiff::from_lines(&before, &after);
                let text = diff
                    .unified_diff()
                    .context_radius(3)
                    .header(
                        &header("before_header", "before"),
                        &header("after_header", "after"),
                    )
                    .to_string();
                out.push_str(&text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        if let Some(p) = m.get("prepared").and_then(Value::as_str) {
            out.push_str(p);
            if !p.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

fn pretty(v: &Value) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    if serde::Serialize::serialize(v, &mut ser).is_err() {
        return v.to_string();
    }
    String::from_utf8(buf).unwrap_or_default()
}

impl<W: Write> Renderer<W> {
    /// A renderer writing to `out`.
    pub fn new(out: W, format: Format) -> Self {
        Renderer {
            out,
            format,
            host: "localhost".to_string(),
        }
    }

    /// Renders one entry.
    pub fn entry(&mut self, e: &Entry) -> std::io::Result<()> {
        match self.format {
            Format::Human => self.human(e),
            Format::Json => self.json(e),
        }?;
        self.out.flush()
    }

    fn json(&mut self, e: &Entry) -> std::io::Result<()> {
        let line = match &e.record {
            Record::TaskEnd {
                path,
                section,
                name,
                action,
                status,
                result,
                duration_ms,
                ..
            } => json!({
                "type": "task",
                "txid": e.txid,
                "seq": e.seq,
                "path": path,
                "section": section.as_str(),
                "name": name,
                "action": action,
                "status": status.as_str(),
                "duration_ms": duration_ms,
                "result": result,
            }),
            Record::TaskProgress { path, name, data } => json!({
                "type": "progress",
                "txid": e.txid,
                "seq": e.seq,
                "path": path,
                "name": name,
                "data": data,
            }),
            Record::Recovery {
                interrupted_path,
                action,
                torn_tail,
                ..
            } => json!({
                "type": "recovery",
                "txid": e.txid,
                "seq": e.seq,
                "interrupted_path": interrupted_path,
                "action": action,
                "torn_tail": torn_tail,
            }),
            Record::End {
                outcome,
                recap,
                recovered,
            } => json!({
                "type": "summary",
                "txid": e.txid,
                "host": self.host,
                "outcome": outcome.as_str(),
                "recovered": recovered,
                "recap": recap,
            }),
            _ => return Ok(()),
        };
        writeln!(self.out, "{line}")
    }

    fn human(&mut self, e: &Entry) -> std::io::Result<()> {
        if let Record::TaskEnd { result, .. } = &e.record
            && let Some(d) = result.get("diff")
        {
            let text = render_diff(d);
            if !text.is_empty() {
                write!(self.out, "{text}")?;
            }
        }
        let host = self.host.clone();
        match &e.record {
            Record::Begin { host: h, .. } => {
                self.host.clone_from(h);
            }
            Record::PlayStart { name, .. } => {
                writeln!(self.out, "\n{}", banner(&format!("PLAY [{name}]")))?;
            }
            Record::TaskStart { name, .. } => {
                writeln!(self.out, "\n{}", banner(&format!("TASK [{name}]")))?;
            }
            Record::TaskRetry {
                name, retries_left, ..
            } => {
                writeln!(
                    self.out,
                    "FAILED - RETRYING: [{host}]: {name} ({retries_left} retries left)."
                )?;
            }
            Record::TaskProgress { name, data, .. } => {
                // A loop item's or a health check's verdict as it lands; other progress is for
                // machines.
                if let Some(status) = data.pointer("/item/status").and_then(Value::as_str) {
                    writeln!(self.out, "  {status}: [{host}] {name}")?;
                } else if let Some(c) = data.get("check") {
                    writeln!(
                        self.out,
                        "  {}: {} {} ({} tries, {} ms) {}",
                        c["category"].as_str().unwrap_or_default(),
                        c["status"].as_str().unwrap_or_default(),
                        c["name"].as_str().unwrap_or_default(),
                        c["attempts"],
                        c["duration_ms"],
                        c["message"].as_str().unwrap_or_default()
                    )?;
                }
            }
            Record::TaskEnd {
                status,
                result,
                action,
                ..
            } => {
                let shows_result = action.ends_with("debug");
                match status {
                    TaskStatus::Ok | TaskStatus::Changed => {
                        let word = if *status == TaskStatus::Ok {
                            "ok"
                        } else {
                            "changed"
                        };
                        if shows_result {
                            let mut shown = result.clone();
                            if let Value::Object(m) = &mut shown {
                                m.remove("changed");
                            }
                            writeln!(self.out, "{word}: [{host}] => {}", pretty(&shown))?;
                        } else {
                            writeln!(self.out, "{word}: [{host}]")?;
                        }
                    }
                    TaskStatus::Skipped => writeln!(self.out, "skipping: [{host}]")?,
                    TaskStatus::Failed | TaskStatus::Ignored => {
                        let mut shown = result.clone();
                        if let Value::Object(m) = &mut shown {
                            m.remove("failed");
                        }
                        writeln!(
                            self.out,
                            "fatal: [{host}]: FAILED! => {}",
                            python_json(&shown)
                        )?;
                        if *status == TaskStatus::Ignored {
                            writeln!(self.out, "...ignoring")?;
                        }
                    }
                }
            }
            Record::Recovery {
                interrupted_path,
                action,
                torn_tail,
                ..
            } => {
                writeln!(
                    self.out,
                    "\n{}",
                    banner(&format!(
                        "RECOVERY [interrupted at {}: {action}]",
                        interrupted_path.as_deref().unwrap_or("a play boundary")
                    ))
                )?;
                if let Some(t) = torn_tail {
                    writeln!(
                        self.out,
                        "torn journal tail ({} bytes) kept in the recovery record: {t:?}",
                        t.len()
                    )?;
                }
            }
            Record::End {
                outcome,
                recap,
                recovered,
            } => {
                writeln!(self.out, "\n{}", banner("PLAY RECAP"))?;
                writeln!(
                    self.out,
                    "{:<27}: ok={:<4} changed={:<4} unreachable=0    failed={:<4} skipped={:<4} rescued={:<4} ignored={:<4}",
                    host,
                    recap.ok,
                    recap.changed,
                    recap.failed,
                    recap.skipped,
                    recap.rescued,
                    recap.ignored
                )?;
                writeln!(
                    self.out,
                    "\nOUTCOME: {}{} (txid {})",
                    outcome.as_str(),
                    if *recovered {
                        ", finished by recovery"
                    } else {
                        ""
                    },
                    e.txid
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_agent::event::{Outcome, Recap, Section};

    fn entry(seq: u64, record: Record) -> Entry {
        Entry {
            seq,
            txid: "tx1".into(),
            time: String::new(),
            record,
        }
    }

    #[test]
    fn human_output_looks_like_ansible() {
        let mut buf = Vec::new();
        let mut r = Renderer::new(&mut buf, Format::Human);
        r.entry(&entry(
            0,
            Record::PlayStart {
                index: 0,
                name: "h01".into(),
            },
        ))
        .unwrap();
        r.entry(&entry(
            1,
            Record::TaskStart {
                path: "0.0".into(),
                section: Section::Block,
                name: "b2 fails".into(),
                action: "command".into(),
            },
        ))
        .unwrap();
        r.entry(&entry(
            2,
            Record::TaskEnd {
                path: "0.0".into(),
                section: Section::Block,
                name: "b2 fails".into(),
                action: "command".into(),
                status: TaskStatus::Ignored,
                result: json!({"changed": true, "failed": true, "rc": 1, "cmd": ["/bin/false"]}),
                duration_ms: 3,
                private_result: None,
            },
        ))
        .unwrap();
        r.entry(&entry(
            3,
            Record::End {
                outcome: Outcome::Succeeded,
                recap: Recap {
                    ok: 1,
                    changed: 1,
                    ignored: 1,
                    ..Default::default()
                },
                recovered: false,
            },
        ))
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("\nPLAY [h01] ****"), "{text}");
        assert!(text.contains("TASK [b2 fails] ***"), "{text}");
        assert!(text.contains("fatal: [localhost]: FAILED! => {\"changed\": true, \"cmd\": [\"/bin/false\"], \"rc\": 1}\n...ignoring"), "{text}");
        assert!(text.contains("ok=1    changed=1    unreachable=0    failed=0    skipped=0    rescued=0    ignored=1"), "{text}");
        assert_eq!(banner("PLAY RECAP").len(), 80);
    }

    #[test]
    fn diffs_render_as_ansible_shows_them() {
        let d = json!({"before": "a\nb\nc\n", "after": "a\nB\nc\n",
            "before_header": "/etc/app.conf", "after_header": "dynamically generated"});
        let text = render_diff(&d);
        assert!(
            text.starts_with(
                "--- before: /etc/app.conf\n+++ after: dynamically generated\n@@ -1,3 +1,3 @@\n"
            ),
            "{text}"
        );
        assert!(text.contains("\n-b\n+B\n"), "{text}");
        // A file module's before/after mappings, as sorted JSON.
        let text = render_diff(
            &json!({"before": {"path": "/x", "mode": "0644"}, "after": {"path": "/x", "mode": "0600"}}),
        );
        assert!(
            text.contains("-    \"mode\": \"0644\",\n+    \"mode\": \"0600\",\n"),
            "{text}"
        );
        assert_eq!(
            render_diff(&json!({"before": {"path": "/x"}, "after": {"path": "/x"}})),
            ""
        );
        assert_eq!(
            render_diff(&json!([{"src_larger": 104448}, {"dst_binary": 1}])),
            "diff skipped: source file size is greater than 104448\ndiff skipped: destination file appears to be binary\n"
        );
    }

    #[test]
    fn json_lines_have_the_documented_shape() {
        let mut buf = Vec::new();
        let mut r = Renderer::new(&mut buf, Format::Json);
        r.entry(&entry(
            2,
            Record::TaskEnd {
                path: "0.0".into(),
                section: Section::Rescue,
                name: "r".into(),
                action: "debug".into(),
                status: TaskStatus::Ok,
                result: json!({"msg": "x"}),
                duration_ms: 0,
                private_result: None,
            },
        ))
        .unwrap();
        r.entry(&entry(
            3,
            Record::End {
                outcome: Outcome::RolledBack,
                recap: Recap {
                    rescued: 1,
                    ..Default::default()
                },
                recovered: false,
            },
        ))
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "task");
        assert_eq!(lines[0]["section"], "rescue");
        assert_eq!(lines[0]["status"], "ok");
        assert_eq!(lines[1]["type"], "summary");
        assert_eq!(lines[1]["outcome"], "rolled_back");
        assert_eq!(lines[1]["recap"]["rescued"], 1);
    }
}
