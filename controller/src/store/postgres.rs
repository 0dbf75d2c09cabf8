//! The shared store: PostgreSQL, schema `rampart_controller`, several controllers at once.
//!
//! Queries go through one connection behind a mutex, reconnected once when it was closed. An
//! environment's lock is a session advisory lock (`pg_try_advisory_lock`) taken on a
//! connection of its own, kept for as long as the lock is held: when the controller holding it
//! dies, its sessions end and the server releases the lock, so another controller can take
//! over. The `env_locks` table says who holds a lock (for `Held` answers and for the
//! `reclaimed_from` of a take-over). The advisory lock is the truth, but for one case: a
//! PostgreSQL restart ends every session, the holder's too, while its controller lives; so a
//! free advisory lock whose row names an unfinished deployment of a controller with a fresh
//! heartbeat ([`OWNER_STALE`]) is given back only to that deployment.
//!
//! The store's sessions (`postgres::Client`s) each own a small runtime: drop the store outside
//! any tokio runtime (the controller's `main` does, after shutting its runtime down).
//!
//! The schema is migrated at open with Rampart's own Flyway-compatible migrator (history in
//! `rampart_controller.flyway_schema_history`), from the scripts in `pg_migrations/` embedded in
//! the binary. Times (heartbeats) are milliseconds since the epoch by the database's clock, so
//! controllers with skewed clocks agree on what is stale.
//!
//! Artifacts are held here for every controller (`artifacts` and `artifact_chunks`, see
//! `V3__shared_artifacts.sql` and [`crate::artifact_store`]): an upload is written on a
//! connection of its own in one transaction holding its header row's lock, and read back one
//! chunk per query, so neither blocks the other queries nor holds more than a chunk in memory.
//!
//! The client is the blocking `postgres` crate: never call this store from a tokio runtime
//! thread (the controller calls it from `spawn_blocking`). TLS to PostgreSQL is not built in: a
//! URL asking for it is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls};
use prost::Message;
use rampart_migrate::config::{Config as MigrateConfig, PgUrl, parse_jdbc_url};
use rampart_migrate::error::db_message;
use rampart_migrate::run::Runner;
use rampart_proto::v1 as pb;
use sha2::{Digest, Sha256};

use super::{
    ARTIFACT_CHUNK, ArtifactRow, ControlKind, ControlRequest, Delivery, LockAttempt, Notice,
    NoticeState, OWNER_STALE, OutboxRow, Store, StoreError, StoreResult, decode, event_seq, millis,
    stored_seq,
};

/// The schema holding the store's tables and its migration history.
pub const SCHEMA: &str = "rampart_controller";

/// The migrations, in order: (file name, SQL).
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "V1__controller_store.sql",
        include_str!("pg_migrations/V1__controller_store.sql"),
    ),
    (
        "V2__control_requests.sql",
        include_str!("pg_migrations/V2__control_requests.sql"),
    ),
    (
        "V3__shared_artifacts.sql",
        include_str!("pg_migrations/V3__shared_artifacts.sql"),
    ),
    (
        "V4__notification_outbox.sql",
        include_str!("pg_migrations/V4__notification_outbox.sql"),
    ),
];

/// The columns of an outbox row as [`outbox_row`] reads them (the age by the database's clock).
const OUTBOX_COLUMNS: &str =
    "id, environment, sink, event, subject, state, attempts, note, last_error, created_ms";

/// Reads an outbox row selected with [`OUTBOX_COLUMNS`] and `{NOW_MS}` last.
fn outbox_row(r: &postgres::Row) -> StoreResult<OutboxRow> {
    let id: String = r.get(0);
    let created: i64 = r.get(9);
    let now: i64 = r.get(10);
    Ok(OutboxRow {
        state: NoticeState::from_code(r.get(5), &id)?,
        notice: Notice {
            id,
            environment: r.get(1),
            sink: r.get(2),
            event: r.get(3),
            subject: r.get(4),
        },
        attempts: u32::try_from(r.get::<_, i32>(6)).unwrap_or(0),
        age: Duration::from_millis(stored_size(now - created)),
        note: r.get(7),
        last_error: r.get(8),
    })
}

/// Writes outbox rows inside a transaction; a row whose id is stored already is kept.
fn insert_notices(
    t: &mut postgres::Transaction<'_>,
    notices: &[Notice],
) -> Result<(), postgres::Error> {
    for n in notices {
        t.execute(
            &format!(
                "INSERT INTO {SCHEMA}.outbox (id, environment, sink, event, subject, created_ms, due_ms)
                 VALUES ($1, $2, $3, $4, $5, {NOW_MS}, {NOW_MS}) ON CONFLICT (id) DO NOTHING"
            ),
            &[&n.id, &n.environment, &n.sink, &n.event, &n.subject],
        )?;
    }
    Ok(())
}

/// Whether `e` says a unique constraint was violated, inside a closure that also returns
/// other errors: the insert's outcome, so a transaction maps it to `AlreadyExists`.
enum Inserted {
    /// Stored, committed.
    Yes,
    /// The row exists; nothing committed.
    Duplicate,
}

/// The database's clock in milliseconds since the epoch, as SQL.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// How long connecting may take unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long storing an artifact waits for another controller storing the same one.
const ARTIFACT_LOCK_WAIT: Duration = Duration::from_secs(600);

/// How long checking that a lock's session is alive may take.
const SESSION_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL store.
pub struct PostgresStore {
    /// How to connect (login included).
    config: postgres::Config,
    /// `postgresql://host:port/db`, for logs.
    shown: String,
    /// The connection for every query.
    client: Mutex<Client>,
    /// The environment locks this store holds: environment → (deployment, the session holding
    /// its advisory lock).
    locks: Mutex<HashMap<String, (String, Client)>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held: Vec<(String, String)> = lock(&self.locks)
            .iter()
            .map(|(env, (dep, _))| (env.clone(), dep.clone()))
            .collect();
        f.debug_struct("PostgresStore")
            .field("url", &self.shown)
            .field("locks_held", &held)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, going on after a panic elsewhere (an open transaction was rolled back when it
/// was dropped).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Maps a PostgreSQL error to `Unavailable`, saying what was being done.
fn failed(context: &str) -> impl FnOnce(postgres::Error) -> StoreError + '_ {
    move |e| StoreError::Unavailable(format!("postgresql: {context}: {}", db_message(&e)))
}

/// Whether an error is a violated unique constraint.
fn is_duplicate(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// The advisory lock key of an environment: the first 8 bytes of
/// `sha256("rampart-env:" + name)`, big-endian, as an `i64`. Stable across controllers and
/// releases.
pub fn env_lock_key(environment: &str) -> i64 {
    let digest = Sha256::digest(format!("rampart-env:{environment}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// `limit` as a LIMIT value (`NULL`: none).
fn sql_limit(limit: u32) -> Option<i64> {
    (limit != 0).then_some(i64::from(limit))
}

/// A host as it goes in a URL (IPv6 in brackets).
fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Percent-encodes everything but unreserved characters (for a database name in a URL).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A libpq-style URL, parsed and checked.
#[derive(Debug)]
struct Target {
    url: PgUrl,
    user: String,
    database: String,
    connect_timeout: Duration,
}

/// Parses `postgresql://user:password@host:port/db` (or `postgres://`), refusing TLS and
/// parameters this store does not use.
fn parse_url(url: &str) -> StoreResult<Target> {
    let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
    if !lower.starts_with("postgresql://") && !lower.starts_with("postgres://") {
        return Err(StoreError::Unavailable(format!(
            "store URL {} is not a postgresql:// URL",
            rampart_migrate::config::redact_url(url)
        )));
    }
    let parsed = parse_jdbc_url(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let shown = rampart_migrate::config::redact_url(url);
    if parsed.current_schema.is_some() {
        return Err(StoreError::Unavailable(format!(
            "store URL {shown}: currentSchema is not supported (the store always uses schema {SCHEMA})"
        )));
    }
    let mut connect_timeout = CONNECT_TIMEOUT;
    for (key, value) in &parsed.params {
        let k = key.to_ascii_lowercase();
        let v = value.to_ascii_lowercase();
        match k.as_str() {
            "sslmode" if matches!(v.as_str(), "disable" | "allow" | "prefer") => {}
            "ssl" if v != "true" => {}
            "sslmode" | "ssl" => {
                return Err(StoreError::Unavailable(format!(
                    "store URL {shown}: {key}={value} asks for TLS, which the controller's PostgreSQL client does not support yet; connect over a trusted network or a local tunnel and drop the parameter"
                )));
            }
            "connect_timeout" => {
                let secs: u64 = value.parse().map_err(|_| {
                    StoreError::Unavailable(format!(
                        "store URL {shown}: connect_timeout={value} is not a number of seconds"
                    ))
                })?;
                connect_timeout = Duration::from_secs(secs.max(1));
            }
            _ => {
                return Err(StoreError::Unavailable(format!(
                    "store URL {shown}: parameter {key} is not supported (only sslmode=disable|allow|prefer and connect_timeout)"
                )));
            }
        }
    }
    let user = parsed.user.clone().unwrap_or_else(|| "postgres".to_owned());
    let database = parsed.database.clone().unwrap_or_else(|| user.clone());
    Ok(Target {
        url: parsed,
        user,
        database,
        connect_timeout,
    })
}

/// A private scratch directory under the system temp dir, removed when dropped.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> StoreResult<ScratchDir> {
        use std::os::unix::fs::DirBuilderExt;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut last_error = None;
        for _ in 0..100 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "rampart-controller-migrations-{}-{n}",
                std::process::id()
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(ScratchDir(path)),
                // Left by an earlier process with the same pid: try the next name.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "cannot create {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "cannot create a scratch directory in {}: {}",
            std::env::temp_dir().display(),
            last_error.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Brings schema `rampart_controller` up to date with the embedded migrations.
fn migrate_schema(target: &Target, shown: &str) -> StoreResult<()> {
    let dir = ScratchDir::new()?;
    for (name, sql) in MIGRATIONS {
        let path = dir.path().join(name);
        std::fs::write(&path, sql).map_err(|e| {
            StoreError::Unavailable(format!("cannot write {}: {e}", path.display()))
        })?;
    }
    let config = MigrateConfig {
        url: Some(format!(
            "jdbc:postgresql://{}:{}/{}",
            url_host(&target.url.host),
            target.url.port,
            percent_encode(&target.database)
        )),
        user: Some(target.user.clone()),
        password: target.url.password.clone(),
        schemas: vec![SCHEMA.to_owned()],
        locations: vec![dir.path().to_path_buf()],
        ..MigrateConfig::default()
    };
    let fail = |e: rampart_migrate::MigrateError| {
        StoreError::Unavailable(format!("migrating the store schema in {shown}: {e}"))
    };
    let mut runner = Runner::open(&config).map_err(fail)?;
    let report = runner.migrate(&mut |_| {}).map_err(fail)?;
    if !report.applied.is_empty() {
        tracing::info!(
            store = %shown,
            from = ?report.initial_version,
            to = ?report.target_version,
            "migrated the controller store schema"
        );
    }
    Ok(())
}

impl PostgresStore {
    /// Connects to `url` (`postgresql://user:password@host:port/db`, or `postgres://`; the only
    /// parameters accepted are `sslmode=disable|allow|prefer` and `connect_timeout`), and
    /// migrates schema `rampart_controller`. `Unavailable` when the URL asks for TLS, the
    /// server cannot be reached or the migration fails.
    pub fn open(url: &str) -> StoreResult<PostgresStore> {
        let target = parse_url(url)?;
        let shown = format!(
            "postgresql://{}:{}/{}",
            url_host(&target.url.host),
            target.url.port,
            percent_encode(&target.database)
        );
        let mut config = postgres::Config::new();
        config
            .host(&target.url.host)
            .port(target.url.port)
            .user(&target.user)
            .dbname(&target.database)
            .application_name("rampart-controller")
            .connect_timeout(target.connect_timeout);
        if let Some(password) = &target.url.password {
            config.password(password);
        }
        migrate_schema(&target, &shown)?;
        let client = config.connect(NoTls).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to {shown} as {}: {}",
                target.user,
                db_message(&e)
            ))
        })?;
        Ok(PostgresStore {
            config,
            shown,
            client: Mutex::new(client),
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` on the query connection; when the connection turns out closed, reconnects and
    /// runs it once more.
    fn run<T>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let mut client = lock(&self.client);
        if client.is_closed() {
            *client = self.config.connect(NoTls)?;
        }
        match f(&mut client) {
            Err(e) if e.is_closed() || client.is_closed() => {
                tracing::warn!(store = %self.shown, error = %db_message(&e), "store connection lost, reconnecting");
                *client = self.config.connect(NoTls)?;
                f(&mut client)
            }
            result => result,
        }
    }

    /// Runs a query returning `(id, record)` rows and decodes the records.
    fn records<M: Message + Default>(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        what: &str,
    ) -> StoreResult<Vec<M>> {
        let rows = self.run(|c| c.query(sql, params)).map_err(failed(what))?;
        rows.iter()
            .map(|r| decode(r.get::<_, &[u8]>(1), r.get::<_, &str>(0)))
            .collect()
    }

    /// One record by id.
    fn get<M: Message + Default>(&self, table: &str, id: &str) -> StoreResult<Option<M>> {
        let sql = format!("SELECT record FROM {SCHEMA}.{table} WHERE id = $1");
        let row = self
            .run(|c| c.query_opt(&sql, &[&id]))
            .map_err(failed(&format!("reading {id} from {table}")))?;
        row.map(|r| decode(r.get::<_, &[u8]>(0), id)).transpose()
    }

    /// Records of `table` filtered by environment and states, newest first.
    fn list<M: Message + Default>(
        &self,
        table: &str,
        environment: Option<&str>,
        states: Vec<i32>,
        limit: u32,
    ) -> StoreResult<Vec<M>> {
        let sql = format!(
            "SELECT id, record FROM {SCHEMA}.{table}
             WHERE ($1::text IS NULL OR environment = $1)
               AND (cardinality($2::int4[]) = 0 OR state = ANY($2))
             ORDER BY ord DESC LIMIT $3"
        );
        self.records(
            &sql,
            &[&environment, &states, &sql_limit(limit)],
            &format!("listing {table}"),
        )
    }

    /// Runs an UPDATE of one row by id; `Unavailable` when no row has that id.
    fn update_one(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        what: &str,
    ) -> StoreResult<()> {
        let n = self.run(|c| c.execute(sql, params)).map_err(failed(what))?;
        if n == 0 {
            return Err(StoreError::Unavailable(format!(
                "postgresql: {what}: no such row"
            )));
        }
        Ok(())
    }

    /// Inserts a row; `AlreadyExists` (saying `exists`) on a unique violation.
    fn insert(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        what: &str,
        exists: impl FnOnce() -> String,
    ) -> StoreResult<()> {
        match self.run(|c| c.execute(sql, params)) {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Err(StoreError::AlreadyExists(exists())),
            Err(e) => Err(failed(what)(e)),
        }
    }

    /// Runs an INSERT and writes `notices` in one transaction: `AlreadyExists` (saying
    /// `exists`, nothing stored) on a unique violation of the INSERT.
    fn insert_notifying(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        notices: &[Notice],
        what: &str,
        exists: impl FnOnce() -> String,
    ) -> StoreResult<()> {
        let done = self
            .run(|c| {
                let mut t = c.transaction()?;
                match t.execute(sql, params) {
                    Ok(_) => {}
                    Err(e) if is_duplicate(&e) => return Ok(Inserted::Duplicate),
                    Err(e) => return Err(e),
                }
                insert_notices(&mut t, notices)?;
                t.commit()?;
                Ok(Inserted::Yes)
            })
            .map_err(failed(what))?;
        match done {
            Inserted::Yes => Ok(()),
            Inserted::Duplicate => Err(StoreError::AlreadyExists(exists())),
        }
    }

    /// The `env_locks` row of an environment: (deployment, instance).
    fn lock_row(&self, environment: &str) -> StoreResult<Option<(String, String)>> {
        let sql = format!(
            "SELECT deployment_id, instance FROM {SCHEMA}.env_locks WHERE environment = $1"
        );
        let row = self
            .run(|c| c.query_opt(&sql, &[&environment]))
            .map_err(failed(&format!(
                "reading the lock of environment {environment}"
            )))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// A `Held` answer from the `env_locks` row (empty strings when there is none).
    fn held(&self, environment: &str) -> StoreResult<LockAttempt> {
        let (deployment_id, instance) = self.lock_row(environment)?.unwrap_or_default();
        Ok(LockAttempt::Held {
            deployment_id,
            instance,
        })
    }
}

impl Store for PostgresStore {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn heartbeat(&self, instance: &str) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO {SCHEMA}.instances (instance, heartbeat_ms) VALUES ($1, {NOW_MS})
             ON CONFLICT (instance) DO UPDATE SET heartbeat_ms = EXCLUDED.heartbeat_ms"
        );
        self.run(|c| c.execute(&sql, &[&instance]))
            .map(drop)
            .map_err(failed("recording a heartbeat"))
    }

    fn insert_deployment(&self, d: &pb::Deployment, owner: &str) -> StoreResult<()> {
        self.insert(
            &format!(
                "INSERT INTO {SCHEMA}.deployments (id, environment, state, owner, record)
                 VALUES ($1, $2, $3, $4, $5)"
            ),
            &[&d.id, &d.environment, &d.state, &owner, &d.encode_to_vec()],
            &format!("inserting deployment {}", d.id),
            || format!("deployment {} exists already", d.id),
        )
    }

    fn save_deployment(&self, d: &pb::Deployment) -> StoreResult<()> {
        self.update_one(
            &format!(
                "UPDATE {SCHEMA}.deployments SET environment = $2, state = $3, record = $4
                 WHERE id = $1"
            ),
            &[&d.id, &d.environment, &d.state, &d.encode_to_vec()],
            &format!("saving deployment {}", d.id),
        )
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
        let states = states.iter().map(|s| *s as i32).collect();
        self.list("deployments", environment, states, limit)
    }

    fn queue_position(&self, environment: &str, id: &str) -> StoreResult<u32> {
        let sql = format!(
            "SELECT COUNT(*) FROM {SCHEMA}.deployments
             WHERE environment = $1 AND state = $3 AND ord <= (
                 SELECT ord FROM {SCHEMA}.deployments
                 WHERE id = $2 AND environment = $1 AND state = $3
             )"
        );
        let queued = pb::DeploymentState::Queued as i32;
        let n: i64 = self
            .run(|c| c.query_one(&sql, &[&environment, &id, &queued]))
            .map_err(failed(&format!("reading the queue position of {id}")))?
            .get(0);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn set_owner(&self, id: &str, instance: &str) -> StoreResult<()> {
        self.update_one(
            &format!("UPDATE {SCHEMA}.deployments SET owner = $2 WHERE id = $1"),
            &[&id, &instance],
            &format!("setting the owner of deployment {id}"),
        )
    }

    fn orphaned(&self, instance: &str, stale: Duration) -> StoreResult<Vec<pb::Deployment>> {
        let stale_ms = millis(stale);
        let finished = pb::DeploymentState::Finished as i32;
        self.records(
            &format!(
                "SELECT d.id, d.record FROM {SCHEMA}.deployments d
                 LEFT JOIN {SCHEMA}.instances i ON i.instance = d.owner
                 WHERE d.state <> $1 AND d.owner <> $2
                   AND (i.heartbeat_ms IS NULL OR i.heartbeat_ms < {NOW_MS} - $3)
                 ORDER BY d.ord"
            ),
            &[&finished, &instance, &stale_ms],
            "listing orphaned deployments",
        )
    }

    fn disown(&self, id: &str, instance: &str) -> StoreResult<()> {
        // The lock's session first: whether or not the row below is written, this controller
        // no longer keeps the environment from the deployment's adopter.
        lock(&self.locks).retain(|_, (holder, _)| holder != id);
        self.run(|c| {
            c.execute(
                &format!("UPDATE {SCHEMA}.deployments SET owner = '' WHERE id = $1 AND owner = $2"),
                &[&id, &instance],
            )
        })
        .map(drop)
        .map_err(failed(&format!("giving deployment {id} up")))
    }

    fn owned(&self, instance: &str) -> StoreResult<Vec<pb::Deployment>> {
        let finished = pb::DeploymentState::Finished as i32;
        self.records(
            &format!(
                "SELECT id, record FROM {SCHEMA}.deployments WHERE state <> $1 AND owner = $2
                 ORDER BY ord"
            ),
            &[&finished, &instance],
            &format!("listing the unfinished deployments of {instance}"),
        )
    }

    fn append_event_notifying(
        &self,
        ev: &pb::DeploymentEvent,
        notices: &[Notice],
    ) -> StoreResult<()> {
        let seq = event_seq(ev, "postgresql")?;
        self.insert_notifying(
            &format!(
                "INSERT INTO {SCHEMA}.events (deployment_id, seq, record) VALUES ($1, $2, $3)"
            ),
            &[&ev.deployment_id, &seq, &ev.encode_to_vec()],
            notices,
            &format!("appending event {} of {}", ev.seq, ev.deployment_id),
            || {
                format!(
                    "event {} of deployment {} exists already",
                    ev.seq, ev.deployment_id
                )
            },
        )
    }

    fn events(&self, id: &str, from_seq: u64, limit: u32) -> StoreResult<Vec<pb::DeploymentEvent>> {
        let Ok(from) = i64::try_from(from_seq) else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT seq, record FROM {SCHEMA}.events WHERE deployment_id = $1 AND seq >= $2
             ORDER BY seq LIMIT $3"
        );
        let rows = self
            .run(|c| c.query(&sql, &[&id, &from, &sql_limit(limit)]))
            .map_err(failed(&format!("reading the events of {id}")))?;
        rows.iter()
            .map(|r| {
                decode(
                    r.get::<_, &[u8]>(1),
                    &format!("event {} of {id}", r.get::<_, i64>(0)),
                )
            })
            .collect()
    }

    fn last_seq(&self, id: &str) -> StoreResult<Option<u64>> {
        let sql = format!("SELECT MAX(seq) FROM {SCHEMA}.events WHERE deployment_id = $1");
        let max: Option<i64> = self
            .run(|c| c.query_one(&sql, &[&id]))
            .map_err(failed(&format!("reading the last seq of {id}")))?
            .get(0);
        Ok(max.map(stored_seq))
    }

    fn try_lock_env(
        &self,
        environment: &str,
        deployment_id: &str,
        instance: &str,
    ) -> StoreResult<LockAttempt> {
        let mut locks = lock(&self.locks);
        if let Some((holder, session)) = locks.get_mut(environment) {
            if session.is_valid(SESSION_CHECK_TIMEOUT).is_ok() {
                if holder == deployment_id {
                    return Ok(LockAttempt::Acquired {
                        reclaimed_from: None,
                    });
                }
                let holder = holder.clone();
                let row_instance = self
                    .lock_row(environment)?
                    .filter(|(d, _)| *d == holder)
                    .map(|(_, i)| i)
                    .unwrap_or_default();
                return Ok(LockAttempt::Held {
                    deployment_id: holder,
                    instance: row_instance,
                });
            }
            // The session holding it is gone, and with it the advisory lock: try afresh.
            tracing::warn!(
                store = %self.shown,
                environment,
                holder = %holder,
                "lost the session holding an environment lock"
            );
            locks.remove(environment);
        }

        let what = format!("locking environment {environment}");
        let key = env_lock_key(environment);
        let mut session = self
            .config
            .clone()
            .application_name("rampart-controller-lock")
            .connect(NoTls)
            .map_err(failed(&what))?;
        let got: bool = session
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .map_err(failed(&what))?
            .get(0);
        if !got {
            drop(session);
            return self.held(environment);
        }
        // The row, and whether it names an unfinished deployment of a live controller.
        let select = format!(
            "SELECT l.deployment_id, l.instance,
                    COALESCE(d.state <> $2 AND i.heartbeat_ms >= {NOW_MS} - $3, false)
             FROM {SCHEMA}.env_locks l
             LEFT JOIN {SCHEMA}.deployments d ON d.id = l.deployment_id
             LEFT JOIN {SCHEMA}.instances i ON i.instance = d.owner
             WHERE l.environment = $1
             FOR UPDATE OF l"
        );
        let upsert = format!(
            "INSERT INTO {SCHEMA}.env_locks (environment, deployment_id, instance, since_ms)
             VALUES ($1, $2, $3, {NOW_MS})
             ON CONFLICT (environment) DO UPDATE SET deployment_id = EXCLUDED.deployment_id,
                 instance = EXCLUDED.instance, since_ms = EXCLUDED.since_ms"
        );
        let finished = pb::DeploymentState::Finished as i32;
        let stale_ms = millis(OWNER_STALE);
        // On failure `session` is dropped, which ends it and releases the advisory lock.
        let taken: Result<Option<(String, String)>, (String, String)> = self
            .run(|c| {
                let mut tx = c.transaction()?;
                let previous = tx
                    .query_opt(&select, &[&environment, &finished, &stale_ms])?
                    .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get(2)));
                match previous {
                    // The advisory lock was free only because the holder lost its session
                    // (a restart of the server ends them all); its controller lives and
                    // takes it again.
                    Some((dep, old, true)) if dep != deployment_id => {
                        tx.rollback()?;
                        Ok(Err((dep, old)))
                    }
                    previous => {
                        tx.execute(&upsert, &[&environment, &deployment_id, &instance])?;
                        tx.commit()?;
                        Ok(Ok(previous.map(|(dep, old, _)| (dep, old))))
                    }
                }
            })
            .map_err(failed(&what))?;
        let previous = match taken {
            Ok(previous) => previous,
            Err((deployment_id, instance)) => {
                // Ending the session releases the advisory lock for its holder.
                drop(session);
                return Ok(LockAttempt::Held {
                    deployment_id,
                    instance,
                });
            }
        };
        // The advisory lock was free, so a row naming someone else is left by a holder that
        // died (its session, and the lock, went with it) or released without cleaning up.
        let reclaimed_from = match previous {
            Some((_, old)) if old != instance => Some(old),
            Some((dep, old)) if dep != deployment_id => Some(old),
            _ => None,
        };
        locks.insert(environment.to_owned(), (deployment_id.to_owned(), session));
        Ok(LockAttempt::Acquired { reclaimed_from })
    }

    fn unlock_env(&self, environment: &str, deployment_id: &str) -> StoreResult<()> {
        let mut locks = lock(&self.locks);
        match locks.get(environment) {
            Some((holder, _)) if holder == deployment_id => {}
            // Not held here, or held for another deployment: nothing to do.
            _ => return Ok(()),
        }
        let Some((_, mut session)) = locks.remove(environment) else {
            return Ok(());
        };
        let sql =
            format!("DELETE FROM {SCHEMA}.env_locks WHERE environment = $1 AND deployment_id = $2");
        let deleted = self.run(|c| c.execute(&sql, &[&environment, &deployment_id]));
        // Ending the session would release the lock too; unlocking first says so explicitly
        // and does not depend on when the server notices the session ended.
        if let Err(e) = session.query_one(
            "SELECT pg_advisory_unlock($1)",
            &[&env_lock_key(environment)],
        ) {
            tracing::warn!(store = %self.shown, environment, error = %db_message(&e), "advisory unlock failed; closing its session releases it");
        }
        drop(session);
        deleted
            .map(drop)
            .map_err(failed(&format!("unlocking environment {environment}")))
    }

    fn request_control(&self, deployment_id: &str, r: &ControlRequest) -> StoreResult<bool> {
        let sql = format!(
            "INSERT INTO {SCHEMA}.control_requests
                 (deployment_id, kind, requested_by, text, requested_ms)
             VALUES ($1, $2, $3, $4, {NOW_MS})
             ON CONFLICT (deployment_id, kind) DO NOTHING"
        );
        let n = self
            .run(|c| c.execute(&sql, &[&deployment_id, &r.kind.code(), &r.by, &r.text]))
            .map_err(failed(&format!(
                "recording a control request of {deployment_id}"
            )))?;
        Ok(n == 1)
    }

    fn control_requests(&self, deployment_id: &str) -> StoreResult<Vec<ControlRequest>> {
        let sql = format!(
            "SELECT kind, requested_by, text FROM {SCHEMA}.control_requests
             WHERE deployment_id = $1 ORDER BY ord"
        );
        let rows = self
            .run(|c| c.query(&sql, &[&deployment_id]))
            .map_err(failed(&format!(
                "reading the control requests of {deployment_id}"
            )))?;
        rows.iter()
            .map(|r| {
                Ok(ControlRequest {
                    kind: ControlKind::from_code(r.get(0), deployment_id)?,
                    by: r.get(1),
                    text: r.get(2),
                })
            })
            .collect()
    }

    fn insert_incident(&self, i: &pb::Incident, notices: &[Notice]) -> StoreResult<()> {
        self.insert_notifying(
            &format!(
                "INSERT INTO {SCHEMA}.incidents (id, environment, state, record)
                 VALUES ($1, $2, $3, $4)"
            ),
            &[&i.id, &i.environment, &i.state, &i.encode_to_vec()],
            notices,
            &format!("inserting incident {}", i.id),
            || format!("incident {} exists already", i.id),
        )
    }

    fn save_incident(&self, i: &pb::Incident, notices: &[Notice]) -> StoreResult<()> {
        let what = format!("saving incident {}", i.id);
        let sql = format!(
            "UPDATE {SCHEMA}.incidents SET environment = $2, state = $3, record = $4
             WHERE id = $1"
        );
        let record = i.encode_to_vec();
        let n = self
            .run(|c| {
                let mut t = c.transaction()?;
                let n = t.execute(&sql, &[&i.id, &i.environment, &i.state, &record])?;
                if n == 1 {
                    insert_notices(&mut t, notices)?;
                    t.commit()?;
                }
                Ok(n)
            })
            .map_err(failed(&what))?;
        if n == 0 {
            return Err(StoreError::Unavailable(format!(
                "postgresql: {what}: no such row"
            )));
        }
        Ok(())
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
        let states = states.iter().map(|s| *s as i32).collect();
        self.list("incidents", environment, states, limit)
    }

    fn claim_notices(
        &self,
        instance: &str,
        lease: Duration,
        limit: u32,
        sink: &str,
    ) -> StoreResult<Vec<OutboxRow>> {
        // SKIP LOCKED: two controllers claiming at once take different rows.
        let sql = format!(
            "UPDATE {SCHEMA}.outbox SET attempts = attempts + 1, lease_owner = $1,
                 lease_until_ms = {NOW_MS} + $2
             WHERE id IN (SELECT id FROM {SCHEMA}.outbox
                 WHERE state = 0 AND due_ms <= {NOW_MS}
                   AND (lease_until_ms <= {NOW_MS} OR lease_owner = $1
                        OR lease_owner NOT IN (SELECT instance FROM {SCHEMA}.instances
                                               WHERE heartbeat_ms >= {NOW_MS} - $5))
                   AND ($4 = '' OR sink = $4)
                 ORDER BY ord LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING {OUTBOX_COLUMNS}, {NOW_MS}"
        );
        let rows = self
            .run(|c| {
                c.query(
                    &sql,
                    &[
                        &instance,
                        &millis(lease),
                        &i64::from(limit),
                        &sink,
                        &millis(OWNER_STALE),
                    ],
                )
            })
            .map_err(failed("claiming due outbox rows"))?;
        let mut out = rows
            .iter()
            .map(outbox_row)
            .collect::<StoreResult<Vec<_>>>()?;
        out.sort_by(|a, b| a.age.cmp(&b.age).reverse());
        Ok(out)
    }

    fn settle_notice(&self, id: &str, instance: &str, result: &Delivery) -> StoreResult<bool> {
        let (state, after, error) = match result {
            Delivery::Delivered => (NoticeState::Delivered, 0, ""),
            Delivery::Retry { after, error } => {
                (NoticeState::Pending, millis(*after), error.as_str())
            }
            Delivery::Failed { error } => (NoticeState::Failed, 0, error.as_str()),
        };
        let sql = format!(
            "UPDATE {SCHEMA}.outbox SET state = $3,
                 due_ms = CASE WHEN $3 = 0 THEN {NOW_MS} + $4 ELSE due_ms END,
                 last_error = CASE WHEN $5 = '' THEN last_error ELSE $5 END,
                 lease_owner = '', lease_until_ms = 0
             WHERE id = $1 AND lease_owner = $2 AND state = 0"
        );
        let n = self
            .run(|c| c.execute(&sql, &[&id, &instance, &state.code(), &after, &error]))
            .map_err(failed(&format!("settling outbox row {id}")))?;
        Ok(n == 1)
    }

    fn note_notice(&self, id: &str, instance: &str, note: &str) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE {SCHEMA}.outbox SET note = $3 WHERE id = $1 AND lease_owner = $2 AND state = 0"
        );
        let n = self
            .run(|c| c.execute(&sql, &[&id, &instance, &note]))
            .map_err(failed(&format!("noting a step of outbox row {id}")))?;
        Ok(n == 1)
    }

    fn notices(&self, subject: &str) -> StoreResult<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS}, {NOW_MS} FROM {SCHEMA}.outbox WHERE subject = $1 ORDER BY ord"
        );
        let rows = self
            .run(|c| c.query(&sql, &[&subject]))
            .map_err(failed(&format!("reading the outbox rows of {subject}")))?;
        rows.iter().map(outbox_row).collect()
    }

    fn pending_notices(&self) -> StoreResult<Vec<(String, String, u64)>> {
        let sql = format!(
            "SELECT environment, sink, count(*) FROM {SCHEMA}.outbox WHERE state = 0
             GROUP BY environment, sink ORDER BY environment, sink"
        );
        let rows = self
            .run(|c| c.query(&sql, &[]))
            .map_err(failed("counting pending outbox rows"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), stored_size(r.get(2))))
            .collect())
    }

    fn holds_artifacts(&self) -> bool {
        true
    }

    fn put_artifact(
        &self,
        sha256: &str,
        size: u64,
        uploader: &str,
        data: &mut dyn std::io::Read,
    ) -> StoreResult<bool> {
        let what = format!("storing artifact {sha256}");
        let (size_col, chunks) = artifact_shape(sha256, size)?;
        // A connection of its own: the upload's transaction may last as long as its bytes take
        // to arrive, and must not hold up the heartbeats.
        let mut session = self
            .config
            .clone()
            .application_name("rampart-controller-artifact")
            .connect(NoTls)
            .map_err(failed(&what))?;
        // Announced first (committed): the upload counts in every controller's quota.
        let announce = format!(
            "INSERT INTO {SCHEMA}.artifacts (sha256, size, chunks, complete, uploader, used_ms)
             VALUES ($1, $2, $3, false, $4, {NOW_MS}) ON CONFLICT (sha256) DO NOTHING"
        );
        session
            .execute(&announce, &[&sha256, &size_col, &chunks, &uploader])
            .map_err(failed(&what))?;
        let written = write_chunks(
            &mut session,
            &announce,
            (sha256, size, size_col, chunks, uploader),
            data,
        );
        if written.is_err() {
            // Nothing of it was committed; the header goes too (or a collection takes it).
            let forget =
                format!("DELETE FROM {SCHEMA}.artifacts WHERE sha256 = $1 AND NOT complete");
            if let Err(e) = session.execute(&forget, &[&sha256]) {
                tracing::warn!(store = %self.shown, sha256, error = %db_message(&e), "cannot remove the header of a failed artifact upload; a collection removes it");
            }
        }
        written
    }

    fn claim_artifact(&self, sha256: &str) -> StoreResult<Option<u64>> {
        // An upload in progress holds its row, but its row is not complete, so this never
        // waits for one.
        let sql = format!(
            "UPDATE {SCHEMA}.artifacts SET used_ms = {NOW_MS} WHERE sha256 = $1 AND complete
             RETURNING size"
        );
        let row = self
            .run(|c| c.query_opt(&sql, &[&sha256]))
            .map_err(failed(&format!("looking up artifact {sha256}")))?;
        Ok(row.map(|r| stored_size(r.get(0))))
    }

    fn read_artifact(
        &self,
        sha256: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> StoreResult<Option<u64>> {
        let what = format!("reading artifact {sha256}");
        let head =
            format!("SELECT size, chunks FROM {SCHEMA}.artifacts WHERE sha256 = $1 AND complete");
        let Some(row) = self
            .run(|c| c.query_opt(&head, &[&sha256]))
            .map_err(failed(&what))?
        else {
            return Ok(None);
        };
        let (size_col, chunks): (i64, i32) = (row.get(0), row.get(1));
        let size = stored_size(size_col);
        let torn =
            |why: String| StoreError::Corrupt(format!("artifact {sha256}: {why}; upload it again"));
        if artifact_shape(sha256, size)?.1 != chunks {
            return Err(torn(format!("{chunks} chunk(s) recorded for {size} bytes")));
        }
        let one =
            format!("SELECT data FROM {SCHEMA}.artifact_chunks WHERE sha256 = $1 AND idx = $2");
        let mut hasher = Sha256::new();
        for idx in 0..chunks {
            let row = self
                .run(|c| c.query_opt(&one, &[&sha256, &idx]))
                .map_err(failed(&what))?
                .ok_or_else(|| torn(format!("chunk {idx} of {chunks} is missing")))?;
            let data: &[u8] = row.get(0);
            let expected = chunk_len(size, idx, chunks);
            if data.len() as u64 != expected {
                return Err(torn(format!(
                    "chunk {idx} of {chunks} holds {} bytes, not {expected}",
                    data.len()
                )));
            }
            hasher.update(data);
            sink(data).map_err(|e| StoreError::Unavailable(format!("{what}: {e}")))?;
        }
        let actual = rampart_host::digest::hex(&hasher.finalize());
        if actual != sha256 {
            return Err(torn(format!("its chunks hash to {actual}")));
        }
        Ok(Some(size))
    }

    fn list_artifacts(&self) -> StoreResult<Vec<ArtifactRow>> {
        let sql = format!(
            "SELECT sha256, size, complete, GREATEST({NOW_MS} - used_ms, 0)
             FROM {SCHEMA}.artifacts ORDER BY sha256"
        );
        let rows = self
            .run(|c| c.query(&sql, &[]))
            .map_err(failed("listing artifacts"))?;
        Ok(rows
            .iter()
            .map(|r| ArtifactRow {
                sha256: r.get(0),
                size: stored_size(r.get(1)),
                complete: r.get(2),
                unused_for: Duration::from_millis(stored_size(r.get(3))),
            })
            .collect())
    }

    fn remove_artifacts(
        &self,
        doomed: &[String],
        grace: Duration,
    ) -> StoreResult<Vec<(String, u64)>> {
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        // Rows held by an upload (or a claim) are skipped; the use is checked again here, so a
        // request that named one since it was listed keeps it.
        let sql = format!(
            "DELETE FROM {SCHEMA}.artifacts WHERE sha256 IN (
                 SELECT sha256 FROM {SCHEMA}.artifacts
                 WHERE sha256 = ANY($1) AND used_ms <= {NOW_MS} - $2
                 FOR UPDATE SKIP LOCKED
             ) RETURNING sha256, size"
        );
        let rows = self
            .run(|c| c.query(&sql, &[&doomed, &millis(grace)]))
            .map_err(failed("removing unreferenced artifacts"))?;
        let mut removed: Vec<(String, u64)> = rows
            .iter()
            .map(|r| (r.get(0), stored_size(r.get(1))))
            .collect();
        removed.sort();
        Ok(removed)
    }
}

/// A stored size or age as a `u64` (a negative one, never written, as 0).
fn stored_size(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The size column and chunk count of an artifact of `size` bytes; `Unavailable` when it does
/// not fit the columns.
fn artifact_shape(sha256: &str, size: u64) -> StoreResult<(i64, i32)> {
    let chunks = size.div_ceil(ARTIFACT_CHUNK as u64);
    match (i64::try_from(size), i32::try_from(chunks)) {
        (Ok(s), Ok(c)) => Ok((s, c)),
        _ => Err(StoreError::Unavailable(format!(
            "postgresql: artifact {sha256} of {size} bytes is too large to store"
        ))),
    }
}

/// The length of chunk `idx` of `chunks` of an artifact of `size` bytes.
fn chunk_len(size: u64, idx: i32, chunks: i32) -> u64 {
    let full = ARTIFACT_CHUNK as u64;
    if idx + 1 < chunks {
        full
    } else {
        size - full * u64::try_from(chunks - 1).unwrap_or(0)
    }
}

/// Reads from `data` until `buf` is full or the data ends: how many bytes were read.
fn fill(data: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match data.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The transaction of [`PostgresStore::put_artifact`] on `session`: takes the header's row lock
/// (waiting for another upload of the same artifact), writes the chunks as they are read and
/// hashed, and marks the artifact complete at the commit. `artifact` is (sha256, size, size
/// column, chunk count, uploader); `announce` inserts the header again when a collection
/// removed it meanwhile.
fn write_chunks(
    session: &mut Client,
    announce: &str,
    artifact: (&str, u64, i64, i32, &str),
    data: &mut dyn std::io::Read,
) -> StoreResult<bool> {
    let (sha256, size, size_col, chunks, uploader) = artifact;
    let what = format!("storing artifact {sha256}");
    let fail = failed(&what);
    let mut run =
        |tx: &mut postgres::Transaction<'_>| -> Result<Result<bool, StoreError>, postgres::Error> {
            // Another controller storing the same artifact: wait for it, boundedly.
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = '{}ms'",
                ARTIFACT_LOCK_WAIT.as_millis()
            ))?;
            let held =
                format!("SELECT complete FROM {SCHEMA}.artifacts WHERE sha256 = $1 FOR UPDATE");
            match tx.query_opt(&held, &[&sha256])? {
                Some(r) if r.get::<_, bool>(0) => {
                    tx.execute(
                        &format!(
                            "UPDATE {SCHEMA}.artifacts SET used_ms = {NOW_MS} WHERE sha256 = $1"
                        ),
                        &[&sha256],
                    )?;
                    return Ok(Ok(false));
                }
                Some(_) => {}
                None => {
                    tx.execute(announce, &[&sha256, &size_col, &chunks, &uploader])?;
                }
            }
            tx.execute(
                &format!(
                    "UPDATE {SCHEMA}.artifacts SET size = $2, chunks = $3, uploader = $4
                 WHERE sha256 = $1"
                ),
                &[&sha256, &size_col, &chunks, &uploader],
            )?;
            tx.execute(
                &format!("DELETE FROM {SCHEMA}.artifact_chunks WHERE sha256 = $1"),
                &[&sha256],
            )?;
            let insert = tx.prepare(&format!(
                "INSERT INTO {SCHEMA}.artifact_chunks (sha256, idx, data) VALUES ($1, $2, $3)"
            ))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; ARTIFACT_CHUNK];
            let mut received = 0u64;
            let mut idx: i32 = 0;
            loop {
                let n = match fill(data, &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        return Ok(Err(StoreError::Unavailable(format!(
                            "{what}: reading its bytes: {e}"
                        ))));
                    }
                };
                if n == 0 {
                    break;
                }
                received += n as u64;
                if received > size || idx >= chunks {
                    return Ok(Err(StoreError::Corrupt(format!(
                        "{what}: more than the {size} bytes announced"
                    ))));
                }
                let chunk: &[u8] = &buf[..n];
                hasher.update(chunk);
                tx.execute(&insert, &[&sha256, &idx, &chunk])?;
                idx += 1;
            }
            let actual = rampart_host::digest::hex(&hasher.finalize());
            if received != size || actual != sha256 {
                return Ok(Err(StoreError::Corrupt(format!(
                    "{what}: its {received} bytes hash to {actual}, not the {size} bytes of {sha256}; nothing stored"
                ))));
            }
            tx.execute(
            &format!(
                "UPDATE {SCHEMA}.artifacts SET complete = true, used_ms = {NOW_MS} WHERE sha256 = $1"
            ),
            &[&sha256],
        )?;
            Ok(Ok(true))
        };
    let mut tx = session.transaction().map_err(failed(&what))?;
    match run(&mut tx) {
        Ok(Ok(stored)) => {
            tx.commit().map_err(fail)?;
            Ok(stored)
        }
        // Dropping the transaction rolls it back: no chunk of it stays.
        Ok(Err(e)) => Err(e),
        Err(e) => Err(fail(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lock_key_is_stable() {
        let digest = Sha256::digest(b"rampart-env:prod");
        let expected = i64::from_be_bytes(digest[..8].try_into().unwrap());
        assert_eq!(env_lock_key("prod"), expected);
        assert_ne!(env_lock_key("prod"), env_lock_key("staging"));
    }

    #[test]
    fn urls() {
        let t = parse_url("postgresql://ctl:s3cret@127.0.0.1:5433/rampart").unwrap();
        assert_eq!(
            (
                t.url.host.as_str(),
                t.url.port,
                t.user.as_str(),
                t.database.as_str()
            ),
            ("127.0.0.1", 5433, "ctl", "rampart")
        );
        assert_eq!(t.url.password.as_deref(), Some("s3cret"));
        let t = parse_url("postgres://ctl@db.example?sslmode=disable&connect_timeout=3").unwrap();
        assert_eq!((t.url.port, t.database.as_str()), (5432, "ctl"));
        assert_eq!(t.connect_timeout, Duration::from_secs(3));
        for bad in [
            "postgresql://u:p@h/db?sslmode=require",
            "postgresql://u:p@h/db?sslmode=verify-full",
            "postgresql://u:p@h/db?ssl=true",
        ] {
            match parse_url(bad) {
                Err(StoreError::Unavailable(m)) => {
                    assert!(m.contains("TLS"), "{m}");
                    assert!(!m.contains(":p@"), "password shown: {m}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(parse_url("jdbc:postgresql://h/db").is_err());
        assert!(parse_url("mysql://h/db").is_err());
        assert!(parse_url("postgresql://h/db?options=x").is_err());
    }

    #[test]
    fn scratch_dir_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = ScratchDir::new().unwrap();
        let path = dir.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(path.join("f"), "x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn refused_without_a_server() {
        // Nothing listens on port 1.
        match PostgresStore::open("postgresql://u:pw@127.0.0.1:1/db") {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains("127.0.0.1:1"), "{m}");
                assert!(!m.contains("pw@"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}
