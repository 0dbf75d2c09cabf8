//! Restore points: what a deploy records before it migrates, and how its rescue brings the
//! database back.
//!
//! Three strategies, chosen per deploy:
//! - `undo`: record the schema version; restoring runs the `U` scripts of every version
//!   applied since, newest first. Cheapest; needs an undo script for each pending migration
//!   and cannot bring back data a migration destroyed.
//! - `dump`: `pg_dump -Fc` of the managed schemas (with the extensions that live in them);
//!   restoring drops those schemas and replays the dump with `pg_restore --clean`, all in one
//!   transaction through `psql --single-transaction`.
//! - `template`: `CREATE DATABASE <copy> TEMPLATE <db>`; restoring renames the migrated
//!   database away, renames the copy back and drops the migrated one. Whole-database and fast,
//!   but needs CREATEDB and no other session on the database while the copy is made.
//!
//! A [`RestorePoint`] is a small JSON record kept beside the dump; it holds no password.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postgres::Client;

use crate::db;
use crate::error::MigrateError;
use crate::run::Runner;
use crate::version::Version;

/// How a deploy can bring its database back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Run undo scripts down to the recorded version.
    Undo,
    /// Replay a `pg_dump -Fc` of the managed schemas.
    Dump,
    /// Swap back a copy made with `CREATE DATABASE ... TEMPLATE`.
    Template,
    /// No restore point: a failed deploy keeps whatever migrations committed.
    None,
}

impl Strategy {
    /// Reads `undo`, `dump`, `template` or `none`.
    pub fn parse(text: &str) -> Option<Strategy> {
        match text {
            "undo" => Some(Strategy::Undo),
            "dump" => Some(Strategy::Dump),
            "template" => Some(Strategy::Template),
            "none" => Some(Strategy::None),
            _ => None,
        }
    }
}

/// A recorded restore point.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestorePoint {
    /// Its strategy.
    pub strategy: Strategy,
    /// The database it belongs to.
    pub database: String,
    /// The schemas it covers.
    pub schemas: Vec<String>,
    /// Of those, the ones that existed when it was taken (the others are dropped on restore).
    pub existing_schemas: Vec<String>,
    /// The schema version when it was taken.
    pub version: Option<String>,
    /// The dump file (`dump`).
    pub dump: Option<PathBuf>,
    /// The copy's database name (`template`).
    pub copy: Option<String>,
    /// The schemas' own privileges as GRANT statements (`dump`): a schema dropped and created
    /// again loses privileges pg_dump leaves out as defaults, such as `public`'s USAGE.
    #[serde(default)]
    pub grants: Vec<String>,
    /// When it was taken (RFC 3339).
    pub taken_at: String,
}

/// How long a template copy waits for other sessions to leave the database.
const TEMPLATE_WAIT: Duration = Duration::from_secs(10);

/// The PostgreSQL client tools' environment for the runner's connection.
fn pg_env(runner: &Runner, database: &str) -> Vec<(&'static str, String)> {
    let c = runner.connection();
    let mut env = vec![
        ("PGHOST", c.url.host.clone()),
        ("PGPORT", c.url.port.to_string()),
        ("PGUSER", c.user.clone()),
        ("PGDATABASE", database.to_string()),
        ("PGAPPNAME", "rampart-restore".to_string()),
        ("PGCONNECT_TIMEOUT", "10".to_string()),
    ];
    if let Some(p) = &c.password {
        env.push(("PGPASSWORD", p.clone()));
    }
    env
}

fn run_tool(mut cmd: Command, what: &str) -> Result<Vec<u8>, MigrateError> {
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|e| {
        MigrateError::RestorePoint(format!(
            "running {what}: {e} (install the PostgreSQL client tools, Debian: postgresql-client)"
        ))
    })?;
    if !out.status.success() {
        return Err(MigrateError::RestorePoint(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// A database name for the copy: within PostgreSQL's 63-byte limit, unique per transaction.
fn copy_name(database: &str, txid: &str) -> String {
    let tag: String = txid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_lowercase();
    let tag = &tag[tag.len().saturating_sub(16)..];
    let mut base: String = database.chars().take(63 - tag.len() - 4).collect();
    while base.len() + tag.len() + 4 > 63 {
        base.pop();
    }
    format!("{base}_rp_{tag}")
}

/// Takes a restore point in `dir` (created if missing) for the transaction `txid`.
pub fn take(
    runner: &mut Runner,
    strategy: Strategy,
    dir: &Path,
    txid: &str,
) -> Result<RestorePoint, MigrateError> {
    let version = runner.info()?.current.map(|v| v.to_string());
    let mut existing = Vec::new();
    for schema in runner.schemas.clone() {
        if db::schema_exists(runner.client(), &schema)? {
            existing.push(schema);
        }
    }
    let mut point = RestorePoint {
        strategy,
        database: runner.database.clone(),
        schemas: runner.schemas.clone(),
        existing_schemas: existing.clone(),
        version,
        dump: None,
        copy: None,
        grants: Vec::new(),
        taken_at: chrono::Utc::now().to_rfc3339(),
    };
    match strategy {
        Strategy::None | Strategy::Undo => {}
        Strategy::Dump => {
            std::fs::create_dir_all(dir).map_err(|e| {
                MigrateError::RestorePoint(format!("creating {}: {e}", dir.display()))
            })?;
            let file = dir.join(format!("{txid}.dump"));
            if !existing.is_empty() {
                let extensions = db_extensions(runner.client(), &existing)?;
                let mut cmd = Command::new("pg_dump");
                cmd.envs(pg_env(runner, &runner.database.clone()))
                    .arg("--format=custom")
                    .arg("--no-password")
                    .arg("--file")
                    .arg(&file);
                for schema in &existing {
                    cmd.arg(format!("--schema={}", pattern_literal(schema)));
                }
                for extension in &extensions {
                    cmd.arg(format!("--extension={}", pattern_literal(extension)));
                }
                run_tool(cmd, "pg_dump")?;
                point.dump = Some(file);
                point.grants = schema_grants(runner.client(), &existing)?;
            }
        }
        Strategy::Template => {
            let copy = copy_name(&runner.database, txid);
            let database = runner.database.clone();
            let sql = format!(
                "CREATE DATABASE {} TEMPLATE {}",
                db::quote_ident(&copy),
                db::quote_ident(&database)
            );
            // The runner's own session must not be on the template while it is copied: it
            // moves to the maintenance database and does the copy from there.
            runner.park()?;
            let admin = runner.client();
            let deadline = Instant::now() + TEMPLATE_WAIT;
            loop {
                match admin.batch_execute(&sql) {
                    Ok(()) => break,
                    // 55006: the source database is being accessed by other users.
                    Err(e)
                        if e.code().map(|c| c.code()) == Some("55006")
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => {
                        let sessions = other_sessions(admin, &database).unwrap_or_default();
                        return Err(MigrateError::RestorePoint(format!(
                            "copying database {database} to {copy}: {}{}",
                            crate::error::db_message(&e),
                            if sessions.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    " (sessions still on it: {sessions}; stop the services that use it first)"
                                )
                            }
                        )));
                    }
                }
            }
            runner.unpark()?;
            point.copy = Some(copy);
        }
    }
    Ok(point)
}

/// The extensions installed into any of `schemas` (a schema-only dump leaves them out).
fn db_extensions(client: &mut Client, schemas: &[String]) -> Result<Vec<String>, MigrateError> {
    let rows = client
        .query(
            "SELECT e.extname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
              WHERE n.nspname = ANY($1) ORDER BY 1",
            &[&schemas],
        )
        .map_err(db::failed("listing extensions"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The privileges granted on `schemas`, as GRANT statements.
fn schema_grants(client: &mut Client, schemas: &[String]) -> Result<Vec<String>, MigrateError> {
    let rows = client
        .query(
            "SELECT n.nspname::text,
                    CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                    a.privilege_type, a.is_grantable
               FROM pg_namespace n, aclexplode(n.nspacl) a
              WHERE n.nspname = ANY($1)
              ORDER BY 1, 2, 3",
            &[&schemas],
        )
        .map_err(db::failed("reading schema privileges"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let schema: String = r.get(0);
            let grantee: String = r.get(1);
            let privilege: String = r.get(2);
            let grantable: bool = r.get(3);
            format!(
                "GRANT {privilege} ON SCHEMA {} TO {grantee}{};",
                db::quote_ident(&schema),
                if grantable { " WITH GRANT OPTION" } else { "" }
            )
        })
        .collect())
}

/// A pg_dump pattern that matches exactly this name (quoted, so case and dots are literal).
fn pattern_literal(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn other_sessions(admin: &mut Client, database: &str) -> Result<String, MigrateError> {
    let rows = admin
        .query(
            "SELECT format('pid %s (%s, %s)', pid, coalesce(nullif(application_name, ''), 'no name'),
                           coalesce(client_addr::text, 'local'))
               FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&database],
        )
        .map_err(db::failed("listing sessions"))?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Brings the database back to the restore point; returns a line saying what was done.
pub fn restore(runner: &mut Runner, point: &RestorePoint) -> Result<String, MigrateError> {
    match point.strategy {
        Strategy::None => Ok("no restore point was taken (restore_point: none): the database keeps what the migrations committed".into()),
        Strategy::Undo => {
            let target = match &point.version {
                Some(v) => Version::parse(v).map_err(|e| MigrateError::RestorePoint(e.to_string()))?,
                None => Version::parse("0").map_err(|e| MigrateError::RestorePoint(e.to_string()))?,
            };
            let undone = runner.undo(Some(&target), &mut |_| {})?;
            runner.remove_failed_rows_above(&target)?;
            Ok(format!(
                "undid {} migration(s) down to version {}",
                undone.len(),
                point.version.as_deref().unwrap_or("<none>")
            ))
        }
        Strategy::Dump => {
            let mut script = String::from("SET client_min_messages = warning;\n");
            for schema in &point.schemas {
                script.push_str(&format!("DROP SCHEMA IF EXISTS {} CASCADE;\n", db::quote_ident(schema)));
            }
            if let Some(dump) = &point.dump {
                let mut cmd = Command::new("pg_restore");
                cmd.arg("--clean").arg("--if-exists").arg("--file=-").arg(dump);
                let sql = run_tool(cmd, "pg_restore")?;
                script.push_str(&String::from_utf8_lossy(&sql));
                script.push('\n');
            }
            for grant in &point.grants {
                script.push_str(grant);
                script.push('\n');
            }
            let dir = point
                .dump
                .as_ref()
                .and_then(|d| d.parent())
                .map(Path::to_path_buf)
                .unwrap_or_else(std::env::temp_dir);
            let file = dir.join(format!(".restore-{}.sql", std::process::id()));
            std::fs::write(&file, script)
                .map_err(|e| MigrateError::RestorePoint(format!("writing {}: {e}", file.display())))?;
            let mut cmd = Command::new("psql");
            cmd.envs(pg_env(runner, &point.database))
                .args(["--no-psqlrc", "--quiet", "--no-password", "--single-transaction"])
                .args(["--set", "ON_ERROR_STOP=1", "--file"])
                .arg(&file);
            let result = run_tool(cmd, "psql (replaying the dump)");
            let _ = std::fs::remove_file(&file);
            result?;
            Ok(format!(
                "restored schemas {} of database {} from {}",
                point.schemas.join(", "),
                point.database,
                point.dump.as_ref().map_or("an empty state".to_string(), |d| d.display().to_string())
            ))
        }
        Strategy::Template => {
            let copy = point
                .copy
                .clone()
                .ok_or_else(|| MigrateError::RestorePoint("template restore point without a copy".into()))?;
            let database = point.database.clone();
            let aside = copy_name(&format!("{database}_failed"), &point.taken_at);
            runner.park()?;
            let admin = runner.client();
            // The migrated database is being thrown away: end its sessions so it can be renamed.
            admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&database],
                )
                .map_err(db::failed("ending sessions on the migrated database"))?;
            // Each step checks what is already done, so a restore interrupted by a crash and run
            // again by recovery finishes the swap instead of failing on a missing name.
            let exists = |admin: &mut Client, name: &str| -> Result<bool, MigrateError> {
                admin
                    .query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&name])
                    .map(|r| r.get(0))
                    .map_err(db::failed("looking up a database"))
            };
            if exists(admin, &copy)? {
                if exists(admin, &database)? {
                    admin
                        .batch_execute(&format!(
                            "ALTER DATABASE {} RENAME TO {}",
                            db::quote_ident(&database),
                            db::quote_ident(&aside)
                        ))
                        .map_err(db::failed("renaming the migrated database aside"))?;
                }
                admin
                    .batch_execute(&format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        db::quote_ident(&copy),
                        db::quote_ident(&database)
                    ))
                    .map_err(db::failed("renaming the copy back"))?;
            } else if !exists(admin, &database)? {
                return Err(MigrateError::RestorePoint(format!(
                    "neither database {database} nor its copy {copy} exists"
                )));
            }
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {}", db::quote_ident(&aside)))
                .map_err(db::failed("dropping the migrated database"))?;
            runner.unpark()?;
            Ok(format!("swapped database {database} back to its copy taken at {}", point.taken_at))
        }
    }
}

/// Removes what a restore point keeps (the dump file, the database copy).
pub fn discard(runner: &mut Runner, point: &RestorePoint) -> Result<(), MigrateError> {
    if let Some(dump) = &point.dump {
        match std::fs::remove_file(dump) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(MigrateError::RestorePoint(format!(
                    "removing {}: {e}",
                    dump.display()
                )));
            }
        }
    }
    if let Some(copy) = &point.copy {
        let mut admin = runner.maintenance_client()?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {}",
                db::quote_ident(copy)
            ))
            .map_err(db::failed("dropping the database copy"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_names_fit_postgres_limits_and_differ_per_transaction() {
        let long = "d".repeat(80);
        let a = copy_name(&long, "tx-2026-11-27-aaaaaaaa");
        let b = copy_name(&long, "tx-2026-11-27-bbbbbbbb");
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert_eq!(copy_name("app", "TX1"), "app_rp_tx1");
    }

    #[test]
    fn strategies_parse_by_name() {
        assert_eq!(Strategy::parse("template"), Some(Strategy::Template));
        assert_eq!(Strategy::parse("snapshot"), None);
    }
}
