//! What one Prometheus scrape of `/metrics` costs the controller with a long history: 10,000
//! finished deployments in a SQLite store, a few active ones, open incidents, and the last
//! consistency sweep's findings of 1,000 hosts (two components each). The goal is ≤ 10 ms per
//! scrape (issue 15). Measured: the store queries ([`gather`]) and the encoding ([`render`]),
//! separately and together; the HTTP hop adds a loopback round trip.
//!
//! Run: `cargo bench -p rampart-controller --bench metrics`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use divan::{Bencher, black_box};
use rampart_controller::metrics::{EnvSeen, HostSeen, Metrics, gather};
use rampart_controller::store::Store;
use rampart_controller::store::sqlite::SqliteStore;
use rampart_proto::v1 as pb;

fn main() {
    divan::main();
}

const DEPLOYMENTS: usize = 10_000;
const HOSTS: usize = 1_000;
const ENVS: [&str; 4] = ["production", "staging", "canary", "eu-west"];

struct World {
    _dir: tempfile::TempDir,
    store: SqliteStore,
    metrics: Metrics,
    envs: Vec<String>,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("controller.db")).unwrap();
    let now: prost_types::Timestamp = SystemTime::now().into();
    for i in 0..DEPLOYMENTS + 8 {
        let state = match i {
            i if i < DEPLOYMENTS => pb::DeploymentState::Finished,
            i if i < DEPLOYMENTS + 4 => pb::DeploymentState::Running,
            _ => pb::DeploymentState::Queued,
        };
        let d = pb::Deployment {
            id: format!("d-{i:06}"),
            environment: ENVS[i % ENVS.len()].into(),
            version: format!("1.{}.0", i / 10),
            state: state as i32,
            outcome: if state == pb::DeploymentState::Finished {
                pb::DeploymentOutcome::Succeeded as i32
            } else {
                0
            },
            created: Some(now),
            started: Some(now),
            hosts: (0..25)
                .map(|h| pb::HostResult {
                    host: format!("h{h}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        store.insert_deployment(&d, "bench").unwrap();
        if i % 50 == 0 {
            store
                .insert_incident(
                    &pb::Incident {
                        id: format!("inc-{i}"),
                        environment: d.environment.clone(),
                        deployment_id: d.id.clone(),
                        severity: pb::IncidentSeverity::Error as i32,
                        state: if i % 100 == 0 {
                            pb::IncidentState::Open as i32
                        } else {
                            pb::IncidentState::Resolved as i32
                        },
                        opened: Some(now),
                        ..Default::default()
                    },
                    &[],
                )
                .unwrap();
        }
    }
    let metrics = Metrics::new();
    for (e, env) in ENVS.iter().enumerate() {
        let mut seen = EnvSeen::default();
        for h in (0..HOSTS).filter(|h| h % ENVS.len() == e) {
            seen.hosts.insert(
                format!("host-{h:04}.{env}.internal"),
                HostSeen {
                    up: true,
                    consistent: true,
                    versions: [
                        ("backend".to_string(), "1.999.0".to_string()),
                        ("frontend".to_string(), "1.999.0".to_string()),
                    ]
                    .into(),
                },
            );
        }
        metrics.seen(env, seen);
        metrics.deployment_started(env, pb::DeploymentKind::Deploy);
        metrics.deployment_completed(
            env,
            pb::DeploymentOutcome::Succeeded,
            Some(std::time::Duration::from_secs(42)),
        );
    }
    World {
        _dir: dir,
        store,
        metrics,
        envs: ENVS.iter().map(|e| e.to_string()).collect(),
    }
}

#[divan::bench(sample_count = 50)]
fn store_queries(b: Bencher) {
    let w = world();
    b.bench(|| black_box(gather(&w.store, &w.envs, SystemTime::now()).unwrap()));
}

#[divan::bench(sample_count = 50)]
fn encode_page(b: Bencher) {
    let w = world();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let g: BTreeMap<_, _> = gather(&w.store, &w.envs, SystemTime::now()).unwrap();
    b.bench(|| black_box(rt.block_on(w.metrics.render(&g)).len()));
}

#[divan::bench(sample_count = 50)]
fn whole_scrape(b: Bencher) {
    let w = world();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    b.bench(|| {
        let g = gather(&w.store, &w.envs, SystemTime::now()).unwrap();
        black_box(rt.block_on(w.metrics.render(&g)).len())
    });
}
