//! One host's job: capture its state, deliver artifacts, run (or re-attach to) its agent
//! transaction, and report every event and its end to the runner.
//!
//! Inputs: a [`Job`] built by the runner. Outputs: [`Msg`]s on the runner's channel, the last
//! one a [`Msg::Done`] carrying the [`HostDone`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_proto::v1 as pb;
use serde_json::Value;
use tokio::sync::mpsc;

use super::Controller;
use super::state::HostState;
use crate::agents::{self, Agents, Start, TxEnd};
use crate::config::PlaybookText;

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
    let done = job_inner(&ctl, &job, &tx).await;
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
        untouched,
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
            TxEnd::Unreachable(e) | TxEnd::Refused(e) => {
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
        match client
            .capture_state(capture_request(components, &job.vars))
            .await
        {
            Ok(r) => {
                let json = r.into_inner().state_json;
                from_version = first_version(&json);
                let _ = tx.send(Msg::Captured { idx: job.idx, json }).await;
            }
            Err(s) => {
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
        if let Err(e) = agents::ensure_artifact(agents, &mut client, &ctl.artifacts, sha).await {
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

async fn forensics(agents: &Agents, host: &str, addr: &str, txid: &str) -> String {
    match agents.client(host, addr).await {
        Ok(mut c) => agents::forensics_of(&mut c, txid).await.unwrap_or_default(),
        Err(_) => String::new(),
    }
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
