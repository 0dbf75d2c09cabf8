//! Flyway-compatible migrations against a real PostgreSQL 15: every history column as Flyway
//! writes it, checksums equal to Java's CRC32 over the same files, a history written by Flyway
//! carried on, failures that leave nothing behind, two runners at once, and bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rampart_tests::bin;
use rampart_tests::pg::{PASSWORD, Pg};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/flyway")
}

/// `rampart migrate COMMAND` against a database of `pg`, with the given locations and flags.
fn migrate(pg: &Pg, db: &str, command: &str, location: &Path, extra: &[&str]) -> Output {
    Command::new(bin("rampart"))
        .arg("migrate")
        .arg(command)
        .arg(format!("-url={}", pg.url(db)))
        .arg("-user=postgres")
        .arg(format!("-password={PASSWORD}"))
        .arg(format!("-locations=filesystem:{}", location.display()))
        .args(extra)
        .env_remove("FLYWAY_URL")
        .output()
        .expect("run rampart migrate")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", text(&out));
    out
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

/// The checksums the Java program computed (`ok.checksums`), by script.
fn java_checksums() -> BTreeMap<String, i32> {
    std::fs::read_to_string(fixtures().join("ok.checksums"))
        .unwrap()
        .lines()
        .map(|l| {
            let (script, sum) = l.rsplit_once(' ').unwrap();
            (script.to_string(), sum.parse().unwrap())
        })
        .collect()
}

const HISTORY: &str = "SELECT installed_rank, coalesce(version, '<null>'), description, type, script, \
     coalesce(checksum::text, '<null>'), installed_by, installed_on IS NOT NULL, execution_time >= 0, success \
     FROM flyway_schema_history ORDER BY installed_rank";

/// Copies the `ok` fixtures into a fresh directory the test may change.
fn copy_fixtures(into: &Path) {
    for entry in std::fs::read_dir(fixtures().join("ok")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), into.join(entry.file_name())).unwrap();
    }
}

#[test]
fn fixtures_migrate_with_every_history_column_as_flyway_writes_it() {
    let pg = Pg::start();
    pg.create_db("app");
    let ok_dir = fixtures().join("ok");
    let out = ok(migrate(
        &pg,
        "app",
        "migrate",
        &ok_dir,
        &["-placeholders.APP_NAME=shop"],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("now at version v2"), "{stdout}");
    // Flyway's order of lines.
    let order = [
        "Successfully validated 6 migrations",
        "Creating Schema History table \"public\".\"flyway_schema_history\"",
        "Current version of schema \"public\": << Empty Schema >>",
        "Migrating schema \"public\" to version \"1 - create users\"",
        "Migrating schema \"public\" with repeatable migration \"user summary\"",
        "Successfully applied 6 migrations to schema \"public\"",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|l| {
            stdout
                .find(l)
                .unwrap_or_else(|| panic!("no {l:?} in {stdout}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{stdout}");
    assert!(
        stdout.contains("\"2 - email index\" [non-transactional]"),
        "{stdout}"
    );

    // Rows: versioned in numeric order (1.9 before 1.10), then the repeatable.
    let sums = java_checksums();
    let expected = [
        ("1", "1", "create users", "V1__create_users.sql"),
        ("2", "1.1", "add email", "V1_1__add_email.sql"),
        ("3", "1.9", "audit function", "V1.9__audit_function.sql"),
        ("4", "1.10", "settings", "V1.10__settings.sql"),
        ("5", "2", "email index", "V2__email_index.sql"),
        ("6", "<null>", "user summary", "R__user_summary.sql"),
    ];
    let rows = pg.psql("app", HISTORY);
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for (row, (rank, version, description, script)) in rows.iter().zip(expected) {
        let checksum = sums[script].to_string();
        assert_eq!(
            row,
            &[
                rank,
                version,
                description,
                "SQL",
                script,
                checksum.as_str(),
                "postgres",
                "t",
                "t",
                "t"
            ],
            "history row for {script}"
        );
    }

    // The table, its key and its index are Flyway's, column for column.
    let columns = pg.psql(
        "app",
        "SELECT column_name, data_type, coalesce(character_maximum_length::text, ''), is_nullable, \
         coalesce(column_default, '') FROM information_schema.columns \
         WHERE table_name = 'flyway_schema_history' ORDER BY ordinal_position",
    );
    assert_eq!(
        columns,
        "installed_rank|integer||NO|\n\
         version|character varying|50|YES|\n\
         description|character varying|200|NO|\n\
         type|character varying|20|NO|\n\
         script|character varying|1000|NO|\n\
         checksum|integer||YES|\n\
         installed_by|character varying|100|NO|\n\
         installed_on|timestamp without time zone||NO|now()\n\
         execution_time|integer||NO|\n\
         success|boolean||NO|"
    );
    let indexes = pg.psql(
        "app",
        "SELECT indexname || ':' || indexdef FROM pg_indexes WHERE tablename = 'flyway_schema_history' ORDER BY 1",
    );
    assert_eq!(
        indexes,
        "flyway_schema_history_pk:CREATE UNIQUE INDEX flyway_schema_history_pk ON public.flyway_schema_history USING btree (installed_rank)\n\
         flyway_schema_history_s_idx:CREATE INDEX flyway_schema_history_s_idx ON public.flyway_schema_history USING btree (success)"
    );

    // The scripts did what they say: BOM and CRLF file, function with `;` inside, placeholders
    // (case-insensitive name, built-in schema), the concurrent index, the view.
    assert_eq!(
        pg.psql("app", "SELECT name FROM users ORDER BY id"),
        "ada\ngrace\nzoë"
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT key || '=' || value FROM settings ORDER BY key"
        ),
        "app_name=shop\nschema=public"
    );
    pg.psql("app", "INSERT INTO users (name) VALUES ('linus')");
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM audit_log WHERE action = 'INSERT'"
        ),
        "1"
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_idx'::regclass"
        ),
        "t"
    );
    assert_eq!(pg.psql("app", "SELECT count(*) FROM user_summary"), "4");

    // info agrees, in JSON.
    let info = json_of(&ok(migrate(
        &pg,
        "app",
        "info",
        &ok_dir,
        &["--json", "-placeholders.app_name=shop"],
    )));
    assert_eq!(info["schemaVersion"], "2");
    let states: Vec<&str> = info["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["category"] != "Undo")
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["Success"; 6]);
    // Nothing left to do, and validate passes.
    let again = ok(migrate(
        &pg,
        "app",
        "migrate",
        &ok_dir,
        &["-placeholders.app_name=shop"],
    ));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("is up to date"),
        "{}",
        text(&again)
    );
    ok(migrate(
        &pg,
        "app",
        "validate",
        &ok_dir,
        &["-placeholders.app_name=shop"],
    ));
}

#[test]
fn checksums_match_the_committed_java_output_and_java_itself() {
    // The committed output of FlywayChecksum.java against the same bytes Rampart reads.
    for (script, sum) in java_checksums() {
        let bytes = std::fs::read(fixtures().join("ok").join(&script)).unwrap();
        assert_eq!(
            rampart_migrate::checksum::of_bytes(&bytes).unwrap(),
            sum,
            "{script}"
        );
    }
    // And Java now, when it is installed: the committed file is not stale.
    let java = Command::new("java")
        .arg(fixtures().join("FlywayChecksum.java"))
        .arg(fixtures().join("ok"))
        .output();
    match java {
        Ok(out) if out.status.success() => {
            let committed = std::fs::read_to_string(fixtures().join("ok.checksums")).unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
        }
        _ => eprintln!("java not available: compared with the committed checksums only"),
    }
}

#[test]
fn a_history_written_by_flyway_validates_and_migrates_onward_and_a_changed_script_is_named() {
    let pg = Pg::start();
    pg.create_db("legacy");
    let sums = java_checksums();
    // What Flyway leaves after migrating V1 and V1_1: its table, its rows, the scripts' effects.
    pg.psql(
        "legacy",
        &format!(
            "CREATE TABLE \"public\".\"flyway_schema_history\" (\"installed_rank\" INT NOT NULL, \"version\" VARCHAR(50), \
             \"description\" VARCHAR(200) NOT NULL, \"type\" VARCHAR(20) NOT NULL, \"script\" VARCHAR(1000) NOT NULL, \
             \"checksum\" INTEGER, \"installed_by\" VARCHAR(100) NOT NULL, \"installed_on\" TIMESTAMP NOT NULL DEFAULT now(), \
             \"execution_time\" INTEGER NOT NULL, \"success\" BOOLEAN NOT NULL);
             ALTER TABLE \"public\".\"flyway_schema_history\" ADD CONSTRAINT \"flyway_schema_history_pk\" PRIMARY KEY (\"installed_rank\");
             CREATE INDEX \"flyway_schema_history_s_idx\" ON \"public\".\"flyway_schema_history\" (\"success\");
             CREATE TABLE users (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
             INSERT INTO users (name) VALUES ('ada'), ('grace'), ('zoë');
             ALTER TABLE users ADD COLUMN email TEXT;
             UPDATE users SET email = name || '@example.invalid';
             CREATE OR REPLACE VIEW user_summary AS SELECT id, name, email FROM users ORDER BY id;
             INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, checksum, installed_by, execution_time, success) VALUES
               (1, '1', 'create users', 'SQL', 'V1__create_users.sql', {}, 'flyway', 12, true),
               (2, '1.1', 'add email', 'SQL', 'V1_1__add_email.sql', {}, 'flyway', 7, true),
               (3, NULL, 'user summary', 'SQL', 'R__user_summary.sql', {}, 'flyway', 3, true);",
            sums["V1__create_users.sql"], sums["V1_1__add_email.sql"], sums["R__user_summary.sql"]
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    copy_fixtures(dir.path());
    let ph = "-placeholders.app_name=legacy";
    ok(migrate(
        &pg,
        "legacy",
        "validate",
        dir.path(),
        &[ph, "-target=1.1"],
    ));
    // Without a target, validate names the pending migrations.
    let pending = migrate(&pg, "legacy", "validate", dir.path(), &[ph]);
    assert_eq!(pending.status.code(), Some(1), "{}", text(&pending));
    assert!(
        text(&pending).contains("not applied to database: version 1.9"),
        "{}",
        text(&pending)
    );

    let out = ok(migrate(&pg, "legacy", "migrate", dir.path(), &[ph]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Successfully applied 3 migrations"),
        "{}",
        text(&out)
    );
    let ranks = pg.psql(
        "legacy",
        "SELECT installed_rank || ':' || coalesce(version, 'R') || ':' || installed_by FROM flyway_schema_history ORDER BY 1",
    );
    assert_eq!(
        ranks,
        "1:1:flyway\n2:1.1:flyway\n3:R:flyway\n4:1.9:postgres\n5:1.10:postgres\n6:2:postgres"
    );

    // An applied script changed by one trailing space: validate fails naming both checksums.
    let v11 = dir.path().join("V1_1__add_email.sql");
    let mut bytes = std::fs::read(&v11).unwrap();
    bytes.push(b' ');
    std::fs::write(&v11, &bytes).unwrap();
    let changed = rampart_migrate::checksum::of_bytes(&bytes).unwrap();
    let bad = migrate(&pg, "legacy", "validate", dir.path(), &[ph]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    let msg = text(&bad);
    assert!(msg.contains("checksum mismatch for version 1.1"), "{msg}");
    assert!(
        msg.contains(&sums["V1_1__add_email.sql"].to_string()),
        "{msg}"
    );
    assert!(msg.contains(&changed.to_string()), "{msg}");
    // migrate refuses too (validateOnMigrate), and repair realigns the row.
    assert_eq!(
        migrate(&pg, "legacy", "migrate", dir.path(), &[ph])
            .status
            .code(),
        Some(1)
    );
    ok(migrate(&pg, "legacy", "repair", dir.path(), &[ph]));
    assert_eq!(
        pg.psql(
            "legacy",
            "SELECT checksum FROM flyway_schema_history WHERE version = '1.1'"
        ),
        changed.to_string()
    );
    ok(migrate(&pg, "legacy", "validate", dir.path(), &[ph]));
}

#[test]
fn a_failing_migration_leaves_no_row_and_an_intact_schema_then_a_fix_migrates() {
    let pg = Pg::start();
    pg.create_db("app");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("V1__base.sql"),
        "CREATE TABLE t (a INT);\nINSERT INTO t VALUES (1);\n",
    )
    .unwrap();
    ok(migrate(&pg, "app", "migrate", dir.path(), &[]));
    let before = pg.schema_dump("app");
    let history = pg.psql("app", HISTORY);

    std::fs::write(
        dir.path().join("V2__broken.sql"),
        "CREATE TABLE u (b INT);\nINSERT INTO t VALUES (2);\n\nINSERT INTO no_such_table VALUES (3);\n",
    )
    .unwrap();
    let out = migrate(&pg, "app", "migrate", dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("V2__broken.sql failed at line 4"), "{msg}");
    assert!(msg.contains("no_such_table"), "{msg}");
    assert_eq!(
        pg.psql("app", HISTORY),
        history,
        "no row for the failed migration"
    );
    assert_eq!(
        pg.schema_dump("app"),
        before,
        "the failed migration's table is gone"
    );
    assert_eq!(pg.psql("app", "SELECT a FROM t"), "1");

    std::fs::write(
        dir.path().join("V2__broken.sql"),
        "CREATE TABLE u (b INT);\nINSERT INTO t VALUES (2);\n",
    )
    .unwrap();
    ok(migrate(&pg, "app", "migrate", dir.path(), &[]));
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM flyway_schema_history WHERE success"
        ),
        "2"
    );
    assert_eq!(
        pg.psql("app", "SELECT string_agg(a::text, ',' ORDER BY a) FROM t"),
        "1,2"
    );
}

#[test]
fn two_migrate_processes_at_once_apply_each_migration_exactly_once() {
    let pg = Pg::start();
    pg.create_db("app");
    let dir = tempfile::tempdir().unwrap();
    let count = 40;
    for i in 1..=count {
        std::fs::write(
            dir.path().join(format!("V{i}__step_{i}.sql")),
            format!("CREATE TABLE step_{i} (a INT);\nSELECT pg_sleep(0.005);\nINSERT INTO step_{i} VALUES ({i});\n"),
        )
        .unwrap();
    }
    // Rows are counted per table: a migration applied twice would fail (table exists) or add a row.
    std::fs::write(
        dir.path().join("R__count.sql"),
        "CREATE OR REPLACE VIEW steps AS SELECT 1 AS one;\n",
    )
    .unwrap();
    let spawn = || {
        Command::new(bin("rampart"))
            .arg("migrate")
            .arg("migrate")
            .arg(format!("-url={}", pg.url("app")))
            .arg("-user=postgres")
            .arg(format!("-password={PASSWORD}"))
            .arg(format!("-locations=filesystem:{}", dir.path().display()))
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    assert_eq!(
        pg.psql("app", "SELECT count(*), count(DISTINCT coalesce(version, description)) FROM flyway_schema_history"),
        format!("{}|{}", count + 1, count + 1)
    );
    let ranks = pg.psql("app", "SELECT string_agg(installed_rank::text, ',' ORDER BY installed_rank) FROM flyway_schema_history");
    let expected: Vec<String> = (1..=count + 1).map(|r| r.to_string()).collect();
    assert_eq!(ranks, expected.join(","));
    // Each migration's insert ran once.
    let total: u32 = (1..=count).sum();
    let sum = (1..=count)
        .map(|i| format!("(SELECT sum(a) FROM step_{i})"))
        .collect::<Vec<_>>()
        .join(" + ");
    assert_eq!(pg.psql("app", &format!("SELECT {sum}")), total.to_string());
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_the_database_untouched() {
    let pg = Pg::start();
    pg.create_db("app");
    let untouched = || {
        assert_eq!(
            pg.psql("app", "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"),
            "0",
            "the database was changed"
        );
    };
    let broken = fixtures().join("broken");

    // Invalid UTF-8: named with its position.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        broken.join("V1__latin1.sql"),
        dir.path().join("V1__latin1.sql"),
    )
    .unwrap();
    let out = migrate(&pg, "app", "migrate", dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("V1__latin1.sql is not valid UTF-8"),
        "{}",
        text(&out)
    );
    untouched();

    // An unknown placeholder: named, with how to set it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        broken.join("V1__unknown_placeholder.sql"),
        dir.path().join("V1__unknown_placeholder.sql"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("V0_9__fine.sql"),
        "CREATE TABLE fine (a INT);\n",
    )
    .unwrap();
    let out = migrate(&pg, "app", "migrate", dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no value provided for placeholder ${no_such_value}"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("-placeholders.no_such_value=VALUE"),
        "{}",
        text(&out)
    );
    untouched();

    // Malformed names are reported and skipped; the valid ones apply.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("V1_create.sql"),
        "CREATE TABLE never (a INT);\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("V1a__x.sql"),
        "CREATE TABLE never2 (a INT);\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a migration").unwrap();
    std::fs::write(
        dir.path().join("V1__fine.sql"),
        "CREATE TABLE fine (a INT);\n",
    )
    .unwrap();
    let out = ok(migrate(&pg, "app", "migrate", dir.path(), &[]));
    let msg = text(&out);
    assert!(msg.contains("skipping V1_create.sql"), "{msg}");
    assert!(msg.contains("skipping V1a__x.sql"), "{msg}");
    assert!(!msg.contains("notes.txt"), "{msg}");
    assert_eq!(
        pg.psql(
            "app",
            "SELECT string_agg(script, ',') FROM flyway_schema_history"
        ),
        "V1__fine.sql"
    );
    pg.psql("app", "DROP TABLE fine; DROP TABLE flyway_schema_history;");
    untouched();

    // Wrong password and an unreachable database: connection errors that say so, exit 1.
    let ok_dir = fixtures().join("ok");
    let out = Command::new(bin("rampart"))
        .args(["migrate", "migrate", "-user=postgres", "-password=wrong"])
        .arg(format!("-url={}", pg.url("app")))
        .arg(format!("-locations=filesystem:{}", ok_dir.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("password authentication failed"),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains("wrong"),
        "the password is not echoed: {}",
        text(&out)
    );
    untouched();
    let closed = rampart_tests::deploy::free_port();
    let out = Command::new(bin("rampart"))
        .args(["migrate", "info", "-user=postgres"])
        .arg(format!(
            "-url=jdbc:postgresql://127.0.0.1:{closed}/app?password=hidden"
        ))
        .arg(format!("-locations=filesystem:{}", ok_dir.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains(&format!(
            "connecting to jdbc:postgresql://127.0.0.1:{closed}/app"
        )),
        "{msg}"
    );
    assert!(!msg.contains("hidden"), "the password is masked: {msg}");

    // A URL asking for TLS is refused, not silently downgraded to plaintext.
    let out = Command::new(bin("rampart"))
        .args(["migrate", "info", "-user=postgres"])
        .arg(format!("-password={PASSWORD}"))
        .arg(format!("-url={}?sslmode=require", pg.url("app")))
        .arg(format!("-locations=filesystem:{}", ok_dir.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("sslmode=require asks for TLS"),
        "{}",
        text(&out)
    );

    // Usage errors exit 2 and teach.
    let out = Command::new(bin("rampart"))
        .args(["migrate", "frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("unknown command 'frobnicate'"),
        "{}",
        text(&out)
    );
    let help = Command::new(bin("rampart"))
        .args(["migrate", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("-locations=filesystem:DIR"));
}

#[test]
fn commands_and_settings_flyway_users_rely_on() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("sql");
    std::fs::create_dir(&sql).unwrap();
    std::fs::write(sql.join("V1__one.sql"), "CREATE TABLE one (a INT);\n").unwrap();
    std::fs::write(sql.join("V2__two.sql"), "CREATE TABLE two (a INT);\n").unwrap();

    // A schema the run creates gets Flyway's rank-0 marker row, its name quoted.
    pg.create_db("schemas");
    ok(migrate(
        &pg,
        "schemas",
        "migrate",
        &sql,
        &["-schemas=app,audit"],
    ));
    assert_eq!(
        pg.psql("schemas", "SELECT installed_rank || '|' || type || '|' || script || '|' || description FROM app.flyway_schema_history ORDER BY 1 LIMIT 1"),
        "0|SCHEMA|\"app\",\"audit\"|<< Flyway Schema Creation >>"
    );
    assert_eq!(
        pg.psql(
            "schemas",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'app'"
        ),
        "3"
    );

    // A non-empty schema without history: refused, unless baselined; then only newer migrations.
    pg.create_db("existing");
    pg.psql("existing", "CREATE TABLE one (a INT)");
    let refused = migrate(&pg, "existing", "migrate", &sql, &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("without schema history table"),
        "{}",
        text(&refused)
    );
    ok(migrate(
        &pg,
        "existing",
        "migrate",
        &sql,
        &["-baselineOnMigrate=true"],
    ));
    assert_eq!(
        pg.psql("existing", "SELECT installed_rank || '|' || version || '|' || type || '|' || description || '|' || script || '|' || coalesce(checksum::text, 'null') FROM flyway_schema_history ORDER BY 1"),
        "1|1|BASELINE|<< Flyway Baseline >>|<< Flyway Baseline >>|null\n2|2|SQL|two|V2__two.sql|".to_string()
            + &rampart_migrate::checksum::of_bytes(b"CREATE TABLE two (a INT);\n").unwrap().to_string()
    );
    // `baseline` on a fresh database, at a chosen version.
    pg.create_db("based");
    ok(migrate(
        &pg,
        "based",
        "baseline",
        &sql,
        &["-baselineVersion=1"],
    ));
    ok(migrate(&pg, "based", "migrate", &sql, &[]));
    assert_eq!(pg.psql("based", "SELECT string_agg(type || ':' || version, ',' ORDER BY installed_rank) FROM flyway_schema_history"), "BASELINE:1,SQL:2");

    // Callbacks run around migrations, in the same transactions.
    pg.create_db("callbacks");
    let cb = dir.path().join("cb");
    std::fs::create_dir(&cb).unwrap();
    std::fs::write(cb.join("V1__one.sql"), "CREATE TABLE one (a INT);\n").unwrap();
    std::fs::write(cb.join("V2__two.sql"), "CREATE TABLE two (a INT);\n").unwrap();
    std::fs::write(
        cb.join("beforeMigrate.sql"),
        "CREATE TABLE IF NOT EXISTS events (e TEXT);\nINSERT INTO events VALUES ('before');\n",
    )
    .unwrap();
    std::fs::write(
        cb.join("afterEachMigrate.sql"),
        "INSERT INTO events VALUES ('after ${flyway:filename}');\n",
    )
    .unwrap();
    std::fs::write(
        cb.join("afterMigrate__done.sql"),
        "INSERT INTO events VALUES ('done');\n",
    )
    .unwrap();
    ok(migrate(&pg, "callbacks", "migrate", &cb, &[]));
    assert_eq!(
        pg.psql("callbacks", "SELECT string_agg(e, ',') FROM events"),
        "before,after afterEachMigrate.sql,after afterEachMigrate.sql,done"
    );
    assert_eq!(
        pg.psql("callbacks", "SELECT count(*) FROM flyway_schema_history"),
        "2",
        "callbacks are not migrations"
    );

    // A non-transactional migration that fails leaves a failed row; migrate then refuses until
    // repair removes it.
    pg.create_db("failing");
    let nt = dir.path().join("nt");
    std::fs::create_dir(&nt).unwrap();
    std::fs::write(nt.join("V1__t.sql"), "CREATE TABLE t (a INT);\n").unwrap();
    std::fs::write(
        nt.join("V2__idx.sql"),
        "CREATE INDEX CONCURRENTLY t_b ON t (no_such_column);\n",
    )
    .unwrap();
    let out = migrate(&pg, "failing", "migrate", &nt, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        pg.psql(
            "failing",
            "SELECT version || ':' || success FROM flyway_schema_history WHERE version = '2'"
        ),
        "2:false"
    );
    let info = json_of(&migrate(&pg, "failing", "info", &nt, &["--json"]));
    assert!(
        info["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["version"] == "2" && m["state"] == "Failed"),
        "{info}"
    );
    let blocked = migrate(&pg, "failing", "migrate", &nt, &[]);
    assert_eq!(blocked.status.code(), Some(1));
    assert!(
        text(&blocked).contains("failed migration to version 2"),
        "{}",
        text(&blocked)
    );
    std::fs::write(
        nt.join("V2__idx.sql"),
        "CREATE INDEX CONCURRENTLY t_a ON t (a);\n",
    )
    .unwrap();
    ok(migrate(&pg, "failing", "repair", &nt, &[]));
    ok(migrate(&pg, "failing", "migrate", &nt, &[]));
    assert_eq!(pg.psql("failing", "SELECT string_agg(version || ':' || success, ',' ORDER BY installed_rank) FROM flyway_schema_history"), "1:true,2:true");

    // Mixing statements that need a transaction with ones that cannot run in one is refused,
    // before anything runs, unless mixed=true; a .conf can take a script out of its transaction.
    pg.create_db("mixed");
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::write(
        mixed.join("V1__mixed.sql"),
        "CREATE TABLE m (a INT);\nCREATE INDEX CONCURRENTLY m_a ON m (a);\n",
    )
    .unwrap();
    let out = migrate(&pg, "mixed", "migrate", &mixed, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("mixes non-transactional statements (line 2"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pg.psql(
            "mixed",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );
    ok(migrate(&pg, "mixed", "migrate", &mixed, &["-mixed=true"]));
    std::fs::write(mixed.join("V2__vacuum.sql"), "VACUUM m;\n").unwrap();
    std::fs::write(mixed.join("V3__outside.sql"), "INSERT INTO m VALUES (1);\n").unwrap();
    std::fs::write(
        mixed.join("V3__outside.sql.conf"),
        "executeInTransaction=false\n",
    )
    .unwrap();
    ok(migrate(&pg, "mixed", "migrate", &mixed, &["-mixed=true"]));

    // group=true: all pending migrations in one transaction, so a failure leaves none applied.
    pg.create_db("grouped");
    let grouped = dir.path().join("grouped");
    std::fs::create_dir(&grouped).unwrap();
    std::fs::write(grouped.join("V1__a.sql"), "CREATE TABLE a (x INT);\n").unwrap();
    std::fs::write(
        grouped.join("V2__b.sql"),
        "CREATE TABLE b (x INT);\nSELECT 1 / 0;\n",
    )
    .unwrap();
    let out = migrate(&pg, "grouped", "migrate", &grouped, &["-group=true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        pg.psql("grouped", "SELECT count(*) FROM flyway_schema_history"),
        "0"
    );
    assert_eq!(
        pg.psql(
            "grouped",
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('a', 'b')"
        ),
        "0"
    );
    std::fs::write(grouped.join("V2__b.sql"), "CREATE TABLE b (x INT);\n").unwrap();
    ok(migrate(
        &pg,
        "grouped",
        "migrate",
        &grouped,
        &["-group=true"],
    ));
    assert_eq!(pg.psql("grouped", "SELECT string_agg(installed_rank || ':' || version, ',' ORDER BY 1) FROM flyway_schema_history"), "1:1,2:2");

    // clean is refused by default, and empties the schema when enabled.
    let out = migrate(&pg, "mixed", "clean", &mixed, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cleanDisabled"), "{}", text(&out));
    assert_eq!(pg.psql("mixed", "SELECT count(*) FROM m"), "1");
    ok(migrate(
        &pg,
        "mixed",
        "clean",
        &mixed,
        &["-cleanDisabled=false"],
    ));
    assert_eq!(
        pg.psql(
            "mixed",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );
}

#[test]
fn configuration_comes_from_flyway_conf_then_environment_then_command_line() {
    let pg = Pg::start();
    pg.create_db("fromconf");
    pg.create_db("fromenv");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sql")).unwrap();
    std::fs::write(
        dir.path().join("sql/V1__one.sql"),
        "CREATE TABLE one (v TEXT);\nINSERT INTO one VALUES ('${greeting}');\n",
    )
    .unwrap();
    // flyway.conf in the working directory, as Flyway users keep it.
    std::fs::write(
        dir.path().join("flyway.conf"),
        format!(
            "# the team's existing Flyway configuration\nflyway.url={}\nflyway.user=postgres\nflyway.locations=filesystem:sql\nflyway.placeholders.greeting=from conf\n",
            pg.url("fromconf")
        ),
    )
    .unwrap();
    let run = |env: &[(&str, String)], args: &[&str]| {
        Command::new(bin("rampart"))
            .arg("migrate")
            .args(args)
            .current_dir(dir.path())
            .env("HOME", dir.path().join("no-home"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    };
    // The password only in the environment.
    let pw = [("FLYWAY_PASSWORD", PASSWORD.to_string())];
    ok(run(&pw, &["migrate"]));
    assert_eq!(pg.psql("fromconf", "SELECT v FROM one"), "from conf");
    // The environment overrides the file, the command line overrides both.
    let env = [
        ("FLYWAY_PASSWORD", PASSWORD.to_string()),
        ("FLYWAY_URL", pg.url("fromenv")),
        ("FLYWAY_PLACEHOLDERS_GREETING", "from env".to_string()),
    ];
    ok(run(&env, &["migrate", "-placeholders.greeting=from cli"]));
    assert_eq!(pg.psql("fromenv", "SELECT v FROM one"), "from cli");
    // A key Flyway does not know is named with its file.
    std::fs::write(
        dir.path().join("bad.conf"),
        "flyway.urll=jdbc:postgresql://x/y\n",
    )
    .unwrap();
    let out = run(&pw, &["info", "-configFiles=bad.conf"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("urll") && text(&out).contains("bad.conf"),
        "{}",
        text(&out)
    );
}
