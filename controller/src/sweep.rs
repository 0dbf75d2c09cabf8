//! The consistency sweep (SC-003, no partial deployment): every `[consistency] interval_seconds`
//! the controller asks each host of each environment whether it is whole (the agent's
//! `CheckState`), records what it found for `/metrics` (`rampart_agent_up`,
//! `rampart_host_version_info`, `rampart_deployment_state_inconsistency_detected`,
//! `rampart_environment_version_info`) and opens a WARNING incident when an environment is not
//! whole: a host reports a problem, or the hosts run different versions.
//!
//! While a deployment holds an environment's lock its hosts legitimately differ (one wave is
//! ahead of the next): they are still asked (`CheckEnvironment` answers), but neither the
//! metrics nor an incident take it as an inconsistency. An unreachable host is `up = 0`, not an
//! inconsistency: `rampart_agent_up` has its own meaning.
//!
//! With several controllers on one store each one sweeps; the incident is opened once (its id
//! is derived from the environment and the findings, and the store refuses a second insert).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rampart_proto::v1 as pb;
use serde_json::Value;

use crate::config::Environment;
use crate::deployment::{Controller, now_ts};
use crate::metrics::{EnvSeen, HostSeen};
use crate::store::StoreError;

/// How long one host may take to answer (connection included).
const HOST_TIMEOUT: Duration = Duration::from_secs(10);
/// Hosts asked at once.
const PARALLEL: usize = 32;

/// What the components of a host's inventory say the agent should check.
fn expectations(vars: &serde_json::Map<String, Value>) -> Vec<pb::ComponentExpectation> {
    let Some(list) = vars.get("components").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .take(256)
        .filter_map(|c| {
            let name = c.get("name")?.as_str()?.to_string();
            let text = |k: &str| {
                c.get(k)
                    .and_then(Value::as_str)
                    // A templated value (`{{ … }}`) is the playbook's to render, not ours.
                    .filter(|s| !s.contains("{{"))
                    .unwrap_or("")
                    .to_string()
            };
            Some(pb::ComponentExpectation {
                name,
                path: text("path"),
                version_url: text("version_url"),
            })
        })
        .collect()
}

/// Asks one host.
async fn check_host(ctl: &Controller, env: &Environment, host: &str) -> pb::HostCheck {
    let addr = env.agent_addr(host);
    let vars = env.host_vars.get(host).cloned().unwrap_or_default();
    let req = pb::CheckStateRequest {
        components: expectations(&vars),
    };
    let asked = async {
        let mut c = ctl.agents.client_within(host, &addr, HOST_TIMEOUT).await?;
        c.check_state(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| crate::agents::call_error(host, &addr, &s))
    };
    match tokio::time::timeout(HOST_TIMEOUT, asked).await {
        Ok(Ok(r)) => pb::HostCheck {
            host: host.to_string(),
            reachable: true,
            consistent: r.consistent,
            problems: r.problems,
            components: r.components,
            error: String::new(),
            in_progress: r.in_progress,
        },
        Ok(Err(e)) => unreachable(host, e),
        Err(_) => unreachable(
            host,
            format!("the agent at {addr} did not answer CheckState within {HOST_TIMEOUT:?}"),
        ),
    }
}

fn unreachable(host: &str, error: String) -> pb::HostCheck {
    pb::HostCheck {
        host: host.to_string(),
        reachable: false,
        error,
        ..Default::default()
    }
}

/// The findings as the metrics keep them.
fn seen(hosts: &[pb::HostCheck]) -> EnvSeen {
    EnvSeen {
        hosts: hosts
            .iter()
            .map(|h| {
                (
                    h.host.clone(),
                    HostSeen {
                        up: h.reachable,
                        consistent: h.consistent,
                        versions: h
                            .components
                            .iter()
                            .filter(|c| !c.version.is_empty())
                            .map(|c| (c.name.clone(), c.version.clone()))
                            .collect::<BTreeMap<_, _>>(),
                    },
                )
            })
            .collect(),
    }
}

/// One line per problem, for the incident.
fn describe(hosts: &[pb::HostCheck], seen: &EnvSeen) -> Vec<String> {
    let mut lines = Vec::new();
    for h in hosts.iter().filter(|h| h.reachable) {
        for p in &h.problems {
            let what = if p.component.is_empty() {
                String::new()
            } else {
                format!(" {}", p.component)
            };
            lines.push(format!("{}{what}: {} ({})", h.host, p.message, p.code));
        }
    }
    if seen.common_version().is_none() {
        let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (host, s) in &seen.hosts {
            for v in s.versions.values() {
                by.entry(v.as_str()).or_default().push(host.as_str());
            }
        }
        if by.len() > 1 {
            let parts: Vec<String> = by
                .iter()
                .map(|(v, hs)| format!("{v} on {}", hs.join(", ")))
                .collect();
            lines.push(format!(
                "hosts run different versions: {}",
                parts.join("; ")
            ));
        }
    }
    lines
}

/// Asks every host of `name` now; records the findings and opens a WARNING incident when the
/// environment is not whole and no deployment holds its lock.
pub async fn check_environment(
    ctl: &Arc<Controller>,
    name: &str,
) -> Result<pb::CheckEnvironmentResponse, StoreError> {
    let Some(env) = ctl.cfg.environments.get(name) else {
        // Not configured (the API checks names first): nothing to ask.
        return Ok(pb::CheckEnvironmentResponse {
            environment: name.to_string(),
            ..Default::default()
        });
    };
    let env_name = name.to_string();
    let holder = ctl
        .db(move |s| {
            s.list_deployments(
                Some(&env_name),
                &[
                    pb::DeploymentState::AwaitingApproval,
                    pb::DeploymentState::Running,
                    pb::DeploymentState::Rescuing,
                ],
                1,
            )
        })
        .await?
        .into_iter()
        .next()
        .map(|d| d.id)
        .unwrap_or_default();
    // At most PARALLEL hosts asked at once; the answers kept in inventory order.
    let mut hosts: Vec<Option<pb::HostCheck>> = vec![None; env.hosts.len()];
    let mut asking = tokio::task::JoinSet::new();
    for (i, host) in env.hosts.iter().enumerate() {
        if asking.len() >= PARALLEL
            && let Some(Ok((j, h))) = asking.join_next().await
        {
            hosts[j] = Some(h);
        }
        let (ctl, env_name, host) = (ctl.clone(), name.to_string(), host.clone());
        asking.spawn(async move {
            let env = &ctl.cfg.environments[&env_name];
            (i, check_host(&ctl, env, &host).await)
        });
    }
    while let Some(done) = asking.join_next().await {
        if let Ok((j, h)) = done {
            hosts[j] = Some(h);
        }
    }
    let hosts: Vec<pb::HostCheck> = hosts
        .into_iter()
        .zip(&env.hosts)
        .map(|(h, name)| {
            h.unwrap_or_else(|| unreachable(name, "the check of this host failed".into()))
        })
        .collect();
    let found = seen(&hosts);
    let whole = hosts.iter().all(|h| h.reachable) && !found.inconsistent();
    let version = found.common_version().unwrap_or_default();
    let mut incident_id = String::new();
    if holder.is_empty() {
        if found.inconsistent() {
            incident_id = open_incident(ctl, name, &hosts, &found).await?;
        }
        ctl.metrics.seen(name, found);
    }
    Ok(pb::CheckEnvironmentResponse {
        environment: name.to_string(),
        consistent: whole,
        hosts,
        version,
        incident_id,
        deployment_in_progress: holder,
    })
}

/// Opens (or finds open) the environment's WARNING incident for an inconsistency: one open
/// inconsistency incident per environment at a time.
async fn open_incident(
    ctl: &Arc<Controller>,
    env: &str,
    hosts: &[pb::HostCheck],
    found: &EnvSeen,
) -> Result<String, StoreError> {
    let e = env.to_string();
    let open = ctl
        .db(move |s| {
            s.list_incidents(
                Some(&e),
                &[pb::IncidentState::Open, pb::IncidentState::Acknowledged],
                0,
            )
        })
        .await?;
    if let Some(i) = open
        .iter()
        .find(|i| i.severity() == pb::IncidentSeverity::Warning && i.deployment_id.is_empty())
    {
        return Ok(i.id.clone());
    }
    let lines = describe(hosts, found);
    let bad: Vec<String> = hosts
        .iter()
        .filter(|h| h.reachable && (!h.consistent || !h.problems.is_empty()))
        .map(|h| h.host.clone())
        .collect();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let inc = pb::Incident {
        id: format!("inc-check-{env}-{stamp}"),
        environment: env.to_string(),
        deployment_id: String::new(),
        severity: pb::IncidentSeverity::Warning as i32,
        state: pb::IncidentState::Open as i32,
        summary: format!(
            "state inconsistency in {env}: {}",
            lines.join("; ").chars().take(900).collect::<String>()
        ),
        hosts: if bad.is_empty() {
            found.hosts.keys().cloned().collect()
        } else {
            bad
        },
        opened: Some(now_ts()),
        postmortem_due: Some(
            (std::time::SystemTime::now() + crate::incident::POSTMORTEM_DUE).into(),
        ),
        ..Default::default()
    };
    tracing::warn!(environment = %env, incident = %inc.id, "{}", inc.summary);
    let i2 = inc.clone();
    let c2 = ctl.clone();
    // With its notices (the environment's sinks), in one transaction.
    match ctl
        .db(move |s| crate::incident::open(s, c2.cfg.environments.get(&i2.environment), &i2))
        .await
    {
        Ok(()) | Err(StoreError::AlreadyExists(_)) => Ok(inc.id),
        Err(e) => Err(e),
    }
}

/// Sweeps every environment every `interval`, forever (the caller spawns it).
pub async fn run(ctl: Arc<Controller>, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    // The first sweep one interval after start: a controller that just started resumes its
    // deployments first.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for name in ctl.cfg.environments.keys() {
            if let Err(e) = check_environment(&ctl, name).await {
                tracing::warn!(environment = %name, "consistency sweep: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, version: &str, problems: &[&str]) -> pb::HostCheck {
        pb::HostCheck {
            host: name.into(),
            reachable: true,
            consistent: problems.is_empty(),
            problems: problems
                .iter()
                .map(|c| pb::StateProblem {
                    component: "backend".into(),
                    code: (*c).into(),
                    message: format!("{c} found"),
                })
                .collect(),
            components: vec![pb::ComponentState {
                name: "backend".into(),
                version: version.into(),
                service_version: String::new(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_incident_names_each_problem_and_the_split_of_versions() {
        let hosts = vec![host("a", "1.0", &[]), host("b", "2.0", &["staging_left"])];
        let found = seen(&hosts);
        assert!(found.inconsistent());
        let lines = describe(&hosts, &found);
        assert_eq!(lines[0], "b backend: staging_left found (staging_left)");
        assert_eq!(lines[1], "hosts run different versions: 1.0 on a; 2.0 on b");
    }

    #[test]
    fn expectations_take_literal_paths_and_skip_templates() {
        let vars = serde_json::json!({"components": [
            {"name": "backend", "path": "/opt/app", "version_url": "http://127.0.0.1:8080/version"},
            {"name": "frontend", "path": "{{ base }}/web"},
        ]});
        let e = expectations(vars.as_object().unwrap());
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].path, "/opt/app");
        assert_eq!(e[0].version_url, "http://127.0.0.1:8080/version");
        assert_eq!(e[1].path, "", "a template is the playbook's to render");
    }
}
