//! Micro-benchmarks of the playbook language's hot pure paths: parsing the shipped transactional
//! deploy playbook (YAML alone, then the whole validating loader) and rendering templates.
//!
//! Run: `cargo bench -p rampart-playbook --bench playbook`.

use std::collections::BTreeMap;
use std::sync::Arc;

use divan::{Bencher, black_box};
use minijinja::value::Value as MjValue;
use rampart_playbook::template::{Layer, Scope, Templar, from_json};
use rampart_playbook::yaml::{self, Limits};
use serde_json::{Value, json};

/// The playbook `rampart deploy` ships and the fleet benchmark runs (about 14 KB).
const PRODUCTION: &str = include_str!("../../../playbooks/production-deploy-transactional.yml");

fn main() {
    divan::main();
}

/// The YAML parser alone: text to position-carrying trees.
#[divan::bench]
fn yaml_parse(bencher: Bencher) {
    let limits = Limits::default();
    bencher
        .counter(divan::counter::BytesCount::of_str(PRODUCTION))
        .bench(|| yaml::parse(black_box(PRODUCTION), &limits).unwrap());
}

/// The whole loader: YAML, the model, module schemas and every template's syntax checked.
#[divan::bench]
fn load(bencher: Bencher) {
    let templar = Templar::new();
    bencher
        .counter(divan::counter::BytesCount::of_str(PRODUCTION))
        .bench(|| {
            rampart_playbook::load(
                "production-deploy-transactional.yml",
                black_box(PRODUCTION),
                &templar,
            )
            .unwrap()
        });
}

/// Variables as a task sees them: final values plus a play's lazily templated `vars:`.
fn scope(templar: &Arc<Templar>) -> MjValue {
    let fixed: BTreeMap<String, MjValue> = json!({
        "target_version": "2.4.1",
        "inventory_hostname": "web-1",
        "components": [
            {"name": "api", "artifact": "https://artifacts.invalid/api-2.4.1.tar.gz",
             "sha256": "00".repeat(32), "service": {"name": "api.service"}},
            {"name": "worker", "artifact": "https://artifacts.invalid/worker-2.4.1.tar.gz",
             "sha256": "11".repeat(32), "service": {"name": "worker.service"}},
        ],
        "database": {"url": "postgresql://127.0.0.1:5432/app", "user": "app"},
    })
    .as_object()
    .unwrap()
    .iter()
    .map(|(k, v)| (k.clone(), from_json(v)))
    .collect();
    let lazy = json!({"release_root": "/srv/app/releases/{{ target_version }}"});
    Scope::value(
        templar.clone(),
        vec![
            Layer::Fixed(Arc::new(fixed)),
            Layer::Lazy(Arc::new(lazy.as_object().unwrap().clone())),
        ],
    )
}

/// Templates in the playbook's style, rendered against one scope.
#[divan::bench(args = [
    "stage {{ components[0].name }} {{ target_version }}",
    "{{ components | map(attribute='service') | map(attribute='name') | list }}",
    "{{ release_root }}/{{ inventory_hostname }} {{ database.user | default('') }}",
])]
fn render(bencher: Bencher, template: &str) {
    let templar = Arc::new(Templar::new());
    let scope = scope(&templar);
    bencher.bench(|| -> Value { templar.render_str(black_box(template), &scope).unwrap() });
}

/// A `when:` condition list, as evaluated before every task.
#[divan::bench]
fn eval_conditions(bencher: Bencher) {
    let templar = Arc::new(Templar::new());
    let scope = scope(&templar);
    let conds = [
        json!("database is defined"),
        json!("components | length > 1"),
        json!("target_version != '0.0.0'"),
    ];
    bencher.bench(|| templar.eval_conditions(black_box(&conds), &scope).unwrap());
}
