//! The PostgreSQL side of the runner: connecting, the history table exactly as Flyway creates
//! it, Flyway's advisory lock, reading and writing rows. Thin on purpose: every decision is in
//! [`crate::plan`]; these functions only carry SQL.

use std::time::Duration;

use postgres::{Client, GenericClient, NoTls};

use crate::config::PgUrl;
use crate::error::{MigrateError, db_message};
use crate::plan::AppliedRow;

/// Flyway's lock namespace: "Flyway" in ASCII, added to the table name's Java hash code.
const LOCK_BASE: i64 = 0x466C_7977_6179;

/// How long to wait between tries of the migration lock (Flyway waits 1 s; loopback runs
/// want less, and the count stays bounded by `lockRetryCount`).
const LOCK_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Java's `String.hashCode()`: over UTF-16 code units, wrapping 32-bit arithmetic.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// Quotes an identifier for PostgreSQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for PostgreSQL (standard_conforming_strings is on since 9.1).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The history table's quoted name, `"schema"."table"`.
pub fn table_name(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// The advisory lock key Flyway uses for this history table, so both exclude each other.
pub fn lock_key(schema: &str, table: &str) -> i64 {
    LOCK_BASE + i64::from(java_hash(&table_name(schema, table)))
}

/// Connects with the URL's host, port and database and the given login.
pub fn connect(
    url: &PgUrl,
    shown_url: &str,
    user: &str,
    password: Option<&str>,
    retries: u32,
) -> Result<Client, MigrateError> {
    // TLS to the database is not built in yet: refuse a URL that asks for it rather than
    // connect in plaintext behind the operator's back.
    if let Some((key, value)) = url.params.iter().find(|(k, v)| {
        (k.eq_ignore_ascii_case("ssl") && v.eq_ignore_ascii_case("true"))
            || (k.eq_ignore_ascii_case("sslmode")
                && !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "disable" | "allow" | "prefer"
                ))
    }) {
        return Err(MigrateError::Connect {
            url: shown_url.to_string(),
            user: user.to_string(),
            message: format!(
                "{key}={value} asks for TLS, which rampart migrate does not support yet; connect over a trusted network or a local tunnel and drop the parameter"
            ),
        });
    }
    let mut config = postgres::Config::new();
    config
        .host(&url.host)
        .port(url.port)
        .user(user)
        .dbname(url.database.as_deref().unwrap_or(user))
        .application_name("rampart-migrate")
        .connect_timeout(Duration::from_secs(10));
    if let Some(password) = password {
        config.password(password);
    }
    let mut attempt = 0;
    loop {
        match config.connect(NoTls) {
            Ok(client) => return Ok(client),
            Err(e) if attempt < retries => {
                attempt += 1;
                tracing::warn!(attempt, error = %db_message(&e), "database not reachable, retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                return Err(MigrateError::Connect {
                    url: shown_url.to_string(),
                    user: user.to_string(),
                    message: db_message(&e),
                });
            }
        }
    }
}

/// Maps a database error to [`MigrateError::Database`] naming the action.
pub fn failed(action: &str) -> impl FnOnce(postgres::Error) -> MigrateError + '_ {
    move |e| MigrateError::Database {
        action: action.to_string(),
        message: db_message(&e),
    }
}

/// Runs a query whose first column of the first row is text.
pub fn scalar(
    db: &mut impl GenericClient,
    sql: &str,
    action: &str,
) -> Result<String, MigrateError> {
    let row = db.query_one(sql, &[]).map_err(failed(action))?;
    row.try_get::<_, String>(0).map_err(failed(action))
}

/// Whether a schema exists.
pub fn schema_exists(db: &mut impl GenericClient, schema: &str) -> Result<bool, MigrateError> {
    db.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
        &[&schema],
    )
    .map(|r| r.get(0))
    .map_err(failed("looking up schema"))
}

/// Whether a schema holds any table, view, sequence, function or type.
pub fn schema_is_empty(db: &mut impl GenericClient, schema: &str) -> Result<bool, MigrateError> {
    db.query_one(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1)
            AND NOT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1)
            AND NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                            WHERE n.nspname = $1 AND t.typtype IN ('d', 'e', 'r', 'm'))",
        &[&schema],
    )
    .map(|r| r.get(0))
    .map_err(failed("checking whether the schema is empty"))
}

/// Whether the history table exists.
pub fn table_exists(
    db: &mut impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<bool, MigrateError> {
    db.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))",
        &[&schema, &table],
    )
    .map(|r| r.get(0))
    .map_err(failed("looking up the schema history table"))
}

/// Creates the history table exactly as Flyway does on PostgreSQL; `baseline` rows are
/// inserted between the table and its primary key, as Flyway's create script does.
pub fn create_table(
    db: &mut impl GenericClient,
    schema: &str,
    table: &str,
    rows: &[AppliedRow],
) -> Result<(), MigrateError> {
    let name = table_name(schema, table);
    db.batch_execute(&format!(
        "CREATE TABLE {name} (\n    \"installed_rank\" INT NOT NULL,\n    \"version\" VARCHAR(50),\n    \"description\" VARCHAR(200) NOT NULL,\n    \"type\" VARCHAR(20) NOT NULL,\n    \"script\" VARCHAR(1000) NOT NULL,\n    \"checksum\" INTEGER,\n    \"installed_by\" VARCHAR(100) NOT NULL,\n    \"installed_on\" TIMESTAMP NOT NULL DEFAULT now(),\n    \"execution_time\" INTEGER NOT NULL,\n    \"success\" BOOLEAN NOT NULL\n);"
    ))
    .map_err(failed("creating the schema history table"))?;
    for row in rows {
        insert(db, schema, table, row)?;
    }
    db.batch_execute(&format!(
        "ALTER TABLE {name} ADD CONSTRAINT {} PRIMARY KEY (\"installed_rank\");\nCREATE INDEX {} ON {name} (\"success\");",
        quote_ident(&format!("{table}_pk")),
        quote_ident(&format!("{table}_s_idx")),
    ))
    .map_err(failed("creating the schema history table's key and index"))
}

/// Reads the rows ranked above `after`, in rank order.
pub fn rows_after(
    db: &mut impl GenericClient,
    schema: &str,
    table: &str,
    after: i32,
) -> Result<Vec<AppliedRow>, MigrateError> {
    let sql = format!(
        "SELECT installed_rank, version, description, type, script, checksum, installed_by,
                to_char(installed_on, 'YYYY-MM-DD HH24:MI:SS'), execution_time, success
           FROM {} WHERE installed_rank > $1 ORDER BY installed_rank",
        table_name(schema, table)
    );
    let rows = db
        .query(&sql, &[&after])
        .map_err(failed("reading the schema history table"))?;
    Ok(rows
        .iter()
        .map(|r| AppliedRow {
            installed_rank: r.get(0),
            version: r.get(1),
            description: r.get(2),
            kind: r.get(3),
            script: r.get(4),
            checksum: r.get(5),
            installed_by: r.get(6),
            installed_on: r.get(7),
            execution_time: r.get(8),
            success: r.get(9),
        })
        .collect())
}

/// Shortens text to `max` characters the way Flyway does (`...` marks the cut).
fn abbreviate(text: &str, max: usize, at_end: bool) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    if at_end {
        let kept: String = text.chars().take(max - 3).collect();
        format!("{kept}...")
    } else {
        let kept: String = text.chars().skip(count - (max - 3)).collect();
        format!("...{kept}")
    }
}

/// Inserts a history row; `installed_on` comes from the column's default, as with Flyway.
pub fn insert(
    db: &mut impl GenericClient,
    schema: &str,
    table: &str,
    row: &AppliedRow,
) -> Result<(), MigrateError> {
    let sql = format!(
        "INSERT INTO {} (\"installed_rank\", \"version\", \"description\", \"type\", \"script\", \"checksum\", \"installed_by\", \"execution_time\", \"success\") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        table_name(schema, table)
    );
    let description = abbreviate(&row.description, 200, true);
    let script = abbreviate(&row.script, 1000, false);
    db.execute(
        &sql,
        &[
            &row.installed_rank,
            &row.version,
            &description,
            &row.kind,
            &script,
            &row.checksum,
            &row.installed_by,
            &row.execution_time,
            &row.success,
        ],
    )
    .map(drop)
    .map_err(failed("writing the schema history row"))
}

/// The columns read from the history, in [`AppliedRow`] order.
const ROW_COLUMNS: &str = "installed_rank, version, description, type, script, checksum, installed_by, \
     to_char(installed_on, 'YYYY-MM-DD HH24:MI:SS'), execution_time, success";

/// A string literal that means the same whatever `standard_conforming_strings` says.
fn escape_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

fn literal_or_null(value: Option<&str>) -> String {
    value.map_or_else(|| "NULL".to_string(), escape_literal)
}

/// In one round trip: BEGIN, Flyway's transaction-scoped lock (retried up to `tries` times),
/// and the history rows ranked above `after`. Returns with the transaction open.
pub fn begin_locked(
    client: &mut Client,
    schema: &str,
    table: &str,
    key: i64,
    tries: u32,
    after: i32,
) -> Result<Vec<AppliedRow>, MigrateError> {
    let sql = format!(
        "BEGIN; SELECT pg_try_advisory_xact_lock({key}); SELECT {ROW_COLUMNS} FROM {} WHERE installed_rank > {after} ORDER BY installed_rank",
        table_name(schema, table)
    );
    let tries = tries.max(1);
    for attempt in 1..=tries {
        let messages = client
            .simple_query(&sql)
            .map_err(failed("taking the migration lock"))?;
        // Results in order: BEGIN, the lock, the rows; CommandComplete ends each.
        let mut result = 0;
        let mut locked = false;
        let mut rows = Vec::new();
        for message in &messages {
            match message {
                postgres::SimpleQueryMessage::CommandComplete(_) => result += 1,
                postgres::SimpleQueryMessage::Row(r) if result == 1 => {
                    locked = r.get(0) == Some("t")
                }
                postgres::SimpleQueryMessage::Row(r) if result == 2 => rows.push(text_row(r)?),
                _ => {}
            }
        }
        if locked {
            return Ok(rows);
        }
        rollback(client)?;
        if attempt < tries {
            std::thread::sleep(LOCK_RETRY_DELAY);
        }
    }
    Err(MigrateError::Lock { key, tries })
}

/// Parses a history row read with the simple (text) protocol.
fn text_row(r: &postgres::SimpleQueryRow) -> Result<AppliedRow, MigrateError> {
    let bad = |what: &str| MigrateError::Database {
        action: "reading the schema history table".into(),
        message: format!("unexpected {what} in a history row"),
    };
    let int = |i: usize| -> Result<i32, MigrateError> {
        r.get(i)
            .ok_or_else(|| bad("NULL"))?
            .parse()
            .map_err(|_| bad("number"))
    };
    let text = |i: usize| r.get(i).unwrap_or_default().to_string();
    Ok(AppliedRow {
        installed_rank: int(0)?,
        version: r.get(1).map(str::to_string),
        description: text(2),
        kind: text(3),
        script: text(4),
        checksum: match r.get(5) {
            Some(c) => Some(c.parse().map_err(|_| bad("checksum"))?),
            None => None,
        },
        installed_by: text(6),
        installed_on: text(7),
        execution_time: int(8)?,
        success: r.get(9) == Some("t"),
    })
}

/// Inserts a history row and commits, in one round trip.
pub fn insert_and_commit(
    client: &mut Client,
    schema: &str,
    table: &str,
    row: &AppliedRow,
) -> Result<(), MigrateError> {
    let sql = format!(
        "INSERT INTO {} (\"installed_rank\", \"version\", \"description\", \"type\", \"script\", \"checksum\", \"installed_by\", \"execution_time\", \"success\") VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}); COMMIT",
        table_name(schema, table),
        row.installed_rank,
        literal_or_null(row.version.as_deref()),
        escape_literal(&abbreviate(&row.description, 200, true)),
        escape_literal(&row.kind),
        escape_literal(&abbreviate(&row.script, 1000, false)),
        row.checksum
            .map_or_else(|| "NULL".to_string(), |c| c.to_string()),
        escape_literal(&row.installed_by),
        row.execution_time,
        if row.success { "TRUE" } else { "FALSE" },
    );
    client.batch_execute(&sql).map_err(|e| {
        // The INSERT failed: the transaction is aborted and COMMIT never ran.
        let _ = client.batch_execute("ROLLBACK");
        failed("writing the schema history row")(e)
    })
}

/// Commits the open transaction.
pub fn commit(client: &mut Client) -> Result<(), MigrateError> {
    client.batch_execute("COMMIT").map_err(failed("committing"))
}

/// Rolls the open transaction back.
pub fn rollback(client: &mut Client) -> Result<(), MigrateError> {
    client
        .batch_execute("ROLLBACK")
        .map_err(failed("rolling back"))
}

/// Takes Flyway's transaction-scoped advisory lock, retrying up to `tries` times.
pub fn lock_in_transaction(
    db: &mut impl GenericClient,
    key: i64,
    tries: u32,
) -> Result<(), MigrateError> {
    try_lock(
        db,
        &format!("SELECT pg_try_advisory_xact_lock({key})"),
        key,
        tries,
    )
}

/// Takes the session-scoped form of the same lock (for scripts that run outside a
/// transaction); release it with [`unlock_session`].
pub fn lock_session(db: &mut impl GenericClient, key: i64, tries: u32) -> Result<(), MigrateError> {
    try_lock(
        db,
        &format!("SELECT pg_try_advisory_lock({key})"),
        key,
        tries,
    )
}

/// Releases the session lock.
pub fn unlock_session(db: &mut impl GenericClient, key: i64) -> Result<(), MigrateError> {
    db.simple_query(&format!("SELECT pg_advisory_unlock({key})"))
        .map(drop)
        .map_err(failed("releasing the migration lock"))
}

fn try_lock(
    db: &mut impl GenericClient,
    sql: &str,
    key: i64,
    tries: u32,
) -> Result<(), MigrateError> {
    let tries = tries.max(1);
    for attempt in 1..=tries {
        let got = db
            .simple_query(sql)
            .map_err(failed("taking the migration lock"))?
            .into_iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "t"),
                _ => None,
            })
            .unwrap_or(false);
        if got {
            return Ok(());
        }
        if attempt < tries {
            std::thread::sleep(LOCK_RETRY_DELAY);
        }
    }
    Err(MigrateError::Lock { key, tries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_key_matches_flyway_for_the_default_table() {
        assert_eq!(
            java_hash("\"public\".\"flyway_schema_history\""),
            2125624436
        );
        assert_eq!(lock_key("public", "flyway_schema_history"), 77433833903597);
    }

    #[test]
    fn java_hash_wraps_and_counts_utf16_units() {
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE, a well-known Java example.
        assert_eq!(java_hash("polygenelubricants"), i32::MIN);
        // A character outside the BMP is two UTF-16 units: 0xD83D, 0xDE00.
        assert_eq!(java_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
    }

    #[test]
    fn escaped_literals_survive_quotes_and_backslashes() {
        assert_eq!(escape_literal("it's a \\ path"), "E'it''s a \\\\ path'");
        assert_eq!(literal_or_null(None), "NULL");
    }

    #[test]
    fn quoting_and_abbreviation() {
        assert_eq!(table_name("my\"s", "t"), "\"my\"\"s\".\"t\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(abbreviate(&"x".repeat(201), 200, true).len(), 200);
        assert!(abbreviate(&"x".repeat(201), 200, true).ends_with("..."));
        assert!(abbreviate(&"y".repeat(1001), 1000, false).starts_with("..."));
    }
}
