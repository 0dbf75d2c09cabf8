//! Reading an interrupted journal into a replay plan: a pure function over the journal's entries.
//!
//! Input: the entries of `journal/<txid>.jsonl` (and a torn tail, if any). Output: the
//! [`Replay`] the engine follows and the `Recovery` record that says what the agent decided:
//! - interrupted in a `block` (or between tasks of one): the interrupted task, or the next one,
//!   fails as "interrupted", so `rescue` then `always` run;
//! - interrupted anywhere inside a `rescue`: that whole rescue runs again (its tasks are
//!   idempotent), then `always`;
//! - interrupted inside an `always`: that `always` runs again.
//!
//! An earlier recovery's `rerun_section` is honoured the same way, so a crash during recovery is
//! itself recovered.

use crate::engine::{Replay, ReplayItem};
use crate::event::{Entry, Record};
use rampart_playbook::model::{outermost_cleanup_section, section_of};

/// What recovery will do, ready to be journaled.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The replay the engine follows.
    pub replay: Replay,
    /// The record to journal before replaying.
    pub record: Record,
    /// Whether the journal already ends with an `End` record (only the move to history is left).
    pub already_finished: bool,
}

/// Builds the recovery plan for a journal's entries.
pub fn plan(entries: &[Entry], torn_tail: Option<String>, pid: u32) -> Plan {
    let mut items: Vec<ReplayItem> = Vec::new();
    let mut finished = false;
    for e in entries {
        match &e.record {
            Record::PlayStart { index, .. } => items.push(ReplayItem::Play(*index)),
            Record::TaskStart { path, .. } => items.push(ReplayItem::Task {
                path: path.clone(),
                end: None,
            }),
            Record::TaskEnd {
                path,
                status,
                result,
                private_result,
                ..
            } => {
                if let Some(ReplayItem::Task { path: p, end }) = items.last_mut()
                    && p == path
                    && end.is_none()
                {
                    *end = Some((
                        *status,
                        private_result.clone().unwrap_or_else(|| result.clone()),
                    ));
                }
            }
            Record::Recovery {
                rerun_section: Some(prefix),
                ..
            } => drop_section(&mut items, prefix),
            Record::End { .. } => finished = true,
            Record::Begin { .. }
            | Record::TaskRetry { .. }
            | Record::TaskProgress { .. }
            | Record::Recovery { .. } => {}
        }
    }
    let last_task = items.iter().rev().find_map(|i| match i {
        ReplayItem::Task { path, .. } => Some(path.clone()),
        ReplayItem::Play(_) => None,
    });
    let (action, rerun) = match last_task.as_deref().and_then(outermost_cleanup_section) {
        _ if finished => ("finish".to_string(), None),
        Some(prefix) => {
            let action = if prefix.ends_with(".rescue") {
                "rerun_rescue"
            } else {
                "rerun_always"
            };
            drop_section(&mut items, &prefix);
            (action.to_string(), Some(prefix))
        }
        None => ("rescue".to_string(), None),
    };
    Plan {
        replay: Replay {
            items: items.into(),
        },
        record: Record::Recovery {
            interrupted_section: last_task.as_deref().map(section_of),
            interrupted_path: last_task,
            action,
            rerun_section: rerun,
            torn_tail,
            pid,
        },
        already_finished: finished,
    }
}

/// Removes the trailing items recorded inside the section `prefix` (they are contiguous at the
/// end: the interruption was inside it).
fn drop_section(items: &mut Vec<ReplayItem>, prefix: &str) {
    let inside = format!("{prefix}.");
    while let Some(ReplayItem::Task { path, .. }) = items.last() {
        if path.starts_with(&inside) {
            items.pop();
        } else {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Section, TaskStatus};
    use serde_json::json;

    fn e(seq: u64, record: Record) -> Entry {
        Entry {
            seq,
            txid: "t".into(),
            time: String::new(),
            record,
        }
    }
    fn start(p: &str) -> Record {
        Record::TaskStart {
            path: p.into(),
            section: section_of(p),
            name: p.into(),
            action: "command".into(),
        }
    }
    fn end(p: &str, status: TaskStatus) -> Record {
        Record::TaskEnd {
            path: p.into(),
            section: section_of(p),
            name: p.into(),
            action: "command".into(),
            status,
            result: json!({"changed": true}),
            duration_ms: 1,
            private_result: None,
        }
    }

    #[test]
    fn dangling_block_task_is_replayed_as_interrupted() {
        let entries = vec![
            e(
                0,
                Record::PlayStart {
                    index: 0,
                    name: "p".into(),
                },
            ),
            e(1, start("0.0.block.0")),
            e(2, end("0.0.block.0", TaskStatus::Changed)),
            e(3, start("0.0.block.1")),
        ];
        let p = plan(&entries, None, 1);
        assert_eq!(p.replay.items.len(), 3);
        assert!(matches!(
            p.replay.items.back(),
            Some(ReplayItem::Task { end: None, .. })
        ));
        let Record::Recovery {
            action,
            interrupted_path,
            interrupted_section,
            ..
        } = &p.record
        else {
            panic!()
        };
        assert_eq!(action, "rescue");
        assert_eq!(interrupted_path.as_deref(), Some("0.0.block.1"));
        assert_eq!(*interrupted_section, Some(Section::Block));
    }

    #[test]
    fn interrupted_rescue_is_rerun_whole_even_after_an_earlier_recovery() {
        let mut entries = vec![
            e(
                0,
                Record::PlayStart {
                    index: 0,
                    name: "p".into(),
                },
            ),
            e(1, start("0.0.block.0")),
            e(2, end("0.0.block.0", TaskStatus::Failed)),
            e(3, start("0.0.rescue.0")),
            e(4, end("0.0.rescue.0", TaskStatus::Changed)),
            e(5, start("0.0.rescue.1")),
        ];
        let p = plan(&entries, None, 1);
        assert_eq!(p.replay.items.len(), 2);
        let Record::Recovery {
            action,
            rerun_section,
            ..
        } = &p.record
        else {
            panic!()
        };
        assert_eq!(action, "rerun_rescue");
        assert_eq!(rerun_section.as_deref(), Some("0.0.rescue"));
        // The recovery itself crashes inside the rerun rescue: still rerun it whole.
        entries.push(e(6, p.record.clone()));
        entries.push(e(7, start("0.0.rescue.0")));
        let p2 = plan(&entries, None, 1);
        assert_eq!(p2.replay.items.len(), 2);
    }

    #[test]
    fn interrupted_always_inside_nested_rescue_reruns_the_outer_always() {
        let entries = vec![
            e(0, start("0.0.block.0")),
            e(1, end("0.0.block.0", TaskStatus::Ok)),
            e(2, start("0.0.always.0.rescue.0")),
        ];
        let p = plan(&entries, Some("{\"seq\":3".into()), 1);
        assert_eq!(p.replay.items.len(), 1);
        let Record::Recovery {
            action, torn_tail, ..
        } = &p.record
        else {
            panic!()
        };
        assert_eq!(action, "rerun_always");
        assert_eq!(torn_tail.as_deref(), Some("{\"seq\":3"));
    }

    #[test]
    fn a_journal_with_its_end_only_needs_moving() {
        let entries = vec![
            e(0, start("0.0")),
            e(1, end("0.0", TaskStatus::Ok)),
            e(
                2,
                Record::End {
                    outcome: crate::event::Outcome::Succeeded,
                    recap: Default::default(),
                    recovered: false,
                },
            ),
        ];
        assert!(plan(&entries, None, 1).already_finished);
    }
}
