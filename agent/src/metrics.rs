//! The host's own facts as Prometheus metrics: the agent's textfile (`--metrics-textfile`, for
//! node_exporter's textfile collector) and the body `rampart run --local --pushgateway` pushes.
//!
//! Inputs: the transactions finished on this host ([`History`], read from `history/`), the last
//! consistency [`Report`], and for a push the run's own facts ([`RunFacts`]). Output: text in
//! Prometheus's text format 0.0.4 (what the textfile collector, the pushgateway and `promtool
//! check metrics` read), encoded with `prometheus-client`'s `prometheus_text` encoder, as the
//! controller's `/metrics` is.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `rampart_agent_transactions_total` | counter | outcome | finished transactions, by the journal's outcome |
//! | `rampart_agent_recoveries_total` | counter | | transactions finished by start-up recovery after a crash |
//! | `rampart_host_release_info` | gauge (=1) | component, version | what `current` points at |
//! | `rampart_host_state_consistent` | gauge | | 1 when the last check found no problem |
//! | `rampart_host_state_problems` | gauge | code | problems of the last check, by code (every code present) |
//! | `rampart_agent_last_check_timestamp_seconds` | gauge | | when that check ran |
//! | `rampart_build_info` | gauge (=1) | version | this build |
//! | `rampart_run_outcome` | gauge | outcome | (push only) 1 for the run's outcome, 0 for the others |
//! | `rampart_run_duration_seconds` | gauge | | (push only) how long the run took |
//! | `rampart_run_tasks` | gauge | status | (push only) the run's recap: ok, changed, failed, skipped, rescued, ignored |
//! | `rampart_run_finished_timestamp_seconds` | gauge | | (push only) when it ended |
//!
//! The counters are derived from `history/`, not kept in memory: an agent restart counts the
//! same history again, so they do not fall back to zero. Removing history files lowers them at
//! the next start (a counter reset, which `rate()` and `increase()` absorb).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::consistency::{Code, Report};
use crate::event::{Entry, Outcome, Recap, Record};
use crate::journal::HISTORY_DIR;

/// The most bytes read from the end of a history file to find its `end` record.
const TAIL_MAX: u64 = 64 * 1024;
/// The most history files counted (a bound on memory and start-up time).
const HISTORY_MAX: usize = 1_000_000;

/// Every outcome the journal knows, in order.
pub const OUTCOMES: [Outcome; 5] = [
    Outcome::Succeeded,
    Outcome::RolledBack,
    Outcome::RollbackFailed,
    Outcome::Failed,
    Outcome::CheckOnly,
];

// Fails to compile when `Outcome` gains a variant that `OUTCOMES` lacks.
const _: fn(Outcome) = |o| match o {
    Outcome::Succeeded
    | Outcome::RolledBack
    | Outcome::RollbackFailed
    | Outcome::Failed
    | Outcome::CheckOnly => {}
};

/// The finished transactions of a state dir, counted once each.
#[derive(Debug, Default, Clone)]
pub struct History {
    seen: HashSet<String>,
    by_outcome: BTreeMap<&'static str, u64>,
    recoveries: u64,
}

impl History {
    /// Counts the history files not counted yet (only their last record is read).
    pub fn refresh(&mut self, state_dir: &Path) {
        let dir = state_dir.join(HISTORY_DIR);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in rd.flatten().take(HISTORY_MAX) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(txid) = name.strip_suffix(".jsonl") else {
                continue;
            };
            if self.seen.len() >= HISTORY_MAX || self.seen.contains(txid) {
                continue;
            }
            if let Some(Record::End {
                outcome, recovered, ..
            }) = last_entry(&e.path()).map(|e| e.record)
            {
                *self.by_outcome.entry(outcome.as_str()).or_default() += 1;
                self.recoveries += u64::from(recovered);
            }
            // Counted or not (a file without its end is not a finished transaction), it is not
            // read again.
            self.seen.insert(txid.to_string());
        }
    }

    /// Finished transactions with `outcome`.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.by_outcome.get(outcome.as_str()).copied().unwrap_or(0)
    }

    /// Transactions finished by start-up recovery.
    pub fn recoveries(&self) -> u64 {
        self.recoveries
    }
}

/// The last complete record of a journal file, read from its tail.
fn last_entry(path: &Path) -> Option<Entry> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(TAIL_MAX);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.take(TAIL_MAX).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let last = text.trim_end_matches('\n').rsplit('\n').next()?;
    serde_json::from_str(last).ok()
}

/// What one `rampart run` did, for a push.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFacts {
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
    /// Its recap.
    pub recap: Recap,
    /// When it ended.
    pub finished: chrono::DateTime<chrono::Utc>,
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn seconds(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

/// The metrics of this host (and of a run, when given) in the text format 0.0.4.
pub fn render(history: &History, report: &Report, run: Option<&RunFacts>) -> String {
    let mut reg = Registry::default();

    let transactions = Family::<Labels, Counter>::default();
    for o in OUTCOMES {
        transactions
            .get_or_create(&labels(&[("outcome", o.as_str())]))
            .inc_by(history.count(o));
    }
    reg.register(
        "rampart_agent_transactions",
        "Transactions finished on this host, by outcome (counted from the agent's history)",
        transactions,
    );
    let recoveries = Counter::<u64>::default();
    recoveries.inc_by(history.recoveries());
    reg.register(
        "rampart_agent_recoveries",
        "Transactions finished by start-up recovery after a crash",
        recoveries,
    );

    let releases = Family::<Labels, Gauge>::default();
    for c in &report.components {
        if let Some(v) = &c.version {
            releases
                .get_or_create(&labels(&[("component", &c.name), ("version", v)]))
                .set(1);
        }
    }
    reg.register(
        "rampart_host_release_info",
        "The release current points at, per component (always 1)",
        releases,
    );
    let consistent = Gauge::<i64>::default();
    consistent.set(i64::from(report.consistent()));
    reg.register(
        "rampart_host_state_consistent",
        "1 when the last state-consistency check found no problem on this host, else 0",
        consistent,
    );
    let problems = Family::<Labels, Gauge>::default();
    for code in Code::ALL {
        problems
            .get_or_create(&labels(&[("code", code.as_str())]))
            .set(report.count(code) as i64);
    }
    reg.register(
        "rampart_host_state_problems",
        "Problems the last state-consistency check found, by code",
        problems,
    );
    let last = Gauge::<f64, AtomicU64>::default();
    last.set(seconds(report.checked));
    reg.register(
        "rampart_agent_last_check_timestamp_seconds",
        "When the last state-consistency check ran (Unix time)",
        last,
    );
    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    reg.register("rampart_build_info", "The Rampart build (always 1)", build);

    if let Some(run) = run {
        register_run(&mut reg, run);
    }

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

fn register_run(reg: &mut Registry, run: &RunFacts) {
    let outcome = Family::<Labels, Gauge>::default();
    for o in OUTCOMES {
        outcome
            .get_or_create(&labels(&[("outcome", o.as_str())]))
            .set(i64::from(o == run.outcome));
    }
    reg.register(
        "rampart_run_outcome",
        "1 for the outcome of the last rampart run on this host, 0 for the others",
        outcome,
    );
    let duration = Gauge::<f64, AtomicU64>::default();
    duration.set(run.duration.as_secs_f64());
    reg.register(
        "rampart_run_duration_seconds",
        "How long the last rampart run took",
        duration,
    );
    let tasks = Family::<Labels, Gauge>::default();
    let r = run.recap;
    for (status, n) in [
        ("ok", r.ok),
        ("changed", r.changed),
        ("failed", r.failed),
        ("skipped", r.skipped),
        ("rescued", r.rescued),
        ("ignored", r.ignored),
    ] {
        tasks
            .get_or_create(&labels(&[("status", status)]))
            .set(i64::from(n));
    }
    reg.register(
        "rampart_run_tasks",
        "The recap of the last rampart run, by status",
        tasks,
    );
    let finished = Gauge::<f64, AtomicU64>::default();
    finished.set(seconds(run.finished));
    reg.register(
        "rampart_run_finished_timestamp_seconds",
        "When the last rampart run ended (Unix time)",
        finished,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::{ComponentFound, Problem};

    fn report(problems: Vec<Problem>) -> Report {
        Report {
            problems,
            components: vec![
                ComponentFound {
                    name: "backend".into(),
                    version: Some("2.0.1".into()),
                    service_version: None,
                },
                ComponentFound {
                    name: "empty".into(),
                    version: None,
                    service_version: None,
                },
            ],
            in_progress: None,
            checked: chrono::DateTime::from_timestamp(1_700_000_000, 500_000_000).unwrap(),
        }
    }

    fn end(outcome: Outcome, recovered: bool) -> String {
        let e = Entry {
            seq: 3,
            txid: "t".into(),
            time: "2024-01-01T00:00:00Z".into(),
            record: Record::End {
                outcome,
                recap: Recap::default(),
                recovered,
            },
        };
        format!(
            "{{\"seq\":0,\"txid\":\"t\",\"time\":\"x\",\"type\":\"play_start\",\"index\":0,\"name\":\"p\"}}\n{}\n",
            serde_json::to_string(&e).unwrap()
        )
    }

    #[test]
    fn history_is_counted_once_per_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let hist = dir.path().join(HISTORY_DIR);
        std::fs::create_dir_all(&hist).unwrap();
        std::fs::write(hist.join("a.jsonl"), end(Outcome::Succeeded, false)).unwrap();
        std::fs::write(hist.join("b.jsonl"), end(Outcome::RolledBack, true)).unwrap();
        std::fs::write(hist.join("c.jsonl"), "torn").unwrap();
        std::fs::write(hist.join("notes.txt"), end(Outcome::Failed, false)).unwrap();
        let mut h = History::default();
        h.refresh(dir.path());
        h.refresh(dir.path());
        assert_eq!(h.count(Outcome::Succeeded), 1);
        assert_eq!(h.count(Outcome::RolledBack), 1);
        assert_eq!(h.count(Outcome::Failed), 0);
        assert_eq!(h.recoveries(), 1);
        std::fs::write(hist.join("d.jsonl"), end(Outcome::Succeeded, false)).unwrap();
        h.refresh(dir.path());
        assert_eq!(h.count(Outcome::Succeeded), 2);
        // A new History (a restarted agent) counts the same.
        let mut again = History::default();
        again.refresh(dir.path());
        assert_eq!(again.count(Outcome::Succeeded), 2);
        assert_eq!(again.recoveries(), 1);
    }

    #[test]
    fn the_text_names_counters_by_their_samples() {
        let mut h = History::default();
        h.by_outcome.insert("succeeded", 4);
        h.recoveries = 1;
        let text = render(&h, &report(Vec::new()), None);
        for want in [
            "# HELP rampart_agent_transactions_total Transactions finished",
            "# TYPE rampart_agent_transactions_total counter\n",
            "rampart_agent_transactions_total{outcome=\"succeeded\"} 4\n",
            "rampart_agent_transactions_total{outcome=\"rollback_failed\"} 0\n",
            "# TYPE rampart_agent_recoveries_total counter\nrampart_agent_recoveries_total 1\n",
            "rampart_host_release_info{component=\"backend\",version=\"2.0.1\"} 1\n",
            "rampart_host_state_consistent 1\n",
            "rampart_host_state_problems{code=\"staging_left\"} 0\n",
            "rampart_agent_last_check_timestamp_seconds 1700000000.5\n",
            "rampart_build_info{version=\"",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("component=\"empty\""), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("rampart_run_"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn problems_and_run_facts() {
        use crate::consistency::Code;
        let p = |code| Problem {
            component: "backend".into(),
            code,
            message: "m".into(),
        };
        let r = report(vec![
            p(Code::StagingLeft),
            p(Code::StagingLeft),
            p(Code::LockHeld),
        ]);
        let run = RunFacts {
            outcome: Outcome::RolledBack,
            duration: Duration::from_millis(2500),
            recap: Recap {
                ok: 7,
                changed: 2,
                failed: 1,
                skipped: 0,
                rescued: 1,
                ignored: 0,
            },
            finished: chrono::DateTime::from_timestamp(1_700_000_100, 0).unwrap(),
        };
        let text = render(&History::default(), &r, Some(&run));
        for want in [
            "rampart_host_state_consistent 0\n",
            "rampart_host_state_problems{code=\"staging_left\"} 2\n",
            "rampart_host_state_problems{code=\"lock_held\"} 1\n",
            "rampart_run_outcome{outcome=\"rolled_back\"} 1\n",
            "rampart_run_outcome{outcome=\"succeeded\"} 0\n",
            "rampart_run_duration_seconds 2.5\n",
            "rampart_run_tasks{status=\"ok\"} 7\n",
            "rampart_run_tasks{status=\"rescued\"} 1\n",
            "rampart_run_finished_timestamp_seconds 1700000100",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
