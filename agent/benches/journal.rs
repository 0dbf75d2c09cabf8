//! Micro-benchmark of the write-ahead journal's append without the disk's sync
//! (`Durability::None`): the entry's JSON encoding, the timestamp and one `write` per record.
//!
//! Run: `cargo bench -p rampart-agent --bench journal`.

use divan::{Bencher, black_box};
use rampart_agent::event::{Record, Section, TaskStatus};
use rampart_agent::journal::{Durability, Journal};
use serde_json::json;

fn main() {
    divan::main();
}

fn task_start() -> Record {
    Record::TaskStart {
        path: "0.block.3".into(),
        section: Section::Block,
        name: "stage api 2.4.1 (services still running)".into(),
        action: "rampart_release".into(),
    }
}

fn task_end() -> Record {
    Record::TaskEnd {
        path: "0.block.3".into(),
        section: Section::Block,
        name: "stage api 2.4.1 (services still running)".into(),
        action: "rampart_release".into(),
        status: TaskStatus::Changed,
        result: json!({
            "changed": true,
            "component": "api",
            "version": "2.4.1",
            "release_path": "/srv/app/releases/api/2.4.1",
            "sha256": "ab".repeat(32),
            "entries": 68,
            "bytes": 1_048_576,
        }),
        duration_ms: 41,
        private_result: None,
    }
}

/// One record appended to an open journal (the file grows over the run; the tmp dir is
/// removed at the end).
#[divan::bench(args = ["task_start", "task_end"])]
fn append(bencher: Bencher, kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::create(dir.path(), "bench", Durability::None).unwrap();
    let make = match kind {
        "task_start" => task_start,
        _ => task_end,
    };
    bencher
        .with_inputs(make)
        .bench_local_values(|record| journal.append(black_box(record)).unwrap());
}
