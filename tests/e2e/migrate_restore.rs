//! Restore points inside a deploy transaction, against a real PostgreSQL 15: a playbook
//! migrates (1.1 → 2), a later step fails, and the rescue's `migrate: state=restored` brings
//! schema and data back exactly — with each strategy (undo scripts, pg_dump/pg_restore, a
//! template copy swapped back). Compared with `pg_dump --schema-only` and the rows themselves.

use std::path::{Path, PathBuf};

use rampart_tests::pg::{PASSWORD, Pg};
use rampart_tests::{CliRun, run_local_json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/flyway/ok")
}

/// The database at version 1.1 with rows of its own, as production would be before a deploy.
fn prepare(pg: &Pg, db: &str) {
    pg.create_db(db);
    pg.migrate_fixtures(db, &["-target=1.1"]);
    pg.psql(
        db,
        "INSERT INTO users (name, email) VALUES ('customer', 'c@example.invalid')",
    );
}

/// A deploy whose block migrates and then fails (or not), with a rescue that restores.
fn playbook(dir: &Path, fail_after_migrate: bool) -> PathBuf {
    let args = "        url: \"{{ db_url }}\"\n        user: postgres\n        password: \"{{ db_password }}\"\n        locations: [\"{{ migrations }}\"]\n        placeholders: { app_name: shop }\n        restore_point: \"{{ restore_point }}\"\n";
    let failing = if fail_after_migrate {
        "    - name: health check after the migration\n      fail:\n        msg: the new release does not answer\n"
    } else {
        ""
    };
    let text = format!(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n  - block:\n    - name: classify the pending migrations\n      migrate:\n        state: validated\n{args}    - name: migrate the database\n      migrate:\n        state: applied\n{args}{failing}    - name: drop the restore point\n      migrate:\n        state: released\n{args}    rescue:\n    - name: bring the database back\n      migrate:\n        state: restored\n{args}"
    );
    let path = dir.join("deploy.yml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(pg: &Pg, db: &str, state: &Path, playbook: &Path, strategy: &str) -> CliRun {
    let vars = serde_json::json!({
        "db_url": pg.url(db),
        "db_password": PASSWORD,
        "migrations": fixtures(),
        "restore_point": strategy,
    });
    run_local_json(playbook, state, &["-e", &vars.to_string()])
}

/// Everything a restore must bring back: the schema, and the rows of every table.
struct Snapshot {
    schema: String,
    users: String,
    history: String,
}

fn snapshot(pg: &Pg, db: &str) -> Snapshot {
    Snapshot {
        schema: pg.schema_dump(db),
        users: pg.rows(db, "users"),
        history: pg.rows(db, "flyway_schema_history"),
    }
}

fn schema_version(pg: &Pg, db: &str) -> String {
    pg.psql(
        db,
        "SELECT version FROM flyway_schema_history WHERE success AND type = 'SQL' AND version IS NOT NULL \
           AND installed_rank > coalesce((SELECT max(installed_rank) FROM flyway_schema_history u \
                                          WHERE u.type = 'UNDO_SQL' AND u.version = flyway_schema_history.version), 0) \
         ORDER BY string_to_array(version, '.')::int[] DESC LIMIT 1",
    )
}

fn restored_exactly(strategy: &str) {
    let pg = Pg::start();
    let db = format!("shop_{strategy}");
    prepare(&pg, &db);
    let before = snapshot(&pg, &db);
    assert_eq!(schema_version(&pg, &db), "1.1");

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let run = run(&pg, &db, &state, &playbook(dir.path(), true), strategy);
    assert_eq!(
        run.code, 1,
        "rolled back by the rescue: {}\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.contains("applied 3 migration(s): 1.1 -> 2"),
        "{}",
        run.stdout
    );

    let after = snapshot(&pg, &db);
    assert_eq!(
        after.schema, before.schema,
        "{strategy}: schema differs after restore"
    );
    assert_eq!(
        after.users, before.users,
        "{strategy}: rows differ after restore"
    );
    if strategy == "undo" {
        // Undo is recorded in the history, as Flyway Teams records it.
        let undone = pg.psql(&db, "SELECT string_agg(version, ',' ORDER BY installed_rank) FROM flyway_schema_history WHERE type = 'UNDO_SQL'");
        assert_eq!(undone, "2,1.10,1.9");
    } else {
        assert_eq!(
            after.history, before.history,
            "{strategy}: history differs after restore"
        );
    }
    assert_eq!(schema_version(&pg, &db), "1.1");
    // The restore point is used up: no dump left, no copy database left.
    let leftovers: Vec<_> = std::fs::read_dir(state.join("restore-points"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name())
                .filter(|n| !n.to_string_lossy().ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE '%\\_rp\\_%'"
        ),
        "0"
    );

    // And the database takes the same migrations again afterwards.
    let again = run_ok(&pg, &db, &state, &playbook(dir.path(), false), strategy);
    assert!(again.stdout.contains("1.1 -> 2"), "{}", again.stdout);
    assert_eq!(schema_version(&pg, &db), "2");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE '%\\_rp\\_%'"
        ),
        "0"
    );
}

fn run_ok(pg: &Pg, db: &str, state: &Path, playbook: &Path, strategy: &str) -> CliRun {
    let run = run(pg, db, state, playbook, strategy);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    run
}

#[test]
fn undo_scripts_bring_schema_and_data_back() {
    restored_exactly("undo");
}

#[test]
fn a_dump_brings_schema_and_data_back() {
    restored_exactly("dump");
}

#[test]
fn a_template_copy_brings_schema_and_data_back() {
    restored_exactly("template");
}

#[test]
fn a_non_transactional_migration_without_a_restore_point_is_refused_before_anything_runs() {
    let pg = Pg::start();
    prepare(&pg, "shop");
    let before = snapshot(&pg, "shop");
    let dir = tempfile::tempdir().unwrap();
    let run = run(
        &pg,
        "shop",
        &dir.path().join("state"),
        &playbook(dir.path(), false),
        "none",
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("V2__email_index.sql runs outside a transaction"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("choose restore_point: dump, template or undo"),
        "{}",
        run.stdout
    );
    let after = snapshot(&pg, "shop");
    assert_eq!(after.schema, before.schema);
    assert_eq!(after.history, before.history);
}
