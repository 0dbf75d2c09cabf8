//! The delivery worker: a thread per sink kind that claims that sink's due outbox rows,
//! delivers each on a thread (all of a batch at once, each request bounded by
//! [`super::HTTP_TIMEOUT`]), and records how it ended. One sink that hangs delays only its own
//! next batch, never another sink's notices.
//!
//! It runs apart from the tokio runtime on purpose: a sink that hangs holds only the worker's
//! threads, never the runtime's blocking pool that the runners' store calls use, so a sink that
//! is down never slows a deployment. A batch is finished before the next claim, so none of this
//! controller's rows of that sink is in flight when it claims: rows leased to its own instance name are
//! taken again at once (a controller restarted under the same name resumes its deliveries),
//! those of another instance once their lease ([`LEASE`]) ran out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rampart_proto::v1 as pb;

use super::sinks::{self, Github, Outcome, Subject};
use super::{GIVE_UP_AFTER, NoticeEvent, SinkKind, backoff};
use crate::config::ControllerConfig;
use crate::metrics::Metrics as Stats;
use crate::store::{Delivery, OutboxRow, Store, StoreResult};

/// How long a claim holds a row: longer than the longest delivery (GitHub's pages and create,
/// each bounded by the HTTP timeout).
pub const LEASE: Duration = Duration::from_secs(180);
/// Rows claimed at once.
pub const BATCH: u32 = 16;
/// The pause when nothing was due.
pub const IDLE: Duration = Duration::from_millis(500);
/// How long a resolution waits for its incident's notice to the same sink to be delivered
/// first, between two looks.
const ORDER_WAIT: Duration = Duration::from_secs(2);

/// The worker's handle: stops it when dropped or asked.
#[derive(Debug)]
pub struct Worker {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker of `instance` over `store`, counting failures in `stats` (`rampart_notifications_failed_total`).
    pub fn start(
        cfg: Arc<ControllerConfig>,
        store: Arc<dyn Store>,
        stats: Arc<Stats>,
    ) -> std::io::Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for sink in super::KIND_NAMES {
            let (cfg, store, stats, s) = (cfg.clone(), store.clone(), stats.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("notify-{sink}"))
                    .spawn(move || run(&cfg, &*store, &stats, &s, sink))?,
            );
        }
        Ok(Worker { stop, threads })
    }

    /// Stops claiming, and waits for the batch in flight (at most its timeouts).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn run(cfg: &ControllerConfig, store: &dyn Store, stats: &Stats, stop: &AtomicBool, sink: &str) {
    let mut store_failing = false;
    while !stop.load(Ordering::Relaxed) {
        let rows = match store.claim_notices(&cfg.instance, LEASE, BATCH, sink) {
            Ok(r) => {
                store_failing = false;
                r
            }
            Err(e) => {
                if !store_failing {
                    tracing::warn!("notifications ({sink}): claiming due outbox rows: {e}");
                }
                store_failing = true;
                std::thread::sleep(IDLE * 4);
                continue;
            }
        };
        if rows.is_empty() {
            std::thread::sleep(IDLE);
            continue;
        }
        std::thread::scope(|scope| {
            for row in &rows {
                scope.spawn(move || {
                    if let Err(e) = deliver_row(cfg, store, stats, row) {
                        tracing::warn!(notice = %row.notice.id, "notifications: {e}");
                    }
                });
            }
        });
    }
}

/// Delivers one claimed row and records the result.
fn deliver_row(
    cfg: &ControllerConfig,
    store: &dyn Store,
    stats: &Stats,
    row: &OutboxRow,
) -> StoreResult<()> {
    let n = &row.notice;
    let outcome = attempt(cfg, store, row);
    let result = match outcome {
        Outcome::Delivered => {
            tracing::info!(notice = %n.id, attempts = row.attempts, "notification delivered");
            Delivery::Delivered
        }
        Outcome::Retry(after, error) => {
            stats.notification_failed(&n.environment, &n.sink);
            if row.age >= GIVE_UP_AFTER {
                tracing::error!(notice = %n.id, attempts = row.attempts, %error, "notification given up after 24 h");
                Delivery::Failed {
                    error: format!("gave up after {} attempts: {error}", row.attempts),
                }
            } else {
                let after = after.unwrap_or_else(|| backoff(row.attempts));
                tracing::warn!(notice = %n.id, attempts = row.attempts, retry_in_ms = after.as_millis() as u64, %error, "notification not delivered; retrying");
                Delivery::Retry { after, error }
            }
        }
        Outcome::Failed(error) => {
            stats.notification_failed(&n.environment, &n.sink);
            tracing::error!(notice = %n.id, %error, "notification refused for good");
            Delivery::Failed { error }
        }
    };
    store.settle_notice(&n.id, &cfg.instance, &result)?;
    Ok(())
}

/// A resolution waiting for its incident's notice to the same sink.
fn waiting(error: &str) -> Outcome {
    Outcome::Retry(Some(ORDER_WAIT), error.to_string())
}

/// One attempt at a row.
fn attempt(cfg: &ControllerConfig, store: &dyn Store, row: &OutboxRow) -> Outcome {
    let n = &row.notice;
    let Some(event) = NoticeEvent::parse(&n.event) else {
        return Outcome::Failed(format!("unknown event {:?}", n.event));
    };
    let Some(sink) = cfg
        .environments
        .get(&n.environment)
        .and_then(|e| e.notify.iter().find(|s| s.kind.name() == n.sink))
    else {
        return Outcome::Failed(format!(
            "environment {} has no {} sink configured any more",
            n.environment, n.sink
        ));
    };
    let subject = match event {
        NoticeEvent::Incident | NoticeEvent::IncidentResolved => {
            match store.get_incident(&n.subject) {
                Ok(Some(i)) => Subject::Incident(i),
                Ok(None) => return Outcome::Failed(format!("no incident {}", n.subject)),
                Err(e) => return Outcome::Retry(None, e.to_string()),
            }
        }
        NoticeEvent::Approval | NoticeEvent::Succeeded => match store.get_deployment(&n.subject) {
            Ok(Some(d)) => Subject::Deployment(d),
            Ok(None) => return Outcome::Failed(format!("no deployment {}", n.subject)),
            Err(e) => return Outcome::Retry(None, e.to_string()),
        },
    };
    // What a resolution needs from the opening's row of the same sink: whether it is still
    // pending (then the resolution waits), and the GitHub issue it noted.
    let opening = || -> Result<Option<OutboxRow>, Outcome> {
        let rows = store
            .notices(&n.subject)
            .map_err(|e| Outcome::Retry(None, e.to_string()))?;
        Ok(rows
            .into_iter()
            .find(|r| r.notice.sink == n.sink && r.notice.event == NoticeEvent::Incident.name()))
    };
    match (&sink.kind, &subject) {
        (SinkKind::Slack { webhook_url }, _) => sinks::deliver_slack(webhook_url, event, &subject),
        (SinkKind::Webhook { url, secret }, _) => {
            sinks::deliver_webhook(url, secret, event, &subject)
        }
        (SinkKind::Pagerduty { url, routing_key }, Subject::Incident(inc)) => {
            if event == NoticeEvent::IncidentResolved {
                match opening() {
                    Err(o) => return o,
                    Ok(Some(r)) if r.state == crate::store::NoticeState::Pending => {
                        return waiting("waiting for the trigger to be delivered first");
                    }
                    Ok(_) => {}
                }
            }
            sinks::deliver_pagerduty(url, routing_key, event, inc)
        }
        (
            SinkKind::Github {
                api_url,
                repository,
                token,
            },
            Subject::Incident(inc),
        ) => {
            let gh = Github {
                api_url,
                repository,
                token,
            };
            let note = |s: &str| {
                if let Err(e) = store.note_notice(&n.id, &cfg.instance, s) {
                    tracing::warn!(notice = %n.id, "noting a delivery step: {e}");
                }
            };
            let r = if event == NoticeEvent::Incident {
                github_open(&gh, inc, row, &note)
            } else {
                match opening() {
                    Err(o) => Err(o),
                    Ok(Some(r)) if r.state == crate::store::NoticeState::Pending => {
                        Err(waiting("waiting for the issue to be created first"))
                    }
                    Ok(open_row) => github_resolve(&gh, inc, row, open_row.as_ref(), &note),
                }
            };
            r.err().unwrap_or(Outcome::Delivered)
        }
        (SinkKind::Github { .. } | SinkKind::Pagerduty { .. }, Subject::Deployment(_)) => {
            Outcome::Failed(format!("{} takes only incident notices", n.sink))
        }
    }
}

/// Opens the incident's issue, unless one carrying its marker exists already.
fn github_open(
    gh: &Github<'_>,
    inc: &pb::Incident,
    row: &OutboxRow,
    note: &dyn Fn(&str),
) -> Result<(), Outcome> {
    if sinks::noted_issue(&row.note).is_some() {
        return Ok(());
    }
    let n = match gh.find_issue(&inc.id)? {
        Some(n) => n,
        None => gh.create_issue(inc)?,
    };
    note(&format!("issue={n}"));
    Ok(())
}

/// Comments on the incident's issue and closes it; each step noted, so a retry skips it.
fn github_resolve(
    gh: &Github<'_>,
    inc: &pb::Incident,
    row: &OutboxRow,
    opening: Option<&OutboxRow>,
    note: &dyn Fn(&str),
) -> Result<(), Outcome> {
    let known =
        sinks::noted_issue(&row.note).or_else(|| opening.and_then(|o| sinks::noted_issue(&o.note)));
    let n = match known {
        Some(n) => n,
        None => match gh.find_issue(&inc.id)? {
            Some(n) => n,
            // No open issue of this incident: nothing to close.
            None => return Ok(()),
        },
    };
    if !row.note.contains("commented") {
        gh.comment(n, sinks::github_resolution_comment(inc))?;
        note(&format!("issue={n} commented"));
    }
    gh.close(n)
}
