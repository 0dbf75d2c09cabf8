//! One host's job: capture its state, deliver artifacts, run (or re-attach to) its agent
//! transaction, and report every event and its end to the runner.
//!
//! Inputs: a [`Job`] built by the runner. Outputs: [`Msg`]s on the runner's channel, the last
//! one a [`Msg::Done`] carrying the [`HostDone`].
//!
//! Every call before the transaction runs (connection, state capture, artifact check, `Run`'s
//! first answer) is bounded by the environment's `unreachable_after`, so a stopped agent is
//! `unreachable` on time (see [`crate::agents`]).
//!
//! A fleet-rescue rollback is retried: attempt `n` of [`RESCUE_ATTEMPTS`] has its own txid
//! ([`rescue_txid`]), so no transaction runs twice. A retry first learns how the previous attempt
//! ended (following it if it still runs) and what the host runs now (`CaptureState`), waiting
//! for the agent at most the environment's `rescue_wait`; a host found on its captured versions
//! after a verified end is done, any other runs the rollback again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_proto::v1 as pb;
use serde_json::Value;
use tokio::sync::mpsc;

use super::state::HostState;
use super::{Controller, host_txid};
use crate::agents::{self, Agents, Start, TxEnd, answered};
use crate::config::PlaybookText;

/// How many fleet-rescue rollbacks a host gets, the first included, before its rescue counts as
/// failed: enough for an agent killed during one to come back and be rolled back by the next.
pub(super) const RESCUE_ATTEMPTS: u32 = 3;

/// The txid of attempt `attempt` (from 1) of `host`'s fleet-rescue rollback in `deployment`: the
/// first is [`host_txid`]'s, later ones add `.<attempt>`, derived like it so that a controller
/// that takes over finds them in the stored events.
pub(super) fn rescue_txid(deployment: &str, host: &str, attempt: u32) -> String {
    let first = host_txid(deployment, host, true);
    if attempt <= 1 {
        return first;
    }
    let t = format!("{first}.{attempt}");
    if t.len() <= 64 {
        return t;
    }
    // A deployment id is ASCII (`edge::id`), so any byte is a char boundary.
    let h = crate::config::hash_token(&format!("{deployment}\n{host}\n{attempt}"));
    let keep = deployment.len().min(64 - ".".len() - 12 - ".rescue".len());
    format!("{}.{}.rescue", &deployment[..keep], &h[..12])
}

/// Which attempt of `host`'s fleet-rescue rollback `txid` is, if it is one.
pub(super) fn rescue_attempt_of(deployment: &str, host: &str, txid: &str) -> Option<u32> {
    (1..=RESCUE_ATTEMPTS + 1).find(|&n| rescue_txid(deployment, host, n) == txid)
}

/// The txid, number and previous attempt (its txid and the agent seq to follow it from) of the
/// fleet-rescue rollback to run on `host` now. `running`: the host's rescue runs (a takeover
/// re-attaches to `last_started`, the record's `rescue_txid`); `seen`: the next agent seq of
/// every txid in the stored events. The record names the last attempt started, the events every
/// one an agent answered for; a controller that takes over reads both, so no txid runs twice.
pub(super) fn next_rescue_attempt(
    deployment: &str,
    host: &str,
    running: bool,
    last_started: &str,
    seen: &std::collections::HashMap<String, u64>,
) -> (String, u32, Option<(String, u64)>) {
    let attempt_of = |t: &str| rescue_attempt_of(deployment, host, t);
    let made = seen
        .keys()
        .filter_map(|t| attempt_of(t))
        .chain(attempt_of(last_started))
        .max()
        .unwrap_or(0);
    match attempt_of(last_started) {
        Some(n) if running => (last_started.to_string(), n, None),
        _ if made == 0 => (rescue_txid(deployment, host, 1), 1, None),
        // The last attempt ended without its captured versions: the next one, after a re-check.
        _ => {
            let last = rescue_txid(deployment, host, made);
            let from = seen.get(&last).copied().unwrap_or(0);
            let next = made + 1;
            (
                rescue_txid(deployment, host, next),
                next,
                Some((last, from)),
            )
        }
    }
}

/// How a host's job ended.
#[derive(Debug, Clone)]
pub(super) struct HostDone {
    pub(super) state: HostState,
    pub(super) outcome: pb::Outcome,
    pub(super) message: String,
    pub(super) forensics_id: String,
    pub(super) to_version: String,
    /// The job never reached the agent's transaction (nothing on the host changed).
    pub(super) untouched: bool,
}

/// Messages from host jobs to the runner.
#[derive(Debug)]
pub(super) enum Msg {
    Captured {
        idx: usize,
        json: String,
    },
    Started {
        idx: usize,
        txid: String,
        rescue: bool,
    },
    Event {
        idx: usize,
        rescue: bool,
        ev: pb::TransactionEvent,
    },
    Done {
        idx: usize,
        rescue: bool,
        done: HostDone,
    },
}

/// What a job does on its host.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) idx: usize,
    pub(super) host: String,
    pub(super) addr: String,
    pub(super) playbook: PlaybookText,
    pub(super) vars: Value,
    /// `RunRequest.inventory_json` (empty: none).
    pub(super) inventory_json: String,
    pub(super) txid: String,
    pub(super) check: bool,
    /// Agent seq to re-attach from (events already stored).
    pub(super) from_seq: u64,
    /// Components to capture first (empty: no capture).
    pub(super) capture: Vec<String>,
    /// Artifacts to deliver first.
    pub(super) artifacts: Vec<String>,
    pub(super) rescue: bool,
    /// For a deploy job: the version it puts on the host (rollback-kind: the target).
    pub(super) version: String,
    pub(super) from_version: String,
    /// A fleet-rescue job of an unreachable host: first await its deploy transaction.
    pub(super) await_txid: Option<(String, u64)>,
    pub(super) unreachable_after: Duration,
    /// Fleet rescue: how long an unreachable host is awaited.
    pub(super) rescue_wait: Duration,
    pub(super) deadline: Duration,
    /// A runner before this one (a controller that died) recorded the host's transaction as
    /// started: it may have sent `Run`, so a failure to reach the host now never counts as
    /// "nothing changed there" (the fleet rescue must await and roll it back).
    pub(super) maybe_started: bool,
    /// Fleet rescue: which attempt this is (from 1; 0 for a deploy job).
    pub(super) attempt: u32,
    /// Fleet rescue, a retry: the previous attempt's txid and the agent seq to follow it from.
    pub(super) previous: Option<(String, u64)>,
}

pub(super) fn first_version(capture_json: &str) -> String {
    let v: Value = serde_json::from_str(capture_json).unwrap_or(Value::Null);
    let Some(vs) = v.get("versions").and_then(Value::as_object) else {
        return String::new();
    };
    vs.iter()
        .filter(|(k, _)| k.as_str() != "database")
        .find_map(|(_, v)| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The `CaptureState` of a deploy: what the playbook's own capture records — the components'
/// versions, their services (`components[].service.name`) and the `database`'s schema version.
fn capture_request(components: Vec<String>, vars: &Value) -> pb::CaptureStateRequest {
    let services = vars
        .get("components")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.pointer("/service/name").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let database_json = match vars.get("database") {
        Some(d @ Value::Object(_)) => d.to_string(),
        _ => String::new(),
    };
    pb::CaptureStateRequest {
        components,
        services,
        database_json,
    }
}

/// Every component's version in a state capture (`versions` without `database`), as the
/// rollback playbook's `rollback_versions`: null for a component that had no release.
pub(super) fn captured_versions(capture_json: &str) -> Value {
    let v: Value = serde_json::from_str(capture_json).unwrap_or(Value::Null);
    let mut out = serde_json::Map::new();
    if let Some(vs) = v.get("versions").and_then(Value::as_object) {
        for (k, v) in vs.iter().filter(|(k, _)| k.as_str() != "database") {
            out.insert(k.clone(), v.as_str().map_or(Value::Null, Value::from));
        }
    }
    Value::Object(out)
}

/// One host's job: capture, deliver artifacts, run (or re-attach), and report.
#[tracing::instrument(skip_all, fields(host = %job.host, txid = %job.txid))]
pub(super) async fn run_job(ctl: Arc<Controller>, job: Job, tx: mpsc::Sender<Msg>) {
    let mut done = job_inner(&ctl, &job, &tx).await;
    if job.rescue && job.attempt > 0 {
        // Each attempt is recorded in its `HostFinished` and in the host's message.
        let of = format!("fleet-rescue attempt {} of {RESCUE_ATTEMPTS}", job.attempt);
        done.message = match (done.message.is_empty(), done.state) {
            (true, HostState::RolledBack) if job.attempt > 1 => {
                format!("rolled back by the fleet rescue ({of})")
            }
            (true, _) => String::new(),
            (false, _) => format!("{of}: {}", done.message),
        };
        tracing::info!(host = %job.host, txid = %job.txid, attempt = job.attempt, state = ?done.state, message = %done.message, "fleet-rescue attempt ended");
    }
    let _ = tx
        .send(Msg::Done {
            idx: job.idx,
            rescue: job.rescue,
            done,
        })
        .await;
}

async fn job_inner(ctl: &Arc<Controller>, job: &Job, tx: &mpsc::Sender<Msg>) -> HostDone {
    let agents: &Agents = &ctl.agents;
    tracing::debug!(host = %job.host, addr = %job.addr, txid = %job.txid, rescue = job.rescue, "host job");
    let started = Instant::now();
    let deadline = started + job.deadline;
    let fail = |state: HostState, message: String, untouched: bool| HostDone {
        state,
        outcome: pb::Outcome::Unspecified,
        message,
        forensics_id: String::new(),
        to_version: String::new(),
        untouched: untouched && !job.maybe_started,
    };
    // A fleet rescue of an unreachable host first learns how its own transaction ended.
    if let Some((deploy_txid, from)) = &job.await_txid {
        let end = follow_forwarding(
            agents,
            job,
            deploy_txid,
            Start::Watch(*from),
            job.rescue_wait.max(job.unreachable_after),
            deadline,
            tx,
            false,
        )
        .await;
        match end {
            TxEnd::Finished(pb::Outcome::RolledBack) => {
                return HostDone {
                    state: HostState::RolledBack,
                    outcome: pb::Outcome::RolledBack,
                    message: "came back and its own journal rolled it back".into(),
                    forensics_id: forensics(agents, &job.host, &job.addr, deploy_txid).await,
                    to_version: job.from_version.clone(),
                    untouched: false,
                };
            }
            TxEnd::Finished(_) => {} // it changed the host: roll it back below
            // It never took the transaction (its `Run` went unanswered while it was stopped):
            // the rollback below finds the host on its version and verifies it.
            TxEnd::Refused(_) => {}
            TxEnd::Unreachable(e) => {
                return fail(
                    HostState::RollbackFailed,
                    format!("unreachable during the fleet rescue: {e}"),
                    false,
                );
            }
        }
        if job.from_version.is_empty() {
            return fail(
                HostState::RollbackFailed,
                "no version ran before this deployment: nothing to roll back to".into(),
                false,
            );
        }
    }
    if let Some(done) = recheck(agents, job, tx, deadline).await {
        return done;
    }
    let mut client = match agents
        .client_within(&job.host, &job.addr, job.unreachable_after)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let state = if job.rescue {
                HostState::RollbackFailed
            } else {
                HostState::Unreachable
            };
            return fail(state, e, true);
        }
    };
    let mut from_version = job.from_version.clone();
    if !job.capture.is_empty() {
        let components: Vec<String> = job
            .capture
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect();
        let call = client.capture_state(capture_request(components, &job.vars));
        match answered(job.unreachable_after, call).await {
            None => {
                agents.forget(&job.addr);
                return fail(
                    HostState::Unreachable,
                    format!(
                        "state capture on {}: no answer within {:?} (unreachable_after): the agent is stopped or hung",
                        job.addr, job.unreachable_after
                    ),
                    true,
                );
            }
            Some(Ok(r)) => {
                let json = r.into_inner().state_json;
                from_version = first_version(&json);
                let _ = tx.send(Msg::Captured { idx: job.idx, json }).await;
            }
            Some(Err(s)) => {
                let state = if agents::is_transport(&s) {
                    HostState::Unreachable
                } else {
                    HostState::Failed
                };
                agents.forget(&job.addr);
                return fail(
                    state,
                    format!(
                        "state capture on {}: {}",
                        job.addr,
                        agents::call_error(&job.host, &job.addr, &s)
                    ),
                    true,
                );
            }
        }
    }
    for sha in &job.artifacts {
        // The agent answers within `unreachable_after` or is unreachable; an upload under way is
        // then left to the HTTP/2 keepalive and the host's deadline (a large artifact may take
        // longer than `unreachable_after` to send).
        let probe = client.has_artifact(pb::HasArtifactRequest {
            sha256: sha.clone(),
        });
        match answered(job.unreachable_after, probe).await {
            None => {
                agents.forget(&job.addr);
                return fail(
                    HostState::Unreachable,
                    format!(
                        "artifact check on {}: no answer within {:?} (unreachable_after): the agent is stopped or hung",
                        job.addr, job.unreachable_after
                    ),
                    true,
                );
            }
            Some(Ok(r)) if r.get_ref().present => continue,
            Some(Ok(_)) => {}
            Some(Err(s)) => {
                agents.forget(&job.addr);
                return fail(
                    HostState::Failed,
                    format!(
                        "artifact delivery to {}: HasArtifact {sha}: {}",
                        job.addr,
                        s.message()
                    ),
                    true,
                );
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let delivered = tokio::time::timeout(
            left,
            agents::put_artifact(agents, &mut client, &ctl.artifacts, sha),
        )
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "not delivered within the host's deadline ({left:?})"
            ))
        });
        if let Err(e) = delivered {
            agents.forget(&job.addr);
            return fail(
                HostState::Failed,
                format!("artifact delivery to {}: {e}", job.addr),
                true,
            );
        }
    }
    let _ = tx
        .send(Msg::Started {
            idx: job.idx,
            txid: job.txid.clone(),
            rescue: job.rescue,
        })
        .await;
    let req = pb::RunRequest {
        playbook: job.playbook.text.clone(),
        playbook_name: job.playbook.name.clone(),
        vars_json: job.vars.to_string(),
        check: job.check,
        txid: job.txid.clone(),
        lock_timeout_ms: 0,
        files: job
            .playbook
            .files
            .iter()
            .map(|(path, content)| pb::PlaybookFile {
                path: path.clone(),
                content: content.clone(),
            })
            .collect(),
        tags: Vec::new(),
        skip_tags: Vec::new(),
        force_handlers: false,
        diff: false,
        inventory_json: job.inventory_json.clone(),
    };
    let start = if job.from_seq > 0 {
        Start::Watch(job.from_seq)
    } else {
        Start::Run(req.clone())
    };
    let end = follow_forwarding(
        agents,
        job,
        &job.txid,
        start,
        job.unreachable_after,
        deadline,
        tx,
        job.rescue,
    )
    .await;
    let fid = |o: pb::Outcome| {
        matches!(
            o,
            pb::Outcome::RolledBack | pb::Outcome::RollbackFailed | pb::Outcome::Failed
        )
    };
    match end {
        TxEnd::Finished(o) => {
            let forensics_id = if fid(o) {
                forensics(agents, &job.host, &job.addr, &job.txid).await
            } else {
                String::new()
            };
            let (state, to) = match (job.rescue, o) {
                (false, pb::Outcome::Succeeded | pb::Outcome::CheckOnly) => (
                    HostState::Succeeded,
                    if job.check {
                        from_version.clone()
                    } else {
                        job.version.clone()
                    },
                ),
                (false, pb::Outcome::RolledBack) => (HostState::RolledBack, from_version.clone()),
                (false, pb::Outcome::RollbackFailed) => (HostState::RollbackFailed, String::new()),
                (false, _) => (HostState::Failed, String::new()),
                (true, pb::Outcome::Succeeded) => (HostState::RolledBack, job.from_version.clone()),
                (true, _) => (HostState::RollbackFailed, String::new()),
            };
            HostDone {
                state,
                outcome: o,
                message: if job.rescue && state == HostState::RollbackFailed {
                    format!(
                        "the fleet-rescue rollback to {} ended {:?}",
                        job.from_version, o
                    )
                } else {
                    String::new()
                },
                forensics_id,
                to_version: to,
                untouched: false,
            }
        }
        TxEnd::Unreachable(e) => fail(
            if job.rescue {
                HostState::RollbackFailed
            } else {
                HostState::Unreachable
            },
            e,
            false,
        ),
        TxEnd::Refused(e) => fail(
            if job.rescue {
                HostState::RollbackFailed
            } else {
                HostState::Failed
            },
            format!("the agent refused the transaction: {e}"),
            !job.rescue,
        ),
    }
}

/// The forensics bundle of `txid`, if the agent answers within a few seconds (a stopped agent
/// must not hold the host's job).
async fn forensics(agents: &Agents, host: &str, addr: &str, txid: &str) -> String {
    const WITHIN: Duration = Duration::from_secs(5);
    let look = async {
        match agents.client(host, addr).await {
            Ok(mut c) => agents::forensics_of(&mut c, txid).await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    answered(WITHIN, look).await.unwrap_or_default()
}

/// A retried fleet-rescue rollback, before it runs: how the previous attempt ended and what the
/// host runs now. `Some`: the job is over (the host is back on its captured versions after a
/// verified end, or its agent did not answer within `rescue_wait`); `None`: run the rollback.
async fn recheck(
    agents: &Agents,
    job: &Job,
    tx: &mpsc::Sender<Msg>,
    deadline: Instant,
) -> Option<HostDone> {
    let (previous, from) = job.previous.as_ref()?;
    let until = Instant::now() + job.rescue_wait.max(job.unreachable_after);
    let gave_up = |what: String| HostDone {
        state: HostState::RollbackFailed,
        outcome: pb::Outcome::Unspecified,
        message: what,
        forensics_id: String::new(),
        to_version: String::new(),
        untouched: false,
    };
    // How the previous attempt ended (None: the agent never took it).
    let mut ended: Option<Option<pb::Outcome>> = None;
    let mut last = String::new();
    // Bounded: each pass waits at least a second, and `until` stops it.
    for _ in 0..(job.rescue_wait.as_secs() + 2) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // `Err(None)`: the agent has no such transaction.
        let asked = async {
            let mut c = agents.client(&job.host, &job.addr).await.map_err(Some)?;
            c.get_transaction(pb::GetTransactionRequest {
                txid: previous.clone(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| {
                (s.code() != tonic::Code::NotFound)
                    .then(|| agents::call_error(&job.host, &job.addr, &s))
            })
        };
        match answered(left.min(job.unreachable_after), asked).await {
            Some(Ok(t)) if !t.running => {
                ended = Some(Some(t.outcome()));
                break;
            }
            Some(Ok(_)) => {
                // Still running (the agent was stopped, not killed): follow it to its end.
                let end = follow_forwarding(
                    agents,
                    job,
                    previous,
                    Start::Watch(*from),
                    job.rescue_wait.max(job.unreachable_after),
                    deadline,
                    tx,
                    true,
                )
                .await;
                match end {
                    TxEnd::Finished(o) => ended = Some(Some(o)),
                    TxEnd::Refused(_) => ended = Some(None),
                    TxEnd::Unreachable(e) => last = e,
                }
                break;
            }
            Some(Err(None)) => {
                ended = Some(None);
                break;
            }
            Some(Err(Some(e))) => last = e,
            None => last = format!("no answer from the agent at {}", job.addr),
        }
        agents.forget(&job.addr);
        tokio::time::sleep(
            Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    let Some(ended) = ended else {
        return Some(gave_up(format!(
            "the agent at {} did not tell how {previous} ended within {:?} (rescue_wait): {last}",
            job.addr, job.rescue_wait
        )));
    };
    // What the host runs now, against what it ran before this deployment.
    let want = job
        .vars
        .get("rollback_versions")
        .cloned()
        .unwrap_or(Value::Null);
    let components: Vec<String> = want
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let capture = async {
        let mut c = agents.client(&job.host, &job.addr).await?;
        c.capture_state(capture_request(components, &job.vars))
            .await
            .map(|r| r.into_inner().state_json)
            .map_err(|s| agents::call_error(&job.host, &job.addr, &s))
    };
    let runs = match answered(job.unreachable_after, capture).await {
        Some(Ok(json)) => captured_versions(&json),
        Some(Err(e)) => {
            tracing::warn!(host = %job.host, "re-check of the host's state: {e}");
            return None;
        }
        None => {
            agents.forget(&job.addr);
            return None;
        }
    };
    let verified = matches!(
        ended,
        Some(pb::Outcome::Succeeded | pb::Outcome::RolledBack)
    );
    tracing::info!(host = %job.host, previous = %previous, ended = ?ended, runs = %runs, want = %want, "fleet-rescue re-check");
    if verified && on_captured(&runs, &want) {
        return Some(HostDone {
            state: HostState::RolledBack,
            outcome: ended.unwrap_or(pb::Outcome::Unspecified),
            message: format!(
                "re-checked after {previous} ended {}: runs its captured versions {runs}",
                ended.map_or_else(|| "unknown".to_string(), |o| format!("{o:?}"))
            ),
            forensics_id: String::new(),
            to_version: job.from_version.clone(),
            untouched: false,
        });
    }
    None
}

/// Whether every component with a captured version runs it (`null`: it had none, left alone).
fn on_captured(runs: &Value, want: &Value) -> bool {
    let Some(want) = want.as_object() else {
        return false;
    };
    !want.is_empty()
        && want
            .iter()
            .all(|(c, v)| v.is_null() || runs.get(c) == Some(v))
}

/// `agents::follow`, forwarding every event to the runner.
#[allow(clippy::too_many_arguments)]
async fn follow_forwarding(
    agents: &Agents,
    job: &Job,
    txid: &str,
    start: Start,
    unreachable_after: Duration,
    deadline: Instant,
    tx: &mpsc::Sender<Msg>,
    rescue: bool,
) -> TxEnd {
    let (etx, mut erx) = mpsc::channel::<pb::TransactionEvent>(256);
    let fut = agents::follow(
        agents,
        &job.host,
        &job.addr,
        txid,
        start,
        unreachable_after,
        deadline,
        &etx,
    );
    tokio::pin!(fut);
    let end = loop {
        tokio::select! {
            end = &mut fut => break end,
            Some(ev) = erx.recv() => {
                let _ = tx.send(Msg::Event { idx: job.idx, rescue, ev }).await;
            }
        }
    };
    while let Ok(ev) = erx.try_recv() {
        let _ = tx
            .send(Msg::Event {
                idx: job.idx,
                rescue,
                ev,
            })
            .await;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_version_skips_the_database() {
        assert_eq!(
            first_version(r#"{"versions":{"database":"3","app":"1.0.0"}}"#),
            "1.0.0"
        );
        assert_eq!(first_version(r#"{"versions":{"app":null}}"#), "");
        assert_eq!(first_version("nope"), "");
    }

    #[test]
    fn the_capture_request_names_services_and_the_database() {
        let vars = serde_json::json!({
            "components": [{"name": "app", "service": {"name": "app.service"}}, {"name": "w"}],
            "database": {"url": "jdbc:postgresql://127.0.0.1:5432/app"},
        });
        let r = capture_request(vec!["app".into(), "w".into()], &vars);
        assert_eq!(r.services, ["app.service"]);
        assert_eq!(
            serde_json::from_str::<Value>(&r.database_json).unwrap(),
            vars["database"]
        );
        assert!(
            capture_request(Vec::new(), &serde_json::json!({}))
                .database_json
                .is_empty()
        );
    }

    #[test]
    fn rescue_attempts_have_their_own_txids_and_are_found_again() {
        let d = "d-20261202T063900Z-0123abcd";
        assert_eq!(rescue_txid(d, "h1", 1), host_txid(d, "h1", true));
        assert_eq!(rescue_txid(d, "h1", 2), format!("{d}.h1.rescue.2"));
        let all: Vec<String> = (1..=RESCUE_ATTEMPTS)
            .map(|n| rescue_txid(d, "h1", n))
            .collect();
        for (i, t) in all.iter().enumerate() {
            assert_eq!(rescue_attempt_of(d, "h1", t), Some(i as u32 + 1), "{t}");
            assert!(t.len() <= 64, "{t}");
        }
        assert_eq!(rescue_attempt_of(d, "h1", &host_txid(d, "h1", false)), None);
        assert_eq!(rescue_attempt_of(d, "h2", &all[1]), None);
        assert_eq!(rescue_attempt_of(d, "h1", ""), None);
        // Too long for `.<n>`: hashed, still distinct and found again.
        let long = "d-".to_string() + &"x".repeat(44);
        let t2 = rescue_txid(&long, "h1", 2);
        assert!(t2.len() <= 64, "{t2}");
        assert_ne!(t2, rescue_txid(&long, "h1", 3));
        assert_eq!(rescue_attempt_of(&long, "h1", &t2), Some(2));
    }

    #[test]
    fn the_next_rescue_attempt_comes_from_the_record_and_the_stored_events() {
        use std::collections::HashMap;
        let d = "d-20261202T063900Z-0123abcd";
        let t = |n| rescue_txid(d, "h1", n);
        let none = HashMap::new();
        // The first.
        assert_eq!(
            next_rescue_attempt(d, "h1", false, "", &none),
            (t(1), 1, None)
        );
        // Running at a takeover: re-attach, never a new txid.
        let seen = HashMap::from([(t(1), 7)]);
        assert_eq!(
            next_rescue_attempt(d, "h1", true, &t(1), &seen),
            (t(1), 1, None)
        );
        // Ended: the next one, re-checking the last from the seq already stored.
        assert_eq!(
            next_rescue_attempt(d, "h1", false, &t(1), &seen),
            (t(2), 2, Some((t(1), 7)))
        );
        // A takeover whose record missed attempt 2 (stored events name it): 3, never 2 again.
        let seen = HashMap::from([(t(1), 7), (t(2), 3), (host_txid(d, "h2", true), 9)]);
        assert_eq!(
            next_rescue_attempt(d, "h1", false, &t(1), &seen),
            (t(3), 3, Some((t(2), 3)))
        );
        // The record names an attempt no agent answered for yet.
        assert_eq!(
            next_rescue_attempt(d, "h1", false, &t(2), &none),
            (t(3), 3, Some((t(2), 0)))
        );
        // Other hosts' and the deploy's txids do not count.
        let seen = HashMap::from([
            (host_txid(d, "h1", false), 5),
            (t(1).replace("h1", "h2"), 2),
        ]);
        assert_eq!(
            next_rescue_attempt(d, "h1", false, "", &seen),
            (t(1), 1, None)
        );
    }

    #[test]
    fn a_host_is_on_its_captured_versions_only_when_each_one_runs() {
        let want = serde_json::json!({"app": "1.0.0", "new": null});
        assert!(on_captured(
            &serde_json::json!({"app": "1.0.0", "new": "2.0.0"}),
            &want
        ));
        assert!(!on_captured(&serde_json::json!({"app": "2.0.0"}), &want));
        assert!(!on_captured(&serde_json::json!({}), &want));
        assert!(!on_captured(
            &serde_json::json!({"app": "1.0.0"}),
            &serde_json::json!({})
        ));
    }

    #[test]
    fn captured_versions_names_every_component() {
        assert_eq!(
            captured_versions(
                r#"{"versions":{"database":"3","app":"1.0.0","worker":"1.1.0","new":null}}"#
            ),
            serde_json::json!({"app": "1.0.0", "worker": "1.1.0", "new": null})
        );
        assert_eq!(captured_versions("nope"), serde_json::json!({}));
    }
}
