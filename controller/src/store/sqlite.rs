//! The embedded store: one SQLite file, one controller.
//!
//! The file is opened once, behind a mutex, in WAL mode (`synchronous=NORMAL`, a 5 s busy
//! timeout, foreign keys on). A controller takes an exclusive `flock` on `<file>.lock` for as
//! long as the store lives, so a second controller on the same file is refused at start instead
//! of corrupting the queue; that is also why an environment lock row naming another instance can
//! only be left over from a controller that died, and is taken over (by another deployment only
//! once the one it names is finished or its owner's heartbeat is stale: a controller restarted
//! under a new name adopts it first).
//!
//! Artifacts are not held here (the [`Store`] trait's defaults: `holds_artifacts` is false): the
//! one controller of the file keeps them in its `state_dir` ([`crate::artifact_store`]).
//!
//! The schema is versioned with `PRAGMA user_version` (3 today: version 2 added
//! `control_requests`, version 3 the notification `outbox`); an older file is upgraded at open,
//! a newer one refused.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use prost::Message;
use rampart_proto::v1 as pb;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};

use super::{
    ControlKind, ControlRequest, Delivery, LockAttempt, Notice, NoticeState, OWNER_STALE,
    OutboxRow, Store, StoreError, StoreResult, decode, event_seq, millis, stored_seq,
};

/// The schema version this code writes and reads (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 3;

/// How long a statement waits for a busy database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The tables of schema version 1.
const SCHEMA_V1: &str = "
CREATE TABLE instances (
    instance TEXT PRIMARY KEY,
    heartbeat_ms INTEGER
);
CREATE TABLE deployments (
    ord INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    environment TEXT NOT NULL,
    state INTEGER NOT NULL,
    owner TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX deployments_env_state_ord ON deployments (environment, state, ord);
CREATE TABLE events (
    deployment_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (deployment_id, seq)
) WITHOUT ROWID;
CREATE TABLE env_locks (
    environment TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    instance TEXT NOT NULL,
    since_ms INTEGER
);
CREATE TABLE incidents (
    ord INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    environment TEXT NOT NULL,
    state INTEGER NOT NULL,
    record BLOB NOT NULL
);
";

/// What schema version 2 adds: approvals and aborts asked for, one per kind and deployment.
const SCHEMA_V2: &str = "
CREATE TABLE control_requests (
    ord INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    requested_by TEXT NOT NULL,
    text TEXT NOT NULL,
    requested_ms INTEGER NOT NULL,
    UNIQUE (deployment_id, kind)
);
";

/// What schema version 3 adds: the notification outbox, one row per (notice, sink).
const SCHEMA_V3: &str = "
CREATE TABLE outbox (
    ord INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    environment TEXT NOT NULL,
    sink TEXT NOT NULL,
    event TEXT NOT NULL,
    subject TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    lease_owner TEXT NOT NULL DEFAULT '',
    lease_until_ms INTEGER NOT NULL DEFAULT 0,
    note TEXT NOT NULL DEFAULT '',
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX outbox_due ON outbox (state, due_ms);
CREATE INDEX outbox_subject ON outbox (subject, ord);
";

/// The columns of an outbox row as [`outbox_row`] reads them.
const OUTBOX_COLUMNS: &str =
    "id, environment, sink, event, subject, state, attempts, created_ms, note, last_error";

/// Reads an outbox row selected with [`OUTBOX_COLUMNS`]: the row, and its state code.
fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(OutboxRow, i32)> {
    let created: i64 = r.get(7)?;
    let attempts: i64 = r.get(6)?;
    Ok((
        OutboxRow {
            notice: Notice {
                id: r.get(0)?,
                environment: r.get(1)?,
                sink: r.get(2)?,
                event: r.get(3)?,
                subject: r.get(4)?,
            },
            state: NoticeState::Pending,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            age: Duration::from_millis(u64::try_from(now_ms() - created).unwrap_or(0)),
            note: r.get(8)?,
            last_error: r.get(9)?,
        },
        r.get(5)?,
    ))
}

/// Collects rows read with [`outbox_row`], checking their state codes.
fn outbox_rows(
    rows: impl Iterator<Item = rusqlite::Result<(OutboxRow, i32)>>,
    what: &str,
) -> StoreResult<Vec<OutboxRow>> {
    let mut out = Vec::new();
    for row in rows {
        let (mut row, code) = row.map_err(failed(what))?;
        row.state = NoticeState::from_code(code, &row.notice.id)?;
        out.push(row);
    }
    Ok(out)
}

/// Writes outbox rows inside a transaction; a row whose id is stored already is kept as it is.
fn insert_notices(conn: &Connection, notices: &[Notice]) -> rusqlite::Result<()> {
    let now = now_ms();
    for n in notices {
        conn.execute(
            "INSERT INTO outbox (id, environment, sink, event, subject, created_ms, due_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (id) DO NOTHING",
            params![n.id, n.environment, n.sink, n.event, n.subject, now],
        )?;
    }
    Ok(())
}

/// The SQLite store. Dropping it closes the database and releases `<file>.lock`.
#[derive(Debug)]
pub struct SqliteStore {
    /// The database file.
    path: PathBuf,
    /// The one connection (declared before `_lock`, so it closes before the lock is released).
    conn: Mutex<Connection>,
    /// The exclusive `flock` on `<file>.lock`, held for the store's life.
    _lock: Flock<File>,
}

/// `<path>.lock`.
fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Maps an SQLite error to `Unavailable`, saying what was being done.
fn failed(context: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::Unavailable(format!("sqlite: {context}: {e}"))
}

/// Whether an error is a violated PRIMARY KEY or UNIQUE constraint.
fn is_duplicate(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// `limit` as SQL's LIMIT value (`-1`: none).
fn sql_limit(limit: u32) -> i64 {
    if limit == 0 { -1 } else { i64::from(limit) }
}

/// Takes the exclusive lock on `<path>.lock`, creating the file.
fn take_file_lock(path: &Path) -> StoreResult<Flock<File>> {
    let lock = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|e| {
            StoreError::Unavailable(format!("cannot open lock file {}: {e}", lock.display()))
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(flock) => Ok(flock),
        Err((_, Errno::EWOULDBLOCK)) => Err(StoreError::Unavailable(format!(
            "another rampart-controller uses {} (lock {} held); stop it, or use a PostgreSQL store for several controllers",
            path.display(),
            lock.display()
        ))),
        Err((_, errno)) => Err(StoreError::Unavailable(format!(
            "cannot lock {}: {errno}",
            lock.display()
        ))),
    }
}

impl SqliteStore {
    /// Opens (creating it when missing) the store at `path`, taking `<path>.lock` exclusively
    /// and creating or checking the schema. `Unavailable` when another controller holds the
    /// lock, the file cannot be opened, or its schema is newer than this controller's.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let lock = take_file_lock(path)?;
        let what = format!("opening {}", path.display());
        let mut conn = Connection::open(path).map_err(failed(&what))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(failed(&what))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(failed("setting journal_mode=WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "sqlite: {} refused WAL mode (journal_mode is {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(failed("setting synchronous=NORMAL"))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(failed("enabling foreign keys"))?;
        migrate(&mut conn, path)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            _lock: lock,
        })
    }

    /// The connection (a panic elsewhere does not make the store unusable: an open transaction
    /// was rolled back when it was dropped).
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a query returning records and decodes them.
    fn records<M: Message + Default>(
        &self,
        sql: &str,
        params: &[Value],
        what: &str,
    ) -> StoreResult<Vec<M>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(failed(what))?;
        let rows = stmt
            .query_map(params_from_iter(params.iter()), |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(failed(what))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, bytes) = row.map_err(failed(what))?;
            out.push(decode(&bytes, &id)?);
        }
        Ok(out)
    }

    /// `SELECT id, record FROM <table>` filtered by environment and states, newest first.
    fn list<M: Message + Default>(
        &self,
        table: &str,
        environment: Option<&str>,
        states: &[i32],
        limit: u32,
    ) -> StoreResult<Vec<M>> {
        let mut sql = format!("SELECT id, record FROM {table} WHERE 1 = 1");
        let mut params: Vec<Value> = Vec::new();
        if let Some(env) = environment {
            sql.push_str(" AND environment = ?");
            params.push(Value::Text(env.to_owned()));
        }
        if !states.is_empty() {
            sql.push_str(" AND state IN (");
            sql.push_str(&vec!["?"; states.len()].join(", "));
            sql.push(')');
            params.extend(states.iter().map(|s| Value::Integer(i64::from(*s))));
        }
        sql.push_str(" ORDER BY ord DESC LIMIT ?");
        params.push(Value::Integer(sql_limit(limit)));
        self.records(&sql, &params, &format!("listing {table}"))
    }

    /// One record by id from `table`.
    fn get<M: Message + Default>(&self, table: &str, id: &str) -> StoreResult<Option<M>> {
        let what = format!("reading {id} from {table}");
        let bytes: Option<Vec<u8>> = self
            .conn()
            .query_row(
                &format!("SELECT record FROM {table} WHERE id = ?1"),
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(failed(&what))?;
        bytes.map(|b| decode(&b, id)).transpose()
    }
}

/// Creates the schema in a new file, upgrades an older one, or checks an existing file's
/// version; in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> StoreResult<()> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(failed("reading user_version"))?;
    let steps: &[&str] = match version {
        0 => &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3],
        1 => &[SCHEMA_V2, SCHEMA_V3],
        2 => &[SCHEMA_V3],
        SCHEMA_VERSION => return Ok(()),
        other => {
            return Err(StoreError::Unavailable(format!(
                "sqlite: {} has schema version {other}, newer than this controller's ({SCHEMA_VERSION}); upgrade rampart-controller",
                path.display()
            )));
        }
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Exclusive)
        .map_err(failed("starting the schema transaction"))?;
    for step in steps {
        tx.execute_batch(step)
            .map_err(failed("creating the tables"))?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(failed("setting user_version"))?;
    tx.commit().map_err(failed("committing the schema"))
}

/// Whether deployment `id` is unfinished and owned by a controller whose heartbeat is younger
/// than [`OWNER_STALE`].
fn holder_is_live(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM deployments d JOIN instances i ON i.instance = d.owner
             WHERE d.id = ?1 AND d.state <> ?2 AND i.heartbeat_ms >= ?3)",
        params![
            id,
            pb::DeploymentState::Finished as i32,
            now_ms().saturating_sub(millis(OWNER_STALE))
        ],
        |r| r.get(0),
    )
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn heartbeat(&self, instance: &str) -> StoreResult<()> {
        self.conn()
            .execute(
                "INSERT INTO instances (instance, heartbeat_ms) VALUES (?1, ?2)
                 ON CONFLICT (instance) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
                params![instance, now_ms()],
            )
            .map(drop)
            .map_err(failed("recording a heartbeat"))
    }

    fn insert_deployment(&self, d: &pb::Deployment, owner: &str) -> StoreResult<()> {
        match self.conn().execute(
            "INSERT INTO deployments (id, environment, state, owner, record)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![d.id, d.environment, d.state, owner, d.encode_to_vec()],
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Err(StoreError::AlreadyExists(format!(
                "deployment {} exists already",
                d.id
            ))),
            Err(e) => Err(failed(&format!("inserting deployment {}", d.id))(e)),
        }
    }

    fn save_deployment(&self, d: &pb::Deployment) -> StoreResult<()> {
        let what = format!("saving deployment {}", d.id);
        let n = self
            .conn()
            .execute(
                "UPDATE deployments SET environment = ?2, state = ?3, record = ?4 WHERE id = ?1",
                params![d.id, d.environment, d.state, d.encode_to_vec()],
            )
            .map_err(failed(&what))?;
        if n == 0 {
            return Err(StoreError::Unavailable(format!(
                "sqlite: {what}: no such deployment"
            )));
        }
        Ok(())
    }

    fn get_deployment(&self, id: &str) -> StoreResult<Option<pb::Deployment>> {
        self.get("deployments", id)
    }

    fn list_deployments(
        &self,
        environment: Option<&str>,
        states: &[pb::DeploymentState],
        limit: u32,
    ) -> StoreResult<Vec<pb::Deployment>> {
        let states: Vec<i32> = states.iter().map(|s| *s as i32).collect();
        self.list("deployments", environment, &states, limit)
    }

    fn queue_position(&self, environment: &str, id: &str) -> StoreResult<u32> {
        let n: i64 = self
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM deployments
                 WHERE environment = ?1 AND state = ?3 AND ord <= (
                     SELECT ord FROM deployments WHERE id = ?2 AND environment = ?1 AND state = ?3
                 )",
                params![environment, id, pb::DeploymentState::Queued as i32],
                |r| r.get(0),
            )
            .map_err(failed(&format!("reading the queue position of {id}")))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn set_owner(&self, id: &str, instance: &str) -> StoreResult<()> {
        let what = format!("setting the owner of deployment {id}");
        let n = self
            .conn()
            .execute(
                "UPDATE deployments SET owner = ?2 WHERE id = ?1",
                params![id, instance],
            )
            .map_err(failed(&what))?;
        if n == 0 {
            return Err(StoreError::Unavailable(format!(
                "sqlite: {what}: no such deployment"
            )));
        }
        Ok(())
    }

    fn orphaned(&self, instance: &str, stale: Duration) -> StoreResult<Vec<pb::Deployment>> {
        let cutoff = now_ms().saturating_sub(millis(stale));
        self.records(
            "SELECT d.id, d.record FROM deployments d
             LEFT JOIN instances i ON i.instance = d.owner
             WHERE d.state <> ?1 AND d.owner <> ?2
               AND (i.heartbeat_ms IS NULL OR i.heartbeat_ms < ?3)
             ORDER BY d.ord",
            &[
                Value::Integer(i64::from(pb::DeploymentState::Finished as i32)),
                Value::Text(instance.to_owned()),
                Value::Integer(cutoff),
            ],
            "listing orphaned deployments",
        )
    }

    fn disown(&self, id: &str, instance: &str) -> StoreResult<()> {
        // The lock row stays; nothing else is held (this file has one controller).
        self.conn()
            .execute(
                "UPDATE deployments SET owner = '' WHERE id = ?1 AND owner = ?2",
                params![id, instance],
            )
            .map(drop)
            .map_err(failed(&format!("giving deployment {id} up")))
    }

    fn owned(&self, instance: &str) -> StoreResult<Vec<pb::Deployment>> {
        self.records(
            "SELECT id, record FROM deployments WHERE state <> ?1 AND owner = ?2 ORDER BY ord",
            &[
                Value::Integer(i64::from(pb::DeploymentState::Finished as i32)),
                Value::Text(instance.to_owned()),
            ],
            &format!("listing the unfinished deployments of {instance}"),
        )
    }

    fn append_event_notifying(
        &self,
        ev: &pb::DeploymentEvent,
        notices: &[Notice],
    ) -> StoreResult<()> {
        let seq = event_seq(ev, "sqlite")?;
        let what = format!("appending event {} of {}", ev.seq, ev.deployment_id);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(failed(&what))?;
        match tx.execute(
            "INSERT INTO events (deployment_id, seq, record) VALUES (?1, ?2, ?3)",
            params![ev.deployment_id, seq, ev.encode_to_vec()],
        ) {
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => {
                return Err(StoreError::AlreadyExists(format!(
                    "event {} of deployment {} exists already",
                    ev.seq, ev.deployment_id
                )));
            }
            Err(e) => return Err(failed(&what)(e)),
        }
        insert_notices(&tx, notices).map_err(failed(&what))?;
        tx.commit().map_err(failed(&what))
    }

    fn events(&self, id: &str, from_seq: u64, limit: u32) -> StoreResult<Vec<pb::DeploymentEvent>> {
        let Ok(from) = i64::try_from(from_seq) else {
            return Ok(Vec::new());
        };
        let what = format!("reading the events of {id}");
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, record FROM events WHERE deployment_id = ?1 AND seq >= ?2
                 ORDER BY seq LIMIT ?3",
            )
            .map_err(failed(&what))?;
        let rows = stmt
            .query_map(params![id, from, sql_limit(limit)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(failed(&what))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, bytes) = row.map_err(failed(&what))?;
            out.push(decode(&bytes, &format!("event {seq} of {id}"))?);
        }
        Ok(out)
    }

    fn last_seq(&self, id: &str) -> StoreResult<Option<u64>> {
        let max: Option<i64> = self
            .conn()
            .query_row(
                "SELECT MAX(seq) FROM events WHERE deployment_id = ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(failed(&format!("reading the last seq of {id}")))?;
        Ok(max.map(stored_seq))
    }

    fn try_lock_env(
        &self,
        environment: &str,
        deployment_id: &str,
        instance: &str,
    ) -> StoreResult<LockAttempt> {
        let what = format!("locking environment {environment}");
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed(&what))?;
        let row: Option<(String, String)> = tx
            .query_row(
                "SELECT deployment_id, instance FROM env_locks WHERE environment = ?1",
                [environment],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(failed(&what))?;
        let attempt = match row {
            None => {
                tx.execute(
                    "INSERT INTO env_locks (environment, deployment_id, instance, since_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![environment, deployment_id, instance, now_ms()],
                )
                .map_err(failed(&what))?;
                LockAttempt::Acquired {
                    reclaimed_from: None,
                }
            }
            Some((holder, old)) if holder == deployment_id => {
                if old == instance {
                    LockAttempt::Acquired {
                        reclaimed_from: None,
                    }
                } else {
                    tx.execute(
                        "UPDATE env_locks SET instance = ?2 WHERE environment = ?1",
                        params![environment, instance],
                    )
                    .map_err(failed(&what))?;
                    LockAttempt::Acquired {
                        reclaimed_from: Some(old),
                    }
                }
            }
            // The holder is an unfinished deployment of a live controller (this one, restarted
            // under another name within OWNER_STALE, has not adopted it yet): it is that
            // deployment's to take again.
            Some((holder, old)) if holder_is_live(&tx, &holder).map_err(failed(&what))? => {
                LockAttempt::Held {
                    deployment_id: holder,
                    instance: old,
                }
            }
            // The flock makes this the only live controller on the file: a row of another
            // instance was left by a controller that died.
            Some((_, old)) if old != instance => {
                tx.execute(
                    "UPDATE env_locks SET deployment_id = ?2, instance = ?3, since_ms = ?4
                     WHERE environment = ?1",
                    params![environment, deployment_id, instance, now_ms()],
                )
                .map_err(failed(&what))?;
                LockAttempt::Acquired {
                    reclaimed_from: Some(old),
                }
            }
            Some((holder, old)) => LockAttempt::Held {
                deployment_id: holder,
                instance: old,
            },
        };
        tx.commit().map_err(failed(&what))?;
        Ok(attempt)
    }

    fn unlock_env(&self, environment: &str, deployment_id: &str) -> StoreResult<()> {
        self.conn()
            .execute(
                "DELETE FROM env_locks WHERE environment = ?1 AND deployment_id = ?2",
                params![environment, deployment_id],
            )
            .map(drop)
            .map_err(failed(&format!("unlocking environment {environment}")))
    }

    fn request_control(&self, deployment_id: &str, r: &ControlRequest) -> StoreResult<bool> {
        let n = self
            .conn()
            .execute(
                "INSERT INTO control_requests (deployment_id, kind, requested_by, text, requested_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (deployment_id, kind) DO NOTHING",
                params![deployment_id, r.kind.code(), r.by, r.text, now_ms()],
            )
            .map_err(failed(&format!(
                "recording a control request of {deployment_id}"
            )))?;
        Ok(n == 1)
    }

    fn control_requests(&self, deployment_id: &str) -> StoreResult<Vec<ControlRequest>> {
        let what = format!("reading the control requests of {deployment_id}");
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT kind, requested_by, text FROM control_requests WHERE deployment_id = ?1
                 ORDER BY ord",
            )
            .map_err(failed(&what))?;
        let rows = stmt
            .query_map([deployment_id], |r| {
                Ok((
                    r.get::<_, i32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(failed(&what))?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, by, text) = row.map_err(failed(&what))?;
            out.push(ControlRequest {
                kind: ControlKind::from_code(kind, deployment_id)?,
                by,
                text,
            });
        }
        Ok(out)
    }

    fn insert_incident(&self, i: &pb::Incident, notices: &[Notice]) -> StoreResult<()> {
        let what = format!("inserting incident {}", i.id);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(failed(&what))?;
        match tx.execute(
            "INSERT INTO incidents (id, environment, state, record) VALUES (?1, ?2, ?3, ?4)",
            params![i.id, i.environment, i.state, i.encode_to_vec()],
        ) {
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => {
                return Err(StoreError::AlreadyExists(format!(
                    "incident {} exists already",
                    i.id
                )));
            }
            Err(e) => return Err(failed(&what)(e)),
        }
        insert_notices(&tx, notices).map_err(failed(&what))?;
        tx.commit().map_err(failed(&what))
    }

    fn save_incident(&self, i: &pb::Incident, notices: &[Notice]) -> StoreResult<()> {
        let what = format!("saving incident {}", i.id);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(failed(&what))?;
        let n = tx
            .execute(
                "UPDATE incidents SET environment = ?2, state = ?3, record = ?4 WHERE id = ?1",
                params![i.id, i.environment, i.state, i.encode_to_vec()],
            )
            .map_err(failed(&what))?;
        if n == 0 {
            return Err(StoreError::Unavailable(format!(
                "sqlite: {what}: no such incident"
            )));
        }
        insert_notices(&tx, notices).map_err(failed(&what))?;
        tx.commit().map_err(failed(&what))
    }

    fn get_incident(&self, id: &str) -> StoreResult<Option<pb::Incident>> {
        self.get("incidents", id)
    }

    fn list_incidents(
        &self,
        environment: Option<&str>,
        states: &[pb::IncidentState],
        limit: u32,
    ) -> StoreResult<Vec<pb::Incident>> {
        let states: Vec<i32> = states.iter().map(|s| *s as i32).collect();
        self.list("incidents", environment, &states, limit)
    }

    fn claim_notices(
        &self,
        instance: &str,
        lease: Duration,
        limit: u32,
        sink: &str,
    ) -> StoreResult<Vec<OutboxRow>> {
        let what = "claiming due outbox rows";
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed(what))?;
        let rows = {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "UPDATE outbox SET attempts = attempts + 1, lease_owner = ?1, lease_until_ms = ?2
                     WHERE id IN (SELECT id FROM outbox
                         WHERE state = 0 AND due_ms <= ?3
                           AND (lease_until_ms <= ?3 OR lease_owner = ?1
                                OR lease_owner NOT IN
                                   (SELECT instance FROM instances WHERE heartbeat_ms >= ?6))
                           AND (?5 = '' OR sink = ?5)
                         ORDER BY ord LIMIT ?4)
                     RETURNING {OUTBOX_COLUMNS}"
                ))
                .map_err(failed(what))?;
            let rows = stmt
                .query_map(
                    params![
                        instance,
                        now.saturating_add(millis(lease)),
                        now,
                        i64::from(limit),
                        sink,
                        now.saturating_sub(millis(OWNER_STALE))
                    ],
                    outbox_row,
                )
                .map_err(failed(what))?;
            outbox_rows(rows, what)?
        };
        tx.commit().map_err(failed(what))?;
        Ok(rows)
    }

    fn settle_notice(&self, id: &str, instance: &str, result: &Delivery) -> StoreResult<bool> {
        let (state, due, error) = match result {
            Delivery::Delivered => (NoticeState::Delivered, 0, ""),
            Delivery::Retry { after, error } => (
                NoticeState::Pending,
                now_ms().saturating_add(millis(*after)),
                error.as_str(),
            ),
            Delivery::Failed { error } => (NoticeState::Failed, 0, error.as_str()),
        };
        let n = self
            .conn()
            .execute(
                "UPDATE outbox SET state = ?3,
                     due_ms = CASE WHEN ?3 = 0 THEN ?4 ELSE due_ms END,
                     last_error = CASE WHEN ?5 = '' THEN last_error ELSE ?5 END,
                     lease_owner = '', lease_until_ms = 0
                 WHERE id = ?1 AND lease_owner = ?2 AND state = 0",
                params![id, instance, state.code(), due, error],
            )
            .map_err(failed(&format!("settling outbox row {id}")))?;
        Ok(n == 1)
    }

    fn note_notice(&self, id: &str, instance: &str, note: &str) -> StoreResult<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE outbox SET note = ?3 WHERE id = ?1 AND lease_owner = ?2 AND state = 0",
                params![id, instance, note],
            )
            .map_err(failed(&format!("noting a step of outbox row {id}")))?;
        Ok(n == 1)
    }

    fn notices(&self, subject: &str) -> StoreResult<Vec<OutboxRow>> {
        let what = format!("reading the outbox rows of {subject}");
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE subject = ?1 ORDER BY ord"
            ))
            .map_err(failed(&what))?;
        let rows = stmt
            .query_map([subject], outbox_row)
            .map_err(failed(&what))?;
        outbox_rows(rows, &what)
    }

    fn pending_notices(&self) -> StoreResult<Vec<(String, String, u64)>> {
        let what = "counting pending outbox rows";
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT environment, sink, count(*) FROM outbox WHERE state = 0
                 GROUP BY environment, sink ORDER BY environment, sink",
            )
            .map_err(failed(what))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                ))
            })
            .map_err(failed(what))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(failed(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, Fixture, acquired, deployment, held};

    /// A store on a file in a temp dir, for the conformance suite and SQLite's own tests.
    struct SqliteFixture {
        dir: tempfile::TempDir,
        /// `None` only while reopening.
        store: Option<SqliteStore>,
    }

    impl SqliteFixture {
        fn new() -> SqliteFixture {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(&dir.path().join("controller.db")).unwrap();
            SqliteFixture {
                dir,
                store: Some(store),
            }
        }

        fn sqlite(&self) -> &SqliteStore {
            self.store.as_ref().expect("the store is open")
        }
    }

    impl Fixture for SqliteFixture {
        fn store(&self) -> &dyn Store {
            self.sqlite()
        }

        /// One controller per file: the store itself.
        fn peer(&self) -> &dyn Store {
            self.sqlite()
        }

        fn backdate_heartbeat(&self, instance: &str, age: Duration) {
            self.sqlite()
                .conn()
                .execute(
                    "INSERT INTO instances (instance, heartbeat_ms) VALUES (?1, ?2)
                     ON CONFLICT (instance) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
                    params![instance, now_ms() - millis(age)],
                )
                .unwrap();
        }

        fn reopen(&mut self) {
            // Closed (and its file lock released) before the next open takes the lock.
            self.store = None;
            self.store = Some(SqliteStore::open(&self.dir.path().join("controller.db")).unwrap());
        }
    }

    #[test]
    fn conformance_deployments_round_trip() {
        let f = SqliteFixture::new();
        conformance::deployments_round_trip(f.store(), f.peer());
    }

    #[test]
    fn conformance_queue_positions() {
        let f = SqliteFixture::new();
        conformance::queue_positions(f.store(), f.peer());
    }

    #[test]
    fn conformance_events_in_seq_order_without_duplicates() {
        let f = SqliteFixture::new();
        conformance::events_in_seq_order_without_duplicates(f.store(), f.peer());
    }

    #[test]
    fn conformance_outbox_rows_travel_with_their_records() {
        let f = SqliteFixture::new();
        conformance::outbox_rows_travel_with_their_records(f.store(), f.peer());
    }

    #[test]
    fn conformance_outbox_rows_of_a_dead_controller_are_taken_at_once() {
        let f = SqliteFixture::new();
        conformance::outbox_rows_of_a_dead_controller_are_taken_at_once(&f);
    }

    #[test]
    fn conformance_outbox_claims_by_sink() {
        let f = SqliteFixture::new();
        conformance::outbox_claims_by_sink(f.store());
    }

    #[test]
    fn conformance_outbox_claims_are_leased_and_settled() {
        let f = SqliteFixture::new();
        conformance::outbox_claims_are_leased_and_settled(f.store(), f.peer());
    }

    #[test]
    fn conformance_incidents_round_trip_and_filters() {
        let f = SqliteFixture::new();
        conformance::incidents_round_trip_and_filters(f.store(), f.peer());
    }

    #[test]
    fn conformance_env_lock_semantics() {
        conformance::env_lock_semantics(SqliteFixture::new().store());
    }

    #[test]
    fn conformance_env_lock_taken_over_from_a_dead_holder() {
        conformance::env_lock_taken_over_from_a_dead_holder(&mut SqliteFixture::new());
    }

    #[test]
    fn conformance_orphans_follow_heartbeats() {
        conformance::orphans_follow_heartbeats(&SqliteFixture::new());
    }

    #[test]
    fn conformance_artifacts_shared_between_controllers() {
        let f = SqliteFixture::new();
        conformance::artifacts_shared_between_controllers(f.store(), f.peer());
    }

    #[test]
    fn conformance_run_all() {
        conformance::run_all(&|| Box::new(SqliteFixture::new()));
    }

    #[test]
    fn describe_names_the_file() {
        let f = SqliteFixture::new();
        let s = f.sqlite();
        assert_eq!(s.describe(), format!("sqlite:{}", s.path.display()));
        assert_eq!(
            s.describe(),
            format!("sqlite:{}", f.dir.path().join("controller.db").display())
        );
    }

    #[test]
    fn reopen_keeps_data_and_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.db");
        let first = SqliteStore::open(&path).unwrap();
        first
            .insert_deployment(&deployment("d1", "prod", pb::DeploymentState::Queued), "i1")
            .unwrap();
        match SqliteStore::open(&path) {
            Err(StoreError::Unavailable(m)) => assert_eq!(
                m,
                format!(
                    "another rampart-controller uses {} (lock {}.lock held); stop it, or use a PostgreSQL store for several controllers",
                    path.display(),
                    path.display()
                )
            ),
            other => panic!("second open: {other:?}"),
        }
        drop(first);
        let second = SqliteStore::open(&path).unwrap();
        assert_eq!(
            second.get_deployment("d1").unwrap().map(|d| d.id),
            Some("d1".to_string())
        );
        let version: i64 = second
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = second
            .conn()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn conformance_control_requests_reach_every_controller() {
        let f = SqliteFixture::new();
        conformance::control_requests_reach_every_controller(f.store(), f.peer());
    }

    /// A file written by a controller of schema version 1 is upgraded in place, its data kept.
    #[test]
    fn a_version_1_file_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO deployments (id, environment, state, owner, record)
                 VALUES ('d1', 'prod', 1, 'i1', ?1)",
                [deployment("d1", "prod", pb::DeploymentState::Queued).encode_to_vec()],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let version: i64 = s
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(
            s.get_deployment("d1").unwrap().map(|d| d.id),
            Some("d1".to_string())
        );
        let approve = ControlRequest {
            kind: ControlKind::Approve,
            by: "ops".into(),
            text: String::new(),
        };
        assert!(s.request_control("d1", &approve).unwrap());
        assert_eq!(s.control_requests("d1").unwrap(), vec![approve]);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 7)
            .unwrap();
        match SqliteStore::open(&path) {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("schema version 7"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn corrupt_record_names_the_id() {
        let f = SqliteFixture::new();
        let s = f.sqlite();
        s.insert_deployment(&deployment("d1", "prod", pb::DeploymentState::Queued), "i1")
            .unwrap();
        s.conn()
            .execute(
                "UPDATE deployments SET record = X'FFFFFFFF' WHERE id = 'd1'",
                [],
            )
            .unwrap();
        match s.get_deployment("d1") {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("d1"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// The file lock makes the store's controller the only live one, so a lock row naming
    /// another instance was left by a controller that died, even within one open store.
    #[test]
    fn env_lock_of_another_instance_is_taken_over() {
        let f = SqliteFixture::new();
        let s = f.sqlite();
        assert_eq!(s.try_lock_env("prod", "d1", "i1").unwrap(), acquired(None));
        assert_eq!(
            s.try_lock_env("prod", "d2", "i1").unwrap(),
            held("d1", "i1")
        );
        // A new controller instance (i1 died): it takes the lock over.
        assert_eq!(
            s.try_lock_env("prod", "d2", "i2").unwrap(),
            acquired(Some("i1"))
        );
        assert_eq!(
            s.try_lock_env("prod", "d1", "i2").unwrap(),
            held("d2", "i2")
        );
        // The holding deployment adopted by another instance.
        assert_eq!(
            s.try_lock_env("prod", "d2", "i3").unwrap(),
            acquired(Some("i2"))
        );
        assert_eq!(s.try_lock_env("prod", "d2", "i3").unwrap(), acquired(None));
        // Unlock by the holder frees it.
        s.unlock_env("prod", "d2").unwrap();
        assert_eq!(s.try_lock_env("prod", "d1", "i3").unwrap(), acquired(None));
        s.unlock_env("prod", "d1").unwrap();
        s.unlock_env("prod", "d1").unwrap();
    }

    #[test]
    fn heartbeat_updates() {
        let f = SqliteFixture::new();
        let s = f.sqlite();
        s.heartbeat("i1").unwrap();
        let first: i64 = s
            .conn()
            .query_row(
                "SELECT heartbeat_ms FROM instances WHERE instance = 'i1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        s.heartbeat("i1").unwrap();
        let (n, second): (i64, i64) = s
            .conn()
            .query_row(
                "SELECT COUNT(*), MAX(heartbeat_ms) FROM instances",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(n, 1);
        assert!(second > first, "{second} > {first}");
    }
}
